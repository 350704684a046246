//! The engine driven by a fake host on the fake kernel, in virtual time: no root, no
//! sleeps, deterministic (a fixed jitter seed). The real-kernel counterparts of these
//! behaviours are in `tests/daemon.rs`.

use super::engine::{
    Action, Answer, Command, Engine, Event, Host, Notice, Notify, Opened, Reload, Trigger,
};
use super::fight::{Jitter, Tuning, Writer};
use super::ident::{Cgroup, Found, Identity, Proc};
use super::metrics::Shared;
use super::policy::{FightEvent, FightPolicy, PolicyFactory};
use super::{DaemonError, Options};
use crate::backend::BackendError;
use crate::explain::{Finding, FindingKind, Severity};
use crate::snapshot::{Family, Match, Rule, Verdict, ADDRTYPE_LOCAL};
use crate::spec::{BackendChoice, Config, Origin, Rejected, SpecError};
use crate::testing::{jump, rule, FakeKernel, Fault, Step, Subscription};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Level;

const IP: Family = Family::Ip;
const OVN: &str = "kube-ovn prerouting rules";
const CALI: &str = "cali:6gwbT8clXdHdC1b1";
const KUBE: &str = "kubernetes service portals";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------------------
// The scene: the Harvester case (Kube-OVN's jump after Calico's, before kube-proxy's and
// portmap's), in the fake kernel.
// ---------------------------------------------------------------------------------------

const SPEC: &str = r#"
backend = "nft"
families = ["ip"]

[[chain]]
table = "nat"
chain = "PREROUTING"

  [[chain.jump]]
  target  = "OVN-PREROUTING"
  comment = "kube-ovn prerouting rules"
  after   = ["cali-PREROUTING"]
  before  = ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]
  create_chain = true
"#;

fn config_text(daemon: &str) -> String {
    format!("{SPEC}\n[daemon]\nresync_interval = \"30s\"\nmetrics_listen = \"127.0.0.1:10296\"\n{daemon}\n")
}

fn portmap() -> Rule {
    Rule {
        matches: vec![Match::AddrType {
            source: 0,
            dest: ADDRTYPE_LOCAL,
            flags: 0,
        }],
        ..rule(Verdict::Jump("CNI-HOSTPORT-DNAT".into()))
    }
}

/// The other agents' chains and jumps; ours at `ovn_at` (1-based) when given.
fn scene(k: &FakeKernel, ovn_at: Option<usize>) {
    let agents = k.connect(1, "iptables-nft");
    agents
        .transaction(|tx| {
            for c in [
                "cali-PREROUTING",
                "KUBE-SERVICES",
                "CNI-HOSTPORT-DNAT",
                "OVN-PREROUTING",
            ] {
                tx.new_chain(IP, "nat", c)?;
            }
            tx.append(IP, "nat", "PREROUTING", jump(CALI, "cali-PREROUTING"))?;
            tx.append(IP, "nat", "PREROUTING", jump(KUBE, "KUBE-SERVICES"))?;
            tx.append(IP, "nat", "PREROUTING", portmap())?;
            if let Some(p) = ovn_at {
                tx.insert(IP, "nat", "PREROUTING", p, jump(OVN, "OVN-PREROUTING"))?;
            }
            Ok(())
        })
        .unwrap();
}

/// The chain as the spec wants it, as `iptables -S` lists it.
fn healthy() -> Vec<String> {
    vec![
        format!("-A PREROUTING -m comment --comment \"{CALI}\" -j cali-PREROUTING"),
        format!("-A PREROUTING -m comment --comment \"{OVN}\" -j OVN-PREROUTING"),
        format!("-A PREROUTING -m comment --comment \"{KUBE}\" -j KUBE-SERVICES"),
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".to_string(),
    ]
}

/// The position of our jump in the chain (1-based), if it is there once.
fn ovn_position(k: &FakeKernel) -> Option<usize> {
    let rules = k.rules(IP, "nat", "PREROUTING")?;
    let at: Vec<usize> = (0..rules.len())
        .filter(|&i| rules[i].target() == Some("OVN-PREROUTING"))
        .collect();
    (at.len() == 1).then(|| at[0] + 1)
}

// ---------------------------------------------------------------------------------------
// The fake host and the simulation.
// ---------------------------------------------------------------------------------------

/// The engine's world: the fake kernel, a clock the simulation sets, and knobs.
struct FakeHost {
    kernel: FakeKernel,
    now: Instant,
    /// The notification subscription of the open backend (none: x_tables, no
    /// notifications).
    sub: Option<Subscription>,
    /// Whether opened backends deliver notifications.
    notifications: bool,
    /// Queue length of the subscription.
    capacity: usize,
    /// The port id of every backend opened, in order.
    opened: Vec<u32>,
    /// Errors the next opens fail with.
    open_errors: Vec<BackendError>,
    /// What `auto` detects.
    detect: Result<BackendChoice, String>,
    /// Capabilities missing for any backend.
    missing: Vec<String>,
    /// Where `/metrics` is served; `Err` makes the next listen fail.
    listening: Option<SocketAddr>,
    listen_error: Option<std::io::ErrorKind>,
    /// What `/proc` shows of each writer pid (others: exited).
    processes: std::collections::HashMap<u32, Identity>,
    /// What `explain` finds (`None`: the host does not look), how many looks were
    /// started, and the answer of the one under way (what it found when it started).
    findings: Option<Result<Vec<Finding>, String>>,
    explained: usize,
    look: Option<Result<Vec<Finding>, String>>,
    /// Hold the answers of looks back (`Sim::deliver` hands them over otherwise).
    hold_looks: bool,
}

impl FakeHost {
    fn new(kernel: &FakeKernel) -> Self {
        FakeHost {
            kernel: kernel.clone(),
            now: Instant::now(),
            sub: None,
            notifications: true,
            capacity: 1024,
            opened: Vec::new(),
            open_errors: Vec::new(),
            detect: Ok(BackendChoice::Nft),
            missing: Vec::new(),
            listening: None,
            listen_error: None,
            processes: std::collections::HashMap::new(),
            findings: None,
            explained: 0,
            look: None,
            hold_looks: false,
        }
    }
}

impl Host for FakeHost {
    fn now(&self) -> Instant {
        self.now
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn detect(&mut self) -> Result<BackendChoice, String> {
        self.detect.clone()
    }

    fn missing_capabilities(&mut self, _choice: BackendChoice) -> Vec<String> {
        self.missing.clone()
    }

    fn open(
        &mut self,
        _choice: BackendChoice,
        _cfg: &Config,
        _tuning: &Tuning,
    ) -> Result<Opened, BackendError> {
        if !self.open_errors.is_empty() {
            return Err(self.open_errors.remove(0));
        }
        // As the real host: the subscription first, then the socket we commit from.
        self.sub = self
            .notifications
            .then(|| self.kernel.subscribe(self.capacity));
        let backend = self.kernel.connect(777, "jumpsetd");
        self.opened.push(backend.portid());
        Ok(Opened {
            portid: self.notifications.then(|| backend.portid()),
            rcvbuf: self.notifications.then_some(self.capacity * 1024),
            backend: Box::new(backend),
        })
    }

    fn close(&mut self) {
        self.sub = None;
    }

    fn listen(&mut self, addr: Option<SocketAddr>) -> std::io::Result<Option<SocketAddr>> {
        if let (Some(_), Some(kind)) = (addr, self.listen_error) {
            self.listen_error = None;
            return Err(kind.into());
        }
        self.listening = addr;
        Ok(addr)
    }

    fn sleep(&mut self, d: Duration) {
        self.now += d;
    }

    fn identify(&mut self, pid: u32, _comm: Option<&str>) -> Identity {
        self.processes
            .get(&pid)
            .cloned()
            .unwrap_or(Identity::Exited)
    }

    fn look_for_findings(&mut self, _cfg: &Config, _families: &[Family]) -> bool {
        assert!(self.look.is_none(), "a second look while one is under way");
        let Some(found) = self.findings.clone() else {
            return false;
        };
        self.explained += 1;
        self.look = Some(found);
        true
    }
}

const POD: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const CID: &str = "3f2a1b9c0d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";

/// An `iptables` process `pid` started by `parent` (pid `ppid`), in a container of a pod
/// when `in_pod`.
fn iptables_of(pid: u32, ppid: u32, parent: &str, in_pod: bool) -> Identity {
    Identity::Found(Box::new(Found {
        process: Proc {
            pid,
            name: "iptables".into(),
            cmdline: Some("/usr/sbin/iptables -t nat -I PREROUTING 1".into()),
        },
        parent: Some(Proc {
            pid: ppid,
            name: parent.into(),
            cmdline: Some(format!("/usr/local/bin/{parent} --v=3")),
        }),
        cgroup: if in_pod {
            Cgroup {
                pod_uid: Some(POD.into()),
                qos: Some("burstable"),
                container_id: Some(CID.into()),
                runtime: Some("containerd"),
                unit: None,
            }
        } else {
            Cgroup::default()
        },
    }))
}

/// The engine in virtual time: what the loop does, with the clock in the test's hands.
struct Sim {
    engine: Engine<FakeHost>,
    kernel: FakeKernel,
    shared: Arc<Shared>,
    t0: Instant,
    now: Instant,
    deadline: Instant,
    logs: Vec<(Duration, Level, String)>,
    notified: Vec<(Duration, Notify)>,
    answers: Vec<(u64, Answer)>,
    exit: Option<Result<(), DaemonError>>,
}

fn options() -> Options {
    Options {
        jitter_seed: 7,
        build_revision: "0123456789ab".into(),
        ..Options::new("/etc/jumpset/jumpset.toml")
    }
}

impl Sim {
    fn new(kernel: &FakeKernel, config: &str) -> Sim {
        Sim::with(FakeHost::new(kernel), config, None, None)
    }

    fn with(
        host: FakeHost,
        config: &str,
        watchdog: Option<Duration>,
        policy: Option<PolicyFactory>,
    ) -> Sim {
        Sim::with_options(host, config, options(), watchdog, policy)
    }

    fn with_options(
        host: FakeHost,
        config: &str,
        opts: Options,
        watchdog: Option<Duration>,
        policy: Option<PolicyFactory>,
    ) -> Sim {
        let kernel = host.kernel.clone();
        let now = host.now;
        let shared = Shared::new();
        let cfg = Config::from_toml(config).unwrap();
        let mut engine = Engine::new(opts, cfg, host, shared.clone(), watchdog);
        if let Some(p) = policy {
            engine = engine.with_policy(p);
        }
        Sim {
            engine,
            kernel,
            shared,
            t0: now,
            now,
            deadline: now,
            logs: Vec::new(),
            notified: Vec::new(),
            answers: Vec::new(),
            exit: None,
        }
    }

