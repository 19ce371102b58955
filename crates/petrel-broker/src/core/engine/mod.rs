//! The engine: every decision the broker makes, with no socket in sight.
//!
//! A transport (the tokio server's connection driver), a test, an
//! embedding application and later a bridge or a cluster node all drive it
//! the same way:
//!
//! 1. [`Broker::login`] with the client's CONNECT and what the transport
//!    knows of the peer gives a [`Login`]. [`Login::start`] authenticates
//!    (the password file, tokens, a certificate, an application's
//!    authenticator, or a 5.0 enhanced authentication exchange continued
//!    with [`Login::auth`]), checks session ownership, takes the session
//!    over from another connection if needed, and answers [`Step::Accept`]
//!    with a [`Client`] and the [`petrel_session::Accept`] for the
//!    connection's session machine, or [`Step::Refuse`] with the CONNACK
//!    reason.
//! 2. The [`Client`] then decides each PUBLISH ([`Client::publish`]:
//!    authorise, retain, route), SUBSCRIBE and UNSUBSCRIBE, hands out the
//!    messages waiting for the session ([`Client::next_messages`]), answers
//!    a re-authentication, and is told when its connection must close
//!    (taken over). [`Client::close`] ends the connection: the will, the
//!    session's expiry, a waiting takeover.
//! 3. [`Broker::tick`], once a second: session expiry, delayed wills,
//!    retained expiry, `$SYS`.
//!
//! ## Who runs it
//! Matching and fan-out run in the publisher's own task under a read lock
//! of the subscription index, so publishers on different cores route at
//! the same time (the EMQX design, not one router task every message passes
//! through). Writers (SUBSCRIBE, UNSUBSCRIBE) take the write lock briefly.
//! Decisions about one client id (connect, takeover, release, expiry) are
//! serialised by one mutex. No lock is held across an await. Slow work
//! (password hashing, an application's authenticator) is awaited by the
//! connecting client's own task and never holds a lock.

mod admin;
mod attach;
mod client;
mod connect;
mod moved;
mod publish;
mod rules;
mod sys;
#[cfg(test)]
mod tests;

pub use admin::{
    ClientSummary, Discard, Drain, ListenerConnections, MetricsSnapshot, SessionSummary,
    SubscriptionSummary,
};
pub use client::{Client, Kick, Outbound, ReauthStep};
pub use connect::{Accepted, Internal, Login, Peer, Step};
pub use moved::{Exported, Imported};
pub use rules::ListenerRules;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_codec::{QoS, TopicName};
use petrel_session::Message;
use tokio::sync::watch;

use super::auth::acl::AclFile;
use super::auth::jwt::JwtAuthenticator;
use super::auth::password::PasswordFile;
use super::auth::scram::{ScramFile, ScramHash, ScramMethod};
use super::auth::throttle::{Throttle, ThrottleConfig};
use super::auth::{AuthFileError, AuthMethod, Authenticator, Authorizer, CertificateAuthenticator};
use super::peers::Peers;
use super::queue::SessionKey;
use super::router::{Router, SharedGroups};
use super::sessions::SessionRegistry;
use super::store::{Commit, Store};
use super::wills::WillQueue;
use super::{lock, read, write};
use crate::config::{AuthSource, BrokerConfig};
use crate::stats::{Stats, StatsSnapshot};
use client::Reach;
use publish::RetainedStore;
use sys::SysPublisher;

/// A will waiting for its delay, with the session that published it.
#[derive(Debug)]
struct PendingWill {
    message: Message,
    publisher: Option<SessionKey>,
}

/// Sessions and wills: what one mutex guards.
#[derive(Debug, Default)]
struct Core {
    registry: SessionRegistry<SessionKey, Arc<Reach>>,
    wills: WillQueue<PendingWill>,
}

