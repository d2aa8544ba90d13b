//! `POST /v1/keys/{label}/retire` (officer): takes a key out of service; records in flight
//! finish with the key set they started with, later ones use the remaining keys. The DSC stays
//! in the trust list until it expires.
//!
//! One officer retires a key that other active keys cover for every certificate type; the last
//! cover of a type needs a second, different officer (200 once retired, 202 while waiting).

use std::sync::Arc;

use http::{Response, StatusCode};

use super::key_action_status;
use crate::api::{AppState, Body, Client};

/// Retires: 200 with the key's view once retired; 202 with the view (still `active`,
/// `retirement_approvals_missing` ≥ 1) when the retirement waits for another officer.
pub async fn handle(state: &Arc<AppState>, client: &Arc<Client>, label: &str) -> Response<Body> {
    key_action_status(
        state,
        client,
        label,
        |keys, label, officer| keys.retire(label, officer),
        |view| {
            if view.retirement_approvals_missing.is_some_and(|n| n > 0) {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            }
        },
    )
    .await
}
