//! Multi-agent torture (`docs/contracts.md#crash-safety`): the real `jumpset daemon` keeps nat PREROUTING in order
//! while scripted agents behave as the real ones do, through the real iptables binaries,
//! each test in a fresh network namespace:
//!
//! - felix: whenever a rule stands above its `cali:6gwbT8clXdHdC1b1 → cali-PREROUTING`
//!   jump (or it is missing), deletes it and inserts it at position 1 — one
//!   `iptables-restore --noflush`, as felix does;
//! - kube-proxy: `-C` its `kubernetes service portals → KUBE-SERVICES` jump, and inserts
//!   it at the top when the check fails;
//! - portmap: `-C` its `-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`, appends it when
//!   missing;
//! - a buggy Kube-OVN: inserts duplicates of OUR jump (`kube-ovn prerouting rules →
//!   OVN-PREROUTING`) at random positions;
//! - and a flush of the whole chain half-way.
//!
//! Checked throughout and at the end: no foreign rule is ever lost *by the daemon*; once
//! the agents stop the chain converges to the declared order with exactly one owned jump
//! (timed); the daemon commits no more than the agents together (no write loop). The
//! figures are printed (`--nocapture`, and in CI logs).
//!
//! nf_tables: `nft -a monitor` is the independent history: every transaction's rule
//! events and its committing process. The chain is rebuilt from it generation by
//! generation (handles and order), checked against fast direct reads taken meanwhile,
//! and every rule a daemon transaction deleted or added is checked to be an owned jump.
//! Legacy (x_tables has no notifications): the daemon polls; the agents use `-w`; the
//! chain is sampled continuously with `iptables-legacy-save`, and a foreign rule may only
//! disappear between two samples when the flush ran between them.

mod support;

use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use jumpset::snapshot::Family;
use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// The torture tests are timed; they run one at a time (each loads both cores).
static SERIAL: Mutex<()> = Mutex::new(());

const CALI: &str = "cali:6gwbT8clXdHdC1b1";
const OVN: &str = "kube-ovn prerouting rules";
const KUBE: &str = "kubernetes service portals";
const METRICS: &str = "127.0.0.1:9464";

/// How long the agents run; the flush comes half-way.
const AGENTS_RUN: Duration = Duration::from_secs(10);
/// felix keeps checking this much longer than the others (it runs continuously on a
/// real node), so the foreign order it settles on is the one the spec expects.
const FELIX_EXTRA: Duration = Duration::from_millis(700);

/// The iptables binaries of one backend, with a private xtables lock for legacy.
#[derive(Clone)]
struct Tools {
    backend: &'static str,
    ipt: &'static str,
    restore: &'static str,
    save: &'static str,
    lock: Option<String>,
}

impl Tools {
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        if let Some(l) = &self.lock {
            c.env("XTABLES_LOCKFILE", l);
        }
        c
    }

    /// `iptables -w -t nat ARGS`.
    fn ipt(&self, args: &[&str]) -> Output {
        self.cmd(self.ipt)
            .args(["-w", "-t", "nat"])
            .args(args)
            .output()
            .expect("iptables runs")
    }

    /// `iptables-restore -w --noflush` of `input`; whether it succeeded.
    fn restore(&self, input: &str) -> bool {
        use std::io::Write;
        let mut c = self
            .cmd(self.restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iptables-restore runs");
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        c.wait().unwrap().success()
    }

    /// The `-A PREROUTING` lines of `iptables-save -t nat`, or the complaint it printed.
    fn chain(&self) -> Result<Vec<String>, String> {
        let out = self
            .cmd(self.save)
            .args(["-t", "nat"])
            .output()
            .expect("iptables-save runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            || !stderr.trim().is_empty()
            || stdout.contains("incompatible")
            || stdout.contains("Warning")
        {
            return Err(format!("{}: {stdout}{stderr}", self.save));
        }
        Ok(stdout
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING "))
            .map(str::to_string)
            .collect())
    }
}

/// The agents' rules, by kind, in one `-A PREROUTING` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Foreign {
    cali: usize,
    kube: usize,
    cni: usize,
}

