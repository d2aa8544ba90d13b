//! CMS SignedData (RFC 5652) for uploads to the EU DCC gateway (DGCG): a DSC certificate or a
//! revocation batch, signed by the country's upload key inside the HSM.
//!
//! The structures are the `cms` crate's types, filled in here and DER-encoded by `der`; no ASN.1
//! is written by hand. The crate's `SignedDataBuilder` is not used: its `builder` feature pulls
//! in `rsa`, AES and SHA-1/SHA-3 that an HSM-backed signer has no use for, it reduces every
//! signer error to "ASN.1 operation failed", and it does not add the signingTime the gateway
//! expects.

use std::time::{SystemTime, UNIX_EPOCH};

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier, SignerInfo,
    SignerInfos,
};
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::der::asn1::{
    GeneralizedTime, ObjectIdentifier, OctetString, OctetStringRef, SetOfVec, UtcTime,
};
use x509_cert::der::oid::db::{rfc5911, rfc5912};
use x509_cert::der::{Any, DateTime, Decode, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

use super::Error;
use crate::hsm::{Hsm, sha256};

/// What [`Error::Generate`] says is being made.
const WHAT: &str = "CMS SignedData";

/// Signs `content` as CMS SignedData (RFC 5652): encapsulated content (id-data, attached), one
/// SignerInfo by the upload certificate (issuerAndSerialNumber), SHA-256, ecdsa-with-SHA256, signed
/// attributes contentType, messageDigest and signingTime; the upload certificate is included in
/// `certificates`. Returns DER.
///
/// Refuses an upload certificate whose public key is not that of HSM key `upload_label`. The
/// result is checked with [`verify_upload`] before it is returned.
pub fn sign_upload(
    hsm: &Hsm,
    upload_label: &str,
    upload_cert_der: &[u8],
    content: &[u8],
) -> Result<Vec<u8>, Error> {
    let cert = Certificate::from_der(upload_cert_der)
        .map_err(|e| Error::Parse { what: "upload certificate", detail: e.to_string() })?;
    check_upload_key(hsm, upload_label, &cert)?;
    let der_err =
        |e: x509_cert::der::Error| Error::Generate { what: WHAT, detail: format!("DER encoding: {e}") };

    let econtent = Any::encode_from(&OctetStringRef::new(content).map_err(der_err)?).map_err(der_err)?;
    let encap_content_info =
        EncapsulatedContentInfo { econtent_type: rfc5911::ID_DATA, econtent: Some(econtent) };
    let content_digest = sha256(content);
    let signed_attrs = SignedAttributes::try_from(vec![
        attribute(rfc5911::ID_CONTENT_TYPE, &rfc5911::ID_DATA).map_err(der_err)?,
        attribute(rfc5911::ID_MESSAGE_DIGEST, &OctetStringRef::new(&content_digest).map_err(der_err)?)
            .map_err(der_err)?,
        attribute(rfc5911::ID_SIGNING_TIME, &signing_time(SystemTime::now()).map_err(der_err)?)
            .map_err(der_err)?,
    ])
    .map_err(der_err)?;

    // RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF (tag 0x31), not
    // the [0] IMPLICIT form they take inside the SignerInfo.
    let to_be_signed = signed_attrs.to_der().map_err(der_err)?;
    let raw = hsm.sign(upload_label, &to_be_signed, &sha256(&to_be_signed)).map_err(|e| Error::Generate {
        what: WHAT,
        detail: format!("HSM key {upload_label:?} could not sign: {e}"),
    })?;
    // CMS wants ecdsa-with-SHA256 signatures DER-encoded (ECDSA-Sig-Value).
    let signature = p256::ecdsa::Signature::from_slice(&raw)
        .map_err(|e| Error::Generate {
            what: WHAT,
            detail: format!("the HSM returned a malformed signature: {e}"),
        })?
        .to_der();

    let signer_info = SignerInfo {
        // v1: the signer is named by issuerAndSerialNumber (RFC 5652 §5.3).
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: sha256_algorithm(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: AlgorithmIdentifierOwned { oid: rfc5912::ECDSA_WITH_SHA_256, parameters: None },
        signature: OctetString::new(signature.as_bytes()).map_err(der_err)?,
        unsigned_attrs: None,
    };
    let signed_data = SignedData {
        // v1: id-data content, X.509 certificates only, v1 SignerInfos (RFC 5652 §5.1).
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()]).map_err(der_err)?,
        encap_content_info,
        certificates: Some(CertificateSet(
            SetOfVec::try_from(vec![CertificateChoices::Certificate(cert)]).map_err(der_err)?,
        )),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).map_err(der_err)?),
    };
    let der = ContentInfo {
        content_type: rfc5911::ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data).map_err(der_err)?,
    }
    .to_der()
    .map_err(der_err)?;

    // Fail closed: release only what the gateway's own check would accept.
    match verify_upload(&der) {
        Ok(back) if back == content => Ok(der),
        Ok(_) => {
            Err(Error::Generate { what: WHAT, detail: "the signed content reads back different".into() })
        }
        Err(e) => Err(Error::Generate { what: WHAT, detail: format!("the result does not verify: {e}") }),
    }
}

