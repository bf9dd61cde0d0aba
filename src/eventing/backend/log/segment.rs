//! One segment file of the log: its durable extent, its sparse index, and
//! reading events from it.
//!
//! What readers see of a segment (its [`View`]) changes only when the writer
//! publishes a successful sync, so readers never see unsynced bytes. Reads use
//! positioned I/O on a shared file handle and hold no lock while reading.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::record::{self, Next, RecordReader};
use crate::cloudevent::Event;
use crate::eventing::backend::local::StoreError;

/// An index entry is added once this many record bytes follow the previous one,
/// so a read scans at most about this much before reaching its offset.
pub(super) const INDEX_INTERVAL: u64 = 4096;

/// Bytes read at a time when serving reads (a batch of events is usually less).
const READ_CHUNK: usize = 64 << 10;

/// Bytes read at a time when scanning a whole segment (recovery, index build).
pub(super) const SCAN_CHUNK: usize = 1 << 20;

/// Where a record starts: the sparse index maps offsets to file positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub offset: u64,
    pub pos: u64,
}

/// The part of a segment readers may use: everything here is durable.
#[derive(Debug)]
pub(super) struct View {
    /// Bytes of complete, synced records.
    pub durable_len: u64,
    /// The offset after the last durable record.
    pub end_offset: u64,
    /// Append time of the newest durable record (or the file's modification
    /// time for a segment found at open), in ms since the epoch.
    pub newest_ms: Option<i64>,
    /// Sparse index, ascending, starting with `(base, 0)`.
    pub index: Vec<IndexEntry>,
    /// False for a closed segment found at open until the first read needs it:
    /// opening a large log then costs a `stat` per segment, not a scan.
    pub indexed: bool,
}

/// A segment file, named after the offset of its first record.
pub(super) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    /// Opened on first use for segments found at open (a long retention can
    /// mean thousands of segments; most are never read).
    file: Mutex<Option<Arc<File>>>,
    view: RwLock<View>,
    /// Serialises building the index of a closed segment.
    index_build: Mutex<()>,
}

/// Where a read starts in a segment, and where it must stop.
struct Start {
    pos: u64,
    offset: u64,
    durable_len: u64,
    end_offset: u64,
}

impl Segment {
    /// A segment with its file open and its view known (the active one, or a
    /// closed one whose index was built while writing it).
    pub(super) fn open_with(base: u64, path: PathBuf, file: Arc<File>, view: View) -> Self {
        Segment {
            base,
            path,
            file: Mutex::new(Some(file)),
            view: RwLock::new(view),
            index_build: Mutex::new(()),
        }
    }

    /// A closed segment found at open: trusted to hold `base..end_offset` in
    /// `len` bytes; its file is opened and indexed when first read.
    pub(super) fn closed(
        base: u64,
        path: PathBuf,
        len: u64,
        end_offset: u64,
        mtime_ms: Option<i64>,
    ) -> Self {
        Segment {
            base,
            path,
            file: Mutex::new(None),
            view: RwLock::new(View {
                durable_len: len,
                end_offset,
                newest_ms: mtime_ms,
                index: vec![IndexEntry {
                    offset: base,
                    pos: 0,
                }],
                indexed: false,
            }),
            index_build: Mutex::new(()),
        }
    }

    /// The file name of the segment starting at `base`.
    pub(super) fn file_name(base: u64) -> String {
        format!("{base:020}.log")
    }

