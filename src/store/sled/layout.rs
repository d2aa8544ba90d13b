//! Key layout and value encodings of the store's sled trees (see the module docs of
//! [`crate::store`] for the map). Every decoder checks bounds and returns a typed error: stored
//! bytes are never trusted to be well formed.

use super::error::StoreError;

/// Version byte leading every binary value, so a later layout can be told apart.
const VERSION: u8 = 1;

pub(crate) use crate::store::RecordKey;
pub(crate) use crate::store::batch::BATCH_ID_LEN;

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

/// Records per stored block. Payloads and results live in sled as one value per block of
/// consecutive records of a batch (a record's block is `index / BLOCK`), not one per record:
/// sled pays a copy-on-write node update and a log entry per key written, which made the
/// store the largest cost of signing a record; per block it is paid once for 16 records.
/// Kept in the schema: changing it changes the layout.
pub(crate) const BLOCK: u32 = 16;

// Offsets inside a block are stored in one byte.
const _: () = assert!(BLOCK > 0 && BLOCK <= 256);

impl RecordKey {
    /// The key of this record's block: where its payload and its result are stored.
    pub(crate) fn block(self) -> Self {
        Self { seq: self.seq, index: self.index - self.index % BLOCK }
    }

    /// The record's place in its block.
    pub(crate) fn offset(self) -> u8 {
        // Lossless: the remainder is below BLOCK <= 256.
        (self.index % BLOCK) as u8
    }

    /// The key of the block after this record's block, where a scan resumes.
    pub(crate) fn next_block(self) -> Self {
        let block = self.block();
        match block.index.checked_add(BLOCK) {
            Some(index) => Self { seq: block.seq, index },
            None => Self { seq: block.seq.saturating_add(1), index: 0 },
        }
    }

    /// The record at `offset` in this record's block.
    pub(crate) fn at_offset(self, offset: u8) -> Self {
        Self { seq: self.seq, index: self.block().index + u32::from(offset) }
    }
}

/// Builds a block value: the entries of some records of one block, in record order. Each entry
/// is the record's offset in the block, its length and its bytes (a payload for `pending`, a
/// result line for `results`).
#[derive(Debug)]
pub(crate) struct BlockWriter {
    buf: Vec<u8>,
    last: Option<u8>,
}

