//! `jumpset daemon`: keep every managed chain reconciled (DESIGN.md, "Daemon").
//!
//! One task on a current-thread tokio runtime owns everything: the backend, the
//! nf_tables notification socket ([`monitor`]), one [`fight::Sched`] per (chain, family),
//! systemd notifications ([`notify`]). The HTTP responder for `/metrics` and `/healthz`
//! ([`metrics`]) is a second task on the same thread. Reconciles are synchronous kernel
//! round trips of microseconds (milliseconds when the kernel waits for its deferred xt
//! destructors), run from the loop itself.
//!
//! The loop:
//!
//! 1. Start: load the config, watch SIGHUP, bind the metrics listener, open the
//!    notification socket *before* the backend's first read (no change can slip between
//!    them), reconcile every chain × family once, then `READY=1` with the state in
//!    `STATUS=` — after a conflict or an error too, so systemd never restart-loops it.
//! 2. Wait for the first of: shutdown, SIGHUP, a notification datagram, the next deadline
//!    (a debounce expiring, a hold-off ending, the resync timer, the watchdog).
//! 3. A notification batch is classified ([`monitor::Classifier`]): only commits that
//!    touched a managed (family, table, chain), or deleted its chain or table, count;
//!    commits whose `nlmsg_pid` is the port id of the backend's socket (the socket we
//!    commit from, not the monitor's) are our own and ignored. A foreign commit marks its
//!    chains dirty; after the debounce they are reconciled. A converged chain is only
//!    read, never written.
//! 4. ENOBUFS (notifications lost) and every `resync_interval`: every chain is re-read.
//!    Legacy has no notifications: that timer is its poll.
//! 5. Errors back off exponentially with jitter (capped) and never end the daemon; a
//!    broken socket is reopened. Fights back off as [`fight`] describes.
//!
//! SIGHUP reloads the config; an invalid one is logged and the old one kept. The
//! shutdown future (SIGTERM/SIGINT in `main`) ends the loop with `Ok`, after removing
//! the owned jumps when `cleanup_on_exit` is set.

pub mod fight;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod privilege;

use crate::backend::legacy::LegacyBackend;
use crate::backend::nft::{self, NftBackend};
use crate::backend::{Backend, BackendError};
use crate::exit::{KERNEL as EXIT_KERNEL, PRIVILEGE as EXIT_PRIVILEGE, USAGE as EXIT_USAGE};
use crate::plan::Op;
use crate::reconcile::{self, Goal, Outcome, ReconcileError};
use crate::report;
use crate::snapshot::{agent_of, Comment, Family, Rule, Verdict};
use crate::spec::{BackendChoice, ChainSpec, Config, SpecError};
use fight::{Backoff, Cause, Done, FightEvent, Jitter, Sched, Tuning, Writer};
use metrics::{ChainLabels, InfoLabels, ResultLabel, Shared, SourceLabel};
use monitor::{Classifier, Monitor, RecvError, Watched};
use notify::Notifier;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// What to run: the config file, the command-line overrides, the timing.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file (re-read on SIGHUP).
    pub config_path: PathBuf,
    /// `--backend`, overriding the config's (also after a reload).
    pub backend: Option<BackendChoice>,
    /// `--family`, overriding the config's (also after a reload).
    pub families: Option<Vec<Family>>,
    /// Timing parameters; `Tuning::default()` in production.
    pub tuning: Tuning,
}

impl Options {
    /// The config at `path`, no overrides, default timing.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Options {
            config_path: path.into(),
            backend: None,
            families: None,
            tuning: Tuning::default(),
        }
    }
}

/// Why the daemon could not start (once running, nothing but shutdown ends it).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file is invalid (exit 2).
    #[error("config: {0}")]
    Config(#[from] SpecError),
    /// Bad usage, e.g. an address that cannot be listened on (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A capability is missing (exit 3).
    #[error("{0}")]
    Privilege(String),
    /// The runtime could not be set up (exit 4).
    #[error("{0}")]
    Setup(String),
}

