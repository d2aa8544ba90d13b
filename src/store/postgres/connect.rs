//! Connections to PostgreSQL: the settings read from `[store]`, and a small pool of synchronous
//! clients that opens connections in the caller's thread, with timeouts, so an unreachable
//! database is a prompt, typed error.
//!
//! Why not r2d2: its `get` reports a failed connect as a string ("timed out waiting for
//! connection: …"), which loses the distinction between "unreachable" (503, retry) and "refused"
//! (an operator must act) that the daemon needs, and it reconnects from background threads of
//! its own. This pool is a mutex, a condition variable and a list of idle clients.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use postgres::config::{Host, SslMode};
use postgres::error::{DbError, Severity};
use postgres::{Client, NoTls};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

use super::PgError;
use crate::hsm::PinSource;

/// The systemd credential the store password is read from when `password_file` is not set
/// (`LoadCredential=hcert-store-password:…` in the unit).
pub const PASSWORD_CREDENTIAL: &str = "hcert-store-password";
/// Connect timeout per host when the URL sets none (`connect_timeout=` in the URL wins).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server aborts any statement running longer than this (`statement_timeout`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The server ends a session left idle inside a transaction this long
/// (`idle_in_transaction_session_timeout`): a node frozen mid-transaction (stopped, swapping, its machine lost behind
/// a partition that keeps TCP up) must not hold its row locks, e.g. on the audit chain's head
/// or a batch's counters, for every other node: well under the 30 s lease, or a frozen node's
/// open commit would stall the others' work on its batches longer than its lease does. No
/// transaction of the store waits on anything but the database, except a checkpoint's one HSM
/// signature (the HSM's `op_timeout_ms`, 5 s by default): a slower HSM fails that checkpoint,
/// which is made again at the next.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `get` waits for a busy pool to hand back a connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long is checked (an empty query) before it is handed out: after a
/// restart or failover it is dead, and its first real use would fail instead.
pub const VALIDATE_AFTER: Duration = Duration::from_secs(2);
/// The TCP keepalive and user timeouts: a peer that vanished (a machine lost, a partition) is
/// noticed within this rather than after the kernel's two hours.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a `[store] url`: one tokio-postgres accepts (URL or key=value), with no password in it
/// (configuration is read by more people and tools than the secret should be), and asking for
/// TLS only when `tls_ca` (whether `store.tls_ca` is set) says how to verify it. The message
/// never repeats the URL.
pub fn check_url(url: &str, tls_ca: bool) -> Result<postgres::Config, String> {
    let config = postgres::Config::from_str(url)
        .map_err(|e| format!("store.url is not a PostgreSQL connection URL or key=value string ({e})"))?;
    if config.get_password().is_some() {
        return Err("store.url contains a password; remove it and put the password in the file named by \
                    store.password_file (or the systemd credential hcert-store-password): a URL is \
                    printed and read where a secret must not be"
            .into());
    }
    if config.get_ssl_mode() == SslMode::Require && !tls_ca {
        return Err(
            "store.url asks for sslmode=require but store.tls_ca is not set: name the PEM file of the \
                    CA that issued the server's certificate (TLS is then required and verified)"
                .into(),
        );
    }
    if config.get_hosts().is_empty() {
        return Err("store.url names no host (a host name, several separated by commas, or a Unix socket \
                    directory such as %2Frun%2Fpostgresql)"
            .into());
    }
    Ok(config)
}

