//! Streaming a batch's results in record order, one JSON line at a time, without holding the
//! batch in memory.

use std::sync::PoisonError;

use super::layout;
use super::{Store, StoreError};

/// The committed results of one batch, in record order: each item is one JSON object (no
/// newline). Lazily reads sled; `Send`, so it can be drained on a blocking thread.
pub struct ResultIter {
    iter: sled::Iter,
    store: Store,
    /// Set after an error: the iterator then ends instead of repeating it.
    failed: bool,
}

impl Store {
    /// The batch's results so far, or `None` if it does not exist for this issuer. Results
    /// committed while the iterator runs may or may not appear; none appears before it is
    /// flushed to disk.
    pub fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultIter>, StoreError> {
        self.ensure_ok()?;
        let Some((seq, _)) = self.lookup(issuer_id, batch_id)? else { return Ok(None) };
        Ok(Some(ResultIter {
            iter: self.inner.results.scan_prefix(layout::seq_key(seq)),
            store: self.clone(),
            failed: false,
        }))
    }
}

impl Iterator for ResultIter {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.store.ensure_ok() {
            self.failed = true;
            return Some(Err(e));
        }
        // Per step, so a long download never holds up commits for more than one read.
        let visible = self.store.inner.visibility.read().unwrap_or_else(PoisonError::into_inner);
        let item = self.iter.next();
        drop(visible);
        match item? {
            Ok((_, v)) => Some(Ok(v.to_vec())),
            Err(e) => {
                self.failed = true;
                Some(Err(self.store.fail(e)))
            }
        }
    }
}

impl std::fmt::Debug for ResultIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultIter").finish_non_exhaustive()
    }
}
