//! Other agents' rules, for scenes that play them (feature `testing`: the demo, the
//! bench, the tests): the native matches and the DNAT target iptables-nft 1.8.9 writes
//! for kube-proxy's and portmap's rules, byte-identical (checked against its strace).
//! jumpset itself never writes such a rule.

use super::compat::xt_comment_info;
use super::expr::{Expr, NftVerdict, NFT_JUMP};
use super::frame::{nest_end, nest_start, put, put_be32};
#[cfg(test)]
use super::message::NFTA_RULE_EXPRESSIONS;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
const IPPROTO_TCP: u8 = 6;
/// `struct nf_nat_range2` flags.
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// `XT_ALIGN(sizeof(struct nf_nat_range2))`: 4 + 16 + 16 + 3 × 2 = 42, padded to 44, to 48.
const NF_NAT_RANGE2_INFO_LEN: usize = 48;

/// `[ cmp eq reg 1 VALUE ]`.
fn cmp_eq(value: &[u8]) -> Expr {
    let mut data = Vec::new();
    put_be32(&mut data, NFTA_CMP_SREG, NFT_REG_1);
    put_be32(&mut data, NFTA_CMP_OP, NFT_CMP_EQ);
    let d = nest_start(&mut data);
    put(&mut data, NFTA_DATA_VALUE, false, value);
    nest_end(&mut data, d, NFTA_CMP_DATA);
    Expr::Other {
        name: "cmp".into(),
        data,
    }
}

/// `[ payload load LENb @ BASE header + OFFSET => reg 1 ]`.
fn payload(base: u32, offset: u32, len: u32) -> Expr {
    let mut data = Vec::new();
    put_be32(&mut data, NFTA_PAYLOAD_DREG, NFT_REG_1);
    put_be32(&mut data, NFTA_PAYLOAD_BASE, base);
    put_be32(&mut data, NFTA_PAYLOAD_OFFSET, offset);
    put_be32(&mut data, NFTA_PAYLOAD_LEN, len);
    Expr::Other {
        name: "payload".into(),
        data,
    }
}

/// `-m comment --comment COMMENT`: the xt `comment` match (rev 0) iptables-nft writes.
pub fn comment(comment: &str) -> Expr {
    Expr::Match {
        name: "comment".into(),
        rev: 0,
        info: xt_comment_info(comment.as_bytes()),
    }
}

/// `-j CHAIN`: an immediate jump verdict.
pub fn jump(chain: &str) -> Expr {
    Expr::Verdict(NftVerdict {
        code: NFT_JUMP,
        chain: Some(chain.into()),
    })
}

/// `-p tcp`: `[ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x06 ]`.
pub fn match_tcp() -> [Expr; 2] {
    let mut data = Vec::new();
    put_be32(&mut data, NFTA_META_KEY, NFT_META_L4PROTO);
    put_be32(&mut data, NFTA_META_DREG, NFT_REG_1);
    [
        Expr::Other {
            name: "meta".into(),
            data,
        },
        cmp_eq(&[IPPROTO_TCP]),
    ]
}

/// `-d ADDR/32` (`/128` for IPv6): the destination address loaded from the network header
/// (offset 16, or 24 for IPv6), compared.
pub fn match_daddr(addr: std::net::IpAddr) -> [Expr; 2] {
    match addr {
        std::net::IpAddr::V4(a) => [
            payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
            cmp_eq(&a.octets()),
        ],
        std::net::IpAddr::V6(a) => [
            payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
            cmp_eq(&a.octets()),
        ],
    }
}

/// `-m tcp --dport PORT` (after [`match_tcp`]): `[ payload load 2b @ transport header + 2
/// => reg 1 ] [ cmp eq reg 1 PORT ]`.
pub fn match_dport(port: u16) -> [Expr; 2] {
    [
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        cmp_eq(&port.to_be_bytes()),
    ]
}

/// `-j DNAT --to-destination ADDR:PORT`: the xt `DNAT` target, revision 2, whose info is a
/// `struct nf_nat_range2` { u32 flags; nf_inet_addr min_addr, max_addr; be16 min_proto,
/// max_proto, base_proto } in host order, zero-padded to `XT_ALIGN` (48 bytes).
pub fn dnat_target(addr: std::net::IpAddr, port: u16) -> Expr {
    let mut a = [0u8; 16];
    match addr {
        std::net::IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
    }
    let mut info = Vec::with_capacity(NF_NAT_RANGE2_INFO_LEN);
    info.extend_from_slice(&(NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED).to_ne_bytes());
    info.extend_from_slice(&a); // min_addr
    info.extend_from_slice(&a); // max_addr
    info.extend_from_slice(&port.to_be_bytes()); // min_proto
    info.extend_from_slice(&port.to_be_bytes()); // max_proto
    info.resize(NF_NAT_RANGE2_INFO_LEN, 0); // base_proto 0, padding
    Expr::Target {
        name: "DNAT".into(),
        rev: 2,
        info,
    }
}

