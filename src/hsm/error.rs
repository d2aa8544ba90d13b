//! The HSM module's error type: one line each, saying what to do, never containing a PIN.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong talking to an HSM.
///
/// Messages are one line and actionable. [`Error::is_transient`] tells the daemon whether to
/// retry later (the HSM is re-initialising or had a device fault) or to stop and tell an operator
/// (a wrong PIN, a missing module or token, a missing key).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The token refused the user PIN.
    #[error(
        "the HSM rejected the user PIN (CKR_PIN_INCORRECT); not retrying — check the PIN file, the token will lock after repeated failures"
    )]
    PinIncorrect,
    /// The user PIN is locked on the token.
    #[error(
        "the HSM user PIN is locked (CKR_PIN_LOCKED); a security officer must unlock it with the SO-PIN (e.g. pkcs11-tool --init-pin --login --login-type so)"
    )]
    PinLocked,
    /// The user PIN has expired and must be changed before use.
    #[error(
        "the HSM user PIN has expired (CKR_PIN_EXPIRED); change it with the vendor tool, then update the PIN file"
    )]
    PinExpired,
    /// The token has no user PIN set.
    #[error(
        "the token has no user PIN yet (CKR_USER_PIN_NOT_INITIALIZED); initialise it with the SO-PIN first"
    )]
    PinNotInitialised,
    /// The YubiHSM refused the authentication key id or password.
    #[error(
        "the YubiHSM rejected authentication key {key_id} (wrong id or password); not retrying — check hsm.auth_key_id and the password file"
    )]
    AuthFailed {
        /// The authentication key object id.
        key_id: u16,
    },
    /// The PIN could not be read from its source (file or systemd credential).
    #[error("cannot read the HSM PIN from {source_desc}: {detail}")]
    PinSource {
        /// Which source (file path or credential name; never the PIN).
        source_desc: String,
        /// Why.
        detail: String,
    },
    /// The PKCS#11 module (shared library) could not be loaded.
    #[error(
        "PKCS#11 module {} cannot be loaded ({detail}); install the HSM vendor's library or fix hsm.module",
        path.display()
    )]
    ModuleNotFound {
        /// The configured module path.
        path: PathBuf,
        /// The loader's reason.
        detail: String,
    },
    /// No token with the configured label is present.
    #[error(
        "no HSM token labelled {label:?}; tokens present: {}; fix hsm.token_label or plug in / initialise the token",
        if available.is_empty() { "none".to_string() } else { format!("{available:?}") }
    )]
    TokenNotFound {
        /// The label looked for.
        label: String,
        /// The labels of the tokens that are present.
        available: Vec<String>,
    },
    /// No key with this label exists in the HSM.
    #[error(
        "no P-256 key labelled {label:?} in the HSM; check the label against the HSM's key list (GET /v1/keys)"
    )]
    KeyNotFound {
        /// The label looked for.
        label: String,
    },
    /// The store's key-encryption key is not in the HSM.
    #[error(
        "no key-encryption key labelled {label:?} in the HSM (the AES key that wraps the store's data keys)"
    )]
    KekNotFound {
        /// The label looked for.
        label: String,
    },
    /// A key-encryption key exists but lacks a required property, so it is not used.
    #[error("the key-encryption key {label:?} in the HSM is refused: {detail}")]
    UnsafeKek {
        /// Its label.
        label: String,
        /// The attribute that is wrong.
        detail: String,
    },
    /// A key with this label already exists, so none was generated.
    #[error("a key labelled {label:?} already exists in the HSM; choose another label")]
    KeyExists {
        /// The label asked for.
        label: String,
    },
    /// Several keys carry this label, so it does not name one key.
    #[error("{count} private keys are labelled {label:?} in the HSM; relabel or remove the extra ones")]
    KeyAmbiguous {
        /// The label.
        label: String,
        /// How many private keys carry it.
        count: usize,
    },
    /// The label is not acceptable as a key label.
    #[error("invalid key label {label:?}: {reason} (1–40 characters of A–Z a–z 0–9 . _ : -)")]
    InvalidLabel {
        /// The label given.
        label: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key exists but is not an ECDSA P-256 key this appliance can use.
    #[error("key {label:?} is not a usable P-256 signing key: {detail}")]
    UnsupportedKey {
        /// The key's label.
        label: String,
        /// What is wrong.
        detail: String,
    },
    /// The key exists but its protection attributes do not prove it was born in the HSM and can
    /// never leave it, or it may do more than sign: the appliance will not sign with it.
    #[error("key {label:?} is refused: {}", reasons.join("; "))]
    KeyRefused {
        /// The key's label.
        label: String,
        /// Each attribute that is wrong, with why it matters (e.g. `CKA_LOCAL is false (…)`).
        reasons: Vec<String>,
    },
    /// An HSM call did not return in time; the worker that made it has been replaced.
    #[error(
        "HSM operation {op} did not complete within {after:?}; the session was abandoned and the call will be retried later"
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The HSM reported a device or session fault; the pool is re-initialising.
    #[error(
        "HSM fault during {op}: {rv}; the session pool is re-initialising and signing will resume by itself"
    )]
    Device {
        /// The operation.
        op: &'static str,
        /// The return value or error reported.
        rv: String,
    },
    /// The HSM refused an operation for a reason that retrying will not fix.
    #[error("HSM refused {op}: {rv}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// The return value or error reported.
        rv: String,
    },
    /// A signature from the HSM failed software verification; it was discarded, never released.
    #[error(
        "the HSM returned a signature by {label:?} that does not verify against its public key; it was discarded and the session pool is being reset"
    )]
    BadSignature {
        /// The key's label.
        label: String,
    },
    /// The caller's digest is not the SHA-256 of the message it claims to sign.
    #[error("the digest given for signing is not the SHA-256 of the message (caller bug)")]
    DigestMismatch,
    /// The session pool is down (re-initialising after a fault, or shutting down).
    #[error("HSM unavailable: {reason}; signing will resume by itself when the HSM is back")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The pool stopped trying to re-initialise (it only does so after a PIN error or when a
    /// configured attempt limit is reached).
    #[error("HSM session pool stopped: {reason}; restart the service once fixed")]
    Failed {
        /// Why.
        reason: String,
    },
    /// An external provisioning tool (softhsm2-util) failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// Its error output or the reason it could not run.
        detail: String,
    },
    /// The `[hsm]` configuration is invalid.
    #[error("hsm config: {0}")]
    Config(String),
}

