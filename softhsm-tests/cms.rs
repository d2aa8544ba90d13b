//! Gateway uploads signed by an upload key in a real SoftHSM2 token: the CMS SignedData verifies
//! here and with OpenSSL, returns the content it carries, and is refused once altered or when the
//! certificate belongs to another key.

mod common;

use std::path::Path;
use std::process::Command;

use common::with_fresh_token;
use hcert_signer::hsm::Hsm;
use hcert_signer::pki::Error;
use hcert_signer::pki::cms::{sign_upload, verify_upload};
use hcert_signer::pki::csr::build_csr;
use hcert_signer::pki::dev::DevCa;
use time::{Duration, OffsetDateTime};

/// A revocation batch as the gateway takes it (the exact JSON does not matter to CMS).
const BATCH: &[u8] = br#"{"country":"VN","expires":"2027-01-01T00:00:00Z","kid":"AAECAwQFBgc=",
"hashType":"SIGNATURE","entries":[{"hash":"3fBZ5cCNPWfCBJt3R+cC4A=="}]}
"#;

/// A certificate from `ca` for HSM key `label`, DER.
fn certify(hsm: &Hsm, ca: &DevCa, label: &str, subject: &str) -> Vec<u8> {
    let csr = build_csr(hsm, label, subject).expect("CSR");
    let now = OffsetDateTime::now_utc();
    let pem =
        ca.certify_dsc(&csr, now - Duration::hours(1), now + Duration::days(365), None).expect("certify");
    let (rest, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("certificate PEM");
    assert!(rest.iter().all(u8::is_ascii_whitespace), "one certificate expected");
    pem.contents
}

/// `openssl cms -verify -inform DER -noverify` (signature checked, chain not built) on `der`:
/// `None` when there is no `openssl` binary, else the content it printed or its error output.
fn openssl_verify(dir: &Path, der: &[u8]) -> Option<Result<Vec<u8>, String>> {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("note: no openssl binary on this machine; the OpenSSL cross-check is skipped");
        return None;
    }
    let input = dir.join("upload.p7");
    let output = dir.join("content.out");
    std::fs::write(&input, der).expect("write the SignedData");
    let _ = std::fs::remove_file(&output);
    let run = Command::new("openssl")
        .args(["cms", "-verify", "-inform", "DER", "-noverify", "-in"])
        .arg(&input)
        .arg("-out")
        .arg(&output)
        .output()
        .expect("run openssl");
    Some(if run.status.success() {
        Ok(std::fs::read(&output).expect("openssl's output"))
    } else {
        Err(String::from_utf8_lossy(&run.stderr).into_owned())
    })
}

#[test]
fn uploads_signed_in_the_hsm_verify_here_and_with_openssl() {
    with_fresh_token("uploads_signed_in_the_hsm_verify_here_and_with_openssl", |token| {
        let hsm = token.open();
        let ca = DevCa::new("VN", "Ministry of Health", "dev CSCA", 5).expect("dev CSCA");
        hsm.generate_key("upload-1").expect("generate upload-1");
        let upload_cert = certify(&hsm, &ca, "upload-1", "C=VN,O=Ministry of Health,CN=VN upload");
        // The two uploads the gateway takes: a DSC certificate, and a revocation batch.
        hsm.generate_key("dsc-1").expect("generate dsc-1");
        let dsc_cert = certify(&hsm, &ca, "dsc-1", "C=VN,O=Ministry of Health,CN=DSC VN 1");
        let tmp = tempfile::tempdir().expect("tempdir");

        for (what, content) in [("DSC certificate", dsc_cert.as_slice()), ("revocation batch", BATCH)] {
            let der = sign_upload(&hsm, "upload-1", &upload_cert, content).expect(what);
            assert_eq!(verify_upload(&der).expect(what), content, "{what}");
            if let Some(openssl) = openssl_verify(tmp.path(), &der) {
                let out = openssl.unwrap_or_else(|e| panic!("openssl refused the {what} upload: {e}"));
                assert_eq!(out, content, "openssl returned other content for the {what}");
            }
        }
    });
}

#[test]
fn altered_uploads_and_foreign_certificates_are_refused() {
    with_fresh_token("altered_uploads_and_foreign_certificates_are_refused", |token| {
        let hsm = token.open();
        let ca = DevCa::new("VN", "Ministry of Health", "dev CSCA", 5).expect("dev CSCA");
        hsm.generate_key("upload-1").expect("generate upload-1");
        hsm.generate_key("upload-2").expect("generate upload-2");
        let cert_1 = certify(&hsm, &ca, "upload-1", "C=VN,O=Ministry of Health,CN=VN upload");
        let cert_2 = certify(&hsm, &ca, "upload-2", "C=VN,O=Ministry of Health,CN=VN upload 2");
        let tmp = tempfile::tempdir().expect("tempdir");

        // One byte of the content changed inside the DER: the signature over the attributes
        // still holds, the messageDigest no longer matches.
        let der = sign_upload(&hsm, "upload-1", &cert_1, BATCH).expect("sign");
        let at = der.windows(BATCH.len()).position(|w| w == BATCH).expect("the content is in the DER");
        let mut altered = der.clone();
        altered[at + 10] ^= 0x20;
        let e = verify_upload(&altered).expect_err("altered content must be refused");
        assert!(matches!(e, Error::Verify(_)), "{e:?}");
        assert!(e.to_string().contains("messageDigest attribute does not match the content"), "{e}");
        if let Some(openssl) = openssl_verify(tmp.path(), &altered) {
            assert!(openssl.is_err(), "openssl accepted altered content");
        }

        // The certificate of upload-2 offered for key upload-1: refused before anything is signed.
        let e =
            sign_upload(&hsm, "upload-1", &cert_2, BATCH).expect_err("foreign certificate must be refused");
        assert!(matches!(e, Error::Mismatch(_)), "{e:?}");
        assert!(e.to_string().contains("not the public key of HSM key \"upload-1\""), "{e}");
        // While each key signs with its own certificate.
        let der = sign_upload(&hsm, "upload-2", &cert_2, BATCH).expect("sign with upload-2");
        assert_eq!(verify_upload(&der).expect("verify"), BATCH);

        // A key that does not exist.
        let e = sign_upload(&hsm, "upload-9", &cert_1, BATCH).expect_err("no such key").to_string();
        assert!(e.contains("upload-9"), "{e}");
    });
}
