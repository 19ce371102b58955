//! The wire-form `Properties`: setters, getters, equality and forwarding.

use std::num::NonZeroU16;

use bytes::Bytes;
use petrel_codec::*;

fn s(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

#[test]
fn set_replace_and_clear_keep_the_others() {
    let mut p = Properties::new();
    assert!(p.is_empty());
    p.set_session_expiry_interval(Some(10))
        .set_reason_string(Some(s("why")))
        .set_receive_maximum(NonZeroU16::new(5));
    assert_eq!(p.session_expiry_interval(), Some(10));
    assert_eq!(p.reason_string().unwrap(), "why");
    // Replacing one leaves the rest.
    p.set_session_expiry_interval(Some(20));
    assert_eq!(p.session_expiry_interval(), Some(20));
    assert_eq!(p.reason_string().unwrap(), "why");
    assert_eq!(p.receive_maximum().map(|v| v.get()), Some(5));
    // Clearing removes it from the wire bytes.
    let before = p.as_wire().len();
    p.set_reason_string(None);
    assert_eq!(p.reason_string(), None);
    assert_eq!(p.as_wire().len(), before - 6);
    assert!(!p.contains(0x1F));
    p.set_session_expiry_interval(None)
        .set_receive_maximum(None);
    assert!(p.is_empty());
    assert_eq!(p, Properties::new());
}

#[test]
fn maximum_qos_2_is_the_absence_of_the_property() {
    let mut p = Properties::new();
    p.set_maximum_qos(Some(QoS::AtLeastOnce));
    assert_eq!(p.maximum_qos(), Some(QoS::AtLeastOnce));
    p.set_maximum_qos(Some(QoS::ExactlyOnce));
    assert_eq!(p.maximum_qos(), None);
    assert!(p.is_empty());
}

#[test]
fn equality_ignores_order_of_single_properties_but_not_of_repeated_ones() {
    let mut a = Properties::new();
    a.set_content_type(Some(s("t")))
        .set_message_expiry_interval(Some(9));
    let mut b = Properties::new();
    b.set_message_expiry_interval(Some(9))
        .set_content_type(Some(s("t")));
    assert_ne!(a.as_wire(), b.as_wire());
    assert_eq!(a, b);

    let (k1, k2) = (
        UserProperty::new(s("k"), s("1")),
        UserProperty::new(s("k"), s("2")),
    );
    let mut x = Properties::new();
    x.push_user_property(k1.clone())
        .push_user_property(k2.clone());
    let mut y = Properties::new();
    y.push_user_property(k2).push_user_property(k1);
    // [MQTT-3.3.2-18]: the order of user properties is part of the message.
    assert_ne!(x, y);
}

#[test]
fn user_properties_and_subscription_ids_keep_order_and_duplicates() {
    let mut p = Properties::new();
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        p.push_user_property(UserProperty::new(s(k), s(v)));
    }
    p.push_subscription_identifier(SubscriptionId::new(268_435_455).unwrap());
    p.push_subscription_identifier(SubscriptionId::new(1).unwrap());
    let users: Vec<String> = p
        .user_properties()
        .iter()
        .map(|u| format!("{}={}", u.key, u.value))
        .collect();
    assert_eq!(users, ["a=1", "b=2", "a=3"]);
    let ids: Vec<u32> = p
        .subscription_identifiers()
        .iter()
        .map(SubscriptionId::get)
        .collect();
    assert_eq!(ids, [268_435_455, 1]);
    assert!(SubscriptionId::new(0).is_none());
    assert!(SubscriptionId::new(268_435_456).is_none());
    // Replacing the list.
    p.set_user_properties([UserProperty::new(s("z"), s("9"))]);
    assert_eq!(p.user_properties().len(), 1);
    assert_eq!(p.subscription_identifiers().len(), 2);
}

