//! What can go wrong decoding and encoding, and what goes on the wire when it does.

use crate::reason::ReasonCode;
use crate::string::StringError;
use crate::types::PacketType;

/// Why a frame could not be decoded.
///
/// Every variant knows the 5.0 reason code a broker sends in its DISCONNECT (or
/// CONNACK) when a client commits it ([`DecodeError::reason_code`]) and, where
/// one exists, the normative statement it enforces ([`DecodeError::spec`]).
/// A 3.1.x peer that commits any of them is simply disconnected.
///
/// A decode error is terminal for the stream: framing can't be trusted after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet (fixed header included) is larger than the configured maximum.
    /// Raised from the fixed header alone, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Announced size of the whole packet.
        size: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A Variable Byte Integer padded with needless bytes.
    #[error("variable byte integer not in its shortest form [MQTT-1.5.5-1]")]
    NonMinimalVarint,
    /// Authentication Data without an Authentication Method.
    #[error("Authentication Data without Authentication Method")]
    AuthenticationDataWithoutMethod,
    /// A non-empty AUTH without an Authentication Method.
    #[error("AUTH without Authentication Method")]
    MissingAuthenticationMethod,
    /// The remaining length uses more than four bytes.
    #[error("remaining length is longer than 4 bytes [MQTT-1.5.5-1]")]
    MalformedRemainingLength,
    /// Packet type 0, or 15 (AUTH) before 5.0.
    #[error("packet type {0} is reserved for this protocol version")]
    ReservedPacketType(u8),
    /// The fixed header's flag bits differ from what the packet type fixes.
    #[error("{packet:?} with reserved fixed-header flags {flags:#06b} [MQTT-2.1.3-1]")]
    InvalidHeaderFlags {
        /// The packet type.
        packet: PacketType,
        /// The four flag bits received.
        flags: u8,
    },
    /// A field runs past the end of the packet.
    #[error("packet is truncated: a field runs past its remaining length")]
    Truncated,
    /// Bytes are left over after the last field of the packet.
    #[error("{0} bytes left over after the end of the packet")]
    TrailingBytes(usize),
    /// A string, topic name or topic filter is invalid.
    #[error(transparent)]
    String(#[from] StringError),
    /// A PUBLISH with QoS bits 11.
    #[error("QoS 3 is not a QoS [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// A QoS 0 PUBLISH with DUP set.
    #[error("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQoS0,
    /// Packet identifier 0 where one is required.
    #[error("packet identifier 0 [MQTT-2.2.1-3 (5.0), MQTT-2.3.1-1 (3.1.1)]")]
    ZeroPacketId,
    /// A 3.1.1 PUBLISH without a topic name, or a 5.0 one with neither name nor alias.
    #[error("PUBLISH without topic name (and without Topic Alias) [MQTT-4.7.3-1]")]
    MissingTopic,
    /// A property identifier the specification does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property that is not allowed on this packet (2.2.2.2: a Malformed Packet).
    #[error("property {property:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        property: u8,
        /// Where it appeared.
        packet: &'static str,
    },
    /// A property that may appear once appears twice.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property has a value its definition forbids (receive maximum 0, a flag of 2, …).
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// Topic Alias 0 was sent.
    #[error("Topic Alias 0 [MQTT-3.3.2-8]")]
    ZeroTopicAlias,
    /// The CONNECT protocol name is neither `MQTT` nor `MQIsdp`. The level
    /// that followed it tells a server which format its refusal can take
    /// (5: a 5.0 CONNACK 0x84).
    #[error("unknown protocol name [MQTT-3.1.2-1]")]
    InvalidProtocolName {
        /// The protocol level that followed the name.
        level: u8,
    },
    /// A known protocol name with a level Petrel does not speak. A server
    /// answers CONNACK 0x84 (5.0) or return code 1 (3.1.1) and closes.
    #[error("unsupported protocol level {level} [MQTT-3.1.2-2]")]
    UnsupportedProtocolLevel {
        /// The level received.
        level: u8,
    },
    /// The reserved bit of the CONNECT flags is set.
    #[error("reserved CONNECT flag is set [MQTT-3.1.2-3]")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set without the Will flag, or Will QoS 3.
    #[error("inconsistent will flags [MQTT-3.1.2-11, MQTT-3.1.2-12, MQTT-3.1.2-13 (5.0); MQTT-3.1.2-13..15 (3.1.1)]")]
    InvalidWillFlags,
    /// 3.1.x: the password flag is set without the user name flag.
    #[error("password flag set without user name flag [MQTT-3.1.2-22 (3.1.1)]")]
    PasswordWithoutUsername,
    /// Reserved CONNACK acknowledge flags set.
    #[error("reserved CONNACK flags set [MQTT-3.2.2-1]")]
    InvalidConnAckFlags,
    /// Reserved bits of the subscription options set, or QoS 3 in them.
    #[error("invalid subscription options {0:#04x} [MQTT-3.8.3-5 (5.0), MQTT-3-8.3-4 (3.1.1)]")]
    InvalidSubscriptionOptions(u8),
    /// Retain handling 3.
    #[error("retain handling 3 is a protocol error")]
    InvalidRetainHandling,
    /// No Local on a shared subscription.
    #[error("No Local set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    /// A SUBSCRIBE or UNSUBSCRIBE with no topic filter (or a SUBACK or 5.0
    /// UNSUBACK with no reason code, which can't answer one).
    #[error(
        "{0:?} without any topic filter [MQTT-3.8.3-2 (5.0), MQTT-3.8.3-3 (3.1.1), MQTT-3.10.3-2]"
    )]
    NoTopicFilters(PacketType),
    /// More topic filters (or reason codes) in one packet than the configured limit.
    #[error("more than {max} topic filters in one packet")]
    TooManyTopicFilters {
        /// The configured limit.
        max: usize,
    },
    /// More user properties in one packet than the configured limit.
    #[error("more than {max} user properties in one packet")]
    TooManyUserProperties {
        /// The configured limit.
        max: usize,
    },
    /// A reason code the specification does not list for this packet.
    #[error("reason code {code:?} is not allowed in {packet:?} [MQTT-3.4.2-1, MQTT-3.14.2-1, MQTT-3.15.2-1, …]")]
    InvalidReasonCode {
        /// The packet type.
        packet: PacketType,
        /// The code received.
        code: ReasonCode,
    },
    /// Before the protocol version is known, only a CONNECT can be decoded.
    #[error("first packet is {0:?}, not CONNECT [MQTT-3.1.0-1]")]
    FirstPacketNotConnect(PacketType),
}

