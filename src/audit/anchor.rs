//! Published checkpoint heads ("anchors"): the one JSON form in which a checkpoint leaves the
//! store — in the journal, from `GET /v1/audit/checkpoints`, and in the file
//! `hcert-signer audit verify --anchor` reads back.
//!
//! A chain hash protects entries only up to the end of the log that holds it: a log cut back to
//! just after any checkpoint is still a perfect chain. A head kept outside the store (a journal
//! shipped elsewhere, an officer's file) says how far the log reached; a log that ends before it,
//! or holds something else at its sequence number, is a log that was cut or rewritten.
//!
//! # Head
//!
//! ```json
//! {"seq":42,"covers":41,"hash":"…64 hex…","signature":"…base64 r‖s…",
//!  "time":"2026-12-03T10:00:00Z","audit_key":"hcert-audit","audit_key_sha256":"…64 hex…"}
//! ```
//!
//! `seq` is the checkpoint entry's own sequence number, `covers` the entry it signs (always
//! `seq - 1`) and `hash` that entry's chain hash; `signature` is the audit key's ES256 signature
//! over [`super::checkpoint_message`]`(covers, hash)`. `time` (when the checkpoint was written)
//! and the key's label are for people; `audit_key_sha256` (SHA-256 of the key's
//! SubjectPublicKeyInfo, DER) says which key must verify it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BadEntry, Entry, Event, Hash, checkpoint_message};

/// One published checkpoint head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The checkpoint entry's sequence number.
    pub seq: u64,
    /// The entry it covers (`seq - 1`).
    pub covers: u64,
    /// The covered entry's chain hash, hex.
    pub hash: String,
    /// ES256 signature (raw `r‖s`, base64) by the audit key over the checkpoint message.
    pub signature: String,
    /// When the checkpoint was written, RFC 3339.
    pub time: String,
    /// The audit key's HSM label.
    pub audit_key: String,
    /// SHA-256 of the audit key's SubjectPublicKeyInfo (DER), hex.
    pub audit_key_sha256: String,
}

impl Head {
    /// The head of a stored checkpoint entry (`hash ‖ JSON`), or `None` if it is not one.
    pub fn from_stored(stored: &[u8], key_label: &str, key_sha256: &str) -> Option<Head> {
        let entry: Entry = serde_json::from_slice(stored.get(32..)?).ok()?;
        let Event::Checkpoint { covers, head, signature } = entry.event else { return None };
        Some(Head {
            seq: entry.seq,
            covers,
            hash: head,
            signature,
            time: super::rfc3339(entry.time),
            audit_key: key_label.to_owned(),
            audit_key_sha256: key_sha256.to_owned(),
        })
    }

    /// One line of JSON.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks that `key` (the pinned audit key) signed this head.
    pub fn check_signature(&self, key: &p256::ecdsa::VerifyingKey) -> Result<(), AnchorError> {
        use p256::ecdsa::signature::Verifier as _;
        let seq = self.seq;
        let pinned = key_sha256(key);
        if !self.audit_key_sha256.eq_ignore_ascii_case(&pinned) {
            return Err(AnchorError::OtherKey { seq, published: self.audit_key_sha256.clone(), pinned });
        }
        if self.covers.checked_add(1) != Some(seq) {
            return Err(AnchorError::Malformed {
                seq,
                reason: format!("covers entry {} but a checkpoint covers the entry before it", self.covers),
            });
        }
        let hash = parse_hash(&self.hash)
            .ok_or_else(|| AnchorError::Malformed { seq, reason: "hash is not 64 hex digits".into() })?;
        let sig = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
            .ok_or_else(|| AnchorError::Malformed {
                seq,
                reason: "signature is not a base64 ES256 signature".into(),
            })?;
        key.verify(&checkpoint_message(self.covers, &hash), &sig)
            .map_err(|_| AnchorError::BadSignature { seq })
    }
}

/// Why published heads cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// The file holds no head in any accepted form.
    #[error("no checkpoint head found: {0}")]
    Unreadable(String),
    /// A head is not well formed.
    #[error("published checkpoint {seq}: {reason}")]
    Malformed {
        /// The head's sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A head names another audit key than the pinned one.
    #[error(
        "published checkpoint {seq} was signed by audit key sha256 {published}, but the pinned audit key is \
         sha256 {pinned}"
    )]
    OtherKey {
        /// The head's sequence number.
        seq: u64,
        /// The fingerprint the head names.
        published: String,
        /// The pinned key's fingerprint.
        pinned: String,
    },
    /// A head's signature does not verify under the pinned key.
    #[error("published checkpoint {seq}: its signature does not verify with the pinned audit key")]
    BadSignature {
        /// The head's sequence number.
        seq: u64,
    },
    /// Two heads name the same checkpoint differently.
    #[error("two published heads for checkpoint {seq} disagree")]
    Conflicting {
        /// The sequence number.
        seq: u64,
    },
}

