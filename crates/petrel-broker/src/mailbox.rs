//! Each session's queue of messages waiting to be sent: filled by publishers
//! (any task), drained by the connection that holds the session. The same
//! queue is the offline queue while no connection does.
//!
//! ## Overflow policy
//! A session's queue holds at most `max_queued_messages` messages and
//! `max_queued_bytes` bytes (topic, properties and payload), and all queues
//! together at most `max_queued_bytes_total`. A message that does not fit is dropped
//! and counted (`$SYS/broker/publish/messages/dropped`); the publisher is
//! never slowed and other subscribers are unaffected. QoS 0 messages are
//! queued for a disconnected session only with `queue_qos0_offline`. QoS 1/2
//! messages already handed to the connection (in flight, or acknowledged to
//! us as the publisher's receiver) are never dropped by this policy: they
//! live in the session state and survive reconnects and takeovers.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use petrel_codec::QoS;
use petrel_session::Message;

use crate::config::Limits;
use crate::core::small::SmallMap;
use crate::stats::Stats;
use crate::Subscription;

/// A message waiting, with when it was queued (its Message Expiry Interval
/// counts from then).
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) message: Message,
    pub(crate) at: Instant,
}

/// What a queued message costs: topic, properties and payload.
pub(crate) fn message_size(m: &Message) -> usize {
    m.topic.as_str().len() + m.properties.as_wire().len() + m.payload.len()
}

/// Give a message kept for long (a will, a retained message) allocations of
/// its own: decoded, its topic and payload are slices of the buffer its
/// packet was read into, and would keep all of that buffer alive.
pub(crate) fn detach(m: &mut Message) {
    m.topic = m.topic.detached();
    m.payload = bytes::Bytes::copy_from_slice(&m.payload);
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Boxed, and dropped while the session's connection hibernates with
    /// nothing queued: an idle session pays one pointer for it.
    #[allow(clippy::box_collection)] // 8 bytes instead of 32, on purpose
    queue: Option<Box<VecDeque<Queued>>>,
    bytes: usize,
    /// Bytes in every mailbox of the broker.
    total: Arc<AtomicUsize>,
    /// A connection holds the session.
    pub(crate) online: bool,
    /// The session ended: nothing is queued any more.
    ended: bool,
    /// Wakes the connection holding the session (its task, or the
    /// connection itself while it hibernates) when a message comes.
    pub(crate) waker: Option<Waker>,
    /// A message came to an empty queue since the connection last looked.
    signal: bool,
}

impl Mailbox {
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    fn queue(&mut self) -> &mut VecDeque<Queued> {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Give back the queue's memory if nothing waits (a hibernating
    /// connection's session).
    pub(crate) fn compact(&mut self) {
        if self.is_empty() {
            self.queue = None;
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Queued> {
        let q = self.queue.as_mut()?.pop_front()?;
        let size = message_size(&q.message);
        self.bytes -= size;
        self.total.fetch_sub(size, Ordering::Relaxed);
        Some(q)
    }

    /// Put back a message taken but not sent, at the front.
    pub(crate) fn unpop(&mut self, q: Queued) {
        let size = message_size(&q.message);
        self.bytes += size;
        self.total.fetch_add(size, Ordering::Relaxed);
        self.queue().push_front(q);
    }

    pub(crate) fn clear(&mut self) {
        self.queue = None;
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
    }
}

/// One session's shared part: its queue and its subscriptions.
#[derive(Debug)]
pub(crate) struct SessionShared {
    pub(crate) client_id: Arc<str>,
    mailbox: Mutex<Mailbox>,
    /// The filters this session subscribes to and their options, to remove
    /// them when it ends and to store them.
    /// (Each filter as a plain string: half the size of a `TopicFilter`.)
    pub(crate) filters: Mutex<SmallMap<Box<str>, Subscription>>,
}

/// A session as the router knows it: compared and hashed by identity, so a
/// client id reused after its session ended is a different subscriber.
#[derive(Clone, Debug)]
pub(crate) struct SessionKey(pub(crate) Arc<SessionShared>);

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SessionKey {}

impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

/// Lock a mutex, whatever a panicking holder left: every structure guarded
/// here stays consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SessionKey {
    pub(crate) fn new(client_id: Arc<str>, total: Arc<AtomicUsize>) -> Self {
        Self(Arc::new(SessionShared {
            client_id,
            mailbox: Mutex::new(Mailbox {
                queue: None,
                bytes: 0,
                total,
                online: false,
                ended: false,
                waker: None,
                signal: false,
            }),
            filters: Mutex::new(SmallMap::new()),
        }))
    }

    pub(crate) fn mailbox(&self) -> MutexGuard<'_, Mailbox> {
        lock(&self.0.mailbox)
    }

    /// Queue a message by the overflow policy; whether it was queued.
    pub(crate) fn push(
        &self,
        message: Message,
        now: Instant,
        limits: &Limits,
        stats: &Stats,
    ) -> bool {
        let mut mb = self.mailbox();
        if mb.ended {
            return false;
        }
        let qos0 = message.qos == QoS::AtMostOnce;
        if qos0 && !mb.online && !limits.queue_qos0_offline {
            return false;
        }
        let size = message_size(&message);
        if mb.len() >= limits.max_queued_messages
            || mb.bytes + size > limits.max_queued_bytes
            || mb.total.load(Ordering::Relaxed) + size > limits.max_queued_bytes_total
        {
            drop(mb);
            let counter = if qos0 {
                &stats.dropped_qos0
            } else {
                &stats.dropped_queue_full
            };
            Stats::add(counter, 1);
            return false;
        }
        let wake = mb.is_empty();
        mb.bytes += size;
        mb.total.fetch_add(size, Ordering::Relaxed);
        mb.queue().push_back(Queued { message, at: now });
        let waker = if wake {
            mb.signal = true;
            mb.waker.take()
        } else {
            None
        };
        drop(mb);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Copies of the messages waiting, oldest first (to store them).
    pub(crate) fn queued(&self) -> Vec<(Message, Instant)> {
        self.mailbox()
            .queue
            .iter()
            .flat_map(|q| q.iter())
            .map(|q| (q.message.clone(), q.at))
            .collect()
    }

    /// Put back messages restored from storage, whatever the QoS 0 policy.
    pub(crate) fn restore_queue(&self, messages: Vec<(Message, Instant)>) {
        let mut mb = self.mailbox();
        for (message, at) in messages {
            let size = message_size(&message);
            mb.bytes += size;
            mb.total.fetch_add(size, Ordering::Relaxed);
            mb.queue().push_back(Queued { message, at });
        }
    }

    /// The session ended: drop what waits and refuse more.
    pub(crate) fn end(&self) {
        let mut mb = self.mailbox();
        mb.ended = true;
        mb.online = false;
        mb.clear();
    }

    /// Ready once a message came to the empty queue since the last time
    /// it was.
    pub(crate) fn poll_signal(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut mb = self.mailbox();
        if std::mem::take(&mut mb.signal) {
            return std::task::Poll::Ready(());
        }
        crate::broker::set_waker(&mut mb.waker, cx.waker());
        std::task::Poll::Pending
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.mailbox().online = online;
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
