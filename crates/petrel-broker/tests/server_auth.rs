//! Authentication and authorisation as clients see them on the wire: the
//! CONNACK codes of each protocol version, and what a denied PUBLISH or
//! SUBSCRIBE gets back.

mod support;

use bytes::Bytes;
use petrel_broker::core::auth::password::PasswordHash;
use petrel_broker::BrokerConfig;
use petrel_codec::{MqttString, Protocol, QoS, ReasonCode};
use std::time::Duration;
use support::{config, start_with, temp_file, Raw};

const SHORT: Duration = Duration::from_millis(300);

fn secured() -> BrokerConfig {
    let alice = PasswordHash::pbkdf2_sha512(b"secret", 101)
        .unwrap()
        .encode();
    let bob = PasswordHash::argon2id(b"b0b").unwrap().encode();
    BrokerConfig {
        password_file: Some(temp_file("passwd", &format!("alice:{alice}\nbob:{bob}\n"))),
        acl_file: Some(temp_file(
            "acl",
            "user alice\ntopic readwrite home/#\ntopic read bob/#\nuser bob\ntopic read home/#\ntopic write bob/#\n",
        )),
        ..config()
    }
}

fn credentials(user: Option<&str>, pw: Option<&str>) -> impl FnOnce(&mut petrel_codec::Connect) {
    let user = user.map(|u| MqttString::try_from(u).unwrap());
    let pw = pw.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    move |c| {
        c.username = user;
        c.password = pw;
    }
}

/// [MQTT-3.2.2-6] (3.1.1): a refusal is a CONNACK with a non-zero return
/// code, then the connection closes: 4 for bad credentials, 5 for none
/// (0x86 and 0x87 in 5.0, where [MQTT-3.1.4-2] (5.0): a failed
/// authentication closes the connection).
#[tokio::test]
async fn connack_codes_for_wrong_and_missing_credentials() {
    let b = start_with(secured()).await;
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let cases = [
            (Some("alice"), Some("secret"), ReasonCode::SUCCESS),
            (
                Some("alice"),
                Some("wrong"),
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ),
            (
                Some("nobody"),
                Some("secret"),
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ),
            (None, None, ReasonCode::NOT_AUTHORIZED),
        ];
        for (user, pw, want) in cases {
            let (mut raw, ack) =
                Raw::connect_with(b.addr, protocol, "c", credentials(user, pw)).await;
            // 3.1.1 return codes are mapped to these reason codes by the
            // codec: 4 is 0x86, 5 is 0x87.
            assert_eq!(ack.reason_code, want, "{protocol:?} {user:?} {pw:?}");
            if want != ReasonCode::SUCCESS {
                assert!(raw.closed().await.is_none());
            }
        }
    }
}

