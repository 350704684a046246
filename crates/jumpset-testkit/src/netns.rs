//! Throwaway network namespaces for `demo`, `bench` and the tests: a closure runs on a
//! thread of its own that has left the caller's network namespace, so nothing it does
//! (nor any program it starts) reaches the namespace the process was started in.
//!
//! [`Netns`] holds a namespace open by a file descriptor, so several can exist side by side
//! (the data path's client, node and pod) and threads can enter them. Nothing is named or
//! mounted: a namespace goes away with the last descriptor, socket or thread inside it.
//! All of this crate's unsafe code is in this module.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Run `f` on a new thread inside a fresh, empty network namespace; the namespace goes
/// away when the thread ends (and with it every rule written there). Needs CAP_SYS_ADMIN.
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET only changes the calling thread's own
            // network namespace; it takes no pointers and touches no memory of ours.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A network namespace, held open by a descriptor of `/proc/thread-self/ns/net`.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        Ok(Netns {
            fd: File::open("/proc/thread-self/ns/net")?.into(),
        })
    }

    /// A fresh, empty network namespace of its own (made on a short-lived thread: the
    /// caller stays where it is). Needs CAP_SYS_ADMIN.
    pub fn new() -> io::Result<Netns> {
        in_new_netns(Netns::current)?
    }

    /// Another descriptor of the same namespace.
    pub fn try_clone(&self) -> io::Result<Netns> {
        Ok(Netns {
            fd: self.fd.try_clone()?,
        })
    }

    /// Move the calling thread into this namespace, for the rest of its life: only for
    /// threads of one's own (see [`Netns::run`] and [`Netns::spawn`]).
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: setns(2) on a descriptor we own (an nsfs file of a network namespace)
        // with CLONE_NEWNET changes only the calling thread's network namespace; no memory
        // of ours is involved.
        let rc = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Run `f` on a new thread inside this namespace and wait for it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Start `f` on a named thread inside this namespace. Errors when the thread cannot
    /// enter it (`f` then never runs).
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<NsThread<T>> {
        let ns = self.try_clone()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let entered = ns.enter();
                drop(ns);
                let ok = entered.is_ok();
                let _ = tx.send(entered);
                ok.then(f)
            })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(NsThread(handle)),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other(
                "the namespace thread died before entering",
            )),
        }
    }
}

/// A thread started inside a namespace by [`Netns::spawn`].
#[derive(Debug)]
pub struct NsThread<T>(std::thread::JoinHandle<Option<T>>);

impl<T> NsThread<T> {
    /// Wait for the thread; its result (a panic of the thread is passed on).
    pub fn join(self) -> T {
        match self.0.join() {
            Ok(Some(v)) => v,
            Ok(None) => unreachable!("spawn returns a thread only once it entered"),
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
