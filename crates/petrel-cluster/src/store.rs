//! The Raft log, vote and snapshot, kept in the broker's own store (the
//! table [`Table::Cluster`]), so a restarted node rejoins from its own data
//! directory; and the state machine they build (the routes and session
//! owners, and the retained messages, which it keeps in the broker).
//!
//! Keys in the table: `v` the vote, `c` the last committed log id, `p` the
//! last purged one, `s` the current snapshot, and `l` with the index
//! (8 bytes, big-endian) for each entry. The log is also kept in memory
//! (it holds route and ownership changes and retained messages, and is
//! purged behind each snapshot), so reading it for replication never
//! touches the disk.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::io::{self, Cursor};
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use petrel_broker::core::store::{decode_message, encode_message, wall_time};
use petrel_broker::{Broker, Op, Store, Table};
use petrel_session::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::sync::{lock, read, write as write_lock};
use crate::types::{Applied, Command, NodeId, Routes, SnapshotBytes, SnapshotData, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const VOTE: &[u8] = b"v";
const COMMITTED: &[u8] = b"c";
const PURGED: &[u8] = b"p";
const SNAPSHOT: &[u8] = b"s";
const RUN: &[u8] = b"r";

/// This start's run number: above the last start's (kept in the store) and
/// at least the time in nanoseconds, so a write from an earlier run that
/// arrives late is known for one (see [`crate::types::Origin`]).
pub(crate) async fn next_run(store: &dyn Store) -> io::Result<u64> {
    let last = store
        .scan(Table::Cluster)?
        .into_iter()
        .find(|(k, _)| k == RUN)
        .map(|(_, v)| decode::<u64>(&v))
        .transpose()?
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let run = now.max(last.saturating_add(1));
    write(
        store,
        vec![Op::Put {
            table: Table::Cluster,
            key: RUN.to_vec(),
            value: encode(&run),
        }],
    )
    .await?;
    Ok(run)
}

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'l');
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl ToString,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

/// The format of what this module stores, and of the snapshots nodes
/// send each other: the first bytes of each value. One of another format
/// (written by another version of Petrel) is refused, with this said,
/// rather than misread.
const FORMAT: &[u8; 4] = b"PCl1";

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = FORMAT.to_vec();
    // Only our own types, which always serialise.
    let _ = bincode::serialize_into(&mut out, v);
    out
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    match bytes.strip_prefix(FORMAT) {
        Some(rest) => bincode::deserialize(rest).map_err(io::Error::other),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "cluster data that does not begin {:?}, the format this version of Petrel \
                 reads (it was written by another version)",
                String::from_utf8_lossy(FORMAT)
            ),
        )),
    }
}

/// Write `ops` to the store and make them survive the process (and a power
/// loss, with `fsync` durability) before returning.
async fn write(store: &dyn Store, ops: Vec<Op>) -> io::Result<()> {
    let commit = store.commit(ops)?;
    store.flush()?;
    futures::future::poll_fn(|cx| commit.poll(cx)).await
}

