//! One QUIC connection as the rest of the server sees it: its protocol
//! state (quinn-proto's, driven by the endpoint task), the MQTT stream as
//! a byte stream for the connection driver, and its folded form while the
//! connection hibernates.
//!
//! The state sits behind one lock per connection, shared by the endpoint
//! task (datagrams in, datagrams out, timers) and the connection's own
//! task (reading and writing the stream). What the connection's task does
//! that needs datagrams sent (data written, flow-control credit given
//! back) it reports with [`Shared::poke`], and the endpoint task sends
//! them. No task, channel or buffer of its own: that is what lets a quiet
//! QUIC connection cost little more than its protocol state.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use quinn_proto::{ConnectionError, ConnectionHandle, ReadError, StreamId, WriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::super::transport::{Sleeper, Transport};
use crate::core::lock;

/// How long a connection whose MQTT side is done waits for the peer to
/// acknowledge what was written last (a DISCONNECT, a refusing CONNACK)
/// before it closes anyway.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// What connections tell the endpoint task.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Connections with something to send or a state to look at.
    dirty: Mutex<Vec<Arc<Conn>>>,
    /// Wakes the endpoint task.
    pub(super) notify: Notify,
}

impl Shared {
    /// Ask the endpoint task to look at `conn` (once, however often asked
    /// before it does).
    pub(super) fn poke(&self, conn: &Arc<Conn>) {
        if !conn.queued.swap(true, Ordering::AcqRel) {
            lock(&self.dirty).push(conn.clone());
            self.notify.notify_one();
        }
    }

    /// The connections poked since the last call.
    pub(super) fn take(&self) -> Vec<Arc<Conn>> {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        for c in &dirty {
            c.queued.store(false, Ordering::Release);
        }
        dirty
    }
}

/// A QUIC connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) handle: ConnectionHandle,
    pub(super) state: Mutex<State>,
    /// In [`Shared::dirty`] already.
    queued: AtomicBool,
    pub(super) shared: Arc<Shared>,
}

/// A connection's state.
#[derive(Debug)]
pub(super) struct State {
    pub(super) conn: quinn_proto::Connection,
    /// The MQTT stream: the first bidirectional stream the client opens.
    pub(super) stream: Option<StreamId>,
    /// Handshake complete.
    pub(super) connected: bool,
    /// Why it ended, once it has.
    pub(super) lost: Option<ConnectionError>,
    /// Data (or the stream's end) came since the last read that found none.
    pub(super) readable: bool,
    /// Woken when the stream may be read, the handshake completes or the
    /// connection ends: the connection's task, or its hibernation.
    pub(super) reader: Option<Waker>,
    /// Woken when the stream may be written again.
    pub(super) writer: Option<Waker>,
    /// The MQTT side is done: close once the peer has what was written
    /// (or at this time).
    pub(super) linger: Option<Instant>,
    /// The deadline the endpoint task's timer holds for it.
    pub(super) timer: Option<Instant>,
}

