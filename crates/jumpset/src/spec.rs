//! The desired state: the TOML config of DESIGN.md, parsed strictly and validated.
//!
//! Every error names the key (`chain[0].jump[1].comment`) and, where the parser knows it,
//! the line. Unknown keys, wrong types, names iptables cannot hold and cycles among
//! `after`/`before` are all errors: a config that loads is one the planner can honour.

use crate::snapshot::{CommentEncoding, Family};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/jumpset/jumpset.toml";

/// The longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` − 1).
pub const MAX_CHAIN_NAME: usize = 28;

/// Which kernel interface to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Detect the host's mode (`jumpset detect`).
    #[default]
    Auto,
    /// nf_tables over netlink (iptables-nft hosts).
    Nft,
    /// x_tables socket options (iptables-legacy hosts).
    Legacy,
}

impl BackendChoice {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Nft => "nft",
            BackendChoice::Legacy => "legacy",
        }
    }
}

/// The validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `backend`.
    pub backend: BackendChoice,
    /// `families`, without duplicates, in the order given.
    pub families: Vec<Family>,
    /// `xtables_lock_timeout` (zero: wait forever).
    pub xtables_lock_timeout: Duration,
    /// The managed chains.
    pub chains: Vec<ChainSpec>,
    /// The `[daemon]` table.
    pub daemon: DaemonConfig,
}

/// One managed chain and the jumps jumpset owns in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// `nat`, `filter`, `mangle` or `raw`.
    pub table: String,
    /// A base chain of that table (`PREROUTING`, ...).
    pub chain: String,
    /// The owned jumps, in declaration order.
    pub jumps: Vec<JumpSpec>,
}

/// One owned jump: `-m comment --comment COMMENT -j TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpSpec {
    /// The chain it jumps to.
    pub target: String,
    /// Its identity.
    pub comment: String,
    /// Target chains of rules it must follow.
    pub after: Vec<String>,
    /// Target chains of rules it must precede.
    pub before: Vec<String>,
    /// Create the (empty) target chain when it is missing.
    pub create_chain: bool,
    /// How the comment is written.
    pub encoding: CommentEncoding,
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Full re-read period (legacy: the poll period).
    pub resync_interval: Duration,
    /// Where `/metrics` and `/healthz` are served; `None` turns both off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Remove the owned jumps on SIGTERM.
    pub cleanup_on_exit: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            resync_interval: Duration::from_secs(30),
            metrics_listen: Some(([127, 0, 0, 1], 9464).into()),
            cleanup_on_exit: false,
        }
    }
}

/// A config that cannot be used: which key, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The key path, e.g. `chain[0].jump[1].after`; empty for whole-file errors.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.line) {
            (false, Some(l)) => write!(f, "{} (line {l}): {}", self.key, self.message),
            (false, None) => write!(f, "{}: {}", self.key, self.message),
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => f.write_str(&self.message),
        }
    }
}

// ---- raw, as deserialized ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    backend: BackendChoice,
    families: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    comment_encoding: CommentEncoding,
    xtables_lock_timeout: Option<Spanned<String>>,
    #[serde(default)]
    chain: Vec<RawChain>,
    daemon: Option<RawDaemon>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    table: Spanned<String>,
    chain: Spanned<String>,
    #[serde(default)]
    jump: Vec<RawJump>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJump {
    target: Spanned<String>,
    comment: Spanned<String>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    #[serde(default)]
    before: Vec<Spanned<String>>,
    create_chain: Option<bool>,
    comment_encoding: Option<CommentEncoding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    resync_interval: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    cleanup_on_exit: Option<bool>,
}

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

/// Parse a duration: an integer with a unit `ms`, `s`, `m` or `h` (`"500ms"`, `"10s"`, `"2m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. \"500ms\", \"10s\" or \"2m\""))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. \"500ms\", \"10s\" or \"2m\""))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Maps byte offsets to 1-based line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of<T>(&self, s: &Spanned<T>) -> Option<usize> {
        let start = s.span().start.min(self.0.len());
        Some(self.0[..start].matches('\n').count() + 1)
    }
}

