//! The engine's side of the local API (`docs/api.md`): the requests HTTP handlers send
//! ([`Command`]) and what the engine answers ([`Answer`]).
//!
//! - Reads (`status`, `check`) are made on the engine's backend and answered at once.
//! - The pause switch stops every write ([`Engine::set_paused`]) and is answered with the
//!   state.
//! - A claim arrives as the whole config with the agent's claim changed, already stored
//!   by the handler. The engine takes it as a reload would (the chains are rebuilt only
//!   when it differs from the config in force), then reconciles the chains the claim
//!   touches at once — through the same path as every other reconcile, so that the
//!   fight policy's hold-offs, the metrics and the logs are the same — and answers with
//!   their reports once every one of them has been reconciled (a repair held off for a
//!   writer's quiet is waited for). It answers [`Answer::Held`] instead when writes are
//!   paused, when the chain is yielded in a fight, or before a backend is open: the
//!   claim is in force and applied when writes resume.
//! - Handing jumps back with removal removes them in one transaction per chain and
//!   family (a cleanup of the agent's jumps only), now or once writes resume.

use super::{Action, Answer, Command, Engine, Host, Reload, Trigger};
use crate::backend::BackendError;
use crate::daemon::fight::Cause;
use crate::daemon::metrics::Health;
use crate::reconcile::{self, Goal, Outcome, ReconcileError};
use crate::report::{ChainApply, ChainResult, Failed, Report};
use crate::snapshot::Family;
use crate::spec::{ChainSpec, Config, Origin, Rejected};
use crate::Jumpset;
use std::time::{Instant, SystemTime};

/// A claim changed through the local API: the config with it (as
/// [`Config::with_claim`] made it and the handler stored it) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimChange {
    /// The agent.
    pub agent: String,
    /// The config with the agent's claim replaced (or dropped).
    pub config: Config,
    /// The fragments left out of it.
    pub rejected: Vec<Rejected>,
    /// `PUT`: reconcile the chains the new claim touches and answer their reports.
    pub reconcile: bool,
    /// `DELETE ?remove=true`: remove the jumps the agent's claim in force declared.
    pub remove: bool,
}

/// Paused or not, ready or not (`GET /v1/state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonState {
    /// Why writes are paused, if they are.
    pub paused: Option<String>,
    /// Since when (the wall clock), if paused.
    pub since: Option<SystemTime>,
    /// What `/readyz` says.
    pub health: Health,
}

/// A claim whose chains are being reconciled.
#[derive(Debug)]
struct Pending {
    /// The call to answer.
    id: u64,
    /// The chains and families still to be reconciled.
    waiting: Vec<(Family, String, String)>,
    /// The reports of those done, in the order they were done.
    done: Vec<ChainResult<ChainApply, Failed>>,
}

/// What the requests of the local API leave behind in the engine.
#[derive(Debug, Default)]
pub(super) struct Requests {
    /// Claims waiting for their chains' reconciles.
    pending: Vec<Pending>,
    /// Jumps handed back with removal while writes were held off: removed once they
    /// resume.
    removals: Vec<ChainSpec>,
    /// When writes were paused (the wall clock).
    paused_since: Option<SystemTime>,
}

impl<H: Host> Engine<H> {
    /// Answer (now, or once its chains are reconciled) the call `id`.
    pub(super) fn on_call(&mut self, now: Instant, id: u64, command: Command) {
        let answer =
            match command {
                Command::Ping => Some(Answer::Pong),
                Command::Chains => Some(self.read_report(|js, b| {
                    serde_json::to_value(js.status_with(b)).unwrap_or_default()
                })),
                Command::Check => Some(self.read_report(|js, b| {
                    serde_json::to_value(js.check_with(b)).unwrap_or_default()
                })),
                Command::State => Some(Answer::State(self.state())),
                Command::Pause(why) => {
                    if self.paused.is_none() {
                        self.api.paused_since = Some(self.host.wall());
                    }
                    self.set_paused(now, Some(why));
                    Some(Answer::State(self.state()))
                }
                Command::Resume => {
                    self.set_paused(now, None);
                    self.api.paused_since = None;
                    Some(Answer::State(self.state()))
                }
                Command::Claim(c) => self.on_claim(now, id, *c),
            };
        if let Some(a) = answer {
            self.out.push(Action::Answer(id, a));
        }
    }

    /// Paused or not, ready or not.
    fn state(&self) -> DaemonState {
        DaemonState {
            paused: self.paused.clone(),
            since: self.paused.as_ref().and(self.api.paused_since),
            health: self.health.clone(),
        }
    }

