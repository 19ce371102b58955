//! The connections whose tasks are running (not hibernating): their
//! wakers, which the shutdown wakes, and their deadlines, which one timer
//! task per server wakes each at its own.
//!
//! A runtime timer in each connection's future was 112 bytes of every
//! running connection, and its future's size decides the runtime's cell
//! for it in steps of 128 bytes. Here a connection keeps only the instant
//! it is armed for; the set below holds one entry per armed connection
//! (an earlier arming's entry is replaced, not left behind), and the timer
//! task sleeps until the earliest (`timers` in the server's module).

use std::collections::BTreeSet;
use std::task::Waker;

use tokio::time::Instant;

use super::hibernate::{SlotId, Slots};

/// The running connections of one server.
#[derive(Debug, Default)]
pub(super) struct Running {
    /// Their wakers.
    pub(super) slots: Slots,
    /// Their deadlines, earliest first: one entry per armed connection.
    deadlines: BTreeSet<(Instant, SlotId)>,
    /// What the timer task sleeps until (none: until it is told).
    target: Option<Instant>,
}

impl Running {
    /// Move connection `id`'s deadline from `old` (what it was armed for)
    /// to `new` (none: unarmed). Returns whether the timer task must be
    /// told (it sleeps until later than `new`).
    pub(super) fn arm(&mut self, id: SlotId, old: Option<Instant>, new: Option<Instant>) -> bool {
        if let Some(at) = old {
            self.deadlines.remove(&(at, id));
        }
        let Some(at) = new else {
            return false;
        };
        self.deadlines.insert((at, id));
        if self.target.is_some_and(|t| t <= at) {
            return false;
        }
        // Told once: it sleeps until this one from now on.
        self.target = Some(at);
        true
    }

    /// Connection `id` stops running (closed, or hibernating): its waker
    /// and its deadline go.
    pub(super) fn leave(&mut self, id: SlotId, armed: Option<Instant>) {
        if let Some(at) = armed {
            self.deadlines.remove(&(at, id));
        }
        self.slots.remove(id);
    }

    /// Take the wakers of the connections whose deadline has come (each
    /// one's entry goes; it arms again when it has looked), and note the
    /// next deadline as what the timer task sleeps until.
    pub(super) fn due(&mut self, now: Instant) -> (Vec<Waker>, Option<Instant>) {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            due.extend(self.slots.waker(id).cloned());
        }
        self.target = self.deadlines.first().map(|&(at, _)| at);
        (due, self.target)
    }

    /// Take every waker (shutdown); the deadlines go with them.
    pub(super) fn all(&mut self) -> Vec<Waker> {
        self.deadlines.clear();
        self.slots.all()
    }

    #[cfg(test)]
    fn armed(&self) -> usize {
        self.deadlines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

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
        assert!(r.arm(a, None, Some(s(10))));
        assert!(!r.arm(b, None, Some(s(20))));
        // `a` moves a thousand times: still one entry each.
        let mut old = s(10);
        for i in 0..1000 {
            let new = s(30) + Duration::from_millis(i);
            r.arm(a, Some(old), Some(new));
            old = new;
        }
        assert_eq!(r.armed(), 2);
        // At 25 s only `b` is due (a's first deadline is gone with it).
        let (due, next) = r.due(s(25));
        due.into_iter().for_each(Waker::wake);
        assert_eq!(b_count.0.load(Ordering::Relaxed), 1);
        assert_eq!(a_count.0.load(Ordering::Relaxed), 0);
        assert_eq!(next, Some(old));
        // Control: at a's deadline, `a` is woken, and nothing is left.
        let (due, next) = r.due(old);
        due.into_iter().for_each(Waker::wake);
        assert_eq!(a_count.0.load(Ordering::Relaxed), 1);
        assert_eq!((next, r.armed()), (None, 0));
        // A connection that leaves takes its deadline with it.
        assert!(r.arm(a, None, Some(s(40))));
        r.leave(a, Some(s(40)));
        assert_eq!(r.armed(), 0);
        let (due, _) = r.due(s(50));
        assert!(due.is_empty());
    }
}
