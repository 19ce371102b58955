//! Decoding a PUBLISH allocates nothing beyond the frame itself.
//!
//! A counting global allocator (per thread, so other tests can't disturb it)
//! watches the decoder. The only allocation decoding ever makes is the one
//! `bytes` makes the first time a `BytesMut` is split — turning the read
//! buffer into a shared, reference-counted one — and that is the frame's own
//! bookkeeping, made once per read buffer, not once per packet.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use petrel_codec::*;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a const-initialised thread-local that needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn v311_publish() -> Packet {
    let mut p = Publish::new(
        TopicName::from_static("sensors/building-7/floor-3/temperature"),
        Bytes::from(vec![0x42; 64]),
    );
    p.qos = QosPid::AtLeastOnce(PacketId::new(7).unwrap());
    Packet::Publish(p)
}

fn v5_publish() -> Packet {
    let mut p = Publish::new(
        TopicName::from_static("sensors/building-7/floor-3/temperature"),
        Bytes::from(vec![0x42; 16 * 1024]),
    );
    p.qos = QosPid::ExactlyOnce(PacketId::new(9).unwrap());
    let pr = &mut p.properties;
    pr.set_payload_format_indicator(Some(true));
    pr.set_message_expiry_interval(Some(3600));
    pr.set_content_type(Some(MqttString::from_static("application/json")));
    pr.set_response_topic(Some(TopicName::from_static("replies/7")));
    pr.set_correlation_data(Some(Bytes::from_static(b"req-42")));
    pr.set_topic_alias(std::num::NonZeroU16::new(3));
    for i in 0..8 {
        pr.push_user_property(UserProperty::new(
            MqttString::try_from(format!("key-{i}")).unwrap(),
            MqttString::from_static("value"),
        ));
    }
    pr.push_subscription_identifier(SubscriptionId::new(1).unwrap());
    pr.push_subscription_identifier(SubscriptionId::new(300_000).unwrap());
    Packet::Publish(p)
}

fn check(protocol: Protocol, packet: Packet) {
    const N: usize = 100;
    let one = packet.to_bytes(protocol).unwrap();
    let mut buf = BytesMut::with_capacity(one.len() * N);
    for _ in 0..N {
        buf.extend_from_slice(&one);
    }
    let limits = Limits {
        max_packet_size: 1 << 20,
        ..Limits::default()
    };

    // The first split makes the read buffer shared: one allocation, once.
    let before = allocations();
    let first = Packet::decode(&mut buf, Some(protocol), &limits)
        .unwrap()
        .unwrap();
    assert!(
        allocations() - before <= 1,
        "first decode allocated {}",
        allocations() - before
    );
    assert_eq!(first, packet);

    let mut decoded = Vec::with_capacity(N);
    let before = allocations();
    for _ in 1..N {
        decoded.push(
            Packet::decode(&mut buf, Some(protocol), &limits)
                .unwrap()
                .unwrap(),
        );
    }
    // Reading every field, repeatable properties included, allocates nothing either.
    let mut seen = 0usize;
    for p in &decoded {
        let Packet::Publish(p) = p else { panic!() };
        seen += p.topic.len() + p.payload.len();
        for u in p.properties.user_properties().iter() {
            seen += u.key.len() + u.value.len();
        }
        for id in p.properties.subscription_identifiers().iter() {
            seen += id.get() as usize;
        }
    }
    let spent = allocations() - before;
    assert_eq!(
        spent,
        0,
        "decoding {} PUBLISH packets allocated {spent} times",
        N - 1
    );
    assert!(seen > 0);
    assert!(buf.is_empty());
    assert_eq!(decoded[N - 2], packet);
}

#[test]
fn decoding_publish_allocates_nothing_beyond_the_frame() {
    check(Protocol::V3_1_1, v311_publish());
    check(Protocol::V3_1, v311_publish());
    check(Protocol::V5, v5_publish());
}
