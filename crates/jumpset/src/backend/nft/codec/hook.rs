//! The hook dump: which functions the kernel runs on one netfilter hook of one family, in
//! the order it runs them — the netlink interface behind `nft list hooks`
//! (`NFNL_SUBSYS_HOOK`, `net/netfilter/nfnetlink_hook.c`, Linux 5.14+ with
//! `CONFIG_NETFILTER_NETLINK_HOOK`).
//!
//! The request is `NFNL_MSG_HOOK_GET` with `NLM_F_DUMP`, the family in `nfgenmsg` and the
//! hook number in `NFNLA_HOOK_HOOKNUM` (big-endian); the kernel answers with one
//! `NFNL_MSG_HOOK_GET` message per registered hook, in the hook array's order (the order
//! packets meet them), then `NLMSG_DONE`. Each names the hook function (`%ps` of it,
//! split into function and module when it lives in a module), the hook number and the
//! priority; a hook of an nf_tables base chain also carries `NFNLA_HOOK_CHAIN_INFO`:
//! its type (`NFNL_HOOK_TYPE_NFTABLES`) and `{table, family, chain}`. An x_tables table's
//! hook is only its function (`ipt_do_table`, `iptable_mangle_hook`, ...) and priority.
//! The NAT hooks are the NAT core's (`nf_nat_ipv4_pre_routing`, ...): until the kernel
//! dumps the nat-type chains behind them itself (nf-next, 2026: "nfnetlink_hook: Dump nat
//! type chains", which lists each with the NAT hook's priority), the `nat` chains are not
//! in the dump — `crate::explain` expands them.
//!
//! A kernel built without the subsystem answers the request with `EINVAL` (nfnetlink finds
//! no such subsystem): `testdata/nft/rx_gethooks_einval.bin`, from this machine's 6.18.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};

use super::frame::{attrs, be32, begin_msg, end_msg, missing, put_be32, string, CodecError};

/// The nfnetlink subsystem of the hook dump (high byte of its message types).
pub(super) const NFNL_SUBSYS_HOOK: u16 = 12;
/// `NFNL_MSG_HOOK_GET`: the request, and each entry of the reply.
pub(super) const NFNL_MSG_HOOK_GET: u16 = NFNL_SUBSYS_HOOK << 8;

const NFNLA_HOOK_HOOKNUM: u16 = 1;
const NFNLA_HOOK_PRIORITY: u16 = 2;
const NFNLA_HOOK_DEV: u16 = 3;
const NFNLA_HOOK_FUNCTION_NAME: u16 = 4;
const NFNLA_HOOK_MODULE_NAME: u16 = 5;
const NFNLA_HOOK_CHAIN_INFO: u16 = 6;

const NFNLA_HOOK_INFO_DESC: u16 = 1;
const NFNLA_HOOK_INFO_TYPE: u16 = 2;

const NFNLA_CHAIN_TABLE: u16 = 1;
const NFNLA_CHAIN_FAMILY: u16 = 2;
const NFNLA_CHAIN_NAME: u16 = 3;

const NFNLA_HOOK_BPF_ID: u16 = 1;

/// `NFNL_HOOK_TYPE_NFTABLES`: an nf_tables base chain.
pub const NFNL_HOOK_TYPE_NFTABLES: u32 = 1;
/// `NFNL_HOOK_TYPE_BPF`: a BPF program attached with a netfilter link.
pub const NFNL_HOOK_TYPE_BPF: u32 = 2;
/// `NFNL_HOOK_TYPE_NFT_FLOWTABLE`: an nf_tables flowtable.
pub const NFNL_HOOK_TYPE_NFT_FLOWTABLE: u32 = 3;

/// The hook dump of `hooknum` (NF_INET_*) of `family` (REQUEST|DUMP): 28 bytes, exactly
/// what `nft list hooks` sends.
pub fn get_hooks(family: u8, hooknum: u32, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(28);
    let m = begin_msg(
        &mut buf,
        NFNL_MSG_HOOK_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
        0,
    );
    put_be32(&mut buf, NFNLA_HOOK_HOOKNUM, hooknum);
    end_msg(&mut buf, m);
    buf
}

/// What runs a hook besides a plain kernel function (`NFNLA_HOOK_CHAIN_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookDesc {
    /// An nf_tables base chain.
    Chain {
        /// Its table.
        table: String,
        /// The table's nfgen family (`inet` chains show as 1 on the ip and ip6 hooks).
        family: u8,
        /// The chain.
        chain: String,
    },
    /// An nf_tables flowtable.
    Flowtable {
        /// Its table.
        table: String,
        /// The table's nfgen family.
        family: u8,
        /// The flowtable.
        name: String,
    },
    /// A BPF program (netfilter link).
    Bpf {
        /// The program id, if sent.
        id: Option<u32>,
    },
    /// A type this decoder does not know.
    Other(u32),
}

