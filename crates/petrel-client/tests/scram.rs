//! SCRAM-SHA-256 and SCRAM-SHA-512 against the Petrel broker: a full
//! exchange and a re-authentication with `petrel-client`, the same over a
//! raw socket packet by packet, and wrong passwords refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use petrel_broker::config::{ListenerConfig, ScramConfig};
use petrel_broker::core::auth::scram::{ScramCredential, ScramHash};
use petrel_broker::{Broker, BrokerConfig, Server};
use petrel_client::{
    connect, Authenticator, ClientError, ConnectOptions, MqttString, Properties, Protocol, QoS,
    ReasonCode, ScramAuthenticator, ScramMechanism,
};
use petrel_codec::{Auth, Connect, Limits, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A broker offering both mechanisms, alice's password "pencil".
async fn start() -> SocketAddr {
    let lines: String = ScramHash::ALL
        .iter()
        .map(|h| {
            format!(
                "alice:{}\n",
                ScramCredential::new(*h, b"pencil", 4096).unwrap().encode()
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("petrel-scram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("scram-{}", rand_suffix()));
    std::fs::write(&file, lines).unwrap();
    let broker = Broker::new(BrokerConfig {
        listeners: vec![ListenerConfig::tcp("127.0.0.1:0".parse().unwrap())],
        sys_interval: 0,
        scram: Some(ScramConfig {
            file,
            mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()],
        }),
        ..BrokerConfig::default()
    })
    .unwrap();
    let server = Server::bind(broker).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    addr
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn options(
    addr: SocketAddr,
    id: &str,
    mechanism: ScramMechanism,
    password: &str,
) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", addr.port(), id);
    o.authenticator = Some(Arc::new(ScramAuthenticator::new(
        mechanism, "alice", password,
    )));
    o.reconnect.enabled = false;
    o
}

#[tokio::test]
async fn a_full_exchange_and_a_reauthentication_with_petrel_client() {
    let addr = start().await;
    for mechanism in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
        let (client, mut inbox) = connect(options(addr, "c", mechanism, "pencil"))
            .await
            .unwrap();
        client.subscribe("t", QoS::AtLeastOnce).await.unwrap();
        // Re-authentication on the open connection, twice; the connection
        // keeps working throughout.
        client.reauthenticate().await.unwrap();
        client.reauthenticate().await.unwrap();
        client
            .publish_to("t", "still here", QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], b"still here");
        client.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let addr = start().await;
    let e = connect(options(addr, "c", ScramMechanism::Sha256, "pen"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Refused(ReasonCode::NOT_AUTHORIZED)),
        "{e:?}"
    );
    // An unknown mechanism: 0x8C ([MQTT-4.12.0-1]).
    let mut o = options(addr, "c", ScramMechanism::Sha256, "pencil");
    o.properties
        .set_authentication_method(Some(MqttString::from_static("SCRAM-SHA-1")));
    let e = connect(o).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused(ReasonCode::BAD_AUTHENTICATION_METHOD)
        ),
        "{e:?}"
    );
}

/// Checks 5.0: [MQTT-4.12.0-2] (the broker's AUTH during the exchange
/// carries 0x18, asserted on each). A client speaking packets itself:
/// CONNECT with client-first, AUTH
/// 0x18 with server-first, AUTH 0x18 with client-final, CONNACK with the
/// server's proof ([MQTT-4.12.0-5]: every AUTH and the CONNACK repeat the
/// method); then AUTH 0x19 starts a re-authentication, answered by AUTH
/// 0x00. A wrong proof gets CONNACK 0x87 and the connection closes
/// ([MQTT-4.12.0-4]: the server may refuse the authentication, CONNACK
/// 0x80 or above, then must close).
#[tokio::test]
async fn the_exchange_packet_by_packet_over_a_raw_socket() {
    let addr = start().await;
    let method = MqttString::from_static("SCRAM-SHA-256");
    let mut raw = RawClient::open(addr).await;
    let scram = ScramAuthenticator::new(ScramMechanism::Sha256, "alice", "pencil");
    let mut c = Connect::new(Protocol::V5, MqttString::from_static("raw"));
    c.properties.set_authentication_method(Some(method.clone()));
    c.properties.set_authentication_data(scram.initial_data());
    raw.send(Packet::Connect(Box::new(c))).await;
    raw.answer(&scram, &method).await;
    match raw.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
            assert_eq!(ack.properties.authentication_method(), Some(method.clone()));
            scram
                .finish(ack.properties.authentication_data().as_ref())
                .expect("the broker proves it knows the credential");
        }
        other => panic!("{other:?}"),
    }
    // Re-authentication.
    raw.send_auth(
        ReasonCode::RE_AUTHENTICATE,
        &method,
        scram.initial_data().unwrap(),
    )
    .await;
    raw.answer(&scram, &method).await;
    let last = raw.expect_auth(ReasonCode::SUCCESS, &method).await;
    scram.finish(last.as_ref()).unwrap();
    // The connection goes on: PINGREQ answered.
    raw.send(Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    // A re-authentication with a wrong proof closes it ([MQTT-4.12.1-2]).
    let wrong = ScramAuthenticator::new(ScramMechanism::Sha256, "alice", "crayon");
    raw.send_auth(
        ReasonCode::RE_AUTHENTICATE,
        &method,
        wrong.initial_data().unwrap(),
    )
    .await;
    raw.answer(&wrong, &method).await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    assert_eq!(raw.recv().await, None);

    // A wrong proof at CONNECT.
    let mut raw = RawClient::open(addr).await;
    let mut c = Connect::new(Protocol::V5, MqttString::from_static("raw2"));
    c.properties.set_authentication_method(Some(method.clone()));
    c.properties.set_authentication_data(wrong.initial_data());
    raw.send(Packet::Connect(Box::new(c))).await;
    raw.answer(&wrong, &method).await;
    match raw.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    assert_eq!(raw.recv().await, None);
}

struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.encode(Protocol::V5, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn send_auth(&mut self, reason_code: ReasonCode, method: &MqttString, data: Bytes) {
        let mut properties = Properties::new();
        properties.set_authentication_method(Some(method.clone()));
        properties.set_authentication_data(Some(data));
        self.send(Packet::Auth(Auth {
            reason_code,
            properties,
        }))
        .await;
    }

    /// The next packet; `None` once the broker closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) =
                    Packet::decode(&mut self.buf, Some(Protocol::V5), &Limits::default()).unwrap()
                {
                    return Some(p);
                }
                if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("no packet in time")
    }

    /// Answer the broker's challenge (AUTH 0x18) with `scram`'s proof.
    async fn answer(&mut self, scram: &ScramAuthenticator, method: &MqttString) {
        let challenge = self
            .expect_auth(ReasonCode::CONTINUE_AUTHENTICATION, method)
            .await;
        let proof = scram.respond(challenge.as_ref()).unwrap();
        self.send_auth(ReasonCode::CONTINUE_AUTHENTICATION, method, proof)
            .await;
    }

    /// An AUTH with this reason code and method; its data.
    async fn expect_auth(&mut self, reason_code: ReasonCode, method: &MqttString) -> Option<Bytes> {
        match self.recv().await {
            Some(Packet::Auth(a)) => {
                assert_eq!(a.reason_code, reason_code);
                assert_eq!(a.properties.authentication_method().as_ref(), Some(method));
                a.properties.authentication_data()
            }
            other => panic!("expected AUTH {reason_code}, got {other:?}"),
        }
    }
}
