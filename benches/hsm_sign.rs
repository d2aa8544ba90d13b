//! Signing throughput: the token's raw `C_Sign` rate (cryptoki directly, one session per thread,
//! CKM_ECDSA over a 32-byte digest) beside the rate through the appliance's pool, at 1 and 2
//! threads, in one run on a fresh SoftHSM2 token. Two views of the pool:
//!
//! * the pool machinery alone, at the backend level (`Backend::sign_digests`: queue, worker
//!   session, timeout, reply — no verification), one digest per call and a pipeline chunk per
//!   call (256 digests, the daemon's default `chunk_size`); this is
//!   the pool's own overhead against the token (bench-only: `Hsm` has no unverified path);
//! * the appliance's interface (`Hsm::sign` / `Hsm::sign_many`: pool, low-S, the mandatory
//!   software verification of every signature).
//!
//! SoftHSM signs on the same CPUs that verify, so with verification the rate cannot exceed
//! `cores / (t_sign + t_verify)`; the run measures both times and prints that ceiling.
//! Criterion times single operations; the table at the end is the figure that counts.
//!
//! Run: `cargo bench --bench hsm_sign` (`HCERT_BENCH_SECS` sets each throughput window, default
//! 3 s; `HCERT_BENCH_ROUNDS` how many windows each figure is the best of, default 2). Run as a
//! test (`cargo test --benches`, no `--bench` flag) it does a short smoke run without criterion;
//! asked to `--list` tests (nextest) it lists none.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use criterion::Criterion;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use hcert_signer::hsm::pkcs11::Pkcs11Backend;
use hcert_signer::hsm::{Backend, Hsm, PinSource, Pkcs11Config, sha256};
use p256::elliptic_curve::sec1::ToEncodedPoint;

const TOKEN: &str = "hcert-bench";
const PIN: &str = "bench-pin-1234";
const LABEL: &str = "bench-dsc";
const CHILD_ENV: &str = "HCERT_BENCH_TOKEN_DIR";
/// Records per batch call (`sign_many`, `sign_digests`): what one pipeline chunk hands the HSM
/// (`pipeline.chunk_size`, default 256).
fn chunk() -> usize {
    hcert_signer::pipeline::PipelineConfig::default().chunk_size
}

