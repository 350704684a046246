//! The desired state: which jumps jumpset owns, where they go, and how the daemon runs.
//!
//! A [`Config`] is made in one of three ways and validated by ONE function whichever:
//! read from the config file ([`Config::load`], [`Config::from_toml`]), from its JSON
//! form ([`Config::from_json`]), or built in code ([`Config::builder`]). Every error
//! names the key (`chain[0].jump[1].comment`), the file it is in and, for TOML, the line.
//! Unknown keys, wrong types, names iptables cannot hold and cycles among `after`/`before`
//! are all errors: a config that validates is one the planner can honour. The validated
//! types have no public fields, so nothing can skip the validation.
//!
//! Several agents can declare jumps without sharing one file: a [`Fragment`] speaks for
//! one agent — a drop-in file `jumpset.d/NAME.toml` beside the config file (merged in
//! name order, as sysctl.d and systemd drop-ins are) or a claim made through the daemon's
//! local API. Jumps for the same table and chain merge into one chain; constraints that
//! contradict each other across fragments are refused, naming both.
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

mod claims;
mod file;
mod json;
mod validate;

#[cfg(test)]
mod tests;

pub use claims::ClaimError;
pub use file::{claim_path, config_sources, parse_duration, read_config_file, MAX_CONFIG_BYTES};

use crate::snapshot::{CommentEncoding, Family};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/jumpset/jumpset.toml";

/// The directory of drop-in fragments, beside the config file.
pub const DROPIN_DIR: &str = "jumpset.d";

/// Where the daemon keeps its state (the agents' API claims) when
/// `daemon.state_dir` is not given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jumpset";

/// Where the daemon serves its local API when `daemon.api_socket` is not given.
pub const DEFAULT_API_SOCKET: &str = "/run/jumpset/jumpset.sock";

/// The longest path a Unix socket can be bound at (`sun_path` holds 108 bytes with the
/// terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

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

/// The validated config. Made by [`Config::load`], [`Config::from_toml`],
/// [`Config::from_json`] or [`Config::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) backend: BackendChoice,
    pub(crate) families: Vec<Family>,
    pub(crate) xtables_lock_timeout: Duration,
    pub(crate) expect_anchors: bool,
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
    pub(crate) origin: Origin,
}

/// Where a jump was declared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Origin {
    /// The main config (file, JSON or builder).
    Main,
    /// A drop-in fragment file, speaking for `agent`.
    DropIn {
        /// The file.
        path: PathBuf,
        /// The agent it speaks for.
        agent: String,
    },
    /// A claim made through the daemon's local API by `agent`.
    Api {
        /// The agent.
        agent: String,
    },
}

impl Origin {
    /// The agent the jump was declared for, if it came from a fragment.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Origin::Main => None,
            Origin::DropIn { agent, .. } | Origin::Api { agent } => Some(agent),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Main => f.write_str("the main config"),
            Origin::DropIn { path, .. } => write!(f, "{}", path.display()),
            Origin::Api { agent } => write!(f, "the API claim of agent {agent:?}"),
        }
    }
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
    /// Where the daemon keeps the agents' API claims (read by every command too).
    pub state_dir: PathBuf,
    /// The Unix socket of the local API (`docs/api.md`); `None` turns it off.
    pub api_socket: Option<PathBuf>,
    /// The group whose members may use the local API besides root (`None`: root only).
    pub api_group: Option<ApiGroup>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            resync_interval: Duration::from_secs(30),
            metrics_listen: Some(([127, 0, 0, 1], 10296).into()),
            cleanup_on_exit: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            api_socket: Some(PathBuf::from(DEFAULT_API_SOCKET)),
            api_group: None,
        }
    }
}

/// `daemon.api_group`: a group by name (looked up in `/etc/group` when a request comes)
/// or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiGroup {
    /// A group name, e.g. `jumpset`.
    Name(String),
    /// A numeric gid.
    Id(u32),
}

impl fmt::Display for ApiGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiGroup::Name(n) => f.write_str(n),
            ApiGroup::Id(g) => write!(f, "{g}"),
        }
    }
}

impl ApiGroup {
    /// `value` as a group: all digits is a gid, anything else a name (checked: 1 to 32
    /// letters, digits, `.`, `_` or `-`, not starting with `-`, as `groupadd` takes).
    pub fn parse(value: &str) -> Result<ApiGroup, String> {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            return value
                .parse()
                .map(ApiGroup::Id)
                .map_err(|_| format!("{value:?} is not a gid (0 to 4294967295)"));
        }
        let ok = !value.is_empty()
            && value.len() <= 32
            && !value.starts_with('-')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(ApiGroup::Name(value.to_string()))
        } else {
            Err(format!(
                "{value:?} is not a group name: use 1 to 32 letters, digits, '.', '_' or '-' (or a numeric gid)"
            ))
        }
    }
}

