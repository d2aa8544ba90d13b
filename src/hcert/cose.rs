//! COSE_Sign1 for HCERT: the protected header `{1: alg, 4: kid}`, the Sig_structure digest handed
//! to a [`Signer`], assembly of the signed message, and lenient parsing for the verifier.

use ciborium::Value;
use coset::{
    AsCborValue, CborSerializable, CoseSign1, CoseSign1Builder, Header, HeaderBuilder, ProtectedHeader,
    TaggedCborSerializable, iana,
};
use sha2::{Digest, Sha256};

use super::{Algorithm, Error, Signer};

/// CBOR tag of COSE_Sign1.
pub const TAG_COSE_SIGN1: u64 = 18;
/// CBOR tag of a CWT, which some issuers wrap around the COSE_Sign1.
pub const TAG_CWT: u64 = 61;

/// Length of an HCERT key identifier.
pub const KID_LEN: usize = 8;

/// The HCERT key identifier of a DSC: the first 8 bytes of SHA-256 over its DER encoding.
pub fn kid(dsc_der: &[u8]) -> [u8; KID_LEN] {
    let h = Sha256::digest(dsc_der);
    let mut kid = [0u8; KID_LEN];
    kid.copy_from_slice(&h[..KID_LEN]);
    kid
}

/// The protected header of one DSC, built once and reused for every record it signs.
#[derive(Debug, Clone)]
pub struct KeyHeader {
    protected: ProtectedHeader,
    kid: [u8; KID_LEN],
}

impl KeyHeader {
    /// The ES256 header `{1: -7, 4: kid}` for a DSC key.
    pub fn es256(kid: [u8; KID_LEN]) -> Self {
        let header = HeaderBuilder::new().algorithm(iana::Algorithm::ES256).key_id(kid.to_vec()).build();
        Self { protected: ProtectedHeader { original_data: None, header }, kid }
    }

    /// The key identifier in this header.
    pub fn kid(&self) -> [u8; KID_LEN] {
        self.kid
    }
}

/// A COSE_Sign1 waiting for its signature.
#[derive(Debug, Clone)]
pub struct Prepared {
    sign1: CoseSign1,
    /// The Sig_structure: the exact bytes the signature covers.
    pub tbs: Vec<u8>,
    /// SHA-256 of [`Prepared::tbs`]: what the HSM signs.
    pub digest: [u8; 32],
}

/// Builds the COSE_Sign1 around `payload` (CBOR CWT claims) and computes its Sig_structure digest.
pub fn prepare(header: &KeyHeader, payload: Vec<u8>) -> Prepared {
    let sign1 = CoseSign1Builder::new()
        .protected(header.protected.header.clone())
        .unprotected(Header::default())
        .payload(payload)
        .build();
    let tbs = sign1.tbs_data(&[]);
    let digest = Sha256::digest(&tbs).into();
    Prepared { sign1, tbs, digest }
}

/// Attaches a raw `r‖s` signature and returns the tagged COSE_Sign1 bytes.
pub fn assemble(prepared: Prepared, signature: &[u8; 64]) -> Result<Vec<u8>, Error> {
    let mut sign1 = prepared.sign1;
    sign1.signature = signature.to_vec();
    sign1.to_tagged_vec().map_err(|e| Error::structure("COSE_Sign1", e))
}

/// Prepares, signs with `signer` and assembles in one call.
pub fn sign(header: &KeyHeader, payload: Vec<u8>, signer: &dyn Signer) -> Result<Vec<u8>, Error> {
    let prepared = prepare(header, payload);
    let sig = signer.sign(&prepared.tbs, &prepared.digest)?;
    assemble(prepared, &sig)
}

/// A COSE_Sign1 as read from an HCERT, with what a verifier needs.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The algorithm (protected header first, then unprotected), if recognised.
    pub alg: Option<Algorithm>,
    /// The raw COSE algorithm label, if any (to report unknown algorithms).
    pub alg_id: Option<i64>,
    /// The key identifier (protected header first, then unprotected).
    pub kid: Option<Vec<u8>>,
    /// Whether the kid came from the unprotected header (accepted, but worth reporting).
    pub kid_unprotected: bool,
    /// The CWT claims bytes.
    pub payload: Vec<u8>,
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// The Sig_structure the signature must cover (built from the original protected bytes).
    pub tbs: Vec<u8>,
}

