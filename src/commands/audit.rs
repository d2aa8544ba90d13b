//! `hcert-signer audit …`: check the audit log's chain and checkpoints (`verify`, also against
//! checkpoint heads published outside the store: `--anchor`), and export revocation entries for
//! the EU gateway (`revocation`). Both read a store offline (the daemon stopped, or a copy or
//! backup); `verify` can also fetch the log from a running appliance.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;

use crate::audit::anchor::{Anchors, parse_heads};
use crate::audit::revocation::{self, HashType, Selection};
use crate::audit::{BadEntry, verify_chain_anchored};
use crate::client::Profile;
use crate::config::Config;
use crate::store::{Store, StoreOptions};
use crate::{Error, Result};

/// Arguments of `audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// Where the log is read from.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// The daemon's configuration: its store (`state_dir/store`, daemon stopped) and the audit key
    /// it wrote when it made the key (`state_dir/audit-key.pem`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A store directory (a stopped daemon's, a copy, a backup).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// An officer profile: fetch the log from the running appliance (`GET /v1/audit`).
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
}

/// The audit operations.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Check the hash chain and every checkpoint signature; name the first bad entry.
    Verify {
        /// Where the log is.
        #[command(flatten)]
        source: Source,
        /// The audit key's public half (PEM) as recorded at the key ceremony. Default: the
        /// daemon's `state_dir/audit-key.pem` (with --config, or next to --store), or the
        /// appliance's `GET /v1/audit/key` (with --profile; pin it instead where you can).
        #[arg(long, value_name = "PEM")]
        audit_key: Option<PathBuf>,
        /// Checkpoint heads published outside the store (the journal's `AUDIT_CHECKPOINT_HEAD`
        /// lines, or a saved `GET /v1/audit/checkpoints` answer): one head, a JSON array, the
        /// route's answer as is, or JSON lines. The log must reach the last of them and agree
        /// with each; without it, a log cut back to just after any checkpoint still verifies.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
    },
    /// Write revocation batches (EU gateway format, at most 1,000 entries; UCI, SIGNATURE and
    /// COUNTRYCODEUCI hashes) for the certificates named by UVCI or by batch; from a running
    /// appliance (--profile) each batch also comes CMS-signed by the upload key (`.cms`: the
    /// base64 body of the gateway's upload, `application/cms`, whose content is the `.json` file
    /// byte for byte).
    Revocation {
        /// Where the log is.
        #[command(flatten)]
        source: Source,
        /// A file of UVCIs to revoke, one per line.
        #[arg(long, value_name = "FILE", required_unless_present = "batch")]
        uvci_file: Option<PathBuf>,
        /// Revoke every certificate signed for this batch id.
        #[arg(long, value_name = "ID")]
        batch: Option<String>,
        /// The issuing country (offline; a running appliance uses its own).
        #[arg(long, default_value = "VN")]
        country: String,
        /// Export only this hash type (repeatable): UCI, SIGNATURE or COUNTRYCODEUCI. Default:
        /// all three.
        #[arg(long = "hash-type", value_name = "TYPE")]
        hash_types: Vec<HashType>,
        /// Folder to write `revocation-NNN.json` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Runs an audit operation.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.action {
        Action::Verify { source, audit_key, anchor } => {
            verify(&source, audit_key.as_deref(), anchor.as_deref())
        }
        Action::Revocation { source, uvci_file, batch, country, hash_types, out } => {
            let types = if hash_types.is_empty() { HashType::ALL.to_vec() } else { hash_types };
            revocation(&source, uvci_file.as_deref(), batch.as_deref(), &country, &types, &out)
        }
    }
}

/// The log as read: entries in order, each or the reason it could not be read.
type Entries = Vec<Result<(u64, Vec<u8>), BadEntry>>;

