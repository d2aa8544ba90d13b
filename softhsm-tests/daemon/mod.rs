//! A real daemon for integration tests: `dev-init` in a temp dir (fresh SoftHSM token, CAs,
//! keys, config), `hcert-signer serve` as a child process, and mTLS clients from the
//! certificates dev-init wrote.
//!
//! # Which store backend
//!
//! `HCERT_TEST_STORE` ([`STORE_ENV`]) picks the backend of every daemon [`Daemon::init`]
//! makes: `sled` (the default, also when unset or empty) or `postgres`. `scripts/test.sh` runs
//! the binaries that hold both backends to the same promises (API, rotation, crash, audit,
//! the insider suite's idempotency and retention) a second time with `postgres` once
//! `HCERT_TEST_ON_POSTGRES=1` ([`TestStore`]). Tests of what only sled has (its files on a full
//! disk, shredding in its files, tampering with its audit tree) ask for
//! [`Daemon::init_on`]`(TestStore::Sled)` or check [`Daemon::store`].
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hcert_signer::client::{ApiClient, ClientTls};
use hcert_signer::config::Config;
use hcert_signer::hcert::dcc::arbitrary;
use hcert_signer::store::postgres::ScratchCluster;
use proptest::strategy::{Strategy, ValueTree};
use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hcert-signer");

/// The environment variable that picks the store backend of the daemons under test.
pub const STORE_ENV: &str = "HCERT_TEST_STORE";

/// The store backend a test daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStore {
    /// The embedded sled store in the daemon's state directory (dev-init's default).
    Sled,
    /// PostgreSQL: a scratch cluster of the test's own (issue 19).
    Postgres,
}

impl TestStore {
    /// The backend [`STORE_ENV`] names: `sled` when unset or empty; anything but `sled` and
    /// `postgres` fails the test, so a typo never quietly tests sled.
    pub fn from_env() -> TestStore {
        match std::env::var(STORE_ENV) {
            Err(std::env::VarError::NotPresent) => TestStore::Sled,
            Ok(v) if v.is_empty() || v == "sled" => TestStore::Sled,
            Ok(v) if v == "postgres" => TestStore::Postgres,
            Ok(v) => panic!("{STORE_ENV}={v:?}: expected sled or postgres"),
            Err(e) => panic!("{STORE_ENV}: {e}"),
        }
    }

    /// What `dev-init` needs besides `--dir` for this backend, and for PostgreSQL the
    /// throw-away cluster (Unix socket only) the daemon's store lives in.
    fn dev_init_args(self) -> (Vec<String>, Option<ScratchCluster>) {
        match self {
            TestStore::Sled => (Vec::new(), None),
            TestStore::Postgres => {
                // On a thread of its own: its synchronous client cannot run inside a test's runtime.
                let cluster = std::thread::spawn(ScratchCluster::start)
                    .join()
                    .expect("start a scratch PostgreSQL")
                    .expect("a scratch PostgreSQL (Debian package postgresql)");
                let args = vec![
                    "--postgres".into(),
                    cluster.url(),
                    "--postgres-password-file".into(),
                    cluster.password_file().display().to_string(),
                ];
                (args, Some(cluster))
            }
        }
    }
}

/// A dev-init directory with a daemon that may be running.
pub struct Daemon {
    /// The dev-init directory (kept while the value lives).
    pub dir: tempfile::TempDir,
    /// The store backend it runs on.
    pub store: TestStore,
    /// API address.
    pub listen: SocketAddr,
    /// Operations (health, metrics) address.
    pub ops: SocketAddr,
    child: Option<Child>,
    /// Everything the daemon wrote to stderr, across restarts.
    pub log: PathBuf,
    /// The PostgreSQL cluster of a daemon on PostgreSQL (stopped after the daemon: fields drop
    /// after [`Daemon`]'s own `Drop` killed it).
    pub cluster: Option<ScratchCluster>,
}

impl Daemon {
    /// dev-init in a fresh directory (not started yet), on the backend [`STORE_ENV`] names.
    pub fn init() -> Daemon {
        Daemon::init_on(TestStore::from_env())
    }

