//! Sessions by client id, as connections come and go: attach (new,
//! resumed, taken over), release (will, expiry, handover to a waiting
//! connection), expiry, and sessions restored from storage.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel_session::{Message, SessionState};
use tokio::sync::oneshot;

use super::client::{Kick, Reach};
use super::{Core, Engine, PendingWill};
use crate::core::auth::Access;
use crate::core::lock;
use crate::core::queue::{detach, SessionKey};
use crate::core::sessions::{Connected, ConnectionId, Handover, Released, NEVER};

/// What a CONNECT got from the session registry.
pub(super) enum Attach {
    /// The session is this connection's.
    Ready(Attached),
    /// Another connection holds it and has been told to let go; the session
    /// comes through the receiver once it has.
    Wait(ConnectionId, oneshot::Receiver<Handover>),
    /// A new session would pass `max_sessions`.
    Full,
    /// The session belongs to another user.
    Owned,
}

/// A session now held by a connection.
pub(super) struct Attached {
    pub(super) key: SessionKey,
    pub(super) connection: ConnectionId,
    pub(super) session_present: bool,
    pub(super) state: SessionState,
}

impl Engine {
    /// A client identifier for a client that sent none ([MQTT-3.1.3-6]),
    /// unique among the sessions that exist.
    pub(super) fn assign_client_id(&self) -> String {
        let core = lock(&self.core);
        loop {
            let n = self.next_assigned.fetch_add(1, Ordering::Relaxed);
            let id = format!("petrel-{:x}-{n}", self.instance);
            if !core.registry.exists(&id) {
                return id;
            }
        }
    }

