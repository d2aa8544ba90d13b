//! The HTTPS API of PRODUCT.md: who is calling (from the client certificate), what they may
//! do, and which route handles the request. One file per route lives in [`routes`].

pub mod linger;
pub mod ndjson;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::config::{ClientConfig, Config, Role};
use crate::keys::audit_key::AuditSigner;
use crate::keys::lifecycle::Lifecycle;
use crate::pipeline::{SigningService, Waker};
use crate::store::Store;

/// The response body type of every route.
pub type Body = BoxBody<Bytes, BodyError>;

/// Why a streamed response body stopped short. hyper then closes the connection without ending
/// the body, so the client sees a truncated response rather than a short one that looks whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// A whole body held in memory (it cannot fail).
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// A configured client, as recognised from its certificate.
#[derive(Debug, Clone)]
pub struct Client {
    /// The identity matched in its certificate.
    pub name: String,
    /// What it may do.
    pub roles: Vec<Role>,
    /// The issuer account its batches belong to.
    pub issuer_id: String,
    /// The keys it may present (SHA-256 of the SubjectPublicKeyInfo); empty: any key the client
    /// CA certified under its name.
    pub pins: Vec<[u8; 32]>,
}

impl Client {
    fn from_config(c: &ClientConfig) -> Client {
        Client {
            name: c.name.clone(),
            roles: c.roles.clone(),
            issuer_id: c.issuer_id.clone().unwrap_or_else(|| c.name.clone()),
            pins: c.pins(),
        }
    }
}

/// Who a client certificate (already verified against the client CAs) is.
#[derive(Debug, Clone)]
pub enum Identity {
    /// A configured client; its key is pinned, if the client has pins.
    Client(Arc<Client>),
    /// The certificate names no configured client (the names it carries, for the log).
    Unknown(Vec<String>),
    /// It names the configured client `name`, whose pins do not include the certificate's key:
    /// another certificate for the same name, so not that client.
    NotPinned(String),
}

/// Clients by the identity in their certificate.
type ClientMap = HashMap<String, Arc<Client>>;

/// The configured clients by identity; replaced whole on SIGHUP.
#[derive(Clone, Default)]
pub struct Clients(Arc<RwLock<Arc<ClientMap>>>);

impl Clients {
    /// The clients of a configuration.
    pub fn from_config(config: &Config) -> Clients {
        let c = Clients::default();
        c.replace(config);
        c
    }

    /// Replaces the set with the clients of `config`.
    pub fn replace(&self, config: &Config) {
        let map = config.clients.iter().map(|c| (c.name.clone(), Arc::new(Client::from_config(c)))).collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    /// The client a certificate (DER) is: the first configured client among its names (subject
    /// CN, then DNS subjectAltNames), if its key is one that client pinned (or it pinned none).
    pub fn identify(&self, der: &[u8]) -> Identity {
        let names = tls::certificate_names(der);
        let map = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(client) = names.iter().find_map(|n| map.get(n).cloned()) else {
            return Identity::Unknown(names);
        };
        if client.pins.is_empty() || tls::spki_sha256(der).is_some_and(|h| client.pins.contains(&h)) {
            Identity::Client(client)
        } else {
            Identity::NotPinned(client.name.clone())
        }
    }
}

/// Limits that protect the appliance from its callers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// Most records in one synchronous `POST /v1/sign`.
    pub max_sync_records: usize,
    /// Above this many queued records, `POST /v1/batches` answers 503.
    pub max_queued_records: u64,
    /// Open connections per client; requests on more are answered 429.
    pub max_connections_per_client: usize,
}

/// Everything the routes share.
pub struct AppState {
    /// The durable store.
    pub store: Store,
    /// Signing, for the synchronous route and readiness.
    pub service: SigningService,
    /// Wakes pipeline workers after a submission.
    pub waker: Waker,
    /// The configured clients.
    pub clients: Clients,
    /// Request limits.
    pub limits: Limits,
    /// This node's own base URL (`https://host:port`), for `Location` headers: status and
    /// results are fetched from the node that holds the batch.
    pub public_url: String,
    /// Readiness, cached.
    pub readiness: routes::health::Readiness,
    /// Per-client request rate.
    pub rate: routes::RateLimiter,
    /// The Document Signer keys' lifecycle (admin routes, trust list).
    pub keys: Arc<Lifecycle>,
    /// The audit key (its public half is served to officers).
    pub audit: AuditSigner,
    /// The key that signs gateway uploads, if configured.
    pub upload: Option<Arc<UploadKey>>,
    /// Readiness requires a DSC that still signs this many seconds from now.
    pub readiness_horizon_secs: i64,
}

