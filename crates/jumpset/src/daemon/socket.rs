//! The local API's Unix socket (`daemon.api_socket`), bound as a node daemon must:
//!
//! - the directory is the deployment's (`RuntimeDirectory=jumpset` in the unit, a
//!   hostPath in the DaemonSet): the daemon never creates it;
//! - a socket already at the path is taken over only when it is stale: the daemon
//!   connects to it first, and a live peer (another jumpset daemon, or anything else)
//!   answering is left alone — refused and logged — while `ECONNREFUSED` (nobody
//!   listens: a daemon that crashed) lets it unlink and bind; anything at the path that
//!   is not a socket is never removed;
//! - the socket is `0600`, or `0660` when `daemon.api_group` is set; the daemon gives it
//!   to that group when it may (it holds no CAP_CHOWN: it can when it is a member of the
//!   group, e.g. `Group=` in the unit), else the directory's group and mode decide who
//!   reaches it; the daemon checks every request's credentials either way
//!   ([`super::access`]);
//! - a failure to bind is logged and retried (1 s, doubling to 30 s), never fatal; a
//!   change of `daemon.api_socket` in the config moves the socket; the socket is
//!   unlinked when the daemon stops (only if it is still the one it bound).

use super::access;
use super::fight::Backoff;
use super::http::{Router, Serving, Spawner};
use crate::spec::ApiGroup;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// The local API's settings in the config in force.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// `daemon.api_socket` (`None`: off).
    pub socket: Option<PathBuf>,
    /// `daemon.api_group`.
    pub group: Option<ApiGroup>,
}

impl Settings {
    /// The settings of `daemon`.
    pub fn of(daemon: &crate::spec::DaemonConfig) -> Settings {
        Settings {
            socket: daemon.api_socket.clone(),
            group: daemon.api_group.clone(),
        }
    }
}

/// A socket this daemon bound: its path and the file it made there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The path.
    pub path: PathBuf,
    /// Device, inode and change time: an inode number is reused once the file is gone.
    id: (u64, u64, i64, i64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl Bound {
    /// Whether the path still holds the socket this daemon bound.
    pub fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .map(|m| file_id(&m) == self.id)
            .unwrap_or(false)
    }

    /// Unlink the socket, if the path still holds the one this daemon bound.
    pub fn release(&self) {
        if self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind `path` as the module docs say: the listener (non-blocking), what was bound, and a
/// warning when the socket could not be given to `group`.
pub fn bind(
    path: &Path,
    group: Option<&ApiGroup>,
) -> Result<(std::os::unix::net::UnixListener, Bound, Option<String>), String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot look at {}: {e}", path.display())),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!(
                "{} exists and is not a socket; it is left alone",
                path.display()
            ))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "another process serves {} (another jumpset daemon?); it is left alone",
                    path.display()
                ))
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                // Nobody listens: the socket of a daemon that is gone.
                std::fs::remove_file(path).map_err(|e| {
                    format!("cannot remove the stale socket {}: {e}", path.display())
                })?;
                info!(
                    "removed the stale socket {} (nobody listened on it)",
                    path.display()
                );
            }
            Err(e) => {
                return Err(format!(
                    "cannot tell whether another process serves {}: {e}; it is left alone",
                    path.display()
                ))
            }
        },
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        let dir = path.parent().unwrap_or(Path::new("/"));
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "cannot bind {}: the directory {} does not exist (RuntimeDirectory=jumpset in the unit, a hostPath in the DaemonSet; the daemon does not create it)",
                path.display(),
                dir.display()
            )
        } else {
            format!("cannot bind {}: {e}", path.display())
        }
    })?;
    // Anything failing from here: the socket just made goes.
    let fail = |what: &str, e: std::io::Error| {
        let _ = std::fs::remove_file(path);
        format!("cannot {what} {}: {e}", path.display())
    };
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("chmod", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail("set up", e))?;
    let mut warning = None;
    if let Some(g) = group {
        let made_gid = std::fs::symlink_metadata(path)
            .map_err(|e| fail("look at", e))?
            .gid();
        match access::resolve(g, Path::new("/etc/group")) {
            Ok(gid) if gid == made_gid => {}
            Ok(gid) => {
                if let Err(e) = std::os::unix::fs::lchown(path, None, Some(gid)) {
                    warning = Some(format!(
                        "the socket {} stays in group {made_gid} ({e}): the daemon holds no CAP_CHOWN and is not a member of {g} (gid {gid}); members of {g} reach it only if its directory lets them (Group= in the unit, or the directory's group), and the daemon admits them either way",
                        path.display()
                    ));
                }
            }
            Err(e) => {
                warning = Some(format!(
                    "daemon.api_group = {g}: {e}; only root may use the local API until it exists"
                ))
            }
        }
    }
    // What it is once set up (a chmod changes the change time).
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail("look at", e))?;
    let bound = Bound {
        path: path.to_path_buf(),
        id: file_id(&meta),
    };
    Ok((listener, bound, warning))
}

