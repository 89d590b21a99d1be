//! The records of the spool's log.
//!
//! Framing: `[body length u32 LE][CRC-32 of the body u32 LE][body]`; the body starts
//! with its kind. A record is written whole by one write; after a crash, the first
//! record that is short or fails its CRC ends what a segment holds.
//!
//! - parts: `[1][count u16]`, per part `[seq u64][table u8][rows u32][raw_len u32]
//!   [len u32]`, then the parts' bytes one after the other — every part of one request
//!   in one record, so a request is spooled whole or not at all;
//! - remembered parts: `[4][fingerprint u128][arrival, Unix seconds u32]`, then as
//!   parts from the count on — the request's fingerprint is durable exactly when its
//!   rows are;
//! - batch: `[2][id u64][epoch u64][table u8][seq u64]*`;
//! - confirm: `[6][epoch u64][batch id u64]` — the batch's rows are in ClickHouse;
//!   it cancels only the batch of that process start recorded before it in the log
//!   (ids of different starts may be equal). `[3][batch id u64]`, written by
//!   earlier versions, is still read: it cancels the batch with that id recorded
//!   before it;
//! - fingerprints: `[5]([fingerprint u128][arrival u32])*` — in the fingerprint
//!   files only (see [`super::dedup`]): delivered requests still within the window.

use std::io::IoSlice;

use crate::part::TablePart;
use crate::schema::TableId;

/// A part in the spool. `data` is `None` when its bytes were left on disk to keep
/// memory within budget; batching reads them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledPart {
    pub seq: u64,
    pub table: TableId,
    pub rows: u32,
    /// RowBinary bytes before compression.
    pub raw_len: u32,
    /// Stored (compressed) bytes.
    pub len: u32,
    pub data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub id: u64,
    /// The process start that recorded the batch: ids restart when the spool empties,
    /// so the token needs this to stay unique.
    pub epoch: u64,
    pub table: TableId,
    pub seqs: Vec<u64>,
}

/// A request's fingerprint and when it arrived: what deduplication remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: u128,
    /// Unix seconds.
    pub secs: u32,
}

pub const FRAME: usize = 8;
const PARTS: u8 = 1;
const BATCH: u8 = 2;
const CONFIRM: u8 = 3;
const REMEMBERED_PARTS: u8 = 4;
const FINGERPRINTS: u8 = 5;
const EPOCH_CONFIRM: u8 = 6;
const PART_META: usize = 8 + 1 + 4 + 4 + 4;
const REMEMBERED: usize = 16 + 4;

/// A record read back from a segment; parts carry where their bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Parts {
        /// (part, offset of its bytes in the segment)
        parts: Vec<(SpooledPart, u64)>,
        remembered: Option<Remembered>,
    },
    Batch(BatchRecord),
    /// `epoch` is None for a confirm written by an earlier version.
    Confirm {
        epoch: Option<u64>,
        id: u64,
    },
    Fingerprints(Vec<Remembered>),
}

