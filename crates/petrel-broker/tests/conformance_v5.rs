//! MQTT 5.0 statements about the server, each checked over a socket.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use petrel_codec::{
    MqttString, Packet, Properties, Protocol, PubAck, Publish, QoS, QosPid, ReasonCode, Will,
};
use support::*;

const V5: Protocol = Protocol::V5;
const SHORT: Duration = Duration::from_millis(300);

/// Checks [MQTT-1.5.4-3]: a leading U+FEFF in a topic is kept byte for byte.
#[tokio::test]
async fn a_byte_order_mark_in_a_topic_is_kept_v5() {
    let b = start().await;
    let t = "\u{FEFF}bom5/t";
    let mut s = Raw::connect(b.addr, V5, "s").await;
    s.subscribe(t, QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    p.publish(t, b"x", QoS::AtLeastOnce, false).await;
    assert_eq!(s.recv_publish().await.topic.as_str(), t);
}

/// Checks [MQTT-3.2.2-7] and [MQTT-4.13.2-1]: after a CONNACK of 0x80 or
/// above the server closes the connection.
#[tokio::test]
async fn a_refusing_connack_is_followed_by_the_close() {
    let mut config = config();
    config.limits.max_client_id_length = 23;
    let b = start_with(config).await;
    let (mut c, ack) = Raw::connect_with(b.addr, V5, &"x".repeat(40), |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    // Nothing but the close follows: no second CONNACK.
    assert!(c.closed().await.is_none());
}

/// Checks [MQTT-3.2.2-12]: a Will QoS above the server's Maximum QoS is
/// refused with CONNACK 0x9B; [MQTT-3.2.2-9]: Maximum QoS is advertised;
/// [MQTT-3.2.2-10]: a SUBSCRIBE asking for QoS 2 is still accepted.
#[tokio::test]
async fn maximum_qos_refuses_a_will_above_it_and_still_takes_subscribe_qos2() {
    let mut config = config();
    config.limits.max_qos = 1;
    let b = start_with(config).await;
    let (_c, ack) = Raw::connect_with(b.addr, V5, "w", |c| {
        c.will = Some(Will {
            topic: topic("w/t"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties::new(),
        });
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::QOS_NOT_SUPPORTED);
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "ok", |_| {}).await;
    assert_eq!(ack.properties.maximum_qos(), Some(QoS::AtLeastOnce));
    let suback = c.subscribe("q/t", QoS::ExactlyOnce).await;
    assert_eq!(suback.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
}

/// Checks [MQTT-4.12.0-1]: an unsupported Authentication Method is refused
/// with CONNACK 0x8C and the connection closed; [MQTT-4.12.0-6]: without a
/// method the server sends no AUTH and no method in CONNACK.
#[tokio::test]
async fn an_unknown_authentication_method_is_refused() {
    let b = start().await;
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "auth", |c| {
        c.properties
            .set_authentication_method(Some(MqttString::from_static("SCRAM-SHA-1")));
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(c.closed().await.is_none());
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "plain", |_| {}).await;
    assert!(ack.properties.authentication_method().is_none());
    c.silent(SHORT).await; // no AUTH
    c.alive().await;
}

/// Checks [MQTT-3.3.4-10], [MQTT-4.9.0-2] and [MQTT-4.9.0-3]: with the
/// client's Receive Maximum used up, no further QoS 1 PUBLISH is sent, but
/// other packets are still answered at once.
#[tokio::test]
async fn a_full_send_quota_holds_publishes_but_not_other_packets() {
    let b = start().await;
    let (mut s, _) = Raw::connect_with(b.addr, V5, "rm1", |c| {
        c.properties
            .set_receive_maximum(std::num::NonZeroU16::new(1));
    })
    .await;
    s.subscribe("rq/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    p.publish("rq/t", b"1", QoS::AtLeastOnce, false).await;
    p.publish("rq/t", b"2", QoS::AtLeastOnce, false).await;
    let first = match s.recv().await {
        Some(Packet::Publish(m)) => m,
        other => panic!("{other:?}"),
    };
    // Quota is zero now: PINGREQ and SUBSCRIBE are still answered.
    s.send(Packet::PingReq).await;
    assert_eq!(s.recv().await, Some(Packet::PingResp));
    let ack = s.subscribe("rq/other", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_0]);
    s.silent(SHORT).await; // the second PUBLISH waits
    let QosPid::AtLeastOnce(id) = first.qos else {
        panic!()
    };
    s.send(Packet::PubAck(PubAck::new(id))).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"2");
}

/// Checks [MQTT-4.3.2-5]: after the PUBACK, a PUBLISH reusing the packet
/// identifier is a new message, whatever its DUP flag.
#[tokio::test]
async fn a_reused_identifier_after_puback_is_a_new_message() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, V5, "s").await;
    s.subscribe("re/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    for (payload, dup) in [(&b"first"[..], false), (&b"second"[..], true)] {
        let mut m = Publish::new(topic("re/t"), Bytes::copy_from_slice(payload));
        m.qos = QosPid::AtLeastOnce(pid(9));
        m.dup = dup;
        p.send(Packet::Publish(m)).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    assert_eq!(&s.recv_publish().await.payload[..], b"first");
    assert_eq!(&s.recv_publish().await.payload[..], b"second");
}

/// Checks [MQTT-4.8.2-3]: a shared subscription delivers at the QoS the
/// chosen member was granted.
#[tokio::test]
async fn shared_delivery_uses_the_chosen_members_granted_qos() {
    let b = start().await;
    let mut zero = Raw::connect(b.addr, V5, "zero").await;
    zero.subscribe("$share/g/sq/t", QoS::AtMostOnce).await;
    let mut two = Raw::connect(b.addr, V5, "two").await;
    two.subscribe("$share/g/sq/t", QoS::ExactlyOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    for i in 0..6u8 {
        p.publish("sq/t", &[i], QoS::ExactlyOnce, false).await;
    }
    let mut seen = 0;
    while let Some(Packet::Publish(m)) = zero.try_recv(SHORT).await {
        assert_eq!(m.qos.qos(), QoS::AtMostOnce);
        seen += 1;
    }
    loop {
        match two.try_recv(SHORT).await {
            Some(Packet::Publish(m)) => {
                assert_eq!(m.qos.qos(), QoS::ExactlyOnce);
                if let QosPid::ExactlyOnce(id) = m.qos {
                    two.send(Packet::PubRec(PubAck::new(id))).await;
                }
                seen += 1;
            }
            Some(Packet::PubRel(r)) => two.send(Packet::PubComp(PubAck::new(r.packet_id))).await,
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(seen, 6);
}

/// Checks [MQTT-4.13.1-1]: a Malformed Packet closes the connection, with
/// a DISCONNECT carrying the reason code first.
#[tokio::test]
async fn a_malformed_packet_closes_with_its_reason_code() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V5, "bad").await;
    let mut out = BytesMut::new();
    // A PUBLISH with QoS 3 (both QoS bits set) is malformed.
    out.extend_from_slice(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    c.send_bytes(&out).await;
    assert_eq!(
        c.closed().await.unwrap().reason_code,
        ReasonCode::MALFORMED_PACKET
    );
}

/// PUBACK and PUBREC reason codes (3.4.2.1, 3.5.2.1): 0x10 when no
/// subscription matched, 0x00 when one did, 0x87 for a write into `$SYS`
/// (a PUBREC with an error ends the QoS 2 exchange, [MQTT-4.3.3-9]).
#[tokio::test]
async fn acknowledgements_say_what_routing_found() {
    let b = start().await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let ack = p.publish("nobody/listens", b"x", qos, false).await.unwrap();
        if qos == QoS::AtLeastOnce {
            assert_eq!(ack.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS);
        }
    }
    let mut m = Publish::new(topic("nobody/listens"), Bytes::from_static(b"x"));
    m.qos = QosPid::ExactlyOnce(pid(77));
    p.send(Packet::Publish(m)).await;
    match p.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        other => panic!("{other:?}"),
    }
    p.send(Packet::PubRel(PubAck::new(pid(77)))).await;
    assert!(
        matches!(p.recv().await, Some(Packet::PubComp(a)) if a.reason_code == ReasonCode::SUCCESS)
    );
    let mut s = Raw::connect(b.addr, V5, "s").await;
    s.subscribe("someone/listens", QoS::AtLeastOnce).await;
    let ack = p
        .publish("someone/listens", b"y", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let ack = p
        .publish("$SYS/broker/version", b"z", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let mut m = Publish::new(topic("$SYS/x"), Bytes::from_static(b"z"));
    m.qos = QosPid::ExactlyOnce(pid(78));
    p.send(Packet::Publish(m)).await;
    match p.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("{other:?}"),
    }
    // The exchange is over: the same identifier is a new message.
    let mut again = Publish::new(topic("someone/listens"), Bytes::from_static(b"new"));
    again.qos = QosPid::ExactlyOnce(pid(78));
    p.send(Packet::Publish(again)).await;
    match p.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    p.send(Packet::PubRel(PubAck::new(pid(78)))).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(_))));
    assert_eq!(&s.recv_publish().await.payload[..], b"y");
    assert_eq!(&s.recv_publish().await.payload[..], b"new");
}

