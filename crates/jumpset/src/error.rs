//! The library's error, and the exit codes of the `jumpset` command it maps to.

use crate::backend::BackendError;
use crate::detect::HostVerdict;
use crate::reconcile::ReconcileError;
use crate::spec::SpecError;

/// The exit codes of the `jumpset` command (and the return codes of the C ABI).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// `check`: the chain needs changes (drift).
    pub const DRIFT: i32 = 1;
    /// Bad usage or a bad config.
    pub const USAGE: i32 = 2;
    /// Missing privilege.
    pub const PRIVILEGE: i32 = 3;
    /// The kernel refused or failed.
    pub const KERNEL: i32 = 4;
    /// Done as far as possible, but the declared order cannot be met without moving rules
    /// jumpset does not own (a conflict).
    pub const CONFLICT: i32 = 5;

    /// The worse of two exit codes: usage, then privilege, then kernel errors, then a
    /// conflict, then drift.
    pub fn worse(a: i32, b: i32) -> i32 {
        let rank = |c: i32| match c {
            OK => 0,
            DRIFT => 1,
            CONFLICT => 2,
            KERNEL => 3,
            PRIVILEGE => 4,
            _ => 5,
        };
        if rank(b) > rank(a) {
            b
        } else {
            a
        }
    }
}

/// Why a jumpset operation could not run. Each variant keeps its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config is invalid (exit 2).
    #[error("config: {0}")]
    Config(#[from] SpecError),
    /// `--backend auto` on a host where no backend can be chosen (mixed, or empty): the
    /// caller must say which (exit 2).
    #[error("--backend auto: the host is {mode} and jumpset will not guess; pass --backend nft or --backend legacy.\n  {evidence}", mode = .verdict.mode.name(), evidence = .verdict.evidence.join("\n  "))]
    Undecided {
        /// What detection found.
        verdict: Box<HostVerdict>,
    },
    /// A capability the operation needs is missing (exit 3).
    #[error("{message}")]
    Privilege {
        /// The names of the missing capabilities (`CAP_NET_ADMIN`, ...).
        missing: Vec<String>,
        /// Which capability is missing, what it is for, and how to grant it.
        message: String,
    },
    /// The calling thread could not enter the requested network namespace (exit 3: it
    /// takes CAP_SYS_ADMIN).
    #[error("cannot enter the network namespace: {0}")]
    Netns(#[source] std::io::Error),
    /// The kernel or a socket failed (exit 3 for a refused privilege, else 4).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A reconcile failed (exit 4).
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

impl Error {
    /// The `jumpset` command's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Undecided { .. } => exit::USAGE,
            Error::Privilege { .. } | Error::Netns(_) => exit::PRIVILEGE,
            Error::Backend(e) => e.exit_code(),
            Error::Reconcile(e) => e.exit_code(),
        }
    }
}
