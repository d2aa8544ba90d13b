//! The audit key: a P-256 key in the HSM that signs the audit log's checkpoints, so that a log
//! rewritten from some entry on (every later hash recomputed) no longer verifies.
//!
//! # Pinning
//!
//! The key is made once, at the appliance's first start, and its public half written once to
//! `state_dir/audit-key.pem` (officers keep a copy from that ceremony). Every later start checks
//! that the token still holds that very key: a missing key, a different key, a missing
//! `audit-key.pem`, or a state directory wiped on a token that already holds a key all stop the
//! start ([`AuditKeyError`], exit 78) instead of silently making or adopting a key — either of
//! which would let someone who can rewrite the store re-sign a log of their choosing.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::audit::anchor::{Head, key_sha256};
use crate::audit::{Event, Hash, checkpoint_message};
use crate::hsm::{self, Hsm};
use crate::store::{Store, StoreError};

/// Why the audit key cannot be used: each stops the start (exit 78, a restart cannot fix it).
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    /// The HSM failed (its own exit status applies).
    #[error(transparent)]
    Hsm(#[from] hsm::Error),
    /// The appliance was started before but the token no longer holds the audit key.
    #[error(
        "the audit key {label:?} is missing from the HSM, but this appliance already made it ({why}); it is \
         never made again silently, because a new key could re-sign a rewritten audit log. Find the token \
         that holds it (check hsm.token_label and [audit] key_label), or restore the token from its backup"
    )]
    Missing {
        /// The configured label.
        label: String,
        /// What shows the appliance was started before.
        why: String,
    },
    /// The HSM's key is not the one `audit-key.pem` recorded at the key ceremony.
    #[error(
        "the audit key {label:?} in the HSM (sha256 {hsm}) is not the one recorded in {} (sha256 {file}); \
         the log cannot be checked against a key that changed. Put back the token (or the file) of this \
         appliance",
        path.display()
    )]
    Mismatch {
        /// The configured label.
        label: String,
        /// The HSM key's fingerprint.
        hsm: String,
        /// The recorded key's fingerprint.
        file: String,
        /// The recorded key's file.
        path: PathBuf,
    },
    /// The token's audit key was pinned by an earlier store, yet the store is empty: the store
    /// was removed or replaced (another directory, another database) while the pin stayed.
    #[error(
        "the store holds no audit log, but the token's audit key {label:?} (sha256 {hsm}) was pinned in {} by an earlier start: the store was removed or replaced. Starting on it would run the configuration's first-start key bootstrap without officers. Restore the store from its backup (or point [store] back at it); a new appliance needs a fresh token",
        path.display()
    )]
    StoreReplaced {
        /// The configured label.
        label: String,
        /// The HSM key's fingerprint.
        hsm: String,
        /// The recorded key's file.
        path: PathBuf,
    },
    /// The token holds the audit key but `audit-key.pem` is gone.
    #[error(
        "{} is missing but the token already holds the audit key {label:?} (sha256 {hsm}){}; the file is \
         written only when the key is made and is never rewritten from the HSM. Restore the state directory \
         (or this file) from its backup; a new appliance needs a fresh token or another [audit] key_label",
        path.display(),
        if *store_empty {
            ": this token was in use by an appliance whose state directory was wiped. Starting on it again \
             would run the configuration's first-start key bootstrap without officers"
        } else {
            ""
        }
    )]
    PemMissing {
        /// The configured label.
        label: String,
        /// The HSM key's fingerprint.
        hsm: String,
        /// Where the file should be.
        path: PathBuf,
        /// Whether the store is empty too (a wiped state directory).
        store_empty: bool,
    },
    /// `audit-key.pem` is absent and the store's log does not verify under the token's key.
    #[error(
        "the store's audit log does not verify under the token's audit key {label:?} (sha256 {hsm}) ({reason}): \
         this node has no audit-key.pem and the key cannot be pinned from the log. Copy audit-key.pem from a node \
         of the cluster (or the key ceremony's records) into the state directory, and run `hcert-signer audit \
         verify`"
    )]
    NotVouched {
        /// The configured label.
        label: String,
        /// The HSM key's fingerprint.
        hsm: String,
        /// Where the log and the key disagree.
        reason: String,
    },
    /// The store's log could not be read.
    #[error("audit log: {0}")]
    Store(String),
    /// `audit-key.pem` could not be read, parsed or written.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Signs checkpoints with the audit key.
