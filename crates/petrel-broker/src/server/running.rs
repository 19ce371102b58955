//! The connections whose tasks are running (not hibernating): their
//! wakers, which the shutdown wakes, and their deadlines, which one timer
//! task per server wakes each at its own.
//!
//! A runtime timer in each connection's future was 112 bytes of every
//! running connection, and its future's size decides the runtime's cell
//! for it in steps of 128 bytes. Here a connection keeps only the instant
//! it is armed for; the heap below holds 16 bytes an arming (an earlier
//! arming's entry is left behind, recognised by its slot's tag and swept
//! when they pile up), and the timer task sleeps until the earliest
//! (`timers` in the server's module).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use super::hibernate::{units_after, SlotId, Slots};

/// The running connections of one server.
#[derive(Debug)]
pub(super) struct Running {
    /// Their wakers; each slot's tag marks the deadline it is armed for
    /// (the low 32 bits of its milliseconds, never 0; 0: unarmed).
    pub(super) slots: Slots,
    /// Deadlines in milliseconds after `base` (rounded up: never early),
    /// earliest first: 16 bytes an entry. An entry whose slot no longer
    /// carries its tag was moved or removed; it is skipped when it comes
    /// up, and swept when such entries pile up.
    deadlines: BinaryHeap<Reverse<(u64, SlotId)>>,
    /// Slots armed now (the entries that count).
    armed: usize,
    base: Instant,
    /// What the timer task sleeps until (none: until it is told).
    target: Option<Instant>,
}

impl Default for Running {
    fn default() -> Self {
        Self {
            slots: Slots::default(),
            deadlines: BinaryHeap::new(),
            armed: 0,
            base: Instant::now(),
            target: None,
        }
    }
}

/// A deadline's tag in its slot.
fn tag(ms: u64) -> u32 {
    // (A stale entry 49.7 days apart may match: it wakes its connection
    // early, which looks and sleeps again.)
    ms as u32 | 1
}

impl Running {
    /// Milliseconds after `base`, rounded up.
    fn ms(&self, at: Instant) -> u64 {
        units_after(
            self.base.into_std(),
            at.into_std(),
            Duration::from_millis(1),
        )
    }

    /// Move connection `id`'s deadline to `new` (none: unarmed; whether it
    /// was armed is its slot's tag). Returns whether the timer task must be
    /// told (it sleeps until later than `new`).
    pub(super) fn arm(&mut self, id: SlotId, new: Option<Instant>) -> bool {
        if self.slots.tag(id).is_some_and(|t| t != 0) {
            self.armed = self.armed.saturating_sub(1);
        }
        self.slots.set_tag(id, 0);
        let Some(at) = new else {
            return false;
        };
        let ms = self.ms(at);
        self.deadlines.push(Reverse((ms, id)));
        self.slots.set_tag(id, tag(ms));
        self.armed += 1;
        if self.deadlines.len() > 2 * self.armed + 1024 {
            let slots = &self.slots;
            self.deadlines
                .retain(|Reverse((ms, id))| slots.tag(*id) == Some(tag(*ms)));
        }
        let at = self.base + Duration::from_millis(ms);
        if self.target.is_some_and(|t| t <= at) {
            return false;
        }
        // Told once: it sleeps until this one from now on.
        self.target = Some(at);
        true
    }

    /// Connection `id` stops running (closed, or hibernating): its waker
    /// and its deadline go.
    pub(super) fn leave(&mut self, id: SlotId) {
        self.arm(id, None);
        self.slots.remove(id);
    }

    /// Take the wakers of the connections whose deadline has come (each
    /// one is unarmed; it arms again when it has looked), and note the
    /// next deadline as what the timer task sleeps until.
    pub(super) fn due(&mut self, now: Instant) -> (Vec<Waker>, Option<Instant>) {
        let now =
            u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        let mut due = Vec::new();
        while let Some(&Reverse((ms, id))) = self.deadlines.peek() {
            if ms > now {
                break;
            }
            self.deadlines.pop();
            if self.slots.tag(id) == Some(tag(ms)) {
                self.slots.set_tag(id, 0);
                self.armed = self.armed.saturating_sub(1);
                due.extend(self.slots.waker(id).cloned());
            }
        }
        // Entries left behind at the top go now: the timer sleeps until a
        // deadline that counts.
        while let Some(&Reverse((ms, id))) = self.deadlines.peek() {
            if self.slots.tag(id) == Some(tag(ms)) {
                break;
            }
            self.deadlines.pop();
        }
        self.target = self
            .deadlines
            .peek()
            .map(|&Reverse((ms, _))| self.base + Duration::from_millis(ms));
        (due, self.target)
    }

    /// Take every waker (shutdown); the deadlines go with them.
    pub(super) fn all(&mut self) -> Vec<Waker> {
        self.deadlines.clear();
        self.armed = 0;
        self.slots.all()
    }

    #[cfg(test)]
    fn armed(&self) -> usize {
        self.armed
    }
}

#[cfg(test)]
mod tests {
    use super::super::hibernate::tests::counter as waker;
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn each_connection_is_woken_at_its_latest_arming_and_none_piles_up() {
        let mut r = Running::default();
        let t = Instant::now();
        let s = |n: u64| t + Duration::from_secs(n);
        let (a_count, a) = waker();
        let (b_count, b) = waker();
        let a = r.slots.insert(a, None);
        let b = r.slots.insert(b, None);
        // The first arming tells the timer; a later one does not, an
        // earlier one does.
        assert!(r.arm(a, Some(s(10))));
        assert!(!r.arm(b, Some(s(20))));
        // `a` moves ten thousand times: two armed, and the entries left
        // behind are swept as they pile up.
        let mut old = s(10);
        for i in 0..10_000 {
            let new = s(30) + Duration::from_millis(i);
            r.arm(a, Some(new));
            old = new;
            assert!(r.deadlines.len() <= 2 * r.armed() + 1025);
        }
        assert_eq!(r.armed(), 2);
        // At 25 s only `b` is due (a's first deadline is gone with it).
        let (due, next) = r.due(s(25));
        due.into_iter().for_each(Waker::wake);
        assert_eq!(b_count.0.load(Ordering::Relaxed), 1);
        assert_eq!(a_count.0.load(Ordering::Relaxed), 0);
        // The timer sleeps until a's last deadline, rounded up to the
        // millisecond (never early).
        let next = next.unwrap();
        assert!(next >= old && next - old < Duration::from_millis(1));
        // Control: then `a` is woken, and nothing is left.
        let (due, next) = r.due(next);
        due.into_iter().for_each(Waker::wake);
        assert_eq!(a_count.0.load(Ordering::Relaxed), 1);
        assert_eq!((next, r.armed()), (None, 0));
        assert!(r.deadlines.is_empty());
        // A connection that leaves takes its deadline with it.
        assert!(r.arm(a, Some(s(40))));
        r.leave(a);
        assert_eq!(r.armed(), 0);
        // Control: a connection armed and still there is woken then.
        assert!(!r.arm(b, Some(s(45))));
        let (due, _) = r.due(s(46));
        assert_eq!(due.len(), 1);
        let (due, _) = r.due(s(50));
        assert!(due.is_empty());
    }
}
