//! What the kernel has: one chain's rules as a backend decoded them, independent of the
//! backend, plus the generation the read was taken at.
//!
//! Only what the planner and `status` need is interpreted (comment, verdict, whether the
//! rule holds anything else); the backends keep every rule's original bytes themselves and
//! never rewrite a rule they do not own.

use serde::Serialize;
use std::fmt;

/// An address family of the iptables tables (`ip` = iptables, `ip6` = ip6tables).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 (`iptables`, nf_tables family `ip`).
    Ip,
    /// IPv6 (`ip6tables`, nf_tables family `ip6`).
    Ip6,
}

impl Family {
    /// The name used in configs and JSON: `ip` or `ip6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The iptables command for this family (`iptables` or `ip6tables`).
    pub fn iptables(self) -> &'static str {
        match self {
            Family::Ip => "iptables",
            Family::Ip6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a rule's comment is stored in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CommentEncoding {
    /// An xt `comment` match (rev 0, 256-byte info): what `iptables -m comment` writes.
    #[default]
    Xt,
    /// An nf_tables rule comment in the rule's userdata (TLV type 0): what
    /// `nft add rule ... comment "..."` writes. No xt match, so no deferred-destructor wait.
    Userdata,
}

impl CommentEncoding {
    /// The config spelling: `xt` or `userdata`.
    pub fn name(self) -> &'static str {
        match self {
            CommentEncoding::Xt => "xt",
            CommentEncoding::Userdata => "userdata",
        }
    }

    /// The longest comment in bytes this encoding can hold (without the NUL).
    pub fn max_len(self) -> usize {
        match self {
            CommentEncoding::Xt => 255,
            CommentEncoding::Userdata => 253,
        }
    }
}

/// Where a rule sends a packet that matched it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `-j CHAIN`: jump to a user chain.
    Jump(String),
    /// `-g CHAIN`: goto a user chain.
    Goto(String),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// No verdict (a rule that only counts, or one whose target we keep opaque).
    None,
    /// Some other target (`-j DNAT ...`, `-j MARK ...`), kept opaque; the text is for display.
    Other(String),
}

impl Verdict {
    /// The chain this verdict jumps or goes to, if any.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }

    /// iptables-style text: `-j X`, `-g X`, `-j ACCEPT`, ...
    pub fn iptables(&self) -> String {
        match self {
            Verdict::Jump(c) => format!("-j {c}"),
            Verdict::Goto(c) => format!("-g {c}"),
            Verdict::Accept => "-j ACCEPT".into(),
            Verdict::Drop => "-j DROP".into(),
            Verdict::Return => "-j RETURN".into(),
            Verdict::None => String::new(),
            Verdict::Other(t) => t.clone(),
        }
    }
}

/// A rule's comment and where it was stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Comment {
    /// The comment's bytes, without the terminating NUL (not necessarily UTF-8).
    pub bytes: Vec<u8>,
    /// The encoding it was found in.
    pub encoding: CommentEncoding,
}

impl Comment {
    /// The comment as text (lossy for bytes that are not UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A match of a rule other than its comment, kept for display and for the identity rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Match {
    /// `-m addrtype` (rev 1): source/destination type bits and flags, as the kernel has them.
    AddrType {
        /// Source type bits (XT_ADDRTYPE_*), 0 = any.
        source: u16,
        /// Destination type bits (XT_ADDRTYPE_*), 0 = any.
        dest: u16,
        /// XT_ADDRTYPE_INVERT_SOURCE 0x1, INVERT_DEST 0x2, LIMIT_IFACE_IN 0x4, LIMIT_IFACE_OUT 0x8.
        flags: u32,
    },
    /// Anything else: an xt match we do not decode or a native expression. The text is
    /// what `status` shows; the backend keeps the bytes.
    Opaque(String),
}

/// `XT_ADDRTYPE_LOCAL`: the destination type the CNI portmap plugin matches on.
pub const ADDRTYPE_LOCAL: u16 = 1 << 2;

impl Match {
    /// iptables-style text of the match.
    pub fn iptables(&self) -> String {
        match self {
            Match::AddrType {
                source,
                dest,
                flags,
            } => {
                let mut s = String::from("-m addrtype");
                if *source != 0 {
                    let inv = if flags & 0x1 != 0 { " !" } else { "" };
                    s.push_str(&format!("{inv} --src-type {}", addrtype_names(*source)));
                }
                if *dest != 0 {
                    let inv = if flags & 0x2 != 0 { " !" } else { "" };
                    s.push_str(&format!("{inv} --dst-type {}", addrtype_names(*dest)));
                }
                if flags & 0x4 != 0 {
                    s.push_str(" --limit-iface-in");
                }
                if flags & 0x8 != 0 {
                    s.push_str(" --limit-iface-out");
                }
                s
            }
            Match::Opaque(t) => t.clone(),
        }
    }
}

/// The address types of `-m addrtype`, by bit (XT_ADDRTYPE_UNSPEC = 1 << 0, ...).
pub const ADDRTYPE_NAMES: [&str; 12] = [
    "UNSPEC",
    "UNICAST",
    "LOCAL",
    "BROADCAST",
    "ANYCAST",
    "MULTICAST",
    "BLACKHOLE",
    "UNREACHABLE",
    "PROHIBIT",
    "THROW",
    "NAT",
    "XRESOLVE",
];

