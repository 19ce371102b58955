//! MQTT 5.0 end to end through the server, and `$SYS`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use petrel_broker::BrokerConfig;
use petrel_codec::{
    MqttString, Packet, Properties, Protocol, PubAck, Publish, QoS, QosPid, ReasonCode,
    UserProperty,
};
use support::*;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn connack_tells_the_client_what_the_server_supports_and_assigns_an_id() {
    let b = start().await;
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let p = &ack.properties;
    // [MQTT-3.2.2-16]: an empty client id gets one assigned, and told.
    let assigned = p.assigned_client_identifier().expect("assigned id");
    assert!(!assigned.as_str().is_empty());
    // Unguessable: 128 random bits, not a start time and a counter. Two
    // ids in a row share nothing after the prefix but by chance.
    let (_c2, ack2) = Raw::connect_with(b.addr, Protocol::V5, "", |_| {}).await;
    let second = ack2
        .properties
        .assigned_client_identifier()
        .expect("assigned id");
    for id in [assigned.as_str(), second.as_str()] {
        let hex = id.strip_prefix("petrel-").expect(id);
        assert_eq!(hex.len(), 32, "{id}");
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
    let same = assigned
        .as_str()
        .bytes()
        .zip(second.as_str().bytes())
        .skip("petrel-".len())
        .filter(|(a, b)| a == b)
        .count();
    assert!(same < 12, "{assigned:?} and {second:?} look related");
    assert_eq!(p.receive_maximum().map(|r| r.get()), Some(128));
    assert_eq!(p.maximum_packet_size().map(|m| m.get()), Some(268_435_455));
    assert_eq!(p.topic_alias_maximum(), Some(16));
    // Maximum QoS 2, Retain, wildcards, subscription ids and shared
    // subscriptions are all available: the absent properties say so.
    assert!(p.maximum_qos().is_none() && p.retain_available().is_none());

    // [MQTT-3.1.3-8]: 3.1.1 refuses an empty id without Clean Session.
    let (_c, ack) =
        Raw::connect_with(b.addr, Protocol::V3_1_1, "", |c| c.clean_start = false).await;
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    // … and accepts it with Clean Session.
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V3_1_1, "", |_| {}).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
}

#[tokio::test]
async fn max_keepalive_is_sent_as_server_keep_alive_and_capped_expiry_is_told() {
    let mut config = config();
    config.limits.max_keepalive = 10;
    config.limits.max_session_expiry = 100;
    let b = start_with(config).await;
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "ka", |c| {
        c.keep_alive = 60;
        c.properties.set_session_expiry_interval(Some(1000));
    })
    .await;
    // The client must use the Server Keep Alive it is told.
    assert_eq!(ack.properties.server_keep_alive(), Some(10));
    assert_eq!(ack.properties.session_expiry_interval(), Some(100));
    let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, "ka2", |c| c.keep_alive = 5).await;
    assert_eq!(ack.properties.server_keep_alive(), None);
}

/// Checks [MQTT-3.1.2-22].
/// Also [MQTT-3.2.2-22]: with no Server Keep Alive sent, the client's own
/// Keep Alive is the one used.
#[tokio::test]
async fn the_server_closes_a_silent_client_after_one_and_a_half_keep_alives_mqtt_3_1_2_22() {
    let b = start().await;
    let (mut c, _) = Raw::connect_with(b.addr, Protocol::V5, "silent", |c| c.keep_alive = 1).await;
    let started = std::time::Instant::now();
    let d = c.closed().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

/// Checks [MQTT-3.3.2-15].
#[tokio::test]
async fn properties_pass_through_unchanged_mqtt_3_3_2_15_to_3_3_2_20() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, Protocol::V5, "s").await;
    s.subscribe("props/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    let mut props = Properties::new();
    props.set_payload_format_indicator(Some(true));
    props.set_content_type(Some(MqttString::from_static("application/json")));
    props.set_response_topic(Some(topic("reply/here")));
    props.set_correlation_data(Some(Bytes::from_static(b"\x00\x01corr")));
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        props.push_user_property(UserProperty::new(
            MqttString::try_from(k).unwrap(),
            MqttString::try_from(v).unwrap(),
        ));
    }
    publ.publish_with("props/t", b"{}", QoS::AtLeastOnce, false, props.clone())
        .await;
    let p = s.recv_publish().await;
    let got = &p.properties;
    assert_eq!(got.payload_format_indicator(), Some(true));
    assert_eq!(got.content_type().unwrap().as_str(), "application/json");
    assert_eq!(got.response_topic().unwrap().as_str(), "reply/here");
    assert_eq!(got.correlation_data().unwrap(), &b"\x00\x01corr"[..]);
    // [MQTT-3.3.2-18]: user properties unchanged, in order.
    let users: Vec<(String, String)> = got
        .user_properties()
        .iter()
        .map(|u| (u.key.as_str().to_string(), u.value.as_str().to_string()))
        .collect();
    assert_eq!(
        users,
        vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into())
        ]
    );
}