    /// Virtual time since the start.
    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn send(&mut self, event: Event) {
        assert!(self.exit.is_none(), "the engine exited");
        self.engine.host_mut().now = self.now;
        let out = self.engine.on_event(self.now, event);
        let at = self.at();
        for a in out.actions {
            match a {
                Action::Log(level, msg) => self.logs.push((at, level, msg)),
                Action::Notify(n) => self.notified.push((at, n)),
                Action::Answer(id, a) => self.answers.push((id, a)),
                Action::Exit(r) => self.exit = Some(r),
            }
        }
        self.deadline = out.deadline;
    }

    fn start(&mut self) {
        self.send(Event::Start);
    }

    /// Hand the engine whatever the kernel announced since the last call, now, and the
    /// answer of a look under way (unless held back).
    fn deliver(&mut self) {
        if !self.engine.host().hold_looks {
            if let Some(found) = self.engine.host_mut().look.take() {
                self.send(Event::Findings(found));
            }
        }
        let mut batch = Vec::new();
        if let Some(sub) = &self.engine.host().sub {
            while let Some(n) = sub.recv() {
                batch.push(match n {
                    Ok(c) => Notice::Commit(c),
                    Err(_) => Notice::Overflow,
                });
            }
        }
        if !batch.is_empty() {
            self.send(Event::Notifications(batch));
        }
    }

    /// Let `d` of virtual time pass: notifications are delivered as they come, the
    /// engine is woken at each deadline it asked for.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.deliver();
            if self.exit.is_some() || self.deadline > end {
                break;
            }
            self.now = self.now.max(self.deadline);
            self.send(Event::Tick);
        }
        self.now = end;
    }

    /// Commits made by the engine's backends.
    fn our_commits(&self) -> usize {
        self.engine
            .host()
            .opened
            .iter()
            .map(|&p| self.kernel.commits_by(p))
            .sum()
    }

    /// Chain reads by the engine's backends.
    fn our_reads(&self) -> u64 {
        self.engine
            .host()
            .opened
            .iter()
            .map(|&p| self.kernel.reads_by(p))
            .sum()
    }

    fn listing(&self) -> Vec<String> {
        self.kernel.listing(IP, "nat", "PREROUTING")
    }

    fn listing_of(&self, k: &FakeKernel) -> Vec<String> {
        k.listing(IP, "nat", "PREROUTING")
    }

    /// What `/readyz` says: 200 or 503, and the reasons.
    fn readiness(&self) -> (u16, Vec<String>) {
        let h = self.shared.health();
        (if h.ready() { 200 } else { 503 }, h.not_ready)
    }

    /// The log records containing `text`, with their time.
    fn logged(&self, text: &str) -> Vec<(Duration, Level, String)> {
        self.logs
            .iter()
            .filter(|(_, _, m)| m.contains(text))
            .cloned()
            .collect()
    }

    /// The value of one series as `/metrics` shows it (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let text = self.shared.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// The last `STATUS=` sent (with READY=1 or alone).
    fn last_status(&self) -> String {
        self.notified
            .iter()
            .rev()
            .find_map(|(_, n)| match n {
                Notify::Ready(s) | Notify::Status(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

const CHAIN: &str = "{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"}";

fn series(name: &str) -> String {
    format!("{name}{CHAIN}")
}

/// An agent that writes as `iptables-nft` with pid 4242.
fn ovn_agent(k: &FakeKernel) -> FakeKernel {
    k.connect(4242, "iptables-nft")
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

#[test]
fn start_repairs_a_broken_chain_in_one_commit_then_says_ready() {
    let k = FakeKernel::new();
    scene(&k, Some(4)); // ours last: after kube-proxy's and portmap's
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    assert!(sim.exit.is_none());
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.our_commits(), 1);
    let repaired = sim.logged("repaired in one transaction");
    assert_eq!(repaired.len(), 1, "{:?}", sim.logs);
    assert!(repaired[0].2.contains("at start"), "{}", repaired[0].2);
    assert_eq!(
        sim.engine.host().listening,
        Some("127.0.0.1:10296".parse().unwrap())
    );
    assert_eq!(
        sim.notified,
        [(
            Duration::ZERO,
            Notify::Ready("fake: ip nat PREROUTING: in order".into())
        )]
    );
    assert_eq!(sim.metric(&series("jumpset_repairs_total")), 1.0);
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 1.0);
    assert_eq!(
        sim.metric(&format!(
            "jumpset_info{{backend=\"fake\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // Nothing is due before the resync.
    assert_eq!(sim.deadline - sim.t0, secs(30));
}

#[test]
fn a_foreign_change_is_repaired_once_its_writer_is_quiet_and_a_burst_is_read_once() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let ovn = ovn_agent(&k);
    let mut sim = Sim::new(&k, &config_text(""));
    let settle = Tuning::default().fight.settle_unknown;
    let margin = Tuning::default().fight.settle_margin;
    sim.start();
    assert_eq!(sim.our_commits(), 0, "healthy at start: nothing written");
    sim.run_for(secs(1));

    // A duplicate of our jump at the top, by a writer never seen: it may be in the middle
    // of a read-modify-write of its own, so the repair waits `settle_unknown`.
    ovn.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
        .unwrap();
    sim.deliver();
    let reads = sim.our_reads();
    sim.run_for(settle - ms(1));
    assert_eq!(
        sim.our_commits(),
        0,
        "still waiting for the writer to be quiet"
    );
    // Read once (at the debounce) all the same, so what is reported is what the kernel
    // has: out of order.
    assert_eq!(sim.our_reads(), reads + 1);
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 0.0);
    sim.run_for(ms(1));
    assert_eq!(
        sim.listing(),
        healthy(),
        "repaired once the writer was quiet"
    );
    assert_eq!(sim.our_commits(), 1);
    let line = &sim.logged("repaired in one transaction")[0];
    assert_eq!(line.0, secs(1) + settle);
    assert!(
        line.2.contains(
            "undoing a change to kube-ovn rules (notified 100.00 ms before) by pid 4242 (iptables-nft), exited before jumpset could look at it:"
        ),
        "{}",
        line.2
    );
    assert_eq!(
        sim.metric("jumpset_notifications_total{source=\"foreign\"}"),
        1.0
    );
    assert_eq!(sim.metric("jumpset_repair_latency_seconds_count"), 1.0);
    assert_eq!(
        sim.metric(
            "jumpset_undos_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\",agent=\"unknown\"}"
        ),
        1.0
    );

    // A burst of three commits 1 ms apart by a writer /proc shows, known from before
    // (its bursts are one commit): one read, one repair, the margin after the last.
    sim.engine
        .host_mut()
        .processes
        .insert(4343, iptables_of(4343, 4300, "kube-ovn-daemon", false));
    let known = k.connect(4343, "iptables");
    known
        .insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
        .unwrap();
    sim.deliver();
    sim.run_for(settle);
    assert_eq!(sim.our_commits(), 2, "first seen: the settle");
    sim.run_for(secs(2));
    let reads = sim.our_reads();
    for _ in 0..3 {
        known
            .insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
            .unwrap();
        sim.deliver();
        sim.run_for(ms(1));
    }
    sim.run_for(margin - ms(2));
    assert_eq!(
        sim.our_commits(),
        2,
        "not before the margin after its last commit"
    );
    assert_eq!(
        sim.our_reads(),
        reads + 1,
        "read once, after the burst's debounce"
    );
    sim.run_for(ms(1));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.our_commits(), 3, "one repair for the burst");
    // A burst by a writer not known (gone before /proc was read): the settle after it.
    let reads = sim.our_reads();
    ovn.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
        .unwrap();
    sim.deliver();
    sim.run_for(settle - ms(1));
    assert_eq!(sim.our_reads(), reads + 1, "the held-off read");
    sim.run_for(ms(1));
    assert_eq!(sim.listing(), healthy());
    // Then one read for the plan and one to verify the commit.
    assert_eq!(sim.our_reads() - reads, 3);
}

#[test]
fn our_own_commits_are_ignored() {
    let k = FakeKernel::new();
    scene(&k, Some(4));
    let other = k.connect(99, "kube-proxy");
    other.new_chain(IP, "nat", "KUBE-MARK-MASQ").unwrap();
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    assert_eq!(sim.our_commits(), 1);
    let reads = sim.our_reads();
    // The notification of our repair arrives, and later ones of nothing we manage (rules
    // of other chains; a chain created in another table).
    sim.run_for(ms(10));
    other.new_chain(IP, "filter", "KUBE-FIREWALL").unwrap();
    other
        .append(IP, "nat", "KUBE-MARK-MASQ", rule(Verdict::Accept))
        .unwrap();
    other
        .append(IP, "filter", "FORWARD", rule(Verdict::Accept))
        .unwrap();
    sim.deliver();
    sim.run_for(secs(20));
    assert_eq!(
        sim.metric("jumpset_notifications_total{source=\"own\"}"),
        1.0
    );
    assert_eq!(
        sim.metric("jumpset_notifications_total{source=\"foreign\"}"),
        0.0,
        "other chains are not ours to count"
    );
    assert_eq!(sim.our_reads(), reads, "neither is read");
    assert_eq!(sim.our_commits(), 1);
}

#[test]
fn a_notification_overflow_rereads_every_chain() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut host = FakeHost::new(&k);
    host.capacity = 4;
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    // A flood elsewhere, and in the middle of it our jump is deleted: its notification is
    // among those lost.
    let other = k.connect(5, "iptables-nft");
    for i in 0..10 {
        if i == 6 {
            other.delete_at(IP, "nat", "PREROUTING", 2).unwrap();
        }
        other
            .append(IP, "filter", "FORWARD", rule(Verdict::Accept))
            .unwrap();
    }
    assert_eq!(ovn_position(&k), None);
    sim.deliver();
    assert_eq!(sim.listing(), healthy(), "re-read at once and repaired");
    let overflowed = sim.logged("overflowed (ENOBUFS)");
    assert_eq!(overflowed.len(), 1);
    assert_eq!(overflowed[0].1, Level::WARN);
    assert!(sim.logged("repaired in one transaction")[0]
        .2
        .contains("found by a re-read"));
    assert_eq!(sim.metric("jumpset_notification_overflows_total"), 1.0);
    assert_eq!(sim.metric("jumpset_resyncs_total"), 1.0);
}

#[test]
fn without_notifications_the_resync_timer_is_the_poll() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut host = FakeHost::new(&k);
    host.notifications = false;
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    assert_eq!(
        sim.logged("no change notifications exist for x_tables; polling every 30.0 s")
            .len(),
        1
    );
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.run_for(secs(29));
    assert_eq!(ovn_position(&k), None, "not seen before the poll");
    sim.run_for(secs(1));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.logged("found by a re-read")[0].0, secs(30));
}

