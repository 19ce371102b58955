//! Property tests: arbitrary packets of each version round-trip; arbitrary
//! bytes never panic the decoder; a stream split anywhere decodes the same.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use petrel_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V3_1),
        Just(Protocol::V3_1_1),
        Just(Protocol::V5)
    ]
}

fn mqtt_string() -> impl Strategy<Value = MqttString> {
    // Any Unicode but U+0000, including multi-byte characters.
    "[^\u{0}]{0,12}".prop_map(|s| MqttString::try_from(s).unwrap())
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    "[a-z0-9$/é€ ]{1,16}".prop_map(|s| TopicName::try_from(s).unwrap())
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![Just("+".to_string()), "[a-z0-9é]{0,5}".prop_map(|s| s),];
    (
        vec(level, 1..5),
        any::<bool>(),
        prop::option::of("[a-z0-9]{1,4}"),
    )
        .prop_map(|(levels, hash, share)| {
            let mut f = levels.join("/");
            if f.is_empty() {
                f.push('x');
            }
            if hash {
                f.push_str("/#");
            }
            if let Some(group) = share {
                f = format!("$share/{group}/{f}");
            }
            TopicFilter::try_from(f).unwrap()
        })
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|v| PacketId::new(v).unwrap())
}

/// One property value of each kind the generator can set.
#[derive(Clone, Debug)]
enum Prop {
    Flag(u8, bool),
    U16(u8, u16),
    NonZero16(u8, u16),
    U32(u8, u32),
    NonZero32(u8, u32),
    Str(u8, MqttString),
    Bin(u8, Bytes),
    ResponseTopic(TopicName),
    MaximumQoS(bool),
    User(MqttString, MqttString),
    SubId(u32),
}

impl Prop {
    fn id(&self) -> u8 {
        match self {
            Self::Flag(id, _)
            | Self::U16(id, _)
            | Self::NonZero16(id, _)
            | Self::U32(id, _)
            | Self::NonZero32(id, _)
            | Self::Str(id, _)
            | Self::Bin(id, _) => *id,
            Self::ResponseTopic(_) => 0x08,
            Self::MaximumQoS(_) => 0x24,
            Self::User(..) => 0x26,
            Self::SubId(_) => 0x0B,
        }
    }

    fn apply(self, p: &mut Properties) {
        match self {
            Self::Flag(0x01, v) => p.set_payload_format_indicator(Some(v)),
            Self::Flag(0x17, v) => p.set_request_problem_information(Some(v)),
            Self::Flag(0x19, v) => p.set_request_response_information(Some(v)),
            Self::Flag(0x25, v) => p.set_retain_available(Some(v)),
            Self::Flag(0x28, v) => p.set_wildcard_subscription_available(Some(v)),
            Self::Flag(0x29, v) => p.set_subscription_identifier_available(Some(v)),
            Self::Flag(_, v) => p.set_shared_subscription_available(Some(v)),
            Self::U16(0x13, v) => p.set_server_keep_alive(Some(v)),
            Self::U16(_, v) => p.set_topic_alias_maximum(Some(v)),
            Self::NonZero16(0x21, v) => p.set_receive_maximum(NonZeroU16::new(v)),
            Self::NonZero16(_, v) => p.set_topic_alias(NonZeroU16::new(v)),
            Self::U32(0x02, v) => p.set_message_expiry_interval(Some(v)),
            Self::U32(0x11, v) => p.set_session_expiry_interval(Some(v)),
            Self::U32(_, v) => p.set_will_delay_interval(Some(v)),
            Self::NonZero32(_, v) => p.set_maximum_packet_size(NonZeroU32::new(v)),
            Self::Str(0x03, v) => p.set_content_type(Some(v)),
            Self::Str(0x12, v) => p.set_assigned_client_identifier(Some(v)),
            Self::Str(0x15, v) => p.set_authentication_method(Some(v)),
            Self::Str(0x1A, v) => p.set_response_information(Some(v)),
            Self::Str(0x1C, v) => p.set_server_reference(Some(v)),
            Self::Str(_, v) => p.set_reason_string(Some(v)),
            Self::Bin(0x09, v) => p.set_correlation_data(Some(v)),
            Self::Bin(_, v) => p.set_authentication_data(Some(v)),
            Self::ResponseTopic(t) => p.set_response_topic(Some(t)),
            Self::MaximumQoS(one) => p.set_maximum_qos(Some(if one {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            })),
            Self::User(k, v) => p.push_user_property(UserProperty::new(k, v)),
            Self::SubId(v) => p.push_subscription_identifier(SubscriptionId::new(v).unwrap()),
        };
    }
}

