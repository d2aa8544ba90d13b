//! One file per `hcert-signer` subcommand; [`run`] dispatches to them.

use std::process::ExitCode;

use clap::Subcommand;

pub mod audit;
pub mod batch;
pub mod dev_init;
pub mod keys;
pub mod qr;
pub mod serve;
pub mod store;
pub mod verify;

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a complete local development setup (SoftHSM token, CAs, keys, config). Never for production.
    DevInit(dev_init::Args),
    /// Run the signing daemon.
    Serve(serve::Args),
    /// Verify HC1 strings read from stdin, one per line; print one JSON report per line.
    Verify(verify::Args),
    /// Render an HC1 string as a QR code (PNG or SVG).
    Qr(qr::Args),
    /// Security officers: manage Document Signer keys through the admin API.
    Keys(keys::Args),
    /// Issuers: sign a file of records through the batch API, with progress and a rejection report.
    Batch(batch::Args),
    /// Check the audit log; export revocation entries.
    Audit(audit::Args),
    /// Operations on a whole store, offline: copy a stopped appliance's store into an empty one.
    Store(store::Args),
}

/// Runs a subcommand; the exit code says whether it succeeded in its own terms.
pub fn run(command: Command) -> crate::Result<ExitCode> {
    match command {
        Command::DevInit(args) => dev_init::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Qr(args) => qr::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Batch(args) => batch::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Store(args) => store::run(args),
    }
}

/// Re-executes this process with `vars` set in its environment, unless they already are.
///
/// PKCS#11 modules read their configuration from the environment when they are loaded, and
/// changing the environment of a running process is unsound once threads exist, so the safe
/// way is to start again with it set. Returns only when nothing needed to change.
pub fn reexec_with_env(vars: &[(&str, &std::ffi::OsStr)]) -> crate::Result<()> {
    use std::os::unix::process::CommandExt;
    if vars.iter().all(|(k, v)| std::env::var_os(k).as_deref() == Some(*v)) {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    // exec only returns on failure.
    Err(cmd.exec().into())
}
