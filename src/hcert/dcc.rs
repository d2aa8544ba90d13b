//! The DCC payload (schema 1.3.x) as Rust types: built only from validated input, and serialised
//! deterministically because its CBOR is what gets signed.
//!
//! Serialisation (serde, used with `ciborium` for the CWT and `serde_json` for JSON) gives the
//! schema's shape exactly: keys `ver`, `nam`, `dob` and then the one group `v`, `t` or `r` (an
//! array of one entry); inside, the keys in schema order with optional fields left out when
//! absent; `dn`/`sd` as integers; no other keys. A [`Dcc`] without a UVCI refuses to serialise,
//! so a certificate can never be signed without its `ci`.
//!
//! Untrusted JSON enters through [`Dcc::from_json_str`] / [`Dcc::from_json_value`], which apply
//! the signing-mode rules of [`validate`] with a [`Policy`]. There is
//! deliberately no `Deserialize`: it would bypass those rules.

use std::borrow::Cow;

use serde::ser::{Error as _, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::hcert::uvci::{Uvci, UvciError, UvciGenerator};
use crate::hcert::validate::{self, ErrorCode, Json, Num, PayloadError, Policy};

pub use crate::hcert::certificate_type::CertificateType;

/// A Digital COVID Certificate payload: the value under CWT claim `-260` → `1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dcc {
    /// `ver`: the schema version, `1.3.x`.
    pub ver: String,
    /// `nam`: the holder's name.
    pub nam: PersonName,
    /// `dob`: date of birth, `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or empty.
    pub dob: String,
    /// The one vaccination, test or recovery entry.
    pub entry: Entry,
}

/// The single entry of a DCC; the variant decides the group key (`v`, `t`, `r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `v[0]`.
    Vaccination(Vaccination),
    /// `t[0]`.
    Test(Test),
    /// `r[0]`.
    Recovery(Recovery),
}

/// `nam`: at least one of `fnt` and `gnt` is present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PersonName {
    /// `fn`: surname(s) as written, at most 80 characters.
    #[serde(rename = "fn", skip_serializing_if = "Option::is_none")]
    pub r#fn: Option<String>,
    /// `fnt`: surname(s) transliterated per ICAO 9303 (`A–Z` and `<`), at most 80.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fnt: Option<String>,
    /// `gn`: forename(s) as written, at most 80 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gn: Option<String>,
    /// `gnt`: forename(s) transliterated per ICAO 9303, at most 80.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gnt: Option<String>,
}

/// `v[0]`: a vaccination (all fields required by the schema).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vaccination {
    /// `tg`: disease or agent targeted.
    pub tg: String,
    /// `vp`: vaccine or prophylaxis.
    pub vp: String,
    /// `mp`: medicinal product.
    pub mp: String,
    /// `ma`: marketing authorisation holder or manufacturer.
    pub ma: String,
    /// `dn`: number of this dose (≥ 1; may exceed `sd` for boosters).
    pub dn: u32,
    /// `sd`: doses in the series (≥ 1).
    pub sd: u32,
    /// `dt`: date of vaccination, `YYYY-MM-DD`.
    pub dt: String,
    /// `co`: country of vaccination.
    pub co: String,
    /// `is`: certificate issuer, at most 80 characters.
    pub is: String,
    /// `ci`: the UVCI; `None` until the daemon assigns one.
    #[serde(serialize_with = "serialize_ci")]
    pub ci: Option<String>,
}

/// `t[0]`: a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Test {
    /// `tg`: disease or agent targeted.
    pub tg: String,
    /// `tt`: type of test.
    pub tt: String,
    /// `nm`: NAA test name, at most 80 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nm: Option<String>,
    /// `ma`: rapid antigen test device (required for a RAT by the signing policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ma: Option<String>,
    /// `sc`: sample collection, RFC 3339 date-time.
    pub sc: String,
    /// `tr`: test result.
    pub tr: String,
    /// `tc`: testing centre, at most 80 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc: Option<String>,
    /// `co`: country of the test.
    pub co: String,
    /// `is`: certificate issuer, at most 80 characters.
    pub is: String,
    /// `ci`: the UVCI; `None` until the daemon assigns one.
    #[serde(serialize_with = "serialize_ci")]
    pub ci: Option<String>,
}

