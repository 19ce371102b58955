//! Listening sockets and what happens between accepting a connection and
//! handing its byte stream to the connection driver: the connection
//! limits, the PROXY header, the TLS handshake and the WebSocket upgrade,
//! all within the connect timeout. A connection that fails any of them is
//! closed and logged, and nothing else notices.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::driver;
use super::quic;
use super::tls::{TlsAcceptor, TlsIo};
use super::transport::{Fold, Joined, Proxied, Transport};
use super::ws;
use super::{Ctx, Live, LiveGuard};
use crate::config::{ListenerConfig, TransportKind};
use crate::core::engine::{ListenerRules, Peer};
use crate::stats::Stats;

/// A bound listener.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) config: ListenerConfig,
    socket: Socket,
    pub(crate) tls: Option<Arc<TlsAcceptor>>,
    rules: Arc<ListenerRules>,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    /// Taken by the accept loop, which runs it.
    Quic {
        endpoint: std::sync::Mutex<Option<Box<quic::Endpoint>>>,
        local: SocketAddr,
    },
    Unix {
        listener: UnixListener,
        /// Removed with the listener.
        _file: UnixPath,
    },
}

/// A Unix socket's file, removed when the listener goes.
#[derive(Debug)]
struct UnixPath(PathBuf);

impl Drop for UnixPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bind a Unix socket at `path`, replacing a stale socket file that
/// nobody listens on (a crashed broker's), never a live one or another
/// kind of file.
fn bind_unix(path: &std::path::Path, mode: Option<u32>) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process listens there",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

