//! Opening a log directory: the lock, the segment list, and the repair of the
//! last segment's tail.
//!
//! Segments are closed only once fully synced (see `writer`), so after a crash
//! only the last segment can end in a torn or half-written record. That one is
//! scanned completely, every record checked (length, checksum, offset), and cut
//! at the first one that fails. The last segment is zeroed ahead of the writer
//! (see `prealloc`), so its records usually end in zeros: an all-zero header
//! ends the records, and the rest of the file is read to prove it is zeros.
//! Anything else there is a torn write (pages of an unsynced group can reach
//! the disk in any order) and is zeroed: left, it could chain after records
//! written later and be taken for them after another crash.
//!
//! Earlier segments are trusted as they are: open costs one `stat` per
//! segment, and each is indexed (its headers walked) on the first read that
//! needs it. Opening a large log is therefore as fast as scanning one segment.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::RecoveryReport;
use super::prealloc;
use super::record::{self, Next, RecordReader};
use super::segment::{INDEX_INTERVAL, IndexEntry, SCAN_CHUNK, Segment, View, io_error};
use super::writer::{SegmentWriter, SyncPoint, sync_dir};
use crate::eventing::backend::local::StoreError;

/// The lock file's name in a log directory.
pub(super) const LOCK_FILE: &str = "LOCK";

/// Everything an opened log starts with.
pub(super) struct Recovered {
    pub lock: File,
    pub segments: Vec<Arc<Segment>>,
    pub writer: SegmentWriter,
    pub report: RecoveryReport,
}

/// Opens (creating if needed) the log in `dir`.
pub(super) fn recover(dir: &Path, segment_bytes: u64) -> Result<Recovered, StoreError> {
    fs::create_dir_all(dir).map_err(|e| io_error("creating log directory", dir, e))?;
    let lock = lock_dir(dir)?;
    let mut bases = list_segments(dir)?;
    if bases.is_empty() {
        create_first_segment(dir)?;
        bases.push(0);
    }
    let mut segments = Vec::with_capacity(bases.len());
    for pair in bases.windows(2) {
        segments.push(Arc::new(closed_segment(dir, pair[0], pair[1])?));
    }
    let last = bases.last().copied().unwrap_or(0);
    let (active, file, synced, truncated_bytes, zeroed_end) = recover_last(dir, last)?;
    segments.push(active.clone());
    let writer = SegmentWriter::new(
        dir.to_path_buf(),
        segment_bytes,
        active,
        file,
        synced,
        zeroed_end,
    );
    let report = RecoveryReport {
        segments: segments.len(),
        next_offset: synced.next_offset,
        truncated_bytes,
    };
    Ok(Recovered {
        lock,
        segments,
        writer,
        report,
    })
}

/// Takes an exclusive lock on `dir/LOCK`, held as long as the file stays open.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("creating lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::io(
            format!("locking {}", path.display()),
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the log directory {} is already in use by another pilotlight process or broker",
                    dir.display()
                ),
            ),
        )),
        Err(TryLockError::Error(e)) => Err(io_error("locking", &path, e)),
    }
}

/// Base offsets of the segment files in `dir`, ascending. Other files are
/// left alone.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| io_error("listing log directory", dir, e))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("listing log directory", dir, e))?;
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(Segment::parse_name) else {
            continue;
        };
        let is_file = entry
            .file_type()
            .map_err(|e| io_error("inspecting", &entry.path(), e))?
            .is_file();
        if is_file {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn create_first_segment(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(Segment::file_name(0));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error("creating segment", &path, e))?;
    sync_dir(dir)
}

/// A segment before the last, trusted to hold `base..next_base`.
fn closed_segment(dir: &Path, base: u64, next_base: u64) -> Result<Segment, StoreError> {
    let path = dir.join(Segment::file_name(base));
    let meta = fs::metadata(&path).map_err(|e| io_error("inspecting segment", &path, e))?;
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok());
    Ok(Segment::closed(base, path, meta.len(), next_base, mtime_ms))
}

