//! Issue 19, Acceptance 2 and 3, through the real binary: three nodes on one PostgreSQL and one
//! SoftHSM token behind the shipped `scale-out/cluster.cfg`. Work accepted by any node is signed
//! exactly once while one node is killed again and again and another is stopped for good; a
//! rotation two officers make through two different nodes takes effect on every node without a
//! restart; the one audit chain counts exactly the signatures released.

#[path = "cluster/mod.rs"]
mod cluster;
mod daemon;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use cluster::Cluster;
use daemon::{Rng, records, seed, verify_all};
use hcert_signer::client::{ApiClient, Reply};
use http::Method;
use serde_json::{Value, json};

fn lines(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body).lines().map(|l| serde_json::from_str(l).expect("NDJSON line")).collect()
}

fn text(r: &Reply) -> String {
    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
}

/// One batch the test submits: its number, the client it belongs to, its idempotency key and
/// the refs of its records, in order.
struct Planned {
    n: usize,
    issuer: &'static str,
    key: String,
    refs: Vec<String>,
    body: Vec<u8>,
}

const BATCHES: usize = 60;
const PER_BATCH: usize = 500;
const SUBMITTERS: usize = 4;
/// Node 2 is killed (and restarted) this often; node 3 is stopped for good.
const KILLS: usize = 3;

