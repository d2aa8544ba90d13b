//! `hcert-signer serve --config FILE`: the daemon. It opens the HSM, the keys in service and the
//! store, starts the signing workers and the listeners, reloads TLS and clients on SIGHUP, and
//! on SIGTERM stops accepting, finishes or parks what is in flight, flushes and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use tokio::sync::watch;

use crate::api::routes::RateLimiter;
use crate::api::tls::{self, TlsState};
use crate::api::{AppState, Clients, Limits, UploadKey};
use crate::audit::Event;
use crate::config::Config;
use crate::hcert::uvci::UvciGenerator;
use crate::hcert::validate::Policy;
use crate::hcert::valuesets::ValueSets;
use crate::hsm::Hsm;
use crate::keys::Keyring;
use crate::keys::audit_key::AuditSigner;
use crate::keys::bootstrap::{Bootstrap, ConfiguredDsc};
use crate::keys::kek::{self, HsmKeyWrap};
use crate::keys::lifecycle::{KeyError, KeyPolicy, Lifecycle};
use crate::pipeline::{Pipeline, PipelineConfig, SigningService, SigningSettings};
use crate::pki;
use crate::store::{Store, StoreOptions};
use crate::{Error, Result};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// How long open requests get to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(20);

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let env: Vec<(&str, &std::ffi::OsStr)> =
        config.hsm_environment.iter().map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v))).collect();
    super::reexec_with_env(&env)?;
    // Before any thread exists: taking them clears LISTEN_FDS from the environment.
    let passed = passed_listeners()?;
    crate::logging::init(&config.log_level);
    // The real clock, not the calendar's: uptime is what the dashboard shows.
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    crate::metrics::get().start_time.set(started.as_secs() as i64);

    let hsm = Hsm::open(&config.hsm)?;
    // The embedded store owns its folder under the state directory, which also holds the audit
    // key's public half; a PostgreSQL store is waited for while it cannot be reached.
    let store = Store::open_configured(
        &config.store,
        &config.state_dir,
        StoreOptions {
            key_wrap: Some(HsmKeyWrap::new(hsm.clone(), &config.store.kek_label)),
            cache_capacity: config.store.cache_mb << 20,
            min_free_bytes: config.store.min_free_mb << 20,
        },
        true,
    )
    .map_err(|e| Error::Config(format!("store: {e}")))?;
    // Before anything is accepted: a store whose KEK is gone must not start (exit 78).
    kek::ensure(&hsm, &store, &config.store.kek_label).map_err(|e| Error::Config(e.to_string()))?;
    // Pinned: made (and its public half written) only at the first start, checked at every
    // later one. An empty log means no start ever got past this point on this store.
    let fresh = store.audit_head().map_err(|e| Error::Config(format!("audit log: {e}")))?.0 == 0;
    let audit = AuditSigner::open_pinned(
        &hsm,
        &config.audit.key_label,
        &config.state_dir.join(AUDIT_KEY_FILE),
        &store,
    )?;
    store
        .audit_append(vec![Event::Started {
            audit_key: audit.label().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }])
        .map_err(|e| Error::Config(format!("audit log: {e}")))?;
    let keys = Arc::new(open_keys(&config, &hsm, &store)?);
    if fresh {
        // A checkpoint over the first start at once: a cluster's further nodes pin the audit
        // key from the log's checkpoints (see AuditSigner::open_pinned).
        if let Err(e) = audit.checkpoint(&store) {
            log::error!("audit: first checkpoint failed: {e}");
        }
    }
    let keyring = keys.keyring().clone();
    let upload = match &config.signing.upload {
        Some(u) => {
            let pem = std::fs::read(&u.certificate).map_err(Error::file(&u.certificate))?;
            let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem)
                .map_err(|e| Error::Config(format!("{}: {e}", u.certificate.display())))?;
            pki::csr::check_certificate_key(&hsm, &u.label, &der)?;
            Some(Arc::new(UploadKey { label: u.label.clone(), certificate_der: der.to_vec() }))
        }
        None => None,
    };

    let value_sets = match &config.signing.value_sets_dir {
        Some(dir) => Arc::new(ValueSets::with_overrides(dir).map_err(|e| Error::Config(e.to_string()))?),
        None => ValueSets::embedded_shared(),
    };
    let mut uvci = UvciGenerator::new(&config.country).map_err(|e| Error::Config(e.to_string()))?;
    if let Some(block) = &config.signing.uvci_issuer {
        uvci = uvci.with_issuer(block).map_err(|e| Error::Config(format!("signing.uvci_issuer: {e}")))?;
    }
    let settings = SigningSettings {
        country: config.country.clone(),
        validity_secs: i64::from(config.signing.validity_days) * 86_400,
        exp_beyond_dsc: config.signing.exp_beyond_dsc,
        uvci,
        policy: signing_policy(&config, value_sets)?,
    };
    let service = SigningService { hsm, keyring, settings: Arc::new(settings) };
    // Only once every start-up check has passed: a refused start (exit 78) must not race a
    // background thread inside the PKCS#11 module as the process exits. From here batches are
    // accepted without an HSM call, and during an HSM outage (see the store).
    store.start_key_stock().map_err(|e| Error::Config(format!("store: {e}")))?;
    // Dropped before the HSM (declared after it), on every way out of this function.
    let _stock = KeyStockGuard(&store);
    let defaults = PipelineConfig::default();
    let pipeline = Pipeline::start(
        store.clone(),
        service.clone(),
        PipelineConfig {
            workers: config.pipeline.workers.unwrap_or(defaults.workers),
            chunk_size: config.pipeline.chunk_size.unwrap_or(defaults.chunk_size),
            ..defaults
        },
    )?;
    // In a cluster: another node's rotation or CSCA addition is read again here within
    // seconds, and its new batches wake an idle worker here too.
    let (lifecycle, waker) = (keys.clone(), pipeline.waker());
    store.watch(Arc::new(move |change| match change {
        crate::store::Change::Keys => {
            if let Err(e) = lifecycle.reload() {
                log::warn!("keys: cannot read the cluster's keys again: {e}");
            }
        }
        crate::store::Change::Work => waker.wake(),
    }));

    let tls_state = TlsState::new(tls::server_config(&config.tls)?);
    let state = Arc::new(AppState {
        store: store.clone(),
        service,
        waker: pipeline.waker(),
        clients: Clients::from_config(&config),
        limits: Limits {
            max_body_bytes: config.limits.max_body_bytes,
            max_batch_records: config.limits.max_batch_records,
            max_sync_records: config.limits.max_sync_records,
            max_queued_records: config.limits.max_queued_records,
            max_connections_per_client: config.limits.max_connections_per_client,
        },
        public_url: config.public_url.clone().unwrap_or_else(|| format!("https://{}", config.listen)),
        readiness: Default::default(),
        rate: RateLimiter::new(config.limits.requests_per_second),
        keys,
        audit: audit.clone(),
        upload,
        readiness_horizon_secs: i64::from(config.keys.readiness_horizon_hours) * 3600,
    });

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("api").build()?;
    runtime.block_on(async {
        let (api, ops) =
            (listener(passed.api, config.listen).await?, listener(passed.ops, config.metrics_listen).await?);
        let (api_addr, ops_addr) = (api.local_addr()?, ops.local_addr()?);
        let (stop_tx, stop_rx) = watch::channel(false);
        let api_task = tokio::spawn(crate::api::server::serve_api(
            api,
            tls_state.clone(),
            crate::api::proxy::TrustedProxies::new(&config.api.proxy_protocol_from),
            state.clone(),
            stop_rx.clone(),
            GRACE,
        ));
        let ops_task = tokio::spawn(crate::api::server::serve_ops(ops, state.clone(), stop_rx));
        log::info!(
            "serving on https://{api_addr} (operations on http://{ops_addr}), {} key(s) in service",
            state.service.keyring.snapshot().len()
        );
        let notifier = tokio::spawn(notify_systemd(state.clone(), pipeline.liveness()));
        let retention_secs = i64::from(config.store.retention_days) * 86_400;
        let checkpoints = Duration::from_secs(u64::from(config.audit.checkpoint_secs));
        wait_for_stop(&args.config, &tls_state, &state, &store, retention_secs, checkpoints).await;
        log::info!("stopping: no new connections; finishing requests in flight");
        notifier.abort();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let _ = stop_tx.send(true);
        let _ = api_task.await;
        let _ = ops_task.await;
        Ok::<(), Error>(())
    })?;
    // Workers finish (commit or release) the chunk they hold; then everything is on disk.
    pipeline.shutdown();
    // Explicitly: the store's handles outlive this function (the cluster watcher holds one).
    store.give_back_leases();
    if let Err(e) = audit.checkpoint(&store) {
        log::error!("audit: final checkpoint failed: {e}");
    }
    // Not a configuration error: exit 1, so systemd restarts the daemon, whose recovery from
    // disk is what a stopped store needs.
    store.flush().map_err(|e| Error::Io(std::io::Error::other(format!("store flush: {e}"))))?;
    log::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// Stops the store's data-key stock, joining its thread, when dropped: the thread may be
