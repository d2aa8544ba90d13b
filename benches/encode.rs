//! Per-record encoding cost: everything the appliance does for one certificate except the
//! signature itself (parse + validate + UVCI + CWT + COSE digest + assemble + zlib + Base45).
//!
//! Before the criterion runs it prints the zlib level table the default level was chosen from:
//! mean HC1 size and deflate time per level over generated certificates, against level 9.
//!
//! Run: `cargo bench --bench encode`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use hcert_signer::hcert::Dcc;
use hcert_signer::hcert::cose::{self, KeyHeader};
use hcert_signer::hcert::dcc::arbitrary;
use hcert_signer::hcert::encoder::Encoder;
use hcert_signer::hcert::transport::{DEFAULT_LEVEL, Hc1Encoder};
use hcert_signer::hcert::uvci::UvciGenerator;
use hcert_signer::hcert::validate::Policy;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

/// A typical record as the national platform sends it (no UVCI yet: the appliance assigns one).
const RECORD: &str = r#"{"ver":"1.3.0","nam":{"fn":"Nguyễn","fnt":"NGUYEN","gn":"Thị Minh Anh","gnt":"THI<MINH<ANH"},"dob":"1987-09-14","v":[{"tg":"840539006","vp":"1119349007","mp":"EU/1/20/1528","ma":"ORG-100030215","dn":2,"sd":2,"dt":"2021-10-08","co":"VN","is":"Ministry of Health of Viet Nam"}]}"#;

/// A signature-shaped block of bytes: incompressible, like a real one.
fn fake_signature(seed: u64) -> [u8; 64] {
    let mut x = seed | 1;
    std::array::from_fn(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    })
}

const IAT: i64 = 1_764_000_000;
const EXP: i64 = IAT + 365 * 86_400;

fn cose_samples(n: usize) -> Vec<Vec<u8>> {
    let mut runner = TestRunner::deterministic();
    let header = KeyHeader::es256([0x5a; 8]);
    let encoder = Encoder::new("VN", header);
    (0..n)
        .map(|i| {
            let dcc = arbitrary::dcc().new_tree(&mut runner).expect("generator").current();
            let prepared = encoder.prepare(&dcc, IAT, EXP).expect("prepare");
            cose::assemble(prepared, &fake_signature(i as u64 + 1)).expect("assemble")
        })
        .collect()
}

/// The table behind [`DEFAULT_LEVEL`]: size against level 9, and time, per zlib level.
fn level_table() {
    let samples = cose_samples(2_000);
    let mut rows = Vec::new();
    for level in 1..=9u32 {
        let mut enc = Hc1Encoder::new(level);
        let mut bytes = 0usize;
        let start = Instant::now();
        for _ in 0..5 {
            bytes = 0;
            for s in &samples {
                bytes += enc.deflate(s).expect("deflate").len();
            }
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / (5 * samples.len()) as f64;
        rows.push((level, bytes as f64 / samples.len() as f64, per));
    }
    let l9 = rows[8].1;
    println!("zlib level table over {} generated certificates (COSE → zlib):", samples.len());
    println!("level  mean bytes  vs level 9  µs/record");
    for (level, size, per) in rows {
        let mark = if level == DEFAULT_LEVEL { "  ← default" } else { "" };
        println!("{level:>5}  {size:>10.1}  {:>+9.2}%  {per:>9.2}{mark}", (size / l9 - 1.0) * 100.0);
    }
}

fn bench(c: &mut Criterion) {
    // Only a real benchmark run prints the table; test runners list or smoke-test this target.
    if std::env::args().any(|a| a == "--bench") {
        level_table();
    }
    let policy = Policy::current();
    let uvci = UvciGenerator::new("VN").expect("generator");
    let mut encoder = Encoder::new("VN", KeyHeader::es256([0x5a; 8]));
    let sig = fake_signature(7);

    c.bench_function("parse+validate", |b| {
        b.iter(|| Dcc::from_json_str(black_box(RECORD), &policy).expect("valid"))
    });
    c.bench_function("encode record (all but the signature)", |b| {
        b.iter(|| {
            let mut dcc = Dcc::from_json_str(black_box(RECORD), &policy).expect("valid");
            dcc.ensure_uvci(&uvci).expect("uvci");
            let prepared = encoder.prepare(&dcc, IAT, EXP).expect("prepare");
            encoder.finish(prepared, &sig).expect("finish")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
