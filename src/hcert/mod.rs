//! The HCERT codec: DCC payloads, UVCIs, CWT claims, COSE_Sign1, and the `HC1:` transport.
//!
//! Nothing here touches an HSM, a file or the network, so every rule can be tested on its own.
//! Signing is a two-step affair so that the HSM sits outside: [`cose::prepare`] yields the bytes to
//! be signed and their SHA-256 digest, a [`Signer`] turns the digest into a raw `r‖s`
//! signature, and [`cose::assemble`] + [`transport`] turn that into the `HC1:` string.

pub mod certificate_type;
pub mod cose;
pub mod cwt;
pub mod dcc;
pub mod encoder;
pub mod qr;
pub mod transport;
pub mod trust_list;
pub mod uvci;
pub mod validate;
pub mod valuesets;
pub mod verify;

pub use dcc::{CertificateType, Dcc};
pub use trust_list::TrustList;
pub use validate::PayloadError;

/// A failure of the codec: bad payload, or bytes that are not a well-formed HCERT.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The DCC payload breaks a schema, value-set or policy rule (names the field).
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The string does not start with the `HC1:` context identifier.
    #[error("missing the HC1: prefix")]
    Prefix,
    /// The text is not valid Base45.
    #[error("invalid base45: {0}")]
    Base45(String),
    /// The bytes are not a valid zlib stream.
    #[error("invalid zlib stream: {0}")]
    Zlib(String),
    /// The CBOR or COSE structure is malformed.
    #[error("invalid {what}: {detail}")]
    Structure {
        /// Which structure (COSE_Sign1, CWT claims, protected header…).
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The signer (an HSM) failed to sign.
    #[error("signer: {0}")]
    Signer(String),
}

impl Error {
    pub(crate) fn structure(what: &'static str, detail: impl ToString) -> Self {
        Error::Structure { what, detail: detail.to_string() }
    }
}

/// COSE signature algorithms a DSC may use (HCERT §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, COSE `-7`: what this appliance signs with.
    #[serde(rename = "ES256")]
    Es256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, COSE `-37`: verified, never produced.
    #[serde(rename = "PS256")]
    Ps256,
}

impl Algorithm {
    /// The COSE algorithm identifier.
    pub fn cose_id(self) -> i64 {
        match self {
            Algorithm::Es256 => -7,
            Algorithm::Ps256 => -37,
        }
    }

    /// The algorithm for a COSE identifier, if HCERT allows it.
    pub fn from_cose_id(id: i64) -> Option<Self> {
        match id {
            -7 => Some(Algorithm::Es256),
            -37 => Some(Algorithm::Ps256),
            _ => None,
        }
    }

    /// The JOSE-style name (`ES256`, `PS256`) used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Ps256 => "PS256",
        }
    }
}

/// Something that signs a COSE `Sig_structure` with a Document Signer key: in production an HSM
/// session pool, in tests a software key.
///
/// The signer gets both the message and its SHA-256 digest: it signs the digest (the HSM does
/// `CKM_ECDSA` over a prehash) and may verify the result against the message before releasing it.
pub trait Signer {
    /// Signs `digest` = SHA-256(`message`) and returns the raw 64-byte `r‖s`, low-S normalised.
    fn sign(&self, message: &[u8], digest: &[u8; 32]) -> Result<[u8; 64], Error>;
}
