//! Retiring a DSC: one officer when other active keys still cover every certificate type it
//! covers (a compromised key must stop fast), two different officers when it is the last cover
//! of a type (one person alone must not be able to stop the country's signing).
//!
//! "Covers" means active and usable now (usage period, HCERT EKUs: a DSC without them covers
//! every type). The first officer's request on a last cover is recorded as a retirement
//! approval with the approval lifetime; a different officer's request completes it.

use super::ActiveKey;
use super::lifecycle::{self, Approval, KeyError, KeyRecord, KeyState, KeyView, Lifecycle, now};
use crate::audit::KeyAction;
use crate::hcert::CertificateType;

const TYPES: [CertificateType; 3] =
    [CertificateType::Vaccination, CertificateType::Test, CertificateType::Recovery];

impl Lifecycle {
    /// Takes a key out of service, or records `officer`'s retirement approval when the key is
    /// the last active cover of a certificate type and no other officer has asked yet (the view
    /// then says `retirement_approvals_missing`). Its certificate stays in the trust list until
    /// notAfter.
    pub fn retire(&self, label: &str, officer: &str) -> Result<KeyView, KeyError> {
        let _op = self.lock();
        let now = now();
        let (mut r, bytes) = self.record(label)?;
        if r.state == KeyState::Retired {
            return Err(r.wrong_state(now, "it is already retired"));
        }
        let kid = r.dsc()?.as_ref().map(Lifecycle::kid_of);
        let mut events = Vec::new();
        let uncovered =
            if r.state == KeyState::Active { self.uncovered_without(&r, now)? } else { Vec::new() };
        if !uncovered.is_empty() {
            let mut approvals = lifecycle::live(&r.retire_approvals, self.policy.approval_ttl_secs, now);
            approvals.retain(|a| a.officer != officer);
            approvals.push(Approval { officer: officer.to_owned(), at: now });
            r.retire_approvals = approvals;
            let types = uncovered.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
            events.push(Lifecycle::event(
                KeyAction::RetirementApproved,
                &r,
                officer,
                kid.clone(),
                format!("retirement approval {}; last active key for {types}", r.retire_approvals.len()),
            ));
            if r.retire_approvals.len() < self.policy.approvals_needed {
                self.store.put_key_record(label, &r.encode(), Some(Some(&bytes)), events)?;
                log::info!(
                    label = label, officer = officer, action = "retirement_approved";
                    "keys: {officer} asked to retire key {label:?}, the last active key for {types}; waiting for another officer"
                );
                return self.view(&r, now);
            }
        } else {
            // Not the last cover: one officer's request retires it at once.
            r.retire_approvals = vec![Approval { officer: officer.to_owned(), at: now }];
        }
        r.state = KeyState::Retired;
        r.retired = Some(Approval { officer: officer.to_owned(), at: now });
        let by: Vec<&str> = r.retire_approvals.iter().map(|a| a.officer.as_str()).collect();
        events.push(Lifecycle::event(
            KeyAction::Retired,
            &r,
            officer,
            kid,
            format!("retired by {}", by.join(", ")),
        ));
        self.store.put_key_record(label, &r.encode(), Some(Some(&bytes)), events)?;
        self.refresh()?;
        log::info!(label = label, officer = officer, action = "retired"; "keys: {officer} retired key {label:?}");
        self.view(&r, now)
    }

    /// The certificate types `r` covers now that no other active key covers.
    fn uncovered_without(&self, r: &KeyRecord, now: i64) -> Result<Vec<CertificateType>, KeyError> {
        let Some(dsc) = r.dsc()? else { return Ok(Vec::new()) };
        let this = ActiveKey::with_usage(&r.label, dsc, 0, r.usage_secs(&self.policy));
        let mut others = Vec::new();
        for o in self.records()? {
            if o.label != r.label
                && o.state == KeyState::Active
                && let Some(d) = o.dsc()?
            {
                others.push(ActiveKey::with_usage(&o.label, d, 0, o.usage_secs(&self.policy)));
            }
        }
        Ok(TYPES
            .into_iter()
            .filter(|t| this.usable(*t, now) && !others.iter().any(|o| o.usable(*t, now)))
            .collect())
    }
}
