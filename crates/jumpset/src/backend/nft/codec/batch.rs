//! Requests and batches, built exactly as iptables-nft 1.8.9 (libnftnl) writes them.
//!
//! A request (GETGEN, GETRULE, GETCHAIN, GETTABLE) is one message. A [`Batch`] is one
//! guarded nf_tables transaction: BATCH_BEGIN carrying the generation the change was
//! planned from (`NFNL_BATCH_GENID`: the kernel refuses the whole batch with ERESTART when
//! the ruleset moved on), the changes, then BATCH_END asking for an ack.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST,
};

use super::expr::{put_expr, Expr, NF_ACCEPT};
use super::frame::{begin_msg, end_msg, nest_end, nest_start, put, put_be32, put_be64, put_str};
use super::message::{
    NFNL_SUBSYS_NFTABLES, NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY, NFTA_CHAIN_TABLE,
    NFTA_CHAIN_TYPE, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_RULE_CHAIN, NFTA_RULE_COMPAT,
    NFTA_RULE_COMPAT_FLAGS, NFTA_RULE_COMPAT_PROTO, NFTA_RULE_EXPRESSIONS, NFTA_RULE_HANDLE,
    NFTA_RULE_POSITION, NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFTA_TABLE_NAME, NFT_MSG_DELRULE,
    NFT_MSG_GETCHAIN, NFT_MSG_GETGEN, NFT_MSG_GETRULE, NFT_MSG_GETTABLE, NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE, NFT_MSG_NEWTABLE, NLMSG_MIN_TYPE,
};

const AF_UNSPEC: u8 = 0;
const NFNL_MSG_BATCH_BEGIN: u16 = NLMSG_MIN_TYPE;
const NFNL_MSG_BATCH_END: u16 = NLMSG_MIN_TYPE + 1;
const NFNL_BATCH_GENID: u16 = 1;

/// Where a NEWRULE goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the tail (`iptables -A`): CREATE|APPEND, no POSITION.
    Append,
    /// At the head (`iptables -I CHAIN`): CREATE, no POSITION. Tests and scenes only:
    /// jumpset's own inserts go before a kept handle or at the tail.
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    Head,
    /// Right after the rule with this handle: CREATE|APPEND, POSITION=h. Tests and
    /// scenes only.
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    After(u64),
    /// Right before the rule with this handle: CREATE, POSITION=h.
    Before(u64),
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

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

fn request(ty: u16, flags: u16, family: u8, seq: u32, attrs: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    request_into(&mut buf, ty, flags, family, seq, attrs);
    buf
}

/// [`request`], appended to `buf`.
fn request_into(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    family: u8,
    seq: u32,
    attrs: impl FnOnce(&mut Vec<u8>),
) {
    let m = begin_msg(buf, ty, flags, seq, family, 0);
    attrs(buf);
    end_msg(buf, m);
}

/// GETGEN request (20 bytes, REQUEST).
pub fn get_gen(seq: u32) -> Vec<u8> {
    request(NFT_MSG_GETGEN, NLM_F_REQUEST, AF_UNSPEC, seq, |_| {})
}

/// [`get_gen`], appended to `buf`.
pub(crate) fn get_gen_into(buf: &mut Vec<u8>, seq: u32) {
    request_into(buf, NFT_MSG_GETGEN, NLM_F_REQUEST, AF_UNSPEC, seq, |_| {})
}

/// GETRULE dump of one chain (REQUEST|DUMP), TABLE + CHAIN attributes.
#[cfg(any(test, feature = "testing", feature = "fuzzing"))]
pub fn get_rules(family: u8, table: &str, chain: &str, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    get_rules_into(&mut buf, family, table, chain, seq);
    buf
}

/// [`get_rules`], appended to `buf`.
pub(crate) fn get_rules_into(buf: &mut Vec<u8>, family: u8, table: &str, chain: &str, seq: u32) {
    request_into(
        buf,
        NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        seq,
        |b| {
            put_str(b, NFTA_RULE_TABLE, table);
            put_str(b, NFTA_RULE_CHAIN, chain);
        },
    )
}

/// GETCHAIN of one chain (REQUEST|ACK): NEWCHAIN + ack, or error -ENOENT.
pub(crate) fn get_chain(family: u8, table: &str, chain: &str, seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETCHAIN,
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        seq,
        |b| {
            put_str(b, NFTA_CHAIN_TABLE, table);
            put_str(b, NFTA_CHAIN_NAME, chain);
        },
    )
}

