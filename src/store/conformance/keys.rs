//! Key records and CSCAs: written only together with the audit events that record the change;
//! `put_key_record`'s compare-and-set refuses a stale write with `Conflict` and writes nothing
//! (neither the record nor its events); the CSCAs trusted and waiting for a second officer.

use std::sync::{Arc, Barrier};

use super::Fixture;
use crate::audit::{Event, KeyAction};
use crate::store::StoreError;

fn event(action: KeyAction, label: &str) -> Event {
    Event::Key { action, label: label.into(), officer: "officer1".into(), kid: None, detail: String::new() }
}

/// The last sequence number of the audit log.
fn audit_end(store: &crate::store::Store) -> u64 {
    store.audit_head().unwrap().0
}

/// Unconditional and conditional writes; a stale or wrong `expect` is `Conflict` and changes
/// nothing; each successful write appends exactly its events.
pub fn key_records_compare_and_set_with_their_events(f: &dyn Fixture) {
    let store = f.open();
    assert!(store.key_records().unwrap().is_empty());
    assert_eq!(store.key_record("dsc-1").unwrap(), None);

    store.put_key_record("dsc-1", b"v1", Some(None), vec![event(KeyAction::Generated, "dsc-1")]).unwrap();
    assert_eq!((store.key_record("dsc-1").unwrap().as_deref(), audit_end(&store)), (Some(&b"v1"[..]), 1));
    let e = store.put_key_record("dsc-1", b"v-other", Some(None), vec![event(KeyAction::Generated, "x")]);
    assert!(matches!(e, Err(StoreError::Conflict(_))), "{e:?}: it is not absent any more");
    store
        .put_key_record(
            "dsc-1",
            b"v2",
            Some(Some(b"v1")),
            vec![event(KeyAction::CsrIssued, "dsc-1"), event(KeyAction::Approved, "dsc-1")],
        )
        .unwrap();
    assert_eq!(audit_end(&store), 3, "both events, with the record");
    let stale =
        store.put_key_record("dsc-1", b"v3", Some(Some(b"v1")), vec![event(KeyAction::Retired, "dsc-1")]);
    let e = stale.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)) && !e.is_unavailable(), "{e}");
    assert!(!e.to_string().is_empty() && !e.to_string().contains('\n'));
    assert_eq!(
        store.key_record("dsc-1").unwrap().as_deref(),
        Some(&b"v2"[..]),
        "the stale write wrote nothing"
    );
    assert_eq!(audit_end(&store), 3, "nor its events");
    let e =
        store.put_key_record("dsc-2", b"w", Some(Some(b"v1")), vec![event(KeyAction::Generated, "dsc-2")]);
    assert!(matches!(e, Err(StoreError::Conflict(_))), "{e:?}: expected a record that is absent");
    assert_eq!(store.key_record("dsc-2").unwrap(), None);

    // Without `expect`, a write is unconditional.
    store.put_key_record("dsc-1", b"v4", None, vec![event(KeyAction::Activated, "dsc-1")]).unwrap();
    store.put_key_record("dsc-2", b"w1", None, vec![]).unwrap();
    assert_eq!(audit_end(&store), 4);
    let mut all = store.key_records().unwrap();
    all.sort();
    assert_eq!(all, vec![("dsc-1".to_owned(), b"v4".to_vec()), ("dsc-2".to_owned(), b"w1".to_vec())]);
    let labels: Vec<String> = store
        .audit_entries(1)
        .map(|e| {
            let (_, stored) = e.unwrap();
            let entry: crate::audit::Entry = serde_json::from_slice(&stored[32..]).unwrap();
            match entry.event {
                Event::Key { action, .. } => format!("{action:?}"),
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect();
    assert_eq!(labels, ["Generated", "CsrIssued", "Approved", "Activated"], "in order, nothing refused");
}

/// Officers writing the same record at once from the same state: one wins, the others get
/// `Conflict`, and the log has the winner's events only (on two handles too, when the backend
/// has them).
pub fn concurrent_compare_and_set_has_one_winner(f: &dyn Fixture) {
    let store = f.open();
    store.put_key_record("dsc", b"v0", None, vec![]).unwrap();
    let mut handles = vec![store.clone(); 4];
    handles.extend(f.second_handle().into_iter().flat_map(|h| vec![h; 4]));
    let barrier = Arc::new(Barrier::new(handles.len()));
    let threads: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(n, h)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mine = format!("v-{n}");
                barrier.wait();
                let r = h.put_key_record(
                    "dsc",
                    mine.as_bytes(),
                    Some(Some(b"v0")),
                    vec![event(KeyAction::Approved, &mine)],
                );
                (mine, r)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<&String> = results.iter().filter(|(_, r)| r.is_ok()).map(|(m, _)| m).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().all(|(_, r)| matches!(r, Ok(()) | Err(StoreError::Conflict(_)))), "{results:?}");
    assert_eq!(store.key_record("dsc").unwrap().unwrap(), winners[0].as_bytes());
    assert_eq!(audit_end(&store), 1, "only the winner's event");
    let (_, stored) = store.audit_entries(1).next().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&stored[32..]).contains(&format!("\"label\":\"{}\"", winners[0])));
}

