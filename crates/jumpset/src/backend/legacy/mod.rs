//! x_tables over socket options: the backend for iptables-legacy hosts.
//!
//! The kernel only knows whole tables. A read is `IPT_SO_GET_INFO` + `IPT_SO_GET_ENTRIES`
//! of the table, then `IPT_SO_GET_INFO` again (all retried when the table changed in
//! between: the pair is not atomic), decoded by the pure
//! `blob` codec; a write replaces the whole table with one `IPT_SO_SET_REPLACE` and then
//! puts the counters of every entry it kept back with `IPT_SO_SET_ADD_COUNTERS`, the same
//! two calls iptables-legacy makes (`docs/architecture.md#x_tables-replace-and-counters`).
//!
//! - **No side effects when reading.** A single GET_INFO instantiates a missing table
//!   (and registers its hooks), so [`LegacyBackend::read`] first looks the table up in
//!   `/proc/net/ip_tables_names` (`ip6_tables_names`) — of the calling thread's network
//!   namespace — and reports a table that is not listed as missing without any x_tables
//!   call. Only an `apply` with something to write creates it.
//! - **Handles.** x_tables has none; a rule's handle here is its 1-based position in the
//!   chain when it was read (`iptables -D CHAIN N` numbering). `apply` only acts on a table
//!   whose chain still holds exactly the rules the snapshot was read from, so positions
//!   cannot have shifted.
//! - **One read per reconcile, under the lock.** [`Backend::transact`] takes the xtables
//!   lock (when it is free; see the lock below), reads the table once, hands the chain to the planner, and — when the plan
//!   writes — rebuilds the table from that same read, replaces it and puts the counters
//!   back, then releases the lock. Every writer that honours the lock is kept out from the
//!   read to the replace, so nothing can move under the plan; the kernel's own check
//!   (`num_counters` = the current entry count, else `EAGAIN`) catches writers that ignore
//!   the lock, and is reported as [`BackendError::Stale`]: the reconcile re-runs it.
//!   `Snapshot::generation` is the table's entry count at read time. [`Backend::apply`]
//!   of a plan made elsewhere does the same and goes on only if the chain still decodes
//!   to the rules the plan was made from (counters aside) and the table still has that
//!   many entries, else `Stale`.
//! - **Verify without a second read.** After the replace, `GET_INFO` must report the very
//!   entry count, size, hook entries and underflows of the blob encoded; then the table
//!   is ours ([`Verified::Proven`]) and is not read back. Only when it reports something
//!   else (a writer that ignores the lock got in right after us) does the reconcile read
//!   the chain back, which is the one thing such a read can tell.
//! - **No copies of the table.** The table is decoded in place in the buffer the kernel
//!   filled (`blob::Table` borrows it), rebuilt by copying runs of untouched entries as
//!   byte ranges into the buffer the replace is sent from, and both buffers are kept
//!   between reconciles (a daemon on a 50k-rule node reuses them instead of faulting in
//!   twice the table each poll). Peak memory is about twice the table's size.
//! - **The xtables lock.** `$XTABLES_LOCKFILE` when set and non-empty, else
//!   `/run/xtables.lock`, opened `O_RDONLY|O_CREAT, 0600` and locked with
//!   `flock(LOCK_EX)` exactly as iptables-legacy does, for the whole
//!   read → plan → replace → counters sequence of a reconcile, and tried before the read,
//!   as iptables-legacy takes it for every command. Each try is non-blocking. When another
//!   process holds it, the chain is read without it (as iptables-legacy-save reads): a
//!   plan that writes nothing needs no lock, so a held lock neither fails nor delays a
//!   chain that is in order, and what the read found is known either way; a plan that
//!   writes waits for the lock up to `xtables_lock_timeout` (like `iptables -w N`; zero:
//!   no wait after the one try, like iptables without `-w`), is then made again from a
//!   read under it, or fails with [`BackendError::LockHeld`], naming the file. Plain reads
//!   (`status`, `check`, `plan`) do not take it. The daemon opens the backend with zero
//!   and retries on its own timer, so a held lock never blocks its loop.
//! - **What we write.** `-m comment --comment C -j T` exactly as iptables-legacy writes it
//!   (comment match rev 0 with its 256-byte info, a standard target). x_tables has no rule
//!   userdata, so a jump configured with `comment_encoding = "userdata"` is written with
//!   the xt comment match here — the only comment encoding legacy has — and reads back as
//!   the same jump. Missing target chains are created (when `create_chain`) as
//!   `iptables -N` does: an `ERROR` head and a `RETURN` footer, in name order.
//! - **Counters.** The kernel hands back the old table's final counters in the replace
//!   call's counters buffer; every entry that was kept (rules of every chain, policies,
//!   chain heads) gets its own back, mapped old index → new index; new rules start at 0.
//!
//! ip and ip6 are separate tables, so separate transactions.