/// The country's gateway upload key: its HSM label and its certificate.
#[derive(Debug, Clone)]
pub struct UploadKey {
    /// HSM label.
    pub label: String,
    /// The upload certificate, DER.
    pub certificate_der: Vec<u8>,
}

/// A refused request: status, a stable code, a message, and when to retry.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error without a retry hint.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// The same error with a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The JSON response: `{"error":{"code","message"}}`.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut r = json(self.status, &body);
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        r
    }
}

/// A JSON error response: `{"error":{"code","message"}}`.
pub fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response<Body> {
    ApiError::new(status, code, message).into_response()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    typed(status, "application/json", full(bytes))
}

/// A response of `status` carrying `body` as `content_type`.
pub fn typed(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// Dispatches an authenticated request (`client` is `None` when the certificate chains to a
/// trusted CA but names no configured client).
pub async fn route<B>(state: Arc<AppState>, client: Option<Arc<Client>>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let template = route_template(req.method().as_str(), req.uri().path());
    let response = dispatch(state, client, req).await;
    crate::metrics::get().http_requests.with_label_values(&[template, response.status().as_str()]).inc();
    response
}

/// The OpenAPI path template a request matches (`other` for none): a metric label that never
/// carries a batch id or a key label.
pub fn route_template(method: &str, path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|(m, template)| *m == method && template_matches(template, path))
        .map_or("other", |(_, template)| template)
}

/// Whether `path` is an instance of the OpenAPI path `template` (`{name}` is any one segment).
fn template_matches(template: &str, path: &str) -> bool {
    let mut parts = template.trim_start_matches('/').split('/');
    let mut segments = path.trim_start_matches('/').split('/');
    loop {
        match (parts.next(), segments.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p.starts_with('{') || p == s => {}
            _ => return false,
        }
    }
}

/// The methods [`ROUTES`] answers on `path`, HEAD beside each GET of a probe; empty for a path
/// no route has.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut allow: Vec<&'static str> =
        ROUTES.iter().filter(|(_, t)| template_matches(t, path)).map(|(m, _)| *m).collect();
    if PROBES.contains(&path) && allow.contains(&"GET") {
        allow.push("HEAD");
    }
    allow
}

/// The routes that answer HEAD as well as GET: what probes and load balancers call.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// 405 with the `Allow` header naming what `path` does answer (RFC 9110 requires it).
pub fn method_not_allowed(method: &Method, path: &str, allow: &[&str]) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    );
    let value = header::HeaderValue::from_str(&allow.join(", ")).expect("method names are header-safe");
    r.headers_mut().insert(header::ALLOW, value);
    r
}

/// A probe's answer: GET and HEAD only (hyper sends no body to a HEAD), else 405.
pub async fn probe<F>(method: &Method, path: &str, answer: F) -> Response<Body>
where
    F: std::future::Future<Output = Response<Body>>,
{
    if method == Method::GET || method == Method::HEAD {
        answer.await
    } else {
        method_not_allowed(method, path, &["GET", "HEAD"])
    }
}

