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
//! - **Start**: serve `/metrics` (exit 2 when the address cannot be listened on), open
//!   the backend (exit 3 on missing privilege; other failures are retried with backoff),
//!   reconcile every chain × family once, then `READY=1` with the state in `STATUS=` —
//!   after a conflict or an error too, so systemd never restart-loops it.
//! - **Notifications**: only commits that touched a managed (family, table, chain), or
//!   deleted its chain or table, count; commits whose port id is the backend's (the socket
//!   we commit from) are our own and ignored. The writer of a foreign commit is looked
//!   up at once ([`Host::identify`]); the commit marks its chains dirty and updates their
//!   anchors ([`super::anchors`]); they are reconciled after the debounce and whatever
//!   the fight policy holds. A converged chain is only read, never written. An overflow (ENOBUFS) or an undecodable datagram re-reads every chain; a
//!   failed socket is reopened with the backend.
//! - **Tick**: the resync timer (every `resync_interval` every chain is re-read; legacy
//!   has no notifications, so that is its poll; `auto` on an undecided host detects
//!   again), `WATCHDOG=1`, fight episodes ending, due reconciles.
//! - **Reload**: an invalid config (or one this process cannot honour) is logged and the
//!   old one kept; a valid one replaces the chains and re-reads them all.
//! - **Stop**: remove the owned jumps when `cleanup_on_exit` is set, `STOPPING=1`, exit 0.
//!
//! Errors back off exponentially with jitter (capped) and never end the daemon. When a
//! repair may run beside other writers, and what happens in a fight, is the fight
//! policy's ([`super::policy`]).

