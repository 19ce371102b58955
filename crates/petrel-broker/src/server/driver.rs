//! The connection driver, the same for every transport: it reads bytes,
//! decodes them, drives the connection's server-role session machine, asks
//! the engine ([`Login`], [`Client`]) and carries out its answers, encodes
//! and writes. It never inspects topics, credentials or registry state
//! itself. A connection that goes quiet hibernates ([`super::hibernate`]).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use petrel_codec::{Auth, MqttString, Packet, Properties, Protocol, ReasonCode};
use petrel_session::{CloseReason, Connection, DropReason, Event, Hibernated, Message, SendError};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::hibernate::{secs_after, Hibernator, SlotId};
use super::outq::OutQueue;
use super::transport::Transport;
use super::{Ctx, LiveGuard};
use crate::core::auth::BoxFuture;
use crate::core::engine::{Client, Login, Outbound, Peer, ReauthStep, Step};
use crate::core::lock;
use crate::core::store::Commit;
use crate::stats::{Stats, Tally};

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
/// A connection's first reads, each followed by giving its buffers back
/// when small (a storm's connections connect, subscribe and wait).
const YOUNG_READS: u8 = 4;
/// Wake-ups at least this far apart make a sparse trickle: its buffers go
/// back between packets.
const SPARSE: Duration = Duration::from_millis(50);
/// A read into a connection that holds no buffer goes through this much
/// stack (more is read into a buffer of its own next time).
const STACK_READ: usize = 4096;
/// How long the last packets (DISCONNECT, …) may take to write at close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Most messages taken from the session's queue at once.
const BATCH: usize = 64;
/// A packet partly received past this many bytes counts against
/// `max_partial_bytes`.
const LARGE_PACKET: usize = 64 * 1024;
/// Packets decoded from one connection before its task lets others run:
/// a buffer full of tiny packets is not handled all in one go.
const PACKETS_PER_TURN: usize = 256;
/// How soon a packet waiting for room in `max_partial_bytes` looks again.
const ROOM_RETRY: Duration = Duration::from_millis(20);

/// What a connection keeps through hibernation besides its session
/// machine: the server's context, its engine client, and its place in the
/// server's count of connections.
struct Link {
    ctx: Arc<Ctx>,
    client: Option<Client>,
    _guard: Option<LiveGuard>,
}

/// How [`Task::run`] ended.
enum Run {
    Closed,
    /// Quiet for `hibernate_after` with nothing in flight.
    Idle,
}

/// An event [`Task::handle_events`] leaves to [`Task::slow`].
enum Slow {
    /// The CONNECT, or the client's AUTH during its exchange.
    Login(Option<Auth>),
    /// A connected client's AUTH: re-authentication.
    Reauth(Auth),
}

/// What [`Task::prepare`] worked out for the next wait.
struct Turn {
    /// Whether to read from the peer.
    can_read: bool,
    /// Room in the read buffer (32 bits: the connection's future keeps it
    /// through the wait, beside flags that leave half a word free).
    spare: u32,
    /// When the timer should fire (none: nothing is due).
    deadline: Option<tokio::time::Instant>,
}

/// How long after `then` is `now` (zero if before), taking both by value.
fn since(now: Instant, then: Instant) -> Duration {
    now.saturating_duration_since(then)
}

/// A connection task's place in the server's set of running connections:
/// the shutdown wakes it there, and so does the server's timer task at the
/// deadline it is armed for. It leaves the set when the task stops driving
/// the connection (closed, or hibernating).
struct Awake {
    ctx: Arc<Ctx>,
    id: SlotId,
    /// The deadline the timer task wakes it at.
    armed: Option<tokio::time::Instant>,
}

impl Awake {
    /// Join the set with this task's waker. Joined before the shutdown is
    /// looked at ([`Awake::stopping`]), so one is never missed.
    async fn register(ctx: &Arc<Ctx>) -> Self {
        // (Again if the runtime that ran it is gone.)
        super::start_timers(ctx);
        let waker = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
        let id = lock(&ctx.awake).slots.insert(waker, None);
        Self {
            ctx: ctx.clone(),
            id,
            armed: None,
        }
    }

