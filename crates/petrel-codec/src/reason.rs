//! Reason codes: the one-byte result carried by 5.0 acknowledgements, and the
//! 3.1.1 return codes mapped onto the same type.

use std::fmt;

/// An MQTT 5.0 reason code.
///
/// This is an open newtype rather than an enum: a peer may send a value this
/// crate does not name, and the decoder decides per packet type whether the
/// value is allowed (see [`ReasonCode::allowed_in`]). 3.1.1 CONNACK return codes
/// and SUBACK return codes are mapped onto the 5.0 values (see
/// [`ReasonCode::to_v3_connack`]). The default is 0x00, success.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReasonCode(pub u8);

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        impl ReasonCode {
            $( $(#[$doc])* pub const $name: Self = Self($value); )*

            /// The name the specification gives this code, if it is one of the
            /// codes the specification defines (for `0x00` the generic "Success").
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    0x00 => Some("Success"),
                    0x01 => Some("Granted QoS 1"),
                    0x02 => Some("Granted QoS 2"),
                    $( $value => Some($text), )*
                    _ => None,
                }
            }
        }
    };
}

impl ReasonCode {
    /// 0x00: Success (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH).
    pub const SUCCESS: Self = Self(0x00);
    /// 0x00: Normal disconnection (DISCONNECT).
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    /// 0x00: Granted QoS 0 (SUBACK).
    pub const GRANTED_QOS_0: Self = Self(0x00);
    /// 0x01: Granted QoS 1 (SUBACK).
    pub const GRANTED_QOS_1: Self = Self(0x01);
    /// 0x02: Granted QoS 2 (SUBACK).
    pub const GRANTED_QOS_2: Self = Self(0x02);
}

reason_codes! {
    /// 0x04: Disconnect with Will Message (DISCONNECT).
    DISCONNECT_WITH_WILL_MESSAGE = 0x04, "Disconnect with Will Message";
    /// 0x10: No matching subscribers (PUBACK, PUBREC).
    NO_MATCHING_SUBSCRIBERS = 0x10, "No matching subscribers";
    /// 0x11: No subscription existed (UNSUBACK).
    NO_SUBSCRIPTION_EXISTED = 0x11, "No subscription existed";
    /// 0x18: Continue authentication (AUTH).
    CONTINUE_AUTHENTICATION = 0x18, "Continue authentication";
    /// 0x19: Re-authenticate (AUTH).
    RE_AUTHENTICATE = 0x19, "Re-authenticate";
    /// 0x80: Unspecified error.
    UNSPECIFIED_ERROR = 0x80, "Unspecified error";
    /// 0x81: Malformed Packet.
    MALFORMED_PACKET = 0x81, "Malformed Packet";
    /// 0x82: Protocol Error.
    PROTOCOL_ERROR = 0x82, "Protocol Error";
    /// 0x83: Implementation specific error.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "Implementation specific error";
    /// 0x84: Unsupported Protocol Version.
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "Unsupported Protocol Version";
    /// 0x85: Client Identifier not valid.
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "Client Identifier not valid";
    /// 0x86: Bad User Name or Password.
    BAD_USER_NAME_OR_PASSWORD = 0x86, "Bad User Name or Password";
    /// 0x87: Not authorized.
    NOT_AUTHORIZED = 0x87, "Not authorized";
    /// 0x88: Server unavailable.
    SERVER_UNAVAILABLE = 0x88, "Server unavailable";
    /// 0x89: Server busy.
    SERVER_BUSY = 0x89, "Server busy";
    /// 0x8A: Banned.
    BANNED = 0x8A, "Banned";
    /// 0x8B: Server shutting down.
    SERVER_SHUTTING_DOWN = 0x8B, "Server shutting down";
    /// 0x8C: Bad authentication method.
    BAD_AUTHENTICATION_METHOD = 0x8C, "Bad authentication method";
    /// 0x8D: Keep Alive timeout.
    KEEP_ALIVE_TIMEOUT = 0x8D, "Keep Alive timeout";
    /// 0x8E: Session taken over.
    SESSION_TAKEN_OVER = 0x8E, "Session taken over";
    /// 0x8F: Topic Filter invalid.
    TOPIC_FILTER_INVALID = 0x8F, "Topic Filter invalid";
    /// 0x90: Topic Name invalid.
    TOPIC_NAME_INVALID = 0x90, "Topic Name invalid";
    /// 0x91: Packet Identifier in use.
    PACKET_IDENTIFIER_IN_USE = 0x91, "Packet Identifier in use";
    /// 0x92: Packet Identifier not found.
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "Packet Identifier not found";
    /// 0x93: Receive Maximum exceeded.
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "Receive Maximum exceeded";
    /// 0x94: Topic Alias invalid.
    TOPIC_ALIAS_INVALID = 0x94, "Topic Alias invalid";
    /// 0x95: Packet too large.
    PACKET_TOO_LARGE = 0x95, "Packet too large";
    /// 0x96: Message rate too high.
    MESSAGE_RATE_TOO_HIGH = 0x96, "Message rate too high";
    /// 0x97: Quota exceeded.
    QUOTA_EXCEEDED = 0x97, "Quota exceeded";
    /// 0x98: Administrative action.
    ADMINISTRATIVE_ACTION = 0x98, "Administrative action";
    /// 0x99: Payload format invalid.
    PAYLOAD_FORMAT_INVALID = 0x99, "Payload format invalid";
    /// 0x9A: Retain not supported.
    RETAIN_NOT_SUPPORTED = 0x9A, "Retain not supported";
    /// 0x9B: QoS not supported.
    QOS_NOT_SUPPORTED = 0x9B, "QoS not supported";
    /// 0x9C: Use another server.
    USE_ANOTHER_SERVER = 0x9C, "Use another server";
    /// 0x9D: Server moved.
    SERVER_MOVED = 0x9D, "Server moved";
    /// 0x9E: Shared Subscriptions not supported.
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E, "Shared Subscriptions not supported";
    /// 0x9F: Connection rate exceeded.
    CONNECTION_RATE_EXCEEDED = 0x9F, "Connection rate exceeded";
    /// 0xA0: Maximum connect time.
    MAXIMUM_CONNECT_TIME = 0xA0, "Maximum connect time";
    /// 0xA1: Subscription Identifiers not supported.
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1, "Subscription Identifiers not supported";
    /// 0xA2: Wildcard Subscriptions not supported.
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2, "Wildcard Subscriptions not supported";
}

