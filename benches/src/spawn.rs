//! Spawn: what the fork that a `pre_exec` hook forces costs a process of
//! pilotlight's size, against the `posix_spawn` (vfork) that
//! `std::process::Command` uses without one. No pilotlight here: the
//! figure explains the `launch` part of the serving suite's cold start,
//! where the process runtime's parent-death hook (PR_SET_PDEATHSIG, which
//! only the child can set) is such a hook.
//!
//! The bench first grows itself to `--touched-mib` of written heap (an
//! idle `pilotlight run` holds about 8 MiB of anonymous memory, more under
//! load), then spawns `/bin/true` with its output piped, as the runtime
//! does, timing `spawn()` (which returns once the child has exec'd). The
//! two ways alternate in blocks of 20 so a noisy machine moves both alike.
//!
//! `cargo run --release -p pilotlight-bench -- spawn`

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::load::{new_histogram, record};
use crate::report::quantile_ms;

const BLOCK: usize = 20;

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// Spawns per way.
    #[arg(long, default_value_t = 400)]
    pub spawns: usize,
    /// Heap written before spawning, in MiB (repeatable: one run each).
    #[arg(long, value_delimiter = ',', default_values_t = [8, 32, 128])]
    pub touched_mib: Vec<usize>,
    /// The program spawned.
    #[arg(long, default_value = "/bin/true")]
    pub program: String,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: SpawnArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut touched = 0;
    for &mib in &args.touched_mib {
        // Grow to `mib` MiB written, page by page (kept until the end).
        while touched < mib {
            held.push(written_mib());
            touched += 1;
        }
        let (plain, hooked) = measure(&args)?;
        rows.push((mib, plain, hooked));
    }
    drop(held);
    println!(
        "spawn() of {} with piped output, {} each way",
        args.program, args.spawns
    );
    println!(
        "| heap written | posix_spawn p50 | fork + pre_exec p50 | fork + pre_exec p90 | extra p50 |"
    );
    println!("|---|---|---|---|---|");
    for (mib, plain, hooked) in &rows {
        println!(
            "| {mib} MiB | {:.3} ms | {:.3} ms | {:.3} ms | {:+.3} ms |",
            quantile_ms(plain, 0.5),
            quantile_ms(hooked, 0.5),
            quantile_ms(hooked, 0.9),
            quantile_ms(hooked, 0.5) - quantile_ms(plain, 0.5)
        );
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(mib, plain, hooked)| {
                json!({
                    "touchedMib": mib,
                    "posixSpawnP50Ms": quantile_ms(plain, 0.5),
                    "forkPreExecP50Ms": quantile_ms(hooked, 0.5),
                    "forkPreExecP90Ms": quantile_ms(hooked, 0.9),
                })
            })
            .collect();
        println!("{}", json!({ "spawn": rows }));
    }
    Ok(())
}

/// One MiB, every page written so that it is resident.
fn written_mib() -> Vec<u8> {
    let mut block = vec![0u8; 1 << 20];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    block
}

fn measure(args: &SpawnArgs) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let (mut plain, mut hooked) = (new_histogram()?, new_histogram()?);
    let mut done = 0;
    while done < args.spawns {
        let block = BLOCK.min(args.spawns - done);
        for _ in 0..block {
            record(&mut plain, spawn_once(&args.program, false)?);
        }
        for _ in 0..block {
            record(&mut hooked, spawn_once(&args.program, true)?);
        }
        done += block;
    }
    Ok((plain, hooked))
}

/// Nanoseconds `spawn()` took; waits for the child afterwards.
fn spawn_once(program: &str, hook: bool) -> anyhow::Result<u64> {
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if hook {
        // SAFETY: the hook does nothing; its presence alone makes std fork.
        unsafe {
            command.pre_exec(|| Ok(()));
        }
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot spawn {program}"))?;
    let took = started.elapsed();
    child.wait().context("waiting for the child")?;
    Ok(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX))
}
