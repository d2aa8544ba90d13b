//! Key layout and value encodings of the store's sled trees (see the module docs of
//! [`crate::store`] for the map). Every decoder checks bounds and returns a typed error: stored
//! bytes are never trusted to be well formed.

use super::error::StoreError;

/// Version byte leading every binary value, so a later layout can be told apart.
const VERSION: u8 = 1;

/// Length of a batch id in bytes (128 random bits).
pub(crate) const BATCH_ID_LEN: usize = 16;

/// One record's place in the work queue: the batch's sequence number, then the record's index
/// in the batch. Stored big-endian, so sled's byte order is submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    seq: u64,
    index: u32,
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
        Ok(Self { seq: u64::from_be_bytes(to_array(seq)), index: u32::from_be_bytes(to_array(index)) })
    }

    /// The key right after this one, where a scan resumes.
    pub(crate) fn successor(self) -> Self {
        match self.index.checked_add(1) {
            Some(index) => Self { seq: self.seq, index },
            None => Self { seq: self.seq.saturating_add(1), index: 0 },
        }
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.seq, self.index)
    }
}

fn to_array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn decode_seq(b: &[u8]) -> Result<u64, StoreError> {
    let a: [u8; 8] =
        b.try_into().map_err(|_| StoreError::Corrupt(format!("sequence number of {} bytes", b.len())))?;
    Ok(u64::from_be_bytes(a))
}

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

/// The idempotency tree's key: the issuer (length-prefixed, so no two (issuer, key) pairs
/// collide) followed by the issuer's key.
pub(crate) fn idempotency_key(issuer: &str, key: &str) -> Result<Vec<u8>, StoreError> {
    let len =
        u16::try_from(issuer.len()).map_err(|_| StoreError::Invalid("issuer id longer than 65535 bytes"))?;
    let mut k = Vec::with_capacity(2 + issuer.len() + key.len());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(issuer.as_bytes());
    k.extend_from_slice(key.as_bytes());
    Ok(k)
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
    pub idempotency_key: Option<String>,
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
        let key = self.idempotency_key.as_deref().unwrap_or("");
        let key_len = u16::try_from(key.len())
            .map_err(|_| StoreError::Invalid("idempotency key longer than 65535 bytes"))?;
        let mut v = Vec::with_capacity(48 + self.issuer.len() + key.len());
        v.push(VERSION);
        v.push(self.state as u8);
        v.extend_from_slice(&self.total.to_be_bytes());
        v.extend_from_slice(&self.signed.to_be_bytes());
        v.extend_from_slice(&self.rejected.to_be_bytes());
        v.extend_from_slice(&self.created_at.to_be_bytes());
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&issuer_len.to_be_bytes());
        v.extend_from_slice(self.issuer.as_bytes());
        v.push(u8::from(self.idempotency_key.is_some()));
        v.extend_from_slice(&key_len.to_be_bytes());
        v.extend_from_slice(key.as_bytes());
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
        let key_len = usize::from(r.u16()?);
        let key = r.string(key_len)?;
        r.end()?;
        Ok(Self {
            id,
            issuer,
            idempotency_key: has_key.then_some(key),
            created_at,
            total,
            signed,
            rejected,
            state,
        })
    }
}

/// A record's payload as queued: its reference and the DCC JSON, as given.
pub(crate) fn encode_payload(r#ref: &str, dcc_json: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len =
        u16::try_from(r#ref.len()).map_err(|_| StoreError::Invalid("record ref longer than 65535 bytes"))?;
    let mut v = Vec::with_capacity(3 + r#ref.len() + dcc_json.len());
    v.push(VERSION);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(r#ref.as_bytes());
    v.extend_from_slice(dcc_json);
    Ok(v)
}

/// The inverse of [`encode_payload`]: `(ref, dcc_json)`.
pub(crate) fn decode_payload(b: &[u8]) -> Result<(String, Vec<u8>), StoreError> {
    let mut r = Reader::new(b, "record payload");
    r.version()?;
    let len = usize::from(r.u16()?);
    let r#ref = r.string(len)?;
    Ok((r#ref, r.rest().to_vec()))
}

/// A bounds-checked cursor over a stored value.
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Self { b, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.b.len() < n {
            return Err(StoreError::Corrupt(format!("{}: truncated", self.what)));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        self.take(N).map(to_array)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn version(&mut self) -> Result<(), StoreError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(StoreError::Corrupt(format!("{}: unknown format version {v}", self.what))),
        }
    }

    fn string(&mut self, n: usize) -> Result<String, StoreError> {
        let what = self.what;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("{what}: text is not UTF-8")))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!("{}: trailing bytes", self.what)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BatchMeta {
        BatchMeta {
            id: [7; 16],
            issuer: "cdc-hanoi".into(),
            idempotency_key: Some("k-1".into()),
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
        assert_eq!(RecordKey::new(3, u32::MAX).successor(), RecordKey::new(4, 0));
        assert!(RecordKey::from_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let m = meta();
        let b = m.encode().unwrap();
        assert_eq!(BatchMeta::decode(&b).unwrap(), m);
        let none = BatchMeta { idempotency_key: None, ..m };
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
    fn payload_round_trips_and_rejects_damage() {
        let b = encode_payload("ref-ü", br#"{"ver":"1.3.0"}"#).unwrap();
        let (r, dcc) = decode_payload(&b).unwrap();
        assert_eq!((r.as_str(), dcc.as_slice()), ("ref-ü", &br#"{"ver":"1.3.0"}"#[..]));
        assert!(decode_payload(&b[..4]).is_err());
        assert!(decode_payload(&[]).is_err());
        assert!(decode_payload(&[1, 0, 2, 0xff, 0xfe]).is_err(), "not UTF-8");
        assert!(encode_payload(&"x".repeat(70_000), b"{}").is_err());
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

    #[test]
    fn idempotency_keys_do_not_collide_across_issuers() {
        assert_ne!(idempotency_key("a", "bc").unwrap(), idempotency_key("ab", "c").unwrap());
    }
}
