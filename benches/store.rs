//! The store's cost per record: submitting batches (one flushed transaction per batch) and
//! claiming and committing pipeline chunks (one flushed transaction per chunk, with its audit
//! entry), on a real sled directory. Records are stored in blocks (`store::layout`), so these
//! figures are a few microseconds per record; they were ≈ 47 µs with one sled value per record.
//!
//! Every block is sealed (crypto-shredding, `store::seal`), and the store has no unsealed mode
//! to compare with. So the sealing work those two operations do is measured beside them on its
//! own, over the same records: a submit seals each block of 16 records once; a claim opens
//! each queue block it reads, a commit opens it again, re-seals what stays queued (nothing,
//! when whole blocks resolve) and seals the results block. The store
//! without sealing costs the difference. The data key is unwrapped once per batch, outside
//! these loops (a new batch's key is cached; an in-memory KEK stands in for the HSM here).
//!
//! Run: `cargo bench --bench store` (criterion prints records per second for each).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hcert_signer::audit::SignedRecord;
use hcert_signer::store::seal::{self, Context, DataKey, Purpose};
use hcert_signer::store::{NewRecord, Outcome, RecordResult, Store, StoreOptions};

/// A DCC of a typical size (the store does not parse it).
const DCC: &str = r#"{"ver":"1.3.0","nam":{"fn":"Nguyễn","fnt":"NGUYEN","gn":"Thị Minh Anh","gnt":"THI<MINH<ANH"},"dob":"1987-09-14","v":[{"tg":"840539006","vp":"1119349007","mp":"EU/1/20/1528","ma":"ORG-100030215","dn":2,"sd":2,"dt":"2021-10-08","co":"VN","is":"Ministry of Health of Viet Nam"}]}"#;
const BATCH: usize = 10_000;
const CHUNK: usize = 256;

fn refs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("record-{i:08}")).collect()
}

fn records(refs: &[String]) -> Vec<NewRecord<'_>> {
    refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: DCC.as_bytes() }).collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let kek = seal::testing::MemoryKek::new();
    let options = StoreOptions { key_wrap: Some(kek), min_free_bytes: 0, ..StoreOptions::default() };
    let store = Store::open(dir.path(), options).expect("open the store");
    let hc1 = format!("HC1:{}", "6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDEXWK G2EP4J0B".repeat(8));

    let mut group = c.benchmark_group("store");
    let batch = refs(BATCH);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("submit a batch of 10,000 records", |b| {
        b.iter(|| store.submit("issuer", None, black_box(&records(&batch)), 1).expect("submit"))
    });
    // Leave the queue to the chunk benchmark below, which refills it itself.
    while !store.claim(BATCH).expect("claim").is_empty() {}
    let chunk = refs(CHUNK);
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function("claim and commit a chunk of 256 records", |b| {
        b.iter_batched(
            || store.submit("issuer", None, &records(&chunk), 1).expect("submit"),
            |_| {
                let items = store.claim(CHUNK).expect("claim");
                let outcomes: Vec<Outcome> = items
                    .iter()
                    .map(|w| Outcome {
                        key: w.key,
                        audit: Some(SignedRecord::new(
                            &w.r#ref,
                            "VN",
                            "URN:UVCI:01:VN:X",
                            &[7; 64],
                            "AAAAAAAAAAA=",
                            2,
                        )),
                        result: RecordResult::Signed {
                            r#ref: w.r#ref.clone(),
                            hc1: hc1.clone(),
                            uvci: "URN:UVCI:01:VN:X".into(),
                            kid: "AAAAAAAAAAA=".into(),
                            iat: 1,
                            exp: 2,
                        },
                    })
                    .collect();
                store.commit(outcomes).expect("commit")
            },
            BatchSize::PerIteration,
        )
    });

    // The sealing share of the two operations above, over blocks of the same records.
    let key = DataKey::generate().expect("data key");
    let block = |n: usize, line: &[u8]| {
        let mut b = Vec::new();
        for i in 0..n {
            b.push(i as u8);
            b.extend_from_slice(&(line.len() as u32).to_be_bytes());
            b.extend_from_slice(line);
        }
        b
    };
    let payload_line = [&[0u8, 15][..], b"record-00000000", DCC.as_bytes()].concat();
    let payloads = block(16, &payload_line);
    let result_line = serde_json::to_vec(&RecordResult::Signed {
        r#ref: "record-00000000".into(),
        hc1: hc1.clone(),
        uvci: "URN:UVCI:01:VN:X".into(),
        kid: "AAAAAAAAAAA=".into(),
        iat: 1,
        exp: 2,
    })
    .expect("json");
    let results = block(16, &result_line);
    let ctx = |purpose, position| Context { purpose, batch: [7; 16], position };
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("sealing alone: a submit's blocks of 10,000 records", |b| {
        b.iter(|| {
            for first in (0..BATCH as u32).step_by(16) {
                black_box(
                    seal::seal(&key, &ctx(Purpose::Pending, first), black_box(&payloads)).expect("seal"),
                );
            }
        })
    });
    let sealed_payloads = seal::seal(&key, &ctx(Purpose::Pending, 0), &payloads).expect("seal");
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function("sealing alone: claim and commit's blocks of 256 records", |b| {
        b.iter(|| {
            for _ in 0..CHUNK / 16 {
                // A whole block: opened by the claim and again by the commit, which removes it
                // from the queue and seals its results block.
                for _ in 0..2 {
                    let plain = seal::open(&key, &ctx(Purpose::Pending, 0), black_box(&sealed_payloads))
                        .expect("open");
                    black_box(plain);
                }
                black_box(seal::seal(&key, &ctx(Purpose::Results, 0), black_box(&results)).expect("seal"));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
