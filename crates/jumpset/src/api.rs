//! jumpset as a library: [`Jumpset`] holds a validated [`Config`] and says where to act;
//! each method is one `jumpset` command and returns its typed [`Report`].
//!
//! Every call opens its own kernel sockets and closes them before it returns, in the
//! network namespace of the calling thread — or in the one given with
//! [`Jumpset::netns`] (as google/nftables' `WithNetNSFd`). The `*_with` methods run the
//! same operation on a backend the caller opened, such as
//! [`FakeKernel`](crate::testing::FakeKernel) (feature `testing`).

use crate::backend::{self, Backend};
use crate::detect::HostVerdict;
use crate::error::Error;
use crate::explain::{self, Explanation, Hook};
use crate::reconcile::{self, Goal};
use crate::report::{ChainApply, ChainCheck, ChainPlan, ChainResult, ChainStatus, Report};
use crate::snapshot::Family;
use crate::spec::{BackendChoice, ChainSpec, Config};
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// A validated config and where to act: the library's entry point.
#[derive(Debug, Clone)]
pub struct Jumpset {
    config: Config,
    backend: BackendChoice,
    families: Vec<Family>,
    netns: Option<Arc<OwnedFd>>,
    allow_mixed: bool,
}

impl Jumpset {
    /// Act on `config`, with its backend and families, in the calling thread's network
    /// namespace.
    pub fn new(config: Config) -> Self {
        Jumpset {
            backend: config.backend,
            families: config.families.clone(),
            config,
            netns: None,
            allow_mixed: false,
        }
    }

    /// Let a write create the first iptables table of its backend for a family while the
    /// other backend is in use for it, making the host mixed (`--allow-mixed-backends`).
    /// Off by default: such a write fails with
    /// [`BackendError::WouldMix`](crate::backend::BackendError::WouldMix) and changes nothing.
    #[must_use]
    pub fn allow_mixed_backends(mut self, allow: bool) -> Self {
        self.allow_mixed = allow;
        self
    }

    /// Use this backend instead of the config's (`--backend`).
    #[must_use]
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// Manage these families instead of the config's (`--family`).
    #[must_use]
    pub fn families(mut self, families: impl IntoIterator<Item = Family>) -> Self {
        self.families = families.into_iter().collect();
        self
    }

