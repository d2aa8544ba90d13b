//! Document Signer keys inside an HSM: generate, find, sign a digest, health.
//!
//! The rest of the appliance sees only [`Hsm`]: it signs a SHA-256 digest computed by the caller
//! with a P-256 key named by its label, and returns a raw `r‖s` signature in low-S form that has
//! already been verified in software against the key's public key (so a faulty token can never put
//! a bad signature into a citizen's QR code). Backends implement [`Backend`]:
//! [`pkcs11`] (any PKCS#11 module; SoftHSM2 in the tests) and [`yubihsm`] (YubiHSM2).
//!
//! Verification runs on the thread that asked for the signatures, never on an HSM session's
//! thread: a request travels as slices, each carrying a [`Check`], and the caller checks each
//! slice as it collects it while the sessions sign the next ones. A session's thread thus
//! spends its time in the token, which is the bottleneck, and only a check can produce the
//! [`Checked`] signatures [`Hsm`] releases.
//!
//! All calls are blocking and may be made from many threads at once; call them from blocking
//! threads (e.g. `spawn_blocking`), never from an async reactor thread.

pub mod config;
pub mod error;
pub mod pin;
pub mod pkcs11;
pub mod softhsm;
pub mod yubihsm;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;

pub use config::{HsmConfig, Pkcs11Config, YubiHsmConfig};
pub use error::Error;
pub use pin::{Pin, PinSource};

/// A P-256 key pair inside the HSM, as seen from outside: its label, id and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's label (`CKA_LABEL` / YubiHSM object label).
    pub label: String,
    /// The key's id (`CKA_ID`, or the YubiHSM object id as two big-endian bytes).
    pub id: Vec<u8>,
    /// The public half.
    pub public_key: p256::PublicKey,
}

impl KeyInfo {
    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        use p256::pkcs8::EncodePublicKey;
        // Encoding a valid P-256 point as SPKI cannot fail; an empty result would make any
        // comparison fail closed.
        self.public_key.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
    }
}

/// Counters a backend keeps (re-initialisations, sessions, PIN attempts…).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Whether the backend is up (not re-initialising, not failed).
    pub available: bool,
    /// Successful re-initialisations after a fault.
    pub reinits: u64,
    /// Re-initialisation attempts that failed.
    pub reinit_failures: u64,
    /// Faults that triggered a re-initialisation (device errors, bad signatures, stuck workers).
    pub faults: u64,
    /// Calls that exceeded the per-call timeout.
    pub timeouts: u64,
    /// Workers abandoned because a call hung.
    pub workers_abandoned: u64,
    /// Login attempts made with the PIN / password (to show there is no retry storm).
    pub pin_attempts: u64,
    /// Signing sessions (workers) currently open.
    pub sessions_open: u64,
    /// Sessions currently inside an HSM call.
    pub sessions_in_use: u64,
}

/// Counters of the whole [`Hsm`]: the backend's plus signatures released and refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Signatures released (verified, low-S).
    pub signatures: u64,
    /// Signing calls that failed (any reason).
    pub sign_failures: u64,
    /// Signatures from the HSM that failed software verification and were discarded.
    pub bad_signatures: u64,
    /// The backend's counters.
    pub backend: BackendStats,
}

