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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{Properties, QoS, SubscriptionId, TopicFilter, TopicName};
use petrel_session::{Message, SessionState};
use tokio::sync::{oneshot, watch, Notify};

use crate::config::BrokerConfig;
use crate::mailbox::{lock, SessionKey};
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

/// A connection's signal from the broker.
#[derive(Debug, Default)]
pub(crate) struct KickSignal {
    pub(crate) notify: Notify,
    pub(crate) reason: Mutex<Option<Kick>>,
}

impl KickSignal {
    fn kick(&self, reason: Kick) {
        *lock(&self.reason) = Some(reason);
        self.notify.notify_one();
    }
}

#[derive(Debug, Default)]
pub(crate) struct Core {
    registry: SessionRegistry,
    sessions: HashMap<Arc<str>, SessionKey>,
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
    retained: RwLock<RetainedTree<Retained>>,
    core: Mutex<Core>,
    pub(crate) stats: Stats,
    pub(crate) started: Instant,
    pub(crate) shutdown: watch::Sender<bool>,
}

/// What a CONNECT got from the session registry.
pub(crate) enum Attach {
    /// The session is this connection's.
    Ready(Attached),
    /// Another connection holds it and has been told to let go; the session
    /// comes through the receiver once it has.
    Wait(ConnectionId, oneshot::Receiver<Handover>),
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
                retained: RwLock::new(RetainedTree::new()),
                core: Mutex::new(Core::default()),
                stats: Stats::default(),
                started: Instant::now(),
                shutdown: watch::channel(false).0,
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
        s.retained = read(&self.retained).len() as u64;
        s.sessions = lock(&self.core).registry.len() as u64;
        s
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

    /// [MQTT-3.3.1-5]: store; [MQTT-3.3.1-10], [MQTT-3.3.1-11]: an empty
    /// payload deletes and is not stored.
    fn retain(&self, message: &Message, now: Instant) {
        let mut store = write(&self.retained);
        if message.payload.is_empty() {
            store.remove(&message.topic);
            return;
        }
        if store.len() >= self.config.limits.max_retained_messages
            && store.get(&message.topic).is_none()
        {
            tracing::warn!(topic = %message.topic.as_str(), "retained store full; not stored");
            return;
        }
        let mut stored = message.clone();
        // [MQTT-3.3.1-6] the stored message keeps its own topic; nothing per
        // connection (aliases) stays with it.
        stored.properties = stored
            .properties
            .without(&[petrel_codec::properties::id::TOPIC_ALIAS]);
        store.insert(
            &message.topic,
            Retained {
                message: stored,
                at: now,
            },
        );
    }

    /// The retained messages a new subscription to `filter` receives, with
    /// their remaining expiry applied; expired ones are skipped.
    pub(crate) fn retained_for(
        &self,
        filter: &TopicFilter,
        granted: QoS,
        identifier: Option<SubscriptionId>,
        now: Instant,
        out: &mut std::collections::VecDeque<Message>,
    ) {
        let ids: Vec<SubscriptionId> = identifier.into_iter().collect();
        read(&self.retained).matching(filter, |r| {
            let remaining = r.remaining(now);
            if remaining == Some(0) {
                return;
            }
            // [MQTT-3.3.1-8]: sent because of a new subscription, RETAIN 1.
            let mut m = outgoing(&r.message, r.message.qos.min(granted), true, &ids);
            if let Some(left) = remaining {
                m.properties.set_message_expiry_interval(Some(left));
            }
            out.push_back(m);
        });
    }

    /// Drop retained messages whose expiry passed.
    pub(crate) fn expire_retained(&self, now: Instant) {
        write(&self.retained).retain(|r| r.remaining(now) != Some(0));
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
        if !filters.contains(filter)
            && filters.len() >= self.config.limits.max_subscriptions_per_session
        {
            return None;
        }
        filters.insert(filter.clone());
        Some(write(&self.router).subscribe(key.clone(), filter, subscription))
    }

    /// Remove a subscription; whether there was one.
    pub(crate) fn unsubscribe(&self, key: &SessionKey, filter: &TopicFilter) -> bool {
        lock(&key.0.filters).remove(filter);
        write(&self.router).unsubscribe(key, filter)
    }

