//! Normative statements the codec enforces, one focused test each, per
//! protocol version where the statement numbers differ between 3.1.1 and 5.0.
//!
//! Every refusal is checked next to a positive control: the same bytes with
//! the one field under test corrected decode, so the error comes from that
//! field. Encoder checks compare the exact bytes written.

use bytes::{Bytes, BytesMut};
use petrel_codec::packet::PacketType;
use petrel_codec::*;

mod wire;
use wire::{cat, frame, raw, s};

const V311: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

// ---------------------------------------------------------------- helpers

/// A CONNECT frame: protocol name "MQTT", `level`, connect `flags`, keep
/// alive 60, an empty CONNECT property block when `level` is 5, then the
/// payload fields as given.
fn connect(level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = cat(&[&s("MQTT"), &[level, flags, 0, 60]]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(&payload.concat());
    frame(0x10, &body)
}

fn dec(bytes: &[u8], p: Protocol) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = Packet::decode(&mut buf, Some(p), &Limits::default())?.expect("a whole packet");
    assert!(buf.is_empty(), "decode must consume exactly one packet");
    Ok(packet)
}

fn ok(bytes: &[u8], p: Protocol) -> Packet {
    dec(bytes, p).unwrap_or_else(|e| panic!("{e} decoding {bytes:02X?}"))
}

fn err(bytes: &[u8], p: Protocol) -> DecodeError {
    dec(bytes, p).expect_err("must be refused")
}

fn decoded_connect(bytes: &[u8], p: Protocol) -> Connect {
    match ok(bytes, p) {
        Packet::Connect(c) => *c,
        other => panic!("not a CONNECT: {other:?}"),
    }
}

