//! Who may open a connection: per source address, a rate (a token bucket)
//! and a cap on open connections, and, over every address and per address,
//! a cap on connections that have not finished CONNECT. So one address's
//! flood of sockets that never speak MQTT can't fill `max_connections` and
//! lock everyone else out. Loopback addresses are exempt unless
//! `limits.limit_loopback` says otherwise.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;

/// Addresses tracked at which idle ones are first swept out.
const SWEEP_AT: usize = 4096;
use crate::core::lock;

/// What one source address holds.
#[derive(Debug)]
struct Source {
    open: u32,
    pending: u32,
    /// Connections it may open now (the bucket), refilled with time.
    tokens: f64,
    refilled: Instant,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its address opens connections faster than `connection_rate`.
    Rate,
    /// Its address holds `max_connections_per_address`.
    PerAddress,
    /// Its address holds `max_pending_per_address` unfinished CONNECTs.
    PendingPerAddress,
    /// `max_pending_connections` unfinished CONNECTs over every address.
    Pending,
}

impl Refusal {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Rate => "connection rate of its address exceeded",
            Self::PerAddress => "max_connections_per_address reached",
            Self::PendingPerAddress => "max_pending_per_address reached",
            Self::Pending => "max_pending_connections reached",
        }
    }
}

/// The limits, copied from the configuration at start.
#[derive(Debug, Clone)]
struct Rules {
    per_address: u32,
    pending_per_address: u32,
    pending: usize,
    rate: f64,
    burst: f64,
    loopback: bool,
}

/// Admission state for a server.
#[derive(Debug)]
pub(crate) struct Admission {
    sources: Mutex<HashMap<IpAddr, Source>>,
    /// Addresses tracked at which idle ones are swept out next.
    next_sweep: AtomicUsize,
    pending: AtomicUsize,
    rules: Rules,
}

/// A connection's place in the admission counts, given back when it is
/// dropped; [`SourceGuard::connected`] once its CONNECT is accepted.
#[derive(Debug)]
pub(crate) struct SourceGuard {
    admission: Arc<Admission>,
    /// The address it is counted against (none: exempt).
    ip: Option<IpAddr>,
    pending: bool,
}

fn cap(n: usize) -> u32 {
    if n == 0 {
        u32::MAX
    } else {
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl Admission {
    pub(crate) fn new(l: &Limits) -> Arc<Self> {
        Arc::new(Self {
            sources: Mutex::new(HashMap::new()),
            next_sweep: AtomicUsize::new(SWEEP_AT),
            pending: AtomicUsize::new(0),
            rules: Rules {
                per_address: cap(l.max_connections_per_address),
                pending_per_address: cap(l.max_pending_per_address),
                pending: if l.max_pending_connections == 0 {
                    usize::MAX
                } else {
                    l.max_pending_connections
                },
                rate: l.connection_rate as f64,
                burst: l.connection_burst.max(1) as f64,
                loopback: l.limit_loopback,
            },
        })
    }

    /// Admit a connection from `ip` at `now`, or say why not.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<SourceGuard, Refusal> {
        let r = &self.rules;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= r.pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Pending);
        }
        let counted = ip.filter(|ip| r.loopback || !ip.is_loopback());
        if let Some(ip) = counted {
            let mut sources = lock(&self.sources);
            if sources.len() >= self.next_sweep.load(Ordering::Relaxed) {
                // Amortised: the next sweep waits until the map has doubled.
                self.sweep(&mut sources, now);
                self.next_sweep
                    .store((2 * sources.len()).max(SWEEP_AT), Ordering::Relaxed);
            }
            let s = sources.entry(ip).or_insert(Source {
                open: 0,
                pending: 0,
                tokens: r.burst,
                refilled: now,
            });
            if r.rate > 0.0 {
                let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
                s.tokens = (s.tokens + elapsed * r.rate).min(r.burst);
                s.refilled = now;
            }
            let refusal = if s.open >= r.per_address {
                Some(Refusal::PerAddress)
            } else if s.pending >= r.pending_per_address {
                Some(Refusal::PendingPerAddress)
            } else if r.rate > 0.0 && s.tokens < 1.0 {
                Some(Refusal::Rate)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                let idle = s.open == 0;
                drop(sources);
                if idle {
                    self.tidy(ip, now);
                }
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(refusal);
            }
            if r.rate > 0.0 {
                s.tokens -= 1.0;
            }
            s.open += 1;
            s.pending += 1;
        }
        Ok(SourceGuard {
            admission: self.clone(),
            ip: counted,
            pending: true,
        })
    }

    /// Whether `s` holds nothing open and its bucket is full again at
    /// `now`: then it is as if it had never been seen, and can go.
    fn forgettable(&self, s: &Source, now: Instant) -> bool {
        if s.open > 0 {
            return false;
        }
        if self.rules.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens + elapsed * self.rules.rate >= self.rules.burst
    }

    /// Forget an address with nothing open once its bucket is full again.
    fn tidy(&self, ip: IpAddr, now: Instant) {
        let mut sources = lock(&self.sources);
        if sources.get(&ip).is_some_and(|s| self.forgettable(s, now)) {
            sources.remove(&ip);
        }
    }

    /// Forget every forgettable address: an address that closed with its
    /// bucket not yet full stays until it is full, so the map holds the
    /// addresses of the last `burst / rate` seconds, not of all time.
    fn sweep(&self, sources: &mut HashMap<IpAddr, Source>, now: Instant) {
        sources.retain(|_, s| !self.forgettable(s, now));
    }

    /// Addresses tracked now (for tests and metrics).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.sources).len()
    }
}

