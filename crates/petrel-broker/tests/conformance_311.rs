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

/// Checks 3.1.1: [MQTT-4.6.0-5] and [MQTT-4.6.0-6]; 5.0: [MQTT-4.6.0-5]
/// and [MQTT-4.6.0-6]: topics are ordered by default — messages from one
/// client on one topic are forwarded in the order received, at each QoS —
/// and 3.1.1: [MQTT-4.5.0-1]; 5.0: [MQTT-4.5.0-1]: each matching
/// subscriber gets every message. The transport is TCP, ordered and
/// lossless both ways (3.1.1: [MQTT-7.1.1-1]; 5.0: [MQTT-4.2.0-1]): 100
/// messages in, 100 out in order at each of three subscribers.
#[tokio::test]
async fn messages_on_a_topic_arrive_in_order_at_every_subscriber() {
    let b = start().await;
    for proto in [V311, Protocol::V5] {
        let t = format!("ord/{proto:?}");
        let mut subs = Vec::new();
        for (i, q) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let mut s = Raw::connect(b.addr, proto, &format!("ord{i}-{proto:?}")).await;
            s.subscribe(&t, q).await;
            subs.push(s);
        }
        let mut p = Raw::connect(b.addr, proto, &format!("p-{proto:?}")).await;
        for i in 0..100u8 {
            let q = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(i % 3)];
            p.publish(&t, &[i], q, false).await;
        }
        for s in &mut subs {
            for i in 0..100u8 {
                assert_eq!(&s.recv_publish().await.payload[..], &[i], "{proto:?}");
            }
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

/// Checks [MQTT-3.1.2.7] (printed so in the standard): a retained message
/// is not session state, so it outlives the Clean Session connection that
/// published it.
#[tokio::test]
async fn retained_messages_outlive_the_session_that_published_them() {
    let b = start().await;
    let mut p = Raw::connect(b.addr, V311, "short-lived").await;
    p.publish("outlive/t", b"kept", QoS::AtLeastOnce, true)
        .await;
    // Clean Session 1: its session ends with the connection.
    p.disconnect().await;
    // A new session of the same ClientId: the broker ends the old one
    // before it answers this CONNECT; the new one is sent the message.
    let mut late = Raw::connect(b.addr, V311, "short-lived").await;
    late.subscribe("outlive/t", QoS::AtLeastOnce).await;
    let r = late.recv_publish().await;
    assert_eq!((&r.payload[..], r.retain), (&b"kept"[..], true));
}

/// Checks [MQTT-3.1.2-12]: with the Will Flag 0 nothing is published when
/// the connection ends without a DISCONNECT; the control, a client with a
/// will dropped the same way, shows the watcher would have seen one.
#[tokio::test]
async fn without_a_will_nothing_is_published_when_the_connection_drops() {
    let b = start().await;
    let mut w = Raw::connect(b.addr, V311, "watch").await;
    w.subscribe("nowill/#", QoS::AtLeastOnce).await;
    let (c, ack) = Raw::connect_with(b.addr, V311, "no-will", |c| c.will = None).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    drop(c);
    let (c, _) = Raw::connect_with(b.addr, V311, "with-will", will("nowill/t", false)).await;
    drop(c);
    assert_eq!(w.recv_publish().await.topic.as_str(), "nowill/t");
    // The first connection has surely ended once its ClientId connects
    // again; still no will.
    Raw::connect(b.addr, V311, "no-will")
        .await
        .disconnect()
        .await;
    assert!(w.no_publish(SHORT).await);
}

/// Checks 3.1.1: [MQTT-3.1.3-5]; 5.0: [MQTT-3.1.3-5] and [MQTT-3.1.4-5]:
/// ClientIds of 1 to 23 bytes of 0-9, a-z and A-Z are accepted, CONNACK
/// 0x00, each its own session (a message to one reaches only that one).
#[tokio::test]
async fn client_ids_of_1_to_23_alphanumerics_are_accepted() {
    let b = start().await;
    for proto in [V311, Protocol::V5] {
        let ids = ["a", "Z", "7", "aZ09bY18cX27dW36eV45fU5"];
        assert_eq!(ids[3].len(), 23);
        let mut clients = Vec::new();
        for id in ids {
            let (mut c, ack) = Raw::connect_with(b.addr, proto, id, |_| {}).await;
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{proto:?} {id}");
            c.subscribe(&format!("ids/{id}"), QoS::AtLeastOnce).await;
            clients.push(c);
        }
        let mut p = Raw::connect(b.addr, proto, "ids-pub").await;
        for (id, c) in ids.iter().zip(&mut clients) {
            p.publish(&format!("ids/{id}"), id.as_bytes(), QoS::AtLeastOnce, false)
                .await;
            assert_eq!(&c.recv_publish().await.payload[..], id.as_bytes());
        }
        for c in clients {
            c.disconnect().await;
        }
        p.disconnect().await;
    }
}

/// Checks [MQTT-3.1.3-9]: a ClientId the server rejects (here longer than
/// its configured 23 bytes) gets CONNACK return code 0x02 on the wire, and
/// then the connection closes; one byte shorter is accepted.
#[tokio::test]
async fn a_rejected_client_id_gets_return_code_2_and_the_close() {
    let mut config = config();
    config.limits.max_client_id_length = 23;
    let b = start_with(config).await;
    let mut c = Raw::open(b.addr, V311).await;
    c.send(Packet::Connect(Box::new(Connect::new(
        V311,
        MqttString::try_from("x".repeat(24)).unwrap(),
    ))))
    .await;
    // CONNACK, remaining length 2, Session Present 0, return code 2.
    assert_eq!(c.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x02]);
    assert!(c.closed().await.is_none());
    let (mut ok, ack) = Raw::connect_with(b.addr, V311, &"x".repeat(23), |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    ok.alive().await;
}

/// Checks [MQTT-3.3.1-7]: a retained QoS 0 message replaces the retained
/// message before it (here a QoS 1 one): a new subscriber gets only it.
#[tokio::test]
async fn a_retained_qos0_message_replaces_the_one_before() {
    let b = start().await;
    let mut p = Raw::connect(b.addr, V311, "p").await;
    p.publish("rq0/t", b"old", QoS::AtLeastOnce, true).await;
    // The control: the first one is retained.
    let mut first = Raw::connect(b.addr, V311, "first").await;
    first.subscribe("rq0/t", QoS::AtLeastOnce).await;
    assert_eq!(&first.recv_publish().await.payload[..], b"old");
    p.publish("rq0/t", b"new", QoS::AtMostOnce, true).await;
    // Delivered to the subscriber there already, so the broker has it.
    assert_eq!(&first.recv_publish().await.payload[..], b"new");
    let mut s = Raw::connect(b.addr, V311, "s").await;
    s.subscribe("rq0/t", QoS::AtLeastOnce).await;
    let r = s.recv_publish().await;
    assert_eq!((&r.payload[..], r.retain), (&b"new"[..], true));
    assert!(s.no_publish(SHORT).await, "the old one was discarded");
}

/// Checks 3.1.1: [MQTT-3.3.1-12]; 5.0: [MQTT-3.3.1-8]: a PUBLISH with
/// RETAIN 0 is neither stored nor allowed to remove or replace the retained
/// message of its topic; the subscriber there already shows it was
/// published.
#[tokio::test]
async fn a_publish_without_retain_leaves_the_retained_message_alone() {
    let b = start().await;
    for proto in [V311, Protocol::V5] {
        let t = format!("keep/{proto:?}");
        let mut p = Raw::connect(b.addr, proto, &format!("p-{proto:?}")).await;
        let mut live = Raw::connect(b.addr, proto, &format!("live-{proto:?}")).await;
        live.subscribe(&t, QoS::AtLeastOnce).await;
        p.publish(&t, b"retained", QoS::AtLeastOnce, true).await;
        assert_eq!(&live.recv_publish().await.payload[..], b"retained");
        p.publish(&t, b"passing", QoS::AtLeastOnce, false).await;
        p.publish(&t, b"", QoS::AtMostOnce, false).await; // empty, not retained
        assert_eq!(&live.recv_publish().await.payload[..], b"passing");
        assert_eq!(&live.recv_publish().await.payload[..], b"");
        let mut late = Raw::connect(b.addr, proto, &format!("late-{proto:?}")).await;
        late.subscribe(&t, QoS::AtLeastOnce).await;
        let r = late.recv_publish().await;
        assert_eq!((&r.payload[..], r.retain), (&b"retained"[..], true));
        assert!(late.no_publish(SHORT).await);
    }
}

/// Checks [MQTT-3.6.1-1] (PUBREL flags 0010), [MQTT-3.10.1-1]
/// (UNSUBSCRIBE flags 0010) and [MQTT-3.14.1-1] (DISCONNECT reserved bits
/// 0): other flags are malformed and the server closes the connection,
/// with nothing sent back; the same packets with the right flags are
/// answered. A DISCONNECT with a reserved bit set is no DISCONNECT: the
/// will goes out ([MQTT-3.14.4-3]: a valid one discards it).
#[tokio::test]
async fn wrong_fixed_header_flags_close_the_connection() {
    let b = start().await;
    let mut w = Raw::connect(b.addr, V311, "watch").await;
    w.subscribe("flags/#", QoS::AtLeastOnce).await;
    let unsubscribe = |first: u8| vec![first, 0x05, 0x00, 0x02, 0x00, 0x01, b'u'];
    let cases: [(&str, Vec<u8>, Vec<u8>); 3] = [
        (
            "pubrel",
            vec![0x60, 0x02, 0x00, 0x05],
            vec![0x62, 0x02, 0x00, 0x05],
        ),
        ("unsubscribe", unsubscribe(0xA0), unsubscribe(0xA2)),
        ("disconnect", vec![0xE1, 0x00], vec![0xE0, 0x00]),
    ];
    for (name, bad, good) in cases {
        let t = format!("flags/{name}");
        let (mut c, _) = Raw::connect_with(b.addr, V311, name, will(&t, false)).await;
        c.send_bytes(&bad).await;
        assert!(c.closed().await.is_none(), "{name}");
        assert_eq!(w.recv_publish().await.topic.as_str(), t, "{name}: an error");
        let (mut c, _) = Raw::connect_with(b.addr, V311, name, will(&t, false)).await;
        c.send_bytes(&good).await;
        match (name, c.recv().await) {
            ("pubrel", Some(Packet::PubComp(a))) => assert_eq!(a.packet_id, pid(5)),
            ("unsubscribe", Some(Packet::UnsubAck(a))) => assert_eq!(a.packet_id, pid(2)),
            ("disconnect", None) => {
                assert!(w.no_publish(SHORT).await, "a DISCONNECT discards the will")
            }
            (_, other) => panic!("{name}: {other:?}"),
        }
        if name != "disconnect" {
            c.disconnect().await; // leaves without its will
        }
    }
    assert!(w.no_publish(SHORT).await);
    still_serving(b.addr).await;
}

/// Checks [MQTT-3.8.4-2]: each SUBACK carries the Packet Identifier of the
/// SUBSCRIBE it answers (two in flight at once, answered in order).
#[tokio::test]
async fn a_suback_carries_the_packet_identifier_of_its_subscribe() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V311, "ids").await;
    let mut out = BytesMut::new();
    for (id, f) in [(0x1234, "sid/a"), (0x0101, "sid/b")] {
        Packet::Subscribe(Subscribe {
            packet_id: pid(id),
            properties: Properties::new(),
            subscriptions: vec![Subscription {
                filter: filter(f),
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            }],
        })
        .encode(V311, &mut out)
        .unwrap();
    }
    c.send_bytes(&out).await;
    for want in [0x1234, 0x0101] {
        match c.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.packet_id, pid(want)),
            other => panic!("{other:?}"),
        }
    }
}

