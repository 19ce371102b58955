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
/// above the server closes the connection; [MQTT-3.1.3-8]: a ClientID it
/// rejects (longer than its 23 bytes here) gets CONNACK 0x85, then the
/// close.
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
/// a DISCONNECT carrying the reason code first; [MQTT-3.3.1-4]: a PUBLISH
/// with both QoS bits set is such a packet, where the same bytes with one
/// bit set are QoS 1 and 2 PUBLISHes, answered.
#[tokio::test]
async fn a_malformed_packet_closes_with_its_reason_code() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V5, "bad").await;
    // Topic "t", packet identifier 1, no properties, no payload.
    let publish = |first: u8| [first, 0x06, 0x00, 0x01, b't', 0x00, 0x01, 0x00];
    c.send_bytes(&publish(0x32)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    c.send_bytes(&publish(0x34)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(_))));
    // QoS 3 (both QoS bits set) is malformed.
    c.send_bytes(&publish(0x36)).await;
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

/// A 5.0 CONNECT for `id` with its bytes edited: `at` is the offset of the
/// protocol name's "MQTT" in what `edit` gets.
fn connect_bytes(id: &str, edit: impl FnOnce(&mut BytesMut, usize)) -> BytesMut {
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(petrel_codec::Connect::new(
        V5,
        MqttString::try_from(id).unwrap(),
    )))
    .encode(V5, &mut out)
    .unwrap();
    let at = out.windows(4).position(|w| w == b"MQTT").unwrap();
    edit(&mut out, at);
    out
}

/// Checks [MQTT-3.1.2-1] (a Protocol Name other than "MQTT") and
/// [MQTT-3.1.2-2] (a Protocol Version the server does not take): the
/// server may answer CONNACK 0x84 and then must close. After level 5 the
/// refusal is a 5.0 CONNACK 0x84; after level 6, whose format no one
/// knows, the 3.1.1 return code 1 that every earlier version reads (as
/// Mosquitto answers). The same bytes with name and level right are
/// accepted.
#[tokio::test]
async fn an_unknown_protocol_name_or_version_is_refused_and_closed() {
    let b = start().await;
    type Case = (&'static str, fn(&mut BytesMut, usize), &'static [u8]);
    let cases: [Case; 2] = [
        (
            "name",
            |out, at| out[at + 3] = b'X',
            &[0x20, 0x03, 0x00, 0x84, 0x00],
        ),
        (
            "version",
            |out, at| out[at + 4] = 6,
            &[0x20, 0x02, 0x00, 0x01],
        ),
    ];
    for (what, edit, refusal) in cases {
        let mut c = Raw::open(b.addr, V5).await;
        c.send_bytes(&connect_bytes("proto", edit)).await;
        assert_eq!(c.recv_bytes(refusal.len()).await, refusal, "{what}");
        assert!(c.closed().await.is_none(), "{what}");
        still_serving(b.addr).await;
    }
    let mut c = Raw::open(b.addr, V5).await;
    c.send_bytes(&connect_bytes("proto", |_, _| {})).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
}

/// Checks [MQTT-3.1.4-1]: a CONNECT that breaks the format (the reserved
/// connect flag set) closes the connection, after at most a CONNACK with
/// an error code; the others are still served.
#[tokio::test]
async fn a_malformed_connect_is_closed_v5() {
    let b = start().await;
    let mut c = Raw::open(b.addr, V5).await;
    // The connect flags are the byte after the version.
    c.send_bytes(&connect_bytes("bad", |out, at| out[at + 5] |= 0x01))
        .await;
    let (before, disconnect) = c.closed_after().await;
    assert!(disconnect.is_none());
    match &before[..] {
        [] => {}
        [Packet::ConnAck(a)] => assert!(a.reason_code.is_error(), "{a:?}"),
        other => panic!("{other:?}"),
    }
    still_serving(b.addr).await;
}

