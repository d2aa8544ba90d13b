//! `POST /v1/revocations` `{"uvcis":[…]}` or `{"batch":"…"}`, optionally `"hash_types"` (officer):
//! revocation batches in the EU gateway's format for the signatures named, read from the audit
//! log — UCI, SIGNATURE and COUNTRYCODEUCI hashes unless fewer are asked for, at most 1,000
//! entries a batch — each with its exact JSON (`content`) and, when an upload key is configured,
//! that content CMS-signed by it. The whole log is scanned: an officer's occasional request, not a
//! hot path.

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
    /// Which hashes to export (default: all three).
    #[serde(default)]
    hash_types: Field<Vec<HashType>>,
}

impl RevocationRequest {
    /// What to revoke and which hashes: 400 `null_value` for a field given as `null`, 400
    /// `bad_request` for neither or both of `uvcis` and `batch`, a UVCI list outside
    /// 1–[`MAX_UVCIS`], or an empty `hash_types`.
    fn selection(self) -> Result<(Selection, Vec<HashType>), ApiError> {
        let (uvcis, batch) = (self.uvcis.given("uvcis")?, self.batch.given("batch")?);
        let types = match self.hash_types.given("hash_types")? {
            None => HashType::ALL.to_vec(),
            Some(t) if t.is_empty() => {
                let m = "hash_types must name at least one of UCI, SIGNATURE, COUNTRYCODEUCI";
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m));
            }
            Some(t) => t,
        };
        let selection = match (uvcis, batch) {
            (Some(u), None) if !u.is_empty() && u.len() <= MAX_UVCIS => Selection::Uvcis(u),
            (None, Some(b)) => Selection::Batch(b),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("give either uvcis (1–{MAX_UVCIS}) or batch"),
                ));
            }
        };
        Ok((selection, types))
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
    let (selection, types) = match read_json(req, 8 << 20)
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
        let batches = revocation::batches(country, &picked, &types, now);
        let mut out = Vec::with_capacity(batches.len());
        for b in &batches {
            let content = b.content();
            let mut item = serde_json::json!({
                "batch": b,
                "content": String::from_utf8_lossy(&content),
            });
            if let Some(upload) = &st.upload {
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
        parse_json::<RevocationRequest>(body.as_bytes())
            .and_then(RevocationRequest::selection)
            .map(|(s, _)| s)
    }

    fn types(body: &str) -> Result<Vec<HashType>, ApiError> {
        parse_json::<RevocationRequest>(body.as_bytes())
            .and_then(RevocationRequest::selection)
            .map(|(_, t)| t)
    }

    #[test]
    fn hash_types_default_to_all_three_and_are_never_empty_or_null() {
        assert_eq!(types(r#"{"batch":"b1"}"#).unwrap(), HashType::ALL);
        let one = types(r#"{"batch":"b1","hash_types":["COUNTRYCODEUCI"]}"#).unwrap();
        assert_eq!(one, [HashType::CountryCodeUci]);
        for (body, code) in [
            (r#"{"batch":"b1","hash_types":[]}"#, "bad_request"),
            (r#"{"batch":"b1","hash_types":null}"#, "null_value"),
            (r#"{"batch":"b1","hash_types":["uci"]}"#, "malformed_json"),
        ] {
            let e = types(body).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, code), "{body}");
        }
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