/// Which packet a reason code travels in; each has its own table in the 5.0
/// specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonContext {
    /// CONNACK (3.2.2.2).
    ConnAck,
    /// PUBACK and PUBREC (3.4.2.1, 3.5.2.1).
    PubAck,
    /// PUBREL and PUBCOMP (3.6.2.1, 3.7.2.1).
    PubRel,
    /// SUBACK (3.9.3).
    SubAck,
    /// UNSUBACK (3.11.3).
    UnsubAck,
    /// DISCONNECT (3.14.2.1).
    Disconnect,
    /// AUTH (3.15.2.1).
    Auth,
}

const CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];
const SUBACK: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

impl ReasonContext {
    /// The 5.0 reason codes this packet may carry.
    pub fn allowed(self) -> &'static [u8] {
        match self {
            Self::ConnAck => CONNACK,
            Self::PubAck => PUBACK,
            Self::PubRel => PUBREL,
            Self::SubAck => SUBACK,
            Self::UnsubAck => UNSUBACK,
            Self::Disconnect => DISCONNECT,
            Self::Auth => AUTH,
        }
    }
}

impl ReasonCode {
    /// Whether this code is one of those the 5.0 specification lists for the
    /// packet ([MQTT-3.4.2-1], [MQTT-3.14.2-1], [MQTT-3.15.2-1], …).
    pub fn allowed_in(self, context: ReasonContext) -> bool {
        context.allowed().contains(&self.0)
    }

    /// Codes of 0x80 and above report a failure.
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The 3.1.1 CONNACK return code for this 5.0 reason code.
    ///
    /// 3.1.1 has six return codes; a 5.0 code without an exact counterpart is
    /// mapped to the nearest one (a refused authentication method to "bad user
    /// name or password", a ban or quota to "not authorized", everything else
    /// that is a failure to "server unavailable").
    pub fn to_v3_connack(self) -> u8 {
        match self.0 {
            0x00 => 0,
            0x84 => 1,
            0x85 => 2,
            0x86 | 0x8C => 4,
            0x87 | 0x8A | 0x97 => 5,
            _ => 3,
        }
    }

    /// The 5.0 reason code for a 3.1.1 CONNACK return code (0 to 5).
    pub fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::SUCCESS,
            1 => Self::UNSUPPORTED_PROTOCOL_VERSION,
            2 => Self::CLIENT_IDENTIFIER_NOT_VALID,
            3 => Self::SERVER_UNAVAILABLE,
            4 => Self::BAD_USER_NAME_OR_PASSWORD,
            5 => Self::NOT_AUTHORIZED,
            _ => return None,
        })
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "ReasonCode(0x{:02X} {name})", self.0),
            None => write!(f, "ReasonCode(0x{:02X})", self.0),
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (0x{:02X})", self.0),
            None => write!(f, "reason code 0x{:02X}", self.0),
        }
    }
}
