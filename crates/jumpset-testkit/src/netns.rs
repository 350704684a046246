//! Throwaway network namespaces for `demo`, `bench` and the tests: a closure runs on a
//! thread of its own that has left the caller's network namespace, so nothing it does
//! (nor any program it starts) reaches the namespace the process was started in.

use std::io;

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
