//! `locus`: the Locus command line. For now the offline verbs a policy
//! author and an operator use before anything runs: check a policy
//! component, benchmark it, and dry-run placements over a cluster
//! description. The agent daemon joins these verbs in later work.

mod bench;
mod check;
mod files;
mod native;
mod place;
mod source;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "locus", version, about = "Locus: decentralised VM scheduling across points of presence")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `locus_policy=debug`.
    #[arg(long, global = true, env = "LOCUS_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Dry-run placements of requests over a cluster description, offline.
    Place(place::Args),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Verify a component: format, world, imports, exports, size, compile time.
    Check(check::Args),
    /// Measure a component's decisions per second and latency percentiles on
    /// a synthetic cluster.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Policy { command: PolicyCommand::Check(args) } => check::run(args),
        Command::Policy { command: PolicyCommand::Bench(args) } => bench::run(args),
        Command::Place(args) => place::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