/// What the log store holds in memory.
#[derive(Debug, Default)]
struct Log {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The Raft log store.
#[derive(Clone, Debug)]
pub struct LogStore {
    store: Arc<dyn Store>,
    log: Arc<Mutex<Log>>,
}

impl LogStore {
    /// The log kept in `store`, read back from it.
    pub fn open(store: Arc<dyn Store>) -> io::Result<Self> {
        let mut log = Log::default();
        for (k, v) in store.scan(Table::Cluster)? {
            match k.as_slice() {
                VOTE => log.vote = Some(decode(&v)?),
                COMMITTED => log.committed = decode(&v)?,
                PURGED => log.purged = decode(&v)?,
                [b'l', index @ ..] if index.len() == 8 => {
                    let entry: Entry<TypeConfig> = decode(&v)?;
                    log.entries.insert(entry.log_id.index, entry);
                }
                _ => {}
            }
        }
        Ok(Self {
            store,
            log: Arc::new(Mutex::new(log)),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        Ok(lock(&self.log)
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let log = lock(&self.log);
        let last = log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(log.purged);
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        write(
            &*self.store,
            vec![Op::Put {
                table: Table::Cluster,
                key: VOTE.to_vec(),
                value: encode(vote),
            }],
        )
        .await
        .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        lock(&self.log).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(lock(&self.log).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not waited on beyond the process: a committed id lost to a
        // power cut is learnt again from the leader.
        self.store
            .commit(vec![Op::Put {
                table: Table::Cluster,
                key: COMMITTED.to_vec(),
                value: encode(&committed),
            }])
            .and_then(|_| self.store.flush())
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        lock(&self.log).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(lock(&self.log).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let ops = entries
            .iter()
            .map(|e| Op::Put {
                table: Table::Cluster,
                key: entry_key(e.log_id.index),
                value: encode(e),
            })
            .collect();
        {
            let mut log = lock(&self.log);
            for e in &entries {
                log.entries.insert(e.log_id.index, e.clone());
            }
        }
        let result = write(&*self.store, ops).await;
        let failed = result.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let gone: Vec<u64> = {
            let mut log = lock(&self.log);
            let gone: Vec<u64> = log.entries.range(log_id.index..).map(|(i, _)| *i).collect();
            for i in &gone {
                log.entries.remove(i);
            }
            gone
        };
        let ops = gone
            .into_iter()
            .map(|i| Op::Delete {
                table: Table::Cluster,
                key: entry_key(i),
            })
            .collect();
        write(&*self.store, ops)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let gone: Vec<u64> = {
            let mut log = lock(&self.log);
            let gone: Vec<u64> = log
                .entries
                .range(..=log_id.index)
                .map(|(i, _)| *i)
                .collect();
            for i in &gone {
                log.entries.remove(i);
            }
            log.purged = Some(log_id);
            gone
        };
        let mut ops: Vec<Op> = vec![Op::Put {
            table: Table::Cluster,
            key: PURGED.to_vec(),
            value: encode(&Some(log_id)),
        }];
        ops.extend(gone.into_iter().map(|i| Op::Delete {
            table: Table::Cluster,
            key: entry_key(i),
        }));
        write(&*self.store, ops)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// Keep agreed retained messages in `broker` (one that does not decode,
/// or that its store refuses, is logged and left: the others are kept).
fn keep_retained(broker: &Broker, messages: &[Vec<u8>]) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    for bytes in messages {
        let kept = decode_message(bytes, now, wall).and_then(|(m, at)| broker.set_retained(&m, at));
        if let Err(e) = kept {
            tracing::error!(error = %e, "an agreed retained message could not be kept");
        }
    }
}

/// Make `broker`'s retained messages (but `$SYS`'s) those of a snapshot.
fn replace_retained(broker: &Broker, messages: &[Vec<u8>]) -> io::Result<()> {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut topics = HashSet::new();
    let mut decoded = Vec::with_capacity(messages.len());
    for bytes in messages {
        let (m, at) = decode_message(bytes, now, wall)?;
        topics.insert(m.topic.as_str().to_string());
        decoded.push((m, at));
    }
    for (old, _) in broker.retained_all() {
        if !topics.contains(old.topic.as_str()) {
            let gone = Message::new(old.topic, bytes::Bytes::new(), old.qos);
            broker.set_retained(&gone, now)?;
        }
    }
    for (m, at) in &decoded {
        broker.set_retained(m, *at)?;
    }
    Ok(())
}

/// A snapshot as stored: its meta and its data.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// What the state machine has applied.
#[derive(Debug, Default)]
pub(crate) struct AppliedState {
    pub(crate) last: Option<LogId<NodeId>>,
    pub(crate) membership: StoredMembership<NodeId, openraft::BasicNode>,
}

/// The state machine: the routes, shared with the node that forwards by
/// them.
#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Arc<dyn Store>,
    routes: Arc<RwLock<Routes>>,
    /// Where the agreed retained messages are kept.
    broker: Option<Broker>,
    /// Held while the state changes (applying, loading a snapshot) and
    /// while a snapshot reads it: the routes, what was applied and the
    /// broker's retained messages then agree.
    state: Arc<Mutex<()>>,
    applied: Arc<Mutex<AppliedState>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshot_count: Arc<std::sync::atomic::AtomicU64>,
}

impl Debug for StoredSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSnapshot")
            .field("meta", &self.meta)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl StateMachine {
    /// The state machine kept in `store` (its last snapshot, if any; the
    /// log after it is applied again when the node starts), updating
    /// `routes`, and keeping the agreed retained messages in `broker`.
    pub fn open(
        store: Arc<dyn Store>,
        routes: Arc<RwLock<Routes>>,
        broker: Option<Broker>,
    ) -> io::Result<Self> {
        let sm = Self {
            store,
            routes,
            broker,
            state: Arc::default(),
            applied: Arc::default(),
            snapshot: Arc::default(),
            snapshot_count: Arc::default(),
        };
        let stored = sm
            .store
            .scan(Table::Cluster)?
            .into_iter()
            .find(|(k, _)| k == SNAPSHOT)
            .map(|(_, v)| decode::<StoredSnapshot>(&v))
            .transpose()?;
        if let Some(s) = stored {
            // The broker's own store holds the retained messages already:
            // every one applied before the snapshot was stored was
            // written with it (a snapshot is stored durably, the store's
            // earlier writes with it), and the log after it is applied
            // again. Replacing them with the snapshot's would take them
            // back in time until then.
            sm.load(&s, false)?;
            *lock(&sm.snapshot) = Some(s);
        }
        Ok(sm)
    }

    /// Put the state a snapshot holds in force (with `retained`, the
    /// broker's retained messages too: one from the leader).
    fn load(&self, s: &StoredSnapshot, retained: bool) -> io::Result<()> {
        let mut data: SnapshotData = decode(&s.data)?;
        let (replace, retained) = (retained, std::mem::take(&mut data.retained));
        // All under `state` and the routes' lock, as `apply` changes them.
        let _state = lock(&self.state);
        {
            let mut routes = write_lock(&self.routes);
            routes.load_snapshot(data);
            let mut applied = lock(&self.applied);
            applied.last = s.meta.last_log_id;
            applied.membership = s.meta.last_membership.clone();
        }
        if let Some(b) = self.broker.as_ref().filter(|_| replace) {
            replace_retained(b, &retained)?;
        }
        Ok(())
    }
}

impl StateMachine {
    /// Store `s` as the current snapshot (durable before it is current),
    /// unless a later one is current already (a snapshot built while one
    /// from the leader was installed must not replace it: the log before
    /// the later one may be gone).
    async fn save(&self, s: StoredSnapshot) -> StorageResult<()> {
        let later = |current: &Option<StoredSnapshot>| {
            current
                .as_ref()
                .is_some_and(|c| c.meta.last_log_id > s.meta.last_log_id)
        };
        let stale = later(&lock(&self.snapshot));
        if stale {
            return Ok(());
        }
        let subject = ErrorSubject::Snapshot(Some(s.meta.signature()));
        write(
            &*self.store,
            vec![Op::Put {
                table: Table::Cluster,
                key: SNAPSHOT.to_vec(),
                value: encode(&s),
            }],
        )
        .await
        .map_err(|e| io_error(subject, ErrorVerb::Write, e))?;
        // A later one stored meanwhile goes back in the store.
        let restore = {
            let mut current = lock(&self.snapshot);
            if later(&current) {
                current.as_ref().map(encode)
            } else {
                *current = Some(s);
                None
            }
        };
        if let Some(value) = restore {
            write(
                &*self.store,
                vec![Op::Put {
                    table: Table::Cluster,
                    key: SNAPSHOT.to_vec(),
                    value,
                }],
            )
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // The routes and how far they are applied, read together: `apply`
        // (which may run meanwhile) takes the routes' lock before
        // `applied`, so holding the first makes them agree.
        // The retained messages too (`apply` keeps them under `state`),
        // copied (their payloads shared) and encoded after.
        let (mut routes, retained, last, membership) = {
            let _state = lock(&self.state);
            let routes = read(&self.routes);
            let a = lock(&self.applied);
            let retained = self.broker.as_ref().map(Broker::retained_all);
            (routes.to_snapshot(), retained, a.last, a.membership.clone())
        };
        routes.retained = retained
            .unwrap_or_default()
            .iter()
            .map(|(m, at)| encode_message(m, wall_time(*at)))
            .collect();
        let data = encode(&routes);
        let n = self
            .snapshot_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}-{n}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index)
            ),
        };
        self.save(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let a = lock(&self.applied);
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        // The retained messages are kept in the broker outside the routes'
        // lock (a batch of them takes a while, and every publish reads the
        // routes), under `state`, which a snapshot also takes.
        let _state = lock(&self.state);
        for entry in entries {
            let keep = {
                let mut routes = write_lock(&self.routes);
                let mut applied = lock(&self.applied);
                applied.last = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => {
                        out.push(Applied::default());
                        None
                    }
                    EntryPayload::Normal(proposal) => {
                        let keep = match (&proposal.command, &self.broker) {
                            (Command::Retain { messages, .. }, Some(b))
                                if routes.repeated(proposal).is_none() =>
                            {
                                Some((b, messages))
                            }
                            _ => None,
                        };
                        out.push(routes.apply_proposal(proposal, entry.log_id.index));
                        keep
                    }
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        out.push(Applied::default());
                        None
                    }
                }
            };
            if let Some((b, messages)) = keep {
                keep_retained(b, messages);
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotBytes>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<SnapshotBytes>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        self.load(&stored, true)
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        self.save(stored).await
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(lock(&self.snapshot).as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, encode, FORMAT};

    #[test]
    fn values_carry_their_format_and_another_is_refused_with_a_reason() {
        let v: Option<u64> = Some(7);
        let bytes = encode(&v);
        assert!(bytes.starts_with(FORMAT));
        assert_eq!(decode::<Option<u64>>(&bytes).unwrap(), v);
        let mut other = bytes.clone();
        other[3] = b'0';
        let e = decode::<Option<u64>>(&other).unwrap_err();
        assert!(e.to_string().contains("another version"), "{e}");
        assert!(decode::<Option<u64>>(&[]).is_err());
    }
}
