//! The two HTTP ends of a throughput benchmark, kept as lean as HTTP/1.1
//! allows so that the machine's time goes to what is measured: a keep-alive
//! client that sends one request at a time and reads its answer (as wrk
//! does), and a subscriber that answers 202 to every request and counts.
//! Both parse with httparse; neither needs a task per request.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Headers a response or request may have here.
const MAX_HEADERS: usize = 64;
/// The answer of the subscriber.
const ACCEPTED: &[u8] = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";

/// One keep-alive HTTP/1.1 connection that posts and waits for each answer.
pub struct Poster {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buffer: BytesMut,
}

/// A response: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Poster {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Poster> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        Ok(Poster {
            stream,
            buffer: BytesMut::with_capacity(4096),
        })
    }

    /// Sends a request (`head` ends with the blank line and gives the
    /// content-length of `body`) and reads the response.
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> anyhow::Result<Answer> {
        write_both(&mut self.stream, head, body).await?;
        loop {
            if let Some(answer) = self.parse()? {
                return Ok(answer);
            }
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the server closed the connection before answering");
            }
        }
    }

    /// A whole response from the buffer, if it holds one.
    fn parse(&mut self) -> anyhow::Result<Option<Answer>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&self.buffer)? {
            httparse::Status::Complete(head) => head,
            httparse::Status::Partial => return Ok(None),
        };
        let status = response.code.unwrap_or_default();
        let length = content_length(response.headers)?;
        if self.buffer.len() < head + length {
            return Ok(None);
        }
        self.buffer.advance(head);
        let body = self.buffer.split_to(length).freeze();
        Ok(Some(Answer { status, body }))
    }
}

/// Writes head and body with one system call when the socket takes both,
/// so that the server gets the request in one segment.
async fn write_both(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    let total = head.len() + body.len();
    while written < total {
        let n = if written < head.len() {
            let parts = [IoSlice::new(&head[written..]), IoSlice::new(body)];
            stream.write_vectored(&parts).await?
        } else {
            stream.write(&body[written - head.len()..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// The body length a message declares; chunked bodies are not spoken here.
fn content_length(headers: &[httparse::Header<'_>]) -> anyhow::Result<usize> {
    let mut length = 0;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked body: the benchmark's HTTP ends read content-length bodies only");
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .context("an unreadable content-length")?;
        }
    }
    Ok(length)
}

/// An HTTP subscriber that answers 202 and counts the requests.
pub struct CountingSubscriber {
    pub addr: SocketAddr,
    tally: Arc<Tally>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Tally {
    received: AtomicU64,
    /// The count [`CountingSubscriber::wait_for`] waits for, and when it was
    /// reached.
    target: AtomicU64,
    reached: Mutex<Option<Instant>>,
    arrived: Notify,
    /// The first broken request, which fails the wait.
    error: Mutex<Option<String>>,
}

impl CountingSubscriber {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the bench subscriber")?;
        let addr = listener.local_addr()?;
        let tally = Arc::new(Tally {
            target: AtomicU64::new(u64::MAX),
            ..Tally::default()
        });
        let counting = tally.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let tally = counting.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &tally).await {
                        tally.fail(format!("{e:#}"));
                    }
                });
            }
        });
        Ok(CountingSubscriber {
            addr,
            tally,
            accept,
        })
    }

    pub fn count(&self) -> u64 {
        self.tally.received.load(Ordering::Relaxed)
    }

    /// Notes the moment `expected` requests will have arrived in all; call
    /// it before the requests are sent.
    pub fn expect(&self, expected: u64) {
        *self.tally.reached.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.tally.target.store(expected, Ordering::SeqCst);
    }

    /// Waits for the count given to [`CountingSubscriber::expect`]; when the
    /// last request came.
    pub async fn wait(&self, timeout: Duration) -> anyhow::Result<Instant> {
        let tally = &self.tally;
        let expected = tally.target.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = tally.arrived.notified();
            if let Some(error) = tally.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
                bail!("the subscriber got a request it could not read: {error}");
            }
            if self.count() >= expected {
                let reached = *tally.reached.lock().unwrap_or_else(|e| e.into_inner());
                return Ok(reached.unwrap_or_else(Instant::now));
            }
            if Instant::now() > deadline {
                bail!(
                    "the subscriber received {} of {expected} events",
                    self.count()
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), arrived).await;
        }
    }
}

impl Tally {
    fn count_one(&self) {
        let received = self.received.fetch_add(1, Ordering::Relaxed) + 1;
        if received == self.target.load(Ordering::Relaxed) {
            *self.reached.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.arrived.notify_waiters();
        }
    }

    fn fail(&self, error: String) {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
        self.arrived.notify_waiters();
    }
}

impl Drop for CountingSubscriber {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Answers each request of one connection with 202 until the peer closes it.
async fn answer(mut stream: TcpStream, tally: &Tally) -> anyhow::Result<()> {
    let mut buffer = BytesMut::with_capacity(8192);
    loop {
        let mut answered = 0;
        while let Some(used) = request_length(&buffer)? {
            if buffer.len() < used {
                break;
            }
            buffer.advance(used);
            tally.count_one();
            answered += 1;
        }
        if answered > 0 {
            stream.write_all(&ACCEPTED.repeat(answered)).await?;
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
    }
}

/// The length of the request at the start of `buffer` (head and body), once
/// its head is complete.
fn request_length(buffer: &[u8]) -> anyhow::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buffer)? {
        httparse::Status::Complete(head) => Ok(Some(head + content_length(request.headers)?)),
        httparse::Status::Partial => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_subscriber_answers_every_request_and_counts_them() {
        let subscriber = CountingSubscriber::start().await.unwrap();
        let mut poster = Poster::connect(subscriber.addr).await.unwrap();
        let head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n";
        subscriber.expect(3);
        for _ in 0..3 {
            let answer = poster.send(head, b"hello").await.unwrap();
            assert_eq!(answer.status, 202);
            assert!(answer.body.is_empty());
        }
        subscriber.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(subscriber.count(), 3);
    }

    #[tokio::test]
    async fn the_poster_reads_a_body_that_comes_in_pieces() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = stream.read(&mut request).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 6\r\n\r\nbad")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(b" id").await.unwrap();
        });
        let mut poster = Poster::connect(addr).await.unwrap();
        let answer = poster
            .send(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", b"")
            .await
            .unwrap();
        assert_eq!(answer.status, 400);
        assert_eq!(&answer.body[..], b"bad id");
    }

    #[tokio::test]
    async fn a_chunked_request_fails_the_wait() {
        let subscriber = CountingSubscriber::start().await.unwrap();
        let mut stream = TcpStream::connect(subscriber.addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            .await
            .unwrap();
        subscriber.expect(1);
        let error = subscriber.wait(Duration::from_secs(5)).await.unwrap_err();
        assert!(format!("{error:#}").contains("chunked"), "{error:#}");
    }
}
