//! Publish/subscribe through the server over real sockets, in 3.1.1 and
//! 5.0: QoS, wildcards, `$` topics, shared subscriptions, subscription
//! options, overlapping subscriptions and retained messages.

mod support;

use std::time::Duration;

use petrel_codec::{
    Packet, Properties, Protocol, QoS, QosPid, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions,
};
use support::*;

const BOTH: [Protocol; 2] = [Protocol::V3_1_1, Protocol::V5];
const SHORT: Duration = Duration::from_millis(300);

/// Checks 3.1.1: [MQTT-3.8.4-6]; 5.0: [MQTT-3.8.4-8].
#[tokio::test]
async fn every_qos_both_ways_is_delivered_at_the_lower_of_the_two_qos() {
    let b = start().await;
    for proto in BOTH {
        for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut sub = Raw::connect(b.addr, proto, "sub").await;
            let ack = sub.subscribe("q/t", sub_qos).await;
            // [MQTT-3.9.3-1]: the granted QoS.
            assert_eq!(ack.reason_codes, vec![ReasonCode(sub_qos as u8)]);
            let mut publ = Raw::connect(b.addr, proto, "pub").await;
            for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let payload = format!("{proto:?} {sub_qos:?} {pub_qos:?}");
                let ack = publ
                    .publish("q/t", payload.as_bytes(), pub_qos, false)
                    .await;
                if let Some(a) = ack {
                    assert_eq!(a.reason_code, ReasonCode::SUCCESS);
                }
                let got = sub.recv_publish().await;
                assert_eq!(got.payload, payload.as_bytes());
                assert_eq!(got.topic.as_str(), "q/t");
                // [MQTT-3.8.4-6] (5.0 [MQTT-3.8.4-8]): min(published, granted).
                assert_eq!(got.qos.qos(), pub_qos.min(sub_qos), "{payload}");
                assert!(
                    !got.retain,
                    "a live message is not marked retained (3.1.1: [MQTT-3.3.1-9]; 5.0: [MQTT-3.3.1-12])"
                );
            }
            publ.disconnect().await;
            sub.disconnect().await;
        }
    }
}

