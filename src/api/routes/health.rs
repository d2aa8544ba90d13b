//! `GET /healthz` (the process answers) and `GET /readyz` (it can sign now: the HSM passed a
//! live test-sign-and-verify recently, the store is open, a DSC in service covers now).

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
    let cached = state.readiness.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let problems = match cached {
        Some((at, problems)) if at.elapsed() < CACHE => problems,
        _ => {
            let st = state.clone();
            let problems = tokio::task::spawn_blocking(move || check(&st))
                .await
                .unwrap_or_else(|_| vec!["the readiness check failed".into()]);
            *state.readiness.0.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), problems.clone()));
            problems
        }
    };
    if problems.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"ready": true}))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"ready": false, "problems": problems}))
    }
}

fn check(state: &AppState) -> Vec<String> {
    let mut problems = Vec::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = state.store.check() {
        problems.push(format!("store: {e}"));
    }
    let keys = state.service.keyring.snapshot();
    // Test-sign once with each key that would sign some certificate type now.
    let mut labels: Vec<String> = Vec::new();
    for kind in [CertificateType::Vaccination, CertificateType::Test, CertificateType::Recovery] {
        match crate::keys::select(&keys, kind, now) {
            Ok(k) if !labels.contains(&k.label) => labels.push(k.label),
            Ok(_) => {}
            Err(e) => problems.push(format!("keys: {e}")),
        }
    }
    for label in &labels {
        if let Err(e) = state.service.hsm.check_key(label) {
            problems.push(format!("hsm: test signature with {label:?} failed: {e}"));
        }
    }
    problems
}
