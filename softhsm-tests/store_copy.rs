//! `hcert-signer store copy`: one appliance on sled grows into a cluster on PostgreSQL. A
//! daemon on sled leaves every kind of state behind (a batch signed to the end, one accepted
//! under an idempotency key, one deleted, a rotation with one officer's approval, a batch
//! pending when it was killed); the copy moves it into a scratch PostgreSQL sharing the token;
//! a daemon started there finishes the work as if nothing had happened, and the sled files are
//! byte for byte as they were. Each refusal is tested too, with the target left empty.

mod daemon;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use daemon::{BIN, Daemon, TestStore, audit_verify, copy_dir, records, wait_done};
use hcert_signer::client::ApiClient;
use hcert_signer::store::postgres::ScratchCluster;
use http::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// SHA-256 of every file under `dir`, by path.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read the store directory") {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(hashes(&e.path()));
        } else {
            out.insert(e.path(), hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap())));
        }
    }
    out
}

/// `hcert-signer store copy --from … --to …`: (exit success, stdout JSON or null, stderr).
fn store_copy(from: &Path, to: &Path) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .args(["store", "copy", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .expect("run store copy");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), report, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A scratch PostgreSQL, started on a thread of its own (its synchronous client cannot run
/// inside the test's runtime).
fn scratch_postgres() -> ScratchCluster {
    std::thread::spawn(ScratchCluster::start)
        .join()
        .expect("start a scratch PostgreSQL")
        .expect("a scratch PostgreSQL (Debian package postgresql)")
}

/// `config.toml` of `d` rewritten: another state directory, and with `store` a `[store]` table
/// (replacing none: dev-init on sled writes none).
fn variant(d: &Daemon, name: &str, state: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(d.path().join("config.toml")).unwrap();
    let old_state = format!("state_dir = {:?}", d.path().join("state").display().to_string());
    assert!(text.contains(&old_state), "dev-init's state_dir line: {text}");
    assert!(!text.contains("\n[store]"), "dev-init on sled writes no [store] table");
    let new_state = format!("state_dir = {:?}", d.path().join(state).display().to_string());
    let path = d.path().join(name);
    std::fs::write(&path, format!("{}\n{extra}", text.replace(&old_state, &new_state))).unwrap();
    path
}

/// The `[store]` table of a node on `cluster`.
fn on_postgres(cluster: &ScratchCluster) -> String {
    format!(
        "[store]\nbackend = \"postgres\"\nurl = {:?}\npassword_file = {:?}\n",
        cluster.url(),
        cluster.password_file().display().to_string()
    )
}

/// The audit entries the store of `config` holds, verified with the sled appliance's audit key.
fn audit_entries(config: &Path, audit_key: &Path) -> u64 {
    let (ok, report, stderr) = audit_verify(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--audit-key".as_ref(),
        audit_key.as_os_str(),
    ]);
    assert!(ok && report["ok"] == true, "{report} {stderr}");
    report["summary"]["entries"].as_u64().unwrap()
}

async fn ok(reply: hcert_signer::client::Reply, what: &str) -> Value {
    assert!(reply.status.is_success(), "{what}: {} {}", reply.status, String::from_utf8_lossy(&reply.body));
    reply.json().unwrap_or(Value::Null)
}

/// officer1 generates, certifies and imports `label`, and approves it once: a rotation waiting
/// for the second officer.
async fn half_approved_rotation(d: &Daemon, o1: &mut ApiClient, label: &str) {
    ok(o1.post("/v1/keys", &json!({"label": label})).await.unwrap(), "generate").await;
    let csr = o1
        .post(&format!("/v1/keys/{label}/csr"), &json!({"subject": format!("C=VN,O=MoH,CN=DSC {label}")}))
        .await
        .unwrap();
    assert_eq!(csr.status, 200, "{}", String::from_utf8_lossy(&csr.body));
    let pem = d.certify_csr(&csr.body);
    let path = format!("/v1/keys/{label}/certificate");
    ok(
        o1.request_typed(Method::PUT, &path, "application/x-pem-file", pem.into_bytes()).await.unwrap(),
        "import",
    )
    .await;
    let first =
        ok(o1.request(Method::POST, &format!("/v1/keys/{label}/approve"), None).await.unwrap(), "approve")
            .await;
    assert_eq!((first["state"].as_str(), first["approvals_missing"].as_u64()), (Some("certified"), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_appliance_moves_to_postgres_and_goes_on_where_it_stopped() {
    let mut d = Daemon::init_on(TestStore::Sled);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let (mut issuer, mut o1) = (d.client("issuer").await, d.client("officer1").await);

    // A batch signed to the end, its results as the issuer fetched them.
    let r = issuer.post("/v1/batches", &json!({"records": records("done-", 40)})).await.unwrap();
    let done: String = ok(r, "submit").await["batch_id"].as_str().unwrap().into();
    wait_done(&mut issuer, &done, Duration::from_secs(120)).await;
    let done_results = issuer.get(&format!("/v1/batches/{done}/results")).await.unwrap().body;
    // One under an idempotency key, one deleted (a tombstone), a rotation half approved.
    let keyed_body = json!({"idempotency_key": "k-copy", "records": records("keyed-", 30)});
    let keyed: String = ok(issuer.post("/v1/batches", &keyed_body).await.unwrap(), "keyed").await["batch_id"]
        .as_str()
        .unwrap()
        .into();
    let deleted_body = json!({"idempotency_key": "k-gone", "records": records("gone-", 5)});
    let deleted: String =
        ok(issuer.post("/v1/batches", &deleted_body).await.unwrap(), "to delete").await["batch_id"]
            .as_str()
            .unwrap()
            .into();
    wait_done(&mut issuer, &deleted, Duration::from_secs(120)).await;
    assert_eq!(issuer.delete(&format!("/v1/batches/{deleted}")).await.unwrap().status, 200);
    half_approved_rotation(&d, &mut o1, "dsc-2").await;
    // A large batch, and the power cut right after its 202: most of it still pending.
    let r = issuer.post("/v1/batches", &json!({"records": records("big-", 8000)})).await.unwrap();
    let big: String = ok(r, "big batch").await["batch_id"].as_str().unwrap().into();
    d.kill9();
    drop((issuer, o1));

    let sled_store = d.path().join("state/store");
    let sled_config = d.path().join("config.toml");
    let audit_key = d.path().join("state/audit-key.pem");
    let before = hashes(&sled_store);
    let cluster = scratch_postgres();
    let pg_config = variant(&d, "config-pg.toml", "state-pg", &on_postgres(&cluster));

    let (copied, report, stderr) = store_copy(&sled_config, &pg_config);
    assert!(copied, "store copy: {stderr}");
    assert_eq!(hashes(&sled_store), before, "the sled store is byte for byte as it was");
    let counts = &report["counts"];
    assert_eq!(counts["batches"], 3, "done, keyed and big (the deleted one is gone): {report}");
    assert_eq!(counts["tombstones"], 1, "{report}");
    assert_eq!(counts["idempotency_keys"], 1, "{report}");
    assert!(counts["keys"].as_u64().unwrap() >= 2, "the bootstrap DSC and dsc-2: {report}");
    let pending = counts["records_pending"].as_u64().unwrap();
    assert!(pending > 0, "the killed daemon left records pending: {report}");
    assert_eq!(pending + counts["records_done"].as_u64().unwrap(), 40 + 30 + 8000, "{report}");
    assert!(stderr.contains("audit entries") && stderr.contains("batches"), "{stderr}");
    assert!(!stderr.contains(&std::fs::read_to_string(cluster.password_file()).unwrap().trim().to_owned()));
    assert!(d.path().join("state-pg/audit-key.pem").exists(), "the pinned audit key, for the nodes");

    // Both chains verify and end at the same entry.
    let head = report["head"]["seq"].as_u64().unwrap();
    assert_eq!(report["entries_copied"], head);
    assert_eq!(audit_entries(&sled_config, &audit_key), head);
    assert_eq!(audit_entries(&pg_config, &audit_key), head);

    // The appliance, now on PostgreSQL: the same ports, token and certificates.
    std::fs::rename(&sled_config, d.path().join("config-sled.toml")).unwrap();
    std::fs::rename(&pg_config, &sled_config).unwrap();
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let (mut issuer, mut o2) = (d.client("issuer").await, d.client("officer2").await);
    let status = wait_done(&mut issuer, &big, Duration::from_secs(600)).await;
    assert_eq!((status["total"].as_u64(), status["signed"].as_u64()), (Some(8000), Some(8000)), "{status}");
    let big_lines = issuer.get(&format!("/v1/batches/{big}/results")).await.unwrap().body;
    assert_eq!(String::from_utf8_lossy(&big_lines).lines().count(), 8000, "one result per record");
    assert_eq!(
        issuer.get(&format!("/v1/batches/{done}/results")).await.unwrap().body,
        done_results,
        "the done batch's results, byte for byte"
    );
    let replay = issuer.post("/v1/batches", &keyed_body).await.unwrap();
    let replay = ok(replay, "replay").await;
    assert_eq!(
        (replay["batch_id"].as_str(), replay["replayed"].as_bool()),
        (Some(keyed.as_str()), Some(true))
    );
    wait_done(&mut issuer, &keyed, Duration::from_secs(120)).await;
    let gone = issuer.post("/v1/batches", &deleted_body).await.unwrap();
    assert_eq!(gone.status, 410, "the tombstone was copied: {:?}", gone.body);
    let active = ok(o2.request(Method::POST, "/v1/keys/dsc-2/approve", None).await.unwrap(), "approve").await;
    assert_eq!(active["state"], "active", "the second officer completes the rotation: {active}");
    drop((issuer, o2));
    assert_eq!(d.terminate(), Some(0));
    // `config.toml` is the PostgreSQL one now.
    assert!(audit_entries(&sled_config, &audit_key) > head, "the chain goes on from the copied head");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_refuses_and_leaves_the_target_empty() {
    let mut d = Daemon::init_on(TestStore::Sled);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut issuer = d.client("issuer").await;
    let r = issuer.post("/v1/batches", &json!({"records": records("r-", 20)})).await.unwrap();
    let id: String = ok(r, "submit").await["batch_id"].as_str().unwrap().into();
    wait_done(&mut issuer, &id, Duration::from_secs(120)).await;
    drop(issuer);

    let sled_store = d.path().join("state/store");
    let sled_config = d.path().join("config.toml");
    let audit_key = d.path().join("state/audit-key.pem");
    let cluster = scratch_postgres();
    let pg_config = variant(&d, "config-pg.toml", "state-pg", &on_postgres(&cluster));
    let pg_pem = d.path().join("state-pg/audit-key.pem");
    let empty = |what: &str| {
        assert_eq!(audit_entries(&pg_config, &audit_key), 0, "{what}: the target stayed empty");
        assert!(!pg_pem.exists(), "{what}: nothing written for the nodes");
        assert!(!pg_pem.parent().unwrap().exists(), "{what}: not even its state directory");
    };
    let refused = |from: &Path, to: &Path, expect: &str| {
        let (copied, _, stderr) = store_copy(from, to);
        assert!(!copied, "{expect}: refused");
        assert!(stderr.contains("store copy refused") && stderr.contains(expect), "{expect}: {stderr}");
    };

    // A running daemon holds its store.
    let before = hashes(&sled_store);
    refused(&sled_config, &pg_config, "in use by a running daemon");
    empty("running daemon");
    assert_eq!(d.terminate(), Some(0));
    let before_stopped = hashes(&sled_store);

    // The same store on both sides.
    refused(&sled_config, &sled_config, "the same store");
    // Another KEK, another token.
    let other_kek = variant(
        &d,
        "config-pg-kek.toml",
        "state-pg",
        &format!("{}kek_label = \"another-kek\"\n", on_postgres(&cluster)),
    );
    refused(&sled_config, &other_kek, "different KEK labels");
    let text = std::fs::read_to_string(&pg_config).unwrap();
    let other_token = d.path().join("config-pg-token.toml");
    std::fs::write(
        &other_token,
        text.replace("token_label = \"hcert-dev\"", "token_label = \"hcert-other\""),
    )
    .unwrap();
    refused(&sled_config, &other_token, "different HSM tokens");
    empty("another KEK or token");

    // A source whose chain does not verify: one entry of a copy edited.
    let tampered_config = variant(&d, "config-tampered.toml", "tampered", "");
    copy_dir(&d.path().join("state"), &d.path().join("tampered"));
    {
        let dir = d.path().join("tampered/store");
        let db = sled::Config::new()
            .path(&dir)
            .segment_size(hcert_signer::store::sled::SEGMENT_SIZE)
            .open()
            .unwrap();
        let tree = db.open_tree("audit").unwrap();
        let (k, v) = tree.iter().nth(2).unwrap().unwrap();
        let mut edited = v.to_vec();
        let last = edited.len() - 2;
        edited[last] ^= 1;
        tree.insert(k, edited).unwrap();
        db.flush().unwrap();
    }
    refused(&tampered_config, &pg_config, "audit chain does not verify");
    empty("a broken chain");
    assert_eq!(hashes(&sled_store), before_stopped, "refusals touch no file of the sled store");
    assert_eq!(before.keys().collect::<Vec<_>>(), before_stopped.keys().collect::<Vec<_>>());

    // A target that is not empty: the copy done once, a second one is refused.
    let (copied, report, stderr) = store_copy(&sled_config, &pg_config);
    assert!(copied, "{stderr}");
    let head = report["head"]["seq"].as_u64().unwrap();
    refused(&sled_config, &pg_config, "not empty");
    assert_eq!(audit_entries(&pg_config, &audit_key), head, "the refused copy changed nothing");
    drop(cluster);
}
