//! Host classification: does this host run iptables-legacy, iptables-nft, both at once (a
//! broken host: packets cross both), or neither — and which backend `--backend auto`
//! should use.
//!
//! Rules (`docs/contracts.md#detection`): a backend is *in use* for a family when
//! one of the iptables tables it holds (nat, filter, mangle, raw, security — what
//! `iptables-save` prints) has a rule or a user chain; other nf_tables tables (firewalld's
//! inet table, kube-proxy's nftables mode, Docker's) are evidence only. kubelet's hint
//! chains in mangle decide, nft first; otherwise a backend alone in use is chosen; a
//! mixed host without a hint and an empty host get no backend.
//!
//! The decision is pure ([`decide`]); gathering the evidence reads the kernel without side
//! effects: `/proc/net/ip{,6}_tables_names` before any x_tables query, and no nf_tables
//! object is ever created.

use crate::backend::legacy::{self, LegacyBackend};
use crate::backend::nft::{self, NftBackend};
use crate::backend::BackendError;
use crate::iptables::{HINT_CHAINS, IPTABLES_TABLES};
use crate::snapshot::Family;
pub use crate::snapshot::TableCensus;
use serde::Serialize;

/// Everything detection looked at for one family.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct FamilyEvidence {
    /// The iptables tables nf_tables holds for this family.
    pub nft: Vec<TableCensus>,
    /// The x_tables tables that exist for this family.
    pub legacy: Vec<TableCensus>,
}

/// How a host (or a family) uses the iptables backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// Only iptables-nft is in use.
    Nft,
    /// Only iptables-legacy is in use.
    Legacy,
    /// Both are in use: packets cross both.
    Mixed,
    /// Neither is in use.
    None,
}

impl Mode {
    /// The JSON spelling: `nft`, `legacy`, `mixed` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
            Mode::Mixed => "mixed",
            Mode::None => "none",
        }
    }
}

/// A backend auto would choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// nf_tables.
    Nft,
    /// x_tables.
    Legacy,
}

impl Choice {
    /// The JSON spelling: `nft` or `legacy`.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Nft => "nft",
            Choice::Legacy => "legacy",
        }
    }
}

/// The verdict for one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FamilyVerdict {
    /// The mode.
    pub mode: Mode,
    /// What `--backend auto` uses; `None` when it will not choose.
    pub backend: Option<Choice>,
    /// Sentences for a node operator.
    pub evidence: Vec<String>,
    /// The backend kubelet's hint chain points at, if one was found.
    #[serde(skip)]
    pub hint: Option<Choice>,
}

fn hint_in(tables: &[TableCensus]) -> Option<&str> {
    tables
        .iter()
        .filter(|t| t.table == "mangle")
        .flat_map(|t| t.user_chains.iter())
        .find(|c| HINT_CHAINS.contains(&c.as_str()))
        .map(String::as_str)
}

fn describe(side: &str, tool: &str, family: Family, tables: &[TableCensus], out: &mut Vec<String>) {
    let used: Vec<&TableCensus> = tables.iter().filter(|t| t.in_use()).collect();
    if used.is_empty() {
        let existing: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
        out.push(if existing.is_empty() {
            format!("{side}: no {family} iptables table exists")
        } else {
            format!(
                "{side}: {family} table(s) {} exist but hold no rule and no user chain",
                existing.join(", ")
            )
        });
        return;
    }
    let parts: Vec<String> = used
        .iter()
        .map(|t| {
            format!(
                "{} ({} rule(s), {} user chain(s){})",
                t.table,
                t.rules,
                t.user_chains.len(),
                if t.incompatible {
                    ", incompatible: written by nft directly, iptables-nft cannot list it"
                } else {
                    ""
                }
            )
        })
        .collect();
    out.push(format!(
        "{side}: {tool} is in use for {family}: {}",
        parts.join(", ")
    ));
}

