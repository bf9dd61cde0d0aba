//! `pilotlight-bench`: pilotlight's benchmarks, apart from the product
//! binary. Every suite measures a baseline without pilotlight in the same
//! run and reports pilotlight against it; see docs/benchmarks.md for the
//! figures and benches/README.md for how each one measures.
//!
//! The suites use pilotlight's library as `pilotlight run` does (an
//! in-process [`pilotlight::server::Server`]); the serving suite also runs
//! the `pilotlight` executable itself (`pilotlight hello`, `pilotlight run`).

mod app;
mod cesql;
mod collector;
mod console;
mod eventing;
mod hops;
mod http_server;
mod issuer;
mod kafka;
mod lean_http;
mod load;
mod open_loop;
mod overload;
mod pinning;
mod rabbitmq;
mod report;
mod scale;
mod serving;
mod spawn;
mod sync;
mod workdir;

use clap::{Parser, Subcommand};
use pilotlight::telemetry::LogFormat;

// As in the product binary: the in-process pilotlight allocates with the
// allocator it ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// pilotlight's benchmarks, each against a baseline without pilotlight
/// measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "pilotlight-bench", version, about)]
struct Cli {
    /// Log format of the in-process pilotlight: pretty (default) or json.
    #[arg(
        long,
        global = true,
        env = "PILOTLIGHT_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    suite: Suite,
}

/// The benchmark suites.
#[derive(Debug, Subcommand)]
enum Suite {
    /// Eventing: ingress throughput and end-to-end latency of the memory and
    /// log backends against a raw hyper server.
    Eventing(eventing::EventingArgs),
    /// Serving: cold-start overhead, warm proxy overhead and idle memory,
    /// each against a baseline without pilotlight in the same run.
    Serving(serving::ServingArgs),
    /// CESQL: evaluations per second of a typical filter against the same
    /// logic as a Rust closure.
    Cesql(cesql::CesqlArgs),
    /// RabbitMQ: events/s through a RabbitMQBroker against a raw lapin
    /// publisher with confirms plus a consumer, on the same RabbitMQ.
    Rabbitmq(rabbitmq::RabbitmqArgs),
    /// Kafka: events/s through a Kafka broker (ingress to subscriber)
    /// against a raw rdkafka producer and consumer on the same Kafka.
    Kafka(kafka::KafkaBenchArgs),
    /// Console: pilotlight's CPU with 1,000 events/s flowing, with and
    /// without a browser watching the console.
    Console(console::ConsoleArgs),
    /// Sync: an fdatasync after a group of events, on a file that grows
    /// with each write against one zeroed ahead (the log's own disk cost).
    Sync(sync::SyncArgs),
    /// Hops: a trigger delivering to one of pilotlight's own Services
    /// against the same trigger delivering to the app run straight.
    Hops(hops::HopsArgs),
    /// Overload: the pilotlight executable under a flood of clients that
    /// never back off, with a stalled subscriber: goodput against the
    /// capacity measured first, RSS, probes, no crash.
    Overload(overload::OverloadArgs),
    /// Spawn: a child spawned with a pre_exec hook (fork) against without
    /// one (posix_spawn), from a process grown to pilotlight's size.
    Spawn(spawn::SpawnArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    pilotlight::telemetry::init_logging(cli.log_format);
    pilotlight::cli::run_to_exit(async {
        match cli.suite {
            Suite::Eventing(args) => eventing::run(args).await,
            Suite::Serving(args) => serving::run(args).await,
            Suite::Cesql(args) => cesql::run(args),
            Suite::Overload(args) => overload::run(args).await,
            Suite::Hops(args) => hops::run(args).await,
            Suite::Sync(args) => sync::run(args),
            Suite::Spawn(args) => spawn::run(args),
            Suite::Rabbitmq(args) => rabbitmq::run(args).await,
            Suite::Kafka(args) => kafka::run(args).await,
            Suite::Console(args) => console::run(args).await,
        }
    })
}
