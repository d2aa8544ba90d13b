//! Fuzzes the CMS SignedData check of gateway uploads (`pki::cms::verify_upload`), which reads
//! whatever DER it is handed.
//!
//! Invariants, beyond "never panics":
//! * a refusal is a parse or a verification error;
//! * an accepted message is accepted again with the same content, and refused with a byte
//!   appended or its last byte cut off (DER, no trailing data);
//! * its content cannot be changed: flipping a bit of the content wherever it appears makes
//!   the message fail.
#![no_main]

use hcert_signer::pki::Error;
use hcert_signer::pki::cms::verify_upload;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let content = match verify_upload(data) {
        Ok(c) => c,
        Err(e) => {
            assert!(matches!(e, Error::Parse { .. } | Error::Verify(_)), "{e:?}");
            return;
        }
    };
    assert_eq!(verify_upload(data).ok().as_ref(), Some(&content), "not deterministic");
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(verify_upload(&longer).is_err(), "accepted with a trailing byte");
    assert!(verify_upload(&data[..data.len() - 1]).is_err(), "accepted without its last byte");

    if content.is_empty() {
        return;
    }
    let at: Vec<usize> =
        data.windows(content.len()).enumerate().filter(|(_, w)| *w == content).map(|(i, _)| i).collect();
    // Overlapping occurrences cannot all be flipped at once; the case is too rare to matter.
    if at.windows(2).any(|p| p[1] < p[0] + content.len()) {
        return;
    }
    let mut altered = data.to_vec();
    for i in &at {
        altered[*i] ^= 0x01;
    }
    assert!(verify_upload(&altered).is_err(), "accepted with its content altered");
});
