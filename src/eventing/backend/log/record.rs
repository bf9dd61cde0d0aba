//! The on-disk record format, and a sequential reader over a segment file.
//!
//! A record is, little-endian:
//!
//! ```text
//! [u32 payload_len][u32 crc32][u64 offset][i64 append timestamp ms][payload]
//! ```
//!
//! The CRC-32 (crc32fast, IEEE) covers `offset ‖ timestamp ‖ payload`, i.e. every
//! byte after the checksum field. Including the offset means a record that is
//! intact but in the wrong place (a stale block, a mis-named file) fails the
//! check too. The length is not covered, but a wrong length moves the checksum
//! window and so fails it as well (or overruns the file and is caught as torn).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes before the payload.
pub(super) const HEADER_LEN: usize = 24;

/// The largest payload accepted. Anything larger in a header is garbage (a torn
/// or corrupt length), so recovery does not try to read gigabytes because of it.
pub(super) const MAX_PAYLOAD: u32 = 256 << 20;

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub payload_len: u32,
    pub crc: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
}

impl Header {
    fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            payload_len: u32::from_le_bytes(array(bytes, 0)),
            crc: u32::from_le_bytes(array(bytes, 4)),
            offset: u64::from_le_bytes(array(bytes, 8)),
            timestamp_ms: i64::from_le_bytes(array(bytes, 16)),
        }
    }

    fn is_zero(&self) -> bool {
        self.payload_len == 0 && self.crc == 0 && self.offset == 0 && self.timestamp_ms == 0
    }

    /// Header plus payload.
    pub(super) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

/// `N` bytes of a header at a fixed position (always in bounds: callers pass
/// constants that fit `HEADER_LEN`).
fn array<const N: usize>(bytes: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The checksum stored in a record: over offset, timestamp and payload.
pub(super) fn checksum(offset: u64, timestamp_ms: i64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(&timestamp_ms.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Appends one record to `buf`. Fails (without touching `buf`) if the payload is
/// larger than [`MAX_PAYLOAD`], which recovery would reject as corrupt.
pub(super) fn encode(
    buf: &mut Vec<u8>,
    offset: u64,
    timestamp_ms: i64,
    payload: &[u8],
) -> Result<(), io::Error> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "event of {} bytes is larger than the log's record limit of {MAX_PAYLOAD} bytes",
                    payload.len()
                ),
            )
        })?;
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(offset, timestamp_ms, payload).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// What a [`RecordReader`] found at its position.
#[derive(Debug)]
pub(super) enum Next<'a> {
    /// A record whose header is in bounds. Its payload is present when asked
    /// for; the checksum and offset are the caller's to verify.
    Record {
        pos: u64,
        header: Header,
        payload: Option<&'a [u8]>,
    },
    /// The position is exactly at the end: no more records.
    End,
    /// An all-zero header: the zeroed, preallocated part of a segment, which
    /// no record can be (a record's checksum covers its offset and
    /// timestamp, and that of sixteen zero bytes is not zero).
    Zeroed { pos: u64 },
    /// Fewer bytes remain than the record needs (a torn write), or the length
    /// field is beyond [`MAX_PAYLOAD`].
    Broken { pos: u64, reason: &'static str },
}

/// Reads records one after another from a file, between a start position and
/// an end it never reads past, through a buffer refilled with positioned reads
/// (`read_at`), so it never moves a file cursor the writer could be using.
pub(super) struct RecordReader<'f> {
    file: &'f File,
    end: u64,
    pos: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    chunk: usize,
}

impl<'f> RecordReader<'f> {
    /// A reader of `file` from `pos` up to `end`, reading `chunk` bytes at a time.
    pub(super) fn new(file: &'f File, pos: u64, end: u64, chunk: usize) -> Self {
        RecordReader {
            file,
            end,
            pos,
            buf: Vec::new(),
            buf_pos: pos,
            chunk,
        }
    }

