//! `hcert-signer store …`: operations on a whole store, offline. `copy` moves an appliance's
//! state from one store to another (sled to PostgreSQL, when one appliance grows into a
//! cluster): key records and approvals, CSCAs, the KEK pin, pending batches with their sealed
//! records and wrapped data keys, results, idempotency keys and tombstones, and the audit chain
//! verbatim — through [`Backend::export`](crate::store::Backend::export) and
//! [`Backend::import`](crate::store::Backend::import), so it works between any two backends.
//!
//! A sled source is never written: it is locked against a daemon starting meanwhile and read
//! from a private copy (opening sled writes to its files). Nothing is re-sealed or unwrapped, so
//! both configurations must name the same HSM token, KEK and audit key.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::audit::verify_chain;
use crate::config::{Config, StoreBackend};
use crate::hsm::HsmConfig;
use crate::store::{Store, StoreOptions};
use crate::{Error, Result};

use super::serve::AUDIT_KEY_FILE;

/// Arguments of `store`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The store operations.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Copy a stopped appliance's whole store into an empty one (sled into PostgreSQL to grow
    /// into a cluster): the audit chain is verified before and after, the source left untouched.
    Copy {
        /// The configuration whose store is copied (its daemon stopped).
        #[arg(long, value_name = "CONFIG")]
        from: PathBuf,
        /// The configuration whose store receives it (empty; same HSM token, KEK and audit key).
        #[arg(long, value_name = "CONFIG")]
        to: PathBuf,
    },
}

/// Runs a store operation.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Copy { from, to } => copy(&from, &to),
    }
}

/// `store copy`: every refusal comes before anything is written.
fn copy(from_path: &Path, to_path: &Path) -> Result<ExitCode> {
    let from = Config::load(from_path)?;
    let to = Config::load(to_path)?;
    same_keys(&from, &to)?;
    if same_store(&from, &to) {
        return Err(refused(
            "--from and --to name the same store: a store is copied into another, empty one",
        ));
    }
    let pem_path = from.state_dir.join(AUDIT_KEY_FILE);
    let pem = std::fs::read_to_string(&pem_path).map_err(|e| {
        Error::Config(format!(
            "store copy: cannot read the source's audit key {} ({e}): without it the audit chain cannot be \
             verified, and the target's nodes could not start",
            pem_path.display()
        ))
    })?;
    let audit_key = {
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
            Error::Config(format!("store copy: {} is not a P-256 public key PEM: {e}", pem_path.display()))
        })?
    };
    let to_pem = to.state_dir.join(AUDIT_KEY_FILE);
    match std::fs::read_to_string(&to_pem) {
        Ok(existing) if existing != pem => {
            return Err(refused(&format!(
                "{} records another audit key than {}: the target belongs to another appliance",
                to_pem.display(),
                pem_path.display()
            )));
        }
        _ => {}
    }

    // The source: held against a daemon starting, read from a private copy if it is sled.
    let source = Source::open(&from, &to.state_dir)?;
    let before = verify_chain(source.store.audit_chain(), &audit_key).map_err(|e| {
        refused(&format!("the source's audit chain does not verify ({e}): nothing was copied"))
    })?;
    let source_head = source.store.audit_head().map_err(store_error)?;
    if let Some(pinned) = source.store.pinned_kek().map_err(store_error)?
        && pinned != to.store.kek_label
    {
        return Err(refused(&format!(
            "the source store is pinned to the KEK {pinned:?} but the target's configuration names {:?}: its \
             wrapped data keys would not open",
            to.store.kek_label
        )));
    }

    let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
    let target = Store::open_configured(&to.store, &to.state_dir, options, false).map_err(store_error)?;
    let tally = target.import(source.store.export()).map_err(|e| match e {
        crate::store::StoreError::NotEmpty(_) => refused(&e.to_string()),
        e => store_error(e),
    })?;
    let after = verify_chain(target.audit_chain(), &audit_key)
        .map_err(|e| Error::Config(format!("store copy: the copied audit chain does not verify: {e}")))?;
    let target_head = target.audit_head().map_err(store_error)?;
    if target_head != source_head || after.entries != before.entries {
        return Err(Error::Config(format!(
            "store copy: the copied chain ends at entry {} but the source's at {}",
            target_head.0, source_head.0
        )));
    }
    // What a node needs to start on the copied store: the audit key's public half, pinned.
    std::fs::create_dir_all(&to.state_dir).map_err(Error::file(&to.state_dir))?;
    if !to_pem.exists() {
        std::fs::write(&to_pem, &pem).map_err(Error::file(&to_pem))?;
    }
    println!(
        "{}",
        serde_json::json!({
            "ok": true,
            "from": source.location,
            "to": target.location(),
            "entries_copied": tally.entries,
            "head": { "seq": target_head.0, "hash": hex::encode(target_head.1) },
            "checkpoints_verified": after.checkpoints,
            "counts": tally,
        })
    );
    eprintln!(
        "store copy: {} audit entries (head {} {}), {} batches ({} records pending, {} done), {} keys, {} CSCAs \
         copied from {} to {}; start the nodes on {}",
        tally.entries,
        target_head.0,
        hex::encode(target_head.1),
        tally.batches,
        tally.records_pending,
        tally.records_done,
        tally.keys,
        tally.cscas,
        source.location,
        target.location(),
        to_path.display()
    );
    target.close().map_err(store_error)?;
    Ok(ExitCode::SUCCESS)
}