fn will_v5(t: &str, retain: bool) -> impl FnOnce(&mut petrel_codec::Connect) {
    let t = t.to_string();
    move |c| {
        let mut properties = Properties::new();
        for (k, v) in [("k", "1"), ("j", "2"), ("k", "3")] {
            properties.push_user_property(petrel_codec::UserProperty::new(
                MqttString::try_from(k).unwrap(),
                MqttString::try_from(v).unwrap(),
            ));
        }
        c.will = Some(Will {
            topic: topic(&t),
            payload: Bytes::from_static(b"w"),
            qos: QoS::AtLeastOnce,
            retain,
            properties,
        });
    }
}

/// Checks [MQTT-3.1.2-14] (Will Retain 0: published as a non-retained
/// message) and [MQTT-3.1.2-15] (Will Retain 1: published retained), and
/// [MQTT-3.1.3-10]: the will's User Properties arrive in their order,
/// duplicates kept.
#[tokio::test]
async fn will_retain_decides_whether_the_will_is_retained_v5() {
    let b = start().await;
    let mut w = Raw::connect(b.addr, V5, "watch").await;
    // Retain As Published, so the watcher sees the RETAIN flag as it was.
    let opts = petrel_codec::SubscriptionOptions {
        retain_as_published: true,
        ..petrel_codec::SubscriptionOptions::qos(QoS::AtLeastOnce)
    };
    w.subscribe_with("wr5/#", opts, Properties::new()).await;
    for (t, retain) in [("wr5/plain", false), ("wr5/kept", true)] {
        let (c, _) = Raw::connect_with(b.addr, V5, "dies", will_v5(t, retain)).await;
        drop(c);
        let p = w.recv_publish().await;
        assert_eq!((p.topic.as_str(), p.retain), (t, retain));
        let users: Vec<(String, String)> = p
            .properties
            .user_properties()
            .iter()
            .map(|u| (u.key.as_str().into(), u.value.as_str().into()))
            .collect();
        assert_eq!(
            users,
            [("k", "1"), ("j", "2"), ("k", "3")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
    let mut late = Raw::connect(b.addr, V5, "late").await;
    late.subscribe("wr5/#", QoS::AtLeastOnce).await;
    let p = late.recv_publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("wr5/kept", true));
    assert!(
        late.no_publish(SHORT).await,
        "the plain will was not retained"
    );
}

/// Checks [MQTT-3.1.3-6] (a zero-length ClientID is given one of its own)
/// and [MQTT-3.1.3-7] (the CONNECT is processed as if that ID had been
/// sent, and CONNACK carries it): the assigned ID names a session that a
/// later CONNECT with that ID resumes; two such clients get two IDs.
#[tokio::test]
async fn an_empty_client_id_is_assigned_one_that_names_its_session() {
    let b = start().await;
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "", persistent(V5)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let id = ack
        .properties
        .assigned_client_identifier()
        .expect("an Assigned Client Identifier")
        .as_str()
        .to_string();
    assert!(!id.is_empty());
    let (_, other) = Raw::connect_with(b.addr, V5, "", |_| {}).await;
    assert_ne!(
        other
            .properties
            .assigned_client_identifier()
            .unwrap()
            .as_str(),
        id
    );
    c.subscribe("assigned/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    p.publish("assigned/t", b"kept", QoS::AtLeastOnce, false)
        .await;
    let (mut again, ack) = Raw::connect_with(b.addr, V5, &id, persistent(V5)).await;
    assert!(ack.session_present);
    assert!(ack.properties.assigned_client_identifier().is_none());
    assert_eq!(&again.recv_publish().await.payload[..], b"kept");
}

/// Checks [MQTT-3.1.4-4]: the server applies Clean Start: 0 resumes the
/// session (its subscription and the message queued for it), 1 discards
/// it (Session Present 0, the subscription gone, until made again).
#[tokio::test]
async fn clean_start_decides_whether_the_session_is_resumed() {
    let b = start().await;
    let (mut c, _) = Raw::connect_with(b.addr, V5, "cs", persistent(V5)).await;
    c.subscribe("cs/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    p.publish("cs/t", b"1", QoS::AtLeastOnce, false).await;
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "cs", persistent(V5)).await;
    assert!(ack.session_present);
    assert_eq!(&c.recv_publish().await.payload[..], b"1");
    c.disconnect().await;
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "cs", |c| {
        c.clean_start = true;
        c.properties.set_session_expiry_interval(Some(300));
    })
    .await;
    assert!(!ack.session_present);
    p.publish("cs/t", b"2", QoS::AtLeastOnce, false).await;
    assert!(c.no_publish(SHORT).await, "the subscription went with it");
    c.subscribe("cs/t", QoS::AtLeastOnce).await;
    p.publish("cs/t", b"3", QoS::AtLeastOnce, false).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"3");
}

/// Checks [MQTT-3.2.0-1]: a resumed session's queued message comes after
/// the CONNACK 0x00, never before it; and [MQTT-3.2.2-1]: the CONNACK's
/// Acknowledge Flags byte has bits 7-1 zero, with Session Present 0 and 1
/// (bit 0, which the test sees move).
#[tokio::test]
async fn connack_comes_first_and_its_flags_carry_only_session_present() {
    let b = start().await;
    let (mut c, _) = Raw::connect_with(b.addr, V5, "first", persistent(V5)).await;
    c.subscribe("first/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    p.publish("first/t", b"waiting", QoS::AtLeastOnce, false)
        .await;
    for present in [true, false] {
        let mut c = Raw::open(b.addr, V5).await;
        let mut connect = petrel_codec::Connect::new(V5, MqttString::from_static("first"));
        persistent(V5)(&mut connect);
        connect.clean_start = !present;
        c.send(Packet::Connect(Box::new(connect))).await;
        let head = c.recv_bytes(4).await;
        assert_eq!(head[0], 0x20, "CONNACK first: {head:?}");
        assert!(head[1] < 0x80, "a one-byte remaining length: {head:?}");
        assert_eq!(head[2], u8::from(present), "Acknowledge Flags");
        assert_eq!(head[3], 0x00, "reason code");
        let rest = usize::from(head[1]) - 2;
        c.recv_bytes(rest).await;
        if present {
            assert_eq!(&c.recv_publish().await.payload[..], b"waiting");
        }
        c.disconnect().await;
    }
}

/// Checks [MQTT-3.3.1-2] and [MQTT-4.3.1-1] (a QoS 0 PUBLISH goes out with
/// DUP 0) and [MQTT-3.3.1-3] (the outgoing DUP is the server's own, not
/// the inbound one): a QoS 1 PUBLISH sent with DUP 1 reaches a QoS 0 and a
/// QoS 1 subscriber with DUP 0. The control shows DUP 1 is seen when it is
/// set: the QoS 1 copy, unacknowledged, comes again with DUP 1 when the
/// session resumes ([MQTT-3.3.1-1]).
#[tokio::test]
async fn the_dup_flag_out_is_the_servers_own() {
    let b = start().await;
    let mut zero = Raw::connect(b.addr, V5, "zero").await;
    zero.subscribe("dup5/t", QoS::AtMostOnce).await;
    let (mut one, _) = Raw::connect_with(b.addr, V5, "one", persistent(V5)).await;
    one.subscribe("dup5/t", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    let mut m = Publish::new(topic("dup5/t"), Bytes::from_static(b"d"));
    m.qos = QosPid::AtLeastOnce(pid(3));
    m.dup = true;
    p.send(Packet::Publish(m)).await;
    let got = zero.recv_publish().await;
    assert_eq!((got.qos, got.dup), (QosPid::AtMostOnce, false));
    match one.recv().await {
        Some(Packet::Publish(m)) => {
            assert_eq!((m.qos.qos(), m.dup), (QoS::AtLeastOnce, false));
        }
        other => panic!("{other:?}"),
    }
    drop(one); // not acknowledged
    let (mut one, ack) = Raw::connect_with(b.addr, V5, "one", persistent(V5)).await;
    assert!(ack.session_present);
    let again = one.recv_publish().await;
    assert_eq!((&again.payload[..], again.dup), (&b"d"[..], true));
}

/// Checks [MQTT-3.3.2-4]: the Payload Format Indicator reaches each
/// subscriber as published: 1 where it was 1, absent where it was absent,
/// live and retained.
#[tokio::test]
async fn the_payload_format_indicator_reaches_subscribers_unchanged() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, V5, "pfi").await;
    s.subscribe("pfi/#", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    for (t, indicator) in [("pfi/utf8", Some(true)), ("pfi/bytes", None)] {
        let mut props = Properties::new();
        props.set_payload_format_indicator(indicator);
        p.publish_with(t, b"text", QoS::AtLeastOnce, true, props)
            .await;
        let got = s.recv_publish().await;
        assert_eq!(got.properties.payload_format_indicator(), indicator, "{t}");
    }
    let mut late = Raw::connect(b.addr, V5, "late").await;
    late.subscribe("pfi/utf8", QoS::AtLeastOnce).await;
    let got = late.recv_publish().await;
    assert_eq!(got.properties.payload_format_indicator(), Some(true));
}

/// Checks [MQTT-3.8.4-1] (every SUBSCRIBE gets a SUBACK, a refused one
/// too), [MQTT-3.8.4-5] (several filters handled as a sequence, one
/// SUBACK), [MQTT-3.8.4-6] (one reason code per filter, in order) and
/// [MQTT-3.8.4-7] (each the granted QoS or a failure code).
#[tokio::test]
async fn a_multi_filter_subscribe_gets_one_suback_with_a_code_per_filter_v5() {
    let mut config = config();
    config.limits.max_topic_levels = 4;
    config.limits.max_qos = 1;
    let b = start_with(config).await;
    let mut c = Raw::connect(b.addr, V5, "multi").await;
    let packet_id = c.next_pid();
    let sub = |f: &str, q: QoS| petrel_codec::Subscription {
        filter: filter(f),
        options: petrel_codec::SubscriptionOptions::qos(q),
    };
    c.send(Packet::Subscribe(petrel_codec::Subscribe {
        packet_id,
        properties: Properties::new(),
        subscriptions: vec![
            sub("m5/a", QoS::ExactlyOnce),
            sub("m5/b/c/d/e/f", QoS::AtLeastOnce),
            sub("m5/#", QoS::AtMostOnce),
        ],
    }))
    .await;
    match c.recv().await {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.packet_id, packet_id);
            assert_eq!(a.reason_codes.len(), 3);
            // Granted QoS 1, the server's maximum, for the QoS 2 request.
            assert_eq!(a.reason_codes[0], ReasonCode::GRANTED_QOS_1);
            assert!(a.reason_codes[1].is_error(), "{:?}", a.reason_codes);
            assert_eq!(a.reason_codes[2], ReasonCode::GRANTED_QOS_0);
        }
        other => panic!("{other:?}"),
    }
    c.silent(SHORT).await; // one SUBACK
                           // A SUBSCRIBE whose only filter is refused is answered too.
    let a = c.subscribe("z/1/2/3/4/5", QoS::AtMostOnce).await;
    assert!(a.reason_codes[0].is_error());
    // The granted filters are in place, as a sequence of SUBSCRIBEs would
    // leave them: "m5/a" at QoS 1 and "m5/#" at QoS 0, overlapping, so one
    // copy at the larger QoS ([MQTT-3.3.4-2]); "m5/b" only through "m5/#".
    let mut p = Raw::connect(b.addr, V5, "p").await;
    p.publish("m5/a", b"x", QoS::AtLeastOnce, false).await;
    assert_eq!(c.recv_publish().await.qos.qos(), QoS::AtLeastOnce);
    p.publish("m5/b", b"y", QoS::AtLeastOnce, false).await;
    assert_eq!(c.recv_publish().await.qos.qos(), QoS::AtMostOnce);
    assert!(c.no_publish(SHORT).await);
}

