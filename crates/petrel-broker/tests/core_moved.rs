//! Sessions moving between brokers (the nodes of a cluster):
//! [`Broker::export_session`] takes one out of a broker with everything it
//! had, [`Broker::import_session`] brings it into another as it was, or
//! merges it into the session that broker has; a form that does not read
//! back is refused and changes nothing.

mod support;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use petrel_broker::{Broker, Client, Exported, MemoryStore, Peer, Step, Store, Table};
use petrel_codec::{Connect, MqttString, Protocol, Publish, QoS, QosPid};
use petrel_session::{Accept, Message, SessionState};
use support::{config, persistent, pid, topic};

fn broker() -> (Broker, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let b = Broker::builder(config())
        .store(store.clone())
        .build()
        .unwrap();
    (b, store)
}

async fn login(b: &Broker, id: &str, keep: bool) -> (Client, Accept) {
    let mut c = Connect::new(Protocol::V5, MqttString::try_from(id).unwrap());
    if keep {
        persistent(Protocol::V5)(&mut c);
    }
    match b.login(c, Peer::default()).start().await {
        Step::Accept(a) => (a.client, a.accept),
        other => panic!("{id} refused: {other:?}"),
    }
}

fn subscribe(c: &mut Client, f: &str) {
    let s = support::subscribe_one(f);
    assert_eq!(c.subscribe(s, Instant::now()).reason_codes[0].0, 1);
}

fn publish(c: &mut Client, t: &str, payload: &'static str, n: u16) {
    let mut p = Publish::new(topic(t), Bytes::from_static(payload.as_bytes()));
    p.qos = QosPid::AtLeastOnce(pid(n));
    c.publish(p, Instant::now(), false);
}

