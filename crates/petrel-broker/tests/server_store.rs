//! Acknowledgements and the durable store, over real sockets: a PUBACK
//! waits until what it acknowledges is durable, keeps the order of the
//! PUBLISHes, and says so when the store fails.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use petrel_broker::{Broker, Commit, MemoryStore, Op, Store, Table, Ticket};
use petrel_codec::{Packet, Protocol, Publish, QosPid, ReasonCode};
use support::{config, persistent, pid, serve_broker, topic, Raw};

/// A QoS 1 PUBLISH with packet id `id`, sent without waiting for its PUBACK.
async fn send(c: &mut Raw, t: &str, id: u16, retain: bool) {
    let mut p = Publish::new(topic(t), Bytes::from_static(b"v"));
    p.qos = QosPid::AtLeastOnce(pid(id));
    p.retain = retain;
    c.send(Packet::Publish(p)).await;
}

/// A store that keeps each commit waiting until the test completes it, as
/// an `fsync` store waits for its sync.
#[derive(Debug, Default)]
struct Held {
    inner: MemoryStore,
    tickets: Mutex<Vec<Arc<Ticket>>>,
}

impl Store for Held {
    fn commit(&self, ops: Vec<Op>) -> std::io::Result<Commit> {
        self.inner.commit(ops)?;
        let t = Arc::new(Ticket::default());
        self.tickets.lock().unwrap().push(t.clone());
        Ok(Commit::waiting(t))
    }

    fn scan(&self, table: Table) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan(table)
    }

    fn stored_bytes(&self) -> u64 {
        self.inner.stored_bytes()
    }
}

impl Held {
    fn complete(&self, result: Result<(), String>) {
        for t in self.tickets.lock().unwrap().drain(..) {
            t.complete(result.clone());
        }
    }

