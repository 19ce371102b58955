//! Hibernation: a connection quiet for `hibernate_after`, with nothing in
//! flight, ends its task and waits in a compact form (its socket, its
//! session machine's [`petrel_session::Hibernated`] form and its engine
//! client) until something wakes it: bytes from the peer (or the peer
//! leaving), a message for its session, a takeover, its keep-alive deadline
//! or the broker's shutdown. Waking spawns a task that resumes it as if
//! nothing had happened.
//!
//! The connection driver hands a [`Hibernator`] and its socket to
//! [`Hibernation::hibernate`]; everything else is here. The wake-ups are
//! plain [`Waker`]s, armed through the types that own each event (the
//! hibernator arms its session queue and its kick signal; the [`Slots`]
//! here hold the deadline and shutdown wakers), so no task, timer or buffer
//! is held while asleep. The socket itself leaves the runtime's reactor
//! (its registration there costs 256 bytes) for the [`Watcher`], one thread
//! with an epoll set (through mio) that wakes the connection when the
//! socket becomes readable or the peer goes away (a QUIC connection has no
//! socket of its own: its endpoint wakes it, see [`Sleeper`]). Every
//! registration is made before the check of its condition, and both happen
//! under the same lock as the event's side, so a wake-up is never lost: one
//! that comes while the connection is still going to sleep makes it go on
//! at once instead.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use super::transport::{Sleeper, Transport};
use crate::core::auth::BoxFuture;
use crate::core::engine::Broker;
use crate::core::lock;
use crate::stats::Stats;

/// What a connection leaves behind when it hibernates, besides its socket:
/// it arms its own wake-ups and knows how to go on.
pub(crate) trait Hibernator: Send + Sized + 'static {
    /// The transport it runs on.
    type Io: Transport;

    /// Arm `waker` for the events the connection itself owns (a message
    /// for its session, a takeover). False if one already happened: it
    /// must not sleep.
    fn arm(&self, waker: &Waker) -> bool;

    /// Forget what [`Hibernator::arm`] armed.
    fn disarm(&self);

    /// When it must wake for its timers (its keep-alive), if ever.
    fn deadline(&self) -> Option<Instant>;

    /// Go on awake with the socket back, in a task of its own.
    fn resume(self, io: Self::Io) -> BoxFuture<'static, ()>;
}

