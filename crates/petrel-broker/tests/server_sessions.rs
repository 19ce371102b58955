//! Sessions over real sockets: clean start, persistence and expiry,
//! takeover, offline queues, wills, and the promise an acknowledgement
//! makes kept across reconnects and takeovers.

mod support;

use std::time::Duration;

use petrel_codec::{
    Disconnect, MqttString, Packet, Properties, Protocol, PubAck, Publish, QoS, QosPid, ReasonCode,
    UserProperty, Will,
};
use support::*;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_persistent_session_keeps_subscriptions_and_queues_qos1_and_qos2_while_offline() {
    let b = start().await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let id = format!("persist-{proto:?}");
        let (mut s, ack) = Raw::connect_with(b.addr, proto, &id, persistent(proto)).await;
        assert!(!ack.session_present, "[MQTT-3.2.2-3]: a new session");
        s.subscribe("off/#", QoS::ExactlyOnce).await;
        s.disconnect().await;

        let mut publ = Raw::connect(b.addr, proto, "pub").await;
        publ.publish("off/1", b"one", QoS::AtLeastOnce, false).await;
        publ.publish("off/2", b"two", QoS::ExactlyOnce, false).await;
        // QoS 0 is not queued for an offline session by default.
        publ.publish("off/3", b"zero", QoS::AtMostOnce, false).await;

        let (mut s, ack) = Raw::connect_with(b.addr, proto, &id, persistent(proto)).await;
        // Session Present 1 (3.1.1: [MQTT-3.2.2-2]; 5.0: [MQTT-3.2.2-3]);
        // [MQTT-3.1.2-5]: the session continues.
        assert!(ack.session_present);
        assert_eq!(&s.recv_publish().await.payload[..], b"one");
        let p = s.recv_publish().await;
        assert_eq!(
            (&p.payload[..], p.qos.qos()),
            (&b"two"[..], QoS::ExactlyOnce)
        );
        assert!(s.no_publish(SHORT).await);
        // The subscription is still there.
        publ.publish("off/4", b"live", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(&s.recv_publish().await.payload[..], b"live");
        s.disconnect().await;
    }
}

/// Checks 5.0: [MQTT-3.1.2-4]; 3.1.1: [MQTT-3.1.2-6], [MQTT-3.1.4-3].
#[tokio::test]
async fn clean_start_discards_the_old_session() {
    let b = start().await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let id = format!("clean-{proto:?}");
        let (mut s, _) = Raw::connect_with(b.addr, proto, &id, persistent(proto)).await;
        s.subscribe("cs/t", QoS::AtLeastOnce).await;
        s.disconnect().await;
        let (mut s, ack) = Raw::connect_with(b.addr, proto, &id, |_| {}).await;
        assert!(!ack.session_present);
        let mut publ = Raw::connect(b.addr, proto, "pub").await;
        publ.publish("cs/t", b"x", QoS::AtLeastOnce, false).await;
        assert!(s.no_publish(SHORT).await, "the old subscription is gone");
    }
}