impl Bound {
    /// Bind one configured listener, its certificates read.
    pub(crate) async fn bind(config: &ListenerConfig, keep_alive: u16) -> io::Result<Self> {
        let context = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.describe()),
            )
        };
        let tls = if config.transport.is_tls() {
            Some(Arc::new(TlsAcceptor::new(config).map_err(context)?))
        } else {
            None
        };
        let socket = match (config.transport, &config.bind, &config.path) {
            (TransportKind::Quic, Some(addr), _) => {
                let tls = tls
                    .as_ref()
                    .ok_or_else(|| context(io::Error::other("no TLS")))?;
                let keep_alive = Duration::from_secs(u64::from(keep_alive));
                let quic = quic::server_config(tls.current(), keep_alive).map_err(context)?;
                let endpoint = quic::Endpoint::bind(quic, *addr).map_err(context)?;
                // A certificate reload reaches the endpoint too.
                let slot = endpoint.config_slot();
                tls.also_install(move |c| match quic::server_config(c, keep_alive) {
                    Ok(c) => slot.set(c),
                    Err(e) => {
                        tracing::error!(error = %e, "the QUIC listener keeps its certificate")
                    }
                });
                Socket::Quic {
                    local: endpoint.local_addr(),
                    endpoint: std::sync::Mutex::new(Some(Box::new(endpoint))),
                }
            }
            (TransportKind::Unix, _, Some(path)) => Socket::Unix {
                listener: bind_unix(path, config.unix_mode()).map_err(context)?,
                _file: UnixPath(path.clone()),
            },
            (_, Some(addr), _) => Socket::Tcp(TcpListener::bind(addr).await.map_err(context)?),
            _ => {
                return Err(context(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no address",
                )))
            }
        };
        Ok(Self {
            rules: Arc::new(ListenerRules::of(config)),
            config: config.clone(),
            socket,
            tls,
        })
    }

    /// The address it is bound to (TCP-based listeners).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp(l) => l.local_addr().ok(),
            Socket::Quic { local, .. } => Some(*local),
            Socket::Unix { .. } => None,
        }
    }

    /// Accept connections until the task is aborted.
    pub(crate) async fn accept_loop(self: Arc<Self>, ctx: Arc<Ctx>, all: Arc<Live>) {
        tracing::info!(listener = %self.config.describe(), "listening");
        let live = Arc::new(Live::within(all));
        if let Socket::Quic { endpoint, .. } = &self.socket {
            let Some(endpoint) = crate::core::lock(endpoint).take() else {
                return;
            };
            return self.clone().accept_quic(*endpoint, ctx, live).await;
        }
        loop {
            let accepted = match &self.socket {
                Socket::Tcp(l) => l.accept().await.map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    if let Err(e) = set_keepalive(&s, ctx.tcp_keepalive) {
                        tracing::debug!(error = %e, "TCP keepalive not set");
                    }
                    (Stream::Tcp(s), Some(a))
                }),
                Socket::Unix { listener: l, .. } => {
                    l.accept().await.map(|(s, _)| (Stream::Unix(s), None))
                }
                Socket::Quic { .. } => return,
            };
            let (stream, addr) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(guard) = self.admit(&ctx, &live, addr) else {
                drop(stream);
                continue;
            };
            // A plain stream with nothing to set up goes straight to its
            // driver; the others get a setup task first, which hands over
            // to a driver task of its own, so that each connection's task
            // is only as large as its own transport needs.
            let direct = !self.config.proxy_protocol
                && matches!(
                    self.config.transport,
                    TransportKind::Tcp | TransportKind::Unix
                );
            let bound = self.clone();
            let ctx = ctx.clone();
            match stream {
                Stream::Tcp(s) if direct => {
                    tokio::spawn(driver::serve(ctx, s, bound.peer(addr), Some(guard)))
                }
                Stream::Unix(s) if direct => {
                    tokio::spawn(driver::serve(ctx, s, bound.peer(addr), Some(guard)))
                }
                Stream::Tcp(s) => tokio::spawn(bound.setup(ctx, s, addr, guard)),
                Stream::Unix(s) => tokio::spawn(bound.setup(ctx, s, addr, guard)),
            };
        }
    }

    /// Accept QUIC connections until the task is aborted. The endpoint
    /// runs in a task of its own, which refuses new connections from then
    /// on and ends with the last connection.
    async fn accept_quic(
        self: Arc<Self>,
        endpoint: quic::Endpoint,
        ctx: Arc<Ctx>,
        live: Arc<Live>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let bound = self.clone();
        let admit_ctx = ctx.clone();
        tokio::spawn(endpoint.run(move |addr| bound.admit(&admit_ctx, &live, Some(addr)), tx));
        while let Some((held, guard)) = rx.recv().await {
            tokio::spawn(self.clone().setup_quic(ctx.clone(), held, guard));
        }
    }

    /// From a QUIC handshake to a connection driver on its first stream,
    /// within the connect timeout.
    async fn setup_quic(self: Arc<Self>, ctx: Arc<Ctx>, held: quic::Held, guard: LiveGuard) {
        let addr = held.remote();
        if let Err(why) = within_connect_timeout(&ctx, held.ready()).await {
            return self.gave_up(Some(addr), &why);
        }
        let mut peer = self.peer(Some(held.remote()));
        peer.certificate = held
            .peer_certificate()
            .and_then(|c| super::tls::identity(&c));
        tokio::spawn(driver::serve(
            ctx,
            quic::QuicStream(held),
            peer,
            Some(guard),
        ));
    }

    /// Count a new connection against the server's and this listener's
    /// limits, or refuse it.
    fn admit(&self, ctx: &Ctx, live: &Arc<Live>, addr: Option<SocketAddr>) -> Option<LiveGuard> {
        // Behind a PROXY header every socket comes from the load balancer:
        // only the broker-wide cap on unfinished CONNECTs applies.
        let ip = addr.map(|a| a.ip()).filter(|_| !self.config.proxy_protocol);
        let source = match ctx.admission.admit(ip, std::time::Instant::now()) {
            Ok(s) => s,
            Err(why) => {
                Stats::add(&ctx.broker.engine.stats.connections_refused, 1);
                Stats::add(&ctx.broker.engine.stats.connections_throttled, 1);
                let peer = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
                // Debug, not warn: a flood must not flood the log too (the
                // counter and the periodic drop report say it).
                tracing::debug!(%peer, listener = %self.config.describe(), why = why.describe(), "connection refused");
                return None;
            }
        };
        let max = ctx.broker.config().limits.max_connections;
        let mine = self.config.max_connections.unwrap_or(usize::MAX);
        let all = live.within.as_ref().unwrap_or(live);
        if all.count.fetch_add(1, Ordering::AcqRel) >= max {
            all.count.fetch_sub(1, Ordering::AcqRel);
        } else if live.count.fetch_add(1, Ordering::AcqRel) >= mine {
            live.count.fetch_sub(1, Ordering::AcqRel);
            all.count.fetch_sub(1, Ordering::AcqRel);
        } else {
            return Some(LiveGuard {
                live: live.clone(),
                source: Some(source),
            });
        }
        Stats::add(&ctx.broker.engine.stats.connections_refused, 1);
        let peer = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::warn!(%peer, listener = %self.config.describe(), "connection limit reached; closing");
        None
    }

    /// From an accepted socket to a connection driver: the PROXY header,
    /// TLS and the WebSocket upgrade, within the connect timeout.
    async fn setup<S: Fold + Transport>(
        self: Arc<Self>,
        ctx: Arc<Ctx>,
        stream: S,
        addr: Option<SocketAddr>,
        guard: LiveGuard,
    ) {
        let mut peer = self.peer(addr);
        // The address a PROXY header named, which stays with the transport.
        let mut named = None;
        let kind = self.config.transport;
        let ready = within_connect_timeout(&ctx, async {
            let mut stream = stream;
            if self.config.proxy_protocol {
                named = super::proxy::read_header(&mut stream).await?;
                peer.addr = named.or(peer.addr);
            }
            let max_frame = ctx.broker.config().limits.max_packet_size as usize;
            let ready = match kind {
                TransportKind::Tcp | TransportKind::Unix => Ready::Plain(stream),
                TransportKind::Tls | TransportKind::Wss => {
                    let Some(tls) = &self.tls else {
                        return Err(io::Error::other("no TLS configuration"));
                    };
                    let tls = tls.accept(stream).await?;
                    peer.certificate = tls.identity();
                    if kind == TransportKind::Wss {
                        Ready::Wss(
                            ws::accept(tls, self.config.ws_path(), max_frame, peer.addr)
                                .await
                                .map_err(refused)?,
                        )
                    } else {
                        Ready::Tls(tls)
                    }
                }
                TransportKind::Ws => Ready::Ws(
                    ws::accept(stream, self.config.ws_path(), max_frame, peer.addr)
                        .await
                        .map_err(refused)?,
                ),
                TransportKind::Quic => return Err(io::Error::other("not a stream transport")),
            };
            Ok::<_, io::Error>(ready)
        })
        .await;
        let ready = match ready {
            Ok(r) => r,
            Err(why) => return self.gave_up(peer.addr, &why),
        };
        let guard = Some(guard);
        match ready {
            Ready::Plain(s) => spawn_driver(ctx, s, named, peer, guard),
            Ready::Tls(s) => spawn_driver(ctx, Joined::new(s), named, peer, guard),
            Ready::Ws(s) => spawn_driver(ctx, Joined::new(s), named, peer, guard),
            Ready::Wss(s) => spawn_driver(ctx, Joined::new(s), named, peer, guard),
        }
    }

    /// Log a connection closed before it reached MQTT.
    fn gave_up(&self, addr: Option<SocketAddr>, why: &str) {
        let peer = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        tracing::info!(%peer, listener = %self.config.describe(), why, "connection closed before MQTT");
    }

    /// What the engine is told of a peer that connected here.
    fn peer(&self, addr: Option<SocketAddr>) -> Box<Peer> {
        Box::new(Peer {
            addr,
            certificate: None,
            rules: self.rules.clone(),
            internal: None,
        })
    }
}

