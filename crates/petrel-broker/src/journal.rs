//! The durable store's journal: an append-only log in segment files, with
//! an index in memory of where each live entry was last written.
//!
//! **Why a journal of our own.** The broker already holds all its state in
//! memory; the store only has to make it survive the process. So it never
//! reads while running: every commit is appended to one log, and the log is
//! read back once, at start. A general key-value store (fjall, the first
//! layout) also keeps every entry in an ordered memtable and later writes
//! it again into sorted tables; for the broker's workload, where most
//! entries (a queued message) are deleted within milliseconds of being
//! written, that was most of the cost: `petrel bench qos1 --persistent`
//! spent 40% of the broker's CPU in fjall's skiplist and flushes. Here a
//! commit costs its encoding into a buffer and a hash-map update per entry.
//!
//! **Layout.** `journal/` holds segments named by a 16-digit hex number,
//! each starting with [`MAGIC`], then frames: the body's length (u32 LE),
//! its CRC-32 (u32 LE), the body. A frame is one commit (its operations are
//! applied together or not at all): each operation is a tag (1 put, 2
//! delete, 3 delete every key with a prefix), the table, the key's length
//! (u32 LE) and the key, and for a put the value's length and the value.
//!
//! **Space.** Each segment's live bytes (its puts not overwritten or
//! deleted since) are counted. The oldest segment is deleted once nothing
//! in it is live; and when the log holds more than twice the live bytes
//! plus [`SPARE_SEGMENTS`] segments, the oldest segment's live entries are
//! appended again at the end and it is deleted too. Segments go oldest
//! first, so that no deletion recorded in a later segment is forgotten
//! while what it deleted is still in an earlier one. A queue's messages are deleted in the order
//! they came, so the oldest segment is usually empty by then and compaction
//! only deletes a file.
//!
//! **Damage.** At start, a frame that fails its check at the end of the last
//! segment is a write the process did not finish (a power loss): it is cut
//! off, with a warning. Anywhere else the store is refused, naming the file
//! and offset; `petrel store check` and `salvage` read around it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::core::lock;
use crate::core::store::{Op, Table};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"PETRELJ1";

/// A segment is closed (and a new one begun) once it is this long.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

/// Segments beyond twice the live bytes that the log may hold before its
/// oldest segment is rewritten.
pub const SPARE_SEGMENTS: u64 = 4;

/// Commits buffered in the process beyond this are written at once, even
/// before the next flush.
const BUFFER_LIMIT: usize = 4 * 1024 * 1024;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const DELETE_PREFIX: u8 = 3;

/// Where an entry's latest put is: its segment, offset and the bytes it
/// takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    segment: u64,
    /// Where in the segment the put begins.
    offset: u64,
    size: u32,
}

/// A segment's length and the bytes of its puts still live.
#[derive(Debug, Default)]
struct SegmentInfo {
    len: u64,
    live: u64,
}

/// Entries by table, then by the part of the key before its first zero
/// byte (a session's client id), then by the rest: a session's entries
/// go together, so deleting them all is one removal.
type Index = Vec<FxHashMap<Box<[u8]>, Group>>;

/// One client id's entries in a table.
#[derive(Debug, Default)]
struct Group {
    /// Those whose rest is a zero byte and a big-endian number (a queued
    /// message's sequence number), in its order: a session's messages are
    /// stored in that order and mostly deleted in it, so this is a push at
    /// the back and a pop at the front, without hashing. A deleted one in
    /// the middle is marked (`size` 0) until it reaches the front.
    seqs: std::collections::VecDeque<(u64, Loc)>,
    /// Marked entries in `seqs`.
    dead: usize,
    /// The others.
    other: FxHashMap<Rest, Loc>,
}

