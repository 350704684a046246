//! The x_tables table blob, as `IPT_SO_GET_ENTRIES` returns it and `IPT_SO_SET_REPLACE`
//! takes it: a pure codec, bytes in and bytes out, no I/O (the layouts:
//! `docs/architecture.md#x_tables-structures` and `#x_tables-table-layout`).
//!
//! [`Table::decode`] validates a blob and indexes it *in place*: it borrows the buffer the
//! kernel filled and copies no entry. One walk over the entries checks every length and
//! offset, finds the built-in chains through the table's `hook_entry`/`underflow` offsets
//! and the user chains through their `ERROR` heads, and checks that every jump (a standard
//! target with a verdict ≥ 0, an absolute byte offset in the blob) lands on an entry. The
//! index is one record per chain; nothing is allocated per entry. [`Table::rules`]
//! decodes one chain's rules for the planner.
//!
//! Edits are recorded, not applied: [`Table::ensure_chain`] adds a user chain,
//! [`Table::set_rules`] rebuilds a built-in chain from kept rules and new jumps. Then
//! [`Table::encode_into`] lays the table out again after whatever the caller already put
//! in its buffer (the `SET_REPLACE` header): every run of untouched entries is copied as
//! one byte range and its jump offsets moved by where the run landed; only the new
//! entries are built. `hook_entry` and `underflow` are computed anew, and the runs tell
//! which old entry each new one is (how counters are carried over). A table that was not
//! edited encodes to exactly the bytes it was decoded from.
//!
//! The layout libiptc (iptables-legacy) writes and expects: built-in chains, each its
//! rules then its policy entry; user chains sorted by name, each an `ERROR` head naming it,
//! its rules and a `RETURN` footer; a final `ERROR` entry named `ERROR`. A rule without a
//! target (`iptables -A X -s 10.0.0.1`) is a standard target whose verdict is the offset of
//! the entry that follows it ("fall through"); it stays that after a rebuild.
//!
//! Malformed input is an error, never a panic nor a read out of bounds: every length and
//! offset is checked before it is used.
//!
//! Public with the `testing` or `fuzzing` feature, for tests, benches and the fuzz
//! targets; not a stable API. Without them the codec is private to the crate.

use crate::snapshot::{Comment, CommentEncoding, Counters, Family, Match, Rule, Verdict};
use std::borrow::Cow;
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
        .ok_or_else(|| BlobError::Truncated {
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
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
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

/// The hook field of a user chain's record.
const NO_HOOK: u8 = u8::MAX;
/// Size of the `ERROR` entry that heads a user chain (and ends the table).
const fn error_entry_size(l: &Layout) -> usize {
    l.entry_size + ERROR_TARGET_SIZE
}
/// Size of a `RETURN` footer (and of any entry with only a standard target).
const fn standard_entry_size(l: &Layout) -> usize {
    l.entry_size + STANDARD_TARGET_SIZE
}
/// Size of a jump as iptables-legacy writes `-m comment --comment C -j T`.
const fn jump_entry_size(l: &Layout) -> usize {
    l.entry_size + EXT_HEADER + COMMENT_INFO_SIZE + STANDARD_TARGET_SIZE
}

/// The target of an entry, as far as the codec cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A standard target: a verdict < 0 (ACCEPT, DROP, RETURN, ...) or an offset ≥ 0.
    Standard(i32),
    /// The `ERROR` target: a chain head or the end of the table.
    Error,
    /// Any other target (its name is read from the bytes when needed).
    Other,
}

/// What the walk learns about the entry at the start of a slice.
#[derive(Debug, Clone, Copy)]
struct EntryHead {
    /// `next_offset`: the entry's size.
    size: usize,
    target: Target,
}

/// Check the entry at the start of `bytes` (which may hold more after it) — sizes,
/// matches, target — without copying anything. `at` is its offset, for errors.
fn parse_entry(l: &Layout, bytes: &[u8], at: usize) -> Result<EntryHead, BlobError> {
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
    // Validate the matches here; `matches` walks them again, unchecked.
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
    let target = if name.is_empty() {
        if tsize < EXT_HEADER + 4 {
            return Err(malformed(
                "standard target",
                at + t,
                format!("target_size {tsize} has no verdict"),
            ));
        }
        Target::Standard(u32_at(e, t + EXT_HEADER, "standard target")? as i32)
    } else if name == ERROR_TARGET.as_bytes() {
        if tsize < EXT_HEADER + FUNCTION_NAME_LEN {
            return Err(malformed(
                "ERROR target",
                at + t,
                format!("target_size {tsize} has no chain name"),
            ));
        }
        Target::Error
    } else {
        Target::Other
    };
    Ok(EntryHead {
        size: next_offset,
        target,
    })
}

/// An entry the decode walk validated: its size and target offset, read without checks.
/// Only for offsets the walk found (the bytes there were checked by [`parse_entry`]).
struct Valid<'b> {
    bytes: &'b [u8],
}

impl<'b> Valid<'b> {
    fn size(&self, l: &Layout) -> usize {
        usize::from(u16::from_ne_bytes([
            self.bytes[l.next_offset],
            self.bytes[l.next_offset + 1],
        ]))
    }

    fn target_offset(&self, l: &Layout) -> usize {
        usize::from(u16::from_ne_bytes([
            self.bytes[l.target_offset],
            self.bytes[l.target_offset + 1],
        ]))
    }

