use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::record::{self, HEADER_LEN, Next, RecordReader};
use super::writer::Fault;
use super::*;
use crate::api::ObjectKey;
use crate::api::filter::Filter;
use crate::eventing::backend::{Backend, Subscription, SubscriptionSpec};

fn event(i: u64) -> Event {
    crate::cloudevent::test_event(&i.to_string(), "t", Some(Bytes::from(vec![b'x'; 100])))
}

fn events(ids: std::ops::Range<u64>) -> Vec<Arc<Event>> {
    ids.map(|i| Arc::new(event(i))).collect()
}

/// Tiny segments (a few records each), no retention.
fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        retention_bytes: None,
        retention_age: None,
    }
}

fn open(dir: &Path, config: LogConfig) -> (LogStore, RecoveryReport) {
    LogStore::open(dir, config).expect("log opens")
}

/// Appends `ids` one event per call, syncing after each, and checks offsets.
fn append_each_synced(store: &LogStore, ids: std::ops::Range<u64>) {
    for i in ids {
        let (_, next) = store.bounds();
        assert_eq!(store.append(&events(i..i + 1)).expect("appends"), next);
        store.sync().expect("syncs");
    }
}

fn ids(records: &[(u64, Event)]) -> Vec<u64> {
    records
        .iter()
        .map(|(_, e)| e.id().parse().expect("numeric id"))
        .collect()
}

fn offsets(records: &[(u64, Event)]) -> Vec<u64> {
    records.iter().map(|(o, _)| *o).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("lists dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

fn flip_byte(path: &Path, pos: u64) {
    let mut bytes = fs::read(path).expect("reads segment");
    bytes[pos as usize] ^= 0x40;
    fs::write(path, bytes).expect("writes segment");
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

/// Where a segment's records end: the file may go on in zeros (the active
/// segment is zeroed ahead of the writer).
fn data_len(path: &Path) -> u64 {
    let file = fs::File::open(path).expect("opens segment");
    let mut reader = RecordReader::new(&file, 0, file_len(path), 4096);
    while let Next::Record { .. } = reader.next(false).expect("reads") {}
    reader.pos()
}

/// Whether every byte of the file from `from` on is zero.
fn zeros_from(path: &Path, from: u64) -> bool {
    fs::read(path).expect("reads segment")[from as usize..]
        .iter()
        .all(|b| *b == 0)
}

/// Writes `bytes` where the records end, into the zeroed tail: what a
/// crash in the middle of an unsynced write leaves.
fn write_at_data_end(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let at = data_len(path);
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(bytes, at))
        .expect("writes after the records");
}

#[test]
fn empty_dir_opens_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new").join("log");
    let (store, report) = open(&path, small());
    assert_eq!(
        report,
        RecoveryReport {
            segments: 1,
            next_offset: 0,
            truncated_bytes: 0
        }
    );
    assert_eq!(store.bounds(), (0, 0));
    assert!(store.read(0, 10).expect("reads").is_empty());
    assert_eq!(segment_files(&path).len(), 1);
    assert_eq!(store.append(&[]).expect("empty append"), 0);
}

#[test]
fn round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..20);
    // A batch in one call: consecutive offsets, first one returned.
    assert_eq!(store.append(&events(20..30)).expect("appends"), 20);
    store.sync().expect("syncs");
    assert_eq!(store.bounds(), (0, 30));
    assert!(segment_files(dir.path()).len() >= 5, "tiny segments roll");

    let all = store.read(0, 1000).expect("reads");
    assert_eq!(offsets(&all), (0..30).collect::<Vec<_>>());
    assert_eq!(ids(&all), (0..30).collect::<Vec<_>>());
    // Reads from the middle, bounded by max, across segment boundaries.
    for from in 0..30 {
        let some = store.read(from, 4).expect("reads");
        let want: Vec<u64> = (from..(from + 4).min(30)).collect();
        assert_eq!(offsets(&some), want, "from {from}");
        assert_eq!(ids(&some), want);
    }
    assert!(store.read(30, 10).expect("reads").is_empty());
    let files = segment_files(dir.path());
    for closed in &files[..files.len() - 1] {
        assert_eq!(
            file_len(closed),
            data_len(closed),
            "a roll cuts the zeroed tail off {}",
            closed.display()
        );
    }
    drop(store);

    let (store, report) = open(dir.path(), small());
    assert_eq!(report.next_offset, 30);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.segments, segment_files(dir.path()).len());
    assert_eq!(store.bounds(), (0, 30));
    assert_eq!(store.read(0, 1000).expect("reads after reopen"), all);
    for from in 0..30 {
        let some = store.read(from, 3).expect("reads");
        assert_eq!(
            offsets(&some),
            (from..(from + 3).min(30)).collect::<Vec<_>>()
        );
    }
    // Appending continues where the log ended.
    assert_eq!(store.append(&events(30..31)).expect("appends"), 30);
    store.sync().expect("syncs");
    assert_eq!(offsets(&store.read(29, 10).expect("reads")), vec![29, 30]);
}