/// Checks [MQTT-3.8.4-4]: subscribing again to the same filter replaces
/// the subscription, and with Retain Handling 0 the retained messages are
/// sent again; no message is lost or doubled on the way.
#[tokio::test]
async fn subscribing_again_replaces_the_subscription_and_resends_retained_v5() {
    let b = start().await;
    let mut p = Raw::connect(b.addr, V5, "again-pub").await;
    p.publish("again5/r", b"kept", QoS::AtLeastOnce, true).await;
    let mut c = Raw::connect(b.addr, V5, "again-sub").await;
    c.subscribe("again5/#", QoS::AtMostOnce).await;
    let r = c.recv_publish().await;
    assert_eq!(
        (r.topic.as_str(), r.qos.qos()),
        ("again5/r", QoS::AtMostOnce)
    );
    let a = c.subscribe("again5/#", QoS::AtLeastOnce).await;
    assert_eq!(a.reason_codes, [ReasonCode::GRANTED_QOS_1]);
    let r = c.recv_publish().await;
    assert_eq!((r.topic.as_str(), r.retain), ("again5/r", true), "re-sent");
    assert_eq!(r.qos.qos(), QoS::AtLeastOnce, "at the new QoS");
    p.publish("again5/live", b"x", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(c.recv_publish().await.topic.as_str(), "again5/live");
    assert!(c.no_publish(SHORT).await, "one subscription, one copy");
}

/// Checks [MQTT-3.10.4-4] (every UNSUBSCRIBE gets an UNSUBACK),
/// [MQTT-3.10.4-5] (with its Packet Identifier, even when nothing was
/// deleted: reason 0x11) and [MQTT-3.10.4-6] (several filters handled as
/// a sequence, one UNSUBACK with a code each).
#[tokio::test]
async fn unsubscribe_is_answered_once_with_a_code_per_filter_v5() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V5, "unsub").await;
    c.subscribe("u5/1", QoS::AtLeastOnce).await;
    for (filters, codes) in [
        (
            vec!["u5/1", "u5/never"],
            vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        ),
        (vec!["u5/1"], vec![ReasonCode::NO_SUBSCRIPTION_EXISTED]),
    ] {
        let packet_id = c.next_pid();
        c.send(Packet::Unsubscribe(petrel_codec::Unsubscribe {
            packet_id,
            properties: Properties::new(),
            filters: filters.iter().map(|f| filter(f)).collect(),
        }))
        .await;
        match c.recv().await {
            Some(Packet::UnsubAck(a)) => {
                assert_eq!(a.packet_id, packet_id);
                assert_eq!(a.reason_codes, codes);
            }
            other => panic!("{other:?}"),
        }
        c.silent(SHORT).await; // one UNSUBACK
    }
}

