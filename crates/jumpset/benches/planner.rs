//! The planner on chains of 4 to 1,000 rules: the no-op (a converged chain, what every
//! reconcile of a healthy node pays), a missing owned jump, and an owned jump inserted at
//! the top by another agent (the Harvester incident). Pure: no kernel, no root.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jumpset::plan;
use jumpset::snapshot::{
    Comment, CommentEncoding, Counters, Family, Match, Rule, Snapshot, Verdict, ADDRTYPE_LOCAL,
};
use std::hint::black_box;

const OVN: &str = "kube-ovn prerouting rules";

fn jump(handle: u64, comment: Option<&str>, target: &str, addrtype: bool) -> Rule {
    Rule {
        handle,
        comment: comment.map(|c| Comment {
            bytes: c.as_bytes().to_vec(),
            encoding: CommentEncoding::Xt,
        }),
        matches: if addrtype {
            vec![Match::AddrType {
                source: 0,
                dest: ADDRTYPE_LOCAL,
                flags: 0,
            }]
        } else {
            Vec::new()
        },
        counters: Some(Counters::default()),
        verdict: Verdict::Jump(target.into()),
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Converged,
    Missing,
    AtTop,
}

/// nat PREROUTING with the Harvester jumps and `n - 4` more foreign rules after them.
fn chain(n: usize, shape: Shape) -> Snapshot {
    let ovn = jump(2, Some(OVN), "OVN-PREROUTING", false);
    let mut rules = vec![jump(
        1,
        Some("cali:6gwbT8clXdHdC1b1"),
        "cali-PREROUTING",
        false,
    )];
    match shape {
        Shape::Converged => rules.push(ovn),
        Shape::Missing => {}
        Shape::AtTop => rules.insert(0, ovn),
    }
    rules.push(jump(
        3,
        Some("kubernetes service portals"),
        "KUBE-SERVICES",
        false,
    ));
    rules.push(jump(4, None, "CNI-HOSTPORT-DNAT", true));
    for i in 4..n {
        let target = format!("AGENT-{}", i % 50);
        rules.push(jump(
            i as u64 + 1,
            Some(&format!("agent rule {i}")),
            &target,
            i % 2 == 0,
        ));
    }
    Snapshot {
        family: Family::Ip,
        table: "nat".into(),
        chain: "PREROUTING".into(),
        generation: 7,
        table_exists: true,
        chain_exists: true,
        rules,
    }
}

fn planner(c: &mut Criterion) {
    let spec = jumpset_testkit::fixtures::harvester_spec(CommentEncoding::Xt);
    for (name, shape) in [
        ("noop", Shape::Converged),
        ("missing_jump", Shape::Missing),
        ("jump_at_top", Shape::AtTop),
    ] {
        let mut g = c.benchmark_group(format!("plan/{name}"));
        for n in [4usize, 10, 100, 1000] {
            let snap = chain(n, shape);
            let p = plan::plan(&snap, &spec);
            assert_eq!(p.is_noop(), matches!(shape, Shape::Converged), "{name} {n}");
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, s| {
                b.iter(|| plan::plan(black_box(s), black_box(&spec)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, planner);
criterion_main!(benches);
