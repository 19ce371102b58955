//! The byte streams a connection runs on. A transport only turns a socket
//! into bytes: the connection driver above it does the rest, whatever the
//! transport. TCP and Unix sockets are streams already; TLS (`tls`)
//! and WebSocket (`ws`) are layers over one, and a layered stream
//! reaches the driver as [`Joined`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

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
    /// The transport while its connection hibernates: a socket out of the
    /// runtime's reactor (whose registration costs a few hundred bytes a
    /// socket), watched by the hibernation thread instead, or a QUIC
    /// connection whose endpoint wakes it.
    type Hibernating: Sleeper;

    /// Both halves, to read and write at once.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
    /// Whether a connection on this transport can hibernate.
    fn can_hibernate(&self) -> bool;
    /// The peer's address, if it has one.
    fn peer(&self) -> Option<SocketAddr>;
    /// Whether nothing waits inside the transport to be written (a layer's
    /// own buffers): only then may the connection hibernate.
    fn settled(&mut self) -> bool {
        true
    }
    /// Leave the runtime's reactor.
    fn hibernate(self) -> io::Result<Self::Hibernating>;
    /// Come back to it (in the runtime's context).
    fn resume(hibernating: Self::Hibernating) -> io::Result<Self>;
}

/// A transport's folded form, as the hibernation thread watches it: a
/// socket in its epoll set, or (QUIC, whose connections share one socket)
/// a waker the connection's own state holds.
pub(crate) trait Sleeper: Send + 'static {
    /// Wake `waker` (or report `token` to the watcher's registry) when the
    /// peer sends something or goes away. An error means it must not
    /// sleep: it is readable already, or can't be watched.
    fn watch(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        waker: &std::task::Waker,
    ) -> io::Result<()>;
    /// Stop watching.
    fn unwatch(&mut self, registry: &mio::Registry);
}

impl<S: mio::event::Source + Send + 'static> Sleeper for S {
    fn watch(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        _: &std::task::Waker,
    ) -> io::Result<()> {
        registry.register(self, token, mio::Interest::READABLE)
    }

    fn unwatch(&mut self, registry: &mio::Registry) {
        let _ = registry.deregister(self);
    }
}

/// A stream a layer (TLS, WebSocket) can run over, and that can fold
/// itself out of the runtime's reactor with the layer's state.
pub(crate) trait Fold: AsyncRead + AsyncWrite + Unpin + Send + 'static + Sized {
    /// Its folded form.
    type Folded: mio::event::Source + Send + 'static;
    /// Whether nothing waits in its own buffers to be written.
    fn settled(&self) -> bool;
    /// The peer's address, if it has one.
    fn peer(&self) -> Option<SocketAddr>;
    /// Leave the runtime's reactor.
    fn fold(self) -> io::Result<Self::Folded>;
    /// Come back to it (in the runtime's context).
    fn unfold(folded: Self::Folded) -> io::Result<Self>;
}

impl Fold for TcpStream {
    type Folded = mio::net::TcpStream;

    fn settled(&self) -> bool {
        true
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }

    fn fold(self) -> io::Result<Self::Folded> {
        // Non-blocking, as tokio left it.
        Ok(mio::net::TcpStream::from_std(self.into_std()?))
    }

    fn unfold(folded: Self::Folded) -> io::Result<Self> {
        Self::from_std(std::net::TcpStream::from(folded))
    }
}

impl Fold for UnixStream {
    type Folded = mio::net::UnixStream;

    fn settled(&self) -> bool {
        true
    }

    fn peer(&self) -> Option<SocketAddr> {
        None
    }

    fn fold(self) -> io::Result<Self::Folded> {
        Ok(mio::net::UnixStream::from_std(self.into_std()?))
    }

