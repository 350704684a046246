//! One reconcile of one chain in one family: read → plan → apply → verify, re-planning
//! (a bounded number of times) when the kernel refuses a write planned from a stale
//! generation.
//!
//! The read, the plan and the commit are one [`Backend::transact`]: the backend calls the
//! planner on what it read, so a backend guarded by a lock plans inside it. The chain is
//! read back and held to the plan only when the commit does not already prove the result
//! ([`Verified::ReadBack`]).
//!
//! The generation is global: under a writer committing elsewhere faster than a long
//! chain is read and written back, every guarded write is stale. After
//! [`GUARDED_ATTEMPTS`] stale attempts the reconcile goes through
//! [`Backend::transact_anchored`] instead — and a backend whose read could not be taken at
//! one generation (`Snapshot::generation` 0: nothing to guard with) anchors at once —: the
//! write is anchored on the handles of the rules it deletes and inserts before
//! ([`Backend::apply_anchored`]: the kernel still refuses it whole when one of them is
//! gone), and the chain is then always read back: an anchored write cannot see a foreign
//! rule inserted since the read, so a chain that is not converged after it is another
//! stale attempt.

use crate::backend::{Backend, BackendError, Fingerprint, Transaction, Verified};
use crate::plan::{self, Plan, Role};
use crate::snapshot::{Family, Snapshot};
use crate::spec::ChainSpec;

/// How many stale writes are re-planned before giving up.
pub const MAX_RETRIES: u32 = 8;

/// Stale attempts with the generation guard before the write is anchored on handles.
pub const GUARDED_ATTEMPTS: u32 = 3;

/// What to make of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Every declared jump exactly once, in place (`jumpset apply`).
    Converge,
    /// No owned jump left (`jumpset cleanup`).
    Remove,
}

/// The plan for `snap` under `goal`.
pub fn plan_for(goal: Goal, snap: &Snapshot, spec: &ChainSpec) -> Plan {
    match goal {
        Goal::Converge => plan::plan(snap, spec),
        Goal::Remove => plan::cleanup(snap, spec),
    }
}

/// The outcome of a reconcile of one chain in one family.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outcome {
    /// The chain as read for the plan that was applied.
    pub before: Snapshot,
    /// The plan that was applied (or found empty).
    pub plan: Plan,
    /// Whether a transaction was committed.
    pub committed: bool,
    /// Generation the plan was made from.
    pub generation_before: u32,
    /// Generation after the commit (the same when nothing was committed).
    pub generation_after: u32,
    /// Stale writes re-planned.
    pub retries: u32,
    /// The kernel handle of each jump the plan inserted: `(index of the jump in the chain
    /// spec, handle)`. nf_tables: the rule's handle (`nft -a list chain`), as the kernel
    /// echoed it; legacy: its 1-based position in the chain after the commit
    /// (`iptables -D CHAIN N` numbering), valid until the chain next changes. When the
    /// commit proves nothing and the chain is read back, a jump with no copy there or more
    /// than one (another writer changed the chain in between) is left out.
    pub inserted: Vec<(usize, u64)>,
    /// Whether the committed write was anchored on handles (after stale attempts).
    pub anchored: bool,
}

/// What a reconcile got to, also when it failed: for the daemon's health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The step it was in last.
    pub step: Step,
    /// Writes refused as stale, reads that commits kept racing, and anchored writes
    /// whose read-back was not converged.
    pub stale: u32,
    /// Whether the last read found the chain in order: every owned jump in place and
    /// no conflict (`None`: no read succeeded).
    pub in_order: Option<bool>,
}

/// A step of a reconcile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Reading the chain.
    #[default]
    Read,
    /// Committing the plan.
    Commit,
    /// Reading the chain back after the commit.
    Verify,
}

impl Step {
    /// `read`, `commit`, `verify` (a metric label).
    pub fn name(self) -> &'static str {
        match self {
            Step::Read => "read",
            Step::Commit => "commit",
            Step::Verify => "verify",
        }
    }
}

/// A reconcile that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The kernel or the socket failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Other writers kept committing between our read and our write.
    #[error("{family} {table} {chain}: the ruleset changed under each of {attempts} attempts; another agent is writing continuously")]
    TooManyRetries {
        /// Attempts made.
        attempts: u32,
        /// Family.
        family: Family,
        /// Table.
        table: String,
        /// Chain.
        chain: String,
    },
    /// The commit succeeded but the chain read back is not what was planned.
    #[error("{family} {table} {chain}: after the commit the chain still needs {pending} change(s); nothing else wrote in between, so this is a bug — please report it with `jumpset status --json`")]
    Verify {
        /// Family.
        family: Family,
        /// Table.
        table: String,
        /// Chain.
        chain: String,
        /// Ops the re-plan still wants.
        pending: usize,
    },
}

