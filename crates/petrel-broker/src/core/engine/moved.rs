//! Sessions that move between the nodes of a cluster: taken out of this
//! node (its connection closed as in any takeover, 0x8E) in the form the
//! durable store keeps them, and brought into another node, as it was if
//! that node has no session of the client id, merged into the one it has
//! otherwise.
//!
//! The form is the store's own: the session's record and the entries of
//! its subscriptions, messages (those in flight with their packet
//! identifiers) and QoS 2 identifiers awaiting PUBREL. The node that
//! receives one writes it to its store and reads it back as a restart
//! would, with the same checks.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use petrel_codec::{QoS, TopicName};
use petrel_session::{Message, SessionState};

use super::attach::{now_millis, stored_subscription, Attach, Attached, Restored, SessionEntries};
use super::client::Reach;
use super::connect::HANDOVER_SLACK;
use super::{Broker, Engine};
use crate::core::lock;
use crate::core::sessions::Released;
use crate::core::store::{
    check_entry, child_key, decode_delivery, decode_message, encode_delivery, encode_message,
    encode_subscription, session_delete_ops, split_child_key, Commit, Op, StoredSession, Table,
};

/// The first bytes of a moved session's form.
const MAGIC: &[u8; 4] = b"PSM1";

/// The most entries one moved session may carry (a peer's bytes are
/// checked like a client's).
const MAX_ENTRIES: usize = 1 << 22;

/// One entry of a moved session: its table, key and value as stored.
type Entry = (Table, Vec<u8>, Vec<u8>);

/// The tables a moved session's entries may be in.
const TABLES: [Table; 5] = [
    Table::Sessions,
    Table::Subscriptions,
    Table::Queue,
    Table::Delivery,
    Table::Incoming,
];

/// What stands for a message whose PUBREC came: only PUBREL is left to
/// send, so the message itself is no longer kept in memory.
fn released_placeholder() -> Message {
    let topic = TopicName::try_from("$petrel/released").unwrap_or_else(|_| unreachable!());
    Message::new(topic, Bytes::new(), QoS::ExactlyOnce)
}

fn encode(client_id: &str, entries: &[Entry]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(client_id.len() as u32).to_be_bytes());
    out.extend_from_slice(client_id.as_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (table, key, value) in entries {
        let t = TABLES.iter().position(|t| t == table).unwrap_or(0) as u8;
        out.push(t);
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn bad(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("moved session: {what}"))
}

/// Read back what [`encode`] wrote: the client id and the entries, each
/// checked as `petrel store check` checks the store's, and each of that
/// client id's session.
fn decode(bytes: &[u8]) -> io::Result<(String, Vec<Entry>)> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return Err(bad("unknown form"));
    }
    let n = r.len()?;
    let id = std::str::from_utf8(r.take(n)?)
        .map_err(|_| bad("client id not UTF-8"))?
        .to_string();
    if id.is_empty() || id.contains('\0') {
        return Err(bad("bad client id"));
    }
    let count = r.len()?;
    if count > MAX_ENTRIES {
        return Err(bad("too many entries"));
    }
    let mut entries = Vec::new();
    let mut records = 0;
    for _ in 0..count {
        let t = r.take(1)?[0];
        let table = *TABLES.get(t as usize).ok_or_else(|| bad("unknown table"))?;
        let n = r.len()?;
        let key = r.take(n)?.to_vec();
        let n = r.len()?;
        let value = r.take(n)?.to_vec();
        check_entry(table, &key, &value)?;
        let owner = if table == Table::Sessions {
            records += 1;
            std::str::from_utf8(&key).ok()
        } else {
            split_child_key(&key).map(|(id, _)| id)
        };
        if owner != Some(id.as_str()) {
            return Err(bad("an entry of another session"));
        }
        entries.push((table, key, value));
    }
    if records != 1 {
        return Err(bad("not one session record"));
    }
    if !r.0.is_empty() {
        return Err(bad("bytes after the entries"));
    }
    Ok((id, entries))
}

/// What is left to read of a moved session's form.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn len(&mut self) -> io::Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

