//! Crypto-shredding: every stored block of personal data is sealed (AES-256-GCM) under a data
//! key of its own batch, and that data key is stored only wrapped by a key-encryption key (KEK)
//! that never leaves the HSM. Destroying a batch's wrapped data key makes every copy of its
//! blocks unreadable, including those a database's free pages, logs or backups still hold.
//!
//! Backend-agnostic: a store backend stores the wrapped key next to the batch and calls
//! [`seal`] / [`open`] where it encodes and decodes blocks; the HSM is reached only through the
//! narrow [`KeyWrap`] trait, so the store does not depend on it. The additional data binds a
//! sealed block to its purpose, its batch and its position ([`Context`]): a block copied to
//! another batch, another position or from the queue to the results does not open.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// Length of a data key: AES-256.
pub const DATA_KEY_LEN: usize = 32;
/// Version byte leading every sealed value, so a later scheme can be told apart.
const SEAL_VERSION: u8 = 1;
/// Domain separation of the additional data.
const AAD_TAG: &[u8] = b"hcert-store-seal/1";
/// Bytes a sealed value adds to its plaintext: version, nonce, GCM tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// Why sealing, opening, wrapping or unwrapping failed. Never carries key material or
/// plaintext.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SealError {
    /// The KEK could not wrap a new data key (HSM unavailable, KEK missing…).
    #[error("cannot wrap a batch's data key with the key-encryption key: {0}")]
    Wrap(String),
    /// The KEK could not unwrap a stored data key.
    #[error("cannot unwrap a batch's data key with the key-encryption key: {0}")]
    Unwrap(String),
    /// A sealed value failed authentication: damaged, or moved to another batch or position.
    #[error(
        "a sealed block does not open under its batch's data key (damaged, or moved from another batch or position)"
    )]
    Open,
    /// The system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

impl SealError {
    /// True when the cause is outside the stored data (the HSM): retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Wrap(_) | Self::Unwrap(_))
    }
}

/// Wraps and unwraps data keys with a key-encryption key held elsewhere (the HSM). Blocking.
pub trait KeyWrap: Send + Sync {
    /// Wraps `key` (the wrapped bytes are what the store keeps).
    fn wrap(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Vec<u8>, SealError>;
    /// Unwraps what [`KeyWrap::wrap`] returned.
    fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, SealError>;
    /// Names the KEK for messages (e.g. `HSM key "hcert-kek"`).
    fn describe(&self) -> String;
}

/// A batch's data key, ready to seal and open. The raw key bytes are zeroized on drop.
pub struct DataKey {
    raw: Zeroizing<[u8; DATA_KEY_LEN]>,
    aead: LessSafeKey,
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<Self, SealError> {
        let mut raw = Zeroizing::new([0u8; DATA_KEY_LEN]);
        aws_lc_rs::rand::fill(&mut raw[..]).map_err(|_| SealError::Random)?;
        Self::from_raw(raw)
    }

    /// The data key with these bytes (as unwrapped).
    pub fn from_raw(raw: Zeroizing<[u8; DATA_KEY_LEN]>) -> Result<Self, SealError> {
        // 32 bytes is always a valid AES-256 key; the error arm is unreachable in practice.
        let unbound = UnboundKey::new(&AES_256_GCM, &raw[..]).map_err(|_| SealError::Random)?;
        Ok(Self { raw, aead: LessSafeKey::new(unbound) })
    }

    /// Wraps this key with `kek`.
    pub fn wrap(&self, kek: &dyn KeyWrap) -> Result<Vec<u8>, SealError> {
        kek.wrap(&self.raw)
    }

