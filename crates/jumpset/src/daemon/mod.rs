//! `jumpset daemon`: keep every managed chain reconciled.
//!
//! The public surface is what the `jumpset` binary and an embedder that runs the daemon
//! in-process need: [`run`] with its [`Options`] (timing in [`Tuning`] and
//! [`FightParams`], the HTTP server's bounds in [`HttpLimits`]), [`termination`],
//! [`restrict_privileges`] (before the runtime starts) and [`DaemonError`];
//! [`dropped_log_writes`] for a logger that counts what it could not write. Everything
//! else is private to the crate (`docs/architecture.md`, "daemon", maps it).
//!
//! Inside:
//!
//! - the engine (`engine`): every decision, as a state machine (`Engine::on_event`)
//!   fed with events and the time, answering with log records, systemd notifications,
//!   answers to HTTP handlers and its next deadline; the clock, host detection,
//!   capabilities, backends and the HTTP listener reach it through a `Host`;
//! - the timing it relies on: `fight` (debounce, backoff, when each chain may be
//!   reconciled) and the fight `policy` (a repair waits until the writer that triggered
//!   it is quiet; in a fight jumpset yields);
//! - what it tells about other writers: `ident` (who committed, from `/proc` at
//!   notification time) and `anchors` (the other agents' jumps `after`/`before` name,
//!   witnessed);
//! - the loop ([`run`]): one task on a current-thread tokio runtime that only waits — for
//!   shutdown, SIGHUP, a config read, a request from an HTTP handler, an nf_tables
//!   notification datagram (`monitor`), the answer of a look for `jumpset explain`'s
//!   findings or the engine's deadline — and hands what woke
//!   it to the engine, then carries out the engine's answer (logs through `tracing`,
//!   `notify` for systemd, replies to handlers). The production host is
//!   `host::SystemHost`.
//!
//! Nothing the loop does can wait long: the HTTP server (`http`) runs on a thread and
//! runtime of its own (`/metrics` and the probes, `metrics`), the config is read by a
//! thread of its own (`watch`: SIGHUP, and a `stat` poll that sees a ConfigMap
//! update), the look for `jumpset explain`'s findings (a read of the whole ruleset, at
//! start and every `resync_interval`) runs on a thread of its own, and the kernel work
//! left on the loop is bounded: reconciles are synchronous kernel round
//! trips of microseconds (milliseconds for a long chain, or when the kernel waits for
//! its deferred xt destructors), and the xtables lock is only ever tried, never waited
//! for (the engine tries again on its timer). So `WATCHDOG=1`, signals and `/livez` keep
//! their rhythm; the commits come from the loop's thread, so `nft monitor` names the
//! daemon's process (`jumpset`).
//!
//! The shutdown future (SIGTERM/SIGINT in `main`) stops the loop with `Ok`, after the
//! engine removed the owned jumps when `cleanup_on_exit` is set.

mod access;
mod anchors;
mod api;
mod claims;
mod engine;
mod fight;
mod host;
mod http;
mod ident;
mod metrics;
mod monitor;
mod notify;
mod policy;
mod privilege;
mod socket;
mod sys;
mod watch;

pub use fight::Tuning;
pub use http::Limits as HttpLimits;
pub use metrics::dropped_log_writes;
pub use policy::FightParams;
pub use privilege::restrict as restrict_privileges;

#[cfg(all(test, feature = "testing"))]
mod engine_tests;

use crate::exit::{KERNEL as EXIT_KERNEL, PRIVILEGE as EXIT_PRIVILEGE, USAGE as EXIT_USAGE};
use crate::snapshot::Family;
use crate::spec::{BackendChoice, Config, SpecError};
use engine::{Action, Answer, Command, Engine, Event, Notify};
use fight::Jitter;
use host::SystemHost;
use metrics::Shared;
use notify::Notifier;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, trace, warn, Level};

