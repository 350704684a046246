//! `jumpset explain`: the packet's whole path through a hook, who put each piece there,
//! and why each owned jump sits where it does.
//!
//! For a family and a hook it lists every base chain a packet meets, in the order the
//! kernel runs them: nf_tables chains of the family's own tables and of `inet` tables,
//! x_tables tables registered in the namespace, and — said as the kernel does it — the
//! `nat`-type chains (nf_tables' and iptable_nat's alike) inside the NAT core's hook, in
//! their priority order among themselves, for a connection's first packet only. The
//! order comes from the kernel's own hook dump (`nft list hooks`) when the kernel has it;
//! otherwise it is derived from the priorities, and ties — whose order is the
//! registration order, which no dump shows — are flagged. Findings name what is likely to
//! bite ([`FindingKind`]), each with its evidence and what to do; for each managed chain,
//! every rule with its owner and, for each owned jump, the reason it stands where it does
//! ([`crate::plan::reasons`]).
//!
//! Read-only: nf_tables is only dumped, and an x_tables table is read only when
//! `/proc/thread-self/net/ip{,6}_tables_names` lists it (a query would instantiate it) —
//! the same rule as host detection. The pieces:
//!
//! - [`facts`] — hooks, priorities and their names, the NAT core, x_tables priorities;
//! - [`owner`] — who a table belongs to;
//! - `path` — the order of one hook (pure), from the hook dump or from the priorities;
//! - `findings` — what is wrong or fragile (pure);
//! - `gather` — reading the kernel into an [`Evidence`].

pub mod facts;
mod findings;
mod gather;
pub mod owner;
mod path;

pub use facts::Hook;
pub use gather::gather;

use crate::backend::legacy::blob::ChainSummary;
use crate::backend::nft::codec::HookInfo;
use crate::detect::{self, FamilyEvidence, FamilyVerdict, TableCensus};
use crate::error::Error;
use crate::plan::Reason;
use crate::report::ChainStatus;
use crate::snapshot::{Family, Snapshot};
use crate::spec::{BackendChoice, Config};
use serde::Serialize;

// ---------------------------------------------------------------------------------------
// What the kernel has (the input of the pure part).
// ---------------------------------------------------------------------------------------

/// An nf_tables table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NftTable {
    /// nfgen family (`inet` 1, `ip` 2, `ip6` 10, ...).
    pub family: u8,
    /// Name.
    pub name: String,
    /// Handle (allocated in creation order, per namespace).
    pub handle: u64,
    /// NFTA_TABLE_FLAGS (`dormant` 0x1, `owner` 0x2, ...).
    pub flags: u32,
}

/// The hook of an nf_tables base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BaseHook {
    /// NF_INET_*.
    pub hook: u32,
    /// Its priority.
    pub priority: i32,
    /// `filter`, `nat` or `route`.
    pub chain_type: String,
    /// NF_ACCEPT 1, NF_DROP 0.
    pub policy: Option<u32>,
}

/// An nf_tables chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NftChain {
    /// nfgen family of its table.
    pub family: u8,
    /// Its table.
    pub table: String,
    /// Name.
    pub name: String,
    /// Handle (allocated in creation order, per table).
    pub handle: u64,
    /// For a base chain, its hook.
    pub base: Option<BaseHook>,
    /// Rules in it.
    pub rules: usize,
}

/// An x_tables table the namespace has (listed in `/proc/.../ip{,6}_tables_names`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct XtTable {
    /// Family.
    pub family: Family,
    /// Name (`nat`, `filter`, ...).
    pub name: String,
    /// Its chains, or why they could not be read (CAP_NET_RAW missing).
    pub chains: Result<Vec<ChainSummary>, String>,
}

/// The hook dump of one family and hook: `None` when the kernel has none.
pub type HookDump = Option<Vec<HookInfo>>;

/// Everything `explain` read from the kernel.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Evidence {
    /// The ruleset generation the nf_tables dumps were taken at.
    pub generation: u32,
    /// Every nf_tables table.
    pub tables: Vec<NftTable>,
    /// Every nf_tables chain.
    pub chains: Vec<NftChain>,
    /// The x_tables tables of each family examined.
    pub xt: Vec<XtTable>,
    /// The hook dump of each (family, hook) examined.
    pub dumps: Vec<(Family, Hook, HookDump)>,
    /// Each managed chain as read: (backend `nft` or `legacy`, snapshot).
    pub snapshots: Vec<(&'static str, Snapshot)>,
}

impl Evidence {
    /// The nf_tables table `name` of nfgen family `family`.
    pub fn table(&self, family: u8, name: &str) -> Option<&NftTable> {
        self.tables
            .iter()
            .find(|t| t.family == family && t.name == name)
    }