#[test]
fn unsynced_records_are_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    store.append(&events(0..3)).expect("appends");
    store.sync().expect("syncs");
    store.append(&events(3..5)).expect("appends");
    assert_eq!(store.bounds(), (0, 5));
    assert_eq!(offsets(&store.read(0, 10).expect("reads")), vec![0, 1, 2]);
    store.sync().expect("syncs");
    assert_eq!(
        offsets(&store.read(0, 10).expect("reads")),
        vec![0, 1, 2, 3, 4]
    );
}

#[test]
fn torn_tail_is_cut_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..7);
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    let synced_len = data_len(&last);
    // Half of the next record, as if killed mid-write.
    let mut next = Vec::new();
    record::encode(&mut next, 7, 0, &event(7).to_bytes()).expect("encodes");
    let half = &next[..next.len() / 2];
    write_at_data_end(&last, half);

    let (store, report) = open(dir.path(), small());
    assert_eq!(report.truncated_bytes, half.len() as u64);
    assert_eq!(report.next_offset, 7);
    assert_eq!(data_len(&last), synced_len);
    assert!(zeros_from(&last, synced_len), "the torn record is zeroed");
    assert_eq!(
        ids(&store.read(0, 100).expect("reads")),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(store.append(&events(7..8)).expect("appends"), 7);
    store.sync().expect("syncs");
    drop(store);
    let (store, report) = open(dir.path(), small());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        ids(&store.read(0, 100).expect("reads")),
        (0..8).collect::<Vec<_>>()
    );
}

#[test]
fn a_zeroed_tail_is_the_end_of_the_log_not_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    append_each_synced(&store, 0..5);
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    let len = data_len(&last);
    // What the zeroing thread leaves ahead of the writer, made certain here.
    OpenOptions::new()
        .write(true)
        .open(&last)
        .and_then(|f| f.set_len(len + (64 << 10)))
        .expect("extends with zeros");
    let (store, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.truncated_bytes, 0, "zeros are not damage");
    assert_eq!(report.next_offset, 5);
    assert!(
        file_len(&last) >= len + (64 << 10),
        "the zeroed tail is kept"
    );
    assert_eq!(store.append(&events(5..6)).expect("appends"), 5);
    store.sync().expect("syncs");
    assert_eq!(
        ids(&store.read(0, 100).expect("reads")),
        (0..6).collect::<Vec<_>>()
    );
}

