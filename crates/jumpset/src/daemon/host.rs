//! The real world of the engine ([`SystemHost`]): the system clock, host detection, the
//! process's capabilities, the nf_tables and x_tables backends with the notification
//! socket, the HTTP server for `/metrics` and the probes, and the looks for `jumpset
//! explain`'s findings (each on a thread of its own).

use super::engine::{Event, Host, Notice, Opened};
use super::fight::Tuning;
use super::http::{Router, Server, Serving};
use super::ident::{self, Identity};
use super::monitor::{Classifier, Monitor, RecvError};
use super::privilege;
use crate::backend::nft::codec;
use crate::backend::BackendError;
use crate::explain::Finding;
use crate::snapshot::Family;
use crate::spec::{BackendChoice, Config};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Most datagrams taken in one batch after the first (the rest wait for the next).
const BATCH: usize = 10_000;

/// The notification socket and what it has seen of batches in progress.
struct Feed {
    monitor: Monitor,
    classifier: Classifier,
}

/// The answer of a look for findings under way.
type LookAnswer = oneshot::Receiver<Result<Vec<Finding>, String>>;

/// The engine's [`Host`] in production. Must be used inside a tokio runtime (the
/// notification socket lives on it); the HTTP server runs on a thread of its own.
pub struct SystemHost {
    server: Server,
    probes: Router,
    feed: Option<Feed>,
    look: Option<LookAnswer>,
    http: Option<Serving>,
    /// Whether the host's processes can be seen in `/proc` (probed at the first look).
    visible: Option<Result<(), &'static str>>,
}

impl std::fmt::Debug for SystemHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemHost")
            .field("subscribed", &self.feed.is_some())
            .field("looking", &self.look.is_some())
            .field("serving", &self.http.is_some())
            .finish()
    }
}

impl SystemHost {
    /// A host that serves `probes` (the routes of `metrics_listen`) on `server` once
    /// asked to.
    pub fn new(server: Server, probes: Router) -> Self {
        SystemHost {
            server,
            probes,
            feed: None,
            look: None,
            http: None,
            visible: None,
        }
    }

    /// Wait for what the host delivers of itself: the next notification datagrams, with
    /// every one queued behind them up to a bound, decoded ([`Event::Notifications`];
    /// pending without a subscription), or the answer of the look for findings under way
    /// ([`Event::Findings`]). Cancel-safe: nothing is consumed until one of them is ready.
    pub async fn next_event(&mut self) -> Event {
        let SystemHost { feed, look, .. } = self;
        tokio::select! {
            n = notifications(feed) => Event::Notifications(n),
            f = answer(look) => Event::Findings(f),
        }
    }
}

/// Wait for the next notification datagram, then take every one already queued behind
/// it (up to a bound), decoded. Pending forever without a subscription. Cancel-safe:
/// nothing is consumed until the first datagram arrives.
async fn notifications(feed: &mut Option<Feed>) -> Vec<Notice> {
    let Some(feed) = feed.as_mut() else {
        return std::future::pending().await;
    };
    let mut next = Some(feed.monitor.next().await);
    let mut out = Vec::new();
    let mut budget = BATCH;
    while let Some(r) = next.take() {
        match r {
            Ok(bytes) => match codec::parse(&bytes) {
                Ok(msgs) => {
                    out.extend(
                        msgs.iter()
                            .filter_map(|m| feed.classifier.feed(m))
                            .map(Notice::Commit),
                    );
                }
                Err(e) => out.push(Notice::Undecodable(e.to_string())),
            },
            Err(RecvError::Overflow) => {
                feed.classifier.reset();
                out.push(Notice::Overflow);
            }
            Err(e @ RecvError::Io(_)) => {
                out.push(Notice::Failed(e.to_string()));
                return out;
            }
        }
        budget -= 1;
        if budget > 0 {
            next = feed.monitor.try_next();
        }
    }
    out
}

/// Wait for the answer of the look under way. Pending forever without one. Cancel-safe:
/// the look is taken only once it has answered.
async fn answer(look: &mut Option<LookAnswer>) -> Result<Vec<Finding>, String> {
    let Some(rx) = look.as_mut() else {
        return std::future::pending().await;
    };
    let found = rx
        .await
        .unwrap_or_else(|_| Err("the look ended without an answer".into()));
    *look = None;
    found
}

