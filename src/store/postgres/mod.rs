//! PostgreSQL plumbing for the cluster backend (`[store] backend = "postgres"`): settings and a
//! connection pool with typed "unavailable"/"refused" errors ([`connect`]), versioned schema
//! migrations applied at start ([`migrate`]), LISTEN/NOTIFY that survives restarts and
//! failovers ([`listen`]), and a throw-away cluster for tests and `hcert-load` ([`scratch`]).
//! The store's tables and queries build on these.
//!
//! # What the rest of the store relies on
//!
//! - [`PgPool::get`] never hangs: a database that cannot be reached is
//!   [`PgError::Unavailable`] within the connect timeout (5 s per host unless the URL sets
//!   `connect_timeout`), a busy pool within [`connect::ACQUIRE_TIMEOUT`], a statement within
//!   [`connect::STATEMENT_TIMEOUT`] (enforced by the server).
//! - [`PgError::is_unavailable`] tells a transient failure (503 with Retry-After; the pool
//!   recovers by itself once the database or a promoted standby answers) from a refusal
//!   (credentials, TLS, schema: an operator must act). Use [`PooledClient::fail`] to classify a
//!   query's error, so that a connection a failover left behind is not reused.
//! - [`open`] returns a pool only once the schema is exactly what this binary knows.

mod audit;
mod backend;
mod batches;
pub mod connect;
mod copy;
mod error;
mod keys;
pub mod listen;
pub mod migrate;
mod queue;
mod results;
pub mod scratch;
mod store;
#[cfg(test)]
mod suite;
#[cfg(test)]
mod tests;

pub use connect::{PgPool, PgSettings, PooledClient};
pub use error::PgError;
pub use scratch::{ScratchCluster, ScratchError};
pub use store::PgStore;

use crate::config::{StoreBackend, StoreConfig};

impl PgSettings {
    /// The settings of `[store]` with `backend = "postgres"` (checked at configuration load).
    pub fn from_config(store: &StoreConfig) -> Result<PgSettings, PgError> {
        let url = match (&store.backend, &store.url) {
            (StoreBackend::Postgres, Some(url)) => url,
            _ => {
                return Err(PgError::Config(
                    "backend = \"postgres\" and url = \"postgresql://…\" are both needed".into(),
                ));
            }
        };
        PgSettings::new(url, store.password_file.as_deref(), store.tls_ca.as_deref(), store.pool_size)
    }
}

/// A pool on these settings, with the schema migrated to this binary's version (see
/// [`migrate::migrate`]). A refused schema stops the start; an unreachable database is
/// [`PgError::Unavailable`] (the caller decides whether to wait).
pub fn open(settings: PgSettings) -> Result<PgPool, PgError> {
    let pool = PgPool::new(settings);
    migrate::migrate(&pool)?;
    Ok(pool)
}
