//! DSCs belong to the country, tried as an officer importing a certificate the country's CSCA
//! never issued and as an administrator who adds a rogue CSCA to config.toml: a DSC from a
//! freshly made CSCA (even one with the real CSCA's name), one valid beyond its CSCA, one of
//! another country, one without digitalSignature, one that is a CA, and one whose
//! PrivateKeyUsagePeriod has ended are each refused naming the reason, the key stays
//! `generated`, the trust list and the audit log are unchanged; a rogue CSCA added to
//! `[[signing.csca]]` after the first start stops the start (exit 78).

use std::time::Duration;

use http::Method;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, IsCa, KeyUsagePurpose};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::daemon::Daemon;
use crate::dual_control::{audit_text, audit_verifies, csca_issuer, dsc_params, key, sign, signed_kids};

/// A freshly made CSCA with exactly the development CSCA's name (C=VN as PrintableString).
fn rogue_csca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, DnValue::PrintableString("VN".try_into().expect("printable")));
    dn.push(DnType::OrganizationName, "Ministry of Health (development)");
    dn.push(DnType::CommonName, "CSCA VN DEV");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(60);
    p.not_after = now + time::Duration::days(3650);
    let pem = p.self_signed(&key).expect("self-signed").pem();
    (rcgen::Issuer::new(p, key), pem)
}

/// The DER of a PrivateKeyUsagePeriod with only notAfter = `end`.
fn pkup_ending(end: OffsetDateTime) -> Vec<u8> {
    let t = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        end.year(),
        u8::from(end.month()),
        end.day(),
        end.hour(),
        end.minute(),
        end.second()
    );
    [&[0x30, 17, 0x81, 15][..], t.as_bytes()].concat()
}

/// Generates `label` through the admin API and returns its CSR.
async fn generated(
    o: &mut hcert_signer::client::ApiClient,
    label: &str,
) -> rcgen::CertificateSigningRequestParams {
    assert_eq!(o.post("/v1/keys", &json!({"label": label})).await.expect("generate").status, 201);
    let csr = o
        .post(&format!("/v1/keys/{label}/csr"), &json!({"subject": format!("C=VN,O=MoH,CN={label}")}))
        .await
        .expect("csr");
    assert_eq!(csr.status, 200);
    rcgen::CertificateSigningRequestParams::from_pem(std::str::from_utf8(&csr.body).expect("pem"))
        .expect("CSR")
}

