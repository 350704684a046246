//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz, nightly) and for the stable
//! test that replays their corpus (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes
//! and must return without panicking, whatever the bytes are.

use crate::backend::legacy::blob::{Info, Table, INFO_SIZE};
use crate::backend::nft::codec;
use crate::snapshot::Family;

/// The x_tables blob decoder: byte 0 picks the family (even: ip, odd: ip6), the next 84
/// bytes are `ipt_getinfo`, the rest the entries (the layout of
/// `crates/jumpset/testdata/legacy/*.bin`, with the family byte in front). A table that
/// decodes must also encode, and the encoding must decode again.
pub fn legacy_blob(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let family = if sel % 2 == 0 {
        Family::Ip
    } else {
        Family::Ip6
    };
    if rest.len() < INFO_SIZE {
        return;
    }
    let (info, blob) = rest.split_at(INFO_SIZE);
    let Ok(info) = Info::parse(info) else {
        return;
    };
    let Ok(table) = Table::decode(family, &info, blob) else {
        return;
    };
    for chain in ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"] {
        let _ = table.rules(chain);
    }
    let _ = table.census();
    if let Ok((blob, enc)) = table.encode() {
        Table::decode(family, &enc.info(&info), &blob).expect("our own encoding decodes");
    }
}

/// The nf_tables message decoder: a datagram as the kernel would send it. Every rule that
/// decodes has expressions that iterate without error, and written back exactly as it
/// was read (each expression, its userdata: what jumpset does not own is never rewritten)
/// it reads as the same rule.
pub fn nft_messages(data: &[u8]) {
    let Ok(msgs) = codec::parse(data) else {
        return;
    };
    for m in &msgs {
        let (codec::Body::NewRule(r) | codec::Body::DelRule(r)) = &m.body else {
            continue;
        };
        let _ = r.rule.iptables();
        let exprs: Vec<codec::Expr> = r
            .exprs()
            .map(|e| codec::Expr::from(e.expect("checked when the rule was decoded")))
            .collect();
        // Written back, an expression may take up to 3 times its bytes (a counter nft
        // sent empty): keep the message within the 64 KiB an attribute can hold.
        if data.len() > 16 * 1024 {
            continue;
        }
        let rule = codec::NewRule {
            exprs,
            userdata: r.userdata().map(<[u8]>::to_vec),
            compat: false,
        };
        let mut b = codec::Batch::begin(1, 1);
        b.new_rule(m.family, "t", "c", &rule, codec::Position::Append);
        let (bytes, _) = b.end();
        let back = dumped(&bytes, r.rule.handle);
        let back = codec::parse(&back).expect("what was read, written back, reads");
        let [codec::Message {
            body: codec::Body::NewRule(b),
            ..
        }] = back.as_slice()
        else {
            panic!("one rule written, {back:?} read back");
        };
        assert_eq!(
            b.rule, r.rule,
            "written back as read, a rule reads the same"
        );
    }
}

/// The NEWRULE of a one-rule batch as a dump would hold it: its attributes and a handle.
fn dumped(batch: &[u8], handle: u64) -> Vec<u8> {
    const NFTA_RULE_HANDLE: u16 = 3;
    let len = |m: &[u8]| u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize;
    let begin = len(batch).next_multiple_of(4);
    let mut msg = batch[begin..begin + len(&batch[begin..])].to_vec();
    msg.extend_from_slice(&12u16.to_ne_bytes());
    msg.extend_from_slice(&NFTA_RULE_HANDLE.to_ne_bytes());
    msg.extend_from_slice(&handle.to_be_bytes());
    let n = msg.len() as u32;
    msg[..4].copy_from_slice(&n.to_ne_bytes());
    msg
}

/// The config parser: any text (bytes that are not UTF-8 are skipped).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::spec::Config::from_toml(text);
    }
}
