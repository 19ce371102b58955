//! Where the engine writes what must outlive the process: the [`Store`]
//! trait, the encoding of what is stored, and an in-memory store.
//!
//! The engine writes a change to the store before it lets anyone rely on
//! it (before the acknowledgement goes out), in the same order as it
//! changes its own state, and reads everything back once, before the first
//! client is accepted. It does no I/O itself: the store it is given does
//! (the embedded one is `DiskStore`, in the `durable` module outside
//! `core`).
//!
//! What is stored: retained messages, and every session that outlives its
//! connection (its subscriptions, its QoS 1/2 messages until delivered,
//! the packet identifiers they were sent with, the QoS 2 identifiers
//! received from it awaiting PUBREL), and wills waiting for their delay.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use petrel_codec::{
    Limits, Properties, PropertyContext, QoS, RetainHandling, SubscriptionOptions, TopicName,
};
use petrel_session::Message;

use super::lock;

/// A part of the store, each its own key space. A session's entries in
/// the tables after [`Table::Sessions`] are keyed by its client id, a zero
/// byte (which no client id contains, [MQTT-1.5.4-2]) and what identifies
/// the entry within the session ([`child_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Retained messages: the topic name to [`encode_message`]'s form.
    Retained,
    /// Sessions that outlive their connection: the client id to
    /// [`StoredSession`]'s form.
    Sessions,
    /// Their subscriptions: by filter, to [`encode_subscription`]'s form.
    Subscriptions,
    /// QoS 1/2 messages for them not yet delivered: by sequence number (8
    /// bytes, big-endian), to [`encode_message`]'s form.
    Queue,
    /// Of those, the ones sent: the same key as in [`Table::Queue`], to the
    /// packet identifier they went with and whether PUBREC came.
    Delivery,
    /// QoS 2 packet identifiers received from them and not yet released
    /// (2 bytes, big-endian), to nothing.
    Incoming,
    /// Wills waiting for their delay: the client id to [`encode_will`]'s
    /// form.
    Wills,
    /// A cluster node's consensus state (its Raft log, vote and
    /// snapshot), kept and read by the cluster layer: the engine neither
    /// writes nor reads it. Keys and values are that layer's own.
    Cluster,
    /// Sessions taken out of this node for another one that has not
    /// confirmed it has them yet: the client id to the session's form
    /// ([`crate::Broker::export_session`]). Sent again after a restart.
    Moving,
}

impl Table {
    /// Every table.
    pub const ALL: [Self; 9] = [
        Self::Retained,
        Self::Sessions,
        Self::Subscriptions,
        Self::Queue,
        Self::Delivery,
        Self::Incoming,
        Self::Wills,
        Self::Cluster,
        Self::Moving,
    ];

    /// The tables that hold a session's entries, besides its own record.
    pub const SESSION_CHILDREN: [Self; 4] = [
        Self::Subscriptions,
        Self::Queue,
        Self::Delivery,
        Self::Incoming,
    ];

    /// Its name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Self::Retained => "retained",
            Self::Sessions => "sessions",
            Self::Subscriptions => "subscriptions",
            Self::Queue => "queue",
            Self::Delivery => "delivery",
            Self::Incoming => "incoming",
            Self::Wills => "wills",
            Self::Cluster => "cluster",
            Self::Moving => "moving",
        }
    }
}

/// The key of a session's entry: its client id, a zero byte, `suffix`.
pub fn child_key(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1 + suffix.len());
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

/// The operations that remove `client_id`'s session, and every entry of
/// it, from the store.
pub fn session_delete_ops(client_id: &str) -> Vec<Op> {
    let mut ops: Vec<Op> = Table::SESSION_CHILDREN
        .iter()
        .map(|&table| Op::DeletePrefix {
            table,
            prefix: child_key(client_id, &[]),
        })
        .collect();
    ops.push(Op::Delete {
        table: Table::Sessions,
        key: client_id.as_bytes().to_vec(),
    });
    ops
}
/// Split a [`child_key`] into the client id and the suffix.
pub fn split_child_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let at = key.iter().position(|&b| b == 0)?;
    let id = std::str::from_utf8(&key[..at]).ok()?;
    Some((id, &key[at + 1..]))
}

