//! `DELETE /v1/batches/{id}`: the issuer has what it needs; payloads and results are purged.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::batch_status::not_found;
use super::batches_create::store_error;
use super::blocking;
use crate::api::{AppState, Body, Client, json};

/// Purges the batch.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, id: &str) -> Response<Body> {
    let (st, issuer, bid) = (state.clone(), client.issuer_id.clone(), id.to_owned());
    match blocking(move || st.store.delete(&issuer, &bid)).await {
        Ok(Ok(true)) => {
            crate::metrics::get().batches.with_label_values(&["deleted"]).inc();
            json(StatusCode::OK, &serde_json::json!({"batch_id": id, "deleted": true}))
        }
        Ok(Ok(false)) => not_found(),
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
