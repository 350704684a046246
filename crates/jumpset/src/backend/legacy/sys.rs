//! The raw system calls of the legacy backend and the kernel's fixed-size structures: an
//! `IPPROTO_RAW` socket, the `IPT_SO_*` / `IP6T_SO_*` socket options, and the xtables lock
//! (`open` + `flock`). The only `unsafe` of the legacy backend; everything that builds or
//! reads a table blob is in the pure [`super::blob`] module.
//!
//! Only 64-bit userspace is supported: a 32-bit process on a 64-bit kernel goes through the
//! kernel's `compat_*` translation, whose layouts differ (4-byte counters pointer and
//! alignment), and [`RawSocket::open`] refuses it.

use super::blob::{Encoded, Info, INFO_SIZE, TABLE_NAME_LEN};
use crate::snapshot::Family;
use std::ffi::CString;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `IPT_SO_GET_INFO` / `IP6T_SO_GET_INFO` (getsockopt).
const SO_GET_INFO: libc::c_int = 64;
/// `IPT_SO_GET_ENTRIES` / `IP6T_SO_GET_ENTRIES` (getsockopt).
const SO_GET_ENTRIES: libc::c_int = 65;
/// `IPT_SO_SET_REPLACE` / `IP6T_SO_SET_REPLACE` (setsockopt).
const SO_SET_REPLACE: libc::c_int = 64;
/// `IPT_SO_SET_ADD_COUNTERS` / `IP6T_SO_SET_ADD_COUNTERS` (setsockopt).
const SO_SET_ADD_COUNTERS: libc::c_int = 65;
/// `struct ipt_getinfo` / `ip6t_getinfo` (identical layouts).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IptGetinfo {
    /// Table name, NUL-padded.
    pub name: [u8; TABLE_NAME_LEN],
    /// Bitmask of the hooks the table is attached to.
    pub valid_hooks: u32,
    /// Byte offset of each hook's first entry.
    pub hook_entry: [u32; 5],
    /// Byte offset of each hook's policy entry.
    pub underflow: [u32; 5],
    /// Entries in the table.
    pub num_entries: u32,
    /// Bytes of the entries blob.
    pub size: u32,
}

/// Bytes of the `IPT_SO_GET_ENTRIES` header before the entries.
pub const ENTRIES_HEADER: usize = size_of::<IptGetEntries>();
/// Bytes of the `IPT_SO_SET_REPLACE` header before the entries.
pub const REPLACE_HEADER: usize = size_of::<IptReplace>();

/// `struct ipt_get_entries` header (the entries follow it).
#[repr(C)]
pub struct IptGetEntries {
    /// Table name.
    pub name: [u8; TABLE_NAME_LEN],
    /// Bytes of entries requested: must equal the table's current size.
    pub size: u32,
    // 4 bytes of padding, then `struct ipt_entry entrytable[]` (8-aligned).
    _pad: u32,
}

/// `struct ipt_replace` / `ip6t_replace` header (the new entries blob follows it).
#[repr(C)]
pub struct IptReplace {
    /// Table name.
    pub name: [u8; TABLE_NAME_LEN],
    /// Must equal the table's hooks.
    pub valid_hooks: u32,
    /// Entries in the new blob.
    pub num_entries: u32,
    /// Bytes of the new blob.
    pub size: u32,
    /// Byte offset of each hook's first entry in the new blob.
    pub hook_entry: [u32; 5],
    /// Byte offset of each hook's policy entry in the new blob.
    pub underflow: [u32; 5],
    /// Entries of the table being replaced (the kernel's optimistic concurrency check).
    pub num_counters: u32,
    /// Where the kernel writes the old table's counters (`num_counters` of them).
    pub counters: *mut XtCounters,
}

/// `struct xt_counters`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XtCounters {
    /// Packets.
    pub pcnt: u64,
    /// Bytes.
    pub bcnt: u64,
}

/// `struct xt_counters_info` header (the counters follow it).
#[repr(C)]
pub struct XtCountersInfo {
    /// Table name.
    pub name: [u8; TABLE_NAME_LEN],
    /// Counters that follow: must equal the table's entry count.
    pub num_counters: u32,
    _pad: u32,
}

