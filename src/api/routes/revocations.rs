//! `POST /v1/revocations` `{"uvcis":[…]}` or `{"batch":"…"}` (officer): revocation batches in the
//! EU gateway's format for the signatures named, read from the audit log — UCI and SIGNATURE
//! hashes, at most 1,000 entries a batch — each also CMS-signed by the upload key when one is
//! configured. The whole log is scanned: an officer's occasional request, not a hot path.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::{Field, blocking, parse_json, read_json};
use crate::api::{ApiError, AppState, Body, Client, json};
use crate::audit::revocation::{self, HashType, Selection};
use crate::audit::{Event, KeyAction};

/// The body: exactly one of the two, neither given as `null` (a `null` beside the other field
/// would otherwise read as "left out").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    #[serde(default)]
    uvcis: Field<Vec<String>>,
    #[serde(default)]
    batch: Field<String>,
}

impl RevocationRequest {
    /// What to revoke: 400 `null_value` for a field given as `null`, 400 `bad_request` for
    /// neither or both, or a UVCI list outside 1–[`MAX_UVCIS`].
    fn selection(self) -> Result<Selection, ApiError> {
        let (uvcis, batch) = (self.uvcis.given("uvcis")?, self.batch.given("batch")?);
        match (uvcis, batch) {
            (Some(u), None) if !u.is_empty() && u.len() <= MAX_UVCIS => Ok(Selection::Uvcis(u)),
            (None, Some(b)) => Ok(Selection::Batch(b)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("give either uvcis (1–{MAX_UVCIS}) or batch"),
            )),
        }
    }
}

/// Most UVCIs in one request.
const MAX_UVCIS: usize = 100_000;

/// The batches, `{"batches":[{"batch":{…},"cms":"…"?}]}`.
pub async fn handle<B>(state: &Arc<AppState>, client: &Arc<Client>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let selection = match read_json(req, 8 << 20)
        .await
        .and_then(|b| parse_json::<RevocationRequest>(&b))
        .and_then(RevocationRequest::selection)
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (st, officer) = (state.clone(), client.name.clone());
    let outcome = blocking(move || {
        let internal = |m: String| {
            log::error!("revocation: {m}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "audit", m)
        };
        // A store away (a database restarting, a failover) is an outage, 503, not a failure.
        let mut away = None;
        let entries = st.store.audit_entries(crate::audit::FIRST_SEQ).map(|r| {
            r.map_err(|e| {
                let m = e.to_string();
                if e.is_unavailable() {
                    away.get_or_insert(e);
                }
                m
            })
        });
        let picked = selection.pick(entries).map_err(|m| match away.take() {
            Some(e) => super::batches_create::store_error(e),
            None => internal(m),
        })?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let country = &st.service.settings.country;
        let batches = revocation::batches(country, &picked, &[HashType::Uci, HashType::Signature], now);
        let mut out = Vec::with_capacity(batches.len());
        for b in &batches {
            let mut item = serde_json::json!({ "batch": b });
            if let Some(upload) = &st.upload {
                let content = serde_json::to_vec(b).unwrap_or_default();
                let cms = crate::pki::cms::sign_upload(
                    &st.service.hsm,
                    &upload.label,
                    &upload.certificate_der,
                    &content,
                )
                .map_err(|e| {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", e.to_string())
                        .retry_after(5)
                })?;
                item["cms"] = B64.encode(cms).into();
            }
            out.push(item);
        }
        let event = Event::Key {
            action: KeyAction::RevocationExported,
            label: String::new(),
            officer,
            kid: None,
            detail: format!("{} signatures in {} batches", picked.len(), batches.len()),
        };
        st.store.audit_append(vec![event]).map_err(super::batches_create::store_error)?;
        Ok::<_, ApiError>(out)
    })
    .await;
    match outcome {
        Ok(Ok(batches)) => json(StatusCode::OK, &serde_json::json!({ "batches": batches })),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(body: &str) -> Result<Selection, ApiError> {
        parse_json::<RevocationRequest>(body.as_bytes()).and_then(RevocationRequest::selection)
    }

    #[test]
    fn exactly_one_of_uvcis_or_batch_and_never_null() {
        assert!(
            matches!(selection(r#"{"uvcis":["URN:UVCI:01:VN:A"]}"#), Ok(Selection::Uvcis(u)) if u.len() == 1)
        );
        assert!(matches!(selection(r#"{"batch":"b1"}"#), Ok(Selection::Batch(b)) if b == "b1"));
        for (body, code) in [
            (r#"{"uvcis":["URN:UVCI:01:VN:A"],"batch":null}"#, "null_value"),
            (r#"{"uvcis":null,"batch":"b1"}"#, "null_value"),
            (r#"{"batch":null}"#, "null_value"),
            (r#"{"uvcis":null}"#, "null_value"),
            (r#"{}"#, "bad_request"),
            (r#"{"uvcis":[],"batch":"b1"}"#, "bad_request"),
            (r#"{"uvcis":["URN:UVCI:01:VN:A"],"batch":"b1"}"#, "bad_request"),
            (r#"{"uvcis":[]}"#, "bad_request"),
            (r#"{"uvcis":[null]}"#, "malformed_json"),
        ] {
            let e = selection(body).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, code), "{body}");
        }
        let e = selection(r#"{"batch":null}"#).err().unwrap();
        assert!(e.message.contains("batch is null"), "{}", e.message);
    }
}
