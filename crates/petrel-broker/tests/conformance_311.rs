//! MQTT 3.1.1 statements about the server, each checked over a socket.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use petrel_codec::{
    Connect, MqttString, Packet, Properties, Protocol, Publish, QoS, QosPid, ReasonCode, Subscribe,
    Subscription, SubscriptionOptions, Unsubscribe, Will,
};
use support::*;

const V311: Protocol = Protocol::V3_1_1;
const SHORT: Duration = Duration::from_millis(300);

fn will(topic_name: &str, retain: bool) -> impl FnOnce(&mut Connect) {
    let topic_name = topic_name.to_string();
    move |c| {
        c.will = Some(Will {
            topic: topic(&topic_name),
            payload: Bytes::from_static(b"w"),
            qos: QoS::AtLeastOnce,
            retain,
            properties: Properties::new(),
        });
    }
}

/// Checks [MQTT-3.1.2-16] (Will Retain 0: published non-retained) and
/// [MQTT-3.1.2-17] (Will Retain 1: published retained), and that a will is
/// published once ([MQTT-3.1.2-10]: removed once published).
#[tokio::test]
async fn will_retain_decides_whether_the_will_is_retained() {
    let b = start().await;
    let mut w = Raw::connect(b.addr, V311, "watch").await;
    w.subscribe("wr/#", QoS::AtLeastOnce).await;
    let (c, _) = Raw::connect_with(b.addr, V311, "plain", will("wr/plain", false)).await;
    drop(c);
    assert_eq!(w.recv_publish().await.topic.as_str(), "wr/plain");
    let (c, _) = Raw::connect_with(b.addr, V311, "kept", will("wr/kept", true)).await;
    drop(c);
    assert_eq!(w.recv_publish().await.topic.as_str(), "wr/kept");
    assert!(w.no_publish(SHORT).await, "each will once");
    // A new subscriber sees only the retained will.
    let mut late = Raw::connect(b.addr, V311, "late").await;
    late.subscribe("wr/#", QoS::AtLeastOnce).await;
    let p = late.recv_publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("wr/kept", true));
    assert!(late.no_publish(SHORT).await);
}

/// Checks [MQTT-3.1.3-6]: a zero-length ClientId (with Clean Session 1) is
/// given a unique identifier and the connection proceeds; [MQTT-3.1.4-4]:
/// an accepted CONNECT gets return code 0; [MQTT-3.2.0-1]: CONNACK first.
#[tokio::test]
async fn a_zero_length_client_id_gets_a_unique_one_and_proceeds() {
    let b = start().await;
    let (mut one, ack) = Raw::connect_with(b.addr, V311, "", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (mut two, ack) = Raw::connect_with(b.addr, V311, "", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // Two anonymous clients are two sessions: neither took the other over.
    one.subscribe("anon/1", QoS::AtLeastOnce).await;
    two.subscribe("anon/2", QoS::AtLeastOnce).await;
    one.publish("anon/2", b"to two", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&two.recv_publish().await.payload[..], b"to two");
    two.publish("anon/1", b"to one", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&one.recv_publish().await.payload[..], b"to one");
}

/// Checks [MQTT-3.1.4-1]: a malformed CONNECT (reserved flag set,
/// [MQTT-3.1.2-3]) closes the connection without a CONNACK.
#[tokio::test]
async fn a_malformed_connect_is_closed_without_connack() {
    let b = start().await;
    let mut c = Raw::open(b.addr, V311).await;
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(Connect::new(V311, MqttString::from_static("bad"))))
        .encode(V311, &mut out)
        .unwrap();
    // Connect flags are the byte after the level: set the reserved bit 0.
    out[9] |= 0x01;
    c.send_bytes(&out).await;
    assert!(c.closed().await.is_none());
    still_serving(b.addr).await;
}

/// Checks [MQTT-3.1.4-5]: after refusing a CONNECT the server processes
/// nothing else the client sent.
#[tokio::test]
async fn nothing_is_processed_after_a_refused_connect() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr, V311, "watch").await;
    watcher.subscribe("after/refusal", QoS::AtLeastOnce).await;
    let mut c = Raw::open(b.addr, V311).await;
    let mut out = BytesMut::new();
    // Empty ClientId with Clean Session 0 is refused ([MQTT-3.1.3-8]) …
    let mut connect = Connect::new(V311, MqttString::from_static(""));
    connect.clean_start = false;
    Packet::Connect(Box::new(connect))
        .encode(V311, &mut out)
        .unwrap();
    // … and the PUBLISH behind it in the same write is ignored.
    let mut p = Publish::new(topic("after/refusal"), Bytes::from_static(b"no"));
    p.qos = QosPid::AtMostOnce;
    Packet::Publish(p).encode(V311, &mut out).unwrap();
    c.send_bytes(&out).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
        }
        other => panic!("{other:?}"),
    }
    assert!(c.closed().await.is_none());
    assert!(watcher.no_publish(SHORT).await);
}

