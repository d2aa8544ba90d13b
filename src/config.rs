//! `config.toml`: everything the daemon needs, read once at start (and again on SIGHUP for the
//! TLS and client sections). Unknown keys are errors, so a typo never silently keeps a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hsm::{HsmConfig, PinSource};
use crate::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTPS API, `HOST:PORT`.
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` listener, `HOST:PORT` (keep it on loopback or a
    /// management network).
    pub metrics_listen: SocketAddr,
    /// Where the store lives (a systemd `StateDirectory=` in production).
    pub state_dir: PathBuf,
    /// The issuing country: the CWT `iss` and the country of generated UVCIs, ISO 3166-1
    /// alpha-2.
    pub country: String,
    /// Log level: `error`, `warn`, `info`, `debug` (default `info`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The HSM holding the Document Signer keys.
    pub hsm: HsmConfig,
    /// Environment the PKCS#11 module reads (e.g. `SOFTHSM2_CONF`, a vendor's config path).
    /// The process re-executes itself with these set before loading the module, because the
    /// environment of a running multi-threaded process cannot be changed soundly.
    #[serde(default)]
    pub hsm_environment: BTreeMap<String, String>,
    /// Certificate policy.
    #[serde(default)]
    pub signing: SigningConfig,
    /// The API's TLS material.
    pub tls: TlsConfig,
    /// The clients allowed in, by the identity in their certificate.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientConfig>,
    /// This node's base URL as clients reach it (for `Location` headers behind a load balancer);
    /// default `https://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Store settings.
    #[serde(default)]
    pub store: StoreConfig,
    /// Pipeline settings.
    #[serde(default)]
    pub pipeline: PipelineSettings,
    /// Key governance.
    #[serde(default)]
    pub keys: KeysConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The API listener.
    #[serde(default)]
    pub api: ApiConfig,
}

/// The API listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The load balancers (addresses or CIDR ranges, e.g. `["127.0.0.1", "10.0.0.0/8"]`) whose
    /// connections start with a PROXY protocol v2 header naming the real client: per-peer limits
    /// and logs then use that client's address. A connection from a listed address without the
    /// header, or with a header from any other address, is closed. Empty (default): no header
    /// is accepted from anyone.
    pub proxy_protocol_from: Vec<crate::api::proxy::AddressRange>,
}

/// Limits on what callers may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body in bytes (default 16 MiB: 10,000 records with room to spare).
    pub max_body_bytes: usize,
    /// Most records per batch (default 10,000).
    pub max_batch_records: usize,
    /// Most records per synchronous `POST /v1/sign` (default 100).
    pub max_sync_records: usize,
    /// Queued records above which new batches get 503 (default 1,000,000).
    pub max_queued_records: u64,
    /// Requests per second per client, 0 for no limit (default 50).
    pub requests_per_second: u32,
    /// Open connections per client (default 64): one client's idle keep-alive connections
    /// must not take the slots every other issuer needs.
    pub max_connections_per_client: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_batch_records: 10_000,
            max_sync_records: 100,
            max_queued_records: 1_000_000,
            requests_per_second: 50,
            max_connections_per_client: 64,
        }
    }
}

