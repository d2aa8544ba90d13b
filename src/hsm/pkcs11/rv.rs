//! PKCS#11 return values: which are device faults, their `CKR_*` names, and our error for each.

use cryptoki::error::{Error as CkError, RvError};

use super::Error;

/// Device and session faults: the module or token is in trouble and the pool must be rebuilt.
pub(super) fn is_fault(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::GeneralError
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// `CKR_DEVICE_ERROR` from `RvError::DeviceError` (cryptoki's Display is a paragraph of prose).
pub(super) fn rv_name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(RvError::VendorDefined(code), _) => {
            format!("CKR_VENDOR_DEFINED({code:#x})")
        }
        CkError::Pkcs11(RvError::UnknownErrorCode(code), _) => format!("CKR_UNKNOWN({code:#x})"),
        CkError::Pkcs11(rv, _) => {
            let name = format!("{rv:?}");
            let mut out = String::from("CKR");
            for c in name.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
        other => one_line(&other.to_string()),
    }
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Maps a cryptoki error to ours; no PIN can appear in any of these.
pub(super) fn ck_error(op: &'static str, e: &CkError) -> Error {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _) => {
            Error::PinIncorrect
        }
        CkError::Pkcs11(RvError::PinLocked, _) => Error::PinLocked,
        CkError::Pkcs11(RvError::PinExpired, _) => Error::PinExpired,
        CkError::Pkcs11(RvError::UserPinNotInitialized, _) => Error::PinNotInitialised,
        e if is_fault(e) => Error::Device { op, rv: rv_name(e) },
        // FUNCTION_FAILED may succeed on retry (PKCS#11 says so) but is no reason to reset.
        CkError::Pkcs11(RvError::FunctionFailed | RvError::HostMemory, _) => {
            Error::Device { op, rv: rv_name(e) }
        }
        CkError::LibraryLoading(_) => Error::Device { op, rv: rv_name(e) },
        e => Error::Refused { op, rv: rv_name(e) },
    }
}
