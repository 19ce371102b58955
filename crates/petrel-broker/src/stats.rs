//! Counters the broker keeps for `$SYS`, metrics and embedding applications.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in microseconds (the
/// last bucket, above them all, is implicit): 10 µs to 10 s, about three
/// per decade.
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

fn bucket(d: Duration) -> usize {
    let us = d.as_micros();
    LATENCY_BOUNDS_US
        .iter()
        .position(|&b| us <= u128::from(b))
        .unwrap_or(LATENCY_BOUNDS_US.len())
}

/// A histogram of durations, updated without locks by any thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Count one observation.
    pub fn record(&self, d: Duration) {
        self.buckets[bucket(d)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Add what a [`LocalHistogram`] counted (one update per bucket used,
    /// not per observation).
    pub(crate) fn merge(&self, local: &LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (b, &n) in self.buckets.iter().zip(&local.buckets) {
            if n > 0 {
                b.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.sum_ns.fetch_add(local.sum_ns, Ordering::Relaxed);
        self.count.fetch_add(local.count, Ordering::Relaxed);
    }

    /// What it counted so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Observations counted by one task, added to a [`LatencyHistogram`] at
/// once.
#[derive(Debug, Default)]
pub(crate) struct LocalHistogram {
    buckets: [u64; BUCKETS],
    sum_ns: u64,
    count: u64,
}

impl LocalHistogram {
    pub(crate) fn record(&mut self, d: Duration) {
        self.buckets[bucket(d)] += 1;
        self.sum_ns = self
            .sum_ns
            .saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.count += 1;
    }
}

/// A [`LatencyHistogram`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative): bucket `i` counts those
    /// up to [`LATENCY_BOUNDS_US`]`[i]`, and above the one before; the last
    /// counts those above every bound.
    pub buckets: Vec<u64>,
    /// The sum of every observation.
    pub sum: Duration,
    /// How many there were.
    pub count: u64,
}

/// Why connections ended, as the metrics count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT (any reason code).
    Client,
    /// The broker disconnected it for breaking the protocol or a limit.
    ProtocolError,
    /// Nothing heard within 1.5 times the keep alive.
    KeepAliveTimeout,
    /// Another connection took its session over.
    TakenOver,
    /// An administrator kicked it (the admin API).
    Administrative,
    /// The broker was shutting down.
    ServerShutdown,
    /// The broker closed it for another reason (quota, authorisation, a
    /// failed re-authentication).
    Server,
    /// The network connection ended without DISCONNECT.
    ConnectionLost,
}

impl DisconnectReason {
    /// Every reason, in the order of their counters.
    pub const ALL: [Self; 8] = [
        Self::Client,
        Self::ProtocolError,
        Self::KeepAliveTimeout,
        Self::TakenOver,
        Self::Administrative,
        Self::ServerShutdown,
        Self::Server,
        Self::ConnectionLost,
    ];

    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client_disconnect",
            Self::ProtocolError => "protocol_error",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::TakenOver => "taken_over",
            Self::Administrative => "administrative",
            Self::ServerShutdown => "server_shutdown",
            Self::Server => "server",
            Self::ConnectionLost => "connection_lost",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What one connection task counted since it last reported, added to the
/// broker's counters in one go (a handful of atomic additions per wake-up
/// rather than several per packet).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    // Counts of packets between two reports fit 32 bits (a report comes at
    // every wake-up); byte counts may not.
    pub(crate) packets_in: u32,
    pub(crate) packets_out: u32,
    pub(crate) publish_in: [u32; 3],
    pub(crate) publish_out: [u32; 3],
    // One read or one write between two reports: 32 bits too.
    pub(crate) bytes_in: u32,
    pub(crate) bytes_out: u32,
    // Payload bytes fit 32 bits between two reports but for a burst of
    // large messages: those go straight to the totals (`count_payload`).
    pub(crate) payload_in: [u32; 3],
    pub(crate) payload_out: [u32; 3],
}

/// Add `n` payload bytes to a tally's 32-bit count, or, were the count to
/// overflow, to the broker's total at once.
fn count_payload(slot: &mut u32, total: &AtomicU64, n: usize) {
    match u32::try_from(n).ok().and_then(|n| slot.checked_add(n)) {
        Some(v) => *slot = v,
        None => {
            total.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Tally {
    pub(crate) fn is_empty(&self) -> bool {
        self.packets_in == 0 && self.packets_out == 0 && self.bytes_in == 0 && self.bytes_out == 0
    }

    /// A PUBLISH of QoS `q` with `payload` bytes came in (bytes past the
    /// tally's 32 bits go to `stats`' totals at once).
    pub(crate) fn publish_received(&mut self, q: usize, payload: usize, stats: &Stats) {
        self.publish_in[q] += 1;
        count_payload(&mut self.payload_in[q], &stats.payload_in[q], payload);
    }

    /// A PUBLISH of QoS `q` with `payload` bytes went out.
    pub(crate) fn publish_sent(&mut self, q: usize, payload: usize, stats: &Stats) {
        self.publish_out[q] += 1;
        count_payload(&mut self.payload_out[q], &stats.payload_out[q], payload);
    }
}

/// Live counters, updated by every connection task. Relaxed atomics: each is
/// an independent tally, read for reporting only.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) clients_connected: AtomicU64,
    pub(crate) clients_maximum: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) publish_in: [AtomicU64; 3],
    pub(crate) publish_out: [AtomicU64; 3],
    pub(crate) payload_in: [AtomicU64; 3],
    pub(crate) payload_out: [AtomicU64; 3],
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) dropped_qos0: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_expired: AtomicU64,
    pub(crate) dropped_too_large: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) hibernations: AtomicU64,
    pub(crate) hibernating: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) auth_successes: AtomicU64,
    pub(crate) denied_publish: AtomicU64,
    pub(crate) denied_subscribe: AtomicU64,
    pub(crate) denied_delivery: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) store_full: AtomicU64,
    pub(crate) sessions_evicted: AtomicU64,
    pub(crate) connections_throttled: AtomicU64,
    /// CONNACKs sent, by reason code.
    pub(crate) connacks: ConnackCounts,
    /// Connections ended, by [`DisconnectReason`].
    pub(crate) disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    /// From a PUBLISH's arrival to its copy leaving for a subscriber.
    pub(crate) delivery_latency: LatencyHistogram,
}

