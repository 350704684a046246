//! Planner tests: the seed scenario, the identity rules, conflicts, and properties checked
//! against random chains (every owned jump once, foreign order untouched, idempotent,
//! minimal by brute force).

use super::*;
use crate::fixtures::{bare, foreign, jump, snap};
use crate::snapshot::{CommentEncoding, Match};
use crate::spec::Config;
use proptest::prelude::*;

fn harvester() -> ChainSpec {
    Config::from_toml(include_str!("../testdata/harvester.toml"))
        .unwrap()
        .chains
        .remove(0)
}

const OVN: &str = "kube-ovn prerouting rules";
const CALI: &str = "cali:6gwbT8clXdHdC1b1";
const KUBE: &str = "kubernetes service portals";

/// Apply a plan the way the kernel would: deletes by handle, then each insert before the
/// rule with `before_handle` (or appended). New rules get handles from 1000 up.
fn apply(s: &Snapshot, spec: &ChainSpec, p: &Plan) -> Snapshot {
    let mut rules = s.rules.clone();
    let mut next = 1000 + s.rules.iter().map(|r| r.handle).max().unwrap_or(0);
    for op in &p.ops {
        match *op {
            Op::Delete { handle, .. } => {
                let before = rules.len();
                rules.retain(|r| r.handle != handle);
                assert_eq!(rules.len(), before - 1, "delete of unknown handle {handle}");
            }
            Op::Insert {
                jump: j,
                position,
                before_handle,
                after_handle,
            } => {
                let at = match before_handle {
                    Some(h) => rules.iter().position(|r| r.handle == h).unwrap(),
                    None => rules.len(),
                };
                // The printed position and the after_handle agree with the kernel position.
                assert_eq!(at + 1, position, "insert position");
                let above = rules[..at].last().map(|r| r.handle);
                if above.is_some_and(|h| h < 1000) || above.is_none() {
                    assert_eq!(above, after_handle);
                }
                let js = &spec.jumps[j];
                rules.insert(at, jump(next, &js.comment, &js.target));
                next += 1;
            }
        }
    }
    snap(rules)
}

fn targets(s: &Snapshot) -> Vec<&str> {
    s.rules.iter().map(|r| r.target().unwrap_or("-")).collect()
}

#[test]
fn harvester_broken_becomes_healthy_with_two_deletes() {
    let spec = harvester();
    let broken = snap(vec![
        jump(1, OVN, "OVN-PREROUTING"),
        jump(2, CALI, "cali-PREROUTING"),
        jump(3, OVN, "OVN-PREROUTING"),
        jump(4, KUBE, "KUBE-SERVICES"),
        jump(5, OVN, "OVN-PREROUTING"),
        foreign(6, "CNI-HOSTPORT-DNAT"),
    ]);
    let p = plan(&broken, &spec);
    assert!(p.conflicts.is_empty());
    assert_eq!(
        p.ops,
        vec![
            Op::Delete {
                handle: 1,
                index: 0,
                jump: 0,
                reason: DeleteReason::Duplicate
            },
            Op::Delete {
                handle: 5,
                index: 4,
                jump: 0,
                reason: DeleteReason::Duplicate
            },
        ]
    );
    assert_eq!(p.roles[2], Role::Owned(0));
    let healthy = apply(&broken, &spec, &p);
    assert_eq!(
        targets(&healthy),
        [
            "cali-PREROUTING",
            "OVN-PREROUTING",
            "KUBE-SERVICES",
            "CNI-HOSTPORT-DNAT"
        ]
    );
    assert!(plan(&healthy, &spec).is_noop());
}

