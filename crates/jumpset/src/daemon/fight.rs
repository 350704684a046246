//! The daemon's pure timing logic: debounce, exponential backoff with jitter, and when
//! each chain may be reconciled. No I/O and no clock of its own: every function takes
//! `now`, so tests drive it with a fake clock and the engine with the one it is given.
//!
//! One [`Sched`] per managed (chain, family). It decides *when* a reconcile may run:
//!
//! - a foreign change marks the chain dirty and is **debounced** (a few ms, so an agent's
//!   burst of commits is read once);
//! - a resync, a poll, the start and a reload mark it dirty with no debounce;
//! - after a failed reconcile it waits an **error backoff** (exponential, jittered, capped);
//! - its **fight policy** ([`policy`](super::policy)) holds a repair until the writer
//!   that triggered it is quiet, and while a writer keeps undoing the placement yields the
//!   chain to it.

use super::ident::{self, Identity};
use super::policy::{FightEvent, FightParams, FightPolicy};
use std::time::{Duration, Instant};

/// The daemon's timing parameters. [`Tuning::default`] is what `jumpset daemon` uses;
/// tests may loosen them (e.g. disable fight detection to measure repair latency) by
/// changing fields of the default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Tuning {
    /// Quiet time after a foreign change before the reconcile runs.
    pub debounce: Duration,
    /// Longest a stream of changes can postpone the reconcile.
    pub debounce_max: Duration,
    /// The fight policy's parameters.
    pub fight: FightParams,
    /// First wait after a failed reconcile.
    pub error_backoff_base: Duration,
    /// Longest wait after failed reconciles.
    pub error_backoff_cap: Duration,
    /// Jitter: each backoff is lengthened by a random fraction in `[0, jitter)`.
    pub jitter: f64,
    /// Receive buffer of the notification socket (SO_RCVBUFFORCE).
    pub monitor_rcvbuf: usize,
    /// First wait before trying the xtables lock again when another process holds it
    /// (doubling up to `lock_retry_cap`, until `xtables_lock_timeout` has passed).
    pub lock_retry: Duration,
    /// Longest wait between two tries of the xtables lock.
    pub lock_retry_cap: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            debounce: Duration::from_millis(2),
            debounce_max: Duration::from_millis(50),
            fight: FightParams::default(),
            error_backoff_base: Duration::from_millis(100),
            error_backoff_cap: Duration::from_secs(30),
            jitter: 0.2,
            monitor_rcvbuf: 4 << 20,
            lock_retry: Duration::from_millis(20),
            lock_retry_cap: Duration::from_millis(500),
        }
    }
}

impl Tuning {
    /// No waiting for other writers and no fight detection: every undo is repaired at
    /// once, after the debounce (for latency measurements).
    pub fn without_fight_detection(mut self) -> Self {
        self.fight = self.fight.disabled();
        self
    }
}

/// A small deterministic PRNG (xorshift64*) for jitter; seeded by the caller.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator from `seed` (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Jitter(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A seed from the clock and the pid, for production (tests pass fixed seeds).
    pub fn entropy_seed() -> u64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        t ^ (u64::from(std::process::id()) << 32)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `d` lengthened by a random fraction in `[0, frac)`.
    pub fn stretch(&mut self, d: Duration, frac: f64) -> Duration {
        d.mul_f64(1.0 + frac.max(0.0) * self.unit())
    }
}

/// Exponential backoff: `base`, `2·base`, `4·base`, ... capped at `cap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    level: u32,
}

impl Backoff {
    /// A backoff at its first step.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            level: 0,
        }
    }

    /// The next delay (before jitter), and one step up.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .checked_mul(1u32.checked_shl(self.level.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        self.level = self.level.saturating_add(1);
        d
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.level = 0;
    }
}

/// Debounce: due `debounce` after the last poke, but never later than `max` after the
/// first one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Debounce {
    first: Option<Instant>,
    deadline: Option<Instant>,
}

impl Debounce {
    /// A change happened at `now`.
    pub fn poke(&mut self, now: Instant, debounce: Duration, max: Duration) {
        let first = *self.first.get_or_insert(now);
        self.deadline = Some((now + debounce).min(first + max));
    }

    /// Due immediately (resync, start).
    pub fn fire_now(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.deadline = Some(now);
    }

    /// When it fires, if armed.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Disarm.
    pub fn clear(&mut self) {
        *self = Debounce::default();
    }
}

