//! `hcert-signer keys …`: a security officer's client of the admin API — list, generate, csr,
//! import-cert, approve, retire, csca-list, csca-add, trust-list and upload — using the
//! officer's profile file (the appliance's address and the officer's client certificate).

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use http::Method;

use crate::client::{Profile, Reply};
use crate::{Error, Result};

/// Arguments of `keys`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The officer's profile (`address`, `ca`, `cert`, `key`; dev-init writes `DIR/officer1.toml`).
    #[arg(long, value_name = "FILE", env = "HCERT_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The key operations.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Every key with its state, validity, usage period and approvals.
    List,
    /// Generate a new P-256 key pair inside the HSM.
    Generate {
        /// The key's label in the HSM.
        #[arg(long)]
        label: String,
    },
    /// Get a PKCS#10 CSR for the key, signed inside the HSM, to send to the CSCA (a DSC not yet
    /// active, or the gateway upload key of `[signing.upload]`).
    Csr {
        /// The key's label.
        #[arg(long)]
        label: String,
        /// The DSC subject, e.g. `C=VN,O=Ministry of Health,CN=DSC VN 2`.
        #[arg(long)]
        subject: String,
        /// Write the CSR here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Import the DSC certificate the CSCA issued for the key.
    ImportCert {
        /// The key's label.
        #[arg(long)]
        label: String,
        /// The certificate, PEM.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The key's private-key usage period in days from notBefore (default: the appliance's,
        /// six months).
        #[arg(long)]
        usage_days: Option<u32>,
    },
    /// Approve the key's activation (a second, different officer's approval activates it).
    Approve {
        /// The key's label.
        #[arg(long)]
        label: String,
    },
    /// Take the key out of service (its DSC stays in the trust list until it expires). One
    /// officer retires a key other active keys cover for every certificate type; the last
    /// cover of a type waits for a second, different officer's retire.
    Retire {
        /// The key's label.
        #[arg(long)]
        label: String,
    },
    /// The country's CSCAs a DSC must chain to, and additions waiting for a second officer.
    CscaList,
    /// Ask to trust a CSCA: two different officers must each run this with the same certificate.
    CscaAdd {
        /// The CSCA certificate, PEM.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
    /// The trust list: every DSC active or retired and not expired, `{"kid": "DER base64"}`.
    TrustList {
        /// Write it here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// The key's DSC as a CMS SignedData upload message for the EU gateway: the base64 body of
    /// its `POST /signerCertificate`, sent as `Content-Type: application/cms`.
    Upload {
        /// The key's label.
        #[arg(long)]
        label: String,
        /// Where to write the upload body (the CMS DER, base64).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Runs one key operation against the appliance.
pub fn run(args: Args) -> Result<ExitCode> {
    let profile = Profile::given(args.profile.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut c = profile.connect().await?;
        let label_path = |label: &str, tail: &str| format!("/v1/keys/{}/{tail}", percent(label));
        let reply = match &args.action {
            Action::List => c.get("/v1/keys").await?,
            Action::Generate { label } => c.post("/v1/keys", &serde_json::json!({ "label": label })).await?,
            Action::Csr { label, subject, .. } => {
                c.post(&label_path(label, "csr"), &serde_json::json!({ "subject": subject })).await?
            }
            Action::ImportCert { label, cert, usage_days } => {
                let pem = std::fs::read(cert).map_err(Error::file(cert))?;
                let mut path = label_path(label, "certificate");
                if let Some(d) = usage_days {
                    path.push_str(&format!("?usage_days={d}"));
                }
                c.request_typed(Method::PUT, &path, "application/x-pem-file", pem).await?
            }
            Action::Approve { label } => c.request(Method::POST, &label_path(label, "approve"), None).await?,
            Action::Retire { label } => c.request(Method::POST, &label_path(label, "retire"), None).await?,
            Action::CscaList => c.get("/v1/cscas").await?,
            Action::CscaAdd { cert } => {
                let pem = std::fs::read(cert).map_err(Error::file(cert))?;
                c.request_typed(Method::POST, "/v1/cscas", "application/x-pem-file", pem).await?
            }
            Action::TrustList { .. } => c.get("/v1/trust-list").await?,
            Action::Upload { label, .. } => {
                c.request(Method::POST, &label_path(label, "upload"), None).await?
            }
        };
        if !reply.status.is_success() {
            return Err(refused(&reply));
        }
        match &args.action {
            Action::Csr { out: Some(out), .. } | Action::TrustList { out: Some(out) } => {
                std::fs::write(out, &reply.body).map_err(Error::file(out))?;
                eprintln!("wrote {}", out.display());
            }
            Action::Upload { out, .. } => {
                let body = reply.json()?;
                // Checked as base64 here, so a damaged reply never reaches the gateway.
                let cms = body["cms"]
                    .as_str()
                    .filter(|s| B64.decode(s).is_ok())
                    .ok_or_else(|| Error::Io(std::io::Error::other("the reply carries no CMS message")))?;
                std::fs::write(out, cms).map_err(Error::file(out))?;
                eprintln!(
                    "wrote {} (kid {}): send it to the gateway as Content-Type: application/cms",
                    out.display(),
                    body["kid"].as_str().unwrap_or("?")
                );
            }
            Action::CscaAdd { cert } if reply.status == http::StatusCode::ACCEPTED => {
                print_reply(&reply);
                eprintln!(
                    "your request to trust this CSCA is recorded and waits for a second officer's \
                     `hcert-signer keys csca-add --cert {}`",
                    cert.display()
                );
            }
            Action::Retire { label } if reply.status == http::StatusCode::ACCEPTED => {
                print_reply(&reply);
                eprintln!(
                    "key {label:?} is the last active key for a certificate type: your retirement is                      recorded and waits for a second officer's `hcert-signer keys retire --label {label}`"
                );
            }
            _ => print_reply(&reply),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints JSON replies pretty, anything else as it came.
fn print_reply(reply: &Reply) {
    match reply.json() {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) => print!("{}", String::from_utf8_lossy(&reply.body)),
    }
}

/// The appliance's refusal as one line: status, code and message.
pub(crate) fn refused(reply: &Reply) -> Error {
    let (code, message) = match reply.json() {
        Ok(v) => (
            v["error"]["code"].as_str().unwrap_or("").to_owned(),
            v["error"]["message"].as_str().unwrap_or("").to_owned(),
        ),
        Err(_) => (String::new(), String::from_utf8_lossy(&reply.body).trim().to_owned()),
    };
    Error::Refused { status: reply.status.as_u16(), code, message }
}

/// Labels are `[A-Za-z0-9._:-]`; anything else is escaped so a path cannot be smuggled in.
pub(crate) fn percent(label: &str) -> String {
    label
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
