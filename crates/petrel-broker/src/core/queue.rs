//! Each session's shared part: its queue of messages waiting to be sent,
//! filled by publishers (any task) and drained by the connection that holds
//! the session, its subscriptions, and what its owner may receive. The same
//! queue is the offline queue while no connection holds the session.
//!
//! ## Overflow policy
//! A session's queue holds at most `max_queued_messages` messages and
//! `max_queued_bytes` bytes (topic, properties and payload), and all queues
//! together at most `max_queued_bytes_total`. A message that does not fit is dropped
//! and counted (`$SYS/broker/publish/messages/dropped`); the publisher is
//! never slowed and other subscribers are unaffected. QoS 0 messages are
//! queued for a disconnected session only with `queue_qos0_offline`. QoS 1/2
//! messages already handed to the connection (in flight, or acknowledged to
//! us as the publisher's receiver) are never dropped by this policy: they
//! live in the session state and survive reconnects and takeovers.
//!
//! ## Memory a queued message holds
//! A message is counted at its own size. Decoded, its topic, payload and
//! properties are views of the read buffer it arrived in (up to 64 KiB),
//! shared by every subscriber: that costs nothing while it passes through,
//! but one small message kept for long would keep the whole buffer alive
//! uncounted. So a message that is stored rather than passed on gets bytes
//! of its own, copied once per publish and shared by every queue that
//! stores it: one queued for an offline session, or for a connection held
//! back (its socket or its in-flight window full); and a queue whose
//! session goes offline or falls behind has what it holds copied then.
//! (The engine does the same for messages in flight to a subscriber that
//! falls behind, and for those a session keeps while its client is away.)
//! What may still share a read buffer is what a subscriber that keeps up
//! is about to receive.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use petrel_codec::{QoS, SubscriptionId};

use crate::stats::QueueBound;
use petrel_session::Message;

use super::auth::Access;
use super::router::Subscription;
use super::small::SmallMap;
use super::{lock, WakerSlot};
use crate::config::Limits;
use crate::stats::Stats;

/// One message as routed, shared by every queue it goes to: a wide
/// fan-out writes a pointer and a few flags into each subscriber's queue,
/// not a copy of the message (which, written into a thousand cold queues,
/// was a thousand cache misses per line it spanned).
#[derive(Debug)]
pub(crate) struct Shared {
    /// The message as published (its own QoS and RETAIN flag, no
    /// Subscription Identifiers).
    pub(crate) message: Message,
    /// When it came (its Message Expiry Interval counts from then).
    pub(crate) at: Instant,
    /// Its Message Expiry Interval, read once.
    pub(crate) expiry: Option<u32>,
    /// What a queue is charged for it ([`message_size`]).
    pub(crate) size: usize,
    /// Its bytes are its own, not views of the buffer it was read into.
    pub(crate) owned: bool,
}

impl Shared {
    /// `message`, come at `at`; `owned` if its bytes are its own.
    pub(crate) fn new(message: Message, at: Instant, owned: bool) -> Arc<Self> {
        Arc::new(Self {
            expiry: message.properties.message_expiry_interval(),
            size: message_size(&message),
            message,
            at,
            owned,
        })
    }

    /// The same message with bytes of its own.
    pub(crate) fn detached(self: &Arc<Self>) -> Arc<Self> {
        if self.owned {
            return self.clone();
        }
        let mut message = self.message.clone();
        detach(&mut message);
        Self::new(message, self.at, true)
    }
}

/// A message waiting in one session's queue: the shared message and what
/// this subscriber's copy changes in it.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) shared: Arc<Shared>,
    /// Its sequence number in the durable store (0: not stored).
    pub(crate) seq: u64,
    /// The Subscription Identifiers this copy carries, if any (boxed: most
    /// copies have none, and an entry stays half a cache line).
    #[allow(clippy::box_collection)] // 8 bytes instead of 24, on purpose
    pub(crate) ids: Option<Box<Vec<SubscriptionId>>>,
    /// The QoS it goes out with.
    pub(crate) qos: QoS,
    /// The RETAIN flag it goes out with.
    pub(crate) retain: bool,
}

impl Queued {
    /// `shared` as one subscriber receives it.
    pub(crate) fn new(
        shared: Arc<Shared>,
        qos: QoS,
        retain: bool,
        ids: Vec<SubscriptionId>,
        seq: u64,
    ) -> Self {
        Self {
            shared,
            seq,
            ids: (!ids.is_empty()).then(|| Box::new(ids)),
            qos,
            retain,
        }
    }

