//! What is wrong or fragile on the paths `explain` found, each with its evidence and what
//! to do. Pure.

use super::facts::{Hook, NFPROTO_INET, TABLE_DORMANT};
use super::owner::table_owner;
use super::{Evidence, Finding, FindingKind, HookPath, Request, Severity, Step};
use crate::backend::nft::{family_name, nfproto};
use crate::detect::{Choice, Mode};
use crate::snapshot::{agent_of, Family, Rule, Verdict};
use crate::spec::ChainSpec;

/// The managed chains: (family, spec, backends read).
type Managed<'a> = [(Family, &'a ChainSpec, Vec<&'static str>)];

/// Every finding, in a stable order: by kind, then as found.
pub(super) fn all(
    req: &Request<'_>,
    ev: &Evidence,
    paths: &[HookPath],
    managed: &Managed<'_>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in paths {
        ties(p, &mut out);
        drop_before(p, &mut out);
        nat_at_nat_hook(p, &mut out);
    }
    for &family in &req.families {
        mixed(ev, family, paths, &mut out);
    }
    targets(ev, managed, &mut out);
    dormant(ev, &req.families, &mut out);
    same_target(ev, managed, &mut out);
    out.sort_by_key(|f| f.kind);
    out
}

/// The agent a jump to `target` looks like it belongs to.
fn agent_of_target(target: &str) -> &'static str {
    agent_of(&Rule {
        handle: 0,
        comment: None,
        matches: Vec::new(),
        counters: None,
        verdict: Verdict::Jump(target.to_string()),
    })
}

fn described(s: &Step) -> String {
    let rules = s
        .rules
        .map(|n| format!(", {n} rule(s)"))
        .unwrap_or_default();
    let policy = s
        .policy
        .as_deref()
        .map(|p| format!(", policy {p}"))
        .unwrap_or_default();
    format!(
        "{} (type {}, priority {} = {}{policy}{rules}, owner {})",
        s.label(),
        s.chain_type.as_deref().unwrap_or("-"),
        s.priority_name,
        s.priority,
        s.owner
    )
}

/// The table a step belongs to, for "different tables".
fn table_id(s: &Step) -> String {
    format!("{} {} {}", s.backend, s.family, s.table)
}

fn ties(p: &HookPath, out: &mut Vec<Finding>) {
    let known = p.order == super::OrderSource::HookDump;
    let nat_known = p
        .nat_hook
        .as_ref()
        .is_some_and(|h| h.order == super::OrderSource::HookDump);
    // Top level: steps by where they run, the NAT hook as one participant.
    let mut groups: Vec<(i32, Vec<String>, Vec<String>)> = Vec::new(); // (prio, ids, lines)
    for s in p.path.iter().filter(|s| !s.nat && s.backend != "kernel") {
        let g = match groups.iter_mut().find(|g| g.0 == s.runs_at) {
            Some(g) => g,
            None => {
                groups.push((s.runs_at, Vec::new(), Vec::new()));
                groups.last_mut().expect("just pushed")
            }
        };
        g.1.push(table_id(s));
        g.2.push(described(s));
    }
    if let Some(h) = &p.nat_hook {
        if let Some(g) = groups.iter_mut().find(|g| g.0 == h.priority) {
            let nat: Vec<String> = p.path.iter().filter(|s| s.nat).map(Step::label).collect();
            g.1.push("nat hook".into());
            g.2.push(format!(
                "the NAT hook ({} = {}), which runs the nat chains {}",
                h.priority_name,
                h.priority,
                nat.join(", ")
            ));
        }
    }
    for (prio, ids, lines) in groups {
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() < 2 {
            continue;
        }
        out.push(tie(p, prio, "", lines, known));
    }
    // Inside the NAT hook: nat chains by their own priority.
    let mut nat: Vec<(i32, Vec<String>, Vec<String>)> = Vec::new();
    for s in p.path.iter().filter(|s| s.nat) {
        let g = match nat.iter_mut().find(|g| g.0 == s.priority) {
            Some(g) => g,
            None => {
                nat.push((s.priority, Vec::new(), Vec::new()));
                nat.last_mut().expect("just pushed")
            }
        };
        g.1.push(table_id(s));
        g.2.push(described(s));
    }
    for (prio, mut ids, lines) in nat {
        ids.sort();
        ids.dedup();
        if ids.len() < 2 {
            continue;
        }
        out.push(tie(p, prio, " inside the NAT hook", lines, nat_known));
    }
}

