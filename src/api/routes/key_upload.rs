//! `POST /v1/keys/{label}/upload` (officer): the key's DSC as the EU gateway takes it for
//! upload — CMS SignedData with the certificate as content, signed by the country's upload key
//! in the HSM. The gateway's `POST /signerCertificate` takes it as `application/cms`: the DER in
//! base64. Answers `{"label","kid","cms","media_type"}`, or, to `Accept: application/cms`, that
//! base64 body itself, ready to send on.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Response, StatusCode};

use super::{blocking, key_error};
use crate::api::{ApiError, AppState, Body, Client, json};
use crate::keys::lifecycle::KeyError;

/// The gateway's media type for a CMS upload (base64 text of the DER).
pub const CMS: &str = "application/cms";

/// Signs the upload message; `bare` answers the gateway body itself instead of JSON.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, label: &str, bare: bool) -> Response<Body> {
    let Some(upload) = state.upload.clone() else {
        return ApiError::new(
            StatusCode::CONFLICT,
            "no_upload_key",
            "no upload key is configured ([signing.upload] in config.toml)",
        )
        .into_response();
    };
    let (st, officer, label) = (state.clone(), client.name.clone(), label.to_owned());
    let outcome = blocking(move || {
        let der = st.keys.certificate(&label)?;
        let cms =
            crate::pki::cms::sign_upload(&st.service.hsm, &upload.label, &upload.certificate_der, &der)?;
        let kid = B64.encode(crate::hcert::cose::kid(&der));
        st.keys.record_upload(&label, &officer, &format!("DSC upload signed by {:?}", upload.label))?;
        Ok::<_, KeyError>(serde_json::json!({
            "label": label, "kid": kid, "cms": B64.encode(cms), "media_type": CMS,
        }))
    })
    .await;
    match outcome {
        Ok(Ok(body)) if bare => {
            let cms = body["cms"].as_str().unwrap_or_default().to_owned();
            crate::api::typed(StatusCode::OK, CMS, crate::api::full(cms))
        }
        Ok(Ok(body)) => json(StatusCode::OK, &body),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