/// Parses a COSE_Sign1 as field verifiers do: tagged 18, untagged, or a CWT tag 61 around it.
pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    let mut value = Value::from_slice(bytes).map_err(|e| Error::structure("COSE_Sign1", e))?;
    // Peel at most a CWT tag and then a COSE_Sign1 tag, in that order.
    if let Value::Tag(TAG_CWT, inner) = value {
        value = *inner;
    }
    match value {
        Value::Tag(TAG_COSE_SIGN1, inner) => value = *inner,
        Value::Tag(t, _) => {
            return Err(Error::structure("COSE_Sign1", format!("unexpected CBOR tag {t}")));
        }
        _ => {}
    }
    let sign1 = CoseSign1::from_cbor_value(value).map_err(|e| Error::structure("COSE_Sign1", e))?;
    let payload = sign1.payload.clone().ok_or_else(|| Error::structure("COSE_Sign1", "detached payload"))?;
    let (p, u) = (&sign1.protected.header, &sign1.unprotected);
    let alg_label = p.alg.as_ref().or(u.alg.as_ref());
    let alg_id = alg_label.cloned().and_then(|a| match a {
        coset::Algorithm::Assigned(a) => Some(a as i64),
        coset::Algorithm::PrivateUse(i) => Some(i),
        coset::Algorithm::Text(_) => None,
    });
    let (kid, kid_unprotected) = if !p.key_id.is_empty() {
        (Some(p.key_id.clone()), false)
    } else if !u.key_id.is_empty() {
        (Some(u.key_id.clone()), true)
    } else {
        (None, false)
    };
    Ok(Parsed {
        alg: alg_id.and_then(Algorithm::from_cose_id),
        alg_id,
        kid,
        kid_unprotected,
        tbs: sign1.tbs_data(&[]),
        signature: sign1.signature,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Signer for Fixed {
        fn sign(&self, message: &[u8], digest: &[u8; 32]) -> Result<[u8; 64], Error> {
            assert_eq!(Sha256::digest(message).as_slice(), digest);
            Ok([7u8; 64])
        }
    }

    #[test]
    fn header_and_round_trip() {
        let kid = kid(b"not really a certificate");
        let header = KeyHeader::es256(kid);
        let cose = sign(&header, vec![0xa0], &Fixed).unwrap();
        // Tag 18, then the protected header bstr of {1: -7, 4: h'kid'}.
        assert_eq!(&cose[..2], &[0xd2, 0x84]);
        let mut protected = vec![0x4d, 0xa2, 0x01, 0x26, 0x04, 0x48];
        protected.extend_from_slice(&kid);
        assert_eq!(&cose[2..2 + protected.len()], &protected[..]);
        let parsed = parse(&cose).unwrap();
        assert_eq!(parsed.alg, Some(Algorithm::Es256));
        assert_eq!(parsed.kid.as_deref(), Some(&kid[..]));
        assert!(!parsed.kid_unprotected);
        assert_eq!(parsed.payload, vec![0xa0]);
        assert_eq!(parsed.signature, vec![7u8; 64]);
        assert_eq!(parsed.tbs, prepare(&header, vec![0xa0]).tbs);
    }

    #[test]
    fn accepts_untagged_and_cwt_wrapped() {
        let header = KeyHeader::es256([1; 8]);
        let tagged = sign(&header, vec![0xa0], &Fixed).unwrap();
        let untagged = tagged[1..].to_vec();
        let mut cwt = vec![0xd8, 0x3d];
        cwt.extend_from_slice(&tagged);
        for bytes in [untagged, cwt] {
            assert_eq!(parse(&bytes).unwrap().kid.as_deref(), Some(&[1u8; 8][..]));
        }
        let mut other_tag = vec![0xd8, 0x40];
        other_tag.extend_from_slice(&tagged[1..]);
        assert!(parse(&other_tag).is_err());
        assert!(parse(&[0x84, 0x40]).is_err());
        assert!(parse(&[]).is_err());
    }
}
