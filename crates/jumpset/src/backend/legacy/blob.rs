//! The x_tables table blob, as `IPT_SO_GET_ENTRIES` returns it and `IPT_SO_SET_REPLACE`
//! takes it: a pure codec, bytes in and bytes out, no I/O (the layouts:
//! `docs/architecture.md#x_tables-structures` and `#x_tables-table-layout`).
//!
//! [`Table::decode`] splits a blob into chains — the built-in chains found through the
//! table's `hook_entry`/`underflow` offsets, the user chains through their `ERROR` heads —
//! and keeps every entry's bytes. Jumps (standard targets with a verdict ≥ 0) are absolute
//! byte offsets in the blob; the codec turns each into a reference to the entry it lands on,
//! so that [`Table::encode`] can lay the entries out again after rules were inserted or
//! deleted and write every offset, `hook_entry` and `underflow` anew. A table that was
//! not edited encodes to exactly the bytes it was decoded from.
//!
//! The layout libiptc (iptables-legacy) writes and expects: built-in chains, each its
//! rules then its policy entry; user chains sorted by name, each an `ERROR` head naming it,
//! its rules and a `RETURN` footer; a final `ERROR` entry named `ERROR`. A rule without a
//! target (`iptables -A X -s 10.0.0.1`) is a standard target whose verdict is the offset of
//! the entry that follows it ("fall through"); it stays that after a rebuild.
//!
//! Malformed input is an error, never a panic nor a read out of bounds: every length and
//! offset is checked before it is used.

use crate::snapshot::{Comment, CommentEncoding, Counters, Family, Match, Rule, Verdict};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Size of `struct ipt_getinfo` / `ip6t_getinfo`.
pub const INFO_SIZE: usize = 84;
/// `XT_TABLE_MAXNAMELEN`.
pub const TABLE_NAME_LEN: usize = 32;
/// `XT_EXTENSION_MAXNAMELEN`: match and target names.
const EXTENSION_NAME_LEN: usize = 29;
/// `XT_FUNCTION_MAXNAMELEN`: the chain name in an `ERROR` target.
const FUNCTION_NAME_LEN: usize = 30;
/// `struct xt_entry_match` / `xt_entry_target` header.
const EXT_HEADER: usize = 32;
/// `struct xt_standard_target`: header + int verdict + 4 bytes of padding.
const STANDARD_TARGET_SIZE: usize = 40;
/// `struct xt_error_target`: header + char errorname[30] + 2 bytes of padding.
const ERROR_TARGET_SIZE: usize = 64;
/// `struct xt_comment_info`: char comment[XT_MAX_COMMENT_LEN].
const COMMENT_INFO_SIZE: usize = 256;
/// `struct xt_addrtype_info_v1`: u16 source, u16 dest, u32 flags.
const ADDRTYPE_V1_INFO_SIZE: usize = 8;
/// `NF_INET_NUMHOOKS`.
pub const NUM_HOOKS: usize = 5;
/// The built-in chain of each hook (NF_INET_PRE_ROUTING … NF_INET_POST_ROUTING).
pub const HOOK_CHAINS: [&str; NUM_HOOKS] =
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
/// Standard verdicts (−NF_x − 1).
const VERDICT_DROP: i32 = -1;
const VERDICT_ACCEPT: i32 = -2;
const VERDICT_QUEUE: i32 = -4;
const VERDICT_RETURN: i32 = -5;
/// The name of the `ERROR` target (chain heads and the end of the table).
const ERROR_TARGET: &str = "ERROR";

/// A blob the codec cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The bytes end before the structure does.
    #[error("truncated {what} at byte {offset}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// The bytes are there but not what the kernel or libiptc writes.
    #[error("malformed {what} at byte {offset}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        detail: String,
    },
    /// A change the codec refuses to make (it would break a rule it does not own).
    #[error("{0}")]
    Refused(String),
}

fn malformed(what: &'static str, offset: usize, detail: impl Into<String>) -> BlobError {
    BlobError::Malformed {
        what,
        offset,
        detail: detail.into(),
    }
}

