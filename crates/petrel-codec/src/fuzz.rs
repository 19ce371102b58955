//! Entry points of the cargo-fuzz targets in `fuzz/` (built only with
//! `--cfg fuzzing`). Each checks more than "no panic": whatever decodes must
//! encode to exactly [`Packet::encoded_len`] bytes and decode back to itself.

use bytes::BytesMut;

use crate::{Limits, Packet, Protocol};

fn limits() -> Limits {
    Limits {
        max_packet_size: 64 * 1024,
        max_topic_filters: 32,
        max_user_properties: 32,
    }
}

/// Decode `data` as a stream of packets of `protocol` (`None`: the version is
/// learned from a leading CONNECT) and check every decoded packet round-trips.
pub fn decode(data: &[u8], mut protocol: Option<Protocol>) {
    let limits = limits();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = Packet::decode(&mut buf, protocol, &limits) {
        let version = match (&packet, protocol) {
            (Packet::Connect(c), None) => {
                protocol = Some(c.protocol);
                c.protocol
            }
            (Packet::Connect(c), Some(_)) => c.protocol,
            (_, Some(p)) => p,
            (_, None) => unreachable!("only CONNECT decodes before the version is known"),
        };
        check_round_trip(&packet, version, &limits);
    }
}

/// The first byte picks the version, the rest is decoded as one packet
/// stream; every packet must survive decode → encode → decode → encode with
/// identical packets and identical bytes.
pub fn round_trip(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let protocol = [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5][usize::from(selector % 3)];
    let limits = limits();
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = Packet::decode(&mut buf, Some(protocol), &limits) {
        let version = match &packet {
            Packet::Connect(c) => c.protocol,
            _ => protocol,
        };
        check_round_trip(&packet, version, &limits);
    }
}

fn check_round_trip(packet: &Packet, version: Protocol, limits: &Limits) {
    let len = packet
        .encoded_len(version)
        .expect("a decoded packet encodes");
    let bytes = packet.to_bytes(version).expect("a decoded packet encodes");
    assert_eq!(bytes.len(), len, "encoded_len disagrees with encode");
    let mut again = BytesMut::from(&bytes[..]);
    let back = Packet::decode(&mut again, Some(version), limits)
        .expect("re-encoded packet decodes")
        .expect("re-encoded packet is whole");
    assert!(again.is_empty(), "re-encoded packet has trailing bytes");
    assert_eq!(&back, packet, "decode(encode(p)) != p");
    assert_eq!(
        back.to_bytes(version).expect("encodes"),
        bytes,
        "encoding is not stable"
    );
}
