//! `jumpset demo`: the Harvester incident and its repair, in a throwaway network
//! namespace. jumpset writes the broken chain itself (product code runs no iptables),
//! shows it, repairs it in one transaction, shows the result, and shows that a second
//! run changes nothing. Packets show what the chain does (`packets`): a client and a pod
//! in throwaway namespaces of their own, new connections to a Service VIP and a hostPort
//! before and after the repair. The namespace the process was started in is never touched.

mod packets;

use crate::output::{require_capability, CmdError, EXIT_KERNEL, EXIT_PRIVILEGE};
use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use jumpset::plan::Role;
use jumpset::reconcile::{self, Goal};
use jumpset::report;
use jumpset::snapshot::Family;
use jumpset::spec::Config;
use jumpset_testkit::scenario;
use std::io::Write;
use std::time::Instant;

use jumpset_testkit::fixtures::{HARVESTER_BROKEN, HARVESTER_HEALTHY, HARVESTER_TOML};

fn kernel(e: impl std::fmt::Display) -> CmdError {
    CmdError::new(EXIT_KERNEL, e.to_string())
}

fn write(out: &mut (dyn Write + Send), s: String) -> Result<(), CmdError> {
    out.write_all(s.as_bytes()).map_err(kernel)
}

/// Run the demo, writing its story to `out`.
pub fn run(out: &mut (dyn Write + Send)) -> Result<(), CmdError> {
    require_capability(
        caps::Capability::CAP_SYS_ADMIN,
        "to create the demo's throwaway network namespace",
    )?;
    require_capability(caps::Capability::CAP_NET_ADMIN, "to talk to nf_tables")?;
    jumpset_testkit::netns::in_new_netns(|| story(out)).map_err(|e| {
        CmdError::new(
            EXIT_PRIVILEGE,
            format!("cannot create a network namespace: {e}"),
        )
    })?
}

fn story(out: &mut (dyn Write + Send)) -> Result<(), CmdError> {
    let w = |out: &mut (dyn Write + Send), s: String| out.write_all(s.as_bytes()).map_err(kernel);
    let cfg = Config::from_toml(HARVESTER_TOML).map_err(kernel)?;
    let spec = &cfg.chains()[0];
    let broken = scenario::parse(HARVESTER_BROKEN).map_err(kernel)?;
    let healthy = scenario::parse(HARVESTER_HEALTHY).map_err(kernel)?;
    let (table, chain) = (spec.table(), spec.chain());

    w(out, "jumpset demo: the Harvester v1.5.0 incident (Canal + kube-proxy + portmap + Kube-OVN v1.13)\n".into())?;
    w(out, "Everything below happens in throwaway network namespaces (this node, a client and a pod);\nthe host's rules and links are not touched.\n\n".into())?;

    let mut nft = NftBackend::open().map_err(kernel)?;
    let chains: Vec<&str> = broken.chains.iter().map(String::as_str).collect();
    let rules: Vec<_> = broken.chain(chain).into_iter().cloned().collect();
    nft.load(Family::Ip, table, chain, &chains, &rules)
        .map_err(kernel)?;
    let dp = packets::set_up(&mut nft)?;

    let snap = nft.read(Family::Ip, table, chain).map_err(kernel)?;
    let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
    w(out, "1. nat PREROUTING as the agents left it: Kube-OVN inserted its jump at position 1\n   again and again, ahead of Calico, and deleted by index (\"Index of deletion too big\").\n\n".into())?;
    w(
        out,
        indent(&crate::render::status(&report::ChainStatus::new(
            &snap, spec, &plan,
        ))),
    )?;
    packets::before_repair(out, &mut nft, &dp, chain)?;
    let snap = nft.read(Family::Ip, table, chain).map_err(kernel)?;
    let plan = reconcile::plan_for(Goal::Converge, &snap, spec);

    w(out, "\n2. The spec (harvester.toml): jumpset owns Kube-OVN's jump, identified by its comment.\n".into())?;
    for j in spec.jumps() {
        w(
            out,
            format!(
                "   {}  after [{}]  before [{}]\n",
                report::jump_text(spec, 0),
                j.after().join(", "),
                j.before().join(", ")
            ),
        )?;
    }
    w(out, "\n3. The plan: keep the copy that is already in place, delete the duplicates (by handle, never by index).\n".into())?;
    for l in report::ChainPlan::new(&snap, spec, &plan).lines() {
        w(out, format!("   {l}\n"))?;
    }

    let t = Instant::now();
    let o = reconcile::reconcile(&mut nft, Family::Ip, spec, Goal::Converge).map_err(kernel)?;
    let took = t.elapsed();
    w(out, format!(
        "\n4. Applied as ONE nf_tables transaction, guarded by generation {}: generation {} -> {}, {} change(s), {:.2} ms (read, plan, commit, read back).\n\n",
        o.generation_before, o.generation_before, o.generation_after, o.plan.ops.len(), took.as_secs_f64() * 1000.0
    ))?;
    let after = nft.read(Family::Ip, table, chain).map_err(kernel)?;
    let plan_after = reconcile::plan_for(Goal::Converge, &after, spec);
    w(
        out,
        indent(&crate::render::status(&report::ChainStatus::new(
            &after,
            spec,
            &plan_after,
        ))),
    )?;

    let want: Vec<String> = healthy.chain(chain).iter().map(|r| r.iptables()).collect();
    let got: Vec<String> = after.rules.iter().map(|r| r.iptables()).collect();
    if want != got {
        return Err(kernel(format!(
            "the repaired chain differs from harvester-healthy.rules:\n  want {want:?}\n  got  {got:?}"
        )));
    }
    let kept = |s: &jumpset::snapshot::Snapshot, roles: &[Role]| -> Vec<u64> {
        s.rules
            .iter()
            .zip(roles)
            .filter(|(_, r)| **r == Role::Foreign)
            .map(|(r, _)| r.handle)
            .collect()
    };
    let foreign_before = kept(&snap, &plan.roles);
    let foreign_after = kept(&after, &plan_after.roles);
    w(out, format!(
        "\n   The chain now matches harvester-healthy.rules: Calico first, Kube-OVN second, kube-proxy, hostport.\n   Foreign rules kept their handles ({foreign_before:?} before, {foreign_after:?} after) and counters.\n"
    ))?;
    packets::after_repair(out, &mut nft, &dp)?;

    let again = reconcile::reconcile(&mut nft, Family::Ip, spec, Goal::Converge).map_err(kernel)?;
    w(
        out,
        format!(
            "\n5. A second run: {} — nothing committed, generation stays {}.\n",
            if again.committed {
                "changed something (unexpected)"
            } else {
                "the chain is in order"
            },
            again.generation_after
        ),
    )?;
    if again.committed {
        return Err(kernel("the second run committed a change; it must not"));
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
