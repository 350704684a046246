//! What the CLI (and the C ABI) print: the JSON objects of DESIGN.md and their
//! human-readable forms. Pure: snapshots and plans in, values and text out.

use crate::plan::{Op, Plan, Role};
use crate::reconcile::Outcome;
use crate::snapshot::{agent_of, quote, Snapshot};
use crate::spec::ChainSpec;
use serde_json::{json, Value};

/// The rule text of a declared jump: `-m comment --comment C -j T`.
pub fn jump_text(spec: &ChainSpec, j: usize) -> String {
    let js = &spec.jumps[j];
    format!(
        "-m comment --comment {} -j {}",
        quote(&js.comment),
        js.target
    )
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Owned(_) => "owned",
        Role::Duplicate(_) => "duplicate",
        Role::Misplaced(_) => "misplaced",
        Role::Stale(_) => "stale",
        Role::Foreign => "foreign",
    }
}

/// `status --json` for one chain and family.
pub fn status_json(backend: &str, snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Value {
    let rules: Vec<Value> = snap
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let role = plan.roles[i];
            let owned = role != Role::Foreign;
            json!({
                "handle": r.handle,
                "position": i + 1,
                "target": r.target(),
                "comment": r.comment.as_ref().map(|c| c.text()),
                "comment_encoding": r.comment.as_ref().map(|c| c.encoding.name()),
                "owner": if owned { "jumpset" } else { agent_of(r) },
                "owned": owned,
                "role": role_name(role),
                "in_place": matches!(role, Role::Owned(_) | Role::Foreign),
                "counters": r.counters.map(|c| json!({"packets": c.packets, "bytes": c.bytes})),
                "rule": format!("-A {} {}", snap.chain, r.iptables()),
            })
        })
        .collect();
    let missing: Vec<Value> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Insert { jump, .. } => Some(json!({
                "comment": spec.jumps[*jump].comment,
                "target": spec.jumps[*jump].target,
            })),
            Op::Delete { .. } => None,
        })
        .collect();
    json!({
        "backend": backend,
        "family": snap.family.name(),
        "table": snap.table,
        "chain": snap.chain,
        "generation": snap.generation,
        "table_exists": snap.table_exists,
        "chain_exists": snap.chain_exists,
        "in_order": plan.is_noop(),
        "rules": rules,
        "missing": missing,
        "conflicts": plan.conflicts,
    })
}

/// `plan --json` for one chain and family: `{ops: [...], conflicts: [...]}`.
pub fn plan_json(snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Value {
    let ops: Vec<Value> = plan
        .ops
        .iter()
        .map(|op| match *op {
            Op::Delete {
                handle,
                index,
                jump,
                reason,
            } => json!({
                "op": "delete",
                "handle": handle,
                "after_handle": null,
                "position": index + 1,
                "reason": reason,
                "comment": spec.jumps[jump].comment,
                "rule": snap.rules[index].iptables(),
            }),
            Op::Insert {
                jump,
                position,
                after_handle,
                before_handle,
            } => json!({
                "op": "insert",
                "handle": null,
                "after_handle": after_handle,
                "before_handle": before_handle,
                "position": position,
                "comment": spec.jumps[jump].comment,
                "rule": jump_text(spec, jump),
            }),
        })
        .collect();
    json!({
        "family": snap.family.name(),
        "table": snap.table,
        "chain": snap.chain,
        "ops": ops,
        "conflicts": plan.conflicts,
    })
}

/// `apply --json` / `cleanup --json` for one chain and family: the plan plus the commit.
pub fn outcome_json(o: &Outcome, spec: &ChainSpec) -> Value {
    let mut v = plan_json(&o.before, spec, &o.plan);
    let m = v.as_object_mut().expect("plan_json is an object");
    m.insert("committed".into(), o.committed.into());
    m.insert("generation_before".into(), o.generation_before.into());
    m.insert("generation_after".into(), o.generation_after.into());
    m.insert("retries".into(), o.retries.into());
    v
}

/// The plan as iptables-style lines: deletes by rule spec with the handle as a trailing
/// comment, inserts by position (DESIGN.md: never a bare index to act on).
pub fn plan_lines(snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Vec<String> {
    let chain = &snap.chain;
    plan.ops
        .iter()
        .map(|op| match *op {
            Op::Delete {
                handle,
                index,
                reason,
                ..
            } => {
                let why = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                format!(
                    "-D {chain} {}  # handle {handle}, {why}",
                    snap.rules[index].iptables()
                )
            }
            Op::Insert { jump, position, .. } => {
                format!("-I {chain} {position} {}", jump_text(spec, jump))
            }
        })
        .collect()
}

/// Conflicts as sentences for a node operator.
pub fn conflict_lines(plan: &Plan) -> Vec<String> {
    plan.conflicts
        .iter()
        .map(|c| {
            let blockers: Vec<String> = c
                .blocking
                .iter()
                .map(|b| {
                    format!(
                        "rule {} (handle {}{})",
                        b.position,
                        b.handle,
                        b.target
                            .as_deref()
                            .map(|t| format!(", -j {t}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let by = if blockers.is_empty() {
                String::new()
            } else {
                format!(": blocked by {}", blockers.join(", "))
            };
            format!(
                "conflict: the jump to {} ({}) cannot be placed {} without moving rules jumpset does not own{by}; it was placed to meet its other constraints",
                c.target,
                quote(&c.comment),
                c.unmet
            )
        })
        .collect()
}

/// `status` as a table.
pub fn status_text(snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> String {
    let mut out = format!(
        "{} {} {} (generation {}): {}\n",
        snap.family,
        snap.table,
        snap.chain,
        snap.generation,
        if !snap.chain_exists {
            "chain does not exist yet"
        } else if plan.is_noop() {
            "in order"
        } else {
            "drift"
        }
    );
    out.push_str(&format!(
        "  {:>3}  {:>6}  {:<10}  {:<9}  rule\n",
        "pos", "handle", "owner", "state"
    ));
    for (i, r) in snap.rules.iter().enumerate() {
        let role = plan.roles[i];
        let owner = if role == Role::Foreign {
            agent_of(r)
        } else {
            "jumpset"
        };
        let state = match role {
            Role::Owned(_) => "in place",
            Role::Foreign => "",
            other => role_name(other),
        };
        out.push_str(&format!(
            "  {:>3}  {:>6}  {:<10}  {:<9}  -A {} {}\n",
            i + 1,
            r.handle,
            owner,
            state,
            snap.chain,
            r.iptables()
        ));
    }
    for op in &plan.ops {
        if let Op::Insert { jump, .. } = op {
            let copies = plan
                .roles
                .iter()
                .filter(|r| r.jump() == Some(*jump))
                .count();
            let state = if copies == 0 {
                "missing".to_string()
            } else {
                format!("{copies} copy(ies), none in a valid place")
            };
            out.push_str(&format!("  {state}: {}\n", jump_text(spec, *jump)));
        }
    }
    for c in conflict_lines(plan) {
        out.push_str(&format!("  {c}\n"));
    }
    out
}
