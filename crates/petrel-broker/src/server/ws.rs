//! MQTT over WebSocket (RFC 6455), server side: the HTTP upgrade (path,
//! subprotocol `mqtt` or `mqttv3.1`), then binary frames carrying the MQTT
//! byte stream — a packet may span frames and a frame may hold several
//! packets, as the spec allows ([MQTT-6.0.0-2]). Pings are answered, a
//! close is echoed, text frames and frames larger than the maximum packet
//! size end the connection.
//!
//! The framing is ours (the handshake's HTTP parsing is httparse's): its
//! state is a few fields and an input buffer that is empty when the
//! connection is idle, so a hibernating WebSocket connection folds as
//! small as a TCP one ([`Fold`]), which a general WebSocket library's
//! stream does not allow.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Buf, BufMut, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::transport::{Fold, Folded};

/// The HTTP request of the upgrade may be at most this large.
const MAX_REQUEST: usize = 8192;
/// Most payload bytes we put in one frame.
const MAX_OUT_FRAME: usize = 64 * 1024;
/// The subprotocols we speak, in order of preference ([MQTT-6.0.0-4]).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Status codes of a close frame (RFC 6455 7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;

/// Why an upgrade was refused: the HTTP status, and what to log.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: &'static str,
    pub(crate) why: String,
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Self {
            status: "",
            why: e.to_string(),
        }
    }
}

fn refuse(status: &'static str, why: impl Into<String>) -> Refused {
    Refused {
        status,
        why: why.into(),
    }
}

/// What the upgrade request asked for.
struct Upgrade {
    key: String,
    subprotocol: &'static str,
    /// Its length in the buffer.
    len: usize,
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Check a complete upgrade request; `None` if it is not complete yet.
fn parse_upgrade(buf: &[u8], path: &str) -> Result<Option<Upgrade>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                "431 Request Header Fields Too Large",
                "too many headers",
            ))
        }
        Err(e) => return Err(refuse("400 Bad Request", format!("not HTTP: {e}"))),
    };
    if req.method != Some("GET") {
        return Err(refuse("405 Method Not Allowed", "not a GET"));
    }
    let target = req.path.unwrap_or("");
    let asked = target.split('?').next().unwrap_or("");
    if asked != path {
        return Err(refuse("404 Not Found", format!("no WebSocket at {asked}")));
    }
    if !has_token(header(&req, "upgrade"), "websocket")
        || !has_token(header(&req, "connection"), "upgrade")
    {
        return Err(refuse(
            "426 Upgrade Required",
            "plain HTTP, no WebSocket upgrade",
        ));
    }
    if header(&req, "sec-websocket-version").map(str::trim) != Some("13") {
        return Err(refuse(
            "426 Upgrade Required",
            "unsupported WebSocket version",
        ));
    }
    let Some(key) = header(&req, "sec-websocket-key").map(str::trim) else {
        return Err(refuse("400 Bad Request", "no Sec-WebSocket-Key"));
    };
    let offered: Vec<&str> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(subprotocol) = SUBPROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    else {
        return Err(refuse(
            "400 Bad Request",
            format!(
                "subprotocol {} is not mqtt",
                if offered.is_empty() {
                    "missing".to_string()
                } else {
                    format!("{offered:?}")
                }
            ),
        ));
    };
    Ok(Some(Upgrade {
        key: key.to_string(),
        subprotocol,
        len,
    }))
}

/// RFC 6455's Sec-WebSocket-Accept for a key.
pub(crate) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Answer an upgrade request on `io` (the caller bounds it in time):
/// a WebSocket stream, or the refusal (already answered in HTTP).
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    path: &str,
    max_frame: usize,
    peer: Option<SocketAddr>,
) -> Result<WsIo<S>, Refused> {
    let mut buf = BytesMut::with_capacity(1024);
    let upgrade = loop {
        let parsed = parse_upgrade(&buf, path).and_then(|u| match u {
            None if buf.len() >= MAX_REQUEST => Err(refuse(
                "431 Request Header Fields Too Large",
                "upgrade request too large",
            )),
            u => Ok(u),
        });
        match parsed {
            Ok(Some(u)) => break u,
            Ok(None) => {}
            Err(r) => {
                let answer = format!(
                    "HTTP/1.1 {}\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n",
                    r.status
                );
                let _ = io.write_all(answer.as_bytes()).await;
                let _ = io.shutdown().await;
                return Err(r);
            }
        }
        let room = MAX_REQUEST - buf.len();
        let n = (&mut io).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(refuse("", "the peer left during the WebSocket upgrade"));
        }
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        accept_key(&upgrade.key),
        upgrade.subprotocol
    );
    io.write_all(answer.as_bytes()).await?;
    io.flush().await?;
    // A client may send its CONNECT right behind the request.
    buf.advance(upgrade.len);
    Ok(WsIo {
        io,
        state: Box::new(WsState {
            rx: buf,
            max_frame: max_frame as u64,
            peer,
            ..WsState::default()
        }),
    })
}