// The layouts the kernel expects (`docs/architecture.md#x_tables-structures`), checked at
// compile time on the 64-bit targets we support.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<IptGetinfo>() == INFO_SIZE);
    assert!(offset_of!(IptGetinfo, num_entries) == 76);
    assert!(size_of::<IptGetEntries>() == 40);
    assert!(size_of::<IptReplace>() == 96);
    assert!(offset_of!(IptReplace, hook_entry) == 44);
    assert!(offset_of!(IptReplace, num_counters) == 84);
    assert!(offset_of!(IptReplace, counters) == 88);
    assert!(size_of::<XtCounters>() == 16);
    assert!(size_of::<XtCountersInfo>() == 40);
};

fn table_name(name: &str) -> io::Result<[u8; TABLE_NAME_LEN]> {
    let mut n = [0u8; TABLE_NAME_LEN];
    if name.len() >= TABLE_NAME_LEN || name.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid x_tables table name"),
        ));
    }
    n[..name.len()].copy_from_slice(name.as_bytes());
    Ok(n)
}

/// A raw socket of one family: the handle the `IPT_SO_*` socket options are called on.
/// It acts in the network namespace of the thread that opened it.
pub struct RawSocket {
    fd: OwnedFd,
    level: libc::c_int,
}

impl RawSocket {
    /// `socket(AF_INET|AF_INET6, SOCK_RAW|SOCK_CLOEXEC, IPPROTO_RAW)`, as libiptc opens it.
    /// Needs CAP_NET_RAW.
    pub fn open(family: Family) -> io::Result<RawSocket> {
        if !cfg!(target_pointer_width = "64") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the x_tables interface is only supported for 64-bit processes",
            ));
        }
        let (domain, level) = match family {
            Family::Ip => (libc::AF_INET, libc::IPPROTO_IP),
            Family::Ip6 => (libc::AF_INET6, libc::IPPROTO_IPV6),
        };
        // SAFETY: socket(2) takes no pointers; on success it returns a new descriptor that
        // nothing else owns.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RawSocket { fd, level })
    }

    /// getsockopt into `buf`; returns the length the kernel reported.
    fn getsockopt(&self, name: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
        let mut len = libc::socklen_t::try_from(buf.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "request too large"))?;
        // SAFETY: `buf` is a live, writable buffer of exactly `len` bytes for the duration
        // of the call; the kernel writes at most `len` bytes into it and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                self.level,
                name,
                buf.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(len as usize)
    }

    /// setsockopt with `buf` as the value.
    ///
    /// # Safety
    ///
    /// Every user-space pointer embedded in `buf` that the kernel follows for option
    /// `name` (the counters pointer of `SO_SET_REPLACE`) must be valid for the accesses the
    /// kernel makes through it until this call returns.
    unsafe fn setsockopt(&self, name: libc::c_int, buf: &[u8]) -> io::Result<()> {
        let len = libc::socklen_t::try_from(buf.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "table too large"))?;
        // SAFETY: `buf` is live and `len` bytes long for the duration of the call and the
        // kernel only reads it; embedded pointers are valid per this function's contract.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                self.level,
                name,
                buf.as_ptr().cast::<libc::c_void>(),
                len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `SO_GET_INFO`: the table's hooks, entry count and size. Instantiates the table in
    /// the kernel if it did not exist (check `/proc/net/ip_tables_names` first).
    pub fn get_info(&self, table: &str) -> io::Result<Info> {
        let mut buf = [0u8; INFO_SIZE];
        buf[..TABLE_NAME_LEN].copy_from_slice(&table_name(table)?);
        let n = self.getsockopt(SO_GET_INFO, &mut buf)?;
        Info::parse(&buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `SO_GET_ENTRIES` of `size` bytes (the size GET_INFO reported) into `buf`, reused,
    /// after `room` bytes left as they are: afterwards `buf` holds `room` bytes, then
    /// [`ENTRIES_HEADER`] bytes of header, then the entries blob. Only bytes the buffer
    /// did not have yet are zeroed (the kernel overwrites the rest). `EAGAIN` when the
    /// table's size changed since.
    pub fn get_entries_into(
        &self,
        table: &str,
        size: u32,
        buf: &mut Vec<u8>,
        room: usize,
    ) -> io::Result<()> {
        let want = ENTRIES_HEADER + size as usize;
        if buf.len() < room + want {
            buf.resize(room + want, 0);
        } else {
            buf.truncate(room + want);
        }
        let req = &mut buf[room..];
        req[..TABLE_NAME_LEN].copy_from_slice(&table_name(table)?);
        req[offset_of!(IptGetEntries, size)..][..4].copy_from_slice(&size.to_ne_bytes());
        let n = self.getsockopt(SO_GET_ENTRIES, req)?;
        if n != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("GET_ENTRIES returned {n} bytes, expected {want}"),
            ));
        }
        Ok(())
    }

    /// `SO_SET_REPLACE`: swap in the blob that follows [`REPLACE_HEADER`] bytes of room in
    /// `buf` (the header is written there) atomically. `old_counters` must hold one slot
    /// per entry of the table being replaced (`num_counters`); the kernel fills it with
    /// the old table's final counters. `EAGAIN` when the table no longer has that many
    /// entries.
    pub fn replace(
        &self,
        table: &str,
        valid_hooks: u32,
        shape: &Encoded,
        buf: &mut [u8],
        old_counters: &mut [XtCounters],
    ) -> io::Result<()> {
        if buf.len() != REPLACE_HEADER + shape.size as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the replace buffer does not hold the header and the blob",
            ));
        }
        let num_counters = u32::try_from(old_counters.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many counters"))?;
        buf[..REPLACE_HEADER].fill(0);
        buf[..TABLE_NAME_LEN].copy_from_slice(&table_name(table)?);
        let put = |buf: &mut [u8], off: usize, v: u32| {
            buf[off..off + 4].copy_from_slice(&v.to_ne_bytes())
        };
        put(buf, offset_of!(IptReplace, valid_hooks), valid_hooks);
        put(buf, offset_of!(IptReplace, num_entries), shape.num_entries);
        put(buf, offset_of!(IptReplace, size), shape.size);
        for h in 0..5 {
            put(
                buf,
                offset_of!(IptReplace, hook_entry) + 4 * h,
                shape.hook_entry[h],
            );
            put(
                buf,
                offset_of!(IptReplace, underflow) + 4 * h,
                shape.underflow[h],
            );
        }
        put(buf, offset_of!(IptReplace, num_counters), num_counters);
        let ptr = old_counters.as_mut_ptr() as usize as u64;
        buf[offset_of!(IptReplace, counters)..][..8].copy_from_slice(&ptr.to_ne_bytes());
        // SAFETY: the only pointer in `buf` is `counters`, taken from `old_counters`, which
        // is exclusively borrowed for this call and holds exactly `num_counters`
        // `struct xt_counters` — the kernel writes that many through it, nothing more.
        unsafe { self.setsockopt(SO_SET_REPLACE, buf) }
    }

    /// `SO_SET_ADD_COUNTERS`: add `counters` (one per entry of the current table) to the
    /// table's counters; `buf` is scratch space, reused.
    pub fn add_counters(
        &self,
        table: &str,
        counters: &[XtCounters],
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        const HDR: usize = size_of::<XtCountersInfo>();
        let n = u32::try_from(counters.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many counters"))?;
        buf.clear();
        buf.reserve(HDR + std::mem::size_of_val(counters));
        buf.extend_from_slice(&table_name(table)?);
        buf.extend_from_slice(&n.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        for c in counters {
            buf.extend_from_slice(&c.pcnt.to_ne_bytes());
            buf.extend_from_slice(&c.bcnt.to_ne_bytes());
        }
        // SAFETY: `xt_counters_info` embeds no pointer; the kernel only reads `buf`.
        unsafe { self.setsockopt(SO_SET_ADD_COUNTERS, buf) }
    }
}

/// The xtables lock file, opened as iptables opens it: `open(path, O_RDONLY|O_CREAT,
/// 0600)`. The lock is held while this value lives (closing the descriptor releases it).
pub struct LockFile {
    fd: OwnedFd,
}

impl LockFile {
    /// Open (creating it if needed) the lock file at `path`.
    pub fn open(path: &Path) -> io::Result<LockFile> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "NUL in the lock file path")
        })?;
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call; open(2) copies
        // it. On success the returned descriptor is owned by nothing else.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by open(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(LockFile { fd })
    }

    fn flock(&self, op: libc::c_int) -> io::Result<()> {
        loop {
            // SAFETY: flock(2) on a descriptor we own; no pointers.
            let rc = unsafe { libc::flock(self.fd.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// `flock(LOCK_EX|LOCK_NB)`: `Ok(false)` when another holder has it.
    pub fn try_lock(&self) -> io::Result<bool> {
        match self.flock(libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}
