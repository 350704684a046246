//! jumpset owns the *jump set* of shared netfilter base chains.
//!
//! The data flows one way:
//!
//! - [`spec`] — the declared jumps and their placement (TOML config), validated.
//! - [`snapshot`] — what the kernel has: one chain's rules, decoded, and its generation.
//! - [`plan`] — the pure diff from what is to what should be (the heart, no I/O).
//! - [`backend`] — the kernel interfaces: `nft` (nf_tables over netlink). All `unsafe`
//!   and kernel layouts live there.
//! - [`reconcile`] — read → plan → apply → verify, with bounded retries on stale writes.
//! - [`report`] — the JSON and text outputs of the CLI.
//! - [`commands`] — the CLI's commands as library functions (used by the binary and the C ABI).
//! - [`daemon`] — `jumpset daemon`: notification-driven reconcile, fight backoff, systemd, metrics.
//! - [`demo`] — the Harvester incident and its repair in a throwaway network namespace.
//! - [`bench`] — `jumpset bench`: reconcile timings against the exec baselines, in a throwaway namespace.
//! - [`scenario`] — reads the iptables-restore fixtures the demo and tests use.
//! - [`netns`] — throwaway network namespaces (demo, bench, tests).

pub mod backend;
pub mod bench;
pub mod commands;
pub mod daemon;
pub mod demo;
pub mod detect;
#[doc(hidden)]
pub mod fuzzing;
pub mod netns;
pub mod plan;
pub mod reconcile;
pub mod report;
pub mod scenario;
pub mod snapshot;
pub mod spec;