/// inside the PKCS#11 module, which must not be finalized, nor the process exit, under it.
struct KeyStockGuard<'a>(&'a crate::store::Store);

impl Drop for KeyStockGuard<'_> {
    fn drop(&mut self) {
        self.0.stop_key_stock();
    }
}

/// Listening sockets handed over by systemd (socket activation, `LISTEN_FDS`).
struct Passed {
    api: Option<std::net::TcpListener>,
    ops: Option<std::net::TcpListener>,
}

/// Takes the sockets systemd passed: by `LISTEN_FDNAMES` (`api`, `metrics`) when named,
/// otherwise the first is the API and the second the operations listener.
fn passed_listeners() -> Result<Passed> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(Passed { api: None, ops: None });
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let named = names.iter().any(|n| n == "api" || n == "metrics");
    let position = |name: &str, default: usize| {
        if named { names.iter().position(|n| n == name) } else { Some(default).filter(|&i| i < fds.len()) }
    };
    let (api_at, ops_at) = (position("api", 0), position("metrics", 1));
    let mut take = |at: Option<usize>, what: &str| -> Result<Option<std::net::TcpListener>> {
        match at {
            Some(i) => fds
                .take_tcp_listener(i)
                .map_err(|e| Error::Config(format!("the {what} socket passed by systemd (fd #{i}): {e}"))),
            None => Ok(None),
        }
    };
    Ok(Passed { api: take(api_at, "API")?, ops: take(ops_at, "metrics")? })
}

