//! Nothing accepted is ever lost: batches totalling 20,000+ records, the daemon killed with
//! SIGKILL at random moments while it signs, restarted each time; at the end every accepted
//! record has exactly one result and every signature verifies.

mod daemon;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use daemon::{Daemon, Rng, records, verify_all, wait_done};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_while_signing_loses_nothing() {
    let seed = daemon::seed("HCERT_CRASH_SEED");
    println!("crash test seed {seed} (rerun with HCERT_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let mut d = Daemon::start();
    // (batch id, refs) of every batch the daemon acknowledged with 202.
    let mut accepted: Vec<(String, Vec<String>)> = Vec::new();
    let mut total = 0usize;
    let mut kills = 0;
    // Kills that landed while the last batch was still being signed.
    let mut mid_signing = 0;
    let mut round = 0;
    while mid_signing < 5 || total < 20_000 {
        round += 1;
        // Submit a few batches, then kill at a random moment while the pipeline works on them.
        let mut c = d.client("issuer").await;
        for b in 0..3 {
            let n = 1_500 + rng.below(1_500) as usize;
            let recs = records(&format!("k{round}b{b}r"), n);
            let refs: Vec<String> = recs.iter().map(|r| r["ref"].as_str().unwrap().to_owned()).collect();
            let r = c.post("/v1/batches", &json!({"records": recs})).await.expect("submit");
            assert_eq!(r.status, 202, "{:?}", r.body);
            accepted.push((r.json().unwrap()["batch_id"].as_str().unwrap().to_owned(), refs));
            total += n;
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(400))).await;
        let last = &accepted.last().expect("a batch").0;
        let state = c.get(&format!("/v1/batches/{last}")).await.expect("status").json().expect("json");
        if state["state"] != "done" {
            mid_signing += 1;
        }
        d.kill9();
        kills += 1;
        d.spawn();
        d.wait_ready(Duration::from_secs(60));
    }
    println!(
        "{kills} kills ({mid_signing} while signing), {} batches, {total} records accepted",
        accepted.len()
    );
    assert!(kills < 40, "the daemon signs too fast for the kills to land mid-batch");

    let mut c = d.client("issuer").await;
    let trust = String::from_utf8(c.get("/v1/trust-list").await.unwrap().body.to_vec()).unwrap();
    let start = Instant::now();
    let mut hc1s = Vec::with_capacity(total);
    for (id, refs) in &accepted {
        let status = wait_done(&mut c, id, Duration::from_secs(900)).await;
        assert_eq!(status["total"].as_u64(), Some(refs.len() as u64));
        let body = c.get(&format!("/v1/batches/{id}/results")).await.unwrap().body;
        let lines: Vec<Value> =
            String::from_utf8_lossy(&body).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let got: Vec<&str> = lines.iter().map(|l| l["ref"].as_str().unwrap()).collect();
        let unique: HashSet<&str> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "batch {id}: a record has two results");
        assert_eq!(
            got,
            refs.iter().map(String::as_str).collect::<Vec<_>>(),
            "batch {id}: results missing or out of order"
        );
        assert_eq!(
            status["signed"].as_u64().unwrap() + status["rejected"].as_u64().unwrap(),
            refs.len() as u64,
            "batch {id}: counters"
        );
        for l in &lines {
            assert_eq!(l["status"], "signed", "{l}");
            hc1s.push(l["hc1"].as_str().unwrap().to_owned());
        }
    }
    println!("all results fetched in {:?}", start.elapsed());
    let (ok, reports) = verify_all(&trust, &hc1s);
    assert!(ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    assert_eq!(reports.len(), total);
}
