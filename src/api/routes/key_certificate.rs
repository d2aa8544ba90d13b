//! `PUT /v1/keys/{label}/certificate` (officer): imports the DSC certificate (PEM body) the CSCA
//! issued for the key; `?usage_days=N` sets the key's own private-key usage period. Answers the
//! kid. A certificate for another key, of another country or already unusable is refused.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};

use super::{blocking, key_error, read_body};
use crate::api::{ApiError, AppState, Body, Client, json};

/// Largest certificate accepted.
const MAX_PEM: usize = 64 * 1024;

/// Imports; 200 with `{"label","kid","state",…}`.
pub async fn handle<B>(
    state: &Arc<AppState>,
    client: &Arc<Client>,
    label: &str,
    req: Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let usage_days = match usage_days(req.uri().query()) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let pem = match read_body(req, MAX_PEM).await.and_then(|b| {
        String::from_utf8(b.to_vec()).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_certificate", "send the certificate as PEM text")
        })
    }) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (st, officer, label) = (state.clone(), client.name.clone(), label.to_owned());
    match blocking(move || st.keys.import_certificate(&label, &pem, usage_days, &officer)).await {
        Ok(Ok(view)) => json(StatusCode::OK, &view),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}

fn usage_days(query: Option<&str>) -> Result<Option<u32>, ApiError> {
    let mut out = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("usage_days", v)) => {
                out = Some(v.parse::<u32>().map_err(|_| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", "usage_days must be a number of days")
                })?);
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    "the only query parameter is usage_days",
                ));
            }
        }
    }
    Ok(out)
}