/// Kube-OVN before v1.13.13, sped up: every 50 ms, unless its jump is first, it
/// inserts it at the top (leaving the other copy) — undoing each of our repairs. Runs
/// for `d`; returns its commits.
fn buggy_kube_ovn(sim: &mut Sim, d: Duration) -> usize {
    let ovn = ovn_agent(&sim.kernel);
    let end = sim.at() + d;
    let mut undos = 0;
    while sim.at() < end {
        let first = sim.kernel.rules(IP, "nat", "PREROUTING").unwrap()[0].clone();
        if first.target() != Some("OVN-PREROUTING") {
            ovn.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
                .unwrap();
            undos += 1;
            sim.deliver();
        }
        sim.run_for(ms(50));
    }
    undos
}

#[test]
fn without_notifications_a_fight_is_paced_by_what_the_polls_see_and_ends_soon_after_the_writer() {
    // x_tables: no notifications, a poll every 200 ms. The buggy Kube-OVN undoes every
    // repair within 50 ms for 10 s. The polls see the chain change each time: jumpset
    // yields within its budget, and once the writer stops the retry comes after two of
    // the periods the polls saw, not when the budget allows a commit again.
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut host = FakeHost::new(&k);
    host.notifications = false;
    let cfg = config_text("").replace("resync_interval = \"30s\"", "resync_interval = \"200ms\"");
    let mut sim = Sim::with(host, &cfg, None, None);
    sim.start();
    buggy_kube_ovn(&mut sim, secs(10));
    let commits = sim.our_commits();
    assert!(commits <= 8, "{commits} repairs in 10 s: not paced");
    assert_eq!(sim.metric(&series("jumpset_fights_total")), 1.0);
    let stopped = sim.at();
    while sim.listing() != healthy() && sim.at() < stopped + secs(30) {
        sim.run_for(ms(10));
    }
    let took = sim.at() - stopped;
    assert_eq!(sim.listing(), healthy());
    // The writer's period as jumpset saw it: it undid each retry at once, so the time
    // between the last two retries. Back in order within three of those (and a poll),
    // where pacing by the budget alone waited for the end of the first 20 s (10.2 s).
    let retries: Vec<Duration> = sim
        .logged("repaired in one transaction")
        .iter()
        .map(|l| l.0)
        .filter(|t| *t < stopped)
        .collect();
    let period = retries[retries.len() - 1] - retries[retries.len() - 2];
    eprintln!("retries at {retries:?}; back in order {took:?} after the writer stopped");
    assert!(
        took <= period * 3 + ms(200),
        "back in order {took:?} after the writer stopped, its period {period:?} ({commits} repairs during the fight)"
    );
}

#[test]
fn a_fight_ends_jumpset_yields_and_the_chain_recovers_when_the_writer_stops() {
    // Without fight detection every undo is repaired: about one commit per 50 ms.
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let opts = Options {
        tuning: Tuning::default().without_fight_detection(),
        ..options()
    };
    let mut sim = Sim::with_options(FakeHost::new(&k), &config_text(""), opts, None, None);
    sim.start();
    buggy_kube_ovn(&mut sim, secs(10));
    let unpaced = sim.our_commits();
    assert!(unpaced >= 150, "{unpaced}");

    // With it: three undos, then jumpset yields.
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let ovn = ovn_agent(&k);
    let mut host = FakeHost::new(&k);
    host.processes
        .insert(4242, iptables_of(4242, 4200, "kube-ovn-daemon", true));
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    let undos = buggy_kube_ovn(&mut sim, secs(20));
    let commits = sim.our_commits();
    eprintln!("20 Hz undoer for 20 s: {commits} repairs ({undos} undos); {unpaced} in 10 s without fight detection");
    assert!(
        commits <= 8,
        "{commits} repairs in 20 s ({undos} undos): it did not yield"
    );
    assert_eq!(sim.metric(&series("jumpset_fights_total")), 1.0);
    assert_eq!(sim.metric(&series("jumpset_fight_active")), 1.0);
    let fight = &sim.logged("fight: ")[0];
    assert_eq!(fight.1, Level::WARN);
    for said in [
        "pid 4242 (iptables-nft), parent 4200 (kube-ovn-daemon) `/usr/local/bin/kube-ovn-daemon --v=3`, container containerd 3f2a1b9c0d4e of pod 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 (burstable)",
        "touching kube-ovn rules",
        "yielding: jumpset stops writing this chain",
    ] {
        assert!(fight.2.contains(said), "{said}: {}", fight.2);
    }
    // Its jump is first now: it has nothing left to undo and goes quiet; jumpset retries
    // after twice its observed period, it undoes that at once, and so on, less and less
    // often. The status names it, as the latest writer, and says jumpset yields.
    assert!(
        sim.engine.status().contains("fight with pid 4242 (iptables-nft), parent 4200 (kube-ovn-daemon), container containerd 3f2a1b9c0d4e"),
        "{}",
        sim.engine.status()
    );
    assert_eq!(
        sim.metric(
            "jumpset_undos_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\",agent=\"kube-ovn\"}"
        ),
        commits as f64
    );
    // The writer stops: within 30 s the chain is put back, and the episode ends once
    // nothing wrote the chain for `end_quiet`.
    sim.run_for(secs(30));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.metric(&series("jumpset_fight_yielding")), 0.0);
    sim.run_for(Tuning::default().fight.end_quiet);
    assert_eq!(sim.metric(&series("jumpset_fight_active")), 0.0);
    assert_eq!(sim.logged("the other writer stopped").len(), 1);
    assert_eq!(
        sim.last_status(),
        "fake: ip nat PREROUTING: in order",
        "no fight in STATUS any more"
    );
    let before = sim.our_commits();
    ovn.delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    // (its bursts, commits under 1 s apart, were long in the fight: it is waited for
    // that long, never more than settle_cap)
    sim.run_for(Tuning::default().fight.settle_cap);
    assert_eq!(
        sim.listing(),
        healthy(),
        "one undo is repaired without a fight again"
    );
    assert_eq!(sim.our_commits(), before + 1);
}

/// A policy that holds every repair 500 ms after a change, to show that the engine
/// follows whatever policy it is given (the do-no-harm policy replaces the standard one).
#[derive(Debug, Default)]
struct HoldHalfASecond {
    until: Option<Instant>,
}

impl FightPolicy for HoldHalfASecond {
    fn changed(&mut self, now: Instant, writer: &Writer, _rng: &mut Jitter) -> Option<FightEvent> {
        self.until = Some(now + ms(500));
        Some(FightEvent::Started {
            writer: writer.clone(),
            undos: 0,
            quiet: ms(500),
        })
    }

    fn reconciled(
        &mut self,
        _now: Instant,
        _undid: Option<&Writer>,
        _rng: &mut Jitter,
    ) -> Option<FightEvent> {
        None
    }

    fn not_before(&self) -> Option<Instant> {
        self.until
    }

    fn next_check(&self) -> Option<Instant> {
        self.until
    }

    fn tick(&mut self, now: Instant, _pending: bool) -> Option<FightEvent> {
        if self.until? > now {
            return None;
        }
        self.until = None;
        Some(FightEvent::Ended {
            lasted: ms(500),
            undos: 0,
        })
    }

    fn active(&self) -> bool {
        self.until.is_some()
    }

    fn status(&self) -> Option<String> {
        self.until.map(|_| "held by the test policy".into())
    }
}

#[test]
fn the_engine_paces_repairs_as_its_fight_policy_says() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let policy: PolicyFactory = |_| Box::new(HoldHalfASecond::default());
    let mut sim = Sim::with(FakeHost::new(&k), &config_text(""), None, Some(policy));
    sim.start();
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    assert_eq!(sim.metric(&series("jumpset_fight_active")), 1.0);
    assert_eq!(sim.metric(&series("jumpset_fights_total")), 1.0);
    sim.run_for(ms(100));
    assert_eq!(ovn_position(&k), None, "held, not repaired at the debounce");
    // Held, but read: what is reported follows the kernel.
    assert!(
        sim.last_status()
            .contains("PREROUTING: out of order, held by the test policy"),
        "{}",
        sim.last_status()
    );
    sim.run_for(ms(400));
    assert_eq!(sim.listing(), healthy(), "repaired when the policy allows");
    assert_eq!(sim.logged("repaired in one transaction")[0].0, ms(500));
    assert_eq!(sim.metric(&series("jumpset_fight_active")), 0.0);
    assert_eq!(
        sim.logged("the other writer stopped (0 undos over 500.00 ms)")
            .len(),
        1
    );
}

#[test]
fn an_invalid_reload_keeps_the_old_config() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    sim.run_for(secs(1));
    sim.send(Event::Reload(Reload::signal(Config::from_toml(
        "[[chain]]\ntable = 7\n",
    ))));
    let refused =
        sim.logged("SIGHUP: /etc/jumpset/jumpset.toml is invalid, keeping the old config");
    assert_eq!(refused.len(), 1, "{:?}", sim.logs);
    assert_eq!(refused[0].1, Level::ERROR);
    assert!(
        sim.last_status()
            .contains("in order | config reload failed, old config kept: "),
        "{}",
        sim.last_status()
    );
    assert_eq!(
        sim.metric("jumpset_config_reloads_total{result=\"error\"}"),
        1.0
    );
    // The old config still rules.
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(ms(100));
    assert_eq!(sim.listing(), healthy());

    // A config this process cannot honour (another backend, its capability dropped).
    sim.engine.host_mut().missing = vec!["CAP_NET_RAW".into()];
    sim.send(Event::Reload(Reload::signal(Config::from_toml(
        &config_text("").replace("backend = \"nft\"", "backend = \"legacy\""),
    ))));
    assert_eq!(
        sim.logged("SIGHUP: keeping the old config: backend legacy needs CAP_NET_RAW")
            .len(),
        1
    );
    // One whose metrics address cannot be listened on (yet) is taken all the same: the
    // chains matter more than the metrics; the address is tried again until it works.
    sim.engine.host_mut().listen_error = Some(std::io::ErrorKind::AddrInUse);
    sim.send(Event::Reload(Reload::signal(Config::from_toml(
        &config_text("").replace("127.0.0.1:10296", "127.0.0.1:10297"),
    ))));
    let failed = sim.logged("metrics_listen = \"127.0.0.1:10297\": cannot listen");
    assert_eq!(failed.len(), 1, "{:?}", sim.logs);
    assert_eq!(failed[0].1, Level::ERROR);
    assert!(
        failed[0].2.contains("trying again in 1.0 s"),
        "{}",
        failed[0].2
    );
    assert_eq!(
        sim.metric("jumpset_config_reloads_total{result=\"error\"}"),
        2.0
    );
    assert_eq!(
        sim.engine.config().daemon.metrics_listen.unwrap().port(),
        10297
    );
    assert_eq!(sim.engine.host().listening, None);
    sim.run_for(secs(1));
    assert_eq!(
        sim.engine.host().listening,
        Some("127.0.0.1:10297".parse().unwrap())
    );
    assert_eq!(sim.engine.host().opened.len(), 1, "the backend was kept");

    // A valid one replaces it: a second jump, appended after the others.
    let extra = format!(
        "{}\n  [[chain.jump]]\n  target = \"EXTRA-PREROUTING\"\n  comment = \"extra\"\n  after = [\"CNI-HOSTPORT-DNAT\"]\n  create_chain = true\n",
        SPEC.trim_end()
    );
    sim.send(Event::Reload(Reload::signal(Config::from_toml(&format!(
        "{extra}\n[daemon]\nresync_interval = \"30s\"\nmetrics_listen = \"127.0.0.1:10296\"\n"
    )))));
    assert_eq!(sim.logged("SIGHUP: reloaded").len(), 2);
    assert_eq!(
        sim.metric("jumpset_config_reloads_total{result=\"ok\"}"),
        2.0
    );
    assert_eq!(
        sim.engine.host().listening,
        Some("127.0.0.1:10296".parse().unwrap())
    );
    let l = sim.listing();
    assert_eq!(l.len(), 5);
    assert_eq!(
        l[4],
        "-A PREROUTING -m comment --comment extra -j EXTRA-PREROUTING"
    );
    assert!(
        !sim.last_status().contains("reload failed"),
        "{}",
        sim.last_status()
    );
    assert_eq!(sim.logged("after a config reload").len(), 1);
}