/// Checks [MQTT-3.12.4-1]: every PINGREQ gets a PINGRESP, three sent in
/// one write get three.
#[tokio::test]
async fn every_pingreq_is_answered_v5() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, V5, "pings").await;
    c.send_bytes(&[0xC0, 0x00, 0xC0, 0x00, 0xC0, 0x00]).await;
    for _ in 0..3 {
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
    c.silent(SHORT).await;
}

/// Checks [MQTT-4.3.3-7]: message expiry is not applied to a QoS 2
/// PUBLISH already sent: its subscriber drops the connection before the
/// PUBREC, comes back after the interval ran out, and is sent it again
/// (DUP 1, a second left of its interval). The control: of two messages
/// queued while it was away, never sent, the one with the same interval
/// has expired and the one without arrives.
#[tokio::test]
async fn a_qos2_publish_already_sent_does_not_expire() {
    let b = start().await;
    let mut watch = Raw::connect(b.addr, V5, "watch").await;
    watch.subscribe("q2keep/gone", QoS::AtLeastOnce).await;
    let (mut s, _) = Raw::connect_with(b.addr, V5, "q2keep", |c| {
        persistent(V5)(c);
        c.will = Some(Will {
            topic: topic("q2keep/gone"),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::new(),
        });
    })
    .await;
    s.subscribe("q2keep/t", QoS::ExactlyOnce).await;
    let mut p = Raw::connect(b.addr, V5, "p").await;
    let expiring = |seconds: Option<u32>| {
        let mut props = Properties::new();
        props.set_message_expiry_interval(seconds);
        props
    };
    p.publish_with(
        "q2keep/t",
        b"sent",
        QoS::ExactlyOnce,
        false,
        expiring(Some(1)),
    )
    .await;
    match s.recv().await {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"sent"),
        other => panic!("{other:?}"),
    }
    drop(s); // no PUBREC
             // The will says the broker has seen the connection go.
    watch.recv_publish().await;
    for (payload, interval) in [(&b"queued"[..], Some(1)), (b"lasting", None)] {
        p.publish_with(
            "q2keep/t",
            payload,
            QoS::ExactlyOnce,
            false,
            expiring(interval),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut s, ack) = Raw::connect_with(b.addr, V5, "q2keep", persistent(V5)).await;
    assert!(ack.session_present);
    let again = s.recv_publish().await;
    assert_eq!((&again.payload[..], again.dup), (&b"sent"[..], true));
    assert_eq!(again.properties.message_expiry_interval(), Some(1));
    assert_eq!(&s.recv_publish().await.payload[..], b"lasting");
    assert!(s.no_publish(SHORT).await, "the queued one expired");
}

