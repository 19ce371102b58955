//! # petrel-codec
//!
//! The wire layer of Petrel: MQTT 3.1, 3.1.1 and 5.0 control packets to and
//! from bytes, with no I/O, no async runtime and no clock.
//!
//! ## Decoding
//!
//! [`Packet::decode`] takes the connection's read buffer. It reads the fixed
//! header first and refuses a packet larger than [`Limits::max_packet_size`]
//! right there, before buffering any of its body. When the whole packet is in,
//! its bytes are split off the buffer and frozen once; every topic, string,
//! binary field and payload of the decoded [`Packet`] is a [`bytes::Bytes`]
//! view of that frame. Decoding a PUBLISH allocates nothing beyond the frame.
//!
//! 5.0 [`Properties`] stay in wire form: a view of the property block,
//! validated once, with getters that read it and setters that rebuild it. A
//! packet is therefore small and cheap to move, and a broker forwarding a
//! PUBLISH writes its properties back byte for byte ([`Properties::without`]
//! drops the ones it must not pass on).
//!
//! Strings are validated once, on decode, into [`MqttString`] (well-formed
//! UTF-8, no U+0000); topics into [`TopicName`] (no wildcards) and
//! [`TopicFilter`] (wildcard and `$share` rules).
//!
//! ## Encoding
//!
//! [`Packet::encoded_len`] computes the exact size first — use it to respect a
//! peer's Maximum Packet Size — and [`Packet::encode`] reserves that much once
//! and writes. [`Publish::encode_header`] writes everything but the payload,
//! for fan-out where every subscriber's write shares the same payload bytes.
//!
//! ## One model, three versions
//!
//! The same types serve every version. 5.0-only fields (properties, reason
//! codes, subscription options) are empty when decoded from 3.1.x and left out
//! when encoded for it. The version comes from the CONNECT: before it is seen
//! (`protocol: None`) only a CONNECT decodes.
//!
//! ## Errors
//!
//! Every [`DecodeError`] names what was wrong, the reason code a broker
//! answers with ([`DecodeError::reason_code`]) and the normative statement it
//! enforces, where one exists ([`DecodeError::spec`]). Nothing a peer sends
//! makes the decoder panic or allocate beyond the configured limits.
//!
//! ```
//! use bytes::BytesMut;
//! use petrel_codec::{Limits, Packet, Protocol};
//!
//! // A 3.1.1 PUBLISH of "hi" to "a/b", QoS 0.
//! let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
//! let packet = Packet::decode(&mut buf, Some(Protocol::V3_1_1), &Limits::default())
//!     .unwrap()
//!     .unwrap();
//! let Packet::Publish(publish) = &packet else { unreachable!() };
//! assert_eq!(publish.topic, "a/b");
//! assert_eq!(&publish.payload[..], b"hi");
//! assert_eq!(packet.to_bytes(Protocol::V3_1_1).unwrap(), &b"\x30\x07\x00\x03a/bhi"[..]);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "codec")]
mod codec;
mod error;
#[cfg(fuzzing)]
pub mod fuzz;
pub mod packet;
pub mod properties;
mod reason;
mod string;
mod types;
mod wire;

#[cfg(feature = "codec")]
pub use codec::{CodecError, MqttCodec};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, FixedHeader, Packet, PacketType, PubAck, Publish,
    PublishView, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will,
};
pub use properties::{
    Properties, PropertyContext, PropertyList, SubscriptionId, SubscriptionIds, UserProperties,
    UserProperty,
};
pub use reason::{ReasonCode, ReasonContext};
pub use string::{topic_matches, MqttString, StringError, TopicFilter, TopicName, SHARE_PREFIX};
pub use types::{PacketId, Protocol, QoS, QosPid, RetainHandling, SubscriptionOptions};
pub use wire::MAX_VARINT;

/// Limits the decoder enforces on what a peer sends. Every one is finite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet accepted, fixed header included. Checked from the fixed
    /// header, before the body is buffered. Default 1 MiB; the protocol's own
    /// ceiling is 268,435,460 bytes.
    pub max_packet_size: u32,
    /// Most topic filters in one SUBSCRIBE or UNSUBSCRIBE (and reason codes in
    /// one SUBACK or UNSUBACK). Default 256.
    pub max_topic_filters: usize,
    /// Most user properties in one property block. Default 128.
    pub max_user_properties: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_topic_filters: 256,
            max_user_properties: 128,
        }
    }
}
