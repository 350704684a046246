//! The one validation every config goes through, whether it was read from the config
//! file, from JSON or built in code, with or without fragments.

use super::{
    agent_name_problem, err, At, ChainBuilder, ChainSpec, Config, ConfigBuilder, Contradiction,
    Fragment, JumpBuilder, JumpSpec, Keys, Origin, Rejected, SpecError,
};
use crate::iptables::{base_chain, chain_name_problem, BASE_CHAINS};
use crate::snapshot::{CommentEncoding, Family};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Everything must be valid.
pub(super) fn strict(mut b: ConfigBuilder) -> Result<Config, SpecError> {
    let fragments = std::mem::take(&mut b.fragments);
    let refs: Vec<&Fragment> = fragments.iter().collect();
    let chains = assemble(&b, &refs)?;
    finish(b, chains)
}

/// The main config must be valid; a fragment that is not, or that contradicts what was
/// accepted before it, is left out.
pub(super) fn lenient(mut b: ConfigBuilder) -> Result<(Config, Vec<Rejected>), SpecError> {
    let fragments = std::mem::take(&mut b.fragments);
    let mut accepted: Vec<&Fragment> = Vec::new();
    let mut rejected = Vec::new();
    let mut chains = assemble(&b, &accepted)?;
    for f in &fragments {
        accepted.push(f);
        match assemble(&b, &accepted) {
            Ok(c) => chains = c,
            Err(error) => {
                accepted.pop();
                rejected.push(Rejected {
                    agent: f.agent.clone(),
                    origin: f.origin.clone(),
                    error,
                });
            }
        }
    }
    Ok((finish(b, chains)?, rejected))
}

/// The global settings of the main config, checked; the config with `chains`.
fn finish(b: ConfigBuilder, chains: Vec<ChainSpec>) -> Result<Config, SpecError> {
    let in_main = |e: SpecError| match &b.source {
        Some(s) => e.in_source(s.clone()),
        None => e,
    };
    let mut families = Vec::new();
    match &b.families {
        None => families.push(Family::Ip),
        Some(list) => {
            if list.value.is_empty() {
                return Err(in_main(err(
                    "families",
                    list.line,
                    "must name at least one family: [\"ip\"], [\"ip6\"] or [\"ip\", \"ip6\"]",
                )));
            }
            for f in &list.value {
                if families.contains(&f.value) {
                    return Err(in_main(err(
                        "families",
                        f.line,
                        format!("{} is listed twice", f.value),
                    )));
                }
                families.push(f.value);
            }
        }
    }
    if b.daemon.resync_interval.is_zero() {
        return Err(in_main(err(
            "daemon.resync_interval",
            b.resync_line,
            "must be longer than zero",
        )));
    }
    Ok(Config {
        backend: b.backend,
        families,
        xtables_lock_timeout: b.xtables_lock_timeout.unwrap_or(Duration::from_secs(10)),
        expect_anchors: b.expect_anchors,
        chains,
        daemon: b.daemon,
    })
}

/// One declared jump, with where it was declared.
struct Entry<'a> {
    jump: &'a JumpBuilder,
    /// Its key path, e.g. `chain[0].jump[1]`.
    key: String,
    /// The file or claim it is in (`None`: the main config text).
    source: Option<String>,
    origin: Origin,
}

impl Entry<'_> {
    fn err(&self, field: &str, line: Option<usize>, message: impl Into<String>) -> SpecError {
        let key = if field.is_empty() {
            self.key.clone()
        } else {
            format!("{}.{field}", self.key)
        };
        let e = err(key, line, message);
        match &self.source {
            Some(s) => e.in_source(s.clone()),
            None => e,
        }
    }

    /// The same error as [`Entry::err`], saying it contradicts `others`' declarations (its
    /// own source left out) through `field` and `cycle`.
    fn contradiction(
        &self,
        field: &str,
        line: Option<usize>,
        message: impl Into<String>,
        others: &[&Entry<'_>],
        cycle: Vec<String>,
    ) -> SpecError {
        let mut e = self.err(field, line, message);
        let mut with: Vec<Origin> = Vec::new();
        for o in others {
            if o.origin != self.origin && !with.contains(&o.origin) {
                with.push(o.origin.clone());
            }
        }
        e.contradiction = Some(Box::new(Contradiction {
            constraint: format!("{}.{field}", self.key),
            with,
            cycle,
        }));
        e
    }

    /// How another entry's error names this one: its key, and its file when that differs.
    fn name_from(&self, other: &Entry<'_>) -> String {
        match &self.source {
            Some(s) if self.source != other.source => format!("{s}: {}", self.key),
            _ => self.key.clone(),
        }
    }
}

/// A source of chains: the main config or one fragment.
struct Source<'a> {
    keys: Keys,
    chains: &'a [ChainBuilder],
    source: Option<String>,
    origin: Origin,
    agent: Option<&'a str>,
}

