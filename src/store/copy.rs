//! A store's whole state as a stream of typed items, out of one backend
//! ([`Backend::export`](super::Backend::export)) and into an empty other one
//! ([`Backend::import`](super::Backend::import)): how `hcert-signer store copy` moves an
//! appliance from sled to PostgreSQL (and back) without knowing either.
//!
//! Nothing is opened or re-sealed on the way: wrapped data keys, sealed blocks and audit
//! entries travel as the bytes they are stored as. That works because every backend stores
//! them in the same form — a block is sealed to its batch's 16-byte id and its first record
//! index, never to a backend's row number — and it means the target needs the same HSM token
//! and KEK as the source, nothing else. A backend's own numbering of batches (`seq`) is carried
//! only to tie blocks and idempotency keys to their batch; an import may number anew as long as
//! the queue's order stays.

use super::StoreError;
use super::idempotency::Entry;
use super::seal::Purpose;

/// One batch as stored: its metadata and its data key, wrapped by the KEK (stored form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// The exporting backend's number for it (queue order); blocks and idempotency keys name it.
    pub seq: u64,
    /// The id issuers see.
    pub id: [u8; 16],
    /// The issuer it belongs to.
    pub issuer: String,
    /// Where its idempotency key is stored (a hash, [`super::idempotency::storage_key`]).
    pub idempotency: Option<[u8; 32]>,
    /// When it was accepted, Unix seconds.
    pub created_at: i64,
    /// Its records.
    pub total: u32,
    /// Records signed so far.
    pub signed: u32,
    /// Records rejected so far.
    pub rejected: u32,
    /// Its data key, wrapped by the KEK, version byte first — copied, never unwrapped.
    pub data_key: Vec<u8>,
}

impl BatchItem {
    /// Records still waiting for a result.
    pub fn pending(&self) -> u32 {
        self.total.saturating_sub(self.signed.saturating_add(self.rejected))
    }
}

/// One piece of a store. An export yields, in this order: the KEK pin, key records, CSCAs
/// (trusted, then pending), batches in queue order, their blocks, idempotency keys, and the
/// audit chain in sequence order; an import refuses a block or a live idempotency key whose
/// batch came before it not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The KEK label the store is pinned to.
    Kek(String),
    /// A key's lifecycle record (JSON, approvals included), by label.
    Key {
        /// The key's label.
        label: String,
        /// The record as stored.
        record: Vec<u8>,
    },
    /// A trusted CSCA.
    Csca {
        /// SHA-256 hex of the certificate.
        fingerprint: String,
        /// The certificate, DER.
        der: Vec<u8>,
    },
    /// A CSCA addition waiting for a second officer.
    CscaPending {
        /// SHA-256 hex of the certificate.
        fingerprint: String,
        /// The pending record as stored.
        record: Vec<u8>,
    },
    /// A live batch.
    Batch(BatchItem),
    /// A sealed block of a batch: payloads still pending, or result lines.
    Block {
        /// The batch's [`BatchItem::seq`].
        seq: u64,
        /// The index of the block's first record.
        first: u32,
        /// Queue or results.
        purpose: Purpose,
        /// The sealed bytes as stored.
        sealed: Vec<u8>,
    },
    /// An idempotency key (a live batch's by its [`BatchItem::seq`], or a tombstone).
    Idempotency {
        /// Where the key is stored (a hash of issuer and key).
        key: [u8; 32],
        /// What it names.
        entry: Entry,
    },
    /// An audit entry, verbatim.
    Audit {
        /// Its sequence number.
        seq: u64,
        /// Its stored bytes: chain hash, then the entry's JSON.
        stored: Vec<u8>,
        /// Whether it is a checkpoint (indexed by both backends).
        checkpoint: bool,
    },
}

/// A store's items, read lazily; after an error the stream ends.
pub type Items = Box<dyn Iterator<Item = Result<Item, StoreError>> + Send>;

/// What an import wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Audit entries.
    pub entries: u64,
    /// The last audit entry's sequence number (0: none).
    pub head_seq: u64,
    /// Live batches.
    pub batches: u64,
    /// Their records still waiting for a result.
    pub records_pending: u64,
    /// Their records signed or rejected.
    pub records_done: u64,
    /// Sealed blocks (queue and results).
    pub blocks: u64,
    /// Key records.
    pub keys: u64,
    /// Trusted CSCAs.
    pub cscas: u64,
    /// CSCA additions waiting for a second officer.
    pub cscas_pending: u64,
    /// Idempotency keys of live batches.
    pub idempotency_keys: u64,
    /// Tombstones of purged batches' idempotency keys.
    pub tombstones: u64,
}

/// The checks every import makes on the stream as it goes, whatever writes it: each kind in
/// its place, blocks and keys after their batch, the audit chain gapless from 1, so a broken
/// export fails the import instead of leaving a store that misleads.
#[derive(Debug, Default)]
pub struct Checker {
    /// What was seen so far.
    pub tally: Tally,
    /// The batches seen, by export seq, with their record counts.
    batches: std::collections::HashMap<u64, u32>,
    last_seq: Option<u64>,
    kek: bool,
}

