//! The daemon's engine: every decision of `jumpset daemon`, as a state machine.
//!
//! The loop ([`run`](super::run)) turns what it waits for — the start, the timer, a batch
//! of nf_tables notifications, SIGHUP, SIGTERM — into an [`Event`] and hands it to
//! [`Engine::on_event`] with the time; the engine answers with an [`Output`]: what to log,
//! what to tell systemd, whether to exit, and when to wake it next if nothing else
//! happens. Everything else the engine needs from the world goes through its [`Host`]:
//! the clock, host detection, capabilities, opening a backend (and its notification
//! subscription), serving `/metrics`. Kernel reads and writes go through the
//! [`Backend`] the host opened. Metrics are written to the shared registry ([`Shared`]),
//! which `/metrics` and `/healthz` read.
//!
//! So a test drives the engine with a fake host, the fake kernel
//! (`testing::FakeKernel`) and virtual time: no root, no sleeps, deterministic
//! (`engine_tests.rs`).
//!
//! What the engine does with each event:
//!
//! - **Start**: serve `/metrics` and the probes (an address that cannot be listened on is
//!   logged and retried, never fatal), open the backend (exit 3 on missing privilege;
//!   other failures are retried with backoff), reconcile every chain × family once, then
//!   `READY=1` with the state in `STATUS=` — after a conflict or an error too, so systemd
//!   never restart-loops it.
//! - **Notifications**: only commits that touched a managed (family, table, chain),
//!   deleted its table, or created, renamed or deleted any chain of its table (a jump may
//!   now lead elsewhere) count; commits whose port id is the backend's (the socket we
//!   commit from) are our own and ignored. The writer of a foreign commit is looked up
//!   at once ([`Host::identify`]); the commit marks its chains dirty and updates their
//!   anchors ([`super::anchors`]); they are reconciled after the debounce and whatever
//!   the fight policy holds — and while the fight policy, an error backoff or a pause
//!   holds the repair off, only read, so that what the daemon reports follows the kernel.
//!   A converged chain is only read, never written. An overflow (ENOBUFS) or an
//!   undecodable datagram re-reads every chain; a failed socket is reopened with the
//!   backend.
//! - **Tick**: the resync timer (every `resync_interval` every chain is re-read; legacy
//!   has no notifications, so that is its poll; `auto` on an undecided host detects
//!   again), `WATCHDOG=1`, fight episodes ending, due reconciles; at start and every
//!   `resync_interval`, a look at what `jumpset explain` finds on the managed chains'
//!   hooks, started off the loop's thread ([`Host::look_for_findings`]) and answered as
//!   [`Event::Findings`]: each finding is logged once when it appears and once when it is
//!   gone, and counted in `jumpset_findings{kind}`.
//! - **Reload** (SIGHUP, or the config files changed): an invalid config (or one this
//!   process cannot honour) is logged and the old one kept; a valid one replaces the
//!   chains and re-reads them all, and looks for findings again (the answer of a look
//!   started under the old config is dropped); drop-in fragments and claims that do not
//!   fit are left out and reported (log, readiness, `jumpset_config_fragments_rejected`).
//! - **Call**: a request from an HTTP handler, answered with [`Action::Answer`]: the
//!   liveness ping, and the local API's reads, pause switch and claims (`requests.rs`: a
//!   claim comes as the config it makes, taken as a reload would, and its chains are
//!   reconciled at once through the usual path; the answer waits for them).
//! - **Stop**: remove the owned jumps when `cleanup_on_exit` is set, `STOPPING=1`, exit 0.
//!
//! Errors back off exponentially with jitter (capped) and never end the daemon. When a
//! repair may run beside other writers, and what happens in a fight, is the fight
//! policy's ([`super::policy`]). The legacy backend tries the xtables lock once per
//! attempt; while another process holds it the engine tries again on its timer (not an
//! error until `xtables_lock_timeout` has passed), so the loop never waits for it.
//!
//! What it reports follows every read: `jumpset_chain_in_order`, `STATUS=` and the
//! readiness ([`Health`], `/readyz`): not ready while a chain is out of order (also while
//! its repair is held off), after [`READY_FAILURES`] failed reconciles in a row or none
//! succeeding for [`READY_STALL`] while one was due, while the fight policy yields the
//! chain to another writer, while paused, while no backend is open, and while a config
//! fragment is left out.

use super::anchors::{self, Anchors};
use super::fight::{Backoff, Cause, Done, Jitter, Sched, Tuning, Writer};
use super::ident::Identity;
use super::metrics::{
    AgentLabels, AnchorLabels, BuildLabels, ChainLabels, ErrorLabels, FindingLabel, Health,
    InfoLabels, RemovalLabels, ResultLabel, Shared, SourceLabel,
};
use super::policy::{self, FightEvent, PolicyFactory};
use super::{ms, DaemonError, Options};
use crate::backend::{Backend, BackendError};
use crate::explain::{Finding, FindingKind, Severity};
use crate::notification::Commit;
use crate::plan::{Op, Plan};
use crate::reconcile::{self, Goal, Outcome, Progress, ReconcileError};
use crate::report;
use crate::snapshot::{agent_of, Comment, Family, Rule, Verdict};
use crate::spec::{BackendChoice, ChainSpec, Config, Rejected, SpecError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Level;

mod requests;
pub use requests::{ClaimChange, DaemonState};

/// Failed reconciles in a row of one chain that make the daemon not ready.
pub const READY_FAILURES: u32 = 3;
/// How long a reconcile may be due without one succeeding before the daemon is not ready.
pub const READY_STALL: Duration = Duration::from_secs(60);
/// First wait before trying again to listen on `metrics_listen` (doubling up to 30 s).
const LISTEN_RETRY: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// What the engine is given, and what it answers.
// ---------------------------------------------------------------------------------------

/// Everything the engine asks of the world besides the backend.
pub trait Host {
    /// The monotonic clock.
    fn now(&self) -> Instant;

    /// The wall clock (`jumpset_last_success_timestamp_seconds`).
    fn wall(&self) -> SystemTime;

    /// `backend = "auto"`: the backend the host uses, or why none can be chosen now (the
    /// engine then waits and asks again every `resync_interval`).
    fn detect(&mut self) -> Result<BackendChoice, String>;

    /// The capabilities `choice` needs that this process does not hold (their names).
    fn missing_capabilities(&mut self, choice: BackendChoice) -> Vec<String>;

    /// Open `choice`: for nf_tables, subscribe to the change notifications *first* (no
    /// change can slip between the subscription and the first read), then the socket to
    /// commit from. The host keeps the subscription and delivers its notifications as
    /// [`Event::Notifications`].
    fn open(
        &mut self,
        choice: BackendChoice,
        cfg: &Config,
        tuning: &Tuning,
    ) -> Result<Opened, BackendError>;

    /// Drop the notification subscription (the backend was dropped; it is reopened).
    fn close(&mut self);

    /// Serve `/metrics` and the probes on `addr` (replacing any previous listener), or
    /// stop serving (`None`). Returns the address bound.
    fn listen(&mut self, addr: Option<SocketAddr>) -> std::io::Result<Option<SocketAddr>>;

    /// Wait `d`. Only used on the way out (the cleanup waits for the xtables lock up to
    /// `xtables_lock_timeout`); the running engine never waits.
    fn sleep(&mut self, d: Duration);

    /// What can be learnt now about the process `pid` that committed as `comm` (asked as
    /// soon as its commit is notified: such processes are short-lived).
    fn identify(&mut self, _pid: u32, _comm: Option<&str>) -> Identity {
        Identity::Unknown
    }

    /// Start a look at what `jumpset explain` finds on the hooks of `cfg`'s chains in
    /// `families` (read-only), off the loop's thread: it reads the whole ruleset, which
    /// can wait. The host delivers its answer as [`Event::Findings`]; the engine starts
    /// no other look before that. `false`: this host does not look (nothing will come).
    fn look_for_findings(&mut self, _cfg: &Config, _families: &[Family]) -> bool {
        false
    }
}

/// A backend the host opened.
pub struct Opened {
    /// The backend.
    pub backend: Box<dyn Backend>,
    /// The port id our commits carry in notifications (`None`: no notifications).
    pub portid: Option<u32>,
    /// The notification socket's receive buffer in bytes (`None`: no notifications,
    /// x_tables: the resync timer is the poll).
    pub rcvbuf: Option<usize>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("backend", &self.backend.name())
            .field("portid", &self.portid)
            .field("rcvbuf", &self.rcvbuf)
            .finish()
    }
}

