//! The config file, its drop-in fragments and the persisted API claims: read safely,
//! parsed strictly (every parse error names the key path and the line).

use super::{
    agent_of_file, err, socket_path_problem, ApiGroup, At, BackendChoice, ChainBuilder, Config,
    ConfigBuilder, DaemonConfig, Fragment, JumpBuilder, Keys, Origin, Rejected, SpecError,
    DROPIN_DIR,
};
use crate::snapshot::{CommentEncoding, Family};
use serde::Deserialize;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The largest config file (or fragment, or claim) jumpset reads: a config holds a few
/// dozen jumps; anything much larger is a mistake or an attack on a root daemon.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Read a config file as a root daemon should: only a regular file (a symlink to one is
/// followed, as ConfigMap mounts need; a FIFO, a device or a directory is refused without
/// blocking), at most [`MAX_CONFIG_BYTES`], not writable by other users and owned by root
/// or by the user running jumpset (writing jumpset's config is as good as holding
/// CAP_NET_ADMIN), valid UTF-8.
pub fn read_config_file(path: &Path) -> Result<String, SpecError> {
    let fail = |why: String| err("", None, why).in_source(path.display().to_string());
    // O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: never a terminal.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| fail(format!("cannot read config: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read config: {e}")))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "is not a regular file ({}); jumpset reads its config only from a regular file",
            file_kind(&meta)
        )));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "is {} bytes; a config is at most {MAX_CONFIG_BYTES} bytes",
            meta.len()
        )));
    }
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(fail(format!(
            "is owned by uid {}, neither root nor the user jumpset runs as (uid {euid}); whoever can write it controls the node's chains: chown it",
            meta.uid()
        )));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(fail(format!(
            "is writable by every user (mode {:o}); whoever can write it controls the node's chains: chmod o-w it",
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read config: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "grew beyond {MAX_CONFIG_BYTES} bytes while being read"
        )));
    }
    String::from_utf8(bytes).map_err(|e| fail(format!("is not UTF-8 text: {e}")))
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
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

// ---- the TOML forms ----

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
    expect_anchors: bool,
    #[serde(default)]
    chain: Vec<RawChain>,
    daemon: Option<RawDaemon>,
}

/// A drop-in fragment: an agent's name and its chains, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFragment {
    agent: Option<Spanned<String>>,
    #[serde(default)]
    chain: Vec<RawChain>,
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
    state_dir: Option<Spanned<String>>,
    api_socket: Option<Spanned<String>>,
    api_group: Option<Spanned<RawGroup>>,
}

/// `daemon.api_group` as written: a gid or a name.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(crate) enum RawGroup {
    Id(u32),
    Name(String),
}

/// The `[daemon]` keys as read from TOML or JSON, with the line of each when known.
#[derive(Default)]
pub(crate) struct DaemonDraft {
    pub(crate) resync_interval: Option<At<String>>,
    pub(crate) metrics_listen: Option<At<String>>,
    pub(crate) cleanup_on_exit: Option<bool>,
    pub(crate) state_dir: Option<At<String>>,
    pub(crate) api_socket: Option<At<String>>,
    pub(crate) api_group: Option<At<RawGroup>>,
}

impl DaemonDraft {
    /// The `[daemon]` table it describes, checked (and the line of `resync_interval`).
    pub(crate) fn build(self) -> Result<(DaemonConfig, Option<usize>), SpecError> {
        let mut daemon = DaemonConfig::default();
        let mut resync_line = None;
        if let Some(s) = &self.resync_interval {
            resync_line = s.line;
            daemon.resync_interval = parse_duration(&s.value)
                .map_err(|m| err("daemon.resync_interval", resync_line, m))?;
        }
        if let Some(s) = &self.metrics_listen {
            daemon.metrics_listen = if s.value.is_empty() {
                None
            } else {
                Some(s.value.parse().map_err(|_| {
                    err(
                        "daemon.metrics_listen",
                        s.line,
                        format!(
                            "{:?} is not \"host:port\" (e.g. \"127.0.0.1:10296\"); \"\" turns metrics off",
                            s.value
                        ),
                    )
                })?)
            };
        }
        if let Some(b) = self.cleanup_on_exit {
            daemon.cleanup_on_exit = b;
        }
        if let Some(s) = &self.state_dir {
            if !Path::new(&s.value).is_absolute() {
                return Err(err(
                    "daemon.state_dir",
                    s.line,
                    format!("{:?} is not an absolute path", s.value),
                ));
            }
            daemon.state_dir = PathBuf::from(&s.value);
        }
        if let Some(s) = &self.api_socket {
            daemon.api_socket = if s.value.is_empty() {
                None
            } else {
                if let Some(p) = socket_path_problem(&s.value) {
                    return Err(err("daemon.api_socket", s.line, p));
                }
                Some(PathBuf::from(&s.value))
            };
        }
        if let Some(g) = &self.api_group {
            daemon.api_group = Some(match &g.value {
                RawGroup::Id(id) => ApiGroup::Id(*id),
                RawGroup::Name(n) => {
                    ApiGroup::parse(n).map_err(|m| err("daemon.api_group", g.line, m))?
                }
            });
        }
        Ok((daemon, resync_line))
    }
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

