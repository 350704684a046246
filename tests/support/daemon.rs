//! `jumpset::daemon::run` on a thread of the test (in the test's namespace), stopped
//! through its shutdown future when dropped.

use jumpset::daemon::{DaemonError, Options, Tuning};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

/// A daemon running in this process, as `jumpset daemon` runs (its thread is named
/// [`InProcess::NAME`], which is the comm its commits carry).
pub struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl InProcess {
    /// The daemon thread's name.
    pub const NAME: &'static str = "jumpsetd";

    /// Start it with the config file `cfg` and `tuning`; it starts up on its own.
    pub fn start(cfg: &Path, tuning: Tuning) -> InProcess {
        let path = cfg.to_path_buf();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(Self::NAME.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut opts = Options::new(path);
                opts.tuning = tuning;
                rt.block_on(jumpset::daemon::run(opts, async {
                    let _ = rx.await;
                }))
            })
            .unwrap();
        InProcess {
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// [`InProcess::start`], then wait up to `limit` for `ready` (e.g. a probe's 200).
    pub fn start_ready(
        cfg: &Path,
        tuning: Tuning,
        limit: Duration,
        ready: impl FnMut() -> bool,
    ) -> InProcess {
        let d = InProcess::start(cfg, tuning);
        assert!(
            super::wait_until(limit, ready),
            "the in-process daemon never became ready"
        );
        d
    }

    /// Stop it and return how `run` ended.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
