//! Fuzzes DSC certificate import (`pki::Dsc::from_der` / `from_pem`): certificates come from
//! officers, CSCAs and other countries' trust lists.
//!
//! Invariants, beyond "never panics" (nothing about validity dates, which an input may break):
//! * an accepted DER certificate keeps its bytes, and its kid is `cose::kid` of them;
//! * its allowed types are either none (all allowed) or a non-empty list without repeats, and
//!   `allows` answers from that list;
//! * the same bytes in PEM armour are accepted or refused alike, and read the same;
//! * accepted PEM text yields DER that `from_der` reads the same;
//! * a trust list holding it survives its JSON form (which re-parses and re-checks the kid);
//! * checking a signature with its key never panics, whatever the key and algorithm.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hcert_signer::hcert::{Algorithm, CertificateType, TrustList, cose};
use hcert_signer::pki::Dsc;

const TYPES: [CertificateType; 3] =
    [CertificateType::Test, CertificateType::Vaccination, CertificateType::Recovery];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let from_der = Dsc::from_der(data);
    if let Ok(dsc) = &from_der {
        assert_eq!(dsc.der, data, "the DER was not kept as given");
        check(dsc);
    }
    let armoured = Dsc::from_pem(&armour(data));
    match (&from_der, &armoured) {
        (Ok(a), Ok(b)) => same(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("DER and its PEM armour disagree: {:?} / {:?}", a.as_ref().err(), b.as_ref().err()),
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(dsc) = Dsc::from_pem(text)
    {
        check(&dsc);
        same(&dsc, &Dsc::from_der(&dsc.der).expect("PEM accepted, its DER refused"));
    }
});

fn check(dsc: &Dsc) {
    assert_eq!(dsc.kid, cose::kid(&dsc.der));
    match &dsc.allowed {
        None => assert!(TYPES.iter().all(|t| dsc.allows(*t))),
        Some(types) => {
            assert!(!types.is_empty(), "an empty list of allowed types");
            for (i, t) in types.iter().enumerate() {
                assert!(!types[..i].contains(t), "{t:?} listed twice");
            }
            for t in TYPES {
                assert_eq!(dsc.allows(t), types.contains(&t));
            }
        }
    }
    let mut trust = TrustList::new();
    trust.insert(dsc.clone());
    let back = TrustList::from_json(&trust.to_json()).expect("a trust list of one DSC re-reads");
    assert_eq!(back.len(), 1);
    same(dsc, back.get(&dsc.kid).expect("the DSC under its own kid"));
    let sig = &dsc.der[..dsc.der.len().min(64)];
    for alg in [Algorithm::Es256, Algorithm::Ps256] {
        let _ = dsc.verify(alg, &dsc.der, sig);
    }
}

fn same(a: &Dsc, b: &Dsc) {
    assert_eq!(a.der, b.der);
    assert_eq!(a.kid, b.kid);
    assert_eq!((a.not_before, a.not_after), (b.not_before, b.not_after));
    assert_eq!(a.country, b.country);
    assert_eq!(a.subject, b.subject);
    assert_eq!(a.key, b.key);
    assert_eq!(a.allowed, b.allowed);
}

fn armour(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}
