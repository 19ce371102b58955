//! Which embedded store Petrel keeps its state in, decided by the broker's
//! own workload rather than by reputation: its own journal, fjall or redb.
//!
//! The workload: session queues that take one small message at a time and
//! give it back when the subscriber acknowledges it (an insert and, a
//! window later, a delete, each acknowledgement a commit), retained
//! messages overwritten in place, and a full scan when the broker starts.
//! Each engine runs it for a fixed time in the two durability modes Petrel
//! offers:
//!
//! - `process`: each commit must survive the broker being killed (its
//!   bytes handed to the operating system), not a power loss;
//! - `fsync`: each commit reaches the disk, 64 commits sharing one sync
//!   (group commit).
//!
//! Then: how long reading everything back takes, and how much disk the
//! steady state occupies (deleted messages must give their space back).
//!
//! `cargo run --release --manifest-path benches/store/Cargo.toml [seconds]`

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const SESSIONS: u32 = 1_000;
/// Messages a session holds unacknowledged: the delete trails the insert
/// by this many operations.
const WINDOW: u64 = 2_000;
const MESSAGE: usize = 128;
const RETAINED: usize = 64;
const GROUP: usize = 64;
/// Messages stored for the start-up scan.
const SCAN: u64 = 200_000;

/// One step of the workload: the keys it writes and deletes.
struct Step {
    insert: [u8; 12],
    delete: Option<[u8; 12]>,
    retained: Option<String>,
}

fn key(seq: u64) -> [u8; 12] {
    let session = u32::try_from(seq % u64::from(SESSIONS)).unwrap_or(0);
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&session.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn step(seq: u64) -> Step {
    Step {
        insert: key(seq),
        delete: seq.checked_sub(WINDOW).map(key),
        retained: seq
            .is_multiple_of(10)
            .then(|| format!("site/{}/temperature", seq % 500)),
    }
}

/// What each engine must do.
trait Engine {
    fn name(&self) -> String;
    /// Apply steps, each atomically; `sync` after every `group` of them
    /// (or, with `group` 1 and `sync` false, each handed to the OS).
    fn run(&mut self, steps: &[Step], sync: bool) -> Result<()>;
    /// Store `n` messages at once (for the scan).
    fn fill(&mut self, from: u64, n: u64) -> Result<()>;
    /// Read every message and retained value; how many.
    fn scan(&mut self) -> Result<u64>;
    /// Close and open again (the scan starts cold).
    fn reopen(&mut self) -> Result<()>;
}

struct Fjall {
    dir: PathBuf,
    db: Option<fjall::Database>,
    queue: Option<fjall::Keyspace>,
    retained: Option<fjall::Keyspace>,
}

impl Fjall {
    fn open(dir: &Path) -> Result<Self> {
        let mut f = Self {
            dir: dir.to_path_buf(),
            db: None,
            queue: None,
            retained: None,
        };
        f.reopen()?;
        Ok(f)
    }

    fn parts(&self) -> (&fjall::Database, &fjall::Keyspace, &fjall::Keyspace) {
        match (&self.db, &self.queue, &self.retained) {
            (Some(d), Some(q), Some(r)) => (d, q, r),
            _ => unreachable!("opened in open()"),
        }
    }
}

impl Engine for Fjall {
    fn name(&self) -> String {
        "fjall".into()
    }

    fn run(&mut self, steps: &[Step], sync: bool) -> Result<()> {
        let (db, queue, retained) = self.parts();
        let value = [7u8; MESSAGE];
        let rvalue = [9u8; RETAINED];
        for s in steps {
            let mut batch = db.batch();
            if !sync {
                // Handed to the OS at commit: survives the process.
                batch = batch.durability(Some(fjall::PersistMode::Buffer));
            }
            batch.insert(queue, s.insert, value);
            if let Some(d) = s.delete {
                batch.remove(queue, d);
            }
            if let Some(t) = &s.retained {
                batch.insert(retained, t.as_bytes(), rvalue);
            }
            batch.commit()?;
        }
        if sync {
            db.persist(fjall::PersistMode::SyncAll)?;
        }
        Ok(())
    }

    fn fill(&mut self, from: u64, n: u64) -> Result<()> {
        let (db, queue, _) = self.parts();
        let value = [7u8; MESSAGE];
        let mut batch = db.batch();
        for seq in from..from + n {
            batch.insert(queue, key(seq), value);
            if seq % 10_000 == 9_999 {
                batch.commit()?;
                batch = db.batch();
            }
        }
        batch.commit()?;
        db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    fn scan(&mut self) -> Result<u64> {
        let (_, queue, retained) = self.parts();
        let mut n = 0u64;
        for kv in queue.iter() {
            let (_, v) = kv.into_inner()?;
            n += u64::from(!v.is_empty());
        }
        for kv in retained.iter() {
            let (_, v) = kv.into_inner()?;
            n += u64::from(!v.is_empty());
        }
        Ok(n)
    }

    fn reopen(&mut self) -> Result<()> {
        self.queue = None;
        self.retained = None;
        self.db = None;
        // Journals are bounded (fjall keeps up to 512 MiB by default):
        // deleted messages must give their space back soon.
        let db = fjall::Database::builder(&self.dir)
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        let opts = fjall::KeyspaceCreateOptions::default;
        self.queue = Some(db.keyspace("queue", opts)?);
        self.retained = Some(db.keyspace("retained", opts)?);
        self.db = Some(db);
        Ok(())
    }
}

/// Petrel's own journal (`petrel_broker::journal`), as the broker uses
/// it: each commit in the process's buffer, handed to the operating system
/// by a flush; compaction as its maintenance thread does it.
struct Journal {
    dir: PathBuf,
    journal: Option<petrel_broker::journal::Journal>,
    steps: u64,
}

impl Journal {
    fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            journal: Some(petrel_broker::journal::Journal::open(dir)?),
            steps: 0,
        })
    }

    fn journal(&self) -> &petrel_broker::journal::Journal {
        self.journal
            .as_ref()
            .unwrap_or_else(|| unreachable!("opened"))
    }
}

