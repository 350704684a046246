//! The agents' API claims on disk: `STATE_DIR/claims/AGENT.json`, each the claim's JSON
//! form (`{"agent": ..., "chains": [...]}`), read back by every command and by a
//! restarted daemon ([`Config::load`](crate::spec::Config::load)).
//!
//! A claim is written atomically — a temporary file beside it (a name starting with `.`,
//! never read as a claim), written, `fsync`ed, renamed over the claim, then the directory
//! `fsync`ed — so that a crash leaves the old claim or the new one, never half of one.
//! Files are `0600` and the claims directory `0700`, created when missing; the state
//! directory itself is the deployment's (`StateDirectory=`, a hostPath) and is never
//! created.

use crate::spec::{claim_path, Fragment};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Store `claim` in `state_dir`, replacing the agent's previous one; the file written.
pub fn store(state_dir: &Path, claim: &Fragment) -> Result<PathBuf, String> {
    let path = claim_path(state_dir, claim.agent());
    let dir = path.parent().unwrap_or(state_dir).to_path_buf();
    if !state_dir.is_dir() {
        return Err(format!(
            "the state directory {} does not exist (daemon.state_dir: StateDirectory= in the unit, a hostPath in the DaemonSet); the claim cannot be kept",
            state_dir.display()
        ));
    }
    let fail = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail("cannot create", &dir, e)),
    }
    let tmp = dir.join(format!(".{}.json.tmp", claim.agent()));
    let mut text = serde_json::to_string_pretty(&claim.to_json()).unwrap_or_default();
    text.push('\n');
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("cannot write", &tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("cannot rename a claim onto", &path, e));
    }
    sync_dir(&dir).map_err(|e| fail("cannot sync", &dir, e))?;
    Ok(path)
}

/// Delete `agent`'s claim from `state_dir`: whether there was one.
pub fn remove(state_dir: &Path, agent: &str) -> Result<bool, String> {
    let path = claim_path(state_dir, agent);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = sync_dir(dir);
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot delete {}: {e}", path.display())),
    }
}

/// Whether `agent` holds a claim in `state_dir` (its file exists, readable or not).
pub fn exists(state_dir: &Path, agent: &str) -> bool {
    std::fs::symlink_metadata(claim_path(state_dir, agent)).is_ok()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::read_config_file;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_claim_is_stored_atomically_private_and_read_back_as_it_was() {
        let state = std::env::temp_dir().join(format!("jumpset-claims-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let f = Fragment::from_json(
            "kube-ovn",
            r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": "x", "after": ["A"]}]}]}"#,
        )
        .unwrap();
        let e = store(&state, &f).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::create_dir_all(&state).unwrap();
        let p = store(&state, &f).unwrap();
        assert_eq!(p, state.join("claims/kube-ovn.json"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&state.join("claims")), 0o700);
        let back = Fragment::from_json("kube-ovn", &read_config_file(&p).unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(exists(&state, "kube-ovn"));
        // Replaced, nothing left beside it.
        store(&state, &f).unwrap();
        let names: Vec<_> = std::fs::read_dir(state.join("claims"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kube-ovn.json"]);
        assert_eq!(remove(&state, "kube-ovn"), Ok(true));
        assert_eq!(remove(&state, "kube-ovn"), Ok(false));
        assert!(!exists(&state, "kube-ovn"));
        let _ = std::fs::remove_dir_all(&state);
    }
}
