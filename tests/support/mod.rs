//! Test support: every privileged test runs in a fresh network namespace of its own
//! (a thread that unshared CLONE_NEWNET; programs it starts inherit it), with the real
//! iptables-nft / nft binaries as the other agents and as independent oracles.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Run `f` in a fresh network namespace. Panics (failing the test) when that is not
/// possible: these tests must run as root, as CI does.
pub fn netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    jumpset::netns::in_new_netns(f).expect(
        "cannot create a network namespace: the integration tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)",
    )
}

/// The fixtures directory.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Run a shell command (in the calling thread's namespace); returns its output.
pub fn sh(script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("bash runs")
}

/// Run a shell command that must succeed; returns stdout.
pub fn ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Feed `input` to a command that must succeed.
pub fn ok_stdin(cmd: &str, input: &str) -> String {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The jumpset binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_jumpset")
}

/// Result of running jumpset.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Run jumpset with arguments.
pub fn jumpset(args: &[&str]) -> Run {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("jumpset runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Write a config to a temporary file and return its path.
pub fn config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::write(text)
}

/// The Harvester spec, forced to the nft backend.
pub fn harvester_config() -> String {
    std::fs::read_to_string(fixture("harvester.toml"))
        .unwrap()
        .replace("backend  = \"auto\"", "backend = \"nft\"")
}

/// The `-A PREROUTING` lines of `iptables-nft-save -t nat` (or ip6tables), asserting
/// that iptables read the table without any warning.
pub fn saved_chain(cmd: &str, chain: &str) -> Vec<String> {
    let out = sh(&format!("{cmd} -t nat"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} failed: {stderr}");
    assert!(
        stderr.trim().is_empty() && !stdout.contains("incompatible") && !stdout.contains("Warning"),
        "{cmd} complained:\n{stdout}{stderr}"
    );
    let prefix = format!("-A {chain} ");
    stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// The `-A CHAIN` lines of an iptables-restore fixture.
pub fn fixture_chain(name: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Rule handles of a chain as `nft -a` lists them, in order.
pub fn nft_handles(family: &str, table: &str, chain: &str) -> Vec<u64> {
    ok(&format!(
        "nft -a list chain {family} {table} {chain} 2>/dev/null"
    ))
    .lines()
    .filter(|l| !l.trim_start().starts_with("chain "))
    .filter_map(|l| {
        l.rsplit_once("# handle ")
            .map(|(_, h)| h.trim().parse().unwrap())
    })
    .collect()
}

/// Watches commits with `nft monitor` (an independent oracle) while `f` runs; returns
/// `f`'s result and the number of `# new generation` lines seen.
pub fn count_commits<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let mut mon = Command::new("nft")
        .args(["monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nft monitor starts");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = f();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = mon.kill();
    let out = mon.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    (
        r,
        text.lines()
            .filter(|l| l.starts_with("# new generation"))
            .count(),
    )
}

/// Minimal temp files without another dependency.
pub mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static N: AtomicUsize = AtomicUsize::new(0);

    /// A file removed on drop.
    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn path(&self) -> &Path {
            &self.0
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Write `text` to a fresh file under the target directory.
    pub fn write(text: &str) -> TempPath {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let p = dir.join(format!(
            "jumpset-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&p, text).unwrap();
        TempPath(p)
    }
}
