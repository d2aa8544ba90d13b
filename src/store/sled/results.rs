//! Streaming a batch's results in record order, one JSON line at a time, without holding the
//! batch in memory.

use std::sync::{Arc, PoisonError};

use super::layout;
use super::seal::{DataKey, Purpose};
use super::{SledStore, StoreError, shred};

/// The committed results of one batch, in record order: each item is one JSON object (no
/// newline). Lazily reads sled; `Send`, so it can be drained on a blocking thread.
pub struct ResultIter {
    iter: sled::Iter,
    /// The batch's data key and id, to open each block.
    key: Arc<DataKey>,
    batch: [u8; layout::BATCH_ID_LEN],
    /// The rest of the block read last (results are stored a block of records per value).
    block: std::vec::IntoIter<Vec<u8>>,
    store: SledStore,
    /// Set after an error: the iterator then ends instead of repeating it.
    failed: bool,
}

impl SledStore {
    /// The batch's results so far, or `None` if it does not exist for this issuer. Results
    /// committed while the iterator runs may or may not appear; none appears before it is
    /// flushed to disk.
    pub fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultIter>, StoreError> {
        self.ensure_ok()?;
        let Some((seq, meta)) = self.lookup(issuer_id, batch_id)? else { return Ok(None) };
        // A live batch always has its key; without one it was purged meanwhile (the key goes
        // first), or its results cannot be opened.
        let Some(key) = self.data_key(seq)? else {
            if self.lookup(issuer_id, batch_id)?.is_none() {
                return Ok(None);
            }
            return Err(StoreError::Corrupt(format!("batch {seq} has no data key to open its results")));
        };
        Ok(Some(ResultIter {
            iter: self.inner.results.scan_prefix(layout::seq_key(seq)),
            key,
            batch: meta.id,
            block: Vec::new().into_iter(),
            store: self.clone(),
            failed: false,
        }))
    }
}

impl Iterator for ResultIter {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(line) = self.block.next() {
                return Some(Ok(line));
            }
            if self.failed {
                return None;
            }
            if let Err(e) = self.store.ensure_ok() {
                self.failed = true;
                return Some(Err(e));
            }
            // Per block, so a long download never holds up commits for more than one read.
            let visible = self.store.inner.visibility.read().unwrap_or_else(PoisonError::into_inner);
            let item = self.iter.next();
            drop(visible);
            let (k, value) = match item? {
                Ok(kv) => kv,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(self.store.fail(e)));
                }
            };
            let opened = layout::RecordKey::from_bytes(&k).and_then(|block| {
                shred::open_block(&self.key, &shred::context(Purpose::Results, &self.batch, block), &value)
            });
            let plain = match opened {
                Ok(p) => p,
                Err(e) => {
                    self.failed = true;
                    log::error!("store: a block of results does not open: {e}");
                    return Some(Err(e));
                }
            };
            match layout::decode_block(&plain) {
                Ok(entries) => {
                    let lines: Vec<Vec<u8>> = entries.into_iter().map(|(_, line)| line.to_vec()).collect();
                    self.block = lines.into_iter();
                }
                Err(e) => {
                    // Nothing after a damaged block can be placed in order: stop with the error.
                    self.failed = true;
                    log::error!("store: a block of results is unreadable: {e}");
                    return Some(Err(e));
                }
            }
        }
    }
}

impl std::fmt::Debug for ResultIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultIter").finish_non_exhaustive()
    }
}
