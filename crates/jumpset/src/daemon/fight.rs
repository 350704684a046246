//! The daemon's pure timing logic: debounce, exponential backoff with jitter, and fight
//! detection. No I/O and no clock of its own: every function takes `now`, so tests drive
//! it with a fake clock and the loop (`daemon::run`) with the real one.
//!
//! One [`Sched`] per managed (chain, family). It decides *when* a reconcile may run:
//!
//! - a foreign change marks the chain dirty and is **debounced** (a few ms, so an agent's
//!   burst of commits is read once);
//! - a resync, a poll, the start and a reload mark it dirty with no debounce;
//! - after a failed reconcile it waits an **error backoff** (exponential, jittered, capped);
//! - after a repair that undid another writer's change, the **fight tracker** counts an
//!   *undo*. [`Tuning::fight_threshold`] undos, each within [`Tuning::fight_gap`] of the
//!   previous, start a fight *episode*: from then on every repair is followed by a hold-off
//!   that doubles from [`Tuning::fight_backoff_base`] up to [`Tuning::fight_backoff_cap`]
//!   (at least 1 s). An episode ends when no undo was needed for [`Tuning::fight_quiet`];
//!   normal speed resumes. Start and end are reported once each ([`FightEvent`]).
//!
//! The bound (DESIGN.md: against a writer undoing us 20 times a second, at most 40
//! commits in 10 s): at most `fight_threshold` (3) quick repairs before the episode
//! starts, then hold-offs of 0.1, 0.2, 0.4, 0.8 s and 1 s (jitter only lengthens them):
//! 3 + 4 + ⌈(10 − 1.5) / 1⌉ = 16 commits at most in the first 10 s. Unit-tested below
//! against a simulated 20 Hz undoer.

use std::time::{Duration, Instant};

/// The daemon's timing parameters. [`Tuning::default`] is what `jumpset daemon` uses;
/// tests may loosen them (e.g. disable fight detection to measure repair latency).
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Quiet time after a foreign change before the reconcile runs.
    pub debounce: Duration,
    /// Longest a stream of changes can postpone the reconcile.
    pub debounce_max: Duration,
    /// Undos (repairs of another writer's change), each within `fight_gap` of the
    /// previous, that make a fight.
    pub fight_threshold: u32,
    /// Undos farther apart than this do not add up to a fight.
    pub fight_gap: Duration,
    /// An episode ends when no undo was needed for this long.
    pub fight_quiet: Duration,
    /// First hold-off between repairs in a fight.
    pub fight_backoff_base: Duration,
    /// Longest hold-off between repairs in a fight (DESIGN.md: no less than 1 s).
    pub fight_backoff_cap: Duration,
    /// First wait after a failed reconcile.
    pub error_backoff_base: Duration,
    /// Longest wait after failed reconciles.
    pub error_backoff_cap: Duration,
    /// Jitter: each backoff is lengthened by a random fraction in `[0, jitter)`.
    pub jitter: f64,
    /// Receive buffer of the notification socket (SO_RCVBUFFORCE).
    pub monitor_rcvbuf: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            debounce: Duration::from_millis(2),
            debounce_max: Duration::from_millis(50),
            fight_threshold: 3,
            fight_gap: Duration::from_secs(5),
            fight_quiet: Duration::from_secs(5),
            fight_backoff_base: Duration::from_millis(100),
            fight_backoff_cap: Duration::from_secs(1),
            error_backoff_base: Duration::from_millis(100),
            error_backoff_cap: Duration::from_secs(30),
            jitter: 0.2,
            monitor_rcvbuf: 4 << 20,
        }
    }
}

