//! The store's error type: one line each, saying what to do, never carrying personal data.

use std::io;
use std::path::{Path, PathBuf};

/// Why a store operation failed.
///
/// Messages are single lines meant for operators: they name the directory and the cause, never
/// a record's content or reference.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory cannot be used (missing parent, permissions, read-only mount, …).
    #[error("store directory {}: {reason}", path.display())]
    Open {
        /// The directory given to [`Store::open`](super::Store::open).
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Another process (or another handle in this one) has the store open.
    #[error(
        "store directory {} is in use by another process: stop it, or point this one at another directory",
        path.display()
    )]
    Locked {
        /// The directory given to [`Store::open`](super::Store::open).
        path: PathBuf,
    },
    /// The disk is full: a write met ENOSPC. Nothing was half-written: the failed operation
    /// left no trace. The handle stays failed (sled cannot continue); free space and restart the
    /// daemon.
    #[error(
        "the disk holding the store is full: a write failed and the store stopped; free space, then restart the daemon"
    )]
    Full,
    /// `submit` refused a batch because the file system holding the store has less free space
    /// than the reserve ([`StoreOptions::min_free_bytes`](super::StoreOptions)) kept for
    /// signing the batches already accepted. Nothing was written and the store goes on
    /// (signing, status, results); new batches are accepted again once space is freed, without a
    /// restart.
    #[error(
        "the disk holding the store has {free_mib} MiB free, below the {reserve_mib} MiB reserve kept for signing the batches already accepted: new batches are refused until space is freed (no restart needed)"
    )]
    BelowReserve {
        /// Free space, MiB (rounded down).
        free_mib: u64,
        /// The reserve, MiB (rounded down).
        reserve_mib: u64,
    },
    /// Signing is paused: free space is under the floor the store keeps so that sled never
    /// meets ENOSPC (which sled 0.34 does not survive: see [`Store`](super::Store)). Nothing was
    /// written and the store goes on; signing resumes once space is freed, without a restart.
    #[error(
        "the disk holding the store has {free_mib} MiB free, under the {floor_mib} MiB floor its database must never reach: signing is paused until space is freed (no restart needed)"
    )]
    BelowFloor {
        /// Free space, MiB (rounded down).
        free_mib: u64,
        /// The floor, MiB (rounded down).
        floor_mib: u64,
    },
    /// Reading or writing the store's files failed.
    #[error("store I/O failed: {0}; the store stopped accepting work: fix the disk, then restart the daemon")]
    Io(String),
    /// A stored value does not decode: a bug or tampering, never a normal condition.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An earlier failure stopped the store; this handle refuses all work until reopened.
    #[error("the store stopped after an earlier failure ({0}); restart the daemon once the cause is fixed")]
    Failed(String),
    /// A conditional write found the value changed by someone else meanwhile.
    #[error("{0}")]
    Conflict(&'static str),
    /// The same issuer used the same idempotency key for a different request: nothing was
    /// stored, the batch the key names is unchanged.
    #[error(
        "this idempotency key was already used for a different request (records or their content differ): use a new key for a new batch, or resend exactly the first request"
    )]
    IdempotencyConflict,
    /// The batch this idempotency key named was deleted or expired: it is not signed again.
    #[error(
        "the batch this idempotency key named ({batch_id}) was deleted or expired; it is not signed again: submit with a new idempotency key if the records are really to be signed anew"
    )]
    BatchDeleted {
        /// The purged batch's id.
        batch_id: String,
    },
    /// Sealing or opening records, or wrapping or unwrapping a data key, failed.
    #[error("{0}")]
    Seal(#[from] super::seal::SealError),
    /// This handle was opened without a key-encryption key, so it cannot read or write records.
    #[error("this store handle has no key-encryption key: it cannot read or write records")]
    NoKeyWrap,
    /// The database cannot be reached (down, restarting, failing over to a standby, or the
    /// network): nothing was written; the work is refused or retried until it is back.
    #[error(
        "the store's database is unreachable ({0}): new batches are refused and signing pauses until it is back; nothing accepted is lost"
    )]
    Unreachable(String),
    /// The database refused a statement for a reason that is not an outage.
    #[error("the store's database refused the operation: {0}")]
    Database(String),
    /// An import's target already holds data (what is named): nothing was written.
    #[error(
        "the target store is not empty (it holds {0}): a copy goes only into an empty store (a new PostgreSQL database, or a new sled directory); nothing was written"
    )]
    NotEmpty(String),
    /// The caller passed something the store cannot represent (the API validates first).
    #[error("cannot store this: {0}")]
    Invalid(&'static str),
}

