//! DCC payload rules: JSON schema 1.3.x, the EU value sets, UVCIs and the signer's own policy,
//! written once and run in two modes.
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
//! only if the policy says so (code `valueset`); `ci` must be for the policy's country if one
//! is set (code `uvci`).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use time::OffsetDateTime;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

use crate::hcert::dcc::CertificateType;
use crate::hcert::uvci::{self, UvciError};
use crate::hcert::valuesets::{ValueSetId, ValueSets};

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
    /// A rule of the signer beyond the schema (see the module documentation).
    Policy,
}

impl ErrorCode {
    /// The stable string form used in API results: `json`, `schema`, `valueset`, `uvci`,
    /// `policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Json => "json",
            ErrorCode::Schema => "schema",
            ErrorCode::ValueSet => "valueset",
            ErrorCode::Uvci => "uvci",
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

    /// The stable machine-readable code: `json`, `schema`, `valueset`, `uvci` or `policy`.
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
    uvci_country: Option<String>,
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
            uvci_country: None,
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

    /// Requires every UVCI sent with a record to be for `country` (e.g. `"VN"`).
    pub fn with_uvci_country(mut self, country: &str) -> Result<Policy, UvciError> {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(UvciError::Country);
        }
        self.uvci_country = Some(country.to_owned());
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

// ---------------------------------------------------------------------------------------------
// Calendar helpers (proleptic Gregorian, no allocation, no panics)
// ---------------------------------------------------------------------------------------------

/// A calendar date, ordered chronologically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ymd {
    pub(crate) year: i64,
    pub(crate) month: u8,
    pub(crate) day: u8,
}

