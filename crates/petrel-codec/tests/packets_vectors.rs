//! Byte-vector tests: every packet type in every version, the examples the
//! specifications give, and every validation rule with the statement it enforces.

use bytes::{Bytes, BytesMut};
use petrel_codec::packet::PacketType;
use petrel_codec::*;

mod wire;
use wire::{cat, frame, s};

const V31: Protocol = Protocol::V3_1;
const V311: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

fn dec(bytes: &[u8], p: Protocol) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = Packet::decode(&mut buf, Some(p), &Limits::default())?.expect("a whole packet");
    assert!(buf.is_empty(), "decode must consume exactly one packet");
    Ok(packet)
}

/// Decode, check the packet, re-encode and check the same bytes come back.
fn round(bytes: &[u8], p: Protocol) -> Packet {
    let packet = dec(bytes, p).unwrap_or_else(|e| panic!("{e} decoding {bytes:02X?}"));
    assert_eq!(packet.encoded_len(p).unwrap(), bytes.len());
    assert_eq!(
        &packet.to_bytes(p).unwrap()[..],
        bytes,
        "re-encoding {packet:?}"
    );
    packet
}

/// Decode, re-encode (properties come out in canonical order, which may differ
/// from the input's) and check the re-encoded bytes decode to the same packet.
fn round_any(bytes: &[u8], p: Protocol) -> Packet {
    let packet = dec(bytes, p).unwrap_or_else(|e| panic!("{e} decoding {bytes:02X?}"));
    let again = packet.to_bytes(p).unwrap();
    assert_eq!(again.len(), bytes.len());
    assert_eq!(dec(&again, p).unwrap(), packet);
    packet
}

fn err(bytes: &[u8], p: Protocol) -> DecodeError {
    dec(bytes, p).expect_err("must be refused")
}

fn mstr(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

// ---------------------------------------------------------------- fixed header

/// Checks [MQTT-1.5.5-1].
#[test]
fn remaining_length_table_1_5_5() {
    // The boundaries of the Variable Byte Integer table in 1.5.5 / 2.2.3.
    let cases: &[(&[u8], usize)] = &[
        (&[0x00], 0),
        (&[0x7F], 127),
        (&[0x80, 0x01], 128),
        (&[0xFF, 0x7F], 16_383),
        (&[0x80, 0x80, 0x01], 16_384),
        (&[0xFF, 0xFF, 0x7F], 2_097_151),
        (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
        (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
    ];
    for (len, value) in cases {
        let mut bytes = vec![0x30];
        bytes.extend_from_slice(len);
        let h = FixedHeader::parse(&bytes, Some(V311)).unwrap().unwrap();
        assert_eq!(h.remaining_len, *value);
        assert_eq!(h.header_len, 1 + len.len());
        // Any prefix of the length asks for more bytes.
        for cut in 1..bytes.len() {
            assert_eq!(FixedHeader::parse(&bytes[..cut], Some(V311)).unwrap(), None);
        }
    }
}

/// Checks [MQTT-1.5.5-1].
#[test]
fn remaining_length_of_five_bytes_is_malformed_mqtt_1_5_5_1() {
    let e = FixedHeader::parse(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Some(V311)).unwrap_err();
    assert_eq!(e, DecodeError::MalformedRemainingLength);
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    assert_eq!(e.spec(), Some("MQTT-1.5.5-1"));
}

#[test]
fn reserved_packet_types() {
    assert_eq!(err(&[0x00, 0x00], V311), DecodeError::ReservedPacketType(0));
    // AUTH (15) exists only in 5.0.
    assert_eq!(
        err(&[0xF0, 0x00], V311),
        DecodeError::ReservedPacketType(15)
    );
    assert_eq!(err(&[0xF0, 0x00], V31), DecodeError::ReservedPacketType(15));
    assert!(matches!(dec(&[0xF0, 0x00], V5), Ok(Packet::Auth(_))));
}

/// Checks [MQTT-2.1.3-1], [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1], [MQTT-3.14.1-1], [MQTT-3.15.1-1]; 3.1.1: [MQTT-2.2.2-1], [MQTT-2.2.2-2].
#[test]
fn reserved_fixed_header_flags_mqtt_2_1_3_1() {
    // Every packet but PUBLISH fixes its flags: 0010 for PUBREL, SUBSCRIBE and
    // UNSUBSCRIBE ([MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]), 0000 for
    // the rest ([MQTT-3.14.1-1] for DISCONNECT, [MQTT-3.15.1-1] for AUTH).
    for t in 1u8..=15 {
        let ty = PacketType::from_u8(t).unwrap();
        let Some(fixed) = ty.fixed_flags() else {
            continue;
        };
        for flags in 0u8..16 {
            if flags == fixed {
                continue;
            }
            let e = FixedHeader::parse(&[t << 4 | flags, 0], Some(V5)).unwrap_err();
            assert_eq!(e, DecodeError::InvalidHeaderFlags { packet: ty, flags });
            assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
            assert_eq!(e.spec(), Some("MQTT-2.1.3-1"));
        }
    }
}

#[test]
fn oversized_packet_refused_from_its_header() {
    // A peer announcing 256 MB: refused with five bytes buffered, nothing reserved.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let limits = Limits::default();
    let e = Packet::decode(&mut buf, Some(V311), &limits).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: limits.max_packet_size
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    assert!(buf.capacity() < 1024, "capacity {} grew", buf.capacity());

    // The limit counts the whole packet, fixed header included.
    let small = Limits {
        max_packet_size: 10,
        ..Limits::default()
    };
    let ok = frame(0x30, &cat(&[&s("a"), b"12345"]));
    assert_eq!(ok.len(), 10);
    let mut buf = BytesMut::from(&ok[..]);
    assert!(Packet::decode(&mut buf, Some(V311), &small)
        .unwrap()
        .is_some());
    let big = frame(0x30, &cat(&[&s("a"), b"123456"]));
    let mut buf = BytesMut::from(&big[..2]);
    assert!(matches!(
        Packet::decode(&mut buf, Some(V311), &small),
        Err(DecodeError::PacketTooLarge { size: 11, max: 10 })
    ));
}

#[test]
fn an_announced_packet_does_not_reserve_beyond_a_step() {
    // A 1 MiB PUBLISH announced (within the limit) with only its header sent.
    let limits = Limits {
        max_packet_size: 1 << 20,
        ..Limits::default()
    };
    let mut buf = BytesMut::from(&[0x30u8, 0xFA, 0xFF, 0x3F][..]);
    assert_eq!(Packet::decode(&mut buf, Some(V311), &limits).unwrap(), None);
    assert!(
        buf.capacity() <= packet::RESERVE_STEP + 16,
        "{}",
        buf.capacity()
    );
}

#[test]
fn partial_frames_wait_and_reserve_only_what_is_missing() {
    let bytes = frame(0x30, &cat(&[&s("t"), &[7u8; 100]]));
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            Packet::decode(&mut buf, Some(V311), &Limits::default()).unwrap(),
            None
        );
        assert_eq!(buf.len(), cut, "nothing consumed");
    }
}

/// Before a CONNECT has fixed the version only CONNECT decodes: another
/// first packet (a client breaking the first-packet rule of section 3.1) is
/// refused with its own error.
#[test]
fn only_connect_before_the_version_is_known() {
    let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]);
    let e = Packet::decode(&mut buf, None, &Limits::default()).unwrap_err();
    assert_eq!(e, DecodeError::FirstPacketNotConnect(PacketType::PingReq));
    assert_eq!(e.spec(), Some("MQTT-3.1.0-1"));
}

