//! The broker's decisions, without sockets.
//!
//! [`engine`] is the one place where the broker decides: who may connect
//! (authentication, session ownership, takeover), what a client may publish
//! and subscribe to and which deliveries it may receive (authorisation),
//! what is retained, where a message goes, when a session ends and a will
//! is due, and what `$SYS` says. A transport, a test, an embedding
//! application (and later a bridge or a cluster node) all call it the same
//! way. Below it, the data structures it decides with: the subscription
//! trie and router, the retained store, the session registry, the wills
//! waiting for their delay, and each session's queue.

pub mod auth;
pub mod engine;
pub mod peers;
pub(crate) mod queue;
pub mod retained;
pub mod router;
pub mod sessions;
pub(crate) mod small;
pub mod store;
pub mod subscriptions;
pub mod wills;

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The levels of a topic name or filter (4.7.1.1): split on `/`, empty
/// levels kept (`/a` has levels `""` and `"a"`).
pub(crate) fn levels(s: &str) -> std::str::Split<'_, char> {
    s.split('/')
}

/// The first level of `rest` and what follows it (`None` after the last).
pub(crate) fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

/// Lock a mutex, whatever a panicking holder left: every structure guarded
/// here stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-lock, as [`lock`].
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-lock, as [`lock`].
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the waker of whoever waits for an event is kept: the connection's
/// task, or the hibernating connection itself.
#[derive(Debug, Default)]
pub(crate) struct WakerSlot(Option<std::task::Waker>);

impl WakerSlot {
    /// Keep `waker`, unless what is there already wakes the same task.
    pub(crate) fn set(&mut self, waker: &std::task::Waker) {
        if !self.0.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.0 = Some(waker.clone());
        }
    }

    /// Forget it.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// Take it, to wake once the lock guarding the slot is released.
    pub(crate) fn take(&mut self) -> Option<std::task::Waker> {
        self.0.take()
    }
}

/// Whether a topic belongs to the broker's `$SYS` tree.
pub(crate) fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Whether `topic` is `$SYS/broker/connection/<client_id>/state`, where a
/// bridge (Mosquitto's, with its notifications) writes its own link's
/// state, will included: the one `$SYS` topic a client may write, and only
/// for its own client id.
pub(crate) fn own_connection_state(topic: &str, client_id: &str) -> bool {
    topic
        .strip_prefix("$SYS/broker/connection/")
        .and_then(|rest| rest.strip_suffix("/state"))
        .is_some_and(|id| id == client_id)
}

/// Whether a topic name or filter has more than `max` levels.
pub(crate) fn too_deep(topic: &str, max: usize) -> bool {
    topic.bytes().filter(|&b| b == b'/').count() >= max
}
