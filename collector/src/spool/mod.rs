//! The durable spool between the receivers and batching: an append-only log of
//! segment files (see [`log`] and [`record`]).
//!
//! Guarantee: a request is acknowledged only after its rows are in the spool, and
//! with `sync = "fsync"` (the default) after the log was fsynced — an acknowledged
//! request survives `kill -9` and power loss. Writes are group-committed: every
//! `flush_interval_ms` one fsync covers all requests appended meanwhile, so latency
//! grows by at most that interval and throughput does not pay one fsync per request.
//! With `sync = "none"` acknowledgement happens after the write reached the OS (the
//! log is fsynced every half second), which survives a process crash, not a machine
//! crash. A request's parts are one record, written with one write: after a crash it
//! is in the spool whole or not at all.
//!
//! Rows leave the spool only after ClickHouse confirmed their INSERT. A batch is
//! recorded (its parts and its deduplication token) before its first INSERT attempt,
//! so after a restart it is rebuilt identically and a retry of an INSERT that did
//! land is dropped by ClickHouse's deduplication instead of duplicating rows.
//!
//! Disk faults: a failed write leaves no partial record behind (see [`log`]) and
//! fails the request, which the receivers answer with 503 / UNAVAILABLE. A failed
//! fsync exits the process ([`commit::fsync_failed`] says why): the data written
//! since the last good fsync is in an unknown state, and only a restart, which reads
//! the segments back, knows what is durable.
//!
//! A client that lost its answer and sends the request again is recognised by the
//! request's fingerprint within `dedup_window_secs` ([`dedup`]): the retry is
//! acknowledged without being stored twice.

mod commit;
pub mod dedup;
#[cfg(test)]
mod fault_tests;
mod log;
mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::part::TablePart;
use crate::schema::TableId;
use commit::GroupCommit;
use log::{BatchKey, Log, PartLoc};

pub use record::{BatchRecord, Remembered, SpooledPart};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Fsync,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: String,
    pub sync: SyncMode,
    /// Group-commit window: how long an append may wait for the shared fsync.
    pub flush_interval_ms: u64,
    /// Bytes the spool's segment files may take on disk (records whole, and a
    /// segment kept for one old batch counts whole); past it, requests are
    /// refused with 429 / RESOURCE_EXHAUSTED until ClickHouse catches up.
    pub max_disk_bytes: u64,
    /// Size at which a segment file is closed and the next one started; a segment
    /// is deleted once all its rows are in ClickHouse.
    pub segment_bytes: u64,
    /// How long a request is remembered: a retry of it within this time is
    /// acknowledged without being stored again. 0 turns deduplication off.
    pub dedup_window_secs: u32,
    /// At most this many requests are remembered (about 61 bytes of memory each);
    /// past it the oldest are forgotten first.
    pub dedup_max_entries: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: ".local/spool".into(),
            sync: SyncMode::Fsync,
            flush_interval_ms: 1,
            max_disk_bytes: 1 << 30,
            segment_bytes: 32 << 20,
            dedup_window_secs: 600,
            dedup_max_entries: 1_000_000,
        }
    }
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("the spool is full ({used} of {budget} bytes); ClickHouse is behind")]
    Full { used: u64, budget: u64 },
    #[error("spool record {0} is missing")]
    Missing(u64),
    #[error("{0} holds a spool of the earlier format (sled): deliver it with the version that wrote it, or remove it")]
    OldFormat(String),
    #[error("the spool directory {dir} is in use by another collector process{holder} (it holds {dir}/lock); give each collector its own spool.dir")]
    Locked { dir: String, holder: String },
}

/// What [`Spool::append`] did with a request.
#[derive(Debug)]
pub enum Appended {
    /// Stored, now durable.
    Stored(Vec<SpooledPart>),
    /// The same request was stored within the deduplication window (and is durable):
    /// nothing was written.
    Duplicate,
}

impl Appended {
    /// The stored parts (none for a duplicate).
    pub fn stored(self) -> Vec<SpooledPart> {
        match self {
            Appended::Stored(parts) => parts,
            Appended::Duplicate => Vec::new(),
        }
    }
}