fn payloads(c: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    c.next_messages(100, 100, 1 << 20, Instant::now(), &mut got);
    got.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// `b`'s session of `id`, taken out.
async fn export(b: &Broker, id: &str) -> Vec<u8> {
    match b.export_session(id, false, None).await {
        Exported::Session(form) => form,
        other => panic!("nothing to move: {other:?}"),
    }
}

fn message(payload: &'static str) -> Message {
    Message::new(
        topic("t/x"),
        Bytes::from_static(payload.as_bytes()),
        QoS::AtLeastOnce,
    )
}

/// A session on `a`, offline: subscribed to `t/#`, with `queued` waiting,
/// one message in flight (packet identifier 7), one whose PUBREC came
/// (8), and a QoS 2 identifier received (9).
async fn offline_session(a: &Broker, queued: &[&'static str]) {
    let (mut m, _) = login(a, "m", true).await;
    subscribe(&mut m, "t/#");
    let mut state = SessionState::new();
    let now = Instant::now();
    state.restore_outgoing(now, 7, message("in flight"), false);
    state.restore_outgoing(now, 8, message("released"), true);
    state.restore_incoming(9);
    m.close(state, None);
    let (mut p, _) = login(a, "p", false).await;
    for (i, q) in queued.iter().enumerate() {
        publish(&mut p, "t/x", q, i as u16 + 1);
    }
}

#[tokio::test]
async fn a_session_moves_with_its_subscriptions_queue_and_exchanges_in_flight() {
    let (a, a_store) = broker();
    offline_session(&a, &["one", "two", "three"]).await;
    let form = export(&a, "m").await;
    // Out of `a`'s memory and its session tables; its form waits in the
    // store until the other broker has it.
    assert!(!a.session_ids().contains(&"m".to_string()));
    let kept = |s: &MemoryStore| {
        s.scan(Table::Sessions)
            .unwrap()
            .iter()
            .any(|(k, _)| k == b"m")
    };
    assert!(!kept(&a_store));
    assert!(a_store.scan(Table::Queue).unwrap().is_empty());
    assert_eq!(
        a.moving_sessions().unwrap(),
        [("m".to_string(), form.clone())]
    );

    let (b, b_store) = broker();
    let imported = b.import_session(&form).unwrap();
    assert_eq!(imported.client_id, "m");
    assert!(imported.stored.is_done() && imported.routed.is_done());
    assert!(kept(&b_store), "in the new broker's store");
    a.forget_moved("m");
    assert!(
        a.moving_sessions().unwrap().is_empty(),
        "gone from the old one's"
    );
    // What `b` stored reads back: a broker restarted on it has the session.
    let c = Broker::builder(config())
        .store(b_store.clone())
        .build()
        .unwrap();
    assert!(c.session_ids().contains(&"m".to_string()));

    // Resumed on `b`: the exchanges in flight go on with their packet
    // identifiers, and the queue comes in order.
    let (mut m, accept) = login(&b, "m", true).await;
    assert!(accept.session_present);
    assert_eq!(accept.state.inflight_ids(), [7, 8]);
    assert_eq!(accept.state.incoming_ids().collect::<Vec<_>>(), [9]);
    assert_eq!(payloads(&mut m), ["one", "two", "three"]);
    // Its subscription came along: `b` routes to it.
    let (mut p, _) = login(&b, "p", false).await;
    publish(&mut p, "t/y", "on b", 1);
    assert_eq!(payloads(&mut m), ["on b"]);
}

#[tokio::test]
async fn a_session_moved_into_one_that_exists_is_merged() {
    let (a, _) = broker();
    offline_session(&a, &["old 1", "old 2"]).await;
    let form = export(&a, "m").await;

    // On `b` the client connected meanwhile, with a new session.
    let (b, b_store) = broker();
    let (mut m, accept) = login(&b, "m", true).await;
    assert!(!accept.session_present);
    subscribe(&mut m, "mine/#");
    let imported = b.import_session(&form).unwrap();
    assert!(imported.stored.is_done());
    // What waited arrives; the message in flight is sent again as a new
    // one; the one whose PUBREC came was received already.
    assert_eq!(payloads(&mut m), ["in flight", "old 1", "old 2"]);
    // Stored for this session (QoS 1), to survive a restart of `b`.
    let stored = b_store.scan(Table::Queue).unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    // Both subscriptions hold.
    let (mut p, _) = login(&b, "p", false).await;
    publish(&mut p, "t/1", "theirs", 1);
    publish(&mut p, "mine/1", "mine", 2);
    assert_eq!(payloads(&mut m), ["theirs", "mine"]);
}

#[tokio::test]
async fn a_session_taken_with_clean_start_ends_and_nothing_moves() {
    let (a, a_store) = broker();
    offline_session(&a, &["gone"]).await;
    assert_eq!(a.export_session("m", true, None).await, Exported::Nothing);
    assert!(!a.session_ids().contains(&"m".to_string()));
    assert!(a_store.scan(Table::Sessions).unwrap().is_empty());
    // Nothing to move either for a client id the broker never saw (the
    // control: the session above was there to move).
    assert_eq!(
        a.export_session("nobody", false, None).await,
        Exported::Nothing
    );
}

#[tokio::test]
async fn a_damaged_form_is_refused_and_changes_nothing() {
    let (a, _) = broker();
    offline_session(&a, &["x"]).await;
    let form = export(&a, "m").await;
    let (b, b_store) = broker();
    // Cut anywhere, or with a byte changed anywhere: an error or a
    // session that reads back, never a panic.
    for cut in 0..form.len() {
        assert!(b.import_session(&form[..cut]).is_err(), "cut at {cut}");
    }
    assert!(b_store.scan(Table::Sessions).unwrap().is_empty());
    for i in 0..form.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = form.clone();
            bad[i] ^= flip;
            let _ = b.import_session(&bad);
        }
    }
    // Named for another client than its entries are (the id follows the
    // 4-byte tag and its 4-byte length): refused whole.
    let mut renamed = form.clone();
    assert_eq!(renamed[8], b'm');
    renamed[8] = b'n';
    let (e, e_store) = broker();
    assert!(e.import_session(&renamed).is_err());
    assert!(e_store.scan(Table::Sessions).unwrap().is_empty());
    // A subscription whose filter is no filter (`t#/`, in place of `t/#`):
    // refused before anything is kept, and the store still starts a broker.
    let at = form
        .windows(5)
        .position(|w| w == b"m\0t/#")
        .expect("the filter's key");
    let mut bad_filter = form.clone();
    bad_filter[at + 2..at + 5].copy_from_slice(b"t#/");
    let (f, f_store) = broker();
    assert!(f.import_session(&bad_filter).is_err());
    assert!(f_store.scan(Table::Sessions).unwrap().is_empty());
    assert!(f_store.scan(Table::Subscriptions).unwrap().is_empty());
    assert!(Broker::builder(config()).store(f_store).build().is_ok());
    // The control: the form as made reads back.
    let (d, _) = broker();
    assert!(d.import_session(&form).is_ok());
    assert!(d.session_ids().contains(&"m".to_string()));
}

#[tokio::test]
async fn another_users_claim_leaves_the_session_and_its_connection_alone() {
    let mut cfg = config();
    cfg.session_ownership = Some(true);
    let b = Broker::builder(cfg)
        .store(Arc::new(MemoryStore::new()))
        .build()
        .unwrap();
    // The session is anonymous's (no user name), connected.
    let (m, _) = login(&b, "m", true).await;
    assert_eq!(
        b.export_session("m", false, Some("mallory")).await,
        Exported::NotYours
    );
    assert!(b.session_ids().contains(&"m".to_string()));
    assert!(b.moving_sessions().unwrap().is_empty());
    // The control: its own user's claim takes it (once it lets go).
    let export = b.export_session("m", false, None);
    let close = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        m.close(SessionState::new(), None);
    };
    let (exported, ()) = tokio::join!(export, close);
    assert!(matches!(exported, Exported::Session(_)), "{exported:?}");
    assert!(!b.session_ids().contains(&"m".to_string()));
}
