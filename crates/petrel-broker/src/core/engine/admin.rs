//! What an operator asks of the broker: the clients connected and the
//! sessions kept, their subscriptions, retained messages, kicking a client,
//! discarding a session, and the figures metrics are made of. Socket-free,
//! like the rest of the engine: the admin API (`petrel-admin`) and an
//! embedding application ask the same questions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use petrel_codec::{Protocol, TopicFilter, TopicName};
use petrel_session::Message;

use super::client::{ConnInfo, Kick, Reach};
use super::{Broker, PendingWill};
use crate::core::lock;
use crate::core::queue::SessionKey;
use crate::core::router::Subscription;
use crate::core::sessions::SessionView;
use crate::stats::{DisconnectReason, HistogramSnapshot, StatsSnapshot};

/// A connected client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSummary {
    /// Its client identifier.
    pub client_id: String,
    /// The user name it is known by (none: anonymous).
    pub username: Option<String>,
    /// Its network address, where the transport knows it.
    pub address: Option<SocketAddr>,
    /// The listener it came through (empty: an application's own
    /// transport).
    pub listener: String,
    /// Its protocol version.
    pub protocol: Protocol,
    /// When its CONNECT was accepted.
    pub connected_at: SystemTime,
    /// The keep alive its CONNECT asked for, in seconds.
    pub keep_alive: u16,
    /// Whether its CONNECT asked for a clean start.
    pub clean_start: bool,
    /// Its Session Expiry Interval, in seconds, as granted at connect.
    pub session_expiry: u32,
    /// Messages waiting in its session's queue.
    pub queue_depth: usize,
    /// Bytes of those messages.
    pub queue_bytes: usize,
    /// Its QoS 1/2 messages not yet acknowledged.
    pub inflight: u32,
    /// Its subscriptions.
    pub subscriptions: usize,
}

/// A session, connected or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its client identifier.
    pub client_id: String,
    /// Whether a connection holds it.
    pub connected: bool,
    /// Its Session Expiry Interval, in seconds.
    pub expiry: u32,
    /// How long until it ends, if no connection holds it and it expires.
    pub expires_in: Option<Duration>,
    /// Messages waiting in its queue.
    pub queue_depth: usize,
    /// Bytes of those messages.
    pub queue_bytes: usize,
    /// Its subscriptions.
    pub subscriptions: usize,
}

/// One subscription of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSummary {
    /// The session's client identifier.
    pub client_id: String,
    /// The topic filter, as subscribed (with a `$share/…` prefix if shared).
    pub filter: String,
    /// Its granted options and identifier.
    pub subscription: Subscription,
}

/// What [`Broker::discard_session`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// The session ended: its queue, subscriptions and stored state are
    /// gone (a will waiting for its delay was published).
    Discarded,
    /// A connection holds it (or waits for it): kick the client first.
    Connected,
    /// There is no such session.
    NotFound,
}

/// A drained broker: it takes no new connection, and tells its clients to
/// use another server ([`Broker::drain`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// Where clients are sent: the 5.0 Server Reference (`host:port`, or
    /// several, space-separated, as the specification allows); none: they
    /// are only told to use another server.
    pub server_reference: Option<String>,
}

/// Connections now, by listener and protocol version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerConnections {
    /// The listener (empty: an application's own transport).
    pub listener: String,
    /// The protocol version.
    pub protocol: Protocol,
    /// Clients connected.
    pub connected: u64,
}

/// Everything the metrics endpoint reports, gathered at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// The counters `$SYS` reports too.
    pub stats: StatsSnapshot,
    /// Connections by listener and protocol version.
    pub connections: Vec<ListenerConnections>,
    /// CONNACKs sent since start, by reason code (0: accepted).
    pub connacks: Vec<(u8, u64)>,
    /// Connections ended since start, by reason.
    pub disconnects: Vec<(DisconnectReason, u64)>,
    /// Messages waiting in every session's queue.
    pub queued_messages: u64,
    /// Bytes of those messages.
    pub queued_bytes: u64,
    /// The longest queue of one session.
    pub max_queue_depth: u64,
    /// QoS 1/2 messages sent and not yet acknowledged, over every
    /// connection.
    pub inflight: u64,
    /// Bytes the retained messages hold (topic, properties and payload).
    pub retained_bytes: u64,
    /// From a PUBLISH's arrival to a copy leaving for a subscriber.
    pub delivery_latency: HistogramSnapshot,
    /// Writes (and syncs) of the durable store, if there is one that
    /// measures them.
    pub store_write_latency: Option<HistogramSnapshot>,
    /// Bytes the durable store's live entries take.
    pub store_bytes: u64,
    /// Seconds since the broker started.
    pub uptime: Duration,
    /// Each bridge's counters.
    pub bridges: Vec<crate::stats::BridgeSnapshot>,
}