#[test]
fn trailing_bytes_inside_a_frame_are_malformed() {
    // PINGREQ with a body, PUBACK 3.1.1 with an extra byte, DISCONNECT 3.1.1 with a body.
    assert_eq!(
        err(&[0xC0, 0x01, 0x00], V311),
        DecodeError::TrailingBytes(1)
    );
    assert_eq!(
        err(&[0x40, 0x03, 0x00, 0x01, 0x00], V311),
        DecodeError::TrailingBytes(1)
    );
    assert_eq!(
        err(&[0xE0, 0x01, 0x00], V311),
        DecodeError::TrailingBytes(1)
    );
    assert_eq!(
        err(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311),
        DecodeError::TrailingBytes(1)
    );
    let e = err(&[0xC0, 0x01, 0x00], V311);
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
}

#[test]
fn truncated_fields_are_malformed() {
    // A topic whose length prefix claims more than the packet holds.
    assert_eq!(
        err(&[0x30, 0x03, 0x00, 0x05, b'a'], V311),
        DecodeError::Truncated
    );
    // QoS 1 PUBLISH without room for a packet identifier.
    assert_eq!(err(&frame(0x32, &s("a")), V311), DecodeError::Truncated);
    // A property block longer than the packet.
    assert_eq!(
        err(&frame(0x30, &cat(&[&s("a"), &[0x05, 0x01]])), V5),
        DecodeError::Truncated
    );
    // A PUBACK with one byte of packet identifier.
    assert_eq!(err(&[0x40, 0x01, 0x00], V311), DecodeError::Truncated);
}

// ---------------------------------------------------------------- CONNECT

/// Checks 3.1.1: [MQTT-3.1.3-1], [MQTT-3.1.3-3], [MQTT-3.1.2-19], [MQTT-3.1.2-21].
#[test]
fn connect_v311_spec_variable_header_example() {
    // 3.1.2.10's example: name MQTT, level 4, flags 0xCE (user name, password,
    // will QoS 1, will flag, clean session), keep alive 10.
    let body = cat(&[
        &s("MQTT"),
        &[0x04, 0xCE, 0x00, 0x0A],
        &s("client-1"),
        &s("will/topic"),
        &s("bye"),
        &s("user"),
        &s("pass"),
    ]);
    let bytes = frame(0x10, &body);
    let Packet::Connect(c) = round(&bytes, V311) else {
        panic!()
    };
    assert_eq!(c.protocol, V311);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 10);
    assert_eq!(c.client_id, "client-1");
    let w = c.will.as_ref().unwrap();
    assert_eq!(w.topic, "will/topic");
    assert_eq!(&w.payload[..], b"bye");
    assert_eq!(w.qos, QoS::AtLeastOnce);
    assert!(!w.retain);
    assert_eq!(c.username.as_ref().unwrap(), "user");
    assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
}

