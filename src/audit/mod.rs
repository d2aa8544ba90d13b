//! The tamper-evident audit log: what is recorded (every key operation, every signature released,
//! signed checkpoints), how entries are chained, and how a chain is checked.
//!
//! This module is pure: the store keeps the entries (`store::audit`), the HSM signs checkpoints,
//! and `hcert-signer audit verify` feeds a log back through [`verify_chain`].
//!
//! # Chain
//!
//! Entry `n` is stored under its sequence number as `hash_n ‖ body_n`, where `body_n` is the
//! entry's JSON ([`Entry`], carrying `n` itself) and `hash_n = SHA-256(hash_{n-1} ‖ body_n)`, with
//! `hash_0` all zeros. Editing a body breaks its own hash; deleting or moving an entry breaks the
//! sequence; rewriting every later hash to hide an edit breaks the next checkpoint, an entry whose
//! ES256 signature by the audit key (held in the HSM, never exported) covers the chain head.
//!
//! No personal data is written: references and UVCIs appear only as truncated SHA-256 hashes.

pub mod anchor;
pub mod revocation;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A chain hash.
pub type Hash = [u8; 32];

/// The hash "before" the first entry.
pub const GENESIS: Hash = [0; 32];

/// Sequence number of the first entry.
pub const FIRST_SEQ: u64 = 1;

/// The first 128 bits of SHA-256 — the EU revocation hash, also used for references.
pub fn hash128(data: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(data);
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// RFC 3339 text of Unix seconds (the number itself if it is out of range).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// One signature released by the appliance, without personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// First 128 bits of SHA-256 over the issuer's record reference, base64.
    pub ref_hash: String,
    /// First 128 bits of SHA-256 over the UVCI (the EU revocation "UCI" hash), base64.
    pub uci_hash: String,
    /// First 128 bits of SHA-256 over the signature — for ES256 over `r` only (the EU revocation
    /// "SIGNATURE" hash), base64.
    pub sig_hash: String,
    /// First 128 bits of SHA-256 over the issuing country (the CWT `iss`) followed by the UVCI
    /// (the EU revocation "COUNTRYCODEUCI" hash), base64. Empty in entries written before it was
    /// recorded: those certificates are revoked by their other two hashes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cc_uci_hash: String,
    /// The signing DSC's kid, base64.
    pub kid: String,
    /// The certificate's expiry, Unix seconds (revocation entries are kept until then).
    pub exp: i64,
}

