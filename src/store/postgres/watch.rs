//! What other appliances of the cluster change, heard with LISTEN/NOTIFY on a connection of
//! its own: key records and CSCAs (`hcert_keys`, so a rotation through any node takes effect on
//! every node within seconds) and new batches (`hcert_work`, so an idle node starts signing at
//! once instead of at its next poll).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;

use super::PgSettings;
use crate::store::{Change, OnChange};

/// How long a wait for notifications lasts before the stop flag is looked at again.
const POLL: Duration = Duration::from_secs(1);

/// Starts the listener thread; it ends soon after `stop` is set.
pub(super) fn start(settings: PgSettings, on_change: OnChange, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("store-watch".into())
        .spawn(move || run(&settings, &on_change, &stop));
    if let Err(e) = spawned {
        // Not fatal: the keys are then read again only at a restart, work found by polling.
        log::error!("store: cannot listen for the cluster's changes ({e})");
    }
}

fn run(settings: &PgSettings, on_change: &OnChange, stop: &AtomicBool) {
    let mut pause = Duration::from_millis(250);
    let mut was_down = false;
    while !stop.load(Ordering::SeqCst) {
        let mut client = match settings.connect().and_then(|mut c| {
            c.batch_execute("LISTEN hcert_keys; LISTEN hcert_work")
                .map_err(|e| super::PgError::from_client(&settings.describe(), &e))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                if !was_down {
                    log::warn!("store: not listening for the cluster's changes ({e}); retrying");
                    was_down = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if was_down {
            log::info!("store: listening for the cluster's changes again");
        }
        was_down = false;
        pause = Duration::from_millis(250);
        // Whatever changed while nobody listened.
        on_change(Change::Keys);
        on_change(Change::Work);
        while !stop.load(Ordering::SeqCst) {
            let mut failed = false;
            let mut heard = client.notifications();
            let mut batch = heard.timeout_iter(POLL);
            loop {
                match batch.next() {
                    Ok(Some(n)) => match n.channel() {
                        "hcert_keys" => on_change(Change::Keys),
                        "hcert_work" => on_change(Change::Work),
                        _ => {}
                    },
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("store: the listening connection failed ({e}); reconnecting");
                        failed = true;
                        break;
                    }
                }
            }
            drop(batch);
            drop(heard);
            if failed || client.is_closed() {
                break;
            }
        }
    }
}