    /// A message restored as it was queued (its QoS, RETAIN flag and
    /// Subscription Identifiers already the subscriber's).
    pub(crate) fn restored(message: Message, at: Instant, seq: u64) -> Self {
        let (qos, retain) = (message.qos, message.retain);
        Self {
            shared: Shared::new(message, at, true),
            seq,
            ids: None,
            qos,
            retain,
        }
    }

    /// When it came.
    pub(crate) fn at(&self) -> Instant {
        self.shared.at
    }

    /// The subscriber's copy: the shared topic, payload and properties
    /// with its QoS, RETAIN flag and Subscription Identifiers
    /// ([MQTT-3.3.4-3]).
    pub(crate) fn message(&self) -> Message {
        copy_for(
            self.shared.message.clone(),
            self.qos,
            self.retain,
            ids_of(&self.ids),
        )
    }

    /// The subscriber's copy, moved out without a count taken on any of its
    /// bytes where no other queue shares the message (a single
    /// subscriber's).
    pub(crate) fn into_message(self) -> Message {
        let message = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared.message,
            Err(shared) => shared.message.clone(),
        };
        copy_for(message, self.qos, self.retain, ids_of(&self.ids))
    }
}

/// A copy's Subscription Identifiers, as kept in [`Queued`].
#[allow(clippy::box_collection)] // as in `Queued::ids`
fn ids_of(ids: &Option<Box<Vec<SubscriptionId>>>) -> &[SubscriptionId] {
    ids.as_deref().map_or(&[], Vec::as_slice)
}

/// `m` as one subscriber gets it: with its QoS, RETAIN flag and
/// Subscription Identifiers ([MQTT-3.3.4-3]; none: the properties as
/// published).
pub(crate) fn copy_for(mut m: Message, qos: QoS, retain: bool, ids: &[SubscriptionId]) -> Message {
    m.qos = qos;
    m.retain = retain;
    if !ids.is_empty() {
        m.properties
            .set_subscription_identifiers(ids.iter().copied());
    }
    m
}

/// What a queued message costs: topic, properties and payload.
pub(crate) fn message_size(m: &Message) -> usize {
    m.topic.as_str().len() + m.properties.as_wire().len() + m.payload.len()
}

/// Give a message kept for long (a will, a retained message) allocations of
/// its own: decoded, its topic, properties and payload are slices of the
/// buffer its packet was read into, and would keep all of that buffer alive.
pub(crate) fn detach(m: &mut Message) {
    m.topic = m.topic.detached();
    m.payload = bytes::Bytes::copy_from_slice(&m.payload);
    m.properties = m.properties.detached();
}

#[derive(Debug)]
struct Mailbox {
    /// Boxed, and dropped while the session's connection hibernates with
    /// nothing queued: an idle session pays one pointer for it.
    #[allow(clippy::box_collection)] // 8 bytes instead of 32, on purpose
    queue: Option<Box<VecDeque<Queued>>>,
    bytes: usize,
    /// Bytes in every mailbox of the broker.
    total: Arc<AtomicUsize>,
    /// A connection holds the session.
    online: bool,
    /// Its connection is held back: what is queued stays for a while.
    behind: bool,
    /// The session ended: nothing is queued any more.
    ended: bool,
    /// Wakes the connection holding the session (its task, or the
    /// connection itself while it hibernates) when a message comes.
    waker: WakerSlot,
    /// A message came to an empty queue since the connection last looked.
    signal: bool,
    /// Who owns the session and what it may receive, as of its last
    /// connection (deliveries are checked against it while it is away).
    access: Arc<Access>,
    /// Its own bounds instead of the broker's, if its connection brought
    /// some (a bridge's local side).
    bound: Option<Arc<QueueBound>>,
}

impl Mailbox {
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    fn queue(&mut self) -> &mut VecDeque<Queued> {
        self.queue.get_or_insert_with(Box::default)
    }

    fn add(&mut self, q: Queued, front: bool) {
        let size = q.shared.size;
        self.bytes += size;
        self.total.fetch_add(size, Ordering::Relaxed);
        if front {
            self.queue().push_front(q);
        } else {
            self.queue().push_back(q);
        }
    }

    fn pop(&mut self) -> Option<Queued> {
        let q = self.queue.as_mut()?.pop_front()?;
        let size = q.shared.size;
        self.bytes -= size;
        self.total.fetch_sub(size, Ordering::Relaxed);
        Some(q)
    }