/// What a session's record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// Its Session Expiry Interval (`u32::MAX`: never).
    pub expiry: u32,
    /// When its last connection ended (wall-clock milliseconds), or `None`
    /// while a connection held it: its expiry counts from then (or from the
    /// start after a crash).
    pub detached: Option<u64>,
    /// The user it belongs to.
    pub owner: Option<String>,
}

const SESSION_FORMAT: u8 = 1;

impl StoredSession {
    /// Its stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SESSION_FORMAT];
        out.extend_from_slice(&self.expiry.to_be_bytes());
        out.extend_from_slice(&self.detached.unwrap_or(0).to_be_bytes());
        if let Some(o) = &self.owner {
            out.push(1);
            out.extend_from_slice(o.as_bytes());
        } else {
            out.push(0);
        }
        out
    }

    /// Read back what [`StoredSession::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        let mut r = Reader(bytes);
        let format = r.take(1)?[0];
        if format != SESSION_FORMAT {
            return Err(corrupt(format!("unknown session layout {format}")));
        }
        let expiry = u32::from_be_bytes(r.array()?);
        let detached = u64::from_be_bytes(r.array()?);
        let owner = match r.take(1)?[0] {
            0 => None,
            1 => Some(std::str::from_utf8(r.0).map_err(corrupt)?.to_string()),
            b => return Err(corrupt(format!("bad owner flag {b}"))),
        };
        Ok(Self {
            expiry,
            detached: (detached != 0).then_some(detached),
            owner,
        })
    }
}

/// A subscription's stored form: its options as SUBSCRIBE's options byte
/// has them (5.0), and its Subscription Identifier.
pub fn encode_subscription(options: &SubscriptionOptions, identifier: Option<u32>) -> Vec<u8> {
    let bits = options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4;
    let mut out = vec![1, bits];
    if let Some(id) = identifier {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out
}

/// Read back what [`encode_subscription`] wrote.
pub fn decode_subscription(bytes: &[u8]) -> io::Result<(SubscriptionOptions, Option<u32>)> {
    let (format, bits, rest) = match bytes {
        [f, b, rest @ ..] => (*f, *b, rest),
        _ => return Err(corrupt("truncated subscription")),
    };
    if format != 1 {
        return Err(corrupt(format!("unknown subscription layout {format}")));
    }
    let qos = QoS::from_u8(bits & 3).ok_or_else(|| corrupt("bad QoS"))?;
    let mut options = SubscriptionOptions::qos(qos);
    options.no_local = bits & 4 != 0;
    options.retain_as_published = bits & 8 != 0;
    options.retain_handling = match (bits >> 4) & 3 {
        0 => RetainHandling::SendOnSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(corrupt("bad retain handling")),
    };
    let identifier = match rest {
        [] => None,
        [a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => return Err(corrupt("bad subscription identifier")),
    };
    Ok((options, identifier))
}

/// Whether an entry of `table` reads back as the broker wrote it (what
/// `petrel store check` asks of each).
pub fn check_entry(table: Table, key: &[u8], value: &[u8]) -> io::Result<()> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let suffix = |len: Option<usize>| -> io::Result<&[u8]> {
        let (_, s) = split_child_key(key).ok_or_else(|| corrupt("no client id in the key"))?;
        match len {
            Some(n) if s.len() != n => Err(corrupt("bad key")),
            _ => Ok(s),
        }
    };
    match table {
        Table::Retained => {
            std::str::from_utf8(key).map_err(corrupt)?;
            decode_message(value, now, wall).map(|_| ())
        }
        Table::Sessions => {
            std::str::from_utf8(key).map_err(corrupt)?;
            StoredSession::decode(value).map(|_| ())
        }
        Table::Subscriptions => {
            std::str::from_utf8(suffix(None)?).map_err(corrupt)?;
            decode_subscription(value).map(|_| ())
        }
        Table::Queue => {
            suffix(Some(8))?;
            decode_message(value, now, wall).map(|_| ())
        }
        Table::Delivery => {
            suffix(Some(8))?;
            decode_delivery(value).map(|_| ())
        }
        Table::Incoming => {
            suffix(Some(2))?;
            if value.is_empty() {
                Ok(())
            } else {
                Err(corrupt("unexpected value"))
            }
        }
        Table::Wills => {
            std::str::from_utf8(key).map_err(corrupt)?;
            decode_will(value).map(|_| ())
        }
        // The cluster layer checks its own entries when it reads them, and
        // a moved session's form is checked whole when it is brought in.
        Table::Cluster | Table::Moving => Ok(()),
    }
}

/// A will's stored form: when it is due (wall-clock milliseconds), then
/// the message as [`encode_message`] has it.
pub fn encode_will(message: &Message, due_ms: u64) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(&encode_message(message, SystemTime::now()));
    out
}

