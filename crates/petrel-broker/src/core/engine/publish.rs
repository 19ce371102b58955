//! Where messages go: the retained store, routing to subscriptions (with
//! each subscriber's read permission), and the subscription index itself.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use petrel_codec::{QoS, SubscriptionId, TopicFilter, TopicName};
use petrel_session::Message;

use super::Engine;
use crate::core::auth::Access;
use crate::core::queue::{copy_for, detach, message_size, Queued, SessionKey, Shared};
use crate::core::retained::RetainedTree;
use crate::core::router::{Delivery, Routed, SharedGroups, Subscription};
use crate::core::store::{child_key, decode_message, encode_message, wall_time, Commit, Op, Table};
use crate::core::{is_sys, lock, read, write};
use crate::stats::Stats;

/// A retained message and when it was stored (its Message Expiry Interval
/// counts from then).
#[derive(Clone, Debug)]
pub(super) struct Retained {
    pub(super) message: Message,
    pub(super) at: Instant,
    /// When it was retained, in the order of [`RetainedStore::version`]:
    /// a walk for a new subscription leaves out what was retained after
    /// the subscription was made (it reached the subscription live).
    pub(super) version: u64,
}

impl Retained {
    /// What is left of its expiry interval at `now`: `None` if it has none,
    /// `Some(0)` if it has run out.
    fn remaining(&self, now: Instant) -> Option<u32> {
        let interval = self.message.properties.message_expiry_interval()?;
        let elapsed = now.saturating_duration_since(self.at).as_secs();
        Some(u32::try_from(u64::from(interval).saturating_sub(elapsed)).unwrap_or(0))
    }
}

/// What a publish did: how many subscribers it went to, and when what it
/// stored is durable (its acknowledgement waits for that).
#[derive(Debug)]
pub(super) struct Published {
    pub(super) count: usize,
    pub(super) commit: Commit,
}

/// Why a message was not taken (nobody may be told it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotTaken {
    /// What had to be written to the durable store could not be.
    StoreFailed,
    /// The durable store holds `max_store_bytes`, and a stored session
    /// would have had to keep it.
    StoreFull,
}

/// A new subscription's retained messages, being sent a batch at a time:
/// where the walk of the retained store stands.
#[derive(Debug)]
pub(super) struct RetainedWalk {
    pub(super) filter: TopicFilter,
    qos: QoS,
    identifier: Option<SubscriptionId>,
    /// The last topic visited (its own copy: the message may go).
    after: Option<Box<str>>,
    /// The retained store's version when the subscription was made.
    version: u64,
}

/// The retained store and the bytes it holds.
#[derive(Debug, Default)]
pub(super) struct RetainedStore {
    tree: RetainedTree<Retained>,
    bytes: usize,
    /// The topics of retained messages that expire, soonest first: expiry
    /// takes what is due without walking every retained message.
    expiring: BTreeSet<(Instant, Box<str>)>,
    /// How many messages were ever retained (the last one's `version`).
    version: u64,
    /// In a cluster: the version at which a retained message on each
    /// topic was routed here live, before the cluster agreed it (applied,
    /// it takes that version: a walk begun before skips it, one begun
    /// after sends it). At most [`MAX_ROUTED`] topics.
    routed: std::collections::HashMap<Box<str>, u64>,
}

/// Topics [`RetainedStore::routed`] remembers at most (past it, it forgets
/// them all: a walk then may send a message its subscriber had live).
const MAX_ROUTED: usize = 65_536;

impl Retained {
    /// When its Message Expiry Interval runs out, if it has one.
    fn deadline(&self) -> Option<Instant> {
        let interval = self.message.properties.message_expiry_interval()?;
        Some(self.at + std::time::Duration::from_secs(u64::from(interval)))
    }
}

impl RetainedStore {
    /// Store `r` as `topic`'s retained message; the one it replaces. With
    /// `routed`, it was routed to the subscriptions made so far (a walk
    /// begun before it skips it); without, it takes the version at which
    /// it was routed here, if it was ([`RetainedStore::routed`]), else 0:
    /// a walk sends it whenever begun.
    fn put(&mut self, topic: &TopicName, mut r: Retained, routed: bool) -> Option<Retained> {
        self.version += 1;
        r.version = if routed {
            self.version
        } else {
            self.routed.remove(topic.as_str()).unwrap_or(0)
        };
        let deadline = r.deadline();
        let old = self.tree.insert(topic, r);
        if let Some(d) = old.as_ref().and_then(Retained::deadline) {
            self.expiring.remove(&(d, Box::from(topic.as_str())));
        }
        if let Some(d) = deadline {
            self.expiring.insert((d, Box::from(topic.as_str())));
        }
        old
    }

