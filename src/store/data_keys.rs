//! Data keys for crypto-shredding ([`super::seal`]), whatever the backend: made and wrapped
//! by the KEK one at a time, or ahead of need by a [`KeyStock`] so that a batch is accepted
//! without waiting on the HSM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::seal::{self, DataKey};

/// Version byte leading a stored wrapped data key.
pub(crate) const WRAPPED_VERSION: u8 = 1;

/// A data key and its stored (wrapped, versioned) form.
pub(crate) type Made = (Arc<DataKey>, Vec<u8>);

/// A fresh data key, wrapped by `kek` (one HSM call).
pub(crate) fn make_data_key(kek: &dyn seal::KeyWrap) -> Result<Made, seal::SealError> {
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
pub(crate) struct KeyStock {
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
    pub(crate) fn start(kek: Arc<dyn seal::KeyWrap>, size: usize) -> Arc<Self> {
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
    pub(crate) fn take(&self) -> Option<Made> {
        let made = self.lock().pop();
        self.wanted.notify_one();
        made
    }

    /// Ends the thread and waits for it (the store is closing): at most one wrap in flight.
    /// Idempotent; the unused keys are zeroized.
    pub(crate) fn stop(&self) {
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

    /// Keys waiting in the stock.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Made>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