/// What woke the loop.
#[derive(Debug)]
pub enum Event {
    /// The daemon starts (the first event).
    Start,
    /// Time passed: the deadline of the last [`Output`], or any wake-up.
    Tick,
    /// What the notification subscription delivered, in order.
    Notifications(Vec<Notice>),
    /// The config as re-read (SIGHUP, or a change of its files), or why it could not be.
    Reload(Reload),
    /// A request from an HTTP handler; answer it with [`Action::Answer`] and this id.
    Call(u64, Command),
    /// What the look started by [`Host::look_for_findings`] found, or why it could not
    /// look.
    Findings(Result<Vec<Finding>, String>),
    /// SIGTERM / SIGINT.
    Stop,
}

/// A re-read config.
#[derive(Debug)]
pub struct Reload {
    /// What made the daemon read it.
    pub trigger: Trigger,
    /// The config and the fragments left out of it ([`Config::load_lenient`]), or why
    /// the main file cannot be used.
    pub loaded: Result<(Config, Vec<Rejected>), SpecError>,
}

impl Reload {
    /// A reload on SIGHUP of a config without rejected fragments (or its error).
    #[cfg(all(test, feature = "testing"))]
    pub fn signal(loaded: Result<Config, SpecError>) -> Reload {
        Reload {
            trigger: Trigger::Signal,
            loaded: loaded.map(|c| (c, Vec::new())),
        }
    }
}

/// What made the daemon re-read its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload`).
    Signal,
    /// The config file, a drop-in or a claim changed (or a symlink to them was swapped,
    /// as a ConfigMap update does).
    Changed,
    /// An agent's claim through the local API ([`Command::Claim`]).
    Api,
}

impl Trigger {
    fn prefix(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Changed => "config change",
            Trigger::Api => "API claim",
        }
    }
}

/// A request to the daemon from an HTTP handler ([`super::Caller`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Is the loop alive? Answered by the loop itself with [`Answer::Pong`].
    Ping,
    /// `GET /v1/chains`: `status` of every managed chain and family ([`Answer::Report`]).
    Chains,
    /// `GET /v1/check`: `check` of every managed chain and family ([`Answer::Report`]).
    Check,
    /// `GET /v1/state`: paused or not, ready or not ([`Answer::State`]).
    State,
    /// `POST /v1/pause`: stop every write, for this reason ([`Answer::State`]).
    Pause(String),
    /// `POST /v1/resume`: write again ([`Answer::State`]).
    Resume,
    /// `PUT` / `DELETE /v1/agents/{agent}`: the config with the agent's claim changed,
    /// already stored ([`Answer::Applied`], [`Answer::Removed`], [`Answer::Held`]).
    Claim(Box<ClaimChange>),
}

/// The daemon's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// The loop is alive.
    Pong,
    /// A report (`status`, `check`), as the command's JSON.
    Report(serde_json::Value),
    /// The claim is in force and the chains it touches were reconciled: the `apply`
    /// report's JSON.
    Applied(serde_json::Value),
    /// The claim is dropped; its jumps were removed when asked to: the `cleanup`
    /// report's JSON (`None`: left in place).
    Removed(Option<serde_json::Value>),
    /// The claim is in force but the daemon holds off writes: `paused`, `yielding`,
    /// `starting` or `waiting`, and why. It is applied when they resume.
    Held {
        /// The state.
        state: &'static str,
        /// Why.
        reason: String,
    },
    /// The daemon cannot answer now (no backend open), and why.
    Unavailable(String),
    /// The daemon could not take the config (why).
    Failed(String),
    /// Paused or not, ready or not.
    State(DaemonState),
}

/// One thing the notification subscription delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A committed transaction.
    Commit(Commit),
    /// Notifications were lost (ENOBUFS): the local view is unknown.
    Overflow,
    /// A datagram that could not be decoded (why).
    Undecodable(String),
    /// The subscription failed (why): what follows it is dropped.
    Failed(String),
}

/// What the engine asks the loop to do.
#[derive(Debug)]
pub enum Action {
    /// Log a record.
    Log(Level, String),
    /// Tell the service manager.
    Notify(Notify),
    /// Answer the [`Event::Call`] with this id.
    Answer(u64, Answer),
    /// Stop the loop: `Ok` after a shutdown, the start error otherwise.
    Exit(Result<(), DaemonError>),
}

/// A systemd notification (`sd_notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1` with `STATUS=`.
    Ready(String),
    /// `STATUS=`.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
    /// `STOPPING=1` with `STATUS=`.
    Stopping(String),
}

/// The engine's answer to one event.
#[derive(Debug)]
pub struct Output {
    /// To do, in order.
    pub actions: Vec<Action>,
    /// When to send [`Event::Tick`] if nothing else happens first.
    pub deadline: Instant,
}

// ---------------------------------------------------------------------------------------
// The library API the engine leans on besides reconcile: these three call sites only.
// ---------------------------------------------------------------------------------------

/// What to act on: the config with the command-line overrides applied.
#[derive(Debug, Clone)]
struct Selection {
    backend: BackendChoice,
    families: Vec<Family>,
}

/// The backend and families: the config's, overridden by the command line's.
fn selection(cfg: &Config, opts: &Options) -> Selection {
    Selection {
        backend: opts.backend.unwrap_or(cfg.backend),
        families: opts
            .families
            .clone()
            .unwrap_or_else(|| cfg.families.clone()),
    }
}

/// A committed plan as `jumpset apply` prints it, on one line.
fn plan_text(o: &Outcome, spec: &ChainSpec) -> String {
    report::ChainPlan::new(&o.before, spec, &o.plan)
        .lines()
        .join("; ")
}

/// The conflicts of a plan, one sentence each.
fn conflict_texts(plan: &Plan) -> Vec<String> {
    report::conflict_lines(&plan.conflicts)
}

// ---------------------------------------------------------------------------------------
// The state.
// ---------------------------------------------------------------------------------------

/// One managed chain in one family.
struct Target {
    chain: usize,
    family: Family,
    labels: ChainLabels,
    sched: Sched,
    /// What the last read found: in order, or not (`None`: never read).
    in_order: Option<bool>,
    /// The conflicts of the last plan.
    conflicts: usize,
    /// The last reconcile's error, until one succeeds.
    error: Option<String>,
    /// Failed reconciles in a row.
    failures: u32,
    /// Since when the xtables lock has been busy for this chain's write.
    lock_since: Option<Instant>,
    conflicts_logged: Vec<String>,
    /// The other agents' jumps `after`/`before` name, witnessed.
    anchors: Anchors,
    /// What the last reconcile read (the legacy poll skips the plan when the chain reads
    /// the same, counters aside).
    memo: reconcile::Memo,
    /// In a fight on a backend without change notifications (x_tables): what the last
    /// poll saw ([`Engine::poll_fights`]).
    polled: Option<Polled>,
}

/// What a poll in a fight last saw of a chain on a backend without notifications.
enum Polled {
    /// Its rules, counters left out.
    Rules(Vec<Rule>),
    /// jumpset committed since: the chain was left in order.
    Committed,
}

/// `metrics_listen`: where, and whether it is served.
struct Listening {
    addr: Option<SocketAddr>,
    bound: bool,
    retry: Option<Instant>,
    backoff: Backoff,
}

/// The open backend.
struct Conn {
    backend: Box<dyn Backend>,
    portid: Option<u32>,
}

