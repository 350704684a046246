//! Typed reports of the operations (`status`, `check`, `plan`, `apply`, `cleanup`): one
//! entry per managed chain and family, each its own transaction (a failure in one never
//! blocks another). Pure: snapshots, specs and plans in, reports out.
//!
//! Every report serializes (serde) to the JSON the `jumpset` command prints with `--json`:
//! one object for one chain in one family; `{backend, table, chain, families: {ip, ip6}}`
//! when both families are managed; `{backend, chains: [...]}` for several chains. A chain
//! whose operation failed is `{family, table, chain, error, exit_code}` in its place. The
//! iptables-style lines ([`ChainPlan::lines`], [`conflict_lines`]) are what the command
//! prints and the daemon logs.

use crate::error::{exit, Error};
use crate::plan::{Conflict, DeleteReason, Op, Plan, Role};
use crate::reconcile::Outcome;
use crate::snapshot::{agent_of, quote, CommentEncoding, Counters, Family, Snapshot};
use crate::spec::ChainSpec;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// The results of one operation over every managed chain and family.
#[derive(Debug)]
#[non_exhaustive]
pub struct Report<T> {
    /// The backend used: `nft` or `legacy` (or the fake kernel's name).
    pub backend: &'static str,
    /// One entry per (chain, family), chains in declaration order, families in the
    /// config's order.
    pub chains: Vec<ChainResult<T>>,
}

/// The result for one chain in one family.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChainResult<T> {
    /// Address family.
    pub family: Family,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// What the operation found or did, or why it failed.
    pub outcome: Result<T, Error>,
}

/// What each kind of report says about the exit code of the command that printed it.
pub trait ExitCode {
    /// 0 ok, 1 drift (`check` only), 5 conflict.
    fn exit_code(&self) -> i32;
}

impl<T: ExitCode> Report<T> {
    /// The command's exit code: the worst over every chain and family (errors first, then
    /// a conflict, then drift).
    pub fn exit_code(&self) -> i32 {
        self.chains
            .iter()
            .map(|c| match &c.outcome {
                Ok(v) => v.exit_code(),
                Err(e) => e.exit_code(),
            })
            .fold(exit::OK, exit::worse)
    }
}

impl<T> Report<T> {
    /// The successful entries.
    pub fn ok(&self) -> impl Iterator<Item = &T> {
        self.chains.iter().filter_map(|c| c.outcome.as_ref().ok())
    }

    /// The first error, if any chain failed.
    pub fn first_error(&self) -> Option<&Error> {
        self.chains.iter().find_map(|c| c.outcome.as_ref().err())
    }
}

// ---- status ----

/// What a rule of a managed chain is to jumpset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RuleRole {
    /// One of the owned jumps, in place.
    Owned,
    /// A copy of an owned jump another copy of which is kept.
    Duplicate,
    /// An owned jump where the constraints forbid it.
    Misplaced,
    /// Carries an owned comment but jumps elsewhere (or is a goto).
    Stale,
    /// Not jumpset's: never deleted, moved or rewritten.
    Foreign,
}

impl From<Role> for RuleRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Owned(_) => RuleRole::Owned,
            Role::Duplicate(_) => RuleRole::Duplicate,
            Role::Misplaced(_) => RuleRole::Misplaced,
            Role::Stale(_) => RuleRole::Stale,
            Role::Foreign => RuleRole::Foreign,
        }
    }
}

impl RuleRole {
    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            RuleRole::Owned => "owned",
            RuleRole::Duplicate => "duplicate",
            RuleRole::Misplaced => "misplaced",
            RuleRole::Stale => "stale",
            RuleRole::Foreign => "foreign",
        }
    }
}

/// One rule of a managed chain, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RuleStatus {
    /// The kernel's handle (legacy: the backend's id).
    pub handle: u64,
    /// 1-based position.
    pub position: usize,
    /// The chain it jumps or goes to.
    pub target: Option<String>,
    /// Its comment (lossy UTF-8).
    pub comment: Option<String>,
    /// Where the comment is stored.
    pub comment_encoding: Option<CommentEncoding>,
    /// `jumpset` for an owned jump, else the agent it looks like (`calico`, `kube-proxy`,
    /// `kube-ovn`, `portmap`, `docker`, `unknown`).
    pub owner: String,
    /// One of jumpset's (owned, duplicate, misplaced or stale).
    pub owned: bool,
    /// For one of jumpset's: the agent that declared the jump (a drop-in's or an API
    /// claim's), `None` for the main config's.
    pub declared_by: Option<String>,
    /// What it is to jumpset.
    pub role: RuleRole,
    /// Owned and in place, or foreign.
    pub in_place: bool,
    /// Its counters, if it has a counter.
    pub counters: Option<Counters>,
    /// The rule as `iptables -S` prints it.
    pub rule: String,
}

