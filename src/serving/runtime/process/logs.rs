//! Pipes a child's stdout and stderr into pilotlight's log, line by line,
//! keeping the last stderr lines for the crash report.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::serving::runtime::Workload;

/// Stderr lines kept for `last_failure`.
const TAIL_LINES: usize = 20;
/// Longer lines are cut, so a child that never prints a newline cannot make
/// pilotlight buffer without bound.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long a crash report waits for the last lines still in the pipe.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// The readers of one child's output.
pub(super) struct Output {
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Output {
    /// Waits (briefly) until the pipes are read to the end, then returns the
    /// last stderr lines, oldest first.
    pub(super) async fn finish(self) -> Vec<String> {
        let readers = futures::future::join_all(self.readers);
        let _ = tokio::time::timeout(DRAIN_WAIT, readers).await;
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tail.iter().cloned().collect()
    }
}

/// Which of the child's streams a line came from.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The fields every line is logged with.
#[derive(Clone)]
struct Source {
    service: Arc<str>,
    revision: Arc<str>,
    instance: Arc<str>,
}

/// Starts reading the child's stdout and stderr (both must be piped).
pub(super) fn pipe(child: &mut Child, workload: &Workload, instance: &Arc<str>) -> Output {
    let source = Source {
        service: Arc::from(workload.service.to_string()),
        revision: Arc::from(workload.revision.as_str()),
        instance: instance.clone(),
    };
    let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(forward(
            stdout,
            Stream::Stdout,
            source.clone(),
            None,
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        let tail = Some(stderr_tail.clone());
        readers.push(tokio::spawn(forward(stderr, Stream::Stderr, source, tail)));
    }
    Output {
        stderr_tail,
        readers,
    }
}

async fn forward(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    source: Source,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    while let Ok(true) = read_line(&mut reader, &mut line).await {
        let text = String::from_utf8_lossy(&line);
        log_line(&source, stream, &text);
        if let Some(tail) = &tail {
            remember(tail, text.into_owned());
        }
    }
}

fn log_line(source: &Source, stream: Stream, text: &str) {
    let Source {
        service,
        revision,
        instance,
    } = source;
    // Both at info: many apps write ordinary logs to stderr, and a crash is
    // reported at warn with its last stderr lines anyway.
    let stream = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    tracing::info!(%service, %revision, %instance, stream, "{text}");
}

fn remember(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// Reads one line into `line` without its line ending, keeping at most
/// [`MAX_LINE_BYTES`] of it. False at the end of the stream.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    let mut read_any = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            break;
        }
        read_any = true;
        let (used, complete) = match buffer.iter().position(|&b| b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (buffer.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&buffer[..used.min(room)]);
        reader.consume(used);
        if complete {
            break;
        }
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(read_any)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        while read_line(&mut reader, &mut line).await.expect("in memory") {
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_last_line_without_newline() {
        assert_eq!(
            lines(b"one\r\ntwo\n\nthree").await,
            ["one", "two", "", "three"]
        );
    }

    #[tokio::test]
    async fn cuts_overlong_lines() {
        let mut input = vec![b'x'; MAX_LINE_BYTES * 2];
        input.extend_from_slice(b"\nnext\n");
        let lines = lines(&input).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let tail = Mutex::new(VecDeque::new());
        for n in 0..TAIL_LINES + 5 {
            remember(&tail, n.to_string());
        }
        let tail = tail.into_inner().expect("not poisoned");
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.front().map(String::as_str), Some("5"));
    }
}
