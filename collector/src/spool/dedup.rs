//! Recognising a request the spool already holds or delivered: a client whose
//! answer was lost (the collector died after spooling, a connection broke) sends the
//! same request again, and OTLP carries no idempotency key.
//!
//! A request's fingerprint is XXH3-128 of the parts it maps to (table, rows, the
//! compressed RowBinary; the compressor is deterministic), seeded with the spool's
//! random instance id. It is therefore the same for the same content whatever the
//! transport (gRPC, HTTP), body encoding (protobuf, JSON) or `Content-Encoding`, and
//! hashing costs one pass over the compressed rows (about 25 bytes a span). 128 bits
//! make an accidental collision within a window negligible; the secret seed keeps
//! clients from computing fingerprints, so a request cannot simply be made to
//! collide with another's (XXH3 is not a cryptographic hash: this guards against
//! accidents and casual attempts, not a determined cryptanalyst).
//!
//! [`Recent`] remembers the fingerprints of the last `dedup_window_secs`, at most
//! `dedup_max_entries` of them, oldest first. Durability: a fingerprint is written
//! in the same record as its request's rows; before a segment is deleted (its rows
//! delivered), the fingerprints in it that are still within the window are appended
//! to a fingerprint file and fsynced. A start rebuilds the index from those files
//! and the surviving segments, so what was acknowledged before a crash is still
//! recognised after it.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use super::record::{self, Record, Remembered};
use crate::part::TablePart;

/// The fingerprint of a request's parts.
pub fn fingerprint(seed: u64, parts: &[TablePart]) -> u128 {
    let mut h = Xxh3::with_seed(seed);
    for p in parts {
        h.update(&[p.table as u8]);
        h.update(&p.rows.to_le_bytes());
        h.update(&(p.data.len() as u64).to_le_bytes());
        h.update(&p.data);
    }
    h.digest128()
}

/// Now, as stored in [`Remembered::secs`].
pub fn unix_secs() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// A remembered request; `segment` holds its record (0: only a fingerprint file).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The fingerprint as two words: 8-byte alignment keeps an entry at 24 bytes.
    fingerprint: [u64; 2],
    /// Unix seconds of arrival; 0 marks an entry forgotten (its append failed).
    secs: u32,
    segment: u32,
}

impl Entry {
    fn fingerprint(&self) -> u128 {
        u128::from(self.fingerprint[0]) | (u128::from(self.fingerprint[1]) << 64)
    }
}

/// Fingerprints are uniformly distributed already: their low word is their hash.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed; this keeps any other use well-defined.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// The index of recent fingerprints.
pub struct Recent {
    window_secs: u32,
    max_entries: usize,
    /// In arrival order, so segments are non-decreasing along it.
    order: VecDeque<Entry>,
    known: HashSet<u128, BuildHasherDefault<Identity>>,
    /// `order[..saved]` is in fingerprint files already.
    saved: usize,
    files: Files,
}

impl Recent {
    /// The index of what `dir` remembers: the fingerprint files, then `in_segments`
    /// (the fingerprints of the surviving segments' records, in log order).
    /// `window_secs` 0 turns deduplication off.
    pub fn open(
        dir: &Path,
        window_secs: u32,
        max_entries: usize,
        in_segments: Vec<(Remembered, u64)>,
        now: u32,
    ) -> std::io::Result<Recent> {
        let (files, saved) = Files::open(dir, window_secs, now)?;
        let mut recent = Recent {
            window_secs,
            max_entries,
            order: VecDeque::new(),
            known: HashSet::default(),
            saved: 0,
            files,
        };
        if window_secs == 0 {
            return Ok(recent);
        }
        for r in saved {
            recent.push(r, 0);
        }
        recent.saved = recent.order.len();
        for (r, segment) in in_segments {
            recent.push(r, segment);
        }
        recent.expire(now);
        Ok(recent)
    }

    pub fn enabled(&self) -> bool {
        self.window_secs > 0
    }

    pub fn contains(&self, fingerprint: u128) -> bool {
        self.known.contains(&fingerprint)
    }

    /// Remembers a request just written to `segment`.
    pub fn insert(&mut self, r: Remembered, segment: u64) {
        self.expire(r.secs);
        self.push(r, segment);
        self.expire(r.secs);
    }