    /// Whether the server is shutting down.
    fn stopping(&self) -> bool {
        self.ctx.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Move the deadline to `deadline`: earlier at once, later only once
    /// it has rung (`rung`; see [`Task::run`]).
    fn rearm(&mut self, deadline: Option<tokio::time::Instant>, rung: bool) {
        let moved = match (deadline, self.armed) {
            (Some(d), Some(a)) => d < a || (rung && d != a),
            (Some(_), None) => true,
            (None, Some(_)) => rung,
            (None, None) => false,
        };
        if !moved {
            return;
        }
        super::start_timers(&self.ctx);
        let tell = lock(&self.ctx.awake).arm(self.id, deadline);
        self.armed = deadline;
        if tell {
            self.ctx.timer_told.notify_one();
        }
    }

    /// Ready once the deadline it is armed for has come (the server's
    /// timer task wakes it then). A deadline that has come stays so until
    /// it is moved, so each time counts against the runtime's budget for
    /// the task, as a runtime timer's did: a deadline left in the past
    /// yields to the other tasks now and then instead of spinning.
    fn poll_rung(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.armed.is_none_or(|at| tokio::time::Instant::now() < at) {
            return std::task::Poll::Pending;
        }
        std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
        std::task::Poll::Ready(())
    }
}

impl Drop for Awake {
    fn drop(&mut self) {
        lock(&self.ctx.awake).leave(self.id);
    }
}

// Every running connection holds one task, in jemalloc's 640-byte size
// class: a field more would cost 128 bytes a connection, not 8.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Task>() <= 640);

/// A connection before it is accepted.
enum Entry {
    /// What the transport knows of the peer, until the CONNECT takes it.
    Peer(Peer),
    /// The CONNECT being decided (boxed again: it is much larger than
    /// the peer's record, which every new connection holds).
    Login(Box<Login>),
}

struct Task {
    link: Link,
    /// Until the connection is accepted: what the transport knows of the
    /// peer, then the CONNECT being decided (one box for both: the task
    /// must stay small once the client is in).
    entry: Option<Box<Entry>>,
    conn: Connection,
    inbuf: BytesMut,
    /// How much the next read asks for.
    read_hint: u32,
    /// The last read was small: shrink buffers once it is handled.
    quiet: bool,
    /// Reads so far (saturating): the first `YOUNG_READS` always give the
    /// buffers back when small.
    reads: u8,
    out: OutQueue,
    got_connect: bool,
    /// The engine asked the client for AUTH: keep decoding while the
    /// CONNECT waits.
    awaiting_auth: bool,
    /// The peer closed the socket or it failed.
    lost: bool,
    /// Messages routed since this task last yielded.
    routed: u32,
    /// Acknowledgements waiting for the store (`fsync` durability), and
    /// those that came after them: they go out in the order the PUBLISHes
    /// came ([MQTT-4.6.0-2]).
    acks: Acks,
    /// What this task counted since it last told the broker's counters.
    tally: Tally,
    /// In-flight messages last told to the engine (at most a Receive
    /// Maximum's 65,535, and more only as "at least that many").
    inflight: u16,
    /// A packet is partly received: when its last byte came, in whole
    /// seconds after the server started, rounded up (4 bytes where an
    /// instant is 16; the stall it bounds is counted in seconds, and ends
    /// at most a second late, never early).
    partial_since: Option<u32>,
    /// The client's publish rate limits, if any (boxed: most have none).
    rate: Option<Box<PublishRate>>,
    /// The large packet being received, counted in the server's
    /// `partial_bytes` at its announced size (0: none).
    partial_charge: u32,
    /// A large packet waits for room in `max_partial_bytes`.
    waiting_room: bool,
    /// Decoding stopped at `PACKETS_PER_TURN`: more waits in the buffer.
    turn_over: bool,
    /// A store write everything the connection sends waits for (`fsync`
    /// durability): a SUBACK's subscriptions, a packet identifier given.
    /// (`Commit::done()`: nothing; not an option, which would be 8 bytes
    /// more of every connection.)
    gate: Commit,
    /// The connection hibernates after `hibernate_after` of quiet (its
    /// transport can, and the configuration asks for it).
    can_hibernate: bool,
    /// The whole in-flight window: QoS 1/2 messages the client may hold
    /// unacknowledged (its Receive Maximum, within ours).
    window: u16,
}

/// Serve one connection until it closes. Not an `async fn`: one would keep
/// its arguments in the future beside the task built from them, and every
/// connection's runtime task holds this future.
pub(crate) fn serve<T: Transport>(
    ctx: Arc<Ctx>,
    io: T,
    peer: Box<Peer>,
    guard: Option<LiveGuard>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let task = first_task(ctx, peer, guard, &io);
    drive(task, io)
}

/// A new connection's task, built outside the async function so that the
/// future of an idle connection holds only the box.
fn first_task<T: Transport>(
    ctx: Arc<Ctx>,
    peer: Box<Peer>,
    guard: Option<LiveGuard>,
    io: &T,
) -> Box<Task> {
    let now = Instant::now();
    let conn = Connection::server(ctx.broker.engine.session_config.clone(), now);
    let link = Link {
        ctx,
        client: None,
        _guard: guard,
    };
    // The address accept gave (or a PROXY header named): no need to ask
    // the socket.
    let mut peer = peer;
    peer.addr = peer.addr.or_else(|| io.peer());
    let mut task = Box::new(Task::new(link, conn, io.can_hibernate()));
    task.entry = Some(Box::new(Entry::Peer(*peer)));
    task
}

/// Run a connection, hibernating it whenever it goes quiet; returns when it
/// closes or hibernates (a wake-up drives it again in a new task). The
/// future uses the captured arguments themselves (an `async fn` would hold
/// a second copy of each).
#[allow(clippy::manual_async_fn)]
fn drive<T: Transport>(
    mut task: Box<Task>,
    mut io: T,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        loop {
            if let Run::Closed = task.run(&mut io).await {
                // Dropping the task hands the session back (also if it panicked).
                return;
            }
            if !io.settled() {
                // The transport still has bytes to write: not idle after all.
                continue;
            }
            let placeholder = Connection::server(
                task.link.ctx.broker.engine.session_config.clone(),
                Instant::now(),
            );
            let machine = match std::mem::replace(&mut task.conn, placeholder).hibernate() {
                Ok(h) => h,
                Err(conn) => {
                    // Not idle after all: go on.
                    task.conn = *conn;
                    continue;
                }
            };
            let asleep = Asleep::<T> {
                link: task.take_link(),
                machine,
                _io: PhantomData,
            };
            drop(task);
            let hibernation = asleep.link.ctx.hibernation.clone();
            match hibernation.hibernate(asleep, io) {
                Ok(()) => return,
                Err((asleep, back)) => {
                    (task, io) = (asleep.wake(&back), back);
                }
            }
        }
    }
}

/// A hibernating connection: its link and its session machine's compact
/// form.
struct Asleep<T> {
    link: Link,
    machine: Hibernated,
    _io: PhantomData<fn() -> T>,
}

impl<T: Transport> Asleep<T> {
    fn wake(self, io: &T) -> Box<Task> {
        let config = self.link.ctx.broker.engine.session_config.clone();
        let conn = Connection::resume(self.machine, config);
        Box::new(Task::new(self.link, conn, io.can_hibernate()))
    }
}

impl<T: Transport> Hibernator for Asleep<T> {
    type Io = T;

    fn arm(&self, waker: &std::task::Waker) -> bool {
        self.link.client.as_ref().is_some_and(|c| c.arm(waker))
    }

    fn disarm(&self) {
        if let Some(c) = &self.link.client {
            c.disarm();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.machine.deadline()
    }

    fn resume(self, io: T) -> BoxFuture<'static, ()> {
        let task = self.wake(&io);
        Box::pin(drive(task, io))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.finish();
        if self.partial_charge > 0 {
            self.link.ctx.partial_bytes.fetch_sub(
                self.partial_charge as usize,
                std::sync::atomic::Ordering::AcqRel,
            );
        }
    }
}

/// The in-flight window of a connection: the client's Receive Maximum
/// within `max_inflight`.
fn window(ctx: &Ctx, conn: &Connection) -> u16 {
    let ours = ctx.broker.session_config().max_inflight.get();
    conn.peer_limits().receive_maximum.min(ours)
}

/// Read into `buf`; when it holds no memory (a quiet connection gave it
/// back), through a buffer on the stack of the poll, so that a connection
/// waiting for its next packet holds none and then takes only what came.
fn read_into<'a, R: tokio::io::AsyncRead + Unpin>(
    reader: &'a mut R,
    buf: &'a mut BytesMut,
) -> impl std::future::Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if buf.capacity() > 0 {
            return tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *reader), cx, buf);
        }
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut read = tokio::io::ReadBuf::uninit(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *reader).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        std::task::Poll::Ready(Ok(read.filled().len()))
    })
}

/// Read and drop what the peer sends until it closes. The buffer lives on
/// the stack of each poll, not in the future: a future is as large as its
/// largest state, and every connection's task holds this one's.
async fn discard<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    std::future::poll_fn(|cx| loop {
        let mut sink = [0u8; 1024];
        let mut buf = tokio::io::ReadBuf::new(&mut sink);
        std::task::ready!(std::pin::Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return std::task::Poll::Ready(Ok(()));
        }
    })
    .await
}

