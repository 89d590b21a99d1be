//! The unit of data that flows from the receivers to the exporters.

use crate::schema::TableId;

/// The rows one request produced for one table: RowBinary in the table's insert
/// column order, compressed into ClickHouse's native LZ4 blocks. Encoding and
/// compression happen once, at the receiver; the spool, batching and the INSERT
/// (sent with `decompress=1`) only move these bytes. Blocks need not end on a row:
/// ClickHouse decompresses the body into one stream before parsing it, so the parts
/// of a batch are simply concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePart {
    pub table: TableId,
    pub rows: u32,
    /// The RowBinary size before compression (what `batching.max_bytes` counts).
    pub raw_len: u32,
    pub data: Vec<u8>,
}

/// Uncompressed bytes per block: ClickHouse's own insert blocks are about this size.
const BLOCK_BYTES: usize = 1 << 20;
const CHECKSUM: usize = 16;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
const HEADER: usize = 9;
const LZ4: u8 = 0x82;

impl TablePart {
    pub fn compress(table: TableId, rows: u32, raw: &[u8]) -> TablePart {
        // Compressing needs room for the worst case; the part keeps only what it
        // uses (it may wait in memory for a while).
        let data = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            for chunk in raw.chunks(BLOCK_BYTES) {
                compress_block(chunk, &mut scratch);
            }
            scratch.to_vec()
        });
        TablePart {
            table,
            rows,
            raw_len: u32::try_from(raw.len()).unwrap_or(u32::MAX),
            data,
        }
    }
}

/// Appends one block: CityHash128 of what follows, method, compressed size (header
/// included), raw size, LZ4 payload.
fn compress_block(raw: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + CHECKSUM + HEADER, 0);
    let payload = start + CHECKSUM + HEADER;
    let n = crate::lz4::compress(raw, out);
    let header = &mut out[start + CHECKSUM..payload];
    header[0] = LZ4;
    header[1..5].copy_from_slice(&((HEADER + n) as u32).to_le_bytes());
    header[5..9].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    let checksum = cityhash_rs::cityhash_102_128(&out[start + CHECKSUM..]).rotate_right(64);
    out[start..start + CHECKSUM].copy_from_slice(&checksum.to_le_bytes());
}

/// The RowBinary bytes of concatenated blocks; for tests and tools.
pub fn decompress(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < CHECKSUM + HEADER {
            return Err("truncated block header".into());
        }
        let le = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        let size = le(CHECKSUM + 1) as usize;
        let raw = le(CHECKSUM + 5) as usize;
        let end = CHECKSUM + size;
        if data[CHECKSUM] != LZ4 || size < HEADER || data.len() < end {
            return Err("malformed block".into());
        }
        let checksum = cityhash_rs::cityhash_102_128(&data[CHECKSUM..end]).rotate_right(64);
        if checksum.to_le_bytes() != data[..CHECKSUM] {
            return Err("checksum mismatch".into());
        }
        let block = lz4_flex::block::decompress(&data[CHECKSUM + HEADER..end], raw)
            .map_err(|e| e.to_string())?;
        out.extend_from_slice(&block);
        data = &data[end..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_split_large_parts() {
        let raw: Vec<u8> = (0..(BLOCK_BYTES * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let part = TablePart::compress(TableId::Traces, 7, &raw);
        assert_eq!(part.raw_len as usize, raw.len());
        assert!(part.data.len() < raw.len() / 4, "{}", part.data.len());
        assert_eq!(decompress(&part.data).unwrap(), raw);
        // Three blocks, each with its own header.
        let mut blocks = 0;
        let mut at = 0;
        while at < part.data.len() {
            let size = u32::from_le_bytes(part.data[at + 17..at + 21].try_into().unwrap());
            at += CHECKSUM + size as usize;
            blocks += 1;
        }
        assert_eq!(blocks, 3);
        let mut corrupt = part.data.clone();
        corrupt[40] ^= 1;
        assert!(decompress(&corrupt).is_err());
    }

    #[test]
    fn concatenated_parts_are_one_stream() {
        let a = TablePart::compress(TableId::Logs, 1, b"first ");
        let b = TablePart::compress(TableId::Logs, 1, b"second");
        let joined = [a.data, b.data].concat();
        assert_eq!(decompress(&joined).unwrap(), b"first second");
    }
}
