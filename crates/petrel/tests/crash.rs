//! The promise an acknowledgement makes, kept across SIGKILL: publishers
//! send numbered QoS 1 and QoS 2 messages to subscribers with persistent
//! sessions while the broker binary is killed at random moments, again and
//! again. After the last restart, every message whose publish was
//! acknowledged has reached every subscriber: QoS 1 at least once, QoS 2
//! exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, start_on_data};
use futures::stream::{FuturesUnordered, StreamExt};
use petrel_client::{connect, ConnectOptions, Message, Protocol, QoS, TopicName};

const MESSAGES: u32 = 2000;
const KILLS: usize = 8;
const SUBSCRIBERS: usize = 2;

/// A client that keeps its session and comes back quickly.
fn options(port: u16, proto: Protocol, id: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", port, id).protocol(proto);
    o.clean_start = false;
    o.session_expiry = 3600;
    o.reconnect.min_backoff = Duration::from_millis(20);
    o.reconnect.max_backoff = Duration::from_millis(200);
    o.connect_timeout = Duration::from_secs(3);
    o
}

/// Numbers 0..n from a seed, cheaply (no dependency for one test).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn qos_of(i: u32) -> QoS {
    if i.is_multiple_of(2) {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_repeated_sigkill() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let data =
            std::env::temp_dir().join(format!("petrel-crash-{proto:?}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let port = free_port();
        let mut broker = start_on_data(&data, port);
        let tag = format!("{proto:?}");
        // Subscribers, each counting what arrives by number.
        let mut inboxes = Vec::new();
        let mut subscribers = Vec::new();
        for s in 0..SUBSCRIBERS {
            let (sub, inbox) = connect(options(port, proto, &format!("crash-sub-{s}")))
                .await
                .unwrap();
            sub.subscribe("crash/#", QoS::ExactlyOnce).await.unwrap();
            subscribers.push(sub);
            inboxes.push(inbox);
        }
        let seen: Arc<Vec<Mutex<BTreeMap<u32, u32>>>> =
            Arc::new((0..SUBSCRIBERS).map(|_| Mutex::default()).collect());
        let readers: Vec<_> = inboxes
            .into_iter()
            .enumerate()
            .map(|(s, mut inbox)| {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some(m) = inbox.recv().await {
                        let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                        *seen[s].lock().unwrap().entry(i).or_default() += 1;
                    }
                })
            })
            .collect();
        // The publisher: 16 in flight; what was acknowledged is recorded.
        let (publ, _) = connect(options(port, proto, "crash-pub")).await.unwrap();
        let acked: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
        let publisher = tokio::spawn({
            let acked = acked.clone();
            async move {
                let mut inflight = FuturesUnordered::new();
                for i in 0..MESSAGES {
                    if inflight.len() >= 16 {
                        if let Some((i, Ok(ack))) = inflight.next().await {
                            let ack: petrel_client::Ack = ack;
                            assert!(!ack.reason_code.is_error(), "{ack:?}");
                            acked.lock().unwrap().insert(i);
                        }
                    }
                    let m = Message::new(
                        TopicName::try_from(format!("crash/{i}").as_str()).unwrap(),
                        Bytes::from(i.to_be_bytes().to_vec()),
                        qos_of(i),
                    );
                    let publ = publ.clone();
                    inflight.push(async move { (i, publ.publish(m).await) });
                    // A steady stream, so that kills land mid-flight.
                    if i.is_multiple_of(16) {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                while let Some((i, r)) = inflight.next().await {
                    if r.is_ok() {
                        acked.lock().unwrap().insert(i);
                    }
                }
                publ
            }
        });
        // The killer: SIGKILL at random moments, then start again on the
        // same data directory.
        let mut kills = 0;
        while kills < KILLS && !publisher.is_finished() {
            tokio::time::sleep(Duration::from_millis(50 + rng.below(250))).await;
            broker.0.kill().unwrap();
            broker.0.wait().unwrap();
            kills += 1;
            broker = start_on_data(&data, port);
        }
        let publ = tokio::time::timeout(Duration::from_secs(60), publisher)
            .await
            .unwrap_or_else(|_| panic!("{tag}: publishes never all acknowledged"))
            .unwrap();
        let acked: BTreeSet<u32> = acked.lock().unwrap().clone();
        assert_eq!(
            acked.len(),
            MESSAGES as usize,
            "{tag}: every publish is acknowledged in the end"
        );
        // Every subscriber gets every acknowledged message.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let missing: Vec<(usize, u32)> = (0..SUBSCRIBERS)
                .flat_map(|s| {
                    let got = seen[s].lock().unwrap();
                    acked
                        .iter()
                        .filter(|i| !got.contains_key(i))
                        .map(|i| (s, *i))
                        .collect::<Vec<_>>()
                })
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tag}: after {kills} kills, acknowledged messages lost: {:?}",
                &missing[..missing.len().min(20)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Late repeats may still come (QoS 1): let them, then check QoS 2.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for s in 0..SUBSCRIBERS {
            let got = seen[s].lock().unwrap();
            let twice: Vec<_> = got
                .iter()
                .filter(|(i, n)| qos_of(**i) == QoS::ExactlyOnce && **n > 1)
                .collect();
            assert!(twice.is_empty(), "{tag}: QoS 2 delivered twice: {twice:?}");
        }
        let repeats: u32 = (0..SUBSCRIBERS)
            .map(|s| seen[s].lock().unwrap().values().map(|n| n - 1).sum::<u32>())
            .sum();
        eprintln!(
            "crash test {tag}: {kills} SIGKILLs survived, {} acknowledged messages checked at {SUBSCRIBERS} subscribers, {repeats} QoS 1 repeats, no loss, no QoS 2 duplicate",
            acked.len()
        );
        assert!(kills > 0);
        drop(publ);
        drop(subscribers);
        for r in readers {
            r.abort();
        }
        drop(broker);
        let _ = std::fs::remove_dir_all(&data);
    }
}
