//! What a command hands to `main` to print: its JSON, its text and its exit code — or an
//! error with the exit code and the message for the operator.

use jumpset::exit;
use serde_json::{json, Value};

/// The exit codes of the command (`jumpset::exit`), under the names the CLI uses.
pub const EXIT_OK: i32 = exit::OK;
/// Bad usage or config.
pub const EXIT_USAGE: i32 = exit::USAGE;
/// Missing privilege.
pub const EXIT_PRIVILEGE: i32 = exit::PRIVILEGE;
/// Kernel error.
pub const EXIT_KERNEL: i32 = exit::KERNEL;

/// The result of one command over every managed chain and family.
#[derive(Debug, Clone)]
pub struct Output {
    /// The `--json` object.
    pub json: Value,
    /// The human-readable form.
    pub text: String,
    /// The exit code.
    pub code: i32,
}

/// A command that could not run: its exit code and the message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdError {
    /// Exit code.
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for CmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CmdError {
    /// An error with this exit code.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CmdError {
            code,
            message: message.into(),
        }
    }

    /// The `--json` form: `{"error": message, "exit_code": code}`.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.message, "exit_code": self.code })
    }
}

impl From<jumpset::Error> for CmdError {
    fn from(e: jumpset::Error) -> Self {
        CmdError::new(e.exit_code(), e.to_string())
    }
}

/// Fail with exit 3 unless the process holds `cap` in its effective set (the demo and
/// the bench need CAP_SYS_ADMIN for their namespace).
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

/// Write `text` to stdout; a failure (a closed pipe, a full disk) is ignored, never a
/// panic as `print!` would make it.
pub fn to_stdout(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Write `text` to stderr; a failure is ignored, never a panic as `eprint!` would make it.
pub fn to_stderr(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
