//! Document Signer Certificates: what a signer and a verifier need from one, read once.
//!
//! Parsing is deliberately as lenient as the EU verifier apps (x509-parser accepts the non-DER
//! encodings some national DSCs carry), while the facts extracted — key, validity, country, the
//! HCERT extended key usages — are exact.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use x509_parser::der_parser::oid::Oid;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Error;
use crate::hcert::{Algorithm, CertificateType, cose};

/// OID arc of the HCERT key usages: `.1` test, `.2` vaccination, `.3` recovery.
const EKU_ARC: &[u64] = &[1, 3, 6, 1, 4, 1, 1847, 2021, 1];
/// The same arc as some early DSCs spelled it (`1.3.6.1.4.1.0.1847…`); verifiers honour both.
const EKU_ARC_ALT: &[u64] = &[1, 3, 6, 1, 4, 1, 0, 1847, 2021, 1];

/// The public key of a DSC, in the form the verifier needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DscKey {
    /// A P-256 point, uncompressed SEC1.
    P256(Vec<u8>),
    /// An RSA key, as a PKCS#1 RSAPublicKey DER.
    Rsa(Vec<u8>),
    /// Any other key (another curve, another algorithm): nothing HCERT may verify with.
    Other(String),
}

/// A parsed Document Signer Certificate.
#[derive(Debug, Clone)]
pub struct Dsc {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its HCERT key identifier.
    pub kid: [u8; cose::KID_LEN],
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// The subject's country (C), if present.
    pub country: Option<String>,
    /// The subject, RFC 4514 text.
    pub subject: String,
    /// The public key.
    pub key: DscKey,
    /// The certificate types its HCERT EKUs allow; `None` when it has none (all allowed).
    pub allowed: Option<Vec<CertificateType>>,
    /// The PrivateKeyUsagePeriod extension (2.5.29.16), when present: the private key signs
    /// only from its notBefore to its notAfter (Unix seconds, each optional).
    pub key_usage_period: Option<(Option<i64>, Option<i64>)>,
}

impl Dsc {
    /// Reads a DSC from DER.
    pub fn from_der(der: &[u8]) -> Result<Dsc, Error> {
        let parse = |detail: String| Error::Parse { what: "DSC certificate", detail };
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(parse("trailing data after the certificate".into()));
        }
        let spki = cert.public_key();
        let key = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::EC(point))
                if spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok())
                    == Some(x509_parser::oid_registry::OID_EC_P256) =>
            {
                DscKey::P256(point.data().to_vec())
            }
            Ok(x509_parser::public_key::PublicKey::RSA(_)) => {
                DscKey::Rsa(spki.subject_public_key.data.to_vec())
            }
            _ => DscKey::Other(spki.algorithm.algorithm.to_id_string()),
        };
        let allowed = match cert.extended_key_usage() {
            Ok(Some(eku)) => hcert_types(&eku.value.other),
            // An unreadable EKU (CO15's empty sequence) constrains nothing we can honour.
            Ok(None) | Err(_) => None,
        };
        let key_usage_period = match cert.extensions().iter().find(|e| e.oid.to_id_string() == PKUP_OID) {
            Some(ext) => Some(private_key_usage_period(ext.value).ok_or_else(|| {
                parse("its PrivateKeyUsagePeriod extension (2.5.29.16) cannot be read".into())
            })?),
            None => None,
        };
        let country = cert.subject().iter_country().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
        Ok(Dsc {
            kid: cose::kid(der),
            der: der.to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            country,
            subject: cert.subject().to_string(),
            key,
            allowed,
            key_usage_period,
        })
    }

    /// Reads a DSC from PEM (the first CERTIFICATE block).
    pub fn from_pem(pem: &str) -> Result<Dsc, Error> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| Error::Parse { what: "PEM", detail: e.to_string() })?;
        if pem.label != "CERTIFICATE" {
            return Err(Error::Parse {
                what: "PEM",
                detail: format!("found {}, not CERTIFICATE", pem.label),
            });
        }
        Dsc::from_der(&pem.contents)
    }

    /// Whether this DSC may sign certificates of `kind` (a DSC without HCERT EKUs signs all).
    pub fn allows(&self, kind: CertificateType) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(&kind))
    }

    /// Checks `signature` over `message` with this DSC's key under `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let (algorithm, key): (&dyn signature::VerificationAlgorithm, &[u8]) = match (alg, &self.key) {
            (Algorithm::Es256, DscKey::P256(point)) => (&signature::ECDSA_P256_SHA256_FIXED, point),
            (Algorithm::Ps256, DscKey::Rsa(der)) => (&signature::RSA_PSS_2048_8192_SHA256, der),
            (alg, key) => {
                return Err(format!("{} cannot be verified with a {} key", alg.name(), key.name()));
            }
        };
        UnparsedPublicKey::new(algorithm, key)
            .verify(message, signature)
            .map_err(|_| "signature does not verify with the DSC's public key".to_owned())
    }
}

