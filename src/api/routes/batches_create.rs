//! `POST /v1/batches`: accept a batch, store it durably, answer 202 with where to find it.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};

use super::{blocking, parse_batch, read_json};
use crate::api::{ApiError, AppState, Body, Client, json};
use crate::store::StoreError;

/// Stores the batch and wakes the pipeline. 202 only once the batch is flushed to disk.
pub async fn handle<B>(state: &Arc<AppState>, client: &Arc<Client>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match submit(state, client, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn submit<B>(
    state: &Arc<AppState>,
    client: &Arc<Client>,
    req: Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body = read_json(req, state.limits.max_body_bytes).await?;
    let st = state.clone();
    let issuer = client.issuer_id.clone();
    // Parsing megabytes of JSON, the commit and (in a cluster) counting the queue all block:
    // keep them off the reactor.
    let submitted = blocking(move || {
        // Backpressure: refuse new work rather than grow without bound.
        if st.store.queued_records() >= st.limits.max_queued_records {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the signing queue is full; retry later",
            )
            .retry_after(10));
        }
        let req = parse_batch(&body, st.limits.max_batch_records)?;
        let records = req.new_records();
        let now = crate::clock::now_unix();
        st.store
            .submit(&issuer, req.idempotency_key.as_ref().map(String::as_str), &records, now)
            .map_err(store_error)
    })
    .await??;
    state.waker.wake();
    if submitted.created {
        crate::metrics::get().batches.with_label_values(&["accepted"]).inc();
        log::info!(
            batch_id = submitted.batch_id.as_str(), records = submitted.total, client = client.name.as_str();
            "batch accepted"
        );
    }
    // A replay answers the batch as it stands, not as it was accepted.
    let status = &submitted.status;
    let body = serde_json::json!({
        "batch_id": submitted.batch_id,
        "state": status.state.as_str(),
        "records": submitted.total,
        "signed": status.signed,
        "rejected": status.rejected,
        "replayed": !submitted.created,
    });
    let mut r = json(StatusCode::ACCEPTED, &body);
    let location = format!("{}/v1/batches/{}", state.public_url, submitted.batch_id);
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// A store failure as an HTTP answer: a full or read-only disk is an outage (503), the rest 500.
/// Free space below the reserve (or the floor) is `store_full`: the store goes on and accepts
/// batches again once space is freed, no restart. A store that stopped is `store_unavailable`.
pub fn store_error(e: StoreError) -> ApiError {
    match &e {
        StoreError::IdempotencyConflict => {
            return ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string());
        }
        StoreError::BatchDeleted { .. } => {
            return ApiError::new(StatusCode::GONE, "batch_deleted", e.to_string());
        }
        // The HSM cannot wrap a new batch's data key (away, re-initialising) and the stock
        // made ahead is used up: an outage of the HSM, not of the store.
        StoreError::Seal(s) if s.is_transient() => {
            log::warn!("store: {e}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hsm_unavailable",
                format!("cannot accept a batch now: {e}"),
            )
            .retry_after(5);
        }
        _ => {}
    }
    if let StoreError::BelowReserve { .. } | StoreError::BelowFloor { .. } = e {
        // Logged by the store (a refused batch) or the pipeline (paused signing).
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_full",
            format!("new batches are refused: {e}"),
        )
        .retry_after(60);
    }
    log::error!("store: {e}");
    if e.is_unavailable() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store cannot write: {e}"),
        )
        // A database away is usually back within seconds (a restart, a failover).
        .retry_after(if matches!(e, StoreError::Unreachable(_)) { 5 } else { 30 })
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", "the store failed")
    }
}
