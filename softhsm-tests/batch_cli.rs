//! `hcert-signer batch` against a real daemon (issue 20, Acceptance 3): a file larger than a
//! batch signed in one command with a correct rejection report; a run killed halfway and rerun
//! signs nothing twice (the audit log counts); a queue limit below the file's size and a rate
//! limit are waited out; `status`, `results` and `delete`; a bad file is a configuration error.

mod daemon;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use daemon::{BIN, Daemon};
use serde_json::{Value, json};

/// Writes `n` records as NDJSON with a few made bad on purpose: a dob that is no date (record
/// `bad_dob`), an unknown vaccine product (record `bad_mp`), and a line that is not JSON after
/// record `garbage_after`. Returns the file and the refs of the bad records.
fn write_file(
    dir: &Path,
    prefix: &str,
    n: usize,
    bad_dob: usize,
    bad_mp: usize,
    garbage_after: usize,
) -> PathBuf {
    let mut records = daemon::records(prefix, n);
    records[bad_dob]["dcc"]["dob"] = json!("31-12-1990");
    // Every certificate type carries a product-like field only for vaccinations: make it one.
    let vaccination = records[bad_mp]["dcc"]["v"].is_array();
    if vaccination {
        records[bad_mp]["dcc"]["v"][0]["mp"] = json!("EU/1/99/0000");
    } else {
        records[bad_mp]["dcc"]["ver"] = json!(17);
    }
    let path = dir.join(format!("{prefix}records.ndjson"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create file"));
    for (i, r) in records.iter().enumerate() {
        writeln!(f, "{r}").expect("write");
        if i == garbage_after {
            writeln!(f, "{{\"ref\": \"broken").expect("write");
        }
    }
    f.flush().expect("flush");
    path
}

/// `hcert-signer batch ARGS` with the daemon's issuer profile.
fn batch(d: &Daemon, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN)
        .arg("batch")
        .args(args)
        .env("HCERT_PROFILE", d.path().join("issuer.toml"))
        .stdin(Stdio::null())
        .output()
        .expect("run hcert-signer batch")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// rejected.csv's rows (after the BOM and the header), split on commas (no cell here has one).
fn rejected_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("rejected.csv");
    let text = text.strip_prefix('\u{feff}').expect("rejected.csv starts with a UTF-8 BOM");
    let mut rows = text.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(rows.next(), Some("ref,code,field,message"));
    rows.map(|r| r.splitn(4, ',').map(str::to_owned).collect()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The signatures the running daemon counted (its metrics).
fn signatures(d: &Daemon) -> u64 {
    let Some((_, text)) = daemon::ops_get(d.ops, "/metrics") else { return 0 };
    text.lines()
        .filter(|l| l.starts_with("hcert_signatures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_file_of_25000_records_is_signed_in_three_batches_with_a_correct_rejection_report() {
    let d = Daemon::start();
    let work = tempfile::tempdir().expect("tempdir");
    let file = write_file(work.path(), "city-", 25_000, 17, 20_001, 12_345);
    let out = batch(&d, &["submit".as_ref(), file.as_os_str()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "some records were rejected: {err}");
    assert!(err.contains("25001 records in 3 batches: 24998 signed, 3 rejected"), "{err}");

    let results = lines(&work.path().join("city-records.results.ndjson"));
    assert_eq!(results.len(), 25_001, "one result per line of the file");
    assert!(!work.path().join("city-records.results.ndjson.partial").exists());
    // File order: the refs as written, the broken line in its place.
    assert_eq!(results[0]["ref"], "city-0");
    assert_eq!(results[12_346]["ref"], "line 12347");
    assert_eq!(results[25_000]["ref"], "city-24999");
    let rows = rejected_rows(&work.path().join("rejected.csv"));
    let got: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str())).collect();
    assert_eq!(got.len(), 3, "{rows:?}");
    assert_eq!(got[0].0, "city-17");
    assert_eq!(got[0].2, "dob", "{rows:?}");
    assert_eq!((got[1].0, got[1].1, got[1].2), ("line 12347", "not_json", ""));
    assert_eq!(got[2].0, "city-20001");
    assert!(["v[0].mp", "ver"].contains(&got[2].2), "{rows:?}");
    for code in [got[0].1, got[2].1] {
        assert!(err.contains(code), "the summary counts {code}: {err}");
    }

    let hc1s: Vec<String> = results
        .iter()
        .filter(|r| r["status"] == "signed")
        .map(|r| r["hc1"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hc1s.len(), 24_998);
    let trust = std::fs::read_to_string(d.path().join("trust-list.json")).expect("trust list");
    let (ok, reports) = daemon::verify_all(&trust, &hc1s);
    assert!(ok, "every HC1 verifies: {:?}", reports.iter().find(|r| r["ok"] != true));
    assert_eq!(reports.len(), 24_998);
}

#[test]
fn a_submit_killed_halfway_and_rerun_signs_nothing_twice() {
    let mut d = Daemon::start();
    let work = tempfile::tempdir().expect("tempdir");
    // Large enough that the command is still running when the test sees 3,000 signatures.
    let file = write_file(work.path(), "k-", 15_000, 5, 14_000, 3_000);
    let args = ["submit", "--batch-records", "1000", "--quiet"];
    let mut child = Command::new(BIN)
        .arg("batch")
        .args(args)
        .arg(&file)
        .env("HCERT_PROFILE", d.path().join("issuer.toml"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn batch submit");
    let start = Instant::now();
    while signatures(&d) < 3_000 {
        assert!(child.try_wait().expect("wait").is_none(), "the submit ended before it was killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(
        !work.path().join("k-records.results.ndjson").exists(),
        "a cut run leaves no complete-looking file"
    );

    let out = batch(&d, &["submit".as_ref(), "--batch-records".as_ref(), "1000".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("14998 signed, 3 rejected"), "{}", stderr(&out));
    assert_eq!(lines(&work.path().join("k-records.results.ndjson")).len(), 15_001);

    // A third run on the same file replays every batch: still nothing new signed.
    let again =
        batch(&d, &["submit".as_ref(), "--batch-records".as_ref(), "1000".as_ref(), file.as_os_str()]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    // Cut differently, the same keys would name other records: refused, never signed again.
    let other = batch(&d, &["submit".as_ref(), "--batch-records".as_ref(), "999".as_ref(), file.as_os_str()]);
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));
    assert!(stderr(&other).contains("idempotency_conflict"), "{}", stderr(&other));

    d.terminate();
    assert_eq!(d.audited_signatures(), 14_998, "each good record signed exactly once");
}

#[test]
fn a_queue_limit_below_the_file_size_is_waited_out() {
    let mut d = Daemon::init();
    d.append_config("\n[limits]\nmax_queued_records = 500\n");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let work = tempfile::tempdir().expect("tempdir");
    let file = write_file(work.path(), "q-", 3_000, 1, 2, 3);
    // Another issuer's batch of 10,000 fills the queue first (its signing takes seconds; the
    // command starts in milliseconds), so the command's first batch meets the full queue.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let blocker = rt.block_on(async {
        let mut c = d.client("issuer2").await;
        let r = c.post("/v1/batches", &json!({"records": daemon::records("b", 10_000)})).await.unwrap();
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.json().unwrap()["batch_id"].as_str().unwrap().to_owned()
    });
    let out = batch(&d, &["submit".as_ref(), "--batch-records".as_ref(), "1000".as_ref(), file.as_os_str()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("answered 503"), "the queue was full at least once: {err}");
    assert!(err.contains("2998 signed, 3 rejected"), "{err}");
    assert_eq!(lines(&work.path().join("q-records.results.ndjson")).len(), 3_001);
    rt.block_on(async {
        let mut c = d.client("issuer2").await;
        daemon::wait_done(&mut c, &blocker, Duration::from_secs(120)).await;
    });
}

/// The requests the running daemon answered 429 (its metrics).
fn rate_limited(d: &Daemon) -> u64 {
    let Some((_, text)) = daemon::ops_get(d.ops, "/metrics") else { return 0 };
    text.lines()
        .filter(|l| l.starts_with("hcert_http_requests_total") && l.contains("status=\"429\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_rate_limit_is_waited_out() {
    let mut d = Daemon::init();
    // Two batches in flight poll twice a second each: above this limit.
    d.append_config("\n[limits]\nrequests_per_second = 2\n");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("r.json");
    std::fs::write(&file, serde_json::to_string(&daemon::records("r", 3_000)).unwrap()).expect("write");
    let out = batch(&d, &["submit".as_ref(), "--batch-records".as_ref(), "500".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("3000 records in 6 batches: 3000 signed, 0 rejected"), "{}", stderr(&out));
    assert!(rate_limited(&d) > 0, "the command met the rate limit");
    assert_eq!(lines(&work.path().join("r.results.ndjson")).len(), 3_000);
}

#[test]
fn status_results_and_delete_work_and_a_bad_file_is_a_configuration_error() {
    let d = Daemon::start();
    let work = tempfile::tempdir().expect("tempdir");

    // A small file, all good, with QR codes: exit 0.
    let file = work.path().join("small.json");
    std::fs::write(&file, json!({"records": daemon::records("s/", 4)}).to_string()).expect("write");
    let qr = work.path().join("qr");
    let out = batch(&d, &["submit".as_ref(), file.as_os_str(), "--qr-dir".as_ref(), qr.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut pngs: Vec<String> = std::fs::read_dir(&qr)
        .expect("qr dir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pngs.sort();
    assert_eq!(pngs, ["s_0.png", "s_1.png", "s_2.png", "s_3.png"]);
    assert!(std::fs::read(qr.join("s_0.png")).unwrap().starts_with(b"\x89PNG"));
    assert_eq!(rejected_rows(&work.path().join("rejected.csv")).len(), 0);

    // status, results, delete of a batch the API made.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let id = rt.block_on(async {
        let mut c = d.client("issuer").await;
        let r = c.post("/v1/batches", &json!({"records": daemon::records("t", 3)})).await.unwrap();
        assert_eq!(r.status, 202);
        let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
        daemon::wait_done(&mut c, &id, Duration::from_secs(60)).await;
        id
    });
    let status = batch(&d, &["status".as_ref(), id.as_ref()]);
    assert!(status.status.success(), "{}", stderr(&status));
    let v: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!((v["state"].as_str(), v["signed"].as_u64()), (Some("done"), Some(3)));
    let res_file = work.path().join("t.ndjson");
    let results = batch(&d, &["results".as_ref(), id.as_ref(), "--out".as_ref(), res_file.as_os_str()]);
    assert!(results.status.success(), "{}", stderr(&results));
    assert_eq!(lines(&res_file).len(), 3);
    let deleted = batch(&d, &["delete".as_ref(), id.as_ref()]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = batch(&d, &["status".as_ref(), id.as_ref()]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("404"), "{}", stderr(&gone));

    // Bad files: exit 78 with a message naming the file and what is wrong; nothing written.
    let broken = work.path().join("broken.json");
    std::fs::write(&broken, "{\"records\": [").unwrap();
    let csv = work.path().join("list.csv");
    std::fs::write(&csv, "ref,dcc\n").unwrap();
    let empty = work.path().join("empty.ndjson");
    std::fs::write(&empty, "\n").unwrap();
    for (f, why) in [
        (&broken, "not a JSON file of records"),
        (&csv, "must end in .json"),
        (&empty, "no records"),
        (&work.path().join("missing.json"), "No such file"),
    ] {
        let out = batch(&d, &["submit".as_ref(), f.as_os_str()]);
        assert_eq!(out.status.code(), Some(78), "{}: {}", f.display(), stderr(&out));
        assert!(
            stderr(&out).contains(why) && stderr(&out).contains(&*f.display().to_string()),
            "{}",
            stderr(&out)
        );
    }
    assert!(!work.path().join("broken.results.ndjson.partial").exists());
    let no_profile =
        Command::new(BIN).args(["batch", "status", "x"]).env_remove("HCERT_PROFILE").output().unwrap();
    assert_eq!(no_profile.status.code(), Some(78));
}
