//! The pure part of `explain` on hand-built evidence: the order (derived, from a hook
//! dump, from a dump that lists the nat chains), the owners, the ties, every finding, and
//! the managed chains' reasons. The real kernel's side is tests/explain.rs.

use super::facts::TABLE_DORMANT;
use super::*;
use crate::backend::legacy::blob::ChainSummary;
use crate::backend::nft::codec::{HookDesc, HookInfo};
use crate::fixtures::{jump, snap};
use crate::snapshot::Verdict;

const IP: u8 = 2;
const INET: u8 = 1;

fn table(family: u8, name: &str, handle: u64) -> NftTable {
    NftTable {
        family,
        name: name.into(),
        handle,
        flags: 0,
    }
}

#[allow(clippy::too_many_arguments)]
fn base(
    family: u8,
    table: &str,
    name: &str,
    handle: u64,
    hook: u32,
    prio: i32,
    ty: &str,
    rules: usize,
) -> NftChain {
    NftChain {
        family,
        table: table.into(),
        name: name.into(),
        handle,
        base: Some(BaseHook {
            hook,
            priority: prio,
            chain_type: ty.into(),
            policy: Some(1),
        }),
        rules,
    }
}

fn user(family: u8, table: &str, name: &str, rules: usize) -> NftChain {
    NftChain {
        family,
        table: table.into(),
        name: name.into(),
        handle: 99,
        base: None,
        rules,
    }
}

fn xt(name: &str, chains: &[(&str, Option<u32>, usize)]) -> XtTable {
    XtTable {
        family: Family::Ip,
        name: name.into(),
        chains: Ok(chains
            .iter()
            .map(|&(n, hook, rules)| ChainSummary {
                name: n.into(),
                hook,
                rules,
                policy: hook.map(|_| Verdict::Accept),
            })
            .collect()),
    }
}

/// A node where iptables-nft's nat table came first, then Calico's and kube-proxy's
/// nftables tables, then firewalld's inet table; x_tables has mangle and nat.
fn node() -> Evidence {
    Evidence {
        generation: 7,
        tables: vec![
            table(IP, "nat", 1),
            table(IP, "calico", 2),
            table(IP, "kube-proxy", 3),
            table(INET, "firewalld", 4),
        ],
        chains: vec![
            base(IP, "nat", "PREROUTING", 1, 0, -100, "nat", 3),
            user(IP, "nat", "cali-PREROUTING", 2),
            user(IP, "nat", "OVN-PREROUTING", 0),
            user(IP, "nat", "KUBE-SERVICES", 5),
            base(IP, "calico", "raw-PREROUTING", 1, 0, -300, "filter", 1),
            base(IP, "calico", "mangle-PREROUTING", 2, 0, -150, "filter", 1),
            base(IP, "calico", "nat-PREROUTING", 3, 0, -100, "nat", 1),
            base(IP, "calico", "nat-OUTPUT", 4, 3, 100, "nat", 1),
            base(
                IP,
                "kube-proxy",
                "filter-prerouting",
                1,
                0,
                -110,
                "filter",
                1,
            ),
            base(IP, "kube-proxy", "nat-prerouting", 2, 0, -100, "nat", 1),
            base(IP, "kube-proxy", "filter-output", 3, 3, -110, "filter", 1),
            base(
                INET,
                "firewalld",
                "mangle_PREROUTING",
                1,
                0,
                -140,
                "filter",
                1,
            ),
            base(INET, "firewalld", "nat_PREROUTING", 2, 0, -90, "nat", 1),
            base(
                INET,
                "firewalld",
                "filter_PREROUTING",
                3,
                0,
                10,
                "filter",
                1,
            ),
            base(INET, "firewalld", "filter_OUTPUT", 4, 3, 10, "filter", 1),
        ],
        xt: vec![
            xt(
                "mangle",
                &[
                    ("PREROUTING", Some(0), 0),
                    ("INPUT", Some(1), 0),
                    ("FORWARD", Some(2), 0),
                    ("OUTPUT", Some(3), 0),
                    ("POSTROUTING", Some(4), 0),
                ],
            ),
            xt(
                "nat",
                &[
                    ("PREROUTING", Some(0), 2),
                    ("INPUT", Some(1), 0),
                    ("OUTPUT", Some(3), 0),
                    ("POSTROUTING", Some(4), 0),
                    ("KUBE-SERVICES", None, 4),
                ],
            ),
        ],
        dumps: Vec::new(),
        snapshots: Vec::new(),
    }
}