    fn drop_subscriptions(&self, key: &SessionKey) {
        let filters: Vec<TopicFilter> = lock(&key.0.filters).drain().collect();
        if filters.is_empty() {
            return;
        }
        let mut router = write(&self.router);
        for f in &filters {
            router.unsubscribe(key, f);
        }
    }

    // ------------------------------------------------------------ sessions

    /// A CONNECT for `client_id` was accepted by authentication: take its
    /// session, or ask its holder to let go.
    pub(crate) fn attach(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
        kick: &Arc<KickSignal>,
        now: Instant,
    ) -> Attach {
        let mut core = lock(&self.core);
        match core.registry.connect(client_id, clean_start, expiry) {
            Connected::Ready(handover) => {
                Attach::Ready(self.take(&mut core, client_id, handover, kick, now))
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
                    if let Some((k, _)) = core.waiting.remove(&old) {
                        k.kick(Kick::TakenOver);
                    }
                }
                let (tx, rx) = oneshot::channel();
                core.waiting.insert(connection, (kick.clone(), tx));
                Attach::Wait(connection, rx)
            }
        }
    }

    /// Give a handed-over (or new) session to its connection.
    fn take(
        &self,
        core: &mut Core,
        client_id: &str,
        handover: Handover,
        kick: &Arc<KickSignal>,
        now: Instant,
    ) -> Attached {
        let existing = core.sessions.get(client_id).cloned();
        let key = match existing {
            Some(key) if handover.session_present => {
                // [MQTT-3.1.2-8]: the session continues, so a will still
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
                if let Some(w) = core.wills.session_ended(client_id) {
                    self.publish(w.publisher.as_ref(), w.message, now);
                }
                let key = SessionKey::new(Arc::from(client_id));
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
        client_id: &str,
        handover: Handover,
        kick: &Arc<KickSignal>,
        now: Instant,
    ) -> Attached {
        let mut core = lock(&self.core);
        core.waiting.remove(&handover.connection);
        self.take(&mut core, client_id, handover, kick, now)
    }

    /// A connection waiting to take over gave up.
    pub(crate) fn abandon(&self, client_id: &str, connection: ConnectionId) {
        let mut core = lock(&self.core);
        core.waiting.remove(&connection);
        core.registry.abandon(client_id, connection);
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
        let mut core = lock(&self.core);
        core.holders.remove(&connection);
        key.set_online(false);
        if let Some((message, delay)) = will {
            let session_ends = now + Duration::from_secs(u64::from(expiry));
            if delay.is_zero() || expiry == 0 {
                // [MQTT-3.1.2-8]: due now (no delay, or the session ends now).
                self.publish(Some(key), message, now);
            } else {
                let will = PendingWill {
                    message,
                    publisher: Some(key.clone()),
                };
                let ends = (expiry != NEVER).then_some(session_ends);
                core.wills.schedule(&client_id, will, delay, ends, now);
            }
        }
        let handover = core
            .registry
            .release(&client_id, connection, state, expiry, now);
        if let Some(h) = handover {
            let next = h.connection;
            match core.waiting.remove(&next) {
                Some((_, tx)) => {
                    if let Err(h) = tx.send(h) {
                        // The waiting connection is gone: keep the session.
                        core.registry
                            .release(&client_id, next, h.state, expiry, now);
                    }
                }
                None => {
                    core.registry
                        .release(&client_id, next, h.state, expiry, now);
                }
            }
            return;
        }
        if !core.registry.exists(&client_id) {
            // The session ended with its connection (expiry 0).
            self.end_session(&mut core, &client_id, now);
        }
    }

    fn end_session(&self, core: &mut Core, client_id: &str, now: Instant) {
        if let Some(key) = core.sessions.remove(client_id) {
            self.drop_subscriptions(&key);
            key.end();
        }
        if let Some(w) = core.wills.session_ended(client_id) {
            self.publish(w.publisher.as_ref(), w.message, now);
        }
    }

    /// Time passed: expire sessions and publish wills that are due.
    pub(crate) fn housekeeping(&self, now: Instant) {
        let mut core = lock(&self.core);
        for client_id in core.registry.expire(now) {
            let client_id: String = client_id;
            self.end_session(&mut core, &client_id, now);
        }
        for w in core.wills.due(now) {
            self.publish(w.publisher.as_ref(), w.message, now);
        }
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
