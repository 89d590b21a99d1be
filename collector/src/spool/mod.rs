//! The durable spool between the receivers and batching (sled).
//!
//! Guarantee: a request is acknowledged only after its rows are in the spool, and
//! with `sync = "fsync"` (the default) after the spool's log was fsynced — an
//! acknowledged request survives `kill -9` and power loss of the process. Writes are
//! group-committed: every `flush_interval_ms` one fsync covers all requests appended
//! meanwhile, so latency grows by at most that interval and throughput does not pay
//! one fsync per request. With `sync = "none"` acknowledgement happens after the
//! write reached sled's page cache (sled flushes it within half a second), which
//! survives a process crash only if the OS does not.
//!
//! Rows leave the spool only after ClickHouse confirmed their INSERT. A batch is
//! recorded (its parts and its deduplication token) before its first INSERT attempt,
//! so after a restart it is rebuilt identically and a retry of an INSERT that did
//! land is dropped by ClickHouse's deduplication instead of duplicating rows.

mod commit;
mod record;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::part::TablePart;
use crate::schema::TableId;
use commit::GroupCommit;
pub use record::{BatchRecord, SpooledPart};

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
    /// Rows (encoded bytes) the spool may hold; past it, requests are refused with
    /// 429 / RESOURCE_EXHAUSTED until ClickHouse catches up.
    pub max_disk_bytes: u64,
    /// sled's page cache.
    pub cache_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: ".local/spool".into(),
            sync: SyncMode::Fsync,
            flush_interval_ms: 1,
            max_disk_bytes: 1 << 30,
            cache_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("the spool is full ({used} of {budget} bytes); ClickHouse is behind")]
    Full { used: u64, budget: u64 },
    #[error("spool record {0} is corrupt")]
    Corrupt(u64),
}

/// What a restart found: batches to re-send as they were, and parts not yet batched.
pub struct Recovered {
    pub batches: Vec<(BatchRecord, Vec<SpooledPart>)>,
    pub parts: Vec<SpooledPart>,
}

pub struct Spool {
    db: sled::Db,
    parts: sled::Tree,
    batches: sled::Tree,
    /// Random per spool directory, so tokens never repeat even if the directory is
    /// recreated and sequence numbers start over.
    instance: u64,
    /// Random per process start; see [`BatchRecord::epoch`].
    epoch: u64,
    next_seq: AtomicU64,
    next_batch: AtomicU64,
    used_bytes: AtomicU64,
    budget: u64,
    commit: Option<Arc<GroupCommit>>,
}

const META_INSTANCE: &[u8] = b"instance";