#[tokio::test]
async fn wildcards_and_dollar_topics_follow_4_7() {
    let b = start().await;
    for proto in BOTH {
        let mut sub = Raw::connect(b.addr, proto, "wild").await;
        sub.subscribe("sport/#", QoS::AtLeastOnce).await;
        sub.subscribe("+/+/temp", QoS::AtLeastOnce).await;
        sub.subscribe("#", QoS::AtMostOnce).await;
        let mut publ = Raw::connect(b.addr, proto, "pub").await;
        // `sport/#` also matches `sport`.
        publ.publish("sport", b"1", QoS::AtLeastOnce, false).await;
        let p = sub.recv_publish().await;
        assert_eq!((p.topic.as_str(), p.qos.qos()), ("sport", QoS::AtLeastOnce));
        publ.publish("home/kitchen/temp", b"2", QoS::AtLeastOnce, false)
            .await;
        let p = sub.recv_publish().await;
        assert_eq!(
            (p.topic.as_str(), p.qos.qos()),
            ("home/kitchen/temp", QoS::AtLeastOnce)
        );
        // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match
        // a topic starting with `$`.
        publ.publish("$private/x", b"3", QoS::AtLeastOnce, false)
            .await;
        assert!(sub.no_publish(SHORT).await);
        publ.disconnect().await;
        sub.disconnect().await;
    }
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_with_the_highest_qos_and_every_identifier() {
    let b = start().await;
    let mut sub = Raw::connect(b.addr, Protocol::V5, "overlap").await;
    let mut props = Properties::new();
    props.push_subscription_identifier(SubscriptionId::new(7).unwrap());
    sub.subscribe_with("a/+", SubscriptionOptions::qos(QoS::AtMostOnce), props)
        .await;
    let mut props = Properties::new();
    props.push_subscription_identifier(SubscriptionId::new(9).unwrap());
    sub.subscribe_with("a/#", SubscriptionOptions::qos(QoS::AtLeastOnce), props)
        .await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    publ.publish("a/b", b"x", QoS::ExactlyOnce, false).await;
    let p = sub.recv_publish().await;
    // [MQTT-3.3.4-2]: one copy, the maximum QoS; [MQTT-3.3.4-3],
    // [MQTT-3.3.4-4]: both Subscription Identifiers.
    assert_eq!(p.qos.qos(), QoS::AtLeastOnce);
    let mut ids: Vec<u32> = p
        .properties
        .subscription_identifiers()
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
    assert!(sub.no_publish(SHORT).await, "exactly one copy");

    // The 3.1.1 rule is the same delivery: [MQTT-3.3.5-1].
    let mut old = Raw::connect(b.addr, Protocol::V3_1_1, "overlap311").await;
    old.subscribe("c/+", QoS::AtMostOnce).await;
    old.subscribe("c/#", QoS::ExactlyOnce).await;
    publ.publish("c/d", b"y", QoS::ExactlyOnce, false).await;
    assert_eq!(old.recv_publish().await.qos.qos(), QoS::ExactlyOnce);
    assert!(old.no_publish(SHORT).await);
}

#[tokio::test]
async fn shared_subscriptions_give_each_message_to_one_member_also_for_3_1_1_clients() {
    let b = start().await;
    let mut m1 = Raw::connect(b.addr, Protocol::V5, "m1").await;
    let mut m2 = Raw::connect(b.addr, Protocol::V3_1_1, "m2").await;
    let mut plain = Raw::connect(b.addr, Protocol::V5, "plain").await;
    m1.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    m2.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    plain.subscribe("jobs/+", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    for i in 0..10 {
        publ.publish(&format!("jobs/{i}"), b"j", QoS::AtLeastOnce, false)
            .await;
    }
    let mut got = 0;
    let mut per_member = [0, 0];
    for (n, m) in [&mut m1, &mut m2].into_iter().enumerate() {
        while let Some(Packet::Publish(p)) = m.try_recv(SHORT).await {
            if let QosPid::AtLeastOnce(id) = p.qos {
                m.send(Packet::PubAck(petrel_codec::PubAck::new(id))).await;
            }
            got += 1;
            per_member[n] += 1;
        }
    }
    // 4.8.2: each message to one member of the group, and the group shares
    // the load; the ordinary subscriber still gets every message.
    assert_eq!(got, 10);
    assert!(per_member[0] > 0 && per_member[1] > 0, "{per_member:?}");
    for _ in 0..10 {
        plain.recv_publish().await;
    }
}

/// Checks [MQTT-3.8.3-3].
#[tokio::test]
async fn no_local_and_retain_as_published_mqtt_3_8_3_3_and_3_3_1_12() {
    let b = start().await;
    let mut c = Raw::connect(b.addr, Protocol::V5, "self").await;
    let mut opts = SubscriptionOptions::qos(QoS::AtLeastOnce);
    opts.no_local = true;
    c.subscribe_with("nl/t", opts, Properties::new()).await;
    let mut opts = SubscriptionOptions::qos(QoS::AtLeastOnce);
    opts.retain_as_published = true;
    c.subscribe_with("rap/t", opts, Properties::new()).await;
    let mut other = Raw::connect(b.addr, Protocol::V5, "other").await;
    other.subscribe("rap/t", QoS::AtLeastOnce).await;

    // [MQTT-3.8.3-3]: not sent back to its own publisher.
    c.publish("nl/t", b"mine", QoS::AtLeastOnce, false).await;
    assert!(c.no_publish(SHORT).await);

    // [MQTT-3.3.1-12]: Retain As Published keeps RETAIN; [MQTT-3.3.1-13]
    // without it a live message goes out with RETAIN 0.
    c.publish("rap/t", b"r", QoS::AtLeastOnce, true).await;
    let p = c.recv_publish().await;
    assert!(p.retain);
    let p = other.recv_publish().await;
    assert!(!p.retain);
}

/// Checks [MQTT-3.3.1-5]; 3.1.1: [MQTT-3.3.1-6], [MQTT-3.3.1-8], [MQTT-3.3.1-10], [MQTT-3.3.1-11]; 5.0: [MQTT-3.3.1-6], [MQTT-3.3.1-7], [MQTT-3.3.1-9].
#[tokio::test]
async fn retained_messages_are_stored_replaced_and_deleted_mqtt_3_3_1_5_to_3_3_1_11() {
    let b = start().await;
    for proto in BOTH {
        let t = format!("ret/{proto:?}");
        let mut publ = Raw::connect(b.addr, proto, "p").await;
        publ.publish(&t, b"first", QoS::AtLeastOnce, true).await;
        // [MQTT-3.3.1-5]: replaced by the next retained message.
        publ.publish(&t, b"second", QoS::ExactlyOnce, true).await;

        let mut s = Raw::connect(b.addr, proto, "s").await;
        s.subscribe("ret/+", QoS::AtLeastOnce).await;
        let p = s.recv_publish().await;
        // The new subscription gets the retained message ([MQTT-3.3.1-6 (3.1.1)],
        // Retain Handling 0: [MQTT-3.3.1-9 (5.0)]), with RETAIN 1 as it is sent
        // because of the subscription ([MQTT-3.3.1-8 (3.1.1)]).
        assert!(p.retain);
        assert_eq!(&p.payload[..], b"second");
        assert_eq!(p.qos.qos(), QoS::AtLeastOnce);
        assert!(s.no_publish(SHORT).await);
        s.disconnect().await;

        // An empty retained payload deletes the retained message
        // ([MQTT-3.3.1-10 (3.1.1)], [MQTT-3.3.1-6 (5.0)]) and is not itself kept
        // ([MQTT-3.3.1-11 (3.1.1)], [MQTT-3.3.1-7 (5.0)]).
        publ.publish(&t, b"", QoS::AtLeastOnce, true).await;
        let mut s = Raw::connect(b.addr, proto, "s2").await;
        s.subscribe(&t, QoS::AtLeastOnce).await;
        assert!(s.no_publish(SHORT).await);
    }
}

/// Checks [MQTT-3.3.1-9].
#[tokio::test]
async fn retain_handling_0_1_2_mqtt_3_3_1_9_to_3_3_1_11_v5() {
    let b = start().await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    publ.publish("rh/t", b"kept", QoS::AtLeastOnce, true).await;
    let mut s = Raw::connect(b.addr, Protocol::V5, "s").await;

    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.retain_handling = RetainHandling::DoNotSend;
    s.subscribe_with("rh/t", o, Properties::new()).await;
    assert!(s.no_publish(SHORT).await, "Retain Handling 2 sends nothing");

    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.retain_handling = RetainHandling::SendIfNew;
    s.subscribe_with("rh/t", o, Properties::new()).await;
    assert!(
        s.no_publish(SHORT).await,
        "Retain Handling 1: it existed already"
    );
    s.subscribe_with("rh/#", o, Properties::new()).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");

    let mut o = SubscriptionOptions::qos(QoS::AtLeastOnce);
    o.retain_handling = RetainHandling::SendOnSubscribe;
    s.subscribe_with("rh/t", o, Properties::new()).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");
}

/// Checks [MQTT-3.3.2-5].
#[tokio::test]
async fn retained_messages_expire_and_carry_what_is_left_mqtt_3_3_2_5() {
    let b = start().await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    let mut props = Properties::new();
    props.set_message_expiry_interval(Some(1));
    publ.publish_with("exp/short", b"s", QoS::AtLeastOnce, true, props)
        .await;
    let mut props = Properties::new();
    props.set_message_expiry_interval(Some(100));
    publ.publish_with("exp/long", b"l", QoS::AtLeastOnce, true, props)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut s = Raw::connect(b.addr, Protocol::V5, "s").await;
    s.subscribe("exp/#", QoS::AtLeastOnce).await;
    let p = s.recv_publish().await;
    assert_eq!(p.topic.as_str(), "exp/long");
    // [MQTT-3.3.2-6]: the interval sent is what remains.
    let left = p.properties.message_expiry_interval().unwrap();
    assert!((98..=99).contains(&left), "{left}");
    assert!(s.no_publish(SHORT).await, "the expired one is gone");
}

#[tokio::test]
async fn retained_messages_are_not_sent_for_a_shared_subscription() {
    let b = start().await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    publ.publish("sr/t", b"kept", QoS::AtLeastOnce, true).await;
    let mut s = Raw::connect(b.addr, Protocol::V5, "s").await;
    s.subscribe("$share/g/sr/t", QoS::AtLeastOnce).await;
    assert!(s.no_publish(SHORT).await);
}

/// Checks [MQTT-3.10.4-1].
/// Also [MQTT-3.11.3-1]: UNSUBACK reason codes in the order of the filters.
#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_whether_it_existed_mqtt_3_10_4_1() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, Protocol::V5, "s").await;
    s.subscribe("u/t", QoS::AtLeastOnce).await;
    let packet_id = s.next_pid();
    s.send(Packet::Unsubscribe(petrel_codec::Unsubscribe {
        packet_id,
        properties: Properties::new(),
        filters: vec![filter("u/t"), filter("never/subscribed")],
    }))
    .await;
    match s.recv().await {
        Some(Packet::UnsubAck(a)) => {
            assert_eq!(a.packet_id, packet_id);
            assert_eq!(
                a.reason_codes,
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            );
        }
        other => panic!("{other:?}"),
    }
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    publ.publish("u/t", b"x", QoS::AtLeastOnce, false).await;
    assert!(s.no_publish(SHORT).await);
}

#[tokio::test]
async fn a_payload_is_shared_not_copied_between_subscribers() {
    // Through the embedding API: a message published by the application
    // reaches every subscriber; the zero-copy path itself is checked by the
    // write queue's unit test (the large payload is the publisher's buffer).
    let b = start().await;
    let mut subs = Vec::new();
    for i in 0..5 {
        let mut s = Raw::connect(b.addr, Protocol::V5, &format!("z{i}")).await;
        s.subscribe("big/t", QoS::AtMostOnce).await;
        subs.push(s);
    }
    let payload = bytes::Bytes::from(vec![0xAB; 100_000]);
    let n = b
        .broker
        .publish(topic("big/t"), payload.clone(), QoS::AtMostOnce, false);
    assert_eq!(n, 5);
    for s in &mut subs {
        assert_eq!(s.recv_publish().await.payload, payload);
    }
}

/// Checks 3.1.1 and 5.0: [MQTT-3.10.4-3]: a QoS 2 delivery begun before an
/// UNSUBSCRIBE is completed after it (the PUBREC still gets its PUBREL);
/// and, the positive control that the filter is gone ([MQTT-3.10.4-2]),
/// a message published after it is not delivered.
#[tokio::test]
async fn a_delivery_begun_before_an_unsubscribe_is_completed() {
    let b = start().await;
    for proto in BOTH {
        let mut s = Raw::connect(b.addr, proto, "unsub-s").await;
        s.subscribe("u3/t", QoS::ExactlyOnce).await;
        let mut p = Raw::connect(b.addr, proto, "unsub-p").await;
        p.publish("u3/t", b"x", QoS::ExactlyOnce, false).await;
        let id = match s.recv().await {
            Some(Packet::Publish(m)) => m.qos.packet_id().unwrap(),
            other => panic!("{other:?}"),
        };
        s.unsubscribe("u3/t").await;
        s.send(Packet::PubRec(petrel_codec::PubAck::new(id))).await;
        match s.recv().await {
            Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, id),
            other => panic!("{proto:?}: expected PUBREL, got {other:?}"),
        }
        s.send(Packet::PubComp(petrel_codec::PubAck::new(id))).await;
        p.publish("u3/t", b"after", QoS::AtLeastOnce, false).await;
        assert!(s.no_publish(SHORT).await);
        s.disconnect().await;
        p.disconnect().await;
    }
}

