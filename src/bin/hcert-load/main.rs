//! `hcert-load`: end-to-end throughput of the appliance, reported as a ratio to the raw
//! `C_Sign` rate of the same SoftHSM2 token measured in the same run.
//!
//! It builds a fresh development setup (`hcert-signer dev-init`), measures the token's raw
//! `C_Sign` rate at 1 and 2 threads, starts the daemon (the `hcert-signer` binary next to this
//! one), and then measures:
//! - records per second from the first batch submitted over mTLS to the last result fetched
//!   (the best of two runs, each raw rate being the best of three windows, and up to seven more
//!   two-thread windows while SoftHSM's threads convoy);
//! - latency of single-record `POST /v1/sign` on the idle daemon (p50, p99, and the slowest
//!   request with its place in the sequence);
//! - the daemon's RSS with a large number of records queued (signing paused);
//! - for each end-to-end run, the CPU per signed record by daemon thread group, of the load
//!   tool and left idle ([`cpu`]).
//!
//! Run: `cargo build --release && target/release/hcert-load` (`--help` for the knobs).
//!
//! With `--soak SECS` it runs the soak test instead (see [`soak`]).

#![forbid(unsafe_code)]

mod cpu;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hcert_signer::client::{ApiClient, ClientTls};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "End-to-end throughput of hcert-signer against the raw C_Sign rate of its token")]
struct Args {
    /// Records to sign end to end.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Concurrent mTLS connections submitting and fetching.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds per raw C_Sign measurement window (each rate is the best of three).
    #[arg(long, default_value_t = 3.0)]
    raw_secs: f64,
    /// Single-record POST /v1/sign requests for the idle latency figure (25 ms apart; at least 1).
    #[arg(long, default_value_t = 400, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    idle_requests: usize,
    /// Records queued (signing paused) for the memory figure; 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    rss_records: usize,
    /// Pipeline worker threads of the daemon (default: its own default).
    #[arg(long)]
    workers: Option<usize>,
    /// Records per pipeline chunk (default: the daemon's default).
    #[arg(long)]
    chunk_size: Option<usize>,
    /// HSM sessions (signing threads) of the daemon (default: its own default).
    #[arg(long)]
    pool_size: Option<usize>,
    /// Work in this directory instead of a temporary one (it must not exist yet).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run the soak test for this many seconds (at most 600) instead of the measurements: a mix
    /// of batches, polls, fetch-verify-delete, synchronous signing and a key rotation at about
    /// half the measured capacity, reporting RSS over time, errors and verification results.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..=600))]
    soak: Option<u64>,
    /// The store to measure: `sled` (the default), or `postgres`, which measures PostgreSQL
    /// beside sled in the same run, on a throw-away cluster sharing these two cores (its
    /// servers' CPU counted per record).
    #[arg(long, value_enum, default_value = "sled")]
    store: StoreKind,
}

/// Which store backends a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// The embedded sled store alone.
    Sled,
    /// sled, then PostgreSQL.
    Postgres,
}

const DIR_ENV: &str = "HCERT_LOAD_DIR";

/// Below this multiple of the 1-thread rate, the 2-thread raw rate was measured in SoftHSM's
/// convoy mode (on two free cores it is ≈ 1.8×; convoyed, ≈ 1×).
const CONVOY_SCALING: f64 = 1.5;

/// Extra two-thread windows measured while the rate stays below [`CONVOY_SCALING`].
const CONVOY_RETRIES: usize = 7;

/// One raw measurement window: signatures per second, and CPU time per signature of the
/// signing threads (≈ 1 / rate per thread when they run free; more when they convoy).
#[derive(Debug, Clone, Copy, Default)]
struct Raw {
    rate: f64,
    cpu_us: f64,
}

impl Raw {
    fn best(self, other: Raw) -> Raw {
        if other.rate > self.rate { other } else { self }
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("hcert-load: {e}");
        std::process::exit(1);
    }
}

fn signer_bin() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    me.with_file_name("hcert-signer")
}

