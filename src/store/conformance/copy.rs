//! Moving a store ([`crate::store::copy`]): an export imported into an empty store of any
//! backend, and that one's export into a third, keeps everything a daemon relies on — batches
//! and their results byte for byte, the queue, idempotency replays, conflicts and tombstones,
//! key records, CSCAs, the KEK pin, and the audit chain with its checkpoints — and an import
//! into a store that holds anything, or of a broken stream, is refused and writes nothing.

use super::Fixture;
use super::audit::{checkpoint, verify};
use super::kit::{outcomes, parsed_results, records, refs, sign_all, submit};
use crate::audit::{Event, KeyAction};
use crate::store::copy::Item;
use crate::store::{BatchState, BatchStatus, Store, StoreError};

fn key_event(label: &str) -> Event {
    Event::Key {
        action: KeyAction::Approved,
        label: label.into(),
        officer: "officer1".into(),
        kid: None,
        detail: String::new(),
    }
}

/// The batches the source holds, by what the issuers know of them.
struct Fill {
    done: String,
    keyed: String,
    deleted: String,
    partial: String,
    queued: String,
}

/// A store as an appliance leaves it: every kind of state at once.
fn fill(store: &Store) -> Fill {
    store.pin_kek("suite-kek").unwrap();
    store.put_key_record("dsc-1", br#"{"state":"active"}"#, Some(None), vec![key_event("dsc-1")]).unwrap();
    store.put_key_record("dsc-2", br#"{"state":"pending","approvals":["officer1"]}"#, None, vec![]).unwrap();
    store.put_csca_records(&[("aa".into(), b"csca-der".to_vec())], vec![key_event("csca")]).unwrap();
    store.update_csca("bb", Some(b"pending-record"), None, vec![key_event("csca-bb")]).unwrap();
    let done = submit(store, "issuer-a", None, 40, 100).batch_id;
    sign_all(store, 7);
    checkpoint(store);
    let keyed = submit(store, "issuer-a", Some("retry-me"), 20, 200).batch_id;
    let deleted = submit(store, "issuer-b", Some("gone"), 5, 300).batch_id;
    assert!(store.delete("issuer-b", &deleted).unwrap());
    let partial = submit(store, "issuer-b", None, 35, 400).batch_id;
    // Part of the keyed and the partial batch signed: blocks with pending and results both.
    let items = store.claim(30).unwrap();
    store.commit(outcomes(&items)).unwrap();
    let queued = submit(store, "issuer-c", None, 17, 500).batch_id;
    checkpoint(store);
    store.audit_append(vec![key_event("after-the-checkpoint")]).unwrap();
    Fill { done, keyed, deleted, partial, queued }
}

/// What a daemon can see of a store, to compare two.
#[derive(Debug, PartialEq)]
struct Seen {
    kek: Option<String>,
    keys: Vec<(String, Vec<u8>)>,
    cscas: Vec<(String, Vec<u8>)>,
    pending_cscas: Vec<(String, Vec<u8>)>,
    audit: Vec<(u64, Vec<u8>)>,
    head: (u64, crate::audit::Hash),
    checkpoints: Vec<(u64, Vec<u8>)>,
    batches: Vec<Option<BatchStatus>>,
    results: Vec<Option<Vec<Vec<u8>>>>,
    queued: u64,
}

fn seen(store: &Store, fill: &Fill) -> Seen {
    let ids = [
        ("issuer-a", &fill.done),
        ("issuer-a", &fill.keyed),
        ("issuer-b", &fill.deleted),
        ("issuer-b", &fill.partial),
        ("issuer-c", &fill.queued),
    ];
    Seen {
        kek: store.pinned_kek().unwrap(),
        keys: store.key_records().unwrap(),
        cscas: store.csca_records().unwrap(),
        pending_cscas: store.csca_pendings().unwrap(),
        audit: store.audit_entries(1).map(Result::unwrap).collect(),
        head: store.audit_head().unwrap(),
        checkpoints: store.audit_checkpoints(1, 100).unwrap(),
        batches: ids.iter().map(|(issuer, id)| store.batch(issuer, id).unwrap()).collect(),
        results: ids
            .iter()
            .map(|(issuer, id)| store.results(issuer, id).unwrap().map(|r| r.map(Result::unwrap).collect()))
            .collect(),
        queued: store.queued_records(),
    }
}

/// Copies `a`'s store into `b`'s, and `b`'s into `c`'s: each copy answers exactly as the
/// source did, its queue signs to the end, and its chain verifies with the same head.
pub fn round_trip_keeps_everything(a: &dyn Fixture, b: &dyn Fixture, c: &dyn Fixture) {
    let source = a.open();
    let fill = fill(&source);
    let before = seen(&source, &fill);
    assert_eq!(before.checkpoints.len(), 2);
    assert!(before.queued > 17 && before.batches[2].is_none(), "{before:?}");

    let middle = b.open();
    let tally = middle.import(source.export()).expect("import into an empty store");
    assert_eq!(seen(&middle, &fill), before, "the copy answers as the source");
    assert_eq!(
        (tally.entries, tally.head_seq, tally.batches, tally.keys, tally.cscas, tally.cscas_pending),
        (before.audit.len() as u64, before.head.0, 4, 2, 1, 1)
    );
    assert_eq!((tally.records_pending, tally.idempotency_keys, tally.tombstones), (before.queued, 1, 1));
    b.check(&middle);
    let middle = b.reopen(middle);
    assert_eq!(seen(&middle, &fill), before, "and durably");

    let last = c.open();
    last.import(middle.export()).expect("import the copy into a third store");
    assert_eq!(seen(&last, &fill), before, "a round trip keeps everything");
    source.close().unwrap();
    middle.close().unwrap();

    // The copy is a working store: idempotency, the queue and the chain go on from where they were.
    let replay = submit(&last, "issuer-a", Some("retry-me"), 20, 900);
    assert_eq!((replay.batch_id.as_str(), replay.created), (fill.keyed.as_str(), false));
    let refs = refs("other", 20);
    let e = last.submit("issuer-a", Some("retry-me"), &records(&refs), 900).unwrap_err();
    assert!(matches!(e, StoreError::IdempotencyConflict), "{e}");
    let e =
        last.submit("issuer-b", Some("gone"), &records(&super::kit::refs("issuer-b", 5)), 900).unwrap_err();
    assert!(matches!(e, StoreError::BatchDeleted { .. }), "the tombstone was copied: {e}");
    let newer = submit(&last, "issuer-c", None, 3, 900);
    assert_eq!(sign_all(&last, 10) as u64, before.queued + 3, "the queue, the newest batch last");
    for (issuer, id, total) in
        [("issuer-a", &fill.keyed, 20), ("issuer-b", &fill.partial, 35), ("issuer-c", &newer.batch_id, 3)]
    {
        let status = last.batch(issuer, id).unwrap().unwrap();
        assert_eq!((status.state, status.signed + status.rejected), (BatchState::Done, total));
        assert_eq!(parsed_results(&last, issuer, id).len(), total as usize, "one result per record");
    }
    let done = last.results("issuer-a", &fill.done).unwrap().unwrap().map(Result::unwrap).collect::<Vec<_>>();
    assert_eq!(Some(done), before.results[0], "results of the done batch, byte for byte");
    checkpoint(&last);
    let summary = verify(&last);
    assert!(summary.entries > before.head.0 && summary.checkpoints == 3, "{summary:?}");
    c.check(&last);
}

/// An import into a store holding anything — an audit entry, a KEK pin, a batch — is
/// [`StoreError::NotEmpty`] and changes nothing; so is a stream that breaks midway (a gap in
/// the chain) refused whole, leaving the target as empty as it was.
pub fn an_import_into_a_store_that_is_not_empty_is_refused(
    a: &dyn Fixture,
    fresh: &dyn Fn() -> Box<dyn Fixture>,
) {
    let source = a.open();
    let fill = fill(&source);
    let b = fresh();
    let target = b.open();

    // A stream broken after batches and blocks were written: nothing stays of it.
    let broken: Vec<_> = source
        .export()
        .map(Result::unwrap)
        .filter(|i| !matches!(i, Item::Audit { seq: 3, .. }))
        .map(Ok)
        .collect();
    let e = target.import(Box::new(broken.into_iter())).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(ref m) if m.contains("audit entry 4 follows entry 2")), "{e}");
    let empty = seen(&target, &fill);
    assert_eq!(
        (
            empty.kek,
            empty.keys.len(),
            empty.audit.len(),
            empty.batches.iter().flatten().count(),
            empty.queued
        ),
        (None, 0, 0, 0, 0),
        "a refused import wrote nothing"
    );

    type Prepare = fn(&Store);
    let prepared: [(&str, Prepare); 3] = [
        ("audit entries", |s| {
            s.audit_append(vec![key_event("x")]).unwrap();
        }),
        ("a KEK pin", |s| s.pin_kek("suite-kek").unwrap()),
        ("batches", |s| {
            submit(s, "issuer-z", None, 3, 1);
        }),
    ];
    for (what, prepare) in prepared {
        let b = fresh();
        let target = b.open();
        prepare(&target);
        let was = seen(&target, &fill);
        let e = target.import(source.export()).unwrap_err();
        assert!(matches!(&e, StoreError::NotEmpty(m) if m == what), "{what}: {e}");
        assert!(e.to_string().contains("not empty"), "{e}");
        assert_eq!(seen(&target, &fill), was, "{what}: the refused import changed nothing");
        assert_eq!(target.key_records().unwrap().len(), 0);
    }
}
