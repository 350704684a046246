//! jumpset owns the *jump set* of shared netfilter base chains: the `-j` rules that
//! Calico, Kube-OVN, kube-proxy and the CNI portmap plugin all keep in the same
//! `nat PREROUTING` chain. Declare the jumps (each identified by its comment) and where
//! they go relative to the others; jumpset reads the chain straight from the kernel
//! (nf_tables netlink, or the x_tables socket options on legacy hosts), plans the smallest
//! change and commits it as ONE kernel transaction guarded by the ruleset generation. It
//! never runs `iptables` and never touches a rule it does not own.
//!
//! ```
//! use jumpset::spec::{ChainSpec, Config, JumpSpec};
//! use jumpset::Jumpset;
//!
//! let config = Config::builder()
//!     .chain(ChainSpec::builder("nat", "PREROUTING").jump(
//!         JumpSpec::builder("OVN-PREROUTING", "kube-ovn prerouting rules")
//!             .after(["cali-PREROUTING"])
//!             .before(["KUBE-SERVICES"]),
//!     ))
//!     .build()?;
//! let js = Jumpset::new(config);
//! # #[cfg(feature = "testing")] {
//! // Without root, against the in-memory kernel of the `testing` feature; as root,
//! // `js.apply()` does the same against the real kernel, in this thread's namespace.
//! let mut kernel = jumpset::testing::FakeKernel::new();
//! let report = js.apply_with(&mut kernel);
//! assert_eq!(report.exit_code(), 0);
//! assert_eq!(kernel.listing(jumpset::snapshot::Family::Ip, "nat", "PREROUTING"),
//!     [r#"-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#]);
//! // Converged: the next apply reads and commits nothing.
//! let generation = kernel.current_generation();
//! assert!(js.apply_with(&mut kernel).ok().all(|chain| !chain.committed));
//! assert_eq!(kernel.current_generation(), generation);
//! # }
//! # Ok::<(), jumpset::Error>(())
//! ```
//!
//! The data flows one way (`docs/architecture.md` in the repository tells it whole):
//!
//! - [`spec`] — the declared jumps and their placement (TOML or a builder), validated.
//! - [`snapshot`] — what the kernel has: one chain's rules, decoded, and its generation.
//! - [`plan`] — the pure diff from what is to what should be (the heart, no I/O).
//! - [`backend`] — the kernel interfaces: `nft` (nf_tables over netlink) and `legacy`
//!   (x_tables socket options); [`backend::open`] is the one place they are opened. All
//!   `unsafe` and kernel layouts live there.
//! - [`reconcile`] — read → plan → apply → verify, with bounded retries on stale writes.
//! - [`report`] — the typed results of each operation, serializable to the command's JSON.
//! - [`Jumpset`] — the operations (`status`, `check`, `plan`, `apply`, `cleanup`) over
//!   every managed chain and family; [`detect()`] — which backend the host uses.
//! - [`explain`] — the packet's whole path through a hook (both backends, every table),
//!   who owns each piece, what is fragile, and why each owned jump stands where it does.
//! - [`iptables`] — the iptables facts the rest relies on (tables, base chains, names).
//! - `daemon` (feature `daemon`) — the event-driven engine and its loop.
//! - `testing` (feature `testing`) — an in-memory kernel for unit tests without root.

mod api;
pub mod backend;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod detect;
mod error;
pub mod explain;
#[cfg(test)]
mod fixtures;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod iptables;
mod netns;
pub mod notification;
pub mod plan;
pub mod privilege;
pub mod reconcile;
pub mod report;
pub mod snapshot;
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;

pub use api::{detect, Jumpset};
pub use error::{exit, Error};

/// The crate README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