/// What a restart found: batches to re-send as they were, and parts not yet batched.
pub struct Recovered {
    pub batches: Vec<(BatchRecord, Vec<SpooledPart>)>,
    pub parts: Vec<SpooledPart>,
    /// Quarantine files written by this start (see [`quarantine`]).
    pub quarantined: Vec<PathBuf>,
}

pub struct Spool {
    log: Arc<Mutex<Log>>,
    /// Random per spool directory, so tokens never repeat even if the directory is
    /// recreated and sequence numbers start over.
    instance: u64,
    /// Random per process start; see [`BatchRecord::epoch`].
    epoch: u64,
    next_seq: AtomicU64,
    next_batch: AtomicU64,
    /// Row bytes not yet in ClickHouse.
    used_bytes: AtomicU64,
    /// The segment files' bytes, what `budget` limits (see [`Log::disk_bytes`]).
    disk_bytes: Arc<AtomicU64>,
    budget: u64,
    /// `*.quarantine` files in the directory at start (see [`quarantine`]).
    quarantined: (u64, u64),
    sync: SyncMode,
    commit: Arc<GroupCommit>,
    /// Whether requests are fingerprinted (`dedup_window_secs` > 0).
    dedup: bool,
    /// Held for the spool's life: one process per spool directory.
    _lock: std::fs::File,
}

const INSTANCE_FILE: &str = "instance";
const LOCK_FILE: &str = "lock";
/// With `sync = "none"`, how often the log is fsynced anyway.
const BACKGROUND_SYNC: Duration = Duration::from_millis(500);

impl Spool {
    pub fn open(config: &SpoolConfig) -> Result<(Arc<Spool>, Recovered), SpoolError> {
        let dir = PathBuf::from(&config.dir);
        if dir.join("conf").exists() && dir.join("db").exists() {
            return Err(SpoolError::OldFormat(config.dir.clone()));
        }
        std::fs::create_dir_all(&dir)?;
        let lock = lock(&dir)?;
        let instance = instance(&dir)?;
        let mut found = recover(&dir)?;
        let used: u64 = found.parts.values().map(|(p, _)| u64::from(p.len)).sum();
        let (recovered, locs, batch_segments) = found.split();
        let recent = dedup::Recent::open(
            &dir,
            config.dedup_window_secs,
            config.dedup_max_entries,
            std::mem::take(&mut found.remembered),
            dedup::unix_secs(),
        )?;
        let mut log = Log::open(
            &dir,
            config.segment_bytes.max(1),
            found_segments(&dir)?,
            locs,
            batch_segments,
            recent,
        )?;
        // Past a quarter of the budget, an emptied segment is closed early so its
        // bytes come back (a small budget with large segments would stay full).
        log.roll_dead_at = log.roll_dead_at.min(config.max_disk_bytes / 4).max(1);
        let disk_bytes = log.disk_bytes.clone();
        let quarantined = quarantine_files(&dir)?;
        if quarantined.0 > 0 {
            tracing::warn!(dir = %dir.display(), files = quarantined.0, bytes = quarantined.1, "the spool directory holds quarantined records (see *.quarantine): look at them, then remove them");
        }
        let log = Arc::new(Mutex::new(log));
        let flushed = log.clone();
        let interval = match config.sync {
            SyncMode::Fsync => Duration::from_millis(config.flush_interval_ms),
            SyncMode::None => BACKGROUND_SYNC,
        };
        let commit = GroupCommit::start(
            move || {
                let log = flushed.lock().expect("not poisoned");
                #[cfg(test)]
                log.faults.sync()?;
                // Not under the lock: appends go on while the fsync runs.
                let file = log.current_file();
                drop(log);
                file.sync_data()
            },
            interval,
        );
        let spool = Spool {
            log,
            instance,
            epoch: rand::random(),
            next_seq: AtomicU64::new(found.max_seq + 1),
            // Past every id a surviving batch or confirm record holds. Ids may still
            // start over once the spool empties; the epoch keeps (epoch, id), the
            // key confirms and tokens use, unique.
            next_batch: AtomicU64::new(found.max_batch + 1),
            used_bytes: AtomicU64::new(used),
            disk_bytes,
            budget: config.max_disk_bytes,
            quarantined,
            sync: config.sync,
            commit,
            dedup: config.dedup_window_secs > 0,
            _lock: lock,
        };
        Ok((Arc::new(spool), recovered))
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget
    }