/// `bytes[off..off + N]`, or an error naming `what`.
fn take<const N: usize>(
    bytes: &[u8],
    off: usize,
    what: &'static str,
) -> Result<[u8; N], BlobError> {
    off.checked_add(N)
        .and_then(|end| bytes.get(off..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(BlobError::Truncated {
            what,
            offset: off,
            need: N,
            have: bytes.len().saturating_sub(off),
        })
}

fn u16_at(bytes: &[u8], off: usize, what: &'static str) -> Result<u16, BlobError> {
    take::<2>(bytes, off, what).map(u16::from_ne_bytes)
}

fn u32_at(bytes: &[u8], off: usize, what: &'static str) -> Result<u32, BlobError> {
    take::<4>(bytes, off, what).map(u32::from_ne_bytes)
}

fn u64_at(bytes: &[u8], off: usize, what: &'static str) -> Result<u64, BlobError> {
    take::<8>(bytes, off, what).map(u64::from_ne_bytes)
}

/// A NUL-terminated string in a fixed-size field (the whole field when it has no NUL).
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn put_u16(bytes: &mut [u8], off: usize, v: u16) {
    bytes[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

fn put_u32(bytes: &mut [u8], off: usize, v: u32) {
    bytes[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Where the fields of `struct ipt_entry` / `ip6t_entry` are
/// (`docs/architecture.md#x_tables-structures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The family.
    pub family: Family,
    /// `sizeof(struct ipt_entry)`: 112, or 168 for `ip6t_entry`.
    pub entry_size: usize,
    /// Size of `struct ipt_ip` / `ip6t_ip6` (84 / 136; v6 has 3 bytes of padding after it).
    ip_size: usize,
    /// `ip.proto` (u16).
    proto: usize,
    /// `ip.flags` (u8).
    flags: usize,
    /// `ip.invflags` (u8).
    invflags: usize,
    /// `target_offset` (u16).
    target_offset: usize,
    /// `next_offset` (u16).
    next_offset: usize,
    /// `counters` (2 × u64: packets, bytes).
    counters: usize,
    /// `IPT_F_GOTO` / `IP6T_F_GOTO`.
    goto_flag: u8,
}

/// The IPv4 layout (`struct ipt_entry`).
pub const IPV4: Layout = Layout {
    family: Family::Ip,
    entry_size: 112,
    ip_size: 84,
    proto: 80,
    flags: 82,
    invflags: 83,
    target_offset: 88,
    next_offset: 90,
    counters: 96,
    goto_flag: 0x02,
};

/// The IPv6 layout (`struct ip6t_entry`).
pub const IPV6: Layout = Layout {
    family: Family::Ip6,
    entry_size: 168,
    ip_size: 136,
    proto: 128,
    flags: 131,
    invflags: 132,
    target_offset: 140,
    next_offset: 142,
    counters: 152,
    goto_flag: 0x04,
};

impl Layout {
    /// The layout of `family`.
    pub fn of(family: Family) -> &'static Layout {
        match family {
            Family::Ip => &IPV4,
            Family::Ip6 => &IPV6,
        }
    }
}

/// `struct ipt_getinfo`: what `IPT_SO_GET_INFO` says about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Table name.
    pub name: String,
    /// Bitmask of hooks (1 << NF_INET_*).
    pub valid_hooks: u32,
    /// Offset of each hook's first entry (0xFFFFFFFF for hooks the table does not have).
    pub hook_entry: [u32; NUM_HOOKS],
    /// Offset of each hook's policy entry.
    pub underflow: [u32; NUM_HOOKS],
    /// Entries in the table.
    pub num_entries: u32,
    /// Bytes of the entries blob.
    pub size: u32,
}

impl Info {
    /// Parse the 84 bytes of a GET_INFO reply.
    pub fn parse(b: &[u8]) -> Result<Info, BlobError> {
        if b.len() != INFO_SIZE {
            return Err(BlobError::Truncated {
                what: "ipt_getinfo",
                offset: 0,
                need: INFO_SIZE,
                have: b.len(),
            });
        }
        let mut hook_entry = [0; NUM_HOOKS];
        let mut underflow = [0; NUM_HOOKS];
        for h in 0..NUM_HOOKS {
            hook_entry[h] = u32_at(b, 36 + 4 * h, "ipt_getinfo")?;
            underflow[h] = u32_at(b, 56 + 4 * h, "ipt_getinfo")?;
        }
        Ok(Info {
            name: String::from_utf8_lossy(cstr(&b[..TABLE_NAME_LEN])).into_owned(),
            valid_hooks: u32_at(b, 32, "ipt_getinfo")?,
            hook_entry,
            underflow,
            num_entries: u32_at(b, 76, "ipt_getinfo")?,
            size: u32_at(b, 80, "ipt_getinfo")?,
        })
    }

    /// The 84 bytes of `struct ipt_getinfo` (for stored captures).
    pub fn to_bytes(&self) -> [u8; INFO_SIZE] {
        let mut b = [0u8; INFO_SIZE];
        let n = self.name.as_bytes();
        let n = &n[..n.len().min(TABLE_NAME_LEN - 1)];
        b[..n.len()].copy_from_slice(n);
        put_u32(&mut b, 32, self.valid_hooks);
        for h in 0..NUM_HOOKS {
            put_u32(&mut b, 36 + 4 * h, self.hook_entry[h]);
            put_u32(&mut b, 56 + 4 * h, self.underflow[h]);
        }
        put_u32(&mut b, 76, self.num_entries);
        put_u32(&mut b, 80, self.size);
        b
    }
}

/// Where a rule sends the packet, with jumps resolved to entries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Standard target, verdict ≥ 0: continue at the entry with this id.
    Jump(usize),
    /// Standard target whose verdict is the offset of the entry right after it: no
    /// verdict (libiptc's "fall through"); re-encoded as the next entry's offset.
    Fallthrough,
    /// Standard target, verdict < 0 (ACCEPT, DROP, RETURN, QUEUE, ...).
    Verdict(i32),
    /// `ERROR` target: a chain head or the end of the table; the chain name.
    Error(Vec<u8>),
    /// Any other target (its name is read from the bytes when needed).
    Other,
}

/// A match of an entry, as it stands in the entry's bytes.
struct MatchRef<'a> {
    name: &'a [u8],
    revision: u8,
    /// The match's data (after its 32-byte header).
    data: &'a [u8],
}

/// One entry: its bytes (kept verbatim) and what the codec needs to know about them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Index in the table as decoded; fresh ids (≥ the decoded count) for new entries.
    id: usize,
    bytes: Vec<u8>,
    target_offset: usize,
    target: Target,
}