fn prop() -> impl Strategy<Value = Prop> {
    let flag_ids = prop::sample::select(&[0x01u8, 0x17, 0x19, 0x25, 0x28, 0x29, 0x2A][..]);
    prop_oneof![
        (flag_ids, any::<bool>()).prop_map(|(i, v)| Prop::Flag(i, v)),
        (prop::sample::select(&[0x13u8, 0x22][..]), any::<u16>())
            .prop_map(|(i, v)| Prop::U16(i, v)),
        (prop::sample::select(&[0x21u8, 0x23][..]), 1u16..)
            .prop_map(|(i, v)| Prop::NonZero16(i, v)),
        (
            prop::sample::select(&[0x02u8, 0x11, 0x18][..]),
            any::<u32>()
        )
            .prop_map(|(i, v)| Prop::U32(i, v)),
        (1u32..).prop_map(|v| Prop::NonZero32(0x27, v)),
        (
            prop::sample::select(&[0x03u8, 0x12, 0x15, 0x1A, 0x1C, 0x1F][..]),
            mqtt_string()
        )
            .prop_map(|(i, v)| Prop::Str(i, v)),
        (prop::sample::select(&[0x09u8, 0x16][..]), bytes(8)).prop_map(|(i, v)| Prop::Bin(i, v)),
        topic_name().prop_map(Prop::ResponseTopic),
        any::<bool>().prop_map(Prop::MaximumQoS),
        (mqtt_string(), mqtt_string()).prop_map(|(k, v)| Prop::User(k, v)),
        (1u32..=MAX_VARINT).prop_map(Prop::SubId),
    ]
}

/// Properties `ctx` allows, set in random order (a single-valued one set
/// twice keeps the last value).
fn properties(ctx: PropertyContext) -> impl Strategy<Value = Properties> {
    vec(prop(), 0..8).prop_map(move |props| {
        let mut p = Properties::new();
        let mut sub_ids = 0;
        for prop in props {
            if !ctx.allows(prop.id()) {
                continue;
            }
            if prop.id() == 0x0B {
                // Several only on PUBLISH.
                sub_ids += 1;
                if sub_ids > 1 && ctx != PropertyContext::PUBLISH {
                    continue;
                }
            }
            prop.apply(&mut p);
        }
        if p.authentication_data().is_some() && p.authentication_method().is_none() {
            // Data needs a method (3.1.2.11.10).
            p.set_authentication_method(Some(MqttString::from_static("SCRAM-SHA-1")));
        }
        p
    })
}

fn props_for(v: Protocol, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        properties(ctx).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn reason(v: Protocol, ctx: ReasonContext) -> BoxedStrategy<ReasonCode> {
    if v.is_v5() {
        prop::sample::select(ctx.allowed())
            .prop_map(ReasonCode)
            .boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    }
}

fn connect(v: Protocol) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        bytes(16),
        qos(),
        any::<bool>(),
        props_for(v, PropertyContext::WILL),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        props_for(v, PropertyContext::CONNECT),
        mqtt_string(),
        prop::option::of(will),
        prop::option::of(mqtt_string()),
        prop::option::of(bytes(16)),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // 3.1.x can't express a password without a user name.
                let password = if v.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                let mut c = Connect::new(v, client_id);
                c.clean_start = clean_start;
                c.keep_alive = keep_alive;
                c.properties = properties;
                c.will = will;
                c.username = username;
                c.password = password;
                Packet::Connect(Box::new(c))
            },
        )
}

fn connack(v: Protocol) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        prop::sample::select(ReasonContext::ConnAck.allowed())
            .prop_map(ReasonCode)
            .boxed()
    } else {
        (0u8..=5)
            .prop_map(|c| ReasonCode::from_v3_connack(c).unwrap())
            .boxed()
    };
    (any::<bool>(), code, props_for(v, PropertyContext::CONNACK)).prop_map(move |(sp, rc, p)| {
        let mut c = ConnAck::new(rc, sp && v != Protocol::V3_1 && !rc.is_error());
        c.properties = p;
        Packet::ConnAck(c)
    })
}

fn publish(v: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        packet_id(),
        any::<bool>(),
        topic_name(),
        props_for(v, PropertyContext::PUBLISH),
        bytes(64),
        any::<bool>(),
    )
        .prop_map(
            move |(dup, qos, id, retain, topic, properties, payload, alias_only)| {
                let mut p = Publish::new(topic, payload);
                p.qos = QosPid::from_parts(qos, Some(id)).unwrap();
                p.dup = dup && qos != QoS::AtMostOnce;
                p.retain = retain;
                p.properties = properties;
                if alias_only && p.properties.topic_alias().is_some() {
                    p.topic = TopicName::alias_only();
                }
                Packet::Publish(p)
            },
        )
}