fn source_name(origin: &Origin) -> Option<String> {
    match origin {
        Origin::Main => None,
        other => Some(other.to_string()),
    }
}

/// Merge the chains of the main config and of `fragments` (jumps of the same table and
/// chain into one chain, in order) and validate them.
fn assemble(b: &ConfigBuilder, fragments: &[&Fragment]) -> Result<Vec<ChainSpec>, SpecError> {
    let mut sources = vec![Source {
        keys: b.keys,
        chains: &b.chains,
        source: b.source.clone(),
        origin: Origin::Main,
        agent: None,
    }];
    for f in fragments {
        sources.push(Source {
            keys: f.keys,
            chains: &f.chains,
            source: source_name(&f.origin),
            origin: f.origin.clone(),
            agent: Some(&f.agent),
        });
    }
    let mut merged: Vec<(&str, &str, Vec<Entry<'_>>)> = Vec::new();
    for src in &sources {
        let in_src = |e: SpecError| match &src.source {
            Some(s) => e.in_source(s.clone()),
            None => e,
        };
        if let Some(agent) = src.agent {
            if let Some(p) = agent_name_problem(agent) {
                return Err(in_src(err("agent", None, p)));
            }
        }
        let mut here: Vec<(&str, &str)> = Vec::new();
        for (ci, rc) in src.chains.iter().enumerate() {
            let key = format!("{}[{ci}]", src.keys.chain());
            let (table, chain) = check_chain(&key, src.keys, rc).map_err(in_src)?;
            if here.contains(&(table, chain)) {
                return Err(in_src(err(
                    format!("{key}.chain"),
                    rc.chain.line,
                    format!(
                        "{table} {chain} is declared twice; put all its jumps under one {}",
                        src.keys.chain()
                    ),
                )));
            }
            here.push((table, chain));
            let entries = rc.jumps.iter().enumerate().map(|(ji, j)| Entry {
                jump: j,
                key: format!("{key}.{}[{ji}]", src.keys.jump()),
                source: src.source.clone(),
                origin: src.origin.clone(),
            });
            match merged
                .iter_mut()
                .find(|(t, c, _)| *t == table && *c == chain)
            {
                Some((_, _, list)) => list.extend(entries),
                None => merged.push((table, chain, entries.collect())),
            }
        }
    }
    merged
        .into_iter()
        .map(|(table, chain, entries)| check_jumps(table, chain, &entries, b.comment_encoding))
        .collect()
}

/// The table and chain of a declared chain, checked.
fn check_chain<'a>(
    key: &str,
    keys: Keys,
    rc: &'a ChainBuilder,
) -> Result<(&'a str, &'a str), SpecError> {
    let table = rc.table.value.as_str();
    let chain = rc.chain.value.as_str();
    let Some((_, builtins)) = BASE_CHAINS.iter().find(|(t, _)| *t == table) else {
        return Err(err(
            format!("{key}.table"),
            rc.table.line,
            format!("unknown table {table:?}; use nat, filter, mangle or raw"),
        ));
    };
    if base_chain(table, chain).is_none() {
        let names: Vec<&str> = builtins.iter().map(|c| c.name).collect();
        return Err(err(
            format!("{key}.chain"),
            rc.chain.line,
            format!(
                "{chain:?} is not a built-in chain of the {table} table; use one of {}",
                names.join(", ")
            ),
        ));
    }
    if rc.jumps.is_empty() {
        return Err(err(
            key,
            rc.chain.line,
            format!("declares no {}: nothing to manage", keys.jump()),
        ));
    }
    Ok((table, chain))
}