/// One entry of the hook dump: one function the kernel runs on the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookInfo {
    /// NFNLA_HOOK_HOOKNUM.
    pub hooknum: u32,
    /// NFNLA_HOOK_PRIORITY (for a nat chain in a dump that lists them: the NAT hook's).
    pub priority: i32,
    /// NFNLA_HOOK_FUNCTION_NAME (absent on kernels without kallsyms).
    pub function: Option<String>,
    /// NFNLA_HOOK_MODULE_NAME, when the function lives in a module.
    pub module: Option<String>,
    /// NFNLA_HOOK_DEV (netdev hooks only).
    pub dev: Option<String>,
    /// NFNLA_HOOK_CHAIN_INFO.
    pub desc: Option<HookDesc>,
}

/// The attributes of an `NFNL_MSG_HOOK_GET` reply (after nfgenmsg).
pub(super) fn parse_hook(buf: &[u8]) -> Result<HookInfo, CodecError> {
    const WHAT: &str = "hook";
    let (mut hooknum, mut priority, mut function, mut module) = (None, None, None, None);
    let (mut dev, mut desc) = (None, None);
    for a in attrs(buf, WHAT) {
        let (t, p) = a?;
        match t {
            NFNLA_HOOK_HOOKNUM => hooknum = Some(be32(p, "NFNLA_HOOK_HOOKNUM")?),
            NFNLA_HOOK_PRIORITY => priority = Some(be32(p, "NFNLA_HOOK_PRIORITY")? as i32),
            NFNLA_HOOK_FUNCTION_NAME => function = Some(string(p)),
            NFNLA_HOOK_MODULE_NAME => module = Some(string(p)),
            NFNLA_HOOK_DEV => dev = Some(string(p)),
            NFNLA_HOOK_CHAIN_INFO => desc = parse_chain_info(p)?,
            _ => {}
        }
    }
    Ok(HookInfo {
        hooknum: hooknum.ok_or_else(|| missing(WHAT, "NFNLA_HOOK_HOOKNUM"))?,
        priority: priority.ok_or_else(|| missing(WHAT, "NFNLA_HOOK_PRIORITY"))?,
        function,
        module,
        dev,
        desc,
    })
}

/// NFNLA_HOOK_CHAIN_INFO: INFO_TYPE, and INFO_DESC whose layout depends on it. `None`
/// when the kernel sent the nest without a type.
fn parse_chain_info(buf: &[u8]) -> Result<Option<HookDesc>, CodecError> {
    const WHAT: &str = "NFNLA_HOOK_CHAIN_INFO";
    let (mut kind, mut desc) = (None, None);
    for a in attrs(buf, WHAT) {
        let (t, p) = a?;
        match t {
            NFNLA_HOOK_INFO_TYPE => kind = Some(be32(p, "NFNLA_HOOK_INFO_TYPE")?),
            NFNLA_HOOK_INFO_DESC => desc = Some(p),
            _ => {}
        }
    }
    let Some(kind) = kind else {
        return Ok(None);
    };
    let desc = desc.unwrap_or_default();
    Ok(Some(match kind {
        NFNL_HOOK_TYPE_NFTABLES | NFNL_HOOK_TYPE_NFT_FLOWTABLE => {
            const DESC: &str = "NFNLA_HOOK_INFO_DESC";
            let (mut table, mut family, mut name) = (None, None, None);
            for a in attrs(desc, DESC) {
                let (t, p) = a?;
                match t {
                    NFNLA_CHAIN_TABLE => table = Some(string(p)),
                    NFNLA_CHAIN_NAME => name = Some(string(p)),
                    NFNLA_CHAIN_FAMILY => match p.first() {
                        Some(&f) if p.len() == 1 => family = Some(f),
                        _ => {
                            return Err(CodecError::Malformed {
                                what: "NFNLA_CHAIN_FAMILY",
                                detail: format!("expected 1 byte, found {}", p.len()),
                            })
                        }
                    },
                    _ => {}
                }
            }
            let table = table.ok_or_else(|| missing(DESC, "NFNLA_CHAIN_TABLE"))?;
            let family = family.ok_or_else(|| missing(DESC, "NFNLA_CHAIN_FAMILY"))?;
            let name = name.ok_or_else(|| missing(DESC, "NFNLA_CHAIN_NAME"))?;
            if kind == NFNL_HOOK_TYPE_NFTABLES {
                HookDesc::Chain {
                    table,
                    family,
                    chain: name,
                }
            } else {
                HookDesc::Flowtable {
                    table,
                    family,
                    name,
                }
            }
        }
        NFNL_HOOK_TYPE_BPF => {
            let mut id = None;
            for a in attrs(desc, "NFNLA_HOOK_INFO_DESC") {
                let (t, p) = a?;
                if t == NFNLA_HOOK_BPF_ID {
                    id = Some(be32(p, "NFNLA_HOOK_BPF_ID")?);
                }
            }
            HookDesc::Bpf { id }
        }
        other => HookDesc::Other(other),
    }))
}

