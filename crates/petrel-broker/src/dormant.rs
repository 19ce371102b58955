//! Hibernation: a connection quiet for `hibernate_after`, with nothing in
//! flight, ends its task and waits folded small — its socket, the session
//! machine's [`Parked`] form and its [`Link`] — until something wakes it:
//! bytes from the peer (or the peer leaving), a message for its session, a
//! takeover, its keep-alive deadline or the broker's shutdown. Waking spawns
//! a task that unfolds it and goes on as if nothing had happened.
//!
//! The wake-ups are plain [`Waker`]s, registered where each event happens
//! (the session's mailbox, the kick signal, the [`Sleepers`] set), so no
//! task, timer or buffer is held while asleep. The socket itself leaves the
//! runtime's reactor (its registration there costs 256 bytes) for the
//! [`Watcher`], one thread with an epoll set (through mio) that wakes the
//! connection when the socket becomes readable or the peer goes away.
//! Every registration is made before the check of its condition, and both
//! happen under the same lock as the event's side, so a wake-up is never
//! lost: one that comes while the connection is still being folded makes it
//! go on at once instead.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Instant;

use petrel_session::{Connection, Parked};

use crate::connection::{drive, Link, Task, Transport};
use crate::mailbox::lock;
use crate::stats::Stats;

/// Hibernating connections the broker wakes on its own: each at its
/// keep-alive deadline, and all at shutdown.
#[derive(Debug)]
pub(crate) struct Sleepers {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Deadlines (whole seconds after `base`, rounded up: the broker checks
    /// them once a second anyway) by slot and generation; entries of slots
    /// woken otherwise are skipped when they come up, and swept when they
    /// pile up.
    deadlines: BinaryHeap<Reverse<(u32, u32, u32)>>,
    base: Instant,
}

impl Default for Sleepers {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            deadlines: BinaryHeap::new(),
            base: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    waker: Option<Waker>,
}

/// A place in [`Sleepers`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotId {
    index: u32,
    generation: u32,
}

/// The watcher's own token, to stop it.
const STOP: mio::Token = mio::Token(usize::MAX);

impl SlotId {
    fn token(self) -> mio::Token {
        mio::Token((self.index as usize) << 32 | self.generation as usize)
    }

    fn from_token(t: mio::Token) -> Self {
        Self {
            index: (t.0 >> 32) as u32,
            generation: t.0 as u32,
        }
    }
}

/// The thread that watches hibernating connections' sockets: one epoll set
/// (through mio), read by a thread of its own so that a sleeping socket
/// costs the runtime nothing. A readable socket (data, or the peer gone)
/// wakes its connection through [`Sleepers`].
#[derive(Debug)]
pub(crate) struct Watcher {
    registry: mio::Registry,
    stop: mio::Waker,
    stopping: Arc<AtomicBool>,
}

impl Watcher {
    /// Start the thread.
    pub(crate) fn start(sleepers: Arc<Mutex<Sleepers>>) -> io::Result<Self> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let stop = mio::Waker::new(poll.registry(), STOP)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        std::thread::Builder::new()
            .name("petrel-sleepers".into())
            .spawn(move || watch(poll, &sleepers, &flag))?;
        Ok(Self {
            registry,
            stop,
            stopping,
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.wake();
    }
}

fn watch(mut poll: mio::Poll, sleepers: &Mutex<Sleepers>, stopping: &AtomicBool) {
    let mut events = mio::Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "the sleepers' watcher failed");
            return;
        }
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let wakers: Vec<Waker> = {
            let mut sleepers = lock(sleepers);
            events
                .iter()
                .filter(|e| e.token() != STOP)
                .filter_map(|e| sleepers.remove(SlotId::from_token(e.token())))
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

impl Sleepers {
    /// How many connections hibernate.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    fn insert(&mut self, waker: Waker, deadline: Option<Instant>) -> SlotId {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                waker: None,
            });
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        });
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.waker = Some(waker);
        self.live += 1;
        let id = SlotId {
            index,
            generation: slot.generation,
        };
        if let Some(at) = deadline {
            let after = at.saturating_duration_since(self.base);
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            let at = u32::try_from(secs).unwrap_or(u32::MAX);
            self.deadlines.push(Reverse((at, index, id.generation)));
            if self.deadlines.len() > 2 * self.live + 1024 {
                let slots = &self.slots;
                self.deadlines.retain(|Reverse((_, i, g))| {
                    let s = &slots[*i as usize];
                    s.generation == *g && s.waker.is_some()
                });
            }
        }
        id
    }

    fn remove(&mut self, id: SlotId) -> Option<Waker> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let waker = slot.waker.take()?;
        self.free.push(id.index);
        self.live -= 1;
        Some(waker)
    }

    /// Take the wakers of the connections whose deadline has come.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Waker> {
        let now =
            u32::try_from(now.saturating_duration_since(self.base).as_secs()).unwrap_or(u32::MAX);
        let mut due = Vec::new();
        while let Some(Reverse((at, index, generation))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            due.extend(self.remove(SlotId { index, generation }));
        }
        due
    }

    /// Take every waker (shutdown). The slots stay, generations and all,
    /// so an id handed out before can't name a later sleeper.
    pub(crate) fn all(&mut self) -> Vec<Waker> {
        self.deadlines.clear();
        self.live = 0;
        let mut all = Vec::new();
        for (index, slot) in (0u32..).zip(&mut self.slots) {
            if let Some(w) = slot.waker.take() {
                self.free.push(index);
                all.push(w);
            }
        }
        all
    }
}

