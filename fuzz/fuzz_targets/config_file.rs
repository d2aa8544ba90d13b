//! Fuzzes the `config.toml` parser (`Config::from_toml_str`, what `Config::load` runs on the
//! file's text) with arbitrary UTF-8.
//!
//! Invariants, beyond "never panics":
//! * every failure is an `Error::Config` (a message for the operator, never another kind);
//! * an accepted configuration is what TOML says, with the relative paths it resolves (state
//!   directory, TLS files, DSC and upload certificates, value-set folder) joined to the base
//!   folder and the absolute ones unchanged;
//! * an accepted configuration satisfies every rule of the checks: ISO country, validity days,
//!   distinct listeners, a client CA, unique clients with roles (and well-formed key pins),
//!   well-formed accepted UVCI prefixes, non-zero limits, key and audit
//!   periods, retention, and a known log level;
//! * the store's PostgreSQL keys only with `backend = "postgres"`, which has a URL with no
//!   password in it, and the store's files resolved like the others.
#![no_main]

use std::path::{Path, PathBuf};

use hcert_signer::Error;
use hcert_signer::config::{Config, MAX_POOL_SIZE, StoreBackend};
use hcert_signer::store::postgres::connect::check_url;

/// The folder relative paths are resolved against (never read: resolving opens nothing).
const BASE: &str = "/fuzz-config-base";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = Path::new(BASE);
    let config = match Config::from_toml_str(text, base) {
        Ok(c) => c,
        Err(e) => {
            assert!(matches!(e, Error::Config(_)), "not a configuration error: {e:?}");
            return;
        }
    };
    let raw: Config = toml::from_str(text).expect("accepted by from_toml_str, refused by TOML");

    resolved(&raw.state_dir, &config.state_dir, base);
    resolved(&raw.tls.cert, &config.tls.cert, base);
    resolved(&raw.tls.key, &config.tls.key, base);
    assert_eq!(raw.tls.client_ca.len(), config.tls.client_ca.len());
    for (r, c) in raw.tls.client_ca.iter().zip(&config.tls.client_ca) {
        resolved(r, c, base);
    }
    assert_eq!(raw.signing.dscs.len(), config.signing.dscs.len());
    for (r, c) in raw.signing.dscs.iter().zip(&config.signing.dscs) {
        assert_eq!(r.label, c.label);
        resolved(&r.certificate, &c.certificate, base);
    }
    match (&raw.signing.upload, &config.signing.upload) {
        (Some(r), Some(c)) => resolved(&r.certificate, &c.certificate, base),
        (None, None) => {}
        _ => panic!("signing.upload appeared or vanished"),
    }
    match (&raw.signing.value_sets_dir, &config.signing.value_sets_dir) {
        (Some(r), Some(c)) => resolved(r, c, base),
        (None, None) => {}
        _ => panic!("signing.value_sets_dir appeared or vanished"),
    }

    for (r, c) in
        [(&raw.store.password_file, &config.store.password_file), (&raw.store.tls_ca, &config.store.tls_ca)]
    {
        match (r, c) {
            (Some(r), Some(c)) => resolved(r, c, base),
            (None, None) => {}
            _ => panic!("a store file appeared or vanished"),
        }
    }

    let c = &config;
    match c.store.backend {
        StoreBackend::Sled => {
            assert!(c.store.url.is_none() && c.store.password_file.is_none() && c.store.tls_ca.is_none());
        }
        StoreBackend::Postgres => {
            let url = c.store.url.as_deref().expect("postgres without a url");
            let parsed = check_url(url, c.store.tls_ca.is_some()).expect("an accepted url passes its check");
            assert!(parsed.get_password().is_none(), "a password in the url");
            assert!((1..=MAX_POOL_SIZE).contains(&c.store.pool_size));
        }
    }
    assert!(c.country.len() == 2 && c.country.bytes().all(|b| b.is_ascii_uppercase()), "{:?}", c.country);
    assert!((1..=3650).contains(&c.signing.validity_days));
    assert_ne!(c.listen, c.metrics_listen);
    assert!(!c.tls.client_ca.is_empty());
    let mut names = std::collections::HashSet::new();
    for client in &c.clients {
        assert!(names.insert(&client.name), "client {:?} twice", client.name);
        assert!(!client.roles.is_empty(), "client {:?} without roles", client.name);
        assert_eq!(client.pins().len(), client.spki_sha256.len(), "a pin that is not 64 hex digits");
    }
    for p in &c.signing.accepted_uvci_prefixes {
        assert!(hcert_signer::hcert::uvci::check_prefix(p).is_ok(), "accepted UVCI prefix {p:?}");
        assert!(p.starts_with("URN:UVCI:01:"), "{p:?}");
    }
    assert!(c.limits.max_batch_records >= 1 && c.limits.max_sync_records >= 1);
    assert!(c.keys.approval_hours >= 1 && (1..=730).contains(&c.keys.usage_days));
    assert!(c.audit.checkpoint_secs >= 1 && c.store.retention_days >= 1);
    assert!(matches!(c.log_level.as_str(), "error" | "warn" | "info" | "debug" | "trace"), "{}", c.log_level);
});

/// `resolved` is `raw` taken from `base` if relative, `raw` itself if absolute.
fn resolved(raw: &Path, resolved: &Path, base: &Path) {
    let want: PathBuf = if raw.is_relative() { base.join(raw) } else { raw.to_path_buf() };
    assert_eq!(resolved, want, "path {raw:?} resolved to {resolved:?}");
    assert!(resolved.is_absolute(), "{resolved:?} is still relative");
}
