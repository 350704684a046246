//! The nf_tables codec: decoding a rule dump as the backend's read does — `parse` of the
//! datagram, its rules decoded straight into the model — for the captured Harvester dump
//! and generated dumps of 1 to 200 rules; and encoding the repair batch. Pure: no kernel,
//! no root.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jumpset::backend::nft::codec::{self, Batch, Body, Position};
use jumpset::snapshot::{CommentEncoding, Match, Rule, Verdict, ADDRTYPE_LOCAL};
use std::hint::black_box;

const CAPTURED_DUMP: &[u8] = include_bytes!("../testdata/nft/rx_dump_prerouting.bin");
const NFTA_RULE_HANDLE: u16 = 3;

/// A rule to encode: its comment, other matches and verdict.
type Spec<'a> = (Option<(&'a [u8], CommentEncoding)>, Vec<Match>, Verdict);

/// What a dump of these rules looks like: each NEWRULE request of a batch, with a handle
/// attribute appended (the kernel's reply carries the same attributes plus the handle),
/// in one datagram.
fn dump_of(rules: &[Spec<'_>]) -> Vec<u8> {
    let mut b = Batch::begin(1, 1);
    for (c, m, v) in rules {
        b.new_rule(
            codec::NFPROTO_IPV4,
            "nat",
            "PREROUTING",
            &codec::encode_rule(*c, m, v),
            Position::Append,
        );
    }
    let (bytes, _) = b.end();
    let mut out = Vec::with_capacity(bytes.len() + rules.len() * 12);
    let mut off = 0;
    let mut handle = 2u64;
    while off < bytes.len() {
        let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(bytes[off + 4..off + 6].try_into().unwrap());
        if ty == (10 << 8 | 6) {
            let start = out.len();
            out.extend_from_slice(&bytes[off..off + len]);
            out.extend_from_slice(&12u16.to_ne_bytes());
            out.extend_from_slice(&NFTA_RULE_HANDLE.to_ne_bytes());
            out.extend_from_slice(&handle.to_be_bytes());
            handle += 1;
            let new_len = (out.len() - start) as u32;
            out[start..start + 4].copy_from_slice(&new_len.to_ne_bytes());
        }
        off += (len + 3) & !3;
    }
    out
}

/// What the backend's read does: `parse`, the rules moved out of their messages.
fn read_path(d: &[u8]) -> Vec<Rule> {
    codec::parse(d)
        .unwrap()
        .into_iter()
        .filter_map(|m| match m.body {
            Body::NewRule(r) => Some(r.rule),
            _ => None,
        })
        .collect()
}

fn codec_benches(c: &mut Criterion) {
    let n = read_path(CAPTURED_DUMP).len();
    assert!(n >= 4, "the captured dump holds the Harvester chain");
    let mut g = c.benchmark_group("nft_decode");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("captured_harvester_dump_read_path", |b| {
        b.iter(|| read_path(black_box(CAPTURED_DUMP)))
    });
    let xt: &[u8] = b"kube-ovn prerouting rules";
    for n in [1usize, 4, 50, 200] {
        let rules: Vec<_> = (0..n)
            .map(|i| match i % 3 {
                0 => (
                    Some((xt, CommentEncoding::Xt)),
                    vec![],
                    Verdict::Jump(format!("CHAIN-{i}")),
                ),
                1 => (
                    Some((xt, CommentEncoding::Userdata)),
                    vec![],
                    Verdict::Jump(format!("CHAIN-{i}")),
                ),
                _ => (
                    None,
                    vec![Match::AddrType {
                        source: 0,
                        dest: ADDRTYPE_LOCAL,
                        flags: 0,
                    }],
                    Verdict::Jump(format!("CHAIN-{i}")),
                ),
            })
            .collect();
        let d = dump_of(&rules);
        assert_eq!(read_path(&d).len(), n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("read_path", n), &d, |b, d| {
            b.iter(|| read_path(black_box(d)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("nft_encode");
    for (name, enc) in [
        ("xt", CommentEncoding::Xt),
        ("userdata", CommentEncoding::Userdata),
    ] {
        g.bench_function(BenchmarkId::new("repair_batch", name), |b| {
            b.iter(|| {
                let mut batch = Batch::begin(black_box(42), 100);
                let rule = codec::encode_rule(
                    Some((xt, enc)),
                    &[],
                    &Verdict::Jump("OVN-PREROUTING".into()),
                );
                batch.new_rule(
                    codec::NFPROTO_IPV4,
                    "nat",
                    "PREROUTING",
                    &rule,
                    Position::Before(black_box(5)),
                );
                batch.end()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
