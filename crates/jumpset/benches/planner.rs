//! The planner on chains of 4 to 1,000 rules: the no-op (a converged chain, what every
//! reconcile of a healthy node pays), a missing owned jump, and an owned jump inserted at
//! the top by another agent (the Harvester incident). Then at scale (`plan_scale`): 100 to
//! 5,000 owned jumps (each after the one before it) among 10,000 rules of other agents —
//! many agents declaring jumps through drop-ins and the API. Pure: no kernel, no root.

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jumpset::plan;
use jumpset::snapshot::{
    Comment, CommentEncoding, Counters, Family, Match, Rule, Snapshot, Verdict, ADDRTYPE_LOCAL,
};
use jumpset::spec::{ChainSpec, Config};
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

/// `n` owned jumps OWN-0.. (each after the one before it) spread in order among
/// `foreign` bare jumps of other agents (to AGENT-0..49); `shape` breaks one of them.
fn scaled(n: usize, foreign: usize, shape: Shape) -> (ChainSpec, Snapshot) {
    let mut t = String::from("[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n");
    for k in 0..n {
        let after = if k == 0 {
            String::new()
        } else {
            format!("\"OWN-{}\"", k - 1)
        };
        t.push_str(&format!(
            "[[chain.jump]]\ntarget = \"OWN-{k}\"\ncomment = \"owned {k}\"\nafter = [{after}]\n"
        ));
    }
    let spec = Config::from_toml(&t).unwrap().chains()[0].clone();
    let owned = |k: usize| jump(0, Some(&format!("owned {k}")), &format!("OWN-{k}"), false);
    let mut rules = Vec::with_capacity(n + foreign);
    let every = (foreign / n).max(1);
    let mut k = 0;
    for i in 0..foreign {
        if i % every == 0 && k < n {
            rules.push(owned(k));
            k += 1;
        }
        let target = format!("AGENT-{}", i % 50);
        rules.push(jump(
            0,
            Some(&format!("agent rule {i}")),
            &target,
            i % 2 == 0,
        ));
    }
    rules.extend((k..n).map(owned));
    let middle = format!("OWN-{}", n / 2);
    match shape {
        Shape::Converged => {}
        Shape::Missing => rules.retain(|r| r.target() != Some(middle.as_str())),
        Shape::AtTop => {
            let at = rules
                .iter()
                .position(|r| r.target() == Some(middle.as_str()))
                .unwrap();
            let r = rules.remove(at);
            rules.insert(0, r);
        }
    }
    for (i, r) in rules.iter_mut().enumerate() {
        r.handle = i as u64 + 1;
    }
    let snap = Snapshot {
        family: Family::Ip,
        table: "nat".into(),
        chain: "PREROUTING".into(),
        generation: 7,
        table_exists: true,
        chain_exists: true,
        rules,
    };
    (spec, snap)
}

fn planner_at_scale(c: &mut Criterion) {
    for (name, shape) in [
        ("noop", Shape::Converged),
        ("missing_jump", Shape::Missing),
        ("jump_at_top", Shape::AtTop),
    ] {
        let mut g = c.benchmark_group(format!("plan_scale/{name}"));
        g.sample_size(20);
        for n in [100usize, 1000, 5000] {
            let (spec, snap) = scaled(n, 10_000, shape);
            let p = plan::plan(&snap, &spec);
            let want = match shape {
                Shape::Converged => 0,
                Shape::Missing => 1,
                Shape::AtTop => 2,
            };
            assert_eq!(p.ops.len(), want, "{name} {n}");
            assert!(p.conflicts.is_empty(), "{name} {n}");
            g.throughput(Throughput::Elements(snap.rules.len() as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, s| {
                b.iter(|| plan::plan(black_box(s), black_box(&spec)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, planner, planner_at_scale);
criterion_main!(benches);