    /// The position of the next record.
    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    /// The next record (with its payload when `with_payload`), advancing past it.
    pub(super) fn next(&mut self, with_payload: bool) -> io::Result<Next<'_>> {
        let pos = self.pos;
        if pos >= self.end {
            return Ok(Next::End);
        }
        let Some(header) = self.header()? else {
            return Ok(broken(pos, "partial record header"));
        };
        if header.is_zero() {
            return Ok(Next::Zeroed { pos });
        }
        if header.payload_len > MAX_PAYLOAD {
            return Ok(broken(pos, "record length out of range"));
        }
        let record_len = header.record_len();
        if self.end - pos < record_len {
            return Ok(broken(pos, "record extends past the end of the segment"));
        }
        self.pos = pos + record_len;
        let payload = if with_payload {
            self.bytes(pos + HEADER_LEN as u64, header.payload_len as usize)?
        } else {
            None
        };
        Ok(Next::Record {
            pos,
            header,
            payload,
        })
    }

    fn header(&mut self) -> io::Result<Option<Header>> {
        let Some(bytes) = self.bytes(self.pos, HEADER_LEN)? else {
            return Ok(None);
        };
        Ok(bytes.first_chunk::<HEADER_LEN>().map(Header::parse))
    }

    /// `len` bytes at `at`, reading them in if the buffer does not hold them;
    /// `None` if they extend past the end.
    fn bytes(&mut self, at: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let want_end = at + len as u64;
        if want_end > self.end {
            return Ok(None);
        }
        let buf_end = self.buf_pos + self.buf.len() as u64;
        if at < self.buf_pos || want_end > buf_end {
            let fill = len.max(self.chunk) as u64;
            let fill = fill.min(self.end - at) as usize;
            self.buf.resize(fill, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.buf_pos = at;
        }
        let start = (at - self.buf_pos) as usize;
        Ok(self.buf.get(start..start + len))
    }
}

fn broken(pos: u64, reason: &'static str) -> Next<'static> {
    Next::Broken { pos, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn encode_then_read_back() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1234, b"hello").expect("encodes");
        encode(&mut buf, 8, 1235, b"").expect("encodes");
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&buf).expect("writes");
        let mut reader = RecordReader::new(&file, 0, buf.len() as u64, 3);
        match reader.next(true).expect("reads") {
            Next::Record {
                pos,
                header,
                payload,
            } => {
                assert_eq!(pos, 0);
                assert_eq!(header.offset, 7);
                assert_eq!(header.timestamp_ms, 1234);
                assert_eq!(payload, Some(&b"hello"[..]));
                assert_eq!(header.crc, checksum(7, 1234, b"hello"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            reader.next(false).expect("reads"),
            Next::Record { header, payload: None, .. } if header.offset == 8
        ));
        assert!(matches!(reader.next(true).expect("reads"), Next::End));
    }

    #[test]
    fn torn_record_is_broken() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, b"hello").expect("encodes");
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&buf[..buf.len() - 1]).expect("writes");
        let mut reader = RecordReader::new(&file, 0, buf.len() as u64 - 1, 1024);
        assert!(matches!(
            reader.next(true).expect("reads"),
            Next::Broken { pos: 0, .. }
        ));
    }

    #[test]
    fn zeroed_header_is_not_a_record() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, b"").expect("encodes");
        assert_ne!(
            &buf[..HEADER_LEN],
            &[0u8; HEADER_LEN],
            "an empty record at 0 is not zeros"
        );
        buf.extend_from_slice(&[0u8; 100]);
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(&buf).expect("writes");
        let mut reader = RecordReader::new(&file, 0, buf.len() as u64, 16);
        assert!(matches!(
            reader.next(true).expect("reads"),
            Next::Record { .. }
        ));
        assert!(matches!(
            reader.next(true).expect("reads"),
            Next::Zeroed { pos } if pos == HEADER_LEN as u64
        ));
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut buf = Vec::new();
        let big = vec![0u8; MAX_PAYLOAD as usize + 1];
        assert!(encode(&mut buf, 0, 0, &big).is_err());
        assert!(buf.is_empty());
    }
}
