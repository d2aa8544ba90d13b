//! The rules of the schema and of the signer's policy, field by field, with the field paths
//! they report, and the entry points of both modes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::ControlFlow;

use super::dates::*;
use super::json::*;
use super::{ErrorCode, PayloadError, Policy};
use crate::hcert::certificate_type::CertificateType;
use crate::hcert::uvci::{self, UvciError};
use crate::hcert::valuesets::{ValueSetId, ValueSets};

// ---------------------------------------------------------------------------------------------
// Field paths, built on the stack and rendered only for an error
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
pub(super) enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Copy)]
pub(super) struct Path<'a> {
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
pub(super) fn push_key(out: &mut String, k: &str) {
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
pub(super) fn quote(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    if short.len() < s.len() { format!("{short:?}…") } else { format!("{short:?}") }
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
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

pub(super) struct Field {
    name: &'static str,
    rule: Rule,
    required: bool,
}

pub(super) const fn f(name: &'static str, rule: Rule, required: bool) -> Field {
    Field { name, rule, required }
}

pub(super) const ROOT_KEYS: &[&str] = &["ver", "nam", "dob", "v", "t", "r"];

pub(super) const NAM: &[Field] = &[
    f("fn", Rule::Text(80), false),
    f("fnt", Rule::Standardised, false),
    f("gn", Rule::Text(80), false),
    f("gnt", Rule::Standardised, false),
];

pub(super) const VACCINATION: &[Field] = &[
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

pub(super) const TEST: &[Field] = &[
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

pub(super) const RECOVERY: &[Field] = &[
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

pub(super) fn entry_fields(kind: CertificateType) -> &'static [Field] {
    match kind {
        CertificateType::Vaccination => VACCINATION,
        CertificateType::Test => TEST,
        CertificateType::Recovery => RECOVERY,
    }
}

pub(super) const GROUPS: [(&str, CertificateType); 3] =
    [("v", CertificateType::Vaccination), ("t", CertificateType::Test), ("r", CertificateType::Recovery)];

/// What a walk checks against.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'p> {
    value_sets: Option<&'p ValueSets>,
    formats: FormatMode,
    /// Present in the signing mode.
    policy: Option<&'p Policy>,
}

/// Collects errors; stops the walk at the first unless every error is wanted.
pub(super) struct Report {
    all: bool,
    errors: Vec<PayloadError>,
}

impl Report {
    fn push(&mut self, code: ErrorCode, path: &Path<'_>, message: impl Into<String>) -> ControlFlow<()> {
        self.errors.push(PayloadError::new(code, path.render(), message));
        if self.all { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
    }
}

pub(super) fn check_root(root: &Json<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
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
pub(super) fn check_keys(
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
pub(super) fn string_of<'j>(
    v: &'j Json<'_>,
    path: &Path<'_>,
    rep: &mut Report,
) -> ControlFlow<(), Option<&'j str>> {
    if let Json::Str(s) = v {
        return ControlFlow::Continue(Some(s));
    }
    rep.push(ErrorCode::Schema, path, format!("expected a string, found {}", v.type_name()))?;
    ControlFlow::Continue(None)
}

/// ECMA-262 `^\d+.\d+.\d+$`, exactly: `\d` is ASCII, `.` any character but a line terminator.
/// Run as a five-state automaton, linear in the input.
pub(super) fn matches_ver_pattern(s: &str) -> bool {
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

pub(super) fn check_ver(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
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

pub(super) fn check_dob(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
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

pub(super) fn check_nam(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
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

pub(super) fn check_group(
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

pub(super) fn check_entry(
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

pub(super) fn date_of(obj: &[(Cow<'_, str>, Json<'_>)], key: &str) -> Option<Ymd> {
    match get(obj, key) {
        Some(Json::Str(s)) => parse_full_date(s.as_bytes()),
        _ => None,
    }
}

pub(super) fn check_entry_policy(
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

pub(super) fn check_field(
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
                check_uvci(s, path, policy, rep)?;
            }
        }
        Rule::Dose => {}
    }
    ControlFlow::Continue(())
}

/// A supplied UVCI in signing mode: well-formed (`uvci`), of the policy's country or an accepted
/// prefix (`uvci_country`), with a matching check character if it has one (`uvci_check`). The
/// country comes before the check character: a foreign UVCI is refused as foreign whatever its
/// check character.
fn check_uvci(s: &str, path: &Path<'_>, policy: &Policy, rep: &mut Report) -> ControlFlow<()> {
    let check = match uvci::validate(s) {
        Ok(_) => None,
        // The check character is validate's last step: everything else is well-formed.
        Err(e @ UvciError::CheckCharacter { .. }) => Some(e),
        Err(e) => return rep.push(ErrorCode::Uvci, path, format!("not a valid UVCI: {e}")),
    };
    if !policy.uvci_prefixes.is_empty() && !policy.uvci_prefixes.iter().any(|p| s.starts_with(p.as_str())) {
        let own = &policy.uvci_prefixes[0];
        let extra = if policy.uvci_prefixes.len() > 1 { " or an accepted prefix" } else { "" };
        let found = match s.strip_prefix(uvci::PREFIX) {
            // Well-formed: `01:` and two letters follow.
            Some(rest) => format!("it is a UVCI of {}", rest.get(3..5).unwrap_or("?")),
            None => format!("it has no {} prefix", uvci::PREFIX),
        };
        return rep.push(
            ErrorCode::UvciCountry,
            path,
            format!("the UVCI must start with {own}{extra}: {found}"),
        );
    }
    match check {
        Some(e) => rep.push(ErrorCode::UvciCheck, path, format!("not a valid UVCI: {e}")),
        None => ControlFlow::Continue(()),
    }
}

/// Whether `s` has more than `max` characters (JSON Schema counts code points).
pub(super) fn exceeds(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

pub(super) fn check_code(
    id: ValueSetId,
    s: &str,
    path: &Path<'_>,
    ctx: &Ctx<'_>,
    rep: &mut Report,
) -> ControlFlow<()> {
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

pub(super) fn check_dose(v: &Json<'_>, path: &Path<'_>, ctx: &Ctx<'_>, rep: &mut Report) -> ControlFlow<()> {
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
