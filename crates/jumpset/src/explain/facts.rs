//! The kernel facts `explain` relies on, with their sources (`docs/architecture.md#the-packets-path`
//! tells them whole): the hooks, the priorities and their names, where the NAT core hooks
//! in, the priorities x_tables registers its tables at, and the hook functions the hook
//! dump names.

use serde::Serialize;
use std::fmt;

/// A netfilter hook of the ip and ip6 families (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// NF_INET_PRE_ROUTING (0).
    Prerouting,
    /// NF_INET_LOCAL_IN (1).
    Input,
    /// NF_INET_FORWARD (2).
    Forward,
    /// NF_INET_LOCAL_OUT (3).
    Output,
    /// NF_INET_POST_ROUTING (4).
    Postrouting,
}

impl Hook {
    /// Every hook, in hook-number order.
    pub const ALL: [Hook; 5] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    /// The hook number (`NF_INET_*`).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The hook with number `n`.
    pub fn from_number(n: u32) -> Option<Hook> {
        Hook::ALL.get(n as usize).copied()
    }

    /// The name `nft` uses: `prerouting`, `input`, ...
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    /// The hook named `s` (`prerouting`, ...; the iptables chain names too).
    pub fn parse(s: &str) -> Option<Hook> {
        let s = s.to_ascii_lowercase();
        Hook::ALL.into_iter().find(|h| h.name() == s)
    }

