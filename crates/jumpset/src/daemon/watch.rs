//! The daemon's one config reader: a thread (`jumpset-config`) that reads the config
//! (main file, drop-ins, persisted claims: [`Config::load_lenient`]) when asked to
//! (SIGHUP) and whenever its files change, and hands the result to the loop. The loop
//! never reads a file itself, so a config path that blocks (a FIFO, a hung mount) or
//! grows without end cannot stall it — and [`crate::spec::read_config_file`] refuses
//! those anyway, without blocking.
//!
//! **Changes are found by polling `stat`**, every [`Watcher`] period (250 ms by
//! default), of every file and directory the config is read from
//! ([`crate::spec::config_sources`]): device, inode, size, modification and change
//! times, following symlinks, and the symlink itself. A few `stat` calls four times a
//! second cost nothing measurable, need no dependency and no watch bookkeeping, and see
//! every way a config changes: an editor's rename, an in-place write, a drop-in added or
//! removed, a directory created later, and the ConfigMap update, where the kubelet
//! swaps the `..data` symlink to a new directory (inotify would need a watch on the
//! directory holding the link, re-armed as directories come and go, and sees nothing on
//! some network and overlay filesystems). A change is read once it has been stable for
//! one period (so a file being written is not read half-way): within two periods.

use super::engine::{Reload, Trigger};
use crate::spec::{config_sources, Config};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The default period of the `stat` poll.
pub const POLL: Duration = Duration::from_millis(250);

/// What `stat` says of one file: its identity, size and times (`None`: missing).
type Stamp = Option<(u64, u64, u64, i64, i64, i64, i64)>;

fn stamp(m: std::io::Result<std::fs::Metadata>) -> Stamp {
    m.ok().map(|m| {
        (
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    })
}

/// The state of every source of the config at `path` with claims in `state_dir`.
pub fn fingerprint(path: &Path, state_dir: &Path) -> Vec<(PathBuf, Stamp, Stamp)> {
    config_sources(path, state_dir)
        .into_iter()
        .map(|p| {
            let followed = stamp(std::fs::metadata(&p));
            let link = stamp(std::fs::symlink_metadata(&p));
            (p, followed, link)
        })
        .collect()
}

/// The reader thread and its two ends.
#[derive(Debug)]
pub struct Watcher {
    now: Option<mpsc::Sender<()>>,
    loaded: UnboundedReceiver<Reload>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Watch the config at `path` (claims in `state_dir`, as the config in force says),
    /// polling every `period`. It reads the config once at once too (a change between
    /// the daemon's first read and this start is not missed; an identical config is no
    /// change to the engine).
    pub fn spawn(path: PathBuf, state_dir: PathBuf, period: Duration) -> std::io::Result<Watcher> {
        let (now_tx, now_rx) = mpsc::channel::<()>();
        let (tx, rx) = unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("jumpset-config".into())
            .spawn(move || watch(path, state_dir, period, now_rx, tx))?;
        Ok(Watcher {
            now: Some(now_tx),
            loaded: rx,
            thread: Some(thread),
        })
    }

    /// Read the config now (SIGHUP); the result comes from [`Watcher::next`].
    pub fn read_now(&self) {
        if let Some(n) = &self.now {
            let _ = n.send(());
        }
    }

    /// The next config read. Cancel-safe. Pending forever once the thread is gone.
    pub async fn next(&mut self) -> Reload {
        match self.loaded.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.now = None; // the thread sees the channel closed at its next wake
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn load(path: &Path, trigger: Trigger) -> Reload {
    Reload {
        trigger,
        loaded: Config::load_lenient(path),
    }
}

fn watch(
    path: PathBuf,
    mut state_dir: PathBuf,
    period: Duration,
    now: mpsc::Receiver<()>,
    out: UnboundedSender<Reload>,
) {
    let mut loaded = fingerprint(&path, &state_dir);
    let send = |r: Reload, state_dir: &mut PathBuf| -> bool {
        if let Ok((c, _)) = &r.loaded {
            *state_dir = c.daemon().state_dir.clone();
        }
        out.send(r).is_ok()
    };
    if !send(load(&path, Trigger::Changed), &mut state_dir) {
        return;
    }
    let mut last = loaded.clone();
    loop {
        match now.recv_timeout(period) {
            Ok(()) => {
                loaded = fingerprint(&path, &state_dir);
                last = loaded.clone();
                if !send(load(&path, Trigger::Signal), &mut state_dir) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let fp = fingerprint(&path, &state_dir);
                // Changed since the last read, and the same as one period ago.
                if fp != loaded && fp == last {
                    loaded = fp.clone();
                    if !send(load(&path, Trigger::Changed), &mut state_dir) {
                        return;
                    }
                    // The claims directory may have moved with the config.
                    let again = fingerprint(&path, &state_dir);
                    if again != fp {
                        loaded = again.clone();
                        last = again;
                        continue;
                    }
                }
                last = fp;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_swap_and_a_new_dropin_change_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("jumpset-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("a/jumpset.toml"), "x").unwrap();
        std::fs::write(dir.join("b/jumpset.toml"), "x").unwrap();
        std::os::unix::fs::symlink("a", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/jumpset.toml", dir.join("jumpset.toml")).unwrap();
        let path = dir.join("jumpset.toml");
        let state = dir.join("state");
        let f0 = fingerprint(&path, &state);
        assert_eq!(f0, fingerprint(&path, &state), "stable");
        // The kubelet's swap: a new link renamed over `..data`.
        std::os::unix::fs::symlink("b", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let f1 = fingerprint(&path, &state);
        assert_ne!(f0, f1, "same size and text, another file");
        std::fs::create_dir_all(dir.join("jumpset.d")).unwrap();
        let f2 = fingerprint(&path, &state);
        assert_ne!(f1, f2);
        std::fs::write(dir.join("jumpset.d/10-x.toml"), "").unwrap();
        let f3 = fingerprint(&path, &state);
        assert_ne!(f2, f3);
        assert!(f3
            .iter()
            .any(|(p, _, _)| p.ends_with("jumpset.d/10-x.toml")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
