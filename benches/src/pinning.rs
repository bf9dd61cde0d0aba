//! CPU pinning for the latency phases: the load generator's thread on a core
//! of its own, every other thread of the process (pilotlight's runtime, the
//! in-process subscriber, the raw server) on the remaining cores, so the
//! generator's send times are not at the mercy of the server's work on the
//! same core. Linux `sched_setaffinity` through libc; elsewhere, or with a
//! single allowed core, nothing is pinned and the report says so.

use std::io;

/// The cores this process may run on, as the kernel reports them.
pub(crate) fn allowed_cores() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is valid for writes of its own size; 0 is this thread.
    let status =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Restricts thread `tid` (0: the calling thread) to `cores`.
pub(crate) fn pin_thread(tid: libc::pid_t, cores: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed_cores`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cores {
        // SAFETY: CPU_SET ignores indexes at or past CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the set is initialised and of the size passed.
    let status =
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's kernel id.
pub(crate) fn current_tid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Which cores the generator gets and which the rest of the process.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    pub(crate) generator: Vec<usize>,
    pub(crate) server: Vec<usize>,
    /// Every core allowed at the start, restored after the phase.
    pub(crate) all: Vec<usize>,
}

impl Split {
    /// The last allowed core for the generator, the others for the server;
    /// `None` when fewer than two cores are allowed (nothing to separate).
    pub(crate) fn plan() -> Option<Split> {
        let all = allowed_cores().ok()?;
        let (&last, rest) = all.split_last()?;
        if rest.is_empty() {
            return None;
        }
        Some(Split {
            generator: vec![last],
            server: rest.to_vec(),
            all,
        })
    }

    /// How the report says it.
    pub(crate) fn describe(&self) -> String {
        format!(
            "generator thread on core {}, the rest of the process (pilotlight, subscriber, raw server) on {}",
            list(&self.generator),
            list(&self.server)
        )
    }

    /// Pins every thread of the process but `generator_tid` to the server's
    /// cores; threads started later inherit it from the thread starting them.
    /// Dropping the returned guard gives every thread all cores again.
    pub(crate) fn pin_server_threads(&self, generator_tid: libc::pid_t) -> io::Result<Pinned> {
        for tid in process_threads()? {
            if tid == generator_tid {
                continue;
            }
            // A thread may end between listing and pinning: not an error.
            match pin_thread(tid, &self.server) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                other => other?,
            }
        }
        Ok(Pinned {
            all: self.all.clone(),
        })
    }
}

/// Undoes [`Split::pin_server_threads`] when dropped.
pub(crate) struct Pinned {
    all: Vec<usize>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let Ok(threads) = process_threads() else {
            return;
        };
        for tid in threads {
            let _ = pin_thread(tid, &self.all);
        }
    }
}

fn process_threads() -> io::Result<Vec<libc::pid_t>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            threads.push(tid);
        }
    }
    Ok(threads)
}

fn list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