/// `r[0]`: a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// `tg`: disease or agent targeted.
    pub tg: String,
    /// `fr`: date of the first positive NAA test, `YYYY-MM-DD`.
    pub fr: String,
    /// `co`: country of the test.
    pub co: String,
    /// `is`: certificate issuer, at most 80 characters.
    pub is: String,
    /// `df`: certificate valid from, `YYYY-MM-DD`.
    pub df: String,
    /// `du`: certificate valid until, `YYYY-MM-DD`.
    pub du: String,
    /// `ci`: the UVCI; `None` until the daemon assigns one.
    #[serde(serialize_with = "serialize_ci")]
    pub ci: Option<String>,
}

fn serialize_ci<S: Serializer>(ci: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match ci {
        Some(ci) => s.serialize_str(ci),
        None => Err(S::Error::custom("the DCC has no UVCI (ci): assign one before encoding")),
    }
}

impl Serialize for Dcc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Dcc", 4)?;
        st.serialize_field("ver", &self.ver)?;
        st.serialize_field("nam", &self.nam)?;
        st.serialize_field("dob", &self.dob)?;
        match &self.entry {
            Entry::Vaccination(v) => st.serialize_field("v", std::slice::from_ref(v))?,
            Entry::Test(t) => st.serialize_field("t", std::slice::from_ref(t))?,
            Entry::Recovery(r) => st.serialize_field("r", std::slice::from_ref(r))?,
        }
        st.end()
    }
}

impl Dcc {
    /// Parses and validates one issuer record (signing mode, see
    /// [`validate`]): NFC-normalises every string, refuses unknown and
    /// duplicate fields, applies schema 1.3.x, the value sets, the UVCI rules and `policy`, and
    /// returns the first failure. `ci` may be absent (assign one with
    /// [`ensure_uvci`](Self::ensure_uvci)). Never panics.
    pub fn from_json_str(s: &str, policy: &Policy) -> Result<Dcc, PayloadError> {
        let mut tree = validate::parse_json(s)?;
        validate::normalize_nfc(&mut tree);
        validate::check_strict(&tree, policy)?;
        build(tree)
    }

    /// Like [`from_json_str`](Self::from_json_str) for a record the caller already parsed
    /// (e.g. the `dcc` member of a batch request).
    pub fn from_json_value(value: &serde_json::Value, policy: &Policy) -> Result<Dcc, PayloadError> {
        let mut tree = Json::from_value(value);
        validate::normalize_nfc(&mut tree);
        validate::check_strict(&tree, policy)?;
        build(tree)
    }

    /// Re-checks this value against the signing-mode rules (for values built or changed in
    /// code; [`from_json_str`](Self::from_json_str) has already done it for parsed ones).
    pub fn validate(&self, policy: &Policy) -> Result<(), PayloadError> {
        let mut tree = self.to_tree();
        validate::normalize_nfc(&mut tree);
        if tree != self.to_tree() {
            return Err(PayloadError::new(ErrorCode::Policy, "", "a string is not NFC-normalised"));
        }
        validate::check_strict(&tree, policy)
    }

    /// Which kind of certificate this is.
    pub fn kind(&self) -> CertificateType {
        match self.entry {
            Entry::Vaccination(_) => CertificateType::Vaccination,
            Entry::Test(_) => CertificateType::Test,
            Entry::Recovery(_) => CertificateType::Recovery,
        }
    }

    /// The entry's UVCI (`ci`), if it has one yet.
    pub fn uvci(&self) -> Option<&str> {
        match &self.entry {
            Entry::Vaccination(v) => v.ci.as_deref(),
            Entry::Test(t) => t.ci.as_deref(),
            Entry::Recovery(r) => r.ci.as_deref(),
        }
    }

    fn ci_mut(&mut self) -> &mut Option<String> {
        match &mut self.entry {
            Entry::Vaccination(v) => &mut v.ci,
            Entry::Test(t) => &mut t.ci,
            Entry::Recovery(r) => &mut r.ci,
        }
    }

    /// Sets (or replaces) the entry's UVCI.
    pub fn set_uvci(&mut self, uvci: Uvci) {
        *self.ci_mut() = Some(uvci.into_string());
    }

