//! The fight policy: what the daemon does when another writer keeps undoing its
//! placement. One [`FightPolicy`] per managed (chain, family), owned by its
//! [`Sched`](super::fight::Sched); the engine only asks it when a repair may run, feeds it
//! what happened, and reports what it says. Changing the policy is changing this module
//! (and its tests): the engine and the scheduler depend on the trait alone.
//!
//! The standard policy, [`Backoff`]: a repair that undid another writer's change is an
//! *undo*. [`FightParams::threshold`] undos, each within [`FightParams::gap`] of the
//! previous, start a fight *episode*: from then on every repair is followed by a hold-off
//! that doubles from [`FightParams::backoff_base`] up to [`FightParams::backoff_cap`] (at
//! least 1 s). An episode ends when no undo was needed for [`FightParams::quiet`]; normal
//! speed resumes. Start and end are reported once each ([`FightEvent`]).
//!
//! The bound (against a writer undoing us 20 times a second, at most 40 commits in 10 s):
//! at most `threshold` (3) quick repairs before the episode starts, then hold-offs of 0.1,
//! 0.2, 0.4, 0.8 s and 1 s (jitter only lengthens them): 3 + 4 + ⌈(10 − 1.5) / 1⌉ = 16
//! commits at most in the first 10 s. Tested below against a simulated 20 Hz undoer.

use super::fight::{self, Jitter, Tuning, Writer};
use super::ms;
use std::fmt;
use std::time::{Duration, Instant};
use tracing::Level;

/// Decides how the repairs of one chain are paced while other writers undo them.
///
/// The scheduler calls [`changed`](FightPolicy::changed) for every foreign change noticed,
/// [`undone`](FightPolicy::undone) after every repair that undid someone else's change,
/// and [`tick`](FightPolicy::tick) whenever time passes (at the latest at
/// [`next_check`](FightPolicy::next_check)); it never starts a repair before
/// [`not_before`](FightPolicy::not_before).
pub trait FightPolicy: fmt::Debug {
    /// `writer` changed the chain at `now` (a repair will follow once allowed). Returns
    /// the event to report, if any.
    fn changed(&mut self, now: Instant, writer: &Writer) -> Option<FightEvent>;

    /// A repair committed at `now` undid `writer`'s change (an unidentified writer for a
    /// change found by a re-read). Returns the event to report, if any.
    fn undone(&mut self, now: Instant, writer: &Writer, rng: &mut Jitter) -> Option<FightEvent>;

    /// The earliest instant the next repair may run, when the policy holds it off.
    fn not_before(&self) -> Option<Instant>;

    /// When [`tick`](FightPolicy::tick) has something to decide next.
    fn next_check(&self) -> Option<Instant>;

    /// Time passed: may end an episode. Returns the event to report, if any.
    fn tick(&mut self, now: Instant) -> Option<FightEvent>;

    /// Whether an episode is running (the `jumpset_fight_active` gauge).
    fn active(&self) -> bool;

    /// What `STATUS=` adds for this chain while an episode runs, e.g.
    /// `fight with pid 42 (iptables-nft) (backing off)`.
    fn status(&self) -> Option<String>;
}

/// Makes the policy of each chain.
pub type PolicyFactory = fn(&Tuning) -> Box<dyn FightPolicy>;

/// The standard policy, parametrised by `t.fight` and `t.jitter`.
pub fn standard(t: &Tuning) -> Box<dyn FightPolicy> {
    Box::new(Backoff::new(&t.fight, t.jitter))
}

/// The standard policy's parameters ([`Tuning::fight`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FightParams {
    /// Undos, each within `gap` of the previous, that make a fight.
    pub threshold: u32,
    /// Undos farther apart than this do not add up to a fight.
    pub gap: Duration,
    /// An episode ends when no undo was needed for this long.
    pub quiet: Duration,
    /// First hold-off between repairs in a fight.
    pub backoff_base: Duration,
    /// Longest hold-off between repairs in a fight (never less than 1 s).
    pub backoff_cap: Duration,
}

impl Default for FightParams {
    fn default() -> Self {
        FightParams {
            threshold: 3,
            gap: Duration::from_secs(5),
            quiet: Duration::from_secs(5),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
        }
    }
}

impl FightParams {
    /// No fight detection: every undo is repaired at once.
    pub fn disabled(mut self) -> Self {
        self.threshold = u32::MAX;
        self
    }

    /// The longest hold-off actually used.
    fn cap(&self) -> Duration {
        self.backoff_cap.max(Duration::from_secs(1))
    }
}

