//! One file per route, and what they share: reading a bounded JSON body and the request-rate
//! limiter.

pub mod audit_checkpoints;
pub mod audit_log;
pub mod batch_delete;
pub mod batch_results;
pub mod batch_status;
pub mod batches_create;
pub mod cscas;
pub mod health;
pub mod key_approve;
pub mod key_certificate;
pub mod key_csr;
pub mod key_retire;
pub mod key_upload;
pub mod keys_create;
pub mod keys_list;
pub mod metrics;
pub mod revocations;
pub mod sign;
pub mod trust_list;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::value::RawValue;

use std::sync::Arc;

use http::Response;

use super::{ApiError, AppState, Body, Client};
use crate::keys::lifecycle::{KeyError, KeyView, Lifecycle};
pub use crate::store::MAX_DCC_BYTES;
use crate::store::{NewRecord, OVERSIZE_DCC};

/// One record of a request: the issuer's reference and the DCC, kept as raw JSON text (the
/// pipeline validates it field by field and reports per record).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn<'a> {
    /// The issuer's reference.
    #[serde(rename = "ref")]
    pub r#ref: String,
    /// The DCC payload.
    #[serde(borrow)]
    pub dcc: &'a RawValue,
}

/// The body of `POST /v1/batches` and `POST /v1/sign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest<'a> {
    /// The records.
    #[serde(borrow)]
    pub records: Vec<RecordIn<'a>>,
    /// Makes a retried submission return the first one's batch.
    #[serde(default)]
    pub idempotency_key: Field<String>,
}

/// A request field that may be left out but, when given, must not be `null`. serde reads a
/// JSON `null` into an `Option` as `None`, which would take `null` where the document says a
/// string; kept apart here, it is refused (400 `null_value`) by [`Field::given`].
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Field<T> {
    /// Not in the request.
    #[default]
    Absent,
    /// Given as JSON `null`.
    Null,
    /// Given as a value.
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Called only for a field that is present; an absent one is `Default`.
        Ok(Option::<T>::deserialize(d)?.map_or(Field::Null, Field::Value))
    }
}

impl<T> Field<T> {
    /// The value, `None` when left out; 400 `null_value` naming `name` when given as `null`.
    pub fn given(self, name: &str) -> Result<Option<T>, ApiError> {
        match self {
            Field::Absent => Ok(None),
            Field::Value(v) => Ok(Some(v)),
            Field::Null => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "null_value",
                format!("{name} is null; leave it out or give a value"),
            )),
        }
    }

    /// The value, if one was given.
    pub fn as_ref(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            Field::Absent | Field::Null => None,
        }
    }
}

impl BatchRequest<'_> {
    /// The records as the store and the signer take them; a `dcc` over [`MAX_DCC_BYTES`] is
    /// replaced by [`OVERSIZE_DCC`], so that record alone is rejected (`dcc_too_large`).
    pub fn new_records(&self) -> Vec<NewRecord<'_>> {
        self.records
            .iter()
            .map(|r| {
                let dcc = r.dcc.get().as_bytes();
                let dcc_json = if dcc.len() > MAX_DCC_BYTES { OVERSIZE_DCC } else { dcc };
                NewRecord { r#ref: &r.r#ref, dcc_json }
            })
            .collect()
    }
}

/// Longest `ref` accepted, in characters.
pub const MAX_REF_LEN: usize = 128;

/// Longest `idempotency_key` accepted, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Reads a JSON body of at most `max` bytes: 415 if it is not JSON, 413 if too large.
pub async fn read_json<B>(req: Request<B>, max: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    read_body(req, max).await
}

/// Reads a body of at most `max` bytes, whatever its type: 413 if too large.
pub async fn read_body<B>(req: Request<B>, max: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {max} bytes"),
        )
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("cannot read the body: {e}")))
        }
    }
}

/// Parses a small JSON request body: 400 naming what is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("invalid request body: {e}"))
    })
}

/// A text response of `content_type`.
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    super::typed(status, content_type, super::full(body))
}

