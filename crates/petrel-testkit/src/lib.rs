//! What the workspace's tests share.
//!
//! A test that starts a broker as a process (or a cluster of them) has to
//! name its ports in advance. Asking the kernel for a free one (binding
//! port 0) and letting it go races: the kernel hands the same port to the
//! next `bind(0)` or to an outgoing connection's local end, anywhere in the
//! machine, and a node then fails with "address in use", or a readiness
//! check that only connects talks to someone else's listener. The ports
//! here come from outside the kernel's ephemeral range, which it never
//! hands out by itself, and no two calls in one process return the same
//! one. (Two test processes running at once could still pick the same
//! port; `cargo test` runs its test binaries one after another.)
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out (well above the registered services most
/// machines run).
const LOWEST: u32 = 10_000;

/// The fewest ports a range may have to be used.
const ENOUGH: u32 = 1_000;

/// A port on 127.0.0.1 for a listener a test starts (TCP and UDP, for
/// QUIC): free when returned, outside the kernel's ephemeral range, and
/// not returned before by this process (until it has handed out every
/// port in the range, then round again).
///
/// Processes start at different places (by process id), so one run does
/// not begin where the last one did.
///
/// # Panics
///
/// When every port in the range is taken.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = range();
    let start = std::process::id().wrapping_mul(7_919) % (high - low);
    next_free(low, high, start, &NEXT)
}

/// The first bindable port in `[low, high)` from `start` places in,
/// counting on from `next` (each port tried is used up).
fn next_free(low: u32, high: u32, start: u32, next: &AtomicU32) -> u16 {
    let span = high - low;
    for _ in 0..span {
        let n = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = low + (start + n) % span;
        if let Ok(port) = u16::try_from(port) {
            if bindable(port) {
                return port;
            }
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {high}");
}

/// `[low, high)`: below the ephemeral range (from [`LOWEST`]), or above it
/// where it starts too low to leave room; on a machine with no room on
/// either side (or not Linux, where it is not read), below the IANA
/// dynamic range's start, 49152.
fn range() -> (u32, u32) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        });
    match ephemeral {
        Some((first, _)) if first >= LOWEST + ENOUGH => (LOWEST, first),
        Some((_, last)) if last + 1 + ENOUGH <= 65_536 => (last.max(LOWEST) + 1, 65_536),
        _ => (LOWEST, 49_152),
    }
}

fn bindable(port: u16) -> bool {
    let at = (Ipv4Addr::LOCALHOST, port);
    TcpListener::bind(at).is_ok() && UdpSocket::bind(at).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (low, high) = range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        for &p in &ports {
            assert!((low..high).contains(&u32::from(p)), "{p}");
        }
        // Each can be listened on (the control: a port held is refused).
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).unwrap();
        assert!(!bindable(ports[0]));
        drop(held);
        assert!(bindable(ports[0]));
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let (low, high) = range();
        // A start of this test's own, away from where free_port begins.
        let span = high - low;
        let start = (std::process::id().wrapping_mul(7_919) % span + span / 2) % span;
        let first = next_free(low, high, start, &AtomicU32::new(0));
        // The control: with nothing held, the same count gives it again.
        assert_eq!(next_free(low, high, start, &AtomicU32::new(0)), first);
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, first)).unwrap();
        let got = next_free(low, high, start, &AtomicU32::new(0));
        assert_ne!(got, first);
        drop(held);
    }
}
