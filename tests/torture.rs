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
//! Packets (issue 18): the node is the data path of crates/jumpset-testkit (client and pod
//! namespaces over veth, kube-proxy's Service DNAT, portmap's hostPort DNAT, counting rules
//! in Calico's and Kube-OVN's chains). A client opens 40 new connections a second to the
//! VIP and the hostPort throughout. Each torture runs twice over the same seeded events:
//! with the daemon, then without it, in fresh namespaces; per phase (before the flush, the
//! flush, after it, agents stopped) the failed connections per second and how many times
//! Kube-OVN's and Calico's chains ran per connection are printed side by side. Asserted:
//! with jumpset, once the agents stop, no connection fails and each agent's chain runs
//! exactly once per new connection.
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
use jumpset_testkit::datapath::{self, Attempt, DataPath, Tally};
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
const METRICS: &str = "127.0.0.1:10296";

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
    /// Every sample's agents' rules: (when the read began, what it found).
    history: Mutex<Vec<(Instant, Foreign)>>,
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
        s.history.lock().unwrap().push((t0, f));
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

/// How long the client keeps connecting once the agents have stopped (and, with jumpset,
/// the chain is in order again).
const SETTLE: Duration = Duration::from_secs(2);
/// The client's pace: one new connection to the VIP and one to the hostPort every
/// `STREAM_EVERY` (40 a second in all), each given `STREAM_TIMEOUT` (less than the first
/// SYN retransmission, so an attempt is one SYN).
const STREAM_EVERY: Duration = Duration::from_millis(50);
const STREAM_TIMEOUT: Duration = Duration::from_millis(900);
/// Connections to each target in the closing batch, one after the other.
const SETTLED_BATCH: usize = 20;

