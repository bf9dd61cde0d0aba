//! One instance: spawn the child, wait until it is ready, watch it, and stop
//! it (drain, SIGTERM, SIGKILL) when asked.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ProcessConfig;
use super::logs::{self, Output};
use super::readiness;
use crate::serving::runtime::{InstanceLoad, Workload};

/// What an instance tells the reconciler.
#[derive(Debug)]
pub(super) enum Event {
    /// Its readiness probe passed.
    Ready { ordinal: u64, address: SocketAddr },
    /// Its process exited (or never started) without being asked to.
    Exited {
        ordinal: u64,
        failure: String,
        uptime: Duration,
    },
    /// It stopped as asked.
    Stopped { ordinal: u64 },
}

/// Everything one instance needs to run.
pub(super) struct Instance {
    pub ordinal: u64,
    /// `<revision>-<ordinal>`, as in logs and endpoints.
    pub id: Arc<str>,
    pub workload: Arc<Workload>,
    pub config: ProcessConfig,
    pub load: Arc<InstanceLoad>,
}

/// Runs the instance until it exits or is stopped, then reports how it ended.
/// The report is sent even if this task panics or is cancelled, so the
/// reconciler never waits for an instance that is gone.
pub(super) async fn run(
    instance: Instance,
    stop: oneshot::Receiver<()>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut report = FinalReport {
        ordinal: instance.ordinal,
        events: events.clone(),
        event: None,
    };
    report.event = Some(lifecycle(&instance, stop, &events).await);
}

struct FinalReport {
    ordinal: u64,
    events: mpsc::UnboundedSender<Event>,
    event: Option<Event>,
}

impl Drop for FinalReport {
    fn drop(&mut self) {
        let event = self.event.take().unwrap_or(Event::Stopped {
            ordinal: self.ordinal,
        });
        let _ = self.events.send(event);
    }
}

async fn lifecycle(
    instance: &Instance,
    mut stop: oneshot::Receiver<()>,
    events: &mpsc::UnboundedSender<Event>,
) -> Event {
    let spawned = Instant::now();
    let mut running = match start(instance).await {
        Ok(running) => running,
        Err(failure) => return instance.exited(failure, spawned),
    };
    let probe = &instance.workload.container.readiness;
    tokio::select! {
        _ = &mut stop => return instance.stop(running).await,
        status = running.child.wait() => return instance.crashed(status, running, spawned).await,
        () = readiness::wait_until_ready(probe, running.port) => {}
    }
    let revision = instance.workload.revision.clone();
    metrics::histogram!("pilotlight_instance_start_seconds", "revision" => revision)
        .record(spawned.elapsed().as_secs_f64());
    tracing::debug!(instance = %instance.id, port = running.port, after = ?spawned.elapsed(), "instance is ready");
    let _ = events.send(Event::Ready {
        ordinal: instance.ordinal,
        address: SocketAddr::from((Ipv4Addr::LOCALHOST, running.port)),
    });
    tokio::select! {
        _ = &mut stop => instance.stop(running).await,
        status = running.child.wait() => instance.crashed(status, running, spawned).await,
    }
}

/// A spawned child and what watches it.
struct Running {
    child: Child,
    /// Also its process group id. None only if it was already reaped.
    pid: Option<u32>,
    port: u16,
    output: Output,
}

/// Picks a port, spawns the child and starts piping its output. Errors are
/// already worded as the deployment's `last_failure`.
async fn start(instance: &Instance) -> Result<Running, String> {
    let port =
        free_port().map_err(|e| format!("instance {} cannot get a free port: {e}", instance.id))?;
    let command = command(&instance.workload, port)
        .map_err(|e| format!("instance {} cannot start: {e}", instance.id))?;
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child = spawn(command)
        .await
        .map_err(|e| format!("instance {} cannot start '{program}': {e}", instance.id))?;
    let output = logs::pipe(&mut child, &instance.workload, &instance.id);
    Ok(Running {
        pid: child.id(),
        child,
        port,
        output,
    })
}

impl Instance {
    fn exited(&self, failure: String, spawned: Instant) -> Event {
        Event::Exited {
            ordinal: self.ordinal,
            failure,
            uptime: spawned.elapsed(),
        }
    }