/// The durable store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which database holds the store: `sled` (default: embedded, one appliance, under
    /// `state_dir`) or `postgres` (a PostgreSQL cluster shared by several appliances; needs
    /// `url`).
    pub backend: StoreBackend,
    /// PostgreSQL only: where the database is, as a URL (`postgresql://hcert@db1,db2/hcert?
    /// target_session_attrs=read-write`, a Unix socket directory percent-encoded as the host:
    /// `postgresql://hcert@%2Frun%2Fpostgresql/hcert`) or a key=value string (`host=db1,db2
    /// user=hcert dbname=hcert target_session_attrs=read-write`). Never with a password in it.
    pub url: Option<String>,
    /// PostgreSQL only: a file holding the password (one line, mode 0600). Without it, the
    /// systemd credential `hcert-store-password` (`LoadCredential=`) when present, else no
    /// password (peer authentication over a Unix socket).
    pub password_file: Option<PathBuf>,
    /// PostgreSQL only: the CA certificates (PEM) the server's certificate must chain to. When
    /// set, TLS is required and verified (host name included); when not, no TLS is used (a
    /// Unix socket or a trusted network).
    pub tls_ca: Option<PathBuf>,
    /// PostgreSQL only: most connections this node opens (default 8).
    pub pool_size: usize,
    /// Days a batch is kept when the issuer never deletes it (default 7): personal health data
    /// must not pile up.
    pub retention_days: u32,
    /// sled only: its page cache in MiB (default 32: with 200,000 records accepted the daemon
    /// stays well under 256 MiB of RSS; 64 leaves too little for the rest).
    pub cache_mb: u64,
    /// sled only: free space in MiB the store keeps on its file system (default 256): below it
    /// new batches get 503 `store_full` while the batches already accepted are still signed and
    /// served into that room; under half of it (at most 32 MiB) signing pauses too (readiness
    /// 503), so the database never meets a full disk, which it does not survive. Both end once
    /// space is freed, without a restart. 0 turns the checks off (tests only). At most
    /// 1,048,576 (1 TiB).
    pub min_free_mb: u64,
    /// Label of the HSM key-encryption key that wraps each batch's data key (default
    /// `hcert-kek`). Generated at the store's first start and pinned in the store: afterwards a
    /// missing KEK or another label stops the start (exit 78), never a new key.
    pub kek_label: String,
}

/// The store's database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded sled database under `state_dir` (one appliance).
    #[default]
    Sled,
    /// A PostgreSQL cluster shared by several appliances.
    Postgres,
}

/// Largest `store.pool_size`: PostgreSQL's own default `max_connections` is 100, shared by
/// every node.
pub const MAX_POOL_SIZE: usize = 64;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sled,
            url: None,
            password_file: None,
            tls_ca: None,
            pool_size: 8,
            retention_days: 7,
            cache_mb: 32,
            min_free_mb: 256,
            kek_label: "hcert-kek".into(),
        }
    }
}

impl StoreConfig {
    /// The `[store]` checks: the PostgreSQL keys belong to `backend = "postgres"`, which needs
    /// a usable `url`.
    fn check(&self) -> std::result::Result<(), String> {
        match self.backend {
            StoreBackend::Sled => {
                let pg_only = [
                    ("url", self.url.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("tls_ca", self.tls_ca.is_some()),
                ];
                if let Some((key, _)) = pg_only.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "store.{key} is set but store.backend is \"sled\" (the default): set backend = \"postgres\" \
                         to use PostgreSQL, or remove {key}"
                    ));
                }
            }
            StoreBackend::Postgres => {
                let Some(url) = &self.url else {
                    return Err(
                        "store.backend = \"postgres\" needs store.url = \"postgresql://…\" (where the \
                                database is)"
                            .into(),
                    );
                };
                crate::store::postgres::connect::check_url(url, self.tls_ca.is_some())?;
                if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
                    return Err(format!("store.pool_size must be 1–{MAX_POOL_SIZE}"));
                }
            }
        }
        Ok(())
    }
}

/// Largest `pipeline.chunk_size`: a chunk's signatures are one audit entry per batch, which
/// must stay far below the size at which sled moves a node to a blob file (see the store).
pub const MAX_CHUNK_SIZE: usize = 1024;

/// Signing workers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Worker threads (default: 2 × CPUs). 0 accepts and stores batches without signing them,
    /// for maintenance (an HSM swap) — readiness then still reflects the HSM.
    pub workers: Option<usize>,
    /// Records per chunk (default 256: one HSM batch and one flushed commit each; larger chunks
    /// amortise the fsync, measured with hcert-load).
    pub chunk_size: Option<usize>,
}

fn default_log_level() -> String {
    "info".into()
}

