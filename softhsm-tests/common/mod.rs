//! Shared helpers for the SoftHSM2 integration tests: a fresh token per test, and the backend
//! test suite that every backend must pass.
//!
//! SoftHSM reads `$SOFTHSM2_CONF` when the module is initialised, and the crate forbids the
//! `unsafe` `std::env::set_var`, so each test creates its token and then re-runs itself (the same
//! test binary, filtered to that one test) as a child process with `SOFTHSM2_CONF` set. Every
//! test thus gets its own process and its own token, under `cargo nextest` and plain
//! `cargo test` alike.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hcert_signer::hsm::{Error, Hsm, HsmConfig, PinSource, Pkcs11Config, sha256};
use p256::ecdsa::signature::Verifier;

/// Label of the test token.
pub const TOKEN_LABEL: &str = "hcert-test";
/// Its user PIN (a test token: the value is not a secret).
pub const USER_PIN: &str = "user-pin-1234";
/// Its SO-PIN.
pub const SO_PIN: &str = "so-pin-5678";
const CHILD_ENV: &str = "HCERT_SOFTHSM_TEST_DIR";

/// Where SoftHSM2's module is on this machine.
pub fn module() -> PathBuf {
    let candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("SoftHSM2 is not installed (apt-get install softhsm2)")
}

/// A fresh token, as seen from inside the child process.
pub struct Token {
    /// Its directory (conf, token files, PIN file).
    pub dir: PathBuf,
    /// `dir/softhsm2.conf` (`SOFTHSM2_CONF` of this process).
    pub conf: PathBuf,
    /// The user PIN file (mode 0600).
    pub pin_file: PathBuf,
}

impl Token {
    /// An `[hsm]` config for this token with short timeouts and backoff, so fault tests are fast.
    pub fn config(&self) -> Pkcs11Config {
        let mut c = Pkcs11Config::new(module(), TOKEN_LABEL, PinSource::File(self.pin_file.clone()));
        c.pool_size = Some(2);
        c.op_timeout_ms = 3000;
        c.reinit_backoff_ms = 50;
        c.reinit_backoff_max_ms = 400;
        c
    }

    /// Opens the token through the appliance's interface.
    pub fn open(&self) -> Hsm {
        Hsm::open(&HsmConfig::Pkcs11(self.config())).expect("open the test token")
    }

    /// The token directory SoftHSM stores objects in.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }
}

/// Runs `body` against a fresh SoftHSM token. `test` must be the test function's name: the test
/// re-runs itself in a child process whose `SOFTHSM2_CONF` names the new token.
pub fn with_fresh_token(test: &str, body: impl FnOnce(&Token)) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let dir = PathBuf::from(dir);
        let token = Token { conf: dir.join("softhsm2.conf"), pin_file: dir.join("hsm-pin"), dir };
        body(&token);
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let conf = hcert_signer::hsm::softhsm::init_token(tmp.path(), TOKEN_LABEL, SO_PIN, USER_PIN)
        .expect("softhsm2-util --init-token");
    let pin_file = tmp.path().join("hsm-pin");
    write_private(&pin_file, &format!("{USER_PIN}\n"));
    let exe = std::env::current_exe().expect("current test binary");
    let status = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_ENV, tmp.path())
        .status()
        .expect("re-run the test with SOFTHSM2_CONF set");
    assert!(status.success(), "{test} failed in its token process ({status})");
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// Checks a released signature independently of the library: a valid low-S P-256 signature of
/// `message` under `public_key`, checked with the pure-Rust p256 verifier.
pub fn assert_valid(public_key: &p256::PublicKey, message: &[u8], sig: &[u8; 64]) {
    let sig = p256::ecdsa::Signature::from_slice(sig).expect("64-byte r‖s");
    assert!(sig.normalize_s().is_none(), "signature is not low-S");
    let vk = p256::ecdsa::VerifyingKey::from(public_key);
    vk.verify(message, &sig).expect("signature verifies with the DSC public key");
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The backend test suite: generate, refuse a duplicate, find, list, sign, verify, batch,
/// error cases, health. Every backend must pass it through the same [`Hsm`] interface.
pub fn backend_suite(hsm: &Hsm) {
    let a = hsm.generate_key("suite-a").expect("generate suite-a");
    assert_eq!(a.label, "suite-a");
    assert!(!a.id.is_empty());
    assert!(
        matches!(hsm.generate_key("suite-a"), Err(Error::KeyExists { .. })),
        "a second key with the same label must be refused"
    );
    let b = hsm.generate_key("suite-b").expect("generate suite-b");
    assert_ne!(a.public_key, b.public_key);
    assert_ne!(a.id, b.id);

    assert_eq!(hsm.find_key("suite-a").expect("find suite-a"), a);
    assert_eq!(hsm.public_key("suite-b").expect("public key"), b.public_key);
    let listed = hsm.list_keys().expect("list");
    assert!(listed.contains(&a) && listed.contains(&b), "{listed:?}");

    for i in 0..20 {
        let message = format!("suite message {i}");
        let sig = hsm.sign("suite-a", message.as_bytes(), &sha256(message.as_bytes())).expect("sign");
        assert_valid(&a.public_key, message.as_bytes(), &sig);
        // And not with the other key.
        let s = p256::ecdsa::Signature::from_slice(&sig).expect("sig");
        assert!(p256::ecdsa::VerifyingKey::from(&b.public_key).verify(message.as_bytes(), &s).is_err());
    }

    let items: Vec<(Vec<u8>, [u8; 32])> = (0..40)
        .map(|i| {
            let m = format!("batch item {i}").into_bytes();
            let d = sha256(&m);
            (m, d)
        })
        .collect();
    let sigs = hsm.sign_many("suite-b", &items).expect("sign_many");
    assert_eq!(sigs.len(), items.len());
    for ((m, _), s) in items.iter().zip(&sigs) {
        assert_valid(&b.public_key, m, s);
    }

    assert!(matches!(hsm.sign("suite-a", b"one message", &sha256(b"another")), Err(Error::DigestMismatch)));
    assert!(matches!(hsm.sign("no-such-key", b"m", &sha256(b"m")), Err(Error::KeyNotFound { .. })));
    assert!(matches!(hsm.generate_key("bad label"), Err(Error::InvalidLabel { .. })));

    hsm.health().expect("health");
    hsm.check_key("suite-a").expect("test-sign-and-verify");
    let stats = hsm.stats();
    assert!(stats.signatures >= 61, "{stats:?}");
    assert_eq!(stats.bad_signatures, 0, "{stats:?}");
}