/// A denied PUBLISH: PUBACK 0x87 in 5.0; acknowledged and dropped in 3.1.1,
/// which has no reason codes ([MQTT-3.3.5-2] (3.1.1): acknowledge it as
/// usual or close). A subscriber that may read the topic shows
/// the message went nowhere, and that an allowed one arrives.
#[tokio::test]
async fn a_denied_publish_is_answered_0x87_in_5_and_dropped_in_3_1_1() {
    let b = start_with(secured()).await;
    let (mut reader, _) = Raw::connect_with(
        b.addr,
        Protocol::V5,
        "reader",
        credentials(Some("alice"), Some("secret")),
    )
    .await;
    reader.subscribe("home/#", QoS::AtLeastOnce).await;
    reader.subscribe("bob/#", QoS::AtLeastOnce).await;
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let (mut bob, _) = Raw::connect_with(
            b.addr,
            protocol,
            "bob",
            credentials(Some("bob"), Some("b0b")),
        )
        .await;
        let ack = bob
            .publish("home/door", b"open", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        let want = if protocol.is_v5() {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        assert_eq!(ack.reason_code, want, "{protocol:?}");
        // QoS 2 is refused at PUBREC in 5.0 (the exchange ends there).
        if protocol.is_v5() {
            let id = bob.next_pid();
            let mut p = petrel_codec::Publish::new(support::topic("home/x"), Bytes::new());
            p.qos = petrel_codec::QosPid::ExactlyOnce(id);
            bob.send(petrel_codec::Packet::Publish(p)).await;
            match bob.recv().await {
                Some(petrel_codec::Packet::PubRec(r)) => {
                    assert_eq!(r.reason_code, ReasonCode::NOT_AUTHORIZED)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            reader.no_publish(SHORT).await,
            "a denied message was delivered"
        );
        // The positive control: what bob may write arrives.
        bob.publish("bob/status", b"ok", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(reader.recv_publish().await.topic.as_str(), "bob/status");
        bob.disconnect().await;
    }
}

/// A denied SUBSCRIBE: 0x87 in a 5.0 SUBACK, 0x80 (Failure) in 3.1.1, the
/// other filters of the same SUBSCRIBE granted.
#[tokio::test]
async fn a_denied_subscribe_is_0x87_in_5_and_0x80_in_3_1_1() {
    let b = start_with(secured()).await;
    for (protocol, refused) in [
        (Protocol::V5, ReasonCode::NOT_AUTHORIZED),
        (Protocol::V3_1_1, ReasonCode::UNSPECIFIED_ERROR),
    ] {
        let (mut bob, _) = Raw::connect_with(
            b.addr,
            protocol,
            "bob",
            credentials(Some("bob"), Some("b0b")),
        )
        .await;
        let ack = bob.subscribe("bob/#", QoS::AtLeastOnce).await;
        assert_eq!(
            ack.reason_codes,
            [refused],
            "{protocol:?}: bob may only write bob/#"
        );
        let ack = bob.subscribe("home/#", QoS::AtLeastOnce).await;
        assert_eq!(
            ack.reason_codes,
            [ReasonCode::GRANTED_QOS_1],
            "{protocol:?}"
        );
        bob.disconnect().await;
    }
}

/// The default configuration stays anonymous on loopback. With no method
/// configured, credentials are not checked (as Mosquitto without a
/// password file); once one is, credentials no method knows are refused.
#[tokio::test]
async fn the_default_broker_is_anonymous_on_loopback() {
    let b = start_with(config()).await;
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V3_1_1, "anon", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_c, ack) =
        Raw::connect_with(b.addr, Protocol::V5, "u", credentials(Some("x"), Some("y"))).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let b = start_with(BrokerConfig {
        allow_anonymous: Some(true),
        ..secured()
    })
    .await;
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "anon", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_c, ack) =
        Raw::connect_with(b.addr, Protocol::V5, "u", credentials(Some("x"), Some("y"))).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
}

/// A 5.0 enhanced method of the application's that accepts the first
/// exchange (the CONNECT) and never answers another (a stalled service).
#[derive(Debug, Default)]
struct Stalls {
    started: std::sync::atomic::AtomicUsize,
}

struct StallsExchange {
    first: bool,
}

impl petrel_broker::AuthMethod for Stalls {
    fn name(&self) -> &str {
        "STALLS"
    }

    fn start(&self, _: &petrel_broker::Credentials) -> Box<dyn petrel_broker::AuthExchange> {
        let n = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(StallsExchange { first: n == 0 })
    }
}

impl petrel_broker::AuthExchange for StallsExchange {
    fn step(&mut self, _: Option<Bytes>) -> petrel_broker::BoxFuture<'_, petrel_broker::Exchange> {
        if self.first {
            return Box::pin(std::future::ready(petrel_broker::Exchange::Success {
                grant: petrel_broker::Grant::plain(),
                data: None,
            }));
        }
        Box::pin(std::future::pending())
    }
}

/// A re-authentication the application's method never answers is bounded
/// as a CONNECT's authentication is: DISCONNECT 0x87 (after twice the
/// connect timeout), not a connection stuck for good.
#[tokio::test]
async fn a_stalled_reauthentication_closes_the_connection() {
    let mut c = config();
    c.limits.connect_timeout = 1;
    let broker = petrel_broker::Broker::builder(c)
        .auth_method(Stalls::default())
        .build()
        .unwrap();
    let server = petrel_broker::Server::bind(broker).await.unwrap();
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run());
    let method = MqttString::from_static("STALLS");
    let m = method.clone();
    let (mut raw, ack) = Raw::connect_with(addr, Protocol::V5, "s", move |c| {
        c.username = Some(MqttString::from_static("u"));
        c.properties.set_authentication_method(Some(m));
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // The positive control: the connection is served.
    raw.send(petrel_codec::Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(petrel_codec::Packet::PingResp));
    let mut props = petrel_codec::Properties::new();
    props.set_authentication_method(Some(method));
    raw.send(petrel_codec::Packet::Auth(petrel_codec::Auth {
        reason_code: ReasonCode::RE_AUTHENTICATE,
        properties: props,
    }))
    .await;
    let start = std::time::Instant::now();
    let d = raw.closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

/// A denied PUBLISH's PUBACK 0x87 says why, in a Reason String, to a 5.0
/// client that asked for problem information (the default) and has room
/// for it; without the request ([MQTT-3.1.2-29]) or the room
/// ([MQTT-3.4.2-2], 5.0: a Maximum Packet Size of 32) it goes without,
/// the reason code kept.
#[tokio::test]
async fn a_denied_publish_says_why_where_the_client_wants_and_has_room() {
    let b = start_with(secured()).await;
    let quiet = |c: &mut petrel_codec::Connect| {
        c.properties.set_request_problem_information(Some(false));
    };
    let small = |c: &mut petrel_codec::Connect| {
        c.properties
            .set_maximum_packet_size(std::num::NonZeroU32::new(32));
    };
    type Case = (&'static str, fn(&mut petrel_codec::Connect), bool);
    let cases: [Case; 3] = [
        ("asks", |_| {}, true),
        ("quiet", quiet, false),
        ("small", small, false),
    ];
    for (name, edit, says) in cases {
        let (mut bob, _) = Raw::connect_with(b.addr, Protocol::V5, name, |c| {
            credentials(Some("bob"), Some("b0b"))(c);
            edit(c);
        })
        .await;
        let ack = bob
            .publish("home/door", b"open", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED, "{name}");
        assert_eq!(
            ack.properties.reason_string().is_some(),
            says,
            "{name}: {ack:?}"
        );
        bob.disconnect().await;
    }
}
