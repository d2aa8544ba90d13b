//! The audit key: a P-256 key in the HSM that signs the audit log's checkpoints, so that a log
//! rewritten from some entry on (every later hash recomputed) no longer verifies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::audit::{Event, Hash, checkpoint_message};
use crate::hsm::{self, Hsm};
use crate::store::{Store, StoreError};

/// Signs checkpoints with the audit key.
#[derive(Clone)]
pub struct AuditSigner {
    hsm: Hsm,
    label: String,
    public: p256::PublicKey,
}

impl AuditSigner {
    /// Finds the audit key `label` in the HSM, generating it on first start (it never leaves
    /// the HSM; its public half is what `audit verify` checks against).
    pub fn ensure(hsm: &Hsm, label: &str) -> Result<AuditSigner, hsm::Error> {
        let key = match hsm.find_key(label) {
            Ok(k) => k,
            Err(hsm::Error::KeyNotFound { .. }) => {
                log::warn!("audit: no audit key {label:?} in the HSM; generating it");
                hsm.generate_key(label)?
            }
            Err(e) => return Err(e),
        };
        Ok(AuditSigner { hsm: hsm.clone(), label: label.to_owned(), public: key.public_key })
    }

    /// The key's HSM label.
    pub fn label(&self) -> &str {
        &self.label
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

    /// Appends a checkpoint over the log's current end, unless the log is empty or already ends
    /// with one. Returns the checkpoint's sequence number.
    pub fn checkpoint(&self, store: &Store) -> Result<Option<u64>, StoreError> {
        store.audit_append_at_head(|last, head, last_is_checkpoint| {
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
        })
    }

    fn sign(&self, covers: u64, head: &Hash) -> Result<String, hsm::Error> {
        let message = checkpoint_message(covers, head);
        let sig = self.hsm.sign(&self.label, &message, &hsm::sha256(&message))?;
        Ok(B64.encode(sig))
    }
}