/// Decide one family.
pub fn decide(family: Family, ev: &FamilyEvidence) -> FamilyVerdict {
    let mut evidence = Vec::new();
    let tool = family.iptables();
    describe(
        "nf_tables",
        &format!("{tool}-nft"),
        family,
        &ev.nft,
        &mut evidence,
    );
    describe(
        "x_tables",
        &format!("{tool}-legacy"),
        family,
        &ev.legacy,
        &mut evidence,
    );
    let nft = ev.nft.iter().any(TableCensus::in_use);
    let legacy = ev.legacy.iter().any(TableCensus::in_use);
    let mode = match (nft, legacy) {
        (true, true) => Mode::Mixed,
        (true, false) => Mode::Nft,
        (false, true) => Mode::Legacy,
        (false, false) => Mode::None,
    };
    let hint = if let Some(h) = hint_in(&ev.nft) {
        evidence.push(format!(
            "kubelet's hint chain {h} is in the nf_tables mangle table: kubelet uses {tool}-nft"
        ));
        Some(Choice::Nft)
    } else if let Some(h) = hint_in(&ev.legacy) {
        evidence.push(format!(
            "kubelet's hint chain {h} is in the x_tables mangle table: kubelet uses {tool}-legacy"
        ));
        Some(Choice::Legacy)
    } else {
        None
    };
    let backend = hint.or_else(|| match mode {
            Mode::Nft => Some(Choice::Nft),
            Mode::Legacy => Some(Choice::Legacy),
            Mode::Mixed => {
                evidence.push(format!(
                    "both backends hold {family} rules and no kubelet hint chain says which one is meant: packets traverse both"
                ));
                None
            }
            Mode::None => None,
        });
    FamilyVerdict {
        mode,
        backend,
        evidence,
        hint,
    }
}

/// The verdict for the host: per family, and combined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HostVerdict {
    /// `mixed` when either family is mixed or the families disagree.
    pub mode: Mode,
    /// What `--backend auto` uses; `None` when it will not choose.
    pub backend: Option<Choice>,
    /// Sentences for a node operator.
    pub evidence: Vec<String>,
    /// Per family (`ip`, `ip6`).
    pub families: std::collections::BTreeMap<&'static str, FamilyVerdict>,
}

/// Combine the families' verdicts.
pub fn combine(ip: FamilyVerdict, ip6: FamilyVerdict, other_nft: &[String]) -> HostVerdict {
    let used: Vec<Mode> = [ip.mode, ip6.mode]
        .into_iter()
        .filter(|m| *m != Mode::None)
        .collect();
    let mode = if used.contains(&Mode::Mixed) || (used.len() == 2 && used[0] != used[1]) {
        Mode::Mixed
    } else {
        used.first().copied().unwrap_or(Mode::None)
    };
    // A hint in either family speaks for the host (kubelet uses one backend), nft first;
    // otherwise the families must agree.
    let hints = [ip.hint, ip6.hint];
    let backend = if hints.contains(&Some(Choice::Nft)) {
        Some(Choice::Nft)
    } else if hints.contains(&Some(Choice::Legacy)) {
        Some(Choice::Legacy)
    } else {
        match mode {
            Mode::Nft => Some(Choice::Nft),
            Mode::Legacy => Some(Choice::Legacy),
            Mode::Mixed | Mode::None => None,
        }
    };
    let mut evidence: Vec<String> = ip.evidence.iter().chain(&ip6.evidence).cloned().collect();
    if !other_nft.is_empty() {
        evidence.push(format!(
            "other nf_tables tables (not iptables', so not counted): {}",
            other_nft.join(", ")
        ));
    }
    evidence.push(match (mode, backend) {
        (Mode::None, _) => "neither backend holds any iptables rule or user chain: nothing tells which one the node's agents use; pass --backend nft or --backend legacy".into(),
        (_, None) => "ambiguous host: pass --backend nft or --backend legacy (the one kubelet and kube-proxy use), and remove the other backend's rules".into(),
        (_, Some(Choice::Nft)) => "--backend auto uses nft".into(),
        (_, Some(Choice::Legacy)) => "--backend auto uses legacy".into(),
    });
    let mut families = std::collections::BTreeMap::new();
    families.insert("ip", ip);
    families.insert("ip6", ip6);
    HostVerdict {
        mode,
        backend,
        evidence,
        families,
    }
}

