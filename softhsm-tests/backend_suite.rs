//! Acceptance 4: one backend test suite (generate, refuse duplicates, find, list, sign, verify,
//! batch, errors, health), run against a real SoftHSM2 token and against the YubiHSM2 backend on
//! the yubihsm crate's MockHsm (no YubiHSM device exists in CI). The MockHsm tests need
//! `--features yubihsm-mock` (the test command enables it; MockHsm refuses release builds).

mod common;

use common::{backend_suite, with_fresh_token};
#[cfg(feature = "yubihsm-mock")]
use hcert_signer::hsm::yubihsm::YubiHsmBackend;
#[cfg(feature = "yubihsm-mock")]
use hcert_signer::hsm::{Error, Hsm};

#[test]
fn softhsm_passes_the_backend_suite() {
    with_fresh_token("softhsm_passes_the_backend_suite", |token| {
        let hsm = token.open();
        assert_eq!(hsm.backend_name(), "pkcs11");
        backend_suite(&hsm);
    });
}

#[cfg(feature = "yubihsm-mock")]
fn mock_hsm() -> Hsm {
    let backend = YubiHsmBackend::from_connector(
        yubihsm::Connector::mockhsm(),
        yubihsm::Credentials::default(),
        1,
        yubihsm::Domain::DOM1,
    )
    .expect("connect to MockHsm");
    Hsm::from_backend(backend)
}

#[cfg(feature = "yubihsm-mock")]
#[test]
fn yubihsm_mock_passes_the_backend_suite() {
    let hsm = mock_hsm();
    assert_eq!(hsm.backend_name(), "yubihsm");
    backend_suite(&hsm);
}

#[cfg(feature = "yubihsm-mock")]
#[test]
fn yubihsm_key_is_sign_only_and_not_exportable() {
    let connector = yubihsm::Connector::mockhsm();
    let backend = YubiHsmBackend::from_connector(
        connector.clone(),
        yubihsm::Credentials::default(),
        1,
        yubihsm::Domain::DOM1,
    )
    .expect("connect");
    let hsm = Hsm::from_backend(backend);
    let key = hsm.generate_key("yk-1").expect("generate");
    let id = u16::from_be_bytes([key.id[0], key.id[1]]);
    // Inspect the object through a separate client on the same (mock) device.
    let client =
        yubihsm::Client::open(connector, yubihsm::Credentials::default(), false).expect("second client");
    let info = client.get_object_info(id, yubihsm::object::Type::AsymmetricKey).expect("object info");
    assert_eq!(info.capabilities, yubihsm::Capability::SIGN_ECDSA);
    assert!(!info.capabilities.contains(yubihsm::Capability::EXPORTABLE_UNDER_WRAP));
    assert_eq!(info.label.to_string(), "yk-1");
}

#[cfg(feature = "yubihsm-mock")]
#[test]
fn yubihsm_wrong_password_is_a_one_line_auth_error() {
    let err = YubiHsmBackend::from_connector(
        yubihsm::Connector::mockhsm(),
        yubihsm::Credentials::from_password(1, b"not the password"),
        1,
        yubihsm::Domain::DOM1,
    )
    .err()
    .expect("wrong password must fail");
    assert!(matches!(err, Error::AuthFailed { key_id: 1 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the YubiHSM rejected authentication key 1 (wrong id or password); not retrying — check hsm.auth_key_id and the password file"
    );
}
