//! Kernel backends: one trait, one implementation per kernel interface.
//!
//! A backend reads one chain into a [`Snapshot`] and applies a [`Plan`] made from that
//! snapshot as ONE kernel transaction, guarded by the generation it was read at: when
//! anyone else committed in between, the kernel refuses it and [`BackendError::Stale`]
//! tells the caller to re-read and re-plan. All `unsafe` and all kernel layouts live in
//! the backend modules.
//!
//! A reconcile goes through [`Backend::transact`]: the backend reads, calls the planner
//! on what it read, and commits the plan, so a backend whose guard is a lock rather than
//! a generation (x_tables: the xtables lock) plans inside it, from one read. It also says
//! what its commit proves ([`Verified`]), so the chain is read back only when that is
//! the only way to know. After repeated stale attempts (other writers committing
//! elsewhere faster than a long chain is read and written back) the reconcile goes
//! through [`Backend::transact_anchored`] instead: the write is anchored on the rules it
//! deletes and inserts next to, and always read back.

pub mod legacy;
pub mod nft;

use crate::error::Error;
use crate::plan::Plan;
use crate::snapshot::{Family, Snapshot};
use crate::spec::{BackendChoice, ChainSpec};
use std::time::Duration;

/// How a backend is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenOptions {
    /// The legacy backend's wait for the xtables lock; zero tries once without waiting,
    /// like iptables without `-w`.
    pub xtables_lock_timeout: Duration,
    /// Let a backend create the first iptables table of its kind for a family while the
    /// other backend is in use for it (which makes the host mixed: packets cross both).
    /// Off by default: such a write is refused with [`BackendError::WouldMix`].
    pub allow_mixed: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            xtables_lock_timeout: Duration::from_secs(10),
            allow_mixed: false,
        }
    }
}

/// Open the backend `choice` in the calling thread's network namespace — the one place
/// jumpset opens a backend: first the capabilities it needs are checked
/// ([`crate::privilege::require`]); `Auto` then detects the host (read-only) and fails
/// with [`Error::Undecided`] when it will not choose.
pub fn open(choice: BackendChoice, options: OpenOptions) -> Result<Box<dyn Backend>, Error> {
    crate::privilege::require(choice)?;
    match choice {
        BackendChoice::Nft => Ok(Box::new(
            nft::NftBackend::open()?.allow_mixed(options.allow_mixed),
        )),
        BackendChoice::Legacy => Ok(Box::new(
            legacy::LegacyBackend::open(options.xtables_lock_timeout)?
                .allow_mixed(options.allow_mixed),
        )),
        BackendChoice::Auto => {
            let verdict = crate::detect::detect_host()?;
            match verdict.backend {
                Some(crate::detect::Choice::Nft) => open(BackendChoice::Nft, options),
                Some(crate::detect::Choice::Legacy) => open(BackendChoice::Legacy, options),
                None => Err(Error::Undecided {
                    verdict: Box::new(verdict),
                }),
            }
        }
    }
}

/// What a committed transaction left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Whether anything was committed (false when the plan was empty).
    pub committed: bool,
    /// Kernel messages (rules, chains, table) in the transaction.
    pub changes: usize,
    /// The generation a read right after the commit shows when nobody else wrote in
    /// between (nf_tables: the next genid; legacy: the new entry count). A read-back at
    /// exactly this generation must match the plan.
    pub expected_generation: Option<u32>,
}

/// What a backend knows about the chain after its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verified {
    /// Nothing beyond the commit's success: the reconcile reads the chain back and holds
    /// it to the plan.
    ReadBack,
    /// The commit itself proves the chain is what the plan made of the read: nf_tables,
    /// a batch guarded by the generation the plan was read at (the kernel checked it
    /// under its commit mutex, and applied every message or none); x_tables, `GET_INFO`
    /// right after the replace, under the xtables lock, reporting the very entry count,
    /// size, hook entries and underflows of the blob encoded.
    Proven {
        /// The kernel handle of each jump the plan inserted: `(index of the jump in the
        /// chain spec, handle)` (nf_tables: the rule handle the kernel echoed; x_tables:
        /// the 1-based position the rule was written at).
        inserted: Vec<(usize, u64)>,
    },
}

/// One read, the plan made from it, and what was committed ([`Backend::transact`]).
#[derive(Debug, Clone)]
pub struct Transaction {
    /// The chain as read.
    pub before: Snapshot,
    /// The plan made from `before`.
    pub plan: Plan,
    /// What was committed (nothing when the plan was empty).
    pub applied: Applied,
    /// What the commit proves.
    pub verified: Verified,
}