/// Pages of an unsynced group reach the disk in any order: here the first
/// record of a torn group is still zeros but the ones after it were
/// written. Recovery must find those bytes behind the zeros and zero them:
/// left there, after a later shorter group they would sit exactly where
/// the next records belong, with the right offsets and checksums, and
/// another crash would bring back events never acknowledged.
#[test]
fn a_torn_write_behind_zeros_is_found_and_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    append_each_synced(&store, 10..17); // offsets 0..7
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    let synced_len = data_len(&last);
    // The lost group: offsets 7, 8, 9 holding events 27, 28, 29, with the
    // first record's bytes never written.
    let mut group = Vec::new();
    for (offset, id) in [(7, 27), (8, 28), (9, 29)] {
        record::encode(&mut group, offset, 0, &event(id).to_bytes()).expect("encodes");
    }
    let record_len = group.len() / 3;
    group[..record_len].fill(0);
    write_at_data_end(&last, &group);

    let (store, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.next_offset, 7);
    // Cut: from where the records end to the last byte that is not zero.
    assert_eq!(report.truncated_bytes, (3 * record_len) as u64);
    assert!(
        zeros_from(&last, synced_len),
        "the stray records are zeroed"
    );
    // A shorter group of the same record sizes, synced, then a crash.
    assert_eq!(store.append(&events(17..19)).expect("appends"), 7);
    store.sync().expect("syncs");
    drop(store);
    let (store, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.next_offset, 9, "nothing chains after the new group");
    assert_eq!(
        ids(&store.read(0, 100).expect("reads")),
        (10..19).collect::<Vec<_>>()
    );
}

#[test]
fn garbage_tail_is_cut_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    store.append(&events(0..5)).expect("appends");
    store.sync().expect("syncs");
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    let len = data_len(&last);
    // A plausible header (small length) followed by junk, then a huge length.
    let mut junk = vec![0u8; 100];
    junk[0] = 10;
    junk.extend_from_slice(&[0xff; 64]);
    write_at_data_end(&last, &junk);
    let (store, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.truncated_bytes, junk.len() as u64);
    assert_eq!(data_len(&last), len);
    assert!(zeros_from(&last, len));
    assert_eq!(store.bounds(), (0, 5));
    assert_eq!(store.append(&events(5..6)).expect("appends"), 5);
}

#[test]
fn flipped_byte_in_last_record_is_cut_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    store.append(&events(0..10)).expect("appends");
    store.sync().expect("syncs");
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    let len = data_len(&last);
    let record_len = len / 10;
    flip_byte(&last, len - 5); // inside the payload of offset 9
    let (store, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.truncated_bytes, record_len);
    assert_eq!(report.next_offset, 9);
    assert_eq!(
        ids(&store.read(0, 100).expect("reads")),
        (0..9).collect::<Vec<_>>()
    );
    assert_eq!(store.append(&events(100..101)).expect("appends"), 9);
    store.sync().expect("syncs");
    assert_eq!(ids(&store.read(9, 1).expect("reads")), vec![100]);
}

#[test]
fn flipped_offset_in_last_segment_is_cut_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    store.append(&events(0..4)).expect("appends");
    store.sync().expect("syncs");
    drop(store);
    let last = segment_files(dir.path()).pop().expect("a segment");
    let record_len = data_len(&last) / 4;
    flip_byte(&last, 2 * record_len + 8); // the offset field of record 2
    let (_, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.next_offset, 2);
    assert_eq!(report.truncated_bytes, 2 * record_len);
}

#[test]
fn flipped_byte_in_closed_segment_is_corrupt_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..12);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let victim = &files[1];
    let base = Segment::parse_name(&victim.file_name().expect("name").to_string_lossy())
        .expect("segment name");
    flip_byte(victim, HEADER_LEN as u64 + 10); // payload of its first record

    let check = |store: &LogStore| {
        let err = store.read(base, 10).expect_err("corrupt record");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Corrupt(_)), "{msg}");
        assert!(msg.contains(&victim.display().to_string()), "{msg}");
        assert!(msg.contains("at byte 0"), "{msg}");
        // Records before the damage still read; a read ending before it too.
        assert_eq!(
            offsets(&store.read(0, base as usize).expect("reads")),
            (0..base).collect::<Vec<_>>()
        );
        assert_eq!(
            offsets(&store.read(base + 1, 2).expect("reads")),
            vec![base + 1, base + 2]
        );
    };
    // While the log is open (index built while writing)…
    check(&store);
    drop(store);
    // …and after reopening (closed segments are trusted at open, indexed lazily).
    let (store, report) = open(dir.path(), small());
    assert_eq!(report.truncated_bytes, 0);
    check(&store);
}

