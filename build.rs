//! Build script of the `jumpset` binary: the git revision it is built from, for
//! `jumpset_build_info{revision}`. `$JUMPSET_GIT_REVISION` when set (a container build
//! without `.git` passes it), else read from `.git` (files only: no program is run, no
//! network), else `unknown`.

use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=JUMPSET_GIT_REVISION");
    let rev = std::env::var("JUMPSET_GIT_REVISION")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=JUMPSET_GIT_REVISION={}", rev.trim());
}

/// Watch `p` for changes when it exists.
fn watch(p: &Path) {
    if p.exists() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// The commit HEAD names, abbreviated to 12 hex digits.
fn git_revision() -> Option<String> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let dot_git = root.join(".git");
    // A worktree's `.git` is a file: `gitdir: PATH`.
    let gitdir = if dot_git.is_dir() {
        dot_git
    } else {
        let text = fs::read_to_string(&dot_git).ok()?;
        let p = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
        if p.is_absolute() {
            p
        } else {
            root.join(p)
        }
    };
    // Refs live in the common directory (the main repository's, for a worktree).
    let common = match fs::read_to_string(gitdir.join("commondir")) {
        Ok(c) => {
            let p = PathBuf::from(c.trim());
            if p.is_absolute() {
                p
            } else {
                gitdir.join(p)
            }
        }
        Err(_) => gitdir.clone(),
    };
    let head_file = gitdir.join("HEAD");
    watch(&head_file);
    let head = fs::read_to_string(&head_file).ok()?;
    let head = head.trim();
    let id = match head.strip_prefix("ref: ") {
        None => head.to_string(),
        Some(r) => {
            let loose = [gitdir.join(r), common.join(r)];
            let packed = common.join("packed-refs");
            loose.iter().for_each(|p| watch(p));
            watch(&packed);
            loose
                .iter()
                .find_map(|p| fs::read_to_string(p).ok())
                .map(|s| s.trim().to_string())
                .or_else(|| {
                    fs::read_to_string(&packed).ok()?.lines().find_map(|l| {
                        let (id, name) = l.split_once(' ')?;
                        (name.trim() == r).then(|| id.to_string())
                    })
                })?
        }
    };
    let ok = id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| id[..12].to_string())
}
