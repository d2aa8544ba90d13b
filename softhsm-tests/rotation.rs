//! DSC rotation by security officers over the real admin API: two-officer activation, hot
//! rotation under load, the trust list keeping retired keys, the refusals, and the time policy
//! (exp never past notAfter, no signature after the usage period) with certificates that end
//! soon.

mod daemon;

use std::collections::BTreeSet;
use std::time::Duration;

use daemon::{Daemon, ops_get, records, verify_all, wait_done};
use hcert_signer::client::ApiClient;
use hcert_signer::pki::Dsc;
use http::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// The development CSCA dev-init made (the test plays the country's CSCA).
async fn ok(reply: hcert_signer::client::Reply, what: &str) -> Value {
    assert!(reply.status.is_success(), "{what}: {} {}", reply.status, String::from_utf8_lossy(&reply.body));
    reply.json().unwrap_or(Value::Null)
}

/// officer1 generates `label`, gets its CSR, the CSCA certifies it for
/// [`not_before`, `not_after`]; officer1 imports it (with `usage_days` if given). Returns the
/// certificate PEM and the kid the appliance reported.
async fn certify(
    d: &Daemon,
    o1: &mut ApiClient,
    label: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    usage_days: Option<u32>,
) -> (String, String) {
    let created = ok(o1.post("/v1/keys", &json!({"label": label})).await.unwrap(), "generate").await;
    assert_eq!(created["state"], "generated");
    let csr = o1
        .post(&format!("/v1/keys/{label}/csr"), &json!({"subject": format!("C=VN,O=MoH,CN=DSC {label}")}))
        .await
        .unwrap();
    assert_eq!(csr.status, 200, "{}", String::from_utf8_lossy(&csr.body));
    assert_eq!(csr.headers["content-type"], "application/pkcs10");
    let csr = String::from_utf8(csr.body.to_vec()).unwrap();
    let pem = d.csca().certify_dsc(&csr, not_before, not_after, None).expect("certify");
    let path = match usage_days {
        Some(n) => format!("/v1/keys/{label}/certificate?usage_days={n}"),
        None => format!("/v1/keys/{label}/certificate"),
    };
    let imported =
        o1.request_typed(Method::PUT, &path, "application/x-pem-file", pem.clone().into_bytes()).await;
    let imported = ok(imported.unwrap(), "import").await;
    assert_eq!(imported["state"], "certified");
    (pem, imported["kid"].as_str().expect("kid").to_owned())
}

async fn approve(c: &mut ApiClient, label: &str) -> Value {
    ok(c.request(Method::POST, &format!("/v1/keys/{label}/approve"), None).await.unwrap(), "approve").await
}

async fn retire(c: &mut ApiClient, label: &str) -> Value {
    ok(c.request(Method::POST, &format!("/v1/keys/{label}/retire"), None).await.unwrap(), "retire").await
}

/// Submits `n` records and returns the batch id.
async fn submit(c: &mut ApiClient, prefix: &str, n: usize) -> String {
    let r = c.post("/v1/batches", &json!({"records": records(prefix, n)})).await.unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json().unwrap()["batch_id"].as_str().unwrap().to_owned()
}