impl Entry {
    /// Parse the entry at the start of `bytes` (which may hold more after it). Returns the
    /// entry (its `next_offset` bytes) with standard verdicts not yet resolved: a verdict
    /// ≥ 0 is returned separately for the caller to resolve.
    fn parse(l: &Layout, bytes: &[u8], at: usize) -> Result<(Entry, Option<u32>), BlobError> {
        let have = bytes.len();
        if have < l.entry_size {
            return Err(BlobError::Truncated {
                what: "entry",
                offset: at,
                need: l.entry_size,
                have,
            });
        }
        let target_offset = usize::from(u16_at(bytes, l.target_offset, "entry")?);
        let next_offset = usize::from(u16_at(bytes, l.next_offset, "entry")?);
        if next_offset % 8 != 0 {
            return Err(malformed(
                "entry",
                at,
                format!("next_offset {next_offset} is not a multiple of 8"),
            ));
        }
        if next_offset > have {
            return Err(BlobError::Truncated {
                what: "entry",
                offset: at,
                need: next_offset,
                have,
            });
        }
        if target_offset < l.entry_size || target_offset + EXT_HEADER > next_offset {
            return Err(malformed(
                "entry",
                at,
                format!("target_offset {target_offset} does not fit between the entry header and next_offset {next_offset}"),
            ));
        }
        let e = &bytes[..next_offset];
        // Validate the matches here; `Entry::matches` walks them again, unchecked.
        let mut m = l.entry_size;
        while m < target_offset {
            if m + EXT_HEADER > target_offset {
                return Err(malformed(
                    "match",
                    at + m,
                    "match header overlaps the target",
                ));
            }
            let size = usize::from(u16_at(e, m, "match")?);
            if size < EXT_HEADER || m + size > target_offset {
                return Err(malformed(
                    "match",
                    at + m,
                    format!("match_size {size} does not fit before target_offset {target_offset}"),
                ));
            }
            m += size;
        }
        let t = target_offset;
        let tsize = usize::from(u16_at(e, t, "target")?);
        if tsize < EXT_HEADER || t + tsize > next_offset {
            return Err(malformed(
                "target",
                at + t,
                format!("target_size {tsize} does not fit before next_offset {next_offset}"),
            ));
        }
        let name = cstr(&e[t + 2..t + 2 + EXTENSION_NAME_LEN]);
        let mut jump = None;
        let target = if name.is_empty() {
            if tsize < EXT_HEADER + 4 {
                return Err(malformed(
                    "standard target",
                    at + t,
                    format!("target_size {tsize} has no verdict"),
                ));
            }
            let v = u32_at(e, t + EXT_HEADER, "standard target")? as i32;
            if v >= 0 {
                jump = Some(v as u32);
                Target::Fallthrough // resolved by the caller
            } else {
                Target::Verdict(v)
            }
        } else if name == ERROR_TARGET.as_bytes() {
            if tsize < EXT_HEADER + FUNCTION_NAME_LEN {
                return Err(malformed(
                    "ERROR target",
                    at + t,
                    format!("target_size {tsize} has no chain name"),
                ));
            }
            Target::Error(cstr(&e[t + EXT_HEADER..t + EXT_HEADER + FUNCTION_NAME_LEN]).to_vec())
        } else {
            Target::Other
        };
        Ok((
            Entry {
                id: 0,
                bytes: e.to_vec(),
                target_offset,
                target,
            },
            jump,
        ))
    }

    /// A new entry built by the codec (its bytes are well-formed by construction).
    fn built(l: &Layout, id: usize, bytes: Vec<u8>, target: Target) -> Entry {
        let (mut e, _) = Entry::parse(l, &bytes, 0)
            .unwrap_or_else(|err| unreachable!("the codec built a bad entry: {err}"));
        e.id = id;
        e.target = target;
        e
    }

    fn counters(&self, l: &Layout) -> Counters {
        Counters {
            packets: u64_at(&self.bytes, l.counters, "counters").unwrap_or(0),
            bytes: u64_at(&self.bytes, l.counters + 8, "counters").unwrap_or(0),
        }
    }

    /// The matches, in order (the bytes were validated by `parse`).
    fn matches(&self, l: &Layout) -> Vec<MatchRef<'_>> {
        let mut out = Vec::new();
        let mut m = l.entry_size;
        while m + EXT_HEADER <= self.target_offset {
            let size = usize::from(u16::from_ne_bytes([self.bytes[m], self.bytes[m + 1]]));
            if size < EXT_HEADER || m + size > self.target_offset {
                break;
            }
            out.push(MatchRef {
                name: cstr(&self.bytes[m + 2..m + 2 + EXTENSION_NAME_LEN]),
                revision: self.bytes[m + EXT_HEADER - 1],
                data: &self.bytes[m + EXT_HEADER..m + size],
            });
            m += size;
        }
        out
    }

    /// The target's name.
    fn target_name(&self) -> String {
        let t = self.target_offset;
        String::from_utf8_lossy(cstr(&self.bytes[t + 2..t + 2 + EXTENSION_NAME_LEN])).into_owned()
    }

    fn is_goto(&self, l: &Layout) -> bool {
        self.bytes[l.flags] & l.goto_flag != 0
    }
}

