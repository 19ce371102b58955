//! The cluster seam ([`Peers`]), with a recording stand-in for the other
//! nodes: the engine tells it of a filter's first and last subscription on
//! this node (not of the ones between), sends it what is published here
//! (not `$SYS`, not what came from another node), waits on its commits
//! before acknowledging, and refuses a subscription that needs a route
//! while it says none can be agreed.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use petrel_broker::{
    Broker, Client, Commit, Deferred, Forwarded, Peer, Peers, SharedGroups, Step, Ticket,
};
use petrel_codec::{Connect, MqttString, Protocol, Publish, QoS, QosPid, ReasonCode, Unsubscribe};
use petrel_session::{Message, SessionState};
use support::{config, filter, pid, topic};

/// Records what the engine tells it; its commits complete when the test
/// says.
#[derive(Debug, Default)]
struct Recorder {
    interest: Mutex<Vec<(String, bool)>>,
    /// What was sent on (once the engine ran the deferred send).
    forwarded: Arc<Mutex<Vec<String>>>,
    tickets: Mutex<Vec<Arc<Ticket>>>,
    unavailable: AtomicBool,
    /// The next forward fails at once.
    fail_next: AtomicBool,
    /// The shared groups other nodes serve.
    elsewhere: Mutex<Vec<String>>,
}

impl Recorder {
    fn ticket(&self) -> Commit {
        let t = Arc::new(Ticket::default());
        self.tickets.lock().unwrap().push(t.clone());
        Commit::waiting(t)
    }

    fn complete_all(&self, result: Result<(), String>) {
        for t in self.tickets.lock().unwrap().drain(..) {
            t.complete(result.clone());
        }
    }

    fn interest(&self) -> Vec<(String, bool)> {
        std::mem::take(&mut *self.interest.lock().unwrap())
    }

    fn forwarded(&self) -> Vec<String> {
        std::mem::take(&mut *self.forwarded.lock().unwrap())
    }
}

impl Peers for Recorder {
    fn interest(&self, filter: &str, wanted: bool) -> Commit {
        self.interest
            .lock()
            .unwrap()
            .push((filter.to_string(), wanted));
        if wanted {
            self.ticket()
        } else {
            Commit::done()
        }
    }

    fn forward(&self, message: &Message) -> Forwarded {
        if self.fail_next.swap(false, Ordering::Relaxed) {
            self.forwarded
                .lock()
                .unwrap()
                .push(message.topic.as_str().to_string());
            let t = Arc::new(Ticket::default());
            t.complete(Err("full".into()));
            return Forwarded {
                nodes: 0,
                commit: Commit::waiting(t),
                here: SharedGroups::All,
                send: None,
            };
        }
        // Sent (recorded) only when the engine says: once it took it.
        let commit = if message.qos == QoS::AtMostOnce {
            Commit::done()
        } else {
            self.ticket()
        };
        let (sent, topic) = (self.forwarded.clone(), message.topic.as_str().to_string());
        Forwarded {
            here: SharedGroups::Except(self.elsewhere.lock().unwrap().clone()),
            send: Some(Deferred(Box::new(move || {
                sent.lock().unwrap().push(topic);
                (1, commit)
            }))),
            ..Forwarded::default()
        }
    }

    fn available(&self) -> bool {
        !self.unavailable.load(Ordering::Relaxed)
    }
}

fn broker() -> (Broker, Arc<Recorder>) {
    let r = Arc::new(Recorder::default());
    let b = Broker::builder(config()).peers(r.clone()).build().unwrap();
    (b, r)
}

async fn client(b: &Broker, id: &str, proto: Protocol) -> Client {
    let c = Connect::new(proto, MqttString::try_from(id).unwrap());
    match b.login(c, Peer::default()).start().await {
        Step::Accept(a) => a.client,
        _ => panic!("{id} refused"),
    }
}

fn subscribe(c: &mut Client, f: &str) -> ReasonCode {
    c.subscribe(support::subscribe_one(f), Instant::now())
        .reason_codes[0]
}

fn unsubscribe(c: &mut Client, f: &str) {
    c.unsubscribe(Unsubscribe {
        packet_id: pid(2),
        properties: Default::default(),
        filters: vec![filter(f)],
    });
}