#[test]
fn kernel_errors_back_off_exponentially_then_recover() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    // Seven failing reads: the first is the read at the debounce while the repair waits
    // for the writer's quiet, the six others those of six reconciles.
    for _ in 0..7 {
        k.fail_next(Step::Read, Fault::Errno(libc::EBUSY));
    }
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(secs(1));
    assert_eq!(ovn_position(&k), None, "still failing");
    assert!(
        sim.last_status()
            .contains("error: reading ip nat PREROUTING"),
        "{}",
        sim.last_status()
    );
    sim.run_for(secs(10));
    assert_eq!(sim.listing(), healthy(), "repaired once the kernel answers");
    assert_eq!(sim.last_status(), "fake: ip nat PREROUTING: in order");
    let failed: Vec<Duration> = sim.logged("reconcile failed").iter().map(|l| l.0).collect();
    assert_eq!(failed.len(), 6);
    assert_eq!(
        failed[0],
        Tuning::default().fight.settle_unknown,
        "the first attempt once the writer is quiet"
    );
    // 100 ms doubling, each stretched by less than 20 % of jitter.
    for (i, w) in failed.windows(2).enumerate() {
        let base = ms(100 << i);
        let gap = w[1] - w[0];
        assert!(gap >= base && gap < base.mul_f64(1.2), "retry {i}: {gap:?}");
    }
    assert_eq!(
        sim.metric("jumpset_reconciles_total{result=\"error\"}"),
        6.0
    );
    assert_eq!(sim.our_commits(), 1);
    assert_eq!(
        sim.engine.host().opened.len(),
        1,
        "a kernel refusal keeps the socket"
    );
}

#[test]
fn a_failed_socket_is_reopened_and_everything_reread() {
    let k = FakeKernel::new();
    scene(&k, Some(4));
    let mut sim = Sim::new(&k, &config_text(""));
    k.fail_next(Step::Read, Fault::Io);
    sim.start();
    assert_eq!(
        sim.logged("the kernel socket failed: reopening the backend")
            .len(),
        1
    );
    sim.run_for(ms(200));
    assert_eq!(sim.engine.host().opened.len(), 2, "reopened");
    assert_eq!(sim.listing(), healthy());
    // The notification subscription failing does the same.
    sim.send(Event::Notifications(vec![Notice::Failed(
        "receiving nf_tables notifications: boom".into(),
    )]));
    assert_eq!(
        sim.logged("receiving nf_tables notifications: boom: reopening the backend")
            .len(),
        1
    );
    assert_eq!(sim.engine.host().opened.len(), 3);
    assert_eq!(sim.our_commits(), 1, "re-read, nothing to write");
}

#[test]
fn a_converged_chain_is_never_written() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    let g = k.current_generation();
    // Ten minutes: twenty resyncs, and foreign changes that leave our placement right.
    let kube = k.connect(300, "kube-proxy");
    for i in 0..10 {
        sim.run_for(secs(60));
        kube.append(IP, "nat", "PREROUTING", jump(KUBE, "KUBE-SERVICES"))
            .unwrap();
        if i % 2 == 1 {
            kube.delete_at(IP, "nat", "PREROUTING", 5).unwrap();
        }
        sim.deliver();
    }
    sim.run_for(secs(1));
    assert_eq!(sim.our_commits(), 0);
    assert_eq!(
        k.history()
            .iter()
            .filter(|c| c.portid != kube.portid())
            .count(),
        1,
        "only the scene's own commit besides kube-proxy's"
    );
    assert!(k.current_generation() > g);
    assert!(sim.our_reads() >= 30, "read each time: {}", sim.our_reads());
    assert_eq!(sim.metric("jumpset_resyncs_total"), 20.0);
    assert!(sim.metric("jumpset_reconciles_total{result=\"noop\"}") >= 30.0);
    assert_eq!(
        sim.metric("jumpset_reconciles_total{result=\"repaired\"}"),
        0.0
    );
}

#[test]
fn a_writer_between_our_read_and_write_makes_a_replan_not_a_mess() {
    let k = FakeKernel::new();
    scene(&k, Some(4));
    let intruder = k.connect(66, "calico-felix");
    k.before_next_apply(move || {
        intruder
            .insert(IP, "nat", "PREROUTING", 1, rule(Verdict::Return))
            .unwrap();
    });
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    let mut want = healthy();
    want.insert(0, "-A PREROUTING -j RETURN".into());
    assert_eq!(sim.listing(), want, "the intruder's rule kept, ours placed");
    assert_eq!(sim.metric("jumpset_stale_retries_total"), 1.0);
    assert!(
        sim.logged("re-planned 1 time(s) after concurrent writes")
            .len()
            == 1
    );
}

#[test]
fn a_missing_target_with_create_chain_false_is_an_error_until_it_appears() {
    let k = FakeKernel::new();
    scene(&k, None);
    let agents = k.connect(1, "iptables-nft");
    agents.delete_chain(IP, "nat", "OVN-PREROUTING").unwrap();
    let text = config_text("").replace("create_chain = true", "create_chain = false");
    let mut sim = Sim::new(&k, &text);
    sim.start();
    assert!(
        sim.last_status()
            .contains("chain OVN-PREROUTING does not exist and create_chain = false"),
        "{}",
        sim.last_status()
    );
    assert_eq!(sim.our_commits(), 0);
    sim.run_for(secs(1));
    assert_eq!(sim.readiness().0, 503);
    // Kube-OVN creates its chain (a chain created in the managed table: read at once);
    // the next retry repairs.
    ovn_agent(&k)
        .new_chain(IP, "nat", "OVN-PREROUTING")
        .unwrap();
    sim.deliver();
    sim.run_for(secs(2));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.readiness(), (200, vec![]));
    assert_eq!(sim.last_status(), "fake: ip nat PREROUTING: in order");
}

#[test]
fn stop_with_cleanup_on_exit_removes_the_owned_jumps() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text("cleanup_on_exit = true"));
    sim.start();
    sim.run_for(secs(5));
    sim.send(Event::Stop);
    assert!(matches!(sim.exit, Some(Ok(()))));
    assert_eq!(ovn_position(&k), None);
    let mut left = healthy();
    left.remove(1);
    assert_eq!(sim.listing(), left, "only the owned jump is gone");
    assert_eq!(
        sim.logged("cleanup_on_exit: removed the owned jumps").len(),
        1
    );
    assert_eq!(
        sim.notified.last().unwrap().1,
        Notify::Stopping("stopping".into())
    );
}

#[test]
fn watchdog_pings_come_every_interval() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::with(FakeHost::new(&k), &config_text(""), Some(secs(10)), None);
    sim.start();
    sim.run_for(secs(35));
    let pings: Vec<Duration> = sim
        .notified
        .iter()
        .filter(|(_, n)| *n == Notify::Watchdog)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(pings, [secs(10), secs(20), secs(30)]);
}

#[test]
fn auto_waits_for_an_undecided_host_and_detects_again() {
    let k = FakeKernel::new();
    let mut host = FakeHost::new(&k);
    host.detect = Err("backend auto: the host is empty".into());
    let text = config_text("").replace("backend = \"nft\"", "backend = \"auto\"");
    let mut sim = Sim::with(host, &text, None, None);
    sim.start();
    assert_eq!(
        sim.notified,
        [(
            Duration::ZERO,
            Notify::Ready("waiting: backend auto: the host is empty".into())
        )]
    );
    assert_eq!(sim.logged("detecting again every 30.0 s").len(), 1);
    sim.run_for(secs(10));
    assert!(sim.engine.host().opened.is_empty());
    // iptables-nft comes into use; the next detection picks it.
    scene(&k, Some(4));
    sim.engine.host_mut().detect = Ok(BackendChoice::Nft);
    sim.run_for(secs(25));
    assert_eq!(sim.engine.host().opened.len(), 1);
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.last_status(), "fake: ip nat PREROUTING: in order");
    assert_eq!(sim.logged("detecting again").len(), 1, "said once");
}