/// SHA-256 of a key's SubjectPublicKeyInfo (DER), hex: the audit key's fingerprint.
pub fn key_sha256(key: &p256::ecdsa::VerifyingKey) -> String {
    use p256::pkcs8::EncodePublicKey as _;
    let der = key.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    hex::encode(Sha256::digest(der))
}

fn parse_hash(text: &str) -> Option<Hash> {
    hex::decode(text).ok()?.try_into().ok()
}

/// Reads published heads in any of their forms: the answer of `GET /v1/audit/checkpoints` as is
/// (`{"checkpoints":[…]}`), a JSON array of heads, one head, or JSON lines (one head, or one
/// page, a line).
pub fn parse_heads(text: &str) -> Result<Vec<Head>, AnchorError> {
    let whole = text.trim();
    if whole.is_empty() {
        return Err(AnchorError::Unreadable("the file is empty".into()));
    }
    let heads = match serde_json::from_str::<serde_json::Value>(whole) {
        Ok(v) => heads_of(v)?,
        // Not one JSON document: JSON lines.
        Err(_) => {
            let mut heads = Vec::new();
            for (i, line) in whole.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v = serde_json::from_str(line.trim())
                    .map_err(|e| AnchorError::Unreadable(format!("line {} is not JSON: {e}", i + 1)))?;
                heads.extend(heads_of(v).map_err(|e| match e {
                    AnchorError::Unreadable(m) => AnchorError::Unreadable(format!("line {}: {m}", i + 1)),
                    e => e,
                })?);
            }
            heads
        }
    };
    if heads.is_empty() {
        return Err(AnchorError::Unreadable("the file lists no checkpoint".into()));
    }
    Ok(heads)
}

fn heads_of(v: serde_json::Value) -> Result<Vec<Head>, AnchorError> {
    let one = |v: serde_json::Value| {
        serde_json::from_value::<Head>(v)
            .map_err(|e| AnchorError::Unreadable(format!("not a checkpoint head: {e}")))
    };
    match v {
        serde_json::Value::Array(items) => items.into_iter().map(one).collect(),
        serde_json::Value::Object(mut o) if o.contains_key("checkpoints") => match o.remove("checkpoints") {
            Some(serde_json::Value::Array(items)) => items.into_iter().map(one).collect(),
            _ => Err(AnchorError::Unreadable("\"checkpoints\" is not a list".into())),
        },
        v => Ok(vec![one(v)?]),
    }
}

/// Published heads checked against the pinned key, by sequence number: what a log must agree
/// with.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    heads: BTreeMap<u64, Head>,
}

impl Anchors {
    /// Checks every head's signature under `key` (and that duplicates agree).
    pub fn new(heads: Vec<Head>, key: &p256::ecdsa::VerifyingKey) -> Result<Anchors, AnchorError> {
        let mut map = BTreeMap::new();
        for h in heads {
            h.check_signature(key)?;
            if let Some(other) = map.get(&h.seq) {
                if !same_checkpoint(other, &h) {
                    return Err(AnchorError::Conflicting { seq: h.seq });
                }
                continue;
            }
            map.insert(h.seq, h);
        }
        Ok(Anchors { heads: map })
    }

    /// How many distinct checkpoints.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// The latest published checkpoint.
    pub fn last(&self) -> Option<u64> {
        self.heads.keys().next_back().copied()
    }

    /// Checks entry `seq` (already parsed, chain-verified) against the head published for it.
    pub(super) fn check_entry(&self, seq: u64, entry: &Entry) -> Result<(), BadEntry> {
        let Some(h) = self.heads.get(&seq) else { return Ok(()) };
        let agrees = match &entry.event {
            Event::Checkpoint { covers, head, .. } => {
                *covers == h.covers && head.eq_ignore_ascii_case(&h.hash)
            }
            _ => false,
        };
        if agrees {
            Ok(())
        } else {
            Err(BadEntry {
                seq,
                reason: format!(
                    "the log disagrees with published checkpoint {seq} (which covers entry {} with hash {}): \
                     the log was cut or rewritten at or before entry {seq}",
                    h.covers, h.hash
                ),
            })
        }
    }

    /// The error for a log whose last entry is `end`, if a later checkpoint was published.
    pub(super) fn check_end(&self, end: u64) -> Result<(), BadEntry> {
        match self.last() {
            Some(m) if m > end => Err(BadEntry {
                seq: end + 1,
                reason: format!(
                    "the log ends at entry {end} but checkpoint {m} was published: entries {}..{m} are missing",
                    end + 1
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Two heads for one sequence number name the same checkpoint (the signature may be encoded
/// differently only if it is the same bytes).
fn same_checkpoint(a: &Head, b: &Head) -> bool {
    a.covers == b.covers && a.hash.eq_ignore_ascii_case(&b.hash) && a.signature == b.signature
}
