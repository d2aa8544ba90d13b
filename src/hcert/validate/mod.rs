//! DCC payload rules: JSON schema 1.3.x, the EU value sets, UVCIs and the signer's own policy,
//! written once and run in two modes. The JSON view is in `json`, the dates in `dates`, the
//! rules and the entry points in `rules`.
//!
//! * **Signing (strict)**: [`Dcc::from_json_str`](crate::hcert::Dcc::from_json_str) with a
//!   [`Policy`]. Every string is NFC-normalised first (lengths are counted afterwards, on what
//!   gets signed); unknown or duplicate fields are errors (an issuer's typo must not vanish from
//!   a certificate); dates are RFC 3339; codes must be in the value sets; `ci`, when present, must
//!   be a valid UVCI (when absent, the daemon assigns one); and the policy rules below apply.
//! * **Verifying (lenient)**: [`check_schema`] on a decoded DCC. Only what the JSON schema says:
//!   unknown properties are allowed (older certificates carry `t[].dr`), value sets are optional,
//!   and `format` is checked the way deployed verifiers read dates (see [`FormatMode`]).
//!
//! Errors name the field (`nam.fnt`, `v[0].dn`, …) and carry a stable [`ErrorCode`]. Messages
//! never repeat personal data: the value of a field is quoted only for code fields (`mp`,
//! `co`, …) and `ver`, never for names, dates of birth, dates or UVCIs.
//!
//! Policy rules of the signing mode, beyond the schema (code `policy` unless noted):
//! `ver` must be `1.3.x` (the rules checked are those of schema 1.3.x); at least one of `fnt`
//! and `gnt` must be non-empty; `dob`, `dt` and `fr` may not lie after [`Policy`]'s "today",
//! nor `sc` after its clock (plus a small skew); `fr ≤ df ≤ du`; a rapid antigen test
//! (`tt` = `LP217198-3`) needs its device code `ma` (EU rule TR-EU-0002: without it no member
//! state accepts the test); `dn`/`sd` must fit 32 bits; inactive value-set codes are refused
//! only if the policy says so (code `valueset`). A `ci` that is not a UVCI at all is code
//! `uvci`; one with a wrong check character is `uvci_check`; under a policy with a country, one
//! that starts neither with `URN:UVCI:01:<country>:` nor with an accepted prefix (migrated
//! certificates) is `uvci_country`: a certificate of another country, or of none, is never
//! signed under this country's `iss`.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::hcert::uvci::UvciError;
use crate::hcert::valuesets::ValueSets;

mod dates;
mod json;
mod rules;
#[cfg(test)]
mod tests;

pub use dates::FormatMode;
#[cfg(any(test, feature = "test-support"))]
pub(crate) use dates::days_from_civil;
pub(crate) use dates::{Ymd, civil_from_days};
pub(crate) use json::{Json, Num, normalize_nfc, parse_json};
pub use rules::RAPID_ANTIGEN_TEST;
pub use rules::{SchemaOptions, check_schema, check_schema_report};
pub(crate) use rules::{check_strict, dose_value};

/// The machine-readable class of a [`PayloadError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The record is not well-formed JSON.
    Json,
    /// A JSON schema rule (type, required field, pattern, length, format, entry count), or a
    /// field the schema does not define (signing mode only).
    Schema,
    /// A code that is not in its EU value set (or no longer active, if the policy refuses those).
    ValueSet,
    /// `ci` is not a valid UVCI.
    Uvci,
    /// `ci` is a UVCI of another country than the signer's (or has no `URN:UVCI:01:` prefix)
    /// and starts with none of the accepted prefixes.
    UvciCountry,
    /// `ci` carries a `#` check character that does not match it.
    UvciCheck,
    /// A rule of the signer beyond the schema (see the module documentation).
    Policy,
}

impl ErrorCode {
    /// The stable string form used in API results: `json`, `schema`, `valueset`, `uvci`,
    /// `uvci_country`, `uvci_check`, `policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Json => "json",
            ErrorCode::Schema => "schema",
            ErrorCode::ValueSet => "valueset",
            ErrorCode::Uvci => "uvci",
            ErrorCode::UvciCountry => "uvci_country",
            ErrorCode::UvciCheck => "uvci_check",
            ErrorCode::Policy => "policy",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a DCC payload was refused: the field, a stable code and a message, displayed as
/// `v[0].mp: unknown medicinal product "X"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{sep}{message}", sep = if .path.is_empty() { "" } else { ": " })]
pub struct PayloadError {
    code: ErrorCode,
    path: String,
    message: String,
}

impl PayloadError {
    /// A new error for the field at `path` (empty for the document as a whole).
    pub fn new(code: ErrorCode, path: impl Into<String>, message: impl Into<String>) -> Self {
        PayloadError { code, path: path.into(), message: message.into() }
    }