#[cfg(any(feature = "testing", feature = "fuzzing"))]
pub mod blob;
#[cfg(not(any(feature = "testing", feature = "fuzzing")))]
pub(crate) mod blob;
mod sys;

use super::{Applied, Backend, BackendError, Fingerprint, Transaction, Verified};
use crate::plan::{self, Op, Plan};
use crate::snapshot::{Family, Rule, Snapshot};
use crate::spec::ChainSpec;
use blob::{Info, Slot, Table};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sys::LockFile;
pub(crate) use sys::{RawSocket, XtCounters, ENTRIES_HEADER, REPLACE_HEADER};

/// The lock file iptables-legacy uses unless `$XTABLES_LOCKFILE` says otherwise.
pub const DEFAULT_LOCK_FILE: &str = "/run/xtables.lock";
/// How many times a read that raced a change of the table's size is retried.
const READ_RETRIES: usize = 16;
/// Longest pause between two attempts at the lock while waiting for it.
const LOCK_POLL_MAX: Duration = Duration::from_millis(20);

/// The lock file path iptables-legacy would use in this process's environment.
pub fn lock_file_from_env() -> PathBuf {
    match std::env::var_os("XTABLES_LOCKFILE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_LOCK_FILE),
    }
}

/// The x_tables backend.
pub struct LegacyBackend {
    lock_file: PathBuf,
    lock_timeout: Duration,
    allow_mixed: bool,
    last_generation: u32,
    #[cfg(feature = "testing")]
    before_replace: Option<Box<dyn FnMut() + Send>>,
    bufs: Buffers,
}

/// The buffers a read and a replace of a table go through, kept from one reconcile to the
/// next (their capacity is the table's size; their contents are not reused).
#[derive(Default)]
pub(crate) struct Buffers {
    /// `GET_ENTRIES` header + the table as read.
    pub(crate) read: Vec<u8>,
    /// `SET_REPLACE` header + the table as rebuilt.
    pub(crate) write: Vec<u8>,
    /// The replaced table's counters, as the kernel hands them back.
    pub(crate) old: Vec<XtCounters>,
    /// The counters to put back, one per entry of the new table.
    pub(crate) new: Vec<XtCounters>,
    /// `ADD_COUNTERS` scratch.
    pub(crate) add: Vec<u8>,
    /// The chain's fingerprint as read (compared with the caller's).
    pub(crate) fingerprint: Vec<u8>,
}

impl std::fmt::Debug for LegacyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyBackend")
            .field("lock_file", &self.lock_file)
            .field("lock_timeout", &self.lock_timeout)
            .field("last_generation", &self.last_generation)
            .finish_non_exhaustive()
    }
}

/// What the legacy tables need that is missing when the sockopts are unknown.
const NO_XTABLES: &str = "this kernel has no iptables-legacy (x_tables) support loaded \
     (ENOPROTOOPT): the host does not use iptables-legacy, or ip_tables/ip6_tables must be loaded";

/// Map a failed socket call of `step`; EPERM names `capability`.
pub(crate) fn io_err<'a>(
    step: &'a str,
    capability: &'static str,
) -> impl FnOnce(io::Error) -> BackendError + 'a {
    move |source| match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => BackendError::Permission {
            step: step.to_string(),
            capability,
        },
        Some(libc::ENOPROTOOPT) => BackendError::Unsupported(format!("{step}: {NO_XTABLES}")),
        Some(errno) => BackendError::Kernel {
            step: step.to_string(),
            errno,
            message: source.to_string(),
        },
        None => BackendError::Io {
            step: step.to_string(),
            source,
        },
    }
}