fn err(key: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> SpecError {
    SpecError {
        key: key.into(),
        line,
        message: message.into(),
    }
}

impl Config {
    /// Read and validate a config file. A missing or unreadable file is an error too.
    pub fn load(path: &Path) -> Result<Config, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "",
                None,
                format!("cannot read config {}: {e}", path.display()),
            )
        })?;
        Config::from_toml(&text).map_err(|mut e| {
            e.message = format!("{}: {}", path.display(), e.message);
            e
        })
    }

    /// Parse and validate config text.
    pub fn from_toml(text: &str) -> Result<Config, SpecError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            err("", line, e.message().trim_end().to_string())
        })?;
        let lines = Lines(text);

        let mut families = Vec::new();
        match &raw.families {
            None => families.push(Family::Ip),
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(err(
                        "families",
                        lines.of(list),
                        "must name at least one family: [\"ip\"], [\"ip6\"] or [\"ip\", \"ip6\"]",
                    ));
                }
                for f in list.get_ref() {
                    let fam = match f.get_ref().as_str() {
                        "ip" => Family::Ip,
                        "ip6" => Family::Ip6,
                        other => {
                            return Err(err(
                                "families",
                                lines.of(f),
                                format!("unknown family {other:?}; use \"ip\" or \"ip6\""),
                            ))
                        }
                    };
                    if families.contains(&fam) {
                        return Err(err(
                            "families",
                            lines.of(f),
                            format!("{fam} is listed twice"),
                        ));
                    }
                    families.push(fam);
                }
            }
        }

        let xtables_lock_timeout = match &raw.xtables_lock_timeout {
            None => Duration::from_secs(10),
            Some(s) => parse_duration(s.get_ref())
                .map_err(|m| err("xtables_lock_timeout", lines.of(s), m))?,
        };

        let mut chains: Vec<ChainSpec> = Vec::new();
        for (ci, rc) in raw.chain.iter().enumerate() {
            chains.push(validate_chain(
                ci,
                rc,
                raw.comment_encoding,
                &lines,
                &chains,
            )?);
        }

        let mut daemon = DaemonConfig::default();
        if let Some(d) = &raw.daemon {
            if let Some(s) = &d.resync_interval {
                let v = parse_duration(s.get_ref())
                    .map_err(|m| err("daemon.resync_interval", lines.of(s), m))?;
                if v.is_zero() {
                    return Err(err(
                        "daemon.resync_interval",
                        lines.of(s),
                        "must be longer than zero",
                    ));
                }
                daemon.resync_interval = v;
            }
            if let Some(s) = &d.metrics_listen {
                daemon.metrics_listen = if s.get_ref().is_empty() {
                    None
                } else {
                    Some(s.get_ref().parse().map_err(|_| {
                        err(
                            "daemon.metrics_listen",
                            lines.of(s),
                            format!(
                                "{:?} is not \"host:port\" (e.g. \"127.0.0.1:9464\"); \"\" turns metrics off",
                                s.get_ref()
                            ),
                        )
                    })?)
                };
            }
            if let Some(b) = d.cleanup_on_exit {
                daemon.cleanup_on_exit = b;
            }
        }

        Ok(Config {
            backend: raw.backend,
            families,
            xtables_lock_timeout,
            chains,
            daemon,
        })
    }
}

