//! The country's CSCAs and the chain rule a DSC must pass before it may sign: issued (signed) by
//! a CSCA of `[[signing.csca]]`, valid inside the CSCA's validity, of the same country as the
//! CSCA and the `iss` claim, a digitalSignature key and not a CA.
//!
//! Each refusal is one [`Error::Chain`] sentence naming what is wrong, so an officer importing a
//! DSC sees at once which rule it broke.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_NIST_HASH_SHA256,
    OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::signature_algorithm::SignatureAlgorithm;

use super::Error;

/// One Country Signing CA certificate the country trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csca {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its subject, RFC 4514 text.
    pub subject: String,
    /// Its subject's country (C), if present.
    pub country: Option<String>,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl Csca {
    /// Reads a CSCA certificate from DER. It must be a CA (basicConstraints cA) whose key may
    /// sign certificates (keyUsage keyCertSign, when the extension is present).
    pub fn from_der(der: &[u8]) -> Result<Csca, Error> {
        let parse = |detail: String| Error::Parse { what: "CSCA certificate", detail };
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(parse("trailing data after the certificate".into()));
        }
        let subject = cert.subject().to_string();
        if !cert.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca) {
            return Err(parse(format!(
                "{subject} is not a CA certificate (basicConstraints cA is not true)"
            )));
        }
        if cert.key_usage().ok().flatten().is_some_and(|k| !k.value.key_cert_sign()) {
            return Err(parse(format!("{subject}: its keyUsage lacks keyCertSign")));
        }
        Ok(Csca {
            der: der.to_vec(),
            country: cert.subject().iter_country().next().and_then(|c| c.as_str().ok()).map(str::to_owned),
            subject,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Reads every CERTIFICATE block of a PEM file (at least one).
    pub fn from_pem_all(pem: &str) -> Result<Vec<Csca>, Error> {
        let mut out = Vec::new();
        for item in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let item = item.map_err(|e| Error::Parse { what: "PEM", detail: e.to_string() })?;
            if item.label == "CERTIFICATE" {
                out.push(Csca::from_der(&item.contents)?);
            }
        }
        if out.is_empty() {
            return Err(Error::Parse { what: "PEM", detail: "no CERTIFICATE block".into() });
        }
        Ok(out)
    }

    /// SHA-256 of the certificate DER, hex: how the store and the audit log name it.
    pub fn fingerprint(&self) -> String {
        hex::encode(crate::hsm::sha256(&self.der))
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, Error> {
        X509Certificate::from_der(&self.der)
            .map(|(_, c)| c)
            .map_err(|e| Error::Parse { what: "CSCA certificate", detail: e.to_string() })
    }
}

/// Checks that the DSC `dsc_der` chains to one of `cscas` under the country `iss`; returns the
/// CSCA that issued it.
pub fn check_dsc<'c>(dsc_der: &[u8], cscas: &'c [Csca], iss: &str) -> Result<&'c Csca, Error> {
    let refuse = |why: String| Error::Chain(why);
    let (_, dsc) = X509Certificate::from_der(dsc_der)
        .map_err(|e| Error::Parse { what: "DSC certificate", detail: e.to_string() })?;
    if dsc.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca) {
        return Err(refuse("the DSC is a CA certificate (basicConstraints cA is true); a DSC must be an end-entity certificate".into()));
    }
    match dsc.key_usage() {
        Ok(Some(k)) if k.value.digital_signature() => {}
        Ok(Some(_)) => return Err(refuse("the DSC's keyUsage lacks digitalSignature".into())),
        Ok(None) => {
            return Err(refuse("the DSC has no keyUsage extension (digitalSignature is required)".into()));
        }
        Err(e) => return Err(refuse(format!("the DSC's keyUsage extension cannot be read: {e}"))),
    }
    let issuer = dsc.issuer().to_string();
    let csca = cscas.iter().find(|c| signed_by(&dsc, c)).ok_or_else(|| {
        refuse(if cscas.is_empty() {
            format!("the DSC is not signed by any CSCA in [[signing.csca]] (none is listed; issuer {issuer})")
        } else {
            format!("the DSC is not signed by any CSCA in [[signing.csca]] (issuer {issuer})")
        })
    })?;
    if csca.country.as_deref() != Some(iss) {
        return Err(refuse(format!(
            "the CSCA {} that signed the DSC is of country {}, not the issuing country {iss}",
            csca.subject,
            csca.country.as_deref().unwrap_or("(none)")
        )));
    }
    let dsc_country = dsc.subject().iter_country().next().and_then(|c| c.as_str().ok());
    if dsc_country != Some(iss) {
        return Err(refuse(format!(
            "the DSC's country {} is not its CSCA's and the issuing country {iss}",
            dsc_country.unwrap_or("(none)")
        )));
    }
    let (nb, na) = (dsc.validity().not_before.timestamp(), dsc.validity().not_after.timestamp());
    if nb < csca.not_before || na > csca.not_after {
        return Err(refuse(format!(
            "the DSC's validity ({} – {}) is not inside its CSCA's ({} – {})",
            crate::audit::rfc3339(nb),
            crate::audit::rfc3339(na),
            crate::audit::rfc3339(csca.not_before),
            crate::audit::rfc3339(csca.not_after)
        )));
    }
    Ok(csca)
}

