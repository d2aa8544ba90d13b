//! `GET /v1/keys` (officer): every Document Signer key, its state, validity, usage period and
//! approvals.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{blocking, key_error};
use crate::api::{AppState, Body, json};

/// The keys.
pub async fn handle(state: &Arc<AppState>) -> Response<Body> {
    let st = state.clone();
    match blocking(move || st.keys.list()).await {
        Ok(Ok(keys)) => json(StatusCode::OK, &serde_json::json!({ "keys": keys })),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
