//! `GET /v1/batches/{id}`: where a batch stands. Another issuer's batch does not exist here.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::batches_create::store_error;
use super::blocking;
use crate::api::{AppState, Body, Client, error, json};

/// The batch's state and counters.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, id: &str) -> Response<Body> {
    let (st, issuer, id) = (state.clone(), client.issuer_id.clone(), id.to_owned());
    match blocking(move || st.store.batch(&issuer, &id)).await {
        Ok(Ok(Some(b))) => json(
            StatusCode::OK,
            &serde_json::json!({
                "batch_id": b.batch_id,
                "state": b.state.as_str(),
                "total": b.total,
                "signed": b.signed,
                "rejected": b.rejected,
            }),
        ),
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The 404 for a batch that is missing or belongs to another issuer (indistinguishable).
pub fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "no such batch")
}
