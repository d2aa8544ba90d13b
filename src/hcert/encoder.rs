//! One certificate's way from a validated [`Dcc`] to its `HC1:` string, with the signature in
//! between: CWT claims → COSE Sig_structure digest → (signer) → COSE_Sign1 → zlib → Base45.
//!
//! The two halves are separate calls so that the daemon can prepare a chunk of records, hand
//! all their digests to the HSM pool at once, and finish them afterwards.

use super::cose::{self, KeyHeader, Prepared};
use super::cwt::Claims;
use super::transport::Hc1Encoder;
use super::{Dcc, Error, Signer};

/// Encodes HCERTs for one issuing country and one DSC; keeps its buffers between records.
pub struct Encoder {
    iss: String,
    header: KeyHeader,
    hc1: Hc1Encoder,
}

impl Encoder {
    /// An encoder for certificates issued by `iss` (e.g. `VN`) under the DSC whose header is `header`.
    pub fn new(iss: &str, header: KeyHeader) -> Self {
        Self { iss: iss.to_owned(), header, hc1: Hc1Encoder::default() }
    }

    /// Uses zlib `level` instead of the default (for measurements).
    pub fn with_level(mut self, level: u32) -> Self {
        self.hc1 = Hc1Encoder::new(level);
        self
    }

    /// The key identifier this encoder writes.
    pub fn kid(&self) -> [u8; cose::KID_LEN] {
        self.header.kid()
    }

    /// First half: the CWT claims around `dcc`, in a COSE_Sign1 waiting for its signature.
    pub fn prepare(&self, dcc: &Dcc, iat: i64, exp: i64) -> Result<Prepared, Error> {
        let mut payload = Vec::with_capacity(512);
        Claims { iss: &self.iss, iat, exp, dcc }.encode_into(&mut payload)?;
        Ok(cose::prepare(&self.header, payload))
    }

    /// Second half: attaches the signature and returns the `HC1:` string.
    pub fn finish(&mut self, prepared: Prepared, signature: &[u8; 64]) -> Result<String, Error> {
        let cose = cose::assemble(prepared, signature)?;
        self.hc1.encode(&cose)
    }

    /// Both halves around `signer`.
    pub fn sign(&mut self, dcc: &Dcc, iat: i64, exp: i64, signer: &dyn Signer) -> Result<String, Error> {
        let prepared = self.prepare(dcc, iat, exp)?;
        let sig = signer.sign(&prepared.tbs, &prepared.digest)?;
        self.finish(prepared, &sig)
    }
}
