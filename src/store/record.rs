//! What goes into the store and what comes out per record: submitted records, claimed work
//! items, and the result that is streamed back to the issuer as one NDJSON line.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::StoreError;
use crate::audit::SignedRecord;

/// Largest `dcc` signed, in bytes of JSON text. A real DCC is well under 2 KiB, and one of this
/// size no longer fits a QR code once signed; the bound also keeps the store's values small
/// (see `store::sled::SEGMENT_SIZE`).
pub const MAX_DCC_BYTES: usize = 8 << 10;

/// What is stored in place of a `dcc` over [`MAX_DCC_BYTES`]: the record keeps its place in its
/// batch and is rejected `dcc_too_large` in the results, while the payload itself is never kept.
/// Not JSON (it starts with NUL, which JSON text never does), so no issuer's DCC is mistaken
/// for it.
pub const OVERSIZE_DCC: &[u8] = b"\0dcc_too_large";

/// One record as submitted: the issuer's reference and the DCC JSON text, stored as given.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// The issuer's reference for the record (the API keeps it to 128 characters).
    pub r#ref: &'a str,
    /// The DCC payload as JSON text (the API passes a `RawValue`'s text; the pipeline re-parses).
    pub dcc_json: &'a [u8],
}

/// A pending record handed to a signing worker by [`Store::claim`](super::Store::claim).
#[derive(Debug, Clone)]
pub struct WorkItem {
    /// Where the record sits in the queue; give it back to `commit` or `release`.
    pub key: RecordKey,
    /// The batch it belongs to (as the issuer knows it).
    pub batch_id: String,
    /// The issuer that submitted it (for the audit log).
    pub issuer_id: String,
    /// The issuer's reference, to be copied into the result.
    pub r#ref: String,
    /// The DCC JSON as submitted.
    pub dcc_json: Vec<u8>,
    /// When the batch was accepted (Unix seconds), for the accepted → signed latency.
    pub accepted_at: i64,
}

/// Why a record was rejected: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// Stable code, e.g. `schema`, `uvci`, `no_key`.
    pub code: String,
    /// What is wrong with the record (never the payload's personal data itself).
    pub message: String,
}

/// A record's final result, serialized exactly as the API streams it, one JSON object a line:
/// `{"ref","status":"signed","hc1","uvci","kid","iat","exp"}` or
/// `{"ref","status":"rejected","error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum RecordResult {
    /// The record was signed.
    Signed {
        /// The issuer's reference.
        r#ref: String,
        /// The `HC1:` string that goes into the QR code.
        hc1: String,
        /// The certificate's UVCI (assigned by the signer if the DCC had none).
        uvci: String,
        /// The signing DSC's kid, base64 (standard alphabet, padded).
        kid: String,
        /// Issued-at, Unix seconds.
        iat: i64,
        /// Expiry, Unix seconds.
        exp: i64,
    },
    /// The record could not be signed; the rest of its batch is unaffected.
    Rejected {
        /// The issuer's reference.
        r#ref: String,
        /// Why.
        error: RecordError,
    },
}

impl RecordResult {
    /// The issuer's reference the result belongs to.
    pub fn r#ref(&self) -> &str {
        match self {
            Self::Signed { r#ref, .. } | Self::Rejected { r#ref, .. } => r#ref,
        }
    }

    /// True for a signed record.
    pub fn is_signed(&self) -> bool {
        matches!(self, Self::Signed { .. })
    }

    /// The compact JSON line (without the newline) as stored and streamed.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing owned strings and integers into a Vec cannot fail; the fallback keeps the
        // function total without a panic path.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

// Hand-written so the fields come out in the documented order ("ref" first, then "status"),
// which a derived internally-tagged enum would not do.
impl Serialize for RecordResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Signed { r#ref, hc1, uvci, kid, iat, exp } => {
                let mut m = s.serialize_struct("RecordResult", 7)?;
                m.serialize_field("ref", r#ref)?;
                m.serialize_field("status", "signed")?;
                m.serialize_field("hc1", hc1)?;
                m.serialize_field("uvci", uvci)?;
                m.serialize_field("kid", kid)?;
                m.serialize_field("iat", iat)?;
                m.serialize_field("exp", exp)?;
                m.end()
            }
            Self::Rejected { r#ref, error } => {
                let mut m = s.serialize_struct("RecordResult", 3)?;
                m.serialize_field("ref", r#ref)?;
                m.serialize_field("status", "rejected")?;
                m.serialize_field("error", error)?;
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_serializes_exactly_as_documented() {
        let r = RecordResult::Signed {
            r#ref: "p-1".into(),
            hc1: "HC1:6BF".into(),
            uvci: "URN:UVCI:01:VN:ABC#X".into(),
            kid: "3lTmAZX19GQ=".into(),
            iat: 1_700_000_000,
            exp: 1_731_536_000,
        };
        let json = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"ref":"p-1","status":"signed","hc1":"HC1:6BF","uvci":"URN:UVCI:01:VN:ABC#X","kid":"3lTmAZX19GQ=","iat":1700000000,"exp":1731536000}"#
        );
        assert_eq!(serde_json::from_str::<RecordResult>(&json).unwrap(), r);
        assert!(r.is_signed() && r.r#ref() == "p-1");
    }

    #[test]
    fn rejected_serializes_exactly_as_documented() {
        let r = RecordResult::Rejected {
            r#ref: "p-\"2\"".into(),
            error: RecordError { code: "schema".into(), message: "dob: not a date".into() },
        };
        let json = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"ref":"p-\"2\"","status":"rejected","error":{"code":"schema","message":"dob: not a date"}}"#
        );
        assert_eq!(serde_json::from_str::<RecordResult>(&json).unwrap(), r);
        assert!(!r.is_signed());
    }
}

