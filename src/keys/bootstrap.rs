//! First start: what the configuration file may still decide. `[[signing.dsc]]` activates keys
//! only in a store that has never held a key, and `[[signing.csca]]` is recorded in the store
//! then; afterwards the store wins, and a key or CSCA the store does not know stops the start
//! (an administrator editing config.toml must not get around the officers' dual control).
//!
//! Every start also re-checks that the keys in service are fit to sign (born in the HSM,
//! never extractable, sign-only): the HSM backend refuses any other key at every lookup.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::lifecycle::{Approval, KeyError, KeyRecord, KeyState, Lifecycle, check_dsc, now, now_ms};
use crate::audit::{Event, KeyAction};
use crate::hsm;
use crate::pki::chain::Csca;
use crate::pki::{self, Dsc};

/// Who the first-start bootstrap is in the audit log and in `keys list`.
pub const FIRST_START: &str = "config (first-start bootstrap)";

/// A `[[signing.dsc]]` entry: the key's label and its certificate, PEM.
#[derive(Debug, Clone)]
pub struct ConfiguredDsc {
    /// The HSM label.
    pub label: String,
    /// The DSC certificate, PEM.
    pub pem: String,
    /// Where it came from, for messages.
    pub source: String,
}

/// What the start found; for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The store had never held a key: the configuration's DSCs were activated.
    FirstStart {
        /// Keys activated.
        keys: usize,
    },
    /// The store already held keys: it decides, the configuration only had to agree.
    Store,
}

impl Lifecycle {
    /// Makes the store and the configuration agree, or refuses the start:
    ///
    /// * `[[signing.csca]]`: recorded (audited) when the store has none yet; afterwards every
    ///   configured CSCA must be one the store holds ([`KeyError::NotInStore`]).
    /// * `[[signing.dsc]]`: in a store that has never held a key, each is checked (HSM key fit
    ///   to sign and matching the certificate, chain to a CSCA) and all are activated, audited
    ///   as the first-start bootstrap. Afterwards a label the store does not know is
    ///   [`KeyError::NotInStore`]; a known one keeps its stored state.
    /// * Every active key is looked up in the HSM, which refuses a key unfit to sign.
    pub fn bootstrap(&self, dscs: &[ConfiguredDsc]) -> Result<Bootstrap, KeyError> {
        let new_cscas = self.check_cscas()?;
        let records = self.records()?;
        let outcome = if records.is_empty() {
            let mut checked = Vec::with_capacity(dscs.len());
            for d in dscs {
                let dsc =
                    Dsc::from_pem(&d.pem).map_err(|e| KeyError::Invalid(format!("{}: {e}", d.source)))?;
                // The HSM's own refusal (attributes) keeps its type: exit status and message.
                self.hsm.find_key(&d.label)?;
                pki::csr::check_certificate_key(&self.hsm, &d.label, &dsc.der)
                    .map_err(|e| KeyError::Invalid(format!("{}: {e}", d.source)))?;
                check_dsc(&dsc, &self.policy.country, &self.policy.cscas)
                    .map_err(|e| KeyError::Invalid(format!("{}: key {:?}: {e}", d.source, d.label)))?;
                checked.push((d, dsc));
            }
            self.record_cscas(new_cscas)?;
            for (d, dsc) in &checked {
                self.activate_at_first_start(&d.label, dsc)?;
            }
            Bootstrap::FirstStart { keys: checked.len() }
        } else {
            self.record_cscas(new_cscas)?;
            for d in dscs {
                let dsc =
                    Dsc::from_pem(&d.pem).map_err(|e| KeyError::Invalid(format!("{}: {e}", d.source)))?;
                let Some(r) = records.iter().find(|r| r.label == d.label) else {
                    return Err(KeyError::NotInStore(format!(
                        "{}: key {:?} in [[signing.dsc]] is not known to the store: the configuration \
                         activates keys only at the first start of an empty store; bring a key into \
                         service with `hcert-signer keys` (generate, csr, import, approvals of two officers)",
                        d.source, d.label
                    )));
                };
                if r.dsc()?.is_none_or(|s| s.der != dsc.der) {
                    return Err(KeyError::NotInStore(format!(
                        "{}: the configuration gives key {:?} another certificate than the one stored: \
                         rotate keys through `hcert-signer keys`, not the configuration",
                        d.source, d.label
                    )));
                }
                if r.state != KeyState::Active {
                    log::warn!(
                        "keys: {:?} is listed in the configuration but is {}; it stays so",
                        d.label,
                        r.state_name(Some(&dsc), now())
                    );
                }
            }
            Bootstrap::Store
        };
        // Keys in service must still be fit to sign: the HSM refuses any other at lookup.
        for r in self.records()?.iter().filter(|r| r.state == KeyState::Active) {
            match self.hsm.find_key(&r.label) {
                Ok(_) => {}
                Err(e @ hsm::Error::KeyRefused { .. }) => return Err(e.into()),
                // Missing or unreachable: readiness reports it; the start goes on.
                Err(e) => log::warn!("keys: active key {:?}: {e}", r.label),
            }
        }
        // From now on the store's CSCAs are the ones a DSC must chain to.
        self.reload()?;
        Ok(outcome)
    }