/// Run `f` unless the broker shuts down first.
async fn unless_shutdown<F: std::future::Future>(
    shutdown: &mut watch::Receiver<bool>,
    f: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = f => Some(out),
        _ = shutdown.wait_for(|stop| *stop) => None,
    }
}

/// One client's publish rate limits: token buckets of PUBLISHes and of
/// payload bytes, each holding a second's worth. Spending past empty runs
/// a debt; the client is held (not read) until the debt is paid.
#[derive(Debug)]
struct PublishRate {
    /// Per second (0: no limit), and what is left now.
    messages: (f64, f64),
    bytes: (f64, f64),
    at: Instant,
}

impl PublishRate {
    fn new(messages: u32, bytes: u64, now: Instant) -> Self {
        Self {
            messages: (f64::from(messages), f64::from(messages)),
            bytes: (bytes as f64, bytes as f64),
            at: now,
        }
    }

    /// One PUBLISH of `size` payload bytes at `now`.
    fn spend(&mut self, size: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        for (bucket, cost) in [(&mut self.messages, 1.0), (&mut self.bytes, size as f64)] {
            let (rate, left) = bucket;
            if *rate > 0.0 {
                *left = (*left + elapsed * *rate).min(*rate) - cost;
            }
        }
    }

    /// When both buckets are out of debt again, if one is in debt.
    fn held_until(&self) -> Option<Instant> {
        let wait = [self.messages, self.bytes]
            .into_iter()
            .filter(|(rate, left)| *rate > 0.0 && *left < 0.0)
            .map(|(rate, left)| -left / rate)
            .fold(0.0f64, f64::max);
        (wait > 0.0).then(|| self.at + Duration::from_secs_f64(wait))
    }
}

/// A PUBLISH's acknowledgement, held until what it acknowledges is in the
/// store.
struct PendingAck {
    id: petrel_codec::PacketId,
    reason: ReasonCode,
    commit: Option<Commit>,
}

/// Acknowledgements waiting for the store, in order: a queue boxed when
/// first needed (most connections never wait for the store).
/// (The box is the point: an empty `VecDeque` is 32 bytes in every task.)
#[derive(Default)]
#[allow(clippy::box_collection)]
struct Acks(Option<Box<VecDeque<PendingAck>>>);

impl Acks {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    fn front(&self) -> Option<&PendingAck> {
        self.0.as_ref()?.front()
    }

    fn pop_front(&mut self) -> Option<PendingAck> {
        self.0.as_mut()?.pop_front()
    }

    fn push_back(&mut self, ack: PendingAck) {
        self.0.get_or_insert_default().push_back(ack);
    }

    /// Drop them all, and the box.
    fn clear(&mut self) {
        self.0 = None;
    }
}

/// The peer's address in the logs (`-` where it is not known).
struct PeerAddr(Option<SocketAddr>);

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Ready when the first waiting acknowledgement may go.
fn acks_ready(acks: &Acks, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
    match acks.front().and_then(|a| a.commit.as_ref()) {
        Some(c) => c.poll(cx).map(|_| ()),
        None => std::task::Poll::Ready(()),
    }
}

impl Task {
    /// Send the acknowledgements whose store writes are durable, in order;
    /// one whose write failed says so (5.0), or, as 3.1.1 can't, is not
    /// sent and the connection closes (its client sends it again).
    fn release_acks(&mut self, now: Instant) {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        while let Some(head) = self.acks.front() {
            let done = match &head.commit {
                None => Ok(()),
                Some(c) => match c.poll(&mut cx) {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => return,
                },
            };
            let Some(ack) = self.acks.pop_front() else {
                return;
            };
            let reason = match done {
                Ok(()) => ack.reason,
                Err(e) => {
                    let id = self.link.client.as_ref().map_or("-", |c| c.client_id());
                    tracing::error!(client_id = id, peer = %self.peer(), error = %e, "not stored: refused");
                    if !self.conn.protocol().is_v5() {
                        self.lost = true;
                        self.acks.clear();
                        return;
                    }
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
                }
            };
            let _ = self
                .conn
                .ack_with_properties(now, ack.id, reason, refusal(reason));
        }
    }

    /// A task for `conn` (new, or resumed after hibernation).
    fn new(link: Link, conn: Connection, can_hibernate: bool) -> Self {
        let after = link.ctx.hibernate_after;
        Self {
            entry: None,
            can_hibernate: can_hibernate && after.is_some(),
            got_connect: conn.is_connected(),
            window: window(&link.ctx, &conn),
            link,
            conn,
            inbuf: BytesMut::new(),
            read_hint: MIN_READ as u32,
            quiet: false,
            reads: 0,
            out: OutQueue::default(),
            awaiting_auth: false,
            lost: false,
            routed: 0,
            acks: Acks::default(),
            gate: Commit::done(),
            tally: Tally::default(),
            inflight: 0,
            partial_since: None,
            rate: None,
            partial_charge: 0,
            waiting_room: false,
            turn_over: false,
        }
        .with_rate()
    }

    /// The peer's address, for the logs: the transport's until the
    /// CONNECT, then the one the engine keeps with the client (not kept
    /// here: every connection would carry 32 bytes more).
    fn peer(&self) -> PeerAddr {
        let entry = match self.entry.as_deref() {
            Some(Entry::Peer(p)) => p.addr,
            Some(Entry::Login(l)) => l.peer_addr(),
            None => None,
        };
        PeerAddr(entry.or_else(|| self.link.client.as_ref().and_then(|c| c.addr())))
    }

    /// When the connection hibernates if nothing happens after
    /// `last_active`, if it can.
    fn idle_at(&self, last_active: Instant) -> Option<Instant> {
        let after = self
            .link
            .ctx
            .hibernate_after
            .filter(|_| self.can_hibernate)?;
        Some(last_active + after)
    }

    /// When a packet begun and not finished has waited too long.
    fn stall_at(&self) -> Option<Instant> {
        let ctx = &self.link.ctx;
        self.partial_since
            .map(|s| ctx.epoch + Duration::from_secs(u64::from(s)) + ctx.packet_timeout)
    }

    /// What the connection sends waits also for `c` (with what it waited
    /// for already).
    fn wait_also(&mut self, c: Commit) {
        self.gate = std::mem::take(&mut self.gate).and(c);
    }

    fn take_link(&mut self) -> Link {
        Link {
            ctx: self.link.ctx.clone(),
            client: self.link.client.take(),
            _guard: self.link._guard.take(),
        }
    }

    fn stats(&self) -> &Stats {
        &self.link.ctx.broker.engine.stats
    }

    /// Nothing in flight, buffered or waiting here: the session machine
    /// decides the rest ([`Connection::hibernate`]).
    fn idle(&self) -> bool {
        self.link.client.as_ref().is_some_and(|c| !c.has_backlog())
            && self.conn.is_connected()
            && self.inbuf.is_empty()
            && self.out.is_empty()
            && !matches!(self.entry.as_deref(), Some(Entry::Login(_)))
            && !self.lost
            && self.routed == 0
            && self.acks.is_empty()
            && self.gate.is_nothing()
    }

