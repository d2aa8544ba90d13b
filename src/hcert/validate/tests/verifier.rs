//! The verifier path: the upstream examples and test vectors, the lenient grammars, and the
//! cross-check with the official JSON schema.

use super::*;

// --- the upstream material ---------------------------------------------------------------

#[test]
fn upstream_examples_pass_both_modes_and_round_trip() {
    let all = examples();
    assert_eq!(all.len(), 27);
    for (path, v) in all {
        check_schema(&v, Some(&value_sets())).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let dcc = Dcc::from_json_value(&v, &policy()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
        paths.push((p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned(), e.path().to_owned()));
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
        let (Some(dcc), Some(expected)) =
            (v.get("JSON"), v.pointer("/EXPECTEDRESULTS/EXPECTEDSCHEMAVALIDATION").and_then(Value::as_bool))
        else {
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

// --- the verifier path -----------------------------------------------------------------------

#[test]
fn verifier_path_is_lenient_where_the_field_is() {
    // A 1.0.x-era vector: dt with a time, a test with dr, inactive codes.
    let v =
        set(&set(&vaccination(), "/v/0/dt", json!("2021-03-18T22:54:00+02:00")), "/v/0/vp", json!("J07BX03"));
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
            "ver", "nam.fn", "nam.gnt", "dob", "t", "v[0].vp", "v[0].mp", "v[0].ma", "v[0].dn", "v[0].sd",
            "v[0].dt", "v[0].co", "t"
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
/// `cargo test --release --lib hcert::validate::tests::verifier::timing -- --ignored --nocapture`.
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
