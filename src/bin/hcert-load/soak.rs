//! The soak test (`hcert-load --soak SECS`): the appliance under a steady mix at about half its
//! measured capacity — batches submitted, polled, fetched, every certificate verified, deleted;
//! synchronous signing; a DSC rotation by two officers half-way through — reporting the daemon's
//! RSS over time, errors and verification results. Any error or failed verification fails the
//! run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hcert_signer::client::{ApiClient, ClientTls};
use hcert_signer::hcert::TrustList;
use hcert_signer::hcert::verify::Verifier;
use serde_json::{Value, json};

use super::{Daemon, batch_body, record_pool, submit, wait_done};

/// Records per soak batch.
const BATCH: usize = 2000;
/// Concurrent issuer connections.
const CONNECTIONS: usize = 3;
/// How often an issuer asks whether its batch is done (a patient integrator, not a benchmark).
const SOAK_POLL: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    signed: AtomicU64,
    verified: AtomicU64,
    sync_signed: AtomicU64,
    errors: AtomicU64,
    next_ref: AtomicU64,
}

impl Counters {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::SeqCst);
        eprintln!("soak: ERROR {what}");
    }
}

/// Runs the soak for `length` against the running daemon.
pub async fn run(
    dir: &Path,
    listen: SocketAddr,
    tls: &ClientTls,
    daemon: &Daemon,
    length: Duration,
) -> Result<(), String> {
    let pid = daemon.pid();
    let capacity = measure_capacity(listen, tls).await?;
    let target = (capacity / 2.0).max(100.0);
    println!(
        "soak: capacity {capacity:.0} records/s; soaking at {target:.0} records/s for {}s",
        length.as_secs()
    );
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + length;
    // Batches are released at the target rate; each connection takes the next one when free.
    let (permits_tx, permits_rx) = flume::bounded::<()>(CONNECTIONS);
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / target));
        while Instant::now() < deadline {
            tick.tick().await;
            if permits_tx.send_async(()).await.is_err() {
                break;
            }
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (rx, tls, c) = (permits_rx.clone(), tls.clone(), counters.clone());
        tasks.push(tokio::spawn(async move { issuer_loop(listen, tls, rx, c).await }));
    }
    drop(permits_rx);
    let sync = {
        let (tls, c) = (tls.clone(), counters.clone());
        tokio::spawn(async move { sync_loop(listen, tls, c, deadline).await })
    };
    let rotation = {
        let (dir, c) = (dir.to_path_buf(), counters.clone());
        tokio::spawn(async move {
            tokio::time::sleep(length / 2).await;
            match rotate(&dir, listen).await {
                Ok(kid) => println!(
                    "soak: t={:.0}s rotated to a new DSC (kid {kid}); old one retired",
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => c.error(format!("rotation: {e}")),
            }
        })
    };
    let mut rss_samples = Vec::new();
    let mut sample = tokio::time::interval(Duration::from_secs(10));
    while Instant::now() < deadline {
        sample.tick().await;
        let rss = rss_mib(pid);
        rss_samples.push(rss);
        println!(
            "soak: t={:>4.0}s rss={rss:>4} MiB batches={} signed={} verified={} sync={} errors={}",
            started.elapsed().as_secs_f64(),
            counters.batches.load(Ordering::SeqCst),
            counters.signed.load(Ordering::SeqCst),
            counters.verified.load(Ordering::SeqCst),
            counters.sync_signed.load(Ordering::SeqCst),
            counters.errors.load(Ordering::SeqCst),
        );
    }
    let _ = pacer.await;
    for t in tasks {
        let _ = t.await;
    }
    let _ = sync.await;
    let _ = rotation.await;
    let elapsed = started.elapsed().as_secs_f64();
    let rss_last = rss_mib(pid);
    rss_samples.push(rss_last);
    let (min, max) =
        (rss_samples.iter().min().copied().unwrap_or(0), rss_samples.iter().max().copied().unwrap_or(0));
    let (signed, verified, errors) = (
        counters.signed.load(Ordering::SeqCst),
        counters.verified.load(Ordering::SeqCst),
        counters.errors.load(Ordering::SeqCst),
    );
    // Growth per half: a leak grows as much in the second half as in the first, a cache
    // filling up (sled's, the allocator's) mostly in the first.
    let mid = rss_samples.get(rss_samples.len() / 2).copied().unwrap_or(0);
    let first = rss_samples.first().copied().unwrap_or(0);
    println!(
        "soak summary: {elapsed:.0}s, {} batches, {signed} records signed ({:.0}/s), {verified} verified, {} synchronous, {errors} errors, RSS {min}–{max} MiB (last {rss_last} MiB; {:+} MiB in the first half, {:+} MiB in the second)",
        counters.batches.load(Ordering::SeqCst),
        signed as f64 / elapsed,
        counters.sync_signed.load(Ordering::SeqCst),
        mid as i64 - first as i64,
        rss_last as i64 - mid as i64,
    );
    if errors > 0 || verified != signed {
        return Err(format!("{errors} errors, {} of {signed} not verified", signed - verified));
    }
    Ok(())
}

