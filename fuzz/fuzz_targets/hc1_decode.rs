//! Fuzzes the HCERT decoder and verifier: `HC1:` text, and raw COSE bytes, from anyone.
#![no_main]

use std::sync::LazyLock;

use hcert_signer::hcert::TrustList;
use hcert_signer::hcert::valuesets::ValueSets;
use hcert_signer::hcert::verify::{Verification, Verifier};

/// One real DSC (AT test vector), so inputs carrying its kid reach signature verification.
static TRUST: LazyLock<TrustList> = LazyLock::new(|| {
    TrustList::from_json(include_str!("../seed-trust-list.json")).expect("seed trust list")
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::new(&TRUST, Some(ValueSets::embedded()));
    if let Ok(text) = std::str::from_utf8(data) {
        let v = verifier.verify(text, 1_640_000_000);
        let _ = v.report();
    }
    // The same bytes as a COSE_Sign1, skipping the transport layers.
    let mut v = Verification::default();
    verifier.verify_cose(data, 1_640_000_000, &mut v);
    let _ = v.report();
});
