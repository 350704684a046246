//! The nf_tables netlink codec: bytes in, bytes out, no I/O.
//!
//! Requests and batches are built exactly as iptables-nft 1.8.9 (libnftnl) writes them;
//! replies and notifications are decoded without panicking on any input: malformed bytes
//! are a [`CodecError`] naming what was being read, unknown attributes are skipped, and
//! every expression that is not interpreted is kept as the raw payload of its
//! `NFTA_EXPR_DATA`, so it can be sent back unchanged.
//!
//! There is one rule decoder, [`parse`] (or [`messages`], the same one message at a time,
//! with no list allocated): a NEWRULE or DELRULE is decoded straight from the
//! kernel's buffer into the backend-independent [`crate::snapshot::Rule`], with its table,
//! chain and raw expressions borrowed ([`RuleMsg`]). The backend's reads and census, and
//! the daemon's notifications all go through it.
//!
//! The layers, bottom up:
//!
//! | module      | what                                                                  |
//! |-------------|-----------------------------------------------------------------------|
//! | `frame`     | netlink framing: messages of a datagram, attribute iteration and      |
//! |             | emission, integers and strings, [`CodecError`]                        |
//! | `expr`      | rule expressions: xt match/target, counter, immediate verdict, others |
//! |             | raw — read as [`ExprView`], written from [`Expr`]                     |
//! | `compat`    | the iptables-compat translation: xt comment/addrtype, userdata        |
//! |             | comments, verdicts ↔ `snapshot::Rule`/`Match`/`Verdict`               |
//! | `message`   | the messages the kernel sends: gen, table, chain, rule, hook,         |
//! |             | error/ack, done ([`parse`], [`Message`], [`Body`])                    |
//! | `hook`      | the hook dump behind `nft list hooks` (`NFNL_SUBSYS_HOOK`): request   |
//! |             | and entries ([`get_hooks`], [`HookInfo`], [`HookDesc`])               |
//! | `batch`     | requests (GETGEN, GETRULE, ...) and guarded batches: BEGIN with the   |
//! |             | generation, changes, END with an ack ([`Batch`])                      |
//! | `scene`     | (feature `testing`) other agents' rules — native matches, DNAT — for  |
//! |             | the scenes the demo and the tests play; jumpset never writes them     |
//!
//! Each module tests itself on the bytes captured from iptables-nft, nft and the kernel
//! in `testdata/nft/` (produced by `capture.sh` there); the tests of `message` also hold
//! the decoder to an independent one, `netlink-packet-netfilter`.
//!
//! Public with the `testing` or `fuzzing` feature, for tests, benches and the fuzz
//! targets; not a stable API. Without them the codec is private to the crate.

mod batch;
mod compat;
mod expr;
mod frame;
mod hook;
mod message;
#[cfg(feature = "testing")]
pub mod scene;
#[cfg(test)]
mod testutil;

#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
pub use batch::get_rules;
#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
pub use batch::NewRule;
pub(super) use batch::{
    get_all_chains, get_all_rules, get_chain, get_chain_unacked_into, get_chains, get_gen_into,
    get_rules_into, get_table, get_table_rules, get_tables,
};
pub use batch::{get_gen, Batch, Position};
pub use compat::encode_rule;
pub use expr::ExprView;
#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
pub use expr::{Expr, NftVerdict};
pub use frame::CodecError;
#[cfg(feature = "testing")]
pub use hook::hook_entry;
pub use hook::{get_hooks, HookDesc, HookInfo};
#[cfg(any(test, feature = "testing", feature = "fuzzing", feature = "daemon"))]
pub use message::parse;
pub use message::{messages, Body, ChainInfo, Message, TableInfo};
#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
pub use message::{GenInfo, RuleMsg};

/// `nfgen_family` for the `ip` family.
pub const NFPROTO_IPV4: u8 = 2;
/// `nfgen_family` for the `ip6` family.
pub const NFPROTO_IPV6: u8 = 10;
