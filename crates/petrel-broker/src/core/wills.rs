//! Will messages waiting for their delay.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Wills of connections that ended without a normal DISCONNECT, each due
/// when its Will Delay Interval passes or its session ends, whichever comes
/// first ([MQTT-3.1.2-8]); a reconnect of the same client in time cancels
/// it. At most one per client identifier.
#[derive(Debug)]
pub struct WillQueue<W> {
    pending: HashMap<String, (Instant, W)>,
    /// The same wills by due time, soonest first (so finding the due ones
    /// never walks them all).
    by_time: BTreeSet<(Instant, String)>,
}

impl<W> Default for WillQueue<W> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }
}

impl<W> WillQueue<W> {
    /// No wills waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many wills wait.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Schedule `will` for `client_id`: due after `delay`, or when the
    /// session ends (`session_ends`) if that is sooner. A zero delay is due at
    /// once. Replaces a will already waiting for that client.
    pub fn schedule(
        &mut self,
        client_id: &str,
        will: W,
        delay: Duration,
        session_ends: Option<Instant>,
        now: Instant,
    ) {
        let mut at = now + delay;
        if let Some(end) = session_ends {
            at = at.min(end);
        }
        if let Some((old, _)) = self.pending.insert(client_id.to_string(), (at, will)) {
            self.by_time.remove(&(old, client_id.to_string()));
        }
        self.by_time.insert((at, client_id.to_string()));
    }

    /// The client reconnected (or its session was taken over) before its
    /// will was due: the will is not published ([MQTT-3.1.2-8]).
    pub fn cancel(&mut self, client_id: &str) -> Option<W> {
        let (at, w) = self.pending.remove(client_id)?;
        self.by_time.remove(&(at, client_id.to_string()));
        Some(w)
    }

    /// The client's session ended: its will, if still waiting, is due now.
    pub fn session_ended(&mut self, client_id: &str) -> Option<W> {
        self.cancel(client_id)
    }

    /// Take the wills that are due, earliest first.
    pub fn due(&mut self, now: Instant) -> Vec<W> {
        self.due_by_client(now)
            .into_iter()
            .map(|(_, w)| w)
            .collect()
    }

    /// [`WillQueue::due`], each with its client identifier.
    pub fn due_by_client(&mut self, now: Instant) -> Vec<(String, W)> {
        let mut out = Vec::new();
        while let Some(first) = self.by_time.first() {
            if first.0 > now {
                break;
            }
            let Some((_, id)) = self.by_time.pop_first() else {
                break;
            };
            if let Some((_, w)) = self.pending.remove(&id) {
                out.push((id, w));
            }
        }
        out
    }

    /// When `client_id`'s will is due, if one waits.
    pub fn due_at(&self, client_id: &str) -> Option<Instant> {
        self.pending.get(client_id).map(|(at, _)| *at)
    }

    /// When the next will is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }
}