impl Conn {
    pub(super) fn new(
        handle: ConnectionHandle,
        conn: quinn_proto::Connection,
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            state: Mutex::new(State {
                conn,
                stream: None,
                connected: false,
                lost: None,
                readable: false,
                reader: None,
                writer: None,
                linger: None,
                timer: None,
            }),
            queued: AtomicBool::new(false),
            shared,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl State {
    /// Wake whoever waits to read (or for the handshake).
    pub(super) fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    /// Wake whoever waits to write.
    pub(super) fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// The connection ended: everyone waiting learns it.
    pub(super) fn end(&mut self, why: ConnectionError) {
        self.lost.get_or_insert(why);
        self.wake_reader();
        self.wake_writer();
    }
}

fn store(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// What reading or writing a connection that ended gives.
fn ended(why: &ConnectionError) -> io::Error {
    let kind = match why {
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::ApplicationClosed(_)
        | ConnectionError::ConnectionClosed(_)
        | ConnectionError::Reset => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("QUIC connection: {why}"))
}

/// A connection the server holds: when the holder lets go, the stream is
/// finished and the connection closes once the peer has what was written.
#[derive(Debug)]
pub(crate) struct Held(pub(super) Arc<Conn>);

impl Drop for Held {
    fn drop(&mut self) {
        let conn = &self.0;
        let mut st = conn.lock();
        let now = Instant::now();
        st.linger = Some(now);
        if let Some(id) = st.stream.filter(|_| st.lost.is_none()) {
            let _ = st.conn.recv_stream(id).stop(0u32.into());
            // Unless the peer stopped reading already, wait (a little) for
            // it to have what was written.
            if st.conn.send_stream(id).finish().is_ok() {
                st.linger = Some(now + LINGER);
            }
        }
        drop(st);
        conn.shared.poke(conn);
    }
}

impl Held {
    /// Wait until the handshake is complete and the client opened its
    /// stream; why not, if the connection ended first.
    pub(crate) async fn ready(&self) -> Result<(), String> {
        std::future::poll_fn(|cx| {
            let mut st = self.0.lock();
            if let Some(why) = &st.lost {
                return Poll::Ready(Err(why.to_string()));
            }
            if st.connected && st.stream.is_some() {
                return Poll::Ready(Ok(()));
            }
            store(&mut st.reader, cx);
            Poll::Pending
        })
        .await
    }

    /// The certificate the client presented, if any (DER).
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        let st = self.0.lock();
        let identity = st.conn.crypto_session().peer_identity()?;
        let chain = identity
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        chain.first().map(|c| c.to_vec())
    }

    /// Where the client is now (it may have moved).
    pub(crate) fn remote(&self) -> SocketAddr {
        self.0.lock().conn.remote_address()
    }
}

/// An MQTT connection's stream over QUIC.
#[derive(Debug)]
pub(crate) struct QuicStream(pub(crate) Held);

/// One side of [`QuicStream`]: both read and write the same state.
pub(crate) struct Half<'a>(&'a Arc<Conn>);

impl AsyncRead for Half<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let conn = self.0;
        let mut st = conn.lock();
        let Some(id) = st.stream else {
            return Poll::Ready(Err(io::Error::other("no QUIC stream")));
        };
        let mut recv = st.conn.recv_stream(id);
        let mut chunks = match recv.read(true) {
            Ok(c) => c,
            // Finished and read to the end, or stopped: nothing more.
            Err(_) => return Poll::Ready(Ok(())),
        };
        let mut got = false;
        let outcome = loop {
            if buf.remaining() == 0 {
                break Ok(());
            }
            match chunks.next(buf.remaining()) {
                Ok(Some(chunk)) => {
                    buf.put_slice(&chunk.bytes);
                    got = true;
                }
                Ok(None) => break Ok(()),
                Err(ReadError::Blocked) => break Err(None),
                Err(ReadError::Reset(code)) => {
                    break Err(Some(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("QUIC stream reset by peer ({code})"),
                    )))
                }
            }
        };
        let transmit = chunks.finalize().should_transmit();
        match outcome {
            Err(None) if !got => {
                st.readable = false;
                if let Some(why) = &st.lost {
                    return Poll::Ready(Err(ended(why)));
                }
                store(&mut st.reader, cx);
                drop(st);
                if transmit {
                    conn.shared.poke(conn);
                }
                Poll::Pending
            }
            Err(Some(e)) if !got => Poll::Ready(Err(e)),
            _ => {
                drop(st);
                if transmit {
                    conn.shared.poke(conn);
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Half<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let conn = self.0;
        let mut st = conn.lock();
        if let Some(why) = &st.lost {
            return Poll::Ready(Err(ended(why)));
        }
        let Some(id) = st.stream else {
            return Poll::Ready(Err(io::Error::other("no QUIC stream")));
        };
        let mut written = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            match st.conn.send_stream(id).write(b) {
                Ok(n) => {
                    written += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(WriteError::Blocked) => break,
                Err(e) => {
                    if written > 0 {
                        break;
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("QUIC stream: {e}"),
                    )));
                }
            }
        }
        if written == 0 && bufs.iter().any(|b| !b.is_empty()) {
            store(&mut st.writer, cx);
            return Poll::Pending;
        }
        drop(st);
        conn.shared.poke(conn);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is the endpoint task's to send.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let conn = self.0;
        let mut st = conn.lock();
        if let Some(id) = st.stream {
            let _ = st.conn.send_stream(id).finish();
        }
        drop(st);
        conn.shared.poke(conn);
        Poll::Ready(Ok(()))
    }
}

/// A QUIC connection while its MQTT connection hibernates: the protocol
/// state stays with the endpoint task (which goes on answering the peer);
/// only the connection's task and buffers go.
#[derive(Debug)]
pub(crate) struct Asleep(Held);

impl Sleeper for Asleep {
    fn watch(&mut self, _: &mio::Registry, _: mio::Token, waker: &Waker) -> io::Result<()> {
        let mut st = self.0 .0.lock();
        if st.readable || st.lost.is_some() {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "readable"));
        }
        st.reader = Some(waker.clone());
        Ok(())
    }

    fn unwatch(&mut self, _: &mio::Registry) {
        self.0 .0.lock().reader = None;
    }
}

impl Transport for QuicStream {
    type Reader<'a> = Half<'a>;
    type Writer<'a> = Half<'a>;
    type Hibernating = Asleep;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        (Half(&self.0 .0), Half(&self.0 .0))
    }

    fn can_hibernate(&self) -> bool {
        true
    }

    fn peer(&self) -> Option<SocketAddr> {
        Some(self.0.remote())
    }

    fn hibernate(self) -> io::Result<Self::Hibernating> {
        Ok(Asleep(self.0))
    }

    fn resume(hibernating: Self::Hibernating) -> io::Result<Self> {
        Ok(Self(hibernating.0))
    }
}