/// The hibernating connections of one server.
#[derive(Clone, Debug)]
pub(crate) struct Hibernation(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    broker: Broker,
    slots: Arc<Mutex<Slots>>,
    /// The thread watching their sockets, started by the first to
    /// hibernate (none if it could not start: then connections stay awake).
    watcher: OnceLock<Option<Watcher>>,
    /// The runtime the connections run on, where woken ones go on.
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Hibernation {
    pub(crate) fn new(broker: Broker) -> Self {
        Self(Arc::new(Inner {
            broker,
            slots: Arc::new(Mutex::new(Slots::default())),
            watcher: OnceLock::new(),
            runtime: OnceLock::new(),
        }))
    }

    fn watcher(&self) -> Option<&Watcher> {
        self.0
            .watcher
            .get_or_init(|| match Watcher::start(self.0.slots.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "no hibernation: the watcher thread did not start");
                    None
                }
            })
            .as_ref()
    }

    /// Wake the hibernating connections whose deadline came, each to go on
    /// in a task of its own.
    pub(crate) fn wake_due(&self, now: Instant) {
        let wakers = {
            let mut slots = lock(&self.0.slots);
            let due = slots.due(now);
            slots.compact();
            due
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Wake every hibernating connection (shutdown).
    pub(crate) fn wake_all(&self) {
        let wakers = lock(&self.0.slots).all();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Put `conn` to sleep with its socket. `Err` gives both back when it
    /// must stay awake (a wake-up came while it was going to sleep, or
    /// there is no watcher thread); `Ok` means it is no longer the
    /// caller's: asleep, or lost with its socket (dropping it hands its
    /// session back).
    pub(crate) fn hibernate<H: Hibernator>(&self, conn: H, io: H::Io) -> Result<(), (H, H::Io)> {
        let Some(watcher) = self.watcher() else {
            return Err((conn, io));
        };
        let mut socket = match io.hibernate() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "a connection could not hibernate");
                return Ok(());
            }
        };
        let cell = Arc::new(Cell {
            state: Mutex::new(State::<H>::Going),
        });
        self.0.runtime.get_or_init(tokio::runtime::Handle::current);
        let waker = Waker::from(cell.clone());
        // Each registration before its check (see the module's notes).
        let slot = lock(&self.0.slots).insert(waker.clone(), conn.deadline());
        let mut early = !conn.arm(&waker);
        early |= self.0.broker.is_shut_down();
        // Readable already (or the peer gone): epoll reports it at once.
        early |= socket
            .watch(&watcher.registry, slot.token(), &waker)
            .is_err();
        let mut state = lock(&cell.state);
        if early || matches!(*state, State::Early) {
            *state = State::Awake;
            drop(state);
            return match self.undo(slot, &conn, socket) {
                Some(io) => Err((conn, io)),
                None => Ok(()),
            };
        }
        *state = State::Asleep(Sleeping {
            socket,
            conn,
            slot,
            hibernation: Counted::new(self.clone()),
        });
        Ok(())
    }

    /// Undo a hibernation's registrations (those not already spent) and
    /// bring the socket back to the runtime; `None` if it can't come back.
    fn undo<H: Hibernator>(
        &self,
        slot: SlotId,
        conn: &H,
        mut socket: <H::Io as Transport>::Hibernating,
    ) -> Option<H::Io> {
        lock(&self.0.slots).remove(slot);
        conn.disarm();
        if let Some(w) = self.watcher() {
            socket.unwatch(&w.registry);
        }
        match H::Io::resume(socket) {
            Ok(io) => Some(io),
            Err(e) => {
                tracing::warn!(error = %e, "a hibernating connection could not wake");
                None
            }
        }
    }
}

/// Counts a connection in `$SYS/broker/clients/hibernating` while it
/// sleeps, whichever way its sleep ends.
#[derive(Debug)]
struct Counted(Hibernation);

impl Counted {
    fn new(h: Hibernation) -> Self {
        let stats = &h.0.broker.engine.stats;
        Stats::add(&stats.hibernations, 1);
        Stats::add(&stats.hibernating, 1);
        Self(h)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
             .0
            .broker
            .engine
            .stats
            .hibernating
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A hibernating connection, as its wakers see it.
struct Cell<H: Hibernator> {
    state: Mutex<State<H>>,
}

// The Arc holding it is allocated once, at the size of `Asleep`: boxing
// that variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum State<H: Hibernator> {
    /// Going to sleep: a wake-up now makes it go on at once.
    Going,
    /// Woken while going to sleep.
    Early,
    Asleep(Sleeping<H>),
    /// Woken: later wake-ups find nothing to do.
    Awake,
}

/// What a hibernating connection keeps.
struct Sleeping<H: Hibernator> {
    socket: <H::Io as Transport>::Hibernating,
    conn: H,
    slot: SlotId,
    hibernation: Counted,
}

impl<H: Hibernator> Wake for Cell<H> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        match std::mem::replace(&mut *state, State::Awake) {
            State::Going | State::Early => *state = State::Early,
            State::Asleep(s) => {
                drop(state);
                // Set by `hibernate` before anything could wake it. Without
                // it (never, in practice) the sleeper is let go on a thread
                // of its own, not here: the waker may be called with locks
                // held that handing its session back takes.
                match s.hibernation.0 .0.runtime.get().cloned() {
                    Some(runtime) => {
                        runtime.spawn(wake_up(Box::new(s)));
                    }
                    None => {
                        let _ = std::thread::Builder::new()
                            .name("petrel-release".into())
                            .spawn(move || drop(s));
                    }
                }
            }
            State::Awake => {}
        }
    }
}