async fn dispatch<B>(state: Arc<AppState>, client: Option<Arc<Client>>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    let decoded = path_segments(&path);
    let segments: Vec<&str> = decoded.iter().map(AsRef::as_ref).collect();
    let method = req.method().clone();
    // Health needs no role: the process and its dependencies, nothing about anyone's data.
    match segments.as_slice() {
        ["healthz"] => return probe(&method, &path, async { routes::health::healthz() }).await,
        ["readyz"] => return probe(&method, &path, routes::health::readyz(&state)).await,
        _ => {}
    }
    let Some(client) = client else {
        return error(
            StatusCode::FORBIDDEN,
            "unknown_client",
            "the client certificate names no configured client",
        );
    };
    if !state.rate.allow(&client.name) {
        let mut r =
            error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests from this client");
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    }
    if matches!(segments.as_slice(), ["v1", "batches", ..] | ["v1", "sign"])
        && !client.roles.contains(&Role::Issue)
    {
        return error(StatusCode::FORBIDDEN, "forbidden", "this client does not have the issue role");
    }
    if matches!(
        segments.as_slice(),
        ["v1", "keys", ..] | ["v1", "cscas"] | ["v1", "audit", ..] | ["v1", "revocations"]
    ) && !client.roles.contains(&Role::Officer)
    {
        return error(StatusCode::FORBIDDEN, "forbidden", "this client does not have the officer role");
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "batches"]) => routes::batches_create::handle(&state, &client, req).await,
        (&Method::GET, ["v1", "batches", id]) => routes::batch_status::handle(&state, &client, id).await,
        (&Method::GET, ["v1", "batches", id, "results"]) => {
            routes::batch_results::handle(&state, &client, id).await
        }
        (&Method::DELETE, ["v1", "batches", id]) => routes::batch_delete::handle(&state, &client, id).await,
        (&Method::POST, ["v1", "sign"]) => routes::sign::handle(&state, &client, req).await,
        (&Method::GET, ["v1", "trust-list"]) => routes::trust_list::handle(&state).await,
        (&Method::GET, ["v1", "keys"]) => routes::keys_list::handle(&state).await,
        (&Method::POST, ["v1", "keys"]) => routes::keys_create::handle(&state, &client, req).await,
        (&Method::POST, ["v1", "keys", label, "csr"]) => {
            routes::key_csr::handle(&state, &client, label, req).await
        }
        (&Method::PUT, ["v1", "keys", label, "certificate"]) => {
            routes::key_certificate::handle(&state, &client, label, req).await
        }
        (&Method::POST, ["v1", "keys", label, "approve"]) => {
            routes::key_approve::handle(&state, &client, label).await
        }
        (&Method::POST, ["v1", "keys", label, "retire"]) => {
            routes::key_retire::handle(&state, &client, label).await
        }
        (&Method::POST, ["v1", "keys", label, "upload"]) => {
            let bare = req.headers().get_all(header::ACCEPT).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',').any(|m| m.split(';').next().unwrap_or("").trim() == routes::key_upload::CMS)
                })
            });
            routes::key_upload::handle(&state, &client, label, bare).await
        }
        (&Method::GET, ["v1", "cscas"]) => routes::cscas::list(&state).await,
        (&Method::POST, ["v1", "cscas"]) => routes::cscas::add(&state, &client, req).await,
        (&Method::POST, ["v1", "revocations"]) => routes::revocations::handle(&state, &client, req).await,
        (&Method::GET, ["v1", "audit"]) => routes::audit_log::handle(&state, req.uri().query()).await,
        (&Method::GET, ["v1", "audit", "key"]) => routes::audit_log::key(&state),
        (&Method::GET, ["v1", "audit", "checkpoints"]) => {
            routes::audit_checkpoints::handle(&state, req.uri().query()).await
        }
        _ => match allowed_methods(&path).as_slice() {
            [] => error(StatusCode::NOT_FOUND, "no_route", format!("no route {path}")),
            allow => method_not_allowed(&method, &path, allow),
        },
    }
}

/// The segments of a request path, each percent-decoded: clients encode what they put in a path
/// (Python's `requests`, Java's and .NET's URI builders send a label's `:` as `%3A`), and the
/// label or batch id is what was encoded. Roles are checked on the same decoded segments the
/// routes match, so an encoded path reaches no route its plain form would not. A segment that is
/// not UTF-8 once decoded keeps a replacement character, so it names no key and no batch.
pub fn path_segments(path: &str) -> Vec<std::borrow::Cow<'_, str>> {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect()
}

