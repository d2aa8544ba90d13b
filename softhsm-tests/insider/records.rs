//! What an issuer (or someone with an issuer's certificate) sends is signed only when it belongs
//! to this country and this client:
//!
//! * a supplied UVCI must start `URN:UVCI:01:VN:` (or an accepted prefix of
//!   `[signing] accepted_uvci_prefixes`) and carry a right check character: another country's, a
//!   prefix-less one and a wrong check character are each rejected with their code while the
//!   rest of the batch is signed; one over-large DCC is rejected alone (`dcc_too_large`) and not
//!   kept; through `POST /v1/batches` and `POST /v1/sign` alike;
//! * a client pinned to its key (`[[client]] spki_sha256`) is not impersonated by another
//!   certificate the client CA issued under the same name; the pins reload on SIGHUP.
//!
//! Each time, `hcert-signer audit verify` on the stopped daemon counts exactly the signatures
//! the test saw released.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use hcert_signer::pki::dev::DevCa;
use serde_json::{Value, json};

use crate::daemon::{Daemon, ops_get, records, verify_all, wait_done};

/// The prefix this appliance accepts for certificates migrated from an earlier system.
const MIGRATED: &str = "URN:UVCI:01:AT:MIGRATED/";
/// Written into the over-large DCC, to search the store for afterwards.
const OVERSIZE_MARK: &str = "OVERSIZEDCCMUSTNOTBESTORED";

/// `body` with its check character appended (`body#c`).
fn checked(body: &str) -> String {
    let c = hcert_signer::hcert::uvci::check_character(body).expect("UVCI alphabet");
    format!("{body}#{c}")
}

/// `body` with a check character that is not the right one.
fn wrong_check(body: &str) -> String {
    let right = hcert_signer::hcert::uvci::check_character(body).expect("UVCI alphabet");
    format!("{body}#{}", if right == 'Q' { 'R' } else { 'Q' })
}

/// A valid record `r` with its certificate entry's `ci` set to `ci`.
fn with_ci(mut r: Value, reference: &str, ci: &str) -> Value {
    r["ref"] = json!(reference);
    for g in ["v", "t", "r"] {
        if let Some(e) = r["dcc"].get_mut(g).and_then(|a| a.get_mut(0)) {
            e["ci"] = json!(ci);
        }
    }
    r
}