/// A hook dump entry as `nfnl_hook_dump_one` (net/netfilter/nfnetlink_hook.c) builds it:
/// MODULE_NAME (when in a module), FUNCTION_NAME, HOOKNUM, PRIORITY, then CHAIN_INFO
/// {INFO_TYPE, INFO_DESC {TABLE, NAME, FAMILY (u8)}} for an nf_tables chain. For tests
/// and the fake kernel: this machine's kernel has no hook dump to capture one from.
#[cfg(any(test, feature = "testing"))]
pub fn hook_entry(family: u8, seq: u32, portid: u32, h: &HookInfo) -> Vec<u8> {
    use super::frame::{nest_end, nest_start, put, put_str};
    const NLM_F_MULTI: u16 = 0x2;
    let mut b = Vec::new();
    let m = begin_msg(&mut b, NFNL_MSG_HOOK_GET, NLM_F_MULTI, seq, family, 0);
    b[12..16].copy_from_slice(&portid.to_ne_bytes());
    if let Some(module) = &h.module {
        put_str(&mut b, NFNLA_HOOK_MODULE_NAME, module);
    }
    if let Some(f) = &h.function {
        put_str(&mut b, NFNLA_HOOK_FUNCTION_NAME, f);
    }
    put_be32(&mut b, NFNLA_HOOK_HOOKNUM, h.hooknum);
    put_be32(&mut b, NFNLA_HOOK_PRIORITY, h.priority as u32);
    let chain = |b: &mut Vec<u8>, kind: u32, table: &str, name: &str, family: u8| {
        let info = nest_start(b);
        put_be32(b, NFNLA_HOOK_INFO_TYPE, kind);
        let d = nest_start(b);
        put_str(b, NFNLA_CHAIN_TABLE, table);
        put_str(b, NFNLA_CHAIN_NAME, name);
        put(b, NFNLA_CHAIN_FAMILY, false, &[family]);
        nest_end(b, d, NFNLA_HOOK_INFO_DESC);
        nest_end(b, info, NFNLA_HOOK_CHAIN_INFO);
    };
    match &h.desc {
        None => {}
        Some(HookDesc::Chain {
            table,
            family,
            chain: name,
        }) => chain(&mut b, NFNL_HOOK_TYPE_NFTABLES, table, name, *family),
        Some(HookDesc::Flowtable {
            table,
            family,
            name,
        }) => chain(&mut b, NFNL_HOOK_TYPE_NFT_FLOWTABLE, table, name, *family),
        Some(HookDesc::Bpf { id }) => {
            let info = nest_start(&mut b);
            put_be32(&mut b, NFNLA_HOOK_INFO_TYPE, NFNL_HOOK_TYPE_BPF);
            let d = nest_start(&mut b);
            if let Some(id) = id {
                put_be32(&mut b, NFNLA_HOOK_BPF_ID, *id);
            }
            nest_end(&mut b, d, NFNLA_HOOK_INFO_DESC);
            nest_end(&mut b, info, NFNLA_HOOK_CHAIN_INFO);
        }
        Some(HookDesc::Other(kind)) => {
            let info = nest_start(&mut b);
            put_be32(&mut b, NFNLA_HOOK_INFO_TYPE, *kind);
            nest_end(&mut b, info, NFNLA_HOOK_CHAIN_INFO);
        }
    }
    end_msg(&mut b, m);
    b
}

#[cfg(test)]
mod tests {
    use super::super::message::{parse, Body};
    use super::super::testutil::{fixture, one, IP};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_request_is_what_nft_list_hooks_sends() {
        // `nft list hooks ip`, its request for hook 0 (prerouting), seq 1.
        assert_eq!(get_hooks(IP, 0, 1), fixture!("tx_gethooks_prerouting"));
        assert_eq!(get_hooks(IP, 4, 9)[24..], [0, 0, 0, 4]);
    }

    #[test]
    fn a_kernel_without_the_hook_dump_answers_einval() {
        // The kernel's answer to that request here (6.18, CONFIG_NETFILTER_NETLINK_HOOK
        // not set): nfnetlink has no subsystem 12.
        let m = one(fixture!("rx_gethooks_einval"));
        assert_eq!(
            m.body,
            Body::Error {
                code: -22,
                seq: 1,
                msg: None
            }
        );
    }

    fn info(prio: i32, function: &str, module: Option<&str>, desc: Option<HookDesc>) -> HookInfo {
        HookInfo {
            hooknum: 0,
            priority: prio,
            function: Some(function.into()),
            module: module.map(str::to_string),
            dev: None,
            desc,
        }
    }