fn decoded_publish(bytes: &[u8], p: Protocol) -> Publish {
    match ok(bytes, p) {
        Packet::Publish(x) => x,
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

fn mstr(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// Ill-formed UTF-8 ("a" then a lead byte followed by a non-continuation
/// byte) and a well-formed string of the same length ("aé").
const BAD_UTF8: &[u8] = &[b'a', 0xC3, 0x28];
const GOOD_UTF8: &[u8] = &[b'a', 0xC3, 0xA9];

/// An encoded UTF-16 surrogate (U+D800): ill-formed in UTF-8.
const SURROGATE: &[u8] = &[0xED, 0xA0, 0x80];
const GOOD_3_BYTES: &[u8] = &[0xE2, 0x82, 0xAC]; // U+20AC

/// Decode `make(bad)` and `make(good)`: the first is refused as ill-formed
/// UTF-8, the second decodes.
fn utf8_refused_where_valid_decodes(p: Protocol, make: impl Fn(&[u8]) -> Vec<u8>) -> Vec<Packet> {
    let mut good = Vec::new();
    for (bad, fine) in [(BAD_UTF8, GOOD_UTF8), (SURROGATE, GOOD_3_BYTES)] {
        let e = err(&make(bad), p);
        assert_eq!(e, DecodeError::String(StringError::InvalidUtf8));
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        good.push(ok(&make(fine), p));
    }
    good
}

/// Every flag nibble but `fixed` on a packet of type `ty` is refused as
/// malformed, and `fixed` decodes `body` fine.
fn only_fixed_flags_decode(p: Protocol, ty: PacketType, fixed: u8, body: &[u8]) -> Packet {
    let control = ok(&frame((ty as u8) << 4 | fixed, body), p);
    for flags in (0u8..16).filter(|&f| f != fixed) {
        let e = err(&frame((ty as u8) << 4 | flags, body), p);
        assert_eq!(e, DecodeError::InvalidHeaderFlags { packet: ty, flags });
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    control
}

// ---------------------------------------------------------------- 3.1.1: fixed headers

/// Checks 3.1.1: [MQTT-3.6.1-1]. PUBREL is written with flags 0010, and
/// every other flag value is refused as malformed while 0010 decodes.
#[test]
fn pubrel_fixed_header_flags_are_0010_v311() {
    let packet = Packet::PubRel(PubAck::new(pid(7)));
    assert_eq!(
        &packet.to_bytes(Protocol::V3_1_1).unwrap()[..],
        &[0x62, 0x02, 0x00, 0x07]
    );
    let control = only_fixed_flags_decode(V311, PacketType::PubRel, 0b0010, &[0x00, 0x07]);
    assert_eq!(control, packet);
}

/// Checks 3.1.1: [MQTT-3.10.1-1]. UNSUBSCRIBE is written with flags 0010,
/// and every other flag value is refused as malformed while 0010 decodes.
#[test]
fn unsubscribe_fixed_header_flags_are_0010_v311() {
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        filters: vec![TopicFilter::from_static("a/+")],
    });
    let body = cat(&[&[0x00, 0x01], &s("a/+")]);
    assert_eq!(
        &packet.to_bytes(Protocol::V3_1_1).unwrap()[..],
        &frame(0xA2, &body)[..]
    );
    let control = only_fixed_flags_decode(V311, PacketType::Unsubscribe, 0b0010, &body);
    assert_eq!(control, packet);
}

/// Checks 3.1.1: [MQTT-3.14.1-1]. DISCONNECT is written with its reserved
/// bits 0; any set reserved bit makes the decoder refuse it as malformed
/// (the error a server closes the connection on), while 0000 decodes.
#[test]
fn disconnect_reserved_bits_are_0_v311() {
    let packet = Packet::Disconnect(Disconnect::default());
    assert_eq!(
        &packet.to_bytes(Protocol::V3_1_1).unwrap()[..],
        &[0xE0, 0x00]
    );
    let control = only_fixed_flags_decode(V311, PacketType::Disconnect, 0, &[]);
    assert_eq!(control, packet);
}

// ---------------------------------------------------------------- 3.1.1: CONNECT flags and payload

/// Checks 3.1.1: [MQTT-3.1.2-9]. With the Will Flag set, Will QoS and Will
/// Retain are taken from the flags and the Will Topic and Will Message must
/// follow the ClientId: the decoder reads them (and refuses the packet when
/// they are missing), and the encoder writes flags, topic and message.
#[test]
fn will_flag_1_carries_qos_retain_topic_and_message_v311() {
    // 0x2E: will retain, will QoS 1, will flag, clean session.
    let full = connect(4, 0x2E, &[&s("cid"), &s("w/t"), &s("bye")]);
    let c = decoded_connect(&full, Protocol::V3_1_1);
    let w = c.will.expect("a will");
    assert_eq!(w.topic, "w/t");
    assert_eq!(&w.payload[..], b"bye");
    assert_eq!((w.qos, w.retain), (QoS::AtLeastOnce, true));
    // The same flags with the Will Message, or both will fields, left out.
    assert_eq!(
        err(&connect(4, 0x2E, &[&s("cid"), &s("w/t")]), V311),
        DecodeError::Truncated
    );
    assert_eq!(
        err(&connect(4, 0x2E, &[&s("cid")]), V311),
        DecodeError::Truncated
    );

    // Encoding: the flags say Will, QoS 2, no retain; topic and message follow the id.
    let mut c = Connect::new(Protocol::V3_1_1, mstr("cid"));
    c.will = Some(Will {
        topic: TopicName::from_static("w/t"),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::default(),
    });
    let expected = connect(4, 0x16, &[&s("cid"), &s("w/t"), &s("bye")]);
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V311).unwrap()[..],
        &expected[..]
    );
}

/// Checks 3.1.1: [MQTT-3.1.2-11]. Without the Will Flag, Will QoS and Will
/// Retain must be 0 and no Will Topic or Will Message follows: the decoder
/// refuses set Will QoS / Will Retain bits and leftover will fields, and the
/// encoder of a CONNECT without a Will leaves bits 2-5 clear and writes no
/// will fields.
#[test]
fn will_flag_0_means_no_will_qos_retain_topic_or_message_v311() {
    // Control: clean session only.
    let control = decoded_connect(&connect(4, 0x02, &[&s("cid")]), Protocol::V3_1_1);
    assert_eq!(control.will, None);
    // Will QoS 1, Will QoS 2, Will Retain, each without the Will Flag.
    for flags in [0x0A, 0x12, 0x22] {
        let e = err(&connect(4, flags, &[&s("cid")]), V311);
        assert_eq!(e, DecodeError::InvalidWillFlags, "{flags:#04x}");
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    // Will Topic and Will Message present without the Will Flag: left over.
    let fields: [&[u8]; 3] = [&s("cid"), &s("w"), &s("m")];
    assert_eq!(
        err(&connect(4, 0x02, &fields), V311),
        DecodeError::TrailingBytes(6)
    );
    // The same bytes with the Will Flag corrected decode, with the will.
    let c = decoded_connect(&connect(4, 0x06, &fields), V311);
    assert_eq!(c.will.unwrap().topic, "w");

    // Encoding a CONNECT without a Will.
    let c = Connect::new(Protocol::V3_1_1, mstr("cid"));
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V311).unwrap()[..],
        &connect(4, 0x02, &[&s("cid")])[..]
    );
}

