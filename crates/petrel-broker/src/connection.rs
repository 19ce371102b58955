//! One task per network connection: read → decode → server session → broker
//! → subscribers' queues, and queue → session → encode → vectored write.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_codec::{
    Connect, MqttString, Packet, Properties, Protocol, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use petrel_session::{
    Accept, CloseReason, Connection, DropReason, Event, Message, SendError, SessionState,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::broker::{Attach, Attached, Kick, KickSignal, Shared};
use crate::dormant;
use crate::mailbox::{detach, Queued, SessionKey};
use crate::outq::OutQueue;
use crate::server::LiveGuard;
use crate::stats::Stats;
use crate::{ConnectionId, Subscription, NEVER};

/// Stop taking messages from the session's queue while this much waits to
/// be written: a slow subscriber's backlog stays in its bounded queue.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from a peer that does not read what we send (its
/// acknowledgements pile up here otherwise).
const READ_STOP: usize = 1024 * 1024;
/// Reads start this small and double while the peer fills them, up to
/// `MAX_READ`: an idle connection holds almost nothing, a busy one reads in
/// large chunks.
const MIN_READ: usize = 256;
const MAX_READ: usize = 64 * 1024;
/// How long the last packets (DISCONNECT, …) may take to write at close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Most messages taken from the session's queue per lock.
const BATCH: usize = 64;

/// Whether a topic belongs to the broker's `$SYS` tree.
fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

fn too_deep(topic: &str, max: usize) -> bool {
    topic.bytes().filter(|&b| b == b'/').count() >= max
}

/// A session this connection holds.
struct Held {
    key: SessionKey,
    connection: ConnectionId,
}

/// A byte stream a connection runs on.
pub(crate) trait Transport: Send + 'static {
    /// Its reading half, borrowed.
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// Its writing half, borrowed.
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Both halves, to read and write at once.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
    /// The socket while its connection hibernates: out of the runtime's
    /// reactor (whose registration costs a few hundred bytes a socket),
    /// watched by the broker's sleepers thread instead.
    type Asleep: mio::event::Source + Send + 'static;
    /// Whether a connection on this transport can hibernate.
    fn can_park(&self) -> bool;
    /// The peer's address, if known.
    fn peer(&self) -> Option<SocketAddr>;
    /// Leave the runtime's reactor.
    fn sleep(self) -> io::Result<Self::Asleep>;
    /// Come back to it (in the runtime's context).
    fn wake(asleep: Self::Asleep) -> io::Result<Self>
    where
        Self: Sized;
}

impl Transport for TcpStream {
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        self.split()
    }

    type Asleep = mio::net::TcpStream;

    fn can_park(&self) -> bool {
        true
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }

    fn sleep(self) -> io::Result<Self::Asleep> {
        // Non-blocking, as tokio left it.
        Ok(mio::net::TcpStream::from_std(self.into_std()?))
    }

    fn wake(asleep: Self::Asleep) -> io::Result<Self> {
        Self::from_std(std::net::TcpStream::from(asleep))
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

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        (&mut self.0, &mut self.1)
    }

    type Asleep = mio::net::TcpStream;

    fn can_park(&self) -> bool {
        false
    }

    fn peer(&self) -> Option<SocketAddr> {
        None
    }

    fn sleep(self) -> io::Result<Self::Asleep> {
        Err(io::Error::other("in-memory pipes don't hibernate"))
    }

    fn wake(_: Self::Asleep) -> io::Result<Self> {
        Err(io::Error::other("in-memory pipes don't hibernate"))
    }
}

/// What a connection keeps through hibernation: who it is and what it
/// holds. Dropped while it still holds a session (a hibernating
/// connection whose runtime went away), it hands the session back as a
/// lost connection would.
pub(crate) struct Link {
    pub(crate) shared: Arc<Shared>,
    pub(crate) kick: Arc<KickSignal>,
    held: Option<Held>,
    will: Option<Box<(Message, Duration)>>,
    /// Session Expiry Interval in force.
    expiry: u32,
    /// Counted in `clients_connected`.
    counted: bool,
    /// Counts the connection in the server's live set.
    _guard: Option<LiveGuard>,
}

