//! Personal data is crypto-shredded: someone with a copy of the disk finds none of a batch's
//! names, birth dates, references or certificates under the store directory — not while the
//! batch is stored (encryption at rest), not after DELETE, a restart, or retention — in any
//! normalisation or escaping. And the key-encryption key cannot be swapped: without it the
//! daemon refuses to start (exit 78) instead of making a new one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hcert_signer::config::Config;
use serde_json::{Value, json};
use unicode_normalization::UnicodeNormalization;

use crate::daemon::{Daemon, records, wait_done};

/// Records whose personal data the test chose: distinctive, non-ASCII names (so NFC and NFD
/// differ), birth dates, refs, and for half of them a supplied UVCI.
fn chosen(tag: &str, n: usize) -> (Vec<Value>, Vec<String>) {
    let letter = |i: usize| char::from(b'A' + (i % 26) as u8);
    let mut needles = Vec::new();
    let recs = records("x", n)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let (l, t) = (format!("{}{}", letter(i / 26), letter(i)), tag.to_uppercase());
            let family = format!("Nguyễn-Zéphyr {tag} Ưởng{l}");
            let given = format!("Ánh-Quyên Ỷ{tag}{l}");
            let (fnt, gnt) = (format!("ZEPHYRQX<{t}<UONG<{l}"), format!("ANH<QUYEN<Y{t}{l}"));
            let dob = format!("19{:02}-{:02}-{:02}", 10 + i % 80, 1 + i % 12, 10 + i % 18);
            let r#ref = format!("shred-réf-{tag}-{i}");
            let dcc = &mut r["dcc"];
            dcc["nam"] = json!({"fn": family, "fnt": fnt, "gn": given, "gnt": gnt});
            dcc["dob"] = json!(dob);
            if i % 2 == 1 {
                let uvci = format!("URN:UVCI:01:VN:SHRED{t}Q{i:04}");
                for g in ["v", "t", "r"] {
                    if let Some(e) = dcc.get_mut(g).and_then(|a| a.get_mut(0)).and_then(Value::as_object_mut)
                    {
                        e.insert("ci".into(), json!(uvci));
                    }
                }
                needles.push(uvci);
            }
            r["ref"] = json!(r#ref);
            needles.extend([family, given, fnt, gnt, dob, r#ref]);
            r
        })
        .collect();
    (recs, needles)
}

/// Every form a text can take on disk: NFC and NFD UTF-8, and JSON `\u` escapes of each
/// (lower- and upper-case hex).
fn forms(text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in [text.nfc().collect::<String>(), text.nfd().collect::<String>()] {
        let escape = |upper: bool| {
            s.chars()
                .map(|c| {
                    if c.is_ascii() {
                        c.to_string()
                    } else {
                        let mut units = [0u16; 2];
                        c.encode_utf16(&mut units)
                            .iter()
                            .map(|u| if upper { format!("\\u{u:04X}") } else { format!("\\u{u:04x}") })
                            .collect()
                    }
                })
                .collect::<String>()
        };
        out.extend([s.clone().into_bytes(), escape(false).into_bytes(), escape(true).into_bytes()]);
    }
    out.sort();
    out.dedup();
    out
}

/// The needles of a batch: its chosen texts in every form, plus what its results carry (each
/// UVCI, and a 40-character window of each HC1 string).
fn needles(chosen: &[String], results: &[Value]) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = texts(chosen, results).iter().flat_map(|t| forms(t)).collect();
    all.sort();
    all.dedup();
    assert!(all.iter().all(|n| n.len() >= 8));
    all
}

/// The texts of a batch: those chosen, each result's UVCI and a window of its HC1 string.
fn texts(chosen: &[String], results: &[Value]) -> Vec<String> {
    let mut all = chosen.to_vec();
    for r in results {
        let hc1 = r["hc1"].as_str().expect("hc1");
        all.push(r["uvci"].as_str().expect("uvci").to_owned());
        all.push(hc1[hc1.len() / 2..hc1.len() / 2 + 40].to_owned());
    }
    all
}