/// The bytes of an entry with no conditions, no matches and `target` (of `tsize` bytes,
/// written by `fill` after the 32-byte header whose name is `tname`).
fn new_entry(
    l: &Layout,
    matches: &[(&str, u8, &[u8], usize)],
    tname: &str,
    tsize: usize,
    tdata: &[u8],
) -> Vec<u8> {
    let msize: usize = matches.iter().map(|m| EXT_HEADER + m.3).sum();
    let target_offset = l.entry_size + msize;
    let next_offset = target_offset + tsize;
    let mut b = vec![0u8; next_offset];
    put_u16(&mut b, l.target_offset, target_offset as u16);
    put_u16(&mut b, l.next_offset, next_offset as u16);
    let mut m = l.entry_size;
    for (name, rev, data, len) in matches {
        put_u16(&mut b, m, (EXT_HEADER + len) as u16);
        b[m + 2..m + 2 + name.len()].copy_from_slice(name.as_bytes());
        b[m + EXT_HEADER - 1] = *rev;
        b[m + EXT_HEADER..m + EXT_HEADER + data.len()].copy_from_slice(data);
        m += EXT_HEADER + len;
    }
    put_u16(&mut b, target_offset, tsize as u16);
    b[target_offset + 2..target_offset + 2 + tname.len()].copy_from_slice(tname.as_bytes());
    b[target_offset + EXT_HEADER..target_offset + EXT_HEADER + tdata.len()].copy_from_slice(tdata);
    b
}

/// One chain of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    name: String,
    /// The hook of a built-in chain.
    hook: Option<usize>,
    /// The `ERROR` head of a user chain.
    head: Option<Entry>,
    rules: Vec<Entry>,
    /// The policy entry of a built-in chain, the `RETURN` of a user chain.
    footer: Entry,
}

impl Chain {
    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.head
            .iter()
            .chain(self.rules.iter())
            .chain(std::iter::once(&self.footer))
    }

    /// The entry a jump to this chain lands on: its first rule, or its footer.
    fn start(&self) -> usize {
        self.rules.first().unwrap_or(&self.footer).id
    }
}

/// What goes into a chain being rebuilt, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot<'a> {
    /// The rule at this index (0-based) of the chain as decoded, bytes unchanged.
    Keep(usize),
    /// A new rule `-m comment --comment COMMENT -j TARGET`, exactly as iptables-legacy
    /// writes it.
    Jump {
        /// The comment (≤ 255 bytes, no NUL).
        comment: &'a [u8],
        /// The user chain to jump to (it must exist: see [`Table::ensure_chain`]).
        target: &'a str,
    },
}

/// A table blob encoded for `IPT_SO_SET_REPLACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The entries.
    pub blob: Vec<u8>,
    /// How many there are.
    pub num_entries: u32,
    /// Offset of each valid hook's first entry (0 for the others, as libiptc sends).
    pub hook_entry: [u32; NUM_HOOKS],
    /// Offset of each valid hook's policy entry (0 for the others).
    pub underflow: [u32; NUM_HOOKS],
    /// For each entry: its index in the table as decoded, or `None` for a new entry
    /// (how the old table's counters are carried over).
    pub origin: Vec<Option<usize>>,
}

impl Encoded {
    /// What `GET_INFO` reports once this blob replaced the table `was`: the same name and
    /// hooks, the new entry count, size, hook entries and underflows.
    pub fn info(&self, was: &Info) -> Info {
        let mut i = was.clone();
        i.num_entries = self.num_entries;
        i.size = self.blob.len() as u32;
        for h in (0..NUM_HOOKS).filter(|h| was.valid_hooks & (1 << h) != 0) {
            i.hook_entry[h] = self.hook_entry[h];
            i.underflow[h] = self.underflow[h];
        }
        i
    }
}

/// One chain of a table as `jumpset explain` shows it ([`Table::chain_summaries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// The chain's name (built-in chains by their iptables names).
    pub name: String,
    /// The hook (NF_INET_*) of a built-in chain.
    pub hook: Option<u32>,
    /// Its rules (without the policy entry, head or footer).
    pub rules: usize,
    /// A built-in chain's policy (`ACCEPT` or `DROP`).
    pub policy: Option<Verdict>,
}

/// A decoded x_tables table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    layout: &'static Layout,
    /// Table name (`nat`, ...).
    pub name: String,
    /// Bitmask of hooks.
    pub valid_hooks: u32,
    chains: Vec<Chain>,
    /// The final `ERROR` entry.
    end: Entry,
    /// Entries in the table as decoded.
    decoded: usize,
    /// The next fresh entry id.
    next_id: usize,
}