    /// The child exited on its own: word why, with its last stderr lines.
    async fn crashed(
        &self,
        status: io::Result<ExitStatus>,
        running: Running,
        spawned: Instant,
    ) -> Event {
        let uptime = spawned.elapsed();
        // Whatever the child left in its process group goes too.
        if let Some(pid) = running.pid {
            signal_group(pid, libc::SIGKILL);
        }
        let how = match status {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let tail = running.output.finish().await;
        let mut failure = format!("instance {} {how}", self.id);
        if !tail.is_empty() {
            failure.push_str(": ");
            failure.push_str(&tail.join("\n"));
        }
        Event::Exited {
            ordinal: self.ordinal,
            failure,
            uptime,
        }
    }

    /// Drains the instance (up to the revision's timeout), then SIGTERM, and
    /// SIGKILL once the grace period is over.
    async fn stop(&self, mut running: Running) -> Event {
        let child = &mut running.child;
        let drained = tokio::time::timeout(self.workload.drain_timeout, self.load.wait_idle());
        tokio::select! {
            _ = drained => {}
            _ = child.wait() => {}
        }
        if let Some(pid) = running.pid {
            terminate(child, pid, self.config.stop_grace).await;
        }
        // Covers a child whose pid was unknown; a no-op once it has exited.
        let _ = child.start_kill();
        let _ = child.wait().await;
        running.output.finish().await;
        tracing::debug!(instance = %self.id, "instance stopped");
        Event::Stopped {
            ordinal: self.ordinal,
        }
    }
}

/// SIGTERM to the whole process group, then SIGKILL after `grace`. The group
/// is killed at the end even if the leader exited, so no helper it started
/// lingers.
async fn terminate(child: &mut Child, pid: u32, grace: Duration) {
    signal_group(pid, libc::SIGTERM);
    let _ = tokio::time::timeout(grace, child.wait()).await;
    signal_group(pid, libc::SIGKILL);
}

/// Sends `signal` to the process group led by `pid` (each child leads its
/// own). ESRCH (already gone) is expected and ignored.
pub(super) fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(pid, signal);
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => format!("was killed by signal {signal}{}", signal_name(signal)),
        None => format!("exited ({status})"),
    }
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGKILL => " (SIGKILL, often the out-of-memory killer)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGINT => " (SIGINT)",
        _ => "",
    }
}

/// A port that was free a moment ago: bind port 0 and let it go. Another
/// process could take it in between; the instance then crashes and restarts
/// on a new port.
fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The command line, environment and safety nets of one child.
fn command(workload: &Workload, port: u16) -> io::Result<Command> {
    let container = &workload.container;
    let Some((program, rest)) = container.command.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no command"));
    };
    // Examples say `pilotlight hello`: run this very binary, so they work
    // before pilotlight is installed on PATH.
    let mut command = if program == "pilotlight" {
        Command::new(std::env::current_exe()?)
    } else {
        Command::new(program)
    };
    command
        .args(rest)
        .args(&container.args)
        // Inherits pilotlight's environment (PATH, HOME...), then the
        // container's, then what Knative sets, which the container cannot
        // override.
        .envs(container.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", port.to_string())
        .env("K_SERVICE", &workload.service.name)
        .env("K_CONFIGURATION", &workload.service.name)
        .env("K_REVISION", &workload.revision)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group: signals reach its helpers too, and a Ctrl-C at the
        // terminal reaches only pilotlight, which then stops it gracefully.
        .process_group(0);
    if let Some(dir) = &container.working_dir {
        command.current_dir(dir);
    }
    die_with_parent(&mut command);
    Ok(command)
}

/// Has the kernel SIGKILL the child when pilotlight dies, even by SIGKILL.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe, as pre_exec needs.
        unsafe {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Pilotlight died between fork and prctl: the signal will never
            // come, so do not start at all.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls and allocates nothing.
    unsafe {
        command.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Spawns on the spawner thread.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process. Tokio's blocking-pool threads exit when idle and a test's
/// runtime threads end with the test, so children are forked from one thread
/// that lives as long as the process. Forking takes well under a millisecond,
/// so one thread does not hold back concurrent starts.
async fn spawn(command: Command) -> io::Result<Child> {
    let spawner = spawner().map_err(|e| io::Error::other(e.clone()))?;
    let (reply, answer) = oneshot::channel();
    let request = SpawnRequest {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    spawner
        .send(request)
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?
}

struct SpawnRequest {
    command: Command,
    /// The child's pipes and exit watcher belong to the caller's runtime.
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

fn spawner() -> Result<&'static std_mpsc::Sender<SpawnRequest>, &'static String> {
    static SPAWNER: OnceLock<Result<std_mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (requests, incoming) = std_mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("pilotlight-spawner".into())
                .spawn(move || serve_spawns(incoming))
                .map(|_| requests)
                .map_err(|e| format!("cannot start the process spawner thread: {e}"))
        })
        .as_ref()
}

fn serve_spawns(incoming: std_mpsc::Receiver<SpawnRequest>) {
    for mut request in incoming {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _context = request.runtime.enter();
            request.command.spawn()
        }))
        .unwrap_or_else(|_| Err(io::Error::other("spawning panicked")));
        // If the caller is gone, the child is dropped here and killed.
        let _ = request.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn exit_descriptions_name_the_code_or_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "was killed by signal 9 (SIGKILL, often the out-of-memory killer)"
        );
    }

    #[test]
    fn free_ports_can_be_bound() {
        let port = free_port().expect("a free port");
        assert_ne!(port, 0);
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("still free");
    }
}
