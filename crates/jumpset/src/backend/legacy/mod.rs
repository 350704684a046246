//! x_tables over socket options: the backend for iptables-legacy hosts.
//!
//! The kernel only knows whole tables. A read is `IPT_SO_GET_INFO` + `IPT_SO_GET_ENTRIES`
//! of the table, then `IPT_SO_GET_INFO` again (all retried when the table changed in
//! between: the pair is not atomic), decoded by the pure
//! [`blob`] codec; a write replaces the whole table with one `IPT_SO_SET_REPLACE` and then
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
//! - **Staleness.** `Snapshot::generation` is the table's entry count at read time (what the
//!   kernel itself checks). `apply` takes the xtables lock, re-reads the table and goes on
//!   only if it still has that many entries and the chain decodes to the same rules
//!   (counters aside); else [`BackendError::Stale`], and the reconcile re-reads and
//!   re-plans. The new table is built from that re-read, so a change made elsewhere in
//!   the table before we took the lock is kept, not clobbered. The kernel's own check
//!   (`num_counters` = the current entry count, else `EAGAIN`) catches writers that ignore
//!   the lock, and is reported as stale too.
//! - **The xtables lock.** `$XTABLES_LOCKFILE` when set and non-empty, else
//!   `/run/xtables.lock`, opened `O_RDONLY|O_CREAT, 0600` and locked with
//!   `flock(LOCK_EX)` exactly as iptables-legacy does, for the whole re-read → replace →
//!   counters sequence. It waits up to `xtables_lock_timeout` (like `iptables -w N`;
//!   zero: one try and no wait, like iptables without `-w`) and then fails with
//!   [`BackendError::LockHeld`], naming the file. Reads do not take it (neither does
//!   iptables-legacy-save). The daemon tries once per attempt and retries on its own
//!   timer, so a held lock never blocks its loop.
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

pub mod blob;
mod sys;

