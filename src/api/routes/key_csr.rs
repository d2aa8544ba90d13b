//! `POST /v1/keys/{label}/csr` `{"subject"}` (officer): a PKCS#10 request for the country's
//! CSCA, signed inside the HSM by the key; answered as PEM. The label may also be the gateway
//! upload key's (`[signing.upload]`), whose certificate the country's CA issues the same way.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::{blocking, key_error, parse_json, read_json, text};
use crate::api::{AppState, Body, Client};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CsrRequest {
    subject: String,
}

/// The CSR, `application/pkcs10` PEM.
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
    let body: CsrRequest = match read_json(req, 4096).await.and_then(|b| parse_json(&b)) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (st, officer, label) = (state.clone(), client.name.clone(), label.to_owned());
    let upload = state.upload.as_ref().is_some_and(|u| u.label == label);
    let made = blocking(move || {
        if upload {
            st.keys.upload_key_csr(&label, &body.subject, &officer)
        } else {
            st.keys.csr(&label, &body.subject, &officer)
        }
    });
    match made.await {
        Ok(Ok(pem)) => text(StatusCode::OK, "application/pkcs10", pem),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
