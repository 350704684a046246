//! The engine driven by a fake host on the fake kernel, in virtual time: no root, no
//! sleeps, deterministic (a fixed jitter seed). The real-kernel counterparts of these
//! behaviours are in `tests/daemon.rs`.

use super::engine::{Action, Engine, Event, Host, Notice, Notify, Opened};
use super::fight::{Jitter, Tuning, Writer};
use super::metrics::Shared;
use super::policy::{FightEvent, FightPolicy, PolicyFactory};
use super::{DaemonError, Options};
use crate::backend::BackendError;
use crate::snapshot::{Family, Match, Rule, Verdict, ADDRTYPE_LOCAL};
use crate::spec::{BackendChoice, Config};
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
    format!("{SPEC}\n[daemon]\nresync_interval = \"30s\"\nmetrics_listen = \"127.0.0.1:9464\"\n{daemon}\n")
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
        if let Some(kind) = self.listen_error.take() {
            return Err(kind.into());
        }
        self.listening = addr;
        Ok(addr)
    }
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
    exit: Option<Result<(), DaemonError>>,
}

fn options() -> Options {
    Options {
        config_path: "/etc/jumpset/jumpset.toml".into(),
        backend: None,
        families: None,
        tuning: Tuning::default(),
        jitter_seed: 7,
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
                Action::Exit(r) => self.exit = Some(r),
            }
        }
        self.deadline = out.deadline;
    }

    fn start(&mut self) {
        self.send(Event::Start);
    }

    /// Hand the engine whatever the kernel announced since the last call, now.
    fn deliver(&mut self) {
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
        Some("127.0.0.1:9464".parse().unwrap())
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
fn a_foreign_change_is_repaired_after_the_debounce_and_a_burst_is_read_once() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let ovn = ovn_agent(&k);
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    assert_eq!(sim.our_commits(), 0, "healthy at start: nothing written");
    sim.run_for(secs(1));

    // A duplicate of our jump at the top.
    ovn.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
        .unwrap();
    sim.deliver();
    let reads = sim.our_reads();
    sim.run_for(ms(1));
    assert_eq!(sim.our_reads(), reads, "still debouncing");
    sim.run_for(ms(1));
    assert_eq!(sim.listing(), healthy(), "repaired at the debounce");
    assert_eq!(sim.our_commits(), 1);
    let line = &sim.logged("repaired in one transaction")[0];
    assert_eq!(line.0, secs(1) + ms(2));
    assert!(
        line.2.contains(
            "undoing a change by pid 4242 (iptables-nft) to kube-ovn rules, 2.00 ms after it was notified"
        ),
        "{}",
        line.2
    );
    assert_eq!(
        sim.metric("jumpset_notifications_total{source=\"foreign\"}"),
        1.0
    );
    assert_eq!(sim.metric("jumpset_repair_latency_seconds_count"), 1.0);

    // A burst of three commits 1 ms apart: one read, one repair, after the last.
    sim.run_for(secs(1));
    let reads = sim.our_reads();
    for _ in 0..3 {
        ovn.insert(IP, "nat", "PREROUTING", 1, jump(OVN, "OVN-PREROUTING"))
            .unwrap();
        sim.deliver();
        sim.run_for(ms(1));
    }
    sim.run_for(ms(5));
    assert_eq!(sim.listing(), healthy());
    assert_eq!(sim.our_commits(), 2, "one repair for the burst");
    // One read for the plan and one to verify the commit.
    assert_eq!(sim.our_reads() - reads, 2);
}

