//! The daemon's wall clock, and the one seam through which tests move it.
//!
//! Everything that dates the store's data by the calendar (when a batch was accepted, when
//! retention purges it, when an idempotency tombstone expires, audit entry times) reads
//! [`now_unix`]. In normal builds that is the system clock, nothing else. Only a build with the
//! cargo feature `test-clock` (which the test command enables; it refuses to build in release
//! mode) adds an offset read from the file named by `HCERT_TEST_CLOCK_FILE`, so a test can
//! move a running daemon days ahead without waiting. No configuration key or operator setting
//! reaches it. The renewal scheduler (issue #21) is to read its time here too.

/// Unix seconds now (see the module).
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp().saturating_add(offset_secs())
}

#[cfg(not(feature = "test-clock"))]
fn offset_secs() -> i64 {
    0
}

#[cfg(all(feature = "test-clock", not(debug_assertions)))]
compile_error!("the test-clock feature lets a file move the clock: never build it in release mode");

/// The environment variable naming the offset file (`test-clock` builds only).
#[cfg(feature = "test-clock")]
pub const OFFSET_FILE_ENV: &str = "HCERT_TEST_CLOCK_FILE";

/// The offset in seconds written in the file `HCERT_TEST_CLOCK_FILE` names, read at every call
/// so a test can move the clock of a running daemon; 0 without the variable or the file.
#[cfg(feature = "test-clock")]
fn offset_secs() -> i64 {
    let Some(path) = std::env::var_os(OFFSET_FILE_ENV) else { return 0 };
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_the_system_clock_unless_a_test_moves_it() {
        let system = time::OffsetDateTime::now_utc().unix_timestamp();
        let now = super::now_unix();
        if std::env::var_os("HCERT_TEST_CLOCK_FILE").is_none() {
            assert!((now - system).abs() <= 1, "{now} vs {system}");
        }
    }
}
