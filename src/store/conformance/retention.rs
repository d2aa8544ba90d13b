//! Retention: batches accepted more than the retention period ago are purged, signed or not
//! (the unsigned records counted), and an idempotency key outlives its batch as a tombstone for
//! one more period, then is free again.

use super::Fixture;
use super::kit::{records, refs, sign_all, submit};
use crate::store::StoreError;

const DAY: i64 = 86_400;

/// `purge_expired` takes exactly the batches accepted `ttl` or longer ago (`created_at <= now -
/// ttl`), done or not, counts their unsigned records, leaves the younger ones, and a second
/// run finds nothing.
pub fn expired_batches_are_purged_and_unsigned_records_counted(f: &dyn Fixture) {
    let store = f.open();
    let old_done = submit(&store, "i", Some("old"), 20, 0);
    sign_all(&store, 64);
    let old_unsigned = submit(&store, "i", None, 7, 10);
    let partly = submit(&store, "j", None, 5, 10);
    let items = store.claim(100).unwrap();
    let (unsigned, part): (Vec<_>, Vec<_>) =
        items.into_iter().partition(|i| i.batch_id == old_unsigned.batch_id);
    store.release(&unsigned.iter().map(|i| i.key).collect::<Vec<_>>());
    store.commit(super::kit::outcomes(&part[..2])).unwrap();
    store.release(&part[2..].iter().map(|i| i.key).collect::<Vec<_>>());
    // Accepted in time order, as the daemon's clock gives them.
    let edge = submit(&store, "i", None, 1, 11);
    let young = submit(&store, "i", None, 4, 6 * DAY);
    assert_eq!(store.oldest_pending_age(7 * DAY).unwrap(), Some(7 * DAY - 10));

    let purged = store.purge_expired(7 * DAY + 10, 7 * DAY).unwrap();
    assert_eq!(purged, 3, "the three batches accepted 7 days ago or earlier");
    assert_eq!(store.expired_unsigned_records(), 7 + 3);
    for (issuer, gone) in [("i", &old_done), ("i", &old_unsigned), ("j", &partly)] {
        assert!(store.batch(issuer, &gone.batch_id).unwrap().is_none());
        assert!(store.results(issuer, &gone.batch_id).unwrap().is_none());
    }
    assert!(store.batch("i", &young.batch_id).unwrap().is_some());
    assert!(store.batch("i", &edge.batch_id).unwrap().is_some(), "a second younger is kept");
    assert_eq!(store.queued_records(), 5);
    assert_eq!(store.oldest_pending_age(7 * DAY).unwrap(), Some(7 * DAY - 11));
    assert_eq!(store.purge_expired(7 * DAY + 10, 7 * DAY).unwrap(), 0, "nothing more");
    let rest = store.claim(100).unwrap();
    assert!(rest.iter().all(|i| i.batch_id == young.batch_id || i.batch_id == edge.batch_id));
    assert_eq!(rest.len(), 5);
    store.commit(super::kit::outcomes(&rest)).unwrap();
    f.check(&store);
}

/// A purged batch's key is refused (`BatchDeleted`) for a retention period after the purge —
/// across a restart — and then free: the tombstone expires with the first purge at least a
/// retention period after it (`deleted_at <= now - ttl`).
pub fn tombstones_expire_after_a_retention_period(f: &dyn Fixture) {
    let mut store = f.open();
    let old = submit(&store, "i", Some("old"), 20, 0);
    sign_all(&store, 64);
    let young = submit(&store, "i", None, 4, 6 * DAY);
    assert_eq!(store.purge_expired(7 * DAY + 10, 7 * DAY).unwrap(), 1);
    let refs20 = refs("i", 20);
    let retry = store.submit("i", Some("old"), &records(&refs20), 8 * DAY);
    assert!(
        matches!(&retry, Err(StoreError::BatchDeleted { batch_id }) if *batch_id == old.batch_id),
        "{retry:?}"
    );
    store = f.reopen(store);
    assert_eq!(store.purge_expired(14 * DAY + 9, 7 * DAY).unwrap(), 1, "the young batch's turn");
    assert!(store.batch("i", &young.batch_id).unwrap().is_none());
    let retry = store.submit("i", Some("old"), &records(&refs20), 14 * DAY + 9);
    assert!(matches!(retry, Err(StoreError::BatchDeleted { .. })), "a second short of expiry: {retry:?}");
    assert_eq!(store.purge_expired(14 * DAY + 10, 7 * DAY).unwrap(), 0, "tombstones are not batches");
    let fresh = submit(&store, "i", Some("old"), 1, 15 * DAY);
    assert!(fresh.created && fresh.batch_id != old.batch_id, "an expired tombstone frees its key");
    assert_eq!(store.queued_records(), 1);
    f.check(&store);
}