/// How certificates are made.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Days from `iat` to `exp` (capped at the DSC's notAfter). Default 365.
    #[serde(default = "default_validity_days")]
    pub validity_days: u32,
    /// An issuing-entity block put into generated UVCIs (`URN:UVCI:01:VN:<block>/…`).
    #[serde(default)]
    pub uvci_issuer: Option<String>,
    /// A directory of EU value-set JSON files that extend or update the embedded ones.
    #[serde(default)]
    pub value_sets_dir: Option<PathBuf>,
    /// When `iat` + validity would pass the DSC's notAfter: `cap` (default) shortens the
    /// certificate to end with the DSC, `reject` refuses the record (`dsc_expiring`).
    #[serde(default)]
    pub exp_beyond_dsc: ExpBeyondDsc,
    /// Keys activated by the configuration file at first start (the outcome of a key ceremony
    /// held before the daemon ran, or dev-init): the HSM label of each and its DSC certificate.
    /// Later rotations go through the admin API (`hcert-signer keys`), which the store remembers.
    #[serde(default, rename = "dsc")]
    pub dscs: Vec<DscConfig>,
    /// The key that signs gateway uploads (CMS), if this appliance prepares them.
    #[serde(default)]
    pub upload: Option<DscConfig>,
    /// UVCI prefixes accepted beside `URN:UVCI:01:<country>:` (certificates migrated from an
    /// earlier system), each a well-formed `URN:UVCI:01:<CC>:[<opaque start>]`. A supplied UVCI
    /// that starts with none of them is rejected `uvci_country`.
    #[serde(default)]
    pub accepted_uvci_prefixes: Vec<String>,
    /// The country's CSCA certificates: a DSC is imported or bootstrapped only if one of them
    /// issued it. Recorded in the store at first start; a CSCA the store does not know stops
    /// the start.
    #[serde(default)]
    pub csca: Vec<CscaConfig>,
}

/// One Country Signing CA certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CscaConfig {
    /// The CSCA certificate, PEM (relative to the configuration file).
    pub certificate: PathBuf,
}

/// What to do when a certificate would outlive its DSC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpBeyondDsc {
    /// `exp` = the DSC's notAfter.
    #[default]
    Cap,
    /// The record is rejected.
    Reject,
}

/// Security officers' key governance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Hours an officer's approval stays valid (default 24).
    pub approval_hours: u32,
    /// Default private-key usage period in days from the DSC's notBefore (default 182: EU
    /// governance, six months); a key may be given its own at import.
    pub usage_days: u32,
    /// `/readyz` fails when, for some certificate type, no active key will still sign this
    /// many hours from now (default 1; 0 checks only now). Alerts warn weeks ahead; this keeps a
    /// node whose keys are about to stop out of the load balancer.
    pub readiness_horizon_hours: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { approval_hours: 24, usage_days: 182, readiness_horizon_hours: 1 }
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// HSM label of the key that signs checkpoints (generated at first start if missing).
    pub key_label: String,
    /// Seconds between checkpoints while entries are being added (default 60).
    pub checkpoint_secs: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { key_label: "hcert-audit".into(), checkpoint_secs: 60 }
    }
}

fn default_validity_days() -> u32 {
    365
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            validity_days: default_validity_days(),
            uvci_issuer: None,
            value_sets_dir: None,
            exp_beyond_dsc: ExpBeyondDsc::Cap,
            dscs: Vec::new(),
            upload: None,
            accepted_uvci_prefixes: Vec::new(),
            csca: Vec::new(),
        }
    }
}

/// One Document Signer key and its certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DscConfig {
    /// The key's label in the HSM.
    pub label: String,
    /// Its DSC certificate, PEM.
    pub certificate: PathBuf,
}

/// TLS material of the API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// CA certificates client certificates must chain to, PEM.
    pub client_ca: Vec<PathBuf>,
}

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit batches and fetch their results.
    Issue,
    /// Manage Document Signer keys.
    Officer,
}

