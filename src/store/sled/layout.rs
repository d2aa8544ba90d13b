//! Key layout and value encodings of the store's sled trees (see the module docs of
//! [`crate::store`] for the map). Every decoder checks bounds and returns a typed error: stored
//! bytes are never trusted to be well formed.

use super::error::StoreError;

/// Version byte leading every binary value, so a later layout can be told apart.
pub(crate) const VERSION: u8 = 1;

pub(crate) use crate::store::RecordKey;
pub(crate) use crate::store::batch::{BATCH_ID_LEN, batch_id_text, parse_batch_id};
pub(crate) use crate::store::block::{
    BLOCK, BlockWriter, Reader, decode_block, decode_payload, resolve_entry, seal_entries,
};

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn decode_seq(b: &[u8]) -> Result<u64, StoreError> {
    let a: [u8; 8] =
        b.try_into().map_err(|_| StoreError::Corrupt(format!("sequence number of {} bytes", b.len())))?;
    Ok(u64::from_be_bytes(a))
}

/// A batch's lifecycle as stored. `Deleting` is internal: the batch is invisible and being
/// purged (a crash mid-purge is finished at the next open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredState {
    Queued = 0,
    Signing = 1,
    Done = 2,
    Deleting = 3,
}

/// A batch's metadata, the value of the `batches` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub id: [u8; BATCH_ID_LEN],
    pub issuer: String,
    /// Where its idempotency key is stored ([`super::idempotency::storage_key`]), not the key.
    pub idempotency: Option<[u8; 32]>,
    pub created_at: i64,
    pub total: u32,
    pub signed: u32,
    pub rejected: u32,
    pub state: StoredState,
}

impl BatchMeta {
    /// Records of this batch still waiting for a result.
    pub fn pending(&self) -> u32 {
        self.total.saturating_sub(self.signed.saturating_add(self.rejected))
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let issuer_len = u16::try_from(self.issuer.len())
            .map_err(|_| StoreError::Invalid("issuer id longer than 65535 bytes"))?;
        let mut v = Vec::with_capacity(80 + self.issuer.len());
        v.push(VERSION);
        v.push(self.state as u8);
        v.extend_from_slice(&self.total.to_be_bytes());
        v.extend_from_slice(&self.signed.to_be_bytes());
        v.extend_from_slice(&self.rejected.to_be_bytes());
        v.extend_from_slice(&self.created_at.to_be_bytes());
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&issuer_len.to_be_bytes());
        v.extend_from_slice(self.issuer.as_bytes());
        v.push(u8::from(self.idempotency.is_some()));
        v.extend_from_slice(&self.idempotency.unwrap_or_default());
        Ok(v)
    }

    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(b, "batch metadata");
        r.version()?;
        let state = match r.u8()? {
            0 => StoredState::Queued,
            1 => StoredState::Signing,
            2 => StoredState::Done,
            3 => StoredState::Deleting,
            other => return Err(StoreError::Corrupt(format!("batch metadata: unknown state {other}"))),
        };
        let total = r.u32()?;
        let signed = r.u32()?;
        let rejected = r.u32()?;
        let created_at = i64::from_be_bytes(r.array()?);
        let id = r.array()?;
        let issuer_len = usize::from(r.u16()?);
        let issuer = r.string(issuer_len)?;
        let has_key = r.u8()? != 0;
        let key: [u8; 32] = r.array()?;
        r.end()?;
        Ok(Self {
            id,
            issuer,
            idempotency: has_key.then_some(key),
            created_at,
            total,
            signed,
            rejected,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BatchMeta {
        BatchMeta {
            id: [7; 16],
            issuer: "cdc-hanoi".into(),
            idempotency: Some([5; 32]),
            created_at: 1_700_000_000,
            total: 10_000,
            signed: 3,
            rejected: 1,
            state: StoredState::Signing,
        }
    }

    #[test]
    fn record_keys_sort_in_queue_order() {
        let keys = [RecordKey::new(1, 0), RecordKey::new(1, 1), RecordKey::new(1, 256), RecordKey::new(2, 0)];
        for w in keys.windows(2) {
            assert!(w[0] < w[1] && w[0].to_bytes() < w[1].to_bytes());
        }
        for k in keys {
            assert_eq!(RecordKey::from_bytes(&k.to_bytes()).unwrap(), k);
        }
        assert!(RecordKey::from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let m = meta();
        let b = m.encode().unwrap();
        assert_eq!(BatchMeta::decode(&b).unwrap(), m);
        let none = BatchMeta { idempotency: None, ..m };
        assert_eq!(BatchMeta::decode(&none.encode().unwrap()).unwrap(), none);
        for cut in 0..b.len() {
            assert!(matches!(BatchMeta::decode(&b[..cut]), Err(StoreError::Corrupt(_))), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 9;
        assert!(BatchMeta::decode(&bad).is_err());
        let mut bad = b;
        bad[1] = 200;
        assert!(BatchMeta::decode(&bad).is_err());
    }

    #[test]
    fn batch_ids_parse_only_in_canonical_form() {
        let id = [0xab; 16];
        let text = batch_id_text(&id);
        assert_eq!(text.len(), 32);
        assert_eq!(parse_batch_id(&text), Some(id));
        assert_eq!(parse_batch_id(&text.to_uppercase()), None);
        assert_eq!(parse_batch_id("../../etc/passwd"), None);
        assert_eq!(parse_batch_id(""), None);
        assert_eq!(parse_batch_id(&"é".repeat(16)), None);
    }
}
