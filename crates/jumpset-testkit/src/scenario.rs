//! A small reader for the iptables-restore files of `crates/jumpset/testdata/` (the Harvester
//! scenario): one `*table` section, its user chains and `-A` lines made of a comment
//! match, an addrtype match and a jump or goto. Enough for `demo` to write the broken
//! chain itself — product code runs no iptables — and for tests to compare chains.

use jumpset::snapshot::{Comment, CommentEncoding, Counters, Match, Rule, Verdict, ADDRTYPE_NAMES};

/// One `*table` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The table (`nat`).
    pub table: String,
    /// User chains declared with `:NAME - [0:0]`.
    pub chains: Vec<String>,
    /// `(chain, rule)` for every `-A` line, in order.
    pub rules: Vec<(String, Rule)>,
}

impl Scenario {
    /// The rules of one chain, in order.
    pub fn chain(&self, name: &str) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|(c, _)| c == name)
            .map(|(_, r)| r)
            .collect()
    }
}

/// Split a line into words the way iptables-restore does: double quotes group, `\`
/// escapes the next character.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push(chars.next().ok_or("a line ends with '\\'")?);
                any = true;
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err("unbalanced quote".into());
    }
    if any {
        out.push(cur);
    }
    Ok(out)
}

fn addrtype_bits(name: &str) -> Result<u16, String> {
    name.split(',')
        .map(|n| {
            ADDRTYPE_NAMES
                .iter()
                .position(|x| x.eq_ignore_ascii_case(n))
                .map(|i| 1u16 << i)
                .ok_or_else(|| format!("unknown address type {n:?}"))
        })
        .try_fold(0u16, |acc, b| b.map(|b| acc | b))
}

fn parse_rule(w: &[String]) -> Result<Rule, String> {
    let mut rule = Rule {
        handle: 0,
        comment: None,
        matches: Vec::new(),
        counters: Some(Counters::default()),
        verdict: Verdict::None,
    };
    let mut i = 0;
    let arg = |i: usize| {
        w.get(i)
            .cloned()
            .ok_or_else(|| format!("{} needs a value", w[i - 1]))
    };
    while i < w.len() {
        match (w[i].as_str(), w.get(i + 1).map(String::as_str)) {
            ("-m", Some("comment")) if w.get(i + 2).map(String::as_str) == Some("--comment") => {
                rule.comment = Some(Comment {
                    bytes: arg(i + 3)?.into_bytes(),
                    encoding: CommentEncoding::Xt,
                });
                i += 4;
            }
            ("-m", Some("addrtype")) => {
                let (mut source, mut dest, mut flags) = (0, 0, 0);
                i += 2;
                loop {
                    let invert = w.get(i).map(String::as_str) == Some("!");
                    let at = i + usize::from(invert);
                    match w.get(at).map(String::as_str) {
                        Some("--src-type") => {
                            source = addrtype_bits(&arg(at + 1)?)?;
                            flags |= u32::from(invert);
                        }
                        Some("--dst-type") => {
                            dest = addrtype_bits(&arg(at + 1)?)?;
                            flags |= u32::from(invert) << 1;
                        }
                        _ => break,
                    }
                    i = at + 2;
                }
                rule.matches.push(Match::AddrType {
                    source,
                    dest,
                    flags,
                });
            }
            ("-j", Some(t)) => {
                rule.verdict = match t {
                    "ACCEPT" => Verdict::Accept,
                    "DROP" => Verdict::Drop,
                    "RETURN" => Verdict::Return,
                    t => Verdict::Jump(t.to_string()),
                };
                i += 2;
            }
            ("-g", Some(t)) => {
                rule.verdict = Verdict::Goto(t.to_string());
                i += 2;
            }
            (other, _) => return Err(format!("{other:?} is not supported in a scenario")),
        }
    }
    Ok(rule)
}

/// Parse an iptables-restore file holding one table.
pub fn parse(text: &str) -> Result<Scenario, String> {
    let mut sc = Scenario {
        table: String::new(),
        chains: Vec::new(),
        rules: Vec::new(),
    };
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            if !sc.table.is_empty() {
                return Err(at("only one table per scenario".into()));
            }
            sc.table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let w = words(decl).map_err(at)?;
            if w.get(1).map(String::as_str) == Some("-") {
                sc.chains.push(w[0].clone());
            }
        } else {
            let w = words(line).map_err(at)?;
            if w.len() < 2 || w[0] != "-A" {
                return Err(at(format!("expected -A CHAIN ..., found {line:?}")));
            }
            sc.rules
                .push((w[1].clone(), parse_rule(&w[2..]).map_err(at)?));
        }
    }
    if sc.table.is_empty() {
        return Err("no *table line".into());
    }
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_harvester_scenario() {
        let s = parse(include_str!(
            "../../jumpset/testdata/harvester-broken.rules"
        ))
        .unwrap();
        assert_eq!(s.table, "nat");
        assert_eq!(
            s.chains,
            [
                "cali-PREROUTING",
                "OVN-PREROUTING",
                "KUBE-SERVICES",
                "CNI-HOSTPORT-DNAT"
            ]
        );
        let pre = s.chain("PREROUTING");
        assert_eq!(pre.len(), 6);
        assert_eq!(
            pre[0].iptables(),
            r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#
        );
        assert_eq!(
            pre[5].iptables(),
            "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
        );
    }

    #[test]
    fn words_follow_iptables_quoting() {
        assert_eq!(
            words(r#"-A X --comment "a \"b\" c" -j Y"#).unwrap(),
            ["-A", "X", "--comment", "a \"b\" c", "-j", "Y"]
        );
        assert!(words("\"open").is_err());
        assert!(parse("*nat\n-A PREROUTING -p tcp -j X\n").is_err());
    }
}
