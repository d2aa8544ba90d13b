//! Damaged data is set aside without stopping the store; bad input, full and read-only disks
//! fail cleanly; nothing reaches sled's unsynced blob files.

use super::*;

#[test]
fn an_unreadable_payload_is_set_aside_not_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    submit(&store, "i", None, 3, 1);
    let (k, v) = store.inner.pending.first().unwrap().unwrap();
    // Record 1's payload damaged inside a block that still reads: only it is set aside.
    let plain = open_stored(&store, seal::Purpose::Pending, &k, &v);
    let mut block = layout::BlockWriter::with_capacity(0);
    for (offset, entry) in layout::decode_block(&plain).unwrap() {
        block.push(offset, if offset == 1 { &[0, 2, 0xff, 0xfe] } else { entry }).unwrap();
    }
    let sealed = reseal(&store, seal::Purpose::Pending, &k, &block.finish());
    store.inner.pending.insert(&k, sealed).unwrap();
    let items = store.claim(10).unwrap();
    assert_eq!(items.iter().map(|i| i.key.index()).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(store.corrupt_records(), 1);
    assert!(store.claim(10).unwrap().is_empty());
    assert_eq!(store.queued_records(), 3, "it stays pending, so the queue age alert fires");
}

#[test]
fn an_unreadable_block_sets_its_records_aside_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = submit(&store, "i", None, 150, 1);
    let (seq, _) = store.lookup("i", &s.batch_id).unwrap().unwrap();
    let second = layout::RecordKey::new(seq, layout::BLOCK);
    store.inner.pending.insert(second.to_bytes(), &[layout::BLOCK as u8, 9, 9][..]).unwrap();
    let mut claimed = Vec::new();
    loop {
        let items = store.claim(40).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
        claimed.extend(items.iter().map(|i| i.key.index()));
    }
    let expected: Vec<u32> = (0..layout::BLOCK).chain(2 * layout::BLOCK..150).collect();
    assert_eq!(claimed, expected, "the blocks before and after it are signed, in order");
    assert_eq!(store.corrupt_records(), u64::from(layout::BLOCK), "every record it could hold");
    assert_eq!(store.queued_records(), u64::from(layout::BLOCK));
    let lines = store.results("i", &s.batch_id).unwrap().unwrap().count();
    assert_eq!(lines, 150 - layout::BLOCK as usize);
}

#[test]
fn a_damaged_batch_does_not_stop_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good);
    {
        let store = open(dir.path());
        bad = submit(&store, "i", None, 3, 1);
        good = submit(&store, "i", None, 2, 1);
        let (seq, _) = store.lookup("i", &bad.batch_id).unwrap().unwrap();
        store.inner.batches.insert(layout::seq_key(seq), &b"garbage"[..]).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.corrupt_records(), 1);
    assert_eq!(store.queued_records(), 2, "only the readable batch is counted");
    assert!(matches!(store.batch("i", &bad.batch_id), Err(StoreError::Corrupt(_))));
    let items = store.claim(10).unwrap();
    assert!(items.len() == 2 && items.iter().all(|i| i.batch_id == good.batch_id));
    assert_eq!(store.purge_expired(1_000_000, 10).unwrap(), 1, "retention goes on for the others");
}