/// HOST DETECTION — the single call site for `--backend auto`: with an undecided host the
/// daemon waits and detects again every `resync_interval`.
fn detect_backend() -> Result<BackendChoice, String> {
    use crate::detect::{detect_host, Choice};
    match detect_host() {
        Ok(v) => match v.backend {
            Some(Choice::Nft) => Ok(BackendChoice::Nft),
            Some(Choice::Legacy) => Ok(BackendChoice::Legacy),
            None => Err(format!(
                "backend auto: the host is {}, so no backend is chosen ({}); pass --backend nft|legacy, or set backend in the config",
                format!("{:?}", v.mode).to_lowercase(),
                v.evidence.join(" ")
            )),
        },
        Err(e) => Err(format!("backend auto: host detection failed: {e}")),
    }
}

/// The daemon reports a failure to open a backend as a backend error (the capability
/// check of [`crate::backend::open`] included).
fn into_backend_error(e: crate::Error) -> BackendError {
    match e {
        crate::Error::Backend(b) => b,
        other => BackendError::Unsupported(other.to_string()),
    }
}

impl Host for SystemHost {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn detect(&mut self) -> Result<BackendChoice, String> {
        detect_backend()
    }

    fn missing_capabilities(&mut self, choice: BackendChoice) -> Vec<String> {
        privilege::missing(choice)
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    fn open(
        &mut self,
        choice: BackendChoice,
        _cfg: &Config,
        t: &Tuning,
    ) -> Result<Opened, BackendError> {
        // One try of the xtables lock per attempt: the engine tries again on its timer
        // until `xtables_lock_timeout` has passed, so its loop never waits for the lock.
        let options = crate::backend::OpenOptions {
            xtables_lock_timeout: Duration::ZERO,
            ..Default::default()
        };
        if choice == BackendChoice::Legacy {
            return Ok(Opened {
                backend: crate::backend::open(choice, options).map_err(into_backend_error)?,
                portid: None,
                rcvbuf: None,
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
        let b = crate::backend::open(choice, options).map_err(into_backend_error)?;
        let opened = Opened {
            portid: b.commit_portid(),
            rcvbuf: Some(monitor.rcvbuf()),
            backend: b,
        };
        self.feed = Some(Feed {
            monitor,
            classifier: Classifier::new(),
        });
        Ok(opened)
    }

    fn close(&mut self) {
        self.feed = None;
    }

    /// On a thread of its own (spawned from the loop's, so in its network namespace and
    /// with its capabilities), named `jumpset-explain`; it only reads.
    fn look_for_findings(&mut self, cfg: &Config, families: &[Family]) -> bool {
        let (tx, rx) = oneshot::channel();
        let (cfg, families) = (cfg.clone(), families.to_vec());
        let spawned = std::thread::Builder::new()
            .name("jumpset-explain".into())
            .spawn(move || {
                let found = crate::explain::findings(&cfg, &families).map_err(|e| e.to_string());
                let _ = tx.send(found);
            });
        self.look = Some(match spawned {
            Ok(_) => rx,
            Err(e) => {
                // Answered at once: the engine logs it and looks again at the next interval.
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(format!("cannot start a thread to look: {e}")));
                rx
            }
        });
        true
    }

    fn identify(&mut self, pid: u32, comm: Option<&str>) -> Identity {
        let proc_root = std::path::Path::new("/proc");
        match *self
            .visible
            .get_or_insert_with(|| ident::visibility(proc_root))
        {
            Ok(()) => ident::read(proc_root, pid, comm),
            Err(why) => Identity::Hidden(why),
        }
    }

    fn listen(&mut self, addr: Option<SocketAddr>) -> std::io::Result<Option<SocketAddr>> {
        let Some(addr) = addr else {
            self.http = None;
            return Ok(None);
        };
        // The old listener goes first: the new address may be the same port.
        self.http = None;
        let (serving, local) = self.server.serve_tcp(addr, self.probes.clone())?;
        self.http = Some(serving);
        Ok(Some(local))
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}
