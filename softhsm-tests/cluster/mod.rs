//! A cluster for integration tests: one scratch PostgreSQL, node 1 made by `dev-init --postgres`,
//! nodes 2 and 3 by `dev-init --join` (one SoftHSM token, one client PKI, one database), each
//! node's `public_url` the balancer's, and HAProxy in front running the shipped
//! `scale-out/cluster.cfg` unchanged. Everything it started is stopped when it is dropped, also
//! when a test panics.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hcert_signer::client::{ApiClient, ClientTls, Reply};
use hcert_signer::store::postgres::{PgPool, PgSettings, ScratchCluster};
use http::Method;

use crate::daemon::{BIN, Daemon, Haproxy, TestStore, free_port};

/// Where the test's clients connect to a node directly from: any loopback address but the
/// balancer's 127.0.0.1, which must send a PROXY header.
pub const DIRECT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

/// How long a node may take to become ready (2 shared cores, a database, an HSM).
const READY: Duration = Duration::from_secs(120);

/// Three nodes on one PostgreSQL and one token behind HAProxy.
pub struct Cluster {
    /// The balancer's address (every node's `public_url` names it).
    pub lb: SocketAddr,
    /// Each node's API address, node 1 first.
    pub api: Vec<SocketAddr>,
    /// Each node's operations address.
    pub ops: Vec<SocketAddr>,
    haproxy: Option<Haproxy>,
    nodes: Vec<Arc<Mutex<Daemon>>>,
    /// Dropped last: after every node is gone.
    pg: Option<ScratchCluster>,
}

impl Cluster {
    /// Makes and starts the cluster; returns once HAProxy forwards to a ready node.
    pub fn start() -> Cluster {
        // On a thread of its own: its synchronous client cannot run inside a test's runtime.
        let pg = std::thread::spawn(ScratchCluster::start)
            .join()
            .expect("start a scratch PostgreSQL")
            .expect("a scratch PostgreSQL (Debian package postgresql)");
        let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let first = tempfile::tempdir().expect("tempdir");
        dev_init(&[
            "--dir".as_ref(),
            first.path().as_os_str(),
            "--postgres".as_ref(),
            pg.url().as_ref(),
            "--postgres-password-file".as_ref(),
            pg.password_file().as_os_str(),
        ]);
        let mut n1 = Daemon::at(first, TestStore::Postgres);
        configure(&n1, lb);
        // Node 1 first: its first start makes the audit key and pins its public half in its
        // state directory, which `--join` copies to the other nodes.
        n1.spawn();
        n1.wait_ready(READY);
        let mut nodes = vec![n1];
        for _ in 2..=3 {
            let dir = tempfile::tempdir().expect("tempdir");
            dev_init(&[
                "--dir".as_ref(),
                dir.path().as_os_str(),
                "--join".as_ref(),
                nodes[0].path().as_os_str(),
            ]);
            let mut n = Daemon::at(dir, TestStore::Postgres);
            // `--join` copies node 1's settings, the balancer's among them.
            let config = std::fs::read_to_string(n.path().join("config.toml")).expect("config.toml");
            assert!(config.contains(&format!("public_url = \"https://{lb}\"")), "{config}");
            assert!(config.contains("proxy_protocol_from = [\"127.0.0.1\"]"), "{config}");
            n.spawn();
            nodes.push(n);
        }
        for n in &mut nodes[1..] {
            n.wait_ready(READY);
        }
        let config = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scale-out/cluster.cfg"));
        let refs: Vec<&Daemon> = nodes.iter().collect();
        let haproxy = Haproxy::with_config(&config, lb, &refs, &nodes[0].path().join("haproxy.log"));
        let cluster = Cluster {
            lb,
            api: nodes.iter().map(|n| n.listen).collect(),
            ops: nodes.iter().map(|n| n.ops).collect(),
            haproxy: Some(haproxy),
            nodes: nodes.into_iter().map(|n| Arc::new(Mutex::new(n))).collect(),
            pg: Some(pg),
        };
        cluster.wait_balancer();
        cluster
    }

