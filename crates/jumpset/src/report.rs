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
use crate::plan::{Conflict, DeleteReason, Op, Plan, Reason, Role};
use crate::reconcile::Outcome;
use crate::snapshot::{agent_of, quote, CommentEncoding, Counters, Family, Snapshot};
use crate::spec::ChainSpec;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// The results of one operation over every managed chain and family.
#[derive(Debug)]
#[non_exhaustive]
pub struct Report<T, E = Error> {
    /// The backend used: `nft` or `legacy` (or the fake kernel's name).
    pub backend: &'static str,
    /// One entry per (chain, family), chains in declaration order, families in the
    /// config's order.
    pub chains: Vec<ChainResult<T, E>>,
}

impl<T, E> Report<T, E> {
    /// A report of `chains` made with `backend`.
    pub fn new(backend: &'static str, chains: Vec<ChainResult<T, E>>) -> Self {
        Report { backend, chains }
    }
}

/// The result for one chain in one family.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChainResult<T, E = Error> {
    /// Address family.
    pub family: Family,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// What the operation found or did, or why it failed.
    pub outcome: Result<T, E>,
}

impl<T, E> ChainResult<T, E> {
    /// The result `outcome` for `family` `table` `chain`.
    pub fn new(family: Family, table: &str, chain: &str, outcome: Result<T, E>) -> Self {
        ChainResult {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            outcome,
        }
    }
}

/// What a report says of a chain whose operation failed: the message and the exit code
/// (`{.., "error": message, "exit_code": code}` in its JSON).
pub trait Failure {
    /// The message, as the `jumpset` command prints it.
    fn message(&self) -> String;
    /// The command's exit code for it.
    fn exit_code(&self) -> i32;
}

impl Failure for Error {
    fn message(&self) -> String {
        self.to_string()
    }

    fn exit_code(&self) -> i32 {
        Error::exit_code(self)
    }
}

/// A failure kept as its message and exit code (where the error itself is not kept, as
/// in the daemon's answers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failed {
    /// The message.
    pub message: String,
    /// The exit code.
    pub exit_code: i32,
}

impl Failed {
    /// The message and exit code of `e`.
    pub fn of(e: &impl Failure) -> Self {
        Failed {
            message: e.message(),
            exit_code: e.exit_code(),
        }
    }
}

impl Failure for Failed {
    fn message(&self) -> String {
        self.message.clone()
    }

    fn exit_code(&self) -> i32 {
        self.exit_code
    }
}

impl Failure for crate::reconcile::ReconcileError {
    fn message(&self) -> String {
        self.to_string()
    }

    fn exit_code(&self) -> i32 {
        crate::reconcile::ReconcileError::exit_code(self)
    }
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
    /// The anchors: other agents' jumps named in `after`/`before`, present or absent.
    pub anchors: Vec<AnchorStatus>,
}

/// An anchor: a chain named in a declared jump's `after` or `before` that no owned jump
/// targets — another agent's jump, which jumpset reads and never writes. Absent is a fact,
/// not an error (the kernel keeps no history; portmap's jump is absent until the first
/// hostPort pod), unless the config sets `expect_anchors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AnchorStatus {
    /// The chain it jumps to, as `after`/`before` name it.
    pub target: String,
    /// Whether a rule of the chain jumps or goes there.
    pub present: bool,
    /// 1-based positions of those rules.
    pub positions: Vec<usize>,
    /// The agent it looks like it belongs to (`kube-proxy`, `calico`, `portmap`, ...).
    pub owner: String,
    /// The declared jumps that name it.
    pub named_by: Vec<AnchorUse>,
}

/// A declared jump naming an anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AnchorUse {
    /// The declared jump's target.
    pub jump: String,
    /// `after` or `before`.
    pub relation: &'static str,
}

/// The agent a jump to `target` looks like (`snapshot::agent_of` of a bare jump there).
fn agent_of_target(target: &str) -> &'static str {
    agent_of(&crate::snapshot::Rule {
        handle: 0,
        comment: None,
        matches: Vec::new(),
        counters: None,
        verdict: crate::snapshot::Verdict::Jump(target.to_string()),
    })
}