#[derive(Clone)]
pub struct AuditSigner {
    hsm: Hsm,
    label: String,
    public: p256::PublicKey,
    sha256: String,
}

impl AuditSigner {
    /// Opens the audit key `label`, pinned to `pem` (`state_dir/audit-key.pem`). `store_empty`:
    /// the audit log has no entry at all (nothing ever started on this store). The key is made,
    /// and `pem` written, only when neither the file nor the key exists and the store is empty:
    /// the first start.
    pub fn open_pinned(
        hsm: &Hsm,
        label: &str,
        pem: &Path,
        store: &Store,
    ) -> Result<AuditSigner, AuditKeyError> {
        let store_empty = store.audit_head().map_err(|e| AuditKeyError::Store(e.to_string()))?.0 == 0;
        let recorded = match std::fs::read_to_string(pem) {
            Ok(text) => {
                Some(parse_pem(&text).map_err(|reason| AuditKeyError::File { path: pem.into(), reason })?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AuditKeyError::File { path: pem.into(), reason: e.to_string() }),
        };
        let found = match hsm.find_key(label) {
            Ok(k) => Some(k.public_key),
            Err(hsm::Error::KeyNotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let signer = |public: p256::PublicKey| AuditSigner {
            hsm: hsm.clone(),
            label: label.to_owned(),
            sha256: key_sha256(&p256::ecdsa::VerifyingKey::from(&public)),
            public,
        };
        match (found, recorded) {
            (Some(public), Some(file)) => {
                let s = signer(public);
                let file = key_sha256(&p256::ecdsa::VerifyingKey::from(&file));
                if s.sha256 != file {
                    return Err(AuditKeyError::Mismatch {
                        label: label.into(),
                        hsm: s.sha256,
                        file,
                        path: pem.into(),
                    });
                }
                // The first start made the key and left entries in the log: a pinned key over an
                // empty log is a store someone took away, not a first start.
                if store_empty {
                    return Err(AuditKeyError::StoreReplaced {
                        label: label.into(),
                        hsm: s.sha256,
                        path: pem.into(),
                    });
                }
                Ok(s)
            }
            // A further node of a cluster (or a node whose file was lost) over a shared log:
            // the log's own checkpoints vouch for the token's key. A key swapped into the token
            // verifies none of them, so nothing is adopted that the file would have refused.
            (Some(public), None) if !store_empty => {
                let s = signer(public);
                match vouched(store, &s.verifying_key()) {
                    Ok(Some(checkpoint)) => {
                        write_new(pem, &s.public_pem())?;
                        log::warn!(
                            audit_key = label, audit_key_sha256 = s.sha256.as_str();
                            "audit: pinned the cluster's audit key {label:?} (sha256 {}) in {}: the whole log \
                             verifies under it, through its checkpoint {checkpoint}",
                            s.sha256,
                            pem.display()
                        );
                        Ok(s)
                    }
                    Ok(None) => Err(AuditKeyError::PemMissing {
                        label: label.into(),
                        hsm: s.sha256,
                        path: pem.into(),
                        store_empty,
                    }),
                    Err(reason) => {
                        Err(AuditKeyError::NotVouched { label: label.into(), hsm: s.sha256, reason })
                    }
                }
            }
            (Some(public), None) => Err(AuditKeyError::PemMissing {
                label: label.into(),
                hsm: signer(public).sha256,
                path: pem.into(),
                store_empty,
            }),
            (None, Some(_)) => Err(AuditKeyError::Missing {
                label: label.into(),
                why: format!("{} records it", pem.display()),
            }),
            (None, None) if !store_empty => Err(AuditKeyError::Missing {
                label: label.into(),
                why: "the store's audit log was signed by it".into(),
            }),
            (None, None) => {
                let key = hsm.generate_key(label)?;
                let s = signer(key.public_key);
                write_new(pem, &s.public_pem())?;
                log::warn!(
                    audit_key = label, audit_key_sha256 = s.sha256.as_str();
                    "audit: first start: generated the audit key {label:?} (sha256 {}) and wrote {}; keep a copy \
                     of it with the key ceremony's records",
                    s.sha256,
                    pem.display()
                );
                Ok(s)
            }
        }
    }

    /// The key's HSM label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// SHA-256 of the key's SubjectPublicKeyInfo, hex (what published heads name).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The public key, SPKI PEM (what officers keep to verify the log).
    pub fn public_pem(&self) -> String {
        use p256::pkcs8::{EncodePublicKey, LineEnding};
        self.public.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// The public key, for verification.
    pub fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        p256::ecdsa::VerifyingKey::from(&self.public)
    }

    /// The published head of a stored checkpoint entry.
    pub fn head(&self, stored: &[u8]) -> Option<Head> {
        Head::from_stored(stored, &self.label, &self.sha256)
    }

    /// Appends a checkpoint over the log's current end, unless the log is empty or already ends
    /// with one, and publishes its head in the journal. Returns the checkpoint's sequence number.
    pub fn checkpoint(&self, store: &Store) -> Result<Option<u64>, StoreError> {
        let appended = store.audit_append_at_head(|last, head, last_is_checkpoint| {
            if last == 0 || last_is_checkpoint {
                return None;
            }
            match self.sign(last, head) {
                Ok(signature) => {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    crate::metrics::get().audit_last_checkpoint.set(now);
                    Some(Event::Checkpoint { covers: last, head: hex::encode(head), signature })
                }
                Err(e) => {
                    log::error!("audit: cannot sign a checkpoint with {:?}: {e}", self.label);
                    None
                }
            }
        })?;
        if let Some(seq) = appended {
            self.publish(store, seq)?;
        }
        Ok(appended)
    }

    /// Writes checkpoint `seq`'s head to the journal: outside the store, so a log cut back to an
    /// earlier checkpoint is found out by whoever keeps these lines.
    fn publish(&self, store: &Store, seq: u64) -> Result<(), StoreError> {
        let Some(head) = store
            .audit_checkpoints(seq, 1)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .and_then(|(_, v)| self.head(&v))
        else {
            log::error!("audit: checkpoint {seq} was written but cannot be read back to publish it");
            return Ok(());
        };
        log::info!(
            audit_checkpoint_seq = head.seq,
            audit_checkpoint_covers = head.covers,
            audit_checkpoint_hash = head.hash.as_str(),
            audit_checkpoint_sig = head.signature.as_str(),
            audit_checkpoint_time = head.time.as_str(),
            audit_key = head.audit_key.as_str(),
            audit_key_sha256 = head.audit_key_sha256.as_str(),
            audit_checkpoint_head = head.to_json().as_str();
            "audit: checkpoint {} signed over entries 1..{} (hash {}); keep this head to check the log with \
             `audit verify --anchor`",
            head.seq,
            head.covers,
            head.hash
        );
        Ok(())
    }

    fn sign(&self, covers: u64, head: &Hash) -> Result<String, hsm::Error> {
        let message = checkpoint_message(covers, head);
        let sig = self.hsm.sign(&self.label, &message, &hsm::sha256(&message))?;
        Ok(B64.encode(sig))
    }
}

/// The last checkpoint of `store`'s log when the whole log verifies under `key` (`None`: no
/// checkpoint yet, so nothing vouches for a key); why not, when it does not.
fn vouched(store: &Store, key: &p256::ecdsa::VerifyingKey) -> Result<Option<u64>, String> {
    match crate::audit::verify_chain(store.audit_chain(), key) {
        Ok(summary) if summary.checkpoints > 0 => Ok(Some(summary.last_checkpoint)),
        Ok(_) => Ok(None),
        Err(bad) => Err(format!("entry {}: {}", bad.seq, bad.reason)),
    }
}

fn parse_pem(text: &str) -> Result<p256::PublicKey, String> {
    use p256::pkcs8::DecodePublicKey as _;
    p256::PublicKey::from_public_key_pem(text).map_err(|e| format!("not a P-256 public key PEM: {e}"))
}

/// Writes `text` to a file that must not exist yet, durably.
fn write_new(path: &Path, text: &str) -> Result<(), AuditKeyError> {
    let fail = |e: std::io::Error| AuditKeyError::File { path: path.into(), reason: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut f = std::fs::File::options().write(true).create_new(true).open(path).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(())
}