#[cfg(test)]
mod tests {
    //! The expected bytes are the NFTA_RULE_EXPRESSIONS of the NEWRULE iptables-nft 1.8.9
    //! sent (`strace -e write=all`, in a throwaway namespace) for the command named.

    use super::*;
    use crate::backend::nft::codec::expr::put_expr;

    fn expressions(exprs: &[Expr]) -> String {
        let mut b = Vec::new();
        let list = nest_start(&mut b);
        for e in exprs {
            put_expr(&mut b, e);
        }
        nest_end(&mut b, list, NFTA_RULE_EXPRESSIONS);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn jump(chain: &str) -> Expr {
        Expr::Verdict(NftVerdict {
            code: NFT_JUMP,
            chain: Some(chain.into()),
        })
    }

    const COUNTER: Expr = Expr::Counter {
        bytes: 0,
        packets: 0,
    };

    const TCP: &str = "24000180090001006d6574610000000014000280080002000000001008000100000000012c00018008000100636d700020000280080001000000000108000200000000000c0003800500010006000000";
    const DPORT_80: &str = "340001800c0001007061796c6f6164002400028008000100000000010800020000000002080003000000000208000400000000022c00018008000100636d700020000280080001000000000108000200000000000c0003800600010000500000";
    const COUNTER_JUMP_SVC: &str = "2c0001800c000100636f756e746572001c0002800c00010000000000000000000c0002000000000000000000400001800e000100696d6d6564696174650000002c0002800800010000000000200002801c00028008000100fffffffd0f0002004b5542452d5356432d580000";
    const COUNTER_DNAT_HEAD: &str = "2c0001800c000100636f756e746572001c0002800c00010000000000000000000c00020000000000000000005c0001800b00010074617267657400004c00028009000100444e41540000000008000200000000023400030003000000";

    #[test]
    fn service_match_is_byte_identical_to_iptables_nft() {
        // iptables-nft -t nat -A KUBE-SERVICES -d 192.0.2.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X
        let vip: std::net::IpAddr = "192.0.2.10".parse().unwrap();
        let mut e = match_tcp().to_vec();
        e.extend(match_daddr(vip));
        e.extend(match_dport(80));
        e.extend([COUNTER, jump("KUBE-SVC-X")]);
        let want = format!("80010480{TCP}340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000001008000400000000042c00018008000100636d700020000280080001000000000108000200000000000c00038008000100c000020a{DPORT_80}{COUNTER_JUMP_SVC}");
        assert_eq!(expressions(&e), want);

        // ip6tables-nft -t nat -A KUBE-SERVICES -d 2001:db8:96::10/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-X
        let vip: std::net::IpAddr = "2001:db8:96::10".parse().unwrap();
        let mut e = match_tcp().to_vec();
        e.extend(match_daddr(vip));
        e.extend(match_dport(80));
        e.extend([COUNTER, jump("KUBE-SVC-X")]);
        let want = format!("8c010480{TCP}340001800c0001007061796c6f6164002400028008000100000000010800020000000001080003000000001808000400000000103800018008000100636d70002c00028008000100000000010800020000000000180003801400010020010db8009600000000000000000010{DPORT_80}{COUNTER_JUMP_SVC}");
        assert_eq!(expressions(&e), want);
    }

    #[test]
    fn dnat_is_byte_identical_to_iptables_nft() {
        // iptables-nft -t nat -A KUBE-SEP-X -p tcp -j DNAT --to-destination 203.0.113.2:8080
        let pod: std::net::IpAddr = "203.0.113.2".parse().unwrap();
        let mut e = match_tcp().to_vec();
        e.extend([COUNTER, dnat_target(pod, 8080)]);
        let want = format!("dc000480{TCP}{COUNTER_DNAT_HEAD}cb007102000000000000000000000000cb0071020000000000000000000000001f901f900000000000000000");
        assert_eq!(expressions(&e), want);

        // ip6tables-nft -t nat -A KUBE-SEP-X -p tcp -j DNAT --to-destination [2001:db8:2::2]:8080
        let pod: std::net::IpAddr = "2001:db8:2::2".parse().unwrap();
        let mut e = match_tcp().to_vec();
        e.extend([COUNTER, dnat_target(pod, 8080)]);
        let want = format!("dc000480{TCP}{COUNTER_DNAT_HEAD}20010db800020000000000000000000220010db80002000000000000000000021f901f900000000000000000");
        assert_eq!(expressions(&e), want);
    }
}