/// Records per second through the whole path: 20,000 records over four connections.
async fn measure_capacity(listen: SocketAddr, tls: &ClientTls) -> Result<f64, String> {
    let pool = record_pool();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..4 {
        let (tls, body) = (tls.clone(), batch_body(&pool, 10_000_000 + k * 5000, 5000));
        tasks.push(tokio::spawn(async move {
            let mut c = ApiClient::connect(listen, "localhost", &tls).await.map_err(|e| e.to_string())?;
            let id = submit(&mut c, body).await?;
            wait_done(&mut c, &id, SOAK_POLL).await?;
            c.delete(&format!("/v1/batches/{id}")).await.map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(20_000.0 / started.elapsed().as_secs_f64())
}

/// Verifies HC1 strings against the appliance's current trust list; returns how many passed.
async fn verify(c: &mut ApiClient, hc1s: Vec<String>) -> Result<u64, String> {
    let r = c.get("/v1/trust-list").await.map_err(|e| e.to_string())?;
    let trust = TrustList::from_json(&String::from_utf8_lossy(&r.body)).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let v = Verifier::new(&trust, None);
        hc1s.iter().filter(|h| v.verify(h, now).ok()).count() as u64
    })
    .await
    .map_err(|e| e.to_string())
}

async fn issuer_loop(listen: SocketAddr, tls: ClientTls, permits: flume::Receiver<()>, c: Arc<Counters>) {
    let pool = record_pool();
    let mut client = match ApiClient::connect(listen, "localhost", &tls).await {
        Ok(cl) => cl,
        Err(e) => return c.error(format!("connect: {e}")),
    };
    while permits.recv_async().await.is_ok() {
        let start = c.next_ref.fetch_add(BATCH as u64, Ordering::SeqCst) as usize;
        let outcome = async {
            let id = submit(&mut client, batch_body(&pool, start, BATCH)).await?;
            let status = wait_done(&mut client, &id, SOAK_POLL).await?;
            let r = client.get(&format!("/v1/batches/{id}/results")).await.map_err(|e| e.to_string())?;
            let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
                .lines()
                .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            if lines.len() != BATCH || status["signed"] != BATCH {
                return Err(format!("batch {id}: {} results, status {status}", lines.len()));
            }
            let hc1s: Vec<String> =
                lines.iter().filter_map(|l| l["hc1"].as_str().map(str::to_owned)).collect();
            let ok = verify(&mut client, hc1s).await?;
            let d = client.delete(&format!("/v1/batches/{id}")).await.map_err(|e| e.to_string())?;
            if d.status != 200 {
                return Err(format!("delete {id}: {}", d.status));
            }
            Ok::<u64, String>(ok)
        }
        .await;
        match outcome {
            Ok(ok) => {
                c.batches.fetch_add(1, Ordering::SeqCst);
                c.signed.fetch_add(BATCH as u64, Ordering::SeqCst);
                c.verified.fetch_add(ok, Ordering::SeqCst);
            }
            Err(e) => {
                c.error(e);
                // A broken connection is replaced, so one error does not end the soak.
                if let Ok(cl) = ApiClient::connect(listen, "localhost", &tls).await {
                    client = cl;
                }
            }
        }
    }
}

/// A clerk's desk: a few records signed synchronously every second.
async fn sync_loop(listen: SocketAddr, tls: ClientTls, c: Arc<Counters>, deadline: Instant) {
    let pool = record_pool();
    let Ok(mut client) = ApiClient::connect(listen, "localhost", &tls).await else {
        return c.error("sync: connect".into());
    };
    let mut i = 0usize;
    while Instant::now() < deadline {
        let records: Vec<Value> = (0..3)
            .map(|k| json!({"ref": format!("desk-{i}-{k}"), "dcc": pool[(i + k) % pool.len()]}))
            .collect();
        i += 1;
        let body = serde_json::to_vec(&json!({ "records": records })).unwrap_or_default();
        match client.request(http::Method::POST, "/v1/sign", Some(body)).await {
            Ok(r) if r.status == 200 => {
                let hc1s: Vec<String> = r.json().map_or_else(
                    |_| Vec::new(),
                    |v| {
                        v["results"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x["hc1"].as_str().map(str::to_owned))
                            .collect()
                    },
                );
                match verify(&mut client, hc1s).await {
                    Ok(3) => {
                        c.sync_signed.fetch_add(3, Ordering::SeqCst);
                    }
                    Ok(n) => c.error(format!("sync: {n} of 3 verified")),
                    Err(e) => c.error(format!("sync verify: {e}")),
                }
            }
            Ok(r) => c.error(format!("sync: {} {}", r.status, String::from_utf8_lossy(&r.body))),
            Err(e) => c.error(format!("sync: {e}")),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Two officers rotate the DSC: generate, CSR, the dev CSCA certifies, import, two approvals,
/// then the old key is retired. Returns the new kid.
async fn rotate(dir: &Path, listen: SocketAddr) -> Result<String, String> {
    let officer = |name: &str| {
        ClientTls::from_files(
            &dir.join("tls/ca.pem"),
            &dir.join(format!("tls/{name}.pem")),
            &dir.join(format!("tls/{name}.key")),
        )
        .map_err(|e| e.to_string())
    };
    let mut o1 =
        ApiClient::connect(listen, "localhost", &officer("officer1")?).await.map_err(|e| e.to_string())?;
    let mut o2 =
        ApiClient::connect(listen, "localhost", &officer("officer2")?).await.map_err(|e| e.to_string())?;
    let check = |r: hcert_signer::client::Reply, what: &str| {
        if r.status.is_success() {
            Ok(r)
        } else {
            Err(format!("{what}: {} {}", r.status, String::from_utf8_lossy(&r.body)))
        }
    };
    check(
        o1.post("/v1/keys", &json!({"label": "dsc-soak-2"})).await.map_err(|e| e.to_string())?,
        "generate",
    )?;
    let csr = check(
        o1.post("/v1/keys/dsc-soak-2/csr", &json!({"subject": "C=VN,O=Ministry of Health,CN=DSC soak 2"}))
            .await
            .map_err(|e| e.to_string())?,
        "csr",
    )?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| e.to_string());
    let csca = hcert_signer::pki::dev::DevCa::load(&read("csca.pem")?, &read("csca.key")?)
        .map_err(|e| e.to_string())?;
    let now = time::OffsetDateTime::now_utc();
    let pem = csca
        .certify_dsc(
            &String::from_utf8_lossy(&csr.body),
            now - time::Duration::hours(1),
            now + time::Duration::days(730),
            None,
        )
        .map_err(|e| e.to_string())?;
    let imported = check(
        o1.request_typed(
            http::Method::PUT,
            "/v1/keys/dsc-soak-2/certificate",
            "application/x-pem-file",
            pem.into_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?,
        "import",
    )?;
    let kid = imported.json().map_err(|e| e.to_string())?["kid"].as_str().unwrap_or_default().to_owned();
    check(
        o1.request(http::Method::POST, "/v1/keys/dsc-soak-2/approve", None)
            .await
            .map_err(|e| e.to_string())?,
        "approve 1",
    )?;
    let active = check(
        o2.request(http::Method::POST, "/v1/keys/dsc-soak-2/approve", None)
            .await
            .map_err(|e| e.to_string())?,
        "approve 2",
    )?;
    if active.json().map_err(|e| e.to_string())?["state"] != "active" {
        return Err("the second approval did not activate the key".into());
    }
    check(
        o2.request(http::Method::POST, "/v1/keys/dsc-dev-1/retire", None).await.map_err(|e| e.to_string())?,
        "retire",
    )?;
    Ok(kid)
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
        })
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}
