//! Slowing failed logins, so passwords can't be guessed at line speed, with
//! two counts per attempt:
//!
//! * **per address and user name**: `login_free_failures` (5) failures for
//!   one user from one address, then that user's attempts from there are
//!   spaced out. The user's own success clears it: a device that mistyped
//!   is not held back once it gets in.
//! * **per address**: `login_address_free_failures` (100) failures from one
//!   address whatever the user name, then every attempt from there is
//!   spaced out. Successes never clear it (anyone with one account could
//!   otherwise interleave logins with guesses), and it is loose enough that
//!   a fleet behind one NAT address is not held back by one device with a
//!   wrong password, whose own attempts the first count already spaces out.
//!
//! Attempts still being checked count as failures to come, so a burst of
//! simultaneous attempts gets no more than the free ones. Spaced out, each
//! attempt waits for a turn, turns `login_delay` apart at first, the spacing
//! doubling with every further failure up to `login_delay_max`. An attempt
//! whose turn would come after the connect timeout is refused at once with
//! 0x89 Server Busy (3.1.1: 3, Server Unavailable), without its credentials
//! being looked at, so a flood costs almost nothing. Failures age out: a
//! count without failures for ten minutes is forgotten. A client that
//! presented no credentials guesses nothing: its refusal is not counted. At
//! most `MAX_ENTRIES` counts are kept; past that, the quiet ones go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Counts kept at most.
const MAX_ENTRIES: usize = 65_536;
/// A count without failures this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The throttle's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures one user name may have from one address before its
    /// attempts from there are spaced out.
    pub free_failures: u32,
    /// Failures an address may have, whatever the user name, before all
    /// its attempts are spaced out.
    pub free_address_failures: u32,
    /// Spacing after the free failures.
    pub delay: Duration,
    /// Most spacing.
    pub max_delay: Duration,
    /// Longest an attempt may wait for its turn (the connect timeout).
    pub max_wait: Duration,
}

/// What is counted: an address, or a user name from an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    User(IpAddr, Box<str>),
}

#[derive(Debug)]
struct Record {
    failures: u32,
    /// Attempts admitted whose outcome is not known yet.
    pending: u32,
    /// When the next spaced-out attempt may go.
    next_turn: Instant,
    last_failure: Instant,
}

impl Record {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            pending: 0,
            next_turn: now,
            last_failure: now,
        }
    }

    fn idle(&self) -> bool {
        self.pending == 0 && self.failures == 0
    }
}

/// What [`Throttle::admit`] decided about an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the credentials now.
    Now,
    /// Check them after this wait.
    After(Duration),
    /// Refuse without checking.
    Refuse,
}

/// An attempt the throttle admitted: tell it how it ended, exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    addr: IpAddr,
    user: Option<Box<str>>,
}