/// `text` with any PostgreSQL password in it replaced by `***`: the password of a URL's user
/// part (`postgresql://user:secret@host`) and the value of a `password=` key (key=value strings
/// and URL query parameters). For text that may hold a connection string someone wrote by
/// mistake, such as a configuration parser's error, before it is printed.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let url = rest.find("://").map(|i| (i, 0));
        let key = find_ascii_ci(rest, "password=").map(|i| (i, 1));
        let next = match (url, key) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some((at, kind)) = next else {
            out.push_str(rest);
            return out;
        };
        if kind == 0 {
            let start = at + 3;
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            // The authority ends at the path, query, fragment, or the end of the word.
            let end = rest.find(|c: char| "/?#\"' \t\n".contains(c)).unwrap_or(rest.len());
            let authority = &rest[..end];
            match authority.rfind('@').and_then(|at| authority[..at].find(':').map(|colon| (colon, at))) {
                Some((colon, at)) => {
                    out.push_str(&authority[..=colon]);
                    out.push_str("***");
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            }
            rest = &rest[end..];
        } else {
            let start = at + "password=".len();
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = if let Some(quoted) = rest.strip_prefix('\'') {
                // A quoted key=value value: up to the closing quote (\' escapes one).
                let mut i = 0;
                let bytes = quoted.as_bytes();
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                (i + 2).min(rest.len())
            } else {
                rest.find(|c: char| "&#\"' \t\n".contains(c)).unwrap_or(rest.len())
            };
            out.push_str("***");
            rest = &rest[end..];
        }
    }
}

fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Describes a parsed configuration for messages: hosts, database and user, never a password.
pub fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "database {} as {} on {}",
        config.get_dbname().or(config.get_user()).unwrap_or("(default)"),
        config.get_user().unwrap_or("(default user)"),
        hosts.join(", ")
    )
}

