//! Starts an instance's processes (the serving container's command with a
//! free `PORT`, then each sidecar's), and stops them: SIGTERM to each
//! process group, SIGKILL after the grace period.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::guardian::Guardian;
use crate::serving::runtime::config::{self, ConfigObjects};
use crate::serving::runtime::local::output::{self, Output, Stream};
use crate::serving::runtime::local::{Launched, Launcher, LocalWorkload, check_config, free_port};
use crate::serving::runtime::{ContainerSpec, RuntimeCondition};

/// How long a crash report waits for the last lines still in the pipes.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

pub(super) struct ProcessLauncher {
    workload: Arc<LocalWorkload>,
    objects: watch::Receiver<Arc<ConfigObjects>>,
}

impl ProcessLauncher {
    pub(super) fn new(
        workload: Arc<LocalWorkload>,
        objects: watch::Receiver<Arc<ConfigObjects>>,
    ) -> Self {
        // Started now rather than by the first cold start.
        let _ = Guardian::get();
        ProcessLauncher { workload, objects }
    }
}

#[async_trait::async_trait]
impl Launcher for ProcessLauncher {
    fn check(&self) -> Result<(), RuntimeCondition> {
        check_config(&self.workload, &self.objects)
    }

    async fn launch(&self, instance: &Arc<str>) -> Result<Box<dyn Launched>, String> {
        // A daemon's pod has no serving port: it gets no PORT.
        let port = match self.workload.pod.serving_container().port {
            Some(_) => Some(
                free_port()
                    .map_err(|e| format!("instance {instance} cannot get a free port: {e}"))?,
            ),
            None => None,
        };
        let objects = self.objects.borrow().clone();
        let pod = &self.workload.pod;
        let mut processes = Vec::with_capacity(pod.containers.len());
        // The serving container first: sidecars usually wait for it.
        let order = std::iter::once(pod.serving)
            .chain((0..pod.containers.len()).filter(|i| *i != pod.serving));
        for index in order {
            match self.spawn_container(instance, index, port, &objects).await {
                Ok(process) => processes.push(process),
                Err(failure) => {
                    // What already runs goes: an instance runs whole or not at all.
                    for process in &processes {
                        if let Some(pid) = process.pid {
                            signal_group(pid, libc::SIGKILL);
                        }
                    }
                    return Err(failure);
                }
            }
        }
        Ok(Box::new(LaunchedProcesses {
            instance: instance.clone(),
            port,
            processes,
        }))
    }
}

impl ProcessLauncher {
    /// Spawns the process of `containers[index]`; `port` is the serving
    /// container's, when it has one.
    async fn spawn_container(
        &self,
        instance: &Arc<str>,
        index: usize,
        port: Option<u16>,
        objects: &ConfigObjects,
    ) -> Result<Process, String> {
        let workload = &self.workload;
        let container = &workload.pod.containers[index];
        let serving = index == workload.pod.serving;
        let env = config::environment(container, objects, &workload.service.namespace, instance)
            .map_err(|e| format!("instance {instance} cannot start: {e}"))?;
        let command = command(workload, container, env, port.filter(|_| serving))
            .map_err(|e| format!("instance {instance} cannot start: {e}"))?;
        let program = command
            .as_std()
            .get_program()
            .to_string_lossy()
            .into_owned();
        let mut child = spawn(command)
            .await
            .map_err(|e| format!("instance {instance} cannot start '{program}': {e}"))?;
        let sidecar = (!serving).then_some(container.name.as_str());
        let output = Output::new(workload, instance, sidecar);
        let readers = pipe(&mut child, &output);
        Ok(Process {
            pid: child.id(),
            child,
            output,
            readers,
            sidecar: sidecar.map(str::to_owned),
        })
    }
}

/// One spawned child and what reads its output.
struct Process {
    child: Child,
    /// Also its process group id. None only if it was already reaped.
    pid: Option<u32>,
    output: Output,
    readers: Vec<JoinHandle<()>>,
    /// The container's name when it is a sidecar.
    sidecar: Option<String>,
}

impl Process {
    /// Waits (briefly) until its pipes are read to the end.
    async fn drain_output(&mut self) {
        let readers = futures::future::join_all(self.readers.drain(..));
        let _ = tokio::time::timeout(DRAIN_WAIT, readers).await;
    }
}

struct LaunchedProcesses {
    instance: Arc<str>,
    /// The serving port; None for a daemon, which is never sent to.
    port: Option<u16>,
    /// The serving container's process first.
    processes: Vec<Process>,
}