/// Authentication and authorisation as configured: rebuilt from the files
/// on reload.
struct Security {
    authenticators: Vec<Arc<dyn Authenticator>>,
    methods: Vec<Arc<dyn AuthMethod>>,
    authorizers: Vec<Arc<dyn Authorizer>>,
    allow_anonymous: bool,
    ownership: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field(
                "authenticators",
                &self
                    .authenticators
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>(),
            )
            .field(
                "methods",
                &self.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )
            .field(
                "authorizers",
                &self
                    .authorizers
                    .iter()
                    .map(|a| a.name())
                    .collect::<Vec<_>>(),
            )
            .field("allow_anonymous", &self.allow_anonymous)
            .field("ownership", &self.ownership)
            .finish()
    }
}

/// What an embedding application adds to the configured methods.
#[derive(Default)]
struct Extensions {
    authenticators: Vec<Arc<dyn Authenticator>>,
    methods: Vec<Arc<dyn AuthMethod>>,
    authorizers: Vec<Arc<dyn Authorizer>>,
}

impl Security {
    /// Read the configured files and put the chain together.
    fn load(config: &BrokerConfig, ext: &Extensions) -> Result<Self, AuthFileError> {
        let mut authenticators: Vec<Arc<dyn Authenticator>> = Vec::new();
        for source in config.auth_sources() {
            match source {
                AuthSource::PasswordFile => {
                    if let Some(path) = &config.password_file {
                        authenticators.push(Arc::new(PasswordFile::load(path)?));
                    }
                }
                AuthSource::Jwt => {
                    if let Some(jwt) = &config.jwt {
                        authenticators.push(Arc::new(JwtAuthenticator::new(jwt)?));
                    }
                }
                AuthSource::Certificate => {
                    // `[certificate]`, or a listener's `use_identity_as_username`
                    // (the Common Name, unless `[certificate]` says otherwise).
                    let field = config.certificate.clone().unwrap_or_default().username;
                    authenticators.push(Arc::new(CertificateAuthenticator::new(field)));
                }
            }
        }
        authenticators.extend(ext.authenticators.iter().cloned());
        let mut methods: Vec<Arc<dyn AuthMethod>> = Vec::new();
        if let Some(scram) = &config.scram {
            let file = Arc::new(ScramFile::load(&scram.file)?);
            for hash in ScramHash::ALL {
                if scram.mechanisms.iter().any(|m| m == hash.mechanism()) {
                    methods.push(Arc::new(ScramMethod::new(hash, file.clone())));
                }
            }
        }
        methods.extend(ext.methods.iter().cloned());
        let mut authorizers: Vec<Arc<dyn Authorizer>> = Vec::new();
        if let Some(path) = &config.acl_file {
            authorizers.push(Arc::new(AclFile::load(path)?));
        }
        authorizers.extend(ext.authorizers.iter().cloned());
        let authenticated = !authenticators.is_empty() || !methods.is_empty();
        let allow_anonymous = config.allow_anonymous.unwrap_or(!authenticated);
        Ok(Self {
            allow_anonymous,
            ownership: config.session_ownership.unwrap_or(authenticated),
            authenticators,
            methods,
            authorizers,
        })
    }

    fn method(&self, name: &str) -> Option<&Arc<dyn AuthMethod>> {
        self.methods.iter().find(|m| m.name() == name)
    }
}

