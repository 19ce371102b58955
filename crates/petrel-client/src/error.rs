//! What can go wrong, for a caller to match on.

use petrel_codec::ReasonCode;
use petrel_session::{DropReason, SendError};

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client was disconnected on purpose, or gave up reconnecting.
    #[error("the client is closed")]
    Closed,
    /// `try_` call: the pending queue is full (the awaiting call would wait).
    #[error("the pending queue is full")]
    Full,
    /// The broker refused the connection (3.1.1 return codes mapped to 5.0
    /// reason codes).
    #[error("connection refused: {0}")]
    Refused(ReasonCode),
    /// The network connection could not be made or failed.
    #[error("connection failed: {0}")]
    Io(String),
    /// No connection or CONNACK within `connect_timeout`.
    #[error("timed out connecting")]
    Timeout,
    /// TLS could not be set up (certificates, keys, server name).
    #[error("TLS: {0}")]
    Tls(String),
    /// The message will never be sent (too large for the broker, expired,
    /// not supported by it, or its session was discarded).
    #[error("message dropped: {0:?}")]
    Dropped(DropReason),
    /// The session machine refused the request as it stands (for example an
    /// invalid packet, or a QoS the broker does not support).
    #[error("{0}")]
    Send(#[from] SendError),
    /// An argument is not valid MQTT (topic, filter, …).
    #[error("invalid: {0}")]
    Invalid(String),
}
