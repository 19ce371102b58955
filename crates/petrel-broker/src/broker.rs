//! The broker's shared state and the decisions that span connections:
//! publishing (retained store, routing, queueing), sessions by client id
//! (connect, takeover, release, expiry) and wills.
//!
//! ## Who runs the core
//! Matching and fan-out run in the publisher's own task, under a read lock
//! of the subscription index, so publishers on different cores route at the
//! same time (the EMQX design, not one router task every message passes
//! through). Writers (SUBSCRIBE, UNSUBSCRIBE) take the write lock briefly.
//! Decisions about one client id (connect, takeover, release, expiry) are
//! serialised by one mutex. No lock is held across an await or a socket
//! write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{Properties, QoS, SubscriptionId, TopicFilter, TopicName};
use petrel_session::{Message, SessionState};
use tokio::sync::{oneshot, watch};

use crate::config::BrokerConfig;
use crate::dormant::{Sleepers, Watcher};
use crate::mailbox::{detach, lock, message_size, Queued, SessionKey};
use crate::stats::{Stats, StatsSnapshot};
use crate::{
    Connected, ConnectionId, Handover, RetainedTree, Routed, Router, SessionRegistry, Subscription,
    WillQueue, NEVER,
};

/// A retained message and when it was stored (its Message Expiry Interval
/// counts from then).
#[derive(Clone, Debug)]
pub(crate) struct Retained {
    pub(crate) message: Message,
    pub(crate) at: Instant,
}

/// The retained store and the bytes it holds.
#[derive(Debug, Default)]
struct RetainedStore {
    tree: RetainedTree<Retained>,
    bytes: usize,
}

impl Retained {
    /// What is left of its expiry interval at `now`: `None` if it has none,
    /// `Some(0)` if it has run out.
    pub(crate) fn remaining(&self, now: Instant) -> Option<u32> {
        let interval = self.message.properties.message_expiry_interval()?;
        let elapsed = now.saturating_duration_since(self.at).as_secs();
        Some(u32::try_from(u64::from(interval).saturating_sub(elapsed)).unwrap_or(0))
    }
}

/// A will waiting for its delay, with the session that published it.
#[derive(Debug)]
pub(crate) struct PendingWill {
    pub(crate) message: Message,
    pub(crate) publisher: Option<SessionKey>,
}

/// Why the broker asks a connection to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kick {
    TakenOver,
}

/// A connection's signal from the broker: why it must close, and the
/// waker of the connection (its task, or the connection itself while it
/// hibernates).
#[derive(Debug, Default)]
pub(crate) struct KickSignal(pub(crate) Mutex<KickState>);

#[derive(Debug, Default)]
pub(crate) struct KickState {
    pub(crate) reason: Option<Kick>,
    pub(crate) waker: Option<Waker>,
}

impl KickSignal {
    fn kick(&self, reason: Kick) {
        let waker = {
            let mut state = lock(&self.0);
            state.reason = Some(reason);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready once kicked (the reason stays for [`KickSignal::take`]).
    pub(crate) fn poll_kicked(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut state = lock(&self.0);
        if state.reason.is_some() {
            return std::task::Poll::Ready(());
        }
        set_waker(&mut state.waker, cx.waker());
        std::task::Poll::Pending
    }

    /// Why the connection was kicked, once.
    pub(crate) fn take(&self) -> Option<Kick> {
        lock(&self.0).reason.take()
    }
}

/// Keep `waker` in `slot`, unless what is there already wakes the same task.
pub(crate) fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

#[derive(Debug, Default)]
pub(crate) struct Core {
    pub(crate) registry: SessionRegistry,
    pub(crate) sessions: HashMap<Arc<str>, SessionKey>,
    /// Connections that hold a session, and how to make them let go.
    holders: HashMap<ConnectionId, Arc<KickSignal>>,
    /// Connections waiting for a holder to let go.
    waiting: HashMap<ConnectionId, (Arc<KickSignal>, oneshot::Sender<Handover>)>,
    wills: WillQueue<PendingWill>,
}

pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) session_config: petrel_session::Config,
    router: RwLock<Router<SessionKey>>,
    retained: RwLock<RetainedStore>,
    core: Mutex<Core>,
    /// Bytes waiting in every session's queue.
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    /// Retained messages waiting in connections' backlogs.
    pub(crate) backlog: AtomicUsize,
    pub(crate) stats: Stats,
    pub(crate) started: Instant,
    /// Distinguishes this broker's assigned client ids from another run's.
    instance: u64,
    next_assigned: std::sync::atomic::AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Hibernating connections, for their deadlines and the shutdown.
    pub(crate) sleepers: Arc<Mutex<Sleepers>>,
    /// The thread watching their sockets, started by the first to sleep
    /// (none if it could not start: then connections stay awake).
    watcher: OnceLock<Option<Watcher>>,
    /// The runtime the connections run on, where woken ones go on.
    pub(crate) runtime: OnceLock<tokio::runtime::Handle>,
}