/// Checks 3.1.1: [MQTT-3.1.2-18]. User Name Flag 0: no user name in the
/// payload. The decoder reads none (one sent anyway is left over and
/// refused), and the encoder without a user name clears the flag and writes
/// none.
#[test]
fn user_name_flag_0_means_no_user_name_v311() {
    let c = decoded_connect(&connect(4, 0x02, &[&s("cid")]), Protocol::V3_1_1);
    assert_eq!(c.username, None);
    let with_name: [&[u8]; 2] = [&s("cid"), &s("user")];
    assert_eq!(
        err(&connect(4, 0x02, &with_name), V311),
        DecodeError::TrailingBytes(6)
    );
    // The same bytes with the User Name Flag corrected decode.
    let c = decoded_connect(&connect(4, 0x82, &with_name), V311);
    assert_eq!(c.username.unwrap(), "user");

    // Encoding: none written, flag clear; with one, flag set and name written.
    let mut c = Connect::new(Protocol::V3_1_1, mstr("cid"));
    assert_eq!(
        &Packet::Connect(Box::new(c.clone())).to_bytes(V311).unwrap()[..],
        &connect(4, 0x02, &[&s("cid")])[..]
    );
    c.username = Some(mstr("user"));
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V311).unwrap()[..],
        &connect(4, 0x82, &with_name)[..]
    );
}

/// Checks 3.1.1: [MQTT-3.1.2-20]. Password Flag 0: no password in the
/// payload. The decoder reads none (one sent anyway is left over and
/// refused), and the encoder without a password clears the flag and writes
/// none.
#[test]
fn password_flag_0_means_no_password_v311() {
    let c = decoded_connect(
        &connect(4, 0x82, &[&s("cid"), &s("user")]),
        Protocol::V3_1_1,
    );
    assert_eq!(c.password, None);
    let with_password: [&[u8]; 3] = [&s("cid"), &s("user"), &s("pw")];
    assert_eq!(
        err(&connect(4, 0x82, &with_password), V311),
        DecodeError::TrailingBytes(4)
    );
    // The same bytes with the Password Flag corrected decode.
    let c = decoded_connect(&connect(4, 0xC2, &with_password), V311);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));

    let mut c = Connect::new(Protocol::V3_1_1, mstr("cid"));
    c.username = Some(mstr("user"));
    assert_eq!(
        &Packet::Connect(Box::new(c.clone())).to_bytes(V311).unwrap()[..],
        &connect(4, 0x82, &[&s("cid"), &s("user")])[..]
    );
    c.password = Some(Bytes::from_static(b"pw"));
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V311).unwrap()[..],
        &connect(4, 0xC2, &with_password)[..]
    );
}

/// Checks 3.1.1: [MQTT-3.1.3-4]. The ClientId is a UTF-8 encoded string:
/// ill-formed UTF-8 there is refused, a well-formed id of the same length
/// decodes.
#[test]
fn client_id_is_utf8_v311() {
    let good =
        utf8_refused_where_valid_decodes(Protocol::V3_1_1, |id| connect(4, 0x02, &[&raw(id)]));
    let Packet::Connect(c) = &good[0] else {
        panic!()
    };
    assert_eq!(c.client_id, "aé");
}

/// Checks 3.1.1: [MQTT-3.1.3-10]. The Will Topic is a UTF-8 encoded string:
/// ill-formed UTF-8 there is refused, a well-formed topic of the same length
/// decodes.
#[test]
fn will_topic_is_utf8_v311() {
    let good = utf8_refused_where_valid_decodes(Protocol::V3_1_1, |topic| {
        connect(4, 0x06, &[&s("cid"), &raw(topic), &s("msg")])
    });
    let Packet::Connect(c) = &good[0] else {
        panic!()
    };
    assert_eq!(c.will.as_ref().unwrap().topic, "aé");
}

