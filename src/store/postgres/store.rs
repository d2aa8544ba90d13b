//! The store in PostgreSQL ([`PgStore`]): its handle, transactions, data keys and health; the
//! batches, queue, results, audit chain and key records in the files beside it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use postgres::error::SqlState;

use super::listen::{Event, Listener};
use super::queue;
use super::{PgError, PgPool, PgSettings};
use crate::store::data_keys::{KeyStock, WRAPPED_VERSION, make_data_key};
use crate::store::seal::{self, DataKey};
use crate::store::{KEY_CACHE, KEY_STOCK, StoreError, StoreOptions};

/// How long a claimed block stays leased to its node before another may take it over: far
/// longer than signing a chunk takes, short enough that a dead node's work resumes soon.
pub(super) const LEASE: Duration = Duration::from_secs(30);
/// A COMMIT waiting this long for the synchronous standby makes readiness red.
pub(super) const SYNC_STALL: Duration = Duration::from_secs(5);
/// How long the cluster-wide queue count may be reused before it is read again.
const QUEUED_TTL: Duration = Duration::from_millis(500);
/// Attempts of a transaction that met a serialisation failure or a deadlock.
const TX_ATTEMPTS: u32 = 5;

/// The PostgreSQL store. Cheap to clone (an `Arc` inside), `Send + Sync`; every call is
/// synchronous and may block on the network, so async callers run it on blocking threads.
#[derive(Clone)]
pub struct PgStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) pool: PgPool,
    /// For the listening connection ([`PgStore::watch`]).
    settings: PgSettings,
    /// Hears the other nodes' changes once watched; stopped when the store closes.
    listener: Mutex<Option<Listener>>,
    pub(super) options: StoreOptions,
    /// This process, as lease holder (host, pid and a random part: a restarted daemon is
    /// another node, whose predecessor's leases expire).
    pub(super) node: String,
    /// Unwrapped data keys of live batches, by seq.
    pub(super) key_cache: seal::KeyCache<u64>,
    pub(super) key_stock: OnceLock<Arc<KeyStock>>,
    /// Blocks this process leased: the lease token a commit must still hold, the records
    /// handed out and those waiting for the next claim.
    pub(super) leases: Mutex<BTreeMap<(u64, u32), queue::Held>>,
    /// The cluster's queued records as last read, and when.
    pub(super) queued: Mutex<(u64, Option<Instant>)>,
    pub(super) corrupt_records: AtomicU64,
    pub(super) expired_unsigned: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(lock(&self.listener).take());
        if let Some(stock) = self.key_stock.get() {
            stock.stop();
        }
        self.give_back_leases();
    }
}

impl Inner {
    /// Blocks still leased here go back at once rather than when their leases expire, so a
    /// node that stops (or restarts) strands nothing for the others.
    pub(super) fn give_back_leases(&self) {
        let held = std::mem::take(&mut *lock(&self.leases));
        if held.is_empty() {
            return;
        }
        let (blocks, tokens): (Vec<(u64, u32)>, Vec<i64>) = held.iter().map(|(b, h)| (*b, h.token())).unzip();
        let (seqs, firsts) = queue::split(&blocks);
        let given = self.pool.run(|c| {
            c.execute(
                "UPDATE pending p SET lease_token = NULL, lease_until = NULL
                 FROM unnest($1::bigint[], $2::integer[], $3::bigint[]) AS u(s, b, t)
                 WHERE p.batch_seq = u.s AND p.block = u.b AND p.lease_token = u.t",
                &[&seqs, &firsts, &tokens],
            )
        });
        if let Err(e) = given {
            log::warn!(
                "store: {} leased block(s) not given back, their leases will expire: {e}",
                blocks.len()
            );
        }
    }
}