impl Table {
    /// Decode the entries blob of a table described by `info` (GET_INFO) for `family`.
    pub fn decode(family: Family, info: &Info, blob: &[u8]) -> Result<Table, BlobError> {
        let l = Layout::of(family);
        if blob.len() != info.size as usize {
            return Err(malformed(
                "table",
                0,
                format!(
                    "the blob has {} bytes, GET_INFO said {}",
                    blob.len(),
                    info.size
                ),
            ));
        }
        if info.valid_hooks >> NUM_HOOKS != 0 || info.valid_hooks == 0 {
            return Err(malformed(
                "table",
                0,
                format!(
                    "valid_hooks {:#x} names no or unknown hooks",
                    info.valid_hooks
                ),
            ));
        }
        // Every entry, in order, with its offset and unresolved verdict.
        let mut entries: Vec<Entry> = Vec::new();
        let mut offsets: Vec<u32> = Vec::new();
        let mut verdicts: Vec<Option<u32>> = Vec::new();
        let mut off = 0usize;
        while off < blob.len() {
            if entries.len() >= info.num_entries as usize {
                return Err(malformed(
                    "table",
                    off,
                    format!(
                        "more entries than the {} GET_INFO announced",
                        info.num_entries
                    ),
                ));
            }
            let (mut e, v) = Entry::parse(l, &blob[off..], off)?;
            e.id = entries.len();
            offsets.push(off as u32);
            off += e.bytes.len();
            entries.push(e);
            verdicts.push(v);
        }
        if entries.len() != info.num_entries as usize {
            return Err(malformed(
                "table",
                0,
                format!(
                    "{} entries, GET_INFO announced {}",
                    entries.len(),
                    info.num_entries
                ),
            ));
        }
        let n = entries.len();
        let index_of = |what: &'static str, o: u32| -> Result<usize, BlobError> {
            offsets
                .binary_search(&o)
                .map_err(|_| malformed(what, o as usize, "the offset is not the start of an entry"))
        };
        // Resolve jumps; a verdict that lands on the next entry is a fall-through.
        for i in 0..n {
            if let Some(v) = verdicts[i] {
                let t = index_of("jump", v)?;
                entries[i].target = if t == i + 1 {
                    Target::Fallthrough
                } else {
                    Target::Jump(t)
                };
            }
        }
        match entries.last().map(|e| &e.target) {
            Some(Target::Error(_)) => {}
            _ => {
                return Err(malformed(
                    "table",
                    0,
                    "the last entry is not the ERROR entry that ends a table",
                ))
            }
        }

