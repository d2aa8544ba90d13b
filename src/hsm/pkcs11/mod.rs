//! PKCS#11 backend: one `C_Initialize` per process, a logged-in session held for the process
//! lifetime, a pool of signing sessions on worker threads, a timeout on every call, and a bounded
//! re-initialisation with backoff after device faults.
//!
//! Layout of one *generation* (everything between a `C_Initialize` and its `C_Finalize`):
//!
//! * a keeper session, logged in as the user and never used for anything else — PKCS#11 logs the
//!   whole application out when its last session closes, so this one stays open;
//! * one admin worker with a read/write session (key generation, look-ups);
//! * `pool_size` signing workers, each owning one read-only session, all fed by one job queue.
//!   Callers put a job on the queue and wait for the reply with a timeout — or put several and
//!   collect the replies later; they never enter the PKCS#11 module themselves, so a hung token
//!   cannot hang them. A signing job only signs: the caller runs its [`Check`] (software
//!   verification) when it collects the answer, so a session's thread spends its time in the
//!   token and the verification of one slice overlaps the signing of the next.
//!
//! A supervisor thread owns the lifecycle. It abandons and replaces a worker whose call overran
//! its deadline, and on a device fault (or a signature that failed verification) it tears the
//! generation down — drain the queues, let the workers close their sessions, close the keeper,
//! `C_Finalize` — and builds a new one with exponential backoff until the token is back. Callers
//! get [`Error::Unavailable`] meanwhile. PIN errors stop it: they are never retried.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::{Limit, Slot};

mod kek;
mod objects;
mod rv;
mod supervisor;
#[cfg(test)]
mod tests;

use super::{
    Backend, BackendStats, Check, Error, KeyInfo, P256_EC_PARAMS, PendingSignatures, Pin, Pkcs11Config,
};
use rv::{ck_error, is_fault, one_line, rv_name};
use supervisor::{sign_calls, supervisor_main, worker_main};

/// `C_Login` calls made by this process, over all backends and generations: the number a
/// security officer wants to see after a PIN error (it must not climb by itself).
static LOGIN_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

/// How many times this process has presented the user PIN to a PKCS#11 token.
pub fn login_attempts() -> u64 {
    LOGIN_ATTEMPTS.load(Ordering::SeqCst)
}

/// The PKCS#11 backend. Dropping the last clone stops the pool and closes its sessions.
#[derive(Clone)]
pub struct Pkcs11Backend {
    handle: Arc<Handle>,
}

/// Owner of the supervisor; its `Drop` shuts the pool down (threads hold `Inner`, not this).
struct Handle {
    inner: Arc<Inner>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    cfg: Pkcs11Config,
    pin: Pin,
    op_timeout: Duration,
    epoch: Instant,
    state: RwLock<State>,
    events: flume::Sender<Event>,
    /// Keys seen so far, by label: their CKA_ID (stable across resets) and the object handle
    /// valid in one generation (handles are not, so they are looked up again by CKA_ID).
    keys: RwLock<HashMap<String, CachedKey>>,
    next_generation: AtomicU64,
    /// Whether this backend's `C_Initialize` succeeded (as opposed to finding the module already
    /// initialised by someone else in the process), which decides whether shutdown finalises.
    initialised_by_us: AtomicBool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    reinits: AtomicU64,
    reinit_failures: AtomicU64,
    faults: AtomicU64,
    timeouts: AtomicU64,
    workers_abandoned: AtomicU64,
    pin_attempts: AtomicU64,
    sessions_open: AtomicU64,
}

#[derive(Clone)]
struct CachedKey {
    info: KeyInfo,
    handle: Option<(u64, ObjectHandle)>,
}

enum State {
    /// Starting: the first generation is being opened.
    Starting,
    Up(Arc<Generation>),
    Recovering {
        reason: String,
        attempts: u32,
    },
    Failed(Error),
    Shutdown,
}

enum Event {
    Fault { generation: Arc<Generation>, reason: String },
    Shutdown(flume::Sender<()>),
}

