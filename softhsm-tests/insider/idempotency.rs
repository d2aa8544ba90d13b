//! A batch is signed once: an idempotency key is bound to its request (another body under the
//! same key is refused, and nothing is stored), a replay tells the batch's real state, and a
//! key whose batch was deleted or expired is a tombstone for the retention period — a retry is
//! refused, never signed again. Driven by an issuer (or someone with its credentials) through
//! the real daemon.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{Daemon, records, wait_done};

fn ndjson(body: &[u8]) -> Vec<Value> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("line"))
        .collect()
}

/// The `hcert_batches_total{event="accepted"}` counter.
fn accepted_batches(d: &Daemon) -> f64 {
    let (_, text) = crate::daemon::ops_get(d.ops, "/metrics").expect("metrics");
    text.lines()
        .find(|l| l.starts_with("hcert_batches_total") && l.contains("\"accepted\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Submits and waits until signed; returns the batch id.
async fn sign(d: &Daemon, body: &Value) -> String {
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", body).await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    wait_done(&mut c, &id, Duration::from_secs(120)).await;
    id
}

fn error_code(r: &hcert_signer::client::Reply) -> String {
    r.json().expect("json")["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Same key, different body: 409 `idempotency_conflict`, nothing stored, the first batch and
/// its results unchanged. The same records re-serialised (keys reordered, whitespace, escapes)
/// are the same request: a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    let recs = records("idem-", 20);
    let id = sign(&d, &json!({"idempotency_key": "k-409", "records": recs})).await;
    let mut c = d.client("issuer").await;
    let results_before = c.get(&format!("/v1/batches/{id}/results")).await.unwrap().body;
    let accepted = accepted_batches(&d);

    // One birth date changed; then one record more: both other requests.
    let mut changed = recs.clone();
    changed[7]["dcc"]["dob"] = json!("1977-07-07");
    let mut more = recs.clone();
    more.extend(records("extra-", 1));
    for other in [changed, more] {
        let r = c.post("/v1/batches", &json!({"idempotency_key": "k-409", "records": other})).await.unwrap();
        assert_eq!(r.status, 409, "{:?}", r.body);
        assert_eq!(error_code(&r), "idempotency_conflict");
    }
    let status = c.get(&format!("/v1/batches/{id}")).await.unwrap().json().unwrap();
    assert_eq!((status["total"].as_u64(), status["signed"].as_u64()), (Some(20), Some(20)), "{status}");
    assert_eq!(c.get(&format!("/v1/batches/{id}/results")).await.unwrap().body, results_before);
    assert_eq!(accepted_batches(&d), accepted, "no batch was accepted");

    // The same request in another form: keys in reverse order, pretty-printed.
    let reordered: Vec<Value> = recs
        .iter()
        .map(|r| {
            let dcc = r["dcc"].as_object().unwrap();
            let mut text = String::from("{");
            for (i, (k, v)) in dcc.iter().rev().enumerate() {
                text.push_str(&format!("{}\n  {}: {}", if i > 0 { "," } else { "" }, json!(k), v));
            }
            text.push('}');
            json!({"dcc": serde_json::from_str::<Value>(&text).unwrap(), "ref": r["ref"]})
        })
        .collect();
    let body = serde_json::to_vec_pretty(&json!({"records": reordered, "idempotency_key": "k-409"})).unwrap();
    let r = c.request(http::Method::POST, "/v1/batches", Some(body)).await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let v = r.json().unwrap();
    assert_eq!((v["batch_id"].as_str(), v["replayed"].as_bool()), (Some(id.as_str()), Some(true)), "{v}");
    assert_eq!(accepted_batches(&d), accepted);
}

/// A replay of a finished batch answers its real state and counts, not `queued`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_finished_batch_tells_its_real_state() {
    let d = Daemon::start();
    let mut recs = records("done-", 10);
    // One record the appliance rejects, so the counts are not trivially all-signed.
    recs[3]["dcc"]["dob"] = json!("not-a-date");
    let body = json!({"idempotency_key": "k-done", "records": recs});
    let id = sign(&d, &body).await;
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", &body).await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let v = r.json().unwrap();
    assert_eq!(v["batch_id"], id.as_str());
    assert_eq!(v["replayed"], true);
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(
        (v["records"].as_u64(), v["signed"].as_u64(), v["rejected"].as_u64()),
        (Some(10), Some(9), Some(1)),
        "{v}"
    );
}

/// DELETE, then the same request again: 410 `batch_deleted`, before and after a restart; the
/// audit log counts the batch's signatures once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_delete_is_gone_and_never_signed_again() {
    let mut d = Daemon::start();
    let body = json!({"idempotency_key": "k-del", "records": records("del-", 12)});
    let id = sign(&d, &body).await;
    let mut c = d.client("issuer").await;
    assert_eq!(ndjson(&c.get(&format!("/v1/batches/{id}/results")).await.unwrap().body).len(), 12);
    assert_eq!(c.delete(&format!("/v1/batches/{id}")).await.unwrap().status, 200);
    let accepted = accepted_batches(&d);
    let r = c.post("/v1/batches", &body).await.unwrap();
    assert_eq!(r.status, 410, "{:?}", r.body);
    assert_eq!(error_code(&r), "batch_deleted");
    assert!(r.json().unwrap()["error"]["message"].as_str().unwrap().contains(&id), "names the batch");
    // Another body under the spent key is refused the same way.
    let r = c
        .post("/v1/batches", &json!({"idempotency_key": "k-del", "records": records("x", 1)}))
        .await
        .unwrap();
    assert_eq!(r.status, 410, "{:?}", r.body);
    assert_eq!(accepted_batches(&d), accepted);
    assert_eq!(d.terminate(), Some(0));
    assert_eq!(d.audited_signatures(), 12);

    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", &body).await.unwrap();
    assert_eq!(r.status, 410, "the tombstone is durable: {:?}", r.body);
    // Nothing was queued by the retries: the daemon stops with nothing signed since.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.terminate(), Some(0));
    assert_eq!(d.audited_signatures(), 12, "nothing signed again");
}

/// Retention purges the batch; the retry is 410 for the retention period after the purge, then
/// the tombstone expires with retention and the key is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_retention_is_gone_until_the_tombstone_expires() {
    let mut d = Daemon::start();
    let body = json!({"idempotency_key": "k-ret", "records": records("ret-", 5)});
    let id = sign(&d, &body).await;
    assert_eq!(d.terminate(), Some(0));
    let day = 86_400;
    d.set_clock_offset(8 * day);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;
    let start = Instant::now();
    while c.get(&format!("/v1/batches/{id}")).await.unwrap().status != 404 {
        assert!(start.elapsed() < Duration::from_secs(30), "retention did not purge it: {}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.post("/v1/batches", &body).await.unwrap();
    assert_eq!(r.status, 410, "{:?}", r.body);
    assert_eq!(error_code(&r), "batch_deleted");
    assert_eq!(d.terminate(), Some(0));
    assert_eq!(d.audited_signatures(), 5, "nothing signed again");

    // A retention period after the purge, the tombstone goes too.
    d.set_clock_offset(16 * day);
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;
    let start = Instant::now();
    loop {
        let r = c.post("/v1/batches", &body).await.unwrap();
        if r.status == 202 {
            let v = r.json().unwrap();
            assert_eq!(v["replayed"], false, "a new batch: {v}");
            assert_ne!(v["batch_id"], id.as_str());
            break;
        }
        assert_eq!(r.status, 410, "{:?}", r.body);
        assert!(start.elapsed() < Duration::from_secs(30), "the tombstone did not expire: {}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