fn summary(view: &SessionView<'_, SessionKey, Arc<Reach>>, info: &ConnInfo) -> ClientSummary {
    let (queue_depth, queue_bytes) = view.data.depth();
    ClientSummary {
        client_id: view.client_id.to_string(),
        username: info.username.as_deref().map(str::to_string),
        address: info.addr(),
        listener: info.listener.name.to_string(),
        protocol: info.protocol,
        connected_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(info.connected_ms),
        keep_alive: info.keep_alive,
        clean_start: info.clean_start,
        session_expiry: info.expiry,
        queue_depth,
        queue_bytes,
        inflight: view.holder.map_or(0, |h| h.inflight()),
        subscriptions: view.data.filters().len(),
    }
}

impl Broker {
    /// Every connected client (in no particular order).
    pub fn clients(&self) -> Vec<ClientSummary> {
        let core = lock(&self.engine.core);
        core.registry
            .sessions()
            .filter_map(|v| {
                let info = v.holder?.info()?;
                Some(summary(&v, info))
            })
            .collect()
    }

    /// One connected client, with its subscriptions.
    pub fn client(&self, client_id: &str) -> Option<(ClientSummary, Vec<SubscriptionSummary>)> {
        let core = lock(&self.engine.core);
        let v = core.registry.session(client_id)?;
        let info = v.holder?.info()?;
        Some((summary(&v, info), subscriptions_of(v.data)))
    }

    /// Close `client_id`'s connection (5.0 clients get DISCONNECT 0x98
    /// Administrative action); its session is kept or ends as its expiry
    /// says, and its will is published. False if it is not connected.
    pub fn kick(&self, client_id: &str) -> bool {
        let kicked = self.close_connection(client_id, Kick::Administrative);
        if kicked {
            tracing::info!(client_id, "client kicked by an administrator");
        }
        kicked
    }

    /// Tell `client_id`'s connection to close for `why`; whether one held
    /// the session.
    fn close_connection(&self, client_id: &str, why: Kick) -> bool {
        // Told outside the core's lock (waking a connection may hand its
        // session back, which takes that lock).
        let reach = lock(&self.engine.core)
            .registry
            .session(client_id)
            .and_then(|v| v.holder.cloned());
        reach.map(|r| r.kick(why)).is_some()
    }

    /// Drain the broker, to take it out of service (or out of a
    /// cluster) without dropping anyone's session: from now on a CONNECT
    /// is refused (5.0: CONNACK 0x9C Use another server, with `drain`'s
    /// Server Reference; 3.1.1: return code 3 Server unavailable), and
    /// [`Broker::redirect`] closes a connected client the same way (5.0
    /// DISCONNECT 0x9C). In a cluster, a client that connects to another
    /// node takes its session there. A connection the program made to
    /// itself (a bridge's local side) is let in.
    pub fn drain(&self, drain: Drain) {
        tracing::info!(server_reference = ?drain.server_reference, "draining: new connections are refused, clients are sent elsewhere");
        *super::write(&self.engine.drain) = Some(drain);
    }

    /// Take connections again after [`Broker::drain`].
    pub fn undrain(&self) {
        if super::write(&self.engine.drain).take().is_some() {
            tracing::info!("no longer draining: connections are taken again");
        }
    }

    /// Whether the broker is drained, and where to.
    pub fn draining(&self) -> Option<Drain> {
        super::read(&self.engine.drain).clone()
    }

