//! Outages of the cluster's database are outages, never loss (issue 19, Acceptance 4 and 5):
//! two daemons on one PostgreSQL keep accepting and signing batches while the primary is
//! killed with SIGKILL and its synchronous standby promoted, the database is stopped and
//! started again or crashes, or the synchronous standby is lost for a while. Meanwhile no POST
//! is answered 202 or 500 (503 with Retry-After, or for a lost standby no answer until it is
//! back), readiness is red naming the database and nothing is signed; afterwards the daemons
//! carry on by themselves, with no restart, and every batch that got a 202 is signed exactly
//! once: one result per record, every one verifying against the trust list, and `audit verify`
//! counting exactly the signatures released. A daemon started while the database is down
//! waits for it.

mod daemon;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::{Daemon, ops_get, records, verify_all, wait_done};
use hcert_signer::client::{ApiClient, ClientTls};
use hcert_signer::store::postgres::ScratchCluster;
use serde_json::{Value, json};

/// Records per batch the load submits.
const BATCH: usize = 300;
/// Records of the one large batch in flight at an outage.
const BACKLOG: usize = 10_000;
/// How long any one phase may take before the test gives up (2 cores, shared).
const DEADLINE: Duration = Duration::from_secs(180);

/// Runs a scratch cluster's set-up or an action on it on a thread of its own: it blocks for
/// seconds (pg_ctl, its synchronous client), which a test's runtime must not.
async fn on_cluster<T: Send + 'static>(
    cluster: &Arc<ScratchCluster>,
    what: &'static str,
    f: impl FnOnce(&ScratchCluster) -> Result<T, hcert_signer::store::postgres::ScratchError> + Send + 'static,
) -> T {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || f(&c)).await.expect(what).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A scratch cluster, started off the runtime (its synchronous client cannot run inside one).
fn scratch(with_standby: bool) -> Arc<ScratchCluster> {
    let start = if with_standby { ScratchCluster::start_with_standby } else { ScratchCluster::start };
    Arc::new(
        std::thread::spawn(start)
            .join()
            .expect("start a scratch PostgreSQL")
            .expect("a scratch PostgreSQL (Debian package postgresql)"),
    )
}

/// Two nodes of one cluster on `cluster`, both ready: node 1 first (its audit key's public half
/// is what node 2's `--join` copies).
fn two_nodes(cluster: &ScratchCluster) -> (Daemon, Daemon) {
    let mut n1 = Daemon::init_on_cluster(cluster);
    n1.spawn();
    n1.wait_ready(DEADLINE);
    let mut n2 = Daemon::join(&n1);
    n2.spawn();
    n2.wait_ready(DEADLINE);
    (n1, n2)
}

/// A batch some node answered 202.
#[derive(Debug, Clone)]
struct Accepted {
    batch_id: String,
    refs: Vec<String>,
    /// The node (0 or 1) that accepted it.
    node: usize,
    /// Whether it was the answer to a retry after a 503.
    after_retry: bool,
}

/// What the issuers saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<Accepted>,
    /// 503s, each with a Retry-After (checked as they come).
    unavailable: usize,
}