/// One client, recognised by its certificate's subject CN (or a DNS SAN).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The identity in the client certificate: subject CN or a DNS subjectAltName.
    pub name: String,
    /// What it may do.
    pub roles: Vec<Role>,
    /// The issuer account its batches belong to (defaults to `name`); clients sharing one see
    /// each other's batches.
    #[serde(default)]
    pub issuer_id: Option<String>,
    /// Optional key pins: SHA-256 of the SubjectPublicKeyInfo (DER) of each certificate key this
    /// client may use, 64 hex digits each (`openssl x509 -in c.pem -pubkey -noout | openssl pkey
    /// -pubin -outform DER | sha256sum`). When set, another certificate with the same name from
    /// the client CA is not this client (refused 403 `key_not_pinned`). Reloaded on SIGHUP.
    #[serde(default)]
    pub spki_sha256: Vec<String>,
}

impl ClientConfig {
    /// The pins of [`spki_sha256`](Self::spki_sha256), decoded (checked at load).
    pub fn pins(&self) -> Vec<[u8; 32]> {
        self.spki_sha256.iter().filter_map(|h| parse_pin(h).ok()).collect()
    }
}

/// One `spki_sha256` pin: 64 hex digits, either case.
fn parse_pin(hex_text: &str) -> std::result::Result<[u8; 32], String> {
    let mut pin = [0u8; 32];
    match hex::decode_to_slice(hex_text, &mut pin) {
        Ok(()) => Ok(pin),
        Err(_) => {
            Err(format!("{hex_text:?} is not a SHA-256 in hex (64 digits 0-9 a-f, as sha256sum prints it)"))
        }
    }
}