    async fn wait_for_commit(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.tickets.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn broker_on(store: Arc<Held>) -> support::TestBroker {
    let broker = Broker::builder(config()).store(store).build().unwrap();
    serve_broker(broker).await
}

#[tokio::test]
async fn a_puback_waits_for_the_store_and_keeps_the_order_of_publishes() {
    let store = Arc::new(Held::default());
    let b = broker_on(store.clone()).await;
    let mut p = Raw::connect(b.addr, Protocol::V5, "p").await;
    // A retained message: its PUBACK waits for the store.
    send(&mut p, "r/1", 1, true).await;
    store.wait_for_commit().await;
    // A plain one after it: nothing to store, but its PUBACK comes after.
    send(&mut p, "plain", 2, false).await;
    // Not acknowledged before the store had it.
    p.silent(Duration::from_millis(300)).await;
    store.complete(Ok(()));
    let mut ids = Vec::new();
    for _ in 0..2 {
        match p.recv().await {
            Some(Packet::PubAck(a)) => ids.push(a.packet_id.get()),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    assert_eq!(ids, vec![1, 2], "acknowledged out of order");
}

#[tokio::test]
async fn a_failed_store_write_is_an_error_in_5_0_and_no_ack_in_3_1_1() {
    let store = Arc::new(Held::default());
    let b = broker_on(store.clone()).await;
    let mut v5 = Raw::connect(b.addr, Protocol::V5, "v5").await;
    send(&mut v5, "r/5", 1, true).await;
    store.wait_for_commit().await;
    store.complete(Err("disk gone".into()));
    match v5.recv().await {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR)
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut v3 = Raw::connect(b.addr, Protocol::V3_1_1, "v3").await;
    send(&mut v3, "r/3", 1, true).await;
    store.wait_for_commit().await;
    store.complete(Err("disk gone".into()));
    // 3.1.1 can only say "taken": the connection closes instead.
    assert!(v3.recv().await.is_none(), "3.1.1 got an answer");
    // Positive control: a write that succeeds is acknowledged as taken.
    let mut ok = Raw::connect(b.addr, Protocol::V3_1_1, "ok").await;
    send(&mut ok, "r/ok", 1, true).await;
    store.wait_for_commit().await;
    store.complete(Ok(()));
    assert!(matches!(ok.recv().await, Some(Packet::PubAck(_))));
}

/// A store shared by brokers one after another, where a "crash" freezes
/// what the old broker had written: after it, that broker's writes are
/// lost, as a killed process's would be.
#[derive(Debug)]
struct Crashable {
    data: Arc<MemoryStore>,
    frozen: std::sync::atomic::AtomicBool,
}

impl Store for Crashable {
    fn commit(&self, ops: Vec<Op>) -> std::io::Result<Commit> {
        if !self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            self.data.commit(ops)?;
        }
        Ok(Commit::done())
    }

    fn scan(&self, table: Table) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.data.scan(table)
    }

    fn stored_bytes(&self) -> u64 {
        self.data.stored_bytes()
    }
}

/// Brokers that share one store and can be "killed".
struct Lives {
    data: Arc<MemoryStore>,
    current: Option<(Arc<Crashable>, support::TestBroker)>,
}

impl Lives {
    fn new() -> Self {
        Self {
            data: Arc::new(MemoryStore::new()),
            current: None,
        }
    }

    /// Start a broker on the store; its address.
    async fn start(&mut self) -> std::net::SocketAddr {
        let store = Arc::new(Crashable {
            data: self.data.clone(),
            frozen: std::sync::atomic::AtomicBool::new(false),
        });
        let broker = Broker::builder(config())
            .store(store.clone())
            .build()
            .unwrap();
        let b = serve_broker(broker).await;
        let addr = b.addr;
        self.current = Some((store, b));
        addr
    }

    /// Stop it `how`.
    async fn end(&mut self, how: Ending) {
        match how {
            Ending::Kill => self.kill(),
            Ending::Graceful => self.stop().await,
        }
    }

    /// Shut it down gracefully: connections are closed and handed back,
    /// everything it writes counts.
    async fn stop(&mut self) {
        if let Some((_, b)) = self.current.take() {
            b.broker.shutdown();
            tokio::time::timeout(Duration::from_secs(10), b.task)
                .await
                .expect("the broker did not stop")
                .unwrap();
        }
    }

    /// Kill it: nothing it writes from now on counts, and it stops.
    fn kill(&mut self) {
        if let Some((store, b)) = self.current.take() {
            store
                .frozen
                .store(true, std::sync::atomic::Ordering::SeqCst);
            b.broker.shutdown();
            b.task.abort();
        }
    }
}

/// How a broker's life ends in a restart test.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// As SIGKILL would: nothing written after this moment counts.
    Kill,
    /// A graceful shutdown.
    Graceful,
}

const ENDINGS: [Ending; 2] = [Ending::Kill, Ending::Graceful];

#[tokio::test]
async fn an_offline_queue_and_subscriptions_survive_a_crash_and_a_restart() {
    for (proto, how) in [Protocol::V3_1_1, Protocol::V5]
        .into_iter()
        .flat_map(|p| ENDINGS.map(|h| (p, h)))
    {
        let mut lives = Lives::new();
        let addr = lives.start().await;
        let (mut s, ack) = Raw::connect_with(addr, proto, "sub", persistent(proto)).await;
        assert!(!ack.session_present);
        s.subscribe("t/#", petrel_codec::QoS::ExactlyOnce).await;
        s.disconnect().await;
        let mut p = Raw::connect(addr, proto, "pub").await;
        p.publish("t/1", b"one", petrel_codec::QoS::AtLeastOnce, false)
            .await;
        p.publish("t/2", b"two", petrel_codec::QoS::ExactlyOnce, false)
            .await;
        p.publish("t/0", b"zero", petrel_codec::QoS::AtMostOnce, false)
            .await;
        lives.end(how).await;
        let addr = lives.start().await;
        let (mut s, ack) = Raw::connect_with(addr, proto, "sub", persistent(proto)).await;
        assert!(
            ack.session_present,
            "{proto:?} {how:?}: the session did not come back"
        );
        let got: Vec<(Vec<u8>, petrel_codec::QoS)> =
            vec![s.recv_publish().await, s.recv_publish().await]
                .into_iter()
                .map(|m| (m.payload.to_vec(), m.qos.qos()))
                .collect();
        assert_eq!(
            got,
            vec![
                (b"one".to_vec(), petrel_codec::QoS::AtLeastOnce),
                (b"two".to_vec(), petrel_codec::QoS::ExactlyOnce)
            ],
            "{proto:?}"
        );
        // Nothing more (the QoS 0 message was never promised), and the
        // subscription is there: a new message arrives (positive control).
        assert!(s.no_publish(Duration::from_millis(300)).await);
        let mut p = Raw::connect(addr, proto, "pub2").await;
        p.publish("t/3", b"three", petrel_codec::QoS::AtLeastOnce, false)
            .await;
        assert_eq!(&s.recv_publish().await.payload[..], b"three");
        // Delivered ones are gone for good: after another crash, nothing
        // comes again.
        s.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        lives.end(how).await;
        let addr = lives.start().await;
        let (mut s, ack) = Raw::connect_with(addr, proto, "sub", persistent(proto)).await;
        assert!(ack.session_present);
        assert!(
            s.no_publish(Duration::from_millis(300)).await,
            "{proto:?} {how:?}: delivered again"
        );
        lives.kill();
    }
}

#[tokio::test]
async fn qos2_in_flight_both_ways_is_exactly_once_across_a_crash_and_a_restart() {
    for how in ENDINGS {
        qos2_in_flight_both_ways_is_exactly_once_across_a_crash_and_a_restart_case(how).await;
    }
}

async fn qos2_in_flight_both_ways_is_exactly_once_across_a_crash_and_a_restart_case(how: Ending) {
    use petrel_codec::{PubAck, QoS};
    let proto = Protocol::V5;
    let mut lives = Lives::new();
    let addr = lives.start().await;
    let (mut s, _) = Raw::connect_with(addr, proto, "sub", persistent(proto)).await;
    s.subscribe("q/#", QoS::ExactlyOnce).await;
    // Outgoing: the subscriber gets the PUBLISH and answers PUBREC; the
    // broker's PUBREL arrives; then the broker dies before PUBCOMP.
    let (mut p, _) = Raw::connect_with(addr, proto, "pub", persistent(proto)).await;
    p.publish("q/out", b"out", QoS::ExactlyOnce, false).await;
    let Some(Packet::Publish(m)) = s.recv().await else {
        panic!("no PUBLISH")
    };
    let out_pid = m.qos.packet_id().unwrap();
    s.send(Packet::PubRec(PubAck::new(out_pid))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(r)) if r.packet_id == out_pid));
    // Incoming: the publisher's QoS 2 PUBLISH got its PUBREC, not yet
    // PUBREL; the subscriber took the message.
    let mut q = Publish::new(support::topic("q/in"), Bytes::from_static(b"in"));
    q.qos = QosPid::ExactlyOnce(pid(77));
    p.send(Packet::Publish(q.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == pid(77)));
    let Some(Packet::Publish(m)) = s.recv().await else {
        panic!("no PUBLISH")
    };
    assert_eq!(&m.payload[..], b"in");
    let in_pid = m.qos.packet_id().unwrap();
    s.send(Packet::PubRec(PubAck::new(in_pid))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(r)) if r.packet_id == in_pid));
    lives.end(how).await;
    let addr = lives.start().await;
    // The subscriber is asked for PUBCOMP only, for each in the order they
    // were first sent: neither message is sent again ([MQTT-4.3.3-6]).
    let (mut s, ack) = Raw::connect_with(addr, proto, "sub", persistent(proto)).await;
    assert!(ack.session_present);
    for expected in [out_pid, in_pid] {
        match s.recv().await {
            Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, expected),
            other => panic!("expected PUBREL {expected:?}, got {other:?}"),
        }
        s.send(Packet::PubComp(PubAck::new(expected))).await;
    }
    // The publisher sends its PUBLISH again (it had no PUBCOMP): it is not
    // delivered twice, and the flow completes.
    let (mut p, ack) = Raw::connect_with(addr, proto, "pub", persistent(proto)).await;
    assert!(ack.session_present);
    q.dup = true;
    p.send(Packet::Publish(q)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == pid(77)));
    p.send(Packet::PubRel(PubAck::new(pid(77)))).await;
    match p.recv().await {
        Some(Packet::PubComp(c)) => assert_eq!(c.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    assert!(
        s.no_publish(Duration::from_millis(300)).await,
        "delivered twice"
    );
    // Positive control: a new QoS 2 message (the identifier is free again).
    p.publish("q/new", b"new", QoS::ExactlyOnce, false).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"new");
    lives.kill();
}

