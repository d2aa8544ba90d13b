//! Fuzzes the subject an officer types for a DSC's CSR (`hcert-signer keys csr --subject`,
//! `POST /v1/keys/{label}/csr`): `pki::csr::parse_subject`. The CSR itself is rcgen's.
//!
//! Invariants, beyond "never panics":
//! * a refusal is a subject parse error;
//! * an accepted subject has a CN, each attribute at most once, no empty value, no value with
//!   surrounding whitespace or a control character or over RFC 5280's length bound, and a C
//!   (if any) of two upper-case letters as a PrintableString;
//! * what the officer typed is what the CSCA reads: the subject goes into a CSR (as
//!   `pki::csr::build_csr` does, with a software key here), and the CSR read back (as
//!   `pki::dev::DevCa::certify_dsc` reads it) carries the same attributes in the same order.
#![no_main]

use std::sync::LazyLock;

use hcert_signer::pki::Error;
use hcert_signer::pki::csr::parse_subject;
use rcgen::{CertificateParams, CertificateSigningRequestParams, DnType, DnValue, KeyPair};

static KEY: LazyLock<KeyPair> =
    LazyLock::new(|| KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(subject) = std::str::from_utf8(data) else { return };
    let dn = match parse_subject(subject) {
        Ok(dn) => dn,
        Err(e) => {
            assert!(matches!(e, Error::Parse { what: "subject", .. }), "{e:?}");
            return;
        }
    };
    let entries: Vec<(&DnType, &DnValue)> = dn.iter().collect();
    assert!(entries.iter().any(|(t, _)| **t == DnType::CommonName), "no CN");
    assert!(entries.len() <= 6, "{} attributes", entries.len());
    for (i, (ty, value)) in entries.iter().enumerate() {
        assert!(entries[..i].iter().all(|(t, _)| t != ty), "{ty:?} twice");
        match (ty, value) {
            (DnType::CountryName, DnValue::PrintableString(c)) => {
                let c = c.as_str();
                assert!(c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()), "C {c:?}");
            }
            (DnType::CountryName, v) => panic!("C as {v:?}"),
            (_, DnValue::Utf8String(s)) => {
                assert!(!s.is_empty() && s.trim() == s, "{ty:?} value {s:?}");
                assert!(!s.chars().any(char::is_control), "{ty:?} value {s:?}");
                let max = if matches!(ty, DnType::LocalityName | DnType::StateOrProvinceName) { 128 } else { 64 };
                assert!(s.chars().count() <= max, "{ty:?} of {} characters", s.chars().count());
            }
            (_, v) => panic!("{ty:?} as {v:?}"),
        }
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = dn.clone();
    let csr = params.serialize_request(&*KEY).expect("a parsed subject makes a CSR");
    let pem = csr.pem().expect("PEM");
    let back = CertificateSigningRequestParams::from_pem(&pem).expect("the CSCA reads the CSR");
    assert_eq!(back.params.distinguished_name, dn, "the CSR's subject differs from the one typed");
});
