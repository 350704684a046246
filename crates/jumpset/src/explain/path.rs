//! The order of one hook, pure: from the kernel's hook dump when there is one, else from
//! the priorities.
//!
//! The kernel keeps, per family and hook, an array of hook functions sorted by priority
//! (`nf_hook_entries_grow`, net/netfilter/core.c): a new one is inserted before the first
//! with a priority greater than *or equal to* its own, so at equal priority the one
//! registered last runs first. An nf_tables base chain is registered when it is created
//! (or its table woken from dormancy); an `inet` chain in the ip and ip6 arrays both; an
//! x_tables table when the namespace instantiates it. A `nat` chain is not in the array:
//! it is registered with the NAT core (`nf_nat_register_fn`, nf_nat_core.c), which holds
//! its own array sorted the same way and registers one hook per hook number at the NAT
//! priority (−100 on prerouting and output, 100 on input and postrouting); that hook runs
//! the array for a connection's first packet only (`nf_nat_inet_fn`: not once the
//! connection has its mapping), until a chain maps it.
//!
//! Without a hook dump, registration order is not observable: table and chain handles
//! only order creations within a table and tables among themselves, and a chain added to
//! an old table, a table woken from dormancy or an x_tables table instantiated late break
//! any inference. So ties are flagged and shown in a guessed order — newest nf_tables
//! table (then chain) first, x_tables tables and the NAT hook after them — marked
//! `order_known: false`.

use super::facts::{
    is_nat_core, is_xt_nat, is_xt_table, priority_name, xt_priority, xt_table_at, Hook,
    NFPROTO_INET, TABLE_DORMANT,
};
use super::owner::chain_owner;
use super::{Evidence, HookPath, NatHook, NftChain, OrderSource, Step, XtTable};
use crate::backend::legacy::blob::ChainSummary;
use crate::backend::nft::codec::{HookDesc, HookInfo};
use crate::backend::nft::{family_name, nfproto};
use crate::snapshot::{Family, Verdict};
use std::cmp::Reverse;

/// A managed chain to mark: (family, backend `nft`/`legacy`, table, chain).
pub(super) type Mark<'a> = (Family, &'static str, &'a str, &'a str);

/// Something on the hook, before it becomes a [`Step`].
#[derive(Debug, Clone)]
enum Item<'e> {
    Nft(&'e NftChain),
    Xt {
        table: &'e XtTable,
        chain: Option<&'e ChainSummary>,
    },
    NatCore(Option<String>),
    Kernel {
        function: String,
        priority: i32,
    },
}

/// An item with where it runs and a guess of its registration age (bigger: newer;
/// `None`: older than any nf_tables chain).
#[derive(Debug, Clone)]
struct Placed<'e> {
    item: Item<'e>,
    runs_at: i32,
    age: Option<(u64, u64)>,
}

/// The hooks an x_tables table has (its built-in chains), for a table that could not be
/// read: fixed per table by x_tables.
fn xt_hooks(table: &str) -> &'static [u32] {
    match table {
        "nat" => &[0, 1, 3, 4],
        "filter" | "security" => &[1, 2, 3],
        "mangle" => &[0, 1, 2, 3, 4],
        "raw" => &[0, 3],
        _ => &[],
    }
}

fn policy_name(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        other => other.iptables(),
    }
}

