//! Zeroing the active segment ahead of the writer, off the hot path.
//!
//! An `fdatasync` that only overwrites blocks already allocated and written
//! needs no journal commit (the file's size and extents do not change), and
//! on this project's machines costs about 0.20 ms against 0.34 ms when the
//! file grows. So a background thread per log writes zeros ahead of the
//! writer, in [`CHUNK`]s, up to [`AHEAD`] bytes past what was written (never
//! past the segment's nominal size), and syncs them itself. The writer's
//! groups then land on zeroed blocks, and its syncs carry only its data.
//!
//! Zeroes rather than `fallocate`: an allocated but unwritten extent still
//! needs a journal commit when it is first written.
//!
//! The two threads never write the same bytes: the writer writes below
//! `zeroed_end` without a lock (nothing else touches that range), and takes
//! the lock only for a write that reaches past it, which then moves
//! `zeroed_end` itself. Recovery reads a zeroed tail as the end of the log
//! (an all-zero record header cannot be a record: its checksum would not
//! match), see `recovery`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes zeroed per step: small enough that a writer's sync which happens to
/// carry a step's dirty pages is not delayed much.
const CHUNK: u64 = 1 << 20;

/// How far ahead of the writer the segment is kept zeroed: at 20 MB/s of
/// events, about 0.4 s of appends.
pub(super) const AHEAD: u64 = 8 << 20;

/// Zeroes a range of a file with positioned writes of at most [`CHUNK`].
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let len = (to - at).min(CHUNK) as usize;
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// What the zeroing thread works on, under the lock.
struct Target {
    /// None between a segment's close and the next one's start: zeros
    /// written then would land past the end of a closed segment.
    file: Option<Arc<File>>,
    /// Zeroing stops here: the segment's nominal size, rounded up to a page.
    limit: u64,
    /// The writer's position (written, synced or not).
    written_end: u64,
    /// Set by a failure: the thread waits for the next segment or a nudge
    /// before trying again, rather than spinning on a full disk.
    failed: bool,
    stop: bool,
}

