//! `GET /v1/audit?from=N` (officer): the audit log as NDJSON, one `{"seq","entry"}` a line with
//! the entry's stored bytes in base64, for `hcert-signer audit verify` against a running
//! appliance; and `GET /v1/audit/key`: the audit key's public half, PEM.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::channel::Channel;

use super::text;
use crate::api::{ApiError, AppState, Body};

/// Bytes gathered before a frame is sent.
const FRAME_BYTES: usize = 64 * 1024;

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
    let (mut tx, body) = Channel::<Bytes>::new(4);
    let rt = tokio::runtime::Handle::current();
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::with_capacity(FRAME_BYTES + 4096);
        for item in store.audit_entries(from) {
            let Ok((seq, stored)) = item else {
                log::error!("audit: reading the log failed mid-stream");
                return;
            };
            let line = serde_json::json!({ "seq": seq, "entry": B64.encode(&stored) });
            buf.extend_from_slice(line.to_string().as_bytes());
            buf.extend_from_slice(b"\n");
            if buf.len() >= FRAME_BYTES && rt.block_on(tx.send_data(buf.split().freeze())).is_err() {
                return;
            }
        }
        if !buf.is_empty() {
            let _ = rt.block_on(tx.send_data(buf.freeze()));
        }
    });
    let mut r = Response::new(body.boxed());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
    r
}

/// The audit key's public half.
pub fn key(state: &Arc<AppState>) -> Response<Body> {
    text(StatusCode::OK, "application/x-pem-file", state.audit.public_pem())
}