struct Timers {
    /// The next full re-read (legacy: poll; undecided `auto`: detection).
    resync: Instant,
    /// `WATCHDOG=1`: interval and next.
    watchdog: Option<(Duration, Instant)>,
    /// The next attempt to open the backend, when one failed or detection waits.
    open: Option<Instant>,
    open_backoff: Backoff,
}

/// The daemon's state machine (module docs).
pub struct Engine<H: Host> {
    opts: Options,
    cfg: Config,
    sel: Selection,
    targets: Vec<Target>,
    policy: PolicyFactory,
    host: H,
    shared: Arc<Shared>,
    conn: Option<Conn>,
    backend_name: &'static str,
    /// Why no backend is open (detection undecided, opening failed).
    waiting: Option<String>,
    timers: Timers,
    rng: Jitter,
    reload_error: Option<String>,
    /// Fragments left out of the running config.
    rejected: Vec<Rejected>,
    /// Writes stopped, and why (the local API's pause switch).
    paused: Option<String>,
    /// What the local API's requests wait for (claims, removals, the pause's time).
    api: requests::Requests,
    listening: Listening,
    ready: bool,
    status: String,
    health: Health,
    out: Vec<Action>,
    /// The findings logged and in force (by key), when to look again, and the look
    /// under way.
    findings: Vec<Finding>,
    findings_due: Instant,
    look: Look,
}

/// The look for findings ([`Host::look_for_findings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// None under way.
    Idle,
    /// Under way.
    Running,
    /// Under way, started under a config since replaced: its answer is dropped.
    Outdated,
}

fn build_targets(cfg: &Config, sel: &Selection, t: &Tuning, policy: PolicyFactory) -> Vec<Target> {
    let mut targets = Vec::new();
    for (ci, spec) in cfg.chains.iter().enumerate() {
        for &family in &sel.families {
            targets.push(Target {
                chain: ci,
                family,
                labels: ChainLabels {
                    family: family.name().into(),
                    table: spec.table.clone(),
                    chain: spec.chain.clone(),
                },
                sched: Sched::new(t, policy(t)),
                in_order: None,
                conflicts: 0,
                error: None,
                failures: 0,
                lock_since: None,
                conflicts_logged: Vec::new(),
                anchors: Anchors::new(spec),
                memo: reconcile::Memo::default(),
                polled: None,
            });
        }
    }
    targets
}

