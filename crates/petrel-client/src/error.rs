//! What can go wrong, for a caller to match on.

use std::error::Error as StdError;

use petrel_codec::ReasonCode;
use petrel_session::{DropReason, SendError};

/// An underlying error of a transport, kept as the source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a client call failed.
///
/// The transport variants keep the error underneath as their
/// [`source`](std::error::Error::source): an [`std::io::Error`] for
/// [`ClientError::Io`] (match it to read its `kind()`), the rustls error
/// for a refused TLS handshake, and so on.
#[derive(Debug, thiserror::Error)]
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
    #[error("connection failed: {}", with_context(context, source))]
    Io {
        /// Where or what: the broker's `host:port`, a socket path, or what
        /// was under way. May be empty.
        context: String,
        /// The error itself.
        #[source]
        source: std::io::Error,
    },
    /// No connection or CONNACK within `connect_timeout`.
    #[error("timed out connecting")]
    Timeout,
    /// TLS could not be set up (certificates, keys, server name), or the
    /// handshake failed (an untrusted certificate, say: the source is
    /// then the [`rustls::Error`]).
    #[error("TLS: {}", with_optional_context(context, source.as_deref()))]
    Tls {
        /// What was being done: the file, the broker's `host:port`, …
        context: String,
        /// The error underneath, if there is one: a [`rustls::Error`], an
        /// [`std::io::Error`] reading a file, …
        #[source]
        source: Option<BoxError>,
    },
    /// The WebSocket upgrade failed (the broker answered an HTTP error, or
    /// chose no `mqtt` subprotocol), or a WebSocket protocol error.
    #[error("WebSocket: {}", with_context(context, source))]
    WebSocket {
        /// The URL being opened.
        context: String,
        /// The WebSocket library's error.
        #[source]
        source: BoxError,
    },
    /// The QUIC connection or its stream could not be opened.
    #[error("QUIC: {}", with_context(context, source))]
    Quic {
        /// The broker's `host:port`.
        context: String,
        /// quinn's error.
        #[source]
        source: BoxError,
    },
    /// The message will never be sent (too large for the broker, expired,
    /// not supported by it, or its session was discarded).
    #[error("message dropped: {0:?}")]
    Dropped(DropReason),
    /// The session machine refused the request as it stands (for example an
    /// invalid packet, or a QoS the broker does not support).
    #[error("{0}")]
    Send(#[from] SendError),
    /// An argument is not valid MQTT (topic, filter, …), or the options
    /// are not usable (a malformed connection URL, say).
    #[error("invalid: {0}")]
    Invalid(String),
}

impl From<std::io::Error> for ClientError {
    /// An I/O error with no further context.
    fn from(source: std::io::Error) -> Self {
        Self::Io {
            context: String::new(),
            source,
        }
    }
}

impl ClientError {
    /// An I/O error, and where it happened.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A TLS error with its cause.
    pub(crate) fn tls(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Tls {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A TLS error that has no other error underneath.
    pub(crate) fn tls_msg(context: impl Into<String>) -> Self {
        Self::Tls {
            context: context.into(),
            source: None,
        }
    }

    /// The [`std::io::ErrorKind`] of an [`ClientError::Io`] error.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the network failed or the
    /// broker is not there yet, or it refused for a passing reason (busy,
    /// unavailable, over quota). Not: bad credentials or certificates,
    /// invalid options, a closed client.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Timeout | Self::WebSocket { .. } | Self::Quic { .. } => true,
            Self::Refused(rc) => !is_final_refusal(*rc),
            _ => false,
        }
    }
}

/// CONNACK reason codes that retrying will not change: unsupported
/// version, bad client id, bad credentials, not authorized, banned, bad
/// authentication method, server moved.
pub(crate) fn is_final_refusal(rc: ReasonCode) -> bool {
    [0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C, 0x9C, 0x9D].contains(&rc.0)
}

fn with_context(context: &str, source: &dyn std::fmt::Display) -> String {
    if context.is_empty() {
        source.to_string()
    } else {
        format!("{context}: {source}")
    }
}

fn with_optional_context(context: &str, source: Option<&(dyn StdError + Send + Sync)>) -> String {
    match source {
        Some(s) => with_context(context, &s),
        None => context.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_source_kind_and_context() {
        let e = ClientError::io(
            "broker:1883",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::ConnectionRefused));
        assert!(e
            .to_string()
            .starts_with("connection failed: broker:1883: "));
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        // Without context, no stray separator.
        let e = ClientError::from(std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "connection failed: boom");
        // Not an I/O error: no kind.
        assert_eq!(ClientError::Closed.io_kind(), None);
    }

    #[test]
    fn tls_errors_keep_the_rustls_error() {
        let e = ClientError::tls("broker:8883", rustls::Error::DecryptError);
        let source = e.source().expect("a source");
        assert_eq!(
            source.downcast_ref::<rustls::Error>(),
            Some(&rustls::Error::DecryptError)
        );
        assert!(e.to_string().starts_with("TLS: broker:8883: "));
        let e = ClientError::tls_msg("no usable system root certificates");
        assert!(e.source().is_none());
        assert_eq!(e.to_string(), "TLS: no usable system root certificates");
    }

    #[test]
    fn only_passing_failures_are_transient() {
        assert!(ClientError::from(std::io::Error::other("x")).is_transient());
        assert!(ClientError::Timeout.is_transient());
        assert!(ClientError::Refused(ReasonCode::SERVER_UNAVAILABLE).is_transient());
        assert!(!ClientError::Refused(ReasonCode::NOT_AUTHORIZED).is_transient());
        assert!(!ClientError::Refused(ReasonCode::BAD_USER_NAME_OR_PASSWORD).is_transient());
        assert!(!ClientError::tls_msg("x").is_transient());
        assert!(!ClientError::Invalid("x".into()).is_transient());
    }
}
