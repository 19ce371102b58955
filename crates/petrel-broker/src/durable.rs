//! The embedded durable store: a data directory holding the broker's
//! journal, locked by the broker that uses it.
//!
//! **Why a journal of our own** (see [`crate::journal`]): the broker holds
//! its state in memory and only needs the store to bring it back after the
//! process is gone, so the store is an append-only log read once at start.
//! `benches/store` runs the broker's workload (1,000 session queues, each
//! message deleted 2,000 steps after it was stored, retained values
//! overwritten, one commit a step; then a cold read) against the journal,
//! fjall 3 and redb 3 (2-core machine, 5 s a mode): commits that survive
//! SIGKILL, 1,511,000/s for the journal, 287,000/s for fjall, 5,200/s for
//! redb (which has no such commit short of an fsync); 64 commits per fsync,
//! 171,000 / 98,000 / 175,000 steps/s; steady state on disk 16 / 171 /
//! 1.1 MiB; a cold read of 200,000 entries 312 / 103 / 48 ms. The first
//! layout used fjall (chosen over redb for the commits without a sync), but
//! fjall also keeps every entry in an ordered memtable and writes it again
//! into sorted tables, which for queued messages deleted milliseconds later
//! was 40% of the broker's CPU under `petrel bench qos1 --persistent` and
//! held `process` durability to 21% of the in-memory throughput (73% with
//! the journal). The journal's price is the slower start-up read. A
//! layout-1 (fjall) directory is converted when opened.
//!
//! **Durability.** A commit goes to the journal's buffer in the process;
//! before any byte that acknowledges it leaves for a client, the broker
//! hands the buffer to the operating system ([`Store::flush`], one write
//! for every commit since the last, from every connection), so killing the
//! broker loses nothing acknowledged.
//! With `process` durability (the default) a thread syncs the journal to
//! disk every `sync_interval`, which bounds what a power loss can take.
//! With `fsync`, a commit is durable only once a sync covering it is done:
//! one thread syncs whatever was committed since its last sync, so every
//! connection writing meanwhile shares one sync (group commit), and the
//! acknowledgement waits for it (see [`Commit`]).
//!
//! **The directory.** `FORMAT` names the layout version; `lock` is held
//! (an advisory lock) by the broker using it, and names its process id,
//! so a second broker fails at once with that id instead of corrupting
//! the store; `journal/` is the log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Durability;
use crate::core::lock as lock_mutex;
use crate::core::store::{Commit, Op, Store, Table, Ticket};
use crate::journal::{Inspection, Journal};
use crate::stats::LatencyHistogram;

/// The layout this build writes (it reads every layout Petrel wrote up to
/// this one: 1 was a fjall database in `store/`, converted when opened).
pub const FORMAT: u32 = 2;
const FORMAT_NAME: &str = "petrel-store";

/// How often the maintenance thread looks at whether the journal should be
/// compacted (and, with `process` durability, syncs it when due).
const MAINTENANCE_TICK: Duration = Duration::from_secs(1);

/// The embedded store in a data directory.
pub struct DiskStore {
    dir: PathBuf,
    journal: Arc<Journal>,
    /// Held while the store is open.
    _lock: File,
    maintenance: Option<Maintenance>,
    /// With `fsync` durability: the thread that syncs groups of commits.
    group: Option<Group>,
    /// How long writes and group syncs take.
    latency: Arc<LatencyHistogram>,
}