fn decode_err(step: &str, e: blob::BlobError) -> BackendError {
    BackendError::Io {
        step: format!("{step}: cannot decode the kernel's table"),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

fn names_file(family: Family) -> &'static str {
    match family {
        Family::Ip => "ip_tables_names",
        Family::Ip6 => "ip6_tables_names",
    }
}

/// `-t TABLE` for messages: `iptables -t nat` / `ip6tables -t nat`.
fn cmd(family: Family, table: &str) -> String {
    format!("{} -t {table}", family.iptables())
}

/// Counters aside, the same rules.
pub(crate) fn same_rules(a: &[Rule], b: &[Rule]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.handle == y.handle
                && x.comment == y.comment
                && x.matches == y.matches
                && x.verdict == y.verdict
        })
}

/// The legacy tables that exist in the calling thread's network namespace, from
/// `/proc/thread-self/net/ip_tables_names` (or `ip6_`): no x_tables call, so nothing is
/// instantiated. No file means x_tables is not loaded: no tables.
pub fn existing_tables(family: Family) -> Result<Vec<String>, BackendError> {
    // /proc/net is the namespace of the process's main thread; a thread that entered
    // another namespace (tests, CNI plugins through the C ABI) must use thread-self.
    let base = if Path::new("/proc/thread-self/net").exists() {
        "/proc/thread-self/net"
    } else {
        "/proc/net"
    };
    let path = format!("{base}/{}", names_file(family));
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(BackendError::Io {
            step: format!("reading {path}"),
            source,
        }),
    }
}

/// The snapshot of built-in chain `chain` of a decoded table: generation = its entry count,
/// handles = 1-based positions.
fn snapshot_of(t: &Table, table: &str, chain: &str) -> Snapshot {
    let rules = t.rules(chain);
    Snapshot {
        family: t.family(),
        table: table.to_string(),
        chain: chain.to_string(),
        generation: t.num_entries() as u32,
        table_exists: true,
        chain_exists: rules.is_some(),
        rules: rules.unwrap_or_default(),
    }
}

impl LegacyBackend {
    /// A backend that takes the xtables lock at [`lock_file_from_env`], waiting up to
    /// `lock_timeout` for it (zero: one try).
    pub fn open(lock_timeout: Duration) -> Result<Self, BackendError> {
        Ok(Self::with_lock_file(lock_file_from_env(), lock_timeout))
    }

    /// Whether this backend may create the first x_tables table of a family while
    /// iptables-nft is in use for it (default: refused, [`BackendError::WouldMix`]).
    #[must_use]
    pub fn allow_mixed(mut self, allow: bool) -> Self {
        self.allow_mixed = allow;
        self
    }

    /// A backend using the lock file `path`.
    pub fn with_lock_file(path: impl Into<PathBuf>, lock_timeout: Duration) -> Self {
        LegacyBackend {
            lock_file: path.into(),
            lock_timeout,
            allow_mixed: false,
            last_generation: 0,
            #[cfg(feature = "testing")]
            before_replace: None,
            bufs: Buffers::default(),
        }
    }

    /// For tests (feature `testing`; not a stable API): run `f` once, under the lock,
    /// after the new table is built and right before SET_REPLACE — where only a writer
    /// that ignores the xtables lock can get in.
    #[cfg(feature = "testing")]
    pub fn before_next_replace(&mut self, f: impl FnMut() + Send + 'static) {
        self.before_replace = Some(Box::new(f));
    }

    /// The xtables lock file this backend takes.
    pub fn lock_file(&self) -> &Path {
        &self.lock_file
    }

    fn socket(family: Family, step: &str) -> Result<RawSocket, BackendError> {
        RawSocket::open(family).map_err(io_err(step, "CAP_NET_RAW"))
    }

