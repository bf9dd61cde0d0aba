//! What instances write to stdout and stderr, a line at a time: printed on
//! a terminal with a short prefix naming the instance (as `docker compose`
//! prints its services), or as log records when logs are JSON; the last
//! lines are kept for the crash report.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::LocalWorkload;
use crate::telemetry::{AppOutput, app_output};

/// Output lines kept for `last_failure`.
const TAIL_LINES: usize = 20;
/// Longer lines are cut, so an instance that never prints a newline cannot
/// make pilotlight buffer without bound.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which of a container's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// One container's output within an instance.
#[derive(Clone)]
pub(crate) struct Output {
    source: Arc<Source>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// Who wrote a line.
struct Source {
    service: String,
    revision: String,
    instance: Arc<str>,
    /// The terminal prefix: the instance, and the container's name when it is
    /// a sidecar.
    prefix: String,
    /// The ANSI colour of the prefix on a terminal.
    color: &'static str,
}

/// Prefix colours, as `docker compose` cycles through them.
const COLORS: [&str; 6] = ["36", "33", "32", "35", "34", "96"];

impl Output {
    /// `sidecar` names the container when it is not the serving one.
    pub(crate) fn new(
        workload: &LocalWorkload,
        instance: &Arc<str>,
        sidecar: Option<&str>,
    ) -> Self {
        let prefix = match sidecar {
            Some(container) => format!("{instance}/{container}"),
            None => instance.to_string(),
        };
        let hash = instance.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        Output {
            source: Arc::new(Source {
                service: workload.service.to_string(),
                revision: workload.revision.clone(),
                instance: instance.clone(),
                prefix,
                color: COLORS[hash % COLORS.len()],
            }),
            tail: Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES))),
        }
    }

    /// Splits one of its streams into lines.
    pub(crate) fn lines(&self, stream: Stream) -> Lines {
        Lines {
            output: self.clone(),
            stream,
            pending: Vec::new(),
            cut: false,
        }
    }

    /// The last lines written, oldest first.
    pub(crate) fn tail(&self) -> Vec<String> {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().cloned().collect()
    }

    fn line(&self, stream: Stream, text: &str) {
        print_line(&self.source, stream, text);
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.to_owned());
    }
}

fn print_line(source: &Source, stream: Stream, text: &str) {
    match app_output() {
        AppOutput::Terminal { color } => {
            let mut line = String::with_capacity(source.prefix.len() + text.len() + 16);
            if color {
                line.push_str("\x1b[");
                line.push_str(source.color);
                line.push('m');
                line.push_str(&source.prefix);
                line.push_str(" |\x1b[0m ");
            } else {
                line.push_str(&source.prefix);
                line.push_str(" | ");
            }
            line.push_str(text);
            line.push('\n');
            // One write per line, so lines of different instances and the
            // log's own lines never interleave mid-line. A closed stderr is
            // no reason to stop the instance.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        AppOutput::Log => {
            let Source {
                service,
                revision,
                instance,
                ..
            } = source;
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            // Both at info: many apps write ordinary logs to stderr, and a
            // crash is reported at warn with its last lines anyway.
            tracing::info!(%service, %revision, %instance, stream, "{text}");
        }
    }
}

/// Turns chunks of one stream into lines: complete lines are written as they
/// arrive, a last line without newline by [`Lines::finish`].
pub(crate) struct Lines {
    output: Output,
    stream: Stream,
    pending: Vec<u8>,
    /// The pending line reached [`MAX_LINE_BYTES`]; the rest of it is dropped.
    cut: bool,
}

impl Lines {
    pub(crate) fn push(&mut self, mut chunk: &[u8]) {
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            self.take(&chunk[..newline]);
            self.emit();
            chunk = &chunk[newline + 1..];
        }
        self.take(chunk);
    }

    /// Writes what is left of a last line without a newline.
    pub(crate) fn finish(&mut self) {
        if !self.pending.is_empty() || self.cut {
            self.emit();
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.pending.len());
        if bytes.len() > room {
            self.cut = true;
        }
        self.pending
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        while self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        let text = String::from_utf8_lossy(&self.pending);
        self.output.line(self.stream, &text);
        self.pending.clear();
        self.cut = false;
    }
}

/// Reads a pipe to its end, line by line.
pub(crate) async fn forward(mut pipe: impl AsyncRead + Unpin, mut lines: Lines) {
    let mut buffer = vec![0u8; 8 * 1024];
    while let Ok(n) = pipe.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        lines.push(&buffer[..n]);
    }
    lines.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKey;

    fn output() -> Output {
        let workload = LocalWorkload {
            service: ObjectKey::new("default", "hello"),
            revision: "hello-00001".into(),
            pod: Default::default(),
            drain_timeout: std::time::Duration::from_secs(1),
        };
        Output::new(&workload, &Arc::from("hello-00001-1"), None)
    }

    #[tokio::test]
    async fn splits_lines_across_chunks_and_keeps_a_last_line_without_newline() {
        let output = output();
        let mut lines = output.lines(Stream::Stdout);
        lines.push(b"one\r\ntw");
        lines.push(b"o\n\nthr");
        lines.push(b"ee");
        lines.finish();
        assert_eq!(output.tail(), ["one", "two", "", "three"]);
    }

    #[tokio::test]
    async fn cuts_overlong_lines() {
        let output = output();
        let mut input = vec![b'x'; MAX_LINE_BYTES * 2];
        input.extend_from_slice(b"\nnext\n");
        forward(&input[..], output.lines(Stream::Stderr)).await;
        let tail = output.tail();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0].len(), MAX_LINE_BYTES);
        assert_eq!(tail[1], "next");
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let output = output();
        let mut lines = output.lines(Stream::Stdout);
        for n in 0..TAIL_LINES + 5 {
            lines.push(format!("{n}\n").as_bytes());
        }
        let tail = output.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.first().map(String::as_str), Some("5"));
    }
}
