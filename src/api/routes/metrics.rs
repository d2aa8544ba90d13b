//! `GET /metrics` on the operations listener: the Prometheus text format. Counters and
//! histograms are kept current by the code they observe; the gauges are read here from their
//! sources (queue, HSM pool, keys, readiness), so a scrape always shows the present.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{health, text};
use crate::api::{AppState, Body};
use crate::metrics::Metrics;

/// The exposition.
pub async fn handle(state: &Arc<AppState>) -> Response<Body> {
    // Readiness (cached a few seconds) sets hcert_hsm_up and hcert_ready.
    health::evaluate(state).await;
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || refresh(&st)).await;
    let body = String::from_utf8_lossy(&crate::metrics::get().render()).into_owned();
    text(StatusCode::OK, "text/plain; version=0.0.4", body)
}

fn refresh(state: &AppState) {
    let m = crate::metrics::get();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    m.queue_records.set(i64::try_from(state.store.queued_records()).unwrap_or(i64::MAX));
    m.queue_oldest_age.set(state.store.oldest_pending_age(now).ok().flatten().unwrap_or(0));
    m.store_corrupt_records.set(i64::try_from(state.store.corrupt_records()).unwrap_or(i64::MAX));
    let stats = state.service.hsm.stats();
    m.hsm_sessions.with_label_values(&["open"]).set(stats.backend.sessions_open as i64);
    m.hsm_sessions.with_label_values(&["in_use"]).set(stats.backend.sessions_in_use as i64);
    Metrics::mirror(&m.hsm_faults, stats.backend.faults);
    Metrics::mirror(&m.hsm_reinits, stats.backend.reinits);
    Metrics::mirror(&m.hsm_bad_signatures, stats.bad_signatures);
    Metrics::mirror(&m.hsm_timeouts, stats.backend.timeouts);
    match state.keys.published() {
        Ok(keys) => {
            // Reset first: an expired DSC's series disappears instead of staying frozen.
            m.dsc_not_after.reset();
            m.dsc_usage_end.reset();
            m.dsc_active.reset();
            for k in keys {
                m.dsc_not_after.with_label_values(&[k.kid.as_str()]).set(k.not_after);
                m.dsc_usage_end.with_label_values(&[k.kid.as_str()]).set(k.usage_end);
                m.dsc_active.with_label_values(&[k.kid.as_str()]).set(i64::from(k.active));
            }
        }
        Err(e) => log::error!("metrics: cannot read the keys: {e}"),
    }
}
