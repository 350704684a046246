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
    if let Ok(enc) = table.encode() {
        Table::decode(family, &enc.info(&info), &enc.blob).expect("our own encoding decodes");
    }
}

/// The nf_tables message decoders: a datagram as the kernel would send it, through the
/// general decoder (every rule also turned into the rule model) and through the read
/// path's `parse_dump`, which must agree with it rule for rule, errors included.
pub fn nft_messages(data: &[u8]) {
    let general = codec::parse(data);
    let dump = codec::parse_dump(data);
    match (&general, &dump) {
        (Ok(msgs), Ok(dumped)) => {
            assert_eq!(msgs.len(), dumped.len(), "parse and parse_dump split alike");
            for (m, d) in msgs.iter().zip(dumped) {
                match (&m.body, d) {
                    (codec::Body::NewRule(r), codec::Dumped::Rule { rule, position, .. }) => {
                        assert_eq!(&codec::to_rule(r), rule, "parse_dump decodes like to_rule");
                        assert_eq!(&r.position, position);
                    }
                    (codec::Body::DelRule(r), _) => {
                        let _ = codec::to_rule(r).iptables();
                    }
                    _ => {}
                }
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("parse and parse_dump disagree on validity: {general:?} vs {dump:?}"),
    }
}

/// The config parser: any text (bytes that are not UTF-8 are skipped).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::spec::Config::from_toml(text);
    }
}