/// Read back what [`encode_will`] wrote: the message and when it is due.
pub fn decode_will(bytes: &[u8]) -> io::Result<(Message, u64)> {
    let mut r = Reader(bytes);
    let format = r.take(1)?[0];
    if format != 1 {
        return Err(corrupt(format!("unknown will layout {format}")));
    }
    let due = u64::from_be_bytes(r.array()?);
    let (m, _) = decode_message(r.0, Instant::now(), SystemTime::now())?;
    Ok((m, due))
}

/// A sent message's stored state: its packet identifier, and whether its
/// PUBREC came.
pub fn encode_delivery(packet_id: u16, released: bool) -> Vec<u8> {
    let [a, b] = packet_id.to_be_bytes();
    vec![1 + u8::from(released), a, b]
}

/// Read back what [`encode_delivery`] wrote.
pub fn decode_delivery(bytes: &[u8]) -> io::Result<(u16, bool)> {
    match bytes {
        [s @ (1 | 2), a, b] => Ok((u16::from_be_bytes([*a, *b]), *s == 2)),
        _ => Err(corrupt("bad delivery state")),
    }
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Where.
        table: Table,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (nothing if absent).
    Delete {
        /// Where.
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix`.
    DeletePrefix {
        /// Where.
        table: Table,
        /// The prefix.
        prefix: Vec<u8>,
    },
}

/// Durable storage for the engine. Its commits complete in the order they
/// were made (a sync covers every commit before it): waiting for the last
/// is waiting for all.
pub trait Store: Send + Sync + fmt::Debug {
    /// Apply `ops` atomically, in order. When it returns `Ok`, they are
    /// visible to [`Store::scan`], and they survive the process being
    /// killed once [`Store::flush`] has run; the [`Commit`] completes when
    /// they also survive a power loss, if the store promises that before an
    /// acknowledgement (`fsync` durability), and at once otherwise.
    fn commit(&self, ops: Vec<Op>) -> io::Result<Commit>;

    /// Every entry of `table`, in key order.
    fn scan(&self, table: Table) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Hand every commit so far to the operating system, for a store
    /// whose commits wait in the process until then (so that many share
    /// one write). The broker calls it before any byte leaves for a
    /// client: what that byte acknowledges survives the process.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Bytes its entries take, for `max_store_bytes` (a store that does
    /// not count them is never full).
    fn stored_bytes(&self) -> u64 {
        0
    }

    /// How long its writes to the operating system (and its syncs, where
    /// acknowledgements wait for them) take, if it measures that.
    fn write_latency(&self) -> Option<&crate::stats::LatencyHistogram> {
        None
    }
}

/// A store in memory: what a process restart loses. For tests and for
/// embedding applications that keep state some other way.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Entries>,
    bytes: std::sync::atomic::AtomicU64,
}

/// Every entry, by table and key.
type Entries = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// When a commit is durable: at once, or when the sync that covers it is
/// done (and, in a cluster, when the other nodes have what it promises:
/// [`Commit::and`]). Whoever acknowledges what it carries waits for it
/// (without blocking anyone else: [`Commit::poll`] takes a waker).
#[derive(Clone, Debug, Default)]
pub struct Commit(Option<Arc<Ticket>>, Option<Arc<Ticket>>);

/// A commit waiting for its sync.
#[derive(Debug, Default)]
pub struct Ticket {
    state: Mutex<TicketState>,
}

#[derive(Debug, Default)]
enum TicketState {
    #[default]
    Waiting,
    /// Whoever waits: the connection that acknowledges, and any ticket
    /// chained to it ([`Commit::and`]).
    Waited(Vec<Waker>),
    Done(Result<(), String>),
}

impl TicketState {
    /// Ready with the result, or `waker` is woken when there is one.
    fn poll(&mut self, waker: &Waker) -> Poll<Result<(), String>> {
        match self {
            Self::Done(r) => Poll::Ready(r.clone()),
            Self::Waited(ws) => {
                if !ws.iter().any(|w| w.will_wake(waker)) {
                    ws.push(waker.clone());
                }
                Poll::Pending
            }
            Self::Waiting => {
                *self = Self::Waited(vec![waker.clone()]);
                Poll::Pending
            }
        }
    }
}

impl Commit {
    /// Durable already.
    pub fn done() -> Self {
        Self(None, None)
    }

    /// Nothing to wait for: [`Commit::done`].
    pub(crate) fn is_nothing(&self) -> bool {
        self.0.is_none() && self.1.is_none()
    }

    /// Durable once `ticket` is [`Ticket::complete`]d.
    pub fn waiting(ticket: Arc<Ticket>) -> Self {
        Self(Some(ticket), None)
    }

    /// Done when both are: this one's tickets and `other`'s; failed if
    /// either fails. (A commit holds two tickets; past two that wait,
    /// the rest are folded into one that is done when they all are.)
    pub fn and(self, other: Self) -> Self {
        // The usual case on the publish path, without the merge below: one
        // side has nothing to wait for.
        match (&self, &other) {
            (_, Self(None, None)) => return self,
            (Self(None, None), _) => return other,
            _ => {}
        }
        // A ticket done well adds nothing; one that failed is kept, so
        // the whole fails.
        let mut seen: Vec<Arc<Ticket>> = Vec::with_capacity(4);
        for t in [self.0, self.1, other.0, other.1].into_iter().flatten() {
            // The same ticket twice (one batch's, for several filters) is
            // waited on once: no chain grows with it.
            if !t.succeeded() && !seen.iter().any(|s| Arc::ptr_eq(s, &t)) {
                seen.push(t);
            }
        }
        let mut waiting = seen.into_iter();
        let (a, b) = (waiting.next(), waiting.next());
        match waiting.next() {
            None => Self(a, b),
            // More than two wait: all but the first are folded into one
            // ticket, done when they all are.
            Some(c) => {
                let rest: Vec<Arc<Ticket>> = b.into_iter().chain([c]).chain(waiting).collect();
                Self(a, Some(Ticket::all(rest)))
            }
        }
    }

    /// Whether it is durable already, without an error: nobody needs to
    /// wait for it (one that failed must still be looked at).
    pub fn succeeded(&self) -> bool {
        [&self.0, &self.1]
            .into_iter()
            .flatten()
            .all(|t| t.succeeded())
    }

    /// Whether it is durable (or failed) already.
    pub fn is_done(&self) -> bool {
        [&self.0, &self.1]
            .into_iter()
            .flatten()
            .all(|t| t.is_done())
    }

    /// Ready when durable, with the first error if any part failed.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        for t in [&self.0, &self.1].into_iter().flatten() {
            match lock(&t.state).poll(cx.waker()) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Ticket {
    /// Whether it was completed.
    pub fn is_done(&self) -> bool {
        matches!(*lock(&self.state), TicketState::Done(_))
    }

    /// Whether it was completed without an error.
    fn succeeded(&self) -> bool {
        matches!(*lock(&self.state), TicketState::Done(Ok(())))
    }

    /// A ticket done when all of `tickets` are (with the first error if
    /// one failed): each, when done, wakes a [`Chain`] that looks at the
    /// rest, so no thread or task waits for them.
    fn all(tickets: Vec<Arc<Self>>) -> Arc<Self> {
        let all = Arc::new(Self::default());
        Waker::from(Arc::new(Chain {
            all: all.clone(),
            tickets,
        }))
        .wake();
        all
    }

    /// Its sync is done (or failed): whoever waits goes on.
    pub fn complete(&self, result: Result<(), String>) {
        let before = std::mem::replace(&mut *lock(&self.state), TicketState::Done(result));
        if let TicketState::Waited(ws) = before {
            ws.into_iter().for_each(Waker::wake);
        }
    }
}

/// A ticket completed when each of several is: woken by each in turn,
/// it looks again and registers itself with the next that still waits.
struct Chain {
    all: Arc<Ticket>,
    tickets: Vec<Arc<Ticket>>,
}

thread_local! {
    /// Chains woken on this thread while one is being looked at: looked at
    /// after it, in a loop, so chains of chains never nest wake-ups (the
    /// stack stays flat however many are joined).
    static WOKEN: std::cell::RefCell<Option<Vec<Arc<Chain>>>> =
        const { std::cell::RefCell::new(None) };
}

impl std::task::Wake for Chain {
    fn wake(self: Arc<Self>) {
        let queued = WOKEN.with(|w| match &mut *w.borrow_mut() {
            Some(q) => {
                q.push(self.clone());
                true
            }
            none => {
                *none = Some(Vec::new());
                false
            }
        });
        if queued {
            return;
        }
        let mut next = Some(self);
        while let Some(chain) = next {
            chain.look();
            next = WOKEN.with(|w| w.borrow_mut().as_mut().and_then(Vec::pop));
        }
        WOKEN.with(|w| *w.borrow_mut() = None);
    }
}

impl Chain {
    /// Complete `all` if every ticket is done; else wait for the first
    /// that is not.
    fn look(self: Arc<Self>) {
        if self.all.is_done() {
            return;
        }
        let waker = Waker::from(self.clone());
        for t in &self.tickets {
            match lock(&t.state).poll(&waker) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return self.all.complete(Err(e)),
                Poll::Pending => return,
            }
        }
        self.all.complete(Ok(()));
    }
}

impl Store for MemoryStore {
    fn commit(&self, ops: Vec<Op>) -> io::Result<Commit> {
        let mut tables = lock(&self.tables);
        let size = |k: &[u8], v: &[u8]| (k.len() + v.len()) as u64;
        let mut bytes = self.bytes.load(std::sync::atomic::Ordering::Relaxed);
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    bytes += size(&key, &value);
                    if let Some(old) = tables.insert((table, key.clone()), value) {
                        bytes -= size(&key, &old);
                    }
                }
                Op::Delete { table, key } => {
                    if let Some(old) = tables.remove(&(table, key.clone())) {
                        bytes -= size(&key, &old);
                    }
                }
                Op::DeletePrefix { table, prefix } => {
                    tables.retain(|(t, k), v| {
                        let keep = *t != table || !k.starts_with(&prefix);
                        if !keep {
                            bytes -= size(k, v);
                        }
                        keep
                    });
                }
            }
        }
        self.bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(Commit::done())
    }

    fn scan(&self, table: Table) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(lock(&self.tables)
            .iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn stored_bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The version of [`encode_message`]'s layout, its first byte.
const MESSAGE_FORMAT: u8 = 1;

/// Why a stored value can't be read back.
fn corrupt(what: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The wall-clock time of `at`, an instant of this process: what
/// [`encode_message`] takes, so that an expiry outlives the process's
/// clock.
pub fn wall_time(at: Instant) -> SystemTime {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A message as stored: its layout version, when it was stored (wall-clock
/// milliseconds, so that its expiry counts the time the broker was down),
/// its QoS and RETAIN flag, its 5.0 properties as on the wire, its topic
/// and its payload.
pub fn encode_message(m: &Message, stored: SystemTime) -> Vec<u8> {
    let props = m.properties.as_wire();
    let topic = m.topic.as_str().as_bytes();
    let millis = stored
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut out = Vec::with_capacity(1 + 8 + 2 + 8 + props.len() + topic.len() + m.payload.len());
    out.push(MESSAGE_FORMAT);
    out.extend_from_slice(&millis.to_be_bytes());
    out.push(m.qos as u8);
    out.push(u8::from(m.retain));
    for part in [props, topic] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&m.payload);
    out
}

/// Read back what [`encode_message`] wrote: the message and when it was
/// stored, as an `Instant` of this process (`now` less its age; a time in
/// the future counts as now).
pub fn decode_message(
    bytes: &[u8],
    now: Instant,
    wall_now: SystemTime,
) -> io::Result<(Message, Instant)> {
    let mut r = Reader(bytes);
    let format = r.take(1)?[0];
    if format != MESSAGE_FORMAT {
        return Err(corrupt(format!("unknown message layout {format}")));
    }
    let millis = u64::from_be_bytes(r.array()?);
    let qos = r.take(1)?[0];
    let qos = QoS::from_u8(qos).ok_or_else(|| corrupt(format!("bad QoS {qos}")))?;
    let retain = r.take(1)?[0] != 0;
    let props = r.sized()?;
    let topic = r.sized()?;
    let payload = r.0;
    let topic = std::str::from_utf8(topic).map_err(corrupt)?;
    let topic = TopicName::try_from(topic).map_err(corrupt)?;
    let properties = Properties::from_wire(
        Bytes::copy_from_slice(props),
        PropertyContext::PUBLISH,
        &Limits::default(),
    )
    .map_err(corrupt)?;
    let mut m = Message::new(topic, Bytes::copy_from_slice(payload), qos);
    m.retain = retain;
    m.properties = properties;
    let stored = UNIX_EPOCH + Duration::from_millis(millis);
    let age = wall_now.duration_since(stored).unwrap_or_default();
    Ok((m, now.checked_sub(age).unwrap_or(now)))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn sized(&mut self) -> io::Result<&'a [u8]> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        let mut m = Message::new(
            TopicName::try_from("a/b").unwrap(),
            Bytes::from_static(b"payload"),
            QoS::ExactlyOnce,
        );
        m.retain = true;
        m.properties.set_message_expiry_interval(Some(60));
        m
    }

    #[test]
    fn a_message_reads_back_with_its_age() {
        let m = message();
        let wall = SystemTime::now();
        let bytes = encode_message(&m, wall - Duration::from_secs(30));
        let now = Instant::now();
        let (back, at) = decode_message(&bytes, now, wall).unwrap();
        assert_eq!(back.topic.as_str(), "a/b");
        assert_eq!(&back.payload[..], b"payload");
        assert_eq!(back.qos, QoS::ExactlyOnce);
        assert!(back.retain);
        assert_eq!(back.properties.message_expiry_interval(), Some(60));
        let age = now.duration_since(at);
        assert!(
            age >= Duration::from_secs(29) && age <= Duration::from_secs(31),
            "{age:?}"
        );
    }

    #[test]
    fn damaged_messages_are_errors_not_panics() {
        let bytes = encode_message(&message(), SystemTime::now());
        let (now, wall) = (Instant::now(), SystemTime::now());
        for cut in 0..bytes.len() - b"payload".len() {
            assert!(
                decode_message(&bytes[..cut], now, wall).is_err(),
                "cut at {cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 99;
        assert!(decode_message(&other, now, wall).is_err());
        let mut qos = bytes;
        qos[9] = 3;
        assert!(decode_message(&qos, now, wall).is_err());
    }

    #[test]
    fn a_commit_is_ready_once_its_ticket_completes() {
        use std::task::Wake;
        struct Flag(std::sync::atomic::AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Commit::done().poll(&mut cx).is_ready());
        let ticket = Arc::new(Ticket::default());
        let c = Commit::waiting(ticket.clone());
        assert!(c.poll(&mut cx).is_pending());
        assert!(!c.is_done());
        ticket.complete(Ok(()));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(matches!(c.poll(&mut cx), Poll::Ready(Ok(()))));
        let failed = Arc::new(Ticket::default());
        failed.complete(Err("disk gone".into()));
        assert!(matches!(
            Commit::waiting(failed).poll(&mut cx),
            Poll::Ready(Err(_))
        ));
    }

    #[test]
    fn the_memory_store_applies_batches_in_order() {
        let s = MemoryStore::new();
        let put = |k: &str, v: &str| Op::Put {
            table: Table::Retained,
            key: k.into(),
            value: v.into(),
        };
        s.commit(vec![put("b", "1"), put("a", "2"), put("b", "3")])
            .unwrap();
        s.commit(vec![Op::Delete {
            table: Table::Retained,
            key: b"a".to_vec(),
        }])
        .unwrap();
        assert_eq!(
            s.scan(Table::Retained).unwrap(),
            vec![(b"b".to_vec(), b"3".to_vec())]
        );
    }
}