/// Every jump of one (merged) chain, checked alone and against the others.
fn check_jumps(
    table: &str,
    chain: &str,
    entries: &[Entry<'_>],
    default_encoding: CommentEncoding,
) -> Result<ChainSpec, SpecError> {
    let mut jumps: Vec<JumpSpec> = Vec::new();
    let mut comments: BTreeMap<&str, usize> = BTreeMap::new();
    let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let rj = e.jump;
        let target = rj.target.value.as_str();
        if let Some(p) = chain_name_problem(target) {
            return Err(e.err("target", rj.target.line, p));
        }
        if let Some(prev) = targets.insert(target, i) {
            return Err(e.contradiction(
                "target",
                rj.target.line,
                format!(
                    "{} already jumps to {target}; one jump per target",
                    entries[prev].name_from(e)
                ),
                &[&entries[prev]],
                Vec::new(),
            ));
        }
        let encoding = rj.encoding.unwrap_or(default_encoding);
        let comment = rj.comment.value.as_str();
        let cline = rj.comment.line;
        if comment.is_empty() {
            return Err(e.err(
                "comment",
                cline,
                "the comment is the jump's identity and cannot be empty",
            ));
        }
        if comment.len() > encoding.max_len() {
            return Err(e.err(
                "comment",
                cline,
                format!(
                    "is {} bytes; the {} encoding holds at most {}",
                    comment.len(),
                    encoding.name(),
                    encoding.max_len()
                ),
            ));
        }
        if comment.contains('\0') {
            return Err(e.err("comment", cline, "cannot hold a NUL character"));
        }
        // iptables-save prints a comment as it is: a line break (or another control
        // character) would break the save output every agent parses line by line, and
        // iptables-restore would refuse it. A tab is quoted and round-trips.
        if let Some(c) = comment.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(e.err(
                "comment",
                cline,
                format!(
                    "cannot hold the control character {c:?}: iptables-save would print it raw and iptables-restore could not read the table back"
                ),
            ));
        }
        if let Some(prev) = comments.insert(comment, i) {
            return Err(e.contradiction(
                "comment",
                cline,
                format!(
                    "{} has the same comment; each owned jump needs its own",
                    entries[prev].name_from(e)
                ),
                &[&entries[prev]],
                Vec::new(),
            ));
        }
        let names = |list: &[At<String>], what: &str| -> Result<Vec<String>, SpecError> {
            let mut out: Vec<String> = Vec::new();
            for n in list {
                let name = &n.value;
                if let Some(p) = chain_name_problem(name) {
                    return Err(e.err(what, n.line, p));
                }
                if name == target {
                    return Err(e.err(
                        what,
                        n.line,
                        format!("the jump to {target} cannot be placed {what} itself"),
                    ));
                }
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Ok(out)
        };
        let after = names(&rj.after, "after")?;
        let before = names(&rj.before, "before")?;
        if let Some(both) = after.iter().find(|a| before.contains(a)) {
            return Err(e.err(
                "before",
                rj.before.first().and_then(|b| b.line),
                format!("{both} is both in after and in before"),
            ));
        }
        jumps.push(JumpSpec {
            target: target.to_string(),
            comment: comment.to_string(),
            after,
            before,
            create_chain: rj.create_chain.unwrap_or(true),
            encoding,
            origin: e.origin.clone(),
        });
    }
    if let Some(cycle) = find_cycle(&jumps) {
        // Said against the last declaration taking part in it (the one that closed it),
        // naming where each owned jump of the cycle was declared.
        let involved: Vec<usize> = (0..jumps.len())
            .filter(|&i| cycle.iter().any(|n| *n == jumps[i].target))
            .collect();
        let last = involved.iter().copied().max().unwrap_or(0);
        let mut whose: Vec<String> = Vec::new();
        for &i in &involved {
            let w = match &entries[i].source {
                Some(s) => format!("{} ({s})", jumps[i].target),
                None => format!("{} ({})", jumps[i].target, entries[i].key),
            };
            if !whose.contains(&w) {
                whose.push(w);
            }
        }
        let e = &entries[last];
        // Which of its constraints closes the cycle: an `after` (an edge into its target)
        // or a `before` (an edge out of it).
        let target = jumps[last].target.as_str();
        let in_cycle = |a: &str, b: &str| cycle.windows(2).any(|w| w[0] == a && w[1] == b);
        let field = if jumps[last].after.iter().any(|a| in_cycle(a, target)) {
            "after"
        } else {
            "before"
        };
        let mut error = e.err(
            "",
            e.jump.target.line,
            format!(
                "the after/before constraints of {table} {chain} form a cycle: {} (each must come before the next); declared by {}",
                cycle.join(" -> "),
                whose.join(", ")
            ),
        );
        let others: Vec<&Entry<'_>> = involved.iter().map(|&i| &entries[i]).collect();
        let described = e.contradiction(field, None, "", &others, cycle);
        error.contradiction = described.contradiction;
        return Err(error);
    }
    Ok(ChainSpec {
        table: table.to_string(),
        chain: chain.to_string(),
        jumps,
    })
}

/// The ordering edges the jumps declare, as (earlier target, later target) chain names.
fn edges(jumps: &[JumpSpec]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    for j in jumps {
        for a in &j.after {
            out.push((a.as_str(), j.target.as_str()));
        }
        for b in &j.before {
            out.push((j.target.as_str(), b.as_str()));
        }
    }
    out
}

/// A cycle among the declared constraints, as a list of chain names, if there is one.
fn find_cycle(jumps: &[JumpSpec]) -> Option<Vec<String>> {
    let mut succ: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (a, b) in edges(jumps) {
        succ.entry(a).or_default().insert(b);
        succ.entry(b).or_default();
    }
    // Iterative DFS with colours; on a back edge, unwind the path to print the cycle.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
    for &start in succ.keys() {
        if state.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> =
            vec![(start, succ[start].iter().copied().collect())];
        state.insert(start, 1);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match state.get(next) {
                    Some(1) => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(next.to_string());
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        state.insert(next, 1);
                        stack.push((next, succ[next].iter().copied().collect()));
                    }
                },
                None => {
                    state.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}
