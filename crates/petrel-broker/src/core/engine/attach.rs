//! Sessions by client id, as connections come and go: attach (new,
//! resumed, taken over), release (will, expiry, handover to a waiting
//! connection), expiry, and sessions restored from storage.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use petrel_codec::{SubscriptionId, TopicFilter};
use petrel_session::{Message, SessionState};
use tokio::sync::oneshot;

use super::client::{Kick, Reach};
use super::{Core, Engine, PendingWill};
use crate::core::auth::Access;
use crate::core::lock;
use crate::core::queue::{detach, SessionKey, QOS2};
use crate::core::router::Subscription;
use crate::core::sessions::{Connected, ConnectionId, Handover, Released, NEVER};
use crate::core::store::{
    decode_delivery, decode_message, decode_subscription, decode_will, encode_will,
    session_delete_ops, split_child_key, Commit, Op, Store, StoredSession, Table,
};
use crate::stats::Stats;

/// A table's entries, by the client id of their session.
type ById = HashMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// One session's entries in the tables after its own record (keys as
/// stored: [`child_key`]).
#[derive(Clone, Default)]
pub(super) struct SessionEntries {
    pub(super) subscriptions: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) queue: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) delivery: HashMap<Vec<u8>, Vec<u8>>,
    pub(super) incoming: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What became of a stored session read back.
pub(super) enum Restored {
    /// Its expiry passed while it was away: its entries are to go.
    Gone,
    /// A connection holds a session of that client id already.
    Held,
    /// Back, detached, with its subscriptions and messages; the commit
    /// is when the cluster (if any) routes its subscriptions here.
    Back(Commit),
}

/// `e`, naming the entry of `table` at `key` that could not be read.
fn named(table: Table, key: &[u8], e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{} entry {:?} can't be read: {e}",
            table.name(),
            String::from_utf8_lossy(key)
        ),
    )
}

/// A stored subscription (its key in [`Table::Subscriptions`] and its
/// value) as the router takes it, for a session of `access`.
pub(super) fn stored_subscription(
    access: &Access,
    key: &[u8],
    value: &[u8],
) -> io::Result<(TopicFilter, Subscription)> {
    let filter = split_child_key(key)
        .and_then(|(_, f)| std::str::from_utf8(f).ok())
        .and_then(|f| TopicFilter::try_from(f).ok())
        .ok_or_else(|| named(Table::Subscriptions, key, io::Error::other("bad filter")))?;
    let (options, identifier) =
        decode_subscription(value).map_err(|e| named(Table::Subscriptions, key, e))?;
    let subscription = Subscription {
        options,
        identifier: identifier.and_then(SubscriptionId::new),
        authorize: !access.receives_all(filter.as_str()),
    };
    Ok((filter, subscription))
}