/// The framing state of one connection.
#[derive(Debug, Default)]
pub(crate) struct WsState {
    /// Bytes read and not yet taken apart.
    rx: BytesMut,
    /// Payload bytes of the current data frame still to come.
    left: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame already unmasked (mod 4).
    offset: usize,
    /// A binary message is under way: continuation frames may follow.
    in_message: bool,
    /// Encoded frames waiting to be written.
    tx: BytesMut,
    /// We sent a close frame.
    closing: bool,
    /// The peer's close frame arrived, or its stream ended.
    ended: bool,
    max_frame: u64,
    peer: Option<SocketAddr>,
}

/// A WebSocket connection over a stream, as a byte stream.
pub(crate) struct WsIo<S> {
    io: S,
    state: Box<WsState>,
}

/// A frame header, read.
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: [u8; 4],
    /// Bytes of the header.
    size: usize,
}

fn parse_header(rx: &[u8]) -> Result<Option<Header>, (u16, &'static str)> {
    if rx.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (rx[0], rx[1]);
    if b0 & 0x70 != 0 {
        return Err((CLOSE_PROTOCOL, "reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        // RFC 6455 5.1: a client masks every frame.
        return Err((CLOSE_PROTOCOL, "unmasked frame from a client"));
    }
    let (len, at) = match b1 & 0x7f {
        126 if rx.len() >= 4 => (u64::from(u16::from_be_bytes([rx[2], rx[3]])), 4),
        127 if rx.len() >= 10 => {
            let mut b = [0; 8];
            b.copy_from_slice(&rx[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if rx.len() < at + 4 {
        return Ok(None);
    }
    let mut mask = [0; 4];
    mask.copy_from_slice(&rx[at..at + 4]);
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        len,
        mask,
        size: at + 4,
    }))
}

/// Append one frame to `tx` (a server's frames are not masked).
fn put_frame(tx: &mut BytesMut, opcode: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    tx.reserve(len + 10);
    tx.put_u8(0x80 | opcode);
    if len < 126 {
        tx.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        tx.put_u8(126);
        tx.put_u16(len as u16);
    } else {
        tx.put_u8(127);
        tx.put_u64(len as u64);
    }
    for p in payload {
        tx.put_slice(p);
    }
}

impl WsState {
    /// Queue a close frame, once.
    fn close(&mut self, code: u16) {
        if !self.closing {
            self.closing = true;
            put_frame(&mut self.tx, 0x8, &[&code.to_be_bytes()]);
        }
    }

    /// A frame the peer should not have sent: close with `code`, log, and
    /// fail the stream.
    fn violation(&mut self, code: u16, why: &'static str) -> io::Error {
        let peer = self.peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        tracing::warn!(%peer, why, "websocket: closing the connection");
        self.close(code);
        self.ended = true;
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Take apart what is in `rx`, writing payload to `out`. Ready(true)
    /// when `out` got bytes or the stream ended; Ready(false) when more
    /// input is needed.
    fn take(&mut self, out: &mut ReadBuf<'_>) -> io::Result<bool> {
        loop {
            if self.ended {
                return Ok(true);
            }
            if self.left > 0 {
                if self.rx.is_empty() {
                    return Ok(false);
                }
                let n = (self.left.min(self.rx.len() as u64) as usize).min(out.remaining());
                let dst = out.initialize_unfilled_to(n);
                for (i, (d, s)) in dst.iter_mut().zip(&self.rx[..n]).enumerate() {
                    *d = s ^ self.mask[(self.offset + i) % 4];
                }
                out.advance(n);
                self.rx.advance(n);
                self.offset = (self.offset + n) % 4;
                self.left -= n as u64;
                return Ok(true);
            }
            let header = match parse_header(&self.rx) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(false),
                Err((code, why)) => return Err(self.violation(code, why)),
            };
            match header.opcode {
                0x0 | 0x2 => {
                    if (header.opcode == 0x0) != self.in_message {
                        return Err(
                            self.violation(CLOSE_PROTOCOL, "continuation frame out of place")
                        );
                    }
                    if header.len > self.max_frame {
                        return Err(self.violation(
                            CLOSE_TOO_BIG,
                            "frame larger than the maximum packet size",
                        ));
                    }
                    self.rx.advance(header.size);
                    self.in_message = !header.fin;
                    self.left = header.len;
                    self.mask = header.mask;
                    self.offset = 0;
                }
                0x1 => return Err(self.violation(CLOSE_UNSUPPORTED, "text frame (MQTT is binary)")),
                0x8..=0xA => {
                    if !header.fin || header.len > 125 {
                        return Err(self.violation(CLOSE_PROTOCOL, "malformed control frame"));
                    }
                    let end = header.size + header.len as usize;
                    if self.rx.len() < end {
                        return Ok(false);
                    }
                    let mut payload = self.rx.split_to(end);
                    payload.advance(header.size);
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= header.mask[i % 4];
                    }
                    match header.opcode {
                        0x8 => {
                            // Echo the peer's status, then the stream ends.
                            let code = if payload.len() >= 2 {
                                u16::from_be_bytes([payload[0], payload[1]])
                            } else {
                                CLOSE_NORMAL
                            };
                            self.close(code);
                            self.ended = true;
                        }
                        0x9 => put_frame(&mut self.tx, 0xA, &[&payload]),
                        _ => {} // a pong
                    }
                }
                _ => return Err(self.violation(CLOSE_PROTOCOL, "unknown opcode")),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Write the queued frames; Ready once all are written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.state.tx.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.state.tx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.state.tx.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.state.tx.capacity() > 4096 {
            self.state.tx = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let got = this.state.take(buf);
            // Pongs and close frames go out as soon as the socket takes them.
            let sent = this.poll_send(cx);
            match got {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Poll::Ready(Err(e)) = sent {
                return Poll::Ready(Err(e));
            }
            let st = &mut *this.state;
            if st.rx.is_empty() && st.rx.capacity() > 8192 {
                st.rx = BytesMut::new();
            }
            // What the current frame still needs, within reason.
            let want = if st.left > 0 {
                (st.left as usize).clamp(256, 64 * 1024)
            } else {
                256
            };
            if st.rx.capacity() - st.rx.len() < want {
                st.rx.reserve(want);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut st.rx) {
                Poll::Ready(Ok(0)) => {
                    // The stream ended without a close frame.
                    st.ended = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Earlier frames first: nothing more is taken while the socket is
        // full.
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map_ok(|()| 0),
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(bufs.len());
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(MAX_OUT_FRAME - n);
            if take > 0 {
                parts.push(&b[..take]);
                n += take;
            }
            if n == MAX_OUT_FRAME {
                break;
            }
        }
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        put_frame(&mut this.state.tx, 0x2, &parts);
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.state.close(CLOSE_NORMAL);
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_shutdown(cx),
            other => other,
        }
    }
}

impl<S: Fold> Fold for WsIo<S> {
    type Folded = Folded<S::Folded, Box<WsState>>;

    fn settled(&self) -> bool {
        self.state.tx.is_empty() && self.io.settled()
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.io.peer()
    }

    fn fold(mut self) -> io::Result<Self::Folded> {
        // An idle connection keeps no buffers.
        if self.state.rx.is_empty() {
            self.state.rx = BytesMut::new();
        }
        self.state.tx = BytesMut::new();
        Ok(Folded {
            io: self.io.fold()?,
            state: self.state,
        })
    }

    fn unfold(folded: Self::Folded) -> io::Result<Self> {
        Ok(Self {
            io: S::unfold(folded.io)?,
            state: folded.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
