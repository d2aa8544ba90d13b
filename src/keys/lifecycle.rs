//! The DSC lifecycle security officers drive: generated → certified → active → retired (→
//! expired once the certificate's notAfter passes), with two-officer activation, and every change
//! written to the store together with its audit entry.
//!
//! The running [`Keyring`] is rebuilt from the stored records after every change, so activation
//! and retirement take effect for the next chunk of records without a restart; chunks already
//! signing keep the snapshot they took.
//!
//! Beside it: what the configuration may decide at first start ([`super::bootstrap`]), the
//! one-or-two-officer retirement rule ([`super::retirement`]) and the officers' view of a key
//! ([`super::view`]), and the country's CSCAs ([`super::csca`]). A DSC is imported only if it
//! chains to one of them ([`crate::pki::chain`]).

use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{ActiveKey, Keyring};
use crate::audit::{Event, KeyAction};
use crate::hcert::TrustList;
use crate::hsm::{self, Hsm};
use crate::pki::chain::Csca;
use crate::pki::{self, Dsc};
use crate::store::{Store, StoreError};

/// Where a key is in its life (as stored; "expired" is derived from the certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// The key pair exists in the HSM; no certificate yet.
    Generated,
    /// Its DSC certificate is imported; approvals are being collected.
    Certified,
    /// It signs (within its usage period).
    Active,
    /// It no longer signs; its certificate stays in the trust list until notAfter.
    Retired,
}

/// One officer's approval of an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The officer's client identity.
    pub officer: String,
    /// When, Unix seconds.
    pub at: i64,
}

/// A key's stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The key's label in the HSM.
    pub label: String,
    /// Its state.
    pub state: KeyState,
    /// When it was generated (or bootstrapped), Unix seconds.
    pub created_at: i64,
    /// Who generated it.
    pub created_by: String,
    /// The DSC certificate, DER base64.
    #[serde(default)]
    pub certificate: Option<String>,
    /// Days of private-key usage from notBefore, if set for this key.
    #[serde(default)]
    pub usage_days: Option<u32>,
    /// Approvals collected while certified.
    #[serde(default)]
    pub approvals: Vec<Approval>,
    /// When it became active.
    #[serde(default)]
    pub activated_at: Option<i64>,
    /// The same in Unix milliseconds: orders keys activated within one second (the most
    /// recently activated signs).
    #[serde(default)]
    pub activated_ms: Option<i64>,
    /// When it was retired, and by whom (the officer who completed the retirement).
    #[serde(default)]
    pub retired: Option<Approval>,
    /// Who activated it: the approvals that did (or the first-start bootstrap).
    #[serde(default)]
    pub activated_by: Vec<Approval>,
    /// Retirement approvals: pending while the key is the last cover of a certificate type (a
    /// second officer's completes them), kept once it is retired.
    #[serde(default)]
    pub retire_approvals: Vec<Approval>,
}

