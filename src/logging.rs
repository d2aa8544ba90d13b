//! Logging: to the journal with structured fields under systemd (the record's key-values become
//! journal fields such as `BATCH_ID=`, `KID=`, `LABEL=`, `OFFICER=`, beside `TARGET=` and
//! `CODE_*=`), readable lines on stderr otherwise. What is logged is the appliance's business only: never a PIN, a key, a name or a
//! birth date (the codec's errors name fields, not values, for exactly this reason).

use std::io::Write;

/// Stderr lines: `LEVEL target: message key=value…`.
struct Stderr;

/// Appends structured fields as ` key=value`.
struct Fields<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut fields = String::new();
            let _ = record.key_values().visit(&mut Fields(&mut fields));
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{:<5} {}: {}{fields}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger once: the journal when stderr is connected to it (`JOURNAL_STREAM`),
/// stderr otherwise.
pub fn init(level: &str) {
    let filter = level.parse::<log::LevelFilter>().unwrap_or(log::LevelFilter::Info);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some()
        && systemd_journal_logger::connected_to_journal()
        && systemd_journal_logger::JournalLog::new()
            .map(|j| j.with_syslog_identifier("hcert-signer".into()).install().is_ok())
            .unwrap_or(false);
    if !journal {
        let _ = log::set_boxed_logger(Box::new(Stderr));
    }
    log::set_max_level(filter);
}
