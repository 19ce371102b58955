//! Slowing failed logins per source address, so passwords can't be guessed
//! at line speed.
//!
//! Each address may fail `login_free_failures` times, attempts still being
//! checked counting as failures to come (so a burst of simultaneous
//! attempts gets no more than that). After that its attempts are spaced
//! out: each waits for a turn, turns `login_delay` apart at first, the
//! spacing doubling with every further failure up to `login_delay_max`. An attempt whose turn would come after the connect
//! timeout is refused at once with 0x89 Server Busy (3.1.1: 3, Server
//! Unavailable), without its credentials being looked at, so a flood from
//! one address costs almost nothing. Failures age out: an address that has
//! not failed for ten minutes is forgotten. A success does not clear them
//! (anyone with one account, or anonymous access, could otherwise
//! interleave successes with guesses). At most `MAX_ADDRESSES` are
//! tracked; past that, the quiet ones are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses tracked at most.
const MAX_ADDRESSES: usize = 65_536;
/// An address without failures this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The throttle's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures an address may have before its attempts are spaced out.
    pub free_failures: u32,
    /// Spacing after the free failures.
    pub delay: Duration,
    /// Most spacing.
    pub max_delay: Duration,
    /// Longest an attempt may wait for its turn (the connect timeout).
    pub max_wait: Duration,
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

/// Failed logins by source address.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    addresses: HashMap<IpAddr, Record>,
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            addresses: HashMap::new(),
        }
    }

    /// How many addresses it tracks.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether it tracks none.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// An attempt from `addr` arrives: when may its credentials be checked?
    /// An attempt admitted (now or later) must end with
    /// [`Throttle::failed`], [`Throttle::succeeded`] or
    /// [`Throttle::abandoned`].
    pub fn admit(&mut self, addr: IpAddr, now: Instant) -> Admission {
        self.make_room(addr, now);
        let free = self.config.free_failures;
        let r = self.addresses.entry(addr).or_insert(Record {
            failures: 0,
            pending: 0,
            next_turn: now,
            last_failure: now,
        });
        if now.saturating_duration_since(r.last_failure) >= FORGET_AFTER {
            r.failures = 0;
        }
        let expected = r.failures.saturating_add(r.pending);
        if expected < free {
            r.pending += 1;
            return Admission::Now;
        }
        let extra = expected.saturating_sub(free).min(16);
        let spacing = self
            .config
            .delay
            .saturating_mul(1 << extra)
            .min(self.config.max_delay);
        let turn = r.next_turn.max(now);
        let wait = turn - now;
        if wait > self.config.max_wait {
            return Admission::Refuse;
        }
        r.next_turn = turn + spacing;
        r.pending += 1;
        if wait.is_zero() {
            Admission::Now
        } else {
            Admission::After(wait)
        }
    }

    fn make_room(&mut self, addr: IpAddr, now: Instant) {
        if self.addresses.contains_key(&addr) || self.addresses.len() < MAX_ADDRESSES {
            return;
        }
        self.addresses.retain(|_, r| {
            r.pending > 0 || now.saturating_duration_since(r.last_failure) < FORGET_AFTER
        });
        if self.addresses.len() >= MAX_ADDRESSES {
            // Under a flood from this many addresses, forget the oldest half.
            let mut times: Vec<Instant> = self.addresses.values().map(|r| r.last_failure).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.addresses.retain(|_, r| r.last_failure > cut);
        }
    }

    fn conclude(&mut self, addr: IpAddr) -> Option<&mut Record> {
        let r = self.addresses.get_mut(&addr)?;
        r.pending = r.pending.saturating_sub(1);
        Some(r)
    }

    /// An attempt from `addr` failed.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        self.make_room(addr, now);
        let r = match self.conclude(addr) {
            Some(r) => r,
            None => self.addresses.entry(addr).or_insert(Record {
                failures: 0,
                pending: 0,
                next_turn: now,
                last_failure: now,
            }),
        };
        r.failures = r.failures.saturating_add(1);
        r.last_failure = now;
    }

    /// An attempt from `addr` succeeded. Its address's failures stand
    /// (they age out): a success is no excuse for them, or anyone with one
    /// account (or anonymous access) could interleave logins with guesses.
    pub fn succeeded(&mut self, addr: IpAddr) {
        self.abandoned(addr);
    }

    /// An attempt from `addr` ended without an outcome (its connection
    /// went away while it waited).
    pub fn abandoned(&mut self, addr: IpAddr) {
        if let Some(r) = self.conclude(addr) {
            if r.pending == 0 && r.failures == 0 {
                self.addresses.remove(&addr);
            }
        }
    }

    /// Forget addresses quiet for long.
    pub fn tidy(&mut self, now: Instant) {
        self.addresses.retain(|_, r| {
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
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_wait: Duration::from_secs(10),
        }
    }

    #[test]
    fn free_failures_then_spaced_then_refused() {
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut t = Throttle::new(config());
        for _ in 0..3 {
            assert_eq!(t.admit(a, t0), Admission::Now);
            t.failed(a, t0);
        }
        // Spaced now, the spacing doubling with each failure to come.
        assert_eq!(t.admit(a, t0), Admission::Now);
        assert_eq!(t.admit(a, t0), Admission::After(Duration::from_secs(1)));
        assert_eq!(t.admit(a, t0), Admission::After(Duration::from_secs(3)));
        // Another address is not slowed.
        assert_eq!(t.admit(b, t0), Admission::Now);
        assert_eq!(t.admit(a, t0), Admission::After(Duration::from_secs(7)));
        assert_eq!(
            t.admit(a, t0),
            Admission::Refuse,
            "past the connect timeout"
        );
        // Successes don't clear the failures: interleaving them with
        // guesses gains nothing.
        t.succeeded(a);
        for _ in 0..3 {
            t.abandoned(a);
        }
        assert_eq!(t.admit(a, t0), Admission::Refuse);
        // They age out.
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        t.tidy(later);
        assert_eq!(t.admit(a, later), Admission::Now);
    }

    #[test]
    fn simultaneous_attempts_count_before_they_fail() {
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let mut t = Throttle::new(config());
        // A burst: only the free ones go at once, whatever their outcome
        // will be.
        let now: Vec<Admission> = (0..10).map(|_| t.admit(a, t0)).collect();
        assert_eq!(now.iter().filter(|x| **x == Admission::Now).count(), 4);
        assert!(now.contains(&Admission::Refuse));
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(config());
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(t.len() <= MAX_ADDRESSES, "{}", t.len());
        t.tidy(t0 + FORGET_AFTER * 2);
        assert!(t.is_empty());
    }
}