/// One counter per reason code.
#[derive(Debug)]
pub(crate) struct ConnackCounts([AtomicU64; 256]);

impl Default for ConnackCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Add what a connection task counted.
    pub(crate) fn report(&self, t: &mut Tally) {
        if t.is_empty() {
            return;
        }
        let add = |c: &AtomicU64, n: u64| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.messages_received, u64::from(t.packets_in));
        add(&self.messages_sent, u64::from(t.packets_out));
        add(&self.bytes_received, u64::from(t.bytes_in));
        add(&self.bytes_sent, u64::from(t.bytes_out));
        for q in 0..3 {
            add(&self.publish_in[q], u64::from(t.publish_in[q]));
            add(&self.payload_in[q], u64::from(t.payload_in[q]));
            add(&self.publish_out[q], u64::from(t.publish_out[q]));
            add(&self.payload_out[q], u64::from(t.payload_out[q]));
        }
        *t = Tally::default();
    }

    pub(crate) fn connack(&self, code: u8) {
        self.connacks.0[usize::from(code)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn disconnected(&self, why: DisconnectReason) {
        self.disconnects[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let each = |a: &[AtomicU64; 3]| [get(&a[0]), get(&a[1]), get(&a[2])];
        let publish_in = each(&self.publish_in);
        let publish_out = each(&self.publish_out);
        StatsSnapshot {
            clients_connected: get(&self.clients_connected),
            clients_maximum: get(&self.clients_maximum),
            connections_total: get(&self.connections_total),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            publish_received: publish_in.iter().sum(),
            publish_sent: publish_out.iter().sum(),
            publish_received_by_qos: publish_in,
            publish_sent_by_qos: publish_out,
            payload_bytes_received_by_qos: each(&self.payload_in),
            payload_bytes_sent_by_qos: each(&self.payload_out),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            dropped_qos0: get(&self.dropped_qos0),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_expired: get(&self.dropped_expired),
            dropped_too_large: get(&self.dropped_too_large),
            connections_refused: get(&self.connections_refused),
            hibernations: get(&self.hibernations),
            hibernating: get(&self.hibernating),
            auth_failures: get(&self.auth_failures),
            auth_successes: get(&self.auth_successes),
            denied_publish: get(&self.denied_publish),
            denied_subscribe: get(&self.denied_subscribe),
            denied_delivery: get(&self.denied_delivery),
            store_errors: get(&self.store_errors),
            store_full: get(&self.store_full),
            sessions_evicted: get(&self.sessions_evicted),
            connections_throttled: get(&self.connections_throttled),
            ..StatsSnapshot::default()
        }
    }

    /// CONNACKs sent, by reason code (only codes sent at least once).
    pub(crate) fn connack_counts(&self) -> Vec<(u8, u64)> {
        (0..=255u8)
            .filter_map(|c| {
                let n = self.connacks.0[usize::from(c)].load(Ordering::Relaxed);
                (n > 0).then_some((c, n))
            })
            .collect()
    }

    /// Connections ended, by reason.
    pub(crate) fn disconnect_counts(&self) -> Vec<(DisconnectReason, u64)> {
        DisconnectReason::ALL
            .iter()
            .map(|&r| (r, self.disconnects[r.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// The broker's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Clients connected now.
    pub clients_connected: u64,
    /// Most clients connected at once since start.
    pub clients_maximum: u64,
    /// Connections accepted (CONNACK success) since start.
    pub connections_total: u64,
    /// Sessions that exist, connected or not.
    pub sessions: u64,
    /// Control packets received.
    pub messages_received: u64,
    /// Control packets sent.
    pub messages_sent: u64,
    /// PUBLISH packets received.
    pub publish_received: u64,
    /// PUBLISH packets sent.
    pub publish_sent: u64,
    /// PUBLISH packets received, by QoS (0, 1, 2).
    pub publish_received_by_qos: [u64; 3],
    /// PUBLISH packets sent, by QoS.
    pub publish_sent_by_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub payload_bytes_received_by_qos: [u64; 3],
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    pub payload_bytes_sent_by_qos: [u64; 3],
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Subscriptions held.
    pub subscriptions: u64,
    /// What the subscriptions are charged, in bytes (see
    /// `max_subscription_bytes`).
    pub subscription_bytes: u64,
    /// Retained messages stored.
    pub retained: u64,
    /// QoS 0 messages dropped because a subscriber's queue was full.
    pub dropped_qos0: u64,
    /// QoS 1/2 messages dropped because a session's queue was full.
    pub dropped_queue_full: u64,
    /// Messages whose Message Expiry Interval ran out before delivery.
    pub dropped_expired: u64,
    /// Messages larger than a subscriber's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Connections closed for exceeding `max_connections`, or refused at CONNECT.
    pub connections_refused: u64,
    /// Times a quiet connection went into hibernation since start.
    pub hibernations: u64,
    /// Connections hibernating now.
    pub hibernating: u64,
    /// Logins refused by authentication (bad or missing credentials,
    /// throttled) since start.
    pub auth_failures: u64,
    /// Logins accepted by authentication since start.
    pub auth_successes: u64,
    /// PUBLISHes refused by authorisation.
    pub denied_publish: u64,
    /// Subscriptions refused by authorisation.
    pub denied_subscribe: u64,
    /// Deliveries withheld by authorisation (the subscriber may not read
    /// the topic).
    pub denied_delivery: u64,
    /// Writes to the durable store that failed (what they carried was
    /// refused, not acknowledged).
    pub store_errors: u64,
    /// Messages refused because the durable store held `max_store_bytes`.
    pub store_full: u64,
    /// Offline sessions ended to make room for new ones at `max_sessions`.
    pub sessions_evicted: u64,
    /// Connections refused by the per-address rate and caps, or the cap on
    /// unfinished CONNECTs (also counted in `connections_refused`).
    pub connections_throttled: u64,
}

/// What one bridge (`petrel-bridge`) counts, for the metrics: registered
/// with [`crate::Broker::bridge_counters`], updated by the bridge, read by
/// [`crate::Broker::metrics`].
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Connected to the remote now.
    pub up: std::sync::atomic::AtomicBool,
    /// Connections to the remote made.
    pub connects: AtomicU64,
    /// Attempts to connect that failed (refused, unreachable, TLS).
    pub connect_failures: AtomicU64,
    /// Messages forwarded to the remote (acknowledged there, for QoS 1/2).
    pub forwarded_out: AtomicU64,
    /// Messages forwarded from the remote into this broker.
    pub forwarded_in: AtomicU64,
    /// Messages the other side refused (an error reason code).
    pub refused: AtomicU64,
    /// The bounds of the queue of messages waiting for the remote, and the
    /// messages dropped for want of room in it.
    pub queue: Arc<QueueBound>,
}

/// A bridge's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeSnapshot {
    /// The bridge's name.
    pub name: String,
    /// Connected to the remote now.
    pub up: bool,
    /// Connections to the remote made.
    pub connects: u64,
    /// Attempts to connect that failed.
    pub connect_failures: u64,
    /// Messages forwarded to the remote.
    pub forwarded_out: u64,
    /// Messages forwarded from the remote.
    pub forwarded_in: u64,
    /// Messages the other side refused.
    pub refused: u64,
    /// Messages waiting to go to the remote.
    pub queued: u64,
    /// Messages dropped because the queue for the remote was full.
    pub dropped: u64,
}

/// A session queue's own bounds, instead of `max_queued_messages` and
/// `max_queued_bytes` (the broker-wide `max_queued_bytes_total` still
/// holds), and the count of messages dropped for want of room in it: what
/// a bridge's local side brings ([`crate::Peer::internal`]).
#[derive(Debug, Default)]
pub struct QueueBound {
    /// Messages that may wait.
    pub max_messages: usize,
    /// Bytes (topic, properties, payload) that may wait.
    pub max_bytes: usize,
    /// Messages dropped because the queue was full.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl QueueBound {
    /// Bounds of `max_messages` and `max_bytes`, nothing dropped yet.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            max_messages,
            max_bytes,
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tally's payload count is 32 bits: what would overflow it goes to
    /// the total at once, so no byte is lost either way.
    #[test]
    fn payload_bytes_past_32_bits_go_straight_to_the_total() {
        let total = AtomicU64::new(0);
        let mut slot = 0u32;
        count_payload(&mut slot, &total, 1_000);
        // Control: a small count stays in the tally.
        assert_eq!((slot, total.load(Ordering::Relaxed)), (1_000, 0));
        count_payload(&mut slot, &total, u32::MAX as usize);
        assert_eq!(slot, 1_000);
        assert_eq!(total.load(Ordering::Relaxed), u64::from(u32::MAX));
        count_payload(&mut slot, &total, 5_000_000_000);
        assert_eq!(slot, 1_000);
        assert_eq!(
            total.load(Ordering::Relaxed) + u64::from(slot),
            u64::from(u32::MAX) + 5_000_000_000 + 1_000
        );
    }
}