fn pub_ack(v: Protocol) -> impl Strategy<Value = Packet> {
    (0..4u8, packet_id(), any::<bool>()).prop_flat_map(move |(kind, id, _)| {
        let ctx = if kind < 2 {
            ReasonContext::PubAck
        } else {
            ReasonContext::PubRel
        };
        (reason(v, ctx), props_for(v, PropertyContext::ACK)).prop_map(move |(rc, props)| {
            let mut a = PubAck::with_reason(id, rc);
            a.properties = props;
            match kind {
                0 => Packet::PubAck(a),
                1 => Packet::PubRec(a),
                2 => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            }
        })
    })
}

fn subscribe(v: Protocol) -> impl Strategy<Value = Packet> {
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
            if !v.is_v5() {
                return SubscriptionOptions::qos(qos);
            }
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: [
                    RetainHandling::SendOnSubscribe,
                    RetainHandling::SendIfNew,
                    RetainHandling::DoNotSend,
                ][rh as usize],
            }
        });
    let sub = (topic_filter(), options).prop_map(|(filter, mut options)| {
        if filter.shared().is_some() {
            options.no_local = false; // [MQTT-3.8.3-4]
        }
        Subscription { filter, options }
    });
    (
        packet_id(),
        props_for(v, PropertyContext::SUBSCRIBE),
        vec(sub, 1..4),
    )
        .prop_map(|(packet_id, properties, subscriptions)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                subscriptions,
            })
        })
}

fn suback(v: Protocol) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        prop::sample::select(ReasonContext::SubAck.allowed())
            .prop_map(ReasonCode)
            .boxed()
    } else {
        prop::sample::select(&[0u8, 1, 2, 0x80][..])
            .prop_map(ReasonCode)
            .boxed()
    };
    (
        packet_id(),
        props_for(v, PropertyContext::ACK),
        vec(code, 1..4),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
}

fn unsubscribe(v: Protocol) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        props_for(v, PropertyContext::UNSUBSCRIBE),
        vec(topic_filter(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn unsuback(v: Protocol) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() {
        vec(
            prop::sample::select(ReasonContext::UnsubAck.allowed()).prop_map(ReasonCode),
            1..4,
        )
        .boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), props_for(v, PropertyContext::ACK), codes).prop_map(
        |(packet_id, properties, reason_codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        },
    )
}

fn disconnect(v: Protocol) -> impl Strategy<Value = Packet> {
    (
        reason(v, ReasonContext::Disconnect),
        props_for(v, PropertyContext::DISCONNECT),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
}

fn auth() -> impl Strategy<Value = Packet> {
    (
        reason(Protocol::V5, ReasonContext::Auth),
        properties(PropertyContext::AUTH),
    )
        .prop_map(|(reason_code, mut properties)| {
            if (reason_code != ReasonCode::SUCCESS || !properties.is_empty())
                && properties.authentication_method().is_none()
            {
                properties.set_authentication_method(Some(MqttString::from_static("GS2-KRB5")));
            }
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        })
}

/// Any packet but CONNECT, valid for `v`.
fn after_connect(v: Protocol) -> BoxedStrategy<Packet> {
    let mut options = vec![
        connack(v).boxed(),
        publish(v).boxed(),
        pub_ack(v).boxed(),
        subscribe(v).boxed(),
        suback(v).boxed(),
        unsubscribe(v).boxed(),
        unsuback(v).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v).boxed(),
    ];
    if v.is_v5() {
        options.push(auth().boxed());
    }
    prop::strategy::Union::new(options).boxed()
}

fn any_packet(v: Protocol) -> BoxedStrategy<Packet> {
    prop_oneof![1 => connect(v), 10 => after_connect(v)].boxed()
}

fn versioned_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|v| any_packet(v).prop_map(move |p| (v, p)))
}