    /// Gives the entry a fresh UVCI from `generator` unless it has one, and returns the UVCI.
    pub fn ensure_uvci(&mut self, generator: &UvciGenerator) -> Result<&str, UvciError> {
        if self.uvci().is_none() {
            let fresh = generator.generate()?;
            self.set_uvci(fresh);
        }
        Ok(self.uvci().unwrap_or_default())
    }

    /// A borrowed JSON tree of this value (a missing `ci` is left out).
    fn to_tree(&self) -> Json<'_> {
        fn s(v: &str) -> Json<'_> {
            Json::Str(Cow::Borrowed(v))
        }
        fn obj<'a>(fields: impl IntoIterator<Item = (&'static str, Option<Json<'a>>)>) -> Json<'a> {
            Json::Obj(fields.into_iter().filter_map(|(k, v)| v.map(|v| (Cow::Borrowed(k), v))).collect())
        }
        fn o(v: &Option<String>) -> Option<Json<'_>> {
            v.as_deref().map(s)
        }
        let n = |v: u32| Some(Json::Num(Num::U(u64::from(v))));
        let nam = obj([
            ("fn", o(&self.nam.r#fn)),
            ("fnt", o(&self.nam.fnt)),
            ("gn", o(&self.nam.gn)),
            ("gnt", o(&self.nam.gnt)),
        ]);
        let (key, entry) = match &self.entry {
            Entry::Vaccination(v) => (
                "v",
                obj([
                    ("tg", Some(s(&v.tg))),
                    ("vp", Some(s(&v.vp))),
                    ("mp", Some(s(&v.mp))),
                    ("ma", Some(s(&v.ma))),
                    ("dn", n(v.dn)),
                    ("sd", n(v.sd)),
                    ("dt", Some(s(&v.dt))),
                    ("co", Some(s(&v.co))),
                    ("is", Some(s(&v.is))),
                    ("ci", o(&v.ci)),
                ]),
            ),
            Entry::Test(t) => (
                "t",
                obj([
                    ("tg", Some(s(&t.tg))),
                    ("tt", Some(s(&t.tt))),
                    ("nm", o(&t.nm)),
                    ("ma", o(&t.ma)),
                    ("sc", Some(s(&t.sc))),
                    ("tr", Some(s(&t.tr))),
                    ("tc", o(&t.tc)),
                    ("co", Some(s(&t.co))),
                    ("is", Some(s(&t.is))),
                    ("ci", o(&t.ci)),
                ]),
            ),
            Entry::Recovery(r) => (
                "r",
                obj([
                    ("tg", Some(s(&r.tg))),
                    ("fr", Some(s(&r.fr))),
                    ("co", Some(s(&r.co))),
                    ("is", Some(s(&r.is))),
                    ("df", Some(s(&r.df))),
                    ("du", Some(s(&r.du))),
                    ("ci", o(&r.ci)),
                ]),
            ),
        };
        obj([
            ("ver", Some(s(&self.ver))),
            ("nam", Some(nam)),
            ("dob", Some(s(&self.dob))),
            (key, Some(Json::Arr(vec![entry]))),
        ])
    }
}

/// The fields of one validated JSON object, taken out one by one.
struct Fields<'a> {
    entries: Vec<(Cow<'a, str>, Json<'a>)>,
    path: &'static str,
}

impl<'a> Fields<'a> {
    fn new(v: Json<'a>, path: &'static str) -> Result<Self, PayloadError> {
        match v {
            Json::Obj(entries) => Ok(Fields { entries, path }),
            _ => Err(shape_error(path, "")),
        }
    }

    fn take(&mut self, key: &str) -> Option<Json<'a>> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.swap_remove(i).1)
    }

    fn opt_str(&mut self, key: &str) -> Result<Option<String>, PayloadError> {
        match self.take(key) {
            None => Ok(None),
            Some(Json::Str(s)) => Ok(Some(s.into_owned())),
            Some(_) => Err(shape_error(self.path, key)),
        }
    }

    fn str(&mut self, key: &str) -> Result<String, PayloadError> {
        self.opt_str(key)?.ok_or_else(|| shape_error(self.path, key))
    }

    fn dose(&mut self, key: &str) -> Result<u32, PayloadError> {
        match self.take(key) {
            Some(Json::Num(n)) => validate::dose_value(&n).ok_or_else(|| shape_error(self.path, key)),
            _ => Err(shape_error(self.path, key)),
        }
    }

    fn entry(mut self, key: &str) -> Result<Json<'a>, PayloadError> {
        match self.take(key) {
            Some(Json::Arr(mut items)) if items.len() == 1 => items.pop().ok_or_else(|| shape_error(key, "")),
            _ => Err(shape_error(key, "")),
        }
    }
}