/// Waits for a batch and returns its result lines.
async fn results(c: &mut ApiClient, id: &str) -> Vec<Value> {
    wait_done(c, id, Duration::from_secs(300)).await;
    let r = c.get(&format!("/v1/batches/{id}/results")).await.unwrap();
    String::from_utf8_lossy(&r.body).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Submits `n` records, waits, and returns the result lines.
async fn sign_batch(c: &mut ApiClient, prefix: &str, n: usize) -> Vec<Value> {
    let id = submit(c, prefix, n).await;
    results(c, &id).await
}

fn kids(lines: &[Value]) -> BTreeSet<String> {
    lines.iter().filter_map(|l| l["kid"].as_str().map(str::to_owned)).collect()
}

async fn trust_list(c: &mut ApiClient) -> (String, Value) {
    let r = c.get("/v1/trust-list").await.unwrap();
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let v = serde_json::from_str(&text).unwrap();
    (text, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_officers_rotate_the_dsc_while_batches_sign() {
    let d = Daemon::start();
    let (mut issuer, mut o1, mut o2) =
        (d.client("issuer").await, d.client("officer1").await, d.client("officer2").await);
    let (_, before_tl) = trust_list(&mut issuer).await;
    let old_kid = before_tl.as_object().unwrap().keys().next().unwrap().clone();

    let before = submit(&mut issuer, "before-", 1500).await;
    // Signed entirely by the old key, so both kids are certainly in play.
    wait_done(&mut issuer, &before, Duration::from_secs(300)).await;
    let now = OffsetDateTime::now_utc();
    let (_, new_kid) =
        certify(&d, &mut o1, "dsc-2", now - time::Duration::hours(1), now + time::Duration::days(730), None)
            .await;
    let during = submit(&mut issuer, "during-", 1500).await;

    // officer1 alone, even twice, does not activate.
    let first = approve(&mut o1, "dsc-2").await;
    assert_eq!((first["state"].as_str(), first["approvals_missing"].as_u64()), (Some("certified"), Some(1)));
    let again = approve(&mut o1, "dsc-2").await;
    assert_eq!((again["state"].as_str(), again["approvals_missing"].as_u64()), (Some("certified"), Some(1)));
    assert_eq!(again["approvals"].as_array().unwrap().len(), 1, "{again}");
    let also_during = submit(&mut issuer, "during2-", 500).await;
    // officer2's approval activates it, in the running daemon.
    let active = approve(&mut o2, "dsc-2").await;
    assert_eq!(active["state"], "active", "{active}");
    let after = submit(&mut issuer, "after-", 1000).await;

    let mut every = Vec::new();
    for id in [&before, &during, &also_during] {
        let lines = results(&mut issuer, id).await;
        assert!(
            lines.iter().all(|l| l["status"] == "signed"),
            "{:?}",
            lines.iter().find(|l| l["status"] != "signed")
        );
        assert!(kids(&lines).is_subset(&BTreeSet::from([old_kid.clone(), new_kid.clone()])));
        every.extend(lines);
    }
    let after_lines = results(&mut issuer, &after).await;
    assert_eq!(kids(&after_lines), BTreeSet::from([new_kid.clone()]), "after activation the new key signs");
    every.extend(after_lines);
    assert!(kids(&every).contains(&old_kid), "the old key signed the early batches");

    // Both kids in the trust list; every certificate verifies against it.
    let (tl_text, tl) = trust_list(&mut issuer).await;
    assert!(tl.get(&old_kid).is_some() && tl.get(&new_kid).is_some(), "{tl}");
    let hc1s: Vec<String> = every.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()).collect();
    let (all_ok, reports) = verify_all(&tl_text, &hc1s);
    assert!(all_ok, "{:?}", reports.iter().find(|r| r["ok"] != true));

    // Retiring the old key keeps its DSC in the trust list until its notAfter.
    let old_label = "dsc-dev-1";
    assert_eq!(retire(&mut o2, old_label).await["state"], "retired");
    let (_, tl) = trust_list(&mut issuer).await;
    assert!(tl.get(&old_kid).is_some(), "a retired DSC stays in the trust list: {tl}");
    let keys = ok(o1.get("/v1/keys").await.unwrap(), "list").await;
    let states: Vec<(String, String)> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["label"].as_str().unwrap().to_owned(), k["state"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(states, vec![("dsc-2".into(), "active".into()), ("dsc-dev-1".into(), "retired".into())]);

    // The store, not the configuration, says which keys sign: after a restart the retired
    // bootstrap key stays retired and the rotated one active.
    let mut d = d;
    assert_eq!(d.terminate(), Some(0));
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut o1 = d.client("officer1").await;
    let again = ok(o1.get("/v1/keys").await.unwrap(), "list").await;
    assert_eq!(again["keys"], keys["keys"]);

    // The audit log of the running appliance verifies over the API.
    let profile = d.path().join("officer1.toml");
    let out = std::process::Command::new(daemon::BIN)
        .args(["audit", "verify", "--profile"])
        .arg(&profile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["summary"]["signatures"], 4500, "{summary}");

    // A profile naming the appliance by DNS name; the server name defaults to it.
    let text = std::fs::read_to_string(&profile).unwrap();
    let by_name: String = text
        .lines()
        .filter(|l| !l.starts_with("server_name"))
        .map(|l| match l.starts_with("address") {
            true => format!("address = \"localhost:{}\"\n", d.listen.port()),
            false => format!("{l}\n"),
        })
        .collect();
    let named = d.path().join("officer1-by-name.toml");
    std::fs::write(&named, by_name).unwrap();
    let out = std::process::Command::new(daemon::BIN)
        .args(["keys", "--profile"])
        .arg(&named)
        .arg("list")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dsc-dev-1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refusals() {
    let d = Daemon::start();
    let (mut issuer, mut o1, mut o2) =
        (d.client("issuer").await, d.client("officer1").await, d.client("officer2").await);

    // An issuer certificate on any admin route: 403.
    for (method, path) in [
        (Method::GET, "/v1/keys"),
        (Method::POST, "/v1/keys"),
        (Method::POST, "/v1/keys/dsc-dev-1/csr"),
        (Method::PUT, "/v1/keys/dsc-dev-1/certificate"),
        (Method::POST, "/v1/keys/dsc-dev-1/approve"),
        (Method::POST, "/v1/keys/dsc-dev-1/retire"),
        (Method::POST, "/v1/keys/dsc-dev-1/upload"),
        (Method::GET, "/v1/audit"),
        (Method::GET, "/v1/audit/key"),
    ] {
        let r = issuer.request(method.clone(), path, Some(b"{}".to_vec())).await.unwrap();
        assert_eq!(r.status, 403, "{method} {path}");
    }
    // And officers cannot submit batches.
    assert_eq!(o1.post("/v1/batches", &json!({"records": records("x", 1)})).await.unwrap().status, 403);

    // A certificate issued for another key is refused, and changes nothing.
    for label in ["dsc-3", "dsc-4"] {
        assert_eq!(o1.post("/v1/keys", &json!({"label": label})).await.unwrap().status, 201);
    }
    let csr4 = o1.post("/v1/keys/dsc-4/csr", &json!({"subject": "C=VN,O=MoH,CN=DSC 4"})).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let cert4 = d
        .csca()
        .certify_dsc(
            std::str::from_utf8(&csr4.body).unwrap(),
            now - time::Duration::hours(1),
            now + time::Duration::days(700),
            None,
        )
        .unwrap();
    let r = o1
        .request_typed(
            Method::PUT,
            "/v1/keys/dsc-3/certificate",
            "application/x-pem-file",
            cert4.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    let message = r.json().unwrap()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("not the public key of HSM key \"dsc-3\""), "{message}");
    let keys = o1.get("/v1/keys").await.unwrap().json().unwrap();
    let dsc3 = keys["keys"].as_array().unwrap().iter().find(|k| k["label"] == "dsc-3").unwrap().clone();
    assert_eq!(dsc3["state"], "generated", "{dsc3}");

    // Other refusals, each clear: a CSR for another country, a label taken, approving a key
    // without a certificate, a malformed certificate, an unknown key.
    let r = o1.post("/v1/keys/dsc-3/csr", &json!({"subject": "C=FR,O=X,CN=Y"})).await.unwrap();
    assert_eq!(r.status, 422);
    assert!(String::from_utf8_lossy(&r.body).contains("C=VN"));
    assert_eq!(o1.post("/v1/keys", &json!({"label": "dsc-3"})).await.unwrap().status, 409);
    assert_eq!(o1.post("/v1/keys", &json!({"label": "bad label!"})).await.unwrap().status, 400);
    let r = o2.request(Method::POST, "/v1/keys/dsc-3/approve", None).await.unwrap();
    assert_eq!(r.status, 409);
    assert!(String::from_utf8_lossy(&r.body).contains("import its DSC certificate first"));
    let r = o1
        .request_typed(Method::PUT, "/v1/keys/dsc-3/certificate", "application/x-pem-file", b"junk".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(o1.request(Method::POST, "/v1/keys/nope/retire", None).await.unwrap().status, 404);
    let r = o1.request(Method::POST, "/v1/keys/dsc-dev-1/approve", None).await.unwrap();
    assert_eq!(r.status, 409, "an active key is not approved again");

    // The same officer approving twice leaves a key certified.
    let (_, _) =
        certify(&d, &mut o1, "dsc-5", now - time::Duration::hours(1), now + time::Duration::days(700), None)
            .await;
    for _ in 0..2 {
        assert_eq!(approve(&mut o2, "dsc-5").await["state"], "certified");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exp_never_passes_not_after_and_an_ended_usage_period_never_signs() {
    let d = Daemon::start();
    let (mut issuer, mut o1, mut o2) =
        (d.client("issuer").await, d.client("officer1").await, d.client("officer2").await);
    let now = OffsetDateTime::now_utc();

    // A DSC ending in 100 days, shorter than the 365-day validity: exp is capped at notAfter.
    let (short_pem, short_kid) =
        certify(&d, &mut o1, "short", now - time::Duration::hours(1), now + time::Duration::days(100), None)
            .await;
    approve(&mut o1, "short").await;
    assert_eq!(approve(&mut o2, "short").await["state"], "active");
    let not_after = Dsc::from_pem(&short_pem).unwrap().not_after;
    let lines = sign_batch(&mut issuer, "s-", 300).await;
    assert_eq!(kids(&lines), BTreeSet::from([short_kid.clone()]));
    for l in &lines {
        assert_eq!(l["exp"].as_i64(), Some(not_after), "exp is the DSC's notAfter: {l}");
    }

    // A key whose usage period (1 day from a notBefore almost a day ago) ends in 20 seconds.
    let usage_end = now + time::Duration::seconds(20);
    let (_, ending_kid) = certify(
        &d,
        &mut o1,
        "ending",
        usage_end - time::Duration::days(1),
        now + time::Duration::days(700),
        Some(1),
    )
    .await;
    approve(&mut o1, "ending").await;
    assert_eq!(approve(&mut o2, "ending").await["state"], "active");
    let lines = sign_batch(&mut issuer, "e-", 50).await;
    assert_eq!(kids(&lines), BTreeSet::from([ending_kid.clone()]), "the newest key signs while it may");

    tokio::time::sleep(Duration::from_secs(21)).await;
    // The server closes idle connections meanwhile.
    (issuer, o1, o2) = (d.client("issuer").await, d.client("officer1").await, d.client("officer2").await);
    let lines = sign_batch(&mut issuer, "late-", 300).await;
    assert!(lines.iter().all(|l| l["status"] == "signed"));
    assert!(!kids(&lines).contains(&ending_kid), "a key past its usage period never signs");

    // With only the ended key left, records are refused one by one and readiness says why.
    // "short" is covered by dsc-dev-1: one officer retires it. dsc-dev-1 is then the last key
    // that may sign: retiring it takes a second officer.
    assert_eq!(retire(&mut o1, "short").await["state"], "retired");
    let pending = retire(&mut o1, "dsc-dev-1").await;
    assert_eq!(pending["state"], "active", "{pending}");
    assert_eq!(pending["retirement_approvals_missing"], 1, "{pending}");
    assert_eq!(retire(&mut o2, "dsc-dev-1").await["state"], "retired");
    let lines = sign_batch(&mut issuer, "none-", 5).await;
    for l in &lines {
        assert_eq!(l["status"], "rejected");
        assert_eq!(l["error"]["code"], "no_key", "{l}");
    }
    std::thread::sleep(Duration::from_secs(4)); // past the readiness cache
    let (status, body) = ops_get(d.ops, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("usage period has ended"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_policy_refuses_certificates_that_would_outlive_the_dsc() {
    let mut d = Daemon::init();
    let config = d.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("validity_days = 365", "validity_days = 365\nexp_beyond_dsc = \"reject\""),
    )
    .unwrap();
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let (mut issuer, mut o1, mut o2) =
        (d.client("issuer").await, d.client("officer1").await, d.client("officer2").await);
    let now = OffsetDateTime::now_utc();
    certify(&d, &mut o1, "short", now - time::Duration::hours(1), now + time::Duration::days(30), None).await;
    approve(&mut o1, "short").await;
    approve(&mut o2, "short").await;
    let lines = sign_batch(&mut issuer, "r-", 20).await;
    for l in &lines {
        assert_eq!(l["status"], "rejected", "{l}");
        assert_eq!(l["error"]["code"], "dsc_expiring", "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_different_ekus_are_active_together() {
    let d = Daemon::start();
    let (mut issuer, mut o1, mut o2) =
        (d.client("issuer").await, d.client("officer1").await, d.client("officer2").await);
    let (_, tl) = trust_list(&mut issuer).await;
    let general = tl.as_object().unwrap().keys().next().unwrap().clone();
    let now = OffsetDateTime::now_utc();
    // A DSC for test certificates only (EKU 1.3.6.1.4.1.1847.2021.1.1), activated later.
    o1.post("/v1/keys", &json!({"label": "tests-only"})).await.unwrap();
    let csr = o1.post("/v1/keys/tests-only/csr", &json!({"subject": "C=VN,O=MoH,CN=DSC T"})).await.unwrap();
    let pem = d
        .csca()
        .certify_dsc(
            std::str::from_utf8(&csr.body).unwrap(),
            now - time::Duration::hours(1),
            now + time::Duration::days(700),
            Some(&[hcert_signer::hcert::CertificateType::Test]),
        )
        .unwrap();
    let imported = o1
        .request_typed(
            Method::PUT,
            "/v1/keys/tests-only/certificate",
            "application/x-pem-file",
            pem.into_bytes(),
        )
        .await
        .unwrap();
    let imported = ok(imported, "import").await;
    assert_eq!(imported["certificate_types"], json!(["test"]));
    let test_kid = imported["kid"].as_str().unwrap().to_owned();
    approve(&mut o1, "tests-only").await;
    approve(&mut o2, "tests-only").await;

    let lines = sign_batch(&mut issuer, "mix-", 300).await;
    let submitted = records("mix-", 300);
    let mut seen = BTreeSet::new();
    for (l, r) in lines.iter().zip(&submitted) {
        let is_test = r["dcc"].get("t").is_some();
        let want = if is_test { &test_kid } else { &general };
        assert_eq!(l["kid"].as_str(), Some(want.as_str()), "{l}");
        seen.insert(is_test);
    }
    assert_eq!(seen.len(), 2, "the batch held both kinds");
}
