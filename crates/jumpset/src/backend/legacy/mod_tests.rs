//! The backend's pure half: planner output → the rebuilt chain, on captured tables.

use super::*;
use crate::plan::{self, Slot as PlanSlot};
use crate::snapshot::{Rule, Verdict};
use crate::spec::Config;
use proptest::prelude::*;

const HARVESTER: &[u8] = include_bytes!("../../../testdata/legacy/ip-nat-harvester-broken.bin");

fn spec() -> ChainSpec {
    let toml = include_str!("../../../testdata/harvester.toml").replace("\"auto\"", "\"legacy\"");
    Config::from_toml(&toml).unwrap().chains.remove(0)
}

fn harvester() -> Table<'static> {
    let info = Info::parse(&HARVESTER[..blob::INFO_SIZE]).unwrap();
    Table::decode(Family::Ip, &info, &HARVESTER[blob::INFO_SIZE..]).unwrap()
}

/// What the kernel would hand back after a replace with `t`: GET_INFO and the blob.
fn reread(t: &Table) -> (Info, Vec<u8>) {
    let (blob, enc) = t.encode().unwrap();
    let info = Info::parse(&HARVESTER[..blob::INFO_SIZE]).unwrap();
    (enc.info(&info), blob)
}

fn decode((info, blob): &(Info, Vec<u8>)) -> Table<'_> {
    Table::decode(Family::Ip, info, blob).unwrap()
}

/// Plan `t`'s PREROUTING for `goal`, rebuild as `apply` does, and decode the result.
fn apply_plan(t: &Table, goal: crate::reconcile::Goal) -> (Snapshot, Plan, Snapshot) {
    let spec = spec();
    let snap = snapshot_of(t, "nat", "PREROUTING");
    let plan = crate::reconcile::plan_for(goal, &snap, &spec);
    let mut t = t.clone();
    for op in &plan.ops {
        if let Op::Insert { jump, .. } = op {
            t.ensure_chain(&spec.jumps[*jump].target).unwrap();
        }
    }
    let slots = LegacyBackend::slots(&snap, &spec, &plan).unwrap();
    t.set_rules("PREROUTING", &slots).unwrap();
    let after = snapshot_of(&decode(&reread(&t)), "nat", "PREROUTING");
    (snap, plan, after)
}

fn shape(r: &Rule) -> (Option<String>, Vec<crate::snapshot::Match>, Verdict) {
    (
        r.comment.as_ref().map(|c| c.text()),
        r.matches.clone(),
        r.verdict.clone(),
    )
}

#[test]
fn the_broken_harvester_chain_is_planned_and_rebuilt_into_the_healthy_one() {
    let (snap, plan, after) = apply_plan(&harvester(), crate::reconcile::Goal::Converge);
    assert_eq!(snap.generation, 19);
    assert_eq!(plan.ops.len(), 2);
    let text: Vec<String> = after.rules.iter().map(Rule::iptables).collect();
    assert_eq!(
        text,
        [
            r#"-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING"#,
            r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#,
            r#"-m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
            "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        ]
    );
    assert_eq!(after.generation, 17);
    assert_eq!(
        after.rules[0].counters.unwrap().packets,
        9,
        "kept rules keep their bytes"
    );
    assert!(plan::plan(&after, &spec()).ops.is_empty());
}

#[test]
fn cleanup_leaves_only_the_foreign_rules() {
    let (snap, _, after) = apply_plan(&harvester(), crate::reconcile::Goal::Remove);
    let foreign: Vec<_> = snap
        .rules
        .iter()
        .filter(|r| {
            r.comment.as_ref().map(|c| c.text()) != Some("kube-ovn prerouting rules".into())
        })
        .map(shape)
        .collect();
    assert_eq!(after.rules.iter().map(shape).collect::<Vec<_>>(), foreign);
}

#[test]
fn a_missing_target_chain_is_created_in_name_order() {
    // The empty nat table: the jump's chain does not exist yet.
    let bytes = include_bytes!("../../../testdata/legacy/ip-nat-empty.bin");
    let info = Info::parse(&bytes[..blob::INFO_SIZE]).unwrap();
    let t = Table::decode(Family::Ip, &info, &bytes[blob::INFO_SIZE..]).unwrap();
    let (_, plan, after) = apply_plan(&t, crate::reconcile::Goal::Converge);
    assert_eq!(plan.ops.len(), 1);
    assert_eq!(after.rules.len(), 1);
    assert_eq!(
        after.rules[0].verdict,
        Verdict::Jump("OVN-PREROUTING".into())
    );
    assert_eq!(after.generation, 5 + 3, "head, footer and the rule");
}

#[test]
fn a_plan_naming_handles_the_chain_does_not_have_is_refused() {
    let spec = spec();
    let snap = snapshot_of(&harvester(), "nat", "PREROUTING");
    let mut plan = plan::plan(&snap, &spec);
    if let Some(Op::Delete { handle, .. }) = plan.ops.first_mut() {
        *handle = 99;
    }
    assert!(matches!(
        LegacyBackend::slots(&snap, &spec, &plan),
        Err(BackendError::Unsupported(_))
    ));
}

/// Rules a random chain is made of: (comment, target) jumps, or the capture's addrtype rule.
const POOL: &[(Option<&str>, &str)] = &[
    (Some("kube-ovn prerouting rules"), "OVN-PREROUTING"),
    (Some("kube-ovn prerouting rules"), "KUBE-SERVICES"),
    (Some("cali:6gwbT8clXdHdC1b1"), "cali-PREROUTING"),
    (Some("kubernetes service portals"), "KUBE-SERVICES"),
    (Some("someone else"), "OVN-PREROUTING"),
    (None, "CNI-HOSTPORT-DNAT"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the chain, the planned rebuild decodes to exactly `plan.result` and
    /// re-planning it finds nothing left to do.
    #[test]
    fn the_rebuilt_chain_is_exactly_the_planned_result(items in prop::collection::vec(0..POOL.len(), 0..10), cleanup in any::<bool>()) {
        let mut t = harvester();
        let mut slots = Vec::new();
        let mut addrtype_used = false;
        for &i in &items {
            match POOL[i] {
                (Some(c), target) => slots.push(blob::Slot::Jump { comment: c.as_bytes(), target }),
                (None, _) if !addrtype_used => {
                    addrtype_used = true;
                    slots.push(blob::Slot::Keep(5));
                }
                (None, _) => {}
            }
        }
        t.set_rules("PREROUTING", &slots).unwrap();
        let read = reread(&t);
        let t = decode(&read);
        let goal = if cleanup { crate::reconcile::Goal::Remove } else { crate::reconcile::Goal::Converge };
        let (snap, plan, after) = apply_plan(&t, goal);
        let spec = spec();
        let want: Vec<_> = plan
            .result
            .iter()
            .map(|s| match *s {
                PlanSlot::Existing(i) => shape(&snap.rules[i]),
                PlanSlot::New(j) => (Some(spec.jumps[j].comment.clone()), vec![], Verdict::Jump(spec.jumps[j].target.clone())),
            })
            .collect();
        prop_assert_eq!(after.rules.iter().map(shape).collect::<Vec<_>>(), want);
        prop_assert!(crate::reconcile::plan_for(goal, &after, &spec).ops.is_empty());
        if plan.ops.is_empty() {
            prop_assert_eq!(&after.rules, &snap.rules);
        }
    }
}
