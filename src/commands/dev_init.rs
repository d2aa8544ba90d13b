//! `hcert-signer dev-init --dir DIR`: a complete local setup from nothing, for development and
//! the demo. Never for production: the CA keys are software keys on disk.
//!
//! It makes a fresh SoftHSM2 token (its own `DIR/softhsm2.conf`), a Document Signer key inside
//! it, a development CSCA that certifies that key from its CSR, a TLS CA with the server
//! certificate and the client certificates of two issuers and two officers (with profiles for
//! both officers and the first issuer), the user PIN in
//! `DIR/hsm-pin` (0600), and `DIR/config.toml`.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use time::{Duration, OffsetDateTime};

use crate::hcert::TrustList;
use crate::hsm::{Hsm, HsmConfig, PinSource, Pkcs11Config, softhsm};
use crate::pki::dev::DevCa;
use crate::pki::{self, Dsc};
use crate::{Error, Result};

/// Token label of the development token.
pub const TOKEN_LABEL: &str = "hcert-dev";
/// HSM label of the development DSC key.
pub const DSC_LABEL: &str = "dsc-dev-1";
/// HSM label of the development gateway upload key.
pub const UPLOAD_LABEL: &str = "upload-dev";
/// The TLS clients dev-init makes: name, roles (as written in config.toml).
pub const CLIENTS: &[(&str, &str)] = &[
    ("issuer", r#"["issue"]"#),
    ("issuer2", r#"["issue"]"#),
    ("officer1", r#"["officer"]"#),
    ("officer2", r#"["officer"]"#),
];

/// The clients dev-init writes a profile for: both officers (`keys`, `audit`) and the first
/// issuer (`batch`).
pub const PROFILES: &[&str] = &["officer1", "officer2", "issuer"];

/// Arguments of `dev-init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to build the setup in (created; must be empty if it exists).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The PKCS#11 module of SoftHSM2.
    #[arg(long, default_value = softhsm::DEFAULT_MODULE)]
    pub module: PathBuf,
    /// The API address to write into config.toml (default: a free loopback port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The metrics address to write into config.toml (default: a free loopback port).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Issuing country (CWT iss, DSC and CSCA subject C).
    #[arg(long, default_value = "VN")]
    pub country: String,
    /// Keep the store in this PostgreSQL database (`[store] backend = "postgres"`) instead of
    /// the embedded one, e.g. `postgresql://hcert@%2Frun%2Fpostgresql/hcert`. No password in it:
    /// see `--postgres-password-file`.
    #[arg(long, value_name = "URL", conflicts_with = "join")]
    pub postgres: Option<String>,
    /// With `--postgres`: the file holding the database password.
    #[arg(long, value_name = "FILE", requires = "postgres")]
    pub postgres_password_file: Option<PathBuf>,
    /// Write a further node of the cluster set up in DIR (made with `--postgres`): the same
    /// token, certificates and database, its own ports and state directory, and the audit
    /// key's public half DIR's node pinned at its first start (so that node must have started
    /// once). Nothing else is made.
    #[arg(long, value_name = "DIR")]
    pub join: Option<PathBuf>,
}

/// Builds the setup; prints what it made.
pub fn run(args: Args) -> Result<ExitCode> {
    if let Some(first) = &args.join {
        return join(&args, first);
    }
    let dir = prepare_dir(&args.dir)?;
    // SoftHSM reads SOFTHSM2_CONF when the module is loaded: re-execute with it set first.
    let conf = dir.join("softhsm2.conf");
    super::reexec_with_env(&[("SOFTHSM2_CONF", conf.as_os_str())])?;
    if args.country.len() != 2 || !args.country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::Config(format!("--country {:?} is not an ISO 3166-1 alpha-2 code", args.country)));
    }
    let country = args.country.as_str();

    // The token, with random PINs kept in owner-only files.
    let so_pin = random_pin()?;
    let user_pin = random_pin()?;
    write_secret(&dir.join("hsm-so-pin"), &so_pin)?;
    write_secret(&dir.join("hsm-pin"), &user_pin)?;
    let written = softhsm::init_token(&dir, TOKEN_LABEL, &so_pin, &user_pin)?;
    debug_assert_eq!(written, conf);

    let hsm_config = Pkcs11Config::new(&args.module, TOKEN_LABEL, PinSource::File(dir.join("hsm-pin")));
    let hsm = Hsm::open(&HsmConfig::Pkcs11(hsm_config))?;

    // The DSC: key in the token, CSR signed by it, certified by the development CSCA.
    hsm.generate_key(DSC_LABEL)?;
    // Valid from a month back: a DSC must lie inside its CSCA's validity, and tests certify
    // DSCs whose notBefore lies in the past.
    let now = OffsetDateTime::now_utc();
    let csca = DevCa::new_valid(
        country,
        "Ministry of Health (development)",
        &format!("CSCA {country} DEV"),
        now - Duration::days(30),
        now + Duration::days(3650),
    )?;
    write_file(&dir.join("csca.pem"), csca.cert_pem())?;
    write_secret(&dir.join("csca.key"), csca.key_pem())?;
    let csr = pki::csr::build_csr(
        &hsm,
        DSC_LABEL,
        &format!("C={country},O=Ministry of Health (development),CN=DSC {country} DEV 1"),
    )?;
    // EU governance: a DSC is valid two years; notBefore an hour back absorbs clock skew.
    let dsc_pem = csca.certify_dsc(&csr, now - Duration::hours(1), now + Duration::days(730), None)?;
    let dsc = Dsc::from_pem(&dsc_pem)?;
    pki::csr::check_certificate_key(&hsm, DSC_LABEL, &dsc.der)?;
    std::fs::create_dir_all(dir.join("dsc")).map_err(Error::file(dir.join("dsc")))?;
    let dsc_path = dir.join("dsc").join(format!("{DSC_LABEL}.pem"));
    write_file(&dsc_path, &dsc_pem)?;
    let mut trust = TrustList::new();
    trust.insert(dsc.clone());
    write_file(&dir.join("trust-list.json"), &trust.to_json())?;

    // The gateway upload key (signs CMS upload messages), certified by the same development CA
    // here; a real one is registered with the EU gateway.
    hsm.generate_key(UPLOAD_LABEL)?;
    let upload_csr = pki::csr::build_csr(
        &hsm,
        UPLOAD_LABEL,
        &format!("C={country},O=Ministry of Health (development),CN=UPLOAD {country} DEV"),
    )?;
    let upload_pem =
        csca.certify_dsc(&upload_csr, now - Duration::hours(1), now + Duration::days(730), None)?;
    let upload_path = dir.join("dsc").join(format!("{UPLOAD_LABEL}.pem"));
    write_file(&upload_path, &upload_pem)?;

    // TLS: one CA for the server and every client.
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(Error::file(&tls))?;
    let tls_ca = DevCa::new(country, "hcert-signer development", "hcert-signer dev TLS CA", 5)?;
    write_file(&tls.join("ca.pem"), tls_ca.cert_pem())?;
    write_secret(&tls.join("ca.key"), tls_ca.key_pem())?;
    let server = tls_ca.issue_server("hcert-signer", &["localhost", "127.0.0.1", "::1"])?;
    write_file(&tls.join("server.pem"), &server.cert_pem)?;
    write_secret(&tls.join("server.key"), &server.key_pem)?;
    for (name, _) in CLIENTS {
        let c = tls_ca.issue_client(name, 365)?;
        write_file(&tls.join(format!("{name}.pem")), &c.cert_pem)?;
        write_secret(&tls.join(format!("{name}.key")), &c.key_pem)?;
    }

    let [free_a, free_b] = free_ports()?;
    let listen = args.listen.unwrap_or(free_a);
    // The second free port unless it is the one just taken (an explicit --listen may name it).
    let metrics_listen = args.metrics_listen.unwrap_or(if free_b == listen { free_a } else { free_b });
    let mut config =
        config_toml(&dir, &args.module, country, listen, metrics_listen, &dsc_path, &upload_path);
    if let Some(url) = &args.postgres {
        config.push_str(&store_toml(url, args.postgres_password_file.as_deref()));
    }
    write_file(&dir.join("config.toml"), &config)?;
    for name in PROFILES {
        write_file(&dir.join(format!("{name}.toml")), &profile_toml(&dir, name, listen))?;
    }

    println!("dev-init: development setup in {}", dir.display());
    println!("  token {TOKEN_LABEL:?} ({}), DSC key {DSC_LABEL:?}, kid {}", conf.display(), b64(&dsc.kid));
    println!("  config  {}", dir.join("config.toml").display());
    println!(
        "  officer profiles {0}/officer1.toml, {0}/officer2.toml (hcert-signer keys --profile …)",
        dir.display()
    );
    println!("  issuer profile {}/issuer.toml (hcert-signer batch --profile …)", dir.display());
    println!("  API https://{listen}  metrics http://{metrics_listen}/metrics");
    println!("  run with SOFTHSM2_CONF={} (the daemon sets it itself from config.toml)", conf.display());
    Ok(ExitCode::SUCCESS)
}

/// A further node of the cluster set up in `first`: its config.toml with its own ports and
/// state directory, the rest (token, certificates, database, clients) shared; officer profiles
/// naming its address.
fn join(args: &Args, first: &Path) -> Result<ExitCode> {
    let first = first.canonicalize().map_err(Error::file(first))?;
    let text =
        std::fs::read_to_string(first.join("config.toml")).map_err(Error::file(first.join("config.toml")))?;
    let config = crate::config::Config::load(&first.join("config.toml"))?;
    if config.store.backend != crate::config::StoreBackend::Postgres {
        return Err(Error::Config(format!(
            "{} keeps its store in its own state directory: a cluster needs one made with --postgres",
            first.display()
        )));
    }
    // The audit key's public half, once a node has started (else the first node to start
    // makes the key and the others pin it from the log's checkpoints).
    let pem = config.state_dir.join(super::serve::AUDIT_KEY_FILE);
    let dir = prepare_dir(&args.dir)?;
    let [free_a, free_b] = free_ports()?;
    let listen = args.listen.unwrap_or(free_a);
    let metrics_listen = args.metrics_listen.unwrap_or(if free_b == listen { free_a } else { free_b });
    let state = dir.join("state");
    let mut out = String::new();
    for line in text.lines() {
        let replaced = if line.starts_with("listen = ") {
            format!("listen = \"{listen}\"")
        } else if line.starts_with("metrics_listen = ") {
            format!("metrics_listen = \"{metrics_listen}\"")
        } else if line.starts_with("state_dir = ") {
            format!("state_dir = \"{}\"", state.display())
        } else {
            line.to_owned()
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    write_file(&dir.join("config.toml"), &out)?;
    std::fs::create_dir_all(&state).map_err(Error::file(&state))?;
    if pem.exists() {
        std::fs::copy(&pem, state.join(super::serve::AUDIT_KEY_FILE)).map_err(Error::file(&pem))?;
    }
    for name in PROFILES {
        write_file(&dir.join(format!("{name}.toml")), &profile_toml(&first, name, listen))?;
    }
    println!("dev-init: node of the cluster in {} joined to {}", dir.display(), first.display());
    println!("  config  {}", dir.join("config.toml").display());
    println!("  API https://{listen}  metrics http://{metrics_listen}/metrics");
    Ok(ExitCode::SUCCESS)
}

/// The `[store]` section of a node on PostgreSQL.
fn store_toml(url: &str, password_file: Option<&Path>) -> String {
    let mut s = format!("\n[store]\nbackend = \"postgres\"\nurl = {}\n", toml_string(url));
    if let Some(p) = password_file {
        let _ = writeln!(s, "password_file = {}", toml_string(&p.display().to_string()));
    }
    s
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Creates `dir` (or accepts an empty one) and returns its absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(Error::file(dir))?;
        // Re-executed (SOFTHSM2_CONF already ours): the folder holds only what this run wrote.
        let ours = std::env::var_os("SOFTHSM2_CONF").is_some_and(|c| {
            Path::new(&c) == std::path::absolute(dir).unwrap_or_default().join("softhsm2.conf")
        });
        if !ours && entries.next().is_some() {
            return Err(Error::Config(format!(
                "{} is not empty; dev-init builds a fresh setup in a new or empty folder",
                dir.display()
            )));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(Error::file(dir))?;
    }
    std::path::absolute(dir).map_err(Error::file(dir))
}

/// A random 20-character alphanumeric PIN.
fn random_pin() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 20];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Config("no randomness available".into()))?;
    // 256 is not a multiple of the alphabet size; the slight bias is irrelevant for a dev PIN.
    Ok(bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(Error::file(path))
}

/// Writes a secret readable by its owner only (created with mode 0600, never wider).
fn write_secret(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::file(path))?;
    f.write_all(contents.as_bytes()).map_err(Error::file(path))
}

