//! An audit log that cannot be cut (issue 18, build point 6, acceptance 3), tried as an insider
//! with the disk and the token would: the log cut back to just after a checkpoint, or to just
//! before the last one, is caught by `audit verify --anchor` with the heads published outside
//! the store (the API and the daemon's log lines); the audit key deleted from the token, its
//! recorded public half replaced, or the state directory wiped on a used token each stop the
//! start with exit 78 while nothing is made, activated or written.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::daemon::{BIN, Daemon, audit_verify, copy_dir, records};

fn os(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}

/// Cuts the store in `dir` back to entry `keep` with sled directly, as someone with the disk
/// would: every later audit entry and its checkpoint index removed.
fn cut(dir: &Path, keep: u64) {
    let db =
        sled::Config::new().path(dir).segment_size(hcert_signer::store::sled::SEGMENT_SIZE).open().unwrap();
    for name in ["audit", "audit_checkpoints"] {
        let tree = db.open_tree(name).unwrap();
        let later: Vec<_> = tree.range((keep + 1).to_be_bytes()..).keys().map(Result::unwrap).collect();
        for k in later {
            tree.remove(k).unwrap();
        }
    }
    db.flush().unwrap();
}

/// The checkpoint heads the daemon published in its log lines (`audit_checkpoint_head=…`, the
/// line's last field), as JSON lines.
fn logged_heads(d: &Daemon) -> Vec<Value> {
    d.log_text()
        .lines()
        .filter_map(|l| {
            l.split_once(" audit_checkpoint_head=").map(|(_, h)| serde_json::from_str(h).unwrap())
        })
        .collect()
}

