//! Connections to the database: a small pool of synchronous clients, each dropped after a
//! failure so the next use connects anew (to the new primary after a failover), and the store's
//! migrations.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::Duration;

use postgres::NoTls;

use super::{StoreError, db_error, lock};

/// How to reach the database.
#[derive(Clone)]
pub struct PgConfig {
    /// A libpq-style URL or key=value string, without a password.
    pub url: String,
    /// The password, read from its file or credential.
    pub password: Option<zeroize::Zeroizing<String>>,
    /// Connections kept open at most.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig").field("url", &self.url).field("pool_size", &self.pool_size).finish()
    }
}

/// Open clients waiting for their next use.
pub(super) struct Pool {
    config: postgres::Config,
    idle: Mutex<Vec<postgres::Client>>,
    size: usize,
    location: String,
}

impl Pool {
    /// A pool for `config`; connects once, so a wrong URL or password is reported at start.
    pub(super) fn new(config: &PgConfig) -> Result<Self, StoreError> {
        let mut pg: postgres::Config = config
            .url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Database(format!("store.url: {e}")))?;
        if let Some(p) = &config.password {
            pg.password(p.as_bytes());
        }
        pg.connect_timeout(Duration::from_secs(5));
        pg.application_name("hcert-signer");
        let pool = Self {
            location: config.url.clone(),
            config: pg,
            idle: Mutex::new(Vec::new()),
            size: config.pool_size.max(1),
        };
        drop(pool.get()?);
        Ok(pool)
    }

    /// The database, for messages.
    pub(super) fn location(&self) -> String {
        self.location.clone()
    }

    /// An open client: an idle one, or a new connection.
    pub(super) fn get(&self) -> Result<Conn<'_>, StoreError> {
        let reused = lock(&self.idle).pop();
        let client = match reused {
            Some(c) if !c.is_closed() => c,
            _ => self.config.connect(NoTls).map_err(|e| db_error(&e))?,
        };
        Ok(Conn { pool: self, client: Some(client), broken: false })
    }
}

/// A client on loan from the pool; back to it when dropped, unless it failed.
pub(super) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<postgres::Client>,
    broken: bool,
}

impl Conn<'_> {
    /// Notes an error met on this client: a connection-level one retires the client.
    pub(super) fn check(&mut self, e: &postgres::Error) {
        if e.code().is_none() || self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            self.broken = true;
        }
    }
}

impl Deref for Conn<'_> {
    type Target = postgres::Client;

    fn deref(&self) -> &postgres::Client {
        self.client.as_ref().expect("present until dropped")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.client.as_mut().expect("present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !self.broken
            && !c.is_closed()
        {
            let mut idle = lock(&self.pool.idle);
            if idle.len() < self.pool.size {
                idle.push(c);
            }
        }
    }
}

/// The store's migrations, in order.
const MIGRATIONS: &[(i32, &str)] = &[(1, META), (2, include_str!("migrations/0002_store.sql"))];
const META: &str = "CREATE TABLE hcert_meta (key text PRIMARY KEY, value bytea NOT NULL);";

/// Applies the migrations this binary knows and the database lacks, once across nodes
/// starting together; refuses a database written by a newer binary.
pub(super) fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut c = pool.get()?;
    let run = |c: &mut postgres::Client| -> Result<(), StoreError> {
        let mut tx = c.transaction().map_err(|e| db_error(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock(7413019)", &[]).map_err(|e| db_error(&e))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS hcert_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            .map_err(|e| db_error(&e))?;
        let current: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM hcert_schema", &[])
            .map_err(|e| db_error(&e))?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::Database(format!(
                "the database's store schema is version {current}, newer than this binary knows ({known}): run the hcert-signer version that wrote it"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql).map_err(|e| db_error(&e))?;
            tx.execute("INSERT INTO hcert_schema (version) VALUES ($1)", &[version])
                .map_err(|e| db_error(&e))?;
        }
        tx.commit().map_err(|e| db_error(&e))
    };
    run(&mut c)
}
