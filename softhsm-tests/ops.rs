//! What operators rely on, against a real daemon: the metrics equal what was signed and
//! rejected and the DSC dates equal the certificate's; no log line carries a name, a birth date
//! or the PIN; readiness follows the HSM away and back without a restart; and the daemon serves
//! through listening sockets passed the way systemd passes them, telling systemd when it is ready.

mod daemon;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{BIN, Daemon, ops_get, records, verify_all, wait_done};
use hcert_signer::client::ApiClient;
use hcert_signer::config::Config;
use hcert_signer::pki::Dsc;
use serde_json::{Value, json};

/// Parses a Prometheus text exposition into `series{labels} → value`.
fn scrape(d: &Daemon) -> BTreeMap<String, f64> {
    let (status, body) = ops_get(d.ops, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_signed_and_show_the_dsc_dates() {
    let unix_now =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let before_start = unix_now();
    let d = Daemon::start();
    let mut c = d.client("issuer").await;
    let mut recs = records("m-", 100);
    for i in [3, 40, 77] {
        recs[i]["dcc"]["dob"] = json!("1990-13-45");
    }
    let r = c.post("/v1/batches", &json!({"records": recs})).await.unwrap();
    assert_eq!(r.status, 202);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    wait_done(&mut c, &id, Duration::from_secs(120)).await;
    let sync = c.post("/v1/sign", &json!({"records": records("s-", 2)})).await.unwrap();
    assert_eq!(sync.status, 200);

    let m = scrape(&d);
    let kid = {
        let pem = std::fs::read_to_string(d.path().join("dsc/dsc-dev-1.pem")).unwrap();
        Dsc::from_pem(&pem).unwrap()
    };
    let kid_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(kid.kid)
    };
    assert_eq!(m.get(&format!("hcert_signatures_total{{kid=\"{kid_b64}\"}}")), Some(&99.0), "{m:#?}");
    assert_eq!(sum(&m, "hcert_records_rejected_total"), 3.0);
    assert_eq!(m.get("hcert_batches_total{state=\"accepted\"}"), Some(&1.0));
    assert_eq!(m.get("hcert_batches_total{state=\"done\"}"), Some(&1.0));
    assert_eq!(m.get("hcert_queue_records"), Some(&0.0));
    assert_eq!(m.get("hcert_record_latency_seconds_count"), Some(&97.0));
    assert!(m.get("hcert_hsm_sign_duration_seconds_count").is_some_and(|n| *n >= 2.0));
    assert_eq!(m.get("hcert_hsm_up"), Some(&1.0));
    assert_eq!(m.get("hcert_ready"), Some(&1.0));
    assert_eq!(
        m.get(&format!("hcert_dsc_not_after_timestamp_seconds{{kid=\"{kid_b64}\"}}")),
        Some(&(kid.not_after as f64))
    );
    assert_eq!(
        m.get(&format!("hcert_dsc_usage_end_timestamp_seconds{{kid=\"{kid_b64}\"}}")),
        Some(&((kid.not_before + 182 * 86_400).min(kid.not_after) as f64))
    );
    assert_eq!(m.get(&format!("hcert_dsc_active{{kid=\"{kid_b64}\"}}")), Some(&1.0));
    assert!(m.get("process_resident_memory_bytes").is_some_and(|v| *v > 0.0));
    // Uptime without /proc/stat (hidden by the hardened unit's ProcSubset=pid).
    let started = m["hcert_start_time_seconds"];
    assert!((before_start.floor()..=unix_now()).contains(&started), "{started} not within this test");
    assert!(
        m.keys().any(|k| k.starts_with("hcert_http_requests_total{route=\"/v1/batches\",status=\"202\"}"))
    );
    // No personal data, no ids in any label: only kids, codes, states, templates, reasons.
    assert!(!m.keys().any(|k| k.contains(&id)), "a batch id leaked into a label");

    // Every metric the dashboard and the alert rules query exists in this real scrape.
    let used = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/monitoring/metrics-used.txt"))
        .expect("monitoring/metrics-used.txt");
    let names: std::collections::BTreeSet<&str> =
        m.keys().map(|k| k.split('{').next().unwrap_or(k)).collect();
    let missing: Vec<&str> =
        used.lines().map(str::trim).filter(|n| !n.is_empty() && !names.contains(n)).collect();
    assert!(missing.is_empty(), "queried by monitoring/ but absent from /metrics: {missing:?}");
}

/// Names and birth dates that must never reach a log line.
const SECRET_FAMILY: &str = "Zyxtrân";
const SECRET_GIVEN: &str = "Quỳnhxa";
const SECRET_DOB: &str = "1943-02-17";

fn personal(mut recs: Vec<Value>) -> Vec<Value> {
    for r in &mut recs {
        r["dcc"]["nam"] =
            json!({"fn": SECRET_FAMILY, "fnt": "ZYXTRAN", "gn": SECRET_GIVEN, "gnt": "QUYNHXA"});
        r["dcc"]["dob"] = json!(SECRET_DOB);
    }
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_carries_a_name_a_birth_date_or_the_pin() {
    let mut d = Daemon::init();
    let config = d.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("log_level = \"info\"", "log_level = \"debug\"")).unwrap();
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut c = d.client("issuer").await;
    let mut recs = personal(records("p-", 50));
    // Bad records carrying the same personal data: their errors must not echo it either.
    recs[1]["dcc"]["v"][0]["mp"] = json!("NOT-A-VACCINE");
    recs[2]["dcc"]["nam"]["fnt"] = json!("zyxtran lowercase");
    recs[3]["dcc"]["dob"] = json!("1943-02-30");
    let r = c.post("/v1/batches", &json!({"records": recs})).await.unwrap();
    assert_eq!(r.status, 202);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();
    wait_done(&mut c, &id, Duration::from_secs(120)).await;
    assert_eq!(c.get(&format!("/v1/batches/{id}/results")).await.unwrap().status, 200);
    assert_eq!(
        c.post("/v1/sign", &json!({"records": personal(records("q-", 3))})).await.unwrap().status,
        200
    );
    let malformed = format!("{{\"records\":[{{\"ref\":\"x\",\"dcc\":{{\"nam\":\"{SECRET_FAMILY}\"");
    let r = c.request(http::Method::POST, "/v1/batches", Some(malformed.into_bytes())).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(c.delete(&format!("/v1/batches/{id}")).await.unwrap().status, 200);
    let mut o = d.client("officer1").await;
    assert_eq!(o.post("/v1/keys", &json!({"label": "dsc-log"})).await.unwrap().status, 201);
    assert_eq!(d.terminate(), Some(0));

    let log = d.log_text();
    assert!(log.contains("batch accepted"), "the run was logged at debug level: {log}");
    let pin = std::fs::read_to_string(d.path().join("hsm-pin")).unwrap();
    for secret in
        [SECRET_FAMILY, SECRET_GIVEN, "ZYXTRAN", "zyxtran", "QUYNHXA", SECRET_DOB, "1943-02", pin.trim()]
    {
        assert!(!log.contains(secret), "a log line carries {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_hsm_away_and_back_without_a_restart() {
    let d = Daemon::start();
    let tokens = d.path().join("tokens");
    let away = d.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let wait = |want: u16, within: Duration| {
        let start = Instant::now();
        loop {
            if let Some((status, body)) = ops_get(d.ops, "/readyz")
                && status == want
            {
                return body;
            }
            assert!(start.elapsed() < within, "/readyz never answered {want}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let body = wait(503, Duration::from_secs(30));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert!(v["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().starts_with("hsm:")), "{v}");
    let m = scrape(&d);
    assert_eq!((m.get("hcert_hsm_up"), m.get("hcert_ready")), (Some(&0.0), Some(&0.0)));

    // Accepted meanwhile, signed once the token is back.
    let mut c = d.client("issuer").await;
    let r = c.post("/v1/batches", &json!({"records": records("h-", 20)})).await.unwrap();
    assert_eq!(r.status, 202);
    let id = r.json().unwrap()["batch_id"].as_str().unwrap().to_owned();

    std::fs::rename(&away, &tokens).unwrap();
    wait(200, Duration::from_secs(90));
    let status = wait_done(&mut c, &id, Duration::from_secs(90)).await;
    assert_eq!(status["signed"], 20);
    let m = scrape(&d);
    assert_eq!(m.get("hcert_hsm_up"), Some(&1.0));
    assert!(m.get("hcert_hsm_reinits_total").is_some_and(|n| *n >= 1.0), "{m:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_through_sockets_passed_by_systemd_and_notifies_readiness() {
    let d = Daemon::init();
    let config = Config::load(&d.path().join("config.toml")).unwrap();
    // A notify socket like systemd's, to receive READY=1 and STATUS= lines.
    let notify_path = d.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // systemd-socket-activate binds the two sockets, passes them as LISTEN_FDS with names and
    // starts the daemon on the first connection, exactly as a .socket unit does.
    let child = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", config.listen))
        .arg(format!("--listen={}", config.metrics_listen))
        .arg("--fdname=api:metrics")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .args([BIN, "serve", "--config"])
        .arg(d.path().join("config.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&d.log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (from the systemd package)");
    let child = Reap(child);
    // The first connection starts the daemon; the socket was listening all along.
    let start = Instant::now();
    let status = loop {
        // Until systemd-socket-activate has bound the sockets.
        if let Some((status, _)) = ops_get(d.ops, "/healthz") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the passed metrics socket never answered: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200);
    let mut ready = false;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready && Instant::now() < deadline {
        let n = notify.recv(&mut buf).expect("a notification from the daemon");
        let text = String::from_utf8_lossy(&buf[..n]);
        ready = text.lines().any(|l| l == "READY=1");
    }
    assert!(ready, "READY=1 was never sent: {}", d.log_text());
    let mut c = ApiClient::connect(config.listen, "localhost", &d.tls("issuer")).await.expect("connect");
    let r = c.post("/v1/sign", &json!({"records": records("sa-", 5)})).await.unwrap();
    assert_eq!(r.status, 200, "{}", d.log_text());
    let hc1s: Vec<String> = r.json().unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["hc1"].as_str().unwrap().to_owned())
        .collect();
    let trust = c.get("/v1/trust-list").await.unwrap();
    let (ok, reports) = verify_all(std::str::from_utf8(&trust.body).unwrap(), &hc1s);
    assert!(ok, "{reports:?}");
    assert!(d.log_text().contains(&format!("serving on https://{}", config.listen)));
    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
}

/// Stops a child process however the test ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_wrong_pin_stops_the_daemon_with_the_no_restart_status() {
    let d = Daemon::init();
    std::fs::write(d.path().join("hsm-pin"), "not-the-pin").unwrap();
    let out =
        Command::new(BIN).args(["serve", "--config"]).arg(d.path().join("config.toml")).output().unwrap();
    // 78 (EX_CONFIG): the unit's RestartPreventExitStatus, so systemd does not retry the PIN.
    assert_eq!(out.status.code(), Some(i32::from(hcert_signer::error::EXIT_CONFIG)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("hcert-signer: ") && last.to_lowercase().contains("pin"), "{stderr}");
    assert!(!stderr.contains("not-the-pin"));
}
