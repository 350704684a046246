//! The daemon's few direct system calls (the backends keep their own in their `sys`
//! modules): `no_new_privs`, and the clock tick and page size the `process_*` metrics
//! need to read `/proc/self/stat`.

use std::io;

/// Set `no_new_privs` on the process: nothing it executes (it executes nothing, but a
/// bug or an exploit might) can gain privileges through setuid bits or file
/// capabilities. Inherited by every thread created afterwards and irreversible.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_NO_NEW_PRIVS takes integer arguments only (1, then
    // zeros, as the man page requires) and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of CPU times in `/proc/*/stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf(3) takes an integer and returns one; no memory is involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The page size (`_SC_PAGESIZE`), the unit of the RSS in `/proc/*/stat`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf(3) takes an integer and returns one; no memory is involved.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// The supplementary groups of the peer of the Unix socket `fd` as they were when it
/// connected (`SO_PEERGROUPS`, Linux 4.13+): no `/proc` to read, no pid to race.
pub fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `groups`, a buffer of
        // exactly that many bytes we own, and stores the size it needs (or used) in
        // `len`; `fd` is a live socket borrowed for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` says how much is needed.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}