fn publish(c: &mut Client, t: &str, qos: QoS) -> ReasonCode {
    let mut p = Publish::new(topic(t), Bytes::from_static(b"x"));
    p.qos = match qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(pid(3)),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(pid(3)),
    };
    c.publish(p, Instant::now(), false)
}

fn waker_commit(c: &Commit) -> Option<std::io::Result<()>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match c.poll(&mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test]
async fn the_first_and_last_subscription_of_a_filter_are_told_and_the_suback_waits() {
    let (b, r) = broker();
    let mut a = client(&b, "a", Protocol::V5).await;
    let mut c = client(&b, "c", Protocol::V5).await;
    assert_eq!(subscribe(&mut a, "t/+"), ReasonCode(1));
    assert_eq!(r.interest(), [("t/+".to_string(), true)]);
    // The SUBACK waits for the cluster to know.
    let commit = a.take_commit().expect("a commit to wait for");
    assert!(waker_commit(&commit).is_none());
    r.complete_all(Ok(()));
    assert!(matches!(waker_commit(&commit), Some(Ok(()))));
    // A second subscriber of the same filter, and the same one again:
    // nothing new for the cluster, nothing to wait for.
    assert_eq!(subscribe(&mut c, "t/+"), ReasonCode(1));
    assert_eq!(subscribe(&mut a, "t/+"), ReasonCode(1));
    assert!(r.interest().is_empty());
    assert!(c.take_commit().is_none());
    // One leaves: the other still wants it. The last leaving (its session
    // ending) is told.
    unsubscribe(&mut a, "t/+");
    assert!(r.interest().is_empty());
    c.close(SessionState::default(), None);
    assert_eq!(r.interest(), [("t/+".to_string(), false)]);
    // The control: the filter wanted again is told again.
    assert_eq!(subscribe(&mut a, "t/+"), ReasonCode(1));
    assert_eq!(r.interest(), [("t/+".to_string(), true)]);
    assert!(a.take_commit().is_some());
    // `$SYS` is each node's own: no route, nothing to wait for, granted
    // even without a majority.
    r.unavailable.store(true, Ordering::Relaxed);
    assert_eq!(subscribe(&mut a, "$SYS/broker/#"), ReasonCode(1));
    assert!(r.interest().is_empty());
    assert!(a.take_commit().is_none());
}

#[tokio::test]
async fn what_is_published_here_is_forwarded_and_acknowledged_after() {
    let (b, r) = broker();
    let mut p = client(&b, "p", Protocol::V5).await;
    // Nobody here subscribes: the cluster took it, so it is not "no
    // matching subscribers".
    assert_eq!(
        publish(&mut p, "a/b", QoS::AtLeastOnce),
        ReasonCode::SUCCESS
    );
    assert_eq!(r.forwarded(), ["a/b"]);
    let commit = p
        .take_commit()
        .expect("the PUBACK waits for the other nodes");
    assert!(waker_commit(&commit).is_none());
    r.complete_all(Ok(()));
    assert!(matches!(waker_commit(&commit), Some(Ok(()))));
    // A node that could not take it fails the acknowledgement.
    publish(&mut p, "a/c", QoS::AtLeastOnce);
    let commit = p.take_commit().unwrap();
    r.complete_all(Err("queue full".into()));
    assert!(matches!(waker_commit(&commit), Some(Err(_))));
    // Also when it failed at once (a full queue): the acknowledgement
    // still has it to look at.
    r.fail_next.store(true, Ordering::Relaxed);
    publish(&mut p, "a/d", QoS::AtLeastOnce);
    let commit = p.take_commit().expect("a failed commit is not dropped");
    assert!(matches!(waker_commit(&commit), Some(Err(_))));
    // What came from another node is delivered here, never sent back;
    // `$SYS` stays on its node.
    let mut sub = client(&b, "s", Protocol::V5).await;
    assert_eq!(subscribe(&mut sub, "a/#"), ReasonCode(1));
    r.forwarded();
    let m = Message::new(
        topic("a/remote"),
        Bytes::from_static(b"y"),
        QoS::AtLeastOnce,
    );
    let c = b.deliver_forwarded(m, SharedGroups::Only(vec![])).unwrap();
    assert!(c.is_done());
    assert!(r.forwarded().is_empty());
    let mut got = Vec::new();
    sub.next_messages(10, 10, 1 << 20, Instant::now(), &mut got);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic.as_str(), "a/remote");
    b.publish(topic("$SYS/x"), Bytes::new(), QoS::AtMostOnce, false);
    assert!(r.forwarded().is_empty());
    // The control: the application's own message is forwarded.
    b.publish(topic("a/app"), Bytes::new(), QoS::AtMostOnce, false);
    assert_eq!(r.forwarded(), ["a/app"]);
}

