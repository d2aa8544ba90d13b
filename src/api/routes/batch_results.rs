//! `GET /v1/batches/{id}/results`: every result so far, as NDJSON, streamed from the store so a
//! 10,000-record batch never sits whole in memory.

use std::sync::Arc;

use http::Response;

use super::batch_status::not_found;
use super::batches_create::store_error;
use super::blocking;
use crate::api::ndjson::ndjson;
use crate::api::{AppState, Body, Client};

/// Streams the results.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, id: &str) -> Response<Body> {
    let (st, issuer, bid) = (state.clone(), client.issuer_id.clone(), id.to_owned());
    match blocking(move || st.store.results(&issuer, &bid)).await {
        Ok(Ok(Some(iter))) => ndjson(iter, "store: results"),
        Ok(Ok(None)) => not_found(),
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