/// Who made a change, as nf_tables reports it (NEWGEN), as `/proc` showed it at
/// notification time ([`ident`]) and as its rules suggest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    /// PID of the committing task (in the initial PID namespace).
    pub pid: Option<u32>,
    /// Its comm (at most 15 characters).
    pub name: Option<String>,
    /// Agents whose rules the change touched (`snapshot::agent_of`).
    pub agents: Vec<&'static str>,
    /// What `/proc` showed of the process when the notification arrived.
    pub process: Identity,
}

impl Writer {
    /// `pid 123 (iptables-nft), parent 100 (kube-ovn-daemon) `…`, container …`, or a
    /// sentence saying the writer is unknown.
    pub fn describe(&self) -> String {
        let head = match (&self.pid, &self.name) {
            (Some(p), Some(n)) => format!("pid {p} ({n})"),
            (Some(p), None) => format!("pid {p}"),
            (None, Some(n)) => format!("process {n}"),
            (None, None) => return "an unidentified writer".to_string(),
        };
        format!("{head}{}", self.process.details())
    }

    /// [`Writer::describe`] without command lines: `pid 123 (iptables-nft), parent 100
    /// (kube-ovn-daemon), container …` (for `STATUS=`).
    pub fn summary(&self) -> String {
        match (&self.pid, &self.name) {
            (Some(p), Some(n)) => format!("pid {p} ({n}){}", self.process.summary()),
            _ => self.describe(),
        }
    }

    /// What writers are told apart by: the container, the parent process or the unit
    /// `/proc` showed ([`Identity::key`]), else the comm (every process of that name is
    /// then one writer), else `unknown`.
    pub fn key(&self) -> String {
        self.process
            .key()
            .or_else(|| self.name.as_ref().map(|n| format!("process {n}")))
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The agent for a metric label: one of `ident::KNOWN_AGENTS`, `other` or
    /// `unknown`.
    pub fn agent(&self) -> &'static str {
        ident::agent_name(self.name.as_deref(), &self.process)
    }

    /// The agents, as `kube-ovn, calico`, or `unknown`.
    pub fn agents_text(&self) -> String {
        if self.agents.is_empty() {
            "unknown".to_string()
        } else {
            self.agents.join(", ")
        }
    }
}

/// Why a chain is due for a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The daemon started.
    Start,
    /// The config was reloaded.
    Reload,
    /// The periodic full re-read, the legacy poll, or a notification overflow.
    Resync,
    /// Another writer changed the chain.
    Change(Writer),
}

impl Cause {
    /// Whether a repair for this cause undid someone else's change (ours never trigger).
    fn is_undo(&self) -> bool {
        matches!(self, Cause::Resync | Cause::Change(_))
    }

    /// Merge a later cause into this one: a change outranks a resync, which outranks
    /// start and reload (those are our own doing).
    fn merge(&mut self, later: Cause) {
        let rank = |c: &Cause| match c {
            Cause::Start | Cause::Reload => 0,
            Cause::Resync => 1,
            Cause::Change(_) => 2,
        };
        if rank(&later) >= rank(self) {
            *self = later;
        }
    }
}

/// What a reconcile came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Nothing to write (in order, or as close as a conflict allows).
    Clean,
    /// A transaction was committed.
    Repaired,
    /// It failed; try again later.
    Failed,
    /// It could not write because the xtables lock was busy; try again soon (not a
    /// failure until `xtables_lock_timeout` has passed).
    Busy,
}

/// When one (chain, family) may be reconciled next.
#[derive(Debug)]
pub struct Sched {
    dirty: Option<Cause>,
    debounce: Debounce,
    /// After a failed reconcile: not before this.
    error_until: Option<Instant>,
    policy: Box<dyn FightPolicy>,
    errors: Backoff,
    /// When the first change not yet repaired was noticed (for the repair latency).
    changed_at: Option<Instant>,
    /// Since when a reconcile has been due without one succeeding.
    due_since: Option<Instant>,
    /// Whether the chain was read since the last change while its repair is held off.
    checked: bool,
    /// Tries of a busy xtables lock.
    busy: Backoff,
}

impl Sched {
    /// A chain with nothing due, paced by `policy` in fights.
    pub fn new(t: &Tuning, policy: Box<dyn FightPolicy>) -> Self {
        Sched {
            dirty: None,
            debounce: Debounce::default(),
            error_until: None,
            policy,
            errors: Backoff::new(t.error_backoff_base, t.error_backoff_cap),
            changed_at: None,
            due_since: None,
            checked: false,
            busy: Backoff::new(t.lock_retry, t.lock_retry_cap),
        }
    }