#[test]
fn missing_jump_goes_right_after_its_after_anchor() {
    let spec = harvester();
    let s = snap(vec![
        jump(2, CALI, "cali-PREROUTING"),
        jump(4, KUBE, "KUBE-SERVICES"),
        foreign(6, "CNI-HOSTPORT-DNAT"),
    ]);
    let p = plan(&s, &spec);
    assert_eq!(
        p.ops,
        vec![Op::Insert {
            jump: 0,
            position: 2,
            after_handle: Some(2),
            before_handle: Some(4)
        }]
    );
    // Nothing to follow: just before the first `before` anchor.
    let s = snap(vec![foreign(9, "X"), jump(4, KUBE, "KUBE-SERVICES")]);
    let p = plan(&s, &spec);
    assert_eq!(
        p.ops,
        vec![Op::Insert {
            jump: 0,
            position: 2,
            after_handle: Some(9),
            before_handle: Some(4)
        }]
    );
    // No anchors at all: at the end; an empty chain gets it at the head.
    let s = snap(vec![foreign(9, "X")]);
    let p = plan(&s, &spec);
    assert_eq!(
        p.ops,
        vec![Op::Insert {
            jump: 0,
            position: 2,
            after_handle: Some(9),
            before_handle: None
        }]
    );
    let p = plan(&snap(vec![]), &spec);
    assert_eq!(
        p.ops,
        vec![Op::Insert {
            jump: 0,
            position: 1,
            after_handle: None,
            before_handle: None
        }]
    );
}

#[test]
fn identity_rules() {
    let spec = harvester();
    // Userdata encoding of the same comment is ours and in place: no drift.
    let mut ud = jump(3, OVN, "OVN-PREROUTING");
    ud.comment.as_mut().unwrap().encoding = CommentEncoding::Userdata;
    let s = snap(vec![
        jump(2, CALI, "cali-PREROUTING"),
        ud,
        jump(4, KUBE, "KUBE-SERVICES"),
    ]);
    assert!(plan(&s, &spec).is_noop());
    // A stale copy (wrong target, or goto) is replaced.
    let s = snap(vec![
        jump(2, CALI, "cali-PREROUTING"),
        bare(3, OVN, Verdict::Goto("OVN-PREROUTING".into())),
        jump(4, KUBE, "KUBE-SERVICES"),
    ]);
    let p = plan(&s, &spec);
    assert_eq!(p.roles[1], Role::Stale(0));
    assert_eq!(p.ops.len(), 2);
    // Our comment with another match, or our target without the comment: foreign, kept,
    // and the jump is still inserted.
    let mut extra = jump(3, OVN, "OVN-PREROUTING");
    extra.matches.push(Match::Opaque("-p tcp".into()));
    let s = snap(vec![
        jump(2, CALI, "cali-PREROUTING"),
        extra,
        foreign(5, "OVN-PREROUTING"),
        jump(4, KUBE, "KUBE-SERVICES"),
    ]);
    let p = plan(&s, &spec);
    assert_eq!(p.roles[1], Role::Foreign);
    assert_eq!(p.roles[2], Role::Foreign);
    assert!(
        p.ops.iter().all(|o| matches!(o, Op::Insert { .. })),
        "{:?}",
        p.ops
    );
    assert_eq!(p.ops.len(), 1);
}

#[test]
fn the_copy_that_needs_no_move_is_kept() {
    let spec = harvester();
    let s = snap(vec![
        jump(1, OVN, "OVN-PREROUTING"),
        jump(2, CALI, "cali-PREROUTING"),
        jump(4, KUBE, "KUBE-SERVICES"),
        jump(3, OVN, "OVN-PREROUTING"),
        jump(7, OVN, "OVN-PREROUTING"),
    ]);
    let p = plan(&s, &spec);
    // No copy is in a valid place: all three go, one is inserted.
    assert_eq!(p.ops.len(), 4);
    assert_eq!(p.roles[0], Role::Misplaced(0));
    let after = apply(&s, &spec, &p);
    assert_eq!(
        targets(&after),
        ["cali-PREROUTING", "OVN-PREROUTING", "KUBE-SERVICES"]
    );
}

#[test]
fn conflict_keeps_before_constraints_and_names_the_blockers() {
    let spec = harvester();
    let s = snap(vec![
        jump(4, KUBE, "KUBE-SERVICES"),
        jump(1, OVN, "OVN-PREROUTING"),
        jump(2, CALI, "cali-PREROUTING"),
        jump(8, OVN, "OVN-PREROUTING"),
        foreign(6, "CNI-HOSTPORT-DNAT"),
    ]);
    let p = plan(&s, &spec);
    assert_eq!(p.conflicts.len(), 1, "{:?}", p.conflicts);
    let c = &p.conflicts[0];
    assert_eq!(c.unmet, "after cali-PREROUTING");
    assert_eq!(c.comment, OVN);
    assert_eq!(c.blocking.len(), 1);
    assert_eq!(c.blocking[0].handle, 4);
    assert_eq!(c.blocking[0].target.as_deref(), Some("KUBE-SERVICES"));
    let after = apply(&s, &spec, &p);
    assert_eq!(
        targets(&after),
        [
            "OVN-PREROUTING",
            "KUBE-SERVICES",
            "cali-PREROUTING",
            "CNI-HOSTPORT-DNAT"
        ]
    );
    // Duplicates are gone, and planning again is stable: no churn, same conflict.
    let again = plan(&after, &spec);
    assert!(again.is_noop());
    assert_eq!(again.conflicts.len(), 1);
}

