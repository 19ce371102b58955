//! One connected client as the engine sees it: what it may do, what it
//! publishes and subscribes to, the messages waiting for it, and how its
//! connection ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{
    Auth, Properties, Protocol, Publish, PublishView, QoS, QosPid, ReasonCode, RetainHandling,
    SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use petrel_session::{CloseReason, Message, SessionState};
use tokio::sync::oneshot;

use super::publish::{NotTaken, RetainedWalk, Run};
use super::Engine;
use crate::core::auth::{
    Access, Action, AuthExchange, Credentials, DecisionCache, Exchange, Identity, CACHED_TOPIC,
};
use crate::core::queue::{detach, Queued, SessionKey, Taken, QOS2};
use crate::core::router::Subscription;
use crate::core::sessions::{ConnectionId, Handover};
use crate::core::store::{child_key, encode_delivery, encode_subscription, Commit, Op, Table};
use crate::core::{is_sys, lock, own_connection_state, too_deep, WakerSlot};
use crate::stats::{DisconnectReason, LocalHistogram, Stats};

/// Why the engine asks a connection to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kick {
    /// Another connection took its session over ([MQTT-3.1.4-3]: 5.0
    /// DISCONNECT 0x8E Session taken over).
    TakenOver,
    /// An administrator asked (5.0 DISCONNECT 0x98 Administrative action).
    Administrative,
    /// The broker is drained: the client is to use another server (5.0
    /// DISCONNECT 0x9C Use another server, with the Server Reference
    /// [`Broker::drain`](crate::Broker::drain) was given).
    UseAnotherServer,
}

impl Kick {
    /// The reason code a 5.0 DISCONNECT carries.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Self::TakenOver => ReasonCode::SESSION_TAKEN_OVER,
            Self::Administrative => ReasonCode::ADMINISTRATIVE_ACTION,
            Self::UseAnotherServer => ReasonCode::USE_ANOTHER_SERVER,
        }
    }
}

#[derive(Debug, Default)]
struct ReachState {
    /// Why the connection must close, once kicked.
    kick: Option<Kick>,
    waker: WakerSlot,
    /// Where the session goes while the connection waits to take it over.
    handover: Option<oneshot::Sender<Handover>>,
}

/// What the engine knows of a connected client beyond its session, for
/// the admin API and metrics. One per connection, so it is kept in
/// jemalloc's 64-byte class (a `SocketAddr` and the listener's name would
/// take it to 80).
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) username: Option<Arc<str>>,
    addr: Option<PackedAddr>,
    /// The listener it came through (its rules, shared by all its
    /// connections, and with them its name).
    pub(crate) listener: Arc<super::rules::ListenerRules>,
    pub(crate) protocol: Protocol,
    /// When it connected, in milliseconds since the Unix epoch (half the
    /// room of a `SystemTime`).
    pub(crate) connected_ms: u64,
    pub(crate) keep_alive: u16,
    pub(crate) clean_start: bool,
    pub(crate) expiry: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ConnInfo>() <= 64);

impl ConnInfo {
    /// What a CONNECT accepted from `addr` through `listener` left to know.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        username: Option<Arc<str>>,
        addr: Option<std::net::SocketAddr>,
        listener: Arc<super::rules::ListenerRules>,
        protocol: Protocol,
        connected_ms: u64,
        keep_alive: u16,
        clean_start: bool,
        expiry: u32,
    ) -> Self {
        Self {
            username,
            addr: addr.map(PackedAddr::from),
            listener,
            protocol,
            connected_ms,
            keep_alive,
            clean_start,
            expiry,
        }
    }

    /// The peer's address, as its transport gave it at CONNECT.
    pub(crate) fn addr(&self) -> Option<std::net::SocketAddr> {
        self.addr.map(std::net::SocketAddr::from)
    }
}

/// A socket address in 24 bytes (`SocketAddr` takes 32): an IPv4 address
/// as its IPv6-mapped form, the port, and an IPv6 address's scope. An IPv6
/// address's flow label is not kept (a connection's peer has none that
/// matters to anyone reading it back).
#[derive(Clone, Copy, PartialEq, Eq)]
struct PackedAddr {
    ip: [u8; 16],
    scope_id: u32,
    port: u16,
    v6: bool,
}

impl From<std::net::SocketAddr> for PackedAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        match a {
            std::net::SocketAddr::V4(a) => Self {
                ip: a.ip().to_ipv6_mapped().octets(),
                scope_id: 0,
                port: a.port(),
                v6: false,
            },
            std::net::SocketAddr::V6(a) => Self {
                ip: a.ip().octets(),
                scope_id: a.scope_id(),
                port: a.port(),
                v6: true,
            },
        }
    }
}

impl std::fmt::Debug for PackedAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&std::net::SocketAddr::from(*self), f)
    }
}

impl From<PackedAddr> for std::net::SocketAddr {
    fn from(a: PackedAddr) -> Self {
        let ip = std::net::Ipv6Addr::from(a.ip);
        match (a.v6, ip.to_ipv4_mapped()) {
            (false, Some(v4)) => Self::V4(std::net::SocketAddrV4::new(v4, a.port)),
            _ => Self::V6(std::net::SocketAddrV6::new(ip, a.port, 0, a.scope_id)),
        }
    }
}

