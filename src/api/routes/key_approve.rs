//! `POST /v1/keys/{label}/approve` (officer): one officer's approval of a certified key; the
//! second approval by a different officer activates it in the running daemon.

use std::sync::Arc;

use http::Response;

use super::key_action;
use crate::api::{AppState, Body, Client};

/// Approves; 200 with the key's view (`state` says whether it is now active).
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, label: &str) -> Response<Body> {
    key_action(state, client, label, |keys, label, officer| keys.approve(label, officer)).await
}