#[test]
fn start_fails_only_for_privilege_and_an_unusable_metrics_address_is_retried() {
    let k = FakeKernel::new();
    let mut host = FakeHost::new(&k);
    host.open_errors.push(BackendError::Permission {
        step: "subscribing to nf_tables notifications".into(),
        capability: "CAP_NET_ADMIN",
    });
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    match &sim.exit {
        Some(Err(e)) => {
            assert_eq!(e.exit_code(), 3);
            assert!(e.to_string().contains("needs CAP_NET_ADMIN"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.notified.is_empty(), "no READY=1");

    // A metrics port another process holds: logged, retried, never fatal.
    let k2 = FakeKernel::new();
    scene(&k2, Some(4));
    let mut host = FakeHost::new(&k2);
    host.listen_error = Some(std::io::ErrorKind::AddrInUse);
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    assert!(sim.exit.is_none(), "{:?}", sim.exit);
    assert_eq!(
        sim.listing_of(&k2),
        healthy(),
        "the chain is repaired all the same"
    );
    assert_eq!(
        sim.logged("metrics_listen = \"127.0.0.1:10296\": cannot listen")
            .len(),
        1
    );
    assert_eq!(sim.engine.host().listening, None);
    sim.run_for(secs(1));
    assert_eq!(
        sim.engine.host().listening,
        Some("127.0.0.1:10296".parse().unwrap()),
        "listening once the port is free"
    );

    // Any other failure to open is retried with backoff, READY=1 all the same.
    let mut host = FakeHost::new(&k);
    host.open_errors.push(BackendError::Kernel {
        step: "x".into(),
        errno: libc::EIO,
        message: "i/o".into(),
    });
    scene(&k, Some(4));
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    assert!(sim.exit.is_none());
    assert!(
        sim.last_status()
            .starts_with("waiting: cannot open the nft backend"),
        "{}",
        sim.last_status()
    );
    sim.run_for(ms(150));
    assert_eq!(sim.listing(), healthy());
}

#[test]
fn a_deleted_table_is_noticed_and_rebuilt() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    k.connect(8, "nft").delete_table(IP, "nat").unwrap();
    sim.deliver();
    sim.run_for(ms(100));
    assert_eq!(
        sim.listing(),
        [format!(
            "-A PREROUTING -m comment --comment \"{OVN}\" -j OVN-PREROUTING"
        )],
        "table, base chain, target chain and our jump are back; the others' are theirs to restore"
    );
    let repaired = &sim.logged("repaired in one transaction")[0].2;
    assert!(
        repaired.contains("generation") && repaired.contains("by pid 8 (nft)"),
        "{repaired}"
    );
    // The other agents' jumps went with the table: witnessed, each with the writer.
    let gone = sim.logged("is gone: the last rule jumping to it was removed by pid 8 (nft)");
    assert_eq!(gone.len(), 3, "{:?}", sim.logs);
}

/// Kube-OVN v1.13.13's `ensureNatPreroutingRule` (pkg/daemon/gateway_linux.go), one pass
/// on the fake kernel in virtual time: when its jump is missing, insert it at 1; else
/// find kube-proxy's jump and insert its own at that index (at 1 when absent) unless a
/// copy already stands above it; then list the chain `list` later and, `delete` after
/// that listing, delete every copy but the top one by index, bottom-up, from the listing
/// — each `iptables` call its own commit. Returns whether it wrote.
fn kube_ovn_pass(sim: &mut Sim, ovn: &FakeKernel, list: Duration, delete: Duration) -> bool {
    let positions = |rules: &[Rule], target: &str| -> Vec<usize> {
        (0..rules.len())
            .rev()
            .filter(|&i| rules[i].target() == Some(target))
            .map(|i| i + 1)
            .collect()
    };
    let rules = sim.kernel.rules(IP, "nat", "PREROUTING").unwrap();
    let own = positions(&rules, "OVN-PREROUTING");
    let at = if own.is_empty() {
        1
    } else {
        let kube = positions(&rules, "KUBE-SERVICES");
        let at = kube.last().copied().unwrap_or(1);
        if own.last().copied().unwrap() < at {
            return false;
        }
        at
    };
    ovn.insert(IP, "nat", "PREROUTING", at, jump(OVN, "OVN-PREROUTING"))
        .unwrap();
    sim.deliver();
    sim.run_for(list);
    let listed = positions(
        &sim.kernel.rules(IP, "nat", "PREROUTING").unwrap(),
        "OVN-PREROUTING",
    );
    sim.run_for(delete);
    for &p in listed.iter().take(listed.len().saturating_sub(1)) {
        // `iptables -D PREROUTING p`: whatever stands at p now.
        let _ = ovn.delete_at(IP, "nat", "PREROUTING", p);
        sim.deliver();
    }
    true
}

/// The scene without kube-proxy's jump (no kube-proxy on the node).
fn scene_without_kube_proxy(k: &FakeKernel) {
    scene(k, Some(2));
    k.connect(1, "iptables-nft")
        .delete_at(IP, "nat", "PREROUTING", 3)
        .unwrap();
}

fn portmap_jumps(k: &FakeKernel) -> usize {
    k.rules(IP, "nat", "PREROUTING")
        .unwrap()
        .iter()
        .filter(|r| r.target() == Some("CNI-HOSTPORT-DNAT"))
        .count()
}

#[test]
fn kube_ovn_deleting_by_index_loses_nothing_when_jumpset_waits_for_it() {
    let run = |tuning: Tuning, passes: usize| {
        let k = FakeKernel::new();
        scene_without_kube_proxy(&k);
        let ovn = k.connect(4300, "iptables");
        let mut host = FakeHost::new(&k);
        host.processes
            .insert(4300, iptables_of(4300, 4200, "kube-ovn-daemon", true));
        let opts = Options {
            tuning,
            ..options()
        };
        let mut sim = Sim::with_options(host, &config_text(""), opts, None, None);
        sim.start();
        let mut lost_at = None;
        let mut wrote = 0;
        for pass in 0..passes {
            let t = sim.at();
            wrote += usize::from(kube_ovn_pass(&mut sim, &ovn, ms(1), ms(10)));
            if portmap_jumps(&k) == 0 && lost_at.is_none() {
                lost_at = Some(pass);
            }
            sim.run_for(secs(3) - (sim.at() - t));
        }
        (sim, lost_at, wrote)
    };

    // Repairing 2 ms after its insert lands between its listing (1 ms) and its delete by
    // index (11 ms): the delete takes portmap's jump, the very first pass.
    let (sim, lost, _) = run(Tuning::default().without_fight_detection(), 1);
    assert_eq!(lost, Some(0));
    let gone = sim.logged("anchor CNI-HOSTPORT-DNAT is gone");
    assert_eq!(gone.len(), 1, "{:?}", sim.logs);
    assert!(
        gone[0]
            .2
            .contains("removed by pid 4300 (iptables), parent 4200 (kube-ovn-daemon)"),
        "{}",
        gone[0].2
    );

    // Waiting for it to be quiet: nothing lost, over a minute of passes (a fight: every
    // pass re-places its jump, as v1.13.13 does without kube-proxy's jump).
    let (mut sim, lost, wrote) = run(Tuning::default(), 20);
    assert_eq!(lost, None, "{:?}", sim.logs);
    assert_eq!(wrote, 20, "it wrote on every pass");
    let ours = sim.our_commits();
    eprintln!("Kube-OVN v1.13.13 without kube-proxy, 20 passes: {ours} repairs, nothing lost");
    assert!(ours <= 8, "{ours}");
    assert!(
        sim.engine.status().contains("yielding"),
        "{}",
        sim.engine.status()
    );
    assert_eq!(sim.metric(&series("jumpset_fight_yielding")), 1.0);
    // It stops: the chain is put back within three of its periods (3 s).
    sim.run_for(secs(9));
    assert_eq!(
        sim.listing(),
        [
            format!("-A PREROUTING -m comment --comment \"{CALI}\" -j cali-PREROUTING"),
            format!("-A PREROUTING -m comment --comment \"{OVN}\" -j OVN-PREROUTING"),
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".to_string(),
        ]
    );
    assert!(
        sim.logged("is gone").is_empty(),
        "{:?}",
        sim.logged("is gone")
    );

    // With kube-proxy's jump in place v1.13.13 finds its own above it and writes nothing.
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let ovn = k.connect(4300, "iptables");
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    for _ in 0..10 {
        assert!(!kube_ovn_pass(&mut sim, &ovn, ms(1), ms(10)));
        sim.run_for(secs(3));
    }
    assert_eq!(sim.our_commits(), 0);
    assert_eq!(sim.listing(), healthy());
}

#[test]
fn a_deleted_anchor_is_logged_with_its_writer_counted_and_not_written_back() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut host = FakeHost::new(&k);
    host.processes
        .insert(4343, iptables_of(4343, 4300, "kube-proxy", false));
    let text = format!("expect_anchors = true\n{}", config_text(""));
    let mut sim = Sim::with(host, &text, None, None);
    sim.start();
    let anchor = |a: &str| {
        format!("jumpset_anchor_present{{family=\"ip\",table=\"nat\",chain=\"PREROUTING\",anchor=\"{a}\"}}")
    };
    for a in ["cali-PREROUTING", "KUBE-SERVICES", "CNI-HOSTPORT-DNAT"] {
        assert_eq!(sim.metric(&anchor(a)), 1.0, "{a}");
    }
    sim.run_for(secs(1));

    // kube-proxy's jump deleted (its own process, say, or anyone's).
    let kube = k.connect(4343, "iptables");
    kube.delete_at(IP, "nat", "PREROUTING", 3).unwrap();
    sim.deliver();
    let gone = sim.logged("anchor KUBE-SERVICES is gone");
    assert_eq!(gone.len(), 1, "{:?}", sim.logs);
    assert_eq!(gone[0].1, Level::WARN);
    assert!(
        gone[0].2.contains("removed by pid 4343 (iptables), parent 4300 (kube-proxy) `/usr/local/bin/kube-proxy --v=3`"),
        "{}",
        gone[0].2
    );
    assert!(gone[0].2.contains("jumpset does not write it back"));
    assert_eq!(sim.metric(&anchor("KUBE-SERVICES")), 0.0);
    assert_eq!(
        sim.metric("jumpset_anchor_removals_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\",anchor=\"KUBE-SERVICES\",agent=\"kube-proxy\"}"),
        1.0
    );
    sim.run_for(secs(5));
    let mut left = healthy();
    left.remove(2);
    assert_eq!(sim.listing(), left, "not written back");
    assert_eq!(sim.our_commits(), 0);
    assert!(
        sim.last_status().contains("anchor KUBE-SERVICES absent"),
        "{}",
        sim.last_status()
    );
    assert_eq!(
        sim.metric(&series("jumpset_chain_in_order")),
        0.0,
        "expect_anchors"
    );
    assert_eq!(sim.logged("is gone").len(), 1, "said once");

    // It comes back.
    kube.append(IP, "nat", "PREROUTING", jump(KUBE, "KUBE-SERVICES"))
        .unwrap();
    sim.deliver();
    sim.run_for(secs(1));
    assert_eq!(
        sim.logged("anchor KUBE-SERVICES is back: added by pid 4343")
            .len(),
        1
    );
    assert_eq!(sim.metric(&anchor("KUBE-SERVICES")), 1.0);
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 1.0);
    assert_eq!(sim.last_status(), "fake: ip nat PREROUTING: in order");
}

// ---------------------------------------------------------------------------------------
// What the daemon tells: health that follows the kernel, readiness with its reasons.
// ---------------------------------------------------------------------------------------

/// The scene with our jump in place and a config whose jump does not create its chain.
fn no_create() -> String {
    config_text("").replace("create_chain = true", "create_chain = false")
}