/// The path of `family` through `hook`.
pub(super) fn hook_path(
    ev: &Evidence,
    family: Family,
    hook: Hook,
    dump: Option<&Vec<HookInfo>>,
    marks: &[Mark<'_>],
) -> HookPath {
    let fam = nfproto(family);
    let mut notes = Vec::new();
    let mut dormant = Vec::new();
    let age = |c: &NftChain| {
        ev.table(c.family, &c.table)
            .map(|t| (t.handle, c.handle))
            .unwrap_or((0, c.handle))
    };
    // nf_tables base chains hooked here: the family's and inet's, not dormant.
    let mut nft: Vec<&NftChain> = Vec::new();
    for c in &ev.chains {
        let Some(b) = &c.base else { continue };
        if b.hook != hook.number() || !(c.family == fam || c.family == NFPROTO_INET) {
            continue;
        }
        if ev
            .table(c.family, &c.table)
            .is_some_and(|t| t.flags & TABLE_DORMANT != 0)
        {
            dormant.push(format!("{} {} {}", family_name(c.family), c.table, c.name));
            continue;
        }
        nft.push(c);
    }
    // x_tables tables with a built-in chain on this hook.
    let mut xt: Vec<Item<'_>> = Vec::new();
    for t in ev.xt.iter().filter(|t| t.family == family) {
        match &t.chains {
            Ok(chains) => {
                if let Some(c) = chains.iter().find(|c| c.hook == Some(hook.number())) {
                    xt.push(Item::Xt {
                        table: t,
                        chain: Some(c),
                    });
                }
            }
            Err(why) => {
                if xt_hooks(&t.name).contains(&hook.number()) {
                    xt.push(Item::Xt {
                        table: t,
                        chain: None,
                    });
                    notes.push(format!(
                        "x_tables {family} {}: its rules could not be read ({why})",
                        t.name
                    ));
                }
            }
        }
    }
    let is_nat = |i: &Item<'_>| match i {
        Item::Nft(c) => c.base.as_ref().is_some_and(|b| b.chain_type == "nat"),
        Item::Xt { table, .. } => table.name == "nat",
        _ => false,
    };
    let own_priority = |i: &Item<'_>| match i {
        Item::Nft(c) => c.base.as_ref().map_or(0, |b| b.priority),
        Item::Xt { table, .. } => xt_priority(&table.name)
            .or(hook.nat_priority())
            .unwrap_or(0),
        Item::NatCore(_) => hook.nat_priority().unwrap_or(0),
        Item::Kernel { priority, .. } => *priority,
    };
    let all: Vec<Item<'_>> = nft.iter().map(|c| Item::Nft(c)).chain(xt).collect();
    let (nat_items, plain): (Vec<Item<'_>>, Vec<Item<'_>>) = all.into_iter().partition(is_nat);
    let age_of = |i: &Item<'_>| match i {
        Item::Nft(c) => Some(age(c)),
        _ => None,
    };
    // The NAT core's own array: by own priority, ties newest first.
    let mut nat: Vec<Placed<'_>> = nat_items
        .into_iter()
        .map(|i| Placed {
            runs_at: own_priority(&i),
            age: age_of(&i),
            item: i,
        })
        .collect();
    nat.sort_by_key(|p| (p.runs_at, Reverse(p.age)));
    // The NAT hook was registered with the first nat chain: as old as the oldest.
    let core_age = if nat.iter().any(|p| p.age.is_none()) {
        None
    } else {
        nat.iter().filter_map(|p| p.age).min()
    };

    let (order, mut top, nat_from_dump) = match dump {
        Some(entries) => {
            let (top, expanded) = from_dump(ev, family, hook, entries, &nft, &mut notes);
            (OrderSource::HookDump, top, expanded)
        }
        None => {
            let mut top: Vec<Placed<'_>> = plain
                .into_iter()
                .map(|i| Placed {
                    runs_at: own_priority(&i),
                    age: age_of(&i),
                    item: i,
                })
                .collect();
            if !nat.is_empty() {
                match hook.nat_priority() {
                    Some(p) => top.push(Placed {
                        item: Item::NatCore(None),
                        runs_at: p,
                        age: core_age,
                    }),
                    None => notes.push(format!(
                        "nat chains on {hook}, where the NAT core has no hook: never run"
                    )),
                }
            }
            top.sort_by_key(|p| (p.runs_at, Reverse(p.age)));
            (OrderSource::Derived, top, None)
        }
    };
    // A dump that lists the nat chains itself (Linux 7.1+) gives their order too.
    let nat_order = if nat_from_dump.is_some() {
        OrderSource::HookDump
    } else {
        OrderSource::Derived
    };
    let nat: Vec<Placed<'_>> = match nat_from_dump {
        Some(listed) => listed,
        None => nat,
    };

    // Build the steps.
    let mark = |backend: &str, table: &str, chain: &str| {
        marks
            .iter()
            .any(|m| m.0 == family && m.1 == backend && m.2 == table && m.3 == chain)
    };
    let mut path = Vec::new();
    let mut nat_hook = None;
    for p in top.iter_mut() {
        if let Item::NatCore(function) = &p.item {
            nat_hook = Some(NatHook {
                priority: p.runs_at,
                priority_name: priority_name(hook, p.runs_at),
                function: function.clone(),
                order: nat_order,
                tied_with: Vec::new(),
            });
            for n in &nat {
                path.push(step(
                    family,
                    hook,
                    &n.item,
                    own_priority(&n.item),
                    p.runs_at,
                    true,
                    &mark,
                ));
            }
        } else if matches!(p.item, Item::Nft(_) | Item::Xt { .. }) && is_nat(&p.item) {
            // A nat chain the dump lists on its own (Linux 7.1+): at the NAT hook's
            // priority, which the dump gives.
            path.push(step(
                family,
                hook,
                &p.item,
                own_priority(&p.item),
                p.runs_at,
                true,
                &mark,
            ));
        } else {
            path.push(step(
                family,
                hook,
                &p.item,
                own_priority(&p.item),
                p.runs_at,
                false,
                &mark,
            ));
        }
    }
    for (i, s) in path.iter_mut().enumerate() {
        s.position = i + 1;
    }

    // Ties: at the top level by where they run (the NAT hook counting as one), among the
    // nat chains by their own priority.
    let known = order == OrderSource::HookDump;
    let nat_known = nat_order == OrderSource::HookDump;
    let labels: Vec<String> = path.iter().map(Step::label).collect();
    let nat_label = |h: &NatHook| format!("the NAT hook ({})", h.priority_name);
    for i in 0..path.len() {
        let (me, mine_nat) = (path[i].runs_at, path[i].nat);
        let mut tied: Vec<String> = Vec::new();
        for j in 0..path.len() {
            if i == j {
                continue;
            }
            let same = if mine_nat && path[j].nat {
                path[i].priority == path[j].priority
            } else if !mine_nat && !path[j].nat {
                me == path[j].runs_at
            } else {
                false
            };
            if same {
                tied.push(labels[j].clone());
            }
        }
        if !mine_nat {
            if let Some(h) = nat_hook.as_ref().filter(|h| h.priority == me) {
                tied.push(nat_label(h));
            }
        }
        path[i].order_known = tied.is_empty() || if mine_nat { nat_known } else { known };
        path[i].tied_with = tied;
    }
    if let Some(h) = nat_hook.as_mut() {
        h.tied_with = path
            .iter()
            .filter(|s| !s.nat && s.runs_at == h.priority)
            .map(Step::label)
            .collect();
    }

    if known && !nat_known && path.iter().any(|s| s.nat && !s.order_known) {
        notes.push(
            "the hook dump shows the NAT hook, not the nat chains behind it (kernels before              \"nfnetlink_hook: Dump nat type chains\"): their order is derived from their              priorities, and at equal priority — registration order, the one registered last              first — guessed (newest nf_tables table first)"
                .to_string(),
        );
    }
    if !known && path.iter().any(|s| !s.order_known) {
        notes.push(
            "order derived from the priorities (this kernel has no hook dump: nfnetlink_hook, \
             Linux 5.14+ with CONFIG_NETFILTER_NETLINK_HOOK); chains at equal priority run in \
             registration order — the one registered last runs first — which nothing here \
             shows: their order is a guess (newest nf_tables table first)"
                .to_string(),
        );
    } else if !known && !path.is_empty() {
        notes.push(
            "order derived from the priorities (this kernel has no hook dump: nfnetlink_hook, \
             Linux 5.14+ with CONFIG_NETFILTER_NETLINK_HOOK); no two chains share a priority, \
             so it is the kernel's order"
                .to_string(),
        );
    }
    if let Some(h) = &nat_hook {
        notes.push(format!(
            "the nat chains are not hooked at their own priority: the NAT core runs them from \
             its hook at {} ({}), in their priority order among themselves, for a connection's \
             first packet only (and only while conntrack is on in the namespace); the first \
             one that maps the connection (dnat, snat, masquerade, redirect) ends the walk",
            h.priority, h.priority_name
        ));
    }
    HookPath {
        family,
        hook,
        order,
        path,
        nat_hook,
        dormant,
        notes,
    }
}