/// Gather the evidence from the kernel and classify the host. Read-only: nf_tables is
/// only dumped, and an x_tables table is read only when `/proc/net/ip{,6}_tables_names`
/// says it already exists (a query would instantiate it). Needs CAP_NET_ADMIN, and
/// CAP_NET_RAW when legacy tables exist.
pub fn detect_host() -> Result<HostVerdict, BackendError> {
    let (ev, other) = gather(&[Family::Ip, Family::Ip6])?;
    let [ip, ip6] = ev;
    Ok(combine(
        decide(Family::Ip, &ip),
        decide(Family::Ip6, &ip6),
        &other,
    ))
}

/// The evidence of each family in `families` (the others are left empty), and the
/// nf_tables tables that are not iptables'.
fn gather(families: &[Family]) -> Result<([FamilyEvidence; 2], Vec<String>), BackendError> {
    let mut ev = [FamilyEvidence::default(), FamilyEvidence::default()];
    let slot = |f: Family| usize::from(f == Family::Ip6);
    let census = NftBackend::open()?.census()?;
    for (family, c) in census.iptables {
        if families.contains(&family) {
            ev[slot(family)].nft.push(c);
        }
    }
    let other: Vec<String> = census
        .tables
        .iter()
        .filter(|(f, n)| {
            !((*f == nft::codec::NFPROTO_IPV4 || *f == nft::codec::NFPROTO_IPV6)
                && IPTABLES_TABLES.contains(&n.as_str()))
        })
        .map(|(f, n)| format!("{} {n}", nft::family_name(*f)))
        .collect();
    for &family in families {
        for table in legacy::existing_tables(family)? {
            if !IPTABLES_TABLES.contains(&table.as_str()) {
                continue;
            }
            let (rules, users) = LegacyBackend::census(family, &table)?;
            ev[slot(family)].legacy.push(TableCensus {
                rules,
                user_chains: users,
                table,
                incompatible: false,
            });
        }
    }
    Ok((ev, other))
}

/// Whether `creating` would make `family` mixed by creating its first iptables table:
/// none of its kind exists for the family while the other backend is in use. Returns the
/// evidence then (for the refusal), `None` when creating the table is harmless.
pub(crate) fn would_mix(
    creating: Choice,
    family: Family,
) -> Result<Option<Vec<String>>, BackendError> {
    let (ev, _) = gather(&[family])?;
    let ev = &ev[usize::from(family == Family::Ip6)];
    Ok(first_table_would_mix(creating, ev).then(|| decide(family, ev).evidence))
}