/// Starts `serve` expecting a refusal: (exit status, stderr). Panics if it keeps running.
fn refused_start(d: &Daemon) -> (i32, String) {
    let err = d.path().join("refused.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(d.path().join("config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started: {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.code().unwrap_or(-1), std::fs::read_to_string(&err).unwrap())
}

/// pkcs11-tool on the daemon's token (an independent PKCS#11 client): its stdout.
fn pkcs11_tool(d: &Daemon, args: &[&str]) -> String {
    let config = std::fs::read_to_string(d.path().join("config.toml")).unwrap();
    let module = config
        .lines()
        .find_map(|l| l.strip_prefix("module = "))
        .map(|m| m.trim_matches('"').to_owned())
        .expect("module in config.toml");
    let pin = std::fs::read_to_string(d.path().join("hsm-pin")).unwrap();
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", d.path().join("softhsm2.conf"))
        .args(["--module", &module, "--token-label", "hcert-dev", "--login", "--pin", pin.trim()])
        .args(args)
        .output()
        .expect("run pkcs11-tool (apt-get install opensc)");
    assert!(out.status.success(), "pkcs11-tool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The labels of the token's objects of `kind` (`privkey`, `pubkey`).
fn labels(d: &Daemon, kind: &str) -> Vec<String> {
    pkcs11_tool(d, &["--list-objects", "--type", kind])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("label:").map(|s| s.trim().to_owned()))
        .collect()
}

/// Another P-256 key's public half, PEM.
fn other_key_pem() -> String {
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    p256::SecretKey::from_slice(&[5; 32]).unwrap().public_key().to_public_key_pem(LineEnding::LF).unwrap()
}

/// The number of entries of the stopped daemon's audit log, checked with the pinned key.
fn entries(d: &Daemon, pem: &Path) -> u64 {
    let config = d.path().join("config.toml");
    let (ok, report, err) =
        audit_verify(&[os("--config".as_ref()), os(&config), os("--audit-key".as_ref()), os(pem)]);
    assert!(ok, "{report} {err}");
    report["summary"]["entries"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_back_to_a_checkpoint_fails_against_the_published_heads() {
    let mut d = Daemon::init();
    d.append_config("\n[audit]\ncheckpoint_secs = 1\n");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut issuer = d.client("issuer").await;
    // Signatures a checkpoint apart: several checkpoints in the log.
    for i in 0..4 {
        let r = issuer.post("/v1/sign", &json!({"records": records(&format!("c{i}-"), 2)})).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Issuers do not get the heads; officers do, a bounded page at a time.
    let denied = issuer.get("/v1/audit/checkpoints").await.unwrap();
    assert_eq!(denied.status, 403);
    let mut o1 = d.client("officer1").await;
    let page = o1.get("/v1/audit/checkpoints").await.unwrap();
    assert_eq!(page.status, 200, "{:?}", page.body);
    let page_body = page.body.clone();
    let page = page.json().unwrap();
    let served = page["checkpoints"].as_array().unwrap().clone();
    assert!(served.len() >= 3, "several checkpoints: {page}");
    assert_eq!(page["next"], Value::Null);
    let first = o1.get("/v1/audit/checkpoints?limit=1").await.unwrap().json().unwrap();
    assert_eq!(first["checkpoints"], json!([served[0]]));
    assert_eq!(first["next"], served[1]["seq"]);
    let bad = o1.get("/v1/audit/checkpoints?limit=5000").await.unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json().unwrap()["error"]["code"], "bad_query");
    // The journal lines carry the very same heads.
    let logged = logged_heads(&d);
    for h in &served {
        assert!(logged.contains(h), "{h} not in the daemon's log lines");
    }

    let pem = d.path().join("state/audit-key.pem");
    let route_file = d.path().join("checkpoints.json");
    std::fs::write(&route_file, &page_body).unwrap();
    // The running appliance's log agrees with what it published (the API as the source).
    let profile = d.path().join("officer1.toml");
    let (ok, report, err) = audit_verify(&[
        os("--profile".as_ref()),
        os(&profile),
        os("--audit-key".as_ref()),
        os(&pem),
        os("--anchor".as_ref()),
        os(&route_file),
    ]);
    assert!(ok, "{report} {err}");
    assert_eq!(report["summary"]["published_checked"], served.len(), "{report}");

    // One more signature, then stop: the timer's or the shutdown's checkpoint covers it.
    let r = issuer.post("/v1/sign", &json!({"records": records("last-", 1)})).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(d.terminate(), Some(0));
    // Every head the daemon published, as JSON lines.
    let logged = logged_heads(&d);
    assert!(logged.len() > served.len(), "the checkpoint over the last signature is published too");
    let lines_file = d.path().join("anchors.jsonl");
    std::fs::write(&lines_file, logged.iter().map(|h| format!("{h}\n")).collect::<String>()).unwrap();
    let last = logged.last().unwrap()["seq"].as_u64().unwrap();
    let earlier = served[0]["seq"].as_u64().unwrap();

    let state = d.path().join("state");
    let check = |store: &Path, anchor: Option<&Path>| {
        let mut args = vec![os("--store".as_ref()), os(store), os("--audit-key".as_ref()), os(&pem)];
        if let Some(a) = anchor {
            args.extend([os("--anchor".as_ref()), os(a)]);
        }
        audit_verify(&args)
    };
    // The intact log passes against both forms of the published heads.
    for anchor in [&lines_file, &route_file] {
        let (ok, report, err) = check(&state.join("store"), Some(anchor));
        assert!(ok, "{report} {err}");
        assert_eq!(report["summary"]["entries"], last, "the log ends with the shutdown checkpoint");
    }

    // Cut back to just after an earlier checkpoint (a copy): the chain alone still verifies…
    let after_cp = d.path().join("cut-after/store");
    copy_dir(&state.join("store"), &after_cp);
    cut(&after_cp, earlier);
    let (ok, report, err) = check(&after_cp, None);
    assert!(ok, "without an anchor the cut log verifies: {report}");
    assert_eq!(report["summary"]["unanchored"], 0, "{report}");
    assert!(err.contains("without --anchor"), "{err}");
    // …the published heads do not.
    let (ok, report, err) = check(&after_cp, Some(&lines_file));
    assert!(!ok, "{report}");
    let want = format!(
        "the log ends at entry {earlier} but checkpoint {last} was published: entries {}..{last} are missing",
        earlier + 1
    );
    assert_eq!(report["error"], want, "{report}");
    assert_eq!(report["entry"], earlier + 1);
    assert!(err.contains(&want), "{err}");

    // Cut to just before the last checkpoint (another copy).
    let before_last = d.path().join("cut-before/store");
    copy_dir(&state.join("store"), &before_last);
    cut(&before_last, last - 1);
    assert!(check(&before_last, None).0, "without an anchor the cut log verifies");
    let (ok, report, _) = check(&before_last, Some(&lines_file));
    assert!(!ok, "{report}");
    assert_eq!(
        report["error"],
        format!(
            "the log ends at entry {} but checkpoint {last} was published: entries {last}..{last} are missing",
            last - 1
        ),
        "{report}"
    );

    // A head forged for the pinned key is refused before the log is even read.
    let mut forged: Value = logged[0].clone();
    forged["hash"] = json!("00".repeat(32));
    let forged_file = d.path().join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let (ok, report, _) = check(&state.join("store"), Some(&forged_file));
    assert!(!ok);
    assert!(
        report["error"].as_str().unwrap().contains("does not verify with the pinned audit key"),
        "{report}"
    );

    // Checked against another audit key (one swapped in with its own audit-key.pem): the heads
    // name the key they were signed by.
    let other_pem = d.path().join("other-key.pem");
    std::fs::write(&other_pem, other_key_pem()).unwrap();
    let (ok, report, _) = audit_verify(&[
        os("--store".as_ref()),
        os(&state.join("store")),
        os("--audit-key".as_ref()),
        os(&other_pem),
        os("--anchor".as_ref()),
        os(&lines_file),
    ]);
    assert!(!ok);
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("was signed by audit key sha256") && error.contains("but the pinned audit key is"),
        "{report}"
    );

    // The real store cut and the daemon started on it: it grows a new tail, which the running
    // appliance's log (the API as the source) cannot make agree with the published heads.
    cut(&state.join("store"), earlier);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, report, err) = audit_verify(&[
        os("--profile".as_ref()),
        os(&profile),
        os("--audit-key".as_ref()),
        os(&pem),
        os("--anchor".as_ref()),
        os(&lines_file),
    ]);
    assert!(!ok, "{report} {err}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("are missing") || error.contains("disagrees with published checkpoint"),
        "{report}"
    );
    assert_eq!(d.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_key_is_pinned_to_the_first_start() {
    let mut d = Daemon::start();
    assert_eq!(d.terminate(), Some(0));
    let state = d.path().join("state");
    let pem = state.join("audit-key.pem");
    let recorded = std::fs::read_to_string(&pem).unwrap();
    let mut before = entries(&d, &pem);

    // Another key's public half in audit-key.pem: refused, naming both fingerprints.
    let other = other_key_pem();
    std::fs::write(&pem, &other).unwrap();
    let (code, err) = refused_start(&d);
    assert_eq!(code, 78, "{err}");
    let fingerprint = |text: &str| {
        use p256::pkcs8::DecodePublicKey as _;
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(text).unwrap();
        hcert_signer::audit::anchor::key_sha256(&key)
    };
    assert!(err.contains("is not the one recorded in"), "{err}");
    assert!(err.contains(&fingerprint(&recorded)) && err.contains(&fingerprint(&other)), "{err}");
    assert_eq!(std::fs::read_to_string(&pem).unwrap(), other, "audit-key.pem is never rewritten");
    std::fs::write(&pem, &recorded).unwrap();
    assert_eq!(entries(&d, &pem), before, "nothing was written to the log");

    // The state directory wiped on this (used) token: refused, nothing bootstrapped.
    let kept = d.path().join("state.kept");
    std::fs::rename(&state, &kept).unwrap();
    let (code, err) = refused_start(&d);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("audit-key.pem is missing but the token already holds the audit key"), "{err}");
    assert!(err.contains("state directory was wiped") && err.contains("fresh token"), "{err}");
    assert!(!pem.exists(), "audit-key.pem is not rewritten from the HSM");
    {
        use hcert_signer::store::{Store, StoreOptions};
        let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
        let store = Store::open(&state.join("store"), options).unwrap();
        assert_eq!(store.audit_head().unwrap().0, 0, "nothing was written to the new store's log");
        assert!(store.key_records().unwrap().is_empty(), "no key was bootstrapped");
    }
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::rename(&kept, &state).unwrap();

    // Only the store removed, audit-key.pem kept (on PostgreSQL: [store] pointed at an empty
    // database): refused, nothing bootstrapped from the configuration.
    let kept_store = d.path().join("store.kept");
    std::fs::rename(state.join("store"), &kept_store).unwrap();
    let (code, err) = refused_start(&d);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("the store holds no audit log") && err.contains("the store was removed or replaced"),
        "{err}"
    );
    {
        use hcert_signer::store::{Store, StoreOptions};
        let options = StoreOptions { min_free_bytes: 0, ..StoreOptions::default() };
        let store = Store::open(&state.join("store"), options).unwrap();
        assert_eq!(store.audit_head().unwrap().0, 0, "nothing was written to the new store's log");
        assert!(store.key_records().unwrap().is_empty(), "no key was bootstrapped");
        assert!(store.csca_records().unwrap().is_empty(), "no CSCA was recorded from the configuration");
    }
    std::fs::remove_dir_all(state.join("store")).unwrap();
    std::fs::rename(&kept_store, state.join("store")).unwrap();
    assert_eq!(entries(&d, &pem), before, "the kept store's log is untouched");

    // audit-key.pem lost with the log and the token's key intact (a cluster's further node is
    // the same case): the log's own checkpoints vouch for the token's key, pinned as it was.
    std::fs::remove_file(&pem).unwrap();
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    assert_eq!(d.terminate(), Some(0));
    assert_eq!(std::fs::read_to_string(&pem).unwrap(), recorded, "the same key, pinned again");
    assert!(d.log_text().contains("pinned the cluster's audit key"), "{}", d.log_text());
    assert!(entries(&d, &pem) > before, "the start is in the log");
    before = entries(&d, &pem);

    // The file removed and the log edited (an entry's text changed, as with the disk): the log
    // no longer vouches for any key, so nothing is pinned and the start is refused.
    let kept_store = d.path().join("store.kept");
    copy_dir(&state.join("store"), &kept_store);
    {
        let db = sled::Config::new()
            .path(state.join("store"))
            .segment_size(hcert_signer::store::sled::SEGMENT_SIZE)
            .open()
            .unwrap();
        let tree = db.open_tree("audit").unwrap();
        let v = tree.get(1u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let text = String::from_utf8_lossy(&v[32..]).replacen("\"event\":\"", "\"event\":\"x", 1);
        tree.insert(1u64.to_be_bytes(), [&v[..32], text.as_bytes()].concat()).unwrap();
        db.flush().unwrap();
    }
    std::fs::rename(&pem, state.join("audit-key.pem.kept")).unwrap();
    let (code, err) = refused_start(&d);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("does not verify under the token's audit key"), "{err}");
    assert!(!pem.exists(), "nothing pinned from a log that does not verify");
    std::fs::rename(state.join("audit-key.pem.kept"), &pem).unwrap();
    std::fs::remove_dir_all(state.join("store")).unwrap();
    std::fs::rename(&kept_store, state.join("store")).unwrap();
    assert_eq!(entries(&d, &pem), before, "the log as it was");

    // The audit key deleted from the token: refused, and no new key is made.
    assert!(labels(&d, "privkey").iter().any(|l| l == "hcert-audit"));
    for kind in ["privkey", "pubkey"] {
        pkcs11_tool(&d, &["--delete-object", "--type", kind, "--label", "hcert-audit"]);
    }
    let (code, err) = refused_start(&d);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("the audit key \"hcert-audit\" is missing from the HSM"), "{err}");
    assert!(err.contains("never made again silently"), "{err}");
    // Also without the recorded public half: the store's log shows a key existed.
    std::fs::rename(&pem, state.join("audit-key.pem.kept")).unwrap();
    let (code, err) = refused_start(&d);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("the store's audit log was signed by it"), "{err}");
    std::fs::rename(state.join("audit-key.pem.kept"), &pem).unwrap();
    for kind in ["privkey", "pubkey"] {
        assert!(!labels(&d, kind).iter().any(|l| l == "hcert-audit"), "a new audit key was made");
    }
    assert_eq!(std::fs::read_to_string(&pem).unwrap(), recorded);
    assert_eq!(entries(&d, &pem), before, "nothing was written to the log");

    // The one start that made the key said so.
    assert_eq!(d.log_text().matches("first start: generated the audit key").count(), 1, "{}", d.log_text());
}