/// Checks [MQTT-3.1.2-23].
/// Also [MQTT-4.1.0-2]: the session state is discarded once the
/// connection is closed and the expiry interval has passed.
#[tokio::test]
async fn a_5_0_session_ends_when_its_expiry_interval_passes_mqtt_3_1_2_23() {
    let b = start().await;
    let keep = |c: &mut petrel_codec::Connect| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(1));
    };
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "exp", keep).await;
    s.subscribe("e/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    // Within the interval the session is there …
    let (s, ack) = Raw::connect_with(b.addr, Protocol::V5, "exp", keep).await;
    assert!(ack.session_present);
    s.disconnect().await;
    // … and after it (housekeeping runs once a second), it is not.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_s, ack) = Raw::connect_with(b.addr, Protocol::V5, "exp", keep).await;
    assert!(!ack.session_present);
    assert_eq!(b.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn a_5_0_disconnect_can_set_the_expiry_to_zero_and_end_the_session() {
    let b = start().await;
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "dz", persistent(Protocol::V5)).await;
    s.subscribe("dz/t", QoS::AtLeastOnce).await;
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    d.properties.set_session_expiry_interval(Some(0));
    s.send(Packet::Disconnect(d)).await;
    assert!(s.closed().await.is_none());
    tokio::time::sleep(SHORT).await;
    let (_s, ack) = Raw::connect_with(b.addr, Protocol::V5, "dz", persistent(Protocol::V5)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn takeover_closes_the_old_connection_and_resends_what_was_in_flight_with_dup() {
    let b = start().await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let id = format!("take-{proto:?}");
        let (mut old, _) = Raw::connect_with(b.addr, proto, &id, persistent(proto)).await;
        old.subscribe("tk/t", QoS::AtLeastOnce).await;
        let mut publ = Raw::connect(b.addr, proto, "pub").await;
        // The publisher's PUBACK is a promise: the message reaches the
        // session even though its holder never acknowledges it.
        let ack = publ
            .publish("tk/t", b"promised", QoS::AtLeastOnce, false)
            .await;
        assert!(ack.is_some());
        let first = match old.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("{other:?}"),
        };
        assert!(!first.dup);
        // Not acknowledged. A new connection with the same client id:
        let (mut new, ack) = Raw::connect_with(b.addr, proto, &id, persistent(proto)).await;
        assert!(ack.session_present, "the session moved over");
        // [MQTT-3.1.4-3]: the old connection is closed, in 5.0 with 0x8E.
        let d = old.closed().await;
        if proto.is_v5() {
            assert_eq!(d.unwrap().reason_code, ReasonCode::SESSION_TAKEN_OVER);
        } else {
            assert!(d.is_none());
        }
        // [MQTT-4.4.0-1]: resent with DUP and the same packet identifier.
        let again = new.recv_publish().await;
        assert!(again.dup);
        assert_eq!(again.qos, first.qos);
        assert_eq!(&again.payload[..], b"promised");
        new.disconnect().await;
    }
}

#[tokio::test]
async fn a_qos2_message_acknowledged_with_pubrec_is_delivered_once_across_a_reconnect() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr, Protocol::V5, "sub").await;
    sub.subscribe("q2/t", QoS::ExactlyOnce).await;
    let (mut publ, _) =
        Raw::connect_with(b.addr, Protocol::V5, "q2pub", persistent(Protocol::V5)).await;
    let mut p = Publish::new(topic("q2/t"), bytes::Bytes::from_static(b"once"));
    p.qos = QosPid::ExactlyOnce(pid(42));
    publ.send(Packet::Publish(p.clone())).await;
    match publ.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.packet_id, pid(42)),
        other => panic!("{other:?}"),
    }
    // The connection drops before PUBREL; the client resends the PUBLISH
    // (DUP) on its new connection, then PUBREL.
    drop(publ);
    let (mut publ, ack) =
        Raw::connect_with(b.addr, Protocol::V5, "q2pub", persistent(Protocol::V5)).await;
    assert!(ack.session_present);
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    match publ.recv().await {
        Some(Packet::PubRec(a)) => assert_eq!(a.packet_id, pid(42)),
        other => panic!("{other:?}"),
    }
    publ.send(Packet::PubRel(PubAck::new(pid(42)))).await;
    match publ.recv().await {
        Some(Packet::PubComp(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("{other:?}"),
    }
    // [MQTT-4.3.3-10] on the broker's side: delivered exactly once.
    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    assert!(sub.no_publish(SHORT).await);
}

fn with_will(topic_name: &str, delay: Option<u32>) -> impl FnOnce(&mut petrel_codec::Connect) {
    let topic_name = topic_name.to_string();
    move |c| {
        let mut w = Will {
            topic: topic(&topic_name),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::new(),
        };
        if c.protocol.is_v5() {
            w.properties
                .set_content_type(Some(MqttString::from_static("text/plain")));
            w.properties.push_user_property(UserProperty::new(
                MqttString::from_static("k"),
                MqttString::from_static("v"),
            ));
            if let Some(d) = delay {
                w.properties.set_will_delay_interval(Some(d));
                c.clean_start = false;
                c.properties.set_session_expiry_interval(Some(300));
            }
        }
        c.will = Some(w);
    }
}

/// Checks [MQTT-3.1.2-8].
#[tokio::test]
async fn a_will_is_published_when_the_connection_ends_without_disconnect_mqtt_3_1_2_8() {
    let b = start().await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let mut watcher = Raw::connect(b.addr, proto, "watch").await;
        let t = format!("will/{proto:?}");
        watcher.subscribe(&t, QoS::AtLeastOnce).await;
        let (c, _) = Raw::connect_with(b.addr, proto, "dies", with_will(&t, None)).await;
        drop(c); // the socket closes with no DISCONNECT
        let p = watcher.recv_publish().await;
        assert_eq!(&p.payload[..], b"gone");
        assert_eq!(p.qos.qos(), QoS::AtLeastOnce);
        if proto.is_v5() {
            // Will properties are passed on.
            assert_eq!(p.properties.content_type().unwrap().as_str(), "text/plain");
            assert_eq!(p.properties.user_properties().len(), 1);
            assert!(p.properties.will_delay_interval().is_none());
        }
        watcher.disconnect().await;
    }
}

