//! The `hale` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// hale: a self-healing runtime for AI agents.
#[derive(Debug, Parser)]
#[command(name = "hale", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the supervision tree surviving kills, panics, a crash loop and a give-up.
    Demo {
        /// Random faults to inject.
        #[arg(long, default_value_t = 200)]
        faults: usize,
        /// Milliseconds between faults.
        #[arg(long, default_value_t = 5)]
        gap_ms: u64,
        /// RNG seed (printed; replays a run).
        #[arg(long)]
        seed: Option<u64>,
        /// Print every restart and exit.
        #[arg(long)]
        verbose: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo {
                faults,
                gap_ms,
                seed,
                verbose,
            } => {
                hale::tree_demo::run(hale::tree_demo::TreeDemoOptions {
                    faults,
                    gap: Duration::from_millis(gap_ms),
                    seed: seed.unwrap_or_else(|| fastrand::u64(..)),
                    verbose,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