impl DaemonError {
    /// The CLI exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) | DaemonError::Usage(_) => EXIT_USAGE,
            DaemonError::Privilege(_) => EXIT_PRIVILEGE,
            DaemonError::Setup(_) => EXIT_KERNEL,
        }
    }
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called (inside the runtime), not when the future is first polled.
pub fn termination() -> Result<impl Future<Output = ()>, DaemonError> {
    let err = |e: std::io::Error| DaemonError::Setup(format!("cannot watch SIGTERM/SIGINT: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
        }
    })
}

/// What to act on: the config with the command-line overrides applied.
#[derive(Debug, Clone)]
struct Selection {
    backend: BackendChoice,
    families: Vec<Family>,
}

impl Selection {
    fn new(cfg: &Config, backend: Option<BackendChoice>, families: Option<Vec<Family>>) -> Self {
        Selection {
            backend: backend.unwrap_or(cfg.backend),
            families: families.unwrap_or_else(|| cfg.families.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backend selection, and the ONE place host detection is wired in.
// ---------------------------------------------------------------------------------------

enum Resolved {
    Use(BackendChoice),
    /// No backend can be chosen now: wait, and detect again every `resync_interval`.
    Wait(String),
}

fn resolve(choice: BackendChoice) -> Resolved {
    match choice {
        BackendChoice::Auto => detect_backend(),
        c => Resolved::Use(c),
    }
}

/// HOST DETECTION — the single call site for `--backend auto` (DESIGN.md: with an
/// undecided host the daemon waits and detects again every `resync_interval`).
fn detect_backend() -> Resolved {
    use crate::detect::{detect_host, Choice};
    match detect_host() {
        Ok(v) => match v.backend {
            Some(Choice::Nft) => Resolved::Use(BackendChoice::Nft),
            Some(Choice::Legacy) => Resolved::Use(BackendChoice::Legacy),
            None => Resolved::Wait(format!(
                "backend auto: the host is {}, so no backend is chosen ({}); pass --backend nft|legacy, or set backend in the config",
                format!("{:?}", v.mode).to_lowercase(),
                v.evidence.join(" ")
            )),
        },
        Err(e) => Resolved::Wait(format!("backend auto: host detection failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// The engine: all the daemon's state, driven by the loop in `run`.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Pending,
    InOrder,
    Conflict(usize),
    Error(String),
}

struct Target {
    chain: usize,
    family: Family,
    labels: ChainLabels,
    sched: Sched,
    health: Health,
    conflicts_logged: Vec<String>,
    fight_writer: Option<Writer>,
}

struct Engine {
    opts: Options,
    cfg: Config,
    sel: Selection,
    targets: Vec<Target>,
    classifier: Classifier,
    backend: Option<Box<dyn Backend>>,
    backend_name: &'static str,
    own_portid: Option<u32>,
    monitor: Option<Monitor>,
    waiting: Option<String>,
    open_backoff: Backoff,
    next_open: Option<Instant>,
    next_resync: Instant,
    next_watchdog: Option<Instant>,
    notifier: Notifier,
    shared: Arc<Shared>,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    rng: Jitter,
    reload_error: Option<String>,
    ready: bool,
    status: String,
}

fn bind_metrics(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

fn build_targets(cfg: &Config, sel: &Selection, t: &Tuning) -> (Vec<Target>, Classifier) {
    let mut targets = Vec::new();
    let mut watch = Vec::new();
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
                sched: Sched::new(t),
                health: Health::Pending,
                conflicts_logged: Vec::new(),
                fight_writer: None,
            });
            watch.push(Watched {
                nfproto: nft::nfproto(family),
                table: spec.table.clone(),
                chain: spec.chain.clone(),
            });
        }
    }
    (targets, Classifier::new(watch))
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
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

/// A freshly opened backend, with the notification socket and its port id for nft.
struct Opened {
    backend: Box<dyn Backend>,
    monitor: Option<Monitor>,
    portid: Option<u32>,
}

/// Open `choice`: for nf_tables the notification socket first (so no change can slip
/// between the subscription and the first read), then the socket we commit from.
fn open_backend(choice: BackendChoice, cfg: &Config, t: &Tuning) -> Result<Opened, BackendError> {
    if choice == BackendChoice::Legacy {
        return Ok(Opened {
            backend: Box::new(LegacyBackend::open(cfg.xtables_lock_timeout)?),
            monitor: None,
            portid: None,
        });
    }
    let monitor = Monitor::open(t.monitor_rcvbuf).map_err(|source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::EPERM) | Some(libc::EACCES)
        ) {
            BackendError::Permission {
                step: "subscribing to nf_tables notifications".into(),
                capability: "CAP_NET_ADMIN",
            }
        } else {
            BackendError::Io {
                step: "opening the nf_tables notification socket".into(),
                source,
            }
        }
    })?;
    let b = NftBackend::open()?;
    Ok(Opened {
        portid: Some(b.portid()),
        backend: Box::new(b),
        monitor: Some(monitor),
    })
}

impl Engine {
    fn new(opts: Options, cfg: Config, shared: Arc<Shared>) -> Result<Engine, DaemonError> {
        let sel = Selection::new(&cfg, opts.backend, opts.families.clone());
        let (targets, classifier) = build_targets(&cfg, &sel, &opts.tuning);
        let now = Instant::now();
        let notifier = Notifier::from_env();
        let mut e = Engine {
            open_backoff: Backoff::new(
                opts.tuning.error_backoff_base,
                opts.tuning.error_backoff_cap,
            ),
            next_resync: now + cfg.daemon.resync_interval,
            next_watchdog: notifier.watchdog_interval().map(|i| now + i),
            opts,
            sel,
            targets,
            classifier,
            backend: None,
            backend_name: "none",
            own_portid: None,
            monitor: None,
            waiting: None,
            next_open: None,
            notifier,
            shared,
            http: None,
            rng: Jitter::from_entropy(),
            reload_error: None,
            ready: false,
            status: String::new(),
            cfg,
        };
        e.init_series();
        if let Some(addr) = e.cfg.daemon.metrics_listen {
            e.start_http(addr)
                .map_err(|err| DaemonError::Usage(format!("metrics_listen = \"{addr}\": {err}")))?;
        }
        Ok(e)
    }

    /// Create every per-chain series at 0, so scrapes see them before anything happens.
    fn init_series(&self) {
        let m = &self.shared.metrics;
        for t in &self.targets {
            let _ = m.repairs.get_or_create(&t.labels);
            let _ = m.conflicts.get_or_create(&t.labels);
            let _ = m.fights.get_or_create(&t.labels);
            m.fight_active.get_or_create(&t.labels).set(0);
            m.in_order.get_or_create(&t.labels).set(0);
        }
    }

    fn start_http(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = bind_metrics(addr)?;
        let local = listener.local_addr().unwrap_or(addr);
        let task = tokio::spawn(metrics::serve(listener, self.shared.clone()));
        if let Some((_, old)) = self.http.replace((addr, task)) {
            old.abort();
        }
        info!("serving /metrics and /healthz on http://{local}");
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

    /// Open the backend (and for nf_tables the notification socket, first) unless it is
    /// open or a retry is not due. Returns the error when opening failed.
    fn ensure_backend(&mut self, now: Instant) -> Option<BackendError> {
        if self.backend.is_some() || self.next_open.is_some_and(|t| now < t) {
            return None;
        }
        let choice = match resolve(self.sel.backend) {
            Resolved::Use(c) => c,
            Resolved::Wait(reason) => {
                if self.waiting.as_deref() != Some(reason.as_str()) {
                    warn!(
                        "{reason}; detecting again every {}",
                        ms(self.cfg.daemon.resync_interval)
                    );
                }
                self.waiting = Some(reason);
                self.next_open = Some(now + self.cfg.daemon.resync_interval);
                return None;
            }
        };
        let opened = open_backend(choice, &self.cfg, &self.opts.tuning);
        match opened {
            Ok(Opened {
                backend: b,
                monitor: m,
                portid,
            }) => {
                self.backend_name = b.name();
                match &m {
                    Some(m) => info!(
                        "backend {}: watching nf_tables notifications (receive buffer {} KiB), committing from port id {}",
                        self.backend_name,
                        m.rcvbuf() / 1024,
                        portid.unwrap_or(0)
                    ),
                    None => info!(
                        "backend {}: no change notifications exist for x_tables; polling every {}",
                        self.backend_name,
                        ms(self.cfg.daemon.resync_interval)
                    ),
                }
                self.backend = Some(b);
                self.monitor = m;
                self.own_portid = portid;
                self.classifier.reset();
                self.waiting = None;
                self.next_open = None;
                self.open_backoff.reset();
                self.shared.metrics.info.clear();
                self.shared
                    .metrics
                    .info
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
                let wait = self
                    .rng
                    .stretch(self.open_backoff.next_delay(), self.opts.tuning.jitter);
                warn!(
                    "cannot open the {} backend, retrying in {}: {e}",
                    choice.name(),
                    ms(wait)
                );
                self.waiting = Some(format!("cannot open the {} backend: {e}", choice.name()));
                self.next_open = Some(now + wait);
                Some(e)
            }
        }
    }

    /// Drop the backend and the notification socket; they are reopened and everything
    /// re-read.
    fn drop_backend(&mut self, why: &str) {
        warn!("{why}: reopening the backend");
        self.backend = None;
        self.monitor = None;
        self.own_portid = None;
        self.classifier.reset();
    }

    fn on_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let msgs = match nft::codec::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                debug!("an undecodable notification ({e}): re-reading every chain");
                self.wake_all(now, Cause::Resync);
                return;
            }
        };
        for m in msgs {
            let Some(c) = self.classifier.feed(&m) else {
                continue;
            };
            let own = Some(c.portid) == self.own_portid;
            self.shared
                .metrics
                .notifications
                .get_or_create(&SourceLabel {
                    source: if own { "own" } else { "foreign" }.into(),
                })
                .inc();
            if own {
                continue;
            }
            for &i in &c.targets {
                debug!(
                    "{}: changed by {} (generation {})",
                    self.target_name(i),
                    c.writer.describe(),
                    c.generation
                );
                self.targets[i]
                    .sched
                    .changed(now, c.writer.clone(), &self.opts.tuning);
            }
        }
    }