    /// Close `client_id`'s connection while the broker is drained (5.0
    /// clients get DISCONNECT 0x9C Use another server, with the Server
    /// Reference): its session is kept or ends as its expiry says, and its
    /// will is not published (the client is moved, not lost). False if it
    /// is not connected, or the broker is not drained.
    pub fn redirect(&self, client_id: &str) -> bool {
        self.draining().is_some() && self.close_connection(client_id, Kick::UseAnotherServer)
    }

    /// Every session, connected or not (in no particular order).
    pub fn sessions(&self) -> Vec<SessionSummary> {
        let now = Instant::now();
        let core = lock(&self.engine.core);
        core.registry
            .sessions()
            .map(|v| {
                let (queue_depth, queue_bytes) = v.data.depth();
                SessionSummary {
                    client_id: v.client_id.to_string(),
                    connected: v.holder.is_some(),
                    expiry: v.expiry,
                    expires_in: v.expires_at.map(|t| t.saturating_duration_since(now)),
                    queue_depth,
                    queue_bytes,
                    subscriptions: v.data.filters().len(),
                }
            })
            .collect()
    }

    /// End `client_id`'s session now, if no connection holds it: its
    /// subscriptions, queue and stored state go, and a will waiting for
    /// its delay is published (the session's end is its moment).
    pub fn discard_session(&self, client_id: &str) -> Discard {
        let e = &self.engine;
        let mut due: Vec<PendingWill> = Vec::new();
        {
            let mut core = lock(&e.core);
            if !core.registry.exists(client_id) {
                return Discard::NotFound;
            }
            let Some(key) = core.registry.discard(client_id) else {
                return Discard::Connected;
            };
            tracing::info!(client_id, "session discarded by an administrator");
            e.end_session(&mut core, client_id, &key, &mut due);
        }
        let now = Instant::now();
        e.publish_wills(due, now);
        e.flush_store();
        Discard::Discarded
    }

    /// Every subscription of every session (in no particular order).
    pub fn subscriptions(&self) -> Vec<SubscriptionSummary> {
        let core = lock(&self.engine.core);
        core.registry
            .sessions()
            .flat_map(|v| subscriptions_of(v.data))
            .collect()
    }

    /// Keep `message`, retained `at` (its Message Expiry Interval counts
    /// from then), as its topic's retained message (with an empty
    /// payload: delete the topic's), as a retained PUBLISH would, but
    /// without delivering it to anyone: how a cluster's agreed retained
    /// messages reach each node ([`crate::Peers::retain`]). A subscription
    /// made while it was on its way gets it too. The commit: when the
    /// durable store has it.
    pub fn set_retained(&self, message: &Message, at: Instant) -> std::io::Result<crate::Commit> {
        self.engine.retain_only(message, at)
    }

    /// Every retained message but `$SYS`'s (which describe this process),
    /// `$` topics included, each with when it was retained.
    pub fn retained_all(&self) -> Vec<(Message, Instant)> {
        self.engine.retained_all()
    }

    /// The retained messages whose topics match `filter`.
    pub fn retained(&self, filter: &TopicFilter) -> Vec<Message> {
        self.engine.retained_matching(filter)
    }

    /// Delete the retained message of `topic`, without telling
    /// subscribers (as a retained PUBLISH with an empty payload would);
    /// once the durable store has the change (in a cluster, once the
    /// cluster agreed it). False if there was none.
    pub async fn delete_retained(&self, topic: &TopicName) -> std::io::Result<bool> {
        let e = &self.engine;
        if !e.retained_get(topic) {
            return Ok(false);
        }
        let mut empty = Message::new(topic.clone(), Bytes::new(), petrel_codec::QoS::AtMostOnce);
        empty.retain = true;
        // In a cluster that agrees retained messages, every node deletes
        // it as the cluster applies the deletion.
        if let Some(p) = e.peers.as_ref().filter(|p| p.agrees_retained()) {
            let commit = p.retain(&empty);
            std::future::poll_fn(|cx| commit.poll(cx)).await?;
            return Ok(true);
        }
        let commit = e.retain_only(&empty, Instant::now())?;
        if !e.flush_store() {
            return Err(std::io::Error::other(
                "the durable store could not be written",
            ));
        }
        std::future::poll_fn(|cx| commit.poll(cx)).await?;
        Ok(true)
    }

