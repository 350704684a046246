//! What iptables is, as the rest of jumpset relies on it: its tables, the built-in (base)
//! chains of each with the hook, priority and type iptables-nft gives them, the names a
//! user chain may have, and kubelet's hint chains. One module, so the backends, detection
//! and the spec agree; the sources are named in `docs/architecture.md#tables-and-base-chains`
//! and `#how-other-tools-choose`.

/// The iptables tables, as `iptables-save` prints them.
pub const IPTABLES_TABLES: &[&str] = &["raw", "mangle", "nat", "filter", "security"];

/// kubelet's hint chains (in mangle): whichever backend holds them is the one in use.
pub const HINT_CHAINS: &[&str] = &["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// The longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` − 1).
pub const MAX_CHAIN_NAME: usize = 28;

/// A built-in chain as iptables-nft defines it (`nft.c`, `xtables_ipv4[]`): what we
/// create when it is missing, so that iptables-nft accepts the table as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// Chain name.
    pub name: &'static str,
    /// Netfilter hook number (NF_INET_*).
    pub hook: u32,
    /// Priority.
    pub priority: i32,
    /// nf_tables chain type: `filter`, `nat` or `route`.
    pub chain_type: &'static str,
}

const fn bc(name: &'static str, hook: u32, priority: i32, chain_type: &'static str) -> BaseChain {
    BaseChain {
        name,
        hook,
        priority,
        chain_type,
    }
}

/// The built-in chains of each iptables table, in hook order (same for ip and ip6).
pub const BASE_CHAINS: &[(&str, &[BaseChain])] = &[
    (
        "nat",
        &[
            bc("PREROUTING", 0, -100, "nat"),
            bc("INPUT", 1, 100, "nat"),
            bc("OUTPUT", 3, -100, "nat"),
            bc("POSTROUTING", 4, 100, "nat"),
        ],
    ),
    (
        "filter",
        &[
            bc("INPUT", 1, 0, "filter"),
            bc("FORWARD", 2, 0, "filter"),
            bc("OUTPUT", 3, 0, "filter"),
        ],
    ),
    (
        "mangle",
        &[
            bc("PREROUTING", 0, -150, "filter"),
            bc("INPUT", 1, -150, "filter"),
            bc("FORWARD", 2, -150, "filter"),
            bc("OUTPUT", 3, -150, "route"),
            bc("POSTROUTING", 4, -150, "filter"),
        ],
    ),
    (
        "raw",
        &[
            bc("PREROUTING", 0, -300, "filter"),
            bc("OUTPUT", 3, -300, "filter"),
        ],
    ),
];

/// The iptables-nft definition of `table`'s built-in chain `chain`, if it is one.
pub fn base_chain(table: &str, chain: &str) -> Option<BaseChain> {
    BASE_CHAINS
        .iter()
        .find(|(t, _)| *t == table)
        .and_then(|(_, chains)| chains.iter().find(|c| c.name == chain).copied())
}

/// Targets iptables reserves: a user chain cannot have these names.
const RESERVED: &[&str] = &["ACCEPT", "DROP", "QUEUE", "RETURN", "ERROR", "CONTINUE"];

/// Why `name` cannot be a user chain name for iptables, if it cannot.
pub fn chain_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a chain name cannot be empty".into());
    }
    if name.len() > MAX_CHAIN_NAME {
        return Some(format!(
            "chain name {name:?} is {} bytes; iptables allows at most {MAX_CHAIN_NAME}",
            name.len()
        ));
    }
    if name.starts_with('-') || name.starts_with('!') {
        return Some(format!("chain name {name:?} cannot start with '-' or '!'"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\'' || c == '"')
    {
        return Some(format!(
            "chain name {name:?} holds a space, quote or control character, which iptables cannot parse"
        ));
    }
    if RESERVED.contains(&name)
        || BASE_CHAINS
            .iter()
            .any(|(_, cs)| cs.iter().any(|c| c.name == name))
    {
        return Some(format!(
            "{name:?} is a built-in target or chain, not a user chain"
        ));
    }
    None
}