use super::anchors::{self, Anchors};
use super::fight::{Backoff, Cause, Done, Jitter, Sched, Tuning, Writer};
use super::ident::Identity;
use super::metrics::{
    AgentLabels, AnchorLabels, ChainLabels, InfoLabels, RemovalLabels, ResultLabel, Shared,
    SourceLabel,
};
use super::policy::{self, FightEvent, PolicyFactory};
use super::{ms, DaemonError, Options};
use crate::backend::{Backend, BackendError};
use crate::notification::Commit;
use crate::plan::{Op, Plan};
use crate::reconcile::{self, Goal, Outcome, ReconcileError};
use crate::report;
use crate::snapshot::{agent_of, Comment, Family, Rule, Verdict};
use crate::spec::{BackendChoice, ChainSpec, Config, SpecError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::Level;

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

    /// Serve `/metrics` and `/healthz` on `addr` (replacing any previous listener), or
    /// stop serving (`None`). Returns the address bound.
    fn listen(&mut self, addr: Option<SocketAddr>) -> std::io::Result<Option<SocketAddr>>;

    /// What can be learnt now about the process `pid` that committed as `comm` (asked as
    /// soon as its commit is notified: such processes are short-lived).
    fn identify(&mut self, _pid: u32, _comm: Option<&str>) -> Identity {
        Identity::Unknown
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
    /// SIGHUP: the config file as re-read, or why it could not be.
    Reload(Result<Config, SpecError>),
    /// SIGTERM / SIGINT.
    Stop,
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Pending,
    InOrder,
    Conflict(usize),
    Error(String),
}

/// One managed chain in one family.
struct Target {
    chain: usize,
    family: Family,
    labels: ChainLabels,
    sched: Sched,
    health: Health,
    conflicts_logged: Vec<String>,
    /// The other agents' jumps `after`/`before` name, witnessed.
    anchors: Anchors,
    /// What the last reconcile read (the legacy poll skips the plan when the chain reads
    /// the same, counters aside).
    memo: reconcile::Memo,
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
    ready: bool,
    status: String,
    out: Vec<Action>,
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
                health: Health::Pending,
                conflicts_logged: Vec::new(),
                anchors: Anchors::new(spec),
                memo: reconcile::Memo::default(),
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
            ready: false,
            status: String::new(),
            out: Vec::new(),
            cfg,
            opts,
        };
        e.init_series();
        e
    }

    /// Use `policy` for fights instead of the standard one (before [`Event::Start`]).
    pub fn with_policy(mut self, policy: PolicyFactory) -> Self {
        self.policy = policy;
        self.targets = build_targets(&self.cfg, &self.sel, &self.opts.tuning, policy);
        self
    }

    /// The host.
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

    /// The state as `STATUS=` and `/healthz` last showed it.
    pub fn status(&self) -> &str {
        &self.status
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
            Event::Stop => {
                self.stop();
                return self.exit(Ok(()));
            }
        }
        self.tick(now);
        if starting {
            self.mark_ready();
        }
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

    fn listen(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let local = self.host.listen(Some(addr))?.unwrap_or(addr);
        self.info(format!("serving /metrics and /healthz on http://{local}"));
        Ok(())
    }

    fn start(&mut self, now: Instant) -> Result<(), DaemonError> {
        if let Some(addr) = self.cfg.daemon.metrics_listen {
            self.listen(addr)
                .map_err(|err| DaemonError::Usage(format!("metrics_listen = \"{addr}\": {err}")))?;
        }
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
            for tc in c
                .touched
                .iter()
                .filter(|tc| tc.covers(t.family, &spec.table, &spec.chain))
            {
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
                self.reconcile_one(i);
            }
        }
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
        let res = reconcile::reconcile_with_memo(
            conn.backend.as_mut(),
            t.family,
            spec,
            Goal::Converge,
            &mut t.memo,
        );
        let ended = self.host.now();
        self.complete(i, cause, changed_at, started, ended, res);
    }

    /// Account for a reconcile of target `i` begun for `cause` that ran from `started`
    /// to `ended` and came to `res`.
    fn complete(
        &mut self,
        i: usize,
        mut cause: Cause,
        changed_at: Option<Instant>,
        started: Instant,
        ended: Instant,
        res: Result<Outcome, ReconcileError>,
    ) {
        let name = self.target_name(i);
        let m = self.shared.metrics.clone();
        m.reconcile_seconds
            .observe(ended.saturating_duration_since(started).as_secs_f64());
        let result = |r: &str| ResultLabel { result: r.into() };
        let done = match res {
            Ok(o) => {
                let changes = self.targets[i].anchors.on_read(&o.before);
                self.on_anchors(i, changes);
                let anchors_absent =
                    self.cfg.expect_anchors && !self.targets[i].anchors.absent().is_empty();
                let spec = &self.cfg.chains[self.targets[i].chain];
                let labels = &self.targets[i].labels;
                m.stale_retries.inc_by(u64::from(o.retries));
                let conflicts = conflict_texts(&o.plan);
                let health = if conflicts.is_empty() {
                    Health::InOrder
                } else {
                    Health::Conflict(conflicts.len())
                };
                m.in_order
                    .get_or_create(labels)
                    .set(i64::from(health == Health::InOrder && !anchors_absent));
                m.last_success.set(
                    self.host
                        .wall()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                );
                if !conflicts.is_empty() {
                    m.conflicts.get_or_create(labels).inc();
                }
                let done = if o.committed {
                    m.reconciles.get_or_create(&result("repaired")).inc();
                    m.repairs.get_or_create(labels).inc();
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
                        match o.retries {
                            0 => String::new(),
                            n => format!(", re-planned {n} time(s) after concurrent writes"),
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
                self.targets[i].health = health;
                done
            }
            Err(e) => {
                m.reconciles.get_or_create(&result("error")).inc();
                let reopen = matches!(
                    &e,
                    ReconcileError::Backend(BackendError::Io { .. } | BackendError::Decode { .. })
                );
                self.targets[i].health = Health::Error(e.to_string());
                self.warn(format!("{name}: reconcile failed: {e}"));
                if reopen {
                    self.drop_backend("the kernel socket failed");
                }
                Done::Failed
            }
        };
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

    fn status_line(&self) -> String {
        let mut s = match &self.waiting {
            Some(w) if self.conn.is_none() => format!("waiting: {w}"),
            _ => {
                let parts: Vec<String> = (0..self.targets.len())
                    .map(|i| {
                        let t = &self.targets[i];
                        let mut p = format!(
                            "{}: {}",
                            self.target_name(i),
                            match &t.health {
                                Health::Pending => "pending".to_string(),
                                Health::InOrder => "in order".to_string(),
                                Health::Conflict(n) =>
                                    format!("conflict ({n} constraint(s) cannot be met)"),
                                Health::Error(e) => format!("error: {e}"),
                            }
                        );
                        if let Some(f) = t.sched.status() {
                            p.push_str(&format!(", {f}"));
                        }
                        let absent = t.anchors.absent();
                        if self.cfg.expect_anchors && !absent.is_empty() {
                            p.push_str(&format!(", anchor {} absent", absent.join(", ")));
                        }
                        p
                    })
                    .collect();
                format!("{}: {}", self.backend_name, parts.join("; "))
            }
        };
        if let Some(e) = &self.reload_error {
            s.push_str(&format!(" | config reload failed, old config kept: {e}"));
        }
        s
    }

    fn publish_status(&mut self) {
        for t in &self.targets {
            self.shared
                .metrics
                .fight_yielding
                .get_or_create(&t.labels)
                .set(i64::from(t.sched.yielding()));
        }
        let s = self.status_line();
        if s == self.status {
            return;
        }
        self.debug(|| format!("status: {s}"));
        if self.ready {
            self.out.push(Action::Notify(Notify::Status(s.clone())));
        }
        self.shared.set_health(self.ready, &s);
        self.status = s;
    }

    fn mark_ready(&mut self) {
        self.ready = true;
        self.status = self.status_line();
        self.out
            .push(Action::Notify(Notify::Ready(self.status.clone())));
        self.shared.set_health(true, &self.status);
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
        self.ensure_backend(now);
        self.run_due(now);
        self.publish_status();
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut d = self.timers.resync;
        if let Some((_, w)) = self.timers.watchdog {
            d = d.min(w);
        }
        if self.conn.is_none() {
            d = d.min(self.timers.open.unwrap_or(now));
        } else {
            for t in &self.targets {
                if let Some(n) = t.sched.next_wake() {
                    d = d.min(n);
                }
            }
        }
        // A safety floor: never spin.
        d.max(now + Duration::from_micros(200))
    }

    // -----------------------------------------------------------------------------------
    // Reload, stop.
    // -----------------------------------------------------------------------------------

    fn refuse_reload(&mut self, why: String) {
        self.error(format!("SIGHUP: keeping the old config: {why}"));
        self.shared
            .metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: "error".into(),
            })
            .inc();
        self.reload_error = Some(why);
    }

    fn reload(&mut self, now: Instant, loaded: Result<Config, SpecError>) {
        let path = self.opts.config_path.display().to_string();
        let cfg = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.error(format!(
                    "SIGHUP: {path} is invalid, keeping the old config: {e}"
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
        let sel = selection(&cfg, &self.opts);
        if sel.backend != self.sel.backend {
            let missing = self.host.missing_capabilities(sel.backend);
            if !missing.is_empty() {
                self.refuse_reload(format!(
                    "backend {} needs {}, which this process dropped at start; restart it to switch backends",
                    sel.backend.name(),
                    missing.join(", ")
                ));
                return;
            }
        }
        if cfg.daemon.metrics_listen != self.cfg.daemon.metrics_listen {
            match cfg.daemon.metrics_listen {
                Some(addr) => {
                    if let Err(e) = self.listen(addr) {
                        self.refuse_reload(format!("metrics_listen = \"{addr}\": {e}"));
                        return;
                    }
                }
                None => {
                    let _ = self.host.listen(None);
                    self.info(
                        "metrics_listen = \"\": no longer serving /metrics and /healthz".into(),
                    );
                }
            }
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
        self.targets = build_targets(&cfg, &sel, &self.opts.tuning, self.policy);
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
        self.shared
            .metrics
            .reloads
            .get_or_create(&ResultLabel {
                result: "ok".into(),
            })
            .inc();
        self.info(format!(
            "SIGHUP: reloaded {path}: {} chain(s), families {}, backend {}",
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
        for t in &self.targets {
            let spec = &self.cfg.chains[t.chain];
            let name = format!("{} {} {}", t.family, spec.table, spec.chain);
            records.push(
                match reconcile::reconcile(conn.backend.as_mut(), t.family, spec, Goal::Remove) {
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
                },
            );
        }
        for (level, msg) in records {
            self.log(level, msg);
        }
    }
}