    /// dev-init in a fresh directory (not started yet), on `store` whatever [`STORE_ENV`]
    /// says: for tests of one backend's own storage.
    pub fn init_on(store: TestStore) -> Daemon {
        let (args, cluster) = store.dev_init_args();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let mut d = Daemon::dev_init_with(&args, store);
        d.cluster = cluster;
        d
    }

    /// `dev-init --dir <fresh temp dir> ARGS` (not started yet).
    fn dev_init_with(args: &[&std::ffi::OsStr], store: TestStore) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(BIN)
            .args(["dev-init", "--dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .expect("dev-init");
        assert!(out.status.success(), "dev-init failed: {}", String::from_utf8_lossy(&out.stderr));
        Daemon::at(dir, store)
    }

    /// A daemon (not started yet) for a directory `dev-init` already wrote (a cluster's node
    /// made with `--postgres` or `--join`; its database belongs to the caller).
    pub fn at(dir: tempfile::TempDir, store: TestStore) -> Daemon {
        let config = Config::load(&dir.path().join("config.toml")).expect("config.toml");
        let log = dir.path().join("daemon.log");
        Daemon {
            listen: config.listen,
            ops: config.metrics_listen,
            dir,
            store,
            child: None,
            log,
            cluster: None,
        }
    }

    /// dev-init and start, waiting until ready.
    pub fn start() -> Daemon {
        Daemon::start_on(TestStore::from_env())
    }

    /// dev-init on `store` and start, waiting until ready.
    pub fn start_on(store: TestStore) -> Daemon {
        let mut d = Daemon::init_on(store);
        d.spawn();
        d.wait_ready(Duration::from_secs(60));
        d
    }

    /// The dev-init directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Appends `text` to config.toml (for tests that change limits).
    pub fn append_config(&self, text: &str) {
        let p = self.path().join("config.toml");
        let mut c = std::fs::read_to_string(&p).expect("config");
        // Top-level keys must come before the first table.
        if !text.trim_start().starts_with('[') {
            c = format!("{text}\n{c}");
        } else if let Some(merged) = merge_into_existing_table(&c, text) {
            // A table the config has already (`[store]` on PostgreSQL): its keys join it.
            c = merged;
        } else {
            c.push_str(text);
        }
        std::fs::write(p, c).expect("write config");
    }

    /// Starts `serve` (stderr appended to [`Daemon::log`]).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Read only by a `test-clock` build (src/clock.rs); see `set_clock_offset`.
            .env("HCERT_TEST_CLOCK_FILE", self.path().join("test-clock-offset"))
            .spawn()
            .expect("spawn serve");
        self.child = Some(child);
    }