/// Failed logins by address and by user name from an address.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    counts: HashMap<Key, Record>,
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            counts: HashMap::new(),
        }
    }

    /// How many counts it keeps.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn keys(ticket: &Ticket) -> impl Iterator<Item = Key> + '_ {
        std::iter::once(Key::Address(ticket.addr)).chain(
            ticket
                .user
                .as_ref()
                .map(|u| Key::User(ticket.addr, u.clone())),
        )
    }

    fn free(&self, key: &Key) -> u32 {
        match key {
            Key::Address(_) => self.config.free_address_failures,
            Key::User(..) => self.config.free_failures,
        }
    }

    /// When `key`'s next attempt may go, reserving its turn; `None` to
    /// refuse.
    fn turn(&mut self, key: &Key, now: Instant) -> Option<Duration> {
        let free = self.free(key);
        let config = self.config;
        let r = self.counts.get_mut(key)?;
        if now.saturating_duration_since(r.last_failure) >= FORGET_AFTER {
            r.failures = 0;
        }
        let expected = r.failures.saturating_add(r.pending);
        if expected < free {
            return Some(Duration::ZERO);
        }
        let extra = (expected - free).min(16);
        let spacing = config
            .delay
            .saturating_mul(1 << extra)
            .min(config.max_delay);
        let turn = r.next_turn.max(now);
        let wait = turn - now;
        if wait > config.max_wait {
            return None;
        }
        r.next_turn = turn + spacing;
        Some(wait)
    }

    /// An attempt from `addr` for `user` arrives: when may its credentials
    /// be checked? An admitted attempt (now or later) gives a [`Ticket`]
    /// that must end with [`Throttle::failed`], [`Throttle::succeeded`] or
    /// [`Throttle::abandoned`].
    pub fn admit(
        &mut self,
        addr: IpAddr,
        user: Option<&str>,
        now: Instant,
    ) -> (Admission, Option<Ticket>) {
        let ticket = Ticket {
            addr,
            user: user.map(Box::from),
        };
        let keys: Vec<Key> = Self::keys(&ticket).collect();
        self.make_room(keys.len(), now);
        for k in &keys {
            self.counts
                .entry(k.clone())
                .or_insert_with(|| Record::new(now));
        }
        let mut wait = Duration::ZERO;
        for k in &keys {
            match self.turn(k, now) {
                Some(w) => wait = wait.max(w),
                None => {
                    self.forget_idle(&keys);
                    return (Admission::Refuse, None);
                }
            }
        }
        for k in &keys {
            if let Some(r) = self.counts.get_mut(k) {
                r.pending += 1;
            }
        }
        let admission = if wait.is_zero() {
            Admission::Now
        } else {
            Admission::After(wait)
        };
        (admission, Some(ticket))
    }

    fn make_room(&mut self, wanted: usize, now: Instant) {
        if self.counts.len() + wanted <= MAX_ENTRIES {
            return;
        }
        self.tidy(now);
        if self.counts.len() + wanted > MAX_ENTRIES {
            // Under a flood from this many addresses, forget the oldest
            // half of what no attempt is waiting on.
            let mut times: Vec<Instant> = self.counts.values().map(|r| r.last_failure).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.counts
                .retain(|_, r| r.pending > 0 || r.last_failure > cut);
        }
    }

    fn forget_idle(&mut self, keys: &[Key]) {
        for k in keys {
            if self.counts.get(k).is_some_and(Record::idle) {
                self.counts.remove(k);
            }
        }
    }

    /// Conclude an attempt: `failed` counts it against its keys,
    /// `clear_user` forgets the user's failures (its own success) and its
    /// spacing.
    fn conclude(&mut self, ticket: Ticket, failed: bool, clear_user: bool, now: Instant) {
        let keys: Vec<Key> = Self::keys(&ticket).collect();
        for k in &keys {
            if let Some(r) = self.counts.get_mut(k) {
                r.pending = r.pending.saturating_sub(1);
                if failed {
                    r.failures = r.failures.saturating_add(1);
                    r.last_failure = now;
                }
                if clear_user && matches!(k, Key::User(..)) {
                    r.failures = 0;
                    r.next_turn = now;
                }
            }
        }
        self.forget_idle(&keys);
    }

    /// The attempt's credentials were wrong.
    pub fn failed(&mut self, ticket: Ticket, now: Instant) {
        self.conclude(ticket, true, false, now);
    }

    /// The attempt's credentials were good: that user's failures from
    /// there are forgotten; the address's stand (they age out).
    pub fn succeeded(&mut self, ticket: Ticket, now: Instant) {
        self.conclude(ticket, false, true, now);
    }

    /// The attempt ended without a verdict on its credentials (none were
    /// presented, or its connection went away while it waited).
    pub fn abandoned(&mut self, ticket: Ticket, now: Instant) {
        self.conclude(ticket, false, false, now);
    }

    /// Forget counts quiet for long.
    pub fn tidy(&mut self, now: Instant) {
        self.counts.retain(|_, r| {
            r.pending > 0 || now.saturating_duration_since(r.last_failure) < FORGET_AFTER
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            free_failures: 3,
            free_address_failures: 10,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_wait: Duration::from_secs(10),
        }
    }

    const A: [u8; 4] = [10, 0, 0, 1];

    fn fail(t: &mut Throttle, user: &str, now: Instant) {
        let (admission, ticket) = t.admit(A.into(), Some(user), now);
        assert_eq!(admission, Admission::Now);
        t.failed(ticket.unwrap(), now);
    }

    #[test]
    fn a_user_s_failures_space_its_attempts_then_refuse_them() {
        let t0 = Instant::now();
        let mut t = Throttle::new(config());
        for _ in 0..3 {
            fail(&mut t, "alice", t0);
        }
        let admit = |t: &mut Throttle, user| t.admit(A.into(), Some(user), t0).0;
        // Spaced now, the spacing doubling with each failure to come.
        assert_eq!(admit(&mut t, "alice"), Admission::Now);
        assert_eq!(
            admit(&mut t, "alice"),
            Admission::After(Duration::from_secs(1))
        );
        assert_eq!(
            admit(&mut t, "alice"),
            Admission::After(Duration::from_secs(3))
        );
        assert_eq!(
            admit(&mut t, "alice"),
            Admission::After(Duration::from_secs(7))
        );
        assert_eq!(
            admit(&mut t, "alice"),
            Admission::Refuse,
            "past the connect timeout"
        );
        // Another user from the same address, and anonymous clients, are
        // not slowed: the address has not reached its own count.
        assert_eq!(admit(&mut t, "bob"), Admission::Now);
        assert_eq!(t.admit(A.into(), None, t0).0, Admission::Now);
    }

    #[test]
    fn the_user_s_success_clears_its_count_but_not_the_address_s() {
        let t0 = Instant::now();
        let mut t = Throttle::new(config());
        for _ in 0..3 {
            fail(&mut t, "alice", t0);
        }
        let (admission, ticket) = t.admit(A.into(), Some("alice"), t0);
        assert_eq!(admission, Admission::Now);
        t.succeeded(ticket.unwrap(), t0);
        for _ in 0..3 {
            fail(&mut t, "alice", t0);
        }
        // Another account's successes do nothing for alice's count.
        for _ in 0..3 {
            let (_, ticket) = t.admit(A.into(), Some("mallory"), t0);
            t.succeeded(ticket.unwrap(), t0);
        }
        assert!(matches!(
            t.admit(A.into(), Some("alice"), t0).0,
            Admission::Now
        ));
        assert!(matches!(
            t.admit(A.into(), Some("alice"), t0).0,
            Admission::After(_)
        ));
    }

    #[test]
    fn many_user_names_from_one_address_hit_the_address_count() {
        let t0 = Instant::now();
        let mut t = Throttle::new(config());
        // Credential stuffing: one guess per user name, each user free, the
        // address not: ten free failures, then spaced.
        for i in 0..10 {
            fail(&mut t, &format!("user{i}"), t0);
        }
        assert_eq!(t.admit(A.into(), Some("user10"), t0).0, Admission::Now);
        assert!(matches!(
            t.admit(A.into(), Some("user11"), t0).0,
            Admission::After(_)
        ));
        // A success elsewhere does not clear the address's count.
        let (_, ticket) = t.admit(A.into(), Some("user12"), t0);
        t.succeeded(ticket.unwrap(), t0);
        assert!(matches!(
            t.admit(A.into(), Some("user13"), t0).0,
            Admission::After(_)
        ));
    }

    #[test]
    fn simultaneous_attempts_count_before_they_fail() {
        let t0 = Instant::now();
        let mut t = Throttle::new(config());
        let now: Vec<Admission> = (0..10)
            .map(|_| t.admit(A.into(), Some("alice"), t0).0)
            .collect();
        assert_eq!(now.iter().filter(|x| **x == Admission::Now).count(), 4);
        assert!(now.contains(&Admission::Refuse));
    }

    #[test]
    fn counts_age_out_and_are_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(config());
        for _ in 0..3 {
            fail(&mut t, "alice", t0);
        }
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        t.tidy(later);
        assert!(t.is_empty());
        for i in 0..(MAX_ENTRIES as u32 / 2 + 10) {
            let addr = IpAddr::from(i.to_be_bytes());
            let now = t0 + Duration::from_millis(u64::from(i));
            let (_, ticket) = t.admit(addr, Some("u"), now);
            t.failed(ticket.unwrap(), now);
        }
        assert!(t.len() <= MAX_ENTRIES, "{}", t.len());
    }
}