    fn chains(&self, raw: &[RawChain]) -> Vec<ChainBuilder> {
        raw.iter()
            .map(|rc| ChainBuilder {
                table: self.at(&rc.table),
                chain: self.at(&rc.chain),
                jumps: rc
                    .jump
                    .iter()
                    .map(|rj| JumpBuilder {
                        target: self.at(&rj.target),
                        comment: self.at(&rj.comment),
                        after: rj.after.iter().map(|a| self.at(a)).collect(),
                        before: rj.before.iter().map(|b| self.at(b)).collect(),
                        create_chain: rj.create_chain,
                        encoding: rj.comment_encoding,
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Deserialize TOML text, naming the key path and the line of what is wrong.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let lines = Lines(text);
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let line = e.span().map(|s| lines.at_offset(s.start));
        err("", line, e.message().trim_end().to_string())
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map(|s| lines.at_offset(s.start));
        let key = if key == "." { String::new() } else { key };
        err(key, line, inner.message().trim_end().to_string())
    })
}

impl Config {
    /// Read and validate the config file at `path`, with its drop-in fragments
    /// (`jumpset.d/*.toml` beside it, in name order) and the agents' claims the daemon
    /// persisted (`daemon.state_dir`): what `jumpset validate`, `status`, `check`,
    /// `plan`, `apply` and `cleanup` act on. Any invalid or contradicting fragment is an
    /// error naming it.
    pub fn load(path: &Path) -> Result<Config, SpecError> {
        ConfigBuilder::load(path)?.build()
    }

    /// [`Config::load`] as the daemon does it: a fragment that is invalid or contradicts
    /// the main file or an earlier fragment is left out and returned with its error; the
    /// main file must be valid.
    pub fn load_lenient(path: &Path) -> Result<(Config, Vec<Rejected>), SpecError> {
        let (builder, mut unreadable) = ConfigBuilder::load_parts(path)?;
        let (config, mut rejected) = builder.build_lenient()?;
        unreadable.append(&mut rejected);
        Ok((config, unreadable))
    }

    /// Parse and validate config text (the format of the config file, without drop-ins).
    pub fn from_toml(text: &str) -> Result<Config, SpecError> {
        ConfigBuilder::from_toml(text)?.build()
    }
}

impl ConfigBuilder {
    /// The config file at `path` with its drop-ins and persisted claims, not yet
    /// validated; any unreadable file is an error.
    fn load(path: &Path) -> Result<ConfigBuilder, SpecError> {
        let (b, unreadable) = Self::load_parts(path)?;
        match unreadable.into_iter().next() {
            Some(r) => Err(r.error),
            None => Ok(b),
        }
    }

    /// The config file at `path` (which must be readable and parse), with every drop-in
    /// and claim that reads and parses; the others are returned as rejected.
    pub(super) fn load_parts(path: &Path) -> Result<(ConfigBuilder, Vec<Rejected>), SpecError> {
        let text = read_config_file(path)?;
        let mut b =
            ConfigBuilder::from_toml(&text).map_err(|e| e.in_source(path.display().to_string()))?;
        b.source = Some(path.display().to_string());
        let mut rejected = Vec::new();
        for p in dropin_files(path)? {
            let origin = Origin::DropIn {
                agent: agent_of_file(&p),
                path: p.clone(),
            };
            match read_config_file(&p).and_then(|t| Fragment::from_toml(&p, &t)) {
                Ok(f) => b.fragments.push(f),
                Err(error) => rejected.push(Rejected {
                    agent: agent_of_file(&p),
                    origin,
                    error: error.in_source(p.display().to_string()),
                }),
            }
        }
        for (agent, p) in claim_files(&b.daemon.state_dir)? {
            match read_config_file(&p).and_then(|t| Fragment::from_claim(&agent, &t)) {
                Ok(f) => b.fragments.push(f),
                Err(error) => rejected.push(Rejected {
                    origin: Origin::Api {
                        agent: agent.clone(),
                    },
                    agent,
                    error: error.in_source(p.display().to_string()),
                }),
            }
        }
        Ok((b, rejected))
    }

    /// The draft a config file describes, not yet validated: parse errors (syntax,
    /// unknown keys, wrong types) name the key path and the line.
    pub(crate) fn from_toml(text: &str) -> Result<ConfigBuilder, SpecError> {
        let raw: RawConfig = parse_toml(text)?;
        let lines = Lines(text);
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
        let (daemon, resync_line) = match &raw.daemon {
            None => (DaemonConfig::default(), None),
            Some(d) => DaemonDraft {
                resync_interval: d.resync_interval.as_ref().map(|s| lines.at(s)),
                metrics_listen: d.metrics_listen.as_ref().map(|s| lines.at(s)),
                cleanup_on_exit: d.cleanup_on_exit,
                state_dir: d.state_dir.as_ref().map(|s| lines.at(s)),
                api_socket: d.api_socket.as_ref().map(|s| lines.at(s)),
                api_group: d.api_group.as_ref().map(|s| lines.at(s)),
            }
            .build()?,
        };
        Ok(ConfigBuilder {
            keys: Keys::Toml,
            backend: raw.backend,
            families,
            comment_encoding: raw.comment_encoding,
            xtables_lock_timeout,
            expect_anchors: raw.expect_anchors,
            chains: lines.chains(&raw.chain),
            daemon,
            resync_line,
            source: None,
            fragments: Vec::new(),
        })
    }
}

impl Fragment {
    /// A drop-in fragment read from `path`: `agent = "..."` (default: the file name
    /// without a leading number and `.toml`) and `[[chain]]` tables as in the config
    /// file. Backend, families and the daemon's settings belong to the main file.
    pub fn from_toml(path: &Path, text: &str) -> Result<Fragment, SpecError> {
        let raw: RawFragment = parse_toml(text).map_err(|mut e| {
            if e.message.starts_with("unknown field") {
                e.message.push_str(
                    "; a drop-in holds `agent` and [[chain]] tables only (backend, families and [daemon] belong to the main file)",
                );
            }
            e.in_source(path.display().to_string())
        })?;
        let lines = Lines(text);
        let agent = raw
            .agent
            .as_ref()
            .map(|a| a.get_ref().clone())
            .unwrap_or_else(|| agent_of_file(path));
        Ok(Fragment {
            origin: Origin::DropIn {
                path: path.to_path_buf(),
                agent: agent.clone(),
            },
            agent,
            keys: Keys::Toml,
            chains: lines.chains(&raw.chain),
        })
    }
}

/// Every file and directory a config at `path` is read from, with the daemon's
/// `state_dir`: the main file, the drop-in directory and its fragments, the claims
/// directory and its claims (missing ones included: their appearance is a change). What
/// the daemon watches to reload on a change, ConfigMap symlink swaps included.
pub fn config_sources(path: &Path, state_dir: &Path) -> Vec<PathBuf> {
    let dropins = path.parent().unwrap_or(Path::new("/")).join(DROPIN_DIR);
    let claims = state_dir.join("claims");
    let mut v = vec![path.to_path_buf(), dropins.clone()];
    v.extend(toml_files(&dropins, "toml").unwrap_or_default());
    v.push(claims.clone());
    v.extend(toml_files(&claims, "json").unwrap_or_default());
    v
}

/// The drop-in files of the config at `path`: `jumpset.d/*.toml` beside it, by name.
/// No directory means no drop-ins.
pub(crate) fn dropin_files(path: &Path) -> Result<Vec<PathBuf>, SpecError> {
    let dir = path.parent().unwrap_or(Path::new("/")).join(DROPIN_DIR);
    toml_files(&dir, "toml")
}

/// Where the daemon persists `agent`'s API claim: `STATE_DIR/claims/AGENT.json`.
pub fn claim_path(state_dir: &Path, agent: &str) -> PathBuf {
    state_dir.join("claims").join(format!("{agent}.json"))
}

/// The persisted API claims in `state_dir`: `claims/AGENT.json`, by name.
pub(crate) fn claim_files(state_dir: &Path) -> Result<Vec<(String, PathBuf)>, SpecError> {
    Ok(toml_files(&state_dir.join("claims"), "json")?
        .into_iter()
        .filter_map(|p| {
            let agent = p.file_stem()?.to_string_lossy().into_owned();
            Some((agent, p))
        })
        .collect())
}

/// The files `*.EXT` of `dir` (not starting with `.`), sorted by name; none when `dir`
/// does not exist.
fn toml_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, SpecError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(err("", None, format!("cannot list the directory: {e}"))
                .in_source(dir.display().to_string()))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| !n.starts_with('.')) && p.extension().is_some_and(|e| e == ext)
        })
        .collect();
    files.sort();
    Ok(files)
}