    /// The verdict of a standard target (`None` for any other target).
    fn standard(&self, l: &Layout) -> Option<i32> {
        let t = self.target_offset(l);
        (self.bytes[t + 2] == 0).then(|| {
            i32::from_ne_bytes([
                self.bytes[t + EXT_HEADER],
                self.bytes[t + EXT_HEADER + 1],
                self.bytes[t + EXT_HEADER + 2],
                self.bytes[t + EXT_HEADER + 3],
            ])
        })
    }

    /// The target's name.
    fn target_name(&self, l: &Layout) -> &'b [u8] {
        let t = self.target_offset(l);
        cstr(&self.bytes[t + 2..t + 2 + EXTENSION_NAME_LEN])
    }

    fn counters(&self, l: &Layout) -> Counters {
        Counters {
            packets: u64_at(self.bytes, l.counters, "counters").unwrap_or(0),
            bytes: u64_at(self.bytes, l.counters + 8, "counters").unwrap_or(0),
        }
    }

    fn is_goto(&self, l: &Layout) -> bool {
        self.bytes[l.flags] & l.goto_flag != 0
    }

    /// The matches, in order.
    fn matches(&self, l: &Layout) -> impl Iterator<Item = MatchRef<'b>> + 'b {
        let (bytes, end) = (self.bytes, self.target_offset(l));
        let mut m = l.entry_size;
        std::iter::from_fn(move || {
            if m + EXT_HEADER > end {
                return None;
            }
            let size = usize::from(u16::from_ne_bytes([bytes[m], bytes[m + 1]]));
            if size < EXT_HEADER || m + size > end {
                return None;
            }
            let r = MatchRef {
                name: cstr(&bytes[m + 2..m + 2 + EXTENSION_NAME_LEN]),
                revision: bytes[m + EXT_HEADER - 1],
                data: &bytes[m + EXT_HEADER..m + size],
            };
            m += size;
            Some(r)
        })
    }
}

/// A match of an entry, as it stands in the entry's bytes.
struct MatchRef<'a> {
    name: &'a [u8],
    revision: u8,
    /// The match's data (after its 32-byte header).
    data: &'a [u8],
}

/// One chain of a decoded table: where its entries are in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChainRef {
    /// The hook of a built-in chain (`NF_INET_*`), [`NO_HOOK`] for a user chain.
    hook: u8,
    /// Offset of the chain's first entry: a user chain's `ERROR` head, a built-in chain's
    /// first rule (or policy).
    head: u32,
    /// Where a jump to the chain lands: its first rule, or its footer when it has none.
    first: u32,
    /// Offset of the footer: the policy of a built-in chain, the `RETURN` of a user chain.
    footer: u32,
    /// Offset right after the footer.
    end: u32,
    /// Index (in the table as decoded) of the entry at `head`.
    head_index: u32,
    /// Index of the footer.
    footer_index: u32,
}

impl ChainRef {
    fn is_builtin(&self) -> bool {
        self.hook != NO_HOOK
    }

    /// Index of the entry at `first`.
    fn first_index(&self) -> u32 {
        self.head_index + u32::from(!self.is_builtin())
    }

    /// Rules in the chain.
    fn len(&self) -> usize {
        (self.footer_index - self.first_index()) as usize
    }
}

/// A chain of the table being encoded: one that was decoded, or one [`Table::ensure_chain`]
/// created (by its index among the created ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainId {
    Old(u32),
    New(u32),
}

/// A rule of an edited chain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    /// The rule at this offset and of this size in the blob, which is entry `index`.
    Keep { offset: u32, size: u32, index: u32 },
    /// A new `-m comment --comment C -j T`.
    Jump { comment: Vec<u8>, target: ChainId },
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

/// A run of entries copied unchanged from the table as decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Index of the run's first entry in the new table.
    pub new_index: u32,
    /// Index of the same entry in the table as decoded.
    pub old_index: u32,
    /// Entries in the run.
    pub count: u32,
}

/// The shape of a table laid out by [`Table::encode_into`] (the bytes went to the
/// caller's buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Entries in the new blob.
    pub num_entries: u32,
    /// Bytes of the new blob.
    pub size: u32,
    /// Offset of each valid hook's first entry (0 for the others, as libiptc sends).
    pub hook_entry: [u32; NUM_HOOKS],
    /// Offset of each valid hook's policy entry (0 for the others).
    pub underflow: [u32; NUM_HOOKS],
    /// The runs of entries kept from the decoded table, in the new table's order; every
    /// entry not in a run is new (how the old table's counters are carried over).
    pub runs: Vec<Run>,
}

impl Encoded {
    /// What `GET_INFO` reports once this blob replaced the table `was`: the same name and
    /// hooks, the new entry count, size, hook entries and underflows.
    pub fn info(&self, was: &Info) -> Info {
        let mut i = was.clone();
        i.num_entries = self.num_entries;
        i.size = self.size;
        for h in (0..NUM_HOOKS).filter(|h| was.valid_hooks & (1 << h) != 0) {
            i.hook_entry[h] = self.hook_entry[h];
            i.underflow[h] = self.underflow[h];
        }
        i
    }

