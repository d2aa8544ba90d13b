//! The audit log of a real run: `hcert-signer audit verify` passes, and names the first bad
//! entry after an entry is edited, deleted, or two are swapped (on copies of the store); the
//! revocation export carries the EU hashes of the signatures it names.

mod daemon;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use daemon::{BIN, Daemon, TestStore, audit_verify, copy_dir, records, wait_done};
use hcert_signer::store::postgres::PgSettings;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// sled opened directly on a store directory (with the store's segment size, which sled
/// requires to match).
fn open_sled(dir: &Path) -> sled::Db {
    sled::Config::new().path(dir).segment_size(hcert_signer::store::sled::SEGMENT_SIZE).open().unwrap()
}

/// The stopped daemon's stored audit chain, as an administrator with the database's
/// credentials can edit it: sled's `audit` tree, or PostgreSQL's `audit` table.
enum StoredChain {
    Sled { state: PathBuf, audit_key: PathBuf },
    Postgres { settings: Box<PgSettings>, config: PathBuf },
}

impl StoredChain {
    fn of(d: &Daemon) -> StoredChain {
        let state = d.path().join("state");
        match d.store {
            TestStore::Sled => StoredChain::Sled { audit_key: state.join("audit-key.pem"), state },
            TestStore::Postgres => StoredChain::Postgres {
                settings: Box::new(d.cluster.as_ref().unwrap().settings(1).unwrap()),
                config: d.path().join("config.toml"),
            },
        }
    }

    /// Every stored entry by sequence number.
    fn entries(&self) -> BTreeMap<u64, Vec<u8>> {
        match self {
            StoredChain::Sled { state, .. } => read_tree(&state.join("store")),
            StoredChain::Postgres { settings, .. } => on_thread(|| {
                let mut db = settings.connect().unwrap();
                let rows = db.query("SELECT seq, stored FROM audit ORDER BY seq", &[]).unwrap();
                rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect()
            }),
        }
    }

    /// `audit verify` on the chain with `edit` applied: on a copy of sled's store (named
    /// `name`), or in PostgreSQL's table, put back as it was afterwards.
    fn check_edited(&self, name: &str, edit: impl FnOnce(&mut BTreeMap<u64, Vec<u8>>)) -> (bool, Value) {
        let before = self.entries();
        let mut after = before.clone();
        edit(&mut after);
        match self {
            StoredChain::Sled { state, audit_key } => {
                let dir = state.parent().unwrap().join(name).join("store");
                copy_dir(&state.join("store"), &dir);
                {
                    let db = open_sled(&dir);
                    let tree = db.open_tree("audit").unwrap();
                    for seq in before.keys().filter(|s| !after.contains_key(s)) {
                        tree.remove(seq.to_be_bytes()).unwrap();
                    }
                    for (seq, v) in after.iter().filter(|(s, v)| before.get(s) != Some(v)) {
                        tree.insert(seq.to_be_bytes(), v.as_slice()).unwrap();
                    }
                    db.flush().unwrap();
                }
                let (ok, report, _) = audit_verify(&[
                    "--store".as_ref(),
                    dir.as_os_str(),
                    "--audit-key".as_ref(),
                    audit_key.as_os_str(),
                ]);
                (ok, report)
            }
            StoredChain::Postgres { config, .. } => {
                self.write_pg(&before, &after);
                let (ok, report, _) = audit_verify(&["--config".as_ref(), config.as_os_str()]);
                self.write_pg(&after, &before);
                (ok, report)
            }
        }
    }