#[async_trait::async_trait]
impl Launched for LaunchedProcesses {
    fn address(&self, port: Option<u16>) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port.or(self.port).unwrap_or(0)))
    }

    async fn exited(&mut self) -> String {
        let waits = self.processes.iter_mut().map(|p| Box::pin(p.child.wait()));
        let (status, index, _) = futures::future::select_all(waits).await;
        // The rest of the instance goes with it, as a pod's containers do.
        for process in &self.processes {
            if let Some(pid) = process.pid {
                signal_group(pid, libc::SIGKILL);
            }
        }
        let process = &mut self.processes[index];
        let how = match status {
            Ok(status) => describe_exit(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        process.drain_output().await;
        let mut failure = match &process.sidecar {
            Some(name) => format!("instance {}: container {name} {how}", self.instance),
            None => format!("instance {} {how}", self.instance),
        };
        let tail = process.output.tail();
        if !tail.is_empty() {
            failure.push_str(": ");
            failure.push_str(&tail.join("\n"));
        }
        failure
    }

    async fn stop(mut self: Box<Self>, grace: Duration) {
        for process in &self.processes {
            if let Some(pid) = process.pid {
                signal_group(pid, libc::SIGTERM);
            }
        }
        let exits = self.processes.iter_mut().map(|p| p.child.wait());
        let _ = tokio::time::timeout(grace, futures::future::join_all(exits)).await;
        // The groups are killed at the end even if their leaders exited, so
        // no helper they started lingers.
        for process in &mut self.processes {
            if let Some(pid) = process.pid {
                signal_group(pid, libc::SIGKILL);
            }
            // Covers a child whose pid was unknown; a no-op once it exited.
            let _ = process.child.start_kill();
            let _ = process.child.wait().await;
            process.drain_output().await;
        }
    }
}

/// Starts reading the child's stdout and stderr (both must be piped).
pub(crate) fn pipe(child: &mut Child, output: &Output) -> Vec<JoinHandle<()>> {
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(output::forward(
            stdout,
            output.lines(Stream::Stdout),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(output::forward(
            stderr,
            output.lines(Stream::Stderr),
        )));
    }
    readers
}

/// Sends `signal` to the process group led by `pid` (each child leads its
/// own). ESRCH (already gone) is expected and ignored. A group killed is
/// off the guardian's list.
pub(crate) fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(group) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(group, signal);
    }
    if signal == libc::SIGKILL
        && let Some(guardian) = Guardian::get()
    {
        guardian.forget(pid);
    }
}

pub(crate) fn describe_exit(status: ExitStatus) -> String {
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

/// The command line, environment and safety nets of one child. `port` is
/// set for the serving container.
pub(crate) fn command(
    workload: &LocalWorkload,
    container: &ContainerSpec,
    env: Vec<(String, String)>,
    port: Option<u16>,
) -> io::Result<Command> {
    let (command_line, args) = config::command_line(container, &env);
    let Some((program, rest)) = command_line.split_first() else {
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
        .args(args)
        // Inherits pilotlight's environment (PATH, HOME...), then the
        // container's, then what Knative sets, which the container cannot
        // override.
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group: signals reach its helpers too, and a Ctrl-C at the
        // terminal reaches only pilotlight, which then stops it gracefully.
        .process_group(0);
    if let Some(port) = port {
        command
            .env("PORT", port.to_string())
            .env("K_SERVICE", &workload.service.name)
            .env("K_CONFIGURATION", &workload.service.name)
            .env("K_REVISION", &workload.revision);
    }
    if let Some(dir) = &container.working_dir {
        command.current_dir(dir);
    }
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

/// Spawns a child that dies with pilotlight: listed with the
/// [`Guardian`] (a `posix_spawn`, fast), or, without one, with the
/// parent-death hook on the spawner thread (a fork).
pub(crate) async fn spawn(mut command: Command) -> io::Result<Child> {
    if let Some(guardian) = Guardian::get() {
        let child = command.spawn()?;
        if child.id().is_none_or(|pid| guardian.watch(pid)) {
            return Ok(child);
        }
        // The guardian went away as this child started: start it again
        // with the hook (the first is killed as it is dropped).
    }
    die_with_parent(&mut command);
    spawn_on_spawner_thread(command).await
}

/// Spawns on the spawner thread.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
/// the process. Tokio's blocking-pool threads exit when idle and a test's
/// runtime threads end with the test, so children are forked from one thread
/// that lives as long as the process. Forking takes well under a millisecond,
/// so one thread does not hold back concurrent starts.
async fn spawn_on_spawner_thread(command: Command) -> io::Result<Child> {
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
