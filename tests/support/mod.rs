//! Test support: every privileged test runs in a fresh network namespace of its own
//! (a thread that unshared CLONE_NEWNET; programs it starts inherit it), with the real
//! iptables-nft / nft binaries as the other agents and as independent oracles.

#![allow(dead_code)]

pub mod agents;
pub mod daemon;
pub mod native;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Run `f` in a fresh network namespace. Panics (failing the test) when that is not
/// possible: these tests must run as root, as CI does.
pub fn netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    jumpset_testkit::netns::in_new_netns(f).expect(
        "cannot create a network namespace: the integration tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)",
    )
}

/// A file of the library's test data (the Harvester fixtures).
pub fn fixture(name: &str) -> PathBuf {
    jumpset_testkit::fixtures::path(name)
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

    /// A config file in a directory of its own (so its `jumpset.d/` is its own), removed
    /// with the directory on drop.
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
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Write `text` to `jumpset.toml` in a fresh directory under the target directory.
    pub fn write(text: &str) -> TempPath {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "jumpset-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("jumpset.toml");
        std::fs::write(&p, text).unwrap();
        TempPath(p)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers of the torture, crash and hostile suites (tests/torture.rs, crash.rs, hostile.rs)
// ---------------------------------------------------------------------------------------

/// A child process that is killed (SIGKILL) and reaped when dropped, also when a test
/// fails half-way: no agent, monitor or daemon outlives its test.
pub struct Guard(Option<std::process::Child>);

impl Guard {
    pub fn new(child: std::process::Child) -> Guard {
        Guard(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child was taken")
    }

    /// Send `sig` to the child (if it still runs).
    pub fn signal(&mut self, sig: i32) {
        if let Some(c) = self.0.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                // SAFETY: kill(2) on our own, not yet reaped child; no memory involved.
                unsafe { libc::kill(c.id() as i32, sig) };
            }
        }
    }

    /// Wait up to `limit` for the child to exit; its exit code (-signal when killed).
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let end = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.child().try_wait().unwrap() {
                return Some(st.code().unwrap_or_else(|| -st.signal().unwrap_or(0)));
            }
            if std::time::Instant::now() > end {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// SIGKILL and reap now; the exit code (-9 when the kill landed, else the code it
    /// had already exited with).
    pub fn kill9(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let c = self.child();
        let _ = c.kill();
        let st = c.wait().unwrap();
        st.code().unwrap_or_else(|| -st.signal().unwrap_or(0))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 5 ms until it is true or `limit` passes.
pub fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A small PRNG (xorshift64*) for randomised schedules. Seeded from `$JUMPSET_TEST_SEED`
/// when set, else from the clock; the seed is printed so a failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(label: &str) -> Rng {
        let seed = std::env::var("JUMPSET_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{label}: seed {seed} (JUMPSET_TEST_SEED={seed} repeats this schedule)");
        Rng(seed | 1)
    }

    /// A generator with a given seed (e.g. one per thread, drawn from a parent).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration uniform in `lo..hi` milliseconds, at microsecond resolution.
    pub fn ms(&mut self, lo: u64, hi: u64) -> std::time::Duration {
        std::time::Duration::from_micros(lo * 1000 + self.below((hi - lo).max(1) * 1000))
    }
}

/// `jumpset daemon` started from the calling (namespaced) thread, its stderr collected;
/// killed on drop.
pub struct DaemonProc {
    pub proc: Guard,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl DaemonProc {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> DaemonProc {
        use std::io::BufRead;
        let mut cmd = Command::new(bin());
        cmd.arg("daemon")
            .args(args)
            .env("JUMPSET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("jumpset daemon starts");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        DaemonProc {
            proc: Guard::new(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str, limit: std::time::Duration) -> bool {
        wait_until(limit, || self.log().contains(needle))
    }

    /// Send `sig` to the daemon.
    pub fn signal(&mut self, sig: i32) {
        self.proc.signal(sig)
    }

    /// Wait up to `limit` for the daemon to exit; its exit code.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<i32> {
        self.proc.wait_exit(limit)
    }
}

/// One HTTP GET to `addr` (in the calling thread's namespace): (status, body).
pub fn http_get_at(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// The value of one series of a Prometheus text body (0 when absent).
pub fn metric_value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// `nft -a monitor` running in the background (the calling thread's namespace): every
/// line it prints, kept in order. The kernel sends each committed transaction's rule
/// events followed by its NEWGEN (`# new generation N by process PID (NAME)`), so the
/// log is a complete, per-generation history of the ruleset — the independent oracle of
/// who changed what.
pub struct NftEventLog {
    proc: Guard,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    errors: std::sync::Arc<std::sync::Mutex<String>>,
}

impl NftEventLog {
    /// Start it and wait until it demonstrably receives events (a probe table is
    /// created and deleted; its generations are in the log too).
    pub fn start() -> NftEventLog {
        use std::io::{BufRead, Read};
        let mut child = Command::new("nft")
            .args(["-a", "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft monitor starts");
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (l2, e2) = (lines.clone(), errors.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            e2.lock().unwrap().push_str(&s);
        });
        let log = NftEventLog {
            proc: Guard::new(child),
            lines,
            errors,
        };
        let probe = "jumpset_monitor_probe";
        let seen = wait_until(std::time::Duration::from_secs(10), || {
            ok(&format!(
                "nft add table ip {probe} && nft delete table ip {probe}"
            ));
            wait_until(std::time::Duration::from_millis(200), || {
                log.lines().iter().any(|l| l.contains(probe))
            })
        });
        assert!(seen, "nft monitor never reported the probe table");
        log
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait until a NEWGEN at or after `gen` was printed (the log caught up with it).
    pub fn wait_gen(&self, gen: u64, limit: std::time::Duration) -> bool {
        wait_until(limit, || {
            self.lines()
                .iter()
                .rev()
                .find_map(|l| newgen(l).map(|(g, _, _)| g))
                .is_some_and(|g| g >= gen)
        })
    }

    /// Stop it; every line it printed. Panics when it reported lost events or an error
    /// (the history would be incomplete, and so would every check made from it).
    pub fn stop(mut self) -> Vec<String> {
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.proc.kill9();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let errors = self.errors.lock().unwrap().clone();
        assert!(
            errors.trim().is_empty(),
            "nft monitor reported an error (events may be lost): {errors}"
        );
        self.lines()
    }
}

/// `# new generation N by process PID (NAME)` → (N, PID, NAME).
pub fn newgen(line: &str) -> Option<(u64, u32, String)> {
    let rest = line.strip_prefix("# new generation ")?;
    let (gen, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("by process ")?;
    let (pid, name) = rest.split_once(' ')?;
    let name = name.trim().trim_start_matches('(').trim_end_matches(')');
    Some((gen.parse().ok()?, pid.parse().ok()?, name.to_string()))
}

/// One rule event of a transaction, as `nft -a monitor` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleEvent {
    /// `add rule ...` (NLM_F_APPEND) or `insert rule ...`, placed right after the rule
    /// `after` when the kernel names one (it does unless the rule is first or last).
    Add {
        handle: u64,
        after: Option<u64>,
        append: bool,
        text: String,
    },
    /// `delete rule ... handle H`.
    Delete { handle: u64 },
}

/// One committed transaction: its rule events in one chain, and who committed it.
#[derive(Debug, Clone)]
pub struct Txn {
    pub gen: u64,
    pub pid: u32,
    pub process: String,
    pub events: Vec<RuleEvent>,
}

/// The transactions of a monitor log, with their rule events in `family table chain`
/// (transactions that did not touch the chain have no events). Lines of other objects
/// are skipped.
pub fn transactions(lines: &[String], family: &str, table: &str, chain: &str) -> Vec<Txn> {
    let add = format!("add rule {family} {table} {chain} ");
    let ins = format!("insert rule {family} {table} {chain} ");
    let del = format!("delete rule {family} {table} {chain} handle ");
    let mut out = Vec::new();
    let mut events = Vec::new();
    for l in lines {
        if let Some((gen, pid, process)) = newgen(l) {
            out.push(Txn {
                gen,
                pid,
                process,
                events: std::mem::take(&mut events),
            });
        } else if let Some(h) = l.strip_prefix(&del) {
            events.push(RuleEvent::Delete {
                handle: h.trim().parse().expect("a handle"),
            });
        } else if let Some((rest, append)) = l
            .strip_prefix(&add)
            .map(|r| (r, true))
            .or_else(|| l.strip_prefix(&ins).map(|r| (r, false)))
        {
            let (body, handle) = rest
                .rsplit_once(" # handle ")
                .expect("nft -a prints handles");
            let (after, text) = match body.strip_prefix("handle ") {
                Some(b) => {
                    let (p, t) = b.split_once(' ').unwrap_or((b, ""));
                    (Some(p.parse().expect("a position handle")), t)
                }
                None => (None, body),
            };
            events.push(RuleEvent::Add {
                handle: handle.trim().parse().expect("a handle"),
                after,
                append,
                text: text.trim().to_string(),
            });
        }
    }
    out
}

/// A chain rebuilt from the monitor's events: (handle, nft text) in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSim {
    pub rules: Vec<(u64, String)>,
}

impl ChainSim {
    /// The chain as `nft -a list chain` prints it now.
    pub fn listed(family: &str, table: &str, chain: &str) -> ChainSim {
        let text = ok(&format!(
            "nft -a list chain {family} {table} {chain} 2>/dev/null"
        ));
        ChainSim {
            rules: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with("chain ") && !l.starts_with("type "))
                .filter_map(|l| {
                    let (t, h) = l.rsplit_once(" # handle ")?;
                    Some((h.trim().parse().ok()?, t.trim().to_string()))
                })
                .collect(),
        }
    }

    pub fn handles(&self) -> Vec<u64> {
        self.rules.iter().map(|r| r.0).collect()
    }

    /// Apply one transaction the way the kernel did; the rules it deleted. An event that
    /// cannot be placed (an unknown handle) is an error: the history is incomplete.
    pub fn apply(&mut self, txn: &Txn) -> Result<Vec<(u64, String)>, String> {
        let mut deleted = Vec::new();
        let mut pending: Vec<&RuleEvent> = Vec::new();
        for ev in &txn.events {
            match ev {
                RuleEvent::Delete { handle } => {
                    let i = self
                        .rules
                        .iter()
                        .position(|r| r.0 == *handle)
                        .ok_or_else(|| {
                            format!("gen {}: delete of unknown handle {handle}", txn.gen)
                        })?;
                    deleted.push(self.rules.remove(i));
                }
                add => {
                    if !self.place(add) {
                        pending.push(add);
                    }
                }
            }
        }
        // A rule placed after one added later in the same batch: place it once its
        // anchor is in.
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|ev| !self.place(ev));
            if pending.len() == before {
                return Err(format!(
                    "gen {}: cannot place {:?} in {:?}",
                    txn.gen, pending, self.rules
                ));
            }
        }
        Ok(deleted)
    }

    fn place(&mut self, ev: &RuleEvent) -> bool {
        let RuleEvent::Add {
            handle,
            after,
            append,
            text,
        } = ev
        else {
            return true;
        };
        let at = match after {
            Some(p) => match self.rules.iter().position(|r| r.0 == *p) {
                Some(i) => i + 1,
                None => return false,
            },
            None if *append => self.rules.len(),
            None => 0,
        };
        self.rules.insert(at, (*handle, text.clone()));
        true
    }
}

/// The chain `nft` writes to, as `nft -a list chain` shows a rule: its jump target.
pub fn nft_target(text: &str) -> Option<&str> {
    let i = text
        .find("jump ")
        .map(|i| i + 5)
        .or_else(|| text.find("goto ").map(|i| i + 5))?;
    text[i..].split_whitespace().next()
}

/// Runs its closure when dropped, also when a test panics half-way: tells background
/// threads (agents, samplers, disruptors) to stop.
pub struct OnDrop<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Print a figure a test measured and keep it for the end of the run: CI prints
/// `$CARGO_TARGET_TMPDIR/figures.txt` after the suite (libtest hides a passing test's
/// output).
pub fn figure(line: &str) {
    use std::io::Write;
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A bound `$NOTIFY_SOCKET`, read continuously by a thread of its own (a service
/// manager reads its queue; a full queue would make the sender drop messages).
pub struct NotifySocket {
    got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    seen: std::sync::Mutex<usize>,
    path: std::path::PathBuf,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "notify-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock().unwrap().push((
                    std::time::Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        });
        NotifySocket {
            got,
            seen: std::sync::Mutex::new(0),
            path,
        }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The messages not returned before, up to the first that contains `needle` (or all
    /// that came within `limit`).
    pub fn until(&self, needle: &str, limit: std::time::Duration) -> Vec<String> {
        let end = std::time::Instant::now() + limit;
        loop {
            {
                let got = self.got.lock().unwrap();
                let mut seen = self.seen.lock().unwrap();
                if let Some(k) = got[*seen..].iter().position(|m| m.1.contains(needle)) {
                    let out = got[*seen..=*seen + k].iter().map(|m| m.1.clone()).collect();
                    *seen += k + 1;
                    return out;
                }
                if std::time::Instant::now() > end {
                    let out = got[*seen..].iter().map(|m| m.1.clone()).collect();
                    *seen = got.len();
                    return out;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl NotifySocket {
    /// Every message so far with its arrival time.
    pub fn timed(&self) -> Vec<(std::time::Instant, String)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