fn with_id(id: u32) -> Properties {
    let mut p = Properties::new();
    p.push_subscription_identifier(petrel_codec::SubscriptionId::new(id).unwrap());
    p
}

fn ids(p: &Publish) -> Vec<u32> {
    p.properties
        .subscription_identifiers()
        .iter()
        .map(|i| i.get())
        .collect()
}

/// Checks [MQTT-3.3.4-5]: a shared and a plain subscription of one client
/// both match, so it gets two copies, each with its own subscription's
/// identifier only. Positive control: two plain overlapping subscriptions
/// give one copy carrying both identifiers.
#[tokio::test]
async fn overlapping_copies_carry_their_own_subscription_identifier() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, V5, "ov").await;
    let opts = petrel_codec::SubscriptionOptions::qos(QoS::AtLeastOnce);
    s.subscribe_with("$share/g5/ov/t", opts, with_id(11)).await;
    s.subscribe_with("ov/+", opts, with_id(12)).await;
    let mut p = Raw::connect(b.addr, V5, "ovp").await;
    p.publish("ov/t", b"x", QoS::AtLeastOnce, false).await;
    let mut got = vec![ids(&s.recv_publish().await), ids(&s.recv_publish().await)];
    got.sort();
    assert_eq!(got, vec![vec![11], vec![12]]);
    assert!(s.no_publish(SHORT).await);
    s.subscribe_with("ov2/#", opts, with_id(21)).await;
    s.subscribe_with("ov2/+", opts, with_id(22)).await;
    p.publish("ov2/t", b"y", QoS::AtLeastOnce, false).await;
    let mut both = ids(&s.recv_publish().await);
    both.sort();
    assert_eq!(both, vec![21, 22]);
    assert!(s.no_publish(SHORT).await);
}

