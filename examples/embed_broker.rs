//! Embed the Petrel broker in an application: start it on a port of your
//! choice, publish from the application itself (here, a retained "online"
//! status and a heartbeat every second), read its counters, and shut it down
//! on Ctrl-C.
//!
//! ```sh
//! cargo run -p petrel-examples --example embed_broker -- 1884
//! mosquitto_sub -p 1884 -t 'app/#' -v     # in another terminal
//! ```

use std::time::Duration;

use bytes::Bytes;
use petrel_broker::config::ListenerConfig;
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_codec::{QoS, TopicName};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(1884);
    let config = BrokerConfig {
        listeners: vec![ListenerConfig::tcp(([127, 0, 0, 1], port).into())],
        ..BrokerConfig::default()
    };
    let broker = Broker::new(config)?;
    let server = Server::bind(broker.clone()).await?;
    println!("broker listening on {:?}", server.local_addrs());
    let running = tokio::spawn(server.run());

    // The application is a publisher too, with no client connection.
    broker.publish(
        TopicName::from_static("app/status"),
        Bytes::from_static(b"online"),
        QoS::AtLeastOnce,
        true,
    );
    let heartbeat = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                n += 1;
                let delivered = broker.publish(
                    TopicName::from_static("app/heartbeat"),
                    Bytes::from(n.to_string()),
                    QoS::AtMostOnce,
                    false,
                );
                let stats = broker.stats();
                println!(
                    "heartbeat {n} to {delivered} subscriber(s); {} client(s) connected, {} messages received",
                    stats.clients_connected, stats.publish_received
                );
            }
        })
    };

    tokio::signal::ctrl_c().await?;
    heartbeat.abort();
    broker.shutdown();
    let _ = running.await;
    Ok(())
}
