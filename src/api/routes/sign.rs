//! `POST /v1/sign`: small batches answered synchronously, without the queue.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{blocking, parse_batch, read_json};
use crate::api::{ApiError, AppState, Body, json};

/// Signs the records now and returns `{"results":[…]}` in request order.
pub async fn handle<B>(state: &Arc<AppState>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body = match read_json(req, state.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let st = state.clone();
    let outcome = blocking(move || {
        let req = parse_batch(&body, st.limits.max_sync_records)?;
        if req.idempotency_key.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "idempotency_key belongs to POST /v1/batches; /v1/sign keeps nothing",
            ));
        }
        let inputs = req.new_records();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        st.service.signer().sign_chunk(&inputs, now).map_err(|e| {
            log::warn!("hsm: synchronous signing failed: {e}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "hsm_unavailable", format!("cannot sign now: {e}"))
                .retry_after(5)
        })
    })
    .await;
    match outcome {
        Ok(Ok(results)) => json(StatusCode::OK, &serde_json::json!({ "results": results })),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}