/// Checks [MQTT-3.3.2-12].
#[tokio::test]
async fn topic_aliases_from_the_client_are_resolved_mqtt_3_3_2_12() {
    let b = start().await;
    let mut s = Raw::connect(b.addr, Protocol::V5, "s").await;
    s.subscribe("alias/long/topic", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    let mut props = Properties::new();
    props.set_topic_alias(std::num::NonZeroU16::new(3));
    publ.publish_with(
        "alias/long/topic",
        b"1",
        QoS::AtMostOnce,
        false,
        props.clone(),
    )
    .await;
    let mut p = Publish::new(
        petrel_codec::TopicName::alias_only(),
        Bytes::from_static(b"2"),
    );
    p.properties = props;
    publ.send(Packet::Publish(p)).await;
    for want in [&b"1"[..], b"2"] {
        let p = s.recv_publish().await;
        assert_eq!(p.topic.as_str(), "alias/long/topic");
        assert_eq!(&p.payload[..], want);
        assert!(
            p.properties.topic_alias().is_none(),
            "aliases are per connection"
        );
    }
    // An alias above the maximum is a protocol error, 0x94.
    let mut props = Properties::new();
    props.set_topic_alias(std::num::NonZeroU16::new(17));
    publ.publish_with("x", b"3", QoS::AtMostOnce, false, props)
        .await;
    assert_eq!(
        publ.closed().await.unwrap().reason_code,
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

#[tokio::test]
async fn message_expiry_counts_down_while_queued_and_expired_messages_are_dropped() {
    let b = start().await;
    let keep = |c: &mut petrel_codec::Connect| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(300));
    };
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "me", keep).await;
    s.subscribe("me/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    let mut short = Properties::new();
    short.set_message_expiry_interval(Some(1));
    publ.publish_with("me/short", b"s", QoS::AtLeastOnce, false, short)
        .await;
    let mut long = Properties::new();
    long.set_message_expiry_interval(Some(60));
    publ.publish_with("me/long", b"l", QoS::AtLeastOnce, false, long)
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "me", keep).await;
    let p = s.recv_publish().await;
    // [MQTT-3.3.2-5]: the expired one is not sent; [MQTT-3.3.2-6]: the
    // other carries what remains.
    assert_eq!(p.topic.as_str(), "me/long");
    assert!(p.properties.message_expiry_interval().unwrap() <= 59);
    assert!(s.no_publish(SHORT).await);
    assert!(b.broker.stats().dropped_expired >= 1);
}

#[tokio::test]
async fn maximum_packet_size_is_enforced_both_ways() {
    let mut config = config();
    config.limits.max_packet_size = 1024;
    let b = start_with(config).await;
    // The client's limit: a message too big for it is not sent
    // ([MQTT-3.1.2-25]); the next one is.
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "small", |c| {
        c.properties
            .set_maximum_packet_size(std::num::NonZeroU32::new(200));
    })
    .await;
    s.subscribe("mps/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    publ.publish("mps/t", &[b'x'; 500], QoS::AtLeastOnce, false)
        .await;
    publ.publish("mps/t", b"fits", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&s.recv_publish().await.payload[..], b"fits");
    assert!(b.broker.stats().dropped_too_large >= 1);
    // The server's limit: a packet over it is refused with 0x95
    // (told in CONNACK; [MQTT-3.1.2-24]).
    let mut p = Publish::new(topic("mps/t"), Bytes::from(vec![0u8; 2000]));
    p.qos = QosPid::AtMostOnce;
    publ.send(Packet::Publish(p)).await;
    assert_eq!(
        publ.closed().await.unwrap().reason_code,
        ReasonCode::PACKET_TOO_LARGE
    );
    still_serving(b.addr).await;
}