    /// Unwraps a stored data key with `kek`.
    pub fn unwrap(kek: &dyn KeyWrap, wrapped: &[u8]) -> Result<Self, SealError> {
        Self::from_raw(kek.unwrap(wrapped)?)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// What a sealed block is, as far as the additional data is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// Payloads of queued records (refs and DCCs).
    Pending = 1,
    /// Result lines of resolved records (refs, HC1 strings, UVCIs).
    Results = 2,
}

/// Binds a sealed value to where it belongs: its purpose, its batch (the 16-byte batch id,
/// the same on every backend) and its position (the first record index of its block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// What the block holds.
    pub purpose: Purpose,
    /// The batch's id.
    pub batch: [u8; 16],
    /// The block's position in the batch.
    pub position: u32,
}

impl Context {
    fn aad(&self) -> [u8; AAD_TAG.len() + 1 + 16 + 4] {
        let mut a = [0u8; AAD_TAG.len() + 1 + 16 + 4];
        let (tag, rest) = a.split_at_mut(AAD_TAG.len());
        tag.copy_from_slice(AAD_TAG);
        rest[0] = self.purpose as u8;
        rest[1..17].copy_from_slice(&self.batch);
        rest[17..].copy_from_slice(&self.position.to_be_bytes());
        a
    }
}

/// Seals `plaintext` under `key` for `context`: version, random 96-bit nonce, ciphertext and
/// tag. (A batch's key seals at most a few values per block of records, far below the 2^32
/// random nonces AES-GCM allows per key.)
pub fn seal(key: &DataKey, context: &Context, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(1 + NONCE_LEN);
    key.aead
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.aad()), &mut body)
        .map_err(|_| SealError::Random)?;
    out.append(&mut body);
    Ok(out)
}

/// Opens what [`seal`] made for the same `context`; anything else is [`SealError::Open`].
pub fn open(key: &DataKey, context: &Context, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < OVERHEAD || sealed[0] != SEAL_VERSION {
        return Err(SealError::Open);
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| SealError::Open)?;
    let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
    let len = key
        .aead
        .open_in_place(nonce, Aad::from(context.aad()), &mut body)
        .map_err(|_| SealError::Open)?
        .len();
    body.truncate(len);
    Ok(body)
}