/// Each shared group gets a message once across the cluster: a message
/// published here skips the groups the cluster gave to other nodes, and
/// one from another node reaches only the groups that node picked this
/// one for. Direct subscribers get both either way.
#[tokio::test]
async fn shared_groups_are_served_only_where_the_cluster_picked() {
    let (b, r) = broker();
    let mut g = client(&b, "g", Protocol::V5).await;
    let mut h = client(&b, "h", Protocol::V5).await;
    let mut d = client(&b, "d", Protocol::V5).await;
    assert_eq!(subscribe(&mut g, "$share/g/s/#"), ReasonCode(1));
    assert_eq!(subscribe(&mut h, "$share/h/s/#"), ReasonCode(1));
    assert_eq!(subscribe(&mut d, "s/#"), ReasonCode(1));
    r.complete_all(Ok(()));
    let got = |c: &mut Client| {
        let mut out = Vec::new();
        c.next_messages(10, 10, 1 << 20, Instant::now(), &mut out);
        out.iter()
            .map(|m| m.topic.as_str().to_string())
            .collect::<Vec<_>>()
    };
    let mut p = client(&b, "p", Protocol::V5).await;
    // The control: nothing served elsewhere, every group here gets it.
    publish(&mut p, "s/1", QoS::AtMostOnce);
    assert_eq!(
        (got(&mut g), got(&mut h), got(&mut d).len()),
        (vec!["s/1".into()], vec!["s/1".into()], 1)
    );
    // Group g is another node's for the next one.
    *r.elsewhere.lock().unwrap() = vec!["$share/g/s/#".into()];
    publish(&mut p, "s/2", QoS::AtMostOnce);
    assert!(got(&mut g).is_empty(), "another node serves group g");
    assert_eq!(
        (got(&mut h), got(&mut d).len()),
        (vec!["s/2".to_string()], 1)
    );
    // From another node, which picked this one for group g only.
    let m = Message::new(topic("s/3"), Bytes::from_static(b"x"), QoS::AtMostOnce);
    b.deliver_forwarded(m, SharedGroups::Only(vec!["$share/g/s/#".into()]))
        .unwrap();
    assert_eq!(got(&mut g), ["s/3"]);
    assert!(got(&mut h).is_empty(), "group h was served elsewhere");
    assert_eq!(got(&mut d).len(), 1);
}

#[tokio::test]
async fn without_a_majority_a_new_route_is_refused_and_an_existing_one_granted() {
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        let (b, r) = broker();
        let mut a = client(&b, "a", proto).await;
        assert_eq!(subscribe(&mut a, "have/#"), ReasonCode(1));
        r.unavailable.store(true, Ordering::Relaxed);
        let mut c = client(&b, "c", proto).await;
        assert_eq!(
            subscribe(&mut c, "new/#"),
            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
        );
        assert_eq!(subscribe(&mut c, "have/#"), ReasonCode(1));
        r.unavailable.store(false, Ordering::Relaxed);
        assert_eq!(subscribe(&mut c, "new/#"), ReasonCode(1));
    }
}

/// One commit of all of `tickets`, joined one by one.
fn all_of(tickets: &[Arc<Ticket>]) -> Commit {
    tickets
        .iter()
        .fold(Commit::done(), |c, t| c.and(Commit::waiting(t.clone())))
}

