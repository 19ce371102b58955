//! What the handle asks the connection task, and what it answers: shared by
//! [`crate::Client`] and the task, neither of which imports the other.

use petrel_codec::{Properties, ReasonCode, SubAck, Subscription, TopicFilter, UnsubAck};
use petrel_session::Message;
use tokio::sync::oneshot;

use crate::error::ClientError;

/// The broker's answer to a QoS 1 or 2 PUBLISH (PUBACK, or PUBCOMP; a PUBREC
/// with an error code ends a QoS 2 exchange too). For QoS 0 it is a success
/// with no properties once the message is queued for the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The reason code (3.1.1: always success). Check `is_error()`: 0x10
    /// (No matching subscribers) is a success.
    pub reason_code: ReasonCode,
    /// 5.0 properties (Reason String, User Properties).
    pub properties: Properties,
}

impl Ack {
    pub(crate) fn success() -> Self {
        Self {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::new(),
        }
    }
}

/// Where the connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Connecting, or waiting to reconnect.
    Connecting,
    /// Connected.
    Connected {
        /// Whether the broker resumed the session.
        session_present: bool,
    },
    /// Closed for good (disconnected, or gave up).
    Closed,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

pub(crate) enum Command {
    Publish {
        message: Message,
        reply: Reply<Ack>,
    },
    Subscribe {
        subscriptions: Vec<Subscription>,
        properties: Properties,
        reply: Reply<SubAck>,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        properties: Properties,
        reply: Reply<UnsubAck>,
    },
}

/// What acknowledges one received QoS 1 or 2 message, with
/// [`crate::ConnectOptions::manual_acks`]: hand it to [`crate::Client::ack`]
/// once the message is taken care of, in the order messages arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckToken {
    /// The connection it arrived on.
    pub(crate) generation: u64,
    /// The session it arrived in (a QoS 2 acknowledgement belongs to the
    /// session, not the connection).
    pub(crate) epoch: u64,
    pub(crate) id: petrel_codec::PacketId,
    pub(crate) exactly_once: bool,
}

/// Requests the connection task always listens to, even while commands
/// wait for room.
pub(crate) enum Control {
    /// Acknowledge a received message (manual acknowledgements).
    Ack(AckToken),
    Disconnect {
        reason_code: ReasonCode,
        properties: Properties,
        reply: Reply<()>,
    },
    Reauthenticate {
        reply: Reply<()>,
    },
}