/// Checks [MQTT-3.10.4-3]: deliveries begun before an UNSUBSCRIBE are
/// completed: the QoS 2 exchange goes on to PUBREL, and the unacknowledged
/// QoS 1 message is sent again when the session resumes, with DUP 1 as a
/// re-delivery ([MQTT-3.3.1-1]); a new message on the filter is not sent.
#[tokio::test]
async fn an_unsubscribe_completes_the_deliveries_already_begun() {
    let b = start().await;
    let (mut s, _) = Raw::connect_with(b.addr, V311, "begun", persistent(V311)).await;
    s.subscribe("begun/2", QoS::ExactlyOnce).await;
    s.subscribe("begun/1", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V311, "p").await;
    p.publish("begun/2", b"two", QoS::ExactlyOnce, false).await;
    p.publish("begun/1", b"one", QoS::AtLeastOnce, false).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        match s.recv().await {
            Some(Packet::Publish(m)) => {
                assert!(!m.dup, "a first delivery");
                ids.push(m.qos);
            }
            other => panic!("{other:?}"),
        }
    }
    s.unsubscribe("begun/2").await;
    s.unsubscribe("begun/1").await;
    let two = ids.iter().find_map(|q| match q {
        QosPid::ExactlyOnce(id) => Some(*id),
        _ => None,
    });
    s.send(Packet::PubRec(petrel_codec::PubAck::new(two.unwrap())))
        .await;
    match s.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(Some(r.packet_id), two),
        other => panic!("{other:?}"),
    }
    s.send(Packet::PubComp(petrel_codec::PubAck::new(two.unwrap())))
        .await;
    drop(s); // the QoS 1 message is still unacknowledged
    p.publish("begun/1", b"after", QoS::AtLeastOnce, false)
        .await;
    let (mut s, ack) = Raw::connect_with(b.addr, V311, "begun", persistent(V311)).await;
    assert!(ack.session_present);
    let again = s.recv_publish().await;
    assert_eq!((&again.payload[..], again.dup), (&b"one"[..], true));
    assert!(s.no_publish(SHORT).await, "'after' matched no subscription");
}

