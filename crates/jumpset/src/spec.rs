//! The desired state: which jumps jumpset owns, where they go, and how the daemon runs.
//!
//! A [`Config`] is made in one of two ways, and validated by ONE function either way:
//! read from the TOML config file ([`Config::from_toml`], [`Config::load`]) or built in
//! code ([`Config::builder`]). Every error names the key (`chain[0].jump[1].comment`)
//! and, for TOML, the line. Unknown keys, wrong types, names iptables cannot hold and
//! cycles among `after`/`before` are all errors: a config that validates is one the
//! planner can honour. The validated types have no public fields, so nothing can skip
//! the validation.
//!
//! ```
//! use jumpset::spec::{ChainSpec, Config, JumpSpec};
//!
//! let config = Config::builder()
//!     .chain(
//!         ChainSpec::builder("nat", "PREROUTING").jump(
//!             JumpSpec::builder("OVN-PREROUTING", "kube-ovn prerouting rules")
//!                 .after(["cali-PREROUTING"])
//!                 .before(["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]),
//!         ),
//!     )
//!     .build()
//!     .unwrap();
//! assert_eq!(config.chains()[0].jumps()[0].after(), ["cali-PREROUTING"]);
//!
//! // The same checks as the config file: a jump cannot be placed after itself.
//! let err = Config::builder()
//!     .chain(ChainSpec::builder("nat", "PREROUTING")
//!         .jump(JumpSpec::builder("X", "x").after(["X"])))
//!     .build()
//!     .unwrap_err();
//! assert_eq!(err.key, "chain[0].jump[0].after");
//! ```

use crate::iptables::{base_chain, chain_name_problem, BASE_CHAINS};
use crate::snapshot::{CommentEncoding, Family};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/jumpset/jumpset.toml";

/// Which kernel interface to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
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

/// The validated config. Made by [`Config::from_toml`], [`Config::load`] or
/// [`Config::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) backend: BackendChoice,
    pub(crate) families: Vec<Family>,
    pub(crate) xtables_lock_timeout: Duration,
    pub(crate) chains: Vec<ChainSpec>,
    pub(crate) daemon: DaemonConfig,
}

/// One managed chain and the jumps jumpset owns in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub(crate) table: String,
    pub(crate) chain: String,
    pub(crate) jumps: Vec<JumpSpec>,
}

/// One owned jump: `-m comment --comment COMMENT -j TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpSpec {
    pub(crate) target: String,
    pub(crate) comment: String,
    pub(crate) after: Vec<String>,
    pub(crate) before: Vec<String>,
    pub(crate) create_chain: bool,
    pub(crate) encoding: CommentEncoding,
}

