//! The text the commands print (their `--json` is the reports' serde form).

use jumpset::detect::HostVerdict;
use jumpset::explain::facts::priority_name;
use jumpset::explain::{Explanation, OrderSource};
use jumpset::report::{
    conflict_lines, reason_lines, ChainApply, ChainCheck, ChainPlan, ChainStatus,
};
use jumpset::report::{Report, RuleRole};

/// The text of every entry of `report`, an error line for each chain that failed.
pub fn each<T>(report: &Report<T>, text: impl Fn(&T) -> String) -> String {
    let mut out = String::new();
    for c in &report.chains {
        match &c.outcome {
            Ok(v) => out.push_str(&text(v)),
            Err(e) => out.push_str(&format!(
                "{} {} {}: error: {e}\n",
                c.family, c.table, c.chain
            )),
        }
    }
    out
}

/// `status` as a table.
pub fn status(s: &ChainStatus) -> String {
    let mut out = format!(
        "{} {} {} (generation {}): {}\n",
        s.family,
        s.table,
        s.chain,
        s.generation,
        if !s.chain_exists {
            "chain does not exist yet"
        } else if s.in_order {
            "in order"
        } else {
            "drift"
        }
    );
    out.push_str(&format!(
        "  {:>3}  {:>6}  {:<10}  {:<9}  rule\n",
        "pos", "handle", "owner", "state"
    ));
    for r in &s.rules {
        let state = match r.role {
            RuleRole::Owned => "in place",
            RuleRole::Foreign => "",
            other => other.name(),
        };
        out.push_str(&format!(
            "  {:>3}  {:>6}  {:<10}  {:<9}  {}\n",
            r.position, r.handle, r.owner, state, r.rule
        ));
    }
    for m in &s.missing {
        let state = if m.copies == 0 {
            "missing".to_string()
        } else {
            format!("{} copy(ies), none in a valid place", m.copies)
        };
        out.push_str(&format!("  {state}: {}\n", m.rule));
    }
    for c in conflict_lines(&s.conflicts) {
        out.push_str(&format!("  {c}\n"));
    }
    for a in &s.anchors {
        let at: Vec<String> = a.positions.iter().map(|p| p.to_string()).collect();
        out.push_str(&format!(
            "  anchor {} ({}): {}\n",
            a.target,
            a.owner,
            if a.present {
                format!("present at {}", at.join(", "))
            } else {
                "absent".to_string()
            }
        ));
    }
    out
}

/// `check`: one line per chain and family.
pub fn check(c: &ChainCheck) -> String {
    format!(
        "{} {} {}: {}\n",
        c.plan.family,
        c.plan.table,
        c.plan.chain,
        c.summary()
    )
}

/// `plan`: a heading, then the iptables-style lines and the conflicts as comments.
pub fn plan(p: &ChainPlan) -> String {
    let mut text = format!(
        "# {} {} {}: {}\n",
        p.family,
        p.table,
        p.chain,
        match p.ops.len() {
            0 => "nothing to do".to_string(),
            n => format!("{n} change(s), one transaction"),
        }
    );
    for l in p.lines() {
        text.push_str(&l);
        text.push('\n');
    }
    for c in conflict_lines(&p.conflicts) {
        text.push_str(&format!("# {c}\n"));
    }
    for r in p.reason_lines() {
        text.push_str(&format!("# why: {r}\n"));
    }
    text
}

/// `apply` / `cleanup`: what was committed, in which generations.
pub fn apply(a: &ChainApply) -> String {
    let p = &a.plan;
    let mut text = format!("{} {} {}: ", p.family, p.table, p.chain);
    if a.committed {
        text.push_str(&format!(
            "{} change(s) committed in one transaction (generation {} -> {}{})\n",
            p.ops.len(),
            a.generation_before,
            a.generation_after,
            match a.retries {
                0 => String::new(),
                n => format!(", re-planned {n} time(s) after concurrent writes"),
            }
        ));
        for l in p.lines() {
            text.push_str(&format!("  {l}\n"));
        }
    } else {
        text.push_str("nothing to do\n");
    }
    for c in conflict_lines(&p.conflicts) {
        text.push_str(&format!("  {c}\n"));
    }
    text
}

/// `detect`: the mode, the backend auto would use, per family, and the evidence.
pub fn detect(host: &HostVerdict) -> String {
    let mut text = format!(
        "mode: {}\nbackend for --backend auto: {}\n",
        host.mode.name(),
        host.backend
            .map(|b| b.name())
            .unwrap_or("none (jumpset will not choose)")
    );
    for (family, v) in &host.families {
        text.push_str(&format!(
            "{family}: {}{}\n",
            v.mode.name(),
            v.backend
                .map(|b| format!(" (auto: {})", b.name()))
                .unwrap_or_default()
        ));
    }
    for e in &host.evidence {
        text.push_str(&format!("  - {e}\n"));
    }
    text
}

