//! `hcert-signer verify` as scripts use it: stdin lines in, one JSON report per line, exit 0 only
//! when every line verified.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn vector(path: &str) -> Value {
    let p = format!("{}/testdata/dgc-testdata/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Runs `verify` over `lines` with a trust list holding the DSCs of `vectors`.
fn verify(trust_from: &[&Value], lines: &[&str], clock: &str) -> (bool, Vec<Value>) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let mut trust = serde_json::Map::new();
    for v in trust_from {
        let cert = v["TESTCTX"]["CERTIFICATE"].as_str().unwrap();
        let der = b64.decode(cert).unwrap();
        let kid = hcert_signer::hcert::cose::kid(&der);
        trust.insert(b64.encode(kid), Value::String(cert.to_owned()));
    }
    let tl = dir.path().join("trust.json");
    std::fs::write(&tl, Value::Object(trust).to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hcert-signer"))
        .args(["verify", "--trust-list", tl.to_str().unwrap(), "--clock", clock])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let reports =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.success(), reports)
}

#[test]
fn good_lines_verify_and_exit_zero() {
    let at = vector("AT/2DCode/raw/1.json");
    let (ok, reports) = verify(&[&at], &[at["PREFIX"].as_str().unwrap()], "2021-06-01T12:00:00Z");
    assert!(ok, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r["ok"], true);
    assert_eq!(r["alg"], "ES256");
    assert_eq!(r["iss"], "AT");
    assert!(r["kid"].is_string() && r["iat"].is_i64() && r["exp"].is_i64());
    assert_eq!(r["errors"], Value::Array(vec![]));
}

#[test]
fn one_bad_line_fails_the_run_and_is_reported_alone() {
    let at = vector("AT/2DCode/raw/1.json");
    let good = at["PREFIX"].as_str().unwrap();
    let (ok, reports) = verify(&[&at], &[good, "HC1:NOT-BASE45-@@", good], "2021-06-01T12:00:00Z");
    assert!(!ok);
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[0]["ok"], true);
    assert_eq!(reports[1]["ok"], false);
    assert!(reports[1]["errors"][0].as_str().unwrap().starts_with("decode: invalid base45"));
    assert_eq!(reports[2]["ok"], true);
}

#[test]
fn expiry_is_reported_apart_from_the_signature() {
    let at = vector("AT/2DCode/raw/1.json");
    let (ok, reports) = verify(&[&at], &[at["PREFIX"].as_str().unwrap()], "2031-01-01T00:00:00Z");
    assert!(!ok);
    let r = &reports[0];
    assert_eq!(r["signature_valid"], true);
    assert_eq!(r["time_valid"], false);
    assert!(r["errors"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("validity: ")));
}

#[test]
fn unknown_kid_and_ps256() {
    let at = vector("AT/2DCode/raw/1.json");
    let ch = vector("CH/2DCode/raw/1.json");
    // Only the Swiss (PS256, RSA) DSC is trusted: the Austrian one is unknown.
    let (ok, reports) = verify(
        &[&ch],
        &[ch["PREFIX"].as_str().unwrap(), at["PREFIX"].as_str().unwrap()],
        "2021-09-01T00:00:00Z",
    );
    assert!(!ok);
    assert_eq!(reports[0]["alg"], "PS256");
    assert_eq!(reports[0]["signature_valid"], true, "{}", reports[0]);
    assert_eq!(reports[1]["signature_valid"], false);
    assert!(reports[1]["errors"][0].as_str().unwrap().contains("not in the trust list"));
}

#[test]
fn bad_trust_list_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tl = dir.path().join("trust.json");
    std::fs::write(&tl, r#"{"AAAAAAAAAAA=": "bm90IGEgY2VydA=="}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hcert-signer"))
        .args(["verify", "--trust-list", tl.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trust list") && err.contains("certificate of kid"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn qr_renders_png_and_svg() {
    let at = vector("AT/2DCode/raw/1.json");
    let hc1 = at["PREFIX"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, magic) in [("code.png", &b"\x89PNG"[..]), ("code.svg", &b"<?xml"[..])] {
        let out = dir.path().join(name);
        let status = Command::new(env!("CARGO_BIN_EXE_hcert-signer"))
            .args(["qr", "--output", out.to_str().unwrap(), hc1])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(std::fs::read(&out).unwrap().starts_with(magic), "{name}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_hcert-signer"))
        .args(["qr", "--output", dir.path().join("x.gif").to_str().unwrap(), hc1])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(".png or .svg"));
}
