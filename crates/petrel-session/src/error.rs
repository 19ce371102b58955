//! What the peer can do wrong, and what a command can be refused for.

use petrel_codec::packet::PacketType;
use petrel_codec::{DecodeError, ReasonCode};

/// A protocol violation by the peer. The connection sends what the
/// specification asks (a 5.0 DISCONNECT with [`ProtocolError::reason_code`]
/// where it may send one) and closes; nothing else is processed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The bytes were not valid MQTT (reported by the codec).
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// A packet the peer may not send in this state or role.
    #[error("unexpected {packet:?} while {state}")]
    UnexpectedPacket {
        /// What arrived.
        packet: PacketType,
        /// Where the connection was.
        state: &'static str,
    },
    /// A second CONNECT on the same connection.
    #[error("second CONNECT [MQTT-3.1.0-2]")]
    SecondConnect,
    /// More unacknowledged QoS 1/2 PUBLISHes than our Receive Maximum.
    #[error("more than {max} QoS 1/2 PUBLISH packets unacknowledged [MQTT-3.3.4-9]")]
    ReceiveMaximumExceeded {
        /// Our Receive Maximum.
        max: u16,
    },
    /// A Topic Alias of 0 or above our Topic Alias Maximum.
    #[error("topic alias {alias} outside 1..={max} [MQTT-3.3.2-10]")]
    TopicAliasInvalid {
        /// The alias received.
        alias: u16,
        /// Our maximum.
        max: u16,
    },
    /// An empty topic with an alias that was never set on this connection.
    #[error("topic alias {0} used before it was set")]
    UnknownTopicAlias(u16),
    /// A client sent a PUBLISH with a Subscription Identifier.
    #[error("PUBLISH from a client carries a Subscription Identifier [MQTT-3.3.4-6]")]
    SubscriptionIdentifierFromClient,
    /// A QoS 1 PUBLISH reused a packet identifier still held by a QoS 2 exchange.
    #[error("packet identifier {0} is still in use by a QoS 2 exchange")]
    PacketIdInUse(u16),
    /// Server: the client sent too much before its CONNECT was answered.
    #[error("too many packets before CONNACK")]
    TooMuchBeforeConnAck,
    /// An AUTH whose method differs from the one in CONNECT, or with no
    /// enhanced authentication under way.
    #[error("AUTH without matching authentication method")]
    BadAuthentication,
    /// An AUTH with a reason code its sender may not use (3.15.2.1): 0x19
    /// Re-authenticate from a server (only a client starts one), 0x00
    /// Success from a client (only a server ends an exchange).
    #[error("AUTH reason code {0:?} from the wrong side")]
    AuthReasonFromWrongSide(ReasonCode),
}

impl ProtocolError {
    /// The 5.0 reason code to disconnect with.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Malformed(e) => e.reason_code(),
            Self::ReceiveMaximumExceeded { .. } => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            Self::TopicAliasInvalid { .. } => ReasonCode::TOPIC_ALIAS_INVALID,
            Self::BadAuthentication => ReasonCode::BAD_AUTHENTICATION_METHOD,
            Self::TooMuchBeforeConnAck => ReasonCode::QUOTA_EXCEEDED,
            _ => ReasonCode::PROTOCOL_ERROR,
        }
    }

    /// The normative statement this enforces, where there is one.
    pub fn spec(&self) -> Option<&'static str> {
        match self {
            Self::Malformed(e) => e.spec(),
            Self::SecondConnect => Some("MQTT-3.1.0-2"),
            Self::ReceiveMaximumExceeded { .. } => Some("MQTT-3.3.4-9"),
            Self::TopicAliasInvalid { .. } => Some("MQTT-3.3.2-10"),
            Self::SubscriptionIdentifierFromClient => Some("MQTT-3.3.4-6"),
            _ => None,
        }
    }
}

/// Why a command was refused. The connection's state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is not (or no longer) connected.
    #[error("not connected")]
    NotConnected,
    /// Client: the server does not support this QoS or RETAIN (CONNACK
    /// Maximum QoS, Retain Available).
    #[error("QoS or RETAIN not supported by the server")]
    NotSupported,
    /// The pending queue is full: wait for acknowledgements and try again.
    #[error("send queue full")]
    QueueFull,
    /// Too many SUBSCRIBE/UNSUBSCRIBE requests await their acknowledgement.
    #[error("too many subscription requests pending")]
    TooManyPendingSubscriptions,
    /// The packet would exceed the peer's Maximum Packet Size.
    #[error("packet of {size} bytes exceeds the peer's maximum of {max}")]
    PacketTooLarge {
        /// Size of the packet.
        size: usize,
        /// The peer's maximum.
        max: u32,
    },
    /// The packet can't be encoded (for example an empty SUBSCRIBE).
    #[error(transparent)]
    Encode(#[from] petrel_codec::EncodeError),
    /// The call does not fit this role or state (e.g. `accept` on a client).
    #[error("{0}")]
    Invalid(&'static str),
}