/// What to run: the config file, the command-line overrides, the timing. Made by
/// [`Options::new`], then changed field by field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The config file (re-read on SIGHUP and when it changes).
    pub config_path: PathBuf,
    /// `--backend`, overriding the config's (also after a reload).
    pub backend: Option<BackendChoice>,
    /// `--family`, overriding the config's (also after a reload).
    pub families: Option<Vec<Family>>,
    /// Timing parameters; `Tuning::default()` in production.
    pub tuning: Tuning,
    /// Seed of the jitter added to backoffs ([`Options::new`]: from the clock and pid).
    pub jitter_seed: u64,
    /// The git revision of the build (`jumpset_build_info`), `unknown` when not known.
    pub build_revision: String,
    /// How often the config files are checked for a change (default 250 ms).
    pub config_poll: Duration,
    /// The HTTP server's bounds.
    pub http: http::Limits,
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
            build_revision: "unknown".into(),
            config_poll: watch::POLL,
            http: http::Limits::default(),
        }
    }
}

/// Why the daemon could not start (once running, nothing but shutdown ends it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The config file is invalid (exit 2).
    #[error("config: {0}")]
    Config(#[from] SpecError),
    /// Bad usage (exit 2).
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

/// A request on its way to the loop, with where to answer.
#[derive(Debug)]
pub(crate) struct Call {
    command: Command,
    reply: oneshot::Sender<Answer>,
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// The loop did not answer in time.
    #[error("the daemon's loop did not answer within {}", ms(*.0))]
    Timeout(Duration),
    /// The loop is gone.
    #[error("the daemon's loop has stopped")]
    Closed,
}

/// How an HTTP handler reaches the daemon's loop (and through it the engine): send a
/// [`Command`], await its [`Answer`]. Cheap to clone; usable from any runtime.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    tx: mpsc::Sender<Call>,
}

impl Caller {
    /// A caller and the loop's end of it, holding at most `bound` calls in flight.
    pub fn channel(bound: usize) -> (Caller, mpsc::Receiver<Call>) {
        let (tx, rx) = mpsc::channel(bound.max(1));
        (Caller { tx }, rx)
    }

    /// Send `command` (waiting up to `wait` for room in the queue) and return where its
    /// answer will come: calls sent one after the other reach the engine in that order.
    pub async fn send(
        &self,
        command: Command,
        wait: Duration,
    ) -> Result<oneshot::Receiver<Answer>, CallError> {
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout(wait, self.tx.send(Call { command, reply })).await {
            Ok(Ok(())) => Ok(answer),
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => Err(CallError::Timeout(wait)),
        }
    }

    /// Send `command` and wait up to `wait` for the answer (the wait covers a full queue).
    pub async fn call(&self, command: Command, wait: Duration) -> Result<Answer, CallError> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.tx
                .send(Call { command, reply })
                .await
                .map_err(|_| CallError::Closed)?;
            answer.await.map_err(|_| CallError::Closed)
        };
        tokio::time::timeout(wait, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout(wait)))
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

/// What the loop keeps besides the engine: the service manager and the callers waiting.
struct Outside {
    notifier: Notifier,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    next_call: u64,
}

impl Outside {
    /// Carry out the engine's actions; the exit it asked for, if any.
    fn perform(&mut self, actions: Vec<Action>) -> Option<Result<(), DaemonError>> {
        let mut exit = None;
        for a in actions {
            match a {
                Action::Log(level, msg) => emit(level, &msg),
                Action::Notify(Notify::Ready(status)) => self.notifier.ready(&status),
                Action::Notify(Notify::Status(status)) => self.notifier.status(&status),
                Action::Notify(Notify::Watchdog) => self.notifier.watchdog(),
                Action::Notify(Notify::Stopping(status)) => self.notifier.stopping(&status),
                Action::Answer(id, answer) => {
                    if let Some(reply) = self.waiting.remove(&id) {
                        let _ = reply.send(answer);
                    }
                }
                Action::Exit(r) => exit = Some(r),
            }
        }
        self.notifier.flush();
        exit
    }
}

