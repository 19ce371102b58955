//! Matching a topic against the subscription trie at 10 thousand and at
//! 1 million subscriptions, where only a handful match: the cost must follow
//! the topic's depth and its matches, not the number of subscriptions.
//!
//! ```text
//! cargo bench -p petrel-benches --bench topic_match
//! ```
//!
//! The subscriptions are spread over 1,000 sites: per device an exact
//! telemetry filter, and for every tenth device `+` and `#` filters held by
//! three more subscribers. The topic matched is one device's telemetry,
//! which matches four subscriptions.

use std::time::Duration;

use criterion::{black_box, Criterion};
use petrel_broker::{Matched, SubscriptionTree};
use petrel_codec::TopicFilter;

fn build(n: u32) -> SubscriptionTree<u32, u8> {
    let mut tree = SubscriptionTree::new();
    for i in 0..n {
        // Subscribers 10k..10k+9 share device 10k's wildcard filters.
        let device = if i % 10 < 7 { i } else { i - i % 10 };
        let site = device % 1000;
        let filter = match i % 10 {
            0..=6 => format!("site/{site}/device/{device}/telemetry"),
            7 | 8 => format!("site/{site}/device/{device}/+"),
            _ => format!("site/{site}/device/{device}/#"),
        };
        tree.insert(&TopicFilter::try_from(filter).expect("valid"), i, 0);
    }
    tree
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for n in [10_000u32, 1_000_000] {
        let tree = build(n);
        // Device 7000 of site 0: its telemetry filter (subscriber 7000), the
        // `+` filter (subscribers 7007 and 7008) and the `#` filter (7009).
        let topic = "site/0/device/7000/telemetry";
        let mut count = 0;
        tree.matches(topic, |_| count += 1);
        assert_eq!(count, 4, "{n} subscriptions");
        group.bench_function(format!("{n}_subscriptions"), |b| {
            b.iter(|| {
                let mut hits = 0u32;
                tree.matches(black_box(topic), |m| {
                    if let Matched::Direct { key, .. } = m {
                        hits = hits.wrapping_add(*key);
                    }
                });
                hits
            })
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