    /// The configured CSCAs the store does not hold yet, when it holds none (first start, or
    /// the first start of a version that records them); refuses a configured CSCA the store
    /// does not know otherwise.
    fn check_cscas(&self) -> Result<Vec<Csca>, KeyError> {
        let known = self.store.csca_records()?;
        if known.is_empty() {
            return Ok(self.policy.cscas.clone());
        }
        for c in &self.policy.cscas {
            let fp = c.fingerprint();
            if !known.iter().any(|(id, _)| *id == fp) {
                return Err(KeyError::NotInStore(format!(
                    "the CSCA {} (SHA-256 {fp}) in [[signing.csca]] is not one this store was set up \
                     with: the CSCA list is recorded at the first start and the configuration cannot \
                     add to it; two security officers add a CSCA with `hcert-signer keys csca-add \
                     --cert FILE` (each runs it), never by editing config.toml",
                    c.subject
                )));
            }
        }
        Ok(Vec::new())
    }

    fn record_cscas(&self, cscas: Vec<Csca>) -> Result<(), KeyError> {
        if cscas.is_empty() {
            return Ok(());
        }
        let events = cscas
            .iter()
            .map(|c| Event::Key {
                action: KeyAction::CscaRecorded,
                label: "csca".into(),
                officer: FIRST_START.into(),
                kid: None,
                detail: format!("{}; SHA-256 {}; recorded at first start", c.subject, c.fingerprint()),
            })
            .collect();
        let rows: Vec<(String, Vec<u8>)> = cscas.iter().map(|c| (c.fingerprint(), c.der.clone())).collect();
        self.store.put_csca_records(&rows, events)?;
        for c in &cscas {
            log::info!("keys: CSCA {} recorded in the store (first start)", c.subject);
        }
        Ok(())
    }

    fn activate_at_first_start(&self, label: &str, dsc: &Dsc) -> Result<(), KeyError> {
        let _op = self.lock();
        let now = now();
        let by = Approval { officer: FIRST_START.to_owned(), at: now };
        let r = KeyRecord {
            label: label.to_owned(),
            state: KeyState::Active,
            created_at: now,
            created_by: FIRST_START.to_owned(),
            certificate: Some(B64.encode(&dsc.der)),
            usage_days: None,
            approvals: Vec::new(),
            activated_at: Some(now),
            activated_ms: Some(now_ms()),
            retired: None,
            activated_by: vec![by],
            retire_approvals: Vec::new(),
        };
        let ev = Lifecycle::event(
            KeyAction::Activated,
            &r,
            FIRST_START,
            Some(Lifecycle::kid_of(dsc)),
            "activated from the configuration file: the first-start bootstrap of a store that had never held a key"
                .into(),
        );
        self.store.put_key_record(label, &r.encode(), Some(None), vec![ev])?;
        log::info!(label = label, action = "activated"; "keys: key {label:?} activated from the configuration (first-start bootstrap)");
        Ok(())
    }
}
