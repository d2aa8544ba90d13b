//! Fuzzes the body of `POST /v1/batches` (and `POST /v1/sign`) from an issuer: the request
//! parser, then each record's DCC through the signing-mode validation, as the pipeline runs them.
//!
//! Invariants, beyond "never panics":
//! * a record whose DCC is over the size limit is stored as the `OVERSIZE_DCC` marker (and
//!   rejected alone), never as sent;
//! * an accepted request has 1..=max records with unique refs of 1–128 characters without
//!   control characters, each `dcc` a JSON object, and an idempotency key of 1–200 characters if
//!   any; a refused one is a 400 or a 413;
//! * a refused DCC names a known error code, and the message does not repeat the holder's names
//!   or date of birth (the same DCC with other names gets the same answer);
//! * an accepted DCC re-validates as a value, is accepted the same through `from_json_value`,
//!   serialises (once it has a UVCI) to JSON that re-validates to the same value, and, signed
//!   into an `HC1:` string, passes every check of the verifier with its DCC unchanged: whatever
//!   the signer signs, a verifier accepts.
#![no_main]

#[path = "common/privacy.rs"]
mod privacy;

use std::sync::LazyLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use hcert_signer::api::routes::{MAX_REF_LEN, parse_batch};
use hcert_signer::hcert::cose::KeyHeader;
use hcert_signer::hcert::encoder::Encoder;
use hcert_signer::hcert::uvci::Uvci;
use hcert_signer::hcert::validate::Policy;
use hcert_signer::hcert::valuesets::ValueSets;
use hcert_signer::hcert::verify::Verifier;
use hcert_signer::hcert::{Dcc, Error, Signer, TrustList};
use hcert_signer::pki::Dsc;
use hcert_signer::store::{MAX_DCC_BYTES, OVERSIZE_DCC};

/// Small, so that the "too many records" answer is reachable.
const MAX_RECORDS: usize = 8;
/// The policy's clock and the certificates' `iat`: 2025-06-01T00:00:00Z.
const NOW: i64 = 1_748_736_000;
/// The UVCI given to a record that comes without one (the daemon would generate it).
const UVCI: &str = "URN:UVCI:01:VN:FUZZ0001";

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let now = time::OffsetDateTime::from_unix_timestamp(NOW).expect("clock");
    Policy::new(ValueSets::embedded_shared(), now)
});

/// A software Document Signer: a P-256 key, its self-signed DSC, and a trust list holding it.
struct SoftDsc {
    key: EcdsaKeyPair,
    header: KeyHeader,
    trust: TrustList,
}

impl Signer for SoftDsc {
    fn sign(&self, message: &[u8], _digest: &[u8; 32]) -> Result<[u8; 64], Error> {
        let sig = self.key.sign(&SystemRandom::new(), message).map_err(|e| Error::Signer(e.to_string()))?;
        sig.as_ref().try_into().map_err(|_| Error::Signer("not a 64-byte signature".into()))
    }
}

static DSC: LazyLock<SoftDsc> = LazyLock::new(|| {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CountryName, "VN");
    params.distinguished_name.push(rcgen::DnType::CommonName, "fuzz DSC");
    params.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 365 * 86_400).expect("time");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 2 * 365 * 86_400).expect("time");
    let cert = params.self_signed(&key).expect("DSC");
    let dsc = Dsc::from_der(cert.der()).expect("own DSC parses");
    let header = KeyHeader::es256(dsc.kid);
    let mut trust = TrustList::new();
    trust.insert(dsc);
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der()).expect("pkcs8");
    SoftDsc { key, header, trust }
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let req = match parse_batch(data, MAX_RECORDS) {
        Ok(r) => r,
        Err(e) => {
            assert!(matches!(e.status.as_u16(), 400 | 413), "{} {}", e.status, e.code);
            return;
        }
    };
    assert!((1..=MAX_RECORDS).contains(&req.records.len()));
    let mut refs = std::collections::HashSet::new();
    for r in &req.records {
        assert!((1..=MAX_REF_LEN).contains(&r.r#ref.chars().count()), "ref {:?}", r.r#ref);
        assert!(!r.r#ref.chars().any(char::is_control), "ref {:?}", r.r#ref);
        assert!(refs.insert(r.r#ref.as_str()), "duplicate ref {:?}", r.r#ref);
        assert!(r.dcc.get().trim_start().starts_with('{'), "a dcc that is not an object: {}", r.dcc.get());
    }
    if let Some(k) = req.idempotency_key.as_ref() {
        let n = k.chars().count();
        assert!((1..=200).contains(&n), "idempotency key of {n} characters");
    }
    let records = req.new_records();
    assert_eq!(records.len(), req.records.len());
    for (record, sent) in records.iter().zip(&req.records) {
        // A DCC over the limit is stored as a marker and rejected alone (dcc_too_large).
        if sent.dcc.get().len() > MAX_DCC_BYTES {
            assert_eq!(record.dcc_json, OVERSIZE_DCC);
            continue;
        }
        // The pipeline's first step (src/pipeline/sign.rs): the stored bytes as UTF-8 text.
        let text = std::str::from_utf8(record.dcc_json).expect("a RawValue is UTF-8");
        check_dcc(text);
    }
});

fn check_dcc(text: &str) {
    // serde_json's RawValue skips strings without checking their escapes (a lone surrogate
    // `\udead` passes), so a stored record may still fail to parse: it is refused as `json`.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        let e = Dcc::from_json_str(text, &POLICY).expect_err("accepted, but not JSON");
        assert_eq!(e.code(), "json", "{e}");
        return;
    };
    let answer =
        |v: &serde_json::Value| Dcc::from_json_value(v, &POLICY).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(
        answer(&value),
        answer(&privacy::with_other_names(&value)),
        "an error repeats the holder's name or date of birth"
    );
    let mut dcc = match Dcc::from_json_str(text, &POLICY) {
        Ok(dcc) => dcc,
        Err(e) => {
            assert!(
                matches!(e.code(), "json" | "schema" | "valueset" | "uvci" | "uvci_check" | "policy"),
                "{}",
                e.code()
            );
            return;
        }
    };
    assert_eq!(dcc.validate(&POLICY), Ok(()), "accepted as text, refused as a value");
    assert_eq!(Dcc::from_json_value(&value, &POLICY).as_ref(), Ok(&dcc), "from_json_value disagrees");

    if dcc.uvci().is_none() {
        dcc.set_uvci(Uvci::parse(UVCI).expect("UVCI"));
        assert_eq!(dcc.validate(&POLICY), Ok(()), "refused once given a UVCI");
    }
    let json = serde_json::to_string(&dcc).expect("a valid DCC with a UVCI serialises");
    assert_eq!(Dcc::from_json_str(&json, &POLICY).as_ref(), Ok(&dcc), "JSON round trip: {json}");

    let mut encoder = Encoder::new("VN", DSC.header.clone());
    let hc1 = encoder.sign(&dcc, NOW, NOW + 365 * 86_400, &*DSC).expect("a valid DCC signs");
    let v = Verifier::new(&DSC.trust, Some(ValueSets::embedded())).verify(&hc1, NOW + 60);
    assert!(v.ok(), "the verifier refuses what the signer signed: {:?}\n{json}", v.report());
    let signed = v.claims.map(|c| c.dcc);
    assert_eq!(signed, Some(serde_json::from_str(&json).expect("json")), "the signed DCC differs");
}