/// GETCHAIN of one chain without an ack (REQUEST only): the reply is the NEWCHAIN, or an
/// error — one datagram, for a request that rides with others in one `sendmsg`.
pub(crate) fn get_chain_unacked_into(
    buf: &mut Vec<u8>,
    family: u8,
    table: &str,
    chain: &str,
    seq: u32,
) {
    request_into(buf, NFT_MSG_GETCHAIN, NLM_F_REQUEST, family, seq, |b| {
        put_str(b, NFTA_CHAIN_TABLE, table);
        put_str(b, NFTA_CHAIN_NAME, chain);
    })
}

/// GETTABLE of one table (REQUEST|ACK).
pub(crate) fn get_table(family: u8, table: &str, seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        seq,
        |b| {
            put_str(b, NFTA_TABLE_NAME, table);
        },
    )
}

/// GETTABLE dump of every table of every family (REQUEST|DUMP, AF_UNSPEC): `nft list
/// tables`.
pub(crate) fn get_tables(seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_DUMP,
        AF_UNSPEC,
        seq,
        |_| {},
    )
}

/// GETCHAIN dump of every chain of one table (REQUEST|DUMP, TABLE attribute).
pub(crate) fn get_chains(family: u8, table: &str, seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETCHAIN,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        seq,
        |b| {
            put_str(b, NFTA_CHAIN_TABLE, table);
        },
    )
}

/// GETCHAIN dump of every chain of every table of every family (REQUEST|DUMP,
/// AF_UNSPEC, no attribute): `nft list chains`.
pub(crate) fn get_all_chains(seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETCHAIN,
        NLM_F_REQUEST | NLM_F_DUMP,
        AF_UNSPEC,
        seq,
        |_| {},
    )
}

/// GETRULE dump of every rule of every table of every family (REQUEST|DUMP, AF_UNSPEC,
/// no attribute): what `nft list ruleset` reads.
pub(crate) fn get_all_rules(seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        AF_UNSPEC,
        seq,
        |_| {},
    )
}

/// GETRULE dump of every rule of one table (REQUEST|DUMP, TABLE attribute only).
pub(crate) fn get_table_rules(family: u8, table: &str, seq: u32) -> Vec<u8> {
    request(
        NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        seq,
        |b| {
            put_str(b, NFTA_RULE_TABLE, table);
        },
    )
}

// ---------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------

/// One nf_tables transaction: BEGIN (with the generation) ... END (with ACK).
#[derive(Debug, Clone)]
pub struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
}

impl Batch {
    /// BATCH_BEGIN carrying NFNL_BATCH_GENID = genid; `seq` is BEGIN's seq, later
    /// messages get seq + 1, + 2, ...
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn begin(genid: u32, seq: u32) -> Batch {
        Batch::begin_in(Vec::with_capacity(4096), genid, seq)
    }

    /// [`Batch::begin`] in `buf` (cleared first): a buffer kept between batches.
    pub fn begin_in(mut buf: Vec<u8>, genid: u32, seq: u32) -> Batch {
        buf.clear();
        let res_id = NFNL_SUBSYS_NFTABLES;
        let m = begin_msg(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            res_id,
        );
        put_be32(&mut buf, NFNL_BATCH_GENID, genid);
        end_msg(&mut buf, m);
        Batch {
            buf,
            next_seq: seq.wrapping_add(1),
        }
    }

    /// BATCH_BEGIN without NFNL_BATCH_GENID: the kernel checks no generation, only what
    /// each message refers to (a DELRULE of a missing handle, a NEWRULE positioned on one,
    /// fail with ENOENT and the whole batch is refused). `seq` as in [`Batch::begin`].
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn unguarded(seq: u32) -> Batch {
        Batch::unguarded_in(Vec::with_capacity(4096), seq)
    }