    /// The configured publish rate limits (read as the task starts, so a
    /// reload applies to new connections and to woken ones).
    fn with_rate(mut self) -> Self {
        let l = self.link.ctx.broker.engine.limits();
        if l.max_publish_rate > 0 || l.max_publish_bytes_rate > 0 {
            self.rate = Some(Box::new(PublishRate::new(
                l.max_publish_rate,
                l.max_publish_bytes_rate,
                Instant::now(),
            )));
        }
        self
    }

    /// Until when the client is over its publish rate (nothing is read or
    /// decoded from it meanwhile).
    fn held_until(&self, now: Instant) -> Option<Instant> {
        self.rate.as_ref()?.held_until().filter(|t| *t > now)
    }

    /// Count the large packet being received against `max_partial_bytes`
    /// (at the size its header announces), or let it go once complete. A
    /// new one that would pass the bound waits (not read) for room; one
    /// always goes on when nothing else holds any.
    fn charge_partial(&mut self) {
        use std::sync::atomic::Ordering::AcqRel;
        let want = if self.inbuf.len() >= LARGE_PACKET && !self.paused() {
            petrel_codec::FixedHeader::parse(&self.inbuf, self.protocol())
                .ok()
                .flatten()
                .map(|h| h.packet_len())
                .filter(|len| *len > self.inbuf.len())
                .unwrap_or(0)
        } else {
            0
        };
        self.waiting_room = false;
        // (At most the largest packet's 256 MiB.)
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        if want == self.partial_charge {
            return;
        }
        let ctx = &self.link.ctx;
        if self.partial_charge > 0 {
            ctx.partial_bytes
                .fetch_sub(self.partial_charge as usize, AcqRel);
            self.partial_charge = 0;
        }
        let want_bytes = want as usize;
        if want == 0 {
            return;
        }
        let before = ctx.partial_bytes.fetch_add(want_bytes, AcqRel);
        if before > 0 && before + want_bytes > ctx.max_partial_bytes {
            ctx.partial_bytes.fetch_sub(want_bytes, AcqRel);
            self.waiting_room = true;
        } else {
            self.partial_charge = want;
        }
    }

    /// Whether decoding must pause: a CONNECT waits for the engine, which
    /// has not asked the client for anything.
    fn paused(&self) -> bool {
        self.conn.is_awaiting_accept() && !self.awaiting_auth
    }