/// The pure part of [`would_mix`].
fn first_table_would_mix(creating: Choice, ev: &FamilyEvidence) -> bool {
    let (own, other) = match creating {
        Choice::Nft => (&ev.nft, &ev.legacy),
        Choice::Legacy => (&ev.legacy, &ev.nft),
    };
    own.is_empty() && other.iter().any(TableCensus::in_use)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_first_table_of_a_backend_beside_the_other_in_use_would_mix() {
        let used = || t("nat", 3, &[]);
        let empty = || t("filter", 0, &[]);
        let would = |c, nft, legacy| first_table_would_mix(c, &ev(nft, legacy));
        assert!(would(Choice::Nft, vec![], vec![used()]));
        assert!(would(Choice::Legacy, vec![used()], vec![]));
        // The other backend's tables exist but hold nothing: not in use, nothing to mix.
        assert!(!would(Choice::Nft, vec![], vec![empty()]));
        // A table of our own kind exists already: the host is what it is; not the first.
        assert!(!would(Choice::Nft, vec![empty()], vec![used()]));
        assert!(!would(Choice::Legacy, vec![], vec![]));
    }

    use super::*;

    fn t(table: &str, rules: usize, chains: &[&str]) -> TableCensus {
        TableCensus {
            table: table.into(),
            rules,
            user_chains: chains.iter().map(|c| c.to_string()).collect(),
            incompatible: false,
        }
    }

    fn ev(nft: Vec<TableCensus>, legacy: Vec<TableCensus>) -> FamilyEvidence {
        FamilyEvidence { nft, legacy }
    }

    #[test]
    fn modes_and_choices() {
        let none = decide(Family::Ip, &ev(vec![], vec![t("nat", 0, &[])]));
        assert_eq!((none.mode, none.backend), (Mode::None, None));
        let nft = decide(Family::Ip, &ev(vec![t("nat", 3, &[])], vec![]));
        assert_eq!((nft.mode, nft.backend), (Mode::Nft, Some(Choice::Nft)));
        let leg = decide(Family::Ip, &ev(vec![], vec![t("filter", 0, &["X"])]));
        assert_eq!(
            (leg.mode, leg.backend),
            (Mode::Legacy, Some(Choice::Legacy))
        );
        let mixed = decide(
            Family::Ip,
            &ev(vec![t("nat", 3, &[])], vec![t("nat", 1, &[])]),
        );
        assert_eq!((mixed.mode, mixed.backend), (Mode::Mixed, None));
    }

    #[test]
    fn hints_decide_nft_first() {
        let both = decide(
            Family::Ip,
            &ev(
                vec![t("mangle", 0, &["KUBE-IPTABLES-HINT"])],
                vec![t("mangle", 0, &["KUBE-KUBELET-CANARY"]), t("nat", 9, &[])],
            ),
        );
        assert_eq!((both.mode, both.backend), (Mode::Mixed, Some(Choice::Nft)));
        let legacy_hint = decide(
            Family::Ip,
            &ev(
                vec![t("nat", 50, &[])],
                vec![t("mangle", 0, &["KUBE-IPTABLES-HINT"])],
            ),
        );
        assert_eq!(
            (legacy_hint.mode, legacy_hint.backend),
            (Mode::Mixed, Some(Choice::Legacy))
        );
        // A hint chain outside mangle is not kubelet's.
        let not = decide(
            Family::Ip,
            &ev(
                vec![t("nat", 1, &["KUBE-IPTABLES-HINT"])],
                vec![t("nat", 1, &[])],
            ),
        );
        assert_eq!(not.backend, None);
    }

    #[test]
    fn families_combine() {
        let nft = || decide(Family::Ip, &ev(vec![t("nat", 3, &[])], vec![]));
        let none = || decide(Family::Ip6, &ev(vec![], vec![]));
        let legacy = || decide(Family::Ip6, &ev(vec![], vec![t("nat", 3, &[])]));
        let h = combine(nft(), none(), &[]);
        assert_eq!((h.mode, h.backend), (Mode::Nft, Some(Choice::Nft)));
        let h = combine(nft(), legacy(), &["inet firewalld".into()]);
        assert_eq!((h.mode, h.backend), (Mode::Mixed, None));
        assert!(h.evidence.iter().any(|e| e.contains("inet firewalld")));
        // A hint in one family speaks for the host.
        let hinted = decide(
            Family::Ip,
            &ev(vec![t("mangle", 0, &["KUBE-IPTABLES-HINT"])], vec![]),
        );
        let h = combine(hinted, legacy(), &[]);
        assert_eq!((h.mode, h.backend), (Mode::Mixed, Some(Choice::Nft)));
        let h = combine(none(), decide(Family::Ip6, &ev(vec![], vec![])), &[]);
        assert_eq!((h.mode, h.backend), (Mode::None, None));
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["mode"], "none");
        assert!(json["backend"].is_null());
        assert!(json["families"]["ip6"]["evidence"].is_array());
    }
}
