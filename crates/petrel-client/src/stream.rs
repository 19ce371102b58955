//! The byte stream a client runs on, and how an application opens one of
//! its own ([`Connector`]): what the options and the transports both name.

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream, whatever the transport.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A stream being opened by a [`Connector`].
pub type Opening =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;

/// Opens a byte stream of the application's own making for
/// [`crate::ConnectOptions::connector`] (an in-process pipe to a broker in the
/// same program, say), each time the client connects.
pub trait Connector: Send + Sync + std::fmt::Debug + 'static {
    /// Open a new stream to the broker.
    fn open(&self) -> Opening;
}