fn tie(p: &HookPath, prio: i32, where_: &str, mut lines: Vec<String>, known: bool) -> Finding {
    let name = super::facts::priority_name(p.hook, prio);
    lines.push(if known {
        "the kernel's hook dump shows the order they run in now, as listed".to_string()
    } else if p.order == super::OrderSource::HookDump {
        "the hook dump does not list the nat chains on this kernel: which of them runs first is not observable here (the order shown is a guess: newest table first)".to_string()
    } else {
        "this kernel has no hook dump: which of them runs first is not observable here (the order shown is a guess: newest table first)".to_string()
    });
    let mut key_parts = lines.clone();
    key_parts.pop();
    key_parts.sort();
    Finding {
        kind: FindingKind::PriorityTie,
        severity: Severity::Warning,
        family: Some(p.family),
        hook: Some(p.hook),
        summary: format!(
            "{} {}: {} chains of different tables at priority {name} ({prio}){where_} run in registration order — the one registered last runs first",
            p.family,
            p.hook,
            lines.len() - 1
        ),
        evidence: lines,
        what_to_do: format!(
            "Their order flips when one of their agents re-creates its table (a restart, an upgrade): give them distinct priorities (in the agents' configuration, e.g. `priority {name} - 1` for the one that must run first), or make sure none depends on running first."
        ),
        key: format!(
            "priority_tie:{}:{}:{prio}{where_}:{}",
            p.family,
            p.hook,
            key_parts.join("|")
        ),
    }
}

fn drop_before(p: &HookPath, out: &mut Vec<Finding>) {
    let Some(m) = p.path.iter().find(|s| s.managed) else {
        return;
    };
    for s in p
        .path
        .iter()
        .filter(|s| s.position < m.position && s.policy.as_deref() == Some("drop"))
    {
        out.push(Finding {
            kind: FindingKind::DropPolicyBefore,
            severity: Severity::Warning,
            family: Some(p.family),
            hook: Some(p.hook),
            summary: format!(
                "{} {}: {} has policy drop and runs before the managed chain {}: a packet it does not accept never reaches the jumps there",
                p.family,
                p.hook,
                s.label(),
                m.label()
            ),
            evidence: vec![
                format!("position {}: {}", s.position, described(s)),
                format!("position {}: {}", m.position, described(m)),
            ],
            what_to_do: format!(
                "Make sure {} (owner: {}) accepts the traffic the managed jumps are for, or that dropping it before them is intended.",
                s.label(),
                s.owner
            ),
            key: format!("drop_policy_before:{}:{}:{}", p.family, p.hook, s.label()),
        });
    }
}

fn nat_at_nat_hook(p: &HookPath, out: &mut Vec<Finding>) {
    let Some(h) = &p.nat_hook else { return };
    let core = h.priority;
    for s in p.path.iter().filter(|s| s.nat && s.priority != core) {
        let passed: Vec<&Step> = p
            .path
            .iter()
            .filter(|t| !t.nat && t.backend != "kernel")
            .filter(|t| {
                if s.priority < core {
                    s.priority <= t.runs_at && t.runs_at < core
                } else {
                    core < t.runs_at && t.runs_at <= s.priority
                }
            })
            .collect();
        if passed.is_empty() {
            continue;
        }
        let (side, other) = if s.priority < core {
            ("after", "before")
        } else {
            ("before", "after")
        };
        let mut evidence = vec![format!("position {}: {}", s.position, described(s))];
        evidence.extend(
            passed
                .iter()
                .map(|t| format!("position {}: {}", t.position, described(t))),
        );
        out.push(Finding {
            kind: FindingKind::NatRunsAtNatHook,
            severity: Severity::Info,
            family: Some(p.family),
            hook: Some(p.hook),
            summary: format!(
                "{} {}: the nat chain {} declares priority {} ({}) but runs inside the NAT hook at {} ({}): {side} {}, not {other}",
                p.family,
                p.hook,
                s.label(),
                s.priority_name,
                s.priority,
                h.priority_name,
                core,
                passed.iter().map(|t| t.label()).collect::<Vec<_>>().join(", ")
            ),
            evidence,
            what_to_do: "A nat chain's priority only orders it among the nat chains; if it must run before (or after) those chains, it cannot be a nat chain — do the work in a filter chain at the priority needed.".into(),
            key: format!("nat_runs_at_nat_hook:{}:{}:{}", p.family, p.hook, s.label()),
        });
    }
}