fn run(args: Args) -> Result<(), String> {
    // First pass: make the setup, then re-execute with SOFTHSM2_CONF set for the raw measurement.
    let dir = match std::env::var_os(DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let dir = match &args.dir {
                Some(d) => d.clone(),
                None => std::env::temp_dir().join(format!("hcert-load-{}", std::process::id())),
            };
            let out = Command::new(signer_bin())
                .args(["dev-init", "--dir"])
                .arg(&dir)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("dev-init: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let conf = dir.join("softhsm2.conf");
            let status = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .args(std::env::args_os().skip(1))
                .env("SOFTHSM2_CONF", &conf)
                .env(DIR_ENV, &dir)
                .status()
                .map_err(|e| e.to_string())?;
            if args.dir.is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            std::process::exit(status.code().unwrap_or(1));
        }
    };
    let config = hcert_signer::config::Config::load(&dir.join("config.toml")).map_err(|e| e.to_string())?;
    let (listen, ops) = (config.listen, config.metrics_listen);

    println!("hcert-load: setup in {}", dir.display());
    let window = Duration::from_secs_f64(args.raw_secs);
    // Best of three windows each, interleaved: one window can land on a burst of other load,
    // and SoftHSM's two-thread rate falls now and then to its one-thread rate for seconds at a
    // time (its threads convoy on a lock: 1.5 cores busy, ≈ 75 µs of CPU per signature instead
    // of ≈ 48). An understated raw rate would flatter the ratio.
    let (mut raw1, mut raw2) = (Raw::default(), Raw::default());
    for _ in 0..3 {
        raw1 = raw1.best(raw_rate(&dir, 1, window)?);
        raw2 = raw2.best(raw_rate(&dir, 2, window)?);
    }
    // A convoy can last a minute: give the two-thread rate more windows before settling for it.
    let mut extra = 0;
    while raw2.rate < CONVOY_SCALING * raw1.rate && extra < CONVOY_RETRIES {
        raw2 = raw2.best(raw_rate(&dir, 2, window)?);
        extra += 1;
    }
    println!(
        "raw C_Sign (CKM_ECDSA, SoftHSM2): 1 thread {:.0}/s ({:.1} µs of CPU each), 2 threads {:.0}/s \
         ({:.1} µs of CPU each, {:.2} cores busy){}",
        raw1.rate,
        raw1.cpu_us,
        raw2.rate,
        raw2.cpu_us,
        raw2.rate * raw2.cpu_us / 1e6,
        if extra > 0 { format!("; {extra} extra two-thread windows") } else { String::new() }
    );
    let (raw1, raw2) = (raw1.rate, raw2.rate);
    if raw2 < CONVOY_SCALING * raw1 {
        // Seen for whole minutes on this machine; the ratio below is then flattered.
        println!(
            "warning: 2 threads signed only {:.2}× the 1-thread rate: SoftHSM's threads convoyed on its \
             lock in every window, so the ratio is overstated — run again",
            raw2 / raw1
        );
    }
    let raw = raw1.max(raw2);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let tls = ClientTls::from_files(
        &dir.join("tls/ca.pem"),
        &dir.join("tls/issuer.pem"),
        &dir.join("tls/issuer.key"),
    )
    .map_err(|e| e.to_string())?;

    let tuning = Tuning { workers: args.workers, chunk_size: args.chunk_size, pool_size: args.pool_size };
    let mut daemon = Daemon::spawn(&dir, &tuning)?;
    daemon.wait_ready(ops)?;
    if let Some(secs) = args.soak {
        let report = rt.block_on(soak::run(&dir, listen, &tls, &daemon, Duration::from_secs(secs)));
        daemon.stop();
        return report;
    }
    let Latency { p50, p99, max, max_at } = rt.block_on(idle_latency(listen, &tls, args.idle_requests))?;
    println!(
        "idle POST /v1/sign, 1 record: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (request {max_at} of {})",
        args.idle_requests
    );

    let rate = end_to_end(&rt, &args, &daemon, listen, &tls, raw, None)?;
    daemon.stop();

    if args.store == StoreKind::Postgres {
        // A setup of its own (token, certificates) on the cluster: a token that served a store
        // before does not start on an empty one.
        let cluster = hcert_signer::store::postgres::ScratchCluster::start().map_err(|e| e.to_string())?;
        let pg_dir = dir.join("postgres");
        let out = Command::new(signer_bin())
            .args(["dev-init", "--dir"])
            .arg(&pg_dir)
            .arg("--postgres")
            .arg(cluster.url())
            .arg("--postgres-password-file")
            .arg(cluster.password_file())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("dev-init --postgres: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let pg_config =
            hcert_signer::config::Config::load(&pg_dir.join("config.toml")).map_err(|e| e.to_string())?;
        let pg_tls = ClientTls::from_files(
            &pg_dir.join("tls/ca.pem"),
            &pg_dir.join("tls/issuer.pem"),
            &pg_dir.join("tls/issuer.key"),
        )
        .map_err(|e| e.to_string())?;
        let mut daemon = Daemon::spawn(&pg_dir, &tuning)?;
        daemon.wait_ready(pg_config.metrics_listen)?;
        println!("postgres: a throw-away PostgreSQL cluster on this machine, Unix socket");
        let pg = end_to_end(&rt, &args, &daemon, pg_config.listen, &pg_tls, raw, Some(&cluster))?;
        daemon.stop();
        println!("postgres: best {pg:.0} records/s = {:.2} × sled's {rate:.0} records/s", pg / rate.max(1.0));
    }

    if args.rss_records > 0 {
        // Signing paused: every record submitted stays queued.
        let mut daemon = Daemon::spawn(&dir, &Tuning { workers: Some(0), ..Tuning::default() })?;
        daemon.wait_started(ops)?;
        let queued = rt.block_on(fill_queue(listen, &tls, args.rss_records, args.batch))?;
        let (rss, hwm) = daemon.rss_kib()?;
        println!("memory: {queued} records queued: RSS {} MiB (peak {} MiB)", rss / 1024, hwm / 1024);
        daemon.stop();
    }
    println!(
        "summary: raw_1t={raw1:.0}/s raw_2t={raw2:.0}/s e2e={rate:.0}/s ratio={:.2} p99_idle_ms={p99:.2}",
        rate / raw
    );
    Ok(())
}

/// The end-to-end rate, the best of two runs (as each raw rate is: a run can land on a burst of
/// other load too, and only the raw side taking its best would understate the ratio), each
/// reported with its CPU per record; with `cluster`, PostgreSQL's servers' CPU too.
fn end_to_end(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    daemon: &Daemon,
    listen: std::net::SocketAddr,
    tls: &ClientTls,
    raw: f64,
    cluster: Option<&hcert_signer::store::postgres::ScratchCluster>,
) -> Result<f64, String> {
    let mut rate = 0f64;
    let me = std::process::id();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for _ in 0..2 {
        // The request bodies are built before the clocks start: neither the rate nor the load
        // tool's CPU figure should include making the test data.
        let bodies = batch_bodies(args);
        let (daemon_before, load_before) = (cpu::Snapshot::take(daemon.pid()), cpu::Snapshot::take(me));
        let db_before = cluster.map(|c| c.cpu_time());
        let (r, signed, elapsed) = rt.block_on(throughput(listen, tls, args, bodies))?;
        let (daemon_cpu, load_cpu) = (
            cpu::Snapshot::take(daemon.pid()).since(&daemon_before),
            cpu::Snapshot::take(me).since(&load_before),
        );
        println!(
            "end to end: {signed} records in {:.2} s = {r:.0} records/s; ratio to raw C_Sign ({raw:.0}/s) = {:.2}",
            elapsed.as_secs_f64(),
            r / raw
        );
        println!("  {}", cpu::report(&daemon_cpu, &load_cpu, elapsed, cores, signed));
        if let (Some(c), Some(before)) = (cluster, db_before) {
            let db = c.cpu_time().saturating_sub(before);
            println!(
                "  postgres servers: {:.1} µs of CPU per signed record (within the idle figure above)",
                db.as_secs_f64() * 1e6 / signed.max(1) as f64
            );
        }
        rate = rate.max(r);
    }
    Ok(rate)
}

/// The raw C_Sign rate of the dev token's DSC key: one session per thread, random digests.
fn raw_rate(dir: &Path, threads: usize, window: Duration) -> Result<Raw, String> {
    let e = |e: cryptoki::error::Error| e.to_string();
    let (pkcs11, slot) = hcert_signer::hsm::softhsm::raw_slot(
        Path::new(hcert_signer::hsm::softhsm::DEFAULT_MODULE),
        hcert_signer::commands::dev_init::TOKEN_LABEL,
    )
    .map_err(|e| e.to_string())?;
    let pin = std::fs::read_to_string(dir.join("hsm-pin")).map_err(|e| e.to_string())?;
    let login = pkcs11.open_ro_session(slot).map_err(e)?;
    login.login(UserType::User, Some(&AuthPin::new(pin.trim().into()))).map_err(e)?;
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(hcert_signer::commands::dev_init::DSC_LABEL.as_bytes().to_vec()),
    ];
    let key = *login.find_objects(&template).map_err(e)?.first().ok_or("DSC key not found")?;
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let cpu_ns = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (pkcs11, stop, count, cpu_ns) = (&pkcs11, &stop, &count, &cpu_ns);
            s.spawn(move || {
                let Ok(session) = pkcs11.open_ro_session(slot) else { return };
                let cpu_start = cpu::this_thread_ns();
                let mut digest = [t as u8; 32];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    digest[..8].copy_from_slice(&n.to_le_bytes());
                    if session.sign(&Mechanism::Ecdsa, key, &digest).is_err() {
                        break;
                    }
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
                cpu_ns.fetch_add(cpu::this_thread_ns().saturating_sub(cpu_start), Ordering::Relaxed);
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    let signed = count.load(Ordering::Relaxed);
    let rate = signed as f64 / started.elapsed().as_secs_f64();
    let cpu_us = cpu_ns.load(Ordering::Relaxed) as f64 / 1e3 / signed.max(1) as f64;
    drop(login);
    pkcs11.finalize().map_err(e)?;
    Ok(Raw { rate, cpu_us })
}

/// Daemon settings a run overrides (`None`: the daemon's default).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tuning {
    workers: Option<usize>,
    chunk_size: Option<usize>,
    pool_size: Option<usize>,
}

pub(crate) struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts `serve` with these settings; `workers = Some(0)` pauses signing.
    fn spawn(dir: &Path, tuning: &Tuning) -> Result<Daemon, String> {
        let mut config = dir.join("config.toml");
        if *tuning != Tuning::default() {
            let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
            let mut table: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
            let mut set = |section: &str, key: &str, value: Option<usize>| -> Result<(), String> {
                let Some(v) = value else { return Ok(()) };
                let entry = table.entry(section).or_insert_with(|| toml::Table::new().into());
                let section = entry.as_table_mut().ok_or(format!("[{section}] is not a table"))?;
                section.insert(key.into(), i64::try_from(v).map_err(|e| e.to_string())?.into());
                Ok(())
            };
            set("hsm", "pool_size", tuning.pool_size)?;
            set("pipeline", "workers", tuning.workers)?;
            set("pipeline", "chunk_size", tuning.chunk_size)?;
            let tuned = dir.join("config-load.toml");
            std::fs::write(&tuned, toml::to_string(&table).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            config = tuned;
        }
        let log = std::fs::File::create(dir.join("load-daemon.log")).map_err(|e| e.to_string())?;
        let child = Command::new(signer_bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Daemon { child })
    }

    fn probe(&mut self, ops: std::net::SocketAddr, path: &str, want: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("daemon exited: {status}"));
            }
            if let Ok(mut s) = std::net::TcpStream::connect(ops) {
                let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                if r.starts_with(want) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("daemon not ready within 60 s".into())
    }

    fn wait_ready(&mut self, ops: std::net::SocketAddr) -> Result<(), String> {
        self.probe(ops, "/readyz", "HTTP/1.1 200")
    }

    fn wait_started(&mut self, ops: std::net::SocketAddr) -> Result<(), String> {
        self.probe(ops, "/healthz", "HTTP/1.1 200")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> Result<(u64, u64), String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| e.to_string())?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Ok((field("VmRSS:").unwrap_or(0), field("VmHWM:").unwrap_or(0)))
    }

    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// Realistic records: the 100 sample people, with fresh refs and no UVCI (the appliance assigns).