/// The frame and part table of a parts record; the parts' bytes follow it on disk.
pub fn parts_head(first_seq: u64, remembered: Option<Remembered>, parts: &[TablePart]) -> Vec<u8> {
    let mut body = Vec::with_capacity(FRAME + 1 + REMEMBERED + 2 + PART_META * parts.len());
    body.extend_from_slice(&[0; FRAME]);
    match remembered {
        Some(r) => {
            body.push(REMEMBERED_PARTS);
            put_remembered(&mut body, r);
        }
        None => body.push(PARTS),
    }
    body.extend_from_slice(&(parts.len() as u16).to_le_bytes());
    for (i, p) in parts.iter().enumerate() {
        body.extend_from_slice(&(first_seq + i as u64).to_le_bytes());
        body.push(p.table as u8);
        body.extend_from_slice(&p.rows.to_le_bytes());
        body.extend_from_slice(&p.raw_len.to_le_bytes());
        body.extend_from_slice(&(p.data.len() as u32).to_le_bytes());
    }
    let len: usize = body.len() - FRAME + parts.iter().map(|p| p.data.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body[FRAME..]);
    for p in parts {
        crc.update(&p.data);
    }
    body[..4].copy_from_slice(&(len as u32).to_le_bytes());
    body[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    body
}

/// The slices to write for a parts record.
pub fn parts_slices<'a>(head: &'a [u8], parts: &'a [TablePart]) -> Vec<IoSlice<'a>> {
    std::iter::once(IoSlice::new(head))
        .chain(parts.iter().map(|p| IoSlice::new(&p.data)))
        .collect()
}

pub fn batch(b: &BatchRecord) -> Vec<u8> {
    let mut body = vec![BATCH];
    body.extend_from_slice(&b.id.to_le_bytes());
    body.extend_from_slice(&b.epoch.to_le_bytes());
    body.push(b.table as u8);
    for s in &b.seqs {
        body.extend_from_slice(&s.to_le_bytes());
    }
    framed(body)
}

pub fn fingerprints(entries: &[Remembered]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + REMEMBERED * entries.len());
    body.push(FINGERPRINTS);
    for r in entries {
        put_remembered(&mut body, *r);
    }
    framed(body)
}

fn put_remembered(body: &mut Vec<u8>, r: Remembered) {
    body.extend_from_slice(&r.fingerprint.to_le_bytes());
    body.extend_from_slice(&r.secs.to_le_bytes());
}

fn get_remembered(b: &[u8]) -> Option<Remembered> {
    Some(Remembered {
        fingerprint: u128::from_le_bytes(b.get(..16)?.try_into().ok()?),
        secs: u32::from_le_bytes(b.get(16..20)?.try_into().ok()?),
    })
}

pub fn confirm(epoch: u64, id: u64) -> Vec<u8> {
    let mut body = vec![EPOCH_CONFIRM];
    body.extend_from_slice(&epoch.to_le_bytes());
    body.extend_from_slice(&id.to_le_bytes());
    framed(body)
}

