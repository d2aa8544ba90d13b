//! Hostile clients against a real daemon (issue #7): each test starts one daemon, runs a
//! well-behaved issuer concurrently (a fresh mTLS connection per round, `POST /v1/sign` and now
//! and then a batch submitted, polled, fetched and deleted, every round under a deadline well
//! below the server's own timeouts), attacks the API listener, and checks that the attack is
//! refused as it should be, that the good client was served throughout, and that the daemon is
//! healthy afterwards with no panic in its log.
//!
//! Crafted clients are raw `tokio::net::TcpStream`s, `tokio_rustls` with chosen versions, suites
//! and ALPN, hand-built ClientHellos for what no modern library sends any more (SSLv2/SSLv3,
//! export and NULL suites), and `openssl s_client` for legacy protocol offers.

mod daemon;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::Daemon;
use hcert_signer::client::{ApiClient, ClientTls};
use hcert_signer::pki::dev::DevCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ProtocolVersion, SupportedCipherSuite, SupportedProtocolVersion};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `HANDSHAKE_TIMEOUT` of src/api/server.rs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `HEADER_TIMEOUT` of src/api/server.rs.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `MAX_CONNECTIONS` of src/api/server.rs.
const MAX_CONNECTIONS: usize = 1024;
/// `MAX_HANDSHAKES_PER_PEER` of src/api/server.rs.
const MAX_HANDSHAKES_PER_PEER: usize = 64;
/// A good client's round (connect, sign, sometimes a batch) must finish within this: half the
/// server's handshake timeout, so waiting behind stalled handshakes counts as a failure.
const GOOD_ROUND_DEADLINE: Duration = Duration::from_secs(5);
/// Quick attacks are repeated for at least this long, so the good client runs through them.
const ATTACK_MIN: Duration = Duration::from_secs(3);
/// Good rounds required within an [`ATTACK_MIN`] window.
const MIN_ROUNDS_SHORT: u64 = 5;
/// The loopback addresses attackers connect from; the good client uses 127.0.0.1.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ATTACKER2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

// ---------------------------------------------------------------------------------------------
// The well-behaved client

#[derive(Default)]
struct Stats {
    rounds: AtomicU64,
    requests: AtomicU64,
    signed: AtomicU64,
    batches: AtomicU64,
    slowest_ms: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// An issuer signing small batches in a loop, a fresh connection per round.
struct GoodClient {
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

/// What the good client did.
struct GoodReport {
    rounds: u64,
    requests: u64,
    signed: u64,
    batches: u64,
    slowest_ms: u64,
    failures: Vec<String>,
}

impl GoodClient {
    fn start(d: &Daemon) -> GoodClient {
        let (listen, tls) = (d.listen, d.tls("issuer"));
        let records = daemon::records("good", 2);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                match tokio::time::timeout(GOOD_ROUND_DEADLINE, good_round(listen, &tls, &records, i, &st))
                    .await
                {
                    Ok(Ok(())) => {
                        st.rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => st.failures.lock().unwrap().push(format!("round {i}: {e}")),
                    Err(_) => st
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("round {i}: not done within {GOOD_ROUND_DEADLINE:?}")),
                }
                st.slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                i += 1;
                // Well below the server's 50 requests per second per client.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        GoodClient { stop, stats, task }
    }

    /// Rounds completed so far.
    fn rounds(&self) -> u64 {
        self.stats.rounds.load(Ordering::Relaxed)
    }