    /// The stable machine-readable code (see [`ErrorCode::as_str`]).
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }

    /// The code as an enum.
    pub fn kind(&self) -> ErrorCode {
        self.code
    }

    /// The field path, e.g. `v[0].dn` (empty when the whole document is at fault).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The message without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// ---------------------------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------------------------

/// What the signing mode checks against: the value sets, the clock, and the operator's choices.
///
/// A policy is cheap to clone (the value sets are shared). The daemon builds one per batch or
/// chunk with [`with_now`](Self::with_now), so "not in the future" uses a current clock.
///
/// "Today" is the calendar date at UTC+14, the latest date anywhere on Earth: a record dated
/// today in Vietnam (UTC+7) is never refused because the appliance's clock runs on UTC.
#[derive(Debug, Clone)]
pub struct Policy {
    value_sets: Arc<ValueSets>,
    now: OffsetDateTime,
    now_unix: i64,
    latest_date: Ymd,
    clock_skew_secs: i64,
    allow_inactive_codes: bool,
    /// `URN:UVCI:01:<country>:` followed by the accepted prefixes; empty: any UVCI.
    uvci_prefixes: Vec<String>,
}

impl Policy {
    /// Allowance for an issuer's clock running ahead when comparing `sc` with the policy's clock.
    pub const DEFAULT_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

    /// A policy over `value_sets` with the clock at `now`; inactive codes allowed, any UVCI
    /// country.
    pub fn new(value_sets: Arc<ValueSets>, now: OffsetDateTime) -> Policy {
        let now_unix = now.unix_timestamp();
        Policy {
            value_sets,
            now,
            now_unix,
            latest_date: latest_date_at(now_unix),
            clock_skew_secs: Self::DEFAULT_CLOCK_SKEW.whole_seconds(),
            allow_inactive_codes: true,
            uvci_prefixes: Vec::new(),
        }
    }

    /// The embedded value sets and the system clock.
    pub fn current() -> Policy {
        Policy::new(ValueSets::embedded_shared(), OffsetDateTime::now_utc())
    }

    /// The same policy with the clock at `now`.
    pub fn with_now(mut self, now: OffsetDateTime) -> Policy {
        self.now = now;
        self.now_unix = now.unix_timestamp();
        self.latest_date = latest_date_at(self.now_unix);
        self
    }

    /// Whether value-set codes the EU marked inactive are accepted (default: yes, because a
    /// certificate issued while the code was active is re-signed unchanged every year).
    pub fn with_inactive_codes(mut self, allow: bool) -> Policy {
        self.allow_inactive_codes = allow;
        self
    }

    /// Requires every UVCI sent with a record to start with `URN:UVCI:01:<country>:` (e.g.
    /// `"VN"`), or with one of the prefixes given to
    /// [`with_accepted_uvci_prefixes`](Self::with_accepted_uvci_prefixes).
    pub fn with_uvci_country(mut self, country: &str) -> Result<Policy, UvciError> {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(UvciError::Country);
        }
        let own = format!("{}{}:{country}:", crate::hcert::uvci::PREFIX, crate::hcert::uvci::VERSION);
        match self.uvci_prefixes.first_mut() {
            Some(first) => *first = own,
            None => self.uvci_prefixes.push(own),
        }
        Ok(self)
    }

    /// Also accepts UVCIs that start with one of `prefixes` (certificates migrated from an
    /// earlier system, e.g. `URN:UVCI:01:VN:LEGACY/`). Each must be a well-formed
    /// `URN:UVCI:01:<country>:` prefix ([`uvci::check_prefix`](crate::hcert::uvci::check_prefix)).
    /// Only meaningful with [`with_uvci_country`](Self::with_uvci_country), which must come first.
    pub fn with_accepted_uvci_prefixes(mut self, prefixes: &[String]) -> Result<Policy, UvciError> {
        if self.uvci_prefixes.is_empty() {
            return Err(UvciError::Config("accepted UVCI prefixes need the issuing country first"));
        }
        for p in prefixes {
            crate::hcert::uvci::check_prefix(p)?;
        }
        self.uvci_prefixes.truncate(1);
        self.uvci_prefixes.extend(prefixes.iter().cloned());
        Ok(self)
    }

    /// Sets the allowance for `sc` lying after the policy's clock.
    pub fn with_clock_skew(mut self, skew: time::Duration) -> Policy {
        self.clock_skew_secs = skew.whole_seconds().max(0);
        self
    }

    /// The value sets codes are checked against.
    pub fn value_sets(&self) -> &ValueSets {
        &self.value_sets
    }

    /// The policy's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.now
    }
}

fn latest_date_at(unix: i64) -> Ymd {
    let days = (unix.saturating_add(14 * 3600)).div_euclid(86_400);
    civil_from_days(days)
}
