//! The fight policy: when the repair of a chain another writer changed may run. One
//! [`FightPolicy`] per managed (chain, family), owned by its
//! [`Sched`](super::fight::Sched); the engine only asks it when a repair may run, feeds it
//! what happened, and reports what it says. Changing the policy is changing this module
//! (and its tests): the engine and the scheduler depend on the trait alone.
//!
//! The standard policy, [`Yield`] (`docs/contracts.md#daemon`), does two things.
//!
//! **Do no harm.** Agents that still place their own jumps read the chain and then act on
//! what they read by *index* (Kube-OVN lists PREROUTING and deletes its duplicates with
//! `iptables -D PREROUTING N` a few milliseconds later). A repair landing between the
//! listing and the delete shifts the chain, and the delete removes someone else's rule.
//! So after a foreign commit the repair waits until that writer has gone quiet long enough
//! for such a sequence of its own to have finished. Writers are told apart by
//! [`Writer::key`] (the container, else the parent process — each `iptables` run is a new
//! process —, else the unit); a process gone before `/proc` was read is taken for the
//! writer last found under its name less than `burst_gap` before, else it is an unknown
//! writer keyed by its name. Each writer's commits closer than
//! [`FightParams::burst_gap`] form a *burst*; the policy learns the span of its bursts
//! (first to last commit, the longest of its last 8). After a commit by a writer whose
//! bursts it knows, the repair waits until that burst's start plus the longest span plus
//! a margin (half the span, at least [`FightParams::settle_margin`]), and at least
//! `settle_margin` after the commit; for a writer never seen finishing a burst, or one
//! not known, [`FightParams::settle_unknown`] after its last commit. Never more than
//! [`FightParams::settle_cap`] (2 s) after the first change not yet repaired: a writer
//! that never pauses gets its repair then (and soon a fight). **Property** (tested): a
//! repair never lands inside a burst of a writer it waited for, nor within
//! `settle_margin` after it, when the burst is no longer than that writer's longest seen
//! (or, for a writer not learned, when its commits are less than `settle_unknown` apart).
//! A one-shot change by a known writer seen committing one change at a time is repaired
//! `settle_margin` (25 ms) after it; by a writer never seen, or not known,
//! `settle_unknown` (100 ms) after it.
//!
//! **Fights end.** A repair that undid a writer's change is an *undo* of that writer.
//! [`FightParams::threshold`] (3) undos of one writer, each less than
//! [`FightParams::gap`] (10 s) after the previous — or [`FightParams::crowd`] (8) undos of
//! anyone within [`FightParams::crowd_window`] (20 s), a safety net for writers that
//! cannot be told apart — start a fight *episode*. jumpset then **yields**: it stops
//! writing the chain. It tries once more (a *retry*) when nothing has written the chain
//! for the *quiet time*: twice the fighting writer's observed period — the longest of its
//! last 8 intervals between commits — stretched by the jitter, between
//! [`FightParams::quiet_min`] (100 ms) and [`FightParams::quiet_max`] (20 s); a writer
//! that undoes each retry sees its intervals, and so the quiet time, grow. The episode
//! ends when nothing is pending and nothing wrote the chain for
//! [`FightParams::end_quiet`] (40 s). On top of that, a budget no episode exceeds: at most
//! [`FightParams::first_budget`] (8) commits in its first [`FightParams::first_window`]
//! (20 s, from the first undo of the streak) and [`FightParams::budget`] (5) in any
//! [`FightParams::budget_window`] (60 s) after.
//!
//! The bounds, with the defaults (each tested below in virtual time):
//! - changes by one writer 10 s or more apart are never a fight: each is repaired after
//!   the wait above (a streak needs intervals under 10 s);
//! - in a sustained fight at most 8 commits in the first 20 s and 5 per minute after: a
//!   writer that keeps writing is never quiet for twice its period, so jumpset writes
//!   nothing after the 3 undos; one that undoes only what jumpset writes gets a retry per
//!   quiet time, which grows with its intervals; the budget holds whatever happens;
//! - once the fighting writer stops, the chain converges within three times its observed
//!   period, 30 s at most: the retry comes after at most 2.4 periods (the quiet time and
//!   its jitter) and at most 20 s, unless the budget was spent on retries that were undone.
//!
//! Legacy x_tables sends no notifications: undos found by polls make an episode with an
//! unknown writer, and during it the engine tells [`FightPolicy::changed`] of each poll
//! that reads the chain differently from the last one, so the quiet time is measured at
//! the poll's granularity.

use super::fight::{Jitter, Tuning, Writer};
use super::ms;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};
use tracing::Level;

/// Decides when the repairs of one chain may run while other writers change it.
///
/// The scheduler calls [`changed`](FightPolicy::changed) for every foreign change noticed,
/// [`reconciled`](FightPolicy::reconciled) after every reconcile that did not fail, and
/// [`tick`](FightPolicy::tick) whenever time passes (at the latest at
/// [`next_check`](FightPolicy::next_check)); it never starts a reconcile before
/// [`not_before`](FightPolicy::not_before).
pub trait FightPolicy: fmt::Debug {
    /// `writer` changed the chain at `now` (a repair will follow once allowed). Returns
    /// the event to report, if any.
    fn changed(&mut self, now: Instant, writer: &Writer, rng: &mut Jitter) -> Option<FightEvent>;

    /// A reconcile ended at `now` without failing; `undid` is the writer whose change its
    /// commit undid (an unidentified writer for a change found by a re-read), `None` when
    /// it wrote nothing or only did jumpset's own bidding (start, reload). Returns the
    /// event to report, if any.
    fn reconciled(
        &mut self,
        now: Instant,
        undid: Option<&Writer>,
        rng: &mut Jitter,
    ) -> Option<FightEvent>;

    /// The earliest instant the next reconcile may run, when the policy holds it off.
    fn not_before(&self) -> Option<Instant>;