#[test]
fn input_the_store_cannot_represent_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(matches!(store.submit("i", None, &[], 1), Err(StoreError::Invalid(_))));
    let long = "x".repeat(70_000);
    let recs = [NewRecord { r#ref: &long, dcc_json: b"{}" }];
    assert!(matches!(store.submit("i", None, &recs, 1), Err(StoreError::Invalid(_))));
    let recs = [NewRecord { r#ref: "r", dcc_json: b"{}" }];
    assert!(matches!(store.submit(&long, None, &recs, 1), Err(StoreError::Invalid(_))));
    assert!(matches!(store.submit("i", Some(&long), &recs, 1), Err(StoreError::Invalid(_))));
    // Odd but representable input is stored as given.
    let recs = [NewRecord { r#ref: "", dcc_json: &[0xff, 0x00] }];
    let s = store.submit("", Some(""), &recs, i64::MIN).unwrap();
    assert_eq!(store.claim(1).unwrap()[0].dcc_json, vec![0xff, 0x00]);
    assert!(store.batch("", &s.batch_id).unwrap().is_some());
    assert_eq!(store.oldest_pending_age(i64::MAX).unwrap(), Some(i64::MAX));
    assert_eq!(store.purge_expired(i64::MAX, i64::MAX).unwrap(), 1);
    assert_eq!(store.commit(Vec::<Outcome>::new()).unwrap(), CommitStats::default());
    assert!(store.claim(0).unwrap().is_empty());
    check_invariants(&store);
}

#[test]
fn open_errors_are_typed_and_actionable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = SledStore::open(dir.path(), options()).err().expect("a second open must fail");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("in use by another process"));
    drop(store);
    let again = open(dir.path());
    drop(again);

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = SledStore::open(&file.join("store"), options()).err().expect("under a file");
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(!e.to_string().contains('\n') && e.is_unavailable());
}

#[test]
fn the_free_space_reserve_refuses_a_batch_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let kept = {
        let store = open(dir.path());
        submit(&store, "i", Some("k"), 5, 1)
    };
    let store =
        SledStore::open(dir.path(), StoreOptions { min_free_bytes: u64::MAX / 4, ..options() }).unwrap();
    let refs = refs("i", 5);
    let e = store.submit("i", None, &records(&refs), 2).unwrap_err();
    assert!(e.is_full() && e.is_unavailable(), "{e}");
    // A replay of an accepted batch is still answered: it needs no space.
    let replay = store.submit("i", Some("k"), &records(&refs), 2).unwrap();
    assert_eq!(replay.batch_id, kept.batch_id);
    // The store goes on: nothing was half-written, work can still be committed.
    store.check().unwrap();
    assert_eq!(sign_all(&store, 10), 5);
    assert_eq!(check_invariants(&store).len(), 1);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_fails_with_full_and_keeps_earlier_batches() {
    let fs = match Tmpfs::mount("size=2m") {
        Ok(fs) => fs,
        Err(why) => {
            println!(
                "SKIPPED a_full_disk_fails_with_full_and_keeps_earlier_batches: cannot mount a tmpfs ({why})"
            );
            return;
        }
    };
    let dir = fs.path().join("store");
    let mut accepted = Vec::new();
    let failure = {
        let store = open(&dir);
        let mut failure = None;
        for n in 0..1000 {
            let refs = refs(&format!("b{n}"), 100);
            match store.submit("i", None, &records(&refs), n) {
                Ok(s) => accepted.push(s),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let e = failure.expect("a 2 MiB disk fills up");
        assert!(matches!(e, StoreError::Full), "ENOSPC surfaces as Full, got {e}");
        // The handle stops (sled cannot go on after ENOSPC) and says so, without hanging.
        assert!(matches!(store.check(), Err(StoreError::Full)));
        assert!(matches!(store.claim(10), Err(StoreError::Full)));
        assert!(matches!(store.batch("i", &accepted[0].batch_id), Err(StoreError::Full)));
        e
    };
    assert!(!accepted.is_empty(), "some batches fit before the disk filled");
    println!("disk full after {} batches of 100 records: {failure}", accepted.len());
    // Free space, restart: every accepted batch is intact and pending; nothing half-written.
    // The failed handle is never closed (its sled could hang flushing), so a restart is a copy
    // of the files opened afresh.
    fs.remount("size=64m");
    let copy = fs.path().join("restarted");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        } else {
            // sled's blobs directory.
            std::fs::create_dir_all(copy.join(entry.file_name())).unwrap();
            for blob in std::fs::read_dir(entry.path()).unwrap() {
                let blob = blob.unwrap();
                std::fs::copy(blob.path(), copy.join(entry.file_name()).join(blob.file_name())).unwrap();
            }
        }
    }
    let store = open(&copy);
    let summary = check_invariants(&store);
    for s in &accepted {
        assert_eq!(summary.get(&s.batch_id), Some(&(100, 0, 0)), "accepted batch intact");
    }
    // The failed batch is either wholly there (its transaction reached the disk before the
    // flush failed) or not at all; check_invariants proved it is not partial.
    assert!(summary.len() == accepted.len() || summary.len() == accepted.len() + 1);
    assert_eq!(sign_all(&store, 256), 100 * summary.len());
}

#[test]
fn a_read_only_directory_is_a_clear_open_error() {
    let fs = match Tmpfs::mount("size=1m,ro") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED a_read_only_directory_is_a_clear_open_error: cannot mount a tmpfs ({why})");
            return;
        }
    };
    let e = SledStore::open(&fs.path().join("store"), options()).err().expect("read-only");
    let text = e.to_string();
    assert!(matches!(e, StoreError::Open { .. }) && text.contains("read-only"), "{text}");
}

/// Files in sled's `blobs/` directory (nodes sled writes outside its log, unsynced).
fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count())
}

#[test]
fn no_stored_value_reaches_sleds_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // The largest records the API accepts (a 128-character ref, 8 KiB of DCC JSON), with
    // results larger still (an HC1 half as long again as the DCC), enough to fill nodes.
    let big_dcc = vec![b'x'; crate::store::MAX_DCC_BYTES];
    let long_refs: Vec<String> = (0..600).map(|i| format!("{i:0>128}")).collect();
    let recs: Vec<NewRecord<'_>> =
        long_refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: &big_dcc }).collect();
    submit_records(&store, &recs);
    submit_records(&store, &recs);
    let hc1 = format!("HC1:{}", "A".repeat(crate::store::MAX_DCC_BYTES * 3 / 2));
    let big_result = |i: &WorkItem| RecordResult::Signed {
        r#ref: i.r#ref.clone(),
        hc1: hc1.clone(),
        uvci: "URN:UVCI:01:VN:ABCDEFGHIJKLMNOPQRSTUVWXYZ#Q".into(),
        kid: "AAAAAAAAAAA=".into(),
        iat: 1,
        exp: 2,
    };
    let audited = |i: &WorkItem, result: RecordResult| Outcome {
        key: i.key,
        audit: Some(crate::audit::SignedRecord::new(
            &i.r#ref,
            "VN",
            "URN:UVCI:01:VN:X",
            &[7; 64],
            "AAAAAAAAAAA=",
            2,
        )),
        result,
    };
    loop {
        let items = store.claim(crate::config::MAX_CHUNK_SIZE).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| audited(i, big_result(i))).collect()).unwrap();
    }
    // Audit entries as large as a chunk can make them: 1,024 signatures of one batch each.
    let small = refs(&"r".repeat(128), 18 * crate::config::MAX_CHUNK_SIZE);
    submit_records(&store, &records(&small));
    loop {
        let items = store.claim(crate::config::MAX_CHUNK_SIZE).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| audited(i, result_for(i))).collect()).unwrap();
    }
    store.flush().unwrap();
    check_invariants(&store);
    assert_eq!(blob_files(dir.path()), 0, "sled wrote blob files, which its flush does not sync");
}

fn submit_records(store: &SledStore, recs: &[NewRecord<'_>]) {
    store.submit("i", None, recs, 1).expect("submit");
}

#[test]
fn result_iterators_can_move_to_blocking_threads() {
    fn send_static<T: Send + 'static>() {}
    send_static::<ResultIter>();
    send_static::<SledStore>();
    fn sync<T: Sync>() {}
    sync::<SledStore>();
}