    /// Turns the table's rows from `from` into `to`, in one transaction.
    fn write_pg(&self, from: &BTreeMap<u64, Vec<u8>>, to: &BTreeMap<u64, Vec<u8>>) {
        let StoredChain::Postgres { settings, .. } = self else { unreachable!() };
        on_thread(|| {
            let mut db = settings.connect().unwrap();
            let mut tx = db.transaction().unwrap();
            for seq in from.keys().filter(|s| !to.contains_key(s)) {
                tx.execute("DELETE FROM audit WHERE seq = $1", &[&(*seq as i64)]).unwrap();
            }
            for (seq, v) in to.iter().filter(|(s, v)| from.get(s) != Some(v)) {
                let checkpoint = String::from_utf8_lossy(&v[32..]).contains("\"event\":\"checkpoint\"");
                tx.execute(
                    "INSERT INTO audit (seq, stored, checkpoint) VALUES ($1, $2, $3) \
                     ON CONFLICT (seq) DO UPDATE SET stored = excluded.stored, checkpoint = excluded.checkpoint",
                    &[&(*seq as i64), v, &checkpoint],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        });
    }
}

/// The audit tree of a sled store directory, read from a copy (opening sled writes to it).
fn read_tree(store: &Path) -> BTreeMap<u64, Vec<u8>> {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(store, copy.path());
    let db = open_sled(copy.path());
    let tree = db.open_tree("audit").unwrap();
    tree.iter()
        .map(|e| e.unwrap())
        .map(|(k, v)| (u64::from_be_bytes(k.as_ref().try_into().unwrap()), v.to_vec()))
        .collect()
}

/// Runs `f` on a thread of its own: PostgreSQL's synchronous client cannot run inside the
/// test's runtime.
fn on_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// The content `openssl cms -verify` finds in a CMS SignedData (signature checked, chain not
/// built), exactly as signed (`-binary`: no line-ending translation).
fn openssl_cms_content(dir: &Path, der: &[u8]) -> Vec<u8> {
    let input = dir.join("upload.cms.der");
    std::fs::write(&input, der).unwrap();
    let out = Command::new("openssl")
        .args(["cms", "-verify", "-noverify", "-binary", "-inform", "DER", "-in"])
        .arg(&input)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A batch holds to the EU gateway's `RevocationBatchDto` field list: `country` (2 letters),
/// `expires`, `kid` (11–12 characters), `hashType`, `entries` (1–1,000 of `{hash}`, 24
/// characters of base64), and nothing else.
fn gateway_dto(batch: &Value) {
    let fields: Vec<&str> = batch.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = fields.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["country", "entries", "expires", "hashType", "kid"], "{batch}");
    assert_eq!(batch["country"].as_str().unwrap().len(), 2);
    assert!(
        time::OffsetDateTime::parse(
            batch["expires"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
    assert!((11..=12).contains(&batch["kid"].as_str().unwrap().len()), "{batch}");
    assert!(["UCI", "SIGNATURE", "COUNTRYCODEUCI"].contains(&batch["hashType"].as_str().unwrap()));
    let entries = batch["entries"].as_array().unwrap();
    assert!((1..=1000).contains(&entries.len()));
    for e in entries {
        assert_eq!(e.as_object().unwrap().len(), 1, "{e}");
        assert_eq!(B64.decode(e["hash"].as_str().unwrap()).unwrap().len(), 16, "{e}");
    }
}

/// The `revocation-NNN.json` files of an export folder, in order.
fn read_batches(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files.iter().map(|f| serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_then_names_the_first_tampered_entry() {
    let mut d = Daemon::start();
    let mut issuer = d.client("issuer").await;
    let r = issuer.post("/v1/batches", &json!({"records": records("a-", 600)})).await.unwrap();
    assert_eq!(r.status, 202);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    wait_done(&mut issuer, &id, Duration::from_secs(300)).await;
    let sync = issuer.post("/v1/sign", &json!({"records": records("s-", 3)})).await.unwrap();
    assert_eq!(sync.status, 200);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&issuer.get(&format!("/v1/batches/{id}/results")).await.unwrap().body)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let mut o1 = d.client("officer1").await;
    assert_eq!(o1.post("/v1/keys", &json!({"label": "dsc-next"})).await.unwrap().status, 201);
    // From the running appliance: the same batches, each CMS-signed by the upload key.
    let api_out = d.path().join("revocation-api");
    let rev = Command::new(BIN)
        .args(["audit", "revocation", "--profile"])
        .arg(d.path().join("officer1.toml"))
        .args(["--batch", &id, "--out"])
        .arg(&api_out)
        .output()
        .unwrap();
    assert!(rev.status.success(), "{}", String::from_utf8_lossy(&rev.stderr));
    let api_batches = read_batches(&api_out);
    assert_eq!(api_batches.len(), 3, "600 UCI, 600 SIGNATURE and 600 COUNTRYCODEUCI hashes: one batch each");
    for (i, batch) in api_batches.iter().enumerate() {
        // The gateway's upload body: the CMS in base64, whose content is the .json file itself.
        let cms = std::fs::read_to_string(api_out.join(format!("revocation-{:03}.cms", i + 1))).unwrap();
        let der = B64.decode(cms.trim_end()).expect("the .cms file is base64 (application/cms)");
        let signed = openssl_cms_content(d.path(), &der);
        let file = std::fs::read(api_out.join(format!("revocation-{:03}.json", i + 1))).unwrap();
        assert_eq!(signed, file, "revocation-{:03}.json is the signed content, byte for byte", i + 1);
        assert_eq!(&serde_json::from_slice::<Value>(&signed).unwrap(), batch);
        gateway_dto(batch);
    }
    assert_eq!(d.terminate(), Some(0));

    // The real run verifies, and counts every signature.
    let config = d.path().join("config.toml");
    let (ok, report, _) = audit_verify(&["--config".as_ref(), config.as_os_str()]);
    assert!(ok, "{report}");
    assert_eq!(report["summary"]["signatures"], 603, "{report}");
    assert_eq!(report["summary"]["unanchored"], 0, "a checkpoint is written at shutdown: {report}");
    let entries = report["summary"]["entries"].as_u64().unwrap();
    assert!(entries >= 6, "{report}");

    // Tampering with the stored chain: each edit is checked on its own, the chain as it was
    // otherwise (a copy of sled's store; PostgreSQL's audit table, restored after each check).
    let chain = StoredChain::of(&d);
    let original = chain.entries();
    assert_eq!(original.len() as u64, entries);
    // The first signature entry.
    let target = *original
        .iter()
        .find(|(_, v)| String::from_utf8_lossy(&v[32..]).contains("\"event\":\"signed\""))
        .unwrap()
        .0;

    let (ok, report) = chain.check_edited("edited", |t| {
        let v = t[&target].clone();
        let text =
            String::from_utf8_lossy(&v[32..]).replace("\"client\":\"issuer\"", "\"client\":\"issue2\"");
        assert_ne!(text.as_bytes(), &v[32..]);
        let mut new = v[..32].to_vec();
        new.extend_from_slice(text.as_bytes());
        t.insert(target, new);
    });
    assert!(!ok);
    assert_eq!(report["entry"], target, "{report}");

    let (ok, report) = chain.check_edited("deleted", |t| {
        t.remove(&target).unwrap();
    });
    assert!(!ok);
    assert_eq!(report["entry"], target, "{report}");
    assert!(report["error"].as_str().unwrap().contains("missing"), "{report}");

    let (ok, report) = chain.check_edited("swapped", |t| {
        let a = t[&target].clone();
        let b = t.insert(target + 1, a).unwrap();
        t.insert(target, b);
    });
    assert!(!ok);
    assert_eq!(report["entry"], target, "{report}");

    // The last entry dropped: the chain alone cannot tell, the checkpoint count does.
    let (ok, report) = chain.check_edited("truncated", |t| {
        t.remove(&entries).unwrap();
    });
    assert!(ok, "{report}");
    assert!(report["summary"]["unanchored"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(chain.entries(), original, "every edit was made on a copy, or undone");

    // Revocation export for the batch: one UCI, one SIGNATURE and one COUNTRYCODEUCI hash per
    // certificate, which are the first 128 bits of SHA-256 over the UVCI, over r, and over the
    // country code followed by the UVCI.
    let out = d.path().join("revocation");
    let rev = Command::new(BIN)
        .args(["audit", "revocation", "--config"])
        .arg(&config)
        .args(["--batch", &id, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(rev.status.success(), "{}", String::from_utf8_lossy(&rev.stderr));
    let mut hashes: BTreeMap<String, std::collections::HashSet<String>> = BTreeMap::new();
    let offline = read_batches(&out);
    assert_eq!(offline, api_batches, "offline and online exports agree");
    for i in 1..=offline.len() {
        let name = format!("revocation-{i:03}.json");
        let bytes = |dir: &Path| std::fs::read(dir.join(&name)).unwrap();
        assert_eq!(bytes(&out), bytes(&api_out), "{name}: the same bytes offline and online");
    }
    for b in &offline {
        assert_eq!(b["country"], "VN");
        gateway_dto(b);
        let set = hashes.entry(b["hashType"].as_str().unwrap().to_owned()).or_default();
        set.extend(b["entries"].as_array().unwrap().iter().map(|e| e["hash"].as_str().unwrap().to_owned()));
    }
    let counts: Vec<(&str, usize)> = hashes.iter().map(|(t, s)| (t.as_str(), s.len())).collect();
    assert_eq!(counts, [("COUNTRYCODEUCI", 600), ("SIGNATURE", 600), ("UCI", 600)]);
    for l in &lines {
        let h = |data: &[u8]| B64.encode(&Sha256::digest(data)[..16]);
        let uvci = l["uvci"].as_str().unwrap();
        assert!(hashes["UCI"].contains(&h(uvci.as_bytes())));
        assert!(hashes["COUNTRYCODEUCI"].contains(&h(format!("VN{uvci}").as_bytes())));
        let cose = hcert_signer::hcert::transport::decode(l["hc1"].as_str().unwrap()).unwrap();
        let parsed = hcert_signer::hcert::cose::parse(&cose).unwrap();
        assert!(hashes["SIGNATURE"].contains(&h(&parsed.signature[..32])), "SIGNATURE hash is over r");
    }

    // One hash type asked for: only its batches.
    let only = d.path().join("revocation-ccuci");
    let rev = Command::new(BIN)
        .args(["audit", "revocation", "--config"])
        .arg(&config)
        .args(["--batch", &id, "--hash-type", "COUNTRYCODEUCI", "--out"])
        .arg(&only)
        .output()
        .unwrap();
    assert!(rev.status.success(), "{}", String::from_utf8_lossy(&rev.stderr));
    let only = read_batches(&only);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["hashType"], "COUNTRYCODEUCI");
}
