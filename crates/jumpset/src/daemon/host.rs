//! The real world of the engine ([`SystemHost`]): the system clock, host detection, the
//! process's capabilities, the nf_tables and x_tables backends with the notification
//! socket, and the HTTP listener for `/metrics` and `/healthz`.

use super::engine::{Host, Notice, Opened};
use super::fight::Tuning;
use super::ident::{self, Identity};
use super::metrics::{self, Shared};
use super::monitor::{Classifier, Monitor, RecvError};
use super::privilege;
use crate::backend::nft::codec;
use crate::backend::BackendError;
use crate::snapshot::Family;
use crate::spec::{BackendChoice, Config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::task::JoinHandle;

/// Most datagrams taken in one batch after the first (the rest wait for the next).
const BATCH: usize = 10_000;

/// The notification socket and what it has seen of batches in progress.
struct Feed {
    monitor: Monitor,
    classifier: Classifier,
}

/// The engine's [`Host`] in production. Must be used inside a tokio runtime (the
/// notification socket and the HTTP task live on it).
pub struct SystemHost {
    shared: Arc<Shared>,
    feed: Option<Feed>,
    http: Option<JoinHandle<()>>,
    /// Whether the host's processes can be seen in `/proc` (probed at the first look).
    visible: Option<Result<(), &'static str>>,
}

impl std::fmt::Debug for SystemHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemHost")
            .field("subscribed", &self.feed.is_some())
            .field("serving", &self.http.is_some())
            .finish()
    }
}

impl SystemHost {
    /// A host serving `shared` over HTTP once asked to.
    pub fn new(shared: Arc<Shared>) -> Self {
        SystemHost {
            shared,
            feed: None,
            http: None,
            visible: None,
        }
    }

    /// Wait for the next notification datagram, then take every one already queued
    /// behind it (up to a bound), decoded. Pending forever without a subscription.
    /// Cancel-safe: nothing is consumed until the first datagram arrives.
    pub async fn notifications(&mut self) -> Vec<Notice> {
        let Some(feed) = self.feed.as_mut() else {
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
}

impl Drop for SystemHost {
    fn drop(&mut self) {
        if let Some(task) = self.http.take() {
            task.abort();
        }
    }
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

fn bind_metrics(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
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
        cfg: &Config,
        t: &Tuning,
    ) -> Result<Opened, BackendError> {
        let options = crate::backend::OpenOptions {
            xtables_lock_timeout: cfg.xtables_lock_timeout,
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

    fn findings(
        &mut self,
        cfg: &Config,
        families: &[Family],
    ) -> Option<Result<Vec<crate::explain::Finding>, String>> {
        Some(crate::explain::findings(cfg, families).map_err(|e| e.to_string()))
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
            if let Some(task) = self.http.take() {
                task.abort();
            }
            return Ok(None);
        };
        let listener = bind_metrics(addr)?;
        let local = listener.local_addr().unwrap_or(addr);
        let task = tokio::spawn(metrics::serve(listener, self.shared.clone()));
        if let Some(old) = self.http.replace(task) {
            old.abort();
        }
        Ok(Some(local))
    }
}