/// PUTs `pem` as `label`'s certificate: (status, body).
async fn import(o: &mut hcert_signer::client::ApiClient, label: &str, pem: String) -> (u16, Value) {
    let r = o
        .request_typed(
            Method::PUT,
            &format!("/v1/keys/{label}/certificate"),
            "application/x-pem-file",
            pem.into_bytes(),
        )
        .await
        .expect("import");
    (r.status.as_u16(), r.json().unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dscs_not_issued_within_the_countrys_chain_are_refused() {
    let d = Daemon::start();
    let (mut o1, mut o2, mut issuer) =
        (d.client("officer1").await, d.client("officer2").await, d.client("issuer").await);
    let trust_before = issuer.get("/v1/trust-list").await.expect("trust list").body;
    let csr = generated(&mut o1, "dsc-r").await;
    let real = csca_issuer(&d);
    let now = OffsetDateTime::now_utc();
    let cert = |issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, tweak: &dyn Fn(&mut CertificateParams)| {
        let mut p = dsc_params("dsc-r");
        p.distinguished_name = csr.params.distinguished_name.clone();
        tweak(&mut p);
        p.signed_by(&csr.public_key, issuer).expect("certify").pem()
    };
    let (rogue, _) = rogue_csca();
    let attempts: Vec<(&str, String, &str, &str)> = vec![
        (
            "a rogue CSCA with the real one's name",
            cert(&rogue, &|_| {}),
            "dsc_chain",
            "the DSC is not signed by any CSCA in [[signing.csca]] (issuer C=VN, O=Ministry of Health (development), CN=CSCA VN DEV)",
        ),
        (
            "valid beyond the CSCA",
            cert(&real, &|p| p.not_after = now + time::Duration::days(365 * 20)),
            "dsc_chain",
            "the DSC's validity (",
        ),
        (
            "another country",
            cert(&real, &|p| {
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CountryName, "FR");
                dn.push(DnType::CommonName, "dsc-r");
                p.distinguished_name = dn;
            }),
            "refused",
            "the DSC's country \"FR\" is not the issuing country VN",
        ),
        (
            "keyUsage without digitalSignature",
            cert(&real, &|p| p.key_usages = vec![KeyUsagePurpose::ContentCommitment]),
            "dsc_chain",
            "the DSC's keyUsage lacks digitalSignature",
        ),
        (
            "a CA",
            cert(&real, &|p| {
                p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
            }),
            "dsc_chain",
            "the DSC is a CA certificate (basicConstraints cA is true)",
        ),
        (
            "a PrivateKeyUsagePeriod that has ended",
            cert(&real, &|p| {
                p.custom_extensions = vec![CustomExtension::from_oid_content(
                    &[2, 5, 29, 16],
                    pkup_ending(now - time::Duration::days(1)),
                )];
            }),
            "refused",
            "the DSC's PrivateKeyUsagePeriod (2.5.29.16) ends then",
        ),
    ];
    for (what, pem, code, message) in attempts {
        let (status, body) = import(&mut o1, "dsc-r", pem).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        let m = body["error"]["message"].as_str().unwrap_or("");
        assert!(m.contains(message), "{what}: {m}");
        let k = key(&mut o2, "dsc-r").await;
        assert_eq!(k["state"], "generated", "{what}: {k}");
    }
    assert_eq!(issuer.get("/v1/trust-list").await.expect("trust list").body, trust_before);

    // The same key with a genuine certificate whose PrivateKeyUsagePeriod ends in ten days
    // (tighter than the configured six months): imported, and its usage period ends there.
    let pkup_end = now + time::Duration::days(10);
    let pem = cert(&real, &|p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 16], pkup_ending(pkup_end))];
    });
    let (status, body) = import(&mut o1, "dsc-r", pem).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "certified");
    let end = OffsetDateTime::parse(
        body["usage_end"].as_str().expect("usage_end"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert_eq!(end.unix_timestamp(), pkup_end.unix_timestamp(), "{body}");
    for o in [&mut o1, &mut o2] {
        assert_eq!(
            o.request(Method::POST, "/v1/keys/dsc-r/approve", None).await.expect("approve").status,
            200
        );
    }
    let kid = body["kid"].as_str().expect("kid").to_owned();
    assert_eq!(signed_kids(&sign(&mut issuer, "chain-", 10).await), [kid].into());
    audit_verifies(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_csca_added_to_the_configuration_after_the_first_start_stops_the_start() {
    let mut d = Daemon::start();
    assert_eq!(d.terminate(), Some(0));
    let before = std::fs::read_to_string(d.path().join("config.toml")).expect("config");
    let (rogue, rogue_pem) = rogue_csca();
    std::fs::write(d.path().join("rogue-csca.pem"), rogue_pem).expect("write");
    d.append_config("\n[[signing.csca]]\ncertificate = \"rogue-csca.pem\"\n");
    let log = d.start_refused();
    assert!(log.contains("in [[signing.csca]] is not one this store was set up with"), "{log}");
    assert!(log.contains("never by editing config.toml"), "{log}");

    // Without it the appliance starts, and still refuses what the rogue CSCA issues.
    std::fs::write(d.path().join("config.toml"), &before).expect("restore config");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    let mut o1 = d.client("officer1").await;
    let csr = generated(&mut o1, "dsc-r").await;
    let mut p = dsc_params("dsc-r");
    p.distinguished_name = csr.params.distinguished_name.clone();
    let pem = p.signed_by(&csr.public_key, &rogue).expect("certify").pem();
    let (status, body) = import(&mut o1, "dsc-r", pem).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("dsc_chain")), "{body}");
    assert_eq!(key(&mut o1, "dsc-r").await["state"], "generated");
    audit_verifies(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_officer_cannot_add_a_csca_two_can() {
    let mut d = Daemon::start();
    let (mut o1, mut o2) = (d.client("officer1").await, d.client("officer2").await);
    let (new_csca, new_pem) = rogue_csca();
    let add = async |o: &mut hcert_signer::client::ApiClient| {
        let r = o
            .request_typed(Method::POST, "/v1/cscas", "application/x-pem-file", new_pem.clone().into_bytes())
            .await
            .expect("add CSCA");
        (r.status.as_u16(), r.json().unwrap_or(Value::Null))
    };
    let csr = generated(&mut o1, "dsc-n").await;
    let mut p = dsc_params("dsc-n");
    p.distinguished_name = csr.params.distinguished_name.clone();
    let pem = p.signed_by(&csr.public_key, &new_csca).expect("certify").pem();

    // One officer, twice: pending, and DSCs it issued are still refused.
    for _ in 0..2 {
        let (status, v) = add(&mut o1).await;
        assert_eq!(status, 202, "{v}");
        assert_eq!((v["state"].as_str(), v["approvals_missing"].as_u64()), (Some("pending"), Some(1)), "{v}");
        let (status, body) = import(&mut o1, "dsc-n", pem.clone()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("dsc_chain")), "{body}");
    }
    let listed = o2.get("/v1/cscas").await.expect("list").json().expect("json");
    let states: Vec<&str> =
        listed["cscas"].as_array().expect("cscas").iter().filter_map(|c| c["state"].as_str()).collect();
    assert_eq!(states, vec!["trusted", "pending"], "{listed}");
    assert_eq!(key(&mut o2, "dsc-n").await["state"], "generated");

    // A second officer: trusted, and the DSC imports.
    let (status, v) = add(&mut o2).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("trusted")), "{v}");
    let (status, body) = import(&mut o1, "dsc-n", pem).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("certified")), "{body}");
    let audit = audit_text(&mut o1).await;
    assert!(audit.contains("added by officer1, officer2"), "{audit}");

    // Now the store knows it: the configuration may list it.
    assert_eq!(d.terminate(), Some(0));
    std::fs::write(d.path().join("csca-2.pem"), &new_pem).expect("write");
    d.append_config("\n[[signing.csca]]\ncertificate = \"csca-2.pem\"\n");
    d.spawn();
    d.wait_ready(Duration::from_secs(60));
    audit_verifies(&d);
}
