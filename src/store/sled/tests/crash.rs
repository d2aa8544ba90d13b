//! `kill -9` of a child process mid-work keeps every accepted record; the memory and time
//! measurements (ignored tests, run by hand).

use super::*;

const CHILD_ENV: &str = "HCERT_STORE_CRASH_DIR";

/// A tiny PRNG seeded from the system's: the test needs varied timing, not cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        aws_lc_rs::rand::fill(&mut seed).unwrap();
        Self(u64::from_le_bytes(seed) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The child side of the crash test: submits, signs and deletes until killed (or 60 s pass).
/// Prints `SUBMITTED <id> <total>` only after `submit` returned, `DELETING`/`DELETED` around a
/// delete.
#[test]
#[ignore = "child process of crash_kill9_keeps_every_accepted_record"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let store = open(Path::new(&dir));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = {
        let out = out.clone();
        move |line: String| {
            let mut out = out.lock().unwrap();
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let worker = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new();
            while Instant::now() < deadline {
                let items = store.claim(1 + rng.below(128) as usize).unwrap();
                if items.is_empty() {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let results: Vec<_> = items.iter().map(|i| (i.key, result_for(i))).collect();
                match rng.below(10) {
                    0 => store.release(&items.iter().map(|i| i.key).collect::<Vec<_>>()),
                    1 => {
                        // A duplicate commit, as after a retry.
                        store.commit(results.clone()).unwrap();
                        store.commit(results).unwrap();
                    }
                    _ => {
                        store.commit(results).unwrap();
                    }
                }
            }
        })
    };
    let mut rng = Rng::new();
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let size = 1 + rng.below(400) as usize;
        let key = (rng.below(3) == 0).then(|| format!("k{}", rng.below(1_000_000)));
        let refs = refs(&format!("c{n}"), size);
        let s = store.submit("crash", key.as_deref(), &records(&refs), 1).unwrap();
        say(format!("SUBMITTED {} {}", s.batch_id, s.total));
        mine.push(s.batch_id);
        if rng.below(5) == 0 && mine.len() > 2 {
            let victim = mine.remove(rng.below(mine.len() as u64) as usize);
            say(format!("DELETING {victim}"));
            store.delete("crash", &victim).unwrap();
            say(format!("DELETED {victim}"));
        }
        std::thread::sleep(Duration::from_millis(rng.below(20)));
    }
    worker.join().unwrap();
}

#[test]
fn crash_kill9_keeps_every_accepted_record() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new();
    let mut submitted: BTreeMap<String, u32> = BTreeMap::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut deleting: HashSet<String> = HashSet::new();
    let cycles = 6;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "store::sled::tests::crash::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                // Only whole lines count: a line cut by the kill is no promise.
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.ends_with('\n') {
                    lines.lock().unwrap().push(line.trim_end().to_owned());
                    line.clear();
                }
            })
        };
        let started = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.starts_with("SUBMITTED")) {
            assert!(started.elapsed() < Duration::from_secs(30), "the child never submitted");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(700)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        for line in lines.iter() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["SUBMITTED", id, total] => {
                    submitted.insert((*id).to_owned(), total.parse().unwrap());
                }
                ["DELETING", id] => {
                    deleting.insert((*id).to_owned());
                }
                ["DELETED", id] => {
                    deleted.insert((*id).to_owned());
                }
                _ => {}
            }
        }
        let store = open(dir.path());
        let summary = check_invariants(&store);
        for (id, total) in &submitted {
            if deleted.contains(id) {
                assert!(!summary.contains_key(id), "a deleted batch came back");
            } else if !deleting.contains(id) {
                let (t, _, _) =
                    summary.get(id).unwrap_or_else(|| panic!("accepted batch lost (cycle {cycle})"));
                assert_eq!(t, total);
            }
        }
        let resolved: u32 = summary.values().map(|(_, s, r)| s + r).sum();
        println!(
            "cycle {cycle}: {} batches accepted so far, {} live, {} queued, {resolved} resolved, {} deleted",
            submitted.len(),
            summary.len(),
            store.queued_records(),
            deleted.len()
        );
    }
    // Finally everything left is signed exactly once.
    let store = open(dir.path());
    sign_all(&store, 256);
    let summary = check_invariants(&store);
    for (id, (total, signed, rejected)) in &summary {
        assert_eq!(signed + rejected, *total, "batch {id} fully resolved");
    }
    assert!(submitted.len() >= cycles, "the child made progress each cycle");
}