/// A 3.1.x client that says it is a bridge (Mosquitto's `try_private`:
/// protocol level 0x84 or 0x83) does not get back what it published, and
/// gets retained messages with the retain flag kept, as 5.0's No Local
/// and Retain As Published would do; another client (the control) still
/// gets the bridge's messages, and a plain client its own.
#[tokio::test]
async fn a_bridge_does_not_get_its_own_messages_back() {
    let b = start().await;
    let (mut bridge, ack) = Raw::connect_with(b.addr, Protocol::V3_1_1, "a-bridge", |c| {
        c.bridge = true;
    })
    .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    bridge.subscribe("loop/#", QoS::AtLeastOnce).await;
    let mut other = Raw::connect(b.addr, Protocol::V3_1_1, "watcher").await;
    other.subscribe("loop/#", QoS::AtLeastOnce).await;
    bridge
        .publish("loop/from-bridge", b"x", QoS::AtLeastOnce, true)
        .await;
    let seen = other.recv_publish().await;
    assert_eq!(seen.topic.as_str(), "loop/from-bridge");
    assert!(bridge.no_publish(Duration::from_millis(300)).await);
    // Another client's retained message reaches the bridge live with its
    // retain flag.
    other
        .publish("loop/from-other", b"y", QoS::AtLeastOnce, true)
        .await;
    let got = bridge.recv_publish().await;
    assert_eq!(got.topic.as_str(), "loop/from-other");
    assert!(got.retain, "retain as published");
    // A plain 3.1.1 client gets its own messages back, without the flag.
    let mut plain = Raw::connect(b.addr, Protocol::V3_1_1, "plain").await;
    plain.subscribe("loop/plain", QoS::AtLeastOnce).await;
    plain
        .publish("loop/plain", b"z", QoS::AtLeastOnce, true)
        .await;
    let own = plain.recv_publish().await;
    assert_eq!(own.topic.as_str(), "loop/plain");
    assert!(!own.retain);
}