/// The shared state every connection's [`Client`] and the application's
/// [`Broker`] handle work on.
pub(crate) struct Engine {
    /// The configuration the broker started with (what needs a restart).
    pub(crate) config: BrokerConfig,
    /// The configuration in force: the start's, or the last reload's.
    current: ArcSwap<BrokerConfig>,
    /// Its limits, read on the publish path.
    limits: ArcSwap<crate::config::Limits>,
    pub(crate) session_config: Arc<petrel_session::Config>,
    extensions: Extensions,
    security: RwLock<Arc<Security>>,
    /// Bumped on each reload of the rules: permissions resolved before
    /// are stale.
    generation: AtomicU64,
    router: RwLock<Router<SessionKey>>,
    retained: RwLock<RetainedStore>,
    /// Where what must outlive the process is written (none: memory only).
    store: Option<Arc<dyn Store>>,
    /// The other nodes of a cluster, if this broker is one.
    peers: Option<Arc<dyn Peers>>,
    /// With peers: how many of this node's subscriptions each filter has,
    /// and when the other nodes know of it (the first one's route).
    interest: Mutex<std::collections::HashMap<Box<str>, (u32, Commit)>>,
    /// While the broker is drained: where clients are sent.
    drain: RwLock<Option<Drain>>,
    core: Mutex<Core>,
    /// Bytes waiting in every session's queue.
    queued_bytes: Arc<AtomicUsize>,
    /// What every session's subscriptions are charged.
    subscription_bytes: AtomicUsize,
    /// Retained messages waiting in clients' backlogs.
    backlog: AtomicUsize,
    pub(crate) stats: Stats,
    started: Instant,
    /// The bridges' counters, by name, with their local sessions' client
    /// ids.
    bridges: Mutex<Vec<(String, String, Arc<crate::stats::BridgeCounters>)>>,
    /// Keys for assigned client ids if the random generator fails.
    id_keys: std::collections::hash_map::RandomState,
    next_assigned: AtomicU64,
    shutdown: watch::Sender<bool>,
    throttle: Mutex<Throttle>,
    /// Housekeeping state: `$SYS` loads and when things last ran.
    ticks: Mutex<Ticks>,
}

#[derive(Debug)]
struct Ticks {
    sys: SysPublisher,
    last_sys: Option<Instant>,
    last_retained: Option<Instant>,
    /// Drop counters as of the last warning about drops, and when it was.
    drops_warned: [u64; 4],
    last_drop_warning: Option<Instant>,
}

/// Dropped messages are reported at most this often (a flood of drops is
/// one line per interval, with counts, not one per message).
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why a broker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A password, ACL, credentials or key file can't be used.
    #[error(transparent)]
    File(#[from] AuthFileError),
    /// Anonymous access on a listener others can reach, not asked for.
    #[error(
        "listener {0} is not on a loopback address and no authentication is configured: \
         set `allow_anonymous = true` to let anyone connect, or configure \
         `password_file`, `[jwt]`, `[scram]` or `[certificate]`"
    )]
    AnonymousNotLoopback(String),
    /// The durable store can't be opened or read (the message names the
    /// directory and what to do).
    #[error("{0}")]
    Store(std::io::Error),
    /// A listener allows a method of authentication that nothing provides
    /// (a misspelt name would refuse everyone there).
    #[error("listener {listener}: no authentication method is called `{method}` (known: {known})")]
    UnknownMethod {
        /// The listener.
        listener: String,
        /// The name in its `auth_methods`.
        method: String,
        /// The names that exist.
        known: String,
    },
}

