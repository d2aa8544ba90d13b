//! Disk faults under a real daemon whose store lives on a file system of its own (mounted per
//! test under the daemon's temp dir, unmounted by a guard even when the test panics):
//!
//! - below the free-space reserve (`store.min_free_mb`, default 256): new batches get 503
//!   `store_full` with `Retry-After`; readiness stays 200 and says why in `warnings` (the node
//!   still signs what it accepted, serves it and `/v1/sign`); everything accepted is signed
//!   exactly once; once space is freed batches are accepted again without a restart;
//! - under the floor (half the reserve, at most 32 MiB), even with the disk then filled to the
//!   last byte: signing pauses (readiness 503 saying so) without the store stopping, nothing is
//!   written, and once space is freed signing resumes without a restart, exactly once;
//! - ENOSPC inside sled (the reserve and floor off): the store stops (503 `store_unavailable`,
//!   readiness red naming the full disk, no busy loop, SIGTERM still ends the daemon), and after
//!   freeing space and a restart everything accepted should be signed exactly once. sled 0.34.7
//!   breaks that (see `src/store/mod.rs`, "A full disk"): this test asserts the promise and is
//!   ignored until the store no longer depends on sled surviving ENOSPC;
//! - a store that turns read-only, idle and while signing: 503 `store_unavailable`, readiness
//!   red; after fsck, remount and restart everything accepted is signed exactly once.
//!
//! The read-only store is ext4 (`errors=remount-ro`, on a loop device over an image in the test's
//! tmpfs) forced read-only with `trigger_fs_error`, which is how a production disk turns
//! read-only under a running daemon. `mount -o remount,ro` of a tmpfs cannot do it: the kernel
//! refuses (EBUSY) while any file on it is open for writing, and sled keeps its files open for
//! the life of the store, idle or not.
//!
//! The tests need root (mount, losetup); without it they print SKIPPED and pass. They are sled's:
//! their daemons run on sled whatever `HCERT_TEST_STORE` says.