impl Spool {
    pub fn open(config: &SpoolConfig) -> Result<(Arc<Spool>, Recovered), SpoolError> {
        let db = sled::Config::new()
            .path(PathBuf::from(&config.dir))
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(500))
            .open()?;
        let parts = db.open_tree("parts")?;
        let batches = db.open_tree("batches")?;
        let meta = db.open_tree("meta")?;
        let instance = match meta.get(META_INSTANCE)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => {
                let id: u64 = rand::random();
                meta.insert(META_INSTANCE, &id.to_be_bytes())?;
                db.flush()?;
                id
            }
        };
        let recovered = recover(&parts, &batches)?;
        let next_seq = last_key(&parts)?.max(
            recovered
                .batches
                .iter()
                .flat_map(|(b, _)| b.seqs.iter().copied())
                .max()
                .unwrap_or(0),
        ) + 1;
        let next_batch = last_key(&batches)? + 1;
        let used: u64 = recovered
            .batches
            .iter()
            .flat_map(|(_, p)| p.iter())
            .chain(recovered.parts.iter())
            .map(|p| p.len as u64)
            .sum();
        let commit = (config.sync == SyncMode::Fsync).then(|| {
            GroupCommit::start(
                db.clone(),
                std::time::Duration::from_millis(config.flush_interval_ms),
            )
        });
        let spool = Spool {
            db,
            parts,
            batches,
            instance,
            epoch: rand::random(),
            next_seq: AtomicU64::new(next_seq),
            next_batch: AtomicU64::new(next_batch),
            used_bytes: AtomicU64::new(used),
            budget: config.max_disk_bytes,
            commit,
        };
        Ok((Arc::new(spool), recovered))
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget
    }

    /// Writes a request's parts atomically; returns once they are durable.
    pub async fn append(&self, parts: Vec<TablePart>) -> Result<Vec<SpooledPart>, SpoolError> {
        let bytes: u64 = parts.iter().map(|p| p.data.len() as u64).sum();
        let used = self.used_bytes.fetch_add(bytes, Ordering::Relaxed);
        if used + bytes > self.budget && bytes > 0 {
            self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(SpoolError::Full {
                used,
                budget: self.budget,
            });
        }
        let first = self
            .next_seq
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        let mut batch = sled::Batch::default();
        let spooled: Vec<SpooledPart> = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let seq = first + i as u64;
                batch.insert(&seq.to_be_bytes(), record::encode_part(&p));
                SpooledPart {
                    seq,
                    table: p.table,
                    rows: p.rows,
                    raw_len: p.raw_len,
                    len: p.data.len() as u32,
                    data: Some(p.data),
                }
            })
            .collect();
        if let Err(e) = self.parts.apply_batch(batch) {
            self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(e.into());
        }
        self.durable().await?;
        Ok(spooled)
    }

    async fn durable(&self) -> Result<(), SpoolError> {
        match &self.commit {
            Some(c) => c.wait().await,
            None => Ok(()),
        }
    }

    /// The rows of a part whose bytes were not kept in memory.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, SpoolError> {
        let v = self
            .parts
            .get(seq.to_be_bytes())?
            .ok_or(SpoolError::Corrupt(seq))?;
        record::decode_part(seq, &v).map(|p| p.data.expect("decoded with data"))
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
        self.batches
            .insert(id.to_be_bytes(), record::encode_batch(&record))?;
        self.durable().await?;
        Ok(record)
    }

    /// The INSERT deduplication token of a batch: the same after any restart.
    pub fn token(&self, record: &BatchRecord) -> String {
        format!("{:016x}-{:016x}-{}", self.instance, record.epoch, record.id)
    }

    /// ClickHouse confirmed the batch (or refused it for good): its rows leave.
    pub fn confirm(&self, record: &BatchRecord, bytes: u64) -> Result<(), SpoolError> {
        let mut batch = sled::Batch::default();
        for seq in &record.seqs {
            batch.remove(&seq.to_be_bytes());
        }
        self.parts.apply_batch(batch)?;
        self.batches.remove(record.id.to_be_bytes())?;
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes everything to disk (at shutdown).
    pub fn flush(&self) -> Result<(), SpoolError> {
        self.db.flush()?;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(c) = &self.commit {
            c.stop();
        }
    }
}

fn last_key(tree: &sled::Tree) -> Result<u64, SpoolError> {
    Ok(match tree.last()? {
        Some((k, _)) if k.len() == 8 => u64::from_be_bytes(k.as_ref().try_into().expect("8 bytes")),
        _ => 0,
    })
}

fn recover(parts: &sled::Tree, batches: &sled::Tree) -> Result<Recovered, SpoolError> {
    let mut by_seq = std::collections::BTreeMap::new();
    for item in parts.iter() {
        let (k, v) = item?;
        let seq = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| SpoolError::Corrupt(0))?);
        by_seq.insert(seq, record::decode_meta(seq, &v)?);
    }
    let mut recorded = Vec::new();
    for item in batches.iter() {
        let (k, v) = item?;
        let id = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| SpoolError::Corrupt(0))?);
        let record = record::decode_batch(id, &v)?;
        let members: Vec<SpooledPart> = record
            .seqs
            .iter()
            .filter_map(|s| by_seq.remove(s))
            .collect();
        if members.is_empty() {
            // Confirmed, but the process died before the record was removed.
            batches.remove(k)?;
        } else {
            recorded.push((record, members));
        }
    }
    Ok(Recovered {
        batches: recorded,
        parts: by_seq.into_values().collect(),
    })
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
                .unwrap();
            let b = spool
                .append(vec![part(TableId::Traces, 4, 3)])
                .await
                .unwrap();
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
            .unwrap();
        assert!(c[0].seq > rec.parts[0].seq);
    }

    #[tokio::test]
    async fn refuses_past_the_disk_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(&SpoolConfig {
            max_disk_bytes: 10,
            ..config(dir.path())
        })
        .unwrap();
        spool.append(vec![part(TableId::Logs, 3, 1)]).await.unwrap();
        let e = spool
            .append(vec![part(TableId::Logs, 1, 1)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                SpoolError::Full {
                    used: 9,
                    budget: 10
                }
            ),
            "{e}"
        );
        assert_eq!(spool.used_bytes(), 9);
    }
}