#[test]
fn every_reconcile_failing_is_out_of_order_and_not_ready_then_recovers() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &no_create());
    sim.start();
    assert_eq!(sim.readiness(), (200, vec![]));
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 1.0);
    // Kube-OVN goes away with its chain: our jump cannot be put back without it.
    ovn_agent(&k)
        .transaction(|tx| {
            tx.delete_at(IP, "nat", "PREROUTING", 2)?;
            tx.delete_chain(IP, "nat", "OVN-PREROUTING")
        })
        .unwrap();
    sim.deliver();
    // Read at the debounce while the repair waits for the writer's quiet: out of order.
    sim.run_for(ms(2));
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 0.0);
    assert_eq!(
        sim.readiness(),
        (503, vec!["ip nat PREROUTING: out of order".into()])
    );
    // The repair fails.
    sim.run_for(Tuning::default().fight.settle_unknown);
    let (code, why) = sim.readiness();
    assert_eq!(code, 503);
    assert!(
        why[0].starts_with("ip nat PREROUTING: out of order (last reconcile failed: ")
            && why[0].contains("OVN-PREROUTING does not exist"),
        "{why:?}"
    );
    assert!(
        sim.last_status().contains("error: "),
        "{}",
        sim.last_status()
    );
    // Three in a row: said so.
    sim.run_for(ms(400));
    let (_, why) = sim.readiness();
    assert!(
        why.iter()
            .any(|w| w.starts_with("ip nat PREROUTING: 3 reconciles failed in a row")),
        "{why:?}"
    );
    assert_eq!(
        sim.metric("jumpset_errors_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\",step=\"missing_target\"}"),
        3.0
    );
    // Its chain comes back: in order and ready again.
    ovn_agent(&k)
        .new_chain(IP, "nat", "OVN-PREROUTING")
        .unwrap();
    sim.deliver();
    sim.run_for(secs(2));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.readiness(), (200, vec![]));
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 1.0);
    assert_eq!(sim.metric("jumpset_ready"), 1.0);
}

#[test]
fn a_renamed_target_chain_is_noticed_at_once_and_its_return_too() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &no_create());
    sim.start();
    sim.run_for(secs(1));
    let reads = sim.our_reads();
    // `nft rename chain ip nat OVN-PREROUTING OVN-OLD`: our jump now leads there.
    let nft = k.connect(9, "nft");
    nft.rename_chain(IP, "nat", "OVN-PREROUTING", "OVN-OLD")
        .unwrap();
    sim.deliver();
    sim.run_for(ms(2));
    assert!(sim.our_reads() > reads, "read at once, not at the resync");
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 0.0);
    assert_eq!(sim.readiness().0, 503);
    // Renamed back: read at once again, in order, ready (no write was possible or needed).
    nft.rename_chain(IP, "nat", "OVN-OLD", "OVN-PREROUTING")
        .unwrap();
    sim.deliver();
    sim.run_for(ms(2));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 1.0);
    assert_eq!(sim.readiness(), (200, vec![]));
    assert_eq!(sim.last_status(), "fake: ip nat PREROUTING: in order");
    assert_eq!(sim.our_commits(), 0);
}

#[test]
fn a_renamed_target_chain_with_create_chain_is_declared_again() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    let nft = k.connect(9, "nft");
    nft.rename_chain(IP, "nat", "OVN-PREROUTING", "OVN-OLD")
        .unwrap();
    sim.deliver();
    sim.run_for(Tuning::default().fight.settle_unknown);
    // Our jump to the renamed chain is not ours any more than a jump elsewhere would be:
    // the declared one is back, with its chain.
    assert!(k.chain_exists(IP, "nat", "OVN-PREROUTING"));
    assert_eq!(ovn_position(&k), Some(2), "{:?}", sim.listing());
    assert_eq!(sim.readiness(), (200, vec![]));
}

#[test]
fn while_a_repair_is_held_off_the_chain_is_read_and_reported_as_it_is() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let policy: PolicyFactory = |_| Box::new(HoldHalfASecond::default());
    let mut sim = Sim::with(FakeHost::new(&k), &config_text(""), None, Some(policy));
    sim.start();
    let ovn = ovn_agent(&k);
    ovn.delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(ms(2));
    assert_eq!(ovn_position(&k), None, "held");
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 0.0);
    let (code, why) = sim.readiness();
    assert_eq!(code, 503);
    assert_eq!(why, ["ip nat PREROUTING: out of order"]);
    // The other writer puts it back itself while we hold off: read, in order, nothing
    // left to write when the hold ends.
    ovn.insert(IP, "nat", "PREROUTING", 2, jump(OVN, "OVN-PREROUTING"))
        .unwrap();
    sim.deliver();
    sim.run_for(ms(2));
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 1.0);
    assert!(
        sim.last_status()
            .contains("in order, held by the test policy"),
        "{}",
        sim.last_status()
    );
    sim.run_for(secs(1));
    assert_eq!(sim.our_commits(), 0);
    assert_eq!(sim.readiness(), (200, vec![]));
}

#[test]
fn a_fight_is_not_ready_until_it_ends_and_never_stops_the_engine() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::with(FakeHost::new(&k), &config_text(""), Some(secs(1)), None);
    sim.start();
    let ovn = ovn_agent(&k);
    let mut samples = Vec::new();
    let end = sim.at() + secs(10);
    while sim.at() < end {
        let first = k.rules(IP, "nat", "PREROUTING").unwrap()[0].clone();
        if first.target() != Some("OVN-PREROUTING") {
            ovn.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
                .unwrap();
            sim.deliver();
        }
        sim.run_for(ms(25));
        // What the kernel has, against what the daemon says.
        let truly = ovn_position(&k) == Some(2);
        samples.push((truly, sim.metric(&series("jumpset_chain_in_order")) == 1.0));
        sim.run_for(ms(25));
    }
    assert_eq!(sim.metric(&series("jumpset_fight_active")), 1.0);
    let (code, why) = sim.readiness();
    assert_eq!(code, 503);
    assert!(
        why.iter().any(|w| w.starts_with(
            "ip nat PREROUTING: yielding in a fight (fight with pid 4242 (iptables-nft)"
        )),
        "{why:?}"
    );
    // Never said "in order" when it was not.
    let lies = samples.iter().filter(|(t, said)| *said && !*t).count();
    assert_eq!(lies, 0, "{samples:?}");
    assert!(samples.iter().filter(|(t, _)| !*t).count() > samples.len() / 2);
    // The engine kept its rhythm: a watchdog ping every second.
    let pings = sim
        .notified
        .iter()
        .filter(|(_, n)| *n == Notify::Watchdog)
        .count();
    assert!(pings >= 9, "{pings}");
    // It ends (once the writer stopped: a retry when quiet, the episode over after
    // `end_quiet`): ready again.
    sim.run_for(Tuning::default().fight.end_quiet + secs(5));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.readiness(), (200, vec![]));
}

/// A policy that holds every repair 90 s after a change.
#[derive(Debug, Default)]
struct HoldLong {
    until: Option<Instant>,
}

impl FightPolicy for HoldLong {
    fn changed(&mut self, now: Instant, _writer: &Writer, _rng: &mut Jitter) -> Option<FightEvent> {
        self.until = Some(now + secs(90));
        None
    }
    fn reconciled(
        &mut self,
        _now: Instant,
        _undid: Option<&Writer>,
        _rng: &mut Jitter,
    ) -> Option<FightEvent> {
        None
    }
    fn not_before(&self) -> Option<Instant> {
        self.until
    }
    fn next_check(&self) -> Option<Instant> {
        None
    }
    fn tick(&mut self, _now: Instant, _pending: bool) -> Option<FightEvent> {
        None
    }
    fn active(&self) -> bool {
        false
    }
    fn status(&self) -> Option<String> {
        None
    }
}

#[test]
fn no_reconcile_succeeding_for_60_s_while_one_is_due_is_not_ready() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let policy: PolicyFactory = |_| Box::new(HoldLong::default());
    let mut sim = Sim::with(FakeHost::new(&k), &config_text(""), None, Some(policy));
    sim.start();
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(secs(59));
    let (_, why) = sim.readiness();
    assert_eq!(why, ["ip nat PREROUTING: out of order"]);
    sim.run_for(secs(1));
    let (_, why) = sim.readiness();
    assert_eq!(
        why[1], "ip nat PREROUTING: no reconcile succeeded for 60.0 s although one was due",
        "{why:?}"
    );
    sim.run_for(secs(31));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.readiness(), (200, vec![]));
}

/// Run `f` right before the `n`th next apply (by any handle).
fn at_apply(k: &FakeKernel, n: usize, f: impl FnOnce() + Send + 'static) {
    if n <= 1 {
        k.before_next_apply(f);
    } else {
        let k2 = k.clone();
        k.before_next_apply(move || at_apply(&k2, n - 1, f));
    }
}

#[test]
fn under_unrelated_churn_the_write_is_anchored_after_three_stale_attempts() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    // Another table changes between each of our reads and writes: every guarded write
    // is stale.
    k.churn(true);
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(Tuning::default().fight.settle_unknown);
    assert_eq!(
        sim.listing(),
        healthy(),
        "repaired once the writer is quiet"
    );
    assert_eq!(sim.our_commits(), 1);
    assert_eq!(sim.metric("jumpset_stale_retries_total"), 3.0);
    let line = &sim.logged("repaired in one transaction")[0].2;
    assert!(
        line.contains("anchored on the rules it moves after 3 stale attempt(s)"),
        "{line}"
    );

    // An anchored write cannot see a rule inserted since its read: a duplicate of our
    // jump put on top right before it commits is found by the read-back, and removed.
    let ovn = ovn_agent(&k);
    let dup = ovn.clone();
    at_apply(&k, 4, move || {
        dup.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
            .unwrap();
    });
    ovn.delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(Tuning::default().fight.settle_unknown);
    assert_eq!(sim.listing(), healthy());
    assert_eq!(
        sim.our_commits(),
        3,
        "the anchored write, then the one after its read-back"
    );
    assert_eq!(sim.metric("jumpset_stale_retries_total"), 7.0);
    k.churn(false);
}

