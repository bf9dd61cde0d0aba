//! The write side of the log: appends to the active segment, syncs, rolls to a
//! new segment, and undoes a failed write.
//!
//! Only the local backend's writer thread calls in here (behind a mutex), so
//! this is plain sequential code. Readers learn of new records only through
//! [`SegmentWriter::sync`], which publishes the synced extent to the active segment's
//! [`View`].
//!
//! Rolling happens between sync groups: at the start of an append, when the
//! active segment is past `segment_bytes` *and* holds nothing unsynced. So a
//! segment can exceed `segment_bytes` by at most one group's worth of records,
//! and a segment is only ever closed once all of it is durable. That keeps two
//! invariants recovery and rollback rely on: at most one file (the last) can
//! have an unsynced or torn tail, and undoing a failed group only ever means
//! zeroing the active segment back to its synced length.
//!
//! The active segment is zeroed ahead of the writer by a background thread
//! (see `prealloc`), so a segment file is longer than its data until it
//! closes; a roll cuts the zeroed tail off the closing segment.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::prealloc::{self, Preallocator};
use super::record;
use super::segment::{INDEX_INTERVAL, IndexEntry, Segment, View, io_error};
use crate::cloudevent::Event;
use crate::eventing::backend::local::StoreError;

/// A grown write buffer above this is released after the write.
const KEEP_BUFFER: usize = 8 << 20;

/// A failure tests can inject into the next write, sync or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Write,
    Sync,
    Undo,
}

/// What is durable: restored by a rollback.
#[derive(Debug, Clone, Copy)]
pub(super) struct SyncPoint {
    pub len: u64,
    pub next_offset: u64,
    pub newest_ms: Option<i64>,
    /// Position past which the next index entry is due.
    pub next_entry_at: u64,
}

/// The single writer of a log.
pub(super) struct SegmentWriter {
    dir: PathBuf,
    segment_bytes: u64,
    active: Arc<Segment>,
    file: Arc<File>,
    /// Bytes written to the active segment (synced or not).
    pos: u64,
    next_offset: u64,
    newest_ms: Option<i64>,
    next_entry_at: u64,
    /// Index entries of records written since the last sync.
    pending_index: Vec<IndexEntry>,
    synced: SyncPoint,
    /// A segment file was created since the last sync: the directory needs an
    /// fsync for the file to survive a crash.
    dir_dirty: bool,
    buf: Vec<u8>,
    /// Zeroes the active segment ahead of `pos`.
    prealloc: Preallocator,
    /// Set when a failed write could not be undone: nothing more is written.
    poisoned: Option<String>,
    #[cfg(test)]
    faults: Vec<Fault>,
}

impl SegmentWriter {
    /// A writer continuing the recovered active segment, whose whole content
    /// (`synced.len` bytes) is durable and whose bytes from there up to
    /// `zeroed_end` are zeros.
    pub(super) fn new(
        dir: PathBuf,
        segment_bytes: u64,
        active: Arc<Segment>,
        file: Arc<File>,
        synced: SyncPoint,
        zeroed_end: u64,
    ) -> Self {
        let prealloc = Preallocator::start(file.clone(), segment_bytes, synced.len, zeroed_end);
        SegmentWriter {
            prealloc,
            dir,
            segment_bytes,
            active,
            file,
            pos: synced.len,
            next_offset: synced.next_offset,
            newest_ms: synced.newest_ms,
            next_entry_at: synced.next_entry_at,
            pending_index: Vec::new(),
            synced,
            dir_dirty: false,
            buf: Vec::new(),
            poisoned: None,
            #[cfg(test)]
            faults: Vec::new(),
        }
    }