    /// Waits until a request through HAProxy reaches a node.
    fn wait_balancer(&self) {
        let tls = self.tls("issuer");
        let lb = self.lb;
        let up = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(60) {
                    if let Ok(mut c) = ApiClient::connect(lb, "localhost", &tls).await
                        && c.get("/v1/trust-list").await.is_ok_and(|r| r.status == 200)
                    {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                false
            })
        });
        assert!(up.join().expect("balancer check"), "HAProxy did not come up: {}", self.haproxy_log());
    }

    /// Node `n` (1-based), locked.
    pub fn node(&self, n: usize) -> MutexGuard<'_, Daemon> {
        self.nodes[n - 1].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Node `n` (1-based), to hand to another thread (a test's chaos thread).
    pub fn shared(&self, n: usize) -> Arc<Mutex<Daemon>> {
        self.nodes[n - 1].clone()
    }

    /// Settings for a connection of the test's own to the cluster's database (to look at what
    /// the nodes left in it; open it on a thread outside any runtime).
    pub fn database(&self) -> PgSettings {
        self.pg.as_ref().expect("the database").settings(1).expect("database settings")
    }

    /// [`leased_by`] node `n` (0 when it is not running), on a connection of its own.
    pub fn leased_by_node(&self, n: usize) -> i64 {
        let Some(pid) = self.node(n).pid() else { return 0 };
        let settings = self.database();
        std::thread::spawn(move || {
            leased_by(&hcert_signer::store::postgres::open(settings).expect("connect"), pid)
        })
        .join()
        .expect("lease count")
    }

    /// TLS settings of the dev-init client `name` (one client PKI for the whole cluster).
    pub fn tls(&self, name: &str) -> ClientTls {
        self.node(1).tls(name)
    }

    /// A connection to node `n` directly (not through the balancer), as `name`.
    pub async fn direct(&self, n: usize, name: &str) -> ApiClient {
        ApiClient::connect_from(DIRECT_HOST, self.api[n - 1], "localhost", &self.tls(name))
            .await
            .expect("connect to a node")
    }

    /// A client of the balancer as `name`, reconnecting when a node goes away under it.
    pub fn balanced(&self, name: &str) -> Balanced {
        Balanced { lb: self.lb, tls: self.tls(name), conn: None }
    }

    /// The signatures the cluster's one audit chain holds, read through node `n`'s
    /// configuration; asserts the chain verifies.
    pub fn audited_signatures(&self, n: usize) -> u64 {
        self.node(n).audited_signatures()
    }

    /// HAProxy's log so far.
    pub fn haproxy_log(&self) -> String {
        std::fs::read_to_string(self.node(1).path().join("haproxy.log")).unwrap_or_default()
    }

    /// The end of every node's log and HAProxy's, for a failure message.
    pub fn logs(&self) -> String {
        let tail = |s: String| {
            s.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        let mut out = String::new();
        for n in 1..=self.nodes.len() {
            out.push_str(&format!("\n--- node {n} ---\n{}", tail(self.node(n).log_text())));
        }
        out.push_str(&format!("\n--- haproxy ---\n{}", tail(self.haproxy_log())));
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The balancer, then every node, then the database.
        self.haproxy.take();
        for n in &self.nodes {
            n.lock().unwrap_or_else(|e| e.into_inner()).kill9();
        }
        self.pg.take();
    }
}

/// The blocks the node with process id `pid` holds under a lease that has not ended, read in
/// the database (a node names itself host/pid/random as lease holder).
pub fn leased_by(db: &PgPool, pid: u32) -> i64 {
    db.run(|c| {
        c.query_one(
            "SELECT count(*) FROM pending WHERE lease_node LIKE '%/' || $1 || '/%'
             AND lease_token IS NOT NULL AND lease_until > clock_timestamp()",
            &[&pid.to_string()],
        )
        .map(|r| r.get(0))
    })
    .expect("read the leases")
}

/// Runs `hcert-signer dev-init` with `args`; asserts it succeeds.
fn dev_init(args: &[&std::ffi::OsStr]) {
    let out = Command::new(BIN).arg("dev-init").args(args).output().expect("run dev-init");
    assert!(out.status.success(), "dev-init failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A node behind the balancer: `Location`s name the balancer, and PROXY headers are taken from
/// HAProxy's address.
fn configure(node: &Daemon, lb: SocketAddr) {
    node.append_config(&format!("public_url = \"https://{lb}\""));
    node.append_config("\n[api]\nproxy_protocol_from = [\"127.0.0.1\"]\n");
}

/// A client of the balancer that opens a new connection whenever the one it has fails (the node
/// behind it was killed or stopped) and retries, as an issuer's client does.
pub struct Balanced {
    lb: SocketAddr,
    tls: ClientTls,
    conn: Option<ApiClient>,
}

impl Balanced {
    /// Sends the request until a node answers with anything but 503 (a node on its way down or
    /// up), for at most `within`. A POST is only ever retried with an idempotency key in it.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        within: Duration,
    ) -> Reply {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            assert!(start.elapsed() < within, "{method} {path} not answered within {within:?}: {last}");
            if self.conn.is_none() {
                match ApiClient::connect(self.lb, "localhost", &self.tls).await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        last = format!("connect: {e}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected");
            match conn.request(method.clone(), path, body.clone()).await {
                Ok(r) if r.status == 503 => {
                    last = format!("503 {}", String::from_utf8_lossy(&r.body));
                    self.conn = None;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(r) => return r,
                Err(e) => {
                    last = format!("{e}");
                    self.conn = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// GET, retried as [`Balanced::send`] does.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, None, Duration::from_secs(300)).await
    }
}