/// Resume a woken connection in the task this runs in. `s` comes boxed
/// (and the box goes at once): the task's future holds it unboxed only
/// until its first poll, but is as large as that for the connection's life.
async fn wake_up<H: Hibernator>(s: Box<Sleeping<H>>) {
    let Sleeping {
        socket,
        conn,
        slot,
        hibernation,
    } = *s;
    let io = hibernation.0.undo(slot, &conn, socket);
    drop(hibernation);
    if let Some(io) = io {
        conn.resume(io).await;
    }
}

/// Connections the server wakes on its own: hibernating ones each at its
/// keep-alive deadline, and all at shutdown (the server keeps a second set
/// for its running connections, woken at shutdown).
#[derive(Debug)]
pub(crate) struct Slots {
    slots: Vec<Slot>,
    /// Free slots, lowest first: the set stays packed at the low end, so
    /// that [`Slots::compact`] can give back the room a peak left.
    free: BinaryHeap<Reverse<u32>>,
    /// Generations below this may have been used by slots given back:
    /// new slots start above it, so no old id names them.
    floor: u32,
    live: usize,
    /// Deadlines (whole seconds after `base`, rounded up: the server checks
    /// them once a second anyway) by slot and generation; entries of slots
    /// woken otherwise are skipped when they come up, and swept when they
    /// pile up.
    deadlines: BinaryHeap<Reverse<(u32, u32, u32)>>,
    base: Instant,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: BinaryHeap::new(),
            floor: 0,
            live: 0,
            deadlines: BinaryHeap::new(),
            base: Instant::now(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    /// A tag its owner may set (in what would be padding): the set of
    /// running connections marks the deadline a slot is armed for.
    tag: u32,
    waker: Option<Waker>,
}

/// A place in [`Slots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SlotId {
    index: u32,
    generation: u32,
}

/// The watcher's own token, to stop it.
const STOP: mio::Token = mio::Token(usize::MAX);

/// How a slot's index and generation share a token's bits: half each
/// where `usize` has 64 bits; where it has 32, 16 each (at most 65,535
/// hibernating connections at once there, and a generation that wraps
/// sooner: a stale event then wakes a sleeper early, which goes back to
/// sleep, never a wrong one for good).
const HALF: u32 = usize::BITS / 2;

impl SlotId {
    fn token(self) -> mio::Token {
        // Only sleepers' slots become tokens (the set of running
        // connections never does, and may be larger).
        debug_assert!(
            u64::from(self.index) < (1u64 << HALF),
            "more sleepers than a token can name"
        );
        mio::Token(pack(self.index, self.generation, HALF))
    }

    fn from_token(t: mio::Token) -> Self {
        let (index, generation) = unpack(t.0, HALF);
        Self { index, generation }
    }
}

/// An index and a generation in one `usize`, `half` bits each.
fn pack(index: u32, generation: u32, half: u32) -> usize {
    let mask = (1u64 << half) - 1;
    (((u64::from(index) & mask) << half) | (u64::from(generation) & mask)) as usize
}

fn unpack(token: usize, half: u32) -> (u32, u32) {
    let mask = (1u64 << half) - 1;
    let t = token as u64;
    (((t >> half) & mask) as u32, (t & mask) as u32)
}