/// Checks [MQTT-3.3.4-9].
#[tokio::test]
async fn the_clients_receive_maximum_bounds_what_is_in_flight_to_it_mqtt_3_3_4_9() {
    let b = start().await;
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "rm", |c| {
        c.properties
            .set_receive_maximum(std::num::NonZeroU16::new(1));
    })
    .await;
    s.subscribe("rm/t", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    for i in 0..3 {
        publ.publish("rm/t", &[i], QoS::AtLeastOnce, false).await;
    }
    for i in 0..3u8 {
        let p = match s.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(&p.payload[..], &[i]);
        // Nothing more until this one is acknowledged.
        s.silent(Duration::from_millis(200)).await;
        let QosPid::AtLeastOnce(id) = p.qos else {
            panic!()
        };
        s.send(Packet::PubAck(PubAck::new(id))).await;
    }
}

#[tokio::test]
async fn maximum_qos_is_told_granted_and_enforced() {
    let mut config = config();
    config.limits.max_qos = 1;
    let b = start_with(config).await;
    let (mut c, ack) = Raw::connect_with(b.addr, Protocol::V5, "mq", |_| {}).await;
    assert_eq!(ack.properties.maximum_qos(), Some(QoS::AtLeastOnce));
    let suback = c.subscribe("mq/t", QoS::ExactlyOnce).await;
    assert_eq!(suback.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
    // [MQTT-3.2.2-11]: a PUBLISH above it is answered with 0x9B.
    let mut p = Publish::new(topic("mq/t"), Bytes::from_static(b"x"));
    p.qos = QosPid::ExactlyOnce(pid(1));
    c.send(Packet::Publish(p)).await;
    // Refused before any PUBREC: nothing is promised for it.
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::QOS_NOT_SUPPORTED),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sys_topics_report_the_broker_as_mosquitto_names_them() {
    let config = BrokerConfig {
        sys_interval: 1,
        ..config()
    };
    let b = start_with(config).await;
    let mut all = Raw::connect(b.addr, Protocol::V3_1_1, "all").await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let mut s = Raw::connect(b.addr, Protocol::V3_1_1, "sys").await;
    s.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let wanted = [
        "version",
        "uptime",
        "clients/connected",
        "clients/total",
        "clients/maximum",
        "clients/disconnected",
        "messages/received",
        "messages/sent",
        "publish/messages/received",
        "publish/messages/sent",
        "publish/messages/dropped",
        "bytes/received",
        "bytes/sent",
        "subscriptions/count",
        "retained messages/count",
        "load/messages/received/1min",
        "load/connections/5min",
        "load/bytes/received/15min",
    ]
    .map(|t| format!("$SYS/broker/{t}"));
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    // The retained values may come from a tick before both clients were
    // there: read on until one counts them (or the deadline).
    let counted = |seen: &std::collections::HashMap<String, String>, key: &str| {
        seen.get(&format!("$SYS/broker/{key}"))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 2)
    };
    while tokio::time::Instant::now() < deadline
        && !(wanted.iter().all(|k| seen.contains_key(k))
            && counted(&seen, "clients/connected")
            && counted(&seen, "subscriptions/count"))
    {
        if let Some(Packet::Publish(p)) = s.try_recv(Duration::from_millis(500)).await {
            seen.insert(
                p.topic.as_str().to_string(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            );
        }
    }
    for key in &wanted {
        assert!(seen.contains_key(key), "missing {key}: {seen:?}");
    }
    assert!(seen["$SYS/broker/version"].starts_with("petrel "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    let connected: u64 = seen["$SYS/broker/clients/connected"].parse().unwrap();
    assert!(connected >= 2, "{connected}");
    assert!(
        seen["$SYS/broker/subscriptions/count"]
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    // [MQTT-4.7.2-1]: `#` does not see `$SYS`.
    assert!(all.no_publish(SHORT).await);
    // Clients can't write into $SYS.
    let mut w = Raw::connect(b.addr, Protocol::V3_1_1, "w").await;
    w.publish("$SYS/broker/version", b"fake", QoS::AtLeastOnce, true)
        .await;
    let mut again = Raw::connect(b.addr, Protocol::V3_1_1, "again").await;
    again
        .subscribe("$SYS/broker/version", QoS::AtMostOnce)
        .await;
    let p = again.recv_publish().await;
    assert!(p.payload.starts_with(b"petrel "));
}

/// Checks [MQTT-3.3.2-8].
/// Also [MQTT-3.3.2-11]: the alias stays within the client's Topic Alias Maximum.
#[tokio::test]
async fn the_broker_uses_topic_aliases_when_the_client_allows_them_mqtt_3_3_2_8() {
    let b = start().await;
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "aliased", |c| {
        c.properties.set_topic_alias_maximum(Some(4));
    })
    .await;
    s.subscribe("alias/out/topic", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    for _ in 0..3 {
        publ.publish("alias/out/topic", b"x", QoS::AtMostOnce, false)
            .await;
    }
    let first = s.recv_publish().await;
    let alias = first.properties.topic_alias().expect("an alias is set");
    assert!(alias.get() <= 4, "within the client's maximum");
    assert_eq!(first.topic.as_str(), "alias/out/topic");
    for _ in 0..2 {
        let p = s.recv_publish().await;
        assert_eq!(p.properties.topic_alias(), Some(alias));
        assert!(p.topic.is_empty(), "later messages carry only the alias");
    }
}

/// The broker gives a subscriber that takes Topic Aliases its own: the
/// first message to a topic names it and sets the next alias, later ones
/// carry the alias alone, and past the subscriber's maximum topics go by
/// name. QoS 0 messages (written straight from the copy all subscribers
/// share) and QoS 1 ones (through the session machine) share the one
/// table, and a publisher's properties go out with the alias. Checks
/// [MQTT-3.3.2-9] (never above the client's maximum) and the alias
/// numbering of 3.3.2.3.4.
#[tokio::test]
async fn aliases_out_are_the_subscribers_own_whatever_the_qos_mqtt_3_3_2_9() {
    let b = start().await;
    let (mut s, _) = Raw::connect_with(b.addr, Protocol::V5, "s", |c| {
        c.properties.set_topic_alias_maximum(Some(2));
    })
    .await;
    s.subscribe("a/#", QoS::AtLeastOnce).await;
    // A subscriber that takes none, on the same messages: the control
    // that the aliases are per connection.
    let mut plain = Raw::connect(b.addr, Protocol::V5, "plain").await;
    plain.subscribe("a/#", QoS::AtMostOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "p").await;
    let mut props = Properties::new();
    props.push_user_property(UserProperty::new(
        MqttString::from_static("k"),
        MqttString::from_static("v"),
    ));
    let sent = [
        ("a/1", QoS::AtMostOnce),
        ("a/1", QoS::AtLeastOnce),
        ("a/2", QoS::AtMostOnce),
        ("a/3", QoS::AtMostOnce),
        ("a/1", QoS::AtMostOnce),
        ("a/2", QoS::AtLeastOnce),
    ];
    for (i, (t, qos)) in sent.iter().enumerate() {
        publ.publish_with(t, i.to_string().as_bytes(), *qos, false, props.clone())
            .await;
    }
    // (topic on the wire, alias)
    let want = [
        ("a/1", Some(1)),
        ("", Some(1)),
        ("a/2", Some(2)),
        ("a/3", None),
        ("", Some(1)),
        ("", Some(2)),
    ];
    for (i, (topic, alias)) in want.iter().enumerate() {
        let p = s.recv_publish().await;
        assert_eq!(&p.payload[..], i.to_string().as_bytes());
        assert_eq!(p.qos.qos(), sent[i].1);
        assert_eq!(p.topic.as_str(), *topic, "message {i}");
        assert_eq!(p.properties.topic_alias().map(|a| a.get()), *alias);
        assert_eq!(
            p.properties.user_properties().iter().count(),
            1,
            "message {i}"
        );
        let q = plain.recv_publish().await;
        assert_eq!(q.topic.as_str(), sent[i].0);
        assert!(q.properties.topic_alias().is_none());
        assert_eq!(q.properties.user_properties().iter().count(), 1);
    }
}
