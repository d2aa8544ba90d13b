//! PKCS#10 certificate signing requests signed by a key inside the HSM, and the check that an
//! imported DSC certificate really carries that key.

use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, PublicKeyData, SigningKey};

use super::Error;
use crate::hsm::{Hsm, KeyInfo};

/// rcgen's view of an HSM key: the public half for the request, and a signer that asks the HSM
/// (through [`Hsm::sign`], so the signature is verified before it goes into the CSR).
struct HsmKey<'a> {
    hsm: &'a Hsm,
    key: KeyInfo,
    point: Vec<u8>,
}

impl PublicKeyData for HsmKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for HsmKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let digest = crate::hsm::sha256(msg);
        let raw = self.hsm.sign(&self.key.label, msg, &digest).map_err(|e| {
            log::error!("CSR signing by HSM key {:?} failed: {e}", self.key.label);
            rcgen::Error::RemoteKeyError
        })?;
        // X.509 wants ecdsa-with-SHA256 signatures DER-encoded.
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// Builds a PEM PKCS#10 CSR for the HSM key `label` with `subject` given as
/// `CN=DSC VN 1,O=Ministry of Health,C=VN` (attributes CN, O, OU, C, L, ST; `\,` escapes a
/// comma inside a value).
pub fn build_csr(hsm: &Hsm, label: &str, subject: &str) -> Result<String, Error> {
    let dn = parse_subject(subject)?;
    let key = hsm.find_key(label).map_err(|e| Error::Generate { what: "CSR", detail: e.to_string() })?;
    let point = {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        key.public_key.to_encoded_point(false).as_bytes().to_vec()
    };
    let signer = HsmKey { hsm, key, point };
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    let csr = params.serialize_request(&signer).map_err(|e| Error::Generate {
        what: "CSR",
        detail: match e {
            // rcgen only knows "the remote key failed"; the HSM error was logged above.
            rcgen::Error::RemoteKeyError => "the HSM could not sign the request (see the log)".into(),
            e => e.to_string(),
        },
    })?;
    csr.pem().map_err(|e| Error::Generate { what: "CSR", detail: e.to_string() })
}

/// Refuses a certificate whose SubjectPublicKeyInfo is not the public key of HSM key `label`.
pub fn check_certificate_key(hsm: &Hsm, label: &str, cert_der: &[u8]) -> Result<(), Error> {
    use x509_parser::prelude::FromDer;
    let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| Error::Parse { what: "certificate", detail: e.to_string() })?;
    if !rest.is_empty() {
        return Err(Error::Parse {
            what: "certificate",
            detail: "trailing bytes after the certificate".into(),
        });
    }
    let key = hsm.find_key(label).map_err(|e| Error::Mismatch(e.to_string()))?;
    let spki = cert.public_key().raw;
    if spki != key.public_key_der().as_slice() {
        return Err(Error::Mismatch(format!(
            "the certificate's public key is not the public key of HSM key {label:?}; \
             it was issued for another key (check the CSR sent to the CSCA)"
        )));
    }
    Ok(())
}

/// Parses `CN=…,O=…,OU=…,C=…,L=…,ST=…` into an rcgen distinguished name, in the given order.
pub fn parse_subject(subject: &str) -> Result<DistinguishedName, Error> {
    let bad = |detail: String| Error::Parse { what: "subject", detail };
    let mut dn = DistinguishedName::new();
    for part in split_unescaped(subject) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((attr, value)) = part.split_once('=') else {
            return Err(bad(format!("{part:?} is not ATTRIBUTE=value")));
        };
        let value = value.trim().replace("\\,", ",");
        if value.is_empty() {
            return Err(bad(format!("empty value for {}", attr.trim())));
        }
        let attr = attr.trim().to_ascii_uppercase();
        let ty = match attr.as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "L" => DnType::LocalityName,
            "ST" => DnType::StateOrProvinceName,
            other => {
                return Err(bad(format!("unknown attribute {other:?} (use CN, O, OU, C, L, ST)")));
            }
        };
        if dn.get(&ty).is_some() {
            return Err(bad(format!("{attr} given twice")));
        }
        // RFC 5280's upper bounds (ub-common-name and friends), in characters: a longer value
        // makes a certificate that strict parsers — the gateway's among them — refuse.
        let max = if matches!(ty, DnType::LocalityName | DnType::StateOrProvinceName) { 128 } else { 64 };
        if value.chars().count() > max {
            return Err(bad(format!("{attr} is longer than the {max} characters X.509 allows")));
        }
        if value.chars().any(char::is_control) {
            return Err(bad(format!("{attr} contains a control character")));
        }
        let value = if ty == DnType::CountryName {
            // countryName is a two-letter PrintableString (RFC 5280).
            if value.len() != 2 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(bad(format!("C must be a two-letter upper-case country code, got {value:?}")));
            }
            DnValue::PrintableString(value.as_str().try_into().map_err(|_| bad("C is not printable".into()))?)
        } else {
            DnValue::Utf8String(value)
        };
        dn.push(ty, value);
    }
    if dn.get(&DnType::CommonName).is_none() {
        return Err(bad("a CN is required".into()));
    }
    Ok(dn)
}

/// Splits on commas not preceded by a backslash.
fn split_unescaped(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b',' && (i == 0 || bytes[i - 1] != b'\\') {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_parses_known_attributes_in_order() {
        let dn =
            parse_subject("CN=DSC VN 1, O=Ministry of Health ,OU=DCC,C=VN,L=Ha Noi,ST=HN").expect("parse");
        let got: Vec<_> = dn.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(
            got,
            vec![
                DnType::CommonName,
                DnType::OrganizationName,
                DnType::OrganizationalUnitName,
                DnType::CountryName,
                DnType::LocalityName,
                DnType::StateOrProvinceName
            ]
        );
        assert_eq!(
            dn.get(&DnType::OrganizationName),
            Some(&DnValue::Utf8String("Ministry of Health".into()))
        );
    }

    #[test]
    fn escaped_commas_stay_in_the_value() {
        let dn = parse_subject(r"CN=DSC\, test,C=VN").expect("parse");
        assert_eq!(dn.get(&DnType::CommonName), Some(&DnValue::Utf8String("DSC, test".into())));
    }

    #[test]
    fn bad_subjects_are_rejected_clearly() {
        for (s, needle) in [
            ("CN=x,E=a@b", "unknown attribute \"E\""),
            ("O=x", "CN is required"),
            ("CN=x,C=Vietnam", "two-letter"),
            ("CN", "not ATTRIBUTE=value"),
            ("CN=a,CN=b", "twice"),
            ("CN=", "empty value"),
            ("CN=x\u{7},O=y", "control character"),
            ("CN=x,O=a\nb", "control character"),
        ] {
            let e = parse_subject(s).expect_err(s).to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
        let cn = "é".repeat(64);
        assert!(parse_subject(&format!("CN={cn}")).is_ok(), "64 characters (128 bytes) fit");
        let e = parse_subject(&format!("CN={cn}x")).expect_err("65 characters").to_string();
        assert!(e.contains("longer than the 64 characters"), "{e}");
        let l = "x".repeat(128);
        assert!(parse_subject(&format!("CN=a,L={l}")).is_ok());
        assert!(parse_subject(&format!("CN=a,L={l}x")).is_err());
    }
}