/// The store being copied, and what keeps it unchanged meanwhile. Fields drop in order: the
/// store closes before its scratch copy goes, and the lock is let go last.
struct Source {
    store: Store,
    /// Where it is, for messages (the original directory, not the private copy).
    location: String,
    /// sled: the private copy the store was opened on, removed afterwards.
    _scratch: Option<Scratch>,
    /// sled: the lock on the original directory, held until the copy is done.
    _lock: Option<File>,
}

impl Source {
    fn open(config: &Config, scratch_parent: &Path) -> Result<Self> {
        let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
        if config.store.backend == StoreBackend::Postgres {
            let store = Store::open_configured(&config.store, &config.state_dir, options, false)
                .map_err(store_error)?;
            let location = store.location();
            return Ok(Self { store, location, _scratch: None, _lock: None });
        }
        let dir = config.state_dir.join("store");
        if !dir.join("conf").exists() {
            return Err(refused(&format!("{} holds no sled store", dir.display())));
        }
        // The daemon's own lock file: held by a running daemon. Opened read-only (a lock needs no
        // write access), so the source's files stay byte for byte as they are.
        let lock_path = dir.join(crate::store::sled::LOCK_FILE);
        let lock = File::open(&lock_path).map_err(Error::file(&lock_path))?;
        match lock.try_lock_shared() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(refused(&format!(
                    "the sled store {} is in use by a running daemon: stop it (systemctl stop hcert-signer) and run \
                     the copy again",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::file(&lock_path)(e)),
        }
        // A state directory made only for the scratch copy goes with it if the copy is refused.
        let made = (!scratch_parent.exists()).then(|| scratch_parent.to_path_buf());
        std::fs::create_dir_all(scratch_parent).map_err(Error::file(scratch_parent))?;
        let scratch =
            Scratch { dir: scratch_parent.join(format!(".store-copy-source-{}", std::process::id())), made };
        copy_dir(&dir, &scratch.dir)?;
        let store = Store::open(&scratch.dir, options).map_err(store_error)?;
        Ok(Self { store, location: dir.display().to_string(), _scratch: Some(scratch), _lock: Some(lock) })
    }
}

/// A private copy of a sled directory, removed when dropped.
struct Scratch {
    dir: PathBuf,
    /// The directory made to hold it, removed too if nothing else was written there.
    made: Option<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("store copy: could not remove the scratch copy {}: {e}", self.dir.display());
        }
        if let Some(made) = &self.made {
            // Fails, as it should, once the copy wrote the audit key (or a sled store) there.
            let _ = std::fs::remove_dir(made);
        }
    }
}

/// Copies a directory tree (sled's files and its `blobs/`).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(Error::file(to))?;
    for entry in std::fs::read_dir(from).map_err(Error::file(from))? {
        let entry = entry.map_err(Error::file(from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(Error::file(&src))?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(Error::file(&src))?;
        }
    }
    Ok(())
}

/// Refuses configurations whose HSM token, KEK or audit key differ: the copied wrapped data
/// keys and the audit chain's checkpoints would not open or verify under the target's.
fn same_keys(from: &Config, to: &Config) -> Result<()> {
    let token = |c: &Config| match &c.hsm {
        HsmConfig::Pkcs11(p) => format!("PKCS#11 token {:?} of {}", p.token_label, p.module.display()),
        HsmConfig::Yubihsm(y) => format!("YubiHSM {} (auth key {})", y.connector, y.auth_key_id),
    };
    let differ = |what: &str, a: String, b: String| {
        Err(refused(&format!(
            "the two configurations name different {what} ({a} and {b}): the copied data keys and audit chain \
             would not open under the target's; both must use the same HSM token, KEK and audit key"
        )))
    };
    if token(from) != token(to) {
        return differ("HSM tokens", token(from), token(to));
    }
    if from.hsm_environment != to.hsm_environment {
        return differ(
            "HSM environments ([hsm_environment], e.g. SOFTHSM2_CONF)",
            format!("{:?}", from.hsm_environment),
            format!("{:?}", to.hsm_environment),
        );
    }
    if from.store.kek_label != to.store.kek_label {
        return differ(
            "KEK labels",
            format!("{:?}", from.store.kek_label),
            format!("{:?}", to.store.kek_label),
        );
    }
    if from.audit.key_label != to.audit.key_label {
        return differ(
            "audit key labels",
            format!("{:?}", from.audit.key_label),
            format!("{:?}", to.audit.key_label),
        );
    }
    Ok(())
}

/// Whether both configurations name one store (the same sled directory or database URL).
fn same_store(from: &Config, to: &Config) -> bool {
    match (from.store.backend, to.store.backend) {
        (StoreBackend::Sled, StoreBackend::Sled) => {
            let dir = |c: &Config| {
                let d = c.state_dir.join("store");
                d.canonicalize().unwrap_or(d)
            };
            dir(from) == dir(to)
        }
        (StoreBackend::Postgres, StoreBackend::Postgres) => from.store.url == to.store.url,
        _ => false,
    }
}

fn refused(why: &str) -> Error {
    Error::Config(format!("store copy refused: {why}"))
}

fn store_error(e: crate::store::StoreError) -> Error {
    Error::Config(format!("store copy: {e}"))
}