impl PgStore {
    /// Connects to the database, applies the store's migrations (refusing a schema this
    /// binary does not know) and returns the store.
    pub fn open(settings: PgSettings, options: StoreOptions) -> Result<Self, StoreError> {
        let pool = super::open(settings.clone()).map_err(store_error)?;
        let node = format!("{}/{}/{:08x}", hostname(), std::process::id(), random_i64()? as u32);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                settings,
                listener: Mutex::new(None),
                options,
                node,
                key_cache: seal::KeyCache::new(KEY_CACHE),
                key_stock: OnceLock::new(),
                leases: Mutex::new(BTreeMap::new()),
                queued: Mutex::new((0, None)),
                corrupt_records: AtomicU64::new(0),
                expired_unsigned: AtomicU64::new(0),
            }),
        })
    }

    /// The database, for messages (no password).
    pub fn location(&self) -> String {
        self.inner.pool.describe().to_owned()
    }

    /// Runs `f` in a transaction and commits, retrying on a serialisation failure or deadlock;
    /// a connection that failed is dropped, so the next attempt opens a new one (a failover).
    pub(super) fn tx<T>(
        &self,
        mut f: impl FnMut(&mut postgres::Transaction<'_>) -> Result<T, TxError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.inner.pool.get().map_err(store_error)?;
            let warnings = client.warnings();
            let outcome = (|| {
                let mut tx = client.transaction()?;
                let value = f(&mut tx)?;
                // The statement timeout must not end a COMMIT's wait for the synchronous standby:
                // PostgreSQL would then report the commit as done (with only a WARNING) before the
                // standby has it, and a 202 would not survive the loss of the primary. Without a
                // standby the commit waits as long as PostgreSQL makes it.
                tx.batch_execute("SET LOCAL statement_timeout = 0")?;
                warnings.take();
                tx.commit()?;
                // An administrator can still cancel that wait (pg_cancel_backend): the COMMIT
                // then succeeds with a WARNING, committed on this server only. Not durable as
                // promised, so not reported as done: the caller answers 503 and the client's
                // retry (same Idempotency-Key) finds the batch, or submits it again if this
                // server is lost.
                let said = warnings.take();
                if !said.is_empty() {
                    return Err(TxError::Unconfirmed(said.join("; ")));
                }
                Ok(value)
            })();
            match outcome {
                Ok(v) => return Ok(v),
                Err(TxError::Abort(e)) => return Err(e),
                Err(TxError::Unconfirmed(said)) => {
                    client.discard();
                    return Err(StoreError::Unreachable(format!(
                        "a COMMIT ended with a warning and may exist on {} only, not yet replicated: {said}",
                        self.inner.pool.describe()
                    )));
                }
                Err(TxError::Db(e)) => {
                    let retry = matches!(
                        e.code(),
                        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
                    );
                    let error = client.fail(&e);
                    if retry && attempt < TX_ATTEMPTS {
                        continue;
                    }
                    return Err(store_error(error));
                }
            }
        }
    }

    /// Runs one read outside an explicit transaction.
    pub(super) fn read<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.inner.pool.run(f).map_err(store_error)
    }

    // Crypto-shredding: the same data keys as every backend, wrapped ones in `batches`.

    fn key_wrap(&self) -> Result<&Arc<dyn seal::KeyWrap>, StoreError> {
        self.inner.options.key_wrap.as_ref().ok_or(StoreError::NoKeyWrap)
    }

    /// A new batch's data key and its stored form, from the stock when it has one.
    pub(super) fn new_data_key(&self) -> Result<(Arc<DataKey>, Vec<u8>), StoreError> {
        let kek = self.key_wrap()?;
        if let Some(stock) = self.inner.key_stock.get()
            && let Some(made) = stock.take()
        {
            return Ok(made);
        }
        Ok(make_data_key(kek.as_ref())?)
    }

    /// The data key of batch `seq` from its stored form, unwrapped once per process.
    pub(super) fn data_key(&self, seq: u64, stored: &[u8]) -> Result<Arc<DataKey>, StoreError> {
        let kek = self.key_wrap()?;
        self.inner.key_cache.get_or_load(seq, || match stored.split_first() {
            Some((&WRAPPED_VERSION, wrapped)) => Ok(Arc::new(DataKey::unwrap(kek.as_ref(), wrapped)?)),
            _ => Err(StoreError::Corrupt(format!("batch {seq}: wrapped data key of unknown format"))),
        })
    }

    /// The KEK label this store was set up with (`None` before the first start).
    pub fn pinned_kek(&self) -> Result<Option<String>, StoreError> {
        let v = self.read(|c| {
            c.query_opt("SELECT value FROM hcert_meta WHERE key = 'kek_label'", &[])
                .map(|r| r.map(|r| r.get::<_, Vec<u8>>(0)))
        })?;
        v.map(|v| {
            String::from_utf8(v).map_err(|_| StoreError::Corrupt("the pinned KEK label is not UTF-8".into()))
        })
        .transpose()
    }

    /// Records the KEK label at first start; refuses another label later.
    pub fn pin_kek(&self, label: &str) -> Result<(), StoreError> {
        let current = self.tx(|tx| {
            tx.execute(
                "INSERT INTO hcert_meta (key, value) VALUES ('kek_label', $1) ON CONFLICT (key) DO NOTHING",
                &[&label.as_bytes()],
            )?;
            Ok(tx
                .query_one("SELECT value FROM hcert_meta WHERE key = 'kek_label'", &[])?
                .get::<_, Vec<u8>>(0))
        })?;
        if current == label.as_bytes() {
            Ok(())
        } else {
            Err(StoreError::Conflict("the store is pinned to another KEK label"))
        }
    }

    /// Starts keeping data keys made ahead (see the sled backend). Idempotent.
    pub fn start_key_stock(&self) -> Result<(), StoreError> {
        let kek = self.key_wrap()?.clone();
        self.inner.key_stock.get_or_init(|| KeyStock::start(kek, KEY_STOCK));
        Ok(())
    }

    /// Stops the stock and waits for its thread.
    pub fn stop_key_stock(&self) {
        if let Some(stock) = self.inner.key_stock.get() {
            stock.stop();
        }
    }

    /// Data keys made ahead and waiting.
    pub fn stocked_data_keys(&self) -> usize {
        self.inner.key_stock.get().map_or(0, |s| s.len())
    }

    /// Hears what the other nodes change: key records and CSCAs (`hcert_keys`, so a rotation
    /// through any node takes effect on every node within seconds) and new batches
    /// (`hcert_work`, so an idle node starts signing at once); after every (re)connection,
    /// both, since what was sent meanwhile is lost.
    pub fn watch(&self, on_change: crate::store::OnChange) {
        use crate::store::Change;
        let started =
            Listener::start(self.inner.settings.clone(), &["hcert_keys", "hcert_work"], move |event| {
                match event {
                    Event::Listening => {
                        on_change(Change::Keys);
                        on_change(Change::Work);
                    }
                    Event::Notified { channel, .. } if channel == "hcert_keys" => on_change(Change::Keys),
                    Event::Notified { .. } => on_change(Change::Work),
                }
            });
        match started {
            Ok(listener) => *lock(&self.inner.listener) = Some(listener),
            // Not fatal: keys are then read again at a restart, work found by polling.
            Err(e) => log::error!("store: cannot listen for the cluster's changes: {e}"),
        }
    }

    /// Readiness: the database answers (a primary that accepts writes).
    pub fn check(&self) -> Result<(), StoreError> {
        let read_only: String =
            self.read(|c| c.query_one("SHOW transaction_read_only", &[]).map(|r| r.get(0)))?;
        if read_only == "on" {
            return Err(StoreError::Unreachable(
                "connected to a read-only standby; waiting for a primary".into(),
            ));
        }
        // A primary whose synchronous standby is gone accepts connections and queries but no
        // COMMIT returns: nothing can be accepted or signed, though every check above passes.
        // The store's sessions (one role for the cluster, so this sees every node's) tell.
        let stalled: i64 = self.read(|c| {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event = 'SyncRep' AND now() - query_start > make_interval(secs => $1)",
                &[&SYNC_STALL.as_secs_f64()],
            )
            .map(|r| r.get(0))
        })?;
        if stalled > 0 {
            return Err(StoreError::Unreachable(format!(
                "{stalled} commit(s) have waited over {} s for the synchronous standby (synchronous_standby_names): it is down or far behind; writes resume when it is back",
                SYNC_STALL.as_secs()
            )));
        }
        Ok(())
    }
}