fn foreign(lines: &[String]) -> Foreign {
    let mut f = Foreign::default();
    for l in lines {
        if l.contains("-j cali-PREROUTING") {
            f.cali += 1;
        } else if l.contains("-j KUBE-SERVICES") {
            f.kube += 1;
        } else if l.contains("-j CNI-HOSTPORT-DNAT") {
            f.cni += 1;
        }
    }
    f
}

fn healthy() -> Vec<String> {
    fixture_chain("harvester-healthy.rules", "PREROUTING")
}

/// What every agent thread shares.
struct Shared {
    tools: Tools,
    /// Successful writes per agent (legacy counts commits this way).
    writes: Mutex<BTreeMap<&'static str, usize>>,
    /// When the flush started and ended.
    flush: Mutex<(Option<Instant>, Option<Instant>)>,
    /// Invariant violations seen by the sampler.
    violations: Mutex<Vec<String>>,
    stop_sampling: AtomicBool,
    samples: AtomicUsize,
    /// When an agent last changed the chain.
    last_write: Mutex<Option<Instant>>,
}

impl Shared {
    fn wrote(&self, agent: &'static str) {
        *self.writes.lock().unwrap().entry(agent).or_default() += 1;
        *self.last_write.lock().unwrap() = Some(Instant::now());
    }
}

fn pause(rng: &mut Rng, lo: u64, hi: u64) {
    std::thread::sleep(rng.ms(lo, hi));
}