/// What an HSM must offer. Implementations return raw signatures exactly as the device made
/// them; [`Hsm`] normalises and verifies them.
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs ("pkcs11", "yubihsm").
    fn name(&self) -> &'static str;
    /// Generates a new non-extractable P-256 signing key inside the HSM.
    fn generate_key(&self, label: &str) -> Result<KeyInfo, Error>;
    /// Finds the key with this label.
    fn find_key(&self, label: &str) -> Result<KeyInfo, Error>;
    /// Lists the P-256 signing keys.
    fn list_keys(&self) -> Result<Vec<KeyInfo>, Error>;
    /// Signs each 32-byte digest with ECDSA (no hashing by the HSM); returns raw `r‖s`.
    fn sign_digests(&self, label: &str, digests: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, Error>;
    /// Starts signing `digests` as [`Backend::sign_digests`] would and returns without waiting.
    /// [`PendingSignatures::wait`] collects the raw signatures and runs `check` on them ([`Hsm`]'s
    /// low-S normalisation and software verification) on the waiting thread; the request's
    /// result is what the check returned: only a check makes a [`Checked`] batch, so nothing
    /// unverified can come out. A signature that fails it is reported as a fault of the session
    /// set that made it. Same per-call timeout and fault handling as `sign_digests`; dropping
    /// the handle abandons the request.
    ///
    /// The default signs and checks at once on the caller's thread: a backend with one device
    /// session (YubiHSM2) has nothing to overlap.
    fn submit_digests(&self, label: &str, digests: Vec<[u8; 32]>, check: Check) -> PendingSignatures {
        let result = self.sign_digests(label, &digests);
        PendingSignatures::ready(result.and_then(|raw| check.run(raw, |what| self.report_fault(what))))
    }
    /// A cheap liveness check (token present, session logged in).
    fn health(&self) -> Result<(), Error>;
    /// Tells the backend that something it returned was wrong (a signature that does not
    /// verify): it must treat it as a device fault and reset its sessions.
    fn report_fault(&self, what: &str);
    /// How many signing calls it can usefully run at once.
    fn parallelism(&self) -> usize;
    /// Its counters.
    fn stats(&self) -> BackendStats;
    /// Generates the store's key-encryption key `label` inside the HSM: AES-256, generated on
    /// the device, sensitive, never extractable, usable only to wrap and unwrap data keys.
    fn generate_kek(&self, label: &str) -> Result<(), Error> {
        Err(Error::Refused {
            op: "generate KEK",
            rv: format!("the {} backend cannot hold a key-encryption key ({label:?})", self.name()),
        })
    }
    /// Checks that the KEK `label` exists with exactly those properties
    /// ([`Error::KekNotFound`], [`Error::UnsafeKek`] naming the attribute otherwise).
    fn find_kek(&self, label: &str) -> Result<(), Error> {
        Err(Error::Refused {
            op: "find KEK",
            rv: format!("the {} backend holds no key-encryption key {label:?}", self.name()),
        })
    }
    /// Wraps a data key under the KEK (the data key never becomes a persistent object).
    fn wrap_data_key(&self, kek_label: &str, _key: &[u8]) -> Result<Vec<u8>, Error> {
        Err(Error::KekNotFound { label: kek_label.into() })
    }
    /// Unwraps what [`Backend::wrap_data_key`] returned.
    fn unwrap_data_key(
        &self,
        kek_label: &str,
        _wrapped: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        Err(Error::KekNotFound { label: kek_label.into() })
    }
}

/// Signatures a backend has been asked for ([`Backend::submit_digests`]) and may still be
/// making; [`PendingSignatures::wait`] returns them only once they have been through their
/// [`Check`].
#[must_use = "dropping a pending request abandons it"]
pub struct PendingSignatures {
    state: PendingState,
}

/// The wait is a closure so that each backend keeps its own reply channel and timeout rules.
type WaitFn = Box<dyn FnOnce() -> Result<Checked, Error> + Send>;

enum PendingState {
    Ready(Result<Checked, Error>),
    Deferred(WaitFn),
}

impl PendingSignatures {
    /// A request already answered (a synchronous backend, or one refused at once).
    pub fn ready(result: Result<Checked, Error>) -> PendingSignatures {
        PendingSignatures { state: PendingState::Ready(result) }
    }

    /// A request answered later by `wait`, whose wait for the device must end within the
    /// backend's per-call timeout whatever the device does; the check that follows is CPU work
    /// on the caller's thread.
    pub fn deferred(wait: impl FnOnce() -> Result<Checked, Error> + Send + 'static) -> PendingSignatures {
        PendingSignatures { state: PendingState::Deferred(Box::new(wait)) }
    }

    /// Blocks until the checked signatures are ready, the request fails, or its timeout passes.
    pub fn wait(self) -> Result<Checked, Error> {
        match self.state {
            PendingState::Ready(result) => result,
            PendingState::Deferred(wait) => wait(),
        }
    }
}

impl std::fmt::Debug for PendingSignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            PendingState::Ready(_) => "ready",
            PendingState::Deferred(_) => "deferred",
        };
        f.debug_struct("PendingSignatures").field("state", &state).finish()
    }
}

pub use check::{Check, Checked};

/// Verification of raw signatures, in a module of its own so that nothing else, backends
/// included, can make a [`Checked`] batch without verifying it.
mod check {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::{Error, Shared, Verifier};

