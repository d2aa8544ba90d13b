//! The crate's one error type: every module's typed error, wrapped for the command line.

use std::path::PathBuf;

/// Everything that can make a `hcert-signer` command fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate codec refused or could not read its input.
    #[error(transparent)]
    Codec(#[from] crate::hcert::Error),
    /// The HSM failed, or refused an operation.
    #[error(transparent)]
    Hsm(#[from] crate::hsm::Error),
    /// X.509 material could not be read, made or matched.
    #[error(transparent)]
    Pki(#[from] crate::pki::Error),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The audit key is missing, changed, or not the one this state directory recorded.
    #[error("audit key: {0}")]
    AuditKey(crate::keys::audit_key::AuditKeyError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The appliance refused an API request (status, code and its message).
    #[error("the appliance refused ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The appliance could not be reached (connection refused, reset, TLS failure, name not
    /// resolved), after the retries the command allows.
    #[error("the appliance is unreachable: {0}")]
    Unavailable(String),
    /// Other I/O (stdin, stdout, sockets).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<crate::keys::audit_key::AuditKeyError> for Error {
    fn from(e: crate::keys::audit_key::AuditKeyError) -> Error {
        match e {
            // The HSM's own errors keep their exit status (a token away is worth a restart).
            crate::keys::audit_key::AuditKeyError::Hsm(e) => Error::Hsm(e),
            e => Error::AuditKey(e),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit status for errors a restart cannot fix (configuration, PIN, missing module or token):
/// `EX_CONFIG`. The systemd unit does not restart on it (`RestartPreventExitStatus=78`), so a
/// wrong PIN is never retried by a restart loop until the token locks.
pub const EXIT_CONFIG: u8 = 78;

/// Exit status when the appliance cannot be reached: `EX_UNAVAILABLE` (a later retry may work).
pub const EXIT_UNAVAILABLE: u8 = 69;

impl Error {
    /// The process exit status for this error: [`EXIT_CONFIG`] when retrying cannot help,
    /// [`EXIT_UNAVAILABLE`] when the appliance cannot be reached, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        use crate::hsm::Error as H;
        match self {
            Error::Config(_) | Error::File { .. } | Error::Pki(_) | Error::AuditKey(_) => EXIT_CONFIG,
            Error::Hsm(e)
                if e.is_pin_error()
                    || matches!(
                        e,
                        H::ModuleNotFound { .. }
                            | H::TokenNotFound { .. }
                            | H::KeyNotFound { .. }
                            | H::KeyRefused { .. }
                            | H::PinSource { .. }
                            | H::Config(_)
                    ) =>
            {
                EXIT_CONFIG
            }
            Error::Unavailable(_) => EXIT_UNAVAILABLE,
            _ => 1,
        }
    }

    /// Wraps an I/O error with the path it concerns, so the message says which file.
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::File { path, source }
    }
}
