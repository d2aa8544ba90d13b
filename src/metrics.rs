//! Prometheus metrics: one process-wide registry of `hcert_*` series that the steps of a record's
//! way update as they happen (counters, histograms), plus gauges read from their sources when
//! `/metrics` is scraped. Metrics observe; they own nothing and decide nothing.
//!
//! No label ever carries personal data: kids, error codes, states, route templates, reasons.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every series of the appliance.
pub struct Metrics {
    registry: Registry,
    /// Signatures released, by kid.
    pub signatures: IntCounterVec,
    /// Records rejected, by error code.
    pub rejected: IntCounterVec,
    /// Batches by lifecycle event: accepted, done, deleted, expired.
    pub batches: IntCounterVec,
    /// DSC activations by officers.
    pub key_rotations: IntCounter,
    /// TLS handshakes refused, by reason.
    pub tls_handshake_failures: IntCounterVec,
    /// Connections closed before any request for who they came from: a refused PROXY
    /// protocol header, or a client certificate whose key is not pinned for its client.
    pub connections_refused: IntCounterVec,
    /// API requests by route template and status.
    pub http_requests: IntCounterVec,
    /// Audit entries appended.
    pub audit_entries: IntCounter,
    /// One HSM signing call (a chunk's records for one key).
    pub hsm_sign_duration: Histogram,
    /// Accepted → signed, per record.
    pub record_latency: Histogram,
    /// Records accepted and not yet resolved.
    pub queue_records: IntGauge,
    /// Age of the oldest pending record.
    pub queue_oldest_age: IntGauge,
    /// The last live test-sign-and-verify succeeded.
    pub hsm_up: IntGauge,
    /// HSM sessions: open, in_use.
    pub hsm_sessions: IntGaugeVec,
    /// HSM counters mirrored from the pool.
    pub hsm_faults: IntCounter,
    /// Re-initialisations after faults.
    pub hsm_reinits: IntCounter,
    /// Signatures from the HSM that failed software verification (discarded).
    pub hsm_bad_signatures: IntCounter,
    /// HSM calls that timed out.
    pub hsm_timeouts: IntCounter,
    /// notAfter of each published DSC.
    pub dsc_not_after: IntGaugeVec,
    /// End of each published DSC's usage period.
    pub dsc_usage_end: IntGaugeVec,
    /// 1 for active keys, 0 for retired ones.
    pub dsc_active: IntGaugeVec,
    /// `/readyz` would answer 200.
    pub ready: IntGauge,
    /// When the last audit checkpoint was written.
    pub audit_last_checkpoint: IntGauge,
    /// Records set aside as unreadable.
    pub store_corrupt_records: IntGauge,
    /// When this process started (Unix seconds): uptime under the hardened unit, where
    /// `ProcSubset=pid` hides `/proc/stat` and with it `process_start_time_seconds`.
    pub start_time: IntGauge,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram");
    r.register(Box::new(h.clone())).expect("unique metric name");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        // The definitions are constants: a failure here is a programming error caught by the
        // first test that touches metrics, never a runtime condition.
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Metrics {
            signatures: counter_vec(
                &r,
                "hcert_signatures_total",
                "Signatures released, by DSC kid.",
                &["kid"],
            ),
            rejected: counter_vec(
                &r,
                "hcert_records_rejected_total",
                "Records rejected, by error code.",
                &["code"],
            ),
            batches: counter_vec(
                &r,
                "hcert_batches_total",
                "Batches by lifecycle event (accepted, done, deleted, expired).",
                &["state"],
            ),
            key_rotations: counter(&r, "hcert_key_rotations_total", "DSC activations by security officers."),
            tls_handshake_failures: counter_vec(
                &r,
                "hcert_tls_handshake_failures_total",
                "TLS handshakes refused on the API listener, by reason.",
                &["reason"],
            ),
            connections_refused: counter_vec(
                &r,
                "hcert_connections_refused_total",
                "API connections refused for who they came from (PROXY protocol header, key pinning), by reason.",
                &["reason"],
            ),
            http_requests: counter_vec(
                &r,
                "hcert_http_requests_total",
                "API requests by route template and status.",
                &["route", "status"],
            ),
            audit_entries: counter(&r, "hcert_audit_entries_total", "Audit log entries appended."),
            hsm_sign_duration: histogram(
                &r,
                "hcert_hsm_sign_duration_seconds",
                "One HSM signing call (a chunk's records for one key), software verification included.",
                prometheus::exponential_buckets(0.001, 2.5, 11).expect("buckets"),
            ),
            record_latency: histogram(
                &r,
                "hcert_record_latency_seconds",
                "From batch accepted (to the second) to record signed.",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0],
            ),
            queue_records: gauge(
                &r,
                "hcert_queue_records",
                "Records accepted and not yet signed or rejected.",
            ),
            queue_oldest_age: gauge(
                &r,
                "hcert_queue_oldest_age_seconds",
                "Age of the oldest pending record (0 when the queue is empty).",
            ),
            hsm_up: gauge(
                &r,
                "hcert_hsm_up",
                "1 when the last live test-sign-and-verify through the HSM passed.",
            ),
            hsm_sessions: gauge_vec(
                &r,
                "hcert_hsm_sessions",
                "HSM signing sessions (open, in_use).",
                &["state"],
            ),
            hsm_faults: counter(
                &r,
                "hcert_hsm_faults_total",
                "HSM faults that triggered a re-initialisation.",
            ),
            hsm_reinits: counter(&r, "hcert_hsm_reinits_total", "Successful HSM re-initialisations."),
            hsm_bad_signatures: counter(
                &r,
                "hcert_hsm_bad_signatures_total",
                "Signatures from the HSM that failed software verification and were discarded.",
            ),
            hsm_timeouts: counter(&r, "hcert_hsm_timeouts_total", "HSM calls that exceeded their timeout."),
            dsc_not_after: gauge_vec(
                &r,
                "hcert_dsc_not_after_timestamp_seconds",
                "notAfter of each DSC in the trust list (Unix seconds).",
                &["kid"],
            ),
            dsc_usage_end: gauge_vec(
                &r,
                "hcert_dsc_usage_end_timestamp_seconds",
                "End of the private-key usage period of each DSC in the trust list (Unix seconds).",
                &["kid"],
            ),
            dsc_active: gauge_vec(
                &r,
                "hcert_dsc_active",
                "1 for an active DSC, 0 for a retired one.",
                &["kid"],
            ),
            ready: gauge(&r, "hcert_ready", "1 when /readyz would answer 200."),
            audit_last_checkpoint: gauge(
                &r,
                "hcert_audit_last_checkpoint_timestamp_seconds",
                "When the last signed audit checkpoint was written (Unix seconds).",
            ),
            store_corrupt_records: gauge(
                &r,
                "hcert_store_corrupt_records",
                "Stored records set aside as unreadable since start (non-zero: a bug or tampering).",
            ),
            start_time: gauge(&r, "hcert_start_time_seconds", "When the daemon started (Unix seconds)."),
            registry: r,
        }
    }

    /// Creates the series of known label values, so that dashboards and alerts see zeros rather
    /// than absent series before the first event.
    fn with_known_labels(self) -> Metrics {
        for state in ["accepted", "done", "deleted", "expired"] {
            self.batches.with_label_values(&[state]);
        }
        for reason in [
            "no_client_certificate",
            "untrusted_certificate",
            "bad_certificate",
            "protocol",
            "timeout",
            "peer_limit",
            "other",
        ] {
            self.tls_handshake_failures.with_label_values(&[reason]);
        }
        for reason in [
            "proxy_header_missing",
            "proxy_header_unlisted",
            "proxy_header_malformed",
            "proxy_header_timeout",
            "proxy_header_closed",
            "key_not_pinned",
        ] {
            self.connections_refused.with_label_values(&[reason]);
        }
        for state in ["open", "in_use"] {
            self.hsm_sessions.with_label_values(&[state]);
        }
        for code in ["no_key", "dsc_expiring", "encoding"] {
            self.rejected.with_label_values(&[code]);
        }
        self
    }

    /// The name of every `hcert_*` family, observed or not yet (histograms by their base name).
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 25] = [
            &self.signatures,
            &self.rejected,
            &self.batches,
            &self.key_rotations,
            &self.tls_handshake_failures,
            &self.connections_refused,
            &self.http_requests,
            &self.audit_entries,
            &self.hsm_sign_duration,
            &self.record_latency,
            &self.queue_records,
            &self.queue_oldest_age,
            &self.hsm_up,
            &self.hsm_sessions,
            &self.hsm_faults,
            &self.hsm_reinits,
            &self.hsm_bad_signatures,
            &self.hsm_timeouts,
            &self.dsc_not_after,
            &self.dsc_usage_end,
            &self.dsc_active,
            &self.ready,
            &self.audit_last_checkpoint,
            &self.store_corrupt_records,
            &self.start_time,
        ];
        let mut names: Vec<String> =
            collectors.iter().flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The text exposition of every series.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a malformed family, which the registry prevents.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics: encoding failed: {e}");
        }
        out
    }

    /// Brings a counter mirrored from a cumulative source up to `total`.
    pub fn mirror(counter: &IntCounter, total: u64) {
        let have = counter.get();
        if total > have {
            counter.inc_by(total - have);
        }
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new().with_known_labels());
    &METRICS
}

/// Seconds since the epoch, fractional.
pub fn now_secs() -> f64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_prefixed_and_rendered() {
        let m = get();
        m.signatures.with_label_values(&["a2lk"]).inc();
        m.hsm_sign_duration.observe(0.004);
        Metrics::mirror(&m.hsm_faults, 3);
        Metrics::mirror(&m.hsm_faults, 2); // never goes back
        assert_eq!(m.hsm_faults.get(), 3);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("hcert_signatures_total{kid=\"a2lk\"} 1"), "{text}");
        assert!(text.contains("hcert_hsm_sign_duration_seconds_bucket"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("hcert_") || line.starts_with("process_"), "{line}");
        }
    }
}