pub(crate) fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub(crate) fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(d: Ymd) -> i64 {
    let y = if d.month <= 2 { d.year - 1 } else { d.year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(d.month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> Ymd {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ymd { year, month, day }
}

fn digits<const N: usize>(b: &[u8]) -> Option<u32> {
    if b.len() != N {
        return None;
    }
    b.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

/// `YYYY-MM-DD`, a real calendar date.
fn parse_full_date(b: &[u8]) -> Option<Ymd> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i64::from(digits::<4>(&b[..4])?);
    let month = u8::try_from(digits::<2>(&b[5..7])?).ok()?;
    let day = u8::try_from(digits::<2>(&b[8..10])?).ok()?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(Ymd { year, month, day })
}

/// A time of day with its offset from UTC.
#[derive(Debug, Clone, Copy)]
struct Time {
    hour: u32,
    minute: u32,
    second: u32,
    offset_secs: i64,
}

/// RFC 3339 `full-time` (what JSON Schema's `date-time` asserts): `HH:MM:SS[.frac](Z|±HH:MM)`,
/// `Z` in either case, a leap second only at 23:59:60 UTC.
fn parse_rfc3339_time(b: &[u8]) -> Option<Time> {
    if b.len() < 9 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let hour = digits::<2>(&b[..2])?;
    let minute = digits::<2>(&b[3..5])?;
    let second = digits::<2>(&b[6..8])?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 8;
    if b.get(i) == Some(&b'.') {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    let offset_secs = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits::<2>(&[*h1, *h2])?;
            let om = digits::<2>(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let t = Time { hour, minute, second, offset_secs };
    if second == 60 && !leap_second_at_utc_2359(t) {
        return None;
    }
    Some(t)
}

fn leap_second_at_utc_2359(t: Time) -> bool {
    let local = i64::from(t.hour * 60 + t.minute);
    let utc = (local - t.offset_secs / 60).rem_euclid(24 * 60);
    utc == 23 * 60 + 59
}

/// The ISO 8601 time shapes found in certificates in the field: `HH:MM[:SS[.frac]]` and a zone
/// `Z`, `±HH`, `±HHMM` or `±HH:MM`.
fn parse_lenient_time(b: &[u8]) -> Option<Time> {
    if b.len() < 5 || b[2] != b':' {
        return None;
    }
    let hour = digits::<2>(&b[..2])?;
    let minute = digits::<2>(&b[3..5])?;
    let mut i = 5;
    let mut second = 0;
    if b.get(i) == Some(&b':') {
        second = digits::<2>(b.get(i + 1..i + 3)?)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return None;
            }
            i += 1 + n;
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let zone = &b[i..];
    let offset_secs = match zone {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (oh, om) = match rest {
                [h1, h2] => (digits::<2>(&[*h1, *h2])?, 0),
                [h1, h2, m1, m2] | [h1, h2, b':', m1, m2] => {
                    (digits::<2>(&[*h1, *h2])?, digits::<2>(&[*m1, *m2])?)
                }
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    Some(Time { hour, minute, second, offset_secs })
}

/// A date-time as seconds since the Unix epoch (a leap second counts as :59).
fn instant(date: Ymd, t: Time) -> i64 {
    days_from_civil(date) * 86_400 + i64::from(t.hour * 3600 + t.minute * 60 + t.second.min(59))
        - t.offset_secs
}

/// How the `format: date` / `format: date-time` fields are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FormatMode {
    /// As deployed verifiers read them, and as the upstream test vectors expect: `date-time` is
    /// ISO 8601 with `±HH`, `±HHMM` or `±HH:MM` offsets and optional seconds (the schema's own
    /// valid tests use `+02` and `+0200`), and a `date` may carry a trailing time (1.0.x-era
    /// certificates have `"dt": "2021-03-18T22:54:00+02:00"`). Dates must be real dates.
    #[default]
    Lenient,
    /// RFC 3339 exactly, as JSON Schema's format assertion defines it (and as the signing mode
    /// requires): `YYYY-MM-DD`, and `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
    Rfc3339,
}

fn check_date_format(s: &str, mode: FormatMode) -> Option<Ymd> {
    let b = s.as_bytes();
    match mode {
        FormatMode::Rfc3339 => parse_full_date(b),
        FormatMode::Lenient => {
            let date = parse_full_date(b.get(..10)?)?;
            match b.get(10) {
                None => Some(date),
                Some(b'T' | b't') => parse_lenient_time(&b[11..]).map(|_| date),
                Some(_) => None,
            }
        }
    }
}

fn check_datetime_format(s: &str, mode: FormatMode) -> Option<i64> {
    let b = s.as_bytes();
    // RFC 3339 splits at the first T; a valid date has none, so that is also "at byte 10".
    let date = parse_full_date(b.get(..10)?)?;
    if !matches!(b.get(10), Some(b'T' | b't')) {
        return None;
    }
    let time = match mode {
        FormatMode::Rfc3339 => parse_rfc3339_time(&b[11..])?,
        FormatMode::Lenient => parse_lenient_time(&b[11..])?,
    };
    Some(instant(date, time))
}

// ---------------------------------------------------------------------------------------------
// A minimal JSON tree: keeps duplicate keys (so they can be refused) and borrows strings from the
// input where it can (so parsing allocates little).
// ---------------------------------------------------------------------------------------------

/// A JSON number as parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// A JSON value; objects keep their keys in document order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    fn type_name(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Num(_) => "number",
            Json::Str(_) => "string",
            Json::Arr(_) => "array",
            Json::Obj(_) => "object",
        }
    }

    /// A view of a `serde_json::Value` that borrows all its strings.
    pub(crate) fn from_value(v: &'a serde_json::Value) -> Json<'a> {
        use serde_json::Value;
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Num(if let Some(u) = n.as_u64() {
                Num::U(u)
            } else if let Some(i) = n.as_i64() {
                Num::I(i)
            } else {
                Num::F(n.as_f64().unwrap_or(f64::NAN))
            }),
            Value::String(s) => Json::Str(Cow::Borrowed(s)),
            Value::Array(a) => Json::Arr(a.iter().map(Json::from_value).collect()),
            Value::Object(o) => {
                Json::Obj(o.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::from_value(v))).collect())
            }
        }
    }
}

/// The first value under `key`.
pub(crate) fn get<'j, 'a>(obj: &'j [(Cow<'a, str>, Json<'a>)], key: &str) -> Option<&'j Json<'a>> {
    obj.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A string that borrows from the input when it holds no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The key serde_json uses for numbers when its `arbitrary_precision` feature is on (some other
/// crate in the build may enable it).
const ARBITRARY_PRECISION_KEY: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Json::Bool(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Json::Num(Num::U(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Json::Num(if n >= 0 { Num::U(n as u64) } else { Num::I(n) }))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Json::Num(Num::F(n)))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
                while let Some(item) = seq.next_element()? {
                    v.push(item);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(8).min(16));
                while let Some(CowStr(k)) = map.next_key()? {
                    if v.is_empty() && k == ARBITRARY_PRECISION_KEY {
                        let CowStr(n) = map.next_value()?;
                        return Ok(Json::Num(parse_number_text(&n)));
                    }
                    let value = map.next_value()?;
                    v.push((k, value));
                }
                Ok(Json::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_number_text(s: &str) -> Num {
    if let Ok(u) = s.parse::<u64>() {
        Num::U(u)
    } else if let Ok(i) = s.parse::<i64>() {
        Num::I(i)
    } else {
        Num::F(s.parse::<f64>().unwrap_or(f64::NAN))
    }
}

/// Parses one record's JSON.
pub(crate) fn parse_json(s: &str) -> Result<Json<'_>, PayloadError> {
    serde_json::from_str(s)
        .map_err(|e| PayloadError::new(ErrorCode::Json, "", format!("not valid JSON: {e}")))
}

/// NFC-normalises every string value in place (keys are matched against ASCII field names, so
/// they are left alone). ASCII strings, the vast majority, cost one scan.
pub(crate) fn normalize_nfc(j: &mut Json<'_>) {
    match j {
        Json::Str(s) => {
            if !s.is_ascii() && is_nfc_quick(s.chars()) != IsNormalized::Yes {
                let n: String = s.nfc().collect();
                if n != **s {
                    *s = Cow::Owned(n);
                }
            }
        }
        Json::Arr(a) => a.iter_mut().for_each(normalize_nfc),
        Json::Obj(o) => o.iter_mut().for_each(|(_, v)| normalize_nfc(v)),
        Json::Null | Json::Bool(_) | Json::Num(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Field paths, built on the stack and rendered only for an error
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

impl<'a> Path<'a> {
    const ROOT: Path<'static> = Path { parent: None, seg: Seg::Root };

    fn key<'b>(&'b self, k: &'b str) -> Path<'b> {
        Path { parent: Some(self), seg: Seg::Key(k) }
    }

    fn index(&self, i: usize) -> Path<'_> {
        Path { parent: Some(self), seg: Seg::Index(i) }
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut p = Some(self);
        while let Some(node) = p {
            segs.push(node.seg);
            p = node.parent;
        }
        let mut out = String::new();
        for seg in segs.into_iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    push_key(&mut out, k);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }
}

/// Appends a key to a path: as is if it looks like a field name, otherwise quoted and cut short
/// (unknown keys come from the issuer and may be anything).
fn push_key(out: &mut String, k: &str) {
    let plain = !k.is_empty()
        && k.len() <= 40
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'|');
    if plain {
        out.push_str(k);
    } else {
        let short: String = k.chars().take(40).collect();
        let _ = write!(out, "{short:?}");
    }
}

/// A value quoted in a message, cut short.
fn quote(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    if short.len() < s.len() { format!("{short:?}…") } else { format!("{short:?}") }
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// A free-text string with a `maxLength`.
    Text(usize),
    /// `fnt`/`gnt`: `^[A-Z<]*$`, at most 80.
    Standardised,
    /// A code from a value set (the schema only asks for a string).
    Code(ValueSetId),
    /// `co`: the (unanchored) pattern `[A-Z]{1,10}` and the country value set.
    Country,
    /// `dn`/`sd`: an integer ≥ 1.
    Dose,
    /// `format: date`.
    Date,
    /// `format: date-time`.
    DateTime,
    /// `ci`: at most 80, and a UVCI when signing.
    Ci,
}

struct Field {
    name: &'static str,
    rule: Rule,
    required: bool,
}

const fn f(name: &'static str, rule: Rule, required: bool) -> Field {
    Field { name, rule, required }
}

const ROOT_KEYS: &[&str] = &["ver", "nam", "dob", "v", "t", "r"];

const NAM: &[Field] = &[
    f("fn", Rule::Text(80), false),
    f("fnt", Rule::Standardised, false),
    f("gn", Rule::Text(80), false),
    f("gnt", Rule::Standardised, false),
];

const VACCINATION: &[Field] = &[
    f("tg", Rule::Code(ValueSetId::DiseaseAgentTargeted), true),
    f("vp", Rule::Code(ValueSetId::VaccineProphylaxis), true),
    f("mp", Rule::Code(ValueSetId::VaccineMedicinalProduct), true),
    f("ma", Rule::Code(ValueSetId::VaccineMahManf), true),
    f("dn", Rule::Dose, true),
    f("sd", Rule::Dose, true),
    f("dt", Rule::Date, true),
    f("co", Rule::Country, true),
    f("is", Rule::Text(80), true),
    f("ci", Rule::Ci, true),
];

const TEST: &[Field] = &[
    f("tg", Rule::Code(ValueSetId::DiseaseAgentTargeted), true),
    f("tt", Rule::Code(ValueSetId::TestType), true),
    f("nm", Rule::Text(80), false),
    f("ma", Rule::Code(ValueSetId::TestManf), false),
    f("sc", Rule::DateTime, true),
    f("tr", Rule::Code(ValueSetId::TestResult), true),
    f("tc", Rule::Text(80), false),
    f("co", Rule::Country, true),
    f("is", Rule::Text(80), true),
    f("ci", Rule::Ci, true),
];

const RECOVERY: &[Field] = &[
    f("tg", Rule::Code(ValueSetId::DiseaseAgentTargeted), true),
    f("fr", Rule::Date, true),
    f("co", Rule::Country, true),
    f("is", Rule::Text(80), true),
    f("df", Rule::Date, true),
    f("du", Rule::Date, true),
    f("ci", Rule::Ci, true),
];

/// The LOINC code of a rapid antigen test.
pub const RAPID_ANTIGEN_TEST: &str = "LP217198-3";

fn entry_fields(kind: CertificateType) -> &'static [Field] {
    match kind {
        CertificateType::Vaccination => VACCINATION,
        CertificateType::Test => TEST,
        CertificateType::Recovery => RECOVERY,
    }
}

const GROUPS: [(&str, CertificateType); 3] =
    [("v", CertificateType::Vaccination), ("t", CertificateType::Test), ("r", CertificateType::Recovery)];

/// What a walk checks against.
#[derive(Clone, Copy)]
struct Ctx<'p> {
    value_sets: Option<&'p ValueSets>,
    formats: FormatMode,
    /// Present in the signing mode.
    policy: Option<&'p Policy>,
}

/// Collects errors; stops the walk at the first unless every error is wanted.
struct Report {
    all: bool,
    errors: Vec<PayloadError>,
}

impl Report {
    fn push(&mut self, code: ErrorCode, path: &Path<'_>, message: impl Into<String>) -> ControlFlow<()> {
        self.errors.push(PayloadError::new(code, path.render(), message));
        if self.all { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
    }
}

fn check_root(root: &Json<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
    let path = Path::ROOT;
    let Json::Obj(obj) = root else {
        return rep.push(
            ErrorCode::Schema,
            &path,
            format!("expected a JSON object, found {}", root.type_name()),
        );
    };
    if ctx.policy.is_some() {
        check_keys(obj, |k| ROOT_KEYS.contains(&k), &path, rep)?;
    }
    match get(obj, "ver") {
        Some(v) => check_ver(v, &path.key("ver"), ctx, rep)?,
        None => rep.push(ErrorCode::Schema, &path.key("ver"), "required field missing")?,
    }
    match get(obj, "nam") {
        Some(v) => check_nam(v, &path.key("nam"), ctx, rep)?,
        None => rep.push(ErrorCode::Schema, &path.key("nam"), "required field missing")?,
    }
    match get(obj, "dob") {
        Some(v) => check_dob(v, &path.key("dob"), ctx, rep)?,
        None => rep.push(ErrorCode::Schema, &path.key("dob"), "required field missing")?,
    }
    let present = GROUPS.map(|(key, kind)| get(obj, key).map(|v| (key, kind, v)));
    let mut first: Option<&str> = None;
    for (key, ..) in present.iter().flatten() {
        match first {
            None => first = Some(key),
            Some(first) => rep.push(
                ErrorCode::Schema,
                &path.key(key),
                format!("only one of v, t and r may be present (found {first} and {key})"),
            )?,
        }
    }
    if first.is_none() {
        rep.push(
            ErrorCode::Schema,
            &path.key("v|t|r"),
            "one of v (vaccination), t (test) or r (recovery) is required",
        )?;
    }
    for (key, kind, v) in present.into_iter().flatten() {
        check_group(v, kind, &path.key(key), ctx, rep)?;
    }
    ControlFlow::Continue(())
}

/// Signing mode: every key must be a known field, and only once.
fn check_keys(
    obj: &[(Cow<'_, str>, Json<'_>)],
    known: impl Fn(&str) -> bool,
    path: &Path<'_>,
    rep: &mut Report,
) -> ControlFlow<()> {
    for (i, (k, _)) in obj.iter().enumerate() {
        if !known(k) {
            rep.push(ErrorCode::Schema, &path.key(k), "unknown field (not in DCC schema 1.3.x)")?;
        } else if obj[..i].iter().any(|(prev, _)| prev == k) {
            rep.push(ErrorCode::Schema, &path.key(k), "duplicate field")?;
        }
    }
    ControlFlow::Continue(())
}

/// The string value, or a type error; `None` (after recording the error, in report-all mode)
/// skips the field's other rules.
fn string_of<'j>(v: &'j Json<'_>, path: &Path<'_>, rep: &mut Report) -> ControlFlow<(), Option<&'j str>> {
    if let Json::Str(s) = v {
        return ControlFlow::Continue(Some(s));
    }
    rep.push(ErrorCode::Schema, path, format!("expected a string, found {}", v.type_name()))?;
    ControlFlow::Continue(None)
}

/// ECMA-262 `^\d+.\d+.\d+$`, exactly: `\d` is ASCII, `.` any character but a line terminator.
/// Run as a five-state automaton, linear in the input.
fn matches_ver_pattern(s: &str) -> bool {
    // States: 0 start, 1 in first digits, 2 after first '.', 3 in second digits,
    // 4 after second '.', 5 in third digits (accepting). Bit i set = state i reachable.
    let mut set: u8 = 1;
    for c in s.chars() {
        let digit = c.is_ascii_digit();
        let any = !matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}');
        let mut next = 0u8;
        let has = |i: u8| set & (1 << i) != 0;
        if digit && (has(0) || has(1)) {
            next |= 1 << 1;
        }
        if any && has(1) {
            next |= 1 << 2;
        }
        if digit && (has(2) || has(3)) {
            next |= 1 << 3;
        }
        if any && has(3) {
            next |= 1 << 4;
        }
        if digit && (has(4) || has(5)) {
            next |= 1 << 5;
        }
        set = next;
        if set == 0 {
            return false;
        }
    }
    set & (1 << 5) != 0
}

fn check_ver(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
    let Some(s) = string_of(v, path, rep)? else {
        return ControlFlow::Continue(());
    };
    if ctx.policy.is_none() {
        if !matches_ver_pattern(s) {
            rep.push(
                ErrorCode::Schema,
                path,
                format!("{} is not a schema version (pattern ^\\d+.\\d+.\\d+$)", quote(s)),
            )?;
        }
        return ControlFlow::Continue(());
    }
    let parts: Vec<&str> = s.split('.').collect();
    let semver =
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !semver {
        return rep.push(
            ErrorCode::Schema,
            path,
            format!("{} is not a schema version MAJOR.MINOR.PATCH", quote(s)),
        );
    }
    if parts[..2] != ["1", "3"] {
        return rep.push(
            ErrorCode::Policy,
            path,
            format!("unsupported schema version {} (this signer checks and produces DCC 1.3.x)", quote(s)),
        );
    }
    ControlFlow::Continue(())
}

fn check_dob(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
    let Some(s) = string_of(v, path, rep)? else {
        return ControlFlow::Continue(());
    };
    let b = s.as_bytes();
    let shape_ok = match b.len() {
        0 => true,
        4 | 7 | 10 => {
            (b.starts_with(b"19") || b.starts_with(b"20"))
                && b[2].is_ascii_digit()
                && b[3].is_ascii_digit()
                && b[4..]
                    .chunks(3)
                    .all(|c| c.len() == 3 && c[0] == b'-' && c[1].is_ascii_digit() && c[2].is_ascii_digit())
        }
        _ => false,
    };
    if !shape_ok {
        return rep.push(
            ErrorCode::Schema,
            path,
            "must be YYYY, YYYY-MM or YYYY-MM-DD with a year 1900-2099, or empty",
        );
    }
    let Some(policy) = ctx.policy else {
        return ControlFlow::Continue(());
    };
    if b.is_empty() {
        return ControlFlow::Continue(());
    }
    // The shape check above guarantees ASCII digits at these positions.
    let year = i64::from(digits::<4>(&b[..4]).unwrap_or(0));
    let month = if b.len() >= 7 { digits::<2>(&b[5..7]).unwrap_or(0) as u8 } else { 1 };
    let day = if b.len() == 10 { digits::<2>(&b[8..10]).unwrap_or(0) as u8 } else { 1 };
    if b.len() >= 7 && !(1..=12).contains(&month) {
        return rep.push(ErrorCode::Schema, path, "not a real date (month out of range)");
    }
    if b.len() == 10 && (day == 0 || day > days_in_month(year, month)) {
        return rep.push(ErrorCode::Schema, path, "not a real date (day out of range)");
    }
    // Compare at the precision given: "2024" is in the future only if 2024 has not begun.
    if (Ymd { year, month, day }) > policy.latest_date {
        return rep.push(ErrorCode::Policy, path, "date of birth is in the future");
    }
    ControlFlow::Continue(())
}

fn check_nam(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
    let Json::Obj(obj) = v else {
        return rep.push(ErrorCode::Schema, path, format!("expected an object, found {}", v.type_name()));
    };
    if ctx.policy.is_some() {
        check_keys(obj, |k| NAM.iter().any(|f| f.name == k), path, rep)?;
    }
    let fnt = get(obj, "fnt");
    let gnt = get(obj, "gnt");
    if fnt.is_none() && gnt.is_none() {
        rep.push(
            ErrorCode::Schema,
            path,
            "needs fnt or gnt (the ICAO 9303 transliterated surname or forename)",
        )?;
    }
    for field in NAM {
        if let Some(value) = get(obj, field.name) {
            check_field(field, value, &path.key(field.name), ctx, rep)?;
        }
    }
    if ctx.policy.is_some() {
        let non_empty = |v: Option<&Json<'_>>| matches!(v, Some(Json::Str(s)) if !s.is_empty());
        if (fnt.is_some() || gnt.is_some()) && !non_empty(fnt) && !non_empty(gnt) {
            rep.push(ErrorCode::Policy, path, "fnt and gnt are both empty: a certificate needs a name")?;
        }
    }
    ControlFlow::Continue(())
}

fn check_group(
    v: &Json<'_>,
    kind: CertificateType,
    path: &Path<'_>,
    ctx: &Ctx<'_>,
    rep: &mut Report,
) -> ControlFlow<()> {
    let Json::Arr(items) = v else {
        return rep.push(ErrorCode::Schema, path, format!("expected an array, found {}", v.type_name()));
    };
    if items.len() != 1 {
        rep.push(ErrorCode::Schema, path, format!("must hold exactly one entry, found {}", items.len()))?;
    }
    for (i, item) in items.iter().enumerate() {
        check_entry(item, kind, &path.index(i), ctx, rep)?;
    }
    ControlFlow::Continue(())
}

fn check_entry(
    v: &Json<'_>,
    kind: CertificateType,
    path: &Path<'_>,
    ctx: &Ctx<'_>,
    rep: &mut Report,
) -> ControlFlow<()> {
    let Json::Obj(obj) = v else {
        return rep.push(ErrorCode::Schema, path, format!("expected an object, found {}", v.type_name()));
    };
    let fields = entry_fields(kind);
    if ctx.policy.is_some() {
        check_keys(obj, |k| fields.iter().any(|f| f.name == k), path, rep)?;
    }
    // Verifier side: a test's device code counts only for a rapid antigen test (EU rule
    // TR-EU-0002); Swiss NAAT certificates carry "ma": "" and are valid.
    let rat = matches!(get(obj, "tt"), Some(Json::Str(tt)) if tt == RAPID_ANTIGEN_TEST);
    let no_codes = Ctx { value_sets: None, ..*ctx };
    for field in fields {
        let field_ctx = if kind == CertificateType::Test && field.name == "ma" && !rat && ctx.policy.is_none()
        {
            &no_codes
        } else {
            ctx
        };
        match get(obj, field.name) {
            Some(value) => check_field(field, value, &path.key(field.name), field_ctx, rep)?,
            // The daemon assigns a UVCI to a record that arrives without one.
            None if field.rule == Rule::Ci && ctx.policy.is_some() => {}
            None if field.required => {
                rep.push(ErrorCode::Schema, &path.key(field.name), "required field missing")?
            }
            None => {}
        }
    }
    if let Some(policy) = ctx.policy {
        // Reached only when every field above passed (the signing mode stops at the first
        // error), so the values below are present and well-formed.
        check_entry_policy(obj, kind, path, policy, rep)?;
    }
    ControlFlow::Continue(())
}

fn date_of(obj: &[(Cow<'_, str>, Json<'_>)], key: &str) -> Option<Ymd> {
    match get(obj, key) {
        Some(Json::Str(s)) => parse_full_date(s.as_bytes()),
        _ => None,
    }
}

fn check_entry_policy(
    obj: &[(Cow<'_, str>, Json<'_>)],
    kind: CertificateType,
    path: &Path<'_>,
    policy: &Policy,
    rep: &mut Report,
) -> ControlFlow<()> {
    match kind {
        CertificateType::Vaccination => {
            if date_of(obj, "dt").is_some_and(|d| d > policy.latest_date) {
                rep.push(ErrorCode::Policy, &path.key("dt"), "date of vaccination is in the future")?;
            }
        }
        CertificateType::Test => {
            if let Some(Json::Str(sc)) = get(obj, "sc") {
                let at = check_datetime_format(sc, FormatMode::Rfc3339);
                if at.is_some_and(|t| t > policy.now_unix.saturating_add(policy.clock_skew_secs)) {
                    rep.push(ErrorCode::Policy, &path.key("sc"), "sample collection time is in the future")?;
                }
            }
            let rat = matches!(get(obj, "tt"), Some(Json::Str(tt)) if tt == RAPID_ANTIGEN_TEST);
            if rat && get(obj, "ma").is_none() {
                rep.push(
                    ErrorCode::Policy,
                    &path.key("ma"),
                    format!("required for a rapid antigen test (tt {RAPID_ANTIGEN_TEST}): the device code from the EU list"),
                )?;
            }
        }
        CertificateType::Recovery => {
            let fr = date_of(obj, "fr");
            let df = date_of(obj, "df");
            let du = date_of(obj, "du");
            if fr.is_some_and(|d| d > policy.latest_date) {
                rep.push(
                    ErrorCode::Policy,
                    &path.key("fr"),
                    "date of the first positive test is in the future",
                )?;
            }
            if let (Some(fr), Some(df)) = (fr, df)
                && df < fr
            {
                rep.push(
                    ErrorCode::Policy,
                    &path.key("df"),
                    "valid-from date is before the first positive test (fr)",
                )?;
            }
            if let (Some(df), Some(du)) = (df, du)
                && du < df
            {
                rep.push(
                    ErrorCode::Policy,
                    &path.key("du"),
                    "valid-until date is before the valid-from date (df)",
                )?;
            }
        }
    }
    ControlFlow::Continue(())
}

fn check_field(
    field: &Field,
    v: &Json<'_>,
    path: &Path<'_>,
    ctx: &Ctx<'_>,
    rep: &mut Report,
) -> ControlFlow<()> {
    if field.rule == Rule::Dose {
        return check_dose(v, path, ctx, rep);
    }
    let Some(s) = string_of(v, path, rep)? else {
        return ControlFlow::Continue(());
    };
    match field.rule {
        Rule::Text(max) => {
            if exceeds(s, max) {
                rep.push(ErrorCode::Schema, path, format!("longer than {max} characters"))?;
            }
        }
        Rule::Standardised => {
            if exceeds(s, 80) {
                rep.push(ErrorCode::Schema, path, "longer than 80 characters")?;
            }
            if !s.bytes().all(|b| b.is_ascii_uppercase() || b == b'<') {
                rep.push(
                    ErrorCode::Schema,
                    path,
                    "may only hold A-Z and < (ICAO 9303 transliteration, pattern ^[A-Z<]*$)",
                )?;
            }
        }
        Rule::Code(id) => check_code(id, s, path, ctx, rep)?,
        Rule::Country => {
            if !s.bytes().any(|b| b.is_ascii_uppercase()) {
                rep.push(
                    ErrorCode::Schema,
                    path,
                    format!("{} is not a country code (pattern [A-Z]{{1,10}})", quote(s)),
                )?;
            } else {
                check_code(ValueSetId::CountryCodes, s, path, ctx, rep)?;
            }
        }
        Rule::Date => {
            let mode = if ctx.policy.is_some() { FormatMode::Rfc3339 } else { ctx.formats };
            if check_date_format(s, mode).is_none() {
                rep.push(ErrorCode::Schema, path, "must be a date YYYY-MM-DD")?;
            }
        }
        Rule::DateTime => {
            let mode = if ctx.policy.is_some() { FormatMode::Rfc3339 } else { ctx.formats };
            if check_datetime_format(s, mode).is_none() {
                let msg = match mode {
                    FormatMode::Rfc3339 => "must be an RFC 3339 date-time, e.g. 2021-06-11T17:30:00+07:00",
                    FormatMode::Lenient => {
                        "must be an ISO 8601 date-time with a time zone, e.g. 2021-06-11T17:30:00Z"
                    }
                };
                rep.push(ErrorCode::Schema, path, msg)?;
            }
        }
        Rule::Ci => {
            if exceeds(s, uvci::MAX_LEN) {
                rep.push(ErrorCode::Schema, path, format!("longer than {} characters", uvci::MAX_LEN))?;
            } else if let Some(policy) = ctx.policy {
                match uvci::validate(s) {
                    Err(e) => rep.push(ErrorCode::Uvci, path, format!("not a valid UVCI: {e}"))?,
                    Ok(at) => {
                        if let Some(want) = &policy.uvci_country {
                            let found = s.get(at..at + 2).unwrap_or("");
                            if found != want {
                                let e = UvciError::WrongCountry {
                                    expected: want.clone(),
                                    found: found.to_owned(),
                                };
                                rep.push(ErrorCode::Uvci, path, format!("not a valid UVCI: {e}"))?;
                            }
                        }
                    }
                }
            }
        }
        Rule::Dose => {}
    }
    ControlFlow::Continue(())
}

/// Whether `s` has more than `max` characters (JSON Schema counts code points).
fn exceeds(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

fn check_code(id: ValueSetId, s: &str, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
    let Some(sets) = ctx.value_sets else {
        return ControlFlow::Continue(());
    };
    match sets.lookup(id, s) {
        None => rep.push(ErrorCode::ValueSet, path, format!("unknown {} {}", id.describe(), quote(s))),
        Some(info) if !info.active && ctx.policy.is_some_and(|p| !p.allow_inactive_codes) => rep.push(
            ErrorCode::ValueSet,
            path,
            format!("{} {} is no longer active in the EU value set", id.describe(), quote(s)),
        ),
        Some(_) => ControlFlow::Continue(()),
    }
}

fn check_dose(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
    let Json::Num(n) = v else {
        return rep.push(ErrorCode::Schema, path, format!("expected an integer, found {}", v.type_name()));
    };
    // JSON Schema's "integer" is any number with a zero fractional part, 1.0 included.
    let value: Option<f64> = match *n {
        Num::U(u) => Some(u as f64),
        Num::I(i) => Some(i as f64),
        Num::F(x) if x.is_finite() && x.fract() == 0.0 => Some(x),
        Num::F(_) => None,
    };
    let Some(value) = value else {
        return rep.push(ErrorCode::Schema, path, "must be an integer");
    };
    if value < 1.0 {
        return rep.push(ErrorCode::Schema, path, "must be at least 1");
    }
    if ctx.policy.is_some() && dose_value(n).is_none() {
        return rep.push(ErrorCode::Policy, path, "out of range");
    }
    ControlFlow::Continue(())
}

/// A dose number or series length as the signer stores it.
pub(crate) fn dose_value(n: &Num) -> Option<u32> {
    match *n {
        Num::U(u) => u32::try_from(u).ok(),
        Num::I(i) => u32::try_from(i).ok(),
        Num::F(x) if x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x) => Some(x as u32),
        Num::F(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// Options of the verifier-side schema check.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaOptions<'a> {
    /// Also check codes against these value sets (the schema itself only points to them; some
    /// negative test vectors fail only on a code). Inactive codes are accepted.
    pub value_sets: Option<&'a ValueSets>,
    /// How `format: date` / `date-time` are read.
    pub formats: FormatMode,
}

/// Checks a decoded DCC against the JSON schema 1.3.x rules (verifier side) and returns the
/// first failure. Unknown properties are allowed; formats are read leniently
/// ([`FormatMode::Lenient`]); codes are checked only when `value_sets` is given (inactive codes
/// pass, and a test's device code `ma` counts only for a rapid antigen test, as in the EU
/// business rule TR-EU-0002: Swiss NAAT certificates carry `"ma": ""`).
pub fn check_schema(value: &serde_json::Value, value_sets: Option<&ValueSets>) -> Result<(), PayloadError> {
    let opts = SchemaOptions { value_sets, formats: FormatMode::Lenient };
    let tree = Json::from_value(value);
    let ctx = Ctx { value_sets: opts.value_sets, formats: opts.formats, policy: None };
    let mut rep = Report { all: false, errors: Vec::new() };
    let _ = check_root(&tree, &ctx, &mut rep);
    match rep.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Like [`check_schema`], with options, returning every failure (empty when valid), in schema
/// order.
pub fn check_schema_report(value: &serde_json::Value, options: &SchemaOptions<'_>) -> Vec<PayloadError> {
    let tree = Json::from_value(value);
    let ctx = Ctx { value_sets: options.value_sets, formats: options.formats, policy: None };
    let mut rep = Report { all: true, errors: Vec::new() };
    let _ = check_root(&tree, &ctx, &mut rep);
    rep.errors
}

/// The signing-mode check of an (already NFC-normalised) tree: the first failure.
pub(crate) fn check_strict(tree: &Json<'_>, policy: &Policy) -> Result<(), PayloadError> {
    let ctx =
        Ctx { value_sets: Some(policy.value_sets()), formats: FormatMode::Rfc3339, policy: Some(policy) };
    let mut rep = Report { all: false, errors: Vec::new() };
    let _ = check_root(tree, &ctx, &mut rep);
    match rep.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hcert::Dcc;
    use serde_json::{Value, json};
    use std::path::{Path as FsPath, PathBuf};

    fn testdata() -> PathBuf {
        FsPath::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
    }

    fn read_json(path: &FsPath) -> Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn json_files(dir: &FsPath) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
                let p = entry.expect("dir entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "json") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    fn examples() -> Vec<(PathBuf, Value)> {
        json_files(&testdata().join("dcc-schema/examples"))
            .into_iter()
            .map(|p| {
                let v = read_json(&p);
                (p, v)
            })
            .collect()
    }

    fn policy() -> Policy {
        Policy::new(
            crate::hcert::valuesets::tests::with_example_rat(),
            time::macros::datetime!(2025-06-01 12:00 UTC),
        )
    }

    fn value_sets() -> std::sync::Arc<ValueSets> {
        crate::hcert::valuesets::tests::with_example_rat()
    }

    fn example(kind: &str) -> Value {
        read_json(&testdata().join(format!("dcc-schema/examples/{kind}")))
    }

    fn vaccination() -> Value {
        example("vaccination/simple.json")
    }

    fn test_rat() -> Value {
        example("test/simple-rat.json")
    }

    fn test_naat() -> Value {
        example("test/simple-naat.json")
    }

    fn recovery() -> Value {
        example("recovery/simple.json")
    }

    /// `base` with the value at the JSON pointer `ptr` replaced (or added), or removed if `None`.
    fn with(base: &Value, ptr: &str, val: Option<Value>) -> Value {
        let mut v = base.clone();
        let (parent, last) = ptr.rsplit_once('/').expect("pointer");
        let target = v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
        match (target, val) {
            (Value::Object(o), Some(x)) => {
                o.insert(last.to_owned(), x);
            }
            (Value::Object(o), None) => {
                o.remove(last);
            }
            (Value::Array(a), Some(x)) => a[last.parse::<usize>().expect("index")] = x,
            (Value::Array(a), None) => {
                a.remove(last.parse::<usize>().expect("index"));
            }
            _ => panic!("{ptr} is not in an object or array"),
        }
        v
    }

    fn set(base: &Value, ptr: &str, val: Value) -> Value {
        with(base, ptr, Some(val))
    }

    fn del(base: &Value, ptr: &str) -> Value {
        with(base, ptr, None)
    }

    fn strict(v: &Value) -> Result<Dcc, PayloadError> {
        let by_str = Dcc::from_json_str(&v.to_string(), &policy());
        let by_value = Dcc::from_json_value(v, &policy());
        assert_eq!(by_str, by_value, "the two entry points disagree on {v}");
        by_str
    }

    #[track_caller]
    fn assert_strict_err(v: &Value, code: ErrorCode, path: &str) -> PayloadError {
        match strict(v) {
            Ok(_) => panic!("accepted, expected {code} at {path}: {v}"),
            Err(e) => {
                assert_eq!((e.kind(), e.path()), (code, path), "wrong error: {e}");
                e
            }
        }
    }

    #[track_caller]
    fn assert_strict_ok(v: &Value) -> Dcc {
        strict(v).unwrap_or_else(|e| panic!("refused: {e}\n{v}"))
    }

    // --- the upstream material ---------------------------------------------------------------

    #[test]
    fn upstream_examples_pass_both_modes_and_round_trip() {
        let all = examples();
        assert_eq!(all.len(), 27);
        for (path, v) in all {
            check_schema(&v, Some(&value_sets())).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let dcc =
                Dcc::from_json_value(&v, &policy()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // The serde shape is exactly the schema's JSON shape.
            assert_eq!(serde_json::to_value(&dcc).expect("serialise"), v, "{}", path.display());
        }
    }

    #[test]
    fn upstream_schema_tests_through_check_schema() {
        let valid = json_files(&testdata().join("dcc-schema/test/valid"));
        let invalid = json_files(&testdata().join("dcc-schema/test/invalid"));
        assert_eq!((valid.len(), invalid.len()), (13, 6));
        for p in valid {
            check_schema(&read_json(&p), None).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        let mut paths = Vec::new();
        for p in invalid {
            let e = check_schema(&read_json(&p), None).expect_err(&p.display().to_string());
            paths
                .push((p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned(), e.path().to_owned()));
        }
        paths.sort();
        let want = [
            ("empty.json", "v"),
            ("invalid_dob.json", "dob"),
            ("invalid_dob2.json", "dob"),
            ("invalid_vac.json", "v[0].dn"),
            ("missing_dob.json", "dob"),
            ("missing_fnt_gnt.json", "nam"),
        ];
        let got: Vec<(&str, &str)> = paths.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, want);
    }

    /// The `EXPECTEDSCHEMAVALIDATION` flags of the dgc-testdata vectors (their `JSON` member),
    /// through the verifier path. No single mode meets every flag, and the exceptions are pinned:
    ///
    /// * PL 7–9 (all three schema versions) expect a failure that only the value sets give (a
    ///   RAT `9999`, country `XY`, MAH `ORG-99999999`): they pass without value sets;
    /// * ES 1101 and 1103 expect success with codes from no value set (`tg` `729999`, `tg`
    ///   `94558-4`, `tr` `NEGATIVO`): they fail with value sets;
    /// * PL/1.3.0 1 and 5 had their `JSON` edited after signing (upstream PR #440; lower-case
    ///   `fnt` "Akdi", "ik ben ben"), which the schema refuses: they fail in both modes, while the
    ///   signed payload itself is valid.
    #[test]
    fn dgc_testdata_schema_expectations() {
        let sets = value_sets();
        let mut checked = 0;
        let mut without_sets = Vec::new();
        let mut with_sets = Vec::new();
        for p in json_files(&testdata().join("dgc-testdata")) {
            let v = read_json(&p);
            let (Some(dcc), Some(expected)) = (
                v.get("JSON"),
                v.pointer("/EXPECTEDRESULTS/EXPECTEDSCHEMAVALIDATION").and_then(Value::as_bool),
            ) else {
                continue;
            };
            let name = p.strip_prefix(testdata().join("dgc-testdata")).unwrap_or(&p).display().to_string();
            if check_schema(dcc, None).is_ok() != expected {
                without_sets.push(name.clone());
            }
            if let Err(e) = check_schema(dcc, Some(&sets)) {
                if expected {
                    with_sets.push(format!("{name}: {e}"));
                }
            } else if !expected {
                with_sets.push(format!("{name}: accepted"));
            }
            checked += 1;
        }
        assert!(checked >= 130, "{checked}");
        let mut want_without: Vec<String> = ["1.0.0", "1.2.1", "1.3.0"]
            .iter()
            .flat_map(|v| ["7", "8", "9"].map(|n| format!("PL/{v}/2DCode/raw/{n}.json")))
            .chain(["PL/1.3.0/2DCode/raw/1.json".to_owned(), "PL/1.3.0/2DCode/raw/5.json".to_owned()])
            .collect();
        want_without.sort();
        assert_eq!(without_sets, want_without);
        let want_with = [
            "ES/2DCode/raw/1101.json: v[0].tg: unknown disease or agent \"729999\"",
            "ES/2DCode/raw/1103.json: t[0].tg: unknown disease or agent \"94558-4\"",
            "PL/1.3.0/2DCode/raw/1.json: nam.fnt: may only hold A-Z and < (ICAO 9303 transliteration, pattern ^[A-Z<]*$)",
            "PL/1.3.0/2DCode/raw/5.json: nam.fnt: may only hold A-Z and < (ICAO 9303 transliteration, pattern ^[A-Z<]*$)",
        ];
        assert_eq!(with_sets, want_with);
    }

    // --- document level ------------------------------------------------------------------------

    #[test]
    fn not_json_or_not_an_object() {
        let e = Dcc::from_json_str("{\"ver\": ", &policy()).expect_err("truncated");
        assert_eq!((e.code(), e.path()), ("json", ""));
        assert!(e.to_string().starts_with("not valid JSON"), "{e}");
        let e = Dcc::from_json_str("{} x", &policy()).expect_err("trailing");
        assert_eq!(e.code(), "json");
        assert_strict_err(&json!([1, 2]), ErrorCode::Schema, "");
        assert_strict_err(&json!("x"), ErrorCode::Schema, "");
        assert_strict_err(&json!(null), ErrorCode::Schema, "");
    }

    #[test]
    fn required_top_level_fields() {
        let v = vaccination();
        for key in ["ver", "nam", "dob"] {
            let e = assert_strict_err(&del(&v, &format!("/{key}")), ErrorCode::Schema, key);
            assert_eq!(e.message(), "required field missing");
        }
        assert_strict_err(&del(&v, "/v"), ErrorCode::Schema, "v|t|r");
    }

    #[test]
    fn exactly_one_group_with_exactly_one_entry() {
        let v = vaccination();
        let entry = v["v"][0].clone();
        let t_entry = test_rat()["t"][0].clone();
        assert_strict_err(&set(&v, "/t", json!([t_entry])), ErrorCode::Schema, "t");
        assert_strict_err(&set(&v, "/v", json!([])), ErrorCode::Schema, "v");
        let e = assert_strict_err(&set(&v, "/v", json!([entry, entry])), ErrorCode::Schema, "v");
        assert_eq!(e.message(), "must hold exactly one entry, found 2");
        assert_strict_err(&set(&v, "/v", json!({})), ErrorCode::Schema, "v");
        assert_strict_err(&set(&v, "/v", json!(null)), ErrorCode::Schema, "v");
        assert_strict_err(&set(&v, "/v", json!(["x"])), ErrorCode::Schema, "v[0]");
    }

    #[test]
    fn unknown_and_duplicate_fields_are_refused_when_signing() {
        let v = vaccination();
        let e = assert_strict_err(&set(&v, "/foo", json!(1)), ErrorCode::Schema, "foo");
        assert_eq!(e.to_string(), "foo: unknown field (not in DCC schema 1.3.x)");
        assert_strict_err(&set(&v, "/nam/fnr", json!("X")), ErrorCode::Schema, "nam.fnr");
        // The 1.0.x field `dr` is allowed by the schema but not produced by this signer.
        assert_strict_err(
            &set(&test_naat(), "/t/0/dr", json!("2021-06-11T18:00:00Z")),
            ErrorCode::Schema,
            "t[0].dr",
        );
        assert_strict_err(&set(&recovery(), "/r/0/dn", json!(1)), ErrorCode::Schema, "r[0].dn");
        // A key that is not a plain name is quoted and cut short in the path.
        let e = assert_strict_err(&set(&v, "/v/0/a b", json!(1)), ErrorCode::Schema, "v[0].\"a b\"");
        assert!(e.to_string().starts_with("v[0].\"a b\": unknown field"), "{e}");
        // Duplicates: the JSON text is the only place they exist.
        let text =
            vaccination().to_string().replacen("\"ver\":\"1.3.3\"", "\"ver\":\"1.3.3\",\"ver\":\"1.3.0\"", 1);
        let e = Dcc::from_json_str(&text, &policy()).expect_err("duplicate");
        assert_eq!((e.code(), e.path(), e.message()), ("schema", "ver", "duplicate field"));
        let text = vaccination().to_string().replacen("\"dn\":1", "\"dn\":1,\"dn\":2", 1);
        let e = Dcc::from_json_str(&text, &policy()).expect_err("duplicate");
        assert_eq!(e.path(), "v[0].dn");
        // The verifier path allows unknown properties, as the schema does.
        check_schema(
            &set(&test_naat(), "/t/0/dr", json!("2021-06-11T18:00:00Z")),
            Some(ValueSets::embedded()),
        )
        .expect("dr allowed");
        check_schema(&set(&v, "/foo", json!(1)), None).expect("extra property allowed");
    }

    // --- ver -------------------------------------------------------------------------------------

    #[test]
    fn ver_rules() {
        let v = vaccination();
        for ok in ["1.3.0", "1.3.3", "1.3.10"] {
            assert_strict_ok(&set(&v, "/ver", json!(ok)));
        }
        assert_strict_err(&set(&v, "/ver", json!("1.0.0")), ErrorCode::Policy, "ver");
        assert_strict_err(&set(&v, "/ver", json!("2.3.0")), ErrorCode::Policy, "ver");
        for bad in ["1.3", "1x3x3", "1.3.3.4", "", "v1.3.3", "1..3"] {
            assert_strict_err(&set(&v, "/ver", json!(bad)), ErrorCode::Schema, "ver");
        }
        assert_strict_err(&set(&v, "/ver", json!(1.3)), ErrorCode::Schema, "ver");
        // The schema's own pattern has unescaped dots: the verifier path follows it to the letter.
        for ok in ["1.0.0", "1x3x3", "11111", "10.20.30"] {
            check_schema(&set(&v, "/ver", json!(ok)), None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["1.3", "1.3.3.4", "a.b.c", "1.3.3\n", "1\n3.3", ""] {
            let e = check_schema(&set(&v, "/ver", json!(bad)), None).expect_err(bad);
            assert_eq!(e.path(), "ver");
        }
    }

    #[test]
    fn ver_pattern_automaton() {
        assert!(matches_ver_pattern("1.2.3"));
        assert!(matches_ver_pattern("12345"));
        assert!(!matches_ver_pattern("1..2.3"));
        assert!(!matches_ver_pattern("1.2.3x"));
        assert!(matches_ver_pattern("1é2é3"));
        assert!(!matches_ver_pattern("1\r2.3"));
        assert!(!matches_ver_pattern("١.٢.٣"), "\\d is ASCII in ECMA-262");
        // Long inputs are linear, not exponential.
        let long = format!("{}.{}.{}", "1".repeat(100_000), "2".repeat(100_000), "3".repeat(100_000));
        assert!(matches_ver_pattern(&long));
    }

    // --- nam -------------------------------------------------------------------------------------

    #[test]
    fn name_rules() {
        let v = vaccination();
        let e = assert_strict_err(&del(&del(&v, "/nam/fnt"), "/nam/gnt"), ErrorCode::Schema, "nam");
        assert!(e.message().contains("fnt or gnt"), "{e}");
        assert_strict_ok(&del(&v, "/nam/fnt"));
        assert_strict_ok(&del(&v, "/nam/gnt"));
        assert_strict_ok(&del(&del(&del(&v, "/nam/fn"), "/nam/gn"), "/nam/gnt"));
        for field in ["fnt", "gnt"] {
            let ptr = format!("/nam/{field}");
            let path = format!("nam.{field}");
            for bad in ["Smith", "SMITH JONES", "SMITH-JONES", "ÇELIK", "SMITH<JONES\n"] {
                let e = assert_strict_err(&set(&v, &ptr, json!(bad)), ErrorCode::Schema, &path);
                assert!(!e.to_string().contains(bad.trim()), "personal data in message: {e}");
            }
            assert_strict_ok(&set(&v, &ptr, json!("A".repeat(80))));
            assert_strict_err(&set(&v, &ptr, json!("A".repeat(81))), ErrorCode::Schema, &path);
            assert_strict_err(&set(&v, &ptr, json!(["A"])), ErrorCode::Schema, &path);
            assert_strict_err(&set(&v, &ptr, json!(null)), ErrorCode::Schema, &path);
        }
        for field in ["fn", "gn"] {
            let ptr = format!("/nam/{field}");
            let path = format!("nam.{field}");
            assert_strict_ok(&set(&v, &ptr, json!("ễ".repeat(80))));
            assert_strict_err(&set(&v, &ptr, json!("ễ".repeat(81))), ErrorCode::Schema, &path);
            assert_strict_err(&set(&v, &ptr, json!(42)), ErrorCode::Schema, &path);
        }
        assert_strict_err(&set(&v, "/nam", json!("SMITH")), ErrorCode::Schema, "nam");
        // An empty transliteration passes the schema but names nobody.
        let empty = set(&del(&v, "/nam/gnt"), "/nam/fnt", json!(""));
        assert_strict_err(&empty, ErrorCode::Policy, "nam");
        check_schema(&empty, None).expect("schema allows an empty fnt");
        assert_strict_ok(&set(&v, "/nam/fnt", json!("")));
    }

    #[test]
    fn strings_are_nfc_normalised_before_length_checks() {
        let v = vaccination();
        // 80 characters once composed, 160 code points as sent (e + combining acute).
        let decomposed = "e\u{301}".repeat(80);
        let dcc = assert_strict_ok(&set(&v, "/nam/fn", json!(decomposed)));
        assert_eq!(dcc.nam.r#fn.as_deref(), Some("é".repeat(80).as_str()));
        // Vietnamese with stacked marks in the "wrong" order normalises too.
        let dcc = assert_strict_ok(&set(&v, "/nam/gn", json!("Nguye\u{302}\u{303}n Tra\u{302}\u{300}n")));
        assert_eq!(dcc.nam.gn.as_deref(), Some("Nguyễn Trần"));
        let dcc = assert_strict_ok(&set(&v, "/v/0/is", json!("Bo\u{323}\u{302} Y te\u{302}\u{301}")));
        match dcc.entry {
            crate::hcert::dcc::Entry::Vaccination(x) => assert_eq!(x.is, "Bộ Y tế"),
            other => panic!("{other:?}"),
        }
        // The verifier path counts what it is given.
        assert!(check_schema(&set(&v, "/nam/fn", json!("e\u{301}".repeat(80))), None).is_err());
    }

    // --- dob -------------------------------------------------------------------------------------

    #[test]
    fn dob_rules() {
        let v = vaccination();
        for ok in ["", "1900", "1964", "1964-01", "1964-01-31", "2000-02-29", "2025-06-01", "2025-06-02"] {
            assert_strict_ok(&set(&v, "/dob", json!(ok)));
        }
        for bad in [
            "1809-02-28",
            "2100-01-01",
            "1899",
            "19640101",
            "1964-1",
            "1964-01-1",
            "64-01-01",
            "1964/01/01",
            "1964-01-01T00:00:00Z",
            " 1964",
        ] {
            let e = assert_strict_err(&set(&v, "/dob", json!(bad)), ErrorCode::Schema, "dob");
            assert!(
                !e.to_string().contains(bad.trim()) || bad.trim().len() < 4,
                "personal data in message: {e}"
            );
            assert!(check_schema(&set(&v, "/dob", json!(bad)), None).is_err(), "{bad}");
        }
        // Real dates only when signing; the schema checks the pattern alone.
        for bad in ["1964-13", "1964-00", "1964-02-30", "2001-02-29", "1964-04-31", "1964-01-00"] {
            assert_strict_err(&set(&v, "/dob", json!(bad)), ErrorCode::Schema, "dob");
            check_schema(&set(&v, "/dob", json!(bad)), None).unwrap_or_else(|e| panic!("{bad}: {e}"));
        }
        // Not after "today" (2025-06-01 at UTC+14 is 2025-06-02), compared at the precision given.
        for future in ["2025-06-03", "2025-07", "2026"] {
            let e = assert_strict_err(&set(&v, "/dob", json!(future)), ErrorCode::Policy, "dob");
            assert_eq!(e.message(), "date of birth is in the future");
        }
        assert_strict_err(&set(&v, "/dob", json!(1964)), ErrorCode::Schema, "dob");
    }

    // --- vaccination -----------------------------------------------------------------------------

    #[test]
    fn vaccination_required_fields() {
        let v = vaccination();
        for key in ["tg", "vp", "mp", "ma", "dn", "sd", "dt", "co", "is"] {
            assert_strict_err(&del(&v, &format!("/v/0/{key}")), ErrorCode::Schema, &format!("v[0].{key}"));
        }
    }

    #[test]
    fn vaccination_codes_come_from_the_value_sets() {
        let v = vaccination();
        let e = assert_strict_err(&set(&v, "/v/0/mp", json!("X")), ErrorCode::ValueSet, "v[0].mp");
        assert_eq!(e.to_string(), "v[0].mp: unknown medicinal product \"X\"");
        assert_eq!(e.code(), "valueset");
        for (key, bad) in
            [("tg", "840539007"), ("vp", "J07BX99"), ("ma", "ORG-99999999"), ("co", "XY"), ("co", "UNHCR")]
        {
            assert_strict_err(
                &set(&v, &format!("/v/0/{key}"), json!(bad)),
                ErrorCode::ValueSet,
                &format!("v[0].{key}"),
            );
        }
        assert_strict_err(&set(&v, "/v/0/co", json!("nl")), ErrorCode::Schema, "v[0].co");
        assert_strict_err(&set(&v, "/v/0/tg", json!(840539006)), ErrorCode::Schema, "v[0].tg");
        // Codes are case-sensitive and not trimmed.
        assert_strict_err(&set(&v, "/v/0/mp", json!("eu/1/20/1507")), ErrorCode::ValueSet, "v[0].mp");
        assert_strict_err(&set(&v, "/v/0/mp", json!(" EU/1/20/1507")), ErrorCode::ValueSet, "v[0].mp");
        // A very long code is quoted in part only.
        let e =
            assert_strict_err(&set(&v, "/v/0/mp", json!("Z".repeat(500))), ErrorCode::ValueSet, "v[0].mp");
        assert!(e.to_string().len() < 120, "{e}");
    }

    #[test]
    fn inactive_codes_depend_on_the_policy() {
        let v = set(&vaccination(), "/v/0/vp", json!("J07BX03"));
        assert_strict_ok(&v);
        let strict_policy = policy().with_inactive_codes(false);
        let e = Dcc::from_json_value(&v, &strict_policy).expect_err("inactive refused");
        assert_eq!((e.code(), e.path()), ("valueset", "v[0].vp"));
        assert!(e.message().contains("no longer active"), "{e}");
    }

    #[test]
    fn dose_numbers() {
        let v = vaccination();
        for key in ["dn", "sd"] {
            let ptr = format!("/v/0/{key}");
            let path = format!("v[0].{key}");
            for bad in [json!(0), json!(-1), json!(1.5), json!("1"), json!(null), json!(true), json!(-0.0)] {
                assert_strict_err(&set(&v, &ptr, bad), ErrorCode::Schema, &path);
            }
            assert_strict_err(&set(&v, &ptr, json!(1u64 << 40)), ErrorCode::Policy, &path);
            let dcc = assert_strict_ok(&set(&v, &ptr, json!(1.0)));
            // Stored, and serialised, as an integer.
            assert!(serde_json::to_string(&dcc).expect("json").contains(&format!("\"{key}\":1")));
        }
        // Boosters beyond the series are valid (upstream examples "3 of 1", "4 of 1").
        assert_strict_ok(&set(&set(&v, "/v/0/dn", json!(4)), "/v/0/sd", json!(1)));
    }

    #[test]
    fn vaccination_date() {
        let v = vaccination();
        for bad in
            ["2021-06-31", "2021-02-29", "2021-6-11", "20210611", "2021-06-11T10:00:00Z", "", "2021-06-11 "]
        {
            let e = assert_strict_err(&set(&v, "/v/0/dt", json!(bad)), ErrorCode::Schema, "v[0].dt");
            assert_eq!(e.message(), "must be a date YYYY-MM-DD");
        }
        assert_strict_ok(&set(&v, "/v/0/dt", json!("2024-02-29")));
        assert_strict_ok(&set(&v, "/v/0/dt", json!("2025-06-02")));
        assert_strict_err(&set(&v, "/v/0/dt", json!("2025-06-03")), ErrorCode::Policy, "v[0].dt");
    }

    #[test]
    fn issuer_length() {
        let v = vaccination();
        assert_strict_ok(&set(&v, "/v/0/is", json!("Bộ Y tế ".repeat(10))));
        assert_strict_err(&set(&v, "/v/0/is", json!("x".repeat(81))), ErrorCode::Schema, "v[0].is");
    }

    #[test]
    fn uvci_rules() {
        let v = vaccination();
        // Missing: allowed when signing (the daemon assigns one), required by the schema.
        let dcc = assert_strict_ok(&del(&v, "/v/0/ci"));
        assert_eq!(dcc.uvci(), None);
        let e = check_schema(&del(&v, "/v/0/ci"), None).expect_err("schema requires ci");
        assert_eq!(e.path(), "v[0].ci");
        for bad in [
            "URN:UVCI:01:NL:DADFCC47C7334E45A906DB12FD859FB7#2",
            "urn:uvci:01:NL:ABC",
            "URN:UVCI:02:NL:ABC",
            "hello",
            "",
            "URN:UVCI:01:NL:AB CD",
        ] {
            let e = assert_strict_err(&set(&v, "/v/0/ci", json!(bad)), ErrorCode::Uvci, "v[0].ci");
            assert!(e.message().starts_with("not a valid UVCI"), "{e}");
        }
        let long = format!("URN:UVCI:01:NL:{}", "A".repeat(66));
        assert_strict_err(&set(&v, "/v/0/ci", json!(long)), ErrorCode::Schema, "v[0].ci");
        assert_strict_ok(&set(&v, "/v/0/ci", json!("01:NL:1312D00")));
        let vn = policy().with_uvci_country("VN").expect("VN");
        let e = Dcc::from_json_value(&v, &vn).expect_err("NL UVCI under a VN policy");
        assert_eq!((e.code(), e.path()), ("uvci", "v[0].ci"));
        assert!(policy().with_uvci_country("vn").is_err());
    }

    // --- test ------------------------------------------------------------------------------------

    #[test]
    fn test_entry_rules() {
        let t = test_rat();
        assert_strict_ok(&t);
        assert_strict_ok(&test_naat());
        for key in ["tg", "tt", "sc", "tr", "co", "is"] {
            assert_strict_err(&del(&t, &format!("/t/0/{key}")), ErrorCode::Schema, &format!("t[0].{key}"));
        }
        assert_strict_err(&set(&t, "/t/0/tt", json!("LP0000-0")), ErrorCode::ValueSet, "t[0].tt");
        assert_strict_err(&set(&t, "/t/0/tr", json!("260415001")), ErrorCode::ValueSet, "t[0].tr");
        let e = assert_strict_err(&set(&t, "/t/0/ma", json!("9999")), ErrorCode::ValueSet, "t[0].ma");
        assert_eq!(e.to_string(), "t[0].ma: unknown rapid antigen test device \"9999\"");
        assert_strict_err(&set(&t, "/t/0/ma", json!(532)), ErrorCode::Schema, "t[0].ma");
        assert_strict_err(&set(&t, "/t/0/co", json!("XY")), ErrorCode::ValueSet, "t[0].co");
        assert_strict_err(&set(&t, "/t/0/tc", json!("x".repeat(81))), ErrorCode::Schema, "t[0].tc");
        assert_strict_err(&set(&test_naat(), "/t/0/nm", json!("x".repeat(81))), ErrorCode::Schema, "t[0].nm");
        // A RAT needs its device code; a NAAT does not.
        assert_strict_err(&del(&t, "/t/0/ma"), ErrorCode::Policy, "t[0].ma");
        assert_strict_ok(&del(&test_naat(), "/t/0/nm"));
    }

    #[test]
    fn sample_collection_time() {
        let t = test_rat();
        for ok in [
            "2021-06-11T17:30:00Z",
            "2021-06-11T17:30:00+07:00",
            "2021-06-11T17:30:00.123-05:00",
            "2021-06-11t17:30:00z",
            "2016-12-31T23:59:60Z",
        ] {
            assert_strict_ok(&set(&t, "/t/0/sc", json!(ok)));
        }
        for bad in [
            "2021-06-11T17:30:00+02",
            "2021-06-11T17:30:00+0200",
            "2021-06-11T17:30:00",
            "2021-06-11T17:30Z",
            "2021-06-11 17:30:00Z",
            "2021-06-11T24:00:00Z",
            "2021-06-31T17:30:00Z",
            "2021-06-11T12:00:60Z",
            "2021-06-11T17:30:00.Z",
            "2021-06-11",
        ] {
            let e = assert_strict_err(&set(&t, "/t/0/sc", json!(bad)), ErrorCode::Schema, "t[0].sc");
            assert!(e.message().starts_with("must be an RFC 3339 date-time"), "{e}");
        }
        // Lenient on the verifier side, as the schema's own valid tests expect.
        for ok in ["2021-06-11T17:30:00+02", "2021-06-11T17:30:00+0200", "2021-06-11T17:30+02:00"] {
            check_schema(&set(&t, "/t/0/sc", json!(ok)), None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["2021-06-11T17:30:00", "2021-06-11 17:30:00Z", "yesterday", "2021-06-11T17:30:00+2"] {
            assert!(check_schema(&set(&t, "/t/0/sc", json!(bad)), None).is_err(), "{bad}");
        }
        // Not after the policy's clock (2025-06-01T12:00Z) beyond the allowed skew of 5 minutes.
        assert_strict_ok(&set(&t, "/t/0/sc", json!("2025-06-01T12:04:59Z")));
        assert_strict_ok(&set(&t, "/t/0/sc", json!("2025-06-01T19:04:59+07:00")));
        let e = assert_strict_err(
            &set(&t, "/t/0/sc", json!("2025-06-01T12:05:01Z")),
            ErrorCode::Policy,
            "t[0].sc",
        );
        assert_eq!(e.message(), "sample collection time is in the future");
        assert_strict_err(
            &set(&t, "/t/0/sc", json!("2025-06-01T20:00:00+07:00")),
            ErrorCode::Policy,
            "t[0].sc",
        );
        let lax = policy().with_clock_skew(time::Duration::hours(1));
        Dcc::from_json_value(&set(&t, "/t/0/sc", json!("2025-06-01T12:59:00Z")), &lax)
            .expect("within an hour");
    }

    // --- recovery --------------------------------------------------------------------------------

    #[test]
    fn recovery_rules() {
        let r = recovery();
        assert_strict_ok(&r);
        for key in ["tg", "fr", "co", "is", "df", "du"] {
            assert_strict_err(&del(&r, &format!("/r/0/{key}")), ErrorCode::Schema, &format!("r[0].{key}"));
        }
        for key in ["fr", "df", "du"] {
            assert_strict_err(
                &set(&r, &format!("/r/0/{key}"), json!("2021-02-30")),
                ErrorCode::Schema,
                &format!("r[0].{key}"),
            );
        }
        assert_strict_err(&set(&r, "/r/0/fr", json!("2025-06-03")), ErrorCode::Policy, "r[0].fr");
        let e = assert_strict_err(&set(&r, "/r/0/df", json!("2021-05-31")), ErrorCode::Policy, "r[0].df");
        assert!(e.message().contains("before the first positive test"), "{e}");
        assert_strict_err(&set(&r, "/r/0/du", json!("2021-06-11")), ErrorCode::Policy, "r[0].du");
        // Equal dates are fine; a validity ending in the future is normal.
        assert_strict_ok(&set(&set(&r, "/r/0/df", json!("2021-06-01")), "/r/0/du", json!("2021-06-01")));
        assert_strict_ok(&set(&r, "/r/0/du", json!("2026-01-01")));
        // The schema itself has no ordering rule.
        check_schema(&set(&r, "/r/0/du", json!("2021-06-11")), None).expect("schema: no ordering");
        assert_strict_err(&set(&r, "/r/0/co", json!("XY")), ErrorCode::ValueSet, "r[0].co");
    }

    // --- the verifier path -----------------------------------------------------------------------

    #[test]
    fn verifier_path_is_lenient_where_the_field_is() {
        // A 1.0.x-era vector: dt with a time, a test with dr, inactive codes.
        let v = set(
            &set(&vaccination(), "/v/0/dt", json!("2021-03-18T22:54:00+02:00")),
            "/v/0/vp",
            json!("J07BX03"),
        );
        check_schema(&v, Some(ValueSets::embedded())).expect("lenient");
        let opts = SchemaOptions { value_sets: None, formats: FormatMode::Rfc3339 };
        let errs = check_schema_report(&v, &opts);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path(), "v[0].dt");
        // Codes only with value sets.
        let bad_code = set(&vaccination(), "/v/0/ma", json!("ORG-99999999"));
        check_schema(&bad_code, None).expect("no value sets");
        let e = check_schema(&bad_code, Some(ValueSets::embedded())).expect_err("value sets");
        assert_eq!((e.code(), e.path()), ("valueset", "v[0].ma"));
    }

    #[test]
    fn report_lists_every_failure_in_schema_order() {
        let v = json!({
            "ver": 1,
            "nam": {"fn": 7, "gnt": "abc"},
            "dob": "18",
            "v": [{"tg": "840539006", "dn": 0, "sd": "2", "dt": "2021-13-01", "co": "nl", "is": "x", "ci": "c"}],
            "t": []
        });
        let errs = check_schema_report(&v, &SchemaOptions::default());
        let paths: Vec<&str> = errs.iter().map(PayloadError::path).collect();
        assert_eq!(
            paths,
            [
                "ver", "nam.fn", "nam.gnt", "dob", "t", "v[0].vp", "v[0].mp", "v[0].ma", "v[0].dn",
                "v[0].sd", "v[0].dt", "v[0].co", "t"
            ],
            "{errs:#?}"
        );
        assert!(errs.iter().all(|e| e.code() == "schema"));
    }

    #[test]
    fn never_panics_on_odd_input() {
        let odd = [
            "",
            " ",
            "null",
            "[]",
            "{}",
            "\"\"",
            "1e999",
            "-0",
            "{\"ver\":{}}",
            "{\"v\":[[]]}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"\",\"v\":[{\"dn\":1e308,\"sd\":-1e308}]}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"\",\"t\":[{\"sc\":\"2021-06-11T\"}]}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"\",\"t\":[{\"sc\":\"2021-06-11T17:\"}]}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"\",\"t\":[{\"sc\":\"2021-06-11T17:30:00.\"}]}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"1é\"}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"19é\"}",
            "{\"ver\":\"1.3.3\",\"nam\":{\"fnt\":\"A\"},\"dob\":\"19éé-01\"}",
            "{\"\\ud800\":1}",
            "{\"a\":\"\\u0000\"}",
        ];
        for s in odd {
            let _ = Dcc::from_json_str(s, &policy());
            if let Ok(v) = serde_json::from_str::<Value>(s) {
                let _ = check_schema(&v, Some(ValueSets::embedded()));
                let _ = check_schema_report(&v, &SchemaOptions::default());
            }
        }
        let deep = "[".repeat(10_000);
        let e = Dcc::from_json_str(&deep, &policy()).expect_err("deep");
        assert_eq!(e.code(), "json");
    }

    #[test]
    fn lenient_and_rfc3339_time_grammars() {
        let r = |s: &str| check_datetime_format(s, FormatMode::Rfc3339).is_some();
        let l = |s: &str| check_datetime_format(s, FormatMode::Lenient).is_some();
        assert!(r("2021-06-11T17:30:00Z") && l("2021-06-11T17:30:00Z"));
        assert!(!r("2021-06-11T17:30:00+02") && l("2021-06-11T17:30:00+02"));
        assert!(!r("2021-06-11T17:30:00+0200") && l("2021-06-11T17:30:00+0200"));
        assert!(!r("2021-06-11T17:30:00+02:0") && !l("2021-06-11T17:30:00+02:0"));
        assert!(!l("2021-06-11T17:30:00+24:00") && !r("2021-06-11T17:30:00+24:00"));
        assert!(r("2021-06-11T23:59:60Z") && r("2021-06-12T01:59:60+02:00") && !r("2021-06-11T23:58:60Z"));
        // Same instant, different spellings.
        assert_eq!(
            check_datetime_format("2021-06-11T17:30:00Z", FormatMode::Rfc3339),
            check_datetime_format("2021-06-12T00:30:00+07:00", FormatMode::Rfc3339)
        );
        assert_eq!(check_datetime_format("1970-01-01T00:00:00Z", FormatMode::Rfc3339), Some(0));
        assert_eq!(
            check_date_format("2021-06-11T22:54:00+02:00", FormatMode::Lenient),
            parse_full_date(b"2021-06-11")
        );
        assert_eq!(check_date_format("2021-06-11T22:54:00+02:00", FormatMode::Rfc3339), None);
    }

    #[test]
    fn calendar_helpers_round_trip() {
        for days in (-800_000..800_000).step_by(97) {
            assert_eq!(days_from_civil(civil_from_days(days)), days);
        }
        assert_eq!(days_from_civil(Ymd { year: 1970, month: 1, day: 1 }), 0);
        assert_eq!(days_from_civil(Ymd { year: 2000, month: 3, day: 1 }), 11_017);
        assert_eq!(latest_date_at(0), Ymd { year: 1970, month: 1, day: 1 });
        assert_eq!(latest_date_at(10 * 3600), Ymd { year: 1970, month: 1, day: 2 });
    }

    // --- cross-check with the official schema ----------------------------------------------------

    fn official_schema() -> jsonschema::Validator {
        let schema = read_json(&testdata().join("dcc-schema/DCC.combined-schema.json"));
        jsonschema::options().should_validate_formats(true).build(&schema).expect("schema compiles")
    }

    /// Hand-made variants of the examples: the official schema (via the `jsonschema` crate, with
    /// format assertion) and `check_schema` in RFC 3339 mode must agree on each.
    #[test]
    fn agrees_with_the_official_schema() {
        let schema = official_schema();
        let v = vaccination();
        let t = test_rat();
        let n = test_naat();
        let r = recovery();
        let s = |x: &str| json!(x);
        let mut cases: Vec<(String, Value)> = Vec::new();
        let mut add = |name: String, value: Value| cases.push((name, value));
        for (p, e) in examples() {
            add(p.display().to_string(), e);
        }
        for p in json_files(&testdata().join("dcc-schema/test")) {
            add(p.display().to_string(), read_json(&p));
        }
        for key in ["/ver", "/nam", "/dob", "/v", "/nam/fnt", "/nam/gnt", "/nam/fn", "/nam/gn"] {
            add(format!("v without {key}"), del(&v, key));
        }
        add("v without fnt and gnt".into(), del(&del(&v, "/nam/fnt"), "/nam/gnt"));
        for key in ["tg", "vp", "mp", "ma", "dn", "sd", "dt", "co", "is", "ci"] {
            add(format!("v without {key}"), del(&v, &format!("/v/0/{key}")));
        }
        for key in ["tg", "tt", "nm", "ma", "sc", "tr", "tc", "co", "is", "ci"] {
            add(format!("t without {key}"), del(&t, &format!("/t/0/{key}")));
        }
        for key in ["tg", "fr", "co", "is", "df", "du", "ci"] {
            add(format!("r without {key}"), del(&r, &format!("/r/0/{key}")));
        }
        let variants: Vec<(&Value, &str, Value)> = vec![
            (&v, "/ver", s("1.3.3")),
            (&v, "/ver", s("1.3")),
            (&v, "/ver", s("a.b.c")),
            (&v, "/ver", s("1x3x3")),
            (&v, "/ver", s("11111")),
            (&v, "/ver", s("1.3.3.4")),
            (&v, "/ver", s("")),
            (&v, "/ver", json!(1)),
            (&v, "/dob", s("")),
            (&v, "/dob", s("1964")),
            (&v, "/dob", s("1964-01")),
            (&v, "/dob", s("1964-13-45")),
            (&v, "/dob", s("1899")),
            (&v, "/dob", s("2100")),
            (&v, "/dob", s("19640101")),
            (&v, "/dob", s("1964-1")),
            (&v, "/dob", json!(1964)),
            (&v, "/dob", s("1964-01-01-01")),
            (&v, "/dob", s("2099-99-99")),
            (&v, "/nam/fnt", s("")),
            (&v, "/nam/fnt", s("ABC<DEF")),
            (&v, "/nam/fnt", s("abc")),
            (&v, "/nam/fnt", s("ÄB")),
            (&v, "/nam/fnt", s(&"A".repeat(80))),
            (&v, "/nam/fnt", s(&"A".repeat(81))),
            (&v, "/nam/gnt", s("A B")),
            (&v, "/nam/fn", s(&"x".repeat(80))),
            (&v, "/nam/fn", s(&"x".repeat(81))),
            (&v, "/nam/fn", s(&"é".repeat(80))),
            (&v, "/nam/fn", s(&"é".repeat(81))),
            (&v, "/nam/gn", json!(null)),
            (&v, "/nam", s("SMITH")),
            (&v, "/nam", json!({})),
            (&v, "/nam/extra", s("x")),
            (&v, "/v", json!([])),
            (&v, "/v", json!({})),
            (&v, "/v", s("x")),
            (&v, "/v", json!([v["v"][0], v["v"][0]])),
            (&v, "/v/0", s("x")),
            (&v, "/t", t["t"].clone()),
            (&v, "/r", json!([])),
            (&v, "/v/0/dn", json!(0)),
            (&v, "/v/0/dn", json!(1)),
            (&v, "/v/0/dn", json!(-1)),
            (&v, "/v/0/dn", json!(1.0)),
            (&v, "/v/0/dn", json!(1.5)),
            (&v, "/v/0/dn", s("1")),
            (&v, "/v/0/dn", json!(null)),
            (&v, "/v/0/sd", json!(1000)),
            (&v, "/v/0/sd", json!(1u64 << 40)),
            (&v, "/v/0/dt", s("2021-02-29")),
            (&v, "/v/0/dt", s("2020-02-29")),
            (&v, "/v/0/dt", s("2021-13-01")),
            (&v, "/v/0/dt", s("2021-06-11T00:00:00Z")),
            (&v, "/v/0/dt", s("20210611")),
            (&v, "/v/0/dt", s("2100-02-29")),
            (&v, "/v/0/dt", s("2000-02-29")),
            (&v, "/v/0/co", s("nl")),
            (&v, "/v/0/co", s("1NL")),
            (&v, "/v/0/co", s("xNLx")),
            (&v, "/v/0/co", s("")),
            (&v, "/v/0/co", s("XY")),
            (&v, "/v/0/co", s("ABCDEFGHIJKLM")),
            (&v, "/v/0/is", s(&"x".repeat(80))),
            (&v, "/v/0/is", s(&"x".repeat(81))),
            (&v, "/v/0/ci", s(&"x".repeat(80))),
            (&v, "/v/0/ci", s(&"x".repeat(81))),
            (&v, "/v/0/ci", s("anything")),
            (&v, "/v/0/tg", json!(1)),
            (&v, "/v/0/mp", s("not a product")),
            (&v, "/v/0/xx", json!(1)),
            (&v, "/foo", json!(1)),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00Z")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00+02:00")),
            (&t, "/t/0/sc", s("2021-06-11t17:30:00z")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00.123Z")),
            (&t, "/t/0/sc", s("2021-06-11T17:30Z")),
            (&t, "/t/0/sc", s("2021-06-11 17:30:00Z")),
            (&t, "/t/0/sc", s("2021-06-11T25:00:00Z")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00+0200")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00+02")),
            (&t, "/t/0/sc", s("2021-06-11T23:59:60Z")),
            (&t, "/t/0/sc", s("2021-06-11T12:59:60Z")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00-23:59")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00+24:00")),
            (&t, "/t/0/sc", s("2021-06-11T17:30:00.Z")),
            (&t, "/t/0/sc", s("2021-02-29T17:30:00Z")),
            (&t, "/t/0/sc", s("2021-06-11")),
            (&t, "/t/0/sc", json!(1623432600)),
            (&t, "/t/0/ma", json!(532)),
            (&t, "/t/0/ma", s("9999")),
            (&t, "/t/0/tc", s(&"x".repeat(81))),
            (&t, "/t/0/dr", s("2021-06-11T18:00:00Z")),
            (&n, "/t/0/nm", s(&"x".repeat(81))),
            (&n, "/t/0/nm", s(&"x".repeat(80))),
            (&n, "/t/0", json!({})),
            (&r, "/r/0/df", s("2021-02-30")),
            (&r, "/r/0/du", s("2021-6-1")),
            (&r, "/r/0/fr", s("")),
            (&r, "/r/0/co", s("UNHCR")),
            (&r, "/r/0/du", s("2020-01-01")),
        ];
        for (base, ptr, val) in variants {
            add(format!("{ptr} = {val}"), set(base, ptr, val));
        }
        add("array root".into(), json!([v.clone()]));
        add("string root".into(), s("HC1:"));
        add("empty object".into(), json!({}));
        let opts = SchemaOptions { value_sets: None, formats: FormatMode::Rfc3339 };
        let mut disagreements = Vec::new();
        let (mut valid, mut invalid) = (0, 0);
        for (name, value) in &cases {
            let official = schema.is_valid(value);
            let ours = check_schema_report(value, &opts);
            if official != ours.is_empty() {
                disagreements.push(format!("{name}: official {official}, ours {ours:?}"));
            }
            if official { valid += 1 } else { invalid += 1 }
        }
        assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
        assert!(valid >= 40 && invalid >= 60, "{valid} valid, {invalid} invalid");
    }

    /// Not a test of speed (timings are not asserted): run with
    /// `cargo test --release --lib hcert::validate::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let p = policy();
        let vietnamese = set(
            &set(&set(&vaccination(), "/nam/fn", json!("Nguyễn")), "/nam/gn", json!("Thị Minh Khai")),
            "/v/0/is",
            json!("Bộ Y tế"),
        );
        for (name, v) in [
            ("vaccination", vaccination()),
            ("vaccination, Vietnamese names", vietnamese),
            ("test", test_rat()),
            ("recovery", recovery()),
        ] {
            let text = v.to_string();
            let n = 200_000;
            for _ in 0..10_000 {
                std::hint::black_box(Dcc::from_json_str(std::hint::black_box(&text), &p).is_ok());
            }
            let t0 = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(Dcc::from_json_str(std::hint::black_box(&text), &p).is_ok());
            }
            let per = t0.elapsed() / n;
            let dcc = Dcc::from_json_str(&text, &p).expect("valid");
            let t0 = std::time::Instant::now();
            let mut buf = Vec::with_capacity(512);
            for _ in 0..n {
                buf.clear();
                ciborium::into_writer(std::hint::black_box(&dcc), &mut buf).expect("cbor");
            }
            let cbor = t0.elapsed() / n;
            println!(
                "{name}: {} bytes JSON, parse+validate {per:?}, CBOR {cbor:?} ({} bytes)",
                text.len(),
                buf.len()
            );
        }
    }
}