/// A hibernating connection, as its wakers see it.
struct Dormant<T: Transport> {
    state: Mutex<State<T>>,
}

// The Arc holding it is allocated once, at the size of `Asleep`: boxing
// that variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum State<T: Transport> {
    /// Being folded: a wake-up now makes it go on at once.
    Arming,
    /// Woken while being folded.
    Early,
    Asleep(Record<T>),
    /// Woken: later wake-ups find nothing to do.
    Awake,
}

/// What a hibernating connection keeps.
struct Record<T: Transport> {
    io: T::Asleep,
    conn: Parked,
    link: Link,
    slot: SlotId,
}

impl<T: Transport> Wake for Dormant<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        match std::mem::replace(&mut *state, State::Awake) {
            State::Arming | State::Early => *state = State::Early,
            State::Asleep(record) => {
                drop(state);
                let shared = record.link.shared.clone();
                // Set by `park` before anything could wake it.
                if let Some(runtime) = shared.runtime.get() {
                    runtime.spawn(resume(record));
                }
            }
            State::Awake => {}
        }
    }
}

/// Wake up: undo the hibernation's registrations (those not already
/// spent), bring the socket back to the runtime and unfold the connection.
/// `None` if the socket can't come back: the connection is lost (dropping
/// the link hands the session back).
fn unfold<T: Transport>(
    link: Link,
    parked: Parked,
    slot: SlotId,
    watcher: &Watcher,
    mut asleep: T::Asleep,
) -> Option<(Box<Task>, T)> {
    lock(&link.shared.sleepers).remove(slot);
    if let Some(key) = link.key() {
        key.mailbox().waker = None;
    }
    lock(&link.kick.0).waker = None;
    let _ = watcher.registry.deregister(&mut asleep);
    let io = match T::wake(asleep) {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(error = %e, "a hibernating connection could not wake");
            return None;
        }
    };
    let conn = Connection::unpark(parked, link.shared.session_config.clone());
    let peer = io
        .peer()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Some((Box::new(Task::new(link, conn, peer, true)), io))
}

async fn resume<T: Transport>(record: Record<T>) {
    let Record {
        io,
        conn,
        link,
        slot,
    } = record;
    let shared = link.shared.clone();
    // A sleeper exists only once the watcher does.
    let Some(watcher) = shared.watcher() else {
        return;
    };
    if let Some((task, io)) = unfold::<T>(link, conn, slot, watcher, io) {
        drive(task, io).await;
    }
}

