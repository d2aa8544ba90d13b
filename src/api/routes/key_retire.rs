//! `POST /v1/keys/{label}/retire` (officer): takes a key out of service at once; records in
//! flight finish with the key set they started with, later ones use the remaining keys. The
//! DSC stays in the trust list until it expires.

use std::sync::Arc;

use http::Response;

use super::key_action;
use crate::api::{AppState, Body, Client};

/// Retires; 200 with the key's view.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, label: &str) -> Response<Body> {
    key_action(state, client, label, |keys, label, officer| keys.retire(label, officer)).await
}
