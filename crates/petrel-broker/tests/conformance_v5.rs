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
/// above the server closes the connection; [MQTT-3.2.0-2]: one CONNACK.
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
/// (a PUBREC with an error ends the QoS 2 exchange, [MQTT-4.3.3-4]).
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