/// One initialised module: its sessions, queues and workers.
struct Generation {
    id: u64,
    pkcs11: Pkcs11,
    slot: Slot,
    pool_size: usize,
    keeper: Mutex<Option<Session>>,
    sign_jobs: JobQueue,
    admin_jobs: JobQueue,
    stopping: AtomicBool,
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    workers: Mutex<Vec<Arc<Worker>>>,
    abandoned: AtomicUsize,
}

/// Counts calls in flight into this generation's module; once closed, no new call may start
/// (the module is about to be finalised and its session numbers reused).
#[derive(Default)]
struct Gate {
    active: usize,
    closed: bool,
}

struct GateGuard<'a>(&'a Generation);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.0.gate.lock().unwrap_or_else(|p| p.into_inner());
        g.active = g.active.saturating_sub(1);
        // Only teardown waits on the condvar, and only after closing the gate (under this lock):
        // skip the wake-up system call on every job otherwise.
        if g.closed {
            self.0.gate_cv.notify_all();
        }
    }
}

impl Generation {
    fn enter(&self) -> Option<GateGuard<'_>> {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed {
            return None;
        }
        g.active += 1;
        Some(GateGuard(self))
    }

    fn in_use(&self) -> usize {
        self.gate.lock().map(|g| g.active).unwrap_or(0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sign,
    Admin,
}

struct Worker {
    kind: Kind,
    /// Nanoseconds since `Inner::epoch` by which the current call must finish; 0 when idle.
    deadline: AtomicU64,
    abandoned: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    fn finished(&self) -> bool {
        self.thread.lock().map(|t| t.as_ref().is_none_or(|h| h.is_finished())).unwrap_or(true)
    }
}

/// The body of a job: given the worker's session, it does its PKCS#11 calls and replies.
type JobFn = Box<dyn FnOnce(&Session, &Ctx<'_>) + Send>;

/// Work for one session: runs on a worker thread, replies through its own channel.
struct Job {
    /// How many PKCS#11 calls it may make (its time budget is that many timeouts).
    calls: u32,
    run: JobFn,
}

/// Jobs waiting for a worker. A worker takes a job only once it is running: a channel that hands
/// a message straight to a parked receiver would leave the job with a worker that is woken but
/// not yet scheduled (on a busy machine, for hundreds of µs) while another worker is free, and
/// callers collect replies in order, so that one job would stall the whole pipeline.
#[derive(Default)]
struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers waiting on `ready`: no wake-up system call when none is.
    idle: usize,
}

impl JobQueue {
    /// Queues `job` unless `stopping` is set, and says whether it did. The flag is read under
    /// the queue's lock, which the teardown's drain also takes after setting it: a job is either
    /// refused here (and never runs) or queued where a worker or the drain finds it, and its
    /// caller keeps the reply channel. Checking after the push instead would let a worker run
    /// the job (and, say, find the bad signature that stops the generation) while its caller
    /// had already given up on the answer.
    fn push_unless(&self, job: Job, stopping: &AtomicBool) -> bool {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if stopping.load(Ordering::SeqCst) {
            return false;
        }
        q.jobs.push_back(job);
        let wake = q.idle > 0;
        drop(q);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    /// The oldest job, waiting at most `timeout` for one.
    fn pop(&self, timeout: Duration) -> Option<Job> {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = q.jobs.pop_front() {
            return Some(job);
        }
        q.idle += 1;
        let (mut q, _) = self.ready.wait_timeout(q, timeout).unwrap_or_else(|p| p.into_inner());
        q.idle -= 1;
        q.jobs.pop_front()
    }

    /// Drops every queued job: their callers see the reply channel close.
    fn clear(&self) {
        let jobs = std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).jobs);
        drop(jobs);
    }
}

/// A queued job's answer channel and the time by which its caller stops waiting.
struct Reply<T> {
    rx: flume::Receiver<Result<T, Error>>,
    op: &'static str,
    budget: Duration,
    deadline: Instant,
}

/// The name of every signing session's thread: what per-thread CPU accounting (`hcert-load`,
/// `top -H`) reads as the device's own signing time.
pub const SIGN_THREAD_NAME: &str = "hsm-sign";

