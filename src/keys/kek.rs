//! The store's key-encryption key (KEK): an AES key in the HSM that wraps each batch's data key
//! ([`crate::store::seal`]). Made at the first start of a store and pinned in it; afterwards a
//! missing KEK stops the start instead of being replaced, because a new KEK could not open
//! anything the store holds.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::hsm::{self, Hsm};
use crate::store::seal::{DATA_KEY_LEN, KeyWrap, SealError};
use crate::store::{Store, StoreError};

/// Why the KEK cannot be used at start. Each one stops the daemon with exit 78.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The store was set up with a KEK that the HSM no longer has.
    #[error(
        "the store's key-encryption key {label:?} is not in the HSM, but this store was set up with it: without it no batch the store holds can be read. Restore the token (or its backup) that holds it; it is never regenerated, because a new key could not open what is stored"
    )]
    Missing {
        /// The pinned label.
        label: String,
    },
    /// `[store] kek_label` names another KEK than the store was set up with.
    #[error(
        "store.kek_label is {configured:?} but this store was set up with the key-encryption key {pinned:?}: set store.kek_label = {pinned:?}"
    )]
    LabelChanged {
        /// The configured label.
        configured: String,
        /// The label pinned in the store.
        pinned: String,
    },
    /// The HSM refused or failed.
    #[error("store key-encryption key: {0}")]
    Hsm(#[from] hsm::Error),
    /// The store could not record the KEK.
    #[error("store key-encryption key: {0}")]
    Store(#[from] StoreError),
}

/// Finds the KEK `label` (checking its attributes), or generates it if the store has never had
/// one, and pins it in the store.
pub fn ensure(hsm: &Hsm, store: &Store, label: &str) -> Result<(), KekError> {
    let pinned = store.pinned_kek()?;
    if let Some(pinned) = &pinned
        && pinned != label
    {
        return Err(KekError::LabelChanged { configured: label.into(), pinned: pinned.clone() });
    }
    match hsm.find_kek(label) {
        Ok(()) => {}
        Err(hsm::Error::KekNotFound { .. }) if pinned.is_some() => {
            return Err(KekError::Missing { label: label.into() });
        }
        Err(hsm::Error::KekNotFound { .. }) => {
            log::warn!("store: first start, generating the key-encryption key {label:?} in the HSM");
            hsm.generate_kek(label)?;
        }
        Err(e) => return Err(e.into()),
    }
    store.pin_kek(label)?;
    Ok(())
}

/// Wraps data keys with the KEK in the HSM: what the store is given ([`KeyWrap`]).
pub struct HsmKeyWrap {
    hsm: Hsm,
    label: String,
}

impl HsmKeyWrap {
    /// The KEK `label` in `hsm`.
    pub fn new(hsm: Hsm, label: &str) -> Arc<Self> {
        Arc::new(Self { hsm, label: label.to_owned() })
    }
}

impl KeyWrap for HsmKeyWrap {
    fn wrap(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Vec<u8>, SealError> {
        self.hsm.wrap_data_key(&self.label, key).map_err(|e| SealError::Wrap(e.to_string()))
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, SealError> {
        let raw =
            self.hsm.unwrap_data_key(&self.label, wrapped).map_err(|e| SealError::Unwrap(e.to_string()))?;
        let key: [u8; DATA_KEY_LEN] = raw.as_slice().try_into().map_err(|_| {
            SealError::Unwrap(format!("the unwrapped key is {} bytes, not {DATA_KEY_LEN}", raw.len()))
        })?;
        Ok(Zeroizing::new(key))
    }

    fn describe(&self) -> String {
        format!("HSM key {:?}", self.label)
    }
}