impl DecodeError {
    /// The 5.0 reason code to answer this error with (in DISCONNECT, or in
    /// CONNACK when it happened in CONNECT).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::String(StringError::WildcardInTopicName) => ReasonCode::TOPIC_NAME_INVALID,
            Self::String(
                StringError::InvalidMultiLevelWildcard
                | StringError::InvalidSingleLevelWildcard
                | StringError::InvalidSharedSubscription,
            ) => ReasonCode::TOPIC_FILTER_INVALID,
            Self::ZeroTopicAlias => ReasonCode::TOPIC_ALIAS_INVALID,
            Self::InvalidProtocolName { .. } | Self::UnsupportedProtocolLevel { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::TooManyTopicFilters { .. } | Self::TooManyUserProperties { .. } => {
                ReasonCode::QUOTA_EXCEEDED
            }
            Self::DuplicateProperty(_)
            | Self::InvalidPropertyValue(_)
            | Self::InvalidRetainHandling
            | Self::NoLocalOnSharedSubscription
            | Self::NoTopicFilters(_)
            | Self::MissingTopic
            | Self::InvalidReasonCode { .. }
            | Self::AuthenticationDataWithoutMethod
            | Self::MissingAuthenticationMethod
            | Self::FirstPacketNotConnect(_) => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// The normative statement this error enforces, if one does (5.0 numbering
    /// where the versions differ, 3.1.1 numbering for rules only 3.1.1 has;
    /// the `Display` text gives both).
    pub fn spec(&self) -> Option<&'static str> {
        Some(match self {
            Self::MalformedRemainingLength | Self::NonMinimalVarint => "MQTT-1.5.5-1",
            Self::InvalidHeaderFlags { .. } => "MQTT-2.1.3-1",
            Self::String(StringError::InvalidUtf8) => "MQTT-1.5.4-1",
            Self::String(StringError::NullCharacter) => "MQTT-1.5.4-2",
            Self::String(StringError::EmptyTopic) | Self::MissingTopic => "MQTT-4.7.3-1",
            Self::String(StringError::WildcardInTopicName) => "MQTT-3.3.2-2",
            Self::String(StringError::InvalidMultiLevelWildcard) => "MQTT-4.7.1-1",
            Self::String(StringError::InvalidSingleLevelWildcard) => "MQTT-4.7.1-2",
            Self::String(StringError::InvalidSharedSubscription) => "MQTT-4.8.2-2",
            Self::InvalidQoS => "MQTT-3.3.1-4",
            Self::DupOnQoS0 => "MQTT-3.3.1-2",
            Self::ZeroPacketId => "MQTT-2.2.1-3",
            Self::ZeroTopicAlias => "MQTT-3.3.2-8",
            Self::InvalidProtocolName { .. } => "MQTT-3.1.2-1",
            Self::UnsupportedProtocolLevel { .. } => "MQTT-3.1.2-2",
            Self::ReservedConnectFlag => "MQTT-3.1.2-3",
            Self::InvalidWillFlags => "MQTT-3.1.2-11",
            Self::PasswordWithoutUsername => "MQTT-3.1.2-22",
            Self::InvalidSubscriptionOptions(_) => "MQTT-3.8.3-5",
            Self::NoLocalOnSharedSubscription => "MQTT-3.8.3-4",
            Self::NoTopicFilters(PacketType::Unsubscribe) => "MQTT-3.10.3-2",
            Self::NoTopicFilters(_) => "MQTT-3.8.3-2",
            Self::FirstPacketNotConnect(_) => "MQTT-3.1.0-1",
            _ => return None,
        })
    }
}

