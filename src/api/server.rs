//! The listeners: the API (TLS with client certificates) and the operations listener (plain
//! HTTP on loopback: health, readiness, metrics — what probes and Prometheus reach without a
//! client certificate).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::tls::{TlsState, certificate_names};
use super::{ApiError, AppState, Body, route};

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
pub async fn serve_api(
    listener: TcpListener,
    tls: TlsState,
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
        let (tcp, peer) = tokio::select! {
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
        let Some(handshake) = handshaking.enter(peer.ip().to_canonical()) else {
            // Closed at once (with its slot): per connection, so a debug line and a metric only.
            crate::metrics::get().tls_handshake_failures.with_label_values(&["peer_limit"]).inc();
            log::debug!(
                "api: {peer} has {MAX_HANDSHAKES_PER_PEER} TLS handshakes under way; connection closed"
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let state = state.clone();
        let watcher = graceful.watcher();
        let per_client = per_client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
            let names = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| certificate_names(c))
                .unwrap_or_default();
            let client = state.clients.find(&names);
            if client.is_none() {
                log::warn!(
                    "api: {peer} presented a trusted certificate for {names:?}, which is no configured client"
                );
            }
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
                let (state, client, over) = (state.clone(), client.clone(), over.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(match over {
                        Some(name) => too_many_connections(&name, cap),
                        None => route(state, client, req).await,
                    })
                }
            });
            let conn = http().serve_connection(TokioIo::new(stream), svc);
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
                    let path = req.uri().path().to_owned();
                    let r = match path.as_str() {
                        "/healthz" => super::routes::health::healthz(),
                        "/readyz" => super::routes::health::readyz(&state).await,
                        "/metrics" => super::routes::metrics::handle(&state).await,
                        _ => {
                            super::error(http::StatusCode::NOT_FOUND, "no_route", format!("no route {path}"))
                        }
                    };
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = http().serve_connection(TokioIo::new(tcp), svc).await;
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
