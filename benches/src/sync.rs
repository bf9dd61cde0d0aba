//! Sync: what one group commit's `fdatasync` costs on this disk when the
//! file grows with each write, against the same writes landing on blocks
//! zeroed (and synced) beforehand, which is what the log's zeroing thread
//! gives its writer. No pilotlight here: the figure is the disk's, and
//! explains the log backend's ratio in `eventing`.
//!
//! Both sides write `--group-bytes` (a group of events) then `fdatasync`,
//! `--groups` times, in a file in `--dir` (default: the system's temporary
//! folder, which should be on the disk the data folder is on); the sides
//! alternate in blocks of 100 groups so a noisy disk moves both alike.
//!
//! `cargo run --release -p pilotlight-bench -- sync`

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::load::{new_histogram, record};
use crate::report::quantile_ms;

/// Groups per block: the sides alternate block by block.
const BLOCK: usize = 100;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Groups written and synced per side.
    #[arg(long, default_value_t = 2_000)]
    pub groups: usize,
    /// Bytes per group (16 KiB: about 14 events of 1 KiB).
    #[arg(long, default_value_t = 16 << 10)]
    pub group_bytes: usize,
    /// Folder for the two files (on the disk under test).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One side: a file and where its next group goes.
struct Side {
    file: File,
    pos: u64,
    syncs: Histogram<u64>,
}

impl Side {
    fn create(path: &Path, zeroed: u64) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        if zeroed > 0 {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < zeroed {
                let len = (zeroed - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..len], at)?;
                at += len as u64;
            }
            file.sync_all()?;
        }
        Ok(Side {
            file,
            pos: 0,
            syncs: new_histogram()?,
        })
    }

    fn group(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file.write_all_at(bytes, self.pos)?;
        self.pos += bytes.len() as u64;
        let started = Instant::now();
        self.file.sync_data()?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        record(&mut self.syncs, nanos);
        Ok(())
    }
}

pub fn run(args: SyncArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let growing_path = dir.join(format!("pilotlight-bench-sync-growing-{tag}"));
    let zeroed_path = dir.join(format!("pilotlight-bench-sync-zeroed-{tag}"));
    let result = measure(&args, &growing_path, &zeroed_path);
    let _ = std::fs::remove_file(&growing_path);
    let _ = std::fs::remove_file(&zeroed_path);
    let (growing, zeroed) = result?;
    let p50 = |h: &Histogram<u64>| quantile_ms(h, 0.5);
    let p99 = |h: &Histogram<u64>| quantile_ms(h, 0.99);
    let ratio = p50(&zeroed.syncs) / p50(&growing.syncs);
    if args.json {
        println!(
            "{}",
            json!({
                "groups": args.groups, "group_bytes": args.group_bytes, "dir": dir,
                "growing_p50_ms": p50(&growing.syncs), "growing_p99_ms": p99(&growing.syncs),
                "zeroed_p50_ms": p50(&zeroed.syncs), "zeroed_p99_ms": p99(&zeroed.syncs),
                "zeroed_over_growing_p50": ratio,
            })
        );
        return Ok(());
    }
    println!(
        "fdatasync after a {} B group, {} groups per side, in {}",
        args.group_bytes,
        args.groups,
        dir.display()
    );
    println!("  file                          p50 (ms)   p99 (ms)");
    for (name, side) in [
        ("growing (appends)", &growing),
        ("zeroed ahead (overwrites)", &zeroed),
    ] {
        println!(
            "  {name:<28} {:>9.3}  {:>9.3}",
            p50(&side.syncs),
            p99(&side.syncs)
        );
    }
    println!("  zeroed / growing at p50      {ratio:>9.2}x");
    Ok(())
}

fn measure(args: &SyncArgs, growing: &Path, zeroed: &Path) -> anyhow::Result<(Side, Side)> {
    let total = (args.groups * args.group_bytes) as u64;
    let mut growing = Side::create(growing, 0)?;
    let mut zeroed = Side::create(zeroed, total)?;
    let group: Vec<u8> = (0..args.group_bytes).map(|i| (i % 251) as u8 + 1).collect();
    let mut done = 0;
    while done < args.groups {
        let block = BLOCK.min(args.groups - done);
        for _ in 0..block {
            growing.group(&group).context("the growing file")?;
        }
        for _ in 0..block {
            zeroed.group(&group).context("the zeroed file")?;
        }
        done += block;
    }
    Ok((growing, zeroed))
}