#[test]
fn a_commit_of_several_tickets_is_done_when_all_are() {
    let tickets: Vec<Arc<Ticket>> = (0..4).map(|_| Arc::new(Ticket::default())).collect();
    let all = all_of(&tickets);
    for (i, t) in tickets.iter().enumerate() {
        assert!(waker_commit(&all).is_none(), "{i} of 4 done");
        assert!(!all.is_done());
        t.complete(Ok(()));
    }
    assert!(all.is_done());
    assert!(matches!(waker_commit(&all), Some(Ok(()))));
    // A commit that failed already fails what it is joined to.
    let failed = Arc::new(Ticket::default());
    failed.complete(Err("refused".into()));
    let joined = Commit::done().and(Commit::waiting(failed));
    assert!(matches!(waker_commit(&joined), Some(Err(_))));
    // One failing fails the whole, whichever it is.
    let tickets: Vec<Arc<Ticket>> = (0..3).map(|_| Arc::new(Ticket::default())).collect();
    let all = all_of(&tickets);
    tickets[2].complete(Err("lost".into()));
    tickets[0].complete(Ok(()));
    tickets[1].complete(Ok(()));
    assert!(matches!(waker_commit(&all), Some(Err(_))));
}

#[test]
fn a_long_chain_of_joined_commits_completes_without_nesting() {
    // Thousands of tickets joined one by one (each a chain over the one
    // before), completed newest first, then the oldest: each completion
    // wakes the next chain in a loop, not a call deeper.
    let tickets: Vec<Arc<Ticket>> = (0..20_000).map(|_| Arc::new(Ticket::default())).collect();
    let all = all_of(&tickets);
    for t in tickets.iter().skip(1).rev() {
        t.complete(Ok(()));
    }
    assert!(waker_commit(&all).is_none());
    // Run on a thread with a small stack: nesting would overflow it.
    let first = tickets[0].clone();
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || first.complete(Ok(())))
        .unwrap()
        .join()
        .unwrap();
    assert!(matches!(waker_commit(&all), Some(Ok(()))));
}

#[tokio::test]
async fn a_second_subscriber_of_a_filter_waits_for_the_first_ones_route() {
    let (b, r) = broker();
    let mut a = client(&b, "a", Protocol::V5).await;
    let mut c = client(&b, "c", Protocol::V5).await;
    assert_eq!(subscribe(&mut a, "w/#"), ReasonCode(1));
    let first = a.take_commit().unwrap();
    // The route is not agreed yet: the second SUBACK waits for it too.
    assert_eq!(subscribe(&mut c, "w/#"), ReasonCode(1));
    let second = c.take_commit().expect("waits for the same route");
    assert!(waker_commit(&second).is_none());
    r.complete_all(Ok(()));
    assert!(matches!(waker_commit(&first), Some(Ok(()))));
    assert!(matches!(waker_commit(&second), Some(Ok(()))));
    // Agreed: a third waits for nothing.
    let mut d = client(&b, "d", Protocol::V5).await;
    assert_eq!(subscribe(&mut d, "w/#"), ReasonCode(1));
    assert!(d.take_commit().is_none());
}

#[tokio::test]
async fn a_suback_whose_route_was_not_agreed_is_never_sent() {
    let (b, r) = broker();
    let b = support::serve_broker(b).await;
    // The cluster answers 200 ms after each SUBSCRIBE: first yes, then no.
    let answer = |result: Result<(), String>| {
        let r = r.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            r.complete_all(result);
        })
    };
    // The control: agreed, the SUBACK comes.
    let mut agreed = support::Raw::connect(b.addr, Protocol::V5, "agreed").await;
    answer(Ok(()));
    assert_eq!(
        agreed
            .subscribe("ok/#", QoS::AtLeastOnce)
            .await
            .reason_codes,
        [ReasonCode(1)]
    );
    // Not agreed: no SUBACK, the connection closes.
    for proto in [Protocol::V5, Protocol::V3_1_1] {
        let mut c = support::Raw::connect(b.addr, proto, "refused").await;
        answer(Err("no leader agreed in time".into()));
        c.send(petrel_codec::Packet::Subscribe(support::subscribe_one(
            "new/#",
        )))
        .await;
        let closed = tokio::time::timeout(support::WAIT, c.closed()).await;
        assert!(closed.is_ok(), "{proto:?}: still open");
    }
}