    /// What [`super::Hsm`] does with one request's raw signatures: normalise each to low-S and
    /// verify it over its message with the key's public key. A backend runs it when the
    /// signatures are collected ([`super::Backend::submit_digests`]).
    pub struct Check {
        label: String,
        verifier: Arc<Verifier>,
        /// The request's messages back to back (one allocation per request), and their ends.
        messages: Vec<u8>,
        ends: Vec<usize>,
        shared: Arc<Shared>,
    }

    /// Signatures that passed their [`Check`]: low-S, verified, one per message, in order.
    #[derive(Debug)]
    pub struct Checked(Vec<[u8; 64]>);

    impl Check {
        pub(super) fn new<'m>(
            label: &str,
            verifier: Arc<Verifier>,
            messages: impl ExactSizeIterator<Item = &'m [u8]> + Clone,
            shared: Arc<Shared>,
        ) -> Check {
            let mut buf = Vec::with_capacity(messages.clone().map(<[u8]>::len).sum());
            let mut ends = Vec::with_capacity(messages.len());
            for m in messages {
                buf.extend_from_slice(m);
                ends.push(buf.len());
            }
            Check { label: label.to_string(), verifier, messages: buf, ends, shared }
        }

        /// How many signatures it expects.
        pub fn len(&self) -> usize {
            self.ends.len()
        }

        /// Whether it expects none.
        pub fn is_empty(&self) -> bool {
            self.ends.is_empty()
        }

        /// Normalises and verifies `raw`, one signature per message in order. A signature that
        /// fails is never returned: it is counted, the cached public key is dropped (it may be
        /// a stale one), `report_fault` is called — the backend must reset as for a device
        /// fault — and the whole request fails with [`Error::BadSignature`].
        pub fn run(self, raw: Vec<[u8; 64]>, report_fault: impl FnOnce(&str)) -> Result<Checked, Error> {
            if raw.len() != self.ends.len() {
                return Err(Error::Device {
                    op: "sign",
                    rv: format!("{} signatures for {} digests", raw.len(), self.ends.len()),
                });
            }
            let mut out = Vec::with_capacity(raw.len());
            let mut start = 0;
            for (raw, &end) in raw.iter().zip(&self.ends) {
                let message = self.messages.get(start..end).unwrap_or_default();
                start = end;
                match self.verify(message, raw) {
                    Some(sig) => out.push(sig),
                    None => {
                        self.shared.bad_signatures.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut cache) = self.shared.verifiers.write() {
                            cache.remove(&self.label);
                        }
                        log::error!(
                            "HSM returned a signature by {:?} that fails verification; discarded, resetting sessions",
                            self.label
                        );
                        report_fault("a signature failed software verification");
                        return Err(Error::BadSignature { label: self.label });
                    }
                }
            }
            Ok(Checked(out))
        }

        /// The low-S form of `raw` if it verifies over `message`.
        fn verify(&self, message: &[u8], raw: &[u8; 64]) -> Option<[u8; 64]> {
            let sig = p256::ecdsa::Signature::from_slice(raw).ok()?;
            let bytes: [u8; 64] = sig.normalize_s().unwrap_or(sig).to_bytes().into();
            self.verifier.key.verify_sig(message, &bytes).ok().map(|()| bytes)
        }
    }

    impl Checked {
        pub(super) fn into_signatures(self) -> Vec<[u8; 64]> {
            self.0
        }
    }

    impl std::fmt::Debug for Check {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Check").field("label", &self.label).field("len", &self.len()).finish()
        }
    }
}

/// The appliance's handle on its HSM. Cheap to clone; all clones share one backend.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<HsmInner>,
}

struct HsmInner {
    backend: Box<dyn Backend>,
    shared: Arc<Shared>,
    signatures: AtomicU64,
    sign_failures: AtomicU64,
}

/// What checks running on a backend's threads update. Kept apart from [`HsmInner`], which owns
/// the backend, so that a check in flight never keeps the backend alive (nor drops it on one of
/// the backend's own workers).
#[derive(Default)]
struct Shared {
    /// Parsed public keys per label: verification is on the hot path, so the key is parsed
    /// once (aws-lc's assembly P-256 verifier, about 6× the pure-Rust one).
    verifiers: RwLock<HashMap<String, Arc<Verifier>>>,
    bad_signatures: AtomicU64,
}

struct Verifier {
    key: ParsedPublicKey,
}

/// Most items in one backend request of `sign_many`: enough to amortise the hand-off to a
/// session, few enough that the sessions of a pool share a batch evenly.
const MAX_SLICE: usize = 16;

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm").field("backend", &self.inner.backend.name()).finish_non_exhaustive()
    }
}

