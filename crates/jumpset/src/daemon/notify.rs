//! systemd's notification protocol (`$NOTIFY_SOCKET`): `READY=1` after the first
//! reconcile attempt, `STATUS=` whenever the state changes, `WATCHDOG=1` at half of
//! `$WATCHDOG_USEC`, `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` every call is
//! a no-op.
//!
//! The messages are formatted by `sd-notify`, but sent from a non-blocking socket: the
//! daemon is one thread, and a blocking send to a service manager that does not read
//! (its queue holds `net.unix.max_dgram_qlen` datagrams, 10 by default) would stop it.
//! What cannot be sent now is kept, compacted (the latest STATUS, one WATCHDOG, READY),
//! and sent with the next message or [`Notifier::flush`].

use sd_notify::NotifyState;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends the daemon's state to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<OsString>,
    last_status: Option<String>,
    watchdog: Option<Duration>,
    backlog: Vec<String>,
    warned: bool,
}

fn send_to(path: &OsString, msg: &[u8]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)?;
        }
        None => {
            sock.send_to(msg, path)?;
        }
    }
    Ok(())
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` (and `$WATCHDOG_PID`).
    pub fn from_env() -> Self {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            last_status: None,
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            backlog: Vec::new(),
            warned: false,
        }
    }

    /// How often to send `WATCHDOG=1` (half the service manager's timeout), if asked.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if self.socket.is_none() {
            return;
        }
        for s in states {
            let line = s.to_string();
            let key = line.split('=').next().unwrap_or("").to_string();
            // A newer STATUS / WATCHDOG supersedes one still waiting.
            if key == "STATUS" || key == "WATCHDOG" {
                self.backlog.retain(|l| !l.starts_with(&format!("{key}=")));
            }
            self.backlog.push(line);
        }
        self.flush();
    }

    /// Send what is waiting, if anything.
    pub fn flush(&mut self) {
        let Some(path) = &self.socket else {
            return;
        };
        if self.backlog.is_empty() {
            return;
        }
        let mut msg = self.backlog.join("\n");
        msg.push('\n');
        match send_to(path, msg.as_bytes()) {
            Ok(()) => {
                self.backlog.clear();
                self.warned = false;
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(
                        "cannot notify the service manager at {}: {e}; will retry",
                        path.to_string_lossy()
                    );
                    self.warned = true;
                }
            }
        }
    }

    /// `READY=1` with the current status.
    pub fn ready(&mut self, status: &str) {
        self.last_status = Some(status.to_string());
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=` when it differs from the last one sent.
    pub fn status(&mut self, status: &str) {
        if self.last_status.as_deref() == Some(status) {
            return;
        }
        self.last_status = Some(status.to_string());
        self.send(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `STOPPING=1` with a last status.
    pub fn stopping(&mut self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_never_blocks_and_what_waits_is_compacted_then_sent() {
        let dir = std::env::temp_dir().join(format!("jumpset-notify-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        let mut n = Notifier {
            socket: Some(dir.clone().into_os_string()),
            last_status: None,
            watchdog: None,
            backlog: Vec::new(),
            warned: false,
        };
        n.ready("starting");
        // Nobody reads: far more than the queue holds, and none of these calls blocks.
        for i in 0..100 {
            n.status(&format!("status {i}"));
            n.watchdog();
        }
        assert!(n.backlog.len() <= 2, "{:?}", n.backlog);
        let mut buf = [0u8; 4096];
        let first = rx.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..first]).contains("READY=1"));
        while rx
            .set_nonblocking(true)
            .and_then(|_| rx.recv(&mut buf))
            .is_ok()
        {}
        n.flush();
        let k = rx.recv(&mut buf).unwrap();
        let last = String::from_utf8_lossy(&buf[..k]).into_owned();
        assert!(last.contains("STATUS=status 99"), "{last}");
        assert!(n.backlog.is_empty());
        let _ = std::fs::remove_file(&dir);
    }
}
