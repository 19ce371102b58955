//! Hibernation over real sockets: a connection quiet for `hibernate_after`
//! folds small and its task ends, and whatever concerns it — the peer's
//! next packet, a message for its session, a takeover, its keep-alive
//! deadline, the broker's shutdown — wakes it to carry on as if it had
//! never slept. Nothing in flight is ever put to sleep.

mod support;

use std::time::Duration;

use bytes::Bytes;
use petrel_broker::BrokerConfig;
use petrel_codec::{
    Packet, Properties, Protocol, PubAck, Publish, QoS, QosPid, ReasonCode, TopicName, Will,
};
use support::{config, start_with, topic, Raw, TestBroker, WAIT};

/// A broker whose quiet connections hibernate after one second.
async fn sleepy() -> TestBroker {
    let mut c: BrokerConfig = config();
    c.limits.hibernate_after = 1;
    start_with(c).await
}

/// A QoS 1 will.
fn will(t: &str, payload: &'static [u8]) -> Will {
    Will {
        topic: topic(t),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::new(),
    }
}

/// Wait until `n` connections hibernate.
async fn hibernating(b: &TestBroker, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = b.broker.stats().hibernating;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} connections hibernate, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages of every QoS reach a hibernating subscriber, which answers
/// PINGREQ as well and goes back to sleep each time.
#[tokio::test]
async fn a_hibernating_subscriber_gets_its_messages_and_answers_pings() {
    let b = sleepy().await;
    let mut sub = Raw::connect(b.addr, Protocol::V3_1_1, "sleeper").await;
    sub.subscribe("h/#", QoS::ExactlyOnce).await;
    hibernating(&b, 1).await;
    let mut publ = Raw::connect(b.addr, Protocol::V3_1_1, "waker").await;
    for (qos, payload) in [
        (QoS::AtMostOnce, &b"zero"[..]),
        (QoS::AtLeastOnce, b"one"),
        (QoS::ExactlyOnce, b"two"),
    ] {
        publ.publish("h/t", payload, qos, false).await;
        let p = sub.recv_publish().await;
        assert_eq!((p.qos.qos(), &p.payload[..]), (qos, payload));
        // The PUBREL of QoS 2 is answered on the way.
        assert!(sub.no_publish(Duration::from_millis(100)).await);
        hibernating(&b, 2).await;
    }
    // Woken by the peer itself: [MQTT-3.12.4-1] PINGREQ gets PINGRESP.
    sub.send(Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
    hibernating(&b, 2).await;
    assert!(b.broker.stats().hibernations >= 5);
    sub.disconnect().await;
    publ.disconnect().await;
    support::still_serving(b.addr).await;
}

/// A connection waiting for its subscriber's PUBACK never hibernates: the
/// acknowledgement it waits for is a promise in flight.
#[tokio::test]
async fn nothing_in_flight_is_put_to_sleep() {
    let b = sleepy().await;
    let mut sub = Raw::connect(b.addr, Protocol::V5, "slow-acker").await;
    sub.subscribe("f/t", QoS::AtLeastOnce).await;
    hibernating(&b, 1).await;
    b.broker.publish(
        topic("f/t"),
        Bytes::from_static(b"x"),
        QoS::AtLeastOnce,
        false,
    );
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!("expected the PUBLISH")
    };
    let QosPid::AtLeastOnce(id) = p.qos else {
        panic!("{p:?}")
    };
    // Unacknowledged for well past `hibernate_after`: it stays awake.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(b.broker.stats().hibernating, 0);
    sub.send(Packet::PubAck(PubAck::new(id))).await;
    hibernating(&b, 1).await;
    // Asleep, and the message was not sent again.
    assert!(sub.no_publish(Duration::from_millis(300)).await);
}

/// The keep-alive deadline holds through hibernation: a silent client is
/// closed after one and a half keep alives (5.0: [MQTT-3.1.2-22]) and its
/// will is published.
#[tokio::test]
async fn a_silent_hibernating_client_is_closed_at_its_keep_alive() {
    let b = sleepy().await;
    let mut watcher = Raw::connect(b.addr, Protocol::V3_1_1, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let (mut silent, _) = Raw::connect_with(b.addr, Protocol::V5, "silent", |c| {
        c.keep_alive = 3;
        c.will = Some(will("wills/silent", b"gone"));
    })
    .await;
    hibernating(&b, 2).await;
    let started = tokio::time::Instant::now();
    let disconnect = tokio::time::timeout(Duration::from_secs(8), silent.closed())
        .await
        .expect("closed in time");
    assert_eq!(
        disconnect.map(|d| d.reason_code),
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    assert!(started.elapsed() >= Duration::from_millis(2000));
    let will = watcher.recv_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/silent", &b"gone"[..])
    );
}

/// A new connection takes over a hibernating one's session: the old one
/// is woken, told 0x8E and closed ([MQTT-3.1.4-3]), and the session goes
/// on with its subscription.
#[tokio::test]
async fn a_hibernating_session_is_taken_over_mqtt_3_1_4_3() {
    let b = sleepy().await;
    let (mut old, _) = Raw::connect_with(b.addr, Protocol::V5, "twice", |c| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(600));
    })
    .await;
    old.subscribe("tk/t", QoS::AtLeastOnce).await;
    hibernating(&b, 1).await;
    let (mut new, ack) = Raw::connect_with(b.addr, Protocol::V5, "twice", |c| {
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(600));
    })
    .await;
    assert!(ack.session_present);
    let reason = old.closed().await.map(|d| d.reason_code);
    assert_eq!(reason, Some(ReasonCode::SESSION_TAKEN_OVER));
    b.broker.publish(
        topic("tk/t"),
        Bytes::from_static(b"kept"),
        QoS::AtLeastOnce,
        false,
    );
    assert_eq!(&new.recv_publish().await.payload[..], b"kept");
}