/// Commits waiting for a sync, and the thread that does it.
struct Group {
    shared: Arc<GroupShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct GroupShared {
    waiting: Mutex<GroupState>,
    wake: Condvar,
    /// Syncs done (each covering one or more commits).
    syncs: AtomicU64,
}

#[derive(Default)]
struct GroupState {
    tickets: Vec<Arc<Ticket>>,
    stop: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        lock_mutex(&self.shared.waiting).stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Group {
    fn start(journal: Arc<Journal>, latency: Arc<LatencyHistogram>) -> io::Result<Self> {
        let shared = Arc::new(GroupShared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("petrel-store-fsync".into())
            .spawn(move || loop {
                let tickets = {
                    let mut w = lock_mutex(&s.waiting);
                    while w.tickets.is_empty() && !w.stop {
                        w = s
                            .wake
                            .wait(w)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    if w.tickets.is_empty() {
                        return;
                    }
                    std::mem::take(&mut w.tickets)
                };
                // Everything committed before these tickets were queued.
                let started = Instant::now();
                let result = journal.sync().map_err(|e| e.to_string());
                latency.record(started.elapsed());
                s.syncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "the store could not sync: what waited is refused");
                }
                for t in tickets {
                    t.complete(result.clone());
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").field("dir", &self.dir).finish()
    }
}

/// The thread that compacts the journal, and with `process` durability
/// syncs it every `sync_interval`.
struct Maintenance {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Maintenance {
    fn start(journal: Arc<Journal>, sync_every: Option<Duration>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let tick = sync_every.map_or(MAINTENANCE_TICK, |d| d.min(MAINTENANCE_TICK));
        let thread = std::thread::Builder::new()
            .name("petrel-store".into())
            .spawn(move || {
                let mut synced = Instant::now();
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(tick);
                    if sync_every.is_some_and(|every| synced.elapsed() >= every) {
                        synced = Instant::now();
                        if let Err(e) = journal.sync() {
                            tracing::error!(error = %e, "the store's journal could not be synced");
                        }
                    }
                    loop {
                        match journal.compact() {
                            Ok(true) if !flag.load(Ordering::Acquire) => {}
                            Ok(_) => break,
                            Err(e) => {
                                tracing::error!(error = %e, "the store's journal could not be compacted");
                                break;
                            }
                        }
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!(
                "the store's maintenance thread did not start: no compaction, syncs at shutdown only"
            );
        }
        Self { stop, thread }
    }
}

/// An error about the data directory `dir`.
fn at(dir: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("data directory {}: {e}", dir.display()))
}

/// Take the directory's lock, or say who holds it.
fn lock(dir: &Path) -> io::Result<File> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| at(dir, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {holder})")
            };
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "data directory {} is in use by {who}; stop it, or give this broker another --data-dir",
                    dir.display()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(at(dir, e)),
    }
    file.set_len(0).map_err(|e| at(dir, e))?;
    file.seek(io::SeekFrom::Start(0)).map_err(|e| at(dir, e))?;
    writeln!(file, "{}", std::process::id()).map_err(|e| at(dir, e))?;
    Ok(file)
}

/// The layout version the directory holds (0: none yet, a new store).
fn read_format(dir: &Path) -> io::Result<u32> {
    let path = dir.join("FORMAT");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let version = text
                .trim()
                .strip_prefix(FORMAT_NAME)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or_else(|| {
                    at(
                        dir,
                        format!("{} does not name a Petrel store layout", path.display()),
                    )
                })?;
            match version {
                1 | FORMAT => Ok(version),
                v if v > FORMAT => Err(at(
                    dir,
                    format!(
                        "written by a newer Petrel (layout {v}; this one reads up to {FORMAT})"
                    ),
                )),
                v => Err(at(dir, format!("layout {v} is not one Petrel ever wrote"))),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if dir.join("store").exists() || dir.join("journal").exists() {
                return Err(at(
                    dir,
                    "a store without its FORMAT file: not opened (was it written by something else?)",
                ));
            }
            Ok(0)
        }
        Err(e) => Err(at(dir, e)),
    }
}

/// Say (atomically) that the directory holds this build's layout.
fn write_format(dir: &Path) -> io::Result<()> {
    let tmp = dir.join("FORMAT.tmp");
    std::fs::write(&tmp, format!("{FORMAT_NAME} {FORMAT}\n"))?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("FORMAT"))?;
    File::open(dir)?.sync_all()
}

/// Every entry of a layout-1 store (a fjall database in `store/`).
fn read_layout_1(dir: &Path) -> io::Result<Vec<Op>> {
    let db = fjall::Database::builder(dir.join("store"))
        .open()
        .map_err(io::Error::other)?;
    let mut ops = Vec::new();
    for table in Table::ALL {
        let ks = db
            .keyspace(table.name(), fjall::KeyspaceCreateOptions::default)
            .map_err(io::Error::other)?;
        for kv in ks.iter() {
            let (k, v) = kv.into_inner().map_err(io::Error::other)?;
            ops.push(Op::Put {
                table,
                key: k.to_vec(),
                value: v.to_vec(),
            });
        }
    }
    Ok(ops)
}

/// Convert a layout-1 directory: its entries into a new journal, synced,
/// then `FORMAT` says 2, then the old database goes. A crash before
/// `FORMAT` changes leaves layout 1 to convert again.
fn convert_layout_1(dir: &Path) -> io::Result<()> {
    let ops = read_layout_1(dir).map_err(|e| {
        at(
            dir,
            format!(
                "the layout-1 store in {} can't be read: {e}",
                dir.join("store").display()
            ),
        )
    })?;
    let count = ops.len();
    let journal_dir = dir.join("journal");
    if journal_dir.exists() {
        // Left by a conversion that did not finish.
        std::fs::remove_dir_all(&journal_dir).map_err(|e| at(dir, e))?;
    }
    let journal = Journal::open(&journal_dir).map_err(|e| at(dir, e))?;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        journal
            .commit(ops.by_ref().take(1024).collect())
            .map_err(|e| at(dir, e))?;
    }
    journal.sync().map_err(|e| at(dir, e))?;
    drop(journal);
    write_format(dir).map_err(|e| at(dir, e))?;
    std::fs::remove_dir_all(dir.join("store")).map_err(|e| at(dir, e))?;
    tracing::info!(dir = %dir.display(), entries = count, "converted the store from layout 1 (fjall) to layout 2 (journal)");
    Ok(())
}

/// Take the lock and bring the directory to this build's layout.
fn prepare(dir: &Path) -> io::Result<File> {
    create_dir(dir)?;
    let lock = lock(dir)?;
    match read_format(dir)? {
        0 => {
            create_dir(&dir.join("journal"))?;
            write_format(dir).map_err(|e| at(dir, e))?;
        }
        1 => convert_layout_1(dir)?,
        _ => {}
    }
    Ok(lock)
}

fn damaged(dir: &Path, e: impl std::fmt::Display) -> io::Error {
    at(
        dir,
        format!(
            "the store can't be opened ({e}); `petrel store check --data-dir {}` reports what is \
             readable, and `petrel store salvage` copies it into a new directory",
            dir.display()
        ),
    )
}

impl DiskStore {
    /// Open (or create) the store in `dir`, locking it. With `process`
    /// durability its journal is synced to disk every `sync_interval`
    /// (never, if zero: then only the operating system's own writeback
    /// bounds a power loss); with `fsync`, commits wait for their sync.
    pub fn open(dir: &Path, durability: Durability, sync_interval: Duration) -> io::Result<Self> {
        let lock = prepare(dir)?;
        let journal = Arc::new(Journal::open(&dir.join("journal")).map_err(|e| damaged(dir, e))?);
        let latency = Arc::new(LatencyHistogram::default());
        let (sync_every, group) = match durability {
            // (Not opened for `none`; as a store, it syncs like `process`.)
            Durability::Process | Durability::None => {
                ((!sync_interval.is_zero()).then_some(sync_interval), None)
            }
            Durability::Fsync => (
                None,
                Some(Group::start(journal.clone(), latency.clone()).map_err(|e| at(dir, e))?),
            ),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            maintenance: Some(Maintenance::start(journal.clone(), sync_every)),
            journal,
            _lock: lock,
            group,
            latency,
        })
    }