/// The counting rules' packet counters: (Calico's, Kube-OVN's), as `iptables -L -v -x`
/// prints them.
fn count_rules(tools: &Tools) -> Option<(u64, u64)> {
    let first = |chain: &str| -> Option<u64> {
        let out = tools.ipt(&["-L", chain, "-v", "-x", "-n"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(2)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((first("cali-PREROUTING")?, first("OVN-PREROUTING")?))
}

/// Sample the counting rules every 100 ms until told to stop.
fn counter_sampler(tools: &Tools, stop: &AtomicBool) -> Vec<(Instant, (u64, u64))> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        if let Some(c) = count_rules(tools) {
            out.push((t, c));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

/// What the data path went through in one run.
struct PacketRun {
    /// Every connection the client opened during the run, by start time.
    attempts: Vec<Attempt>,
    /// The counting rules' counters, sampled: (when, (Calico's, Kube-OVN's)).
    counters: Vec<(Instant, (u64, u64))>,
    /// The phases: (name, from, to).
    phases: Vec<(&'static str, Instant, Instant)>,
    /// When every agent had stopped (and, with jumpset, the chain was in order again).
    stopped: Instant,
    /// The closing batch, one connection after the other to each target: how they
    /// ended, and how much Calico's and Kube-OVN's counters rose meanwhile.
    settled: (Tally, u64, u64, u64),
    /// How long after the flush kube-proxy's and portmap's jumps were first seen back
    /// (the agents' own re-check period: jumpset never writes them).
    restored: (Option<Duration>, Option<Duration>),
    /// Kube-OVN's jumps in the chain at the end.
    ovn_jumps: usize,
}

/// One phase's figures.
#[derive(Debug, Clone)]
struct PhaseFigures {
    connections: usize,
    failed: usize,
    /// The failures by kind (`: 3 timeout, 1 refused`), or nothing.
    kinds: String,
    secs: f64,
    /// Kube-OVN's and Calico's chain runs per new connection (from the sampled counters).
    ovn_runs: Option<f64>,
    cali_runs: Option<f64>,
}

impl PacketRun {
    fn phase(&self, from: Instant, to: Instant) -> PhaseFigures {
        let within: Vec<&Attempt> = self
            .attempts
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .collect();
        let t = Tally::of(within);
        // The counters at the samples closest to the phase's ends, over the connections
        // started between those two samples.
        let at = |t: Instant| {
            self.counters
                .iter()
                .rev()
                .find(|s| s.0 <= t)
                .or(self.counters.first())
                .copied()
        };
        let runs = match (at(from), at(to)) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let n = self
                    .attempts
                    .iter()
                    .filter(|x| x.at >= a.0 && x.at < b.0)
                    .count();
                (n > 0).then(|| {
                    (
                        (b.1 .1 - a.1 .1) as f64 / n as f64,
                        (b.1 .0 - a.1 .0) as f64 / n as f64,
                    )
                })
            }
            _ => None,
        };
        let kinds: Vec<String> = t
            .failed
            .iter()
            .map(|(o, n)| format!("{n} {}", o.name()))
            .collect();
        PhaseFigures {
            connections: t.attempts,
            failed: t.failures(),
            kinds: if kinds.is_empty() {
                String::new()
            } else {
                format!(": {}", kinds.join(", "))
            },
            secs: to.duration_since(from).as_secs_f64(),
            ovn_runs: runs.map(|r| r.0),
            cali_runs: runs.map(|r| r.1),
        }
    }
}

/// The torture, twice over the same seeded events: with the jumpset daemon, then without
/// it; the client's failed connections per second and the agents' chain runs per
/// connection in each phase, side by side.
fn torture(tools: Tools) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = Rng::new(&format!("torture {}", tools.backend)).next_u64();
    let with = netns(|| run(&tools, seed, true));
    let without = netns(|| run(&tools, seed, false));

    let fmt = |p: PhaseFigures| {
        format!(
            "{}/{} failed ({:.1}/s{}), Kube-OVN's chain {} and Calico's {} per connection",
            p.failed,
            p.connections,
            p.failed as f64 / p.secs,
            p.kinds,
            p.ovn_runs.map_or("?".into(), |r| format!("{r:.2}×")),
            p.cali_runs.map_or("?".into(), |r| format!("{r:.2}×")),
        )
    };
    figure(&format!(
        "torture {} data path: new connections to the VIP and the hostPort ({}/s), same seeded events with and without jumpset:",
        tools.backend,
        2 * (1000 / STREAM_EVERY.as_millis())
    ));
    for (i, (name, from, to)) in with.phases.iter().enumerate() {
        let (_, wf, wt) = without.phases[i];
        figure(&format!(
            "  {name} ({:.1} s): with jumpset {}; without {}",
            to.duration_since(*from).as_secs_f64(),
            fmt(with.phase(*from, *to)),
            fmt(without.phase(wf, wt)),
        ));
    }
    let ms = |d: Option<Duration>| d.map_or("never".into(), |d| format!("{} ms", d.as_millis()));
    figure(&format!(
        "  after the flush kube-proxy's and portmap's own jumps were back after {} and {} with jumpset, {} and {} without (their agents' re-check; jumpset never writes them)",
        ms(with.restored.0),
        ms(with.restored.1),
        ms(without.restored.0),
        ms(without.restored.1)
    ));
    let settled = |r: &PacketRun| {
        format!(
            "{}, Calico's chain +{} and Kube-OVN's +{}",
            r.settled.0.text(),
            r.settled.1,
            r.settled.2
        )
    };
    figure(&format!(
        "  closing batch ({SETTLED_BATCH} to each, one after the other): with jumpset {} ({} Kube-OVN jump(s) in the chain); without {} ({} Kube-OVN jumps)",
        settled(&with),
        with.ovn_jumps,
        settled(&without),
        without.ovn_jumps
    ));

    // With jumpset: once the agents stop, no connection fails and every agent's chain
    // runs exactly once per new connection (a missing jump fails connections, a
    // misordered or duplicated one changes the counts).
    let after: Vec<&Attempt> = with
        .attempts
        .iter()
        .filter(|a| a.at >= with.stopped)
        .collect();
    let t = Tally::of(after.iter().copied());
    assert!(
        t.attempts >= 20,
        "too few connections after the agents stopped: {t:?}"
    );
    assert_eq!(
        t.failures(),
        0,
        "with jumpset, connections failed after the agents stopped: {}",
        t.text()
    );
    let (t, cali, ovn, retrans) = &with.settled;
    assert_eq!(t.ok, t.attempts, "closing batch with jumpset: {}", t.text());
    // Once per pass through the NAT table: one per connection, plus at most one per SYN
    // the client sent again (one dropped before conntrack confirmed it leaves no entry).
    let n = t.attempts as u64;
    assert!(
        (n..=n + retrans).contains(cali) && ovn == cali,
        "with jumpset, Calico's and Kube-OVN's chains must run once per connection: \
         {n} connections ({retrans} SYN(s) sent again), Calico's chain +{cali}, Kube-OVN's +{ovn}"
    );
    // Without it the buggy agent's duplicates stay (how many a packet meets depends on
    // where they landed: the figures above).
    assert!(
        without.ovn_jumps > 1,
        "without jumpset the chain ended with {} Kube-OVN jump(s): the torture did not bite",
        without.ovn_jumps
    );
}

/// One run of the agents in a fresh namespace, with the jumpset daemon or without it, the
/// client connecting throughout. With the daemon every check of the torture is made.
fn run(tools: &Tools, seed: u64, with_jumpset: bool) -> PacketRun {
    ok("ip link set lo up");
    let legacy = tools.backend == "legacy";
    let dp = DataPath::build().expect("the data path builds");
    let load = tools
        .cmd(tools.restore)
        .arg("-w")
        .stdin(std::fs::File::open(fixture("harvester-healthy.rules")).unwrap())
        .output()
        .unwrap();
    assert!(load.status.success(), "{load:?}");
    assert!(tools.restore(&datapath::agent_rules(Family::Ip)));
    let resync = if legacy { "200ms" } else { "30s" };
    let cfg = config(&format!(
        "{}\n[daemon]\nresync_interval = \"{resync}\"\nmetrics_listen = \"{METRICS}\"\napi_socket = \"\"\n",
        harvester_config()
    ));

    // The history (nf_tables) starts before the daemon. It and the direct reader run
    // without the daemon too, so that both runs carry the same instrumentation load.
    let events = (!legacy).then(NftEventLog::start);
    let start_chain = events
        .is_some()
        .then(|| ChainSim::listed("ip", "nat", "PREROUTING"));
    let mut env = vec![];
    if let Some(l) = &tools.lock {
        env.push(("XTABLES_LOCKFILE", l.as_str()));
    }
    let daemon = with_jumpset.then(|| {
        let d = DaemonProc::start(
            &["--config", cfg.as_str(), "--backend", tools.backend],
            &env,
        );
        assert!(d.wait_log("ready:", Duration::from_secs(15)), "{}", d.log());
        d
    });
    assert_eq!(tools.chain().unwrap(), healthy());

    let shared = Arc::new(Shared {
        tools: tools.clone(),
        writes: Mutex::new(BTreeMap::new()),
        flush: Mutex::new((None, None)),
        violations: Mutex::new(Vec::new()),
        stop_sampling: AtomicBool::new(false),
        samples: AtomicUsize::new(0),
        last_write: Mutex::new(None),
        history: Mutex::new(Vec::new()),
    });
    let mut rng = Rng::seeded(seed);
    let stop_reading = Arc::new(AtomicBool::new(false));
    let _stop = {
        let (r, s) = (stop_reading.clone(), shared.clone());
        OnDrop(move || {
            r.store(true, Ordering::SeqCst);
            s.stop_sampling.store(true, Ordering::SeqCst);
        })
    };
    let reader = events.is_some().then(|| {
        let stop = stop_reading.clone();
        std::thread::spawn(move || nft_reader(&stop))
    });
    let sampling = {
        let s = shared.clone();
        std::thread::spawn(move || sampler(&s))
    };
    let counting = {
        let (t, stop) = (tools.clone(), stop_reading.clone());
        std::thread::spawn(move || counter_sampler(&t, &stop))
    };
    let stream = dp
        .stream(
            &[datapath::vip(Family::Ip), datapath::host_port(Family::Ip)],
            STREAM_EVERY,
            STREAM_TIMEOUT,
        )
        .unwrap();
    let t0 = Instant::now();
    let end = t0 + AGENTS_RUN;
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
    // From the moment the last disruptive agents stop, poll the chain until every agent
    // has stopped and (with jumpset) the chain is in the declared order; the convergence
    // time is taken from the last write any agent made to the first sample in order after
    // it.
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
        if (done && (polls.last().unwrap().1 || !with_jumpset)) || Instant::now() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopped = Instant::now();
    for t in threads {
        t.join().expect("an agent panicked");
    }
    let flush_at = shared.flush.lock().unwrap().0.expect("the flush ran");
    // The client goes on for a while with the chain as the agents (and jumpset) left it.
    std::thread::sleep(SETTLE);
    let stream_end = Instant::now();
    let attempts = stream.stop();
    stop_reading.store(true, Ordering::SeqCst);
    let counters = counting.join().unwrap();
    let settled = {
        let before = count_rules(tools).expect("the counting rules");
        let mut all = Vec::new();
        for target in [datapath::vip(Family::Ip), datapath::host_port(Family::Ip)] {
            all.extend(
                dp.connect_n(
                    target,
                    SETTLED_BATCH,
                    Duration::from_millis(20),
                    STREAM_TIMEOUT,
                )
                .unwrap(),
            );
        }
        let after = count_rules(tools).expect("the counting rules");
        let retrans = all.iter().map(|a| u64::from(a.syn_retransmits)).sum();
        (
            Tally::of(&all),
            after.0 - before.0,
            after.1 - before.1,
            retrans,
        )
    };
    let phases = vec![
        ("agents, before the flush", t0, flush_at),
        (
            "the flush and 1 s after",
            flush_at,
            flush_at + Duration::from_secs(1),
        ),
        (
            "agents, after the flush",
            flush_at + Duration::from_secs(1),
            stopped,
        ),
        ("agents stopped", stopped, stream_end),
    ];
    shared.stop_sampling.store(true, Ordering::SeqCst);
    sampling.join().unwrap();
    let flush_end = shared.flush.lock().unwrap().1.expect("the flush ended");
    let back = |has: fn(&Foreign) -> bool| {
        let history = shared.history.lock().unwrap();
        history
            .iter()
            .find(|(t, f)| *t >= flush_end && has(f))
            .map(|(t, _)| t.duration_since(flush_at))
    };
    let packets = PacketRun {
        attempts,
        counters,
        phases,
        stopped,
        settled,
        restored: (back(|f| f.kube > 0), back(|f| f.cni > 0)),
        ovn_jumps: tools
            .chain()
            .unwrap()
            .iter()
            .filter(|l| l.contains("-j OVN-PREROUTING"))
            .count(),
    };
    let reads = reader.map(|r| r.join().unwrap()).unwrap_or_default();
    let violations = shared.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violation(s) in {} samples:\n{}",
        violations.len(),
        shared.samples.load(Ordering::SeqCst),
        violations.join("\n")
    );
    let Some(daemon) = daemon else {
        if let Some(events) = events {
            events.stop();
        }
        return packets;
    };

    let last_write = shared.last_write.lock().unwrap().unwrap_or(end);
    let converged_at = polls
        .iter()
        .find(|(t, ok)| *ok && *t >= last_write)
        .map(|p| p.0);
    assert!(
        converged_at.is_some(),
        "not converged within 20 s after the agents stopped: {last:#?}\n{}",
        daemon.log()
    );
    let convergence = converged_at.unwrap().duration_since(last_write);
    // And it stayed so through the settle time and the closing batch.
    assert_eq!(tools.chain().unwrap(), healthy());

    let writes = shared.writes.lock().unwrap().clone();
    let log = daemon.log();
    assert!(!log.contains("this is a bug"), "{log}");
    let fights: Vec<&str> = log.lines().filter(|l| l.contains("fight")).collect();

    let (daemon_commits, agent_commits, by_process) = if let Some(events) = events {
        let lines = events.stop();
        check_nft_history(&lines, start_chain.unwrap(), daemon.pid(), &reads)
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
    packets
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
