//! Node-to-node links: length-delimited frames of bincode over TCP.
//!
//! Each node listens on its `bind` address. The two ends prove to each
//! other that they know the cluster's secret before anything else is read:
//! each sends a random challenge, and the other answers with HMAC-SHA256
//! of it (and of who answers) under the secret. A node that can't answer
//! is not read from; a listener that can't is not sent anything. Then it sends requests, each with a number, and the
//! listener answers each by number, in any order.
//!
//! A node keeps two links to each peer: one for consensus (Raft's
//! messages, route writes sent to the leader), one for the messages it
//! forwards, so that a flood of messages never delays a heartbeat.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::sync::lock;
use crate::types::{NodeId, Proposal, TypeConfig};

/// The first frame a listener sends: a challenge.
#[derive(Serialize, Deserialize)]
pub(crate) struct Challenge {
    pub(crate) nonce: [u8; 32],
}

/// The connecting node's answer, and its own challenge.
#[derive(Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) from: NodeId,
    pub(crate) mac: Vec<u8>,
    pub(crate) nonce: [u8; 32],
}

/// The listener's answer to the connecting node's challenge.
#[derive(Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) node: NodeId,
    pub(crate) mac: Vec<u8>,
}

/// What one node asks another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A route change, to the leader: answered when committed, with its
    /// log index.
    Write(Proposal),
    /// Answer once this node has applied the log up to this index.
    Applied(u64),
    /// A membership change, to the leader: answered once made, with the
    /// membership after.
    Change(Change),
    /// A message published on the sending node, in the store's form.
    Forward(Vec<u8>),
    /// The session of a client that connected to the receiving node, from
    /// the node that had it (`None`: it had none, or it ended there).
    Adopt {
        /// The client id.
        client: String,
        /// The session, in [`petrel_broker::Broker::export_session`]'s
        /// form.
        session: Option<Vec<u8>>,
        /// This hand-on's number, the same when it is sent again: taken
        /// once.
        id: u64,
        /// The session belongs to another user than the one who connected:
        /// not handed on, and the CONNECT is refused.
        not_yours: bool,
    },
}