/// Whether `csca`'s key verifies the signature on `cert` (any algorithm a CSCA uses: ECDSA on
/// P-256/384/521, RSA PKCS#1 v1.5 and PSS with SHA-2).
fn signed_by(cert: &X509Certificate<'_>, csca: &Csca) -> bool {
    let Ok(ca) = csca.parsed() else { return false };
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return false;
    }
    let spki = ca.public_key();
    let Some(alg) = algorithm(cert, spki) else { return false };
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

/// The verification algorithm for `cert`'s signature with the issuer key `spki`, if supported.
fn algorithm(
    cert: &X509Certificate<'_>,
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Option<&'static dyn VerificationAlgorithm> {
    let sig = &cert.signature_algorithm.algorithm;
    let key = &spki.algorithm.algorithm;
    if *key == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok())?;
        let by_curve = |p256, p384, p521| -> Option<&'static dyn VerificationAlgorithm> {
            if curve == OID_EC_P256 {
                p256
            } else if curve == OID_NIST_EC_P384 {
                p384
            } else if curve == OID_NIST_EC_P521 {
                p521
            } else {
                None
            }
        };
        if *sig == OID_SIG_ECDSA_WITH_SHA256 {
            by_curve(Some(&signature::ECDSA_P256_SHA256_ASN1), Some(&signature::ECDSA_P384_SHA256_ASN1), None)
        } else if *sig == OID_SIG_ECDSA_WITH_SHA384 {
            by_curve(Some(&signature::ECDSA_P256_SHA384_ASN1), Some(&signature::ECDSA_P384_SHA384_ASN1), None)
        } else if *sig == OID_SIG_ECDSA_WITH_SHA512 {
            by_curve(None, None, Some(&signature::ECDSA_P521_SHA512_ASN1))
        } else {
            None
        }
    } else if *key == OID_PKCS1_RSAENCRYPTION {
        if *sig == OID_PKCS1_SHA256WITHRSA {
            Some(&signature::RSA_PKCS1_2048_8192_SHA256)
        } else if *sig == OID_PKCS1_SHA384WITHRSA {
            Some(&signature::RSA_PKCS1_2048_8192_SHA384)
        } else if *sig == OID_PKCS1_SHA512WITHRSA {
            Some(&signature::RSA_PKCS1_2048_8192_SHA512)
        } else if *sig == OID_PKCS1_RSASSAPSS {
            let Ok(SignatureAlgorithm::RSASSA_PSS(p)) =
                SignatureAlgorithm::try_from(&cert.signature_algorithm)
            else {
                return None;
            };
            let hash = p.hash_algorithm_oid();
            if *hash == OID_NIST_HASH_SHA256 {
                Some(&signature::RSA_PSS_2048_8192_SHA256)
            } else if *hash == OID_NIST_HASH_SHA384 {
                Some(&signature::RSA_PSS_2048_8192_SHA384)
            } else if *hash == OID_NIST_HASH_SHA512 {
                Some(&signature::RSA_PSS_2048_8192_SHA512)
            } else {
                None
            }
        } else {
            None
        }
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::pki::dev::DevCa;

    fn dsc_from(ca: &DevCa, country: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CountryName, country);
        p.distinguished_name.push(rcgen::DnType::CommonName, "DSC");
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let now = OffsetDateTime::now_utc();
        let pem = ca.certify_dsc(&csr, now - Duration::minutes(30), now + Duration::days(30), None).unwrap();
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn a_dsc_chains_only_to_a_listed_csca_of_its_country() {
        let vn = DevCa::new("VN", "MoH", "CSCA VN", 1).unwrap();
        let other = DevCa::new("VN", "MoH", "CSCA VN", 1).unwrap();
        let listed = Csca::from_pem_all(vn.cert_pem()).unwrap();
        let dsc = dsc_from(&vn, "VN");
        assert_eq!(check_dsc(&dsc, &listed, "VN").unwrap().subject, listed[0].subject);
        // Same name, other key: the signature decides.
        let e = check_dsc(&dsc_from(&other, "VN"), &listed, "VN").unwrap_err().to_string();
        assert!(e.starts_with("the DSC is not signed by any CSCA in [[signing.csca]] (issuer "), "{e}");
        let e = check_dsc(&dsc, &[], "VN").unwrap_err().to_string();
        assert!(e.contains("none is listed"), "{e}");
        // The CSCA and the DSC of another country than iss.
        let e = check_dsc(&dsc, &listed, "FR").unwrap_err().to_string();
        assert!(e.contains("is of country VN, not the issuing country FR"), "{e}");
        let e = check_dsc(&dsc_from(&vn, "FR"), &listed, "VN").unwrap_err().to_string();
        assert!(e.contains("the DSC's country FR is not its CSCA's"), "{e}");
    }

    #[test]
    fn a_csca_must_be_a_ca() {
        let vn = DevCa::new("VN", "MoH", "CSCA VN", 1).unwrap();
        let der = dsc_from(&vn, "VN");
        let e = Csca::from_der(&der).unwrap_err().to_string();
        assert!(e.contains("is not a CA certificate"), "{e}");
        assert_eq!(Csca::from_pem_all(vn.cert_pem()).unwrap()[0].country.as_deref(), Some("VN"));
        assert!(Csca::from_pem_all("no pem here").is_err());
    }
}