/// Checks [MQTT-3.1.2-10]; 3.1.1: [MQTT-3.14.4-3] (a DISCONNECT discards
/// the will, where a dropped connection publishes it: the control); 5.0:
/// [MQTT-3.14.4-3] (a DISCONNECT 0x00 discards it, where 0x04 publishes
/// it: the control).
#[tokio::test]
async fn a_normal_disconnect_discards_the_will_and_0x04_publishes_it_mqtt_3_1_2_10() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr, Protocol::V5, "watch").await;
    watcher.subscribe("w2/#", QoS::AtLeastOnce).await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let (c, _) = Raw::connect_with(b.addr, proto, "polite", with_will("w2/a", None)).await;
        c.disconnect().await;
        assert!(watcher.no_publish(SHORT).await);
    }
    // The control in 3.1.1: the same will, the connection dropped.
    let (c, _) = Raw::connect_with(b.addr, Protocol::V3_1_1, "rude", with_will("w2/c", None)).await;
    drop(c);
    assert_eq!(watcher.recv_publish().await.topic.as_str(), "w2/c");
    let (mut c, _) = Raw::connect_with(b.addr, Protocol::V5, "asks", with_will("w2/b", None)).await;
    c.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
    )))
    .await;
    assert_eq!(watcher.recv_publish().await.topic.as_str(), "w2/b");
}

/// Checks 5.0: [MQTT-3.1.3-9]: a session resumed before its Will Delay
/// Interval ends sends no will; the control, a client that stays away,
/// has its will sent once the delay passes.
#[tokio::test]
async fn a_will_delay_is_cancelled_by_a_reconnect_and_honoured_otherwise() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr, Protocol::V5, "watch").await;
    watcher.subscribe("wd/#", QoS::AtLeastOnce).await;

    // Reconnect within the delay: no will.
    let (c, _) =
        Raw::connect_with(b.addr, Protocol::V5, "back", with_will("wd/back", Some(3))).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, ack) = Raw::connect_with(b.addr, Protocol::V5, "back", |c| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(300));
    })
    .await;
    assert!(ack.session_present);
    assert!(watcher.no_publish(Duration::from_millis(3500)).await);
    c.disconnect().await;

    // Stay away: the will goes out after its delay, not before.
    let (c, _) =
        Raw::connect_with(b.addr, Protocol::V5, "away", with_will("wd/away", Some(3))).await;
    drop(c);
    assert!(watcher.no_publish(Duration::from_millis(500)).await);
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic.as_str(), "wd/away");
}

