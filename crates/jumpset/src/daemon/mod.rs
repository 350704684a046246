//! `jumpset daemon`: keep every managed chain reconciled.
//!
//! Three pieces:
//!
//! - the [`engine`]: every decision, as a state machine ([`engine::Engine::on_event`])
//!   fed with events and the time, answering with log records, systemd notifications and
//!   its next deadline; the clock, host detection, capabilities, backends and the HTTP
//!   listener reach it through a [`engine::Host`];
//! - the timing it relies on: [`fight`] (debounce, backoff, when each chain may be
//!   reconciled) and the fight [`policy`] (a repair waits until the writer that triggered
//!   it is quiet; in a fight jumpset yields);
//! - what it tells about other writers: [`ident`] (who committed, from `/proc` at
//!   notification time) and [`anchors`] (the other agents' jumps `after`/`before` name,
//!   witnessed);
//! - the loop ([`run`]): one task on a current-thread tokio runtime that only waits — for
//!   shutdown, SIGHUP, an nf_tables notification datagram ([`monitor`]) or the engine's
//!   deadline — and hands what woke it to the engine, then carries out the engine's
//!   answer (logs through `tracing`, [`notify`] for systemd). The production host is
//!   [`host::SystemHost`]; the HTTP responder for `/metrics` and `/healthz` ([`metrics`])
//!   is a second task on the same thread. Reconciles are synchronous kernel round trips
//!   of microseconds (milliseconds when the kernel waits for its deferred xt
//!   destructors), run from the engine itself.
//!
//! SIGHUP re-reads the config file (the engine keeps the old config when the new one is
//! invalid). The shutdown future (SIGTERM/SIGINT in `main`) stops the loop with `Ok`,
//! after the engine removed the owned jumps when `cleanup_on_exit` is set.

pub mod anchors;
pub mod engine;
pub mod fight;
pub mod host;
pub mod ident;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod policy;
pub mod privilege;

#[cfg(all(test, feature = "testing"))]
mod engine_tests;

use crate::exit::{KERNEL as EXIT_KERNEL, PRIVILEGE as EXIT_PRIVILEGE, USAGE as EXIT_USAGE};
use crate::snapshot::Family;
use crate::spec::{BackendChoice, Config, SpecError};
use engine::{Action, Engine, Event, Notify};
use fight::{Jitter, Tuning};
use host::SystemHost;
use metrics::Shared;
use notify::Notifier;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, trace, warn, Level};

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
    /// Seed of the jitter added to backoffs ([`Options::new`]: from the clock and pid).
    pub jitter_seed: u64,
}

impl Options {
    /// The config at `path`, no overrides, default timing, a jitter seed from entropy.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Options {
            config_path: path.into(),
            backend: None,
            families: None,
            tuning: Tuning::default(),
            jitter_seed: Jitter::entropy_seed(),
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

/// `d` for a log line: milliseconds below a second, seconds above.
pub(crate) fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// Emit one of the engine's log records (under the engine's target, which decides which
/// debug records it builds).
fn emit(level: Level, msg: &str) {
    const T: &str = "jumpset::daemon::engine";
    match level {
        Level::ERROR => error!(target: T, "{msg}"),
        Level::WARN => warn!(target: T, "{msg}"),
        Level::INFO => info!(target: T, "{msg}"),
        Level::DEBUG => debug!(target: T, "{msg}"),
        _ => trace!(target: T, "{msg}"),
    }
}

/// Carry out the engine's actions; the exit it asked for, if any.
fn perform(notifier: &mut Notifier, actions: Vec<Action>) -> Option<Result<(), DaemonError>> {
    let mut exit = None;
    for a in actions {
        match a {
            Action::Log(level, msg) => emit(level, &msg),
            Action::Notify(Notify::Ready(status)) => notifier.ready(&status),
            Action::Notify(Notify::Status(status)) => notifier.status(&status),
            Action::Notify(Notify::Watchdog) => notifier.watchdog(),
            Action::Notify(Notify::Stopping(status)) => notifier.stopping(&status),
            Action::Exit(r) => exit = Some(r),
        }
    }
    notifier.flush();
    exit
}

enum Wake {
    Stop,
    Hup,
    Notified(Vec<engine::Notice>),
    Timer,
}

/// Run the daemon until `shutdown` resolves; `Ok(())` then (exit 0). Errors only at
/// start: an invalid config (2), an unusable `metrics_listen` (2), a missing capability
/// (3). Must run on a tokio runtime with IO and time enabled, in the network namespace
/// to manage (the calling thread's).
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let cfg = Config::load(&opts.config_path)?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| DaemonError::Setup(format!("cannot watch SIGHUP: {e}")))?;
    info!(
        "jumpset {} daemon: config {}, backend {}, {} chain(s), resync every {}",
        env!("CARGO_PKG_VERSION"),
        opts.config_path.display(),
        opts.backend.unwrap_or(cfg.backend).name(),
        cfg.chains.len(),
        ms(cfg.daemon.resync_interval)
    );
    let path = opts.config_path.clone();
    let shared = Shared::new();
    let mut notifier = Notifier::from_env();
    let host = SystemHost::new(shared.clone());
    let mut engine = Engine::new(opts, cfg, host, shared, notifier.watchdog_interval());

    tokio::pin!(shutdown);
    let mut out = engine.on_event(Instant::now(), Event::Start);
    loop {
        if let Some(exit) = perform(&mut notifier, out.actions) {
            return exit;
        }
        let deadline = out.deadline;
        let wake = tokio::select! {
            biased;
            _ = &mut shutdown => Wake::Stop,
            _ = hup.recv() => Wake::Hup,
            n = engine.host_mut().notifications() => Wake::Notified(n),
            _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
        };
        let event = match wake {
            Wake::Stop => Event::Stop,
            Wake::Hup => Event::Reload(Config::load(&path)),
            Wake::Notified(n) => Event::Notifications(n),
            Wake::Timer => Event::Tick,
        };
        out = engine.on_event(Instant::now(), event);
    }
}