    /// Read whatever can be read in `dir`'s store, reading past damage,
    /// for `petrel store check` and `salvage` (the directory is locked
    /// meanwhile, so no broker may be using it).
    pub fn inspect(dir: &Path) -> io::Result<Inspection> {
        let _lock = prepare(dir)?;
        crate::journal::Journal::inspect(&dir.join("journal")).map_err(|e| at(dir, e))
    }

    /// Syncs done for `fsync` durability so far (each covers every commit
    /// queued before it began).
    pub fn group_syncs(&self) -> u64 {
        self.group
            .as_ref()
            .map_or(0, |g| g.shared.syncs.load(Ordering::Relaxed))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the store's journal occupies on disk.
    pub fn disk_space(&self) -> u64 {
        self.journal.disk_bytes()
    }

    /// Bytes of the entries it holds (what compaction keeps).
    pub fn live_bytes(&self) -> u64 {
        self.journal.live_bytes()
    }

    /// Segment files of the journal.
    pub fn segments(&self) -> usize {
        self.journal.segments()
    }

    /// Compact the journal now if it is due (the maintenance thread does
    /// it every second); whether it was.
    pub fn compact(&self) -> io::Result<bool> {
        self.journal.compact()
    }

    /// Sync everything to disk now.
    pub fn sync(&self) -> io::Result<()> {
        self.journal.sync().map_err(|e| at(&self.dir, e))
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| at(dir, e))
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.maintenance = None;
        self.group = None;
        let _ = self.sync();
    }
}

impl Store for DiskStore {
    fn commit(&self, ops: Vec<Op>) -> io::Result<Commit> {
        // Into the journal's buffer in the process: `flush` hands it to the
        // operating system before anything it acknowledges goes out, one
        // write for every commit since the last.
        self.journal.commit(ops).map_err(|e| at(&self.dir, e))?;
        let Some(group) = &self.group else {
            return Ok(Commit::done());
        };
        let ticket = Arc::new(Ticket::default());
        lock_mutex(&group.shared.waiting)
            .tickets
            .push(ticket.clone());
        group.shared.wake.notify_one();
        Ok(Commit::waiting(ticket))
    }

    fn flush(&self) -> io::Result<()> {
        if !self.journal.is_dirty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.journal.flush().map_err(|e| at(&self.dir, e));
        self.latency.record(started.elapsed());
        result
    }

