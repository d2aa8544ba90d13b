//! The sled backend's side of crypto-shredding ([`super::seal`]): each batch's wrapped data
//! key in the `data_keys` tree, unwrapped once into the key cache, and the KEK's label pinned
//! in the store at first start so that a missing KEK is noticed instead of replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::layout;
use super::seal::{self, Context, DataKey, Purpose};
use super::{KEK_KEY, Store, StoreError};

/// Version byte of a `data_keys` value.
const WRAPPED_VERSION: u8 = 1;

impl Store {
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
        self.inner.key_stock.get_or_init(|| KeyStock::start(kek, super::KEY_STOCK));
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
        self.inner.key_stock.get().map_or(0, |s| s.lock().len())
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

/// A data key and its stored (wrapped, versioned) form.
type Made = (Arc<DataKey>, Vec<u8>);

/// A fresh data key, wrapped by `kek` (one HSM call).
fn make_data_key(kek: &dyn seal::KeyWrap) -> Result<Made, seal::SealError> {
    let key = DataKey::generate()?;
    let wrapped = key.wrap(kek)?;
    let mut value = Vec::with_capacity(1 + wrapped.len());
    value.push(WRAPPED_VERSION);
    value.extend_from_slice(&wrapped);
    Ok((Arc::new(key), value))
}

/// Data keys made and wrapped ahead of need, in memory only, so that a batch is accepted
/// without waiting on the HSM — and while the HSM is away (an outage pauses signing, never
/// intake), up to the stock's size. A background thread keeps it full, retrying with backoff
/// while the HSM cannot wrap. Each key is still stored only wrapped by the KEK; an unused
/// key never reaches the disk and is zeroized when the store closes.
pub(super) struct KeyStock {
    keys: Mutex<Vec<Made>>,
    wanted: Condvar,
    size: usize,
    stop: AtomicBool,
    /// Joined by [`KeyStock::stop`]: the thread may be inside the PKCS#11 module, which must
    /// not be finalized (or the process exit) under it.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl KeyStock {
    /// Starts the stock of `size` keys and its thread.
    pub(super) fn start(kek: Arc<dyn seal::KeyWrap>, size: usize) -> Arc<Self> {
        let stock = Arc::new(Self {
            keys: Mutex::new(Vec::new()),
            wanted: Condvar::new(),
            size,
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let s = stock.clone();
        match std::thread::Builder::new().name("store-keys".into()).spawn(move || s.run(kek.as_ref())) {
            Ok(handle) => *stock.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle),
            // Not fatal: every batch then wraps its own key when it arrives.
            Err(e) => log::error!("store: cannot start the data key stock ({e}); keys are wrapped per batch"),
        }
        stock
    }

    /// A key from the stock, if there is one; the thread makes the next.
    fn take(&self) -> Option<Made> {
        let made = self.lock().pop();
        self.wanted.notify_one();
        made
    }

    /// Ends the thread and waits for it (the store is closing): at most one wrap in flight.
    /// Idempotent; the unused keys are zeroized.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.lock().clear();
        self.wanted.notify_all();
        let handle = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
            && handle.join().is_err()
        {
            log::error!("store: the data key stock thread panicked");
        }
        // A key the thread pushed between the clear and its last check of the flag.
        self.lock().clear();
    }

    fn run(&self, kek: &dyn seal::KeyWrap) {
        let mut pause = Duration::from_millis(200);
        loop {
            {
                let mut keys = self.lock();
                while keys.len() >= self.size && !self.stop.load(Ordering::SeqCst) {
                    keys = self.wanted.wait(keys).unwrap_or_else(PoisonError::into_inner);
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match make_data_key(kek) {
                Ok(made) => {
                    pause = Duration::from_millis(200);
                    self.lock().push(made);
                }
                Err(e) => {
                    log::warn!("store: cannot make data keys ahead ({e}); retrying in {pause:?}");
                    // The whole pause (a batch taking a key does not shorten it), unless stopped.
                    let until = std::time::Instant::now() + pause;
                    let mut keys = self.lock();
                    while !self.stop.load(Ordering::SeqCst) {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        keys = self.wanted.wait_timeout(keys, left).unwrap_or_else(PoisonError::into_inner).0;
                    }
                    // Short enough that the stock is back soon after the HSM.
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Made>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