fn labels(p: &HookPath) -> Vec<String> {
    p.path.iter().map(Step::label).collect()
}

fn harvester() -> Config {
    Config::from_toml(include_str!("../../testdata/harvester.toml")).unwrap()
}

fn req<'a>(cfg: Option<&'a Config>, hooks: &[Hook]) -> Request<'a> {
    let mut r = Request::new(cfg);
    r.families = vec![Family::Ip];
    r.hooks = hooks.to_vec();
    r
}

#[test]
fn without_a_hook_dump_the_order_is_derived_and_nat_chains_run_in_the_nat_hook() {
    let ev = node();
    let x = analyze(&req(None, &[Hook::Prerouting]), &ev);
    let p = &x.hooks[0];
    assert_eq!(p.order, OrderSource::Derived);
    assert_eq!(
        labels(p),
        [
            "ip calico raw-PREROUTING",
            // Equal priority: the newest nf_tables table first, x_tables after (a guess).
            "ip calico mangle-PREROUTING",
            "x_tables ip mangle PREROUTING",
            "inet firewalld mangle_PREROUTING",
            "ip kube-proxy filter-prerouting",
            // The NAT hook at -100: nat chains by their own priority, newest first.
            "ip kube-proxy nat-prerouting",
            "ip calico nat-PREROUTING",
            "ip nat PREROUTING",
            "x_tables ip nat PREROUTING",
            "inet firewalld nat_PREROUTING",
            "inet firewalld filter_PREROUTING",
        ]
    );
    let nat: Vec<(bool, i32, i32)> = p
        .path
        .iter()
        .map(|s| (s.nat, s.priority, s.runs_at))
        .collect();
    assert_eq!(
        nat[5..10],
        [
            (true, -100, -100),
            (true, -100, -100),
            (true, -100, -100),
            (true, -100, -100),
            (true, -90, -100)
        ]
    );
    assert!(!nat[4].0 && !nat[10].0);
    let h = p.nat_hook.as_ref().unwrap();
    assert_eq!((h.priority, h.priority_name.as_str()), (-100, "dstnat"));
    assert!(h.tied_with.is_empty());
    // Owners, names, positions.
    let s = &p.path[9];
    assert_eq!(
        (
            s.position,
            s.owner,
            s.priority_name.as_str(),
            s.family.as_str()
        ),
        (10, "firewalld", "dstnat + 10", "inet")
    );
    assert_eq!(p.path[8].owner, "iptables-legacy");
    assert_eq!(p.path[7].owner, "iptables-nft");
    assert_eq!(p.path[0].owner, "calico");
    assert_eq!(p.path[4].owner, "kube-proxy");
    assert_eq!(p.path[4].priority_name, "dstnat - 10");
    // The ties are flagged, their order unknown; the rest is known.
    assert_eq!(p.path[1].tied_with, ["x_tables ip mangle PREROUTING"]);
    assert!(!p.path[1].order_known && !p.path[2].order_known);
    assert!(p.path[0].order_known && p.path[3].order_known);
    assert_eq!(p.path[5].tied_with.len(), 3);
    assert!(p.notes.iter().any(|n| n.contains("registration order")));
    assert!(p.notes.iter().any(|n| n.contains("first packet only")));
    // Findings: both ties (top level at mangle, inside the NAT hook at dstnat).
    let ties: Vec<&Finding> = x
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::PriorityTie)
        .collect();
    assert_eq!(ties.len(), 2, "{ties:#?}");
    assert!(
        ties[0].summary.contains("priority mangle (-150)"),
        "{}",
        ties[0].summary
    );
    assert!(
        ties[1].summary.contains("inside the NAT hook"),
        "{}",
        ties[1].summary
    );
    assert_eq!(ties[1].evidence.len(), 5);
    assert!(ties[1].evidence[4].contains("no hook dump"));
}

