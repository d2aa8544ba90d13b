//! `hcert-signer`: the command line of the HCERT signing appliance.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use hcert_signer::commands::{self, Command};

/// HSM-backed signing appliance for EU Digital COVID Certificates (HCERT).
#[derive(Parser)]
#[command(name = "hcert-signer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // One line, actionable: the error types carry the context.
            eprintln!("hcert-signer: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
