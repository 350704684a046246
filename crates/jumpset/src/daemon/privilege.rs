//! Least privilege for the daemon: check that the capabilities it needs are there, then
//! drop every other one from every set (effective, permitted, inheritable, ambient,
//! bounding). Capabilities are per thread and inherited by the threads a thread creates,
//! so this must run in `main` before the tokio runtime (or anything else) starts a thread.

use crate::error::Error;
use crate::privilege::why;
pub use crate::privilege::{missing, needed};
use crate::spec::BackendChoice;
use caps::{CapSet, Capability, CapsHashSet};

/// Exit 3 naming each missing capability and how to grant it.
pub fn check(choice: BackendChoice) -> Result<(), Error> {
    let missing = missing(choice);
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|c| format!("{c} ({})", why(*c)))
        .collect();
    let names: Vec<String> = needed(choice).iter().map(|c| c.to_string()).collect();
    let lower: Vec<String> = needed(choice)
        .iter()
        .map(|c| c.to_string().to_lowercase())
        .collect();
    let bare: Vec<String> = needed(choice)
        .iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
        .collect();
    Err(Error::Privilege {
        missing: missing.iter().map(|c| c.to_string()).collect(),
        message: format!(
            "jumpset daemon (backend {}) needs {}; this process does not hold it. Run it as root, or grant it: \
             AmbientCapabilities={} in the systemd unit, `setcap {}+ep` on the binary, or \
             securityContext.capabilities.add: [{}] in Kubernetes",
            choice.name(),
            list.join(" and "),
            names.join(" "),
            lower.join(","),
            bare.join(", ")
        ),
    })
}

/// Keep only `keep` in every capability set of the calling thread. The bounding set
/// can only be lowered while CAP_SETPCAP is effective, so it goes first; when it cannot
/// be lowered (no CAP_SETPCAP) the other sets are still reduced and the error says so.
pub fn drop_all_but(keep: &[Capability]) -> Result<(), String> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let mut problems = Vec::new();
    for cap in caps::all() {
        if keep.contains(&cap) || !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            continue;
        }
        if let Err(e) = caps::drop(None, CapSet::Bounding, cap) {
            problems.push(format!("bounding set: {cap}: {e}"));
            break; // without CAP_SETPCAP none will go
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        problems.push(format!("ambient set: {e}"));
    }
    for (set, value) in [
        (CapSet::Inheritable, CapsHashSet::new()),
        (CapSet::Effective, keep.clone()),
        (CapSet::Permitted, keep.clone()),
    ] {
        if let Err(e) = caps::set(None, set, &value) {
            problems.push(format!("{set:?} set: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Least privilege for the daemon, before its runtime starts a thread: check that the
/// capabilities the backend `choice` needs are held (exit 3 naming each missing one),
/// set `no_new_privs`, then drop every other capability from every set. `Ok(Some(..))`
/// is a warning to log. A bounding set that cannot be lowered is
/// reported as a warning (the process never executes a program, which is the only
/// thing the bounding set limits); failing to lower the other sets is an error.
pub fn restrict(choice: BackendChoice) -> Result<Option<String>, Error> {
    check(choice)?;
    // Whatever the unit or the pod says: nothing this process could execute gains
    // privileges (it executes nothing; a bug or an exploit might try).
    super::sys::set_no_new_privs().map_err(|e| Error::Privilege {
        missing: Vec::new(),
        message: format!("cannot set no_new_privs: {e}"),
    })?;
    let keep = needed(choice);
    match drop_all_but(&keep) {
        Ok(()) => Ok(None),
        Err(e) => {
            let held: CapsHashSet = caps::read(None, CapSet::Permitted).unwrap_or_default();
            let extra = held.iter().any(|c| !keep.contains(c));
            if extra {
                Err(Error::Privilege {
                    missing: Vec::new(),
                    message: format!("cannot drop the capabilities jumpset does not need: {e}"),
                })
            } else {
                Ok(Some(format!(
                    "capabilities: could not reduce every set ({e}); effective and permitted hold only what is needed"
                )))
            }
        }
    }
}