/// A validated tree did not have the shape validation guarantees: a bug, reported as an error
/// rather than a panic.
fn shape_error(path: &str, key: &str) -> PayloadError {
    let sep = if path.is_empty() || key.is_empty() { "" } else { "." };
    PayloadError::new(
        ErrorCode::Schema,
        format!("{path}{sep}{key}"),
        "internal error: unexpected shape after validation",
    )
}

/// Moves the strings of a validated tree into a [`Dcc`].
fn build(tree: Json<'_>) -> Result<Dcc, PayloadError> {
    let mut root = Fields::new(tree, "")?;
    let ver = root.str("ver")?;
    let dob = root.str("dob")?;
    let mut nam = Fields::new(root.take("nam").ok_or_else(|| shape_error("", "nam"))?, "nam")?;
    let nam = PersonName {
        r#fn: nam.opt_str("fn")?,
        fnt: nam.opt_str("fnt")?,
        gn: nam.opt_str("gn")?,
        gnt: nam.opt_str("gnt")?,
    };
    let entry = if root.entries.iter().any(|(k, _)| k == "v") {
        let mut v = Fields::new(root.entry("v")?, "v[0]")?;
        Entry::Vaccination(Vaccination {
            tg: v.str("tg")?,
            vp: v.str("vp")?,
            mp: v.str("mp")?,
            ma: v.str("ma")?,
            dn: v.dose("dn")?,
            sd: v.dose("sd")?,
            dt: v.str("dt")?,
            co: v.str("co")?,
            is: v.str("is")?,
            ci: v.opt_str("ci")?,
        })
    } else if root.entries.iter().any(|(k, _)| k == "t") {
        let mut t = Fields::new(root.entry("t")?, "t[0]")?;
        Entry::Test(Test {
            tg: t.str("tg")?,
            tt: t.str("tt")?,
            nm: t.opt_str("nm")?,
            ma: t.opt_str("ma")?,
            sc: t.str("sc")?,
            tr: t.str("tr")?,
            tc: t.opt_str("tc")?,
            co: t.str("co")?,
            is: t.str("is")?,
            ci: t.opt_str("ci")?,
        })
    } else {
        let mut r = Fields::new(root.entry("r")?, "r[0]")?;
        Entry::Recovery(Recovery {
            tg: r.str("tg")?,
            fr: r.str("fr")?,
            co: r.str("co")?,
            is: r.str("is")?,
            df: r.str("df")?,
            du: r.str("du")?,
            ci: r.opt_str("ci")?,
        })
    };
    Ok(Dcc { ver, nam, dob, entry })
}

/// Property-test strategies producing valid [`Dcc`] values of all three kinds, for this crate's
/// tests and other modules' (enable the `test-support` feature outside `cfg(test)`).
///
/// Every value is valid under [`policy()`](arbitrary::policy): names are NFC and within their
/// limits (Vietnamese and other diacritics, some built from decomposed input), codes are active
/// codes of the embedded value sets, dates are real and ordered (`fr ≤ df ≤ du`), a RAT carries
/// its device code, and `ci` is a valid UVCI with its check character.
#[cfg(any(test, feature = "test-support"))]
pub mod arbitrary {
    use proptest::prelude::*;
    use proptest::sample::select;
    use unicode_normalization::UnicodeNormalization;

    use super::{Dcc, Entry, PersonName, Recovery, Test, Vaccination};
    use crate::hcert::uvci;
    use crate::hcert::validate::{Policy, RAPID_ANTIGEN_TEST, Ymd, civil_from_days, days_from_civil};
    use crate::hcert::valuesets::{ValueSetId, ValueSets};

    /// No generated `dob`, `dt`, `sc` or `fr` lies after this date.
    pub const LATEST_DATE: &str = "2024-12-31";

    /// A policy under which every generated value is valid: the embedded value sets, the clock
    /// at 2025-06-01T00:00:00Z.
    pub fn policy() -> Policy {
        Policy::new(ValueSets::embedded_shared(), time::macros::datetime!(2025-06-01 0:00 UTC))
    }