    /// Queue the copy `make` gives (told whether it will be kept, see
    /// [`SessionKey::push_with`]) of a message of `qos`, by the overflow
    /// policy; whether it was queued.
    fn offer(
        &mut self,
        qos: QoS,
        limits: &Limits,
        stats: &Stats,
        make: impl FnOnce(bool) -> Queued,
    ) -> bool {
        if self.ended {
            return false;
        }
        let qos0 = qos == QoS::AtMostOnce;
        if qos0 && !self.online && !limits.queue_qos0_offline {
            return false;
        }
        let q = make(!self.online || self.behind);
        let size = q.shared.size;
        let (max_messages, max_bytes) = self
            .bound
            .as_ref()
            .map_or((limits.max_queued_messages, limits.max_queued_bytes), |b| {
                (b.max_messages, b.max_bytes)
            });
        if self.len() >= max_messages
            || self.bytes + size > max_bytes
            || self.total.load(Ordering::Relaxed) + size > limits.max_queued_bytes_total
        {
            if let Some(b) = &self.bound {
                b.dropped.fetch_add(1, Ordering::Relaxed);
            }
            let counter = if qos0 {
                &stats.dropped_qos0
            } else {
                &stats.dropped_queue_full
            };
            Stats::add(counter, 1);
            return false;
        }
        self.add(q, false);
        true
    }

    /// A message came to the empty queue: the connection must be told,
    /// with the waker this gives, once the queue's lock is released (waking
    /// a hibernating connection may take the lock again).
    fn arrived(&mut self) -> Option<Waker> {
        self.signal = true;
        self.waker.take()
    }

    /// Give every queued message bytes of its own: they are to stay.
    fn detach_all(&mut self) {
        if let Some(q) = &mut self.queue {
            q.iter_mut().for_each(|q| q.shared = q.shared.detached());
        }
    }

    fn clear(&mut self) {
        self.queue = None;
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// One session's shared part: its queue, its subscriptions and what its
/// owner may receive.
#[derive(Debug)]
pub(crate) struct SessionShared {
    pub(crate) client_id: Arc<str>,
    mailbox: Mutex<Mailbox>,
    /// The filters this session subscribes to and their options, to remove
    /// them when it ends and to store them.
    /// (Each filter as a plain string: half the size of a `TopicFilter`.)
    filters: Mutex<SmallMap<Box<str>, Subscription>>,
    /// What its subscriptions are charged (see `subscription_cost`).
    sub_bytes: AtomicUsize,
    /// With a durable store, while the session outlives its connections:
    /// how its messages are numbered there and which are with the
    /// connection (boxed: most sessions pay one pointer).
    stored: Mutex<Option<Box<StoredQueue>>>,
}

/// Marks a QoS 2 message's sequence number in [`StoredQueue`]'s map.
pub(crate) const QOS2: u64 = 1 << 63;

/// A stored session's bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct StoredQueue {
    /// The next message's sequence number.
    next_seq: u64,
    /// Messages given to the session machine, by its message id: their
    /// sequence numbers, with [`QOS2`] set for a QoS 2 one (which has a
    /// delivery state in the store too).
    delivering: rustc_hash::FxHashMap<u64, u64>,
}

/// A session as the router knows it: compared and hashed by identity, so a
/// client id reused after its session ended is a different subscriber.
#[derive(Clone, Debug)]
pub(crate) struct SessionKey(Arc<SessionShared>);

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SessionKey {}

impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

/// What [`SessionKey::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The queue is empty now.
    Drained,
    /// Messages are left: the limit or the quota stopped it.
    More,
}

impl SessionKey {
    pub(crate) fn new(client_id: Arc<str>, total: Arc<AtomicUsize>, access: Arc<Access>) -> Self {
        Self(Arc::new(SessionShared {
            client_id,
            mailbox: Mutex::new(Mailbox {
                queue: None,
                bytes: 0,
                total,
                online: false,
                behind: false,
                ended: false,
                waker: WakerSlot::default(),
                signal: false,
                access,
                bound: None,
            }),
            filters: Mutex::new(SmallMap::new()),
            sub_bytes: AtomicUsize::new(0),
            stored: Mutex::new(None),
        }))
    }

