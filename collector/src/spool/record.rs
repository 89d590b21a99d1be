//! How parts and batch records are laid out in sled.

use super::SpoolError;
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

/// `[table u8][rows u32 LE][raw_len u32 LE][compressed rows]`
pub fn encode_part(p: &TablePart) -> Vec<u8> {
    let mut v = Vec::with_capacity(META + p.data.len());
    v.push(p.table as u8);
    v.extend_from_slice(&p.rows.to_le_bytes());
    v.extend_from_slice(&p.raw_len.to_le_bytes());
    v.extend_from_slice(&p.data);
    v
}

const META: usize = 9;

pub fn decode_part(seq: u64, v: &[u8]) -> Result<SpooledPart, SpoolError> {
    let mut part = decode_meta(seq, v)?;
    part.data = Some(v[META..].to_vec());
    Ok(part)
}

/// A part's table and size, without copying its rows.
pub fn decode_meta(seq: u64, v: &[u8]) -> Result<SpooledPart, SpoolError> {
    if v.len() < META {
        return Err(SpoolError::Corrupt(seq));
    }
    Ok(SpooledPart {
        seq,
        table: TableId::from_u8(v[0]).ok_or(SpoolError::Corrupt(seq))?,
        rows: u32::from_le_bytes(v[1..5].try_into().expect("4 bytes")),
        raw_len: u32::from_le_bytes(v[5..9].try_into().expect("4 bytes")),
        len: (v.len() - META) as u32,
        data: None,
    })
}

/// `[table u8][epoch u64 BE][seq u64 BE]*`
pub fn encode_batch(b: &BatchRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + 8 * b.seqs.len());
    v.push(b.table as u8);
    v.extend_from_slice(&b.epoch.to_be_bytes());
    for s in &b.seqs {
        v.extend_from_slice(&s.to_be_bytes());
    }
    v
}

pub fn decode_batch(id: u64, v: &[u8]) -> Result<BatchRecord, SpoolError> {
    let (&table, rest) = v.split_first().ok_or(SpoolError::Corrupt(id))?;
    if rest.len() < 8 || rest.len() % 8 != 0 {
        return Err(SpoolError::Corrupt(id));
    }
    let (epoch, seqs) = rest.split_at(8);
    Ok(BatchRecord {
        id,
        epoch: u64::from_be_bytes(epoch.try_into().expect("8 bytes")),
        table: TableId::from_u8(table).ok_or(SpoolError::Corrupt(id))?,
        seqs: seqs
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    })
}