/// The longest any call waits, whatever its size: a bound for budgets the clock cannot add.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// What a job may use besides its session.
struct Ctx<'a> {
    inner: &'a Arc<Inner>,
    generation: &'a Arc<Generation>,
}

impl Pkcs11Backend {
    /// Loads the module, finds the token, logs in and starts the pool. Fails fast, with no
    /// retry, on a missing module, a missing token or any PIN error; times out if the module
    /// hangs.
    pub fn open(cfg: &Pkcs11Config) -> Result<Pkcs11Backend, Error> {
        cfg.validate()?;
        // A bare file name is left to the dynamic loader's search path; a path must exist.
        if cfg.module.components().count() > 1 && !cfg.module.exists() {
            // libloading's message for a missing file is fine, but say it plainly.
            return Err(Error::ModuleNotFound { path: cfg.module.clone(), detail: "no such file".into() });
        }
        let pin = cfg.pin.load()?;
        let (events_tx, events_rx) = flume::unbounded();
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            pin,
            op_timeout: cfg.op_timeout(),
            epoch: Instant::now(),
            state: RwLock::new(State::Starting),
            events: events_tx,
            keys: RwLock::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            initialised_by_us: AtomicBool::new(false),
            counters: Counters::default(),
        });
        // The first generation is opened on the supervisor thread, so that a module hanging in
        // C_Initialize or C_Login cannot hang the caller either.
        let (ready_tx, ready_rx) = flume::bounded(1);
        let sup_inner = inner.clone();
        let supervisor = std::thread::Builder::new()
            .name("hsm-supervisor".into())
            .spawn(move || supervisor_main(sup_inner, events_rx, ready_tx))
            .map_err(|e| Error::Device {
                op: "start",
                rv: format!("cannot start the supervisor thread: {e}"),
            })?;
        let handle = Arc::new(Handle { inner: inner.clone(), supervisor: Mutex::new(Some(supervisor)) });
        let open_timeout = inner.op_timeout * 4;
        match ready_rx.recv_timeout(open_timeout) {
            Ok(Ok(())) => Ok(Pkcs11Backend { handle }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout { op: "open (C_Initialize / C_Login)", after: open_timeout }),
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let (ack_tx, ack_rx) = flume::bounded(1);
        let supervisor = self.supervisor.lock().ok().and_then(|mut s| s.take());
        if self.inner.events.send(Event::Shutdown(ack_tx)).is_ok() {
            // Bounded: a hung module must not hang process exit. A supervisor that already
            // stopped (failed open) will never answer, so stop waiting once it has exited.
            let limit = Instant::now() + self.inner.op_timeout * 2 + Duration::from_secs(1);
            loop {
                match ack_rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(()) | Err(flume::RecvTimeoutError::Disconnected) => break,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        let gone = supervisor.as_ref().is_none_or(|h| h.is_finished());
                        if gone || Instant::now() >= limit {
                            break;
                        }
                    }
                }
            }
        }
        if let Some(h) = supervisor
            && h.is_finished()
        {
            let _ = h.join();
        }
    }
}

impl Backend for Pkcs11Backend {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn generate_key(&self, label: &str) -> Result<KeyInfo, Error> {
        let label = label.to_string();
        self.inner().call(Kind::Admin, "generate key", 8, move |s, ctx| ctx.generate(s, &label))
    }