fn plan() -> Vec<Planned> {
    let template = records("r", PER_BATCH);
    (0..BATCHES)
        .map(|n| {
            let recs: Vec<Value> = template
                .iter()
                .enumerate()
                .map(|(i, r)| json!({"ref": format!("b{n}-{i}"), "dcc": r["dcc"]}))
                .collect();
            let refs = recs.iter().map(|r| r["ref"].as_str().unwrap().to_owned()).collect();
            let key = format!("cluster-batch-{n}");
            let body = serde_json::to_vec(&json!({"idempotency_key": key, "records": recs})).unwrap();
            Planned { n, issuer: if n % 2 == 0 { "issuer" } else { "issuer2" }, key, refs, body }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sign_30000_records_through_haproxy_with_one_node_killed_and_one_stopped() {
    let seed = seed("HCERT_CLUSTER_SEED");
    println!("cluster test seed {seed} (rerun with HCERT_CLUSTER_SEED={seed})");
    let mut rng = Rng(seed);
    let c = Cluster::start();
    let lb_prefix = format!("https://{}/v1/batches/", c.lb);

    // A retry of a batch node 3 accepted, sent to node 1: the same batch. Another body under
    // the same key, at node 2: refused. Node 3 is stopped later; its batch still finishes.
    let idem = json!({"idempotency_key": "cross-node", "records": records("x-", 100)});
    let first = c.direct(3, "issuer").await.post("/v1/batches", &idem).await.unwrap();
    assert_eq!(first.status, 202, "{}", text(&first));
    let idem_id = first.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(first.headers["location"].to_str().unwrap(), format!("{lb_prefix}{idem_id}"));
    let retry = c.direct(1, "issuer").await.post("/v1/batches", &idem).await.unwrap();
    assert_eq!(retry.status, 202, "{}", text(&retry));
    let v = retry.json().unwrap();
    assert_eq!(
        (v["batch_id"].as_str(), v["replayed"].as_bool()),
        (Some(idem_id.as_str()), Some(true)),
        "{v}"
    );
    let other = json!({"idempotency_key": "cross-node", "records": records("y-", 100)});
    let conflict = c.direct(2, "issuer").await.post("/v1/batches", &other).await.unwrap();
    assert_eq!(conflict.status, 409, "{}", text(&conflict));
    assert_eq!(conflict.json().unwrap()["error"]["code"], "idempotency_conflict");

    // The chaos, on a thread of its own (a node's restart blocks): node 2 killed with SIGKILL
    // at random moments and restarted each time; node 3 stopped with SIGTERM after the first
    // restart.
    let (victim, stopped) = (c.shared(2), c.shared(3));
    let pauses: Vec<(Duration, Duration)> =
        (0..KILLS).map(|_| (rng.millis(1_000, 4_000), rng.millis(0, 2_000))).collect();
    let stop_after = rng.millis(0, 3_000);
    let database = c.database();
    let chaos = std::thread::spawn(move || {
        let db = hcert_signer::store::postgres::open(database).expect("the test's own connection");
        let leased = |pid| cluster::leased_by(&db, pid);
        let mut log = Vec::new();
        let mut stranded = 0;
        let t0 = Instant::now();
        for (k, (before, down)) in pauses.into_iter().enumerate() {
            std::thread::sleep(before);
            let mut n = victim.lock().unwrap_or_else(|e| e.into_inner());
            // At a moment it holds work (a few seconds at most), so its leases must be taken over.
            let pid = n.pid().expect("node 2 runs");
            let waited = Instant::now();
            while leased(pid) == 0 && waited.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            n.kill9();
            let held = leased(pid);
            stranded += held;
            log.push(format!("{:?}: node 2 killed holding {held} leased block(s)", t0.elapsed()));
            std::thread::sleep(down);
            n.spawn();
            n.wait_ready(Duration::from_secs(120));
            log.push(format!("{:?}: node 2 ready again", t0.elapsed()));
            drop(n);
            if k == 0 {
                std::thread::sleep(stop_after);
                let mut n3 = stopped.lock().unwrap_or_else(|e| e.into_inner());
                let pid = n3.pid().expect("node 3 runs");
                let code = n3.terminate();
                let held = leased(pid);
                log.push(format!(
                    "{:?}: node 3 stopped (exit {code:?}) holding {held} block(s)",
                    t0.elapsed()
                ));
                assert_eq!(code, Some(0), "node 3 stops cleanly: {}", n3.log_text());
                // What it leased and did not sign is the others' at once, not in 30 s.
                assert_eq!(held, 0, "node 3 stopped still leasing {held} block(s): {}", n3.log_text());
            }
        }
        assert!(stranded > 0, "no kill left leased work for the others to take over: {log:#?}");
        log
    });

    // Meanwhile the 60 batches, through the balancer on several connections, each retried with
    // its idempotency key when its connection dies under it.
    let planned = std::sync::Arc::new(plan());
    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let (planned, mut balanced) =
            (planned.clone(), c.balanced(if s % 2 == 0 { "issuer" } else { "issuer2" }));
        let mut pace = Rng(seed.wrapping_add(s as u64 + 1) | 1);
        submitters.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for p in planned.iter().filter(|p| p.n % SUBMITTERS == s) {
                let r = balanced
                    .send(Method::POST, "/v1/batches", Some(p.body.clone()), Duration::from_secs(300))
                    .await;
                assert_eq!(r.status, 202, "batch {} ({}): {}", p.n, p.key, text(&r));
                let v = r.json().unwrap();
                if v["replayed"] == true {
                    // Its first answer was lost with a node: the retry found the same batch.
                    println!("batch {} ({}): 202 on a retry, replayed", p.n, p.key);
                }
                let id = v["batch_id"].as_str().unwrap().to_owned();
                let location = r.headers["location"].to_str().unwrap().to_owned();
                accepted.push((p.n, id, location));
                tokio::time::sleep(pace.millis(0, 2_000)).await;
            }
            accepted
        }));
    }
    let mut accepted: BTreeMap<usize, String> = BTreeMap::new();
    for s in submitters {
        for (n, id, location) in s.await.expect("submitter") {
            assert_eq!(location, format!("{lb_prefix}{id}"), "the Location of a 202 names the balancer");
            accepted.insert(n, id);
        }
    }
    let ids: HashSet<&String> = accepted.values().collect();
    assert_eq!((accepted.len(), ids.len()), (BATCHES, BATCHES), "each batch accepted once, under its own id");
    let chaos = tokio::task::spawn_blocking(move || chaos.join()).await.unwrap();
    let chaos = chaos.unwrap_or_else(|_| panic!("the chaos thread failed: {}", c.logs()));
    println!("chaos: {chaos:#?}");
    assert_eq!(chaos.len(), 2 * KILLS + 1);

    // Every batch finishes, its results fetched through the balancer: one per record, in order.
    let start = Instant::now();
    let mut hc1s = Vec::with_capacity(BATCHES * PER_BATCH + 100);
    let mut clients = BTreeMap::from([("issuer", c.balanced("issuer")), ("issuer2", c.balanced("issuer2"))]);
    let mut wanted: Vec<(&str, String, Vec<String>)> =
        planned.iter().map(|p| (p.issuer, accepted[&p.n].clone(), p.refs.clone())).collect();
    wanted.push(("issuer", idem_id.clone(), (0..100).map(|i| format!("x-{i}")).collect()));
    for (issuer, id, refs) in &wanted {
        let client = clients.get_mut(issuer).unwrap();
        loop {
            let r = client.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(r.status, 200, "{}", text(&r));
            let v = r.json().unwrap();
            if v["state"] == "done" {
                assert_eq!(
                    (v["total"].as_u64(), v["signed"].as_u64(), v["rejected"].as_u64()),
                    (Some(refs.len() as u64), Some(refs.len() as u64), Some(0)),
                    "batch {id}: {v}"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "batch {id} not done after {:?}: {v}{}",
                start.elapsed(),
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let r = client.get(&format!("/v1/batches/{id}/results")).await;
        assert_eq!(r.status, 200, "{}", text(&r));
        let got = lines(&r.body);
        let got_refs: Vec<&str> = got.iter().map(|l| l["ref"].as_str().unwrap()).collect();
        assert_eq!(
            got_refs.iter().collect::<HashSet<_>>().len(),
            got_refs.len(),
            "batch {id}: a record has two results"
        );
        assert_eq!(
            got_refs,
            refs.iter().map(String::as_str).collect::<Vec<_>>(),
            "batch {id}: results missing or out of order"
        );
        for l in &got {
            assert_eq!(l["status"], "signed", "{l}");
            hc1s.push(l["hc1"].as_str().unwrap().to_owned());
        }
    }
    println!("all {} results fetched {:?} after the last submission", hc1s.len(), start.elapsed());
    assert_eq!(hc1s.len(), BATCHES * PER_BATCH + 100);

    // All verify against the trust list the balancer serves.
    let trust = clients.get_mut("issuer").unwrap().get("/v1/trust-list").await;
    assert_eq!(trust.status, 200);
    let (ok, reports) = verify_all(std::str::from_utf8(&trust.body).unwrap(), &hc1s);
    assert!(ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    assert_eq!(reports.len(), hc1s.len());

    // The one audit chain verifies and holds each released signature once.
    drop(clients);
    for n in [1, 2] {
        c.node(n).terminate();
    }
    assert_eq!(c.audited_signatures(1), (BATCHES * PER_BATCH + 100) as u64, "{}", c.logs());
}

/// `dev-init --join` before the first node ever started: the joined node may even start first
/// (it makes the cluster's audit key); the other then pins that key from the log's own
/// checkpoints, and both sign into the one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joined_before_the_first_start_pins_the_audit_key_from_the_log() {
    let pg = std::thread::spawn(hcert_signer::store::postgres::ScratchCluster::start)
        .join()
        .unwrap()
        .expect("a scratch PostgreSQL");
    let mut first = daemon::Daemon::init_on_cluster(&pg);
    let mut second = daemon::Daemon::join(&first);
    let pem = |d: &daemon::Daemon| d.path().join("state/audit-key.pem");
    assert!(!pem(&first).exists() && !pem(&second).exists(), "no node has started");
    // The joined node starts first: its first start makes the audit key.
    second.spawn();
    second.wait_ready(Duration::from_secs(60));
    assert!(second.log_text().contains("first start: generated the audit key"), "{}", second.log_text());
    first.spawn();
    first.wait_ready(Duration::from_secs(60));
    assert!(first.log_text().contains("pinned the cluster's audit key"), "{}", first.log_text());
    assert_eq!(std::fs::read(pem(&first)).unwrap(), std::fs::read(pem(&second)).unwrap(), "one audit key");
    let tls = first.tls("issuer");
    for d in [&first, &second] {
        let mut c = ApiClient::connect(d.listen, "localhost", &tls).await.unwrap();
        let r = c.post("/v1/sign", &json!({"records": records("j-", 2)})).await.unwrap();
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    assert_eq!(second.terminate(), Some(0));
    assert_eq!(first.terminate(), Some(0));
    assert_eq!(first.audited_signatures(), 4);
}

// ---- Acceptance 3 ----

async fn ok(reply: Reply, what: &str) -> Value {
    assert!(reply.status.is_success(), "{what}: {}", text(&reply));
    reply.json().unwrap_or(Value::Null)
}

/// The trust list a node serves: (text, parsed).
async fn trust_list(c: &mut ApiClient) -> (String, Value) {
    let r = c.get("/v1/trust-list").await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let t = String::from_utf8(r.body.to_vec()).unwrap();
    let v = serde_json::from_str(&t).unwrap();
    (t, v)
}

/// Signs `n` records synchronously at a connection's node (`POST /v1/sign` signs in the node
/// that answers, with its own view of the keys); returns the result lines.
async fn sign_now(c: &mut ApiClient, prefix: &str, n: usize) -> Vec<Value> {
    let r = c.post("/v1/sign", &json!({"records": records(prefix, n)})).await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json().unwrap();
    let results = v["results"].as_array().unwrap().clone();
    assert!(results.iter().all(|l| l["status"] == "signed"), "{v}");
    results
}

fn kids(lines: &[Value]) -> BTreeSet<String> {
    lines.iter().map(|l| l["kid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_officers_rotate_the_dsc_through_two_nodes_and_every_node_signs_with_it() {
    let c = Cluster::start();
    let pids: Vec<Option<u32>> = (1..=3).map(|n| c.node(n).pid()).collect();
    let mut balanced = c.balanced("issuer");
    let (_, before) = trust_list(&mut c.direct(1, "issuer").await).await;
    let old_kid = before.as_object().unwrap().keys().next().unwrap().clone();
    let mut hc1s: Vec<String> = Vec::new();
    let mut released = 0usize;

    // officer1 makes the new key and imports its certificate through node 1, and approves.
    let mut o1 = c.direct(1, "officer1").await;
    let created = ok(o1.post("/v1/keys", &json!({"label": "dsc-2"})).await.unwrap(), "generate").await;
    assert_eq!(created["state"], "generated");
    let csr = o1.post("/v1/keys/dsc-2/csr", &json!({"subject": "C=VN,O=MoH,CN=DSC 2"})).await.unwrap();
    assert_eq!(csr.status, 200, "{}", text(&csr));
    let pem = c.node(1).certify_csr(&csr.body);
    let imported = o1
        .request_typed(Method::PUT, "/v1/keys/dsc-2/certificate", "application/x-pem-file", pem.into_bytes())
        .await
        .unwrap();
    let new_kid = ok(imported, "import").await["kid"].as_str().unwrap().to_owned();
    let first = ok(o1.request(Method::POST, "/v1/keys/dsc-2/approve", None).await.unwrap(), "approve").await;
    assert_eq!((first["state"].as_str(), first["approvals_missing"].as_u64()), (Some("certified"), Some(1)));

    // Not active yet: every node still signs with the old key.
    for n in 1..=3 {
        let l = sign_now(&mut c.direct(n, "issuer").await, &format!("pre{n}-"), 5).await;
        assert_eq!(kids(&l), BTreeSet::from([old_kid.clone()]), "node {n} before the second approval");
        released += l.len();
        hc1s.extend(l.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()));
    }

    // officer2's approval, through node 2, activates it.
    let mut o2 = c.direct(2, "officer2").await;
    let active = ok(o2.request(Method::POST, "/v1/keys/dsc-2/approve", None).await.unwrap(), "approve").await;
    assert_eq!(active["state"], "active", "{active}");
    let activated = Instant::now();

    // Within seconds every node signs with it, none restarted.
    for n in 1..=3 {
        let mut direct = c.direct(n, "issuer").await;
        loop {
            let l = sign_now(&mut direct, &format!("poll{n}-"), 2).await;
            released += l.len();
            hc1s.extend(l.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()));
            if kids(&l) == BTreeSet::from([new_kid.clone()]) {
                println!("node {n} signs with the new DSC {:?} after the activation", activated.elapsed());
                break;
            }
            assert!(
                activated.elapsed() < Duration::from_secs(30),
                "node {n} still signs with {:?} {:?} after the activation{}",
                kids(&l),
                activated.elapsed(),
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A batch sent to each node directly, and one through the balancer: all the new key's.
    let mut batches = Vec::new();
    for n in 1..=3 {
        let mut direct = c.direct(n, "issuer").await;
        let r = direct
            .post("/v1/batches", &json!({"records": records(&format!("after{n}-"), 200)}))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", text(&r));
        batches.push(r.json().unwrap()["batch_id"].as_str().unwrap().to_owned());
    }
    for id in &batches {
        let start = Instant::now();
        loop {
            let v = balanced.get(&format!("/v1/batches/{id}")).await.json().unwrap();
            if v["state"] == "done" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "batch {id}: {v}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let got = lines(&balanced.get(&format!("/v1/batches/{id}/results")).await.body);
        assert_eq!(got.len(), 200);
        assert!(
            got.iter().all(|l| l["status"] == "signed"),
            "{:?}",
            got.iter().find(|l| l["status"] != "signed")
        );
        assert_eq!(kids(&got), BTreeSet::from([new_kid.clone()]), "batch {id}");
        released += got.len();
        hc1s.extend(got.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()));
    }

    // Every node's trust list has both DSCs; everything verifies against the balancer's.
    for n in 1..=3 {
        let (_, tl) = trust_list(&mut c.direct(n, "issuer").await).await;
        assert!(tl.get(&old_kid).is_some() && tl.get(&new_kid).is_some(), "node {n}: {tl}");
    }
    let tl = balanced.get("/v1/trust-list").await;
    let (all_ok, reports) = verify_all(std::str::from_utf8(&tl.body).unwrap(), &hc1s);
    assert!(all_ok, "{:?}", reports.iter().find(|r| r["ok"] != true));

    drop(balanced);
    assert_eq!((1..=3).map(|n| c.node(n).pid()).collect::<Vec<_>>(), pids, "no node restarted");
    for n in 1..=3 {
        c.node(n).terminate();
    }
    assert_eq!(c.audited_signatures(2), released as u64, "{}", c.logs());
}

/// A node stopped with SIGTERM gives back at once every block it leased, those it had not
/// handed to a worker yet included (chunks not a multiple of a block leave some waiting), so
/// the others need not wait for its leases to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_gives_back_every_lease_at_once() {
    let c = Cluster::start();
    for n in [1, 2] {
        assert_eq!(c.node(n).terminate(), Some(0));
    }
    {
        let mut n3 = c.node(3);
        assert_eq!(n3.terminate(), Some(0));
        n3.append_config("\n[pipeline]\nworkers = 1\nchunk_size = 10\n");
        n3.spawn();
        n3.wait_ready(Duration::from_secs(120));
    }
    let mut direct = c.direct(3, "issuer").await;
    let r = direct.post("/v1/batches", &json!({"records": records("s-", 3000)})).await.unwrap();
    assert_eq!(r.status, 202, "{}", text(&r));
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let v = direct.get(&format!("/v1/batches/{id}")).await.unwrap().json().unwrap();
        if v["signed"].as_u64().unwrap_or(0) > 0 {
            assert_ne!(v["state"], "done", "signed too fast to stop it midway: {v}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(direct);
    let database = c.database();
    let pid = c.node(3).pid().unwrap();
    let code = c.node(3).terminate();
    assert_eq!(code, Some(0), "{}", c.logs());
    let held: i64 = std::thread::spawn(move || {
        cluster::leased_by(&hcert_signer::store::postgres::open(database).unwrap(), pid)
    })
    .join()
    .unwrap();
    assert_eq!(held, 0, "the stopped node still leases {held} block(s){}", c.logs());
}

/// A node frozen (SIGSTOP) while it holds leased work, past the lease: the others take its
/// chunks over and finish every batch; when it wakes, its late commits write nothing — the
/// results do not change, each record has one, and the audit chain counts each released
/// signature once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_leases_writes_nothing_when_it_wakes() {
    let c = Cluster::start();
    let mut balanced = c.balanced("issuer");
    let mut ids = Vec::new();
    for b in 0..4 {
        let body =
            json!({"idempotency_key": format!("frozen-{b}"), "records": records(&format!("f{b}-"), 1000)});
        let r = balanced
            .send(
                Method::POST,
                "/v1/batches",
                Some(serde_json::to_vec(&body).unwrap()),
                Duration::from_secs(120),
            )
            .await;
        assert_eq!(r.status, 202, "{}", text(&r));
        ids.push(r.json().unwrap()["batch_id"].as_str().unwrap().to_owned());
    }
    let start = Instant::now();
    while c.leased_by_node(2) == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "node 2 never leased work{}", c.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.node(2).signal("STOP");
    let frozen = Instant::now();
    let held = c.leased_by_node(2);
    println!("node 2 frozen holding {held} leased block(s)");

    // The others finish everything, node 2's chunks once its leases have ended.
    let mut before = Vec::new();
    for id in &ids {
        loop {
            let v = balanced.get(&format!("/v1/batches/{id}")).await.json().unwrap();
            if v["state"] == "done" {
                assert_eq!((v["signed"].as_u64(), v["rejected"].as_u64()), (Some(1000), Some(0)), "{v}");
                break;
            }
            assert!(frozen.elapsed() < Duration::from_secs(300), "batch {id} not done: {v}{}", c.logs());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        before.push(balanced.get(&format!("/v1/batches/{id}/results")).await.body);
    }
    println!("all done {:?} after the freeze", frozen.elapsed());
    // Past its leases for certain, then awake: whatever it signed meanwhile it tries to commit.
    tokio::time::sleep(Duration::from_secs(35).saturating_sub(frozen.elapsed())).await;
    c.node(2).signal("CONT");
    c.node(2).wait_ready(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut hc1s = Vec::new();
    for (id, earlier) in ids.iter().zip(&before) {
        let now = balanced.get(&format!("/v1/batches/{id}/results")).await.body;
        assert_eq!(&now, earlier, "batch {id}: results changed after the frozen node woke");
        let got = lines(&now);
        let refs: HashSet<&str> = got.iter().map(|l| l["ref"].as_str().unwrap()).collect();
        assert_eq!((got.len(), refs.len()), (1000, 1000), "batch {id}: one result per record");
        hc1s.extend(got.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()));
    }
    let tl = balanced.get("/v1/trust-list").await;
    let (ok, reports) = verify_all(std::str::from_utf8(&tl.body).unwrap(), &hc1s);
    assert!(ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    drop(balanced);
    for n in 1..=3 {
        c.node(n).terminate();
    }
    assert_eq!(c.audited_signatures(1), 4000, "each released signature audited once{}", c.logs());
}
