//! `POST /v1/keys/{label}/upload` (officer): the key's DSC as the EU gateway takes it for
//! upload — CMS SignedData with the certificate as content, signed by the country's upload key
//! in the HSM. Answers `{"label","kid","cms"}` with the DER in base64 (the gateway's
//! `application/cms-text` body).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Response, StatusCode};

use super::{blocking, key_error};
use crate::api::{ApiError, AppState, Body, Client, json};
use crate::keys::lifecycle::KeyError;

/// Signs the upload message.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, label: &str) -> Response<Body> {
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
        Ok::<_, KeyError>(serde_json::json!({ "label": label, "kid": kid, "cms": B64.encode(cms) }))
    })
    .await;
    match outcome {
        Ok(Ok(body)) => json(StatusCode::OK, &body),
        Ok(Err(e)) => key_error(e).into_response(),
        Err(e) => e.into_response(),
    }
}