/// A refused key operation as an HTTP error.
pub fn key_error(e: KeyError) -> ApiError {
    let (status, code) = match &e {
        KeyError::NotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
        KeyError::Exists(..) => (StatusCode::CONFLICT, "key_exists"),
        KeyError::WrongState { .. } => (StatusCode::CONFLICT, "key_state"),
        KeyError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
        KeyError::Chain(_) => (StatusCode::UNPROCESSABLE_ENTITY, "dsc_chain"),
        KeyError::NotInStore(_) => (StatusCode::CONFLICT, "not_in_store"),
        KeyError::Hsm(crate::hsm::Error::InvalidLabel { .. }) => (StatusCode::BAD_REQUEST, "bad_label"),
        KeyError::Hsm(crate::hsm::Error::KeyRefused { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "key_refused")
        }
        KeyError::Hsm(_) => (StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable"),
        KeyError::Store(s) if s.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        KeyError::Store(crate::store::StoreError::Conflict(_)) => (StatusCode::CONFLICT, "conflict"),
        KeyError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store"),
    };
    if status.is_server_error() {
        log::error!("keys: {e}");
    }
    let err = ApiError::new(status, code, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE { err.retry_after(5) } else { err }
}

/// Runs an officer's action on one key and answers 200 with the key's view.
pub async fn key_action<F>(state: &Arc<AppState>, client: &Arc<Client>, label: &str, op: F) -> Response<Body>
where
    F: FnOnce(&Lifecycle, &str, &str) -> Result<KeyView, KeyError> + Send + 'static,
{
    key_action_status(state, client, label, op, |_| StatusCode::OK).await
}

/// Runs an officer's action on one key and answers the key's view with the status `status`
/// picks from it.
pub async fn key_action_status<F>(
    state: &Arc<AppState>,
    client: &Arc<Client>,
    label: &str,
    op: F,
    status: fn(&KeyView) -> StatusCode,
) -> Response<Body>
where
    F: FnOnce(&Lifecycle, &str, &str) -> Result<KeyView, KeyError> + Send + 'static,
{
    let (st, officer, label) = (state.clone(), client.name.clone(), label.to_owned());
    match blocking(move || op(&st.keys, &label, &officer)).await {
        Ok(Ok(view)) => super::json(status(&view), &view),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Parses and checks a batch request: 400 with the reason for anything malformed or ambiguous
/// (a duplicate `ref`). A `dcc` over [`MAX_DCC_BYTES`] is not: that record alone is rejected
/// (see [`BatchRequest::new_records`]).
pub fn parse_batch(body: &[u8], max_records: usize) -> Result<BatchRequest<'_>, ApiError> {
    let mut req: BatchRequest<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("invalid request body: {e}"))
    })?;
    if req.records.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no_records", "records is empty"));
    }
    if req.records.len() > max_records {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!("{} records; at most {max_records} per request", req.records.len()),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.records.len());
    for (i, r) in req.records.iter().enumerate() {
        if r.r#ref.is_empty()
            || r.r#ref.chars().count() > MAX_REF_LEN
            || r.r#ref.chars().any(char::is_control)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_ref",
                format!("records[{i}].ref must be 1–{MAX_REF_LEN} characters without control characters"),
            ));
        }
        // The document's `dcc` is an object: a string, number, array or null is not a DCC, and
        // taking it would only reject the record later with a less precise reason.
        if !r.dcc.get().starts_with('{') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "dcc_not_object",
                format!("records[{i}].dcc must be a JSON object"),
            ));
        }
        if !seen.insert(r.r#ref.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "duplicate_ref",
                format!("records[{i}].ref repeats an earlier ref"),
            ));
        }
    }
    // Counted in characters, as the document's maxLength is.
    let key = std::mem::take(&mut req.idempotency_key).given("idempotency_key")?;
    if let Some(k) = &key
        && (k.is_empty() || k.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            format!("idempotency_key must be 1–{MAX_IDEMPOTENCY_KEY_CHARS} characters"),
        ));
    }
    req.idempotency_key = key.map_or(Field::Absent, Field::Value);
    Ok(req)
}