#[test]
fn broken_length_in_closed_segment_is_corrupt_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..12);
    drop(store);
    let files = segment_files(dir.path());
    flip_byte(&files[0], 1); // the first record's length
    let (store, _) = open(dir.path(), small());
    let err = store.read(0, 10).expect_err("corrupt segment");
    assert!(matches!(err, StoreError::Corrupt(_)));
    assert!(err.to_string().contains(&files[0].display().to_string()));
    // Later segments are unaffected.
    let base = Segment::parse_name(&files[1].file_name().expect("name").to_string_lossy())
        .expect("segment name");
    assert_eq!(store.read(base, 1).expect("reads")[0].0, base);
}

#[test]
fn zero_length_last_segment_from_crash_during_roll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..3);
    // Whatever the log rolled to, add an empty file at the next offset, as a
    // crash right after creating a segment leaves.
    let (_, next) = store.bounds();
    drop(store);
    let empty = dir.path().join(Segment::file_name(next));
    if !empty.exists() {
        fs::File::create(&empty).expect("creates empty segment");
    }
    let (store, report) = open(dir.path(), small());
    assert_eq!(report.next_offset, next);
    assert_eq!(store.bounds(), (0, next));
    assert_eq!(store.read(0, 100).expect("reads").len() as u64, next);
    assert_eq!(
        store.append(&events(next..next + 1)).expect("appends"),
        next
    );
    store.sync().expect("syncs");
    assert!(
        data_len(&empty) > 0,
        "the empty segment becomes the active one"
    );
    assert_eq!(offsets(&store.read(next, 10).expect("reads")), vec![next]);
}

#[test]
fn sparse_index_serves_reads_from_the_middle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 200_000,
        ..small()
    };
    let (store, _) = open(dir.path(), config.clone());
    for batch in 0..30 {
        store
            .append(&events(batch * 100..batch * 100 + 100))
            .expect("appends");
        store.sync().expect("syncs");
    }
    let segments = store.segments_from(0);
    assert!(segments.len() >= 2, "rolled at least once");
    {
        let view = segments[0].view();
        assert!(view.index.len() > 10, "entries every 4 KiB");
        assert!(
            view.index
                .windows(2)
                .all(|w| w[1].pos - w[0].pos >= super::segment::INDEX_INTERVAL)
        );
    }
    let check = |store: &LogStore| {
        for from in [0, 1, 99, 1234, 1500, 2999] {
            let got = store.read(from, 5).expect("reads");
            assert_eq!(
                ids(&got),
                (from..(from + 5).min(3000)).collect::<Vec<_>>(),
                "from {from}"
            );
        }
    };
    check(&store);
    drop(store);
    let (store, _) = open(dir.path(), config);
    assert!(
        !store.segments_from(0)[0].view().indexed,
        "closed segments are indexed lazily"
    );
    check(&store);
    assert!(store.segments_from(0)[0].view().index.len() > 10);
}

#[test]
fn failed_write_rolls_back_the_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    store.append(&events(0..3)).expect("appends");
    store.sync().expect("syncs");
    let synced_len = data_len(&segment_files(dir.path())[0]);
    // A group: the first append succeeds, the second fails.
    assert_eq!(store.append(&events(3..5)).expect("appends"), 3);
    store.inject(Fault::Write);
    assert!(store.append(&events(5..6)).is_err());
    assert_eq!(
        store.bounds(),
        (0, 3),
        "offsets of the failed group are reused"
    );
    assert_eq!(data_len(&segment_files(dir.path())[0]), synced_len);
    assert!(
        zeros_from(&segment_files(dir.path())[0], synced_len),
        "the failed group is zeroed"
    );
    assert_eq!(store.append(&events(10..12)).expect("appends"), 3);
    store.sync().expect("syncs");
    assert_eq!(
        ids(&store.read(0, 10).expect("reads")),
        vec![0, 1, 2, 10, 11]
    );
    drop(store);
    let (store, report) = open(dir.path(), LogConfig::default());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(
        ids(&store.read(0, 10).expect("reads")),
        vec![0, 1, 2, 10, 11]
    );
}

