//! The `tandem` binary: a thin command line over the tandem crates.

mod input;
mod models;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Batch and real-time ML predictions from one small binary.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect models and run quick predictions.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Models(cmd) => models::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
