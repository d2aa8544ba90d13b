//! The country's CSCAs after the first start: listed for officers, and added only by two
//! different officers (the first request is recorded as an approval with the approval
//! lifetime, a second officer's adds the CSCA), every step audited. The configuration file can
//! no longer add one (see [`super::bootstrap`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::lifecycle::{Approval, ApprovalView, KeyError, Lifecycle, live, now, rfc3339};
use crate::audit::{Event, KeyAction};
use crate::pki::chain::Csca;
use crate::store::StoreError;

/// A CSCA addition waiting for a second officer, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingCsca {
    /// The certificate, DER base64.
    certificate: String,
    /// The officers who asked for it.
    approvals: Vec<Approval>,
}

/// A CSCA as officers see it.
#[derive(Debug, Clone, Serialize)]
pub struct CscaView {
    /// Its subject.
    pub subject: String,
    /// SHA-256 of the certificate DER, hex.
    pub sha256: String,
    /// Its country (C).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// `trusted` (DSCs may chain to it) or `pending` (waiting for another officer).
    pub state: &'static str,
    /// The approvals still valid (while pending).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalView>,
    /// Approvals still needed (while pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_missing: Option<usize>,
}

impl Lifecycle {
    /// The CSCAs the store trusts, then the additions waiting for an officer.
    pub fn cscas(&self) -> Result<Vec<CscaView>, KeyError> {
        let now = now();
        let mut out: Vec<CscaView> =
            self.trusted_cscas().iter().map(|c| self.csca_view(c, "trusted", &[])).collect();
        for (id, bytes) in self.store.csca_pendings()? {
            let (csca, pending) = decode_pending(&id, &bytes)?;
            let approvals = live(&pending.approvals, self.policy.approval_ttl_secs, now);
            if !approvals.is_empty() {
                out.push(self.csca_view(&csca, "pending", &approvals));
            }
        }
        Ok(out)
    }

    /// Records `officer`'s request to trust the CSCA `pem`; the requests of two different
    /// officers within the approval lifetime add it (the same officer twice counts once).
    pub fn add_csca(&self, pem: &str, officer: &str) -> Result<CscaView, KeyError> {
        let _op = self.lock();
        let now = now();
        let csca = match Csca::from_pem_all(pem)?.as_slice() {
            [one] => one.clone(),
            many => {
                return Err(KeyError::Invalid(format!(
                    "send one CSCA certificate at a time (got {})",
                    many.len()
                )));
            }
        };
        if csca.country.as_deref() != Some(self.policy.country.as_str()) {
            return Err(KeyError::Invalid(format!(
                "the CSCA {} is of country {}, not the issuing country {}",
                csca.subject,
                csca.country.as_deref().unwrap_or("(none)"),
                self.policy.country
            )));
        }
        if csca.not_after <= now {
            return Err(KeyError::Invalid(format!(
                "the CSCA {} expired at {}",
                csca.subject,
                rfc3339(csca.not_after)
            )));
        }
        let fp = csca.fingerprint();
        if self.trusted_cscas().iter().any(|c| c.fingerprint() == fp) {
            return Ok(self.csca_view(&csca, "trusted", &[]));
        }
        let mut approvals = match self.store.csca_pending(&fp)? {
            Some(bytes) => {
                live(&decode_pending(&fp, &bytes)?.1.approvals, self.policy.approval_ttl_secs, now)
            }
            None => Vec::new(),
        };
        approvals.retain(|a| a.officer != officer);
        approvals.push(Approval { officer: officer.to_owned(), at: now });
        let event = |action, detail: String| Event::Key {
            action,
            label: "csca".into(),
            officer: officer.to_owned(),
            kid: None,
            detail: format!("{}; SHA-256 {fp}; {detail}", csca.subject),
        };
        if approvals.len() < self.policy.approvals_needed {
            let pending = PendingCsca { certificate: B64.encode(&csca.der), approvals: approvals.clone() };
            let ev = event(KeyAction::CscaApproved, format!("approval {}", approvals.len()));
            // Plain strings and integers: serialization cannot fail.
            let bytes = serde_json::to_vec(&pending).unwrap_or_default();
            self.store.update_csca(&fp, Some(&bytes), None, vec![ev])?;
            log::info!(officer = officer, action = "csca_approved"; "keys: {officer} asked to add the CSCA {}; waiting for another officer", csca.subject);
            return Ok(self.csca_view(&csca, "pending", &approvals));
        }
        let by: Vec<&str> = approvals.iter().map(|a| a.officer.as_str()).collect();
        let ev = event(KeyAction::CscaRecorded, format!("added by {}", by.join(", ")));
        self.store.update_csca(&fp, None, Some(&csca.der), vec![ev])?;
        self.cscas.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(csca.clone());
        log::info!(officer = officer, action = "csca_recorded"; "keys: the CSCA {} was added by {}", csca.subject, by.join(", "));
        Ok(self.csca_view(&csca, "trusted", &[]))
    }

    fn csca_view(&self, c: &Csca, state: &'static str, approvals: &[Approval]) -> CscaView {
        CscaView {
            subject: c.subject.clone(),
            sha256: c.fingerprint(),
            country: c.country.clone(),
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            state,
            approvals: approvals
                .iter()
                .map(|a| ApprovalView { officer: a.officer.clone(), at: rfc3339(a.at) })
                .collect(),
            approvals_missing: (state == "pending")
                .then(|| self.policy.approvals_needed.saturating_sub(approvals.len())),
        }
    }
}

fn decode_pending(id: &str, bytes: &[u8]) -> Result<(Csca, PendingCsca), KeyError> {
    let corrupt = |why: String| KeyError::Store(StoreError::Corrupt(format!("pending CSCA {id}: {why}")));
    let p: PendingCsca = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let der = B64.decode(&p.certificate).map_err(|_| corrupt("certificate is not base64".into()))?;
    let csca = Csca::from_der(&der).map_err(|e| corrupt(e.to_string()))?;
    Ok((csca, p))
}