    /// When [`tick`](FightPolicy::tick) has something to decide next.
    fn next_check(&self) -> Option<Instant>;

    /// Time passed; `pending`: a reconcile is waiting. May end an episode. Returns the
    /// event to report, if any.
    fn tick(&mut self, now: Instant, pending: bool) -> Option<FightEvent>;

    /// Whether an episode is running (the `jumpset_fight_active` gauge).
    fn active(&self) -> bool;

    /// Whether the policy holds pending repairs because of a fight (the chain is left to
    /// the other writer: readiness says so).
    fn yielding(&self) -> bool {
        false
    }

    /// What `STATUS=` adds for this chain while an episode runs, e.g.
    /// `fight with pid 42 (iptables-nft), parent 7 (kube-ovn-daemon): yielding …`.
    fn status(&self) -> Option<String>;
}

/// Makes the policy of each chain.
pub type PolicyFactory = fn(&Tuning) -> Box<dyn FightPolicy>;

/// The standard policy, parametrised by `t.fight` and `t.jitter`.
pub fn standard(t: &Tuning) -> Box<dyn FightPolicy> {
    Box::new(Yield::new(&t.fight, t.jitter))
}

/// The standard fight policy's parameters ([`Tuning::fight`]); how they combine:
/// `docs/contracts.md`, "Daemon" (do no harm, fights end). Start from
/// [`FightParams::default`] and change fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FightParams {
    /// Commits by one writer closer than this form one burst.
    pub burst_gap: Duration,
    /// Wait after a commit by a writer never seen finishing a burst.
    pub settle_unknown: Duration,
    /// Least wait after a commit by a writer whose bursts are known (and the least margin
    /// after its longest burst; the margin is half the burst when that is more).
    pub settle_margin: Duration,
    /// Longest a change waits for its writers to go quiet, from the first change not yet
    /// reconciled (a writer that never pauses gets its repair then; 0: no waiting).
    pub settle_cap: Duration,
    /// Undos of one writer, each less than `gap` after the previous, that start a fight.
    pub threshold: u32,
    /// Undos of one writer this far apart or more never add up to a fight.
    pub gap: Duration,
    /// Undos of anyone within `crowd_window` that start a fight.
    pub crowd: u32,
    /// See `crowd`.
    pub crowd_window: Duration,
    /// Shortest quiet time before a retry.
    pub quiet_min: Duration,
    /// Longest quiet time before a retry.
    pub quiet_max: Duration,
    /// An episode ends when nothing is pending and nothing wrote the chain for this long
    /// (at least twice `quiet_max`, so that two yielding writers stay in their episodes).
    pub end_quiet: Duration,
    /// Most commits in the first `first_window` of an episode (from its first undo).
    pub first_budget: u32,
    /// See `first_budget`.
    pub first_window: Duration,
    /// Most commits in any `budget_window` after the first window of an episode.
    pub budget: u32,
    /// See `budget`.
    pub budget_window: Duration,
}

impl Default for FightParams {
    fn default() -> Self {
        FightParams {
            burst_gap: Duration::from_secs(1),
            settle_unknown: Duration::from_millis(100),
            settle_margin: Duration::from_millis(25),
            settle_cap: Duration::from_secs(2),
            threshold: 3,
            gap: Duration::from_secs(10),
            crowd: 8,
            crowd_window: Duration::from_secs(20),
            quiet_min: Duration::from_millis(100),
            quiet_max: Duration::from_secs(20),
            end_quiet: Duration::from_secs(40),
            first_budget: 8,
            first_window: Duration::from_secs(20),
            budget: 5,
            budget_window: Duration::from_secs(60),
        }
    }
}

impl FightParams {
    /// No waiting and no fight detection: every undo is repaired at once (for latency
    /// measurements).
    pub fn disabled(mut self) -> Self {
        self.threshold = u32::MAX;
        self.crowd = u32::MAX;
        self.settle_cap = Duration::ZERO;
        self
    }

    fn margin(&self, span: Duration) -> Duration {
        self.settle_margin.max(span / 2)
    }
}

/// What the policy reports: once per episode start and end, and at each retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FightEvent {
    /// A writer keeps undoing the placement: jumpset yields.
    Started {
        /// The writer of the latest undone change.
        writer: Writer,
        /// Undos that made the fight.
        undos: u32,
        /// The quiet time before a retry.
        quiet: Duration,
    },
    /// Nothing wrote the chain for the quiet time: jumpset repaired it once more.
    Retried {
        /// The quiet time waited.
        quiet: Duration,
    },
    /// The chain was written again after a retry: yielding again, for longer.
    Undone {
        /// The new quiet time before a retry.
        quiet: Duration,
    },
    /// The other writer stopped: normal speed again.
    Ended {
        /// How long it lasted (first undo of the episode to the last commit).
        lasted: Duration,
        /// Undos repaired during the episode.
        undos: u32,
    },
}

impl FightEvent {
    /// Whether this starts an episode (the `jumpset_fights_total` counter).
    pub fn starts_episode(&self) -> bool {
        matches!(self, FightEvent::Started { .. })
    }

    /// The log level of its record.
    pub fn level(&self) -> Level {
        match self {
            FightEvent::Started { .. } => Level::WARN,
            _ => Level::INFO,
        }
    }

    /// The log record, after `FAMILY TABLE CHAIN: `.
    pub fn message(&self) -> String {
        match self {
            FightEvent::Started {
                writer,
                undos,
                quiet,
            } => format!(
                "fight: {} keeps undoing jumpset's placement ({undos} undos, touching {} rules); yielding: jumpset stops writing this chain and tries again once nothing has written it for {}",
                writer.describe(),
                writer.agents_text(),
                ms(*quiet)
            ),
            FightEvent::Retried { quiet } => format!(
                "fight: nothing wrote the chain for {}: repaired it once more",
                ms(*quiet)
            ),
            FightEvent::Undone { quiet } => format!(
                "fight: the chain was written again after the retry; yielding until nothing has written it for {}",
                ms(*quiet)
            ),
            FightEvent::Ended { lasted, undos } => format!(
                "the other writer stopped ({undos} undos over {}); repairing at full speed again",
                ms(*lasted)
            ),
        }
    }
}