/// Builds a [`Broker`] with authentication and authorisation of the
/// application's own, after those the configuration names.
pub struct BrokerBuilder {
    config: BrokerConfig,
    extensions: Extensions,
    store: Option<Arc<dyn Store>>,
    peers: Option<Arc<dyn Peers>>,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BrokerBuilder {
    /// Add an authenticator, tried after the configured methods.
    pub fn authenticator(mut self, a: impl Authenticator) -> Self {
        self.extensions.authenticators.push(Arc::new(a));
        self
    }

    /// Add a 5.0 enhanced authentication method.
    pub fn auth_method(mut self, m: impl AuthMethod) -> Self {
        self.extensions.methods.push(Arc::new(m));
        self
    }

    /// Add an authorizer, consulted after the ACL file.
    pub fn authorizer(mut self, a: impl Authorizer) -> Self {
        self.extensions.authorizers.push(Arc::new(a));
        self
    }

    /// Keep durable state in `store` instead of the configuration's
    /// `data_dir` (an application's own store, or a [`crate::MemoryStore`]
    /// shared by brokers a test restarts).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Make the broker a node of a cluster: `peers` hears of this node's
    /// subscriptions and messages (see [`Peers`]).
    pub fn peers(mut self, peers: Arc<dyn Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Check the configuration, read its files, and build the broker.
    pub fn build(self) -> Result<Broker, BuildError> {
        let config = self.config;
        config.validate()?;
        let security = Security::load(&config, &self.extensions)?;
        if config.allow_anonymous.is_none() && security.allow_anonymous {
            // Secure by default: anonymous clients only where only this
            // machine can reach (as Mosquitto 2's local-only mode).
            if let Some(l) = config.listeners.iter().find(|l| !l.is_local()) {
                return Err(BuildError::AnonymousNotLoopback(l.describe()));
            }
        }
        let mut known: Vec<&str> = security.authenticators.iter().map(|a| a.name()).collect();
        known.extend(security.methods.iter().map(|m| m.name()));
        known.push("anonymous");
        for l in &config.listeners {
            if let Some(m) = l
                .auth_methods
                .iter()
                .flatten()
                .find(|m| !known.contains(&m.as_str()))
            {
                return Err(BuildError::UnknownMethod {
                    listener: l.describe(),
                    method: m.clone(),
                    known: known.join(", "),
                });
            }
        }
        let l = &config.limits;
        let throttle = Throttle::new(ThrottleConfig {
            free_failures: l.login_free_failures,
            free_address_failures: l.login_address_free_failures,
            delay: Duration::from_secs(l.login_delay),
            max_delay: Duration::from_secs(l.login_delay_max),
            max_wait: Duration::from_secs(l.connect_timeout),
        });
        let session_config = Arc::new(config.session_config());
        let store = match (self.store, &config.data_dir) {
            (Some(s), _) => Some(s),
            (None, _) if config.durability == crate::config::Durability::None => None,
            (None, Some(dir)) => Some(Arc::new(
                crate::durable::DiskStore::open(
                    dir,
                    config.durability,
                    Duration::from_secs(config.sync_interval),
                )
                .map_err(BuildError::Store)?,
            ) as Arc<dyn Store>),
            (None, None) => None,
        };
        let broker = Broker {
            engine: Arc::new(Engine {
                session_config,
                current: ArcSwap::from_pointee(config.clone()),
                limits: ArcSwap::from_pointee(config.limits.clone()),
                extensions: self.extensions,
                security: RwLock::new(Arc::new(security)),
                generation: AtomicU64::new(1),
                router: RwLock::new(Router::new()),
                retained: RwLock::new(RetainedStore::default()),
                store,
                peers: self.peers,
                interest: Mutex::default(),
                drain: RwLock::default(),
                core: Mutex::new(Core::default()),
                queued_bytes: Arc::new(AtomicUsize::new(0)),
                subscription_bytes: AtomicUsize::new(0),
                backlog: AtomicUsize::new(0),
                stats: Stats::default(),
                started: Instant::now(),
                bridges: Mutex::default(),
                id_keys: std::collections::hash_map::RandomState::new(),
                next_assigned: AtomicU64::new(1),
                shutdown: watch::channel(false).0,
                throttle: Mutex::new(throttle),
                ticks: Mutex::new(Ticks {
                    sys: SysPublisher::new(),
                    last_sys: None,
                    last_retained: None,
                    drops_warned: [0; 4],
                    last_drop_warning: None,
                }),
                config,
            }),
        };
        // Everything stored is back before anyone can connect.
        broker.engine.restore().map_err(BuildError::Store)?;
        Ok(broker)
    }
}

/// The broker: its engine, shared by every connection and by the
/// application that embeds it. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pub(crate) engine: Arc<Engine>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.engine.config)
            .finish_non_exhaustive()
    }
}