    /// [`Batch::unguarded`] in `buf` (cleared first).
    pub fn unguarded_in(mut buf: Vec<u8>, seq: u32) -> Batch {
        buf.clear();
        let m = begin_msg(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        end_msg(&mut buf, m);
        Batch {
            buf,
            next_seq: seq.wrapping_add(1),
        }
    }

    /// Append one message; returns its seq.
    fn push(&mut self, ty: u16, flags: u16, family: u8, attrs: impl FnOnce(&mut Vec<u8>)) -> u32 {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let m = begin_msg(&mut self.buf, ty, flags, seq, family, 0);
        attrs(&mut self.buf);
        end_msg(&mut self.buf, m);
        seq
    }

    /// NEWTABLE (REQUEST|CREATE), NAME only. Returns the message's seq.
    pub fn new_table(&mut self, family: u8, name: &str) -> u32 {
        self.push(
            NFT_MSG_NEWTABLE,
            NLM_F_REQUEST | NLM_F_CREATE,
            family,
            |b| {
                put_str(b, NFTA_TABLE_NAME, name);
            },
        )
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
        self.push(
            NFT_MSG_NEWCHAIN,
            NLM_F_REQUEST | NLM_F_CREATE,
            family,
            |b| {
                put_str(b, NFTA_CHAIN_TABLE, table);
                put_str(b, NFTA_CHAIN_NAME, name);
                let hook = nest_start(b);
                put_be32(b, NFTA_HOOK_HOOKNUM, hooknum);
                put_be32(b, NFTA_HOOK_PRIORITY, priority as u32);
                nest_end(b, hook, NFTA_CHAIN_HOOK);
                put_be32(b, NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
                put_str(b, NFTA_CHAIN_TYPE, chain_type);
            },
        )
    }

    /// NEWCHAIN for a user chain (REQUEST|CREATE): TABLE, NAME.
    pub fn new_user_chain(&mut self, family: u8, table: &str, name: &str) -> u32 {
        // iptables -N sends EXCL; CREATE alone makes an existing chain a no-op, not EEXIST.
        self.push(
            NFT_MSG_NEWCHAIN,
            NLM_F_REQUEST | NLM_F_CREATE,
            family,
            |b| {
                put_str(b, NFTA_CHAIN_TABLE, table);
                put_str(b, NFTA_CHAIN_NAME, name);
            },
        )
    }

    /// DELRULE by handle (REQUEST).
    pub fn del_rule(&mut self, family: u8, table: &str, chain: &str, handle: u64) -> u32 {
        self.push(NFT_MSG_DELRULE, NLM_F_REQUEST, family, |b| {
            put_str(b, NFTA_RULE_TABLE, table);
            put_str(b, NFTA_RULE_CHAIN, chain);
            put_be64(b, NFTA_RULE_HANDLE, handle);
        })
    }

    /// NEWRULE at a position (tests and scenes; jumpset's own rules are echoed, see
    /// [`Batch::new_rule_echoed`]).
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn new_rule(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
        rule: &NewRule,
        at: Position,
    ) -> u32 {
        self.rule(family, table, chain, rule, at, 0)
    }

    /// NEWRULE at a position, with NLM_F_ECHO: once the batch commits, the kernel sends
    /// the rule back to this socket as it stored it — with its handle — before the acks.
    pub fn new_rule_echoed(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
        rule: &NewRule,
        at: Position,
    ) -> u32 {
        self.rule(family, table, chain, rule, at, NLM_F_ECHO)
    }

    fn rule(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
        rule: &NewRule,
        at: Position,
        extra: u16,
    ) -> u32 {
        let (append, position) = match at {
            Position::Append => (true, None),
            #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
            Position::Head => (false, None),
            #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
            Position::After(h) => (true, Some(h)),
            Position::Before(h) => (false, Some(h)),
        };
        let flags = NLM_F_REQUEST | NLM_F_CREATE | extra | if append { NLM_F_APPEND } else { 0 };
        self.push(NFT_MSG_NEWRULE, flags, family, |b| {
            put_str(b, NFTA_RULE_TABLE, table);
            put_str(b, NFTA_RULE_CHAIN, chain);
            if let Some(h) = position {
                put_be64(b, NFTA_RULE_POSITION, h);
            }
            let list = nest_start(b);
            for e in &rule.exprs {
                put_expr(b, e);
            }
            nest_end(b, list, NFTA_RULE_EXPRESSIONS);
            if let Some(u) = &rule.userdata {
                put(b, NFTA_RULE_USERDATA, false, u);
            }
            if rule.compat {
                let compat = nest_start(b);
                put_be32(b, NFTA_RULE_COMPAT_PROTO, 0);
                put_be32(b, NFTA_RULE_COMPAT_FLAGS, 0);
                nest_end(b, compat, NFTA_RULE_COMPAT);
            }
        })
    }

    /// BATCH_END with NLM_F_ACK; returns the bytes and END's seq.
    pub fn end(mut self) -> (Vec<u8>, u32) {
        let seq = self.next_seq;
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        let res_id = NFNL_SUBSYS_NFTABLES;
        let m = begin_msg(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            flags,
            seq,
            AF_UNSPEC,
            res_id,
        );
        end_msg(&mut self.buf, m);
        (self.buf, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::super::compat::encode_rule;
    use super::super::frame::{be64, CodecError, NFGENMSG_LEN, NLMSG_HDRLEN};
    use super::super::message::{parse, Body};
    use super::super::testutil::*;
    use super::super::NFPROTO_IPV6;
    use super::*;
    use crate::snapshot::{CommentEncoding, Match, Verdict, ADDRTYPE_LOCAL};

    /// iptables-nft's batch as we send it: the same, plus NLM_F_ACK on BATCH_END.
    fn with_end_ack(batch: &[u8]) -> Vec<u8> {
        let mut v = batch.to_vec();
        let end = v.len() - NLMSG_HDRLEN - NFGENMSG_LEN;
        assert_eq!(v[end + 4..end + 6], NFNL_MSG_BATCH_END.to_ne_bytes());
        v[end + 6] |= NLM_F_ACK as u8;
        v
    }

    fn jump(chain: &str) -> Verdict {
        Verdict::Jump(chain.into())
    }

    #[test]
    fn requests_are_byte_identical_to_iptables_nft() {
        // iptables-nft -t nat -A PREROUTING -m comment --comment "kube-ovn prerouting rules"
        // -j OVN-PREROUTING: its GETGEN and its GETCHAIN for OVN-PREROUTING (seq 0).
        assert_eq!(get_gen(0), fixture!("tx_getgen"));
        assert_eq!(
            get_chain(IP, "nat", "OVN-PREROUTING", 0),
            fixture!("tx_getchain")
        );
        // iptables-nft -t nat -S PREROUTING: the GETRULE dump of one chain. libmnl left a
        // stale byte (a different one each run) in the padding after "PREROUTING\0";
        // padding is outside nla_len and the kernel ignores it.
        let mut theirs = fixture!("tx_getrule_dump").to_vec();
        theirs[43] = 0;
        assert_eq!(get_rules(IP, "nat", "PREROUTING", 0), theirs);
        // No capture sends GETTABLE for one table (iptables-nft dumps them all); by the
        // reference: len 28, type 0x0a01, REQUEST|ACK, nfgenmsg, NAME "nat\0".
        let want = [
            28, 0, 0, 0, 0x01, 0x0a, 0x05, 0, 9, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 8, 0, 1, 0,
            b'n', b'a', b't', 0,
        ];
        assert_eq!(get_table(NFPROTO_IPV6, "nat", 9), want);
        // The dumps the census runs (`nft list tables`, chains and rules of one table):
        // the same shapes, DUMP instead of ACK, the table name only.
        let flags = |m: &[u8]| u16::from_ne_bytes([m[6], m[7]]);
        let ty = |m: &[u8]| u16::from_ne_bytes([m[4], m[5]]);
        let tables = get_tables(3);
        assert_eq!(
            (tables.len(), ty(&tables), flags(&tables)),
            (20, 0x0a01, 0x301)
        );
        let chains = get_chains(IP, "nat", 4);
        assert_eq!((ty(&chains), flags(&chains)), (0x0a04, 0x301));
        assert_eq!(top(&chains), [(1, &b"nat\0"[..])]);
        let rules = get_table_rules(IP, "nat", 5);
        assert_eq!((ty(&rules), flags(&rules)), (0x0a07, 0x301));
        assert_eq!(top(&rules), [(1, &b"nat\0"[..])]);
    }

    #[test]
    fn first_comment_rule_batch_is_byte_identical_to_iptables_nft() {
        // iptables-nft -t nat -N OVN-PREROUTING, then (traced)
        // iptables-nft -t nat -A PREROUTING -m comment --comment "kube-ovn prerouting rules"
        //   -j OVN-PREROUTING
        // PREROUTING did not exist yet, so the batch creates the base chain first (80 bytes).
        let mut b = Batch::begin(2, 1);
        assert_eq!(b.new_base_chain(IP, "nat", "PREROUTING", 0, -100, "nat"), 2);
        let c: &[u8] = b"kube-ovn prerouting rules";
        let rule = encode_rule(Some((c, CommentEncoding::Xt)), &[], &jump("OVN-PREROUTING"));
        assert_eq!(
            b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Append),
            3
        );
        let (bytes, end) = b.end();
        assert_eq!(end, 4);
        assert_eq!(split(&bytes)[1].len(), 80);
        assert_eq!(bytes, with_end_ack(fixture!("tx_comment_batch")));
    }

    #[test]
    fn addrtype_rule_batch_is_byte_identical_to_iptables_nft() {
        // iptables-nft -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
        let mut b = Batch::begin(4, 1);
        let local = Match::AddrType {
            source: 0,
            dest: ADDRTYPE_LOCAL,
            flags: 0,
        };
        let rule = encode_rule(None, &[local], &jump("CNI-HOSTPORT-DNAT"));
        assert_eq!(
            b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Append),
            2
        );
        assert_eq!(b.end().0, with_end_ack(fixture!("tx_addrtype_batch")));
    }

    #[test]
    fn inserts_are_byte_identical_to_iptables_nft() {
        // iptables-nft -t nat -I PREROUTING 2 -m comment --comment "kubernetes service portals"
        //   -g KUBE-SERVICES   (rule 2 had handle 5: POSITION=5 without APPEND = before it)
        let mut b = Batch::begin(6, 1);
        let c: &[u8] = b"kubernetes service portals";
        let goto = Verdict::Goto("KUBE-SERVICES".into());
        let rule = encode_rule(Some((c, CommentEncoding::Xt)), &[], &goto);
        b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Before(5));
        assert_eq!(b.end().0, with_end_ack(fixture!("tx_insert_before_batch")));

        // iptables-nft -t nat -I PREROUTING -j RETURN
        let mut b = Batch::begin(7, 1);
        let rule = encode_rule(None, &[], &Verdict::Return);
        b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Head);
        assert_eq!(b.end().0, with_end_ack(fixture!("tx_insert_head_batch")));
    }

