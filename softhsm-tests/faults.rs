//! HSM faults injected under load, through the whole signing path (store → pipeline → pool →
//! SoftHSM): the token's files removed and restored, the module finalised behind the pool's back,
//! every session closed. Each fault is classified and the pool re-initialises by itself; at the
//! end every accepted record has exactly one result, every result is signed and verifies, and
//! the audit log holds every signature.

mod common;
mod daemon;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use common::{module, wait_for, with_fresh_token};
use cryptoki::context::Pkcs11;
use hcert_signer::config::ExpBeyondDsc;
use hcert_signer::hcert::TrustList;
use hcert_signer::hcert::uvci::UvciGenerator;
use hcert_signer::hcert::validate::Policy;
use hcert_signer::hcert::valuesets::ValueSets;
use hcert_signer::hcert::verify::Verifier;
use hcert_signer::hsm::pkcs11::Pkcs11Backend;
use hcert_signer::hsm::{Backend, BackendStats, Error, Hsm, KeyInfo};
use hcert_signer::keys::{ActiveKey, Keyring};
use hcert_signer::pipeline::{Pipeline, PipelineConfig, SigningService, SigningSettings};
use hcert_signer::pki::Dsc;
use hcert_signer::pki::dev::DevCa;
use hcert_signer::store::{NewRecord, Store, StoreOptions};

/// The real PKCS#11 backend behind a gate, so a fault can be injected while no PKCS#11 call is
/// in flight (finalising or closing sessions under a running call is undefined behaviour in
/// PKCS#11 — a real device fault arrives between calls or fails the call, which is what the
/// pool must survive).
struct Gated {
    inner: Pkcs11Backend,
    gate: Arc<RwLock<()>>,
}

