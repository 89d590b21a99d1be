//! Segment files: the spool's log on disk, appended to and deleted whole.
//!
//! Each process start opens a new segment; a segment past [`Log::segment_bytes`] is
//! fsynced and the next one started. A segment is deleted once nothing in it is
//! live (every part confirmed, every batch record done) and every older segment is
//! gone: a confirm record then never outlives the batch record it cancels.
//!
//! A failed write (ENOSPC, EIO, a short write) never leaves a partial record in
//! the segment: the file is cut back to its last good length and the request fails
//! (the receivers answer 503 / UNAVAILABLE, which clients retry). If even that cut
//! fails, the segment is closed and the next record starts a new one, so the
//! partial record is that segment's tail, which recovery ignores.
//!
//! Tests inject such faults through [`Faults`] (compiled only for the crate's own
//! tests: the production path is the plain file calls).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::dedup::{unix_secs, Recent};

/// Where a part's bytes are.
#[derive(Debug, Clone, Copy)]
pub struct PartLoc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// A batch record's (epoch, id): ids of different process starts may be equal.
pub type BatchKey = (u64, u64);

struct Segment {
    file: Arc<File>,
    /// Parts and batch records in it not yet confirmed.
    live: u64,
    /// Its size on disk.
    bytes: u64,
}

pub struct Log {
    dir: PathBuf,
    pub segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    current: u64,
    pub(super) current_len: u64,
    /// By sequence number, so the oldest unconfirmed part is the first.
    parts: BTreeMap<u64, PartLoc>,
    /// The segment of each batch record not yet confirmed, by (epoch, id).
    batches: HashMap<BatchKey, u64>,
    /// The fingerprints of recent requests; saved before their segments go.
    pub recent: Recent,
    /// A failed write could not be cut back: the next record starts a new segment.
    broken: bool,
    /// The segments' bytes on disk, what the spool's budget counts: a segment
    /// pinned by one old batch counts whole.
    pub disk_bytes: Arc<AtomicU64>,
    /// A current segment this large with nothing live in it is closed early, so
    /// that it can be deleted and the disk budget gets its bytes back.
    pub roll_dead_at: u64,
    #[cfg(test)]
    pub faults: Arc<Faults>,
}

/// Faults the next file calls fail with, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Faults {
    /// (bytes of the next record that reach the file, the error that follows)
    pub write: std::sync::Mutex<Option<(usize, i32)>>,
    /// The cut back to the last good length fails too.
    pub truncate: std::sync::atomic::AtomicBool,
    /// The next fsync fails with this errno.
    pub sync: std::sync::Mutex<Option<i32>>,
}