/// Everything needed to open connections, from `[store]`.
#[derive(Clone)]
pub struct PgSettings {
    /// The parsed URL, without a password.
    config: postgres::Config,
    /// Where the password comes from (read again at each connect, so a rotated password takes
    /// effect without a restart); `None` when the server needs none (peer authentication).
    password: Option<PinSource>,
    /// The rustls connector when `tls_ca` is set (TLS then required and verified).
    tls: Option<MakeRustlsConnect>,
    /// Most open connections.
    pool_size: usize,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("target", &describe(&self.config))
            .field("password", &self.password.as_ref().map(PinSource::describe))
            .field("tls", &self.tls.is_some())
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PgSettings {
    /// Settings from `[store]`'s values. `password_file` wins; else the systemd credential
    /// [`PASSWORD_CREDENTIAL`] when `$CREDENTIALS_DIRECTORY` holds it; else no password.
    pub fn new(
        url: &str,
        password_file: Option<&Path>,
        tls_ca: Option<&Path>,
        pool_size: usize,
    ) -> Result<PgSettings, PgError> {
        let mut config = check_url(url, tls_ca.is_some()).map_err(PgError::Config)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(TCP_TIMEOUT).keepalives_idle(TCP_TIMEOUT);
        // The server enforces the timeouts; added to whatever options the URL sets.
        // NOTICEs ("relation … already exists, skipping" at every migration check) are not
        // worth an info line at every start.
        let options = format!(
            "{} -c statement_timeout={} -c idle_in_transaction_session_timeout={} -c client_min_messages=warning",
            config.get_options().unwrap_or(""),
            STATEMENT_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        config.options(options.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("hcert-signer");
        }
        let password = match password_file {
            Some(p) => Some(PinSource::File(p.to_path_buf())),
            None => std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|dir| Path::new(dir).join(PASSWORD_CREDENTIAL).exists())
                .map(|_| PinSource::Credential(PASSWORD_CREDENTIAL.into())),
        };
        let tls = match tls_ca {
            Some(path) => {
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(tls_client_config(path)?))
            }
            // Without tls_ca there is no TLS: no "prefer" that silently accepts any certificate.
            None => {
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        Ok(PgSettings { config, password, tls, pool_size: pool_size.max(1) })
    }

    /// The database as configured, for messages.
    pub fn describe(&self) -> String {
        describe(&self.config)
    }

    /// Opens one connection (in this thread; it blocks up to the connect timeout per host).
    pub fn connect(&self) -> Result<Client, PgError> {
        self.connect_watched().map(|(client, _)| client)
    }

    /// [`connect`](Self::connect), with the WARNINGs the server sends on the connection
    /// collected (and logged) as they arrive.
    pub fn connect_watched(&self) -> Result<(Client, Arc<Warnings>), PgError> {
        let mut config = self.config.clone();
        let warnings = Arc::new(Warnings::default());
        config.notice_callback({
            let warnings = warnings.clone();
            move |notice| warnings.heard(&notice)
        });
        // Read per connect and dropped at once. tokio-postgres keeps its own copy inside this
        // clone of the configuration, which it does not zero; that copy is freed with it.
        let _password: Option<Zeroizing<Vec<u8>>> = match &self.password {
            Some(source) => {
                let pin = source.load().map_err(|e| PgError::Password(e.to_string()))?;
                let bytes = Zeroizing::new(pin.expose_bytes().to_vec());
                config.password(&bytes[..]);
                Some(bytes)
            }
            None => None,
        };
        let connected = match &self.tls {
            Some(tls) => config.connect(tls.clone()),
            None => config.connect(NoTls),
        };
        connected.map(|c| (c, warnings)).map_err(|e| PgError::from_client(&self.describe(), &e))
    }
}

/// The WARNINGs the server sent on one connection and nobody took yet. The store takes them
/// around each COMMIT: a COMMIT whose wait for the synchronous standby was cancelled still
/// reports success, with only a WARNING saying it "might not have been replicated".
#[derive(Debug, Default)]
pub struct Warnings(Mutex<Vec<String>>);

/// Warnings kept per connection at most (the first ones; a COMMIT sends one).
const WARNINGS_KEPT: usize = 8;

impl Warnings {
    /// Records a notice (sessions send WARNING and above only: `client_min_messages`) and logs
    /// it, as the client library would have without a callback.
    fn heard(&self, notice: &DbError) {
        let text = format!("{} ({}): {}", notice.severity(), notice.code().code(), notice.message());
        log::warn!("store: PostgreSQL said {text}");
        if notice.parsed_severity() == Some(Severity::Warning) {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < WARNINGS_KEPT {
                kept.push(text);
            }
        }
    }

    /// The warnings heard since the last call, oldest first.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A rustls client configuration trusting exactly the PEM certificates in `path`.
fn tls_client_config(path: &Path) -> Result<rustls::ClientConfig, PgError> {
    let bad = |detail: String| PgError::TlsCa { path: path.display().to_string(), detail };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(format!("a certificate is not usable as a root: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pool of connections. Cheap to clone, `Send + Sync`; every call blocks, so async callers
/// run it on blocking threads (`spawn_blocking`): the synchronous client drives its connection
/// with a runtime of its own, which tokio refuses to start on one of its async workers.
///
/// A connection is opened when one is needed and none is idle, up to the pool size. A dead one
/// is noticed (closed, failing a check after idling [`VALIDATE_AFTER`], or failing a query
/// with a transient error) and dropped with every idle one beside it, so the pool recovers by
/// itself when the database is back or another host became the primary — no rebuild, no
/// restart. A connection used within [`VALIDATE_AFTER`] before an outage may fail its next
/// query once: callers treat [`PgError::Unavailable`] as "try again", like any other outage.
#[derive(Clone)]
pub struct PgPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    settings: PgSettings,
    target: String,
    state: Mutex<PoolState>,
    returned: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<(Client, Arc<Warnings>, Instant)>,
    /// Connections handed out or being opened.
    busy: usize,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool").field("settings", &self.inner.settings).finish()
    }
}

impl PgPool {
    /// A pool on these settings. Opens nothing yet: a database that is down at start is an
    /// error of the first `get`, not of building the pool.
    pub fn new(settings: PgSettings) -> PgPool {
        let target = settings.describe();
        PgPool {
            inner: Arc::new(PoolInner {
                settings,
                target,
                state: Mutex::new(PoolState::default()),
                returned: Condvar::new(),
            }),
        }
    }

    /// The database as configured, for messages.
    pub fn describe(&self) -> &str {
        &self.inner.target
    }

    /// Classifies a client error for this database.
    pub fn error(&self, e: &postgres::Error) -> PgError {
        PgError::from_client(&self.inner.target, e)
    }

    /// A connection: an idle one (checked if it idled past a few seconds), else a new one
    /// while fewer than the pool size are open, else the first handed back within
    /// [`ACQUIRE_TIMEOUT`].
    pub fn get(&self) -> Result<PooledClient, PgError> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((mut client, warnings, since)) = state.idle.pop() {
                if client.is_closed() {
                    // Closing a client does I/O: never under the lock.
                    drop(state);
                    drop(client);
                    state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                state.busy += 1;
                if since.elapsed() < VALIDATE_AFTER {
                    return Ok(self.wrap(client, warnings));
                }
                drop(state);
                if client.is_valid(CONNECT_TIMEOUT).is_ok() {
                    return Ok(self.wrap(client, warnings));
                }
                drop(client);
                // One dead connection means the database went away (restart, failover): the
                // others idling beside it are dead too.
                self.release(None, true);
                state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if state.busy < inner.settings.pool_size {
                state.busy += 1;
                drop(state);
                return match inner.settings.connect_watched() {
                    Ok((client, warnings)) => Ok(self.wrap(client, warnings)),
                    Err(e) => {
                        self.release(None, e.is_unavailable());
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PgError::Unavailable {
                    target: inner.target.clone(),
                    detail: format!(
                        "all {} connections stayed busy for {} s",
                        inner.settings.pool_size,
                        ACQUIRE_TIMEOUT.as_secs()
                    ),
                });
            }
            state = inner.returned.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Runs `f` on a connection; a transient failure drops that connection (it may be the
    /// one a failover left on a standby) instead of handing it out again.
    pub fn run<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, PgError> {
        let mut conn = self.get()?;
        f(&mut conn).map_err(|e| conn.fail(&e))
    }

    /// Readiness: a connection answers an empty query within the connect timeout.
    pub fn check(&self) -> Result<(), PgError> {
        self.run(|c| c.is_valid(CONNECT_TIMEOUT))
    }

    /// Connections open now (idle and handed out), for metrics.
    pub fn open_connections(&self) -> usize {
        let state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.idle.len() + state.busy
    }

    fn wrap(&self, client: Client, warnings: Arc<Warnings>) -> PooledClient {
        PooledClient { client: Some(client), warnings, pool: self.clone(), broken: false, lost: false }
    }

    /// Hands a connection back (`None`: it is gone); `lost`: the database was found gone, so
    /// the idle connections are dropped too rather than each failing its next user.
    fn release(&self, client: Option<(Client, Arc<Warnings>)>, lost: bool) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        state.busy -= 1;
        let dead = if lost { std::mem::take(&mut state.idle) } else { Vec::new() };
        if let Some((c, warnings)) = client {
            state.idle.push((c, warnings, Instant::now()));
        }
        drop(state);
        // Closing clients does I/O: after the lock is released.
        drop(dead);
        self.inner.returned.notify_all();
    }
}

/// A connection out of the pool, handed back when dropped (unless it broke).
pub struct PooledClient {
    client: Option<Client>,
    /// What the server warned on this connection.
    warnings: Arc<Warnings>,
    pool: PgPool,
    /// Not to be reused (its state is unknown).
    broken: bool,
    /// Failed as if the database were gone: the idle connections go with it.
    lost: bool,
}

impl PooledClient {
    /// Classifies an error this connection returned; a transient one also keeps the connection
    /// from going back to the pool.
    pub fn fail(&mut self, e: &postgres::Error) -> PgError {
        let error = self.pool.error(e);
        if error.is_unavailable() {
            self.lost = true;
        }
        error
    }

    /// Keeps this connection from going back to the pool (its state is unknown).
    pub fn discard(&mut self) {
        self.broken = true;
    }

    /// The WARNINGs the server sends on this connection, as they arrive.
    pub fn warnings(&self) -> Arc<Warnings> {
        self.warnings.clone()
    }
}

impl std::ops::Deref for PooledClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a pooled client is present until dropped")
    }
}

impl std::ops::DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a pooled client is present until dropped")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        let client = self.client.take();
        let lost = self.lost || client.as_ref().is_some_and(Client::is_closed);
        let kept = client.filter(|_| !self.broken && !lost).map(|c| (c, self.warnings.clone()));
        self.pool.release(kept, lost);
    }
}

/// The path of a Unix socket directory in a URL's host part (percent-encoded, as the URL
/// syntax needs for `/`).
pub fn socket_host(dir: &Path) -> String {
    let mut out = String::new();
    for b in dir.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(*b)),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
