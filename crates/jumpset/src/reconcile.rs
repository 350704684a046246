//! One reconcile of one chain in one family: read → plan → apply → verify, re-planning
//! (a bounded number of times) when the kernel refuses a write planned from a stale
//! generation.

use crate::backend::{Backend, BackendError};
use crate::plan::{self, Plan};
use crate::snapshot::{Family, Snapshot};
use crate::spec::ChainSpec;

/// How many stale writes are re-planned before giving up.
pub const MAX_RETRIES: u32 = 8;

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
}

/// A reconcile that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The kernel or the socket failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Other writers kept committing between our read and our write.
    #[error("{family} {table} {chain}: the ruleset changed under each of {} attempts; another agent is writing continuously", MAX_RETRIES + 1)]
    TooManyRetries {
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

/// Reconcile one chain in one family as one transaction.
pub fn reconcile(
    backend: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
) -> Result<Outcome, ReconcileError> {
    let mut retries = 0;
    loop {
        let snap = backend.read(family, &spec.table, &spec.chain)?;
        let plan = plan_for(goal, &snap, spec);
        match backend.apply(&snap, spec, &plan) {
            Ok(applied) if !applied.committed => {
                let g = snap.generation;
                return Ok(Outcome {
                    before: snap,
                    plan,
                    committed: false,
                    generation_before: g,
                    generation_after: g,
                    retries,
                });
            }
            Ok(applied) => {
                // Read back and verify. Only a chain nobody else touched since our commit
                // (still at the generation our commit produced) can be held to the plan.
                let after = backend.read(family, &spec.table, &spec.chain)?;
                if Some(after.generation) == applied.expected_generation {
                    let pending = plan_for(goal, &after, spec).ops.len();
                    if pending > 0 {
                        return Err(ReconcileError::Verify {
                            family,
                            table: spec.table.clone(),
                            chain: spec.chain.clone(),
                            pending,
                        });
                    }
                }
                return Ok(Outcome {
                    generation_before: snap.generation,
                    generation_after: after.generation,
                    before: snap,
                    plan,
                    committed: true,
                    retries,
                });
            }
            Err(BackendError::Stale { .. }) if retries < MAX_RETRIES => retries += 1,
            Err(BackendError::Stale { .. }) => {
                return Err(ReconcileError::TooManyRetries {
                    family,
                    table: spec.table.clone(),
                    chain: spec.chain.clone(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}