#[cfg(test)]
impl Faults {
    fn write(&self, file: &File, slices: &[IoSlice<'_>]) -> Option<std::io::Error> {
        let (reach, errno) = self.write.lock().expect("not poisoned").take()?;
        let bytes: Vec<u8> = slices.iter().flat_map(|s| s.to_vec()).collect();
        if let Err(e) = (&*file).write_all(&bytes[..reach.min(bytes.len())]) {
            return Some(e);
        }
        Some(std::io::Error::from_raw_os_error(errno))
    }

    pub fn sync(&self) -> std::io::Result<()> {
        match self.sync.lock().expect("not poisoned").take() {
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

/// The ids of the segment files in `dir`, oldest first.
pub fn segment_ids(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_suffix(".log")?, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

impl Log {
    /// Opens the segments recovery found, with what is live in each, and starts a
    /// new one after them.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        existing: Vec<u64>,
        parts: HashMap<u64, PartLoc>,
        batches: HashMap<BatchKey, u64>,
        recent: Recent,
    ) -> std::io::Result<Log> {
        let mut segments = BTreeMap::new();
        let mut disk = 0;
        for id in existing {
            let file = File::open(segment_path(dir, id))?;
            let bytes = file.metadata()?.len();
            disk += bytes;
            segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    live: 0,
                    bytes,
                },
            );
        }
        for loc in parts.values() {
            if let Some(s) = segments.get_mut(&loc.segment) {
                s.live += 1;
            }
        }
        for seg in batches.values() {
            if let Some(s) = segments.get_mut(seg) {
                s.live += 1;
            }
        }
        let current = segments.keys().next_back().map_or(1, |id| id + 1);
        let mut log = Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            current,
            current_len: 0,
            parts: parts.into_iter().collect(),
            batches,
            recent,
            broken: false,
            disk_bytes: Arc::new(AtomicU64::new(disk)),
            roll_dead_at: segment_bytes,
            #[cfg(test)]
            faults: Arc::default(),
        };
        log.create(current)?;
        log.delete_dead()?;
        Ok(log)
    }

    fn create(&mut self, id: u64) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(segment_path(&self.dir, id))?;
        // The new file's name must be durable before anything in it is.
        File::open(&self.dir)?.sync_all()?;
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                live: 0,
                bytes: 0,
            },
        );
        self.current = id;
        self.current_len = 0;
        Ok(())
    }

    /// The file a group commit must fsync: the current segment (older ones were
    /// fsynced when they were closed).
    pub fn current_file(&self) -> Arc<File> {
        self.segments[&self.current].file.clone()
    }

    /// Fsyncs the current segment.
    pub fn sync(&self) -> std::io::Result<()> {
        #[cfg(test)]
        self.faults.sync()?;
        self.current_file().sync_data()
    }

    /// Appends one record given as slices; returns the offset where it starts. On
    /// an error nothing of the record stays in the log.
    pub fn append(&mut self, slices: &[IoSlice<'_>]) -> std::io::Result<u64> {
        if self.current_len >= self.segment_bytes || self.broken {
            if let Err(e) = self.sync() {
                super::commit::fsync_failed(&e);
                return Err(e);
            }
            self.create(self.current + 1)?;
            self.broken = false;
        }
        let start = self.current_len;
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let file = self.current_file();
        if let Err(e) = self.write_all(&file, slices, total) {
            if let Err(cut) = self.truncate(&file, start) {
                tracing::error!(error = %cut, segment = self.current, "cannot cut a failed spool write back; the next record starts a new segment");
                self.broken = true;
            }
            return Err(e);
        }
        self.current_len += total as u64;
        if let Some(s) = self.segments.get_mut(&self.current) {
            s.bytes += total as u64;
        }
        self.disk_bytes.fetch_add(total as u64, Ordering::Relaxed);
        Ok(start)
    }

    /// Closes the current segment if nothing in it is live and it holds at least
    /// `min_bytes`, and deletes what that frees: after a backlog drained, the
    /// segment it ended in would otherwise keep its bytes until it filled up.
    pub fn roll_if_dead(&mut self, min_bytes: u64) -> std::io::Result<()> {
        let dead = self
            .segments
            .get(&self.current)
            .is_some_and(|s| s.live == 0);
        if !dead || self.current_len == 0 || self.current_len < min_bytes {
            return Ok(());
        }
        // Closed segments are fsynced (recovery must frame them); its confirms
        // would only spare a restart re-sending batches ClickHouse drops as repeats.
        self.current_file().sync_data()?;
        self.create(self.current + 1)?;
        self.delete_dead()
    }

    fn write_all(&self, file: &File, slices: &[IoSlice<'_>], total: usize) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(e) = self.faults.write(file, slices) {
            return Err(e);
        }
        let mut owned: Vec<IoSlice<'_>> = slices.to_vec();
        let mut rest = &mut owned[..];
        let mut written = 0;
        while written < total {
            let n = match (&*file).write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            written += n;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    fn truncate(&self, file: &File, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self
            .faults
            .truncate
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        file.set_len(len)
    }

    pub fn current_segment(&self) -> u64 {
        self.current
    }

    /// The oldest part not yet confirmed.
    pub fn oldest_part(&self) -> Option<u64> {
        self.parts.keys().next().copied()
    }

    pub fn add_part(&mut self, seq: u64, loc: PartLoc) {
        if let Some(s) = self.segments.get_mut(&loc.segment) {
            s.live += 1;
        }
        self.parts.insert(seq, loc);
    }

    pub fn add_batch(&mut self, key: BatchKey, segment: u64) {
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live += 1;
        }
        self.batches.insert(key, segment);
    }

    pub fn part(&self, seq: u64) -> Option<(PartLoc, Arc<File>)> {
        let loc = *self.parts.get(&seq)?;
        Some((loc, self.segments.get(&loc.segment)?.file.clone()))
    }

    /// The batch and its parts are done: they stop holding their segments.
    pub fn done(&mut self, batch: BatchKey, seqs: &[u64]) -> std::io::Result<()> {
        let segments = seqs
            .iter()
            .filter_map(|s| self.parts.remove(s).map(|l| l.segment))
            .chain(self.batches.remove(&batch));
        for id in segments.collect::<Vec<_>>() {
            if let Some(s) = self.segments.get_mut(&id) {
                s.live = s.live.saturating_sub(1);
            }
        }
        self.delete_dead()?;
        self.roll_if_dead(self.roll_dead_at)
    }

    fn delete_dead(&mut self) -> std::io::Result<()> {
        let dead: Vec<u64> = self
            .segments
            .iter()
            .take_while(|(&id, s)| id != self.current && s.live == 0)
            .map(|(&id, _)| id)
            .collect();
        let Some(&last) = dead.last() else {
            return Ok(());
        };
        // Their fingerprints must outlive them for the deduplication window.
        self.recent.save_through(last, unix_secs())?;
        for id in dead {
            if let Some(s) = self.segments.remove(&id) {
                self.disk_bytes.fetch_sub(s.bytes, Ordering::Relaxed);
            }
            std::fs::remove_file(segment_path(&self.dir, id))?;
        }
        Ok(())
    }

    pub fn read(file: &File, loc: PartLoc) -> std::io::Result<Vec<u8>> {
        let mut data = vec![0; loc.len as usize];
        file.read_exact_at(&mut data, loc.offset)?;
        Ok(data)
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}