    /// The segment files' bytes on disk, what the budget limits.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    /// Whether a request may be appended: the segments are below the budget.
    pub fn has_room(&self) -> bool {
        self.disk_bytes() < self.budget
    }

    /// Quarantine files (count, bytes) found in the directory at start.
    pub fn quarantined(&self) -> (u64, u64) {
        self.quarantined
    }

    /// The sequence number the next appended part gets; every part below it was
    /// appended before this call.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// The oldest part not yet confirmed by ClickHouse (None: the spool is empty).
    pub fn oldest_seq(&self) -> Result<Option<u64>, SpoolError> {
        Ok(self.log.lock().expect("not poisoned").oldest_part())
    }

    /// Writes a request's parts as one record; returns once they are durable. A
    /// request remembered from the deduplication window is not written again; like a
    /// stored one, it returns once the earlier copy is durable.
    pub async fn append(&self, parts: Vec<TablePart>) -> Result<Appended, SpoolError> {
        let bytes: u64 = parts.iter().map(|p| p.data.len() as u64).sum();
        let remembered = (self.dedup && !parts.is_empty()).then(|| Remembered {
            fingerprint: dedup::fingerprint(self.instance, &parts),
            secs: dedup::unix_secs(),
        });
        let written = {
            let mut log = self.log.lock().expect("not poisoned");
            // Checked and remembered under the lock that orders the writes: of two
            // copies in flight, one is written and the other finds it.
            if remembered.is_some_and(|r| log.recent.contains(r.fingerprint)) {
                None
            } else {
                Some(self.write(&mut log, &parts, remembered, bytes))
            }
        };
        let Some(written) = written else {
            self.durable().await?;
            return Ok(Appended::Duplicate);
        };
        let first = written?;
        if let Err(e) = self.durable().await {
            if let Some(r) = remembered {
                self.log
                    .lock()
                    .expect("not poisoned")
                    .recent
                    .forget(r.fingerprint);
            }
            return Err(e);
        }
        Ok(Appended::Stored(
            parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| SpooledPart {
                    seq: first + i as u64,
                    table: p.table,
                    rows: p.rows,
                    raw_len: p.raw_len,
                    len: p.data.len() as u32,
                    data: Some(p.data),
                })
                .collect(),
        ))
    }

    /// How many requests the deduplication index remembers, and its heap bytes.
    pub fn remembered(&self) -> (usize, usize) {
        let log = self.log.lock().expect("not poisoned");
        (log.recent.entries(), log.recent.heap_bytes())
    }

    /// Writes the record (not yet durable) and notes where its parts are; returns
    /// the first part's sequence number.
    fn write(
        &self,
        log: &mut Log,
        parts: &[TablePart],
        remembered: Option<Remembered>,
        bytes: u64,
    ) -> Result<u64, SpoolError> {
        let first = self.next_seq.load(Ordering::Relaxed);
        let head = record::parts_head(first, remembered, parts);
        let record_len = head.len() as u64 + bytes;
        if self.disk_bytes() + record_len > self.budget && bytes > 0 {
            // An emptied current segment may be all that is in the way.
            log.roll_if_dead(0)?;
            let disk = self.disk_bytes();
            if disk + record_len > self.budget {
                return Err(SpoolError::Full {
                    used: disk,
                    budget: self.budget,
                });
            }
        }
        // Under the log lock: nobody else takes sequence numbers meanwhile.
        self.next_seq
            .store(first + parts.len() as u64, Ordering::Relaxed);
        let start = log.append(&record::parts_slices(&head, parts))?;
        self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        let segment = log.current_segment();
        let mut offset = start + head.len() as u64;
        for (i, p) in parts.iter().enumerate() {
            let loc = PartLoc {
                segment,
                offset,
                len: p.data.len() as u32,
            };
            log.add_part(first + i as u64, loc);
            offset += p.data.len() as u64;
        }
        if let Some(r) = remembered {
            log.recent.insert(r, segment);
        }
        Ok(first)
    }

    async fn durable(&self) -> Result<(), SpoolError> {
        match self.sync {
            SyncMode::Fsync => self.commit.wait().await,
            SyncMode::None => {
                self.commit.request();
                Ok(())
            }
        }
    }

    /// The rows of a part whose bytes were not kept in memory.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, SpoolError> {
        let (loc, file) = self
            .log
            .lock()
            .expect("not poisoned")
            .part(seq)
            .ok_or(SpoolError::Missing(seq))?;
        Ok(Log::read(&file, loc)?)
    }

    /// Records a batch before its first INSERT; returns once the record is durable.
    pub async fn record_batch(
        &self,
        table: TableId,
        seqs: Vec<u64>,
    ) -> Result<BatchRecord, SpoolError> {
        let id = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let record = BatchRecord {
            id,
            epoch: self.epoch,
            table,
            seqs,
        };
        let bytes = record::batch(&record);
        {
            let mut log = self.log.lock().expect("not poisoned");
            log.append(&[std::io::IoSlice::new(&bytes)])?;
            let segment = log.current_segment();
            log.add_batch((self.epoch, id), segment);
        }
        self.durable().await?;
        Ok(record)
    }

    /// The INSERT deduplication token of a batch: the same after any restart.
    pub fn token(&self, record: &BatchRecord) -> String {
        format!("{:016x}-{:016x}-{}", self.instance, record.epoch, record.id)
    }

    /// ClickHouse confirmed the batch (or refused it for good): its rows leave. Not
    /// waited for: if the confirmation is lost, a restart re-sends the batch with
    /// its token and ClickHouse drops the repeat.
    pub fn confirm(&self, record: &BatchRecord, bytes: u64) -> Result<(), SpoolError> {
        let confirm = record::confirm(record.epoch, record.id);
        let mut log = self.log.lock().expect("not poisoned");
        log.append(&[std::io::IoSlice::new(&confirm)])?;
        log.done((record.epoch, record.id), &record.seqs)?;
        drop(log);
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes everything to disk (at shutdown).
    pub fn flush(&self) -> Result<(), SpoolError> {
        let file = self.log.lock().expect("not poisoned").current_file();
        file.sync_data()?;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.commit.stop();
    }
}

