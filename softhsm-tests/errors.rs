//! Acceptance 3: a wrong PIN, a missing module path and a missing token label each give a
//! one-line actionable error, fail fast, and cause no retry storm (the PIN is presented once).

mod common;

use std::time::{Duration, Instant};

use common::{SO_PIN, TOKEN_LABEL, USER_PIN, module, wait_for, with_fresh_token, write_private};
use cryptoki::session::UserType;
use hcert_signer::hsm::pkcs11::login_attempts;
use hcert_signer::hsm::{Error, Hsm, HsmConfig, PinSource, sha256};

const PIN_MESSAGE: &str = "the HSM rejected the user PIN (CKR_PIN_INCORRECT); not retrying — check the PIN file, the token will lock after repeated failures";

#[test]
fn wrong_pin_fails_fast_and_is_tried_once() {
    with_fresh_token("wrong_pin_fails_fast_and_is_tried_once", |token| {
        let wrong = token.dir.join("wrong-pin");
        write_private(&wrong, "not-the-pin\n");
        let mut cfg = token.config();
        cfg.pin = PinSource::File(wrong);
        let started = Instant::now();
        let err = Hsm::open(&HsmConfig::Pkcs11(cfg)).expect_err("wrong PIN must fail");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(err, Error::PinIncorrect), "{err:?}");
        assert_eq!(err.to_string(), PIN_MESSAGE);
        assert!(!err.is_transient());
        assert!(!err.to_string().contains("not-the-pin"));
        assert_eq!(login_attempts(), 1);
        // Nothing keeps trying in the background.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(login_attempts(), 1);
    });
}

#[test]
fn pin_changed_on_token_stops_recovery_without_retrying() {
    with_fresh_token("pin_changed_on_token_stops_recovery_without_retrying", |token| {
        let hsm = token.open();
        hsm.generate_key("dsc-pin").expect("generate");
        assert_eq!(login_attempts(), 1);

        // An officer changes the user PIN on the token; then the module is finalised behind the
        // pool's back, so its re-initialisation must log in again — with the old PIN.
        let (raw, slot) = hcert_signer::hsm::softhsm::raw_slot(&module(), TOKEN_LABEL).expect("raw handle");
        {
            let s = raw.open_rw_session(slot).expect("rw session");
            let _ = s.login(UserType::User, Some(&USER_PIN.to_string().into()));
            s.set_pin(&USER_PIN.to_string().into(), &"a-new-user-pin".to_string().into()).expect("C_SetPIN");
        }
        raw.finalize().expect("C_Finalize");

        let m = b"after the PIN change";
        // The first call sees the fault; recovery then fails on the PIN and stops.
        let _ = hsm.sign("dsc-pin", m, &sha256(m));
        assert!(
            wait_for(Duration::from_secs(5), || matches!(
                hsm.sign("dsc-pin", m, &sha256(m)),
                Err(Error::PinIncorrect)
            )),
            "{:?}",
            hsm.stats()
        );
        assert_eq!(login_attempts(), 2, "one login at start, one at re-initialisation");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(login_attempts(), 2, "the wrong PIN must not be retried");
        let _ = SO_PIN;
    });
}

#[test]
fn missing_module_names_the_path() {
    with_fresh_token("missing_module_names_the_path", |token| {
        let mut cfg = token.config();
        cfg.module = "/opt/vendor/lib/libnohsm.so".into();
        let err = Hsm::open(&HsmConfig::Pkcs11(cfg)).expect_err("missing module");
        assert!(matches!(err, Error::ModuleNotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "PKCS#11 module /opt/vendor/lib/libnohsm.so cannot be loaded (no such file); install the HSM vendor's library or fix hsm.module"
        );
        // A file that is not a PKCS#11 library at all.
        let mut cfg = token.config();
        cfg.module = token.conf.clone();
        let err = Hsm::open(&HsmConfig::Pkcs11(cfg)).expect_err("not a library");
        assert!(matches!(err, Error::ModuleNotFound { .. }), "{err:?}");
        assert!(!err.to_string().contains('\n'));
        assert_eq!(login_attempts(), 0);
    });
}

#[test]
fn missing_token_lists_the_tokens_present() {
    with_fresh_token("missing_token_lists_the_tokens_present", |token| {
        let mut cfg = token.config();
        cfg.token_label = "hcert-prod".into();
        let err = Hsm::open(&HsmConfig::Pkcs11(cfg)).expect_err("missing token");
        assert_eq!(
            err.to_string(),
            "no HSM token labelled \"hcert-prod\"; tokens present: [\"hcert-test\"]; fix hsm.token_label or plug in / initialise the token"
        );
        assert_eq!(login_attempts(), 0);
        // The module was finalised again: the right label still opens in the same process.
        let hsm = token.open();
        hsm.health().expect("health");
    });
}
