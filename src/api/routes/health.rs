//! `GET /healthz` (the process answers) and `GET /readyz` (it can sign now: the HSM passed a
//! live test-sign-and-verify recently, the store is open, and for every certificate type an
//! active DSC covers now and still will after the readiness horizon).
//!
//! Free space below the store's reserve is a *warning*, not a problem: `/readyz` stays 200 with
//! `"warnings"` saying so. Readiness means "can sign now", and such a node still can — it signs
//! the batches it accepted into the reserve and serves their status and results (which issuers
//! fetch from this node, at the 202's `Location`) and synchronous `/v1/sign`; only new batches
//! get 503 `store_full`, and it accepts them again as soon as space is freed. A red readiness
//! would take it out of the load balancer for all of that, and with every node low on space
//! would leave nothing in rotation. Under the store's lower floor signing pauses, and that is
//! a problem (503) until space is freed; so is a store that *stopped* (a write failed: ENOSPC,
//! read-only, I/O error), until the daemon is restarted.

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
pub struct Readiness(Mutex<Option<(Instant, Verdict)>>);

/// What stands between the appliance and signing now (`problems`, empty when ready), and what
/// limits it without stopping it (`warnings`).
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Readiness is red while any.
    pub problems: Vec<String>,
    /// Reported with a 200 (e.g. new batches refused for lack of space).
    pub warnings: Vec<String>,
}

/// Liveness: the process runs and answers.
pub fn healthz() -> Response<Body> {
    json(StatusCode::OK, &serde_json::json!({"status": "alive"}))
}

/// Readiness, with what is wrong when it is not (and warnings either way).
pub async fn readyz(state: &Arc<AppState>) -> Response<Body> {
    let Verdict { problems, warnings } = verdict(state).await;
    let mut body = if problems.is_empty() {
        serde_json::json!({"ready": true})
    } else {
        serde_json::json!({"ready": false, "problems": problems})
    };
    if !warnings.is_empty() {
        body["warnings"] = serde_json::json!(warnings);
    }
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, &body)
}

/// What stands between the appliance and signing now (empty: ready), cached for [`CACHE`];
/// also sets the `hcert_ready` and `hcert_hsm_up` gauges.
pub async fn evaluate(state: &Arc<AppState>) -> Vec<String> {
    verdict(state).await.problems
}

/// [`evaluate`] with the warnings.
pub async fn verdict(state: &Arc<AppState>) -> Verdict {
    let cached = state.readiness.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match cached {
        Some((at, verdict)) if at.elapsed() < CACHE => verdict,
        _ => {
            let st = state.clone();
            let verdict = tokio::task::spawn_blocking(move || Verdict {
                problems: check(&st),
                warnings: warnings(&st),
            })
            .await
            .unwrap_or_else(|_| Verdict {
                problems: vec!["the readiness check failed".into()],
                warnings: Vec::new(),
            });
            *state.readiness.0.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), verdict.clone()));
            crate::metrics::get().ready.set(i64::from(verdict.problems.is_empty()));
            verdict
        }
    }
}

/// What limits the appliance without keeping it from signing (blocking: a `statvfs`).
pub fn warnings(state: &AppState) -> Vec<String> {
    match state.store.check_free_space() {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("store: {e}")],
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