mod daemon;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::{Daemon, TestStore, ops_get, records, verify_all, wait_done};
use hcert_signer::client::{ApiClient, Reply};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// Runs a command; `Err` with its output when it fails.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A tmpfs mounted for one test; lazily unmounted when dropped (also on panic, and while the
/// daemon, dropped after it, still has files open there).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path))?;
        Ok(Tmpfs { path: path.to_owned() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// ext4 with `errors=remount-ro` on a loop device over an image in a tmpfs (RAM only).
/// Field order is drop order: the ext4 mount goes before the tmpfs holding its image.
struct Ext4 {
    mount: PathBuf,
    device: String,
    _backing: Tmpfs,
}

impl Ext4 {
    fn mount(dir: &Path, size_mb: u64) -> Result<Ext4, String> {
        let backing = Tmpfs::mount(&dir.join("backing"), &format!("{}m", size_mb + 16))?;
        let image = backing.path.join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_mb * MIB))
            .map_err(|e| format!("image: {e}"))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
        let mount = dir.join("ext4");
        let fs = Ext4 { mount, device, _backing: backing };
        std::fs::create_dir_all(&fs.mount).map_err(|e| e.to_string())?;
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&self) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "errors=remount-ro", &self.device])
            .arg(&self.mount))
        .map(drop)
    }

    /// What a failing disk does to a running system: ext4 records an error and, with
    /// `errors=remount-ro`, refuses every write from now on (open files included).
    fn fail_read_only(&self) {
        let name = self.device.trim_start_matches("/dev/");
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "hcert disk test")
            .expect("trigger_fs_error");
        let probe = std::fs::write(self.mount.join("probe"), b"x").expect_err("ext4 still writable");
        assert_eq!(probe.kind(), std::io::ErrorKind::ReadOnlyFilesystem, "{probe}");
    }

    /// The operator's repair once the daemon is stopped: unmount, fsck, mount again.
    fn repair(&self) {
        run(Command::new("umount").arg(&self.mount)).expect("umount ext4");
        let st = Command::new("e2fsck").args(["-f", "-y"]).arg(&self.device).output().expect("e2fsck");
        // 0: clean, 1: errors corrected (the error recorded by trigger_fs_error). 4 and up: not fixed.
        assert!(
            matches!(st.status.code(), Some(0 | 1)),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
        self.attach().expect("mount ext4 again");
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        // Busy (a daemon still running): the kernel detaches it when the last user goes.
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// Mounts (or prints why the test is skipped).
macro_rules! mounted {
    ($name:literal, $e:expr) => {
        match $e {
            Ok(m) => m,
            Err(why) => {
                println!("SKIPPED {}: cannot mount a file system for the store ({why})", $name);
                return;
            }
        }
    };
}

/// Points the daemon's `state_dir` at `dir` and appends `extra` (TOML tables) to its config.
fn use_state_dir(d: &Daemon, dir: &Path, extra: &str) {
    let p = d.path().join("config.toml");
    let text = std::fs::read_to_string(&p).expect("config");
    let (mut out, mut replaced) = (String::new(), false);
    for line in text.lines() {
        if line.starts_with("state_dir = ") {
            out.push_str(&format!("state_dir = {:?}\n", dir.to_str().expect("utf-8 path")));
            replaced = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(replaced, "no state_dir line in config.toml");
    std::fs::write(&p, out).expect("write config");
    if !extra.is_empty() {
        d.append_config(extra);
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Writes a filler file into `dir` until the file system has at most `keep_free` bytes free
/// (0: until ENOSPC, down to the last page).
fn fill(dir: &Path, keep_free: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("filler");
    let chunk = vec![0x5a_u8; MIB as usize];
    while free_bytes(dir) > keep_free + MIB {
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(28), "filler: {e}");
            break;
        }
    }
    if keep_free == 0 {
        for size in [64 << 10, 4 << 10, 512, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
    }
    f.sync_all().ok();
    path
}

/// A batch the daemon answered 202 for: its id and refs in order.
struct Accepted {
    id: String,
    refs: Vec<String>,
}

async fn submit(c: &mut ApiClient, prefix: &str, n: usize) -> Result<Accepted, Reply> {
    let recs = records(prefix, n);
    let refs = recs.iter().map(|r| r["ref"].as_str().unwrap().to_owned()).collect();
    let r = c.post("/v1/batches", &json!({"records": recs})).await.expect("submit");
    if r.status == 202 {
        Ok(Accepted { id: r.json().unwrap()["batch_id"].as_str().unwrap().to_owned(), refs })
    } else {
        Err(r)
    }
}

/// A refused submission's (code, message), after checking it is a 503 with `Retry-After`.
fn unavailable(r: &Reply) -> (String, String) {
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.get("retry-after").is_some(), "503 without Retry-After");
    let v = r.json().expect("error json");
    (v["error"]["code"].as_str().unwrap().to_owned(), v["error"]["message"].as_str().unwrap().to_owned())
}

fn readyz(d: &Daemon) -> (u16, Value) {
    let (status, body) = ops_get(d.ops, "/readyz").expect("readyz answers");
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("readyz body {body:?}")))
}

/// Polls `/readyz` (cached 3 s) until `pred` holds.
async fn wait_readyz(d: &Daemon, within: Duration, pred: impl Fn(u16, &Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, v) = readyz(d);
        if pred(status, &v) {
            return v;
        }
        assert!(start.elapsed() < within, "readyz still {status} {v} after {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Readiness red because the store stopped; returns the store's problem.
async fn wait_store_stopped(d: &Daemon, within: Duration) -> String {
    let v = wait_readyz(d, within, |s, v| s == 503 && store_problem(v).is_some()).await;
    store_problem(&v).unwrap()
}

fn store_problem(v: &Value) -> Option<String> {
    v["problems"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|p| p.starts_with("store:"))
        .map(str::to_owned)
}

/// The running daemon's pid (its command line names this test's config file).
fn pid_of(d: &Daemon) -> u32 {
    let config = d.path().join("config.toml");
    let needle = config.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("serve") && c.contains(needle)
            })
        })
        .expect("daemon pid")
}

/// (state, user + system CPU ticks) of a process.
fn proc_stat(pid: u32) -> (char, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first().and_then(|s| s.chars().next()).unwrap_or('X');
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (state, ticks(11) + ticks(12))
}

/// CPU the daemon uses over `window`, as a fraction of one core (a stopped store must not spin).
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let hz = 100.0; // USER_HZ
    let (_, before) = proc_stat(pid);
    tokio::time::sleep(window).await;
    let (_, after) = proc_stat(pid);
    (after - before) as f64 / hz / window.as_secs_f64()
}