#[test]
fn a_nat_chain_declared_on_the_other_side_of_a_chain_is_told_where_it_runs() {
    // Calico's nat-OUTPUT declares srcnat (100) on output, where the NAT hook runs at -100:
    // before firewalld's filter_OUTPUT (filter + 10), not after it.
    let ev = node();
    let x = analyze(&req(None, &[Hook::Output]), &ev);
    let p = &x.hooks[0];
    assert_eq!(
        labels(p),
        [
            "x_tables ip mangle OUTPUT",
            "ip kube-proxy filter-output",
            // The NAT hook at -100: iptable_nat's chain (its own priority is the NAT
            // hook's), then Calico's at srcnat.
            "x_tables ip nat OUTPUT",
            "ip calico nat-OUTPUT",
            "inet firewalld filter_OUTPUT",
        ]
    );
    assert_eq!(p.path[0].chain_type.as_deref(), Some("route"));
    assert_eq!((p.path[3].priority, p.path[3].runs_at), (100, -100));
    assert_eq!(
        p.path[3].priority_name, "100",
        "nft names srcnat on postrouting only"
    );
    let f: Vec<&Finding> = x
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::NatRunsAtNatHook)
        .collect();
    assert_eq!(f.len(), 1);
    assert!(
        f[0].summary
            .contains("before inet firewalld filter_OUTPUT, not after"),
        "{}",
        f[0].summary
    );
    assert_eq!(f[0].severity, Severity::Info);
}

fn hook(prio: i32, function: &str, desc: Option<HookDesc>) -> HookInfo {
    HookInfo {
        hooknum: 0,
        priority: prio,
        function: Some(function.into()),
        module: None,
        dev: None,
        desc,
    }
}

fn chain_of(family: u8, table: &str, chain: &str) -> Option<HookDesc> {
    Some(HookDesc::Chain {
        table: table.into(),
        family,
        chain: chain.into(),
    })
}

#[test]
fn a_hook_dump_gives_the_kernels_order_with_what_else_runs_there() {
    let mut ev = node();
    // What a kernel with the hook dump (before 7.1) lists for this node: the tie at -150
    // resolved the other way round than the guess (x_tables mangle registered last).
    let dump = vec![
        hook(-400, "ipv4_conntrack_defrag", None),
        hook(
            -300,
            "nft_do_chain_ipv4",
            chain_of(IP, "calico", "raw-PREROUTING"),
        ),
        hook(-200, "ipv4_conntrack_in", None),
        hook(-150, "iptable_mangle_hook", None),
        hook(
            -150,
            "nft_do_chain_ipv4",
            chain_of(IP, "calico", "mangle-PREROUTING"),
        ),
        hook(
            -140,
            "nft_do_chain_inet",
            chain_of(INET, "firewalld", "mangle_PREROUTING"),
        ),
        hook(
            -110,
            "nft_do_chain_ipv4",
            chain_of(IP, "kube-proxy", "filter-prerouting"),
        ),
        hook(-100, "nf_nat_ipv4_pre_routing", None),
        hook(
            10,
            "nft_do_chain_inet",
            chain_of(INET, "firewalld", "filter_PREROUTING"),
        ),
    ];
    ev.dumps.push((Family::Ip, Hook::Prerouting, Some(dump)));
    let x = analyze(&req(None, &[Hook::Prerouting]), &ev);
    let p = &x.hooks[0];
    assert_eq!(p.order, OrderSource::HookDump);
    assert_eq!(
        labels(p),
        [
            "kernel ipv4_conntrack_defrag",
            "ip calico raw-PREROUTING",
            "kernel ipv4_conntrack_in",
            "x_tables ip mangle PREROUTING",
            "ip calico mangle-PREROUTING",
            "inet firewalld mangle_PREROUTING",
            "ip kube-proxy filter-prerouting",
            "ip kube-proxy nat-prerouting",
            "ip calico nat-PREROUTING",
            "ip nat PREROUTING",
            "x_tables ip nat PREROUTING",
            "inet firewalld nat_PREROUTING",
            "inet firewalld filter_PREROUTING",
        ]
    );
    assert_eq!(
        p.nat_hook.as_ref().unwrap().function.as_deref(),
        Some("nf_nat_ipv4_pre_routing")
    );
    // The dump orders the hooks; the nat chains behind the NAT hook it does not show:
    // their tie stays unknown.
    assert!(p.path.iter().filter(|s| !s.nat).all(|s| s.order_known));
    assert!(p.path[7].nat && !p.path[7].order_known);
    assert_eq!(p.nat_hook.as_ref().unwrap().order, OrderSource::Derived);
    assert!(
        p.notes.iter().any(|n| n.contains("not the nat chains")),
        "{:?}",
        p.notes
    );
    assert_eq!(p.path[0].owner, "kernel");
    let ties: Vec<&Finding> = x
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::PriorityTie)
        .collect();
    assert_eq!(ties.len(), 2, "{ties:#?}");
    let last = |f: &Finding| f.evidence.last().unwrap().clone();
    assert!(
        last(ties[0]).contains("hook dump shows the order"),
        "{ties:#?}"
    );
    assert!(
        last(ties[1]).contains("does not list the nat chains"),
        "{ties:#?}"
    );
}