/// Turn TCP keepalive on (`idle` silent before the first probe, then
/// every 10 s, 3 probes), or leave it off for `None`.
pub(crate) fn set_keepalive(s: &TcpStream, idle: Option<Duration>) -> std::io::Result<()> {
    let Some(idle) = idle else {
        return Ok(());
    };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(s).set_tcp_keepalive(&keepalive)
}

/// What comes before MQTT (PROXY header, handshakes), bounded by the
/// connect timeout; why it failed otherwise.
async fn within_connect_timeout<T, E: std::fmt::Display>(
    ctx: &Ctx,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    let deadline = Duration::from_secs(ctx.broker.config().limits.connect_timeout);
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("too slow (connect_timeout)".to_string()),
    }
}

/// Run a connection's driver in a task of its own.
fn spawn_driver<T: Transport>(
    ctx: Arc<Ctx>,
    io: T,
    named: Option<SocketAddr>,
    peer: Box<Peer>,
    guard: Option<LiveGuard>,
) {
    match named {
        None => tokio::spawn(driver::serve(ctx, io, peer, guard)),
        Some(addr) => tokio::spawn(driver::serve(ctx, Proxied { io, peer: addr }, peer, guard)),
    };
}

/// An accepted socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A stream ready for MQTT.
enum Ready<S> {
    Plain(S),
    Tls(TlsIo<S>),
    Ws(ws::WsIo<S>),
    Wss(ws::WsIo<TlsIo<S>>),
}

fn refused(r: ws::Refused) -> io::Error {
    let why = if r.status.is_empty() {
        r.why
    } else {
        format!("WebSocket upgrade refused ({}): {}", r.status, r.why)
    };
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;

    /// Accepted TCP connections get keepalive probes after the configured
    /// silence (so a peer that vanished, even with MQTT keep alive 0, is
    /// found); 0 leaves the socket as the kernel made it.
    #[tokio::test]
    async fn accepted_sockets_probe_silent_peers() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        for idle in [Some(Duration::from_secs(120)), None] {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            let sock = socket2::SockRef::from(&s);
            assert!(!sock.keepalive().unwrap(), "off until set");
            set_keepalive(&s, idle).unwrap();
            assert_eq!(sock.keepalive().unwrap(), idle.is_some());
            if let Some(idle) = idle {
                assert_eq!(sock.tcp_keepalive_time().unwrap(), idle);
                assert_eq!(
                    sock.tcp_keepalive_interval().unwrap(),
                    Duration::from_secs(10)
                );
                assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
            }
        }
    }
}
