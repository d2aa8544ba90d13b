//! Records are stored a block of consecutive records per value (payloads while pending,
//! result lines once resolved), sealed as one: the encoding of such a block, the same in every
//! backend. Every decoder checks bounds and returns a typed error: stored bytes are never
//! trusted to be well formed.

use super::{RecordKey, StoreError};

/// Version byte leading a block (and the other binary values of the store).
const VERSION: u8 = 1;

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

/// Commits one record's result into its block's two decoded halves: its payload leaves
/// `queued` and `line` enters `resolved`, both kept in record order. False (a duplicate) when
/// the record is no longer queued; one found resolved already keeps its stored result (never
/// both by construction), its payload gone all the same.
pub(crate) fn resolve_entry<'a>(
    queued: &mut Vec<(u8, &'a [u8])>,
    resolved: &mut Vec<(u8, &'a [u8])>,
    offset: u8,
    line: &'a [u8],
) -> bool {
    let Ok(at) = queued.binary_search_by_key(&offset, |e| e.0) else { return false };
    queued.remove(at);
    let Err(slot) = resolved.binary_search_by_key(&offset, |e| e.0) else { return false };
    resolved.insert(slot, (offset, line));
    true
}

/// A block holding `entries`, sealed for `ctx` under `key`; the plaintext is wiped once sealed.
pub(crate) fn seal_entries(
    key: &super::seal::DataKey,
    ctx: &super::seal::Context,
    entries: &[(u8, &[u8])],
) -> Result<Vec<u8>, StoreError> {
    let mut block = BlockWriter::with_capacity(entries.iter().map(|e| 5 + e.1.len()).sum());
    for &(offset, entry) in entries {
        block.push(offset, entry)?;
    }
    let plain = zeroize::Zeroizing::new(block.finish());
    Ok(super::seal::seal(key, ctx, &plain)?)
}

/// A payload entry of a `pending` block: `(ref, dcc_json)`.
pub(crate) fn decode_payload(b: &[u8]) -> Result<(String, Vec<u8>), StoreError> {
    let mut r = Reader::new(b, "record payload");
    let len = usize::from(r.u16()?);
    let r#ref = r.string(len)?;
    Ok((r#ref, r.rest().to_vec()))
}

/// A bounds-checked cursor over a stored value.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8], what: &'static str) -> Self {
        Self { b, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.b.len() < n {
            return Err(StoreError::Corrupt(format!("{}: truncated", self.what)));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        self.take(N).map(|b| {
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            a
        })
    }

    pub(crate) fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, StoreError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn version(&mut self) -> Result<(), StoreError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(StoreError::Corrupt(format!("{}: unknown format version {v}", self.what))),
        }
    }

    pub(crate) fn string(&mut self, n: usize) -> Result<String, StoreError> {
        let what = self.what;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("{what}: text is not UTF-8")))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }

    pub(crate) fn end(&self) -> Result<(), StoreError> {
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
}