#[test]
fn cleanup_deletes_only_ours() {
    let spec = harvester();
    let s = snap(vec![
        jump(1, OVN, "OVN-PREROUTING"),
        jump(2, CALI, "cali-PREROUTING"),
        bare(3, OVN, Verdict::Jump("OLD".into())),
        foreign(5, "OVN-PREROUTING"),
    ]);
    let p = cleanup(&s, &spec);
    let deleted: Vec<u64> = p
        .ops
        .iter()
        .map(|o| match o {
            Op::Delete { handle, .. } => *handle,
            Op::Insert { .. } => panic!("cleanup inserts nothing"),
        })
        .collect();
    assert_eq!(deleted, vec![1, 3]);
}

#[test]
fn several_jumps_chain_through_each_other() {
    // A after cali; B after A; both before KUBE-SERVICES.
    let spec = Config::from_toml(
        r#"
[[chain]]
table = "nat"
chain = "PREROUTING"
  [[chain.jump]]
  target = "B"
  comment = "b"
  after = ["A"]
  before = ["KUBE-SERVICES"]
  [[chain.jump]]
  target = "A"
  comment = "a"
  after = ["cali-PREROUTING"]
  before = ["KUBE-SERVICES"]
"#,
    )
    .unwrap()
    .chains
    .remove(0);
    let s = snap(vec![
        jump(2, CALI, "cali-PREROUTING"),
        jump(4, KUBE, "KUBE-SERVICES"),
    ]);
    let p = plan(&s, &spec);
    let after = apply(&s, &spec, &p);
    assert_eq!(
        targets(&after),
        ["cali-PREROUTING", "A", "B", "KUBE-SERVICES"]
    );
    assert!(plan(&after, &spec).is_noop());
}

// ---- properties ----

thread_local! {
    /// (cases run, with conflicts, with ops) — printed to show the generator's reach.
    static STATS: std::cell::RefCell<(usize, usize, usize)> = const { std::cell::RefCell::new((0, 0, 0)) };
}

const POOL: [&str; 6] = ["F1", "F2", "F3", "J0", "J1", "J2"];