/// Which needles occur in which files under `dir` (one pass per file, indexed by each
/// needle's first 8 bytes).
fn search(dir: &Path, needles: &[Vec<u8>]) -> Vec<(PathBuf, String)> {
    let mut by_prefix: HashMap<[u8; 8], Vec<&Vec<u8>>> = HashMap::new();
    for n in needles {
        by_prefix.entry(n[..8].try_into().unwrap()).or_default().push(n);
    }
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !path.is_file() {
                continue; // PostgreSQL's Unix socket
            }
            files += 1;
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // A live server recycles its write-ahead log files while the search runs.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("read {}: {e}", path.display()),
            };
            let mut found = HashSet::new();
            for (at, w) in bytes.windows(8).enumerate() {
                if let Some(cands) = by_prefix.get(<&[u8; 8]>::try_from(w).unwrap()) {
                    for n in cands {
                        if bytes[at..].starts_with(n) && found.insert(*n) {
                            hits.push((path.clone(), String::from_utf8_lossy(n).into_owned()));
                        }
                    }
                }
            }
        }
    }
    assert!(files > 0, "nothing to search under {}", dir.display());
    hits
}

fn assert_no_hits(dir: &Path, needles: &[Vec<u8>], when: &str) {
    let hits = search(dir, needles);
    assert!(
        hits.is_empty(),
        "{when}: {} personal-data needle(s) readable on disk, e.g. {:?}",
        hits.len(),
        &hits[..hits.len().min(5)]
    );
}

/// Where the daemon's store keeps its bytes: sled's directory, or the whole PostgreSQL cluster
/// directory (tables, indexes, write-ahead log, server log).
fn store_dir(d: &Daemon) -> PathBuf {
    match &d.cluster {
        None => Config::load(&d.path().join("config.toml")).expect("config").state_dir.join("store"),
        Some(cluster) => cluster.dir().to_path_buf(),
    }
}

fn ndjson(body: &[u8]) -> Vec<Value> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("line"))
        .collect()
}

/// Submits `recs` under `key`, waits until signed, returns (batch id, results).
async fn sign(d: &Daemon, key: &str, recs: &[Value]) -> (String, Vec<Value>) {
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", &json!({"idempotency_key": key, "records": recs})).await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    let status = wait_done(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(status["signed"], recs.len(), "{status}");
    let results = c.get(&format!("/v1/batches/{id}/results")).await.unwrap();
    assert_eq!(results.status, 200);
    let lines = ndjson(&results.body);
    assert_eq!(lines.len(), recs.len());
    (id, lines)
}

