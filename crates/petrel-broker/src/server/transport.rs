//! The byte streams a connection runs on. A transport only turns a socket
//! into bytes: the connection driver above it does the rest, whatever the
//! transport.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream a connection runs on.
pub(crate) trait Transport: Send + 'static + Sized {
    /// Its reading half, borrowed.
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// Its writing half, borrowed.
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// The socket while its connection hibernates: out of the runtime's
    /// reactor (whose registration costs a few hundred bytes a socket),
    /// watched by the hibernation thread instead.
    type Hibernating: mio::event::Source + Send + 'static;

    /// Both halves, to read and write at once.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
    /// Whether a connection on this transport can hibernate.
    fn can_hibernate(&self) -> bool;
    /// The peer's address, if known.
    fn peer(&self) -> Option<SocketAddr>;
    /// Leave the runtime's reactor.
    fn hibernate(self) -> io::Result<Self::Hibernating>;
    /// Come back to it (in the runtime's context).
    fn resume(hibernating: Self::Hibernating) -> io::Result<Self>;
}

impl Transport for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;
    type Hibernating = mio::net::TcpStream;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    fn can_hibernate(&self) -> bool {
        true
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        // Non-blocking, as tokio left it.
        Ok(mio::net::TcpStream::from_std(self.into_std()?))
    }

    fn resume(hibernating: Self::Hibernating) -> io::Result<Self> {
        Self::from_std(std::net::TcpStream::from(hibernating))
    }
}

/// Separate reading and writing halves (tests, in-memory pipes): they
/// don't hibernate.
#[cfg(test)]
pub(crate) struct Pipe<R, W>(pub(crate) R, pub(crate) W);

#[cfg(test)]
impl<R, W> Transport for Pipe<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Reader<'a> = &'a mut R;
    type Writer<'a> = &'a mut W;
    type Hibernating = mio::net::TcpStream;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        (&mut self.0, &mut self.1)
    }

    fn can_hibernate(&self) -> bool {
        false
    }

    fn peer(&self) -> Option<SocketAddr> {
        None
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        Err(io::Error::other("in-memory pipes don't hibernate"))
    }

    fn resume(_: Self::Hibernating) -> io::Result<Self> {
        Err(io::Error::other("in-memory pipes don't hibernate"))
    }
}