        // Chain starts: each valid hook's first entry, each ERROR head but the last.
        #[derive(Clone, Copy)]
        enum Start {
            Hook(usize, usize),
            User,
        }
        let mut starts: Vec<(usize, Start)> = Vec::new();
        for h in 0..NUM_HOOKS {
            if info.valid_hooks & (1 << h) == 0 {
                continue;
            }
            let first = index_of("hook_entry", info.hook_entry[h])?;
            let policy = index_of("underflow", info.underflow[h])?;
            if first > policy || policy + 1 >= n {
                return Err(malformed(
                    "table",
                    info.hook_entry[h] as usize,
                    format!("hook {h}: its policy entry does not follow its first entry"),
                ));
            }
            if !matches!(entries[policy].target, Target::Verdict(_)) {
                return Err(malformed(
                    "table",
                    info.underflow[h] as usize,
                    format!("hook {h}: the policy entry is not a standard verdict"),
                ));
            }
            starts.push((first, Start::Hook(h, policy)));
        }
        for (i, e) in entries.iter().enumerate().take(n - 1) {
            if matches!(e.target, Target::Error(_)) {
                starts.push((i, Start::User));
            }
        }
        starts.sort_by_key(|s| s.0);
        if starts.first().map(|s| s.0) != Some(0) {
            return Err(malformed("table", 0, "the first entry starts no chain"));
        }
        let mut chains = Vec::with_capacity(starts.len());
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut it = entries.into_iter();
        for (k, &(s, kind)) in starts.iter().enumerate() {
            let next = starts.get(k + 1).map_or(n - 1, |x| x.0);
            if next == s {
                return Err(malformed(
                    "table",
                    offsets[s] as usize,
                    "two chains start at the same entry",
                ));
            }
            let mut body: Vec<Entry> = it.by_ref().take(next - s).collect();
            let chain = match kind {
                Start::Hook(h, policy) => {
                    if policy != next - 1 {
                        return Err(malformed(
                            "table",
                            offsets[s] as usize,
                            format!(
                                "chain {}: entries between its policy and the next chain",
                                HOOK_CHAINS[h]
                            ),
                        ));
                    }
                    let footer = body
                        .pop()
                        .ok_or_else(|| malformed("table", offsets[s] as usize, "empty chain"))?;
                    Chain {
                        name: HOOK_CHAINS[h].to_string(),
                        hook: Some(h),
                        head: None,
                        rules: body,
                        footer,
                    }
                }
                Start::User => {
                    if body.len() < 2 {
                        return Err(malformed(
                            "table",
                            offsets[s] as usize,
                            "a user chain without the RETURN entry that ends it",
                        ));
                    }
                    let footer = body
                        .pop()
                        .ok_or_else(|| malformed("table", offsets[s] as usize, "empty chain"))?;
                    let head = body.remove(0);
                    let Target::Error(name) = &head.target else {
                        return Err(malformed(
                            "table",
                            offsets[s] as usize,
                            "chain head is not an ERROR entry",
                        ));
                    };
                    Chain {
                        name: String::from_utf8_lossy(name).into_owned(),
                        hook: None,
                        head: Some(head),
                        rules: body,
                        footer,
                    }
                }
            };
            if names.insert(chain.name.clone(), ()).is_some() {
                return Err(malformed(
                    "table",
                    offsets[s] as usize,
                    format!("two chains named {}", chain.name),
                ));
            }
            chains.push(chain);
        }
        let end = it
            .next()
            .ok_or_else(|| malformed("table", 0, "no ERROR entry at the end"))?;
        Ok(Table {
            layout: l,
            name: info.name.clone(),
            valid_hooks: info.valid_hooks,
            chains,
            end,
            decoded: n,
            next_id: n,
        })
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.layout.family
    }

    /// Entries in the table now.
    pub fn num_entries(&self) -> usize {
        self.chains
            .iter()
            .map(|c| c.entries().count())
            .sum::<usize>()
            + 1
    }

    /// The chains' names, in table order (built-in chains by their iptables names).
    pub fn chain_names(&self) -> Vec<&str> {
        self.chains.iter().map(|c| c.name.as_str()).collect()
    }

    /// Rules in all chains and the names of the user chains: what `iptables-save` shows
    /// of the table (host detection counts these).
    pub fn census(&self) -> (usize, Vec<&str>) {
        let rules = self.chains.iter().map(|c| c.rules.len()).sum();
        let users = self
            .chains
            .iter()
            .filter(|c| c.hook.is_none())
            .map(|c| c.name.as_str())
            .collect();
        (rules, users)
    }

    /// Every chain of the table in table order: built-in chains with their hook and
    /// policy, user chains, each with its rule count (`jumpset explain`).
    pub fn chain_summaries(&self) -> Vec<ChainSummary> {
        self.chains
            .iter()
            .map(|c| ChainSummary {
                name: c.name.clone(),
                hook: c.hook.map(|h| h as u32),
                rules: c.rules.len(),
                policy: match (c.hook, &c.footer.target) {
                    (None, _) => None,
                    (Some(_), Target::Verdict(VERDICT_ACCEPT)) => Some(Verdict::Accept),
                    (Some(_), Target::Verdict(VERDICT_DROP)) => Some(Verdict::Drop),
                    (Some(_), Target::Verdict(v)) => Some(Verdict::Other(format!("<verdict {v}>"))),
                    (Some(_), _) => Some(Verdict::Other("<not a verdict>".into())),
                },
            })
            .collect()
    }

    /// Whether the table has user chain `name`.
    pub fn has_user_chain(&self, name: &str) -> bool {
        self.chains
            .iter()
            .any(|c| c.hook.is_none() && c.name == name)
    }

    fn builtin(&self, chain: &str) -> Option<usize> {
        self.chains
            .iter()
            .position(|c| c.hook.is_some() && c.name == chain)
    }

    /// Whether `chain` is one of this table's built-in chains.
    pub fn has_builtin(&self, chain: &str) -> bool {
        self.builtin(chain).is_some()
    }

    /// The rules of built-in chain `chain` as `iptables -S` sees them, with handle =
    /// 1-based position; `None` when the table has no such built-in chain.
    pub fn rules(&self, chain: &str) -> Option<Vec<Rule>> {
        let c = &self.chains[self.builtin(chain)?];
        let starts: HashMap<usize, &str> = self
            .chains
            .iter()
            .filter(|c| c.hook.is_none())
            .map(|c| (c.start(), c.name.as_str()))
            .collect();
        Some(
            c.rules
                .iter()
                .enumerate()
                .map(|(i, e)| self.rule(e, i as u64 + 1, &starts))
                .collect(),
        )
    }

    /// The bytes of each rule of built-in chain `chain`, as decoded (or as built).
    pub fn rule_bytes(&self, chain: &str) -> Option<Vec<&[u8]>> {
        let c = &self.chains[self.builtin(chain)?];
        Some(c.rules.iter().map(|e| e.bytes.as_slice()).collect())
    }

    fn rule(&self, e: &Entry, handle: u64, starts: &HashMap<usize, &str>) -> Rule {
        let l = self.layout;
        let verdict = match &e.target {
            Target::Jump(id) => match starts.get(id) {
                Some(name) if e.is_goto(l) => Verdict::Goto(name.to_string()),
                Some(name) => Verdict::Jump(name.to_string()),
                None => Verdict::Other("-j <a jump into the middle of a chain>".into()),
            },
            Target::Fallthrough => Verdict::None,
            Target::Verdict(VERDICT_ACCEPT) => Verdict::Accept,
            Target::Verdict(VERDICT_DROP) => Verdict::Drop,
            Target::Verdict(VERDICT_RETURN) => Verdict::Return,
            Target::Verdict(VERDICT_QUEUE) => Verdict::Other("-j QUEUE".into()),
            Target::Verdict(v) => Verdict::Other(format!("-j <verdict {v}>")),
            Target::Error(_) => Verdict::Other("-j ERROR".into()),
            Target::Other => Verdict::Other(format!("-j {}", e.target_name())),
        };
        let is_chain_jump = matches!(verdict, Verdict::Jump(_) | Verdict::Goto(_));
        let mut matches = Vec::new();
        if let Some(text) = ip_conditions(l, &e.bytes, is_chain_jump) {
            matches.push(Match::Opaque(text));
        }
        let mut comment = None;
        for m in e.matches(l) {
            let data = m.data;
            match (m.name, m.revision) {
                (b"comment", 0) if data.len() >= COMMENT_INFO_SIZE => {
                    let bytes = cstr(&data[..COMMENT_INFO_SIZE]).to_vec();
                    if comment.is_none() {
                        comment = Some(Comment {
                            bytes,
                            encoding: CommentEncoding::Xt,
                        });
                    } else {
                        let text = String::from_utf8_lossy(&bytes);
                        matches.push(Match::Opaque(format!(
                            "-m comment --comment {}",
                            crate::snapshot::quote(&text)
                        )));
                    }
                }
                (b"addrtype", 1) if data.len() >= ADDRTYPE_V1_INFO_SIZE => {
                    matches.push(Match::AddrType {
                        source: u16::from_ne_bytes([data[0], data[1]]),
                        dest: u16::from_ne_bytes([data[2], data[3]]),
                        flags: u32::from_ne_bytes([data[4], data[5], data[6], data[7]]),
                    })
                }
                (name, _) => matches.push(Match::Opaque(format!(
                    "-m {}",
                    String::from_utf8_lossy(name)
                ))),
            }
        }
        Rule {
            handle,
            comment,
            matches,
            counters: Some(e.counters(l)),
            verdict,
        }
    }

    /// Create user chain `name` (an `ERROR` head and a `RETURN` footer, as `iptables -N`
    /// does) unless it exists, placed among the user chains in name order like libiptc.
    /// Returns whether it was created.
    pub fn ensure_chain(&mut self, name: &str) -> Result<bool, BlobError> {
        if self.has_user_chain(name) {
            return Ok(false);
        }
        if name.is_empty() || name.len() >= FUNCTION_NAME_LEN - 1 || name.as_bytes().contains(&0) {
            return Err(BlobError::Refused(format!(
                "{name:?} cannot be an x_tables chain name"
            )));
        }
        if HOOK_CHAINS.contains(&name) || self.chains.iter().any(|c| c.name == name) {
            return Err(BlobError::Refused(format!(
                "{name} is a built-in chain, not a user chain"
            )));
        }
        let l = self.layout;
        let mut errorname = [0u8; FUNCTION_NAME_LEN];
        errorname[..name.len()].copy_from_slice(name.as_bytes());
        let head_id = self.take_id();
        let head = Entry::built(
            l,
            head_id,
            new_entry(l, &[], ERROR_TARGET, ERROR_TARGET_SIZE, &errorname),
            Target::Error(name.as_bytes().to_vec()),
        );
        let foot_id = self.take_id();
        let footer = Entry::built(
            l,
            foot_id,
            new_entry(
                l,
                &[],
                "",
                STANDARD_TARGET_SIZE,
                &VERDICT_RETURN.to_ne_bytes(),
            ),
            Target::Verdict(VERDICT_RETURN),
        );
        // libiptc inserts a new chain before the first user chain whose name sorts after
        // it (strcmp), else at the end.
        let at = self
            .chains
            .iter()
            .position(|c| c.hook.is_none() && c.name.as_bytes() > name.as_bytes())
            .unwrap_or(self.chains.len());
        self.chains.insert(
            at,
            Chain {
                name: name.to_string(),
                hook: None,
                head: Some(head),
                rules: Vec::new(),
                footer,
            },
        );
        Ok(true)
    }

    fn take_id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Replace the rules of built-in chain `chain` by `slots`: kept rules keep their bytes,
    /// new jumps are written as iptables-legacy writes them. Every other chain is untouched.
    pub fn set_rules(&mut self, chain: &str, slots: &[Slot<'_>]) -> Result<(), BlobError> {
        let l = self.layout;
        let ci = self.builtin(chain).ok_or_else(|| {
            BlobError::Refused(format!("table {} has no built-in chain {chain}", self.name))
        })?;
        // Nothing may jump into the chain: its rules are about to move.
        let inside: Vec<usize> = self.chains[ci]
            .rules
            .iter()
            .chain([&self.chains[ci].footer])
            .map(|e| e.id)
            .collect();
        for c in &self.chains {
            for e in c.entries() {
                if let Target::Jump(t) = e.target {
                    if inside.contains(&t) {
                        return Err(BlobError::Refused(format!(
                            "a rule of chain {} jumps into the middle of {chain}; jumpset will not move rules under it",
                            c.name
                        )));
                    }
                }
            }
        }
        // Check every slot before changing anything, so a refused edit changes nothing.
        let count = self.chains[ci].rules.len();
        let mut kept = vec![false; count];
        let mut starts = Vec::with_capacity(slots.len());
        for s in slots {
            match *s {
                Slot::Keep(i) => {
                    if i >= count || std::mem::replace(&mut kept[i], true) {
                        return Err(BlobError::Refused(format!(
                            "rule {} of {chain} is not there to keep, or is kept twice",
                            i + 1
                        )));
                    }
                    starts.push(None);
                }
                Slot::Jump { comment, target } => {
                    if comment.len() >= COMMENT_INFO_SIZE || comment.contains(&0) {
                        return Err(BlobError::Refused(format!(
                            "comment {:?} does not fit an xt comment (at most 255 bytes, no NUL)",
                            String::from_utf8_lossy(comment)
                        )));
                    }
                    let start = self
                        .chains
                        .iter()
                        .find(|c| c.hook.is_none() && c.name == target)
                        .map(Chain::start)
                        .ok_or_else(|| {
                            BlobError::Refused(format!(
                                "chain {target} does not exist in table {}",
                                self.name
                            ))
                        })?;
                    starts.push(Some(start));
                }
            }
        }
        let mut old: Vec<Option<Entry>> = self.chains[ci].rules.drain(..).map(Some).collect();
        let mut rules = Vec::with_capacity(slots.len());
        for (s, start) in slots.iter().zip(starts) {
            match (*s, start) {
                (Slot::Jump { comment, .. }, Some(start)) => {
                    let mut info = [0u8; COMMENT_INFO_SIZE];
                    info[..comment.len()].copy_from_slice(comment);
                    let id = self.take_id();
                    let bytes = new_entry(
                        l,
                        &[("comment", 0, &info, COMMENT_INFO_SIZE)],
                        "",
                        STANDARD_TARGET_SIZE,
                        &[0u8; 4],
                    );
                    rules.push(Entry::built(l, id, bytes, Target::Jump(start)));
                }
                (Slot::Keep(i), _) => rules.extend(old[i].take()),
                (Slot::Jump { .. }, None) => {}
            }
        }
        // Rules not kept are deleted; their counters go with them.
        self.chains[ci].rules = rules;
        Ok(())
    }

    /// Lay the table out: every jump offset, `hook_entry` and `underflow` computed anew.
    pub fn encode(&self) -> Result<Encoded, BlobError> {
        let all: Vec<&Entry> = self
            .chains
            .iter()
            .flat_map(Chain::entries)
            .chain([&self.end])
            .collect();
        let mut offset_of = vec![u32::MAX; self.next_id];
        let mut off = 0usize;
        for e in &all {
            offset_of[e.id] = u32::try_from(off)
                .map_err(|_| BlobError::Refused("the table would exceed 4 GiB".into()))?;
            off += e.bytes.len();
        }
        let mut blob = Vec::with_capacity(off);
        let mut origin = Vec::with_capacity(all.len());
        for e in &all {
            let start = blob.len();
            blob.extend_from_slice(&e.bytes);
            let verdict = match e.target {
                Target::Jump(t) => match offset_of.get(t) {
                    Some(&o) if o != u32::MAX => Some(o),
                    _ => {
                        return Err(BlobError::Refused(format!(
                            "a rule jumps to an entry that is no longer in the table (entry {} of the table as read)",
                            t
                        )))
                    }
                },
                Target::Fallthrough => Some(start as u32 + e.bytes.len() as u32),
                _ => None,
            };
            if let Some(v) = verdict {
                put_u32(&mut blob, start + e.target_offset + EXT_HEADER, v);
            }
            origin.push((e.id < self.decoded).then_some(e.id));
        }
        // Hooks the table does not have: 0, as libiptc sends them (the kernel ignores them).
        let mut hook_entry = [0; NUM_HOOKS];
        let mut underflow = [0; NUM_HOOKS];
        for c in &self.chains {
            if let Some(h) = c.hook {
                hook_entry[h] = offset_of[c.rules.first().unwrap_or(&c.footer).id];
                underflow[h] = offset_of[c.footer.id];
            }
        }
        Ok(Encoded {
            blob,
            num_entries: all.len() as u32,
            hook_entry,
            underflow,
            origin,
        })
    }
}

