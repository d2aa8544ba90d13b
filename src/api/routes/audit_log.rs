//! `GET /v1/audit?from=N` (officer): the audit log as NDJSON, one `{"seq","entry"}` a line with
//! the entry's stored bytes in base64, for `hcert-signer audit verify` against a running
//! appliance; and `GET /v1/audit/key`: the audit key's public half, PEM.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Response, StatusCode};

use super::text;
use crate::api::ndjson::ndjson;
use crate::api::{ApiError, AppState, Body};

/// Streams the log from `from` (default: the first entry).
pub async fn handle(state: &Arc<AppState>, query: Option<&str>) -> Response<Body> {
    let from = match query.unwrap_or("").split('&').filter(|p| !p.is_empty()).try_fold(1u64, |_, p| {
        match p.split_once('=') {
            Some(("from", v)) => v.parse::<u64>().map_err(|_| "from must be a sequence number"),
            _ => Err("the only query parameter is from"),
        }
    }) {
        Ok(f) => f,
        Err(m) => return ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m).into_response(),
    };
    let lines = state.store.audit_entries(from).map(|item| {
        item.map(|(seq, stored)| {
            serde_json::json!({ "seq": seq, "entry": B64.encode(&stored) }).to_string().into_bytes()
        })
    });
    ndjson(lines, "audit")
}

/// The audit key's public half.
pub fn key(state: &Arc<AppState>) -> Response<Body> {
    text(StatusCode::OK, "application/x-pem-file", state.audit.public_pem())
}