    /// Another writer changed the chain at `now`: reconcile after the debounce (and
    /// whatever the fight policy holds off). Returns the policy's event, if any.
    pub fn changed(
        &mut self,
        now: Instant,
        writer: Writer,
        t: &Tuning,
        rng: &mut Jitter,
    ) -> Option<FightEvent> {
        let ev = self.policy.changed(now, &writer, rng);
        self.mark(now, Cause::Change(writer));
        self.changed_at.get_or_insert(now);
        self.checked = false;
        self.debounce.poke(now, t.debounce, t.debounce_max);
        ev
    }

    /// Reconcile as soon as any hold-off allows (start, reload, resync, poll, overflow).
    pub fn wake(&mut self, now: Instant, cause: Cause) {
        self.mark(now, cause);
        self.debounce.fire_now(now);
    }

    fn mark(&mut self, now: Instant, cause: Cause) {
        self.due_since.get_or_insert(now);
        match &mut self.dirty {
            Some(c) => c.merge(cause),
            None => self.dirty = Some(cause),
        }
    }

    /// Since when a reconcile has been due without one succeeding, if one is.
    pub fn due_since(&self) -> Option<Instant> {
        self.due_since
    }

    /// Whether the chain should be read now although its repair is held off (by the fight
    /// policy, an error backoff or a busy lock): once after each change, at the end of
    /// its debounce, so that what is reported follows what the kernel has.
    pub fn check_due(&self, now: Instant) -> bool {
        !self.checked
            && self.dirty.is_some()
            && self.debounce.deadline().is_some_and(|d| d <= now)
            && !self.due(now)
    }

    /// The held-off read was done.
    pub fn checked(&mut self) {
        self.checked = true;
    }

    /// Whether a reconcile is pending (possibly held off).
    pub fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// Whether a fight episode is running.
    pub fn fighting(&self) -> bool {
        self.policy.active()
    }

    /// Whether jumpset is yielding this chain in a fight: a change is pending and the
    /// fight policy holds it until the other writer has gone quiet (what readiness
    /// reports).
    pub fn yielding(&self) -> bool {
        self.is_dirty() && self.policy.yielding()
    }

    /// What the fight policy says about this chain for `STATUS=`, if anything.
    pub fn status(&self) -> Option<String> {
        self.policy.status()
    }

    fn due_at(&self) -> Option<Instant> {
        self.dirty.as_ref()?;
        let d = self.debounce.deadline()?;
        Some(
            [Some(d), self.error_until, self.policy.not_before()]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(d),
        )
    }

    /// Whether the reconcile should run now.
    pub fn due(&self, now: Instant) -> bool {
        self.due_at().is_some_and(|d| d <= now)
    }