/// Unwrapped data keys of live batches, so a batch's key is unwrapped once and not per block
/// (one HSM call per batch per process, as long as it stays cached). Bounded; entries are
/// evicted when their batch is done or deleted, and their key bytes zeroized when the last
/// user lets go.
pub struct KeyCache<K> {
    keys: Mutex<HashMap<K, Arc<DataKey>>>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> KeyCache<K> {
    /// An empty cache of at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self { keys: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The cached key of `batch`, or the one `load` returns (then cached).
    pub fn get_or_load<E>(
        &self,
        batch: K,
        load: impl FnOnce() -> Result<Arc<DataKey>, E>,
    ) -> Result<Arc<DataKey>, E> {
        if let Some(k) = self.lock().get(&batch) {
            return Ok(k.clone());
        }
        // Unwrapped outside the lock: an HSM call must not hold up other batches.
        let key = load()?;
        let mut keys = self.lock();
        if keys.len() >= self.capacity
            && let Some(victim) = keys.keys().next().copied()
        {
            keys.remove(&victim);
        }
        Ok(keys.entry(batch).or_insert(key).clone())
    }

    /// Puts a key just made (a new batch) in the cache.
    pub fn insert(&self, batch: K, key: Arc<DataKey>) {
        let mut keys = self.lock();
        if keys.len() >= self.capacity
            && let Some(victim) = keys.keys().next().copied()
        {
            keys.remove(&victim);
        }
        keys.insert(batch, key);
    }

    /// Forgets `batch`'s key (done or deleted).
    pub fn evict(&self, batch: &K) {
        self.lock().remove(batch);
    }

    /// Keys cached now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<DataKey>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A KEK in memory, for tests and benchmarks only (AES key wrap with padding, RFC 5649, as the
/// PKCS#11 backend uses): the appliance always wraps with a KEK inside the HSM.
#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An in-memory KEK that counts its unwraps.
    pub struct MemoryKek {
        kek: [u8; 32],
        /// Unwraps so far.
        pub unwraps: AtomicU64,
    }

    impl MemoryKek {
        /// A random KEK.
        pub fn new() -> Arc<Self> {
            let mut kek = [0u8; 32];
            aws_lc_rs::rand::fill(&mut kek).expect("random");
            Self::with_key(kek)
        }

        /// The KEK with these bytes (the same in every process of a test).
        pub fn with_key(kek: [u8; 32]) -> Arc<Self> {
            Arc::new(Self { kek, unwraps: AtomicU64::new(0) })
        }

        /// Unwraps so far.
        pub fn unwrap_count(&self) -> u64 {
            self.unwraps.load(Ordering::SeqCst)
        }

        fn key(&self) -> aws_lc_rs::key_wrap::AesKek {
            aws_lc_rs::key_wrap::AesKek::new(&aws_lc_rs::key_wrap::AES_256, &self.kek).expect("KEK")
        }
    }

    impl KeyWrap for MemoryKek {
        fn wrap(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Vec<u8>, SealError> {
            use aws_lc_rs::key_wrap::KeyWrapPadded;
            let mut out = vec![0u8; DATA_KEY_LEN + 16];
            let n = self
                .key()
                .wrap_with_padding(key, &mut out)
                .map_err(|e| SealError::Wrap(e.to_string()))?
                .len();
            out.truncate(n);
            Ok(out)
        }

        fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, SealError> {
            use aws_lc_rs::key_wrap::KeyWrapPadded;
            self.unwraps.fetch_add(1, Ordering::SeqCst);
            let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
            let raw = self
                .key()
                .unwrap_with_padding(wrapped, &mut out)
                .map_err(|e| SealError::Unwrap(e.to_string()))?;
            let raw: [u8; DATA_KEY_LEN] =
                raw.try_into().map_err(|_| SealError::Unwrap("not a 32-byte key".into()))?;
            Ok(Zeroizing::new(raw))
        }

        fn describe(&self) -> String {
            "an in-memory test KEK".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::MemoryKek;
    use super::*;

    fn ctx(purpose: Purpose, batch: u8, position: u32) -> Context {
        Context { purpose, batch: [batch; 16], position }
    }

    #[test]
    fn sealed_blocks_open_only_where_they_belong() {
        let key = DataKey::generate().unwrap();
        let here = ctx(Purpose::Pending, 1, 16);
        let sealed = seal(&key, &here, b"Nguy\xe1\xbb\x85n").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 8);
        assert_eq!(open(&key, &here, &sealed).unwrap().as_slice(), b"Nguy\xe1\xbb\x85n");
        assert!(
            matches!(open(&key, &ctx(Purpose::Pending, 2, 16), &sealed), Err(SealError::Open)),
            "other batch"
        );
        assert!(
            matches!(open(&key, &ctx(Purpose::Pending, 1, 32), &sealed), Err(SealError::Open)),
            "other block"
        );
        assert!(
            matches!(open(&key, &ctx(Purpose::Results, 1, 16), &sealed), Err(SealError::Open)),
            "other tree"
        );
        let other = DataKey::generate().unwrap();
        assert!(matches!(open(&other, &here, &sealed), Err(SealError::Open)), "other batch's key");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, &here, &bad).is_err(), "flipped byte {i}");
        }
        assert!(open(&key, &here, &sealed[..OVERHEAD - 1]).is_err());
        // Two seals of the same plaintext differ (fresh nonce).
        assert_ne!(seal(&key, &here, b"x").unwrap(), seal(&key, &here, b"x").unwrap());
    }

    #[test]
    fn data_keys_round_trip_through_the_kek_and_the_cache_unwraps_once() {
        let kek = MemoryKek::new();
        let key = DataKey::generate().unwrap();
        let wrapped = key.wrap(kek.as_ref()).unwrap();
        assert!(!wrapped.windows(8).any(|w| key.raw.windows(8).any(|k| k == w)), "the key is not in clear");
        let cache: KeyCache<u64> = KeyCache::new(2);
        let load = || DataKey::unwrap(kek.as_ref(), &wrapped).map(Arc::new);
        let a = cache.get_or_load(7, load).unwrap();
        let b = cache.get_or_load(7, load).unwrap();
        assert_eq!(kek.unwrap_count(), 1, "one unwrap per batch");
        let c = ctx(Purpose::Results, 0, 0);
        assert_eq!(open(&b, &c, &seal(&key, &c, b"hc1").unwrap()).unwrap().as_slice(), b"hc1");
        drop(a);
        cache.evict(&7);
        assert!(cache.is_empty());
        for batch in 0..5 {
            cache.insert(batch, Arc::new(DataKey::generate().unwrap()));
        }
        assert!(cache.len() <= 2, "bounded");
        assert!(DataKey::unwrap(kek.as_ref(), &wrapped[1..]).is_err());
        assert!(DataKey::unwrap(MemoryKek::new().as_ref(), &wrapped).is_err(), "another KEK");
    }
}