/// One record's place in the work queue: the batch's sequence number, then the record's index
/// in the batch. Stored big-endian, so sled's byte order is submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    pub(crate) seq: u64,
    pub(crate) index: u32,
}

impl RecordKey {
    pub(crate) fn new(seq: u64, index: u32) -> Self {
        Self { seq, index }
    }

    /// The batch's sequence number (monotonic over the store's life, not its id).
    pub fn batch_seq(&self) -> u64 {
        self.seq
    }

    /// The record's index in its batch (0-based, the order of the submitted `records`).
    pub fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn to_bytes(self) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&self.seq.to_be_bytes());
        k[8..].copy_from_slice(&self.index.to_be_bytes());
        k
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Result<Self, StoreError> {
        let b: &[u8; 12] =
            b.try_into().map_err(|_| StoreError::Corrupt(format!("record key of {} bytes", b.len())))?;
        let (seq, index) = b.split_at(8);
        Ok(Self {
            seq: u64::from_be_bytes(seq.try_into().unwrap_or_default()),
            index: u32::from_be_bytes(index.try_into().unwrap_or_default()),
        })
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.seq, self.index)
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Results stored (each record's first and only one).
    pub applied: usize,
    /// Of those, signed.
    pub signed: usize,
    /// Of those, rejected.
    pub rejected: usize,
    /// Records that already had a result: skipped, the stored result kept.
    pub duplicates: usize,
    /// Records whose batch was deleted or expired meanwhile (or that never existed): dropped.
    pub orphaned: usize,
    /// Batches this commit completed.
    pub batches_done: usize,
}

/// A record's result as a worker hands it to [`crate::store::Store::commit`], with the audit facts of its
/// signature when the worker has them (otherwise the store reads them back from the `HC1:`).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The record.
    pub key: RecordKey,
    /// Its result.
    pub result: RecordResult,
    /// For a signed result: what the audit log records of the signature.
    pub audit: Option<SignedRecord>,
}

impl From<(RecordKey, RecordResult)> for Outcome {
    fn from((key, result): (RecordKey, RecordResult)) -> Self {
        Outcome { key, result, audit: None }
    }
}

impl Outcome {
    /// The audit facts of a signed result (`None` for a rejection).
    pub(crate) fn audit_record(&self) -> Option<SignedRecord> {
        let RecordResult::Signed { r#ref, hc1, uvci, kid, exp, .. } = &self.result else { return None };
        if let Some(a) = &self.audit {
            return Some(a.clone());
        }
        Some(SignedRecord::from_hc1(r#ref, uvci, hc1, kid, *exp).unwrap_or_else(|| {
            // Our own HC1 always decodes; if it ever did not, the signature is still recorded.
            log::error!("store: a signed result's HC1 does not decode; audited without its signature hash");
            SignedRecord { cc_uci_hash: String::new(), ..SignedRecord::new(r#ref, "", uvci, &[], kid, *exp) }
        }))
    }
}

/// Counts what a commit made durable: signatures by kid, rejections by code, accepted → signed
/// latency, batches completed.
pub(crate) fn observe_commit<'a>(
    results: &[Outcome],
    fact: impl Fn(usize) -> Option<&'a SignedRecord>,
    applied: &[(usize, i64)],
    batches_done: usize,
) {
    let m = crate::metrics::get();
    let now = crate::metrics::now_secs();
    for &(i, accepted_at) in applied {
        match (fact(i), &results[i].result) {
            (Some(fact), _) => {
                m.signatures.with_label_values(&[fact.kid.as_str()]).inc();
                m.record_latency.observe((now - accepted_at as f64).max(0.0));
            }
            (None, RecordResult::Rejected { error, .. }) => {
                m.rejected.with_label_values(&[error.code.as_str()]).inc();
            }
            (None, RecordResult::Signed { .. }) => {}
        }
    }
    m.batches.with_label_values(&["done"]).inc_by(batches_done as u64);
}