/// A declared jump that has no copy in a valid place: the plan inserts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MissingJump {
    /// Its comment.
    pub comment: String,
    /// Its target.
    pub target: String,
    /// Copies found, none in a valid place (0: missing).
    #[serde(skip)]
    pub copies: usize,
    /// The rule text it is written as.
    #[serde(skip)]
    pub rule: String,
}

/// `status` of one chain in one family: each rule, its owner, in place or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainStatus {
    /// Address family.
    pub family: Family,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// The ruleset generation the read was taken at.
    pub generation: u32,
    /// Whether the table exists.
    pub table_exists: bool,
    /// Whether the chain exists.
    pub chain_exists: bool,
    /// Nothing to change (a conflict can still be reported).
    pub in_order: bool,
    /// The rules, in order.
    pub rules: Vec<RuleStatus>,
    /// Declared jumps with no copy in a valid place.
    pub missing: Vec<MissingJump>,
    /// Constraints the foreign rules make impossible to meet.
    pub conflicts: Vec<Conflict>,
}

impl ExitCode for ChainStatus {
    fn exit_code(&self) -> i32 {
        exit::OK
    }
}

/// The rule text of a declared jump: `-m comment --comment C -j T`.
pub fn jump_text(spec: &ChainSpec, j: usize) -> String {
    let js = &spec.jumps[j];
    format!(
        "-m comment --comment {} -j {}",
        quote(&js.comment),
        js.target
    )
}

impl ChainStatus {
    /// The status of `snap` under `spec`, with `plan` the converge plan made from it.
    pub fn new(snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Self {
        let rules = snap
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let role = plan.roles[i];
                let owned = role != Role::Foreign;
                RuleStatus {
                    handle: r.handle,
                    position: i + 1,
                    target: r.target().map(str::to_string),
                    comment: r.comment.as_ref().map(|c| c.text()),
                    comment_encoding: r.comment.as_ref().map(|c| c.encoding),
                    owner: if owned { "jumpset" } else { agent_of(r) }.to_string(),
                    owned,
                    declared_by: role
                        .jump()
                        .and_then(|j| spec.jumps[j].origin.agent())
                        .map(str::to_string),
                    role: role.into(),
                    in_place: matches!(role, Role::Owned(_) | Role::Foreign),
                    counters: r.counters,
                    rule: format!("-A {} {}", snap.chain, r.iptables()),
                }
            })
            .collect();
        let missing = plan
            .ops
            .iter()
            .filter_map(|op| match *op {
                Op::Insert { jump, .. } => Some(MissingJump {
                    comment: spec.jumps[jump].comment.clone(),
                    target: spec.jumps[jump].target.clone(),
                    copies: plan.roles.iter().filter(|r| r.jump() == Some(jump)).count(),
                    rule: jump_text(spec, jump),
                }),
                Op::Delete { .. } => None,
            })
            .collect();
        ChainStatus {
            family: snap.family,
            table: snap.table.clone(),
            chain: snap.chain.clone(),
            generation: snap.generation,
            table_exists: snap.table_exists,
            chain_exists: snap.chain_exists,
            in_order: plan.is_noop(),
            rules,
            missing,
            conflicts: plan.conflicts.clone(),
        }
    }
}

// ---- plan, check, apply ----

/// One change of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlannedOp {
    /// Delete a copy of an owned jump, by its kernel handle.
    Delete {
        /// Kernel handle.
        handle: u64,
        /// 1-based position in the chain as read.
        position: usize,
        /// Why.
        reason: DeleteReason,
        /// The comment of the jump it is a copy of.
        comment: String,
        /// The rule as `iptables -S` prints it (without `-A CHAIN`).
        rule: String,
    },
    /// Insert a declared jump.
    Insert {
        /// The new rule's kernel handle, once committed and read back
        /// ([`Outcome::inserted`]); `None` in a plan and `check`, and when the read-back
        /// could not tell which copy is the new one.
        handle: Option<u64>,
        /// Handle of the nearest existing rule above it (`None`: nothing above).
        after_handle: Option<u64>,
        /// Handle of the nearest existing rule below it (`None`: append).
        before_handle: Option<u64>,
        /// 1-based position once the deletes and the inserts before it are done.
        position: usize,
        /// Its comment.
        comment: String,
        /// The rule text (`-m comment --comment C -j T`).
        rule: String,
    },
}