    /// Remove `topic`'s retained message.
    fn take(&mut self, topic: &TopicName) -> Option<Retained> {
        let old = self.tree.remove(topic)?;
        if let Some(d) = old.deadline() {
            self.expiring.remove(&(d, Box::from(topic.as_str())));
        }
        Some(old)
    }

    /// The topics whose retained messages expired by `now`.
    fn due(&self, now: Instant) -> Vec<Box<str>> {
        self.expiring
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

/// What a subscription is charged against `max_subscription_bytes_per_session`
/// and `max_subscription_bytes`: an estimate of what it costs with no prefix
/// shared with another filter (each level a node of the subscription trie,
/// with its map; the filter kept twice, in the trie and in its session; the
/// entries that name the session).
pub(crate) fn subscription_cost(filter: &str) -> usize {
    const PER_SUBSCRIPTION: usize = 128;
    const PER_LEVEL: usize = 256;
    let levels = filter.split('/').count();
    PER_SUBSCRIPTION + 2 * filter.len() + PER_LEVEL * levels
}

/// The QoS and RETAIN flag of `message` as delivery `d` sends it: its own,
/// lowered to what the subscriptions granted, and RETAIN kept only with
/// Retain As Published.
fn copy_of(d: &Delivery<SessionKey>, message: &Message) -> (QoS, bool) {
    (
        message.qos.min(d.granted),
        message.retain && d.retain_as_published,
    )
}

/// The most messages a run holds before they are queued.
const MAX_RUN: usize = 64;

/// Consecutive messages from one connection on one topic, routed once and
/// queued per subscriber together: a pipelining publisher's burst takes
/// each subscriber's queue once, not once per message (with a thousand
/// subscribers, each taking is a cache miss or two). A run lasts while
/// the routing is stable (no shared group: those turn per message) and
/// the subscriptions do not change, and ends when the connection has
/// handled what it read ([`Client::flush`](super::Client::flush)), before
/// anything it acknowledged is written.
#[derive(Debug, Default)]
pub(crate) struct Run {
    /// The topic, while a run is open.
    topic: Option<TopicName>,
    /// The router's version when it was routed.
    version: u64,
    /// Who gets the run's messages.
    targets: Vec<Delivery<SessionKey>>,
    /// The messages, in order.
    messages: Vec<Arc<Shared>>,
}

impl Run {
    /// Whether a message on `topic` continues the run, the router being at
    /// `version` now.
    fn continues(&self, topic: &TopicName, version: u64) -> bool {
        version == self.version && self.topic.as_ref().is_some_and(|t| t == topic)
    }

    /// Whether messages wait in it.
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

impl Engine {
    /// Retain (if asked), route and queue one message; how many
    /// subscribers it went to. A subscriber that may not read the topic
    /// does not get it. [`NotTaken`]: what had to be written to the
    /// durable store could not be (or the store is full), and nothing was
    /// done. Only a `bounded` message (a client's PUBLISH) is refused for
    /// a full store: wills were taken when their client connected, and
    /// `$SYS` and the application's own messages are the broker's.
    ///
    /// With a durable store, a QoS 1/2 copy for a stored session is
    /// written to the store (with `incoming`, the publisher's QoS 2 packet
    /// identifier now awaiting PUBREL, in the same batch) before any
    /// subscriber can see it, so its delivery's completion (which deletes
    /// it) always comes after.
    ///
    /// In a cluster, a message published here (not `forwarded` from
    /// another node, with the shared groups it serves here, and not on a
    /// `$SYS` topic) also goes to the other nodes that want its topic; its
    /// commit then covers their taking it. The cluster picks which node
    /// serves each shared group it matches before it is routed here, and
    /// sends it once this node has stored its own copies (one this node
    /// could not store reaches no other node).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &self,
        publisher: Option<&SessionKey>,
        message: Message,
        incoming: Option<u16>,
        now: Instant,
        bounded: bool,
        run: Option<&mut Run>,
        forwarded: Option<&SharedGroups>,
    ) -> Result<Published, NotTaken> {
        let refused = |e: io::Error, what: &str| {
            Stats::add(&self.stats.store_errors, 1);
            tracing::error!(topic = %message.topic.as_str(), error = %e, "{what} not stored: refused");
        };
        let mut commit = Commit::done();
        // In a cluster, retained messages are agreed: each node keeps
        // them as the cluster applies them (one published here once
        // agreed, its acknowledgement waiting for that), not as they
        // arrive.
        let agreed = match self.peers.as_ref() {
            Some(peers)
                if message.retain && peers.agrees_retained() && !is_sys(message.topic.as_str()) =>
            {
                Some(match forwarded {
                    Some(_) => Commit::done(),
                    None => peers.retain(&message),
                })
            }
            _ => None,
        };
        if let Some(c) = agreed {
            commit = c;
            // Routed here now: when applied, walks begun before skip it.
            let mut store = write(&self.retained);
            store.version += 1;
            let v = store.version;
            if store.routed.len() >= MAX_ROUTED {
                store.routed.clear();
            }
            store.routed.insert(message.topic.as_str().into(), v);
        } else if message.retain {
            match self.retain(&message, now) {
                Ok(c) => commit = c,
                Err(e) => {
                    refused(e, "retained message");
                    return Err(NotTaken::StoreFailed);
                }
            }
        }
        // To the other nodes: they take it, and say which shared groups
        // are served here.
        let sent = match (self.peers.as_ref(), forwarded) {
            (Some(peers), None) if !is_sys(message.topic.as_str()) => Some(peers.forward(&message)),
            _ => None,
        };
        static ALL: SharedGroups = SharedGroups::All;
        let groups = forwarded.or(sent.as_ref().map(|f| &f.here)).unwrap_or(&ALL);
        // A run of earlier messages that this one does not continue is
        // queued first: each subscriber gets them before this one.
        let mut run = run;
        let mut routed = None;
        if let Some(r) = run.as_deref_mut() {
            if !r.messages.is_empty() {
                if r.continues(&message.topic, read(&self.router).version()) {
                    routed = Some((std::mem::take(&mut r.targets), true, r.version));
                } else {
                    self.flush_run(r);
                }
            }
        }
        // Whether `deliveries` are the run's (taken out of it for now).
        let continuing = routed.is_some();
        let (deliveries, stable, version) = match routed {
            Some(routed) => routed,
            None => {
                let mut deliveries = Vec::new();
                let router = read(&self.router);
                let version = router.version();
                let stable = router.route(
                    Routed {
                        topic: message.topic.as_str(),
                        qos: message.qos,
                        retain: message.retain,
                        publisher,
                        groups,
                    },
                    |d| deliveries.push(d),
                );
                drop(router);
                deliveries.retain(|d| {
                    let allowed =
                        !d.authorize || d.client.access().may_receive(message.topic.as_str());
                    if !allowed {
                        Stats::add(&self.stats.denied_delivery, 1);
                    }
                    allowed
                });
                (deliveries, stable, version)
            }
        };
        let count = deliveries.len();
        let durable = match self.store_copies(publisher, &message, incoming, &deliveries, bounded) {
            Ok((durable, c)) => {
                if let Some(c) = c {
                    commit = commit.and(c);
                }
                durable
            }
            Err(e) => {
                if let Some(r) = run.filter(|_| continuing) {
                    r.targets = deliveries;
                }
                return Err(e);
            }
        };
        // Taken here: the other nodes' taking it is part of the commit the
        // acknowledgement waits for.
        let mut count = count;
        if let Some(f) = sent {
            count += f.nodes;
            commit = commit.and(f.commit);
            if let Some(send) = f.send {
                let (nodes, c) = (send.0)();
                count += nodes;
                commit = commit.and(c);
            }
        }
        if deliveries.is_empty() {
            return Ok(Published { count, commit });
        }
        // One copy of the message for every queue: as received (sharing
        // the read buffer), and with bytes of its own, made once if a
        // queue keeps it.
        let view = Shared::new(message, now, false);
        if let Some(r) = run {
            if stable && durable.is_empty() {
                // Queued with the run's other messages, per subscriber at
                // once.
                if !continuing {
                    r.topic = Some(view.message.topic.clone());
                    r.version = version;
                }
                r.targets = deliveries;
                r.messages.push(view);
                if r.messages.len() >= MAX_RUN {
                    self.flush_run(r);
                }
                return Ok(Published { count, commit });
            }
            if continuing {
                // Its copies are stored, numbered one by one: the run goes
                // first, then this message on its own.
                self.queue_run(&deliveries, &mut r.messages);
                r.topic = None;
            }
        }
        let limits = self.limits();
        let mut own: Option<Arc<Shared>> = None;
        let mut dropped = Vec::new();
        let last = deliveries.len() - 1;
        let mut view = Some(view);
        for (i, d) in deliveries.into_iter().enumerate() {
            let seq = durable.get(i).copied().unwrap_or(0);
            let Some(v) = view.take() else { break };
            // The last subscriber takes the reference made for the message:
            // a single subscriber's is then moved, not shared.
            let this = if i == last { v } else { view.insert(v).clone() };
            let (qos, retain) = copy_of(&d, &this.message);
            let client = d.client;
            let queued = client.push_with(
                qos,
                retain,
                d.identifiers,
                seq,
                &limits,
                &self.stats,
                |kept| {
                    if kept {
                        own.get_or_insert_with(|| this.detached()).clone()
                    } else {
                        this
                    }
                },
            );
            if !queued && seq != 0 {
                // Dropped by the queue's policy: not to come back either.
                dropped.push(Op::Delete {
                    table: Table::Queue,
                    key: child_key(client.client_id(), &seq.to_be_bytes()),
                });
            }
        }
        if !dropped.is_empty() {
            // Nothing depends on it but the store's size.
            let _ = self.stored(dropped);
        }
        Ok(Published { count, commit })
    }

    /// With a durable store, write the copies of `message` that stored
    /// sessions keep (QoS 1/2), and the publisher's QoS 2 identifier
    /// awaiting PUBREL, before any is queued: each copy's sequence number
    /// by delivery (none at all if no copy is stored) and the write's
    /// commit.
    fn store_copies(
        &self,
        publisher: Option<&SessionKey>,
        message: &Message,
        incoming: Option<u16>,
        deliveries: &[Delivery<SessionKey>],
        bounded: bool,
    ) -> Result<(Vec<u64>, Option<Commit>), NotTaken> {
        if self.store.is_none() {
            return Ok((Vec::new(), None));
        }
        let mut durable: Vec<u64> = Vec::new();
        let mut ops = Vec::new();
        let wall = SystemTime::now();
        for (i, d) in deliveries.iter().enumerate() {
            let (qos, retain) = copy_of(d, message);
            let Some(seq) = (qos != QoS::AtMostOnce)
                .then(|| d.client.next_seq())
                .flatten()
            else {
                continue;
            };
            let copy = copy_for(message.clone(), qos, retain, &d.identifiers);
            ops.push(Op::Put {
                table: Table::Queue,
                key: child_key(d.client.client_id(), &seq.to_be_bytes()),
                value: encode_message(&copy, wall),
            });
            durable.resize(i, 0);
            durable.push(seq);
        }
        if let (Some(pid), Some(p)) = (incoming, publisher.filter(|p| p.is_stored())) {
            ops.push(Op::Put {
                table: Table::Incoming,
                key: child_key(p.client_id(), &pid.to_be_bytes()),
                value: Vec::new(),
            });
        }
        if bounded && !durable.is_empty() && self.store_full() {
            // Nothing already stored is dropped to make room: the new
            // message is refused instead.
            Stats::add(&self.stats.store_full, 1);
            tracing::debug!(topic = %message.topic.as_str(), "the store is full (max_store_bytes): message refused");
            return Err(NotTaken::StoreFull);
        }
        if ops.is_empty() {
            return Ok((durable, None));
        }
        match self.stored(ops) {
            Ok(c) => Ok((durable, Some(c))),
            Err(e) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(topic = %message.topic.as_str(), error = %e, "message not stored: refused");
                Err(NotTaken::StoreFailed)
            }
        }
    }

    /// Queue a run's messages (see [`Run`]) and end it, giving back what
    /// it held (a wide fan-out's list of subscribers is not kept by a
    /// publisher between bursts).
    pub(super) fn flush_run(&self, r: &mut Run) {
        self.queue_run(&r.targets, &mut r.messages);
        *r = Run::default();
    }

    /// Queue `messages`, in order, for each of `targets`, taking each
    /// subscriber's queue once for all of them.
    fn queue_run(&self, targets: &[Delivery<SessionKey>], messages: &mut Vec<Arc<Shared>>) {
        if messages.is_empty() {
            return;
        }
        let limits = self.limits();
        // Copies with bytes of their own, made once each if a queue keeps
        // them.
        let mut own: Vec<Option<Arc<Shared>>> = Vec::new();
        let last = targets.len().saturating_sub(1);
        let count = messages.len();
        for (t, d) in targets.iter().enumerate() {
            // The last subscriber takes the run's own references: a single
            // subscriber's messages are then moved, not shared.
            let (mut moved, mut shared);
            let batch: &mut dyn Iterator<Item = Arc<Shared>> = if t == last {
                moved = messages.drain(..);
                &mut moved
            } else {
                shared = messages.iter().cloned();
                &mut shared
            };
            d.client.push_run(
                batch,
                d.granted,
                d.retain_as_published,
                &d.identifiers,
                &limits,
                &self.stats,
                |i, m| {
                    if own.len() <= i {
                        own.resize(count, None);
                    }
                    own[i].get_or_insert_with(|| m.detached()).clone()
                },
            );
        }
        messages.clear();
    }

    /// Whether the durable store holds `max_store_bytes` already.
    fn store_full(&self) -> bool {
        let max = self.config.max_store_bytes;
        max != 0 && self.store.as_ref().is_some_and(|s| s.stored_bytes() >= max)
    }

    /// Store ([MQTT-3.3.1-5]); an empty payload deletes and is not stored
    /// ([MQTT-3.3.1-6], [MQTT-3.3.1-7]; 3.1.1 [MQTT-3.3.1-10], [MQTT-3.3.1-11]).
    /// With a durable store, the change is written there first (under the
    /// same lock, so the store sees changes in the order memory does); an
    /// error leaves both unchanged.
    fn retain(&self, message: &Message, now: Instant) -> io::Result<Commit> {
        self.keep_retained(message, now, true)
    }

    /// [`Engine::retain`], of a message retained `at` (its expiry counts
    /// from then), `routed` to the subscriptions made so far or not.
    fn keep_retained(&self, message: &Message, at: Instant, routed: bool) -> io::Result<Commit> {
        let mut store = write(&self.retained);
        let store = &mut *store;
        // `$SYS` describes the running process: made again after a start,
        // never stored.
        let durable = self.store.is_some() && !message.topic.as_str().starts_with('$');
        let mut commit = Commit::done();
        if message.payload.is_empty() {
            if durable && store.tree.get(&message.topic).is_some() {
                commit = self.stored(vec![Op::Delete {
                    table: Table::Retained,
                    key: message.topic.as_str().as_bytes().to_vec(),
                }])?;
            }
            if let Some(old) = store.take(&message.topic) {
                store.bytes -= message_size(&old.message);
            }
            return Ok(commit);
        }
        let limits = self.limits();
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
            return Ok(commit);
        }
        let mut stored = message.clone();
        // Kept for long: its own bytes, not its publisher's read buffer.
        detach(&mut stored);
        // Nothing per connection (a topic alias) stays with it.
        stored.properties = stored
            .properties
            .without(&[petrel_codec::properties::id::TOPIC_ALIAS]);
        if durable {
            commit = self.stored(vec![Op::Put {
                table: Table::Retained,
                key: message.topic.as_str().as_bytes().to_vec(),
                value: encode_message(&stored, wall_time(at)),
            }])?;
        }
        store.bytes = store.bytes - replaced + size;
        store.put(
            &message.topic,
            Retained {
                message: stored,
                at,
                version: 0,
            },
            routed,
        );
        Ok(commit)
    }