impl Config {
    /// Reads and checks a configuration file. Relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(Error::file(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml_str(&text, base).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses and checks the text of a configuration file. Relative paths are taken from `base`
    /// (the file's folder). Never reads a file: the paths are only resolved, not opened.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Config> {
        // A parse error quotes the offending line: should that be a database URL with a
        // password in it, the password is not repeated.
        let mut config: Config = toml::from_str(text)
            .map_err(|e| Error::Config(crate::store::postgres::connect::redact(&e.to_string())))?;
        config.resolve(base);
        config.check()?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        self.tls.client_ca.iter_mut().for_each(fix);
        self.signing.dscs.iter_mut().for_each(|d| fix(&mut d.certificate));
        if let Some(u) = self.signing.upload.as_mut() {
            fix(&mut u.certificate);
        }
        self.signing.csca.iter_mut().for_each(|c| fix(&mut c.certificate));
        if let Some(p) = self.signing.value_sets_dir.as_mut() {
            fix(p);
        }
        if let Some(p) = self.store.password_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.store.tls_ca.as_mut() {
            fix(p);
        }
        // A PIN file named relative to the configuration sits beside it, like the TLS files.
        // The PKCS#11 module path is left as written: a bare library name is for the dynamic
        // loader's search path, as with every other PKCS#11 consumer.
        let secret = match &mut self.hsm {
            HsmConfig::Pkcs11(p) => &mut p.pin,
            HsmConfig::Yubihsm(y) => &mut y.password,
        };
        if let PinSource::File(p) = secret {
            fix(p);
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return bad(format!("country {:?} is not an ISO 3166-1 alpha-2 code", self.country));
        }
        if !(1..=3650).contains(&self.signing.validity_days) {
            return bad("signing.validity_days must be 1–3650".into());
        }
        if self.listen == self.metrics_listen {
            return bad("listen and metrics_listen must differ".into());
        }
        for p in &self.signing.accepted_uvci_prefixes {
            crate::hcert::uvci::check_prefix(p).map_err(|e| Error::Config(format!("signing.{e}")))?;
        }
        if self.limits.max_connections_per_client == 0 {
            return bad("limits.max_connections_per_client must be at least 1".into());
        }
        if self.tls.client_ca.is_empty() {
            return bad("tls.client_ca must name at least one CA".into());
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.clients {
            if !names.insert(&c.name) {
                return bad(format!("client {:?} is configured twice", c.name));
            }
            if c.roles.is_empty() {
                return bad(format!("client {:?} has no roles", c.name));
            }
            for pin in &c.spki_sha256 {
                if let Err(e) = parse_pin(pin) {
                    return bad(format!("client {:?}: spki_sha256: {e}", c.name));
                }
            }
        }
        if self.limits.max_batch_records == 0 || self.limits.max_sync_records == 0 {
            return bad("limits: max_batch_records and max_sync_records must be at least 1".into());
        }
        if self.keys.approval_hours == 0 || !(1..=730).contains(&self.keys.usage_days) {
            return bad("keys: approval_hours must be at least 1 and usage_days within 1–730".into());
        }
        if self.pipeline.chunk_size.is_some_and(|n| !(1..=MAX_CHUNK_SIZE).contains(&n)) {
            return bad(format!("pipeline.chunk_size must be 1–{MAX_CHUNK_SIZE}"));
        }
        if self.audit.checkpoint_secs == 0 {
            return bad("audit.checkpoint_secs must be at least 1".into());
        }
        if let Err(e) = crate::hsm::validate_label(&self.store.kek_label) {
            return bad(format!("store.kek_label: {e}"));
        }
        self.store.check().map_err(Error::Config)?;
        if self.store.retention_days == 0 {
            return bad("store.retention_days must be at least 1".into());
        }
        if self.store.min_free_mb > 1 << 20 {
            return bad("store.min_free_mb must be at most 1048576 (1 TiB)".into());
        }
        if !matches!(self.log_level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
            return bad(format!(
                "log_level {:?} is not one of error, warn, info, debug, trace",
                self.log_level
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "127.0.0.1:8443"
        metrics_listen = "127.0.0.1:9898"
        state_dir = "state"
        country = "VN"
        [hsm]
        backend = "pkcs11"
        module = "/usr/lib/softhsm/libsofthsm2.so"
        token_label = "hcert"
        pin = { file = "hsm-pin" }
        [tls]
        cert = "tls/server.pem"
        key = "tls/server.key"
        client_ca = ["tls/ca.pem"]
        [[client]]
        name = "issuer"
        roles = ["issue"]
    "#;

    fn load(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p)
    }

    #[test]
    fn minimal_config_with_defaults_and_relative_paths() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.signing.validity_days, 365);
        assert!(c.state_dir.is_absolute() && c.state_dir.ends_with("state"));
        assert!(c.tls.client_ca[0].ends_with("tls/ca.pem"));
        assert_eq!(c.clients[0].roles, vec![Role::Issue]);
        assert_eq!(c.store.min_free_mb, 256);
        let crate::hsm::HsmConfig::Pkcs11(hsm) = &c.hsm else { panic!("pkcs11 expected") };
        let PinSource::File(pin) = &hsm.pin else { panic!("a PIN file expected") };
        assert!(pin.is_absolute() && pin.ends_with("hsm-pin"), "{pin:?}");
        assert_eq!(hsm.module, Path::new("/usr/lib/softhsm/libsofthsm2.so"));
    }

    #[test]
    fn csca_certificates_are_read_relative_to_the_config() {
        let c = load(&format!("{MINIMAL}\n[[signing.csca]]\ncertificate = \"csca.pem\"\n")).unwrap();
        assert_eq!(c.signing.csca.len(), 1);
        assert!(
            c.signing.csca[0].certificate.is_absolute()
                && c.signing.csca[0].certificate.ends_with("csca.pem")
        );
        let typo = format!("{MINIMAL}\n[[signing.csca]]\ncert = \"csca.pem\"\n");
        assert!(load(&typo).unwrap_err().to_string().contains("unknown field `cert`"));
    }

    #[test]
    fn absolute_pin_files_and_credentials_are_kept_as_written() {
        let abs = MINIMAL.replace("pin = { file = \"hsm-pin\" }", "pin = { file = \"/etc/hcert/pin\" }");
        let crate::hsm::HsmConfig::Pkcs11(hsm) = load(&abs).unwrap().hsm else { panic!("pkcs11") };
        assert_eq!(hsm.pin, PinSource::File("/etc/hcert/pin".into()));
        let cred = MINIMAL.replace("pin = { file = \"hsm-pin\" }", "pin = { credential = \"hsm-pin\" }");
        let crate::hsm::HsmConfig::Pkcs11(hsm) = load(&cred).unwrap().hsm else { panic!("pkcs11") };
        assert_eq!(hsm.pin, PinSource::Credential("hsm-pin".into()));
    }

    #[test]
    fn mistakes_are_named() {
        let typo = MINIMAL.replace("country = \"VN\"", "country = \"VN\"\ncontry = \"VN\"");
        assert!(load(&typo).unwrap_err().to_string().contains("unknown field `contry`"));
        let country = MINIMAL.replace("country = \"VN\"", "country = \"vn\"");
        assert!(load(&country).unwrap_err().to_string().contains("ISO 3166-1"));
        let dup = format!("{MINIMAL}\n[[client]]\nname = \"issuer\"\nroles = [\"officer\"]\n");
        assert!(load(&dup).unwrap_err().to_string().contains("configured twice"));
        let role = MINIMAL.replace("roles = [\"issue\"]", "roles = [\"admin\"]");
        assert!(load(&role).is_err());
        let reserve = format!("{MINIMAL}\n[store]\nmin_free_mb = 2000000\n");
        assert!(load(&reserve).unwrap_err().to_string().contains("min_free_mb"));
        for n in [0, MAX_CHUNK_SIZE + 1] {
            let chunk = format!("{MINIMAL}\n[pipeline]\nchunk_size = {n}\n");
            assert!(load(&chunk).unwrap_err().to_string().contains("pipeline.chunk_size must be 1–1024"));
        }
        let prefixes = |p: &str| format!("{MINIMAL}\n[signing]\naccepted_uvci_prefixes = [{p}]\n");
        let e = load(&prefixes(r#""URN:UVCI:01:AT:OLD/", "01:AT:""#)).unwrap_err().to_string();
        assert!(e.contains(r#"signing.accepted UVCI prefix "01:AT:": must start with URN:UVCI:01:"#), "{e}");
        let ok = load(&prefixes(r#""URN:UVCI:01:AT:OLD/""#)).unwrap();
        assert_eq!(ok.signing.accepted_uvci_prefixes, ["URN:UVCI:01:AT:OLD/"]);
        let pinned = |p: &str| {
            MINIMAL.replace("roles = [\"issue\"]", &format!("roles = [\"issue\"]\nspki_sha256 = [{p}]"))
        };
        let pin = "AB".repeat(32);
        assert_eq!(load(&pinned(&format!("{pin:?}"))).unwrap().clients[0].pins(), vec![[0xab; 32]]);
        for bad in ["\"ab\"", &format!("\"{pin}  -\""), &format!("\"{}zz\"", "0".repeat(62))] {
            let e = load(&pinned(bad)).unwrap_err().to_string();
            assert!(
                e.contains("client \"issuer\": spki_sha256:") && e.contains("is not a SHA-256 in hex"),
                "{e}"
            );
        }
        let proxies = |p: &str| format!("{MINIMAL}\n[api]\nproxy_protocol_from = [{p}]\n");
        let c = load(&proxies(r#""127.0.0.1", "10.0.0.0/8", "fd00::/8""#)).unwrap();
        assert_eq!(c.api.proxy_protocol_from.len(), 3);
        let e = load(&proxies(r#""10.0.0.1/8""#)).unwrap_err().to_string();
        assert!(e.contains("address bits are set past the /8 prefix"), "{e}");
        let e = load(&proxies(r#""balancer.example""#)).unwrap_err().to_string();
        assert!(e.contains("is not an IP address or a CIDR range"), "{e}");
        assert!(load(MINIMAL).unwrap().api.proxy_protocol_from.is_empty());
        let chunk = format!("{MINIMAL}\n[pipeline]\nchunk_size = {MAX_CHUNK_SIZE}\n");
        assert_eq!(load(&chunk).unwrap().pipeline.chunk_size, Some(MAX_CHUNK_SIZE));
    }

    #[test]
    fn the_store_backend_and_its_postgres_keys() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(
            (c.store.backend, c.store.url.as_deref(), c.store.pool_size),
            (StoreBackend::Sled, None, 8)
        );
        let store = |keys: &str| format!("{MINIMAL}\n[store]\n{keys}\n");
        let c = load(&store(
            "backend = \"postgres\"\nurl = \"postgresql://hcert@db1,db2/hcert?target_session_attrs=read-write\"\n\
             password_file = \"db-password\"\ntls_ca = \"db-ca.pem\"\npool_size = 16",
        ))
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        assert!(
            c.store.password_file.as_ref().is_some_and(|p| p.is_absolute() && p.ends_with("db-password"))
        );
        assert!(c.store.tls_ca.as_ref().is_some_and(|p| p.is_absolute() && p.ends_with("db-ca.pem")));
        assert_eq!(c.store.pool_size, 16);
        let socket = store("backend = \"postgres\"\nurl = \"postgresql://hcert@%2Frun%2Fpostgresql/hcert\"");
        assert!(load(&socket).is_ok());
        let kv = store("backend = \"postgres\"\nurl = \"host=/run/postgresql user=hcert dbname=hcert\"");
        assert!(load(&kv).is_ok());

        let refused = |keys: &str, expected: &str| {
            let e = load(&store(keys)).unwrap_err().to_string();
            assert!(e.contains(expected), "{keys}: {e}");
            e
        };
        refused("backend = \"postgres\"", "store.backend = \"postgres\" needs store.url");
        refused("url = \"postgresql://hcert@db/hcert\"", "store.url is set but store.backend is \"sled\"");
        refused(
            "backend = \"sled\"\npassword_file = \"db-password\"",
            "store.password_file is set but store.backend is \"sled\"",
        );
        refused("tls_ca = \"ca.pem\"", "store.tls_ca is set but store.backend is \"sled\"");
        refused("backend = \"mysql\"", "unknown variant `mysql`");
        let e = refused(
            "backend = \"postgres\"\nurl = \"postgresql://hcert:hunter2-pw@db/hcert\"",
            "store.url contains a password; remove it and put the password in the file named by store.password_file",
        );
        assert!(!e.contains("hunter2-pw"), "{e}");
        let e = refused(
            "backend = \"postgres\"\nurl = \"host=db user=hcert password=hunter2-pw\"",
            "store.url contains a password",
        );
        assert!(!e.contains("hunter2-pw"), "{e}");
        refused(
            "backend = \"postgres\"\nurl = \"postgresql://db/hcert?bogus=1\"",
            "store.url is not a PostgreSQL",
        );
        refused("backend = \"postgres\"\nurl = \"postgresql:///hcert\"", "store.url names no host");
        refused(
            "backend = \"postgres\"\nurl = \"postgresql://db/hcert?sslmode=require\"",
            "store.url asks for sslmode=require but store.tls_ca is not set",
        );
        // A line the TOML parser cannot read is quoted in its error, password hidden.
        let e = load(&store("url = postgresql://hcert:hunter2-pw@db/hcert")).unwrap_err().to_string();
        assert!(e.contains("postgresql://hcert:***@db/hcert") && !e.contains("hunter2-pw"), "{e}");
        for n in [0, MAX_POOL_SIZE + 1] {
            refused(
                &format!("backend = \"postgres\"\nurl = \"postgresql://db/hcert\"\npool_size = {n}"),
                "store.pool_size must be 1–64",
            );
        }
    }
}
