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

use super::{
    Backend, BackendStats, Check, Error, KeyInfo, P256_EC_PARAMS, PendingSignatures, Pin, Pkcs11Config,
};

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

fn supervisor_main(
    inner: Arc<Inner>,
    events: flume::Receiver<Event>,
    ready: flume::Sender<Result<(), Error>>,
) {
    match inner.open_generation() {
        Ok(g) => {
            inner.set_state(State::Up(g));
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            inner.set_state(State::Failed(e.clone()));
            let _ = ready.send(Err(e));
            return;
        }
    }
    let tick = (inner.op_timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        match events.recv_timeout(tick) {
            Ok(Event::Fault { generation, reason }) => {
                inner.teardown(generation, true);
                if !recover(&inner, &events, &reason) {
                    return;
                }
            }
            Ok(Event::Shutdown(ack)) => {
                shutdown(&inner);
                let _ = ack.send(());
                return;
            }
            Err(flume::RecvTimeoutError::Timeout) => inner.watchdog(),
            Err(flume::RecvTimeoutError::Disconnected) => {
                shutdown(&inner);
                return;
            }
        }
    }
}

fn shutdown(inner: &Arc<Inner>) {
    let old =
        std::mem::replace(&mut *inner.state.write().unwrap_or_else(|p| p.into_inner()), State::Shutdown);
    if let State::Up(g) = old {
        inner.teardown(g, inner.initialised_by_us.load(Ordering::SeqCst));
    }
}

/// Re-initialises with exponential backoff until it works, a PIN error stops it, the attempt
/// limit is reached, or shutdown is asked. Returns false when the supervisor should exit.
fn recover(inner: &Arc<Inner>, events: &flume::Receiver<Event>, reason: &str) -> bool {
    let cfg = &inner.cfg;
    let mut delay = Duration::from_millis(cfg.reinit_backoff_ms);
    let max = Duration::from_millis(cfg.reinit_backoff_max_ms);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if inner.is_shutdown() {
            return false;
        }
        inner.set_state(State::Recovering { reason: reason.to_string(), attempts });
        match inner.open_generation() {
            Ok(g) => {
                inner.counters.reinits.fetch_add(1, Ordering::Relaxed);
                log::info!("HSM session pool re-initialised after {attempts} attempt(s)");
                inner.set_state(State::Up(g));
                return true;
            }
            Err(e) if e.is_pin_error() => {
                inner.counters.reinit_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("HSM re-initialisation stopped: {e}");
                inner.set_state(State::Failed(e));
                return true;
            }
            Err(e) => {
                inner.counters.reinit_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("HSM re-initialisation attempt {attempts} failed: {e}; next attempt in {delay:?}");
                if cfg.reinit_max_attempts.is_some_and(|m| attempts >= m) {
                    inner.set_state(State::Failed(Error::Failed {
                        reason: format!("gave up re-initialising after {attempts} attempts: {e}"),
                    }));
                    return true;
                }
            }
        }
        // Sleep by waiting for events, so a shutdown is not delayed by the backoff.
        match events.recv_timeout(delay) {
            Ok(Event::Shutdown(ack)) => {
                inner.set_state(State::Shutdown);
                let _ = ack.send(());
                return false;
            }
            // A fault from a generation that is already gone: nothing to do.
            Ok(Event::Fault { .. }) | Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return false,
        }
        delay = (delay * 2).min(max);
    }
}