    fn find_key(&self, label: &str) -> Result<KeyInfo, Error> {
        let label = label.to_string();
        self.inner()
            .call(Kind::Admin, "find key", 6, move |s, ctx| ctx.locate(s, &label).map(|(info, _)| info))
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>, Error> {
        self.inner().call(Kind::Admin, "list keys", 64, move |s, ctx| ctx.list(s))
    }

    fn sign_digests(&self, label: &str, digests: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, Error> {
        let label = label.to_string();
        let digests = digests.to_vec();
        let calls = sign_calls(digests.len());
        self.inner().call(Kind::Sign, "sign", calls, move |s, ctx| ctx.sign(s, &label, &digests))
    }

    fn submit_digests(&self, label: &str, digests: Vec<[u8; 32]>, check: Check) -> PendingSignatures {
        let label = label.to_string();
        let calls = sign_calls(digests.len());
        let inner = self.inner();
        // The session only signs; the caller verifies when it collects the answer (module doc).
        let submitted = inner.submit(Kind::Sign, "sign", calls, move |s, ctx| {
            Ok((ctx.sign(s, &label, &digests)?, ctx.generation.clone()))
        });
        match submitted {
            Ok(reply) => {
                let inner = inner.clone();
                PendingSignatures::deferred(move || {
                    let (raw, generation) = inner.wait(reply)?;
                    // A bad signature is a fault of the generation that made it, not of
                    // whichever one is current by now.
                    check.run(raw, |what| inner.report_fault(&generation, what))
                })
            }
            Err(e) => PendingSignatures::ready(Err(e)),
        }
    }

    fn generate_kek(&self, label: &str) -> Result<(), Error> {
        let label = label.to_string();
        self.inner().call(Kind::Admin, "generate KEK", 4, move |s, ctx| ctx.generate_kek(s, &label))
    }

    fn find_kek(&self, label: &str) -> Result<(), Error> {
        let label = label.to_string();
        self.inner().call(Kind::Admin, "find KEK", 3, move |s, ctx| ctx.kek(s, &label).map(|_| ()))
    }

    fn wrap_data_key(&self, kek_label: &str, key: &[u8]) -> Result<Vec<u8>, Error> {
        let (label, key) = (kek_label.to_string(), zeroize::Zeroizing::new(key.to_vec()));
        // On the admin session, like key generation: SoftHSM2 is not reliable when objects are
        // created in one session while another generates token keys.
        self.inner().call(Kind::Admin, "wrap data key", 5, move |s, ctx| ctx.wrap_data_key(s, &label, &key))
    }

    fn unwrap_data_key(&self, kek_label: &str, wrapped: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let (label, wrapped) = (kek_label.to_string(), wrapped.to_vec());
        self.inner()
            .call(Kind::Admin, "unwrap data key", 5, move |s, ctx| ctx.unwrap_data_key(s, &label, &wrapped))
    }

    fn health(&self) -> Result<(), Error> {
        self.inner().call(Kind::Sign, "health check", 2, |s, ctx| {
            ctx.generation
                .pkcs11
                .get_token_info(ctx.generation.slot)
                .map_err(|e| ctx.fail("C_GetTokenInfo", e))?;
            let info = s.get_session_info().map_err(|e| ctx.fail("C_GetSessionInfo", e))?;
            match info.session_state() {
                SessionState::RoUser | SessionState::RwUser => Ok(()),
                _ => {
                    let e = Error::Device { op: "health check", rv: "session is no longer logged in".into() };
                    ctx.inner.report_fault(ctx.generation, "session logged out");
                    Err(e)
                }
            }
        })
    }

    fn report_fault(&self, what: &str) {
        let inner = self.inner();
        let generation = match &*inner.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Up(g) => g.clone(),
            _ => return,
        };
        inner.report_fault(&generation, what);
    }

    fn parallelism(&self) -> usize {
        match &*self.inner().state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Up(g) => g.pool_size,
            _ => 1,
        }
    }

    fn stats(&self) -> BackendStats {
        let inner = self.inner();
        let c = &inner.counters;
        let (available, in_use) = match &*inner.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Up(g) => (true, g.in_use() as u64),
            _ => (false, 0),
        };
        BackendStats {
            available,
            reinits: c.reinits.load(Ordering::Relaxed),
            reinit_failures: c.reinit_failures.load(Ordering::Relaxed),
            faults: c.faults.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            workers_abandoned: c.workers_abandoned.load(Ordering::Relaxed),
            pin_attempts: c.pin_attempts.load(Ordering::Relaxed),
            sessions_open: c.sessions_open.load(Ordering::Relaxed),
            sessions_in_use: in_use,
        }
    }
}

