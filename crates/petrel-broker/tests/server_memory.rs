//! What a connection costs the broker in memory, counted by a global
//! allocator that tallies only the broker's own thread: a connection that
//! has connected and subscribed and is waiting for its next packet (the
//! peak of a connection storm), and the same connection hibernated.
//!
//! The bounds sit a little above what the broker holds today (about 1.8 KB
//! awake and 0.8 KB asleep, this allocator's count; RSS adds the allocator's
//! rounding), so a change that makes every connection keep a buffer again,
//! or that makes a connection's task or its future grow back, fails here:
//! the runtime's cell for a TCP connection's future is 384 bytes, and a
//! timer of its own (112 bytes) would make it 512; the task is 632 bytes,
//! and 9 more would take it from a 640-byte allocation to a 768-byte one. Each figure is the growth from the measured connections
//! alone, so the broker's fixed costs and its tables' growth are left out.
#![allow(missing_docs, unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use petrel_codec::{Protocol, QoS};
use support::*;

thread_local!(static COUNTED: Cell<bool> = const { Cell::new(false) });
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// The system allocator, counting the bytes live from the threads that set
/// `COUNTED` (frees from other threads of what these allocated are rare:
/// the broker runs on a runtime of its own).
struct Counting;

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed on unchanged to the system allocator; the
// counting touches only an atomic and a thread-local flag.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Connections before the measured ones (the broker's tables grow to a
/// size that takes the measured ones without growing again: 240 entries
/// make a table with room for 448), and the measured ones. Both small
/// enough for a test process's default limit of 1,024 open files.
const WARM: usize = 240;
const MORE: usize = 150;

/// Connect and subscribe `count` clients, kept open in `keep`.
async fn connect(addr: std::net::SocketAddr, keep: &mut Vec<Raw>, tag: &str, count: usize) {
    for i in 0..count {
        let mut c = Raw::connect(addr, Protocol::V3_1_1, &format!("{tag}{i}")).await;
        c.subscribe(&format!("{tag}/{i}"), QoS::AtMostOnce).await;
        keep.push(c);
    }
}

fn per_connection(since: i64) -> f64 {
    (LIVE_BYTES.load(Ordering::Relaxed) - since) as f64 / MORE as f64
}

#[test]
fn a_connection_between_packets_holds_no_buffers_and_a_hibernated_one_less() {
    let (tx, rx) = std::sync::mpsc::channel();
    // The broker on a thread of its own, whose allocations alone count.
    std::thread::spawn(move || {
        COUNTED.with(|c| c.set(true));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config = config();
            config.limits.hibernate_after = 2;
            let tb = start_with(config).await;
            tx.send(tb.addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addr = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (awake, asleep) = rt.block_on(async move {
        let mut keep = Vec::new();
        connect(addr, &mut keep, "w", WARM).await;
        // The warm-up connections hibernate before the count starts.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let since = LIVE_BYTES.load(Ordering::Relaxed);
        connect(addr, &mut keep, "m", MORE).await;
        // Well before `hibernate_after`: every one awake, between packets.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let awake = per_connection(since);
        // Past it: every one hibernated.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        (awake, per_connection(since))
    });
    eprintln!("bytes per connection: awake {awake:.0}, hibernated {asleep:.0}");
    // Control: the count sees the broker's memory at all.
    assert!(
        awake > 1_000.0,
        "counted only {awake:.0} bytes for a live connection"
    );
    assert!(
        awake < 1_860.0,
        "a connection waiting for its next packet holds {awake:.0} bytes"
    );
    assert!(
        asleep < 850.0,
        "a hibernated connection holds {asleep:.0} bytes"
    );
}