    /// Whether a durable store backs it.
    pub(crate) fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// The durable store, if one backs it.
    pub(crate) fn store(&self) -> Option<&std::sync::Arc<dyn crate::core::store::Store>> {
        self.store.as_ref()
    }

    /// Write `ops` to the durable store (if there is one) where nothing
    /// waits on the outcome but the log: the commit, or `None` (logged and
    /// counted) if it failed.
    pub(super) fn write(&self, ops: Vec<Op>) -> Option<Commit> {
        match self.stored(ops) {
            Ok(c) => Some(c),
            Err(e) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(error = %e, "the durable store refused a write");
                None
            }
        }
    }

    /// Hand what was committed to the operating system (before anything
    /// that acknowledges it is sent). A failure is logged and counted; the
    /// caller must not send: `false`.
    pub(crate) fn flush_store(&self) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        match store.flush() {
            Ok(()) => true,
            Err(e) => {
                Stats::add(&self.stats.store_errors, 1);
                tracing::error!(error = %e, "the durable store could not be flushed");
                false
            }
        }
    }

    /// Write `ops` to the durable store, if there is one.
    pub(super) fn stored(&self, ops: Vec<Op>) -> io::Result<Commit> {
        match &self.store {
            Some(s) => s.commit(ops),
            None => Ok(Commit::done()),
        }
    }

    /// Read the durable store back (before the first client): retained
    /// messages, their expiry counting the time the broker was down; an
    /// expired one is dropped from the store too. A value that can't be
    /// read is an error naming its key.
    pub(crate) fn restore(&self) -> io::Result<usize> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut expired = Vec::new();
        let mut restored = 0;
        for (key, value) in store.scan(Table::Retained)? {
            let (message, at) = decode_message(&value, now, wall).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "retained message {:?} can't be read: {e}",
                        String::from_utf8_lossy(&key)
                    ),
                )
            })?;
            let r = Retained {
                message,
                at,
                version: 0,
            };
            if r.remaining(now) == Some(0) {
                expired.push(Op::Delete {
                    table: Table::Retained,
                    key,
                });
                continue;
            }
            self.restore_retained(r.message, r.at);
            restored += 1;
        }
        if !expired.is_empty() {
            store.commit(expired)?;
        }
        let sessions = self.restore_sessions(store.as_ref())?;
        tracing::info!(retained = restored, sessions, store = ?store, "restored from the durable store");
        Ok(restored)
    }

    /// Start sending the retained messages a new subscription to `filter`
    /// receives ([MQTT-3.3.1-8]: with RETAIN 1): nothing is walked yet
    /// (a SUBSCRIBE costs the same whatever is retained); the walk notes
    /// which retained messages exist now, and [`Engine::retained_batch`]
    /// takes them a batch at a time as the client's connection sends them.
    pub(super) fn retained_walk(
        &self,
        filter: &TopicFilter,
        qos: QoS,
        identifier: Option<SubscriptionId>,
    ) -> RetainedWalk {
        RetainedWalk {
            filter: filter.clone(),
            qos,
            identifier,
            after: None,
            version: read(&self.retained).version,
        }
    }

    /// Take up to `max` more of `walk`'s retained messages that `access`
    /// may read into `out` (looking at no more than 16 times that many),
    /// within the broker-wide `max_retained_backlog`
    /// on messages taken and not yet sent (if that is reached the rest of
    /// the walk is dropped, counted as a full queue). Whether the walk is
    /// over.
    pub(super) fn retained_batch(
        &self,
        walk: &mut RetainedWalk,
        access: &Access,
        max: usize,
        out: &mut VecDeque<Queued>,
    ) -> bool {
        let ids: Vec<SubscriptionId> = walk.identifier.into_iter().collect();
        let bound = self.limits().max_retained_backlog;
        let check = !access.receives_all(walk.filter.as_str());
        let mut taken = 0;
        let mut looked = 0;
        let mut full = false;
        let mut last = None;
        let store = read(&self.retained);
        let complete = store
            .tree
            .matching_after(&walk.filter, walk.after.as_deref(), |r| {
                if taken == max || looked == max * 16 {
                    return false;
                }
                looked += 1;
                last = Some(&r.message.topic);
                if r.version > walk.version {
                    // Retained after the subscription was made: routed to
                    // it already.
                    return true;
                }
                if check && !access.may_receive(r.message.topic.as_str()) {
                    Stats::add(&self.stats.denied_delivery, 1);
                    return true;
                }
                if self.backlog.fetch_add(1, Ordering::Relaxed) >= bound {
                    self.backlog.fetch_sub(1, Ordering::Relaxed);
                    full = true;
                    return false;
                }
                taken += 1;
                // Expiry counts from when it was stored, checked when sent.
                out.push_back(Queued::new(
                    Shared::new(r.message.clone(), r.at, true),
                    r.message.qos.min(walk.qos),
                    true,
                    ids.clone(),
                    0,
                ));
                true
            });
        if let Some(t) = last {
            walk.after = Some(t.as_str().into());
        }
        drop(store);
        if full {
            Stats::add(&self.stats.dropped_queue_full, 1);
            tracing::debug!(
                filter = walk.filter.as_str(),
                "max_retained_backlog reached: the rest of the retained messages are not sent"
            );
        }
        complete || full
    }

    /// Retained messages taken out of clients' backlogs (sent or dropped).
    pub(super) fn backlog_done(&self, n: usize) {
        if n > 0 {
            self.backlog.fetch_sub(n, Ordering::Relaxed);
        }
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

    /// The retained messages matching `filter` (those not expired).
    pub(super) fn retained_matching(&self, filter: &petrel_codec::TopicFilter) -> Vec<Message> {
        let now = Instant::now();
        let mut out = Vec::new();
        read(&self.retained).tree.matching(filter, |r| {
            if r.remaining(now) != Some(0) {
                out.push(r.message.clone());
            }
        });
        out
    }

    /// Every retained message but `$SYS`'s.
    /// Each with when it was retained.
    pub(super) fn retained_all(&self) -> Vec<(Message, Instant)> {
        let now = Instant::now();
        let mut out = Vec::new();
        read(&self.retained).tree.for_each(|r| {
            if r.remaining(now) != Some(0) && !is_sys(r.message.topic.as_str()) {
                out.push((r.message.clone(), r.at));
            }
        });
        out
    }

    /// Whether `topic` has a retained message.
    pub(super) fn retained_get(&self, topic: &TopicName) -> bool {
        read(&self.retained).tree.get(topic).is_some()
    }

    /// Retain (or, with an empty payload, delete) `message`, retained
    /// `at`, without routing it (a walk for a subscription made before
    /// sends it too); the store's commit, to wait for.
    pub(super) fn retain_only(&self, message: &Message, at: Instant) -> io::Result<Commit> {
        self.keep_retained(message, at, false)
    }

    /// Bytes the retained messages hold.
    pub(super) fn retained_bytes(&self) -> usize {
        read(&self.retained).bytes
    }

    pub(super) fn retained_count(&self) -> usize {
        read(&self.retained).tree.len()
    }

    /// Put back a retained message read from storage.
    pub(crate) fn restore_retained(&self, message: Message, at: Instant) {
        let mut store = write(&self.retained);
        store.bytes += message_size(&message);
        let topic = message.topic.clone();
        if let Some(old) = store.put(
            &topic,
            Retained {
                message,
                at,
                version: 0,
            },
            false,
        ) {
            store.bytes -= message_size(&old.message);
        }
    }

    /// Drop retained messages whose expiry passed (from the durable store
    /// too; if that fails they stay in both, to go next time).
    pub(super) fn expire_retained(&self, now: Instant) {
        let mut store = write(&self.retained);
        let due = store.due(now);
        if due.is_empty() {
            return;
        }
        if self.store.is_some() {
            let gone: Vec<Op> = due
                .iter()
                .filter(|t| !t.starts_with('$'))
                .map(|t| Op::Delete {
                    table: Table::Retained,
                    key: t.as_bytes().to_vec(),
                })
                .collect();
            if !gone.is_empty() {
                if let Err(e) = self.stored(gone) {
                    Stats::add(&self.stats.store_errors, 1);
                    tracing::error!(error = %e, "expired retained messages not removed from the store");
                    return;
                }
            }
        }
        for t in due {
            let Ok(topic) = TopicName::try_from(&*t) else {
                continue;
            };
            if let Some(old) = store.take(&topic) {
                store.bytes -= message_size(&old.message);
            }
        }
    }

    /// Add a subscription; whether it replaced one (for Retain Handling 1),
    /// or `None` if the session holds too many already, or its
    /// subscriptions (or everyone's) would cost more than their budget.
    pub(crate) fn subscribe(
        &self,
        key: &SessionKey,
        filter: &TopicFilter,
        subscription: Subscription,
    ) -> Option<(bool, Commit)> {
        self.subscribe_within(key, filter, subscription, true)
    }

    /// [`Engine::subscribe`]; `enforce` false for a subscription given
    /// before (restored from storage): it is charged, never refused.
    pub(crate) fn subscribe_within(
        &self,
        key: &SessionKey,
        filter: &TopicFilter,
        subscription: Subscription,
        enforce: bool,
    ) -> Option<(bool, Commit)> {
        let mut filters = key.filters();
        if !filters.contains_key(filter.as_str()) {
            let limits = self.limits();
            let cost = subscription_cost(filter.as_str());
            if enforce {
                if filters.len() >= limits.max_subscriptions_per_session
                    || key.subscription_bytes() + cost > limits.max_subscription_bytes_per_session
                {
                    return None;
                }
                let before = self.subscription_bytes.fetch_add(cost, Ordering::Relaxed);
                if before + cost > limits.max_subscription_bytes {
                    self.subscription_bytes.fetch_sub(cost, Ordering::Relaxed);
                    return None;
                }
            } else {
                self.subscription_bytes.fetch_add(cost, Ordering::Relaxed);
            }
            key.charge_subscriptions(cost as isize);
        }
        // A copy: kept for the session's life, it must not hold on to the
        // read buffer the SUBSCRIBE came in.
        filters.insert(filter.as_str().into(), subscription.clone());
        let mut router = write(&self.router);
        let existed = router.subscribe(key.clone(), filter, subscription);
        let commit = if existed {
            Commit::done()
        } else {
            self.interest(filter.as_str(), true)
        };
        drop(router);
        Some((existed, commit))
    }

    /// Remove a subscription; whether there was one.
    pub(super) fn unsubscribe(&self, key: &SessionKey, filter: &TopicFilter) -> bool {
        if key.filters().remove(filter.as_str()).is_some() {
            self.refund_subscriptions(key, subscription_cost(filter.as_str()));
        }
        let mut router = write(&self.router);
        let removed = router.unsubscribe(key, filter);
        if removed {
            self.interest(filter.as_str(), false);
        }
        removed
    }

    /// Whether a subscription to `filter` would need a route the cluster
    /// can't agree now (see [`Peers::available`](crate::Peers::available)).
    pub(super) fn route_unavailable(&self, filter: &str) -> bool {
        self.peers.as_ref().is_some_and(|p| {
            !is_sys(filter) && !lock(&self.interest).contains_key(filter) && !p.available()
        })
    }

    /// One subscription more (`wanted`) or fewer to `filter` on this node:
    /// the cluster is told when the first is made and the last removed.
    /// Called with the router's write lock held, so that the changes
    /// reach the cluster in the order the router made them.
    fn interest(&self, filter: &str, wanted: bool) -> Commit {
        let Some(peers) = &self.peers else {
            return Commit::done();
        };
        if is_sys(filter) {
            // Each node's own: never sent between nodes.
            return Commit::done();
        }
        let mut counts = lock(&self.interest);
        if wanted {
            let (n, known) = counts
                .entry(filter.into())
                .or_insert_with(|| (0, Commit::done()));
            *n += 1;
            if *n > 1 {
                // Not new here, but perhaps not yet known elsewhere: a
                // second subscriber's SUBACK waits for the first's route.
                return if known.succeeded() {
                    Commit::done()
                } else {
                    known.clone()
                };
            }
            let c = peers.interest(filter, wanted);
            *known = c.clone();
            c
        } else {
            match counts.get_mut(filter) {
                Some((n, _)) if *n > 1 => {
                    *n -= 1;
                    Commit::done()
                }
                Some(_) => {
                    counts.remove(filter);
                    peers.interest(filter, wanted)
                }
                None => Commit::done(),
            }
        }
    }

    /// Give back what `bytes` of `key`'s subscriptions were charged.
    fn refund_subscriptions(&self, key: &SessionKey, bytes: usize) {
        self.subscription_bytes.fetch_sub(bytes, Ordering::Relaxed);
        key.charge_subscriptions(-(bytes as isize));
    }

    /// Remove every subscription of an ended session.
    pub(super) fn drop_subscriptions(&self, key: &SessionKey) {
        // Each was a valid filter when it was stored.
        let drained = key.filters().drain();
        let cost: usize = drained.iter().map(|(f, _)| subscription_cost(f)).sum();
        if cost > 0 {
            self.refund_subscriptions(key, cost);
        }
        let filters: Vec<TopicFilter> = drained
            .into_iter()
            .filter_map(|(f, _)| TopicFilter::try_from(&*f).ok())
            .collect();
        if filters.is_empty() {
            return;
        }
        let mut router = write(&self.router);
        for f in &filters {
            if router.unsubscribe(key, f) {
                self.interest(f.as_str(), false);
            }
        }
    }

    /// The rules were reloaded: resolve every session's permissions again
    /// and whether each of its subscriptions is wholly readable. Returns
    /// how many sessions there were.
    pub(super) fn refresh_permissions(&self) -> usize {
        let security = self.security();
        let keys: Vec<SessionKey> = crate::core::lock(&self.core)
            .registry
            .all_data()
            .cloned()
            .collect();
        for key in &keys {
            let old = key.access();
            let access = Access::resolve(
                key.client_id(),
                old.username.clone(),
                old.claims.clone(),
                &security.authorizers,
            );
            key.set_access(access.clone());
            self.refresh_subscriptions(key, &access);
        }
        keys.len()
    }

    /// Whether each of `key`'s subscriptions needs its deliveries checked,
    /// decided again by `access`. The session's filters stay locked until
    /// the router has the new decisions, so an UNSUBSCRIBE meanwhile can't
    /// be undone by a stale one.
    pub(super) fn refresh_subscriptions(&self, key: &SessionKey, access: &Access) {
        let mut filters = key.filters();
        let mut changed: Vec<(TopicFilter, Subscription)> = Vec::new();
        filters.for_each_mut(|f, s| {
            let authorize = !access.receives_all(f);
            if s.authorize != authorize {
                s.authorize = authorize;
                if let Ok(tf) = TopicFilter::try_from(&**f) {
                    changed.push((tf, s.clone()));
                }
            }
        });
        if !changed.is_empty() {
            let mut router = write(&self.router);
            for (f, s) in changed {
                router.subscribe(key.clone(), &f, s);
            }
        }
        drop(filters);
    }
}
