//! `POST /v1/keys` `{"label"}` (officer): generates a new P-256 key pair inside the HSM —
//! sensitive, never extractable, sign-only.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::{blocking, key_error, parse_json, read_json};
use crate::api::{AppState, Body, Client, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    label: String,
}

/// Generates the key; 201 with the key's view.
pub async fn handle<B>(state: &Arc<AppState>, client: &Arc<Client>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let body: CreateKey = match read_json(req, 4096).await.and_then(|b| parse_json(&b)) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (st, officer) = (state.clone(), client.name.clone());
    match blocking(move || st.keys.generate(&body.label, &officer)).await {
        Ok(Ok(view)) => json(StatusCode::CREATED, &view),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