/// A random spec of 1..=3 jumps J0.. with constraints over POOL; `None` if cyclic.
fn spec_from(cons: &[(Vec<usize>, Vec<usize>)]) -> Option<ChainSpec> {
    let mut t = String::from("[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n");
    for (j, (after, before)) in cons.iter().enumerate() {
        let me = format!("J{j}");
        let names = |v: &[usize]| {
            v.iter()
                .map(|&i| POOL[i])
                .filter(|n| {
                    *n != me
                        && (!n.starts_with('J') || n[1..].parse::<usize>().unwrap() < cons.len())
                })
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (a, b) = (names(after), names(before));
        t.push_str(&format!(
            "[[chain.jump]]\ntarget = \"{me}\"\ncomment = \"c{j}\"\nafter = [{a}]\nbefore = [{b}]\n"
        ));
    }
    Config::from_toml(&t).ok().map(|mut c| c.chains.remove(0))
}

/// Rule kinds for random chains.
fn rule_from(kind: u8, x: usize, handle: u64) -> Rule {
    let jname = format!("J{}", x % 3);
    let comment = format!("c{}", x % 3);
    match kind % 6 {
        0 | 1 => jump(handle, &comment, &jname), // candidate (maybe)
        2 => foreign(handle, POOL[x % 6]),       // foreign, any target
        3 => jump(handle, &format!("other{x}"), POOL[x % 3]), // foreign bare jump
        4 => jump(handle, &comment, POOL[x % 3]), // stale copy
        _ => bare(handle, &comment, Verdict::Goto(jname)), // stale goto
    }
}

fn chain_strategy() -> impl Strategy<Value = Vec<(u8, usize)>> {
    prop::collection::vec((any::<u8>(), 0usize..6), 0..7)
}

fn spec_strategy() -> impl Strategy<Value = Vec<(Vec<usize>, Vec<usize>)>> {
    prop::collection::vec(
        (
            prop::collection::vec(0usize..6, 0..3),
            prop::collection::vec(0usize..6, 0..3),
        ),
        1..4,
    )
}

/// Is `rules` a valid end state: each jump exactly once as a correct bare jump, no stale
/// copy, every constraint not reported as a conflict met.
fn valid(rules: &[Rule], spec: &ChainSpec, conflicts: &[Conflict]) -> bool {
    for (j, js) in spec.jumps.iter().enumerate() {
        let copies = rules
            .iter()
            .filter(|r| owned_jump(r, &spec.jumps) == Some(j))
            .collect::<Vec<_>>();
        if copies.len() != 1 || copies[0].verdict != Verdict::Jump(js.target.clone()) {
            return false;
        }
    }
    let by_target: HashMap<&str, usize> = spec
        .jumps
        .iter()
        .enumerate()
        .map(|(i, j)| (j.target.as_str(), i))
        .collect();
    for e in all_edges(&spec.jumps, &by_target) {
        let unmet = match e.kind {
            Kind::After => format!("after {}", e.from),
            Kind::Before => format!("before {}", e.to),
        };
        if conflicts
            .iter()
            .any(|c| c.jump == e.owner && c.unmet == unmet)
        {
            continue;
        }
        let last_from = rules.iter().rposition(|r| r.target() == Some(e.from));
        let first_to = rules.iter().position(|r| r.target() == Some(e.to));
        if let (Some(a), Some(b)) = (last_from, first_to) {
            if a >= b {
                return false;
            }
        }
    }
    true
}

/// The fewest deletes + inserts of any valid end state, by brute force.
fn brute_force_min(s: &Snapshot, spec: &ChainSpec, conflicts: &[Conflict]) -> usize {
    let owned: Vec<usize> = (0..s.rules.len())
        .filter(|&i| owned_jump(&s.rules[i], &spec.jumps).is_some())
        .collect();
    let mut best = usize::MAX;
    // Every subset of owned rules to keep.
    for mask in 0u32..(1 << owned.len()) {
        let keep: Vec<usize> = owned
            .iter()
            .enumerate()
            .filter(|(b, _)| mask & (1 << b) != 0)
            .map(|(_, &i)| i)
            .collect();
        let base: Vec<Rule> = s
            .rules
            .iter()
            .enumerate()
            .filter(|(i, _)| !owned.contains(i) || keep.contains(i))
            .map(|(_, r)| r.clone())
            .collect();
        let present: Vec<usize> = keep
            .iter()
            .filter_map(|&i| owned_jump(&s.rules[i], &spec.jumps))
            .collect();
        let missing: Vec<usize> = (0..spec.jumps.len())
            .filter(|j| !present.contains(j))
            .collect();
        let cost = (owned.len() - keep.len()) + missing.len();
        if cost >= best {
            continue;
        }
        if any_insertion_valid(&base, &missing, spec, conflicts) {
            best = cost;
        }
    }
    best
}

fn any_insertion_valid(
    base: &[Rule],
    missing: &[usize],
    spec: &ChainSpec,
    conflicts: &[Conflict],
) -> bool {
    let Some((&j, rest)) = missing.split_first() else {
        return valid(base, spec, conflicts);
    };
    let js = &spec.jumps[j];
    (0..=base.len()).any(|at| {
        let mut next = base.to_vec();
        next.insert(at, jump(9999, &js.comment, &js.target));
        any_insertion_valid(&next, rest, spec, conflicts)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn planner_guarantees(chain in chain_strategy(), cons in spec_strategy()) {
        let Some(spec) = spec_from(&cons) else { return Ok(()); };
        let rules: Vec<Rule> = chain.iter().enumerate()
            .map(|(i, &(k, x))| rule_from(k, x, i as u64 + 1)).collect();
        let s = snap(rules);
        let p = plan(&s, &spec);
        // Foreign rules are never deleted.
        for op in &p.ops {
            if let Op::Delete { index, .. } = op {
                prop_assert_ne!(p.roles[*index], Role::Foreign);
            }
        }
        let after = apply(&s, &spec, &p);
        // Each owned jump exactly once, constraints met (but reported conflicts).
        prop_assert!(valid(&after.rules, &spec, &p.conflicts), "invalid result {:?}", targets(&after));
        // Foreign order untouched.
        let fo = |x: &Snapshot| x.rules.iter().filter(|r| owned_jump(r, &spec.jumps).is_none())
            .map(|r| r.handle).collect::<Vec<_>>();
        prop_assert_eq!(fo(&s), fo(&after));
        // The result the plan announces is what applying it gives.
        let announced: Vec<&str> = p.result.iter().map(|slot| match *slot {
            Slot::Existing(i) => s.rules[i].target().unwrap_or("-"),
            Slot::New(j) => spec.jumps[j].target.as_str(),
        }).collect();
        prop_assert_eq!(announced, targets(&after));
        // Converged chains yield empty plans, with the same conflicts.
        let again = plan(&after, &spec);
        prop_assert!(again.is_noop(), "not idempotent: {:?} -> {:?}", targets(&after), again.ops);
        prop_assert_eq!(&again.conflicts.iter().map(|c| &c.unmet).collect::<Vec<_>>(),
                        &p.conflicts.iter().map(|c| &c.unmet).collect::<Vec<_>>());
        // Minimal.
        prop_assert_eq!(p.ops.len(), brute_force_min(&s, &spec, &p.conflicts));
        // Conflicts are real: with every constraint in force, no arrangement of the
        // foreign rules plus all the jumps is valid.
        if !p.conflicts.is_empty() {
            let foreign_only: Vec<Rule> = s.rules.iter()
                .filter(|r| owned_jump(r, &spec.jumps).is_none()).cloned().collect();
            let all: Vec<usize> = (0..spec.jumps.len()).collect();
            prop_assert!(!any_insertion_valid(&foreign_only, &all, &spec, &[]),
                "spurious conflict {:?} for {:?}", p.conflicts, targets(&s));
        }
        STATS.with(|st| {
            let mut st = st.borrow_mut();
            st.0 += 1;
            st.1 += usize::from(!p.conflicts.is_empty());
            st.2 += usize::from(!p.ops.is_empty());
        });
    }
}

#[test]
fn random_chains_reach_conflicts_and_changes() {
    planner_guarantees();
    let (cases, conflicts, changes) = STATS.with(|s| *s.borrow());
    eprintln!("{cases} cases planned, {conflicts} with conflicts, {changes} with changes");
    assert!(
        cases > 1000 && conflicts > 50 && changes > 500,
        "{cases} {conflicts} {changes}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The no-op fast path agrees with the full planner, on random chains (mostly not
    /// converged) and on the chains the plans turn them into (converged, or as close as
    /// a conflict allows — which the fast path must leave to the full planner).
    #[test]
    fn the_noop_fast_path_agrees_with_the_full_planner(chain in chain_strategy(), cons in spec_strategy()) {
        let Some(spec) = spec_from(&cons) else { return Ok(()); };
        let rules: Vec<Rule> = chain.iter().enumerate()
            .map(|(i, &(k, x))| rule_from(k, x, i as u64 + 1)).collect();
        let s = snap(rules);
        let p = plan(&s, &spec);
        prop_assert_eq!(&p, &plan_full(&s, &spec));
        let after = apply(&s, &spec, &p);
        let fast = plan(&after, &spec);
        prop_assert_eq!(&fast, &plan_full(&after, &spec));
        if p.conflicts.is_empty() {
            prop_assert!(is_converged(&after.rules, &spec.jumps), "{:?}", targets(&after));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The one-insert fast path agrees with the full planner: on the chains the plans
    /// converge to, with each owned jump deleted in turn (the repair a reconcile makes
    /// most), and with the deleted jump's rule left in place as a foreign one (another
    /// agent's rule to the same target, which bounds where the jump can go).
    #[test]
    fn the_insert_fast_path_agrees_with_the_full_planner(chain in chain_strategy(), cons in spec_strategy()) {
        let Some(spec) = spec_from(&cons) else { return Ok(()); };
        let rules: Vec<Rule> = chain.iter().enumerate()
            .map(|(i, &(k, x))| rule_from(k, x, i as u64 + 1)).collect();
        let s = snap(rules);
        let after = apply(&s, &spec, &plan(&s, &spec));
        for (i, r) in after.rules.iter().enumerate() {
            let Some(j) = owned_jump(r, &spec.jumps) else { continue };
            let mut gone = after.clone();
            gone.rules.remove(i);
            let p = plan(&gone, &spec);
            prop_assert_eq!(&p, &plan_full(&gone, &spec));
            if standing(&gone.rules, &spec.jumps) == Standing::Missing(j) && p.conflicts.is_empty() {
                prop_assert_eq!(p.ops.len(), 1);
            }
            let mut foreign = after.clone();
            foreign.rules[i].comment = None;
            prop_assert_eq!(&plan(&foreign, &spec), &plan_full(&foreign, &spec));
        }
    }
}

#[test]
fn a_deleted_harvester_jump_is_put_back_by_the_insert_fast_path() {
    let spec = harvester();
    let gone = snap(vec![
        jump(1, CALI, "cali-PREROUTING"),
        jump(3, KUBE, "KUBE-SERVICES"),
        foreign(4, "CNI-HOSTPORT-DNAT"),
    ]);
    assert_eq!(
        standing(&gone.rules, &spec.jumps),
        Standing::Missing(0),
        "the fast path's case"
    );
    let p = plan(&gone, &spec);
    assert_eq!(p, plan_full(&gone, &spec));
    assert_eq!(
        p.ops,
        vec![Op::Insert {
            jump: 0,
            position: 2,
            after_handle: Some(1),
            before_handle: Some(3),
        }]
    );
}

#[test]
fn the_harvester_chain_takes_the_fast_path() {
    let healthy = snap(vec![
        jump(1, CALI, "cali-PREROUTING"),
        jump(2, OVN, "OVN-PREROUTING"),
        jump(3, KUBE, "KUBE-SERVICES"),
        foreign(4, "CNI-HOSTPORT-DNAT"),
    ]);
    let spec = harvester();
    assert!(is_converged(&healthy.rules, &spec.jumps));
    assert_eq!(plan(&healthy, &spec), plan_full(&healthy, &spec));
    let mut top = healthy.clone();
    top.rules.swap(0, 1);
    assert!(!is_converged(&top.rules, &spec.jumps));
    let mut twice = healthy.clone();
    twice.rules.push(jump(5, OVN, "OVN-PREROUTING"));
    assert!(!is_converged(&twice.rules, &spec.jumps));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The two ways of looking comments up and of recognising a converged chain — a
    /// scan for a few jumps, maps for many — agree (the random specs have few jumps, so
    /// the planner itself only takes the scans here).
    #[test]
    fn the_scans_and_the_maps_agree(chain in chain_strategy(), cons in spec_strategy()) {
        let Some(spec) = spec_from(&cons) else { return Ok(()); };
        let rules: Vec<Rule> = chain.iter().enumerate()
            .map(|(i, &(k, x))| rule_from(k, x, i as u64 + 1)).collect();
        let s = snap(rules);
        let after = apply(&s, &spec, &plan(&s, &spec));
        let (scan, map) = (Comments::build(&spec.jumps, false), Comments::build(&spec.jumps, true));
        for x in [&s, &after] {
            prop_assert_eq!(is_converged_few(&x.rules, &spec.jumps), is_converged_many(&x.rules, &spec.jumps));
            for r in &x.rules {
                prop_assert_eq!(scan.owned(r), owned_jump(r, &spec.jumps));
                prop_assert_eq!(map.owned(r), owned_jump(r, &spec.jumps));
            }
        }
    }
}

/// `n` owned jumps OWN-0..: each after the one before it; `foreign` rules of other agents
/// (bare jumps with their own comments, to AGENT-0..49) with the owned jumps spread
/// among them, in order.
fn many(n: usize, foreign: usize) -> (ChainSpec, Snapshot) {
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
    let spec = Config::from_toml(&t).unwrap().chains.remove(0);
    let mut rules = Vec::new();
    let every = (foreign / n.max(1)).max(1);
    let mut k = 0;
    for i in 0..foreign {
        if i % every == 0 && k < n {
            rules.push(jump(
                rules.len() as u64 + 1,
                &format!("owned {k}"),
                &format!("OWN-{k}"),
            ));
            k += 1;
        }
        rules.push(jump(
            rules.len() as u64 + 1,
            &format!("agent rule {i}"),
            &format!("AGENT-{}", i % 50),
        ));
    }
    while k < n {
        rules.push(jump(
            rules.len() as u64 + 1,
            &format!("owned {k}"),
            &format!("OWN-{k}"),
        ));
        k += 1;
    }
    (spec, snap(rules))
}

#[test]
fn a_thousand_owned_jumps_among_ten_thousand_rules_plan_as_a_few_do() {
    let (spec, s) = many(1000, 10_000);
    assert_eq!(s.rules.len(), 11_000);
    // Converged: the fast path, and the full planner agrees.
    assert!(is_converged(&s.rules, &spec.jumps));
    let p = plan(&s, &spec);
    assert!(p.is_noop() && p.conflicts.is_empty());
    assert_eq!(p, plan_full(&s, &spec));

    // One jump missing: exactly its insert, right after the jump it must follow.
    let mut missing = s.clone();
    missing.rules.retain(|r| r.target() != Some("OWN-500"));
    let p = plan(&missing, &spec);
    let prev = missing
        .rules
        .iter()
        .position(|r| r.target() == Some("OWN-499"))
        .unwrap();
    let (after, before) = (missing.rules[prev].handle, missing.rules[prev + 1].handle);
    assert_eq!(
        p.ops,
        [Op::Insert {
            jump: 500,
            position: prev + 2,
            after_handle: Some(after),
            before_handle: Some(before),
        }]
    );
    assert!(plan(&apply(&missing, &spec, &p), &spec).is_noop());

    // One jump out of order (OWN-10 at the top): moved, nothing else.
    let mut top = s.clone();
    let at = top
        .rules
        .iter()
        .position(|r| r.target() == Some("OWN-10"))
        .unwrap();
    let r = top.rules.remove(at);
    top.rules.insert(0, r);
    let p = plan(&top, &spec);
    assert_eq!(p.ops.len(), 2, "{:?}", p.ops);
    assert!(matches!(
        p.ops[0],
        Op::Delete {
            jump: 10,
            reason: DeleteReason::Misplaced,
            ..
        }
    ));
    assert!(plan(&apply(&top, &spec, &p), &spec).is_noop());
}

// ---- reasons ----

#[test]
fn reasons_of_the_harvester_chain_name_the_anchors_and_their_positions() {
    let spec = harvester();
    let broken = snap(vec![
        jump(1, OVN, "OVN-PREROUTING"),
        jump(2, CALI, "cali-PREROUTING"),
        jump(3, OVN, "OVN-PREROUTING"),
        jump(4, KUBE, "KUBE-SERVICES"),
        jump(5, OVN, "OVN-PREROUTING"),
        foreign(6, "CNI-HOSTPORT-DNAT"),
    ]);
    let want = "after cali-PREROUTING (position 1), before KUBE-SERVICES (position 3), \
                before CNI-HOSTPORT-DNAT (position 4)";
    // What apply would do: the copy at 3 is kept, the others deleted.
    let p = plan(&broken, &spec);
    let r = reasons(&broken, &spec, &p);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].position, r[0].placed), (2, Placed::Kept));
    assert_eq!(r[0].reason, want);
    assert!(r[0].unmet.is_empty());
    // And once applied, the same reason from the converged chain.
    let healthy = apply(&broken, &spec, &p);
    let p = plan(&healthy, &spec);
    assert!(p.is_noop());
    assert_eq!(reasons(&healthy, &spec, &p)[0].reason, want);
    // Without Calico's jump, the after-anchor constrains nothing.
    let no_cali = snap(vec![jump(4, KUBE, "KUBE-SERVICES")]);
    let p = plan(&no_cali, &spec);
    let r = &reasons(&no_cali, &spec, &p)[0];
    assert_eq!((r.position, r.placed), (1, Placed::Inserted));
    assert_eq!(
        r.reason,
        "before KUBE-SERVICES (position 2) (cali-PREROUTING, CNI-HOSTPORT-DNAT absent: constrain nothing)"
    );
}

#[test]
fn reasons_of_a_conflict_name_the_blocking_rule_at_its_resulting_position() {
    let spec = harvester();
    let s = snap(vec![
        jump(4, KUBE, "KUBE-SERVICES"),
        jump(1, OVN, "OVN-PREROUTING"),
        jump(2, CALI, "cali-PREROUTING"),
        jump(8, OVN, "OVN-PREROUTING"),
        foreign(6, "CNI-HOSTPORT-DNAT"),
    ]);
    let p = plan(&s, &spec);
    let r = &reasons(&s, &spec, &p)[0];
    // Result: OVN, KUBE-SERVICES, cali-PREROUTING, CNI-HOSTPORT-DNAT.
    assert_eq!(r.position, 1);
    assert_eq!(
        r.reason,
        "before KUBE-SERVICES (position 2), before CNI-HOSTPORT-DNAT (position 4), \
         cannot be after cali-PREROUTING (position 3): blocked by rule 2 (handle 4, -j KUBE-SERVICES)"
    );
    assert_eq!(r.unmet.len(), 1);
    assert_eq!(r.unmet[0].constraint, "after cali-PREROUTING");
    assert_eq!(
        r.unmet[0].blocking,
        [Blocker {
            handle: 4,
            position: 2,
            target: Some("KUBE-SERVICES".into())
        }]
    );
    // Applied, the chain reads the same reason.
    let after = apply(&s, &spec, &p);
    let p2 = plan(&after, &spec);
    assert_eq!(reasons(&after, &spec, &p2)[0].reason, r.reason);
    // A moved copy is said to be moved.
    let misplaced = snap(vec![
        jump(4, KUBE, "KUBE-SERVICES"),
        jump(1, OVN, "OVN-PREROUTING"),
    ]);
    let spec_after_only = Config::from_toml(
        "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\n\
         target = \"OVN-PREROUTING\"\ncomment = \"kube-ovn prerouting rules\"\n\
         before = [\"KUBE-SERVICES\"]\n",
    )
    .unwrap()
    .chains
    .remove(0);
    let p = plan(&misplaced, &spec_after_only);
    let r = &reasons(&misplaced, &spec_after_only, &p)[0];
    assert_eq!((r.position, r.placed), (1, Placed::Moved));
    assert_eq!(r.reason, "before KUBE-SERVICES (position 2)");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every reason is true of the chain the plan leaves: the jump stands at the position
    /// given, each bound lists exactly the rules jumping to its name, `met` is whether the
    /// relation holds, and every unmet constraint is one the planner reported.
    #[test]
    fn reasons_tell_the_truth_about_the_resulting_chain(chain in chain_strategy(), cons in spec_strategy()) {
        let Some(spec) = spec_from(&cons) else { return Ok(()); };
        let rules: Vec<Rule> = chain.iter().enumerate()
            .map(|(i, &(k, x))| rule_from(k, x, i as u64 + 1)).collect();
        let s = snap(rules);
        let p = plan(&s, &spec);
        let after = apply(&s, &spec, &p);
        let rs = reasons(&s, &spec, &p);
        prop_assert_eq!(rs.len(), spec.jumps.len());
        for (j, r) in rs.iter().enumerate() {
            let js = &spec.jumps[j];
            prop_assert_eq!(&r.target, &js.target);
            let me = &after.rules[r.position - 1];
            prop_assert_eq!(owned_jump(me, &spec.jumps), Some(j));
            for b in &r.bounds {
                let at: Vec<usize> = (0..after.rules.len())
                    .filter(|&i| after.rules[i].target() == Some(b.target.as_str()))
                    .map(|i| i + 1).collect();
                prop_assert_eq!(&b.positions, &at);
                let holds = if b.relation == "after" {
                    at.iter().all(|&x| x < r.position)
                } else {
                    at.iter().all(|&x| x > r.position)
                };
                prop_assert_eq!(b.met, holds);
                if !b.met {
                    let c = format!("{} {}", b.relation, b.target);
                    prop_assert!(p.conflicts.iter().any(|k| k.jump == j && k.unmet == c),
                        "unmet {} not reported: {:?}", c, p.conflicts);
                    prop_assert!(r.reason.contains(&format!("cannot be {c}")), "{}", r.reason);
                } else if let Some(&n) = if b.relation == "after" { at.last() } else { at.first() } {
                    let said = format!("{} {} (position {n})", b.relation, b.target);
                    prop_assert!(r.reason.contains(&said), "{} lacks {}", r.reason, said);
                }
            }
            for u in &r.unmet {
                for blk in &u.blocking {
                    prop_assert_eq!(after.rules[blk.position - 1].handle, blk.handle);
                }
            }
        }
    }
}