/// The number in a rest that is a zero byte and a big-endian u64.
fn seq_of(rest: &[u8]) -> Option<u64> {
    match rest {
        [0, n @ ..] => n.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

impl Group {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        match self.seqs.front() {
            Some((first, _)) if *first == seq => Ok(0),
            _ => self.seqs.binary_search_by_key(&seq, |(n, _)| *n),
        }
    }

    fn get(&self, rest: &[u8]) -> Option<Loc> {
        match seq_of(rest) {
            Some(n) => self
                .find(n)
                .ok()
                .map(|i| self.seqs[i].1)
                .filter(|l| l.size != 0),
            None => self.other.get(rest).copied(),
        }
    }

    /// Put `loc` for `rest`; what it replaces.
    fn insert(&mut self, rest: &[u8], loc: Loc) -> Option<Loc> {
        let Some(n) = seq_of(rest) else {
            return self.other.insert(rest.into(), loc);
        };
        if self.seqs.back().is_none_or(|(last, _)| *last < n) {
            self.seqs.push_back((n, loc));
            return None;
        }
        match self.find(n) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.seqs[i].1, loc);
                if old.size == 0 {
                    self.dead -= 1;
                    None
                } else {
                    Some(old)
                }
            }
            Err(i) => {
                self.seqs.insert(i, (n, loc));
                None
            }
        }
    }

    fn remove(&mut self, rest: &[u8]) -> Option<Loc> {
        let Some(n) = seq_of(rest) else {
            return self.other.remove(rest);
        };
        let i = self.find(n).ok()?;
        if self.seqs[i].1.size == 0 {
            return None;
        }
        let old = std::mem::replace(&mut self.seqs[i].1.size, 0);
        let loc = Loc {
            size: old,
            ..self.seqs[i].1
        };
        self.dead += 1;
        self.trim();
        Some(loc)
    }

    /// Drop marked entries from the ends, and from the middle once they
    /// are most of it.
    fn trim(&mut self) {
        while self.seqs.front().is_some_and(|(_, l)| l.size == 0) {
            self.seqs.pop_front();
            self.dead -= 1;
        }
        while self.seqs.back().is_some_and(|(_, l)| l.size == 0) {
            self.seqs.pop_back();
            self.dead -= 1;
        }
        if self.dead > 64 && self.dead * 2 > self.seqs.len() {
            self.seqs.retain(|(_, l)| l.size != 0);
            self.dead = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.seqs.len() == self.dead && self.other.is_empty()
    }

    /// Every live entry's location.
    fn locs(&self) -> impl Iterator<Item = Loc> + '_ {
        self.seqs
            .iter()
            .map(|(_, l)| *l)
            .filter(|l| l.size != 0)
            .chain(self.other.values().copied())
    }

    /// Remove the entries whose rest starts with `prefix`; their locations.
    fn remove_prefix(&mut self, prefix: &[u8]) -> Vec<Loc> {
        let mut gone = Vec::new();
        let mut rest = [0u8; 9];
        self.seqs.retain(|(n, l)| {
            rest[1..].copy_from_slice(&n.to_be_bytes());
            if l.size != 0 && rest.starts_with(prefix) {
                gone.push(*l);
                false
            } else {
                true
            }
        });
        self.dead = self.seqs.iter().filter(|(_, l)| l.size == 0).count();
        self.other.retain(|r, l| {
            if std::borrow::Borrow::<[u8]>::borrow(r).starts_with(prefix) {
                gone.push(*l);
                false
            } else {
                true
            }
        });
        gone
    }
}

/// The rest of a key, after its client id: held inline when short (a
/// queued message's is 9 bytes), so that an entry costs no allocation of
/// its own.
#[derive(Clone, Debug)]
enum Rest {
    Inline(u8, [u8; 22]),
    Heap(Box<[u8]>),
}

impl From<&[u8]> for Rest {
    fn from(b: &[u8]) -> Self {
        match u8::try_from(b.len()) {
            Ok(n) if usize::from(n) <= 22 => {
                let mut a = [0; 22];
                a[..b.len()].copy_from_slice(b);
                Self::Inline(n, a)
            }
            _ => Self::Heap(b.into()),
        }
    }
}

impl std::borrow::Borrow<[u8]> for Rest {
    fn borrow(&self) -> &[u8] {
        match self {
            Self::Inline(n, a) => &a[..usize::from(*n)],
            Self::Heap(b) => b,
        }
    }
}

impl PartialEq for Rest {
    fn eq(&self, other: &Self) -> bool {
        <Self as std::borrow::Borrow<[u8]>>::borrow(self)
            == <Self as std::borrow::Borrow<[u8]>>::borrow(other)
    }
}

impl Eq for Rest {}

impl std::hash::Hash for Rest {
    // As the slice hashes, so that lookups by `&[u8]` find it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        <Self as std::borrow::Borrow<[u8]>>::borrow(self).hash(state);
    }
}

/// Split a key at its first zero byte (the zero stays with the rest).
fn split(key: &[u8]) -> (&[u8], &[u8]) {
    let at = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    key.split_at(at)
}

fn table_index(t: Table) -> usize {
    Table::ALL.iter().position(|&x| x == t).unwrap_or(0)
}

fn table_from(byte: u8) -> Option<Table> {
    Table::ALL.get(usize::from(byte)).copied()
}

struct Inner {
    /// Frames not yet written to the active segment.
    buf: Vec<u8>,
    /// The segment being written, and its file.
    active: u64,
    file: Arc<File>,
    /// Bytes of the active segment already written to it.
    written: u64,
    /// Every segment, the active one included.
    segments: BTreeMap<u64, SegmentInfo>,
    index: Index,
    live: u64,
    /// Closed segments written since the last sync.
    unsynced: Vec<Arc<File>>,
    /// What the log held when it was opened, until the first commit.
    opened: Option<Entries>,
}

/// Every live entry, by table and key.
pub type Entries = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// The journal in a directory.
pub struct Journal {
    dir: PathBuf,
    /// A segment is closed once it is this long ([`SEGMENT_BYTES`]).
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// `Inner::live` as of the last change, readable without the lock.
    live: std::sync::atomic::AtomicU64,
    /// The buffer holds commits: a flush has something to write. (A
    /// commit sets it before it returns, so a flush that follows it in
    /// the same task sees it.)
    dirty: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn corrupt(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} at byte {offset}: {what}", path.display()),
    )
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