/// What a full scan of a segment found valid.
struct Scan {
    valid_len: u64,
    next_offset: u64,
    newest_ms: Option<i64>,
    index: Vec<IndexEntry>,
    next_entry_at: u64,
    /// Why the scan stopped before the end of the file, if it did.
    stopped: Option<(u64, &'static str)>,
}

/// The recovered active segment: the segment, its file, what is durable,
/// the bytes of damage zeroed, and the end of its zeroed tail.
type RecoveredLast = (Arc<Segment>, Arc<File>, SyncPoint, u64, u64);

/// Opens the last segment, verifies every record and zeroes a bad tail.
fn recover_last(dir: &Path, base: u64) -> Result<RecoveredLast, StoreError> {
    let path = dir.join(Segment::file_name(base));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("opening segment", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| io_error("inspecting segment", &path, e))?
        .len();
    let scan = scan(&file, base, len).map_err(|e| io_error("scanning segment", &path, e))?;
    let damaged_end = match scan.stopped {
        None => scan.valid_len,
        Some(_) => last_nonzero_end(&file, scan.valid_len, len)
            .map_err(|e| io_error("scanning segment", &path, e))?,
    };
    let truncated = damaged_end - scan.valid_len;
    if truncated > 0 {
        let (pos, reason) = scan
            .stopped
            .unwrap_or((scan.valid_len, "bytes after the records"));
        tracing::warn!(
            segment = %path.display(),
            position = pos,
            reason,
            truncated_bytes = truncated,
            kept_records = scan.next_offset - base,
            "the log's last segment ends in a torn or corrupt record (an interrupted write); cutting it off"
        );
        prealloc::write_zeros(&file, scan.valid_len, damaged_end)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error("cutting the damaged tail of segment", &path, e))?;
    }
    let synced = SyncPoint {
        len: scan.valid_len,
        next_offset: scan.next_offset,
        newest_ms: scan.newest_ms,
        next_entry_at: scan.next_entry_at,
    };
    let file = Arc::new(file);
    let view = View {
        durable_len: scan.valid_len,
        end_offset: scan.next_offset,
        newest_ms: scan.newest_ms,
        index: scan.index,
        indexed: true,
    };
    let segment = Arc::new(Segment::open_with(base, path, file.clone(), view));
    Ok((segment, file, synced, truncated, len))
}

/// The position after the last byte in `from..to` that is not zero (`from`
/// when they all are).
fn last_nonzero_end(file: &File, from: u64, to: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; SCAN_CHUNK.min(to.saturating_sub(from) as usize)];
    let mut end = from;
    let mut at = from;
    while at < to {
        let len = (to - at).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..len];
        file.read_exact_at(chunk, at)?;
        if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
            end = at + last as u64 + 1;
        }
        at += len as u64;
    }
    Ok(end)
}

/// Walks a segment from the start, checking every record, up to the first
/// that is partial, out of sequence or fails its checksum.
fn scan(file: &File, base: u64, len: u64) -> io::Result<Scan> {
    let mut reader = RecordReader::new(file, 0, len, SCAN_CHUNK);
    let mut scan = Scan {
        valid_len: 0,
        next_offset: base,
        newest_ms: None,
        index: Vec::new(),
        next_entry_at: 0,
        stopped: None,
    };
    loop {
        match reader.next(true)? {
            Next::End => break,
            Next::Broken { pos, reason } => {
                scan.stopped = Some((pos, reason));
                break;
            }
            Next::Zeroed { pos } => {
                scan.stopped = Some((pos, "the records end in zeros, and bytes follow them"));
                break;
            }
            Next::Record {
                pos,
                header,
                payload,
            } => {
                let payload = payload.unwrap_or_default();
                let bad = if header.offset != scan.next_offset {
                    Some("record has an unexpected offset")
                } else if record::checksum(header.offset, header.timestamp_ms, payload)
                    != header.crc
                {
                    Some("checksum mismatch")
                } else {
                    None
                };
                if let Some(reason) = bad {
                    scan.stopped = Some((pos, reason));
                    break;
                }
                if pos >= scan.next_entry_at {
                    scan.index.push(IndexEntry {
                        offset: header.offset,
                        pos,
                    });
                    scan.next_entry_at = pos + INDEX_INTERVAL;
                }
                scan.valid_len = pos + header.record_len();
                scan.next_offset += 1;
                scan.newest_ms = Some(header.timestamp_ms);
            }
        }
    }
    if scan.index.is_empty() {
        scan.index.push(IndexEntry {
            offset: base,
            pos: 0,
        });
        scan.next_entry_at = INDEX_INTERVAL;
    }
    Ok(scan)
}
