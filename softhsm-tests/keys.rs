//! Acceptance 1: the DSC private key generated in a real SoftHSM2 token is sensitive and never
//! extractable, its signatures verify with its public key, its CSR verifies and carries the
//! requested subject, and a certificate for another key is refused.

mod common;

use std::process::Command;

use common::{TOKEN_LABEL, USER_PIN, assert_valid, module, with_fresh_token};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use hcert_signer::hsm::sha256;
use hcert_signer::pki::csr::{build_csr, check_certificate_key};
use p256::ecdsa::signature::Verifier;

#[test]
fn generated_key_is_sensitive_and_never_extractable() {
    with_fresh_token("generated_key_is_sensitive_and_never_extractable", |token| {
        let hsm = token.open();
        let key = hsm.generate_key("dsc-1").expect("generate");

        // Look at the private key object with cryptoki directly, in a session of our own.
        // Already initialised by the Hsm in this process: raw_slot accepts that.
        let (raw, slot) = hcert_signer::hsm::softhsm::raw_slot(&module(), TOKEN_LABEL).expect("raw handle");
        {
            let session = raw.open_ro_session(slot).expect("session");
            // The Hsm's keeper session already logged the application in.
            let _ = session.login(UserType::User, Some(&USER_PIN.to_string().into()));
            let found = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(b"dsc-1".to_vec()),
                ])
                .expect("find");
            assert_eq!(found.len(), 1);
            let private = found[0];

            // Reading CKA_VALUE fails: the token reports the attribute sensitive...
            let info = session.get_attribute_info(private, &[AttributeType::Value]).expect("attribute info");
            assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
            // ...and a read returns no value at all.
            let value = session.get_attributes(private, &[AttributeType::Value]).expect("get attributes");
            assert!(
                !value.iter().any(|a| matches!(a, Attribute::Value(_))),
                "private key value was readable: {value:?}"
            );

            let attrs = session
                .get_attributes(
                    private,
                    &[
                        AttributeType::Token,
                        AttributeType::Private,
                        AttributeType::Sensitive,
                        AttributeType::AlwaysSensitive,
                        AttributeType::Extractable,
                        AttributeType::NeverExtractable,
                        AttributeType::Sign,
                        AttributeType::Decrypt,
                        AttributeType::Derive,
                        AttributeType::Unwrap,
                        AttributeType::Id,
                    ],
                )
                .expect("attributes");
            for expected in [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::AlwaysSensitive(true),
                Attribute::Extractable(false),
                Attribute::NeverExtractable(true),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Derive(false),
                Attribute::Unwrap(false),
                Attribute::Id(key.id.clone()),
            ] {
                assert!(attrs.contains(&expected), "missing {expected:?} in {attrs:?}");
            }
        }

        // pkcs11-tool, an independent PKCS#11 client, sees the same thing.
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(module())
            .args(["--token-label", TOKEN_LABEL, "--login", "--pin", USER_PIN])
            .args(["--list-objects", "--type", "privkey"])
            .output()
            .expect("run pkcs11-tool (apt-get install opensc)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "pkcs11-tool failed: {text} {}", String::from_utf8_lossy(&out.stderr));
        let object = text
            .split("Private Key Object")
            .find(|o| o.contains("label:      dsc-1") || o.contains("dsc-1"))
            .expect("dsc-1 listed");
        let access = object.lines().find(|l| l.trim_start().starts_with("Access:")).expect("Access line");
        assert!(access.contains("never extractable"), "{access}");
        assert!(access.contains("sensitive"), "{access}");
        assert!(!access.contains(" extractable,") || access.contains("never extractable"));
        let usage = object.lines().find(|l| l.trim_start().starts_with("Usage:")).expect("Usage line");
        assert_eq!(usage.trim(), "Usage:      sign", "key must be sign-only");
        let public = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(module())
            .args(["--token-label", TOKEN_LABEL, "--list-objects", "--type", "pubkey"])
            .output()
            .expect("run pkcs11-tool");
        let public = String::from_utf8_lossy(&public.stdout);
        let usage = public.lines().find(|l| l.trim_start().starts_with("Usage:")).expect("public Usage line");
        assert_eq!(usage.trim(), "Usage:      verify", "public half must be verify-only");

        // Signatures verify with the DSC public key.
        for i in 0..10 {
            let m = format!("payload {i}");
            let sig = hsm.sign("dsc-1", m.as_bytes(), &sha256(m.as_bytes())).expect("sign");
            assert_valid(&key.public_key, m.as_bytes(), &sig);
        }
    });
}

#[test]
fn csr_verifies_and_carries_the_subject() {
    with_fresh_token("csr_verifies_and_carries_the_subject", |token| {
        use x509_parser::prelude::FromDer;
        let hsm = token.open();
        let key = hsm.generate_key("dsc-csr").expect("generate");
        let subject = "CN=DSC VN 1,O=Ministry of Health,OU=DCC,C=VN";
        let pem = build_csr(&hsm, "dsc-csr", subject).expect("csr");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"), "{pem}");

        let der = pem_body(&pem);
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).expect("parse CSR");
        assert!(rest.is_empty());
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.to_string(), "CN=DSC VN 1, O=Ministry of Health, OU=DCC, C=VN");

        // The CSR's key is the token key...
        let spki_point = info.subject_pki.subject_public_key.data.as_ref();
        let csr_key = p256::PublicKey::from_sec1_bytes(spki_point).expect("P-256 key");
        assert_eq!(csr_key, key.public_key);
        // ...and its signature (ecdsa-with-SHA256 over the request info) verifies with it.
        assert_eq!(csr.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.2");
        let sig =
            p256::ecdsa::Signature::from_der(csr.signature_value.data.as_ref()).expect("DER ECDSA signature");
        p256::ecdsa::VerifyingKey::from(&key.public_key)
            .verify(info.raw, &sig)
            .expect("CSR signature verifies");

        // A subject with an unknown attribute is refused before anything is signed.
        let before = hsm.stats().signatures;
        let err = build_csr(&hsm, "dsc-csr", "CN=x,EMAIL=a@b").expect_err("unknown attribute");
        assert!(err.to_string().contains("unknown attribute"), "{err}");
        assert_eq!(hsm.stats().signatures, before);
    });
}

#[test]
fn certificate_for_another_key_is_refused() {
    with_fresh_token("certificate_for_another_key_is_refused", |token| {
        let hsm = token.open();
        hsm.generate_key("dsc-cert").expect("generate");
        let csr_pem = build_csr(&hsm, "dsc-cert", "CN=DSC VN 2,C=VN").expect("csr");

        // A development CSCA issues the DSC from our CSR: accepted.
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Test CSCA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).expect("rcgen reads CSR");
        let dsc = csr.signed_by(&issuer).expect("issue DSC");
        check_certificate_key(&hsm, "dsc-cert", dsc.der()).expect("DSC for the token key is accepted");

        // A certificate for a different key: refused with a clear message.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("other key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "DSC VN 2");
        let foreign = params.signed_by(&other, &issuer).expect("foreign cert");
        let err = check_certificate_key(&hsm, "dsc-cert", foreign.der()).expect_err("must refuse");
        assert!(matches!(err, hcert_signer::pki::Error::Mismatch(_)), "{err:?}");
        assert!(err.to_string().contains("not the public key of HSM key \"dsc-cert\""), "{err}");

        // And garbage is a parse error, not a match.
        let err = check_certificate_key(&hsm, "dsc-cert", b"not a certificate").expect_err("garbage");
        assert!(matches!(err, hcert_signer::pki::Error::Parse { .. }), "{err:?}");
    });
}

fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).expect("PEM base64")
}