/// The `[daemon]` table. Start from [`DaemonConfig::default`] and change what you need;
/// [`ConfigBuilder::build`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// Full re-read period (legacy: the poll period). Must be longer than zero.
    pub resync_interval: Duration,
    /// Where `/metrics` and the health endpoints are served; `None` turns them off.
    pub metrics_listen: Option<SocketAddr>,
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
#[non_exhaustive]
pub struct SpecError {
    /// The key path, e.g. `chain[0].jump[1].after`; empty for whole-file errors.
    pub key: String,
    /// 1-based line, when known (configs read from TOML).
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

impl SpecError {
    /// An error about `key` (a path such as `chain[0].jump[1].comment`).
    pub fn new(key: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Self {
        SpecError {
            key: key.into(),
            line,
            message: message.into(),
        }
    }
}

fn err(key: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> SpecError {
    SpecError::new(key, line, message)
}

// ---- the validated types, read-only ----

impl Config {
    /// A builder for a config made in code; [`ConfigBuilder::build`] validates it exactly
    /// as a config file is validated.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// `backend`.
    pub fn backend(&self) -> BackendChoice {
        self.backend
    }

    /// `families`, without duplicates, in the order given.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// `xtables_lock_timeout` (zero: wait forever).
    pub fn xtables_lock_timeout(&self) -> Duration {
        self.xtables_lock_timeout
    }

    /// The managed chains, in declaration order.
    pub fn chains(&self) -> &[ChainSpec] {
        &self.chains
    }

    /// The managed chain `table`/`chain`, if declared.
    pub fn chain(&self, table: &str, chain: &str) -> Option<&ChainSpec> {
        self.chains
            .iter()
            .find(|c| c.table == table && c.chain == chain)
    }

    /// The `[daemon]` table.
    pub fn daemon(&self) -> &DaemonConfig {
        &self.daemon
    }
}

impl ChainSpec {
    /// A builder for one managed chain (`table`, `chain`) and its jumps.
    pub fn builder(table: impl Into<String>, chain: impl Into<String>) -> ChainBuilder {
        ChainBuilder {
            table: At::new(table.into()),
            chain: At::new(chain.into()),
            jumps: Vec::new(),
        }
    }

    /// `nat`, `filter`, `mangle` or `raw`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// A built-in chain of that table (`PREROUTING`, ...).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The owned jumps, in declaration order.
    pub fn jumps(&self) -> &[JumpSpec] {
        &self.jumps
    }
}

impl JumpSpec {
    /// A builder for the jump `-m comment --comment COMMENT -j TARGET`.
    pub fn builder(target: impl Into<String>, comment: impl Into<String>) -> JumpBuilder {
        JumpBuilder {
            target: At::new(target.into()),
            comment: At::new(comment.into()),
            after: Vec::new(),
            before: Vec::new(),
            create_chain: None,
            encoding: None,
        }
    }

    /// The chain it jumps to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Its identity.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// Target chains of rules it must follow.
    pub fn after(&self) -> &[String] {
        &self.after
    }

    /// Target chains of rules it must precede.
    pub fn before(&self) -> &[String] {
        &self.before
    }

    /// Whether the (empty) target chain is created when it is missing.
    pub fn create_chain(&self) -> bool {
        self.create_chain
    }

    /// How the comment is written.
    pub fn encoding(&self) -> CommentEncoding {
        self.encoding
    }
}

// ---- builders: a draft of the config, with the TOML line of each value when known ----

/// A value and the line of the config file it came from (none when built in code).
#[derive(Debug, Clone, PartialEq, Eq)]
struct At<T> {
    value: T,
    line: Option<usize>,
}

impl<T> At<T> {
    fn new(value: T) -> Self {
        At { value, line: None }
    }
}

/// How the keys of chains and jumps are spelled in error paths: `chain[0].jump[1]` as in
/// the TOML file, `chains[0].jumps[1]` as in the JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Keys {
    #[default]
    Toml,
    Json,
}

impl Keys {
    fn chain(self) -> &'static str {
        match self {
            Keys::Toml => "chain",
            Keys::Json => "chains",
        }
    }

    fn jump(self) -> &'static str {
        match self {
            Keys::Toml => "jump",
            Keys::Json => "jumps",
        }
    }
}

/// Builds a [`Config`] in code. Every setter has the default of the config file.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConfigBuilder {
    keys: Keys,
    backend: BackendChoice,
    families: Option<At<Vec<At<Family>>>>,
    comment_encoding: CommentEncoding,
    xtables_lock_timeout: Option<Duration>,
    chains: Vec<ChainBuilder>,
    daemon: DaemonConfig,
    resync_line: Option<usize>,
}

/// Builds one [`ChainSpec`] of a config.
#[derive(Debug, Clone)]
#[must_use]
pub struct ChainBuilder {
    table: At<String>,
    chain: At<String>,
    jumps: Vec<JumpBuilder>,
}

/// Builds one [`JumpSpec`] of a chain.
#[derive(Debug, Clone)]
#[must_use]
pub struct JumpBuilder {
    target: At<String>,
    comment: At<String>,
    after: Vec<At<String>>,
    before: Vec<At<String>>,
    create_chain: Option<bool>,
    encoding: Option<CommentEncoding>,
}

impl ConfigBuilder {
    /// `backend` (default `auto`).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// `families` (default `["ip"]`).
    pub fn families(mut self, families: impl IntoIterator<Item = Family>) -> Self {
        self.families = Some(At::new(families.into_iter().map(At::new).collect()));
        self
    }

    /// `comment_encoding`: the default of every jump (default `xt`).
    pub fn comment_encoding(mut self, encoding: CommentEncoding) -> Self {
        self.comment_encoding = encoding;
        self
    }

    /// `xtables_lock_timeout` (default 10 s; zero waits forever).
    pub fn xtables_lock_timeout(mut self, timeout: Duration) -> Self {
        self.xtables_lock_timeout = Some(timeout);
        self
    }

    /// A managed chain.
    pub fn chain(mut self, chain: ChainBuilder) -> Self {
        self.chains.push(chain);
        self
    }

