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
use petrel_codec::{QoS, TopicFilter, TopicName};
use petrel_session::{Message, SessionState};

use super::attach::{now_millis, stored_subscription, Attach, Attached, Restored, SessionEntries};
use super::client::Reach;
use super::connect::HANDOVER_SLACK;
use super::{Broker, Engine};
use crate::core::lock;
use crate::core::queue::QOS2;
use crate::core::router::Subscription;
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

/// What [`Broker::export_session`] took out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exported {
    /// The session, in the form [`Broker::import_session`] reads.
    Session(Vec<u8>),
    /// Nothing to move: no session, one that ended with its connection or
    /// with Clean Start, or a holder that would not let go.
    Nothing,
    /// The session belongs to another user (with `ownership` on): left
    /// alone, its connection too.
    NotYours,
}

/// What [`Broker::import_session`] brought in.
#[derive(Debug)]
pub struct Imported {
    /// The client id.
    pub client_id: String,
    /// The user the session belongs to.
    pub user: Option<String>,
    /// When the session is in this node's store (answer the node it came
    /// from then).
    pub stored: Commit,
    /// When the cluster routes its subscriptions here (let its client in
    /// then).
    pub routed: Commit,
}

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
        check_moved(table, &key)?;
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

/// What [`check_entry`] leaves to check of a moved entry before anything
/// of it is kept: a subscription's filter is one, a message's sequence
/// number is one the broker could have given (not 0, below the flag it
/// keeps in the top bit), a received identifier is not 0.
fn check_moved(table: Table, key: &[u8]) -> io::Result<()> {
    let suffix = split_child_key(key).map(|(_, s)| s);
    let ok = match table {
        Table::Subscriptions => suffix
            .and_then(|f| std::str::from_utf8(f).ok())
            .is_some_and(|f| TopicFilter::try_from(f).is_ok()),
        Table::Queue | Table::Delivery => suffix
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes)
            .is_some_and(|seq| seq != 0 && seq < QOS2 - 1),
        Table::Incoming => suffix
            .and_then(|s| <[u8; 2]>::try_from(s).ok())
            .is_some_and(|p| p != [0, 0]),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!("a bad {} entry", table.name())))
    }
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

