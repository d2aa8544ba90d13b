//! X.509 material: Document Signer Certificates, CSRs, the development CAs, and the CMS
//! SignedData of gateway uploads.

pub mod chain;
pub mod cms;
pub mod csr;
pub mod dev;
pub mod dsc;

pub use dsc::Dsc;

/// A failure to read, make or match X.509 material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate or CSR could not be parsed.
    #[error("invalid {what}: {detail}")]
    Parse {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// A certificate does not belong to the key it was meant for.
    #[error("{0}")]
    Mismatch(String),
    /// Making a certificate or CSR failed.
    #[error("generating {what}: {detail}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// A DSC does not chain to the country's CSCAs, or breaks a rule a DSC must keep.
    #[error("{0}")]
    Chain(String),
    /// A signature or digest does not check out: the data was altered, or signed by another key.
    #[error("verification failed: {0}")]
    Verify(String),
}
