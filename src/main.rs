use clap::Parser;
use pilotlight::cli::{self, Cli};

// The broker allocates per event (attributes, bodies, futures); mimalloc keeps
// that cheap and steady under many threads, where glibc's malloc showed high
// in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    pilotlight::telemetry::init_logging(cli.log_format);
    cli::run_to_exit(cli::main(cli))
}