impl Error {
    /// Whether the daemon should retry the operation later (the HSM is away or re-initialising),
    /// as opposed to reporting it and waiting for an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. }
                | Error::Device { .. }
                | Error::BadSignature { .. }
                | Error::Unavailable { .. }
        )
    }

    /// Whether this is a PIN / authentication error, which must never be retried automatically
    /// (tokens lock the PIN after a few wrong attempts).
    pub fn is_pin_error(&self) -> bool {
        matches!(
            self,
            Error::PinIncorrect
                | Error::PinLocked
                | Error::PinExpired
                | Error::PinNotInitialised
                | Error::AuthFailed { .. }
                | Error::PinSource { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let errors = [
            Error::PinIncorrect,
            Error::ModuleNotFound { path: "/x.so".into(), detail: "no such file".into() },
            Error::TokenNotFound { label: "dsc".into(), available: vec!["a".into(), "b".into()] },
            Error::TokenNotFound { label: "dsc".into(), available: vec![] },
            Error::Unavailable { reason: "re-initialising".into() },
        ];
        for e in errors {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
        }
        let s =
            Error::TokenNotFound { label: "dsc".into(), available: vec!["a".into(), "b".into()] }.to_string();
        assert!(s.contains("[\"a\", \"b\"]"), "{s}");
    }

    #[test]
    fn transience() {
        assert!(!Error::PinIncorrect.is_transient());
        assert!(Error::PinIncorrect.is_pin_error());
        assert!(Error::Device { op: "sign", rv: "CKR_DEVICE_ERROR".into() }.is_transient());
        assert!(!Error::KeyNotFound { label: "x".into() }.is_transient());
    }
}