/// Checks [MQTT-4.3.3-13]: the broker's QoS 2 delivery of a message whose
/// expiry passes while the subscriber holds its PUBREC goes on: the PUBREC
/// still gets its PUBREL, and the PUBREL its PUBCOMP.
#[tokio::test]
async fn a_qos2_exchange_continues_after_the_message_expired() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, V5, "q2x-sub").await;
    s.subscribe("q2x/t", QoS::ExactlyOnce).await;
    let mut p = Raw::connect(b.addr, V5, "q2x-pub").await;
    let mut props = Properties::new();
    props.set_message_expiry_interval(Some(1));
    p.publish_with("q2x/t", b"soon gone", QoS::ExactlyOnce, false, props)
        .await;
    let id = match s.recv().await {
        Some(Packet::Publish(m)) => m.qos.packet_id().unwrap(),
        other => panic!("{other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.send(Packet::PubRec(PubAck::new(id))).await;
    match s.recv().await {
        Some(Packet::PubRel(r)) => {
            assert_eq!(r.packet_id, id);
            assert_eq!(r.reason_code, ReasonCode::SUCCESS);
        }
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.send(Packet::PubComp(PubAck::new(id))).await;
    s.alive().await;
}

/// Checks [MQTT-4.9.0-1]: the send quota starts at the client's Receive
/// Maximum (3 here): three QoS 1 messages go out unacknowledged, not more,
/// and each acknowledgement lets one more go. Positive control: without a
/// Receive Maximum all five go at once.
#[tokio::test]
async fn the_send_quota_starts_at_the_receive_maximum() {
    let b = start().await;
    for (rm, first) in [(Some(3u16), 3), (None, 5)] {
        let (mut s, _) = Raw::connect_with(b.addr, V5, "quota", |c| {
            c.properties
                .set_receive_maximum(rm.and_then(std::num::NonZeroU16::new));
        })
        .await;
        s.subscribe("quota/t", QoS::AtLeastOnce).await;
        let mut p = Raw::connect(b.addr, V5, "quota-pub").await;
        for i in 0..5u8 {
            p.publish("quota/t", &[i], QoS::AtLeastOnce, false).await;
        }
        let mut held = Vec::new();
        for _ in 0..first {
            match s.recv().await {
                Some(Packet::Publish(m)) => held.push(m.qos.packet_id().unwrap()),
                other => panic!("{other:?}"),
            }
        }
        s.silent(SHORT).await;
        if first < 5 {
            s.send(Packet::PubAck(PubAck::new(held[0]))).await;
            assert!(matches!(s.recv().await, Some(Packet::Publish(_))));
            s.silent(SHORT).await;
        }
        s.disconnect().await;
    }
}

/// Checks [MQTT-4.8.2-6]: a shared subscriber that answers with a PUBACK of
/// 0x80 or above has the message discarded: it is not sent to another
/// member. The next message goes to the other member (which would have
/// got the refused one first if it had been passed on).
#[tokio::test]
async fn a_refused_shared_delivery_is_not_tried_on_another_member() {
    let b = start().await;
    let mut r = Raw::connect(b.addr, V5, "sh6-a").await;
    let mut o = Raw::connect(b.addr, V5, "sh6-b").await;
    r.subscribe("$share/g6/sh6/t", QoS::AtLeastOnce).await;
    o.subscribe("$share/g6/sh6/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V5, "sh6-p").await;
    p.publish("sh6/t", b"x", QoS::AtLeastOnce, false).await;
    // Whoever got it refuses it.
    let ((mut holder, m), mut other) = match r.try_recv(SHORT).await {
        Some(Packet::Publish(m)) => ((r, m), o),
        None => match o.recv().await {
            Some(Packet::Publish(m)) => ((o, m), r),
            x => panic!("{x:?}"),
        },
        x => panic!("{x:?}"),
    };
    let id = m.qos.packet_id().unwrap();
    holder
        .send(Packet::PubAck(PubAck::with_reason(
            id,
            ReasonCode::UNSPECIFIED_ERROR,
        )))
        .await;
    // The refuser leaves the group; the next message goes to the other,
    // and it is that one, not the refused one.
    holder.unsubscribe("$share/g6/sh6/t").await;
    p.publish("sh6/t", b"y", QoS::AtLeastOnce, false).await;
    assert_eq!(&other.recv_publish().await.payload[..], b"y");
    assert!(other.no_publish(SHORT).await);
    assert!(holder.no_publish(SHORT).await);
}

/// Checks [MQTT-4.8.2-4]: a QoS 2 message of a shared subscription whose
/// member lost its connection mid-delivery goes to that member again when
/// it reconnects, and never to the other member. Positive control: a new
/// message published meanwhile does go to the other member.
#[tokio::test]
async fn an_interrupted_shared_qos2_delivery_is_completed_to_the_same_member() {
    let b = start().await;
    let join = |id: &'static str| {
        let addr = b.addr;
        async move {
            let (mut c, _) = Raw::connect_with(addr, V5, id, persistent(V5)).await;
            c.subscribe("$share/g4/s4/t", QoS::ExactlyOnce).await;
            c
        }
    };
    let a = join("sh4-a").await;
    let o = join("sh4-b").await;
    let mut p = Raw::connect(b.addr, V5, "sh4-p").await;
    p.publish("s4/t", b"x", QoS::ExactlyOnce, false).await;
    let (r, r_id, mut other) = {
        let mut a = a;
        let mut o = o;
        match a.try_recv(SHORT).await {
            Some(Packet::Publish(m)) => {
                assert_eq!(&m.payload[..], b"x");
                (a, "sh4-a", o)
            }
            None => match o.recv().await {
                Some(Packet::Publish(m)) => {
                    assert_eq!(&m.payload[..], b"x");
                    (o, "sh4-b", a)
                }
                x => panic!("{x:?}"),
            },
            x => panic!("{x:?}"),
        }
    };
    // The receiver goes away without a PUBREC.
    drop(r);
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.publish("s4/t", b"y", QoS::ExactlyOnce, false).await;
    assert_eq!(&other.recv_publish().await.payload[..], b"y");
    assert!(other.no_publish(SHORT).await, "x went to the other member");
    let (mut back, ack) = Raw::connect_with(b.addr, V5, r_id, persistent(V5)).await;
    assert!(ack.session_present);
    match back.recv().await {
        Some(Packet::Publish(m)) => {
            assert_eq!(&m.payload[..], b"x");
            assert!(m.dup);
        }
        other => panic!("{other:?}"),
    }
}

/// Checks [MQTT-4.8.2-5]: if the member holding an unfinished shared
/// delivery has its session end first, the message is not sent to another
/// member. Positive control: a new message goes to the other member.
#[tokio::test]
async fn a_shared_delivery_of_an_ended_session_is_not_passed_on() {
    let b = start().await;
    let short = |c: &mut petrel_codec::Connect| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(1));
    };
    let (mut a, _) = Raw::connect_with(b.addr, V5, "sh5-a", short).await;
    a.subscribe("$share/g5e/s5/t", QoS::ExactlyOnce).await;
    let (mut o, _) = Raw::connect_with(b.addr, V5, "sh5-b", short).await;
    o.subscribe("$share/g5e/s5/t", QoS::ExactlyOnce).await;
    let mut p = Raw::connect(b.addr, V5, "sh5-p").await;
    p.publish("s5/t", b"x", QoS::ExactlyOnce, false).await;
    let (conn, holder, mut other) = match a.try_recv(SHORT).await {
        Some(Packet::Publish(_)) => (a, "sh5-a", o),
        None => match o.recv().await {
            Some(Packet::Publish(_)) => (o, "sh5-b", a),
            x => panic!("{x:?}"),
        },
        x => panic!("{x:?}"),
    };
    // Its connection drops, and its session ends a second later.
    drop(conn);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(other.no_publish(SHORT).await, "x went to the other member");
    p.publish("s5/t", b"y", QoS::ExactlyOnce, false).await;
    assert_eq!(&other.recv_publish().await.payload[..], b"y");
    let (_back, ack) = Raw::connect_with(b.addr, V5, holder, short).await;
    assert!(!ack.session_present);
}