    fn on_overflow(&mut self, now: Instant) {
        warn!("the nf_tables notification queue overflowed (ENOBUFS): notifications were lost; re-reading every chain");
        self.shared.metrics.overflows.inc();
        self.shared.metrics.resyncs.inc();
        self.classifier.reset();
        self.wake_all(now, Cause::Resync);
    }

    /// Handle what the monitor returned, then everything already queued behind it.
    fn on_monitor(&mut self, now: Instant, first: Result<Vec<u8>, RecvError>) {
        let mut next = Some(first);
        let mut budget = 10_000;
        while let Some(r) = next.take() {
            match r {
                Ok(bytes) => self.on_datagram(now, &bytes),
                Err(RecvError::Overflow) => self.on_overflow(now),
                Err(e @ RecvError::Io(_)) => {
                    self.drop_backend(&e.to_string());
                    self.wake_all(now, Cause::Resync);
                    return;
                }
            }
            budget -= 1;
            if budget > 0 {
                next = self.monitor.as_ref().and_then(Monitor::try_next);
            }
        }
    }

    fn run_due(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if self.backend.is_none() {
                return;
            }
            if self.targets[i].sched.due(now) {
                self.reconcile_one(i);
            }
        }
    }

    fn reconcile_one(&mut self, i: usize) {
        let Some((mut cause, changed_at)) = self.targets[i].sched.begin() else {
            return;
        };
        let name = self.target_name(i);
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        let t = &self.targets[i];
        let spec = &self.cfg.chains[t.chain];
        let family = t.family;
        let started = Instant::now();
        let res = reconcile::reconcile(backend.as_mut(), family, spec, Goal::Converge);
        let ended = Instant::now();
        let m = &self.shared.metrics;
        m.reconcile_seconds
            .observe(ended.duration_since(started).as_secs_f64());
        let result = |r: &str| ResultLabel { result: r.into() };
        let done = match res {
            Ok(o) => {
                m.stale_retries.inc_by(u64::from(o.retries));
                let conflicts = report::conflict_lines(&o.plan.conflicts);
                let health = if conflicts.is_empty() {
                    Health::InOrder
                } else {
                    Health::Conflict(conflicts.len())
                };
                m.in_order
                    .get_or_create(&t.labels)
                    .set(i64::from(health == Health::InOrder));
                m.last_success.set(
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                );
                if !conflicts.is_empty() {
                    m.conflicts.get_or_create(&t.labels).inc();
                }
                let done =
                    if o.committed {
                        m.reconciles.get_or_create(&result("repaired")).inc();
                        m.repairs.get_or_create(&t.labels).inc();
                        let agents = moved_agents(&o, spec);
                        if let Cause::Change(w) = &mut cause {
                            for a in agents.iter().copied() {
                                if !w.agents.contains(&a) {
                                    w.agents.push(a);
                                }
                            }
                        } else if cause == Cause::Resync {
                            cause = Cause::Change(Writer {
                                agents: agents.clone(),
                                ..Writer::default()
                            });
                            // Still an undo of someone else's change, found by a re-read.
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
                                "undoing a change by {} to {} rules{}",
                                w.describe(),
                                w.agents_text(),
                                latency
                                    .map(|l| format!(", {} after it was notified", ms(l)))
                                    .unwrap_or_default()
                            ),
                        };
                        info!(
                        "{name}: repaired in one transaction (generation {} -> {}{}), {why}: {}",
                        o.generation_before,
                        o.generation_after,
                        match o.retries {
                            0 => String::new(),
                            n => format!(", re-planned {n} time(s) after concurrent writes"),
                        },
                        report::ChainPlan::new(&o.before, spec, &o.plan).lines().join("; ")
                    );
                        Done::Repaired
                    } else {
                        m.reconciles
                            .get_or_create(&result(if conflicts.is_empty() {
                                "noop"
                            } else {
                                "conflict"
                            }))
                            .inc();
                        debug!("{name}: nothing to write");
                        Done::Clean
                    };
                let t = &mut self.targets[i];
                if conflicts != t.conflicts_logged {
                    for c in &conflicts {
                        warn!("{name}: {c}");
                    }
                    if conflicts.is_empty() && !t.conflicts_logged.is_empty() {
                        info!("{name}: the conflict is resolved");
                    }
                    t.conflicts_logged = conflicts;
                }
                t.health = health;
                done
            }
            Err(e) => {
                m.reconciles.get_or_create(&result("error")).inc();
                let reopen = matches!(
                    &e,
                    ReconcileError::Backend(BackendError::Io { .. } | BackendError::Decode { .. })
                );
                self.targets[i].health = Health::Error(e.to_string());
                warn!("{name}: reconcile failed: {e}");
                if reopen {
                    self.drop_backend("the kernel socket failed");
                }
                Done::Failed
            }
        };
        let now = Instant::now();
        let ev = self.targets[i]
            .sched
            .finish(now, cause, done, &self.opts.tuning, &mut self.rng);
        if done == Done::Failed {
            if let Some(w) = self.targets[i].sched.next_wake(&self.opts.tuning) {
                debug!(
                    "{name}: retrying in {}",
                    ms(w.saturating_duration_since(now))
                );
            }
        }
        if let Some(ev) = ev {
            self.on_fight(i, ev);
        }
    }

    fn on_fight(&mut self, i: usize, ev: FightEvent) {
        let name = self.target_name(i);
        let t = &mut self.targets[i];
        let m = &self.shared.metrics;
        match ev {
            FightEvent::Started { writer, undos } => {
                m.fights.get_or_create(&t.labels).inc();
                m.fight_active.get_or_create(&t.labels).set(1);
                warn!(
                    "{name}: fight: another writer keeps undoing jumpset's placement ({undos} undos in a row; the latest by {}, touching {} rules); backing off exponentially, up to {} between repairs, instead of matching it write for write",
                    writer.describe(),
                    writer.agents_text(),
                    ms(self.opts.tuning.fight_backoff_cap.max(Duration::from_secs(1)))
                );
                t.fight_writer = Some(writer);
            }
            FightEvent::Ended { lasted, undos } => {
                m.fight_active.get_or_create(&t.labels).set(0);
                info!(
                    "{name}: the other writer stopped ({undos} undos over {}); repairing at full speed again",
                    ms(lasted)
                );
                t.fight_writer = None;
            }
        }
    }

    fn status_line(&self) -> String {
        let mut s = match &self.waiting {
            Some(w) if self.backend.is_none() => format!("waiting: {w}"),
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
                        if let (true, Some(w)) = (t.sched.fighting(), &t.fight_writer) {
                            p.push_str(&format!(", fight with {} (backing off)", w.describe()));
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
        let s = self.status_line();
        if s == self.status {
            return;
        }
        debug!("status: {s}");
        if self.ready {
            self.notifier.status(&s);
        }
        self.shared.set_health(self.ready, &s);
        self.status = s;
    }

    fn mark_ready(&mut self) {
        self.ready = true;
        self.status = self.status_line();
        self.notifier.ready(&self.status);
        self.shared.set_health(true, &self.status);
        info!("ready: {}", self.status);
    }

    /// Everything time-driven, then every due reconcile.
    fn tick(&mut self, now: Instant) {
        for i in 0..self.targets.len() {
            if let Some(ev) = self.targets[i].sched.tick(now, &self.opts.tuning) {
                self.on_fight(i, ev);
            }
        }
        if now >= self.next_resync {
            self.next_resync = now + self.cfg.daemon.resync_interval;
            if self.backend.is_some() {
                self.shared.metrics.resyncs.inc();
                self.wake_all(now, Cause::Resync);
            } else if self.waiting.is_some() && self.sel.backend == BackendChoice::Auto {
                self.next_open = None; // detect again
            }
        }
        if let Some(w) = self.next_watchdog {
            if now >= w {
                self.notifier.watchdog();
                self.next_watchdog = self.notifier.watchdog_interval().map(|i| now + i);
            }
        }
        self.ensure_backend(now);
        self.run_due(now);
        self.publish_status();
        self.notifier.flush();
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut d = self.next_resync;
        if let Some(w) = self.next_watchdog {
            d = d.min(w);
        }
        if self.backend.is_none() {
            d = d.min(self.next_open.unwrap_or(now));
        }
        for t in &self.targets {
            let next = if self.backend.is_some() {
                t.sched.next_wake(&self.opts.tuning)
            } else {
                None
            };
            if let Some(n) = next {
                d = d.min(n);
            }
        }
        // A safety floor: never spin.
        d.max(now + Duration::from_micros(200))
    }

    fn reload(&mut self, now: Instant) {
        let path = self.opts.config_path.clone();
        let metrics = &self.shared.metrics;
        let cfg = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                error!(
                    "SIGHUP: {} is invalid, keeping the old config: {e}",
                    path.display()
                );
                metrics
                    .reloads
                    .get_or_create(&ResultLabel {
                        result: "error".into(),
                    })
                    .inc();
                self.reload_error = Some(e.to_string());
                return;
            }
        };
        let sel = Selection::new(&cfg, self.opts.backend, self.opts.families.clone());
        let refuse = |this: &mut Engine, why: String| {
            error!("SIGHUP: keeping the old config: {why}");
            this.shared
                .metrics
                .reloads
                .get_or_create(&ResultLabel {
                    result: "error".into(),
                })
                .inc();
            this.reload_error = Some(why);
        };
        if sel.backend != self.sel.backend {
            let missing = privilege::missing(sel.backend);
            if !missing.is_empty() {
                let names: Vec<String> = missing.iter().map(|c| c.to_string()).collect();
                refuse(
                    self,
                    format!(
                        "backend {} needs {}, which this process dropped at start; restart it to switch backends",
                        sel.backend.name(),
                        names.join(", ")
                    ),
                );
                return;
            }
        }
        if cfg.daemon.metrics_listen != self.cfg.daemon.metrics_listen {
            match cfg.daemon.metrics_listen {
                Some(addr) => {
                    if let Err(e) = self.start_http(addr) {
                        refuse(self, format!("metrics_listen = \"{addr}\": {e}"));
                        return;
                    }
                }
                None => {
                    if let Some((_, task)) = self.http.take() {
                        task.abort();
                        info!("metrics_listen = \"\": no longer serving /metrics and /healthz");
                    }
                }
            }
        }
        let backend_changed = sel.backend != self.sel.backend;
        for t in &self.targets {
            self.shared.metrics.in_order.remove(&t.labels);
            self.shared.metrics.fight_active.remove(&t.labels);
        }
        let (targets, classifier) = build_targets(&cfg, &sel, &self.opts.tuning);
        self.targets = targets;
        self.classifier = classifier;
        self.init_series();
        if cfg.daemon.resync_interval != self.cfg.daemon.resync_interval {
            self.next_resync = now + cfg.daemon.resync_interval;
        }
        self.cfg = cfg;
        self.sel = sel;
        if backend_changed {
            self.backend = None;
            self.monitor = None;
            self.own_portid = None;
            self.next_open = None;
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
        info!(
            "SIGHUP: reloaded {}: {} chain(s), families {}, backend {}",
            path.display(),
            self.cfg.chains.len(),
            self.sel
                .families
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(","),
            self.sel.backend.name()
        );
        self.wake_all(now, Cause::Reload);
    }

    /// `cleanup_on_exit`: remove the owned jumps from every chain.
    fn cleanup(&mut self) {
        self.next_open = None;
        if let Some(e) = self.ensure_backend(Instant::now()) {
            error!("cleanup_on_exit: cannot open the backend, the owned jumps stay: {e}");
            return;
        }
        let Some(backend) = self.backend.as_mut() else {
            error!("cleanup_on_exit: no backend, the owned jumps stay");
            return;
        };
        for t in &self.targets {
            let spec = &self.cfg.chains[t.chain];
            let name = format!("{} {} {}", t.family, spec.table, spec.chain);
            match reconcile::reconcile(backend.as_mut(), t.family, spec, Goal::Remove) {
                Ok(o) if o.committed => info!(
                    "{name}: cleanup_on_exit: removed the owned jumps: {}",
                    report::ChainPlan::new(&o.before, spec, &o.plan)
                        .lines()
                        .join("; ")
                ),
                Ok(_) => info!("{name}: cleanup_on_exit: no owned jump to remove"),
                Err(e) => error!("{name}: cleanup_on_exit failed: {e}"),
            }
        }
    }
}