fn mixed(ev: &Evidence, family: Family, paths: &[HookPath], out: &mut Vec<Finding>) {
    let v = ev.verdict(family);
    if v.mode != Mode::Mixed {
        return;
    }
    let mut evidence = v.evidence.clone();
    for p in paths.iter().filter(|p| p.family == family) {
        let xt: Vec<String> = p
            .path
            .iter()
            .filter(|s| s.backend == "x_tables")
            .map(Step::label)
            .collect();
        let nft: Vec<String> = p
            .path
            .iter()
            .filter(|s| s.owner == "iptables-nft")
            .map(Step::label)
            .collect();
        if !xt.is_empty() && !nft.is_empty() {
            evidence.push(format!(
                "{}: a packet runs {} and {}",
                p.hook,
                nft.join(", "),
                xt.join(", ")
            ));
        }
    }
    let hint = match v.hint {
        Some(Choice::Nft) => " — here nf_tables (iptables-nft), by kubelet's hint chain —",
        Some(Choice::Legacy) => " — here x_tables (iptables-legacy), by kubelet's hint chain —",
        None => "",
    };
    out.push(Finding {
        kind: FindingKind::MixedBackends,
        severity: Severity::Warning,
        family: Some(family),
        hook: None,
        summary: format!(
            "{family}: both iptables backends hold rules: every packet crosses iptables-nft's tables and iptables-legacy's"
        ),
        evidence,
        what_to_do: format!(
            "Use one backend: the one kubelet and the node's agents use{hint} (kubelet's KUBE-IPTABLES-HINT chain in mangle says which); move the other backend's rules over or delete them ({t}-legacy-save / {t}-nft-save show each), then delete its tables.",
            t = family.iptables()
        ),
        key: format!("mixed_backends:{family}"),
    });
}

fn targets(ev: &Evidence, managed: &Managed<'_>, out: &mut Vec<Finding>) {
    for (family, spec, backends) in managed {
        let fam = nfproto(*family);
        for &backend in backends {
            // The rules of each chain of the managed table, as this backend has it
            // (`None`: the table could not be read).
            let lookup = |name: &str| -> Option<Option<usize>> {
                if backend == "nft" {
                    Some(
                        ev.chains
                            .iter()
                            .find(|c| c.family == fam && c.table == spec.table && c.name == name)
                            .map(|c| c.rules),
                    )
                } else {
                    match ev
                        .xt
                        .iter()
                        .find(|t| t.family == *family && t.name == spec.table)
                    {
                        None => Some(None),
                        Some(t) => t
                            .chains
                            .as_ref()
                            .ok()
                            .map(|cs| cs.iter().find(|c| c.name == name).map(|c| c.rules)),
                    }
                }
            };
            for js in &spec.jumps {
                let Some(found) = lookup(&js.target) else {
                    continue;
                };
                let agent = match agent_of_target(&js.target) {
                    "unknown" => "the agent that owns it".to_string(),
                    a => a.to_string(),
                };
                let chain = format!("{family} {} {} ({backend})", spec.table, spec.chain);
                match found {
                    None => out.push(Finding {
                        kind: FindingKind::MissingTarget,
                        severity: Severity::Warning,
                        family: Some(*family),
                        hook: None,
                        summary: format!(
                            "{chain}: the jump to {} ({:?}) targets a chain that does not exist",
                            js.target, js.comment
                        ),
                        evidence: vec![format!(
                            "no chain {} in {} {} ({backend})",
                            js.target, family, spec.table
                        )],
                        what_to_do: if js.create_chain {
                            format!("apply creates it empty (create_chain = true): the jump then runs nothing until {agent} fills it — check that {agent} is running")
                        } else {
                            format!("apply refuses to write the jump (create_chain = false): create {} ({} -t {} -N {}) or let {agent} create it", js.target, family.iptables(), spec.table, js.target)
                        },
                        key: format!("missing_target:{family}:{backend}:{}:{}", spec.table, js.target),
                    }),
                    Some(0) => out.push(Finding {
                        kind: FindingKind::EmptyTarget,
                        severity: Severity::Warning,
                        family: Some(*family),
                        hook: None,
                        summary: format!(
                            "{chain}: the jump to {} ({:?}) runs a chain with no rule: packets fall through it to the next rule",
                            js.target, js.comment
                        ),
                        evidence: vec![format!(
                            "{} {} {} ({backend}) holds 0 rules",
                            family, spec.table, js.target
                        )],
                        what_to_do: format!(
                            "{agent} fills {}: check that it is running and has programmed the node; until then the jump is harmless but does nothing",
                            js.target
                        ),
                        key: format!("empty_target:{family}:{backend}:{}:{}", spec.table, js.target),
                    }),
                    Some(_) => {}
                }
            }
        }
    }
}