impl Gated {
    fn pass(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for Gated {
    fn name(&self) -> &'static str {
        "pkcs11-gated"
    }
    fn generate_key(&self, label: &str) -> Result<KeyInfo, Error> {
        let _g = self.pass();
        self.inner.generate_key(label)
    }
    fn find_key(&self, label: &str) -> Result<KeyInfo, Error> {
        let _g = self.pass();
        self.inner.find_key(label)
    }
    fn list_keys(&self) -> Result<Vec<KeyInfo>, Error> {
        let _g = self.pass();
        self.inner.list_keys()
    }
    fn sign_digests(&self, label: &str, digests: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, Error> {
        let _g = self.pass();
        self.inner.sign_digests(label, digests)
    }
    fn health(&self) -> Result<(), Error> {
        let _g = self.pass();
        self.inner.health()
    }
    fn report_fault(&self, what: &str) {
        self.inner.report_fault(what)
    }
    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }
    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}

// Enough that signing is still under way when the last fault lands (at 12 batches the
// pipeline, no longer held back by the store, sometimes finished first).
const BATCHES: usize = 36;
const PER_BATCH: usize = 1000;

#[test]
fn hsm_faults_under_load_lose_nothing_and_release_no_bad_signature() {
    with_fresh_token("hsm_faults_under_load_lose_nothing_and_release_no_bad_signature", |token| {
        let gate = Arc::new(RwLock::new(()));
        let backend = Pkcs11Backend::open(&token.config()).expect("open the token");
        let hsm = Hsm::from_backend(Gated { inner: backend, gate: gate.clone() });
        hsm.generate_key("dsc-faults").expect("generate");
        let now = time::OffsetDateTime::now_utc();
        let csca = DevCa::new("VN", "Ministry of Health (test)", "CSCA VN TEST", 5).unwrap();
        let csr = hcert_signer::pki::csr::build_csr(&hsm, "dsc-faults", "C=VN,O=MoH,CN=DSC faults").unwrap();
        let pem =
            csca.certify_dsc(&csr, now - time::Duration::hours(1), now + time::Duration::days(700), None);
        let dsc = Dsc::from_pem(&pem.unwrap()).unwrap();
        let mut trust = TrustList::new();
        trust.insert(dsc.clone());

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("store"),
            StoreOptions {
                // The data keys are wrapped in memory here: the faults injected are the
                // signing sessions'.
                key_wrap: Some(hcert_signer::store::seal::testing::MemoryKek::new()),
                min_free_bytes: 0,
                ..Default::default()
            },
        )
        .expect("store");
        let settings = SigningSettings {
            country: "VN".into(),
            validity_secs: 365 * 86_400,
            exp_beyond_dsc: ExpBeyondDsc::Cap,
            uvci: UvciGenerator::new("VN").unwrap(),
            policy: Policy::new(ValueSets::embedded_shared(), now),
        };
        let service = SigningService {
            hsm: hsm.clone(),
            keyring: Keyring::new(vec![ActiveKey::new("dsc-faults", dsc, 1)]),
            settings: Arc::new(settings),
        };
        let pipeline = Pipeline::start(
            store.clone(),
            service,
            PipelineConfig { workers: 3, chunk_size: 64, idle_poll: Duration::from_millis(50) },
        )
        .unwrap();

        // The whole load is accepted first; the faults hit while it is being signed.
        let mut ids = Vec::new();
        for b in 0..BATCHES {
            let recs = daemon::records(&format!("b{b}-"), PER_BATCH);
            let texts: Vec<(String, String)> =
                recs.iter().map(|r| (r["ref"].as_str().unwrap().to_owned(), r["dcc"].to_string())).collect();
            let input: Vec<NewRecord<'_>> =
                texts.iter().map(|(r, d)| NewRecord { r#ref: r, dcc_json: d.as_bytes() }).collect();
            ids.push(store.submit("issuer", None, &input, now.unix_timestamp()).unwrap().batch_id);
        }
        let total = (BATCHES * PER_BATCH) as u64;
        let signed = || total - store.queued_records();
        // Each fault must hit a pipeline that still has work, or "resumes" proves nothing.
        let loaded = |what: &str| {
            assert!(store.queued_records() >= 300, "the load ran out before {what}: {:?}", hsm.stats());
        };
        let progress = |from: u64, what: &str| {
            assert!(
                wait_for(Duration::from_secs(60), || signed() >= from + 300),
                "signing did not resume after {what}: {:?}",
                hsm.stats()
            );
        };
        progress(0, "the start");

        loaded("the token was removed");
        // 1. The token's files removed and restored.
        let away = token.dir.join("tokens.away");
        std::fs::rename(token.token_dir(), &away).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || hsm.stats().backend.reinit_failures >= 1),
            "{:?}",
            hsm.stats()
        );
        std::thread::sleep(Duration::from_millis(500));
        std::fs::rename(&away, token.token_dir()).unwrap();
        progress(signed(), "the token came back");

        loaded("C_Finalize");
        // 2. The module finalised behind the pool's back.
        {
            let _quiet = gate.write().unwrap();
            Pkcs11::new(module()).unwrap().finalize().expect("C_Finalize through a second handle");
        }
        progress(signed(), "C_Finalize");

        loaded("C_Logout");
        // 3. Every session of the process loses its login: C_Logout through a session of a
        // second handle (cryptoki 0.12 has no C_CloseAllSessions; a logout is the same fault for
        // the pool — its sessions are still open but can no longer sign).
        {
            let _quiet = gate.write().unwrap();
            let (other, slot) = hcert_signer::hsm::softhsm::raw_slot(&module(), common::TOKEN_LABEL).unwrap();
            let session = other.open_ro_session(slot).expect("C_OpenSession");
            session.logout().expect("C_Logout");
        }
        progress(signed(), "C_Logout");

        let start = Instant::now();
        assert!(
            wait_for(Duration::from_secs(300), || store.queued_records() == 0),
            "queue not drained after {:?}: {} left, {:?}",
            start.elapsed(),
            store.queued_records(),
            hsm.stats()
        );
        pipeline.shutdown();

        let stats = hsm.stats();
        assert_eq!(stats.bad_signatures, 0, "{stats:?}");
        assert!(
            stats.backend.faults >= 3 && stats.backend.reinits >= 3,
            "each fault re-initialised: {stats:?}"
        );
        assert!(stats.backend.available, "{stats:?}");

        // Exactly one result per accepted record, in order, all signed, all verifying.
        let verifier = Verifier::new(&trust, None);
        let clock = now.unix_timestamp() + 60;
        for (b, id) in ids.iter().enumerate() {
            let lines: Vec<serde_json::Value> = store
                .results("issuer", id)
                .unwrap()
                .expect("batch")
                .map(|l| serde_json::from_slice(&l.unwrap()).unwrap())
                .collect();
            assert_eq!(lines.len(), PER_BATCH, "batch {b}");
            for (i, l) in lines.iter().enumerate() {
                assert_eq!(l["ref"], format!("b{b}-{i}"));
                assert_eq!(l["status"], "signed", "{l}");
                let v = verifier.verify(l["hc1"].as_str().unwrap(), clock);
                assert!(v.ok(), "batch {b} record {i}: {:?}", v.report());
            }
        }

        // And the audit log recorded each signature once.
        let key = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
        let entries = store
            .audit_entries(1)
            .map(|e| e.map_err(|e| hcert_signer::audit::BadEntry { seq: 0, reason: e.to_string() }));
        let summary = hcert_signer::audit::verify_chain(entries, key.verifying_key()).expect("intact chain");
        assert_eq!(summary.signatures, total);
    });
}