// --- measurements ----------------------------------------------------------------------------

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Figures for the report: `HCERT_MEASURE_DIR=/var/tmp cargo test --release --lib
/// store::sled::tests::measure -- --ignored --nocapture`. Fills a store with 200,000 queued records,
/// then reopens it in a fresh child process (so the memory figures are the daemon's, not the
/// filler's) to claim, commit and stream. `HCERT_MEASURE_CACHE_MB` sets sled's cache (default
/// 64). No assertions on timings.
#[test]
#[ignore = "measurement, run by hand in release mode"]
fn measure() {
    let cache_mb: u64 =
        std::env::var("HCERT_MEASURE_CACHE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let opts = StoreOptions { cache_capacity: cache_mb << 20, min_free_bytes: 0, ..options() };
    if let Some(dir) = std::env::var_os("HCERT_MEASURE_REOPEN") {
        measure_reopened(Path::new(&dir), opts);
        return;
    }
    let base = std::env::var_os("HCERT_MEASURE_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let dcc = vec![b'x'; 380];
    {
        let store = SledStore::open(dir.path(), opts).unwrap();
        let refs = refs("person", 10_000);
        let recs: Vec<NewRecord<'_>> = refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: &dcc }).collect();
        let mut times = Vec::new();
        for n in 0..20 {
            let t = Instant::now();
            store.submit("i", None, &recs, n).unwrap();
            times.push(t.elapsed());
            if n % 5 == 4 {
                println!("  {} queued: VmRSS {} MiB", store.queued_records(), rss_kib("VmRSS") / 1024);
            }
        }
        times.sort();
        println!(
            "submit 10,000 records of ~400 bytes incl. flush: median {:?}, max {:?}",
            times[10], times[19]
        );
        println!(
            "filler process after 200,000 queued: VmHWM {} MiB, on disk {} MiB",
            rss_kib("VmHWM") / 1024,
            store.inner.db.size_on_disk().unwrap_or(0) >> 20
        );
    }
    let st = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::sled::tests::crash::measure",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HCERT_MEASURE_REOPEN", dir.path())
        .status()
        .unwrap();
    assert!(st.success());
}

fn measure_reopened(dir: &Path, opts: StoreOptions) {
    let before = rss_kib("VmRSS");
    let t = Instant::now();
    let store = SledStore::open(dir, opts.clone()).unwrap();
    println!(
        "fresh process, cache {} MiB: open with {} queued took {:?}; VmRSS {} -> {} MiB",
        opts.cache_capacity >> 20,
        store.queued_records(),
        t.elapsed(),
        before / 1024,
        rss_kib("VmRSS") / 1024
    );
    let t = Instant::now();
    let mut chunks = Vec::new();
    for _ in 0..200 {
        chunks.push(store.claim(256).unwrap());
    }
    let claimed: usize = chunks.iter().map(Vec::len).sum();
    let claim = t.elapsed();
    println!(
        "claim: {claimed} records in 256-record claims: {claim:?} ({:.1} µs/record)",
        claim.as_secs_f64() * 1e6 / claimed as f64
    );
    let mut commit_times = Vec::new();
    for items in &chunks {
        let results: Vec<_> = items
            .iter()
            .map(|i| {
                (
                    i.key,
                    RecordResult::Signed {
                        r#ref: i.r#ref.clone(),
                        hc1: format!("HC1:{}", "6BF".repeat(150)),
                        uvci: "URN:UVCI:01:VN:ABCDEFGHIJ#K".into(),
                        kid: "3lTmAZX19GQ=".into(),
                        iat: 1,
                        exp: 2,
                    },
                )
            })
            .collect();
        let t = Instant::now();
        store.commit(results).unwrap();
        commit_times.push(t.elapsed());
    }
    commit_times.sort();
    println!(
        "commit 256 results incl. flush: median {:?}, p90 {:?}, max {:?}",
        commit_times[commit_times.len() / 2],
        commit_times[commit_times.len() * 9 / 10],
        commit_times[commit_times.len() - 1]
    );
    let batch = store.inner.batches.first().unwrap().unwrap();
    let meta = BatchMeta::decode(&batch.1).unwrap();
    let id = layout::batch_id_text(&meta.id);
    let t = Instant::now();
    let lines = store.results("i", &id).unwrap().unwrap().count();
    println!("stream {lines} results: {:?}", t.elapsed());
    let t = Instant::now();
    assert!(store.delete("i", &id).unwrap());
    println!("delete a 10,000-record batch: {:?}", t.elapsed());
    let t = Instant::now();
    let oldest = store.oldest_pending_age(100).unwrap();
    println!("oldest_pending_age ({oldest:?}): {:?}", t.elapsed());
    // Drain the rest, as a daemon would, watching the peak.
    let t = Instant::now();
    let mut n = 0;
    loop {
        let items = store.claim(256).unwrap();
        if items.is_empty() {
            break;
        }
        n += items.len();
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    }
    println!("claim+commit of the remaining {n} records: {:?}", t.elapsed());
    println!(
        "fresh process end: VmRSS {} MiB, VmHWM {} MiB",
        rss_kib("VmRSS") / 1024,
        rss_kib("VmHWM") / 1024
    );
}