/// Two distinct free loopback addresses. Both listeners are held until both are known: bound
/// one after the other and dropped in between, the kernel may hand out the same port twice.
fn free_ports() -> Result<[SocketAddr; 2]> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok([a.local_addr()?, b.local_addr()?])
}

fn config_toml(
    dir: &Path,
    module: &Path,
    country: &str,
    listen: SocketAddr,
    metrics: SocketAddr,
    dsc: &Path,
    upload: &Path,
) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    let mut s = format!(
        r#"# hcert-signer configuration written by `hcert-signer dev-init` — development only.
listen = "{listen}"
metrics_listen = "{metrics}"
state_dir = "{state}"
country = "{country}"
log_level = "info"

[hsm]
backend = "pkcs11"
module = "{module}"
token_label = "{TOKEN_LABEL}"
pin = {{ file = "{pin}" }}

[hsm_environment]
SOFTHSM2_CONF = "{conf}"

[signing]
validity_days = 365

# Activated at first start (bootstrap); later rotations go through `hcert-signer keys`.
[[signing.dsc]]
label = "{DSC_LABEL}"
certificate = "{dsc}"

[signing.upload]
label = "{UPLOAD_LABEL}"
certificate = "{upload}"

# The country's CSCAs: a DSC must be issued by one of them. Recorded in the store at first
# start; afterwards two officers add one with `hcert-signer keys csca-add`, never this file.
[[signing.csca]]
certificate = "{csca}"

[tls]
cert = "{cert}"
key = "{key}"
client_ca = ["{ca}"]
"#,
        state = d("state"),
        module = module.display(),
        pin = d("hsm-pin"),
        conf = d("softhsm2.conf"),
        dsc = dsc.display(),
        upload = upload.display(),
        csca = d("csca.pem"),
        cert = d("tls/server.pem"),
        key = d("tls/server.key"),
        ca = d("tls/ca.pem"),
    );
    for (name, roles) in CLIENTS {
        let _ = write!(s, "\n[[client]]\nname = \"{name}\"\nroles = {roles}\n");
    }
    s
}

/// A client's profile for `hcert-signer keys|audit|batch --profile`.
fn profile_toml(dir: &Path, name: &str, listen: SocketAddr) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    let commands = if name.starts_with("issuer") {
        "`hcert-signer batch`"
    } else {
        "`hcert-signer keys` and `hcert-signer audit`"
    };
    format!(
        "# {name}'s profile for {commands}, written by dev-init.\n\
         address = \"{listen}\"\nserver_name = \"localhost\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        ca = d("tls/ca.pem"),
        cert = d(&format!("tls/{name}.pem")),
        key = d(&format!("tls/{name}.key")),
    )
}