/// Each anchor of `spec` ([`ChainSpec::anchors`]) as `snap` has it.
pub fn anchors(snap: &Snapshot, spec: &ChainSpec) -> Vec<AnchorStatus> {
    spec.anchors()
        .into_iter()
        .map(|a| {
            let positions: Vec<usize> = (0..snap.rules.len())
                .filter(|&i| snap.rules[i].target() == Some(a))
                .map(|i| i + 1)
                .collect();
            let owner = match positions.first() {
                Some(&p) => agent_of(&snap.rules[p - 1]),
                None => agent_of_target(a),
            };
            let mut named_by = Vec::new();
            for j in spec.jumps() {
                if j.after().iter().any(|x| x == a) {
                    named_by.push(AnchorUse {
                        jump: j.target().to_string(),
                        relation: "after",
                    });
                }
                if j.before().iter().any(|x| x == a) {
                    named_by.push(AnchorUse {
                        jump: j.target().to_string(),
                        relation: "before",
                    });
                }
            }
            AnchorStatus {
                target: a.to_string(),
                present: !positions.is_empty(),
                positions,
                owner: owner.to_string(),
                named_by,
            }
        })
        .collect()
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
            anchors: anchors(snap, spec),
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
    /// Why each declared jump stands where `apply` leaves it (`plan --explain`; empty
    /// otherwise, and then absent from the JSON).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
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
            reasons: Vec::new(),
        }
    }

    /// This plan with the reason each declared jump stands where `apply` leaves it
    /// ([`crate::plan::reasons`] of `plan`, made from `snap` for `spec`).
    #[must_use]
    pub fn with_reasons(mut self, snap: &Snapshot, spec: &ChainSpec, plan: &Plan) -> Self {
        self.reasons = crate::plan::reasons(snap, spec, plan);
        self
    }

    /// The reasons as lines: `-j OVN-PREROUTING (kept at 2): after cali-PREROUTING
    /// (position 1), ...`.
    pub fn reason_lines(&self) -> Vec<String> {
        reason_lines(&self.reasons)
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

/// `check` of one chain in one family: the plan, the anchors and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainCheck {
    /// What `apply` would do.
    #[serde(flatten)]
    pub plan: ChainPlan,
    /// The verdict.
    pub verdict: Verdict,
    /// The anchors, present or absent.
    pub anchors: Vec<AnchorStatus>,
    /// Whether an absent anchor is drift (`expect_anchors`).
    pub expect_anchors: bool,
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
    /// `converged`, `drift: 2 change(s) needed`, `drift: anchor KUBE-SERVICES absent
    /// (expect_anchors)`, or the conflict; absent anchors are named either way.
    pub fn summary(&self) -> String {
        let absent = self.absent_anchors();
        let mut s = match self.verdict {
            Verdict::Converged => "converged".to_string(),
            Verdict::Drift if self.plan.is_noop() => "drift".to_string(),
            Verdict::Drift => format!("drift: {} change(s) needed", self.plan.ops.len()),
            Verdict::Conflict => "as close as the foreign rules allow (conflict)".into(),
        };
        if !absent.is_empty() {
            let sep = if s == "drift" { ": " } else { "; " };
            s.push_str(&format!(
                "{sep}anchor {} absent{}",
                absent.join(", "),
                if self.expect_anchors {
                    " (expect_anchors)"
                } else {
                    ""
                }
            ));
        }
        s
    }

    /// The anchors no rule of the chain jumps to.
    pub fn absent_anchors(&self) -> Vec<&str> {
        self.anchors
            .iter()
            .filter(|a| !a.present)
            .map(|a| a.target.as_str())
            .collect()
    }

    /// The verdict on `plan` alone (no anchors).
    pub fn new(plan: ChainPlan) -> Self {
        ChainCheck::with_anchors(plan, Vec::new(), false)
    }

    /// The verdict on `plan` and `anchors`: with `expect_anchors`, an absent anchor is
    /// drift too.
    pub fn with_anchors(plan: ChainPlan, anchors: Vec<AnchorStatus>, expect_anchors: bool) -> Self {
        let anchor_drift = expect_anchors && anchors.iter().any(|a| !a.present);
        let verdict = if !plan.is_noop() || anchor_drift {
            Verdict::Drift
        } else if !plan.conflicts.is_empty() {
            Verdict::Conflict
        } else {
            Verdict::Converged
        };
        ChainCheck {
            plan,
            verdict,
            anchors,
            expect_anchors,
        }
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

/// Reasons as lines for a node operator: `-j T (kept at 2): after X (position 1), ...`.
pub fn reason_lines(reasons: &[Reason]) -> Vec<String> {
    reasons
        .iter()
        .map(|r| {
            format!(
                "-j {} ({} at {}): {}",
                r.target,
                r.placed.name(),
                r.position,
                r.reason
            )
        })
        .collect()
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

struct Entry<'a, T, E> {
    backend: &'static str,
    result: &'a ChainResult<T, E>,
}

impl<T: Serialize, E: Failure> Serialize for Entry<'_, T, E> {
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
                m.serialize_entry("error", &e.message())?;
                m.serialize_entry("exit_code", &e.exit_code())?;
                m.end()
            }
        }
    }
}