impl SourceGuard {
    /// The connection's CONNECT was accepted: it no longer counts as
    /// pending.
    pub(crate) fn connected(&mut self) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        self.admission.pending.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            if let Some(s) = lock(&self.admission.sources).get_mut(&ip) {
                s.pending = s.pending.saturating_sub(1);
            }
        }
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        self.connected();
        let Some(ip) = self.ip else { return };
        let idle = {
            let mut sources = lock(&self.admission.sources);
            match sources.get_mut(&ip) {
                Some(s) => {
                    s.open = s.open.saturating_sub(1);
                    s.open == 0
                }
                None => false,
            }
        };
        if idle {
            self.admission.tidy(ip, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_connections_per_address: 3,
            max_pending_per_address: 2,
            max_pending_connections: 4,
            connection_rate: 10,
            connection_burst: 5,
            limit_loopback: false,
            ..Limits::default()
        }
    }

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn pending_and_open_caps_per_address_and_overall() {
        let a = Admission::new(&limits());
        let t = Instant::now();
        let mut g1 = a.admit(ip(1), t).unwrap();
        let _g2 = a.admit(ip(1), t).unwrap();
        // Two unfinished CONNECTs from 10.0.0.1: a third waits its turn.
        assert_eq!(a.admit(ip(1), t).unwrap_err(), Refusal::PendingPerAddress);
        g1.connected();
        let _g3 = a.admit(ip(1), t).unwrap();
        // Three open: the cap.
        assert_eq!(a.admit(ip(1), t).unwrap_err(), Refusal::PerAddress);
        // Other addresses are not held back by 10.0.0.1...
        let _g4 = a.admit(ip(2), t).unwrap();
        let _g5 = a.admit(ip(3), t).unwrap();
        // ...until unfinished CONNECTs fill the broker-wide cap (4: g2, g3,
        // g4, g5).
        assert_eq!(a.admit(ip(4), t).unwrap_err(), Refusal::Pending);
        drop(g1);
        drop(_g2);
        // Pending back to 3: room again.
        let _g6 = a.admit(ip(4), t).unwrap();
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limits {
            max_connections_per_address: 0,
            max_pending_per_address: 0,
            max_pending_connections: 0,
            ..limits()
        };
        let a = Admission::new(&l);
        let t = Instant::now();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(a.admit(ip(1), t).unwrap());
        }
        assert_eq!(a.admit(ip(1), t).unwrap_err(), Refusal::Rate);
        // 10 a second: one more after 100 ms, not two.
        let t1 = t + Duration::from_millis(100);
        held.push(a.admit(ip(1), t1).unwrap());
        assert_eq!(a.admit(ip(1), t1).unwrap_err(), Refusal::Rate);
        // Another address has its own bucket.
        held.push(a.admit(ip(2), t1).unwrap());
    }

    #[test]
    fn loopback_is_exempt_unless_configured_and_idle_addresses_are_forgotten() {
        let a = Admission::new(&Limits {
            connection_rate: 0,
            ..limits()
        });
        let t = Instant::now();
        let local = Some(IpAddr::from([127, 0, 0, 1]));
        let many: Vec<_> = (0..3).map(|_| a.admit(local, t).unwrap()).collect();
        assert_eq!(a.tracked(), 0);
        drop(many);
        let strict = Admission::new(&Limits {
            limit_loopback: true,
            connection_rate: 0,
            ..limits()
        });
        let _g1 = strict.admit(local, t).unwrap();
        let _g2 = strict.admit(local, t).unwrap();
        assert_eq!(
            strict.admit(local, t).unwrap_err(),
            Refusal::PendingPerAddress
        );
        // An address with nothing open is dropped from the map.
        let g = a.admit(ip(9), t).unwrap();
        assert_eq!(a.tracked(), 1);
        drop(g);
        assert_eq!(a.tracked(), 0);
    }
}