/// `explain`: each hook's path as a table, the findings, then each managed chain with the
/// reasons of its owned jumps.
pub fn explain(x: &Explanation) -> String {
    let mut out = String::new();
    for h in &x.hooks {
        out.push_str(&format!(
            "{} {}: {}\n",
            h.family,
            h.hook,
            match h.order {
                OrderSource::HookDump => "in the order of the kernel's hook dump",
                OrderSource::Derived =>
                    "order derived from the priorities (this kernel has no hook dump)",
            }
        ));
        if h.path.is_empty() {
            out.push_str("  no base chain: packets pass untouched\n");
        }
        // One row per step, the NAT hook as a heading over its chains.
        let mut rows: Vec<[String; 9]> = vec![[
            "#".into(),
            "runs at".into(),
            "table chain".into(),
            "type".into(),
            "priority".into(),
            "policy".into(),
            "rules".into(),
            "owner".into(),
            String::new(),
        ]];
        let mut headings: Vec<(usize, String)> = Vec::new();
        let mut in_nat = false;
        for s in &h.path {
            if s.nat && !in_nat {
                if let Some(n) = &h.nat_hook {
                    headings.push((
                        rows.len(),
                        format!(
                            "{} ({}): the NAT hook{} — its nat chains, by priority, for a connection's first packet only",
                            n.priority,
                            n.priority_name,
                            n.function.as_deref().map(|f| format!(" ({f})")).unwrap_or_default(),
                        ),
                    ));
                }
            }
            in_nat = s.nat;
            let mut flags = Vec::new();
            if s.managed {
                flags.push("managed".to_string());
            }
            if !s.tied_with.is_empty() {
                flags.push(if s.order_known {
                    "tie".to_string()
                } else {
                    "tie: order unknown".to_string()
                });
            }
            rows.push([
                s.position.to_string(),
                if s.nat {
                    "  NAT hook".to_string()
                } else {
                    format!("{} ({})", s.runs_at, priority_name(h.hook, s.runs_at))
                },
                match s.backend {
                    "nf_tables" => format!("{} {} {}", s.family, s.table, s.chain),
                    "x_tables" => format!("{} {} {} (x_tables)", s.family, s.table, s.chain),
                    _ => s.chain.clone(),
                },
                s.chain_type.clone().unwrap_or_else(|| "-".into()),
                format!("{} ({})", s.priority, s.priority_name),
                s.policy.clone().unwrap_or_else(|| "-".into()),
                s.rules.map_or("-".to_string(), |n| n.to_string()),
                s.owner.to_string(),
                flags.join(", "),
            ]);
        }
        if !h.path.is_empty() {
            let mut w = [0usize; 9];
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            for (i, r) in rows.iter().enumerate() {
                if let Some((_, text)) = headings.iter().find(|(at, _)| *at == i) {
                    out.push_str(&format!("  {:>w0$}  {text}\n", "", w0 = w[0]));
                }
                let line = format!(
                    "  {:>w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {:<w5$}  {:>w6$}  {:<w7$}  {}",
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    r[8],
                    w0 = w[0],
                    w1 = w[1],
                    w2 = w[2],
                    w3 = w[3],
                    w4 = w[4],
                    w5 = w[5],
                    w6 = w[6],
                    w7 = w[7],
                );
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        for d in &h.dormant {
            out.push_str(&format!("  dormant, never run: {d}\n"));
        }
        for n in &h.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out.push('\n');
    }
    if x.findings.is_empty() {
        out.push_str("findings: none\n");
    } else {
        out.push_str("findings:\n");
        for f in &x.findings {
            out.push_str(&format!(
                "  {} {}: {}\n",
                f.severity.name(),
                f.kind.name(),
                f.summary
            ));
            for e in &f.evidence {
                out.push_str(&format!("    - {e}\n"));
            }
            out.push_str(&format!("    what to do: {}\n", f.what_to_do));
        }
    }
    for c in &x.chains {
        out.push('\n');
        let mut s = status(&c.status);
        if let Some(first) = s.find(' ') {
            // Name the backend after the family: `ip (nft) nat PREROUTING ...`.
            s.insert_str(first, &format!(" ({})", c.backend));
        }
        out.push_str(&s);
        if !c.reasons.is_empty() {
            out.push_str(if c.status.in_order {
                "  why each owned jump stands where it does:\n"
            } else {
                "  why each owned jump stands where apply leaves it (positions in the chain as apply leaves it):\n"
            });
            for r in reason_lines(&c.reasons) {
                out.push_str(&format!("    {r}\n"));
            }
        }
    }
    out
}