/// Writers remembered per chain (the least recently seen is forgotten first).
const WRITERS_KEPT: usize = 32;
/// Burst spans remembered per writer.
const SPANS_KEPT: usize = 8;
/// Intervals between commits remembered per writer.
const INTERVALS_KEPT: usize = 8;

/// One writer as seen on this chain.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    /// Its last commit.
    last: Instant,
    /// The first commit of its current burst.
    burst_start: Instant,
    /// Spans of its last closed bursts.
    spans: VecDeque<Duration>,
    /// Its last intervals between commits.
    intervals: VecDeque<Duration>,
    /// Undos of its changes in a row, the first and the last of them.
    streak: u32,
    streak_start: Instant,
    last_undo: Option<Instant>,
}

impl Seen {
    fn new(key: String, now: Instant) -> Self {
        Seen {
            key,
            last: now,
            burst_start: now,
            spans: VecDeque::new(),
            intervals: VecDeque::new(),
            streak: 0,
            streak_start: now,
            last_undo: None,
        }
    }

    /// The longest burst seen, once one was seen finishing.
    fn learned(&self) -> Option<Duration> {
        self.spans.iter().max().copied()
    }
}

#[derive(Debug, Clone)]
struct Episode {
    /// The first undo of the streak that started it.
    started: Instant,
    /// The key of the writer that started it (whose period sets the quiet time).
    key: String,
    undos: u32,
    /// The latest foreign writer of the chain.
    writer: Writer,
    /// jumpset's commits since `started` (for the budget).
    commits: VecDeque<Instant>,
    /// The quiet time before the next retry.
    quiet: Duration,
    /// Whether the last commit was a retry no change has followed yet.
    retried: bool,
    last_commit: Instant,
}

/// The standard policy (module docs).
#[derive(Debug, Clone)]
pub struct Yield {
    p: FightParams,
    jitter: f64,
    writers: Vec<Seen>,
    hold_until: Option<Instant>,
    last_change: Option<Instant>,
    /// This chain's recent undos (any writer).
    undos: VecDeque<Instant>,
    pending: bool,
    /// The first change not yet reconciled: no hold lasts beyond it + `settle_cap`.
    pending_since: Option<Instant>,
    /// The latest identified writer of each process name and when it committed (the
    /// commits of processes gone before `/proc` was read are taken for its).
    recent: Vec<(String, String, Instant)>,
    episode: Option<Episode>,
}

impl Yield {
    /// No writer seen, no fight; quiet times stretched by a random fraction below
    /// `jitter`.
    pub fn new(params: &FightParams, jitter: f64) -> Self {
        Yield {
            p: params.clone(),
            jitter,
            writers: Vec::new(),
            hold_until: None,
            last_change: None,
            undos: VecDeque::new(),
            pending: false,
            pending_since: None,
            recent: Vec::new(),
            episode: None,
        }
    }

    /// The key `w` is told apart by, and whether it is known: found in `/proc`, or taken
    /// for the writer found last under the same process name less than `burst_gap` before
    /// (each `iptables` run of an agent is a new process, and one that exited before
    /// `/proc` was read is most likely the next command of the agent seen just before).
    /// Unknown writers are keyed by their process name and never get the short wait.
    fn resolve(&mut self, w: &Writer, now: Instant) -> (String, bool) {
        let name = w.name.clone().unwrap_or_default();
        if let Some(key) = w.process.key() {
            self.recent.retain(|(n, _, _)| *n != name);
            if self.recent.len() >= WRITERS_KEPT {
                self.recent.remove(0);
            }
            self.recent.push((name, key.clone(), now));
            return (key, true);
        }
        if let Some((_, key, at)) = self.recent.iter_mut().find(|(n, _, _)| *n == name) {
            if now.saturating_duration_since(*at) <= self.p.burst_gap {
                *at = now;
                return (key.clone(), true);
            }
        }
        (w.key(), false)
    }

    fn seen_mut(&mut self, key: &str, now: Instant) -> &mut Seen {
        let i = match self.writers.iter().position(|s| s.key == key) {
            Some(i) => i,
            None => {
                if self.writers.len() >= WRITERS_KEPT {
                    let oldest = (0..self.writers.len())
                        .min_by_key(|&i| self.writers[i].last)
                        .unwrap_or(0);
                    self.writers.swap_remove(oldest);
                }
                self.writers.push(Seen::new(key.to_string(), now));
                self.writers.len() - 1
            }
        };
        &mut self.writers[i]
    }