/// CSCAs: recorded at first start with their events; an addition waits as pending, is listed,
/// replaced, cleared, and trusted by a second officer in one write with its events.
pub fn cscas_trusted_and_pending(f: &dyn Fixture) {
    let store = f.open();
    assert!(store.csca_records().unwrap().is_empty() && store.csca_pendings().unwrap().is_empty());
    let first = vec![("aa11".to_owned(), b"der-a".to_vec()), ("bb22".to_owned(), b"der-b".to_vec())];
    store.put_csca_records(&first, vec![event(KeyAction::CscaRecorded, "csca")]).unwrap();
    let mut trusted = store.csca_records().unwrap();
    trusted.sort();
    assert_eq!(trusted, first);
    assert_eq!(audit_end(&store), 1);

    store
        .update_csca("cc33", Some(b"approval-1"), None, vec![event(KeyAction::CscaApproved, "csca")])
        .unwrap();
    assert_eq!(store.csca_pending("cc33").unwrap().as_deref(), Some(&b"approval-1"[..]));
    assert_eq!(store.csca_pending("aa11").unwrap(), None, "a trusted CSCA is not pending");
    assert_eq!(store.csca_pendings().unwrap(), vec![("cc33".to_owned(), b"approval-1".to_vec())]);
    assert_eq!(store.csca_records().unwrap().len(), 2, "a pending CSCA is not trusted");
    store.update_csca("dd44", Some(b"x"), None, vec![]).unwrap();
    store.update_csca("dd44", None, None, vec![event(KeyAction::CscaApproved, "withdrawn")]).unwrap();
    assert_eq!(store.csca_pending("dd44").unwrap(), None, "cleared");

    store.update_csca("cc33", None, Some(b"der-c"), vec![event(KeyAction::CscaRecorded, "csca")]).unwrap();
    assert_eq!(store.csca_pending("cc33").unwrap(), None);
    assert!(store.csca_pendings().unwrap().is_empty());
    let mut trusted = store.csca_records().unwrap();
    trusted.sort();
    assert_eq!(trusted.last().unwrap(), &("cc33".to_owned(), b"der-c".to_vec()));
    assert_eq!(trusted.len(), 3);
    assert_eq!(audit_end(&store), 4, "each change with its events");
}

/// Key records, trusted and pending CSCAs survive a restart.
pub fn key_records_and_cscas_are_durable_across_reopen(f: &dyn Fixture) {
    let mut store = f.open();
    store.put_key_record("dsc-1", b"v1", Some(None), vec![event(KeyAction::Generated, "dsc-1")]).unwrap();
    store.put_csca_records(&[("aa".into(), b"der".to_vec())], vec![]).unwrap();
    store.update_csca("bb", Some(b"p"), None, vec![]).unwrap();
    store = f.reopen(store);
    assert_eq!(store.key_records().unwrap(), vec![("dsc-1".to_owned(), b"v1".to_vec())]);
    assert_eq!(store.csca_records().unwrap(), vec![("aa".to_owned(), b"der".to_vec())]);
    assert_eq!(store.csca_pendings().unwrap(), vec![("bb".to_owned(), b"p".to_vec())]);
    store.put_key_record("dsc-1", b"v2", Some(Some(b"v1")), vec![]).unwrap();
    assert_eq!(audit_end(&store), 1);
}