    /// Waits for `/readyz` on the operations listener to answer 200.
    pub fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("daemon exited with {status}: {}", self.log_text());
            }
            if ops_get(self.ops, "/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(start.elapsed() < within, "daemon not ready within {within:?}: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `/healthz` only (for daemons that are not meant to be ready).
    pub fn wait_started(&mut self) {
        let start = Instant::now();
        while ops_get(self.ops, "/healthz").is_none_or(|(s, _)| s != 200) {
            assert!(start.elapsed() < Duration::from_secs(60), "daemon did not start: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves the daemon's calendar clock `secs` ahead (a `test-clock` build reads it at every
    /// call, so it works on a running daemon too).
    pub fn set_clock_offset(&self, secs: i64) {
        std::fs::write(self.path().join("test-clock-offset"), secs.to_string()).expect("write clock offset");
    }

    /// Waits for a daemon that is expected to stop by itself; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                self.child = None;
                return status.code();
            }
            assert!(start.elapsed() < within, "daemon still running after {within:?}: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the daemon on a configuration it must refuse: asserts it exits 78 (configuration
    /// error) by itself and returns its log.
    pub fn start_refused(&mut self) -> String {
        self.spawn();
        assert_eq!(self.wait_exit(Duration::from_secs(60)), Some(78), "{}", self.log_text());
        self.log_text()
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        c.wait().ok().and_then(|s| s.code())
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (e.g. `HUP`).
    pub fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([&format!("-{name}"), &c.id().to_string()]).status();
        }
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// TLS settings of the dev-init client `name` (issuer, issuer2, officer1, officer2).
    pub fn tls(&self, name: &str) -> ClientTls {
        let t = self.path().join("tls");
        ClientTls::from_files(
            &t.join("ca.pem"),
            &t.join(format!("{name}.pem")),
            &t.join(format!("{name}.key")),
        )
        .expect("client tls")
    }

    /// TLS settings presenting `issued` (a certificate a test made, trusted or not), with the
    /// daemon's server CA as the root.
    pub fn tls_presenting(&self, issued: &hcert_signer::pki::dev::Issued) -> ClientTls {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write certificate");
        std::fs::write(&key, &issued.key_pem).expect("write key");
        ClientTls::from_files(&self.path().join("tls/ca.pem"), &cert, &key).expect("client tls")
    }

    /// A connected client as `name`.
    pub async fn client(&self, name: &str) -> ApiClient {
        ApiClient::connect(self.listen, "localhost", &self.tls(name)).await.expect("connect")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `text` (one `[table]` header and its keys) merged into `config`'s table of that name, if
/// `config` has one.
fn merge_into_existing_table(config: &str, text: &str) -> Option<String> {
    let mut lines = text.trim().lines();
    let header = lines.next()?.trim();
    if !header.starts_with('[')
        || header.starts_with("[[")
        || lines.clone().any(|l| l.trim().starts_with('['))
    {
        return None;
    }
    let at = config.lines().position(|l| l.trim() == header)?;
    let mut out: Vec<&str> = config.lines().collect();
    for (n, l) in lines.enumerate() {
        out.insert(at + 1 + n, l);
    }
    Some(out.join("\n") + "\n")
}

/// A plain-HTTP GET on the operations listener: (status, body), or None if it does not answer.
pub fn ops_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    ops_request(addr, "GET", path).map(|(status, _, body)| (status, body))
}

/// A plain-HTTP request without a body on the operations listener: (status, head, body), or
/// None if it does not answer.
pub fn ops_request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some((status, head.to_owned(), body.to_owned()))
}

/// `n` valid records (`ref` = prefix + index), deterministic, of all three kinds.
pub fn records(prefix: &str, n: usize) -> Vec<Value> {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = arbitrary::dcc();
    (0..n)
        .map(|i| {
            let dcc = strategy.new_tree(&mut runner).expect("dcc").current();
            let mut v = serde_json::to_value(&dcc).expect("json");
            // Half without a UVCI: the appliance assigns one.
            if i % 2 == 0 {
                for g in ["v", "t", "r"] {
                    if let Some(e) = v.get_mut(g).and_then(|a| a.get_mut(0)).and_then(Value::as_object_mut) {
                        e.remove("ci");
                    }
                }
            }
            json!({"ref": format!("{prefix}{i}"), "dcc": v})
        })
        .collect()
}

/// Polls a batch until it is done (or panics after `within`).
pub async fn wait_done(client: &mut ApiClient, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let r = client.get(&format!("/v1/batches/{id}")).await.expect("status");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json().expect("json");
        if v["state"] == "done" {
            return v;
        }
        assert!(start.elapsed() < within, "batch {id} not done within {within:?}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `hcert-signer verify` over `hc1s` with `trust_list` JSON; returns each line's report.
pub fn verify_all(trust_list: &str, hc1s: &[String]) -> (bool, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tl = dir.path().join("trust.json");
    std::fs::write(&tl, trust_list).expect("write trust list");
    let mut child = Command::new(BIN)
        .args(["verify", "--trust-list"])
        .arg(&tl)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("verify");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = hc1s.join("\n");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("verify output");
    writer.join().expect("writer").expect("write");
    let reports = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("report"))
        .collect();
    (out.status.success(), reports)
}

/// A free TCP port on loopback (for a listener the test starts after this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port()
}

/// Copies a directory tree (a snapshot of a store, as someone with a copy of the disk has).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for e in std::fs::read_dir(from).expect("read directory") {
        let e = e.expect("directory entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy file");
        }
    }
}

/// HAProxy running the shipped `scale-out/haproxy.cfg`; killed when dropped.
pub struct Haproxy(Child);