#[test]
fn our_own_commits_are_ignored() {
    let k = FakeKernel::new();
    scene(&k, Some(4));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    assert_eq!(sim.our_commits(), 1);
    let reads = sim.our_reads();
    // The notification of our repair arrives, and later ones of nothing we manage.
    sim.run_for(ms(10));
    let other = k.connect(99, "kube-proxy");
    other.new_chain(IP, "nat", "KUBE-MARK-MASQ").unwrap();
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
fn a_fight_is_backed_off_and_the_chain_recovers_when_the_writer_stops() {
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

    // With it, the repairs are backed off.
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let ovn = ovn_agent(&k);
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    let undos = buggy_kube_ovn(&mut sim, secs(10));
    let commits = sim.our_commits();
    eprintln!("20 Hz undoer for 10 s: {commits} repairs ({undos} undos); {unpaced} without fight detection");
    assert!(
        commits <= 40,
        "{commits} repairs in 10 s ({undos} undos): not backed off"
    );
    assert_eq!(sim.metric(&series("jumpset_fights_total")), 1.0);
    assert_eq!(sim.metric(&series("jumpset_fight_active")), 1.0);
    let fight = &sim.logged("fight")[0];
    assert_eq!(fight.1, Level::WARN);
    assert!(
        fight.2.contains("pid 4242 (iptables-nft)") && fight.2.contains("kube-ovn"),
        "{}",
        fight.2
    );
    assert!(
        sim.engine.status().contains("fight with pid 4242"),
        "{}",
        sim.engine.status()
    );
    // The writer stops: the chain is put back, the episode ends, normal speed resumes.
    sim.run_for(secs(30));
    assert_eq!(sim.listing(), healthy());
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
    sim.run_for(ms(2));
    assert_eq!(
        sim.listing(),
        healthy(),
        "one undo is repaired at once again"
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
    fn changed(&mut self, now: Instant, writer: &Writer) -> Option<FightEvent> {
        self.until = Some(now + ms(500));
        Some(FightEvent::Started {
            writer: writer.clone(),
            undos: 0,
            cap: ms(500),
        })
    }

    fn undone(&mut self, _now: Instant, _w: &Writer, _rng: &mut Jitter) -> Option<FightEvent> {
        None
    }

    fn not_before(&self) -> Option<Instant> {
        self.until
    }

    fn next_check(&self) -> Option<Instant> {
        self.until
    }

    fn tick(&mut self, now: Instant) -> Option<FightEvent> {
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
    assert!(
        sim.last_status()
            .contains("in order, held by the test policy"),
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
    sim.send(Event::Reload(Config::from_toml("[[chain]]\ntable = 7\n")));
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
    sim.run_for(ms(2));
    assert_eq!(sim.listing(), healthy());

    // A config this process cannot honour (another backend, its capability dropped).
    sim.engine.host_mut().missing = vec!["CAP_NET_RAW".into()];
    sim.send(Event::Reload(Config::from_toml(
        &config_text("").replace("backend = \"nft\"", "backend = \"legacy\""),
    )));
    assert_eq!(
        sim.logged("SIGHUP: keeping the old config: backend legacy needs CAP_NET_RAW")
            .len(),
        1
    );
    // One whose metrics address cannot be listened on.
    sim.engine.host_mut().listen_error = Some(std::io::ErrorKind::AddrInUse);
    sim.send(Event::Reload(Config::from_toml(
        &config_text("").replace("127.0.0.1:9464", "127.0.0.1:9465"),
    )));
    assert_eq!(
        sim.logged("SIGHUP: keeping the old config: metrics_listen = \"127.0.0.1:9465\"")
            .len(),
        1
    );
    assert_eq!(
        sim.metric("jumpset_config_reloads_total{result=\"error\"}"),
        3.0
    );
    assert_eq!(
        sim.engine.config().daemon.metrics_listen.unwrap().port(),
        9464
    );
    assert_eq!(sim.engine.host().opened.len(), 1, "the backend was kept");

    // A valid one replaces it: a second jump, appended after the others.
    let extra = format!(
        "{}\n  [[chain.jump]]\n  target = \"EXTRA-PREROUTING\"\n  comment = \"extra\"\n  after = [\"CNI-HOSTPORT-DNAT\"]\n  create_chain = true\n",
        SPEC.trim_end()
    );
    sim.send(Event::Reload(Config::from_toml(&format!(
        "{extra}\n[daemon]\nresync_interval = \"30s\"\nmetrics_listen = \"127.0.0.1:9464\"\n"
    ))));
    assert_eq!(sim.logged("SIGHUP: reloaded").len(), 1);
    assert_eq!(
        sim.metric("jumpset_config_reloads_total{result=\"ok\"}"),
        1.0
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
    assert!(sim.logged("after a config reload").len() == 1);
}

#[test]
fn kernel_errors_back_off_exponentially_then_recover() {
    let k = FakeKernel::new();
    scene(&k, Some(2));
    let mut sim = Sim::new(&k, &config_text(""));
    sim.start();
    for _ in 0..6 {
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
    assert_eq!(failed[0], ms(2), "the first attempt after the debounce");
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
    // Kube-OVN creates its chain (no rule moves: no notification for us); the next retry
    // finds it.
    ovn_agent(&k)
        .new_chain(IP, "nat", "OVN-PREROUTING")
        .unwrap();
    sim.run_for(secs(2));
    assert_eq!(sim.listing(), healthy());
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
fn start_fails_only_for_privilege_or_an_unusable_metrics_address() {
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

    let mut host = FakeHost::new(&k);
    host.listen_error = Some(std::io::ErrorKind::AddrInUse);
    let mut sim = Sim::with(host, &config_text(""), None, None);
    sim.start();
    assert!(
        matches!(&sim.exit, Some(Err(e)) if e.exit_code() == 2 && e.to_string().starts_with("metrics_listen = \"127.0.0.1:9464\"")),
        "{:?}",
        sim.exit
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
    sim.run_for(ms(2));
    assert_eq!(
        sim.listing(),
        [format!(
            "-A PREROUTING -m comment --comment \"{OVN}\" -j OVN-PREROUTING"
        )],
        "table, base chain, target chain and our jump are back; the others' are theirs to restore"
    );
    assert!(sim.logged("undoing a change by pid 8 (nft)")[0]
        .2
        .contains("generation"));
}
