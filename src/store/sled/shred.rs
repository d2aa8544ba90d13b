//! The sled backend's side of crypto-shredding ([`super::seal`]): each batch's wrapped data
//! key in the `data_keys` tree, unwrapped once into the key cache, and the KEK's label pinned
//! in the store at first start so that a missing KEK is noticed instead of replaced.

use std::sync::Arc;

use super::layout;
use super::{KEK_KEY, SledStore};
use crate::store::StoreError;
use crate::store::data_keys::{KeyStock, WRAPPED_VERSION, make_data_key};
use crate::store::seal::{self, Context, DataKey, Purpose};

impl SledStore {
    /// The KEK label this store was set up with (`None` before the first start).
    pub fn pinned_kek(&self) -> Result<Option<String>, StoreError> {
        self.ensure_ok()?;
        match self.inner.db.get(KEK_KEY).map_err(|e| self.fail(e))? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt("the pinned KEK label is not UTF-8".into())),
        }
    }

    /// Records (and flushes) the KEK label at first start; refuses to change it afterwards.
    pub fn pin_kek(&self, label: &str) -> Result<(), StoreError> {
        self.ensure_ok()?;
        let previous = self
            .inner
            .db
            .compare_and_swap(KEK_KEY, None as Option<&[u8]>, Some(label.as_bytes()))
            .map_err(|e| self.fail(e))?;
        match previous {
            Ok(()) => self.flush_db(),
            Err(cas) if cas.current.as_deref() == Some(label.as_bytes()) => Ok(()),
            Err(_) => Err(StoreError::Conflict("the store is pinned to another KEK label")),
        }
    }

    /// A new batch's data key and its wrapped form: from the stock made ahead (no HSM call), or
    /// made and wrapped now when the stock is empty.
    pub(super) fn new_data_key(&self) -> Result<(Arc<DataKey>, Vec<u8>), StoreError> {
        let kek = self.key_wrap()?;
        if let Some(stock) = self.inner.key_stock.get()
            && let Some(made) = stock.take()
        {
            return Ok(made);
        }
        Ok(make_data_key(kek.as_ref())?)
    }

    /// Caches the key of a batch just stored.
    pub(super) fn cache_data_key(&self, seq: u64, key: Arc<DataKey>) {
        self.inner.key_cache.insert(seq, key);
    }

    /// The data key of batch `seq`, from the cache or unwrapped once. `Ok(None)` when it has
    /// none (purged, or never stored: then its blocks cannot be opened by anyone).
    pub(super) fn data_key(&self, seq: u64) -> Result<Option<Arc<DataKey>>, StoreError> {
        let kek = self.key_wrap()?;
        let loaded = self.inner.key_cache.get_or_load(seq, || {
            let Some(v) = self.inner.data_keys.get(layout::seq_key(seq)).map_err(|e| self.fail(e))? else {
                return Err(None);
            };
            match v.split_first() {
                Some((&WRAPPED_VERSION, wrapped)) => {
                    DataKey::unwrap(kek.as_ref(), wrapped).map(Arc::new).map_err(|e| Some(e.into()))
                }
                _ => {
                    Err(Some(StoreError::Corrupt(format!("batch {seq}: wrapped data key of unknown format"))))
                }
            }
        });
        match loaded {
            Ok(k) => Ok(Some(k)),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    /// Forgets a batch's unwrapped key (done, deleted or expired).
    pub(super) fn evict_data_key(&self, seq: u64) {
        self.inner.key_cache.evict(&seq);
    }

    /// Starts keeping a stock of data keys made ahead ([`KeyStock`]), so that batches are
    /// accepted without an HSM call, and while the HSM is away. Call it once the KEK is known
    /// to be there; until then (and without it) each batch wraps its own key. Idempotent.
    pub fn start_key_stock(&self) -> Result<(), StoreError> {
        let kek = self.key_wrap()?.clone();
        self.inner.key_stock.get_or_init(|| KeyStock::start(kek, crate::store::KEY_STOCK));
        Ok(())
    }

    /// Stops the stock and waits for its thread, so that no HSM call is in flight: the daemon
    /// calls it before the HSM is closed, on every way out. New batches then wrap their own key.
    pub fn stop_key_stock(&self) {
        if let Some(stock) = self.inner.key_stock.get() {
            stock.stop();
        }
    }

    /// Data keys made ahead and waiting for new batches (for tests and metrics).
    pub fn stocked_data_keys(&self) -> usize {
        self.inner.key_stock.get().map_or(0, |s| s.len())
    }

    /// Data keys unwrapped and cached now (for tests and metrics).
    pub fn cached_data_keys(&self) -> usize {
        self.inner.key_cache.len()
    }

    fn key_wrap(&self) -> Result<&Arc<dyn seal::KeyWrap>, StoreError> {
        self.inner.options.key_wrap.as_ref().ok_or(StoreError::NoKeyWrap)
    }
}

/// Where a block of batch `id` starting at `block` belongs, for sealing.
pub(super) fn context(
    purpose: Purpose,
    id: &[u8; layout::BATCH_ID_LEN],
    block: layout::RecordKey,
) -> Context {
    Context { purpose, batch: *id, position: block.index() }
}

/// Seals an encoded block.
pub(super) fn seal_block(key: &DataKey, ctx: &Context, block: &[u8]) -> Result<Vec<u8>, StoreError> {
    Ok(seal::seal(key, ctx, block)?)
}

/// Opens a sealed block into its encoded form.
pub(super) fn open_block(
    key: &DataKey,
    ctx: &Context,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
    Ok(seal::open(key, ctx, sealed)?)
}
