//! hcert-signer: an HSM-backed signing appliance for EU Digital COVID Certificates (HCERT).
//!
//! The crate is laid out as the domain: [`hcert`] is the certificate codec and verifier (no HSM,
//! no I/O), [`hsm`] drives the Document Signer keys inside a PKCS#11 token or a YubiHSM2, [`pki`]
//! reads and makes X.509 material (DSCs, CSRs, the development CAs), and [`commands`] holds one
//! file per `hcert-signer` subcommand.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod client;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod hcert;
pub mod hsm;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod pki;
pub mod store;

pub use error::{Error, Result};