/// Settings a reload can't change in a running broker: listeners and
/// sockets, the store, logging's destination, and what each connection is
/// told at CONNECT.
const RESTART_ONLY: &[&str] = &[
    "listener",
    "data_dir",
    "durability",
    "sync_interval",
    "max_store_bytes",
    "persistence",
    "log_format",
    "log_file",
    "http",
    "bridge",
    "cluster",
    "limits.max_connections",
    "limits.max_packet_size",
    "limits.connect_timeout",
    "limits.max_keepalive",
    "limits.receive_maximum",
    "limits.max_inflight",
    "limits.topic_alias_maximum",
    "limits.max_qos",
    "limits.retain_available",
    "limits.wildcard_subscriptions",
    "limits.shared_subscriptions",
    "limits.hibernate_after",
    "limits.tcp_keepalive",
    "limits.packet_timeout",
    "limits.max_partial_bytes",
    "limits.max_connections_per_address",
    "limits.max_pending_per_address",
    "limits.max_pending_connections",
    "limits.connection_rate",
    "limits.connection_burst",
    "limits.limit_loopback",
    "limits.login_free_failures",
    "limits.login_address_free_failures",
    "limits.login_delay",
    "limits.login_delay_max",
];

/// The settings in [`RESTART_ONLY`] that differ between `a` and `b`.
fn restart_only_changes(a: &BrokerConfig, b: &BrokerConfig) -> Vec<&'static str> {
    let (la, lb) = (&a.limits, &b.limits);
    let changed = [
        a.listeners != b.listeners,
        a.data_dir != b.data_dir,
        a.durability != b.durability,
        a.sync_interval != b.sync_interval,
        a.max_store_bytes != b.max_store_bytes,
        a.persistence != b.persistence,
        a.log_format != b.log_format,
        a.log_file != b.log_file,
        a.http != b.http,
        a.bridges != b.bridges,
        a.cluster != b.cluster,
        la.max_connections != lb.max_connections,
        la.max_packet_size != lb.max_packet_size,
        la.connect_timeout != lb.connect_timeout,
        la.max_keepalive != lb.max_keepalive,
        la.receive_maximum != lb.receive_maximum,
        la.max_inflight != lb.max_inflight,
        la.topic_alias_maximum != lb.topic_alias_maximum,
        la.max_qos != lb.max_qos,
        la.retain_available != lb.retain_available,
        la.wildcard_subscriptions != lb.wildcard_subscriptions,
        la.shared_subscriptions != lb.shared_subscriptions,
        la.hibernate_after != lb.hibernate_after,
        la.tcp_keepalive != lb.tcp_keepalive,
        la.packet_timeout != lb.packet_timeout,
        la.max_partial_bytes != lb.max_partial_bytes,
        la.max_connections_per_address != lb.max_connections_per_address,
        la.max_pending_per_address != lb.max_pending_per_address,
        la.max_pending_connections != lb.max_pending_connections,
        la.connection_rate != lb.connection_rate,
        la.connection_burst != lb.connection_burst,
        la.limit_loopback != lb.limit_loopback,
        la.login_free_failures != lb.login_free_failures,
        la.login_address_free_failures != lb.login_address_free_failures,
        la.login_delay != lb.login_delay,
        la.login_delay_max != lb.login_delay_max,
    ];
    RESTART_ONLY
        .iter()
        .zip(changed)
        .filter_map(|(name, c)| c.then_some(*name))
        .collect()
}

/// What [`Broker::reconfigure`] put in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconfigured {
    /// Sessions whose permissions were resolved again.
    pub sessions: usize,
    /// Settings that changed in the file but keep their running value
    /// until a restart (listeners, the store, what clients were told at
    /// CONNECT).
    pub restart_needed: Vec<&'static str>,
}

/// What [`Broker::reload`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Sessions whose permissions were resolved again.
    pub sessions: usize,
}