    #[test]
    fn table_and_user_chain_match_iptables_nft() {
        // iptables-nft -t nat -N OVN-PREROUTING in a fresh namespace: NEWTABLE + NEWCHAIN.
        let theirs = split(fixture!("tx_newtable_userchain"));
        let mut b = Batch::begin(1, 1);
        assert_eq!(b.new_table(IP, "nat"), 2);
        assert_eq!(b.new_user_chain(IP, "nat", "OVN-PREROUTING"), 3);
        let (bytes, _) = b.end();
        let ours = split(&bytes);
        assert_eq!(ours[..2], theirs[..2]);
        // iptables -N asks for EXCL (EEXIST if present); we ask for CREATE only.
        let flags = |m: &[u8]| u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(flags(theirs[2]), NLM_F_REQUEST | 0x200);
        assert_eq!(flags(ours[2]), NLM_F_REQUEST | NLM_F_CREATE);
        assert_eq!(ours[2][8..], theirs[2][8..]);
    }

    #[test]
    fn delete_by_handle_matches_iptables_nft() {
        // iptables-nft -t nat -D PREROUTING -j RETURN (the rule had handle 8). iptables-nft
        // also sends the rule's expressions after the handle; the kernel deletes by handle.
        let theirs = split(fixture!("tx_delete_batch"))[1];
        let mut b = Batch::begin(8, 1);
        assert_eq!(b.del_rule(IP, "nat", "PREROUTING", 8), 2);
        let (bytes, _) = b.end();
        let ours = split(&bytes)[1];
        assert_eq!(ours.len(), 56);
        assert_eq!(ours[4..], theirs[4..56]);
        assert_eq!(top(theirs)[3].0, NFTA_RULE_EXPRESSIONS);
    }