    /// Waits until the client has completed `n` rounds (the warm-up before an attack).
    async fn warm_up(&self, n: u64) {
        let start = Instant::now();
        while self.rounds() < n {
            let failures = self.stats.failures.lock().unwrap().clone();
            assert!(failures.is_empty(), "the good client fails before any attack: {failures:?}");
            assert!(start.elapsed() < Duration::from_secs(60), "the good client makes no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> GoodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("good client task");
        let s = &self.stats;
        GoodReport {
            rounds: s.rounds.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            signed: s.signed.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            slowest_ms: s.slowest_ms.load(Ordering::Relaxed),
            failures: s.failures.lock().unwrap().clone(),
        }
    }
}

/// One round: connect, sign two records synchronously; every fourth round also submit them as a
/// batch, poll it to done, fetch and check the results, and delete it.
async fn good_round(
    listen: SocketAddr,
    tls: &ClientTls,
    records: &[Value],
    i: u64,
    st: &Stats,
) -> Result<(), String> {
    let mut c = ApiClient::connect(listen, "localhost", tls).await.map_err(|e| format!("connect: {e}"))?;
    let r = c.post("/v1/sign", &json!({"records": records})).await.map_err(|e| format!("sign: {e}"))?;
    st.requests.fetch_add(1, Ordering::Relaxed);
    if r.status != 200 {
        return Err(format!("sign: {} {:?}", r.status, r.body));
    }
    let v = r.json().map_err(|e| e.to_string())?;
    let results = v["results"].as_array().ok_or("sign: no results")?;
    if results.len() != records.len() || results.iter().any(|l| l["status"] != "signed") {
        return Err(format!("sign: {v}"));
    }
    st.signed.fetch_add(results.len() as u64, Ordering::Relaxed);
    if !i.is_multiple_of(4) {
        return Ok(());
    }
    let r = c.post("/v1/batches", &json!({"records": records})).await.map_err(|e| format!("submit: {e}"))?;
    st.requests.fetch_add(1, Ordering::Relaxed);
    if r.status != 202 {
        return Err(format!("submit: {} {:?}", r.status, r.body));
    }
    st.batches.fetch_add(1, Ordering::Relaxed);
    let id = r.json().map_err(|e| e.to_string())?["batch_id"].as_str().ok_or("no batch_id")?.to_owned();
    loop {
        let r = c.get(&format!("/v1/batches/{id}")).await.map_err(|e| format!("status: {e}"))?;
        st.requests.fetch_add(1, Ordering::Relaxed);
        if r.status != 200 {
            return Err(format!("status: {} {:?}", r.status, r.body));
        }
        if r.json().map_err(|e| e.to_string())?["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.get(&format!("/v1/batches/{id}/results")).await.map_err(|e| format!("results: {e}"))?;
    st.requests.fetch_add(1, Ordering::Relaxed);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&r.body).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    if r.status != 200 || lines.len() != records.len() || lines.iter().any(|l| l["status"] != "signed") {
        return Err(format!("results: {} {:?}", r.status, r.body));
    }
    st.signed.fetch_add(lines.len() as u64, Ordering::Relaxed);
    let r = c.delete(&format!("/v1/batches/{id}")).await.map_err(|e| format!("delete: {e}"))?;
    st.requests.fetch_add(1, Ordering::Relaxed);
    if r.status != 200 {
        return Err(format!("delete: {} {:?}", r.status, r.body));
    }
    Ok(())
}

/// Starts a daemon and a warmed-up good client.
async fn setup() -> (Daemon, GoodClient) {
    let d = Daemon::start();
    let good = GoodClient::start(&d);
    good.warm_up(3).await;
    (d, good)
}

/// Stops the good client and checks it was never refused and got at least `min_rounds` done
/// during the attack (which began when it had `rounds_before`); then that the daemon is healthy
/// and never panicked.
async fn epilogue(
    d: &Daemon,
    good: GoodClient,
    attack: &str,
    rounds_before: u64,
    min_rounds: u64,
) -> GoodReport {
    let during = good.rounds() - rounds_before;
    let report = good.finish().await;
    println!(
        "{attack}: good client: {during} rounds during the attack; in all {} rounds, {} requests, {} records \
         signed, {} batches, slowest round {} ms, {} failures",
        report.rounds,
        report.requests,
        report.signed,
        report.batches,
        report.slowest_ms,
        report.failures.len()
    );
    assert!(report.failures.is_empty(), "{attack}: the good client was refused: {:?}", report.failures);
    assert!(
        during >= min_rounds,
        "{attack}: the good client completed only {during} rounds during the attack"
    );
    let ops = d.ops;
    let health = tokio::task::spawn_blocking(move || daemon::ops_get(ops, "/healthz")).await.unwrap();
    assert_eq!(health.map(|h| h.0), Some(200), "{attack}: /healthz after the attack");
    let mut c = d.client("issuer").await;
    assert_eq!(c.get("/healthz").await.unwrap().status, 200);
    let log = d.log_text();
    assert!(!log.contains("panicked"), "{attack}: the daemon panicked: {log}");
    report
}

// ---------------------------------------------------------------------------------------------
// Crafted clients

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn dup(id: &Identity) -> Identity {
    (id.0.clone(), id.1.clone_key())
}

fn identity_pem(cert_pem: &str, key_pem: &str) -> Identity {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    (chain, PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap())
}

/// The dev-init certificate and key `tls/{name}.pem` / `tls/{name}.key`.
fn identity(d: &Daemon, name: &str) -> Identity {
    let t = d.path().join("tls");
    identity_pem(
        &std::fs::read_to_string(t.join(format!("{name}.pem"))).unwrap(),
        &std::fs::read_to_string(t.join(format!("{name}.key"))).unwrap(),
    )
}

/// dev-init's TLS CA, to issue more certificates from.
fn tls_ca(d: &Daemon) -> DevCa {
    DevCa::load(
        &std::fs::read_to_string(d.path().join("tls/ca.pem")).unwrap(),
        &std::fs::read_to_string(d.path().join("tls/ca.key")).unwrap(),
    )
    .unwrap()
}

/// A rustls client configuration trusting dev-init's CA, presenting `identity`, offering only
/// `versions`, `suites` (all of the provider's when empty) and `alpn`.
fn client_config(
    d: &Daemon,
    identity: Option<Identity>,
    versions: &[&'static SupportedProtocolVersion],
    suites: &[SupportedCipherSuite],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites = suites.to_vec();
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.path().join("tls/ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

const ALL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const HTTP11: &[&[u8]] = &[b"http/1.1"];

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    from: Ipv4Addr,
    to: SocketAddr,
) -> std::io::Result<Tls> {
    let tcp = tcp_from(from, to).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// Reads until EOF, an error or `within`; what was read, and how it ended.
async fn read_all<R: AsyncReadExt + Unpin>(r: &mut R, within: Duration) -> (Vec<u8>, Result<(), String>) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return (out, Err("still open".into())),
            Ok(Ok(0)) => return (out, Ok(())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Err(e.to_string())),
        }
    }
}

/// Writes `bytes` on `tls` while reading what comes back until the server closes (10 s at
/// most): what was read. The server may stop reading, and close, long before the bytes are
/// written, so the writing runs apart. Panics if the connection stays open after `what`.
async fn write_until_closed(tls: Tls, bytes: &[u8], what: &str) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        wr
    });
    let (reply, end) = read_all(&mut rd, Duration::from_secs(10)).await;
    assert!(!still_open(&end), "the server kept the connection open after {what}");
    drop(writer.await);
    reply
}

/// Whether [`read_all`] gave up on a connection the server kept open.
fn still_open(end: &Result<(), String>) -> bool {
    matches!(end, Err(e) if e == "still open")
}

/// A complete exchange over crafted TLS: handshake, `request`, the response until the server
/// closes. `Err` carries the handshake or read error when no response came.
async fn exchange(
    config: Arc<rustls::ClientConfig>,
    to: SocketAddr,
    request: &[u8],
) -> Result<String, String> {
    let mut tls = tls_connect(config, Ipv4Addr::LOCALHOST, to).await.map_err(|e| e.to_string())?;
    // With TLS 1.3 the client finishes first; a refused certificate shows as an alert here.
    if let Err(e) = tls.write_all(request).await {
        return Err(e.to_string());
    }
    let (bytes, end) = read_all(&mut tls, Duration::from_secs(10)).await;
    match end {
        Err(e) if bytes.is_empty() => Err(e),
        _ => Ok(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

const GET_TRUST_LIST: &[u8] = b"GET /v1/trust-list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// The value of a metric series (`name{labels}`) on the operations listener.
async fn metric(d: &Daemon, series: &str) -> f64 {
    let ops = d.ops;
    let (status, text) = tokio::task::spawn_blocking(move || daemon::ops_get(ops, "/metrics"))
        .await
        .unwrap()
        .expect("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn handshake_failures(reason: &str) -> String {
    format!("hcert_tls_handshake_failures_total{{reason=\"{reason}\"}}")
}

/// A raw exchange on TCP from 127.0.0.1: send `bytes`, read what comes back until the server
/// closes (at most 5 s).
async fn raw_exchange(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tcp_from(Ipv4Addr::LOCALHOST, to).await.unwrap();
    let _ = s.write_all(bytes).await;
    let (reply, end) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(!still_open(&end), "the server neither answered nor closed");
    reply
}

/// The description of the TLS alert the server sent first, if it sent one.
fn alert(reply: &[u8]) -> Option<u8> {
    (reply.len() >= 7 && reply[0] == 0x15).then(|| reply[6])
}

/// Alert descriptions (RFC 8446 §6).
const HANDSHAKE_FAILURE: u8 = 40;
const PROTOCOL_VERSION: u8 = 70;

/// A hand-built ClientHello record: `record_version` on the record, `client_version` in the
/// hello, these cipher suites, and (when `modern_extensions`) SNI, groups, point formats and
/// signature algorithms, so that only the version or the suites can be the reason of a refusal.
fn client_hello(
    record_version: u16,
    client_version: u16,
    suites: &[u16],
    modern_extensions: bool,
) -> Vec<u8> {
    let mut body = client_version.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression only
    if modern_extensions {
        let mut ext = Vec::new();
        let mut add = |ty: u16, data: &[u8]| {
            ext.extend_from_slice(&ty.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        };
        add(0x0000, &[0, 12, 0, 0, 9, b'l', b'o', b'c', b'a', b'l', b'h', b'o', b's', b't']);
        add(0x000a, &[0, 4, 0x00, 0x17, 0x00, 0x1d]); // secp256r1, x25519
        add(0x000b, &[1, 0]); // uncompressed points
        add(0x000d, &[0, 6, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]); // ecdsa_p256_sha256, rsa_pss, rsa_pkcs1
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
    }
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16];
    record.extend_from_slice(&record_version.to_be_bytes());
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Checks that `reply` refuses the hello: no ServerHello, and an alert (`expected` if given) or
/// a plain close.
fn assert_refused_hello(what: &str, reply: &[u8], expected: Option<u8>) {
    assert!(
        !(reply.len() > 5 && reply[0] == 0x16),
        "{what}: the server answered with a handshake: {reply:02x?}"
    );
    if let Some(e) = expected {
        assert_eq!(alert(reply), Some(e), "{what}: {reply:02x?}");
    } else {
        assert!(reply.is_empty() || reply[0] == 0x15, "{what}: {reply:02x?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Slowloris

/// The first bytes of a ClientHello: a record header announcing 512 bytes, a handshake header,
/// and then nothing more.
const PARTIAL_CLIENT_HELLO: &[u8] =
    &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x11, 0x22];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_handshakes_and_headers() {
    let (d, good) = setup().await;
    let before = good.rounds();
    let attack_start = Instant::now();

    // TLS-established connections from a trusted (configured) client that send a request head
    // one byte every 700 ms and never finish it; the server allows 10 s for a head.
    const SLOW_HEADERS: usize = 40;
    let config = client_config(&d, Some(identity(&d, "issuer2")), ALL_VERSIONS, &[], HTTP11);
    let mut slow = Vec::new();
    for chunk in 0..SLOW_HEADERS / 8 {
        let mut established = Vec::new();
        for _ in 0..8 {
            established.push(tls_connect(config.clone(), ATTACKER2, d.listen));
        }
        for (j, tls) in futures_join(established).await.into_iter().enumerate() {
            let mut tls = tls.unwrap_or_else(|e| panic!("slow-header connection {chunk}/{j}: {e}"));
            slow.push(tokio::spawn(async move {
                let since = Instant::now();
                let text = b"GET /v1/trust-list HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
                let mut answer = Vec::new();
                for k in 0.. {
                    let byte = text.get(k).copied().unwrap_or(b'a');
                    if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 512];
                    match tokio::time::timeout(Duration::from_millis(700), tls.read(&mut buf)).await {
                        Err(_) => {}
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    }
                    assert!(since.elapsed() < Duration::from_secs(30), "a slow-header connection stays open");
                }
                (since.elapsed(), answer)
            }));
        }
    }

    // More never-finished handshakes than the server has connection slots, from one host: half
    // send nothing, half the start of a ClientHello.
    const STALLED: usize = MAX_CONNECTIONS + 76;
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let to = d.listen;
        stalled.push(tokio::spawn(async move {
            let since = Instant::now();
            let mut s = match tcp_from(ATTACKER, to).await {
                Ok(s) => s,
                Err(e) => return (since.elapsed(), Err(format!("connect: {e}"))),
            };
            if i % 2 == 1 {
                let _ = s.write_all(PARTIAL_CLIENT_HELLO).await;
            }
            let (reply, end) = read_all(&mut s, Duration::from_secs(40)).await;
            assert!(reply.is_empty() || reply[0] == 0x15, "a stalled handshake got {reply:02x?}");
            (since.elapsed(), end)
        }));
        // Paced, so that the burst does not overflow the kernel's accept queue (connections
        // dropped there would never reach the server at all).
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let mut stalled_times = Vec::new();
    for t in stalled {
        let (elapsed, end) = t.await.unwrap();
        assert!(!still_open(&end), "a stalled handshake was kept open for 40 s");
        stalled_times.push(elapsed);
    }
    let mut slow_times = Vec::new();
    for t in slow {
        let (elapsed, answer) = t.await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "a slow request was answered: {answer}"
        );
        slow_times.push(elapsed);
    }
    let attack = attack_start.elapsed();
    let report = epilogue(&d, good, "slowloris", before, 20).await;

    // Stalled handshakes: a host gets MAX_HANDSHAKES_PER_PEER of them, dropped at the handshake
    // timeout; the rest are closed at once.
    let held = stalled_times.iter().filter(|t| **t >= HANDSHAKE_TIMEOUT - Duration::from_secs(1)).count();
    let quick = stalled_times.iter().filter(|t| **t < Duration::from_secs(3)).count();
    let longest = stalled_times.iter().max().unwrap();
    println!(
        "slowloris: {STALLED} stalled handshakes: {held} held until the handshake timeout, {quick} closed \
         at once, longest {longest:?}; {SLOW_HEADERS} slow-header connections closed after {:?}..{:?}; \
         attack {attack:?}; good client slowest round {} ms",
        slow_times.iter().min().unwrap(),
        slow_times.iter().max().unwrap(),
        report.slowest_ms,
    );
    assert_eq!(held, MAX_HANDSHAKES_PER_PEER, "stalled handshakes from one host held to the timeout");
    assert_eq!(held + quick, STALLED, "{stalled_times:?}");
    assert!(*longest < HANDSHAKE_TIMEOUT + Duration::from_secs(5), "{longest:?}");
    for t in &slow_times {
        assert!(
            *t >= HEADER_TIMEOUT - Duration::from_millis(1500)
                && *t < HEADER_TIMEOUT + Duration::from_secs(5),
            "a slow-header connection was closed after {t:?}"
        );
    }
    assert!(metric(&d, &handshake_failures("timeout")).await >= held as f64);
    assert!(metric(&d, &handshake_failures("peer_limit")).await >= quick as f64);
}

/// Awaits futures concurrently (a tiny `join_all`, the tests have no `futures` crate).
async fn futures_join<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 2. Oversized headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers() {
    let (d, good) = setup().await;
    let config = client_config(&d, Some(identity(&d, "issuer2")), ALL_VERSIONS, &[], HTTP11);
    let before = good.rounds();
    let start = Instant::now();

    let big_line = {
        let mut r = b"GET /v1/trust-list HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
        r.extend(std::iter::repeat_n(b'a', 100 * 1024));
        r.extend_from_slice(b"\r\n\r\n");
        r
    };
    let many_headers = {
        let mut r = b"GET /v1/trust-list HTTP/1.1\r\nHost: localhost\r\n".to_vec();
        for i in 0..2000 {
            r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r
    };
    let big_target = {
        let mut r = b"GET /v1/batches/".to_vec();
        r.extend(std::iter::repeat_n(b'b', 100 * 1024));
        r.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n\r\n");
        r
    };
    let mut rounds = 0;
    let mut seen = std::collections::BTreeSet::new();
    while rounds == 0 || start.elapsed() < ATTACK_MIN {
        for (what, req) in [
            ("100 KiB header line", &big_line),
            ("2000 headers", &many_headers),
            ("100 KiB target", &big_target),
        ] {
            let status = oversized_exchange(config.clone(), d.listen, req).await;
            seen.insert(format!("{what}: {status}"));
            assert!(
                status == "closed"
                    || status.starts_with("HTTP/1.1 431")
                    || status.starts_with("HTTP/1.1 400"),
                "{what}: {status}"
            );
        }
        rounds += 1;
    }
    println!("oversized headers: {rounds} rounds of 3 requests; outcomes {seen:?}");
    epilogue(&d, good, "oversized headers", before, MIN_ROUNDS_SHORT).await;
}

/// Sends `request` while reading: the status line of the answer, or `closed`. Checks that the
/// server closes the connection afterwards.
async fn oversized_exchange(config: Arc<rustls::ClientConfig>, to: SocketAddr, request: &[u8]) -> String {
    let tls = tls_connect(config, Ipv4Addr::LOCALHOST, to).await.unwrap();
    let reply = write_until_closed(tls, request, "an oversized request").await;
    let text = String::from_utf8_lossy(&reply);
    match text.lines().next() {
        Some(line) if !line.is_empty() => line.to_owned(),
        _ => "closed".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. HTTP/2 rapid reset

/// An HTTP/2 connection preface, SETTINGS, and `streams` × (HEADERS, RST_STREAM): the
/// CVE-2023-44487 pattern.
fn h2_rapid_reset(streams: u32) -> Vec<u8> {
    fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[ty, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    for i in 0..streams {
        let id = 2 * i + 1;
        // :method GET, :scheme https, :path /, :authority x; END_STREAM | END_HEADERS.
        frame(&mut out, 0x1, 0x5, id, &[0x82, 0x87, 0x84, 0x41, 0x01, b'x']);
        frame(&mut out, 0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_has_no_surface() {
    let (d, good) = setup().await;
    let before = good.rounds();
    let start = Instant::now();
    let id = identity(&d, "issuer2");
    let h2_only = client_config(&d, Some(dup(&id)), ALL_VERSIONS, &[], &[b"h2"]);
    let h2_only_tls12 = client_config(&d, Some(dup(&id)), &[&rustls::version::TLS12], &[], &[b"h2"]);
    let both = client_config(&d, Some(dup(&id)), ALL_VERSIONS, &[], &[b"h2", b"http/1.1"]);
    let no_alpn = client_config(&d, Some(id), ALL_VERSIONS, &[], &[]);
    let flood = h2_rapid_reset(1000);
    let mut rounds = 0;
    while rounds == 0 || start.elapsed() < ATTACK_MIN {
        // h2 only: no protocol in common, the handshake fails with no_application_protocol.
        for config in [&h2_only, &h2_only_tls12] {
            let Err(e) = tls_connect(config.clone(), ATTACKER, d.listen).await else {
                panic!("an h2-only client connected");
            };
            assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
        }
        // h2 and http/1.1 offered: the server picks http/1.1.
        let tls = tls_connect(both.clone(), ATTACKER, d.listen).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        drop(tls);
        // No ALPN (or http/1.1) and the h2 preface anyway, with a rapid-reset flood behind it:
        // HTTP/1.1 sees the preface and closes without a byte in answer — no SETTINGS, no
        // stream, nothing to reset.
        for config in [&no_alpn, &both] {
            let tls = tls_connect(config.clone(), ATTACKER, d.listen).await.unwrap();
            let reply = write_until_closed(tls, &flood, "an HTTP/2 preface").await;
            assert!(
                reply.is_empty(),
                "the server answered an HTTP/2 preface: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        rounds += 1;
    }
    println!(
        "http2: {rounds} rounds (h2-only refused at the handshake, preface + 1000 resets closed unanswered)"
    );
    epilogue(&d, good, "http2 rapid reset", before, MIN_ROUNDS_SHORT).await;
    assert!(metric(&d, &handshake_failures("protocol")).await >= 2.0 * rounds as f64);
}

/// Presents each client identity, over TLS 1.3 and 1.2, for at least [`ATTACK_MIN`]: every
/// handshake must be refused with an error containing `needle`. The rounds made and the
/// distinct errors seen.
async fn refuse_identities(
    d: &Daemon,
    ids: &[(&str, Identity)],
    needle: &str,
) -> (usize, std::collections::BTreeSet<String>) {
    let start = Instant::now();
    let mut rounds = 0;
    let mut errors = std::collections::BTreeSet::new();
    while rounds == 0 || start.elapsed() < ATTACK_MIN {
        for (what, id) in ids {
            for versions in [ALL_VERSIONS, &[&rustls::version::TLS12]] {
                let config = client_config(d, Some(dup(id)), versions, &[], HTTP11);
                let e = exchange(config, d.listen, GET_TRUST_LIST)
                    .await
                    .expect_err(&format!("a client {what} was served"));
                assert!(e.contains(needle), "{what}: {e}");
                errors.insert(format!("{what}: {e}"));
            }
        }
        rounds += 1;
    }
    (rounds, errors)
}

// ---------------------------------------------------------------------------------------------
// 4. Expired and not-yet-valid client certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_client_certificates() {
    let (d, good) = setup().await;
    let ca = tls_ca(&d);
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let expired = ca.issue_client_valid("issuer", now - 30 * day, now - day).unwrap();
    let not_yet = ca.issue_client_valid("issuer", now + day, now + 30 * day).unwrap();
    let current = ca.issue_client_valid("issuer", now - day, now + day).unwrap();
    let ids = [
        ("with a certificate expired", identity_pem(&expired.cert_pem, &expired.key_pem)),
        ("with a certificate not yet valid", identity_pem(&not_yet.cert_pem, &not_yet.key_pem)),
    ];
    let bad_before = metric(&d, &handshake_failures("bad_certificate")).await;
    let before = good.rounds();
    let (rounds, errors) = refuse_identities(&d, &ids, "CertificateExpired").await;
    // The same CA, the same name, valid now: served (the dates were the only reason).
    let config =
        client_config(&d, Some(identity_pem(&current.cert_pem, &current.key_pem)), ALL_VERSIONS, &[], HTTP11);
    let r = exchange(config, d.listen, GET_TRUST_LIST).await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    println!("certificate dates: {rounds} rounds of 4 refused handshakes: {errors:?}");
    epilogue(&d, good, "expired certificates", before, MIN_ROUNDS_SHORT).await;
    let refused = metric(&d, &handshake_failures("bad_certificate")).await - bad_before;
    assert_eq!(refused, 4.0 * rounds as f64);
    let log = d.log_text();
    assert!(log.contains("expired") || log.contains("Expired"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// 5. The right CA, no configured client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_certificate_of_no_configured_client() {
    let (d, good) = setup().await;
    let tls = d.tls_presenting(&tls_ca(&d).issue_client("intruder", 30).unwrap());
    let before = good.rounds();
    let start = Instant::now();
    let body =
        serde_json::to_vec(&json!({"records": daemon::records("x", 2), "idempotency_key": "intruder"}))
            .unwrap();
    let mut requests = 0;
    while requests == 0 || start.elapsed() < ATTACK_MIN {
        // The handshake succeeds: the certificate chains to the trusted CA.
        let mut c = ApiClient::connect(d.listen, "localhost", &tls).await.expect("intruder handshake");
        for (method, template) in hcert_signer::api::ROUTES {
            let path = template.replace("{id}", "0123456789abcdef").replace("{label}", "dsc-1");
            let method: http::Method = method.parse().unwrap();
            let body = (method == http::Method::POST || method == http::Method::PUT).then(|| body.clone());
            let r = c.request(method.clone(), &path, body).await.unwrap();
            requests += 1;
            if path == "/healthz" || path == "/readyz" {
                // Health needs no identity (and says nothing about anyone's data).
                assert_eq!(r.status, 200, "{method} {path}");
                continue;
            }
            assert_eq!(r.status, 403, "{method} {path}: {:?}", r.body);
            assert_eq!(r.json().unwrap()["error"]["code"], "unknown_client", "{method} {path}");
        }
    }
    println!("intruder: {requests} requests, all 403 unknown_client (health 200)");
    let report = epilogue(&d, good, "intruder", before, MIN_ROUNDS_SHORT).await;
    // No batch and no signature but the good client's.
    assert_eq!(metric(&d, "hcert_batches_total{state=\"accepted\"}").await, report.batches as f64);
    let ops = d.ops;
    let text =
        tokio::task::spawn_blocking(move || daemon::ops_get(ops, "/metrics")).await.unwrap().unwrap().1;
    let signatures: f64 = text
        .lines()
        .filter(|l| l.starts_with("hcert_signatures_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(signatures, report.signed as f64, "signatures other than the good client's");
    assert!(d.log_text().contains("[\"intruder\"], which is no configured client"));
}

// ---------------------------------------------------------------------------------------------
// 6. A server certificate as a client certificate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_used_as_client_certificate() {
    let (d, good) = setup().await;
    // dev-init's own server certificate, and one with serverAuth only for a configured name.
    let server_as_issuer = tls_ca(&d).issue_server("issuer", &["issuer"]).unwrap();
    let ids: [(&str, Identity); 2] = [
        ("presenting dev-init's server.pem", identity(&d, "server")),
        (
            "presenting a serverAuth certificate for CN issuer",
            identity_pem(&server_as_issuer.cert_pem, &server_as_issuer.key_pem),
        ),
    ];
    let bad_before = metric(&d, &handshake_failures("bad_certificate")).await;
    let before = good.rounds();
    let (rounds, errors) = refuse_identities(&d, &ids, "alert").await;
    println!("server certificate as client: {rounds} rounds of 4 refused handshakes: {errors:?}");
    epilogue(&d, good, "server certificate as client", before, MIN_ROUNDS_SHORT).await;
    let refused = metric(&d, &handshake_failures("bad_certificate")).await - bad_before;
    assert_eq!(refused, 4.0 * rounds as f64);
}

// ---------------------------------------------------------------------------------------------
// 7. TLS downgrade attempts

/// `openssl s_client` against the API with dev-init's issuer2 certificate and `args`: whether
/// a session was established, and the protocol and cipher it reports.
fn s_client(d: &Daemon, args: &[&str]) -> (bool, String) {
    let t = d.path().join("tls");
    let out = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(d.listen.to_string())
        .args(["-servername", "localhost", "-CAfile"])
        .arg(t.join("ca.pem"))
        .arg("-cert")
        .arg(t.join("issuer2.pem"))
        .arg("-key")
        .arg(t.join("issuer2.key"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // "Cipher is (NONE)" / "Cipher    : 0000" when no session came of it.
    let established = out.status.success() && !text.contains("Cipher is (NONE)");
    (established, text)
}

/// The line of `s_client` output starting with `prefix`, trimmed.
fn s_client_field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_downgrade_attempts() {
    let (d, good) = setup().await;
    let d = Arc::new(d);
    let before = good.rounds();
    let start = Instant::now();

    // Legacy protocol and suite offers through OpenSSL.
    let dd = d.clone();
    let refused = tokio::task::spawn_blocking(move || {
        let d = &*dd;
        let offers: &[(&str, &[&str])] = &[
            ("TLS 1.0", &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
            ("TLS 1.1", &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
            ("TLS 1.2 NULL suites", &["-tls1_2", "-cipher", "eNULL:NULL:@SECLEVEL=0"]),
            ("TLS 1.2 RSA key exchange", &["-tls1_2", "-cipher", "kRSA:@SECLEVEL=0"]),
            (
                "TLS 1.2 CBC suites",
                &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:@SECLEVEL=0"],
            ),
        ];
        let mut refused = Vec::new();
        for (what, args) in offers {
            let (ok, text) = s_client(d, args);
            assert!(!ok, "{what} was accepted: {text}");
            // Refused by the server (an alert), not by OpenSSL itself before connecting.
            let line = text.lines().find(|l| l.contains("alert")).unwrap_or_else(|| panic!("{what}: {text}"));
            let alert = line.split(':').find(|p| p.contains("alert") && !p.starts_with("SSL alert number"));
            refused.push(format!("{what}: {}", alert.unwrap_or(line)));
        }
        refused
    })
    .await
    .unwrap();

    // What no current library offers: hand-built hellos.
    let tls12_extensions = true;
    let export_and_null = [0x0001, 0x0002, 0x0003, 0x0006, 0x0008, 0x0014, 0x003b, 0xc006, 0xc010];
    let legacy = [0x000a, 0x0005, 0x002f, 0x0035];
    let hellos: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("SSL 3.0 hello", client_hello(0x0300, 0x0300, &legacy, false), None),
        ("TLS 1.0 hello", client_hello(0x0301, 0x0301, &legacy, tls12_extensions), Some(PROTOCOL_VERSION)),
        ("TLS 1.1 hello", client_hello(0x0301, 0x0302, &legacy, tls12_extensions), Some(PROTOCOL_VERSION)),
        (
            "TLS 1.2 export and NULL suites",
            client_hello(0x0301, 0x0303, &export_and_null, true),
            Some(HANDSHAKE_FAILURE),
        ),
        ("TLS 1.2 RSA/CBC suites", client_hello(0x0301, 0x0303, &legacy, true), Some(HANDSHAKE_FAILURE)),
        ("SSL 2.0 compatible hello", sslv2_hello(), None),
    ];
    let mut rounds = 0;
    let mut outcomes = std::collections::BTreeSet::new();
    while rounds == 0 || start.elapsed() < ATTACK_MIN {
        for (what, hello, expected) in &hellos {
            let reply = raw_exchange(d.listen, hello).await;
            assert_refused_hello(what, &reply, *expected);
            outcomes.insert(match alert(&reply) {
                Some(a) => format!("{what}: alert {a}"),
                None => format!("{what}: closed"),
            });
        }
        rounds += 1;
    }
    let attack_rounds = good.rounds() - before;

    // A modern client gets TLS 1.3; a TLS 1.2 client an ECDHE AEAD suite; OpenSSL likewise.
    let modern = client_config(&d, Some(identity(&d, "issuer2")), ALL_VERSIONS, &[], HTTP11);
    let tls = tls_connect(modern, Ipv4Addr::LOCALHOST, d.listen).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    drop(tls);
    let mut tls12 = tls_connect(
        client_config(&d, Some(identity(&d, "issuer2")), &[&rustls::version::TLS12], &[], HTTP11),
        Ipv4Addr::LOCALHOST,
        d.listen,
    )
    .await
    .unwrap();
    assert_eq!(tls12.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    let suite = format!("{:?}", tls12.get_ref().1.negotiated_cipher_suite().unwrap().suite());
    assert!(
        suite.starts_with("TLS_ECDHE_") && (suite.contains("GCM") || suite.contains("CHACHA20")),
        "{suite}"
    );
    tls12.write_all(GET_TRUST_LIST).await.unwrap();
    let (reply, _) = read_all(&mut tls12, Duration::from_secs(10)).await;
    assert!(reply.starts_with(b"HTTP/1.1 200"));

    let dd = d.clone();
    let accepted = tokio::task::spawn_blocking(move || {
        let d = &*dd;
        let (ok, text) = s_client(d, &[]);
        assert!(ok, "{text}");
        assert!(text.contains("TLSv1.3"), "{text}");
        // Every TLS 1.2 suite OpenSSL knows, one at a time: only ECDHE with an AEAD is accepted.
        let list = std::process::Command::new("openssl")
            .args(["ciphers", "-tls1_2", "ALL:COMPLEMENTOFALL:eNULL:@SECLEVEL=0"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout).trim().to_owned();
        let mut accepted = Vec::new();
        for suite in list.split(':').filter(|s| !s.starts_with("TLS_")) {
            let (ok, text) = s_client(d, &["-tls1_2", "-cipher", &format!("{suite}:@SECLEVEL=0")]);
            if ok {
                assert_eq!(
                    s_client_field(&text, "Protocol  :").or(s_client_field(&text, "Protocol :")),
                    Some("TLSv1.2"),
                    "{text}"
                );
                accepted.push(suite.to_owned());
            }
        }
        accepted
    })
    .await
    .unwrap();
    println!(
        "downgrade: openssl refused {refused:?}; {rounds} rounds of hand-built hellos: {outcomes:?}; TLS 1.2 \
         suites accepted: {accepted:?}"
    );
    assert!(!accepted.is_empty());
    for s in &accepted {
        assert!(s.starts_with("ECDHE-") && (s.contains("GCM") || s.contains("CHACHA20")), "{s} was accepted");
    }
    let d = Arc::into_inner(d).unwrap();
    epilogue(&d, good, "TLS downgrade", before, MIN_ROUNDS_SHORT).await;
    assert!(attack_rounds >= MIN_ROUNDS_SHORT);
}

/// An SSL 2.0-compatible ClientHello (the pre-TLS record format) offering SSLv2 and export
/// suites.
fn sslv2_hello() -> Vec<u8> {
    let specs: &[u8] = &[0x01, 0x00, 0x80, 0x02, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x03];
    let mut body = vec![0x01, 0x00, 0x02]; // CLIENT-HELLO, version 2
    body.extend_from_slice(&(specs.len() as u16).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes()); // session id
    body.extend_from_slice(&16u16.to_be_bytes()); // challenge
    body.extend_from_slice(specs);
    body.extend_from_slice(&[0x33; 16]);
    let mut out = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    out.extend_from_slice(&body);
    out
}
