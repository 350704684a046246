//! The x_tables blob codec at 10k and 50k rules: decode (validate and index the buffer in
//! place: what every legacy read pays), decode plus the managed chain's rules (the read),
//! and rebuild (set the chain's rules, lay the whole table out again into a kept buffer:
//! what every legacy write pays). Pure: the table is made with the codec itself from the
//! captured empty nat table — no kernel, no root.
//!
//! The generated table: the Harvester jumps in PREROUTING, `n / 5 * 2` user chains, and
//! `n` comment + jump rules in OUTPUT spread over them (the codec only edits built-in
//! chains; the entry count, sizes and jump resolution are what a kube-proxy table of `n`
//! rules has).

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use jumpset::backend::legacy::blob::{Info, Slot, Table, INFO_SIZE};
use jumpset::snapshot::Family;
use std::hint::black_box;

const EMPTY_NAT: &[u8] = include_bytes!("../testdata/legacy/ip-nat-empty.bin");

/// (GET_INFO, blob) of a nat table holding `n` rules besides the Harvester jumps.
fn table(n: usize) -> (Info, Vec<u8>) {
    let info = Info::parse(&EMPTY_NAT[..INFO_SIZE]).unwrap();
    let mut t = Table::decode(Family::Ip, &info, &EMPTY_NAT[INFO_SIZE..]).unwrap();
    for c in [
        "cali-PREROUTING",
        "OVN-PREROUTING",
        "KUBE-SERVICES",
        "CNI-HOSTPORT-DNAT",
    ] {
        t.ensure_chain(c).unwrap();
    }
    let services = (n / 5).max(1);
    let names: Vec<String> = (0..services)
        .flat_map(|i| [format!("KUBE-SEP-{i:012}"), format!("KUBE-SVC-{i:012}")])
        .collect();
    // In name order, so every new chain goes at the end.
    let mut sorted = names.clone();
    sorted.sort();
    for c in &sorted {
        t.ensure_chain(c).unwrap();
    }
    let comments: Vec<String> = (0..n).map(|i| format!("ns/svc{}:http", i / 5)).collect();
    let slots: Vec<Slot> = (0..n)
        .map(|i| Slot::Jump {
            comment: comments[i].as_bytes(),
            target: &names[(i / 5 * 2 + i % 2) % names.len()],
        })
        .collect();
    t.set_rules("OUTPUT", &slots).unwrap();
    let harvester = [
        ("cali:6gwbT8clXdHdC1b1", "cali-PREROUTING"),
        ("kube-ovn prerouting rules", "OVN-PREROUTING"),
        ("kubernetes service portals", "KUBE-SERVICES"),
    ]
    .map(|(c, t)| Slot::Jump {
        comment: c.as_bytes(),
        target: t,
    });
    t.set_rules("PREROUTING", &harvester).unwrap();
    let (blob, enc) = t.encode().unwrap();
    (enc.info(&info), blob)
}

fn blob_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("legacy_blob");
    g.sample_size(20);
    for n in [10_000usize, 50_000] {
        let (info, blob) = table(n);
        let t = Table::decode(Family::Ip, &info, &blob).unwrap();
        assert_eq!(t.rules("PREROUTING").unwrap().len(), 3);
        assert_eq!(t.rules("OUTPUT").unwrap().len(), n);
        g.bench_with_input(BenchmarkId::new("decode", n), &blob, |b, blob| {
            b.iter(|| Table::decode(Family::Ip, black_box(&info), black_box(blob)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("read_chain", n), &blob, |b, blob| {
            b.iter(|| {
                Table::decode(Family::Ip, black_box(&info), black_box(blob))
                    .unwrap()
                    .rules("PREROUTING")
            })
        });
        // The repair: keep Calico's and kube-proxy's jumps, put Kube-OVN's between them.
        let repaired = [
            Slot::Keep(0),
            Slot::Jump {
                comment: b"kube-ovn prerouting rules",
                target: "OVN-PREROUTING",
            },
            Slot::Keep(2),
        ];
        // Into a buffer kept between iterations, as the backend keeps it between reconciles.
        let mut out = Vec::with_capacity(blob.len() + 1024);
        g.bench_with_input(BenchmarkId::new("rebuild", n), &t, |b, t| {
            b.iter_batched(
                || t.clone(),
                |mut t| {
                    t.set_rules("PREROUTING", &repaired).unwrap();
                    out.clear();
                    t.encode_into(&mut out).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, blob_benches);
criterion_main!(benches);