/// A fight episode starting or ending: reported once each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FightEvent {
    /// Another writer keeps undoing our placement.
    Started {
        /// The writer of the latest undone change.
        writer: Writer,
        /// Undos so far.
        undos: u32,
        /// The longest hold-off between repairs from now on.
        cap: Duration,
    },
    /// No undo for the quiet time: normal speed again.
    Ended {
        /// How long it lasted (first undo of the episode to the last).
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
            FightEvent::Ended { .. } => Level::INFO,
        }
    }

    /// The log record, after `FAMILY TABLE CHAIN: `.
    pub fn message(&self) -> String {
        match self {
            FightEvent::Started { writer, undos, cap } => format!(
                "fight: another writer keeps undoing jumpset's placement ({undos} undos in a row; the latest by {}, touching {} rules); backing off exponentially, up to {} between repairs, instead of matching it write for write",
                writer.describe(),
                writer.agents_text(),
                ms(*cap)
            ),
            FightEvent::Ended { lasted, undos } => format!(
                "the other writer stopped ({undos} undos over {}); repairing at full speed again",
                ms(*lasted)
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Episode {
    started: Instant,
    undos: u32,
    /// The writer whose undo started it.
    writer: Writer,
}

/// The standard policy: exponential hold-offs once undos come in a streak (module docs).
#[derive(Debug, Clone)]
pub struct Backoff {
    params: FightParams,
    jitter: f64,
    streak: u32,
    streak_start: Option<Instant>,
    last_undo: Option<Instant>,
    episode: Option<Episode>,
    backoff: fight::Backoff,
    hold_until: Option<Instant>,
}

impl Backoff {
    /// No fight; each hold-off stretched by a random fraction below `jitter`.
    pub fn new(params: &FightParams, jitter: f64) -> Self {
        Backoff {
            params: params.clone(),
            jitter,
            streak: 0,
            streak_start: None,
            last_undo: None,
            episode: None,
            backoff: fight::Backoff::new(params.backoff_base, params.cap()),
            hold_until: None,
        }
    }
}

impl FightPolicy for Backoff {
    fn changed(&mut self, _now: Instant, _writer: &Writer) -> Option<FightEvent> {
        None
    }

    fn undone(&mut self, now: Instant, writer: &Writer, rng: &mut Jitter) -> Option<FightEvent> {
        let continues = self
            .last_undo
            .is_some_and(|l| now.saturating_duration_since(l) <= self.params.gap);
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
            None if self.streak >= self.params.threshold => {
                self.backoff.reset();
                self.episode = Some(Episode {
                    started: self.streak_start.unwrap_or(now),
                    undos: self.streak,
                    writer: writer.clone(),
                });
                event = Some(FightEvent::Started {
                    writer: writer.clone(),
                    undos: self.streak,
                    cap: self.params.cap(),
                });
            }
            None => return None,
        }
        let hold = rng.stretch(self.backoff.next_delay(), self.jitter);
        self.hold_until = Some(now + hold);
        event
    }

    fn not_before(&self) -> Option<Instant> {
        self.hold_until
    }

    fn next_check(&self) -> Option<Instant> {
        self.episode.as_ref()?;
        self.last_undo.map(|l| l + self.params.quiet)
    }

    fn tick(&mut self, now: Instant) -> Option<FightEvent> {
        let last = self.last_undo?;
        if now.saturating_duration_since(last) < self.params.quiet {
            return None;
        }
        self.streak = 0;
        self.backoff.reset();
        let e = self.episode.take()?;
        self.hold_until = None;
        Some(FightEvent::Ended {
            lasted: last.saturating_duration_since(e.started),
            undos: e.undos,
        })
    }

    fn active(&self) -> bool {
        self.episode.is_some()
    }

    fn status(&self) -> Option<String> {
        let e = self.episode.as_ref()?;
        Some(format!("fight with {} (backing off)", e.writer.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::fight::{Cause, Done, Sched};

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

    fn sched(t: &Tuning) -> Sched {
        Sched::new(t, standard(t))
    }

    #[test]
    fn our_own_start_and_reload_repairs_are_not_undos() {
        let t = Tuning::default();
        let mut rng = Jitter::new(1);
        let t0 = Instant::now();
        let mut s = sched(&t);
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
        let mut s = sched(t);
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
            if let Some(e) = s.tick(now) {
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
            FightEvent::Started {
                writer: w, undos, ..
            } => {
                assert_eq!(*undos, 3);
                assert_eq!(w.describe(), "pid 4242 (iptables-nft)");
            }
            _ => unreachable!(),
        }
        assert!(starts[0].1.starts_episode());
        assert!(starts[0].1.message().contains("pid 4242 (iptables-nft)"));
        assert!(starts[0].0 < ms(200), "detected early: {:?}", starts[0].0);
    }

    #[test]
    fn the_bound_holds_whatever_the_jitter_and_period() {
        for period in [1u64, 10, 25, 50, 100, 333] {
            for seed in 1..20 {
                let t = Tuning::default();
                let mut rng = Jitter::new(seed);
                let t0 = Instant::now();
                let mut s = sched(&t);
                let (mut commits, mut drifted, mut next) = (0, false, t0);
                let mut now = t0;
                while now - t0 < Duration::from_secs(10) {
                    if now >= next {
                        drifted = true;
                        s.changed(now, writer(), &t);
                        next += ms(period);
                    }
                    s.tick(now);
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
        let quiet = t.fight.quiet;
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
        // The episode ends the quiet time after the last undo.
        assert!(ends[0].0 >= last_commit + quiet);
        assert!(ends[0].0 <= last_commit + quiet + ms(2));

        // Afterwards a single change is repaired after the debounce only.
        let mut rng = Jitter::new(5);
        let t0 = Instant::now();
        let mut s = sched(&t);
        for i in 0..5 {
            s.changed(t0 + ms(50 * i), writer(), &t);
            let (c, _) = s.begin().unwrap();
            s.finish(t0 + ms(50 * i), c, Done::Repaired, &t, &mut rng);
        }
        assert!(s.fighting());
        assert_eq!(
            s.status().as_deref(),
            Some("fight with pid 4242 (iptables-nft) (backing off)")
        );
        let later = t0 + ms(200) + quiet;
        assert!(matches!(s.tick(later), Some(FightEvent::Ended { undos, .. }) if undos == 5));
        assert!(!s.fighting());
        assert_eq!(s.status(), None);
        s.changed(later, writer(), &t);
        assert!(
            s.due(later + t.debounce),
            "no hold-off left after the episode"
        );
        // And a new fight is a new episode, logged again.
        let mut started = 0;
        for i in 0..5 {
            let now = later + ms(50 * i);
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