fn validate_chain(
    ci: usize,
    rc: &RawChain,
    default_encoding: CommentEncoding,
    lines: &Lines<'_>,
    earlier: &[ChainSpec],
) -> Result<ChainSpec, SpecError> {
    let key = format!("chain[{ci}]");
    let table = rc.table.get_ref();
    let chain = rc.chain.get_ref();
    let Some((_, builtins)) = BASE_CHAINS.iter().find(|(t, _)| t == table) else {
        return Err(err(
            format!("{key}.table"),
            lines.of(&rc.table),
            format!("unknown table {table:?}; use nat, filter, mangle or raw"),
        ));
    };
    if base_chain(table, chain).is_none() {
        let names: Vec<&str> = builtins.iter().map(|c| c.name).collect();
        return Err(err(
            format!("{key}.chain"),
            lines.of(&rc.chain),
            format!(
                "{chain:?} is not a built-in chain of the {table} table; use one of {}",
                names.join(", ")
            ),
        ));
    }
    if earlier
        .iter()
        .any(|c| &c.table == table && &c.chain == chain)
    {
        return Err(err(
            format!("{key}.chain"),
            lines.of(&rc.chain),
            format!("{table} {chain} is declared twice; put all its jumps under one [[chain]]"),
        ));
    }
    if rc.jump.is_empty() {
        return Err(err(
            key,
            lines.of(&rc.chain),
            "declares no [[chain.jump]]: nothing to manage",
        ));
    }

    let mut jumps: Vec<JumpSpec> = Vec::new();
    let mut comments: BTreeMap<&str, usize> = BTreeMap::new();
    let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
    for (ji, rj) in rc.jump.iter().enumerate() {
        let jkey = format!("{key}.jump[{ji}]");
        let target = rj.target.get_ref();
        if let Some(p) = chain_name_problem(target) {
            return Err(err(format!("{jkey}.target"), lines.of(&rj.target), p));
        }
        if let Some(prev) = targets.insert(target, ji) {
            return Err(err(
                format!("{jkey}.target"),
                lines.of(&rj.target),
                format!("{key}.jump[{prev}] already jumps to {target}; one jump per target"),
            ));
        }
        let encoding = rj.comment_encoding.unwrap_or(default_encoding);
        let comment = rj.comment.get_ref();
        if comment.is_empty() {
            return Err(err(
                format!("{jkey}.comment"),
                lines.of(&rj.comment),
                "the comment is the jump's identity and cannot be empty",
            ));
        }
        if comment.len() > encoding.max_len() {
            return Err(err(
                format!("{jkey}.comment"),
                lines.of(&rj.comment),
                format!(
                    "is {} bytes; the {} encoding holds at most {}",
                    comment.len(),
                    encoding.name(),
                    encoding.max_len()
                ),
            ));
        }
        if comment.contains('\0') {
            return Err(err(
                format!("{jkey}.comment"),
                lines.of(&rj.comment),
                "cannot hold a NUL character",
            ));
        }
        // iptables-save prints a comment as it is: a line break (or another control
        // character) would break the save output every agent parses line by line, and
        // iptables-restore would refuse it. A tab is quoted and round-trips.
        if let Some(c) = comment.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(err(
                format!("{jkey}.comment"),
                lines.of(&rj.comment),
                format!(
                    "cannot hold the control character {c:?}: iptables-save would print it raw and iptables-restore could not read the table back"
                ),
            ));
        }
        if let Some(prev) = comments.insert(comment, ji) {
            return Err(err(
                format!("{jkey}.comment"),
                lines.of(&rj.comment),
                format!("{key}.jump[{prev}] has the same comment; each owned jump needs its own"),
            ));
        }
        let names = |list: &[Spanned<String>], what: &str| -> Result<Vec<String>, SpecError> {
            let mut out: Vec<String> = Vec::new();
            for n in list {
                let name = n.get_ref();
                if let Some(p) = chain_name_problem(name) {
                    return Err(err(format!("{jkey}.{what}"), lines.of(n), p));
                }
                if name == target {
                    return Err(err(
                        format!("{jkey}.{what}"),
                        lines.of(n),
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
            return Err(err(
                format!("{jkey}.before"),
                rj.before.first().and_then(|b| lines.of(b)),
                format!("{both} is both in after and in before"),
            ));
        }
        jumps.push(JumpSpec {
            target: target.clone(),
            comment: comment.clone(),
            after,
            before,
            create_chain: rj.create_chain.unwrap_or(true),
            encoding,
        });
    }
    if let Some(cycle) = find_cycle(&jumps) {
        return Err(err(
            key,
            lines.of(&rc.chain),
            format!(
                "after/before constraints form a cycle: {} (each must come before the next)",
                cycle.join(" -> ")
            ),
        ));
    }
    Ok(ChainSpec {
        table: table.clone(),
        chain: chain.clone(),
        jumps,
    })
}

/// The ordering edges the jumps declare, as (earlier target, later target) chain names.
pub fn edges(jumps: &[JumpSpec]) -> Vec<(&str, &str)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const HARVESTER: &str = include_str!("../testdata/harvester.toml");

    fn load_err(text: &str) -> SpecError {
        Config::from_toml(text).expect_err("config should be rejected")
    }

    fn one_jump(extra: &str) -> String {
        format!(
            "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"OVN-PREROUTING\"\ncomment = \"kube-ovn prerouting rules\"\n{extra}\n"
        )
    }

    #[test]
    fn harvester_scenario_loads_with_defaults() {
        let c = Config::from_toml(HARVESTER).unwrap();
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.families, vec![Family::Ip]);
        assert_eq!(c.xtables_lock_timeout, Duration::from_secs(10));
        assert_eq!(c.daemon, DaemonConfig::default());
        let j = &c.chains[0].jumps[0];
        assert_eq!(j.target, "OVN-PREROUTING");
        assert_eq!(j.after, vec!["cali-PREROUTING"]);
        assert_eq!(j.before, vec!["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]);
        assert!(j.create_chain);
        assert_eq!(j.encoding, CommentEncoding::Xt);
    }

    #[test]
    fn every_key_of_the_design_is_read() {
        let c = Config::from_toml(
            r#"
backend = "nft"
families = ["ip", "ip6"]
comment_encoding = "userdata"
xtables_lock_timeout = "0s"
[[chain]]
table = "mangle"
chain = "OUTPUT"
  [[chain.jump]]
  target = "A"
  comment = "a"
  create_chain = false
  [[chain.jump]]
  target = "B"
  comment = "b"
  comment_encoding = "xt"
  after = ["A"]
[daemon]
resync_interval = "500ms"
metrics_listen = ""
cleanup_on_exit = true
"#,
        )
        .unwrap();
        assert_eq!(c.backend, BackendChoice::Nft);
        assert_eq!(c.families, vec![Family::Ip, Family::Ip6]);
        assert_eq!(c.xtables_lock_timeout, Duration::ZERO);
        assert_eq!(c.chains[0].jumps[0].encoding, CommentEncoding::Userdata);
        assert!(!c.chains[0].jumps[0].create_chain);
        assert_eq!(c.chains[0].jumps[1].encoding, CommentEncoding::Xt);
        assert_eq!(c.daemon.resync_interval, Duration::from_millis(500));
        assert_eq!(c.daemon.metrics_listen, None);
        assert!(c.daemon.cleanup_on_exit);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = load_err(&one_jump("priority = 3"));
        assert!(e.message.contains("priority"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        let e = load_err("bakend = \"nft\"\n");
        assert!(e.to_string().contains("bakend"), "{e}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let e = load_err(&one_jump("after = \"cali-PREROUTING\""));
        assert!(e.to_string().contains("line 7"), "{e}");
        let e = load_err("backend = \"iptables\"\n");
        assert!(e.to_string().contains("iptables"), "{e}");
        let e = load_err(&one_jump("create_chain = \"yes\""));
        assert!(e.to_string().contains("line 7"), "{e}");
    }

    #[test]
    fn comments_are_checked_for_the_encoding() {
        let e = load_err(&one_jump("").replace("kube-ovn prerouting rules", ""));
        assert_eq!(e.key, "chain[0].jump[0].comment");
        let long = "x".repeat(255);
        assert!(
            Config::from_toml(&one_jump("").replace("kube-ovn prerouting rules", &long)).is_ok()
        );
        let e = load_err(
            &one_jump("comment_encoding = \"userdata\"")
                .replace("kube-ovn prerouting rules", &long),
        );
        assert!(e.message.contains("at most 253"), "{e}");
        let e = load_err(&one_jump("").replace("kube-ovn prerouting rules", &"x".repeat(256)));
        assert!(e.message.contains("at most 255"), "{e}");
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn tables_chains_and_names_are_checked() {
        let e = load_err(&one_jump("").replace("\"nat\"", "\"security\""));
        assert_eq!(e.key, "chain[0].table");
        let e = load_err(&one_jump("").replace("\"PREROUTING\"", "\"FORWARD\""));
        assert_eq!(e.key, "chain[0].chain");
        assert!(
            e.message.contains("PREROUTING, INPUT, OUTPUT, POSTROUTING"),
            "{e}"
        );
        for bad in ["", "has space", "-x", "RETURN", "INPUT", &"L".repeat(29)] {
            let e = load_err(&one_jump("").replace("OVN-PREROUTING", bad));
            assert_eq!(e.key, "chain[0].jump[0].target", "{bad}: {e}");
        }
        assert!(
            Config::from_toml(&one_jump("").replace("OVN-PREROUTING", &"L".repeat(28))).is_ok()
        );
        let e = load_err(&one_jump("after = [\"bad name\"]"));
        assert_eq!(e.key, "chain[0].jump[0].after");
    }

    #[test]
    fn self_reference_duplicates_and_cycles_are_errors() {
        let e = load_err(&one_jump("after = [\"OVN-PREROUTING\"]"));
        assert!(e.message.contains("itself"), "{e}");
        let dup = one_jump("")
            + "[[chain.jump]]\ntarget = \"X\"\ncomment = \"kube-ovn prerouting rules\"\n";
        let e = load_err(&dup);
        assert_eq!(e.key, "chain[0].jump[1].comment");
        assert_eq!(e.line, Some(10));
        let cyc = one_jump("before = [\"B\"]")
            + "[[chain.jump]]\ntarget = \"B\"\ncomment = \"b\"\nbefore = [\"C\"]\n[[chain.jump]]\ntarget = \"C\"\ncomment = \"c\"\nbefore = [\"OVN-PREROUTING\"]\n";
        let e = load_err(&cyc);
        assert!(e.message.contains("cycle"), "{e}");
        assert!(
            e.message.contains("OVN-PREROUTING")
                && e.message.contains("B")
                && e.message.contains("C"),
            "{e}"
        );
        // A cycle through a foreign chain counts as well.
        let cyc = one_jump("after = [\"F\"]") + "[[chain.jump]]\ntarget = \"B\"\ncomment = \"b\"\nafter = [\"OVN-PREROUTING\"]\nbefore = [\"F\"]\n";
        assert!(load_err(&cyc).message.contains("cycle"));
        let twice = one_jump("") + "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"Y\"\ncomment = \"y\"\n";
        assert!(load_err(&twice).message.contains("declared twice"));
    }

    #[test]
    fn durations_and_listen_addresses() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("5d").is_err());
        let e = load_err("[daemon]\nresync_interval = \"0s\"\n");
        assert_eq!(e.key, "daemon.resync_interval");
        let e = load_err("[daemon]\nmetrics_listen = \"localhost\"\n");
        assert_eq!((e.key.as_str(), e.line), ("daemon.metrics_listen", Some(2)));
        let e = load_err("families = [\"ip\", \"ip\"]\n");
        assert_eq!(e.key, "families");
        let e = load_err("families = [\"inet\"]\n");
        assert!(e.message.contains("inet"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load(Path::new("/nonexistent/jumpset.toml")).unwrap_err();
        assert!(e.message.contains("/nonexistent/jumpset.toml"), "{e}");
    }
}