fn dormant(ev: &Evidence, families: &[Family], out: &mut Vec<Finding>) {
    let fams: Vec<u8> = families.iter().map(|f| nfproto(*f)).collect();
    for t in ev
        .tables
        .iter()
        .filter(|t| t.flags & TABLE_DORMANT != 0)
        .filter(|t| t.family == NFPROTO_INET || fams.contains(&t.family))
    {
        let base: Vec<String> = ev
            .chains
            .iter()
            .filter(|c| c.family == t.family && c.table == t.name)
            .filter_map(|c| {
                let b = c.base.as_ref()?;
                Some(format!(
                    "{} (type {} hook {} priority {}, {} rule(s)) is not run",
                    c.name,
                    b.chain_type,
                    Hook::from_number(b.hook)
                        .map_or_else(|| b.hook.to_string(), |h| h.name().to_string()),
                    b.priority,
                    c.rules
                ))
            })
            .collect();
        let fam = family_name(t.family);
        out.push(Finding {
            kind: FindingKind::DormantTable,
            severity: if base.is_empty() {
                Severity::Info
            } else {
                Severity::Warning
            },
            family: None,
            hook: None,
            summary: format!(
                "{fam} {}: the table is dormant: none of its base chains is hooked",
                t.name
            ),
            evidence: if base.is_empty() {
                vec!["it has no base chain".into()]
            } else {
                base
            },
            what_to_do: format!(
                "If it is meant to run, `nft add table {fam} {}` wakes it (adding a table without the dormant flag clears it); its owner ({}) made it dormant — ask it first.",
                t.name,
                table_owner(t.family, &t.name)
            ),
            key: format!("dormant_table:{fam}:{}", t.name),
        });
    }
}

fn same_target(ev: &Evidence, managed: &Managed<'_>, out: &mut Vec<Finding>) {
    let mut done: Vec<(Family, String)> = Vec::new();
    for (family, spec, backends) in managed {
        let fam = nfproto(*family);
        let mut names: Vec<&str> = spec.jumps.iter().map(|j| j.target.as_str()).collect();
        names.extend(spec.anchors());
        for name in names {
            if done.contains(&(*family, name.to_string())) {
                continue;
            }
            done.push((*family, name.to_string()));
            let mut holders: Vec<String> = ev
                .chains
                .iter()
                .filter(|c| (c.family == fam || c.family == NFPROTO_INET) && c.name == name)
                .map(|c| {
                    format!(
                        "nf_tables {} {}: chain {name} ({} rule(s), owner {})",
                        family_name(c.family),
                        c.table,
                        c.rules,
                        table_owner(c.family, &c.table)
                    )
                })
                .collect();
            for t in ev.xt.iter().filter(|t| t.family == *family) {
                if let Ok(cs) = &t.chains {
                    if let Some(c) = cs.iter().find(|c| c.name == name) {
                        holders.push(format!(
                            "x_tables {family} {}: chain {name} ({} rule(s), owner iptables-legacy)",
                            t.name, c.rules
                        ));
                    }
                }
            }
            if holders.len() < 2 {
                continue;
            }
            out.push(Finding {
                kind: FindingKind::SameTargetTwoTables,
                severity: Severity::Warning,
                family: Some(*family),
                hook: None,
                summary: format!(
                    "{family}: {name}, which the managed chain {} {} jumps to or names, exists in {} tables",
                    spec.table,
                    spec.chain,
                    holders.len()
                ),
                evidence: holders,
                what_to_do: format!(
                    "The jump in {} {} ({}) reaches only the copy in its own table; another copy runs only from its own table's base chains. Two copies usually mean two agents — or one agent that changed backend — writing the same chain: check which backend each agent writes to (kubelet's hint chain says which one is meant) and remove the stale copy.",
                    spec.table,
                    spec.chain,
                    backends.join(", ")
                ),
                key: format!("same_target_two_tables:{family}:{name}"),
            });
        }
    }
}