impl Engine for Journal {
    fn name(&self) -> String {
        "petrel journal".into()
    }

    fn run(&mut self, steps: &[Step], sync: bool) -> Result<()> {
        use petrel_broker::{Op, Table};
        let value = [7u8; MESSAGE];
        let rvalue = [9u8; RETAINED];
        for s in steps {
            let mut ops = vec![Op::Put {
                table: Table::Queue,
                key: s.insert.to_vec(),
                value: value.to_vec(),
            }];
            if let Some(d) = s.delete {
                ops.push(Op::Delete {
                    table: Table::Queue,
                    key: d.to_vec(),
                });
            }
            if let Some(t) = &s.retained {
                ops.push(Op::Put {
                    table: Table::Retained,
                    key: t.as_bytes().to_vec(),
                    value: rvalue.to_vec(),
                });
            }
            self.journal().commit(ops)?;
            if !sync {
                self.journal().flush()?;
            }
            self.steps += 1;
            if self.steps.is_multiple_of(10_000) {
                while self.journal().compact()? {}
            }
        }
        if sync {
            self.journal().sync()?;
        }
        Ok(())
    }

    fn fill(&mut self, from: u64, n: u64) -> Result<()> {
        use petrel_broker::{Op, Table};
        let value = [7u8; MESSAGE];
        for chunk in (from..from + n).collect::<Vec<_>>().chunks(10_000) {
            let ops = chunk
                .iter()
                .map(|&seq| Op::Put {
                    table: Table::Queue,
                    key: key(seq).to_vec(),
                    value: value.to_vec(),
                })
                .collect();
            self.journal().commit(ops)?;
        }
        self.journal().sync()?;
        Ok(())
    }

    fn scan(&mut self) -> Result<u64> {
        use petrel_broker::Table;
        // Opening is the read: the whole log is replayed.
        self.journal = None;
        self.journal = Some(petrel_broker::journal::Journal::open(&self.dir)?);
        let mut n = 0u64;
        for t in [Table::Queue, Table::Retained] {
            n += self
                .journal()
                .scan(t)?
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .count() as u64;
        }
        Ok(n)
    }

    fn reopen(&mut self) -> Result<()> {
        // (The scan opens it: its time includes reading the log.)
        Ok(())
    }
}

const QUEUE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("queue");
const RETAINED_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("retained");

struct Redb {
    file: PathBuf,
    db: Option<redb::Database>,
    /// Commits without a sync (not crash safe: shown for comparison).
    unsafe_none: bool,
}

impl Redb {
    fn open(file: &Path, unsafe_none: bool) -> Result<Self> {
        let mut r = Self {
            file: file.to_path_buf(),
            db: None,
            unsafe_none,
        };
        r.reopen()?;
        Ok(r)
    }

    fn db(&self) -> &redb::Database {
        self.db.as_ref().unwrap_or_else(|| unreachable!("opened"))
    }

