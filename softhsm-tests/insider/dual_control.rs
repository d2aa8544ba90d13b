//! Dual control without exceptions, tried as an administrator who edits config.toml and the
//! token and as one officer acting alone: a key made outside the appliance (extractable, or
//! imported onto the token) is refused at the first start naming the attribute, and so is an
//! upload key made with the token's defaults (decrypt, unwrap) at any start; a DSC added to
//! `[[signing.dsc]]` after the first start stops the start (exit 78) pointing to
//! `hcert-signer keys`; one officer cannot retire the last active DSC, but can retire a key
//! another active key covers. Each time nothing else changes: no key activated, nothing signed
//! with it, the audit log verifies.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use hcert_signer::client::ApiClient;
use hcert_signer::config::Config;
use hcert_signer::hsm::HsmConfig;
use http::Method;
use rcgen::PublicKeyData as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::daemon::{self, Daemon, records, wait_done};

/// The label of the key dev-init activated at the first start.
const DEV_DSC: &str = "dsc-dev-1";

/// Runs `pkcs11-tool`, logged in as the user, on the dev-init token (as an administrator with
/// the PIN file could).
pub(crate) fn pkcs11_tool(d: &Daemon, args: &[&str]) -> Output {
    let config = Config::load(&d.path().join("config.toml")).expect("config");
    let HsmConfig::Pkcs11(p) = &config.hsm else { panic!("dev-init writes a PKCS#11 configuration") };
    let pin = std::fs::read_to_string(d.path().join("hsm-pin")).expect("PIN file");
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&p.module)
        .args(["--token-label", &p.token_label, "--login", "--pin", pin.trim()])
        .args(args)
        .env("SOFTHSM2_CONF", d.path().join("softhsm2.conf"))
        .output()
        .expect("run pkcs11-tool (opensc)");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Generates a P-256 sign-usage key pair on the token with `pkcs11-tool`, as an administrator
/// could; `flags` are the attribute flags on top (`--sensitive`, `--extractable`, …).
fn keypair_on_token(d: &Daemon, label: &str, id: &str, flags: &[&str]) {
    let base = ["--keypairgen", "--key-type", "EC:prime256v1", "--label", label, "--id", id, "--usage-sign"];
    pkcs11_tool(d, &[&base[..], flags].concat());
}

/// The development CSCA as an rcgen issuer (the test plays the country's CSCA, which certifies
/// what it is given).
pub(crate) fn csca_issuer(d: &Daemon) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let read = |f: &str| std::fs::read_to_string(d.path().join(f)).expect(f);
    let key = rcgen::KeyPair::from_pem(&read("csca.key")).expect("CSCA key");
    rcgen::Issuer::from_ca_cert_pem(&read("csca.pem"), key).expect("CSCA certificate")
}

/// DSC parameters the real CSCA would use: C=VN, two years from an hour ago, digitalSignature,
/// not a CA.
pub(crate) fn dsc_params(cn: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CountryName, "VN");
    dn.push(rcgen::DnType::OrganizationName, "Ministry of Health");
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(700);
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    p
}

/// A certificate from the development CSCA for the public key `spki_der`.
fn certify_spki(d: &Daemon, spki_der: &[u8], cn: &str) -> String {
    let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der).expect("SPKI");
    dsc_params(cn).signed_by(&spki, &csca_issuer(d)).expect("certify").pem()
}

/// The SubjectPublicKeyInfo (DER) of the token's public key `label`.
fn read_public_key(d: &Daemon, label: &str) -> Vec<u8> {
    let file = d.path().join(format!("{label}.pub.der"));
    pkcs11_tool(
        d,
        &[
            "--read-object",
            "--type",
            "pubkey",
            "--label",
            label,
            "--output-file",
            file.to_str().expect("path"),
        ],
    );
    std::fs::read(file).expect("public key")
}

