//! The PostgreSQL backend's error type: "unavailable" (transient: the daemon answers 503 and
//! retries) kept apart from "refused" (configuration, credentials, schema: an operator must act).

use std::error::Error as _;
use std::io::ErrorKind;

use postgres::error::SqlState;

/// What went wrong talking to PostgreSQL. No variant ever holds a password: the messages come
/// from the server or the client library (which never echo one) and from our own text.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database cannot be reached right now, or a failover is in progress (the host
    /// reached is a standby, the server is shutting down or starting, a connect or statement
    /// timed out, every pooled connection is busy). Transient: answer 503 and try again.
    #[error("PostgreSQL unavailable ({target}): {detail}")]
    Unavailable {
        /// The database as configured (hosts, database, user; never a password).
        target: String,
        /// Why.
        detail: String,
    },
    /// The database answered and refused: authentication, a missing database or table, a
    /// TLS certificate that does not verify, a statement it rejects. Retrying will not help.
    #[error("PostgreSQL refused ({target}): {detail}")]
    Refused {
        /// The database as configured (hosts, database, user; never a password).
        target: String,
        /// Why.
        detail: String,
    },
    /// The `[store]` settings cannot work (checked again when the pool is built).
    #[error("store: {0}")]
    Config(String),
    /// The store password could not be read (the error names the file or credential, never
    /// its contents).
    #[error("store password: {0}")]
    Password(String),
    /// `store.tls_ca` could not be read or holds no usable certificate.
    #[error("store.tls_ca {path}: {detail}")]
    TlsCa {
        /// The file named by `tls_ca`.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The database's schema is not one this binary may use: newer than it knows, or an
    /// applied migration differs from the one shipped. Nothing was changed.
    #[error("PostgreSQL schema: {0}")]
    Schema(String),
}

impl PgError {
    /// True for a transient failure (database unreachable, failover in progress, timeout):
    /// the caller answers 503 with Retry-After and tries again later, never gives up for good.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unavailable { .. })
    }

    /// Classifies an error of the client library; `target` describes the database.
    pub fn from_client(target: &str, e: &postgres::Error) -> PgError {
        let target = target.to_owned();
        let detail = one_line(e);
        if is_transient(e) {
            PgError::Unavailable { target, detail }
        } else {
            PgError::Refused { target, detail }
        }
    }
}

/// Whether a client error is transient (see [`PgError::Unavailable`]).
fn is_transient(e: &postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return transient_state(code);
    }
    if e.is_closed() {
        return true;
    }
    // Walk the causes: a TLS failure is a configuration error even when it arrives wrapped in
    // an I/O error (tokio-rustls reports rustls errors as InvalidData); a socket error is not.
    let mut cause = e.source();
    while let Some(c) = cause {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return false;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref()
                && inner.downcast_ref::<rustls::Error>().is_some()
            {
                return false;
            }
            // `target_session_attrs=read-write` found only standbys (the primary is down and no
            // standby promoted yet, or one is being promoted): the client library reports it as
            // PermissionDenied, but it is a failover in progress, not a refusal.
            if io.kind() == ErrorKind::PermissionDenied && io.to_string() == SESSION_ATTRS_UNMET {
                return true;
            }
            return !matches!(
                io.kind(),
                ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::PermissionDenied
            );
        }
        cause = c.source();
    }
    // No server code, no I/O cause: the client refused on its own (a bad option, a password
    // the server asked for and we have none of, TLS it cannot do).
    false
}

/// What tokio-postgres says when no host of the list is a primary under
/// `target_session_attrs=read-write`.
const SESSION_ATTRS_UNMET: &str = "database does not allow writes";

/// SQLSTATEs that mean "not now" rather than "no".
fn transient_state(code: &SqlState) -> bool {
    let c = code.code();
    // Class 08: connection exception. Class 53: insufficient resources (too many
    // connections, disk full, out of memory). Class 57P: the server is shutting down, crashed
    // or still starting; 57014: a statement timeout (overload, a lock held by a dead node).
    // 25006: a write reached a standby (failover in progress, or a host list whose primary
    // changed). 40001/40P01 are for the caller to retry within its own logic.
    c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57P")
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// An error and its causes on one line (the client library's messages can span lines).
pub(super) fn one_line(e: &postgres::Error) -> String {
    let mut text = match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    };
    let mut cause = e.source();
    while let Some(c) = cause {
        if e.as_db_error().is_none() {
            let s = c.to_string();
            if !text.contains(&s) {
                text.push_str(": ");
                text.push_str(&s);
            }
        }
        cause = c.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