/// Wall-clock milliseconds since the epoch.
pub(super) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
    /// unique among the sessions that exist, and unguessable: 128 random
    /// bits, so nobody can predict another client's id to take its session
    /// over.
    pub(super) fn assign_client_id(&self) -> String {
        let core = lock(&self.core);
        loop {
            let mut bits = [0u8; 16];
            if getrandom::getrandom(&mut bits).is_err() {
                // The operating system's generator failed (it does not once
                // booted): a keyed hash of a counter, with the process's
                // random keys, is unpredictable still.
                use std::hash::{BuildHasher, Hasher};
                let n = self.next_assigned.fetch_add(1, Ordering::Relaxed);
                for (i, chunk) in bits.chunks_mut(8).enumerate() {
                    let mut h = self.id_keys.build_hasher();
                    h.write_u64(n);
                    h.write_usize(i);
                    chunk.copy_from_slice(&h.finish().to_le_bytes());
                }
            }
            let hex: String = bits.iter().map(|b| format!("{b:02x}")).collect();
            let id = format!("petrel-{hex}");
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
        // The connection to tell to let go, told once the core is unlocked:
        // waking a hibernating connection may drop it in place (its runtime
        // gone), and dropping hands its session back, which locks the core.
        let mut to_kick = None;
        let attach = {
            let mut core = lock(&self.core);
            if let Some(key) = core.registry.data(client_id) {
                if ownership && key.access().username != access.username {
                    return Attach::Owned;
                }
            } else if core.registry.len() >= self.limits().max_sessions {
                // Room for the new session: the one offline longest ends
                // (its will, if waiting, goes out); refused only if every
                // session is connected.
                let Some((old, key)) = core.registry.evict_oldest() else {
                    return Attach::Full;
                };
                Stats::add(&self.stats.sessions_evicted, 1);
                tracing::info!(client_id = %old, "max_sessions reached: the session offline longest ends");
                self.end_session(&mut core, &old, &key, &mut due);
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
                Connected::Ready(handover) => Attach::Ready(self.take(
                    &mut core, client_id, handover, access, created, expiry, &mut due,
                )),
                Connected::TakeOver {
                    connection,
                    holder,
                    superseded,
                } => {
                    // [MQTT-3.1.4-3]: the existing connection is closed.
                    to_kick = Some(holder);
                    if let Some(old) = superseded {
                        // Dropping its sender tells the waiting connection it lost.
                        old.cancel_handover();
                    }
                    Attach::Wait(connection, reach.await_handover())
                }
            }
        };
        if let Some(holder) = to_kick {
            holder.kick(Kick::TakenOver);
        }
        self.publish_wills(due, now);
        attach
    }

    pub(super) fn publish_wills(&self, wills: Vec<PendingWill>, now: Instant) {
        for w in wills {
            let _ = self.publish(
                w.publisher.as_ref(),
                w.message,
                None,
                now,
                false,
                None,
                None,
            );
        }
    }

    /// Give a handed-over (or new) session to its connection. Wills that
    /// fall due are added to `due`, to publish once the lock is released.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &self,
        core: &mut Core,
        client_id: &Arc<str>,
        handover: Handover,
        access: &Arc<Access>,
        created: bool,
        expiry: u32,
        due: &mut Vec<PendingWill>,
    ) -> Attached {
        let key = match core.registry.data(client_id).cloned() {
            Some(key) if handover.session_present => {
                // [MQTT-3.1.3-9]: the session continues, so a will still
                // waiting for its delay is not published.
                if core.wills.cancel(client_id).is_some() {
                    self.unstore_will(client_id);
                }
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
                    self.unstore(client_id, &old);
                }
                due.extend(self.will_ended(core, client_id));
                let key =
                    SessionKey::new(client_id.clone(), self.queued_bytes.clone(), access.clone());
                core.registry.replace_data(client_id, key.clone());
                key
            }
        };
        self.store_session(client_id, &key, expiry, None);
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
        expiry: u32,
        now: Instant,
    ) -> Attached {
        let mut due = Vec::new();
        let attached = {
            let mut core = lock(&self.core);
            self.take(
                &mut core, client_id, handover, access, false, expiry, &mut due,
            )
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
                    let message = self.has_store().then(|| will.message.clone());
                    core.wills.schedule(client_id, will, delay, ends, now);
                    if let (Some(m), Some(at)) = (message, core.wills.due_at(client_id)) {
                        let due_ms =
                            now_millis() + at.saturating_duration_since(now).as_millis() as u64;
                        self.write(vec![Op::Put {
                            table: Table::Wills,
                            key: client_id.as_bytes().to_vec(),
                            value: encode_will(&m, due_ms),
                        }]);
                    }
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
                    Released::Kept => {
                        if let Some(k) = &key {
                            // Its expiry counts from now.
                            let wall = now_millis();
                            self.store_session(client_id, k, expiry, Some(wall));
                        }
                        break;
                    }
                    Released::NotHeld => break,
                }
            }
        }
        self.publish_wills(due, now);
    }

    pub(super) fn end_session(
        &self,
        core: &mut Core,
        client_id: &str,
        key: &SessionKey,
        due: &mut Vec<PendingWill>,
    ) {
        self.drop_subscriptions(key);
        key.end();
        self.unstore(client_id, key);
        due.extend(self.will_ended(core, client_id));
        if let Some(p) = &self.peers {
            p.released(client_id);
        }
    }

    /// `client_id`'s session ended: its waiting will, due now, leaves the
    /// store.
    fn will_ended(&self, core: &mut Core, client_id: &str) -> Option<PendingWill> {
        let will = core.wills.session_ended(client_id)?;
        self.unstore_will(client_id);
        Some(will)
    }

    /// A will no longer waits: not in the store either.
    fn unstore_will(&self, client_id: &str) {
        if self.has_store() {
            self.write(vec![Op::Delete {
                table: Table::Wills,
                key: client_id.as_bytes().to_vec(),
            }]);
        }
    }

    /// With a durable store: record a session that outlives its connection
    /// (`expiry` > 0), or forget one that no longer does.
    fn store_session(&self, client_id: &str, key: &SessionKey, expiry: u32, detached: Option<u64>) {
        if !self.has_store() {
            return;
        }
        if expiry == 0 {
            // It ends with its connection: nothing of it may come back.
            self.unstore(client_id, key);
            return;
        }
        key.set_stored(true, 1);
        let record = StoredSession {
            expiry,
            detached,
            owner: key.access().username.as_deref().map(str::to_string),
        };
        self.write(vec![Op::Put {
            table: Table::Sessions,
            key: client_id.as_bytes().to_vec(),
            value: record.encode(),
        }]);
    }

    /// Remove a session and all it had from the durable store.
    fn unstore(&self, client_id: &str, key: &SessionKey) {
        if !self.has_store() || !key.is_stored() {
            return;
        }
        key.set_stored(false, 0);
        self.write(session_delete_ops(client_id));
    }

    /// Expire sessions and publish wills that are due.
    pub(super) fn expire_sessions(&self, now: Instant) {
        let mut due = Vec::new();
        {
            let mut core = lock(&self.core);
            for (client_id, key) in core.registry.expire(now) {
                self.end_session(&mut core, &client_id, &key, &mut due);
            }
            for (client_id, will) in core.wills.due_by_client(now) {
                self.unstore_will(&client_id);
                due.push(will);
            }
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

    /// Read back the sessions the durable store holds (before the first
    /// client): each with its subscriptions, its messages not yet
    /// delivered (those sent go out again with the packet identifiers they
    /// had, and those whose PUBREC came as PUBREL), and the QoS 2
    /// identifiers received from it awaiting PUBREL. A session whose expiry
    /// passed while the broker was down is dropped (a session still held by
    /// a connection when the broker stopped counts its expiry from now), as
    /// are entries of sessions that no longer exist. Returns how many
    /// sessions came back.
    pub(super) fn restore_sessions(&self, store: &dyn Store) -> io::Result<usize> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_ms = now_millis();
        // Each session's entries, by client id.
        let mut children: HashMap<Table, ById> = HashMap::new();
        for table in Table::SESSION_CHILDREN {
            let by_id = children.entry(table).or_default();
            for (key, value) in store.scan(table)? {
                let Some((id, _)) = split_child_key(&key) else {
                    return Err(named(table, &key, io::Error::other("no client id")));
                };
                by_id.entry(id.to_string()).or_default().push((key, value));
            }
        }
        let take = |children: &mut HashMap<Table, ById>, table: Table, id: &str| {
            children
                .get_mut(&table)
                .and_then(|m| m.remove(id))
                .unwrap_or_default()
        };
        let mut gone = Vec::new();
        let mut restored = 0;
        for (id_bytes, value) in store.scan(Table::Sessions)? {
            let id = std::str::from_utf8(&id_bytes)
                .map_err(|e| named(Table::Sessions, &id_bytes, io::Error::other(e)))?
                .to_string();
            let record =
                StoredSession::decode(&value).map_err(|e| named(Table::Sessions, &id_bytes, e))?;
            let entries = SessionEntries {
                subscriptions: take(&mut children, Table::Subscriptions, &id),
                queue: take(&mut children, Table::Queue, &id),
                delivery: take(&mut children, Table::Delivery, &id)
                    .into_iter()
                    .collect(),
                incoming: take(&mut children, Table::Incoming, &id),
            };
            match self.restore_entries(&id, record, entries, now, wall, wall_ms)? {
                Restored::Gone => gone.push(id),
                Restored::Held => {}
                Restored::Back(_) => restored += 1,
            }
        }
        // Wills waiting for their delay: due when they were, or at once if
        // that passed while the broker was down.
        for (id_bytes, value) in store.scan(Table::Wills)? {
            let (message, due_ms) =
                decode_will(&value).map_err(|e| named(Table::Wills, &id_bytes, e))?;
            let id = String::from_utf8_lossy(&id_bytes).into_owned();
            let mut core = lock(&self.core);
            let publisher = core.registry.data(&id).cloned();
            let delay = Duration::from_millis(due_ms.saturating_sub(wall_ms));
            core.wills
                .schedule(&id, PendingWill { message, publisher }, delay, None, now);
        }
        // Expired sessions, and what is left of sessions that are gone.
        let mut ops = Vec::new();
        for id in gone
            .iter()
            .cloned()
            .chain(children.values().flat_map(|m| m.keys().cloned()))
        {
            ops.extend(session_delete_ops(&id));
        }
        if !ops.is_empty() {
            store.commit(ops)?;
        }
        Ok(restored)
    }

    /// Recreate session `id` from its stored `record` and `entries` (see
    /// [`Engine::restore_sessions`]); what became of it.
    pub(super) fn restore_entries(
        &self,
        id: &str,
        record: StoredSession,
        entries: SessionEntries,
        now: Instant,
        wall: SystemTime,
        wall_ms: u64,
    ) -> io::Result<Restored> {
        let SessionEntries {
            subscriptions,
            queue,
            delivery,
            incoming,
        } = entries;
        let expires_at = if record.expiry == NEVER {
            None
        } else {
            let since = record.detached.unwrap_or(wall_ms);
            let down = wall_ms.saturating_sub(since) / 1000;
            if down >= u64::from(record.expiry) {
                return Ok(Restored::Gone);
            }
            Some(now + Duration::from_secs(u64::from(record.expiry) - down))
        };
        let mut state = SessionState::new();
        let mut queued = Vec::new();
        let mut delivering = Vec::new();
        let mut expired = Vec::new();
        let mut last_seq = 0;
        for (key, value) in queue {
            let seq = split_child_key(&key)
                .and_then(|(_, s)| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| {
                    named(Table::Queue, &key, io::Error::other("bad sequence number"))
                })?;
            last_seq = last_seq.max(seq);
            let (mut message, at) =
                decode_message(&value, now, wall).map_err(|e| named(Table::Queue, &key, e))?;
            if let Some(interval) = message.properties.message_expiry_interval() {
                let waited = now.saturating_duration_since(at).as_secs();
                if waited >= u64::from(interval) {
                    expired.push(key);
                    continue;
                }
                let left = u32::try_from(u64::from(interval) - waited).unwrap_or(interval);
                message.properties.set_message_expiry_interval(Some(left));
            }
            match delivery.get(&key) {
                Some(d) => {
                    let (pid, released) =
                        decode_delivery(d).map_err(|e| named(Table::Delivery, &key, e))?;
                    match state.restore_outgoing(now, pid, message.clone(), released) {
                        Some(mid) => delivering.push((mid, seq)),
                        None => queued.push((message, now, seq)),
                    }
                }
                None => queued.push((message, at, seq)),
            }
        }
        for (key, _) in incoming {
            let pid = split_child_key(&key)
                .and_then(|(_, s)| <[u8; 2]>::try_from(s).ok())
                .map(u16::from_be_bytes)
                .ok_or_else(|| {
                    named(
                        Table::Incoming,
                        &key,
                        io::Error::other("bad packet identifier"),
                    )
                })?;
            state.restore_incoming(pid);
        }
        let owner = record.owner.map(Arc::from);
        let Some(key) = self.restore_session(id, owner, state, record.expiry, expires_at) else {
            return Ok(Restored::Held);
        };
        key.set_stored(true, last_seq + 1);
        for (mid, seq) in delivering {
            key.delivering(mid.0, seq | QOS2);
        }
        key.restore_queue(queued);
        let mut routed = Commit::done();
        let access = key.access();
        for (k, v) in subscriptions {
            let (filter, subscription) = stored_subscription(&access, &k, &v)?;
            // Given before: charged, never refused.
            if let Some((_, c)) = self.subscribe_within(&key, &filter, subscription, false) {
                routed = routed.and(c);
            }
        }
        if !expired.is_empty() {
            self.write(
                expired
                    .into_iter()
                    .map(|key| Op::Delete {
                        table: Table::Queue,
                        key,
                    })
                    .collect(),
            );
        }
        Ok(Restored::Back(routed))
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
