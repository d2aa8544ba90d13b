//! `GET /v1/cscas` and `POST /v1/cscas` (officer): the country's CSCAs a DSC may chain to, and
//! adding one, which takes two different officers (200 once trusted, 202 while it waits for a
//! second officer).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{blocking, key_error, read_body};
use crate::api::{ApiError, AppState, Body, Client, json};

/// Largest CSCA certificate accepted.
const MAX_PEM: usize = 64 * 1024;

/// The CSCAs: `{"cscas":[…]}`, trusted first, then pending additions.
pub async fn list(state: &Arc<AppState>) -> Response<Body> {
    let st = state.clone();
    match blocking(move || st.keys.cscas()).await {
        Ok(Ok(cscas)) => json(StatusCode::OK, &serde_json::json!({ "cscas": cscas })),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Records the officer's request to trust the CSCA in the body (PEM).
pub async fn add<B>(state: &Arc<AppState>, client: &Arc<Client>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let pem = match read_body(req, MAX_PEM).await.and_then(|b| {
        String::from_utf8(b.to_vec()).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_certificate", "send the CSCA certificate as PEM text")
        })
    }) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (st, officer) = (state.clone(), client.name.clone());
    match blocking(move || st.keys.add_csca(&pem, &officer)).await {
        Ok(Ok(view)) => {
            json(if view.state == "pending" { StatusCode::ACCEPTED } else { StatusCode::OK }, &view)
        }
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
