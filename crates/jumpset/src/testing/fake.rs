//! The fake kernel: nf_tables semantics in memory.
//!
//! What it keeps from the kernel, because callers rely on it:
//!
//! - per (family, table): chains (base or regular) and their rules, each rule with a
//!   handle from the table's counter (handles are never reused);
//! - one global generation, bumped by every commit that changes something (nf_tables'
//!   genid; a batch with nothing in it commits nothing);
//! - a write planned from an older generation is refused with [`BackendError::Stale`] and
//!   nothing is applied (the kernel's ERESTART on a guarded batch);
//! - [`Backend::apply`] creates the table, the base chain and the target chains exactly as
//!   the nft backend does, and fails with [`BackendError::MissingTarget`] when a target
//!   is missing and `create_chain = false`;
//! - a transaction is all or nothing; a jump to a missing chain, a delete of a missing
//!   handle, a chain still jumped to are refused (ENOENT, ENOENT, EBUSY);
//! - every commit is announced as a [`Commit`] (touched chains, the writer's port id, pid
//!   and comm) to each [`Subscription`], whose bounded queue overflows as a netlink
//!   socket's receive buffer does.
//!
//! Each [`FakeKernel`] value is a handle — one "socket" with its own port id and writer
//! identity — on a shared kernel: [`FakeKernel::connect`] makes another agent's handle.

use crate::backend::{Applied, Backend, BackendError};
use crate::notification::Commit;
use crate::plan::{Op, Plan};
use crate::snapshot::{Comment, Counters, Family, Rule, Snapshot, Verdict};
use crate::spec::ChainSpec;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

const ENOENT: i32 = 2;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const EINVAL: i32 = 22;

/// Which backend operation an injected [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// [`Backend::read`].
    Read,
    /// [`Backend::apply`] of a non-empty plan.
    Apply,
    /// [`Backend::generation`].
    Generation,
}

/// A failure to inject ([`FakeKernel::fail_next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The socket failed ([`BackendError::Io`]): a daemon reopens its backend.
    Io,
    /// The kernel refused with this errno ([`BackendError::Kernel`]).
    Errno(i32),
    /// No CAP_NET_ADMIN ([`BackendError::Permission`]).
    Permission,
    /// The xtables lock is held by another process ([`BackendError::LockHeld`], as the
    /// legacy backend's one try reports it).
    Locked,
}

impl Fault {
    fn error(&self, step: &str) -> BackendError {
        match self {
            Fault::Io => BackendError::Io {
                step: step.to_string(),
                source: std::io::Error::other("injected socket failure"),
            },
            Fault::Errno(errno) => BackendError::Kernel {
                step: step.to_string(),
                errno: *errno,
                message: std::io::Error::from_raw_os_error(*errno).to_string(),
            },
            Fault::Permission => BackendError::Permission {
                step: step.to_string(),
                capability: "CAP_NET_ADMIN",
            },
            Fault::Locked => BackendError::LockHeld {
                path: crate::backend::legacy::DEFAULT_LOCK_FILE.into(),
                waited: std::time::Duration::ZERO,
            },
        }
    }
}

/// Notifications were dropped because a [`Subscription`]'s queue was full (ENOBUFS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the notification queue overflowed (ENOBUFS): notifications were lost")]
pub struct Overflow;

#[derive(Debug, Clone)]
struct Chain {
    base: bool,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default)]
struct Table {
    next_handle: u64,
    chains: BTreeMap<String, Chain>,
}

impl Table {
    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }
}

type Tables = BTreeMap<(Family, String), Table>;

#[derive(Debug)]
struct Queue {
    id: u64,
    capacity: usize,
    items: VecDeque<Commit>,
    overflowed: bool,
}

type Hook = Box<dyn FnOnce() + Send>;

struct State {
    generation: u32,
    next_portid: u32,
    tables: Tables,
    history: Vec<Commit>,
    queues: Vec<Queue>,
    next_queue: u64,
    hooks: Vec<Hook>,
    faults: VecDeque<(Step, Fault)>,
    reads: BTreeMap<u32, u64>,
    /// Commit elsewhere right before every apply (see [`FakeKernel::churn`]).
    churn: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Writer {
    portid: u32,
    pid: u32,
    comm: String,
}

/// A handle on an in-memory nf_tables (one socket: its port id, pid and comm), usable as a
/// [`Backend`]. Clones share the kernel and the identity; [`FakeKernel::connect`] opens
/// another agent's handle on the same kernel.
#[derive(Clone)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
    me: Writer,
}

impl fmt::Debug for FakeKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FakeKernel")
            .field("portid", &self.me.portid)
            .field("comm", &self.me.comm)
            .field("generation", &s.generation)
            .field("tables", &s.tables.len())
            .finish_non_exhaustive()
    }
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel::new()
    }
}

fn kernel_error(step: &str, errno: i32, what: String) -> BackendError {
    BackendError::Kernel {
        step: step.to_string(),
        errno,
        message: format!("{what} ({})", std::io::Error::from_raw_os_error(errno)),
    }
}

