//! The signing pipeline: worker threads pull chunks of queued records from the store, sign
//! them through the HSM pool and commit the results, chunk by chunk.
//!
//! Workers are plain threads, not async tasks: their work is CPU (codec, verification) and
//! blocking waits on the HSM pool. Several run at once so that one encodes or verifies while
//! another waits for the HSM or for the store's fsync. An HSM outage releases the chunk back to
//! the queue and the worker backs off; nothing accepted is dropped.

pub mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub use sign::{ChunkSigner, Signed, SigningSettings};

use crate::hsm::Hsm;
use crate::keys::Keyring;
use crate::store::{NewRecord, Outcome, RecordKey, Store};

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Worker threads; 0 stores batches without signing them (maintenance, memory tests).
    pub workers: usize,
    /// Records per chunk (one HSM batch, one store commit).
    pub chunk_size: usize,
    /// How long an idle worker sleeps before looking at the queue again without being woken.
    pub idle_poll: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Two per CPU: each verifies its signatures itself, so while some wait for the HSM
        // or the store, the others keep the cores busy.
        Self { workers: 2 * cpus, chunk_size: 256, idle_poll: Duration::from_millis(250) }
    }
}

/// What the workers need, shared.
#[derive(Clone)]
pub struct SigningService {
    /// The HSM.
    pub hsm: Hsm,
    /// The keys in service.
    pub keyring: Keyring,
    /// Fixed signing settings.
    pub settings: Arc<SigningSettings>,
}

impl SigningService {
    /// A fresh chunk signer (each worker, and each synchronous request, has its own).
    pub fn signer(&self) -> ChunkSigner {
        ChunkSigner::new(self.hsm.clone(), self.keyring.clone(), (*self.settings).clone())
    }
}

/// Wakes idle workers when new work has been stored.
#[derive(Clone)]
pub struct Waker(flume::Sender<()>);

impl Waker {
    /// Tells one idle worker to look at the queue now.
    pub fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

/// When each worker last went round its loop: the systemd watchdog is fed only while every
/// worker does, so a wedged signer gets the daemon restarted.
#[derive(Clone, Default)]
pub struct Liveness(Arc<Vec<AtomicI64>>);

impl Liveness {
    /// The oldest of the workers' last rounds (seconds); `now` with no workers.
    pub fn stalest(&self) -> i64 {
        self.0.iter().map(|h| h.load(Ordering::Relaxed)).min().unwrap_or_else(now)
    }
}

/// Running workers.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    waker: Waker,
    liveness: Liveness,
    workers: Vec<JoinHandle<()>>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Pipeline {
    /// Starts the workers.
    pub fn start(store: Store, service: SigningService, config: PipelineConfig) -> std::io::Result<Pipeline> {
        let stop = Arc::new(AtomicBool::new(false));
        let liveness = Liveness(Arc::new((0..config.workers).map(|_| AtomicI64::new(now())).collect()));
        let (tx, rx) = flume::bounded(config.workers * 2 + 1);
        let mut workers = Vec::new();
        // Zero workers is accept-only: batches are stored, nothing is signed (maintenance).
        for n in 0..config.workers {
            let worker = Worker {
                store: store.clone(),
                signer: service.signer(),
                rx: rx.clone(),
                stop: stop.clone(),
                liveness: liveness.clone(),
                index: n,
                config: config.clone(),
            };
            workers.push(std::thread::Builder::new().name(format!("sign-{n}")).spawn(move || worker.run())?);
        }
        Ok(Pipeline { stop, waker: Waker(tx), liveness, workers })
    }

    /// A handle that wakes idle workers.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// The workers' heartbeats, for the systemd watchdog.
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// Stops taking new chunks, lets every worker finish (commit or release) the chunk it holds,
    /// and waits for them.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.waker.wake();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

struct Worker {
    store: Store,
    signer: ChunkSigner,
    rx: flume::Receiver<()>,
    stop: Arc<AtomicBool>,
    liveness: Liveness,
    index: usize,
    config: PipelineConfig,
}

impl Worker {
    fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.load(Ordering::SeqCst) {
            self.liveness.0[self.index].store(now(), Ordering::Relaxed);
            let items = match self.store.claim(self.config.chunk_size) {
                Ok(items) => items,
                Err(e) => {
                    log::error!("store: cannot claim work: {e}");
                    self.pause(&mut backoff);
                    continue;
                }
            };
            if items.is_empty() {
                let _ = self.rx.recv_timeout(self.config.idle_poll);
                continue;
            }
            let inputs: Vec<NewRecord<'_>> =
                items.iter().map(|w| NewRecord { r#ref: &w.r#ref, dcc_json: &w.dcc_json }).collect();
            let keys: Vec<RecordKey> = items.iter().map(|w| w.key).collect();
            match self.signer.sign_chunk(&inputs, now()) {
                Ok(results) => match self.store.commit(
                    keys.iter()
                        .zip(results)
                        .map(|(&key, s)| Outcome { key, result: s.result, audit: s.audit })
                        .collect(),
                ) {
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        // Not committed means not released: the records are signed again later.
                        log::error!("store: cannot commit {} results: {e}", keys.len());
                        self.store.release(&keys);
                        self.pause(&mut backoff);
                    }
                },
                Err(e) => {
                    log::warn!("hsm: chunk of {} records put back in the queue: {e}", keys.len());
                    self.store.release(&keys);
                    self.pause(&mut backoff);
                }
            }
        }
    }

    /// Waits out a fault with exponential backoff (up to 5 s), waking early to stop.
    fn pause(&self, backoff: &mut Duration) {
        let _ = self.rx.recv_timeout(*backoff);
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}