    /// What host detection would conclude for `family` from this evidence.
    pub fn verdict(&self, family: Family) -> FamilyVerdict {
        detect::decide(family, &self.family_evidence(family))
    }

    /// Host detection's evidence for `family`: iptables-nft's tables (counted from the
    /// chain dump) and the readable x_tables tables.
    pub fn family_evidence(&self, family: Family) -> FamilyEvidence {
        let fam = crate::backend::nft::nfproto(family);
        let nft = self
            .tables
            .iter()
            .filter(|t| {
                t.family == fam && crate::iptables::IPTABLES_TABLES.contains(&t.name.as_str())
            })
            .map(|t| {
                let chains = self
                    .chains
                    .iter()
                    .filter(|c| c.family == fam && c.table == t.name);
                let mut census = TableCensus {
                    table: t.name.clone(),
                    ..TableCensus::default()
                };
                for c in chains {
                    census.rules += c.rules;
                    match &c.base {
                        None => census.user_chains.push(c.name.clone()),
                        Some(b) => {
                            census.incompatible |= owner::chain_owner(
                                fam,
                                &t.name,
                                &c.name,
                                b.hook,
                                b.priority,
                                &b.chain_type,
                            ) != "iptables-nft"
                        }
                    }
                }
                census
            })
            .collect();
        let legacy = self
            .xt
            .iter()
            .filter(|t| t.family == family)
            .filter_map(|t| {
                let chains = t.chains.as_ref().ok()?;
                Some(TableCensus {
                    table: t.name.clone(),
                    rules: chains.iter().map(|c| c.rules).sum(),
                    user_chains: chains
                        .iter()
                        .filter(|c| c.hook.is_none())
                        .map(|c| c.name.clone())
                        .collect(),
                    incompatible: false,
                })
            })
            .collect();
        FamilyEvidence { nft, legacy }
    }
}

// ---------------------------------------------------------------------------------------
// What explain says (serializes to `jumpset explain --json`).
// ---------------------------------------------------------------------------------------

/// Where the order of a hook's path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderSource {
    /// The kernel's hook dump: the order it runs them in.
    HookDump,
    /// Derived from the priorities (this kernel has no hook dump); equal priorities are
    /// flagged, their order guessed.
    Derived,
}

/// One base chain (or kernel function) on a packet's path through a hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Step {
    /// 1-based, in the order the kernel runs them.
    pub position: usize,
    /// `nf_tables`, `x_tables`, or `kernel` (conntrack, defrag, ... — hook dump only).
    pub backend: &'static str,
    /// The table's family: `ip`, `ip6`, or `inet` (nf_tables chains of `inet` tables run
    /// for both).
    pub family: String,
    /// The table (empty for a kernel function).
    pub table: String,
    /// The chain (x_tables: the built-in chain; kernel: the function).
    pub chain: String,
    /// `filter`, `nat` or `route`.
    #[serde(rename = "type")]
    pub chain_type: Option<String>,
    /// The chain's own priority.
    pub priority: i32,
    /// It by name: `dstnat`, `filter + 10`, ...
    pub priority_name: String,
    /// Where on the hook it runs: its priority, or for a `nat` chain the NAT hook's.
    pub runs_at: i32,
    /// A `nat` chain: run by the NAT core's hook, for a connection's first packet only,
    /// until one of them maps the connection.
    pub nat: bool,
    /// `accept` or `drop` (`null` for a kernel function or an unreadable table).
    pub policy: Option<String>,
    /// Rules in the chain (`null` when unknown).
    pub rules: Option<usize>,
    /// Who put it there: `iptables-nft`, `iptables-legacy`, `kube-proxy`, `calico`,
    /// `kube-ovn`, `firewalld`, `docker`, `kernel` or `unknown`.
    pub owner: &'static str,
    /// One of the chains jumpset manages (its jump set is jumpset's).
    pub managed: bool,
    /// Other steps at the same priority (among the NAT hook's chains: the same own
    /// priority), which run in registration order.
    pub tied_with: Vec<String>,
    /// False when a tie's order here is a guess (no hook dump).
    pub order_known: bool,
}

impl Step {
    /// `ip kube-proxy nat-prerouting`, `x_tables ip nat PREROUTING`, `kernel ipv4_conntrack_in`.
    pub fn label(&self) -> String {
        match self.backend {
            "nf_tables" => format!("{} {} {}", self.family, self.table, self.chain),
            "x_tables" => format!("x_tables {} {} {}", self.family, self.table, self.chain),
            _ => format!("kernel {}", self.chain),
        }
    }
}

/// The NAT core's hook on a path: where the `nat` chains run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct NatHook {
    /// Its priority (NF_IP_PRI_NAT_DST −100 on prerouting and output, NF_IP_PRI_NAT_SRC
    /// 100 on input and postrouting).
    pub priority: i32,
    /// By name.
    pub priority_name: String,
    /// The function, when the hook dump named it.
    pub function: Option<String>,
    /// Where the order of its nat chains comes from: the hook dump when it lists them
    /// (Linux 7.1+), else their priorities (ties guessed).
    pub order: OrderSource,
    /// Top-level steps at the same priority (registration order decides).
    pub tied_with: Vec<String>,
}

