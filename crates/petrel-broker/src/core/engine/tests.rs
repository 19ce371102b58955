//! What a stored message holds on to: a message that stays gets bytes of
//! its own, one that passes through shares its publisher's buffer.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use petrel_codec::{
    Connect, Limits, MqttString, Packet, PacketId, Protocol, Publish, QoS, QosPid, Subscribe,
    Subscription, SubscriptionOptions, TopicFilter, TopicName,
};
use petrel_session::Message;

use super::{Broker, Client, Peer, Step};
use crate::config::BrokerConfig;
use crate::core::queue::SessionKey;

/// A small PUBLISH decoded from a 64 KiB read buffer, as the connection
/// driver decodes one: its topic, payload and properties are views of that
/// buffer. Returns the buffer's address range and the message.
fn message_in_buffer() -> (std::ops::Range<usize>, Message) {
    let mut p = Publish::new(
        TopicName::from_static("a/b/c"),
        Bytes::from_static(&[b'x'; 64]),
    );
    p.qos = QosPid::AtLeastOnce(PacketId::new(1).unwrap());
    p.properties
        .set_content_type(Some(MqttString::from_static("text/plain")));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let start = buf.as_ptr() as usize;
    let range = start..start + buf.capacity();
    Packet::Publish(p).encode(Protocol::V5, &mut buf).unwrap();
    let Some(Packet::Publish(p)) =
        Packet::decode(&mut buf, Some(Protocol::V5), &Limits::default()).unwrap()
    else {
        panic!("not a PUBLISH")
    };
    let mut m = Message::new(p.topic, p.payload, QoS::AtLeastOnce);
    m.properties = p.properties;
    assert!(
        inside(&range, &m.payload),
        "decoded as a view of the buffer"
    );
    (range, m)
}

fn inside(buffer: &std::ops::Range<usize>, part: &[u8]) -> bool {
    buffer.contains(&(part.as_ptr() as usize))
}

async fn subscriber(b: &Broker, persistent: bool) -> Client {
    let mut c = Connect::new(Protocol::V5, MqttString::from_static("s"));
    c.clean_start = !persistent;
    if persistent {
        c.properties.set_session_expiry_interval(Some(3600));
    }
    let Step::Accept(a) = b.login(c, Peer::default()).start().await else {
        panic!("refused")
    };
    let mut client = a.client;
    let s = Subscribe {
        packet_id: petrel_codec::PacketId::new(1).unwrap(),
        properties: Default::default(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::try_from("a/#").unwrap(),
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }],
    };
    client.subscribe(s, Instant::now());
    client
}

fn queued_of(b: &Broker) -> Vec<Message> {
    let mut keys: Vec<SessionKey> = Vec::new();
    b.engine
        .for_each_detached(|_, _, _, _, key| keys.push(key.clone()));
    keys.iter()
        .flat_map(|k| k.queued())
        .map(|(m, _)| m)
        .collect()
}

#[tokio::test]
async fn a_message_queued_for_an_offline_session_owns_its_bytes() {
    let b = Broker::new(BrokerConfig::default()).unwrap();
    subscriber(&b, true).await.close(Default::default(), None);
    let (buffer, m) = message_in_buffer();
    let _ = b
        .engine
        .publish(None, m, None, Instant::now(), false, None, None);
    let queued = queued_of(&b);
    assert_eq!(queued.len(), 1);
    let q = &queued[0];
    assert_eq!(q.topic.as_str(), "a/b/c");
    assert!(
        !inside(&buffer, &q.payload),
        "the payload pins the read buffer"
    );
    assert!(
        !inside(&buffer, q.topic.as_bytes()),
        "the topic pins the read buffer"
    );
    assert!(
        !inside(&buffer, q.properties.as_wire()),
        "the properties pin the read buffer"
    );
}

#[tokio::test]
async fn a_message_is_shared_only_while_its_subscriber_keeps_up() {
    let b = Broker::new(BrokerConfig::default()).unwrap();
    let mut client = subscriber(&b, false).await;
    let (buffer, m) = message_in_buffer();
    let now = Instant::now();
    let next = |client: &mut Client, quota: usize| {
        let _ = b
            .engine
            .publish(None, m.clone(), None, now, false, None, None);
        let mut out = Vec::new();
        client.next_messages(10, quota, 128, now, &mut out);
        assert_eq!(out.len(), 1);
        out.remove(0)
    };
    // Keeping up (its whole window free): shared, nothing copied.
    assert!(inside(&buffer, &next(&mut client, 128).payload));
    // Held back (its socket full): stored with bytes of its own.
    client.held_back(true);
    assert!(!inside(&buffer, &next(&mut client, 128).payload));
    client.held_back(false);
    // In flight to a client with more than half its window unacknowledged:
    // bytes of its own too.
    assert!(!inside(&buffer, &next(&mut client, 10).payload));
    // Back to keeping up.
    assert!(inside(&buffer, &next(&mut client, 128).payload));
    client.close(Default::default(), None);
}

/// A new subscription's retained messages are taken from the store a batch
/// at a time, as they are sent: the SUBSCRIBE takes none. A topic not
/// reached yet that gets a new retained value meanwhile arrives once (the
/// live copy); one already sent arrives again with its new value.
#[tokio::test]
async fn retained_messages_are_taken_as_they_are_sent() {
    use std::sync::atomic::Ordering::Relaxed;
    let b = Broker::new(BrokerConfig::default()).unwrap();
    let topic = |i: usize| TopicName::try_from(format!("a/{i:03}")).unwrap();
    for i in 0..200 {
        b.publish(topic(i), Bytes::from_static(b"old"), QoS::AtMostOnce, true);
    }
    let mut client = subscriber(&b, false).await;
    assert_eq!(b.engine.backlog.load(Relaxed), 0, "taken at SUBSCRIBE");
    let now = Instant::now();
    let mut out = Vec::new();
    assert!(client.next_messages(10, 100, 128, now, &mut out));
    let first: Vec<&str> = out.iter().map(|m| m.topic.as_str()).collect();
    let want: Vec<String> = (0..10).map(|i| topic(i).as_str().to_string()).collect();
    assert_eq!(first, want, "in topic order");
    let held = b.engine.backlog.load(Relaxed);
    assert!(held > 0 && held < 190, "one batch taken, not all: {held}");
    b.publish(
        topic(150),
        Bytes::from_static(b"new"),
        QoS::AtMostOnce,
        true,
    );
    b.publish(topic(5), Bytes::from_static(b"new"), QoS::AtMostOnce, true);
    while client.next_messages(100, 100, 128, now, &mut out) {}
    let copies = |i: usize| -> Vec<(&[u8], bool)> {
        out.iter()
            .filter(|m| m.topic == topic(i))
            .map(|m| (&m.payload[..], m.retain))
            .collect()
    };
    assert_eq!(copies(150), [(&b"new"[..], false)], "once, live");
    assert_eq!(copies(5), [(&b"old"[..], true), (&b"new"[..], false)]);
    assert_eq!(copies(199), [(&b"old"[..], true)]);
    assert_eq!(out.len(), 201);
    assert_eq!(b.engine.backlog.load(Relaxed), 0, "all given back");
    client.close(Default::default(), None);
}