/// The segments in `dir`, oldest first.
fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name.strip_suffix(".log") {
            if let Ok(id) = u64::from_str_radix(hex, 16) {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// One operation read back from a frame.
enum Decoded<'a> {
    /// Table, key, value, where in the body it begins, its size.
    Put(Table, &'a [u8], &'a [u8], usize, u32),
    Delete(Table, &'a [u8]),
    DeletePrefix(Table, &'a [u8]),
}

/// The operations of a frame's body, or why it can't be read.
fn decode(body: &[u8]) -> Result<Vec<Decoded<'_>>, &'static str> {
    let mut out = Vec::new();
    let mut at = 0;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], &'static str> {
        let s = body.get(*at..*at + n).ok_or("truncated operation")?;
        *at += n;
        Ok(s)
    };
    while at < body.len() {
        let start = at;
        let head = take(&mut at, 2)?;
        let (tag, table) = (head[0], table_from(head[1]).ok_or("unknown table")?);
        let klen = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
        let key = take(&mut at, klen as usize)?;
        out.push(match tag {
            PUT => {
                let vlen = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
                let value = take(&mut at, vlen as usize)?;
                Decoded::Put(table, key, value, start, (at - start) as u32)
            }
            DELETE => Decoded::Delete(table, key),
            DELETE_PREFIX => Decoded::DeletePrefix(table, key),
            _ => return Err("unknown operation"),
        });
    }
    Ok(out)
}

/// Append `op`'s encoding; the bytes a put takes.
fn encode(buf: &mut Vec<u8>, tag: u8, table: Table, key: &[u8], value: Option<&[u8]>) -> u32 {
    let start = buf.len();
    buf.push(tag);
    buf.push(table_index(table) as u8);
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    if let Some(v) = value {
        buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        buf.extend_from_slice(v);
    }
    (buf.len() - start) as u32
}

/// What reading a segment found: its frames' bodies in order, where the
/// readable part ends, and whether (and why) the rest could not be read.
struct Scanned {
    bytes: Vec<u8>,
    /// (offset of the body, its length) for each good frame.
    frames: Vec<(usize, usize)>,
    end: u64,
    damage: Option<String>,
}

/// Read a segment's frames. A bad frame that reaches the end of the file
/// (or is followed by nothing but zeros) is a `torn` tail.
fn scan_segment(path: &Path) -> io::Result<(Scanned, bool)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A segment whose header never reached the disk is a torn tail too.
        let torn = bytes.iter().all(|&b| b == 0) || MAGIC.starts_with(&bytes);
        let damage = corrupt(path, 0, "not a Petrel journal segment").to_string();
        return Ok((
            Scanned {
                bytes,
                frames: Vec::new(),
                end: 0,
                damage: Some(damage),
            },
            torn,
        ));
    }
    let mut at = MAGIC.len();
    let mut frames = Vec::new();
    loop {
        if at == bytes.len() {
            return Ok((
                Scanned {
                    end: at as u64,
                    bytes,
                    frames,
                    damage: None,
                },
                false,
            ));
        }
        let bad = |why: &str| corrupt(path, at as u64, why).to_string();
        let damage = match bytes.get(at..at + 8) {
            None => Some(bad("truncated frame header")),
            Some(h) => {
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
                match bytes.get(at + 8..at + 8 + len) {
                    None => Some(bad("truncated frame")),
                    Some(_) if len == 0 => Some(bad("empty frame")),
                    Some(body) if crc32fast::hash(body) != crc => Some(bad("checksum mismatch")),
                    Some(body) => match decode(body) {
                        Err(why) => Some(bad(why)),
                        Ok(_) => None,
                    },
                }
            }
        };
        if let Some(damage) = damage {
            let len = bytes
                .get(at..at + 4)
                .map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
            let torn = at + 8 + len >= bytes.len() || bytes[at..].iter().all(|&b| b == 0);
            return Ok((
                Scanned {
                    end: at as u64,
                    bytes,
                    frames,
                    damage: Some(damage),
                },
                torn,
            ));
        }
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        frames.push((at + 8, len as usize));
        at += 8 + len as usize;
    }
}

/// What reading a journal found, damage included (for `petrel store`).
#[derive(Debug, Default)]
pub struct Inspection {
    /// Every entry that could be read, as the log left it.
    pub entries: Entries,
    /// What could not be read: the file, the offset and why (the rest of
    /// that segment is skipped).
    pub damage: Vec<String>,
    /// Bytes of the segments on disk.
    pub disk_bytes: u64,
}

/// Apply a frame's operations to `entries` (and, with `index`, to it).
fn replay(
    body: &[u8],
    segment: u64,
    body_offset: usize,
    entries: &mut Entries,
    mut index: Option<(&mut Index, &mut BTreeMap<u64, SegmentInfo>, &mut u64)>,
) {
    for op in decode(body).unwrap_or_default() {
        match op {
            Decoded::Put(t, k, v, start, size) => {
                entries.insert((t, k.to_vec()), v.to_vec());
                if let Some((index, segments, live)) = index.as_mut() {
                    let offset = (body_offset + start) as u64;
                    let loc = Loc {
                        segment,
                        offset,
                        size,
                    };
                    put_loc(index, segments, live, t, k, loc);
                }
            }
            Decoded::Delete(t, k) => {
                entries.remove(&(t, k.to_vec()));
                if let Some((index, segments, live)) = index.as_mut() {
                    delete_loc(index, segments, live, t, k);
                }
            }
            Decoded::DeletePrefix(t, p) => {
                entries.retain(|(tt, k), _| *tt != t || !k.starts_with(p));
                if let Some((index, segments, live)) = index.as_mut() {
                    delete_prefix_loc(index, segments, live, t, p);
                }
            }
        }
    }
}