impl Checker {
    /// Checks `item` against what came before it and counts it.
    pub fn check(&mut self, item: &Item) -> Result<(), StoreError> {
        let bad = |why: String| Err(StoreError::Corrupt(format!("the store being copied: {why}")));
        let t = &mut self.tally;
        match item {
            Item::Kek(_) if self.kek => return bad("a second KEK pin".into()),
            Item::Kek(_) => self.kek = true,
            Item::Key { .. } => t.keys += 1,
            Item::Csca { .. } => t.cscas += 1,
            Item::CscaPending { .. } => t.cscas_pending += 1,
            Item::Batch(b) => {
                if b.total == 0 || b.signed.saturating_add(b.rejected) > b.total {
                    return bad(format!("batch {} has inconsistent counts", b.seq));
                }
                if self.last_seq.is_some_and(|last| b.seq <= last) {
                    return bad(format!("batch {} out of queue order", b.seq));
                }
                self.last_seq = Some(b.seq);
                self.batches.insert(b.seq, b.total);
                t.batches += 1;
                t.records_pending += u64::from(b.pending());
                t.records_done += u64::from(b.signed + b.rejected);
            }
            Item::Block { seq, first, .. } => {
                match self.batches.get(seq) {
                    Some(total) if first < total && first % super::block::BLOCK == 0 => {}
                    Some(_) => return bad(format!("block {first} of batch {seq} is outside it")),
                    None => return bad(format!("a block of batch {seq}, which is not there")),
                }
                t.blocks += 1;
            }
            Item::Idempotency { entry: Entry::Live { seq, .. }, .. } => {
                if !self.batches.contains_key(seq) {
                    return bad(format!("an idempotency key of batch {seq}, which is not there"));
                }
                t.idempotency_keys += 1;
            }
            Item::Idempotency { entry: Entry::Tombstone { .. }, .. } => t.tombstones += 1,
            Item::Audit { seq, stored, .. } => {
                if *seq != t.head_seq + 1 {
                    return bad(format!("audit entry {seq} follows entry {}", t.head_seq));
                }
                if stored.len() < 32 {
                    return bad(format!("audit entry {seq} is truncated"));
                }
                t.head_seq = *seq;
                t.entries += 1;
            }
        }
        Ok(())
    }

    /// The chain hash of the last audit entry seen (zeros for none), for the target's head.
    pub fn head_hash(last: Option<&[u8]>) -> crate::audit::Hash {
        last.and_then(|s| s.get(..32)).and_then(|h| h.try_into().ok()).unwrap_or(crate::audit::GENESIS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, total: u32, signed: u32) -> Item {
        Item::Batch(BatchItem {
            seq,
            id: [seq as u8; 16],
            issuer: "i".into(),
            idempotency: None,
            created_at: 1,
            total,
            signed,
            rejected: 0,
            data_key: vec![1, 2, 3],
        })
    }

    fn block(seq: u64, first: u32) -> Item {
        Item::Block { seq, first, purpose: Purpose::Pending, sealed: vec![0; 40] }
    }

    fn audit(seq: u64) -> Item {
        Item::Audit { seq, stored: vec![seq as u8; 40], checkpoint: false }
    }

    /// Feeds `items` to a checker; the first refusal's message, if any.
    fn first_refusal(items: &[Item]) -> Option<String> {
        let mut c = Checker::default();
        items.iter().find_map(|i| c.check(i).err().map(|e| e.to_string()))
    }

    #[test]
    fn a_whole_store_in_order_is_counted() {
        let items = [
            Item::Kek("kek".into()),
            Item::Key { label: "dsc".into(), record: b"{}".to_vec() },
            batch(0, 20, 4),
            batch(5, 3, 3),
            block(0, 0),
            block(0, 16),
            Item::Idempotency { key: [1; 32], entry: Entry::Live { seq: 5, request: [2; 32] } },
            Item::Idempotency { key: [3; 32], entry: Entry::Tombstone { batch_id: [4; 16], deleted_at: 9 } },
            audit(1),
            audit(2),
        ];
        let mut c = Checker::default();
        for i in &items {
            c.check(i).unwrap();
        }
        let t = c.tally;
        assert_eq!((t.batches, t.records_pending, t.records_done, t.blocks), (2, 16, 7, 2));
        assert_eq!((t.keys, t.idempotency_keys, t.tombstones, t.entries, t.head_seq), (1, 1, 1, 2, 2));
        assert_eq!(Checker::head_hash(Some(&[2; 40])), [2; 32]);
        assert_eq!(Checker::head_hash(None), crate::audit::GENESIS);
    }

    #[test]
    fn a_stream_out_of_order_or_inconsistent_is_refused() {
        let cases: [(&[Item], &str); 8] = [
            (&[Item::Kek("a".into()), Item::Kek("b".into())], "a second KEK pin"),
            (&[block(3, 0)], "a block of batch 3, which is not there"),
            (&[batch(3, 10, 0), block(3, 16)], "block 16 of batch 3 is outside it"),
            (&[batch(3, 40, 0), block(3, 5)], "block 5 of batch 3 is outside it"),
            (&[batch(3, 10, 0), batch(2, 10, 0)], "batch 2 out of queue order"),
            (&[batch(3, 10, 11)], "batch 3 has inconsistent counts"),
            (
                &[Item::Idempotency { key: [1; 32], entry: Entry::Live { seq: 7, request: [0; 32] } }],
                "an idempotency key of batch 7, which is not there",
            ),
            (&[audit(1), audit(3)], "audit entry 3 follows entry 1"),
        ];
        for (items, why) in cases {
            let refusal = first_refusal(items).unwrap_or_else(|| panic!("{why}: accepted"));
            assert!(refusal.contains(why), "{why}: {refusal}");
        }
        assert!(first_refusal(&[audit(2)]).is_some(), "a chain starts at 1");
        let short = Item::Audit { seq: 1, stored: vec![0; 31], checkpoint: false };
        assert!(first_refusal(&[short]).unwrap().contains("truncated"));
    }
}