    /// The base offset a segment file name stands for, if it is one.
    pub(super) fn parse_name(name: &str) -> Option<u64> {
        let digits = name.strip_suffix(".log")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    pub(super) fn view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn view_mut(&self) -> RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Durable bytes: what retention counts.
    pub(super) fn size(&self) -> u64 {
        self.view().durable_len
    }

    pub(super) fn newest_ms(&self) -> Option<i64> {
        self.view().newest_ms
    }

    /// The segment's file, opened read-only on first use. `Ok(None)`: the file
    /// is gone (retention removed the segment while a reader held it).
    fn file(&self) -> Result<Option<Arc<File>>, StoreError> {
        let mut slot = lock(&self.file);
        if let Some(file) = &*slot {
            return Ok(Some(file.clone()));
        }
        match File::open(&self.path) {
            Ok(file) => {
                let file = Arc::new(file);
                *slot = Some(file.clone());
                Ok(Some(file))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("opening segment", &self.path, e)),
        }
    }

    /// Appends events from `from` on (until `out` holds `max`), stopping at the
    /// durable end. Every record read must be intact and in sequence: anything
    /// else below the durable end is damage, reported as [`StoreError::Corrupt`].
    pub(super) fn read_into(
        &self,
        from: u64,
        max: usize,
        out: &mut Vec<(u64, Event)>,
    ) -> Result<(), StoreError> {
        let Some(file) = self.file()? else {
            return Ok(());
        };
        let Some(start) = self.start(&file, from)? else {
            return Ok(());
        };
        let mut reader = RecordReader::new(&file, start.pos, start.durable_len, READ_CHUNK);
        let mut expected = start.offset;
        while out.len() < max {
            let wanted = expected >= from;
            match reader
                .next(wanted)
                .map_err(|e| io_error("reading", &self.path, e))?
            {
                Next::End => break,
                Next::Broken { pos, reason } => return Err(self.corrupt(pos, reason)),
                Next::Zeroed { pos } => return Err(self.zeroed(pos)),
                Next::Record {
                    pos,
                    header,
                    payload,
                } => {
                    if header.offset != expected {
                        return Err(self.corrupt(pos, "record has an unexpected offset"));
                    }
                    if let Some(payload) = payload {
                        out.push((expected, self.decode(pos, &header, payload)?));
                    }
                    expected += 1;
                }
            }
        }
        let at_end = reader.pos() == start.durable_len;
        if at_end && expected != start.end_offset {
            return Err(self.corrupt(reader.pos(), "segment ends before its last offset"));
        }
        Ok(())
    }

    /// The offset of the first durable record appended at or after
    /// `time_ms`; `None` when there is none. Every record up to it is
    /// checked (offset in sequence, checksum): this segment may be a closed
    /// one that open trusted unread, and a damaged header would otherwise
    /// give a replay an offset past every event (the property tests found a
    /// flipped bit in an offset field doing that) or a wrong start.
    pub(super) fn first_at_or_after(&self, time_ms: i64) -> Result<Option<u64>, StoreError> {
        let Some(file) = self.file()? else {
            return Ok(None);
        };
        if !self.view().indexed {
            self.build_index(&file)?;
        }
        let durable_len = self.view().durable_len;
        let mut reader = RecordReader::new(&file, 0, durable_len, SCAN_CHUNK);
        let mut expected = self.base;
        loop {
            match reader
                .next(true)
                .map_err(|e| io_error("searching", &self.path, e))?
            {
                Next::End => return Ok(None),
                Next::Broken { pos, reason } => return Err(self.corrupt(pos, reason)),
                Next::Zeroed { pos } => return Err(self.zeroed(pos)),
                Next::Record {
                    pos,
                    header,
                    payload,
                } => {
                    if header.offset != expected {
                        return Err(self.corrupt(pos, "record has an unexpected offset"));
                    }
                    self.verify(pos, &header, payload.unwrap_or_default())?;
                    if header.timestamp_ms >= time_ms {
                        return Ok(Some(header.offset));
                    }
                    expected += 1;
                }
            }
        }
    }

    /// Checks a record's checksum (over offset, timestamp and payload).
    fn verify(&self, pos: u64, header: &record::Header, payload: &[u8]) -> Result<(), StoreError> {
        if record::checksum(header.offset, header.timestamp_ms, payload) != header.crc {
            return Err(self.corrupt(pos, "checksum mismatch"));
        }
        Ok(())
    }

    /// Checks a record's checksum and decodes its event.
    fn decode(
        &self,
        pos: u64,
        header: &record::Header,
        payload: &[u8],
    ) -> Result<Event, StoreError> {
        self.verify(pos, header, payload)?;
        Event::from_bytes(payload)
            .map_err(|e| self.corrupt(pos, &format!("record does not decode as an event: {e}")))
    }

    /// The indexed position to start reading `from`, or `None` if the segment
    /// has nothing durable at or after it.
    fn start(&self, file: &File, from: u64) -> Result<Option<Start>, StoreError> {
        if !self.view().indexed {
            self.build_index(file)?;
        }
        let view = self.view();
        if from >= view.end_offset || view.durable_len == 0 {
            return Ok(None);
        }
        let at = view
            .index
            .partition_point(|e| e.offset <= from)
            .saturating_sub(1);
        let entry = view.index.get(at).copied().unwrap_or(IndexEntry {
            offset: self.base,
            pos: 0,
        });
        Ok(Some(Start {
            pos: entry.pos,
            offset: entry.offset,
            durable_len: view.durable_len,
            end_offset: view.end_offset,
        }))
    }

    /// Builds the sparse index of a closed segment found at open by walking its
    /// record headers, checking that they chain (lengths, offsets) and end
    /// exactly at the file's end and the next segment's base. Payload checksums
    /// are verified when records are read.
    fn build_index(&self, file: &File) -> Result<(), StoreError> {
        let _building = lock(&self.index_build);
        let (len, end_offset) = {
            let view = self.view();
            if view.indexed {
                return Ok(());
            }
            (view.durable_len, view.end_offset)
        };
        let started = std::time::Instant::now();
        let mut index = Vec::new();
        let mut reader = RecordReader::new(file, 0, len, SCAN_CHUNK);
        let mut expected = self.base;
        let mut newest = None;
        let mut next_entry_at = 0;
        let mut len = len;
        loop {
            match reader
                .next(false)
                .map_err(|e| io_error("indexing", &self.path, e))?
            {
                Next::End => break,
                Next::Broken { pos, reason } => return Err(self.corrupt(pos, reason)),
                // The zeroed tail of a segment that a crash closed before
                // its roll cut it (its records were all synced: a roll
                // happens only then), once every record is there.
                Next::Zeroed { pos } if expected == end_offset => {
                    len = pos;
                    break;
                }
                Next::Zeroed { pos } => return Err(self.zeroed(pos)),
                Next::Record { pos, header, .. } => {
                    if header.offset != expected {
                        return Err(self.corrupt(pos, "record has an unexpected offset"));
                    }
                    if pos >= next_entry_at {
                        index.push(IndexEntry {
                            offset: expected,
                            pos,
                        });
                        next_entry_at = pos + INDEX_INTERVAL;
                    }
                    newest = Some(header.timestamp_ms);
                    expected += 1;
                }
            }
        }
        if expected != end_offset {
            return Err(self.corrupt(
                len,
                "segment holds fewer or more records than its successor's base implies",
            ));
        }
        if index.is_empty() {
            index.push(IndexEntry {
                offset: self.base,
                pos: 0,
            });
        }
        tracing::debug!(segment = %self.path.display(), records = expected - self.base, elapsed = ?started.elapsed(), "indexed log segment");
        let mut view = self.view_mut();
        view.index = index;
        view.indexed = true;
        view.durable_len = len;
        if newest.is_some() {
            view.newest_ms = newest;
        }
        Ok(())
    }

    /// Zeros where a durable record should be: the writer only ever reads
    /// durable extents, which hold records from end to end.
    fn zeroed(&self, pos: u64) -> StoreError {
        self.corrupt(pos, "zeros where a durable record should be")
    }

    fn corrupt(&self, pos: u64, reason: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "log segment {} is corrupt at byte {pos}: {reason}",
            self.path.display()
        ))
    }
}

/// An I/O error naming the operation and the file.
pub(super) fn io_error(operation: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(format!("{operation} {}", path.display()), e)
}

/// Locks a mutex, carrying on past poisoning: the data behind these locks is
/// plain and stays consistent at every await-free step.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