/// The agents whose rules a plan deletes or inserts.
fn moved_agents(o: &Outcome, spec: &ChainSpec) -> Vec<&'static str> {
    let mut v = Vec::new();
    for op in &o.plan.ops {
        let a = match *op {
            Op::Delete { index, .. } => agent_of(&o.before.rules[index]),
            Op::Insert { jump, .. } => {
                let j = &spec.jumps[jump];
                agent_of(&Rule {
                    handle: 0,
                    comment: Some(Comment {
                        bytes: j.comment.as_bytes().to_vec(),
                        encoding: j.encoding,
                    }),
                    matches: Vec::new(),
                    counters: None,
                    verdict: Verdict::Jump(j.target.clone()),
                })
            }
        };
        if a != "unknown" && !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

impl<H: Host> Engine<H> {
    /// An engine for `cfg` (already loaded) under `opts`, talking to the world through
    /// `host`, writing metrics and health to `shared`, sending `WATCHDOG=1` every
    /// `watchdog` when given. Nothing happens before [`Event::Start`].
    pub fn new(
        opts: Options,
        cfg: Config,
        host: H,
        shared: Arc<Shared>,
        watchdog: Option<Duration>,
    ) -> Self {
        let now = host.now();
        let sel = selection(&cfg, &opts);
        let policy: PolicyFactory = policy::standard;
        let targets = build_targets(&cfg, &sel, &opts.tuning, policy);
        let e = Engine {
            timers: Timers {
                resync: now + cfg.daemon.resync_interval,
                watchdog: watchdog.map(|i| (i, now + i)),
                open: None,
                open_backoff: Backoff::new(
                    opts.tuning.error_backoff_base,
                    opts.tuning.error_backoff_cap,
                ),
            },
            rng: Jitter::new(opts.jitter_seed),
            sel,
            targets,
            policy,
            host,
            shared,
            conn: None,
            backend_name: "none",
            waiting: None,
            reload_error: None,
            rejected: Vec::new(),
            paused: None,
            api: requests::Requests::default(),
            listening: Listening {
                addr: None,
                bound: false,
                retry: None,
                backoff: Backoff::new(LISTEN_RETRY, Duration::from_secs(30)),
            },
            ready: false,
            status: String::new(),
            health: Health::default(),
            out: Vec::new(),
            findings: Vec::new(),
            findings_due: now,
            look: Look::Idle,
            cfg,
            opts,
        };
        e.init_series();
        for k in FindingKind::ALL {
            e.shared
                .metrics
                .findings
                .get_or_create(&FindingLabel {
                    kind: k.name().into(),
                })
                .set(0);
        }
        e
    }

    /// Fragments left out of `cfg` when it was loaded ([`Config::load_lenient`]): reported
    /// at start (before [`Event::Start`]).
    pub fn with_rejected(mut self, rejected: Vec<Rejected>) -> Self {
        self.rejected = rejected;
        self
    }

    /// Use `policy` for fights instead of the standard one (before [`Event::Start`]).
    #[cfg(all(test, feature = "testing"))]
    pub fn with_policy(mut self, policy: PolicyFactory) -> Self {
        self.policy = policy;
        self.targets = build_targets(&self.cfg, &self.sel, &self.opts.tuning, policy);
        self
    }

    /// The host.
    #[cfg(all(test, feature = "testing"))]
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, e.g. for the loop to wait on its notification subscription.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The state as `STATUS=` and `/readyz` last showed it.
    #[cfg(all(test, feature = "testing"))]
    pub fn status(&self) -> &str {
        &self.status
    }

    /// Stop every write (`Some(why)`: chains are still read and reported, the daemon is
    /// not ready) or resume them (`None`: every chain is re-read and repaired). The hook
    /// of the local API's pause switch.
    pub fn set_paused(&mut self, now: Instant, why: Option<String>) {
        if self.paused == why {
            return;
        }
        match &why {
            Some(w) => self.warn(format!("paused: no writes until resumed ({w})")),
            None => self.info("resumed: repairing again".into()),
        }
        let resumed = why.is_none();
        self.paused = why;
        if resumed {
            self.wake_all(now, Cause::Resync);
        }
        self.tick(now);
    }

    /// Handle `event`, which happened at `now`.
    pub fn on_event(&mut self, now: Instant, event: Event) -> Output {
        let mut starting = false;
        match event {
            Event::Start => {
                if let Err(e) = self.start(now) {
                    return self.exit(Err(e));
                }
                starting = true;
            }
            Event::Tick => {}
            Event::Notifications(batch) => self.on_notices(now, batch),
            Event::Reload(r) => self.reload(now, r),
            Event::Findings(found) => self.on_findings(found),
            Event::Call(id, command) => self.on_call(now, id, command),
            Event::Stop => {
                self.stop();
                return self.exit(Ok(()));
            }
        }
        self.tick(now);
        if starting {
            self.mark_ready();
        }
        self.settle_requests(now);
        let now = self.host.now();
        Output {
            actions: std::mem::take(&mut self.out),
            deadline: self.next_deadline(now),
        }
    }

    fn exit(&mut self, result: Result<(), DaemonError>) -> Output {
        self.out.push(Action::Exit(result));
        Output {
            actions: std::mem::take(&mut self.out),
            deadline: self.host.now(),
        }
    }

    fn log(&mut self, level: Level, msg: String) {
        self.out.push(Action::Log(level, msg));
    }

    fn info(&mut self, msg: String) {
        self.log(Level::INFO, msg);
    }

    fn warn(&mut self, msg: String) {
        self.log(Level::WARN, msg);
    }

    fn error(&mut self, msg: String) {
        self.log(Level::ERROR, msg);
    }

    /// A debug record, built only when debug records are wanted.
    fn debug(&mut self, msg: impl FnOnce() -> String) {
        if tracing::enabled!(Level::DEBUG) {
            self.log(Level::DEBUG, msg());
        }
    }

    /// Create every per-chain series at 0, so scrapes see them before anything happens.
    fn init_series(&self) {
        let m = &self.shared.metrics;
        for t in &self.targets {
            let _ = m.repairs.get_or_create(&t.labels);
            let _ = m.conflicts.get_or_create(&t.labels);
            let _ = m.fights.get_or_create(&t.labels);
            m.fight_active.get_or_create(&t.labels).set(0);
            m.fight_yielding.get_or_create(&t.labels).set(0);
            m.in_order.get_or_create(&t.labels).set(0);
        }
    }

    /// Serve on `metrics_listen` (`addr`), now and until it works: a failure is logged
    /// and retried with backoff, never fatal (the chains matter more than the metrics).
    fn listen(&mut self, now: Instant, addr: Option<SocketAddr>) {
        if addr != self.listening.addr || addr.is_none() {
            if self.listening.bound || addr.is_none() {
                let _ = self.host.listen(None);
            }
            self.listening = Listening {
                addr,
                bound: false,
                retry: None,
                backoff: Backoff::new(LISTEN_RETRY, Duration::from_secs(30)),
            };
            if addr.is_none() {
                self.info("metrics_listen = \"\": not serving /metrics and the probes".into());
                return;
            }
        }
        self.try_listen(now);
    }

    fn try_listen(&mut self, now: Instant) {
        let Some(addr) = self.listening.addr else {
            return;
        };
        match self.host.listen(Some(addr)) {
            Ok(local) => {
                let local = local.unwrap_or(addr);
                self.listening.bound = true;
                self.listening.retry = None;
                self.info(format!(
                    "serving /metrics, /livez, /readyz and /healthz on http://{local}"
                ));
            }
            Err(e) => {
                let wait = self.listening.backoff.next_delay();
                self.listening.retry = Some(now + wait);
                self.error(format!(
                    "metrics_listen = \"{addr}\": cannot listen: {e}; no metrics or probes until it works (trying again in {}); the chains are kept in order all the same",
                    ms(wait)
                ));
            }
        }
    }

    fn start(&mut self, now: Instant) -> Result<(), DaemonError> {
        self.shared
            .metrics
            .build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: self.opts.build_revision.clone(),
            })
            .set(1);
        self.report_rejected(&[]);
        self.listen(now, self.cfg.daemon.metrics_listen);
        self.wake_all(now, Cause::Start);
        if let Some(BackendError::Permission { step, capability }) = self.ensure_backend(now) {
            return Err(DaemonError::Privilege(format!(
                "{step}: permission denied: jumpset daemon needs {capability}"
            )));
        }
        Ok(())
    }

    fn target_name(&self, i: usize) -> String {
        let t = &self.targets[i];
        let spec = &self.cfg.chains[t.chain];
        format!("{} {} {}", t.family, spec.table, spec.chain)
    }

    fn wake_all(&mut self, now: Instant, cause: Cause) {
        for t in &mut self.targets {
            t.sched.wake(now, cause.clone());
        }
    }

    // -----------------------------------------------------------------------------------
    // The backend.
    // -----------------------------------------------------------------------------------

    /// Open the backend (and for nf_tables the notification subscription, first) unless
    /// it is open or a retry is not due. Returns the error when opening failed.
    fn ensure_backend(&mut self, now: Instant) -> Option<BackendError> {
        if self.conn.is_some() || self.timers.open.is_some_and(|t| now < t) {
            return None;
        }
        let choice = match self.sel.backend {
            BackendChoice::Auto => match self.host.detect() {
                Ok(c) => c,
                Err(reason) => {
                    if self.waiting.as_deref() != Some(reason.as_str()) {
                        self.warn(format!(
                            "{reason}; detecting again every {}",
                            ms(self.cfg.daemon.resync_interval)
                        ));
                    }
                    self.waiting = Some(reason);
                    self.timers.open = Some(now + self.cfg.daemon.resync_interval);
                    return None;
                }
            },
            c => c,
        };
        match self.host.open(choice, &self.cfg, &self.opts.tuning) {
            Ok(o) => {
                self.backend_name = o.backend.name();
                match o.rcvbuf {
                    Some(rcvbuf) => self.info(format!(
                        "backend {}: watching nf_tables notifications (receive buffer {} KiB), committing from port id {}",
                        self.backend_name,
                        rcvbuf / 1024,
                        o.portid.unwrap_or(0)
                    )),
                    None => self.info(format!(
                        "backend {}: no change notifications exist for x_tables; polling every {}",
                        self.backend_name,
                        ms(self.cfg.daemon.resync_interval)
                    )),
                }
                self.conn = Some(Conn {
                    backend: o.backend,
                    portid: o.portid,
                });
                self.waiting = None;
                self.timers.open = None;
                self.timers.open_backoff.reset();
                let m = &self.shared.metrics;
                m.info.clear();
                m.info
                    .get_or_create(&InfoLabels {
                        backend: self.backend_name.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    })
                    .set(1);
                for t in &mut self.targets {
                    if !t.sched.is_dirty() {
                        t.sched.wake(now, Cause::Resync);
                    }
                }
                None
            }
            Err(e) => {
                let wait = self.rng.stretch(
                    self.timers.open_backoff.next_delay(),
                    self.opts.tuning.jitter,
                );
                self.warn(format!(
                    "cannot open the {} backend, retrying in {}: {e}",
                    choice.name(),
                    ms(wait)
                ));
                self.waiting = Some(format!("cannot open the {} backend: {e}", choice.name()));
                self.timers.open = Some(now + wait);
                Some(e)
            }
        }
    }

    /// Drop the backend and the notification subscription; they are reopened and
    /// everything re-read.
    fn drop_backend(&mut self, why: &str) {
        self.warn(format!("{why}: reopening the backend"));
        self.conn = None;
        self.host.close();
        // What the old backend read proves nothing about what the next one reads.
        for t in &mut self.targets {
            t.memo.clear();
        }
    }

    // -----------------------------------------------------------------------------------
    // Notifications.
    // -----------------------------------------------------------------------------------

    fn on_notices(&mut self, now: Instant, batch: Vec<Notice>) {
        for n in batch {
            match n {
                Notice::Commit(c) => self.on_commit(now, &c),
                Notice::Overflow => self.on_overflow(now),
                Notice::Undecodable(e) => {
                    self.debug(|| {
                        format!("an undecodable notification ({e}): re-reading every chain")
                    });
                    self.wake_all(now, Cause::Resync);
                }
                Notice::Failed(e) => {
                    self.drop_backend(&e);
                    self.wake_all(now, Cause::Resync);
                    return;
                }
            }
        }
    }

    fn on_commit(&mut self, now: Instant, c: &Commit) {
        let mut hit = Vec::new();
        let mut agents: Vec<&'static str> = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            let spec = &self.cfg.chains[t.chain];
            let mut touched = false;
            // The chain itself, its table deleted, or any chain of its table created,
            // renamed or deleted (a jump of the chain may now lead elsewhere).
            for tc in c.touched.iter().filter(|tc| {
                tc.covers(t.family, &spec.table, &spec.chain)
                    || (tc.chain_changed && tc.family == t.family && tc.table == spec.table)
            }) {
                touched = true;
                for a in &tc.agents {
                    if !agents.contains(a) {
                        agents.push(a);
                    }
                }
            }
            if touched {
                hit.push(i);
            }
        }
        if hit.is_empty() {
            return;
        }
        let own = Some(c.portid) == self.conn.as_ref().and_then(|c| c.portid);
        self.shared
            .metrics
            .notifications
            .get_or_create(&SourceLabel {
                source: if own { "own" } else { "foreign" }.into(),
            })
            .inc();
        if own {
            return;
        }
        let writer = Writer {
            pid: c.pid,
            name: c.comm.clone(),
            agents,
            process: c
                .pid
                .map(|p| self.host.identify(p, c.comm.as_deref()))
                .unwrap_or_default(),
        };
        for &i in &hit {
            let t = &self.targets[i];
            let spec = &self.cfg.chains[t.chain];
            let touched: Vec<_> = c
                .touched
                .iter()
                .filter(|tc| tc.covers(t.family, &spec.table, &spec.chain))
                .collect();
            let changes = self.targets[i].anchors.on_commit(&touched, &writer);
            self.on_anchors(i, changes);
        }
        for i in hit {
            let name = self.target_name(i);
            self.debug(|| {
                format!(
                    "{name}: changed by {} (generation {})",
                    writer.describe(),
                    c.generation
                )
            });
            if let Some(ev) =
                self.targets[i]
                    .sched
                    .changed(now, writer.clone(), &self.opts.tuning, &mut self.rng)
            {
                self.on_fight(i, ev);
            }
        }
    }

    fn on_overflow(&mut self, now: Instant) {
        self.warn("the nf_tables notification queue overflowed (ENOBUFS): notifications were lost; re-reading every chain".into());
        self.shared.metrics.overflows.inc();
        self.shared.metrics.resyncs.inc();
        for t in &mut self.targets {
            t.anchors.forget();
        }
        self.wake_all(now, Cause::Resync);
    }

    // -----------------------------------------------------------------------------------
    // Reconciles.
    // -----------------------------------------------------------------------------------

    fn run_due(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if self.conn.is_none() {
                return;
            }
            if self.targets[i].sched.due(now) {
                if self.paused.is_some() {
                    // No writes: read and report only; resuming re-reads everything.
                    let _ = self.targets[i].sched.begin();
                    self.check_one(i);
                } else {
                    self.reconcile_one(i);
                }
            } else if self.targets[i].sched.check_due(now) {
                self.targets[i].sched.checked();
                self.check_one(i);
            }
        }
    }

    /// Read target `i` without writing (its repair is held off, or writes are paused):
    /// what is reported follows the kernel.
    fn check_one(&mut self, i: usize) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let t = &self.targets[i];
        let spec = &self.cfg.chains[t.chain];
        match conn.backend.read(t.family, &spec.table, &spec.chain) {
            Ok(snap) => {
                let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
                let in_order = plan.ops.is_empty() && plan.conflicts.is_empty();
                let changes = self.targets[i].anchors.on_read(&snap);
                self.on_anchors(i, changes);
                self.targets[i].conflicts = plan.conflicts.len();
                self.set_in_order(i, Some(in_order));
                let name = self.target_name(i);
                self.debug(|| {
                    format!(
                        "{name}: read while its repair is held off: {}",
                        if in_order { "in order" } else { "out of order" }
                    )
                });
                if plan.ops.is_empty() {
                    // Nothing to write after all (the other writer put it back, or the
                    // kernel came round): say so. The pending reconcile stays the
                    // policy's to run (it will find nothing to write).
                    let t = &mut self.targets[i];
                    t.error = None;
                    t.failures = 0;
                }
            }
            Err(e) => {
                let name = self.target_name(i);
                self.debug(|| format!("{name}: read while its repair is held off failed: {e}"));
            }
        }
    }

    /// On a backend without change notifications (x_tables), before the poll's
    /// reconciles: read each chain in a fight and, when it reads differently from the
    /// last poll (counters aside) — or out of order after jumpset left it in order — tell
    /// the fight policy of a change by an unknown writer. Its quiet time then follows the
    /// writer's pace as the polls see it, so a retry waits for the writer to stop instead
    /// of spending the episode's budget on every poll, and comes soon after it stops.
    fn poll_fights(&mut self, now: Instant) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.portid.is_some() {
            return; // notifications tell every change
        }
        let mut changed = Vec::new();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if !t.sched.fighting() {
                t.polled = None;
                continue;
            }
            let spec = &self.cfg.chains[t.chain];
            let Ok(mut snap) = conn.backend.read(t.family, &spec.table, &spec.chain) else {
                continue; // the reconcile that follows reports the error
            };
            for r in &mut snap.rules {
                r.counters = None;
            }
            let differs = match &t.polled {
                Some(Polled::Rules(r)) => *r != snap.rules,
                Some(Polled::Committed) => {
                    let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
                    !plan.ops.is_empty()
                }
                None => false,
            };
            t.polled = Some(Polled::Rules(snap.rules));
            if differs {
                changed.push(i);
            }
        }
        for i in changed {
            let name = self.target_name(i);
            self.debug(|| format!("{name}: changed since the last poll, in a fight"));
            if let Some(ev) = self.targets[i].sched.changed(
                now,
                Writer::default(),
                &self.opts.tuning,
                &mut self.rng,
            ) {
                self.on_fight(i, ev);
            }
        }
    }

    fn set_in_order(&mut self, i: usize, in_order: Option<bool>) {
        let expect_anchors = self.cfg.expect_anchors;
        let t = &mut self.targets[i];
        t.in_order = in_order;
        // With expect_anchors, an absent anchor is drift too.
        let anchors_ok = !expect_anchors || t.anchors.absent().is_empty();
        let ok = in_order == Some(true) && t.conflicts == 0 && anchors_ok;
        self.shared
            .metrics
            .in_order
            .get_or_create(&t.labels)
            .set(i64::from(ok));
    }

    /// Begin, run and complete the reconcile of target `i`. (The kernel round trip in
    /// the middle is the only part that touches the backend.)
    fn reconcile_one(&mut self, i: usize) {
        let Some((cause, changed_at)) = self.targets[i].sched.begin() else {
            return;
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let t = &mut self.targets[i];
        let spec = &self.cfg.chains[t.chain];
        let started = self.host.now();
        let mut progress = Progress::default();
        let res = reconcile::reconcile_tracked(
            conn.backend.as_mut(),
            t.family,
            spec,
            Goal::Converge,
            &mut t.memo,
            &mut progress,
        );
        let ended = self.host.now();
        self.note_for_requests(i, &res);
        self.complete(i, cause, changed_at, started, ended, progress, res);
    }

    /// The `step` label of a failed reconcile.
    fn error_step(e: &ReconcileError, progress: &Progress) -> &'static str {
        match e {
            ReconcileError::TooManyRetries { .. } => "stale",
            ReconcileError::Verify { .. } => "verify",
            ReconcileError::Backend(b) => match b {
                BackendError::LockHeld { .. } => "lock",
                BackendError::MissingTarget { .. } => "missing_target",
                BackendError::Unsupported(_) => "unsupported_chain",
                BackendError::WouldMix { .. } => "would_mix",
                BackendError::Permission { .. } => "permission",
                _ => progress.step.name(),
            },
        }
    }

    /// Account for a reconcile of target `i` begun for `cause` that ran from `started`
    /// to `ended`, got as far as `progress` says and came to `res`.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        &mut self,
        i: usize,
        mut cause: Cause,
        changed_at: Option<Instant>,
        started: Instant,
        ended: Instant,
        progress: Progress,
        res: Result<Outcome, ReconcileError>,
    ) {
        let name = self.target_name(i);
        let m = self.shared.metrics.clone();
        m.reconcile_seconds
            .observe(ended.saturating_duration_since(started).as_secs_f64());
        // Every stale attempt counts, also those of a reconcile that gave up.
        m.stale_retries.inc_by(u64::from(progress.stale));
        let result = |r: &str| ResultLabel { result: r.into() };
        let done = match res {
            Ok(o) => {
                let changes = self.targets[i].anchors.on_read(&o.before);
                self.on_anchors(i, changes);
                let labels = self.targets[i].labels.clone();
                let conflicts = conflict_texts(&o.plan);
                {
                    let t = &mut self.targets[i];
                    t.conflicts = conflicts.len();
                    t.error = None;
                    t.failures = 0;
                    t.lock_since = None;
                }
                self.set_in_order(i, Some(true));
                let spec = &self.cfg.chains[self.targets[i].chain];
                m.last_success.set(
                    self.host
                        .wall()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                );
                if !conflicts.is_empty() {
                    m.conflicts.get_or_create(&labels).inc();
                }
                let done = if o.committed {
                    if self.targets[i].polled.is_some() {
                        self.targets[i].polled = Some(Polled::Committed);
                    }
                    m.reconciles.get_or_create(&result("repaired")).inc();
                    m.repairs.get_or_create(&labels).inc();
                    let agents = moved_agents(&o, spec);
                    if let Cause::Change(w) = &mut cause {
                        for a in agents.iter().copied() {
                            if !w.agents.contains(&a) {
                                w.agents.push(a);
                            }
                        }
                    } else if cause == Cause::Resync {
                        // Still an undo of someone else's change, found by a re-read.
                        cause = Cause::Change(Writer {
                            agents: agents.clone(),
                            ..Writer::default()
                        });
                    }
                    if let Cause::Change(w) = &cause {
                        m.undos
                            .get_or_create(&AgentLabels {
                                family: labels.family.clone(),
                                table: labels.table.clone(),
                                chain: labels.chain.clone(),
                                agent: w.agent().into(),
                            })
                            .inc();
                    }
                    let latency = changed_at.map(|c| ended.saturating_duration_since(c));
                    if let (Some(l), Cause::Change(_)) = (latency, &cause) {
                        m.repair_latency_seconds.observe(l.as_secs_f64());
                    }
                    let why = match &cause {
                        Cause::Start => "at start".to_string(),
                        Cause::Reload => "after a config reload".to_string(),
                        Cause::Resync => "found by a re-read".to_string(),
                        Cause::Change(w) if w.pid.is_none() && w.name.is_none() => {
                            format!("found by a re-read, moving {} rules", w.agents_text())
                        }
                        Cause::Change(w) => format!(
                            "undoing a change to {} rules{} by {}",
                            w.agents_text(),
                            latency
                                .map(|l| format!(" (notified {} before)", ms(l)))
                                .unwrap_or_default(),
                            w.describe()
                        ),
                    };
                    let text = format!(
                        "{name}: repaired in one transaction (generation {} -> {}{}), {why}: {}",
                        o.generation_before,
                        o.generation_after,
                        match (o.retries, o.anchored) {
                            (0, _) => String::new(),
                            (n, false) => format!(", re-planned {n} time(s) after concurrent writes"),
                            (n, true) => format!(
                                ", anchored on the rules it moves after {n} stale attempt(s) under concurrent writes"
                            ),
                        },
                        plan_text(&o, spec)
                    );
                    self.info(text);
                    Done::Repaired
                } else {
                    m.reconciles
                        .get_or_create(&result(if conflicts.is_empty() {
                            "noop"
                        } else {
                            "conflict"
                        }))
                        .inc();
                    self.debug(|| format!("{name}: nothing to write"));
                    Done::Clean
                };
                if conflicts != self.targets[i].conflicts_logged {
                    for c in &conflicts {
                        self.warn(format!("{name}: {c}"));
                    }
                    if conflicts.is_empty() && !self.targets[i].conflicts_logged.is_empty() {
                        self.info(format!("{name}: the conflict is resolved"));
                    }
                    self.targets[i].conflicts_logged = conflicts;
                }
                done
            }
            Err(e) => {
                // What the read said before the failure; a failed read says nothing new.
                if progress.in_order.is_some() {
                    self.set_in_order(i, progress.in_order);
                }
                let lock_for = self.cfg.xtables_lock_timeout;
                let busy_since = *self.targets[i].lock_since.get_or_insert(started);
                let busy = matches!(e, ReconcileError::Backend(BackendError::LockHeld { .. }));
                if busy && ended.saturating_duration_since(busy_since) < lock_for {
                    // Not an error yet: try the lock again soon, on the timer.
                    self.debug(|| format!("{name}: the xtables lock is busy; trying again"));
                    Done::Busy
                } else {
                    m.reconciles.get_or_create(&result("error")).inc();
                    m.errors
                        .get_or_create(&ErrorLabels {
                            family: self.targets[i].labels.family.clone(),
                            table: self.targets[i].labels.table.clone(),
                            chain: self.targets[i].labels.chain.clone(),
                            step: Self::error_step(&e, &progress).into(),
                        })
                        .inc();
                    let reopen = matches!(
                        &e,
                        ReconcileError::Backend(
                            BackendError::Io { .. } | BackendError::Decode { .. }
                        )
                    );
                    let text = match &e {
                        ReconcileError::Backend(BackendError::LockHeld { path, .. }) => format!(
                            "the xtables lock {} was held by another process (iptables-legacy or another agent) {}; see who holds it with `fuser -v {}`",
                            path.display(),
                            if lock_for.is_zero() {
                                "at the one try xtables_lock_timeout = \"0s\" allows".to_string()
                            } else {
                                format!(
                                    "for all of xtables_lock_timeout = {}",
                                    ms(lock_for)
                                )
                            },
                            path.display()
                        ),
                        e => e.to_string(),
                    };
                    if busy {
                        self.targets[i].lock_since = None;
                    }
                    let t = &mut self.targets[i];
                    t.failures = t.failures.saturating_add(1);
                    t.error = Some(text.clone());
                    self.warn(format!("{name}: reconcile failed: {text}"));
                    if reopen {
                        self.drop_backend("the kernel socket failed");
                    }
                    Done::Failed
                }
            }
        };
        if done != Done::Busy {
            self.targets[i].lock_since = None;
        }
        let ev = self.targets[i]
            .sched
            .finish(ended, cause, done, &self.opts.tuning, &mut self.rng);
        if done == Done::Failed {
            if let Some(w) = self.targets[i].sched.next_wake() {
                self.debug(|| {
                    format!(
                        "{name}: retrying in {}",
                        ms(w.saturating_duration_since(ended))
                    )
                });
            }
        }
        if let Some(ev) = ev {
            self.on_fight(i, ev);
        }
    }

    fn on_fight(&mut self, i: usize, ev: FightEvent) {
        let name = self.target_name(i);
        let t = &self.targets[i];
        let m = &self.shared.metrics;
        if ev.starts_episode() {
            m.fights.get_or_create(&t.labels).inc();
        }
        m.fight_active
            .get_or_create(&t.labels)
            .set(i64::from(t.sched.fighting()));
        self.log(ev.level(), format!("{name}: {}", ev.message()));
    }

    /// Report anchors of target `i` appearing or disappearing: log, gauge, removal count.
    fn on_anchors(&mut self, i: usize, changes: Vec<anchors::Change>) {
        let notified = self.conn.as_ref().is_some_and(|c| c.portid.is_some());
        for ch in changes {
            let l = &self.targets[i].labels;
            let m = &self.shared.metrics;
            m.anchor_present
                .get_or_create(&AnchorLabels {
                    family: l.family.clone(),
                    table: l.table.clone(),
                    chain: l.chain.clone(),
                    anchor: ch.anchor.clone(),
                })
                .set(i64::from(ch.present));
            if !ch.present && !ch.first {
                m.anchor_removals
                    .get_or_create(&RemovalLabels {
                        family: l.family.clone(),
                        table: l.table.clone(),
                        chain: l.chain.clone(),
                        anchor: ch.anchor.clone(),
                        agent: ch.by.as_ref().map_or("unknown", |w| w.agent()).into(),
                    })
                    .inc();
            }
            if let Some((level, text)) = ch.message(notified) {
                let name = self.target_name(i);
                self.log(level, format!("{name}: {text}"));
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Status, time.
    // -----------------------------------------------------------------------------------

    /// What `STATUS=` says about target `i`.
    fn target_state(&self, i: usize) -> String {
        let t = &self.targets[i];
        let mut p = match (&t.error, t.in_order, t.conflicts) {
            (_, Some(true), 0) if t.lock_since.is_some() => "in order".to_string(),
            (_, Some(_), n) if n > 0 => format!("conflict ({n} constraint(s) cannot be met)"),
            (Some(e), _, _) => format!("error: {e}"),
            (None, Some(true), _) => "in order".to_string(),
            (None, Some(false), _) => "out of order".to_string(),
            (None, None, _) => "pending".to_string(),
        };
        if t.lock_since.is_some() {
            p.push_str(", waiting for the xtables lock");
        }
        if let Some(f) = t.sched.status() {
            p.push_str(&format!(", {f}"));
        }
        let absent = t.anchors.absent();
        if self.cfg.expect_anchors && !absent.is_empty() {
            p.push_str(&format!(", anchor {} absent", absent.join(", ")));
        }
        p
    }

    fn status_line(&self) -> String {
        let mut s = match &self.waiting {
            Some(w) if self.conn.is_none() => format!("waiting: {w}"),
            _ => {
                let parts: Vec<String> = (0..self.targets.len())
                    .map(|i| format!("{}: {}", self.target_name(i), self.target_state(i)))
                    .collect();
                format!("{}: {}", self.backend_name, parts.join("; "))
            }
        };
        if let Some(p) = &self.paused {
            s.push_str(&format!(" | paused: {p}"));
        }
        if !self.rejected.is_empty() {
            s.push_str(&format!(
                " | {} config fragment(s) left out",
                self.rejected.len()
            ));
        }
        if let Some(e) = &self.reload_error {
            s.push_str(&format!(" | config reload failed, old config kept: {e}"));
        }
        s
    }

    /// Why the daemon is not ready at `now` (empty: ready). See the module docs.
    fn not_ready(&self, now: Instant) -> Vec<String> {
        let mut v = Vec::new();
        if let (Some(w), None) = (&self.waiting, &self.conn) {
            v.push(format!("waiting: {w}"));
        }
        if let Some(p) = &self.paused {
            v.push(format!("paused: {p}"));
        }
        for r in &self.rejected {
            v.push(format!("config: {} left out: {}", r.origin, r.error));
        }
        if self.conn.is_none() && self.waiting.is_none() {
            v.push("no backend open".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            let name = self.target_name(i);
            match (t.in_order, t.conflicts) {
                (Some(true), 0) => {}
                (Some(true), n) => {
                    v.push(format!("{name}: conflict: {n} constraint(s) cannot be met"))
                }
                (Some(false), _) => v.push(format!(
                    "{name}: out of order{}",
                    t.error
                        .as_ref()
                        .map(|e| format!(" (last reconcile failed: {e})"))
                        .unwrap_or_default()
                )),
                (None, _) => v.push(format!(
                    "{name}: not read yet{}",
                    t.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )),
            }
            if t.failures >= READY_FAILURES {
                v.push(format!(
                    "{name}: {} reconciles failed in a row{}",
                    t.failures,
                    t.error
                        .as_ref()
                        .map(|e| format!(", the last: {e}"))
                        .unwrap_or_default()
                ));
            }
            if let Some(since) = t.sched.due_since() {
                let d = now.saturating_duration_since(since);
                if d >= READY_STALL {
                    v.push(format!(
                        "{name}: no reconcile succeeded for {} although one was due",
                        ms(d)
                    ));
                }
            }
            // The chain is left to another writer: not ready however it looks now. (A
            // fight in which jumpset still writes shows as the chain's own state.)
            if t.sched.yielding() {
                v.push(format!(
                    "{name}: yielding in a fight{}",
                    t.sched
                        .status()
                        .map(|f| format!(" ({f})"))
                        .unwrap_or_default()
                ));
            }
            let absent = t.anchors.absent();
            if self.cfg.expect_anchors && !absent.is_empty() {
                v.push(format!(
                    "{name}: anchor {} absent (expect_anchors)",
                    absent.join(", ")
                ));
            }
        }
        v
    }

    fn publish_status(&mut self, now: Instant) {
        for t in &self.targets {
            self.shared
                .metrics
                .fight_yielding
                .get_or_create(&t.labels)
                .set(i64::from(t.sched.yielding()));
        }
        let s = self.status_line();
        let health = Health {
            started: self.ready,
            status: s.clone(),
            not_ready: self.not_ready(now),
        };
        if health != self.health {
            if health.ready() != self.health.ready() && self.ready {
                // Debug: every repair held off for the writer's quiet is a short "not
                // ready"; failures and fights have records of their own.
                if health.ready() {
                    self.debug(|| "ready: every managed chain is as declared".into());
                } else {
                    let why = health.not_ready.join("; ");
                    self.debug(|| format!("not ready: {why}"));
                }
            }
            self.shared.set_health(health.clone());
            self.health = health;
        }
        if s == self.status {
            return;
        }
        self.debug(|| format!("status: {s}"));
        if self.ready {
            self.out.push(Action::Notify(Notify::Status(s.clone())));
        }
        self.status = s;
    }

    fn mark_ready(&mut self) {
        self.ready = true;
        self.status = self.status_line();
        self.out
            .push(Action::Notify(Notify::Ready(self.status.clone())));
        let now = self.host.now();
        self.health = Health {
            started: true,
            status: self.status.clone(),
            not_ready: self.not_ready(now),
        };
        self.shared.set_health(self.health.clone());
        self.info(format!("ready: {}", self.status));
    }

    /// Everything time-driven, then every due reconcile.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if let Some(ev) = self.targets[i].sched.tick(now) {
                self.on_fight(i, ev);
            }
        }
        if now >= self.timers.resync {
            self.timers.resync = now + self.cfg.daemon.resync_interval;
            if self.conn.is_some() {
                self.shared.metrics.resyncs.inc();
                self.poll_fights(now);
                self.wake_all(now, Cause::Resync);
            } else if self.waiting.is_some() && self.sel.backend == BackendChoice::Auto {
                self.timers.open = None; // detect again
            }
        }
        if let Some((interval, next)) = self.timers.watchdog {
            if now >= next {
                self.out.push(Action::Notify(Notify::Watchdog));
                self.timers.watchdog = Some((interval, now + interval));
            }
        }
        if self.listening.retry.is_some_and(|r| now >= r) {
            self.try_listen(now);
        }
        self.ensure_backend(now);
        self.run_due(now);
        self.check_findings(now);
        self.publish_status(now);
    }

    /// Once the backend is open, at start and then every `resync_interval`: start a look
    /// at what `jumpset explain` finds on the managed chains' hooks. It reads every table
    /// of both backends (the whole ruleset: milliseconds on a typical node, more on a
    /// large one, retried when a commit races it), so the host does it off the loop's
    /// thread and the loop keeps its rhythm (`WATCHDOG=1`, signals, `/livez`).
    fn check_findings(&mut self, now: Instant) {
        if self.conn.is_none() || self.look != Look::Idle || now < self.findings_due {
            return;
        }
        self.findings_due = now + self.cfg.daemon.resync_interval;
        if self.host.look_for_findings(&self.cfg, &self.sel.families) {
            self.look = Look::Running;
        }
    }

    /// A look's answer. Each finding is logged once, when it appears (and once more when
    /// it is gone); `jumpset_findings{kind}` counts those in force. A look that failed
    /// changes nothing.
    fn on_findings(&mut self, found: Result<Vec<Finding>, String>) {
        let outdated = self.look == Look::Outdated;
        self.look = Look::Idle;
        if outdated {
            // Started under the old config; the reload made the next look due now.
            return;
        }
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                self.debug(|| format!("explain: cannot look at the hooks now: {e}"));
                return;
            }
        };
        for f in &found {
            if !self.findings.iter().any(|g| g.key == f.key) {
                let level = match f.severity {
                    Severity::Warning => Level::WARN,
                    Severity::Info => Level::INFO,
                };
                self.log(
                    level,
                    format!(
                        "explain: {}: {} — {}; {}",
                        f.kind.name(),
                        f.summary,
                        f.evidence.join("; "),
                        f.what_to_do
                    ),
                );
            }
        }
        for g in &self.findings {
            if !found.iter().any(|f| f.key == g.key) {
                self.out.push(Action::Log(
                    Level::INFO,
                    format!("explain: {}: no longer found: {}", g.kind.name(), g.summary),
                ));
            }
        }
        let m = &self.shared.metrics;
        for k in FindingKind::ALL {
            m.findings
                .get_or_create(&FindingLabel {
                    kind: k.name().into(),
                })
                .set(found.iter().filter(|f| f.kind == k).count() as i64);
        }
        self.findings = found;
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut d = self.timers.resync;
        if let Some((_, w)) = self.timers.watchdog {
            d = d.min(w);
        }
        if let Some(r) = self.listening.retry {
            d = d.min(r);
        }
        if self.conn.is_some() && self.look == Look::Idle {
            d = d.min(self.findings_due);
        }
        if self.conn.is_none() {
            d = d.min(self.timers.open.unwrap_or(now));
        } else {
            for t in &self.targets {
                if let Some(n) = t.sched.next_wake() {
                    d = d.min(n);
                }
                if let Some(n) = t.sched.check_at() {
                    d = d.min(n);
                }
            }
        }
        // When a due reconcile's stall would make the daemon not ready.
        for t in &self.targets {
            if let Some(since) = t.sched.due_since() {
                if since + READY_STALL > now {
                    d = d.min(since + READY_STALL);
                }
            }
        }
        // A safety floor: never spin.
        d.max(now + Duration::from_micros(200))
    }

    // -----------------------------------------------------------------------------------
    // Reload, stop.
    // -----------------------------------------------------------------------------------

    fn refuse_reload(&mut self, trigger: Trigger, why: String) {
        self.error(format!(
            "{}: keeping the old config: {why}",
            trigger.prefix()
        ));
        self.shared
            .metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: "error".into(),
            })
            .inc();
        self.reload_error = Some(why);
    }

    /// Log the fragments left out now that were not before, and those taken again.
    fn report_rejected(&mut self, before: &[Rejected]) {
        let now: Vec<Rejected> = self.rejected.clone();
        for r in &now {
            if !before.contains(r) {
                self.error(format!(
                    "config: {} is left out, the rest runs: {}",
                    r.origin, r.error
                ));
            }
        }
        for r in before {
            if !now.iter().any(|n| n.origin == r.origin) {
                self.info(format!("config: {} is taken again", r.origin));
            }
        }
        self.shared.metrics.rejected_fragments.set(now.len() as i64);
    }

    fn reload(&mut self, now: Instant, reload: Reload) {
        let path = self.opts.config_path.display().to_string();
        let trigger = reload.trigger;
        let prefix = trigger.prefix();
        let (cfg, rejected) = match reload.loaded {
            Ok(c) => c,
            Err(e) => {
                self.error(format!(
                    "{prefix}: {path} is invalid, keeping the old config: {e}"
                ));
                self.shared
                    .metrics
                    .reloads
                    .get_or_create(&ResultLabel {
                        result: "error".into(),
                    })
                    .inc();
                self.reload_error = Some(e.to_string());
                return;
            }
        };
        if trigger != Trigger::Signal && cfg == self.cfg && rejected == self.rejected {
            // Touched, not changed (or changed back).
            if self.reload_error.take().is_some() {
                self.info(format!("{prefix}: {path} is valid again, as in force"));
            }
            return;
        }
        let sel = selection(&cfg, &self.opts);
        if sel.backend != self.sel.backend {
            let missing = self.host.missing_capabilities(sel.backend);
            if !missing.is_empty() {
                self.refuse_reload(trigger, format!(
                    "backend {} needs {}, which this process dropped at start; restart it to switch backends",
                    sel.backend.name(),
                    missing.join(", ")
                ));
                return;
            }
        }
        if cfg.daemon.metrics_listen != self.cfg.daemon.metrics_listen {
            self.listen(now, cfg.daemon.metrics_listen);
        }
        let backend_changed = sel.backend != self.sel.backend;
        for t in &self.targets {
            let m = &self.shared.metrics;
            m.in_order.remove(&t.labels);
            m.fight_active.remove(&t.labels);
            m.fight_yielding.remove(&t.labels);
            for a in t.anchors.names() {
                m.anchor_present.remove(&AnchorLabels {
                    family: t.labels.family.clone(),
                    table: t.labels.table.clone(),
                    chain: t.labels.chain.clone(),
                    anchor: a.clone(),
                });
            }
        }
        let old = std::mem::replace(
            &mut self.targets,
            build_targets(&cfg, &sel, &self.opts.tuning, self.policy),
        );
        // A chain still managed keeps its scheduler: a writer's burst in progress is
        // still waited for, a fight still yielded (the reload wakes it below).
        for o in old {
            let spec = &self.cfg.chains[o.chain];
            if let Some(t) = self.targets.iter_mut().find(|t| {
                t.family == o.family
                    && cfg.chains[t.chain].table == spec.table
                    && cfg.chains[t.chain].chain == spec.chain
            }) {
                t.sched = o.sched;
            }
        }
        self.init_series();
        if cfg.daemon.resync_interval != self.cfg.daemon.resync_interval {
            self.timers.resync = now + cfg.daemon.resync_interval;
        }
        self.cfg = cfg;
        self.sel = sel;
        if backend_changed {
            self.conn = None;
            self.host.close();
            self.timers.open = None;
            self.waiting = None;
        }
        self.reload_error = None;
        let before = std::mem::replace(&mut self.rejected, rejected);
        self.report_rejected(&before);
        self.findings_due = now;
        if self.look == Look::Running {
            self.look = Look::Outdated;
        }
        self.shared
            .metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: "ok".into(),
            })
            .inc();
        self.info(format!(
            "{prefix}: reloaded {path}: {} chain(s), families {}, backend {}",
            self.cfg.chains.len(),
            self.sel
                .families
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(","),
            self.sel.backend.name()
        ));
        self.wake_all(now, Cause::Reload);
    }

    /// Shutdown: `cleanup_on_exit`, then `STOPPING=1`.
    fn stop(&mut self) {
        if self.cfg.daemon.cleanup_on_exit {
            self.cleanup();
        }
        self.out
            .push(Action::Notify(Notify::Stopping("stopping".into())));
        self.info("stopped".into());
    }

    /// `cleanup_on_exit`: remove the owned jumps from every chain.
    fn cleanup(&mut self) {
        self.timers.open = None;
        let now = self.host.now();
        if let Some(e) = self.ensure_backend(now) {
            self.error(format!(
                "cleanup_on_exit: cannot open the backend, the owned jumps stay: {e}"
            ));
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            self.error("cleanup_on_exit: no backend, the owned jumps stay".into());
            return;
        };
        let mut records = Vec::new();
        let lock_for = self.cfg.xtables_lock_timeout;
        for t in &self.targets {
            let spec = &self.cfg.chains[t.chain];
            let name = format!("{} {} {}", t.family, spec.table, spec.chain);
            // On the way out the engine may wait: for the xtables lock, up to its timeout.
            let begun = self.host.now();
            let mut pause = self.opts.tuning.lock_retry;
            let res = loop {
                let r = reconcile::reconcile(conn.backend.as_mut(), t.family, spec, Goal::Remove);
                match r {
                    Err(ReconcileError::Backend(BackendError::LockHeld { .. }))
                        if self.host.now().saturating_duration_since(begun) < lock_for =>
                    {
                        self.host.sleep(pause);
                        pause = (pause * 2).min(self.opts.tuning.lock_retry_cap);
                    }
                    r => break r,
                }
            };
            records.push(match res {
                Ok(o) if o.committed => (
                    Level::INFO,
                    format!(
                        "{name}: cleanup_on_exit: removed the owned jumps: {}",
                        plan_text(&o, spec)
                    ),
                ),
                Ok(_) => (
                    Level::INFO,
                    format!("{name}: cleanup_on_exit: no owned jump to remove"),
                ),
                Err(e) => (Level::ERROR, format!("{name}: cleanup_on_exit failed: {e}")),
            });
        }
        for (level, msg) in records {
            self.log(level, msg);
        }
    }
}