/// Checks 3.1.1: [MQTT-3.1.3-11]. The User Name is a UTF-8 encoded string:
/// ill-formed UTF-8 there is refused, a well-formed name of the same length
/// decodes.
#[test]
fn user_name_is_utf8_v311() {
    let good = utf8_refused_where_valid_decodes(Protocol::V3_1_1, |name| {
        connect(4, 0x82, &[&s("cid"), &raw(name)])
    });
    let Packet::Connect(c) = &good[0] else {
        panic!()
    };
    assert_eq!(c.username.as_ref().unwrap(), "aé");
}

// ---------------------------------------------------------------- 3.1.1: SUBSCRIBE / UNSUBSCRIBE filters

/// Checks 3.1.1: [MQTT-3.8.3-1]. SUBSCRIBE Topic Filters are UTF-8 encoded
/// strings: ill-formed UTF-8 in any filter is refused, a well-formed filter
/// of the same length decodes; the encoder can only be given valid strings.
#[test]
fn subscribe_filters_are_utf8_v311() {
    // In the first and in a later filter.
    for before in [&[][..], &cat(&[&s("x/y"), &[0x01]])[..]] {
        let good = utf8_refused_where_valid_decodes(Protocol::V3_1_1, |f| {
            frame(0x82, &cat(&[&[0x00, 0x01], before, &raw(f), &[0x00]]))
        });
        let Packet::Subscribe(sub) = &good[0] else {
            panic!()
        };
        assert_eq!(sub.subscriptions.last().unwrap().filter, "aé");
    }
    assert_eq!(
        MqttString::from_bytes(Bytes::from_static(BAD_UTF8)),
        Err(StringError::InvalidUtf8)
    );
}

/// Checks 3.1.1: [MQTT-3.10.3-1]. UNSUBSCRIBE Topic Filters are UTF-8
/// encoded strings: ill-formed UTF-8 in any filter is refused, a well-formed
/// filter of the same length decodes.
#[test]
fn unsubscribe_filters_are_utf8_v311() {
    for before in [&[][..], &s("x/y")[..]] {
        let good = utf8_refused_where_valid_decodes(Protocol::V3_1_1, |f| {
            frame(0xA2, &cat(&[&[0x00, 0x01], before, &raw(f)]))
        });
        let Packet::Unsubscribe(u) = &good[0] else {
            panic!()
        };
        assert_eq!(u.filters.last().unwrap(), "aé");
    }
}

// ---------------------------------------------------------------- 5.0: PUBLISH

/// Checks 5.0: [MQTT-3.3.1-4]. A PUBLISH with both QoS bits set (QoS 3) is
/// a Malformed Packet, whatever DUP and RETAIN say; the same packet with
/// QoS 1 or 2 decodes.
#[test]
fn publish_qos_3_is_malformed_v5() {
    let body = cat(&[&s("a"), &[0x00, 0x01], &[0x00], b"x"]);
    for first in [0x36, 0x37, 0x3E, 0x3F] {
        let e = err(&frame(first, &body), Protocol::V5);
        assert_eq!(e, DecodeError::InvalidQoS, "{first:#04x}");
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        // Control: one QoS bit cleared.
        let p = decoded_publish(&frame(first & !0x04, &body), V5);
        assert_eq!(p.qos, QosPid::AtLeastOnce(pid(1)));
        let p = decoded_publish(&frame(first & !0x02, &body), V5);
        assert_eq!(p.qos, QosPid::ExactlyOnce(pid(1)));
    }
}