impl Serialize for PlannedOp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            PlannedOp::Delete {
                handle,
                position,
                reason,
                comment,
                rule,
            } => {
                m.serialize_entry("op", "delete")?;
                m.serialize_entry("handle", handle)?;
                m.serialize_entry("after_handle", &None::<u64>)?;
                m.serialize_entry("position", position)?;
                m.serialize_entry("reason", reason)?;
                m.serialize_entry("comment", comment)?;
                m.serialize_entry("rule", rule)?;
            }
            PlannedOp::Insert {
                handle,
                after_handle,
                before_handle,
                position,
                comment,
                rule,
            } => {
                m.serialize_entry("op", "insert")?;
                m.serialize_entry("handle", handle)?;
                m.serialize_entry("after_handle", after_handle)?;
                m.serialize_entry("before_handle", before_handle)?;
                m.serialize_entry("position", position)?;
                m.serialize_entry("comment", comment)?;
                m.serialize_entry("rule", rule)?;
            }
        }
        m.end()
    }
}

/// `plan` of one chain in one family: what `apply` would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainPlan {
    /// Address family.
    pub family: Family,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// The changes: deletes (in chain order) then inserts (in final order).
    pub ops: Vec<PlannedOp>,
    /// Constraints the foreign rules make impossible to meet.
    pub conflicts: Vec<Conflict>,
}

impl ExitCode for ChainPlan {
    fn exit_code(&self) -> i32 {
        exit::OK
    }
}

impl ChainPlan {
    /// The report of `plan`, made from `snap` for `spec`.
    pub fn new(snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Self {
        let ops = plan
            .ops
            .iter()
            .map(|op| match *op {
                Op::Delete {
                    handle,
                    index,
                    jump,
                    reason,
                } => PlannedOp::Delete {
                    handle,
                    position: index + 1,
                    reason,
                    comment: spec.jumps[jump].comment.clone(),
                    rule: snap.rules[index].iptables(),
                },
                Op::Insert {
                    jump,
                    position,
                    after_handle,
                    before_handle,
                } => PlannedOp::Insert {
                    handle: None,
                    after_handle,
                    before_handle,
                    position,
                    comment: spec.jumps[jump].comment.clone(),
                    rule: jump_text(spec, jump),
                },
            })
            .collect();
        ChainPlan {
            family: snap.family,
            table: snap.table.clone(),
            chain: snap.chain.clone(),
            ops,
            conflicts: plan.conflicts.clone(),
        }
    }

    /// The plan as iptables-style lines: deletes by rule spec with the handle as a
    /// trailing comment, inserts by position — never a bare index to act on.
    pub fn lines(&self) -> Vec<String> {
        let chain = &self.chain;
        self.ops
            .iter()
            .map(|op| match op {
                PlannedOp::Delete {
                    handle,
                    reason,
                    rule,
                    ..
                } => format!("-D {chain} {rule}  # handle {handle}, {}", reason.name()),
                PlannedOp::Insert { position, rule, .. } => {
                    format!("-I {chain} {position} {rule}")
                }
            })
            .collect()
    }

    /// Whether the chain needs no change.
    pub fn is_noop(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What `check` concluded for one chain in one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Verdict {
    /// Nothing to change, every constraint met.
    Converged,
    /// Changes are needed (exit 1).
    Drift,
    /// Nothing to change, but a constraint cannot be met (exit 5).
    Conflict,
}

/// `check` of one chain in one family: the plan and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainCheck {
    /// What `apply` would do.
    #[serde(flatten)]
    pub plan: ChainPlan,
    /// The verdict.
    pub verdict: Verdict,
}

impl ExitCode for ChainCheck {
    fn exit_code(&self) -> i32 {
        match self.verdict {
            Verdict::Converged => exit::OK,
            Verdict::Drift => exit::DRIFT,
            Verdict::Conflict => exit::CONFLICT,
        }
    }
}

impl ChainCheck {
    /// The verdict in words, as `jumpset check` prints it after the chain's name:
    /// `converged`, `drift: 2 change(s) needed`, or the conflict.
    pub fn summary(&self) -> String {
        match self.verdict {
            Verdict::Converged => "converged".into(),
            Verdict::Drift => format!("drift: {} change(s) needed", self.plan.ops.len()),
            Verdict::Conflict => "as close as the foreign rules allow (conflict)".into(),
        }
    }

    /// The verdict on `plan`.
    pub fn new(plan: ChainPlan) -> Self {
        let verdict = if !plan.is_noop() {
            Verdict::Drift
        } else if !plan.conflicts.is_empty() {
            Verdict::Conflict
        } else {
            Verdict::Converged
        };
        ChainCheck { plan, verdict }
    }
}

/// `apply` / `cleanup` of one chain in one family: the plan and the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainApply {
    /// What was (or, when nothing was committed, would have been) done.
    #[serde(flatten)]
    pub plan: ChainPlan,
    /// Whether a transaction was committed.
    pub committed: bool,
    /// Generation the plan was made from.
    pub generation_before: u32,
    /// Generation after the commit (the same when nothing was committed).
    pub generation_after: u32,
    /// Stale writes re-planned.
    pub retries: u32,
}

impl ExitCode for ChainApply {
    fn exit_code(&self) -> i32 {
        if self.plan.conflicts.is_empty() {
            exit::OK
        } else {
            exit::CONFLICT
        }
    }
}

impl ChainApply {
    /// The report of a reconcile of `spec`; each insert carries the handle the new rule
    /// got (see [`Outcome::inserted`]).
    pub fn new(o: &Outcome, spec: &ChainSpec) -> Self {
        let mut plan = ChainPlan::new(&o.before, spec, &o.plan);
        // `ChainPlan::new` maps the plan's ops one to one, in order.
        for (op, planned) in o.plan.ops.iter().zip(plan.ops.iter_mut()) {
            if let (Op::Insert { jump, .. }, PlannedOp::Insert { handle, .. }) = (op, planned) {
                *handle = o.inserted.iter().find(|(j, _)| j == jump).map(|&(_, h)| h);
            }
        }
        ChainApply {
            plan,
            committed: o.committed,
            generation_before: o.generation_before,
            generation_after: o.generation_after,
            retries: o.retries,
        }
    }
}

/// Conflicts as sentences for a node operator.
pub fn conflict_lines(conflicts: &[Conflict]) -> Vec<String> {
    conflicts
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

// ---- the JSON of the command ----

struct Entry<'a, T> {
    backend: &'static str,
    result: &'a ChainResult<T>,
}

impl<T: Serialize> Serialize for Entry<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.result;
        match &r.outcome {
            Ok(v) => {
                #[derive(Serialize)]
                struct With<'b, U> {
                    backend: &'static str,
                    #[serde(flatten)]
                    v: &'b U,
                }
                With {
                    backend: self.backend,
                    v,
                }
                .serialize(s)
            }
            Err(e) => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("backend", self.backend)?;
                m.serialize_entry("family", &r.family)?;
                m.serialize_entry("table", &r.table)?;
                m.serialize_entry("chain", &r.chain)?;
                m.serialize_entry("error", &e.to_string())?;
                m.serialize_entry("exit_code", &e.exit_code())?;
                m.end()
            }
        }
    }
}