/// Checks [MQTT-3.1.4-2]: a second connection with the same ClientId
/// disconnects the existing client.
#[tokio::test]
async fn the_same_client_id_disconnects_the_existing_client() {
    let b = start().await;
    let mut first = Raw::connect(b.addr, V311, "twice").await;
    let _second = Raw::connect(b.addr, V311, "twice").await;
    assert!(first.closed().await.is_none());
}

/// Checks [MQTT-3.8.4-1] (every SUBSCRIBE gets a SUBACK), [MQTT-3.8.4-4]
/// (several filters handled as a sequence, one SUBACK) and [MQTT-3.8.4-5]
/// (one return code per filter, in order: granted QoS or 0x80).
#[tokio::test]
async fn a_multi_filter_subscribe_gets_one_suback_with_a_code_per_filter() {
    let mut config = config();
    config.limits.max_topic_levels = 4;
    let b = start_with(config).await;
    let mut c = Raw::connect(b.addr, V311, "multi").await;
    let packet_id = c.next_pid();
    let sub = |f: &str, q: QoS| Subscription {
        filter: filter(f),
        options: SubscriptionOptions::qos(q),
    };
    c.send(Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::new(),
        subscriptions: vec![
            sub("m/a", QoS::ExactlyOnce),
            sub("m/b/c/d/e/f", QoS::AtLeastOnce),
            sub("m/#", QoS::AtMostOnce),
        ],
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.packet_id, packet_id);
            assert_eq!(
                a.reason_codes,
                vec![
                    ReasonCode::GRANTED_QOS_2,
                    ReasonCode(0x80),
                    ReasonCode::GRANTED_QOS_0
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Checks [MQTT-3.8.4-3]: a SUBSCRIBE whose filter equals an existing
/// subscription's replaces it (the new maximum QoS applies, one copy per
/// message, not two) and the matching retained messages are sent again.
#[tokio::test]
async fn subscribing_again_replaces_the_subscription_and_resends_retained() {
    let b = start().await;
    let mut p = Raw::connect(b.addr, V311, "again-pub").await;
    p.publish("again/r", b"kept", QoS::AtLeastOnce, true).await;
    let mut c = Raw::connect(b.addr, V311, "again-sub").await;
    c.subscribe("again/#", QoS::AtMostOnce).await;
    let r = c.recv_publish().await;
    assert_eq!((r.topic.as_str(), r.retain), ("again/r", true));
    assert_eq!(r.qos.qos(), QoS::AtMostOnce);
    let a = c.subscribe("again/#", QoS::AtLeastOnce).await;
    assert_eq!(a.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    let r = c.recv_publish().await;
    assert_eq!((r.topic.as_str(), r.retain), ("again/r", true), "re-sent");
    assert_eq!(r.qos.qos(), QoS::AtLeastOnce, "at the new QoS");
    p.publish("again/live", b"x", QoS::AtLeastOnce, false).await;
    let live = c.recv_publish().await;
    assert_eq!(live.topic.as_str(), "again/live");
    assert_eq!(live.qos.qos(), QoS::AtLeastOnce, "the new maximum QoS");
    // One subscription, so one copy.
    assert!(c.no_publish(SHORT).await);
}

/// Checks [MQTT-3.10.4-4] (UNSUBACK with the same Packet Identifier),
/// [MQTT-3.10.4-5] (sent even when nothing was deleted), [MQTT-3.10.4-6]
/// (several filters, one UNSUBACK) and [MQTT-3.10.4-2] (no new messages
/// for a deleted subscription).
#[tokio::test]
async fn unsubscribe_is_answered_once_with_its_packet_identifier() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V311, "unsub").await;
    c.subscribe("u/1", QoS::AtLeastOnce).await;
    let packet_id = c.next_pid();
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        properties: Properties::new(),
        filters: vec![filter("u/1"), filter("u/never")],
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(a)) => assert_eq!(a.packet_id, packet_id),
        other => panic!("{other:?}"),
    }
    c.silent(SHORT).await; // one UNSUBACK
    let mut p = Raw::connect(b.addr, V311, "p").await;
    p.publish("u/1", b"x", QoS::AtLeastOnce, false).await;
    assert!(c.no_publish(SHORT).await);
}