/// Checks 5.0: [MQTT-3.3.2-1]. The Topic Name is the first field of the
/// PUBLISH variable header (before the packet identifier and properties)
/// and is a UTF-8 string: the decoder reads it first and refuses ill-formed
/// UTF-8 there; the encoder writes it first.
#[test]
fn publish_topic_name_is_first_and_utf8_v5() {
    let bytes = frame(0x32, &cat(&[&s("a/b"), &[0x00, 0x0A], &[0x00], b"hi"]));
    let p = decoded_publish(&bytes, Protocol::V5);
    assert_eq!(p.topic, "a/b");
    assert_eq!(p.qos, QosPid::AtLeastOnce(pid(10)));
    assert_eq!(&p.payload[..], b"hi");
    let mut publish = Publish::new(TopicName::from_static("a/b"), Bytes::from_static(b"hi"));
    publish.qos = QosPid::AtLeastOnce(pid(10));
    assert_eq!(
        &Packet::Publish(publish).to_bytes(V5).unwrap()[..],
        &bytes[..]
    );

    utf8_refused_where_valid_decodes(V5, |topic| {
        frame(0x32, &cat(&[&raw(topic), &[0x00, 0x0A], &[0x00], b"hi"]))
    });
}

/// Checks 5.0: [MQTT-3.3.1-2]. DUP is 0 on every QoS 0 message: the encoder
/// never sets it for QoS 0 (and keeps it for QoS 1), and the decoder
/// refuses a QoS 0 PUBLISH with DUP set while the same bytes without DUP
/// decode.
#[test]
fn dup_is_0_on_qos_0_v5() {
    let mut p = Publish::new(TopicName::from_static("a"), Bytes::from_static(b"x"));
    p.dup = true;
    assert_eq!(
        &Packet::Publish(p.clone()).to_bytes(Protocol::V5).unwrap()[..],
        &frame(0x30, &cat(&[&s("a"), &[0x00], b"x"]))[..]
    );
    p.qos = QosPid::AtLeastOnce(pid(3));
    assert_eq!(
        &Packet::Publish(p).to_bytes(V5).unwrap()[..],
        &frame(0x3A, &cat(&[&s("a"), &[0x00, 0x03], &[0x00], b"x"]))[..]
    );

    let body = cat(&[&s("a"), &[0x00], b"x"]);
    for (dup, clean) in [(0x38, 0x30), (0x39, 0x31)] {
        let e = err(&frame(dup, &body), V5);
        assert_eq!(e, DecodeError::DupOnQoS0);
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        let p = decoded_publish(&frame(clean, &body), V5);
        assert!(!p.dup);
        assert_eq!(p.qos, QosPid::AtMostOnce);
    }
}

// ---------------------------------------------------------------- 5.0: CONNACK

/// Checks 5.0: [MQTT-3.2.2-1]. CONNACK Acknowledge Flags bits 7-1 are 0:
/// the encoder writes only the Session Present bit, and the decoder refuses
/// any of bits 7-1 while the same packet with them clear decodes.
#[test]
fn connack_acknowledge_flags_bits_7_to_1_are_0_v5() {
    for present in [false, true] {
        let packet = Packet::ConnAck(ConnAck::new(ReasonCode::SUCCESS, present));
        assert_eq!(
            &packet.to_bytes(Protocol::V5).unwrap()[..],
            &[0x20, 0x03, present as u8, 0x00, 0x00]
        );
    }
    for bit in 1..8 {
        for present in [0u8, 1] {
            let e = err(&[0x20, 0x03, 1 << bit | present, 0x00, 0x00], V5);
            assert_eq!(e, DecodeError::InvalidConnAckFlags, "bit {bit}");
            assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
            let Packet::ConnAck(c) = ok(&[0x20, 0x03, present, 0x00, 0x00], V5) else {
                panic!()
            };
            assert_eq!(c.session_present, present == 1);
        }
    }
}

// ---------------------------------------------------------------- 5.0: CONNECT payload

/// Checks 5.0: [MQTT-3.1.3-3]. The ClientID is always present and is the
/// first payload field: a CONNECT without it is refused, the decoder takes
/// the first payload string as the ClientID ahead of the Will and User Name,
/// and the encoder writes it right after the CONNECT properties, even when
/// empty.
#[test]
fn client_id_is_present_and_first_v5() {
    assert_eq!(
        err(&connect(5, 0x02, &[]), Protocol::V5),
        DecodeError::Truncated
    );
    let c = decoded_connect(&connect(5, 0x02, &[&s("")]), V5);
    assert_eq!(c.client_id, "");

    // Will flag and User Name Flag: ClientID, Will Properties, Will Topic,
    // Will Payload, User Name.
    let fields: [&[u8]; 5] = [&s("cid"), &[0x00], &s("w/t"), &s("m"), &s("user")];
    let bytes = connect(5, 0x86, &fields);
    let c = decoded_connect(&bytes, V5);
    assert_eq!(c.client_id, "cid");
    assert_eq!(c.will.as_ref().unwrap().topic, "w/t");
    assert_eq!(c.username.as_ref().unwrap(), "user");
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V5).unwrap()[..],
        &bytes[..]
    );

    let c = Connect::new(V5, MqttString::new());
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V5).unwrap()[..],
        &connect(5, 0x02, &[&[0x00, 0x00]])[..]
    );
}

