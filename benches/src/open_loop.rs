//! The open-loop load generator of the latency phases, as wrk2 drives a
//! server: sends are due on a fixed schedule (the k-th at `start + k / rate`)
//! whatever the server does, and every latency is measured from the time a
//! send was *due*, not from when it left. A server that stalls therefore
//! shows its stall in every send the stall delayed, instead of the generator
//! politely waiting and recording only the one slow answer (coordinated
//! omission).
//!
//! - One thread of its own with a current-thread runtime, pinned to a core of
//!   its own when the machine has two or more ([`crate::pinning`]); the rest
//!   of the process is pinned to the other cores for the phase.
//! - Send times come from a `timerfd` (nanosecond resolution, in the
//!   runtime's epoll) rather than tokio's timer wheel, whose 1 ms ticks
//!   would make sends up to 1 ms late by construction.
//! - A pool of keep-alive connections, one request in flight on each: a due
//!   send takes the first free one, and waits when none is free (the wait
//!   counts in its latency).
//! - Two lateness figures come with the latencies: how late the generator
//!   woke for a send (its own lateness: timer, scheduling; the floor under
//!   every latency it reports), and how late sends left (that plus waiting
//!   for a free connection, which is the server's doing).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::load::{self, Load, Tally, Window, connect_with, new_histogram, record};
use crate::pinning::{self, Split};

/// Longest wait for a free connection before the phase is declared broken
/// (the server stopped answering).
const NO_FREE_CONNECTION: Duration = Duration::from_secs(30);

/// What an open-loop phase saw.
pub(crate) struct OpenLoop {
    /// Answers; latency measured from each send's due time.
    pub(crate) tally: Tally,
    /// How late the generator woke for each measured send, in ns.
    pub(crate) woke_late: Histogram<u64>,
    /// How late each measured send left (woke late, then waited for a free
    /// connection), in ns.
    pub(crate) sent_late: Histogram<u64>,
    /// Sends that found every connection busy.
    pub(crate) waited_for_connection: u64,
}

impl OpenLoop {
    fn new(load: &Load) -> anyhow::Result<Self> {
        Ok(OpenLoop {
            tally: Tally::new(load.expected())?,
            woke_late: new_histogram()?,
            sent_late: new_histogram()?,
            waited_for_connection: 0,
        })
    }
}

/// Runs `load` (which must have a rate) open loop over `window`, on a thread
/// of its own; with `split`, that thread on the generator's cores and every
/// other thread of the process on the server's until the phase ends.
pub(crate) async fn run_open_loop(
    load: Load,
    window: Window,
    split: Option<&Split>,
) -> anyhow::Result<OpenLoop> {
    let rate = load
        .rate
        .filter(|r| *r > 0.0)
        .context("an open-loop phase needs a positive rate")?;
    let (started, tid) = tokio::sync::oneshot::channel();
    let (finished, outcome) = tokio::sync::oneshot::channel();
    let generator_cores = split.map(|s| s.generator.clone());
    std::thread::Builder::new()
        .name("bench-generator".into())
        .spawn(move || {
            let pinned = generator_cores.map_or(Ok(()), |cores| pinning::pin_thread(0, &cores));
            let _ = started.send((pinning::current_tid(), pinned));
            let _ = finished.send(generate_on_this_thread(load, window, rate));
        })
        .context("starting the load generator's thread")?;
    let (tid, pinned) = tid.await.context("the load generator's thread ended")?;
    pinned.context("pinning the load generator's thread")?;
    let _server_pinned = match split {
        Some(split) => Some(
            split
                .pin_server_threads(tid)
                .context("pinning the server's threads")?,
        ),
        None => None,
    };
    outcome
        .await
        .context("the load generator's thread panicked")?
}

fn generate_on_this_thread(load: Load, window: Window, rate: f64) -> anyhow::Result<OpenLoop> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the load generator's runtime")?;
    let local = tokio::task::LocalSet::new();
    runtime.block_on(local.run_until(generate(Arc::new(load), window, rate)))
}

/// A connection and its index (part of each event's id).
type Connection = (usize, SendRequest<Full<Bytes>>);