/// Why `path` cannot be `daemon.api_socket`, if it cannot.
pub(crate) fn socket_path_problem(path: &str) -> Option<String> {
    if !Path::new(path).is_absolute() {
        Some(format!(
            "{path:?} is not an absolute path; \"\" turns the local API off"
        ))
    } else if path.len() > MAX_SOCKET_PATH {
        Some(format!(
            "{path:?} is {} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            path.len()
        ))
    } else if path.contains('\0') {
        Some("cannot hold a NUL character".to_string())
    } else {
        None
    }
}

/// A config that cannot be used: which key, in which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct SpecError {
    /// The key path, e.g. `chain[0].jump[1].after`; empty for whole-file errors.
    pub key: String,
    /// 1-based line, when known (configs read from TOML).
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
    /// The file (or API claim) the key is in, when not the main config text.
    pub location: Option<String>,
    /// When the error is a contradiction between declarations (a cycle, a shared
    /// comment or target): the constraint and what it contradicts.
    pub contradiction: Option<Box<Contradiction>>,
}

/// A declaration that contradicts others: what the daemon's API answers a refused claim
/// with (409, `docs/api.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contradiction {
    /// The key of the declaration's constraint in its own spelling, e.g.
    /// `chains[0].jumps[0].after`, or `.target` / `.comment` for a shared one.
    pub constraint: String,
    /// Where the declarations it contradicts were made (never its own source).
    pub with: Vec<Origin>,
    /// The chain names of the cycle, first = last; empty for a shared comment or target.
    pub cycle: Vec<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.location {
            write!(f, "{s}: ")?;
        }
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
            location: None,
            contradiction: None,
        }
    }

    /// The same error, said to be in `source` (a file path or an API claim).
    #[must_use]
    pub fn in_source(mut self, source: impl Into<String>) -> Self {
        if self.location.is_none() {
            self.location = Some(source.into());
        }
        self
    }
}

pub(crate) fn err(
    key: impl Into<String>,
    line: Option<usize>,
    message: impl Into<String>,
) -> SpecError {
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

    /// `xtables_lock_timeout` (zero: one try of the lock, no wait).
    pub fn xtables_lock_timeout(&self) -> Duration {
        self.xtables_lock_timeout
    }

    /// `expect_anchors`: an absent anchor (a chain named in `after`/`before` that no rule
    /// of the managed chain jumps to) is drift for `check` and the daemon's health.
    pub fn expect_anchors(&self) -> bool {
        self.expect_anchors
    }

    /// The managed chains: those of the main config first, then those only fragments
    /// declare, in the order they were first declared.
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

    /// The owned jumps: the main config's, then each fragment's in order.
    pub fn jumps(&self) -> &[JumpSpec] {
        &self.jumps
    }

    /// The anchors: the chains named in the jumps' `after` and `before` that no owned
    /// jump targets — other agents' jumps, which jumpset reads and never writes — in the
    /// order first named.
    pub fn anchors(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for j in &self.jumps {
            for a in j.after.iter().chain(&j.before) {
                let owned = self.jumps.iter().any(|o| o.target == *a);
                if !owned && !out.contains(&a.as_str()) {
                    out.push(a);
                }
            }
        }
        out
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

    /// Where it was declared.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

// ---- builders: a draft of the config, with the TOML line of each value when known ----

/// A value and the line of the config file it came from (none when built in code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) line: Option<usize>,
}

impl<T> At<T> {
    pub(crate) fn new(value: T) -> Self {
        At { value, line: None }
    }
}

/// How the keys of chains and jumps are spelled in error paths: `chain[0].jump[1]` as in
/// the TOML file, `chains[0].jumps[1]` as in the JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Keys {
    #[default]
    Toml,
    Json,
}

impl Keys {
    pub(crate) fn chain(self) -> &'static str {
        match self {
            Keys::Toml => "chain",
            Keys::Json => "chains",
        }
    }

    pub(crate) fn jump(self) -> &'static str {
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
    pub(crate) keys: Keys,
    pub(crate) backend: BackendChoice,
    pub(crate) families: Option<At<Vec<At<Family>>>>,
    pub(crate) comment_encoding: CommentEncoding,
    pub(crate) xtables_lock_timeout: Option<Duration>,
    pub(crate) expect_anchors: bool,
    pub(crate) chains: Vec<ChainBuilder>,
    pub(crate) daemon: DaemonConfig,
    pub(crate) resync_line: Option<usize>,
    pub(crate) source: Option<String>,
    pub(crate) fragments: Vec<Fragment>,
}