fn module() -> PathBuf {
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("SoftHSM2 is not installed (apt-get install softhsm2)")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // Test runners enumerating tests: this binary is a benchmark, not a test suite.
        return;
    }
    match std::env::var_os(CHILD_ENV) {
        Some(dir) => run(PathBuf::from(dir), &args),
        None => {
            // SoftHSM reads SOFTHSM2_CONF at C_Initialize and set_var is unsafe: make the token,
            // then re-run this binary with the variable set.
            let tmp = tempfile::tempdir().expect("tempdir");
            let conf = hcert_signer::hsm::softhsm::init_token(tmp.path(), TOKEN, "bench-so-5678", PIN)
                .expect("create the SoftHSM token");
            let status = Command::new(std::env::current_exe().expect("bench binary"))
                .args(&args)
                .env("SOFTHSM2_CONF", &conf)
                .env(CHILD_ENV, tmp.path())
                .status()
                .expect("re-run the bench");
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

fn run(dir: PathBuf, args: &[String]) {
    let bench_mode = args.iter().any(|a| a == "--bench");
    let secs: f64 = if bench_mode {
        std::env::var("HCERT_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0)
    } else {
        0.2
    };
    let window = Duration::from_secs_f64(secs);
    let rounds: usize = if bench_mode {
        std::env::var("HCERT_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
    } else {
        1
    };
    let pin_file = dir.join("hsm-pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut cfg = Pkcs11Config::new(module(), TOKEN, PinSource::File(pin_file));
    cfg.pool_size = Some(2);
    // What `Hsm::open` does, keeping a handle on the backend for the machinery-only figures.
    let backend = Pkcs11Backend::open(&cfg).expect("open token");
    let hsm = Hsm::from_backend(backend.clone());
    let key = hsm.generate_key(LABEL).expect("generate key");

    // The raw side: a second handle on the same module (already initialised by the pool).
    let (raw, slot) = hcert_signer::hsm::softhsm::raw_slot(&module(), TOKEN).expect("raw handle");

    // Messages the size of a COSE Sig_structure of a vaccination DCC, with their digests.
    let items: Arc<Vec<(Vec<u8>, [u8; 32])>> = Arc::new(
        (0..4096)
            .map(|i| {
                let mut m = vec![0x5a; 320];
                m[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let d = sha256(&m);
                (m, d)
            })
            .collect(),
    );

    if bench_mode {
        criterion_latencies(&hsm, &backend, &key, &raw, slot, &items);
    }

    // Throughput, measured back to back so all columns see the same machine load.
    let chunk = chunk();
    println!();
    println!(
        "Signing throughput on SoftHSM2 {} (P-256; best of {rounds} x {secs:.1} s; pool of 2 sessions; batch calls of {chunk})",
        softhsm_version(&raw),
    );
    println!(
        "{:>7} | {:>12} | {:<43} | pool + mandatory software verification",
        "", "token", "pool machinery alone (no verification)"
    );
    println!(
        "{:>7} | {:>12} | {:>13} {:>6} | {:>13} {:>6} | {:>11} {:>6} | {:>11} {:>6}",
        "threads",
        "raw C_Sign/s",
        "1 digest/s",
        "ratio",
        "chunk digests/s",
        "ratio",
        "Hsm::sign/s",
        "ratio",
        "sign_many/s",
        "ratio"
    );
    // Each figure is the best of `rounds` windows, all of them measured in turn in every round:
    // the machine may be shared, and interleaving keeps a burst of outside load from landing on
    // one side of the comparison only.
    let mut raw_by_threads = [0f64; 2];
    let mut many_by_threads = [0f64; 2];
    for threads in [1usize, 2] {
        let mut best = [0f64; 5];
        for _ in 0..rounds {
            let rates = [
                raw_rate(&raw, slot, &items, threads, window),
                rate(threads, window, {
                    let (backend, items) = (backend.clone(), items.clone());
                    move |t, i| {
                        let d = items[(t * 1000 + i) % items.len()].1;
                        backend.sign_digests(LABEL, &[d]).map(|v| v.len() as u64).expect("sign_digests")
                    }
                }),
                rate(threads, window, {
                    let (backend, items) = (backend.clone(), items.clone());
                    move |t, i| {
                        let start = (t * 1000 + i * chunk) % (items.len() - chunk);
                        let digests: Vec<[u8; 32]> =
                            items[start..start + chunk].iter().map(|(_, d)| *d).collect();
                        backend.sign_digests(LABEL, &digests).map(|v| v.len() as u64).expect("sign_digests")
                    }
                }),
                rate(threads, window, {
                    let (hsm, items) = (hsm.clone(), items.clone());
                    move |t, i| {
                        let (m, d) = &items[(t * 1000 + i) % items.len()];
                        hsm.sign(LABEL, m, d).map(|_| 1).expect("Hsm::sign")
                    }
                }),
                rate(threads, window, {
                    let (hsm, items) = (hsm.clone(), items.clone());
                    move |t, i| {
                        let start = (t * 1000 + i * chunk) % (items.len() - chunk);
                        hsm.sign_many(LABEL, &items[start..start + chunk])
                            .map(|v| v.len() as u64)
                            .expect("Hsm::sign_many")
                    }
                }),
            ];
            for (b, r) in best.iter_mut().zip(rates) {
                *b = b.max(r);
            }
        }
        let [raw_best, one, batch, single, many] = best;
        raw_by_threads[threads - 1] = raw_best;
        many_by_threads[threads - 1] = many;
        println!(
            "{threads:>7} | {raw_best:>12.0} | {one:>13.0} {:>6.2} | {batch:>13.0} {:>6.2} | {single:>11.0} {:>6.2} | {many:>11.0} {:>6.2}",
            one / raw_best,
            batch / raw_best,
            single / raw_best,
            many / raw_best,
        );
    }

    // The ceiling with verification: every signature costs t_sign of a CPU inside SoftHSM plus
    // t_verify in aws-lc, on the same cores, whoever runs them.
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let verify_rate = verify_rate(&hsm, &key, &items[0].0, window.min(Duration::from_secs(1)));
    let (t_sign, t_verify) = (1e6 / raw_by_threads[0], 1e6 / verify_rate);
    let ceiling = cores as f64 * 1e6 / (t_sign + t_verify);
    println!(
        "CPU ceiling with verification on {cores} cores: {cores} / ({t_sign:.1} µs sign + {t_verify:.1} µs verify) = {ceiling:.0}/s"
    );
    println!(
        "  = {:.2} x raw at 1 thread, {:.2} x raw at 2 threads; sign_many reached {:.0}% / {:.0}% of it",
        ceiling / raw_by_threads[0],
        ceiling / raw_by_threads[1],
        100.0 * many_by_threads[0] / ceiling,
        100.0 * many_by_threads[1] / ceiling,
    );
    let stats = hsm.stats();
    println!(
        "released {} verified signatures, {} failed verification, {} re-initialisations, {} timeouts",
        stats.signatures, stats.bad_signatures, stats.backend.reinits, stats.backend.timeouts
    );
    assert_eq!(stats.bad_signatures, 0);
    assert_eq!(stats.sign_failures, 0);
}

/// Single-thread aws-lc P-256 verifications per second, the other half of the ceiling.
fn verify_rate(hsm: &Hsm, key: &hcert_signer::hsm::KeyInfo, message: &[u8], window: Duration) -> f64 {
    let point = key.public_key.to_encoded_point(false);
    let verifier = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes()).expect("key");
    let sig = hsm.sign(LABEL, message, &sha256(message)).expect("sign");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < window {
        for _ in 0..64 {
            verifier.verify_sig(message, &sig).expect("verify");
        }
        n += 64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Per-operation latency with criterion, 1 thread: raw C_Sign, one digest through the pool
/// machinery, Hsm::sign, and the software verification alone (the part of Hsm::sign's cost
/// that is not the token's).
fn criterion_latencies(
    hsm: &Hsm,
    backend: &Pkcs11Backend,
    key: &hcert_signer::hsm::KeyInfo,
    raw: &Pkcs11,
    slot: cryptoki::slot::Slot,
    items: &[(Vec<u8>, [u8; 32])],
) {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    {
        let session = raw.open_ro_session(slot).expect("session");
        let handle = private_handle(&session);
        let digest = items[0].1;
        c.bench_function("raw C_Sign (CKM_ECDSA, 1 thread)", |b| {
            b.iter(|| session.sign(&Mechanism::Ecdsa, handle, &digest).expect("C_Sign"))
        });
    }
    let (m0, d0) = &items[0];
    c.bench_function("pool round trip, no verification (Backend::sign_digests, 1 digest)", |b| {
        b.iter(|| backend.sign_digests(LABEL, &[*d0]).expect("sign_digests"))
    });
    c.bench_function("Hsm::sign (pool + low-S + verify, 1 thread)", |b| {
        b.iter(|| hsm.sign(LABEL, m0, d0).expect("sign"))
    });
    let point = key.public_key.to_encoded_point(false);
    let verifier = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes()).expect("key");
    let sig = hsm.sign(LABEL, m0, d0).expect("sign");
    c.bench_function("aws-lc P-256 verify alone", |b| {
        b.iter(|| verifier.verify_sig(m0, &sig).expect("verify"))
    });
}

fn private_handle(session: &cryptoki::session::Session) -> cryptoki::object::ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(LABEL.as_bytes().to_vec()),
        ])
        .expect("find key");
    found[0]
}

/// Raw C_Sign rate: each thread its own session, no pool, no verification.
fn raw_rate(
    raw: &Pkcs11,
    slot: cryptoki::slot::Slot,
    items: &Arc<Vec<(Vec<u8>, [u8; 32])>>,
    threads: usize,
    window: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count, items) = (stop.clone(), count.clone(), items.clone());
            s.spawn(move || {
                let session = raw.open_ro_session(slot).expect("session");
                let handle = private_handle(&session);
                let mut i = t * 1000;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let d = &items[i % items.len()].1;
                    session.sign(&Mechanism::Ecdsa, handle, d).expect("C_Sign");
                    i += 1;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Runs `op(thread, iteration) -> signatures made` on `threads` threads for `window`.
fn rate(threads: usize, window: Duration, op: impl Fn(usize, usize) -> u64 + Send + Sync + Clone) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count, op) = (stop.clone(), count.clone(), op.clone());
            s.spawn(move || {
                let mut i = 0;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += op(t, i);
                    i += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn softhsm_version(raw: &Pkcs11) -> String {
    raw.get_library_info()
        .map(|i| format!("{}.{}", i.library_version().major(), i.library_version().minor()))
        .unwrap_or_default()
}
