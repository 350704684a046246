//! The CLI's commands as library functions: each returns the JSON value, the text and the
//! exit code; the binary only parses arguments and prints. The C ABI uses the same code.
//!
//! Exit codes (DESIGN.md): 0 success, 1 drift (`check`), 2 bad usage or config, 3 missing
//! privilege, 4 kernel error, 5 conflict.

use crate::backend::nft::NftBackend;
use crate::backend::Backend;
use crate::detect::{Choice, HostVerdict};
use crate::reconcile::{self, Goal};
use crate::report;
use crate::snapshot::Family;
use crate::spec::{BackendChoice, ChainSpec, Config};
use serde_json::{json, Map, Value};

/// Success.
pub const EXIT_OK: i32 = 0;
/// `check`: the chain needs changes.
pub const EXIT_DRIFT: i32 = 1;
/// Bad usage or bad config.
pub const EXIT_USAGE: i32 = 2;
/// Missing privilege.
pub const EXIT_PRIVILEGE: i32 = 3;
/// The kernel refused or failed.
pub const EXIT_KERNEL: i32 = 4;
/// The declared order cannot be met without moving rules jumpset does not own.
pub const EXIT_CONFLICT: i32 = 5;

/// A command that could not run: its exit code and the message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CmdError {
    /// Exit code.
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

impl CmdError {
    /// An error with this exit code.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CmdError {
            code,
            message: message.into(),
        }
    }

    /// The `--json` form of an error: `{"error": message, "exit_code": code}`.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.message, "exit_code": self.code })
    }
}

/// Parse and validate config text as `--config` does: a bad config is exit 2, with the
/// message the CLI prints (`config: ...`).
pub fn config_from_toml(text: &str) -> Result<Config, CmdError> {
    Config::from_toml(text).map_err(|e| CmdError::new(EXIT_USAGE, format!("config: {e}")))
}

/// What to act on: the config with command-line overrides applied.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The backend to use.
    pub backend: BackendChoice,
    /// The families to manage.
    pub families: Vec<Family>,
}

impl Selection {
    /// The config's choices, overridden by flags that were given (an absent flag never
    /// overrides).
    pub fn new(
        cfg: &Config,
        backend: Option<BackendChoice>,
        families: Option<Vec<Family>>,
    ) -> Self {
        Selection {
            backend: backend.unwrap_or(cfg.backend),
            families: families.unwrap_or_else(|| cfg.families.clone()),
        }
    }
}

/// Fail with exit 3 unless the process holds `cap` in its effective set.
pub fn require_capability(cap: caps::Capability, why: &str) -> Result<(), CmdError> {
    match caps::has_cap(None, caps::CapSet::Effective, cap) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CmdError::new(
            EXIT_PRIVILEGE,
            format!("jumpset needs {cap} {why}; run it as root or grant the capability (setcap, or AmbientCapabilities= in a systemd unit)"),
        )),
        Err(e) => Err(CmdError::new(
            EXIT_PRIVILEGE,
            format!("cannot read this process's capabilities: {e}"),
        )),
    }
}