/// What decided the last plan of a chain, as a backend read it (see
/// [`Backend::transact_if_changed`]). Opaque; compares by content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// The backend's canonical bytes of the chain.
    pub(crate) bytes: Vec<u8>,
    /// Whether `bytes` is what the last plan (one that wrote nothing) was made from.
    pub(crate) valid: bool,
}

impl Fingerprint {
    /// Forget it: the next read plans whatever it finds.
    pub fn invalidate(&mut self) {
        self.valid = false;
    }

    /// Mark the read that last updated it as one whose plan wrote nothing.
    pub fn confirm(&mut self) {
        self.valid = true;
    }
}

/// One kernel interface. `Send`: a daemon may hand it to another thread.
pub trait Backend: Send {
    /// The backend's name: `nft` or `legacy`.
    fn name(&self) -> &'static str;

    /// Read `table`/`chain` of `family` (`iptables -t TABLE -S CHAIN`).
    fn read(&mut self, family: Family, table: &str, chain: &str) -> Result<Snapshot, BackendError>;

    /// Apply `plan`, made from `snap` for `spec`, as one transaction guarded by
    /// `snap.generation`; creates the table, base chain and target chains when missing.
    fn apply(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError>;

    /// Apply `plan` as one transaction anchored on the rules it deletes and inserts next
    /// to rather than guarded by the generation: what a reconcile falls back to after
    /// repeated stale attempts, when other writers commit elsewhere faster than a long
    /// chain can be read and written back (the generation is global). The kernel refuses
    /// the whole transaction when an anchor is gone ([`BackendError::Stale`]); it cannot
    /// see a rule inserted since the read, so the caller must read the chain back. The
    /// default is [`Backend::apply`] (x_tables checks per table already).
    fn apply_anchored(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        self.apply(snap, spec, plan)
    }

    /// The current generation (nf_tables genid), after a commit.
    fn generation(&mut self) -> Result<u32, BackendError>;

    /// Read `spec`'s chain in `family`, plan from that read with `planner`, and apply the
    /// plan as one transaction guarded by that read. [`BackendError::Stale`]: someone
    /// else committed first; nothing was applied (re-run it). A read that could not be
    /// taken at one generation (`Snapshot::generation` 0 with the table there: commits
    /// elsewhere kept racing a long dump) guards nothing: its plan is anchored at once
    /// ([`Backend::apply_anchored`]) and the result is [`Verified::ReadBack`]. The default
    /// is [`read`] then [`apply`] (or [`Backend::apply_anchored`], as just said).
    ///
    /// [`read`]: Backend::read
    /// [`apply`]: Backend::apply
    fn transact(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Transaction, BackendError> {
        let before = self.read(family, &spec.table, &spec.chain)?;
        let plan = planner(&before);
        let applied = if before.generation == 0 && before.table_exists {
            self.apply_anchored(&before, spec, &plan)?
        } else {
            self.apply(&before, spec, &plan)?
        };
        Ok(Transaction {
            before,
            plan,
            applied,
            verified: Verified::ReadBack,
        })
    }

    /// [`Backend::transact`] anchored rather than guarded: read, plan, and
    /// [`Backend::apply_anchored`] — what a reconcile falls back to after repeated stale
    /// attempts. An anchored commit proves nothing about rules inserted since the read,
    /// so it is always [`Verified::ReadBack`] (unless the backend's own guard does not
    /// depend on other writers: x_tables' lock).
    fn transact_anchored(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Transaction, BackendError> {
        let before = self.read(family, &spec.table, &spec.chain)?;
        let plan = planner(&before);
        let applied = self.apply_anchored(&before, spec, &plan)?;
        Ok(Transaction {
            before,
            plan,
            applied,
            verified: Verified::ReadBack,
        })
    }

    /// [`Backend::transact`], unless what decides the plan reads as `seen` says it did
    /// when a plan last wrote nothing: then `Ok(None)`, without planning. Otherwise `seen`
    /// becomes what this read found (unconfirmed: the caller [`Fingerprint::confirm`]s it
    /// when the plan writes nothing). x_tables keeps no generation and its counters
    /// change with every packet, so it compares the chain's rules, counters aside; the
    /// default cannot tell cheaply and always transacts.
    fn transact_if_changed(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        seen: &mut Fingerprint,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Option<Transaction>, BackendError> {
        seen.invalidate();
        self.transact(family, spec, planner).map(Some)
    }

    /// The netlink port id this backend commits from, when the kernel names it in its
    /// change notifications (nf_tables): how a watcher tells our own commits apart.
    fn commit_portid(&self) -> Option<u32> {
        None
    }
}

impl Applied {
    /// Nothing committed (the plan was empty).
    pub const NOTHING: Applied = Applied {
        committed: false,
        changes: 0,
        expected_generation: None,
    };
}

/// A failure talking to the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The kernel refused for lack of privilege.
    #[error("{step}: permission denied: jumpset needs {capability} (run as root, or grant it: setcap cap_net_admin,cap_net_raw+ep, or AmbientCapabilities= in the unit)")]
    Permission {
        /// What was being done.
        step: String,
        /// The capability that is missing.
        capability: &'static str,
    },
    /// The transaction was planned from an old generation and refused (ERESTART / EAGAIN).
    #[error("the ruleset changed after generation {planned} was read; re-read and re-plan")]
    Stale {
        /// The generation the plan was made from.
        planned: u32,
    },
    /// A socket call failed.
    #[error("{step}: {source}")]
    Io {
        /// What was being done.
        step: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a request.
    #[error("{step}: the kernel refused it: {message} (errno {errno})")]
    Kernel {
        /// Which request, in iptables terms.
        step: String,
        /// The positive errno.
        errno: i32,
        /// strerror, plus the kernel's extended-ack message if it sent one.
        message: String,
    },
    /// The kernel's reply could not be decoded.
    #[error("{step}: cannot decode the kernel's reply: {source}")]
    Decode {
        /// What was being read.
        step: String,
        /// The codec's error.
        #[source]
        source: nft::codec::CodecError,
    },
    /// A jump's target chain does not exist and `create_chain` is false.
    #[error("{family} {table}: chain {chain} does not exist and create_chain = false for the jump to it; create it (iptables -t {table} -N {chain}) or set create_chain = true")]
    MissingTarget {
        /// Family.
        family: Family,
        /// Table.
        table: String,
        /// The missing target chain.
        chain: String,
    },
    /// The table holds something we must not write into.
    #[error("{0}")]
    Unsupported(String),
    /// Another process holds the xtables lock (iptables-legacy's `/run/xtables.lock`).
    #[error("the xtables lock {} is held by another process (iptables-legacy or another agent){}; see who holds it with `fuser -v {}`", .path.display(), if .waited.is_zero() { " (tried once: xtables_lock_timeout = \"0s\")".to_string() } else { format!(" for all of xtables_lock_timeout = {:?}", .waited) }, .path.display())]
    LockHeld {
        /// The lock file.
        path: std::path::PathBuf,
        /// How long it was waited for (zero: one try).
        waited: Duration,
    },
    /// The write would create the first iptables table of this backend for the family
    /// while the other backend is in use for it: the host would become mixed.
    #[error("{family}: refusing to create the first {backend} table for {family} while {other} is in use for it: the host would become mixed (packets would cross both backends); pass --backend {other} (the one in use), or --allow-mixed-backends if that is really meant. Nothing was written.\n  {}", .evidence.join("\n  "))]
    WouldMix {
        /// Family.
        family: Family,
        /// The backend that would create the table: `nft` or `legacy`.
        backend: &'static str,
        /// The backend in use: `legacy` or `nft`.
        other: &'static str,
        /// What detection found.
        evidence: Vec<String>,
    },
}

impl BackendError {
    /// The CLI exit code for this error (3: privilege, 4: kernel).
    pub fn exit_code(&self) -> i32 {
        match self {
            BackendError::Permission { .. } => crate::exit::PRIVILEGE,
            BackendError::WouldMix { .. } => crate::exit::USAGE,
            _ => crate::exit::KERNEL,
        }
    }

    /// [`BackendError::WouldMix`] when `creating` the first table of its kind for `family`
    /// would make the host mixed; checked by each backend before it creates a table.
    pub(crate) fn check_mixing(
        creating: crate::detect::Choice,
        family: Family,
    ) -> Result<(), BackendError> {
        match crate::detect::would_mix(creating, family)? {
            None => Ok(()),
            Some(evidence) => Err(BackendError::WouldMix {
                family,
                backend: creating.name(),
                other: match creating {
                    crate::detect::Choice::Nft => "legacy",
                    crate::detect::Choice::Legacy => "nft",
                },
                evidence,
            }),
        }
    }
}