struct Group<'a, T> {
    backend: &'static str,
    items: Vec<&'a ChainResult<T>>,
}

impl<T: Serialize> Serialize for Group<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entry = |r| Entry {
            backend: self.backend,
            result: r,
        };
        if let [one] = self.items[..] {
            return entry(one).serialize(s);
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("backend", self.backend)?;
        m.serialize_entry("table", &self.items[0].table)?;
        m.serialize_entry("chain", &self.items[0].chain)?;
        struct Families<'b, U>(&'b Group<'b, U>);
        impl<U: Serialize> Serialize for Families<'_, U> {
            fn serialize<S2: Serializer>(&self, s: S2) -> Result<S2::Ok, S2::Error> {
                let mut m = s.serialize_map(None)?;
                for r in &self.0.items {
                    m.serialize_entry(
                        r.family.name(),
                        &Entry {
                            backend: self.0.backend,
                            result: r,
                        },
                    )?;
                }
                m.end()
            }
        }
        m.serialize_entry("families", &Families(self))?;
        m.end()
    }
}

impl<T: Serialize> Serialize for Report<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut groups: Vec<Group<'_, T>> = Vec::new();
        for c in &self.chains {
            match groups
                .iter_mut()
                .find(|g| g.items[0].table == c.table && g.items[0].chain == c.chain)
            {
                Some(g) => g.items.push(c),
                None => groups.push(Group {
                    backend: self.backend,
                    items: vec![c],
                }),
            }
        }
        if groups.len() == 1 {
            return groups[0].serialize(s);
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("backend", self.backend)?;
        m.serialize_entry("chains", &groups)?;
        m.end()
    }
}