/// Checks 5.0: [MQTT-3.1.3-4]. The ClientID is a UTF-8 Encoded String:
/// ill-formed UTF-8 there is refused, a well-formed id of the same length
/// decodes.
#[test]
fn client_id_is_utf8_v5() {
    let good = utf8_refused_where_valid_decodes(Protocol::V5, |id| connect(5, 0x02, &[&raw(id)]));
    let Packet::Connect(c) = &good[0] else {
        panic!()
    };
    assert_eq!(c.client_id, "aé");
}

/// Checks 5.0: [MQTT-3.1.3-11]. The Will Topic is a UTF-8 Encoded String:
/// ill-formed UTF-8 there is refused, a well-formed topic of the same
/// length decodes.
#[test]
fn will_topic_is_utf8_v5() {
    let good = utf8_refused_where_valid_decodes(Protocol::V5, |topic| {
        connect(5, 0x06, &[&s("cid"), &[0x00], &raw(topic), &s("msg")])
    });
    let Packet::Connect(c) = &good[0] else {
        panic!()
    };
    assert_eq!(c.will.as_ref().unwrap().topic, "aé");
}

/// Checks 5.0: [MQTT-3.1.3-12]. The User Name is a UTF-8 Encoded String:
/// ill-formed UTF-8 there is refused, a well-formed name of the same length
/// decodes.
#[test]
fn user_name_is_utf8_v5() {
    let good = utf8_refused_where_valid_decodes(Protocol::V5, |name| {
        connect(5, 0x82, &[&s("cid"), &raw(name)])
    });
    let Packet::Connect(c) = &good[0] else {
        panic!()
    };
    assert_eq!(c.username.as_ref().unwrap(), "aé");
}

/// Checks 5.0: [MQTT-3.1.2-16], [MQTT-3.1.2-17]. The User Name Flag says
/// whether a User Name is in the payload: with the flag 0 the decoder reads
/// none (one sent anyway is left over and refused), with the flag 1 it reads
/// one (and refuses the packet without it); the encoder sets the flag
/// exactly when it writes a User Name.
#[test]
fn user_name_flag_matches_the_payload_v5() {
    let without: [&[u8]; 1] = [&s("cid")];
    let with: [&[u8]; 2] = [&s("cid"), &s("user")];
    // Flag 0.
    assert_eq!(
        decoded_connect(&connect(5, 0x02, &without), Protocol::V5).username,
        None
    );
    assert_eq!(
        err(&connect(5, 0x02, &with), V5),
        DecodeError::TrailingBytes(6)
    );
    // Flag 1.
    let c = decoded_connect(&connect(5, 0x82, &with), V5);
    assert_eq!(c.username.as_ref().unwrap(), "user");
    assert_eq!(err(&connect(5, 0x82, &without), V5), DecodeError::Truncated);

    let mut c = Connect::new(V5, mstr("cid"));
    assert_eq!(
        &Packet::Connect(Box::new(c.clone())).to_bytes(V5).unwrap()[..],
        &connect(5, 0x02, &without)[..]
    );
    c.username = Some(mstr("user"));
    assert_eq!(
        &Packet::Connect(Box::new(c)).to_bytes(V5).unwrap()[..],
        &connect(5, 0x82, &with)[..]
    );
}