    /// Name parts; some decomposed (NFD) on purpose, the strategies normalise them.
    const NAME_PARTS: &[&str] = &[
        "Nguyễn",
        "Trần",
        "Lê",
        "Phạm",
        "Hoàng",
        "Huỳnh",
        "Phan",
        "Vũ",
        "Võ",
        "Đặng",
        "Bùi",
        "Đỗ",
        "Hồ",
        "Ngô",
        "Dương",
        "Lý",
        "Văn",
        "Thị",
        "Hữu",
        "Đức",
        "Minh",
        "Anh",
        "Thu",
        "Hương",
        "Quốc",
        "Bảo",
        "Ngọc",
        "Thảo",
        "Mỹ",
        "Tuấn",
        "d'Červenková",
        "Panklová",
        "Jiřina-Maria",
        "O'Brien",
        "Müller",
        "Ødegård",
        "Łukasz",
        "Nguye\u{302}\u{303}n",
        "Tra\u{300}n",
        "Ho\u{31b}\u{300}ng",
    ];

    const ISSUERS: &[&str] = &[
        "Bộ Y tế",
        "Ministry of Health of Viet Nam",
        "Sở Y tế Thành phố Hồ Chí Minh",
        "Trung tâm Kiểm soát Bệnh tật Hà Nội",
    ];

    fn active_codes(id: ValueSetId) -> Vec<String> {
        ValueSets::embedded().get(id).iter().filter(|c| c.active).map(|c| c.code.to_owned()).collect()
    }

    fn code(id: ValueSetId) -> impl Strategy<Value = String> {
        select(active_codes(id))
    }

    fn day_number(from: Ymd, to: Ymd) -> impl Strategy<Value = i64> {
        days_from_civil(from)..=days_from_civil(to)
    }

    fn ymd(year: i64, month: u8, day: u8) -> Ymd {
        Ymd { year, month, day }
    }

    fn format_date(days: i64) -> String {
        let d = civil_from_days(days);
        format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
    }

    /// A date between 2020-12-01 and [`LATEST_DATE`].
    pub fn recent_date() -> impl Strategy<Value = String> {
        day_number(ymd(2020, 12, 1), ymd(2024, 12, 31)).prop_map(format_date)
    }

    /// A free-text name (`fn`/`gn`): NFC, 1 to 4 parts, at most 80 characters.
    pub fn free_name() -> impl Strategy<Value = String> {
        prop::collection::vec(select(NAME_PARTS), 1..=4).prop_map(|parts| parts.join(" ").nfc().collect())
    }

    /// A transliterated name (`fnt`/`gnt`).
    pub fn transliterated() -> impl Strategy<Value = String> {
        "[A-Z][A-Z<]{0,79}"
    }

    /// `nam` with `fnt`, `gnt` or both.
    pub fn person_name() -> impl Strategy<Value = PersonName> {
        (
            prop::option::of(free_name()),
            transliterated(),
            prop::option::of(free_name()),
            transliterated(),
            0..3u8,
        )
            .prop_map(|(family, fnt, given, gnt, which)| PersonName {
                r#fn: family,
                fnt: (which != 2).then_some(fnt),
                gn: given,
                gnt: (which != 1).then_some(gnt),
            })
    }

