//! `GET /v1/trust-list`: every DSC this appliance signs or has signed with (active or retired)
//! that has not expired, as `{"<kid base64>": "<DSC DER base64>"}`.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{blocking, key_error, text};
use crate::api::{AppState, Body};

/// The trust list.
pub async fn handle(state: &Arc<AppState>) -> Response<Body> {
    let st = state.clone();
    match blocking(move || st.keys.trust_list()).await {
        Ok(Ok(list)) => text(StatusCode::OK, "application/json", list.to_json()),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