#[test]
fn failed_sync_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..4);
    let (_, next) = store.bounds();
    store.append(&events(100..102)).expect("appends");
    store.inject(Fault::Sync);
    assert!(store.sync().is_err());
    assert_eq!(store.bounds().1, next);
    assert_eq!(store.read(0, 100).expect("reads").len() as u64, next);
    assert_eq!(store.append(&events(4..5)).expect("appends"), next);
    store.sync().expect("syncs");
    assert_eq!(
        ids(&store.read(0, 100).expect("reads")),
        (0..5).collect::<Vec<_>>()
    );
}

#[test]
fn failed_rollback_poisons_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), LogConfig::default());
    store.append(&events(0..1)).expect("appends");
    store.sync().expect("syncs");
    store.inject(Fault::Write);
    store.inject(Fault::Undo);
    assert!(store.append(&events(1..2)).is_err());
    let err = store.append(&events(1..2)).expect_err("poisoned");
    let msg = err.to_string();
    assert!(msg.contains("unusable"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(store.sync().is_err());
    // Reads of what was durable still work.
    assert_eq!(ids(&store.read(0, 10).expect("reads")), vec![0]);
}

#[test]
fn retention_by_bytes_drops_oldest_closed_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    append_each_synced(&store, 0..30);
    let before = segment_files(dir.path());
    let sizes: Vec<u64> = before.iter().map(|p| data_len(p)).collect();
    let total: u64 = sizes.iter().sum();
    drop(store);
    // Keep about half.
    let config = LogConfig {
        retention_bytes: Some(total / 2),
        ..small()
    };
    let (store, _) = open(dir.path(), config);
    store.enforce_retention().expect("retention");
    let after = segment_files(dir.path());
    assert!(after.len() < before.len());
    assert_eq!(after, before[before.len() - after.len()..]);
    let kept: u64 = after.iter().map(|p| data_len(p)).sum();
    assert!(kept <= total / 2);
    let (oldest, next) = store.bounds();
    assert!(oldest > 0);
    assert_eq!(next, 30);
    let read = store.read(0, 1000).expect("reads");
    assert_eq!(
        offsets(&read),
        (oldest..30).collect::<Vec<_>>(),
        "starts at the oldest kept"
    );
    drop(store);
    let (store, _) = open(dir.path(), small());
    assert_eq!(store.bounds(), (oldest, 30));
}

#[test]
fn retention_never_drops_the_active_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention_bytes: Some(0),
        ..small()
    };
    let (store, _) = open(dir.path(), config);
    append_each_synced(&store, 0..10);
    store.enforce_retention().expect("retention");
    assert_eq!(segment_files(dir.path()).len(), 1);
    let (oldest, next) = store.bounds();
    assert_eq!(next, 10);
    assert_eq!(
        offsets(&store.read(0, 100).expect("reads")),
        (oldest..10).collect::<Vec<_>>()
    );
    assert_eq!(store.append(&events(10..11)).expect("appends"), 10);
}

#[test]
fn retention_by_age_drops_old_segments_even_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
        ..small()
    };
    let (store, _) = open(dir.path(), config.clone());
    store.set_clock_skew(Duration::from_secs(10 * 24 * 3600), true);
    append_each_synced(&store, 0..9);
    let (_, old_end) = store.bounds();
    store.set_clock_skew(Duration::ZERO, false);
    append_each_synced(&store, 9..20);
    drop(store);

    // After a reopen, closed segments' ages come from their modification time,
    // which the writer set to their newest record's time when closing them.
    let (store, _) = open(dir.path(), config.clone());
    store.enforce_retention().expect("retention");
    let (oldest, _) = store.bounds();
    assert_eq!(oldest, old_end, "exactly the old segments are gone");
    assert_eq!(store.read(0, 1).expect("reads")[0].0, oldest);

    // And without a reopen, from the records' timestamps.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), config);
    store.set_clock_skew(Duration::from_secs(10 * 24 * 3600), true);
    append_each_synced(&store, 0..9);
    let (_, old_end) = store.bounds();
    store.set_clock_skew(Duration::ZERO, false);
    append_each_synced(&store, 9..20);
    store.enforce_retention().expect("retention");
    assert_eq!(store.bounds().0, old_end);
}