#[tokio::test]
async fn subscription_options_and_identifiers_survive_a_crash_and_a_restart() {
    for how in ENDINGS {
        subscription_options_and_identifiers_survive_a_crash_and_a_restart_case(how).await;
    }
}

async fn subscription_options_and_identifiers_survive_a_crash_and_a_restart_case(how: Ending) {
    use petrel_codec::{Properties, QoS, SubscriptionOptions};
    let proto = Protocol::V5;
    let mut lives = Lives::new();
    let addr = lives.start().await;
    let (mut s, _) = Raw::connect_with(addr, proto, "ids", persistent(proto)).await;
    let mut props = Properties::new();
    props.set_subscription_identifiers([petrel_codec::SubscriptionId::new(42).unwrap()]);
    let mut options = SubscriptionOptions::qos(QoS::AtLeastOnce);
    options.no_local = true;
    s.subscribe_with("i/#", options, props).await;
    lives.end(how).await;
    let addr = lives.start().await;
    let (mut s, ack) = Raw::connect_with(addr, proto, "ids", persistent(proto)).await;
    assert!(ack.session_present);
    // No Local kept: its own message does not come back.
    s.publish("i/own", b"own", QoS::AtLeastOnce, false).await;
    assert!(s.no_publish(Duration::from_millis(300)).await);
    let mut p = Raw::connect(addr, proto, "other").await;
    p.publish("i/x", b"x", QoS::AtLeastOnce, false).await;
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], b"x");
    assert_eq!(m.qos.qos(), QoS::AtLeastOnce);
    let ids: Vec<u32> = m
        .properties
        .subscription_identifiers()
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(ids, vec![42]);
    lives.kill();
}