impl Link {
    /// The session this connection holds.
    pub(crate) fn key(&self) -> Option<&SessionKey> {
        self.held.as_ref().map(|h| &h.key)
    }

    /// Move everything out, leaving a link that holds nothing.
    pub(crate) fn take(&mut self) -> Self {
        let hollow = Self {
            shared: self.shared.clone(),
            kick: self.kick.clone(),
            held: None,
            will: None,
            expiry: 0,
            counted: false,
            _guard: None,
        };
        std::mem::replace(self, hollow)
    }

    /// The connection is over: hand the session back, with the will if
    /// the connection did not end normally.
    fn finish(&mut self, state: SessionState, close: Option<&CloseReason>) {
        let Some(held) = self.held.take() else { return };
        let now = Instant::now();
        let max = self.shared.config.limits.max_session_expiry;
        let (expiry, will) = match close {
            // [MQTT-3.1.2-10], [MQTT-3.14.4-3]: a normal DISCONNECT discards
            // the will; 5.0 reason 0x04 asks for it. A 5.0 DISCONNECT may
            // change the Session Expiry Interval (3.14.2.2.2).
            Some(CloseReason::Disconnected {
                reason_code,
                properties,
            }) => (
                properties
                    .session_expiry_interval()
                    .map_or(self.expiry, |e| e.min(max)),
                // Only 0x00 discards the will ([MQTT-3.14.4-3]); 0x04 and
                // the error codes publish it.
                (*reason_code != ReasonCode::NORMAL_DISCONNECTION)
                    .then(|| self.will.take())
                    .flatten(),
            ),
            // A server shutting down is not the client's failure.
            Some(CloseReason::Local(rc)) if *rc == ReasonCode::SERVER_SHUTTING_DOWN => {
                (self.expiry, None)
            }
            _ => (self.expiry, self.will.take()),
        };
        self.shared.release(
            &held.key,
            held.connection,
            state,
            expiry,
            will.map(|w| *w),
            now,
        );
        if self.counted {
            self.shared.stats.client_disconnected();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.finish(SessionState::default(), None);
    }
}

/// How [`Task::run`] ended.
enum Run {
    Closed,
    /// Quiet for `hibernate_after` with nothing in flight.
    Idle,
}

pub(crate) struct Task {
    pub(crate) link: Link,
    /// The peer's address, for the logs (asked of the socket again after
    /// hibernation: a sleeping connection doesn't keep it).
    peer: SocketAddr,
    pub(crate) conn: Connection,
    limits: petrel_codec::Limits,
    inbuf: BytesMut,
    /// How much the next read asks for.
    read_hint: usize,
    /// The last read was small: shrink buffers once it is handled.
    quiet: bool,
    out: OutQueue,
    /// Retained messages for new subscriptions, sent before live ones.
    backlog: VecDeque<Queued>,
    got_connect: bool,
    /// The peer closed the socket or it failed.
    lost: bool,
    /// Messages routed since this task last yielded.
    routed: usize,
    /// Quiet time after which the connection hibernates, if it can.
    hibernate_after: Option<Duration>,
}

/// Serve one connection until it closes.
pub(crate) async fn serve<T: Transport>(
    shared: Arc<Shared>,
    io: T,
    peer: SocketAddr,
    guard: Option<LiveGuard>,
) {
    let now = Instant::now();
    let conn = Connection::server(shared.session_config.clone(), now);
    let link = Link {
        shared,
        kick: Arc::new(KickSignal::default()),
        held: None,
        will: None,
        expiry: 0,
        counted: false,
        _guard: guard,
    };
    let task = Task::new(link, conn, peer, io.can_park());
    drive(Box::new(task), io).await;
}

/// Run a connection, hibernating it whenever it goes quiet; returns when it
/// closes or hibernates (a wake-up drives it again in a new task).
pub(crate) async fn drive<T: Transport>(mut task: Box<Task>, mut io: T) {
    loop {
        if let Run::Closed = task.run(&mut io).await {
            // Dropping the task hands the session back (also if it panicked).
            return;
        }
        match dormant::park(task, io) {
            None => return,
            Some((t, i)) => (task, io) = (t, i),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.link
            .shared
            .backlog
            .fetch_sub(self.backlog.len(), Ordering::Relaxed);
        self.finish();
    }
}

impl Task {
    /// A task for `conn` (new, or unparked after hibernation).
    pub(crate) fn new(link: Link, conn: Connection, peer: SocketAddr, can_park: bool) -> Self {
        let limits = link.shared.session_config.codec_limits();
        let after = link.shared.config.limits.hibernate_after;
        Self {
            peer,
            limits,
            hibernate_after: (can_park && after > 0).then(|| Duration::from_secs(after)),
            got_connect: conn.is_connected(),
            link,
            conn,
            inbuf: BytesMut::new(),
            read_hint: MIN_READ,
            quiet: false,
            out: OutQueue::default(),
            backlog: VecDeque::new(),
            lost: false,
            routed: 0,
        }
    }

    /// Nothing in flight, buffered or waiting here: the session machine
    /// decides the rest ([`Connection::park`]).
    fn parkable(&self) -> bool {
        self.link.held.is_some()
            && self.conn.is_connected()
            && self.inbuf.is_empty()
            && self.out.is_empty()
            && self.backlog.is_empty()
            && !self.lost
            && self.routed == 0
    }

    async fn run<T: Transport>(&mut self, io: &mut T) -> Run {
        let (mut reader, mut writer) = io.halves();
        let mut shutdown = self.link.shared.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            // Also a connection woken from hibernation by the shutdown.
            self.close(ReasonCode::SERVER_SHUTTING_DOWN);
        }
        let mut last_active = Instant::now();
        // The last wake-up was the timer's (not activity).
        let mut fired = false;
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        // One timer for the task's life, moved only when the session's
        // deadline moves (a new one per turn costs a timer-wheel insert).
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        loop {
            let now = Instant::now();
            if !fired {
                last_active = now;
            }
            loop {
                let more = self.decode(now);
                self.handle_events(now, &mut shutdown).await;
                if !more || self.conn.is_awaiting_accept() {
                    break;
                }
            }
            if self.routed > 0 {
                // Let the subscriber tasks this turn woke deliver before
                // this one writes its acknowledgements (one syscall less
                // between a PUBLISH and its delivery), and a publisher with
                // a full socket can't starve them.
                self.routed = 0;
                tokio::task::yield_now().await;
            }
            self.fill(now);
            self.drain_transmit();
            if self.conn.is_closed() || self.lost {
                break;
            }
            // A connection that can hibernate gives its memory back then;
            // one that can't, whenever it goes quiet.
            if std::mem::take(&mut self.quiet) && self.hibernate_after.is_none() {
                self.conn.shrink();
                if self.backlog.is_empty() {
                    self.backlog = VecDeque::new();
                }
            }
            let idle_at = self.hibernate_after.map(|d| last_active + d);
            let deadline: tokio::time::Instant = self
                .conn
                .poll_timeout()
                .into_iter()
                .chain(idle_at)
                .min()
                .map_or(far, tokio::time::Instant::from_std);
            let key = self.key();
            let can_read = self.out.len() < READ_STOP;
            if self.inbuf.is_empty() && self.inbuf.capacity() > 2 * self.read_hint {
                // Idle: give back what a burst left (frames still in use
                // keep their part alive on their own).
                self.inbuf = BytesMut::new();
            }
            if self.inbuf.capacity() - self.inbuf.len() < self.read_hint / 2 {
                self.inbuf.reserve(self.read_hint);
            }
            let spare = self.inbuf.capacity() - self.inbuf.len();
            self.out.shrink_if_idle();
            // Moved earlier at once, later only once it has fired: the
            // deadlines move with every packet, and resetting a timer each
            // time costs a timer-wheel update per packet. Firing early is
            // harmless (`handle_timeout` does nothing before it is due).
            if deadline < timer.deadline() || (fired && deadline != timer.deadline()) {
                timer.as_mut().reset(deadline);
            }
            fired = false;
            tokio::select! {
                r = reader.read_buf(&mut self.inbuf), if can_read => match r {
                    Ok(0) | Err(_) => self.lost = true,
                    Ok(n) => {
                        Stats::add(&self.link.shared.stats.bytes_received, n as u64);
                        self.read_hint = if n >= spare {
                            (self.read_hint * 2).min(MAX_READ)
                        } else if n < self.read_hint / 4 {
                            (self.read_hint / 2).max(MIN_READ)
                        } else {
                            self.read_hint
                        };
                        // A trickle, not a stream: this connection is mostly
                        // idle, so its queues give their memory back.
                        self.quiet = n < MIN_READ;
                    }
                },
                r = self.out.write_to(&mut writer), if !self.out.is_empty() => match r {
                    Ok(n) => Stats::add(&self.link.shared.stats.bytes_sent, n as u64),
                    Err(_) => self.lost = true,
                },
                () = mailbox_signal(key.as_ref()), if key.is_some() => {}
                () = std::future::poll_fn(|cx| self.link.kick.poll_kicked(cx)) => {
                    let reason = self.link.kick.take();
                    if reason == Some(Kick::TakenOver) {
                        // [MQTT-3.1.4-3]: 5.0 DISCONNECT 0x8E, then close.
                        self.close(ReasonCode::SESSION_TAKEN_OVER);
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    fired = true;
                    if idle_at.is_some_and(|t| t <= now) {
                        if self.parkable() {
                            return Run::Idle;
                        }
                        // Busy (something in flight): try again after
                        // another quiet spell, not at once.
                        last_active = now;
                    }
                    self.conn.handle_timeout(now);
                }
                _ = shutdown.changed() => {
                    self.close(ReasonCode::SERVER_SHUTTING_DOWN);
                }
            }
        }
        if self.lost {
            return Run::Closed;
        }
        // Write what the session still has to say (DISCONNECT, CONNACK with
        // a refusal), briefly, then close the socket.
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            while !self.out.is_empty() {
                self.out.write_to(&mut writer).await?;
            }
            writer.shutdown().await
        })
        .await;
        Run::Closed
    }