/// A token bucket per client: `rate` requests per second, bursts of `rate`.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per client (0: unlimited).
    pub fn new(per_second: u32) -> Self {
        Self { rate: f64::from(per_second), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `client`, or says no.
    pub fn allow(&self, client: &str) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(client.to_owned()).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs blocking store or HSM work off the async reactor; a panic there is a 500, not a crash.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed inside the appliance",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_request_checks() {
        let ok = br#"{"records":[{"ref":"a","dcc":{"x":1}},{"ref":"b","dcc":{}}],"idempotency_key":"k"}"#;
        let r = parse_batch(ok, 10).unwrap();
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.records[0].dcc.get(), r#"{"x":1}"#);
        for (body, status) in [
            (&b"{"[..], StatusCode::BAD_REQUEST),
            (br#"{"records":[]}"#, StatusCode::BAD_REQUEST),
            (br#"{"records":[{"ref":"a","dcc":{}}],"extra":1}"#, StatusCode::BAD_REQUEST),
            (br#"{"records":[{"ref":"","dcc":{}}]}"#, StatusCode::BAD_REQUEST),
            (br#"{"records":[{"ref":"a","dcc":{}},{"ref":"a","dcc":{}}]}"#, StatusCode::BAD_REQUEST),
            (br#"{"records":[{"ref":"a"}]}"#, StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(
                parse_batch(body, 10).unwrap_err().status,
                status,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let many = format!(
            r#"{{"records":[{}]}}"#,
            (0..11).map(|i| format!(r#"{{"ref":"{i}","dcc":{{}}}}"#)).collect::<Vec<_>>().join(",")
        );
        assert_eq!(parse_batch(many.as_bytes(), 10).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        let dcc = |n: usize| {
            format!(
                r#"{{"records":[{{"ref":"a","dcc":{{"x":"{}"}}}},{{"ref":"b","dcc":{{}}}}]}}"#,
                "y".repeat(n)
            )
        };
        // `{"x":""}` is 8 bytes around the string: at the limit the DCC is kept as sent, one
        // byte over it is replaced for that record alone, and the request stands.
        let at = dcc(MAX_DCC_BYTES - 8);
        let r = parse_batch(at.as_bytes(), 10).unwrap();
        assert_eq!(r.new_records()[0].dcc_json.len(), MAX_DCC_BYTES);
        let over = dcc(MAX_DCC_BYTES - 7);
        let r = parse_batch(over.as_bytes(), 10).unwrap();
        let records = r.new_records();
        assert_eq!((records[0].dcc_json, records[1].dcc_json), (OVERSIZE_DCC, &b"{}"[..]));
    }

    #[test]
    fn null_where_a_string_is_documented_is_refused() {
        let code = |body: &str| parse_batch(body.as_bytes(), 10).err().map(|e| (e.status.as_u16(), e.code));
        assert_eq!(
            code(r#"{"records":[{"ref":"a","dcc":{}}],"idempotency_key":null}"#),
            Some((400, "null_value"))
        );
        assert_eq!(code(r#"{"records":[{"ref":null,"dcc":{}}]}"#), Some((400, "malformed_json")));
        assert_eq!(code(r#"{"records":null}"#), Some((400, "malformed_json")));
        // Left out is not null: no key, and the request stands.
        let r = parse_batch(br#"{"records":[{"ref":"a","dcc":{}}]}"#, 10).unwrap();
        assert_eq!(r.idempotency_key, Field::Absent);
        let r = parse_batch(br#"{"records":[{"ref":"a","dcc":{}}],"idempotency_key":"k"}"#, 10).unwrap();
        assert_eq!(r.idempotency_key.as_ref().map(String::as_str), Some("k"));
    }

    #[test]
    fn a_dcc_that_is_not_an_object_is_refused_naming_its_record() {
        for dcc in ["null", "5", r#""text""#, "[]", "[{}]", "true"] {
            let body = format!(r#"{{"records":[{{"ref":"a","dcc":{{}}}},{{"ref":"b","dcc":{dcc}}}]}}"#);
            let e = parse_batch(body.as_bytes(), 10).err().unwrap_or_else(|| panic!("{dcc} taken"));
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "dcc_not_object"), "{dcc}");
            assert!(e.message.contains("records[1].dcc"), "{}", e.message);
        }
        // Whitespace before the object is JSON's, not the DCC's.
        assert!(parse_batch(b"{\"records\":[{\"ref\":\"a\",\"dcc\":\n  {}}]}", 10).is_ok());
    }

    #[test]
    fn refs_and_keys_are_bounded_as_the_document_says() {
        let body = |r: &str, k: &str| {
            serde_json::json!({"records":[{"ref": r, "dcc": {}}], "idempotency_key": k}).to_string()
        };
        let code = |b: String| parse_batch(b.as_bytes(), 10).err().map(|e| e.code);
        // 128 characters of a two-byte letter is a good ref; 129 is not.
        assert_eq!(code(body(&"é".repeat(MAX_REF_LEN), "k")), None);
        assert_eq!(code(body(&"é".repeat(MAX_REF_LEN + 1), "k")), Some("bad_ref"));
        for control in ['\u{0}', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}'] {
            assert_eq!(code(body(&format!("a{control}b"), "k")), Some("bad_ref"), "{control:?}");
        }
        assert_eq!(code(body("a\u{a0}b", "k")), None, "U+00A0 is no control character");
        // The key's bound is in characters (the document's maxLength), not bytes.
        assert_eq!(code(body("a", &"é".repeat(MAX_IDEMPOTENCY_KEY_CHARS))), None);
        assert_eq!(code(body("a", &"é".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1))), Some("bad_idempotency_key"));
        assert_eq!(code(body("a", "")), Some("bad_idempotency_key"));
    }

    #[test]
    fn rate_limiter_refills() {
        let r = RateLimiter::new(2);
        assert!(r.allow("a") && r.allow("a"));
        assert!(!r.allow("a"));
        assert!(r.allow("b"));
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(r.allow("a"));
        assert!(RateLimiter::new(0).allow("x"));
    }
}
