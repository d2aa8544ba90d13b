//! Scale-out on an existing engine: two appliances, each with its own SoftHSM token and DSC,
//! behind HAProxy in TCP mode with the shipped `scale-out/haproxy.cfg` (mutual TLS passes through
//! untouched). Batches spread over both; each 202's `Location` names the accepting node, where
//! every result is fetched; everything verifies against the two nodes' trust lists. HAProxy
//! sends a PROXY protocol v2 header on each connection, which the nodes accept from it only.

mod daemon;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use daemon::{Daemon, Haproxy, free_port, records, verify_all, wait_done};
use hcert_signer::client::ApiClient;
use hcert_signer::hcert::TrustList;
use serde_json::{Value, json};

/// Where the test's issuer fetches from the nodes directly (any loopback address but the
/// balancer's).
const ISSUER_HOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliances_behind_haproxy_share_the_batches() {
    let (mut n1, mut n2) = (Daemon::init(), Daemon::init());
    // One client PKI for the deployment: node 2 presents and trusts node 1's TLS material.
    let (tls1, tls2) = (n1.path().join("tls"), n2.path().join("tls"));
    let config2 = n2.path().join("config.toml");
    let text = std::fs::read_to_string(&config2).unwrap();
    std::fs::write(&config2, text.replace(&tls2.display().to_string(), &tls1.display().to_string())).unwrap();
    for n in [&n1, &n2] {
        n.append_config(&format!("public_url = \"https://{}\"", n.listen));
        // HAProxy reaches the nodes from 127.0.0.1 (the balancer's address in production).
        n.append_config("\n[api]\nproxy_protocol_from = [\"127.0.0.1\"]\n");
    }
    n1.spawn();
    n2.spawn();
    n1.wait_ready(Duration::from_secs(60));
    n2.wait_ready(Duration::from_secs(60));

    let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _haproxy = Haproxy::start(lb, [&n1, &n2], &n1.path().join("haproxy.log"));
    let tls = n1.tls("issuer");
    // Up when HAProxy answers with a backend behind it.
    let start = Instant::now();
    loop {
        if let Ok(mut c) = ApiClient::connect(lb, "localhost", &tls).await
            && c.get("/v1/trust-list").await.is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "HAProxy did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Eight batches, each on its own connection held open, so leastconn spreads them.
    let mut held: Vec<ApiClient> = Vec::new();
    let mut locations: Vec<String> = Vec::new();
    for i in 0..8 {
        let mut c = ApiClient::connect(lb, "localhost", &tls).await.unwrap();
        let r = c.post("/v1/batches", &json!({"records": records(&format!("b{i}-"), 200)})).await.unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        locations.push(r.headers["location"].to_str().unwrap().to_owned());
        held.push(c);
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for l in &locations {
        *per_node.entry(l.split("/v1/").next().unwrap().to_owned()).or_default() += 1;
    }
    let nodes: BTreeSet<String> =
        [format!("https://{}", n1.listen), format!("https://{}", n2.listen)].into_iter().collect();
    assert_eq!(per_node.keys().cloned().collect::<BTreeSet<_>>(), nodes, "batches spread over both nodes");

    // Status and results straight from the node that holds each batch.
    let mut hc1s = Vec::new();
    let mut trust = TrustList::new();
    for node in [&n1, &n2] {
        // From another host than the balancer: 127.0.0.1 must send a PROXY header.
        let mut direct = ApiClient::connect_from(ISSUER_HOST, node.listen, "localhost", &tls).await.unwrap();
        let list = direct.get("/v1/trust-list").await.unwrap();
        for dsc in TrustList::from_json(std::str::from_utf8(&list.body).unwrap()).unwrap().iter() {
            trust.insert(dsc.clone());
        }
        for l in locations.iter().filter(|l| l.starts_with(&format!("https://{}/", node.listen))) {
            let path = &l[l.find("/v1/").unwrap()..];
            let id = path.trim_start_matches("/v1/batches/");
            let status = wait_done(&mut direct, id, Duration::from_secs(120)).await;
            assert_eq!(status["signed"], 200, "{status}");
            let results = direct.get(&format!("{path}/results")).await.unwrap();
            let lines: Vec<Value> = String::from_utf8_lossy(&results.body)
                .lines()
                .map(|x| serde_json::from_str(x).unwrap())
                .collect();
            assert_eq!(lines.len(), 200);
            hc1s.extend(lines.iter().map(|x| x["hc1"].as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(trust.len(), 2, "each appliance signs with its own DSC");
    assert_eq!(hc1s.len(), 1600);
    let (ok, reports) = verify_all(&trust.to_json(), &hc1s);
    assert!(ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    let kids: BTreeSet<String> = reports.iter().map(|r| r["kid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kids.len(), 2, "both nodes signed");
}