/// Checks a CMS SignedData made by `sign_upload` (signature by the included certificate over the
/// signed attributes, messageDigest matching the content) and returns the encapsulated content.
///
/// It checks no certificate chain or validity period: that is the gateway's trust list.
pub fn verify_upload(der: &[u8]) -> Result<Vec<u8>, Error> {
    let parse = |detail: String| Error::Parse { what: "CMS SignedData", detail };
    let info = ContentInfo::from_der(der).map_err(|e| parse(e.to_string()))?;
    if info.content_type != rfc5911::ID_SIGNED_DATA {
        return Err(parse(format!("content type {} is not id-signedData", info.content_type)));
    }
    let signed_data: SignedData = info.content.decode_as().map_err(|e| parse(e.to_string()))?;

    let encap = &signed_data.encap_content_info;
    if encap.econtent_type != rfc5911::ID_DATA {
        return Err(parse(format!("encapsulated content type {} is not id-data", encap.econtent_type)));
    }
    let content = encap
        .econtent
        .as_ref()
        .ok_or_else(|| parse("no encapsulated content (a detached signature)".into()))?
        .decode_as::<OctetString>()
        .map_err(|e| parse(format!("encapsulated content: {e}")))?
        .into_bytes();

    let [signer] = signed_data.signer_infos.0.as_slice() else {
        return Err(parse(format!("{} SignerInfos, expected exactly one", signed_data.signer_infos.0.len())));
    };
    if signer.digest_alg.oid != rfc5912::ID_SHA_256 {
        return Err(parse(format!("digest algorithm {} is not SHA-256", signer.digest_alg.oid)));
    }
    if signer.signature_algorithm.oid != rfc5912::ECDSA_WITH_SHA_256 {
        return Err(parse(format!(
            "signature algorithm {} is not ecdsa-with-SHA256",
            signer.signature_algorithm.oid
        )));
    }
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer.sid else {
        return Err(parse(
            "the signer is named by subjectKeyIdentifier, expected issuerAndSerialNumber".into(),
        ));
    };
    let cert = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .find_map(|choice| match choice {
            CertificateChoices::Certificate(c)
                if c.tbs_certificate.issuer == sid.issuer
                    && c.tbs_certificate.serial_number == sid.serial_number =>
            {
                Some(c)
            }
            _ => None,
        })
        .ok_or_else(|| parse("the signer's certificate (issuer and serial number) is not included".into()))?;

    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or_else(|| parse("the SignerInfo has no signed attributes".into()))?;
    let content_type: ObjectIdentifier = single_value(attrs, rfc5911::ID_CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(|e| parse(format!("contentType attribute: {e}")))?;
    let message_digest: OctetString = single_value(attrs, rfc5911::ID_MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(|e| parse(format!("messageDigest attribute: {e}")))?;

    let spki = cert.tbs_certificate.subject_public_key_info.to_der().map_err(|e| parse(e.to_string()))?;
    let key = p256::PublicKey::from_public_key_der(&spki)
        .map_err(|_| parse("the signer's certificate does not hold a P-256 public key".into()))?;
    let signature = p256::ecdsa::Signature::from_der(signer.signature.as_bytes())
        .map_err(|_| parse("the signature is not a DER ECDSA-Sig-Value".into()))?;
    // RFC 5652 §5.4: verified over the DER SET OF encoding of the signed attributes.
    let signed = attrs.to_der().map_err(|e| parse(e.to_string()))?;
    p256::ecdsa::VerifyingKey::from(&key).verify(&signed, &signature).map_err(|_| {
        Error::Verify(
            "the signature over the signed attributes does not verify with the included certificate's key"
                .into(),
        )
    })?;
    if content_type != rfc5911::ID_DATA {
        return Err(Error::Verify(format!("the contentType attribute {content_type} is not id-data")));
    }
    if message_digest.as_bytes() != sha256(&content) {
        return Err(Error::Verify(
            "the messageDigest attribute does not match the content: the content was changed after signing"
                .into(),
        ));
    }
    Ok(content)
}

/// Refuses an upload certificate whose public key is not the public key of HSM key `label`.
fn check_upload_key(hsm: &Hsm, label: &str, cert: &Certificate) -> Result<(), Error> {
    let key = hsm.public_key(label).map_err(|e| Error::Generate { what: WHAT, detail: e.to_string() })?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| Error::Parse { what: "upload certificate", detail: e.to_string() })?;
    // Compared as points, so a compressed and an uncompressed encoding of one key match.
    match p256::PublicKey::from_public_key_der(&spki) {
        Ok(cert_key) if cert_key == key => Ok(()),
        Ok(_) => Err(Error::Mismatch(format!(
            "the upload certificate's public key is not the public key of HSM key {label:?}; \
             use the certificate issued for that key, or the key the certificate was issued for"
        ))),
        Err(_) => Err(Error::Mismatch(format!(
            "the upload certificate does not hold a P-256 public key, so it cannot be HSM key {label:?}'s"
        ))),
    }
}

/// The SHA-256 AlgorithmIdentifier, parameters absent (RFC 5754 §2).
fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: rfc5912::ID_SHA_256, parameters: None }
}

