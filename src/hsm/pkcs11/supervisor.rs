//! The supervisor thread (a generation's lifecycle, recovery with backoff) and the session workers' loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

pub(super) fn supervisor_main(
    inner: Arc<Inner>,
    events: flume::Receiver<Event>,
    ready: flume::Sender<Result<(), Error>>,
) {
    match inner.open_generation() {
        Ok(g) => {
            inner.set_state(State::Up(g));
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            inner.set_state(State::Failed(e.clone()));
            let _ = ready.send(Err(e));
            return;
        }
    }
    let tick = (inner.op_timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        match events.recv_timeout(tick) {
            Ok(Event::Fault { generation, reason }) => {
                inner.teardown(generation, true);
                if !recover(&inner, &events, &reason) {
                    return;
                }
            }
            Ok(Event::Shutdown(ack)) => {
                shutdown(&inner);
                let _ = ack.send(());
                return;
            }
            Err(flume::RecvTimeoutError::Timeout) => inner.watchdog(),
            Err(flume::RecvTimeoutError::Disconnected) => {
                shutdown(&inner);
                return;
            }
        }
    }
}

fn shutdown(inner: &Arc<Inner>) {
    let old =
        std::mem::replace(&mut *inner.state.write().unwrap_or_else(|p| p.into_inner()), State::Shutdown);
    if let State::Up(g) = old {
        inner.teardown(g, inner.initialised_by_us.load(Ordering::SeqCst));
    }
}

/// Re-initialises with exponential backoff until it works, a PIN error stops it, the attempt
/// limit is reached, or shutdown is asked. Returns false when the supervisor should exit.
fn recover(inner: &Arc<Inner>, events: &flume::Receiver<Event>, reason: &str) -> bool {
    let cfg = &inner.cfg;
    let mut delay = Duration::from_millis(cfg.reinit_backoff_ms);
    let max = Duration::from_millis(cfg.reinit_backoff_max_ms);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if inner.is_shutdown() {
            return false;
        }
        inner.set_state(State::Recovering { reason: reason.to_string(), attempts });
        match inner.open_generation() {
            Ok(g) => {
                inner.counters.reinits.fetch_add(1, Ordering::Relaxed);
                log::info!("HSM session pool re-initialised after {attempts} attempt(s)");
                inner.set_state(State::Up(g));
                return true;
            }
            Err(e) if e.is_pin_error() => {
                inner.counters.reinit_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("HSM re-initialisation stopped: {e}");
                inner.set_state(State::Failed(e));
                return true;
            }
            Err(e) => {
                inner.counters.reinit_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("HSM re-initialisation attempt {attempts} failed: {e}; next attempt in {delay:?}");
                if cfg.reinit_max_attempts.is_some_and(|m| attempts >= m) {
                    inner.set_state(State::Failed(Error::Failed {
                        reason: format!("gave up re-initialising after {attempts} attempts: {e}"),
                    }));
                    return true;
                }
            }
        }
        // Sleep by waiting for events, so a shutdown is not delayed by the backoff.
        match events.recv_timeout(delay) {
            Ok(Event::Shutdown(ack)) => {
                inner.set_state(State::Shutdown);
                let _ = ack.send(());
                return false;
            }
            // A fault from a generation that is already gone: nothing to do.
            Ok(Event::Fault { .. }) | Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => return false,
        }
        delay = (delay * 2).min(max);
    }
}

pub(super) fn worker_main(inner: Arc<Inner>, generation: Arc<Generation>, me: Arc<Worker>) {
    let session = {
        let Some(_gate) = generation.enter() else {
            return;
        };
        me.deadline.store(inner.now_ns() + nanos(inner.op_timeout), Ordering::SeqCst);
        let s = match me.kind {
            Kind::Sign => generation.pkcs11.open_ro_session(generation.slot),
            Kind::Admin => generation.pkcs11.open_rw_session(generation.slot),
        };
        me.deadline.store(0, Ordering::SeqCst);
        match s {
            Ok(s) => s,
            Err(e) => {
                let err = ck_error("C_OpenSession", &e);
                log::error!("cannot open an HSM session: {err}");
                if is_fault(&e) {
                    inner.report_fault(&generation, &format!("C_OpenSession: {}", rv_name(&e)));
                }
                return;
            }
        }
    };
    inner.counters.sessions_open.fetch_add(1, Ordering::Relaxed);
    let queue = match me.kind {
        Kind::Sign => &generation.sign_jobs,
        Kind::Admin => &generation.admin_jobs,
    };
    let ctx = Ctx { inner: &inner, generation: &generation };
    loop {
        if generation.stopping.load(Ordering::SeqCst) || me.abandoned.load(Ordering::SeqCst) {
            break;
        }
        // The timeout only bounds how late a worker notices `stopping` or its abandonment.
        if let Some(job) = queue.pop(Duration::from_millis(50)) {
            let Some(_gate) = generation.enter() else {
                break;
            };
            let budget = inner.op_timeout.saturating_mul(job.calls.max(1));
            me.deadline.store(inner.now_ns().saturating_add(nanos(budget)), Ordering::SeqCst);
            (job.run)(&session, &ctx);
            me.deadline.store(0, Ordering::SeqCst);
        }
    }
    inner.counters.sessions_open.fetch_sub(1, Ordering::Relaxed);
    // Close our session, unless the module was finalised under us (an abandoned worker coming
    // back late): its handle number may by now belong to a session of the next generation.
    match generation.enter() {
        Some(_gate) => {
            let _ = session.close();
        }
        None => std::mem::forget(session),
    }
}

/// PKCS#11 calls a signing job makes: C_SignInit plus two C_Sign per digest (cryptoki asks the
/// length first), plus a key look-up.
pub(super) fn sign_calls(digests: usize) -> u32 {
    u32::try_from(digests.saturating_mul(3).saturating_add(2)).unwrap_or(u32::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