async fn generate(load: Arc<Load>, window: Window, rate: f64) -> anyhow::Result<OpenLoop> {
    let seen = Rc::new(RefCell::new(OpenLoop::new(&load)?));
    let (free, mut next_free) = mpsc::unbounded_channel::<Connection>();
    for index in 0..load.connections {
        let sender = connect_with(load.addr, load.tls.as_ref()).await?;
        let _ = free.send((index, sender));
    }
    let timer = PreciseTimer::new().context("creating a timerfd")?;
    let mut exchanges = tokio::task::JoinSet::new();
    for seq in 0u64.. {
        let due = window.start + Duration::from_secs_f64(seq as f64 / rate);
        if due >= window.end {
            break;
        }
        timer
            .sleep_until(due)
            .await
            .context("waiting on the timerfd")?;
        let woke = Instant::now();
        let connection = match next_free.try_recv() {
            Ok(connection) => connection,
            Err(_) => {
                seen.borrow_mut().waited_for_connection += u64::from(window.counts(due));
                tokio::time::timeout(NO_FREE_CONNECTION, next_free.recv())
                    .await
                    .ok()
                    .flatten()
                    .with_context(|| {
                        format!("no connection came free for {NO_FREE_CONNECTION:?}: the server stopped answering")
                    })?
            }
        };
        let sent = Instant::now();
        if window.counts(due) {
            let mut seen = seen.borrow_mut();
            record(&mut seen.woke_late, nanos(woke.duration_since(due)));
            record(&mut seen.sent_late, nanos(sent.duration_since(due)));
        }
        exchanges.spawn_local(exchange(
            load.clone(),
            connection,
            seq,
            due,
            window,
            seen.clone(),
            free.clone(),
        ));
        while exchanges.try_join_next().is_some() {}
    }
    while exchanges.join_next().await.is_some() {}
    drop(exchanges);
    Rc::into_inner(seen)
        .map(RefCell::into_inner)
        .context("an exchange outlived the phase")
}

/// One request on a free connection, stamped and measured from its due time;
/// the connection goes back to the pool, unless it failed.
async fn exchange(
    load: Arc<Load>,
    (index, mut sender): Connection,
    seq: u64,
    due: Instant,
    window: Window,
    seen: Rc<RefCell<OpenLoop>>,
    free: mpsc::UnboundedSender<Connection>,
) {
    let answered = async {
        let request = load.request(index, seq, due)?;
        let (status, _) = load::exchange(&mut sender, request, "an event").await?;
        anyhow::Ok(status)
    }
    .await;
    let done = Instant::now();
    match answered {
        Ok(status) => {
            seen.borrow_mut()
                .tally
                .record(status, done.duration_since(due), window.counts(due));
            let _ = free.send((index, sender));
        }
        Err(e) => seen.borrow_mut().tally.transport_error(format!("{e:#}")),
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A one-shot `timerfd` on CLOCK_MONOTONIC (the clock of [`Instant`] on
/// Linux), waited on through the runtime's epoll.
struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the timer owns `fd`, which stays open (and the same) for
        // as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(PreciseTimer { fd })
    }

    /// Returns at `due` (at once when it passed).
    async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        let Some(wait) = due
            .checked_duration_since(Instant::now())
            .filter(|w| !w.is_zero())
        else {
            return Ok(());
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(wait.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(wait.subsec_nanos()),
            },
        };
        // SAFETY: `spec` is initialised; the old value is not asked for.
        let set =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 the call owns.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&raw mut expirations).cast::<libc::c_void>(),
                    std::mem::size_of::<u64>(),
                )
            };
            if read == 8 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(error);
            }
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timerfd wakes close to the asked time, well under tokio's 1 ms
    /// tick (generous bounds: a shared machine delays wake-ups).
    #[tokio::test(flavor = "current_thread")]
    async fn precise_timer_wakes_near_its_due_time() {
        let timer = PreciseTimer::new().expect("timerfd");
        let mut late = Vec::new();
        for _ in 0..50 {
            let due = Instant::now() + Duration::from_micros(300);
            timer.sleep_until(due).await.expect("sleep");
            let now = Instant::now();
            assert!(now >= due, "woke before its due time");
            late.push(now.duration_since(due));
        }
        late.sort();
        assert!(
            late[late.len() / 2] < Duration::from_millis(1),
            "median lateness {:?}",
            late[late.len() / 2]
        );
    }
}
