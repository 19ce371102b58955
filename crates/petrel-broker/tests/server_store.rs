//! Acknowledgements and the durable store, over real sockets: a PUBACK
//! waits until what it acknowledges is durable, keeps the order of the
//! PUBLISHes, and says so when the store fails.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use petrel_broker::{Broker, Commit, MemoryStore, Op, Store, Table, Ticket};
use petrel_codec::{Packet, Protocol, Publish, QosPid, ReasonCode};
use support::{config, pid, serve_broker, topic, Raw};

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
    assert!(
        p.try_recv(Duration::from_millis(300)).await.is_none(),
        "acknowledged before the store had it"
    );
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