/// Topic aliases the client set up before its connection hibernated still
/// resolve after ([MQTT-3.3.2-12]).
#[tokio::test]
async fn topic_aliases_survive_hibernation_mqtt_3_3_2_12() {
    let b = sleepy().await;
    let mut sub = Raw::connect(b.addr, Protocol::V3_1_1, "alias-sub").await;
    sub.subscribe("alias/long/topic", QoS::AtLeastOnce).await;
    let mut publ = Raw::connect(b.addr, Protocol::V5, "alias-pub").await;
    let mut props = Properties::new();
    props.set_topic_alias(std::num::NonZeroU16::new(2));
    publ.publish_with(
        "alias/long/topic",
        b"1",
        QoS::AtLeastOnce,
        false,
        props.clone(),
    )
    .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"1");
    hibernating(&b, 2).await;
    let mut p = Publish::new(TopicName::alias_only(), Bytes::from_static(b"2"));
    p.properties = props;
    p.qos = QosPid::AtLeastOnce(publ.next_pid());
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("alias/long/topic", &b"2"[..])
    );
}

/// Shutdown wakes hibernating connections to say goodbye like the others:
/// 5.0 clients get DISCONNECT 0x8B.
#[tokio::test]
async fn shutdown_wakes_hibernating_connections() {
    let b = sleepy().await;
    let mut sleeper = Raw::connect(b.addr, Protocol::V5, "bye").await;
    hibernating(&b, 1).await;
    b.broker.shutdown();
    let reason = sleeper.closed().await.map(|d| d.reason_code);
    assert_eq!(reason, Some(ReasonCode::SERVER_SHUTTING_DOWN));
    tokio::time::timeout(WAIT, b.task)
        .await
        .expect("the server stopped")
        .unwrap();
}

/// A hibernating client whose network connection goes away without a
/// DISCONNECT is noticed at once, not at its keep-alive deadline: its will
/// is published ([MQTT-3.1.2-8]) and the broker counts it gone.
#[tokio::test]
async fn a_hibernating_client_that_vanishes_leaves_its_will_mqtt_3_1_2_8() {
    let b = sleepy().await;
    let mut watcher = Raw::connect(b.addr, Protocol::V3_1_1, "will-watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let (vanishing, _) = Raw::connect_with(b.addr, Protocol::V3_1_1, "vanishing", |c| {
        c.keep_alive = 600;
        c.will = Some(will("wills/vanishing", b"lost"));
    })
    .await;
    hibernating(&b, 2).await;
    drop(vanishing);
    let will = watcher.recv_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/vanishing", &b"lost"[..])
    );
    assert_eq!(b.broker.stats().clients_connected, 1);
}

/// Checks 3.1.1: [MQTT-4.1.0-1] and [MQTT-4.1.0-2]; 5.0: [MQTT-4.1.0-1]:
/// a session that ends with its connection (Clean Session 1, Session
/// Expiry 0) keeps its state while that connection is open: the QoS 2
/// message it sent, whose PUBREL comes only after a pause longer than
/// `hibernate_after`, is not taken twice when the client sends it again;
/// and once the connection has hibernated its subscription still
/// delivers. The control: once the connection closes, the same ClientId
/// finds no session and no subscription.
#[tokio::test]
async fn session_state_lasts_as_long_as_the_connection_asleep_or_not() {
    let b = sleepy().await;
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let t = format!("life/{proto:?}");
        let mut watch = Raw::connect(b.addr, proto, &format!("watch-{proto:?}")).await;
        watch.subscribe(&format!("{t}/q2"), QoS::AtLeastOnce).await;
        let mut c = Raw::connect(b.addr, proto, &format!("life-{proto:?}")).await;
        c.subscribe(&format!("{t}/sub"), QoS::AtLeastOnce).await;
        let mut m = Publish::new(topic(&format!("{t}/q2")), Bytes::from_static(b"once"));
        m.qos = QosPid::ExactlyOnce(support::pid(9));
        c.send(Packet::Publish(m.clone())).await;
        assert!(matches!(c.recv().await, Some(Packet::PubRec(_))));
        assert_eq!(&watch.recv_publish().await.payload[..], b"once");
        // The watcher falls asleep; the client, with a QoS 2 exchange
        // open, keeps it.
        hibernating(&b, 1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        m.dup = true;
        c.send(Packet::Publish(m)).await;
        assert!(matches!(c.recv().await, Some(Packet::PubRec(_))));
        c.send(Packet::PubRel(PubAck::new(support::pid(9)))).await;
        assert!(matches!(c.recv().await, Some(Packet::PubComp(_))));
        assert!(
            watch.no_publish(Duration::from_millis(300)).await,
            "taken twice"
        );
        // Now both sleep, and the subscription goes on.
        hibernating(&b, 2).await;
        let mut p = Raw::connect(b.addr, proto, "life-pub").await;
        p.publish(&format!("{t}/sub"), b"still", QoS::AtLeastOnce, false)
            .await;
        assert_eq!(&c.recv_publish().await.payload[..], b"still");
        c.disconnect().await;
        let id = format!("life-{proto:?}");
        let (mut again, ack) = Raw::connect_with(b.addr, proto, &id, |_| {}).await;
        assert!(!ack.session_present);
        p.publish(&format!("{t}/sub"), b"gone", QoS::AtLeastOnce, false)
            .await;
        assert!(again.no_publish(Duration::from_millis(300)).await);
        for r in [again, watch, p] {
            r.disconnect().await;
        }
    }
}