    fn unfold(folded: Self::Folded) -> io::Result<Self> {
        Self::from_std(std::os::unix::net::UnixStream::from(folded))
    }
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
        Fold::peer(self)
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        self.fold()
    }

    fn resume(hibernating: Self::Hibernating) -> io::Result<Self> {
        Self::unfold(hibernating)
    }
}

impl Transport for UnixStream {
    type Reader<'a> = tokio::net::unix::ReadHalf<'a>;
    type Writer<'a> = tokio::net::unix::WriteHalf<'a>;
    type Hibernating = mio::net::UnixStream;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    fn can_hibernate(&self) -> bool {
        true
    }

    fn peer(&self) -> Option<SocketAddr> {
        Fold::peer(self)
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        self.fold()
    }

    fn resume(hibernating: Self::Hibernating) -> io::Result<Self> {
        Self::unfold(hibernating)
    }
}

/// A layered stream (TLS, WebSocket) as a transport: one object that
/// both halves use in turn. The driver polls its halves from one task, one
/// at a time, so the lock is never contended.
pub(crate) struct Joined<S>(Mutex<S>);

impl<S> Joined<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self(Mutex::new(stream))
    }

    fn into_inner(self) -> S {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// One half of a [`Joined`] stream.
pub(crate) struct Half<'a, S>(&'a Mutex<S>);

impl<S> Half<'_, S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Half<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Half<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

impl<S: Fold> Transport for Joined<S> {
    type Reader<'a> = Half<'a, S>;
    type Writer<'a> = Half<'a, S>;
    type Hibernating = S::Folded;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        (Half(&self.0), Half(&self.0))
    }

    fn can_hibernate(&self) -> bool {
        true
    }

    fn settled(&mut self) -> bool {
        self.0.get_mut().is_ok_and(|s| s.settled())
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.0.lock().ok().and_then(|s| s.peer())
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        self.into_inner().fold()
    }

    fn resume(hibernating: Self::Hibernating) -> io::Result<Self> {
        Ok(Self::new(S::unfold(hibernating)?))
    }
}

/// A transport whose peer is not the socket's: the address a PROXY
/// header named, kept through hibernation.
pub(crate) struct Proxied<T> {
    pub(crate) io: T,
    pub(crate) peer: SocketAddr,
}

impl<T: Transport> Transport for Proxied<T> {
    type Reader<'a> = T::Reader<'a>;
    type Writer<'a> = T::Writer<'a>;
    type Hibernating = ProxiedAsleep<T::Hibernating>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.io.halves()
    }

    fn can_hibernate(&self) -> bool {
        self.io.can_hibernate()
    }

    fn peer(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    fn settled(&mut self) -> bool {
        self.io.settled()
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        Ok(ProxiedAsleep {
            io: self.io.hibernate()?,
            peer: self.peer,
        })
    }

    fn resume(hibernating: Self::Hibernating) -> io::Result<Self> {
        Ok(Self {
            io: T::resume(hibernating.io)?,
            peer: hibernating.peer,
        })
    }
}

/// A [`Proxied`] transport, folded.
pub(crate) struct ProxiedAsleep<F> {
    io: F,
    peer: SocketAddr,
}

impl<F: Sleeper> Sleeper for ProxiedAsleep<F> {
    fn watch(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        waker: &std::task::Waker,
    ) -> io::Result<()> {
        self.io.watch(registry, token, waker)
    }

    fn unwatch(&mut self, registry: &mio::Registry) {
        self.io.unwatch(registry);
    }
}

/// A stream and a layer's state, folded: the stream's folded form is what
/// the hibernation thread watches.
pub(crate) struct Folded<F, T> {
    pub(crate) io: F,
    pub(crate) state: T,
}

impl<F: mio::event::Source, T> mio::event::Source for Folded<F, T> {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.io.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.io.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.io.deregister(registry)
    }
}

/// Separate reading and writing halves (in-memory pipes): they don't
/// hibernate.
pub(crate) struct Pipe<R, W>(pub(crate) R, pub(crate) W);

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