/// Keep the local API served on the socket `settings` name, with `router`, for as long
/// as the task runs: bind, retry a failure with backoff, move on a change, re-bind when
/// the socket disappears from under it. What is bound is kept in `bound` (the daemon
/// unlinks it when it stops).
pub fn keep_serving(
    spawner: Spawner,
    router: Router,
    mut settings: watch::Receiver<Settings>,
    bound: Arc<Mutex<Option<Bound>>>,
) -> Serving {
    let on = spawner.clone();
    on.spawn(async move {
        const CHECK: Duration = Duration::from_secs(10);
        let mut serving: Option<Serving> = None;
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut last_error: Option<String> = None;
        let mut served: Option<Settings> = None;
        loop {
            let want = settings.borrow_and_update().clone();
            let held = bound.lock().ok().and_then(|b| b.clone());
            let lost = held.as_ref().is_some_and(|b| !b.is_ours());
            let mut retry = None;
            if served.as_ref() != Some(&want) || (serving.is_none() && want.socket.is_some()) || lost {
                serving = None;
                if let Some(b) = held {
                    b.release();
                }
                if let Ok(mut b) = bound.lock() {
                    *b = None;
                }
                if lost {
                    warn!("the local API's socket was removed from under the daemon; binding it again");
                }
                match &want.socket {
                    None => {
                        if served.as_ref().is_some_and(|s| s.socket.is_some()) || served.is_none() {
                            info!("daemon.api_socket = \"\": the local API is off");
                        }
                    }
                    Some(path) => match bind(path, want.group.as_ref()) {
                        Ok((std_listener, b, warning)) => {
                            match tokio::net::UnixListener::from_std(std_listener) {
                                Ok(l) => {
                                    serving = Some(spawner.serve(l, router.clone()));
                                    info!(
                                        "serving the local API on unix:{} ({})",
                                        path.display(),
                                        match &want.group {
                                            Some(g) => format!("root and group {g}"),
                                            None => "root only".into(),
                                        }
                                    );
                                    if let Some(w) = warning {
                                        warn!("{w}");
                                    }
                                    if let Ok(mut slot) = bound.lock() {
                                        *slot = Some(b);
                                    }
                                    backoff.reset();
                                    last_error = None;
                                }
                                Err(e) => {
                                    b.release();
                                    retry = Some(e.to_string());
                                }
                            }
                        }
                        Err(e) => retry = Some(e),
                    },
                }
                served = Some(want.clone());
            }
            let wait = match retry {
                Some(e) => {
                    let wait = backoff.next_delay();
                    if last_error.as_deref() != Some(e.as_str()) {
                        warn!(
                            "daemon.api_socket: {e}; the local API is not served (trying again every {} s at most); the chains are kept in order all the same",
                            wait.as_secs().max(1)
                        );
                        last_error = Some(e);
                    }
                    // Not served: try again.
                    served = None;
                    wait
                }
                None => CHECK,
            };
            tokio::select! {
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_socket_is_left_alone_a_stale_one_taken_over_a_file_never_removed() {
        let dir = std::env::temp_dir().join(format!("jumpset-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let (live, b, _) = bind(&path, None).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = bind(&path, None).unwrap_err();
        assert!(e.contains("another process serves"), "{e}");
        assert!(b.is_ours());
        drop(live);
        // Nobody listens any more: stale, taken over.
        let (_l, b2, _) = bind(&path, Some(&ApiGroup::Id(0))).unwrap();
        assert!(!b.is_ours() && b2.is_ours());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        b.release();
        assert!(path.exists(), "the old one's release leaves the new socket");
        b2.release();
        assert!(!path.exists());
        std::fs::write(&path, "x").unwrap();
        let e = bind(&path, None).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
        assert!(path.exists());
        let e = bind(&dir.join("none/api.sock"), None).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