/// SIGTERM, then wait (bounded) for the process to exit; returns its exit code. A daemon that
/// hangs on the way down is a failure, not a stuck test.
fn stop(d: &mut Daemon, within: Duration) -> Option<i32> {
    let pid = pid_of(d);
    d.signal("TERM");
    let start = Instant::now();
    while !matches!(proc_stat(pid).0, 'Z' | 'X') {
        assert!(start.elapsed() < within, "the daemon did not stop within {within:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.terminate()
}

/// Every accepted record has exactly one result, in order, all signed; returns the HC1s.
async fn exactly_once(c: &mut ApiClient, accepted: &[Accepted]) -> Vec<String> {
    let mut hc1s = Vec::new();
    for Accepted { id, refs } in accepted {
        let status = wait_done(c, id, Duration::from_secs(900)).await;
        assert_eq!(status["total"].as_u64(), Some(refs.len() as u64), "batch {id}: {status}");
        let r = c.get(&format!("/v1/batches/{id}/results")).await.expect("results");
        assert_eq!(r.status, 200, "batch {id}: {:?}", r.body);
        let lines: Vec<Value> =
            String::from_utf8_lossy(&r.body).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let got: Vec<&str> = lines.iter().map(|l| l["ref"].as_str().unwrap()).collect();
        let unique: HashSet<&str> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "batch {id}: a record has two results");
        if got != refs.iter().map(String::as_str).collect::<Vec<_>>() {
            let missing: Vec<&String> = refs.iter().filter(|r| !unique.contains(r.as_str())).collect();
            let first_diff = got.iter().zip(refs).position(|(g, r)| g != r);
            panic!(
                "batch {id}: results missing or out of order: {} results for {} records, {} missing \
                 (first {:?}), first difference at {first_diff:?}; status {status}",
                got.len(),
                refs.len(),
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>()
            );
        }
        assert_eq!(status["signed"].as_u64(), Some(refs.len() as u64), "batch {id}: {status}");
        assert_eq!(status["rejected"].as_u64(), Some(0), "batch {id}: {status}");
        for l in &lines {
            assert_eq!(l["status"], "signed", "{l}");
            hc1s.push(l["hc1"].as_str().unwrap().to_owned());
        }
    }
    hc1s
}

async fn verify_against_trust_list(c: &mut ApiClient, hc1s: &[String]) {
    let trust = String::from_utf8(c.get("/v1/trust-list").await.unwrap().body.to_vec()).unwrap();
    let (ok, reports) = verify_all(&trust, hc1s);
    assert!(ok, "{:?}", reports.iter().find(|r| r["ok"] != true));
    assert_eq!(reports.len(), hc1s.len());
}

fn corrupt_records(d: &Daemon) -> f64 {
    let (_, body) = ops_get(d.ops, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("hcert_store_corrupt_records "))
        .and_then(|v| v.parse().ok())
        .expect("hcert_store_corrupt_records")
}

async fn status(c: &mut ApiClient, id: &str) -> Value {
    let r = c.get(&format!("/v1/batches/{id}")).await.expect("status");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json().unwrap()
}

/// Waits until some of the batch is signed (and checks it is not all signed yet).
async fn wait_signing(c: &mut ApiClient, id: &str) {
    let start = Instant::now();
    loop {
        let v = status(c, id).await;
        if v["signed"].as_u64() > Some(0) {
            assert_ne!(v["state"], "done", "signed too fast for the fault to land mid-batch: {v}");
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "signing never started: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records signed so far over `accepted`.
async fn signed_so_far(c: &mut ApiClient, accepted: &[Accepted]) -> u64 {
    let mut n = 0;
    for a in accepted {
        n += status(c, &a.id).await["signed"].as_u64().unwrap();
    }
    n
}

/// A test's body under a deadline: a wedged daemon fails the test instead of hanging it.
async fn deadline(body: impl std::future::Future<Output = ()>) {
    let limit = Duration::from_secs(900);
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("the test did not finish within {limit:?}: is the daemon wedged?");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_new_batches_wait_while_accepted_ones_are_signed() {
    deadline(async {
        let t0 = Instant::now();
        let mut d = Daemon::init_on(TestStore::Sled);
        // Against the default reserve of 256 MiB (no store.min_free_mb in the config).
        let fs = mounted!("below the reserve", Tmpfs::mount(&d.path().join("disk"), "384m"));
        use_state_dir(&d, &fs.path.join("state"), "");
        d.spawn();
        d.wait_ready(Duration::from_secs(60));
        let mut c = d.client("issuer").await;

        let mut accepted = Vec::new();
        for b in 0..3 {
            accepted.push(submit(&mut c, &format!("before{b}-"), 10_000).await.expect("202 with room"));
        }
        // Under the reserve, well above the floor: the accepted work is signed into the room left.
        let filler = fill(&fs.path, 160 * MIB);
        let last = status(&mut c, &accepted[2].id).await;
        assert_ne!(last["state"], "done", "the fill must land while accepted work is being signed");
        println!("filled to {} MiB free; the last batch: {last}", free_bytes(&fs.path) >> 20);

        let refused =
            submit(&mut c, "refused-", 100).await.err().expect("a batch below the reserve is refused");
        let (code, message) = unavailable(&refused);
        assert_eq!(code, "store_full", "{message}");
        assert!(message.contains("reserve") && message.contains("no restart"), "{message}");
        // Readiness: still ready (the node signs and serves what it accepted), saying why batches wait.
        let v = wait_readyz(&d, Duration::from_secs(10), |_, v| v["warnings"].is_array()).await;
        assert_eq!(v["ready"], true, "{v}");
        assert!(v["warnings"][0].as_str().unwrap().contains("reserve"), "{v}");
        // Synchronous signing still works (a few records, nothing stored but their audit entry).
        let sync = c.post("/v1/sign", &json!({"records": records("sync-", 2)})).await.unwrap();
        assert_eq!(sync.status, 200, "{:?}", sync.body);

        let mut hc1s = exactly_once(&mut c, &accepted).await;
        assert!(free_bytes(&fs.path) < 256 * MIB, "still below the reserve after signing");
        assert_eq!(unavailable(&submit(&mut c, "still-refused-", 10).await.err().unwrap()).0, "store_full");

        // Space freed: accepted again, no restart.
        std::fs::remove_file(filler).unwrap();
        let after = vec![submit(&mut c, "after-", 1_000).await.expect("202 once space is freed")];
        wait_readyz(&d, Duration::from_secs(10), |s, v| s == 200 && v.get("warnings").is_none()).await;
        hc1s.extend(exactly_once(&mut c, &after).await);
        verify_against_trust_list(&mut c, &hc1s).await;
        assert_eq!(corrupt_records(&d), 0.0);
        assert_eq!(stop(&mut d, Duration::from_secs(60)), Some(0));
        assert_eq!(d.audited_signatures(), (hc1s.len() + 2) as u64);
        println!("below the reserve: {} records signed exactly once in {:?}", hc1s.len(), t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_signing_at_the_floor_and_it_resumes_without_a_restart() {
    deadline(async {
        let t0 = Instant::now();
        let mut d = Daemon::init_on(TestStore::Sled);
        // The default reserve (256 MiB) and so a floor of 32 MiB.
        let fs = mounted!("under the floor", Tmpfs::mount(&d.path().join("disk"), "384m"));
        // One pipeline worker: signing then runs slower than the batches are submitted, so
        // most of the work is still to sign when the fill lands.
        use_state_dir(&d, &fs.path.join("state"), "\n[pipeline]\nworkers = 1\n");
        d.spawn();
        d.wait_ready(Duration::from_secs(60));
        let mut c = d.client("issuer").await;

        // Enough work that signing is still going on when the fill lands (filling the disk
        // and the readiness wait below take seconds).
        const BATCHES: usize = 4;
        let mut accepted = Vec::new();
        for b in 0..BATCHES {
            accepted.push(submit(&mut c, &format!("big{b}-"), 10_000).await.expect("202"));
        }
        // The fill lands as soon as signing has begun (it begins while the later batches are
        // still being submitted). Waiting until the last batch was signing left only ≈ 6,000
        // records (≈ 0.5 s of signing) of margin, and one run of the whole suite, where this
        // client shares the cores with other daemons, failed at the pause.
        let started = Instant::now();
        while signed_so_far(&mut c, &accepted).await == 0 {
            assert!(started.elapsed() < Duration::from_secs(300), "signing never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Just under the floor: signing pauses before sled could meet ENOSPC.
        let filler = fill(&fs.path, 31 * MIB);
        let v = wait_readyz(&d, Duration::from_secs(10), |s, _| s == 503).await;
        let problem = store_problem(&v).unwrap_or_else(|| panic!("{v}"));
        assert!(
            problem.contains("floor") && problem.contains("paused") && problem.contains("no restart"),
            "{v}"
        );
        let (code, message) = unavailable(&submit(&mut c, "refused-", 10).await.err().expect("refused"));
        assert_eq!(code, "store_full", "{message}");
        // No signature leaves without its audit entry, and that waits too.
        let sync = c.post("/v1/sign", &json!({"records": records("sync-", 2)})).await.unwrap();
        assert_eq!(unavailable(&sync).0, "store_full");
        // Commits that passed the check before the fill end; then the disk fills to the last byte.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let paused_at = signed_so_far(&mut c, &accepted).await;
        fill(&fs.path, 0);
        assert_eq!(free_bytes(&fs.path), 0);
        let cpu = cpu_share(pid_of(&d), Duration::from_secs(4)).await;
        assert!(cpu < 0.5, "the daemon spins while paused: {:.0}% of a core", cpu * 100.0);
        assert_eq!(signed_so_far(&mut c, &accepted).await, paused_at, "nothing is committed under the floor");
        assert!(
            paused_at < 10_000 * BATCHES as u64,
            "the fill must land while accepted work is being signed"
        );
        let (status, v) = readyz(&d);
        assert_eq!(status, 503, "{v}");
        assert!(store_problem(&v).is_some_and(|p| p.contains("paused")), "paused, not stopped: {v}");
        println!(
            "paused with {paused_at} of {} records signed, the disk full; CPU {:.0}%",
            10_000 * BATCHES,
            cpu * 100.0
        );

        // Space freed: signing resumes, no restart.
        // (Both fills appended to the one filler file.)
        std::fs::remove_file(filler).unwrap();
        wait_readyz(&d, Duration::from_secs(20), |s, _| s == 200).await;
        accepted.push(submit(&mut c, "after-", 500).await.expect("202 once space is freed"));
        let hc1s = exactly_once(&mut c, &accepted).await;
        verify_against_trust_list(&mut c, &hc1s).await;
        assert_eq!(corrupt_records(&d), 0.0);
        assert!(!d.log_text().contains("stopped after a storage failure"), "sled never met ENOSPC");
        assert_eq!(stop(&mut d, Duration::from_secs(60)), Some(0));
        assert_eq!(d.audited_signatures(), hc1s.len() as u64);
        println!("under the floor: {} records signed exactly once in {:?}", hc1s.len(), t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "sled 0.34.7 does not survive ENOSPC: after a restart some records of the commits in \
            flight have neither a payload nor a result (never signed) or are counted twice; see \
            src/store/mod.rs, \"A full disk\". The reserve and the floor keep sled away from it."]
async fn enospc_inside_sled_stops_the_store_and_a_restart_loses_nothing() {
    deadline(async {
        let t0 = Instant::now();
        let mut d = Daemon::init_on(TestStore::Sled);
        let fs = mounted!("ENOSPC inside sled", Tmpfs::mount(&d.path().join("disk"), "256m"));
        // The reserve and floor off: sled itself meets ENOSPC.
        use_state_dir(&d, &fs.path.join("state"), "\n[store]\nmin_free_mb = 0\n");
        d.spawn();
        d.wait_ready(Duration::from_secs(60));
        let mut c = d.client("issuer").await;

        let mut accepted = vec![submit(&mut c, "warm-", 500).await.expect("202")];
        wait_done(&mut c, &accepted[0].id, Duration::from_secs(300)).await;
        for b in 0..2 {
            accepted.push(submit(&mut c, &format!("big{b}-"), 10_000).await.expect("202"));
        }
        wait_signing(&mut c, &accepted[2].id).await;
        let filler = fill(&fs.path, 0);
        let start = Instant::now();
        let problem = wait_store_stopped(&d, Duration::from_secs(120)).await;
        println!("store stopped {:?} after the disk filled: {problem}", start.elapsed());
        assert!(problem.contains("full") && problem.contains("restart"), "{problem}");
        let log = d.log_text();
        assert!(log.contains("cannot commit"), "ENOSPC was met by a commit:\n{log}");
        assert!(!log.contains("panicked"), "{log}");

        // Stopped: 503 store_unavailable wherever the store is needed, no busy loop.
        let mut c = d.client("issuer").await;
        let (code, message) = unavailable(&submit(&mut c, "refused-", 10).await.err().expect("refused"));
        assert_eq!(code, "store_unavailable", "{message}");
        assert!(message.contains("full") && message.contains("restart"), "{message}");
        let r = c.get(&format!("/v1/batches/{}", accepted[2].id)).await.unwrap();
        assert_eq!(unavailable(&r).0, "store_unavailable");
        let cpu = cpu_share(pid_of(&d), Duration::from_secs(3)).await;
        assert!(cpu < 0.5, "the daemon spins with its store stopped: {:.0}% of a core", cpu * 100.0);
        // Regression: sled's flush-on-drop used to hang the exit here.
        let code = stop(&mut d, Duration::from_secs(60));
        println!("exit status after SIGTERM with the store stopped: {code:?}");

        // Free space, restart: everything accepted is there, signed exactly once.
        std::fs::remove_file(filler).unwrap();
        d.spawn();
        d.wait_ready(Duration::from_secs(120));
        let mut c = d.client("issuer").await;
        accepted.push(submit(&mut c, "after-", 500).await.expect("202 after the restart"));
        let hc1s = exactly_once(&mut c, &accepted).await;
        verify_against_trust_list(&mut c, &hc1s).await;
        assert_eq!(corrupt_records(&d), 0.0);
        assert_eq!(stop(&mut d, Duration::from_secs(60)), Some(0));
        assert_eq!(d.audited_signatures(), hc1s.len() as u64);
        println!("ENOSPC inside sled: {} records signed exactly once in {:?}", hc1s.len(), t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_turned_read_only_stops_and_a_restart_loses_nothing() {
    deadline(async {
        let t0 = Instant::now();
        let mut d = Daemon::init_on(TestStore::Sled);
        let fs = mounted!("read-only store", Ext4::mount(&d.path().join("disk"), 128));
        // A 128 MiB disk: a reserve to match (floor 4 MiB).
        use_state_dir(&d, &fs.mount.join("state"), "\n[store]\nmin_free_mb = 8\n");
        d.spawn();
        d.wait_ready(Duration::from_secs(60));
        let mut c = d.client("issuer").await;

        // Idle: everything signed, then the disk turns read-only. The first write finds out.
        let mut accepted = vec![submit(&mut c, "idle-", 500).await.expect("202")];
        wait_done(&mut c, &accepted[0].id, Duration::from_secs(300)).await;
        fs.fail_read_only();
        let (code, message) = unavailable(&submit(&mut c, "refused-idle-", 10).await.err().expect("refused"));
        assert_eq!(code, "store_unavailable", "{message}");
        assert!(message.contains("Read-only file system") && message.contains("restart"), "{message}");
        let problem = wait_store_stopped(&d, Duration::from_secs(10)).await;
        assert!(problem.contains("Read-only file system"), "{problem}");
        println!("idle, read-only: {message}");
        let code = stop(&mut d, Duration::from_secs(60));
        println!("exit status after SIGTERM with the store stopped: {code:?}");
        fs.repair();
        d.spawn();
        d.wait_ready(Duration::from_secs(120));

        // Regression: sled's flush never fsynced, so ext4's aborted journal took everything the
        // daemon had written (the store came back empty, this batch 404).
        let mut c = d.client("issuer").await;
        let v = status(&mut c, &accepted[0].id).await;
        assert_eq!((v["state"].as_str(), v["signed"].as_u64()), (Some("done"), Some(500)), "{v}");

        // While signing.
        accepted.push(submit(&mut c, "busy-", 10_000).await.expect("202"));
        wait_signing(&mut c, &accepted[1].id).await;
        fs.fail_read_only();
        let problem = wait_store_stopped(&d, Duration::from_secs(60)).await;
        assert!(problem.contains("Read-only file system"), "{problem}");
        let log = d.log_text();
        assert!(log.contains("cannot commit"), "the read-only disk was met by a commit:\n{log}");
        let mut c = d.client("issuer").await;
        let (code, message) = unavailable(&submit(&mut c, "refused-busy-", 10).await.err().expect("refused"));
        assert_eq!(code, "store_unavailable", "{message}");
        let cpu = cpu_share(pid_of(&d), Duration::from_secs(3)).await;
        assert!(cpu < 0.5, "the daemon spins with its store stopped: {:.0}% of a core", cpu * 100.0);
        stop(&mut d, Duration::from_secs(60));
        fs.repair();
        d.spawn();
        d.wait_ready(Duration::from_secs(120));

        let mut c = d.client("issuer").await;
        let hc1s = exactly_once(&mut c, &accepted).await;
        verify_against_trust_list(&mut c, &hc1s).await;
        assert_eq!(corrupt_records(&d), 0.0);
        assert_eq!(stop(&mut d, Duration::from_secs(60)), Some(0));
        assert_eq!(d.audited_signatures(), hc1s.len() as u64);
        println!("read-only store: {} records signed exactly once in {:?}", hc1s.len(), t0.elapsed());
    })
    .await;
}