    /// Act in the network namespace `netns` refers to (an fd of `/proc/PID/ns/net` or
    /// `/run/netns/NAME`) instead of the calling thread's: each call runs on a short-lived
    /// thread that enters it first (setns; needs CAP_SYS_ADMIN).
    #[must_use]
    pub fn netns(mut self, netns: OwnedFd) -> Self {
        self.netns = Some(Arc::new(netns));
        self
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend that will be opened (`auto`: detected at each call).
    pub fn backend_choice(&self) -> BackendChoice {
        self.backend
    }

    /// The families managed.
    pub fn managed_families(&self) -> &[Family] {
        &self.families
    }

    /// `jumpset status`: each rule of each managed chain, its owner, in place or not.
    pub fn status(&self) -> Result<Report<ChainStatus>, Error> {
        self.with_opened(|b| self.status_with(b))
    }

    /// `jumpset check`: whether each chain has converged (exit 0), needs changes (1) or
    /// is as close as a conflict allows (5).
    pub fn check(&self) -> Result<Report<ChainCheck>, Error> {
        self.with_opened(|b| self.check_with(b))
    }

    /// `jumpset plan`: what `apply` would do.
    pub fn plan(&self) -> Result<Report<ChainPlan>, Error> {
        self.with_opened(|b| self.plan_with(b))
    }

    /// `jumpset plan --explain`: what `apply` would do, and why each declared jump would
    /// stand where it leaves it.
    pub fn plan_explained(&self) -> Result<Report<ChainPlan>, Error> {
        self.with_opened(|b| self.plan_explained_with(b))
    }

    /// `jumpset explain`: every base chain a packet of each managed family meets on
    /// `hooks` (default: the hooks of the managed chains), in the kernel's order, who owns
    /// each, the findings, and for each managed chain every rule and why each owned jump
    /// stands where it does. Read-only, like `detect`.
    pub fn explain(&self, hooks: Option<&[Hook]>) -> Result<Explanation, Error> {
        let run = || {
            let mut req = explain::Request::new(Some(&self.config));
            req.backend = self.backend;
            req.families = self.families.clone();
            if let Some(h) = hooks {
                req.hooks = h.to_vec();
            }
            explain::explain(&req)
        };
        match &self.netns {
            None => run(),
            Some(fd) => crate::netns::run_in(fd, run),
        }
    }

    /// `jumpset apply`: one reconcile, one kernel transaction per chain and family.
    pub fn apply(&self) -> Result<Report<ChainApply>, Error> {
        self.with_opened(|b| self.apply_with(b))
    }

    /// `jumpset cleanup`: remove every owned jump (and stale copy), one transaction per
    /// chain and family.
    pub fn cleanup(&self) -> Result<Report<ChainApply>, Error> {
        self.with_opened(|b| self.cleanup_with(b))
    }

    /// [`Jumpset::status`] on an open backend.
    pub fn status_with(&self, backend: &mut dyn Backend) -> Report<ChainStatus> {
        self.each(backend, |b, family, spec| {
            let snap = b.read(family, &spec.table, &spec.chain)?;
            let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
            Ok(ChainStatus::new(&snap, spec, &plan))
        })
    }

    /// [`Jumpset::check`] on an open backend.
    pub fn check_with(&self, backend: &mut dyn Backend) -> Report<ChainCheck> {
        let expect = self.config.expect_anchors;
        self.each(backend, |b, family, spec| {
            let snap = b.read(family, &spec.table, &spec.chain)?;
            let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
            Ok(ChainCheck::with_anchors(
                ChainPlan::new(&snap, spec, &plan),
                crate::report::anchors(&snap, spec),
                expect,
            ))
        })
    }

    /// [`Jumpset::plan`] on an open backend.
    pub fn plan_with(&self, backend: &mut dyn Backend) -> Report<ChainPlan> {
        self.each(backend, |b, family, spec| {
            plan_one(b, family, spec, Goal::Converge)
        })
    }

    /// [`Jumpset::plan_explained`] on an open backend.
    pub fn plan_explained_with(&self, backend: &mut dyn Backend) -> Report<ChainPlan> {
        self.each(backend, |b, family, spec| {
            let snap = b.read(family, &spec.table, &spec.chain)?;
            let plan = reconcile::plan_for(Goal::Converge, &snap, spec);
            Ok(ChainPlan::new(&snap, spec, &plan).with_reasons(&snap, spec, &plan))
        })
    }

    /// [`Jumpset::apply`] on an open backend.
    pub fn apply_with(&self, backend: &mut dyn Backend) -> Report<ChainApply> {
        self.each(backend, |b, family, spec| {
            let o = reconcile::reconcile(b, family, spec, Goal::Converge)?;
            Ok(ChainApply::new(&o, spec))
        })
    }

    /// [`Jumpset::cleanup`] on an open backend.
    pub fn cleanup_with(&self, backend: &mut dyn Backend) -> Report<ChainApply> {
        self.each(backend, |b, family, spec| {
            let o = reconcile::reconcile(b, family, spec, Goal::Remove)?;
            Ok(ChainApply::new(&o, spec))
        })
    }

    /// Open the backend (in the namespace to act in) and run `f` on it.
    fn with_opened<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Backend) -> T + Send,
    ) -> Result<T, Error> {
        let run = || -> Result<T, Error> {
            let options = backend::OpenOptions {
                xtables_lock_timeout: self.config.xtables_lock_timeout,
                allow_mixed: self.allow_mixed,
            };
            let mut b = backend::open(self.backend, options)?;
            Ok(f(b.as_mut()))
        };
        match &self.netns {
            None => run(),
            Some(fd) => crate::netns::run_in(fd, run),
        }
    }

    fn each<T>(
        &self,
        backend: &mut dyn Backend,
        mut f: impl FnMut(&mut dyn Backend, Family, &ChainSpec) -> Result<T, Error>,
    ) -> Report<T> {
        let mut chains = Vec::new();
        for spec in &self.config.chains {
            for &family in &self.families {
                chains.push(ChainResult {
                    family,
                    table: spec.table.clone(),
                    chain: spec.chain.clone(),
                    outcome: f(backend, family, spec),
                });
            }
        }
        Report {
            backend: backend.name(),
            chains,
        }
    }
}

fn plan_one(
    b: &mut dyn Backend,
    family: Family,
    spec: &ChainSpec,
    goal: Goal,
) -> Result<ChainPlan, Error> {
    let snap = b.read(family, &spec.table, &spec.chain)?;
    let plan = reconcile::plan_for(goal, &snap, spec);
    Ok(ChainPlan::new(&snap, spec, &plan))
}

/// `jumpset detect`: the host's mode, the backend `--backend auto` would use, and the
/// evidence, read without side effects. Needs CAP_NET_ADMIN (+ CAP_NET_RAW when legacy
/// tables exist).
pub fn detect() -> Result<HostVerdict, Error> {
    crate::privilege::require(BackendChoice::Nft)?;
    Ok(crate::detect::detect_host()?)
}