    /// GET_INFO + GET_ENTRIES (+ GET_INFO again) of `table`, retried when the table
    /// changed in between: its info and its entries blob, copied out. For tests (feature
    /// `testing`; not a stable API), which decode it themselves.
    /// Instantiates the table if it does not exist: look at [`existing_tables`] first.
    #[cfg(feature = "testing")]
    pub fn read_raw(family: Family, table: &str) -> Result<(Info, Vec<u8>), BackendError> {
        Self::read_blob(family, table)
    }

    /// GET_INFO + GET_ENTRIES (+ GET_INFO again) of `table`, retried when the table
    /// changed in between: its info and its entries blob, copied out.
    /// Instantiates the table if it does not exist: look at [`existing_tables`] first.
    fn read_blob(family: Family, table: &str) -> Result<(Info, Vec<u8>), BackendError> {
        let step = format!("reading {}", cmd(family, table));
        let sock = Self::socket(family, &step)?;
        let mut buf = Vec::new();
        let info = read_into(&sock, table, &step, &mut buf)?;
        buf.drain(..ENTRIES_HEADER);
        Ok((info, buf))
    }

    /// The rules of `table`'s built-in chains and the names of its user chains, as
    /// `iptables-legacy-save` would show them (host detection). Instantiates the table
    /// if it does not exist: look at [`existing_tables`] first.
    pub fn census(family: Family, table: &str) -> Result<(usize, Vec<String>), BackendError> {
        let (info, blob) = Self::read_blob(family, table)?;
        let t = Table::decode(family, &info, &blob)
            .map_err(|e| decode_err(&format!("reading {}", cmd(family, table)), e))?;
        Ok(t.census())
    }

    /// Every chain of `table` with its hook, policy and rule count (`jumpset explain`).
    /// Instantiates the table if it does not exist: look at [`existing_tables`] first.
    pub(crate) fn chain_summaries(
        family: Family,
        table: &str,
    ) -> Result<Vec<blob::ChainSummary>, BackendError> {
        let (info, blob) = Self::read_blob(family, table)?;
        let t = Table::decode(family, &info, &blob)
            .map_err(|e| decode_err(&format!("reading {}", cmd(family, table)), e))?;
        Ok(t.chain_summaries())
    }

    /// Open the xtables lock file.
    fn open_lock(&self) -> Result<LockFile, BackendError> {
        let path = self.lock_file.display();
        LockFile::open(&self.lock_file).map_err(|source| BackendError::Io {
            step: format!(
                "opening the xtables lock file {path} (it must be a file; in a container, \
                 mount the host's {path} as a file)"
            ),
            source,
        })
    }

    /// One non-blocking try of the xtables lock: whether it is ours now.
    fn try_lock(&self, f: &LockFile) -> Result<bool, BackendError> {
        f.try_lock().map_err(|source| BackendError::Io {
            step: format!("taking the xtables lock {}", self.lock_file.display()),
            source,
        })
    }

    /// After a failed try at `first`: try again until the timeout has passed since
    /// (zero: not at all), then [`BackendError::LockHeld`].
    fn wait_lock(&self, f: &LockFile, first: Instant) -> Result<(), BackendError> {
        let deadline = first + self.lock_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::LockHeld {
                    path: self.lock_file.clone(),
                    waited: self.lock_timeout,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(LOCK_POLL_MAX);
            if self.try_lock(f)? {
                return Ok(());
            }
        }
    }