/// Issuers submitting batches to both nodes without pause, each batch with an idempotency key;
/// a 503 is retried with the same key, as a client does. Any other answer fails the test.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(nodes: [&Daemon; 2]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tasks = nodes
            .iter()
            .enumerate()
            .map(|(node, d)| {
                let (stop, seen) = (stop.clone(), seen.clone());
                // The cluster's client PKI is in node 1's directory.
                let (addr, tls) = (d.listen, nodes[0].tls("issuer"));
                tokio::spawn(async move { issue(node, addr, tls, stop, seen).await })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    fn accepted(&self) -> usize {
        self.seen.lock().unwrap().accepted.len()
    }

    /// Waits until `n` batches in all were accepted.
    async fn until_accepted(&self, n: usize) {
        let start = Instant::now();
        while self.accepted() < n {
            assert!(start.elapsed() < DEADLINE, "only {} batches accepted, waiting for {n}", self.accepted());
            for t in &self.tasks {
                assert!(!t.is_finished(), "an issuer stopped early (see its panic above)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits one large batch through `d` (the cluster's client PKI in `first`) beside the
    /// issuers, so that work is surely in flight at the moment of an outage; returns its id.
    async fn backlog(&self, d: &Daemon, first: &Daemon) -> String {
        let n = self.accepted();
        let recs = records(&format!("backlog{n}r"), BACKLOG);
        let refs: Vec<String> = recs.iter().map(|r| r["ref"].as_str().unwrap().to_owned()).collect();
        let mut c = client(d, first, "issuer").await;
        let r = c
            .post("/v1/batches", &json!({"records": recs, "idempotency_key": format!("backlog-{n}")}))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let batch_id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
        let node = usize::from(d.listen != first.listen);
        self.seen.lock().unwrap().accepted.push(Accepted {
            batch_id: batch_id.clone(),
            refs,
            node,
            after_retry: false,
        });
        batch_id
    }

    /// Stops the issuers (each finishes the batch it is submitting) and returns what they saw.
    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("an issuer failed");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// One issuer's loop against one node.
async fn issue(
    node: usize,
    addr: std::net::SocketAddr,
    tls: ClientTls,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut client: Option<ApiClient> = None;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let recs = records(&format!("n{node}b{n}r"), BATCH);
        let refs: Vec<String> = recs.iter().map(|r| r["ref"].as_str().unwrap().to_owned()).collect();
        let body = json!({"records": recs, "idempotency_key": format!("node{node}-batch{n}")});
        let mut retried = false;
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "node {node}: batch {n} never accepted");
            let c = match &mut client {
                Some(c) => c,
                None => match ApiClient::connect(addr, "localhost", &tls).await {
                    Ok(c) => client.insert(c),
                    Err(e) => panic!("node {node} refused a connection (it must stay up): {e}"),
                },
            };
            let r = match c.post("/v1/batches", &body).await {
                Ok(r) => r,
                // The server may close a kept-alive connection: open another.
                Err(_) => {
                    client = None;
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&r.body).into_owned();
            match r.status.as_u16() {
                202 => {
                    let v: Value = serde_json::from_str(&text).expect("202 body");
                    let batch_id = v["batch_id"].as_str().expect("batch_id").to_owned();
                    assert_eq!(v["records"], BATCH, "{v}");
                    seen.lock().unwrap().accepted.push(Accepted {
                        batch_id,
                        refs,
                        node,
                        after_retry: retried,
                    });
                    break;
                }
                503 => {
                    let after =
                        r.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    assert!(after.is_some_and(|s| s > 0), "node {node}: 503 without Retry-After: {text}");
                    assert!(
                        text.contains("store_unavailable"),
                        "node {node}: 503 for another reason: {text}"
                    );
                    seen.lock().unwrap().unavailable += 1;
                    retried = true;
                    // Sooner than Retry-After asks: the test wants many attempts during the outage.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                other => panic!("node {node}: POST answered {other} (only 202 or 503 allowed): {text}"),
            }
        }
    }
}

/// Waits until `/readyz` answers 503 with a problem naming the database.
async fn wait_red(d: &Daemon, which: &str) -> String {
    let start = Instant::now();
    loop {
        let ops = d.ops;
        let got = tokio::task::spawn_blocking(move || ops_get(ops, "/readyz")).await.unwrap();
        if let Some((503, body)) = &got {
            let v: Value = serde_json::from_str(body).expect("readyz json");
            let problems =
                v["problems"].as_array().expect("problems").iter().map(|p| p.as_str().unwrap_or_default());
            if let Some(p) = problems.clone().find(|p| p.starts_with("store:") && p.contains("database")) {
                return p.to_owned();
            }
        }
        assert!(start.elapsed() < DEADLINE, "{which}: readiness never went red naming the database: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `/readyz` answers 200 again (without a restart).
async fn wait_green(d: &Daemon, which: &str) {
    let start = Instant::now();
    loop {
        let ops = d.ops;
        let got = tokio::task::spawn_blocking(move || ops_get(ops, "/readyz")).await.unwrap();
        if got.as_ref().is_some_and(|(s, _)| *s == 200) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "{which}: not ready again: {got:?}\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client of `d` as `name`, with the cluster's client PKI (in node 1's directory).
async fn client(d: &Daemon, first: &Daemon, name: &str) -> ApiClient {
    ApiClient::connect(d.listen, "localhost", &first.tls(name)).await.expect("connect")
}

/// What the node answers an issuer while the database is away: 503 `store_unavailable` with
/// Retry-After for a new batch, a synchronous signing (no signature leaves without its audit
/// entry) and the status and results of an accepted batch (`batch_id`, issuer's own); and an
/// officer the same for the key list, the checkpoints and a revocation export.
async fn outage_answers(d: &Daemon, first: &Daemon, batch_id: &str, which: &str) {
    let mut c = client(d, first, "issuer").await;
    for (post, path) in [
        (true, "/v1/batches".to_owned()),
        (true, "/v1/sign".to_owned()),
        (false, format!("/v1/batches/{batch_id}")),
        (false, format!("/v1/batches/{batch_id}/results")),
    ] {
        let r = if post {
            c.post(&path, &json!({"records": records("refused", 2)})).await
        } else {
            c.get(&path).await
        }
        .expect("an answer");
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 503, "{which} {path}: {text}");
        assert!(text.contains("store_unavailable"), "{which} {path}: {text}");
        let after = r.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        assert!(after.is_some_and(|s| s > 0), "{which} {path}: no Retry-After");
    }
    // An officer's routes that read the store: an outage too, never a 500.
    let mut o = client(d, first, "officer1").await;
    for r in [
        o.get("/v1/keys").await,
        o.get("/v1/audit/checkpoints").await,
        o.post("/v1/revocations", &json!({"batch": batch_id})).await,
    ] {
        let r = r.expect("an answer");
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, 503, "{which} officer: {text}");
        assert!(r.headers.contains_key("retry-after"), "{which} officer: no Retry-After: {text}");
    }
}

/// Over 5 s, neither node releases a signature and no batch gets a 202 beyond the `accepted`
/// the load had already seen.
async fn nothing_released_or_accepted(nodes: [&Daemon; 2], load: &Load, accepted: usize, when: &str) {
    let paused = [signatures_metric(nodes[0]).await, signatures_metric(nodes[1]).await];
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = [signatures_metric(nodes[0]).await, signatures_metric(nodes[1]).await];
    assert_eq!(after, paused, "a signature released {when}");
    assert_eq!(load.accepted(), accepted, "a 202 {when}");
}

/// The issuer's batch `id` as node `d` reports it.
async fn batch_status(d: &Daemon, id: &str) -> Value {
    let mut c = d.client("issuer").await;
    c.get(&format!("/v1/batches/{id}")).await.unwrap().json().unwrap()
}

/// Signatures the node released so far (`hcert_signatures_total`, all kids).
async fn signatures_metric(d: &Daemon) -> u64 {
    let ops = d.ops;
    let (status, text) =
        tokio::task::spawn_blocking(move || ops_get(ops, "/metrics")).await.unwrap().expect("metrics answer");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with("hcert_signatures_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().expect("a counter") as u64)
        .sum()
}

/// Every accepted batch, fetched through the node that did *not* accept it (any node serves
/// any batch): done, one result per record in order, all signed; all verify against the trust
/// list. Returns the number of signatures.
async fn check_exactly_once(nodes: [&Daemon; 2], accepted: &[Accepted]) -> usize {
    let ids: HashSet<&str> = accepted.iter().map(|a| a.batch_id.as_str()).collect();
    assert_eq!(ids.len(), accepted.len(), "two idempotency keys named one batch");
    let mut c = client(nodes[0], nodes[0], "issuer").await;
    let trust = String::from_utf8(c.get("/v1/trust-list").await.unwrap().body.to_vec()).unwrap();
    let mut hc1s = Vec::new();
    for a in accepted {
        // A connection of its own per batch: one left idle meanwhile may have been closed.
        let c = &mut client(nodes[1 - a.node], nodes[0], "issuer").await;
        let status = wait_done(c, &a.batch_id, DEADLINE).await;
        assert_eq!(
            (status["total"].as_u64(), status["signed"].as_u64()),
            (Some(a.refs.len() as u64), Some(a.refs.len() as u64)),
            "{status}"
        );
        let r = c.get(&format!("/v1/batches/{}/results", a.batch_id)).await.unwrap();
        assert_eq!(r.status, 200);
        let lines: Vec<Value> =
            String::from_utf8_lossy(&r.body).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let got: Vec<&str> = lines.iter().map(|l| l["ref"].as_str().unwrap()).collect();
        assert_eq!(
            got,
            a.refs.iter().map(String::as_str).collect::<Vec<_>>(),
            "batch {}: results",
            a.batch_id
        );
        for l in &lines {
            assert_eq!(l["status"], "signed", "{l}");
            hc1s.push(l["hc1"].as_str().unwrap().to_owned());
        }
    }
    let (ok, reports) = verify_all(&trust, &hc1s);
    assert!(ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    assert_eq!(reports.len(), hc1s.len());
    hc1s.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_under_load_fails_over_to_the_standby_and_every_accepted_batch_is_signed_once() {
    // Declared first, dropped last: after the daemons.
    let cluster = scratch(true);
    let (mut n1, mut n2) = two_nodes(&cluster);
    let load = Load::start([&n1, &n2]);
    load.until_accepted(6).await;

    // Work in flight when the primary dies: a large batch accepted and not yet signed.
    let last = load.backlog(&n2, &n1).await;
    let before = batch_status(&n1, &last).await;
    let accepted_before_kill = load.accepted();
    on_cluster(&cluster, "kill -9 the primary", ScratchCluster::kill9_primary).await;
    println!("primary killed with {accepted_before_kill} batches accepted; the last one then: {before}");
    assert_ne!(before["state"], "done", "the load did not outpace signing: nothing was in flight");

    // The outage, as the nodes report it, until a standby is promoted.
    for (d, which) in [(&n1, "node 1"), (&n2, "node 2")] {
        let reason = wait_red(d, which).await;
        println!("{which} not ready: {reason}");
        outage_answers(d, &n1, &last, which).await;
    }
    on_cluster(&cluster, "promote the standby", ScratchCluster::promote_standby).await;
    // The same processes: no restart.
    wait_green(&n1, "node 1").await;
    wait_green(&n2, "node 2").await;
    let after = load.accepted();
    load.until_accepted(after + 4).await;
    let seen = load.stop().await;
    println!(
        "{} batches accepted ({} after a 503), {} answers 503 with Retry-After",
        seen.accepted.len(),
        seen.accepted.iter().filter(|a| a.after_retry).count(),
        seen.unavailable
    );

    let signed = check_exactly_once([&n1, &n2], &seen.accepted).await;
    assert_eq!(signed, seen.accepted.iter().map(|a| a.refs.len()).sum::<usize>());
    for (d, which) in [(&mut n1, "node 1"), (&mut n2, "node 2")] {
        assert_eq!(d.terminate(), Some(0), "{which}: {}", d.log_text());
    }
    // One chain for the cluster, on the promoted standby, counting each released signature once.
    assert_eq!(n1.audited_signatures(), signed as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_crashed_database_pauses_the_cluster_and_it_resumes_by_itself_when_started_again() {
    let cluster = scratch(false);
    let (mut n1, mut n2) = two_nodes(&cluster);
    let load = Load::start([&n1, &n2]);
    load.until_accepted(6).await;
    let last = load.backlog(&n2, &n1).await;
    let before = batch_status(&n1, &last).await;
    on_cluster(&cluster, "stop PostgreSQL", ScratchCluster::stop).await;
    let accepted_before_stop = load.accepted();
    println!("PostgreSQL stopped with {accepted_before_stop} batches accepted; the last one then: {before}");
    assert_ne!(before["state"], "done", "the load did not outpace signing: nothing was in flight");

    for (d, which) in [(&n1, "node 1"), (&n2, "node 2")] {
        let reason = wait_red(d, which).await;
        println!("{which} not ready: {reason}");
        outage_answers(d, &n1, &last, which).await;
    }
    // Signing paused: nothing is released while no result can be stored.
    nothing_released_or_accepted([&n1, &n2], &load, accepted_before_stop, "while the database was down")
        .await;

    on_cluster(&cluster, "start PostgreSQL again", ScratchCluster::start_again).await;
    wait_green(&n1, "node 1").await;
    wait_green(&n2, "node 2").await;
    load.until_accepted(accepted_before_stop + 4).await;

    // The same after a crash of the database (SIGKILL; its start replays the WAL).
    let last = load.backlog(&n1, &n1).await;
    on_cluster(&cluster, "kill -9 PostgreSQL", ScratchCluster::kill9).await;
    let accepted_before_crash = load.accepted();
    for (d, which) in [(&n1, "node 1"), (&n2, "node 2")] {
        println!("{which} not ready: {}", wait_red(d, which).await);
        outage_answers(d, &n1, &last, which).await;
    }
    on_cluster(&cluster, "start PostgreSQL after the crash", ScratchCluster::start_again).await;
    wait_green(&n1, "node 1").await;
    wait_green(&n2, "node 2").await;
    load.until_accepted(accepted_before_crash + 4).await;
    let seen = load.stop().await;
    assert!(seen.unavailable > 0, "the issuers never met the outage");
    println!("{} batches accepted, {} answers 503 with Retry-After", seen.accepted.len(), seen.unavailable);

    let signed = check_exactly_once([&n1, &n2], &seen.accepted).await;
    assert_eq!(signed, seen.accepted.iter().map(|a| a.refs.len()).sum::<usize>());
    for (d, which) in [(&mut n1, "node 1"), (&mut n2, "node 2")] {
        assert_eq!(d.terminate(), Some(0), "{which}: {}", d.log_text());
    }
    assert_eq!(n1.audited_signatures(), signed as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_while_the_database_is_down_waits_and_becomes_ready_when_it_is_up() {
    let cluster = scratch(false);
    let mut d = Daemon::init_on_cluster(&cluster);
    on_cluster(&cluster, "stop PostgreSQL", ScratchCluster::stop).await;
    d.spawn();
    // It waits (logging why) instead of exiting.
    let start = Instant::now();
    while !d.log_text().contains("unreachable") && !d.log_text().contains("unavailable") {
        assert!(start.elapsed() < DEADLINE, "no word of the database: {}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(d.running(), "the daemon gave up: {}", d.log_text());
    assert!(ops_get(d.ops, "/readyz").is_none_or(|(s, _)| s != 200), "ready without a database");

    on_cluster(&cluster, "start PostgreSQL", ScratchCluster::start_again).await;
    d.wait_ready(DEADLINE);
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", &json!({"records": records("late", 20)})).await.unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(wait_done(&mut c, &id, DEADLINE).await["signed"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_synchronous_standby_stalls_writes_and_all_resumes_when_it_is_back() {
    let cluster = scratch(true);
    let (mut n1, mut n2) = two_nodes(&cluster);
    let load = Load::start([&n1, &n2]);
    load.until_accepted(4).await;
    let last = load.backlog(&n2, &n1).await;
    let before = batch_status(&n1, &last).await;
    // The primary stays up, but no COMMIT returns until the standby has it.
    on_cluster(&cluster, "stop the standby", ScratchCluster::stop_standby).await;
    println!("standby stopped; the last batch then: {before}");
    assert_ne!(before["state"], "done", "the load did not outpace signing: nothing was in flight");

    // Readiness red (a load balancer stops sending work), naming the database.
    for (d, which) in [(&n1, "node 1"), (&n2, "node 2")] {
        println!("{which} not ready: {}", wait_red(d, which).await);
    }
    let accepted = load.accepted();
    nothing_released_or_accepted([&n1, &n2], &load, accepted, "while the standby was away").await;

    on_cluster(&cluster, "start the standby again", ScratchCluster::start_standby_again).await;
    wait_green(&n1, "node 1").await;
    wait_green(&n2, "node 2").await;
    load.until_accepted(accepted + 4).await;
    let seen = load.stop().await;
    println!("{} batches accepted, {} answers 503 with Retry-After", seen.accepted.len(), seen.unavailable);

    let signed = check_exactly_once([&n1, &n2], &seen.accepted).await;
    assert_eq!(signed, seen.accepted.iter().map(|a| a.refs.len()).sum::<usize>());
    for (d, which) in [(&mut n1, "node 1"), (&mut n2, "node 2")] {
        assert_eq!(d.terminate(), Some(0), "{which}: {}", d.log_text());
    }
    assert_eq!(n1.audited_signatures(), signed as u64);
}