#[tokio::test]
async fn a_stored_session_s_expiry_counts_the_time_the_broker_was_down() {
    use petrel_broker::core::store::StoredSession;
    let data = Arc::new(MemoryStore::new());
    let ten_s_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 10_000;
    for (id, expiry) in [("short", 5), ("long", 600)] {
        let record = StoredSession {
            expiry,
            detached: Some(ten_s_ago),
            owner: None,
        };
        data.commit(vec![Op::Put {
            table: Table::Sessions,
            key: id.as_bytes().to_vec(),
            value: record.encode(),
        }])
        .unwrap();
    }
    let broker = Broker::builder(config())
        .store(data.clone())
        .build()
        .unwrap();
    let b = serve_broker(broker).await;
    // Down 10 s: the 5 s session is gone (from the store too), the 600 s
    // one is back.
    let keys: Vec<Vec<u8>> = data
        .scan(Table::Sessions)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"long".to_vec()]);
    for (id, present) in [("short", false), ("long", true)] {
        let (_c, ack) = Raw::connect_with(b.addr, Protocol::V5, id, persistent(Protocol::V5)).await;
        assert_eq!(ack.session_present, present, "{id}");
    }
}

/// A 5.0 CONNECT with a persistent session and a will on `topic` delayed
/// by `delay` seconds.
fn with_will(topic: &str, delay: u32) -> impl FnOnce(&mut petrel_codec::Connect) {
    let topic = support::topic(topic);
    move |c| {
        let mut w = petrel_codec::Will {
            topic,
            payload: Bytes::from_static(b"gone"),
            qos: petrel_codec::QoS::AtLeastOnce,
            retain: false,
            properties: petrel_codec::Properties::new(),
        };
        w.properties.set_will_delay_interval(Some(delay));
        c.clean_start = false;
        c.properties.set_session_expiry_interval(Some(300));
        c.will = Some(w);
    }
}

#[tokio::test]
async fn a_will_waiting_for_its_delay_survives_a_crash_and_a_restart() {
    for how in ENDINGS {
        a_will_waiting_for_its_delay_survives_a_crash_and_a_restart_case(how).await;
    }
}

