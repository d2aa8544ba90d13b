//! A throw-away PostgreSQL cluster in a temporary directory, for tests and `hcert-load`: a
//! development tool like `dev-init`, never part of a production set-up.
//!
//! It runs the distribution's server binaries (`initdb`, `pg_ctl`, `pg_basebackup`) as an
//! unprivileged user when the caller is root (PostgreSQL refuses to run as root; `nobody`
//! through `runuser`), listens on a Unix socket in its directory only (`listen_addresses = ''`),
//! authenticates with scram-sha-256 a role and database it creates (`hcert`), and keeps
//! `fsync` on, since the tests that use it kill processes and must see real durability.
//! Dropping it stops every server it started and removes the directory.
//!
//! [`ScratchCluster::start_with_standby`] adds a synchronous standby (`pg_basebackup -R`,
//! `synchronous_standby_names`), so that a test can kill the primary, promote the standby and
//! watch clients follow through a URL naming both with `target_session_attrs=read-write`.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::NoTls;

use super::connect::socket_host;
use super::error::one_line;
use super::{PgError, PgSettings};

/// The role and database a scratch cluster creates for the store.
pub const ROLE: &str = "hcert";
/// The port number in the socket's name (`.s.PGSQL.5432`); each node has its own directory.
const PORT: u16 = 5432;
/// The unprivileged user the servers run as when the caller is root.
const RUN_AS: &str = "nobody";
/// How long a server may take to start, stop or be promoted.
const WAIT: Duration = Duration::from_secs(60);

/// What went wrong setting up or driving a scratch cluster.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// A PostgreSQL server binary is not installed.
    #[error(
        "PostgreSQL's {0} was not found (looked in `pg_config --bindir` and /usr/lib/postgresql/*/bin): \
         install the Debian package postgresql (scripts/install-deps.sh does)"
    )]
    Missing(&'static str),
    /// A step failed; the detail holds the tool's own message.
    #[error("scratch PostgreSQL: {step}: {detail}")]
    Failed {
        /// What was being done.
        step: String,
        /// Why it failed.
        detail: String,
    },
}

fn failed(step: impl Into<String>, detail: impl std::fmt::Display) -> ScratchError {
    ScratchError::Failed { step: step.into(), detail: detail.to_string() }
}

/// One server: its data directory, its socket directory and its log.
#[derive(Debug)]
struct Node {
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Node {
    fn new(root: &Path, name: &str) -> Node {
        let base = root.join(name);
        Node { data: base.join("data"), socket: base.join("sock"), log: base.join("server.log") }
    }

    /// The postmaster's process id, from `postmaster.pid` (absent when stopped cleanly).
    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// A PostgreSQL cluster in a temporary directory, removed on drop (see the module doc).
pub struct ScratchCluster {
    dir: PathBuf,
    bin: PathBuf,
    /// uid and gid of [`RUN_AS`] when the caller is root.
    owner: Option<(u32, u32)>,
    primary: Node,
    standby: Option<Node>,
    /// Set by [`promote_standby`](Self::promote_standby).
    promoted: AtomicBool,
    /// libpq's password file for the superuser, read by `pg_basebackup` and the standby.
    pgpass: PathBuf,
    superuser_password: String,
    /// The `hcert` role's password, mode 0600, as `[store] password_file` wants it.
    password_file: PathBuf,
}

impl std::fmt::Debug for ScratchCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the superuser's password.
        f.debug_struct("ScratchCluster")
            .field("dir", &self.dir)
            .field("bin", &self.bin)
            .field("standby", &self.standby.is_some())
            .finish()
    }
}

impl ScratchCluster {
    /// Creates and starts a cluster with the role and database `hcert`.
    pub fn start() -> Result<ScratchCluster, ScratchError> {
        let cluster = Self::init()?;
        cluster.pg_ctl_start(&cluster.primary)?;
        cluster.create_role()?;
        Ok(cluster)
    }

