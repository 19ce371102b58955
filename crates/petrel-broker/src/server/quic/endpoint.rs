//! A QUIC listener's endpoint: one UDP socket and one task that runs the
//! protocol (quinn-proto) for every connection of the listener. It reads
//! datagrams and hands each to its connection, sends what connections
//! have to send, fires their timers and admits new ones.
//!
//! quinn's own endpoint gives each connection a task, a channel and a
//! send buffer, about 20 KiB more than the protocol state itself; here a
//! connection is only its state (see [`super::conn`]), which is what lets
//! a quiet one hibernate small.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{DatagramEvent, Dir, Event, ServerConfig, StreamEvent};
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::conn::{Conn, Held, Shared};
use crate::core::lock;

/// Datagrams read in one go before the endpoint looks at its connections.
const RECV_BURST: usize = 32;
/// Datagrams one connection sends in one go before the others' turn.
const SEND_BURST: usize = 32;

/// A bound QUIC endpoint, not yet running.
#[derive(Debug)]
pub(crate) struct Endpoint {
    socket: UdpSocket,
    udp: UdpSocketState,
    proto: quinn_proto::Endpoint,
    config: Arc<Mutex<Arc<ServerConfig>>>,
    shared: Arc<Shared>,
    local: SocketAddr,
}

/// Where a certificate reload puts the new configuration, for the
/// connections accepted after it.
#[derive(Clone, Debug)]
pub(crate) struct ConfigSlot(Arc<Mutex<Arc<ServerConfig>>>);

impl ConfigSlot {
    pub(crate) fn set(&self, config: ServerConfig) {
        *lock(&self.0) = Arc::new(config);
    }
}