impl ReconcileError {
    /// The CLI exit code (3 privilege, 4 kernel).
    pub fn exit_code(&self) -> i32 {
        match self {
            ReconcileError::Backend(e) => e.exit_code(),
            _ => 4,
        }
    }
}

/// What the reconciles of one chain in one family remember from one to the next
/// ([`reconcile_with_memo`]): what decided the last plan, and that plan's outcome when it
/// wrote nothing.
#[derive(Debug, Default)]
pub struct Memo {
    seen: Fingerprint,
    last: Option<Outcome>,
}

impl Memo {
    /// Forget everything: the next reconcile plans whatever it reads.
    pub fn clear(&mut self) {
        self.seen.invalidate();
        self.last = None;
    }
}

/// Reconcile one chain in one family as one transaction.
pub fn reconcile(
    backend: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
) -> Result<Outcome, ReconcileError> {
    run(backend, family, spec, goal, None, &mut Progress::default())
}

/// [`reconcile`], telling `progress` how far it got.
pub fn reconcile_with(
    backend: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
    progress: &mut Progress,
) -> Result<Outcome, ReconcileError> {
    run(backend, family, spec, goal, None, progress)
}

/// [`reconcile`], skipping the plan when the chain reads as it did at the last reconcile
/// with this `memo` and that one wrote nothing: then its outcome is returned again. For a
/// poll (the daemon on x_tables, which has no change notifications): where the backend
/// can tell cheaply and exactly that nothing that decides the plan changed
/// ([`Backend::transact_if_changed`]), e.g. x_tables counters moved, rules did not, the
/// planner is not run. `memo` belongs to one (spec, family, goal).
pub fn reconcile_with_memo(
    backend: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
    memo: &mut Memo,
) -> Result<Outcome, ReconcileError> {
    reconcile_tracked(backend, family, spec, goal, memo, &mut Progress::default())
}

/// [`reconcile_with_memo`], telling `progress` how far it got (as [`reconcile_with`]): the
/// daemon's reconcile.
pub fn reconcile_tracked(
    backend: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
    memo: &mut Memo,
    progress: &mut Progress,
) -> Result<Outcome, ReconcileError> {
    let r = run(backend, family, spec, goal, Some(&mut *memo), progress);
    match &r {
        Ok(o) if !o.committed => {
            memo.seen.confirm();
            memo.last = Some(o.clone());
        }
        _ => memo.clear(),
    }
    r
}

