//! The nf_tables netlink codec: bytes in, bytes out, no I/O.
//!
//! INTERFACE SKELETON — being implemented. Signatures are the contract; bodies are todo!().

#![allow(dead_code, unused_variables, missing_docs)]

use crate::snapshot::{CommentEncoding, Match, Rule, Verdict};

/// `nfgen_family` for the `ip` family.
pub const NFPROTO_IPV4: u8 = 2;
/// `nfgen_family` for the `ip6` family.
pub const NFPROTO_IPV6: u8 = 10;

/// A decoding failure: what was expected and what was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The bytes end before the structure does.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// The bytes are present but not what the kernel sends.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// Where a NEWRULE goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the tail (`iptables -A`): CREATE|APPEND, no POSITION.
    Append,
    /// At the head (`iptables -I CHAIN`): CREATE, no POSITION.
    Head,
    /// Right after the rule with this handle: CREATE|APPEND, POSITION=h.
    After(u64),
    /// Right before the rule with this handle: CREATE, POSITION=h.
    Before(u64),
}

/// An nf_tables verdict (`NFTA_DATA_VERDICT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NftVerdict {
    /// NFT_JUMP -3, NFT_GOTO -4, NFT_RETURN -5, NF_DROP 0, NF_ACCEPT 1, ...
    pub code: i32,
    /// The chain for jump/goto.
    pub chain: Option<String>,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// xt match (`match`): name, revision, raw info blob (host byte order).
    Match { name: String, rev: u32, info: Vec<u8> },
    /// xt target (`target`): name, revision, raw info blob.
    Target { name: String, rev: u32, info: Vec<u8> },
    /// `counter`.
    Counter { bytes: u64, packets: u64 },
    /// `immediate` into the verdict register.
    Verdict(NftVerdict),
    /// Any other expression: its name and the raw payload of NFTA_EXPR_DATA, kept as is.
    Other { name: String, data: Vec<u8> },
}

/// A rule to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    /// Expressions in order.
    pub exprs: Vec<Expr>,
    /// NFTA_RULE_USERDATA, if any.
    pub userdata: Option<Vec<u8>>,
    /// Add NFTA_RULE_COMPAT {proto 0, flags 0}, as iptables-nft does.
    pub compat: bool,
}

/// A rule as the kernel returned it (dump or notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub position: Option<u64>,
    pub exprs: Vec<Expr>,
    pub userdata: Option<Vec<u8>>,
}

/// NEWGEN contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenInfo {
    pub id: u32,
    pub proc_pid: Option<u32>,
    pub proc_name: Option<String>,
}

/// NEWCHAIN contents (reply or notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    pub table: String,
    pub name: String,
    pub handle: u64,
    /// (hooknum, priority) for base chains.
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
    pub chain_type: Option<String>,
    pub flags: u32,
}

/// NEWTABLE contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub flags: u32,
    pub handle: u64,
}

/// The decoded body of one netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Gen(GenInfo),
    NewRule(NftRule),
    DelRule(NftRule),
    NewChain(ChainInfo),
    DelChain(ChainInfo),
    NewTable(TableInfo),
    DelTable(TableInfo),
    /// NLMSG_DONE.
    Done,
    /// NLMSG_ERROR: `code` 0 is an ack; `seq` is the embedded (original) header's seq;
    /// `msg` the extended-ack message, if any.
    Error { code: i32, seq: u32, msg: Option<String> },
    /// Any other message type, not decoded.
    Other,
}

/// One netlink message with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub portid: u32,
    /// nfgenmsg family (0 when the message has no nfgenmsg).
    pub family: u8,
    /// nfgenmsg res_id, host order (low 16 bits of the genid in kernel replies).
    pub res_id: u16,
    pub body: Body,
}

/// Split one received datagram into messages and decode them.
pub fn parse(datagram: &[u8]) -> Result<Vec<Message>, CodecError> {
    todo!()
}

/// GETGEN request (20 bytes, REQUEST).
pub fn get_gen(seq: u32) -> Vec<u8> {
    todo!()
}

/// GETRULE dump of one chain (REQUEST|DUMP), TABLE + CHAIN attributes.
pub fn get_rules(family: u8, table: &str, chain: &str, seq: u32) -> Vec<u8> {
    todo!()
}

/// GETCHAIN of one chain (REQUEST|ACK): NEWCHAIN + ack, or error -ENOENT.
pub fn get_chain(family: u8, table: &str, chain: &str, seq: u32) -> Vec<u8> {
    todo!()
}

/// GETTABLE of one table (REQUEST|ACK).
pub fn get_table(family: u8, table: &str, seq: u32) -> Vec<u8> {
    todo!()
}

/// One nf_tables transaction: BEGIN (with the generation) ... END (with ACK).
#[derive(Debug, Clone)]
pub struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
}

impl Batch {
    /// BATCH_BEGIN carrying NFNL_BATCH_GENID = genid; `seq` is BEGIN's seq, later
    /// messages get seq + 1, + 2, ...
    pub fn begin(genid: u32, seq: u32) -> Batch {
        todo!()
    }
    /// NEWTABLE (REQUEST|CREATE), NAME only. Returns the message's seq.
    pub fn new_table(&mut self, family: u8, name: &str) -> u32 {
        todo!()
    }
    /// NEWCHAIN for a base chain (REQUEST|CREATE): TABLE, NAME, HOOK{num, prio}, POLICY
    /// accept, TYPE — exactly as iptables-nft 1.8.9.
    pub fn new_base_chain(
        &mut self,
        family: u8,
        table: &str,
        name: &str,
        hooknum: u32,
        priority: i32,
        chain_type: &str,
    ) -> u32 {
        todo!()
    }
    /// NEWCHAIN for a user chain (REQUEST|CREATE): TABLE, NAME.
    pub fn new_user_chain(&mut self, family: u8, table: &str, name: &str) -> u32 {
        todo!()
    }
    /// DELRULE by handle (REQUEST).
    pub fn del_rule(&mut self, family: u8, table: &str, chain: &str, handle: u64) -> u32 {
        todo!()
    }
    /// NEWRULE at a position.
    pub fn new_rule(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
        rule: &NewRule,
        at: Position,
    ) -> u32 {
        todo!()
    }
    /// BATCH_END with NLM_F_ACK; returns the bytes and END's seq.
    pub fn end(self) -> (Vec<u8>, u32) {
        todo!()
    }
}

/// The 256-byte `xt_comment_info` for a comment (truncated to 255 bytes, NUL-filled).
pub fn xt_comment_info(comment: &[u8]) -> Vec<u8> {
    todo!()
}

/// Rule userdata holding one comment TLV (type 0, NUL-terminated), as `nft` writes it.
pub fn userdata_comment(comment: &[u8]) -> Vec<u8> {
    todo!()
}

/// The rule iptables-nft 1.8.9 writes for `[-m comment --comment C] [matches] -j/-g T`,
/// with the comment in the given encoding.
pub fn encode_rule(
    comment: Option<(&[u8], CommentEncoding)>,
    matches: &[Match],
    verdict: &Verdict,
) -> NewRule {
    todo!()
}

/// Decode a kernel rule into the backend-independent model.
pub fn to_rule(rule: &NftRule) -> Rule {
    todo!()
}
