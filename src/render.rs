//! The text the commands print (their `--json` is the reports' serde form).

use jumpset::detect::HostVerdict;
use jumpset::report::{conflict_lines, ChainApply, ChainCheck, ChainPlan, ChainStatus};
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