/// How the engine reaches one connection: to tell it to let go of its
/// session, or to hand it the session it waits for.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    state: Mutex<ReachState>,
    /// Set once the CONNECT is accepted.
    /// (A pointer, where a `OnceLock` of the box would take twice the room
    /// in every connection's record.)
    info: once_cell::race::OnceBox<ConnInfo>,
    /// Its QoS 1/2 messages the client has not yet acknowledged, as its
    /// connection last said.
    inflight: std::sync::atomic::AtomicU32,
}

impl Reach {
    pub(super) fn set_info(&self, info: ConnInfo) {
        let _ = self.info.set(Box::new(info));
    }

    pub(crate) fn info(&self) -> Option<&ConnInfo> {
        self.info.get()
    }

    pub(crate) fn inflight(&self) -> u32 {
        self.inflight.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn kick(&self, reason: Kick) {
        let waker = {
            let mut state = lock(&self.state);
            state.kick = Some(reason);
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Kick> {
        let mut state = lock(&self.state);
        if let Some(reason) = state.kick.take() {
            return Poll::Ready(reason);
        }
        state.waker.set(cx.waker());
        Poll::Pending
    }

    /// Arm `waker` for a kick; false (arming nothing) if kicked already.
    fn arm(&self, waker: &Waker) -> bool {
        let mut state = lock(&self.state);
        if state.kick.is_some() {
            return false;
        }
        state.waker.set(waker);
        true
    }

    fn disarm(&self) {
        lock(&self.state).waker.clear();
    }

    /// This connection waits for a takeover: where the session will come.
    pub(super) fn await_handover(&self) -> oneshot::Receiver<Handover> {
        let (tx, rx) = oneshot::channel();
        lock(&self.state).handover = Some(tx);
        rx
    }

    /// It will never get the session (another connection superseded it).
    pub(super) fn cancel_handover(&self) {
        lock(&self.state).handover.take();
    }

    /// Hand it the session; the handover back if it is gone (moved, not
    /// copied, and rare: a takeover).
    #[allow(clippy::result_large_err)]
    pub(super) fn send_handover(&self, h: Handover) -> Result<(), Handover> {
        let tx = lock(&self.state).handover.take();
        match tx {
            Some(tx) => tx.send(h),
            None => Err(h),
        }
    }
}

/// Where a re-authentication stands (4.12.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReauthStep {
    /// Send AUTH 0x18 Continue Authentication with these properties.
    Continue(Properties),
    /// Send AUTH 0x00 Success with these properties: the client proved who
    /// it is again.
    Success(Properties),
    /// Refused: send DISCONNECT with this reason and close.
    Refuse(ReasonCode),
}

/// A publish decision remembered for the last topic, then for a few
/// hundred more.
#[derive(Debug, Default)]
struct PublishCache {
    last: Option<(Box<str>, bool)>,
    decisions: DecisionCache,
}

/// One connected client: what its connection asks the engine, and what the
/// engine tells it. Dropped without [`Client::close`] (its task panicked,
/// say), it hands the session back as a lost connection would.
pub struct Client {
    engine: Arc<Engine>,
    key: SessionKey,
    connection: ConnectionId,
    reach: Arc<Reach>,
    access: Arc<Access>,
    /// The rules' generation `access` was resolved in.
    generation: u64,
    /// Session Expiry Interval in force.
    expiry: u32,
    protocol: Protocol,
    /// Holds the session (not yet closed).
    open: bool,
    /// The connection is held back (as last told to the session's queue).
    behind: bool,
    /// A 3.1.x bridge (Mosquitto's bridge flag in CONNECT): its
    /// subscriptions don't get back what it published, and keep the retain
    /// flag as published, as with 5.0's No Local and Retain As Published.
    bridge: bool,
    /// A connection the program made to itself (a bridge's local side):
    /// the operator's own, so `retain_available`, `wildcard_subscriptions`
    /// and `shared_subscriptions` do not hold it back (a bridge forwards
    /// retained messages and subscribes with wildcards).
    internal: bool,
    /// What most clients never need, in one box: a connection that
    /// hibernates keeps only the pointer.
    extra: Option<Box<Extra>>,
}

/// How many retained messages a new subscription's walk takes at a time
/// (they go out before the next batch is taken).
const RETAINED_BATCH: usize = 64;

/// The parts of a [`Client`] most clients never use.
#[derive(Default)]
struct Extra {
    will: Option<(Message, Duration)>,
    cache: Option<PublishCache>,
    /// Retained messages for new subscriptions, sent before live ones:
    /// those taken from the retained store, and the walks of it that go on
    /// as these are sent (one per filter).
    backlog: VecDeque<Queued>,
    walks: VecDeque<RetainedWalk>,
    reauth: Option<Box<dyn AuthExchange>>,
    /// The last publish's store write, until it is durable.
    commit: Option<Commit>,
    /// Messages published and routed, not yet queued (see [`Run`]).
    run: Run,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.will.is_none()
            && self.cache.is_none()
            && self.backlog.is_empty()
            && self.walks.is_empty()
            && self.reauth.is_none()
            && self.commit.is_none()
            && self.run.is_empty()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id())
            .field("username", &self.username())
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// What a login settled, to build its [`Client`].
pub(super) struct Settled {
    pub(super) key: SessionKey,
    pub(super) connection: ConnectionId,
    pub(super) reach: Arc<Reach>,
    pub(super) access: Arc<Access>,
    pub(super) generation: u64,
    pub(super) expiry: u32,
    pub(super) protocol: Protocol,
    pub(super) will: Option<(Message, Duration)>,
    pub(super) bridge: bool,
    pub(super) internal: bool,
}

impl Client {
    pub(super) fn new(engine: Arc<Engine>, s: Settled) -> Self {
        engine.stats.client_connected();
        Self {
            engine,
            key: s.key,
            connection: s.connection,
            reach: s.reach,
            access: s.access,
            generation: s.generation,
            expiry: s.expiry,
            protocol: s.protocol,
            open: true,
            behind: false,
            bridge: s.bridge,
            internal: s.internal,
            extra: s.will.map(|will| {
                Box::new(Extra {
                    will: Some(will),
                    ..Extra::default()
                })
            }),
        }
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Give back the box of rarely used parts once it holds nothing.
    fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }

    /// The peer's address, as its transport gave it at CONNECT.
    pub(crate) fn addr(&self) -> Option<std::net::SocketAddr> {
        self.reach.info().and_then(ConnInfo::addr)
    }

    /// Its client identifier.
    pub fn client_id(&self) -> &str {
        self.key.client_id()
    }

    /// Its user name, as authentication settled it.
    pub fn username(&self) -> Option<&str> {
        self.access.username.as_deref()
    }

    /// The permissions in force, resolved again if the rules were reloaded.
    fn access(&mut self) -> &Access {
        let current = self.engine.generation();
        if self.generation != current {
            let security = self.engine.security();
            let access = Access::resolve(
                self.key.client_id(),
                self.access.username.clone(),
                self.access.claims.clone(),
                &security.authorizers,
            );
            self.key.set_access(access.clone());
            self.access = access;
            self.generation = current;
            if let Some(e) = &mut self.extra {
                e.cache = None;
            }
        }
        &self.access
    }

    /// A PUBLISH the broker refuses before the session acknowledges it,
    /// closing the connection with the reason: above the Maximum QoS it
    /// told the client ([MQTT-3.2.2-11]), retained where it keeps none
    /// (`retain_available`), or a topic deeper than `max_topic_levels`.
    pub fn check_publish(&self, p: &Publish) -> Option<ReasonCode> {
        let limits = self.engine.limits();
        if p.qos.qos() as u8 > limits.max_qos {
            return Some(ReasonCode::QOS_NOT_SUPPORTED);
        }
        if p.retain && !limits.retain_available && !self.internal {
            return Some(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
        if too_deep(p.topic.as_str(), limits.max_topic_levels) {
            return Some(ReasonCode::TOPIC_NAME_INVALID);
        }
        None
    }

    fn may_publish(&mut self, topic: &str) -> bool {
        if self.access().is_unrestricted() {
            // $SYS belongs to the broker, as Mosquitto's default rules say,
            // but for a client's own link state.
            return !is_sys(topic) || own_connection_state(topic, self.key.client_id());
        }
        // Fields borrowed apart: no reference count touched on this path.
        let access = &self.access;
        let id = self.key.client_id();
        let cache = self
            .extra
            .get_or_insert_with(Box::default)
            .cache
            .get_or_insert_with(PublishCache::default);
        if let Some((last, decision)) = &cache.last {
            if **last == *topic {
                return *decision;
            }
        }
        let mut fresh = false;
        let decision = cache.decisions.get(topic, || {
            fresh = true;
            access.check(Action::Publish, topic) || own_connection_state(topic, id)
        });
        if fresh && topic.len() <= CACHED_TOPIC {
            // A topic seen for the first time becomes the one remembered
            // first (a publisher mostly repeats its topic).
            cache.last = Some((topic.into(), decision));
        }
        decision
    }

    /// A PUBLISH from the client: authorise it, retain it if asked, route
    /// it. Returns the reason its PUBACK or PUBREC carries: 0x87 Not
    /// authorized for a topic it may not write (in 3.1.1, which has no
    /// reason codes, the message is acknowledged and dropped, as Mosquitto
    /// does), 0x97 Quota exceeded when the durable store is full, 0x83
    /// Implementation specific error when it could not be written (for
    /// 3.1.1 the driver then closes instead), 0x10 No matching
    /// subscribers, or Success. Routed before it is
    /// acknowledged ([MQTT-4.3.2-4], [MQTT-4.3.3-8] hold: it is ours now).
    ///
    /// With `more` (other packets from the client wait to be handled), the
    /// message may be held back to be queued together with the messages on
    /// the same topic that follow, until [`Client::flush`]: call it before
    /// anything acknowledged goes out.
    pub fn publish(&mut self, p: Publish, now: Instant, more: bool) -> ReasonCode {
        if !self.may_publish(p.topic.as_str()) {
            Stats::add(&self.engine.stats.denied_publish, 1);
            tracing::debug!(client_id = %self.client_id(), topic = %p.topic.as_str(), "publish not authorized");
            return ReasonCode::NOT_AUTHORIZED;
        }
        // A QoS 2 identifier now awaits PUBREL: stored with the message.
        let incoming = match p.qos {
            petrel_codec::QosPid::ExactlyOnce(pid) => Some(pid.get()),
            _ => None,
        };
        let mut message = Message::new(p.topic, p.payload, p.qos.qos());
        message.retain = p.retain;
        message.properties = p.properties;
        let hold = more || self.extra.as_ref().is_some_and(|e| !e.run.is_empty());
        let run = hold.then(|| &mut self.extra.get_or_insert_with(Box::default).run);
        match self
            .engine
            .publish(Some(&self.key), message, incoming, now, true, run, None)
        {
            // Not stored: the driver must not acknowledge it as taken.
            Err(NotTaken::StoreFailed) => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            Err(NotTaken::StoreFull) => ReasonCode::QUOTA_EXCEEDED,
            Ok(p) => {
                if !p.commit.succeeded() {
                    self.extra().commit = Some(p.commit);
                }
                if p.count == 0 {
                    ReasonCode::NO_MATCHING_SUBSCRIBERS
                } else {
                    ReasonCode::SUCCESS
                }
            }
        }
    }

    /// Queue the messages [`Client::publish`] held back.
    pub fn flush(&mut self) {
        if let Some(e) = self.extra.as_mut().filter(|e| !e.run.is_empty()) {
            self.engine.flush_run(&mut e.run);
            self.tidy();
        }
    }

    /// Whether its session is kept in the durable store (the connection
    /// records its session machine's changes: [`Client::record`]).
    pub fn is_durable(&self) -> bool {
        self.engine.has_store() && self.key.is_stored()
    }

    /// What the last [`Client::publish`] wrote to the durable store, if it
    /// is not durable yet: its acknowledgement must wait for it (and be
    /// an error if it fails). Taken once.
    pub fn take_commit(&mut self) -> Option<Commit> {
        self.extra.as_mut().and_then(|e| e.commit.take())
    }

    /// A SUBSCRIBE: one reason code per filter, in order ([MQTT-3.9.3-1]):
    /// the granted QoS, 0x87 Not authorized, 0x8F for a filter deeper than
    /// `max_topic_levels`, 0x9E / 0xA2 for a shared or wildcard filter the
    /// configuration turned off, 0x97 past `max_subscriptions_per_session` (3.1.1
    /// sees 0x80 Failure for each refusal), 0x83 in a cluster that can't
    /// agree the filter's route now. Retained messages the client may
    /// read are queued for it ([`Client::next_messages`]).
    pub fn subscribe(&mut self, s: Subscribe, _now: Instant) -> SubAck {
        let limits = self.engine.limits();
        let max_qos = QoS::from_u8(limits.max_qos).unwrap_or(QoS::ExactlyOnce);
        let max_levels = limits.max_topic_levels;
        let identifier = s.properties.subscription_identifiers().first();
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        self.access();
        let generation = self.generation;
        // With a durable store: the subscriptions granted, written before
        // the SUBACK goes.
        let mut ops = Vec::new();
        let stored = self.engine.has_store() && self.key.is_stored();
        // In a cluster: when the other nodes know of the filters new on
        // this node (the SUBACK waits for it too).
        let mut routed = Commit::done();
        // A filter repeated in one SUBSCRIBE is subscribed each time (the
        // last options win), but its retained messages are looked up once,
        // at its last occurrence, as new if it was new before the packet.
        let mut seen = std::collections::HashSet::new();
        let mut last: Vec<bool> = s
            .subscriptions
            .iter()
            .rev()
            .map(|sub| seen.insert(sub.filter.as_str()))
            .collect();
        last.reverse();
        let mut existed_before: std::collections::HashMap<&str, bool> =
            std::collections::HashMap::new();
        for (i, sub) in s.subscriptions.iter().enumerate() {
            let filter = sub.filter.as_str();
            if too_deep(filter, max_levels) {
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if let Some(refused) = unavailable(filter, &limits).filter(|_| !self.internal) {
                codes.push(refused);
                continue;
            }
            if !self.access.check(Action::Subscribe, filter) {
                Stats::add(&self.engine.stats.denied_subscribe, 1);
                tracing::debug!(client_id = %self.client_id(), filter, "subscribe not authorized");
                codes.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            if self.engine.route_unavailable(filter) {
                tracing::debug!(client_id = %self.client_id(), filter, "subscribe refused: the cluster can't agree a route now");
                codes.push(ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR);
                continue;
            }
            let mut options = sub.options;
            options.qos = options.qos.min(max_qos);
            if self.bridge {
                options.no_local = true;
                options.retain_as_published = true;
            }
            let subscription = Subscription {
                options,
                identifier,
                authorize: !self.access.receives_all(filter),
            };
            match self.engine.subscribe(&self.key, &sub.filter, subscription) {
                None => codes.push(ReasonCode::QUOTA_EXCEEDED),
                Some((existed, known)) => {
                    routed = routed.and(known);
                    let existed = *existed_before.entry(filter).or_insert(existed);
                    codes.push(ReasonCode(options.qos as u8));
                    if stored {
                        ops.push(Op::Put {
                            table: Table::Subscriptions,
                            key: child_key(self.key.client_id(), filter.as_bytes()),
                            value: encode_subscription(&options, identifier.map(|i| i.get())),
                        });
                    }
                    let send = match options.retain_handling {
                        RetainHandling::SendOnSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for a shared
                    // subscription (4.8.2).
                    // Nothing is walked here: the walk goes on as the
                    // connection sends (`next_stored`). A repeated filter
                    // starts its walk again rather than adding one.
                    if send && last[i] && sub.filter.shared().is_none() {
                        let fresh = self
                            .engine
                            .retained_walk(&sub.filter, options.qos, identifier);
                        let walks = &mut self.extra().walks;
                        match walks.iter_mut().find(|w| w.filter == sub.filter) {
                            // Again from the first topic, with the new options.
                            Some(w) => *w = fresh,
                            None => walks.push_back(fresh),
                        }
                    }
                }
            }
        }
        if self.engine.generation() != generation {
            // The rules were reloaded while these subscriptions were being
            // made; the reload may not have seen them: decide them again.
            self.access();
            self.engine.refresh_subscriptions(&self.key, &self.access);
        }
        if !ops.is_empty() {
            if let Some(c) = self.engine.write(ops) {
                routed = routed.and(c);
            }
        }
        if !routed.succeeded() {
            self.extra().commit = Some(routed);
        }
        self.tidy();
        SubAck {
            packet_id: s.packet_id,
            properties: Properties::new(),
            reason_codes: codes,
        }
    }

    /// An UNSUBSCRIBE: Success, or 0x11 No subscription existed, per filter.
    pub fn unsubscribe(&mut self, u: Unsubscribe) -> UnsubAck {
        let stored = self.engine.has_store() && self.key.is_stored();
        let mut ops = Vec::new();
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.engine.unsubscribe(&self.key, f) {
                    if stored {
                        ops.push(Op::Delete {
                            table: Table::Subscriptions,
                            key: child_key(self.key.client_id(), f.as_str().as_bytes()),
                        });
                    }
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        if let Some(e) = &mut self.extra {
            // Retained messages not taken yet for a filter that went are
            // not sent.
            e.walks.retain(|w| !u.filters.contains(&w.filter));
        }
        if !ops.is_empty() {
            if let Some(c) = self.engine.write(ops).filter(|c| !c.succeeded()) {
                self.extra().commit = Some(c);
            }
        }
        self.tidy();
        UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::new(),
            reason_codes: codes,
        }
    }

    /// Messages to send next: up to `max`, of which at most `quota` QoS
    /// 1/2 ones (the connection's send quota), retained ones for new
    /// subscriptions first, in order. A message whose Message Expiry
    /// Interval ran out while it waited is dropped ([MQTT-3.3.2-5]); the
    /// others carry what is left of theirs ([MQTT-3.3.2-6]). Returns
    /// whether more wait.
    ///
    /// `window` is the connection's whole in-flight window: a client that
    /// has more than half of it unacknowledged is falling behind, and the
    /// QoS 1/2 messages it is given get bytes of their own (they may stay
    /// in flight for long, and must not keep their publishers' read
    /// buffers alive meanwhile).
    pub fn next_messages(
        &mut self,
        max: usize,
        quota: usize,
        window: usize,
        now: Instant,
        out: &mut Vec<Message>,
    ) -> bool {
        let mut taken = Vec::new();
        let more = self.next_stored(max, quota, window, now, &mut taken);
        out.extend(taken.into_iter().map(Outbound::into_message));
        more
    }

    /// [`Client::next_messages`], each still shared with the other
    /// subscribers and with its sequence number in the durable store
    /// ([`Outbound`]).
    pub fn next_stored(
        &mut self,
        max: usize,
        mut quota: usize,
        window: usize,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) -> bool {
        let stats = &self.engine.stats;
        let behind = quota * 2 < window;
        let mut expired = Vec::new();
        let more = {
            let expired = &mut expired;
            let mut deliver =
                |q: Queued, out: &mut Vec<Outbound>| deliver(stats, q, behind, now, out, expired);
            let mut taken = 0;
            if let Some(extra) = self
                .extra
                .as_mut()
                .filter(|e| !e.backlog.is_empty() || !e.walks.is_empty())
            {
                if extra.backlog.is_empty() {
                    // The next batch of the oldest walk.
                    while let Some(walk) = extra.walks.front_mut() {
                        let over = self.engine.retained_batch(
                            walk,
                            &self.access,
                            RETAINED_BATCH,
                            &mut extra.backlog,
                        );
                        if !over {
                            break;
                        }
                        extra.walks.pop_front();
                        if !extra.backlog.is_empty() {
                            break;
                        }
                    }
                }
                let backlog = &mut extra.backlog;
                let before = backlog.len();
                while taken < max {
                    let Some(q) = backlog.front() else { break };
                    if q.qos != QoS::AtMostOnce {
                        if quota == 0 {
                            break;
                        }
                        quota -= 1;
                    }
                    if let Some(q) = backlog.pop_front() {
                        taken += 1;
                        deliver(q, out);
                    }
                }
                self.engine.backlog_done(before - backlog.len());
                if !backlog.is_empty() || !extra.walks.is_empty() {
                    return true;
                }
                *backlog = VecDeque::new();
                // (`tidy`, with `stats` still borrowed.)
                if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
                    self.extra = None;
                }
            }
            if taken >= max {
                // Perhaps more: the caller asks again.
                return true;
            }
            // Live messages (not retained ones for a new subscription):
            // how long each waited since its PUBLISH arrived.
            let mut waited = LocalHistogram::default();
            let more = self.key.take(max - taken, quota, |q| {
                waited.record(now.saturating_duration_since(q.at()));
                deliver(q, out);
            }) == Taken::More;
            stats.delivery_latency.merge(&waited);
            more
        };
        self.forget(&expired);
        more
    }

    /// The session machine took stored message `seq` (from
    /// [`Client::next_stored`]), of QoS `qos`, as `message_id`.
    pub fn delivering(&self, message_id: petrel_session::MessageId, seq: u64, qos: QoS) {
        if seq != 0 {
            let mark = if qos == QoS::ExactlyOnce { QOS2 } else { 0 };
            self.key.delivering(message_id.0, seq | mark);
        }
    }

    /// The session machine is done with `message_ids` (delivered, or
    /// dropped for good): their stored messages leave the store, in one
    /// write.
    pub fn delivered(&self, message_ids: &[petrel_session::MessageId]) {
        let seqs: Vec<u64> = message_ids
            .iter()
            .filter_map(|m| self.key.delivered(m.0))
            .collect();
        self.forget(&seqs);
    }

    /// A stored message that will never be sent (dropped before the session
    /// machine had it).
    pub fn not_delivered(&self, seq: u64) {
        if seq != 0 {
            self.forget(&[seq]);
        }
    }

    /// Remove stored messages `seqs` of this session (and, for those
    /// marked [`QOS2`], their delivery state). Nothing acknowledged depends
    /// on it: if it is lost, a QoS 1 message is sent again, and a QoS 2
    /// one's PUBREL.
    fn forget(&self, seqs: &[u64]) {
        if seqs.is_empty() || !self.engine.has_store() {
            return;
        }
        let id = self.key.client_id();
        let mut ops = Vec::with_capacity(seqs.len() * 2);
        for marked in seqs {
            let key = child_key(id, &(marked & !QOS2).to_be_bytes());
            if marked & QOS2 != 0 {
                ops.push(Op::Delete {
                    table: Table::Delivery,
                    key: key.clone(),
                });
            }
            ops.push(Op::Delete {
                table: Table::Queue,
                key,
            });
        }
        self.engine.write(ops);
    }

    /// Store what the session machine's journal says (packet identifiers
    /// given, PUBRECs received, received identifiers freed) before what it
    /// causes is sent: the commit to wait for, if it is not durable yet.
    pub fn record(&mut self, changes: Vec<petrel_session::Change>) -> Option<Commit> {
        use petrel_session::Change;
        if changes.is_empty() || !self.engine.has_store() || !self.key.is_stored() {
            return None;
        }
        let id = self.key.client_id().clone();
        let mut ops = Vec::with_capacity(changes.len());
        for c in changes {
            match c {
                Change::Sent { id: m, packet_id } | Change::Released { id: m, packet_id } => {
                    let Some(seq) = self.key.seq_of(m.0).map(|s| s & !QOS2) else {
                        continue;
                    };
                    let released = matches!(c, Change::Released { .. });
                    ops.push(Op::Put {
                        table: Table::Delivery,
                        key: child_key(&id, &seq.to_be_bytes()),
                        value: encode_delivery(packet_id, released),
                    });
                }
                Change::Freed { packet_id } => ops.push(Op::Delete {
                    table: Table::Incoming,
                    key: child_key(&id, &packet_id.to_be_bytes()),
                }),
            }
        }
        if ops.is_empty() {
            return None;
        }
        self.engine.write(ops).filter(|c| !c.succeeded())
    }

    /// The connection is held back (its socket or its in-flight window is
    /// full, and messages wait), or keeps up again. Messages that wait
    /// while it is held back get bytes of their own, so they don't keep
    /// their publishers' read buffers alive.
    pub fn held_back(&mut self, behind: bool) {
        if self.behind != behind {
            self.behind = behind;
            self.key.set_behind(behind);
        }
    }

    /// Whether retained messages for new subscriptions wait to be sent.
    pub fn has_backlog(&self) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|e| !e.backlog.is_empty() || !e.walks.is_empty())
    }

    /// Ready once a message came to the session's empty queue since the
    /// last time it was.
    pub fn poll_messages(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.key.poll_signal(cx)
    }

    /// Ready when the engine asks the connection to close, with why.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Kick> {
        self.reach.poll_kicked(cx)
    }

    /// The properties of the 5.0 DISCONNECT that closes the connection for
    /// `kick`: the Server Reference of a drained broker, if it has one.
    pub fn kick_properties(&self, kick: Kick) -> Properties {
        let mut props = Properties::new();
        if kick == Kick::UseAnotherServer {
            props.set_server_reference(self.engine.server_reference());
        }
        props
    }

    /// Arm `waker` for a message to the session or a kick, for a
    /// connection about to hibernate. Returns false if either already
    /// happened: the connection must not sleep (then call
    /// [`Client::disarm`]).
    pub fn arm(&self, waker: &Waker) -> bool {
        self.key.arm(waker) && self.reach.arm(waker)
    }

    /// Forget the wakers [`Client::arm`] and the polls left.
    pub fn disarm(&self) {
        self.key.disarm();
        self.reach.disarm();
    }

    /// An AUTH from the connected client (5.0 re-authentication, 4.12.1):
    /// 0x19 starts an exchange with the method its CONNECT named, 0x18
    /// continues it. The client must prove the user name it connected
    /// with.
    pub async fn reauthenticate(&mut self, auth: Auth) -> ReauthStep {
        let Some(method_name) = auth.properties.authentication_method() else {
            return ReauthStep::Refuse(ReasonCode::PROTOCOL_ERROR);
        };
        let data = auth.properties.authentication_data();
        let step = match auth.reason_code {
            ReasonCode::RE_AUTHENTICATE => {
                let security = self.engine.security();
                let Some(method) = security.method(method_name.as_str()) else {
                    return ReauthStep::Refuse(ReasonCode::BAD_AUTHENTICATION_METHOD);
                };
                let credentials = Credentials {
                    client_id: self.key.client_id().clone(),
                    username: self.access.username.as_deref().map(str::to_string),
                    password: None,
                    peer: None,
                    protocol: self.protocol,
                    certificate: None,
                };
                let exchange = self.extra().reauth.insert(method.start(&credentials));
                exchange.step(data).await
            }
            ReasonCode::CONTINUE_AUTHENTICATION => {
                match self.extra.as_mut().and_then(|e| e.reauth.as_mut()) {
                    Some(exchange) => exchange.step(data).await,
                    None => return ReauthStep::Refuse(ReasonCode::PROTOCOL_ERROR),
                }
            }
            _ => return ReauthStep::Refuse(ReasonCode::PROTOCOL_ERROR),
        };
        let props = |data: Option<Bytes>| {
            let mut p = Properties::new();
            p.set_authentication_method(Some(method_name.clone()));
            p.set_authentication_data(data);
            p
        };
        match step {
            Exchange::Continue(data) => ReauthStep::Continue(props(Some(data))),
            Exchange::Success { grant, data } => {
                self.end_reauth();
                let current = self.access.username.as_deref();
                let proven = match &grant.identity {
                    Identity::AsSent => current,
                    Identity::Named(n) => Some(n.as_str()),
                    Identity::Nobody => None,
                };
                if proven != current {
                    return ReauthStep::Refuse(ReasonCode::NOT_AUTHORIZED);
                }
                Stats::add(&self.engine.stats.auth_successes, 1);
                ReauthStep::Success(props(data))
            }
            Exchange::Deny(reason) => {
                self.end_reauth();
                Stats::add(&self.engine.stats.auth_failures, 1);
                tracing::warn!(client_id = %self.client_id(), reason = %reason, "re-authentication failed");
                ReauthStep::Refuse(reason)
            }
        }
    }

    fn end_reauth(&mut self) {
        if let Some(e) = &mut self.extra {
            e.reauth = None;
        }
        self.tidy();
    }

    /// The connection says how many QoS 1/2 messages it has in flight (for
    /// the admin API and metrics).
    pub fn set_inflight(&self, n: usize) {
        self.reach.inflight.store(
            n.min(u32::MAX as usize) as u32,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The connection is over: hand the session back (with the state its
    /// session machine ends with), with the will if the connection did not
    /// end normally.
    pub fn close(mut self, state: SessionState, reason: Option<&CloseReason>) {
        self.finish(state, reason);
    }

    /// The connection could not even be accepted (its CONNACK could not be
    /// sent): hand the session back as it was, without the will.
    pub fn cancel(mut self, state: SessionState) {
        if let Some(e) = &mut self.extra {
            e.will = None;
        }
        self.finish(state, None);
    }

    fn finish(&mut self, state: SessionState, close: Option<&CloseReason>) {
        // What it published is queued whatever becomes of it.
        self.flush();
        if !std::mem::take(&mut self.open) {
            return;
        }
        self.engine.stats.disconnected(disconnect_reason(close));
        let extra = self.extra.take().map(|e| *e).unwrap_or_default();
        self.engine.backlog_done(extra.backlog.len());
        let mut will = extra.will;
        let now = Instant::now();
        let max = self.engine.limits().max_session_expiry;
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
                    .then(|| will.take())
                    .flatten(),
            ),
            // A server shutting down, or sending its clients elsewhere, is
            // not the client's failure.
            Some(CloseReason::Local(rc))
                if *rc == ReasonCode::SERVER_SHUTTING_DOWN
                    || *rc == ReasonCode::USE_ANOTHER_SERVER =>
            {
                (self.expiry, None)
            }
            _ => (self.expiry, will.take()),
        };
        self.engine
            .release(&self.key, self.connection, state, expiry, will, now);
        self.engine.stats.client_disconnected();
    }
}

/// A message taken from a session's queue for its connection
/// ([`Client::next_stored`]): still the one copy every subscriber shares,
/// until it becomes this subscriber's ([`Outbound::into_message`]) or is
/// written as it is ([`Outbound::as_view`]).
#[derive(Debug)]
pub struct Outbound {
    queued: Queued,
    /// What is left of its Message Expiry Interval, if it waited.
    left: Option<u32>,
    /// At QoS 1/2 it gets bytes of its own (the connection is behind).
    own: bool,
}

impl Outbound {
    /// Its sequence number in the durable store (0: not stored there):
    /// once the session machine has it, tell [`Client::delivering`] its
    /// message id.
    pub fn seq(&self) -> u64 {
        self.queued.seq
    }

    /// The QoS it goes out with.
    pub fn qos(&self) -> QoS {
        self.queued.qos
    }

    /// The message as published, to be written as it is at QoS 0 with
    /// this subscriber's RETAIN flag: only where its copy would differ in
    /// nothing else (QoS 0, no Subscription Identifiers, no Message Expiry
    /// Interval to count down, not in the durable store). A connection may
    /// then encode it straight from the shared copy, where its session
    /// machine lets it ([`petrel_session::Connection::pass_at_most_once`]).
    pub fn as_view(&self) -> Option<PublishView<'_>> {
        let q = &self.queued;
        let m = &q.shared.message;
        let plain =
            q.qos == QoS::AtMostOnce && q.ids.is_none() && q.seq == 0 && self.left.is_none();
        plain.then_some(PublishView {
            dup: false,
            qos: QosPid::AtMostOnce,
            retain: q.retain,
            topic: &m.topic,
            properties: &m.properties,
            topic_alias: None,
            payload: &m.payload,
        })
    }

    /// This subscriber's copy: its QoS, RETAIN flag and Subscription
    /// Identifiers ([MQTT-3.3.4-3]), what is left of its Message Expiry
    /// Interval ([MQTT-3.3.2-6]), and at QoS 1/2 bytes of its own if the
    /// connection is behind.
    pub fn into_message(self) -> Message {
        let owned = self.queued.shared.owned;
        let mut message = self.queued.into_message();
        if self.own && message.qos != QoS::AtMostOnce && !owned {
            detach(&mut message);
        }
        if self.left.is_some() {
            message.properties.set_message_expiry_interval(self.left);
        }
        message
    }
}

/// Hand a waiting message on, or drop it if its Message Expiry Interval
/// ran out while it waited ([MQTT-3.3.2-5]); otherwise it carries what is
/// left ([MQTT-3.3.2-6]). With `own`, a QoS 1/2 message gets bytes of its
/// own.
fn deliver(
    stats: &Stats,
    q: Queued,
    own: bool,
    now: Instant,
    out: &mut Vec<Outbound>,
    expired: &mut Vec<u64>,
) {
    let mut left = None;
    if let Some(interval) = q.shared.expiry {
        let waited = now.saturating_duration_since(q.at()).as_secs();
        if waited >= u64::from(interval) {
            Stats::add(&stats.dropped_expired, 1);
            if q.seq != 0 {
                expired.push(q.seq);
            }
            return;
        }
        left = u32::try_from(u64::from(interval) - waited)
            .ok()
            .filter(|&l| l != interval);
    }
    out.push(Outbound {
        queued: q,
        left,
        own,
    });
}

impl Drop for Client {
    fn drop(&mut self) {
        self.finish(SessionState::default(), None);
    }
}

/// How the metrics count the end of a connection.
fn disconnect_reason(close: Option<&CloseReason>) -> DisconnectReason {
    match close {
        None => DisconnectReason::ConnectionLost,
        Some(CloseReason::Disconnected { .. }) => DisconnectReason::Client,
        Some(CloseReason::ProtocolError(_)) => DisconnectReason::ProtocolError,
        Some(CloseReason::KeepAliveTimeout) => DisconnectReason::KeepAliveTimeout,
        Some(CloseReason::Local(rc)) => match *rc {
            ReasonCode::SESSION_TAKEN_OVER => DisconnectReason::TakenOver,
            ReasonCode::ADMINISTRATIVE_ACTION => DisconnectReason::Administrative,
            ReasonCode::SERVER_SHUTTING_DOWN => DisconnectReason::ServerShutdown,
            ReasonCode::KEEP_ALIVE_TIMEOUT => DisconnectReason::KeepAliveTimeout,
            ReasonCode::MALFORMED_PACKET
            | ReasonCode::PROTOCOL_ERROR
            | ReasonCode::PACKET_TOO_LARGE
            | ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
            | ReasonCode::TOPIC_ALIAS_INVALID
            | ReasonCode::TOPIC_NAME_INVALID => DisconnectReason::ProtocolError,
            _ => DisconnectReason::Server,
        },
        Some(_) => DisconnectReason::Server,
    }
}

/// Why `filter` is refused when the broker is configured without shared
/// subscriptions (0x9E) or wildcards (0xA2). Refused in the SUBACK, the
/// other filters of the SUBSCRIBE granted, as the SUBACK's reason code
/// table allows (3.1.1 sees 0x80, [MQTT-3.8.3-2]). 5.0 clients were told
/// in CONNACK, so 3.2.2.3.13 and .15 would also let the broker close the
/// connection as a protocol error (DISCONNECT 0xA2 / 0x9E); a refusal of
/// the one filter is kinder to a client that asked for several, and is
/// what EMQX answers. Subscriptions made before the switch was turned off
/// (kept in the store) stay.
fn unavailable(filter: &str, limits: &crate::config::Limits) -> Option<ReasonCode> {
    if !limits.shared_subscriptions && filter.starts_with(petrel_codec::SHARE_PREFIX) {
        return Some(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
    }
    if !limits.wildcard_subscriptions && filter.contains(['+', '#']) {
        return Some(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn a_packed_address_reads_back_as_the_address_it_was() {
        for a in [
            "127.0.0.1:1883",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:8883",
            "[2001:db8::7]:1",
            "[fe80::1%7]:1883",
            // An IPv4-mapped IPv6 address stays an IPv6 address.
            "[::ffff:10.0.0.1]:1883",
            "[::]:0",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let back = SocketAddr::from(PackedAddr::from(addr));
            assert_eq!(back, addr, "{a}");
            assert_eq!(back.is_ipv4(), addr.is_ipv4(), "{a}");
        }
        // The flow label is not kept; the rest is.
        let flowing = std::net::SocketAddrV6::new("2001:db8::7".parse().unwrap(), 9, 5, 3);
        assert_eq!(
            SocketAddr::from(PackedAddr::from(SocketAddr::V6(flowing))),
            SocketAddr::V6(std::net::SocketAddrV6::new(*flowing.ip(), 9, 0, 3))
        );
    }
}