/// An attribute of type `oid` with the single value `value`.
fn attribute(oid: ObjectIdentifier, value: &impl Encode) -> x509_cert::der::Result<Attribute> {
    Ok(Attribute { oid, values: SetOfVec::try_from(vec![Any::from_der(&value.to_der()?)?])? })
}

/// The signingTime value for `at`: UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5652
/// §11.3; x509-cert's `Time::try_from(SystemTime)` always makes GeneralizedTime).
fn signing_time(at: SystemTime) -> x509_cert::der::Result<Time> {
    let since_epoch = at.duration_since(UNIX_EPOCH).map_err(|_| x509_cert::der::ErrorKind::DateTime)?;
    let at = DateTime::from_unix_duration(since_epoch)?;
    Ok(if at.year() < 2050 {
        Time::UtcTime(UtcTime::from_date_time(at)?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_date_time(at))
    })
}

/// The one value of the one signed attribute of type `oid` (RFC 5652 §11: contentType and
/// messageDigest are single-valued and may appear only once).
fn single_value<'a>(
    attrs: &'a SignedAttributes,
    oid: ObjectIdentifier,
    name: &str,
) -> Result<&'a Any, Error> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    match (found.next(), found.next()) {
        (Some(attr), None) if attr.values.len() == 1 => Ok(&attr.values.as_slice()[0]),
        (None, _) => {
            Err(Error::Parse { what: "CMS SignedData", detail: format!("no {name} signed attribute") })
        }
        _ => Err(Error::Parse {
            what: "CMS SignedData",
            detail: format!("the {name} signed attribute must appear once with one value"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::DecodePrivateKey;

    use super::*;
    use crate::hsm::{Backend, BackendStats, KeyInfo};
    use crate::pki::dev::DevCa;

    /// Software keys behind the [`Hsm`] interface, for tests without a token.
    struct SoftKeys(Vec<(&'static str, SigningKey)>);

    impl SoftKeys {
        fn key(&self, label: &str) -> Result<&SigningKey, crate::hsm::Error> {
            self.0
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, k)| k)
                .ok_or_else(|| crate::hsm::Error::KeyNotFound { label: label.into() })
        }
    }

    impl Backend for SoftKeys {
        fn name(&self) -> &'static str {
            "soft"
        }
        fn generate_key(&self, label: &str) -> Result<KeyInfo, crate::hsm::Error> {
            Err(crate::hsm::Error::KeyExists { label: label.into() })
        }
        fn find_key(&self, label: &str) -> Result<KeyInfo, crate::hsm::Error> {
            let key = self.key(label)?;
            Ok(KeyInfo { label: label.into(), id: vec![1], public_key: key.verifying_key().into() })
        }
        fn list_keys(&self) -> Result<Vec<KeyInfo>, crate::hsm::Error> {
            self.0.iter().map(|(l, _)| self.find_key(l)).collect()
        }
        fn sign_digests(
            &self,
            label: &str,
            digests: &[[u8; 32]],
        ) -> Result<Vec<[u8; 64]>, crate::hsm::Error> {
            use p256::ecdsa::signature::hazmat::PrehashSigner;
            let key = self.key(label)?;
            digests
                .iter()
                .map(|d| {
                    let sig: p256::ecdsa::Signature = key.sign_prehash(d).expect("software sign");
                    Ok(sig.to_bytes().into())
                })
                .collect()
        }
        fn health(&self) -> Result<(), crate::hsm::Error> {
            Ok(())
        }
        fn report_fault(&self, _: &str) {}
        fn parallelism(&self) -> usize {
            1
        }
        fn stats(&self) -> BackendStats {
            BackendStats::default()
        }
    }

    /// An HSM with keys "upload" and "other", and a certificate for each.
    fn setup() -> (Hsm, Vec<u8>, Vec<u8>) {
        let ca = DevCa::new("VN", "Ministry of Health", "dev CSCA", 1).expect("CA");
        let mut keys = Vec::new();
        let mut certs = Vec::new();
        for label in ["upload", "other"] {
            let issued = ca.issue_client(&format!("VN {label}"), 30).expect("issue");
            keys.push((label, SigningKey::from_pkcs8_pem(&issued.key_pem).expect("key")));
            let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).expect("PEM");
            certs.push(pem.contents);
        }
        let other = certs.pop().expect("other");
        let upload = certs.pop().expect("upload");
        (Hsm::from_backend(SoftKeys(keys)), upload, other)
    }

    #[test]
    fn signs_and_verifies_attached_content() {
        let (hsm, cert, _) = setup();
        let content = br#"{"kid":"AAECAwQFBgc=","mode":"UCI","entries":[]}"#;
        let der = sign_upload(&hsm, "upload", &cert, content).expect("sign");
        assert_eq!(verify_upload(&der).expect("verify"), content);

        let info = ContentInfo::from_der(&der).expect("ContentInfo");
        let sd: SignedData = info.content.decode_as().expect("SignedData");
        assert_eq!(sd.version, CmsVersion::V1);
        let certs = sd.certificates.expect("certificates");
        assert_eq!(certs.0.len(), 1);
        let CertificateChoices::Certificate(included) = &certs.0.as_slice()[0] else {
            panic!("not an X.509 certificate");
        };
        assert_eq!(included.to_der().expect("der"), cert);
        let signer = &sd.signer_infos.0.as_slice()[0];
        let oids: Vec<_> = signer.signed_attrs.as_ref().expect("attrs").iter().map(|a| a.oid).collect();
        for oid in [rfc5911::ID_CONTENT_TYPE, rfc5911::ID_MESSAGE_DIGEST, rfc5911::ID_SIGNING_TIME] {
            assert!(oids.contains(&oid), "{oid} missing from {oids:?}");
        }
        assert!(signer.signature_algorithm.parameters.is_none() && signer.digest_alg.parameters.is_none());
    }

    #[test]
    fn altered_content_or_signature_is_refused() {
        let (hsm, cert, _) = setup();
        let content = b"revocation batch 0001: unique marker";
        let der = sign_upload(&hsm, "upload", &cert, content).expect("sign");
        let at = der.windows(content.len()).position(|w| w == content).expect("content in the DER");
        let mut altered = der.clone();
        altered[at + 5] ^= 0x01;
        let e = verify_upload(&altered).expect_err("altered content").to_string();
        assert!(e.contains("messageDigest attribute does not match"), "{e}");

        // The last bytes of the DER are the signature's s.
        let mut forged = der.clone();
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let e = verify_upload(&forged).expect_err("forged signature").to_string();
        assert!(e.contains("does not verify"), "{e}");

        assert!(matches!(verify_upload(&der[..der.len() - 1]), Err(Error::Parse { .. })));
        assert!(matches!(verify_upload(b"not DER"), Err(Error::Parse { .. })));
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() {
        let (hsm, upload_cert, other_cert) = setup();
        let e = sign_upload(&hsm, "upload", &other_cert, b"x").expect_err("wrong certificate");
        assert!(matches!(e, Error::Mismatch(_)), "{e}");
        assert!(e.to_string().contains("not the public key of HSM key \"upload\""), "{e}");
        let e = sign_upload(&hsm, "missing", &upload_cert, b"x").expect_err("no such key").to_string();
        assert!(e.contains("missing"), "{e}");
        let e = sign_upload(&hsm, "upload", b"junk", b"x").expect_err("junk certificate").to_string();
        assert!(e.contains("invalid upload certificate"), "{e}");
    }

    #[test]
    fn signing_time_is_utc_time_until_2049() {
        let at = |secs: u64| signing_time(UNIX_EPOCH + std::time::Duration::from_secs(secs)).expect("time");
        assert!(matches!(at(1_800_000_000), Time::UtcTime(_)));
        // 2050-01-01T00:00:00Z
        assert!(matches!(at(2_524_608_000), Time::GeneralTime(_)));
    }
}