/// The store's entries for a session of `user`: its record, its
/// `subscriptions`, its messages (those in flight in `state` first, in
/// the order they were sent, then those waiting there, then `queued`) and
/// its QoS 2 identifiers received.
fn entries_of(
    id: &str,
    user: Option<String>,
    subscriptions: &[(Box<str>, Subscription)],
    state: &SessionState,
    queued: &[(Message, Instant)],
    expiry: u32,
) -> Vec<Entry> {
    let wall = SystemTime::now();
    let now = Instant::now();
    let record = StoredSession {
        expiry,
        detached: Some(now_millis()),
        owner: user,
    };
    let mut entries = vec![(Table::Sessions, id.as_bytes().to_vec(), record.encode())];
    for (filter, s) in subscriptions {
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
    for (m, at) in queued {
        // Stored as of when it came, so its expiry keeps counting.
        let came = wall
            .checked_sub(now.saturating_duration_since(*at))
            .unwrap_or(wall);
        entries.push((Table::Queue, next(), encode_message(m, came)));
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

impl Engine {
    /// Take `client_id`'s session out of this node, for another node that
    /// takes it over: its connection (if one holds it) is closed as in a
    /// takeover, and the session leaves memory here. Its stored entries
    /// stay until [`Engine::forget_moved`] (once the other node has it),
    /// so a crash meanwhile loses nothing. With `discard` (the client
    /// connected elsewhere with Clean Start) the session ends instead.
    /// `None` if there is nothing to move (no session, one that ended with
    /// its connection, or a holder that would not let go).
    pub(crate) async fn export_session(
        &self,
        client_id: &str,
        discard: bool,
        username: Option<&str>,
    ) -> Exported {
        let (access, expiry) = {
            let core = lock(&self.core);
            let Some(v) = core.registry.session(client_id) else {
                return Exported::Nothing;
            };
            (v.data.access(), v.expiry)
        };
        if self.security().ownership && access.username.as_deref() != username {
            // Sessions belong to their users: another's client id does not
            // take this one, here or on another node.
            return Exported::NotYours;
        }
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
                        return Exported::Nothing;
                    }
                }
            }
            Attach::Full | Attach::Owned => return Exported::Nothing,
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
            return Exported::Nothing;
        }
        // Nothing more comes to it: out of the router, no longer stored (a
        // publish would leave an entry of no session), and its queue
        // closed, with what waited taken in the same step.
        let subscriptions: Vec<(Box<str>, Subscription)> = key
            .filters()
            .iter()
            .map(|(f, s)| (f.clone(), s.clone()))
            .collect();
        self.drop_subscriptions(&key);
        key.set_stored(false, 0);
        let queued = key.end_taking();
        let user = key.access().username.as_deref().map(str::to_string);
        let form = encode(
            &id,
            &entries_of(&id, user, &subscriptions, &state, &queued, expiry),
        );
        // Its entries leave the store and its form waits there, in one
        // write, until the other node has it: a crash meanwhile sends it
        // again, and a new session of the client id here starts clean.
        let mut ops = session_delete_ops(&id);
        ops.push(Op::Put {
            table: Table::Moving,
            key: id.as_bytes().to_vec(),
            value: form.clone(),
        });
        self.write(ops);
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
        self.flush_store();
        Exported::Session(form)
    }

    /// The session exported with [`Engine::export_session`] reached its
    /// new node: its form leaves this node's store.
    pub(crate) fn forget_moved(&self, client_id: &str) {
        self.write(vec![Op::Delete {
            table: Table::Moving,
            key: client_id.as_bytes().to_vec(),
        }]);
        // Out of the process at once: a kill after it must not send the
        // session again (its messages would be delivered twice).
        self.flush_store();
    }

    /// Sessions exported and not yet confirmed by their new node: client
    /// id and form.
    pub(crate) fn moving_sessions(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        Ok(store
            .scan(Table::Moving)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// Bring in a session another node exported: as it was if this node
    /// has no session of its client id (read back as a restart would, then
    /// written to the store), merged into the one it has otherwise
    /// (subscriptions it lacks are added, and the messages are queued
    /// after its own: a message whose PUBREC came is left out, as are the
    /// packet identifiers, which were the old connection's). A form that
    /// does not read back whole changes nothing.
    pub(crate) fn import_session(&self, bytes: &[u8]) -> io::Result<Imported> {
        let (id, entries) = decode(bytes)?;
        let (record, children) = split(entries.clone())?;
        let user = record.owner.clone();
        let existing = lock(&self.core).registry.data(&id).map(|k| k.access());
        if let Some(access) = &existing {
            if self.security().ownership && access.username.as_deref() != user.as_deref() {
                // Another user's session: nothing of this one goes into it.
                return Err(bad("the session here belongs to another user"));
            }
        }
        if existing.is_none() {
            let now = Instant::now();
            match self.restore_entries(
                &id,
                record,
                children.clone(),
                now,
                SystemTime::now(),
                now_millis(),
            )? {
                Restored::Back(routed) => {
                    // Written as it is in memory now; no session of the
                    // client id was here, so the store holds none of its
                    // entries (and a message stored for it since it came
                    // back has a sequence number past these).
                    let ops = entries
                        .into_iter()
                        .map(|(table, key, value)| Op::Put { table, key, value })
                        .collect();
                    let stored = self.stored(ops)?;
                    return Ok(Imported {
                        client_id: id,
                        user,
                        stored,
                        routed,
                    });
                }
                // Its expiry passed on the way: nothing to keep.
                Restored::Gone => {
                    return Ok(Imported {
                        client_id: id,
                        user,
                        stored: Commit::done(),
                        routed: Commit::done(),
                    })
                }
                // A connection took the client id meanwhile.
                Restored::Held => {}
            }
        }
        self.merge(id, user, children)
    }

    fn merge(
        &self,
        id: String,
        user: Option<String>,
        children: SessionEntries,
    ) -> io::Result<Imported> {
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
        let stored = self.stored(ops)?;
        key.append_queue(messages);
        Ok(Imported {
            client_id: id,
            user,
            stored,
            routed,
        })
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
    /// session leaves memory and the store here; its form waits in the
    /// store ([`Broker::moving_sessions`]) until [`Broker::forget_moved`].
    /// With `discard` (the client connected elsewhere with Clean Start)
    /// the session ends instead. `username`: who connected elsewhere; with
    /// `ownership` on, another user's session is not taken.
    pub async fn export_session(
        &self,
        client_id: &str,
        discard: bool,
        username: Option<&str>,
    ) -> Exported {
        self.engine
            .export_session(client_id, discard, username)
            .await
    }

    /// The session exported with [`Broker::export_session`] is safe on its
    /// new node: its form leaves this node's store.
    pub fn forget_moved(&self, client_id: &str) {
        self.engine.forget_moved(client_id);
    }

    /// Sessions exported and not yet confirmed by their new node (a crash
    /// may have come between): client id and form, to send again.
    pub fn moving_sessions(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        self.engine.moving_sessions()
    }

    /// Bring in a session [`Broker::export_session`] took out of another
    /// node: as it was if none of its client id is here, merged into the
    /// one here otherwise (its subscriptions added, its messages queued
    /// after this one's). A form that does not read back is an error, and
    /// nothing of it is kept.
    pub fn import_session(&self, bytes: &[u8]) -> io::Result<Imported> {
        self.engine.import_session(bytes)
    }

    /// The client ids of every session this node holds, connected or not.
    pub fn session_ids(&self) -> Vec<String> {
        self.engine.session_ids()
    }

    /// Whether this node holds a session of `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        lock(&self.engine.core).registry.exists(client_id)
    }
}
