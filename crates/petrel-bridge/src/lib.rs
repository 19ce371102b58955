//! # petrel-bridge
//!
//! Bridges from a Petrel broker to other MQTT brokers (Mosquitto, EMQX,
//! another Petrel…): the topics a `[[bridge]]` table's rules name are
//! forwarded out to the remote, in from it, or both, with Mosquitto's topic
//! rules and prefixes.
//!
//! ## How it works
//! A bridge is two [`petrel_client`] clients:
//!
//! * **local**: a client of this broker over an in-memory stream
//!   ([`petrel_broker::LocalConnector`]), served by the same connection
//!   driver as every network client. Its session is persistent (stored in
//!   the durable store when there is one), so the messages waiting for the
//!   remote are that session's queue: they survive a restart and a
//!   SIGKILL. The queue is bounded by `queue_max_messages` and
//!   `queue_max_bytes`; past them a new message for the remote is dropped
//!   and counted (`petrel_bridge_dropped_total`), and nothing already taken
//!   is dropped. It authenticates without credentials and may do anything
//!   but publish to `$SYS`.
//! * **remote**: a client of the remote broker, with the table's address
//!   (or addresses, tried in turn, going back to the first when it
//!   answers again), transport, TLS, version, credentials and session.
//!
//! Every message is acknowledged to the side it came from only once the
//! other side has acknowledged it (manual acknowledgements): a QoS 1 or 2
//! message is resent until it arrives, never lost to a crash or a lost
//! link, and with a persistent session at the remote (the default) QoS 2
//! stays exactly once across reconnects. Up to `inflight` messages are in
//! flight each way, in order.
//!
//! ## Loops
//! Two brokers bridged both ways never ping-pong a message: the local
//! subscriptions use No Local (the bridge doesn't get back what it
//! published locally), and so do the remote ones with a 5.0 remote; with a
//! 3.1.1 remote the bridge sets Mosquitto's bridge flag in CONNECT, which
//! Mosquitto and Petrel honour the same way.
//!
//! ## Notifications and metrics
//! With `notifications` (the default) the link's state is published,
//! retained, on `$SYS/broker/connection/<client id>/state` (Mosquitto's
//! topic) in the local broker: `1` up, `0` down. The broker's metrics
//! carry each bridge's state, connections, failed attempts (with the
//! reason in the log), messages each way, refusals, queue and drops.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use petrel_broker::config::{split_address, BridgeConfig, TopicRule, TransportKind};
use petrel_broker::{BridgeCounters, Broker, Internal, LocalConnector, QueueBound};
use petrel_client::{
    connect, Ack, AckToken, Client, ClientError, ConnectOptions, Connector, Message, Messages,
    Opening, Properties, Protocol, Publish, QoS, Status, TlsOptions, TopicName,
};
use petrel_codec::{RetainHandling, Subscription, SubscriptionOptions, TopicFilter};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a bridge could not start.
#[derive(Debug)]
pub struct BridgeError(String);

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BridgeError {}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Bridge {
    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop: both connections end with a normal DISCONNECT. Messages not
    /// yet acknowledged stay where they came from, to be forwarded when the
    /// bridge runs again.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Start every bridge of `broker`'s configuration, on `local` (the
/// server's [`petrel_broker::Server::local`]).
pub fn start_all(broker: &Broker, local: &LocalConnector) -> Result<Vec<Bridge>, BridgeError> {
    broker
        .config()
        .bridges
        .iter()
        .map(|c| start(c.clone(), broker, local))
        .collect()
}

/// Start one bridge: it connects (and reconnects) on its own.
pub fn start(
    config: BridgeConfig,
    broker: &Broker,
    local: &LocalConnector,
) -> Result<Bridge, BridgeError> {
    config.validate().map_err(BridgeError)?;
    let rules = config.rules().map_err(BridgeError)?;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{}.{}", host_name(), config.name));
    let local_id = format!("petrel-bridge.{}", config.name);
    let counters = broker.bridge_counters(
        &config.name,
        &local_id,
        QueueBound::new(config.queue_max_messages, config.queue_max_bytes),
    );
    let notify = if config.notifications {
        let t = config
            .notification_topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{client_id}/state"));
        Some(TopicName::try_from(t.as_str()).map_err(|e| BridgeError(e.to_string()))?)
    } else {
        None
    };
    let remote = remote_options(&config, &client_id)?;
    let filters = rules
        .iter()
        .map(|r| (r.local_filter(), r.remote_filter()))
        .collect();
    let link = Arc::new(Link {
        name: config.name.clone(),
        rules,
        filters,
        broker: broker.clone(),
        local_options: local_options(&config, &local_id, local, &counters),
        remote,
        counters,
        notify,
        config,
    });
    let (stop, stopped) = watch::channel(false);
    let name = link.name.clone();
    let task = tokio::spawn(run(link, stopped));
    Ok(Bridge { name, stop, task })
}

/// What a running bridge knows.
#[derive(Debug)]
struct Link {
    name: String,
    config: BridgeConfig,
    rules: Vec<TopicRule>,
    /// Each rule's filter on the local side and on the remote side, made
    /// once (matched against every message forwarded).
    filters: Vec<(String, String)>,
    broker: Broker,
    local_options: ConnectOptions,
    remote: ConnectOptions,
    counters: Arc<BridgeCounters>,
    notify: Option<TopicName>,
}

/// Opens the local side's in-memory stream.
#[derive(Debug)]
struct LocalPipe {
    connector: LocalConnector,
    internal: Internal,
}

impl Connector for LocalPipe {
    fn open(&self) -> Opening {
        let stream = self.connector.connect(self.internal.clone());
        Box::pin(async move { Ok(Box::new(stream) as Box<dyn petrel_client::Io>) })
    }
}

fn local_options(
    c: &BridgeConfig,
    local_id: &str,
    connector: &LocalConnector,
    counters: &Arc<BridgeCounters>,
) -> ConnectOptions {
    let mut o = ConnectOptions::new("local", 0, local_id).protocol(Protocol::V5);
    o.connector = Some(Arc::new(LocalPipe {
        connector: connector.clone(),
        internal: Internal {
            user: Arc::from(format!("bridge:{}", c.name)),
            queue: Some(counters.queue.clone()),
        },
    }));
    // Its session outlives every connection: the queue for the remote.
    o.clean_start = false;
    o.session_expiry = u32::MAX;
    o.manual_acks = true;
    o.properties
        .set_receive_maximum(std::num::NonZeroU16::new(c.inflight));
    o.max_pending = usize::from(c.inflight);
    o.max_incoming = usize::from(c.inflight);
    o.max_packet_size = petrel_codec::MAX_VARINT;
    o.reconnect.min_backoff = Duration::from_millis(100);
    o.reconnect.max_backoff = Duration::from_secs(2);
    o
}

fn remote_options(c: &BridgeConfig, client_id: &str) -> Result<ConnectOptions, BridgeError> {
    let mut addresses = c
        .all_addresses()
        .iter()
        .map(|a| split_address(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BridgeError)?;
    let (host, port) = addresses.remove(0);
    let protocol = if c.protocol == "3.1.1" {
        Protocol::V3_1_1
    } else {
        Protocol::V5
    };
    let mut o = ConnectOptions::new(host, port, client_id).protocol(protocol);
    o.fallbacks = addresses;
    o.primary_check = Duration::from_secs(c.primary_check.max(1));
    // (`unix` is refused by `validate`.)
    o.transport = match c.transport {
        TransportKind::Quic => petrel_client::Transport::Quic,
        k if k.is_websocket() => petrel_client::Transport::WebSocket {
            path: c.ws_path.clone(),
        },
        _ => petrel_client::Transport::Tcp,
    };
    if c.transport.is_tls() {
        let mut tls = TlsOptions::default();
        tls.ca_file.clone_from(&c.ca_file);
        tls.client_cert = c.cert_file.clone().zip(c.key_file.clone());
        tls.server_name.clone_from(&c.server_name);
        o.tls = Some(tls);
    }
    o.username.clone_from(&c.username);
    o.password = c.password.clone().map(Bytes::from);
    o.keep_alive = Duration::from_secs(c.keep_alive);
    o.clean_start = c.clean_start;
    o.session_expiry = if c.clean_start { 0 } else { c.session_expiry };
    o.bridge = protocol != Protocol::V5;
    o.manual_acks = true;
    o.properties
        .set_receive_maximum(std::num::NonZeroU16::new(c.inflight));
    o.max_pending = usize::from(c.inflight);
    o.max_incoming = usize::from(c.inflight);
    o.reconnect.min_backoff = Duration::from_millis(c.reconnect_min_ms);
    o.reconnect.max_backoff = Duration::from_secs(c.reconnect_max_s);
    Ok(o)
}

/// The machine's host name (Linux), for the default client id.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "petrel".into())
}

/// Connect, and again after each loss the clients can't recover from
/// (the remote refused the credentials for good, say), until stopped.
async fn run(link: Arc<Link>, mut stopped: watch::Receiver<bool>) {
    // Down until it connects: said at once, so a stale `1` (a restart
    // while it was up) does not stand.
    link.announce(false);
    let mut failures: u32 = 0;
    loop {
        let session = tokio::select! {
            s = connect_both(&link, &mut failures) => s,
            () = until_stopped(&mut stopped) => return,
        };
        let Some((local, local_msgs, remote, remote_msgs)) = session else {
            // The broker is shutting down.
            return;
        };
        failures = 0;
        let outcome = tokio::select! {
            r = pump(&link, Way::Out, local_msgs, &remote, &local) => r,
            r = pump(&link, Way::In, remote_msgs, &local, &remote) => r,
            r = watch_remote(&link, &remote) => r,
            () = until_stopped(&mut stopped) => {
                let _ = tokio::join!(remote.disconnect(), local.disconnect());
                link.set_up(false);
                return;
            }
        };
        link.set_up(false);
        if let Err(e) = outcome {
            tracing::warn!(bridge = %link.name, error = %e, "bridge link lost; connecting again");
        }
        let _ = tokio::join!(remote.disconnect(), local.disconnect());
        if link.broker.is_shut_down() {
            return;
        }
    }
}

/// Resolves once the bridge is told to stop.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

type Both = (Client, Messages, Client, Messages);

/// Connect the local side, then the remote one (retried with backoff and
/// jitter, each failure logged and counted), then subscribe both.
async fn connect_both(link: &Link, failures: &mut u32) -> Option<Both> {
    let (local, local_msgs) = loop {
        if link.broker.is_shut_down() {
            return None;
        }
        match connect(link.local_options.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(bridge = %link.name, error = %e, "bridge: the local side did not connect");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    // Subscriptions for what goes out, made again at each start (the
    // session keeps them; a retained message is sent only to a new one).
    let out: Vec<Subscription> = link
        .rules
        .iter()
        .filter(|r| r.direction.out())
        .filter_map(|r| subscription(&r.local_filter(), r.qos, link.config.forward_retained, true))
        .collect();
    if !out.is_empty() {
        if let Err(e) = local.subscribe_many(out, Properties::new()).await {
            tracing::warn!(bridge = %link.name, error = %e, "bridge: local subscriptions failed");
            return None;
        }
    }
    let (remote, remote_msgs) = loop {
        if link.broker.is_shut_down() {
            return None;
        }
        match connect(link.remote.clone()).await {
            Ok(c) => break c,
            Err(e) => {
                link.counters.connect_failures.fetch_add(1, Relaxed);
                *failures = failures.saturating_add(1);
                // The first wait is `reconnect_min_ms` itself.
                let wait = link
                    .remote
                    .reconnect
                    .backoff(failures.saturating_sub(1), jitter());
                tracing::warn!(
                    bridge = %link.name,
                    remote = %link.remote_address(),
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "bridge: cannot connect to the remote broker"
                );
                tokio::time::sleep(wait).await;
            }
        }
    };
    let inbound: Vec<Subscription> = link
        .rules
        .iter()
        .filter(|r| r.direction.r#in())
        .filter_map(|r| {
            subscription(
                &r.remote_filter(),
                r.qos,
                link.config.forward_retained,
                !link.config.clean_start,
            )
        })
        .collect();
    if !inbound.is_empty() {
        match remote.subscribe_many(inbound, Properties::new()).await {
            Ok(ack) if ack.reason_codes.iter().any(|c| c.is_error()) => {
                tracing::warn!(bridge = %link.name, codes = ?ack.reason_codes, "bridge: the remote refused some subscriptions");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(bridge = %link.name, error = %e, "bridge: remote subscriptions failed");
            }
        }
    }
    Some((local, local_msgs, remote, remote_msgs))
}

/// A subscription for a bridge: No Local (so a message the bridge
/// forwarded into a broker never comes back to it), Retain As Published
/// as configured, retained messages only for a new subscription if the
/// session persists.
fn subscription(
    filter: &str,
    qos: u8,
    keep_retain: bool,
    persistent: bool,
) -> Option<Subscription> {
    let filter = TopicFilter::try_from(filter).ok()?;
    let mut options = SubscriptionOptions::qos(QoS::from_u8(qos)?);
    options.no_local = true;
    options.retain_as_published = keep_retain;
    options.retain_handling = if persistent {
        RetainHandling::SendIfNew
    } else {
        RetainHandling::SendOnSubscribe
    };
    Some(Subscription { filter, options })
}

/// Enough randomness for a backoff's jitter: the clock's nanoseconds.
fn jitter() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

impl Link {
    fn remote_address(&self) -> String {
        format!("{}:{}", self.remote.host, self.remote.port)
    }

    /// Record (and announce) whether the remote is connected.
    fn set_up(&self, up: bool) {
        if self.counters.up.swap(up, Relaxed) != up {
            self.announce(up);
        }
    }

    /// Publish the link's state on the notification topic, retained.
    fn announce(&self, up: bool) {
        if let Some(t) = &self.notify {
            let payload = Bytes::from_static(if up { b"1" } else { b"0" });
            self.broker
                .publish(t.clone(), payload, QoS::AtLeastOnce, true);
        }
    }

    /// A message's topic on the other side, by the first rule of that
    /// direction whose filter matches it: the prefix of the side it came
    /// from replaced by the other side's.
    fn translate(&self, way: Way, topic: &str) -> Option<String> {
        self.rules
            .iter()
            .zip(&self.filters)
            .find_map(|(r, (local, remote))| {
                let (goes, filter, from, to) = match way {
                    Way::Out => (r.direction.out(), local, &r.local_prefix, &r.remote_prefix),
                    Way::In => (
                        r.direction.r#in(),
                        remote,
                        &r.remote_prefix,
                        &r.local_prefix,
                    ),
                };
                (goes && petrel_codec::topic_matches(filter, topic)).then_some((from, to))
            })
            .and_then(|(from, to)| Some(format!("{to}{}", topic.strip_prefix(from.as_str())?)))
    }

    /// The message to forward the way `way` goes: its new topic, its QoS,
    /// the retain flag if kept, and when the remote speaks 5.0 the
    /// properties that belong to the message (not those of one connection:
    /// topic alias, subscription identifiers).
    fn forwarded(&self, way: Way, p: &Publish) -> Option<Message> {
        let topic = TopicName::try_from(self.translate(way, p.topic.as_str())?.as_str()).ok()?;
        let mut m = Message::new(topic, p.payload.clone(), p.qos.qos());
        m.retain = p.retain && self.config.forward_retained;
        if self.remote.protocol == Protocol::V5 {
            use petrel_codec::properties::id;
            m.properties = p
                .properties
                .without(&[id::TOPIC_ALIAS, id::SUBSCRIPTION_IDENTIFIER]);
        }
        Some(m)
    }
}

type AckFuture = Pin<Box<dyn Future<Output = (Result<Ack, ClientError>, Option<AckToken>)> + Send>>;

/// Which way a pump forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// Local messages to the remote.
    Out,
    /// Remote messages into the local broker.
    In,
}

/// Forward what `from` (a client of one side) receives through `to` (the
/// other side's client): each message acknowledged through `back` (the
/// client it came on) once `to`'s broker acknowledged it, in order, at
/// most `inflight` at a time.
async fn pump(
    link: &Link,
    way: Way,
    mut from: Messages,
    to: &Client,
    back: &Client,
) -> Result<(), ClientError> {
    let (forwarded, side) = match way {
        Way::Out => (&link.counters.forwarded_out, "remote"),
        Way::In => (&link.counters.forwarded_in, "local"),
    };
    let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let max = usize::from(link.config.inflight);
    loop {
        tokio::select! {
            m = from.recv_ack(), if pending.len() < max => {
                let Some((p, token)) = m else { return Err(ClientError::Closed) };
                match link.forwarded(way, &p) {
                    Some(message) => {
                        let ack = to.publish_queued(message).await?;
                        pending.push_back(Box::pin(async move { (ack.await, token) }));
                    }
                    None => {
                        // No rule gives it a topic on the other side (a
                        // subscription left from an older configuration).
                        tracing::debug!(bridge = %link.name, topic = %p.topic.as_str(), ?way, "bridge: no rule for this topic");
                        if let Some(t) = token {
                            back.ack(t).await?;
                        }
                    }
                }
            }
            Some((r, token)) = pending.next(), if !pending.is_empty() => {
                settle(link, r, side, forwarded)?;
                if let Some(t) = token {
                    back.ack(t).await?;
                }
            }
        }
    }
}

/// Count a forwarded message's outcome. A refusal (an error reason code)
/// is logged and counted, and the message acknowledged where it came from
/// all the same: resending it would be refused again.
fn settle(
    link: &Link,
    r: Result<Ack, ClientError>,
    side: &str,
    forwarded: &std::sync::atomic::AtomicU64,
) -> Result<(), ClientError> {
    match r {
        Ok(ack) if ack.reason_code.is_error() => {
            link.counters.refused.fetch_add(1, Relaxed);
            tracing::warn!(bridge = %link.name, side, reason = %ack.reason_code, "bridge: a forwarded message was refused");
            Ok(())
        }
        Ok(_) => {
            forwarded.fetch_add(1, Relaxed);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Follow the remote connection's state: counted, logged, announced.
/// Ends when the remote client closed for good.
async fn watch_remote(link: &Link, remote: &Client) -> Result<(), ClientError> {
    let mut last = Status::Connecting;
    loop {
        let now = remote.wait_for(|s| *s != last).await;
        match &now {
            Status::Connected { session_present } => {
                link.counters.connects.fetch_add(1, Relaxed);
                tracing::info!(bridge = %link.name, remote = %link.remote_address(), session_present, "bridge connected");
                link.set_up(true);
            }
            Status::Connecting => {
                tracing::warn!(bridge = %link.name, "bridge: the remote connection was lost; reconnecting");
                link.set_up(false);
            }
            Status::Closed => return Err(ClientError::Closed),
        }
        last = now;
    }
}