#[test]
fn a_hook_dump_that_lists_the_nat_chains_gives_their_order_too() {
    // Linux 7.1+ ("nfnetlink_hook: Dump nat type chains"): each nat chain at the NAT
    // hook's priority, in the NAT core's order — here iptable_nat registered last. Its
    // function is `iptable_nat_do_chain`, or `ipt_do_table` where the kernel hooks that.
    for xt_nat in ["iptable_nat_do_chain", "ipt_do_table"] {
        let mut ev = node();
        let dump = vec![
            hook(
                -110,
                "nft_do_chain_ipv4",
                chain_of(IP, "kube-proxy", "filter-prerouting"),
            ),
            hook(-100, xt_nat, None),
            hook(-100, "nft_nat_do_chain", chain_of(IP, "nat", "PREROUTING")),
            hook(
                -100,
                "nft_nat_do_chain",
                chain_of(IP, "calico", "nat-PREROUTING"),
            ),
            hook(
                -100,
                "nft_nat_do_chain",
                chain_of(IP, "kube-proxy", "nat-prerouting"),
            ),
            hook(
                -100,
                "nft_nat_do_chain",
                chain_of(INET, "firewalld", "nat_PREROUTING"),
            ),
            hook(
                10,
                "nft_do_chain_inet",
                chain_of(INET, "firewalld", "filter_PREROUTING"),
            ),
        ];
        ev.dumps.push((Family::Ip, Hook::Prerouting, Some(dump)));
        let x = analyze(&req(None, &[Hook::Prerouting]), &ev);
        let p = &x.hooks[0];
        assert_eq!(
            labels(p),
            [
                "ip kube-proxy filter-prerouting",
                "x_tables ip nat PREROUTING",
                "ip nat PREROUTING",
                "ip calico nat-PREROUTING",
                "ip kube-proxy nat-prerouting",
                "inet firewalld nat_PREROUTING",
                "inet firewalld filter_PREROUTING",
            ]
        );
        assert!(p.path[1..6].iter().all(|s| s.nat && s.runs_at == -100));
        assert_eq!(
            p.path[5].priority, -90,
            "its own priority, from the chain dump"
        );
        assert!(
            p.path.iter().all(|s| s.order_known),
            "the dump gives every order"
        );
        assert_eq!(p.nat_hook.as_ref().unwrap().order, OrderSource::HookDump);
        // Base chains the dump does not show are said to be missing from it.
        assert!(
            p.notes.iter().any(|n| n.contains("raw-PREROUTING")),
            "{:?}",
            p.notes
        );
    }
}

#[test]
fn dormant_tables_are_not_on_the_path_and_are_found() {
    let mut ev = node();
    ev.tables[1].flags = TABLE_DORMANT;
    let x = analyze(&req(None, &[Hook::Prerouting]), &ev);
    let p = &x.hooks[0];
    assert!(!labels(p).iter().any(|l| l.contains("calico")));
    assert_eq!(p.dormant.len(), 3);
    let f: Vec<&Finding> = x
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::DormantTable)
        .collect();
    assert_eq!(f.len(), 1);
    assert!(f[0].summary.starts_with("ip calico: the table is dormant"));
    assert_eq!(f[0].evidence.len(), 4, "its four base chains");
    assert!(f[0].what_to_do.contains("nft add table ip calico"));
}

