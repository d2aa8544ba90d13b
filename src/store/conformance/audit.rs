//! The audit log: appends, checkpoints at the head, the signatures of commits and the events of
//! key and CSCA changes form one chain that `crate::audit`'s own verifier accepts, counting
//! exactly the signatures released — under concurrent appenders and across a restart.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

use super::Fixture;
use super::kit::{outcomes, submit};
use crate::audit::{self, Event, GENESIS, Hash, KeyAction, Summary};
use crate::store::Store;

/// The suite's audit key (the daemon's lives in the HSM).
fn audit_key() -> SigningKey {
    SigningKey::from_slice(&[7; 32]).expect("a valid P-256 scalar")
}

fn started() -> Event {
    Event::Started { audit_key: "audit".into(), version: "test".into() }
}

fn key_event(label: &str) -> Event {
    Event::Key {
        action: KeyAction::Generated,
        label: label.into(),
        officer: "officer1".into(),
        kid: None,
        detail: String::new(),
    }
}

/// A checkpoint over the end of the chain, signed as the daemon signs it.
pub(super) fn checkpoint(store: &Store) -> u64 {
    store
        .audit_append_at_head(|last, head, _| {
            let sig: Signature = audit_key().sign(&audit::checkpoint_message(last, head));
            Some(Event::Checkpoint {
                covers: last,
                head: hex::encode(head),
                signature: B64.encode(sig.to_bytes()),
            })
        })
        .unwrap()
        .expect("a checkpoint was appended")
}

/// The whole log through `crate::audit::verify_chain`, which must accept it.
pub(super) fn verify(store: &Store) -> Summary {
    audit::verify_chain(store.audit_chain(), audit_key().verifying_key()).expect("the audit chain verifies")
}

/// Signs every pending record; returns the signatures released.
fn sign_everything(store: &Store) -> u64 {
    let mut signed = 0;
    loop {
        let items = store.claim(17).unwrap();
        if items.is_empty() {
            return signed;
        }
        signed += store.commit(outcomes(&items)).unwrap().signed as u64;
    }
}

/// Plain appends, checkpoints, the signatures of commits (a duplicate adds none) and the events
/// of key and CSCA writes are one chain: numbered without gaps, hashed as `crate::audit`
/// defines, its head the last entry's hash, its checkpoints listed and paged.
pub fn appends_checkpoints_and_signatures_form_one_verified_chain(f: &dyn Fixture) {
    let store = f.open();
    assert_eq!(store.audit_head().unwrap(), (0, GENESIS));
    assert_eq!(store.audit_entries(1).count(), 0);
    assert!(store.audit_checkpoints(1, 10).unwrap().is_empty());
    assert_eq!(store.audit_append(vec![started()]).unwrap(), 1);
    assert_eq!(store.audit_append(vec![started(), key_event("a")]).unwrap(), 3);
    let cp1 = checkpoint(&store);
    assert_eq!(cp1, 4);

    submit(&store, "i", None, 30, 1);
    let items = store.claim(30).unwrap();
    let stats = store.commit(outcomes(&items)).unwrap();
    assert_eq!((stats.signed, stats.rejected), (20, 10));
    assert_eq!(store.commit(outcomes(&items)).unwrap().duplicates, 30);
    let after_commit = store.audit_head().unwrap().0;
    assert!(after_commit > cp1, "the signatures were appended with the commit");

    store
        .put_key_record(
            "dsc-1",
            b"{\"state\":\"new\"}",
            Some(None),
            vec![key_event("dsc-1"), key_event("dsc-1")],
        )
        .unwrap();
    store.put_csca_records(&[("ab".into(), b"der".to_vec())], vec![key_event("csca")]).unwrap();
    store.update_csca("cd", Some(b"pending"), None, vec![key_event("csca2")]).unwrap();
    assert_eq!(store.audit_head().unwrap().0, after_commit + 4, "each write appended its events");
    store.audit_append(vec![]).unwrap();
    assert_eq!(store.audit_head().unwrap().0, after_commit + 4, "no events, no entry");
    let cp2 = checkpoint(&store);
    store.audit_append(vec![started()]).unwrap();

    let summary = verify(&store);
    let (last, head) = store.audit_head().unwrap();
    assert_eq!(summary.entries, last);
    assert_eq!(summary.signatures, 20, "exactly the signatures released, each once");
    assert_eq!(summary.key_events, 1 + 2 + 1 + 1);
    assert_eq!((summary.checkpoints, summary.last_checkpoint, summary.unanchored), (2, cp2, 1));
    let entries: Vec<(u64, Vec<u8>)> = store.audit_entries(1).map(Result::unwrap).collect();
    assert_eq!(entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>());
    assert_eq!(entries.last().unwrap().1[..32], head, "the head is the last entry's chain hash");
    let from3: Vec<u64> = store.audit_entries(3).map(|e| e.unwrap().0).collect();
    assert_eq!(from3, (3..=last).collect::<Vec<_>>());
    assert_eq!(store.audit_entries(last + 1).count(), 0);

    let listed: Vec<u64> = store.audit_checkpoints(1, 10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(listed, [cp1, cp2]);
    let page = store.audit_checkpoints(cp1 + 1, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0], entries[(cp2 - 1) as usize], "a checkpoint is listed as stored");
    assert_eq!(store.audit_checkpoints(1, 1).unwrap()[0].0, cp1);
    assert!(store.audit_checkpoints(cp2 + 1, 10).unwrap().is_empty());
}

