//! Keys as officers see them (`GET /v1/keys`, `hcert-signer keys list`): state, certificate,
//! usage period, and who generated, approved, activated and retired each one.

use super::lifecycle::{Approval, KeyError, KeyRecord, KeyState, Lifecycle, live, rfc3339, usage_end};
use serde::Serialize;

use crate::hcert::CertificateType;

/// A key as officers see it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    /// HSM label.
    pub label: String,
    /// `generated`, `certified`, `active`, `retired` or `expired`.
    pub state: &'static str,
    /// kid, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Certificate subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Certificate validity and usage period, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// notAfter, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// End of the private-key usage period, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_end: Option<String>,
    /// Certificate types it may sign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_types: Option<Vec<&'static str>>,
    /// Approvals still valid (while certified).
    pub approvals: Vec<ApprovalView>,
    /// Approvals still needed to activate (while certified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_missing: Option<usize>,
    /// When it became active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    /// Who activated it (the approving officers, or the first-start bootstrap).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub activated_by: Vec<ApprovalView>,
    /// When it was retired, and by whom.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<ApprovalView>,
    /// Retirement approvals: those still valid while a retirement waits for a second officer,
    /// or those that retired it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retirement_approvals: Vec<ApprovalView>,
    /// Approvals still needed to retire it (only while a retirement is waiting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retirement_approvals_missing: Option<usize>,
    /// Created when and by whom.
    pub created: ApprovalView,
    /// SHA-256 of the key's public half (SubjectPublicKeyInfo DER), hex: compare it with the
    /// CSR's at the CSCA (`openssl req -in K.csr -pubkey -noout | openssl pkey -pubin -outform DER
    /// | sha256sum`). Absent when the HSM cannot be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
}

/// An approval (or another officer action) as officers see it.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalView {
    /// Who.
    pub officer: String,
    /// When, RFC 3339.
    pub at: String,
}

impl Lifecycle {
    pub(super) fn view(&self, r: &KeyRecord, now: i64) -> Result<KeyView, KeyError> {
        let dsc = r.dsc()?;
        let usage_end = dsc.as_ref().map(|d| usage_end(d, r.usage_secs(&self.policy)));
        let approvals = if r.state == KeyState::Certified {
            r.live_approvals(self.policy.approval_ttl_secs, now)
        } else {
            Vec::new()
        };
        let retirement = if r.state == KeyState::Active {
            live(&r.retire_approvals, self.policy.approval_ttl_secs, now)
        } else {
            r.retire_approvals.clone()
        };
        let view_of = |a: &Approval| ApprovalView { officer: a.officer.clone(), at: rfc3339(a.at) };
        Ok(KeyView {
            label: r.label.clone(),
            state: r.state_name(dsc.as_ref(), now),
            kid: dsc.as_ref().map(Self::kid_of),
            subject: dsc.as_ref().map(|d| d.subject.clone()),
            not_before: dsc.as_ref().map(|d| rfc3339(d.not_before)),
            not_after: dsc.as_ref().map(|d| rfc3339(d.not_after)),
            usage_end: usage_end.map(rfc3339),
            certificate_types: dsc.as_ref().map(|d| {
                [CertificateType::Vaccination, CertificateType::Test, CertificateType::Recovery]
                    .into_iter()
                    .filter(|t| d.allows(*t))
                    .map(CertificateType::name)
                    .collect()
            }),
            approvals_missing: (r.state == KeyState::Certified)
                .then(|| self.policy.approvals_needed.saturating_sub(approvals.len())),
            approvals: approvals.iter().map(view_of).collect(),
            activated_at: r.activated_at.map(rfc3339),
            activated_by: match r.state {
                // Records written before `activated_by` existed kept their approvals.
                KeyState::Active | KeyState::Retired if r.activated_by.is_empty() => {
                    r.approvals.iter().map(view_of).collect()
                }
                _ => r.activated_by.iter().map(view_of).collect(),
            },
            retired: r.retired.as_ref().map(view_of),
            retirement_approvals: retirement.iter().map(view_of).collect(),
            retirement_approvals_missing: (r.state == KeyState::Active && !retirement.is_empty())
                .then(|| self.policy.approvals_needed.saturating_sub(retirement.len())),
            created: view_of(&Approval { officer: r.created_by.clone(), at: r.created_at }),
            public_key_sha256: self
                .hsm
                .find_key(&r.label)
                .ok()
                .map(|k| hex::encode(crate::hsm::sha256(&k.public_key_der()))),
        })
    }
}
