//! Disk faults injected through [`super::log::Faults`]: after each, a restart finds
//! every acknowledged request exactly once and nothing of a failed one but what its
//! retry stores.

use std::sync::atomic::Ordering;

use super::*;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.display().to_string(),
        ..Default::default()
    }
}

fn request(byte: u8) -> Vec<TablePart> {
    vec![
        TablePart {
            table: TableId::Traces,
            rows: 2,
            raw_len: 20,
            data: vec![byte; 40],
        },
        TablePart {
            table: TableId::Logs,
            rows: 1,
            raw_len: 10,
            data: vec![byte; 30],
        },
    ]
}

/// The request bytes (first byte of each part) of every part a restart finds, in
/// order, checked against what its spool reads back.
fn stored(dir: &Path) -> Vec<u8> {
    let (spool, rec) = Spool::open(&config(dir)).unwrap();
    assert!(rec.batches.is_empty());
    rec.parts
        .iter()
        .map(|p| {
            let data = spool.read(p.seq).unwrap();
            assert_eq!(data.len(), p.len as usize);
            assert!(data.iter().all(|b| *b == data[0]), "part {} intact", p.seq);
            data[0]
        })
        .collect()
}

fn faults(spool: &Spool) -> Arc<log::Faults> {
    spool.log.lock().unwrap().faults.clone()
}

async fn a_failed_write_leaves_no_trace(errno: i32, cut_fails: bool) {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = Spool::open(&config(dir.path())).unwrap();
        spool.append(request(1)).await.unwrap();
        let f = faults(&spool);
        // Half of the next record reaches the file, then the disk fails.
        *f.write.lock().unwrap() = Some((50, errno));
        f.truncate.store(cut_fails, Ordering::Relaxed);
        let e = spool.append(request(2)).await.unwrap_err();
        assert!(
            matches!(&e, SpoolError::Storage(io) if io.raw_os_error() == Some(errno)),
            "{e}"
        );
        assert_eq!(spool.used_bytes(), 70, "the failed request holds no budget");
        f.truncate.store(false, Ordering::Relaxed);
        let segment = spool.log.lock().unwrap().current_segment();
        spool.append(request(3)).await.unwrap();
        assert_eq!(
            spool.log.lock().unwrap().current_segment(),
            segment + u64::from(cut_fails),
            "a new segment only when the cut failed"
        );
        // The client retries the failed request: it is stored, not a duplicate.
        assert!(matches!(
            spool.append(request(2)).await.unwrap(),
            Appended::Stored(_)
        ));
        spool.append(request(4)).await.unwrap();
    }
    assert_eq!(stored(dir.path()), [1, 1, 3, 3, 2, 2, 4, 4]);
}

#[tokio::test]
async fn enospc_in_the_middle_of_a_record_is_cut_back() {
    a_failed_write_leaves_no_trace(libc::ENOSPC, false).await;
}

#[tokio::test]
async fn eio_in_the_middle_of_a_record_is_cut_back() {
    a_failed_write_leaves_no_trace(libc::EIO, false).await;
}

#[tokio::test]
async fn a_write_that_cannot_be_cut_back_moves_on_to_a_new_segment() {
    a_failed_write_leaves_no_trace(libc::EIO, true).await;
}

/// A failed fsync ends the process (here: the spool is dropped): the request
/// waiting for it was not acknowledged. Whether or not its record reached the
/// disk, its retry after the restart leaves it stored exactly once.
#[tokio::test]
async fn a_failed_fsync_leaves_every_request_once_after_the_restart() {
    for reached_disk in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let before_b;
        {
            let (spool, _) = Spool::open(&config(dir.path())).unwrap();
            spool.append(request(1)).await.unwrap();
            before_b = {
                let log = spool.log.lock().unwrap();
                (log.current_segment(), log.current_len)
            };
            *faults(&spool).sync.lock().unwrap() = Some(libc::EIO);
            let e = spool.append(request(2)).await.unwrap_err();
            assert!(matches!(&e, SpoolError::Storage(_)), "{e}");
        }
        if !reached_disk {
            // The kernel dropped the unsynced pages.
            let (segment, len) = before_b;
            std::fs::OpenOptions::new()
                .write(true)
                .open(log::segment_path(dir.path(), segment))
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        let (spool, _) = Spool::open(&config(dir.path())).unwrap();
        let retry = spool.append(request(2)).await.unwrap();
        assert_eq!(
            matches!(retry, Appended::Duplicate),
            reached_disk,
            "a retry of a request on disk is recognised"
        );
        drop(spool);
        assert_eq!(
            stored(dir.path()),
            [1, 1, 2, 2],
            "reached disk: {reached_disk}"
        );
    }
}

/// A corrupt record in the middle of a segment (a flipped bit on disk): the
/// records before it are recovered, the rest of the segment is moved to a
/// quarantine file that recovery reports, byte for byte; none is silently dropped.
#[tokio::test]
async fn a_corrupt_record_in_the_middle_quarantines_the_rest_of_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, good_end) = {
        let (spool, _) = Spool::open(&config(dir.path())).unwrap();
        spool.append(request(1)).await.unwrap();
        let at = {
            let log = spool.log.lock().unwrap();
            (log.current_segment(), log.current_len)
        };
        spool.append(request(2)).await.unwrap();
        spool.append(request(3)).await.unwrap();
        at
    };
    let path = log::segment_path(dir.path(), segment);
    let mut bytes = std::fs::read(&path).unwrap();
    let rest = {
        // A bit flips in the second record's rows.
        bytes[good_end as usize + 60] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        bytes.split_off(good_end as usize)
    };
    let (spool, rec) = Spool::open(&config(dir.path())).unwrap();
    let quarantined = dir
        .path()
        .join(format!("{segment:016x}-{good_end}.quarantine"));
    assert_eq!(
        rec.quarantined,
        std::slice::from_ref(&quarantined),
        "reported"
    );
    assert_eq!(
        std::fs::read(&quarantined).unwrap(),
        rest,
        "the corrupt record and every record after it are kept"
    );
    assert_eq!(rec.parts.len(), 2, "the first request is recovered");
    drop(spool);
    // The segment was cut at the corrupt record: the next start finds it clean.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_end);
    let (_, rec) = Spool::open(&config(dir.path())).unwrap();
    assert!(rec.quarantined.is_empty());
    assert_eq!(rec.parts.len(), 2);
}
