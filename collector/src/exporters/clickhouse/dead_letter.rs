//! The dead-letter store: rows ClickHouse will not take, kept as files under
//! `<spool.dir>/dead-letter/` with the error that refused them.
//!
//! Files rather than a ClickHouse table: the rows are here because ClickHouse
//! refused them, and the store must work while it refuses (or the table itself is
//! the problem). Each letter is two files named after the INSERT's deduplication
//! token: `<table>-<token>.rows`, the INSERT body exactly as sent (RowBinary in
//! ClickHouse's native LZ4 blocks), and `<table>-<token>.json`, the error, the
//! attempts and the statement that re-inserts the rows once they are fixed
//! (`curl --data-binary @….rows 'http://…/?decompress=1&insert_deduplication_token=…&query=…'`).
//! Both are fsynced before the batch leaves the spool; a letter written twice (a
//! crash before its batch left the spool) overwrites itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A batch (or the part of one) given up.
pub struct DeadLetter<'a> {
    pub table: &'a str,
    pub token: &'a str,
    pub rows: u64,
    pub data: &'a [u8],
    pub error: &'a str,
    /// Times ClickHouse refused it.
    pub attempts: u32,
    /// The statement the rows were sent with.
    pub insert: &'a str,
}

#[derive(Clone)]
pub struct DeadLetters {
    dir: PathBuf,
}

impl DeadLetters {
    pub fn new(spool_dir: &Path) -> DeadLetters {
        DeadLetters {
            dir: spool_dir.join("dead-letter"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the letter durably; returns the path of its rows.
    pub fn store(&self, letter: &DeadLetter<'_>) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!("{}-{}", letter.table, letter.token);
        let rows = self.dir.join(format!("{name}.rows"));
        write_durably(&rows, letter.data)?;
        let written = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let meta = serde_json::json!({
            "table": letter.table,
            "rows": letter.rows,
            "bytes": letter.data.len(),
            "error": letter.error,
            "attempts": letter.attempts,
            "written_unix": written,
            "insert_deduplication_token": letter.token,
            "format": "RowBinary in ClickHouse native LZ4 blocks: send with decompress=1",
            "insert": letter.insert,
            "data": format!("{name}.rows"),
        });
        let text = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
        write_durably(&self.dir.join(format!("{name}.json")), &text)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(rows)
    }
}

/// Writes to a temporary name, fsyncs, renames: a crash leaves the old file or
/// the new one, never half of it.
fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_is_its_rows_and_its_error_and_a_repeat_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::new(dir.path());
        let letter = DeadLetter {
            table: "otel_traces",
            token: "00ab-01cd-7.0.1",
            rows: 3,
            data: &[1, 2, 3],
            error: "Code: 469. DB::Exception: Constraint violated",
            attempts: 1,
            insert: "INSERT INTO otel.otel_traces (a) FORMAT RowBinary",
        };
        let rows = store.store(&letter).unwrap();
        store.store(&letter).unwrap();
        assert_eq!(std::fs::read(&rows).unwrap(), [1, 2, 3]);
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(store.dir().join("otel_traces-00ab-01cd-7.0.1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["error"], letter.error);
        assert_eq!(meta["rows"], 3);
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 2);
    }
}