    /// The next instant something is to be done for this chain (besides the read of
    /// [`Sched::check_at`]).
    pub fn next_wake(&self) -> Option<Instant> {
        [self.due_at(), self.policy.next_check()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the read of a held-off chain is due ([`Sched::check_due`]), if one is.
    pub fn check_at(&self) -> Option<Instant> {
        (!self.checked && self.dirty.is_some())
            .then(|| self.debounce.deadline())
            .flatten()
    }

    /// Take the pending cause: the reconcile starts. Returns it and when the change it
    /// repairs was first noticed.
    pub fn begin(&mut self) -> Option<(Cause, Option<Instant>)> {
        let c = self.dirty.take()?;
        self.debounce.clear();
        Some((c, self.changed_at))
    }

    /// The reconcile begun for `cause` ended at `now` with `done`.
    pub fn finish(
        &mut self,
        now: Instant,
        cause: Cause,
        done: Done,
        t: &Tuning,
        rng: &mut Jitter,
    ) -> Option<FightEvent> {
        if done == Done::Busy {
            // Try the lock again soon, keeping the cause; not an error (yet).
            self.mark(now, cause);
            self.debounce.fire_now(now);
            self.error_until = Some(now + self.busy.next_delay());
            self.checked = true;
            return None;
        }
        self.busy.reset();
        if done == Done::Failed {
            // Try again after the error backoff, keeping the cause.
            self.mark(now, cause);
            self.debounce.fire_now(now);
            let wait = rng.stretch(self.errors.next_delay(), t.jitter);
            self.error_until = Some(now + wait);
            self.checked = true;
            return None;
        }
        self.errors.reset();
        self.error_until = None;
        if self.dirty.is_none() {
            self.changed_at = None;
            self.due_since = None;
        }
        let undid = match cause {
            _ if done == Done::Clean || !cause.is_undo() => None,
            Cause::Change(w) => Some(w),
            _ => Some(Writer::default()),
        };
        self.policy.reconciled(now, undid.as_ref(), rng)
    }

    /// Time passed: lets the fight policy move on (retry, end an episode).
    pub fn tick(&mut self, now: Instant) -> Option<FightEvent> {
        let pending = self.is_dirty();
        self.policy.tick(now, pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::policy::standard;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn writer() -> Writer {
        Writer {
            pid: Some(4242),
            name: Some("iptables-nft".into()),
            agents: vec!["kube-ovn"],
            ..Writer::default()
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let seq: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // No overflow after many steps.
        for _ in 0..100 {
            assert!(b.next_delay() <= ms(1000));
        }
    }

    #[test]
    fn jitter_only_lengthens_and_is_bounded() {
        let mut j = Jitter::new(7);
        for _ in 0..10_000 {
            let d = j.stretch(ms(1000), 0.2);
            assert!(d >= ms(1000) && d < ms(1200), "{d:?}");
        }
        let mut a = Jitter::new(1);
        let mut b = Jitter::new(1);
        assert_eq!(a.unit(), b.unit(), "deterministic for a seed");
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let mut d = Debounce::default();
        d.poke(t0, ms(2), ms(50));
        assert_eq!(d.deadline(), Some(t0 + ms(2)));
        d.poke(t0 + ms(1), ms(2), ms(50));
        assert_eq!(d.deadline(), Some(t0 + ms(3)), "a second change postpones");
        for i in 0..100 {
            d.poke(t0 + ms(i), ms(2), ms(50));
        }
        assert_eq!(
            d.deadline(),
            Some(t0 + ms(50)),
            "capped at max after the first"
        );
        d.clear();
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_change_is_reconciled_after_the_debounce() {
        // The policy's own waits aside (policy.rs tests them).
        let t = Tuning::default().without_fight_detection();
        let mut rng = Jitter::new(3);
        let t0 = Instant::now();
        let mut s = Sched::new(&t, standard(&t));
        assert!(!s.due(t0) && s.next_wake().is_none());
        s.changed(t0, writer(), &t, &mut rng);
        assert!(!s.due(t0 + ms(1)));
        assert!(s.due(t0 + ms(2)));
        assert_eq!(s.next_wake(), Some(t0 + ms(2)));
        let (cause, at) = s.begin().unwrap();
        assert_eq!(at, Some(t0));
        assert!(matches!(cause, Cause::Change(_)));
        assert!(s.begin().is_none());
    }

    #[test]
    fn resync_is_immediate_and_a_change_outranks_it() {
        let t = Tuning::default();
        let mut rng = Jitter::new(3);
        let t0 = Instant::now();
        let mut s = Sched::new(&t, standard(&t));
        s.wake(t0, Cause::Resync);
        assert!(s.due(t0));
        s.changed(t0, writer(), &t, &mut rng);
        let (cause, _) = s.begin().unwrap();
        assert_eq!(cause, Cause::Change(writer()));
    }

    #[test]
    fn errors_back_off_exponentially_with_jitter_and_reset_on_success() {
        let t = Tuning::default();
        let mut rng = Jitter::new(3);
        let t0 = Instant::now();
        let mut s = Sched::new(&t, standard(&t));
        s.wake(t0, Cause::Start);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert!(s.due(now));
            let (c, _) = s.begin().unwrap();
            assert!(s.finish(now, c, Done::Failed, &t, &mut rng).is_none());
            let next = s.next_wake().unwrap();
            waits.push(next - now);
            now = next;
        }
        // 100 ms doubling, each stretched by < 20 %, capped at 30 s.
        for (i, w) in waits.iter().enumerate() {
            let base = ms(100 * (1 << i.min(9))).min(Duration::from_secs(30));
            assert!(*w >= base && *w < base.mul_f64(1.2), "step {i}: {w:?}");
        }
        let (c, _) = s.begin().unwrap();
        s.finish(now, c, Done::Clean, &t, &mut rng);
        s.wake(now, Cause::Resync);
        let (c, _) = s.begin().unwrap();
        s.finish(now, c, Done::Failed, &t, &mut rng);
        let w = s.next_wake().unwrap() - now;
        assert!(w < ms(120), "back to the first step: {w:?}");
    }
}
