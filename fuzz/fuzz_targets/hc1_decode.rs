//! Fuzzes the HCERT decoder and verifier: `HC1:` text, and raw COSE bytes, from anyone.
//!
//! Invariants, beyond "never panics":
//! * `verify(text)` reports exactly what `verify_cose` reports for the bytes under the transport
//!   layers, and those bytes survive a re-encoding (deflate + Base45) unchanged;
//! * the report is consistent: `ok` means every check passed (signature, time, key usage,
//!   schema, a certificate type, a kid and an algorithm); not `ok` means at least one error;
//! * a passed signature check means the kid names a DSC of the trust list, and the same
//!   signature with one bit flipped does not verify;
//! * the report serialises, and its errors do not repeat the holder's names or date of birth
//!   (the same DCC with other names gets the same messages).
#![no_main]

#[path = "common/privacy.rs"]
mod privacy;

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hcert_signer::hcert::TrustList;
use hcert_signer::hcert::transport::{self, Hc1Encoder};
use hcert_signer::hcert::validate::{FormatMode, SchemaOptions, check_schema_report};
use hcert_signer::hcert::valuesets::ValueSets;
use hcert_signer::hcert::verify::{Verification, Verifier};

/// Eight real DSCs (AT; CH with RSA; ES, IS and common vectors with EKUs; FI's non-strict DER;
/// CO15's empty EKU), so that inputs with their kids reach signature and key-usage checks.
static TRUST: LazyLock<TrustList> =
    LazyLock::new(|| TrustList::from_json(include_str!("../seed-trust-list.json")).expect("seed trust list"));

/// Inside the validity of the AT test vectors (2021-12-20).
const CLOCK: i64 = 1_640_000_000;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::new(&TRUST, Some(ValueSets::embedded()));
    if let Ok(text) = std::str::from_utf8(data) {
        let v = verifier.verify(text, CLOCK);
        check(&v);
        if let Ok(cose) = transport::decode(text) {
            let mut direct = Verification::default();
            verifier.verify_cose(&cose, CLOCK, &mut direct);
            assert_eq!(report_json(&v), report_json(&direct), "HC1 and COSE paths disagree");
            let again = Hc1Encoder::default().encode(&cose).expect("encode");
            assert_eq!(transport::decode(&again).expect("re-encoded HC1 decodes"), cose);
        }
    }
    // The same bytes as a COSE_Sign1, skipping the transport layers.
    let mut v = Verification::default();
    verifier.verify_cose(data, CLOCK, &mut v);
    check(&v);
});

fn report_json(v: &Verification) -> String {
    serde_json::to_string(&v.report()).expect("the report serialises")
}

fn check(v: &Verification) {
    let report = v.report();
    let json = report_json(v);
    if report.ok {
        assert!(report.errors.is_empty(), "ok with errors: {json}");
        assert!(report.signature_valid && report.time_valid, "ok without signature or time: {json}");
        assert!(report.kid.is_some() && report.alg.is_some() && report.r#type.is_some(), "{json}");
        assert!(matches!(v.key_usage, Some(Ok(()))) && matches!(v.schema, Some(Ok(()))), "{json}");
    } else {
        assert!(!report.errors.is_empty(), "refused without a reason: {json}");
    }
    if matches!(v.signature, Some(Ok(()))) {
        let cose = v.cose.as_ref().expect("a signature was checked without a COSE_Sign1");
        let kid = cose.kid.as_deref().expect("a signature verified without a kid");
        let dsc = TRUST.get(kid).expect("a signature verified with a kid outside the trust list");
        let alg = cose.alg.expect("a signature verified without an algorithm");
        assert_eq!(report.kid.as_deref(), Some(B64.encode(kid).as_str()));
        let mut forged = cose.signature.clone();
        if let Some(b) = forged.last_mut() {
            *b ^= 1;
        }
        assert!(dsc.verify(alg, &cose.tbs, &forged).is_err(), "a flipped signature bit still verifies");
    }
    if let Some(claims) = &v.claims {
        // The schema and value-set errors of the report, for these names and for others.
        let options = SchemaOptions { value_sets: Some(ValueSets::embedded()), formats: FormatMode::Lenient };
        let errors = |dcc: &serde_json::Value| -> Vec<String> {
            check_schema_report(dcc, &options).iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            errors(&claims.dcc),
            errors(&privacy::with_other_names(&claims.dcc)),
            "a verifier error repeats the holder's name or date of birth"
        );
    }
}