    fn close(&mut self, reason: ReasonCode) {
        let now = Instant::now();
        if self
            .conn
            .disconnect(now, reason, Properties::new())
            .is_err()
        {
            self.lost = true;
        }
    }

    fn protocol(&self) -> Option<Protocol> {
        self.got_connect.then(|| self.conn.protocol())
    }

    /// Decode the whole packets read so far and feed them to the session.
    /// Stops after a CONNECT, for the broker to answer it before what the
    /// client sent next; returns whether it stopped early that way.
    fn decode(&mut self, now: Instant) -> bool {
        while !self.conn.is_closed() {
            if self.conn.is_awaiting_accept() {
                return true;
            }
            let protocol = self.protocol();
            match Packet::decode(&mut self.inbuf, protocol, &self.limits) {
                Ok(Some(packet)) => {
                    self.got_connect = true;
                    Stats::add(&self.link.shared.stats.messages_received, 1);
                    if let Packet::Publish(p) = &packet {
                        Stats::add(&self.link.shared.stats.publish_received, 1);
                        // Checked before the session acknowledges it.
                        if let Some(reason) = self.refuse_publish(p) {
                            self.close(reason);
                            return false;
                        }
                    }
                    if let Err(e) = self.conn.handle_packet(now, packet) {
                        tracing::debug!(peer = %self.peer, error = %e, "protocol error");
                    }
                }
                Ok(None) => return false,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "malformed packet");
                    // The session answers where the protocol lets it (a
                    // CONNACK for an unsupported version, a 5.0 DISCONNECT
                    // with the reason code) and closes.
                    self.conn.handle_decode_error(now, e);
                    return false;
                }
            }
        }
        false
    }

    /// A PUBLISH the broker does not take, with the reason: above the
    /// Maximum QoS it told the client ([MQTT-3.2.2-11]), or a topic deeper
    /// than `max_topic_levels`.
    fn refuse_publish(&self, p: &Publish) -> Option<ReasonCode> {
        let limits = &self.link.shared.config.limits;
        if p.qos.qos() as u8 > limits.max_qos {
            return Some(ReasonCode::QOS_NOT_SUPPORTED);
        }
        if too_deep(p.topic.as_str(), limits.max_topic_levels) {
            return Some(ReasonCode::TOPIC_NAME_INVALID);
        }
        None
    }

    fn drain_transmit(&mut self) {
        let protocol = self.conn.protocol();
        let stats = &self.link.shared.stats;
        while let Some(packet) = self.conn.poll_transmit() {
            Stats::add(&stats.messages_sent, 1);
            if matches!(packet, Packet::Publish(_)) {
                Stats::add(&stats.publish_sent, 1);
            }
            if let Err(e) = self.out.push(&packet, protocol) {
                tracing::warn!(peer = %self.peer, error = %e, "could not encode a packet");
            }
        }
    }

    async fn handle_events(&mut self, now: Instant, shutdown: &mut watch::Receiver<bool>) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                // Boxed: the CONNECT path is large and runs once; the
                // task's own future stays small for idle connections.
                Event::ConnectRequest(c) => Box::pin(self.on_connect(now, *c, shutdown)).await,
                Event::Message(p) => self.on_publish(now, p),
                Event::Subscribe(s) => self.on_subscribe(now, s),
                Event::Unsubscribe(u) => self.on_unsubscribe(now, u),
                Event::Auth(_) => {
                    // Re-authentication needs a method, and CONNECT with one
                    // was refused; an AUTH now is a protocol error.
                    self.close(ReasonCode::PROTOCOL_ERROR);
                }
                Event::Dropped { reason, .. } => {
                    let stats = &self.link.shared.stats;
                    match reason {
                        DropReason::TooLarge => Stats::add(&stats.dropped_too_large, 1),
                        DropReason::Expired => Stats::add(&stats.dropped_expired, 1),
                        _ => {}
                    }
                }
                Event::Closed(reason) => self.log_close(&reason),
                _ => {}
            }
        }
    }

    fn log_close(&self, reason: &CloseReason) {
        let id = self.link.key().map_or("-", |k| &*k.0.client_id);
        match reason {
            CloseReason::Disconnected { reason_code, .. } => {
                tracing::info!(client_id = id, peer = %self.peer, reason = %reason_code, "client disconnected");
            }
            other => {
                tracing::info!(client_id = id, peer = %self.peer, reason = ?other, "connection closed");
            }
        }
    }

    fn refuse(&mut self, now: Instant, reason: ReasonCode) {
        Stats::add(&self.link.shared.stats.connections_refused, 1);
        if self.conn.reject(now, reason, Properties::new()).is_err() {
            self.lost = true;
        }
    }

    async fn on_connect(&mut self, now: Instant, c: Connect, shutdown: &mut watch::Receiver<bool>) {
        let limits = &self.link.shared.config.limits;
        let v5 = c.protocol.is_v5();
        let max_qos = QoS::from_u8(limits.max_qos).unwrap_or(QoS::ExactlyOnce);
        if v5 && c.properties.authentication_method().is_some() {
            // No enhanced authentication method is configured.
            return self.refuse(now, ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        let mut props = Properties::new();
        let client_id: Arc<str> = if c.client_id.is_empty() {
            // [MQTT-3.1.3-8]: 3.1.1 allows a zero-length id only with Clean
            // Session 1; MQTT 3.1 needs one.
            if !v5 && (!c.clean_start || c.protocol == Protocol::V3_1) {
                return self.refuse(now, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            // [MQTT-3.1.3-6], [MQTT-3.2.2-16]: assign a unique one, and
            // tell a 5.0 client.
            let id = self.link.shared.assign_client_id();
            if v5 {
                if let Ok(s) = MqttString::try_from(id.as_str()) {
                    props.set_assigned_client_identifier(Some(s));
                }
            }
            Arc::from(id)
        } else {
            Arc::from(c.client_id.as_str())
        };
        if client_id.len() > limits.max_client_id_length {
            return self.refuse(now, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if let Some(w) = &c.will {
            if v5 && w.qos > max_qos {
                // [MQTT-3.2.2-12]
                return self.refuse(now, ReasonCode::QOS_NOT_SUPPORTED);
            }
            if is_sys(w.topic.as_str()) {
                // $SYS is the broker's: no client writes there, will included.
                return self.refuse(now, ReasonCode::NOT_AUTHORIZED);
            }
            if too_deep(w.topic.as_str(), limits.max_topic_levels) {
                return self.refuse(now, ReasonCode::TOPIC_NAME_INVALID);
            }
        }
        // Session expiry: 5.0 asks; 3.1.x Clean Session 0 means "keep".
        let requested = if v5 {
            c.properties.session_expiry_interval().unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            NEVER
        };
        self.link.expiry = requested.min(limits.max_session_expiry);
        if v5 && self.link.expiry != requested {
            // [MQTT-3.2.2-?] the client learns the interval the server uses.
            props.set_session_expiry_interval(Some(self.link.expiry));
        }
        if v5
            && (c.keep_alive > limits.max_keepalive
                || (c.keep_alive == 0 && limits.max_keepalive < u16::MAX))
        {
            // [MQTT-3.2.2-21]: the client must use the Server Keep Alive.
            props.set_server_keep_alive(Some(limits.max_keepalive));
        }
        if v5 && max_qos != QoS::ExactlyOnce {
            props.set_maximum_qos(Some(max_qos));
        }
        self.link.will = c.will.map(|w| {
            let delay = if v5 {
                w.properties.will_delay_interval().unwrap_or(0)
            } else {
                0
            };
            let mut m = Message::new(w.topic, w.payload, w.qos);
            // Kept for the connection's life.
            detach(&mut m);
            m.retain = w.retain;
            // Will properties go out as PUBLISH properties, less the delay
            // ([MQTT-3.1.3-10]).
            m.properties = w
                .properties
                .without(&[petrel_codec::properties::id::WILL_DELAY_INTERVAL]);
            Box::new((m, Duration::from_secs(u64::from(delay))))
        });

        let attached = match self.link.shared.attach(
            &client_id,
            c.clean_start,
            self.link.expiry,
            &self.link.kick,
            now,
        ) {
            Attach::Ready(a) => a,
            Attach::Full => {
                tracing::warn!(client_id = %client_id, "max_sessions reached; refused");
                let reason = if v5 {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    ReasonCode::SERVER_UNAVAILABLE
                };
                return self.refuse(now, reason);
            }
            Attach::Wait(connection, mut rx) => {
                // The holder was kicked and lets go within its close
                // flush; bounded anyway, and shutdown ends the wait.
                let limit = Duration::from_secs(limits.connect_timeout) + 2 * CLOSE_FLUSH;
                let handover = tokio::select! {
                    biased;
                    r = tokio::time::timeout(limit, &mut rx) => r.ok().and_then(Result::ok),
                    _ = shutdown.changed() => None,
                };
                match handover {
                    Some(h) => self.link.shared.take_handover(
                        &client_id,
                        h,
                        &self.link.kick,
                        Instant::now(),
                    ),
                    None => {
                        // A handover that arrived meanwhile goes back.
                        rx.close();
                        let late = rx.try_recv().ok();
                        let now = Instant::now();
                        self.link.shared.abandon(
                            &client_id,
                            connection,
                            late,
                            self.link.expiry,
                            now,
                        );
                        return self.refuse(now, ReasonCode::SERVER_UNAVAILABLE);
                    }
                }
            }
        };
        let now = Instant::now();
        let Attached {
            key,
            connection,
            session_present,
            state,
        } = attached;
        // Kept in case the CONNACK can't be sent: the session must not lose
        // what it holds because of this connection.
        let kept = state.clone();
        let accept = Accept {
            session_present,
            state,
            properties: props,
        };
        if let Err(e) = self.conn.accept(now, accept) {
            tracing::warn!(client_id = %client_id, error = %e, "could not accept");
            self.link.will = None;
            self.link
                .shared
                .release(&key, connection, kept, self.link.expiry, None, now);
            self.lost = true;
            return;
        }
        self.link.held = Some(Held { key, connection });
        self.link.shared.stats.client_connected();
        self.link.counted = true;
        tracing::info!(
            client_id = %client_id,
            peer = %self.peer,
            protocol = c.protocol.name(),
            session_present,
            "client connected"
        );
    }

    fn key(&self) -> Option<SessionKey> {
        self.link.key().cloned()
    }

    fn on_publish(&mut self, now: Instant, p: Publish) {
        let packet_id = p.qos.packet_id();
        let reason = match self.key() {
            // $SYS belongs to the broker: not routed, as Mosquitto's default
            // access rules do; a 5.0 client learns it was not authorized.
            Some(_) if is_sys(p.topic.as_str()) => ReasonCode::NOT_AUTHORIZED,
            Some(key) => {
                let mut message = Message::new(p.topic, p.payload, p.qos.qos());
                message.retain = p.retain;
                message.properties = p.properties;
                self.routed += 1;
                // Routed (and retained) before the acknowledgement promises
                // it ([MQTT-4.3.2-4], [MQTT-4.3.3-8] hold: it is ours now).
                match self.link.shared.publish(Some(&key), message, now) {
                    0 => ReasonCode::NO_MATCHING_SUBSCRIBERS,
                    _ => ReasonCode::SUCCESS,
                }
            }
            None => ReasonCode::SUCCESS,
        };
        if let Some(id) = packet_id {
            // In the order the PUBLISHes arrived ([MQTT-4.6.0-2]): events
            // are handled in that order, each acknowledged in turn.
            let _ = self.conn.ack_with(now, id, reason);
        }
    }

    fn on_subscribe(&mut self, now: Instant, s: Subscribe) {
        let Some(key) = self.key() else { return };
        let max_qos =
            QoS::from_u8(self.link.shared.config.limits.max_qos).unwrap_or(QoS::ExactlyOnce);
        let identifier = s.properties.subscription_identifiers().first();
        let max_levels = self.link.shared.config.limits.max_topic_levels;
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        for sub in &s.subscriptions {
            if too_deep(sub.filter.as_str(), max_levels) {
                // 3.1.1 sees 0x80, Failure.
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let mut options = sub.options;
            options.qos = options.qos.min(max_qos);
            let subscription = Subscription {
                options,
                identifier,
            };
            match self.link.shared.subscribe(&key, &sub.filter, subscription) {
                None => codes.push(ReasonCode::QUOTA_EXCEEDED),
                Some(existed) => {
                    // [MQTT-3.9.3-1]: the granted QoS, in order.
                    codes.push(ReasonCode(options.qos as u8));
                    let send = match options.retain_handling {
                        RetainHandling::SendOnSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for a shared
                    // subscription (4.8.2).
                    if send && sub.filter.shared().is_none() {
                        let refused = self.link.shared.retained_for(
                            &sub.filter,
                            options.qos,
                            identifier,
                            &mut self.backlog,
                        );
                        Stats::add(&self.link.shared.stats.dropped_queue_full, refused as u64);
                    }
                }
            }
        }
        let suback = SubAck {
            packet_id: s.packet_id,
            properties: Properties::new(),
            reason_codes: codes,
        };
        if self.conn.suback(now, suback).is_err() {
            self.lost = true;
        }
    }

    fn on_unsubscribe(&mut self, now: Instant, u: Unsubscribe) {
        let Some(key) = self.key() else { return };
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.link.shared.unsubscribe(&key, f) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let unsuback = UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::new(),
            reason_codes: codes,
        };
        if self.conn.unsuback(now, unsuback).is_err() {
            self.lost = true;
        }
    }

    /// Move messages from the retained backlog and the session's queue into
    /// the session machine while the socket keeps up and the in-flight
    /// window has room.
    fn fill(&mut self, now: Instant) {
        let Some(key) = self.key() else { return };
        if !self.conn.is_connected() {
            return;
        }
        while self.out.len() < WRITE_HIGH_WATER {
            let Some(q) = self.backlog.front() else { break };
            if q.message.qos != QoS::AtMostOnce && self.conn.send_quota() == 0 {
                return;
            }
            let q = self.backlog.pop_front().unwrap_or_else(|| unreachable!());
            self.link.shared.backlog.fetch_sub(1, Ordering::Relaxed);
            self.send_queued(now, q);
        }
        if !self.backlog.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(BATCH);
        while self.out.len() < WRITE_HIGH_WATER {
            // Take a batch under the lock, send it without holding it.
            {
                let mut mb = key.mailbox();
                let mut quota = self.conn.send_quota();
                while batch.len() < BATCH {
                    let Some(q) = mb.pop() else { break };
                    if q.message.qos != QoS::AtMostOnce {
                        if quota == 0 {
                            mb.unpop(q);
                            break;
                        }
                        quota -= 1;
                    }
                    batch.push(q);
                }
            }
            if batch.is_empty() {
                return;
            }
            for q in batch.drain(..) {
                self.send_queued(now, q);
            }
        }
    }

    /// Send a queued message, or drop it if its Message Expiry Interval ran
    /// out while it waited ([MQTT-3.3.2-5]); otherwise it carries what is
    /// left ([MQTT-3.3.2-6]).
    fn send_queued(&mut self, now: Instant, q: Queued) {
        let mut message = q.message;
        if let Some(interval) = message.properties.message_expiry_interval() {
            let waited = now.saturating_duration_since(q.at).as_secs();
            if waited >= u64::from(interval) {
                Stats::add(&self.link.shared.stats.dropped_expired, 1);
                return;
            }
            let left = u32::try_from(u64::from(interval) - waited).unwrap_or(interval);
            if left != interval {
                message.properties.set_message_expiry_interval(Some(left));
            }
        }
        self.send(now, message);
    }

    fn send(&mut self, now: Instant, message: Message) {
        match self.conn.publish(now, message) {
            Ok(_) => self.drain_transmit(),
            Err(SendError::PacketTooLarge { .. }) => {
                Stats::add(&self.link.shared.stats.dropped_too_large, 1);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "message not sent");
                Stats::add(&self.link.shared.stats.dropped_queue_full, 1);
            }
        }
    }

    /// The connection is over: hand the session back.
    fn finish(&mut self) {
        if self.link.held.is_none() {
            return;
        }
        let state = self.conn.take_state();
        self.link.finish(state, self.conn.close_reason());
    }
}

/// A message came for the session.
async fn mailbox_signal(key: Option<&SessionKey>) {
    match key {
        Some(k) => std::future::poll_fn(|cx| k.poll_signal(cx)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Broker, BrokerConfig};
    use petrel_codec::{PacketId, QosPid, TopicName};
    use tokio::io::AsyncWriteExt;

    /// A peer that sends QoS 1 PUBLISHes and never reads its PUBACKs: once
    /// the acknowledgements waiting to be written pass `READ_STOP`, the
    /// connection stops reading, so the peer's writes block rather than the
    /// broker buffering without bound.
    #[tokio::test]
    async fn a_peer_that_does_not_read_is_not_read_either() {
        let broker = Broker::new(BrokerConfig::default());
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (r, w) = tokio::io::split(server);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        tokio::spawn(serve(broker.shared.clone(), Pipe(r, w), peer, None));
        let (_client_r, mut client_w) = tokio::io::split(client);
        let mut burst = BytesMut::new();
        let connect = Connect::new(Protocol::V3_1_1, MqttString::from_static("noread"));
        Packet::Connect(Box::new(connect))
            .encode(Protocol::V3_1_1, &mut burst)
            .unwrap();
        // Each 7-byte PUBLISH earns a 4-byte PUBACK: twice READ_STOP of them.
        let count = 2 * READ_STOP / 4;
        for i in 0..count {
            let mut p = Publish::new(TopicName::from_static("t"), bytes::Bytes::new());
            let id = PacketId::new((i % 60_000 + 1) as u16).unwrap();
            p.qos = QosPid::AtLeastOnce(id);
            Packet::Publish(p)
                .encode(Protocol::V3_1_1, &mut burst)
                .unwrap();
        }
        let write = tokio::time::timeout(Duration::from_secs(3), client_w.write_all(&burst)).await;
        assert!(
            write.is_err(),
            "the whole burst was read: nothing held the peer back: {write:?} {:?}",
            broker.stats()
        );
        let received = broker.stats().publish_received;
        assert!(received < count as u64, "{received}");
    }
}