impl Haproxy {
    /// Starts it listening on `lb`, its two server lines naming `nodes` (the same daemon twice
    /// for a single node), its log in `log`.
    pub fn start(lb: SocketAddr, nodes: [&Daemon; 2], log: &Path) -> Self {
        Haproxy::with_config(
            concat!(env!("CARGO_MANIFEST_DIR"), "/scale-out/haproxy.cfg").as_ref(),
            lb,
            &nodes,
            log,
        )
    }

    /// Starts it on the configuration `config` (a shipped one, unchanged), listening on `lb`,
    /// server line `n` naming `nodes[n - 1]` through `HCERT_NODE{n}_API` / `_OPS`.
    pub fn with_config(config: &Path, lb: SocketAddr, nodes: &[&Daemon], log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("haproxy log");
        let mut cmd = Command::new("haproxy");
        cmd.args(["-db", "-f"]).arg(config).env("HCERT_LB_BIND", lb.to_string());
        for (n, node) in nodes.iter().enumerate() {
            cmd.env(format!("HCERT_NODE{}_API", n + 1), node.listen.to_string())
                .env(format!("HCERT_NODE{}_OPS", n + 1), node.ops.port().to_string());
        }
        Self(cmd.stdout(Stdio::null()).stderr(log).spawn().expect("haproxy (Debian package haproxy)"))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small xorshift generator: a test's random moments (kills, pauses) are replayed from the
/// seed it prints.
pub struct Rng(pub u64);

impl Rng {
    /// The next number (the state must not be 0).
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration from `from` up to `to` milliseconds.
    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The seed in the environment variable `var` (to replay a run), else one from the clock; the
/// caller prints it.
pub fn seed(var: &str) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    })
}

/// Runs `hcert-signer audit verify` with `args`: (exit success, its JSON report, stderr).
pub fn audit_verify(args: &[&std::ffi::OsStr]) -> (bool, Value, String) {
    let out = Command::new(BIN).args(["audit", "verify"]).args(args).output().expect("audit verify");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), report, stderr)
}

impl Daemon {
    /// dev-init's CSCA (its certificate and key in the directory), as the country's CSCA would
    /// certify what it is given.
    pub fn csca(&self) -> hcert_signer::pki::dev::DevCa {
        let read = |f: &str| std::fs::read_to_string(self.path().join(f)).expect(f);
        hcert_signer::pki::dev::DevCa::load(&read("csca.pem"), &read("csca.key")).expect("CSCA")
    }

    /// A DSC for the key of `csr` (PEM), certified by [`Daemon::csca`] from an hour ago for two
    /// years.
    pub fn certify_csr(&self, csr: &[u8]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let csr = std::str::from_utf8(csr).expect("a PEM CSR");
        self.csca()
            .certify_dsc(csr, now - time::Duration::hours(1), now + time::Duration::days(730), None)
            .expect("certify")
    }

    /// The signatures the stopped daemon's audit log holds; asserts the chain verifies.
    pub fn audited_signatures(&self) -> u64 {
        let config = self.path().join("config.toml");
        let (ok, report, _) = audit_verify(&["--config".as_ref(), config.as_os_str()]);
        assert!(ok && report["ok"] == true, "the audit log verifies: {report}");
        report["summary"]["signatures"].as_u64().expect("signature count")
    }
}

impl Daemon {
    /// dev-init in a fresh directory (not started yet) on `cluster`, a PostgreSQL cluster the
    /// test started and keeps (to stop it, kill its primary, promote its standby).
    pub fn init_on_cluster(cluster: &ScratchCluster) -> Daemon {
        Daemon::dev_init_with(
            &[
                "--postgres".as_ref(),
                cluster.url().as_ref(),
                "--postgres-password-file".as_ref(),
                cluster.password_file().as_os_str(),
            ],
            TestStore::Postgres,
        )
    }

    /// A further node of `first`'s cluster (`dev-init --join`, not started yet): its token,
    /// certificates and database, ports and a state directory of its own. Start `first` once
    /// before, so that its audit key's public half is there to be copied.
    pub fn join(first: &Daemon) -> Daemon {
        Daemon::dev_init_with(&["--join".as_ref(), first.path().as_os_str()], TestStore::Postgres)
    }

    /// Whether the daemon's process is still running (it has not exited by itself).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}