    /// The lock is held by another process: read the chain without it and plan (see the
    /// module documentation). With `seen`, as in [`LegacyBackend::locked`].
    fn peek(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        seen: Option<&mut Fingerprint>,
        decide: &mut dyn FnMut(&Snapshot) -> Result<Plan, BackendError>,
    ) -> Result<Peek, BackendError> {
        let (table, chain) = (spec.table.as_str(), spec.chain.as_str());
        let before = if existing_tables(family)?.iter().any(|t| t == table) {
            let step = format!("reading {}", cmd(family, table));
            let sock = Self::socket(family, &step)?;
            let Buffers {
                read, fingerprint, ..
            } = &mut self.bufs;
            let info = read_into(&sock, table, &step, read)?;
            self.last_generation = info.num_entries;
            let t = Table::decode(family, &info, &read[ENTRIES_HEADER..])
                .map_err(|e| decode_err(&step, e))?;
            if let Some(seen) = seen {
                if !t.fingerprint(chain, fingerprint) {
                    fingerprint.clear();
                    fingerprint.extend_from_slice(NO_CHAIN);
                }
                if seen.valid && seen.bytes == *fingerprint {
                    return Ok(Peek::Same);
                }
                std::mem::swap(&mut seen.bytes, fingerprint);
                seen.valid = false;
            }
            snapshot_of(&t, table, chain)
        } else {
            self.last_generation = 0;
            if let Some(seen) = seen {
                if seen.valid && seen.bytes == MISSING_TABLE {
                    return Ok(Peek::Same);
                }
                seen.bytes.clear();
                seen.bytes.extend_from_slice(MISSING_TABLE);
                seen.valid = false;
            }
            missing_table(family, table, chain)
        };
        let plan = decide(&before)?;
        if plan.ops.is_empty() {
            return Ok(Peek::Nothing(Box::new(nothing(before, plan))));
        }
        Ok(Peek::Writes)
    }

