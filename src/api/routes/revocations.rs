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

use super::{blocking, parse_json, read_json};
use crate::api::{ApiError, AppState, Body, Client, json};
use crate::audit::revocation::{self, HashType, Selection};
use crate::audit::{Event, KeyAction};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    #[serde(default)]
    uvcis: Option<Vec<String>>,
    #[serde(default)]
    batch: Option<String>,
    /// Which hashes to export (default: all three).
    #[serde(default)]
    hash_types: Option<Vec<HashType>>,
}

/// Most UVCIs in one request.
const MAX_UVCIS: usize = 100_000;

/// The batches, `{"batches":[{"batch":{…},"cms":"…"?}]}`.
pub async fn handle<B>(state: &Arc<AppState>, client: &Arc<Client>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body: RevocationRequest = match read_json(req, 8 << 20).await.and_then(|b| parse_json(&b)) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let types = match body.hash_types.as_deref() {
        None => HashType::ALL.to_vec(),
        Some([]) => {
            let m = "hash_types must name at least one of UCI, SIGNATURE, COUNTRYCODEUCI";
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m).into_response();
        }
        Some(t) => t.to_vec(),
    };
    let selection = match body {
        RevocationRequest { uvcis: Some(u), batch: None, .. } if !u.is_empty() && u.len() <= MAX_UVCIS => {
            Selection::Uvcis(u)
        }
        RevocationRequest { uvcis: None, batch: Some(b), .. } => Selection::Batch(b),
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("give either uvcis (1–{MAX_UVCIS}) or batch"),
            )
            .into_response();
        }
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
