//! `POST /v1/sign`: small batches answered synchronously, without the queue.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{blocking, parse_batch, read_json};
use crate::api::{ApiError, AppState, Body, Client, json};
use crate::audit::Event;

/// Signs the records now and returns `{"results":[…]}` in request order. The signatures are in
/// the audit log (batch `sync`) before the answer leaves.
pub async fn handle<B>(state: &Arc<AppState>, client: &Arc<Client>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body = match read_json(req, state.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (st, issuer) = (state.clone(), client.issuer_id.clone());
    let outcome = blocking(move || {
        let req = parse_batch(&body, st.limits.max_sync_records)?;
        if req.idempotency_key.as_ref().is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "idempotency_key belongs to POST /v1/batches; /v1/sign keeps nothing",
            ));
        }
        let inputs = req.new_records();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = st.service.signer().sign_chunk(&inputs, now).map_err(|e| {
            log::warn!("hsm: synchronous signing failed: {e}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", format!("cannot sign now: {e}"))
                .retry_after(5)
        })?;
        let records: Vec<_> = signed.iter().filter_map(|s| s.audit.clone()).collect();
        if !records.is_empty() {
            // No signature leaves without its audit entry.
            st.store
                .audit_append(vec![Event::Signed { batch: "sync".into(), client: issuer, records }])
                .map_err(super::batches_create::store_error)?;
        }
        let m = crate::metrics::get();
        for s in &signed {
            match (&s.audit, &s.result) {
                (Some(fact), _) => m.signatures.with_label_values(&[fact.kid.as_str()]).inc(),
                (None, crate::store::RecordResult::Rejected { error, .. }) => {
                    m.rejected.with_label_values(&[error.code.as_str()]).inc()
                }
                (None, _) => {}
            }
        }
        Ok(signed.into_iter().map(|s| s.result).collect::<Vec<_>>())
    })
    .await;
    match outcome {
        Ok(Ok(results)) => json(StatusCode::OK, &serde_json::json!({ "results": results })),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}