/// A retained message the cluster agreed keeps its age (its expiry counts
/// from when it was published, not from when this node applied it), and
/// reaches a subscription made while it was on its way.
#[tokio::test]
async fn an_agreed_retained_message_keeps_its_age_and_reaches_a_walk_begun_before_it() {
    use std::time::Duration;
    let (b, _r) = broker();
    let held = |b: &Broker| b.retained_all();
    let agreed = |t: &str, age: u64| {
        let mut m = Message::new(topic(t), Bytes::from_static(b"v"), QoS::AtLeastOnce);
        m.retain = true;
        m.properties.set_message_expiry_interval(Some(5));
        (m, Instant::now() - Duration::from_secs(age))
    };
    // Published 10 s ago with 5 s to live: gone already.
    let (m, at) = agreed("r/old", 10);
    b.set_retained(&m, at).unwrap();
    assert!(held(&b).is_empty(), "an expired message is not kept");
    // The control: 2 s ago, kept, with its age.
    let (m, at) = agreed("r/new", 2);
    b.set_retained(&m, at).unwrap();
    let all = held(&b);
    assert_eq!(all.len(), 1);
    assert!(all[0].1 <= Instant::now() - Duration::from_secs(2));
    // A subscription made before it was applied gets it from its walk.
    let (b, _r) = broker();
    let mut s = client(&b, "s", Protocol::V5).await;
    // A retained message applied before: the walk of the next subscription
    // starts after it.
    let (m, at) = agreed("w/1", 0);
    b.set_retained(&m, at).unwrap();
    assert_eq!(subscribe(&mut s, "w/#"), ReasonCode(1));
    let (m, at) = agreed("w/2", 0);
    b.set_retained(&m, at).unwrap();
    let mut got = Vec::new();
    s.next_messages(10, 10, 1 << 20, Instant::now(), &mut got);
    let topics: std::collections::BTreeSet<String> =
        got.iter().map(|m| m.topic.as_str().to_string()).collect();
    assert!(topics.contains("w/1"), "{topics:?}");
    assert!(
        topics.contains("w/2"),
        "applied while the walk went on: {topics:?}"
    );
}

/// A store whose writes fail while `fail` is set.
#[derive(Debug, Default)]
struct Flaky {
    inner: petrel_broker::MemoryStore,
    fail: AtomicBool,
}

impl petrel_broker::Store for Flaky {
    fn commit(&self, ops: Vec<petrel_broker::Op>) -> std::io::Result<Commit> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("disk full"));
        }
        self.inner.commit(ops)
    }
    fn scan(&self, t: petrel_broker::Table) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan(t)
    }
}

/// A message this node could not store (a persistent subscriber's copy)
/// is refused to its publisher and reaches no other node: the cluster
/// sends it only once this node has taken it.
#[tokio::test]
async fn a_message_this_node_could_not_store_reaches_no_other_node() {
    let r = Arc::new(Recorder::default());
    let store = Arc::new(Flaky::default());
    let b = Broker::builder(config())
        .store(store.clone())
        .peers(r.clone())
        .build()
        .unwrap();
    let mut c = Connect::new(Protocol::V3_1_1, MqttString::try_from("keeper").unwrap());
    c.clean_start = false;
    let mut keeper = match b.login(c, Peer::default()).start().await {
        Step::Accept(a) => a.client,
        _ => panic!("keeper refused"),
    };
    assert_eq!(subscribe(&mut keeper, "kept/#"), ReasonCode(1));
    r.complete_all(Ok(()));
    let mut p = client(&b, "p", Protocol::V5).await;
    store.fail.store(true, Ordering::Relaxed);
    assert!(publish(&mut p, "kept/x", QoS::AtLeastOnce).is_error());
    assert!(r.forwarded().is_empty(), "sent on though not taken here");
    // The control: stored, it is sent on.
    store.fail.store(false, Ordering::Relaxed);
    assert!(!publish(&mut p, "kept/y", QoS::AtLeastOnce).is_error());
    assert_eq!(r.forwarded(), ["kept/y"]);
}
