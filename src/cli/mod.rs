//! The `pilotlight` command line.

mod cesql;
mod event_display;
mod get;
mod hello;
mod http;
pub mod images;
mod ready;
mod replay;
pub mod run;
mod send;
mod tail;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// A Knative-compatible CloudEvents broker with scale-from-zero serving.
#[derive(Debug, Parser)]
#[command(name = "pilotlight", version, about)]
pub struct Cli {
    /// Log format: pretty (default) or json.
    #[arg(
        long,
        global = true,
        env = "PILOTLIGHT_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load Knative manifests and serve them (default: brokers/ and triggers/).
    Run(Box<run::RunArgs>),
    /// List brokers or triggers of a running pilotlight, with status.
    Get(get::GetArgs),
    /// Exit 0 when a running pilotlight is ready (its /readyz answers 200): a health check.
    Ready(ready::ReadyArgs),
    /// Deliver a trigger's events again from a time or an offset (asks first unless --yes).
    Replay(replay::ReplayArgs),
    /// Send a CloudEvent to a broker or URL (like `kn event send`).
    Send(send::SendArgs),
    /// Follow a broker's events as they are stored (like `kubectl logs -f`);
    /// --since starts in the past, --filter takes a CESQL expression.
    Tail(tail::TailArgs),
    /// A sink that prints every CloudEvent it receives (Knative's event_display).
    EventDisplay(event_display::EventDisplayArgs),
    /// Evaluate a CESQL expression against an event (as Triggers do) and print the result as JSON
    Cesql(cesql::CesqlArgs),
    /// A sample app for Services (Knative's helloworld): answers Hello $TARGET! on $PORT
    Hello(hello::HelloArgs),
}

/// Runs the parsed command; returns the process exit code.
/// Runs a command's future on a multi-threaded runtime and turns its outcome
/// into the process's exit code, the error printed with its context chain.
pub fn run_to_exit(command: impl Future<Output = anyhow::Result<()>>) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Get(args) => get::get(args).await,
        Command::Ready(args) => ready::ready(args).await,
        Command::Replay(args) => replay::replay(args).await,
        Command::Send(args) => send::send(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::EventDisplay(args) => event_display::run(args).await,
        Command::Hello(args) => hello::run(args).await,
        Command::Cesql(args) => cesql::run(args),
    }
}