    /// The chain as the plan wants it: the snapshot's rules (by handle = position) minus
    /// the deletes, plus the inserts before the rule they must precede, else at the end.
    fn slots<'a>(
        snap: &Snapshot,
        spec: &'a ChainSpec,
        plan: &Plan,
    ) -> Result<Vec<Slot<'a>>, BackendError> {
        let n = snap.rules.len();
        let index = |handle: u64| -> Result<usize, BackendError> {
            usize::try_from(handle)
                .ok()
                .filter(|&h| h >= 1 && h <= n)
                .map(|h| h - 1)
                .ok_or_else(|| {
                    BackendError::Unsupported(format!(
                        "the plan names rule handle {handle}, which the chain as read \
                         (of {n} rules) does not have"
                    ))
                })
        };
        let mut slots: Vec<Slot<'a>> = (0..n).map(Slot::Keep).collect();
        for op in &plan.ops {
            if let Op::Delete { handle, .. } = *op {
                let i = index(handle)?;
                slots.retain(|s| *s != Slot::Keep(i));
            }
        }
        for op in &plan.ops {
            if let Op::Insert {
                jump,
                before_handle,
                ..
            } = *op
            {
                let js = spec.jumps.get(jump).ok_or_else(|| {
                    BackendError::Unsupported(format!(
                        "the plan names jump {jump}, which the spec does not have"
                    ))
                })?;
                let new = Slot::Jump {
                    comment: js.comment.as_bytes(),
                    target: &js.target,
                };
                match before_handle {
                    Some(h) => {
                        let i = index(h)?;
                        let at =
                            slots
                                .iter()
                                .position(|s| *s == Slot::Keep(i))
                                .ok_or_else(|| {
                                    BackendError::Unsupported(format!(
                                        "the plan inserts before rule {h}, which it also deletes"
                                    ))
                                })?;
                        slots.insert(at, new);
                    }
                    None => slots.push(new),
                }
            }
        }
        Ok(slots)
    }

    /// The reconcile of `spec`'s chain in `family` under the xtables lock, from one read:
    /// `decide` plans from the chain as read (or refuses with `Stale`); a plan that writes
    /// is committed from that same read. See the module documentation.
    /// With `seen`, nothing is planned when the chain reads as `seen` says
    /// ([`Backend::transact_if_changed`]): `Ok(None)`.
    fn locked(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        mut seen: Option<&mut Fingerprint>,
        decide: &mut dyn FnMut(&Snapshot) -> Result<Plan, BackendError>,
    ) -> Result<Option<Transaction>, BackendError> {
        let (table, chain) = (spec.table.as_str(), spec.chain.as_str());
        let first = Instant::now();
        let lock = self.open_lock()?;
        if !self.try_lock(&lock)? {
            // Another process holds it: what does the chain need? Nothing, then no lock.
            match self.peek(family, spec, seen.as_deref_mut(), decide)? {
                Peek::Same => return Ok(None),
                Peek::Nothing(tx) => return Ok(Some(*tx)),
                // A write: wait for the lock (up to the timeout), then read again under
                // it and plan from that read.
                Peek::Writes => self.wait_lock(&lock, first)?,
            }
        }
        let _lock = lock;
        let step = format!("reading {} under the xtables lock", cmd(family, table));
        let exists = existing_tables(family)?.iter().any(|t| t == table);
        let missing = missing_table(family, table, chain);
        let planned_missing = if exists {
            None
        } else {
            self.last_generation = 0;
            if let Some(seen) = seen.as_deref_mut() {
                if seen.valid && seen.bytes == MISSING_TABLE {
                    return Ok(None);
                }
                seen.bytes.clear();
                seen.bytes.extend_from_slice(MISSING_TABLE);
                seen.valid = false;
            }
            let plan = decide(&missing)?;
            if plan.ops.is_empty() {
                return Ok(Some(nothing(missing, plan)));
            }
            // A missing table has no chains: refuse before instantiating it for nothing.
            if let Some(js) = plan.ops.iter().find_map(|op| match *op {
                Op::Insert { jump, .. } => spec.jumps.get(jump).filter(|js| !js.create_chain),
                Op::Delete { .. } => None,
            }) {
                return Err(BackendError::MissingTarget {
                    family,
                    table: table.to_string(),
                    chain: js.target.clone(),
                });
            }
            if !self.allow_mixed {
                BackendError::check_mixing(crate::detect::Choice::Legacy, family)?;
            }
            Some(plan)
        };

        // The one read. For a missing table it instantiates it, as iptables-legacy's
        // first write does.
        let sock = Self::socket(family, &step)?;
        let Buffers {
            read,
            write,
            old,
            new,
            add,
            fingerprint,
        } = &mut self.bufs;
        let info = read_into(&sock, table, &step, read)?;
        self.last_generation = info.num_entries;
        let mut t = Table::decode(family, &info, &read[ENTRIES_HEADER..])
            .map_err(|e| decode_err(&step, e))?;
        if let (Some(seen), None) = (seen, &planned_missing) {
            // The poll's shortcut: counters change with every packet, the rules may not.
            if !t.fingerprint(chain, fingerprint) {
                fingerprint.clear();
                fingerprint.extend_from_slice(NO_CHAIN);
            }
            if seen.valid && seen.bytes == *fingerprint {
                return Ok(None);
            }
            std::mem::swap(&mut seen.bytes, fingerprint);
            seen.valid = false;
        }
        let now = snapshot_of(&t, table, chain);
        let (before, plan) = match planned_missing {
            None => {
                let plan = decide(&now)?;
                (now, plan)
            }
            // Just created: empty, unless a writer that ignores the lock got there first.
            Some(_) if !now.rules.is_empty() => return Err(BackendError::Stale { planned: 0 }),
            Some(plan) => (missing, plan),
        };
        if plan.ops.is_empty() {
            return Ok(Some(nothing(before, plan)));
        }
        if !t.has_builtin(chain) {
            return Err(BackendError::Unsupported(format!(
                "{}: the table has no built-in chain {chain}; \
                 iptables-legacy tables cannot gain built-in chains",
                cmd(family, table)
            )));
        }

        // Target chains first, then the chain itself.
        let mut changes = plan.ops.len();
        for op in &plan.ops {
            let Op::Insert { jump, .. } = *op else {
                continue;
            };
            let Some(js) = spec.jumps.get(jump) else {
                continue;
            };
            if !t.has_user_chain(&js.target) {
                if !js.create_chain {
                    return Err(BackendError::MissingTarget {
                        family,
                        table: table.to_string(),
                        chain: js.target.clone(),
                    });
                }
                let created = t.ensure_chain(&js.target).map_err(|e| {
                    BackendError::Unsupported(format!(
                        "{} -N {}: {e}",
                        cmd(family, table),
                        js.target
                    ))
                })?;
                changes += usize::from(created);
            }
        }
        let slots = Self::slots(&before, spec, &plan)?;
        t.set_rules(chain, &slots).map_err(|e| {
            BackendError::Unsupported(format!("{} {chain}: {e}", cmd(family, table)))
        })?;
        write.clear();
        write.resize(REPLACE_HEADER, 0);
        let enc = t.encode_into(write).map_err(|e| {
            BackendError::Unsupported(format!("{} {chain}: {e}", cmd(family, table)))
        })?;

        // One SET_REPLACE; the kernel fills `old` with the replaced table's counters.
        #[cfg(feature = "testing")]
        if let Some(mut f) = self.before_replace.take() {
            f();
        }
        old.clear();
        old.resize(info.num_entries as usize, XtCounters::default());
        let step = format!("replacing {} (IPT_SO_SET_REPLACE)", cmd(family, table));
        match sock.replace(table, t.valid_hooks, &enc, write, old) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                return Err(BackendError::Stale {
                    planned: before.generation,
                })
            }
            Err(e) => return Err(io_err(&step, "CAP_NET_ADMIN")(e)),
        }
        self.last_generation = enc.num_entries;

        // Every kept entry gets its counters back; the kernel adds them to what the new
        // table counted since the swap.
        new.clear();
        new.resize(enc.num_entries as usize, XtCounters::default());
        for r in &enc.runs {
            let (from, to) = (r.old_index as usize, r.new_index as usize);
            let n = r.count as usize;
            if let (Some(src), Some(dst)) = (old.get(from..from + n), new.get_mut(to..to + n)) {
                dst.copy_from_slice(src);
            }
        }
        sock.add_counters(table, new, add).map_err(|e| {
            io_err(
                &format!(
                    "restoring the counters of {} (IPT_SO_SET_ADD_COUNTERS) after the table was replaced; \
                     the new rules are in place but the counters of kept rules restarted from 0",
                    cmd(family, table)
                ),
                "CAP_NET_ADMIN",
            )(e)
        })?;

        // The verify: what the kernel now says of the table is what was encoded (we hold
        // the lock, so only a writer ignoring it could differ). A full read-back would
        // only repeat what the codec's tests prove (the blob decodes to the planned
        // chain); it is left to the reconcile for the case this check fails.
        let step = format!("checking {} after the replace", cmd(family, table));
        let got = sock
            .get_info(table)
            .map_err(io_err(&step, "CAP_NET_ADMIN"))?;
        let verified = if got == enc.info(&info) {
            Verified::Proven {
                inserted: plan
                    .result
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| match *s {
                        plan::Slot::New(j) => Some((j, i as u64 + 1)),
                        plan::Slot::Existing(_) => None,
                    })
                    .collect(),
            }
        } else {
            Verified::ReadBack
        };
        Ok(Some(Transaction {
            before,
            plan,
            applied: Applied {
                committed: true,
                changes,
                expected_generation: Some(enc.num_entries),
            },
            verified,
        }))
    }
}

