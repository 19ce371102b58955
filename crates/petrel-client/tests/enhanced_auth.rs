//! 5.0 enhanced authentication (4.12) against a server built from
//! `petrel-session`'s server role: CONNECT with a method and initial data,
//! a challenge, the client's answer, then CONNACK.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use petrel_client::{connect, Authenticator, ConnectOptions, MqttString, Properties, Protocol};
use petrel_codec::{Auth, Packet, ReasonCode};
use petrel_session::{Accept, Config, Connection, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Default)]
struct Challenged {
    seen: Mutex<Vec<Bytes>>,
}

impl Authenticator for Challenged {
    fn initial_data(&self) -> Option<Bytes> {
        Some(Bytes::from_static(b"hello"))
    }

    fn respond(&self, challenge: Option<&Bytes>) -> Result<Bytes, String> {
        let c = challenge.cloned().unwrap_or_default();
        self.seen.lock().unwrap().push(c.clone());
        Ok(Bytes::from([b"answer:".as_slice(), &c].concat()))
    }
}

/// One connection of a server that challenges once and checks the answer.
async fn serve_one(listener: tokio::net::TcpListener) -> Vec<Bytes> {
    let (mut sock, _) = listener.accept().await.unwrap();
    let mut conn = Connection::server(Config::default(), Instant::now());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut protocol = None;
    loop {
        while let Some(e) = conn.poll_event() {
            let now = Instant::now();
            match e {
                Event::ConnectRequest(c) => {
                    let p = &c.properties;
                    assert_eq!(p.authentication_method().unwrap().as_str(), "TEST-1");
                    got.push(p.authentication_data().unwrap());
                    let mut props = Properties::new();
                    props.set_authentication_method(Some(MqttString::from_static("TEST-1")));
                    props.set_authentication_data(Some(Bytes::from_static(b"nonce")));
                    conn.auth(
                        now,
                        Auth {
                            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                            properties: props,
                        },
                    )
                    .unwrap();
                }
                Event::Auth(a) => {
                    // [MQTT-4.12.0-3]: the client answers with 0x18;
                    // [MQTT-4.12.0-5]: naming the same method.
                    assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
                    assert_eq!(
                        a.properties.authentication_method().unwrap().as_str(),
                        "TEST-1"
                    );
                    got.push(a.properties.authentication_data().unwrap());
                    let mut props = Properties::new();
                    props.set_authentication_method(Some(MqttString::from_static("TEST-1")));
                    conn.accept(
                        now,
                        Accept {
                            properties: props,
                            ..Accept::default()
                        },
                    )
                    .unwrap();
                }
                Event::Closed(_) => return got,
                _ => {}
            }
        }
        while let Some(p) = conn.poll_transmit() {
            let mut out = BytesMut::new();
            p.encode(conn.protocol(), &mut out).unwrap();
            sock.write_all(&out).await.unwrap();
        }
        let n = sock.read_buf(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        while let Some(p) = Packet::decode(&mut buf, protocol, &Default::default()).unwrap() {
            protocol = Some(Protocol::V5);
            conn.handle_packet(Instant::now(), p).unwrap();
        }
    }
}

/// Checks [MQTT-4.12.0-3] and [MQTT-4.12.0-5] from the client's side of an
/// exchange the server (here the test's own) opens with AUTH 0x18.
#[tokio::test]
async fn the_authenticator_answers_the_servers_challenge() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_one(listener));
    let auth = Arc::new(Challenged::default());
    let mut o = ConnectOptions::new(addr.ip().to_string(), addr.port(), "authed");
    o.properties
        .set_authentication_method(Some(MqttString::from_static("TEST-1")));
    o.authenticator = Some(auth.clone());
    o.reconnect.enabled = false;
    let (client, _) = tokio::time::timeout(Duration::from_secs(5), connect(o))
        .await
        .unwrap()
        .unwrap();
    client.disconnect().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        vec![
            Bytes::from_static(b"hello"),
            Bytes::from_static(b"answer:nonce")
        ]
    );
    assert_eq!(
        *auth.seen.lock().unwrap(),
        vec![Bytes::from_static(b"nonce")]
    );
}

#[tokio::test]
async fn a_method_without_an_authenticator_is_refused_up_front() {
    let mut o = ConnectOptions::new("127.0.0.1", 1, "x");
    o.properties
        .set_authentication_method(Some(MqttString::from_static("TEST-1")));
    assert!(matches!(
        connect(o).await,
        Err(petrel_client::ClientError::Invalid(_))
    ));
}

/// Checks [MQTT-3.1.3-7]: a 3.1.1 client with a zero-length ClientId must
/// ask for Clean Session 1; the client refuses the options up front.
#[tokio::test]
async fn an_empty_client_id_needs_clean_session_in_3_1_1() {
    let mut o = ConnectOptions::new("127.0.0.1", 1, "").protocol(Protocol::V3_1_1);
    o.clean_start = false;
    assert!(matches!(
        connect(o).await,
        Err(petrel_client::ClientError::Invalid(_))
    ));
}
