//! The node's other agents as processes of their own, each running the real
//! `iptables-nft` as its code does in nat PREROUTING: felix (keeps Calico's jump first),
//! kube-proxy (prepends its jump when missing) and the CNI portmap plugin (appends its
//! jump when missing). Used by tests/noharm.rs and tests/handover.rs.
//!
//! An agent is the test binary re-executed through a symlink named as the agent
//! (`calico-node`, `kube-proxy`, ...), so that the `iptables` processes that commit have
//! a parent with a name, as on a node; the binary's `agent_process` entry (an ignored
//! test) calls [`run_from_env`]. Each writes what it did to a log of its own.

use super::{Guard, Rng};
use jumpset::backend::nft::NftBackend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Calico's jump's comment.
pub const CALI: &str = "cali:6gwbT8clXdHdC1b1";
/// kube-proxy's jump's comment.
pub const KUBE: &str = "kubernetes service portals";

/// The variable that makes the test binary an agent (its role).
pub const AGENT_ENV: &str = "NOHARM_AGENT";

/// `iptables-nft -w -t nat ARGS`: (success, stdout, the pid of the process).
pub fn ipt(args: &[&str]) -> (bool, String, u32) {
    let child = Command::new("iptables-nft")
        .args(["-w", "-t", "nat"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("iptables-nft runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("iptables-nft ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        pid,
    )
}

/// felix: whenever a rule stands above its jump (or it is missing), delete it and insert
/// it at 1 in one `iptables-restore --noflush`.
pub fn felix_pass(log: &mut std::fs::File) {
    let rule = format!("-m comment --comment {CALI} -j cali-PREROUTING");
    let (ok, text, _) = ipt(&["-S", "PREROUTING"]);
    let at = text
        .lines()
        .filter(|l| l.starts_with("-A "))
        .position(|l| l.contains(CALI));
    if ok && at != Some(0) {
        let mut input = String::from("*nat\n");
        if at.is_some() {
            input.push_str(&format!("-D PREROUTING {rule}\n"));
        }
        input.push_str(&format!("-I PREROUTING 1 {rule}\nCOMMIT\n"));
        let mut c = Command::new("iptables-nft-restore")
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iptables-nft-restore runs");
        let pid = c.id();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let ok = c.wait().unwrap().success();
        let _ = writeln!(log, "restore {pid} {ok}");
    }
}

/// kube-proxy: `-C` its jump, insert it at the top when missing.
pub fn kube_proxy_pass(log: &mut std::fs::File) {
    let rule = [
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        KUBE,
        "-j",
        "KUBE-SERVICES",
    ];
    if !ipt(&[&["-C"], &rule[..]].concat()).0 {
        let (ok, _, pid) = ipt(&[&["-I"], &rule[..]].concat());
        let _ = writeln!(log, "insert {pid} {ok}");
    }
}

/// portmap: `-C` its jump, append it when missing.
pub fn portmap_pass(log: &mut std::fs::File) {
    let rule = [
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ];
    if !ipt(&[&["-C"], &rule[..]].concat()).0 {
        let (ok, _, pid) = ipt(&[&["-A"], &rule[..]].concat());
        let _ = writeln!(log, "append {pid} {ok}");
    }
}

/// The body of an agent process (the `agent_process` entry of a test binary): when
/// [`AGENT_ENV`] names a role, wait for the go on stdin, then run that role's pass every
/// period (±10 %, as `wait.Until` with jitter) until the run is over. `other` runs the
/// roles this module does not know (the test's own).
pub fn run_from_env(mut other: impl FnMut(&str, &mut std::fs::File, &mut NftBackend)) {
    let Ok(role) = std::env::var(AGENT_ENV) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let mut rng = Rng::seeded(env("NOHARM_SEED").parse().unwrap());
    let until = Instant::now() + Duration::from_millis(env("NOHARM_RUN_MS").parse().unwrap());
    let period: u64 = env("NOHARM_PERIOD_MS").parse().unwrap();
    let mut log = std::fs::File::create(env("NOHARM_LOG")).unwrap();
    let mut gen = NftBackend::open().unwrap();
    // Start out of phase with the others.
    std::thread::sleep(rng.ms(0, period));
    while Instant::now() < until {
        let t = Instant::now();
        match role.as_str() {
            "felix" => felix_pass(&mut log),
            "kube-proxy" => kube_proxy_pass(&mut log),
            "portmap" => portmap_pass(&mut log),
            other_role => other(other_role, &mut log, &mut gen),
        }
        let _ = writeln!(log, "pass {}", t.elapsed().as_micros());
        std::thread::sleep(rng.ms(period * 9 / 10, period * 11 / 10));
    }
}

/// An agent process, started by [`spawn`].
pub struct AgentProc {
    pub role: &'static str,
    pub proc: Guard,
    pub log: PathBuf,
}

impl AgentProc {
    /// Wait for it to end (it must exit 0); its log lines.
    pub fn wait(mut self) -> Vec<String> {
        let code = self.proc.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(0), "agent {} failed", self.role);
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Start agent `role` as a process named `comm` (from the calling, namespaced thread);
/// it runs for `run`, a pass every `period`. `enter` is called with its pid before it
/// starts (to move it into a cgroup); what it returned comes back.
pub fn spawn(
    dir: &Path,
    role: &'static str,
    comm: &str,
    seed: u64,
    run: Duration,
    period: Duration,
    enter: Option<&dyn Fn(u32) -> bool>,
) -> (AgentProc, bool) {
    let link = dir.join(comm);
    if !link.exists() {
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &link).unwrap();
    }
    let log = dir.join(format!("{role}.log"));
    let mut child = Command::new(&link)
        .args([
            "agent_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(AGENT_ENV, role)
        .env("NOHARM_SEED", seed.to_string())
        .env("NOHARM_RUN_MS", run.as_millis().to_string())
        .env("NOHARM_PERIOD_MS", period.as_millis().to_string())
        .env("NOHARM_LOG", &log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the agent starts");
    let entered = enter.is_some_and(|f| f(child.id()));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    (
        AgentProc {
            role,
            proc: Guard::new(child),
            log,
        },
        entered,
    )
}

/// A scratch directory for one run (`tag` names it).
pub fn scratch(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("agents-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