    /// `dob` in each of its shapes, including empty.
    pub fn dob() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            (1900..=2024i64).prop_map(|y| format!("{y:04}")),
            (1900..=2024i64, 1..=12u8).prop_map(|(y, m)| format!("{y:04}-{m:02}")),
            day_number(ymd(1900, 1, 1), ymd(2024, 12, 31)).prop_map(format_date),
        ]
    }

    /// A valid UVCI for Vietnam with its check character.
    pub fn uvci() -> impl Strategy<Value = String> {
        "[A-Z0-9]{10,40}".prop_map(|opaque| {
            let body = format!("{}{}:VN:{opaque}", uvci::PREFIX, uvci::VERSION);
            // The body is A-Z 0-9 and ':' only, so a check character always exists.
            let check = uvci::check_character(&body).unwrap_or('0');
            format!("{body}#{check}")
        })
    }

    fn issuer() -> impl Strategy<Value = String> {
        prop_oneof![select(ISSUERS).prop_map(str::to_owned), "[A-Za-z0-9 ,.()-]{1,80}"]
    }

    fn free_text() -> impl Strategy<Value = String> {
        prop_oneof![select(ISSUERS).prop_map(str::to_owned), "[A-Za-z0-9 ,.()-]{1,80}", free_name(),]
    }

    fn ver() -> impl Strategy<Value = String> {
        select(&["1.3.0", "1.3.1", "1.3.2", "1.3.3"][..]).prop_map(str::to_owned)
    }

    fn wrap(entry: impl Strategy<Value = Entry>) -> impl Strategy<Value = Dcc> {
        (ver(), person_name(), dob(), entry).prop_map(|(ver, nam, dob, entry)| Dcc { ver, nam, dob, entry })
    }

    /// A vaccination certificate.
    pub fn vaccination_dcc() -> impl Strategy<Value = Dcc> {
        let entry = (
            code(ValueSetId::DiseaseAgentTargeted),
            code(ValueSetId::VaccineProphylaxis),
            code(ValueSetId::VaccineMedicinalProduct),
            code(ValueSetId::VaccineMahManf),
            1..=9u32,
            1..=9u32,
            recent_date(),
            code(ValueSetId::CountryCodes),
            issuer(),
            uvci(),
        )
            .prop_map(|(tg, vp, mp, ma, dn, sd, dt, co, is, ci)| {
                Entry::Vaccination(Vaccination { tg, vp, mp, ma, dn, sd, dt, co, is, ci: Some(ci) })
            });
        wrap(entry)
    }

    /// A test certificate (NAAT or RAT; a RAT always has its device code `ma`).
    pub fn test_dcc() -> impl Strategy<Value = Dcc> {
        let sc = (
            day_number(ymd(2020, 12, 1), ymd(2024, 12, 30)),
            0..86_400u32,
            select(&["Z", "+07:00", "+00:00", "-05:00", "+05:30"][..]),
            prop::bool::ANY,
        )
            .prop_map(|(day, secs, zone, frac)| {
                let frac = if frac { ".123" } else { "" };
                format!(
                    "{}T{:02}:{:02}:{:02}{frac}{zone}",
                    format_date(day),
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60
                )
            });
        let entry = (
            code(ValueSetId::DiseaseAgentTargeted),
            code(ValueSetId::TestType),
            prop::option::of(free_text()),
            code(ValueSetId::TestManf),
            sc,
            code(ValueSetId::TestResult),
            prop::option::of(free_text()),
            code(ValueSetId::CountryCodes),
            issuer(),
            uvci(),
        )
            .prop_map(|(tg, tt, nm, device, sc, tr, tc, co, is, ci)| {
                let rat = tt == RAPID_ANTIGEN_TEST;
                Entry::Test(Test {
                    tg,
                    tt,
                    nm: if rat { None } else { nm },
                    ma: rat.then_some(device),
                    sc,
                    tr,
                    tc,
                    co,
                    is,
                    ci: Some(ci),
                })
            });
        wrap(entry)
    }

    /// A recovery certificate with `fr ≤ df ≤ du`.
    pub fn recovery_dcc() -> impl Strategy<Value = Dcc> {
        let entry = (
            code(ValueSetId::DiseaseAgentTargeted),
            day_number(ymd(2020, 12, 1), ymd(2024, 12, 31)),
            0..=30i64,
            0..=180i64,
            code(ValueSetId::CountryCodes),
            issuer(),
            uvci(),
        )
            .prop_map(|(tg, fr, from, until, co, is, ci)| {
                Entry::Recovery(Recovery {
                    tg,
                    fr: format_date(fr),
                    co,
                    is,
                    df: format_date(fr + from),
                    du: format_date(fr + from + until),
                    ci: Some(ci),
                })
            });
        wrap(entry)
    }

    /// A certificate of any kind.
    pub fn dcc() -> impl Strategy<Value = Dcc> {
        prop_oneof![vaccination_dcc(), test_dcc(), recovery_dcc()]
    }
}

#[cfg(test)]
mod tests {
    use super::arbitrary;
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::sync::OnceLock;