    fn scan(&self, table: Table) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.journal.scan(table).map_err(|e| at(&self.dir, e))
    }

    fn stored_bytes(&self) -> u64 {
        self.journal.live_bytes()
    }

    fn write_latency(&self) -> Option<&LatencyHistogram> {
        Some(&self.latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("petrel-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            table: Table::Retained,
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn commits_are_there_after_reopening() {
        let d = temp("reopen");
        {
            let s = DiskStore::open(&d, Durability::Process, Duration::from_secs(1)).unwrap();
            s.commit(vec![put("a", "1"), put("b", "2")]).unwrap();
            s.commit(vec![Op::Delete {
                table: Table::Retained,
                key: b"a".to_vec(),
            }])
            .unwrap();
        }
        let s = DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap();
        assert_eq!(
            s.scan(Table::Retained).unwrap(),
            vec![(b"b".to_vec(), b"2".to_vec())]
        );
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fsync_commits_wait_for_a_sync_that_many_share() {
        let d = temp("fsync");
        let s = Arc::new(DiskStore::open(&d, Durability::Fsync, Duration::ZERO).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let c = s.commit(vec![put(&format!("{t}/{i}"), "v")]).unwrap();
                        // Blocking here is the test's choice; the broker
                        // polls it from its task.
                        while !c.is_done() {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.scan(Table::Retained).unwrap().len(), 400);
        let syncs = s.group_syncs();
        // Every commit waited for a sync (at least one), and the waiting
        // ones shared them.
        assert!((1..400).contains(&syncs), "{syncs} syncs for 400 commits");
        // Positive control: process durability syncs nothing per commit.
        drop(s);
        let p = DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap();
        let c = p.commit(vec![put("x", "y")]).unwrap();
        assert!(c.is_done());
        assert_eq!(p.group_syncs(), 0);
        drop(p);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_in_use_is_refused_with_the_holders_pid() {
        let d = temp("inuse");
        let first = DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap();
        let e = DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&d.display().to_string()), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        // Positive control: free again once the first lets go.
        drop(first);
        assert!(DiskStore::open(&d, Durability::Process, Duration::ZERO).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unknown_layouts_are_refused() {
        let d = temp("format");
        drop(DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap());
        std::fs::write(d.join("FORMAT"), "petrel-store 99\n").unwrap();
        let msg = DiskStore::open(&d, Durability::Process, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("newer Petrel"), "{msg}");
        std::fs::write(d.join("FORMAT"), "something else\n").unwrap();
        assert!(DiskStore::open(&d, Durability::Process, Duration::ZERO).is_err());
        std::fs::remove_file(d.join("FORMAT")).unwrap();
        let msg = DiskStore::open(&d, Durability::Process, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("without its FORMAT"), "{msg}");
        // Positive control: the layout this build writes opens.
        std::fs::write(d.join("FORMAT"), format!("petrel-store {FORMAT}\n")).unwrap();
        assert!(DiskStore::open(&d, Durability::Process, Duration::ZERO).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_layout_1_store_is_converted_when_opened() {
        let d = temp("layout1");
        create_dir(&d).unwrap();
        // What Petrel's first durable layout wrote: a fjall database in
        // `store/`, one keyspace per table, and FORMAT saying 1.
        {
            let db = fjall::Database::builder(d.join("store")).open().unwrap();
            let retained = db
                .keyspace("retained", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            retained.insert("a/b", "old").unwrap();
            let sessions = db
                .keyspace("sessions", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            sessions.insert("c1", [1u8, 2, 3]).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        std::fs::write(d.join("FORMAT"), "petrel-store 1\n").unwrap();
        // A journal half-written by a conversion that was killed is redone.
        std::fs::create_dir_all(d.join("journal")).unwrap();
        std::fs::write(d.join("journal/0000000000000001.log"), b"PETRELJ1junk").unwrap();
        {
            let s = DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap();
            assert_eq!(
                s.scan(Table::Retained).unwrap(),
                vec![(b"a/b".to_vec(), b"old".to_vec())]
            );
            assert_eq!(
                s.scan(Table::Sessions).unwrap(),
                vec![(b"c1".to_vec(), vec![1, 2, 3])]
            );
        }
        assert_eq!(
            std::fs::read_to_string(d.join("FORMAT")).unwrap().trim(),
            format!("petrel-store {FORMAT}")
        );
        assert!(!d.join("store").exists());
        // And it stays converted.
        let s = DiskStore::open(&d, Durability::Process, Duration::ZERO).unwrap();
        assert_eq!(s.scan(Table::Retained).unwrap().len(), 1);
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }
}