impl SignedRecord {
    /// The facts of one signature: `signature` is the raw COSE signature (`r‖s` for ES256),
    /// `country` the certificate's issuing country (its CWT `iss`).
    pub fn new(
        r#ref: &str,
        country: &str,
        uvci: &str,
        signature: &[u8],
        kid_b64: &str,
        exp: i64,
    ) -> SignedRecord {
        SignedRecord {
            ref_hash: B64.encode(hash128(r#ref.as_bytes())),
            uci_hash: B64.encode(hash128(uvci.as_bytes())),
            sig_hash: B64.encode(signature_hash(signature)),
            cc_uci_hash: B64.encode(hash128(format!("{country}{uvci}").as_bytes())),
            kid: kid_b64.to_owned(),
            exp,
        }
    }

    /// The same facts read back from a released `HC1:` string (for results committed without
    /// them, so that no signature ever escapes the log).
    pub fn from_hc1(r#ref: &str, uvci: &str, hc1: &str, kid_b64: &str, exp: i64) -> Option<SignedRecord> {
        let cose = crate::hcert::transport::decode(hc1).ok()?;
        let parsed = crate::hcert::cose::parse(&cose).ok()?;
        let country = crate::hcert::cwt::decode(&parsed.payload).ok()?.iss?;
        Some(SignedRecord::new(r#ref, &country, uvci, &parsed.signature, kid_b64, exp))
    }
}

/// The EU revocation signature hash: SHA-256 over `r` for a 64-byte ES256 signature, over the
/// whole signature otherwise (RSA-PSS), truncated to 128 bits.
pub fn signature_hash(signature: &[u8]) -> [u8; 16] {
    if signature.len() == 64 { hash128(&signature[..32]) } else { hash128(signature) }
}

/// What a key operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// A key pair was generated in the HSM.
    Generated,
    /// A CSR was produced.
    CsrIssued,
    /// A DSC certificate was imported.
    CertificateImported,
    /// An officer approved activation.
    Approved,
    /// The key became active (the second officer's approval, or the configuration's bootstrap).
    Activated,
    /// The key was retired.
    Retired,
    /// An officer asked to retire the last key covering a certificate type; a second officer's
    /// request completes the retirement.
    RetirementApproved,
    /// A CSCA was recorded as the country's (at the store's first start, or by two officers).
    CscaRecorded,
    /// An officer asked to add a CSCA; a second officer's request adds it.
    CscaApproved,
    /// An upload message (CMS) for the EU gateway was signed.
    UploadSigned,
    /// Revocation entries were exported (no key is concerned).
    RevocationExported,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Signatures released for one batch (or one synchronous request, batch `"sync"`).
    Signed {
        /// The batch id.
        batch: String,
        /// The client identity (issuer account) the batch belongs to.
        client: String,
        /// One entry per signature.
        records: Vec<SignedRecord>,
    },
    /// A key lifecycle operation.
    Key {
        /// What was done.
        action: KeyAction,
        /// The key's HSM label.
        label: String,
        /// Who did it: the officer's client identity, or `config`/`dev-init` for bootstraps.
        officer: String,
        /// The DSC's kid, base64, once known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kid: Option<String>,
        /// More: the CSR subject, the state reached, why.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
    /// The daemon started with this audit key.
    Started {
        /// The audit key's HSM label.
        audit_key: String,
        /// The binary's version.
        version: String,
    },
    /// A signed checkpoint over the chain so far.
    Checkpoint {
        /// The sequence number of the last entry covered (the one before this).
        covers: u64,
        /// That entry's chain hash, hex.
        head: String,
        /// ES256 signature (raw `r‖s`, base64) by the audit key over [`checkpoint_message`].
        signature: String,
    },
}

/// One entry as stored: its sequence number, its time and the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number, from [`FIRST_SEQ`], without gaps.
    pub seq: u64,
    /// When it was written, Unix seconds.
    pub time: i64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

impl Entry {
    /// The stored form `hash ‖ body` after `prev`, and the new chain hash.
    pub fn seal(&self, prev: &Hash) -> (Vec<u8>, Hash) {
        // Serializing plain strings and integers cannot fail.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let hash = chain_hash(prev, &body);
        let mut stored = Vec::with_capacity(32 + body.len());
        stored.extend_from_slice(&hash);
        stored.extend_from_slice(&body);
        (stored, hash)
    }
}

/// `SHA-256(prev ‖ body)`.
pub fn chain_hash(prev: &Hash, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// The bytes a checkpoint signs: a fixed context, the covered sequence number and its hash.
pub fn checkpoint_message(covers: u64, head: &Hash) -> Vec<u8> {
    let mut m = b"hcert-signer audit checkpoint v1\0".to_vec();
    m.extend_from_slice(&covers.to_be_bytes());
    m.extend_from_slice(head);
    m
}

/// What a good chain contains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Entries checked.
    pub entries: u64,
    /// Signatures recorded.
    pub signatures: u64,
    /// Key operations recorded.
    pub key_events: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The last entry covered by a checkpoint (0: none).
    pub anchored_through: u64,
    /// The last checkpoint's own sequence number (0: none).
    pub last_checkpoint: u64,
    /// Entries after the last checkpoint: intact as a chain, but a truncation of these could
    /// not be told apart from a log that ended earlier.
    pub unanchored: u64,
    /// Published checkpoint heads (`--anchor`) the log was checked against (0: none given, so a
    /// log cut back to just after any checkpoint would verify too).
    pub published_checked: u64,
}

/// The first entry that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {reason}")]
pub struct BadEntry {
    /// Its sequence number (where it is, or should be).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks a log given as `(stored key, stored value)` in key order. `audit_key` verifies the
/// checkpoints. Stops at the first bad entry.
pub fn verify_chain<I>(entries: I, audit_key: &p256::ecdsa::VerifyingKey) -> Result<Summary, BadEntry>
where
    I: IntoIterator<Item = Result<(u64, Vec<u8>), BadEntry>>,
{
    verify_chain_anchored(entries, audit_key, &anchor::Anchors::default())
}

/// [`verify_chain`], and the log must also agree with every published checkpoint head in
/// `anchors` (already checked against the same key) and reach the last of them: a log cut back
/// to just after an earlier checkpoint fails, naming the missing entries.
pub fn verify_chain_anchored<I>(
    entries: I,
    audit_key: &p256::ecdsa::VerifyingKey,
    anchors: &anchor::Anchors,
) -> Result<Summary, BadEntry>
where
    I: IntoIterator<Item = Result<(u64, Vec<u8>), BadEntry>>,
{
    use p256::ecdsa::signature::Verifier as _;
    let mut summary = Summary::default();
    let mut prev = GENESIS;
    let mut expected = FIRST_SEQ;
    for item in entries {
        let (seq, stored) = item?;
        let bad = |reason: String| BadEntry { seq, reason };
        if seq != expected {
            return Err(BadEntry {
                seq: expected,
                reason: if seq > expected {
                    format!("missing (the log jumps from entry {} to entry {seq})", expected - 1)
                } else {
                    format!("out of order (entry {seq} follows entry {})", expected - 1)
                },
            });
        }
        if stored.len() < 32 {
            return Err(bad("truncated".into()));
        }
        let (hash, body) = stored.split_at(32);
        let entry: Entry = serde_json::from_slice(body).map_err(|e| bad(format!("unreadable: {e}")))?;
        if entry.seq != seq {
            return Err(bad(format!("its content is entry {}'s (entries were moved or swapped)", entry.seq)));
        }
        let computed = chain_hash(&prev, body);
        if hash != computed {
            return Err(bad("its content or its link to the previous entry was changed".into()));
        }
        match &entry.event {
            Event::Signed { records, .. } => summary.signatures += records.len() as u64,
            Event::Key { .. } => summary.key_events += 1,
            Event::Started { .. } => {}
            Event::Checkpoint { covers, head, signature } => {
                if *covers != seq - 1 || *head != hex::encode(prev) {
                    return Err(bad("checkpoint does not name the entry before it".into()));
                }
                let sig = B64
                    .decode(signature)
                    .ok()
                    .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
                    .ok_or_else(|| bad("checkpoint signature is malformed".into()))?;
                audit_key
                    .verify(&checkpoint_message(*covers, &prev), &sig)
                    .map_err(|_| bad("checkpoint signature does not verify with the audit key".into()))?;
                summary.checkpoints += 1;
                summary.anchored_through = *covers;
                summary.last_checkpoint = seq;
            }
        }
        anchors.check_entry(seq, &entry)?;
        summary.entries += 1;
        prev = computed;
        expected = seq + 1;
    }
    // Entries run 1..=entries without gaps, so the last sequence number is the count.
    anchors.check_end(summary.entries)?;
    summary.published_checked = anchors.len() as u64;
    summary.unanchored = summary.entries - summary.last_checkpoint;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{SigningKey, signature::Signer as _};

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7; 32]).unwrap()
    }

    /// A log of `n` entries with a checkpoint at the end.
    fn log(n: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut prev = GENESIS;
        for seq in FIRST_SEQ..=n {
            let event = if seq == n {
                let sig: p256::ecdsa::Signature = key().sign(&checkpoint_message(seq - 1, &prev));
                Event::Checkpoint {
                    covers: seq - 1,
                    head: hex::encode(prev),
                    signature: B64.encode(sig.to_bytes()),
                }
            } else {
                Event::Signed {
                    batch: "b".into(),
                    client: "issuer".into(),
                    records: vec![SignedRecord::new("r", "VN", "URN:UVCI:01:VN:X", &[1; 64], "a2lk", 9)],
                }
            };
            let (stored, hash) = Entry { seq, time: 100, event }.seal(&prev);
            out.push((seq, stored));
            prev = hash;
        }
        out
    }

    fn check(entries: Vec<(u64, Vec<u8>)>) -> Result<Summary, BadEntry> {
        verify_chain(entries.into_iter().map(Ok), key().verifying_key())
    }

    #[test]
    fn a_sealed_log_verifies() {
        let s = check(log(6)).unwrap();
        assert_eq!(
            (s.entries, s.signatures, s.checkpoints, s.anchored_through, s.unanchored),
            (6, 5, 1, 5, 0)
        );
        let mut longer = log(6);
        longer.truncate(5);
        assert_eq!(check(longer).unwrap().unanchored, 5);
        assert_eq!(check(Vec::new()).unwrap(), Summary::default());
    }

    #[test]
    fn edits_deletions_and_swaps_name_the_first_bad_entry() {
        let mut edited = log(6);
        let text = String::from_utf8(edited[2].1[32..].to_vec()).unwrap().replace("issuer", "issuex");
        edited[2].1.truncate(32);
        edited[2].1.extend_from_slice(text.as_bytes());
        assert_eq!(check(edited).unwrap_err().seq, 3);

        let mut deleted = log(6);
        deleted.remove(3);
        let e = check(deleted).unwrap_err();
        assert_eq!(e.seq, 4, "{e}");
        assert!(e.reason.contains("missing"), "{e}");

        let mut swapped = log(6);
        let (a, b) = (swapped[1].1.clone(), swapped[2].1.clone());
        swapped[1].1 = b;
        swapped[2].1 = a;
        let e = check(swapped).unwrap_err();
        assert_eq!(e.seq, 2, "{e}");
        assert!(e.reason.contains("swapped"), "{e}");
    }

    #[test]
    fn rewriting_every_later_hash_is_caught_by_the_checkpoint() {
        let mut l = log(6);
        // Re-seal entries 2.. with an edited entry 2: the chain is self-consistent again.
        let mut prev = chain_hash(&GENESIS, &l[0].1[32..]);
        for (i, item) in l.iter_mut().enumerate().take(5).skip(1) {
            let mut entry: Entry = serde_json::from_slice(&item.1[32..]).unwrap();
            if i == 1 {
                entry.time = 999;
            }
            let (stored, hash) = entry.seal(&prev);
            item.1 = stored;
            prev = hash;
        }
        let cp: Entry = serde_json::from_slice(&l[5].1[32..]).unwrap();
        l[5].1 = cp.seal(&prev).0;
        let e = check(l).unwrap_err();
        assert_eq!(e.seq, 6, "{e}");
    }

    /// The published heads of a log's checkpoints.
    fn heads(log: &[(u64, Vec<u8>)]) -> Vec<anchor::Head> {
        let fp = anchor::key_sha256(key().verifying_key());
        log.iter().filter_map(|(_, stored)| anchor::Head::from_stored(stored, "audit", &fp)).collect()
    }

    /// `n` entries with a checkpoint after every third.
    fn checkpointed(n: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut prev = GENESIS;
        for seq in FIRST_SEQ..=n {
            let event = if seq % 4 == 0 {
                let sig: p256::ecdsa::Signature = key().sign(&checkpoint_message(seq - 1, &prev));
                Event::Checkpoint {
                    covers: seq - 1,
                    head: hex::encode(prev),
                    signature: B64.encode(sig.to_bytes()),
                }
            } else {
                Event::Started { audit_key: "audit".into(), version: "1".into() }
            };
            let (stored, hash) = Entry { seq, time: 100, event }.seal(&prev);
            out.push((seq, stored));
            prev = hash;
        }
        out
    }

    fn check_anchored(entries: Vec<(u64, Vec<u8>)>, heads: Vec<anchor::Head>) -> Result<Summary, BadEntry> {
        let anchors = anchor::Anchors::new(heads, key().verifying_key()).unwrap();
        verify_chain_anchored(entries.into_iter().map(Ok), key().verifying_key(), &anchors)
    }

    #[test]
    fn a_log_cut_back_to_a_checkpoint_fails_against_the_published_heads() {
        let full = checkpointed(13);
        let published = heads(&full);
        assert_eq!(published.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![4, 8, 12]);
        let s = check_anchored(full.clone(), published.clone()).unwrap();
        assert_eq!((s.entries, s.published_checked, s.unanchored), (13, 3, 1));

        // Cut back to just after checkpoint 4: the chain alone is fine, the anchors are not.
        let cut: Vec<_> = full.iter().take(4).cloned().collect();
        assert_eq!(check(cut.clone()).unwrap().unanchored, 0);
        let e = check_anchored(cut, published.clone()).unwrap_err();
        assert_eq!(e.seq, 5);
        assert_eq!(
            e.reason,
            "the log ends at entry 4 but checkpoint 12 was published: entries 5..12 are missing"
        );

        // Cut to just before the last checkpoint.
        let e = check_anchored(full.iter().take(11).cloned().collect(), published.clone()).unwrap_err();
        assert!(e.reason.contains("entries 12..12 are missing"), "{e}");

        // Cut after checkpoint 8 and grown again: entry 12 is not the published checkpoint.
        let mut regrown: Vec<_> = full.iter().take(8).cloned().collect();
        let mut prev: Hash = regrown[7].1[..32].try_into().unwrap();
        for seq in 9..=13 {
            let (stored, hash) = Entry {
                seq,
                time: 200,
                event: Event::Started { audit_key: "x".into(), version: "2".into() },
            }
            .seal(&prev);
            regrown.push((seq, stored));
            prev = hash;
        }
        let e = check_anchored(regrown, published).unwrap_err();
        assert_eq!(e.seq, 12);
        assert!(e.reason.contains("disagrees with published checkpoint 12"), "{e}");
    }

    #[test]
    fn published_heads_must_verify_under_the_pinned_key() {
        let mut published = heads(&checkpointed(8));
        let other = SigningKey::from_slice(&[9; 32]).unwrap();
        // Another key's heads name another fingerprint.
        let e = anchor::Anchors::new(published.clone(), other.verifying_key()).unwrap_err();
        assert!(matches!(e, anchor::AnchorError::OtherKey { seq: 4, .. }), "{e}");
        // A forged head claiming the pinned key.
        published[1].hash = hex::encode([1u8; 32]);
        let e = anchor::Anchors::new(published, key().verifying_key()).unwrap_err();
        assert_eq!(e, anchor::AnchorError::BadSignature { seq: 8 });
    }

    #[test]
    fn anchor_files_come_as_a_page_an_array_one_head_or_lines() {
        let published = heads(&checkpointed(8));
        let page = serde_json::json!({ "checkpoints": published, "next": null }).to_string();
        let array = serde_json::to_string(&published).unwrap();
        let one = published[1].to_json();
        let lines = published.iter().map(anchor::Head::to_json).collect::<Vec<_>>().join("\n") + "\n";
        for (text, n) in [(&page, 2), (&array, 2), (&one, 1), (&lines, 2)] {
            assert_eq!(anchor::parse_heads(text).unwrap().len(), n, "{text}");
        }
        for bad in ["", "[]", "{\"seq\":1}", "not json\n"] {
            assert!(matches!(anchor::parse_heads(bad), Err(anchor::AnchorError::Unreadable(_))), "{bad}");
        }
    }

    #[test]
    fn signature_hash_covers_r_only_for_es256() {
        let mut sig = [3u8; 64];
        let h = signature_hash(&sig);
        sig[40] = 9; // s changes (e.g. low-S normalisation): same revocation hash
        assert_eq!(signature_hash(&sig), h);
        sig[0] = 9;
        assert_ne!(signature_hash(&sig), h);
        assert_eq!(signature_hash(&[1; 256]), hash128(&[1; 256]));
    }
}