fn felix(s: &Shared, until: Instant, mut rng: Rng) {
    let rule = format!("-m comment --comment {CALI} -j cali-PREROUTING");
    while Instant::now() < until {
        let out = s.tools.ipt(&["-S", "PREROUTING"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let at = text
            .lines()
            .filter(|l| l.starts_with("-A "))
            .position(|l| l.contains(CALI));
        if out.status.success() && at != Some(0) {
            let mut input = String::from("*nat\n");
            if at.is_some() {
                input.push_str(&format!("-D PREROUTING {rule}\n"));
            }
            input.push_str(&format!("-I PREROUTING 1 {rule}\nCOMMIT\n"));
            if s.tools.restore(&input) {
                s.wrote("felix");
            }
        }
        pause(&mut rng, 70, 130);
    }
}

fn kube_proxy(s: &Shared, until: Instant, mut rng: Rng) {
    let rule = [
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        KUBE,
        "-j",
        "KUBE-SERVICES",
    ];
    while Instant::now() < until {
        if !s.tools.ipt(&[&["-C"], &rule[..]].concat()).status.success()
            && s.tools.ipt(&[&["-I"], &rule[..]].concat()).status.success()
        {
            s.wrote("kube-proxy");
        }
        pause(&mut rng, 100, 200);
    }
}

fn portmap(s: &Shared, until: Instant, mut rng: Rng) {
    let rule = [
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ];
    while Instant::now() < until {
        if !s.tools.ipt(&[&["-C"], &rule[..]].concat()).status.success()
            && s.tools.ipt(&[&["-A"], &rule[..]].concat()).status.success()
        {
            s.wrote("portmap");
        }
        pause(&mut rng, 150, 250);
    }
}

/// Kube-OVN gone wrong: a copy of the owned jump at a random position, again and again.
fn buggy_ovn(s: &Shared, until: Instant, mut rng: Rng) {
    while Instant::now() < until {
        let out = s.tools.ipt(&["-S", "PREROUTING"]);
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count() as u64;
        let pos = (1 + rng.below(n + 1)).to_string();
        let args = [
            "-I",
            "PREROUTING",
            &pos,
            "-m",
            "comment",
            "--comment",
            OVN,
            "-j",
            "OVN-PREROUTING",
        ];
        if s.tools.ipt(&args).status.success() {
            s.wrote("buggy-kube-ovn");
        }
        pause(&mut rng, 200, 350);
    }
}

fn flusher(s: &Shared, at: Instant) {
    if let Some(w) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(w);
    }
    s.flush.lock().unwrap().0 = Some(Instant::now());
    let ok = s.tools.ipt(&["-F", "PREROUTING"]).status.success();
    s.flush.lock().unwrap().1 = Some(Instant::now());
    assert!(ok, "the flush failed");
    s.wrote("flush");
}

/// Sample the chain with iptables-save until told to stop: iptables must never complain
/// about the table, no agent's rule may appear twice, and a foreign rule may only vanish
/// between two samples when the flush ran between them (only the agents' own deletes and
/// the flush remove foreign rules, and felix re-inserts its jump in the same transaction).
fn sampler(s: &Shared) {
    let mut prev: Option<(Instant, Foreign)> = None;
    while !s.stop_sampling.load(Ordering::SeqCst) {
        let t0 = Instant::now();
        let got = s.tools.chain();
        let t1 = Instant::now();
        s.samples.fetch_add(1, Ordering::SeqCst);
        let lines = match got {
            Ok(l) => l,
            Err(e) => {
                s.violations.lock().unwrap().push(e);
                continue;
            }
        };
        let f = foreign(&lines);
        if f.cali > 1 || f.kube > 1 || f.cni > 1 {
            s.violations
                .lock()
                .unwrap()
                .push(format!("an agent's rule twice: {lines:#?}"));
        }
        if let Some((since, p)) = prev {
            let lost = f.cali < p.cali || f.kube < p.kube || f.cni < p.cni;
            // Did the flush run (even partly) between the two samples?
            let flushed = match *s.flush.lock().unwrap() {
                (Some(a), Some(b)) => a <= t1 && b >= since,
                (Some(a), None) => a <= t1,
                _ => false,
            };
            if lost && !flushed {
                s.violations.lock().unwrap().push(format!(
                    "a foreign rule vanished with no flush in between: {p:?} -> {f:?}: {lines:#?}"
                ));
            }
        }
        prev = Some((t0, f));
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Fast direct reads (jumpset's own reader, one socket kept open) of the nf_tables chain:
/// (generation, handles in order), to check the monitor-rebuilt history against.
fn nft_reader(stop: &AtomicBool) -> Vec<(u32, Vec<u64>)> {
    let mut b = NftBackend::open().unwrap();
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Ok(s) = b.read(Family::Ip, "nat", "PREROUTING") {
            out.push((s.generation, s.rules.iter().map(|r| r.handle).collect()));
        }
        std::thread::sleep(Duration::from_millis(7));
    }
    out
}

fn torture(tools: Tools) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    netns(|| {
        ok("ip link set lo up");
        let legacy = tools.backend == "legacy";
        let load = tools
            .cmd(tools.restore)
            .arg("-w")
            .stdin(std::fs::File::open(fixture("harvester-healthy.rules")).unwrap())
            .output()
            .unwrap();
        assert!(load.status.success(), "{load:?}");
        let resync = if legacy { "200ms" } else { "30s" };
        let cfg = config(&format!(
            "{}\n[daemon]\nresync_interval = \"{resync}\"\nmetrics_listen = \"{METRICS}\"\n",
            harvester_config()
        ));

        // The history (nf_tables) starts before the daemon.
        let events = (!legacy).then(NftEventLog::start);
        let start_chain = (!legacy).then(|| ChainSim::listed("ip", "nat", "PREROUTING"));
        let mut env = vec![];
        if let Some(l) = &tools.lock {
            env.push(("XTABLES_LOCKFILE", l.as_str()));
        }
        let daemon = DaemonProc::start(
            &["--config", cfg.as_str(), "--backend", tools.backend],
            &env,
        );
        assert!(
            daemon.wait_log("ready:", Duration::from_secs(15)),
            "{}",
            daemon.log()
        );
        assert_eq!(tools.chain().unwrap(), healthy());

        let shared = Arc::new(Shared {
            tools: tools.clone(),
            writes: Mutex::new(BTreeMap::new()),
            flush: Mutex::new((None, None)),
            violations: Mutex::new(Vec::new()),
            stop_sampling: AtomicBool::new(false),
            samples: AtomicUsize::new(0),
            last_write: Mutex::new(None),
        });
        let mut rng = Rng::new(&format!("torture {}", tools.backend));
        let t0 = Instant::now();
        let end = t0 + AGENTS_RUN;
        let stop_reading = Arc::new(AtomicBool::new(false));
        let _stop = {
            let (r, s) = (stop_reading.clone(), shared.clone());
            OnDrop(move || {
                r.store(true, Ordering::SeqCst);
                s.stop_sampling.store(true, Ordering::SeqCst);
            })
        };
        let reader = (!legacy).then(|| {
            let stop = stop_reading.clone();
            std::thread::spawn(move || nft_reader(&stop))
        });
        let sampling = {
            let s = shared.clone();
            std::thread::spawn(move || sampler(&s))
        };
        type AgentFn = fn(&Shared, Instant, Rng);
        let agents: Vec<(AgentFn, Instant)> = vec![
            (felix, end + FELIX_EXTRA),
            (kube_proxy, end),
            (portmap, end),
            (buggy_ovn, end),
        ];
        let mut threads = Vec::new();
        for (f, until) in agents {
            let s = shared.clone();
            let r = Rng::seeded(rng.next_u64());
            threads.push(std::thread::spawn(move || f(&s, until, r)));
        }
        {
            let s = shared.clone();
            threads.push(std::thread::spawn(move || flusher(&s, t0 + AGENTS_RUN / 2)));
        }
        // From the moment the last disruptive agents stop, poll the chain until every
        // agent has stopped and the chain is in the declared order; the convergence time
        // is taken from the last write any agent made to the first sample in order after it.
        if let Some(w) = end.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let mut polls: Vec<(Instant, bool)> = Vec::new();
        let mut last;
        let limit = Instant::now() + Duration::from_secs(20);
        loop {
            let t = Instant::now();
            last = tools.chain().unwrap_or_default();
            polls.push((t, last == healthy()));
            let done = threads.iter().all(|t| t.is_finished());
            if (done && polls.last().unwrap().1) || Instant::now() > limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            t.join().expect("an agent panicked");
        }
        let last_write = shared.last_write.lock().unwrap().unwrap_or(end);
        let converged_at = polls
            .iter()
            .find(|(t, ok)| *ok && *t >= last_write)
            .map(|p| p.0);
        let convergence = converged_at.map(|c| c.duration_since(last_write));
        let converged = converged_at.is_some();
        shared.stop_sampling.store(true, Ordering::SeqCst);
        sampling.join().unwrap();
        stop_reading.store(true, Ordering::SeqCst);
        let reads = reader.map(|r| r.join().unwrap()).unwrap_or_default();
        assert!(
            converged,
            "not converged within 20 s after the agents stopped: {last:#?}\n{}",
            daemon.log()
        );
        let convergence = convergence.unwrap();
        // And it stays so: one more second, nothing moves.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(tools.chain().unwrap(), healthy());

        let writes = shared.writes.lock().unwrap().clone();
        let violations = shared.violations.lock().unwrap().clone();
        assert!(
            violations.is_empty(),
            "{} violation(s) in {} samples:\n{}",
            violations.len(),
            shared.samples.load(Ordering::SeqCst),
            violations.join("\n")
        );
        let log = daemon.log();
        assert!(!log.contains("this is a bug"), "{log}");
        let fights: Vec<&str> = log.lines().filter(|l| l.contains("fight")).collect();

        let (daemon_commits, agent_commits, by_process) = if let Some(events) = events {
            let lines = events.stop();
            let (d, a, by) = check_nft_history(&lines, start_chain.unwrap(), daemon.pid(), &reads);
            (d, a, by)
        } else {
            let (_, m) = http_get_at(METRICS, "/metrics").expect("metrics answer");
            let d = metric_value(&m, "jumpset_reconciles_total{result=\"repaired\"}") as usize;
            // The initial reconcile of a healthy chain writes nothing, so every repair
            // counted was made during the run.
            let a: usize = writes.values().sum();
            let by = writes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            (d, a, by)
        };
        figure(&format!(
            "torture {}: {:?} of agents (flush half-way), {} chain samples; commits: daemon {daemon_commits}, agents {agent_commits} ({by_process:?}); agents' successful writes {writes:?}; converged {convergence:?} after the last agent write; fight log lines: {}",
            tools.backend,
            AGENTS_RUN,
            shared.samples.load(Ordering::SeqCst),
            fights.len()
        ));
        for f in fights.iter().take(3) {
            figure(&format!("  {f}"));
        }
        assert!(
            daemon_commits >= 1,
            "the daemon never repaired anything: the torture did not bite"
        );
        assert!(
            writes.get("buggy-kube-ovn").copied().unwrap_or(0) >= 10,
            "{writes:?}"
        );
        assert!(
            daemon_commits <= agent_commits,
            "write loop: the daemon committed {daemon_commits} times, the agents {agent_commits}"
        );
        assert!(
            convergence < Duration::from_secs(15),
            "converged only after {convergence:?}"
        );

        let mut daemon = daemon;
        daemon.proc.signal(libc::SIGTERM);
        assert_eq!(
            daemon.proc.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            daemon.log()
        );
    });
}

/// Rebuild the chain from the monitor's history and check it: every generation's events
/// apply (the history is complete), the rebuilt chain equals every direct read taken at
/// the same generation and the final listing, and every rule a daemon transaction deleted
/// or added is an owned jump. Returns (daemon commits, agent commits, commits by process).
fn check_nft_history(
    lines: &[String],
    start: ChainSim,
    daemon_pid: u32,
    reads: &[(u32, Vec<u64>)],
) -> (usize, usize, Vec<(String, usize)>) {
    let txns = transactions(lines, "ip", "nat", "PREROUTING");
    let mut sim = start;
    let mut at_gen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let (mut ours, mut theirs) = (0, 0);
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let mut foreign_deleted: BTreeMap<String, usize> = BTreeMap::new();
    for t in &txns {
        let deleted = sim
            .apply(t)
            .unwrap_or_else(|e| panic!("the monitor's history is incomplete: {e}"));
        at_gen.insert(t.gen, sim.handles());
        if t.events.is_empty() {
            continue;
        }
        let daemon = t.pid == daemon_pid;
        if daemon {
            ours += 1;
            for (h, text) in &deleted {
                assert_eq!(
                    nft_target(text),
                    Some("OVN-PREROUTING"),
                    "generation {}: the daemon deleted a foreign rule (handle {h}: {text})",
                    t.gen
                );
            }
            for e in &t.events {
                if let RuleEvent::Add { text, handle, .. } = e {
                    assert_eq!(
                        nft_target(text),
                        Some("OVN-PREROUTING"),
                        "generation {}: the daemon wrote a rule that is not its jump (handle {handle}: {text})",
                        t.gen
                    );
                }
            }
        } else {
            theirs += 1;
            for (_, text) in &deleted {
                if nft_target(text) != Some("OVN-PREROUTING") {
                    *foreign_deleted.entry(t.process.clone()).or_default() += 1;
                }
            }
        }
        let who = if daemon {
            "jumpset daemon".to_string()
        } else {
            t.process.clone()
        };
        *by.entry(who).or_default() += 1;
    }
    // The rebuilt history agrees with what the kernel showed directly.
    let mut compared = 0;
    for (gen, handles) in reads {
        if let Some(h) = at_gen.get(&(*gen as u64)) {
            assert_eq!(
                h, handles,
                "generation {gen}: the rebuilt chain differs from a direct read"
            );
            compared += 1;
        }
    }
    assert!(
        compared >= 10,
        "only {compared} direct reads could be compared"
    );
    let now = ChainSim::listed("ip", "nat", "PREROUTING");
    assert_eq!(
        sim.handles(),
        now.handles(),
        "the rebuilt final chain differs from nft -a list"
    );
    figure(&format!(
        "torture nft: {} transactions rebuilt, {compared} direct reads matched the rebuilt chain; foreign rules deleted, by whom: {foreign_deleted:?} (never the daemon)",
        txns.len()
    ));
    (ours, theirs, by.into_iter().collect())
}

#[test]
fn nft_daemon_survives_felix_kube_proxy_portmap_a_buggy_kube_ovn_and_a_flush() {
    torture(Tools {
        backend: "nft",
        ipt: "iptables-nft",
        restore: "iptables-nft-restore",
        save: "iptables-nft-save",
        lock: None,
    });
}

#[test]
fn legacy_daemon_survives_felix_kube_proxy_portmap_a_buggy_kube_ovn_and_a_flush() {
    let lock = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("torture-{}.xtables.lock", std::process::id()));
    torture(Tools {
        backend: "legacy",
        ipt: "iptables-legacy",
        restore: "iptables-legacy-restore",
        save: "iptables-legacy-save",
        lock: Some(lock.to_str().unwrap().to_string()),
    });
    let _ = std::fs::remove_file(lock);
}
