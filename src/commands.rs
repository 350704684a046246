//! The commands over the library: each calls [`jumpset::Jumpset`] (or
//! [`jumpset::detect`]) and renders the typed report as JSON (its serde form) and text.

use crate::output::{CmdError, Output, EXIT_OK};
use crate::render;
use jumpset::report::{ExitCode, Report};
use jumpset::Jumpset;
use serde::Serialize;

fn output<T: Serialize + ExitCode>(report: Report<T>, text: impl Fn(&T) -> String) -> Output {
    Output {
        json: serde_json::to_value(&report).unwrap_or_default(),
        text: render::each(&report, text),
        code: report.exit_code(),
    }
}

/// `jumpset status`.
pub fn status(js: &Jumpset) -> Result<Output, CmdError> {
    Ok(output(js.status()?, render::status))
}

/// `jumpset check`.
pub fn check(js: &Jumpset) -> Result<Output, CmdError> {
    Ok(output(js.check()?, render::check))
}

/// `jumpset plan` (`--explain`: with the reasons): exit 0 either way (errors aside).
pub fn plan(js: &Jumpset, explain: bool) -> Result<Output, CmdError> {
    let report = if explain {
        js.plan_explained()?
    } else {
        js.plan()?
    };
    Ok(output(report, render::plan))
}

/// `jumpset explain`: exit 0 (findings are reported, not failed on).
pub fn explain(x: &jumpset::explain::Explanation) -> Output {
    Output {
        json: serde_json::to_value(x).unwrap_or_default(),
        text: render::explain(x),
        code: EXIT_OK,
    }
}

/// `jumpset apply`.
pub fn apply(js: &Jumpset) -> Result<Output, CmdError> {
    Ok(output(js.apply()?, render::apply))
}

/// `jumpset cleanup`.
pub fn cleanup(js: &Jumpset) -> Result<Output, CmdError> {
    Ok(output(js.cleanup()?, render::apply))
}

/// `jumpset wait`: `check` every 100 ms until every chain has converged (exit 0) or
/// `timeout` has passed (the last check's output, exit 1 — or its error). A conflict is
/// as converged as the foreign rules allow: it ends the wait (exit 5).
pub fn wait(js: &Jumpset, timeout: std::time::Duration) -> Result<Output, CmdError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let report = js.check()?;
        let code = report.exit_code();
        let done = code != jumpset::exit::DRIFT;
        if done || std::time::Instant::now() >= deadline {
            let mut out = output(report, render::check);
            if !done {
                out.text.push_str(&format!(
                    "not converged after {} s\n",
                    timeout.as_secs_f64()
                ));
            }
            return Ok(out);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `jumpset detect`.
pub fn detect() -> Result<Output, CmdError> {
    let host = jumpset::detect()?;
    Ok(Output {
        json: serde_json::to_value(&host).unwrap_or_default(),
        text: render::detect(&host),
        code: EXIT_OK,
    })
}

/// `jumpset validate`: the config as loaded (main file, drop-ins, claims), or the error
/// (exit 2, before this is reached).
pub fn validate(cfg: &jumpset::spec::Config) -> Output {
    let mut text = String::new();
    let mut chains = Vec::new();
    for c in cfg.chains() {
        text.push_str(&format!("{} {}:\n", c.table(), c.chain()));
        let mut jumps = Vec::new();
        for j in c.jumps() {
            let by = j.origin().agent();
            text.push_str(&format!(
                "  -j {} ({}){}\n",
                j.target(),
                j.comment(),
                by.map(|a| format!(", declared by {a} in {}", j.origin()))
                    .unwrap_or_default()
            ));
            jumps.push(serde_json::json!({
                "target": j.target(),
                "comment": j.comment(),
                "after": j.after(),
                "before": j.before(),
                "declared_by": by,
                "origin": j.origin(),
            }));
        }
        chains.push(serde_json::json!({ "table": c.table(), "chain": c.chain(), "jumps": jumps }));
    }
    text.push_str("valid\n");
    Output {
        json: serde_json::json!({ "valid": true, "chains": chains }),
        text,
        code: EXIT_OK,
    }
}