impl Hsm {
    /// Opens the configured HSM: loads the module, finds the token, logs in, starts the pool.
    /// Fails fast (no retry) on a missing module or token and on any PIN error.
    pub fn open(config: &HsmConfig) -> Result<Hsm, Error> {
        match config {
            HsmConfig::Pkcs11(c) => Ok(Hsm::from_backend(pkcs11::Pkcs11Backend::open(c)?)),
            HsmConfig::Yubihsm(c) => Ok(Hsm::from_backend(yubihsm::YubiHsmBackend::open(c)?)),
        }
    }

    /// Wraps any backend (tests use this with the YubiHSM MockHsm).
    pub fn from_backend(backend: impl Backend) -> Hsm {
        Hsm {
            inner: Arc::new(HsmInner {
                backend: Box::new(backend),
                shared: Arc::new(Shared::default()),
                signatures: AtomicU64::new(0),
                sign_failures: AtomicU64::new(0),
            }),
        }
    }

    /// The backend's name ("pkcs11" or "yubihsm").
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// Generates a new P-256 key pair inside the HSM (private half sensitive, never
    /// extractable, sign-only). Refuses a label that is already used.
    pub fn generate_key(&self, label: &str) -> Result<KeyInfo, Error> {
        validate_label(label)?;
        self.inner.backend.generate_key(label)
    }

    /// Finds the key with this label.
    pub fn find_key(&self, label: &str) -> Result<KeyInfo, Error> {
        validate_label(label)?;
        self.inner.backend.find_key(label)
    }