/// Unlinks the local API's socket when the daemon stops (if it is still the one bound).
struct Unlink(std::sync::Arc<std::sync::Mutex<Option<socket::Bound>>>);

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Some(b) = self.0.lock().ok().and_then(|mut b| b.take()) {
            b.release();
        }
    }
}

enum Wake {
    Stop,
    Hup,
    Loaded(engine::Reload),
    Call(Option<Call>),
    Host(Event),
    Timer,
}

/// Run the daemon until `shutdown` resolves; `Ok(())` then (exit 0). Errors only at
/// start: an invalid main config file (2), a missing capability (3), a runtime that
/// cannot be set up (4). Must run on a tokio runtime with IO and time enabled, in the
/// network namespace to manage (the calling thread's).
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let (cfg, rejected) = Config::load_lenient(&opts.config_path)?;
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
    let shared = Shared::new();
    let (caller, mut calls) = Caller::channel(64);
    let server = http::Server::start(opts.http.clone(), shared.metrics.http_evictions.clone())
        .map_err(|e| DaemonError::Setup(format!("cannot start the HTTP server's thread: {e}")))?;
    // The local API: its socket is bound (and moved, and bound again) by a task of the
    // HTTP server's, as the config in force says; it is unlinked when the daemon stops.
    let (settings, settings_rx) = tokio::sync::watch::channel(socket::Settings::of(&cfg.daemon));
    let api = std::sync::Arc::new(api::Api::new(
        caller.clone(),
        opts.config_path.clone(),
        settings_rx.clone(),
    ));
    let bound = std::sync::Arc::new(std::sync::Mutex::new(None));
    let _api = socket::keep_serving(
        server.spawner(),
        api::router(api),
        settings_rx,
        bound.clone(),
    );
    let _unlink = Unlink(bound);
    let host = SystemHost::new(server, metrics::probes(shared.clone(), caller));
    let mut watcher = watch::Watcher::spawn(
        opts.config_path.clone(),
        cfg.daemon.state_dir.clone(),
        opts.config_poll,
    )
    .map_err(|e| DaemonError::Setup(format!("cannot start the config reader's thread: {e}")))?;
    let mut outside = Outside {
        notifier: Notifier::from_env(),
        waiting: HashMap::new(),
        next_call: 0,
    };
    let watchdog = outside.notifier.watchdog_interval();
    let mut engine = Engine::new(opts, cfg, host, shared, watchdog).with_rejected(rejected);

    tokio::pin!(shutdown);
    // Until every caller is gone (never while the host serves the probes).
    let mut calls_open = true;
    let mut out = engine.on_event(Instant::now(), Event::Start);
    loop {
        if let Some(exit) = outside.perform(out.actions) {
            return exit;
        }
        let now_set = socket::Settings::of(engine.config().daemon());
        settings.send_if_modified(|s| {
            let changed = *s != now_set;
            *s = now_set;
            changed
        });
        let deadline = out.deadline;
        let wake = tokio::select! {
            biased;
            _ = &mut shutdown => Wake::Stop,
            _ = hup.recv() => Wake::Hup,
            r = watcher.next() => Wake::Loaded(r),
            c = calls.recv(), if calls_open => Wake::Call(c),
            e = engine.host_mut().next_event() => Wake::Host(e),
            _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
        };
        let event = match wake {
            Wake::Stop => Event::Stop,
            Wake::Hup => {
                // The config reader reads it; the result comes as `Loaded`.
                watcher.read_now();
                Event::Tick
            }
            Wake::Loaded(r) => Event::Reload(r),
            Wake::Call(None) => {
                calls_open = false;
                Event::Tick
            }
            Wake::Call(Some(call)) if call.command == Command::Ping => {
                // The loop is alive: it answers, the engine need not.
                let _ = call.reply.send(Answer::Pong);
                Event::Tick
            }
            Wake::Call(Some(call)) => {
                outside.next_call += 1;
                let id = outside.next_call;
                outside.waiting.insert(id, call.reply);
                Event::Call(id, call.command)
            }
            Wake::Host(e) => e,
            Wake::Timer => Event::Tick,
        };
        out = engine.on_event(Instant::now(), event);
    }
}