    fn write(&self, steps: &[Step], durability: redb::Durability) -> Result<()> {
        let value = [7u8; MESSAGE];
        let rvalue = [9u8; RETAINED];
        let mut tx = self.db().begin_write()?;
        tx.set_durability(durability)?;
        {
            let mut queue = tx.open_table(QUEUE)?;
            let mut retained = tx.open_table(RETAINED_TABLE)?;
            for s in steps {
                queue.insert(&s.insert[..], &value[..])?;
                if let Some(d) = s.delete {
                    queue.remove(&d[..])?;
                }
                if let Some(t) = &s.retained {
                    retained.insert(t.as_str(), &rvalue[..])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Engine for Redb {
    fn name(&self) -> String {
        if self.unsafe_none {
            "redb (Durability::None: NOT crash safe)".into()
        } else {
            "redb".into()
        }
    }

    fn run(&mut self, steps: &[Step], sync: bool) -> Result<()> {
        if sync {
            // One transaction for the group: one sync.
            return self.write(steps, redb::Durability::Immediate);
        }
        // redb has no commit that survives the process without a sync:
        // each commit is an fsync'd one (or, shown for comparison, none).
        let d = if self.unsafe_none {
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        };
        for s in steps {
            self.write(std::slice::from_ref(s), d)?;
        }
        Ok(())
    }

    fn fill(&mut self, from: u64, n: u64) -> Result<()> {
        let steps: Vec<Step> = (from..from + n)
            .map(|seq| Step {
                insert: key(seq),
                delete: None,
                retained: None,
            })
            .collect();
        for chunk in steps.chunks(10_000) {
            self.write(chunk, redb::Durability::Immediate)?;
        }
        Ok(())
    }

    fn scan(&mut self) -> Result<u64> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db().begin_read()?;
        let mut n = 0u64;
        let queue = tx.open_table(QUEUE)?;
        for kv in queue.iter()? {
            let (_, v) = kv?;
            n += u64::from(!v.value().is_empty());
        }
        let retained = tx.open_table(RETAINED_TABLE)?;
        for kv in retained.iter()? {
            let (_, v) = kv?;
            n += u64::from(!v.value().is_empty());
        }
        Ok(n)
    }

    fn reopen(&mut self) -> Result<()> {
        self.db = None;
        self.db = Some(redb::Database::create(&self.file)?);
        Ok(())
    }
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

/// Steps per second for `secs` seconds, in groups of `group` (synced at
/// each group's end when `sync`).
fn measure(e: &mut dyn Engine, secs: f64, group: usize, sync: bool, seq: &mut u64) -> Result<f64> {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let steps: Vec<Step> = (*seq..*seq + group as u64).map(step).collect();
        *seq += group as u64;
        e.run(&steps, sync)?;
        done += group as u64;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn bench(e: &mut dyn Engine, path: &Path, secs: f64) -> Result<()> {
    let mut seq = 0u64;
    // Warm up to the steady state: every session holds its window.
    let warm: Vec<Step> = (0..WINDOW * 2).map(step).collect();
    for chunk in warm.chunks(GROUP) {
        e.run(chunk, true)?;
    }
    seq += WINDOW * 2;
    let process = measure(e, secs, 1, false, &mut seq)?;
    let fsync = measure(e, secs, GROUP, true, &mut seq)?;
    let steady = du(path);
    e.fill(1 << 40, SCAN)?;
    e.reopen()?;
    let t = Instant::now();
    let n = e.scan()?;
    let scan = t.elapsed();
    println!(
        "{:42} process {:>9.0}/s   fsync x{GROUP} {:>8.0}/s   steady state {:>6.1} MiB after {} steps ({} live)   scan {} entries in {:>6.1} ms",
        e.name(),
        process,
        fsync,
        steady as f64 / 1048576.0,
        seq,
        WINDOW,
        n,
        scan.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let root = std::env::temp_dir().join(format!("petrel-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let run = || -> Result<()> {
        let dir = root.join("journal");
        let mut j = Journal::open(&dir)?;
        bench(&mut j, &dir, secs)?;
        drop(j);
        let dir = root.join("fjall");
        let mut f = Fjall::open(&dir)?;
        bench(&mut f, &dir, secs)?;
        drop(f);
        for unsafe_none in [false, true] {
            let file = root.join(format!("redb-{unsafe_none}.redb"));
            let mut r = Redb::open(&file, unsafe_none)?;
            bench(&mut r, &file, secs)?;
        }
        Ok(())
    };
    let r = run();
    let _ = std::fs::remove_dir_all(&root);
    r
}