/// Builds one [`ChainSpec`] of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ChainBuilder {
    pub(crate) table: At<String>,
    pub(crate) chain: At<String>,
    pub(crate) jumps: Vec<JumpBuilder>,
}

/// Builds one [`JumpSpec`] of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct JumpBuilder {
    pub(crate) target: At<String>,
    pub(crate) comment: At<String>,
    pub(crate) after: Vec<At<String>>,
    pub(crate) before: Vec<At<String>>,
    pub(crate) create_chain: Option<bool>,
    pub(crate) encoding: Option<CommentEncoding>,
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

    /// `comment_encoding`: the default of every jump, fragments' included (default `xt`).
    pub fn comment_encoding(mut self, encoding: CommentEncoding) -> Self {
        self.comment_encoding = encoding;
        self
    }

    /// `xtables_lock_timeout` (default 10 s; zero: one try of the lock, no wait).
    pub fn xtables_lock_timeout(mut self, timeout: Duration) -> Self {
        self.xtables_lock_timeout = Some(timeout);
        self
    }

    /// `expect_anchors` (default false): an absent anchor is drift.
    pub fn expect_anchors(mut self, expect: bool) -> Self {
        self.expect_anchors = expect;
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

    /// One agent's fragment, merged after the main config and the fragments added before.
    pub fn fragment(mut self, fragment: Fragment) -> Self {
        self.fragments.push(fragment);
        self
    }

    /// Validate and build: any invalid fragment, or one whose constraints contradict
    /// another's, is an error (what `jumpset validate`, `plan` and `apply` do).
    pub fn build(self) -> Result<Config, SpecError> {
        validate::strict(self)
    }

    /// Validate and build what can be built: the main config must be valid (else the
    /// error), but a fragment that is invalid or contradicts the main config or an
    /// earlier fragment is left out and returned with its error (what the daemon does:
    /// it keeps the rest running and reports the fragment).
    pub fn build_lenient(self) -> Result<(Config, Vec<Rejected>), SpecError> {
        validate::lenient(self)
    }
}

/// A fragment left out of a config, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// The fragment's agent.
    pub agent: String,
    /// Where it came from.
    pub origin: Origin,
    /// Why it was left out.
    pub error: SpecError,
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

/// One agent's declarations, beside the main config: a drop-in file
/// (`jumpset.d/NAME.toml`, [`Fragment::from_toml`]) or a claim made through the daemon's
/// local API ([`Fragment::from_json`]). It holds chains and jumps only; backend, families
/// and the daemon's settings are the main config's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub(crate) agent: String,
    pub(crate) origin: Origin,
    pub(crate) keys: Keys,
    pub(crate) chains: Vec<ChainBuilder>,
}

impl Fragment {
    /// A fragment built in code for `agent` (an API claim). The agent name is checked
    /// when the config is built.
    pub fn builder(agent: impl Into<String>) -> Fragment {
        let agent = agent.into();
        Fragment {
            origin: Origin::Api {
                agent: agent.clone(),
            },
            agent,
            keys: Keys::Json,
            chains: Vec::new(),
        }
    }

    /// Add a chain and its jumps.
    #[must_use]
    pub fn chain(mut self, chain: ChainBuilder) -> Self {
        self.chains.push(chain);
        self
    }

    /// The agent it speaks for.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether it declares no chain (an agent that handed everything back).
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }
}

/// Why `name` cannot name an agent, if it cannot: 1 to 63 ASCII letters, digits, `.`,
/// `_` or `-`, starting with a letter or digit (it is a URL path segment, a file name
/// and a metric label).
pub fn agent_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (!ok).then(|| {
        format!(
            "{name:?} is not an agent name: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    })
}

/// The agent a drop-in file speaks for by default: its name without a leading number
/// (`10-`, `10_`) and without `.toml` (`10-kube-ovn.toml` → `kube-ovn`).
pub fn agent_of_file(path: &Path) -> String {
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".toml").unwrap_or(&stem);
    let rest = stem.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = if rest.len() < stem.len() {
        rest.trim_start_matches(['-', '_', '.'])
    } else {
        rest
    };
    if rest.is_empty() {
        stem.to_string()
    } else {
        rest.to_string()
    }
}
