//! `hcert-signer batch submit FILE`: the file cut into batches, a bounded number in flight
//! (submit, wait until signed, fetch the results), the results written in file order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use super::input::{Chunk, Entry, Input};
use super::progress::{BatchBar, Progress};
use super::report::{Report, ResultLine};
use super::{Conn, EXIT_REJECTED, batch_path};
use crate::client::Profile;
use crate::{Error, Result};

/// Options of `batch submit`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The records: FILE.json (`{"records":[…]}` or an array) or FILE.ndjson (one per line).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write every result, one line per record in file order (default:
    /// `<FILE stem>.results.ndjson` beside FILE). `rejected.csv` is written beside it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write one QR code (PNG) per signed record here, named by its ref.
    #[arg(long, value_name = "DIR")]
    pub qr_dir: Option<PathBuf>,
    /// Records per batch at most: the appliance's `[limits] max_batch_records`.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_records: u32,
    /// Batches submitted and not yet finished at most.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub in_flight: u32,
    /// No progress output (the summary is still printed).
    #[arg(long, short)]
    pub quiet: bool,
}

/// How often a batch's status is asked while it is signed.
const POLL: Duration = Duration::from_millis(500);

/// Signs the whole file; the exit code says whether anything was rejected.
pub fn run(profile: Profile, options: Options) -> Result<ExitCode> {
    let mut input = Input::open(&options.file, options.batch_records as usize, super::input::BODY_BUDGET)?;
    let out = options.out.clone().unwrap_or_else(|| default_out(&options.file));
    let report = Report::create(&out, options.qr_dir.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let progress = Progress::new(input.total as u64, options.quiet);
        let plain = progress.spawn_plain();
        let result = submit_all(&profile, &mut input, report, &progress, options.in_flight as usize).await;
        if let Some(t) = plain {
            t.abort();
        }
        progress.finish();
        let (report, batches) = result?;
        let (signed, rejected, by_code) = (report.signed, report.rejected(), report.by_code.clone());
        let (results, csv) = report.finish()?;
        // Counts and codes only: the summary never shows a record's content.
        eprintln!(
            "batch: {} records in {batches} batch{}: {signed} signed, {rejected} rejected ({:.0} records/s)",
            signed + rejected,
            if batches == 1 { "" } else { "es" },
            progress.rate()
        );
        for (code, n) in &by_code {
            eprintln!("  {n:>8}  {code}");
        }
        eprintln!("  results  {}", results.display());
        eprintln!("  rejected {}", csv.display());
        Ok(if rejected == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_REJECTED) })
    })
}

/// `<FILE stem>.results.ndjson` beside FILE.
fn default_out(file: &Path) -> PathBuf {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "batch".into());
    file.with_file_name(format!("{stem}.results.ndjson"))
}

type Running = tokio::task::JoinHandle<Result<Vec<ResultLine>>>;

/// Keeps `in_flight` batches going and writes each one's results as soon as those before it are
/// written; returns the report and the number of batches.
async fn submit_all(
    profile: &Profile,
    input: &mut Input,
    mut report: Report,
    progress: &Progress,
    in_flight: usize,
) -> Result<(Report, usize)> {
    let mut pending: VecDeque<(Chunk, Option<Running>)> = VecDeque::new();
    let mut batches = 0;
    let profile = Arc::new(profile.clone());
    loop {
        while pending.iter().filter(|(_, r)| r.is_some()).count() < in_flight {
            let Some(chunk) = input.next_chunk()? else { break };
            let running = (chunk.records() > 0).then(|| {
                batches += 1;
                let key = input.idempotency_key(chunk.index);
                let body = chunk.body(&key);
                let bar = progress.batch(chunk.index, chunk.records() as u64);
                let profile = profile.clone();
                let records = chunk.records();
                tokio::spawn(
                    async move { one_batch(Conn::new((*profile).clone()), body, records, bar).await },
                )
            });
            pending.push_back((chunk, running));
        }
        let Some((chunk, running)) = pending.pop_front() else { break };
        let mut results = match running {
            Some(task) => task.await.map_err(|e| Error::Io(std::io::Error::other(e)))??.into_iter(),
            None => Vec::new().into_iter(),
        };
        for entry in &chunk.entries {
            match entry {
                Entry::Local(rejection) => {
                    report.write(&ResultLine::local(rejection))?;
                    progress.add(1);
                }
                Entry::Send { r#ref, .. } => {
                    let result = results.next().filter(|r| &r.r#ref == r#ref).ok_or_else(|| {
                        Error::Io(std::io::Error::other(format!(
                            "batch {}: the appliance's results do not match the records sent",
                            chunk.index + 1
                        )))
                    })?;
                    report.write(&result)?;
                }
            }
        }
    }
    Ok((report, batches))
}

/// Submits one batch (or finds it again by its key), waits until it is signed and returns its
/// results in record order.
async fn one_batch(
    mut conn: Conn,
    body: Vec<u8>,
    records: usize,
    mut bar: BatchBar,
) -> Result<Vec<ResultLine>> {
    let note = {
        let progress = bar.progress().clone();
        move |status: u16, code: &str, wait: Duration| {
            progress.note(&format!(
                "batch: the appliance answered {status} {code}; retrying in {} s",
                wait.as_secs()
            ));
        }
    };
    let reply = conn.send(Method::POST, "/v1/batches", Some(&body), Some(&note)).await?;
    drop(body);
    if reply.status == StatusCode::CONFLICT {
        // The keys follow the file and the chunk's position: only another cut reuses one.
        let mut e = super::super::keys::refused(&reply);
        if let Error::Refused { message, .. } = &mut e {
            message.push_str(
                " (this file was submitted before with another --batch-records: rerun with the same value \
                 to resume it; nothing was signed twice)",
            );
        }
        return Err(e);
    }
    if reply.status != StatusCode::ACCEPTED {
        return Err(super::super::keys::refused(&reply));
    }
    let accepted = reply.json()?;
    let id = accepted["batch_id"]
        .as_str()
        .ok_or_else(|| Error::Io(std::io::Error::other("the appliance's answer names no batch")))?
        .to_owned();
    let replayed = accepted["replayed"] == true;
    bar.set(0, &format!("{id} {}", if replayed { "resumed" } else { "accepted" }));
    loop {
        let reply = conn.send(Method::GET, &batch_path(&id, ""), None, Some(&note)).await?;
        if !reply.status.is_success() {
            return Err(super::super::keys::refused(&reply));
        }
        let v = reply.json()?;
        let done = v["signed"].as_u64().unwrap_or(0) + v["rejected"].as_u64().unwrap_or(0);
        let state = v["state"].as_str().unwrap_or("");
        bar.set(
            done.min(records as u64),
            &format!("{id} {state}{}", if replayed { " (resumed)" } else { "" }),
        );
        if state == "done" {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let reply = conn.send(Method::GET, &batch_path(&id, "/results"), None, Some(&note)).await?;
    if !reply.status.is_success() {
        return Err(super::super::keys::refused(&reply));
    }
    let text = std::str::from_utf8(&reply.body)
        .map_err(|_| Error::Io(std::io::Error::other("the appliance's results are not UTF-8")))?;
    let results =
        text.lines().filter(|l| !l.trim().is_empty()).map(ResultLine::parse).collect::<Result<Vec<_>>>()?;
    if results.len() != records {
        return Err(Error::Io(std::io::Error::other(format!(
            "batch {id}: {} results for {records} records",
            results.len()
        ))));
    }
    bar.set(records as u64, "done");
    Ok(results)
}