async fn a_will_waiting_for_its_delay_survives_a_crash_and_a_restart_case(how: Ending) {
    let proto = Protocol::V5;
    let mut lives = Lives::new();
    let addr = lives.start().await;
    // Two clients vanish without DISCONNECT, their wills 2 s away.
    for id in ["w-gone", "w-back"] {
        let (c, _) = Raw::connect_with(addr, proto, id, with_will(&format!("will/{id}"), 2)).await;
        drop(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    lives.end(how).await;
    let addr = lives.start().await;
    let (mut watcher, _) = Raw::connect_with(addr, proto, "watcher", |_| {}).await;
    watcher
        .subscribe("will/#", petrel_codec::QoS::AtLeastOnce)
        .await;
    // One comes back in time: its will is cancelled (the negative); the
    // other's is published when its delay ends (the positive).
    let (_back, ack) = Raw::connect_with(addr, proto, "w-back", with_will("will/w-back", 2)).await;
    assert!(ack.session_present);
    let m = watcher.recv_publish().await;
    assert_eq!(m.topic.as_str(), "will/w-gone");
    assert!(
        watcher.no_publish(Duration::from_millis(2500)).await,
        "a cancelled will was published"
    );
    lives.kill();
}

/// A QoS 1 PUBLISH of `payload` with packet id `id`, not waiting.
async fn send_payload(c: &mut Raw, t: &str, id: u16, payload: &'static [u8]) {
    let mut p = Publish::new(topic(t), Bytes::from_static(payload));
    p.qos = QosPid::AtLeastOnce(pid(id));
    c.send(Packet::Publish(p)).await;
}

#[tokio::test]
async fn at_max_store_bytes_new_messages_to_store_are_refused_and_stored_ones_kept() {
    use petrel_codec::QoS;
    static PAYLOAD: [u8; 200] = [b'x'; 200];
    let store = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.max_store_bytes = 2_000;
    let b = serve_broker(Broker::builder(cfg).store(store.clone()).build().unwrap()).await;
    // A stored session, offline: what it matches must be stored.
    let (mut sub, _) =
        Raw::connect_with(b.addr, Protocol::V5, "stored", persistent(Protocol::V5)).await;
    sub.subscribe("q/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    // A session that is not stored, online.
    let mut live = Raw::connect(b.addr, Protocol::V5, "live").await;
    live.subscribe("q/#", QoS::AtLeastOnce).await;
    let mut p = Raw::connect(b.addr, Protocol::V5, "pub").await;
    let mut accepted = 0;
    let mut refused_at = None;
    for id in 1..=40u16 {
        send_payload(&mut p, "q/a", id, &PAYLOAD).await;
        match p.recv().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS => accepted += 1,
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::QUOTA_EXCEEDED => {
                refused_at = Some(id);
                break;
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // Positive control: messages were taken until the store was full.
    assert!(accepted >= 5, "only {accepted} accepted");
    assert!(
        refused_at.is_some(),
        "never refused: the limit does not hold"
    );
    assert!(
        store.stored_bytes() < 2_000 + 400,
        "{}",
        store.stored_bytes()
    );
    // The refused message went to nobody, not even the session that would
    // not have stored it.
    for _ in 0..accepted {
        assert_eq!(live.recv_publish().await.payload.len(), 200);
    }
    assert!(live.no_publish(Duration::from_millis(200)).await);
    // 3.1.1 can't be told: no PUBACK, and the connection closes.
    let mut v3 = Raw::connect(b.addr, Protocol::V3_1_1, "pub3").await;
    send_payload(&mut v3, "q/b", 1, &PAYLOAD).await;
    assert!(v3.recv().await.is_none(), "3.1.1 was acknowledged");
    // What was stored is all there: the session gets every accepted one.
    let (mut sub, ack) =
        Raw::connect_with(b.addr, Protocol::V5, "stored", persistent(Protocol::V5)).await;
    assert!(ack.session_present);
    for _ in 0..accepted {
        assert_eq!(sub.recv_publish().await.payload.len(), 200);
    }
    assert!(sub.no_publish(Duration::from_millis(200)).await);
    // Delivered, it leaves the store: there is room again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    send_payload(&mut p, "q/a", 99, &PAYLOAD).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // Refused twice: the 5.0 message and the 3.1.1 one.
    assert_eq!(b.broker.stats().store_full, 2);
}

#[tokio::test]
async fn a_persistence_snapshot_from_an_older_petrel_is_imported_into_an_empty_store() {
    use petrel_codec::{PubAck, QoS};
    let file = support::temp_file("import", "");
    std::fs::remove_file(&file).unwrap();
    let old = || petrel_broker::BrokerConfig {
        persistence: Some(file.clone()),
        ..config()
    };
    // An older Petrel's run: state in memory, saved to the snapshot when
    // it shuts down.
    let first = support::start_with(old()).await;
    let proto = Protocol::V5;
    let (mut s, _) = Raw::connect_with(first.addr, proto, "sub", persistent(proto)).await;
    s.subscribe("q/#", QoS::ExactlyOnce).await;
    let (mut p, _) = Raw::connect_with(first.addr, proto, "pub", persistent(proto)).await;
    // In flight to the subscriber: one QoS 2 message whose PUBREC came
    // (PUBREL sent, no PUBCOMP yet), one with no PUBREC yet.
    p.publish("q/a", b"a", QoS::ExactlyOnce, false).await;
    let Some(Packet::Publish(m)) = s.recv().await else {
        panic!("no PUBLISH")
    };
    let released = m.qos.packet_id().unwrap();
    s.send(Packet::PubRec(PubAck::new(released))).await;
    assert!(matches!(s.recv().await, Some(Packet::PubRel(r)) if r.packet_id == released));
    p.publish("q/b", b"b", QoS::ExactlyOnce, false).await;
    let Some(Packet::Publish(m)) = s.recv().await else {
        panic!("no PUBLISH")
    };
    let unacked = m.qos.packet_id().unwrap();
    s.disconnect().await;
    // Queued while it is away.
    p.publish("q/1", b"one", QoS::AtLeastOnce, false).await;
    p.publish("q/2", b"two", QoS::ExactlyOnce, false).await;
    // A QoS 2 PUBLISH whose PUBREL has not come.
    let mut q = Publish::new(topic("q/3"), Bytes::from_static(b"three"));
    q.qos = QosPid::ExactlyOnce(pid(77));
    p.send(Packet::Publish(q.clone())).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == pid(77)));
    p.disconnect().await;
    first.broker.publish(
        topic("r/1"),
        Bytes::from_static(b"kept"),
        QoS::AtLeastOnce,
        true,
    );
    first.broker.shutdown();
    first.task.await.unwrap();
    assert!(file.exists(), "the older run saved nothing");
    // The new Petrel, with a durable store and the same configuration.
    let store = Arc::new(MemoryStore::new());
    let b = serve_broker(Broker::builder(old()).store(store.clone()).build().unwrap()).await;
    let mut imported = file.as_os_str().to_os_string();
    imported.push(".imported");
    assert!(!file.exists() && std::path::Path::new(&imported).exists());
    assert_eq!(b.broker.stats().retained, 1);
    assert_eq!(store.scan(Table::Sessions).unwrap().len(), 2);
    // The subscriber: PUBREL again for the first, the second sent again
    // with its identifier and DUP ([MQTT-4.4.0-1]), then its queue, in order.
    let (mut s, ack) = Raw::connect_with(b.addr, proto, "sub", persistent(proto)).await;
    assert!(ack.session_present);
    match s.recv().await {
        Some(Packet::PubRel(r)) => assert_eq!(r.packet_id, released),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    s.send(Packet::PubComp(PubAck::new(released))).await;
    let again = s.recv_publish().await;
    assert_eq!(
        (&again.payload[..], again.qos.packet_id(), again.dup),
        (&b"b"[..], Some(unacked), true)
    );
    for expected in [&b"one"[..], b"two", b"three"] {
        assert_eq!(&s.recv_publish().await.payload[..], expected);
    }
    // The publisher's identifier 77 still awaits PUBREL: its PUBLISH sent
    // again is not delivered twice, and the flow completes.
    let (mut p, ack) = Raw::connect_with(b.addr, proto, "pub", persistent(proto)).await;
    assert!(ack.session_present);
    q.dup = true;
    p.send(Packet::Publish(q)).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(r)) if r.packet_id == pid(77)));
    p.send(Packet::PubRel(PubAck::new(pid(77)))).await;
    assert!(matches!(p.recv().await, Some(Packet::PubComp(_))));
    assert!(
        s.no_publish(Duration::from_millis(300)).await,
        "delivered twice"
    );
    // Positive control: a new message reaches the imported subscription.
    p.publish("q/4", b"four", QoS::AtLeastOnce, false).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"four");
    let _ = std::fs::remove_file(&imported);
}
