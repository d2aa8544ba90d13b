//! Acceptance 2: several threads signing through the pool get only valid signatures, and when
//! the token breaks under the running pool (module finalised behind its back, token directory
//! moved away and back) signing resumes by itself — no invalid signature released, no restart.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use common::{assert_valid, module, wait_for, with_fresh_token};
use cryptoki::context::Pkcs11;
use hcert_signer::hsm::{Hsm, sha256};

#[test]
fn concurrent_signing_yields_only_valid_signatures() {
    with_fresh_token("concurrent_signing_yields_only_valid_signatures", |token| {
        let hsm = token.open();
        let key = hsm.generate_key("dsc-conc").expect("generate");
        std::thread::scope(|s| {
            for t in 0..4 {
                let (hsm, key) = (&hsm, &key);
                s.spawn(move || {
                    for i in 0..150 {
                        let m = format!("thread {t} record {i}");
                        let sig = hsm.sign("dsc-conc", m.as_bytes(), &sha256(m.as_bytes())).expect("sign");
                        assert_valid(&key.public_key, m.as_bytes(), &sig);
                    }
                });
            }
            for t in 0..2 {
                let (hsm, key) = (&hsm, &key);
                s.spawn(move || {
                    let items: Vec<(Vec<u8>, [u8; 32])> = (0..100)
                        .map(|i| {
                            let m = format!("batch {t} record {i}").into_bytes();
                            let d = sha256(&m);
                            (m, d)
                        })
                        .collect();
                    let sigs = hsm.sign_many("dsc-conc", &items).expect("sign_many");
                    for ((m, _), sig) in items.iter().zip(&sigs) {
                        assert_valid(&key.public_key, m, sig);
                    }
                });
            }
        });
        let stats = hsm.stats();
        assert_eq!(stats.signatures, 4 * 150 + 2 * 100, "{stats:?}");
        assert_eq!(stats.sign_failures, 0, "{stats:?}");
        assert_eq!(stats.bad_signatures, 0, "{stats:?}");
        assert_eq!(stats.backend.reinits, 0, "{stats:?}");
        assert_eq!(stats.backend.sessions_open, 3, "2 signing sessions + 1 admin: {stats:?}");
    });
}

/// Signing threads that run until stopped, checking every released signature independently and
/// recording every error. `gate` lets a test pause them around a fault injection that must not
/// race with a call in flight.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    transient_errors: Arc<AtomicU64>,
    problems: Arc<Mutex<Vec<String>>>,
    gate: Arc<RwLock<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(hsm: &Hsm, label: &str, public_key: p256::PublicKey, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let transient_errors = Arc::new(AtomicU64::new(0));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(RwLock::new(()));
        let handles = (0..threads)
            .map(|t| {
                let (hsm, label) = (hsm.clone(), label.to_string());
                let (stop, ok, transient_errors, problems, gate) =
                    (stop.clone(), ok.clone(), transient_errors.clone(), problems.clone(), gate.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let m = format!("load {t} {i}");
                        let r = {
                            let _g = gate.read().expect("gate");
                            hsm.sign(&label, m.as_bytes(), &sha256(m.as_bytes()))
                        };
                        match r {
                            Ok(sig) => {
                                let s = p256::ecdsa::Signature::from_slice(&sig);
                                let valid = s.is_ok_and(|s| {
                                    use p256::ecdsa::signature::Verifier;
                                    s.normalize_s().is_none()
                                        && p256::ecdsa::VerifyingKey::from(&public_key)
                                            .verify(m.as_bytes(), &s)
                                            .is_ok()
                                });
                                if valid {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    problems
                                        .lock()
                                        .expect("lock")
                                        .push(format!("invalid signature released for {m}"));
                                }
                            }
                            Err(e) if e.is_transient() => {
                                transient_errors.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(e) => {
                                problems.lock().expect("lock").push(format!("non-transient error: {e}"));
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, ok, transient_errors, problems, gate, threads: handles }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let problems = self.problems.lock().expect("lock").clone();
        (self.ok.load(Ordering::SeqCst), self.transient_errors.load(Ordering::SeqCst), problems)
    }
}

#[test]
fn module_finalised_under_the_pool_recovers_by_itself() {
    with_fresh_token("module_finalised_under_the_pool_recovers_by_itself", |token| {
        let hsm = token.open();
        let key = hsm.generate_key("dsc-fin").expect("generate");
        let load = Load::start(&hsm, "dsc-fin", key.public_key, 3);
        assert!(wait_for(Duration::from_secs(10), || load.ok() > 200), "load did not start");

        // Another handle on the same module in this process calls C_Finalize: every session
        // and the login of the running pool are gone. (Taken while no call is in flight:
        // finalising under a running call is undefined behaviour in PKCS#11.)
        let before = {
            let _paused = load.gate.write().expect("gate");
            let other = Pkcs11::new(module()).expect("second handle");
            other.finalize().expect("C_Finalize through the second handle");
            load.ok()
        };

        assert!(
            wait_for(Duration::from_secs(15), || load.ok() > before + 200),
            "signing did not resume: {:?}",
            hsm.stats()
        );
        let (ok, transient, problems) = load.finish();
        let stats = hsm.stats();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(stats.backend.faults >= 1, "{stats:?}");
        assert!(stats.backend.reinits >= 1, "the pool must have re-initialised: {stats:?}");
        assert!(transient >= 1, "the fault must have been seen by callers");
        assert_eq!(stats.bad_signatures, 0);
        assert!(ok > before + 200);
        assert!(stats.backend.available);
    });
}

#[test]
fn token_directory_moved_away_and_back_recovers_by_itself() {
    with_fresh_token("token_directory_moved_away_and_back_recovers_by_itself", |token| {
        let hsm = token.open();
        let key = hsm.generate_key("dsc-move").expect("generate");
        let load = Load::start(&hsm, "dsc-move", key.public_key, 3);
        assert!(wait_for(Duration::from_secs(10), || load.ok() > 200), "load did not start");

        // Pull the token out from under SoftHSM while it is signing. SoftHSM then reports the
        // key handle invalid and the token unreadable (CKR_GENERAL_ERROR); it never re-reads a
        // token that vanished, so only a re-initialisation (C_Finalize + C_Initialize) brings
        // it back — and that fails while the directory is away.
        let away = token.dir.join("tokens.away");
        std::fs::rename(token.token_dir(), &away).expect("move token dir away");
        assert!(
            wait_for(Duration::from_secs(10), || hsm.stats().backend.reinit_failures >= 2),
            "re-initialisation was not attempted while the token was away: {:?}",
            hsm.stats()
        );
        assert!(!hsm.stats().backend.available);
        let during = load.ok();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(load.ok(), during, "signatures released while the token was away");

        std::fs::rename(&away, token.token_dir()).expect("move token dir back");
        assert!(
            wait_for(Duration::from_secs(15), || load.ok() > during + 200),
            "signing did not resume after the token came back: {:?}",
            hsm.stats()
        );
        let (_, transient, problems) = load.finish();
        let stats = hsm.stats();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(stats.backend.reinits >= 1, "{stats:?}");
        assert!(transient >= 1);
        assert_eq!(stats.bad_signatures, 0);
    });
}
