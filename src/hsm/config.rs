//! The `[hsm]` table of config.toml: which backend, where the token is, where the PIN is.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::pin::PinSource;

/// Which HSM to use and how to reach it (`[hsm]` with `backend = "pkcs11"` or `"yubihsm"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum HsmConfig {
    /// Any PKCS#11 module (SoftHSM2 in development and tests, a network or PCIe HSM in production).
    Pkcs11(Pkcs11Config),
    /// A YubiHSM2, over yubihsm-connector (HTTP) or USB.
    Yubihsm(YubiHsmConfig),
}

/// PKCS#11 settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the vendor's PKCS#11 shared library.
    pub module: PathBuf,
    /// Label of the token holding the Document Signer keys.
    pub token_label: String,
    /// Where the user PIN is read from.
    pub pin: PinSource,
    /// Number of signing sessions (worker threads). Default: the number of CPUs; always capped
    /// by what the token allows (its max session count, less the login and admin sessions).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Time allowed for one PKCS#11 call before its worker is abandoned (default 5000 ms).
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// First delay between re-initialisation attempts after a device fault (default 250 ms);
    /// it doubles on each failure.
    #[serde(default = "default_backoff_ms")]
    pub reinit_backoff_ms: u64,
    /// Longest delay between re-initialisation attempts (default 30 000 ms).
    #[serde(default = "default_backoff_max_ms")]
    pub reinit_backoff_max_ms: u64,
    /// Give up re-initialising after this many failed attempts in a row (default: never give up,
    /// so signing resumes by itself whenever the HSM comes back).
    #[serde(default)]
    pub reinit_max_attempts: Option<u32>,
}

/// YubiHSM2 settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YubiHsmConfig {
    /// `http://HOST:PORT` of yubihsm-connector (default `http://127.0.0.1:12345`), or `usb`
    /// (`usb:SERIAL` for one device among several; needs the `yubihsm-usb` build feature).
    #[serde(default = "default_connector")]
    pub connector: String,
    /// Object id of the authentication key the appliance logs in with.
    pub auth_key_id: u16,
    /// Where that authentication key's password is read from.
    pub password: PinSource,
    /// Domains new keys are put in (1–16; default `[1]`).
    #[serde(default = "default_domains")]
    pub domains: Vec<u8>,
    /// Time allowed for one command (default 5000 ms).
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
}

fn default_op_timeout_ms() -> u64 {
    5000
}
fn default_backoff_ms() -> u64 {
    250
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_connector() -> String {
    "http://127.0.0.1:12345".into()
}
fn default_domains() -> Vec<u8> {
    vec![1]
}

impl Pkcs11Config {
    /// A config with the defaults for everything but the module, token and PIN.
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: PinSource) -> Self {
        Pkcs11Config {
            module: module.into(),
            token_label: token_label.into(),
            pin,
            pool_size: None,
            op_timeout_ms: default_op_timeout_ms(),
            reinit_backoff_ms: default_backoff_ms(),
            reinit_backoff_max_ms: default_backoff_max_ms(),
            reinit_max_attempts: None,
        }
    }

    /// The per-call timeout.
    pub fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }

    pub(crate) fn validate(&self) -> Result<(), super::Error> {
        let bad = |m: &str| Err(super::Error::Config(m.to_string()));
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            return bad("token_label must be 1–32 bytes (the PKCS#11 label field)");
        }
        if self.pool_size == Some(0) {
            return bad("pool_size must be at least 1");
        }
        if self.op_timeout_ms == 0 {
            return bad("op_timeout_ms must be at least 1");
        }
        if self.reinit_backoff_ms == 0 || self.reinit_backoff_max_ms < self.reinit_backoff_ms {
            return bad("need 0 < reinit_backoff_ms <= reinit_backoff_max_ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        hsm: HsmConfig,
    }

    #[test]
    fn pkcs11_table_parses_with_defaults() {
        let w: Wrapper = toml::from_str(
            r#"
            [hsm]
            backend = "pkcs11"
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "hcert-dsc"
            pin = { credential = "hsm-pin" }
            pool_size = 4
            "#,
        )
        .expect("parse");
        let HsmConfig::Pkcs11(c) = w.hsm else { panic!("wrong backend") };
        assert_eq!(c.pool_size, Some(4));
        assert_eq!(c.op_timeout_ms, 5000);
        assert_eq!(c.pin, PinSource::Credential("hsm-pin".into()));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_fields_and_backends_are_rejected() {
        let unknown = toml::from_str::<Wrapper>(
            r#"
            [hsm]
            backend = "pkcs11"
            module = "/x.so"
            token_label = "t"
            pin = { file = "/p" }
            pin_value = "1234"
            "#,
        );
        assert!(unknown.is_err());
        let backend = toml::from_str::<Wrapper>(
            r#"
            [hsm]
            backend = "tpm"
            "#,
        );
        assert!(backend.is_err());
    }

    #[test]
    fn yubihsm_table_parses() {
        let w: Wrapper = toml::from_str(
            r#"
            [hsm]
            backend = "yubihsm"
            auth_key_id = 2
            password = { file = "/etc/hcert-signer/yubihsm-password" }
            "#,
        )
        .expect("parse");
        let HsmConfig::Yubihsm(c) = w.hsm else { panic!("wrong backend") };
        assert_eq!(c.connector, "http://127.0.0.1:12345");
        assert_eq!(c.domains, vec![1]);
    }
}