#[test]
fn cursors_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    assert!(store.load_cursors().expect("no cursors yet").is_empty());
    let cursors: HashMap<String, u64> = [("default/a".to_string(), 5), ("ns/b".to_string(), 0)]
        .into_iter()
        .collect();
    store.save_cursors(&cursors).expect("saves");
    assert_eq!(store.load_cursors().expect("loads"), cursors);
    let fewer: HashMap<String, u64> = [("ns/b".to_string(), 7)].into_iter().collect();
    store.save_cursors(&fewer).expect("saves");
    drop(store);
    let (store, _) = open(dir.path(), small());
    assert_eq!(store.load_cursors().expect("loads"), fewer);
    assert!(!dir.path().join("cursors.tmp").exists());
}

#[test]
fn corrupt_cursors_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    fs::write(dir.path().join("cursors"), b"{\"a\": ").expect("writes");
    let err = store.load_cursors().expect_err("corrupt");
    assert!(
        err.to_string()
            .contains(&dir.path().join("cursors").display().to_string())
    );
}

#[test]
fn second_open_fails_naming_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    let err = LogStore::open(dir.path(), small())
        .err()
        .expect("second open fails");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("in use"), "{msg}");
    drop(store);
    LogStore::open(dir.path(), small()).expect("opens once released");
}

#[test]
fn destroy_removes_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let (store, _) = open(&path, small());
    append_each_synced(&store, 0..5);
    store.destroy().expect("destroys");
    assert!(!path.exists());
    assert!(store.append(&events(5..6)).is_err());
}

#[test]
fn concurrent_reads_see_only_durable_consecutive_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 2048,
        retention_bytes: Some(16 << 10),
        retention_age: None,
    };
    let (store, _) = open(dir.path(), config);
    let store = Arc::new(store);
    const TOTAL: u64 = 3000;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut from = 0;
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let got = store.read(from, 50).expect("concurrent read");
                    let (_, next) = store.bounds();
                    for (i, (offset, event)) in got.iter().enumerate() {
                        assert_eq!(event.id(), offset.to_string());
                        assert!(*offset < next);
                        if i > 0 {
                            assert_eq!(*offset, got[i - 1].0 + 1);
                        }
                    }
                    reads += 1;
                    // Reader 0 follows the head; reader 1 jumps around.
                    from = match (r, got.last()) {
                        (0, Some((last, _))) => last + 1,
                        _ => (from * 7 + 13) % TOTAL,
                    };
                }
                reads
            })
        })
        .collect();
    let retention = {
        let store = store.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                store.enforce_retention().expect("retention");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut i = 0;
    while i < TOTAL {
        let n = (i % 5 + 1).min(TOTAL - i);
        let batch: Vec<Arc<Event>> = (i..i + n).map(|id| Arc::new(event(id))).collect();
        assert_eq!(store.append(&batch).expect("appends"), i);
        store.sync().expect("syncs");
        i += n;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        assert!(reader.join().expect("reader thread") > 0);
    }
    retention.join().expect("retention thread");
    let (oldest, next) = store.bounds();
    assert_eq!(next, TOTAL);
    assert!(oldest > 0, "retention ran");
    let rest = store.read(0, TOTAL as usize).expect("reads");
    assert_eq!(offsets(&rest), (oldest..TOTAL).collect::<Vec<_>>());
}

#[test]
fn destroyed_store_ignores_late_cursor_saves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let (store, _) = open(&path, small());
    store.destroy().expect("destroys");
    // The broker is re-created at the same path while the old store lingers.
    let (again, _) = open(&path, small());
    let cursors: HashMap<String, u64> = [("default/t".to_string(), 9)].into_iter().collect();
    store.save_cursors(&cursors).expect("ignored");
    store.enforce_retention().expect("ignored");
    assert!(again.load_cursors().expect("loads").is_empty());
}