    /// For each entry of the new table: its index in the table as decoded, or `None` for
    /// a new entry.
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn origin(&self) -> impl Iterator<Item = Option<usize>> + '_ {
        let mut runs = self.runs.iter().peekable();
        (0..self.num_entries).map(move |i| {
            while runs.peek().is_some_and(|r| i >= r.new_index + r.count) {
                runs.next();
            }
            runs.peek()
                .filter(|r| i >= r.new_index)
                .map(|r| (r.old_index + (i - r.new_index)) as usize)
        })
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

/// A decoded x_tables table: an index over the blob it borrows, plus the edits to make
/// when it is encoded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table<'a> {
    layout: &'static Layout,
    /// Table name (`nat`, ...).
    pub name: String,
    /// Bitmask of hooks.
    pub valid_hooks: u32,
    blob: &'a [u8],
    /// Every chain, in table order.
    chains: Vec<ChainRef>,
    /// The index in `chains` of each hook's built-in chain (`u32::MAX`: no such hook).
    builtins: [u32; NUM_HOOKS],
    /// Entries in the table as decoded.
    num_entries: u32,
    /// Offset of the final `ERROR` entry.
    end: u32,
    /// Per hook: whether a jump lands inside that built-in chain (then it is not rebuilt).
    entered: [bool; NUM_HOOKS],
    /// User chains created by [`Table::ensure_chain`], in the order they were created.
    created: Vec<String>,
    /// The chain order once chains were created (empty until then: the decoded order).
    order: Vec<ChainId>,
    /// Rebuilt chains: (chain index, its rules).
    edits: Vec<(u32, Vec<Edit>)>,
}

/// Where, during the decode walk, each valid hook's chain starts and ends.
#[derive(Clone, Copy)]
struct HookSeen {
    first: Option<u32>,
    /// Offset of the entry before the first one (the end of the chain before it).
    before_first: u32,
    policy: Option<u32>,
    policy_ok: bool,
}

/// An `ERROR` entry found by the decode walk.
#[derive(Clone, Copy)]
struct ErrorSeen {
    offset: u32,
    index: u32,
    size: u32,
    /// Offset of the entry before it (the footer of the chain it ends).
    prev: u32,
}

