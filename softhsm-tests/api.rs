//! The daemon over real TLS on loopback, with the certificates dev-init made: the batch API of
//! PRODUCT.md end to end, and everything it must refuse.

mod daemon;

use std::time::Duration;

use daemon::{Daemon, records, verify_all, wait_done};
use hcert_signer::client::{ApiClient, ClientTls};
use serde_json::{Value, json};

fn ndjson(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body).lines().map(|l| serde_json::from_str(l).expect("NDJSON line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_signed_fetched_and_verified() {
    let d = Daemon::start();
    let mut c = d.client("issuer").await;
    let recs = records("r", 10_000);
    let r = c.post("/v1/batches", &json!({"records": recs})).await.unwrap();
    assert_eq!(r.status, 202, "{:?}", r.body);
    let accepted = r.json().unwrap();
    assert_eq!(accepted["state"], "queued");
    assert_eq!(accepted["records"], 10_000);
    let id = accepted["batch_id"].as_str().unwrap().to_owned();
    let location = r.headers.get("location").unwrap().to_str().unwrap();
    assert_eq!(location, format!("https://{}/v1/batches/{id}", d.listen));

    let status = wait_done(&mut c, &id, Duration::from_secs(600)).await;
    assert_eq!(
        (status["total"].as_u64(), status["signed"].as_u64(), status["rejected"].as_u64()),
        (Some(10_000), Some(10_000), Some(0))
    );
    let results = c.get(&format!("/v1/batches/{id}/results")).await.unwrap();
    assert_eq!(results.status, 200);
    assert_eq!(results.headers["content-type"], "application/x-ndjson");
    let lines = ndjson(&results.body);
    assert_eq!(lines.len(), 10_000);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["ref"], format!("r{i}"));
        assert_eq!(l["status"], "signed", "{l}");
        assert!(l["uvci"].as_str().unwrap().starts_with("URN:UVCI:01:VN:"));
        assert!(l["exp"].as_i64().unwrap() > l["iat"].as_i64().unwrap());
    }
    let trust = c.get("/v1/trust-list").await.unwrap();
    assert_eq!(trust.status, 200);
    let hc1s: Vec<String> = lines.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()).collect();
    let (all_ok, reports) = verify_all(std::str::from_utf8(&trust.body).unwrap(), &hc1s);
    assert!(all_ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    assert_eq!(reports.len(), 10_000);

    // The issuer is done with it: purge, and it is gone.
    assert_eq!(c.delete(&format!("/v1/batches/{id}")).await.unwrap().status, 200);
    assert_eq!(c.get(&format!("/v1/batches/{id}")).await.unwrap().status, 404);
    assert_eq!(c.get(&format!("/v1/batches/{id}/results")).await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bad_records_out_of_a_hundred() {
    let d = Daemon::start();
    let mut c = d.client("issuer").await;
    let mut recs = records("r", 100);
    recs[10]["dcc"]["v"] = json!([]); // may not hit a vaccination record: replace the groups
    for g in ["t", "r"] {
        recs[10]["dcc"].as_object_mut().unwrap().remove(g);
    }
    recs[50]["dcc"]["dob"] = json!("2999-01-01");
    recs[90]["dcc"]["nam"] = json!({"fn": "X"});
    let r = c.post("/v1/batches", &json!({"records": recs})).await.unwrap();
    assert_eq!(r.status, 202);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    let status = wait_done(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!((status["signed"].as_u64(), status["rejected"].as_u64()), (Some(97), Some(3)));
    let lines = ndjson(&c.get(&format!("/v1/batches/{id}/results")).await.unwrap().body);
    let rejected: Vec<&Value> = lines.iter().filter(|l| l["status"] == "rejected").collect();
    assert_eq!(
        rejected.iter().map(|l| l["ref"].as_str().unwrap()).collect::<Vec<_>>(),
        ["r10", "r50", "r90"]
    );
    let messages: Vec<&str> = rejected.iter().map(|l| l["error"]["message"].as_str().unwrap()).collect();
    assert!(messages[0].starts_with("v"), "{messages:?}");
    assert!(messages[1].starts_with("dob"), "{messages:?}");
    assert!(messages[2].starts_with("nam"), "{messages:?}");
    for l in &rejected {
        assert!(l["error"]["code"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    let d = Daemon::start();
    let mut issuer = d.client("issuer").await;

    // Malformed JSON → 400 with a message.
    let r = issuer.request(http::Method::POST, "/v1/batches", Some(b"{not json".to_vec())).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json().unwrap()["error"]["message"].as_str().unwrap().contains("invalid request body"));
    // A body that is not declared JSON → 415; an unknown route → 404.
    let r = issuer.request(http::Method::POST, "/v1/batches", None).await.unwrap();
    assert_eq!(r.status, 415);
    let r = issuer.request(http::Method::GET, "/v1/nowhere", None).await.unwrap();
    assert_eq!(r.status, 404);
    // Oversize body → 413 (the default limit is 16 MiB), answered from the declared length
    // before a byte of the body is read. Raw TLS, because an HTTP client would still be busy
    // writing the body when the server closes.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(d.listen).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(d.tls("issuer").rustls_config());
        let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
        tls.write_all(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 17825792\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 512];
        let n = tls.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    }

    // A client without the issue role → 403.
    let mut officer = d.client("officer1").await;
    let r = officer.post("/v1/batches", &json!({"records": records("o", 1)})).await.unwrap();
    assert_eq!(r.status, 403);

    // Another issuer's batch → 404.
    let mut issuer = d.client("issuer").await;
    let r = issuer.post("/v1/batches", &json!({"records": records("a", 2)})).await.unwrap();
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    let mut other = d.client("issuer2").await;
    assert_eq!(other.get(&format!("/v1/batches/{id}")).await.unwrap().status, 404);
    assert_eq!(other.get(&format!("/v1/batches/{id}/results")).await.unwrap().status, 404);
    assert_eq!(other.delete(&format!("/v1/batches/{id}")).await.unwrap().status, 404);
    assert_eq!(issuer.get(&format!("/v1/batches/{id}")).await.unwrap().status, 200);

    // No client certificate: the handshake (or the first exchange, with TLS 1.3) fails.
    let anon = ClientTls::anonymous(&d.path().join("tls/ca.pem")).unwrap();
    let refused = match ApiClient::connect(d.listen, "localhost", &anon).await {
        Err(_) => true,
        Ok(mut c) => c.get("/v1/trust-list").await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // A certificate from a CA the server does not trust.
    let rogue = hcert_signer::pki::dev::DevCa::new("VN", "Rogue", "Rogue CA", 1).unwrap();
    let tls = d.tls_presenting(&rogue.issue_client("issuer", 30).unwrap());
    let refused = match ApiClient::connect(d.listen, "localhost", &tls).await {
        Err(_) => true,
        Ok(mut c) => c.get("/v1/trust-list").await.is_err(),
    };
    assert!(refused, "a client with an untrusted certificate was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_across_restart() {
    let mut d = Daemon::start();
    let body = json!({"records": records("i", 20), "idempotency_key": "upload-2026-11-22-0001"});
    let mut c = d.client("issuer").await;
    let first = c.post("/v1/batches", &body).await.unwrap().json().unwrap();
    let second = c.post("/v1/batches", &body).await.unwrap().json().unwrap();
    assert_eq!(first["batch_id"], second["batch_id"]);
    assert_eq!(second["replayed"], true);
    // The same key from another issuer is another batch.
    let mut c2 = d.client("issuer2").await;
    let other = c2.post("/v1/batches", &body).await.unwrap().json().unwrap();
    assert_ne!(first["batch_id"], other["batch_id"]);

    assert_eq!(d.terminate(), Some(0), "SIGTERM must stop cleanly: {}", d.log_text());
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;
    let third = c.post("/v1/batches", &body).await.unwrap().json().unwrap();
    assert_eq!(first["batch_id"], third["batch_id"]);
    let id = first["batch_id"].as_str().unwrap();
    let status = wait_done(&mut c, id, Duration::from_secs(60)).await;
    assert_eq!(status["total"], 20);
    assert_eq!(status["signed"].as_u64().unwrap() + status["rejected"].as_u64().unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_sign_and_every_documented_route_answers() {
    let d = Daemon::start();
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/sign", &json!({"records": records("s", 3)})).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results = r.json().unwrap()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    let trust = c.get("/v1/trust-list").await.unwrap();
    let hc1s: Vec<String> = results.iter().map(|l| l["hc1"].as_str().unwrap().to_owned()).collect();
    assert!(verify_all(std::str::from_utf8(&trust.body).unwrap(), &hc1s).0);

    // The yearly renewal: the same content with its UVCI is signed again, keeping the UVCI.
    let mut renewal = records("s", 1);
    let uvci = results[0]["uvci"].as_str().unwrap().to_owned();
    for g in ["v", "t", "r"] {
        if let Some(e) = renewal[0]["dcc"].get_mut(g).and_then(|a| a.get_mut(0)) {
            e["ci"] = json!(uvci);
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = c.post("/v1/sign", &json!({"records": renewal})).await.unwrap().json().unwrap();
    let again = &again["results"][0];
    assert_eq!(again["status"], "signed", "{again}");
    assert_eq!(again["uvci"], uvci.as_str());
    assert!(again["iat"].as_i64().unwrap() > results[0]["iat"].as_i64().unwrap());
    assert_ne!(again["hc1"], results[0]["hc1"]);

    // Every route of the OpenAPI document is answered by the server (not "no_route").
    let id = c.post("/v1/batches", &json!({"records": records("x", 1)})).await.unwrap().json().unwrap()["batch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, template) in hcert_signer::api::ROUTES {
        let path = template.replace("{id}", &id);
        let method: http::Method = method.parse().unwrap();
        let body = (method == http::Method::POST)
            .then(|| serde_json::to_vec(&json!({"records": records("y", 1)})).unwrap());
        let r = c.request(method.clone(), &path, body).await.unwrap();
        let code = r.json().ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        assert_ne!(code.as_deref(), Some("no_route"), "{method} {path}");
        assert_ne!(r.status, 405, "{method} {path}");
    }
    // A method a route does not answer: 405, and `Allow` names exactly the ones it does.
    for (method, path, allow) in [
        ("PUT", "/v1/batches".to_owned(), "POST"),
        ("POST", format!("/v1/batches/{id}"), "GET, DELETE"),
        ("DELETE", "/v1/trust-list".to_owned(), "GET"),
        ("POST", "/healthz".to_owned(), "GET, HEAD"),
        ("DELETE", "/readyz".to_owned(), "GET, HEAD"),
    ] {
        let r = c.request(method.parse().unwrap(), &path, None).await.unwrap();
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
    assert_eq!(c.request(http::Method::PUT, "/v1/nothing", None).await.unwrap().status, 404);
    // Health answers on the operations listener without a certificate, to GET and HEAD only.
    assert_eq!(daemon::ops_get(d.ops, "/healthz").unwrap().0, 200);
    assert_eq!(daemon::ops_get(d.ops, "/readyz").unwrap().0, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, head, body) = daemon::ops_request(d.ops, "HEAD", path).unwrap();
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}: {head}");
        let (status, head, _) = daemon::ops_request(d.ops, "POST", path).unwrap();
        assert_eq!(status, 405, "POST {path}");
        assert!(head.to_ascii_lowercase().contains("\r\nallow: get, head"), "POST {path}: {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_answers_503_with_retry_after() {
    let mut d = Daemon::init();
    // Accept-only (no signing workers) and a tiny queue, so the queue fills and stays full.
    d.append_config("\n[pipeline]\nworkers = 0\n\n[limits]\nmax_queued_records = 10\n");
    d.spawn();
    d.wait_started();
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", &json!({"records": records("q", 10)})).await.unwrap();
    assert_eq!(r.status, 202);
    let r = c.post("/v1/batches", &json!({"records": records("p", 1)})).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "10");
    assert_eq!(r.json().unwrap()["error"]["code"], "busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_clients_without_dropping_connections() {
    let d = Daemon::start();
    // A new client certificate from the same CA, not yet configured.
    let ca = hcert_signer::pki::dev::DevCa::load(
        &std::fs::read_to_string(d.path().join("tls/ca.pem")).unwrap(),
        &std::fs::read_to_string(d.path().join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    let cert = ca.issue_client("issuer3", 30).unwrap();
    std::fs::write(d.path().join("tls/issuer3.pem"), &cert.cert_pem).unwrap();
    std::fs::write(d.path().join("tls/issuer3.key"), &cert.key_pem).unwrap();
    let mut open = d.client("issuer").await;
    let mut newcomer = d.client("issuer3").await;
    assert_eq!(newcomer.get("/v1/trust-list").await.unwrap().status, 403);

    d.append_config("\n[[client]]\nname = \"issuer3\"\nroles = [\"issue\"]\n");
    d.signal("HUP");
    assert!(served_soon(&d, "issuer3").await, "issuer3 not accepted after SIGHUP: {}", d.log_text());
    // The connection opened before the reload still works.
    assert_eq!(open.get("/v1/trust-list").await.unwrap().status, 200);
    assert!(d.log_text().contains("reloaded TLS material"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_connection_cap_gets_429_and_others_are_served() {
    let mut d = Daemon::init();
    d.append_config("\n[limits]\nmax_connections_per_client = 2\n");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut first = d.client("issuer").await;
    let mut second = d.client("issuer").await;
    assert_eq!(first.get("/v1/trust-list").await.unwrap().status, 200);
    assert_eq!(second.get("/v1/trust-list").await.unwrap().status, 200);

    // A third connection of the same client: told why, in HTTP, and closed.
    let mut third = d.client("issuer").await;
    let r = third.get("/v1/trust-list").await.unwrap_or_else(|e| panic!("{e}:\n{}", d.log_text()));
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["connection"], "close");
    let body = r.json().unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("2 connections"), "{body}");
    assert!(third.get("/v1/trust-list").await.is_err(), "the refused connection stays open");

    // Another client has its own count; the first two connections keep working.
    let mut other = d.client("issuer2").await;
    assert_eq!(other.get("/v1/trust-list").await.unwrap().status, 200);
    assert_eq!(first.get("/v1/trust-list").await.unwrap().status, 200);

    // A closed connection gives its place back.
    drop(second);
    assert!(
        served_soon(&d, "issuer").await,
        "no place given back after a connection closed:\n{}",
        d.log_text()
    );
}

/// Whether a fresh connection of `client` gets the trust list within 5 s (changes on the
/// server side — a reload, a connection closing — take effect asynchronously).
async fn served_soon(d: &Daemon, client: &str) -> bool {
    for _ in 0..50 {
        let mut c = d.client(client).await;
        if c.get("/v1/trust-list").await.unwrap().status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Issue 20, acceptance 1: a client that writes its whole body before reading (Python
/// `requests`) reads the early answers — 413 for a 17 MB batch, 403 for a 300 KB body on an
/// officer-only route, 415 for a wrong media type — 20 times out of 20 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_clients_that_write_the_whole_body_first() {
    let d = Daemon::start();
    let tls = d.path().join("tls");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-tests/clients/early_answers.py");
    // The daemon is another process: blocking this test's thread holds nothing up.
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("https://localhost:{}", d.listen.port()))
        .arg(tls.join("ca.pem"))
        .arg(tls.join("issuer.pem"))
        .arg(tls.join("issuer.key"))
        .arg("20")
        .output()
        .expect("python3 with requests (scripts/install-deps.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON report");
    for case in ["batch_of_17_mb", "officer_route_300_kb", "wrong_type_300_kb"] {
        let r = &report[case];
        let expected = r["expected"].to_string();
        assert_eq!(r["got"], json!({ expected: 20 }), "{case}: {r}");
    }
}