    /// Makes the next operation of that kind fail.
    #[cfg(test)]
    pub(crate) fn inject(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    #[cfg(test)]
    fn injected(&mut self, fault: Fault) -> std::io::Result<()> {
        match self.faults.iter().position(|f| *f == fault) {
            Some(i) => {
                self.faults.remove(i);
                Err(std::io::Error::other(format!("injected {fault:?} failure")))
            }
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn injected(&mut self, _fault: Fault) -> std::io::Result<()> {
        Ok(())
    }

    /// The next offset to be given.
    pub(super) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Refuses all further writes (the directory was destroyed).
    pub(super) fn poison(&mut self, reason: String) {
        self.poisoned = Some(reason);
    }

    /// Writes the events' records with one `write_all`, rolling first if due.
    /// Returns the first event's offset. On error everything since the last
    /// sync is undone (the local backend fails that whole group).
    pub(super) fn append(
        &mut self,
        events: &[Arc<Event>],
        now_ms: i64,
        segments: &RwLock<Vec<Arc<Segment>>>,
    ) -> Result<u64, StoreError> {
        self.check_usable()?;
        if events.is_empty() {
            return Ok(self.next_offset);
        }
        if self.roll_due() {
            self.roll(segments)?;
        }
        let first = self.next_offset;
        match self.write(events, now_ms) {
            Ok(()) => Ok(first),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Makes everything appended durable, then shows it to readers.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        self.check_usable()?;
        if self.pos > self.synced.len
            && let Err(e) = self
                .injected(Fault::Sync)
                .and_then(|()| self.file.sync_data())
        {
            self.rollback();
            return Err(io_error("syncing segment", &self.active.path, e));
        }
        if self.dir_dirty {
            if let Err(e) = sync_dir(&self.dir) {
                self.rollback();
                return Err(e);
            }
            self.dir_dirty = false;
        }
        self.publish();
        Ok(())
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(reason) => Err(StoreError::io(
                reason.clone(),
                std::io::Error::other("the log refuses further writes"),
            )),
            None => Ok(()),
        }
    }

    fn roll_due(&self) -> bool {
        self.pos > 0 && self.pos >= self.segment_bytes && self.pos == self.synced.len
    }

    /// Encodes the events into the buffer and writes it at the end of the
    /// active segment. State advances only if the write succeeded.
    fn write(&mut self, events: &[Arc<Event>], now_ms: i64) -> Result<(), StoreError> {
        self.buf.clear();
        let mut offset = self.next_offset;
        let mut next_entry_at = self.next_entry_at;
        let mut entries = Vec::new();
        for event in events {
            let pos = self.pos + self.buf.len() as u64;
            if pos >= next_entry_at {
                entries.push(IndexEntry { offset, pos });
                next_entry_at = pos + INDEX_INTERVAL;
            }
            record::encode(&mut self.buf, offset, now_ms, &event.to_bytes())
                .map_err(|e| io_error("appending to segment", &self.active.path, e))?;
            offset += 1;
        }
        let written = self
            .injected(Fault::Write)
            .and_then(|()| self.prealloc.write_at(&self.file, &self.buf, self.pos));
        let len = self.buf.len() as u64;
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        written.map_err(|e| io_error("appending to segment", &self.active.path, e))?;
        self.pos += len;
        self.next_offset = offset;
        self.newest_ms = Some(now_ms);
        self.next_entry_at = next_entry_at;
        self.pending_index.extend(entries);
        Ok(())
    }

    /// Shows readers what the last sync made durable.
    fn publish(&mut self) {
        {
            let mut view = self.active.view_mut();
            view.durable_len = self.pos;
            view.end_offset = self.next_offset;
            if self.newest_ms.is_some() {
                view.newest_ms = self.newest_ms;
            }
            view.index.append(&mut self.pending_index);
        }
        self.synced = SyncPoint {
            len: self.pos,
            next_offset: self.next_offset,
            newest_ms: self.newest_ms,
            next_entry_at: self.next_entry_at,
        };
    }

    /// Zeroes the active segment from its synced length on, so the next
    /// append reuses the offsets of the undone records and no undone record
    /// is left past a later, shorter group (recovery would otherwise find it
    /// chained after that group, with the right offset, after a crash). If
    /// even that fails, the file may hold records the offsets no longer
    /// account for: refuse to go on.
    fn rollback(&mut self) {
        let written = self.pos;
        self.reset_to_synced();
        let zeroed = self
            .injected(Fault::Undo)
            .and_then(|()| prealloc::write_zeros(&self.file, self.synced.len, written));
        if let Err(e) = zeroed {
            let reason = format!(
                "the log in {} is unusable: undoing a failed write to {} failed ({e}); restart pilotlight to recover it",
                self.dir.display(),
                self.active.path.display()
            );
            tracing::error!("{reason}");
            self.poisoned = Some(reason);
        }
    }

    /// Starts a new segment at the next offset. The current one is fully synced
    /// (see the module documentation), so it is complete on disk.
    fn roll(&mut self, segments: &RwLock<Vec<Arc<Segment>>>) -> Result<(), StoreError> {
        // Cut the zeroed tail first and make that durable, before the next
        // segment exists: closed segments are then exactly their records.
        self.prealloc
            .cut(self.pos)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_error("closing segment", &self.active.path, e))?;
        let base = self.next_offset;
        let path = self.dir.join(Segment::file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("creating segment", &path, e))?;
        // A crash here leaves an empty newest segment the directory may not
        // even record: recovery must treat it as the (empty) active one.
        crate::fault::hit(crate::fault::SEGMENT_ROLL);
        self.stamp_closed();
        let file = Arc::new(file);
        let segment = Arc::new(Segment::open_with(
            base,
            path,
            file.clone(),
            View {
                durable_len: 0,
                end_offset: base,
                newest_ms: None,
                index: vec![IndexEntry {
                    offset: base,
                    pos: 0,
                }],
                indexed: true,
            },
        ));
        segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(segment.clone());
        tracing::debug!(segment = %segment.path.display(), "rolled to a new log segment");
        self.prealloc.switch(file.clone());
        self.active = segment;
        self.file = file;
        self.synced = SyncPoint {
            len: 0,
            next_offset: base,
            newest_ms: None,
            next_entry_at: INDEX_INTERVAL,
        };
        self.dir_dirty = true;
        self.reset_to_synced();
        Ok(())
    }

    /// Forgets what was written since the sync point (in memory only).
    fn reset_to_synced(&mut self) {
        self.pending_index.clear();
        self.pos = self.synced.len;
        self.next_offset = self.synced.next_offset;
        self.newest_ms = self.synced.newest_ms;
        self.next_entry_at = self.synced.next_entry_at;
    }

    /// Sets the closing segment's modification time to its newest record's
    /// append time, so age retention after a restart (which goes by mtime,
    /// see `recovery`) is exact. Best effort: the natural mtime is close.
    fn stamp_closed(&self) {
        let Some(ms) = self.newest_ms.and_then(|ms| u64::try_from(ms).ok()) else {
            return;
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        if let Err(e) = self.file.set_modified(time) {
            tracing::warn!(segment = %self.active.path.display(), error = %e, "could not set a closed log segment's modification time");
        }
    }
}

/// Fsyncs a directory so entries created, renamed or removed in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing directory", dir, e))
}