/// Every base chain a packet of one family meets on one hook, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HookPath {
    /// The packet's family.
    pub family: Family,
    /// The hook.
    pub hook: Hook,
    /// Where the order comes from.
    pub order: OrderSource,
    /// The steps, in order.
    pub path: Vec<Step>,
    /// The NAT core's hook, when `nat` chains run on this hook.
    pub nat_hook: Option<NatHook>,
    /// Dormant tables' base chains on this hook: registered nowhere, never run.
    pub dormant: Vec<String>,
    /// What else the reader should know about this path.
    pub notes: Vec<String>,
}

/// The kinds of finding (the daemon's `jumpset_findings{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// Base chains of different tables on one hook at equal priority: they run in
    /// registration order — defined, but it depends on which agent loaded first.
    PriorityTie,
    /// Both iptables backends hold rules for a family: packets cross both.
    MixedBackends,
    /// A base chain with a `drop` policy runs before the managed chain.
    DropPolicyBefore,
    /// An owned jump's target chain holds no rule.
    EmptyTarget,
    /// An owned jump's target chain does not exist.
    MissingTarget,
    /// A table is dormant: its base chains are not run.
    DormantTable,
    /// A jump's target (or anchor) exists as a chain in two tables a packet meets.
    SameTargetTwoTables,
    /// A `nat` chain's own priority puts it on the other side of another chain than the
    /// NAT hook it runs in.
    NatRunsAtNatHook,
}

impl FindingKind {
    /// Every kind (the daemon exports a gauge for each, 0 when absent).
    pub const ALL: [FindingKind; 8] = [
        FindingKind::PriorityTie,
        FindingKind::MixedBackends,
        FindingKind::DropPolicyBefore,
        FindingKind::EmptyTarget,
        FindingKind::MissingTarget,
        FindingKind::DormantTable,
        FindingKind::SameTargetTwoTables,
        FindingKind::NatRunsAtNatHook,
    ];

    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::PriorityTie => "priority_tie",
            FindingKind::MixedBackends => "mixed_backends",
            FindingKind::DropPolicyBefore => "drop_policy_before",
            FindingKind::EmptyTarget => "empty_target",
            FindingKind::MissingTarget => "missing_target",
            FindingKind::DormantTable => "dormant_table",
            FindingKind::SameTargetTwoTables => "same_target_two_tables",
            FindingKind::NatRunsAtNatHook => "nat_runs_at_nat_hook",
        }
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// Likely to break traffic, or to break it after a restart.
    Warning,
    /// Worth knowing.
    Info,
}

impl Severity {
    /// The JSON spelling (`warning`, `info`).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Something on the path that is wrong or fragile, with its evidence and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// How much it matters.
    pub severity: Severity,
    /// The family it is about, if one.
    pub family: Option<Family>,
    /// The hook it is about, if one.
    pub hook: Option<Hook>,
    /// One sentence.
    pub summary: String,
    /// What was found, line by line.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub what_to_do: String,
    /// What identifies it across reads (the daemon logs each once).
    #[serde(skip)]
    pub key: String,
}

/// One managed chain as read: every rule with its owner, and why each owned jump is
/// where it is (or, when the chain is not in order, where `apply` would put it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ManagedChain {
    /// The backend it was read from: `nft` or `legacy`.
    pub backend: &'static str,
    /// The chain: rules, owners, roles, missing jumps, conflicts, anchors.
    #[serde(flatten)]
    pub status: ChainStatus,
    /// For each declared jump, why it stands where the plan leaves it.
    pub reasons: Vec<Reason>,
}

/// What `jumpset explain` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// Each (family, hook) examined.
    pub hooks: Vec<HookPath>,
    /// What is wrong or fragile.
    pub findings: Vec<Finding>,
    /// Each managed chain in each family.
    pub chains: Vec<ManagedChain>,
}

// ---------------------------------------------------------------------------------------
// The request, the pure analysis, and the entry point.
// ---------------------------------------------------------------------------------------

/// What to explain.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The config whose chains are managed (`None`: no managed chain).
    pub config: Option<&'a Config>,
    /// The backend the managed chains are read with (`auto`: as detection decides).
    pub backend: BackendChoice,
    /// The packet families.
    pub families: Vec<Family>,
    /// The hooks.
    pub hooks: Vec<Hook>,
}