/// Open the selected backend (`cfg` supplies backend settings such as the xtables lock
/// timeout).
pub fn open_backend(choice: BackendChoice, cfg: &Config) -> Result<Box<dyn Backend>, CmdError> {
    match choice {
        BackendChoice::Nft => {
            require_capability(caps::Capability::CAP_NET_ADMIN, "to talk to nf_tables")?;
            let b = NftBackend::open().map_err(|e| CmdError::new(e.exit_code(), e.to_string()))?;
            Ok(Box::new(b))
        }
        BackendChoice::Legacy => {
            require_capability(
                caps::Capability::CAP_NET_ADMIN,
                "to read and replace x_tables tables",
            )?;
            require_capability(
                caps::Capability::CAP_NET_RAW,
                "to open the raw socket x_tables is reached through",
            )?;
            let b = crate::backend::legacy::LegacyBackend::open(cfg.xtables_lock_timeout)
                .map_err(|e| CmdError::new(e.exit_code(), e.to_string()))?;
            Ok(Box::new(b))
        }
        BackendChoice::Auto => {
            let host = detect_host()?;
            match host.backend {
                Some(Choice::Nft) => open_backend(BackendChoice::Nft, cfg),
                Some(Choice::Legacy) => open_backend(BackendChoice::Legacy, cfg),
                None => Err(CmdError::new(
                    EXIT_USAGE,
                    format!(
                        "--backend auto: the host is {} and jumpset will not guess; pass --backend nft or --backend legacy.\n  {}",
                        serde_json::to_value(host.mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                        host.evidence.join("\n  ")
                    ),
                )),
            }
        }
    }
}

/// Classify the host (read-only), needing CAP_NET_ADMIN (+ CAP_NET_RAW for legacy tables).
pub fn detect_host() -> Result<HostVerdict, CmdError> {
    require_capability(caps::Capability::CAP_NET_ADMIN, "to read nf_tables")?;
    crate::detect::detect_host().map_err(|e| CmdError::new(e.exit_code(), e.to_string()))
}

/// `jumpset detect`: the host's mode, the backend auto would use, and the evidence.
pub fn detect() -> Result<Output, CmdError> {
    let host = detect_host()?;
    let json = serde_json::to_value(&host).unwrap_or(Value::Null);
    let word = |v: &Value| v.as_str().unwrap_or("none").to_string();
    let mut text = format!(
        "mode: {}\nbackend for --backend auto: {}\n",
        word(&json["mode"]),
        json["backend"]
            .as_str()
            .unwrap_or("none (jumpset will not choose)")
    );
    for (family, v) in &host.families {
        text.push_str(&format!(
            "{family}: {}{}\n",
            serde_json::to_value(v.mode)
                .map(|m| word(&m))
                .unwrap_or_default(),
            v.backend
                .map(|b| format!(
                    " (auto: {})",
                    serde_json::to_value(b)
                        .map(|m| word(&m))
                        .unwrap_or_default()
                ))
                .unwrap_or_default()
        ));
    }
    for e in &host.evidence {
        text.push_str(&format!("  - {e}\n"));
    }
    Ok(Output {
        json,
        text,
        code: EXIT_OK,
    })
}

/// The result of one command over every managed chain and family.
#[derive(Debug, Clone)]
pub struct Output {
    /// The JSON object of DESIGN.md.
    pub json: Value,
    /// The human-readable form.
    pub text: String,
    /// The exit code.
    pub code: i32,
}

/// Combine exit codes: privilege and kernel errors first, then conflict, then drift.
fn worse(a: i32, b: i32) -> i32 {
    let rank = |c: i32| match c {
        EXIT_OK => 0,
        EXIT_DRIFT => 1,
        EXIT_CONFLICT => 2,
        EXIT_KERNEL => 3,
        EXIT_PRIVILEGE => 4,
        _ => 5,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

type PerChain<'a> =
    dyn FnMut(&mut dyn Backend, Family, &ChainSpec) -> Result<(Value, String, i32), CmdError> + 'a;

/// Run `each` on every (chain, family) — each its own transaction, so a failure in one
/// never blocks another — and combine: one object for one chain in one family;
/// `families: {ip, ip6}` when both are managed; `chains: [...]` for several chains.
fn over_chains(cfg: &Config, sel: &Selection, each: &mut PerChain<'_>) -> Result<Output, CmdError> {
    let mut backend = open_backend(sel.backend, cfg)?;
    let mut code = EXIT_OK;
    let mut text = String::new();
    let mut chains = Vec::new();
    for spec in &cfg.chains {
        let mut fams = Map::new();
        for &family in &sel.families {
            let (mut v, t, c) = match each(backend.as_mut(), family, spec) {
                Ok(r) => r,
                Err(e) => (
                    json!({ "family": family.name(), "table": spec.table, "chain": spec.chain, "error": e.message }),
                    format!(
                        "{family} {} {}: error: {}\n",
                        spec.table, spec.chain, e.message
                    ),
                    e.code,
                ),
            };
            if let Some(m) = v.as_object_mut() {
                m.insert("backend".into(), backend.name().into());
            }
            code = worse(code, c);
            text.push_str(&t);
            fams.insert(family.name().into(), v);
        }
        chains.push(if fams.len() == 1 {
            fams.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null)
        } else {
            json!({ "backend": backend.name(), "table": spec.table, "chain": spec.chain, "families": fams })
        });
    }
    let json = if chains.len() == 1 {
        chains.pop().unwrap_or(Value::Null)
    } else {
        json!({ "backend": backend.name(), "chains": chains })
    };
    Ok(Output { json, text, code })
}

fn backend_err(e: crate::backend::BackendError) -> CmdError {
    CmdError::new(e.exit_code(), e.to_string())
}

/// `jumpset status`: each rule, its owner, in place or not.
pub fn status(cfg: &Config, sel: &Selection) -> Result<Output, CmdError> {
    over_chains(cfg, sel, &mut |b, family, spec| {
        let snap = b
            .read(family, &spec.table, &spec.chain)
            .map_err(backend_err)?;
        let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
        Ok((
            report::status_json(b.name(), &snap, spec, &plan),
            report::status_text(&snap, spec, &plan),
            EXIT_OK,
        ))
    })
}

/// `jumpset check`: 0 converged, 1 drift, 5 converged as far as a conflict allows.
pub fn check(cfg: &Config, sel: &Selection) -> Result<Output, CmdError> {
    over_chains(cfg, sel, &mut |b, family, spec| {
        let snap = b
            .read(family, &spec.table, &spec.chain)
            .map_err(backend_err)?;
        let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
        let (code, word) = if !plan.is_noop() {
            (
                EXIT_DRIFT,
                format!("drift: {} change(s) needed", plan.ops.len()),
            )
        } else if !plan.conflicts.is_empty() {
            (
                EXIT_CONFLICT,
                "as close as the foreign rules allow (conflict)".into(),
            )
        } else {
            (EXIT_OK, "converged".into())
        };
        let text = format!("{family} {} {}: {word}\n", spec.table, spec.chain);
        Ok((report::plan_json(&snap, spec, &plan), text, code))
    })
}

/// `jumpset plan`: what `apply` would do; exit 0 either way (errors aside).
pub fn plan(cfg: &Config, sel: &Selection, goal: Goal) -> Result<Output, CmdError> {
    over_chains(cfg, sel, &mut |b, family, spec| {
        let snap = b
            .read(family, &spec.table, &spec.chain)
            .map_err(backend_err)?;
        let plan = reconcile::plan_for(goal, &snap, spec);
        let mut text = format!(
            "# {family} {} {}: {}\n",
            spec.table,
            spec.chain,
            match plan.ops.len() {
                0 => "nothing to do".to_string(),
                n => format!("{n} change(s), one transaction"),
            }
        );
        for l in report::plan_lines(&snap, spec, &plan).into_iter().chain(
            report::conflict_lines(&plan)
                .into_iter()
                .map(|c| format!("# {c}")),
        ) {
            text.push_str(&l);
            text.push('\n');
        }
        Ok((report::plan_json(&snap, spec, &plan), text, EXIT_OK))
    })
}

/// `jumpset apply` / `jumpset cleanup`: one reconcile per chain and family.
pub fn apply(cfg: &Config, sel: &Selection, goal: Goal) -> Result<Output, CmdError> {
    over_chains(cfg, sel, &mut |b, family, spec| {
        let o = reconcile::reconcile(b, family, spec, goal)
            .map_err(|e| CmdError::new(e.exit_code(), e.to_string()))?;
        let mut text = format!("{family} {} {}: ", spec.table, spec.chain);
        if o.committed {
            text.push_str(&format!(
                "{} change(s) committed in one transaction (generation {} -> {}{})\n",
                o.plan.ops.len(),
                o.generation_before,
                o.generation_after,
                match o.retries {
                    0 => String::new(),
                    n => format!(", re-planned {n} time(s) after concurrent writes"),
                }
            ));
            for l in report::plan_lines(&o.before, spec, &o.plan) {
                text.push_str(&format!("  {l}\n"));
            }
        } else {
            text.push_str("nothing to do\n");
        }
        for c in report::conflict_lines(&o.plan) {
            text.push_str(&format!("  {c}\n"));
        }
        let code = if o.plan.conflicts.is_empty() {
            EXIT_OK
        } else {
            EXIT_CONFLICT
        };
        Ok((report::outcome_json(&o, spec), text, code))
    })
}
