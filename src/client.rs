//! `jumpset pause` and `jumpset resume`: one request to the running daemon's local API
//! (`docs/api.md`) over its Unix socket — a few lines of HTTP/1.1 over a std
//! `UnixStream`, no HTTP library and no program run.

use crate::output::{CmdError, Output, EXIT_KERNEL, EXIT_OK, EXIT_PRIVILEGE, EXIT_USAGE};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket to talk to: `--socket`, else the config's `daemon.api_socket` (the default
/// one when the config cannot be read).
pub fn socket_of(flag: Option<PathBuf>, config: &Path) -> Result<PathBuf, CmdError> {
    if let Some(p) = flag {
        return Ok(p);
    }
    match jumpset::spec::Config::load_lenient(config) {
        Ok((c, _)) => c.daemon().api_socket.clone().ok_or_else(|| {
            CmdError::new(
                EXIT_USAGE,
                format!(
                    "daemon.api_socket = \"\" in {}: the daemon serves no local API (or pass --socket)",
                    config.display()
                ),
            )
        }),
        Err(_) => Ok(PathBuf::from(jumpset::spec::DEFAULT_API_SOCKET)),
    }
}

/// One request: the status and the JSON body of the answer.
fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), CmdError> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        use std::io::ErrorKind;
        let (code, why) = match e.kind() {
            ErrorKind::NotFound => (
                EXIT_KERNEL,
                "no such socket: is the daemon running, with daemon.api_socket set?".to_string(),
            ),
            ErrorKind::ConnectionRefused => (
                EXIT_KERNEL,
                "nobody listens on it (the socket of a daemon that stopped?)".to_string(),
            ),
            ErrorKind::PermissionDenied => (
                EXIT_PRIVILEGE,
                "permission denied: the local API is for root and the members of daemon.api_group"
                    .to_string(),
            ),
            _ => (EXIT_KERNEL, e.to_string()),
        };
        CmdError::new(
            code,
            format!(
                "cannot reach the jumpset daemon at {}: {why}",
                socket.display()
            ),
        )
    })?;
    let io = |e: std::io::Error| {
        CmdError::new(
            EXIT_KERNEL,
            format!("talking to the daemon at {}: {e}", socket.display()),
        )
    };
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(15)))
        .map_err(io)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: jumpset\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.take(16 << 20).read_to_end(&mut raw).map_err(io)?;
    parse(&raw).ok_or_else(|| {
        CmdError::new(
            EXIT_KERNEL,
            format!(
                "the daemon at {} sent an answer this command cannot read: {:?}",
                socket.display(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ),
        )
    })
}

/// An HTTP/1.1 response: its status and its JSON body (`Content-Length` or chunked).
fn parse(raw: &[u8]) -> Option<(u16, Value)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut rest = &raw[split + 4..];
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&rest[..eol]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        out
    } else {
        rest.to_vec()
    };
    Some((status, serde_json::from_slice(&body).ok()?))
}

/// The state's lines for a person.
fn state_text(v: &Value) -> String {
    let mut t = String::new();
    if v["paused"] == true {
        t.push_str(&format!(
            "paused since {}: {}\n",
            v["since"].as_str().unwrap_or("?"),
            v["reason"].as_str().unwrap_or("")
        ));
    } else {
        t.push_str("writing (not paused)\n");
    }
    match v["not_ready"].as_array() {
        Some(r) if !r.is_empty() => {
            t.push_str("not ready:\n");
            for why in r {
                t.push_str(&format!("  {}\n", why.as_str().unwrap_or("")));
            }
        }
        _ => t.push_str("ready\n"),
    }
    t
}

fn state_output(socket: &Path, status: u16, v: Value) -> Result<Output, CmdError> {
    if status == 200 {
        return Ok(Output {
            text: state_text(&v),
            json: v,
            code: EXIT_OK,
        });
    }
    let code = match status {
        403 => EXIT_PRIVILEGE,
        400 => EXIT_USAGE,
        _ => EXIT_KERNEL,
    };
    Err(CmdError::new(
        code,
        format!(
            "the daemon at {} answered {status}: {}",
            socket.display(),
            v["error"].as_str().unwrap_or(&v.to_string())
        ),
    ))
}

/// `jumpset pause [--reason R]`.
pub fn pause(socket: &Path, reason: Option<&str>) -> Result<Output, CmdError> {
    let body = json!({ "reason": reason.unwrap_or("jumpset pause") });
    let (status, v) = request(socket, "POST", "/v1/pause", Some(&body))?;
    state_output(socket, status, v)
}

/// `jumpset resume`.
pub fn resume(socket: &Path) -> Result<Output, CmdError> {
    let (status, v) = request(socket, "POST", "/v1/resume", None)?;
    state_output(socket, status, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_a_length_or_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"paused\":true}";
        assert_eq!(parse(plain), Some((200, json!({"paused": true}))));
        let chunked = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n";
        assert_eq!(parse(chunked), Some((403, json!({"a": 1}))));
        assert_eq!(parse(b"garbage"), None);
    }
}