impl Slots {
    /// How many connections hibernate.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live
    }

    pub(super) fn insert(&mut self, waker: Waker, deadline: Option<Instant>) -> SlotId {
        let index = self.free.pop().map(|Reverse(i)| i).unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: self.floor,
                tag: 0,
                waker: None,
            });
            u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
        });
        let slot = &mut self.slots[index as usize];
        // Within the bits a token has for it (see `HALF`).
        slot.generation = slot.generation.wrapping_add(1) & ((1u64 << HALF) - 1) as u32;
        slot.waker = Some(waker);
        slot.tag = 0;
        self.live += 1;
        let id = SlotId {
            index,
            generation: slot.generation,
        };
        if let Some(at) = deadline {
            let at = secs_after(self.base, at);
            self.deadlines.push(Reverse((at, index, id.generation)));
            if self.deadlines.len() > 2 * self.live + 1024 {
                let slots = &self.slots;
                self.deadlines.retain(|Reverse((_, i, g))| {
                    slots
                        .get(*i as usize)
                        .is_some_and(|s| s.generation == *g && s.waker.is_some())
                });
            }
        }
        id
    }

    /// The tag of slot `id` (see [`Slots::set_tag`]), if it is still there.
    pub(super) fn tag(&self, id: SlotId) -> Option<u32> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.waker.is_some())
            .map(|s| s.tag)
    }

    /// Set the tag of slot `id`, if it is still there.
    pub(super) fn set_tag(&mut self, id: SlotId, tag: u32) {
        if let Some(s) = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
        {
            s.tag = tag;
        }
    }

    /// The waker in slot `id`, if it is still there.
    pub(super) fn waker(&self, id: SlotId) -> Option<&Waker> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)?
            .waker
            .as_ref()
    }

    pub(super) fn remove(&mut self, id: SlotId) -> Option<Waker> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let waker = slot.waker.take()?;
        self.free.push(Reverse(id.index));
        self.live -= 1;
        Some(waker)
    }

    /// Give back the room of the free slots at the end, once most of the
    /// set is free (after a peak of connections): the server calls it once
    /// a second.
    pub(super) fn compact(&mut self) {
        if self.slots.len() < 64 || self.live * 4 > self.slots.len() {
            return;
        }
        let before = self.slots.len();
        while let Some(slot) = self.slots.pop_if(|s| s.waker.is_none()) {
            self.floor = self.floor.max(slot.generation);
        }
        if self.slots.len() == before {
            return;
        }
        let len = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.free.retain(|Reverse(i)| *i < len);
        self.slots.shrink_to(2 * self.slots.len());
        self.free.shrink_to(2 * self.free.len());
    }

    /// Take the wakers of the connections whose deadline has come.
    fn due(&mut self, now: Instant) -> Vec<Waker> {
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
    pub(super) fn all(&mut self) -> Vec<Waker> {
        self.deadlines.clear();
        self.live = 0;
        let mut all = Vec::new();
        for (index, slot) in (0u32..).zip(&mut self.slots) {
            slot.tag = 0;
            if let Some(w) = slot.waker.take() {
                self.free.push(Reverse(index));
                all.push(w);
            }
        }
        all
    }
}

/// The thread that watches hibernating connections' sockets: one epoll set
/// (through mio), read by a thread of its own so that a sleeping socket
/// costs the runtime nothing. A readable socket (data, or the peer gone)
/// wakes its connection through [`Slots`].
#[derive(Debug)]
pub(crate) struct Watcher {
    registry: mio::Registry,
    stop: mio::Waker,
    stopping: Arc<AtomicBool>,
}