/// The order the hook dump gives: each entry as an item, and — when the dump lists the
/// nat chains itself (Linux 7.1+: entries of nat-type chains at the NAT hook's priority)
/// — those, in its order. Entries that name the NAT core stand for the NAT hook, whose
/// chains are then ordered by priority.
fn from_dump<'e>(
    ev: &'e Evidence,
    family: Family,
    hook: Hook,
    entries: &[HookInfo],
    nft: &[&'e NftChain],
    notes: &mut Vec<String>,
) -> (Vec<Placed<'e>>, Option<Vec<Placed<'e>>>) {
    let mut top = Vec::new();
    let mut listed_nat: Vec<Placed<'e>> = Vec::new();
    let mut seen: Vec<&NftChain> = Vec::new();
    for h in entries {
        let function = h.function.clone().unwrap_or_else(|| "?".into());
        let item = match &h.desc {
            Some(HookDesc::Chain {
                table,
                family: f,
                chain,
            }) => match ev
                .chains
                .iter()
                .find(|c| c.family == *f && &c.table == table && &c.name == chain)
            {
                Some(c) => {
                    seen.push(c);
                    if c.base.as_ref().is_some_and(|b| b.chain_type == "nat") {
                        listed_nat.push(Placed {
                            item: Item::Nft(c),
                            runs_at: h.priority,
                            age: None,
                        });
                        continue;
                    }
                    Item::Nft(c)
                }
                None => Item::Kernel {
                    function: format!(
                        "nf_tables {} {table} {chain} (not in the chain dump)",
                        family_name(*f)
                    ),
                    priority: h.priority,
                },
            },
            Some(HookDesc::Flowtable {
                table,
                family,
                name,
            }) => Item::Kernel {
                function: format!("flowtable {} {table} {name}", family_name(*family)),
                priority: h.priority,
            },
            Some(HookDesc::Bpf { id }) => Item::Kernel {
                function: match id {
                    Some(id) => format!("bpf program {id}"),
                    None => "bpf program".into(),
                },
                priority: h.priority,
            },
            Some(HookDesc::Other(kind)) => Item::Kernel {
                function: format!("{function} (hook type {kind})"),
                priority: h.priority,
            },
            None if is_nat_core(&function) => Item::NatCore(Some(function)),
            // iptable_nat's chain as the NAT core runs it: `iptable_nat_do_chain`, or
            // `ipt_do_table` itself (newer kernels) at the NAT hook's priority, where no
            // other x_tables table registers.
            None if is_xt_nat(&function)
                || (is_xt_table(&function) && Some(h.priority) == hook.nat_priority()) =>
            {
                match ev.xt.iter().find(|t| t.family == family && t.name == "nat") {
                    Some(t) => {
                        listed_nat.push(Placed {
                            item: Item::Xt {
                                table: t,
                                chain: xt_chain(t, h.hooknum),
                            },
                            runs_at: h.priority,
                            age: None,
                        });
                        continue;
                    }
                    None => Item::Kernel {
                        function,
                        priority: h.priority,
                    },
                }
            }
            None if is_xt_table(&function) => {
                match xt_table_at(h.priority)
                    .and_then(|name| ev.xt.iter().find(|t| t.family == family && t.name == name))
                {
                    Some(t) => Item::Xt {
                        table: t,
                        chain: xt_chain(t, h.hooknum),
                    },
                    None => Item::Kernel {
                        function,
                        priority: h.priority,
                    },
                }
            }
            None => Item::Kernel {
                function: match &h.module {
                    Some(m) => format!("{function} [{m}]"),
                    None => function,
                },
                priority: h.priority,
            },
        };
        top.push(Placed {
            item,
            runs_at: h.priority,
            age: None,
        });
    }
    for c in nft {
        let nat = c.base.as_ref().is_some_and(|b| b.chain_type == "nat");
        if !nat && !seen.iter().any(|s| std::ptr::eq(*s, *c)) {
            notes.push(format!(
                "{} {} {} is a base chain on this hook but not in the hook dump (created or deleted between the two reads?)",
                family_name(c.family),
                c.table,
                c.name
            ));
        }
    }
    let expanded = if listed_nat.is_empty() {
        None
    } else {
        // The dump's entries for the nat chains replace the NAT hook: put one back where
        // the first of them stood, holding them in the dump's order.
        let at = listed_nat[0].runs_at;
        let pos = top.iter().position(|p| p.runs_at > at).unwrap_or(top.len());
        top.insert(
            pos,
            Placed {
                item: Item::NatCore(None),
                runs_at: at,
                age: None,
            },
        );
        Some(listed_nat)
    };
    (top, expanded)
}