fn addrtype_names(bits: u16) -> String {
    ADDRTYPE_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Packet and byte counters of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Counters {
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
}

/// One rule of a chain, as decoded by a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The kernel's handle for the rule (nf_tables handle; for legacy, the backend's id).
    pub handle: u64,
    /// The rule's comment, if any (xt match or userdata).
    pub comment: Option<Comment>,
    /// Every other match or expression the rule holds, in order.
    pub matches: Vec<Match>,
    /// The counter, if the rule has one.
    pub counters: Option<Counters>,
    /// The rule's verdict.
    pub verdict: Verdict,
}

impl Rule {
    /// The chain this rule jumps or goes to, if any: how `after`/`before` refer to rules.
    pub fn target(&self) -> Option<&str> {
        self.verdict.chain()
    }

    /// True when the rule is a comment, at most a counter, and a jump or goto — nothing
    /// else. Only such a rule can be one of ours (`docs/contracts.md#identity`).
    pub fn is_bare_jump(&self) -> bool {
        self.comment.is_some()
            && self.matches.is_empty()
            && matches!(self.verdict, Verdict::Jump(_) | Verdict::Goto(_))
    }

    /// The rule as `iptables -S` would print it, after `-A CHAIN`.
    pub fn iptables(&self) -> String {
        let mut parts: Vec<String> = self.matches.iter().map(Match::iptables).collect();
        if let Some(c) = &self.comment {
            // iptables prints the comment match where it stands; ours have it first.
            parts.insert(0, format!("-m comment --comment {}", quote(&c.text())));
        }
        let v = self.verdict.iptables();
        if !v.is_empty() {
            parts.push(v);
        }
        parts.join(" ")
    }
}

/// Quote a comment the way `iptables -S` does (`xtables_save_string`): bare when it is
/// only ASCII letters, digits, `_` and `-`, else in double quotes with `"`, `'` and `\`
/// escaped.
pub fn quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    if safe {
        s.to_string()
    } else {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            if c == '"' || c == '\\' || c == '\'' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    }
}

/// One chain as the kernel had it at one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Address family.
    pub family: Family,
    /// Table name (`nat`, ...).
    pub table: String,
    /// Chain name (`PREROUTING`, ...).
    pub chain: String,
    /// The ruleset generation the read was taken at (nf_tables genid; legacy: entry count).
    /// nf_tables: 0 when no read could be taken at one generation (commits elsewhere kept
    /// racing a long dump; the chain itself was whole): such a snapshot cannot guard a
    /// write, only anchor one on its handles.
    pub generation: u32,
    /// Whether the table exists.
    pub table_exists: bool,
    /// Whether the chain exists (iptables-nft creates base chains lazily).
    pub chain_exists: bool,
    /// The chain's rules, in order.
    pub rules: Vec<Rule>,
}

/// What one backend holds in one iptables table of one family.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct TableCensus {
    /// Table name.
    pub table: String,
    /// Rules in all its chains.
    pub rules: usize,
    /// User chains (names).
    pub user_chains: Vec<String>,
    /// nf_tables only: the table holds what iptables-nft cannot show ("incompatible").
    pub incompatible: bool,
}

impl TableCensus {
    /// Whether the table holds a rule or a user chain: the backend is in use.
    pub fn in_use(&self) -> bool {
        self.rules > 0 || !self.user_chains.is_empty()
    }
}

/// Which agent a rule looks like it belongs to, for `status`.
pub fn agent_of(rule: &Rule) -> &'static str {
    let comment = rule.comment.as_ref().map(Comment::text).unwrap_or_default();
    let target = rule.target().unwrap_or_default();
    if comment.starts_with("cali:") || target.starts_with("cali-") {
        "calico"
    } else if comment.starts_with("kube-ovn") || target.starts_with("OVN-") {
        "kube-ovn"
    } else if target.starts_with("CNI-") {
        "portmap"
    } else if target.starts_with("KUBE-") || comment.starts_with("kubernetes ") {
        "kube-proxy"
    } else if target.starts_with("DOCKER") {
        "docker"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(comment: Option<&str>, matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule {
            handle: 1,
            comment: comment.map(|c| Comment {
                bytes: c.as_bytes().to_vec(),
                encoding: CommentEncoding::Xt,
            }),
            matches,
            counters: Some(Counters::default()),
            verdict,
        }
    }

    #[test]
    fn iptables_text_matches_iptables_save() {
        let r = rule(
            Some("kube-ovn prerouting rules"),
            vec![],
            Verdict::Jump("OVN-PREROUTING".into()),
        );
        assert_eq!(
            r.iptables(),
            r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#
        );
        let r = rule(
            None,
            vec![Match::AddrType {
                source: 0,
                dest: ADDRTYPE_LOCAL,
                flags: 0,
            }],
            Verdict::Jump("CNI-HOSTPORT-DNAT".into()),
        );
        assert_eq!(
            r.iptables(),
            "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
        );
        assert_eq!(quote("cali:6gwbT8clXdHdC1b1"), "\"cali:6gwbT8clXdHdC1b1\"");
        assert_eq!(quote("kube-ovn_1"), "kube-ovn_1");
        assert_eq!(quote(r#"a "b"\"#), r#""a \"b\"\\""#);
    }

    #[test]
    fn bare_jump_needs_comment_and_nothing_else() {
        assert!(rule(Some("x"), vec![], Verdict::Goto("X".into())).is_bare_jump());
        assert!(!rule(None, vec![], Verdict::Jump("X".into())).is_bare_jump());
        assert!(!rule(Some("x"), vec![], Verdict::Accept).is_bare_jump());
        assert!(!rule(
            Some("x"),
            vec![Match::Opaque("-p tcp".into())],
            Verdict::Jump("X".into())
        )
        .is_bare_jump());
    }
}