impl Endpoint {
    /// Bind the UDP socket (within the runtime).
    pub(crate) fn bind(config: ServerConfig, addr: SocketAddr) -> io::Result<Self> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let udp = UdpSocketState::new((&std).into())?;
        let local = std.local_addr()?;
        let socket = UdpSocket::from_std(std)?;
        let config = Arc::new(config);
        // The configuration given here lets the endpoint take connections;
        // each is accepted with the one current then (see `ConfigSlot`).
        let proto = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            Some(config.clone()),
            !udp.may_fragment(),
            None,
        );
        Ok(Self {
            socket,
            udp,
            proto,
            config: Arc::new(Mutex::new(config)),
            shared: Arc::new(Shared::default()),
            local,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where to put a reloaded configuration.
    pub(crate) fn config_slot(&self) -> ConfigSlot {
        ConfigSlot(self.config.clone())
    }

    /// Run until nobody takes new connections from `accepted` and every
    /// connection has ended. Each new connection is first offered to
    /// `admit` (the connection limits): refused if it says no, else handed
    /// to `accepted` with what `admit` gave, while its handshake goes on.
    pub(crate) async fn run<G: Send + 'static>(
        mut self,
        mut admit: impl FnMut(SocketAddr) -> Option<G> + Send,
        accepted: mpsc::UnboundedSender<(Held, G)>,
    ) {
        let mut run = Run {
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            tx: Vec::new(),
            pending: None,
            stalled: Vec::new(),
        };
        let mut rx = vec![0u8; u16::MAX as usize];
        let mut closing = false;
        loop {
            let now = Instant::now();
            for _ in 0..RECV_BURST {
                let mut meta = [RecvMeta::default()];
                let got = self.socket.try_io(Interest::READABLE, || {
                    self.udp.recv(
                        (&self.socket).into(),
                        &mut [IoSliceMut::new(&mut rx)],
                        &mut meta,
                    )
                });
                match got {
                    Ok(0) => break,
                    Ok(_) => {
                        let m = meta[0];
                        let mut data = BytesMut::from(&rx[..m.len.min(rx.len())]);
                        while !data.is_empty() {
                            let d = data.split_to(m.stride.min(data.len()).max(1));
                            let refuse = closing || accepted.is_closed();
                            self.datagram(&mut run, &m, d, refuse, &mut admit, &accepted);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // Undefined in QUIC, and easy for anyone to cause.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "QUIC endpoint: receive failed");
                        break;
                    }
                }
            }
            run.fire_timers(now, &self.shared);
            for conn in self.shared.take() {
                self.drive(&mut run, &conn);
            }
            run.sweep_timers();
            closing |= accepted.is_closed();
            if closing && run.conns.is_empty() {
                return;
            }
            let next = run.timers.peek().map(|Reverse((t, _))| *t);
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shared.notify.notified() => {}
                r = self.socket.readable() => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "QUIC endpoint: socket failed");
                        return;
                    }
                }
                () = sleep => {}
                r = self.socket.writable(), if run.pending.is_some() => {
                    if r.is_ok() {
                        self.flush_pending(&mut run);
                    }
                }
                () = accepted.closed(), if !closing => closing = true,
            }
        }
    }

    /// One datagram from the socket.
    #[allow(clippy::too_many_arguments)]
    fn datagram<G>(
        &mut self,
        run: &mut Run,
        meta: &RecvMeta,
        data: BytesMut,
        refuse: bool,
        admit: &mut impl FnMut(SocketAddr) -> Option<G>,
        accepted: &mpsc::UnboundedSender<(Held, G)>,
    ) {
        // The time of each step is read afresh: a stale one would date what
        // is sent too early and fire loss timers before their time.
        let now = Instant::now();
        run.tx.clear();
        let ecn = meta
            .ecn
            .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        let event = self
            .proto
            .handle(now, meta.addr, meta.dst_ip, ecn, data, &mut run.tx);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = run.conns.get(&ch.0) {
                    conn.lock().conn.handle_event(event);
                    self.shared.poke(conn);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let guard = if refuse {
                    None
                } else {
                    admit(incoming.remote_address())
                };
                let Some(guard) = guard else {
                    run.tx.clear();
                    let t = self.proto.refuse(incoming, &mut run.tx);
                    let _ = self.send(&t, &run.tx);
                    return;
                };
                let config = lock(&self.config).clone();
                run.tx.clear();
                match self.proto.accept(incoming, now, &mut run.tx, Some(config)) {
                    Ok((ch, proto)) => {
                        let conn = Conn::new(ch, proto, self.shared.clone());
                        run.conns.insert(ch.0, conn.clone());
                        // Its answer goes out now, not after the rest of
                        // the burst: each handshake's latency is its own.
                        self.drive(run, &conn);
                        // Refused by a listener going away: dropping it
                        // closes it.
                        let _ = accepted.send((Held(conn), guard));
                    }
                    Err(e) => {
                        tracing::debug!(peer = %meta.addr, error = %e.cause, "QUIC connection not accepted");
                        if let Some(t) = e.response {
                            let _ = self.send(&t, &run.tx);
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                let _ = self.send(&t, &run.tx);
            }
            None => {}
        }
    }

    /// Everything a connection has to do now: its timers, what it tells
    /// the endpoint, what it tells its MQTT side, what it sends.
    fn drive(&mut self, run: &mut Run, conn: &Arc<Conn>) {
        let now = Instant::now();
        let mut st = conn.lock();
        // A few rounds, each of which may give the next something to do;
        // a connection that still has work after them goes again later.
        let mut busy = true;
        for _ in 0..8 {
            let mut progress = false;
            if st.linger.is_some_and(|t| t <= now) && !st.conn.is_closed() {
                st.conn.close(now, 0u32.into(), Bytes::new());
            }
            if st.conn.poll_timeout().is_some_and(|t| t <= now) {
                st.conn.handle_timeout(now);
                progress = true;
            }
            while let Some(event) = st.conn.poll_endpoint_events() {
                progress = true;
                if let Some(back) = self.proto.handle_event(conn.handle, event) {
                    st.conn.handle_event(back);
                }
            }
            while let Some(event) = st.conn.poll() {
                progress = true;
                match event {
                    Event::Connected => {
                        st.connected = true;
                        st.wake_reader();
                    }
                    Event::ConnectionLost { reason } => st.end(reason),
                    Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) if st.stream.is_none() => {
                        st.stream = st.conn.streams().accept(Dir::Bi);
                        st.readable = true;
                        st.wake_reader();
                    }
                    Event::Stream(StreamEvent::Readable { id }) if st.stream == Some(id) => {
                        st.readable = true;
                        st.wake_reader();
                    }
                    // All written was received, or the peer wants no
                    // more: a connection whose MQTT side is done can go.
                    Event::Stream(
                        StreamEvent::Finished { id } | StreamEvent::Stopped { id, .. },
                    ) if st.stream == Some(id) && st.linger.is_some() => {
                        st.conn.close(now, 0u32.into(), Bytes::new());
                    }
                    Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Stopped { .. }) => {
                        st.wake_writer()
                    }
                    _ => {}
                }
            }
            if run.pending.is_some() {
                run.stalled.push(conn.clone());
            } else {
                let max = self.udp.max_gso_segments();
                let mut sent = 0;
                while sent < SEND_BURST {
                    run.tx.clear();
                    let Some(t) = st.conn.poll_transmit(now, max, &mut run.tx) else {
                        break;
                    };
                    sent += 1;
                    progress = true;
                    if let Err(e) = self.send(&t, &run.tx) {
                        if e.kind() == io::ErrorKind::WouldBlock {
                            run.pending = Some((run.tx.clone(), t));
                            run.stalled.push(conn.clone());
                            break;
                        }
                    }
                }
                if sent == SEND_BURST {
                    // More to send: after the others.
                    self.shared.poke(conn);
                }
            }
            if !progress {
                busy = false;
                break;
            }
        }
        if busy {
            self.shared.poke(conn);
        }
        let next = match (st.conn.poll_timeout(), st.linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next != st.timer {
            st.timer = next;
            if let Some(t) = next {
                run.timers.push(Reverse((t, conn.handle.0)));
            }
        }
        if st.conn.is_drained() {
            st.end(quinn_proto::ConnectionError::LocallyClosed);
            st.timer = None;
            drop(st);
            run.conns.remove(&conn.handle.0);
        }
    }

    /// Send the datagram that found the socket full, then let the
    /// connections that waited go on.
    fn flush_pending(&mut self, run: &mut Run) {
        if let Some((buf, t)) = run.pending.take() {
            if let Err(e) = self.send(&t, &buf) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    run.pending = Some((buf, t));
                    return;
                }
            }
        }
        for conn in run.stalled.drain(..) {
            self.shared.poke(&conn);
        }
    }

    fn send(&self, t: &quinn_proto::Transmit, buf: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents: &buf[..t.size.min(buf.len())],
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        self.socket.try_io(Interest::WRITABLE, || {
            self.udp.send((&self.socket).into(), &transmit)
        })
    }
}