impl Broker {
    /// A broker with this configuration, its files read (not yet listening:
    /// see [`crate::Server`]).
    pub fn new(config: BrokerConfig) -> Result<Self, BuildError> {
        Self::builder(config).build()
    }

    /// A builder, to add the application's own authentication and
    /// authorisation.
    pub fn builder(config: BrokerConfig) -> BrokerBuilder {
        BrokerBuilder {
            config,
            extensions: Extensions::default(),
            store: None,
            peers: None,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.engine.config
    }

    /// The session machine configuration each client connection runs with.
    pub fn session_config(&self) -> &petrel_session::Config {
        &self.engine.session_config
    }

    /// Publish a message from the application itself (no client): it is
    /// retained if asked and delivered to every matching subscription the
    /// subscriber may read. Returns how many subscribers it went to (0, and
    /// nothing done, if a retained message could not be written to the
    /// durable store).
    pub fn publish(&self, topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> usize {
        let mut message = Message::new(topic, payload, qos);
        message.retain = retain;
        self.engine
            .publish(None, message, None, Instant::now(), false, None, None)
            .map_or(0, |p| p.count)
    }

    /// Deliver a message that another node of the cluster took from its
    /// publisher: to this node's matching subscribers and the shared
    /// groups in `groups` (those the other node picked this node for),
    /// retained here too if it is, and never forwarded again. Its commit
    /// is when the copies for stored sessions are durable: the other
    /// node's acknowledgement waits for it. An error: the durable store
    /// could not take it.
    pub fn deliver_forwarded(
        &self,
        message: Message,
        groups: SharedGroups,
    ) -> std::io::Result<Commit> {
        self.deliver_forwarded_all([(message, groups)])
    }

    /// [`Broker::deliver_forwarded`] for several messages, in order: a
    /// run of them on one topic is routed once and queued for each
    /// subscriber together (as a pipelining client's burst is). The
    /// commit covers them all; an error: one could not be stored (those
    /// before it were delivered).
    pub fn deliver_forwarded_all(
        &self,
        messages: impl IntoIterator<Item = (Message, SharedGroups)>,
    ) -> std::io::Result<Commit> {
        let mut run = publish::Run::default();
        let mut commit = Commit::done();
        let now = Instant::now();
        let mut result = Ok(());
        for (m, groups) in messages {
            match self
                .engine
                .publish(None, m, None, now, false, Some(&mut run), Some(&groups))
            {
                // The store's commits complete in order: the last one
                // that waits covers the rest (a chain of hundreds would
                // be as many nested wake-ups).
                Ok(p) if !p.commit.succeeded() => commit = p.commit,
                Ok(_) => {}
                Err(e) => {
                    result = Err(std::io::Error::other(format!("{e:?}")));
                    break;
                }
            }
        }
        self.engine.flush_run(&mut run);
        result.map(|()| commit)
    }

    /// The durable store, if the broker has one (a cluster keeps its
    /// consensus state there, in [`crate::Table::Cluster`]).
    pub fn store(&self) -> Option<Arc<dyn Store>> {
        self.engine.store.clone()
    }

    /// The filters this node's subscriptions use (what a cluster tells
    /// the other nodes it wants); empty without [`BrokerBuilder::peers`].
    pub fn interests(&self) -> Vec<String> {
        let _router = read(&self.engine.router);
        lock(&self.engine.interest)
            .keys()
            .map(|f| f.to_string())
            .collect()
    }

    /// The counters `$SYS` reports.
    pub fn stats(&self) -> StatsSnapshot {
        self.engine.snapshot()
    }

    /// Ask every connection to close (5.0 DISCONNECT 0x8B, Server shutting
    /// down) and every listener to stop.
    pub fn shutdown(&self) {
        self.engine.shutdown.send_replace(true);
    }

    /// Whether [`Broker::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        *self.engine.shutdown.borrow()
    }

    /// A receiver that changes to `true` at shutdown, for transports.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.engine.shutdown.subscribe()
    }