/// Checks 5.0: [MQTT-3.1.2-7]: the will is kept on the server with the
/// session, after its connection, and goes out when the session ends,
/// before its own delay would.
#[tokio::test]
async fn a_will_is_due_when_the_session_ends_before_the_delay() {
    let b = start().await;
    let mut watcher = Raw::connect(b.addr, Protocol::V5, "watch").await;
    watcher.subscribe("we/#", QoS::AtLeastOnce).await;
    let (c, _) = Raw::connect_with(b.addr, Protocol::V5, "short", |c| {
        with_will("we/t", Some(60))(c);
        c.properties.set_session_expiry_interval(Some(1));
    })
    .await;
    drop(c);
    let p = tokio::time::timeout(Duration::from_secs(4), watcher.recv_publish())
        .await
        .expect("the will goes out when the session ends");
    assert_eq!(p.topic.as_str(), "we/t");
}

#[tokio::test]
async fn an_acknowledged_qos1_message_survives_the_subscriber_being_away_and_taken_over() {
    // Chains the promises: publisher PUBACKed while the subscriber is
    // offline; the subscriber comes back, receives but does not ack, is
    // taken over; the new connection gets it again.
    let b = start().await;
    let (mut s, _) =
        Raw::connect_with(b.addr, Protocol::V5, "chain", persistent(Protocol::V5)).await;
    s.subscribe("ch/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "pub").await;
    for i in 0..5 {
        let ack = publ
            .publish("ch/t", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    }
    let (mut s1, _) =
        Raw::connect_with(b.addr, Protocol::V5, "chain", persistent(Protocol::V5)).await;
    for _ in 0..5 {
        assert!(matches!(s1.recv().await, Some(Packet::Publish(_))));
    }
    let (mut s2, ack) =
        Raw::connect_with(b.addr, Protocol::V5, "chain", persistent(Protocol::V5)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..5 {
        let p = s2.recv_publish().await;
        assert!(p.dup);
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    // In the original order.
    assert_eq!(got, vec!["m0", "m1", "m2", "m3", "m4"]);
    assert!(s2.no_publish(SHORT).await);
    let _ = s1.closed().await;
}

#[tokio::test]
async fn qos0_is_queued_for_an_offline_session_only_when_configured() {
    let mut config = config();
    config.limits.queue_qos0_offline = true;
    let b = start_with(config).await;
    let (mut s, _) =
        Raw::connect_with(b.addr, Protocol::V3_1_1, "q0", persistent(Protocol::V3_1_1)).await;
    s.subscribe("q0/t", QoS::AtMostOnce).await;
    s.disconnect().await;
    let mut publ = Raw::connect(b.addr, Protocol::V3_1_1, "pub").await;
    publ.publish("q0/t", b"kept", QoS::AtMostOnce, false).await;
    let (mut s, ack) =
        Raw::connect_with(b.addr, Protocol::V3_1_1, "q0", persistent(Protocol::V3_1_1)).await;
    assert!(ack.session_present);
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");
}

#[tokio::test]
async fn a_snapshot_read_at_start_does_not_come_back_after_a_crash() {
    let file = temp_file("snapshot", "");
    std::fs::remove_file(&file).unwrap();
    let with_file = || petrel_broker::BrokerConfig {
        persistence: Some(file.clone()),
        ..config()
    };
    // A graceful run leaves a retained message in the snapshot.
    let first = start_with(with_file()).await;
    first.broker.publish(
        topic("r/old"),
        bytes::Bytes::from_static(b"v"),
        QoS::AtLeastOnce,
        true,
    );
    first.broker.shutdown();
    first.task.await.unwrap();
    // The next run reads it (positive control), deletes it, and is killed:
    // no save.
    let second = start_with(with_file()).await;
    assert_eq!(second.broker.stats().retained, 1);
    second
        .broker
        .publish(topic("r/old"), bytes::Bytes::new(), QoS::AtLeastOnce, true);
    second.task.abort();
    let _ = second.task.await;
    // The deleted message stays deleted.
    let third = start_with(with_file()).await;
    assert_eq!(third.broker.stats().retained, 0, "stale state came back");
    let _ = std::fs::remove_file(&file);
}