impl DscKey {
    /// A short name for messages.
    pub fn name(&self) -> String {
        match self {
            DscKey::P256(_) => "P-256".into(),
            DscKey::Rsa(_) => "RSA".into(),
            DscKey::Other(oid) => format!("non-HCERT ({oid})"),
        }
    }
}

/// The OID of the PrivateKeyUsagePeriod extension (RFC 3280 4.2.1.4).
const PKUP_OID: &str = "2.5.29.16";

/// Reads `PrivateKeyUsagePeriod ::= SEQUENCE { notBefore [0] IMPLICIT GeneralizedTime OPTIONAL,
/// notAfter [1] IMPLICIT GeneralizedTime OPTIONAL }` (Unix seconds); `None` if malformed.
fn private_key_usage_period(der: &[u8]) -> Option<(Option<i64>, Option<i64>)> {
    let (&[0x30, len], body) = der.split_first_chunk::<2>()? else { return None };
    if usize::from(len) != body.len() || len >= 0x80 {
        return None;
    }
    let (mut not_before, mut not_after) = (None, None);
    let mut rest = body;
    while let Some((&[tag, len], tail)) = rest.split_first_chunk::<2>() {
        let value = tail.get(..usize::from(len))?;
        let t = generalized_time(value)?;
        match tag {
            0x80 if not_before.is_none() && not_after.is_none() => not_before = Some(t),
            0x81 if not_after.is_none() => not_after = Some(t),
            _ => return None,
        }
        rest = &tail[usize::from(len)..];
    }
    (rest.is_empty() && (not_before.is_some() || not_after.is_some())).then_some((not_before, not_after))
}

/// `YYYYMMDDHHMMSSZ` (the DER form of GeneralizedTime) → Unix seconds.
fn generalized_time(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().ok();
    let month = time::Month::try_from(u8::try_from(n(4..6)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(n(0..4)?).ok()?, month, u8::try_from(n(6..8)?).ok()?)
            .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(n(8..10)?).ok()?,
        u8::try_from(n(10..12)?).ok()?,
        u8::try_from(n(12..14)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp())
}

/// The certificate types named by HCERT EKUs among `oids`; `None` if there are none.
fn hcert_types(oids: &[Oid<'_>]) -> Option<Vec<CertificateType>> {
    let mut types = Vec::new();
    for oid in oids {
        let Some(arcs) = oid.iter() else { continue };
        let arcs: Vec<u64> = arcs.collect();
        let last = match arcs.split_last() {
            Some((last, arc)) if arc == EKU_ARC || arc == EKU_ARC_ALT => *last,
            _ => continue,
        };
        let kind = match last {
            1 => CertificateType::Test,
            2 => CertificateType::Vaccination,
            3 => CertificateType::Recovery,
            _ => continue,
        };
        if !types.contains(&kind) {
            types.push(kind);
        }
    }
    (!types.is_empty()).then_some(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_usage_period_is_read() {
        // notBefore 2026-01-01T00:00:00Z, notAfter 2026-07-01T00:00:00Z.
        let mut der = vec![0x30, 34, 0x80, 15];
        der.extend_from_slice(b"20260101000000Z");
        der.extend_from_slice(&[0x81, 15]);
        der.extend_from_slice(b"20260701000000Z");
        assert_eq!(private_key_usage_period(&der), Some((Some(1_767_225_600), Some(1_782_864_000))));
        let only_end = [&[0x30, 17, 0x81, 15][..], b"20260701000000Z"].concat();
        assert_eq!(private_key_usage_period(&only_end), Some((None, Some(1_782_864_000))));
        assert_eq!(private_key_usage_period(&[0x30, 0]), None);
        assert_eq!(private_key_usage_period(&[0x30, 17, 0x81, 15, b'2']), None);
    }
}