fn verify(source: &Source, audit_key: Option<&Path>, anchor: Option<&Path>) -> Result<ExitCode> {
    let pinned = match audit_key {
        Some(p) => Some(std::fs::read_to_string(p).map_err(Error::file(p))?),
        None => None,
    };
    let (entries, pem): (Entries, String) = if let Some(profile) = &source.profile {
        let (entries, served) = fetch(&Profile::load(profile)?)?;
        (entries, pinned.unwrap_or(served))
    } else {
        let (store, key_path) = open_store(source)?;
        let entries = store.audit_chain().collect();
        let pem = match pinned {
            Some(p) => p,
            None => std::fs::read_to_string(&key_path).map_err(Error::file(&key_path))?,
        };
        (entries, pem)
    };
    let key = {
        use p256::pkcs8::DecodePublicKey;
        p256::ecdsa::VerifyingKey::from_public_key_pem(&pem)
            .map_err(|e| Error::Config(format!("the audit key is not a P-256 public key PEM: {e}")))?
    };
    let anchors = match anchor {
        None => Anchors::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(Error::file(path))?;
            match parse_heads(&text).and_then(|heads| Anchors::new(heads, &key)) {
                Ok(a) => a,
                Err(e) => {
                    let reason = format!("{}: {e}", path.display());
                    println!(
                        "{}",
                        serde_json::json!({ "ok": false, "anchor": path.display().to_string(), "error": reason })
                    );
                    eprintln!("audit verify: FAILED: {reason}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    match verify_chain_anchored(entries, &key, &anchors) {
        Ok(summary) => {
            println!("{}", serde_json::json!({ "ok": true, "summary": summary }));
            if anchor.is_none() {
                eprintln!(
                    "audit verify: without --anchor this shows the log is intact up to where it ends, not that \
                     it ends where it should (a log cut back to just after a checkpoint verifies too)"
                );
            }
            if summary.unanchored > 0 {
                eprintln!(
                    "audit verify: intact; the last {} entries follow the last checkpoint (the next one covers them)",
                    summary.unanchored
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(bad) => {
            println!("{}", serde_json::json!({ "ok": false, "entry": bad.seq, "error": bad.reason }));
            eprintln!("audit verify: FAILED: {bad}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Opens the store offline (a stopped appliance's sled directory, or the cluster's database)
/// and says where its audit key's public half is.
fn open_store(source: &Source) -> Result<(Store, PathBuf)> {
    let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
    let (dir, key) = match (&source.config, &source.store) {
        (Some(config), _) => {
            let c = Config::load(config)?;
            let key = c.state_dir.join(super::serve::AUDIT_KEY_FILE);
            if c.store.backend == crate::config::StoreBackend::Postgres {
                let store = Store::open_configured(&c.store, &c.state_dir, options, false)
                    .map_err(|e| Error::Config(e.to_string()))?;
                return Ok((store, key));
            }
            (c.state_dir.join("store"), key)
        }
        (None, Some(dir)) => {
            let parent = dir.parent().unwrap_or(Path::new("."));
            (dir.clone(), parent.join(super::serve::AUDIT_KEY_FILE))
        }
        (None, None) => return Err(Error::Config("give --config or --store".into())),
    };
    if !dir.join("conf").exists() {
        return Err(Error::Config(format!("{} holds no store", dir.display())));
    }
    let store = Store::open(&dir, options).map_err(|e| Error::Config(e.to_string()))?;
    Ok((store, key))
}

/// Reads the whole log and the audit key from a running appliance.
fn fetch(profile: &Profile) -> Result<(Entries, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut c = profile.connect().await?;
        let log = c.get("/v1/audit").await?;
        let key = c.get("/v1/audit/key").await?;
        if !log.status.is_success() || !key.status.is_success() {
            return Err(Error::Config(format!(
                "the appliance refused the audit log ({}): {}",
                log.status.as_u16().max(key.status.as_u16()),
                String::from_utf8_lossy(if log.status.is_success() { &key.body } else { &log.body }).trim()
            )));
        }
        let entries =
            log.body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| BadEntry {
                        seq: 0,
                        reason: format!("unreadable line from the appliance: {e}"),
                    })?;
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    let entry = v["entry"].as_str().and_then(|s| B64.decode(s).ok()).ok_or_else(|| {
                        BadEntry { seq, reason: "the appliance sent no entry bytes".into() }
                    })?;
                    Ok((seq, entry))
                })
                .collect();
        Ok((entries, String::from_utf8_lossy(&key.body).into_owned()))
    })
}

fn revocation(
    source: &Source,
    uvci_file: Option<&Path>,
    batch: Option<&str>,
    country: &str,
    types: &[HashType],
    out: &Path,
) -> Result<ExitCode> {
    let selection = match (uvci_file, batch) {
        (Some(f), _) => Selection::Uvcis(
            std::fs::read_to_string(f)
                .map_err(Error::file(f))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        (None, Some(id)) => Selection::Batch(id.to_owned()),
        (None, None) => return Err(Error::Config("give --uvci-file or --batch".into())),
    };
    // Each batch as (its JSON, exactly as signed; its entries; its CMS upload body, base64).
    let batches: Vec<(Vec<u8>, usize, Option<String>)> = if let Some(profile) = &source.profile {
        let mut body = match &selection {
            Selection::Uvcis(u) => serde_json::json!({ "uvcis": u }),
            Selection::Batch(b) => serde_json::json!({ "batch": b }),
        };
        body["hash_types"] = serde_json::json!(types);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let reply = runtime.block_on(async {
            let mut c = Profile::load(profile)?.connect().await?;
            c.post("/v1/revocations", &body).await
        })?;
        if !reply.status.is_success() {
            return Err(super::keys::refused(&reply));
        }
        let reply = reply.json()?;
        let mut batches = Vec::new();
        for b in reply["batches"].as_array().into_iter().flatten() {
            let content = b["content"].as_str().ok_or_else(|| {
                Error::Io(std::io::Error::other("a revocation batch in the reply carries no content"))
            })?;
            let entries = b["batch"]["entries"].as_array().map_or(0, Vec::len);
            batches.push((content.as_bytes().to_vec(), entries, b["cms"].as_str().map(str::to_owned)));
        }
        batches
    } else {
        let (store, _) = open_store(source)?;
        let picked = selection
            .pick(store.audit_entries(crate::audit::FIRST_SEQ).map(|r| r.map_err(|e| e.to_string())))
            .map_err(Error::Config)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        revocation::batches(country, &picked, types, now)
            .into_iter()
            .map(|b| (b.content(), b.entries.len(), None))
            .collect()
    };
    std::fs::create_dir_all(out).map_err(Error::file(out))?;
    let mut entries = 0;
    for (i, (content, count, cms)) in batches.iter().enumerate() {
        let path = out.join(format!("revocation-{:03}.json", i + 1));
        entries += count;
        std::fs::write(&path, content).map_err(Error::file(&path))?;
        if let Some(cms) = cms {
            let path = out.join(format!("revocation-{:03}.cms", i + 1));
            std::fs::write(&path, cms).map_err(Error::file(&path))?;
        }
    }
    println!(
        "{}",
        serde_json::json!({ "batches": batches.len(), "entries": entries, "out": out.display().to_string() })
    );
    Ok(ExitCode::SUCCESS)
}
