//! The few socket options `netlink-sys` does not expose. The only `unsafe` of the
//! nf_tables backend.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn setsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live, properly aligned `T` for the duration of the call and its
    // size is passed as optlen; the kernel only reads that many bytes. The fd is owned by
    // the caller's socket and open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `SO_RCVTIMEO`: a blocking `recv` gives up with EAGAIN after `d`.
pub fn set_recv_timeout(fd: &impl AsRawFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// `SO_SNDBUFFORCE` (needs CAP_NET_ADMIN), falling back to `SO_SNDBUF`: a batch must fit
/// in one `sendmsg`, and the kernel refuses messages larger than the send buffer.
pub fn set_send_buffer(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &v)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &v))
}

/// `SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`.
pub fn set_recv_buffer(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &v)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &v))
}