    /// The figures the metrics endpoint reports. Walks every session (for
    /// queue depths and connections by listener): for a scrape every few
    /// seconds, not for every message.
    pub fn metrics(&self) -> MetricsSnapshot {
        let e = &self.engine;
        let stats = e.snapshot();
        let mut connections: Vec<ListenerConnections> = Vec::new();
        let (mut queued_messages, mut queued_bytes, mut max_queue_depth, mut inflight) =
            (0u64, 0u64, 0u64, 0u64);
        {
            let core = lock(&e.core);
            for v in core.registry.sessions() {
                let (depth, bytes) = v.data.depth();
                queued_messages += depth as u64;
                queued_bytes += bytes as u64;
                max_queue_depth = max_queue_depth.max(depth as u64);
                let Some(reach) = v.holder else { continue };
                inflight += u64::from(reach.inflight());
                let Some(info) = reach.info() else { continue };
                match connections
                    .iter_mut()
                    .find(|c| *c.listener == *info.listener.name && c.protocol == info.protocol)
                {
                    Some(c) => c.connected += 1,
                    None => connections.push(ListenerConnections {
                        listener: info.listener.name.to_string(),
                        protocol: info.protocol,
                        connected: 1,
                    }),
                }
            }
        }
        connections.sort_by(|a, b| {
            (&a.listener, a.protocol.level()).cmp(&(&b.listener, b.protocol.level()))
        });
        MetricsSnapshot {
            connacks: e.stats.connack_counts(),
            disconnects: e.stats.disconnect_counts(),
            delivery_latency: e.stats.delivery_latency.snapshot(),
            store_write_latency: e
                .store()
                .and_then(|s| s.write_latency())
                .map(|h| h.snapshot()),
            store_bytes: e.store().map_or(0, |s| s.stored_bytes()),
            retained_bytes: e.retained_bytes() as u64,
            uptime: e.started.elapsed(),
            stats,
            connections,
            queued_messages,
            queued_bytes,
            max_queue_depth,
            inflight,
            bridges: self.bridge_snapshots(),
        }
    }

    /// The counters of the bridge `name`, whose local session has
    /// `client_id`, for [`Broker::metrics`]: made on first use, the same
    /// ones after (a bridge restarted within the process goes on counting).
    /// `queue` bounds its queue of messages for the remote.
    pub fn bridge_counters(
        &self,
        name: &str,
        client_id: &str,
        queue: crate::stats::QueueBound,
    ) -> Arc<crate::stats::BridgeCounters> {
        let mut all = lock(&self.engine.bridges);
        if let Some((_, _, c)) = all.iter().find(|(n, _, _)| n == name) {
            return c.clone();
        }
        let c = Arc::new(crate::stats::BridgeCounters {
            queue: Arc::new(queue),
            ..crate::stats::BridgeCounters::default()
        });
        all.push((name.to_string(), client_id.to_string(), c.clone()));
        c
    }

    fn bridge_snapshots(&self) -> Vec<crate::stats::BridgeSnapshot> {
        use std::sync::atomic::Ordering::Relaxed;
        let all = lock(&self.engine.bridges).clone();
        all.into_iter()
            .map(|(name, client_id, c)| {
                let queued = {
                    let core = lock(&self.engine.core);
                    core.registry
                        .session(&client_id)
                        .map_or(0, |v| v.data.depth().0 as u64)
                };
                crate::stats::BridgeSnapshot {
                    name,
                    up: c.up.load(Relaxed),
                    connects: c.connects.load(Relaxed),
                    connect_failures: c.connect_failures.load(Relaxed),
                    forwarded_out: c.forwarded_out.load(Relaxed),
                    forwarded_in: c.forwarded_in.load(Relaxed),
                    refused: c.refused.load(Relaxed),
                    queued,
                    dropped: c.queue.dropped.load(Relaxed),
                }
            })
            .collect()
    }

    /// Whether the broker is up and taking clients (not shutting down).
    pub fn is_ready(&self) -> bool {
        !self.is_shut_down()
    }
}

fn subscriptions_of(key: &SessionKey) -> Vec<SubscriptionSummary> {
    key.filters()
        .iter()
        .map(|(f, s)| SubscriptionSummary {
            client_id: key.client_id().to_string(),
            filter: f.to_string(),
            subscription: s.clone(),
        })
        .collect()
}