impl StoreError {
    /// True when the condition is an outage of the store rather than a bad request: the API
    /// answers 503 with `Retry-After`, readiness goes red.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Open { .. }
                | Self::Locked { .. }
                | Self::Full
                | Self::BelowReserve { .. }
                | Self::BelowFloor { .. }
                | Self::Io(_)
                | Self::Failed(_)
                | Self::Unreachable(_)
        ) || matches!(self, Self::Seal(e) if e.is_transient())
    }

    /// True for a full disk (or a refused reservation), so callers can tell it apart in metrics.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full | Self::BelowReserve { .. } | Self::BelowFloor { .. })
    }

    /// An I/O error met while opening `path`, with a hint for the usual causes.
    pub(crate) fn open_io(path: &Path, what: &str, e: &io::Error) -> Self {
        if is_enospc(e) {
            return Self::Full;
        }
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => {
                "permission denied: the service user must own the directory and be able to write it"
            }
            io::ErrorKind::ReadOnlyFilesystem => {
                "the file system is read-only: the store needs a writable directory"
            }
            io::ErrorKind::NotADirectory => "a path component is not a directory",
            io::ErrorKind::NotFound => "a parent directory does not exist",
            _ => "",
        };
        let reason = if hint.is_empty() { format!("{what}: {e}") } else { format!("{what}: {hint} ({e})") };
        Self::Open { path: path.to_path_buf(), reason: one_line(&reason) }
    }
}

/// True for "no space left on device", however sled wrapped it.
pub(crate) fn is_enospc(e: &io::Error) -> bool {
    // sled re-wraps the OS error in a custom error of the same kind, losing `raw_os_error`.
    e.kind() == io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(28)
        || e.to_string().contains("code: 28,")
}

/// An I/O error as operators should read it: sled re-wraps OS errors in their `Debug` form
/// (`Os { code: 30, kind: ReadOnlyFilesystem, message: "Read-only file system" }`), which
/// becomes `Read-only file system (os error 30)` again.
pub(crate) fn io_text(e: &io::Error) -> String {
    let text = e.to_string();
    let field = |name: &str| {
        let start = text.find(name)? + name.len();
        Some(&text[start..start + text[start..].find(['"', ','])?])
    };
    match (text.starts_with("Os {"), field("code: "), field("message: \"")) {
        (true, Some(code), Some(message)) => format!("{message} (os error {code})"),
        _ => one_line(&text),
    }
}

/// Messages end up in single log lines and HTTP bodies.
pub(crate) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_recognised_even_when_rewrapped() {
        let raw = io::Error::from_raw_os_error(28);
        assert!(is_enospc(&raw));
        let wrapped = io::Error::new(io::ErrorKind::StorageFull, format!("{raw:?}"));
        assert!(is_enospc(&wrapped));
        assert!(!is_enospc(&io::Error::from_raw_os_error(13)));
        assert!(matches!(StoreError::open_io(Path::new("/x"), "open", &raw), StoreError::Full));
    }

    #[test]
    fn rewrapped_os_errors_read_as_os_errors() {
        let raw = io::Error::from_raw_os_error(30);
        let wrapped = io::Error::new(raw.kind(), format!("{raw:?}"));
        assert_eq!(io_text(&wrapped), "Read-only file system (os error 30)");
        assert_eq!(io_text(&raw), "Read-only file system (os error 30)");
        assert_eq!(io_text(&io::Error::other("a\nb")), "a b");
    }

    #[test]
    fn messages_are_single_lines_and_classified() {
        let e = StoreError::open_io(Path::new("/srv/x"), "open", &io::Error::from_raw_os_error(13));
        let text = e.to_string();
        assert!(!text.contains('\n') && text.contains("/srv/x") && text.contains("permission"), "{text}");
        assert!(e.is_unavailable());
        assert!(StoreError::Full.is_unavailable() && StoreError::Full.is_full());
        assert!(!StoreError::Invalid("x").is_unavailable());
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
    }
}
