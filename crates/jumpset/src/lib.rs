//! jumpset owns the *jump set* of shared netfilter base chains.
//!
//! The data flows one way:
//!
//! - [`spec`] — the declared jumps and their placement (TOML config), validated.
//! - [`snapshot`] — what the kernel has: one chain's rules, decoded, and its generation.
//! - [`plan`] — the pure diff from what is to what should be (the heart, no I/O).
//! - [`backend`] — the kernel interfaces: `nft` (nf_tables over netlink) and `legacy`
//!   (x_tables socket options). All `unsafe` and kernel layouts live there.
//! - [`reconcile`] — read → plan → apply → verify, with bounded retries on stale writes.
//! - [`detect`] — which backend the host uses (read-only).
//! - [`report`] — the JSON and text outputs of the commands.
//! - [`commands`] — the commands as library functions (used by the binary and the C ABI).
//! - [`daemon`] (feature `daemon`) — notification-driven reconcile, fight backoff,
//!   systemd, metrics.

pub mod backend;
pub mod commands;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod detect;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod notification;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod snapshot;
pub mod spec;
#[cfg(feature = "testing")]
pub mod testing;
