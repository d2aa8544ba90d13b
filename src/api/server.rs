//! The listeners: the API (TLS with client certificates) and the operations listener (plain
//! HTTP on loopback: health, readiness, metrics — what probes and Prometheus reach without a
//! client certificate).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::linger::Lingering;
use super::proxy::{self, ProxyError, TrustedProxies};
use super::tls::TlsState;
use super::{ApiError, AppState, Body, Identity, route};

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request's headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most; beyond it new ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Connections from one address still in the TLS handshake, at most; beyond it new ones from
/// that address are closed at once. Without it, one host's stalled handshakes (slowloris) held
/// every connection slot for `HANDSHAKE_TIMEOUT` and other clients waited in the backlog.
const MAX_HANDSHAKES_PER_PEER: usize = 64;

fn http() -> http1::Builder {
    let mut b = http1::Builder::new();
    // max_header_size too: max_buf_size alone is not a bound on a request head, whose reads may
    // fill the buffer's spare capacity past it (a 100 KiB header line was served).
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .max_header_size(64 * 1024);
    b
}

/// Connections counted by a key (peer address while in the TLS handshake, client identity
/// once authenticated), each key held to a cap.
#[derive(Clone)]
struct Slots<K: Eq + Hash + Clone> {
    taken: Arc<Mutex<HashMap<K, usize>>>,
    cap: usize,
}

/// A connection's place in [`Slots`], given back when dropped.
struct Slot<K: Eq + Hash + Clone> {
    all: Slots<K>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    fn new(cap: usize) -> Self {
        Self { taken: Arc::default(), cap }
    }

