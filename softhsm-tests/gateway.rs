//! The EU gateway's formats from a running appliance: the DSC upload is the CMS in base64 that
//! the gateway's `POST /signerCertificate` takes as `application/cms` (from the API as JSON and
//! as the bare body, and from `keys upload`), and the gateway upload key has a CSR path of its
//! own. Revocation batches (byte-identical to their signed content) are held to the gateway's
//! DTO in `audit.rs`, which runs on both store backends.

mod daemon;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use daemon::{BIN, Daemon};
use serde_json::json;

/// The DER of the first certificate in a PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).expect("PEM");
    pem.contents
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    Command::new("openssl").args(args).current_dir(dir).output().expect("openssl")
}

/// Checks an upload body as the gateway's parser does: base64 of a CMS SignedData that
/// `openssl cms -verify` accepts, carrying exactly one certificate (the upload key's) and the
/// DSC's DER as its content.
fn check_upload_body(d: &Daemon, body: &str, what: &str) {
    let der = B64.decode(body.trim_end()).unwrap_or_else(|e| panic!("{what}: not base64: {e}"));
    let dir = d.path();
    std::fs::write(dir.join("upload.der"), &der).unwrap();
    let verify = openssl(
        &[
            "cms",
            "-verify",
            "-noverify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "upload.der",
            "-out",
            "content.der",
            "-certsout",
            "signers.pem",
        ],
        dir,
    );
    assert!(verify.status.success(), "{what}: {}", String::from_utf8_lossy(&verify.stderr));
    let content = std::fs::read(dir.join("content.der")).unwrap();
    assert_eq!(content, pem_der(&dir.join("dsc/dsc-dev-1.pem")), "{what}: the content is the DSC");
    let signers = std::fs::read_to_string(dir.join("signers.pem")).unwrap();
    assert_eq!(signers.matches("BEGIN CERTIFICATE").count(), 1, "{what}: exactly one certificate");
    assert_eq!(pem_der(&dir.join("signers.pem")), pem_der(&dir.join("dsc/upload-dev.pem")), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dsc_upload_is_the_gateways_application_cms_body() {
    let mut d = Daemon::start();
    let mut o1 = d.client("officer1").await;

    // JSON: the base64 body and its media type.
    let r = o1.request(http::Method::POST, "/v1/keys/dsc-dev-1/upload", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json().unwrap();
    assert_eq!(body["media_type"], "application/cms");
    check_upload_body(&d, body["cms"].as_str().unwrap(), "JSON answer");

    // Accept: application/cms — the body to send on, as an integrator's curl receives it.
    let port = d.listen.port().to_string();
    let tls = d.path().join("tls");
    let curl = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-X", "POST", "-D", "-", "-H", "Accept: application/cms"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("officer1.pem"))
        .arg("--key")
        .arg(tls.join("officer1.key"))
        .arg(format!("https://localhost:{port}/v1/keys/dsc-dev-1/upload"))
        .output()
        .expect("curl");
    assert!(curl.status.success(), "{}", String::from_utf8_lossy(&curl.stderr));
    let reply = String::from_utf8(curl.stdout).unwrap();
    let (head, bare) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/cms\r\n"), "{head}");
    check_upload_body(&d, bare, "bare body");

    // The command line writes the same body to a file.
    let out = d.path().join("dsc-upload.cms");
    let cli = Command::new(BIN)
        .args(["keys", "--profile"])
        .arg(d.path().join("officer1.toml"))
        .args(["upload", "--label", "dsc-dev-1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("Content-Type: application/cms"));
    check_upload_body(&d, &std::fs::read_to_string(&out).unwrap(), "keys upload --out");
    assert_eq!(d.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_key_has_a_csr_path() {
    let mut d = Daemon::start();
    let csr = d.path().join("upload-2.csr");
    let run = |subject: &str| {
        Command::new(BIN)
            .args(["keys", "--profile"])
            .arg(d.path().join("officer1.toml"))
            .args(["csr", "--label", "upload-dev", "--subject", subject, "--out"])
            .arg(&csr)
            .output()
            .unwrap()
    };
    let ok = run("C=VN,O=Ministry of Health,CN=VN upload 2");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // A request signed by the upload key itself: its public key is the upload certificate's.
    let dir = d.path();
    let req = openssl(&["req", "-in", "upload-2.csr", "-verify", "-noout", "-subject"], dir);
    assert!(req.status.success(), "{}", String::from_utf8_lossy(&req.stderr));
    assert!(String::from_utf8_lossy(&req.stdout).contains("VN upload 2"));
    let key_of_csr = openssl(&["req", "-in", "upload-2.csr", "-pubkey", "-noout"], dir).stdout;
    let key_of_cert = openssl(&["x509", "-in", "dsc/upload-dev.pem", "-pubkey", "-noout"], dir).stdout;
    assert!(!key_of_csr.is_empty());
    assert_eq!(key_of_csr, key_of_cert);

    // Another country's subject is refused, and nothing is written.
    std::fs::remove_file(&csr).unwrap();
    let refused = run("C=DE,O=Ministry of Health,CN=VN upload 3");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("C=VN"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!csr.exists());

    // The request is in the audit log, under the upload key's label; an unknown label is still 404.
    let mut o1 = d.client("officer1").await;
    let audit = String::from_utf8(o1.get("/v1/audit").await.unwrap().body.to_vec()).unwrap();
    let bodies: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| B64.decode(l["entry"].as_str().unwrap()).unwrap())
        .map(|stored| String::from_utf8_lossy(&stored[32..]).into_owned())
        .collect();
    let csrs: Vec<&String> = bodies.iter().filter(|b| b.contains("(gateway upload key)")).collect();
    assert_eq!(csrs.len(), 1, "{bodies:?}");
    assert!(csrs[0].contains(r#""label":"upload-dev""#) && csrs[0].contains(r#""officer":"officer1""#));
    let r = o1.post("/v1/keys/upload-nope/csr", &json!({"subject": "C=VN,CN=x"})).await.unwrap();
    assert_eq!(r.status, 404);
    // An issuer cannot ask.
    let mut issuer = d.client("issuer").await;
    let r = issuer.post("/v1/keys/upload-dev/csr", &json!({"subject": "C=VN,CN=x"})).await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(d.terminate(), Some(0));
}