fn framed(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The records of a segment, in order, with the offset where each ends; stops at
/// the first incomplete or corrupt one (a write cut short by a crash).
pub fn scan(segment: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while segment.len() - at >= FRAME {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(segment[at + 4..at + 8].try_into().expect("4"));
        let start = at + FRAME;
        let Some(body) = segment.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        match decode(body, start as u64) {
            Some(r) => records.push(r),
            None => break,
        }
        at = start + len;
    }
    (records, at)
}

/// Whether what follows a segment's last good record is a record cut short (a
/// write a crash interrupted: its frame runs past the end of the file), rather than
/// a corrupt record with data after it.
pub fn is_torn_tail(rest: &[u8]) -> bool {
    match rest.get(..4) {
        None => true,
        Some(len) => {
            let len = u32::from_le_bytes(len.try_into().expect("4")) as usize;
            FRAME.saturating_add(len) > rest.len()
        }
    }
}

fn decode(body: &[u8], body_offset: u64) -> Option<Record> {
    let (&kind, rest) = body.split_first()?;
    let u64_at = |b: &[u8], i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
    let u32_at = |b: &[u8], i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    match kind {
        PARTS | REMEMBERED_PARTS => {
            let (remembered, rest) = if kind == REMEMBERED_PARTS {
                (Some(get_remembered(rest)?), rest.get(REMEMBERED..)?)
            } else {
                (None, rest)
            };
            let count = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let mut data = body.len() - rest.len() + 2 + count * PART_META;
            let mut parts = Vec::with_capacity(count);
            for i in 0..count {
                let m = &rest[2 + i * PART_META..];
                let len = u32_at(m, 17)?;
                parts.push((
                    SpooledPart {
                        seq: u64_at(m, 0)?,
                        table: TableId::from_u8(*m.get(8)?)?,
                        rows: u32_at(m, 9)?,
                        raw_len: u32_at(m, 13)?,
                        len,
                        data: None,
                    },
                    body_offset + data as u64,
                ));
                data += len as usize;
            }
            (data == body.len()).then_some(Record::Parts { parts, remembered })
        }
        BATCH => {
            let seqs = rest.get(17..)?;
            if seqs.len() % 8 != 0 {
                return None;
            }
            Some(Record::Batch(BatchRecord {
                id: u64_at(rest, 0)?,
                epoch: u64_at(rest, 8)?,
                table: TableId::from_u8(*rest.get(16)?)?,
                seqs: seqs
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
                    .collect(),
            }))
        }
        CONFIRM if rest.len() == 8 => Some(Record::Confirm {
            epoch: None,
            id: u64_at(rest, 0)?,
        }),
        EPOCH_CONFIRM if rest.len() == 16 => Some(Record::Confirm {
            epoch: Some(u64_at(rest, 0)?),
            id: u64_at(rest, 8)?,
        }),
        FINGERPRINTS if rest.len() % REMEMBERED == 0 => Some(Record::Fingerprints(
            rest.chunks_exact(REMEMBERED)
                .filter_map(get_remembered)
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_segment() {
        let parts = vec![
            TablePart {
                table: TableId::Traces,
                rows: 2,
                raw_len: 20,
                data: vec![1; 5],
            },
            TablePart {
                table: TableId::Logs,
                rows: 1,
                raw_len: 9,
                data: vec![2; 3],
            },
        ];
        let remembered = Remembered {
            fingerprint: u128::MAX - 5,
            secs: 1_800_000_000,
        };
        let head = parts_head(7, Some(remembered), &parts);
        let mut segment: Vec<u8> = parts_slices(&head, &parts)
            .iter()
            .flat_map(|s| s.to_vec())
            .collect();
        let b = BatchRecord {
            id: 3,
            epoch: 99,
            table: TableId::Traces,
            seqs: vec![7],
        };
        segment.extend(batch(&b));
        segment.extend(confirm(99, 3));
        segment.extend(framed([&[CONFIRM][..], &3u64.to_le_bytes()].concat()));
        let old_head = parts_head(9, None, &parts[1..]);
        segment.extend(
            parts_slices(&old_head, &parts[1..])
                .iter()
                .flat_map(|s| s.to_vec()),
        );
        segment.extend(fingerprints(&[remembered, remembered]));
        let whole = segment.len();
        segment.extend(&confirm(99, 4)[..6]);
        let (records, end) = scan(&segment);
        assert_eq!(end, whole);
        assert_eq!(records.len(), 6);
        let Record::Parts {
            parts: p,
            remembered: r,
        } = &records[0]
        else {
            panic!("parts first")
        };
        assert_eq!(*r, Some(remembered));
        assert_eq!(
            (p[0].0.seq, p[1].0.seq, p[1].0.table),
            (7, 8, TableId::Logs)
        );
        let (at0, at1) = (p[0].1 as usize, p[1].1 as usize);
        assert_eq!(&segment[at0..at0 + 5], &[1; 5]);
        assert_eq!(&segment[at1..at1 + 3], &[2; 3]);
        assert_eq!(records[1], Record::Batch(b));
        assert_eq!(
            records[2],
            Record::Confirm {
                epoch: Some(99),
                id: 3
            }
        );
        assert_eq!(records[3], Record::Confirm { epoch: None, id: 3 });
        let Record::Parts {
            parts: p,
            remembered: None,
        } = &records[4]
        else {
            panic!("parts without a fingerprint (the earlier format) read back")
        };
        let at = p[0].1 as usize;
        assert_eq!((p[0].0.seq, &segment[at..at + 3]), (9, &[2u8; 3][..]));
        assert_eq!(records[5], Record::Fingerprints(vec![remembered; 2]));
        // A flipped bit ends the segment at that record.
        segment[at0] ^= 1;
        assert_eq!(scan(&segment).0.len(), 0);
    }
}