#[test]
fn connect_v31_mqisdp() {
    let bytes = frame(
        0x10,
        &cat(&[&s("MQIsdp"), &[0x03, 0x02, 0x00, 0x3C], &s("c31")]),
    );
    let Packet::Connect(c) = round(&bytes, V311) else {
        panic!()
    };
    assert_eq!(c.protocol, V31);
    // Decoding a CONNECT needs no version: it carries its own.
    let mut buf = BytesMut::from(&bytes[..]);
    let p = Packet::decode(&mut buf, None, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(p, Packet::Connect(c));
}

/// Checks 5.0: [MQTT-3.1.2-9], [MQTT-3.1.3-1].
#[test]
fn connect_v5_with_properties_and_will_properties() {
    let props = cat(&[
        &[0x11, 0, 0, 0, 10],   // session expiry 10
        &[0x21, 0x00, 0x14],    // receive maximum 20
        &[0x27, 0, 0, 0x10, 0], // maximum packet size 4096
        &[0x22, 0x00, 0x05],    // topic alias maximum 5
        &[0x19, 1, 0x17, 0],    // request response information 1, problem information 0
        &[0x26],
        &s("k"),
        &s("v"), // user property
        &[0x15],
        &s("SCRAM"),               // authentication method
        &[0x16, 0x00, 0x02, 1, 2], // authentication data
    ]);
    let will_props = cat(&[
        &[0x18, 0, 0, 0, 5],  // will delay 5
        &[0x01, 1],           // payload format: UTF-8
        &[0x02, 0, 0, 0, 60], // message expiry 60
        &[0x03],
        &s("text/plain"),
        &[0x08],
        &s("reply/here"),
        &[0x09, 0, 1, 0xAB],
        &[0x26],
        &s("a"),
        &s("b"),
    ]);
    let body = cat(&[
        &s("MQTT"),
        &[0x05, 0x36, 0x00, 0x3C], // will retain, will QoS 2, will flag, clean start
        &[props.len() as u8],
        &props,
        &s("c5"),
        &[will_props.len() as u8],
        &will_props,
        &s("w"),
        &s("x"),
    ]);
    let Packet::Connect(c) = round_any(&frame(0x10, &body), V5) else {
        panic!()
    };
    assert_eq!(c.protocol, V5);
    let p = &c.properties;
    assert_eq!(p.session_expiry_interval(), Some(10));
    assert_eq!(p.receive_maximum().map(|v| v.get()), Some(20));
    assert_eq!(p.maximum_packet_size().map(|v| v.get()), Some(4096));
    assert_eq!(p.topic_alias_maximum(), Some(5));
    assert_eq!(p.request_response_information(), Some(true));
    assert_eq!(p.request_problem_information(), Some(false));
    assert_eq!(p.authentication_method().unwrap(), "SCRAM");
    assert_eq!(p.authentication_data().as_deref(), Some(&[1u8, 2][..]));
    let users: Vec<_> = p.user_properties().iter().collect();
    assert_eq!(users, vec![UserProperty::new(mstr("k"), mstr("v"))]);
    let w = c.will.unwrap();
    assert_eq!((w.qos, w.retain), (QoS::ExactlyOnce, true));
    assert_eq!(w.properties.will_delay_interval(), Some(5));
    assert_eq!(w.properties.payload_format_indicator(), Some(true));
    assert_eq!(
        w.properties.response_topic().as_ref().unwrap(),
        "reply/here"
    );
    assert_eq!(w.properties.user_properties().len(), 1);
}

#[test]
fn connect_v5_password_without_user_name_is_allowed() {
    let body = cat(&[&s("MQTT"), &[0x05, 0x42, 0, 0, 0], &s("c"), &s("pw")]);
    let Packet::Connect(c) = round(&frame(0x10, &body), V5) else {
        panic!()
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

/// Checks 3.1.1: [MQTT-3.1.2-22].
#[test]
fn connect_password_without_user_name_v311_mqtt_3_1_2_22() {
    let body = cat(&[&s("MQTT"), &[0x04, 0x42, 0, 0], &s("c"), &s("pw")]);
    let e = err(&frame(0x10, &body), V311);
    assert_eq!(e, DecodeError::PasswordWithoutUsername);
    assert_eq!(e.spec(), Some("MQTT-3.1.2-22"));
}

/// Checks [MQTT-3.1.2-3].
#[test]
fn connect_reserved_flag_mqtt_3_1_2_3() {
    for (name, level) in [("MQTT", 4u8), ("MQTT", 5), ("MQIsdp", 3)] {
        let body = cat(&[&s(name), &[level, 0x03, 0, 0, 0], &s("c")]);
        let e = err(&frame(0x10, &body), V5);
        assert_eq!(e, DecodeError::ReservedConnectFlag);
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
}

/// Checks 5.0: [MQTT-3.1.2-11], [MQTT-3.1.2-12], [MQTT-3.1.2-13]; 3.1.1: [MQTT-3.1.2-13], [MQTT-3.1.2-14], [MQTT-3.1.2-15].
#[test]
fn connect_will_flags_mqtt_3_1_2_11_to_13() {
    // [MQTT-3.1.2-11]: will QoS without the will flag; [MQTT-3.1.2-13]: will
    // retain without it; [MQTT-3.1.2-12]: will QoS 3.
    for flags in [0x0A, 0x12, 0x22, 0x1E] {
        let body = cat(&[&s("MQTT"), &[0x04, flags, 0, 0], &s("c"), &s("t"), &s("p")]);
        assert_eq!(
            err(&frame(0x10, &body), V311),
            DecodeError::InvalidWillFlags,
            "{flags:#x}"
        );
    }
}

/// Mosquitto's bridge flag: a 3.1 or 3.1.1 protocol level with its high
/// bit (0x83, 0x84) decodes as that version with `bridge` set and encodes
/// back to the same bytes; 5.0 with the bit (0x85), or the bit on a level
/// that is no version, stays an unsupported level.
#[test]
fn the_bridge_flag_of_3_1_x_levels() {
    let mk = |name: &str, level: u8| frame(0x10, &cat(&[&s(name), &[level, 0x02, 0, 0], &s("c")]));
    for (name, level, protocol) in [("MQTT", 0x84, V311), ("MQIsdp", 0x83, Protocol::V3_1)] {
        let bytes = mk(name, level);
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Packet::Connect(c)) = Packet::decode(&mut buf, None, &Limits::default()).unwrap()
        else {
            panic!("not a CONNECT")
        };
        assert!(c.bridge);
        assert_eq!(c.protocol, protocol);
        let mut out = BytesMut::new();
        Packet::Connect(c.clone())
            .encode(protocol, &mut out)
            .unwrap();
        assert_eq!(&out[..], &bytes[..], "the same bytes again");
        // The positive control: without the bit, no flag.
        let mut plain = BytesMut::from(&mk(name, level & 0x7F)[..]);
        let Some(Packet::Connect(c)) =
            Packet::decode(&mut plain, None, &Limits::default()).unwrap()
        else {
            panic!("not a CONNECT")
        };
        assert!(!c.bridge);
    }
    for level in [0x85u8, 0x86, 0x80] {
        let mut buf = BytesMut::from(&mk("MQTT", level)[..]);
        assert_eq!(
            Packet::decode(&mut buf, None, &Limits::default()).unwrap_err(),
            DecodeError::UnsupportedProtocolLevel { level }
        );
    }
}

/// Checks [MQTT-3.1.2-1], [MQTT-3.1.2-2].
#[test]
fn connect_protocol_name_and_level_mqtt_3_1_2_1_and_2() {
    let mk = |name: &str, level: u8| frame(0x10, &cat(&[&s(name), &[level, 0x02, 0, 0], &s("c")]));
    assert_eq!(
        err(&mk("MQTX", 4), V311),
        DecodeError::InvalidProtocolName { level: 4 }
    );
    for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 0)] {
        let e = err(&mk(name, level), V311);
        assert_eq!(e, DecodeError::UnsupportedProtocolLevel { level });
        // A 5.0 server answers CONNACK 0x84; a 3.1.1 one return code 1.
        assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(e.reason_code().to_v3_connack(), 1);
        assert_eq!(e.spec(), Some("MQTT-3.1.2-2"));
    }
}

#[test]
fn connect_will_topic_must_not_hold_wildcards() {
    let body = cat(&[&s("MQTT"), &[0x04, 0x06, 0, 0], &s("c"), &s("a/#"), &s("p")]);
    assert_eq!(
        err(&frame(0x10, &body), V311),
        DecodeError::String(StringError::WildcardInTopicName)
    );
}

#[test]
fn connect_property_not_allowed_and_duplicated() {
    // Topic Alias (0x23) is a PUBLISH property: a Malformed Packet in CONNECT (2.2.2.2).
    let body = cat(&[&s("MQTT"), &[0x05, 0x02, 0, 0, 3, 0x23, 0, 1], &s("c")]);
    let e = err(&frame(0x10, &body), V5);
    assert_eq!(
        e,
        DecodeError::PropertyNotAllowed {
            property: 0x23,
            packet: "CONNECT"
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    // Session expiry twice: a Protocol Error.
    let body = cat(&[
        &s("MQTT"),
        &[0x05, 0x02, 0, 0, 10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2],
        &s("c"),
    ]);
    let e = err(&frame(0x10, &body), V5);
    assert_eq!(e, DecodeError::DuplicateProperty(0x11));
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // Receive Maximum 0 and Maximum Packet Size 0 are protocol errors.
    for props in [&[0x21u8, 0, 0][..], &[0x27, 0, 0, 0, 0][..], &[0x17, 2][..]] {
        let body = cat(&[
            &s("MQTT"),
            &[0x05, 0x02, 0, 0, props.len() as u8],
            props,
            &s("c"),
        ]);
        let e = err(&frame(0x10, &body), V5);
        assert!(matches!(e, DecodeError::InvalidPropertyValue(_)), "{e:?}");
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    }
    // An identifier the specification does not define.
    let body = cat(&[&s("MQTT"), &[0x05, 0x02, 0, 0, 2, 0x7F, 0], &s("c")]);
    assert_eq!(
        err(&frame(0x10, &body), V5),
        DecodeError::UnknownProperty(0x7F)
    );
}

/// Checks 5.0: [MQTT-1.5.4-1], [MQTT-1.5.4-2], [MQTT-1.5.7-1]; 3.1.1: [MQTT-1.5.3-1], [MQTT-1.5.3-2].
#[test]
fn connect_client_id_invalid_utf8_mqtt_1_5_4_1_and_null_mqtt_1_5_4_2() {
    let bad = [0x00u8, 0x03, 0xED, 0xA0, 0x80]; // an encoded surrogate
    let body = cat(&[&s("MQTT"), &[0x04, 0x02, 0, 0], &bad]);
    let e = err(&frame(0x10, &body), V311);
    assert_eq!(e, DecodeError::String(StringError::InvalidUtf8));
    assert_eq!(e.spec(), Some("MQTT-1.5.4-1"));
    let body = cat(&[&s("MQTT"), &[0x04, 0x02, 0, 0], &[0, 3, b'a', 0, b'b']]);
    let e = err(&frame(0x10, &body), V311);
    assert_eq!(e, DecodeError::String(StringError::NullCharacter));
    assert_eq!(e.spec(), Some("MQTT-1.5.4-2"));
    // User property halves follow the same rules ([MQTT-1.5.7-1]).
    let body = cat(&[
        &s("MQTT"),
        &[0x05, 0x02, 0, 0, 8, 0x26],
        &s("k"),
        &[0, 2, 0xC3, 0x28],
        &s("c"),
    ]);
    assert_eq!(
        err(&frame(0x10, &body), V5),
        DecodeError::String(StringError::InvalidUtf8)
    );
}

#[test]
fn connect_empty_client_id_decodes() {
    // Whether an empty id is accepted is the server's decision (3.1.3.1), not the codec's.
    let body = cat(&[&s("MQTT"), &[0x04, 0x02, 0, 0], &s("")]);
    let Packet::Connect(c) = round(&frame(0x10, &body), V311) else {
        panic!()
    };
    assert!(c.client_id.is_empty());
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack_v311_return_codes() {
    let Packet::ConnAck(c) = round(&[0x20, 0x02, 0x01, 0x00], V311) else {
        panic!()
    };
    assert!(c.session_present);
    assert_eq!(c.reason_code, ReasonCode::SUCCESS);
    let expected = [
        ReasonCode::SUCCESS,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        ReasonCode::SERVER_UNAVAILABLE,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ReasonCode::NOT_AUTHORIZED,
    ];
    for (code, rc) in expected.iter().enumerate() {
        let Packet::ConnAck(c) = round(&[0x20, 0x02, 0x00, code as u8], V311) else {
            panic!()
        };
        assert_eq!(c.reason_code, *rc);
    }
    assert!(matches!(
        err(&[0x20, 0x02, 0x00, 0x06], V311),
        DecodeError::InvalidReasonCode { .. }
    ));
    // Bits 7-1 of the acknowledge flags are reserved.
    assert_eq!(
        err(&[0x20, 0x02, 0x02, 0x00], V311),
        DecodeError::InvalidConnAckFlags
    );
    // 3.1 CONNACK has the same shape, but no Session Present flag: the first
    // byte is reserved and unused.
    round(&[0x20, 0x02, 0x00, 0x00], V31);
    let Packet::ConnAck(c) = dec(&[0x20, 0x02, 0x01, 0x05], V31).unwrap() else {
        panic!()
    };
    assert!(!c.session_present);
    assert_eq!(c.reason_code, ReasonCode::NOT_AUTHORIZED);
    let present = Packet::ConnAck(ConnAck::new(ReasonCode::SUCCESS, true));
    assert_eq!(
        &present.to_bytes(V31).unwrap()[..],
        &[0x20, 0x02, 0x00, 0x00]
    );
    assert_eq!(
        &present.to_bytes(V311).unwrap()[..],
        &[0x20, 0x02, 0x01, 0x00]
    );
}

#[test]
fn connack_v5_with_properties() {
    let props = cat(&[
        &[0x12],
        &s("auto-1"),
        &[0x13, 0x00, 0x1E],
        &[0x24, 0x01],
        &[0x25, 0x00],
        &[0x28, 0x01, 0x29, 0x00, 0x2A, 0x01],
        &[0x21, 0x00, 0x0A],
        &[0x22, 0x00, 0x10],
        &[0x27, 0, 0, 1, 0],
        &[0x1F],
        &s("welcome"),
        &[0x1A],
        &s("resp/"),
        &[0x1C],
        &s("other:1883"),
    ]);
    let body = cat(&[&[0x00, 0x00, props.len() as u8], &props]);
    let Packet::ConnAck(c) = round_any(&frame(0x20, &body), V5) else {
        panic!()
    };
    let p = &c.properties;
    assert_eq!(p.assigned_client_identifier().unwrap(), "auto-1");
    assert_eq!(p.server_keep_alive(), Some(30));
    assert_eq!(p.maximum_qos(), Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available(), Some(false));
    assert_eq!(p.wildcard_subscription_available(), Some(true));
    assert_eq!(p.subscription_identifier_available(), Some(false));
    assert_eq!(p.shared_subscription_available(), Some(true));
    assert_eq!(p.reason_string().as_ref().unwrap(), "welcome");
    // Maximum QoS 2 is a protocol error.
    let e = err(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], V5);
    assert_eq!(e, DecodeError::InvalidPropertyValue(0x24));
    // A reason code outside the CONNACK table ([MQTT-3.2.2-8]).
    assert!(matches!(
        err(&[0x20, 0x03, 0x00, 0x10, 0x00], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    let Packet::ConnAck(c) = round(&[0x20, 0x03, 0x00, 0x87, 0x00], V5) else {
        panic!()
    };
    assert_eq!(c.reason_code, ReasonCode::NOT_AUTHORIZED);
}

#[test]
fn connack_v3_encoding_maps_v5_reason_codes() {
    let c = Packet::ConnAck(ConnAck::new(ReasonCode::BANNED, false));
    assert_eq!(&c.to_bytes(V311).unwrap()[..], &[0x20, 0x02, 0x00, 0x05]);
    let c = Packet::ConnAck(ConnAck::new(ReasonCode::SERVER_BUSY, false));
    assert_eq!(&c.to_bytes(V311).unwrap()[..], &[0x20, 0x02, 0x00, 0x03]);
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_v311_qos_0_1_2_retain_dup() {
    let Packet::Publish(p) = round(&frame(0x30, &cat(&[&s("a/b"), b"hello"])), V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QosPid::AtMostOnce, false, false));
    assert_eq!(p.topic, "a/b");
    assert_eq!(&p.payload[..], b"hello");
    let Packet::Publish(p) = round(&frame(0x33, &cat(&[&s("a"), &[0x00, 0x0A], b"x"])), V311)
    else {
        panic!()
    };
    assert_eq!((p.qos, p.retain), (QosPid::AtLeastOnce(pid(10)), true));
    let Packet::Publish(p) = round(&frame(0x3C, &cat(&[&s("a"), &[0xFF, 0xFF]])), V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.dup), (QosPid::ExactlyOnce(pid(65535)), true));
    assert!(p.payload.is_empty());
    // The same bytes in 3.1.
    round(&frame(0x30, &cat(&[&s("a/b"), b"hello"])), V31);
}

/// Checks [MQTT-3.3.2-1].
#[test]
fn publish_spec_example_3_3_2_3() {
    // 3.3.2's example: topic "a/b", packet identifier 10.
    let bytes = [0x32, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A];
    let Packet::Publish(p) = round(&bytes, V311) else {
        panic!()
    };
    assert_eq!(p.qos.packet_id(), Some(pid(10)));
}

/// Checks [MQTT-3.3.1-4].
#[test]
fn publish_qos_3_is_malformed_mqtt_3_3_1_4() {
    let e = err(&frame(0x36, &cat(&[&s("a"), &[0, 1]])), V311);
    assert_eq!(e, DecodeError::InvalidQoS);
    assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    assert_eq!(e.spec(), Some("MQTT-3.3.1-4"));
}

/// Checks [MQTT-3.3.1-2].
#[test]
fn publish_dup_on_qos0_mqtt_3_3_1_2() {
    let e = err(&frame(0x38, &s("a")), V311);
    assert_eq!(e, DecodeError::DupOnQoS0);
    assert_eq!(e.spec(), Some("MQTT-3.3.1-2"));
}

/// Checks 5.0: [MQTT-2.2.1-3], [MQTT-2.2.1-2]; 3.1.1: [MQTT-2.3.1-1], [MQTT-2.3.1-5].
#[test]
fn publish_packet_id_zero_mqtt_2_2_1_3() {
    let e = err(&frame(0x32, &cat(&[&s("a"), &[0, 0]])), V311);
    assert_eq!(e, DecodeError::ZeroPacketId);
    assert_eq!(e.spec(), Some("MQTT-2.2.1-3"));
    assert!(PacketId::new(0).is_none());
}

/// Checks [MQTT-3.3.2-2]; 5.0: [MQTT-4.7.0-1]; 3.1.1: [MQTT-4.7.1-1].
#[test]
fn publish_wildcards_in_topic_name_mqtt_3_3_2_2() {
    for t in ["a/+", "#", "a/b#", "+"] {
        let e = err(&frame(0x30, &s(t)), V311);
        assert_eq!(e, DecodeError::String(StringError::WildcardInTopicName));
        assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
        assert_eq!(e.spec(), Some("MQTT-3.3.2-2"));
    }
}

/// Checks [MQTT-4.7.3-1].
#[test]
fn publish_empty_topic_mqtt_4_7_3_1() {
    assert_eq!(err(&frame(0x30, &s("")), V311), DecodeError::MissingTopic);
    // 5.0: empty topic without an alias is a protocol error; with one, fine.
    let e = err(&frame(0x30, &cat(&[&s(""), &[0]])), V5);
    assert_eq!(e, DecodeError::MissingTopic);
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    let Packet::Publish(p) = round(&frame(0x30, &cat(&[&s(""), &[3, 0x23, 0, 7], b"pl"])), V5)
    else {
        panic!()
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias().map(|a| a.get()), Some(7));
    // And such a packet can't be encoded for 3.1.1.
    assert_eq!(
        Packet::Publish(p).to_bytes(V311).unwrap_err(),
        EncodeError::MissingTopic
    );
}

/// Checks [MQTT-3.3.2-8].
#[test]
fn publish_topic_alias_zero_mqtt_3_3_2_8() {
    let e = err(&frame(0x30, &cat(&[&s("a"), &[3, 0x23, 0, 0]])), V5);
    assert_eq!(e, DecodeError::ZeroTopicAlias);
    assert_eq!(e.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
}

/// Checks [MQTT-3.3.2-13], [MQTT-3.3.2-14], [MQTT-3.3.2-18], [MQTT-3.3.2-19].
#[test]
fn publish_v5_properties() {
    let props = cat(&[
        &[0x01, 0x01],
        &[0x02, 0, 0, 0x0E, 0x10],
        &[0x03],
        &s("application/json"),
        &[0x08],
        &s("resp/1"),
        &[0x09, 0, 3, 1, 2, 3],
        &[0x26],
        &s("k1"),
        &s("v1"),
        &[0x0B, 0x80, 0x01], // subscription identifier 128
        &[0x26],
        &s("k2"),
        &s("v2"),
        &[0x0B, 0x05],
        &[0x26],
        &s("k1"),
        &s("again"),
    ]);
    let body = cat(&[&s("t/1"), &[0, 9], &[props.len() as u8], &props, b"{}"]);
    let Packet::Publish(p) = round_any(&frame(0x32, &body), V5) else {
        panic!()
    };
    let pr = &p.properties;
    assert_eq!(pr.payload_format_indicator(), Some(true));
    assert_eq!(pr.message_expiry_interval(), Some(3600));
    assert_eq!(pr.content_type().as_ref().unwrap(), "application/json");
    assert_eq!(pr.response_topic().as_ref().unwrap(), "resp/1");
    assert_eq!(pr.correlation_data().as_deref(), Some(&[1u8, 2, 3][..]));
    // Repeated user properties keep their order, duplicates included ([MQTT-3.3.2-18]).
    let users: Vec<(String, String)> = pr
        .user_properties()
        .iter()
        .map(|u| (u.key.to_string(), u.value.to_string()))
        .collect();
    assert_eq!(
        users,
        [("k1", "v1"), ("k2", "v2"), ("k1", "again")].map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let ids: Vec<u32> = pr
        .subscription_identifiers()
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(ids, [128, 5]);
    // A response topic with a wildcard ([MQTT-3.3.2-14]).
    let body = cat(&[&s("t"), &[6, 0x08], &s("a/#")]);
    assert_eq!(
        err(&frame(0x30, &body), V5),
        DecodeError::String(StringError::WildcardInTopicName)
    );
    // Subscription identifier 0.
    assert_eq!(
        err(&frame(0x30, &cat(&[&s("t"), &[2, 0x0B, 0]])), V5),
        DecodeError::InvalidPropertyValue(0x0B)
    );
    // A CONNECT-only property in PUBLISH.
    assert!(matches!(
        err(&frame(0x30, &cat(&[&s("t"), &[5, 0x11, 0, 0, 0, 1]])), V5),
        DecodeError::PropertyNotAllowed { property: 0x11, .. }
    ));
    // Payload format indicator 2.
    assert_eq!(
        err(&frame(0x30, &cat(&[&s("t"), &[2, 0x01, 2]])), V5),
        DecodeError::InvalidPropertyValue(0x01)
    );
    // Two content types.
    let body = cat(&[&s("t"), &[8, 0x03], &s("a"), &[0x03], &s("b")]);
    assert_eq!(
        err(&frame(0x30, &body), V5),
        DecodeError::DuplicateProperty(0x03)
    );
}

#[test]
fn publish_user_property_limit() {
    let limits = Limits {
        max_user_properties: 2,
        ..Limits::default()
    };
    let one = cat(&[&[0x26], &s("k"), &s("v")]);
    let props = one.repeat(3);
    let body = cat(&[&s("t"), &[props.len() as u8], &props]);
    let mut buf = BytesMut::from(&frame(0x30, &body)[..]);
    let e = Packet::decode(&mut buf, Some(V5), &limits).unwrap_err();
    assert_eq!(e, DecodeError::TooManyUserProperties { max: 2 });
    assert_eq!(e.reason_code(), ReasonCode::QUOTA_EXCEEDED);
}

#[test]
fn publish_payload_shares_the_frame() {
    let bytes = frame(0x30, &cat(&[&s("a/b"), &[9u8; 1000]]));
    let Packet::Publish(p) = dec(&bytes, V311).unwrap() else {
        panic!()
    };
    let topic = p.topic.as_bytes().as_ptr() as usize;
    let payload = p.payload.as_ptr() as usize;
    // Topic and payload lie in one allocation, where the frame was.
    assert_eq!(payload - topic, 3);
    let clone = p.clone();
    assert_eq!(clone.payload.as_ptr(), p.payload.as_ptr());
}

// ---------------------------------------------------------------- PUBACK, PUBREC, PUBREL, PUBCOMP

/// Checks 5.0: [MQTT-2.2.1-5]; 3.1.1: [MQTT-2.3.1-6].
#[test]
fn pub_acks_every_version() {
    for (first, ty) in [
        (0x40, PacketType::PubAck),
        (0x50, PacketType::PubRec),
        (0x62, PacketType::PubRel),
        (0x70, PacketType::PubComp),
    ] {
        for v in [V31, V311, V5] {
            let p = round(&[first, 0x02, 0x12, 0x34], v);
            assert_eq!(p.packet_type(), ty);
            let (Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) =
                p
            else {
                panic!()
            };
            assert_eq!(a.packet_id, pid(0x1234));
            assert_eq!(a.reason_code, ReasonCode::SUCCESS);
        }
        assert_eq!(err(&[first, 0x02, 0, 0], V311), DecodeError::ZeroPacketId);
    }
}

/// Checks [MQTT-3.4.2-1], [MQTT-3.5.2-1], [MQTT-3.6.2-1], [MQTT-3.7.2-1].
#[test]
fn pub_acks_v5_reason_codes_and_properties() {
    // 3.4.2.1: the reason code alone.
    let Packet::PubAck(a) = round(&[0x40, 0x03, 0x00, 0x01, 0x10], V5) else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    // Reason code 0x00 followed by an empty property block decodes; it re-encodes short.
    let Packet::PubAck(a) = dec(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], V5).unwrap() else {
        panic!()
    };
    assert_eq!(a, PubAck::new(pid(1)));
    let with = frame(0x50, &cat(&[&[0, 1, 0x97, 8, 0x1F], &s("quota")]));
    let Packet::PubRec(a) = round(&with, V5) else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(a.properties.reason_string().as_ref().unwrap(), "quota");
    let Packet::PubRel(a) = round(&[0x62, 0x03, 0, 1, 0x92], V5) else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    // PUBREL may not carry PUBACK's codes ([MQTT-3.6.2-1]), nor PUBACK PUBREL's.
    assert!(matches!(
        err(&[0x62, 0x03, 0, 1, 0x10], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    assert!(matches!(
        err(&[0x40, 0x03, 0, 1, 0x92], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    assert!(matches!(
        err(&[0x70, 0x03, 0, 1, 0x80], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    // A PUBLISH property on an acknowledgement.
    assert!(matches!(
        err(&[0x40, 0x07, 0, 1, 0, 3, 0x23, 0, 1], V5),
        DecodeError::PropertyNotAllowed { property: 0x23, .. }
    ));
}

// ---------------------------------------------------------------- SUBSCRIBE / SUBACK

#[test]
fn subscribe_v311_spec_example() {
    // 3.8.3's example: "a/b" QoS 1 and "c/d" QoS 2, packet identifier 10.
    let body = cat(&[&[0, 10], &s("a/b"), &[1], &s("c/d"), &[2]]);
    let Packet::Subscribe(sub) = round(&frame(0x82, &body), V311) else {
        panic!()
    };
    assert_eq!(sub.packet_id, pid(10));
    assert_eq!(sub.subscriptions.len(), 2);
    assert_eq!(sub.subscriptions[0].filter, "a/b");
    assert_eq!(
        sub.subscriptions[0].options,
        SubscriptionOptions::qos(QoS::AtLeastOnce)
    );
    assert_eq!(sub.subscriptions[1].options.qos, QoS::ExactlyOnce);
    round(&frame(0x82, &body), V31);
}

/// Checks 3.1.1: [MQTT-3-8.3-4] (printed so in the standard).
/// Checks [MQTT-3.8.3-4].
#[test]
fn subscribe_reserved_option_bits_v311_mqtt_3_8_3_4() {
    for b in [0x04u8, 0x80, 0x03] {
        let body = cat(&[&[0, 1], &s("a"), &[b]]);
        assert_eq!(
            err(&frame(0x82, &body), V311),
            DecodeError::InvalidSubscriptionOptions(b)
        );
    }
}

#[test]
fn subscribe_v5_options_and_identifier() {
    let body = cat(&[
        &[0, 2, 2, 0x0B, 0x2A],
        &s("a/+"),
        &[0b0010_1110], // retain handling 2, RAP, no local, QoS 2
        &s("$share/g/b/#"),
        &[0b0001_0001], // retain handling 1, QoS 1
    ]);
    let Packet::Subscribe(sub) = round(&frame(0x82, &body), V5) else {
        panic!()
    };
    assert_eq!(
        sub.properties
            .subscription_identifiers()
            .first()
            .map(|i| i.get()),
        Some(42)
    );
    let o = sub.subscriptions[0].options;
    assert_eq!(
        o,
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend
        }
    );
    assert_eq!(
        sub.subscriptions[1].options.retain_handling,
        RetainHandling::SendIfNew
    );
    assert_eq!(sub.subscriptions[1].filter.shared(), Some(("g", "b/#")));
    // Encoding for 3.1.1 keeps only the QoS bits.
    let v3 = Packet::Subscribe(sub).to_bytes(V311).unwrap();
    assert_eq!(
        &v3[..],
        &frame(
            0x82,
            &cat(&[&[0, 2], &s("a/+"), &[2], &s("$share/g/b/#"), &[1]])
        )[..]
    );
}

/// Checks [MQTT-3.8.3-4], [MQTT-3.8.3-5].
#[test]
fn subscribe_v5_errors() {
    // [MQTT-3.8.3-5]: reserved bits 6-7.
    let e = err(&frame(0x82, &cat(&[&[0, 1, 0], &s("a"), &[0x40]])), V5);
    assert_eq!(e, DecodeError::InvalidSubscriptionOptions(0x40));
    assert_eq!(e.spec(), Some("MQTT-3.8.3-5"));
    // Retain handling 3 is a protocol error.
    let e = err(&frame(0x82, &cat(&[&[0, 1, 0], &s("a"), &[0x30]])), V5);
    assert_eq!(e, DecodeError::InvalidRetainHandling);
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // [MQTT-3.8.3-4]: No Local on a shared subscription.
    let e = err(
        &frame(0x82, &cat(&[&[0, 1, 0], &s("$share/g/a"), &[0x04]])),
        V5,
    );
    assert_eq!(e, DecodeError::NoLocalOnSharedSubscription);
    assert_eq!(e.spec(), Some("MQTT-3.8.3-4"));
    // QoS 3 in the options.
    assert_eq!(
        err(&frame(0x82, &cat(&[&[0, 1, 0], &s("a"), &[0x03]])), V5),
        DecodeError::InvalidSubscriptionOptions(3)
    );
    // Two subscription identifiers in SUBSCRIBE.
    assert_eq!(
        err(
            &frame(0x82, &cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s("a"), &[0]])),
            V5
        ),
        DecodeError::DuplicateProperty(0x0B)
    );
}

/// Checks 5.0: [MQTT-3.8.3-2]; 3.1.1: [MQTT-3.8.3-3].
#[test]
fn subscribe_without_filters_mqtt_3_8_3_2() {
    let e = err(&[0x82, 0x02, 0x00, 0x01], V311);
    assert_eq!(e, DecodeError::NoTopicFilters(PacketType::Subscribe));
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(e.spec(), Some("MQTT-3.8.3-2"));
    assert_eq!(
        err(&[0x82, 0x03, 0x00, 0x01, 0x00], V5),
        DecodeError::NoTopicFilters(PacketType::Subscribe)
    );
}

/// Checks 5.0: [MQTT-4.7.1-1], [MQTT-4.7.1-2]; 3.1.1: [MQTT-4.7.1-2], [MQTT-4.7.1-3].
#[test]
fn subscribe_malformed_filters_mqtt_4_7_1() {
    for (f, e) in [
        ("a/#/b", StringError::InvalidMultiLevelWildcard),
        ("a#", StringError::InvalidMultiLevelWildcard),
        ("a+", StringError::InvalidSingleLevelWildcard),
        ("a/+b/c", StringError::InvalidSingleLevelWildcard),
        ("", StringError::EmptyTopic),
        ("$share/g", StringError::InvalidSharedSubscription),
        ("$share/+/a", StringError::InvalidSharedSubscription),
    ] {
        let got = err(&frame(0x82, &cat(&[&[0, 1], &s(f), &[0]])), V311);
        assert_eq!(got, DecodeError::String(e), "{f}");
        if e != StringError::EmptyTopic {
            assert_eq!(got.reason_code(), ReasonCode::TOPIC_FILTER_INVALID);
        }
    }
}

#[test]
fn subscribe_packet_id_zero_and_filter_limit() {
    assert_eq!(
        err(&frame(0x82, &cat(&[&[0, 0], &s("a"), &[0]])), V311),
        DecodeError::ZeroPacketId
    );
    let limits = Limits {
        max_topic_filters: 3,
        ..Limits::default()
    };
    let one = cat(&[&s("a"), &[0]]);
    let body = cat(&[&[0, 1], &one.repeat(4)]);
    let mut buf = BytesMut::from(&frame(0x82, &body)[..]);
    assert_eq!(
        Packet::decode(&mut buf, Some(V311), &limits).unwrap_err(),
        DecodeError::TooManyTopicFilters { max: 3 }
    );
}

/// Checks 3.1.1: [MQTT-3.9.3-2], [MQTT-2.3.1-7]; 5.0: [MQTT-2.2.1-6].
#[test]
fn suback_every_version() {
    // 3.9.3's example: granted QoS 0, 2 and a failure.
    let Packet::SubAck(a) = round(&[0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80], V311) else {
        panic!()
    };
    assert_eq!(
        a.reason_codes,
        [ReasonCode(0), ReasonCode(2), ReasonCode(0x80)]
    );
    round(&[0x90, 0x03, 0x00, 0x0A, 0x01], V31);
    assert!(matches!(
        err(&[0x90, 0x03, 0, 1, 0x87], V311),
        DecodeError::InvalidReasonCode { .. }
    ));
    let body = cat(&[&[0, 10, 6, 0x1F], &s("bad"), &[0x01, 0x87, 0xA2]]);
    let Packet::SubAck(a) = round(&frame(0x90, &body), V5) else {
        panic!()
    };
    assert_eq!(
        a.reason_codes,
        [
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
        ]
    );
    assert!(matches!(
        err(&[0x90, 0x04, 0, 1, 0, 0x11], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    // A 5.0 failure code encodes as 0x80 for 3.1.1.
    assert_eq!(
        &Packet::SubAck(a).to_bytes(V311).unwrap()[..],
        &[0x90, 0x05, 0, 10, 0x01, 0x80, 0x80]
    );
}

// ---------------------------------------------------------------- UNSUBSCRIBE / UNSUBACK

/// Checks [MQTT-3.10.3-2].
#[test]
fn unsubscribe_every_version() {
    // 3.10.3's example: "a/b" and "c/d".
    let body = cat(&[&[0, 1], &s("a/b"), &s("c/d")]);
    for v in [V31, V311] {
        let Packet::Unsubscribe(u) = round(&frame(0xA2, &body), v) else {
            panic!()
        };
        assert_eq!(u.filters.len(), 2);
    }
    let body5 = cat(&[&[0, 1, 0], &s("a/b"), &s("$share/g/c")]);
    let Packet::Unsubscribe(u) = round(&frame(0xA2, &body5), V5) else {
        panic!()
    };
    assert_eq!(u.filters[1].shared(), Some(("g", "c")));
    // [MQTT-3.10.3-2]: at least one filter.
    let e = err(&[0xA2, 0x02, 0, 1], V311);
    assert_eq!(e, DecodeError::NoTopicFilters(PacketType::Unsubscribe));
    assert_eq!(e.spec(), Some("MQTT-3.10.3-2"));
    assert!(matches!(
        err(&frame(0xA2, &cat(&[&[0, 1], &s("a/#/c")])), V311),
        DecodeError::String(_)
    ));
    assert_eq!(
        err(&frame(0xA2, &cat(&[&[0, 0], &s("a")])), V311),
        DecodeError::ZeroPacketId
    );
}

/// Checks [MQTT-3.11.3-2].
#[test]
fn unsuback_every_version() {
    round(&[0xB0, 0x02, 0x00, 0x07], V311);
    round(&[0xB0, 0x02, 0x00, 0x07], V31);
    let Packet::UnsubAck(a) = round(&[0xB0, 0x05, 0x00, 0x07, 0x00, 0x00, 0x11], V5) else {
        panic!()
    };
    assert_eq!(
        a.reason_codes,
        [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    assert!(matches!(
        err(&[0xB0, 0x04, 0, 7, 0, 0x02], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
}

// ---------------------------------------------------------------- PINGREQ, PINGRESP, DISCONNECT, AUTH

#[test]
fn ping_every_version() {
    for v in [V31, V311, V5] {
        assert_eq!(round(&[0xC0, 0x00], v), Packet::PingReq);
        assert_eq!(round(&[0xD0, 0x00], v), Packet::PingResp);
    }
}

/// Checks 5.0: [MQTT-3.14.1-1], [MQTT-3.14.2-1].
#[test]
fn disconnect_every_version() {
    assert_eq!(
        round(&[0xE0, 0x00], V311),
        Packet::Disconnect(Disconnect::default())
    );
    round(&[0xE0, 0x00], V31);
    // 5.0: no body means normal disconnection (3.14.2.1).
    assert_eq!(
        round(&[0xE0, 0x00], V5),
        Packet::Disconnect(Disconnect::default())
    );
    let Packet::Disconnect(d) = round(&[0xE0, 0x01, 0x04], V5) else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
    let body = cat(&[&[0x8E, 19, 0x11, 0, 0, 0, 0, 0x1C], &s("elsewhere:1")]);
    let Packet::Disconnect(d) = round(&frame(0xE0, &body), V5) else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    assert_eq!(d.properties.session_expiry_interval(), Some(0));
    assert_eq!(d.properties.server_reference().unwrap(), "elsewhere:1");
    // [MQTT-3.14.2-1]: only DISCONNECT reason codes.
    assert!(matches!(
        err(&[0xE0, 0x01, 0x10], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    // [MQTT-3.14.1-1 (5.0)]: reserved flags.
    assert!(matches!(
        err(&[0xE1, 0x00], V5),
        DecodeError::InvalidHeaderFlags { .. }
    ));
}

/// Checks [MQTT-3.15.1-1], [MQTT-3.15.2-1].
#[test]
fn auth_v5() {
    assert_eq!(round(&[0xF0, 0x00], V5), Packet::Auth(Auth::default()));
    let body = cat(&[&[0x18, 14, 0x15], &s("SCRAM"), &[0x16, 0, 3, 1, 2, 3]]);
    let Packet::Auth(a) = round(&frame(0xF0, &body), V5) else {
        panic!()
    };
    assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(a.properties.authentication_method().unwrap(), "SCRAM");
    // [MQTT-3.15.2-1]: only AUTH reason codes.
    assert!(matches!(
        err(&[0xF0, 0x01, 0x87], V5),
        DecodeError::InvalidReasonCode { .. }
    ));
    // [MQTT-3.15.1-1]: flags are 0.
    assert!(matches!(
        err(&[0xF1, 0x00], V5),
        DecodeError::InvalidHeaderFlags { .. }
    ));
    // AUTH can't be sent before 5.0.
    assert!(matches!(
        Packet::Auth(Auth::default()).to_bytes(V311),
        Err(EncodeError::NotInProtocol { .. })
    ));
}

// ---------------------------------------------------------------- encoding rules

#[test]
fn encoding_refuses_properties_the_packet_may_not_carry() {
    let mut p = Publish::new(TopicName::from_static("a"), Bytes::new());
    p.properties.set_session_expiry_interval(Some(1));
    assert!(matches!(
        Packet::Publish(p.clone()).to_bytes(V5),
        Err(EncodeError::PropertyNotAllowed { property: 0x11, .. })
    ));
    // For 3.1.1 properties are simply left out.
    assert_eq!(
        &Packet::Publish(p).to_bytes(V311).unwrap()[..],
        &[0x30, 0x03, 0, 1, b'a']
    );
}

#[test]
fn encoding_checks_binary_lengths_and_reports_exact_size() {
    let mut c = Connect::new(V311, mstr("c"));
    c.username = Some(mstr("u"));
    c.password = Some(Bytes::from(vec![0u8; 70_000]));
    assert_eq!(
        Packet::Connect(Box::new(c)).encoded_len(V311),
        Err(EncodeError::FieldTooLong)
    );

    // A large payload: the size is known up front and the buffer grows once.
    let p = Packet::Publish(Publish::new(
        TopicName::from_static("big"),
        Bytes::from(vec![1u8; 200_000]),
    ));
    let n = p.encoded_len(V311).unwrap();
    assert_eq!(n, 1 + 3 + 5 + 200_000);
    let mut buf = BytesMut::new();
    assert_eq!(p.encode(V311, &mut buf).unwrap(), n);
    assert_eq!(buf.len(), n);
    assert_eq!(buf.capacity(), n, "one exact reservation");
}

/// Checks [MQTT-3.1.2-22].
#[test]
fn v3_password_without_user_name_is_refused_on_encode_mqtt_3_1_2_22() {
    let mut c = Connect::new(V311, mstr("c"));
    c.password = Some(Bytes::from_static(b"pw"));
    assert_eq!(
        Packet::Connect(Box::new(c.clone())).to_bytes(V311),
        Err(EncodeError::PasswordWithoutUsername)
    );
    // 5.0 allows it.
    c.protocol = V5;
    assert!(Packet::Connect(Box::new(c)).to_bytes(V5).is_ok());
}

/// Checks [MQTT-1.5.5-1].
#[test]
fn variable_byte_integers_in_shortest_form_mqtt_1_5_5_1() {
    // A remaining length of 0 written in two bytes.
    let e = err(&[0x30, 0x80, 0x00], V311);
    assert_eq!(e, DecodeError::NonMinimalVarint);
    assert_eq!(e.spec(), Some("MQTT-1.5.5-1"));
    // A padded property length, and a padded Subscription Identifier.
    assert_eq!(
        err(&frame(0x30, &cat(&[&s("t"), &[0x80, 0x00]])), V5),
        DecodeError::NonMinimalVarint
    );
    assert_eq!(
        err(&frame(0x30, &cat(&[&s("t"), &[3, 0x0B, 0x81, 0x00]])), V5),
        DecodeError::NonMinimalVarint
    );
    // Property identifiers are single bytes (2.2.2.2).
    assert_eq!(
        err(&frame(0x30, &cat(&[&s("t"), &[3, 0x81, 0x00, 0x01]])), V5),
        DecodeError::UnknownProperty(0x81)
    );
}

#[test]
fn authentication_data_needs_a_method() {
    let body = cat(&[
        &s("MQTT"),
        &[0x05, 0x02, 0, 0, 5, 0x16, 0, 2, 1, 2],
        &s("c"),
    ]);
    let e = err(&frame(0x10, &body), V5);
    assert_eq!(e, DecodeError::AuthenticationDataWithoutMethod);
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    // 3.15.2.2.2: a non-empty AUTH carries the method.
    assert_eq!(
        err(&[0xF0, 0x02, 0x18, 0x00], V5),
        DecodeError::MissingAuthenticationMethod
    );
    let auth = Packet::Auth(Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties::new(),
    });
    assert_eq!(
        auth.to_bytes(V5),
        Err(EncodeError::InvalidPropertyValue(0x15))
    );
    let mut p = Properties::new();
    p.set_authentication_data(Some(Bytes::from_static(b"x")));
    let mut c = Connect::new(V5, mstr("c"));
    c.properties = p;
    assert_eq!(
        Packet::Connect(Box::new(c)).to_bytes(V5),
        Err(EncodeError::InvalidPropertyValue(0x16))
    );
}

/// Checks 5.0: [MQTT-3.2.2-6]; 3.1.1: [MQTT-3.2.2-4].
#[test]
fn refused_connack_has_no_session_mqtt_3_2_2_6() {
    assert_eq!(
        err(&[0x20, 0x02, 0x01, 0x05], V311),
        DecodeError::InvalidConnAckFlags
    );
    assert_eq!(
        err(&[0x20, 0x03, 0x01, 0x87, 0x00], V5),
        DecodeError::InvalidConnAckFlags
    );
    let refused = Packet::ConnAck(ConnAck::new(ReasonCode::NOT_AUTHORIZED, true));
    assert_eq!(
        &refused.to_bytes(V311).unwrap()[..],
        &[0x20, 0x02, 0x00, 0x05]
    );
    assert_eq!(
        &refused.to_bytes(V5).unwrap()[..],
        &[0x20, 0x03, 0x00, 0x87, 0x00]
    );
}

/// Checks [MQTT-3.3.1-2], [MQTT-4.3.1-1].
#[test]
fn qos0_is_never_sent_with_dup_mqtt_3_3_1_2() {
    let mut p = Publish::new(TopicName::from_static("a"), Bytes::new());
    p.dup = true;
    assert_eq!(
        &Packet::Publish(p).to_bytes(V311).unwrap()[..],
        &[0x30, 0x03, 0, 1, b'a']
    );
}

/// Checks [MQTT-3.2.2-8], [MQTT-3.4.2-1], [MQTT-3.6.2-1], [MQTT-3.9.3-2], [MQTT-3.14.2-1].
#[test]
fn reason_codes_come_from_the_packet_table_on_encode() {
    let id = pid(1);
    let bad = [
        Packet::PubAck(PubAck::with_reason(
            id,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        )),
        Packet::PubRel(PubAck::with_reason(id, ReasonCode::NO_MATCHING_SUBSCRIBERS)),
        Packet::ConnAck(ConnAck::new(ReasonCode::GRANTED_QOS_1, false)),
        Packet::Disconnect(Disconnect::new(ReasonCode::CONTINUE_AUTHENTICATION)),
        Packet::SubAck(SubAck {
            packet_id: id,
            properties: Properties::new(),
            reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        }),
    ];
    for p in bad {
        assert!(
            matches!(p.to_bytes(V5), Err(EncodeError::InvalidReasonCode { .. })),
            "{p:?}"
        );
    }
    // 3.1.1 SUBACK: anything but a granted QoS goes out as 0x80.
    let s = Packet::SubAck(SubAck {
        packet_id: id,
        properties: Properties::new(),
        reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::QUOTA_EXCEEDED],
    });
    assert_eq!(&s.to_bytes(V311).unwrap()[..], &[0x90, 0x04, 0, 1, 2, 0x80]);
}

/// Checks [MQTT-3.8.3-4].
#[test]
fn subscribe_rules_hold_on_encode() {
    let mut props = Properties::new();
    props.push_subscription_identifier(SubscriptionId::new(1).unwrap());
    props.push_subscription_identifier(SubscriptionId::new(2).unwrap());
    let sub = |filter: &str, options| Subscription {
        filter: TopicFilter::try_from(filter).unwrap(),
        options,
    };
    let two_ids = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: props,
        subscriptions: vec![sub("a", SubscriptionOptions::default())],
    });
    assert_eq!(
        two_ids.to_bytes(V5),
        Err(EncodeError::InvalidPropertyValue(0x0B))
    );
    let no_local = SubscriptionOptions {
        no_local: true,
        ..SubscriptionOptions::default()
    };
    let shared = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::new(),
        subscriptions: vec![sub("$share/g/a", no_local)],
    });
    assert_eq!(
        shared.to_bytes(V5),
        Err(EncodeError::NoLocalOnSharedSubscription)
    );
}

/// Checks [MQTT-4.7.3-1].
#[test]
fn response_topic_is_a_topic_name() {
    let e = err(&frame(0x30, &cat(&[&s("t"), &[3, 0x08, 0, 0]])), V5);
    assert_eq!(e, DecodeError::String(StringError::EmptyTopic));
    let mut p = Publish::new(TopicName::from_static("t"), Bytes::new());
    p.properties
        .set_response_topic(Some(TopicName::alias_only()));
    assert_eq!(
        Packet::Publish(p.clone()).to_bytes(V5),
        Err(EncodeError::InvalidPropertyValue(0x08))
    );
    // Replacing the unsendable value makes the properties sendable again.
    p.properties
        .set_response_topic(Some(TopicName::from_static("r")));
    assert!(Packet::Publish(p).to_bytes(V5).is_ok());
}

#[test]
fn mqtt_3_1_resends_carry_dup() {
    // 3.1 sets DUP on a resent PUBREL, SUBSCRIBE or UNSUBSCRIBE.
    let Packet::PubRel(a) = dec(&[0x6A, 0x02, 0x00, 0x01], V31).unwrap() else {
        panic!()
    };
    assert_eq!(a.packet_id, pid(1));
    assert!(matches!(
        dec(&frame(0x8A, &cat(&[&[0, 1], &s("a"), &[0]])), V31),
        Ok(Packet::Subscribe(_))
    ));
    // Not in 3.1.1.
    assert!(matches!(
        err(&[0x6A, 0x02, 0x00, 0x01], V311),
        DecodeError::InvalidHeaderFlags { .. }
    ));
}

#[test]
fn acknowledgements_answer_at_least_one_filter() {
    assert_eq!(
        err(&[0x90, 0x02, 0, 1], V311),
        DecodeError::NoTopicFilters(PacketType::SubAck)
    );
    assert_eq!(
        err(&[0xB0, 0x03, 0, 1, 0], V5),
        DecodeError::NoTopicFilters(PacketType::UnsubAck)
    );
}

/// Packets are moved on every decode and every hand-off between tasks; the
/// wire-form properties keep them small. A regression here shows up as a
/// slower decoder, so it is pinned.
#[test]
fn packets_are_cheap_to_move() {
    assert!(
        std::mem::size_of::<Properties>() <= 48,
        "{}",
        std::mem::size_of::<Properties>()
    );
    assert!(
        std::mem::size_of::<Packet>() <= 128,
        "{}",
        std::mem::size_of::<Packet>()
    );
}

/// Checks [MQTT-2.2.2-1]: no properties still means a Property Length of 0.
#[test]
fn empty_property_block_has_a_zero_length() {
    let p = Packet::Publish(Publish::new(
        TopicName::from_static("a"),
        Bytes::from_static(b"x"),
    ));
    assert_eq!(
        &p.to_bytes(V5).unwrap()[..],
        &[0x30, 0x05, 0, 1, b'a', 0x00, b'x']
    );
    let s = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::new(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::from_static("a"),
            options: SubscriptionOptions::default(),
        }],
    });
    assert_eq!(
        &s.to_bytes(V5).unwrap()[..],
        &[0x82, 0x07, 0, 1, 0x00, 0, 1, b'a', 0x00]
    );
}