#[test]
fn a_busy_xtables_lock_is_tried_again_on_the_timer_and_never_waited_for() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let text = config_text("").replace("families", "xtables_lock_timeout = \"1s\"\nfamilies");
    let mut sim = Sim::with(FakeHost::new(&k), &text, Some(ms(200)), None);
    sim.start();
    for _ in 0..8 {
        k.fail_next(Step::Apply, Fault::Locked);
    }
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(ms(500));
    assert_eq!(ovn_position(&k), None);
    assert!(
        sim.last_status()
            .contains("PREROUTING: out of order, waiting for the xtables lock"),
        "{}",
        sim.last_status()
    );
    assert!(
        sim.logged("PREROUTING: reconcile failed").is_empty(),
        "not an error yet"
    );
    sim.run_for(secs(2));
    assert_eq!(sim.listing(), healthy(), "repaired once the lock is free");
    let failed = sim.logged("PREROUTING: reconcile failed");
    assert_eq!(failed.len(), 1, "{:?}", sim.logs);
    assert!(
        failed[0].2.contains(
            "the xtables lock /run/xtables.lock was held by another process (iptables-legacy or another agent) for all of xtables_lock_timeout = 1.0 s"
        ),
        "{}",
        failed[0].2
    );
    // Tried first once the writer is quiet, then for 1 s.
    let first = Tuning::default().fight.settle_unknown;
    assert!(
        failed[0].0 >= first + secs(1) && failed[0].0 < first + ms(1200),
        "{:?}",
        failed[0].0
    );
    assert!(sim.logged("the kernel socket failed").is_empty());
    assert_eq!(sim.engine.host().opened.len(), 1);
    assert_eq!(
        sim.metric(
            "jumpset_errors_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\",step=\"lock\"}"
        ),
        1.0
    );
    // The watchdog kept its rhythm all along.
    let pings: Vec<Duration> = sim
        .notified
        .iter()
        .filter(|(_, n)| *n == Notify::Watchdog)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(pings, (1..=12).map(|i| ms(200 * i)).collect::<Vec<_>>());

    // "0s": one try, then it is an error.
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let text = config_text("").replace("families", "xtables_lock_timeout = \"0s\"\nfamilies");
    let mut sim = Sim::new(&k, &text);
    sim.start();
    k.fail_next(Step::Apply, Fault::Locked);
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(Tuning::default().fight.settle_unknown);
    let failed = sim.logged("PREROUTING: reconcile failed");
    assert_eq!(failed.len(), 1, "{:?}", sim.logs);
    assert!(
        failed[0]
            .2
            .contains("at the one try xtables_lock_timeout = \"0s\" allows"),
        "{}",
        failed[0].2
    );
    sim.run_for(ms(200));
    assert_eq!(sim.listing(), healthy());
}

#[test]
fn paused_writes_read_and_report_and_resume_repairs() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    let now = sim.now;
    sim.engine.set_paused(now, Some("maintenance".into()));
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    sim.run_for(secs(40));
    assert_eq!(ovn_position(&k), None, "no write while paused");
    assert_eq!(sim.our_commits(), 0);
    assert_eq!(sim.metric(&series("jumpset_chain_in_order")), 0.0);
    let (code, why) = sim.readiness();
    assert_eq!(code, 503);
    assert_eq!(why[0], "paused: maintenance");
    let now = sim.now;
    sim.engine.set_paused(now, None);
    sim.run_for(ms(1));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.readiness(), (200, vec![]));
}

#[test]
fn a_rejected_fragment_is_reported_and_the_rest_runs() {
    let k = FakeKernel::new();
    scene(&k, Some(4));
    let rejected = Rejected {
        agent: "felix".into(),
        origin: Origin::DropIn {
            path: "/etc/jumpset/jumpset.d/20-felix.toml".into(),
            agent: "felix".into(),
        },
        error: SpecError::new("chain[0].jump[0].after", Some(3), "a cycle"),
    };
    let shared = Shared::new();
    let cfg = Config::from_toml(&config_text("")).unwrap();
    let mut engine = Engine::new(options(), cfg, FakeHost::new(&k), shared.clone(), None)
        .with_rejected(vec![rejected.clone()]);
    let out = engine.on_event(Instant::now(), Event::Start);
    assert_eq!(
        k.listing(IP, "nat", "PREROUTING"),
        healthy(),
        "the rest runs"
    );
    assert!(out.actions.iter().any(|a| matches!(a,
        Action::Log(Level::ERROR, m) if m.starts_with("config: /etc/jumpset/jumpset.d/20-felix.toml is left out, the rest runs: "))));
    let h = shared.health();
    assert!(!h.ready());
    assert!(
        h.not_ready[0].starts_with("config: /etc/jumpset/jumpset.d/20-felix.toml left out: "),
        "{:?}",
        h.not_ready
    );
    assert!(
        h.status.ends_with("| 1 config fragment(s) left out"),
        "{}",
        h.status
    );
    let text = shared.encode();
    assert!(
        text.contains("jumpset_config_fragments_rejected 1"),
        "{text}"
    );

    // The file is fixed: a change of the files reloads, the fragment is taken again.
    let cfg = Config::from_toml(&config_text("")).unwrap();
    let out = engine.on_event(
        Instant::now(),
        Event::Reload(Reload {
            trigger: Trigger::Changed,
            loaded: Ok((cfg.clone(), Vec::new())),
        }),
    );
    assert!(out.actions.iter().any(|a| matches!(a,
        Action::Log(Level::INFO, m) if m == "config: /etc/jumpset/jumpset.d/20-felix.toml is taken again")));
    assert!(shared.health().ready());
    assert!(shared
        .encode()
        .contains("jumpset_config_fragments_rejected 0"));
    // The same again (files touched, not changed): nothing reloaded.
    let out = engine.on_event(
        Instant::now(),
        Event::Reload(Reload {
            trigger: Trigger::Changed,
            loaded: Ok((cfg, Vec::new())),
        }),
    );
    assert!(
        !out.actions
            .iter()
            .any(|a| matches!(a, Action::Log(_, m) if m.contains("reloaded"))),
        "{:?}",
        out.actions
    );
}

#[test]
fn the_state_is_in_readiness_and_the_build_is_in_the_metrics() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    let h = sim.shared.health();
    assert!(h.ready());
    assert_eq!(h.status, "fake: ip nat PREROUTING: in order");
    assert_eq!(
        sim.metric(&format!(
            "jumpset_build_info{{version=\"{}\",revision=\"0123456789ab\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
}

// ---------------------------------------------------------------------------------------
// The local API's requests.
// ---------------------------------------------------------------------------------------

/// The main file of a node where Kube-OVN claims its jump through the API.
const NO_CHAINS: &str = "backend = \"nft\"\nfamilies = [\"ip\"]\n";

/// The config with `agent`'s claim of `jumps` (JSON) in nat PREROUTING.
fn claimed(agent: &str, jumps: &str) -> Config {
    let f = crate::spec::Fragment::from_json(
        agent,
        &format!(
            r#"{{"chains": [{{"table": "nat", "chain": "PREROUTING", "jumps": [{jumps}]}}]}}"#
        ),
    )
    .unwrap();
    crate::spec::ConfigBuilder::from_toml(NO_CHAINS)
        .unwrap()
        .fragment(f)
        .build()
        .unwrap()
}

const OVN_CLAIM: &str = r#"{"target": "OVN-PREROUTING", "comment": "kube-ovn prerouting rules", "after": ["cali-PREROUTING"], "before": ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]}"#;

fn claim_call(agent: &str, config: Config, reconcile: bool, remove: bool) -> Command {
    Command::Claim(Box::new(super::engine::ClaimChange {
        agent: agent.into(),
        config,
        rejected: Vec::new(),
        reconcile,
        remove,
    }))
}

impl Sim {
    /// The answer to call `id`, if it was answered.
    fn answer(&self, id: u64) -> Option<&Answer> {
        self.answers.iter().find(|(i, _)| *i == id).map(|(_, a)| a)
    }
}

#[test]
fn a_claim_is_reconciled_at_once_and_answered_with_the_report_and_its_handle() {
    let k = FakeKernel::new();
    scene(&k, None);
    let mut sim = Sim::new(&k, NO_CHAINS);
    sim.start();
    assert_eq!(sim.listing().len(), 3, "nothing managed yet");
    sim.send(Event::Call(
        1,
        claim_call("kube-ovn", claimed("kube-ovn", OVN_CLAIM), true, false),
    ));
    let Some(Answer::Applied(report)) = sim.answer(1) else {
        panic!("{:?}", sim.answers)
    };
    assert_eq!(sim.listing(), healthy(), "in place when the answer comes");
    assert_eq!(report["committed"], true, "{report}");
    let handle = report["ops"][0]["handle"]
        .as_u64()
        .expect("the insert's handle");
    assert_eq!(
        k.rules(IP, "nat", "PREROUTING").unwrap()[1].handle,
        handle,
        "{report}"
    );
    assert!(!sim
        .logged("API: agent kube-ovn claims 1 jump(s) (before: 0)")
        .is_empty());
    // The same claim again: nothing to write, answered at once.
    let commits = sim.our_commits();
    sim.send(Event::Call(
        2,
        claim_call("kube-ovn", claimed("kube-ovn", OVN_CLAIM), true, false),
    ));
    let Some(Answer::Applied(report)) = sim.answer(2) else {
        panic!("{:?}", sim.answers)
    };
    assert_eq!(report["committed"], false);
    assert_eq!(sim.our_commits(), commits);
    // Status and check through the API: the claimed jump is jumpset's, declared by the agent.
    sim.send(Event::Call(3, Command::Chains));
    let Some(Answer::Report(status)) = sim.answer(3) else {
        panic!()
    };
    let ovn = status["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == "OVN-PREROUTING")
        .unwrap();
    assert_eq!(
        (&ovn["owner"], &ovn["declared_by"]),
        (&"jumpset".into(), &"kube-ovn".into())
    );
    sim.send(Event::Call(4, Command::Check));
    let Some(Answer::Report(check)) = sim.answer(4) else {
        panic!()
    };
    assert_eq!(check["verdict"], "converged", "{check}");
}

#[test]
fn a_claim_waits_for_the_writers_quiet_then_is_answered() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    // A foreign writer moves things: the repair waits for its quiet.
    ovn_agent(&k).delete_at(IP, "nat", "PREROUTING", 2).unwrap();
    sim.deliver();
    let cfg = {
        let f = crate::spec::Fragment::from_json(
            "meshd",
            r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "MESH", "comment": "mesh", "after": ["OVN-PREROUTING"], "before": ["KUBE-SERVICES"]}]}]}"#,
        )
        .unwrap();
        crate::spec::ConfigBuilder::from_toml(&config_text(""))
            .unwrap()
            .fragment(f)
            .build()
            .unwrap()
    };
    sim.send(Event::Call(9, claim_call("meshd", cfg, true, false)));
    assert!(
        sim.answer(9).is_none(),
        "held for the writer's quiet: {:?}",
        sim.answers
    );
    sim.run_for(Tuning::default().fight.settle_unknown + ms(5));
    let Some(Answer::Applied(report)) = sim.answer(9) else {
        panic!("{:?}", sim.answers)
    };
    assert_eq!(report["committed"], true, "{report}");
    let targets: Vec<Option<String>> = k
        .rules(IP, "nat", "PREROUTING")
        .unwrap()
        .iter()
        .map(|r| r.target().map(str::to_string))
        .collect();
    assert_eq!(
        targets,
        [
            Some("cali-PREROUTING".into()),
            Some("OVN-PREROUTING".into()),
            Some("MESH".into()),
            Some("KUBE-SERVICES".into()),
            Some("CNI-HOSTPORT-DNAT".into())
        ]
    );
}