    fn example(name: &str) -> Value {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/dcc-schema/examples").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The generator's policy with the schema examples' RAT device added.
    fn policy() -> Policy {
        Policy::new(crate::hcert::valuesets::tests::with_example_rat(), arbitrary::policy().now())
    }

    fn parse(v: &Value) -> Dcc {
        Dcc::from_json_value(v, &policy()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cbor(dcc: &Dcc) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(dcc, &mut out).expect("cbor");
        out
    }

    #[test]
    fn kind_and_group_key() {
        for (file, kind, key) in [
            ("vaccination/simple.json", CertificateType::Vaccination, "v"),
            ("test/simple-rat.json", CertificateType::Test, "t"),
            ("recovery/simple.json", CertificateType::Recovery, "r"),
        ] {
            let dcc = parse(&example(file));
            assert_eq!(dcc.kind(), kind);
            assert_eq!(kind.group_key(), key);
            assert_eq!(dcc.uvci(), Some("URN:UVCI:01:NL:DADFCC47C7334E45A906DB12FD859FB7#1"));
        }
        assert_eq!(CertificateType::Recovery.to_string(), "recovery");
        assert_eq!(serde_json::to_string(&CertificateType::Test).expect("json"), "\"test\"");
    }

    #[test]
    fn json_shape_and_key_order_are_fixed() {
        let dcc = parse(&example("vaccination/simple.json"));
        let text = serde_json::to_string(&dcc).expect("json");
        assert_eq!(
            text,
            concat!(
                r#"{"ver":"1.3.3","nam":{"fn":"Smith-Jones","fnt":"SMITH<JONES","gn":"Charles Edward","gnt":"CHARLES<EDWARD"},"#,
                r#""dob":"1964-01-01","v":[{"tg":"840539006","vp":"1119349007","mp":"EU/1/20/1507","ma":"ORG-100031184","#,
                r#""dn":1,"sd":2,"dt":"2021-06-11","co":"NL","is":"Ministry of Health Welfare and Sport","#,
                r#""ci":"URN:UVCI:01:NL:DADFCC47C7334E45A906DB12FD859FB7#1"}]}"#
            )
        );
        // Optional fields are left out, not null.
        let t = parse(&example("test/simple-naat.json"));
        let text = serde_json::to_string(&t).expect("json");
        assert!(!text.contains("null") && !text.contains("\"ma\""), "{text}");
        let only_gnt = parse(&example("vaccination/special-case-only-given-name.json"));
        let text = serde_json::to_string(&only_gnt).expect("json");
        assert!(!text.contains("\"fnt\"") && !text.contains("\"fn\""), "{text}");
    }

    #[test]
    fn cbor_is_the_schema_shape_with_integer_doses() {
        let v = example("vaccination/simple.json");
        let dcc = parse(&v);
        let bytes = cbor(&dcc);
        assert_eq!(bytes, cbor(&dcc), "deterministic");
        // Text keys, definite lengths, integers for dn/sd.
        let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).expect("decode");
        let map = value.as_map().expect("map");
        let keys: Vec<&str> = map.iter().map(|(k, _)| k.as_text().expect("text key")).collect();
        assert_eq!(keys, ["ver", "nam", "dob", "v"]);
        let entry = map[3].1.as_array().expect("array")[0].as_map().expect("entry map");
        let dn = entry.iter().find(|(k, _)| k.as_text() == Some("dn")).expect("dn");
        assert_eq!(dn.1, ciborium::Value::Integer(1.into()));
        assert_eq!(bytes[0], 0xa4, "a definite-length map of 4");
        // Decoded back into JSON it is the issuer's document.
        let back: Value = ciborium::from_reader(bytes.as_slice()).expect("decode to json");
        assert_eq!(back, v);
    }

    #[test]
    fn no_uvci_no_encoding() {
        let mut v = example("test/simple-rat.json");
        if let Some(entry) = v.pointer_mut("/t/0").and_then(Value::as_object_mut) {
            entry.remove("ci");
        }
        let mut dcc = parse(&v);
        assert_eq!(dcc.uvci(), None);
        let err = serde_json::to_string(&dcc).expect_err("no ci");
        assert!(err.to_string().contains("no UVCI"), "{err}");
        let mut out = Vec::new();
        assert!(ciborium::into_writer(&dcc, &mut out).is_err());
        dcc.validate(&policy()).expect("valid without ci: the daemon assigns one");

        let generator = UvciGenerator::new("VN").expect("VN");
        let assigned = dcc.ensure_uvci(&generator).expect("assign").to_owned();
        assert!(assigned.starts_with("URN:UVCI:01:VN:"), "{assigned}");
        // A second call keeps the first UVCI.
        assert_eq!(dcc.ensure_uvci(&generator).expect("keep"), assigned);
        let json = serde_json::to_value(&dcc).expect("json");
        assert_eq!(json["t"][0]["ci"], json!(assigned));
        dcc.validate(&policy()).expect("still valid");

        dcc.set_uvci(crate::hcert::uvci::Uvci::parse("URN:UVCI:01:VN:ABC").expect("uvci"));
        assert_eq!(dcc.uvci(), Some("URN:UVCI:01:VN:ABC"));
    }

    #[test]
    fn validate_catches_values_changed_in_code() {
        let mut dcc = parse(&example("recovery/simple.json"));
        dcc.validate(&arbitrary::policy()).expect("valid");
        if let Entry::Recovery(r) = &mut dcc.entry {
            r.du = "2021-01-01".into();
        }
        let e = dcc.validate(&arbitrary::policy()).expect_err("du before df");
        assert_eq!(e.path(), "r[0].du");
        let mut dcc = parse(&example("recovery/simple.json"));
        dcc.nam.r#fn = Some("Tra\u{300}n".into());
        let e = dcc.validate(&arbitrary::policy()).expect_err("not NFC");
        assert_eq!(e.code(), "policy");
    }

    fn official_schema() -> &'static jsonschema::Validator {
        static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata/dcc-schema/DCC.combined-schema.json");
            let schema: Value =
                serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("schema json");
            jsonschema::options().should_validate_formats(true).build(&schema).expect("compiles")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Generated DCCs are valid, survive JSON and CBOR unchanged, and the official schema
        /// accepts them.
        #[test]
        fn generated_dccs_are_valid_and_round_trip(dcc in arbitrary::dcc()) {
            let policy = arbitrary::policy();
            prop_assert_eq!(dcc.validate(&policy), Ok(()));

            let text = serde_json::to_string(&dcc).expect("json");
            prop_assert_eq!(&Dcc::from_json_str(&text, &policy).expect("reparse"), &dcc);

            let bytes = cbor(&dcc);
            let decoded: Value = ciborium::from_reader(bytes.as_slice()).expect("cbor to json");
            prop_assert_eq!(&Dcc::from_json_value(&decoded, &policy).expect("from cbor"), &dcc);
            prop_assert_eq!(crate::hcert::validate::check_schema(&decoded, Some(crate::hcert::valuesets::ValueSets::embedded())), Ok(()));
            prop_assert!(official_schema().is_valid(&decoded), "official schema refuses {}", decoded);
        }

        /// Every kind is produced.
        #[test]
        fn each_strategy_yields_its_kind(v in arbitrary::vaccination_dcc(), t in arbitrary::test_dcc(), r in arbitrary::recovery_dcc()) {
            prop_assert_eq!(v.kind(), CertificateType::Vaccination);
            prop_assert_eq!(t.kind(), CertificateType::Test);
            prop_assert_eq!(r.kind(), CertificateType::Recovery);
        }

        /// Arbitrary text never panics the strict parser.
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = Dcc::from_json_str(&s, &arbitrary::policy());
        }

        /// Single-field corruptions of a valid DCC are refused with the field's path.
        #[test]
        fn corrupted_fields_are_named(dcc in arbitrary::dcc(), junk in "[a-z ]{0,3}|[A-Z]{81,90}") {
            let mut v = serde_json::to_value(&dcc).expect("json");
            let key = dcc.kind().group_key();
            let (ptr, path) = match dcc.kind() {
                CertificateType::Vaccination => ("dt", "dt"),
                CertificateType::Test => ("sc", "sc"),
                CertificateType::Recovery => ("df", "df"),
            };
            if let Some(slot) = v.pointer_mut(&format!("/{key}/0/{ptr}")) {
                *slot = json!(junk);
            }
            let e = Dcc::from_json_value(&v, &arbitrary::policy()).expect_err("corrupt");
            prop_assert_eq!(e.path(), format!("{key}[0].{path}"));
        }
    }
}