/// `$SYS` is the broker's, but a client may write its own link state,
/// `$SYS/broker/connection/<its client id>/state` (as Mosquitto's bridges
/// do with their notifications), by publish or by will; another client's
/// state stays refused (0x87).
#[tokio::test]
async fn a_client_writes_its_own_connection_state_and_no_other_sys_topic() {
    let b = start().await;
    // A will of "0", retained, on edge's state topic.
    let edge_state_will = |c: &mut petrel_codec::Connect| {
        c.will = Some(petrel_codec::Will {
            topic: topic("$SYS/broker/connection/edge/state"),
            payload: bytes::Bytes::from_static(b"0"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::new(),
        });
    };
    let mut watcher = Raw::connect(b.addr, Protocol::V5, "watcher").await;
    watcher
        .subscribe("$SYS/broker/connection/#", QoS::AtLeastOnce)
        .await;
    let (mut edge, ack) = Raw::connect_with(b.addr, Protocol::V5, "edge", edge_state_will).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "its own state as a will"
    );
    let ack = edge
        .publish(
            "$SYS/broker/connection/edge/state",
            b"1",
            QoS::AtLeastOnce,
            true,
        )
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let seen = watcher.recv_publish().await;
    assert_eq!(seen.topic.as_str(), "$SYS/broker/connection/edge/state");
    let ack = edge
        .publish(
            "$SYS/broker/connection/other/state",
            b"1",
            QoS::AtLeastOnce,
            true,
        )
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let ack = edge
        .publish("$SYS/broker/uptime", b"1", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert!(watcher.no_publish(Duration::from_millis(300)).await);
    // A will on another client's state is refused at CONNECT.
    let (_, ack) = Raw::connect_with(b.addr, Protocol::V5, "sly", edge_state_will).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
}
