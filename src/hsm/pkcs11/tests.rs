//! Return-value classification and the pool against a real SoftHSM token.

use super::*;
use cryptoki::context::Function;

#[test]
fn rv_names_are_pkcs11_names() {
    let e = CkError::Pkcs11(RvError::DeviceError, Function::Sign);
    assert_eq!(rv_name(&e), "CKR_DEVICE_ERROR");
    let e = CkError::Pkcs11(RvError::CryptokiNotInitialized, Function::Sign);
    assert_eq!(rv_name(&e), "CKR_CRYPTOKI_NOT_INITIALIZED");
}

#[test]
fn classification() {
    let f = |rv| CkError::Pkcs11(rv, Function::Sign);
    for rv in [
        RvError::DeviceError,
        RvError::DeviceRemoved,
        RvError::TokenNotPresent,
        RvError::SessionHandleInvalid,
        RvError::SessionClosed,
        RvError::GeneralError,
        RvError::CryptokiNotInitialized,
    ] {
        assert!(is_fault(&f(rv)), "{rv:?}");
        assert!(ck_error("sign", &f(rv)).is_transient(), "{rv:?}");
    }
    assert!(matches!(ck_error("login", &f(RvError::PinIncorrect)), Error::PinIncorrect));
    assert!(matches!(ck_error("login", &f(RvError::PinLocked)), Error::PinLocked));
    assert!(!is_fault(&f(RvError::PinIncorrect)));
    assert!(!ck_error("sign", &f(RvError::MechanismInvalid)).is_transient());
}

/// Runs `body` with the config of a fresh SoftHSM2 token, in a child process of this test
/// binary whose `SOFTHSM2_CONF` names it (SoftHSM reads it at `C_Initialize`, and setting a
/// variable in this process is `unsafe`).
fn with_softhsm_token(test: &str, body: impl FnOnce(Pkcs11Config)) {
    const CHILD: &str = "HCERT_PKCS11_UNIT_TOKEN";
    const MODULES: [&str; 3] = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    ];
    if let Some(dir) = std::env::var_os(CHILD) {
        let module = MODULES.iter().find(|m| std::path::Path::new(m).exists()).expect("SoftHSM2 module");
        let pin = std::path::PathBuf::from(dir).join("pin");
        let mut cfg = Pkcs11Config::new(*module, "unit", super::super::PinSource::File(pin));
        cfg.pool_size = Some(2);
        cfg.op_timeout_ms = 3000;
        cfg.reinit_backoff_ms = 50;
        cfg.reinit_backoff_max_ms = 400;
        return body(cfg);
    }
    assert!(
        MODULES.iter().any(|m| std::path::Path::new(m).exists()),
        "SoftHSM2 is not installed (apt-get install softhsm2 opensc)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = super::super::softhsm::init_token(dir.path(), "unit", "so-pin-5678", "user-pin-1234")
        .expect("softhsm2-util --init-token");
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "user-pin-1234\n").expect("pin");
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env("SOFTHSM2_CONF", conf)
        .env(CHILD, dir.path())
        .status()
        .expect("re-run the test with SOFTHSM2_CONF set");
    assert!(status.success(), "{test} failed in its token process ({status})");
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A signature that fails its check (run by the caller, after the pool answered) must never
/// be released, and must reset the generation that made it, after which signing resumes.
#[test]
fn a_signature_failing_its_check_resets_the_pool() {
    with_softhsm_token("hsm::pkcs11::tests::a_signature_failing_its_check_resets_the_pool", |cfg| {
        use super::super::{Hsm, sha256};
        let backend = Pkcs11Backend::open(&cfg).expect("open the token");
        let hsm = Hsm::from_backend(backend.clone());
        hsm.generate_key("unit-a").expect("generate");
        let other = hsm.generate_key("unit-b").expect("generate");
        let items: Vec<(Vec<u8>, [u8; 32])> =
            (0..64u8).map(|i| vec![i; 40]).map(|m| (m.clone(), sha256(&m))).collect();
        assert_eq!(hsm.sign_many("unit-a", &items).expect("sign").len(), 64);

        // Make the cached verifier of unit-a the key of unit-b: every signature now fails.
        let wrong = hsm.inner.shared.verifiers.read().expect("cache").get("unit-a").cloned();
        assert!(wrong.is_some());
        hsm.sign("unit-b", b"warm", &sha256(b"warm")).expect("sign with unit-b");
        let b = hsm.inner.shared.verifiers.read().expect("cache").get("unit-b").cloned();
        hsm.inner.shared.verifiers.write().expect("cache").insert("unit-a".into(), b.expect("cached"));
        let e = hsm.sign_many("unit-a", &items).expect_err("signatures checked with the wrong key");
        assert!(matches!(e, Error::BadSignature { .. }), "{e:?}");
        let stats = hsm.stats();
        assert_eq!(stats.signatures, 65, "nothing of the failed batch released: {stats:?}");
        assert!(stats.bad_signatures >= 1 && stats.backend.faults >= 1, "{stats:?}");
        assert!(!hsm.inner.shared.verifiers.read().expect("cache").contains_key("unit-a"), "stale key kept");

        // The generation is rebuilt and the right key is read again.
        assert!(wait_for(|| backend.stats().available && backend.stats().reinits >= 1), "{:?}", hsm.stats());
        let sigs = hsm.sign_many("unit-a", &items).expect("sign after the reset");
        let vk = p256::ecdsa::VerifyingKey::from(&hsm.public_key("unit-a").expect("pk"));
        for ((m, _), sig) in items.iter().zip(&sigs) {
            use p256::ecdsa::signature::Verifier;
            let sig = p256::ecdsa::Signature::from_slice(sig).expect("sig");
            assert!(vk.verify(m, &sig).is_ok());
        }
        assert_ne!(other.public_key, hsm.public_key("unit-a").expect("pk"));
    });
}