/// Takes the spool directory's lock: two processes replaying and appending to one
/// spool would deliver its batches twice and corrupt its segments. An advisory
/// `flock`, released by the kernel however the process ends (a stale lock file
/// after `kill -9` does not block the restart). The file names the holder's pid.
fn lock(dir: &Path) -> Result<std::fs::File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim();
            Err(SpoolError::Locked {
                dir: dir.display().to_string(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// The spool directory's random id, created on first use.
fn instance(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(INSTANCE_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(id) = u64::from_str_radix(text.trim(), 16) {
            return Ok(id);
        }
    }
    let id: u64 = rand::random();
    let tmp = dir.join("instance.tmp");
    std::fs::write(&tmp, format!("{id:016x}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

/// (count, bytes) of the `*.quarantine` files in `dir`.
fn quarantine_files(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut found = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.path().extension() == Some("quarantine".as_ref()) {
            found.0 += 1;
            found.1 += entry.metadata()?.len();
        }
    }
    Ok(found)
}

fn found_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    log::segment_ids(dir)
}

/// Everything the segments hold, before it is sorted into batches and free parts.
struct Found {
    /// seq → (part, where its bytes are)
    parts: BTreeMap<u64, (SpooledPart, PartLoc)>,
    /// Log order → (record, its segment), not confirmed.
    batches: BTreeMap<usize, (BatchRecord, u64)>,
    /// (epoch, id) → the log order of the newest such batch in `batches`.
    batch_keys: HashMap<BatchKey, usize>,
    /// Batch records read so far.
    records: usize,
    /// The fingerprints of the requests in the segments, in log order, with their
    /// segment.
    remembered: Vec<(Remembered, u64)>,
    max_seq: u64,
    max_batch: u64,
    /// Files holding the rest of segments after a corrupt record.
    quarantined: Vec<PathBuf>,
}

impl Found {
    /// Cancels the newest batch recorded so far with this key (any epoch for a
    /// confirm of the earlier format) and its parts.
    fn confirm(&mut self, epoch: Option<u64>, id: u64) {
        let order = match epoch {
            Some(epoch) => self.batch_keys.remove(&(epoch, id)),
            // Rare (a spool written by an earlier version): a scan is fine.
            None => self
                .batches
                .iter()
                .rev()
                .find(|(_, (b, _))| b.id == id)
                .map(|(order, _)| *order),
        };
        let Some((record, _)) = order.and_then(|o| self.batches.remove(&o)) else {
            return;
        };
        self.batch_keys.remove(&(record.epoch, record.id));
        for s in &record.seqs {
            self.parts.remove(s);
        }
    }

    /// Recorded batches with the parts still present, the free parts, and where
    /// everything live is.
    fn split(&self) -> (Recovered, HashMap<u64, PartLoc>, HashMap<BatchKey, u64>) {
        let mut claimed = HashSet::new();
        let mut batches = Vec::new();
        let mut batch_segments = HashMap::new();
        for (record, segment) in self.batches.values() {
            let members: Vec<SpooledPart> = record
                .seqs
                .iter()
                .filter(|s| claimed.insert(**s))
                .filter_map(|s| self.parts.get(s).map(|(p, _)| p.clone()))
                .collect();
            // A batch with no parts left was delivered; its confirm was lost.
            if !members.is_empty() {
                batch_segments.insert((record.epoch, record.id), *segment);
                batches.push((record.clone(), members));
            }
        }
        let parts = self
            .parts
            .iter()
            .filter(|(s, _)| !claimed.contains(*s))
            .map(|(_, (p, _))| p.clone())
            .collect();
        let locs = self.parts.iter().map(|(s, (_, loc))| (*s, *loc)).collect();
        (
            Recovered {
                batches,
                parts,
                quarantined: self.quarantined.clone(),
            },
            locs,
            batch_segments,
        )
    }
}

/// Moves what follows a corrupt record in a segment to `<segment>-<offset>.quarantine`
/// in the spool directory, fsynced, then cuts the segment there: the records after
/// a corrupt one cannot be framed with certainty, so they are kept for a person to
/// look at (and reported) rather than replayed or dropped. Returns the file.
fn quarantine(dir: &Path, segment: u64, offset: usize, rest: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{segment:016x}-{offset}.quarantine"));
    let mut file = std::fs::File::create(&path)?;
    std::io::Write::write_all(&mut file, rest)?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(log::segment_path(dir, segment))?;
    cut.set_len(offset as u64)?;
    cut.sync_all()?;
    Ok(path)
}

fn recover(dir: &Path) -> Result<Found, SpoolError> {
    let mut found = Found {
        parts: BTreeMap::new(),
        batches: BTreeMap::new(),
        batch_keys: HashMap::new(),
        records: 0,
        remembered: Vec::new(),
        max_seq: 0,
        max_batch: 0,
        quarantined: Vec::new(),
    };
    for id in log::segment_ids(dir)? {
        let path = log::segment_path(dir, id);
        let bytes = std::fs::read(&path)?;
        let (records, end) = record::scan(&bytes);
        if end < bytes.len() {
            if record::is_torn_tail(&bytes[end..]) {
                tracing::warn!(segment = %path.display(), valid = end, size = bytes.len(), "spool segment ends in an incomplete record (a write cut short); ignoring the rest");
            } else {
                let file = quarantine(dir, id, end, &bytes[end..])?;
                tracing::error!(segment = %path.display(), valid = end, size = bytes.len(), quarantined = %file.display(), "spool segment holds a corrupt record before its end: the rest of the segment (acknowledged data among it) was moved to the quarantine file");
                found.quarantined.push(file);
            }
        }
        for r in records {
            match r {
                record::Record::Parts { parts, remembered } => {
                    found.remembered.extend(remembered.map(|r| (r, id)));
                    for (p, offset) in parts {
                        found.max_seq = found.max_seq.max(p.seq);
                        let loc = PartLoc {
                            segment: id,
                            offset,
                            len: p.len,
                        };
                        found.parts.insert(p.seq, (p, loc));
                    }
                }
                record::Record::Batch(b) => {
                    found.max_batch = found.max_batch.max(b.id);
                    found.max_seq = found.max_seq.max(b.seqs.iter().copied().max().unwrap_or(0));
                    let order = found.records;
                    found.records += 1;
                    found.batch_keys.insert((b.epoch, b.id), order);
                    found.batches.insert(order, (b, id));
                }
                // Applied in log order, so it cancels only a batch (and parts)
                // written before it, never a later one that reused the id.
                record::Record::Confirm { epoch, id: batch } => {
                    found.max_batch = found.max_batch.max(batch);
                    found.confirm(epoch, batch);
                }
                record::Record::Fingerprints(_) => {}
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.display().to_string(),
            ..Default::default()
        }
    }

    fn part(table: TableId, rows: u32, byte: u8) -> TablePart {
        TablePart {
            table,
            rows,
            raw_len: rows * 10,
            data: vec![byte; rows as usize * 3],
        }
    }

    #[tokio::test]
    async fn recovers_recorded_batches_and_free_parts() {
        let dir = tempfile::tempdir().unwrap();
        let token;
        {
            let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
            assert!(rec.batches.is_empty() && rec.parts.is_empty());
            let a = spool
                .append(vec![part(TableId::Traces, 2, 1), part(TableId::Logs, 1, 2)])
                .await
                .unwrap()
                .stored();
            let b = spool
                .append(vec![part(TableId::Traces, 4, 3)])
                .await
                .unwrap()
                .stored();
            assert_eq!(spool.used_bytes(), 21);
            let record = spool
                .record_batch(TableId::Traces, vec![a[0].seq, b[0].seq])
                .await
                .unwrap();
            token = spool.token(&record);
            assert_eq!(spool.read(b[0].seq).unwrap(), vec![3; 12]);
        }
        let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(rec.batches.len(), 1);
        let (record, members) = &rec.batches[0];
        assert_eq!(spool.token(record), token, "same token after restart");
        assert_eq!(members.iter().map(|p| p.rows).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(rec.parts.len(), 1);
        assert_eq!(rec.parts[0].table, TableId::Logs);
        assert_eq!(rec.parts[0].data, None, "recovery reads no row bytes");
        assert_eq!(spool.read(rec.parts[0].seq).unwrap(), [2, 2, 2]);
        assert_eq!(spool.used_bytes(), 21);

        spool.confirm(record, 18).unwrap();
        drop(spool);
        let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
        assert!(rec.batches.is_empty());
        assert_eq!(rec.parts.len(), 1);
        assert_eq!(spool.used_bytes(), 3);
        // New sequence numbers continue after the old ones.
        let c = spool
            .append(vec![part(TableId::Gauge, 1, 9)])
            .await
            .unwrap()
            .stored();
        assert!(c[0].seq > rec.parts[0].seq);
    }

    #[tokio::test]
    async fn refuses_past_the_disk_budget() {
        let dir = tempfile::tempdir().unwrap();
        // Learn one record's size on disk.
        let record = {
            let probe = tempfile::tempdir().unwrap();
            let (spool, _) = Spool::open(&config(probe.path())).unwrap();
            spool.append(vec![part(TableId::Logs, 3, 1)]).await.unwrap();
            spool.disk_bytes()
        };
        assert!(record > 9, "the budget counts records whole: {record}");
        let (spool, _) = Spool::open(&SpoolConfig {
            max_disk_bytes: record + 5,
            ..config(dir.path())
        })
        .unwrap();
        let first = spool
            .append(vec![part(TableId::Logs, 3, 1)])
            .await
            .unwrap()
            .stored();
        let e = spool
            .append(vec![part(TableId::Logs, 1, 1)])
            .await
            .unwrap_err();
        assert!(
            matches!(e, SpoolError::Full { used, budget } if used == record && budget == record + 5),
            "{e}"
        );
        assert_eq!(spool.used_bytes(), 9);
        // Delivered: the emptied segment is closed and deleted, the room is back.
        let batch = spool
            .record_batch(TableId::Logs, vec![first[0].seq])
            .await
            .unwrap();
        spool.confirm(&batch, 9).unwrap();
        assert_eq!(spool.disk_bytes(), 0);
        spool.append(vec![part(TableId::Logs, 1, 1)]).await.unwrap();
    }

    /// The budget counts segments on disk: a segment kept for one old batch
    /// counts whole, even when its other rows were delivered.
    #[tokio::test]
    async fn a_segment_pinned_by_an_old_batch_counts_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&SpoolConfig {
            segment_bytes: 1 << 20,
            ..config(dir.path())
        })
        .unwrap();
        let mut seqs = Vec::new();
        for i in 0..10 {
            let p = spool
                .append(vec![part(TableId::Logs, 100, i)])
                .await
                .unwrap()
                .stored();
            seqs.push(p[0].seq);
        }
        let old = spool
            .record_batch(TableId::Logs, seqs[..1].to_vec())
            .await
            .unwrap();
        let rest = spool
            .record_batch(TableId::Logs, seqs[1..].to_vec())
            .await
            .unwrap();
        spool.confirm(&rest, 2700).unwrap();
        assert_eq!(spool.used_bytes(), 300, "one part's rows are live");
        let on_disk: u64 = log::segment_ids(dir.path())
            .unwrap()
            .iter()
            .map(|id| {
                std::fs::metadata(log::segment_path(dir.path(), *id))
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(on_disk > 3000);
        assert_eq!(spool.disk_bytes(), on_disk, "every segment byte counts");
        spool.confirm(&old, 300).unwrap();
    }

    #[tokio::test]
    async fn segments_are_deleted_once_delivered_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let small = SpoolConfig {
            segment_bytes: 50,
            ..config(dir.path())
        };
        let (spool, _) = Spool::open(&small).unwrap();
        let mut seqs = Vec::new();
        for i in 0..6 {
            let p = spool
                .append(vec![part(TableId::Logs, 20, i)])
                .await
                .unwrap()
                .stored();
            seqs.push(p[0].seq);
        }
        let segments = |spool: &Spool| spool.log.lock().unwrap().segment_count();
        assert!(segments(&spool) >= 6, "{}", segments(&spool));
        let first = spool
            .record_batch(TableId::Logs, seqs[..3].to_vec())
            .await
            .unwrap();
        let second = spool
            .record_batch(TableId::Logs, seqs[3..].to_vec())
            .await
            .unwrap();
        // Confirming the newer batch frees nothing: older segments still hold rows.
        spool.confirm(&second, 180).unwrap();
        let before = segments(&spool);
        spool.confirm(&first, 180).unwrap();
        assert!(segments(&spool) < before);
        assert_eq!(spool.used_bytes(), 0);
        // One part more, then half a record as a crash would leave it.
        let kept = spool
            .append(vec![part(TableId::Traces, 1, 7)])
            .await
            .unwrap()
            .stored();
        drop(spool);
        let last = *log::segment_ids(dir.path()).unwrap().last().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log::segment_path(dir.path(), last))
            .unwrap();
        std::io::Write::write_all(&mut f, &record::confirm(0, 1)[..5]).unwrap();
        let (spool, rec) = Spool::open(&small).unwrap();
        assert!(rec.batches.is_empty());
        assert_eq!(
            rec.parts.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [kept[0].seq]
        );
        assert_eq!(spool.read(kept[0].seq).unwrap(), [7, 7, 7]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_in_the_window_is_stored_once_even_when_both_copies_race() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&config(dir.path())).unwrap();
        for round in 0..50u8 {
            let request = || vec![part(TableId::Traces, 2, round), part(TableId::Logs, 1, 9)];
            let (a, b) = tokio::join!(spool.append(request()), spool.append(request()));
            let stored = [a.unwrap(), b.unwrap()]
                .into_iter()
                .filter(|r| matches!(r, Appended::Stored(_)))
                .count();
            assert_eq!(stored, 1, "round {round}");
        }
        assert!(matches!(
            spool
                .append(vec![part(TableId::Traces, 2, 0)])
                .await
                .unwrap(),
            Appended::Stored(_)
        ));
        assert_eq!(spool.remembered().0, 51);
    }

    #[tokio::test]
    async fn a_restart_remembers_delivered_requests_and_off_means_off() {
        let dir = tempfile::tempdir().unwrap();
        // One record per segment, so a delivered request's segment is deleted.
        let small = SpoolConfig {
            segment_bytes: 1,
            ..config(dir.path())
        };
        let request = || vec![part(TableId::Logs, 4, 5)];
        {
            let (spool, _) = Spool::open(&small).unwrap();
            let parts = spool.append(request()).await.unwrap().stored();
            spool.append(vec![part(TableId::Logs, 1, 6)]).await.unwrap();
            let batch = spool
                .record_batch(TableId::Logs, vec![parts[0].seq])
                .await
                .unwrap();
            spool.confirm(&batch, 12).unwrap();
            assert!(
                !log::segment_ids(dir.path()).unwrap().contains(&1),
                "the delivered request's segment is gone"
            );
            let fp = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("fp".as_ref()))
                .count();
            assert_eq!(fp, 1, "its fingerprint moved to a fingerprint file");
        }
        let (spool, recovered) = Spool::open(&small).unwrap();
        assert_eq!(recovered.parts.len(), 1);
        assert!(matches!(
            spool.append(request()).await.unwrap(),
            Appended::Duplicate
        ));
        assert!(matches!(
            spool.append(vec![part(TableId::Logs, 1, 6)]).await.unwrap(),
            Appended::Duplicate
        ));
        drop(spool);
        let (spool, _) = Spool::open(&SpoolConfig {
            dedup_window_secs: 0,
            ..small
        })
        .unwrap();
        assert!(matches!(
            spool.append(request()).await.unwrap(),
            Appended::Stored(_)
        ));
    }

    /// Issue 14: killed during an outage, restarted, the replayed batch confirmed,
    /// killed again before a new batch, restarted, a new batch recorded, restarted:
    /// the old confirm must not cancel the new batch (which may reuse its id).
    #[tokio::test]
    async fn an_old_confirm_never_cancels_a_later_batch_in_a_crash_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&config(dir.path())).unwrap();
        let a = spool
            .append(vec![part(TableId::Logs, 1, 1)])
            .await
            .unwrap()
            .stored();
        let first = spool
            .record_batch(TableId::Logs, vec![a[0].seq])
            .await
            .unwrap();
        drop(spool); // killed while ClickHouse is down

        let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(rec.batches.len(), 1);
        // Meanwhile a new request arrives; then the replayed batch lands.
        let b = spool
            .append(vec![part(TableId::Logs, 2, 2)])
            .await
            .unwrap()
            .stored();
        spool.confirm(&rec.batches[0].0, 3).unwrap();
        drop(spool); // killed before the new part was batched

        let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
        assert!(rec.batches.is_empty());
        assert_eq!(
            rec.parts.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [b[0].seq]
        );
        let second = spool
            .record_batch(TableId::Logs, vec![b[0].seq])
            .await
            .unwrap();
        drop(spool); // killed before ClickHouse confirmed the new batch

        let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(
            rec.batches
                .iter()
                .map(|(r, m)| (r.id, m.iter().map(|p| p.seq).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
            [(second.id, vec![b[0].seq])],
            "the acknowledged, unconfirmed part is still there, in its batch"
        );
        assert_eq!(spool.read(b[0].seq).unwrap(), [2; 6]);
        assert!(
            second.id > first.id,
            "batch ids are not reused across restarts"
        );
    }

    #[test]
    fn a_second_spool_on_the_same_directory_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Spool::open(&config(dir.path())).unwrap();
        let e = Spool::open(&config(dir.path())).err().unwrap();
        let message = e.to_string();
        assert!(
            message.contains(&format!(
                "{} is in use by another collector process (pid {})",
                dir.path().display(),
                std::process::id()
            )),
            "{message}"
        );
        drop(first);
        Spool::open(&config(dir.path())).unwrap();
    }

    #[test]
    fn refuses_a_sled_spool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), "").unwrap();
        std::fs::write(dir.path().join("db"), "").unwrap();
        let e = Spool::open(&config(dir.path())).err().unwrap();
        assert!(e.to_string().contains("earlier format"), "{e}");
    }
}