    #[test]
    fn nft_userdata_rule_matches_nft() {
        // nft add rule ip nat PREROUTING counter jump KUBE-SERVICES
        //   comment "kubernetes service portals": the same userdata attribute; nft sends no
        // COMPAT (iptables-nft does, and so do we).
        let theirs = split(fixture!("tx_nft_userdata_batch"))[1];
        let c: &[u8] = b"kubernetes service portals";
        let rule = encode_rule(
            Some((c, CommentEncoding::Userdata)),
            &[],
            &jump("KUBE-SERVICES"),
        );
        let mut b = Batch::begin(1, 1);
        b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Append);
        let (bytes, _) = b.end();
        let ours = split(&bytes)[1];
        assert_eq!(
            top_attr(ours, NFTA_RULE_USERDATA),
            top_attr(theirs, NFTA_RULE_USERDATA)
        );
        assert!(top_attr(ours, NFTA_RULE_COMPAT).is_some());
        assert!(top_attr(theirs, NFTA_RULE_COMPAT).is_none());
    }

    #[test]
    fn an_unguarded_batch_begins_without_a_generation() {
        let rule = encode_rule(None, &[], &Verdict::Accept);
        let mut b = Batch::unguarded(7);
        assert_eq!(b.del_rule(IP, "nat", "PREROUTING", 11), 8);
        b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Before(10));
        let (bytes, end) = b.end();
        assert_eq!(end, 10);
        let msgs = split(&bytes);
        assert_eq!(msgs.len(), 4);
        // BEGIN: AF_UNSPEC, res_id htons(NFNL_SUBSYS_NFTABLES), and no attribute at all.
        assert_eq!(msgs[0].len(), 20);
        assert_eq!(msgs[0][16..20], [0, 0, 0, 10]);
        assert!(top(msgs[0]).is_empty());
    }

    #[test]
    fn batch_numbers_messages_and_positions_set_flags() {
        let rule = encode_rule(None, &[], &Verdict::Accept);
        let mut b = Batch::begin(0x0102_0304, u32::MAX - 1);
        let seqs = [
            b.new_table(IP, "nat"),
            b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Append),
            b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Head),
            b.new_rule(IP, "nat", "PREROUTING", &rule, Position::After(9)),
            b.new_rule(IP, "nat", "PREROUTING", &rule, Position::Before(10)),
            b.del_rule(IP, "nat", "PREROUTING", 11),
        ];
        assert_eq!(seqs, [u32::MAX, 0, 1, 2, 3, 4]);
        let (bytes, end) = b.end();
        assert_eq!(end, 5);
        let msgs = split(&bytes);
        let seq = |m: &[u8]| u32::from_ne_bytes(m[8..12].try_into().unwrap());
        let flags = |m: &[u8]| u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(
            msgs.iter().map(|m| seq(m)).collect::<Vec<_>>(),
            [u32::MAX - 1, u32::MAX, 0, 1, 2, 3, 4, 5]
        );
        // BEGIN: AF_UNSPEC, res_id htons(NFNL_SUBSYS_NFTABLES), GENID be32.
        assert_eq!(msgs[0][16..20], [0, 0, 0, 10]);
        assert_eq!(top(msgs[0]), [(NFNL_BATCH_GENID, &[1u8, 2, 3, 4][..])]);
        let (c, a) = (NLM_F_REQUEST | NLM_F_CREATE, NLM_F_APPEND);
        let pos = |m: &[u8]| top_attr(m, NFTA_RULE_POSITION).map(|p| be64(p, "").unwrap());
        assert_eq!((flags(msgs[2]), pos(msgs[2])), (c | a, None));
        assert_eq!((flags(msgs[3]), pos(msgs[3])), (c, None));
        assert_eq!((flags(msgs[4]), pos(msgs[4])), (c | a, Some(9)));
        assert_eq!((flags(msgs[5]), pos(msgs[5])), (c, Some(10)));
        assert_eq!(flags(msgs[6]), NLM_F_REQUEST);
        assert_eq!(
            msgs[7],
            [20, 0, 0, 0, 0x11, 0, 5, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
        // Our own batch reads back: BEGIN/END and requests as Other, the rules as malformed
        // only because a request has no handle.
        let begin = one(msgs[0]);
        assert_eq!(
            (begin.body, begin.family, begin.res_id),
            (Body::Other, 0, 10)
        );
        assert!(matches!(
            parse(msgs[2]),
            Err(CodecError::Malformed { what: "rule", ref detail }) if detail.contains("HANDLE")
        ));
    }
}