    #[test]
    fn entries_decode_as_the_kernel_lays_them_out() {
        // Built as nfnl_hook_dump_one builds them (see hook_entry): a conntrack hook, an
        // nf_tables chain of an inet table, the NAT core's hook, an x_tables table in a
        // module, a BPF program.
        let entries = [
            info(-200, "ipv4_conntrack_in", None, None),
            info(
                -150,
                "nft_do_chain_inet",
                None,
                Some(HookDesc::Chain {
                    table: "firewalld".into(),
                    family: 1,
                    chain: "mangle_PREROUTING".into(),
                }),
            ),
            info(-100, "nf_nat_ipv4_pre_routing", Some("nf_nat"), None),
            info(0, "ipt_do_table", Some("ip_tables"), None),
            info(
                10,
                "bpf_nf_link_run",
                None,
                Some(HookDesc::Bpf { id: Some(7) }),
            ),
        ];
        let mut datagram = Vec::new();
        for e in &entries {
            datagram.extend(hook_entry(IP, 5, 1234, e));
        }
        let msgs = parse(&datagram).unwrap();
        assert_eq!(msgs.len(), entries.len());
        for (m, want) in msgs.iter().zip(&entries) {
            assert_eq!((m.ty, m.seq, m.portid, m.family), (0x0c00, 5, 1234, IP));
            assert_eq!(m.body, Body::Hook(want.clone()));
        }
        // The module name comes first, then the function: the order the kernel puts them.
        let nat = hook_entry(IP, 5, 1234, &entries[2]);
        assert_eq!(&nat[24..31], b"nf_nat\0");
    }

    #[test]
    fn unknown_attributes_are_skipped_and_missing_ones_named() {
        let e = info(-300, "ipt_do_table", None, None);
        let mut m = hook_entry(IP, 1, 1, &e);
        // An attribute type from a future kernel before the rest: skipped.
        let extra = [8u8, 0, 99, 0, 1, 2, 3, 4];
        m.splice(20..20, extra);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(one(&m).body, Body::Hook(e.clone()));

        let without = |attr: u16| {
            let mut m = hook_entry(IP, 1, 1, &e);
            // Retype the attribute so the decoder no longer finds it.
            let mut off = 20;
            while off < m.len() {
                let l = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
                if u16::from_ne_bytes([m[off + 2], m[off + 3]]) == attr {
                    m[off + 2] = 99;
                }
                off += (l + 3) & !3;
            }
            parse(&m).map(|v| format!("{:?}", v[0].body))
        };
        for (attr, name) in [
            (NFNLA_HOOK_HOOKNUM, "NFNLA_HOOK_HOOKNUM"),
            (NFNLA_HOOK_PRIORITY, "NFNLA_HOOK_PRIORITY"),
        ] {
            match without(attr) {
                Err(CodecError::Malformed {
                    what: "hook",
                    detail,
                }) => {
                    assert!(detail.contains(name), "{detail}")
                }
                r => panic!("{r:?}"),
            }
        }
        // A chain description without its family.
        let chain = info(
            0,
            "nft_do_chain_ipv4",
            None,
            Some(HookDesc::Chain {
                table: "t".into(),
                family: 2,
                chain: "c".into(),
            }),
        );
        let mut m = hook_entry(IP, 1, 1, &chain);
        let at = m.len() - 8; // FAMILY: 4-byte header, 1 byte, 3 of padding
        assert_eq!(m[at..at + 5], [5, 0, 2, 0, 2]);
        m[at + 2] = 99;
        match parse(&m) {
            Err(CodecError::Malformed { detail, .. }) => {
                assert!(detail.contains("NFNLA_CHAIN_FAMILY"), "{detail}")
            }
            r => panic!("{r:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn hook_entries_survive_random_payloads(
            payload in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut m = Vec::new();
            let at = begin_msg(&mut m, NFNL_MSG_HOOK_GET, 2, 1, IP, 0);
            m.extend_from_slice(&payload);
            end_msg(&mut m, at);
            let _ = parse(&m);
        }

        #[test]
        fn every_entry_reads_back_as_built(
            prio in any::<i32>(),
            hook in 0u32..5,
            family in any::<u8>(),
            table in "[a-z-]{1,16}",
            chain in "[A-Za-z_-]{1,28}",
            module in proptest::option::of("[a-z_]{1,12}"),
        ) {
            let e = HookInfo {
                hooknum: hook,
                priority: prio,
                function: Some("nft_do_chain_inet".into()),
                module,
                dev: None,
                desc: Some(HookDesc::Chain { table, family, chain }),
            };
            let m = hook_entry(IP, 3, 3, &e);
            prop_assert_eq!(one(&m).body, Body::Hook(e));
        }
    }
}
