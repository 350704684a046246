//! Kernel round trips through nf_tables in a throwaway network namespace: the read of
//! nat PREROUTING (GETGEN + one GETRULE dump, decoded) and a no-op reconcile (read +
//! plan) of the converged Harvester chain. Runs only with the privileges a namespace
//! needs (root); otherwise it says so and measures nothing. `jumpset bench` measures the
//! rest (repairs, the raw floor, legacy, the exec baselines).

#![allow(missing_docs)] // criterion_group! generates undocumented public functions

use criterion::{criterion_group, criterion_main, Criterion};
use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use jumpset::reconcile::{self, Goal};
use jumpset::snapshot::{CommentEncoding, Family};

/// A socket to nf_tables in a fresh namespace holding the healthy Harvester chain. The
/// socket keeps its namespace, so it is used from the benchmark thread afterwards.
fn harvester_namespace() -> Result<NftBackend, String> {
    jumpset_testkit::netns::in_new_netns(|| -> Result<NftBackend, String> {
        let text = jumpset_testkit::table::kube_proxy_scale(0);
        let sc = jumpset_testkit::scenario::parse(&text)?;
        let chains: Vec<&str> = sc.chains.iter().map(String::as_str).collect();
        let rules: Vec<_> = sc.chain("PREROUTING").into_iter().cloned().collect();
        let mut nft = NftBackend::open().map_err(|e| e.to_string())?;
        nft.load(Family::Ip, "nat", "PREROUTING", &chains, &rules)
            .map_err(|e| e.to_string())?;
        Ok(nft)
    })
    .map_err(|e| e.to_string())?
}

fn kernel(c: &mut Criterion) {
    let mut nft = match harvester_namespace() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skipping the kernel benches (they need root for a network namespace): {e}");
            return;
        }
    };
    let spec = jumpset_testkit::fixtures::harvester_spec(CommentEncoding::Xt);
    let o = reconcile::reconcile(&mut nft, Family::Ip, &spec, Goal::Converge).unwrap();
    assert!(!o.committed, "the loaded chain is converged");
    let mut g = c.benchmark_group("kernel_nft");
    g.bench_function("read", |b| {
        b.iter(|| nft.read(Family::Ip, "nat", "PREROUTING").unwrap())
    });
    g.bench_function("noop_reconcile", |b| {
        b.iter(|| reconcile::reconcile(&mut nft, Family::Ip, &spec, Goal::Converge).unwrap())
    });
    g.bench_function("dump_raw", |b| {
        b.iter(|| nft.dump_raw(Family::Ip, "nat", "PREROUTING").unwrap())
    });
    g.finish();
}

criterion_group!(benches, kernel);
criterion_main!(benches);
