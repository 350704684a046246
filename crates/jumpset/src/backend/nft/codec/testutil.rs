//! What the codec's tests share: the captured bytes and an independent way to split them.
//!
//! Captured bytes come from testdata/nft/, produced by `capture.sh` there (iptables 1.8.9,
//! nft 1.0.6, kernel 6.18, each command run under strace in a throwaway network
//! namespace). The command behind each capture is named where it is used.

use super::batch::{Batch, NewRule, Position};
use super::frame::{align, attrs, end_msg, put_be64, NFGENMSG_LEN, NLMSG_HDRLEN};
use super::message::{parse, Body, Message, RuleMsg, NFTA_RULE_HANDLE};
use super::{Expr, NFPROTO_IPV4};

/// The bytes of `testdata/nft/<name>.bin`.
macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/nft/",
            $name,
            ".bin"
        ))
        .as_slice()
    };
}
pub(super) use fixture;

/// Every capture.
pub(super) const FIXTURES: &[&[u8]] = &[
    fixture!("rx_ack_capped"),
    fixture!("rx_dump_done"),
    fixture!("rx_dump_prerouting"),
    fixture!("rx_extack_erange"),
    fixture!("rx_getchain_enoent"),
    fixture!("rx_getchain_prerouting"),
    fixture!("rx_gethooks_einval"),
    fixture!("rx_newgen"),
    fixture!("rx_notify_basechain_rule"),
    fixture!("rx_notify_delrule"),
    fixture!("rx_notify_insert_before"),
    fixture!("rx_notify_newgen"),
    fixture!("rx_notify_newtable_userchain"),
    fixture!("tx_addrtype_batch"),
    fixture!("tx_comment_batch"),
    fixture!("tx_delete_batch"),
    fixture!("tx_getchain"),
    fixture!("tx_getgen"),
    fixture!("tx_gethooks_prerouting"),
    fixture!("tx_getrule_dump"),
    fixture!("tx_insert_before_batch"),
    fixture!("tx_insert_head_batch"),
    fixture!("tx_newtable_userchain"),
    fixture!("tx_nft_userdata_batch"),
];

/// `nfgen_family` ip.
pub(super) const IP: u8 = NFPROTO_IPV4;

/// The raw messages of a well-formed datagram (independent of the codec's framing).
pub(super) fn split(d: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < d.len() {
        let len = u32::from_ne_bytes(d[off..off + 4].try_into().unwrap()) as usize;
        out.push(&d[off..off + len]);
        off += align(len);
    }
    out
}

/// The one message of a datagram.
pub(super) fn one(d: &[u8]) -> Message<'_> {
    let mut msgs = parse(d).unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs.remove(0)
}

/// The rule of a NEWRULE or DELRULE.
pub(super) fn rule_of<'m, 'a>(m: &'m Message<'a>) -> &'m RuleMsg<'a> {
    match &m.body {
        Body::NewRule(r) | Body::DelRule(r) => r,
        b => panic!("not a rule: {b:?}"),
    }
}

/// The top-level attributes of a request or reply (after nlmsghdr + nfgenmsg).
pub(super) fn top(msg: &[u8]) -> Vec<(u16, &[u8])> {
    attrs(&msg[NLMSG_HDRLEN + NFGENMSG_LEN..], "test")
        .map(Result::unwrap)
        .collect()
}

/// The payload of the first top-level attribute of type `kind`.
pub(super) fn top_attr(msg: &[u8], kind: u16) -> Option<&[u8]> {
    top(msg).into_iter().find(|a| a.0 == kind).map(|a| a.1)
}

/// What the kernel dumps for our NEWRULE request: its attributes plus a handle.
pub(super) fn as_dumped(req: &[u8], handle: u64) -> Vec<u8> {
    let mut m = req.to_vec();
    put_be64(&mut m, NFTA_RULE_HANDLE, handle);
    end_msg(&mut m, 0);
    m
}

/// `rule` as the NEWRULE message of a batch (ip6 nat PREROUTING, appended), dumped back
/// by the kernel with handle 42.
pub(super) fn dumped(rule: &NewRule) -> Vec<u8> {
    let mut b = Batch::begin(1, 1);
    b.new_rule(
        super::NFPROTO_IPV6,
        "nat",
        "PREROUTING",
        rule,
        Position::Append,
    );
    let (bytes, _) = b.end();
    as_dumped(split(&bytes)[1], 42)
}

/// A rule message with these expressions and userdata, dumped back (see [`dumped`]).
pub(super) fn dumped_exprs(exprs: Vec<Expr>, userdata: Option<Vec<u8>>) -> Vec<u8> {
    dumped(&NewRule {
        exprs,
        userdata,
        compat: false,
    })
}