fn decode_all(bytes: &[u8], v: Option<Protocol>) -> Result<Vec<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = Packet::decode(&mut buf, v, &Limits::default())? {
        out.push(p);
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Encode then decode gives the same packet, for every version.
    #[test]
    fn round_trip((v, packet) in versioned_packet()) {
        let bytes = packet.to_bytes(v).unwrap();
        prop_assert_eq!(bytes.len(), packet.encoded_len(v).unwrap());
        let back = decode_all(&bytes, Some(v)).unwrap();
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(&back[0], &packet);
        // And encoding the decoded packet gives the same bytes.
        prop_assert_eq!(back[0].to_bytes(v).unwrap(), bytes);
    }

    /// A PUBLISH encoded from borrowed parts ([`PublishView`], what a
    /// broker sends each subscriber of a shared message) decodes to the
    /// packet those parts make, header alone plus payload included.
    #[test]
    fn a_view_of_parts_encodes_the_packet_they_make((v, packet) in versioned_packet()) {
        let Packet::Publish(p) = packet else { return Ok(()) };
        let view = PublishView {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            properties: &p.properties,
            topic_alias: None,
            payload: &p.payload,
        };
        let mut buf = BytesMut::new();
        let n = view.encode(v, &mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(view.encoded_len(v).unwrap(), n);
        let back = decode_all(&buf, Some(v)).unwrap();
        prop_assert_eq!(&back, &vec![Packet::Publish(p.clone())]);
        let mut head = BytesMut::new();
        prop_assert_eq!(view.encode_header(v, &mut head).unwrap(), n);
        head.extend_from_slice(&p.payload);
        prop_assert_eq!(head, buf);
        // With a Topic Alias of the view's own (5.0; 3.1.1 writes none),
        // and the topic left out: as if the properties carried it.
        if v.is_v5() && p.properties.topic_alias().is_none() {
            let alias = NonZeroU16::new(7).unwrap();
            let empty = TopicName::alias_only();
            let aliased = PublishView { topic_alias: Some(alias), topic: &empty, ..view };
            let mut buf = BytesMut::new();
            let n = aliased.encode(v, &mut buf).unwrap();
            prop_assert_eq!(aliased.encoded_len(v).unwrap(), n);
            let mut expected = p.clone();
            expected.topic = TopicName::alias_only();
            let mut wire = vec![0x23, 0, 7];
            wire.extend_from_slice(p.properties.as_wire());
            expected.properties =
                Properties::from_wire(wire.into(), PropertyContext::PUBLISH, &Limits::default())
                    .unwrap();
            let back = decode_all(&buf, Some(v)).unwrap();
            prop_assert_eq!(&back, &vec![Packet::Publish(expected.clone())]);
            // Two Topic Aliases (the view's and its properties'): refused.
            let twice = PublishView { properties: &expected.properties, ..aliased };
            prop_assert!(twice.encode(v, &mut BytesMut::new()).is_err());
            prop_assert!(twice.encoded_len(v).is_err());
        }
    }

    /// Decoding arbitrary bytes never panics, whatever the version.
    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512), v in prop::option::of(protocol())) {
        let _ = decode_all(&data, v);
    }

    /// A valid fixed header over an arbitrary body: reaches deep into every body parser.
    #[test]
    fn arbitrary_bodies_never_panic(first in any::<u8>(), body in vec(any::<u8>(), 0..200), v in protocol()) {
        let mut frame = vec![first];
        let mut n = body.len();
        loop {
            let mut b = (n & 0x7F) as u8;
            n >>= 7;
            if n > 0 { b |= 0x80; }
            frame.push(b);
            if n == 0 { break; }
        }
        frame.extend_from_slice(&body);
        if let Ok(packets) = decode_all(&frame, Some(v)) {
            // Whatever decodes must encode again and decode to itself.
            for p in packets {
                let protocol = match &p { Packet::Connect(c) => c.protocol, _ => v };
                let bytes = p.to_bytes(protocol).unwrap();
                let again = decode_all(&bytes, Some(protocol)).unwrap();
                prop_assert_eq!(&again[0], &p);
            }
        }
    }

    /// A mutated valid packet never panics the decoder.
    #[test]
    fn mutated_packets_never_panic((v, packet) in versioned_packet(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = packet.to_bytes(v).unwrap().to_vec();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode_all(&bytes, Some(v));
    }

    /// A stream of valid packets split at arbitrary boundaries decodes to the
    /// same packets through the tokio-util codec, which learns the version
    /// from the leading CONNECT.
    #[test]
    fn split_stream_decodes_the_same(
        (v, first, rest) in protocol().prop_flat_map(|v| (Just(v), connect(v), vec(after_connect(v), 0..12))),
        cuts in vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut packets = vec![first];
        packets.extend(rest);
        let mut encoder = MqttCodec::new();
        let mut wire = BytesMut::new();
        for p in &packets {
            encoder.encode(p, &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut decoder = MqttCodec::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[at..cut]);
            at = cut;
            while let Some(p) = decoder.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoder.protocol(), Some(v));
        prop_assert_eq!(out, packets);
    }
}
