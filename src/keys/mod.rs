//! Document Signer keys in service: which DSCs may sign now, and which one signs a given record.
//!
//! The pipeline asks [`Keyring::select`] for every record; the answer follows the HCERT policy:
//! among the active keys whose EKUs allow the certificate type and whose usage period covers
//! now, the one activated most recently. The set is swapped whole, so rotation takes effect for
//! the next record without a restart and without touching records in flight.

pub mod audit_key;
pub mod bootstrap;
pub mod csca;
pub mod kek;
pub mod lifecycle;
pub mod retirement;
pub mod view;

use std::sync::{Arc, RwLock};

use crate::hcert::CertificateType;
use crate::hcert::cose::KeyHeader;
use crate::pki::Dsc;

/// Default private-key usage period: six months after the DSC's notBefore (EU governance).
pub const DEFAULT_USAGE_SECS: i64 = 182 * 86_400;

/// One Document Signer key that may sign.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    /// Its label in the HSM.
    pub label: String,
    /// Its certificate.
    pub dsc: Arc<Dsc>,
    /// The COSE protected header, built once.
    pub header: KeyHeader,
    /// When it was activated (any monotonic unit — the lifecycle uses Unix milliseconds); the
    /// most recent wins.
    pub activated_at: i64,
    /// End of the private-key usage period (seconds): no signature after this.
    pub usage_end: i64,
}

impl ActiveKey {
    /// A key with the default usage period (six months from notBefore, never past notAfter).
    pub fn new(label: &str, dsc: Dsc, activated_at: i64) -> ActiveKey {
        Self::with_usage(label, dsc, activated_at, DEFAULT_USAGE_SECS)
    }

    /// A key whose private-key usage period lasts `usage_secs` from notBefore (never past
    /// notAfter).
    pub fn with_usage(label: &str, dsc: Dsc, activated_at: i64, usage_secs: i64) -> ActiveKey {
        let usage_end = lifecycle::usage_end(&dsc, usage_secs);
        ActiveKey {
            label: label.to_owned(),
            header: KeyHeader::es256(dsc.kid),
            dsc: Arc::new(dsc),
            activated_at,
            usage_end,
        }
    }

    /// Whether it may sign a certificate of `kind` at `now`.
    pub fn usable(&self, kind: CertificateType, now: i64) -> bool {
        self.dsc.allows(kind) && lifecycle::usage_start(&self.dsc) <= now && now < self.usage_end
    }
}

/// Why no key can sign a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no active Document Signer key may sign {kind} certificates now{detail}")]
pub struct NoKey {
    /// The certificate type asked for.
    pub kind: &'static str,
    /// More about why, if known.
    pub detail: String,
}

/// The keys in service, shared by the pipeline workers and swapped on rotation.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: Arc<RwLock<Arc<Vec<ActiveKey>>>>,
}

impl Keyring {
    /// A keyring holding `keys`.
    pub fn new(keys: Vec<ActiveKey>) -> Keyring {
        Keyring { keys: Arc::new(RwLock::new(Arc::new(keys))) }
    }

    /// The current set (a snapshot: later swaps do not change it).
    pub fn snapshot(&self) -> Arc<Vec<ActiveKey>> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the set of active keys.
    pub fn replace(&self, keys: Vec<ActiveKey>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// The key that signs a certificate of `kind` at `now`.
    pub fn select(&self, kind: CertificateType, now: i64) -> Result<ActiveKey, NoKey> {
        select(&self.snapshot(), kind, now)
    }
}

/// [`Keyring::select`] over a snapshot, so a chunk of records sees one consistent set.
pub fn select(keys: &[ActiveKey], kind: CertificateType, now: i64) -> Result<ActiveKey, NoKey> {
    keys.iter()
        .filter(|k| k.usable(kind, now))
        .max_by_key(|k| (k.activated_at, k.dsc.not_before))
        .cloned()
        .ok_or_else(|| NoKey {
            kind: kind.name(),
            detail: if keys.is_empty() {
                " (none is active)".into()
            } else if keys.iter().all(|k| now >= k.usage_end) {
                " (every usage period has ended: rotate the DSC)".into()
            } else {
                String::new()
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        label: &str,
        nb: i64,
        na: i64,
        activated: i64,
        allowed: Option<Vec<CertificateType>>,
    ) -> ActiveKey {
        let dsc = Dsc {
            der: label.as_bytes().to_vec(),
            kid: crate::hcert::cose::kid(label.as_bytes()),
            not_before: nb,
            not_after: na,
            country: Some("VN".into()),
            subject: format!("CN={label}"),
            key: crate::pki::dsc::DscKey::P256(vec![4; 65]),
            allowed,
            key_usage_period: None,
        };
        ActiveKey::new(label, dsc, activated)
    }

    #[test]
    fn picks_the_latest_activated_usable_key() {
        use CertificateType::*;
        let old = key("old", 0, 1_000_000_000, 10, None);
        let new = key("new", 100, 1_000_000_000, 20, None);
        let tests_only = key("test", 100, 1_000_000_000, 30, Some(vec![Test]));
        let ring = Keyring::new(vec![old, new, tests_only]);
        assert_eq!(ring.select(Vaccination, 1000).unwrap().label, "new");
        assert_eq!(ring.select(Test, 1000).unwrap().label, "test");
        // Before "new" starts, only "old" covers the time.
        assert_eq!(ring.select(Vaccination, 50).unwrap().label, "old");
    }

    #[test]
    fn usage_period_ends_signing() {
        let k = key("k", 0, 10 * DEFAULT_USAGE_SECS, 1, None);
        let ring = Keyring::new(vec![k]);
        assert!(ring.select(CertificateType::Recovery, DEFAULT_USAGE_SECS - 1).is_ok());
        let e = ring.select(CertificateType::Recovery, DEFAULT_USAGE_SECS).unwrap_err();
        assert!(e.to_string().contains("usage period has ended"), "{e}");
        assert!(
            Keyring::default()
                .select(CertificateType::Test, 0)
                .unwrap_err()
                .to_string()
                .contains("none is active")
        );
    }

    #[test]
    fn a_private_key_usage_period_bounds_signing_with_the_configured_one() {
        let dsc = |pkup| {
            let mut k = key("k", 0, 10 * DEFAULT_USAGE_SECS, 1, None);
            let mut d = (*k.dsc).clone();
            d.key_usage_period = pkup;
            k = ActiveKey::new("k", d, 1);
            k
        };
        // Tighter than the configured six months: the extension's end wins.
        let k = dsc(Some((None, Some(1000))));
        assert_eq!(k.usage_end, 1000);
        assert!(k.usable(CertificateType::Test, 999) && !k.usable(CertificateType::Test, 1000));
        // Looser: the configured period wins.
        assert_eq!(dsc(Some((None, Some(20 * DEFAULT_USAGE_SECS)))).usage_end, DEFAULT_USAGE_SECS);
        // A later start: nothing is signed before it.
        let k = dsc(Some((Some(500), None)));
        assert!(!k.usable(CertificateType::Test, 499) && k.usable(CertificateType::Test, 500));
        assert_eq!(lifecycle::usage_start(&k.dsc), 500);
    }

    #[test]
    fn replace_swaps_for_later_selections_only() {
        let ring = Keyring::new(vec![key("a", 0, 1 << 40, 1, None)]);
        let snap = ring.snapshot();
        ring.replace(vec![key("b", 0, 1 << 40, 2, None)]);
        assert_eq!(snap[0].label, "a");
        assert_eq!(ring.select(CertificateType::Test, 5).unwrap().label, "b");
    }
}