impl Inner {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn current(&self) -> Result<Arc<Generation>, Error> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Up(g) => Ok(g.clone()),
            State::Starting => Err(Error::Unavailable { reason: "the HSM session pool is starting".into() }),
            State::Recovering { reason, attempts } => Err(Error::Unavailable {
                reason: format!(
                    "re-initialising the HSM after a fault ({reason}), {attempts} attempt(s) so far"
                ),
            }),
            State::Failed(e) => Err(e.clone()),
            State::Shutdown => {
                Err(Error::Unavailable { reason: "the HSM session pool is shutting down".into() })
            }
        }
    }

    /// Runs `f` on a worker's session and waits for its answer, at most `op_timeout` per
    /// PKCS#11 call it makes plus one for queueing.
    fn call<T: Send + 'static>(
        &self,
        kind: Kind,
        op: &'static str,
        calls: u32,
        f: impl FnOnce(&Session, &Ctx<'_>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let reply = self.submit(kind, op, calls, f)?;
        self.wait(reply)
    }

    /// Queues `f` for a worker's session and returns at once; [`Inner::wait`] collects the
    /// answer. The time budget (`op_timeout` per PKCS#11 call plus one for queueing) starts now,
    /// so a request submitted ahead cannot extend its caller's wait.
    fn submit<T: Send + 'static>(
        &self,
        kind: Kind,
        op: &'static str,
        calls: u32,
        f: impl FnOnce(&Session, &Ctx<'_>) -> Result<T, Error> + Send + 'static,
    ) -> Result<Reply<T>, Error> {
        let generation = self.current()?;
        let (tx, rx) = flume::bounded::<Result<T, Error>>(1);
        let job = Job {
            calls,
            run: Box::new(move |session, ctx| {
                // The caller gave up (timed out, or an earlier part of its batch failed): don't
                // spend a token operation on it.
                if tx.is_disconnected() {
                    return;
                }
                let _ = tx.send(f(session, ctx));
            }),
        };
        let queue = match kind {
            Kind::Sign => &generation.sign_jobs,
            Kind::Admin => &generation.admin_jobs,
        };
        if !queue.push_unless(job, &generation.stopping) {
            return Err(self
                .current()
                .err()
                .unwrap_or(Error::Unavailable { reason: "the HSM session pool is re-initialising".into() }));
        }
        let budget = self.op_timeout.saturating_mul(calls.saturating_add(1));
        let now = Instant::now();
        // A budget too large for the clock (absurd sizes) still gets a finite wait.
        let deadline = now.checked_add(budget).unwrap_or_else(|| now + MAX_WAIT);
        Ok(Reply { rx, op, budget, deadline })
    }

    /// Waits for a submitted job's answer until its deadline.
    fn wait<T>(&self, reply: Reply<T>) -> Result<T, Error> {
        match reply.rx.recv_deadline(reply.deadline) {
            Ok(r) => r,
            Err(flume::RecvTimeoutError::Timeout) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout { op: reply.op, after: reply.budget })
            }
            // The job was dropped unanswered: the generation was torn down under it.
            Err(flume::RecvTimeoutError::Disconnected) => {
                Err(self.current().err().unwrap_or(Error::Unavailable {
                    reason: "the HSM session pool was reset during the call".into(),
                }))
            }
        }
    }

    /// Marks `generation` faulty (if it is still the current one) and asks the supervisor to
    /// rebuild. New callers get `Unavailable` from now on.
    fn report_fault(&self, generation: &Arc<Generation>, reason: &str) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let current = matches!(&*state, State::Up(g) if g.id == generation.id);
        if !current {
            return;
        }
        log::warn!("HSM fault: {reason}; re-initialising the PKCS#11 session pool");
        self.counters.faults.fetch_add(1, Ordering::Relaxed);
        *state = State::Recovering { reason: reason.to_string(), attempts: 0 };
        generation.stopping.store(true, Ordering::SeqCst);
        let _ = self.events.send(Event::Fault { generation: generation.clone(), reason: reason.to_string() });
    }

    fn set_state(&self, s: State) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn is_shutdown(&self) -> bool {
        matches!(&*self.state.read().unwrap_or_else(|p| p.into_inner()), State::Shutdown)
    }

    /// Loads and initialises the module, finds the token, logs in, re-finds the known keys by
    /// CKA_ID and starts the workers.
    fn open_generation(self: &Arc<Self>) -> Result<Arc<Generation>, Error> {
        let cfg = &self.cfg;
        let pkcs11 = Pkcs11::new(&cfg.module).map_err(|e| Error::ModuleNotFound {
            path: cfg.module.clone(),
            detail: one_line(&e.to_string()),
        })?;
        let mut ours = true;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // Someone else in this process initialised it (a second handle in tests/benches).
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => ours = false,
            Err(e) => return Err(ck_error("C_Initialize", &e)),
        }
        let result = self.build_generation(&pkcs11);
        match result {
            Ok(g) => {
                if ours {
                    self.initialised_by_us.store(true, Ordering::SeqCst);
                }
                Ok(g)
            }
            Err(e) => {
                if ours {
                    let _ = pkcs11.finalize();
                }
                Err(e)
            }
        }
    }

    fn build_generation(self: &Arc<Self>, pkcs11: &Pkcs11) -> Result<Arc<Generation>, Error> {
        let cfg = &self.cfg;
        let slots = pkcs11.get_slots_with_token().map_err(|e| ck_error("C_GetSlotList", &e))?;
        let mut available = Vec::new();
        let mut found = None;
        for slot in slots {
            // A slot whose token cannot be read right now is skipped, not fatal.
            let Ok(info) = pkcs11.get_token_info(slot) else {
                continue;
            };
            if info.label() == cfg.token_label && found.is_none() {
                found = Some((slot, info));
            } else if !info.label().is_empty() {
                available.push(info.label().to_string());
            }
        }
        let Some((slot, info)) = found else {
            return Err(Error::TokenNotFound { label: cfg.token_label.clone(), available });
        };
        if info.user_pin_locked() {
            return Err(Error::PinLocked);
        }
        if !info.user_pin_initialized() {
            return Err(Error::PinNotInitialised);
        }
        if info.user_pin_final_try() {
            log::warn!("the HSM reports one user PIN attempt left before it locks; logging in once");
        }
        let keeper = pkcs11.open_ro_session(slot).map_err(|e| ck_error("C_OpenSession", &e))?;
        self.counters.pin_attempts.fetch_add(1, Ordering::Relaxed);
        LOGIN_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
        match keeper.login(UserType::User, Some(&self.pin.auth_pin())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(ck_error("C_Login", &e)),
        }
        // Size the pool: the configured size (default: CPUs), capped by the token's session
        // limit less the keeper and admin sessions.
        let wanted = cfg
            .pool_size
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        let cap = match info.max_session_count() {
            Limit::Max(n) => usize::try_from(n).unwrap_or(usize::MAX).saturating_sub(2),
            Limit::Infinite | Limit::Unavailable => usize::MAX,
        };
        if matches!(info.max_rw_session_count(), Limit::Max(0)) {
            return Err(Error::Refused {
                op: "open sessions",
                rv: "the token allows no read/write session, so keys cannot be generated".into(),
            });
        }
        let pool_size = wanted.min(cap).max(1);
        if pool_size < wanted {
            log::warn!("HSM token allows {cap} signing sessions; pool reduced from {wanted}");
        }

        // Handles from the previous generation are void: look the known keys up again by CKA_ID.
        let id = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let known: Vec<(String, Vec<u8>)> = self
            .keys
            .read()
            .map(|k| k.iter().map(|(l, c)| (l.clone(), c.info.id.clone())).collect())
            .unwrap_or_default();
        for (label, key_id) in known {
            let found = keeper
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(key_id)])
                .map_err(|e| ck_error("C_FindObjects", &e))?;
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            match found.as_slice() {
                [h] => {
                    if let Some(c) = keys.get_mut(&label) {
                        c.handle = Some((id, *h));
                    }
                }
                _ => {
                    log::error!(
                        "key {label:?} is no longer on the token after re-initialisation ({} match(es) for its CKA_ID)",
                        found.len()
                    );
                    keys.remove(&label);
                }
            }
        }

        let generation = Arc::new(Generation {
            id,
            pkcs11: pkcs11.clone(),
            slot,
            pool_size,
            keeper: Mutex::new(Some(keeper)),
            sign_jobs: JobQueue::default(),
            admin_jobs: JobQueue::default(),
            stopping: AtomicBool::new(false),
            gate: Mutex::new(Gate::default()),
            gate_cv: Condvar::new(),
            workers: Mutex::new(Vec::new()),
            abandoned: AtomicUsize::new(0),
        });
        self.spawn_worker(&generation, Kind::Admin)?;
        for _ in 0..pool_size {
            self.spawn_worker(&generation, Kind::Sign)?;
        }
        Ok(generation)
    }

    fn spawn_worker(self: &Arc<Self>, generation: &Arc<Generation>, kind: Kind) -> Result<(), Error> {
        let worker = Arc::new(Worker {
            kind,
            deadline: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let (inner, g, w) = (self.clone(), generation.clone(), worker.clone());
        let name = match kind {
            Kind::Sign => SIGN_THREAD_NAME,
            Kind::Admin => "hsm-admin",
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || worker_main(inner, g, w))
            .map_err(|e| Error::Device { op: "start worker", rv: e.to_string() })?;
        if let Ok(mut t) = worker.thread.lock() {
            *t = Some(thread);
        }
        generation.workers.lock().unwrap_or_else(|p| p.into_inner()).push(worker);
        Ok(())
    }

    /// Stops a generation: no new jobs, drop the queued ones (their callers get `Unavailable`),
    /// let the workers close their sessions, close the keeper (logs out), then `C_Finalize` if
    /// asked. Workers stuck in a call past the deadline are abandoned.
    fn teardown(&self, generation: Arc<Generation>, finalize: bool) {
        // Once `stopping` is set no job can be queued (`JobQueue::push_unless`), so one drain
        // leaves both queues empty for good.
        generation.stopping.store(true, Ordering::SeqCst);
        generation.sign_jobs.clear();
        generation.admin_jobs.clear();
        let deadline = Instant::now() + self.op_timeout + Duration::from_millis(200);
        loop {
            let done = generation
                .workers
                .lock()
                .map(|ws| ws.iter().all(|w| w.abandoned.load(Ordering::SeqCst) || w.finished()))
                .unwrap_or(true);
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(keeper) = generation.keeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = keeper.close();
        }
        {
            let mut g = generation.gate.lock().unwrap_or_else(|p| p.into_inner());
            g.closed = true;
            let wait_until = Instant::now() + self.op_timeout;
            while g.active > 0 {
                let left = wait_until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    log::error!(
                        "{} HSM call(s) still hung at re-initialisation; finalising anyway",
                        g.active
                    );
                    break;
                }
                g = match generation.gate_cv.wait_timeout(g, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        if finalize {
            let _ = generation.pkcs11.clone().finalize();
        }
    }

    /// Abandons workers whose call overran its deadline and starts replacements; escalates to a
    /// re-initialisation when the whole pool is stuck or gone.
    fn watchdog(self: &Arc<Self>) {
        let generation = match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Up(g) => g.clone(),
            _ => return,
        };
        let now = self.now_ns();
        let mut replace = Vec::new();
        let mut live_signers = 0;
        if let Ok(ws) = generation.workers.lock() {
            for w in ws.iter() {
                if w.abandoned.load(Ordering::SeqCst) {
                    continue;
                }
                let dl = w.deadline.load(Ordering::SeqCst);
                if dl != 0 && now > dl {
                    w.abandoned.store(true, Ordering::SeqCst);
                    self.counters.workers_abandoned.fetch_add(1, Ordering::Relaxed);
                    generation.abandoned.fetch_add(1, Ordering::SeqCst);
                    log::warn!(
                        "an HSM call overran {:?}; abandoning its session and starting another",
                        self.op_timeout
                    );
                    replace.push(w.kind);
                } else if w.kind == Kind::Sign && !w.finished() {
                    live_signers += 1;
                }
            }
        }
        if generation.abandoned.load(Ordering::SeqCst) >= generation.pool_size {
            self.report_fault(&generation, "HSM calls hang (every signing session timed out)");
            return;
        }
        for kind in replace {
            if kind == Kind::Sign {
                live_signers += 1;
            }
            if let Err(e) = self.spawn_worker(&generation, kind) {
                log::error!("cannot replace an HSM worker: {e}");
            }
        }
        if live_signers == 0 {
            self.report_fault(&generation, "no signing session could be kept open");
        }
    }
}
