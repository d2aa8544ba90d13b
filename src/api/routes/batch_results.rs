//! `GET /v1/batches/{id}/results`: every result so far, as NDJSON, streamed from the store so a
//! 10,000-record batch never sits whole in memory.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::channel::Channel;

use super::batch_status::not_found;
use super::batches_create::store_error;
use super::blocking;
use crate::api::{AppState, Body, Client};

/// Bytes gathered before a frame is sent: fewer, larger writes.
const FRAME_BYTES: usize = 64 * 1024;

/// Streams the results.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, id: &str) -> Response<Body> {
    let (st, issuer, bid) = (state.clone(), client.issuer_id.clone(), id.to_owned());
    let iter = match blocking(move || st.store.results(&issuer, &bid)).await {
        Ok(Ok(Some(iter))) => iter,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => return store_error(e).into_response(),
        Err(e) => return e.into_response(),
    };
    let (mut tx, body) = Channel::<Bytes>::new(4);
    let rt = tokio::runtime::Handle::current();
    // The iterator reads sled, which blocks; the bounded channel holds it to the client's pace.
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::with_capacity(FRAME_BYTES + 4096);
        for item in iter {
            match item {
                Ok(line) => {
                    buf.extend_from_slice(&line);
                    buf.extend_from_slice(b"\n");
                }
                Err(e) => {
                    // The status line has gone; ending the body early is the only signal left,
                    // and the client sees fewer lines than `signed + rejected`.
                    log::error!("store: reading results failed mid-stream: {e}");
                    return;
                }
            }
            if buf.len() >= FRAME_BYTES && rt.block_on(tx.send_data(buf.split().freeze())).is_err() {
                return; // the client went away
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