/// Checks [MQTT-3.3.4-1]: the server answers a PUBLISH as its QoS asks:
/// nothing for QoS 0, PUBACK for QoS 1 and PUBREC for QoS 2, each with the
/// PUBLISH's Packet Identifier.
#[tokio::test]
async fn the_server_answers_each_publish_as_its_qos_asks() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V311, "answers").await;
    let mut m = Publish::new(topic("ans/t"), Bytes::from_static(b"x"));
    c.send(Packet::Publish(m.clone())).await;
    // Silence for QoS 0, on a connection that does answer what comes next.
    c.silent(SHORT).await;
    m.qos = QosPid::AtLeastOnce(pid(0x0A0B));
    c.send(Packet::Publish(m.clone())).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, pid(0x0A0B)),
        other => panic!("{other:?}"),
    }
    m.qos = QosPid::ExactlyOnce(pid(0x0C0D));
    c.send(Packet::Publish(m)).await;
    match c.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.packet_id, pid(0x0C0D)),
        other => panic!("{other:?}"),
    }
}

/// Checks 3.1.1: [MQTT-3.1.2-4] and [MQTT-3.1.3-2]; 5.0: [MQTT-3.1.3-2]:
/// the server keeps a session after its connection ends and finds it again
/// by the ClientId: the same ClientId resumes it (Session Present, the
/// message queued while away), another ClientId does not.
#[tokio::test]
async fn a_session_is_found_again_by_its_client_id() {
    let b = start().await;
    for proto in [V311, Protocol::V5] {
        let t = format!("key/{proto:?}");
        let (mut c, ack) = Raw::connect_with(b.addr, proto, "keyed", persistent(proto)).await;
        assert!(!ack.session_present);
        c.subscribe(&t, QoS::AtLeastOnce).await;
        c.disconnect().await;
        let mut p = Raw::connect(b.addr, proto, "p").await;
        p.publish(&t, b"queued", QoS::AtLeastOnce, false).await;
        let (mut other, ack) = Raw::connect_with(b.addr, proto, "keyed2", persistent(proto)).await;
        assert!(!ack.session_present, "{proto:?}");
        assert!(other.no_publish(SHORT).await);
        let (mut c, ack) = Raw::connect_with(b.addr, proto, "keyed", persistent(proto)).await;
        assert!(ack.session_present, "{proto:?}");
        assert_eq!(&c.recv_publish().await.payload[..], b"queued");
        // Clean up: end both sessions.
        for id in ["keyed", "keyed2"] {
            Raw::connect(b.addr, proto, id).await.disconnect().await;
        }
    }
}
