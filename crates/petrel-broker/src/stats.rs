//! Counters the broker keeps for `$SYS` and for embedding applications.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, updated by every connection task. Relaxed atomics: each is
/// an independent tally, read for reporting only.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) clients_connected: AtomicU64,
    pub(crate) clients_maximum: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) publish_received: AtomicU64,
    pub(crate) publish_sent: AtomicU64,
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
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
        StatsSnapshot {
            clients_connected: get(&self.clients_connected),
            clients_maximum: get(&self.clients_maximum),
            connections_total: get(&self.connections_total),
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            publish_received: get(&self.publish_received),
            publish_sent: get(&self.publish_sent),
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
            ..StatsSnapshot::default()
        }
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
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Subscriptions held.
    pub subscriptions: u64,
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
}