/// Acceptance 2: a batch of chosen personal data, signed through the daemon, is nowhere on disk
/// while stored, after DELETE, after a restart; a second batch purged by retention (the clock
/// moved past the retention period) neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_personal_data_is_never_readable_under_the_store_directory() {
    let mut d = Daemon::start();
    let dir = store_dir(&d);
    let (recs_a, chosen_a) = chosen("alpha", 40);
    let (id_a, results_a) = sign(&d, "shred-a", &recs_a).await;
    let needles_a = needles(&chosen_a, &results_a);

    // The search finds what is there: the request and the results, written in clear to a file.
    let control = tempfile::tempdir().unwrap();
    let mut clear = serde_json::to_vec(&json!({"records": recs_a})).unwrap();
    clear.extend(serde_json::to_vec(&results_a).unwrap());
    std::fs::write(control.path().join("clear.json"), &clear).unwrap();
    let found: HashSet<String> = search(control.path(), &needles_a).into_iter().map(|f| f.1).collect();
    let missed: Vec<String> =
        texts(&chosen_a, &results_a).into_iter().filter(|t| !found.contains(t)).collect();
    assert!(missed.is_empty(), "the search must see clear text; it missed {missed:?}");

    assert_no_hits(&dir, &needles_a, "while the batch is stored");

    let mut c = d.client("issuer").await;
    assert_eq!(c.delete(&format!("/v1/batches/{id_a}")).await.unwrap().status, 200);
    assert_no_hits(&dir, &needles_a, "after DELETE");

    assert_eq!(d.terminate(), Some(0));
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    assert_no_hits(&dir, &needles_a, "after DELETE and a restart");
    let mut c = d.client("issuer").await;
    assert_eq!(c.get(&format!("/v1/batches/{id_a}")).await.unwrap().status, 404);

    // A second batch, left for retention to purge: the clock moves 8 days (retention is 7).
    let (recs_b, chosen_b) = chosen("bravo", 24);
    let (id_b, results_b) = sign(&d, "shred-b", &recs_b).await;
    let needles_b = needles(&chosen_b, &results_b);
    assert_no_hits(&dir, &needles_b, "the second batch, while stored");
    assert_eq!(d.terminate(), Some(0));
    d.set_clock_offset(8 * 86_400);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;
    let start = Instant::now();
    while c.get(&format!("/v1/batches/{id_b}")).await.unwrap().status != 404 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "retention did not purge the batch: {}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_no_hits(&dir, &needles_b, "after retention purged the second batch");
    assert_no_hits(&dir, &needles_a, "the first batch, at the end");
    assert_eq!(d.terminate(), Some(0));
    assert_no_hits(&dir, &[needles_a, needles_b].concat(), "after the last shutdown");
}

/// pkcs11-tool against the daemon's SoftHSM token.
fn pkcs11_tool(d: &Daemon, args: &[&str]) -> std::process::Output {
    let config = Config::load(&d.path().join("config.toml")).expect("config");
    let hcert_signer::hsm::HsmConfig::Pkcs11(p) = &config.hsm else { panic!("dev-init uses PKCS#11") };
    let pin = std::fs::read_to_string(d.path().join("hsm-pin")).expect("pin");
    Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&p.module)
        .args(["--token-label", &p.token_label, "--login", "--pin", pin.trim()])
        .args(args)
        .env("SOFTHSM2_CONF", d.path().join("softhsm2.conf"))
        .output()
        .expect("pkcs11-tool")
}

/// An administrator who removes the KEK from the token (or swaps in another token) does not get
/// a fresh KEK silently: the daemon stops with exit 78 and says why, and the token stays
/// without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kek_stops_the_start_and_is_never_regenerated() {
    let mut d = Daemon::start();
    let (recs, _) = chosen("kilo", 3);
    sign(&d, "kek-a", &recs).await;
    assert_eq!(d.terminate(), Some(0));
    let listed = pkcs11_tool(&d, &["--list-objects", "--type", "secrkey"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("hcert-kek"), "the KEK was made at first start");
    let deleted = pkcs11_tool(&d, &["--delete-object", "--type", "secrkey", "--label", "hcert-kek"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));

    let log = d.start_refused();
    assert!(
        log.contains("key-encryption key \\\"hcert-kek\\\" is not in the HSM")
            || log.contains("key-encryption key \"hcert-kek\" is not in the HSM"),
        "{log}"
    );
    assert!(log.contains("never regenerated"), "{log}");
    let listed = pkcs11_tool(&d, &["--list-objects", "--type", "secrkey"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("hcert-kek"), "a KEK was regenerated");

    // Pointing the configuration at another label is refused the same way.
    d.append_config("\n[store]\nkek_label = \"hcert-kek-2\"\n");
    assert!(
        d.start_refused().contains("set store.kek_label = \\\"hcert-kek\\\"")
            || d.log_text().contains("set store.kek_label = \"hcert-kek\""),
        "{}",
        d.log_text()
    );
    let listed = pkcs11_tool(&d, &["--list-objects", "--type", "secrkey"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("hcert-kek"),
        "no KEK under any label was made"
    );
}
