//! Kills the process groups of pilotlight's children when pilotlight dies,
//! however it dies (SIGKILL and the out-of-memory killer included).
//!
//! The guardian is a `/bin/sh` started once, in a process group of its own,
//! whose standard input is a pipe from pilotlight. pilotlight writes
//! `+PGID STARTTIME` when it starts a child and `-PGID` once it has killed
//! the child's group. When the input ends — pilotlight exited, or was killed
//! and the kernel closed its end of the pipe — the guardian SIGKILLs every
//! group still listed whose leader is the process that was listed (same
//! start time: a pid the system gave to another process since is left
//! alone), then exits.
//!
//! Why not `PR_SET_PDEATHSIG`, which the kernel delivers itself: only the
//! child can ask for it, in a `pre_exec` hook, and a hook makes the standard
//! library fork pilotlight (copying its page tables, then tearing them down
//! at exec) instead of using `posix_spawn` (vfork). At pilotlight's size
//! that costs 1.9 ms against 0.17 ms per spawn (`pilotlight-bench spawn`),
//! which was the largest part of a cold start. The hook stays as the
//! fallback when no guardian runs.

use std::io::Write as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use std::os::unix::process::CommandExt as _;

/// The guardian's program: reads the list from its input, kills at its end.
const SCRIPT: &str = r#"groups=""
while read -r op group started; do
  case "$op" in
    +) groups="$groups $group:$started" ;;
    -) kept=""
       for entry in $groups; do
         [ "${entry%%:*}" = "$group" ] || kept="$kept $entry"
       done
       groups="$kept" ;;
  esac
done
for entry in $groups; do
  group="${entry%%:*}"
  stat=""
  read -r stat < "/proc/$group/stat" 2>/dev/null || continue
  set -- ${stat##*\) }
  shift 19
  [ "$1" = "${entry#*:}" ] && kill -KILL "-$group" 2>/dev/null
done
"#;

pub(crate) struct Guardian {
    input: Mutex<ChildStdin>,
    /// Kept, not waited for: it ends when pilotlight does.
    _process: Child,
    /// A write failed: the guardian is gone, and children are started with
    /// the parent-death hook instead.
    broken: AtomicBool,
}

impl Guardian {
    /// The process's guardian, started on first use; None when it cannot
    /// run (no `/bin/sh`) or has gone.
    pub(crate) fn get() -> Option<&'static Guardian> {
        static GUARDIAN: OnceLock<Option<Guardian>> = OnceLock::new();
        let guardian = GUARDIAN.get_or_init(|| match Guardian::start() {
            Ok(guardian) => Some(guardian),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the guardian that stops instances if pilotlight dies (/bin/sh); instances are started with a parent-death signal instead, which is slower");
                None
            }
        });
        guardian
            .as_ref()
            .filter(|g| !g.broken.load(Ordering::Relaxed))
    }

    fn start() -> std::io::Result<Guardian> {
        let mut process = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a Ctrl-C at the terminal reaches pilotlight,
            // which stops its instances itself, and not the guardian.
            .process_group(0)
            .spawn()?;
        let input = process
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the guardian has no input pipe"))?;
        Ok(Guardian {
            input: Mutex::new(input),
            _process: process,
            broken: AtomicBool::new(false),
        })
    }

    /// Lists the group led by `pid` (a child just started in a group of its
    /// own); says whether the guardian took it.
    pub(crate) fn watch(&self, pid: u32) -> bool {
        let Some(started) = start_time(pid) else {
            // Already gone: nothing to watch.
            return true;
        };
        self.send(&format!("+ {pid} {started}\n"))
    }

    /// Takes the group led by `pid` off the list (it was killed).
    pub(crate) fn forget(&self, pid: u32) {
        self.send(&format!("- {pid}\n"));
    }

    fn send(&self, line: &str) -> bool {
        let mut input = self.input.lock().unwrap_or_else(|e| e.into_inner());
        // One short write to a pipe: the guardian reads as fast as it comes.
        if let Err(e) = input.write_all(line.as_bytes()) {
            if !self.broken.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "the guardian that stops instances if pilotlight dies has gone; instances are started with a parent-death signal from now on");
            }
            return false;
        }
        true
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, in clock
/// ticks since boot): with the pid, it names one process for good.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_of_this_process_is_read() {
        let own = start_time(std::process::id()).expect("own stat");
        assert!(own > 0);
        assert_eq!(start_time(std::process::id()), Some(own), "stable");
        assert_eq!(start_time(u32::MAX), None);
    }

    /// The guardian's script, run by a shell that then loses its input as
    /// when pilotlight dies: it kills a listed group, spares a forgotten one
    /// and one whose leader is another process than the one listed.
    #[test]
    fn at_the_end_of_its_input_the_guardian_kills_what_is_still_listed() {
        let spawn_sleep = || {
            Command::new("sleep")
                .arg("600")
                .process_group(0)
                .spawn()
                .expect("sleep")
        };
        let (mut listed, mut forgotten, mut other) = (spawn_sleep(), spawn_sleep(), spawn_sleep());
        let mut guardian = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut input = guardian.stdin.take().expect("stdin");
        let line = |child: &Child| {
            format!(
                "+ {} {}\n",
                child.id(),
                start_time(child.id()).expect("alive")
            )
        };
        let mut lines = line(&listed) + &line(&forgotten);
        lines += &format!("- {}\n", forgotten.id());
        // Listed with another start time: as if its pid had been reused.
        lines += &format!("+ {} 1\n", other.id());
        input.write_all(lines.as_bytes()).expect("write");
        drop(input);
        guardian.wait().expect("the guardian ends with its input");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = listed.try_wait().expect("try_wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = listed.kill();
                panic!("the listed group was not killed");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        for spared in [&mut forgotten, &mut other] {
            assert!(spared.try_wait().expect("try_wait").is_none(), "spared");
            let _ = spared.kill();
            let _ = spared.wait();
        }
    }
}
