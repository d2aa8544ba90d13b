//! `hcert-signer batch …`: an issuer's client of the batch API — `submit` a file of records
//! (any size: cut into batches, resumable, with progress and a rejection report), and a
//! batch's `status`, `results` and `delete` — using the issuer's profile file.
//!
//! Exit status of `submit`: 0 when every record was signed, [`EXIT_REJECTED`] when the run
//! finished and some records were rejected (see `rejected.csv`), 78 for a bad file or profile,
//! 69 when the appliance cannot be reached, 1 for anything else (a refusal of the appliance).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use http::{Method, StatusCode, header};

use crate::client::{ApiClient, Profile, Reply};
use crate::{Error, Result};

mod input;
mod progress;
mod report;
mod submit;

/// Exit status of a `submit` that finished with some records rejected.
pub const EXIT_REJECTED: u8 = 2;

/// Arguments of `batch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The issuer's profile (`address`, `ca`, `cert`, `key`; dev-init writes `DIR/issuer.toml`).
    #[arg(long, value_name = "FILE", env = "HCERT_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The batch operations.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Sign every record of a file, in batches, with progress; results, rejected.csv, summary.
    ///
    /// FILE.json (`{"records":[…]}` or an array) or FILE.ndjson (one record per line). Rerun the
    /// same command on the same file after an interruption: nothing is signed twice. Exit
    /// status: 0 every record signed, 2 some rejected (see rejected.csv), 78 a bad file or
    /// profile, 69 the appliance unreachable, 1 the appliance refused.
    Submit(submit::Options),
    /// A batch's state and counts.
    Status {
        /// The batch id.
        id: String,
    },
    /// A batch's results so far (NDJSON, one line per record).
    Results {
        /// The batch id.
        id: String,
        /// Write them here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Delete a batch's records and results on the appliance.
    Delete {
        /// The batch id.
        id: String,
    },
}

/// Runs one batch operation.
pub fn run(args: Args) -> Result<ExitCode> {
    let profile = Profile::given(args.profile.as_deref())?;
    if let Action::Submit(options) = args.action {
        return submit::run(profile, options);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut conn = Conn::new(profile);
        let (method, path, out) = match &args.action {
            Action::Status { id } => (Method::GET, batch_path(id, ""), None),
            Action::Results { id, out } => (Method::GET, batch_path(id, "/results"), out.as_ref()),
            Action::Delete { id } => (Method::DELETE, batch_path(id, ""), None),
            Action::Submit(_) => unreachable!("handled above"),
        };
        let reply = conn.send(method, &path, None, None).await?;
        if !reply.status.is_success() {
            return Err(super::keys::refused(&reply));
        }
        match out {
            Some(out) => {
                std::fs::write(out, &reply.body).map_err(Error::file(out))?;
                eprintln!("wrote {}", out.display());
            }
            None if matches!(args.action, Action::Results { .. }) => {
                use std::io::Write as _;
                std::io::stdout().write_all(&reply.body)?;
            }
            None => match reply.json() {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                Err(_) => print!("{}", String::from_utf8_lossy(&reply.body)),
            },
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `/v1/batches/{id}{tail}`, the id escaped.
fn batch_path(id: &str, tail: &str) -> String {
    format!("/v1/batches/{}{tail}", super::keys::percent(id))
}

/// How many times a request is tried when the appliance cannot be reached.
const CONNECT_ATTEMPTS: u32 = 6;

/// The Retry-After of a 429 or 503 (seconds; 5 when absent, capped at a minute).
fn retry_after(reply: &Reply) -> Duration {
    let secs = reply
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .unwrap_or(5)
        .clamp(1, 60);
    Duration::from_secs(secs)
}

/// Hears of each wait on a busy appliance: status, error code, how long.
pub(crate) type OnWait = dyn Fn(u16, &str, Duration) + Sync;

/// A connection to the appliance that reconnects: a request that meets a dropped connection is
/// sent again on a new one, with backoff, a bounded number of times; 429 and 503 are waited
/// out after their Retry-After, for as long as the appliance keeps saying so.
pub(crate) struct Conn {
    profile: Profile,
    client: Option<ApiClient>,
}

impl Conn {
    /// Not connected yet: the first request connects.
    pub(crate) fn new(profile: Profile) -> Conn {
        Conn { profile, client: None }
    }

    /// Sends one request; `on_wait` hears of each wait (status, error code, how long).
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        on_wait: Option<&OnWait>,
    ) -> Result<Reply> {
        let mut failures = 0u32;
        loop {
            let attempt = async {
                if self.client.is_none() {
                    self.client = Some(self.profile.connect().await?);
                }
                let client = self.client.as_mut().expect("connected above");
                client.request(method.clone(), path, body.map(<[u8]>::to_vec)).await
            };
            match attempt.await {
                Ok(reply)
                    if matches!(
                        reply.status,
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) =>
                {
                    failures = 0;
                    if reply.headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes() == b"close") {
                        self.client = None;
                    }
                    let wait = retry_after(&reply);
                    if let Some(f) = on_wait {
                        let code =
                            reply.json().ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
                        f(reply.status.as_u16(), code.as_deref().unwrap_or(""), wait);
                    }
                    tokio::time::sleep(wait).await;
                }
                Ok(reply) => return Ok(reply),
                Err(Error::Io(e)) => {
                    self.client = None;
                    failures += 1;
                    if failures >= CONNECT_ATTEMPTS {
                        return Err(Error::Unavailable(format!(
                            "{} ({failures} attempts): {e}",
                            self.profile.address
                        )));
                    }
                    // 1, 2, 4, 8, 16 s: about half a minute in all, enough for a restart.
                    tokio::time::sleep(Duration::from_secs(1 << (failures - 1))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, retry_after: Option<&str>) -> Reply {
        let mut headers = http::HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(header::RETRY_AFTER, v.parse().unwrap());
        }
        Reply { status: StatusCode::from_u16(status).unwrap(), headers, body: Default::default() }
    }

    #[test]
    fn retry_after_is_taken_in_seconds_within_bounds() {
        assert_eq!(retry_after(&reply(503, Some("10"))), Duration::from_secs(10));
        assert_eq!(retry_after(&reply(503, None)), Duration::from_secs(5));
        assert_eq!(retry_after(&reply(429, Some("0"))), Duration::from_secs(1));
        assert_eq!(retry_after(&reply(429, Some("86400"))), Duration::from_secs(60));
        // An HTTP date is not parsed: the default wait.
        assert_eq!(retry_after(&reply(503, Some("Wed, 21 Oct 2026 07:28:00 GMT"))), Duration::from_secs(5));
    }

    #[test]
    fn batch_ids_are_escaped_into_the_path() {
        assert_eq!(batch_path("abc123", "/results"), "/v1/batches/abc123/results");
        assert_eq!(batch_path("../keys", ""), "/v1/batches/..%2Fkeys");
    }
}