impl<'a> Request<'a> {
    /// Everything about `config` (if any): its families (else ip and ip6), the hooks of
    /// its chains (else all five), its backend.
    pub fn new(config: Option<&'a Config>) -> Self {
        let families = config.map_or_else(|| vec![Family::Ip, Family::Ip6], |c| c.families.clone());
        let mut hooks: Vec<Hook> = config
            .map(|c| {
                c.chains
                    .iter()
                    .filter_map(|s| crate::iptables::base_chain(&s.table, &s.chain))
                    .filter_map(|b| Hook::from_number(b.hook))
                    .collect()
            })
            .unwrap_or_default();
        if hooks.is_empty() {
            hooks = Hook::ALL.to_vec();
        }
        hooks.sort();
        hooks.dedup();
        Request {
            config,
            backend: config.map_or(BackendChoice::Auto, |c| c.backend),
            families,
            hooks,
        }
    }

    /// The managed (family, table, chain) triples — every chain of the config in every
    /// family asked for, as the other commands' `--family` — with the backends to read
    /// each with, as `ev` lets decide them.
    pub(crate) fn managed(
        &self,
        ev: &Evidence,
    ) -> Vec<(Family, &'a crate::spec::ChainSpec, Vec<&'static str>)> {
        let Some(cfg) = self.config else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for spec in &cfg.chains {
            for &family in &self.families {
                out.push((
                    family,
                    spec,
                    backends_for(self.backend, family, &spec.table, ev),
                ));
            }
        }
        out
    }
}

/// The backends a managed chain of `table` in `family` is read with: the one configured,
/// or detection's choice; when detection will not choose, each backend holding the table
/// (nf_tables when neither does).
fn backends_for(
    choice: BackendChoice,
    family: Family,
    table: &str,
    ev: &Evidence,
) -> Vec<&'static str> {
    match choice {
        BackendChoice::Nft => vec!["nft"],
        BackendChoice::Legacy => vec!["legacy"],
        BackendChoice::Auto => match ev.verdict(family).backend {
            Some(detect::Choice::Nft) => vec!["nft"],
            Some(detect::Choice::Legacy) => vec!["legacy"],
            None => {
                let mut v = Vec::new();
                if ev
                    .table(crate::backend::nft::nfproto(family), table)
                    .is_some()
                {
                    v.push("nft");
                }
                if ev.xt.iter().any(|t| t.family == family && t.name == table) {
                    v.push("legacy");
                }
                if v.is_empty() {
                    v.push("nft");
                }
                v
            }
        },
    }
}

/// What `req` comes to, given what the kernel has (`ev`, as [`gather`] read it). Pure.
pub fn analyze(req: &Request<'_>, ev: &Evidence) -> Explanation {
    let managed = req.managed(ev);
    let mut marks: Vec<(Family, &'static str, &str, &str)> = Vec::new();
    for (family, spec, backends) in &managed {
        for b in backends {
            marks.push((*family, b, spec.table.as_str(), spec.chain.as_str()));
        }
    }
    let mut hooks = Vec::new();
    for &family in &req.families {
        for &hook in &req.hooks {
            let dump = ev
                .dumps
                .iter()
                .find(|(f, h, _)| *f == family && *h == hook)
                .and_then(|(_, _, d)| d.as_ref());
            hooks.push(path::hook_path(ev, family, hook, dump, &marks));
        }
    }
    let mut chains = Vec::new();
    for (family, spec, backends) in &managed {
        for &backend in backends {
            let Some((_, snap)) = ev.snapshots.iter().find(|(b, s)| {
                *b == backend
                    && s.family == *family
                    && s.table == spec.table
                    && s.chain == spec.chain
            }) else {
                continue;
            };
            let plan = crate::plan::plan(snap, spec);
            chains.push(ManagedChain {
                backend,
                status: ChainStatus::new(snap, spec, &plan),
                reasons: crate::plan::reasons(snap, spec, &plan),
            });
        }
    }
    let findings = findings::all(req, ev, &hooks, &managed);
    Explanation {
        hooks,
        findings,
        chains,
    }
}

/// `jumpset explain` in the calling thread's network namespace: read the kernel
/// (read-only, [`gather`]) and [`analyze`]. Needs CAP_NET_ADMIN (and CAP_NET_RAW to read
/// x_tables tables, when there are any: without it their contents are reported
/// unreadable).
pub fn explain(req: &Request<'_>) -> Result<Explanation, Error> {
    crate::privilege::require(BackendChoice::Nft)?;
    let ev = gather(req)?;
    Ok(analyze(req, &ev))
}

/// Only the findings about `config`'s chains (all the hooks of its chains, its families),
/// for the daemon's periodic check. Read-only, like [`explain`].
pub fn findings(config: &Config, families: &[Family]) -> Result<Vec<Finding>, Error> {
    let mut req = Request::new(Some(config));
    req.families = families.to_vec();
    let ev = gather(&req)?;
    Ok(analyze(&req, &ev).findings)
}

#[cfg(test)]
mod tests;
