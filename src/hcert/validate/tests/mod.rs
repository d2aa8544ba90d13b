//! The rules field by field in signing mode, on variants of the upstream examples; the helpers
//! that make those variants. The verifier path and the upstream vectors are in `verifier`.

use super::dates::*;
use super::rules::*;
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
    check_schema(&set(&test_naat(), "/t/0/dr", json!("2021-06-11T18:00:00Z")), Some(ValueSets::embedded()))
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
        assert!(!e.to_string().contains(bad.trim()) || bad.trim().len() < 4, "personal data in message: {e}");
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
    let e = assert_strict_err(&set(&v, "/v/0/mp", json!("Z".repeat(500))), ErrorCode::ValueSet, "v[0].mp");
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
    let e = assert_strict_err(
        &set(&v, "/v/0/ci", json!("URN:UVCI:01:NL:DADFCC47C7334E45A906DB12FD859FB7#2")),
        ErrorCode::UvciCheck,
        "v[0].ci",
    );
    assert!(e.message().contains("wrong check character '2'"), "{e}");
    for bad in ["urn:uvci:01:NL:ABC", "URN:UVCI:02:NL:ABC", "hello", "", "URN:UVCI:01:NL:AB CD"] {
        let e = assert_strict_err(&set(&v, "/v/0/ci", json!(bad)), ErrorCode::Uvci, "v[0].ci");
        assert!(e.message().starts_with("not a valid UVCI"), "{e}");
    }
    let long = format!("URN:UVCI:01:NL:{}", "A".repeat(66));
    assert_strict_err(&set(&v, "/v/0/ci", json!(long)), ErrorCode::Schema, "v[0].ci");
    assert_strict_ok(&set(&v, "/v/0/ci", json!("01:NL:1312D00")));
    assert!(policy().with_uvci_country("vn").is_err());
}

#[test]
fn uvci_country_and_accepted_prefixes() {
    let v = vaccination();
    let vn = policy().with_uvci_country("VN").expect("VN");
    let ci = |s: &str| {
        let body = s.to_owned();
        let check = crate::hcert::uvci::check_character(&body).expect("alphabet");
        set(&v, "/v/0/ci", json!(format!("{body}#{check}")))
    };
    let signed = |val: &Value, p: &Policy| Dcc::from_json_value(val, p);
    // The example's NL UVCI, a correct AT one, and prefix-less VN ones: another country, or none.
    for (val, found) in [
        (v.clone(), "it is a UVCI of NL"),
        (ci("URN:UVCI:01:AT:10807843F94AEE0EE5093FBC254BD813"), "it is a UVCI of AT"),
        (set(&v, "/v/0/ci", json!("01:VN:ABC")), "it has no URN:UVCI: prefix"),
        (ci("01:VN:ABC"), "it has no URN:UVCI: prefix"),
    ] {
        let e = signed(&val, &vn).expect_err(found);
        assert_eq!((e.code(), e.path()), ("uvci_country", "v[0].ci"), "{e}");
        assert!(e.message().contains(found) && e.message().contains("URN:UVCI:01:VN:"), "{e}");
    }
    // A foreign UVCI with a wrong check character is refused as foreign.
    let e = signed(&set(&v, "/v/0/ci", json!("URN:UVCI:01:AT:ABC#B")), &vn).expect_err("AT");
    assert_eq!(e.code(), "uvci_country");
    // The country's own: with a right check character, without one; a wrong one is uvci_check.
    signed(&ci("URN:UVCI:01:VN:ABC/123"), &vn).expect("own UVCI");
    signed(&set(&v, "/v/0/ci", json!("URN:UVCI:01:VN:ABC")), &vn).expect("no check character");
    let good = crate::hcert::uvci::check_character("URN:UVCI:01:VN:ABC").unwrap();
    let wrong = if good == 'A' { 'B' } else { 'A' };
    let e =
        signed(&set(&v, "/v/0/ci", json!(format!("URN:UVCI:01:VN:ABC#{wrong}"))), &vn).expect_err("check");
    assert_eq!(e.code(), "uvci_check");
    // "URN:UVCI:01:VNX..." is no VN UVCI: the prefix ends with ':'.
    assert_eq!(
        signed(&set(&v, "/v/0/ci", json!("URN:UVCI:01:VA:B")), &vn).unwrap_err().code(),
        "uvci_country"
    );
    // Accepted prefixes: exactly those starts, and the own country still.
    let migrated = vn
        .clone()
        .with_accepted_uvci_prefixes(&["URN:UVCI:01:AT:LEGACY/".into()])
        .expect("well-formed prefix");
    signed(&ci("URN:UVCI:01:AT:LEGACY/ABC"), &migrated).expect("accepted prefix");
    signed(&ci("URN:UVCI:01:VN:ABC"), &migrated).expect("own country");
    let e = signed(&ci("URN:UVCI:01:AT:OTHER/ABC"), &migrated).expect_err("other AT");
    assert!(e.code() == "uvci_country" && e.message().contains("or an accepted prefix"), "{e}");
    assert!(vn.clone().with_accepted_uvci_prefixes(&["URN:UVCI:01:AT".into()]).is_err());
    assert!(policy().with_accepted_uvci_prefixes(&["URN:UVCI:01:AT:".into()]).is_err(), "country first");
    // Without a country, any well-formed UVCI (the verifier-side and test policies).
    signed(&ci("URN:UVCI:01:AT:ABC"), &policy()).expect("no country policy");
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
    let e =
        assert_strict_err(&set(&t, "/t/0/sc", json!("2025-06-01T12:05:01Z")), ErrorCode::Policy, "t[0].sc");
    assert_eq!(e.message(), "sample collection time is in the future");
    assert_strict_err(&set(&t, "/t/0/sc", json!("2025-06-01T20:00:00+07:00")), ErrorCode::Policy, "t[0].sc");
    let lax = policy().with_clock_skew(time::Duration::hours(1));
    Dcc::from_json_value(&set(&t, "/t/0/sc", json!("2025-06-01T12:59:00Z")), &lax).expect("within an hour");
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

mod verifier;