struct Shared {
    target: Mutex<Target>,
    wake: Condvar,
    /// Every byte below this is zero or the writer's: the writer's fast
    /// path reads it without the lock. Only grows within one segment.
    zeroed_end: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle the writer keeps: stops the thread when dropped.
pub(super) struct Preallocator {
    shared: Arc<Shared>,
    /// Where zeroing stops in every segment (see [`limit`]).
    limit: u64,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    /// Starts zeroing `file` (a segment whose bytes up to `zeroed_end` are
    /// data or zeros, and whose writer is at `written_end`).
    pub(super) fn start(
        file: Arc<File>,
        segment_bytes: u64,
        written_end: u64,
        zeroed_end: u64,
    ) -> Self {
        let shared = Arc::new(Shared {
            target: Mutex::new(Target {
                file: Some(file),
                limit: limit(segment_bytes),
                written_end,
                failed: false,
                stop: false,
            }),
            wake: Condvar::new(),
            zeroed_end: AtomicU64::new(zeroed_end.max(written_end)),
        });
        let thread = std::thread::Builder::new()
            .name("log-zeroer".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared)
            })
            .inspect_err(|e| {
                tracing::warn!(error = %e, "could not start the log's zeroing thread; the log grows its files as it writes")
            })
            .ok();
        Preallocator {
            shared,
            limit: limit(segment_bytes),
            thread,
        }
    }

    /// Writes `bytes` at `pos` of the active segment: without a lock when the
    /// range is already zeroed, else under the lock, moving the zeroed end.
    pub(super) fn write_at(&self, file: &File, bytes: &[u8], pos: u64) -> std::io::Result<()> {
        let end = pos + bytes.len() as u64;
        if end <= self.shared.zeroed_end.load(Ordering::Acquire) {
            file.write_all_at(bytes, pos)?;
            self.advanced(end);
            return Ok(());
        }
        let mut target = self.shared.lock();
        file.write_all_at(bytes, pos)?;
        target.written_end = end;
        self.shared.zeroed_end.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// Tells the thread the writer reached `written_end`; wakes it when the
    /// zeroed headroom fell below half of [`AHEAD`].
    fn advanced(&self, written_end: u64) {
        let zeroed = self.shared.zeroed_end.load(Ordering::Acquire);
        if zeroed >= self.limit || zeroed.saturating_sub(written_end) >= AHEAD / 2 {
            return;
        }
        let mut target = self.shared.lock();
        target.written_end = written_end;
        target.failed = false;
        drop(target);
        self.shared.wake.notify_one();
    }

    /// Cuts the zeroed tail off the active segment as it closes, so a closed
    /// segment's file length is its data's. Under the lock: the thread must
    /// not write zeros past the cut meanwhile.
    /// Nothing more is zeroed until [`Preallocator::switch`].
    pub(super) fn cut(&self, len: u64) -> std::io::Result<()> {
        let mut target = self.shared.lock();
        if let Some(file) = &target.file {
            file.set_len(len)?;
        }
        target.file = None;
        self.shared.zeroed_end.store(len, Ordering::Release);
        Ok(())
    }

    /// Moves to a new, empty segment (after a roll).
    pub(super) fn switch(&self, file: Arc<File>) {
        let mut target = self.shared.lock();
        target.file = Some(file);
        target.written_end = 0;
        target.failed = false;
        self.shared.zeroed_end.store(0, Ordering::Release);
        drop(target);
        self.shared.wake.notify_one();
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The segment's nominal size rounded up to a page: a segment rolls once
/// past it, so zeros beyond would only be cut off again at the roll.
fn limit(segment_bytes: u64) -> u64 {
    segment_bytes.div_ceil(4096).saturating_mul(4096)
}

/// The zeroing thread: one chunk at a time while the headroom is short.
fn run(shared: &Shared) {
    loop {
        let mut target = shared.lock();
        loop {
            if target.stop {
                return;
            }
            let zeroed = shared.zeroed_end.load(Ordering::Acquire);
            let wanted = (target.written_end + AHEAD).min(target.limit);
            if target.file.is_some() && !target.failed && zeroed < wanted {
                break;
            }
            target = shared
                .wake
                .wait_timeout(target, Duration::from_secs(1))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let from = shared.zeroed_end.load(Ordering::Acquire);
        let to = (from + CHUNK).min(target.limit);
        let Some(file) = target.file.clone() else {
            continue;
        };
        // Under the lock: the writer must not write past `from` meanwhile.
        match write_zeros(&file, from, to) {
            Ok(()) => {
                shared.zeroed_end.store(to, Ordering::Release);
                drop(target);
                // Off the writer's path: the size change's journal commit.
                if let Err(e) = file.sync_data() {
                    tracing::debug!(error = %e, "syncing a log segment's zeroed tail failed");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "zeroing ahead in a log segment failed; the writer grows the file itself");
                target.failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for_zeroed(pre: &Preallocator, at_least: u64) {
        for _ in 0..500 {
            if pre.shared.zeroed_end.load(Ordering::Acquire) >= at_least {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the zeroing thread did not reach {at_least}");
    }

    #[test]
    fn zeroes_ahead_up_to_the_segment_size_and_never_over_data() {
        let file = Arc::new(tempfile::tempfile().expect("temp file"));
        let segment_bytes = 3 * CHUNK + 10;
        let pre = Preallocator::start(file.clone(), segment_bytes, 0, 0);
        wait_for_zeroed(&pre, limit(segment_bytes));
        assert_eq!(
            file.metadata().expect("stat").len(),
            limit(segment_bytes),
            "zeroed to the nominal size, rounded to a page, and no further"
        );
        pre.write_at(&file, b"data", 0).expect("writes");
        let mut read = [0u8; 4];
        file.read_exact_at(&mut read, 0).expect("reads");
        assert_eq!(&read, b"data");
        // Past the zeroed end: the writer grows the file itself.
        let past = limit(segment_bytes) + 100;
        pre.write_at(&file, b"more", past).expect("writes past");
        std::thread::sleep(Duration::from_millis(20));
        file.read_exact_at(&mut read, past).expect("reads");
        assert_eq!(&read, b"more", "the thread never zeroes over data");
    }

    #[test]
    fn a_new_segment_is_zeroed_from_its_start() {
        let first = Arc::new(tempfile::tempfile().expect("temp file"));
        let pre = Preallocator::start(first, 8192, 0, 0);
        wait_for_zeroed(&pre, 8192);
        let second = Arc::new(tempfile::tempfile().expect("temp file"));
        pre.switch(second.clone());
        wait_for_zeroed(&pre, 8192);
        assert_eq!(second.metadata().expect("stat").len(), 8192);
    }
}