/// Every route the API answers, as method and OpenAPI path template; `docs/openapi.json`
/// documents exactly these (a test holds the two together).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/{id}"),
    ("DELETE", "/v1/batches/{id}"),
    ("GET", "/v1/batches/{id}/results"),
    ("POST", "/v1/sign"),
    ("GET", "/v1/trust-list"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/keys/{label}/csr"),
    ("PUT", "/v1/keys/{label}/certificate"),
    ("POST", "/v1/keys/{label}/approve"),
    ("POST", "/v1/keys/{label}/retire"),
    ("POST", "/v1/keys/{label}/upload"),
    ("GET", "/v1/cscas"),
    ("POST", "/v1/cscas"),
    ("POST", "/v1/revocations"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/audit/key"),
    ("GET", "/v1/audit/checkpoints"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_clients_are_only_their_keys() {
        use rustls_pki_types::pem::PemObject as _;
        let ca = crate::pki::dev::DevCa::new("VN", "Test", "Test client CA", 1).unwrap();
        let (first, second) =
            (ca.issue_client("issuer", 30).unwrap(), ca.issue_client("issuer", 30).unwrap());
        let der =
            |pem: &str| rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec();
        let (first, second) = (der(&first.cert_pem), der(&second.cert_pem));
        let pin = hex::encode(tls::spki_sha256(&first).unwrap());
        let config = |pins: &str| {
            let text = format!(
                r#"
                listen = "127.0.0.1:8443"
                metrics_listen = "127.0.0.1:9898"
                state_dir = "state"
                country = "VN"
                [hsm]
                backend = "pkcs11"
                module = "m.so"
                token_label = "hcert"
                pin = {{ file = "hsm-pin" }}
                [tls]
                cert = "s.pem"
                key = "s.key"
                client_ca = ["ca.pem"]
                [[client]]
                name = "issuer"
                roles = ["issue"]
                spki_sha256 = [{pins}]
                "#
            );
            Config::from_toml_str(&text, std::path::Path::new("/")).unwrap()
        };
        let clients = Clients::from_config(&config(&format!("{pin:?}")));
        assert!(matches!(clients.identify(&first), Identity::Client(c) if c.name == "issuer"));
        assert!(matches!(clients.identify(&second), Identity::NotPinned(n) if n == "issuer"));
        // Without pins, any certificate of the CA under the name; a reload changes the pins.
        clients.replace(&config(""));
        assert!(matches!(clients.identify(&second), Identity::Client(_)));
        let other = ca.issue_client("nobody", 30).unwrap();
        assert!(matches!(clients.identify(&der(&other.cert_pem)), Identity::Unknown(n) if n == ["nobody"]));
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/openapi.json")).expect("docs/openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let (mut api, mut ops) = (Vec::new(), Vec::new());
        for (path, item) in doc["paths"].as_object().expect("paths") {
            // A path naming its own server is the operations listener's; the rest, the API's.
            let on_ops = item["servers"][0]["url"].as_str().is_some_and(|u| u.starts_with("http://"));
            for method in ["get", "head", "post", "put", "delete", "patch", "options", "trace"] {
                if item.get(method).is_some() {
                    let route = (method.to_uppercase(), path.clone());
                    if on_ops { ops.push(route) } else { api.push(route) }
                }
            }
        }
        // The probes are answered on both listeners (on the API's to certified clients only).
        let mut answered: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|(_, p)| !PROBES.contains(p))
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        api.sort();
        answered.sort();
        assert_eq!(api, answered);
        ops.sort();
        assert_eq!(
            ops,
            [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/readyz")].map(|(m, p)| (m.into(), p.into()))
        );
        assert_eq!(doc["servers"][0]["url"], "https://{host}:{port}");
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(path_segments("/v1/keys/%3AEaWl6/upload"), ["v1", "keys", ":EaWl6", "upload"]);
        assert_eq!(
            path_segments("/v1/%6Beys"),
            ["v1", "keys"],
            "an encoded name is the same route, and role"
        );
        // An encoded slash stays inside its segment: it names no other route.
        assert_eq!(path_segments("/v1/batches/a%2Fb"), ["v1", "batches", "a/b"]);
        assert_eq!(path_segments("/v1/batches/%FF"), ["v1", "batches", "\u{fffd}"]);
        assert_eq!(path_segments("/healthz"), ["healthz"]);
    }

    #[test]
    fn route_templates_hide_ids_and_labels() {
        assert_eq!(route_template("GET", "/v1/batches/0123abcd"), "/v1/batches/{id}");
        assert_eq!(route_template("GET", "/v1/batches/x/results"), "/v1/batches/{id}/results");
        assert_eq!(route_template("POST", "/v1/keys/dsc-9/approve"), "/v1/keys/{label}/approve");
        assert_eq!(route_template("POST", "/v1/batches/x"), "other");
        assert_eq!(route_template("GET", "/etc/passwd"), "other");
    }

    #[test]
    fn allow_names_the_methods_of_the_path_and_nothing_for_an_unknown_one() {
        assert_eq!(allowed_methods("/v1/batches/x"), ["GET", "DELETE"]);
        assert_eq!(allowed_methods("/v1/keys"), ["GET", "POST"]);
        assert_eq!(allowed_methods("/readyz"), ["GET", "HEAD"]);
        assert!(allowed_methods("/metrics").is_empty(), "the operations listener's, not the API's");
        assert!(allowed_methods("/v1/batches/x/y").is_empty());
        assert!(allowed_methods("/v1").is_empty());
    }
}