pub(crate) fn record_pool() -> Vec<Value> {
    let sample: Value =
        serde_json::from_str(include_str!("../../../samples/sample-batch.json")).expect("sample batch");
    sample["records"].as_array().expect("records").iter().map(|r| r["dcc"].clone()).collect()
}

pub(crate) fn batch_body(pool: &[Value], start: usize, n: usize) -> Vec<u8> {
    let records: Vec<Value> = (start..start + n)
        .map(|i| json!({"ref": format!("load-{i}"), "dcc": pool[i % pool.len()]}))
        .collect();
    serde_json::to_vec(&json!({ "records": records })).expect("json")
}

/// Latencies of the idle `POST /v1/sign` requests, in ms.
struct Latency {
    p50: f64,
    p99: f64,
    /// The slowest request, and its 1-based place in the sequence: a lone stall (a slow fsync
    /// of the audit log, say) that the percentiles hide.
    max: f64,
    max_at: usize,
}

async fn idle_latency(listen: std::net::SocketAddr, tls: &ClientTls, n: usize) -> Result<Latency, String> {
    let pool = record_pool();
    let mut c = ApiClient::connect(listen, "localhost", tls).await.map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let body = serde_json::to_vec(
            &json!({"records": [{"ref": format!("idle-{i}"), "dcc": pool[i % pool.len()]}]}),
        )
        .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let r = c.request(http::Method::POST, "/v1/sign", Some(body)).await.map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if r.status != 200 {
            return Err(format!("POST /v1/sign: {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        // The idle figure: leave the daemon idle between requests, as a clerk at a desk would,
        // and stay under the per-client rate limit (50/s by default), whose 429s are not latency.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (max_at, max) =
        times.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or_default();
    times.sort_by(f64::total_cmp);
    let pct =
        |p: f64| times[((times.len() as f64 * p).ceil() as usize).saturating_sub(1).min(times.len() - 1)];
    Ok(Latency { p50: pct(0.50), p99: pct(0.99), max, max_at: max_at + 1 })
}

/// The JSON bodies of the end-to-end run: `--records` records in batches of `--batch`.
fn batch_bodies(args: &Args) -> Vec<Vec<u8>> {
    let pool = record_pool();
    (0..args.records.div_ceil(args.batch))
        .map(|b| batch_body(&pool, b * args.batch, args.batch.min(args.records - b * args.batch)))
        .collect()
}

/// Submits `bodies` over `--connections` connections, then fetches and deletes every batch:
/// records signed per second from the first submission until every batch is fetched and
/// deleted, the records signed, and that time.
async fn throughput(
    listen: std::net::SocketAddr,
    tls: &ClientTls,
    args: &Args,
    bodies: Vec<Vec<u8>>,
) -> Result<(f64, u64, Duration), String> {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (queue, tls) = (queue.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = ApiClient::connect(listen, "localhost", &tls).await.map_err(|e| e.to_string())?;
            let mut ids = Vec::new();
            loop {
                let body = queue.lock().map_err(|_| "poisoned")?.pop();
                let Some(body) = body else { break };
                ids.push(submit(&mut c, body).await?);
            }
            let mut signed = 0u64;
            for id in ids {
                // Polled often: the measurement ends with the last result fetched.
                wait_done(&mut c, &id, Duration::from_millis(50)).await?;
                let r = c.get(&format!("/v1/batches/{id}/results")).await.map_err(|e| e.to_string())?;
                signed += r
                    .body
                    .split(|b| *b == b'\n')
                    .filter(|l| l.windows(17).any(|w| w == b"\"status\":\"signed\""))
                    .count() as u64;
                c.delete(&format!("/v1/batches/{id}")).await.map_err(|e| e.to_string())?;
            }
            Ok::<u64, String>(signed)
        }));
    }
    let mut signed = 0;
    for t in tasks {
        signed += t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    Ok((signed as f64 / elapsed.as_secs_f64(), signed, elapsed))
}

/// Submits a batch body; its id once the daemon answered 202.
pub(crate) async fn submit(c: &mut ApiClient, body: Vec<u8>) -> Result<String, String> {
    let r = c.request(http::Method::POST, "/v1/batches", Some(body)).await.map_err(|e| e.to_string())?;
    if r.status != 202 {
        return Err(format!("submit: {} {}", r.status, String::from_utf8_lossy(&r.body)));
    }
    Ok(r.json().map_err(|e| e.to_string())?["batch_id"].as_str().unwrap_or_default().to_owned())
}

/// Polls a batch's status every `poll` until it is done (300 s at most); the final status.
pub(crate) async fn wait_done(c: &mut ApiClient, id: &str, poll: Duration) -> Result<Value, String> {
    let started = Instant::now();
    loop {
        let r = c.get(&format!("/v1/batches/{id}")).await.map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("status: {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        let s = r.json().map_err(|e| e.to_string())?;
        if s["state"] == "done" {
            return Ok(s);
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("batch {id} not done after 300 s: {s}"));
        }
        tokio::time::sleep(poll).await;
    }
}

async fn fill_queue(
    listen: std::net::SocketAddr,
    tls: &ClientTls,
    n: usize,
    batch: usize,
) -> Result<usize, String> {
    let pool = record_pool();
    let mut c = ApiClient::connect(listen, "localhost", tls).await.map_err(|e| e.to_string())?;
    let mut queued = 0;
    while queued < n {
        let k = batch.min(n - queued);
        submit(&mut c, batch_body(&pool, queued, k)).await?;
        queued += k;
    }
    Ok(queued)
}