fn will_on(t: &'static str, retain: bool) -> impl FnOnce(&mut petrel_codec::Connect) {
    move |c| {
        c.will = Some(Will {
            topic: topic(t),
            payload: Bytes::from_static(b"w"),
            qos: QoS::AtLeastOnce,
            retain,
            properties: Properties::new(),
        })
    }
}

/// Checks [MQTT-3.2.2-13]: a broker configured without retained messages
/// says Retain Available 0, refuses a CONNECT with a retained will
/// (CONNACK 0x9A, then the close; the same will not retained is taken),
/// and closes a connection that publishes with RETAIN 1 (DISCONNECT
/// 0x9A), after a message without it went through, and keeps nothing; a
/// 3.1.1 client gets return code 3 and the close. The control: the
/// default broker says nothing (available), takes the retained will and
/// keeps the retained message.
#[tokio::test]
async fn without_retained_messages_a_retained_will_or_publish_is_refused() {
    let plain = start().await;
    let (mut c, ack) = Raw::connect_with(plain.addr, V5, "default", will_on("nr/will", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.retain_available(), None);
    c.publish("nr/t", b"kept", QoS::AtLeastOnce, true).await;
    let mut late = Raw::connect(plain.addr, V5, "late").await;
    late.subscribe("nr/t", QoS::AtLeastOnce).await;
    assert_eq!(&late.recv_publish().await.payload[..], b"kept");

    let mut config = config();
    config.limits.retain_available = false;
    let b = start_with(config).await;
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "nr-will", will_on("nr/will", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::RETAIN_NOT_SUPPORTED);
    assert!(c.closed().await.is_none());
    let mut c = Raw::open(b.addr, Protocol::V3_1_1).await;
    let mut connect = petrel_codec::Connect::new(Protocol::V3_1_1, MqttString::from_static("nr3"));
    will_on("nr/will", true)(&mut connect);
    c.send(Packet::Connect(Box::new(connect))).await;
    assert_eq!(c.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x03]);
    assert!(c.closed().await.is_none());
    let (mut c, ack) = Raw::connect_with(b.addr, V5, "nr-will", will_on("nr/will", false)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.retain_available(), Some(false));
    assert_eq!(ack.properties.wildcard_subscription_available(), None);
    assert_eq!(ack.properties.shared_subscription_available(), None);
    c.subscribe("nr/t", QoS::AtLeastOnce).await;
    c.publish("nr/t", b"plain", QoS::AtLeastOnce, false).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"plain");
    let mut m = Publish::new(topic("nr/t"), Bytes::from_static(b"kept"));
    m.retain = true;
    c.send(Packet::Publish(m.clone())).await;
    let d = c.closed().await.expect("a DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::RETAIN_NOT_SUPPORTED);
    let mut old = Raw::connect(b.addr, Protocol::V3_1_1, "nr-311").await;
    old.send(Packet::Publish(m)).await;
    assert!(old.closed().await.is_none());
    let mut late = Raw::connect(b.addr, V5, "late").await;
    late.subscribe("nr/t", QoS::AtLeastOnce).await;
    assert!(late.no_publish(SHORT).await, "nothing was retained");
}