/// A transaction's failure: the database's (maybe retried), or ours (never retried).
pub(super) enum TxError {
    Db(postgres::Error),
    Abort(StoreError),
    /// The COMMIT returned with a WARNING (these): its durability is unknown, never retried.
    Unconfirmed(String),
}

impl From<postgres::Error> for TxError {
    fn from(e: postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Abort(e)
    }
}

impl From<seal::SealError> for TxError {
    fn from(e: seal::SealError) -> Self {
        Self::Abort(e.into())
    }
}

/// A database failure as the store reports it: an outage (503, retried by itself) or a refusal.
pub(super) fn store_error(e: PgError) -> StoreError {
    if e.is_unavailable() {
        StoreError::Unreachable(e.to_string())
    } else {
        StoreError::Database(e.to_string())
    }
}

pub(super) fn random_i64() -> Result<i64, StoreError> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| StoreError::Io("the system random generator failed".into()))?;
    Ok(i64::from_be_bytes(b))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "node".into(), |h| h.trim().to_owned())
}

/// A count from the database (never negative) as the store's unsigned types.
pub(super) fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Locks a mutex whose data stays consistent under a panic (single inserts and removes).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The calendar clock (audit entry times, tombstones).
pub(super) fn unix_now() -> i64 {
    crate::store::unix_now()
}

impl PgStore {
    /// Records accepted and not yet resolved, cluster-wide (read at most every 500 ms).
    pub fn queued_records(&self) -> u64 {
        let mut q = lock(&self.inner.queued);
        if q.1.is_some_and(|at| at.elapsed() < QUEUED_TTL) {
            return q.0;
        }
        let read = self.read(|c| {
            c.query_one("SELECT coalesce(sum(total - signed - rejected), 0)::bigint FROM batches", &[])
                .map(|r| r.get::<_, i64>(0))
        });
        match read {
            Ok(n) => *q = (count(n), Some(Instant::now())),
            // The last count stands while the database is away (readiness reports the outage).
            Err(e) => log::debug!("store: cannot count the queue: {e}"),
        }
        q.0
    }

    /// Forgets the cached queue count (after this process changed it).
    pub(super) fn queue_changed(&self) {
        lock(&self.inner.queued).1 = None;
    }

    pub(super) fn corrupt(&self, n: u64) {
        self.inner.corrupt_records.fetch_add(n, Ordering::Relaxed);
    }
}