    /// Messages waiting in its queue, and their bytes.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let m = lock(&self.0.mailbox);
        (m.len(), m.bytes)
    }

    /// Whether the session is kept in the durable store.
    pub(crate) fn is_stored(&self) -> bool {
        lock(&self.0.stored).is_some()
    }

    /// Keep the session in the durable store (its messages numbered from
    /// `next_seq`), or stop.
    pub(crate) fn set_stored(&self, on: bool, next_seq: u64) {
        let mut s = lock(&self.0.stored);
        match (on, s.is_some()) {
            (true, false) => {
                *s = Some(Box::new(StoredQueue {
                    next_seq: next_seq.max(1),
                    ..StoredQueue::default()
                }));
            }
            (false, true) => *s = None,
            _ => {}
        }
    }

    /// A sequence number for the next message stored (`None` if the
    /// session is not stored).
    pub(crate) fn next_seq(&self) -> Option<u64> {
        let mut s = lock(&self.0.stored);
        let s = s.as_mut()?;
        let seq = s.next_seq;
        s.next_seq += 1;
        Some(seq)
    }

    /// The session machine took stored message `seq` as `message_id`.
    pub(crate) fn delivering(&self, message_id: u64, seq: u64) {
        if let Some(s) = lock(&self.0.stored).as_mut() {
            s.delivering.insert(message_id, seq);
        }
    }

    /// The stored message the session machine knows as `message_id`.
    pub(crate) fn seq_of(&self, message_id: u64) -> Option<u64> {
        lock(&self.0.stored)
            .as_ref()?
            .delivering
            .get(&message_id)
            .copied()
    }

    /// The session machine is done with `message_id`: its sequence number.
    pub(crate) fn delivered(&self, message_id: u64) -> Option<u64> {
        lock(&self.0.stored)
            .as_mut()?
            .delivering
            .remove(&message_id)
    }

    /// The session's client identifier.
    pub(crate) fn client_id(&self) -> &Arc<str> {
        &self.0.client_id
    }

    fn mailbox(&self) -> MutexGuard<'_, Mailbox> {
        lock(&self.0.mailbox)
    }

    /// The session's subscriptions, by filter.
    pub(crate) fn filters(&self) -> MutexGuard<'_, SmallMap<Box<str>, Subscription>> {
        lock(&self.0.filters)
    }

    /// What the session's subscriptions are charged, in bytes.
    pub(crate) fn subscription_bytes(&self) -> usize {
        self.0.sub_bytes.load(Ordering::Relaxed)
    }

    /// Charge (or, negative, refund) the session's subscriptions.
    pub(crate) fn charge_subscriptions(&self, bytes: isize) {
        if bytes >= 0 {
            self.0
                .sub_bytes
                .fetch_add(bytes.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.0
                .sub_bytes
                .fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Who owns the session and what it may receive.
    pub(crate) fn access(&self) -> Arc<Access> {
        self.mailbox().access.clone()
    }

    /// A new connection (or a reloaded rule set) decides what it may do.
    pub(crate) fn set_access(&self, access: Arc<Access>) {
        self.mailbox().access = access;
    }

    /// Bounds of its own for the queue (or the broker's again).
    pub(crate) fn set_bound(&self, bound: Option<Arc<QueueBound>>) {
        self.mailbox().bound = bound;
    }

    /// Queue the message `make` gives, with this subscriber's `qos`,
    /// `retain` flag and Subscription Identifiers, by the overflow policy;
    /// whether it was queued. `make` is told whether the message will be
    /// stored rather than sent at once (the session is offline, or its
    /// connection is held back): then it must give the message bytes of
    /// its own.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_with(
        &self,
        qos: QoS,
        retain: bool,
        ids: Vec<SubscriptionId>,
        seq: u64,
        limits: &Limits,
        stats: &Stats,
        make: impl FnOnce(bool) -> Arc<Shared>,
    ) -> bool {
        let mut mb = self.mailbox();
        let wake = mb.is_empty();
        let queued = mb.offer(qos, limits, stats, |kept| {
            Queued::new(make(kept), qos, retain, ids, seq)
        });
        let waker = (wake && queued).then(|| mb.arrived()).flatten();
        drop(mb);
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// Queue each of `messages` (none of them stored in the durable
    /// store), in order, lowered to the `granted` QoS, RETAIN kept with
    /// `retain_as_published`, with the Subscription Identifiers `ids`, by
    /// the overflow policy, taking the queue once for all. `own(i, m)`
    /// gives message `i` (`m`) with bytes of its own, for a queue that
    /// keeps it (see [`SessionKey::push_with`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_run(
        &self,
        messages: &mut dyn Iterator<Item = Arc<Shared>>,
        granted: QoS,
        retain_as_published: bool,
        ids: &[SubscriptionId],
        limits: &Limits,
        stats: &Stats,
        mut own: impl FnMut(usize, &Arc<Shared>) -> Arc<Shared>,
    ) {
        let mut mb = self.mailbox();
        let wake = mb.is_empty();
        for (i, m) in messages.enumerate() {
            let qos = m.message.qos.min(granted);
            let retain = m.message.retain && retain_as_published;
            mb.offer(qos, limits, stats, |kept| {
                let shared = if kept { own(i, &m) } else { m };
                Queued::new(shared, qos, retain, ids.to_vec(), 0)
            });
        }
        let waker = (wake && !mb.is_empty()).then(|| mb.arrived()).flatten();
        drop(mb);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Take up to `max` messages, of which at most `quota` QoS 1/2 ones,
    /// in order (a QoS 1/2 message past the quota stops the batch: order is
    /// kept), handing each to `take` (under the queue's lock: keep it
    /// short).
    pub(crate) fn take(&self, max: usize, mut quota: usize, mut take: impl FnMut(Queued)) -> Taken {
        let mut mb = self.mailbox();
        for _ in 0..max {
            let Some(q) = mb.pop() else {
                return Taken::Drained;
            };
            if q.qos != QoS::AtMostOnce {
                if quota == 0 {
                    mb.add(q, true);
                    return Taken::More;
                }
                quota -= 1;
            }
            take(q);
        }
        if mb.is_empty() {
            Taken::Drained
        } else {
            Taken::More
        }
    }

    /// Copies of the messages waiting, oldest first (to store them).
    pub(crate) fn queued(&self) -> Vec<(Message, Instant)> {
        self.mailbox()
            .queue
            .iter()
            .flat_map(|q| q.iter())
            .map(|q| (q.message(), q.at()))
            .collect()
    }

    /// Put back messages restored from storage (with their sequence
    /// numbers in the durable store, 0 if none), whatever the QoS 0
    /// policy.
    pub(crate) fn restore_queue(&self, messages: Vec<(Message, Instant, u64)>) {
        let mut mb = self.mailbox();
        for (message, at, seq) in messages {
            mb.add(Queued::restored(message, at, seq), false);
        }
    }

    /// Queue messages brought from elsewhere (a session moved from another
    /// node, merged into this one), after those waiting, whatever the
    /// overflow policy (they were within another node's bounds), with
    /// their sequence numbers in the durable store (0 if none).
    pub(crate) fn append_queue(&self, messages: Vec<(Message, Instant, u64)>) {
        let mut mb = self.mailbox();
        let wake = mb.is_empty();
        for (message, at, seq) in messages {
            mb.add(Queued::restored(message, at, seq), false);
        }
        let waker = (wake && !mb.is_empty()).then(|| mb.arrived()).flatten();
        drop(mb);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The session ended: drop what waits and refuse more.
    pub(crate) fn end(&self) {
        let mut mb = self.mailbox();
        mb.ended = true;
        mb.online = false;
        mb.clear();
    }

    /// [`SessionKey::end`], giving back what waited (oldest first): no
    /// message can come between the last one read and the end.
    pub(crate) fn end_taking(&self) -> Vec<(Message, Instant)> {
        let mut mb = self.mailbox();
        let waiting = mb
            .queue
            .iter()
            .flat_map(|q| q.iter())
            .map(|q| (q.message(), q.at()))
            .collect();
        mb.ended = true;
        mb.online = false;
        mb.clear();
        waiting
    }

    /// Ready once a message came to the empty queue since the last time
    /// it was.
    pub(crate) fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut mb = self.mailbox();
        if std::mem::take(&mut mb.signal) {
            return Poll::Ready(());
        }
        mb.waker.set(cx.waker());
        Poll::Pending
    }

    /// Arm `waker` for the next message, for a connection about to
    /// hibernate. Returns false, arming nothing, if messages already wait
    /// (the connection must not sleep); otherwise the empty queue gives its
    /// memory back.
    pub(crate) fn arm(&self, waker: &Waker) -> bool {
        let mut mb = self.mailbox();
        if !mb.is_empty() {
            return false;
        }
        mb.queue = None;
        mb.waker.set(waker);
        true
    }

    /// Forget the waker [`SessionKey::arm`] or [`SessionKey::poll_signal`]
    /// left.
    pub(crate) fn disarm(&self) {
        self.mailbox().waker.clear();
    }

    pub(crate) fn set_online(&self, online: bool) {
        let mut mb = self.mailbox();
        if !online && mb.online {
            mb.detach_all();
        }
        mb.online = online;
        mb.behind = false;
    }

    /// Whether the session's connection is held back (its socket or its
    /// in-flight window full) and what is queued stays for a while; the
    /// queue's messages get bytes of their own when it starts to be.
    pub(crate) fn set_behind(&self, behind: bool) {
        let mut mb = self.mailbox();
        if behind && !mb.behind {
            mb.detach_all();
        }
        mb.behind = behind;
    }
}