/// What a CONNECT got from the session registry.
pub(crate) enum Attach {
    /// The session is this connection's.
    Ready(Attached),
    /// Another connection holds it and has been told to let go; the session
    /// comes through the receiver once it has.
    Wait(ConnectionId, oneshot::Receiver<Handover>),
    /// A new session would pass `max_sessions`.
    Full,
}

/// A session now held by a connection.
pub(crate) struct Attached {
    pub(crate) key: SessionKey,
    pub(crate) connection: ConnectionId,
    pub(crate) session_present: bool,
    pub(crate) state: SessionState,
}

/// The broker: shared by every connection task and by the application that
/// embeds it. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with this configuration (not yet listening: see
    /// [`crate::Server`]).
    pub fn new(config: BrokerConfig) -> Self {
        let session_config = config.session_config();
        Self {
            shared: Arc::new(Shared {
                config,
                session_config,
                router: RwLock::new(Router::new()),
                retained: RwLock::new(RetainedStore::default()),
                core: Mutex::new(Core::default()),
                queued_bytes: Arc::new(AtomicUsize::new(0)),
                backlog: AtomicUsize::new(0),
                stats: Stats::default(),
                started: Instant::now(),
                instance: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                next_assigned: std::sync::atomic::AtomicU64::new(1),
                shutdown: watch::channel(false).0,
                sleepers: Arc::new(Mutex::new(Sleepers::default())),
                watcher: OnceLock::new(),
                runtime: OnceLock::new(),
            }),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.shared.config
    }

    /// Publish a message from the application itself (no client): it is
    /// retained if asked and delivered to every matching subscription.
    /// Returns how many subscribers it went to.
    pub fn publish(&self, topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> usize {
        let mut message = Message::new(topic, payload, qos);
        message.retain = retain;
        self.shared.publish(None, message, Instant::now())
    }

    /// The counters `$SYS` reports.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.snapshot()
    }

    /// Save sessions that outlive their connection, and retained messages,
    /// to the configured `persistence` file (the server does it at
    /// shutdown). Returns how many of each were saved.
    pub fn save(&self) -> std::io::Result<(usize, usize)> {
        match &self.shared.config.persistence {
            Some(path) => self.shared.save(path),
            None => Ok((0, 0)),
        }
    }

    /// Read back what [`Broker::save`] wrote (the server does it when it
    /// binds). Returns how many sessions and retained messages were read.
    pub fn load(&self) -> std::io::Result<(usize, usize)> {
        match &self.shared.config.persistence {
            Some(path) => self.shared.load(path),
            None => Ok((0, 0)),
        }
    }

    /// Ask every connection to close (5.0 DISCONNECT 0x8B, Server shutting
    /// down) and every listener to stop.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        s.subscriptions = read(&self.router).len() as u64;
        s.retained = read(&self.retained).tree.len() as u64;
        s.sessions = lock(&self.core).registry.len() as u64;
        s.hibernating = lock(&self.sleepers).len() as u64;
        s
    }

    /// The sleepers' watcher thread, started on first use.
    pub(crate) fn watcher(&self) -> Option<&Watcher> {
        self.watcher
            .get_or_init(|| match Watcher::start(self.sleepers.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no hibernation: the watcher thread did not start");
                    None
                }
            })
            .as_ref()
    }

    /// Wake the hibernating connections whose keep-alive deadline came (or
    /// all of them), each to go on in a task of its own.
    pub(crate) fn wake_sleepers(&self, now: Option<Instant>) {
        let wakers = {
            let mut sleepers = lock(&self.sleepers);
            match now {
                Some(now) => sleepers.due(now),
                None => sleepers.all(),
            }
        };
        for w in wakers {
            w.wake();
        }
    }

    // ------------------------------------------------------------ publish

    /// Retain (if asked), route and queue one message; how many
    /// subscribers it went to.
    pub(crate) fn publish(
        &self,
        publisher: Option<&SessionKey>,
        message: Message,
        now: Instant,
    ) -> usize {
        if message.retain {
            self.retain(&message, now);
        }
        let mut deliveries = Vec::new();
        read(&self.router).route(
            Routed {
                topic: message.topic.as_str(),
                qos: message.qos,
                retain: message.retain,
                publisher,
            },
            |d| deliveries.push(d),
        );
        let count = deliveries.len();
        let limits = &self.config.limits;
        for d in deliveries {
            let out = outgoing(&message, d.qos, d.retain, &d.identifiers);
            d.client.push(out, now, limits, &self.stats);
        }
        count
    }

    /// Store ([MQTT-3.3.1-5]); an empty payload deletes and is not stored
    /// ([MQTT-3.3.1-6], [MQTT-3.3.1-7]; 3.1.1 [MQTT-3.3.1-10], [MQTT-3.3.1-11]).
    fn retain(&self, message: &Message, now: Instant) {
        let mut store = write(&self.retained);
        let store = &mut *store;
        if message.payload.is_empty() {
            if let Some(old) = store.tree.remove(&message.topic) {
                store.bytes -= message_size(&old.message);
            }
            return;
        }
        let limits = &self.config.limits;
        let size = message_size(message);
        let replaced = store
            .tree
            .get(&message.topic)
            .map_or(0, |r| message_size(&r.message));
        let new_topic = replaced == 0;
        if (new_topic && store.tree.len() >= limits.max_retained_messages)
            || store.bytes - replaced + size > limits.max_retained_bytes
        {
            tracing::warn!(topic = %message.topic.as_str(), "retained store full; not stored");
            return;
        }
        let mut stored = message.clone();
        // Kept for long.
        detach(&mut stored);
        // Nothing per connection (a topic alias) stays with it.
        stored.properties = stored
            .properties
            .without(&[petrel_codec::properties::id::TOPIC_ALIAS]);
        store.bytes = store.bytes - replaced + size;
        store.tree.insert(
            &message.topic,
            Retained {
                message: stored,
                at: now,
            },
        );
    }

    /// Queue the retained messages a new subscription to `filter` receives
    /// ([MQTT-3.3.1-8]: with RETAIN 1), within the broker-wide backlog bound;
    /// returns how many did not fit.
    pub(crate) fn retained_for(
        &self,
        filter: &TopicFilter,
        granted: QoS,
        identifier: Option<SubscriptionId>,
        out: &mut VecDeque<Queued>,
    ) -> usize {
        let ids: Vec<SubscriptionId> = identifier.into_iter().collect();
        let max = self.config.limits.max_retained_backlog;
        let mut refused = 0;
        read(&self.retained).tree.matching(filter, |r| {
            if self.backlog.fetch_add(1, Ordering::Relaxed) >= max {
                self.backlog.fetch_sub(1, Ordering::Relaxed);
                refused += 1;
                return;
            }
            // Expiry counts from when it was stored, checked when it is sent.
            let message = outgoing(&r.message, r.message.qos.min(granted), true, &ids);
            out.push_back(Queued { message, at: r.at });
        });
        refused
    }

    /// Every retained message and when it was stored.
    pub(crate) fn retained_messages(&self, now: Instant) -> Vec<(Message, Instant)> {
        let mut out = Vec::new();
        read(&self.retained).tree.for_each(|r| {
            if r.remaining(now) != Some(0) {
                out.push((r.message.clone(), r.at));
            }
        });
        out
    }

    /// Put back a retained message read from storage.
    pub(crate) fn restore_retained(&self, message: Message, at: Instant) {
        let mut store = write(&self.retained);
        store.bytes += message_size(&message);
        let topic = message.topic.clone();
        if let Some(old) = store.tree.insert(&topic, Retained { message, at }) {
            store.bytes -= message_size(&old.message);
        }
    }

    /// Drop retained messages whose expiry passed.
    pub(crate) fn expire_retained(&self, now: Instant) {
        let mut store = write(&self.retained);
        let mut freed = 0;
        store.tree.retain(|r| {
            let keep = r.remaining(now) != Some(0);
            if !keep {
                freed += message_size(&r.message);
            }
            keep
        });
        store.bytes -= freed;
    }

    // ------------------------------------------------------------ subscriptions

    /// Add a subscription; whether it replaced one (for Retain Handling 1),
    /// or `None` if the session holds too many already.
    pub(crate) fn subscribe(
        &self,
        key: &SessionKey,
        filter: &TopicFilter,
        subscription: Subscription,
    ) -> Option<bool> {
        let mut filters = lock(&key.0.filters);
        if !filters.contains_key(filter.as_str())
            && filters.len() >= self.config.limits.max_subscriptions_per_session
        {
            return None;
        }
        // A copy: kept for the session's life, it must not hold on to the
        // read buffer the SUBSCRIBE came in.
        filters.insert(filter.as_str().into(), subscription.clone());
        Some(write(&self.router).subscribe(key.clone(), filter, subscription))
    }

    /// Remove a subscription; whether there was one.
    pub(crate) fn unsubscribe(&self, key: &SessionKey, filter: &TopicFilter) -> bool {
        lock(&key.0.filters).remove(filter.as_str());
        write(&self.router).unsubscribe(key, filter)
    }

    fn drop_subscriptions(&self, key: &SessionKey) {
        // Each was a valid filter when it was stored.
        let filters: Vec<TopicFilter> = lock(&key.0.filters)
            .drain()
            .into_iter()
            .filter_map(|(f, _)| TopicFilter::try_from(&*f).ok())
            .collect();
        if filters.is_empty() {
            return;
        }
        let mut router = write(&self.router);
        for f in &filters {
            router.unsubscribe(key, f);
        }
    }

    // ------------------------------------------------------------ sessions

    pub(crate) fn core_lock(&self) -> std::sync::MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Recreate a detached session read from storage; its key, to restore
    /// its queue and subscriptions.
    pub(crate) fn restore_session(
        &self,
        client_id: &str,
        state: SessionState,
        expiry: u32,
        expires_at: Option<Instant>,
    ) -> SessionKey {
        let mut core = lock(&self.core);
        core.registry
            .insert_detached(client_id, state, expiry, expires_at);
        let key = SessionKey::new(Arc::from(client_id), self.queued_bytes.clone());
        if let Some(old) = core.sessions.insert(key.0.client_id.clone(), key.clone()) {
            old.end();
        }
        key
    }

    /// A client identifier for a client that sent none ([MQTT-3.1.3-6]),
    /// unique among the sessions that exist.
    pub(crate) fn assign_client_id(&self) -> String {
        let core = lock(&self.core);
        loop {
            let n = self.next_assigned.fetch_add(1, Ordering::Relaxed);
            let id = format!("petrel-{:x}-{n}", self.instance);
            if !core.registry.exists(&id) {
                return id;
            }
        }
    }

    /// A CONNECT for `client_id` was accepted by authentication: take its
    /// session, or ask its holder to let go.
    pub(crate) fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry: u32,
        kick: &Arc<KickSignal>,
        now: Instant,
    ) -> Attach {
        let mut due = Vec::new();
        let attach = {
            let mut core = lock(&self.core);
            if !core.registry.exists(client_id)
                && core.registry.len() >= self.config.limits.max_sessions
            {
                return Attach::Full;
            }
            match core
                .registry
                .connect(client_id.clone(), clean_start, expiry)
            {
                Connected::Ready(handover) => {
                    Attach::Ready(self.take(&mut core, client_id, handover, kick, &mut due))
                }
                Connected::TakeOver {
                    connection,
                    holder,
                    superseded,
                } => {
                    // [MQTT-3.1.4-3]: the existing connection is closed.
                    if let Some(k) = core.holders.get(&holder) {
                        k.kick(Kick::TakenOver);
                    }
                    if let Some(old) = superseded {
                        // Dropping its sender tells the waiting connection it lost.
                        core.waiting.remove(&old);
                    }
                    let (tx, rx) = oneshot::channel();
                    core.waiting.insert(connection, (kick.clone(), tx));
                    Attach::Wait(connection, rx)
                }
            }
        };
        self.publish_wills(due, now);
        attach
    }

    fn publish_wills(&self, wills: Vec<PendingWill>, now: Instant) {
        for w in wills {
            self.publish(w.publisher.as_ref(), w.message, now);
        }
    }

    /// Give a handed-over (or new) session to its connection. Wills that
    /// fall due are added to `due`, to publish once the lock is released.
    fn take(
        &self,
        core: &mut Core,
        client_id: &Arc<str>,
        handover: Handover,
        kick: &Arc<KickSignal>,
        due: &mut Vec<PendingWill>,
    ) -> Attached {
        let existing = core.sessions.get(client_id).cloned();
        let key = match existing {
            Some(key) if handover.session_present => {
                // [MQTT-3.1.3-9]: the session continues, so a will still
                // waiting for its delay is not published.
                core.wills.cancel(client_id);
                key
            }
            other => {
                // A new session: the old one's subscriptions and queue go
                // ([MQTT-3.1.2-4]), and a will waiting on it is due now.
                if let Some(old) = other {
                    self.drop_subscriptions(&old);
                    old.end();
                }
                due.extend(core.wills.session_ended(client_id));
                let key = SessionKey::new(client_id.clone(), self.queued_bytes.clone());
                core.sessions.insert(key.0.client_id.clone(), key.clone());
                key
            }
        };
        key.set_online(true);
        core.holders.insert(handover.connection, kick.clone());
        Attached {
            key,
            connection: handover.connection,
            session_present: handover.session_present,
            state: handover.state,
        }
    }

    /// Finish a wait for a takeover: the session arrived.
    pub(crate) fn take_handover(
        &self,
        client_id: &Arc<str>,
        handover: Handover,
        kick: &Arc<KickSignal>,
        now: Instant,
    ) -> Attached {
        let mut due = Vec::new();
        let attached = {
            let mut core = lock(&self.core);
            core.waiting.remove(&handover.connection);
            self.take(&mut core, client_id, handover, kick, &mut due)
        };
        self.publish_wills(due, now);
        attached
    }

    /// A connection waiting to take over gave up. If the session was handed
    /// to it meanwhile, it is released again at once.
    pub(crate) fn abandon(
        &self,
        client_id: &str,
        connection: ConnectionId,
        handover: Option<Handover>,
        expiry: u32,
        now: Instant,
    ) {
        {
            let mut core = lock(&self.core);
            core.waiting.remove(&connection);
            core.registry.abandon(client_id, connection);
        }
        if let Some(h) = handover {
            self.release_state(client_id, None, h.connection, h.state, expiry, None, now);
        }
    }

    /// A connection that held `key`'s session ended. Its will (if the
    /// connection did not end normally) is published or scheduled; the
    /// session passes to a waiting connection, is kept for `expiry`
    /// seconds, or ends.
    pub(crate) fn release(
        &self,
        key: &SessionKey,
        connection: ConnectionId,
        state: SessionState,
        expiry: u32,
        will: Option<(Message, Duration)>,
        now: Instant,
    ) {
        let client_id = key.0.client_id.clone();
        self.release_state(&client_id, Some(key), connection, state, expiry, will, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn release_state(
        &self,
        client_id: &str,
        key: Option<&SessionKey>,
        connection: ConnectionId,
        state: SessionState,
        expiry: u32,
        will: Option<(Message, Duration)>,
        now: Instant,
    ) {
        let mut due = Vec::new();
        {
            let mut core = lock(&self.core);
            core.holders.remove(&connection);
            if !core.registry.holds(client_id, connection) {
                // Superseded or already released: nothing of ours to give.
                return;
            }
            let key = key
                .cloned()
                .or_else(|| core.sessions.get(client_id).cloned());
            if let Some(k) = &key {
                k.set_online(false);
            }
            if let Some((message, delay)) = will {
                let will = PendingWill {
                    message,
                    publisher: key.clone(),
                };
                if delay.is_zero() || expiry == 0 {
                    // [MQTT-3.1.2-8]: due now (no delay, or the session ends now).
                    due.push(will);
                } else {
                    let ends =
                        (expiry != NEVER).then(|| now + Duration::from_secs(u64::from(expiry)));
                    core.wills.schedule(client_id, will, delay, ends, now);
                }
            }
            let mut handover = core
                .registry
                .release(client_id, connection, state, expiry, now);
            while let Some(h) = handover.take() {
                let next = h.connection;
                match core.waiting.remove(&next) {
                    Some((kick, tx)) => {
                        // It holds the session from now: a third connection
                        // must be able to kick it before its task runs.
                        core.holders.insert(next, kick);
                        if let Err(h) = tx.send(h) {
                            // The waiting connection is gone: release for it.
                            core.holders.remove(&next);
                            handover = core.registry.release(client_id, next, h.state, expiry, now);
                        }
                    }
                    None => {
                        handover = core.registry.release(client_id, next, h.state, expiry, now);
                    }
                }
            }
            if !core.registry.exists(client_id) {
                // The session ended with its connection (expiry 0).
                self.end_session(&mut core, client_id, &mut due);
            }
        }
        self.publish_wills(due, now);
    }

    fn end_session(&self, core: &mut Core, client_id: &str, due: &mut Vec<PendingWill>) {
        if let Some(key) = core.sessions.remove(client_id) {
            self.drop_subscriptions(&key);
            key.end();
        }
        due.extend(core.wills.session_ended(client_id));
    }

    /// Time passed: expire sessions and publish wills that are due.
    pub(crate) fn housekeeping(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut core = lock(&self.core);
            for client_id in core.registry.expire(now) {
                let client_id: String = client_id;
                self.end_session(&mut core, &client_id, &mut due);
            }
            due.extend(core.wills.due(now));
        }
        self.publish_wills(due, now);
    }
}

/// The copy of `message` one subscriber receives: the same topic, payload
/// and properties (shared, not copied) with its QoS, RETAIN flag and
/// Subscription Identifiers ([MQTT-3.3.4-3]).
pub(crate) fn outgoing(
    message: &Message,
    qos: QoS,
    retain: bool,
    ids: &[SubscriptionId],
) -> Message {
    let mut properties: Properties = message.properties.clone();
    if !ids.is_empty() {
        properties.set_subscription_identifiers(ids.iter().copied());
    }
    Message {
        topic: message.topic.clone(),
        payload: message.payload.clone(),
        qos,
        retain,
        properties,
    }
}