    /// Lists the P-256 signing keys in the HSM.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, Error> {
        self.inner.backend.list_keys()
    }

    /// The public key of the key with this label.
    pub fn public_key(&self, label: &str) -> Result<p256::PublicKey, Error> {
        Ok(self.find_key(label)?.public_key)
    }

    /// Signs `digest` (the SHA-256 of `message`) with the key `label`, and returns the raw
    /// `r‖s` signature in low-S form after verifying it over `message` in software.
    ///
    /// A signature that fails verification is never returned: it is counted, the backend is
    /// told to reset (device fault) and [`Error::BadSignature`] is returned.
    pub fn sign(&self, label: &str, message: &[u8], digest: &[u8; 32]) -> Result<[u8; 64], Error> {
        let mut sigs = self.sign_pipelined(label, &[(message, *digest)])?;
        // sign_pipelined returns exactly one signature per item; fail closed if not.
        sigs.pop().ok_or(Error::Device { op: "sign", rv: "no signature returned".into() })
    }

    /// Signs a batch of `(message, SHA-256(message))` items with one key; same guarantees as
    /// [`Hsm::sign`] for each signature. The batch is cut into requests, all submitted before
    /// the first answer is awaited, so that every session of the backend has work, and the
    /// caller verifies each request's signatures while the sessions sign the next requests.
    /// All or nothing: any failure fails the batch, and no signature of a failed batch is
    /// released.
    pub fn sign_many<M: AsRef<[u8]>>(
        &self,
        label: &str,
        items: &[(M, [u8; 32])],
    ) -> Result<Vec<[u8; 64]>, Error> {
        self.sign_pipelined(label, items)
    }

    /// Counts the outcome of [`Hsm::pipeline`]: released signatures or one failed call.
    fn sign_pipelined<M: AsRef<[u8]>>(
        &self,
        label: &str,
        items: &[(M, [u8; 32])],
    ) -> Result<Vec<[u8; 64]>, Error> {
        let result = self.pipeline(label, items);
        match &result {
            Ok(sigs) => {
                self.inner.signatures.fetch_add(sigs.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.inner.sign_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Signs `items` in slices, all submitted at once. The backend serves requests in the
    /// order they came, so the slices of one call are signed before those of a call made after
    /// it: concurrent callers (the pipeline's workers) finish one after another, and each
    /// encodes and commits while the others' slices keep every session busy. (Submitted a few
    /// at a time, the callers' slices would interleave, all callers would finish together and
    /// the pool would idle while they encode.) Each request carries the [`Check`] of its
    /// slice, and the answers are collected in order, so the caller verifies one slice while
    /// the sessions sign the next. All or nothing: on any error no signature is returned (see
    /// [`all_or_error`] for which error the caller sees).
    fn pipeline<M: AsRef<[u8]>>(&self, label: &str, items: &[(M, [u8; 32])]) -> Result<Vec<[u8; 64]>, Error> {
        validate_label(label)?;
        // Every digest is checked against its message before anything is sent, so the HSM
        // never signs a digest that does not belong to its message.
        if items.iter().any(|(message, digest)| sha256(message.as_ref()) != *digest) {
            return Err(Error::DigestMismatch);
        }
        let verifier = self.verifier(label)?;
        let requests = self.submit_all(label, &verifier, items);
        let answers: Vec<_> = requests.into_iter().map(|(range, pending)| (range, pending.wait())).collect();
        let mut out = Vec::with_capacity(items.len());
        for (range, checked) in all_or_error(answers)? {
            let sigs = checked.into_signatures();
            // A check returns one signature per message; fail closed all the same.
            if sigs.len() != range.len() {
                return Err(Error::Device {
                    op: "sign",
                    rv: format!("{} signatures for {} digests", sigs.len(), range.len()),
                });
            }
            out.extend(sigs);
        }
        Ok(out)
    }

    /// Submits all of `items` in slices sized for the backend's sessions (see [`slice_len`]),
    /// each with the [`Check`] of its messages.
    fn submit_all<M: AsRef<[u8]>>(
        &self,
        label: &str,
        verifier: &Arc<Verifier>,
        items: &[(M, [u8; 32])],
    ) -> Vec<(Range<usize>, PendingSignatures)> {
        let slots = self.inner.backend.parallelism().max(1) + 1;
        let mut requests = Vec::new();
        let mut next = 0;
        while next < items.len() {
            let len = slice_len(items.len() - next, next, slots);
            let range = next..next + len;
            let slice = &items[range.clone()];
            let digests = slice.iter().map(|(_, digest)| *digest).collect();
            let messages = slice.iter().map(|(m, _)| m.as_ref());
            let check = Check::new(label, verifier.clone(), messages, self.inner.shared.clone());
            requests.push((range, self.inner.backend.submit_digests(label, digests, check)));
            next += len;
        }
        requests
    }

    fn verifier(&self, label: &str) -> Result<Arc<Verifier>, Error> {
        if let Some(v) = self.inner.shared.verifiers.read().ok().and_then(|c| c.get(label).cloned()) {
            return Ok(v);
        }
        let info = self.inner.backend.find_key(label)?;
        let point = info.public_key.to_encoded_point(false);
        let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes()).map_err(|e| {
            Error::UnsupportedKey {
                label: label.into(),
                detail: format!("public key rejected by the verifier: {e}"),
            }
        })?;
        let v = Arc::new(Verifier { key });
        if let Ok(mut cache) = self.inner.shared.verifiers.write() {
            cache.insert(label.to_string(), v.clone());
        }
        Ok(v)
    }

    /// Generates the store's key-encryption key ([`Backend::generate_kek`]).
    pub fn generate_kek(&self, label: &str) -> Result<(), Error> {
        validate_label(label)?;
        self.inner.backend.generate_kek(label)
    }

    /// Checks the store's key-encryption key ([`Backend::find_kek`]).
    pub fn find_kek(&self, label: &str) -> Result<(), Error> {
        self.inner.backend.find_kek(label)
    }

    /// Wraps a batch's data key under the KEK ([`Backend::wrap_data_key`]).
    pub fn wrap_data_key(&self, kek_label: &str, key: &[u8]) -> Result<Vec<u8>, Error> {
        self.inner.backend.wrap_data_key(kek_label, key)
    }

    /// Unwraps a batch's data key ([`Backend::unwrap_data_key`]).
    pub fn unwrap_data_key(
        &self,
        kek_label: &str,
        wrapped: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        self.inner.backend.unwrap_data_key(kek_label, wrapped)
    }

    /// A cheap liveness check of the backend (token present, logged in). Use
    /// [`Hsm::check_key`] for the full test-sign-and-verify readiness wants.
    pub fn health(&self) -> Result<(), Error> {
        self.inner.backend.health()
    }

    /// Test-signs a fresh random message with `label` and verifies the result: the end-to-end
    /// readiness check (HSM reachable, key usable, signatures correct).
    pub fn check_key(&self, label: &str) -> Result<(), Error> {
        let mut message = *b"hcert-signer health check ........................";
        let n = message.len();
        aws_lc_rs::rand::fill(&mut message[n - 24..])
            .map_err(|_| Error::Device { op: "health", rv: "no randomness for the test message".into() })?;
        let digest = sha256(&message);
        self.sign(label, &message, &digest).map(|_| ())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        Stats {
            signatures: self.inner.signatures.load(Ordering::Relaxed),
            sign_failures: self.inner.sign_failures.load(Ordering::Relaxed),
            bad_signatures: self.inner.shared.bad_signatures.load(Ordering::Relaxed),
            backend: self.inner.backend.stats(),
        }
    }
}

/// The checked slices of a pipelined request if every slice was signed, else the error its
/// caller sees. A bad signature anywhere wins: a later slice, signed on another session, may
/// have failed its software check and reset the pool, so that earlier slices only saw the
/// reset (`Unavailable`), and the caller must learn of the bad signature — it is the cause,
/// and what alerts count. Otherwise the first error in submission order.
fn all_or_error(
    answers: Vec<(Range<usize>, Result<Checked, Error>)>,
) -> Result<Vec<(Range<usize>, Checked)>, Error> {
    let mut first = None;
    let mut ok = Vec::with_capacity(answers.len());
    for (range, answer) in answers {
        match answer {
            Ok(checked) => ok.push((range, checked)),
            Err(e @ Error::BadSignature { .. }) => return Err(e),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(ok),
    }
}

/// Items in the next request of a batch with `remaining` items left after `done` submitted,
/// for a backend with `slots - 1` sessions: a share of what is left per slot, so slices shrink
/// towards the end and the sessions finish together, and no more than already submitted, so
/// the first requests are small and every session starts at once.
fn slice_len(remaining: usize, done: usize, slots: usize) -> usize {
    remaining.div_ceil(2 * slots).min(done.max(1)).clamp(1, MAX_SLICE).min(remaining)
}

/// SHA-256 with aws-lc (the same digest the daemon computes over the COSE to-be-signed bytes).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Checks a key label: 1–40 characters of `A–Z a–z 0–9 . _ : -` (it appears in URLs, logs and
/// the YubiHSM's 40-byte label field).
pub fn validate_label(label: &str) -> Result<(), Error> {
    let bad = |reason| Err(Error::InvalidLabel { label: label.chars().take(64).collect(), reason });
    if label.is_empty() {
        return bad("empty");
    }
    if label.len() > 40 {
        return bad("longer than 40 characters");
    }
    if !label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return bad("unsupported character");
    }
    Ok(())
}

/// DER of the prime256v1 OID, the `CKA_EC_PARAMS` of a P-256 key.
pub(crate) const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_label("DSC-VN-2025.1").is_ok());
        assert!(validate_label("").is_err());
        assert!(validate_label("a b").is_err());
        assert!(validate_label("x/y").is_err());
        assert!(validate_label(&"a".repeat(41)).is_err());
    }

    /// A software backend whose signatures can be made high-S or corrupted on demand.
    struct Fake {
        key: p256::ecdsa::SigningKey,
        mode: std::sync::Mutex<&'static str>,
        faults: AtomicU64,
        queue: Arc<Queue>,
    }

    /// What the pipeline asked of the fake: requests made, and how many were pending at once.
    #[derive(Default)]
    struct Queue {
        requests: AtomicU64,
        in_flight: AtomicU64,
        max_in_flight: AtomicU64,
    }

    impl Fake {
        fn info(&self) -> KeyInfo {
            KeyInfo { label: "k".into(), id: vec![1], public_key: self.key.verifying_key().into() }
        }
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn generate_key(&self, label: &str) -> Result<KeyInfo, Error> {
            Err(Error::KeyExists { label: label.into() })
        }
        fn find_key(&self, label: &str) -> Result<KeyInfo, Error> {
            if label == "k" { Ok(self.info()) } else { Err(Error::KeyNotFound { label: label.into() }) }
        }
        fn list_keys(&self) -> Result<Vec<KeyInfo>, Error> {
            Ok(vec![self.info()])
        }
        fn sign_digests(&self, _: &str, digests: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, Error> {
            use p256::ecdsa::signature::hazmat::PrehashSigner;
            let mode = *self.mode.lock().expect("lock");
            digests
                .iter()
                .map(|d| {
                    let sig: p256::ecdsa::Signature = self.key.sign_prehash(d).expect("software sign");
                    // p256 signs low-S; flip to the equally valid high-S form, or corrupt.
                    let (r, s) = sig.split_scalars();
                    let out = match mode {
                        "high-s" => {
                            p256::ecdsa::Signature::from_scalars(r, -*s).expect("high-S").to_bytes().into()
                        }
                        "corrupt" => {
                            let mut b: [u8; 64] = sig.to_bytes().into();
                            b[40] ^= 1;
                            b
                        }
                        "poison" if *d == sha256(b"poison") => {
                            let mut b: [u8; 64] = sig.to_bytes().into();
                            b[40] ^= 1;
                            b
                        }
                        _ => sig.to_bytes().into(),
                    };
                    Ok(out)
                })
                .collect()
        }
        fn submit_digests(&self, label: &str, digests: Vec<[u8; 32]>, check: Check) -> PendingSignatures {
            // Answered later, like the PKCS#11 pool: counts what is in flight.
            let result =
                self.sign_digests(label, &digests).and_then(|raw| check.run(raw, |w| self.report_fault(w)));
            let q = self.queue.clone();
            q.requests.fetch_add(1, Ordering::SeqCst);
            let now = q.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            q.max_in_flight.fetch_max(now, Ordering::SeqCst);
            PendingSignatures::deferred(move || {
                q.in_flight.fetch_sub(1, Ordering::SeqCst);
                result
            })
        }
        fn health(&self) -> Result<(), Error> {
            Ok(())
        }
        fn report_fault(&self, _: &str) {
            self.faults.fetch_add(1, Ordering::SeqCst);
        }
        fn parallelism(&self) -> usize {
            2
        }
        fn stats(&self) -> BackendStats {
            BackendStats { faults: self.faults.load(Ordering::SeqCst), ..BackendStats::default() }
        }
    }

    fn fake(mode: &'static str) -> Hsm {
        fake_with_queue(mode).0
    }

    fn fake_with_queue(mode: &'static str) -> (Hsm, Arc<Queue>) {
        let mut seed = [7u8; 32];
        seed[0] = 1;
        let queue = Arc::new(Queue::default());
        let hsm = Hsm::from_backend(Fake {
            key: p256::ecdsa::SigningKey::from_bytes(&seed.into()).expect("key"),
            mode: std::sync::Mutex::new(mode),
            faults: AtomicU64::new(0),
            queue: queue.clone(),
        });
        (hsm, queue)
    }

    fn batch(n: usize) -> Vec<(Vec<u8>, [u8; 32])> {
        (0..n).map(|i| format!("record {i}").into_bytes()).map(|m| (m.clone(), sha256(&m))).collect()
    }

    fn verifies(hsm: &Hsm, m: &[u8], sig: &[u8; 64]) -> bool {
        use p256::ecdsa::signature::Verifier;
        let pk = hsm.public_key("k").expect("pk");
        let sig = p256::ecdsa::Signature::from_slice(sig).expect("sig");
        sig.normalize_s().is_none() && p256::ecdsa::VerifyingKey::from(&pk).verify(m, &sig).is_ok()
    }

    #[test]
    fn high_s_signatures_are_normalised_to_low_s() {
        let hsm = fake("high-s");
        let sig = hsm.sign("k", b"msg", &sha256(b"msg")).expect("sign");
        assert!(verifies(&hsm, b"msg", &sig));
        let items: Vec<(Vec<u8>, [u8; 32])> = (0..100u8).map(|i| (vec![i; 10], sha256(&[i; 10]))).collect();
        let sigs = hsm.sign_many("k", &items).expect("batch");
        assert_eq!(sigs.len(), 100);
        for ((m, _), s) in items.iter().zip(&sigs) {
            assert!(verifies(&hsm, m, s));
        }
        assert_eq!(hsm.stats().signatures, 101);
    }

    #[test]
    fn a_bad_signature_is_never_released_and_is_reported_as_a_fault() {
        let hsm = fake("corrupt");
        let e = hsm.sign("k", b"msg", &sha256(b"msg")).expect_err("corrupt");
        assert!(matches!(e, Error::BadSignature { .. }), "{e:?}");
        assert!(e.is_transient());
        let items: Vec<(Vec<u8>, [u8; 32])> = (0..64u8).map(|i| (vec![i], sha256(&[i]))).collect();
        assert!(hsm.sign_many("k", &items).is_err());
        let stats = hsm.stats();
        assert_eq!(stats.signatures, 0);
        assert!(stats.bad_signatures >= 2, "{stats:?}");
        assert!(stats.backend.faults >= 2, "{stats:?}");
    }

    #[test]
    fn batches_are_submitted_whole_and_returned_in_order() {
        let (hsm, queue) = fake_with_queue("high-s");
        let mut total = 0;
        for n in [0, 1, 2, 5, 17, 64, 300] {
            let items = batch(n);
            let before = queue.requests.load(Ordering::SeqCst);
            let sigs = hsm.sign_many("k", &items).expect("batch");
            assert_eq!(sigs.len(), n);
            for ((m, _), s) in items.iter().zip(&sigs) {
                assert!(verifies(&hsm, m, s), "batch of {n}: signature out of order or invalid");
            }
            total += n as u64;
            // Every slice was sent before the first answer was taken.
            let requests = queue.requests.load(Ordering::SeqCst) - before;
            assert!(queue.max_in_flight.load(Ordering::SeqCst) >= requests, "batch of {n}");
            if n == 300 {
                // Slices shrink towards the end of a batch but stay bounded: 300 items are
                // neither one request nor 300.
                assert!(
                    (300 / MAX_SLICE as u64..=60).contains(&requests),
                    "{requests} requests for 300 items"
                );
            }
        }
        assert_eq!(hsm.stats().signatures, total);
        assert_eq!(queue.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_bad_signature_anywhere_is_the_error_reported_else_the_first_error() {
        let unavailable = || Error::Unavailable { reason: "reset".into() };
        let bad = || Error::BadSignature { label: "k".into() };
        let timeout = || Error::Timeout { op: "sign", after: std::time::Duration::from_secs(1) };
        let e = all_or_error(vec![(0..1, Err(unavailable())), (1..2, Err(bad()))]).expect_err("failed");
        assert!(matches!(e, Error::BadSignature { .. }), "{e:?}");
        let e = all_or_error(vec![(0..1, Err(timeout())), (1..2, Err(unavailable()))]).expect_err("failed");
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert!(all_or_error(vec![]).expect("nothing failed").is_empty());
    }

    #[test]
    fn one_bad_signature_fails_the_whole_batch() {
        let (hsm, _) = fake_with_queue("poison");
        let mut items = batch(64);
        items[40] = (b"poison".to_vec(), sha256(b"poison"));
        let e = hsm.sign_many("k", &items).expect_err("poisoned batch");
        assert!(matches!(e, Error::BadSignature { .. }), "{e:?}");
        let stats = hsm.stats();
        assert_eq!(stats.signatures, 0, "{stats:?}");
        assert_eq!(stats.sign_failures, 1, "{stats:?}");
        assert_eq!(stats.bad_signatures, 1, "{stats:?}");
        assert_eq!(stats.backend.faults, 1, "{stats:?}");
        // The rest of the batch signs once the bad item is gone.
        items.remove(40);
        assert_eq!(hsm.sign_many("k", &items).expect("clean batch").len(), 63);
    }

    #[test]
    fn a_wrong_digest_anywhere_fails_the_batch_without_a_fault() {
        let (hsm, queue) = fake_with_queue("");
        let mut items = batch(64);
        items[50].1[0] ^= 1;
        let e = hsm.sign_many("k", &items).expect_err("bad digest");
        assert!(matches!(e, Error::DigestMismatch), "{e:?}");
        let stats = hsm.stats();
        assert_eq!((stats.signatures, stats.sign_failures, stats.backend.faults), (0, 1, 0), "{stats:?}");
        // Nothing was submitted: every digest is checked before the first request.
        assert_eq!(queue.requests.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn slices_cover_the_batch_start_small_and_end_small() {
        for slots in [2, 3, 5, 17] {
            for n in [1, 2, 3, 10, 64, 1000] {
                let mut lens = Vec::new();
                let mut left = n;
                while left > 0 {
                    let len = slice_len(left, n - left, slots);
                    assert!((1..=MAX_SLICE.min(left)).contains(&len), "{len} of {left}");
                    lens.push(len);
                    left -= len;
                }
                // The first request goes out at once, and the sessions finish together.
                assert_eq!((lens[0], lens[lens.len() - 1]), (1, 1), "{lens:?}");
            }
        }
    }

    #[test]
    fn sha256_matches_sha2() {
        use sha2::Digest;
        let d: [u8; 32] = sha2::Sha256::digest(b"abc").into();
        assert_eq!(sha256(b"abc"), d);
    }
}
