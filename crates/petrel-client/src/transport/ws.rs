//! MQTT over WebSocket, client side: the upgrade (subprotocol `mqtt`),
//! then the MQTT byte stream in binary frames, adapted to `AsyncRead` and
//! `AsyncWrite` so the connection task reads and writes it like a socket.
//!
//! MQTT packets need not line up with frames ([MQTT-6.0.0-2]): a packet may
//! span frames and a frame may hold several, so reading hands out the
//! frames' bytes as one stream, and writing sends whatever the task writes
//! as a frame.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::error::ClientError;

/// Most bytes sent in one frame: a broker may refuse frames larger than
/// its maximum packet size, and packets may span frames anyway.
const MAX_OUT_FRAME: usize = 64 * 1024;

/// The WebSocket subprotocol of MQTT ([MQTT-6.0.0-3]).
const SUBPROTOCOL: &str = "mqtt";

/// Upgrade `stream` to a WebSocket at `url` (`ws://host:port/path`, or
/// `wss://` over TLS: the scheme only shapes the request), asking for the
/// `mqtt` subprotocol. Frames and messages larger than `max_in` bytes are
/// refused.
pub(crate) async fn connect<S>(
    stream: S,
    url: &str,
    max_in: usize,
) -> Result<WsStream<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |e: WsError| ClientError::WebSocket {
        context: url.to_string(),
        source: Box::new(e),
    };
    let mut request = url.into_client_request().map_err(failed)?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_in))
        .max_frame_size(Some(max_in));
    // tungstenite checks that the broker chose the subprotocol offered.
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| match e {
                WsError::Io(e) => ClientError::io(format!("{url}: WebSocket upgrade"), e),
                e => failed(e),
            })?;
    Ok(WsStream {
        inner: ws,
        rx: Bytes::new(),
        unflushed: false,
        eof: false,
    })
}

/// A WebSocket carrying one MQTT byte stream.
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// Received bytes not read yet (the rest of a frame).
    rx: Bytes,
    /// A frame was queued but not yet flushed to the socket.
    unflushed: bool,
    /// The broker closed the WebSocket.
    eof: bool,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Push out a frame still waiting in the WebSocket's buffer.
    fn poll_unflushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(to_io)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The connection task writes only while it has bytes to write, but
        // always reads: a frame the socket could not take at once goes out
        // from here (the waker is registered either way).
        if let Poll::Ready(Err(e)) = this.poll_unflushed(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if !this.rx.is_empty() {
                let n = this.rx.len().min(buf.remaining());
                buf.put_slice(&this.rx[..n]);
                this.rx.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.rx = data,
                // tungstenite answers pings (and echoes a close) itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => this.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT travels in binary frames",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // One frame at a time in the WebSocket's buffer: backpressure
        // reaches the writer.
        ready!(this.poll_unflushed(cx))?;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_OUT_FRAME);
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        this.unflushed = true;
        // Most often the socket takes it at once; if not, the next write,
        // flush or read sends it.
        if let Poll::Ready(r) = this.poll_unflushed(cx) {
            r?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_unflushed(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_unflushed(cx))?;
        // A close frame, flushed; the broker closes the TCP connection.
        match ready!(Pin::new(&mut this.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
