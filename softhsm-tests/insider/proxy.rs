//! Limits hold per client behind the balancer: through the shipped `scale-out/haproxy.cfg`
//! (TCP mode, `send-proxy-v2`), one client's 400 stalled TLS handshakes do not lock another
//! client of the same balancer out; and only the listed balancer may name a client in a PROXY
//! protocol header: a header from anyone else, a listed address without one or with a
//! malformed one, is closed before anything is served.
//!
//! The two clients are distinct hosts on distinct loopback addresses (127.0.0.2 stalls, 127.0.0.3
//! works); HAProxy reaches the daemon from 127.0.0.1, the one address in `proxy_protocol_from`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hcert_signer::client::ApiClient;

use crate::daemon::{Daemon, Haproxy, free_port, ops_get};

const STALLER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const GOOD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const STALLED: usize = 400;

/// A daemon that takes PROXY headers from 127.0.0.1 only.
fn daemon() -> Daemon {
    let mut d = Daemon::init();
    d.append_config("\n[api]\nproxy_protocol_from = [\"127.0.0.1\"]\n");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    d
}

/// A counter's value on the daemon's metrics (0 when absent).
fn metric(d: &Daemon, series: &str) -> f64 {
    let (_, body) = ops_get(d.ops, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A TCP connection from `source` (a loopback address of its own) to `to`, as a blocking
/// socket.
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let s = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Whatever the server sends before it closes (within 5 s): empty means nothing was served.
fn drain(mut s: std::net::TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// A PROXY protocol v2 header for TCP over IPv4 from `src` to `dst`.
fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else { panic!("IPv4") };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(s.ip().octets());
    h.extend(d.ip().octets());
    h.extend(s.port().to_be_bytes());
    h.extend(d.port().to_be_bytes());
    h
}

/// The first bytes of a TLS 1.3 ClientHello record header and some of its body: enough for the
/// server to start a handshake if it took the connection.
const CLIENT_HELLO_START: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_of_one_client_do_not_lock_out_another_behind_the_balancer() {
    let d = daemon();
    let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _haproxy = Haproxy::start(lb, [&d, &d], &d.path().join("haproxy.log"));
    let tls = d.tls("issuer");
    let start = Instant::now();
    loop {
        if let Ok(mut c) = ApiClient::connect_from(GOOD, lb, "localhost", &tls).await
            && c.get("/v1/trust-list").await.is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "HAProxy did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let capped_before = metric(&d, "hcert_tls_handshake_failures_total{reason=\"peer_limit\"}");

    // 127.0.0.2 keeps 400 connections open through the balancer and never sends a byte; each
    // one the daemon closes is opened again.
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let mut stallers = Vec::new();
    for _ in 0..STALLED {
        let (stop, open) = (stop.clone(), open.clone());
        stallers.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = rt.block_on(connect_from(STALLER, lb)) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                open.fetch_add(1, Ordering::Relaxed);
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                let mut b = [0u8; 1];
                // Until the far end closes it (or the test ends).
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut b) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    // Until the staller holds its whole share of handshakes at the daemon and is being capped.
    let start = Instant::now();
    while metric(&d, "hcert_tls_handshake_failures_total{reason=\"peer_limit\"}") < capped_before + 100.0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the stalled client never reached the per-peer cap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Meanwhile 127.0.0.3 completes 50 requests, each on a new connection through the balancer.
    let good = Instant::now();
    for i in 0..50 {
        let mut c = tokio::time::timeout(
            Duration::from_secs(5),
            ApiClient::connect_from(GOOD, lb, "localhost", &tls),
        )
        .await
        .unwrap_or_else(|_| panic!("connection {i} timed out"))
        .unwrap_or_else(|e| panic!("connection {i} refused: {e}"));
        let r = c.get("/v1/trust-list").await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    let good = good.elapsed();
    let stalled_open = open.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in stallers {
        t.join().unwrap();
    }
    assert!(stalled_open >= 64, "the staller held {stalled_open} connections at the end");
    let capped = metric(&d, "hcert_tls_handshake_failures_total{reason=\"peer_limit\"}") - capped_before;
    assert!(capped >= 100.0, "the stalled client was capped {capped} times");
    eprintln!("50 requests in {good:?} while 127.0.0.2 stalled ({capped} of its connections capped)");
    // Every header HAProxy sent was accepted.
    let log = d.log_text();
    assert!(!log.contains("PROXY protocol"), "a connection through HAProxy was refused: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_balancer_may_send_a_proxy_header() {
    let d = daemon();
    let tls = d.tls("issuer");
    let reason = |r: &str| format!("hcert_connections_refused_total{{reason=\"{r}\"}}");
    let before = (metric(&d, &reason("proxy_header_unlisted")), metric(&d, &reason("proxy_header_missing")));

    // An unlisted host sends a header naming someone else, then starts TLS: closed, nothing
    // served.
    let mut s = connect_from(STALLER, d.listen).await.unwrap();
    let mut bytes = proxy_v2("127.0.0.9:4000".parse().unwrap(), d.listen);
    bytes.extend(CLIENT_HELLO_START);
    s.write_all(&bytes).unwrap();
    assert!(drain(s).is_empty(), "the daemon answered a header from an unlisted address");
    // A v1 header too.
    let mut s = connect_from(STALLER, d.listen).await.unwrap();
    s.write_all(b"PROXY TCP4 127.0.0.9 127.0.0.1 4000 8443\r\n").unwrap();
    assert!(drain(s).is_empty(), "the daemon answered a v1 header from an unlisted address");

    // The listed address without a header: a plain mTLS client from 127.0.0.1 is refused.
    let direct = ApiClient::connect(d.listen, "localhost", &tls).await;
    let refused = match direct {
        Err(_) => true,
        Ok(mut c) => c.get("/v1/trust-list").await.is_err(),
    };
    assert!(refused, "a listed address was served without a PROXY header");

    // The listed address with a header that breaks the format (a UNIX socket's addresses).
    let malformed = metric(&d, &reason("proxy_header_malformed"));
    let mut s = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), d.listen).await.unwrap();
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.extend([0x21, 0x31, 0, 216]);
    bytes.extend([0u8; 216]);
    bytes.extend(CLIENT_HELLO_START);
    s.write_all(&bytes).unwrap();
    assert!(drain(s).is_empty(), "the daemon answered after a malformed header");

    let start = Instant::now();
    while metric(&d, &reason("proxy_header_malformed")) < malformed + 1.0
        || metric(&d, &reason("proxy_header_unlisted")) < before.0 + 2.0
        || metric(&d, &reason("proxy_header_missing")) < before.1 + 1.0
    {
        assert!(start.elapsed() < Duration::from_secs(10), "refusals not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = d.log_text();
    assert!(
        log.contains("a PROXY protocol header from an address not in [api] proxy_protocol_from"),
        "{log}"
    );
    assert!(log.contains("no PROXY protocol v2 header from a listed balancer"), "{log}");

    // The same client from an unlisted address without a header is served as before.
    let mut c =
        ApiClient::connect_from(GOOD, d.listen, "localhost", &tls).await.expect("unlisted, no header");
    assert_eq!(c.get("/v1/trust-list").await.unwrap().status, 200);
    // And through a header from the listed address (as HAProxy sends it), the named client is
    // the peer: served.
    let mut s = connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST), d.listen).await.unwrap();
    s.write_all(&proxy_v2("127.0.0.3:5000".parse().unwrap(), d.listen)).unwrap();
    s.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(s).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls.rustls_config()).connect(name, tcp).await;
    assert!(stream.is_ok(), "a header from the listed balancer was refused: {:?}", stream.err());
}