    /// Drive the connection until it closes or goes quiet. Not an `async
    /// fn`, whose future would hold `self` and `io` twice.
    #[allow(clippy::manual_async_fn)]
    fn run<'a, T: Transport>(
        &'a mut self,
        io: &'a mut T,
    ) -> impl std::future::Future<Output = Run> + Send + 'a {
        async move {
            let (mut reader, mut writer) = io.halves();
            // The loop's state (its timer above all) is gone before the close
            // below waits: the future is as large as its largest state.
            {
                // The broker's shutdown wakes this task through the server's list
                // of awake connections (a pointer here, where a watch receiver's
                // `changed()` future would be 120 bytes in every connection).
                let mut awake = Awake::register(&self.link.ctx).await;
                let mut told_shutdown = false;
                if awake.stopping() {
                    // Also a connection woken from hibernation by the shutdown.
                    told_shutdown = true;
                    self.close(ReasonCode::SERVER_SHUTTING_DOWN);
                }
                let mut last_active = Instant::now();
                // The last wake-up was the timer's (not activity).
                let mut fired = false;
                // The deadline is the server's timer task's to keep (see
                // `Awake`), moved only when the session's deadline moves.
                loop {
                    // What is worked out before waiting lives in this block, so
                    // that the future does not keep it while it waits.
                    let (can_read, spare) = {
                        // `now` is read again after each wait rather than kept
                        // through it (every local kept through more than one
                        // wait takes room in every state of the future).
                        let mut now = Instant::now();
                        // Since the last wake-up that wasn't the timer's.
                        let sparse = since(now, last_active) >= SPARSE;
                        if !fired {
                            last_active = now;
                        }
                        loop {
                            let more = self.decode(now);
                            while let Some(slow) = self.handle_events(now) {
                                // Boxed: the CONNECT and AUTH paths are large and
                                // rare; the task's own future stays small.
                                Box::pin(self.slow(now, slow)).await;
                                now = Instant::now();
                            }
                            self.release_acks(now);
                            if !more || self.paused() {
                                break;
                            }
                        }
                        if std::mem::take(&mut self.turn_over) {
                            // Enough from this connection for one turn: what it
                            // earned goes out, then the other tasks run before the
                            // rest of its buffer is decoded.
                            self.routed = 0;
                            self.fill(now);
                            self.drain_transmit();
                            self.report();
                            if self.conn.is_closed() || self.lost {
                                break;
                            }
                            tokio::task::yield_now().await;
                            continue;
                        }
                        if self.routed > 0 {
                            // Let the subscriber tasks this turn woke deliver before
                            // this one writes its acknowledgements (one syscall less
                            // between a PUBLISH and its delivery), and a publisher
                            // with a full socket can't starve them.
                            self.routed = 0;
                            tokio::task::yield_now().await;
                            now = Instant::now();
                        }
                        self.fill(now);
                        self.drain_transmit();
                        if self.conn.is_closed() || self.lost {
                            break;
                        }
                        let turn = self.prepare(now, sparse, last_active);
                        // Moved earlier at once, later only once it has fired: the
                        // deadlines move with every packet, and moving one each
                        // time would cost the shared set an update per packet.
                        // Firing early is harmless (`handle_timeout` does nothing
                        // before it is due).
                        awake.rearm(turn.deadline, fired);
                        (turn.can_read, turn.spare)
                    };
                    fired = false;
                    // (No local holds the client through the wait: each
                    // branch borrows what it needs, and the future stays
                    // a word smaller.)
                    let client = &self.link.client;
                    let gate = &self.gate;
                    let awake = &awake;
                    tokio::select! {
                        r = read_into(&mut reader, &mut self.inbuf), if can_read => match r {
                            Ok(0) | Err(_) => self.lost = true,
                            Ok(n) => {
                                self.reads = self.reads.saturating_add(1);
                                self.tally.bytes_in = self.tally.bytes_in.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                                // Progress: the unfinished packet's clock restarts.
                                self.partial_since = None;
                                let hint = self.read_hint as usize;
                                self.read_hint = if n >= spare as usize {
                                    (hint * 2).min(MAX_READ)
                                } else if n < hint / 4 {
                                    (hint / 2).max(MIN_READ)
                                } else {
                                    hint
                                } as u32;
                                // A trickle, not a stream: this connection is mostly
                                // idle, so its queues give their memory back.
                                self.quiet = n < MIN_READ;
                            }
                        },
                        r = self.out.write_to(&mut writer), if !self.out.is_empty() => match r {
                            Ok(n) => self.tally.bytes_out = self.tally.bytes_out.saturating_add(u32::try_from(n).unwrap_or(u32::MAX)),
                            Err(_) => self.lost = true,
                        },
                        () = std::future::poll_fn(|cx| client.as_ref().map_or(std::task::Poll::Pending, |c| c.poll_messages(cx))), if client.is_some() => {}
                        kick = std::future::poll_fn(|cx| client.as_ref().map_or(std::task::Poll::Pending, |c| c.poll_kicked(cx))), if client.is_some() => {
                            // [MQTT-3.1.4-3]: 5.0 DISCONNECT 0x8E, then close (or
                            // 0x98, or 0x9C with a Server Reference).
                            let props = self.link.client.as_ref().map(|c| c.kick_properties(kick)).unwrap_or_default();
                            self.close_with(kick.reason_code(), props);
                        }
                        () = std::future::poll_fn(|cx| awake.poll_rung(cx)) => {
                            let now = Instant::now();
                            fired = true;
                            if self.stall_at().is_some_and(|t| t <= now) {
                                let id = self.link.client.as_ref().map_or("-", |c| c.client_id());
                                tracing::info!(
                                    client_id = id,
                                    peer = %self.peer(),
                                    seconds = self.link.ctx.packet_timeout.as_secs(),
                                    "a packet stopped arriving half-way; closing"
                                );
                                self.lost = true;
                                continue;
                            }
                            if self.idle_at(last_active).is_some_and(|t| t <= now) {
                                if self.idle() {
                                    self.report();
                                    return Run::Idle;
                                }
                                // Busy (something in flight): try again after
                                // another quiet spell, not at once.
                                last_active = now;
                            }
                            self.conn.handle_timeout(now);
                        }
                        () = std::future::poll_fn(|cx| acks_ready(&self.acks, cx)), if !self.acks.is_empty() => {
                            self.release_acks(Instant::now());
                        }
                        _ = std::future::poll_fn(|cx| gate.poll(cx)), if !gate.is_nothing() => {
                            self.drain_transmit();
                        }
                        () = std::future::poll_fn(|_| if awake.stopping() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }), if !told_shutdown => {
                            told_shutdown = true;
                            self.close(ReasonCode::SERVER_SHUTTING_DOWN);
                        }
                    }
                }
            }
            self.report();
            if self.lost {
                return Run::Closed;
            }
            // Boxed: a close happens once, and its timeouts would otherwise
            // take room in every connection's future.
            Box::pin(self.say_goodbye(reader, writer)).await;
            Run::Closed
        }
    }

    /// Write what the session still has to say (DISCONNECT, CONNACK with a
    /// refusal), half-close, then read and discard what the client still
    /// sends until it closes too: closing with unread data would make the
    /// kernel answer with a reset, and a client still writing might never
    /// read the reason. All within `CLOSE_FLUSH`.
    async fn say_goodbye<R, W>(&mut self, mut reader: R, mut writer: W)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let until = tokio::time::Instant::now() + CLOSE_FLUSH;
        let written = tokio::time::timeout_at(until, async {
            while !self.out.is_empty() {
                self.out.write_to(&mut writer).await?;
            }
            writer.shutdown().await
        })
        .await;
        // The session goes back now (its will, its takeover), not after
        // the drain.
        self.finish();
        if matches!(written, Ok(Ok(()))) {
            let _ = tokio::time::timeout_at(until, discard(&mut reader)).await;
        }
    }

    /// Add what this task counted to the broker's counters, and tell the
    /// engine how many messages are in flight if that changed.
    fn report(&mut self) {
        self.link.ctx.broker.engine.stats.report(&mut self.tally);
        let inflight = self.conn.state().inflight();
        if inflight != self.inflight as usize {
            self.inflight = u16::try_from(inflight).unwrap_or(u16::MAX);
            if let Some(c) = &self.link.client {
                c.set_inflight(inflight);
            }
        }
    }

    /// One packet in or out, in the log at debug level (as Mosquitto's
    /// `log_type all`): its kind and, for a PUBLISH, the flags, packet
    /// identifier, topic and payload size; never the payload itself.
    fn trace(&self, dir: &'static str, packet: &Packet) {
        let client_id = self.link.client.as_ref().map_or("-", |c| c.client_id());
        match packet {
            Packet::Publish(p) => tracing::debug!(
                client_id,
                peer = %self.peer(),
                "{dir} PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                u8::from(p.dup),
                p.qos.qos() as u8,
                u8::from(p.retain),
                p.qos.packet_id().map_or(0, |id| id.get()),
                p.topic.as_str(),
                p.payload.len()
            ),
            other => {
                let kind = format!("{:?}", other.packet_type()).to_ascii_uppercase();
                tracing::debug!(client_id, peer = %self.peer(), "{dir} {kind}");
            }
        }
    }

    fn close(&mut self, reason: ReasonCode) {
        self.close_with(reason, Properties::new());
    }

    fn close_with(&mut self, reason: ReasonCode, props: Properties) {
        let now = Instant::now();
        if self.conn.disconnect(now, reason, props).is_err() {
            self.lost = true;
        }
    }

    fn protocol(&self) -> Option<Protocol> {
        self.got_connect.then(|| self.conn.protocol())
    }

    /// Decode the whole packets read so far and feed them to the session.
    /// Pauses after a CONNECT, for the engine to answer it before what the
    /// client sent next; returns whether it paused that way.
    fn decode(&mut self, now: Instant) -> bool {
        let mut decoded = 0;
        while !self.conn.is_closed() {
            if decoded == PACKETS_PER_TURN {
                self.turn_over = true;
                return false;
            }
            if self.paused() {
                return true;
            }
            if self.held_until(now).is_some() {
                // Over its publish rate: the rest waits in the buffer (and
                // the socket is not read) until it may go on.
                return false;
            }
            let protocol = self.protocol();
            match Packet::decode(&mut self.inbuf, protocol, &self.link.ctx.codec_limits) {
                Ok(Some(packet)) => {
                    decoded += 1;
                    self.got_connect = true;
                    self.tally.packets_in += 1;
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        self.trace("received", &packet);
                    }
                    if let Packet::Publish(p) = &packet {
                        let q = p.qos.qos() as usize;
                        self.tally.publish_received(
                            q,
                            p.payload.len(),
                            &self.link.ctx.broker.engine.stats,
                        );
                        if let Some(rate) = &mut self.rate {
                            rate.spend(p.payload.len() as u64, now);
                        }
                        // Checked before the session acknowledges it.
                        let refusal = self.link.client.as_ref().and_then(|c| c.check_publish(p));
                        if let Some(reason) = refusal {
                            self.close(reason);
                            return false;
                        }
                    }
                    if let Err(e) = self.conn.handle_packet(now, packet) {
                        tracing::info!(peer = %self.peer(), error = %e, "protocol error; closing");
                    }
                }
                Ok(None) => return false,
                Err(e) => {
                    tracing::info!(peer = %self.peer(), error = %e, "malformed packet; closing");
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

    fn drain_transmit(&mut self) {
        // What is about to go out that a stored session must record first
        // (packet identifiers given, PUBRECs received, identifiers freed).
        let changes = self.conn.take_changes();
        if let Some(client) = self.link.client.as_mut() {
            if let Some(c) = client.record(changes) {
                // With what was waited for already (a SUBACK's route in a
                // cluster completes apart from the store).
                self.wait_also(c);
            }
        }
        if !self.gate.is_done() {
            // Out once the store has it (`fsync` durability).
            return;
        }
        let g = std::mem::take(&mut self.gate);
        if !g.succeeded() {
            // What it waited for failed (the store, or in a cluster a route
            // not agreed in time): the SUBACK it holds back would promise
            // what is not kept. Closed instead; the client subscribes again
            // when it is back.
            let id = self.link.client.as_ref().map_or("-", |c| c.client_id());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let why = match g.poll(&mut cx) {
                std::task::Poll::Ready(Err(e)) => e.to_string(),
                _ => "failed".into(),
            };
            tracing::warn!(client_id = id, peer = %self.peer(), error = %why, "an acknowledgement could not be kept: connection closed");
            self.lost = true;
            return;
        }
        // What this acknowledges (from any connection's commits) reaches
        // the operating system first: one write for all of them.
        if !self.link.ctx.broker.engine.flush_store() {
            self.lost = true;
            return;
        }
        let protocol = self.conn.protocol();
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        while let Some(packet) = self.conn.poll_transmit() {
            self.tally.packets_out += 1;
            if let Packet::Publish(p) = &packet {
                let q = p.qos.qos() as usize;
                self.tally
                    .publish_sent(q, p.payload.len(), &self.link.ctx.broker.engine.stats);
            }
            if debug {
                self.trace("sent", &packet);
            }
            if let Err(e) = self.out.push(&packet, protocol) {
                tracing::warn!(peer = %self.peer(), error = %e, "could not encode a packet");
            }
        }
    }

    /// Handle the session's events until one needs the engine to decide
    /// at length (a CONNECT, an AUTH): that one is returned, for
    /// [`Task::slow`] to await in a future of its own.
    fn handle_events(&mut self, now: Instant) -> Option<Slow> {
        // Deliveries completed, told to the engine together at the end:
        // one store write for all of them.
        let mut delivered = Vec::new();
        let mut slow = None;
        while let Some(event) = self.conn.poll_event() {
            if !matches!(event, Event::Message(_)) {
                // Messages held back go first: nothing else is handled
                // while one waits.
                if let Some(client) = &mut self.link.client {
                    client.flush();
                }
            }
            match event {
                Event::ConnectRequest(c) => {
                    let peer = match self.entry.take().map(|e| *e) {
                        Some(Entry::Peer(p)) => p,
                        _ => Peer {
                            addr: self.peer().0,
                            ..Peer::default()
                        },
                    };
                    let login = self.link.ctx.broker.login(*c, peer);
                    self.entry = Some(Box::new(Entry::Login(Box::new(login))));
                    slow = Some(Slow::Login(None));
                    break;
                }
                Event::Auth(a) if matches!(self.entry.as_deref(), Some(Entry::Login(_))) => {
                    self.awaiting_auth = false;
                    slow = Some(Slow::Login(Some(a)));
                    break;
                }
                Event::Auth(a) => {
                    slow = Some(Slow::Reauth(a));
                    break;
                }
                Event::Message(p) => {
                    let packet_id = p.qos.packet_id();
                    let (reason, commit) = match &mut self.link.client {
                        Some(client) => {
                            self.routed = self.routed.saturating_add(1);
                            let more = self.conn.has_events();
                            let reason = client.publish(p, now, more);
                            (reason, client.take_commit())
                        }
                        None => (ReasonCode::SUCCESS, None),
                    };
                    if (reason == ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
                        || reason == ReasonCode::QUOTA_EXCEEDED)
                        && packet_id.is_some()
                        && !self.conn.protocol().is_v5()
                    {
                        // Not stored (or the store is full), and 3.1.1 can
                        // only say "taken": no acknowledgement; the
                        // connection closes and the client sends it again
                        // when it is back.
                        self.lost = true;
                        continue;
                    }
                    if let Some(id) = packet_id {
                        // In the order the PUBLISHes arrived ([MQTT-4.6.0-2]):
                        // events are handled in that order, each
                        // acknowledged in turn, after the store holds what
                        // it acknowledges.
                        if commit.is_none() && self.acks.is_empty() {
                            let _ = self
                                .conn
                                .ack_with_properties(now, id, reason, refusal(reason));
                        } else {
                            self.acks.push_back(PendingAck { id, reason, commit });
                        }
                    }
                }
                Event::Subscribe(s) => {
                    if let Some(client) = &mut self.link.client {
                        let suback = client.subscribe(s, now);
                        if let Some(c) = client.take_commit() {
                            // The SUBACK leaves once the store has them
                            // (and what was waited for already).
                            self.wait_also(c);
                        }
                        if self.conn.suback(now, suback).is_err() {
                            self.lost = true;
                        }
                    }
                }
                Event::Unsubscribe(u) => {
                    if let Some(client) = &mut self.link.client {
                        let unsuback = client.unsubscribe(u);
                        if let Some(c) = client.take_commit() {
                            self.wait_also(c);
                        }
                        if self.conn.unsuback(now, unsuback).is_err() {
                            self.lost = true;
                        }
                    }
                }
                Event::Published { id, .. } | Event::Dropped { id, .. } => {
                    if let Event::Dropped { reason, .. } = &event {
                        match reason {
                            DropReason::TooLarge => Stats::add(&self.stats().dropped_too_large, 1),
                            DropReason::Expired => Stats::add(&self.stats().dropped_expired, 1),
                            _ => {}
                        }
                    }
                    if self.link.client.is_some() {
                        delivered.push(id);
                    }
                }
                Event::Closed(reason) => self.log_close(&reason),
                _ => {}
            }
        }
        if let Some(client) = &mut self.link.client {
            // What was published is queued before anything acknowledging
            // it goes out.
            client.flush();
            client.delivered(&delivered);
        }
        slow
    }

    /// Ask the engine about a CONNECT or an AUTH ([`Task::handle_events`]
    /// stopped at it), watching for the broker's shutdown meanwhile.
    async fn slow(&mut self, now: Instant, slow: Slow) {
        let mut shutdown = self.link.ctx.broker.shutdown_signal();
        match slow {
            Slow::Login(auth) => self.decide_login(now, &mut shutdown, auth).await,
            Slow::Reauth(a) => self.reauthenticate(now, &mut shutdown, a).await,
        }
    }

    /// Work out what the next wait is for, before waiting: give back the
    /// buffers of a quiet connection, count a large packet being received,
    /// and find whether to read, into how much room, and the earliest
    /// deadline (the session's, hibernation's, a stalled packet's, the
    /// publish rate's, and a retry for room).
    fn prepare(&mut self, now: Instant, sparse: bool, last_active: Instant) -> Turn {
        // A trickle, not a stream: between its packets a connection that
        // has just started (a storm's connect and subscribe) or whose
        // packets come far apart holds no buffers (its session machine's
        // queues, its read and write buffers); the next packet takes them
        // again, a few allocations against the wake-up and system calls it
        // costs anyway. A burst keeps them, and so does a dense trickle (a
        // packet every few milliseconds), whose next packet would take them
        // back at once.
        let quiet = std::mem::take(&mut self.quiet) && (self.reads <= YOUNG_READS || sparse);
        if quiet {
            self.conn.shrink();
        }
        let held = self.held_until(now);
        self.charge_partial();
        let can_read = self.out.len() < READ_STOP && held.is_none() && !self.waiting_room;
        // Room is looked for again soon (it frees as others finish).
        let room_retry = self.waiting_room.then(|| now + ROOM_RETRY);
        // A packet begun and not finished (not a CONNECT's followers
        // waiting for the engine, nor input held back while the peer
        // doesn't read): it must go on arriving.
        if self.inbuf.is_empty() || self.paused() || !can_read {
            self.partial_since = None;
        } else if self.partial_since.is_none() {
            self.partial_since = Some(secs_after(self.link.ctx.epoch, now));
        }
        let stall_at = self.stall_at();
        let idle_at = self.idle_at(last_active);
        let deadline = self
            .conn
            .poll_timeout()
            .into_iter()
            .chain(idle_at)
            .chain(stall_at)
            .chain(held)
            .chain(room_retry)
            .min()
            .map(tokio::time::Instant::from_std);
        let hint = self.read_hint as usize;
        if self.inbuf.is_empty() && (quiet || self.inbuf.capacity() > 2 * hint) {
            // Between a trickle's packets, or what a burst left: give it
            // back (frames still in use keep their part alive on their
            // own), as the write queue does below.
            self.inbuf = BytesMut::new();
        }
        // No buffer at all (a quiet connection gave it back): the next
        // read goes through the stack and takes only what arrived.
        let spare = if self.inbuf.capacity() == 0 {
            STACK_READ
        } else {
            if self.inbuf.capacity() - self.inbuf.len() < hint / 2 {
                self.inbuf.reserve(hint);
            }
            self.inbuf.capacity() - self.inbuf.len()
        };
        self.out.shrink_if_idle(quiet);
        self.report();
        Turn {
            can_read,
            spare: u32::try_from(spare).unwrap_or(u32::MAX),
            deadline,
        }
    }

    /// Ask the engine about the CONNECT (or the client's AUTH during its
    /// exchange), bounded by the connect timeout and the shutdown, and
    /// carry out its answer.
    async fn decide_login(
        &mut self,
        now: Instant,
        shutdown: &mut watch::Receiver<bool>,
        auth: Option<Auth>,
    ) {
        let Some(Entry::Login(login)) = self.entry.as_deref_mut() else {
            return;
        };
        // The engine bounds its own waits (throttle, takeover); an
        // application's authenticator is bounded here.
        let limit = 2 * self.link.ctx.broker.session_config().connect_timeout;
        let decision = async {
            match auth {
                None => login.start().await,
                Some(a) => login.auth(a).await,
            }
        };
        let step = unless_shutdown(shutdown, tokio::time::timeout(limit, decision)).await;
        let now = Instant::now().max(now);
        match step {
            Some(Ok(Step::Continue(properties))) => {
                let auth = Auth {
                    reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                    properties,
                };
                self.awaiting_auth = true;
                if self.conn.auth(now, auth).is_err() {
                    self.lost = true;
                }
            }
            Some(Ok(Step::Accept(a))) => {
                self.entry = None;
                let accepted = *a;
                // Kept in case the CONNACK can't be sent: the session must
                // not lose what it holds because of this connection.
                let kept = accepted.accept.state.clone();
                // A stored session's packet identifiers are recorded from
                // the first message sent.
                self.conn.journal(accepted.client.is_durable());
                match self.conn.accept(now, accepted.accept) {
                    Ok(()) => {
                        if let Some(g) = &mut self.link._guard {
                            g.connected();
                        }
                        self.link.client = Some(accepted.client);
                        self.window = window(&self.link.ctx, &self.conn);
                    }
                    Err(e) => {
                        tracing::warn!(client_id = accepted.client.client_id(), error = %e, "could not accept");
                        accepted.client.cancel(kept);
                        self.lost = true;
                    }
                }
            }
            Some(Ok(Step::Refuse(reason, properties))) => {
                self.end_login();
                if self.conn.reject(now, reason, properties).is_err() {
                    self.lost = true;
                }
            }
            // Too slow, or shutting down.
            Some(Err(_)) | None => {
                self.end_login();
                Stats::add(&self.stats().connections_refused, 1);
                if self
                    .conn
                    .reject(now, ReasonCode::SERVER_UNAVAILABLE, Properties::new())
                    .is_err()
                {
                    self.lost = true;
                }
            }
        }
    }

    /// A CONNECT was refused: its peer's address stays for the logs of the
    /// close that follows (an accepted one's is kept by its client).
    fn end_login(&mut self) {
        if let Some(Entry::Login(l)) = self.entry.as_deref() {
            let addr = l.peer_addr();
            self.entry = Some(Box::new(Entry::Peer(Peer {
                addr,
                ..Peer::default()
            })));
        }
    }

    /// A connected client's AUTH: 5.0 re-authentication, decided by the
    /// engine.
    async fn reauthenticate(
        &mut self,
        now: Instant,
        shutdown: &mut watch::Receiver<bool>,
        a: Auth,
    ) {
        let Some(client) = self.link.client.as_mut() else {
            return self.close(ReasonCode::PROTOCOL_ERROR);
        };
        // Bounded as a CONNECT's authentication is: an application's method
        // that hangs must not hold the connection's task.
        let limit = 2 * self.link.ctx.broker.session_config().connect_timeout;
        let step = unless_shutdown(
            shutdown,
            tokio::time::timeout(limit, client.reauthenticate(a)),
        )
        .await;
        let now = Instant::now().max(now);
        let (reason_code, properties) = match step {
            Some(Ok(ReauthStep::Continue(p))) => (ReasonCode::CONTINUE_AUTHENTICATION, p),
            Some(Ok(ReauthStep::Success(p))) => (ReasonCode::SUCCESS, p),
            // [MQTT-4.12.1-2]: a failed re-authentication closes.
            Some(Ok(ReauthStep::Refuse(reason))) => return self.close(reason),
            Some(Err(_)) => return self.close(ReasonCode::NOT_AUTHORIZED),
            None => return self.close(ReasonCode::SERVER_SHUTTING_DOWN),
        };
        let auth = Auth {
            reason_code,
            properties,
        };
        if self.conn.auth(now, auth).is_err() {
            self.lost = true;
        }
    }

    fn log_close(&self, reason: &CloseReason) {
        let id = self.link.client.as_ref().map_or("-", |c| c.client_id());
        match reason {
            CloseReason::Disconnected { reason_code, .. } => {
                tracing::info!(client_id = %id, peer = %self.peer(), reason = %reason_code, "client disconnected");
            }
            other => {
                tracing::info!(client_id = %id, peer = %self.peer(), reason = %other, "connection closed");
            }
        }
    }

    /// Move messages waiting for the client into the session machine while
    /// the socket keeps up and the in-flight window has room.
    fn fill(&mut self, now: Instant) {
        if !self.conn.is_connected() {
            return;
        }
        let mut batch: Vec<Outbound> = Vec::with_capacity(BATCH);
        // A QoS 0 message the session machine lets pass is written from
        // the copy every subscriber shares (not while each packet is
        // logged: that takes the packet).
        let direct = !tracing::enabled!(tracing::Level::DEBUG);
        // Whether messages wait that the socket or the window holds back.
        let behind = loop {
            let Some(client) = self.link.client.as_mut() else {
                return;
            };
            if self.out.len() >= WRITE_HIGH_WATER {
                // The socket is not keeping up: the rest waits in the queue.
                break true;
            }
            let more = client.next_stored(
                BATCH,
                self.conn.send_quota(),
                self.window as usize,
                now,
                &mut batch,
            );
            if batch.is_empty() {
                // Nothing taken: drained, or the window is full.
                break more;
            }
            for m in batch.drain(..) {
                if direct && self.pass(now, &m) {
                    continue;
                }
                let seq = m.seq();
                self.send(now, m.into_message(), seq);
            }
            if !more {
                break false;
            }
        };
        if let Some(client) = self.link.client.as_mut() {
            client.held_back(behind);
        }
    }

    /// Write a QoS 0 message straight from its shared copy, where the
    /// session machine lets it pass ([`Connection::pass_at_most_once`]):
    /// no packet of its own, no count taken on its bytes.
    fn pass(&mut self, now: Instant, m: &Outbound) -> bool {
        let Some(view) = m.as_view() else {
            return false;
        };
        let Some(view) = self.conn.pass_at_most_once(now, view) else {
            return false;
        };
        // Counted as `drain_transmit` counts what the machine sends.
        self.tally.packets_out += 1;
        self.tally
            .publish_sent(0, view.payload.len(), &self.link.ctx.broker.engine.stats);
        if let Err(e) = self.out.push_publish(&view, self.conn.protocol()) {
            tracing::warn!(peer = %self.peer(), error = %e, "could not encode a packet");
        }
        true
    }

    /// Give one message (`seq`: its number in the durable store, or 0) to
    /// the session machine, and send what it can.
    fn send(&mut self, now: Instant, message: Message, seq: u64) {
        let qos = message.qos;
        let result = self.conn.publish(now, message);
        if let Some(client) = &self.link.client {
            match &result {
                Ok(id) => client.delivering(*id, seq, qos),
                Err(_) => client.not_delivered(seq),
            }
        }
        match result {
            Ok(_) => self.drain_transmit(),
            Err(SendError::PacketTooLarge { .. }) => {
                Stats::add(&self.stats().dropped_too_large, 1);
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer(), error = %e, "message not sent");
                Stats::add(&self.stats().dropped_queue_full, 1);
            }
        }
    }

    /// The connection is over: hand the session back.
    fn finish(&mut self) {
        if let Some(client) = self.link.client.take() {
            let state = self.conn.take_state();
            client.close(state, self.conn.close_reason());
        }
    }
}

/// What a refused PUBLISH's PUBACK or PUBREC says in words: a Reason
/// String, which the session machine sends only to a 5.0 client that asked
/// for problem information and has room for it. Nothing for the others.
fn refusal(reason: ReasonCode) -> Properties {
    let text = match reason {
        ReasonCode::NOT_AUTHORIZED => "not authorized to publish to this topic",
        ReasonCode::QUOTA_EXCEEDED => "the broker's store is full",
        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR => "the message could not be stored",
        _ => return Properties::new(),
    };
    let mut p = Properties::new();
    p.set_reason_string(Some(MqttString::from_static(text)));
    p
}

#[cfg(test)]
mod tests {
    use super::super::transport::Pipe;
    use super::*;
    use crate::{Broker, BrokerConfig};
    use petrel_codec::{Connect, MqttString, PacketId, Publish, QosPid, TopicName};
    use tokio::io::AsyncWriteExt;

    /// The bytes bucket: 1,000 bytes a second, a burst of as many; a
    /// 2,500-byte message runs a 1,500-byte debt, held 1.5 s; the messages
    /// bucket, unset, holds nothing.
    #[test]
    fn publish_rate_in_bytes_runs_a_debt_paid_with_time() {
        let t = Instant::now();
        let mut r = PublishRate::new(0, 1000, t);
        r.spend(600, t);
        assert_eq!(r.held_until(), None);
        r.spend(1900, t);
        let held = r.held_until().unwrap();
        assert_eq!(held.duration_since(t).as_millis(), 1500);
        // Half-way, half the debt is paid: spending nothing keeps the date.
        r.spend(0, t + Duration::from_millis(750));
        assert_eq!(r.held_until().unwrap().duration_since(t).as_millis(), 1500);
        r.spend(0, t + Duration::from_millis(1500));
        assert_eq!(r.held_until(), None);
    }

    /// A peer that sends QoS 1 PUBLISHes and never reads its PUBACKs: once
    /// the acknowledgements waiting to be written pass `READ_STOP`, the
    /// connection stops reading, so the peer's writes block rather than the
    /// broker buffering without bound.
    #[tokio::test]
    async fn a_peer_that_does_not_read_is_not_read_either() {
        let broker = Broker::new(BrokerConfig::default()).unwrap();
        let ctx = Ctx::new(broker.clone());
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (r, w) = tokio::io::split(server);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let peer = Box::new(Peer {
            addr: Some(peer),
            ..Peer::default()
        });
        tokio::spawn(serve(ctx, Pipe(r, w), peer, None));
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