/// The next genid: the kernel increments it once per commit, skipping 0.
fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

impl FakeKernel {
    /// An empty kernel (no tables, generation 1) and a handle on it as `jumpset`
    /// (pid 1000).
    pub fn new() -> Self {
        let state = State {
            generation: 1,
            next_portid: 1000,
            tables: BTreeMap::new(),
            history: Vec::new(),
            queues: Vec::new(),
            next_queue: 0,
            hooks: Vec::new(),
            faults: VecDeque::new(),
            reads: BTreeMap::new(),
            churn: false,
        };
        let k = FakeKernel {
            state: Arc::new(Mutex::new(state)),
            me: Writer {
                portid: 0,
                pid: 1000,
                comm: "jumpset".into(),
            },
        };
        k.connect(1000, "jumpset")
    }

    /// Another handle on the same kernel, with a new port id, committing as `pid`
    /// (`comm`, cut to 15 bytes as the kernel does).
    pub fn connect(&self, pid: u32, comm: &str) -> FakeKernel {
        let portid = {
            let mut s = self.lock();
            s.next_portid += 1;
            s.next_portid
        };
        let mut comm = comm.to_string();
        while comm.len() > 15 {
            comm.pop();
        }
        FakeKernel {
            state: self.state.clone(),
            me: Writer { portid, pid, comm },
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This handle's netlink port id (the `portid` of its commits' notifications).
    pub fn portid(&self) -> u32 {
        self.me.portid
    }

    /// The current generation.
    pub fn current_generation(&self) -> u32 {
        self.lock().generation
    }

    /// The rules of `family` `table` `chain`, or `None` when the chain does not exist.
    pub fn rules(&self, family: Family, table: &str, chain: &str) -> Option<Vec<Rule>> {
        let s = self.lock();
        let t = s.tables.get(&(family, table.to_string()))?;
        Some(t.chains.get(chain)?.rules.clone())
    }

    /// The chain as `iptables -S CHAIN` lists its rules: `-A CHAIN ...` lines (empty when
    /// the chain does not exist).
    pub fn listing(&self, family: Family, table: &str, chain: &str) -> Vec<String> {
        self.rules(family, table, chain)
            .unwrap_or_default()
            .iter()
            .map(|r| format!("-A {chain} {}", r.iptables()))
            .collect()
    }

    /// Whether `family` `table` exists.
    pub fn table_exists(&self, family: Family, table: &str) -> bool {
        self.lock()
            .tables
            .contains_key(&(family, table.to_string()))
    }

    /// Whether `family` `table` `chain` exists.
    pub fn chain_exists(&self, family: Family, table: &str, chain: &str) -> bool {
        self.rules(family, table, chain).is_some()
    }

    /// Every commit so far, oldest first.
    pub fn history(&self) -> Vec<Commit> {
        self.lock().history.clone()
    }

    /// How many commits the handle with port id `portid` made.
    pub fn commits_by(&self, portid: u32) -> usize {
        self.lock()
            .history
            .iter()
            .filter(|c| c.portid == portid)
            .count()
    }

    /// How many chain reads the handle with port id `portid` made.
    pub fn reads_by(&self, portid: u32) -> u64 {
        self.lock().reads.get(&portid).copied().unwrap_or(0)
    }

    /// Run `f` once, right before the next [`Backend::apply`] of a non-empty plan (by any
    /// handle) checks its generation: a writer that gets in between our read and our
    /// write. Writes `f` makes through another handle make that apply stale.
    pub fn before_next_apply(&self, f: impl FnOnce() + Send + 'static) {
        self.lock().hooks.push(Box::new(f));
    }

    /// Unrelated churn: while on, another writer (pid 7, `churn`) commits a rule to ip
    /// mangle CHURN right before every apply of a non-empty plan, after its read — as a
    /// busy agent committing elsewhere faster than a long chain is read and written
    /// back (the generation is global): every guarded write is then stale.
    pub fn churn(&self, on: bool) {
        self.lock().churn = on;
    }

    fn churn_now(&self) {
        if !self.lock().churn {
            return;
        }
        let w = self.connect(7, "churn");
        let _ = w.transaction(|tx| {
            if !tx
                .tables
                .get(&(Family::Ip, "mangle".to_string()))
                .is_some_and(|t| t.chains.contains_key("CHURN"))
            {
                tx.new_chain(Family::Ip, "mangle", "CHURN")?;
            }
            tx.append(
                Family::Ip,
                "mangle",
                "CHURN",
                crate::testing::rule(Verdict::Accept),
            )
            .map(drop)
        });
    }

    /// Make the next `step` (by any handle) fail with `fault`. Faults queue up, each
    /// consumed by one operation.
    pub fn fail_next(&self, step: Step, fault: Fault) {
        self.lock().faults.push_back((step, fault));
    }

    fn fault(&self, step: Step, what: &str) -> Result<(), BackendError> {
        let mut s = self.lock();
        match s.faults.iter().position(|(st, _)| *st == step) {
            Some(i) => {
                let (_, f) = s.faults.remove(i).expect("position is in range");
                Err(f.error(what))
            }
            None => Ok(()),
        }
    }

    /// Listen to commit notifications from now on, queueing at most `capacity` (more are
    /// dropped and the next [`Subscription::recv`] reports [`Overflow`]).
    pub fn subscribe(&self, capacity: usize) -> Subscription {
        let mut s = self.lock();
        let id = s.next_queue;
        s.next_queue += 1;
        s.queues.push(Queue {
            id,
            capacity,
            items: VecDeque::new(),
            overflowed: false,
        });
        Subscription {
            state: self.state.clone(),
            id,
        }
    }

    /// Make changes as one transaction committed by this handle: all of them or none.
    /// Returns the generation after it (unchanged when `f` changed nothing).
    pub fn transaction(
        &self,
        f: impl FnOnce(&mut Tx) -> Result<(), BackendError>,
    ) -> Result<u32, BackendError> {
        let mut s = self.lock();
        let mut tx = Tx {
            tables: s.tables.clone(),
            commit: Commit::new(
                0,
                self.me.portid,
                Some(self.me.pid),
                Some(self.me.comm.clone()),
            ),
            changes: 0,
        };
        f(&mut tx)?;
        Ok(s.commit(tx))
    }

    /// `iptables -t TABLE -I CHAIN POSITION RULE` (1-based), creating the table and the
    /// built-in chain when missing, as iptables-nft does. Returns the rule's handle.
    pub fn insert(
        &self,
        family: Family,
        table: &str,
        chain: &str,
        position: usize,
        rule: Rule,
    ) -> Result<u64, BackendError> {
        let mut handle = 0;
        self.transaction(|tx| {
            handle = tx.insert(family, table, chain, position, rule)?;
            Ok(())
        })?;
        Ok(handle)
    }

    /// `iptables -t TABLE -A CHAIN RULE`. Returns the rule's handle.
    pub fn append(
        &self,
        family: Family,
        table: &str,
        chain: &str,
        rule: Rule,
    ) -> Result<u64, BackendError> {
        let mut handle = 0;
        self.transaction(|tx| {
            handle = tx.append(family, table, chain, rule)?;
            Ok(())
        })?;
        Ok(handle)
    }

    /// Delete the rule with `handle` (`nft delete rule ... handle H`).
    pub fn delete(
        &self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Result<(), BackendError> {
        self.transaction(|tx| tx.delete(family, table, chain, handle))
            .map(drop)
    }

    /// `iptables -t TABLE -D CHAIN POSITION` (1-based). Returns the deleted rule.
    pub fn delete_at(
        &self,
        family: Family,
        table: &str,
        chain: &str,
        position: usize,
    ) -> Result<Rule, BackendError> {
        let mut out = None;
        self.transaction(|tx| {
            out = Some(tx.delete_at(family, table, chain, position)?);
            Ok(())
        })?;
        Ok(out.expect("set by the transaction"))
    }

    /// `iptables -t TABLE -F CHAIN`.
    pub fn flush(&self, family: Family, table: &str, chain: &str) -> Result<(), BackendError> {
        self.transaction(|tx| tx.flush(family, table, chain))
            .map(drop)
    }

    /// `iptables -t TABLE -N CHAIN` (creating the table when missing).
    pub fn new_chain(&self, family: Family, table: &str, chain: &str) -> Result<(), BackendError> {
        self.transaction(|tx| tx.new_chain(family, table, chain))
            .map(drop)
    }

    /// `nft delete chain FAMILY TABLE CHAIN`: its rules go with it; refused (EBUSY) while a
    /// rule jumps to it.
    pub fn delete_chain(
        &self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<(), BackendError> {
        self.transaction(|tx| tx.delete_chain(family, table, chain))
            .map(drop)
    }

    /// `nft rename chain FAMILY TABLE CHAIN NEW`: the rules jumping to it now jump to
    /// `new` (a rule refers to the chain, not to its name).
    pub fn rename_chain(
        &self,
        family: Family,
        table: &str,
        chain: &str,
        new: &str,
    ) -> Result<(), BackendError> {
        self.transaction(|tx| tx.rename_chain(family, table, chain, new))
            .map(drop)
    }

    /// `nft delete table FAMILY TABLE`: everything in it goes.
    pub fn delete_table(&self, family: Family, table: &str) -> Result<(), BackendError> {
        self.transaction(|tx| tx.delete_table(family, table))
            .map(drop)
    }
}

impl State {
    /// Commit `tx`: new generation, history, notifications. Nothing when it is empty.
    fn commit(&mut self, tx: Tx) -> u32 {
        if tx.changes == 0 {
            return self.generation;
        }
        self.generation = next_generation(self.generation);
        self.tables = tx.tables;
        let mut c = tx.commit;
        c.generation = self.generation;
        for q in &mut self.queues {
            if q.items.len() >= q.capacity {
                q.overflowed = true;
            } else {
                q.items.push_back(c.clone());
            }
        }
        self.history.push(c);
        self.generation
    }
}

/// One transaction in the making ([`FakeKernel::transaction`]): changes to a copy of the
/// ruleset, committed together or not at all.
pub struct Tx {
    tables: Tables,
    commit: Commit,
    changes: usize,
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("changes", &self.changes)
            .finish_non_exhaustive()
    }
}

fn missing(what: String) -> BackendError {
    kernel_error("fake kernel", ENOENT, what)
}

impl Tx {
    fn table_mut(&mut self, family: Family, table: &str) -> Result<&mut Table, BackendError> {
        self.tables
            .get_mut(&(family, table.to_string()))
            .ok_or_else(|| missing(format!("no table {family} {table}")))
    }

    fn chain_mut(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<&mut Chain, BackendError> {
        self.table_mut(family, table)?
            .chains
            .get_mut(chain)
            .ok_or_else(|| missing(format!("no chain {family} {table} {chain}")))
    }

    /// Create `family` `table` unless it exists.
    pub fn ensure_table(&mut self, family: Family, table: &str) {
        if let std::collections::btree_map::Entry::Vacant(e) =
            self.tables.entry((family, table.to_string()))
        {
            e.insert(Table::default());
            self.changes += 1;
        }
    }

    /// Create the built-in chain `chain` of `table` (and the table) unless it exists, as
    /// iptables-nft does before its first write there.
    pub fn ensure_base_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<(), BackendError> {
        self.ensure_table(family, table);
        let t = self.table_mut(family, table)?;
        if t.chains.contains_key(chain) {
            return Ok(());
        }
        if crate::iptables::base_chain(table, chain).is_none() {
            return Err(BackendError::Unsupported(format!(
                "{table} {chain} is not an iptables built-in chain; jumpset does not create it"
            )));
        }
        t.handle();
        t.chains.insert(
            chain.to_string(),
            Chain {
                base: true,
                rules: Vec::new(),
            },
        );
        self.commit.touch_chain(family, table, chain);
        self.changes += 1;
        Ok(())
    }

    /// `-N CHAIN`: a regular chain (the table is created when missing); EEXIST when it is
    /// there.
    pub fn new_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<(), BackendError> {
        self.ensure_table(family, table);
        let t = self.table_mut(family, table)?;
        if t.chains.contains_key(chain) {
            return Err(kernel_error(
                "fake kernel",
                EEXIST,
                format!("chain {family} {table} {chain} exists"),
            ));
        }
        t.handle();
        t.chains.insert(
            chain.to_string(),
            Chain {
                base: false,
                rules: Vec::new(),
            },
        );
        self.commit.touch_chain(family, table, chain);
        self.changes += 1;
        Ok(())
    }

    /// Rename a regular chain: the rules jumping to it now jump to `new`. ENOENT when it
    /// is missing, EEXIST when `new` exists, EINVAL for a base chain.
    pub fn rename_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        new: &str,
    ) -> Result<(), BackendError> {
        let t = self.table_mut(family, table)?;
        if t.chains.contains_key(new) {
            return Err(kernel_error(
                "fake kernel",
                EEXIST,
                format!("chain {family} {table} {new} exists"),
            ));
        }
        let c = t
            .chains
            .remove(chain)
            .ok_or_else(|| missing(format!("no chain {family} {table} {chain}")))?;
        if c.base {
            t.chains.insert(chain.to_string(), c);
            return Err(kernel_error(
                "fake kernel",
                EINVAL,
                format!("{family} {table} {chain} is a base chain"),
            ));
        }
        t.chains.insert(new.to_string(), c);
        for c in t.chains.values_mut() {
            for r in &mut c.rules {
                if r.target() == Some(chain) {
                    r.verdict = match &r.verdict {
                        Verdict::Goto(_) => Verdict::Goto(new.to_string()),
                        _ => Verdict::Jump(new.to_string()),
                    };
                }
            }
        }
        // As nf_tables announces it: a new chain of the new name.
        self.commit.touch_chain(family, table, new);
        self.changes += 1;
        Ok(())
    }

    /// Insert `rule` at 1-based `position` (the kernel assigns its handle; the table and a
    /// built-in chain are created when missing). A jump to a missing chain is refused.
    pub fn insert(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        position: usize,
        mut rule: Rule,
    ) -> Result<u64, BackendError> {
        if crate::iptables::base_chain(table, chain).is_some() {
            self.ensure_base_chain(family, table, chain)?;
        }
        let t = self.table_mut(family, table)?;
        if let Some(target) = rule.target() {
            if !t.chains.contains_key(target) {
                return Err(missing(format!(
                    "the jump target {family} {table} {target} does not exist"
                )));
            }
        }
        let len = t
            .chains
            .get(chain)
            .ok_or_else(|| missing(format!("no chain {family} {table} {chain}")))?
            .rules
            .len();
        if position == 0 || position > len + 1 {
            return Err(kernel_error(
                "fake kernel",
                EINVAL,
                format!("position {position} in a chain of {len} rules"),
            ));
        }
        rule.handle = t.handle();
        let handle = rule.handle;
        let noted = rule.clone();
        t.chains
            .get_mut(chain)
            .expect("checked above")
            .rules
            .insert(position - 1, rule);
        self.commit.touch_rule(family, table, chain, &noted, true);
        self.changes += 1;
        Ok(handle)
    }

    /// Append `rule` (see [`Tx::insert`]).
    pub fn append(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        rule: Rule,
    ) -> Result<u64, BackendError> {
        let len = if crate::iptables::base_chain(table, chain).is_some() {
            self.ensure_base_chain(family, table, chain)?;
            self.chain_mut(family, table, chain)?.rules.len()
        } else {
            self.chain_mut(family, table, chain)?.rules.len()
        };
        self.insert(family, table, chain, len + 1, rule)
    }

    /// Delete the rule with `handle`; ENOENT when there is none.
    pub fn delete(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> Result<(), BackendError> {
        let c = self.chain_mut(family, table, chain)?;
        let i = c
            .rules
            .iter()
            .position(|r| r.handle == handle)
            .ok_or_else(|| {
                missing(format!(
                    "no rule with handle {handle} in {family} {table} {chain}"
                ))
            })?;
        let r = c.rules.remove(i);
        self.commit.touch_rule(family, table, chain, &r, false);
        self.changes += 1;
        Ok(())
    }

    /// Delete the rule at 1-based `position`; returns it.
    pub fn delete_at(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        position: usize,
    ) -> Result<Rule, BackendError> {
        let c = self.chain_mut(family, table, chain)?;
        if position == 0 || position > c.rules.len() {
            return Err(missing(format!(
                "no rule at position {position} of {family} {table} {chain} ({} rules)",
                c.rules.len()
            )));
        }
        let r = c.rules.remove(position - 1);
        self.commit.touch_rule(family, table, chain, &r, false);
        self.changes += 1;
        Ok(r)
    }

    /// Delete every rule of the chain.
    pub fn flush(&mut self, family: Family, table: &str, chain: &str) -> Result<(), BackendError> {
        let c = self.chain_mut(family, table, chain)?;
        let gone = std::mem::take(&mut c.rules);
        for r in &gone {
            self.commit.touch_rule(family, table, chain, r, false);
            self.changes += 1;
        }
        Ok(())
    }

    /// Delete the chain and its rules; EBUSY while another rule jumps to it.
    pub fn delete_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<(), BackendError> {
        let t = self.table_mut(family, table)?;
        let used = t
            .chains
            .iter()
            .filter(|(name, _)| name.as_str() != chain)
            .any(|(_, c)| c.rules.iter().any(|r| r.target() == Some(chain)));
        if used {
            return Err(kernel_error(
                "fake kernel",
                EBUSY,
                format!("chain {family} {table} {chain} is jumped to"),
            ));
        }
        let c = t
            .chains
            .remove(chain)
            .ok_or_else(|| missing(format!("no chain {family} {table} {chain}")))?;
        for r in &c.rules {
            self.commit.touch_rule(family, table, chain, r, false);
        }
        self.commit.touch_chain(family, table, chain);
        self.changes += 1;
        Ok(())
    }

    /// Delete the table and everything in it.
    pub fn delete_table(&mut self, family: Family, table: &str) -> Result<(), BackendError> {
        let t = self
            .tables
            .remove(&(family, table.to_string()))
            .ok_or_else(|| missing(format!("no table {family} {table}")))?;
        for (name, c) in &t.chains {
            for r in &c.rules {
                self.commit.touch_rule(family, table, name, r, false);
            }
        }
        self.commit.touch(family, table, None, None);
        self.changes += 1;
        Ok(())
    }
}

/// Commit notifications of a [`FakeKernel`], as a netlink socket subscribed to the
/// nf_tables group receives them ([`FakeKernel::subscribe`]).
pub struct Subscription {
    state: Arc<Mutex<State>>,
    id: u64,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

impl Subscription {
    /// The next notification, without waiting: `None` when none is queued, `Err` once
    /// after notifications were dropped (then the queued ones follow).
    pub fn recv(&self) -> Option<Result<Commit, Overflow>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let q = s.queues.iter_mut().find(|q| q.id == self.id)?;
        if q.overflowed {
            q.overflowed = false;
            return Some(Err(Overflow));
        }
        q.items.pop_front().map(Ok)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.queues.retain(|q| q.id != self.id);
    }
}

impl Backend for FakeKernel {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn read(&mut self, family: Family, table: &str, chain: &str) -> Result<Snapshot, BackendError> {
        self.fault(Step::Read, &format!("reading {family} {table} {chain}"))?;
        let mut s = self.lock();
        *s.reads.entry(self.me.portid).or_default() += 1;
        let t = s.tables.get(&(family, table.to_string()));
        let c = t.and_then(|t| t.chains.get(chain));
        Ok(Snapshot {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
            generation: s.generation,
            table_exists: t.is_some(),
            chain_exists: c.is_some(),
            rules: c.map(|c| c.rules.clone()).unwrap_or_default(),
        })
    }

    fn apply(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        self.apply_tx(snap, spec, plan, true)
    }

    /// As the nft backend: no generation guard; a missing handle (deleted or inserted
    /// before) refuses the whole transaction, reported as stale. The table and the base
    /// chain are only created by a guarded apply.
    fn apply_anchored(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        let guarded = !(snap.table_exists && snap.chain_exists);
        match self.apply_tx(snap, spec, plan, guarded) {
            Err(BackendError::Kernel { errno: ENOENT, .. }) if !guarded => {
                Err(BackendError::Stale {
                    planned: snap.generation,
                })
            }
            r => r,
        }
    }

    fn generation(&mut self) -> Result<u32, BackendError> {
        self.fault(Step::Generation, "reading the ruleset generation (GETGEN)")?;
        Ok(self.lock().generation)
    }
}

impl FakeKernel {
    fn apply_tx(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
        guarded: bool,
    ) -> Result<Applied, BackendError> {
        if plan.ops.is_empty() {
            return Ok(Applied {
                committed: false,
                changes: 0,
                expected_generation: None,
            });
        }
        let (family, table, chain) = (snap.family, snap.table.as_str(), snap.chain.as_str());
        self.fault(Step::Apply, "committing the batch")?;
        self.churn_now();
        let hooks = std::mem::take(&mut self.lock().hooks);
        for h in hooks {
            h();
        }
        let mut s = self.lock();
        if guarded && s.generation != snap.generation {
            return Err(BackendError::Stale {
                planned: snap.generation,
            });
        }
        let mut tx = Tx {
            tables: s.tables.clone(),
            commit: Commit::new(
                0,
                self.me.portid,
                Some(self.me.pid),
                Some(self.me.comm.clone()),
            ),
            changes: 0,
        };
        if let Some(c) = tx
            .tables
            .get(&(family, table.to_string()))
            .and_then(|t| t.chains.get(chain))
        {
            if !c.base {
                return Err(BackendError::Unsupported(format!(
                    "{family} {table} {chain} exists but is not the base chain iptables-nft makes: it is a regular chain, not a base chain"
                )));
            }
        }
        // Target chains to create: as the nft backend, only for inserted jumps whose
        // target no rule of the chain already jumps to.
        let mut create: Vec<&str> = Vec::new();
        for op in &plan.ops {
            let Op::Insert { jump, .. } = op else {
                continue;
            };
            let js = &spec.jumps[*jump];
            let t = js.target.as_str();
            if create.contains(&t) || snap.rules.iter().any(|r| r.target() == Some(t)) {
                continue;
            }
            let exists = tx
                .tables
                .get(&(family, table.to_string()))
                .is_some_and(|tb| tb.chains.contains_key(t));
            if !exists {
                if !js.create_chain {
                    return Err(BackendError::MissingTarget {
                        family,
                        table: table.into(),
                        chain: t.into(),
                    });
                }
                create.push(t);
            }
        }
        tx.ensure_base_chain(family, table, chain)?;
        for c in create {
            tx.new_chain(family, table, c)?;
        }
        for op in &plan.ops {
            match *op {
                Op::Delete { handle, .. } => tx.delete(family, table, chain, handle)?,
                Op::Insert {
                    jump,
                    before_handle,
                    ..
                } => {
                    let js = &spec.jumps[jump];
                    let rule = Rule {
                        handle: 0,
                        comment: Some(Comment {
                            bytes: js.comment.as_bytes().to_vec(),
                            encoding: js.encoding,
                        }),
                        matches: Vec::new(),
                        counters: Some(Counters::default()),
                        verdict: Verdict::Jump(js.target.clone()),
                    };
                    let rules = &tx.chain_mut(family, table, chain)?.rules;
                    let position = match before_handle {
                        Some(h) => {
                            rules.iter().position(|r| r.handle == h).ok_or_else(|| {
                                missing(format!("no rule with handle {h} to insert before"))
                            })? + 1
                        }
                        None => rules.len() + 1,
                    };
                    tx.insert(family, table, chain, position, rule)?;
                }
            }
        }
        let changes = tx.changes;
        let before = s.generation;
        s.commit(tx);
        Ok(Applied {
            committed: true,
            changes,
            expected_generation: guarded.then(|| next_generation(before)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{reconcile, Goal, ReconcileError};
    use crate::spec::Config;
    use crate::testing::{jump, rule};

    const IP: Family = Family::Ip;

    fn spec(create_chain: bool) -> ChainSpec {
        Config::from_toml(&format!(
            r#"
families = ["ip"]
[[chain]]
table = "nat"
chain = "PREROUTING"
  [[chain.jump]]
  target = "OVN-PREROUTING"
  comment = "kube-ovn prerouting rules"
  after = ["cali-PREROUTING"]
  before = ["KUBE-SERVICES"]
  create_chain = {create_chain}
"#
        ))
        .unwrap()
        .chains
        .remove(0)
    }

    /// calico's and kube-proxy's jumps (our jump goes between them).
    fn scene(k: &FakeKernel) {
        k.transaction(|tx| {
            tx.new_chain(IP, "nat", "cali-PREROUTING")?;
            tx.new_chain(IP, "nat", "KUBE-SERVICES")?;
            tx.append(
                IP,
                "nat",
                "PREROUTING",
                jump("cali:6gwbT8clXdHdC1b1", "cali-PREROUTING"),
            )?;
            tx.append(
                IP,
                "nat",
                "PREROUTING",
                jump("kubernetes service portals", "KUBE-SERVICES"),
            )?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_reconcile_creates_what_is_missing_and_commits_once() {
        let mut k = FakeKernel::new();
        let other = k.connect(42, "iptables-nft");
        let mut w = other.clone();
        scene(&other);
        let g0 = k.current_generation();
        let out = reconcile(&mut k, IP, &spec(true), Goal::Converge).unwrap();
        assert!(out.committed);
        assert_eq!(out.generation_after, g0 + 1);
        assert!(
            k.chain_exists(IP, "nat", "OVN-PREROUTING"),
            "target created"
        );
        assert_eq!(
            k.listing(IP, "nat", "PREROUTING"),
            [
                r#"-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING"#,
                r#"-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#,
                r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
            ]
        );
        // Handles are unique and never reused.
        let rules = k.rules(IP, "nat", "PREROUTING").unwrap();
        let mut hs: Vec<u64> = rules.iter().map(|r| r.handle).collect();
        hs.sort();
        hs.dedup();
        assert_eq!(hs.len(), 3);
        // Converged: the next reconcile commits nothing.
        let g1 = k.current_generation();
        let again = reconcile(&mut k, IP, &spec(true), Goal::Converge).unwrap();
        assert!(!again.committed);
        assert_eq!(k.current_generation(), g1);
        // Another handle's view is the same kernel.
        assert_eq!(w.read(IP, "nat", "PREROUTING").unwrap().rules, rules);
        assert_eq!(k.commits_by(k.portid()), 1);
        assert_eq!(k.commits_by(other.portid()), 1);
    }

    #[test]
    fn an_empty_kernel_gets_table_and_base_chain_and_a_missing_target_is_refused() {
        let mut k = FakeKernel::new();
        let err = reconcile(&mut k, IP, &spec(false), Goal::Converge).unwrap_err();
        assert!(
            matches!(
                &err,
                ReconcileError::Backend(BackendError::MissingTarget { chain, .. }) if chain == "OVN-PREROUTING"
            ),
            "{err}"
        );
        assert!(!k.table_exists(IP, "nat"), "nothing applied");
        assert_eq!(k.current_generation(), 1);
        let out = reconcile(&mut k, IP, &spec(true), Goal::Converge).unwrap();
        assert!(out.committed && !out.before.table_exists);
        assert!(k.chain_exists(IP, "nat", "PREROUTING"));
        assert_eq!(k.listing(IP, "nat", "PREROUTING").len(), 1);
    }

    #[test]
    fn a_write_planned_from_an_old_generation_is_refused_and_nothing_applied() {
        let mut k = FakeKernel::new();
        let other = k.connect(7, "kube-proxy");
        scene(&other);
        let snap = k.read(IP, "nat", "PREROUTING").unwrap();
        let plan = crate::plan::plan(&snap, &spec(true));
        other
            .append(IP, "nat", "PREROUTING", rule(Verdict::Accept))
            .unwrap();
        let before = k.listing(IP, "nat", "PREROUTING");
        let g = k.current_generation();
        let err = k.apply(&snap, &spec(true), &plan).unwrap_err();
        assert!(matches!(err, BackendError::Stale { planned } if planned == snap.generation));
        assert_eq!(k.listing(IP, "nat", "PREROUTING"), before);
        assert_eq!(k.current_generation(), g);
        assert!(!k.chain_exists(IP, "nat", "OVN-PREROUTING"));
    }

    #[test]
    fn a_writer_injected_before_the_apply_makes_reconcile_replan() {
        let mut k = FakeKernel::new();
        let other = k.connect(7, "kube-proxy");
        scene(&other);
        let intruder = other.clone();
        k.before_next_apply(move || {
            intruder
                .insert(IP, "nat", "PREROUTING", 1, rule(Verdict::Accept))
                .unwrap();
        });
        let out = reconcile(&mut k, IP, &spec(true), Goal::Converge).unwrap();
        assert_eq!(out.retries, 1, "one stale write, re-planned");
        let l = k.listing(IP, "nat", "PREROUTING");
        assert_eq!(l.len(), 4, "{l:?}");
        assert_eq!(
            l[0], "-A PREROUTING -j ACCEPT",
            "the intruder's rule is kept"
        );
    }

    #[test]
    fn commits_are_announced_with_writer_and_touched_chains_and_overflow() {
        let k = FakeKernel::new();
        let sub = k.subscribe(2);
        let other = k.connect(4242, "iptables-nft-restore-too-long");
        scene(&other);
        let c = sub.recv().unwrap().unwrap();
        assert_eq!(
            (c.portid, c.pid, c.comm.as_deref()),
            (other.portid(), Some(4242), Some("iptables-nft-re"))
        );
        assert_eq!(c.generation, k.current_generation());
        // The chains it created (the two user chains, the base chain), and whose rules
        // moved where.
        let touched: Vec<(&str, bool, &[&str])> = c
            .touched
            .iter()
            .map(|t| {
                (
                    t.chain.as_deref().unwrap_or("*"),
                    t.chain_changed,
                    t.agents.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            touched,
            [
                ("cali-PREROUTING", true, &[][..]),
                ("KUBE-SERVICES", true, &[][..]),
                ("PREROUTING", true, &["calico", "kube-proxy"][..]),
            ],
            "{c:?}"
        );
        assert!(sub.recv().is_none());
        // Three more commits into a queue of two: the third is lost and says so.
        for _ in 0..3 {
            other
                .append(IP, "nat", "PREROUTING", rule(Verdict::Accept))
                .unwrap();
        }
        assert_eq!(sub.recv(), Some(Err(Overflow)));
        assert!(sub.recv().unwrap().is_ok());
        assert!(sub.recv().unwrap().is_ok());
        assert!(sub.recv().is_none());
        other.delete_table(IP, "nat").unwrap();
        let c = sub.recv().unwrap().unwrap();
        let chains: Vec<(Option<&str>, &[&str])> = c
            .touched
            .iter()
            .map(|t| (t.chain.as_deref(), t.agents.as_slice()))
            .collect();
        assert_eq!(
            chains,
            [
                (Some("PREROUTING"), &["calico", "kube-proxy"][..]),
                (None, &[][..])
            ]
        );
    }

    #[test]
    fn transactions_are_all_or_nothing_and_the_kernel_checks_what_it_checks() {
        let k = FakeKernel::new();
        scene(&k);
        let g = k.current_generation();
        let listing = k.listing(IP, "nat", "PREROUTING");
        let err = k
            .transaction(|tx| {
                tx.flush(IP, "nat", "PREROUTING")?;
                tx.append(IP, "nat", "PREROUTING", jump("x", "NOWHERE"))?;
                Ok(())
            })
            .unwrap_err();
        assert!(
            matches!(err, BackendError::Kernel { errno: ENOENT, .. }),
            "{err}"
        );
        assert_eq!(
            (k.current_generation(), k.listing(IP, "nat", "PREROUTING")),
            (g, listing)
        );
        assert!(matches!(
            k.delete_chain(IP, "nat", "KUBE-SERVICES"),
            Err(BackendError::Kernel { errno: EBUSY, .. })
        ));
        assert!(matches!(
            k.new_chain(IP, "nat", "KUBE-SERVICES"),
            Err(BackendError::Kernel { errno: EEXIST, .. })
        ));
        assert_eq!(
            k.transaction(|_| Ok(())).unwrap(),
            g,
            "an empty batch commits nothing"
        );
        let first = k.delete_at(IP, "nat", "PREROUTING", 1).unwrap();
        assert_eq!(first.target(), Some("cali-PREROUTING"));
        k.flush(IP, "nat", "PREROUTING").unwrap();
        assert_eq!(k.rules(IP, "nat", "PREROUTING"), Some(vec![]));
        k.delete_chain(IP, "nat", "KUBE-SERVICES").unwrap();
        assert!(!k.chain_exists(IP, "nat", "KUBE-SERVICES"));
    }

    #[test]
    fn injected_faults_hit_one_operation_each_and_a_regular_chain_is_refused() {
        let mut k = FakeKernel::new();
        k.fail_next(Step::Read, Fault::Errno(16));
        k.fail_next(Step::Read, Fault::Io);
        k.fail_next(Step::Generation, Fault::Permission);
        assert!(matches!(
            k.read(IP, "nat", "PREROUTING"),
            Err(BackendError::Kernel { errno: 16, .. })
        ));
        assert!(matches!(
            k.read(IP, "nat", "PREROUTING"),
            Err(BackendError::Io { .. })
        ));
        assert!(k.read(IP, "nat", "PREROUTING").is_ok());
        assert!(matches!(
            k.generation(),
            Err(BackendError::Permission { .. })
        ));
        assert_eq!(k.reads_by(k.portid()), 1, "failed reads do not count");
        // A chain called PREROUTING that nft made as a regular chain: left alone.
        k.new_chain(IP, "nat", "PREROUTING").unwrap();
        let err = reconcile(&mut k, IP, &spec(true), Goal::Converge).unwrap_err();
        assert!(
            matches!(err, ReconcileError::Backend(BackendError::Unsupported(_))),
            "{err}"
        );
    }
}
