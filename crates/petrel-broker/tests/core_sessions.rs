//! Sessions by client identifier and wills waiting for their delay.

use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_broker::{Connected, Handover, SessionRegistry, WillQueue, NEVER};
use petrel_codec::{QoS, TopicName};
use petrel_session::{Message, SessionState};

fn ready(c: Connected) -> Handover {
    match c {
        Connected::Ready(h) => h,
        other => panic!("{other:?}"),
    }
}

fn with_message() -> SessionState {
    let mut s = SessionState::new();
    let m = Message::new(
        TopicName::from_static("t"),
        Bytes::from_static(b"kept"),
        QoS::AtLeastOnce,
    );
    s.enqueue(Instant::now(), m, 10).unwrap();
    s
}

/// Checks [MQTT-3.1.2-4], [MQTT-3.1.2-5], [MQTT-3.1.2-6] (5.0); 3.1.1: [MQTT-3.2.2-1], [MQTT-3.2.2-2], [MQTT-3.2.2-3].
#[test]
fn new_resumed_and_clean_sessions() {
    let now = Instant::now();
    let mut r = SessionRegistry::new();
    // No session yet: a new one, Session Present 0.
    let h = ready(r.connect("c", false, 60));
    assert!(!h.session_present && h.state.is_empty());
    r.release("c", h.connection, with_message(), 60, now);
    assert!(!r.is_connected("c"));
    // Resumed: Session Present 1 and the state comes back.
    let h = ready(r.connect("c", false, 60));
    assert!(h.session_present);
    assert_eq!(h.state.pending(), 1);
    r.release("c", h.connection, h.state, 60, now);
    // Clean Start: the old session is discarded.
    let h = ready(r.connect("c", true, 60));
    assert!(!h.session_present && h.state.is_empty());
}

/// Checks [MQTT-3.1.2-23] (5.0): kept for its expiry interval, then ended.
#[test]
fn sessions_expire() {
    let now = Instant::now();
    let mut r = SessionRegistry::new();
    let h = ready(r.connect("short", false, 10));
    r.release("short", h.connection, SessionState::new(), 10, now);
    let h = ready(r.connect("zero", false, 0));
    r.release("zero", h.connection, SessionState::new(), 0, now);
    let h = ready(r.connect("forever", false, NEVER));
    r.release("forever", h.connection, SessionState::new(), NEVER, now);
    // Expiry 0 ends the session as the connection ends.
    assert_eq!(r.len(), 2);
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(10)));
    assert!(r.expire(now + Duration::from_secs(9)).is_empty());
    assert_eq!(r.expire(now + Duration::from_secs(10)), ["short"]);
    assert!(r.expire(now + Duration::from_secs(10_000_000)).is_empty());
    assert_eq!(r.len(), 1);
    assert!(r.detached_state("forever").is_some());
}

/// Checks [MQTT-3.1.4-3]: a second connection with the same client id takes
/// the session over; the first must close and hands its state on.
#[test]
fn takeover_hands_the_state_on() {
    let now = Instant::now();
    let mut r = SessionRegistry::new();
    let first = ready(r.connect("c", false, 60));
    let Connected::TakeOver {
        connection: second,
        holder,
        superseded,
    } = r.connect("c", false, 60)
    else {
        panic!()
    };
    assert_eq!((holder, superseded), (first.connection, None));
    // A third arrives while the second waits: the second never gets it.
    let Connected::TakeOver {
        connection: third,
        superseded,
        ..
    } = r.connect("c", false, 60)
    else {
        panic!()
    };
    assert_eq!(superseded, Some(second));
    // The first lets go; the state (with its queued message) goes to the third.
    let h = r
        .release("c", first.connection, with_message(), 60, now)
        .unwrap();
    assert_eq!(h.connection, third);
    assert!(h.session_present);
    assert_eq!(h.state.pending(), 1);
    // A stale release by a connection that no longer holds it changes nothing.
    assert!(r
        .release("c", first.connection, SessionState::new(), 0, now)
        .is_none());
    assert!(r
        .release("c", second, SessionState::new(), 0, now)
        .is_none());
    assert!(r.is_connected("c"));
    assert_eq!(r.len(), 1);
}

#[test]
fn a_takeover_with_clean_start_discards_the_state() {
    let now = Instant::now();
    let mut r = SessionRegistry::new();
    let first = ready(r.connect("c", false, 60));
    let Connected::TakeOver { connection, .. } = r.connect("c", true, 60) else {
        panic!()
    };
    let h = r
        .release("c", first.connection, with_message(), 60, now)
        .unwrap();
    assert_eq!(h.connection, connection);
    assert!(!h.session_present && h.state.is_empty());
}

#[test]
fn an_abandoned_takeover_leaves_the_session_to_expire() {
    let now = Instant::now();
    let mut r = SessionRegistry::new();
    let first = ready(r.connect("c", false, 60));
    let Connected::TakeOver { connection, .. } = r.connect("c", false, 60) else {
        panic!()
    };
    r.abandon("c", connection);
    assert!(r
        .release("c", first.connection, with_message(), 60, now)
        .is_none());
    assert_eq!(r.detached_state("c").map(|s| s.pending()), Some(1));
}

/// Checks [MQTT-3.1.2-8] (5.0): a will goes out when its delay passes or
/// its session ends, whichever is first, unless the client reconnects.
#[test]
fn wills_wait_for_their_delay_or_the_session_end() {
    let now = Instant::now();
    let mut q = WillQueue::new();
    q.schedule(
        "slow",
        "slow-will",
        Duration::from_secs(30),
        Some(now + Duration::from_secs(100)),
        now,
    );
    q.schedule(
        "short-session",
        "ends-first",
        Duration::from_secs(30),
        Some(now + Duration::from_secs(5)),
        now,
    );
    q.schedule("now", "no-delay", Duration::ZERO, None, now);
    q.schedule("back", "cancelled", Duration::from_secs(30), None, now);
    assert_eq!(q.due(now), ["no-delay"]);
    assert_eq!(q.poll_timeout(), Some(now + Duration::from_secs(5)));
    assert_eq!(q.due(now + Duration::from_secs(5)), ["ends-first"]);
    // The client came back within the delay: its will is not published.
    assert_eq!(q.cancel("back"), Some("cancelled"));
    assert_eq!(q.due(now + Duration::from_secs(30)), ["slow-will"]);
    assert!(q.is_empty());
    // A session that ends before the delay releases its will at once.
    q.schedule("x", "x-will", Duration::from_secs(60), None, now);
    assert_eq!(q.session_ended("x"), Some("x-will"));
}

/// Checks [MQTT-3.1.2-23]: a takeover of a session whose holder had expiry 0
/// (3.1.1: Clean Session 1) starts a new session, even without Clean Start.
#[test]
fn taking_over_a_session_with_expiry_zero_does_not_resume_it() {
    let now = Instant::now();
    let mut r = SessionRegistry::new();
    let a = ready(r.connect("z", true, 0));
    let Connected::TakeOver { connection, .. } = r.connect("z", false, 60) else {
        panic!("expected a takeover");
    };
    let h = r
        .release("z", a.connection, with_message(), 0, now)
        .expect("handed over");
    assert_eq!(h.connection, connection);
    assert!(!h.session_present);
    assert!(h.state.is_empty());
}