    /// Time passed: expire sessions, publish wills that are due, drop
    /// retained messages whose expiry passed (every 10 s) and publish
    /// `$SYS` (every `sys_interval`). A server calls it once a second.
    pub fn tick(&self, now: Instant) {
        let e = &self.engine;
        e.expire_sessions(now);
        let (retained, sys) = {
            let mut t = lock(&e.ticks);
            // Half a second's slack: ticks a second apart may be a little
            // less than a second apart.
            let every = |last: &mut Option<Instant>, secs: u64| {
                let due = secs > 0
                    && last.is_none_or(|l| {
                        now.saturating_duration_since(l) + Duration::from_millis(500)
                            >= Duration::from_secs(secs)
                    });
                if due {
                    *last = Some(now);
                }
                due
            };
            (
                every(&mut t.last_retained, 10),
                every(&mut t.last_sys, e.current.load().sys_interval),
            )
        };
        e.warn_of_drops(now);
        if retained {
            e.expire_retained(now);
            lock(&e.throttle).tidy(now);
        }
        if sys {
            let snapshot = e.snapshot();
            let topics = lock(&e.ticks).sys.tick(&snapshot, e.started, now);
            for (topic, value) in topics {
                let mut m = Message::new(topic, Bytes::from(value), QoS::AtMostOnce);
                m.retain = true;
                let _ = e.publish(None, m, None, now, false, None, None);
            }
        }
    }

    /// Put a new configuration in force without dropping a connection:
    /// authentication and authorisation (the files read again, and
    /// `allow_anonymous`), `$SYS` interval, and the limits that are not
    /// told to clients at CONNECT (queues, subscriptions, retained store,
    /// sessions, client id length, topic depth). The rest keeps its
    /// running value, named in [`Reconfigured::restart_needed`]. A
    /// configuration that can't be used is refused with its error, and
    /// nothing changes.
    pub fn reconfigure(&self, new: BrokerConfig) -> Result<Reconfigured, BuildError> {
        let e = &self.engine;
        new.validate()?;
        let security = Arc::new(Security::load(&new, &e.extensions)?);
        let mut restart_needed = restart_only_changes(&e.config, &new);
        if new.allow_anonymous.is_none()
            && security.allow_anonymous
            && e.config.listeners.iter().any(|l| !l.is_local())
        {
            return Err(BuildError::AnonymousNotLoopback(
                e.config
                    .listeners
                    .iter()
                    .find(|l| !l.is_local())
                    .map(|l| l.describe())
                    .unwrap_or_default(),
            ));
        }
        // What stays as it started, in force and in what the API shows.
        let mut effective = new;
        effective.listeners = e.config.listeners.clone();
        effective.data_dir = e.config.data_dir.clone();
        effective.durability = e.config.durability;
        effective.sync_interval = e.config.sync_interval;
        effective.max_store_bytes = e.config.max_store_bytes;
        effective.persistence = e.config.persistence.clone();
        effective.log_format = e.config.log_format;
        effective.log_file = e.config.log_file.clone();
        effective.http = e.config.http.clone();
        {
            let (l, start) = (&mut effective.limits, &e.config.limits);
            l.max_connections = start.max_connections;
            l.max_packet_size = start.max_packet_size;
            l.connect_timeout = start.connect_timeout;
            l.max_keepalive = start.max_keepalive;
            l.receive_maximum = start.receive_maximum;
            l.max_inflight = start.max_inflight;
            l.topic_alias_maximum = start.topic_alias_maximum;
            l.max_qos = start.max_qos;
            l.retain_available = start.retain_available;
            l.wildcard_subscriptions = start.wildcard_subscriptions;
            l.shared_subscriptions = start.shared_subscriptions;
            l.hibernate_after = start.hibernate_after;
            l.tcp_keepalive = start.tcp_keepalive;
            l.packet_timeout = start.packet_timeout;
            l.max_partial_bytes = start.max_partial_bytes;
            l.max_connections_per_address = start.max_connections_per_address;
            l.max_pending_per_address = start.max_pending_per_address;
            l.max_pending_connections = start.max_pending_connections;
            l.connection_rate = start.connection_rate;
            l.connection_burst = start.connection_burst;
            l.limit_loopback = start.limit_loopback;
            l.login_free_failures = start.login_free_failures;
            l.login_address_free_failures = start.login_address_free_failures;
            l.login_delay = start.login_delay;
            l.login_delay_max = start.login_delay_max;
        }
        restart_needed.dedup();
        e.limits.store(Arc::new(effective.limits.clone()));
        e.current.store(Arc::new(effective));
        *write(&e.security) = security;
        e.generation.fetch_add(1, Ordering::AcqRel);
        Ok(Reconfigured {
            sessions: e.refresh_permissions(),
            restart_needed,
        })
    }

