//! Why each declared jump stands where a plan leaves it: the constraint that puts it
//! there (after X at position n, before Y at position m), or the conflict and the foreign
//! rule blocking it. Pure, and read off a finished [`Plan`]: it never changes what the
//! planner decides (`jumpset explain`, `jumpset plan --explain`).
//!
//! Positions are 1-based in the chain as the plan leaves it ([`Plan::result`]); for a
//! chain that needs no change that is the chain as read.

use super::{Conflict, Plan, Role, Slot};
use crate::snapshot::Snapshot;
use crate::spec::ChainSpec;
use serde::Serialize;

/// How a declared jump came to stand where it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Placed {
    /// An existing copy, left where it is.
    Kept,
    /// A new rule (no copy existed, or only stale ones).
    Inserted,
    /// A copy stood where the constraints forbid: deleted and inserted here.
    Moved,
}

impl Placed {
    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            Placed::Kept => "kept",
            Placed::Inserted => "inserted",
            Placed::Moved => "moved",
        }
    }
}

/// One `after` / `before` name of a jump and where the rules jumping there stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Bound {
    /// `after` or `before`.
    pub relation: &'static str,
    /// The chain named.
    pub target: String,
    /// 1-based positions of the rules jumping (or going) there; empty: absent, so it
    /// constrains nothing.
    pub positions: Vec<usize>,
    /// Whether the jump stands where the constraint wants it (an absent name: true).
    pub met: bool,
}

/// A rule in the way of a constraint, at its position in the resulting chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Blocker {
    /// Kernel handle.
    pub handle: u64,
    /// 1-based position in the chain as the plan leaves it.
    pub position: usize,
    /// The chain it jumps to, if any.
    pub target: Option<String>,
}

/// A constraint the foreign rules make impossible, and the rules in the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Unmet {
    /// The constraint, e.g. `after cali-PREROUTING`.
    pub constraint: String,
    /// The foreign rules blocking it.
    pub blocking: Vec<Blocker>,
}

/// Why one declared jump stands where it does once the plan is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Reason {
    /// The jump's comment.
    pub comment: String,
    /// The jump's target.
    pub target: String,
    /// Its 1-based position in the chain as the plan leaves it.
    pub position: usize,
    /// Kept, inserted or moved.
    pub placed: Placed,
    /// Each `after` and `before` name, in declaration order.
    pub bounds: Vec<Bound>,
    /// The constraints that cannot be met, with the rules blocking them.
    pub unmet: Vec<Unmet>,
    /// All of it in one sentence: `after cali-PREROUTING (position 1), before
    /// KUBE-SERVICES (position 3)`.
    pub reason: String,
}

/// Why each declared jump of `spec` stands where `plan` (made from `snap`) leaves it, in
/// declaration order. A jump the plan leaves out (a cleanup plan) has no reason.
pub fn reasons(snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Vec<Reason> {
    let target_of = |s: &Slot| match *s {
        Slot::Existing(i) => snap.rules.get(i).and_then(|r| r.target()),
        Slot::New(j) => spec.jumps.get(j).map(|js| js.target.as_str()),
    };
    let positions = |name: &str| -> Vec<usize> {
        (0..plan.result.len())
            .filter(|&k| target_of(&plan.result[k]) == Some(name))
            .map(|k| k + 1)
            .collect()
    };
    // Where a rule of the snapshot ends up (its position as read when it is gone).
    let result_position = |read: usize| {
        plan.result
            .iter()
            .position(|s| *s == Slot::Existing(read - 1))
            .map_or(read, |k| k + 1)
    };
    let mut out = Vec::new();
    for (j, js) in spec.jumps.iter().enumerate() {
        let Some(k) = plan.result.iter().position(|s| match *s {
            Slot::New(n) => n == j,
            Slot::Existing(i) => plan.roles.get(i) == Some(&Role::Owned(j)),
        }) else {
            continue;
        };
        let position = k + 1;
        let placed = match plan.result[k] {
            Slot::Existing(_) => Placed::Kept,
            Slot::New(_) if plan.roles.contains(&Role::Misplaced(j)) => Placed::Moved,
            Slot::New(_) => Placed::Inserted,
        };
        let mut bounds = Vec::new();
        for (relation, names) in [("after", &js.after), ("before", &js.before)] {
            for name in names {
                let at = positions(name);
                let met = if relation == "after" {
                    at.iter().all(|&p| p < position)
                } else {
                    at.iter().all(|&p| p > position)
                };
                bounds.push(Bound {
                    relation,
                    target: name.clone(),
                    positions: at,
                    met,
                });
            }
        }
        let unmet: Vec<Unmet> = plan
            .conflicts
            .iter()
            .filter(|c: &&Conflict| c.jump == j)
            .map(|c| Unmet {
                constraint: c.unmet.clone(),
                blocking: c
                    .blocking
                    .iter()
                    .map(|b| Blocker {
                        handle: b.handle,
                        position: result_position(b.position),
                        target: b.target.clone(),
                    })
                    .collect(),
            })
            .collect();
        let reason = sentence(placed, &bounds, &unmet);
        out.push(Reason {
            comment: js.comment.clone(),
            target: js.target.clone(),
            position,
            placed,
            bounds,
            unmet,
            reason,
        });
    }
    out
}

/// `(position 3)` for the rule that binds: the last one an `after` must follow, the first
/// one a `before` must precede.
fn binding(b: &Bound) -> usize {
    if b.relation == "after" {
        b.positions.iter().copied().max().unwrap_or(0)
    } else {
        b.positions.iter().copied().min().unwrap_or(0)
    }
}

fn sentence(placed: Placed, bounds: &[Bound], unmet: &[Unmet]) -> String {
    let mut parts: Vec<String> = bounds
        .iter()
        .filter(|b| b.met && !b.positions.is_empty())
        .map(|b| format!("{} {} (position {})", b.relation, b.target, binding(b)))
        .collect();
    for b in bounds.iter().filter(|b| !b.met) {
        let constraint = format!("{} {}", b.relation, b.target);
        let blockers = unmet
            .iter()
            .find(|u| u.constraint == constraint)
            .map(|u| {
                u.blocking
                    .iter()
                    .map(|r| {
                        format!(
                            "rule {} (handle {}{})",
                            r.position,
                            r.handle,
                            r.target
                                .as_deref()
                                .map(|t| format!(", -j {t}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        parts.push(format!(
            "cannot be {constraint} (position {}){}",
            binding(b),
            if blockers.is_empty() {
                String::new()
            } else {
                format!(": blocked by {}", blockers.join(", "))
            }
        ));
    }
    let absent: Vec<&str> = bounds
        .iter()
        .filter(|b| b.positions.is_empty())
        .map(|b| b.target.as_str())
        .collect();
    if parts.is_empty() {
        parts.push(match placed {
            Placed::Kept => "no constraint applies: kept where it was".to_string(),
            _ => "no constraint applies: appended".to_string(),
        });
    }
    let mut s = parts.join(", ");
    if !absent.is_empty() {
        s.push_str(&format!(
            " ({} absent: constrain{} nothing)",
            absent.join(", "),
            if absent.len() == 1 { "s" } else { "" }
        ));
    }
    s
}