#[test]
fn without_drops_what_a_broker_must_not_forward() {
    // An incoming PUBLISH with a topic alias and content type: the broker
    // forwards the content type and user properties unchanged and drops the alias.
    let mut p = Properties::new();
    p.set_topic_alias(NonZeroU16::new(4))
        .set_content_type(Some(s("text/plain")))
        .push_user_property(UserProperty::new(s("k"), s("v")));
    let forwarded = p.without(&[0x23, 0x0B]);
    assert_eq!(forwarded.topic_alias(), None);
    assert_eq!(forwarded.content_type().unwrap(), "text/plain");
    assert_eq!(forwarded.user_properties().len(), 1);
    assert_eq!(p.topic_alias().map(|a| a.get()), Some(4));
    // Without anything to drop, the block is shared, not copied.
    let same = forwarded.without(&[0x23]);
    assert_eq!(same.as_wire().as_ptr(), forwarded.as_wire().as_ptr());
}

#[test]
fn binary_data_too_long_to_send_is_refused_on_encode() {
    let mut publish = Publish::new(TopicName::from_static("t"), Bytes::new());
    publish
        .properties
        .set_correlation_data(Some(Bytes::from(vec![0u8; 70_000])));
    assert_eq!(
        Packet::Publish(publish).to_bytes(Protocol::V5),
        Err(EncodeError::InvalidPropertyValue(0x09))
    );
}

#[test]
fn forwarding_a_decoded_publish_copies_its_properties_verbatim() {
    let mut p = Publish::new(TopicName::from_static("a/b"), Bytes::from_static(b"x"));
    p.properties
        .push_user_property(UserProperty::new(s("z"), s("last")))
        .set_content_type(Some(s("c")))
        .push_user_property(UserProperty::new(s("a"), s("first")));
    let wire = Packet::Publish(p).to_bytes(Protocol::V5).unwrap();
    let mut buf = bytes::BytesMut::from(&wire[..]);
    let Some(Packet::Publish(decoded)) =
        Packet::decode(&mut buf, Some(Protocol::V5), &Limits::default()).unwrap()
    else {
        panic!()
    };
    // Re-encoding writes the same bytes, order kept.
    assert_eq!(
        Packet::Publish(decoded).to_bytes(Protocol::V5).unwrap(),
        wire
    );
}

#[test]
fn encode_header_leaves_the_payload_to_the_caller() {
    let mut p = Publish::new(TopicName::from_static("t/1"), Bytes::from(vec![7u8; 1000]));
    p.qos = QosPid::AtLeastOnce(PacketId::new(3).unwrap());
    p.properties.set_message_expiry_interval(Some(5));
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut head = bytes::BytesMut::new();
        let total = p.encode_header(protocol, &mut head).unwrap();
        let whole = Packet::Publish(p.clone()).to_bytes(protocol).unwrap();
        assert_eq!(total, whole.len());
        assert_eq!(head.len() + p.payload.len(), total);
        head.extend_from_slice(&p.payload);
        assert_eq!(head.freeze(), whole);
    }
}

/// Many Subscription Identifiers are set in one go (one copy of the block,
/// not one per identifier), replace any before, and leave the rest alone.
#[test]
fn many_subscription_identifiers_set_at_once_replace_the_old_ones() {
    let mut p = Properties::new();
    p.set_content_type(Some(s("text/plain")));
    p.set_subscription_identifiers([SubscriptionId::new(7).unwrap()]);
    let ids: Vec<SubscriptionId> = (1..=1000)
        .map(|i| SubscriptionId::new(i).unwrap())
        .collect();
    p.set_subscription_identifiers(ids.iter().copied());
    let got: Vec<u32> = p
        .subscription_identifiers()
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(got, (1..=1000).collect::<Vec<u32>>());
    assert_eq!(p.content_type().unwrap(), "text/plain");
    // Encoded and decoded as a PUBLISH's: the same list.
    let mut publish = Publish::new(TopicName::try_from("t").unwrap(), Bytes::from_static(b"x"));
    publish.properties = p.clone();
    let wire = Packet::Publish(publish).to_bytes(Protocol::V5).unwrap();
    let mut buf = bytes::BytesMut::from(&wire[..]);
    let Some(Packet::Publish(back)) =
        Packet::decode(&mut buf, Some(Protocol::V5), &Limits::default()).unwrap()
    else {
        panic!("not a PUBLISH");
    };
    assert_eq!(back.properties, p);
    p.set_subscription_identifiers([]);
    assert!(p.subscription_identifiers().is_empty());
    assert_eq!(p.content_type().unwrap(), "text/plain");
}