fn xt_chain(t: &XtTable, hook: u32) -> Option<&ChainSummary> {
    t.chains
        .as_ref()
        .ok()
        .and_then(|cs| cs.iter().find(|c| c.hook == Some(hook)))
}

#[allow(clippy::too_many_arguments)]
fn step(
    family: Family,
    hook: Hook,
    item: &Item<'_>,
    priority: i32,
    runs_at: i32,
    nat: bool,
    mark: &dyn Fn(&str, &str, &str) -> bool,
) -> Step {
    let base = Step {
        position: 0,
        backend: "kernel",
        family: family.name().into(),
        table: String::new(),
        chain: String::new(),
        chain_type: None,
        priority,
        priority_name: priority_name(hook, priority),
        runs_at,
        nat,
        policy: None,
        rules: None,
        owner: "kernel",
        managed: false,
        tied_with: Vec::new(),
        order_known: true,
    };
    match item {
        Item::Nft(c) => {
            let b = c.base.as_ref();
            let chain_type = b.map(|b| b.chain_type.clone()).unwrap_or_default();
            Step {
                backend: "nf_tables",
                family: family_name(c.family),
                table: c.table.clone(),
                chain: c.name.clone(),
                policy: b.and_then(|b| b.policy).map(|p| match p {
                    0 => "drop".to_string(),
                    1 => "accept".to_string(),
                    n => format!("verdict {n}"),
                }),
                rules: Some(c.rules),
                owner: chain_owner(
                    c.family,
                    &c.table,
                    &c.name,
                    hook.number(),
                    priority,
                    &chain_type,
                ),
                managed: c.family == nfproto(family) && mark("nft", &c.table, &c.name),
                chain_type: Some(chain_type),
                ..base
            }
        }
        Item::Xt { table, chain } => {
            let name = chain.map(|c| c.name.clone()).unwrap_or_else(|| {
                crate::backend::legacy::blob::HOOK_CHAINS[hook.number() as usize].to_string()
            });
            let chain_type = match (table.name.as_str(), hook) {
                ("nat", _) => "nat",
                ("mangle", Hook::Output) => "route",
                _ => "filter",
            };
            Step {
                backend: "x_tables",
                table: table.name.clone(),
                managed: mark("legacy", &table.name, &name),
                chain: name,
                chain_type: Some(chain_type.into()),
                policy: chain.and_then(|c| c.policy.as_ref()).map(policy_name),
                rules: chain.map(|c| c.rules),
                owner: "iptables-legacy",
                ..base
            }
        }
        Item::NatCore(f) => Step {
            chain: f.clone().unwrap_or_else(|| "nat".into()),
            ..base
        },
        Item::Kernel { function, .. } => Step {
            chain: function.clone(),
            ..base
        },
    }
}