/// Checks 5.0: [MQTT-3.1.2-18], [MQTT-3.1.2-19]. The Password Flag says
/// whether a Password is in the payload: with the flag 0 the decoder reads
/// none (one sent anyway is left over and refused), with the flag 1 it reads
/// one (and refuses the packet without it); the encoder sets the flag
/// exactly when it writes a Password. 5.0 allows a Password without a User
/// Name, so both are checked with and without one.
#[test]
fn password_flag_matches_the_payload_v5() {
    for (user_flag, user) in [(0x00u8, None), (0x80, Some("user"))] {
        let name = user.map(s).unwrap_or_default();
        let without: [&[u8]; 2] = [&s("cid"), &name];
        let with: [&[u8]; 3] = [&s("cid"), &name, &s("pw")];
        // Flag 0.
        let c = decoded_connect(&connect(5, user_flag | 0x02, &without), Protocol::V5);
        assert_eq!(c.password, None);
        assert_eq!(
            err(&connect(5, user_flag | 0x02, &with), V5),
            DecodeError::TrailingBytes(4)
        );
        // Flag 1.
        let c = decoded_connect(&connect(5, user_flag | 0x42, &with), V5);
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(c.username.as_deref(), user);
        assert_eq!(
            err(&connect(5, user_flag | 0x42, &without), V5),
            DecodeError::Truncated
        );

        let mut c = Connect::new(V5, mstr("cid"));
        c.username = user.map(mstr);
        assert_eq!(
            &Packet::Connect(Box::new(c.clone())).to_bytes(V5).unwrap()[..],
            &connect(5, user_flag | 0x02, &without)[..]
        );
        c.password = Some(Bytes::from_static(b"pw"));
        assert_eq!(
            &Packet::Connect(Box::new(c)).to_bytes(V5).unwrap()[..],
            &connect(5, user_flag | 0x42, &with)[..]
        );
    }
}

// ---------------------------------------------------------------- 5.0: SUBSCRIBE / UNSUBSCRIBE filters

/// Checks 5.0: [MQTT-3.8.3-1]. SUBSCRIBE Topic Filters are UTF-8 Encoded
/// Strings: ill-formed UTF-8 in any filter is refused, a well-formed filter
/// of the same length decodes.
#[test]
fn subscribe_filters_are_utf8_v5() {
    for before in [&[][..], &cat(&[&s("x/y"), &[0x01]])[..]] {
        let good = utf8_refused_where_valid_decodes(Protocol::V5, |f| {
            frame(0x82, &cat(&[&[0x00, 0x01, 0x00], before, &raw(f), &[0x00]]))
        });
        let Packet::Subscribe(sub) = &good[0] else {
            panic!()
        };
        assert_eq!(sub.subscriptions.last().unwrap().filter, "aé");
    }
}

/// Checks 5.0: [MQTT-3.10.3-1]. UNSUBSCRIBE Topic Filters are UTF-8 Encoded
/// Strings: ill-formed UTF-8 in any filter is refused, a well-formed filter
/// of the same length decodes.
#[test]
fn unsubscribe_filters_are_utf8_v5() {
    for before in [&[][..], &s("x/y")[..]] {
        let good = utf8_refused_where_valid_decodes(Protocol::V5, |f| {
            frame(0xA2, &cat(&[&[0x00, 0x01, 0x00], before, &raw(f)]))
        });
        let Packet::Unsubscribe(u) = &good[0] else {
            panic!()
        };
        assert_eq!(u.filters.last().unwrap(), "aé");
    }
}

// ---------------------------------------------------------------- 4.7.3: topic names and filters, both versions

/// The property block of a 5.0 packet (one byte, empty) or nothing for 3.1.1.
fn no_props(p: Protocol) -> &'static [u8] {
    if p.is_v5() {
        &[0x00]
    } else {
        &[]
    }
}

/// Builds a packet around one topic name or filter.
type Maker<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;