/// The fingerprint of a table that does not exist.
const MISSING_TABLE: &[u8] = b"\0no table";
/// The fingerprint of a table without the chain.
const NO_CHAIN: &[u8] = b"\0no chain";

/// What a read without the lock found ([`LegacyBackend::peek`]).
enum Peek {
    /// The chain reads as the caller's fingerprint says: nothing planned.
    Same,
    /// Planned, and the plan writes nothing.
    Nothing(Box<Transaction>),
    /// The plan writes: take the lock.
    Writes,
}

/// The snapshot of a table that does not exist.
fn missing_table(family: Family, table: &str, chain: &str) -> Snapshot {
    Snapshot {
        family,
        table: table.to_string(),
        chain: chain.to_string(),
        generation: 0,
        table_exists: false,
        chain_exists: false,
        rules: Vec::new(),
    }
}

/// A transaction that committed nothing.
fn nothing(before: Snapshot, plan: Plan) -> Transaction {
    Transaction {
        before,
        plan,
        applied: Applied::NOTHING,
        verified: Verified::ReadBack,
    }
}

/// GET_INFO + GET_ENTRIES (+ GET_INFO again) of `table` into `buf` (header, then the
/// blob), retried when the table changed in between: the pair is not atomic, and a
/// replace between them that kept the size would pair the entries with stale hook
/// offsets, so the info is read again to make sure it did not move.
pub(crate) fn read_into(
    sock: &RawSocket,
    table: &str,
    step: &str,
    buf: &mut Vec<u8>,
) -> Result<Info, BackendError> {
    for _ in 0..READ_RETRIES {
        let info = sock
            .get_info(table)
            .map_err(io_err(step, "CAP_NET_ADMIN"))?;
        match sock.get_entries_into(table, info.size, buf, 0) {
            Ok(()) => {
                if sock
                    .get_info(table)
                    .map_err(io_err(step, "CAP_NET_ADMIN"))?
                    == info
                {
                    return Ok(info);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(io_err(step, "CAP_NET_ADMIN")(e)),
        }
    }
    Err(BackendError::Kernel {
        step: step.to_string(),
        errno: libc::EAGAIN,
        message: format!("the table changed during each of {READ_RETRIES} reads"),
    })
}

impl Backend for LegacyBackend {
    fn name(&self) -> &'static str {
        "legacy"
    }

    /// The entry count of the table this backend last read or wrote.
    fn generation(&mut self) -> Result<u32, BackendError> {
        Ok(self.last_generation)
    }

    /// A plain read, without the lock (like iptables-legacy-save).
    fn read(&mut self, family: Family, table: &str, chain: &str) -> Result<Snapshot, BackendError> {
        if !existing_tables(family)?.iter().any(|t| t == table) {
            self.last_generation = 0;
            return Ok(missing_table(family, table, chain));
        }
        let step = format!("reading {}", cmd(family, table));
        let sock = Self::socket(family, &step)?;
        let info = read_into(&sock, table, &step, &mut self.bufs.read)?;
        let t = Table::decode(family, &info, &self.bufs.read[ENTRIES_HEADER..])
            .map_err(|e| decode_err(&step, e))?;
        let snap = snapshot_of(&t, table, chain);
        self.last_generation = snap.generation;
        Ok(snap)
    }

    /// Apply a plan made from `snap` elsewhere: under the lock, from one read, only if the
    /// chain still holds exactly the rules `snap` has (counters aside) and the table as
    /// many entries; else [`BackendError::Stale`].
    fn apply(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        if plan.ops.is_empty() {
            return Ok(Applied::NOTHING);
        }
        if (snap.table.as_str(), snap.chain.as_str()) != (spec.table.as_str(), spec.chain.as_str())
        {
            return Err(BackendError::Unsupported(format!(
                "the plan was made for {} {}, the spec is for {} {}",
                snap.table, snap.chain, spec.table, spec.chain
            )));
        }
        let stale = BackendError::Stale {
            planned: snap.generation,
        };
        let tx = self.locked(snap.family, spec, None, &mut |now| {
            if now.table_exists != snap.table_exists
                || now.generation != snap.generation
                || !same_rules(&now.rules, &snap.rules)
            {
                return Err(BackendError::Stale {
                    planned: snap.generation,
                });
            }
            Ok(plan.clone())
        });
        match tx {
            Ok(tx) => Ok(tx.map_or(Applied::NOTHING, |tx| tx.applied)),
            Err(BackendError::Stale { .. }) => Err(stale),
            Err(e) => Err(e),
        }
    }

    fn transact(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Transaction, BackendError> {
        let tx = self.locked(family, spec, None, &mut |snap| Ok(planner(snap)))?;
        tx.ok_or_else(|| BackendError::Unsupported("no fingerprint was given".into()))
    }

    /// The same as [`Backend::transact`]: x_tables has no global generation that others
    /// bump (the entry count is the table's own, and the lock keeps every writer that
    /// honours it out from the read to the replace), so there is nothing to fall back
    /// from; its commit still proves what it can.
    fn transact_anchored(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Transaction, BackendError> {
        self.transact(family, spec, planner)
    }

    fn transact_if_changed(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        seen: &mut Fingerprint,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Option<Transaction>, BackendError> {
        self.locked(family, spec, Some(seen), &mut |snap| Ok(planner(snap)))
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