fn spec() -> SubscriptionSpec {
    SubscriptionSpec {
        trigger: ObjectKey::new("default", "t"),
        filter: Arc::new(Filter::Everything),
        max_in_flight: 100,
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> crate::eventing::backend::Delivery {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

/// Retries opening while a previous backend's last references drain (see the
/// report: `shutdown` does not wait for its background task).
async fn start_when_released(path: &Path, config: &LogConfig) -> LocalBackend<LogStore> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match start(path, config) {
            Ok(backend) => return backend,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("log does not reopen: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn end_to_end_through_local_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broker");
    let config = LogConfig {
        segment_bytes: 8 << 10,
        ..LogConfig::default()
    };
    let backend = Arc::new(start(&path, &config).expect("backend starts"));
    let mut sub = backend.subscribe(spec()).await.expect("subscribes");

    const TASKS: u64 = 4;
    const BATCHES: u64 = 25;
    const PER_BATCH: u64 = 4;
    let appenders: Vec<_> = (0..TASKS)
        .map(|t| {
            let backend = backend.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let first = t * 10_000 + b * PER_BATCH;
                    let batch = (first..first + PER_BATCH).map(event).collect();
                    backend.append(batch).await.expect("append");
                }
            })
        })
        .collect();

    let total = TASKS * BATCHES * PER_BATCH;
    let mut seen = HashSet::new();
    let mut last_per_task: HashMap<u64, u64> = HashMap::new();
    for _ in 0..total {
        let delivery = next(&mut sub).await;
        let id: u64 = delivery.event.id().parse().expect("numeric id");
        assert!(seen.insert(id), "{id} delivered twice");
        // Each task appends sequentially: its events arrive in its order.
        if let Some(prev) = last_per_task.insert(id / 10_000, id) {
            assert!(prev < id, "{prev} then {id}");
        }
        delivery.ack().await;
    }
    for appender in appenders {
        appender.await.expect("appender task");
    }
    assert_eq!(seen.len() as u64, total);
    assert!(segment_files(&path).len() > 2, "the log rolled");
    backend.shutdown().await;
    drop(sub);
    drop(backend);

    let backend = start_when_released(&path, &config).await;
    let mut sub = backend.subscribe(spec()).await.expect("subscribes");
    backend
        .append(vec![event(90_001), event(90_002)])
        .await
        .expect("append");
    assert_eq!(next(&mut sub).await.event.id(), "90001");
    assert_eq!(next(&mut sub).await.event.id(), "90002");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing acknowledged before the restart comes again"
    );
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lagging_subscription_reads_from_disk_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 4 << 10,
        ..LogConfig::default()
    };
    let (store, _) = LogStore::open(dir.path(), config).expect("opens");
    let backend = Arc::new(
        LocalBackend::start(
            store,
            LocalConfig {
                tail_bytes: 1,
                ..Default::default()
            },
        )
        .expect("backend starts"),
    );
    let mut sub = backend.subscribe(spec()).await.expect("subscribes");
    const TOTAL: u64 = 1200;
    // Half before reading (the subscription starts far behind), half while.
    for b in 0..TOTAL / 20 {
        let batch = (b * 10..b * 10 + 10).map(event).collect();
        backend.append(batch).await.expect("append");
    }
    let appender = {
        let backend = backend.clone();
        tokio::spawn(async move {
            for b in TOTAL / 20..TOTAL / 10 {
                let batch = (b * 10..b * 10 + 10).map(event).collect();
                backend.append(batch).await.expect("append");
            }
        })
    };
    for want in 0..TOTAL {
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.event.id(), want.to_string());
        delivery.ack().await;
    }
    appender.await.expect("appender task");
    backend.shutdown().await;
}

