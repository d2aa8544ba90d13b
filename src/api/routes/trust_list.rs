//! `GET /v1/trust-list`: the DSCs a verifier needs for what this appliance signed.

use std::sync::Arc;

use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::api::{AppState, Body};
use crate::hcert::TrustList;

/// Every DSC in service that has not expired.
pub fn handle(state: &Arc<AppState>) -> Response<Body> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut list = TrustList::new();
    for key in state.service.keyring.all().iter().filter(|k| k.dsc.not_after > now) {
        list.insert((*key.dsc).clone());
    }
    let mut r = Response::new(Full::new(bytes::Bytes::from(list.to_json())).boxed());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}