    /// The quiet time before a retry: twice the observed period of the writer `key` (the
    /// longest of its last intervals between commits), stretched by the jitter, within
    /// the bounds.
    fn quiet(&self, key: &str, rng: &mut Jitter) -> Duration {
        let period = self
            .writers
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| s.intervals.iter().max().copied())
            .unwrap_or(Duration::ZERO);
        rng.stretch(period * 2, self.jitter)
            .clamp(self.p.quiet_min, self.p.quiet_max.max(self.p.quiet_min))
    }

    /// The earliest instant the budget allows another commit.
    fn budget_next(&self, e: &Episode) -> Option<Instant> {
        let first_end = e.started + self.p.first_window;
        let in_first = e.commits.iter().filter(|t| **t < first_end).count();
        let after: Vec<Instant> = e
            .commits
            .iter()
            .copied()
            .filter(|t| *t >= first_end)
            .collect();
        let budget = self.p.budget.max(1) as usize;
        let t1 =
            (after.len() >= budget).then(|| after[after.len() - budget] + self.p.budget_window);
        let t2 = (in_first >= self.p.first_budget.max(1) as usize).then_some(first_end);
        t1.max(t2)
    }

    /// When the episode may end (nothing pending, nothing written for long enough).
    fn end_at(&self, e: &Episode) -> Instant {
        let last = self
            .last_change
            .map_or(e.last_commit, |c| c.max(e.last_commit));
        last + self.p.end_quiet.max(e.quiet * 2)
    }

    fn start_episode(
        &mut self,
        now: Instant,
        started: Instant,
        (writer, key): (&Writer, String),
        undos: u32,
        rng: &mut Jitter,
    ) -> FightEvent {
        let quiet = self.quiet(&key, rng);
        let commits: VecDeque<Instant> = self
            .undos
            .iter()
            .copied()
            .filter(|t| *t >= started)
            .collect();
        self.episode = Some(Episode {
            started,
            key,
            undos,
            writer: writer.clone(),
            commits,
            quiet,
            retried: false,
            last_commit: now,
        });
        FightEvent::Started {
            writer: writer.clone(),
            undos,
            quiet,
        }
    }
}

impl FightPolicy for Yield {
    fn changed(&mut self, now: Instant, writer: &Writer, rng: &mut Jitter) -> Option<FightEvent> {
        self.pending = true;
        let since = *self.pending_since.get_or_insert(now);
        self.last_change = Some(now);

        // Do no harm: wait for this writer's burst to be over.
        let p = self.p.clone();
        let (key, known) = self.resolve(writer, now);
        let fresh = !self.writers.iter().any(|s| s.key == key);
        let seen = self.seen_mut(&key, now);
        if !fresh {
            if seen.intervals.len() >= INTERVALS_KEPT {
                seen.intervals.pop_front();
            }
            seen.intervals
                .push_back(now.saturating_duration_since(seen.last));
        }
        if now.saturating_duration_since(seen.last) > p.burst_gap {
            if seen.spans.len() >= SPANS_KEPT {
                seen.spans.pop_front();
            }
            let span = seen.last.saturating_duration_since(seen.burst_start);
            seen.spans.push_back(span);
            seen.burst_start = now;
        }
        seen.last = now;
        let hold = match seen.learned().filter(|_| known) {
            Some(span) => (seen.burst_start + span + p.margin(span)).max(now + p.settle_margin),
            None => now + p.settle_unknown,
        }
        .min(since + p.settle_cap);
        self.hold_until = Some(self.hold_until.map_or(hold, |h| h.max(hold)));

        let mut event = None;
        let episode = self.episode.as_ref().map(|e| (e.retried, e.key.clone()));
        if let Some((retried, key)) = episode {
            // Always the latest writer; the quiet time follows the fighter's period.
            let q = self.quiet(&key, rng);
            let e = self.episode.as_mut().expect("checked");
            e.writer = writer.clone();
            e.quiet = q;
            if retried {
                e.retried = false;
                event = Some(FightEvent::Undone { quiet: q });
            }
        }
        event
    }