fn worker_main(inner: Arc<Inner>, generation: Arc<Generation>, me: Arc<Worker>) {
    let session = {
        let Some(_gate) = generation.enter() else {
            return;
        };
        me.deadline.store(inner.now_ns() + nanos(inner.op_timeout), Ordering::SeqCst);
        let s = match me.kind {
            Kind::Sign => generation.pkcs11.open_ro_session(generation.slot),
            Kind::Admin => generation.pkcs11.open_rw_session(generation.slot),
        };
        me.deadline.store(0, Ordering::SeqCst);
        match s {
            Ok(s) => s,
            Err(e) => {
                let err = ck_error("C_OpenSession", &e);
                log::error!("cannot open an HSM session: {err}");
                if is_fault(&e) {
                    inner.report_fault(&generation, &format!("C_OpenSession: {}", rv_name(&e)));
                }
                return;
            }
        }
    };
    inner.counters.sessions_open.fetch_add(1, Ordering::Relaxed);
    let queue = match me.kind {
        Kind::Sign => &generation.sign_jobs,
        Kind::Admin => &generation.admin_jobs,
    };
    let ctx = Ctx { inner: &inner, generation: &generation };
    loop {
        if generation.stopping.load(Ordering::SeqCst) || me.abandoned.load(Ordering::SeqCst) {
            break;
        }
        // The timeout only bounds how late a worker notices `stopping` or its abandonment.
        if let Some(job) = queue.pop(Duration::from_millis(50)) {
            let Some(_gate) = generation.enter() else {
                break;
            };
            let budget = inner.op_timeout.saturating_mul(job.calls.max(1));
            me.deadline.store(inner.now_ns().saturating_add(nanos(budget)), Ordering::SeqCst);
            (job.run)(&session, &ctx);
            me.deadline.store(0, Ordering::SeqCst);
        }
    }
    inner.counters.sessions_open.fetch_sub(1, Ordering::Relaxed);
    // Close our session, unless the module was finalised under us (an abandoned worker coming
    // back late): its handle number may by now belong to a session of the next generation.
    match generation.enter() {
        Some(_gate) => {
            let _ = session.close();
        }
        None => std::mem::forget(session),
    }
}

