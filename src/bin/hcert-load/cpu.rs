//! Where the CPU of a throughput run went: the daemon's threads grouped by role, the load
//! tool itself, and what neither used, in microseconds per signed record.
//!
//! The ratio target leaves a budget per record for everything but signing and verification;
//! this breakdown shows which part of the appliance spends it, run by run, without a profiler.
//! Run time comes from `/proc/PID/task/*/schedstat` (nanoseconds on the CPU, per thread).

use std::collections::BTreeMap;
use std::time::Duration;

use hcert_signer::hsm::pkcs11::SIGN_THREAD_NAME;

/// CPU time per thread group of one process, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, u64>);

impl Snapshot {
    /// The run time so far of every live thread of `pid`, summed by thread group. A thread
    /// that ends between two snapshots takes its time with it; the daemon's threads live for
    /// the whole run.
    pub fn take(pid: u32) -> Snapshot {
        let mut groups = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Snapshot(groups) };
        for task in tasks.flatten() {
            let path = task.path();
            let (Ok(comm), Some(ns)) = (std::fs::read_to_string(path.join("comm")), run_ns(&path)) else {
                continue;
            };
            *groups.entry(group(comm.trim()).to_owned()).or_default() += ns;
        }
        Snapshot(groups)
    }

    /// The time spent since `before`, by group.
    pub fn since(&self, before: &Snapshot) -> Snapshot {
        Snapshot(
            self.0
                .iter()
                .map(|(g, ns)| (g.clone(), ns.saturating_sub(before.0.get(g).copied().unwrap_or(0))))
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The calling thread's time on the CPU so far, in nanoseconds (0 if /proc cannot tell).
pub fn this_thread_ns() -> u64 {
    run_ns(std::path::Path::new("/proc/thread-self")).unwrap_or(0)
}

/// A thread's time on the CPU so far: the first field of its `schedstat`, in nanoseconds.
fn run_ns(task: &std::path::Path) -> Option<u64> {
    let stat = std::fs::read_to_string(task.join("schedstat")).ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// A thread's group: its name without a trailing `-N` (`sign-2` → `sign`, `sled-io-6` →
/// `sled-io`), so that pools of workers read as one line.
fn group(comm: &str) -> &str {
    match comm.rsplit_once('-') {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => comm,
    }
}

/// One line: µs per record for the daemon (and its groups, largest first), the load tool and
/// the idle remainder of `cores` × `elapsed`; then all of it but the `hsm-sign` threads (the
/// device's own signing), which is what decides the ratio to the raw `C_Sign` rate.
pub fn report(daemon: &Snapshot, load: &Snapshot, elapsed: Duration, cores: usize, records: u64) -> String {
    let per = |ns: u64| ns as f64 / 1e3 / records.max(1) as f64;
    let mut groups: Vec<_> = daemon.0.iter().filter(|(_, ns)| per(**ns) >= 0.05).collect();
    groups.sort_by(|a, b| b.1.cmp(a.1));
    let parts: Vec<String> = groups.iter().map(|(g, ns)| format!("{g} {:.1}", per(**ns))).collect();
    let available = elapsed.as_nanos() as u64 * cores as u64;
    let idle = available.saturating_sub(daemon.total() + load.total());
    let device = daemon.0.get(SIGN_THREAD_NAME).copied().unwrap_or(0);
    let outside = (daemon.total() - device) + load.total() + idle;
    format!(
        "cpu per signed record: daemon {:.1} µs ({}), load tool {:.1} µs, idle {:.1} µs; \
         all but hsm-sign {:.1} µs",
        per(daemon.total()),
        parts.join(", "),
        per(load.total()),
        per(idle),
        per(outside)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_a_numeric_suffix_only() {
        assert_eq!(group("sign-2"), "sign");
        assert_eq!(group("sled-io-6"), "sled-io");
        assert_eq!(group("hsm-sign"), "hsm-sign");
        assert_eq!(group("api"), "api");
        assert_eq!(group("x-"), "x-");
    }

    #[test]
    fn this_process_has_run_time_and_it_grows() {
        let me = std::process::id();
        let before = Snapshot::take(me);
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(20) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let spent = Snapshot::take(me).since(&before);
        assert!(spent.total() >= 10_000_000, "{spent:?}");
    }

    #[test]
    fn the_report_divides_by_records_and_counts_the_rest_as_idle() {
        let daemon = Snapshot([("hsm-sign".to_owned(), 3_000_000), ("sign".to_owned(), 1_000_000)].into());
        let load = Snapshot([("load".to_owned(), 500_000)].into());
        let line = report(&daemon, &load, Duration::from_millis(3), 2, 1000);
        assert_eq!(
            line,
            "cpu per signed record: daemon 4.0 µs (hsm-sign 3.0, sign 1.0), load tool 0.5 µs, idle 1.5 µs; \
             all but hsm-sign 3.0 µs"
        );
    }
}