    fn push(&mut self, r: Remembered, segment: u64) {
        if r.secs == 0 || !self.known.insert(r.fingerprint) {
            return;
        }
        self.order.push_back(Entry {
            fingerprint: [r.fingerprint as u64, (r.fingerprint >> 64) as u64],
            secs: r.secs,
            segment: u32::try_from(segment).unwrap_or(u32::MAX),
        });
    }

    /// Drops entries past the window or the cap, oldest first.
    fn expire(&mut self, now: u32) {
        let horizon = now.saturating_sub(self.window_secs);
        while let Some(e) = self.order.front() {
            if e.secs >= horizon && self.order.len() <= self.max_entries {
                break;
            }
            if e.secs != 0 {
                self.known.remove(&e.fingerprint());
            }
            self.order.pop_front();
            self.saved = self.saved.saturating_sub(1);
        }
    }

    /// The request was not made durable after all: a retry must be stored.
    pub fn forget(&mut self, fingerprint: u128) {
        if !self.known.remove(&fingerprint) {
            return;
        }
        if let Some(e) = self
            .order
            .iter_mut()
            .rev()
            .find(|e| e.secs != 0 && e.fingerprint() == fingerprint)
        {
            e.secs = 0;
        }
    }

    /// Makes the fingerprints of segments up to `segment` durable in a fingerprint
    /// file; called before those segments are deleted.
    pub fn save_through(&mut self, segment: u64, now: u32) -> std::io::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        self.expire(now);
        let end = self.saved
            + self
                .order
                .range(self.saved..)
                .take_while(|e| u64::from(e.segment) <= segment)
                .count();
        let entries: Vec<Remembered> = self
            .order
            .range(self.saved..end)
            .filter(|e| e.secs != 0)
            .map(|e| Remembered {
                fingerprint: e.fingerprint(),
                secs: e.secs,
            })
            .collect();
        self.files.append(&entries, now)?;
        self.saved = end;
        Ok(())
    }

    pub fn entries(&self) -> usize {
        self.order.len()
    }

    /// Heap bytes the index holds: the arrival queue and the hash set's table
    /// (16-byte keys plus one control byte per bucket).
    pub fn heap_bytes(&self) -> usize {
        self.order.capacity() * std::mem::size_of::<Entry>()
            + self.known.capacity() * 8 / 7 * (std::mem::size_of::<u128>() + 1)
    }
}

/// The fingerprint files: `<id>.fp` in the spool directory, each a sequence of
/// fingerprint records. A start writes to a new file; a file is closed once it spans
/// a quarter of the window and deleted once its newest entry left the window.
struct Files {
    dir: PathBuf,
    window_secs: u32,
    /// id → newest arrival in it; the last is the one written to.
    files: Vec<(u64, u32)>,
    current: Option<(File, u32)>,
}

const SUFFIX: &str = ".fp";