impl<'a> Table<'a> {
    /// Validate and index the entries blob of a table described by `info` (GET_INFO) for
    /// `family`. The table borrows `blob`; no entry is copied.
    pub fn decode(family: Family, info: &Info, blob: &'a [u8]) -> Result<Table<'a>, BlobError> {
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
        let hooks: Vec<usize> = (0..NUM_HOOKS)
            .filter(|h| info.valid_hooks & (1 << h) != 0)
            .collect();
        let announced = info.num_entries as usize;
        // One bit per 8 bytes: which offsets start an entry (entries are 8-aligned).
        let mut starts = vec![0u64; blob.len() / 512 + 1];
        // Jumps that are not fall-throughs, checked against `starts` once all are known.
        let mut jumps: Vec<u32> = Vec::new();
        let mut errors: Vec<ErrorSeen> = Vec::new();
        let mut seen = [HookSeen {
            first: None,
            before_first: 0,
            policy: None,
            policy_ok: false,
        }; NUM_HOOKS];
        let mut entered = [false; NUM_HOOKS];
        let (mut off, mut index, mut prev) = (0usize, 0u32, 0u32);
        let mut last = Target::Other;
        while off < blob.len() {
            if index as usize >= announced {
                return Err(malformed(
                    "table",
                    off,
                    format!("more entries than the {announced} GET_INFO announced"),
                ));
            }
            let e = parse_entry(l, &blob[off..], off)?;
            let off32 = off as u32;
            starts[off / 512] |= 1 << ((off / 8) % 64);
            for &h in &hooks {
                if info.hook_entry[h] == off32 {
                    seen[h].first = Some(index);
                    seen[h].before_first = prev;
                }
                if info.underflow[h] == off32 {
                    seen[h].policy = Some(index);
                    seen[h].policy_ok = matches!(e.target, Target::Standard(v) if v < 0);
                }
            }
            match e.target {
                Target::Standard(v) if v >= 0 && v as usize != off + e.size => {
                    let v = v as u32;
                    jumps.push(v);
                    // A jump into a built-in chain (never written by iptables): that chain
                    // cannot be rebuilt without changing what the jump does.
                    for &h in &hooks {
                        if (info.hook_entry[h]..=info.underflow[h]).contains(&v) {
                            entered[h] = true;
                        }
                    }
                }
                Target::Error => errors.push(ErrorSeen {
                    offset: off32,
                    index,
                    size: e.size as u32,
                    prev,
                }),
                _ => {}
            }
            last = e.target;
            prev = off32;
            off += e.size;
            index += 1;
        }
        if index as usize != announced {
            return Err(malformed(
                "table",
                0,
                format!("{index} entries, GET_INFO announced {announced}"),
            ));
        }
        for &v in &jumps {
            let at = v as usize;
            if at >= blob.len() || at % 8 != 0 || starts[at / 512] & (1 << ((at / 8) % 64)) == 0 {
                return Err(malformed(
                    "jump",
                    at,
                    "the offset is not the start of an entry",
                ));
            }
        }
        drop((starts, jumps));
        let Some(&end) = errors.last().filter(|_| last == Target::Error) else {
            return Err(malformed(
                "table",
                0,
                "the last entry is not the ERROR entry that ends a table",
            ));
        };
        let n = announced as u32;

        // Chain starts: each valid hook's first entry, each ERROR head but the last.
        let mut hook_starts: Vec<(u32, usize, u32)> = Vec::with_capacity(hooks.len());
        for &h in &hooks {
            let (Some(first), Some(policy)) = (seen[h].first, seen[h].policy) else {
                let (what, at) = if seen[h].first.is_none() {
                    ("hook_entry", info.hook_entry[h])
                } else {
                    ("underflow", info.underflow[h])
                };
                return Err(malformed(
                    what,
                    at as usize,
                    "the offset is not the start of an entry",
                ));
            };
            if first > policy || policy + 1 >= n {
                return Err(malformed(
                    "table",
                    info.hook_entry[h] as usize,
                    format!("hook {h}: its policy entry does not follow its first entry"),
                ));
            }
            if !seen[h].policy_ok {
                return Err(malformed(
                    "table",
                    info.underflow[h] as usize,
                    format!("hook {h}: the policy entry is not a standard verdict"),
                ));
            }
            hook_starts.push((first, h, policy));
        }
        hook_starts.sort_unstable();
        let heads = &errors[..errors.len() - 1];
        let mut chains: Vec<ChainRef> = Vec::with_capacity(hook_starts.len() + heads.len());
        // Merge the (few) hook chains into the user chains, by entry index.
        let (mut hi, mut ui) = (0, 0);
        let start_of = |hi: usize, ui: usize| -> Option<u32> {
            match (hook_starts.get(hi), heads.get(ui)) {
                (Some(h), Some(u)) => Some(h.0.min(u.index)),
                (Some(h), None) => Some(h.0),
                (None, Some(u)) => Some(u.index),
                (None, None) => None,
            }
        };
        if start_of(0, 0) != Some(0) {
            return Err(malformed("table", 0, "the first entry starts no chain"));
        }
        while let Some(s) = start_of(hi, ui) {
            let is_hook = hook_starts.get(hi).is_some_and(|h| h.0 == s);
            let is_user = heads.get(ui).is_some_and(|u| u.index == s);
            if is_hook && (is_user || hook_starts.get(hi + 1).is_some_and(|h| h.0 == s)) {
                return Err(malformed(
                    "table",
                    info.hook_entry[hook_starts[hi].1] as usize,
                    "two chains start at the same entry",
                ));
            }
            // The entry the next chain starts at (the final ERROR entry after the last).
            let (next_index, next_offset, footer) = {
                let (nh, nu) = if is_hook { (hi + 1, ui) } else { (hi, ui + 1) };
                match start_of(nh, nu) {
                    Some(ns) if heads.get(nu).is_some_and(|u| u.index == ns) => {
                        (ns, heads[nu].offset, heads[nu].prev)
                    }
                    Some(ns) => {
                        let hook = hook_starts[nh].1;
                        (ns, info.hook_entry[hook], seen[hook].before_first)
                    }
                    None => (n - 1, end.offset, end.prev),
                }
            };
            if is_hook {
                let (first, h, policy) = hook_starts[hi];
                if policy != next_index - 1 {
                    return Err(malformed(
                        "table",
                        info.hook_entry[h] as usize,
                        format!(
                            "chain {}: entries between its policy and the next chain",
                            HOOK_CHAINS[h]
                        ),
                    ));
                }
                chains.push(ChainRef {
                    hook: h as u8,
                    head: info.hook_entry[h],
                    first: info.hook_entry[h],
                    footer: info.underflow[h],
                    end: next_offset,
                    head_index: first,
                    footer_index: policy,
                });
                hi += 1;
            } else {
                let head = heads[ui];
                if next_index - s < 2 {
                    return Err(malformed(
                        "table",
                        head.offset as usize,
                        "a user chain without the RETURN entry that ends it",
                    ));
                }
                chains.push(ChainRef {
                    hook: NO_HOOK,
                    head: head.offset,
                    first: head.offset + head.size,
                    footer,
                    end: next_offset,
                    head_index: s,
                    footer_index: next_index - 1,
                });
                ui += 1;
            }
        }
        let mut builtins = [u32::MAX; NUM_HOOKS];
        for (i, c) in chains.iter().enumerate().filter(|(_, c)| c.is_builtin()) {
            builtins[c.hook as usize] = i as u32;
        }
        let t = Table {
            layout: l,
            name: info.name.clone(),
            valid_hooks: info.valid_hooks,
            blob,
            chains,
            builtins,
            num_entries: n,
            end: end.offset,
            entered,
            created: Vec::new(),
            order: Vec::new(),
            edits: Vec::new(),
        };
        t.check_names()?;
        Ok(t)
    }

    /// No two chains of the table share a name.
    fn check_names(&self) -> Result<(), BlobError> {
        let users: Vec<(&[u8], u32)> = self
            .chains
            .iter()
            .filter(|c| !c.is_builtin())
            .map(|c| (self.user_name(c), c.head))
            .collect();
        let dup = |name: &[u8], at: u32| {
            malformed(
                "table",
                at as usize,
                format!("two chains named {}", String::from_utf8_lossy(name)),
            )
        };
        for &(name, at) in &users {
            if self.builtin_by_name(name).is_some() {
                return Err(dup(name, at));
            }
        }
        // libiptc writes user chains sorted by name: then one pass proves them distinct.
        if users.windows(2).all(|w| w[0].0 < w[1].0) {
            return Ok(());
        }
        let mut sorted = users;
        sorted.sort_unstable();
        match sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            Some(w) => Err(dup(w[1].0, w[1].1)),
            None => Ok(()),
        }
    }