/// U+0000 in a PUBLISH topic, a Will Topic, a SUBSCRIBE filter and an
/// UNSUBSCRIBE filter is refused, the same bytes with 'x' there decode;
/// the encoder's types refuse U+0000 in a topic name or filter.
fn no_u0000_in_topics(p: Protocol) {
    let level = p.level();
    let will_props = no_props(p);
    let makers: [Maker<'_>; 4] = [
        &|t| frame(0x30, &cat(&[&raw(t), no_props(p), b"x"])),
        &|t| connect(level, 0x06, &[&s("cid"), will_props, &raw(t), &s("m")]),
        &|t| frame(0x82, &cat(&[&[0x00, 0x01], no_props(p), &raw(t), &[0x00]])),
        &|t| frame(0xA2, &cat(&[&[0x00, 0x01], no_props(p), &raw(t)])),
    ];
    for make in makers {
        let e = err(&make(b"a/\0b"), p);
        assert_eq!(e, DecodeError::String(StringError::NullCharacter));
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
        ok(&make(b"a/xb"), p);
    }
    assert_eq!(
        TopicName::try_from("a/\0b").unwrap_err(),
        StringError::NullCharacter
    );
    assert_eq!(
        TopicFilter::try_from("a/\0b").unwrap_err(),
        StringError::NullCharacter
    );
    assert!(TopicName::try_from("a/xb").is_ok());
    assert!(TopicFilter::try_from("a/xb").is_ok());
}

/// Checks 3.1.1: [MQTT-4.7.3-2]. Topic Names and Topic Filters never
/// contain U+0000: the decoder refuses it in a PUBLISH topic, a Will
/// Topic, SUBSCRIBE and UNSUBSCRIBE filters; the encoder cannot be given one.
#[test]
fn topics_never_contain_u0000_v311() {
    no_u0000_in_topics(Protocol::V3_1_1);
}

/// Checks 5.0: [MQTT-4.7.3-2]. Topic Names and Topic Filters never contain
/// U+0000: the decoder refuses it in a PUBLISH topic, a Will Topic,
/// SUBSCRIBE and UNSUBSCRIBE filters; the encoder cannot be given one.
#[test]
fn topics_never_contain_u0000_v5() {
    no_u0000_in_topics(Protocol::V5);
}

/// A topic name and a filter of 65,535 bytes encode with the length prefix
/// FF FF and decode back; one byte more cannot be made into a topic name,
/// a filter or a string, so no encoder can be given one.
fn topics_at_most_65535_bytes(p: Protocol) {
    let longest = "t".repeat(65_535);
    let topic = TopicName::try_from(longest.as_str()).unwrap();
    let publish = Packet::Publish(Publish::new(topic, Bytes::from_static(b"x")));
    let bytes = publish.to_bytes(p).unwrap();
    // First byte, three bytes of remaining length, then the topic's length.
    let header = FixedHeader::parse(&bytes, Some(p)).unwrap().unwrap();
    assert_eq!(header.header_len, 4);
    assert_eq!(header.packet_len(), bytes.len());
    assert_eq!(&bytes[4..6], &[0xFF, 0xFF]);
    assert_eq!(&bytes[6..6 + 65_535], longest.as_bytes());
    assert_eq!(ok(&bytes, p), publish);

    let filter = TopicFilter::try_from(longest.as_str()).unwrap();
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::default(),
        subscriptions: vec![Subscription {
            filter,
            options: SubscriptionOptions::qos(QoS::AtMostOnce),
        }],
    });
    let bytes = subscribe.to_bytes(p).unwrap();
    let at = 4 + 2 + no_props(p).len();
    assert_eq!(&bytes[at..at + 2], &[0xFF, 0xFF]);
    assert_eq!(ok(&bytes, p), subscribe);

    let too_long = "t".repeat(65_536);
    assert_eq!(
        TopicName::try_from(too_long.as_str()).unwrap_err(),
        StringError::TooLong
    );
    assert_eq!(
        TopicFilter::try_from(too_long.as_str()).unwrap_err(),
        StringError::TooLong
    );
    assert_eq!(
        MqttString::try_from(too_long).unwrap_err(),
        StringError::TooLong
    );
}

/// Checks 3.1.1: [MQTT-4.7.3-3]. Topic Names and Topic Filters encode to at
/// most 65,535 bytes: that length encodes and decodes, a longer one cannot
/// be built.
#[test]
fn topics_encode_to_at_most_65535_bytes_v311() {
    topics_at_most_65535_bytes(Protocol::V3_1_1);
}

/// Checks 5.0: [MQTT-4.7.3-3]. Topic Names and Topic Filters encode to at
/// most 65,535 bytes: that length encodes and decodes, a longer one cannot
/// be built.
#[test]
fn topics_encode_to_at_most_65535_bytes_v5() {
    topics_at_most_65535_bytes(Protocol::V5);
}
