//! Who put a table there, from its family and name — the names each agent's source gives
//! its table (`docs/architecture.md#who-owns-which-table`):
//!
//! - iptables-nft: `raw`, `mangle`, `nat`, `filter`, `security` in `ip` / `ip6`, with
//!   base chains exactly as iptables-nft makes them (`iptables::BASE_CHAINS`);
//! - kube-proxy's nftables mode: `kube-proxy` in `ip` / `ip6`
//!   (kubernetes/kubernetes pkg/proxy/nftables/proxier.go, `kubeProxyTable`);
//! - Calico's nftables data plane: `calico` in `ip` / `ip6`
//!   (projectcalico/calico felix/dataplane/linux/int_dataplane.go,
//!   `nftables.NewTable("calico", 4|6, ...)`);
//! - Kube-OVN's nftables gateway: `kube-ovn` in `ip` / `ip6`
//!   (kubeovn/kube-ovn pkg/daemon/gateway_nft_linux.go, `nftGatewayTable`);
//! - firewalld: `firewalld` in `inet` (and in `ip` / `ip6` on older releases);
//! - Docker's nftables backend: `docker-bridges` in `ip` / `ip6` (moby);
//! - x_tables tables: iptables-legacy.
//!
//! jumpset keeps no table of its own: it owns the jump set of the chains it manages (the
//! rules carrying its comments), which `explain` marks `managed` and, rule by rule,
//! `jumpset`.

use super::facts::NFPROTO_INET;
use crate::backend::nft::codec::{NFPROTO_IPV4, NFPROTO_IPV6};
use crate::iptables;

/// The agent a table of nfgen family `family` named `name` belongs to, or `unknown`.
pub fn table_owner(family: u8, name: &str) -> &'static str {
    let ip = family == NFPROTO_IPV4 || family == NFPROTO_IPV6;
    match name {
        _ if ip && iptables::IPTABLES_TABLES.contains(&name) => "iptables-nft",
        "kube-proxy" if ip => "kube-proxy",
        "calico" if ip => "calico",
        "kube-ovn" if ip => "kube-ovn",
        "firewalld" if ip || family == NFPROTO_INET => "firewalld",
        "docker-bridges" if ip => "docker",
        _ => "unknown",
    }
}

/// The owner of base chain `chain` of table `table`: the table's, except that a chain in
/// one of iptables' tables that is not the base chain iptables-nft makes (another hook,
/// priority or type) was written by `nft` directly: `unknown`.
pub fn chain_owner(
    family: u8,
    table: &str,
    chain: &str,
    hook: u32,
    priority: i32,
    chain_type: &str,
) -> &'static str {
    let owner = table_owner(family, table);
    if owner != "iptables-nft" {
        return owner;
    }
    match iptables::base_chain(table, chain) {
        Some(d) if d.hook == hook && d.priority == priority && d.chain_type == chain_type => owner,
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_owned_by_the_agents_that_name_them() {
        let ip = NFPROTO_IPV4;
        assert_eq!(table_owner(ip, "nat"), "iptables-nft");
        assert_eq!(table_owner(NFPROTO_IPV6, "security"), "iptables-nft");
        // `inet filter` is the distributions' nftables.conf, not iptables-nft's.
        assert_eq!(table_owner(NFPROTO_INET, "filter"), "unknown");
        assert_eq!(table_owner(ip, "kube-proxy"), "kube-proxy");
        assert_eq!(table_owner(NFPROTO_IPV6, "calico"), "calico");
        assert_eq!(table_owner(ip, "kube-ovn"), "kube-ovn");
        assert_eq!(table_owner(NFPROTO_INET, "firewalld"), "firewalld");
        assert_eq!(table_owner(ip, "docker-bridges"), "docker");
        assert_eq!(table_owner(ip, "mine"), "unknown");
        assert_eq!(table_owner(NFPROTO_INET, "kube-proxy"), "unknown");
    }

    #[test]
    fn a_chain_nft_wrote_into_an_iptables_table_is_not_iptables_nfts() {
        let ip = NFPROTO_IPV4;
        assert_eq!(
            chain_owner(ip, "nat", "PREROUTING", 0, -100, "nat"),
            "iptables-nft"
        );
        assert_eq!(
            chain_owner(ip, "nat", "PREROUTING", 0, -99, "nat"),
            "unknown"
        );
        assert_eq!(chain_owner(ip, "nat", "mine", 0, -100, "nat"), "unknown");
        assert_eq!(
            chain_owner(ip, "kube-proxy", "nat-prerouting", 0, -100, "nat"),
            "kube-proxy"
        );
    }
}
