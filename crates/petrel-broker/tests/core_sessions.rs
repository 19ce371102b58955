//! Sessions by client identifier and wills waiting for their delay.

use std::time::{Duration, Instant};

use bytes::Bytes;
use petrel_broker::{Connected, Handover, Released, SessionRegistry, WillQueue, NEVER};
use petrel_codec::{QoS, TopicName};
use petrel_session::{Message, SessionState};

/// Each connection is known by a tag, its handle in the registry.
type Registry = SessionRegistry<(), &'static str>;

fn ready(c: Connected<&'static str>) -> Handover {
    match c {
        Connected::Ready(h) => h,
        other => panic!("{other:?}"),
    }
}

/// A CONNECT by the connection tagged `tag`.
fn connect(
    r: &mut Registry,
    id: &str,
    clean: bool,
    expiry: u32,
    tag: &'static str,
) -> Connected<&'static str> {
    r.connect(id.to_string(), clean, expiry, tag, || ())
}

/// The handover to a waiting connection, and its tag.
fn handed_over(r: Released<(), &'static str>) -> (Handover, &'static str) {
    match r {
        Released::HandedOver(h, tag) => (h, tag),
        other => panic!("{other:?}"),
    }
}

fn detached_pending(r: &Registry, id: &str) -> Option<usize> {
    r.detached()
        .find(|(i, ..)| *i == id)
        .map(|(_, state, ..)| state.pending())
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
    let mut r = Registry::new();
    // No session yet: a new one, Session Present 0.
    let h = ready(connect(&mut r, "c", false, 60, "a"));
    assert!(!h.session_present && h.state.is_empty());
    assert!(matches!(
        r.release("c", h.connection, with_message(), 60, now),
        Released::Kept
    ));
    assert!(!r.is_connected("c"));
    // Resumed: Session Present 1 and the state comes back.
    let h = ready(connect(&mut r, "c", false, 60, "b"));
    assert!(h.session_present);
    assert_eq!(h.state.pending(), 1);
    r.release("c", h.connection, h.state, 60, now);
    // Clean Start: the old session is discarded.
    let h = ready(connect(&mut r, "c", true, 60, "c"));
    assert!(!h.session_present && h.state.is_empty());
}

/// Checks [MQTT-3.1.2-23] (5.0): kept for its expiry interval, then ended.
#[test]
fn sessions_expire() {
    let now = Instant::now();
    let mut r = Registry::new();
    let h = ready(connect(&mut r, "short", false, 10, "a"));
    r.release("short", h.connection, SessionState::new(), 10, now);
    let h = ready(connect(&mut r, "zero", false, 0, "b"));
    // Expiry 0 ends the session as the connection ends.
    assert!(matches!(
        r.release("zero", h.connection, SessionState::new(), 0, now),
        Released::Ended(())
    ));
    let h = ready(connect(&mut r, "forever", false, NEVER, "c"));
    r.release("forever", h.connection, SessionState::new(), NEVER, now);
    assert_eq!(r.len(), 2);
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(10)));
    assert!(r.expire(now + Duration::from_secs(9)).is_empty());
    let ended: Vec<String> = r
        .expire(now + Duration::from_secs(10))
        .into_iter()
        .map(|(id, ())| id.to_string())
        .collect();
    assert_eq!(ended, ["short"]);
    assert!(r.expire(now + Duration::from_secs(10_000_000)).is_empty());
    assert_eq!(r.len(), 1);
    assert_eq!(detached_pending(&r, "forever"), Some(0));
}

/// Checks [MQTT-3.1.4-3 (5.0)]: a second connection with the same client id
/// takes the session over; the first must close and hands its state on.
#[test]
fn takeover_hands_the_state_on() {
    let now = Instant::now();
    let mut r = Registry::new();
    let first = ready(connect(&mut r, "c", false, 60, "first"));
    let Connected::TakeOver {
        connection: second,
        holder,
        superseded,
    } = connect(&mut r, "c", false, 60, "second")
    else {
        panic!()
    };
    assert_eq!((holder, superseded), ("first", None));
    // A third arrives while the second waits: the second never gets it.
    let Connected::TakeOver {
        connection: third,
        holder,
        superseded,
    } = connect(&mut r, "c", false, 60, "third")
    else {
        panic!()
    };
    assert_eq!((holder, superseded), ("first", Some("second")));
    // The first lets go; the state (with its queued message) goes to the third.
    let (h, tag) = handed_over(r.release("c", first.connection, with_message(), 60, now));
    assert_eq!((h.connection, tag), (third, "third"));
    assert!(h.session_present);
    assert_eq!(h.state.pending(), 1);
    assert!(r.holds("c", third));
    // A stale release by a connection that no longer holds it changes nothing.
    assert!(matches!(
        r.release("c", first.connection, SessionState::new(), 0, now),
        Released::NotHeld
    ));
    assert!(matches!(
        r.release("c", second, SessionState::new(), 0, now),
        Released::NotHeld
    ));
    assert!(r.is_connected("c"));
    assert_eq!(r.len(), 1);
}