fn forget(segments: &mut BTreeMap<u64, SegmentInfo>, live: &mut u64, loc: Loc) {
    if let Some(s) = segments.get_mut(&loc.segment) {
        s.live = s.live.saturating_sub(u64::from(loc.size));
    }
    *live = live.saturating_sub(u64::from(loc.size));
}

fn put_loc(
    index: &mut Index,
    segments: &mut BTreeMap<u64, SegmentInfo>,
    live: &mut u64,
    table: Table,
    key: &[u8],
    loc: Loc,
) {
    let (group, rest) = split(key);
    let groups = &mut index[table_index(table)];
    let entries = match groups.get_mut(group) {
        Some(e) => e,
        None => groups.entry(group.into()).or_default(),
    };
    if let Some(old) = entries.insert(rest, loc) {
        forget(segments, live, old);
    }
    segments.entry(loc.segment).or_default().live += u64::from(loc.size);
    *live += u64::from(loc.size);
}

fn delete_loc(
    index: &mut Index,
    segments: &mut BTreeMap<u64, SegmentInfo>,
    live: &mut u64,
    table: Table,
    key: &[u8],
) {
    let (group, rest) = split(key);
    let groups = &mut index[table_index(table)];
    if let Some(entries) = groups.get_mut(group) {
        if let Some(old) = entries.remove(rest) {
            forget(segments, live, old);
        }
        // A session's group stays while the session does (a queue that
        // empties fills again; its session's end removes the group), a
        // key of its own (a retained topic) goes with its entry.
        if entries.is_empty() && rest.is_empty() {
            groups.remove(group);
        }
    }
}