/// The endpoint task's own state.
struct Run {
    /// Every connection not yet drained, by handle.
    conns: HashMap<usize, Arc<Conn>>,
    /// Connections' deadlines; an entry whose connection now holds another
    /// deadline is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Where datagrams are built.
    tx: Vec<u8>,
    /// A datagram that found the socket's buffer full.
    pending: Option<(Vec<u8>, quinn_proto::Transmit)>,
    /// Connections that have more to send once it is out.
    stalled: Vec<Arc<Conn>>,
}

impl Run {
    /// Poke the connections whose deadline came.
    fn fire_timers(&mut self, now: Instant, shared: &Shared) {
        while let Some(Reverse((t, h))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(conn) = self.conns.get(&h) {
                let mut st = conn.lock();
                if st.timer == Some(t) {
                    st.timer = None;
                    drop(st);
                    shared.poke(conn);
                }
            }
        }
    }

    /// Drop stale deadlines when they pile up (a busy connection moves its
    /// deadline with every packet).
    fn sweep_timers(&mut self) {
        if self.timers.len() <= 2 * self.conns.len() + 1024 {
            return;
        }
        let conns = &self.conns;
        self.timers
            .retain(|Reverse((t, h))| conns.get(h).is_some_and(|c| c.lock().timer == Some(*t)));
    }
}