#[test]
fn missing_module_is_reported_with_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234\n").expect("pin");
    let cfg = Pkcs11Config::new(dir.path().join("nope.so"), "t", super::super::PinSource::File(pin));
    let Err(e) = Pkcs11Backend::open(&cfg) else { panic!("opened a missing module") };
    assert!(matches!(e, Error::ModuleNotFound { .. }));
    assert!(e.to_string().contains("nope.so"), "{e}");
}

#[test]
fn protection_names_each_wrong_attribute() {
    let fit = vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::NeverExtractable(true),
        Attribute::Local(true),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    // CKA_SIGN_RECOVER may be unreported; everything else is required.
    assert!(objects::protection_faults(&fit).is_empty());
    let mut imported = fit.clone();
    imported[3] = Attribute::NeverExtractable(false);
    imported[4] = Attribute::Local(false);
    let f = objects::protection_faults(&imported);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].starts_with("CKA_NEVER_EXTRACTABLE is false (the key was extractable at some time"),
        "{f:?}"
    );
    assert!(f[1].starts_with("CKA_LOCAL is false"), "{f:?}");
    let mut recover = fit.clone();
    recover.push(Attribute::SignRecover(true));
    assert!(objects::protection_faults(&recover)[0].starts_with("CKA_SIGN_RECOVER is true"));
    let f = objects::protection_faults(&fit[1..]);
    assert_eq!(f, vec!["CKA_PRIVATE is not reported by the module (it must be true)".to_owned()]);
    let e = Error::KeyRefused { label: "dsc-x".into(), reasons: f };
    assert_eq!(
        e.to_string(),
        "key \"dsc-x\" is refused: CKA_PRIVATE is not reported by the module (it must be true)"
    );
}

/// The store's KEK on a real token: generated with exactly the protective attributes, data
/// keys round-trip through C_WrapKey/C_UnwrapKey (RFC 5649) without leaving token objects, a
/// damaged or foreign wrapped key is refused, and a look-alike KEK made outside the appliance
/// (extractable, or allowed to encrypt) is refused naming the attribute.
#[test]
fn the_kek_wraps_only_and_refuses_weaker_look_alikes() {
    with_softhsm_token("hsm::pkcs11::tests::the_kek_wraps_only_and_refuses_weaker_look_alikes", |cfg| {
        use super::super::Hsm;
        let backend = Pkcs11Backend::open(&cfg).expect("open the token");
        let hsm = Hsm::from_backend(backend.clone());
        assert!(matches!(hsm.find_kek("kek"), Err(Error::KekNotFound { .. })));
        hsm.generate_kek("kek").expect("generate the KEK");
        hsm.find_kek("kek").expect("the KEK passes its own checks");
        assert!(matches!(hsm.generate_kek("kek"), Err(Error::KeyExists { .. })), "never a second one");
        let key = [0x5a_u8; 32];
        let wrapped = hsm.wrap_data_key("kek", &key).expect("wrap");
        assert_eq!(wrapped.len(), 40, "RFC 5649 of 32 bytes");
        assert!(!wrapped.windows(8).any(|w| w == [0x5a; 8]), "not in clear");
        assert_eq!(hsm.unwrap_data_key("kek", &wrapped).expect("unwrap").as_slice(), &key);
        let mut bad = wrapped.clone();
        bad[3] ^= 1;
        let e = hsm.unwrap_data_key("kek", &bad);
        assert!(matches!(e, Err(Error::Refused { .. })), "a damaged key: {e:?}");

        // What the token holds: the KEK only, as a token object; the data keys left nothing.
        let (secret, kek) = backend
            .inner()
            .call(Kind::Admin, "inspect", 4, |s, _| {
                let all = s
                    .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
                    .map_err(|e| ck_error("find", &e))?;
                let attrs = s
                    .get_attributes(
                        all[0],
                        &[AttributeType::Token, AttributeType::Extractable, AttributeType::Local],
                    )
                    .map_err(|e| ck_error("attrs", &e))?;
                Ok((all.len(), attrs))
            })
            .expect("inspect");
        assert_eq!(secret, 1, "no data key stayed on the token");
        assert!(kek.contains(&Attribute::Token(true)) && kek.contains(&Attribute::Extractable(false)));
        assert!(kek.contains(&Attribute::Local(true)));

        // Look-alikes made outside the appliance are refused, naming what is wrong.
        for (label, weak, attribute) in [
            ("weak-extractable", Attribute::Extractable(true), "CKA_EXTRACTABLE"),
            ("weak-encrypt", Attribute::Encrypt(true), "CKA_ENCRYPT"),
        ] {
            let label_bytes = label.as_bytes().to_vec();
            backend
                .inner()
                .call(Kind::Admin, "plant", 2, move |s, _| {
                    let mut template = vec![
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Wrap(true),
                        Attribute::Unwrap(true),
                        Attribute::Label(label_bytes),
                    ];
                    template.push(weak);
                    s.generate_key(&Mechanism::AesKeyGen, &template).map_err(|e| ck_error("plant", &e))
                })
                .expect("plant a look-alike");
            let e = hsm.find_kek(label).expect_err("a weaker KEK is refused");
            assert!(matches!(e, Error::UnsafeKek { .. }) && e.to_string().contains(attribute), "{e}");
            assert!(hsm.wrap_data_key(label, &key).is_err(), "and never used");
        }
    });
}