    /// A CONNECT for `client_id` was accepted by authentication: take its
    /// session, or ask its holder to let go. With `ownership`, a session
    /// that belongs to another user is refused, and its holder is left
    /// alone.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry: u32,
        reach: &Arc<Reach>,
        access: &Arc<Access>,
        ownership: bool,
        now: Instant,
    ) -> Attach {
        let mut due = Vec::new();
        let attach = {
            let mut core = lock(&self.core);
            if let Some(key) = core.registry.data(client_id) {
                if ownership && key.access().username != access.username {
                    return Attach::Owned;
                }
            } else if core.registry.len() >= self.config.limits.max_sessions {
                return Attach::Full;
            }
            let mut created = false;
            let new = || {
                created = true;
                SessionKey::new(client_id.clone(), self.queued_bytes.clone(), access.clone())
            };
            match core
                .registry
                .connect(client_id.clone(), clean_start, expiry, reach.clone(), new)
            {
                Connected::Ready(handover) => Attach::Ready(
                    self.take(&mut core, client_id, handover, access, created, &mut due),
                ),
                Connected::TakeOver {
                    connection,
                    holder,
                    superseded,
                } => {
                    // [MQTT-3.1.4-3]: the existing connection is closed.
                    holder.kick(Kick::TakenOver);
                    if let Some(old) = superseded {
                        // Dropping its sender tells the waiting connection it lost.
                        old.cancel_handover();
                    }
                    Attach::Wait(connection, reach.await_handover())
                }
            }
        };
        self.publish_wills(due, now);
        attach
    }

    fn publish_wills(&self, wills: Vec<PendingWill>, now: Instant) {
        for w in wills {
            self.publish(w.publisher.as_ref(), w.message, now);
        }
    }

    /// Give a handed-over (or new) session to its connection. Wills that
    /// fall due are added to `due`, to publish once the lock is released.
    fn take(
        &self,
        core: &mut Core,
        client_id: &Arc<str>,
        handover: Handover,
        access: &Arc<Access>,
        created: bool,
        due: &mut Vec<PendingWill>,
    ) -> Attached {
        let key = match core.registry.data(client_id).cloned() {
            Some(key) if handover.session_present => {
                // [MQTT-3.1.3-9]: the session continues, so a will still
                // waiting for its delay is not published.
                core.wills.cancel(client_id);
                key.set_access(access.clone());
                key
            }
            Some(key) if created => key,
            old => {
                // A new session: the old one's subscriptions and queue go
                // ([MQTT-3.1.2-4]), and a will waiting on it is due now.
                if let Some(old) = old {
                    self.drop_subscriptions(&old);
                    old.end();
                }
                due.extend(core.wills.session_ended(client_id));
                let key =
                    SessionKey::new(client_id.clone(), self.queued_bytes.clone(), access.clone());
                core.registry.replace_data(client_id, key.clone());
                key
            }
        };
        key.set_online(true);
        Attached {
            key,
            connection: handover.connection,
            session_present: handover.session_present,
            state: handover.state,
        }
    }

    /// Finish a wait for a takeover: the session arrived.
    pub(super) fn take_handover(
        &self,
        client_id: &Arc<str>,
        handover: Handover,
        access: &Arc<Access>,
        now: Instant,
    ) -> Attached {
        let mut due = Vec::new();
        let attached = {
            let mut core = lock(&self.core);
            self.take(&mut core, client_id, handover, access, false, &mut due)
        };
        self.publish_wills(due, now);
        attached
    }

    /// A connection waiting to take over gave up. If the session was handed
    /// to it meanwhile, it is released again at once.
    pub(super) fn abandon(
        &self,
        client_id: &str,
        connection: ConnectionId,
        late: Option<Handover>,
        expiry: u32,
        now: Instant,
    ) {
        lock(&self.core).registry.abandon(client_id, connection);
        if let Some(h) = late {
            self.release_state(client_id, None, h.connection, h.state, expiry, None, now);
        }
    }

    /// A connection that held `key`'s session ended. Its will (if the
    /// connection did not end normally) is published or scheduled; the
    /// session passes to a waiting connection, is kept for `expiry`
    /// seconds, or ends.
    pub(super) fn release(
        &self,
        key: &SessionKey,
        connection: ConnectionId,
        state: SessionState,
        expiry: u32,
        will: Option<(Message, Duration)>,
        now: Instant,
    ) {
        let client_id = key.client_id().clone();
        self.release_state(&client_id, Some(key), connection, state, expiry, will, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn release_state(
        &self,
        client_id: &str,
        key: Option<&SessionKey>,
        connection: ConnectionId,
        mut state: SessionState,
        expiry: u32,
        will: Option<(Message, Duration)>,
        now: Instant,
    ) {
        // Kept while the client is away (or handed on): the messages in
        // flight stop sharing the read buffers they arrived in.
        state.for_each_message_mut(detach);
        let mut due = Vec::new();
        {
            let mut core = lock(&self.core);
            if !core.registry.holds(client_id, connection) {
                // Superseded or already released: nothing of ours to give.
                return;
            }
            let key = key
                .cloned()
                .or_else(|| core.registry.data(client_id).cloned());
            if let Some(k) = &key {
                k.set_online(false);
            }
            if let Some((message, delay)) = will {
                let will = PendingWill {
                    message,
                    publisher: key.clone(),
                };
                if delay.is_zero() || expiry == 0 {
                    // [MQTT-3.1.2-8]: due now (no delay, or the session ends now).
                    due.push(will);
                } else {
                    let ends =
                        (expiry != NEVER).then(|| now + Duration::from_secs(u64::from(expiry)));
                    core.wills.schedule(client_id, will, delay, ends, now);
                }
            }
            let mut released = core
                .registry
                .release(client_id, connection, state, expiry, now);
            loop {
                match released {
                    Released::HandedOver(h, reach) => {
                        let next = h.connection;
                        match reach.send_handover(h) {
                            Ok(()) => break,
                            // The waiting connection is gone: release for it.
                            Err(h) => {
                                released =
                                    core.registry.release(client_id, next, h.state, expiry, now);
                            }
                        }
                    }
                    Released::Ended(old) => {
                        // The session ended with its connection (expiry 0).
                        self.end_session(&mut core, client_id, &old, &mut due);
                        break;
                    }
                    Released::Kept | Released::NotHeld => break,
                }
            }
        }
        self.publish_wills(due, now);
    }

    fn end_session(
        &self,
        core: &mut Core,
        client_id: &str,
        key: &SessionKey,
        due: &mut Vec<PendingWill>,
    ) {
        self.drop_subscriptions(key);
        key.end();
        due.extend(core.wills.session_ended(client_id));
    }

    /// Expire sessions and publish wills that are due.
    pub(super) fn expire_sessions(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut core = lock(&self.core);
            for (client_id, key) in core.registry.expire(now) {
                self.end_session(&mut core, &client_id, &key, &mut due);
            }
            due.extend(core.wills.due(now));
        }
        self.publish_wills(due, now);
    }

    /// Recreate a detached session read from storage; its key, to restore
    /// its queue and subscriptions. `None` if a connection holds a session
    /// of that client id already.
    pub(crate) fn restore_session(
        &self,
        client_id: &str,
        owner: Option<Arc<str>>,
        state: SessionState,
        expiry: u32,
        expires_at: Option<Instant>,
    ) -> Option<SessionKey> {
        let security = self.security();
        let id: Arc<str> = Arc::from(client_id);
        let access = Access::resolve(client_id, owner, None, &security.authorizers);
        let key = SessionKey::new(id, self.queued_bytes.clone(), access);
        let mut core = lock(&self.core);
        match core
            .registry
            .insert_detached(client_id, state, expiry, expires_at, key.clone())
        {
            Ok(Some(old)) => {
                self.drop_subscriptions(&old);
                old.end();
                Some(key)
            }
            Ok(None) => Some(key),
            Err(_) => None,
        }
    }

    /// Visit every session no connection holds: its client id, state,
    /// expiry interval, when it expires and its key (to store them).
    pub(crate) fn for_each_detached(
        &self,
        mut visit: impl FnMut(&str, &SessionState, u32, Option<Instant>, &SessionKey),
    ) {
        let core = lock(&self.core);
        for (id, state, expiry, expires_at, key) in core.registry.detached() {
            visit(id, state, expiry, expires_at, key);
        }
    }
}