    /// The configuration in force (the start's, with what reloads changed).
    pub fn current_config(&self) -> Arc<BrokerConfig> {
        self.engine.current.load_full()
    }

    /// Read the password, ACL, credentials and key files again and put the
    /// new rules in force for every client, connected or not, without
    /// dropping a connection. A file that can't be used is refused with its
    /// error, and the rules in force stay.
    pub fn reload(&self) -> Result<Reloaded, AuthFileError> {
        let e = &self.engine;
        let security = Arc::new(Security::load(&e.current.load(), &e.extensions)?);
        *write(&e.security) = security;
        e.generation.fetch_add(1, Ordering::AcqRel);
        Ok(Reloaded {
            sessions: e.refresh_permissions(),
        })
    }
}

impl Engine {
    /// The Server Reference clients of a drained broker are sent to.
    pub(crate) fn server_reference(&self) -> Option<petrel_codec::MqttString> {
        read(&self.drain)
            .as_ref()
            .and_then(|d| d.server_reference.as_deref())
            .and_then(|r| petrel_codec::MqttString::try_from(r).ok())
    }

    /// Whether the broker is drained.
    pub(crate) fn drained(&self) -> bool {
        read(&self.drain).is_some()
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> arc_swap::Guard<Arc<crate::config::Limits>> {
        self.limits.load()
    }

    /// Messages dropped since the last warning: one line with the counts,
    /// at most every [`DROP_WARNING_INTERVAL`].
    fn warn_of_drops(&self, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let counts = [
            s.dropped_queue_full.load(Relaxed),
            s.dropped_qos0.load(Relaxed),
            s.dropped_expired.load(Relaxed),
            s.dropped_too_large.load(Relaxed),
        ];
        let mut t = lock(&self.ticks);
        if counts == t.drops_warned
            || t.last_drop_warning
                .is_some_and(|l| now.saturating_duration_since(l) < DROP_WARNING_INTERVAL)
        {
            return;
        }
        let d: Vec<u64> = counts
            .iter()
            .zip(t.drops_warned)
            .map(|(now, then)| now - then)
            .collect();
        let since = t.last_drop_warning.map_or_else(
            || self.started.elapsed(),
            |l| now.saturating_duration_since(l),
        );
        tracing::warn!(
            queue_full = d[0],
            qos0_queue_full = d[1],
            expired = d[2],
            too_large = d[3],
            seconds = since.as_secs(),
            "messages dropped (queue full: a subscriber too slow or away too long; see the petrel_messages_dropped_total metric)"
        );
        t.drops_warned = counts;
        t.last_drop_warning = Some(now);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        s.subscriptions = read(&self.router).len() as u64;
        s.subscription_bytes = self.subscription_bytes.load(Ordering::Relaxed) as u64;
        s.retained = self.retained_count() as u64;
        s.sessions = lock(&self.core).registry.len() as u64;
        s
    }

    fn security(&self) -> Arc<Security> {
        read(&self.security).clone()
    }

    /// The current rules' generation.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}