impl Engine {
    /// Take `client_id`'s session out of this node, for another node that
    /// takes it over: its connection (if one holds it) is closed as in a
    /// takeover, and the session leaves memory here. Its stored entries
    /// stay until [`Engine::forget_moved`] (once the other node has it),
    /// so a crash meanwhile loses nothing. With `discard` (the client
    /// connected elsewhere with Clean Start) the session ends instead.
    /// `None` if there is nothing to move (no session, one that ended with
    /// its connection, or a holder that would not let go).
    pub(crate) async fn export_session(&self, client_id: &str, discard: bool) -> Option<Vec<u8>> {
        let (access, expiry) = {
            let core = lock(&self.core);
            let v = core.registry.session(client_id)?;
            (v.data.access(), v.expiry)
        };
        let id: Arc<str> = Arc::from(client_id);
        // A stand-in for the connection on the other node: it takes the
        // session here as a local CONNECT would.
        let reach = Arc::new(Reach::default());
        let now = Instant::now();
        let expiry = if discard { 0 } else { expiry };
        let attached = match self.attach(&id, discard, expiry, &reach, &access, false, now) {
            Attach::Ready(a) => a,
            Attach::Wait(connection, mut rx) => {
                let limit = Duration::from_secs(self.limits().connect_timeout) + HANDOVER_SLACK;
                let handover = tokio::time::timeout(limit, &mut rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .or_else(|| {
                        rx.close();
                        rx.try_recv().ok()
                    });
                match handover {
                    Some(h) => self.take_handover(&id, h, &access, expiry, now),
                    None => {
                        self.abandon(&id, connection, None, expiry, now);
                        return None;
                    }
                }
            }
            Attach::Full | Attach::Owned => return None,
        };
        let Attached {
            key,
            connection,
            state,
            session_present,
        } = attached;
        if discard || !session_present || expiry == 0 {
            // It ends here (its will, if any, as any ended session's).
            self.release(&key, connection, SessionState::new(), 0, None, now);
            return None;
        }
        let entries = self.entries_of(&id, &key, &state, expiry);
        // Out of memory here, its stored entries kept.
        {
            let mut core = lock(&self.core);
            let mut released = core
                .registry
                .release(&id, connection, SessionState::new(), 0, now);
            // A local CONNECT of the same client id that came meanwhile
            // starts afresh.
            while let Released::HandedOver(h, r) = released {
                let next = h.connection;
                match r.send_handover(h) {
                    Ok(()) => break,
                    Err(h) => {
                        released = core.registry.release(&id, next, h.state, 0, now);
                    }
                }
            }
        }
        self.drop_subscriptions(&key);
        key.end();
        Some(encode(&id, &entries))
    }

    /// The store's entries for a session: its record, subscriptions,
    /// messages (in flight first, in the order they were sent, then those
    /// waiting) and QoS 2 identifiers received.
    fn entries_of(
        &self,
        id: &str,
        key: &crate::core::queue::SessionKey,
        state: &SessionState,
        expiry: u32,
    ) -> Vec<Entry> {
        let wall = SystemTime::now();
        let now = Instant::now();
        let record = StoredSession {
            expiry,
            detached: Some(now_millis()),
            owner: key.access().username.as_deref().map(str::to_string),
        };
        let mut entries = vec![(Table::Sessions, id.as_bytes().to_vec(), record.encode())];
        for (filter, s) in key.filters().iter() {
            entries.push((
                Table::Subscriptions,
                child_key(id, filter.as_bytes()),
                encode_subscription(&s.options, s.identifier.map(|i| i.get())),
            ));
        }
        let mut seq = 0u64;
        let mut next = || {
            seq += 1;
            child_key(id, &seq.to_be_bytes())
        };
        for (pid, m) in state.outgoing_in_order() {
            let k = next();
            let (message, released) = match m {
                Some((m, _)) => (encode_message(m, wall), false),
                None => (encode_message(&released_placeholder(), wall), true),
            };
            entries.push((Table::Queue, k.clone(), message));
            entries.push((Table::Delivery, k, encode_delivery(pid, released)));
        }
        for (m, _) in state.pending_messages() {
            entries.push((Table::Queue, next(), encode_message(m, wall)));
        }
        for (m, at) in key.queued() {
            // Stored as of when it came, so its expiry keeps counting.
            let came = wall
                .checked_sub(now.saturating_duration_since(at))
                .unwrap_or(wall);
            entries.push((Table::Queue, next(), encode_message(&m, came)));
        }
        for pid in state.incoming_ids() {
            entries.push((
                Table::Incoming,
                child_key(id, &pid.to_be_bytes()),
                Vec::new(),
            ));
        }
        entries
    }

    /// The session exported with [`Engine::export_session`] reached its
    /// new node: its entries leave this node's store, unless a connection
    /// here holds a session of that client id again.
    pub(crate) fn forget_moved(&self, client_id: &str) {
        if lock(&self.core).registry.exists(client_id) {
            return;
        }
        self.write(session_delete_ops(client_id));
    }

    /// Bring in a session another node exported: as it was if this node
    /// has no session of its client id (written to the store, then read
    /// back as a restart would), merged into the one it has otherwise
    /// (subscriptions it lacks are added, and the messages are queued
    /// after its own: a message whose PUBREC came is left out, as are the
    /// packet identifiers, which were the old connection's). The commit
    /// is when the store has it. Returns the client id.
    pub(crate) fn import_session(&self, bytes: &[u8]) -> io::Result<(String, Commit)> {
        let (id, entries) = decode(bytes)?;
        let exists = lock(&self.core).registry.exists(&id);
        if !exists {
            let mut ops = session_delete_ops(&id);
            ops.extend(entries.iter().map(|(table, key, value)| Op::Put {
                table: *table,
                key: key.clone(),
                value: value.clone(),
            }));
            let commit = self.stored(ops)?;
            let (record, children) = split(entries)?;
            let now = Instant::now();
            match self.restore_entries(
                &id,
                record,
                children.clone(),
                now,
                SystemTime::now(),
                now_millis(),
            )? {
                Restored::Back(routed) => return Ok((id, commit.and(routed))),
                Restored::Gone => {
                    self.write(session_delete_ops(&id));
                    return Ok((id, commit));
                }
                // A connection took the client id meanwhile.
                Restored::Held => return self.merge(id, children).map(|c| (c.0, c.1.and(commit))),
            }
        }
        let (_, children) = split(entries)?;
        self.merge(id, children)
    }

    fn merge(&self, id: String, children: SessionEntries) -> io::Result<(String, Commit)> {
        let Some(key) = lock(&self.core).registry.data(&id).cloned() else {
            return Err(bad("the session ended while it was merged"));
        };
        let access = key.access();
        let mut ops = Vec::new();
        let mut routed = Commit::done();
        for (k, v) in children.subscriptions {
            let (filter, subscription) = stored_subscription(&access, &k, &v)?;
            if key.filters().contains_key(filter.as_str()) {
                continue;
            }
            if let Some((_, c)) = self.subscribe_within(&key, &filter, subscription, false) {
                routed = routed.and(c);
            }
            if key.is_stored() {
                ops.push(Op::Put {
                    table: Table::Subscriptions,
                    key: child_key(&id, filter.as_str().as_bytes()),
                    value: v,
                });
            }
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut messages = Vec::new();
        for (k, v) in children.queue {
            if let Some(d) = children.delivery.get(&k) {
                if decode_delivery(d)?.1 {
                    // Received already; only its PUBREL was left.
                    continue;
                }
            }
            let (message, at) = decode_message(&v, now, wall)?;
            let seq = (message.qos != QoS::AtMostOnce)
                .then(|| key.next_seq())
                .flatten();
            if let Some(seq) = seq {
                ops.push(Op::Put {
                    table: Table::Queue,
                    key: child_key(&id, &seq.to_be_bytes()),
                    value: encode_message(&message, wall),
                });
            }
            messages.push((message, at, seq.unwrap_or(0)));
        }
        // Stored before they can be sent: what a client acknowledges
        // here is in this node's store.
        let commit = self.stored(ops)?;
        key.append_queue(messages);
        Ok((id, commit.and(routed)))
    }

    /// Ids of every session this node holds, connected or not.
    pub(crate) fn session_ids(&self) -> Vec<String> {
        lock(&self.core)
            .registry
            .sessions()
            .map(|s| s.client_id.to_string())
            .collect()
    }
}

/// A moved session's record and its other entries.
fn split(entries: Vec<Entry>) -> io::Result<(StoredSession, SessionEntries)> {
    let mut record = None;
    let mut children = SessionEntries::default();
    for (table, key, value) in entries {
        match table {
            Table::Sessions => record = Some(StoredSession::decode(&value)?),
            Table::Subscriptions => children.subscriptions.push((key, value)),
            Table::Queue => children.queue.push((key, value)),
            Table::Delivery => {
                children.delivery.insert(key, value);
            }
            Table::Incoming => children.incoming.push((key, value)),
            _ => return Err(bad("an entry of no session table")),
        }
    }
    Ok((record.ok_or_else(|| bad("no session record"))?, children))
}

impl Broker {
    /// Take `client_id`'s session out of this node for another node of a
    /// cluster, in a form [`Broker::import_session`] reads: its connection
    /// here (if any) is closed with 0x8E Session taken over, and the
    /// session leaves memory. Its entries stay in this node's store until
    /// [`Broker::forget_moved`]. With `discard` (the client connected
    /// elsewhere with Clean Start) the session ends instead. `None` when
    /// there is nothing to move.
    pub async fn export_session(&self, client_id: &str, discard: bool) -> Option<Vec<u8>> {
        self.engine.export_session(client_id, discard).await
    }

    /// The session exported with [`Broker::export_session`] is safe on its
    /// new node: its entries leave this node's store.
    pub fn forget_moved(&self, client_id: &str) {
        self.engine.forget_moved(client_id);
    }

    /// Bring in a session [`Broker::export_session`] took out of another
    /// node: as it was if none of its client id is here, merged into the
    /// one here otherwise (its subscriptions added, its messages queued
    /// after this one's). Returns the client id, and the commit after
    /// which the session is in this node's store. A form that does not
    /// read back is an error, and nothing of it is kept.
    pub fn import_session(&self, bytes: &[u8]) -> io::Result<(String, Commit)> {
        self.engine.import_session(bytes)
    }

    /// The client ids of every session this node holds, connected or not.
    pub fn session_ids(&self) -> Vec<String> {
        self.engine.session_ids()
    }
}