    /// A place for one more connection under `key`, unless it has `cap` already.
    fn enter(&self, key: K) -> Option<Slot<K>> {
        let mut map = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot { all: self.clone(), key })
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.all.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Serves the API until `stop` turns true, then lets open requests finish (up to `grace`).
/// Connections from `proxies` start with a PROXY protocol v2 header naming the real client.
pub async fn serve_api(
    listener: TcpListener,
    tls: TlsState,
    proxies: TrustedProxies,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let handshaking = Slots::<IpAddr>::new(MAX_HANDSHAKES_PER_PEER);
    let per_client = Slots::<String>::new(state.limits.max_connections_per_client);
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (mut tcp, via) = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("api: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let state = state.clone();
        let watcher = graceful.watcher();
        let per_client = per_client.clone();
        let handshaking = handshaking.clone();
        let listed = proxies.listed(via.ip());
        tokio::spawn(async move {
            let _permit = permit;
            // From a listed balancer, the real client is in the header; from anyone else, the
            // peer is the client, and a header is refused (it would name someone else).
            let peer = if listed {
                match proxy::read_header(&mut tcp).await {
                    Ok(h) => h.source.unwrap_or(via),
                    Err(e) => return refuse_proxy(via, &e),
                }
            } else {
                via
            };
            // Counted by the real client, so one client's stalled handshakes behind a balancer
            // do not lock every other client of that balancer out.
            let Some(handshake) = handshaking.enter(peer.ip().to_canonical()) else {
                // Closed at once: per connection, so a debug line and a metric only.
                crate::metrics::get().tls_handshake_failures.with_label_values(&["peer_limit"]).inc();
                log::debug!(
                    "api: {peer} has {MAX_HANDSHAKES_PER_PEER} TLS handshakes under way; connection closed"
                );
                return;
            };
            let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
            if !listed {
                match tokio::time::timeout_at(deadline, sniff_header(&tcp)).await {
                    Ok(true) => return refuse_proxy(via, &ProxyError::Unlisted),
                    Ok(false) => {}
                    Err(_) => {
                        crate::metrics::get().tls_handshake_failures.with_label_values(&["timeout"]).inc();
                        log::info!(peer:display = peer, reason = "timeout"; "api: TLS handshake with {peer} timed out");
                        return;
                    }
                }
            }
            let stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => {
                    drop(handshake);
                    s
                }
                Ok(Err(e)) => {
                    let reason = handshake_failure(&e);
                    crate::metrics::get().tls_handshake_failures.with_label_values(&[reason]).inc();
                    log::info!(peer:display = peer, reason = reason; "api: TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => {
                    crate::metrics::get().tls_handshake_failures.with_label_values(&["timeout"]).inc();
                    log::info!(peer:display = peer, reason = "timeout"; "api: TLS handshake with {peer} timed out");
                    return;
                }
            };
            let identity = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => state.clients.identify(cert),
                None => Identity::Unknown(Vec::new()),
            };
            let (client, not_pinned) = match identity {
                Identity::Client(c) => (Some(c), None),
                Identity::Unknown(names) => {
                    log::warn!(
                        "api: {peer} presented a trusted certificate for {names:?}, which is no configured client"
                    );
                    (None, None)
                }
                Identity::NotPinned(name) => {
                    crate::metrics::get().connections_refused.with_label_values(&["key_not_pinned"]).inc();
                    log::warn!(
                        peer:display = peer, client = name.as_str(), reason = "key_not_pinned";
                        "api: {peer} presented a certificate for client {name:?} with a key that is not pinned for it (spki_sha256); refused with 403"
                    );
                    (None, Some(name))
                }
            };
            // Held for the connection's life. Over the cap, the connection is still served, but
            // only to tell the client why in its own protocol (429, then closed).
            let (slot, over) = match &client {
                Some(c) => match per_client.enter(c.name.clone()) {
                    Some(slot) => (Some(slot), None),
                    None => (None, Some(c.name.clone())),
                },
                None => (None, None),
            };
            if let Some(name) = &over {
                log::info!(
                    peer:display = peer, client = name.as_str();
                    "api: client {name:?} has {} connections open; connection from {peer} refused with 429",
                    per_client.cap
                );
            }
            let cap = per_client.cap;
            let svc = service_fn(move |req| {
                let (state, client) = (state.clone(), client.clone());
                let (over, not_pinned) = (over.clone(), not_pinned.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(match (over, not_pinned) {
                        (Some(name), _) => too_many_connections(&name, cap),
                        (None, Some(name)) => key_not_pinned(&name),
                        (None, None) => route(state, client, req).await,
                    })
                }
            });
            let conn = http().serve_connection(TokioIo::new(Lingering::new(stream)), svc);
            if let Err(e) = watcher.watch(conn).await {
                log::debug!("api: connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => log::warn!("api: open connections did not finish within {grace:?}"),
    }
}

/// Whether an unlisted peer's first bytes are a PROXY protocol header rather than TLS. Waits
/// for the first byte (the caller bounds the wait); reads nothing.
async fn sniff_header(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 6];
    match tcp.peek(&mut first).await {
        Ok(n) => proxy::looks_like_header(&first[..n]),
        // The handshake that follows meets the same error and reports it.
        Err(_) => false,
    }
}

/// Closes a connection whose PROXY protocol header was refused: a metric and a log line naming
/// the connecting address and the reason (addresses only, nothing of any request).
fn refuse_proxy(via: SocketAddr, e: &ProxyError) {
    crate::metrics::get().connections_refused.with_label_values(&[e.reason()]).inc();
    log::warn!(peer:display = via, reason = e.reason(); "api: connection from {via} closed: {e}");
}

/// The answer on a connection past the client's cap: 429 with `Retry-After`, and the
/// connection closed after it.
fn too_many_connections(name: &str, cap: usize) -> Response<Body> {
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        format!("client {name:?} already has {cap} connections open; reuse them or close some"),
    )
    .retry_after(1)
    .into_response();
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// The answer on a connection whose certificate names a client that pinned other keys: 403, and
/// the connection closed after it. Nothing is routed, so nothing is read, signed or stored.
fn key_not_pinned(name: &str) -> Response<Body> {
    let mut r = ApiError::new(
        StatusCode::FORBIDDEN,
        "key_not_pinned",
        format!(
            "the certificate names client {name:?}, but its key is not one pinned for that client (spki_sha256)"
        ),
    )
    .into_response();
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// Why a TLS handshake failed, as a metric label.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) {
        Some(TlsError::NoCertificatesPresented) => "no_client_certificate",
        Some(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "untrusted_certificate",
        Some(TlsError::InvalidCertificate(_)) => "bad_certificate",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "protocol",
        None => "other",
    }
}

/// Serves health, readiness and metrics in plain HTTP until `stop` turns true.
pub async fn serve_ops(listener: TcpListener, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let (method, path) = (req.method(), req.uri().path());
                    let r = match path {
                        "/healthz" => {
                            super::probe(method, path, async { super::routes::health::healthz() }).await
                        }
                        "/readyz" => super::probe(method, path, super::routes::health::readyz(&state)).await,
                        "/metrics" => {
                            super::probe(method, path, super::routes::metrics::handle(&state)).await
                        }
                        _ => {
                            super::error(http::StatusCode::NOT_FOUND, "no_route", format!("no route {path}"))
                        }
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = http().serve_connection(TokioIo::new(Lingering::new(tcp)), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_per_peer_are_capped_and_given_back() {
        let h = Slots::<IpAddr>::new(MAX_HANDSHAKES_PER_PEER);
        let enter = |ip: &str| h.enter(ip.parse::<IpAddr>().unwrap().to_canonical());
        let slots: Vec<_> =
            (0..MAX_HANDSHAKES_PER_PEER).map(|_| enter("192.0.2.1").expect("under the cap")).collect();
        assert!(enter("192.0.2.1").is_none());
        // The same host as an IPv4-mapped IPv6 address is the same peer; another host is not.
        assert!(enter("::ffff:192.0.2.1").is_none());
        assert!(enter("192.0.2.2").is_some());
        drop(slots);
        assert!(h.taken.lock().unwrap().is_empty());
        assert!(enter("192.0.2.1").is_some());
    }

    #[test]
    fn connections_per_client_are_capped_apart_and_given_back() {
        let c = Slots::<String>::new(2);
        let first = c.enter("issuer".into()).expect("1 of 2");
        let _second = c.enter("issuer".into()).expect("2 of 2");
        assert!(c.enter("issuer".into()).is_none());
        assert!(c.enter("issuer2".into()).is_some(), "another client has its own count");
        drop(first);
        assert!(c.enter("issuer".into()).is_some());
    }
}