    /// The name in a user chain's `ERROR` head.
    fn user_name(&self, c: &ChainRef) -> &'a [u8] {
        if c.is_builtin() {
            return b"";
        }
        let head = Valid {
            bytes: &self.blob[c.head as usize..c.first as usize],
        };
        let t = head.target_offset(self.layout) + EXT_HEADER;
        cstr(&self.blob[c.head as usize + t..c.head as usize + t + FUNCTION_NAME_LEN])
    }

    /// A chain's name (built-in chains by their iptables names).
    fn chain_name(&self, c: &ChainRef) -> Cow<'a, str> {
        if c.is_builtin() {
            Cow::Borrowed(HOOK_CHAINS[c.hook as usize])
        } else {
            String::from_utf8_lossy(self.user_name(c))
        }
    }

    fn builtin_by_name(&self, name: &[u8]) -> Option<usize> {
        let h = HOOK_CHAINS.iter().position(|c| c.as_bytes() == name)?;
        Some(self.builtins[h])
            .filter(|&i| i != u32::MAX)
            .map(|i| i as usize)
    }

    fn builtin(&self, chain: &str) -> Option<usize> {
        self.builtin_by_name(chain.as_bytes())
    }

    /// The decoded user chain named `name`.
    fn user(&self, name: &str) -> Option<usize> {
        self.chains
            .iter()
            .position(|c| !c.is_builtin() && self.user_name(c) == name.as_bytes())
    }

    /// The entry at `off`, which the walk validated.
    fn valid(&self, off: u32) -> Valid<'a> {
        Valid {
            bytes: &self.blob[off as usize..],
        }
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.layout.family
    }

    /// Entries in the table as decoded.
    pub fn num_entries(&self) -> usize {
        self.num_entries as usize
    }

    /// The chains' names, in table order as decoded (built-in chains by their iptables
    /// names).
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn chain_names(&self) -> Vec<Cow<'a, str>> {
        self.chains.iter().map(|c| self.chain_name(c)).collect()
    }

    /// Rules in all chains and the names of the user chains: what `iptables-save` shows
    /// of the table (host detection counts these).
    pub fn census(&self) -> (usize, Vec<String>) {
        let rules = self.chains.iter().map(ChainRef::len).sum();
        let users = self
            .chains
            .iter()
            .filter(|c| !c.is_builtin())
            .map(|c| self.chain_name(c).into_owned())
            .collect();
        (rules, users)
    }

    /// Every chain of the table in table order as decoded: built-in chains with their
    /// hook and policy, user chains, each with its rule count (`jumpset explain`).
    pub fn chain_summaries(&self) -> Vec<ChainSummary> {
        self.chains
            .iter()
            .map(|c| ChainSummary {
                name: self.chain_name(c).into_owned(),
                hook: c.is_builtin().then_some(u32::from(c.hook)),
                rules: c.len(),
                policy: c
                    .is_builtin()
                    .then(|| match self.valid(c.footer).standard(self.layout) {
                        Some(VERDICT_ACCEPT) => Verdict::Accept,
                        Some(VERDICT_DROP) => Verdict::Drop,
                        Some(v) => Verdict::Other(format!("<verdict {v}>")),
                        None => Verdict::Other("<not a verdict>".into()),
                    }),
            })
            .collect()
    }

    /// Whether the table has user chain `name` (decoded or created).
    pub fn has_user_chain(&self, name: &str) -> bool {
        self.user(name).is_some() || self.created.iter().any(|c| c == name)
    }

    /// Whether `chain` is one of this table's built-in chains.
    pub fn has_builtin(&self, chain: &str) -> bool {
        self.builtin(chain).is_some()
    }

    /// The offsets of the rules of chain `c`, in order.
    fn rule_offsets(&self, c: &ChainRef) -> impl Iterator<Item = u32> + '_ {
        let l = self.layout;
        let (mut off, footer) = (c.first, c.footer);
        std::iter::from_fn(move || {
            (off < footer).then(|| {
                let at = off;
                off += self.valid(at).size(l) as u32;
                at
            })
        })
    }

    /// The rules of built-in chain `chain` as decoded, as `iptables -S` sees them, with
    /// handle = 1-based position; `None` when the table has no such built-in chain.
    pub fn rules(&self, chain: &str) -> Option<Vec<Rule>> {
        let c = self.chains[self.builtin(chain)?];
        Some(
            self.rule_offsets(&c)
                .enumerate()
                .map(|(i, off)| self.rule(off, i as u64 + 1))
                .collect(),
        )
    }

    /// The bytes of each rule of built-in chain `chain`, as decoded.
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn rule_bytes(&self, chain: &str) -> Option<Vec<&'a [u8]>> {
        let c = self.chains[self.builtin(chain)?];
        let l = self.layout;
        Some(
            self.rule_offsets(&c)
                .map(|off| {
                    let size = self.valid(off).size(l);
                    &self.blob[off as usize..off as usize + size]
                })
                .collect(),
        )
    }

    /// Write to `out` (cleared first) what decides a plan for built-in chain `chain`:
    /// every rule's bytes with the fields that change without the rule changing zeroed
    /// (counters, `comefrom`, jump offsets), each jump followed by the name of the chain
    /// it lands on (or that it falls through, or lands inside a chain). Two reads give the
    /// same bytes exactly when [`Table::rules`] gives the same rules, counters aside;
    /// nothing is decoded. Returns whether the table has the chain.
    pub fn fingerprint(&self, chain: &str, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(ci) = self.builtin(chain) else {
            return false;
        };
        let c = self.chains[ci];
        let l = self.layout;
        for off in self.rule_offsets(&c) {
            let e = self.valid(off);
            let size = e.size(l);
            let start = out.len();
            out.extend_from_slice(&(size as u32).to_ne_bytes());
            out.extend_from_slice(&self.blob[off as usize..off as usize + size]);
            let b = &mut out[start + 4..];
            b[l.counters..l.counters + 16].fill(0);
            b[l.next_offset + 2..l.next_offset + 6].fill(0); // comefrom
            if let Some(v) = e.standard(l).filter(|&v| v >= 0) {
                let at = e.target_offset(l) + EXT_HEADER;
                b[at..at + 4].fill(0);
                if v as usize == off as usize + size {
                    out.push(1); // falls through
                } else if let Some(t) = self.chain_at(v as u32) {
                    out.push(2);
                    out.extend_from_slice(self.user_name(t));
                    out.push(0);
                } else {
                    out.push(3); // into the middle of a chain
                }
            }
        }
        true
    }

    /// The user chain a jump to `offset` lands at the start of.
    fn chain_at(&self, offset: u32) -> Option<&ChainRef> {
        let i = self.chains.partition_point(|c| c.first < offset);
        self.chains
            .get(i)
            .filter(|c| c.first == offset && !c.is_builtin())
    }

    fn rule(&self, off: u32, handle: u64) -> Rule {
        let l = self.layout;
        let e = self.valid(off);
        let size = e.size(l);
        let bytes = &self.blob[off as usize..off as usize + size];
        let verdict = match e.standard(l) {
            Some(v) if v >= 0 && v as usize == off as usize + size => Verdict::None,
            Some(v) if v >= 0 => match self.chain_at(v as u32) {
                Some(c) if e.is_goto(l) => Verdict::Goto(self.chain_name(c).into_owned()),
                Some(c) => Verdict::Jump(self.chain_name(c).into_owned()),
                None => Verdict::Other("-j <a jump into the middle of a chain>".into()),
            },
            Some(VERDICT_ACCEPT) => Verdict::Accept,
            Some(VERDICT_DROP) => Verdict::Drop,
            Some(VERDICT_RETURN) => Verdict::Return,
            Some(VERDICT_QUEUE) => Verdict::Other("-j QUEUE".into()),
            Some(v) => Verdict::Other(format!("-j <verdict {v}>")),
            None => Verdict::Other(format!("-j {}", String::from_utf8_lossy(e.target_name(l)))),
        };
        let is_chain_jump = matches!(verdict, Verdict::Jump(_) | Verdict::Goto(_));
        let mut matches = Vec::new();
        if let Some(text) = ip_conditions(l, bytes, is_chain_jump) {
            matches.push(Match::Opaque(text));
        }
        let mut comment = None;
        for m in (Valid { bytes }).matches(l) {
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
    /// Returns whether it was created. Takes effect when the table is encoded.
    pub fn ensure_chain(&mut self, name: &str) -> Result<bool, BlobError> {
        if self.has_user_chain(name) {
            return Ok(false);
        }
        if name.is_empty() || name.len() >= FUNCTION_NAME_LEN - 1 || name.as_bytes().contains(&0) {
            return Err(BlobError::Refused(format!(
                "{name:?} cannot be an x_tables chain name"
            )));
        }
        if HOOK_CHAINS.contains(&name) {
            return Err(BlobError::Refused(format!(
                "{name} is a built-in chain, not a user chain"
            )));
        }
        if self.order.is_empty() {
            self.order = (0..self.chains.len() as u32).map(ChainId::Old).collect();
        }
        // libiptc inserts a new chain before the first user chain whose name sorts after
        // it (strcmp), else at the end.
        let at = self
            .order
            .iter()
            .position(|&id| match id {
                ChainId::Old(i) => {
                    let c = &self.chains[i as usize];
                    !c.is_builtin() && self.user_name(c) > name.as_bytes()
                }
                ChainId::New(k) => self.created[k as usize].as_bytes() > name.as_bytes(),
            })
            .unwrap_or(self.order.len());
        self.order
            .insert(at, ChainId::New(self.created.len() as u32));
        self.created.push(name.to_string());
        Ok(true)
    }

    /// Rebuild built-in chain `chain` from `slots`: kept rules keep their bytes, new jumps
    /// are written as iptables-legacy writes them. Every other chain is untouched. Slots
    /// name rules of the chain as decoded; a second call for the same chain replaces the
    /// first. Takes effect when the table is encoded; a refused edit records nothing.
    pub fn set_rules(&mut self, chain: &str, slots: &[Slot<'_>]) -> Result<(), BlobError> {
        let ci = self.builtin(chain).ok_or_else(|| {
            BlobError::Refused(format!("table {} has no built-in chain {chain}", self.name))
        })?;
        let c = self.chains[ci];
        // Nothing may jump into the chain: its rules are about to move.
        if self.entered[c.hook as usize] {
            return Err(BlobError::Refused(format!(
                "a rule of the table jumps into the middle of {chain}; jumpset will not move rules under it"
            )));
        }
        let l = self.layout;
        let old: Vec<(u32, u32)> = self
            .rule_offsets(&c)
            .map(|off| (off, self.valid(off).size(l) as u32))
            .collect();
        let mut kept = vec![false; old.len()];
        let mut edit = Vec::with_capacity(slots.len());
        for s in slots {
            match *s {
                Slot::Keep(i) => {
                    if i >= old.len() || std::mem::replace(&mut kept[i], true) {
                        return Err(BlobError::Refused(format!(
                            "rule {} of {chain} is not there to keep, or is kept twice",
                            i + 1
                        )));
                    }
                    edit.push(Edit::Keep {
                        offset: old[i].0,
                        size: old[i].1,
                        index: c.first_index() + i as u32,
                    });
                }
                Slot::Jump { comment, target } => {
                    if comment.len() >= COMMENT_INFO_SIZE || comment.contains(&0) {
                        return Err(BlobError::Refused(format!(
                            "comment {:?} does not fit an xt comment (at most 255 bytes, no NUL)",
                            String::from_utf8_lossy(comment)
                        )));
                    }
                    let target = match self.user(target) {
                        Some(i) => ChainId::Old(i as u32),
                        None => match self.created.iter().position(|c| c == target) {
                            Some(k) => ChainId::New(k as u32),
                            None => {
                                return Err(BlobError::Refused(format!(
                                    "chain {target} does not exist in table {}",
                                    self.name
                                )))
                            }
                        },
                    };
                    edit.push(Edit::Jump {
                        comment: comment.to_vec(),
                        target,
                    });
                }
            }
        }
        // Rules not kept are deleted; their counters go with them.
        self.edits.retain(|e| e.0 != ci as u32);
        self.edits.push((ci as u32, edit));
        Ok(())
    }

    /// Lay the table out with its edits, appending the blob to `out` (after whatever the
    /// caller put there, e.g. the `SET_REPLACE` header): every run of untouched entries is
    /// one copy, with the jump offsets inside it moved; every offset, `hook_entry` and
    /// `underflow` computed anew. On error `out` is left as it was.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<Encoded, BlobError> {
        let base = out.len();
        let r = self.lay_out(out, base);
        if r.is_err() {
            out.truncate(base);
        }
        r
    }

    /// [`Table::encode_into`] a new buffer: the blob and its shape.
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn encode(&self) -> Result<(Vec<u8>, Encoded), BlobError> {
        let mut blob = Vec::with_capacity(self.blob.len());
        let enc = self.encode_into(&mut blob)?;
        Ok((blob, enc))
    }

    fn lay_out(&self, out: &mut Vec<u8>, base: usize) -> Result<Encoded, BlobError> {
        let l = self.layout;
        // Pass 1: the new table as a list of pieces, with offsets and entry indices.
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = Cursor {
            offset: 0,
            index: 0,
        };
        let mut hook_entry = [0u64; NUM_HOOKS];
        let mut underflow = [0u64; NUM_HOOKS];
        // Where each created chain's jumps land (its footer), by creation index.
        let mut created_start = vec![0u32; self.created.len()];
        let order: Box<dyn Iterator<Item = ChainId>> = if self.order.is_empty() {
            Box::new((0..self.chains.len() as u32).map(ChainId::Old))
        } else {
            Box::new(self.order.iter().copied())
        };
        for id in order {
            match id {
                ChainId::Old(ci) => {
                    let c = &self.chains[ci as usize];
                    match self.edits.iter().position(|e| e.0 == ci) {
                        None => {
                            let new_head = at.offset;
                            let count = c.footer_index - c.head_index + 1;
                            copy(&mut pieces, &mut at, c.head, c.end, c.head_index, count);
                            if c.is_builtin() {
                                let h = c.hook as usize;
                                hook_entry[h] = new_head;
                                underflow[h] = new_head + u64::from(c.footer - c.head);
                            }
                        }
                        Some(ei) => {
                            let edit = &self.edits[ei].1;
                            let h = c.hook as usize;
                            hook_entry[h] = at.offset;
                            for (k, e) in edit.iter().enumerate() {
                                match *e {
                                    Edit::Keep {
                                        offset,
                                        size,
                                        index,
                                    } => {
                                        copy(&mut pieces, &mut at, offset, offset + size, index, 1)
                                    }
                                    Edit::Jump { .. } => {
                                        pieces.push(Piece::Jump {
                                            edit: ei as u32,
                                            slot: k as u32,
                                        });
                                        at.advance(jump_entry_size(l), 1);
                                    }
                                }
                            }
                            underflow[h] = at.offset;
                            copy(&mut pieces, &mut at, c.footer, c.end, c.footer_index, 1);
                        }
                    }
                }
                ChainId::New(k) => {
                    pieces.push(Piece::Head(k));
                    at.advance(error_entry_size(l), 1);
                    created_start[k as usize] = at.offset as u32;
                    pieces.push(Piece::Footer);
                    at.advance(standard_entry_size(l), 1);
                }
            }
        }
        copy(
            &mut pieces,
            &mut at,
            self.end,
            self.blob.len() as u32,
            self.num_entries - 1,
            1,
        );
        let size = u32::try_from(at.offset)
            .map_err(|_| BlobError::Refused("the table would exceed 4 GiB".into()))?;
        // Old offset → new offset, for the copied runs (sorted by old offset).
        let mut runs: Vec<CopyRun> = pieces
            .iter()
            .filter_map(|p| match *p {
                Piece::Copy(r) => Some(r),
                _ => None,
            })
            .collect();
        let encoded_runs: Vec<Run> = runs
            .iter()
            .map(|r| Run {
                new_index: r.new_index,
                old_index: r.old_index,
                count: r.count,
            })
            .collect();
        runs.sort_unstable_by_key(|r| r.old);
        let relocate = |v: u32| -> Result<u32, BlobError> {
            let i = runs.partition_point(|r| r.old <= v);
            runs.get(i.wrapping_sub(1))
                .filter(|r| v < r.old + r.len)
                .map(|r| (r.new + u64::from(v - r.old)) as u32)
                .ok_or_else(|| {
                    BlobError::Refused(format!(
                        "a rule jumps to byte {v} of the table as read, which is no longer in the table"
                    ))
                })
        };
        let start_of = |id: ChainId| -> Result<u32, BlobError> {
            match id {
                ChainId::Old(i) => relocate(self.chains[i as usize].first),
                ChainId::New(k) => Ok(created_start[k as usize]),
            }
        };

        // Pass 2: the bytes.
        out.reserve(at.offset as usize);
        for p in &pieces {
            let here = (out.len() - base) as u32;
            match *p {
                Piece::Copy(r) => {
                    out.extend_from_slice(&self.blob[r.old as usize..(r.old + r.len) as usize]);
                    self.move_jumps(&mut out[base + here as usize..], r, &relocate)?;
                }
                Piece::Jump { edit, slot } => {
                    let Edit::Jump { comment, target } =
                        &self.edits[edit as usize].1[slot as usize]
                    else {
                        continue; // a jump piece is only made for a jump edit
                    };
                    let mut info = [0u8; COMMENT_INFO_SIZE];
                    info[..comment.len()].copy_from_slice(comment);
                    let verdict = start_of(*target)? as i32;
                    push_entry(
                        out,
                        l,
                        Some(("comment", 0, &info)),
                        "",
                        STANDARD_TARGET_SIZE,
                        &verdict.to_ne_bytes(),
                    );
                }
                Piece::Head(k) => {
                    let name = self.created[k as usize].as_bytes();
                    let mut errorname = [0u8; FUNCTION_NAME_LEN];
                    errorname[..name.len()].copy_from_slice(name);
                    push_entry(out, l, None, ERROR_TARGET, ERROR_TARGET_SIZE, &errorname);
                }
                Piece::Footer => push_entry(
                    out,
                    l,
                    None,
                    "",
                    STANDARD_TARGET_SIZE,
                    &VERDICT_RETURN.to_ne_bytes(),
                ),
            }
        }
        debug_assert_eq!((out.len() - base) as u64, at.offset);
        // Hooks the table does not have: 0, as libiptc sends them (the kernel ignores them).
        for h in 0..NUM_HOOKS {
            if self.valid_hooks & (1 << h) == 0 {
                hook_entry[h] = 0;
                underflow[h] = 0;
            }
        }
        Ok(Encoded {
            num_entries: at.index,
            size,
            hook_entry: hook_entry.map(|o| o as u32),
            underflow: underflow.map(|o| o as u32),
            runs: encoded_runs,
        })
    }

    /// Rewrite the jump offsets of the entries of run `r`, copied to `bytes`: a jump moves
    /// with the entry it lands on, a fall-through keeps falling to the entry after it.
    fn move_jumps(
        &self,
        bytes: &mut [u8],
        r: CopyRun,
        relocate: &impl Fn(u32) -> Result<u32, BlobError>,
    ) -> Result<(), BlobError> {
        let l = self.layout;
        let mut p = 0usize;
        while p < r.len as usize {
            let e = self.valid(r.old + p as u32);
            let size = e.size(l);
            if let Some(v) = e.standard(l).filter(|&v| v >= 0) {
                let old_here = r.old as usize + p;
                let new = if v as usize == old_here + size {
                    r.new as usize + p + size
                } else {
                    relocate(v as u32)? as usize
                };
                let at = p + e.target_offset(l) + EXT_HEADER;
                put_u32(bytes, at, new as u32);
            }
            p += size;
        }
        Ok(())
    }
}

/// Where the layout has got to: the next entry's offset and index.
struct Cursor {
    offset: u64,
    index: u32,
}

impl Cursor {
    fn advance(&mut self, size: usize, entries: u32) {
        self.offset += size as u64;
        self.index += entries;
    }
}

/// Entries copied as they are: `len` bytes from offset `old` (entry `old_index` on) to
/// offset `new` (entry `new_index` on).
#[derive(Debug, Clone, Copy)]
struct CopyRun {
    old: u32,
    len: u32,
    new: u64,
    old_index: u32,
    new_index: u32,
    count: u32,
}

/// A piece of the table being laid out.
#[derive(Debug, Clone, Copy)]
enum Piece {
    Copy(CopyRun),
    /// The new jump of slot `slot` of edit `edit`.
    Jump {
        edit: u32,
        slot: u32,
    },
    /// The head of created chain `k`.
    Head(u32),
    /// The `RETURN` footer of the created chain before it.
    Footer,
}

/// Append the copy of old bytes `from..to` (entries `old_index` on, `count` of them),
/// merged into the previous piece when it ends where this one starts.
fn copy(pieces: &mut Vec<Piece>, at: &mut Cursor, from: u32, to: u32, old_index: u32, count: u32) {
    let len = to - from;
    if let Some(Piece::Copy(r)) = pieces.last_mut() {
        if r.old + r.len == from && r.old_index + r.count == old_index {
            r.len += len;
            r.count += count;
            at.advance(len as usize, count);
            return;
        }
    }
    pieces.push(Piece::Copy(CopyRun {
        old: from,
        len,
        new: at.offset,
        old_index,
        new_index: at.index,
        count,
    }));
    at.advance(len as usize, count);
}

/// Append an entry with no conditions, at most one match (`name`, revision, data) and
/// target `tname` of `tsize` bytes whose data (after its 32-byte header) is `tdata`.
fn push_entry(
    out: &mut Vec<u8>,
    l: &Layout,
    m: Option<(&str, u8, &[u8])>,
    tname: &str,
    tsize: usize,
    tdata: &[u8],
) {
    let msize = m.map_or(0, |m| EXT_HEADER + m.2.len());
    let target_offset = l.entry_size + msize;
    let next_offset = target_offset + tsize;
    let start = out.len();
    out.resize(start + next_offset, 0);
    let b = &mut out[start..];
    put_u16(b, l.target_offset, target_offset as u16);
    put_u16(b, l.next_offset, next_offset as u16);
    if let Some((name, rev, data)) = m {
        let at = l.entry_size;
        put_u16(b, at, (EXT_HEADER + data.len()) as u16);
        b[at + 2..at + 2 + name.len()].copy_from_slice(name.as_bytes());
        b[at + EXT_HEADER - 1] = rev;
        b[at + EXT_HEADER..at + EXT_HEADER + data.len()].copy_from_slice(data);
    }
    put_u16(b, target_offset, tsize as u16);
    b[target_offset + 2..target_offset + 2 + tname.len()].copy_from_slice(tname.as_bytes());
    b[target_offset + EXT_HEADER..target_offset + EXT_HEADER + tdata.len()].copy_from_slice(tdata);
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
