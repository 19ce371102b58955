//! A pipelining publisher's burst: the engine may hold its messages back
//! (`Client::publish` with `more`) to queue each subscriber's share of a run
//! on one topic at once, until `Client::flush`. What a subscriber receives
//! must be exactly what it would have received message by message: the
//! same messages, in the same order, with the same QoS and RETAIN flag,
//! shared groups turning per message, and subscriptions made or removed
//! during the burst taking effect from the next message.

mod support;

use std::time::Instant;

use bytes::Bytes;
use petrel_broker::{Broker, Client, Peer, Step};
use petrel_codec::{
    Connect, MqttString, Protocol, Publish, QoS, QosPid, Subscribe, Subscription,
    SubscriptionOptions, Unsubscribe,
};
use petrel_session::Message;
use support::{config, filter, pid, topic};

async fn client(b: &Broker, id: &str) -> Client {
    let c = Connect::new(Protocol::V5, MqttString::try_from(id).unwrap());
    match b.login(c, Peer::default()).start().await {
        Step::Accept(a) => a.client,
        _ => panic!("{id} refused"),
    }
}

fn subscribe_with(c: &mut Client, f: &str, options: SubscriptionOptions) {
    let s = Subscribe {
        packet_id: pid(1),
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: filter(f),
            options,
        }],
    };
    let granted = c.subscribe(s, Instant::now()).reason_codes[0];
    assert!(granted.0 < 0x80, "{f}: {granted:?}");
}

fn subscribe(c: &mut Client, f: &str) {
    subscribe_with(c, f, SubscriptionOptions::qos(QoS::ExactlyOnce));
}

/// Publish `payload` on `t` at `qos` (with `retain`), telling the engine
/// that more packets follow.
fn send(c: &mut Client, t: &str, payload: &str, qos: QoS, retain: bool) {
    let mut p = Publish::new(topic(t), Bytes::copy_from_slice(payload.as_bytes()));
    p.qos = match qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(pid(1)),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(pid(1)),
    };
    p.retain = retain;
    c.publish(p, Instant::now(), true);
}

fn burst(c: &mut Client, t: &str, payload: &str) {
    send(c, t, payload, QoS::AtMostOnce, false);
}

/// What waits for `c`: each message as "topic=payload".
fn received(c: &mut Client) -> Vec<String> {
    messages(c)
        .iter()
        .map(|m| {
            format!(
                "{}={}",
                m.topic.as_str(),
                String::from_utf8_lossy(&m.payload)
            )
        })
        .collect()
}

fn messages(c: &mut Client) -> Vec<Message> {
    let mut out = Vec::new();
    c.next_messages(1000, 1000, 1000, Instant::now(), &mut out);
    out
}

#[tokio::test]
async fn a_burst_is_held_until_flushed_and_keeps_its_order() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut sub = client(&b, "sub").await;
    subscribe(&mut sub, "t/#");
    burst(&mut publisher, "t/1", "a");
    burst(&mut publisher, "t/1", "b");
    // Held back: nothing is queued yet.
    assert_eq!(received(&mut sub), Vec::<String>::new());
    // Another topic ends the run: what it held is queued first.
    burst(&mut publisher, "t/2", "c");
    assert_eq!(received(&mut sub), ["t/1=a", "t/1=b"]);
    burst(&mut publisher, "t/1", "d");
    burst(&mut publisher, "t/1", "e");
    publisher.flush();
    assert_eq!(received(&mut sub), ["t/2=c", "t/1=d", "t/1=e"]);
}

#[tokio::test]
async fn a_message_without_more_to_follow_is_queued_at_once() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut sub = client(&b, "sub").await;
    subscribe(&mut sub, "t");
    let p = Publish::new(topic("t"), Bytes::from_static(b"now"));
    publisher.publish(p, Instant::now(), false);
    assert_eq!(received(&mut sub), ["t=now"]);
}

#[tokio::test]
async fn a_subscription_made_during_a_burst_gets_what_follows_it() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut early = client(&b, "early").await;
    let mut late = client(&b, "late").await;
    subscribe(&mut early, "t");
    burst(&mut publisher, "t", "1");
    subscribe(&mut late, "t");
    burst(&mut publisher, "t", "2");
    burst(&mut publisher, "t", "3");
    publisher.flush();
    assert_eq!(received(&mut early), ["t=1", "t=2", "t=3"]);
    assert_eq!(received(&mut late), ["t=2", "t=3"]);
}