    /// The `[daemon]` table.
    pub fn daemon(mut self, daemon: DaemonConfig) -> Self {
        self.daemon = daemon;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<Config, SpecError> {
        validate(self)
    }
}

impl ChainBuilder {
    /// An owned jump of this chain.
    pub fn jump(mut self, jump: JumpBuilder) -> Self {
        self.jumps.push(jump);
        self
    }
}

impl JumpBuilder {
    /// Target chains of rules this jump must follow (added to those given before).
    pub fn after<S: Into<String>>(mut self, chains: impl IntoIterator<Item = S>) -> Self {
        self.after
            .extend(chains.into_iter().map(|c| At::new(c.into())));
        self
    }

    /// Target chains of rules this jump must precede (added to those given before).
    pub fn before<S: Into<String>>(mut self, chains: impl IntoIterator<Item = S>) -> Self {
        self.before
            .extend(chains.into_iter().map(|c| At::new(c.into())));
        self
    }

    /// Create the (empty) target chain when it is missing (default true).
    pub fn create_chain(mut self, create: bool) -> Self {
        self.create_chain = Some(create);
        self
    }

    /// How the comment is written (default: the config's `comment_encoding`).
    pub fn encoding(mut self, encoding: CommentEncoding) -> Self {
        self.encoding = Some(encoding);
        self
    }
}

// ---- the one validation ----

fn validate(b: ConfigBuilder) -> Result<Config, SpecError> {
    let mut families = Vec::new();
    match &b.families {
        None => families.push(Family::Ip),
        Some(list) => {
            if list.value.is_empty() {
                return Err(err(
                    "families",
                    list.line,
                    "must name at least one family: [\"ip\"], [\"ip6\"] or [\"ip\", \"ip6\"]",
                ));
            }
            for f in &list.value {
                if families.contains(&f.value) {
                    return Err(err(
                        "families",
                        f.line,
                        format!("{} is listed twice", f.value),
                    ));
                }
                families.push(f.value);
            }
        }
    }
    if b.daemon.resync_interval.is_zero() {
        return Err(err(
            "daemon.resync_interval",
            b.resync_line,
            "must be longer than zero",
        ));
    }
    let mut chains: Vec<ChainSpec> = Vec::new();
    for (ci, rc) in b.chains.iter().enumerate() {
        chains.push(validate_chain(b.keys, ci, rc, b.comment_encoding, &chains)?);
    }
    Ok(Config {
        backend: b.backend,
        families,
        xtables_lock_timeout: b.xtables_lock_timeout.unwrap_or(Duration::from_secs(10)),
        chains,
        daemon: b.daemon,
    })
}

fn validate_chain(
    keys: Keys,
    ci: usize,
    rc: &ChainBuilder,
    default_encoding: CommentEncoding,
    earlier: &[ChainSpec],
) -> Result<ChainSpec, SpecError> {
    let key = format!("{}[{ci}]", keys.chain());
    let jump = keys.jump();
    let table = &rc.table.value;
    let chain = &rc.chain.value;
    let Some((_, builtins)) = BASE_CHAINS.iter().find(|(t, _)| t == table) else {
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
    if earlier
        .iter()
        .any(|c| &c.table == table && &c.chain == chain)
    {
        return Err(err(
            format!("{key}.chain"),
            rc.chain.line,
            format!("{table} {chain} is declared twice; put all its jumps under one [[chain]]"),
        ));
    }
    if rc.jumps.is_empty() {
        return Err(err(
            key,
            rc.chain.line,
            format!("declares no {jump}: nothing to manage"),
        ));
    }

    let mut jumps: Vec<JumpSpec> = Vec::new();
    let mut comments: BTreeMap<&str, usize> = BTreeMap::new();
    let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
    for (ji, rj) in rc.jumps.iter().enumerate() {
        let jkey = format!("{key}.{jump}[{ji}]");
        let target = &rj.target.value;
        if let Some(p) = chain_name_problem(target) {
            return Err(err(format!("{jkey}.target"), rj.target.line, p));
        }
        if let Some(prev) = targets.insert(target, ji) {
            return Err(err(
                format!("{jkey}.target"),
                rj.target.line,
                format!("{key}.{jump}[{prev}] already jumps to {target}; one jump per target"),
            ));
        }
        let encoding = rj.encoding.unwrap_or(default_encoding);
        let comment = &rj.comment.value;
        let cline = rj.comment.line;
        if comment.is_empty() {
            return Err(err(
                format!("{jkey}.comment"),
                cline,
                "the comment is the jump's identity and cannot be empty",
            ));
        }
        if comment.len() > encoding.max_len() {
            return Err(err(
                format!("{jkey}.comment"),
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
            return Err(err(
                format!("{jkey}.comment"),
                cline,
                "cannot hold a NUL character",
            ));
        }
        // iptables-save prints a comment as it is: a line break (or another control
        // character) would break the save output every agent parses line by line, and
        // iptables-restore would refuse it. A tab is quoted and round-trips.
        if let Some(c) = comment.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(err(
                format!("{jkey}.comment"),
                cline,
                format!(
                    "cannot hold the control character {c:?}: iptables-save would print it raw and iptables-restore could not read the table back"
                ),
            ));
        }
        if let Some(prev) = comments.insert(comment, ji) {
            return Err(err(
                format!("{jkey}.comment"),
                cline,
                format!("{key}.{jump}[{prev}] has the same comment; each owned jump needs its own"),
            ));
        }
        let names = |list: &[At<String>], what: &str| -> Result<Vec<String>, SpecError> {
            let mut out: Vec<String> = Vec::new();
            for n in list {
                let name = &n.value;
                if let Some(p) = chain_name_problem(name) {
                    return Err(err(format!("{jkey}.{what}"), n.line, p));
                }
                if name == target {
                    return Err(err(
                        format!("{jkey}.{what}"),
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
            return Err(err(
                format!("{jkey}.before"),
                rj.before.first().and_then(|b| b.line),
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
            rc.chain.line,
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

// ---- the config file ----

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

/// Maps byte offsets to 1-based line numbers.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn at_offset(&self, offset: usize) -> usize {
        self.0[..offset.min(self.0.len())].matches('\n').count() + 1
    }

    fn of<T>(&self, s: &Spanned<T>) -> Option<usize> {
        Some(self.at_offset(s.span().start))
    }

    fn at<T: Clone>(&self, s: &Spanned<T>) -> At<T> {
        At {
            value: s.get_ref().clone(),
            line: self.of(s),
        }
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

    /// Parse and validate config text (the format of the config file).
    pub fn from_toml(text: &str) -> Result<Config, SpecError> {
        ConfigBuilder::from_toml(text)?.build()
    }
}

// ---- the JSON form (the C ABI's structured constructor, the daemon's API) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonConfig {
    #[serde(default)]
    backend: BackendChoice,
    families: Option<Vec<Family>>,
    #[serde(default)]
    comment_encoding: CommentEncoding,
    xtables_lock_timeout: Option<String>,
    #[serde(default)]
    chains: Vec<JsonChain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonChain {
    table: String,
    chain: String,
    #[serde(default)]
    jumps: Vec<JsonJump>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonJump {
    target: String,
    comment: String,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    before: Vec<String>,
    create_chain: Option<bool>,
    comment_encoding: Option<CommentEncoding>,
}

impl Config {
    /// Parse and validate the JSON form of a config: the keys of the config file, with
    /// `chains` and `jumps` as lists (`{"backend": "nft", "chains": [{"table": "nat",
    /// "chain": "PREROUTING", "jumps": [{"target": ..., "comment": ..., "after": [...]}]}]}`).
    /// Errors name the key path in that form (`chains[0].jumps[1].after`).
    pub fn from_json(text: &str) -> Result<Config, SpecError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let raw: JsonConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let key = if key == "." { String::new() } else { key };
            let line = (inner.line() > 0).then_some(inner.line());
            err(key, line, inner.to_string())
        })?;
        de.end()
            .map_err(|e| err("", Some(e.line()), e.to_string()))?;
        let xtables_lock_timeout = match &raw.xtables_lock_timeout {
            None => None,
            Some(s) => Some(parse_duration(s).map_err(|m| err("xtables_lock_timeout", None, m))?),
        };
        ConfigBuilder {
            keys: Keys::Json,
            backend: raw.backend,
            families: raw
                .families
                .map(|f| At::new(f.into_iter().map(At::new).collect())),
            comment_encoding: raw.comment_encoding,
            xtables_lock_timeout,
            chains: raw
                .chains
                .into_iter()
                .map(|c| ChainBuilder {
                    table: At::new(c.table),
                    chain: At::new(c.chain),
                    jumps: c
                        .jumps
                        .into_iter()
                        .map(|j| JumpBuilder {
                            target: At::new(j.target),
                            comment: At::new(j.comment),
                            after: j.after.into_iter().map(At::new).collect(),
                            before: j.before.into_iter().map(At::new).collect(),
                            create_chain: j.create_chain,
                            encoding: j.comment_encoding,
                        })
                        .collect(),
                })
                .collect(),
            daemon: DaemonConfig::default(),
            resync_line: None,
        }
        .build()
    }
}

impl ConfigBuilder {
    /// The draft a config file describes, not yet validated: parse errors (syntax, unknown
    /// keys, wrong types) name the key path and the line.
    fn from_toml(text: &str) -> Result<ConfigBuilder, SpecError> {
        let lines = Lines(text);
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let line = e.span().map(|s| lines.at_offset(s.start));
            err("", line, e.message().trim_end().to_string())
        })?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|s| lines.at_offset(s.start));
            let key = if key == "." { String::new() } else { key };
            err(key, line, inner.message().trim_end().to_string())
        })?;

        let families = match &raw.families {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for f in list.get_ref() {
                    let value = match f.get_ref().as_str() {
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
                    out.push(At {
                        value,
                        line: lines.of(f),
                    });
                }
                Some(At {
                    value: out,
                    line: lines.of(list),
                })
            }
        };
        let xtables_lock_timeout = match &raw.xtables_lock_timeout {
            None => None,
            Some(s) => Some(
                parse_duration(s.get_ref())
                    .map_err(|m| err("xtables_lock_timeout", lines.of(s), m))?,
            ),
        };
        let mut daemon = DaemonConfig::default();
        let mut resync_line = None;
        if let Some(d) = &raw.daemon {
            if let Some(s) = &d.resync_interval {
                resync_line = lines.of(s);
                daemon.resync_interval = parse_duration(s.get_ref())
                    .map_err(|m| err("daemon.resync_interval", resync_line, m))?;
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
        let chains = raw
            .chain
            .iter()
            .map(|rc| ChainBuilder {
                table: lines.at(&rc.table),
                chain: lines.at(&rc.chain),
                jumps: rc
                    .jump
                    .iter()
                    .map(|rj| JumpBuilder {
                        target: lines.at(&rj.target),
                        comment: lines.at(&rj.comment),
                        after: rj.after.iter().map(|a| lines.at(a)).collect(),
                        before: rj.before.iter().map(|b| lines.at(b)).collect(),
                        create_chain: rj.create_chain,
                        encoding: rj.comment_encoding,
                    })
                    .collect(),
            })
            .collect();
        Ok(ConfigBuilder {
            keys: Keys::Toml,
            backend: raw.backend,
            families,
            comment_encoding: raw.comment_encoding,
            xtables_lock_timeout,
            chains,
            daemon,
            resync_line,
        })
    }
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
        assert_eq!(e.key, "chain[0].jump[0].after", "{e}");
        assert!(
            e.to_string()
                .starts_with("chain[0].jump[0].after (line 7): invalid type"),
            "{e}"
        );
        let e = load_err("backend = \"iptables\"\n");
        assert!(e.to_string().contains("iptables"), "{e}");
        let e = load_err(&one_jump("create_chain = \"yes\""));
        assert!(e.to_string().contains("line 7"), "{e}");
        assert_eq!(e.key, "chain[0].jump[0].create_chain", "{e}");
        let e = load_err("[daemon]\ncleanup_on_exit = 1\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("daemon.cleanup_on_exit", Some(2)),
            "{e}"
        );
    }

    #[test]
    fn the_json_form_is_the_config_file_with_lists() {
        let json = r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [
            {"target": "OVN-PREROUTING", "comment": "kube-ovn prerouting rules",
             "after": ["cali-PREROUTING"], "before": ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]}]}]}"#;
        assert_eq!(
            Config::from_json(json).unwrap(),
            Config::from_toml(HARVESTER).unwrap()
        );
        let c = Config::from_json(
            r#"{"backend": "legacy", "families": ["ip6"], "xtables_lock_timeout": "2s",
                "chains": [{"table": "nat", "chain": "PREROUTING",
                "jumps": [{"target": "X", "comment": "x", "create_chain": false,
                           "comment_encoding": "userdata"}]}]}"#,
        )
        .unwrap();
        assert_eq!(c.backend(), BackendChoice::Legacy);
        assert_eq!(c.families(), [Family::Ip6]);
        assert_eq!(c.xtables_lock_timeout(), Duration::from_secs(2));
        assert!(!c.chains()[0].jumps()[0].create_chain());
        // Errors name the key in the JSON form, the line where serde_json knows it.
        let e = Config::from_json(
            "{\"chains\": [{\"table\": \"nat\", \"chain\": \"PREROUTING\",\n \"jumps\": [{\"target\": \"X\", \"comment\": \"x\", \"after\": \"Y\"}]}]}",
        )
        .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("chains[0].jumps[0].after", Some(2)),
            "{e}"
        );
        let e = Config::from_json(r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": "x", "priority": 1}]}]}"#).unwrap_err();
        assert_eq!(e.key, "chains[0].jumps[0].priority", "{e}");
        let e = Config::from_json(r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": "x", "after": ["X"]}]}]}"#).unwrap_err();
        assert_eq!(e.key, "chains[0].jumps[0].after", "{e}");
        let e = Config::from_json(r#"{"families": ["inet"]}"#).unwrap_err();
        assert_eq!(e.key, "families[0]", "{e}");
        assert!(Config::from_json("{} {}").is_err());
        assert!(Config::from_json("[").is_err());
    }

    #[test]
    fn an_unknown_key_is_named_by_its_whole_path() {
        let e = load_err(&one_jump("priority = 3"));
        assert_eq!(e.key, "chain[0].jump[0].priority", "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    fn harvester_builder() -> ConfigBuilder {
        Config::builder().chain(
            ChainSpec::builder("nat", "PREROUTING").jump(
                JumpSpec::builder("OVN-PREROUTING", "kube-ovn prerouting rules")
                    .after(["cali-PREROUTING"])
                    .before(["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]),
            ),
        )
    }

    #[test]
    fn the_builder_makes_what_the_config_file_makes() {
        assert_eq!(
            harvester_builder().build().unwrap(),
            Config::from_toml(HARVESTER).unwrap()
        );
        let c = harvester_builder()
            .backend(BackendChoice::Legacy)
            .families([Family::Ip6, Family::Ip])
            .comment_encoding(CommentEncoding::Userdata)
            .xtables_lock_timeout(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(c.backend(), BackendChoice::Legacy);
        assert_eq!(c.families(), [Family::Ip6, Family::Ip]);
        assert_eq!(c.xtables_lock_timeout(), Duration::ZERO);
        assert_eq!(
            c.chains()[0].jumps()[0].encoding(),
            CommentEncoding::Userdata
        );
        assert!(c.chain("nat", "PREROUTING").is_some());
        assert!(c.chain("nat", "OUTPUT").is_none());
    }

    #[test]
    fn the_builder_is_validated_like_the_config_file() {
        let chain = |j: JumpBuilder| {
            Config::builder()
                .chain(ChainSpec::builder("nat", "PREROUTING").jump(j))
                .build()
                .unwrap_err()
        };
        let e = chain(JumpSpec::builder("OVN-PREROUTING", ""));
        assert_eq!((e.key.as_str(), e.line), ("chain[0].jump[0].comment", None));
        let e = chain(JumpSpec::builder("bad name", "x"));
        assert_eq!(e.key, "chain[0].jump[0].target");
        let e = chain(JumpSpec::builder("A", "x").after(["B"]).before(["B"]));
        assert_eq!(e.key, "chain[0].jump[0].before");
        let e =
            chain(JumpSpec::builder("A", &*"x".repeat(254)).encoding(CommentEncoding::Userdata));
        assert!(e.message.contains("at most 253"), "{e}");
        let e = Config::builder()
            .chain(
                ChainSpec::builder("nat", "PREROUTING")
                    .jump(JumpSpec::builder("A", "a").before(["B"]))
                    .jump(JumpSpec::builder("B", "b").before(["A"])),
            )
            .build()
            .unwrap_err();
        assert!(e.message.contains("cycle"), "{e}");
        let e = Config::builder()
            .chain(ChainSpec::builder("nat", "FORWARD").jump(JumpSpec::builder("A", "a")))
            .build()
            .unwrap_err();
        assert_eq!(e.key, "chain[0].chain");
        let e = harvester_builder().families([]).build().unwrap_err();
        assert_eq!(e.key, "families");
        let e = harvester_builder()
            .families([Family::Ip, Family::Ip])
            .build()
            .unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        let d = DaemonConfig {
            resync_interval: Duration::ZERO,
            ..DaemonConfig::default()
        };
        let e = harvester_builder().daemon(d).build().unwrap_err();
        assert_eq!(e.key, "daemon.resync_interval");
        let e = Config::builder()
            .chain(ChainSpec::builder("nat", "PREROUTING"))
            .build()
            .unwrap_err();
        assert!(e.message.contains("nothing to manage"), "{e}");
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