/// Writes `pem` beside the others and lists the key in `[[signing.dsc]]`.
fn list_in_config(d: &Daemon, label: &str, pem: &str) {
    let path = d.path().join("dsc").join(format!("{label}.pem"));
    std::fs::write(&path, pem).expect("write certificate");
    d.append_config(&format!(
        "\n[[signing.dsc]]\nlabel = \"{label}\"\ncertificate = \"{}\"\n",
        path.display()
    ));
}

/// Every audit entry `/v1/audit` serves, decoded: its JSON, one line each (an entry is the
/// previous hash, 32 bytes, then the event's JSON, base64).
pub(crate) async fn audit_text(o: &mut ApiClient) -> String {
    use base64::Engine as _;
    let r = o.get("/v1/audit").await.expect("audit");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut out = String::new();
    for line in String::from_utf8_lossy(&r.body).lines() {
        let v: Value = serde_json::from_str(line).expect("audit line");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["entry"].as_str().expect("entry"))
            .expect("base64");
        let json = std::str::from_utf8(&raw[32..]).expect("entry JSON");
        assert!(json.starts_with('{'), "{json}");
        out.push_str(json);
        out.push('\n');
    }
    assert!(out.contains("\"event\":\"started\""), "{out}");
    out
}

/// `hcert-signer audit verify` against the running appliance passes.
pub(crate) fn audit_verifies(d: &Daemon) {
    let out = Command::new(daemon::BIN)
        .args(["audit", "verify", "--profile"])
        .arg(d.path().join("officer1.toml"))
        .output()
        .expect("audit verify");
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The keys the appliance lists: label → view.
pub(crate) async fn keys(o: &mut ApiClient) -> Vec<Value> {
    let r = o.get("/v1/keys").await.expect("keys");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json().expect("json")["keys"].as_array().expect("keys").clone()
}

/// One key's view.
pub(crate) async fn key(o: &mut ApiClient, label: &str) -> Value {
    keys(o).await.into_iter().find(|k| k["label"] == label).unwrap_or_else(|| panic!("no key {label}"))
}

/// Signs `n` records and returns their result lines.
pub(crate) async fn sign(issuer: &mut ApiClient, prefix: &str, n: usize) -> Vec<Value> {
    let r = issuer.post("/v1/batches", &json!({"records": records(prefix, n)})).await.expect("submit");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json().expect("json")["batch_id"].as_str().expect("id").to_owned();
    wait_done(issuer, &id, Duration::from_secs(120)).await;
    let r = issuer.get(&format!("/v1/batches/{id}/results")).await.expect("results");
    String::from_utf8_lossy(&r.body).lines().map(|l| serde_json::from_str(l).expect("line")).collect()
}

/// The kids that signed `lines` (all of which must be signed).
pub(crate) fn signed_kids(lines: &[Value]) -> BTreeSet<String> {
    assert!(lines.iter().all(|l| l["status"] == "signed"), "{lines:?}");
    lines.iter().map(|l| l["kid"].as_str().expect("kid").to_owned()).collect()
}

/// After a refused first start: without the attacker's entry the appliance starts, activates
/// only dev-init's key (first-start bootstrap), signs with it alone, never heard of `label`,
/// and its audit log verifies.
async fn nothing_changed(d: &mut Daemon, config_before: &str, label: &str) {
    std::fs::write(d.path().join("config.toml"), config_before).expect("restore config");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let (mut o1, mut issuer) = (d.client("officer1").await, d.client("issuer").await);
    let listed = keys(&mut o1).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["label"], DEV_DSC);
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["activated_by"][0]["officer"], "config (first-start bootstrap)", "{}", listed[0]);
    let kid = listed[0]["kid"].as_str().expect("kid").to_owned();
    assert_eq!(signed_kids(&sign(&mut issuer, "after-", 20).await), BTreeSet::from([kid]));
    let audit = audit_text(&mut o1).await;
    assert!(!audit.contains(label), "the audit log mentions {label}: {audit}");
    // The first start says what it was.
    assert!(
        audit.contains("activated from the configuration file: the first-start bootstrap of a store that had never held a key"),
        "{audit}"
    );
    audit_verifies(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_extractable_outside_the_appliance_is_refused_at_first_start() {
    let mut d = Daemon::init();
    let before = std::fs::read_to_string(d.path().join("config.toml")).expect("config");
    // The administrator makes a key pair with the token's own tool, extractable, gets it a
    // genuine certificate from the CSCA and lists it for the fresh store's bootstrap.
    keypair_on_token(&d, "dsc-x", "a1a1", &["--extractable", "--sensitive", "--private"]);
    let pem = certify_spki(&d, &read_public_key(&d, "dsc-x"), "DSC VN X");
    list_in_config(&d, "dsc-x", &pem);
    let log = d.start_refused();
    assert!(log.contains("key \"dsc-x\" is refused"), "{log}");
    assert!(
        log.contains(
            "CKA_NEVER_EXTRACTABLE is false (the key was extractable at some time, so it may exist outside the HSM)"
        ),
        "{log}"
    );
    nothing_changed(&mut d, &before, "dsc-x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_imported_onto_the_token_is_refused_at_first_start() {
    let mut d = Daemon::init();
    let before = std::fs::read_to_string(d.path().join("config.toml")).expect("config");
    // A key made in software (so a copy exists outside the HSM), written onto the token with
    // C_CreateObject as a sensitive, sign-only, non-extractable private key.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let key_file = d.path().join("outside.key.der");
    std::fs::write(&key_file, key.serialize_der()).expect("write key");
    let pub_file = d.path().join("outside.pub.der");
    std::fs::write(&pub_file, key.subject_public_key_info()).expect("write public key");
    for (file, kind) in [(&key_file, "privkey"), (&pub_file, "pubkey")] {
        pkcs11_tool(
            &d,
            &[
                "--write-object",
                file.to_str().expect("path"),
                "--type",
                kind,
                "--label",
                "dsc-imported",
                "--id",
                "b2b2",
                "--usage-sign",
                "--sensitive",
                "--private",
            ],
        );
    }
    let pem = certify_spki(&d, &key.subject_public_key_info(), "DSC VN IMPORTED");
    list_in_config(&d, "dsc-imported", &pem);
    let log = d.start_refused();
    assert!(log.contains("key \"dsc-imported\" is refused"), "{log}");
    assert!(log.contains("CKA_LOCAL is false (it was not generated on the token but imported"), "{log}");
    nothing_changed(&mut d, &before, "dsc-imported").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsc_added_to_the_configuration_after_the_first_start_stops_the_start() {
    let mut d = Daemon::start();
    let (mut o1, issuer) = (d.client("officer1").await, d.client("issuer").await);
    let kid = key(&mut o1, DEV_DSC).await["kid"].as_str().expect("kid").to_owned();
    let audit_before = audit_text(&mut o1).await;
    assert_eq!(d.terminate(), Some(0));
    let before = std::fs::read_to_string(d.path().join("config.toml")).expect("config");

    // A key fit in every attribute, generated on the token, certified by the real CSCA: only
    // the two officers are missing, and the configuration is not a way around them.
    keypair_on_token(&d, "dsc-sneak", "c3c3", &["--sensitive", "--private"]);
    let pem = certify_spki(&d, &read_public_key(&d, "dsc-sneak"), "DSC VN SNEAK");
    list_in_config(&d, "dsc-sneak", &pem);
    let log = d.start_refused();
    assert!(log.contains("key \"dsc-sneak\" in [[signing.dsc]] is not known to the store"), "{log}");
    assert!(log.contains("`hcert-signer keys`"), "{log}");

    std::fs::write(d.path().join("config.toml"), &before).expect("restore config");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let (mut o1, mut issuer2) = (d.client("officer1").await, d.client("issuer").await);
    let listed = keys(&mut o1).await;
    assert_eq!(listed.iter().map(|k| k["label"].as_str().unwrap_or("")).collect::<Vec<_>>(), vec![DEV_DSC]);
    assert_eq!(signed_kids(&sign(&mut issuer2, "after-", 20).await), BTreeSet::from([kid]));
    let audit_after = audit_text(&mut o1).await;
    assert!(audit_after.starts_with(audit_before.trim_end()), "the audit log was rewritten");
    assert!(!audit_after.contains("dsc-sneak"));
    audit_verifies(&d);
    drop(issuer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_officer_cannot_retire_the_last_active_dsc() {
    let d = Daemon::start();
    let (mut o1, mut o2, mut issuer) =
        (d.client("officer1").await, d.client("officer2").await, d.client("issuer").await);
    let kid = key(&mut o1, DEV_DSC).await["kid"].as_str().expect("kid").to_owned();
    let retire = format!("/v1/keys/{DEV_DSC}/retire");

    // Officer 1 alone, twice: recorded, waiting; the key still signs.
    for _ in 0..2 {
        let r = o1.request(Method::POST, &retire, None).await.expect("retire");
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().expect("json");
        assert_eq!(v["state"], "active", "{v}");
        assert_eq!(v["retirement_approvals_missing"], 1, "the same officer counts once: {v}");
        assert_eq!(v["retirement_approvals"].as_array().map(Vec::len), Some(1), "{v}");
    }
    let listed = key(&mut o2, DEV_DSC).await;
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["retirement_approvals"][0]["officer"], "officer1", "{listed}");
    assert_eq!(signed_kids(&sign(&mut issuer, "one-", 20).await), BTreeSet::from([kid]));

    // The CLI shows the officer it waits for a second one.
    let out = Command::new(daemon::BIN)
        .args(["keys", "retire", "--label", DEV_DSC, "--profile"])
        .arg(d.path().join("officer1.toml"))
        .output()
        .expect("keys retire");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("waits for a second officer"), "{out:?}");

    // A second, different officer: retired.
    let r = o2.request(Method::POST, &retire, None).await.expect("retire");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json().expect("json");
    assert_eq!(v["state"], "retired", "{v}");
    assert_eq!(v["retired"]["officer"], "officer2");
    let by: BTreeSet<&str> = v["retirement_approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .filter_map(|a| a["officer"].as_str())
        .collect();
    assert_eq!(by, BTreeSet::from(["officer1", "officer2"]));
    let lines = sign(&mut issuer, "none-", 3).await;
    assert!(lines.iter().all(|l| l["error"]["code"] == "no_key"), "{lines:?}");
    audit_verifies(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_officer_retires_a_key_another_active_key_covers() {
    let d = Daemon::start();
    let (mut o1, mut o2, mut issuer) =
        (d.client("officer1").await, d.client("officer2").await, d.client("issuer").await);
    // A second key through the officers' own path: generate, CSR, CSCA, import, two approvals.
    assert_eq!(o1.post("/v1/keys", &json!({"label": "dsc-2"})).await.expect("generate").status, 201);
    let csr = o1.post("/v1/keys/dsc-2/csr", &json!({"subject": "C=VN,O=MoH,CN=DSC 2"})).await.expect("csr");
    let csr = rcgen::CertificateSigningRequestParams::from_pem(std::str::from_utf8(&csr.body).expect("pem"))
        .expect("CSR");
    let mut params = dsc_params("DSC 2");
    params.distinguished_name = csr.params.distinguished_name.clone();
    let pem = params.signed_by(&csr.public_key, &csca_issuer(&d)).expect("certify").pem();
    let r = o1
        .request_typed(Method::PUT, "/v1/keys/dsc-2/certificate", "application/x-pem-file", pem.into_bytes())
        .await
        .expect("import");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for o in [&mut o1, &mut o2] {
        assert_eq!(
            o.request(Method::POST, "/v1/keys/dsc-2/approve", None).await.expect("approve").status,
            200
        );
    }
    let new = key(&mut o1, "dsc-2").await;
    assert_eq!(new["state"], "active");
    let by: Vec<&str> =
        new["activated_by"].as_array().expect("by").iter().filter_map(|a| a["officer"].as_str()).collect();
    assert_eq!(by, vec!["officer1", "officer2"]);

    // dsc-2 covers every type dsc-dev-1 covers: one officer retires it at once.
    let r = o1.request(Method::POST, &format!("/v1/keys/{DEV_DSC}/retire"), None).await.expect("retire");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json().expect("json");
    assert_eq!(v["state"], "retired", "{v}");
    assert_eq!(v["retirement_approvals"][0]["officer"], "officer1");
    let kid = new["kid"].as_str().expect("kid").to_owned();
    assert_eq!(signed_kids(&sign(&mut issuer, "rot-", 20).await), BTreeSet::from([kid]));
    audit_verifies(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_covering_only_some_types_leaves_the_others_to_two_officers() {
    use hcert_signer::hcert::CertificateType;
    let d = Daemon::start();
    let (mut o1, mut o2) = (d.client("officer1").await, d.client("officer2").await);
    // dsc-t may only sign test certificates (HCERT EKU); dsc-dev-1 has no EKU: every type.
    assert_eq!(o1.post("/v1/keys", &json!({"label": "dsc-t"})).await.expect("generate").status, 201);
    let csr = o1.post("/v1/keys/dsc-t/csr", &json!({"subject": "C=VN,O=MoH,CN=DSC T"})).await.expect("csr");
    let read = |f: &str| std::fs::read_to_string(d.path().join(f)).expect(f);
    let ca = hcert_signer::pki::dev::DevCa::load(&read("csca.pem"), &read("csca.key")).expect("CSCA");
    let now = OffsetDateTime::now_utc();
    let pem = ca
        .certify_dsc(
            std::str::from_utf8(&csr.body).expect("pem"),
            now - time::Duration::hours(1),
            now + time::Duration::days(700),
            Some(&[CertificateType::Test]),
        )
        .expect("certify");
    let r = o1
        .request_typed(Method::PUT, "/v1/keys/dsc-t/certificate", "application/x-pem-file", pem.into_bytes())
        .await
        .expect("import");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for o in [&mut o1, &mut o2] {
        assert_eq!(
            o.request(Method::POST, "/v1/keys/dsc-t/approve", None).await.expect("approve").status,
            200
        );
    }
    // dsc-dev-1 is still the last cover of vaccination and recovery: one officer only asks.
    let r = o1.request(Method::POST, &format!("/v1/keys/{DEV_DSC}/retire"), None).await.expect("retire");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(key(&mut o1, DEV_DSC).await["state"], "active");
    // dsc-t is covered for its one type by dsc-dev-1: one officer retires it.
    let r = o2.request(Method::POST, "/v1/keys/dsc-t/retire", None).await.expect("retire");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().expect("json")["state"], "retired");
    audit_verifies(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_key_made_with_the_tokens_defaults_is_refused_at_start() {
    let mut d = Daemon::start();
    assert_eq!(d.terminate(), Some(0));
    let config = d.path().join("config.toml");
    let before = std::fs::read_to_string(&config).expect("config");
    // The gateway upload key swapped for one made with pkcs11-tool: sign usage asked for, but
    // the token's defaults leave decrypt and unwrap on.
    keypair_on_token(&d, "upload-x", "d4d4", &[]);
    let pem = certify_spki(&d, &read_public_key(&d, "upload-x"), "VN UPLOAD X");
    let cert = d.path().join("dsc").join("upload-x.pem");
    std::fs::write(&cert, pem).expect("write certificate");
    let upload = before.find("[signing.upload]").expect("upload section");
    let end = before[upload..].find("\n\n").map_or(before.len(), |e| upload + e);
    let swapped = format!(
        "{}[signing.upload]\nlabel = \"upload-x\"\ncertificate = \"{}\"{}",
        &before[..upload],
        cert.display(),
        &before[end..]
    );
    std::fs::write(&config, swapped).expect("write config");
    let log = d.start_refused();
    assert!(log.contains("key \"upload-x\" is refused"), "{log}");
    assert!(log.contains("CKA_DECRYPT is true (it may also decrypt; a signing key must only sign)"), "{log}");

    std::fs::write(&config, &before).expect("restore config");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut o1 = d.client("officer1").await;
    assert!(!audit_text(&mut o1).await.contains("upload-x"));
    audit_verifies(&d);
}