impl Watcher {
    /// Start the thread.
    fn start(slots: Arc<Mutex<Slots>>) -> io::Result<Self> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let stop = mio::Waker::new(poll.registry(), STOP)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        std::thread::Builder::new()
            .name("petrel-hibernation".into())
            .spawn(move || watch(poll, &slots, &flag))?;
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

/// What the watcher waits on (mio's poll; a test's stand-in).
trait Poller {
    fn poll(&mut self, events: &mut mio::Events) -> io::Result<()>;
}

impl<P: Poller> Poller for &mut P {
    fn poll(&mut self, events: &mut mio::Events) -> io::Result<()> {
        (**self).poll(events)
    }
}

impl Poller for mio::Poll {
    fn poll(&mut self, events: &mut mio::Events) -> io::Result<()> {
        Self::poll(self, events, None)
    }
}

/// After a failed poll, how long the watcher waits before it polls again.
const POLL_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

fn watch(mut poll: impl Poller, slots: &Mutex<Slots>, stopping: &AtomicBool) {
    let mut events = mio::Events::with_capacity(1024);
    let mut failures = 0u64;
    loop {
        if let Err(e) = poll.poll(&mut events) {
            if stopping.load(Ordering::Acquire) {
                return;
            }
            if e.kind() != io::ErrorKind::Interrupted {
                // Never give up: sleeping connections would never wake on
                // their data again. Retry, saying so (not every time).
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::error!(error = %e, failures, "the hibernation watcher's poll failed; retrying");
                }
                std::thread::sleep(POLL_RETRY);
            }
            continue;
        }
        failures = 0;
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let wakers: Vec<Waker> = {
            let mut slots = lock(slots);
            events
                .iter()
                .filter(|e| e.token() != STOP)
                .filter_map(|e| slots.remove(SlotId::from_token(e.token())))
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Whole `unit`s from `base` to `at`, rounded up (a deadline kept this way
/// comes at most a unit late, never early), and at most `u64::MAX`.
pub(super) fn units_after(base: Instant, at: Instant, unit: Duration) -> u64 {
    let n = at
        .saturating_duration_since(base)
        .as_nanos()
        .div_ceil(unit.as_nanos().max(1));
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whole seconds from `base` to `at`, rounded up, and at most `u32::MAX`.
pub(super) fn secs_after(base: Instant, at: Instant) -> u32 {
    u32::try_from(units_after(base, at, Duration::from_secs(1))).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Deadlines in whole units are never early: a part of a unit counts
    /// as a whole one, and what is before the base is zero.
    #[test]
    fn seconds_after_the_base_round_up_and_saturate() {
        let base = Instant::now();
        assert_eq!(secs_after(base, base), 0);
        assert_eq!(secs_after(base + Duration::from_secs(3), base), 0);
        assert_eq!(secs_after(base, base + Duration::from_secs(3)), 3);
        assert_eq!(
            secs_after(base, base + Duration::from_nanos(3_000_000_001)),
            4
        );
        assert_eq!(secs_after(base, base + Duration::from_millis(1)), 1);
        // The same rounding in milliseconds (the running set's deadlines).
        let ms = Duration::from_millis(1);
        assert_eq!(units_after(base, base + Duration::from_millis(5), ms), 5);
        assert_eq!(
            units_after(base, base + Duration::from_nanos(5_000_001), ms),
            6
        );
        assert_eq!(units_after(base + ms, base, ms), 0);
        assert_eq!(
            secs_after(base, base + Duration::from_secs(u64::from(u32::MAX) + 10)),
            u32::MAX
        );
    }

    /// Tokens name slots exactly with 64-bit and with 32-bit `usize`.
    #[test]
    fn tokens_pack_index_and_generation_on_64_and_32_bit() {
        for (index, generation) in [(0, 1), (7, 65_535), (65_535, 3), (12, 40_000)] {
            assert_eq!(unpack(pack(index, generation, 16), 16), (index, generation));
            assert!(pack(index, generation, 16) <= u32::MAX as usize);
        }
        for (index, generation) in [(0, 1), (u32::MAX - 1, u32::MAX), (1 << 20, 5)] {
            if usize::BITS == 64 {
                assert_eq!(unpack(pack(index, generation, 32), 32), (index, generation));
            }
        }
        let id = SlotId {
            index: 3,
            generation: 9,
        };
        let back = SlotId::from_token(id.token());
        assert_eq!((back.index, back.generation), (3, 9));
    }

    /// A failed poll is retried: the watcher goes on waking sleepers
    /// rather than stopping for good.
    #[test]
    fn the_watcher_retries_after_a_failed_poll() {
        struct Failing {
            calls: usize,
            stopping: Arc<AtomicBool>,
        }
        impl Poller for Failing {
            fn poll(&mut self, _: &mut mio::Events) -> io::Result<()> {
                self.calls += 1;
                if self.calls == 3 {
                    self.stopping.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(io::Error::other("poll failed"))
            }
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let slots = Mutex::new(Slots::default());
        let mut poller = Failing {
            calls: 0,
            stopping: stopping.clone(),
        };
        watch(&mut poller, &slots, &stopping);
        assert_eq!(poller.calls, 3, "it stopped at the first failure");
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts its wake-ups (the set of running connections' tests use it too).
    pub(in crate::server) struct Count(pub(in crate::server) AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(in crate::server) fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn slots_wake_at_their_deadline_once_and_only_if_still_asleep() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut slots = Slots::default();
        let (a, wa) = counter();
        let (b, wb) = counter();
        let (c, wc) = counter();
        let ia = slots.insert(wa, Some(at(1)));
        let ib = slots.insert(wb, Some(at(2)));
        let ic = slots.insert(wc, None);
        assert_eq!(slots.len(), 3);
        // `a` is woken by something else first: its deadline finds nothing.
        assert!(slots.remove(ia).is_some());
        assert!(slots.remove(ia).is_none(), "removed once");
        // Its slot is reused; the stale deadline must not wake the new one.
        let (d, wd) = counter();
        let id = slots.insert(wd, Some(at(5)));
        for w in slots.due(at(3)) {
            w.wake();
        }
        assert_eq!(b.0.load(Ordering::Relaxed), 1);
        assert_eq!(d.0.load(Ordering::Relaxed), 0);
        assert!(slots.remove(ib).is_none(), "gone once woken");
        assert_eq!(slots.len(), 2);
        // Shutdown takes everyone left, deadline or not.
        for w in slots.all() {
            w.wake();
        }
        assert_eq!(c.0.load(Ordering::Relaxed), 1);
        assert_eq!(d.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.0.load(Ordering::Relaxed), 0);
        assert_eq!(slots.len(), 0);
        assert!(slots.remove(id).is_none());
        // A sleeper after the shutdown's sweep is not named by an old id.
        let (_, we) = counter();
        let _ie = slots.insert(we, None);
        assert!(slots.remove(id).is_none() && slots.remove(ia).is_none());
        assert!(slots.remove(ib).is_none() && slots.remove(ic).is_none());
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn a_peak_of_connections_gives_its_room_back() {
        let mut slots = Slots::default();
        let (_, w) = counter();
        let ids: Vec<SlotId> = (0..2000).map(|_| slots.insert(w.clone(), None)).collect();
        // Most of them stay: nothing to give back yet.
        for id in &ids[1500..] {
            assert!(slots.remove(*id).is_some());
        }
        slots.compact();
        assert_eq!(slots.slots.len(), 2000, "kept while most are in use");
        // All but the first ten go (a storm's connections hibernate or close).
        for id in &ids[10..1500] {
            assert!(slots.remove(*id).is_some());
        }
        assert!(slots.slots.capacity() >= 2000);
        slots.compact();
        assert_eq!(slots.slots.len(), 10);
        assert!(slots.slots.capacity() <= 20, "{}", slots.slots.capacity());
        assert!(slots.free.is_empty());
        // The free slots in the middle are taken lowest first, so the set
        // stays packed.
        assert!(slots.remove(ids[3]).is_some() && slots.remove(ids[7]).is_some());
        let a = slots.insert(w.clone(), None);
        assert_eq!(a.index, 3);
        let b = slots.insert(w.clone(), None);
        assert_eq!(b.index, 7);
        // New slots past the end: no id of a slot given back names them.
        let new: Vec<SlotId> = (0..100).map(|_| slots.insert(w.clone(), None)).collect();
        for id in &ids[10..] {
            assert!(slots.remove(*id).is_none());
        }
        assert_eq!(slots.len(), 110);
        for id in new {
            assert!(slots.remove(id).is_some());
        }
    }

    #[test]
    fn deadlines_of_woken_connections_do_not_pile_up() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut slots = Slots::default();
        let (_, w) = counter();
        // Connections that hibernate and wake over and over.
        for _ in 0..10_000 {
            let id = slots.insert(w.clone(), Some(far));
            assert!(slots.remove(id).is_some());
        }
        assert_eq!(slots.len(), 0);
        assert!(
            slots.deadlines.len() <= 1024 + 1,
            "{}",
            slots.deadlines.len()
        );
        assert!(slots.slots.len() == 1, "slots are reused");
    }
}