#[test]
fn a_takeover_with_clean_start_discards_the_state() {
    let now = Instant::now();
    let mut r = Registry::new();
    let first = ready(connect(&mut r, "c", false, 60, "a"));
    let Connected::TakeOver { connection, .. } = connect(&mut r, "c", true, 60, "b") else {
        panic!()
    };
    let (h, _) = handed_over(r.release("c", first.connection, with_message(), 60, now));
    assert_eq!(h.connection, connection);
    assert!(!h.session_present && h.state.is_empty());
}

#[test]
fn an_abandoned_takeover_leaves_the_session_to_expire() {
    let now = Instant::now();
    let mut r = Registry::new();
    let first = ready(connect(&mut r, "c", false, 60, "a"));
    let Connected::TakeOver { connection, .. } = connect(&mut r, "c", false, 60, "b") else {
        panic!()
    };
    r.abandon("c", connection);
    assert!(matches!(
        r.release("c", first.connection, with_message(), 60, now),
        Released::Kept
    ));
    assert_eq!(detached_pending(&r, "c"), Some(1));
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

/// A takeover of a session whose holder had expiry 0 (3.1.1: Clean Session 1)
/// starts a new session, even without Clean Start: that session ended with
/// its connection.
#[test]
fn taking_over_a_session_with_expiry_zero_does_not_resume_it() {
    let now = Instant::now();
    let mut r = Registry::new();
    let a = ready(connect(&mut r, "z", true, 0, "a"));
    let Connected::TakeOver { connection, .. } = connect(&mut r, "z", false, 60, "b") else {
        panic!("expected a takeover");
    };
    let (h, _) = handed_over(r.release("z", a.connection, with_message(), 0, now));
    assert_eq!(h.connection, connection);
    assert!(!h.session_present);
    assert!(h.state.is_empty());
}

/// The registry keeps offline sessions in order: eviction takes the one
/// offline longest, expiry and its next deadline come from an index (no
/// scan of every session), and a session that reconnects leaves both.
#[test]
fn offline_sessions_are_evicted_oldest_first_and_expire_by_index() {
    let t0 = Instant::now();
    let mut r = Registry::new();
    for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let h = ready(connect(&mut r, id, false, 100, "x"));
        let at = t0 + Duration::from_secs(i as u64);
        r.release(
            id,
            h.connection,
            SessionState::new(),
            100 - i as u32 * 10,
            at,
        );
    }
    // Expiry deadlines: a 100, b 91, c 82, d 73 (seconds after t0).
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(73)));
    // "b" reconnects: out of both orders.
    let h = ready(connect(&mut r, "b", false, 100, "y"));
    assert!(h.session_present);
    assert_eq!(
        r.evict_oldest().map(|(id, ())| id.to_string()).as_deref(),
        Some("a")
    );
    assert_eq!(
        r.evict_oldest().map(|(id, ())| id.to_string()).as_deref(),
        Some("c")
    );
    assert_eq!(r.len(), 2); // b (connected) and d
    let ended: Vec<String> = r
        .expire(t0 + Duration::from_secs(1000))
        .into_iter()
        .map(|(id, ())| id.to_string())
        .collect();
    assert_eq!(ended, ["d"], "b is connected, a and c are gone");
    assert_eq!(r.poll_timeout(), None);
    // Only connected sessions left: nothing to evict.
    assert!(r.evict_oldest().is_none());
    // "b" goes offline again: evictable, expiring anew.
    r.release("b", h.connection, SessionState::new(), 5, t0);
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(
        r.evict_oldest().map(|(id, ())| id.to_string()).as_deref(),
        Some("b")
    );
    assert!(r.is_empty());
}

/// Wills come due from an index by time: a rescheduled will keeps only its
/// new time, a cancelled one never comes, and the next deadline is the
/// soonest left.
#[test]
fn wills_come_due_in_time_order_from_their_index() {
    let t0 = Instant::now();
    let mut q: WillQueue<&str> = WillQueue::new();
    q.schedule("a", "a1", Duration::from_secs(5), None, t0);
    q.schedule("b", "b", Duration::from_secs(3), None, t0);
    q.schedule("c", "c", Duration::from_secs(4), None, t0);
    // "a" again, later: its first time is gone.
    q.schedule("a", "a2", Duration::from_secs(10), None, t0);
    assert_eq!(q.cancel("c"), Some("c"));
    assert_eq!(q.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    assert_eq!(q.due(t0 + Duration::from_secs(6)), vec!["b"]);
    assert_eq!(q.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    assert!(q.due(t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(q.due(t0 + Duration::from_secs(10)), vec!["a2"]);
    assert!(q.is_empty() && q.poll_timeout().is_none());
}
