//! Property test: random valid DCCs of all three kinds → encode → sign with a software key →
//! verify → decode gives back exactly the input, and the HC1 string fits a level-Q QR code.

use hcert_signer::hcert::cose::KeyHeader;
use hcert_signer::hcert::dcc::arbitrary;
use hcert_signer::hcert::encoder::Encoder;
use hcert_signer::hcert::verify::Verifier;
use hcert_signer::hcert::{Error, Signer, TrustList, qr};
use hcert_signer::pki::Dsc;
use p256::ecdsa::{Signature, SigningKey, signature::hazmat::PrehashSigner};
use p256::pkcs8::EncodePrivateKey;
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// A software P-256 key standing in for the HSM.
struct SoftKey(SigningKey);

impl Signer for SoftKey {
    fn sign(&self, _message: &[u8], digest: &[u8; 32]) -> Result<[u8; 64], Error> {
        let sig: Signature = self.0.sign_prehash(digest).map_err(|e| Error::Signer(e.to_string()))?;
        let sig = sig.normalize_s().unwrap_or(sig);
        Ok(sig.to_bytes().into())
    }
}

/// A software key with a self-signed DSC valid 2020–2030, and a trust list holding it.
fn test_dsc() -> (SoftKey, Dsc, TrustList) {
    let key = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let pkcs8 = key.to_pkcs8_der().unwrap();
    let kp = rcgen::KeyPair::try_from(pkcs8.as_bytes()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CountryName, "VN");
    params.distinguished_name.push(rcgen::DnType::CommonName, "DSC round-trip test");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let cert = params.self_signed(&kp).unwrap();
    let dsc = Dsc::from_der(cert.der()).unwrap();
    let mut trust = TrustList::new();
    trust.insert(dsc.clone());
    (SoftKey(key), dsc, trust)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_verify_decode(dcc in arbitrary::dcc()) {
        let (key, dsc, trust) = test_dsc();
        let mut encoder = Encoder::new("VN", KeyHeader::es256(dsc.kid));
        // 2025-06-01 (after every generated date), valid 365 days.
        let iat = 1_748_736_000;
        let exp = iat + 365 * 86_400;
        let hc1 = encoder.sign(&dcc, iat, exp, &key).unwrap();
        prop_assert!(hc1.len() <= qr::CAPACITY_Q, "{} chars", hc1.len());
        qr::encode(&hc1).unwrap();

        let v = Verifier::new(&trust, Some(hcert_signer::hcert::valuesets::ValueSets::embedded()))
            .verify(&hc1, iat + 60);
        prop_assert!(v.ok(), "{:?}", v.report());
        let claims = v.claims.unwrap();
        prop_assert_eq!(claims.iss.as_deref(), Some("VN"));
        prop_assert_eq!((claims.iat, claims.exp), (Some(iat), Some(exp)));
        prop_assert_eq!(claims.dcc, serde_json::to_value(&dcc).unwrap());
    }
}

#[test]
fn tampering_is_detected() {
    let (key, dsc, trust) = test_dsc();
    let dcc =
        arbitrary::dcc().new_tree(&mut proptest::test_runner::TestRunner::deterministic()).unwrap().current();
    let mut encoder = Encoder::new("VN", KeyHeader::es256(dsc.kid));
    let iat = 1_748_736_000;
    let prepared = encoder.prepare(&dcc, iat, iat + 86_400).unwrap();
    let sig = key.sign(&prepared.tbs, &prepared.digest).unwrap();
    let mut bad = sig;
    bad[10] ^= 1;
    let forged = encoder.finish(prepared, &bad).unwrap();
    let v = Verifier::new(&trust, None).verify(&forged, iat + 60);
    assert!(!v.ok());
    assert!(matches!(v.signature, Some(Err(_))));
    // An untrusted key: same content, a kid nobody knows.
    let v = Verifier::new(&TrustList::new(), None).verify(&forged, iat + 60);
    assert!(v.report().errors.iter().any(|e| e.contains("not in the trust list")));
}
