//! `hcert-signer verify`: the offline verifier, stdin lines in, one JSON report out per line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::hcert::TrustList;
use crate::hcert::valuesets::ValueSets;
use crate::hcert::verify::Verifier;
use crate::{Error, Result};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trust list JSON: {"<kid base64>": "<DSC DER base64>", …}.
    #[arg(long, value_name = "FILE")]
    pub trust_list: PathBuf,
    /// Verify as at this time (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_clock)]
    pub clock: Option<i64>,
    /// Check the DCC against the JSON schema only, not the EU value sets.
    #[arg(long)]
    pub no_value_sets: bool,
}

fn parse_clock(s: &str) -> std::result::Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("not an RFC 3339 date-time ({e}), e.g. 2026-11-22T12:00:00Z"))
}

/// Verifies every line of stdin; exits 0 only if every line verified.
pub fn run(args: Args) -> Result<ExitCode> {
    let json = std::fs::read_to_string(&args.trust_list).map_err(Error::file(&args.trust_list))?;
    let trust = TrustList::from_json(&json)?;
    let value_sets = ValueSets::embedded();
    let verifier = Verifier::new(&trust, (!args.no_value_sets).then_some(value_sets));
    let clock = args.clock.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());

    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut all_ok = true;
    let mut any = false;
    for line in stdin.lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        any = true;
        let report = verifier.verify(line, clock).report();
        all_ok &= report.ok;
        serde_json::to_writer(&mut out, &report).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(if all_ok && any { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