/// Fold `task` and let its task end; `None` once it sleeps. It comes back
/// to go on where it can't hibernate (the session machine is not idle) or
/// is woken while being folded.
pub(crate) fn park<T: Transport>(mut task: Box<Task>, io: T) -> Option<(Box<Task>, T)> {
    let shared = task.link.shared.clone();
    let placeholder = Connection::server(shared.session_config.clone(), Instant::now());
    let parked = match std::mem::replace(&mut task.conn, placeholder).park() {
        Ok(p) => p,
        Err(conn) => {
            task.conn = *conn;
            return Some((task, io));
        }
    };
    let Some(watcher) = shared.watcher() else {
        task.conn = Connection::unpark(parked, shared.session_config.clone());
        return Some((task, io));
    };
    let link = task.link.take();
    drop(task);
    let mut asleep = match io.sleep() {
        Ok(a) => a,
        Err(e) => {
            // The socket is lost (dropping the link hands the session back).
            tracing::warn!(error = %e, "a connection could not hibernate");
            return None;
        }
    };
    let dormant = Arc::new(Dormant {
        state: Mutex::new(State::<T>::Arming),
    });
    shared.runtime.get_or_init(tokio::runtime::Handle::current);
    let waker = Waker::from(dormant.clone());
    // Each registration before its check (see the module's notes).
    let slot = lock(&shared.sleepers).insert(waker.clone(), parked.deadline());
    let mut early = false;
    if let Some(key) = link.key() {
        let mut mailbox = key.mailbox();
        if mailbox.is_empty() {
            mailbox.compact();
            mailbox.waker = Some(waker.clone());
        } else {
            early = true;
        }
    }
    {
        let mut kick = lock(&link.kick.0);
        kick.waker = Some(waker.clone());
        early |= kick.reason.is_some();
    }
    early |= *shared.shutdown.borrow();
    // Readable already (or the peer gone): epoll reports it at once.
    early |= watcher
        .registry
        .register(&mut asleep, slot.token(), mio::Interest::READABLE)
        .is_err();
    let mut state = lock(&dormant.state);
    if early || matches!(*state, State::Early) {
        *state = State::Awake;
        drop(state);
        return unfold(link, parked, slot, watcher, asleep);
    }
    *state = State::Asleep(Record {
        io: asleep,
        conn: parked,
        link,
        slot,
    });
    Stats::add(&shared.stats.hibernations, 1);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn sleepers_wake_at_their_deadline_once_and_only_if_still_asleep() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut sleepers = Sleepers::default();
        let (a, wa) = counter();
        let (b, wb) = counter();
        let (c, wc) = counter();
        let ia = sleepers.insert(wa, Some(at(1)));
        let ib = sleepers.insert(wb, Some(at(2)));
        let _ic = sleepers.insert(wc, None);
        assert_eq!(sleepers.len(), 3);
        // `a` is woken by something else first: its deadline finds nothing.
        assert!(sleepers.remove(ia).is_some());
        assert!(sleepers.remove(ia).is_none(), "removed once");
        // Its slot is reused; the stale deadline must not wake the new one.
        let (d, wd) = counter();
        let id = sleepers.insert(wd, Some(at(5)));
        for w in sleepers.due(at(3)) {
            w.wake();
        }
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        assert_eq!(d.0.load(Ordering::Relaxed), 0);
        assert!(sleepers.remove(ib).is_none(), "gone once woken");
        assert_eq!(sleepers.len(), 2);
        // Shutdown takes everyone left, deadline or not.
        for w in sleepers.all() {
            w.wake();
        }
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
        assert_eq!(d.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.0.load(Ordering::Relaxed), 0);
        assert_eq!(sleepers.len(), 0);
        assert!(sleepers.remove(id).is_none());
        // A sleeper after the shutdown's sweep is not named by an old id.
        let (_, we) = counter();
        let _ie = sleepers.insert(we, None);
        assert!(sleepers.remove(id).is_none() && sleepers.remove(ia).is_none());
        assert!(sleepers.remove(ib).is_none() && sleepers.remove(_ic).is_none());
        assert_eq!(sleepers.len(), 1);
    }

    #[test]
    fn deadlines_of_woken_sleepers_do_not_pile_up() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut sleepers = Sleepers::default();
        let (_, w) = counter();
        // Connections that sleep and wake over and over.
        for _ in 0..10_000 {
            let id = sleepers.insert(w.clone(), Some(far));
            assert!(sleepers.remove(id).is_some());
        }
        assert_eq!(sleepers.len(), 0);
        assert!(
            sleepers.deadlines.len() <= 1024 + 1,
            "{}",
            sleepers.deadlines.len()
        );
        assert!(sleepers.slots.len() == 1, "slots are reused");
    }
}
