//! Acting in a given network namespace: run a closure on a short-lived thread that entered
//! it first. Sockets keep the namespace they were opened in, and `/proc/thread-self/net`
//! is that thread's, so everything the closure does happens there.

use crate::error::Error;
use std::os::fd::{AsRawFd, OwnedFd};

/// Run `f` on a new thread that entered the network namespace `fd` refers to.
pub(crate) fn run_in<T: Send>(
    fd: &OwnedFd,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) with a valid, owned fd and CLONE_NEWNET only changes this
            // thread's own network namespace; it takes no pointers.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(Error::Netns(std::io::Error::last_os_error()));
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
