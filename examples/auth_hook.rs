//! Embed the broker with authentication and authorisation of the
//! application's own: an async [`Authenticator`] that looks devices up in a
//! store (a map here; a database or an HTTP service in real life, which is
//! why the check is async), and an [`Authorizer`] that confines each device
//! to its own topic tree. Then a device connects with `petrel-client`, is
//! refused with a wrong key, and is kept out of another device's topics.
//!
//! ```sh
//! cargo run -p petrel-examples --example auth_hook
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use petrel_broker::config::ListenerConfig;
use petrel_broker::{
    Action, Authenticator, Authorizer, BoxFuture, Broker, BrokerConfig, ClientInfo, Credentials,
    Decision, Grant, Permissions, Server, Verdict,
};
use petrel_client::{connect, ClientError, ConnectOptions, Protocol, QoS, ReasonCode};

/// Device keys, as a database would hold them.
#[derive(Debug)]
struct DeviceStore {
    keys: HashMap<String, String>,
}

impl Authenticator for DeviceStore {
    fn name(&self) -> &str {
        "device-store"
    }

    fn authenticate<'a>(&'a self, c: &'a Credentials) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            // A round trip to the store; other clients are served meanwhile.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let Some(device) = c.username.as_deref() else {
                // Not ours to judge: anonymous clients are refused by the
                // broker (authentication is configured, so anonymous
                // access is off).
                return Verdict::Pass;
            };
            match (self.keys.get(device), c.password.as_deref()) {
                (Some(key), Some(given)) if key.as_bytes() == given => {
                    Verdict::Allow(Grant::plain())
                }
                (Some(_), _) => Verdict::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
                (None, _) => Verdict::Pass,
            }
        })
    }
}

/// Each device may use `devices/<its name>/#` and read `broadcast/#`.
#[derive(Debug)]
struct OwnTree;

#[derive(Debug)]
struct DevicePermissions {
    own: String,
}

impl Permissions for DevicePermissions {
    fn check(&self, action: Action, topic: &str) -> Decision {
        let own = topic == self.own.trim_end_matches("/#")
            || topic.starts_with(self.own.trim_end_matches('#'));
        let broadcast = topic.starts_with("broadcast/") && action != Action::Publish;
        if own || broadcast {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    fn receives_all(&self, filter: &str) -> bool {
        // A filter inside the device's own tree needs no check per message.
        filter.starts_with(self.own.trim_end_matches('#'))
    }
}

impl Authorizer for OwnTree {
    fn name(&self) -> &str {
        "own-tree"
    }

    fn permissions(&self, client: &ClientInfo<'_>) -> Arc<dyn Permissions> {
        let name = client.username.unwrap_or("-");
        Arc::new(DevicePermissions {
            own: format!("devices/{name}/#"),
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = BrokerConfig {
        listeners: vec![ListenerConfig::tcp("127.0.0.1:0".parse()?)],
        ..BrokerConfig::default()
    };
    let store = DeviceStore {
        keys: HashMap::from([
            ("sensor-1".into(), "k-1".into()),
            ("sensor-2".into(), "k-2".into()),
        ]),
    };
    let broker = Broker::builder(config)
        .authenticator(store)
        .authorizer(OwnTree)
        .build()?;
    let server = Server::bind(broker.clone()).await?;
    let port = server.local_addrs()[0].port();
    tokio::spawn(server.run());

    let device = |name: &str, key: &str| {
        let mut o = ConnectOptions::new("127.0.0.1", port, name).protocol(Protocol::V5);
        o.username = Some(name.into());
        o.password = Some(Bytes::from(key.to_string()));
        o.reconnect.enabled = false;
        o
    };

    match connect(device("sensor-1", "wrong")).await {
        Err(ClientError::Refused(code)) => println!("sensor-1 with a wrong key: refused ({code})"),
        other => println!("unexpected: {other:?}"),
    }

    let (s1, _) = connect(device("sensor-1", "k-1")).await?;
    println!("sensor-1 connected");
    let own = s1
        .publish_to("devices/sensor-1/temp", "21.5", QoS::AtLeastOnce)
        .await?;
    println!("publish to its own tree: {}", own.reason_code);
    let other = s1
        .publish_to("devices/sensor-2/temp", "99", QoS::AtLeastOnce)
        .await?;
    println!("publish to sensor-2's tree: {}", other.reason_code);
    let ack = s1.subscribe("devices/#", QoS::AtLeastOnce).await?;
    println!("subscribe to every device: {:?}", ack.reason_codes);
    let ack = s1.subscribe("broadcast/#", QoS::AtLeastOnce).await?;
    println!("subscribe to broadcasts: {:?}", ack.reason_codes);
    s1.disconnect().await?;
    broker.shutdown();
    Ok(())
}