fn delete_prefix_loc(
    index: &mut Index,
    segments: &mut BTreeMap<u64, SegmentInfo>,
    live: &mut u64,
    table: Table,
    prefix: &[u8],
) {
    let (group, rest) = split(prefix);
    let groups = &mut index[table_index(table)];
    if rest.is_empty() {
        // Every group that starts with the prefix.
        groups.retain(|g, entries| {
            if !g.starts_with(group) {
                return true;
            }
            for loc in entries.locs() {
                forget(segments, live, loc);
            }
            false
        });
    } else if let Some(entries) = groups.get_mut(group) {
        for loc in entries.remove_prefix(rest) {
            forget(segments, live, loc);
        }
        if entries.is_empty() {
            groups.remove(group);
        }
    }
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, id))?;
    file.write_all_at(MAGIC, 0)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Open the journal in `dir` (created if missing), reading it all
    /// back. Damage anywhere but a torn tail is an error naming the file.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`Journal::open`], closing segments at `segment_bytes` (small ones
    /// let tests see compaction at work).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ids = list(dir)?;
        let mut entries = Entries::new();
        let mut index: Index = Table::ALL.iter().map(|_| FxHashMap::default()).collect();
        let mut segments = BTreeMap::new();
        let mut live = 0;
        for (n, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let (scanned, torn) = scan_segment(&path)?;
            if let Some(damage) = &scanned.damage {
                if !(torn && n + 1 == ids.len()) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, damage.clone()));
                }
                tracing::warn!(
                    file = %path.display(),
                    offset = scanned.end,
                    bytes = scanned.bytes.len() as u64 - scanned.end,
                    "the journal ends in a write that was not finished (the process or the machine stopped during it): cut off"
                );
            }
            segments.insert(
                id,
                SegmentInfo {
                    len: scanned.end.max(MAGIC.len() as u64),
                    live: 0,
                },
            );
            for &(at, len) in &scanned.frames {
                replay(
                    &scanned.bytes[at..at + len],
                    id,
                    at,
                    &mut entries,
                    Some((&mut index, &mut segments, &mut live)),
                );
            }
        }
        // Append to the last segment (its torn tail, if any, cut off), or
        // begin the first.
        let (active, file, written) = match ids.last() {
            Some(&id) => {
                let path = segment_path(dir, id);
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                let len = segments[&id].len;
                if file.metadata()?.len() != len {
                    file.set_len(len)?;
                    if len == MAGIC.len() as u64 {
                        file.write_all_at(MAGIC, 0)?;
                    }
                    file.sync_all()?;
                }
                (id, file, len)
            }
            None => {
                let file = create_segment(dir, 1)?;
                file.sync_all()?;
                sync_dir(dir)?;
                segments.insert(
                    1,
                    SegmentInfo {
                        len: MAGIC.len() as u64,
                        live: 0,
                    },
                );
                (1, file, MAGIC.len() as u64)
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(MAGIC.len() as u64 + 1),
            live: std::sync::atomic::AtomicU64::new(live),
            dirty: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(Inner {
                buf: Vec::new(),
                active,
                file: Arc::new(file),
                written,
                segments,
                index,
                live,
                unsynced: Vec::new(),
                opened: Some(entries),
            }),
        })
    }

    /// Read whatever can be read in `dir`, skipping past damage (the rest
    /// of a damaged segment), without changing anything.
    pub fn inspect(dir: &Path) -> io::Result<Inspection> {
        let mut out = Inspection::default();
        let ids = list(dir)?;
        for (n, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let (scanned, torn) = scan_segment(&path)?;
            out.disk_bytes += scanned.bytes.len() as u64;
            if let Some(d) = scanned.damage {
                if !(torn && n + 1 == ids.len()) {
                    out.damage.push(d);
                }
            }
            for &(at, len) in &scanned.frames {
                replay(&scanned.bytes[at..at + len], id, at, &mut out.entries, None);
            }
        }
        Ok(out)
    }

    /// Apply `ops` as one frame (in the process's buffer until
    /// [`Journal::flush`], or at once beyond a few MiB).
    pub fn commit(&self, ops: Vec<Op>) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        inner.opened = None;
        let start = inner.buf.len();
        inner.buf.extend_from_slice(&[0; 8]);
        let segment = inner.active;
        for op in ops {
            match op {
                Op::Put { table, key, value } => {
                    let offset = inner.written + inner.buf.len() as u64;
                    let size = encode(&mut inner.buf, PUT, table, &key, Some(&value));
                    let loc = Loc {
                        segment,
                        offset,
                        size,
                    };
                    put_loc(
                        &mut inner.index,
                        &mut inner.segments,
                        &mut inner.live,
                        table,
                        &key,
                        loc,
                    );
                }
                Op::Delete { table, key } => {
                    encode(&mut inner.buf, DELETE, table, &key, None);
                    delete_loc(
                        &mut inner.index,
                        &mut inner.segments,
                        &mut inner.live,
                        table,
                        &key,
                    );
                }
                Op::DeletePrefix { table, prefix } => {
                    encode(&mut inner.buf, DELETE_PREFIX, table, &prefix, None);
                    delete_prefix_loc(
                        &mut inner.index,
                        &mut inner.segments,
                        &mut inner.live,
                        table,
                        &prefix,
                    );
                }
            }
        }
        seal(&mut inner.buf, start);
        self.live
            .store(inner.live, std::sync::atomic::Ordering::Relaxed);
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        if inner.buf.len() >= BUFFER_LIMIT {
            self.write(inner)?;
        }
        Ok(())
    }

    /// Whether commits wait in the buffer for [`Journal::flush`].
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hand every commit so far to the operating system.
    pub fn flush(&self) -> io::Result<()> {
        if !self.dirty.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let mut g = lock(&self.inner);
        self.write(&mut g)
    }

    /// Write the buffer to the active segment; begin a new one once it is
    /// long enough. A failed write leaves the buffer to be written again
    /// at the same offset.
    fn write(&self, inner: &mut Inner) -> io::Result<()> {
        if inner.buf.is_empty() {
            return Ok(());
        }
        inner.file.write_all_at(&inner.buf, inner.written)?;
        self.dirty
            .store(false, std::sync::atomic::Ordering::Release);
        inner.written += inner.buf.len() as u64;
        if let Some(s) = inner.segments.get_mut(&inner.active) {
            s.len = inner.written;
        }
        inner.buf.clear();
        if inner.buf.capacity() > BUFFER_LIMIT {
            inner.buf.shrink_to(64 * 1024);
        }
        if inner.written >= self.segment_bytes {
            let next = inner.active + 1;
            let file = create_segment(&self.dir, next)?;
            let old = std::mem::replace(&mut inner.file, Arc::new(file));
            inner.unsynced.push(old);
            inner.active = next;
            inner.written = MAGIC.len() as u64;
            inner.segments.insert(
                next,
                SegmentInfo {
                    len: inner.written,
                    live: 0,
                },
            );
        }
        Ok(())
    }

    /// Write and sync to disk everything committed so far.
    pub fn sync(&self) -> io::Result<()> {
        let (files, new_segment) = {
            let mut g = lock(&self.inner);
            self.write(&mut g)?;
            let new_segment = !g.unsynced.is_empty();
            let mut files = std::mem::take(&mut g.unsynced);
            files.push(g.file.clone());
            (files, new_segment)
        };
        for f in &files {
            f.sync_data()?;
        }
        if new_segment {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Every entry of `table`, in key order, as committed so far.
    pub fn scan(&self, table: Table) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let select = |entries: &Entries| {
            entries
                .range((table, Vec::new())..)
                .take_while(|((t, _), _)| *t == table)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        };
        // Rare (at start, and in tests): read it all under the lock, so
        // that nothing is written or compacted meanwhile.
        let mut g = lock(&self.inner);
        if let Some(e) = &g.opened {
            return Ok(select(e));
        }
        self.write(&mut g)?;
        let mut entries = Entries::new();
        for &id in g.segments.keys() {
            let (scanned, _) = scan_segment(&segment_path(&self.dir, id))?;
            for &(at, len) in &scanned.frames {
                replay(&scanned.bytes[at..at + len], id, at, &mut entries, None);
            }
        }
        Ok(select(&entries))
    }

    /// Bytes of the segments (written or buffered).
    pub fn disk_bytes(&self) -> u64 {
        let g = lock(&self.inner);
        g.segments.values().map(|s| s.len).sum::<u64>() + g.buf.len() as u64
    }

    /// Bytes of the entries still live (each counted as it is encoded).
    pub fn live_bytes(&self) -> u64 {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Segments on disk.
    pub fn segments(&self) -> usize {
        lock(&self.inner).segments.len()
    }

    /// Whether the oldest segment should go: when nothing in it is live
    /// (no cost but deleting a file), or when the log holds more than
    /// twice the live bytes plus [`SPARE_SEGMENTS`] segments (rewriting
    /// what is live in it costs reading the segment, so a segment still
    /// holding a few messages in flight is given time to empty).
    fn oldest_to_compact(&self) -> Option<u64> {
        let g = lock(&self.inner);
        let (&oldest, info) = g.segments.iter().next()?;
        if oldest == g.active {
            return None;
        }
        let total: u64 = g.segments.values().map(|s| s.len).sum();
        (info.live == 0 || total > 2 * g.live + SPARE_SEGMENTS * self.segment_bytes)
            .then_some(oldest)
    }

    /// If the log is due for it, rewrite the oldest segment's live entries
    /// at its end and delete the segment. Whether one was.
    pub fn compact(&self) -> io::Result<bool> {
        let Some(oldest) = self.oldest_to_compact() else {
            return Ok(false);
        };
        let path = segment_path(&self.dir, oldest);
        let empty = lock(&self.inner)
            .segments
            .get(&oldest)
            .is_some_and(|s| s.live == 0);
        if !empty {
            self.rewrite_live(oldest, &path)?;
            // The rewritten entries are on disk before the segment goes.
            self.sync()?;
        }
        // Nothing in it is live: what it deleted was in segments gone
        // already, so it can go without being read.
        lock(&self.inner).segments.remove(&oldest);
        std::fs::remove_file(&path)?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Append again the entries whose latest put is in segment `oldest`.
    fn rewrite_live(&self, oldest: u64, path: &Path) -> io::Result<()> {
        // Which they are, from the index (not by reading the segment: the
        // few entries that live long, such as sessions' records, would
        // otherwise cost reading a whole segment each time).
        let (wanted, len) = {
            let g = lock(&self.inner);
            let mut wanted = Vec::new();
            for groups in &g.index {
                for entries in groups.values() {
                    wanted.extend(entries.locs().filter(|l| l.segment == oldest));
                }
            }
            (wanted, g.segments.get(&oldest).map_or(0, |s| s.len))
        };
        // The segment is closed, so nothing writes it: read without the
        // lock, the whole of it if much is wanted, else each entry.
        let file = File::open(path)?;
        let bytes: u64 = wanted.iter().map(|l| u64::from(l.size)).sum();
        let whole = if bytes > len / 8 {
            let mut all = Vec::new();
            (&file).read_to_end(&mut all)?;
            Some(all)
        } else {
            None
        };
        let mut records = Vec::with_capacity(wanted.len());
        for loc in wanted {
            let record = match &whole {
                Some(all) => usize::try_from(loc.offset)
                    .ok()
                    .and_then(|at| all.get(at..at + loc.size as usize))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| corrupt(path, loc.offset, "entry past the end"))?,
                None => {
                    let mut r = vec![0; loc.size as usize];
                    file.read_exact_at(&mut r, loc.offset)?;
                    r
                }
            };
            records.push((loc, record));
        }
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        let mut frame: Option<usize> = None;
        for (loc, record) in records {
            let Ok(ops) = decode(&record) else {
                return Err(corrupt(path, loc.offset, "unreadable entry"));
            };
            let Some(Decoded::Put(table, key, value, ..)) = ops.into_iter().next() else {
                return Err(corrupt(path, loc.offset, "not a put"));
            };
            // Still where it was read (not overwritten or deleted since)?
            let (group, rest) = split(key);
            let here = inner.index[table_index(table)]
                .get(group)
                .and_then(|e| e.get(rest))
                .is_some_and(|l| l == loc);
            if !here {
                continue;
            }
            let start = *frame.get_or_insert_with(|| {
                let s = inner.buf.len();
                inner.buf.extend_from_slice(&[0; 8]);
                s
            });
            let offset = inner.written + inner.buf.len() as u64;
            let size = encode(&mut inner.buf, PUT, table, key, Some(value));
            let segment = inner.active;
            put_loc(
                &mut inner.index,
                &mut inner.segments,
                &mut inner.live,
                table,
                key,
                Loc {
                    segment,
                    offset,
                    size,
                },
            );
            if inner.buf.len() - start >= BUFFER_LIMIT / 2 {
                seal(&mut inner.buf, start);
                frame = None;
            }
        }
        if let Some(start) = frame {
            seal(&mut inner.buf, start);
        }
        self.live
            .store(inner.live, std::sync::atomic::Ordering::Relaxed);
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.write(inner)
    }
}

/// Fill in the header of the frame that starts at `start` in `buf`.
fn seal(buf: &mut [u8], start: usize) {
    let body = &buf[start + 8..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("petrel-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn put(table: Table, k: &[u8], v: &[u8]) -> Op {
        Op::Put {
            table,
            key: k.to_vec(),
            value: v.to_vec(),
        }
    }

    fn del(table: Table, k: &[u8]) -> Op {
        Op::Delete {
            table,
            key: k.to_vec(),
        }
    }

    fn queue_key(client: &str, seq: u64) -> Vec<u8> {
        crate::core::store::child_key(client, &seq.to_be_bytes())
    }

    #[test]
    fn what_was_committed_is_read_back_in_key_order_after_reopening() {
        let d = temp("reopen");
        {
            let j = Journal::open(&d).unwrap();
            j.commit(vec![
                put(Table::Retained, b"b", b"2"),
                put(Table::Retained, b"a", b"1"),
                put(Table::Queue, &queue_key("c1", 1), b"m1"),
                put(Table::Queue, &queue_key("c1", 2), b"m2"),
                put(Table::Queue, &queue_key("c2", 1), b"n1"),
            ])
            .unwrap();
            j.commit(vec![
                del(Table::Retained, b"b"),
                put(Table::Retained, b"a", b"1'"),
                Op::DeletePrefix {
                    table: Table::Queue,
                    prefix: crate::core::store::child_key("c1", &[]),
                },
            ])
            .unwrap();
            // Visible to scan before any flush.
            assert_eq!(
                j.scan(Table::Retained).unwrap(),
                vec![(b"a".to_vec(), b"1'".to_vec())]
            );
            j.flush().unwrap();
        }
        let j = Journal::open(&d).unwrap();
        assert_eq!(
            j.scan(Table::Retained).unwrap(),
            vec![(b"a".to_vec(), b"1'".to_vec())]
        );
        assert_eq!(
            j.scan(Table::Queue).unwrap(),
            vec![(queue_key("c2", 1), b"n1".to_vec())]
        );
        // The index agrees with what is live: one retained, one queued.
        let expected = 2 * (1 + 1 + 4 + 4) + 1 + 2 + queue_key("c2", 1).len() + 2;
        assert_eq!(j.live_bytes(), expected as u64);
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn what_was_not_flushed_is_not_in_the_file() {
        // Positive control for the broker's rule that a flush comes before
        // any acknowledgement: without it, nothing reached the file.
        let d = temp("unflushed");
        let j = Journal::open(&d).unwrap();
        j.commit(vec![put(Table::Retained, b"a", b"1")]).unwrap();
        assert_eq!(Journal::inspect(&d).unwrap().entries.len(), 0);
        j.flush().unwrap();
        assert_eq!(Journal::inspect(&d).unwrap().entries.len(), 1);
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn deleted_entries_give_their_space_back_and_live_ones_stay() {
        let d = temp("compact");
        let j = Journal::open_with(&d, 4096).unwrap();
        // A retained message written once, at the start, and kept.
        j.commit(vec![put(Table::Retained, b"keep", b"forever")])
            .unwrap();
        let payload = [7u8; 100];
        let mut most = 0;
        for seq in 0..5000u64 {
            j.commit(vec![put(Table::Queue, &queue_key("sub", seq), &payload)])
                .unwrap();
            if seq >= 10 {
                j.commit(vec![del(Table::Queue, &queue_key("sub", seq - 10))])
                    .unwrap();
            }
            j.flush().unwrap();
            while j.compact().unwrap() {}
            most = most.max(j.disk_bytes());
        }
        // 5000 x 100 bytes went through; at most 10 are live at a time.
        let bound = (SPARE_SEGMENTS + 2) * 4096;
        assert!(most < bound, "the journal grew to {most} bytes");
        assert!(j.segments() <= 3, "{} segments", j.segments());
        drop(j);
        let j = Journal::open_with(&d, 4096).unwrap();
        assert_eq!(
            j.scan(Table::Retained).unwrap(),
            vec![(b"keep".to_vec(), b"forever".to_vec())]
        );
        let queue = j.scan(Table::Queue).unwrap();
        let seqs: Vec<u64> = queue
            .iter()
            .map(|(k, _)| u64::from_be_bytes(k[4..].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, (4990..5000).collect::<Vec<_>>());
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn live_entries_are_never_compacted_away() {
        // Positive control for the test above: with nothing deleted, the
        // journal keeps growing and compaction removes nothing.
        let d = temp("nocompact");
        let j = Journal::open_with(&d, 4096).unwrap();
        for seq in 0..500u64 {
            j.commit(vec![put(Table::Queue, &queue_key("sub", seq), &[1; 100])])
                .unwrap();
            j.flush().unwrap();
            while j.compact().unwrap() {}
        }
        assert!(j.disk_bytes() > 500 * 100);
        drop(j);
        assert_eq!(
            Journal::open_with(&d, 4096)
                .unwrap()
                .scan(Table::Queue)
                .unwrap()
                .len(),
            500
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn overwritten_entries_keep_their_latest_value_through_compaction() {
        let d = temp("overwrite");
        let j = Journal::open_with(&d, 2048).unwrap();
        let mut compactions = 0;
        for round in 0..30u32 {
            for k in 0..40u32 {
                let v = format!("{k}:{round}");
                j.commit(vec![put(
                    Table::Retained,
                    format!("t/{k}").as_bytes(),
                    v.as_bytes(),
                )])
                .unwrap();
            }
            j.flush().unwrap();
            while j.compact().unwrap() {
                compactions += 1;
            }
        }
        assert!(compactions > 5, "{compactions} compactions");
        drop(j);
        let j = Journal::open_with(&d, 2048).unwrap();
        let got = j.scan(Table::Retained).unwrap();
        assert_eq!(got.len(), 40);
        for (k, v) in got {
            let k = String::from_utf8(k).unwrap();
            assert_eq!(String::from_utf8(v).unwrap(), format!("{}:29", &k[2..]));
        }
        // What was dead went: the log is within its bound.
        assert!(j.disk_bytes() <= 2 * j.live_bytes() + (SPARE_SEGMENTS + 1) * 2048);
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    proptest::proptest! {
        /// A group's index agrees with a plain map whatever the order of
        /// puts and deletes, by sequence number or by other rests.
        #[test]
        fn a_group_holds_what_a_map_would(
            ops in proptest::collection::vec((0u8..4, 0u64..40), 0..300)
        ) {
            let mut g = Group::default();
            let mut model: BTreeMap<Vec<u8>, Loc> = BTreeMap::new();
            for (i, (op, n)) in ops.into_iter().enumerate() {
                let rest: Vec<u8> = if n % 7 == 0 {
                    vec![0, n as u8]
                } else {
                    let mut r = vec![0];
                    r.extend_from_slice(&n.to_be_bytes());
                    r
                };
                let loc = Loc { segment: 1, offset: i as u64, size: 10 + i as u32 };
                match op {
                    0 | 1 => {
                        proptest::prop_assert_eq!(g.insert(&rest, loc), model.insert(rest.clone(), loc));
                    }
                    2 => {
                        proptest::prop_assert_eq!(g.remove(&rest), model.remove(&rest));
                    }
                    _ => {
                        let gone = g.remove_prefix(&[0]).len();
                        proptest::prop_assert_eq!(gone, model.len());
                        model.clear();
                    }
                }
                proptest::prop_assert_eq!(g.get(&rest), model.get(&rest).copied());
                let mut locs: Vec<u64> = g.locs().map(|l| l.offset).collect();
                locs.sort_unstable();
                let mut expected: Vec<u64> = model.values().map(|l| l.offset).collect();
                expected.sort_unstable();
                proptest::prop_assert_eq!(locs, expected);
                proptest::prop_assert_eq!(g.is_empty(), model.is_empty());
            }
        }
    }

    fn only_segment(d: &Path) -> PathBuf {
        let ids = list(d).unwrap();
        assert_eq!(ids.len(), 1);
        segment_path(d, ids[0])
    }

    #[test]
    fn a_torn_last_write_is_cut_off_and_the_rest_kept() {
        let d = temp("torn");
        {
            let j = Journal::open(&d).unwrap();
            j.commit(vec![put(Table::Retained, b"a", b"1")]).unwrap();
            j.flush().unwrap();
        }
        let path = only_segment(&d);
        let good = std::fs::metadata(&path).unwrap().len();
        // Half a frame, as a write cut short would leave it.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2, 3, 4, 1, 0]).unwrap();
        drop(f);
        {
            let j = Journal::open(&d).unwrap();
            assert_eq!(j.scan(Table::Retained).unwrap().len(), 1);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
            // Appends go on after the cut.
            j.commit(vec![put(Table::Retained, b"b", b"2")]).unwrap();
            j.flush().unwrap();
        }
        let j = Journal::open(&d).unwrap();
        assert_eq!(j.scan(Table::Retained).unwrap().len(), 2);
        drop(j);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn damage_before_the_end_is_refused_naming_the_file_and_read_around() {
        let d = temp("damage");
        {
            let j = Journal::open(&d).unwrap();
            j.commit(vec![put(Table::Retained, b"first", b"1")])
                .unwrap();
            j.commit(vec![put(Table::Retained, b"second", b"2")])
                .unwrap();
            j.commit(vec![put(Table::Retained, b"third", b"3")])
                .unwrap();
            j.flush().unwrap();
        }
        let path = only_segment(&d);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a byte of the second frame's value.
        let at = bytes.windows(6).position(|w| w == b"second").unwrap() + 6 + 4;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = Journal::open(&d).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("checksum"), "{e}");
        let seen = Journal::inspect(&d).unwrap();
        assert_eq!(seen.damage.len(), 1, "{:?}", seen.damage);
        assert_eq!(
            seen.entries
                .keys()
                .map(|(_, k)| k.clone())
                .collect::<Vec<_>>(),
            vec![b"first".to_vec()]
        );
        // Positive control: undone, it opens with all three.
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            Journal::open(&d)
                .unwrap()
                .scan(Table::Retained)
                .unwrap()
                .len(),
            3
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