/// `audit_append_at_head` hands its builder the chain's real end and whether it is a
/// checkpoint; a builder answering `None` appends nothing.
pub fn at_head_sees_the_end_and_may_append_nothing(f: &dyn Fixture) {
    let store = f.open();
    let mut seen = None;
    let r = store
        .audit_append_at_head(|last, head, is_checkpoint| {
            seen = Some((last, *head, is_checkpoint));
            None
        })
        .unwrap();
    assert_eq!((r, seen), (None, Some((0, GENESIS, false))));
    store.audit_append(vec![started(), started()]).unwrap();
    let end = store.audit_head().unwrap();
    store
        .audit_append_at_head(|last, head, is_checkpoint| {
            seen = Some((last, *head, is_checkpoint));
            None
        })
        .unwrap();
    assert_eq!(seen, Some((end.0, end.1, false)));
    assert_eq!(store.audit_head().unwrap(), end, "nothing appended");
    let cp = checkpoint(&store);
    let end: (u64, Hash) = store.audit_head().unwrap();
    assert_eq!(end.0, cp);
    let r = store
        .audit_append_at_head(|last, head, is_checkpoint| {
            seen = Some((last, *head, is_checkpoint));
            (!is_checkpoint).then(started)
        })
        .unwrap();
    assert_eq!((r, seen), (None, Some((cp, end.1, true))), "a checkpoint does not follow a checkpoint");
    assert_eq!(verify(&store).checkpoints, 1);
}

/// Appenders on several threads (and on a second handle, when the backend has one) — plain
/// appends, commits, key writes, checkpoints — still make one chain that verifies, with every
/// entry and signature in it.
pub fn concurrent_appenders_form_one_chain(f: &dyn Fixture) {
    let store = f.open();
    let mut handles = vec![store.clone(); 2];
    handles.extend(f.second_handle().into_iter().flat_map(|h| vec![h; 2]));
    for (n, h) in handles.iter().enumerate() {
        submit(h, &format!("issuer{n}"), None, 60, 1);
    }
    let writers = handles.len() as u64;
    let threads: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(n, h)| {
            std::thread::spawn(move || {
                let mut appended = 0u64;
                for round in 0..15 {
                    h.audit_append(vec![started(), key_event(&format!("t{n}"))]).unwrap();
                    let label = format!("key-{n}-{round}");
                    h.put_key_record(&label, b"{}", Some(None), vec![key_event(&label)]).unwrap();
                    appended += 3;
                    if round % 5 == 4 {
                        checkpoint(&h);
                        appended += 1;
                    }
                }
                (appended, sign_everything(&h))
            })
        })
        .collect();
    let (mut appended, mut signed) = (0, 0);
    for t in threads {
        let (a, s) = t.join().unwrap();
        appended += a;
        signed += s;
    }
    let summary = verify(&store);
    assert_eq!(summary.signatures, signed);
    assert_eq!(summary.signatures, writers * 40, "every signature released, once");
    assert_eq!((summary.checkpoints, summary.key_events), (writers * 3, writers * 30));
    let (last, _) = store.audit_head().unwrap();
    assert_eq!(summary.entries, last);
    assert!(last > appended, "every append is in the chain, and the commits' entries");
    f.check(&store);
}

/// The chain, its head and its checkpoints survive a restart, and appends go on from its end.
pub fn the_chain_is_durable_across_reopen(f: &dyn Fixture) {
    let mut store = f.open();
    store.audit_append(vec![started()]).unwrap();
    submit(&store, "i", None, 9, 1);
    let signed = sign_everything(&store);
    let cp = checkpoint(&store);
    let before = store.audit_head().unwrap();
    store = f.reopen(store);
    assert_eq!(store.audit_head().unwrap(), before);
    assert_eq!(store.audit_checkpoints(1, 10).unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>(), [cp]);
    assert_eq!(store.audit_append(vec![started()]).unwrap(), before.0 + 1);
    let summary = verify(&store);
    assert_eq!((summary.signatures, summary.checkpoints, summary.entries), (signed, 1, before.0 + 1));
}