/// A broker configured without wildcards and shared subscriptions says
/// so in CONNACK (Wildcard and Shared Subscription Available 0) and
/// refuses such filters in the SUBACK: 0xA2 and 0x9E in 5.0, 0x80 in
/// 3.1.1 (3.1.1: [MQTT-3.8.3-2]), the plain filter beside them granted
/// and served, the refused ones not subscribed. With shared subscriptions
/// on, a shared filter holding a wildcard is refused for the wildcard.
/// The control: the default broker grants all four.
#[tokio::test]
async fn without_wildcards_and_shared_subscriptions_such_filters_are_refused() {
    let filters = ["w/+", "w/b", "$share/g/w/c", "w/#"];
    let subscribe = |c: &mut Raw, filters: &[&str]| {
        let packet_id = c.next_pid();
        let subscribe = petrel_codec::Subscribe {
            packet_id,
            properties: Properties::new(),
            subscriptions: filters
                .iter()
                .map(|f| petrel_codec::Subscription {
                    filter: filter(f),
                    options: petrel_codec::SubscriptionOptions::qos(QoS::AtLeastOnce),
                })
                .collect(),
        };
        Packet::Subscribe(subscribe)
    };
    let codes = |c: Option<Packet>| match c {
        Some(Packet::SubAck(a)) => a.reason_codes,
        other => panic!("{other:?}"),
    };
    let plain = start().await;
    let mut c = Raw::connect(plain.addr, V5, "all").await;
    let s = subscribe(&mut c, &filters);
    c.send(s).await;
    assert_eq!(codes(c.recv().await), [ReasonCode::GRANTED_QOS_1; 4]);
    let mut config = config();
    config.limits.wildcard_subscriptions = false;
    config.limits.shared_subscriptions = false;
    let b = start_with(config).await;
    for (proto, wildcard, shared) in [
        (V5, ReasonCode(0xA2), ReasonCode(0x9E)),
        (Protocol::V3_1_1, ReasonCode(0x80), ReasonCode(0x80)),
    ] {
        let (mut c, ack) =
            Raw::connect_with(b.addr, proto, &format!("few-{proto:?}"), |_| {}).await;
        if proto == V5 {
            assert_eq!(
                ack.properties.wildcard_subscription_available(),
                Some(false)
            );
            assert_eq!(ack.properties.shared_subscription_available(), Some(false));
            assert_eq!(ack.properties.retain_available(), None);
        }
        let s = subscribe(&mut c, &filters);
        c.send(s).await;
        assert_eq!(
            codes(c.recv().await),
            [wildcard, ReasonCode::GRANTED_QOS_1, shared, wildcard],
            "{proto:?}"
        );
        for t in ["w/x", "w/c"] {
            c.publish(t, b"refused", QoS::AtLeastOnce, false).await;
        }
        c.publish("w/b", b"served", QoS::AtLeastOnce, false).await;
        assert_eq!(&c.recv_publish().await.payload[..], b"served");
        assert!(
            c.no_publish(SHORT).await,
            "{proto:?}: a refused filter matched"
        );
        c.disconnect().await;
    }
    let mut only_shared = support::config();
    only_shared.limits.wildcard_subscriptions = false;
    let b = start_with(only_shared).await;
    let mut c = Raw::connect(b.addr, V5, "shared-on").await;
    let s = subscribe(&mut c, &["$share/g/w/#", "$share/g/w/b"]);
    c.send(s).await;
    assert_eq!(
        codes(c.recv().await),
        [ReasonCode(0xA2), ReasonCode::GRANTED_QOS_1]
    );
}