struct Group<'a, T, E> {
    backend: &'static str,
    items: Vec<&'a ChainResult<T, E>>,
}

impl<T: Serialize, E: Failure> Serialize for Group<'_, T, E> {
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
        struct Families<'b, U, F>(&'b Group<'b, U, F>);
        impl<U: Serialize, F: Failure> Serialize for Families<'_, U, F> {
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

impl<T: Serialize, E: Failure> Serialize for Report<T, E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut groups: Vec<Group<'_, T, E>> = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Comment, Rule, Verdict as V};
    use crate::spec::Config;

    fn jump(comment: Option<&str>, target: &str, handle: u64) -> Rule {
        Rule {
            handle,
            comment: comment.map(|c| Comment {
                bytes: c.as_bytes().to_vec(),
                encoding: CommentEncoding::Xt,
            }),
            matches: Vec::new(),
            counters: None,
            verdict: V::Jump(target.into()),
        }
    }

    fn spec(expect: bool) -> Config {
        Config::from_toml(&format!(
            "expect_anchors = {expect}\n{}",
            include_str!("../testdata/harvester.toml")
        ))
        .unwrap()
    }

    fn snap(rules: Vec<Rule>) -> Snapshot {
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

    #[test]
    fn anchors_are_shown_present_or_absent_and_absent_is_drift_only_when_expected() {
        // Calico's and ours in place, kube-proxy's there, portmap's not (no hostPort pod).
        let s = snap(vec![
            jump(Some("cali:6gwbT8clXdHdC1b1"), "cali-PREROUTING", 1),
            jump(Some("kube-ovn prerouting rules"), "OVN-PREROUTING", 2),
            jump(Some("kubernetes service portals"), "KUBE-SERVICES", 3),
        ]);
        for expect in [false, true] {
            let cfg = spec(expect);
            let c = &cfg.chains()[0];
            let a = anchors(&s, c);
            let shown: Vec<(&str, bool, &[usize], &str)> = a
                .iter()
                .map(|a| {
                    (
                        a.target.as_str(),
                        a.present,
                        &a.positions[..],
                        a.owner.as_str(),
                    )
                })
                .collect();
            assert_eq!(
                shown,
                [
                    ("cali-PREROUTING", true, &[1][..], "calico"),
                    ("KUBE-SERVICES", true, &[3][..], "kube-proxy"),
                    ("CNI-HOSTPORT-DNAT", false, &[][..], "portmap"),
                ]
            );
            assert_eq!(a[0].named_by[0].relation, "after");
            assert_eq!(a[2].named_by[0].jump, "OVN-PREROUTING");
            let plan = crate::plan::plan(&s, c);
            assert!(plan.is_noop(), "an absent anchor never makes jumpset write");
            let status = ChainStatus::new(&s, c, &plan);
            assert!(status.in_order);
            assert_eq!(status.anchors, a);
            let check = ChainCheck::with_anchors(ChainPlan::new(&s, c, &plan), a, expect);
            if expect {
                assert_eq!(check.verdict, Verdict::Drift);
                assert_eq!(check.exit_code(), exit::DRIFT);
                assert_eq!(
                    check.summary(),
                    "drift: anchor CNI-HOSTPORT-DNAT absent (expect_anchors)"
                );
            } else {
                assert_eq!(check.verdict, Verdict::Converged);
                assert_eq!(check.exit_code(), exit::OK);
                assert_eq!(
                    check.summary(),
                    "converged; anchor CNI-HOSTPORT-DNAT absent"
                );
            }
            let json = serde_json::to_value(&check).unwrap();
            assert_eq!(json["anchors"][2]["present"], false);
            assert_eq!(json["anchors"][1]["positions"][0], 3);
        }
    }
}
