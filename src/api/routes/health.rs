//! `GET /healthz` (the process answers) and `GET /readyz` (it can sign now: the HSM passed a
//! live test-sign-and-verify recently, the store is open, and for every certificate type an
//! active DSC covers now and still will after the readiness horizon).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};

use crate::api::{AppState, Body, json};
use crate::hcert::CertificateType;

/// How long a readiness verdict is reused: a live HSM test-sign per probe would be load.
pub const CACHE: Duration = Duration::from_secs(3);

/// The cached readiness verdict.
#[derive(Default)]
pub struct Readiness(Mutex<Option<(Instant, Vec<String>)>>);

/// Liveness: the process runs and answers.
pub fn healthz() -> Response<Body> {
    json(StatusCode::OK, &serde_json::json!({"status": "alive"}))
}

/// Readiness, with what is wrong when it is not.
pub async fn readyz(state: &Arc<AppState>) -> Response<Body> {
    let problems = evaluate(state).await;
    if problems.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"ready": true}))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"ready": false, "problems": problems}))
    }
}

/// What stands between the appliance and signing now (empty: ready), cached for [`CACHE`];
/// also sets the `hcert_ready` and `hcert_hsm_up` gauges.
pub async fn evaluate(state: &Arc<AppState>) -> Vec<String> {
    let cached = state.readiness.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match cached {
        Some((at, problems)) if at.elapsed() < CACHE => problems,
        _ => {
            let st = state.clone();
            let problems = tokio::task::spawn_blocking(move || check(&st))
                .await
                .unwrap_or_else(|_| vec!["the readiness check failed".into()]);
            *state.readiness.0.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), problems.clone()));
            crate::metrics::get().ready.set(i64::from(problems.is_empty()));
            problems
        }
    }
}

/// Runs the checks (blocking: the store and a live HSM signature).
pub fn check(state: &AppState) -> Vec<String> {
    let mut problems = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = state.store.check() {
        problems.push(format!("store: {e}"));
    }
    let keys = state.service.keyring.snapshot();
    // Test-sign once with each key that would sign some certificate type now.
    let mut labels: Vec<String> = Vec::new();
    let horizon = state.readiness_horizon_secs;
    for kind in [CertificateType::Vaccination, CertificateType::Test, CertificateType::Recovery] {
        match crate::keys::select(&keys, kind, now) {
            Ok(k) => {
                // Ready only if some key will still sign this type after the horizon.
                if horizon > 0 && crate::keys::select(&keys, kind, now + horizon).is_err() {
                    problems.push(format!(
                        "keys: no active DSC may sign {} certificates {} hours from now (the readiness horizon): rotate the DSC",
                        kind.name(),
                        horizon / 3600
                    ));
                }
                if !labels.contains(&k.label) {
                    labels.push(k.label);
                }
            }
            Err(e) => problems.push(format!("keys: {e}")),
        }
    }
    let mut hsm_up = !labels.is_empty();
    for label in &labels {
        if let Err(e) = state.service.hsm.check_key(label) {
            hsm_up = false;
            problems.push(format!("hsm: test signature with {label:?} failed: {e}"));
        }
    }
    if labels.is_empty() {
        // No DSC to test with: the audit key proves the HSM signs.
        match state.service.hsm.check_key(state.audit.label()) {
            Ok(()) => hsm_up = true,
            Err(e) => problems.push(format!("hsm: test signature failed: {e}")),
        }
    }
    crate::metrics::get().hsm_up.set(i64::from(hsm_up));
    problems
}