#[test]
fn the_managed_chain_is_marked_its_rules_owned_and_each_jump_given_its_reason() {
    let cfg = harvester();
    let mut ev = node();
    // auto on a mixed host without a hint: both backends' copies are read.
    ev.snapshots.push((
        "nft",
        snap(vec![
            jump(4, "cali:6gwbT8clXdHdC1b1", "cali-PREROUTING"),
            jump(5, "kube-ovn prerouting rules", "OVN-PREROUTING"),
            jump(6, "kubernetes service portals", "KUBE-SERVICES"),
        ]),
    ));
    let x = analyze(&req(Some(&cfg), &[Hook::Prerouting]), &ev);
    let p = &x.hooks[0];
    let managed: Vec<String> = p
        .path
        .iter()
        .filter(|s| s.managed)
        .map(Step::label)
        .collect();
    assert_eq!(managed, ["ip nat PREROUTING", "x_tables ip nat PREROUTING"]);
    assert_eq!(
        x.chains.len(),
        1,
        "the legacy copy was not read: no snapshot"
    );
    let c = &x.chains[0];
    assert_eq!(c.backend, "nft");
    let owners: Vec<&str> = c.status.rules.iter().map(|r| r.owner.as_str()).collect();
    assert_eq!(owners, ["calico", "jumpset", "kube-proxy"]);
    assert_eq!(
        c.reasons[0].reason,
        "after cali-PREROUTING (position 1), before KUBE-SERVICES (position 3) (CNI-HOSTPORT-DNAT absent: constrains nothing)"
    );
    let kinds: Vec<FindingKind> = x.findings.iter().map(|f| f.kind).collect();
    // The host is mixed (rules in both backends' nat), OVN-PREROUTING is empty,
    // KUBE-SERVICES exists in both nat tables.
    for k in [
        FindingKind::MixedBackends,
        FindingKind::EmptyTarget,
        FindingKind::SameTargetTwoTables,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing: {:#?}", x.findings);
    }
    let mixed = x
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::MixedBackends)
        .unwrap();
    assert!(
        mixed
            .evidence
            .iter()
            .any(|e| e.starts_with("prerouting: a packet runs")),
        "{mixed:#?}"
    );
    let same = x
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::SameTargetTwoTables)
        .unwrap();
    assert!(same.summary.contains("KUBE-SERVICES"), "{same:#?}");
    assert_eq!(same.evidence.len(), 2);
    let json = serde_json::to_value(&x).unwrap();
    assert_eq!(json["findings"][0]["kind"], "priority_tie");
    assert_eq!(json["hooks"][0]["order"], "derived");
    assert_eq!(json["hooks"][0]["path"][0]["type"], "filter");
    assert_eq!(json["chains"][0]["reasons"][0]["placed"], "kept");
    assert_eq!(json["chains"][0]["rules"][1]["owner"], "jumpset");
}

#[test]
fn a_drop_policy_before_the_managed_chain_and_a_missing_target_are_found() {
    let cfg = Config::from_toml(
        &include_str!("../../testdata/harvester.toml")
            .replace("backend  = \"auto\"", "backend = \"nft\"")
            .replace("create_chain = true", "create_chain = false"),
    )
    .unwrap();
    let mut ev = node();
    ev.xt.clear();
    ev.chains.retain(|c| c.name != "OVN-PREROUTING");
    let mangle = ev
        .chains
        .iter_mut()
        .find(|c| c.name == "mangle-PREROUTING")
        .unwrap();
    mangle.base.as_mut().unwrap().policy = Some(0); // Calico's mangle drops
    ev.snapshots.push(("nft", snap(vec![])));
    let x = analyze(&req(Some(&cfg), &[Hook::Prerouting]), &ev);
    let drop: Vec<&Finding> = x
        .findings
        .iter()
        .filter(|f| f.kind == FindingKind::DropPolicyBefore)
        .collect();
    assert_eq!(drop.len(), 1, "{:#?}", x.findings);
    assert!(drop[0]
        .summary
        .contains("ip calico mangle-PREROUTING has policy drop"));
    assert!(drop[0].summary.contains("managed chain ip nat PREROUTING"));
    let missing = x
        .findings
        .iter()
        .find(|f| f.kind == FindingKind::MissingTarget)
        .unwrap();
    assert!(
        missing.what_to_do.contains("create_chain = false"),
        "{missing:#?}"
    );
    assert!(missing.what_to_do.contains("kube-ovn"), "{missing:#?}");
    assert!(!x
        .findings
        .iter()
        .any(|f| f.kind == FindingKind::MixedBackends));
    // Keys identify findings across reads (the daemon logs each once).
    let mut keys: Vec<&str> = x.findings.iter().map(|f| f.key.as_str()).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n);
}

#[test]
fn an_unreadable_x_tables_table_still_stands_on_the_path() {
    let mut ev = node();
    ev.xt[1].chains = Err("reading it needs CAP_NET_RAW".into());
    let x = analyze(&req(None, &[Hook::Prerouting]), &ev);
    let p = &x.hooks[0];
    let s = p
        .path
        .iter()
        .find(|s| s.label() == "x_tables ip nat PREROUTING")
        .unwrap();
    assert_eq!((s.rules, s.policy.as_deref(), s.nat), (None, None, true));
    assert!(p.notes.iter().any(|n| n.contains("CAP_NET_RAW")));
}