#[tokio::test]
async fn an_unsubscribe_during_a_burst_stops_what_follows_it() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut leaving = client(&b, "leaving").await;
    let mut staying = client(&b, "staying").await;
    subscribe(&mut leaving, "t");
    subscribe(&mut staying, "t");
    burst(&mut publisher, "t", "1");
    leaving.unsubscribe(Unsubscribe {
        packet_id: pid(2),
        properties: Default::default(),
        filters: vec![filter("t")],
    });
    burst(&mut publisher, "t", "2");
    publisher.flush();
    // Routed to it before it left: queued, as a message already on its way.
    assert_eq!(received(&mut leaving), ["t=1"]);
    assert_eq!(received(&mut staying), ["t=1", "t=2"]);
}

#[tokio::test]
async fn a_shared_group_turns_per_message_in_a_burst() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut one = client(&b, "one").await;
    let mut two = client(&b, "two").await;
    subscribe(&mut one, "$share/g/t");
    subscribe(&mut two, "$share/g/t");
    for i in 0..6 {
        burst(&mut publisher, "t", &i.to_string());
    }
    publisher.flush();
    let (a, b) = (received(&mut one), received(&mut two));
    assert_eq!(a.len(), 3, "{a:?} {b:?}");
    assert_eq!(b.len(), 3, "{a:?} {b:?}");
}

#[tokio::test]
async fn each_message_of_a_run_keeps_its_own_qos_and_retain_flag() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut plain = client(&b, "plain").await;
    let mut keeps = client(&b, "keeps").await;
    subscribe_with(&mut plain, "t", SubscriptionOptions::qos(QoS::AtLeastOnce));
    let mut rap = SubscriptionOptions::qos(QoS::ExactlyOnce);
    rap.retain_as_published = true;
    subscribe_with(&mut keeps, "t", rap);
    send(&mut publisher, "t", "q0", QoS::AtMostOnce, false);
    send(&mut publisher, "t", "q2r", QoS::ExactlyOnce, true);
    send(&mut publisher, "t", "q1", QoS::AtLeastOnce, false);
    publisher.flush();
    let flags =
        |ms: Vec<Message>| -> Vec<(QoS, bool)> { ms.iter().map(|m| (m.qos, m.retain)).collect() };
    // Lowered to the granted QoS 1; RETAIN cleared on a live message.
    assert_eq!(
        flags(messages(&mut plain)),
        [
            (QoS::AtMostOnce, false),
            (QoS::AtLeastOnce, false),
            (QoS::AtLeastOnce, false)
        ]
    );
    // QoS as published; RETAIN kept with Retain As Published.
    assert_eq!(
        flags(messages(&mut keeps)),
        [
            (QoS::AtMostOnce, false),
            (QoS::ExactlyOnce, true),
            (QoS::AtLeastOnce, false)
        ]
    );
}

#[tokio::test]
async fn a_publisher_gone_with_a_run_held_still_delivers_it() {
    let b = Broker::new(config()).unwrap();
    let mut publisher = client(&b, "pub").await;
    let mut sub = client(&b, "sub").await;
    subscribe(&mut sub, "t");
    burst(&mut publisher, "t", "1");
    burst(&mut publisher, "t", "2");
    assert_eq!(received(&mut sub), Vec::<String>::new());
    drop(publisher);
    assert_eq!(received(&mut sub), ["t=1", "t=2"]);
}

#[tokio::test]
async fn a_message_a_stored_session_keeps_ends_the_run_and_order_holds() {
    let store = std::sync::Arc::new(petrel_broker::MemoryStore::new());
    let b = Broker::builder(config()).store(store).build().unwrap();
    let mut publisher = client(&b, "pub").await;
    // A session kept in the store: its QoS 1/2 copies are written there,
    // numbered one by one, before they are queued.
    let mut c = Connect::new(Protocol::V5, MqttString::try_from("kept").unwrap());
    support::persistent(Protocol::V5)(&mut c);
    let Step::Accept(a) = b.login(c, Peer::default()).start().await else {
        panic!("kept refused");
    };
    let mut kept = a.client;
    assert!(kept.is_durable());
    let mut plain = client(&b, "plain").await;
    subscribe(&mut kept, "t");
    subscribe(&mut plain, "t");
    send(&mut publisher, "t", "1", QoS::AtMostOnce, false);
    send(&mut publisher, "t", "2", QoS::AtLeastOnce, false);
    send(&mut publisher, "t", "3", QoS::AtMostOnce, false);
    publisher.flush();
    assert_eq!(received(&mut kept), ["t=1", "t=2", "t=3"]);
    assert_eq!(received(&mut plain), ["t=1", "t=2", "t=3"]);
}