/// PKCS#11 calls a signing job makes: C_SignInit plus two C_Sign per digest (cryptoki asks the
/// length first), plus a key look-up.
fn sign_calls(digests: usize) -> u32 {
    u32::try_from(digests.saturating_mul(3).saturating_add(2)).unwrap_or(u32::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Ctx<'_> {
    /// Maps a cryptoki error, and reports it to the supervisor if it is a device/session fault.
    fn fail(&self, op: &'static str, e: CkError) -> Error {
        if is_fault(&e) {
            self.inner.report_fault(self.generation, &format!("{op}: {}", rv_name(&e)));
        }
        ck_error(op, &e)
    }

    /// The private-key handle for `label` in this generation, from the cache or looked up (by
    /// CKA_ID when the key is known, else by label).
    fn private_handle(&self, s: &Session, label: &str) -> Result<ObjectHandle, Error> {
        if let Some((g, h)) = self.inner.keys.read().ok().and_then(|k| k.get(label).and_then(|c| c.handle))
            && g == self.generation.id
        {
            return Ok(h);
        }
        self.locate(s, label).map(|(_, h)| h)
    }

    /// Finds `label`'s key pair on the token, records it in the cache, and returns it with the
    /// private-key handle. Not finding it is checked against the token being there at all, so
    /// a vanished token is a fault and not a "key not found".
    fn locate(&self, s: &Session, label: &str) -> Result<(KeyInfo, ObjectHandle), Error> {
        let known_id = self.inner.keys.read().ok().and_then(|k| k.get(label).map(|c| c.info.id.clone()));
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        match &known_id {
            Some(id) => template.push(Attribute::Id(id.clone())),
            None => template.push(Attribute::Label(label.as_bytes().to_vec())),
        }
        let found = s.find_objects(&template).map_err(|e| self.fail("C_FindObjects", e))?;
        let private = match found.as_slice() {
            [h] => *h,
            [] => {
                // Empty result: is the token still there?
                self.generation
                    .pkcs11
                    .get_token_info(self.generation.slot)
                    .map_err(|e| self.fail("C_GetTokenInfo", e))?;
                // And still logged in? Private keys are invisible to a session that lost its
                // login (a C_Logout elsewhere in the process, a token reset): that is a fault to
                // recover from by logging in again, not a missing key.
                let state =
                    s.get_session_info().map_err(|e| self.fail("C_GetSessionInfo", e))?.session_state();
                if matches!(state, SessionState::RoPublic | SessionState::RwPublic) {
                    self.inner.report_fault(self.generation, "the session lost its login");
                    return Err(Error::Device {
                        op: "C_FindObjects",
                        rv: "CKR_USER_NOT_LOGGED_IN (the session lost its login)".into(),
                    });
                }
                if let Ok(mut k) = self.inner.keys.write() {
                    k.remove(label);
                }
                return Err(Error::KeyNotFound { label: label.into() });
            }
            many => {
                return Err(Error::KeyAmbiguous { label: label.into(), count: many.len() });
            }
        };
        let attrs = s
            .get_attributes(private, &[AttributeType::Id, AttributeType::Label, AttributeType::KeyType])
            .map_err(|e| self.fail("C_GetAttributeValue", e))?;
        let mut id = None;
        let mut found_label = None;
        let mut key_type = None;
        for a in attrs {
            match a {
                Attribute::Id(v) => id = Some(v),
                Attribute::Label(v) => found_label = Some(String::from_utf8_lossy(&v).into_owned()),
                Attribute::KeyType(t) => key_type = Some(t),
                _ => {}
            }
        }
        if key_type != Some(KeyType::EC) {
            return Err(Error::UnsupportedKey { label: label.into(), detail: "not an EC key".into() });
        }
        if found_label.as_deref() != Some(label) {
            // Found by a stale CKA_ID that now belongs to a relabelled key.
            if let Ok(mut k) = self.inner.keys.write() {
                k.remove(label);
            }
            return Err(Error::KeyNotFound { label: label.into() });
        }
        let id = id.unwrap_or_default();
        let public_key = self.public_key_for(s, label, &id)?;
        let info = KeyInfo { label: label.to_string(), id, public_key };
        if let Ok(mut k) = self.inner.keys.write() {
            k.insert(
                label.to_string(),
                CachedKey { info: info.clone(), handle: Some((self.generation.id, private)) },
            );
        }
        Ok((info, private))
    }

    /// Reads the public point of the public-key object sharing the private key's CKA_ID (or,
    /// without an id, its label).
    fn public_key_for(&self, s: &Session, label: &str, id: &[u8]) -> Result<p256::PublicKey, Error> {
        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
        if id.is_empty() {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(id.to_vec()));
        }
        let found = s.find_objects(&template).map_err(|e| self.fail("C_FindObjects", e))?;
        let [public] = found.as_slice() else {
            return Err(Error::UnsupportedKey {
                label: label.into(),
                detail: format!("{} public-key objects share its CKA_ID (need exactly one)", found.len()),
            });
        };
        read_public_key(s, *public).map_err(|e| match e {
            ReadPoint::Ck(op, e) => self.fail(op, e),
            ReadPoint::Bad(detail) => Error::UnsupportedKey { label: label.into(), detail },
        })
    }

    /// Signs `digests` in order (raw `r‖s`, unverified); stops at the first error.
    fn sign(&self, s: &Session, label: &str, digests: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, Error> {
        let mut out = Vec::with_capacity(digests.len());
        let mut handle = self.private_handle(s, label)?;
        let mut refreshed = false;
        for digest in digests {
            let sig = match s.sign(&Mechanism::Ecdsa, handle, digest) {
                Ok(sig) => sig,
                Err(CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _))
                    if !refreshed =>
                {
                    // The token renumbered its objects: look the key up again by CKA_ID once.
                    refreshed = true;
                    if let Ok(mut k) = self.inner.keys.write()
                        && let Some(c) = k.get_mut(label)
                    {
                        c.handle = None;
                    }
                    handle = self.locate(s, label)?.1;
                    s.sign(&Mechanism::Ecdsa, handle, digest).map_err(|e| self.fail("C_Sign", e))?
                }
                Err(e) => return Err(self.fail("C_Sign", e)),
            };
            let raw: [u8; 64] = sig.as_slice().try_into().map_err(|_| {
                self.inner.report_fault(
                    self.generation,
                    &format!("C_Sign returned {} bytes for a P-256 signature", sig.len()),
                );
                Error::Device { op: "C_Sign", rv: format!("{}-byte signature, expected 64", sig.len()) }
            })?;
            out.push(raw);
        }
        Ok(out)
    }

    fn generate(&self, s: &Session, label: &str) -> Result<KeyInfo, Error> {
        let existing = s
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .map_err(|e| self.fail("C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(Error::KeyExists { label: label.into() });
        }
        let mut id = vec![0u8; 16];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| Error::Device { op: "generate key", rv: "no randomness for CKA_ID".into() })?;
        let label_bytes = label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            // Verify only: SoftHSM otherwise marks the public half encrypt/wrap by default.
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
            Attribute::Label(label_bytes.clone()),
            Attribute::Id(id.clone()),
        ];
        // Sign-only, sensitive, never extractable: the DSC private key cannot leave the token,
        // nor be used to decrypt, derive or unwrap.
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
            Attribute::Label(label_bytes),
            Attribute::Id(id.clone()),
        ];
        let (public, private) = s
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public_template, &private_template)
            .map_err(|e| self.fail("C_GenerateKeyPair", e))?;
        // Trust but verify: a token that silently ignored the protection attributes must not
        // get to keep a DSC key.
        let protection = s
            .get_attributes(private, &[AttributeType::Sensitive, AttributeType::Extractable])
            .map_err(|e| self.fail("C_GetAttributeValue", e))?;
        let protected = protection.iter().any(|a| matches!(a, Attribute::Sensitive(true)))
            && protection.iter().any(|a| matches!(a, Attribute::Extractable(false)));
        if !protected {
            let _ = s.destroy_object(private);
            let _ = s.destroy_object(public);
            return Err(Error::Refused {
                op: "generate key",
                rv: "the token did not keep CKA_SENSITIVE=true / CKA_EXTRACTABLE=false; key destroyed".into(),
            });
        }
        let public_key = read_public_key(s, public).map_err(|e| match e {
            ReadPoint::Ck(op, e) => self.fail(op, e),
            ReadPoint::Bad(detail) => Error::UnsupportedKey { label: label.into(), detail },
        })?;
        let info = KeyInfo { label: label.to_string(), id, public_key };
        if let Ok(mut k) = self.inner.keys.write() {
            k.insert(
                label.to_string(),
                CachedKey { info: info.clone(), handle: Some((self.generation.id, private)) },
            );
        }
        log::info!("generated P-256 key {label:?} in the HSM");
        Ok(info)
    }

    fn list(&self, s: &Session) -> Result<Vec<KeyInfo>, Error> {
        let privates = s
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::KeyType(KeyType::EC)])
            .map_err(|e| self.fail("C_FindObjects", e))?;
        let mut out = Vec::new();
        for h in privates {
            let attrs = s
                .get_attributes(h, &[AttributeType::Label, AttributeType::Id])
                .map_err(|e| self.fail("C_GetAttributeValue", e))?;
            let mut label = String::new();
            let mut id = Vec::new();
            for a in attrs {
                match a {
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Id(v) => id = v,
                    _ => {}
                }
            }
            // Keys of other curves, or without a public half, are not DSC keys of ours.
            match self.public_key_for(s, &label, &id) {
                Ok(public_key) => out.push(KeyInfo { label, id, public_key }),
                Err(Error::UnsupportedKey { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }
}

enum ReadPoint {
    Ck(&'static str, CkError),
    Bad(String),
}

/// Reads `CKA_EC_PARAMS` and `CKA_EC_POINT` of a public-key object; accepts the point DER-wrapped
/// in an OCTET STRING (as PKCS#11 specifies) or raw (as some modules return it).
fn read_public_key(s: &Session, public: ObjectHandle) -> Result<p256::PublicKey, ReadPoint> {
    let attrs = s
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| ReadPoint::Ck("C_GetAttributeValue", e))?;
    let mut params = None;
    let mut point = None;
    for a in attrs {
        match a {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    if params.as_deref() != Some(&P256_EC_PARAMS[..]) {
        return Err(ReadPoint::Bad("not on the P-256 curve".into()));
    }
    let point = point.ok_or_else(|| ReadPoint::Bad("no CKA_EC_POINT".into()))?;
    let raw = match point.as_slice() {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && rest.first() == Some(&0x04) => rest,
        other => other,
    };
    p256::PublicKey::from_sec1_bytes(raw)
        .map_err(|_| ReadPoint::Bad("CKA_EC_POINT is not a valid P-256 point".into()))
}

/// Device and session faults: the module or token is in trouble and the pool must be rebuilt.
fn is_fault(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::GeneralError
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// `CKR_DEVICE_ERROR` from `RvError::DeviceError` (cryptoki's Display is a paragraph of prose).
fn rv_name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(RvError::VendorDefined(code), _) => {
            format!("CKR_VENDOR_DEFINED({code:#x})")
        }
        CkError::Pkcs11(RvError::UnknownErrorCode(code), _) => format!("CKR_UNKNOWN({code:#x})"),
        CkError::Pkcs11(rv, _) => {
            let name = format!("{rv:?}");
            let mut out = String::from("CKR");
            for c in name.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
        other => one_line(&other.to_string()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Maps a cryptoki error to ours; no PIN can appear in any of these.
fn ck_error(op: &'static str, e: &CkError) -> Error {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _) => {
            Error::PinIncorrect
        }
        CkError::Pkcs11(RvError::PinLocked, _) => Error::PinLocked,
        CkError::Pkcs11(RvError::PinExpired, _) => Error::PinExpired,
        CkError::Pkcs11(RvError::UserPinNotInitialized, _) => Error::PinNotInitialised,
        e if is_fault(e) => Error::Device { op, rv: rv_name(e) },
        // FUNCTION_FAILED may succeed on retry (PKCS#11 says so) but is no reason to reset.
        CkError::Pkcs11(RvError::FunctionFailed | RvError::HostMemory, _) => {
            Error::Device { op, rv: rv_name(e) }
        }
        CkError::LibraryLoading(_) => Error::Device { op, rv: rv_name(e) },
        e => Error::Refused { op, rv: rv_name(e) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn rv_names_are_pkcs11_names() {
        let e = CkError::Pkcs11(RvError::DeviceError, Function::Sign);
        assert_eq!(rv_name(&e), "CKR_DEVICE_ERROR");
        let e = CkError::Pkcs11(RvError::CryptokiNotInitialized, Function::Sign);
        assert_eq!(rv_name(&e), "CKR_CRYPTOKI_NOT_INITIALIZED");
    }

    #[test]
    fn classification() {
        let f = |rv| CkError::Pkcs11(rv, Function::Sign);
        for rv in [
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::GeneralError,
            RvError::CryptokiNotInitialized,
        ] {
            assert!(is_fault(&f(rv)), "{rv:?}");
            assert!(ck_error("sign", &f(rv)).is_transient(), "{rv:?}");
        }
        assert!(matches!(ck_error("login", &f(RvError::PinIncorrect)), Error::PinIncorrect));
        assert!(matches!(ck_error("login", &f(RvError::PinLocked)), Error::PinLocked));
        assert!(!is_fault(&f(RvError::PinIncorrect)));
        assert!(!ck_error("sign", &f(RvError::MechanismInvalid)).is_transient());
    }

    /// Runs `body` with the config of a fresh SoftHSM2 token, in a child process of this test
    /// binary whose `SOFTHSM2_CONF` names it (SoftHSM reads it at `C_Initialize`, and setting a
    /// variable in this process is `unsafe`).
    fn with_softhsm_token(test: &str, body: impl FnOnce(Pkcs11Config)) {
        const CHILD: &str = "HCERT_PKCS11_UNIT_TOKEN";
        const MODULES: [&str; 3] = [
            "/usr/lib/softhsm/libsofthsm2.so",
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        ];
        if let Some(dir) = std::env::var_os(CHILD) {
            let module = MODULES.iter().find(|m| std::path::Path::new(m).exists()).expect("SoftHSM2 module");
            let pin = std::path::PathBuf::from(dir).join("pin");
            let mut cfg = Pkcs11Config::new(*module, "unit", super::super::PinSource::File(pin));
            cfg.pool_size = Some(2);
            cfg.op_timeout_ms = 3000;
            cfg.reinit_backoff_ms = 50;
            cfg.reinit_backoff_max_ms = 400;
            return body(cfg);
        }
        assert!(
            MODULES.iter().any(|m| std::path::Path::new(m).exists()),
            "SoftHSM2 is not installed (apt-get install softhsm2 opensc)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = super::super::softhsm::init_token(dir.path(), "unit", "so-pin-5678", "user-pin-1234")
            .expect("softhsm2-util --init-token");
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "user-pin-1234\n").expect("pin");
        std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env("SOFTHSM2_CONF", conf)
            .env(CHILD, dir.path())
            .status()
            .expect("re-run the test with SOFTHSM2_CONF set");
        assert!(status.success(), "{test} failed in its token process ({status})");
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A signature that fails its check (run by the caller, after the pool answered) must never
    /// be released, and must reset the generation that made it, after which signing resumes.
    #[test]
    fn a_signature_failing_its_check_resets_the_pool() {
        with_softhsm_token("hsm::pkcs11::tests::a_signature_failing_its_check_resets_the_pool", |cfg| {
            use super::super::{Hsm, sha256};
            let backend = Pkcs11Backend::open(&cfg).expect("open the token");
            let hsm = Hsm::from_backend(backend.clone());
            hsm.generate_key("unit-a").expect("generate");
            let other = hsm.generate_key("unit-b").expect("generate");
            let items: Vec<(Vec<u8>, [u8; 32])> =
                (0..64u8).map(|i| vec![i; 40]).map(|m| (m.clone(), sha256(&m))).collect();
            assert_eq!(hsm.sign_many("unit-a", &items).expect("sign").len(), 64);

            // Make the cached verifier of unit-a the key of unit-b: every signature now fails.
            let wrong = hsm.inner.shared.verifiers.read().expect("cache").get("unit-a").cloned();
            assert!(wrong.is_some());
            hsm.sign("unit-b", b"warm", &sha256(b"warm")).expect("sign with unit-b");
            let b = hsm.inner.shared.verifiers.read().expect("cache").get("unit-b").cloned();
            hsm.inner.shared.verifiers.write().expect("cache").insert("unit-a".into(), b.expect("cached"));
            let e = hsm.sign_many("unit-a", &items).expect_err("signatures checked with the wrong key");
            assert!(matches!(e, Error::BadSignature { .. }), "{e:?}");
            let stats = hsm.stats();
            assert_eq!(stats.signatures, 65, "nothing of the failed batch released: {stats:?}");
            assert!(stats.bad_signatures >= 1 && stats.backend.faults >= 1, "{stats:?}");
            assert!(
                !hsm.inner.shared.verifiers.read().expect("cache").contains_key("unit-a"),
                "stale key kept"
            );

            // The generation is rebuilt and the right key is read again.
            assert!(
                wait_for(|| backend.stats().available && backend.stats().reinits >= 1),
                "{:?}",
                hsm.stats()
            );
            let sigs = hsm.sign_many("unit-a", &items).expect("sign after the reset");
            let vk = p256::ecdsa::VerifyingKey::from(&hsm.public_key("unit-a").expect("pk"));
            for ((m, _), sig) in items.iter().zip(&sigs) {
                use p256::ecdsa::signature::Verifier;
                let sig = p256::ecdsa::Signature::from_slice(sig).expect("sig");
                assert!(vk.verify(m, &sig).is_ok());
            }
            assert_ne!(other.public_key, hsm.public_key("unit-a").expect("pk"));
        });
    }

    #[test]
    fn missing_module_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "1234\n").expect("pin");
        let cfg = Pkcs11Config::new(dir.path().join("nope.so"), "t", super::super::PinSource::File(pin));
        let Err(e) = Pkcs11Backend::open(&cfg) else { panic!("opened a missing module") };
        assert!(matches!(e, Error::ModuleNotFound { .. }));
        assert!(e.to_string().contains("nope.so"), "{e}");
    }
}