/// A change of the cluster's members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Change {
    /// Add node `id`, listening at `addr`.
    Join {
        /// Its number.
        id: NodeId,
        /// Its node-to-node listener.
        addr: String,
    },
    /// Take node `id` out.
    Leave {
        /// Its number.
        id: NodeId,
    },
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Append(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    Snapshot(InstallSnapshotResponse<NodeId>),
    /// Committed at this log index, with what applying it answered.
    Written(u64, crate::types::Applied),
    /// Not the leader; the leader, if known.
    NotLeader(Option<NodeId>),
    /// The membership after a change (`1,2,3,4L`).
    Changed(String),
    Done,
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Frame<T> {
    pub(crate) id: u64,
    pub(crate) body: T,
}

pub(crate) type Wire = Framed<TcpStream, LengthDelimitedCodec>;

/// A framed stream with frames of at most `max` bytes. TCP keepalive
/// finds a peer that went away without closing (its machine gone, or cut
/// off) within about half a minute, so neither end keeps a dead link's
/// tasks.
pub(crate) fn framed(stream: TcpStream, max: usize) -> Wire {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec();
    Framed::new(stream, codec)
}

pub(crate) fn encode<T: Serialize>(v: &T) -> io::Result<bytes::Bytes> {
    bincode::serialize(v)
        .map(bytes::Bytes::from)
        .map_err(io::Error::other)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> io::Result<T> {
    bincode::deserialize(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The answer to `nonce` under `secret`.
pub(crate) fn answer(secret: &[u8], nonce: &[u8; 32], from: NodeId) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(nonce);
    mac.update(&from.to_be_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Whether `mac` is node `from`'s answer to `nonce` under `secret`.
pub(crate) fn verify(secret: &[u8], nonce: &[u8; 32], from: NodeId, mac: &[u8]) -> bool {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    m.update(nonce);
    m.update(&from.to_be_bytes());
    m.verify_slice(mac).is_ok()
}

fn nonce() -> io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).map_err(io::Error::other)?;
    Ok(n)
}

/// The largest frame before the other end has proved it knows the
/// secret: the handshake's are a few dozen bytes, and nobody unproven may
/// make a node buffer more.
const HANDSHAKE_FRAME: usize = 1024;

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a failed connection to a peer the next one is tried.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// One link to a peer, connected when first used and again after a
/// failure. Requests go out in the order they are made.
#[derive(Debug)]
pub(crate) struct Link {
    me: NodeId,
    addr: String,
    secret: Arc<Vec<u8>>,
    max_frame: usize,
    next_id: AtomicU64,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Frame<Request>>,
    pending: Pending,
    /// Set when the connection's tasks end.
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// Dropped with the connection: its reader stops.
    _stop: oneshot::Sender<()>,
    /// Stopped with the connection, so nothing queued on it goes out
    /// after (a newer connection may be carrying what follows).
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// The answer to one request, when it comes. Dropped unanswered (timed
/// out), it leaves nothing behind in its link.
#[derive(Debug)]
pub(crate) struct Answer {
    id: u64,
    rx: oneshot::Receiver<Response>,
    pending: Pending,
}

impl std::future::Future for Answer {
    type Output = Result<Response, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

impl Link {
    pub(crate) fn new(me: NodeId, addr: String, secret: Arc<Vec<u8>>, max_frame: usize) -> Self {
        Self {
            me,
            addr,
            secret,
            max_frame,
            next_id: AtomicU64::new(1),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Send `request`; the answer, or an error if the link failed or no
    /// answer came within `timeout`.
    pub(crate) async fn call(&self, request: Request, timeout: Duration) -> io::Result<Response> {
        let rx = self.send(request).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "link closed",
            )),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
        }
    }

    /// Drop the connection: the next request connects again.
    pub(crate) async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    /// Queue `request` on the connection (made first if there is none);
    /// its answer comes on the receiver.
    pub(crate) async fn send(&self, request: Request) -> io::Result<Answer> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_none_or(|c| c.dead.load(Ordering::Relaxed)) {
            *conn = None;
            *conn = Some(self.connect().await?);
        }
        let c = conn.as_ref().expect("connected above");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&c.pending).insert(id, tx);
        let answer = Answer {
            id,
            rx,
            pending: c.pending.clone(),
        };
        if c.tx.send(Frame { id, body: request }).is_err() {
            c.dead.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "link closed",
            ));
        }
        Ok(answer)
    }

    async fn connect(&self) -> io::Result<Conn> {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tokio::time::sleep(RECONNECT_AFTER).await;
                    return Err(e);
                }
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            };
        let mut wire = framed(stream, HANDSHAKE_FRAME);
        let challenge: Challenge = match tokio::time::timeout(CONNECT_TIMEOUT, wire.next()).await {
            Ok(Some(Ok(b))) => decode(&b)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "no challenge",
                ))
            }
        };
        let mine = nonce()?;
        let hello = Hello {
            from: self.me,
            mac: answer(&self.secret, &challenge.nonce, self.me),
            nonce: mine,
        };
        wire.send(encode(&hello)?).await?;
        let welcome: Welcome = match tokio::time::timeout(CONNECT_TIMEOUT, wire.next()).await {
            Ok(Some(Ok(b))) => decode(&b)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "refused (is the cluster secret the same on both nodes?)",
                ))
            }
        };
        if !verify(&self.secret, &mine, welcome.node, &welcome.mac) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} does not know the cluster secret", self.addr),
            ));
        }
        wire.codec_mut().set_max_frame_length(self.max_frame);
        let (mut sink, mut stream) = wire.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame<Request>>();
        let pending: Pending = Arc::default();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, mut stopped) = oneshot::channel::<()>();
        // Writer: everything queued, one flush per batch.
        let w_dead = dead.clone();
        let writer = tokio::spawn(async move {
            write_frames(&mut sink, &mut rx).await;
            w_dead.store(true, Ordering::Relaxed);
        });
        // Reader: answers to whoever waits.
        let r_pending = pending.clone();
        let r_dead = dead.clone();
        tokio::spawn(async move {
            loop {
                let b = tokio::select! {
                    b = stream.next() => b,
                    _ = &mut stopped => None,
                };
                let Some(Ok(b)) = b else { break };
                let Ok(f) = decode::<Frame<Response>>(&b) else {
                    break;
                };
                if let Some(tx) = lock(&r_pending).remove(&f.id) {
                    let _ = tx.send(f.body);
                }
            }
            r_dead.store(true, Ordering::Relaxed);
            // Whoever waits learns the link failed.
            lock(&r_pending).clear();
        });
        Ok(Conn {
            tx,
            pending,
            dead,
            _stop: stop,
            writer,
        })
    }
}

/// Write the frames `rx` gives to `sink`, whatever waits at once in one
/// flush, until `rx` ends or the link fails.
pub(crate) async fn write_frames<T: Serialize>(
    sink: &mut futures::stream::SplitSink<Wire, bytes::Bytes>,
    rx: &mut mpsc::UnboundedReceiver<Frame<T>>,
) {
    while let Some(f) = rx.recv().await {
        let mut batch = vec![f];
        while let Ok(f) = rx.try_recv() {
            batch.push(f);
            if batch.len() >= 256 {
                break;
            }
        }
        for f in batch {
            let Ok(b) = encode(&f) else { continue };
            if sink.feed(b).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The listener's side of a link, after the challenge: the node that
/// connected, or why it may not.
pub(crate) async fn accept(
    stream: TcpStream,
    me: NodeId,
    secret: &[u8],
    max_frame: usize,
) -> io::Result<(NodeId, Wire, SocketAddr)> {
    let peer = stream.peer_addr()?;
    let mut wire = framed(stream, HANDSHAKE_FRAME);
    let nonce = nonce()?;
    wire.send(encode(&Challenge { nonce })?).await?;
    let hello: Hello = match tokio::time::timeout(CONNECT_TIMEOUT, wire.next()).await {
        Ok(Some(Ok(b))) => decode(&b)?,
        _ => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "no hello")),
    };
    if !verify(secret, &nonce, hello.from, &hello.mac) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "wrong cluster secret",
        ));
    }
    let welcome = Welcome {
        node: me,
        mac: answer(secret, &hello.nonce, me),
    };
    wire.send(encode(&welcome)?).await?;
    wire.codec_mut().set_max_frame_length(max_frame);
    Ok((hello.from, wire, peer))
}