/// Why a packet could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded packet would exceed the MQTT maximum (268,435,455 bytes of
    /// remaining length) or the limit the caller gave.
    #[error("encoded packet of {size} bytes exceeds the maximum of {max} bytes")]
    PacketTooLarge {
        /// The size the packet would have.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Binary data (password, will payload, correlation or authentication data)
    /// longer than a two-byte length can express.
    #[error("binary field longer than 65535 bytes")]
    FieldTooLong,
    /// A property is set that this packet may not carry.
    #[error("property {property:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        property: u8,
        /// The packet.
        packet: &'static str,
    },
    /// A property value the specification forbids (Maximum QoS 2, subscription identifier 0 or too large).
    #[error("property {0:#04x} has a value that cannot be sent")]
    InvalidPropertyValue(u8),
    /// The packet does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet:?} cannot be sent in {protocol}")]
    NotInProtocol {
        /// The packet type.
        packet: PacketType,
        /// The version of the connection.
        protocol: crate::Protocol,
    },
    /// A PUBLISH or Will without a topic name, and (5.0) without a Topic Alias.
    #[error("PUBLISH without topic name or Topic Alias")]
    MissingTopic,
    /// A SUBSCRIBE or UNSUBSCRIBE without topic filters (or SUBACK/UNSUBACK
    /// without reason codes).
    #[error("{0:?} without topic filters or reason codes")]
    NoTopicFilters(PacketType),
    /// A reason code the packet's table does not list.
    #[error("reason code {code:?} cannot be sent in {packet:?}")]
    InvalidReasonCode {
        /// The packet.
        packet: PacketType,
        /// The code.
        code: ReasonCode,
    },
    /// No Local on a shared subscription ([MQTT-3.8.3-4]).
    #[error("No Local cannot be set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    /// 3.1.x: a password needs a user name ([MQTT-3.1.2-22] in 3.1.1).
    #[error("a 3.1.x CONNECT cannot carry a password without a user name")]
    PasswordWithoutUsername,
}
