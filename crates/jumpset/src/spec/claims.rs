//! An agent's API claim checked against the config as loaded (main file, drop-ins, the
//! other agents' claims): what the daemon's local API does before it stores a claim
//! (`docs/api.md`).

use super::{Config, ConfigBuilder, Contradiction, Fragment, Origin, Rejected, SpecError};
use std::path::{Path, PathBuf};

/// Why a claim cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimError {
    /// The claim is invalid on its own (HTTP 400).
    Invalid(SpecError),
    /// It contradicts another declaration (HTTP 409); the error's `contradiction` says
    /// which constraint and whose.
    Conflict(SpecError),
    /// A drop-in fragment speaks for the same agent (HTTP 409): one agent declares its
    /// jumps one way.
    Fragment {
        /// The drop-in file.
        path: PathBuf,
    },
    /// The main config cannot be read or is invalid, so no claim can be checked against
    /// it (the running daemon keeps the config it has).
    Main(SpecError),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Invalid(e) | ClaimError::Conflict(e) | ClaimError::Main(e) => {
                write!(f, "config: {e}")
            }
            ClaimError::Fragment { path } => write!(
                f,
                "the drop-in {} speaks for this agent: an agent declares its jumps one way (a drop-in or API claims), never both",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ClaimError {}

impl Config {
    /// The config at `path` — main file, drop-ins, persisted claims, as
    /// [`Config::load_lenient`] reads it — with `agent`'s claim replaced by `claim`
    /// (`None`: dropped), and the fragments left out of it: exactly what
    /// `load_lenient` returns once the claim is stored.
    ///
    /// The claim is refused when it is invalid on its own, when a drop-in speaks for
    /// the same agent, or when it contradicts anything accepted so far (a shared
    /// comment or target, a cycle): it is checked after every other declaration, so
    /// the contradiction is said against the claim, never against an earlier one — and a
    /// claim that would leave another fragment out is refused too. Nothing changes
    /// on disk.
    pub fn with_claim(
        path: &Path,
        agent: &str,
        claim: Option<Fragment>,
    ) -> Result<(Config, Vec<Rejected>), ClaimError> {
        let (mut b, mut unreadable) = ConfigBuilder::load_parts(path).map_err(ClaimError::Main)?;
        let mine = |o: &Origin| matches!(o, Origin::Api { agent: a } if a == agent);
        b.fragments.retain(|f| !mine(&f.origin));
        unreadable.retain(|r| !mine(&r.origin));
        let Some(claim) = claim else {
            let (config, mut rejected) = b.build_lenient().map_err(ClaimError::Main)?;
            unreadable.append(&mut rejected);
            return Ok((config, unreadable));
        };
        if claim.agent != agent || !mine(&claim.origin) {
            return Err(ClaimError::Invalid(super::err(
                "agent",
                None,
                format!("the claim speaks for {:?}, not {agent:?}", claim.agent),
            )));
        }
        let dropin = b
            .fragments
            .iter()
            .map(|f| &f.origin)
            .chain(unreadable.iter().map(|r| &r.origin))
            .find_map(|o| match o {
                Origin::DropIn { path, agent: a } if a == agent => Some(path.clone()),
                _ => None,
            });
        if let Some(path) = dropin {
            return Err(ClaimError::Fragment { path });
        }

        // Alone, with the main file's settings (its comment encoding bounds comments).
        let mut alone = b.clone();
        alone.chains.clear();
        alone.fragments = vec![claim.clone()];
        alone.build().map_err(ClaimError::Invalid)?;

        // After every other declaration: the contradiction is the claim's.
        let mut last = b.clone();
        last.fragments.push(claim.clone());
        let (_, left_out_last) = last.build_lenient().map_err(ClaimError::Main)?;
        if let Some(r) = left_out_last.iter().find(|r| mine(&r.origin)) {
            return Err(ClaimError::Conflict(r.error.clone()));
        }

        // In the order the files are read (drop-ins, then claims by file name).
        let name = |a: &str| format!("{a}.json");
        let at = b
            .fragments
            .iter()
            .position(|f| matches!(&f.origin, Origin::Api { agent: a } if name(a) > name(agent)))
            .unwrap_or(b.fragments.len());
        b.fragments.insert(at, claim);
        let (config, mut rejected) = b.build_lenient().map_err(ClaimError::Main)?;
        if let Some(r) = rejected
            .iter()
            .find(|r| mine(&r.origin) || !left_out_last.iter().any(|l| l.origin == r.origin))
        {
            // Read in file order, the claim would leave another fragment out (or be left
            // out itself): refused all the same.
            let mut e = super::err(
                "",
                None,
                format!(
                    "taking this claim would leave {} out: {}",
                    r.origin, r.error
                ),
            );
            let other = r
                .error
                .contradiction
                .as_deref()
                .cloned()
                .unwrap_or(Contradiction {
                    constraint: String::new(),
                    with: Vec::new(),
                    cycle: Vec::new(),
                });
            e.contradiction = Some(Box::new(Contradiction {
                constraint: String::new(),
                with: if mine(&r.origin) {
                    other.with
                } else {
                    vec![r.origin.clone()]
                },
                cycle: other.cycle,
            }));
            return Err(ClaimError::Conflict(e));
        }
        unreadable.append(&mut rejected);
        Ok((config, unreadable))
    }
}