    /// A read of every managed chain and family on the open backend.
    fn read_report(
        &mut self,
        read: impl FnOnce(&Jumpset, &mut dyn crate::backend::Backend) -> serde_json::Value,
    ) -> Answer {
        let Some(conn) = self.conn.as_mut() else {
            return Answer::Unavailable(match &self.waiting {
                Some(w) => format!("no backend is open: {w}"),
                None => "no backend is open yet".into(),
            });
        };
        let js = Jumpset::new(self.cfg.clone()).families(self.sel.families.clone());
        Answer::Report(read(&js, conn.backend.as_mut()))
    }

    /// Why writes are held off for every chain, if they are: (state, reason).
    fn held(&self) -> Option<(&'static str, String)> {
        if let Some(p) = &self.paused {
            return Some(("paused", p.clone()));
        }
        if self.conn.is_none() || !self.ready {
            return Some((
                "starting",
                self.waiting
                    .clone()
                    .unwrap_or_else(|| "no backend is open yet".into()),
            ));
        }
        None
    }

    fn on_claim(&mut self, now: Instant, id: u64, c: ClaimChange) -> Option<Answer> {
        let agent = c.agent.clone();
        let mine = |o: &Origin| matches!(o, Origin::Api { agent: a } if *a == agent);
        // The jumps the claim in force declares, before the new config replaces it.
        let released: Vec<ChainSpec> = if c.remove {
            self.cfg
                .chains
                .iter()
                .filter_map(|ch| {
                    let jumps: Vec<_> = ch
                        .jumps
                        .iter()
                        .filter(|j| mine(&j.origin))
                        .cloned()
                        .collect();
                    (!jumps.is_empty()).then(|| ChainSpec {
                        table: ch.table.clone(),
                        chain: ch.chain.clone(),
                        jumps,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let wanted = c.config.clone();
        let before = self.cfg.clone();
        self.reload(
            now,
            Reload {
                trigger: Trigger::Api,
                loaded: Ok((c.config, c.rejected)),
            },
        );
        if self.cfg != wanted {
            return Some(Answer::Failed(format!(
                "the claim is stored but the daemon cannot take the config it makes: {}",
                self.reload_error.clone().unwrap_or_default()
            )));
        }
        let count = |cfg: &Config| -> usize {
            cfg.chains
                .iter()
                .flat_map(|ch| &ch.jumps)
                .filter(|j| mine(&j.origin))
                .count()
        };
        if before != self.cfg {
            let (was, is) = (count(&before), count(&self.cfg));
            self.info(if c.reconcile {
                format!("API: agent {agent} claims {is} jump(s) (before: {was})")
            } else {
                format!("API: agent {agent} handed its {was} jump(s) back")
            });
        }
        if !c.reconcile {
            if !c.remove {
                return Some(Answer::Removed(None));
            }
            if released.is_empty() {
                return Some(Answer::Removed(Some(self.remove_now(&[]))));
            }
            if let Some((state, reason)) = self.held() {
                self.api.removals.extend(released);
                return Some(Answer::Held { state, reason });
            }
            return Some(Answer::Removed(Some(self.remove_now(&released))));
        }
        // Every managed family of every chain the claim touches.
        let mut waiting = Vec::new();
        for ch in &self.cfg.chains {
            if ch.jumps.iter().any(|j| mine(&j.origin)) {
                for &f in &self.sel.families {
                    waiting.push((f, ch.table.clone(), ch.chain.clone()));
                }
            }
        }
        if waiting.is_empty() {
            let empty: Report<ChainApply, Failed> = Report::new(self.backend_name, Vec::new());
            return Some(Answer::Applied(
                serde_json::to_value(empty).unwrap_or_default(),
            ));
        }
        if let Some((state, reason)) = self.held() {
            return Some(Answer::Held { state, reason });
        }
        for key in &waiting {
            if let Some(i) = self.target_of(key) {
                if self.targets[i].sched.yielding() {
                    let name = self.target_name(i);
                    let why = self.targets[i].sched.status().unwrap_or_default();
                    return Some(Answer::Held {
                        state: "yielding",
                        reason: format!("{name}: {why}"),
                    });
                }
            }
        }
        for key in &waiting {
            if let Some(i) = self.target_of(key) {
                self.targets[i].sched.wake(now, Cause::Reload);
            }
        }
        self.api.pending.push(Pending {
            id,
            waiting,
            done: Vec::new(),
        });
        None
    }

    /// The target of (family, table, chain), if it is managed.
    fn target_of(&self, key: &(Family, String, String)) -> Option<usize> {
        self.targets.iter().position(|t| {
            let spec = &self.cfg.chains[t.chain];
            t.family == key.0 && spec.table == key.1 && spec.chain == key.2
        })
    }

    /// Target `i` was just reconciled to `res`: the claims waiting for it take its report.
    /// (A busy xtables lock is no result yet: the reconcile is tried again.)
    pub(super) fn note_for_requests(&mut self, i: usize, res: &Result<Outcome, ReconcileError>) {
        if self.api.pending.is_empty()
            || matches!(
                res,
                Err(ReconcileError::Backend(BackendError::LockHeld { .. }))
            )
        {
            return;
        }
        let t = &self.targets[i];
        let spec = &self.cfg.chains[t.chain];
        let key = (t.family, spec.table.clone(), spec.chain.clone());
        for p in &mut self.api.pending {
            if let Some(at) = p.waiting.iter().position(|k| *k == key) {
                p.waiting.remove(at);
                p.done.push(ChainResult::new(
                    key.0,
                    &key.1,
                    &key.2,
                    match res {
                        Ok(o) => Ok(ChainApply::new(o, spec)),
                        Err(e) => Err(Failed::of(e)),
                    },
                ));
            }
        }
    }

    /// Answer the claims whose chains are all reconciled (or held off after all), and
    /// remove the jumps handed back while writes were held off once they resume.
    pub(super) fn settle_requests(&mut self, _now: Instant) {
        if !self.api.removals.is_empty() && self.held().is_none() {
            let specs = std::mem::take(&mut self.api.removals);
            let _ = self.remove_now(&specs);
        }
        let pending = std::mem::take(&mut self.api.pending);
        for mut p in pending {
            // A chain no longer managed (a reload in between) is not waited for.
            p.waiting.retain(|k| self.target_of(k).is_some());
            let answer = if p.waiting.is_empty() {
                let mut done = std::mem::take(&mut p.done);
                // In the config's order, as every report.
                done.sort_by_key(|r| {
                    self.target_of(&(r.family, r.table.clone(), r.chain.clone()))
                        .unwrap_or(usize::MAX)
                });
                let report = Report::new(self.backend_name, done);
                Some(Answer::Applied(
                    serde_json::to_value(report).unwrap_or_default(),
                ))
            } else if let Some((state, reason)) = self.held() {
                Some(Answer::Held { state, reason })
            } else {
                p.waiting.iter().find_map(|k| {
                    let i = self.target_of(k)?;
                    self.targets[i].sched.yielding().then(|| Answer::Held {
                        state: "yielding",
                        reason: format!(
                            "{}: {}",
                            self.target_name(i),
                            self.targets[i].sched.status().unwrap_or_default()
                        ),
                    })
                })
            };
            match answer {
                Some(a) => self.out.push(Action::Answer(p.id, a)),
                None => self.api.pending.push(p),
            }
        }
    }

    /// Remove the jumps of `specs` (one transaction per chain and family): the cleanup
    /// report's JSON. Each removal is logged.
    fn remove_now(&mut self, specs: &[ChainSpec]) -> serde_json::Value {
        let families = self.sel.families.clone();
        let mut results = Vec::new();
        let mut records = Vec::new();
        if let Some(conn) = self.conn.as_mut() {
            for spec in specs {
                for &family in &families {
                    let name = format!("{family} {} {}", spec.table, spec.chain);
                    let res =
                        reconcile::reconcile(conn.backend.as_mut(), family, spec, Goal::Remove);
                    match &res {
                        Ok(o) if o.committed => records.push((
                            tracing::Level::INFO,
                            format!(
                                "{name}: removed the jumps handed back: {}",
                                super::plan_text(o, spec)
                            ),
                        )),
                        Ok(_) => {}
                        Err(e) => records.push((
                            tracing::Level::WARN,
                            format!("{name}: removing the jumps handed back failed: {e}"),
                        )),
                    }
                    results.push(ChainResult::new(
                        family,
                        &spec.table,
                        &spec.chain,
                        res.as_ref()
                            .map(|o| ChainApply::new(o, spec))
                            .map_err(Failed::of),
                    ));
                }
            }
        }
        for (level, msg) in records {
            self.log(level, msg);
        }
        serde_json::to_value(Report::new(self.backend_name, results)).unwrap_or_default()
    }
}