    fn reconciled(
        &mut self,
        now: Instant,
        undid: Option<&Writer>,
        rng: &mut Jitter,
    ) -> Option<FightEvent> {
        self.pending = false;
        self.pending_since = None;
        let w = undid?;
        let keep = self.p.crowd_window.max(self.p.first_window);
        while self
            .undos
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > keep)
        {
            self.undos.pop_front();
        }
        self.undos.push_back(now);
        if let Some(e) = self.episode.as_mut() {
            // Every commit in an episode waited for the quiet time: a retry.
            e.undos = e.undos.saturating_add(1);
            e.commits.push_back(now);
            while e.commits.len() > 64 {
                e.commits.pop_front();
            }
            e.retried = true;
            e.last_commit = now;
            return Some(FightEvent::Retried { quiet: e.quiet });
        }
        let gap = self.p.gap;
        let (key, _) = self.resolve(w, now);
        let seen = self.seen_mut(&key, now);
        if seen
            .last_undo
            .is_some_and(|l| now.saturating_duration_since(l) < gap)
        {
            seen.streak = seen.streak.saturating_add(1);
        } else {
            seen.streak = 1;
            seen.streak_start = now;
        }
        seen.last_undo = Some(now);
        let (streak, streak_start) = (seen.streak, seen.streak_start);
        let crowd: Vec<Instant> = self
            .undos
            .iter()
            .copied()
            .filter(|t| now.saturating_duration_since(*t) < self.p.crowd_window)
            .collect();
        if streak >= self.p.threshold {
            Some(self.start_episode(now, streak_start, (w, key), streak, rng))
        } else if crowd.len() >= self.p.crowd as usize {
            let first = crowd[0];
            Some(self.start_episode(now, first, (w, key), crowd.len() as u32, rng))
        } else {
            None
        }
    }

    fn not_before(&self) -> Option<Instant> {
        let mut at = self.hold_until;
        if let Some(e) = &self.episode {
            let retry = self.last_change.map(|c| c + e.quiet);
            at = at.max(retry).max(self.budget_next(e));
        }
        at
    }

    fn next_check(&self) -> Option<Instant> {
        let e = self.episode.as_ref()?;
        (!self.pending).then(|| self.end_at(e))
    }

    fn tick(&mut self, now: Instant, pending: bool) -> Option<FightEvent> {
        self.pending = pending;
        if !pending {
            self.pending_since = None;
        }
        let e = self.episode.as_ref()?;
        if pending || now < self.end_at(e) {
            return None;
        }
        let e = self.episode.take()?;
        for s in &mut self.writers {
            s.streak = 0;
        }
        self.undos.clear();
        Some(FightEvent::Ended {
            lasted: e.last_commit.saturating_duration_since(e.started),
            undos: e.undos,
        })
    }

    fn active(&self) -> bool {
        self.episode.is_some()
    }

    fn yielding(&self) -> bool {
        self.episode.is_some()
    }

    fn status(&self) -> Option<String> {
        let e = self.episode.as_ref()?;
        Some(if self.pending {
            format!(
                "fight with {}: yielding until nothing has written the chain for {}",
                e.writer.summary(),
                ms(e.quiet)
            )
        } else {
            format!("fight with {}: watching", e.writer.summary())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::fight::{Cause, Done, Sched};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A writer told apart by its name (nothing found in /proc: the comm is the key).
    fn writer(name: &str) -> Writer {
        Writer {
            pid: Some(4242),
            name: Some(name.into()),
            agents: vec!["kube-ovn"],
            ..Writer::default()
        }
    }

    /// A writer `/proc` showed: an `iptables` run by the agent `parent`.
    fn known(parent: &str) -> Writer {
        use crate::daemon::ident::{Cgroup, Found, Identity, Proc};
        Writer {
            process: Identity::Found(Box::new(Found {
                process: Proc {
                    pid: 4242,
                    name: "iptables".into(),
                    cmdline: None,
                },
                parent: Some(Proc {
                    pid: 100 + parent.len() as u32,
                    name: parent.into(),
                    cmdline: None,
                }),
                cgroup: Cgroup::default(),
            })),
            ..writer("iptables")
        }
    }

    /// A simulated agent writing the chain.
    #[derive(Clone, Debug)]
    struct Agent {
        name: &'static str,
        /// First pass.
        start: Duration,
        /// Between passes, each stretched or shortened by up to `jitter`.
        period: Duration,
        jitter: f64,
        /// Offsets of the commits of one pass (its burst: insert, re-list, delete …).
        burst: Vec<Duration>,
        /// A pass writes only when the chain is in jumpset's order (else every pass).
        only_when_ours: bool,
        /// No pass starts after this.
        stop: Duration,
    }

    impl Agent {
        fn every(name: &'static str, period: Duration) -> Agent {
            Agent {
                name,
                start: Duration::ZERO,
                period,
                jitter: 0.1,
                burst: vec![Duration::ZERO],
                only_when_ours: false,
                stop: Duration::MAX,
            }
        }
    }

    /// What happened in a run.
    #[derive(Debug, Default)]
    struct Run {
        /// jumpset's commits, and the agent whose change each undid.
        commits: Vec<(Duration, Option<usize>)>,
        events: Vec<(Duration, FightEvent)>,
        /// Each pass that wrote: agent, first and last commit.
        bursts: Vec<(usize, Duration, Duration)>,
        /// Each agent commit: time, agent.
        writes: Vec<(Duration, usize)>,
        /// Whether the chain ended in jumpset's order, and since when.
        ours_since: Option<Duration>,
    }

    impl Run {
        fn commits_in(&self, from: Duration, to: Duration) -> usize {
            self.commits
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .count()
        }

        fn starts(&self) -> usize {
            self.events
                .iter()
                .filter(|(_, e)| e.starts_episode())
                .count()
        }
    }

    /// The daemon's scheduler and policy against `agents` in virtual time, for `horizon`.
    fn simulate(t: &Tuning, agents: &[Agent], horizon: Duration, seed: u64) -> Run {
        let mut rng = Jitter::new(seed);
        let mut arng = Jitter::new(seed.wrapping_mul(7919) | 1);
        let t0 = Instant::now();
        let mut s = Sched::new(t, standard(t));
        let mut run = Run {
            ours_since: Some(Duration::ZERO),
            ..Run::default()
        };
        let mut ours = true;
        let mut last_writer: Option<usize> = None;
        // Per agent: next pass start; commits of the pass in progress.
        let mut next_pass: Vec<Duration> = agents.iter().map(|a| a.start).collect();
        let mut queued: Vec<(Duration, usize, bool)> = Vec::new();
        let mut now = Duration::ZERO;
        loop {
            let next_agent = queued
                .iter()
                .map(|q| q.0)
                .chain(
                    next_pass
                        .iter()
                        .zip(agents)
                        .filter(|(n, a)| **n <= a.stop)
                        .map(|(n, _)| *n),
                )
                .min();
            let next_sched = s.next_wake().map(|w| w - t0);
            let next = [next_agent, next_sched].into_iter().flatten().min();
            let Some(next) = next.filter(|n| *n <= horizon) else {
                break;
            };
            now = now.max(next);
            // Agents: passes starting now, commits due now.
            for (i, a) in agents.iter().enumerate() {
                if next_pass[i] <= now && next_pass[i] <= a.stop {
                    if !a.only_when_ours || ours {
                        for (k, off) in a.burst.iter().enumerate() {
                            queued.push((now + *off, i, k == 0));
                        }
                        let last = now + *a.burst.iter().max().unwrap();
                        run.bursts.push((i, now, last));
                    }
                    let f = 1.0 + a.jitter * (2.0 * arng.unit() - 1.0);
                    next_pass[i] = now + a.period.mul_f64(f.max(0.01));
                }
            }
            queued.sort_by_key(|q| q.0);
            while queued.first().is_some_and(|q| q.0 <= now) {
                let (_, i, first) = queued.remove(0);
                if first {
                    ours = false;
                    run.ours_since = None;
                }
                last_writer = Some(i);
                run.writes.push((now, i));
                if let Some(e) = s.changed(t0 + now, writer(agents[i].name), t, &mut rng) {
                    run.events.push((now, e));
                }
            }
            if let Some(e) = s.tick(t0 + now) {
                run.events.push((now, e));
            }
            if s.due(t0 + now) {
                let (c, _) = s.begin().unwrap();
                let done = if ours {
                    Done::Clean
                } else {
                    ours = true;
                    run.ours_since = Some(now);
                    run.commits.push((now, last_writer));
                    Done::Repaired
                };
                if let Some(e) = s.finish(t0 + now, c, done, t, &mut rng) {
                    run.events.push((now, e));
                }
            }
            // Never stand still.
            if s.next_wake().is_some_and(|w| w <= t0 + now) && !s.due(t0 + now) {
                now += Duration::from_micros(100);
            }
        }
        run
    }

    #[test]
    fn a_one_shot_change_waits_for_the_settle_only() {
        let t = Tuning::default();
        let p = &t.fight;
        let mut rng = Jitter::new(1);
        let t0 = Instant::now();
        let mut s = Sched::new(&t, standard(&t));
        // A writer never seen: settle_unknown after its commit.
        s.changed(t0, writer("admin"), &t, &mut rng);
        assert!(!s.due(t0 + p.settle_unknown - ms(1)));
        assert!(s.due(t0 + p.settle_unknown));
        let (c, _) = s.begin().unwrap();
        assert!(s
            .finish(t0 + p.settle_unknown, c, Done::Repaired, &t, &mut rng)
            .is_none());
        // Not known (gone before /proc was read): always settle_unknown.
        let t1 = t0 + secs(30);
        s.changed(t1, writer("admin"), &t, &mut rng);
        assert!(!s.due(t1 + p.settle_unknown - ms(1)));
        let (c, _) = s.begin().unwrap();
        s.finish(t1 + p.settle_unknown, c, Done::Repaired, &t, &mut rng);
        // A writer /proc showed, seen again after its first burst (one commit): the margin
        // only.
        let t2 = t1 + secs(30);
        s.changed(t2, known("kube-ovn-daemon"), &t, &mut rng);
        assert!(
            !s.due(t2 + p.settle_unknown - ms(1)),
            "never seen: the settle"
        );
        let (c, _) = s.begin().unwrap();
        s.finish(t2 + p.settle_unknown, c, Done::Repaired, &t, &mut rng);
        let t3 = t2 + secs(30);
        s.changed(t3, known("kube-ovn-daemon"), &t, &mut rng);
        assert!(!s.due(t3 + p.settle_margin - ms(1)));
        assert!(s.due(t3 + p.settle_margin), "known: the margin only");
        // Its next command gone before /proc was read is taken for its: still the margin.
        let (c, _) = s.begin().unwrap();
        s.finish(t3 + p.settle_margin, c, Done::Repaired, &t, &mut rng);
        let t4 = t3 + secs(30);
        s.changed(t4, known("kube-ovn-daemon"), &t, &mut rng);
        s.changed(t4 + ms(5), writer("iptables"), &t, &mut rng);
        assert!(
            !s.due(t4 + ms(5) + p.settle_margin - ms(1)),
            "its burst lasts (5 ms)"
        );
        assert!(s.due(t4 + ms(5) + p.settle_margin.max(ms(5) / 2) + ms(5)));
        assert!(p.settle_unknown <= ms(100) && p.settle_margin <= ms(25));
    }

    #[test]
    fn no_repair_lands_inside_a_burst_of_a_writer_it_waited_for() {
        // Writers in the style of Kube-OVN: each pass is a burst (insert, re-list, delete
        // by index), of a span of their own (5 to 95 ms) jittered by up to ±20 % per pass;
        // passes at least 10 s apart (never a fight: every one is repaired; in a fight
        // jumpset yields and repairs nothing until the chain is quiet).
        let t = Tuning::default();
        let p = t.fight.clone();
        let mut checked = 0;
        let mut worst_wait = Duration::ZERO;
        for seed in 1..=12u64 {
            let mut r = Jitter::new(seed);
            let names = ["ovn", "felix", "script"];
            let mut agents = Vec::new();
            for name in names {
                let base = ms(5 + (r.unit() * 90.0) as u64);
                let mid = base.mul_f64(0.3 + 0.4 * r.unit());
                agents.push(Agent {
                    name,
                    start: ms((r.unit() * 5000.0) as u64),
                    period: ms(10_000 + (r.unit() * 5000.0) as u64),
                    jitter: 0.0,
                    burst: vec![Duration::ZERO, mid, base],
                    only_when_ours: false,
                    stop: Duration::MAX,
                });
            }
            // Per-pass jitter of the span: run each pass with its own burst.
            let run = simulate_jittered(&t, &agents, secs(600), seed);
            for &(at, _) in &run.commits {
                for &(i, first, last) in &run.bursts {
                    assert!(
                        !(first <= at && at < last + p.settle_margin),
                        "seed {seed}: a repair at {at:?} inside the burst {first:?}..{last:?} of pass {i}"
                    );
                }
                checked += 1;
            }
            // And each burst alone is repaired soon after it ends.
            for &(_, first, last) in &run.bursts {
                let alone = run
                    .bursts
                    .iter()
                    .filter(|(_, f, l)| *l + ms(200) > first && *f < last + ms(200))
                    .count()
                    == 1;
                if let Some(&(at, _)) = run.commits.iter().find(|(c, _)| *c >= last) {
                    if alone && at < last + secs(5) {
                        worst_wait = worst_wait.max(at - last);
                    }
                }
            }
            assert!(
                run.commits.len() > 100,
                "seed {seed}: {}",
                run.commits.len()
            );
        }
        eprintln!(
            "{checked} repairs, none inside a burst; longest wait after a burst {worst_wait:?}"
        );
        assert!(worst_wait <= p.settle_unknown + ms(2));
    }

    /// [`simulate`] with each pass's burst stretched by up to ±20 %.
    fn simulate_jittered(t: &Tuning, agents: &[Agent], horizon: Duration, seed: u64) -> Run {
        // One agent per pass would lose the writer's identity; instead jitter the offsets
        // of the template once per pass by running passes as separate agents with the same
        // name (the name is the writer's key), each with a single pass.
        let mut r = Jitter::new(seed ^ 0xABCD);
        let mut passes = Vec::new();
        for a in agents {
            let mut at = a.start;
            while at < horizon {
                let f = 0.8 + 0.4 * r.unit();
                passes.push(Agent {
                    start: at,
                    stop: at,
                    burst: a.burst.iter().map(|o| o.mul_f64(f)).collect(),
                    ..a.clone()
                });
                at += a.period;
            }
        }
        simulate(t, &passes, horizon, seed)
    }

    #[test]
    fn changes_by_one_writer_10s_apart_are_never_a_fight() {
        let t = Tuning::default();
        for period in [secs(10), ms(10_300), secs(30)] {
            for only_when_ours in [false, true] {
                let a = Agent {
                    jitter: 0.0,
                    only_when_ours,
                    ..Agent::every("kube-ovn", period)
                };
                let run = simulate(&t, &[a], secs(600) + secs(1), 3);
                assert_eq!(run.starts(), 0, "{period:?}: {:?}", run.events);
                assert_eq!(run.commits.len(), run.bursts.len(), "each is repaired");
                for (&(at, _), &(_, first, _)) in run.commits.iter().zip(&run.bursts) {
                    assert!(at - first <= t.fight.settle_unknown, "{period:?}: {at:?}");
                }
            }
        }
    }

    /// The fighters of the bounds: (label, agent).
    fn fighters() -> Vec<(&'static str, Agent)> {
        let mut out = Vec::new();
        for (label, period, burst) in [
            ("20 Hz", ms(50), vec![Duration::ZERO]),
            ("5 Hz", ms(200), vec![Duration::ZERO]),
            ("1 s", secs(1), vec![Duration::ZERO]),
            ("Kube-OVN 3 s", secs(3), vec![Duration::ZERO, ms(25)]),
            ("9 s", secs(9), vec![Duration::ZERO]),
        ] {
            for only_when_ours in [false, true] {
                out.push((
                    label,
                    Agent {
                        burst: burst.clone(),
                        only_when_ours,
                        ..Agent::every("fighter", period)
                    },
                ));
            }
        }
        out
    }

    #[test]
    fn a_sustained_fight_is_bounded() {
        let t = Tuning::default();
        for (label, a) in fighters() {
            for seed in 1..=5 {
                let run = simulate(&t, std::slice::from_ref(&a), secs(600), seed);
                let first = run.writes[0].0;
                let in_first = run.commits_in(first, first + secs(20));
                let mut per_minute = 0;
                for &(at, _) in run.commits.iter().filter(|(c, _)| *c >= first + secs(20)) {
                    per_minute = per_minute.max(run.commits_in(at, at + secs(60)));
                }
                let mode = if a.only_when_ours {
                    "when ours"
                } else {
                    "always"
                };
                if seed == 1 {
                    eprintln!("{label} ({mode}): {in_first} commits in the first 20 s, at most {per_minute} per minute after, {} in 10 min; the fighter {} commits", run.commits.len(), run.writes.len());
                }
                assert!(in_first <= 8, "{label} {mode} seed {seed}: {in_first}");
                assert!(
                    per_minute <= 5,
                    "{label} {mode} seed {seed}: {per_minute}/min"
                );
                assert_eq!(
                    run.starts(),
                    1,
                    "{label} {mode} seed {seed}: {:?}",
                    run.events
                );
                // A fight is a fight: it is reported within its first 3 undos (+ period).
                let started = run
                    .events
                    .iter()
                    .find(|(_, e)| e.starts_episode())
                    .unwrap()
                    .0;
                // (a writer that never pauses gets its repairs at most every settle_cap)
                let step = a.period.max(t.fight.settle_cap);
                assert!(
                    started <= first + step * 3 + secs(1),
                    "{label}: {started:?}"
                );
            }
        }
    }

    #[test]
    fn once_the_fighter_stops_the_chain_converges_within_three_periods() {
        let t = Tuning::default();
        for (label, a) in fighters() {
            for seed in 1..=5 {
                let stop = secs(90) + ms(seed * 777);
                let a = Agent { stop, ..a.clone() };
                let run = simulate(&t, std::slice::from_ref(&a), stop + secs(60), seed);
                let writes: Vec<Duration> = run.writes.iter().map(|w| w.0).collect();
                let last = *writes.last().unwrap();
                let since = run.ours_since.expect("converged in the end");
                // The observed period: the longest of its last 8 intervals.
                let period = writes
                    .windows(2)
                    .rev()
                    .take(8)
                    .map(|w| w[1] - w[0])
                    .max()
                    .unwrap_or(a.period);
                let took = since - last;
                let mode = if a.only_when_ours {
                    "when ours"
                } else {
                    "always"
                };
                if seed == 1 {
                    eprintln!("{label} ({mode}): converged {took:?} after the fighter's last commit (observed period {period:?})");
                }
                assert!(
                    took <= (period * 3).min(secs(30)),
                    "{label} {mode} seed {seed}: {took:?}, period {period:?}"
                );
                // And the episode ends.
                assert!(
                    run.events
                        .iter()
                        .any(|(_, e)| matches!(e, FightEvent::Ended { .. })),
                    "{label} {mode} seed {seed}: {:?}",
                    run.events
                );
            }
        }
    }

    #[test]
    fn an_episode_is_one_writer_undoing_us_not_unrelated_one_offs() {
        let t = Tuning::default();
        // Three unrelated writers within 5 s, once each: no fight, each repaired.
        let one_offs: Vec<Agent> = ["admin", "script", "cni"]
            .iter()
            .enumerate()
            .map(|(i, n)| Agent {
                start: secs(1) + secs(2) * i as u32,
                stop: secs(1) + secs(2) * i as u32,
                ..Agent::every(n, secs(1000))
            })
            .collect();
        let run = simulate(&t, &one_offs, secs(60), 1);
        assert_eq!(run.starts(), 0, "{:?}", run.events);
        assert_eq!(run.commits.len(), 3);
        // Seven of them within 20 s: still none (eight would be the crowd safety net).
        let five: Vec<Agent> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .enumerate()
            .map(|(i, n)| Agent {
                start: ms(2500) * i as u32,
                stop: ms(2500) * i as u32,
                ..Agent::every(n, secs(1000))
            })
            .collect();
        assert_eq!(simulate(&t, &five, secs(60), 1).starts(), 0);
        // One writer three times within 10 s each: a fight.
        let one = Agent::every("kube-ovn", secs(4));
        assert_eq!(simulate(&t, &[one], secs(30), 1).starts(), 1);
    }

    #[test]
    fn the_status_names_the_latest_writer_and_says_it_yields() {
        let t = Tuning::default();
        let mut rng = Jitter::new(2);
        let t0 = Instant::now();
        let mut s = Sched::new(&t, standard(&t));
        let mut at = t0;
        for _ in 0..3 {
            s.changed(at, writer("kube-ovn-a"), &t, &mut rng);
            at += secs(1);
            let (c, _) = s.begin().unwrap();
            s.finish(at, c, Done::Repaired, &t, &mut rng);
        }
        assert!(s.fighting());
        assert!(!s.yielding(), "nothing pending");
        let mut w = writer("kube-ovn-b");
        w.pid = Some(5151);
        s.changed(at + ms(10), w, &t, &mut rng);
        assert!(s.yielding());
        let status = s.status().unwrap();
        assert!(
            status.starts_with("fight with pid 5151 (kube-ovn-b): yielding until nothing has written the chain for "),
            "{status}"
        );
        assert!(!s.due(at + secs(1)), "held");
    }

    #[test]
    fn two_daemons_with_contradicting_configs_end_their_fight() {
        // Two jumpsets, each undoing the other's placement: each sees the other as one
        // writer. Both yield; their commits stay within the bounds.
        let t = Tuning::default();
        for seed in 1..=5u64 {
            let mut rng = [Jitter::new(seed), Jitter::new(seed + 100)];
            let t0 = Instant::now();
            let mut s = [Sched::new(&t, standard(&t)), Sched::new(&t, standard(&t))];
            let names = ["jumpset-a", "jumpset-b"];
            let mut state = 0usize; // whose order the chain is in
            let mut commits: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
            let mut starts = [0, 0];
            // B starts and writes its order: A's change.
            state = 1 - state;
            s[0].changed(t0, writer(names[1]), &t, &mut rng[0]);
            let mut now = Duration::ZERO;
            let horizon = secs(600);
            while now < horizon {
                let next = (0..2)
                    .filter_map(|i| s[i].next_wake())
                    .min()
                    .map(|w| w - t0)
                    .unwrap_or(horizon);
                now = now.max(next).min(horizon);
                for i in 0..2 {
                    if let Some(e) = s[i].tick(t0 + now) {
                        starts[i] += usize::from(e.starts_episode());
                    }
                    if s[i].due(t0 + now) {
                        let (c, _) = s[i].begin().unwrap();
                        let done = if state == i {
                            Done::Clean
                        } else {
                            state = i;
                            commits[i].push(now);
                            let o = 1 - i;
                            if let Some(e) =
                                s[o].changed(t0 + now, writer(names[i]), &t, &mut rng[o])
                            {
                                starts[o] += usize::from(e.starts_episode());
                            }
                            Done::Repaired
                        };
                        if let Some(e) = s[i].finish(t0 + now, c, done, &t, &mut rng[i]) {
                            starts[i] += usize::from(e.starts_episode());
                        }
                    }
                }
                if (0..2).any(|i| s[i].next_wake().is_some_and(|w| w <= t0 + now)) {
                    now += Duration::from_micros(100);
                }
            }
            for i in 0..2 {
                let c = &commits[i];
                let first20 = c.iter().filter(|t| **t < secs(20)).count();
                let mut per_min = 0;
                for a in c.iter().filter(|t| **t >= secs(20)) {
                    per_min = per_min.max(
                        c.iter()
                            .filter(|t| **t >= *a && **t < *a + secs(60))
                            .count(),
                    );
                }
                if seed == 1 {
                    eprintln!("two daemons: {} commits in the first 20 s, at most {per_min} per minute after, {} in 10 min", first20, c.len());
                }
                assert!(first20 <= 8, "seed {seed} daemon {i}: {first20}");
                assert!(per_min <= 5, "seed {seed} daemon {i}: {per_min}");
                assert!(starts[i] >= 1, "daemon {i} never said it was fighting");
                assert!(
                    s[i].fighting(),
                    "seed {seed} daemon {i}: still an episode ({} starts, commits {c:?})",
                    starts[i]
                );
            }
        }
    }

    #[test]
    fn without_fight_detection_every_undo_is_repaired_at_once() {
        let t = Tuning::default().without_fight_detection();
        let run = simulate(&t, &[Agent::every("fighter", ms(50))], secs(2), 1);
        assert_eq!(run.commits.len(), run.bursts.len());
        assert!(run.events.is_empty());
        for (&(at, _), &(_, first, _)) in run.commits.iter().zip(&run.bursts) {
            assert!(at - first <= t.debounce, "{at:?} {first:?}");
        }
    }

    #[test]
    fn our_own_start_and_reload_repairs_are_not_undos() {
        let t = Tuning::default();
        let mut rng = Jitter::new(1);
        let t0 = Instant::now();
        let mut s = Sched::new(&t, standard(&t));
        for i in 0..10 {
            s.wake(t0 + ms(i), Cause::Reload);
            let (c, _) = s.begin().unwrap();
            assert!(s
                .finish(t0 + ms(i), c, Done::Repaired, &t, &mut rng)
                .is_none());
        }
        assert!(!s.fighting());
    }
}