/// Checks [MQTT-4.6.0-5] and [MQTT-4.6.0-6]: topics are ordered — messages
/// from one client on one topic are forwarded in the order received — and
/// [MQTT-4.5.0-1]: each matching subscriber gets every message.
#[tokio::test]
async fn messages_on_a_topic_arrive_in_order_at_every_subscriber() {
    let b = start().await;
    let mut subs = Vec::new();
    for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut s = Raw::connect(b.addr, V311, &format!("ord{i}")).await;
        s.subscribe("ord/t", q).await;
        subs.push(s);
    }
    let mut p = Raw::connect(b.addr, V311, "p").await;
    for i in 0..100u8 {
        let q = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(i % 3)];
        p.publish("ord/t", &[i], q, false).await;
    }
    for s in &mut subs {
        for i in 0..100u8 {
            assert_eq!(&s.recv_publish().await.payload[..], &[i]);
        }
    }
}

/// Checks [MQTT-3.3.1-3]: the DUP flag of a forwarded PUBLISH is the
/// server's own (0 on first delivery), whatever the inbound DUP was.
#[tokio::test]
async fn an_inbound_dup_flag_is_not_forwarded() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, V311, "s").await;
    s.subscribe("dup/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V311, "p").await;
    let mut m = Publish::new(topic("dup/t"), Bytes::from_static(b"d"));
    m.qos = QosPid::AtLeastOnce(pid(7));
    m.dup = true;
    p.send(Packet::Publish(m)).await;
    let got = s.recv_publish().await;
    assert!(!got.dup);
}

/// Checks [MQTT-1.5.3-3]: a U+FEFF at the start of a topic is kept, not
/// stripped: the topic is delivered byte for byte.
#[tokio::test]
async fn a_byte_order_mark_in_a_topic_is_kept() {
    let b = start().await;
    let t = "\u{FEFF}bom/t";
    let mut s = Raw::connect(b.addr, V311, "s").await;
    s.subscribe(t, QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V311, "p").await;
    p.publish(t, b"x", QoS::AtLeastOnce, false).await;
    assert_eq!(s.recv_publish().await.topic.as_str(), t);
}

/// Checks [MQTT-4.7.3-2] (no U+0000 in a Topic Name) and [MQTT-4.8.0-1]
/// (a protocol violation closes the connection that carried it).
#[tokio::test]
async fn a_topic_with_u0000_closes_the_connection() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V311, "nul").await;
    c.send_bytes(&[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', b'x'])
        .await;
    assert!(c.closed().await.is_none());
    still_serving(b.addr).await;
}