/// The conditions of `struct ipt_ip` / `ip6t_ip6` (`-s`, `-d`, `-i`, `-o`, `-p`, `-f`, ...)
/// as iptables-style text, or `None` when the entry has none (the goto flag of a chain
/// jump is not a condition).
fn ip_conditions(l: &Layout, b: &[u8], chain_jump: bool) -> Option<String> {
    let ip = &b[..l.ip_size];
    let flags = ip[l.flags] & !(if chain_jump { l.goto_flag } else { 0 });
    let inv = ip[l.invflags];
    let mut rest = ip.to_vec();
    rest[l.flags] = flags;
    if rest.iter().all(|&x| x == 0) {
        return None;
    }
    let mut s = String::new();
    let not = |bit: u8| if inv & bit != 0 { "! " } else { "" };
    let (alen, iface) = match l.family {
        Family::Ip => (4usize, 16usize),
        Family::Ip6 => (16, 64),
    };
    let addr = |a: &[u8], m: &[u8]| -> String {
        let plen: u32 = m.iter().map(|b| b.count_ones()).sum();
        let a = match l.family {
            Family::Ip => Ipv4Addr::from(<[u8; 4]>::try_from(a).unwrap_or_default()).to_string(),
            Family::Ip6 => Ipv6Addr::from(<[u8; 16]>::try_from(a).unwrap_or_default()).to_string(),
        };
        format!("{a}/{plen}")
    };
    let (src, dst, smsk, dmsk) = (
        &ip[..alen],
        &ip[alen..2 * alen],
        &ip[2 * alen..3 * alen],
        &ip[3 * alen..4 * alen],
    );
    if src.iter().chain(smsk).any(|&x| x != 0) {
        let _ = write!(s, " {}-s {}", not(0x08), addr(src, smsk));
    }
    if dst.iter().chain(dmsk).any(|&x| x != 0) {
        let _ = write!(s, " {}-d {}", not(0x10), addr(dst, dmsk));
    }
    for (opt, base, bit) in [("-i", iface, 0x01u8), ("-o", iface + 16, 0x02)] {
        let name = &ip[base..base + 16];
        let mask = &ip[base + 32..base + 48];
        if name.iter().chain(mask).any(|&x| x != 0) {
            let n = String::from_utf8_lossy(cstr(name)).into_owned();
            let wildcard = mask.iter().take_while(|&&m| m != 0).count() <= n.len();
            let _ = write!(
                s,
                " {}{opt} {n}{}",
                not(bit),
                if wildcard { "+" } else { "" }
            );
        }
    }
    let proto = u16::from_ne_bytes([ip[l.proto], ip[l.proto + 1]]);
    if proto != 0 {
        let p = match proto {
            1 => "icmp".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            58 => "ipv6-icmp".to_string(),
            132 => "sctp".to_string(),
            n => n.to_string(),
        };
        let _ = write!(s, " {}-p {p}", not(0x40));
    }
    if l.family == Family::Ip && flags & 0x01 != 0 {
        let _ = write!(s, " {}-f", not(0x20));
    }
    if s.is_empty() {
        s = " <other conditions of the entry header>".into();
    }
    Some(s.trim_start().to_string())
}

#[cfg(test)]
#[path = "blob_tests.rs"]
mod tests;