    /// Creates a primary and a synchronous standby streaming from it: every commit on the
    /// primary returns only once the standby has it. [`url`](Self::url) names both, so a
    /// client finds whichever is the primary.
    pub fn start_with_standby() -> Result<ScratchCluster, ScratchError> {
        let mut cluster = Self::start()?;
        let standby = Node::new(&cluster.dir, "standby");
        cluster.make_dir(standby.data.parent().unwrap_or(&cluster.dir))?;
        let primary_conn = format!("host={} port={PORT} user=postgres", cluster.primary.socket.display());
        let mut backup = cluster.command("pg_basebackup")?;
        backup
            .args(["-D"])
            .arg(&standby.data)
            .args(["-R", "-X", "stream", "-c", "fast", "-d", &primary_conn])
            .env("PGPASSFILE", &cluster.pgpass);
        run(&mut backup, "pg_basebackup from the primary")?;
        cluster.make_dir(&standby.socket)?;
        // postgresql.auto.conf is read last: this node's own socket, and no synchronous standby
        // of its own (once promoted it must not wait for one that does not exist).
        append(
            &standby.data.join("postgresql.auto.conf"),
            &format!(
                "unix_socket_directories = '{}'\nsynchronous_standby_names = ''\n\
                 primary_conninfo = 'host={} port={PORT} user=postgres passfile={} application_name=standby'\n",
                standby.socket.display(),
                cluster.primary.socket.display(),
                cluster.pgpass.display()
            ),
        )?;
        // Recorded before it starts, so that Drop stops it whatever fails from here on.
        cluster.standby = Some(standby);
        if let Some(standby) = &cluster.standby {
            cluster.pg_ctl_start(standby)?;
        }
        // Only now the primary waits for the standby: its own set-up commits ran without one.
        let mut su = cluster.superuser(&cluster.primary)?;
        // One statement each: ALTER SYSTEM refuses to run inside a transaction block, which a
        // multi-statement query is.
        for sql in [
            "ALTER SYSTEM SET synchronous_standby_names = 'standby'",
            "ALTER SYSTEM SET synchronous_commit = 'on'",
            "SELECT pg_reload_conf()",
        ] {
            su.batch_execute(sql).map_err(|e| failed("configuring synchronous replication", one_line(&e)))?;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let row = su
                .query_one("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'", &[])
                .map_err(|e| failed("reading pg_stat_replication", one_line(&e)))?;
            if row.get::<_, i64>(0) == 1 {
                break;
            }
            if Instant::now() > deadline {
                return Err(failed("waiting for the standby to be synchronous", cluster.logs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    /// The store's URL (no password in it): the socket directory of the primary, or of both
    /// nodes with `target_session_attrs=read-write` for a pair.
    pub fn url(&self) -> String {
        match &self.standby {
            None => format!("postgresql://{ROLE}@{}:{PORT}/{ROLE}", socket_host(&self.primary.socket)),
            Some(s) => format!(
                "postgresql://{ROLE}@{}:{PORT},{}:{PORT}/{ROLE}?target_session_attrs=read-write",
                socket_host(&self.primary.socket),
                socket_host(&s.socket)
            ),
        }
    }

    /// The file holding the `hcert` role's password (mode 0600), for `[store] password_file`.
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// The cluster's directory (data directories, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the primary cleanly (`pg_ctl stop -m fast`): clients then find no socket.
    pub fn stop(&self) -> Result<(), ScratchError> {
        let mut c = self.command("pg_ctl")?;
        c.args(["stop", "-m", "fast", "-w", "-t", &WAIT.as_secs().to_string(), "-D"]).arg(&self.primary.data);
        run(&mut c, "pg_ctl stop").map(drop)
    }

    /// Starts the primary again after [`stop`](Self::stop) or [`kill9`](Self::kill9) (crash
    /// recovery then replays the WAL), waiting until it accepts connections. Refused once the
    /// standby was promoted: there would be two primaries.
    pub fn start_again(&self) -> Result<(), ScratchError> {
        if self.promoted.load(Ordering::Relaxed) {
            return Err(failed("start_again", "the standby was promoted; the old primary stays down"));
        }
        self.pg_ctl_start(&self.primary)
    }

    /// Stops the standby cleanly (`pg_ctl stop -m fast`): the primary's commits then wait for
    /// it (synchronous replication) until it is back or an administrator cancels the wait.
    pub fn stop_standby(&self) -> Result<(), ScratchError> {
        let Some(standby) = &self.standby else {
            return Err(failed("stop_standby", "this cluster has no standby (use start_with_standby)"));
        };
        let mut c = self.command("pg_ctl")?;
        c.args(["stop", "-m", "fast", "-w", "-t", &WAIT.as_secs().to_string(), "-D"]).arg(&standby.data);
        run(&mut c, "pg_ctl stop (standby)").map(drop)
    }

    /// Starts the standby again after [`stop_standby`](Self::stop_standby); it catches up
    /// and the commits waiting for it return.
    pub fn start_standby_again(&self) -> Result<(), ScratchError> {
        match &self.standby {
            Some(standby) => self.pg_ctl_start(standby),
            None => {
                Err(failed("start_standby_again", "this cluster has no standby (use start_with_standby)"))
            }
        }
    }

    /// Settings for a pool on this cluster ([`url`](Self::url) and
    /// [`password_file`](Self::password_file), no TLS).
    pub fn settings(&self, pool_size: usize) -> Result<PgSettings, PgError> {
        PgSettings::new(&self.url(), Some(&self.password_file), None, pool_size)
    }

    /// Kills the primary's postmaster with SIGKILL, as a power cut or the OOM killer would,
    /// and waits until it is gone; its backends exit on their own soon after.
    pub fn kill9(&self) -> Result<(), ScratchError> {
        kill9(&self.primary)
    }

    /// [`kill9`](Self::kill9), named for the pair.
    pub fn kill9_primary(&self) -> Result<(), ScratchError> {
        kill9(&self.primary)
    }

    /// Promotes the standby (`pg_ctl promote`), waiting until it accepts writes.
    pub fn promote_standby(&self) -> Result<(), ScratchError> {
        let Some(standby) = &self.standby else {
            return Err(failed("promote", "this cluster has no standby (use start_with_standby)"));
        };
        let mut c = self.command("pg_ctl")?;
        c.args(["promote", "-w", "-t", &WAIT.as_secs().to_string(), "-D"]).arg(&standby.data);
        self.promoted.store(true, Ordering::Relaxed);
        run(&mut c, "pg_ctl promote").map(drop)
    }

    /// CPU time the servers used so far (every node: postmasters, their live backends and
    /// the backends that already exited), for `hcert-load`'s CPU per record; PostgreSQL shares
    /// the machine's cores with the daemon. Take it before and after a run.
    pub fn cpu_time(&self) -> Duration {
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let stats: Vec<(i32, i32, u64, u64)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| proc_stat(pid).map(|(ppid, own, children)| (pid, ppid, own, children)))
            .collect();
        let mut total = 0u64;
        for node in std::iter::once(&self.primary).chain(&self.standby) {
            let Some(postmaster) = node.postmaster_pid() else { continue };
            for (pid, ppid, own, children) in &stats {
                if *pid == postmaster {
                    // Its exited backends' time is in its children's counters once reaped.
                    total += own + children;
                } else if *ppid == postmaster {
                    total += own;
                }
            }
        }
        Duration::from_nanos(total.saturating_mul(1_000_000_000) / ticks)
    }

    /// The servers' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in std::iter::once(&self.primary).chain(&self.standby) {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {}:\n", node.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn init() -> Result<ScratchCluster, ScratchError> {
        let bin = bindir()?;
        let owner = if rustix::process::geteuid().is_root() { Some(user_ids(RUN_AS)?) } else { None };
        let dir = std::env::temp_dir().join(format!("hcert-pg-{}", random_hex(8)));
        // From here on, its Drop removes whatever a failed step leaves behind.
        let cluster = ScratchCluster {
            primary: Node::new(&dir, "primary"),
            standby: None,
            promoted: AtomicBool::new(false),
            pgpass: dir.join("pgpass"),
            superuser_password: random_hex(16),
            password_file: dir.join("hcert-password"),
            dir,
            bin,
            owner,
        };
        cluster.make_dir(&cluster.dir)?;
        cluster.make_dir(cluster.primary.data.parent().unwrap_or(&cluster.dir))?;
        cluster.make_dir(&cluster.primary.socket)?;
        let pwfile = cluster.dir.join("initdb-password");
        cluster.write_secret(&pwfile, &cluster.superuser_password, true)?;
        cluster.write_secret(
            &cluster.pgpass,
            &format!("*:*:*:postgres:{}\n", cluster.superuser_password),
            true,
        )?;
        let mut initdb = cluster.command("initdb")?;
        initdb
            .arg("-D")
            .arg(&cluster.primary.data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let initdb_result = run(&mut initdb, "initdb");
        let _ = std::fs::remove_file(&pwfile);
        initdb_result?;
        append(
            &cluster.primary.data.join("postgresql.conf"),
            &format!(
                "\n# hcert-signer scratch cluster\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
                 port = {PORT}\nfsync = on\nsynchronous_commit = on\nmax_connections = 100\n\
                 shared_buffers = 32MB\nwal_level = replica\nmax_wal_senders = 4\n",
                cluster.primary.socket.display()
            ),
        )?;
        Ok(cluster)
    }

    /// Creates the `hcert` role (scram-sha-256 password) and its database.
    fn create_role(&self) -> Result<(), ScratchError> {
        let password = random_hex(16);
        self.write_secret(&self.password_file, &format!("{password}\n"), false)?;
        let mut su = self.superuser(&self.primary)?;
        // The password is hex, so it needs no quoting beyond the literal's.
        su.batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';"
        ))
        .map_err(|e| failed("creating the role", one_line(&e)))?;
        su.batch_execute(&format!("CREATE DATABASE {ROLE} OWNER {ROLE}"))
            .map_err(|e| failed("creating the database", one_line(&e)))
    }

    /// A superuser connection to a node.
    fn superuser(&self, node: &Node) -> Result<postgres::Client, ScratchError> {
        let mut config = postgres::Config::new();
        config
            .host_path(&node.socket)
            .port(PORT)
            .user("postgres")
            .dbname("postgres")
            .password(&self.superuser_password)
            .connect_timeout(Duration::from_secs(5));
        config.connect(NoTls).map_err(|e| failed("connecting as superuser", one_line(&e)))
    }

    fn pg_ctl_start(&self, node: &Node) -> Result<(), ScratchError> {
        // After a SIGKILL the old backends may still hold the shared memory for a moment, and
        // the postmaster refuses to start until they are gone: try again until WAIT.
        let deadline = Instant::now() + WAIT;
        loop {
            let mut c = self.command("pg_ctl")?;
            c.args(["start", "-w", "-t", &WAIT.as_secs().to_string(), "-D"])
                .arg(&node.data)
                .arg("-l")
                .arg(&node.log);
            match run(&mut c, "pg_ctl start") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(failed("pg_ctl start", format!("{e}\n{}", self.logs())));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// A command for one of the server binaries, run as [`RUN_AS`] when we are root.
    fn command(&self, tool: &'static str) -> Result<Command, ScratchError> {
        let path = self.bin.join(tool);
        if !path.exists() {
            return Err(ScratchError::Missing(tool));
        }
        Ok(match self.owner {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", RUN_AS, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        })
    }

    /// Creates a directory (mode 0700) owned by the servers' user.
    fn make_dir(&self, path: &Path) -> Result<(), ScratchError> {
        std::fs::create_dir_all(path).map_err(|e| failed(format!("creating {}", path.display()), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| failed(format!("chmod {}", path.display()), e))?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<(), ScratchError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| failed(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Writes a secret file, mode 0600; `for_server`: owned by the servers' user.
    fn write_secret(&self, path: &Path, text: &str, for_server: bool) -> Result<(), ScratchError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| failed(format!("creating {}", path.display()), e))?;
        f.write_all(text.as_bytes()).map_err(|e| failed(format!("writing {}", path.display()), e))?;
        if for_server { self.chown(path) } else { Ok(()) }
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        for node in std::iter::once(&self.primary).chain(&self.standby) {
            if node.postmaster_pid().is_some()
                && let Ok(mut c) = self.command("pg_ctl")
            {
                c.args(["stop", "-m", "immediate", "-w", "-t", "20", "-D"]).arg(&node.data);
                if run(&mut c, "pg_ctl stop").is_err() {
                    let _ = kill9(node);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill9(node: &Node) -> Result<(), ScratchError> {
    let pid = node.postmaster_pid().ok_or_else(|| failed("kill -9", "the server is not running"))?;
    let target = rustix::process::Pid::from_raw(pid).ok_or_else(|| failed("kill -9", "bad pid"))?;
    rustix::process::kill_process(target, rustix::process::Signal::KILL)
        .map_err(|e| failed(format!("kill -9 {pid}"), e))?;
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        if Instant::now() > deadline {
            return Err(failed(format!("kill -9 {pid}"), "the postmaster did not exit"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether a process exists and is not a zombie (a killed postmaster is reparented to a PID 1
/// that may never reap it).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// A process's parent, its own CPU ticks (user + system) and its reaped children's, from
/// `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(i32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state, ppid, …; utime, stime, cutime, cstime are the
    // 14th–17th fields of the whole line, so the 12th–15th after the name.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let n = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((fields.get(1)?.parse().ok()?, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Runs a command to completion, its output captured for the error.
fn run(c: &mut Command, step: &str) -> Result<String, ScratchError> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(step, format!("cannot run {:?}: {e}", c.get_program())))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(failed(step, format!("{}: {}", out.status, text.trim())))
    }
}

fn append(path: &Path, text: &str) -> Result<(), ScratchError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| failed(format!("opening {}", path.display()), e))?;
    f.write_all(text.as_bytes()).map_err(|e| failed(format!("writing {}", path.display()), e))
}

/// The server binaries' directory: `pg_config --bindir` when it holds `initdb` (Debian's
/// `/usr/bin/pg_config` may come from libpq-dev and name `/usr/bin`), else the newest
/// `/usr/lib/postgresql/<major>/bin`.
fn bindir() -> Result<PathBuf, ScratchError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or(ScratchError::Missing("initdb"))
}

/// The uid and gid of a user, from /etc/passwd.
fn user_ids(user: &str) -> Result<(u32, u32), ScratchError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| failed("reading /etc/passwd", e))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
        })
        .ok_or_else(|| {
            failed(
                "finding an unprivileged user",
                format!("no user {user:?} in /etc/passwd to run PostgreSQL as"),
            )
        })
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("the system's random source works");
    hex::encode(buf)
}