/// How keys are governed.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// The issuing country: a DSC of another country is refused.
    pub country: String,
    /// Seconds an approval stays valid.
    pub approval_ttl_secs: i64,
    /// Default private-key usage period, days from notBefore (EU governance: six months).
    pub usage_days: u32,
    /// Distinct officers whose approvals activate a key (and retire the last cover of a
    /// certificate type).
    pub approvals_needed: usize,
    /// The configuration's CSCAs (`[[signing.csca]]`): recorded at first start, afterwards each
    /// must be one the store holds; the store's set is what a DSC must chain to.
    pub cscas: Vec<Csca>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            country: "VN".into(),
            approval_ttl_secs: 24 * 3600,
            usage_days: 182,
            approvals_needed: 2,
            cscas: Vec::new(),
        }
    }
}

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No such key.
    #[error("no key labelled {0:?}")]
    NotFound(String),
    /// The label is taken.
    #[error("a key labelled {0:?} already exists{1}")]
    Exists(String, &'static str),
    /// The operation does not apply in the key's state.
    #[error("key {label:?} is {state}: {hint}")]
    WrongState {
        /// The key.
        label: String,
        /// Its state.
        state: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The input (certificate, subject, label, usage period) is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The configuration names a key or CSCA the store was not set up with: it would bypass
    /// the officers' dual control.
    #[error("{0}")]
    NotInStore(String),
    /// The DSC does not chain to the country's CSCAs or breaks a rule a DSC must keep.
    #[error("{0}")]
    Chain(String),
    /// The HSM failed, or refused the key (not born in the HSM, extractable, not sign-only).
    #[error(transparent)]
    Hsm(#[from] hsm::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<pki::Error> for KeyError {
    fn from(e: pki::Error) -> Self {
        match e {
            pki::Error::Chain(m) => KeyError::Chain(m),
            e => KeyError::Invalid(e.to_string()),
        }
    }
}

/// The officers' interface to the keys: one per daemon, shared by the admin routes.
pub struct Lifecycle {
    pub(super) store: Store,
    pub(super) hsm: Hsm,
    keyring: Keyring,
    pub(super) policy: KeyPolicy,
    /// The CSCAs a DSC may chain to: the configuration's until the start has checked them
    /// against the store, then the store's (which two officers may add to).
    pub(super) cscas: std::sync::RwLock<Vec<Csca>>,
    /// One operation at a time: they are rare, and each reads, checks and writes a record.
    ops: Mutex<()>,
}

/// Seconds now.
pub(super) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Milliseconds now.
pub(super) fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub use super::view::{ApprovalView, KeyView};
pub use crate::audit::rfc3339;

impl KeyRecord {
    pub(super) fn dsc(&self) -> Result<Option<Dsc>, KeyError> {
        let Some(b64) = &self.certificate else { return Ok(None) };
        let der = B64
            .decode(b64)
            .map_err(|_| StoreError::Corrupt(format!("key {:?}: certificate is not base64", self.label)))?;
        Ok(Some(Dsc::from_der(&der).map_err(|e| StoreError::Corrupt(format!("key {:?}: {e}", self.label)))?))
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        // Plain strings and integers: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(super) fn decode(label: &str, bytes: &[u8]) -> Result<KeyRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("key {label:?}: {e}")))
    }

    pub(super) fn usage_secs(&self, policy: &KeyPolicy) -> i64 {
        i64::from(self.usage_days.unwrap_or(policy.usage_days)) * 86_400
    }

    pub(super) fn state_name(&self, dsc: Option<&Dsc>, now: i64) -> &'static str {
        match (self.state, dsc) {
            (_, Some(d)) if d.not_after <= now => "expired",
            (KeyState::Generated, _) => "generated",
            (KeyState::Certified, _) => "certified",
            (KeyState::Active, _) => "active",
            (KeyState::Retired, _) => "retired",
        }
    }

    pub(super) fn wrong_state(&self, now: i64, hint: &'static str) -> KeyError {
        let dsc = self.dsc().ok().flatten();
        KeyError::WrongState { label: self.label.clone(), state: self.state_name(dsc.as_ref(), now), hint }
    }

    /// Activation approvals still valid at `now`, one per officer (the latest).
    pub(super) fn live_approvals(&self, ttl: i64, now: i64) -> Vec<Approval> {
        live(&self.approvals, ttl, now)
    }
}

/// The approvals among `approvals` still valid at `now` (younger than `ttl`), one per officer
/// (the latest): the same officer twice counts once.
pub(super) fn live(approvals: &[Approval], ttl: i64, now: i64) -> Vec<Approval> {
    let mut out: Vec<Approval> = Vec::new();
    for a in approvals.iter().filter(|a| a.at + ttl > now) {
        match out.iter_mut().find(|b| b.officer == a.officer) {
            Some(b) => b.at = b.at.max(a.at),
            None => out.push(a.clone()),
        }
    }
    out
}

impl Lifecycle {
    /// Loads the key records and puts the active keys in `keyring`.
    pub fn load(store: Store, hsm: Hsm, keyring: Keyring, policy: KeyPolicy) -> Result<Lifecycle, KeyError> {
        let cscas = std::sync::RwLock::new(policy.cscas.clone());
        let lc = Lifecycle { store, hsm, keyring, policy, cscas, ops: Mutex::new(()) };
        lc.refresh()?;
        Ok(lc)
    }

    /// The keyring the pipeline signs with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The policy.
    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    pub(super) fn records(&self) -> Result<Vec<KeyRecord>, KeyError> {
        self.store
            .key_records()?
            .into_iter()
            .map(|(label, bytes)| KeyRecord::decode(&label, &bytes).map_err(KeyError::from))
            .collect()
    }

    pub(super) fn record(&self, label: &str) -> Result<(KeyRecord, Vec<u8>), KeyError> {
        let bytes = self.store.key_record(label)?.ok_or_else(|| KeyError::NotFound(label.to_owned()))?;
        Ok((KeyRecord::decode(label, &bytes)?, bytes))
    }

    /// Rebuilds the keyring from the stored active keys.
    pub fn refresh(&self) -> Result<(), KeyError> {
        let mut active = Vec::new();
        for r in self.records()? {
            if r.state != KeyState::Active {
                continue;
            }
            if let Some(dsc) = r.dsc()? {
                let usage = r.usage_secs(&self.policy);
                let at = r.activated_ms.or(r.activated_at.map(|s| s * 1000)).unwrap_or(dsc.not_before * 1000);
                active.push(ActiveKey::with_usage(&r.label, dsc, at, usage));
            }
        }
        self.keyring.replace(active);
        Ok(())
    }

    /// Reads the store's CSCAs and active keys again: at start, and when another appliance of
    /// the cluster changed them (a rotation or a CSCA addition through any node takes effect
    /// on every node).
    pub fn reload(&self) -> Result<(), KeyError> {
        let trusted = self
            .store
            .csca_records()?
            .iter()
            .map(|(id, der)| Csca::from_der(der).map_err(|e| StoreError::Corrupt(format!("CSCA {id}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        *self.cscas.write().unwrap_or_else(PoisonError::into_inner) = trusted;
        self.refresh()
    }

    /// The CSCAs a DSC may chain to now.
    pub(super) fn trusted_cscas(&self) -> Vec<Csca> {
        self.cscas.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn event(
        action: KeyAction,
        r: &KeyRecord,
        officer: &str,
        kid: Option<String>,
        detail: String,
    ) -> Event {
        Event::Key { action, label: r.label.clone(), officer: officer.to_owned(), kid, detail }
    }

    pub(super) fn kid_of(dsc: &Dsc) -> String {
        B64.encode(dsc.kid)
    }

    /// Every key, as officers see it.
    pub fn list(&self) -> Result<Vec<KeyView>, KeyError> {
        let now = now();
        self.records()?.iter().map(|r| self.view(r, now)).collect()
    }

    /// One key, as officers see it.
    pub fn get(&self, label: &str) -> Result<KeyView, KeyError> {
        self.view(&self.record(label)?.0, now())
    }

    /// Generates a new key pair inside the HSM.
    pub fn generate(&self, label: &str, officer: &str) -> Result<KeyView, KeyError> {
        hsm::validate_label(label)?;
        let _op = self.lock();
        if self.store.key_record(label)?.is_some() {
            return Err(KeyError::Exists(label.to_owned(), ""));
        }
        match self.hsm.find_key(label) {
            Ok(_) => return Err(KeyError::Exists(label.to_owned(), " in the HSM (choose another label)")),
            Err(hsm::Error::KeyNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.hsm.generate_key(label)?;
        let r = KeyRecord {
            label: label.to_owned(),
            state: KeyState::Generated,
            created_at: now(),
            created_by: officer.to_owned(),
            certificate: None,
            usage_days: None,
            approvals: Vec::new(),
            activated_at: None,
            activated_ms: None,
            retired: None,
            activated_by: Vec::new(),
            retire_approvals: Vec::new(),
        };
        let ev = Self::event(
            KeyAction::Generated,
            &r,
            officer,
            None,
            "P-256 key pair generated in the HSM".into(),
        );
        self.store.put_key_record(label, &r.encode(), Some(None), vec![ev])?;
        log::info!(label = label, officer = officer, action = "generated"; "keys: {officer} generated key {label:?}");
        self.view(&r, now())
    }

    /// A PKCS#10 CSR for the key, signed inside the HSM. `subject` must name this country
    /// (`C=`), since a DSC of another country is refused at import.
    pub fn csr(&self, label: &str, subject: &str, officer: &str) -> Result<String, KeyError> {
        let _op = self.lock();
        let (r, bytes) = self.record(label)?;
        if !matches!(r.state, KeyState::Generated | KeyState::Certified) {
            return Err(r.wrong_state(now(), "a CSR is only made for a key not yet active"));
        }
        let pem = self.signed_request(label, subject)?;
        let ev = Self::event(KeyAction::CsrIssued, &r, officer, None, format!("subject {subject}"));
        self.store.put_key_record(label, &bytes, Some(Some(&bytes)), vec![ev])?;
        Ok(pem)
    }

    /// A PKCS#10 request for the gateway upload key (`[signing.upload]`), which lives in the HSM
    /// but is no DSC of the key store: for its first certificate or a renewal. Recorded in the
    /// audit log like a DSC's request.
    pub fn upload_key_csr(&self, label: &str, subject: &str, officer: &str) -> Result<String, KeyError> {
        let _op = self.lock();
        let pem = self.signed_request(label, subject)?;
        let ev = Event::Key {
            action: KeyAction::CsrIssued,
            label: label.to_owned(),
            officer: officer.to_owned(),
            kid: None,
            detail: format!("subject {subject} (gateway upload key)"),
        };
        self.store.audit_append(vec![ev])?;
        Ok(pem)
    }

    /// A CSR signed in the HSM by `label`, for a subject that carries our country.
    fn signed_request(&self, label: &str, subject: &str) -> Result<String, KeyError> {
        let dn = pki::csr::parse_subject(subject)?;
        let country = dn.get(&rcgen::DnType::CountryName).and_then(|v| match v {
            rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
            rcgen::DnValue::Utf8String(s) => Some(s.clone()),
            _ => None,
        });
        if country.as_deref() != Some(self.policy.country.as_str()) {
            return Err(KeyError::Invalid(format!(
                "the subject must carry C={} (the issuing country); got {subject:?}",
                self.policy.country
            )));
        }
        Ok(pki::csr::build_csr(&self.hsm, label, subject)?)
    }

    /// Imports the DSC certificate the CSCA issued for the key (PEM). Refused when its public
    /// key is not the HSM key, its country is not ours, it is not ES256/P-256, its kid collides,
    /// or it can no longer sign. A re-import while certified replaces the certificate and drops
    /// the approvals collected for the old one.
    pub fn import_certificate(
        &self,
        label: &str,
        pem: &str,
        usage_days: Option<u32>,
        officer: &str,
    ) -> Result<KeyView, KeyError> {
        let _op = self.lock();
        let now = now();
        let (mut r, bytes) = self.record(label)?;
        if !matches!(r.state, KeyState::Generated | KeyState::Certified) {
            return Err(r.wrong_state(now, "its certificate can no longer be replaced"));
        }
        if let Some(d) = usage_days
            && !(1..=730).contains(&d)
        {
            return Err(KeyError::Invalid(format!("usage_days {d} is not within 1–730")));
        }
        let dsc = Dsc::from_pem(pem)?;
        // A key unfit to sign is refused by the HSM backend itself, with the attribute named.
        self.hsm.find_key(label)?;
        pki::csr::check_certificate_key(&self.hsm, label, &dsc.der)?;
        check_dsc(&dsc, &self.policy.country, &self.trusted_cscas())?;
        let end = usage_end(&dsc, i64::from(usage_days.unwrap_or(self.policy.usage_days)) * 86_400);
        if end <= now {
            return Err(KeyError::Invalid(format!(
                "the certificate's private-key usage period ended at {} ({}): it could never sign",
                rfc3339(end),
                usage_bound(&dsc, end)
            )));
        }
        let kid = Self::kid_of(&dsc);
        for other in self.records()?.iter().filter(|o| o.label != label) {
            if other.dsc()?.is_some_and(|d| d.kid == dsc.kid) {
                return Err(KeyError::Invalid(format!("kid {kid} is already used by key {:?}", other.label)));
            }
        }
        r.certificate = Some(B64.encode(&dsc.der));
        r.usage_days = usage_days;
        r.state = KeyState::Certified;
        r.approvals.clear();
        let ev = Self::event(
            KeyAction::CertificateImported,
            &r,
            officer,
            Some(kid.clone()),
            format!("{}; usage period ends {}", dsc.subject, rfc3339(end)),
        );
        self.store.put_key_record(label, &r.encode(), Some(Some(&bytes)), vec![ev])?;
        log::info!(
            label = label, officer = officer, kid = kid.as_str(), action = "certificate_imported";
            "keys: {officer} imported the certificate of key {label:?} (kid {kid})"
        );
        self.view(&r, now)
    }

    /// Records `officer`'s approval; the approvals of
    /// [`approvals_needed`](KeyPolicy::approvals_needed) different officers, each younger than
    /// the approval lifetime, activate the key. The same officer twice counts once.
    pub fn approve(&self, label: &str, officer: &str) -> Result<KeyView, KeyError> {
        let _op = self.lock();
        let now = now();
        let (mut r, bytes) = self.record(label)?;
        match r.state {
            KeyState::Certified => {}
            KeyState::Generated => return Err(r.wrong_state(now, "import its DSC certificate first")),
            KeyState::Active => return Err(r.wrong_state(now, "it is already active")),
            KeyState::Retired => return Err(r.wrong_state(now, "a retired key is never activated again")),
        }
        let dsc = r.dsc()?.ok_or_else(|| r.wrong_state(now, "import its DSC certificate first"))?;
        let end = usage_end(&dsc, r.usage_secs(&self.policy));
        if end <= now {
            return Err(KeyError::Invalid(format!(
                "key {label:?} cannot be activated: its usage period ended at {} ({})",
                rfc3339(end),
                usage_bound(&dsc, end)
            )));
        }
        r.approvals = r.live_approvals(self.policy.approval_ttl_secs, now);
        r.approvals.retain(|a| a.officer != officer);
        r.approvals.push(Approval { officer: officer.to_owned(), at: now });
        let kid = Some(Self::kid_of(&dsc));
        let mut events = vec![Self::event(
            KeyAction::Approved,
            &r,
            officer,
            kid.clone(),
            format!("approval {}", r.approvals.len()),
        )];
        let activate = r.approvals.len() >= self.policy.approvals_needed;
        if activate {
            r.state = KeyState::Active;
            r.activated_at = Some(now);
            r.activated_ms = Some(now_ms());
            r.activated_by = r.approvals.clone();
            r.retire_approvals.clear();
            let by: Vec<&str> = r.approvals.iter().map(|a| a.officer.as_str()).collect();
            events.push(Self::event(
                KeyAction::Activated,
                &r,
                officer,
                kid,
                format!("approved by {}", by.join(", ")),
            ));
        }
        self.store.put_key_record(label, &r.encode(), Some(Some(&bytes)), events)?;
        if activate {
            self.refresh()?;
            crate::metrics::get().key_rotations.inc();
            log::info!(label = label, officer = officer, action = "activated"; "keys: key {label:?} activated ({officer} gave the last approval)");
        } else {
            log::info!(label = label, officer = officer, action = "approved"; "keys: {officer} approved key {label:?}; waiting for another officer");
        }
        self.view(&r, now)
    }

    /// The trust list: every DSC that has signed or may sign (active or retired) and has not
    /// expired.
    pub fn trust_list(&self) -> Result<TrustList, KeyError> {
        let now = now();
        let mut list = TrustList::new();
        for r in self.records()? {
            if matches!(r.state, KeyState::Active | KeyState::Retired)
                && let Some(dsc) = r.dsc()?
                && dsc.not_after > now
            {
                list.insert(dsc);
            }
        }
        Ok(list)
    }

    /// The keys in the trust list with what operators watch: kid, notAfter, usage end, active.
    pub fn published(&self) -> Result<Vec<Published>, KeyError> {
        let now = now();
        let mut out = Vec::new();
        for r in self.records()? {
            if matches!(r.state, KeyState::Active | KeyState::Retired)
                && let Some(dsc) = r.dsc()?
                && dsc.not_after > now
            {
                out.push(Published {
                    kid: Self::kid_of(&dsc),
                    not_after: dsc.not_after,
                    usage_end: usage_end(&dsc, r.usage_secs(&self.policy)),
                    active: r.state == KeyState::Active,
                });
            }
        }
        Ok(out)
    }

    /// The DSC certificate (DER) of a certified, active or retired key.
    pub fn certificate(&self, label: &str) -> Result<Vec<u8>, KeyError> {
        let (r, _) = self.record(label)?;
        r.dsc()?.map(|d| d.der).ok_or_else(|| r.wrong_state(now(), "import its DSC certificate first"))
    }

    /// Records that an upload message for the EU gateway was signed for `label`.
    pub fn record_upload(&self, label: &str, officer: &str, what: &str) -> Result<(), KeyError> {
        let _op = self.lock();
        let (r, bytes) = self.record(label)?;
        let kid = r.dsc()?.as_ref().map(Self::kid_of);
        let ev = Self::event(KeyAction::UploadSigned, &r, officer, kid, what.to_owned());
        self.store.put_key_record(label, &bytes, Some(Some(&bytes)), vec![ev])?;
        Ok(())
    }

    /// The store (for the audit routes).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// End of the private-key usage period: `usage_secs` after notBefore, never past notAfter, nor
/// past the notAfter of the DSC's PrivateKeyUsagePeriod extension when it has one (the tighter
/// bound wins).
pub fn usage_end(dsc: &Dsc, usage_secs: i64) -> i64 {
    let end = dsc.not_before.saturating_add(usage_secs).min(dsc.not_after);
    match dsc.key_usage_period {
        Some((_, Some(pkup_end))) => end.min(pkup_end),
        _ => end,
    }
}

/// Start of the private-key usage period: notBefore, or the PrivateKeyUsagePeriod's notBefore
/// when later.
pub fn usage_start(dsc: &Dsc) -> i64 {
    match dsc.key_usage_period {
        Some((Some(pkup_start), _)) => dsc.not_before.max(pkup_start),
        _ => dsc.not_before,
    }
}

/// What ended the usage period at `end`: the DSC's PrivateKeyUsagePeriod, its notAfter, or the
/// configured period.
fn usage_bound(dsc: &Dsc, end: i64) -> String {
    if dsc.key_usage_period.and_then(|p| p.1) == Some(end) {
        "the DSC's PrivateKeyUsagePeriod (2.5.29.16) ends then".into()
    } else if dsc.not_after == end {
        format!("notAfter {}", rfc3339(dsc.not_after))
    } else {
        "the configured usage period from notBefore".into()
    }
}

/// The import and bootstrap checks that do not need the HSM: country, key type, and the chain
/// to a CSCA of the policy.
pub(super) fn check_dsc(dsc: &Dsc, country: &str, cscas: &[Csca]) -> Result<(), KeyError> {
    check_dsc_country_and_key(dsc, country)?;
    pki::chain::check_dsc(&dsc.der, cscas, country)?;
    Ok(())
}

/// Country and key type.
fn check_dsc_country_and_key(dsc: &Dsc, country: &str) -> Result<(), KeyError> {
    if dsc.country.as_deref() != Some(country) {
        return Err(KeyError::Invalid(format!(
            "the DSC's country {} is not the issuing country {country}",
            dsc.country.as_deref().map_or("(none)".to_owned(), |c| format!("{c:?}"))
        )));
    }
    if !matches!(dsc.key, pki::dsc::DscKey::P256(_)) {
        return Err(KeyError::Invalid("the DSC's key is not P-256 (ES256)".into()));
    }
    Ok(())
}

/// A key in the trust list, as the metrics show it.
#[derive(Debug, Clone)]
pub struct Published {
    /// kid, base64.
    pub kid: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// End of the usage period, Unix seconds.
    pub usage_end: i64,
    /// Active (else retired).
    pub active: bool,
}

/// Shared handle.
pub type SharedLifecycle = Arc<Lifecycle>;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(approvals: &[(&str, i64)]) -> KeyRecord {
        KeyRecord {
            label: "k".into(),
            state: KeyState::Certified,
            created_at: 0,
            created_by: "o".into(),
            certificate: None,
            usage_days: None,
            approvals: approvals.iter().map(|(o, at)| Approval { officer: (*o).into(), at: *at }).collect(),
            activated_at: None,
            activated_ms: None,
            retired: None,
            activated_by: Vec::new(),
            retire_approvals: Vec::new(),
        }
    }

    #[test]
    fn approvals_expire_and_count_once_per_officer() {
        let r = record(&[("officer1", 100), ("officer1", 150), ("officer2", 10)]);
        // TTL 100: officer2's approval at 10 has expired at 160; officer1 counts once, latest.
        let live = r.live_approvals(100, 160);
        assert_eq!(live, vec![Approval { officer: "officer1".into(), at: 150 }]);
        assert_eq!(r.live_approvals(1000, 160).len(), 2);
        assert!(r.live_approvals(10, 1000).is_empty());
    }

    #[test]
    fn import_policy_refuses_another_country_and_other_curves() {
        let dsc = |country: Option<&str>, key| Dsc {
            der: vec![1],
            kid: [0; 8],
            not_before: 0,
            not_after: 10,
            country: country.map(str::to_owned),
            subject: "CN=x".into(),
            key,
            allowed: None,
            key_usage_period: None,
        };
        let p256 = pki::dsc::DscKey::P256(vec![4; 65]);
        let check_dsc = check_dsc_country_and_key;
        assert!(check_dsc(&dsc(Some("VN"), p256.clone()), "VN").is_ok());
        let e = check_dsc(&dsc(Some("FR"), p256.clone()), "VN").unwrap_err().to_string();
        assert!(e.contains("country \"FR\" is not the issuing country VN"), "{e}");
        assert!(check_dsc(&dsc(None, p256), "VN").unwrap_err().to_string().contains("(none)"));
        let rsa = pki::dsc::DscKey::Rsa(vec![1]);
        assert!(check_dsc(&dsc(Some("VN"), rsa), "VN").unwrap_err().to_string().contains("P-256"));
    }

    #[test]
    fn usage_end_takes_the_tighter_of_the_configured_period_and_the_extension() {
        let mut dsc = Dsc {
            der: vec![1],
            kid: [0; 8],
            not_before: 1_000,
            not_after: 1_000_000,
            country: Some("VN".into()),
            subject: "CN=x".into(),
            key: pki::dsc::DscKey::P256(vec![4; 65]),
            allowed: None,
            key_usage_period: None,
        };
        assert_eq!(usage_end(&dsc, 5_000), 6_000);
        assert_eq!(usage_end(&dsc, 5_000_000), 1_000_000, "never past notAfter");
        dsc.key_usage_period = Some((None, Some(3_000)));
        assert_eq!(usage_end(&dsc, 5_000), 3_000, "the extension ends earlier: it wins");
        assert_eq!(usage_bound(&dsc, 3_000), "the DSC's PrivateKeyUsagePeriod (2.5.29.16) ends then");
        dsc.key_usage_period = Some((Some(2_000), Some(9_000)));
        assert_eq!(usage_end(&dsc, 5_000), 6_000, "the configured period ends earlier: it wins");
        assert_eq!(usage_start(&dsc), 2_000);
    }

    #[test]
    fn records_round_trip_and_refuse_unknown_fields() {
        let r = record(&[("officer1", 5)]);
        let back = KeyRecord::decode("k", &r.encode()).unwrap();
        assert_eq!(back, r);
        let mut v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        v["state"] = "active!".into();
        assert!(KeyRecord::decode("k", &serde_json::to_vec(&v).unwrap()).is_err());
    }
}