#[test]
fn paused_a_claim_is_held_and_applied_on_resume_and_the_state_says_since_when() {
    let k = FakeKernel::new();
    scene(&k, None);
    let mut sim = Sim::new(&k, NO_CHAINS);
    sim.start();
    sim.send(Event::Call(1, Command::Pause("maintenance".into())));
    let Some(Answer::State(s)) = sim.answer(1).cloned() else {
        panic!()
    };
    assert_eq!(s.paused.as_deref(), Some("maintenance"));
    assert_eq!(s.since, Some(sim.engine.host().wall()));
    assert!(!s.health.ready());
    assert!(
        sim.last_status().contains("paused: maintenance"),
        "{}",
        sim.last_status()
    );
    sim.send(Event::Call(
        2,
        claim_call("kube-ovn", claimed("kube-ovn", OVN_CLAIM), true, false),
    ));
    match sim.answer(2) {
        Some(Answer::Held { state, reason }) => {
            assert_eq!((*state, reason.as_str()), ("paused", "maintenance"))
        }
        other => panic!("{other:?}"),
    }
    sim.run_for(secs(5));
    assert_eq!(sim.our_commits(), 0, "no write while paused");
    sim.send(Event::Call(3, Command::Resume));
    let Some(Answer::State(s)) = sim.answer(3).cloned() else {
        panic!()
    };
    assert_eq!((s.paused, s.since), (None, None));
    assert_eq!(sim.listing(), healthy(), "applied on resume");
    sim.send(Event::Call(4, Command::State));
    assert!(matches!(sim.answer(4), Some(Answer::State(s)) if s.health.ready()));
}

#[test]
fn handing_jumps_back_leaves_them_or_removes_them_and_nothing_else() {
    let k = FakeKernel::new();
    scene(&k, None);
    let mut sim = Sim::new(&k, NO_CHAINS);
    sim.start();
    sim.send(Event::Call(
        1,
        claim_call("kube-ovn", claimed("kube-ovn", OVN_CLAIM), true, false),
    ));
    assert_eq!(sim.listing(), healthy());
    let none = Config::from_toml(NO_CHAINS).unwrap();
    // Without removal: the jump stays, foreign from now on.
    sim.send(Event::Call(
        2,
        claim_call("kube-ovn", none.clone(), false, false),
    ));
    assert_eq!(sim.answer(2), Some(&Answer::Removed(None)));
    assert_eq!(sim.listing(), healthy());
    assert!(!sim
        .logged("API: agent kube-ovn handed its 1 jump(s) back")
        .is_empty());
    // Claimed again, then handed back with removal: one transaction, the foreign rules kept.
    sim.send(Event::Call(
        3,
        claim_call("kube-ovn", claimed("kube-ovn", OVN_CLAIM), true, false),
    ));
    let commits = sim.our_commits();
    sim.send(Event::Call(
        4,
        claim_call("kube-ovn", none.clone(), false, true),
    ));
    let Some(Answer::Removed(Some(report))) = sim.answer(4) else {
        panic!("{:?}", sim.answers)
    };
    assert_eq!(report["committed"], true, "{report}");
    assert_eq!(report["ops"][0]["op"], "delete", "{report}");
    assert_eq!(sim.our_commits(), commits + 1);
    let mut without = healthy();
    without.remove(1);
    assert_eq!(sim.listing(), without);
    // While paused the removal waits for the resume.
    sim.send(Event::Call(
        5,
        claim_call("kube-ovn", claimed("kube-ovn", OVN_CLAIM), true, false),
    ));
    sim.send(Event::Call(6, Command::Pause("maintenance".into())));
    sim.send(Event::Call(7, claim_call("kube-ovn", none, false, true)));
    assert!(matches!(
        sim.answer(7),
        Some(Answer::Held {
            state: "paused",
            ..
        })
    ));
    assert_eq!(sim.listing(), healthy());
    sim.send(Event::Call(8, Command::Resume));
    assert_eq!(sim.listing(), without);
}

#[test]
fn reads_without_a_backend_are_unavailable_and_claims_are_held_as_starting() {
    let k = FakeKernel::new();
    scene(&k, None);
    let mut host = FakeHost::new(&k);
    host.detect = Err("backend auto: the host is mixed".into());
    let mut sim = Sim::with(host, &NO_CHAINS.replace("\"nft\"", "\"auto\""), None, None);
    sim.start();
    sim.send(Event::Call(1, Command::Chains));
    assert!(
        matches!(sim.answer(1), Some(Answer::Unavailable(w)) if w.contains("mixed")),
        "{:?}",
        sim.answers
    );
    sim.send(Event::Call(
        2,
        claim_call(
            "kube-ovn",
            claimed("kube-ovn", OVN_CLAIM).clone(),
            true,
            false,
        ),
    ));
    assert!(
        matches!(
            sim.answer(2),
            Some(Answer::Held {
                state: "starting",
                ..
            })
        ),
        "{:?}",
        sim.answers
    );
}

#[test]
fn a_claim_on_a_chain_yielded_in_a_fight_is_held_and_the_fight_is_not_forgotten() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    buggy_kube_ovn(&mut sim, secs(20));
    assert_eq!(sim.metric(&series("jumpset_fight_yielding")), 1.0);
    let commits = sim.our_commits();
    let f = crate::spec::Fragment::from_json(
        "meshd",
        r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "MESH", "comment": "mesh", "after": ["OVN-PREROUTING"]}]}]}"#,
    )
    .unwrap();
    let cfg = crate::spec::ConfigBuilder::from_toml(&config_text(""))
        .unwrap()
        .fragment(f)
        .build()
        .unwrap();
    sim.send(Event::Call(1, claim_call("meshd", cfg, true, false)));
    match sim.answer(1) {
        Some(Answer::Held { state, reason }) => {
            assert_eq!(*state, "yielding");
            assert!(reason.contains("fight with pid 4242"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The new config did not end the fight: still no write until the writer is quiet.
    assert_eq!(sim.our_commits(), commits);
    assert_eq!(sim.metric(&series("jumpset_fight_yielding")), 1.0);
}

fn finding(kind: FindingKind, key: &str) -> Finding {
    Finding {
        kind,
        severity: Severity::Warning,
        family: Some(IP),
        hook: None,
        summary: format!("ip: {key}"),
        evidence: vec!["what was seen".into()],
        what_to_do: "what to do".into(),
        key: key.into(),
    }
}

#[test]
fn a_finding_is_logged_once_when_it_appears_and_counted_while_it_lasts() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut host = FakeHost::new(&k);
    host.findings = Some(Ok(Vec::new()));
    let mut sim = Sim::with(host, &config_text(""), None, None);
    let gauge = |sim: &Sim, kind: &str| sim.metric(&format!("jumpset_findings{{kind=\"{kind}\"}}"));
    sim.start();
    assert_eq!(sim.engine.host().explained, 1, "looked at start");
    for k in FindingKind::ALL {
        assert_eq!(gauge(&sim, k.name()), 0.0, "{k:?} exported at 0");
    }
    // The host turns mixed under the running daemon: the next look (one resync interval
    // later) finds it; it is logged once, at warn, and counted.
    sim.engine.host_mut().findings = Some(Ok(vec![finding(FindingKind::MixedBackends, "mixed")]));
    sim.run_for(secs(29));
    assert!(
        sim.logged("explain: mixed_backends").is_empty(),
        "not before the interval"
    );
    sim.run_for(secs(2));
    let logged = sim.logged("explain: mixed_backends");
    assert_eq!(logged.len(), 1, "{:?}", sim.logs);
    assert_eq!(logged[0].1, Level::WARN);
    assert!(logged[0].2.contains("what was seen") && logged[0].2.contains("what to do"));
    assert_eq!(gauge(&sim, "mixed_backends"), 1.0);
    // Still there at the next looks: not logged again. A second tie appears: logged.
    sim.engine.host_mut().findings = Some(Ok(vec![
        finding(FindingKind::MixedBackends, "mixed"),
        finding(FindingKind::PriorityTie, "tie a"),
        finding(FindingKind::PriorityTie, "tie b"),
    ]));
    sim.run_for(secs(60));
    assert_eq!(sim.logged("explain: mixed_backends").len(), 1);
    assert_eq!(sim.logged("explain: priority_tie").len(), 2);
    assert_eq!(gauge(&sim, "priority_tie"), 2.0);
    // Gone: said once, gauge back to 0.
    sim.engine.host_mut().findings = Some(Ok(Vec::new()));
    sim.run_for(secs(31));
    assert_eq!(sim.logged("no longer found").len(), 3, "{:?}", sim.logs);
    assert_eq!(gauge(&sim, "mixed_backends"), 0.0);
    assert_eq!(gauge(&sim, "priority_tie"), 0.0);
    // A failing look changes nothing and is not an error of the daemon.
    sim.engine.host_mut().findings = Some(Err("EPERM".into()));
    sim.run_for(secs(31));
    assert!(sim.exit.is_none());
    assert!(
        sim.logs.iter().all(|(_, l, _)| *l != Level::ERROR),
        "{:?}",
        sim.logs
    );
}

#[test]
fn a_look_takes_the_time_it_takes_and_one_started_before_a_reload_is_not_believed() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut host = FakeHost::new(&k);
    host.findings = Some(Ok(vec![finding(FindingKind::MixedBackends, "mixed")]));
    host.hold_looks = true;
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    assert_eq!(sim.engine.host().explained, 1, "looked at start");
    // The look does not answer for two intervals: the loop goes on (our chain is repaired
    // if need be, the resyncs come) and starts no second look meanwhile (FakeHost
    // asserts that).
    sim.run_for(secs(65));
    assert_eq!(sim.engine.host().explained, 1);
    assert!(sim.logged("explain:").is_empty(), "{:?}", sim.logs);
    assert_eq!(sim.metric("jumpset_resyncs_total"), 2.0);
    // A reload while it is under way; the node has changed since that look started.
    sim.engine.host_mut().findings = Some(Ok(vec![finding(FindingKind::PriorityTie, "tie")]));
    sim.send(Event::Reload(Reload::signal(Config::from_toml(
        &config_text(""),
    ))));
    assert_eq!(sim.engine.host().explained, 1);
    // Its answer comes: dropped, and a look under the new config started at once.
    sim.engine.host_mut().hold_looks = false;
    sim.run_for(ms(1));
    assert_eq!(sim.engine.host().explained, 2);
    sim.deliver();
    assert!(
        sim.logged("explain: mixed_backends").is_empty(),
        "{:?}",
        sim.logs
    );
    assert_eq!(
        sim.logged("explain: priority_tie").len(),
        1,
        "{:?}",
        sim.logs
    );
    assert_eq!(sim.metric("jumpset_findings{kind=\"mixed_backends\"}"), 0.0);
    assert_eq!(sim.metric("jumpset_findings{kind=\"priority_tie\"}"), 1.0);
}