use super::{Applied, Backend, BackendError};
use crate::plan::{Op, Plan};
use crate::snapshot::{Family, Rule, Snapshot};
use crate::spec::ChainSpec;
use blob::{Info, Slot, Table};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sys::{LockFile, RawSocket, XtCounters};

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
    before_replace: Option<Box<dyn FnMut() + Send>>,
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
fn io_err<'a>(
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
fn same_rules(a: &[Rule], b: &[Rule]) -> bool {
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
            before_replace: None,
        }
    }

    /// For tests: run `f` once, under the lock, after the new table is built and right
    /// before SET_REPLACE — where only a writer that ignores the xtables lock can get in.
    #[doc(hidden)]
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
    /// changed in between.
    /// Instantiates the table if it does not exist: look at [`existing_tables`] first.
    pub fn read_raw(family: Family, table: &str) -> Result<(Info, Vec<u8>), BackendError> {
        let step = format!("reading {}", cmd(family, table));
        let sock = Self::socket(family, &step)?;
        Self::read_raw_on(&sock, table, &step)
    }

    fn read_raw_on(
        sock: &RawSocket,
        table: &str,
        step: &str,
    ) -> Result<(Info, Vec<u8>), BackendError> {
        for _ in 0..READ_RETRIES {
            let info = sock
                .get_info(table)
                .map_err(io_err(step, "CAP_NET_ADMIN"))?;
            match sock.get_entries(table, info.size) {
                // GET_INFO and GET_ENTRIES are two calls: a replace between them that
                // kept the size would pair these entries with stale hook offsets. The
                // table's info is read again to make sure it did not move.
                Ok(blob) => {
                    if sock
                        .get_info(table)
                        .map_err(io_err(step, "CAP_NET_ADMIN"))?
                        == info
                    {
                        return Ok((info, blob));
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

    /// Read and decode `table` (instantiating it if it does not exist).
    pub fn read_table(family: Family, table: &str) -> Result<Table, BackendError> {
        let (info, blob) = Self::read_raw(family, table)?;
        Table::decode(family, &info, &blob)
            .map_err(|e| decode_err(&format!("reading {}", cmd(family, table)), e))
    }

    /// Take the xtables lock, waiting up to the timeout (zero: one try, no wait).
    fn lock(&self) -> Result<LockFile, BackendError> {
        let path = self.lock_file.display();
        let f = LockFile::open(&self.lock_file).map_err(|source| BackendError::Io {
            step: format!(
                "opening the xtables lock file {path} (it must be a file; in a container, \
                 mount the host's {path} as a file)"
            ),
            source,
        })?;
        let step = || format!("taking the xtables lock {path}");
        let deadline = Instant::now() + self.lock_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if f.try_lock().map_err(|source| BackendError::Io {
                step: step(),
                source,
            })? {
                return Ok(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::LockHeld {
                    path: self.lock_file.clone(),
                    waited: self.lock_timeout,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
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
}

impl Backend for LegacyBackend {
    fn name(&self) -> &'static str {
        "legacy"
    }

    /// The entry count of the table this backend last read or wrote.
    fn generation(&mut self) -> Result<u32, BackendError> {
        Ok(self.last_generation)
    }

    fn read(&mut self, family: Family, table: &str, chain: &str) -> Result<Snapshot, BackendError> {
        if !existing_tables(family)?.iter().any(|t| t == table) {
            self.last_generation = 0;
            return Ok(Snapshot {
                family,
                table: table.to_string(),
                chain: chain.to_string(),
                generation: 0,
                table_exists: false,
                chain_exists: false,
                rules: Vec::new(),
            });
        }
        let snap = snapshot_of(&Self::read_table(family, table)?, table, chain);
        self.last_generation = snap.generation;
        Ok(snap)
    }

    fn apply(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        if plan.ops.is_empty() {
            return Ok(Applied {
                committed: false,
                changes: 0,
                expected_generation: None,
            });
        }
        let (family, table, chain) = (snap.family, snap.table.as_str(), snap.chain.as_str());
        let stale = BackendError::Stale {
            planned: snap.generation,
        };
        if !snap.table_exists {
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
        }
        if !snap.table_exists && !self.allow_mixed {
            BackendError::check_mixing(crate::detect::Choice::Legacy, family)?;
        }
        let _lock = self.lock()?;

        // Under the lock: is the table still the one the plan was made from?
        let exists = existing_tables(family)?.iter().any(|t| t == table);
        if exists != snap.table_exists {
            return Err(stale);
        }
        let step = format!("reading {} under the xtables lock", cmd(family, table));
        let sock = Self::socket(family, &step)?;
        // This instantiates a missing table, as iptables-legacy does on its first write.
        let (info, bytes) = Self::read_raw_on(&sock, table, &step)?;
        let mut t = Table::decode(family, &info, &bytes).map_err(|e| decode_err(&step, e))?;
        let rules = t.rules(chain).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "{}: the table has no built-in chain {chain}; \
                 iptables-legacy tables cannot gain built-in chains",
                cmd(family, table)
            ))
        })?;
        if snap.table_exists
            && (info.num_entries != snap.generation || !same_rules(&rules, &snap.rules))
        {
            return Err(stale);
        }
        if !snap.table_exists && !same_rules(&rules, &snap.rules) {
            return Err(stale);
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
        let slots = Self::slots(snap, spec, plan)?;
        t.set_rules(chain, &slots).map_err(|e| {
            BackendError::Unsupported(format!("{} {chain}: {e}", cmd(family, table)))
        })?;
        let enc = t.encode().map_err(|e| {
            BackendError::Unsupported(format!("{} {chain}: {e}", cmd(family, table)))
        })?;

        // One SET_REPLACE; the kernel fills `old` with the replaced table's counters.
        if let Some(mut f) = self.before_replace.take() {
            f();
        }
        let mut old = vec![XtCounters::default(); info.num_entries as usize];
        let step = format!("replacing {} (IPT_SO_SET_REPLACE)", cmd(family, table));
        match sock.replace(
            table,
            t.valid_hooks,
            enc.num_entries,
            enc.hook_entry,
            enc.underflow,
            &enc.blob,
            &mut old,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Err(stale),
            Err(e) => return Err(io_err(&step, "CAP_NET_ADMIN")(e)),
        }
        self.last_generation = enc.num_entries;

        // Every kept entry gets its counters back; the kernel adds them to what the new
        // table counted since the swap.
        let counters: Vec<XtCounters> = enc
            .origin
            .iter()
            .map(|o| o.and_then(|i| old.get(i).copied()).unwrap_or_default())
            .collect();
        sock.add_counters(table, &counters).map_err(|e| {
            io_err(
                &format!(
                    "restoring the counters of {} (IPT_SO_SET_ADD_COUNTERS) after the table was replaced; \
                     the new rules are in place but the counters of kept rules restarted from 0",
                    cmd(family, table)
                ),
                "CAP_NET_ADMIN",
            )(e)
        })?;
        Ok(Applied {
            committed: true,
            changes,
            expected_generation: Some(enc.num_entries),
        })
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