/// The attempts of one request, by ref, with the code each must be rejected with (`None`:
/// signed), plus `good` valid records that must be signed.
fn attempts(prefix: &str, good: usize) -> (Vec<Value>, BTreeMap<String, Option<&'static str>>) {
    let base = records(&format!("{prefix}base"), 1).remove(0);
    let mut recs = records(&format!("{prefix}ok"), good);
    let mut expect: BTreeMap<String, Option<&'static str>> =
        (0..good).map(|i| (format!("{prefix}ok{i}"), None)).collect();
    let cases: [(&str, String, Option<&'static str>); 6] = [
        ("at", checked("URN:UVCI:01:AT:10807843F94AEE0EE5093FBC254BD813"), Some("uvci_country")),
        ("check", wrong_check("URN:UVCI:01:VN:INSIDER/7QK2M9"), Some("uvci_check")),
        ("noprefix", "01:VN:INSIDER/7QK2M9".to_owned(), Some("uvci_country")),
        ("noprefix-checked", checked("01:VN:INSIDER/7QK2M9"), Some("uvci_country")),
        ("other-at", checked("URN:UVCI:01:AT:OTHER/ABC"), Some("uvci_country")),
        ("migrated", checked(&format!("{MIGRATED}{}ABC", prefix.trim_end_matches('-').to_uppercase())), None),
    ];
    for (name, ci, code) in cases {
        let reference = format!("{prefix}{name}");
        recs.push(with_ci(base.clone(), &reference, &ci));
        expect.insert(reference, code);
    }
    // Over the 8,192-byte limit: a valid DCC padded with an unknown field.
    let mut big = base.clone();
    big["ref"] = json!(format!("{prefix}big"));
    big["dcc"]["zz"] = json!(OVERSIZE_MARK.repeat(400));
    recs.push(big);
    expect.insert(format!("{prefix}big"), Some("dcc_too_large"));
    (recs, expect)
}

/// Checks one request's results against `expect`; returns the HC1s signed.
fn check_results(results: &[Value], expect: &BTreeMap<String, Option<&'static str>>) -> Vec<String> {
    assert_eq!(results.len(), expect.len());
    let mut hc1s = Vec::new();
    for r in results {
        let reference = r["ref"].as_str().expect("ref");
        match expect[reference] {
            None => {
                assert_eq!(r["status"], "signed", "{r}");
                hc1s.push(r["hc1"].as_str().unwrap().to_owned());
            }
            Some(code) => {
                assert_eq!(r["status"], "rejected", "{r}");
                assert_eq!(r["error"]["code"], code, "{r}");
                assert!(r.get("hc1").is_none(), "{r}");
            }
        }
    }
    hc1s
}

/// Whether any file under `dir` contains `needle`.
fn found_under(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            found_under(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_uvcis_wrong_check_characters_and_oversize_records_are_rejected_alone() {
    let mut d = Daemon::init();
    let config = d.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text =
        text.replacen("[signing]\n", &format!("[signing]\naccepted_uvci_prefixes = [\"{MIGRATED}\"]\n"), 1);
    std::fs::write(&config, text).unwrap();
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;

    // A batch: each attempt rejected with its own code, every other record signed.
    let (recs, expect) = attempts("b-", 4);
    let r = c.post("/v1/batches", &json!({"records": recs})).await.unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    let status = wait_done(&mut c, &id, Duration::from_secs(60)).await;
    assert_eq!((status["signed"].as_u64(), status["rejected"].as_u64()), (Some(5), Some(6)), "{status}");
    let body = c.get(&format!("/v1/batches/{id}/results")).await.unwrap().body;
    let results: Vec<Value> =
        String::from_utf8_lossy(&body).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut hc1s = check_results(&results, &expect);
    let migrated = results.iter().find(|r| r["ref"] == "b-migrated").unwrap();
    assert!(migrated["uvci"].as_str().unwrap().starts_with(MIGRATED), "{migrated}");
    let at = results.iter().find(|r| r["ref"] == "b-at").unwrap();
    assert!(at["error"]["message"].as_str().unwrap().contains("must start with URN:UVCI:01:VN:"), "{at}");

    // The same through the synchronous route.
    let (recs, expect) = attempts("s-", 1);
    let r = c.post("/v1/sign", &json!({"records": recs})).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let results = r.json().unwrap()["results"].as_array().unwrap().clone();
    hc1s.extend(check_results(&results, &expect));

    // What was signed verifies; what was refused was never signed, and the big DCC never kept.
    let trust = c.get("/v1/trust-list").await.unwrap();
    let (ok, reports) = verify_all(std::str::from_utf8(&trust.body).unwrap(), &hc1s);
    assert!(ok, "{reports:?}");
    let (_, metrics) = ops_get(d.ops, "/metrics").unwrap();
    for code in ["uvci_country", "uvci_check", "dcc_too_large"] {
        assert!(metrics.contains(&format!("hcert_records_rejected_total{{code=\"{code}\"}}")), "{code}");
    }
    drop(c);
    assert_eq!(d.terminate(), Some(0));
    assert!(!found_under(&d.path().join("state"), OVERSIZE_MARK.as_bytes()), "the over-large DCC was stored");
    assert_eq!(d.audited_signatures(), hc1s.len() as u64);
    assert_eq!(hc1s.len(), 7);
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, computed the way an officer does it:
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`.
fn pin_of(cert: &std::path::Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let pin = text.split_whitespace().next().unwrap().to_owned();
    assert_eq!(pin.len(), 64, "{text}");
    pin
}

/// Sets the `spki_sha256` of dev-init's client `issuer`.
fn pin_issuer(d: &Daemon, pin: &str) {
    let config = d.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut out = String::new();
    let mut in_issuer = false;
    for line in text.lines() {
        if line.starts_with("spki_sha256") && in_issuer {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with('[') {
            in_issuer = false;
        }
        if line == "name = \"issuer\"" {
            in_issuer = true;
            out.push_str(&format!("spki_sha256 = [\"{pin}\"]\n"));
        }
    }
    std::fs::write(&config, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_certificate_under_a_pinned_name_is_not_that_client() {
    let mut d = Daemon::init();
    let original = pin_of(&d.path().join("tls/issuer.pem"));
    pin_issuer(&d, &original);
    // The same CA issues another certificate with CN "issuer" and another key.
    let ca = DevCa::load(
        &std::fs::read_to_string(d.path().join("tls/ca.pem")).unwrap(),
        &std::fs::read_to_string(d.path().join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    let twin = ca.issue_client("issuer", 30).unwrap();
    let twin_path = d.path().join("twin.pem");
    std::fs::write(&twin_path, &twin.cert_pem).unwrap();
    assert_ne!(pin_of(&twin_path), original);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));

    // The pinned original works.
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/sign", &json!({"records": records("pin", 1)})).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["results"][0]["status"], "signed");

    // The twin is refused on every route, signing and submitting nothing.
    let tls = d.tls_presenting(&twin);
    for (method, path) in [("POST", "/v1/sign"), ("POST", "/v1/batches"), ("GET", "/v1/trust-list")] {
        let mut t = hcert_signer::client::ApiClient::connect(d.listen, "localhost", &tls).await.unwrap();
        let body = json!({"records": records("twin", 2)});
        let r = match method {
            "POST" => t.post(path, &body).await.unwrap(),
            _ => t.get(path).await.unwrap(),
        };
        assert_eq!(r.status, 403, "{method} {path}");
        let e = r.json().unwrap();
        assert_eq!(e["error"]["code"], "key_not_pinned", "{e}");
    }
    let (_, metrics) = ops_get(d.ops, "/metrics").unwrap();
    assert!(metrics.contains("hcert_connections_refused_total{reason=\"key_not_pinned\"} 3"), "{metrics}");
    assert!(d.log_text().contains("with a key that is not pinned for it"), "the refusal is logged");

    // SIGHUP re-pins the client to the twin's key: now the original is refused.
    pin_issuer(&d, &pin_of(&twin_path));
    d.signal("HUP");
    let start = std::time::Instant::now();
    loop {
        let mut o = d.client("issuer").await;
        if o.get("/v1/trust-list").await.is_ok_and(|r| r.status == 403) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "SIGHUP did not reload the pins");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut t = hcert_signer::client::ApiClient::connect(d.listen, "localhost", &tls).await.unwrap();
    assert_eq!(t.get("/v1/trust-list").await.unwrap().status, 200, "the twin, now pinned, is the client");
    drop((c, t));
    assert_eq!(d.terminate(), Some(0));
    // Only the original's one signature was ever released.
    assert_eq!(d.audited_signatures(), 1);
}