impl Tuning {
    /// No fight detection: every undo is repaired at once (for latency measurements).
    pub fn without_fight_detection(mut self) -> Self {
        self.fight_threshold = u32::MAX;
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

    /// A generator seeded from the clock and the pid.
    pub fn from_entropy() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter::new(t ^ (u64::from(std::process::id()) << 32))
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

    /// Steps taken since the last reset.
    pub fn level(&self) -> u32 {
        self.level
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

/// Who made a change, as nf_tables reports it (NEWGEN) and as its rules suggest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    /// PID of the committing task (in the initial PID namespace).
    pub pid: Option<u32>,
    /// Its comm (at most 15 characters).
    pub name: Option<String>,
    /// Agents whose rules the change touched (`snapshot::agent_of`).
    pub agents: Vec<&'static str>,
}

impl Writer {
    /// `pid 123 (iptables-nft)`, or a sentence saying the writer is unknown.
    pub fn describe(&self) -> String {
        match (&self.pid, &self.name) {
            (Some(p), Some(n)) => format!("pid {p} ({n})"),
            (Some(p), None) => format!("pid {p}"),
            (None, Some(n)) => format!("process {n}"),
            (None, None) => "an unidentified writer".to_string(),
        }
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
}

/// A fight episode starting or ending: log once each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FightEvent {
    /// Another writer keeps undoing our placement.
    Started {
        /// The writer of the latest undone change.
        writer: Writer,
        /// Undos so far.
        undos: u32,
    },
    /// No undo for `fight_quiet`: normal speed again.
    Ended {
        /// How long it lasted (first undo of the episode to the last).
        lasted: Duration,
        /// Undos repaired during the episode.
        undos: u32,
    },
}

#[derive(Debug, Clone)]
struct Episode {
    started: Instant,
    undos: u32,
}

/// Counts undos and runs the fight episodes of one chain.
#[derive(Debug, Clone)]
pub struct Fight {
    streak: u32,
    streak_start: Option<Instant>,
    last_undo: Option<Instant>,
    episode: Option<Episode>,
    backoff: Backoff,
}

impl Fight {
    /// No fight.
    pub fn new(t: &Tuning) -> Self {
        Fight {
            streak: 0,
            streak_start: None,
            last_undo: None,
            episode: None,
            backoff: Backoff::new(
                t.fight_backoff_base,
                t.fight_backoff_cap.max(Duration::from_secs(1)),
            ),
        }
    }

    /// Whether an episode is running.
    pub fn active(&self) -> bool {
        self.episode.is_some()
    }

    /// A repair at `now` undid `writer`'s change. Returns the hold-off before the next
    /// repair may run (none outside an episode) and the episode start, if this undo
    /// started one.
    pub fn on_undo(
        &mut self,
        now: Instant,
        writer: &Writer,
        t: &Tuning,
        rng: &mut Jitter,
    ) -> (Option<Instant>, Option<FightEvent>) {
        let continues = self
            .last_undo
            .is_some_and(|l| now.saturating_duration_since(l) <= t.fight_gap);
        if continues {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak = 1;
            self.streak_start = Some(now);
        }
        self.last_undo = Some(now);
        let mut event = None;
        match &mut self.episode {
            Some(e) => e.undos = e.undos.saturating_add(1),
            None if self.streak >= t.fight_threshold => {
                self.backoff.reset();
                self.episode = Some(Episode {
                    started: self.streak_start.unwrap_or(now),
                    undos: self.streak,
                });
                event = Some(FightEvent::Started {
                    writer: writer.clone(),
                    undos: self.streak,
                });
            }
            None => return (None, None),
        }
        let hold = rng.stretch(self.backoff.next_delay(), t.jitter);
        (Some(now + hold), event)
    }

    /// When [`Fight::tick`] may end the running episode.
    pub fn next_check(&self, t: &Tuning) -> Option<Instant> {
        self.episode.as_ref()?;
        self.last_undo.map(|l| l + t.fight_quiet)
    }

    /// End the episode when no undo was needed for `fight_quiet`.
    pub fn tick(&mut self, now: Instant, t: &Tuning) -> Option<FightEvent> {
        let last = self.last_undo?;
        if now.saturating_duration_since(last) < t.fight_quiet {
            return None;
        }
        self.streak = 0;
        self.backoff.reset();
        let e = self.episode.take()?;
        Some(FightEvent::Ended {
            lasted: last.saturating_duration_since(e.started),
            undos: e.undos,
        })
    }
}

/// When one (chain, family) may be reconciled next.
#[derive(Debug, Clone)]
pub struct Sched {
    dirty: Option<Cause>,
    debounce: Debounce,
    hold_until: Option<Instant>,
    fight: Fight,
    errors: Backoff,
    /// When the first change not yet repaired was noticed (for the repair latency).
    changed_at: Option<Instant>,
}

impl Sched {
    /// A chain with nothing due.
    pub fn new(t: &Tuning) -> Self {
        Sched {
            dirty: None,
            debounce: Debounce::default(),
            hold_until: None,
            fight: Fight::new(t),
            errors: Backoff::new(t.error_backoff_base, t.error_backoff_cap),
            changed_at: None,
        }
    }

    /// Another writer changed the chain at `now`: reconcile after the debounce.
    pub fn changed(&mut self, now: Instant, writer: Writer, t: &Tuning) {
        self.mark(Cause::Change(writer));
        self.changed_at.get_or_insert(now);
        self.debounce.poke(now, t.debounce, t.debounce_max);
    }

    /// Reconcile as soon as any hold-off allows (start, reload, resync, poll, overflow).
    pub fn wake(&mut self, now: Instant, cause: Cause) {
        self.mark(cause);
        self.debounce.fire_now(now);
    }

    fn mark(&mut self, cause: Cause) {
        match &mut self.dirty {
            Some(c) => c.merge(cause),
            None => self.dirty = Some(cause),
        }
    }

    /// Whether a reconcile is pending (possibly held off).
    pub fn is_dirty(&self) -> bool {
        self.dirty.is_some()
    }

    /// Whether a fight episode is running.
    pub fn fighting(&self) -> bool {
        self.fight.active()
    }

    fn due_at(&self) -> Option<Instant> {
        self.dirty.as_ref()?;
        let d = self.debounce.deadline()?;
        Some(self.hold_until.map_or(d, |h| h.max(d)))
    }

    /// Whether the reconcile should run now.
    pub fn due(&self, now: Instant) -> bool {
        self.due_at().is_some_and(|d| d <= now)
    }

    /// The next instant something is to be done for this chain.
    pub fn next_wake(&self, t: &Tuning) -> Option<Instant> {
        [self.due_at(), self.fight.next_check(t)]
            .into_iter()
            .flatten()
            .min()
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
        match done {
            Done::Failed => {
                // Try again after the error backoff, keeping the cause.
                self.mark(cause);
                self.debounce.fire_now(now);
                let wait = rng.stretch(self.errors.next_delay(), t.jitter);
                self.hold_until = Some(now + wait);
                None
            }
            Done::Clean => {
                self.errors.reset();
                if self.dirty.is_none() {
                    self.changed_at = None;
                }
                None
            }
            Done::Repaired => {
                self.errors.reset();
                if self.dirty.is_none() {
                    self.changed_at = None;
                }
                if !cause.is_undo() {
                    return None;
                }
                let writer = match cause {
                    Cause::Change(w) => w,
                    _ => Writer::default(),
                };
                let (hold, event) = self.fight.on_undo(now, &writer, t, rng);
                if hold.is_some() {
                    self.hold_until = hold;
                }
                event
            }
        }
    }

    /// Periodic check: ends a fight episode after `fight_quiet` without undos.
    pub fn tick(&mut self, now: Instant, t: &Tuning) -> Option<FightEvent> {
        let ev = self.fight.tick(now, t);
        if ev.is_some() {
            self.hold_until = None;
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn writer() -> Writer {
        Writer {
            pid: Some(4242),
            name: Some("iptables-nft".into()),
            agents: vec!["kube-ovn"],
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
        let t = Tuning::default();
        let t0 = Instant::now();
        let mut s = Sched::new(&t);
        assert!(!s.due(t0) && s.next_wake(&t).is_none());
        s.changed(t0, writer(), &t);
        assert!(!s.due(t0 + ms(1)));
        assert!(s.due(t0 + ms(2)));
        assert_eq!(s.next_wake(&t), Some(t0 + ms(2)));
        let (cause, at) = s.begin().unwrap();
        assert_eq!(at, Some(t0));
        assert!(matches!(cause, Cause::Change(_)));
        assert!(s.begin().is_none());
    }

    #[test]
    fn resync_is_immediate_and_a_change_outranks_it() {
        let t = Tuning::default();
        let t0 = Instant::now();
        let mut s = Sched::new(&t);
        s.wake(t0, Cause::Resync);
        assert!(s.due(t0));
        s.changed(t0, writer(), &t);
        let (cause, _) = s.begin().unwrap();
        assert_eq!(cause, Cause::Change(writer()));
    }

    #[test]
    fn errors_back_off_exponentially_with_jitter_and_reset_on_success() {
        let t = Tuning::default();
        let mut rng = Jitter::new(3);
        let t0 = Instant::now();
        let mut s = Sched::new(&t);
        s.wake(t0, Cause::Start);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert!(s.due(now));
            let (c, _) = s.begin().unwrap();
            assert!(s.finish(now, c, Done::Failed, &t, &mut rng).is_none());
            let next = s.next_wake(&t).unwrap();
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
        let w = s.next_wake(&t).unwrap() - now;
        assert!(w < ms(120), "back to the first step: {w:?}");
    }

    #[test]
    fn our_own_start_and_reload_repairs_are_not_undos() {
        let t = Tuning::default();
        let mut rng = Jitter::new(1);
        let t0 = Instant::now();
        let mut s = Sched::new(&t);
        for i in 0..10 {
            s.wake(t0 + ms(i), Cause::Reload);
            let (c, _) = s.begin().unwrap();
            assert!(s
                .finish(t0 + ms(i), c, Done::Repaired, &t, &mut rng)
                .is_none());
        }
        assert!(!s.fighting());
    }

    /// Simulates the daemon against a writer that undoes our placement every `period`
    /// from `start` to `stop`; returns our commit times and the fight events.
    fn simulate(
        t: &Tuning,
        period: Duration,
        stop: Duration,
        horizon: Duration,
    ) -> (Vec<Duration>, Vec<(Duration, FightEvent)>) {
        let mut rng = Jitter::new(11);
        let t0 = Instant::now();
        let mut s = Sched::new(t);
        let mut drifted = false;
        let mut commits = Vec::new();
        let mut events = Vec::new();
        let step = ms(1);
        let mut now = t0;
        let mut next_undo = t0;
        while now - t0 < horizon {
            if now >= next_undo && now - t0 < stop {
                drifted = true;
                s.changed(now, writer(), t);
                next_undo += period;
            }
            if let Some(e) = s.tick(now, t) {
                events.push((now - t0, e));
            }
            if s.due(now) {
                let (c, _) = s.begin().unwrap();
                let done = if drifted {
                    drifted = false;
                    commits.push(now - t0);
                    Done::Repaired
                } else {
                    Done::Clean
                };
                if let Some(e) = s.finish(now, c, done, t, &mut rng) {
                    events.push((now - t0, e));
                }
            }
            now += step;
        }
        (commits, events)
    }

    #[test]
    fn a_20hz_undoer_gets_at_most_40_commits_in_10s() {
        let t = Tuning::default();
        let (commits, events) =
            simulate(&t, ms(50), Duration::from_secs(10), Duration::from_secs(10));
        eprintln!(
            "20 Hz undoer for 10 s: {} commits at {commits:?}",
            commits.len()
        );
        assert!(
            commits.len() <= 40,
            "{} commits in 10 s: {commits:?}",
            commits.len()
        );
        // The analysis in the module docs: 3 quick ones, then 0.1+0.2+0.4+0.8 s, then ~1 s.
        assert!(commits.len() <= 16, "{} commits", commits.len());
        // In steady state no two commits are closer than the 1 s cap.
        let late: Vec<_> = commits
            .iter()
            .filter(|c| **c > Duration::from_secs(2))
            .collect();
        for w in late.windows(2) {
            assert!(*w[1] - *w[0] >= Duration::from_secs(1), "{w:?}");
        }
        // Exactly one episode start, at the third undo, naming the writer.
        let starts: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, FightEvent::Started { .. }))
            .collect();
        assert_eq!(starts.len(), 1, "{events:?}");
        match &starts[0].1 {
            FightEvent::Started { writer: w, undos } => {
                assert_eq!(*undos, 3);
                assert_eq!(w.describe(), "pid 4242 (iptables-nft)");
            }
            _ => unreachable!(),
        }
        assert!(starts[0].0 < ms(200), "detected early: {:?}", starts[0].0);
    }

    #[test]
    fn the_bound_holds_whatever_the_jitter_and_period() {
        for period in [1u64, 10, 25, 50, 100, 333] {
            for seed in 1..20 {
                let t = Tuning::default();
                let mut rng = Jitter::new(seed);
                let t0 = Instant::now();
                let mut s = Sched::new(&t);
                let (mut commits, mut drifted, mut next) = (0, false, t0);
                let mut now = t0;
                while now - t0 < Duration::from_secs(10) {
                    if now >= next {
                        drifted = true;
                        s.changed(now, writer(), &t);
                        next += ms(period);
                    }
                    s.tick(now, &t);
                    if s.due(now) {
                        let (c, _) = s.begin().unwrap();
                        let d = if std::mem::take(&mut drifted) {
                            commits += 1;
                            Done::Repaired
                        } else {
                            Done::Clean
                        };
                        s.finish(now, c, d, &t, &mut rng);
                    }
                    now += ms(1);
                }
                assert!(commits <= 40, "period {period} ms seed {seed}: {commits}");
            }
        }
    }

    #[test]
    fn the_fight_ends_after_quiet_and_normal_speed_resumes() {
        let t = Tuning::default();
        // Undo every 50 ms for 3 s, then nothing; watch for 12 s.
        let (commits, events) =
            simulate(&t, ms(50), Duration::from_secs(3), Duration::from_secs(12));
        let ends: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, FightEvent::Ended { .. }))
            .collect();
        assert_eq!(ends.len(), 1, "{events:?}");
        let last_commit = *commits.last().unwrap();
        // The chain is put back within one capped hold-off (+ jitter) of the last undo.
        assert!(
            last_commit < Duration::from_secs(3) + ms(1250),
            "{last_commit:?}"
        );
        // The episode ends fight_quiet after the last undo.
        assert!(ends[0].0 >= last_commit + t.fight_quiet);
        assert!(ends[0].0 <= last_commit + t.fight_quiet + ms(2));

        // Afterwards a single change is repaired after the debounce only.
        let mut rng = Jitter::new(5);
        let t0 = Instant::now();
        let mut s = Sched::new(&t);
        for i in 0..5 {
            s.changed(t0 + ms(50 * i), writer(), &t);
            let (c, _) = s.begin().unwrap();
            s.finish(t0 + ms(50 * i), c, Done::Repaired, &t, &mut rng);
        }
        assert!(s.fighting());
        let quiet = t0 + ms(200) + t.fight_quiet;
        assert!(matches!(s.tick(quiet, &t), Some(FightEvent::Ended { undos, .. }) if undos == 5));
        assert!(!s.fighting());
        s.changed(quiet, writer(), &t);
        assert!(
            s.due(quiet + t.debounce),
            "no hold-off left after the episode"
        );
        // And a new fight is a new episode, logged again.
        let mut started = 0;
        for i in 0..5 {
            let now = quiet + ms(50 * i);
            s.changed(now, writer(), &t);
            let (c, _) = s.begin().unwrap();
            if let Some(FightEvent::Started { .. }) = s.finish(now, c, Done::Repaired, &t, &mut rng)
            {
                started += 1;
            }
        }
        assert_eq!(started, 1);
    }

    #[test]
    fn slow_repeated_undos_are_a_fight_too_but_sparse_ones_are_not() {
        let t = Tuning::default();
        // Kube-OVN before v1.13.13: every 3 s.
        let (commits, events) = simulate(
            &t,
            ms(3000),
            Duration::from_secs(30),
            Duration::from_secs(30),
        );
        assert_eq!(commits.len(), 10, "each undo is repaired once: {commits:?}");
        assert_eq!(
            events
                .iter()
                .filter(|(_, e)| matches!(e, FightEvent::Started { .. }))
                .count(),
            1
        );
        // Once a minute: never a fight.
        let (_, events) = simulate(
            &t,
            ms(60_000),
            Duration::from_secs(200),
            Duration::from_secs(200),
        );
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn without_fight_detection_every_undo_is_repaired_at_once() {
        let t = Tuning::default().without_fight_detection();
        let (commits, events) =
            simulate(&t, ms(50), Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(commits.len(), 40);
        assert!(events.is_empty());
    }
}