/// The passed socket if any, else a new one bound to `addr`.
async fn listener(
    passed: Option<std::net::TcpListener>,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener> {
    match passed {
        Some(l) => {
            l.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(l)?)
        }
        None => tokio::net::TcpListener::bind(addr).await.map_err(Error::file(format!("listen {addr}"))),
    }
}

/// systemd `Type=notify`: `STATUS=` while the appliance cannot sign yet, `READY=1` once it can
/// (HSM, store and an active DSC: the readiness checks), then `WATCHDOG=1` while every signing
/// worker keeps going round its loop. Without systemd (`NOTIFY_SOCKET` unset) these are no-ops.
async fn notify_systemd(state: Arc<AppState>, liveness: crate::pipeline::Liveness) {
    use sd_notify::NotifyState;
    let mut last_status = String::new();
    loop {
        let problems = crate::api::routes::health::evaluate(&state).await;
        if problems.is_empty() {
            let status = format!("signing with {} key(s)", state.service.keyring.snapshot().len());
            let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            log::info!("ready: {status}");
            break;
        }
        let status = format!("not ready: {}", problems.join("; "));
        if status != last_status {
            let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
            log::warn!("{status}");
            last_status = status;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    // A worker is wedged when it has not gone round its loop for half the watchdog period
    // (its longest legitimate pause is an HSM back-off of 5 s, or one call's timeout).
    let stale_after = i64::try_from(period.as_secs() / 2).unwrap_or(i64::MAX).max(10);
    let mut tick = tokio::time::interval(period / 3);
    loop {
        tick.tick().await;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if now - liveness.stalest() <= stale_after {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        } else {
            log::error!(
                "watchdog: a signing worker has not moved for {}s; not feeding the watchdog",
                now - liveness.stalest()
            );
        }
    }
}

/// Where the daemon writes the audit key's public half once, when it makes the key, for
/// `hcert-signer audit verify` (and checks it against the HSM at every start).
pub const AUDIT_KEY_FILE: &str = "audit-key.pem";

/// The key lifecycle over the store: the configuration's CSCAs and DSCs bootstrapped at the
/// store's first start, checked against the store afterwards (see `keys::bootstrap`).
fn open_keys(config: &Config, hsm: &Hsm, store: &Store) -> Result<Lifecycle> {
    let mut cscas = Vec::new();
    for c in &config.signing.csca {
        let pem = std::fs::read_to_string(&c.certificate).map_err(Error::file(&c.certificate))?;
        let list = pki::chain::Csca::from_pem_all(&pem)
            .map_err(|e| Error::Config(format!("[[signing.csca]] {}: {e}", c.certificate.display())))?;
        cscas.extend(list);
    }
    let policy = KeyPolicy {
        country: config.country.clone(),
        approval_ttl_secs: i64::from(config.keys.approval_hours) * 3600,
        usage_days: config.keys.usage_days,
        approvals_needed: 2,
        cscas,
    };
    let keys = Lifecycle::load(store.clone(), hsm.clone(), Keyring::default(), policy).map_err(key_error)?;
    let mut dscs = Vec::new();
    for d in &config.signing.dscs {
        let pem = std::fs::read_to_string(&d.certificate).map_err(Error::file(&d.certificate))?;
        dscs.push(ConfiguredDsc { label: d.label.clone(), pem, source: d.certificate.display().to_string() });
    }
    match keys.bootstrap(&dscs).map_err(key_error)? {
        Bootstrap::FirstStart { keys } => {
            log::info!(
                "keys: first start: {keys} key(s) activated from [[signing.dsc]] (first-start bootstrap)"
            );
        }
        Bootstrap::Store => {}
    }
    Ok(keys)
}

fn key_error(e: KeyError) -> Error {
    match e {
        KeyError::Hsm(e) => Error::Hsm(e),
        e => Error::Config(format!("keys: {e}")),
    }
}

/// Waits for SIGTERM/SIGINT, reloading TLS and clients on SIGHUP and purging expired batches
/// every few minutes meanwhile.
async fn wait_for_stop(
    config_path: &std::path::Path,
    tls_state: &TlsState,
    state: &Arc<AppState>,
    store: &Store,
    retention_secs: i64,
    checkpoints: Duration,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        log::error!("cannot install signal handlers; stopping");
        return;
    };
    let mut sweep = tokio::time::interval(Duration::from_secs(300));
    let mut checkpoint = tokio::time::interval_at(tokio::time::Instant::now() + checkpoints, checkpoints);
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => reload(config_path, tls_state, state),
            _ = checkpoint.tick() => {
                let (audit, store) = (state.audit.clone(), store.clone());
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || audit.checkpoint(&store)).await {
                    log::error!("audit: checkpoint failed: {e}");
                }
            }
            _ = sweep.tick() => {
                let store = store.clone();
                let now = crate::clock::now_unix();
                match tokio::task::spawn_blocking(move || store.purge_expired(now, retention_secs)).await {
                    Ok(Ok(0)) | Err(_) => {}
                    Ok(Ok(n)) => {
                        crate::metrics::get().batches.with_label_values(&["expired"]).inc_by(n as u64);
                        log::warn!("retention: purged {n} batch(es) older than the retention period")
                    }
                    Ok(Err(e)) => log::error!("retention: purge failed: {e}"),
                }
            }
        }
    }
}

/// SIGHUP: re-read the configuration; swap the TLS material and the client list only if both
/// load, so a bad edit keeps the service running as it was.
fn reload(config_path: &std::path::Path, tls_state: &TlsState, state: &Arc<AppState>) {
    let result = Config::load(config_path).and_then(|c| Ok((tls::server_config(&c.tls)?, c)));
    match result {
        Ok((tls_config, config)) => {
            tls_state.replace(tls_config);
            state.clients.replace(&config);
            log::info!("reloaded TLS material and {} client(s)", config.clients.len());
        }
        Err(e) => log::error!("reload refused, keeping the running configuration: {e}"),
    }
}

/// The payload policy of this appliance: supplied UVCIs must be the issuing country's (or start
/// with an accepted prefix), so no other country's certificate is signed under its `iss`.
fn signing_policy(config: &Config, value_sets: Arc<ValueSets>) -> Result<Policy> {
    Policy::new(value_sets, time::OffsetDateTime::now_utc())
        .with_uvci_country(&config.country)
        .and_then(|p| p.with_accepted_uvci_prefixes(&config.signing.accepted_uvci_prefixes))
        .map_err(|e| Error::Config(format!("signing.accepted_uvci_prefixes: {e}")))
}
