//! What the API says about a batch, whatever the backend keeps it in.

use serde::Serialize;

/// Length of a batch id in bytes (128 random bits; the API shows it as 32 hex digits).
pub(crate) const BATCH_ID_LEN: usize = 16;

/// The batch id as handed to issuers: 32 lowercase hex characters (URL-safe).
pub(crate) fn batch_id_text(id: &[u8; BATCH_ID_LEN]) -> String {
    hex::encode(id)
}

/// Parses a batch id from a URL; anything not of our exact form is simply not found.
pub(crate) fn parse_batch_id(text: &str) -> Option<[u8; BATCH_ID_LEN]> {
    if text.len() != 2 * BATCH_ID_LEN || text.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let mut id = [0u8; BATCH_ID_LEN];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(id)
}

/// A batch's state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Accepted, no result yet.
    Queued,
    /// Some records have results.
    Signing,
    /// Every record is signed or rejected.
    Done,
}

impl BatchState {
    /// The name used in the API: `queued`, `signing` or `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Signing => "signing",
            Self::Done => "done",
        }
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStatus {
    /// The batch id.
    pub batch_id: String,
    /// Its state.
    pub state: BatchState,
    /// Records in the batch.
    pub total: u32,
    /// Records signed.
    pub signed: u32,
    /// Records rejected.
    pub rejected: u32,
    /// When it was accepted (Unix seconds).
    pub created_at: i64,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The batch id to give the issuer.
    pub batch_id: String,
    /// False when the idempotency key named an existing batch, which is returned instead.
    pub created: bool,
    /// Records in the batch.
    pub total: u32,
    /// Where the batch stands now (for a replay: its real state and counts).
    pub status: BatchStatus,
}
