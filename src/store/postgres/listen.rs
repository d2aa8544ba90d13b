//! LISTEN/NOTIFY across the cluster: a thread that keeps one connection listening on the
//! store's channels and hands each notification to a callback, reconnecting by itself after a
//! restart or failover (so that, e.g., a rotation through one node reaches every node).
//!
//! PostgreSQL keeps no notification for a listener that was not connected when it was sent, so
//! every (re)connection is reported as [`Event::Listening`]: the receiver then re-reads what
//! it caches instead of trusting that it missed nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator as _;

use super::{PgError, PgSettings};

/// How long the thread waits for a notification before it looks at its stop flag.
const POLL: Duration = Duration::from_millis(250);
/// A quiet connection is checked this often (a vanished peer sends no error of its own).
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The longest wait between two connection attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the listener reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected and listening (at start and after every reconnection): notifications sent
    /// while it was not may be lost, so re-read whatever they would have announced.
    Listening,
    /// A `NOTIFY` on one of the channels.
    Notified {
        /// The channel.
        channel: String,
        /// The payload (at most 8,000 bytes, PostgreSQL's limit).
        payload: String,
    },
}

/// A listening thread; dropping it stops the thread and waits for it (at most a quarter of a
/// second, or a connect timeout while it is connecting).
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Starts listening on `channels` (plain lower-case identifiers: letters, digits, `_`),
    /// calling `on_event` from the listener's own thread, in order. Never fails for an absent
    /// database: it keeps trying, logging once per outage.
    pub fn start(
        settings: PgSettings,
        channels: &[&str],
        on_event: impl FnMut(Event) + Send + 'static,
    ) -> Result<Listener, PgError> {
        for c in channels {
            let ok = c.len() <= 63
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
            if !ok {
                return Err(PgError::Config(format!(
                    "LISTEN channel {c:?}: use lower-case letters, digits and _ (at most 63)"
                )));
            }
        }
        let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn({
                let stop = stop.clone();
                move || run(&settings, &listen, &stop, on_event)
            })
            .map_err(|e| PgError::Config(format!("cannot start the listener thread: {e}")))?;
        Ok(Listener { stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends a notification on `channel` (delivered when the transaction `client` is in commits,
/// or at once outside one).
pub fn notify(
    client: &mut impl postgres::GenericClient,
    channel: &str,
    payload: &str,
) -> Result<(), postgres::Error> {
    client.execute("SELECT pg_notify($1, $2)", &[&channel, &payload]).map(drop)
}

fn run(settings: &PgSettings, listen: &str, stop: &AtomicBool, mut on_event: impl FnMut(Event)) {
    let mut backoff = Duration::from_millis(100);
    let mut outage_logged = false;
    while !stop.load(Ordering::Relaxed) {
        let connected = settings.connect().and_then(|mut client| {
            client.batch_execute(listen).map_err(|e| PgError::from_client(&settings.describe(), &e))?;
            Ok(client)
        });
        let mut client = match connected {
            Ok(c) => c,
            Err(e) => {
                if !outage_logged {
                    log::warn!("store: not listening for cluster notifications, retrying: {e}");
                    outage_logged = true;
                }
                sleep_unless_stopped(backoff, stop);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if outage_logged {
            log::info!("store: listening for cluster notifications again");
        }
        backoff = Duration::from_millis(100);
        on_event(Event::Listening);
        let mut checked = Instant::now();
        let lost = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let next = client.notifications().timeout_iter(POLL).next();
            match next {
                Ok(Some(n)) => {
                    on_event(Event::Notified {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    });
                    checked = Instant::now();
                }
                Ok(None) if checked.elapsed() >= CHECK_EVERY => {
                    if let Err(e) = client.is_valid(super::connect::CONNECT_TIMEOUT) {
                        break PgError::from_client(&settings.describe(), &e);
                    }
                    checked = Instant::now();
                }
                Ok(None) => {}
                Err(e) => break PgError::from_client(&settings.describe(), &e),
            }
        };
        log::warn!("store: the notification connection was lost, reconnecting: {lost}");
        outage_logged = true;
    }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(POLL));
    }
}