fn run(
    backend: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
    mut memo: Option<&mut Memo>,
    progress: &mut Progress,
) -> Result<Outcome, ReconcileError> {
    loop {
        progress.step = Step::Read;
        let anchor = progress.stale >= GUARDED_ATTEMPTS;
        let tx = {
            // What the read found is known whatever happens to the write (a held lock, a
            // stale or refused commit).
            let mut planner = |snap: &Snapshot| {
                let plan = plan_for(goal, snap, spec);
                progress.in_order = Some(plan.ops.is_empty() && plan.conflicts.is_empty());
                progress.step = Step::Commit;
                plan
            };
            match memo.as_deref_mut() {
                _ if anchor => backend
                    .transact_anchored(family, spec, &mut planner)
                    .map(Some),
                Some(m) => backend.transact_if_changed(family, spec, &mut m.seen, &mut planner),
                None => backend.transact(family, spec, &mut planner).map(Some),
            }
        };
        let tx: Transaction = match tx {
            Ok(Some(tx)) => tx,
            Ok(None) => match memo.as_deref_mut() {
                Some(Memo {
                    last: Some(last), ..
                }) => {
                    progress.in_order = Some(last.plan.conflicts.is_empty());
                    return Ok(Outcome {
                        retries: progress.stale,
                        ..last.clone()
                    });
                }
                // Only a confirmed fingerprint matches, and one is confirmed only
                // together with `last`; plan anyway. (Without a memo nothing is skipped.)
                m => {
                    if let Some(m) = m {
                        m.clear();
                    }
                    continue;
                }
            },
            Err(BackendError::Stale { .. }) => {
                progress.stale += 1;
                if progress.stale > MAX_RETRIES {
                    return Err(too_many(family, spec, progress));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Read while commits kept racing the dump (nf_tables): as stale as a refused
        // write, and nothing to guard one with — the backend anchored it. (A legacy table
        // that does not exist has generation 0 too.)
        if tx.before.generation == 0 && tx.before.table_exists {
            progress.stale += 1;
        }
        let g = tx.before.generation;
        if !tx.applied.committed {
            return Ok(Outcome {
                before: tx.before,
                plan: tx.plan,
                committed: false,
                generation_before: g,
                generation_after: g,
                retries: progress.stale,
                inserted: Vec::new(),
                anchored: false,
            });
        }
        let anchored = tx.applied.expected_generation.is_none();
        let (generation_after, inserted) = match tx.verified {
            Verified::Proven { inserted } => {
                progress.in_order = Some(tx.plan.conflicts.is_empty());
                (tx.applied.expected_generation.unwrap_or(g), inserted)
            }
            Verified::ReadBack => {
                // Read back and verify. A guarded commit is held to the plan only when
                // nobody else touched the chain since (still at the generation our commit
                // produced); an anchored one must have converged, or it is another attempt.
                progress.step = Step::Verify;
                let after = backend.read(family, &spec.table, &spec.chain)?;
                let replan = plan_for(goal, &after, spec);
                progress.in_order = Some(replan.ops.is_empty() && replan.conflicts.is_empty());
                if anchored && !replan.ops.is_empty() {
                    progress.stale += 1;
                    if progress.stale > MAX_RETRIES {
                        return Err(too_many(family, spec, progress));
                    }
                    continue;
                }
                if Some(after.generation) == tx.applied.expected_generation && !replan.is_noop() {
                    return Err(ReconcileError::Verify {
                        family,
                        table: spec.table.clone(),
                        chain: spec.chain.clone(),
                        pending: replan.ops.len(),
                    });
                }
                (
                    after.generation,
                    inserted_handles(&tx.plan, &after, &replan),
                )
            }
        };
        return Ok(Outcome {
            generation_before: g,
            generation_after,
            before: tx.before,
            plan: tx.plan,
            committed: true,
            retries: progress.stale,
            inserted,
            anchored,
        });
    }
}

fn too_many(family: Family, spec: &ChainSpec, progress: &Progress) -> ReconcileError {
    ReconcileError::TooManyRetries {
        attempts: progress.stale,
        family,
        table: spec.table.clone(),
        chain: spec.chain.clone(),
    }
}

/// The handle each jump `plan` inserted has in `after`, the chain read back after the
/// commit (`replan` is the plan made from it, for its roles): the one copy of the jump
/// there that really jumps to its target (a stale copy never counts). None for a jump with
/// no such copy or several — then which one is ours cannot be told.
fn inserted_handles(plan: &Plan, after: &Snapshot, replan: &Plan) -> Vec<(usize, u64)> {
    plan.ops
        .iter()
        .filter_map(|op| match *op {
            plan::Op::Insert { jump, .. } => Some(jump),
            plan::Op::Delete { .. } => None,
        })
        .filter_map(|jump| {
            let mut copies = after.rules.iter().zip(&replan.roles).filter(|(_, role)| {
                matches!(role, Role::Owned(j) | Role::Duplicate(j) | Role::Misplaced(j) if *j == jump)
            });
            match (copies.next(), copies.next()) {
                (Some((rule, _)), None) => Some((jump, rule.handle)),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Applied;
    use crate::plan::Slot;
    use crate::report::{ChainApply, PlannedOp};
    use crate::snapshot::{Comment, CommentEncoding, Rule, Verdict};
    use crate::spec::Config;

    /// Another writer's change to the chain.
    type Writer = Box<dyn FnMut(&mut Chain) + Send>;

    /// An in-memory chain that applies a plan the way the kernel does: kept rules keep
    /// their handles, new rules get the next handle, each commit bumps the generation.
    struct Chain {
        rules: Vec<Rule>,
        generation: u32,
        next_handle: u64,
        /// Another writer, run right after our commit (before the read-back).
        after_commit: Option<Writer>,
    }

    fn rule(handle: u64, comment: Option<&str>, target: &str) -> Rule {
        Rule {
            handle,
            comment: comment.map(|c| Comment {
                bytes: c.as_bytes().to_vec(),
                encoding: CommentEncoding::Xt,
            }),
            matches: vec![],
            counters: None,
            verdict: Verdict::Jump(target.into()),
        }
    }

    const OVN: &str = "kube-ovn prerouting rules";

    /// Kube-OVN's jump at position 1, ahead of Calico's: a delete and an insert.
    fn misplaced() -> Chain {
        Chain {
            rules: vec![
                rule(2, Some(OVN), "OVN-PREROUTING"),
                rule(3, Some("cali:6gwbT8clXdHdC1b1"), "cali-PREROUTING"),
                rule(5, Some("kubernetes service portals"), "KUBE-SERVICES"),
                rule(7, None, "CNI-HOSTPORT-DNAT"),
            ],
            generation: 10,
            next_handle: 20,
            after_commit: None,
        }
    }

    impl Backend for Chain {
        fn name(&self) -> &'static str {
            "test"
        }

        fn read(
            &mut self,
            family: Family,
            table: &str,
            chain: &str,
        ) -> Result<Snapshot, BackendError> {
            Ok(Snapshot {
                family,
                table: table.into(),
                chain: chain.into(),
                generation: self.generation,
                table_exists: true,
                chain_exists: true,
                rules: self.rules.clone(),
            })
        }

        fn apply(
            &mut self,
            snap: &Snapshot,
            spec: &ChainSpec,
            plan: &Plan,
        ) -> Result<Applied, BackendError> {
            if plan.is_noop() {
                return Ok(Applied {
                    committed: false,
                    changes: 0,
                    expected_generation: None,
                });
            }
            if snap.generation != self.generation {
                return Err(BackendError::Stale {
                    planned: snap.generation,
                });
            }
            self.rules = plan
                .result
                .iter()
                .map(|slot| match *slot {
                    Slot::Existing(i) => snap.rules[i].clone(),
                    Slot::New(j) => {
                        self.next_handle += 1;
                        let js = &spec.jumps[j];
                        rule(self.next_handle, Some(&js.comment), &js.target)
                    }
                })
                .collect();
            self.generation += 1;
            let expected = self.generation;
            if let Some(mut other) = self.after_commit.take() {
                other(self);
            }
            Ok(Applied {
                committed: true,
                changes: plan.ops.len(),
                expected_generation: Some(expected),
            })
        }

        fn generation(&mut self) -> Result<u32, BackendError> {
            Ok(self.generation)
        }
    }

    fn harvester() -> ChainSpec {
        Config::from_toml(include_str!("../testdata/harvester.toml"))
            .unwrap()
            .chains
            .remove(0)
    }

    fn insert_handles(report: &ChainApply) -> Vec<Option<u64>> {
        report
            .plan
            .ops
            .iter()
            .filter_map(|op| match op {
                PlannedOp::Insert { handle, .. } => Some(*handle),
                PlannedOp::Delete { .. } => None,
            })
            .collect()
    }

    #[test]
    fn an_inserted_jump_reports_the_handle_it_got_in_the_kernel() {
        let spec = harvester();
        let mut chain = misplaced();
        let o = reconcile(&mut chain, Family::Ip, &spec, Goal::Converge).unwrap();
        assert!(o.committed);
        // The jump now sits after Calico's with the handle the "kernel" gave it.
        let placed = chain
            .rules
            .iter()
            .find(|r| r.target() == Some("OVN-PREROUTING"))
            .unwrap();
        assert_eq!(placed.handle, 21);
        assert_eq!(o.inserted, [(0, 21)]);
        let report = ChainApply::new(&o, &spec);
        assert_eq!(insert_handles(&report), [Some(21)]);
        let json = serde_json::to_value(&report).unwrap();
        let insert = json["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["op"] == "insert")
            .unwrap();
        assert_eq!(insert["handle"], 21, "{json}");
    }

    #[test]
    fn a_plan_and_a_noop_carry_no_handle() {
        let spec = harvester();
        let mut chain = misplaced();
        let snap = chain.read(Family::Ip, "nat", "PREROUTING").unwrap();
        let plan = plan_for(Goal::Converge, &snap, &spec);
        let planned = crate::report::ChainPlan::new(&snap, &spec, &plan);
        assert!(planned
            .ops
            .iter()
            .any(|op| matches!(op, PlannedOp::Insert { handle: None, .. })));
        reconcile(&mut chain, Family::Ip, &spec, Goal::Converge).unwrap();
        let again = reconcile(&mut chain, Family::Ip, &spec, Goal::Converge).unwrap();
        assert!(!again.committed);
        assert!(again.inserted.is_empty());
        let removed = reconcile(&mut chain, Family::Ip, &spec, Goal::Remove).unwrap();
        assert!(removed.committed && removed.inserted.is_empty());
    }

    #[test]
    fn when_another_writer_adds_a_copy_before_the_read_back_no_handle_is_guessed() {
        let spec = harvester();
        let mut chain = misplaced();
        chain.after_commit = Some(Box::new(|c: &mut Chain| {
            c.rules.push(rule(99, Some(OVN), "OVN-PREROUTING"));
            c.generation += 1;
        }));
        let o = reconcile(&mut chain, Family::Ip, &spec, Goal::Converge).unwrap();
        assert!(o.committed);
        assert!(o.inserted.is_empty(), "{:?}", o.inserted);
        assert_eq!(insert_handles(&ChainApply::new(&o, &spec)), [None]);
    }

    #[test]
    fn a_stale_copy_written_by_another_writer_does_not_hide_the_new_rule() {
        let spec = harvester();
        let mut chain = misplaced();
        // Our comment on a rule that jumps elsewhere: stale, never the inserted rule.
        chain.after_commit = Some(Box::new(|c: &mut Chain| {
            c.rules.push(rule(98, Some(OVN), "ELSEWHERE"));
            c.generation += 1;
        }));
        let o = reconcile(&mut chain, Family::Ip, &spec, Goal::Converge).unwrap();
        assert_eq!(o.inserted, [(0, 21)]);
    }
}