impl Files {
    fn open(dir: &Path, window_secs: u32, now: u32) -> std::io::Result<(Files, Vec<Remembered>)> {
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(SUFFIX)?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        let mut files = Files {
            dir: dir.to_path_buf(),
            window_secs,
            files: Vec::new(),
            current: None,
        };
        let mut found = Vec::new();
        for id in ids {
            let bytes = std::fs::read(files.path(id))?;
            let mut newest = 0;
            for r in record::scan(&bytes).0 {
                if let Record::Fingerprints(entries) = r {
                    newest = entries.iter().map(|e| e.secs).fold(newest, u32::max);
                    found.extend(entries);
                }
            }
            files.files.push((id, newest));
        }
        let horizon = now.saturating_sub(window_secs);
        found.retain(|r| r.secs >= horizon && window_secs > 0);
        files.delete_expired(now)?;
        Ok((files, found))
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}{SUFFIX}"))
    }

    fn append(&mut self, entries: &[Remembered], now: u32) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let stale = matches!(&self.current, Some((_, opened)) if opened.saturating_add(self.window_secs / 4) < now);
        if self.current.is_none() || stale {
            let id = self.files.last().map_or(1, |(id, _)| id + 1);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.path(id))?;
            File::open(&self.dir)?.sync_all()?;
            self.files.push((id, 0));
            self.current = Some((file, now));
        }
        let (file, _) = self.current.as_mut().expect("opened above");
        file.write_all(&record::fingerprints(entries))?;
        file.sync_data()?;
        let newest = entries.iter().map(|e| e.secs).max().unwrap_or(0);
        if let Some((_, n)) = self.files.last_mut() {
            *n = (*n).max(newest);
        }
        self.delete_expired(now)
    }

    /// Deletes the files whose entries all left the window (never the current one).
    fn delete_expired(&mut self, now: u32) -> std::io::Result<()> {
        let horizon = now.saturating_sub(self.window_secs);
        let current = self
            .current
            .is_some()
            .then(|| self.files.last().map(|f| f.0));
        let mut kept = Vec::with_capacity(self.files.len());
        for (id, newest) in std::mem::take(&mut self.files) {
            if (newest < horizon || self.window_secs == 0) && current != Some(Some(id)) {
                std::fs::remove_file(self.path(id))?;
            } else {
                kept.push((id, newest));
            }
        }
        self.files = kept;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(fingerprint: u128, secs: u32) -> Remembered {
        Remembered { fingerprint, secs }
    }

    #[test]
    fn remembers_within_the_window_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut recent = Recent::open(dir.path(), 600, 3, vec![], 1000).unwrap();
        recent.insert(r(1, 1000), 1);
        recent.insert(r(2, 1100), 1);
        assert!(recent.contains(1) && recent.contains(2) && !recent.contains(3));
        recent.insert(r(3, 1601), 2);
        assert!(!recent.contains(1), "past the window");
        assert!(recent.contains(2) && recent.contains(3));
        recent.insert(r(4, 1602), 2);
        recent.insert(r(5, 1603), 2);
        assert_eq!(recent.entries(), 3, "the cap");
        assert!(!recent.contains(2) && recent.contains(5));
        recent.forget(5);
        assert!(!recent.contains(5));
        recent.insert(r(5, 1604), 3);
        assert!(recent.contains(5), "remembered again after a failed append");
    }

    #[test]
    fn saved_fingerprints_survive_their_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut recent = Recent::open(dir.path(), 600, 100, vec![], 1000).unwrap();
        recent.insert(r(1, 1000), 1);
        recent.insert(r(2, 1001), 2);
        recent.insert(r(3, 1002), 3);
        recent.forget(2);
        // Segments 1 and 2 are deleted: their fingerprints move to a file.
        recent.save_through(2, 1003).unwrap();
        drop(recent);
        // A start sees the file and the surviving segment 3.
        let recent = Recent::open(dir.path(), 600, 100, vec![(r(3, 1002), 3)], 1010).unwrap();
        assert!(recent.contains(1) && recent.contains(3));
        assert!(!recent.contains(2), "a forgotten fingerprint is not saved");
        // Past the window the file is deleted at the next start.
        drop(recent);
        let recent = Recent::open(dir.path(), 600, 100, vec![], 2000).unwrap();
        assert!(!recent.contains(1));
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 0);
    }

    #[test]
    fn fingerprints_differ_with_content_and_seed() {
        use crate::schema::TableId;
        let part = |byte: u8| TablePart {
            table: TableId::Logs,
            rows: 1,
            raw_len: 3,
            data: vec![byte; 3],
        };
        let a = fingerprint(7, &[part(1)]);
        assert_eq!(a, fingerprint(7, &[part(1)]));
        assert_ne!(a, fingerprint(7, &[part(2)]));
        assert_ne!(a, fingerprint(8, &[part(1)]));
        assert_ne!(a, fingerprint(7, &[part(1), part(1)]));
    }

    #[test]
    fn bytes_per_remembered_request() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1_000_000;
        let mut recent = Recent::open(dir.path(), 600, n, vec![], 1000).unwrap();
        for i in 0..n as u128 {
            recent.insert(
                r(
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
                    1000,
                ),
                1,
            );
        }
        let per = recent.heap_bytes() as f64 / n as f64;
        println!(
            "{n} remembered requests: {} bytes, {per:.1} bytes each",
            recent.heap_bytes()
        );
        assert!(per < 100.0, "{per}");
    }
}