    /// The priority the NAT core's hook runs at on this hook: `nf_nat_ipv4_ops` /
    /// `nf_nat_ipv6_ops` (net/netfilter/nf_nat_proto.c) register NF_IP_PRI_NAT_DST (−100)
    /// on prerouting and output, NF_IP_PRI_NAT_SRC (100) on input and postrouting, and
    /// nothing on forward.
    pub fn nat_priority(self) -> Option<i32> {
        match self {
            Hook::Prerouting | Hook::Output => Some(NAT_DST),
            Hook::Input | Hook::Postrouting => Some(NAT_SRC),
            Hook::Forward => None,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// NF_IP_PRI_CONNTRACK: a `nat` chain must have a priority above it (nf_tables_api.c
/// refuses `priority <= NF_IP_PRI_CONNTRACK` with EOPNOTSUPP).
pub const CONNTRACK: i32 = -200;
/// NF_IP_PRI_NAT_DST.
pub const NAT_DST: i32 = -100;
/// NF_IP_PRI_NAT_SRC.
pub const NAT_SRC: i32 = 100;

/// The named priorities of the ip, ip6 and inet families (NF_IP_PRI_*; `nft`'s names),
/// and the hooks a name applies to (`None`: every hook).
const NAMED: &[(&str, i32, Option<&[Hook]>)] = &[
    ("raw", -300, None),
    ("mangle", -150, None),
    ("dstnat", NAT_DST, Some(&[Hook::Prerouting])),
    ("filter", 0, None),
    ("security", 50, None),
    ("srcnat", NAT_SRC, Some(&[Hook::Postrouting])),
];

/// `prio` on `hook` by name, as `nft` (1.0.6) writes it: `dstnat`, `filter + 10`,
/// `mangle - 5` (within 10 of a named priority), else the number. nft names `dstnat` on
/// prerouting and `srcnat` on postrouting only (−100 on output and 100 on input, where the
/// NAT core hooks in too, stay numbers), so the names here are the ones `nft list ruleset`
/// shows on the same host.
pub fn priority_name(hook: Hook, prio: i32) -> String {
    for &(name, value, hooks) in NAMED {
        if hooks.is_some_and(|hs| !hs.contains(&hook)) {
            continue;
        }
        let off = i64::from(prio) - i64::from(value);
        match off {
            0 => return name.to_string(),
            1..=10 => return format!("{name} + {off}"),
            -10..=-1 => return format!("{name} - {}", -off),
            _ => {}
        }
    }
    prio.to_string()
}

/// The priority x_tables registers table `table` at (`NF_IP_PRI_*`, the same for ip6):
/// raw −300, mangle −150, filter 0, security 50. `nat` has none of its own: its chains
/// run inside the NAT core's hook (iptable_nat.c registers them with
/// `nf_nat_ipv4_register_fn`, as nft_chain_nat.c does nf_tables' nat chains).
pub fn xt_priority(table: &str) -> Option<i32> {
    match table {
        "raw" => Some(-300),
        "mangle" => Some(-150),
        "filter" => Some(0),
        "security" => Some(50),
        _ => None,
    }
}

/// The x_tables table registered at `prio` (the reverse of [`xt_priority`]); −450 is the
/// raw table loaded with `raw_before_defrag=1`.
pub fn xt_table_at(prio: i32) -> Option<&'static str> {
    match prio {
        -300 | -450 => Some("raw"),
        -150 => Some("mangle"),
        0 => Some("filter"),
        50 => Some("security"),
        _ => None,
    }
}

/// Whether `function`, named by the hook dump, is the NAT core's hook: `nf_nat_ipv4_*` /
/// `nf_nat_ipv6_*` (`nf_nat_ipv4_pre_routing`, `_out`, `_local_fn`, `_local_in`; older
/// kernels `_in`, `_fn`).
pub fn is_nat_core(function: &str) -> bool {
    function.starts_with("nf_nat_ipv4_") || function.starts_with("nf_nat_ipv6_")
}

/// Whether `function` is an x_tables table's hook: `ipt_do_table` / `ip6t_do_table`
/// (raw, filter, security), `iptable_mangle_hook` / `ip6table_mangle_hook`, and the
/// per-table hooks of older kernels (`iptable_filter_hook`, ...).
pub fn is_xt_table(function: &str) -> bool {
    matches!(function, "ipt_do_table" | "ip6t_do_table")
        || ((function.starts_with("iptable_") || function.starts_with("ip6table_"))
            && function.ends_with("_hook"))
}

/// Whether `function` is iptable_nat's chain as the NAT core runs it (in hook dumps that
/// list the chains behind the NAT hook): `iptable_nat_do_chain` / `ip6table_nat_do_chain`.
pub fn is_xt_nat(function: &str) -> bool {
    matches!(function, "iptable_nat_do_chain" | "ip6table_nat_do_chain")
}

/// The nfgen family of `inet` tables, whose base chains hook into ip and ip6 alike.
pub const NFPROTO_INET: u8 = 1;
/// `NFT_TABLE_F_DORMANT`: the table's base chains are not registered.
pub const TABLE_DORMANT: u32 = 0x1;
/// `NFT_TABLE_F_OWNER`: only the process that created the table may change it.
pub const TABLE_OWNER: u32 = 0x2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_named_as_nft_names_them() {
        // What nft 1.0.6 prints for chains at these priorities on prerouting (checked in a
        // throwaway namespace: `nft add chain ... priority P; nft list table`).
        let pre = |p| priority_name(Hook::Prerouting, p);
        assert_eq!(pre(-300), "raw");
        assert_eq!(pre(-299), "raw + 1");
        assert_eq!(pre(-290), "raw + 10");
        assert_eq!(pre(-289), "-289");
        assert_eq!(pre(-160), "mangle - 10");
        assert_eq!(pre(-141), "mangle + 9");
        assert_eq!(pre(-110), "dstnat - 10");
        assert_eq!(pre(-100), "dstnat");
        assert_eq!(pre(-95), "dstnat + 5");
        assert_eq!(pre(-50), "-50");
        assert_eq!(pre(0), "filter");
        assert_eq!(pre(11), "11");
        assert_eq!(pre(40), "security - 10");
        assert_eq!(pre(-200), "-200");
        assert_eq!(pre(i32::MAX), "2147483647");
        assert_eq!(pre(i32::MIN), "-2147483648");
        // dstnat on prerouting only, srcnat on postrouting only (nft 1.0.6 prints -100 on
        // output and input, 100 on input, output and forward).
        assert_eq!(priority_name(Hook::Output, -100), "-100");
        assert_eq!(priority_name(Hook::Input, -100), "-100");
        assert_eq!(priority_name(Hook::Postrouting, 100), "srcnat");
        assert_eq!(priority_name(Hook::Postrouting, 110), "srcnat + 10");
        assert_eq!(priority_name(Hook::Input, 100), "100");
        assert_eq!(priority_name(Hook::Forward, 100), "100");
        assert_eq!(priority_name(Hook::Prerouting, 60), "security + 10");
    }

    #[test]
    fn hooks_and_their_nat_priorities() {
        for h in Hook::ALL {
            assert_eq!(Hook::from_number(h.number()), Some(h));
            assert_eq!(Hook::parse(h.name()), Some(h));
        }
        assert_eq!(Hook::parse("PREROUTING"), Some(Hook::Prerouting));
        assert_eq!(Hook::from_number(5), None);
        assert_eq!(Hook::Prerouting.nat_priority(), Some(-100));
        assert_eq!(Hook::Output.nat_priority(), Some(-100));
        assert_eq!(Hook::Input.nat_priority(), Some(100));
        assert_eq!(Hook::Postrouting.nat_priority(), Some(100));
        assert_eq!(Hook::Forward.nat_priority(), None);
    }

    #[test]
    fn hook_functions_are_told_apart() {
        for f in [
            "nf_nat_ipv4_pre_routing",
            "nf_nat_ipv4_in",
            "nf_nat_ipv6_local_fn",
            "nf_nat_ipv6_fn",
        ] {
            assert!(is_nat_core(f), "{f}");
            assert!(!is_xt_table(f), "{f}");
        }
        for f in [
            "ipt_do_table",
            "ip6t_do_table",
            "iptable_mangle_hook",
            "ip6table_filter_hook",
        ] {
            assert!(is_xt_table(f), "{f}");
            assert!(!is_nat_core(f), "{f}");
        }
        assert!(is_xt_nat("iptable_nat_do_chain"));
        assert!(!is_xt_table("iptable_nat_do_chain"));
        assert!(!is_xt_table("ipv4_conntrack_in"));
        assert_eq!(xt_table_at(xt_priority("mangle").unwrap()), Some("mangle"));
        assert_eq!(xt_priority("nat"), None);
    }
}