impl BlockWriter {
    /// An empty block, room reserved for `capacity` bytes of entries.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(1 + capacity);
        buf.push(VERSION);
        Self { buf, last: None }
    }

    /// Appends the entry of the record at `offset` (offsets strictly increasing).
    pub fn push(&mut self, offset: u8, entry: &[u8]) -> Result<(), StoreError> {
        let len = self.begin(offset, entry.len())?;
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(entry);
        Ok(())
    }

    /// Appends a queued record's payload: its reference and the DCC JSON, as given.
    pub fn push_payload(&mut self, offset: u8, r#ref: &str, dcc_json: &[u8]) -> Result<(), StoreError> {
        let ref_len = u16::try_from(r#ref.len())
            .map_err(|_| StoreError::Invalid("record ref longer than 65535 bytes"))?;
        let len = self.begin(offset, 2 + r#ref.len() + dcc_json.len())?;
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(&ref_len.to_be_bytes());
        self.buf.extend_from_slice(r#ref.as_bytes());
        self.buf.extend_from_slice(dcc_json);
        Ok(())
    }

    fn begin(&mut self, offset: u8, len: usize) -> Result<[u8; 4], StoreError> {
        if u32::from(offset) >= BLOCK || self.last.is_some_and(|last| last >= offset) {
            return Err(StoreError::Invalid("block entries out of order"));
        }
        let len = u32::try_from(len).map_err(|_| StoreError::Invalid("a record of 4 GiB or more"))?;
        self.last = Some(offset);
        self.buf.push(offset);
        Ok(len.to_be_bytes())
    }

    /// The encoded block.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The entries of a block value, in record order: `(offset, bytes)`.
pub(crate) fn decode_block(b: &[u8]) -> Result<Vec<(u8, &[u8])>, StoreError> {
    let mut r = Reader::new(b, "record block");
    r.version()?;
    let mut entries: Vec<(u8, &[u8])> = Vec::new();
    while !r.b.is_empty() {
        let offset = r.u8()?;
        if u32::from(offset) >= BLOCK || entries.last().is_some_and(|&(last, _)| last >= offset) {
            return Err(StoreError::Corrupt("record block: entries out of order".into()));
        }
        let len = usize::try_from(r.u32()?)
            .map_err(|_| StoreError::Corrupt("record block: entry too long".into()))?;
        entries.push((offset, r.take(len)?));
    }
    Ok(entries)
}

/// A payload entry of a `pending` block: `(ref, dcc_json)`.
pub(crate) fn decode_payload(b: &[u8]) -> Result<(String, Vec<u8>), StoreError> {
    let mut r = Reader::new(b, "record payload");
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

    /// The last offset of a block.
    const LAST: u8 = (BLOCK - 1) as u8;

    fn payload_block(entries: &[(u8, &str, &[u8])]) -> Vec<u8> {
        let mut w = BlockWriter::with_capacity(0);
        for &(offset, r, dcc) in entries {
            w.push_payload(offset, r, dcc).unwrap();
        }
        w.finish()
    }

    #[test]
    fn payload_blocks_round_trip_and_reject_damage() {
        let b = payload_block(&[(0, "ref-ü", br#"{"ver":"1.3.0"}"#), (5, "", b""), (LAST, "z", b"{}")]);
        let entries = decode_block(&b).unwrap();
        assert_eq!(entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 5, LAST]);
        let (r, dcc) = decode_payload(entries[0].1).unwrap();
        assert_eq!((r.as_str(), dcc.as_slice()), ("ref-ü", &br#"{"ver":"1.3.0"}"#[..]));
        assert_eq!(decode_payload(entries[1].1).unwrap(), (String::new(), Vec::new()));
        for cut in 0..b.len() {
            // Either a clean error or (cut exactly between entries) fewer entries, never a panic.
            if let Ok(e) = decode_block(&b[..cut]) {
                assert!(e.len() < 3 && cut > 0, "cut at {cut}");
            }
        }
        assert!(decode_block(&[]).is_err());
        assert!(decode_block(&[9]).is_err(), "unknown version");
        assert!(decode_payload(&[0, 2, 0xff, 0xfe]).is_err(), "not UTF-8");
        assert!(decode_payload(&[0]).is_err());
        let mut w = BlockWriter::with_capacity(0);
        assert!(w.push_payload(0, &"x".repeat(70_000), b"{}").is_err());
        w.push(3, b"a").unwrap();
        assert!(w.push(3, b"b").is_err() && w.push(1, b"b").is_err(), "offsets only increase");
        assert!(w.push(LAST + 1, b"b").is_err(), "offsets stay in the block");
        let mut unordered = payload_block(&[(1, "a", b""), (2, "b", b"")]);
        // Version, then offset 1, length (4), ref length (2), "a": the second offset is at 9.
        assert_eq!(unordered[9], 2);
        unordered[9] = 1;
        assert!(decode_block(&unordered).is_err(), "a decoder refuses entries out of order");
    }

    #[test]
    fn blocks_group_consecutive_records() {
        let k = RecordKey::new(7, 2 * BLOCK + 2);
        assert_eq!((k.block(), k.offset()), (RecordKey::new(7, 2 * BLOCK), 2));
        assert_eq!(k.next_block(), RecordKey::new(7, 3 * BLOCK));
        assert_eq!(k.block().at_offset(2), k);
        assert_eq!(RecordKey::new(7, u32::MAX).next_block(), RecordKey::new(8, 0));
        assert_eq!(RecordKey::new(7, BLOCK - 1).block(), RecordKey::new(7, 0));
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
