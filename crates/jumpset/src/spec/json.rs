//! The JSON forms: a whole config (the C ABI's structured constructor) and an agent's
//! claim (the daemon's local API, and the claims it persists). The keys are those of the
//! config file, with `chains` and `jumps` as lists; errors name the key path in that
//! spelling (`chains[0].jumps[1].after`).

use super::file::{DaemonDraft, RawGroup};
use super::{
    err, parse_duration, At, BackendChoice, ChainBuilder, ConfigBuilder, Fragment, JumpBuilder,
    Keys, Origin, SpecError,
};
use crate::snapshot::{CommentEncoding, Family};
use serde::{Deserialize, Serialize};

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
    expect_anchors: bool,
    #[serde(default)]
    chains: Vec<JsonChain>,
    daemon: Option<JsonDaemon>,
}

/// The `[daemon]` table of the JSON form: the same keys, the same values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDaemon {
    resync_interval: Option<String>,
    metrics_listen: Option<String>,
    cleanup_on_exit: Option<bool>,
    state_dir: Option<String>,
    api_socket: Option<String>,
    api_group: Option<RawGroup>,
}

/// An agent's claim: its chains (the body of `PUT /v1/agents/{agent}`), and in a persisted
/// claim the agent's name.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct JsonClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(default)]
    chains: Vec<JsonChain>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct JsonChain {
    table: String,
    chain: String,
    #[serde(default)]
    jumps: Vec<JsonJump>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct JsonJump {
    target: String,
    comment: String,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    before: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    create_chain: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment_encoding: Option<CommentEncoding>,
}

/// Deserialize JSON text, naming the key path and the line of what is wrong.
fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." { String::new() } else { key };
        let line = (inner.line() > 0).then_some(inner.line());
        err(key, line, inner.to_string())
    })?;
    de.end()
        .map_err(|e| err("", Some(e.line()), e.to_string()))?;
    Ok(v)
}

fn chains(raw: Vec<JsonChain>) -> Vec<ChainBuilder> {
    raw.into_iter()
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
        .collect()
}

impl super::Config {
    /// Parse and validate the JSON form of a config: the keys of the config file, with
    /// `chains` and `jumps` as lists (`{"backend": "nft", "chains": [{"table": "nat",
    /// "chain": "PREROUTING", "jumps": [{"target": ..., "comment": ..., "after": [...]}]}]}`).
    /// Errors name the key path in that form (`chains[0].jumps[1].after`).
    pub fn from_json(text: &str) -> Result<super::Config, SpecError> {
        let raw: JsonConfig = parse_json(text)?;
        let xtables_lock_timeout = match &raw.xtables_lock_timeout {
            None => None,
            Some(s) => Some(parse_duration(s).map_err(|m| err("xtables_lock_timeout", None, m))?),
        };
        let (daemon, _) = match raw.daemon {
            None => DaemonDraft::default(),
            Some(d) => DaemonDraft {
                resync_interval: d.resync_interval.map(At::new),
                metrics_listen: d.metrics_listen.map(At::new),
                cleanup_on_exit: d.cleanup_on_exit,
                state_dir: d.state_dir.map(At::new),
                api_socket: d.api_socket.map(At::new),
                api_group: d.api_group.map(At::new),
            },
        }
        .build()?;
        ConfigBuilder {
            keys: Keys::Json,
            backend: raw.backend,
            families: raw
                .families
                .map(|f| At::new(f.into_iter().map(At::new).collect())),
            comment_encoding: raw.comment_encoding,
            xtables_lock_timeout,
            expect_anchors: raw.expect_anchors,
            chains: chains(raw.chains),
            daemon,
            resync_line: None,
            source: None,
            fragments: Vec::new(),
        }
        .build()
    }
}

impl Fragment {
    /// The claim `agent` makes through the daemon's API: `{"chains": [{"table": "nat",
    /// "chain": "PREROUTING", "jumps": [...]}]}` (the body of `PUT /v1/agents/{agent}`).
    /// Only parsed here; it is validated with the config it joins.
    pub fn from_json(agent: &str, text: &str) -> Result<Fragment, SpecError> {
        let raw: JsonClaim = parse_json(text)?;
        if let Some(a) = &raw.agent {
            if a != agent {
                return Err(err(
                    "agent",
                    None,
                    format!("the body speaks for {a:?} but the request is for {agent:?}"),
                ));
            }
        }
        Ok(Fragment::builder(agent).with_chains(chains(raw.chains)))
    }

    /// A claim persisted by the daemon (`{"agent": ..., "chains": [...]}`), for `agent`.
    pub(crate) fn from_claim(agent: &str, text: &str) -> Result<Fragment, SpecError> {
        Fragment::from_json(agent, text)
    }

    fn with_chains(mut self, chains: Vec<ChainBuilder>) -> Fragment {
        self.chains = chains;
        self
    }

    /// The fragment in its JSON form, `{"agent": ..., "chains": [...]}`: what the daemon
    /// persists and `GET /v1/agents/{agent}` returns.
    pub fn to_json(&self) -> serde_json::Value {
        let claim = JsonClaim {
            agent: Some(self.agent.clone()),
            chains: self
                .chains
                .iter()
                .map(|c| JsonChain {
                    table: c.table.value.clone(),
                    chain: c.chain.value.clone(),
                    jumps: c
                        .jumps
                        .iter()
                        .map(|j| JsonJump {
                            target: j.target.value.clone(),
                            comment: j.comment.value.clone(),
                            after: j.after.iter().map(|a| a.value.clone()).collect(),
                            before: j.before.iter().map(|b| b.value.clone()).collect(),
                            create_chain: j.create_chain,
                            comment_encoding: j.encoding,
                        })
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_value(claim).unwrap_or(serde_json::Value::Null)
    }

    /// Whether this is an API claim (not a drop-in file).
    pub fn is_claim(&self) -> bool {
        matches!(self.origin, Origin::Api { .. })
    }
}

impl super::Config {
    /// The API claim of `agent` in force in this config, in the body's shape with the
    /// defaults filled in (`{"agent": ..., "chains": [...]}` with `after`, `before`,
    /// `create_chain` and `comment_encoding` on every jump); `None` when no jump of the
    /// config comes from it.
    pub fn claim_json(&self, agent: &str) -> Option<serde_json::Value> {
        let mine = |o: &Origin| matches!(o, Origin::Api { agent: a } if a == agent);
        let chains: Vec<JsonChain> = self
            .chains
            .iter()
            .filter(|c| c.jumps.iter().any(|j| mine(&j.origin)))
            .map(|c| JsonChain {
                table: c.table.clone(),
                chain: c.chain.clone(),
                jumps: c
                    .jumps
                    .iter()
                    .filter(|j| mine(&j.origin))
                    .map(|j| JsonJump {
                        target: j.target.clone(),
                        comment: j.comment.clone(),
                        after: j.after.clone(),
                        before: j.before.clone(),
                        create_chain: Some(j.create_chain),
                        comment_encoding: Some(j.encoding),
                    })
                    .collect(),
            })
            .collect();
        if chains.is_empty() {
            return None;
        }
        serde_json::to_value(JsonClaim {
            agent: Some(agent.to_string()),
            chains,
        })
        .ok()
    }
}