enum Wake {
    Stop,
    Hup,
    Datagram(Result<Vec<u8>, RecvError>),
    Timer,
}

async fn next_datagram(m: Option<&Monitor>) -> Result<Vec<u8>, RecvError> {
    match m {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// Run the daemon until `shutdown` resolves; `Ok(())` then (exit 0). Errors only at
/// start: an invalid config (2), an unusable `metrics_listen` (2), a missing capability
/// (3). Must run on a tokio runtime with IO and time enabled, in the network namespace
/// to manage (the calling thread's).
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let cfg = Config::load(&opts.config_path)?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| DaemonError::Setup(format!("cannot watch SIGHUP: {e}")))?;
    let shared = Shared::new();
    info!(
        "jumpset {} daemon: config {}, backend {}, {} chain(s), resync every {}",
        env!("CARGO_PKG_VERSION"),
        opts.config_path.display(),
        opts.backend.unwrap_or(cfg.backend).name(),
        cfg.chains.len(),
        ms(cfg.daemon.resync_interval)
    );
    let mut engine = Engine::new(opts, cfg, shared)?;
    let now = Instant::now();
    engine.wake_all(now, Cause::Start);
    if let Some(BackendError::Permission { step, capability }) = engine.ensure_backend(now) {
        return Err(DaemonError::Privilege(format!(
            "{step}: permission denied: jumpset daemon needs {capability}"
        )));
    }
    engine.tick(now);
    engine.mark_ready();

    tokio::pin!(shutdown);
    loop {
        let now = Instant::now();
        let deadline = engine.next_deadline(now);
        let wake = {
            let mon = engine.monitor.as_ref();
            tokio::select! {
                biased;
                _ = &mut shutdown => Wake::Stop,
                _ = hup.recv() => Wake::Hup,
                r = next_datagram(mon) => Wake::Datagram(r),
                _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
            }
        };
        let now = Instant::now();
        match wake {
            Wake::Stop => break,
            Wake::Hup => engine.reload(now),
            Wake::Datagram(r) => engine.on_monitor(now, r),
            Wake::Timer => {}
        }
        engine.tick(Instant::now());
    }

    if engine.cfg.daemon.cleanup_on_exit {
        engine.cleanup();
    }
    engine.notifier.stopping("stopping");
    if let Some((_, task)) = engine.http.take() {
        task.abort();
    }
    info!("stopped");
    Ok(())
}