/// Measures opening a 1 GiB log and the first read from an old segment.
/// `cargo test --lib eventing::backend::log::tests::open_1gib -- --ignored --nocapture`
#[test]
#[ignore = "writes 1 GiB; a measurement, run by hand"]
fn open_1gib_log_is_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig::default();
    let payload = event(0).to_bytes();
    let mut offset = 0u64;
    let mut buf = Vec::new();
    let segment_count = (1u64 << 30) / config.segment_bytes;
    let started = Instant::now();
    for _ in 0..segment_count {
        let path = dir.path().join(Segment::file_name(offset));
        let mut file = fs::File::create(&path).expect("creates");
        let mut len = 0u64;
        while len < config.segment_bytes {
            buf.clear();
            for _ in 0..1000 {
                record::encode(&mut buf, offset, 0, &payload).expect("encodes");
                offset += 1;
            }
            file.write_all(&buf).expect("writes");
            len += buf.len() as u64;
        }
    }
    eprintln!(
        "wrote {offset} records in {segment_count} segments in {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (store, report) = open(dir.path(), config);
    eprintln!("opened in {:?}: {report:?}", started.elapsed());
    assert_eq!(report.next_offset, offset);
    let started = Instant::now();
    let got = store.read(offset / 3, 256).expect("reads");
    eprintln!(
        "first read from an old segment (indexes it) in {:?}",
        started.elapsed()
    );
    assert_eq!(got.len(), 256);
    let started = Instant::now();
    store.read(offset / 3 + 5000, 256).expect("reads");
    eprintln!("second read from that segment in {:?}", started.elapsed());
}

const CRASH_DIR_ENV: &str = "PILOTLIGHT_LOG_CRASH_TEST_DIR";

/// The child half of `kill_9_keeps_every_synced_record`: appends and syncs
/// forever, printing the next offset after each successful sync.
#[test]
#[ignore = "run as a child process by kill_9_keeps_every_synced_record"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let config = LogConfig {
        segment_bytes: 16 << 10,
        ..small()
    };
    let (store, report) = open(Path::new(&dir), config);
    let mut next = report.next_offset;
    let mut out = std::io::stdout().lock();
    loop {
        assert_eq!(
            store.append(&events(next..next + 7)).expect("appends"),
            next
        );
        store.sync().expect("syncs");
        next += 7;
        writeln!(out, "synced {next}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// A real crash: a child process writing the log is SIGKILLed at an arbitrary
/// moment; every record it was told is synced must be there after reopening,
/// with consecutive offsets, and the log must take appends again.
#[test]
fn kill_9_keeps_every_synced_record() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked = 0;
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "eventing::backend::log::tests::crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns the writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let target = acked + 200 + round * 150;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("reads child output");
            if let Some(n) = line.strip_prefix("synced ") {
                acked = n.parse().expect("offset");
                if acked >= target {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaps child");

        let (store, report) = open(dir.path(), small());
        assert!(
            report.next_offset >= acked,
            "{report:?} lost synced records (acked {acked})"
        );
        let all = store.read(0, usize::MAX).expect("reads everything");
        assert_eq!(all.len() as u64, report.next_offset);
        assert!(all.iter().all(|(o, e)| e.id() == o.to_string()));
        acked = report.next_offset;
    }
    assert!(
        segment_files(dir.path()).len() > 3,
        "the child rolled segments"
    );
}

#[test]
fn offset_at_finds_the_first_record_appended_since_a_time_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(dir.path(), small());
    store.set_clock_skew(Duration::from_secs(2 * 3600), true);
    append_each_synced(&store, 0..9);
    store.set_clock_skew(Duration::from_secs(3600), true);
    append_each_synced(&store, 9..14);
    store.set_clock_skew(Duration::ZERO, false);
    append_each_synced(&store, 14..20);
    assert!(store.segments().len() > 2, "the records span segments");
    let now_ms = store.now_ms();
    let at = |ago_ms: i64| store.offset_at(now_ms - ago_ms).expect("scans");
    assert_eq!(at(3 * 3600 * 1000), 0, "everything");
    assert_eq!(at(90 * 60 * 1000), 9, "the last hour and a half");
    assert_eq!(at(30 * 60 * 1000), 14, "the last half hour");
    assert_eq!(at(-60 * 1000), 20, "a time to come: the next offset");
}
