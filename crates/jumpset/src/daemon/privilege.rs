//! Least privilege for the daemon: check that the capabilities it needs are there, then
//! drop every other one from every set (effective, permitted, inheritable, ambient,
//! bounding). Capabilities are per thread and inherited by the threads a thread creates,
//! so this must run in `main` before the tokio runtime (or anything else) starts a thread.

use crate::commands::{CmdError, EXIT_PRIVILEGE};
use crate::spec::BackendChoice;
use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities the daemon keeps for `choice`: CAP_NET_ADMIN for nf_tables (reads,
/// batches, the notification group, SO_RCVBUFFORCE), plus CAP_NET_RAW when it may use
/// the legacy backend (x_tables is reached through a raw socket).
pub fn needed(choice: BackendChoice) -> Vec<Capability> {
    match choice {
        BackendChoice::Nft => vec![Capability::CAP_NET_ADMIN],
        BackendChoice::Legacy | BackendChoice::Auto => {
            vec![Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]
        }
    }
}

fn why(cap: Capability) -> &'static str {
    match cap {
        Capability::CAP_NET_RAW => {
            "to open the raw socket iptables-legacy's tables (x_tables) are reached through"
        }
        _ => "to read and write nf_tables / x_tables and to subscribe to nf_tables change notifications",
    }
}

/// The needed capabilities this thread cannot use (neither effective nor permitted).
/// A needed capability that is permitted but not effective is raised.
pub fn missing(choice: BackendChoice) -> Vec<Capability> {
    needed(choice)
        .into_iter()
        .filter(|&c| {
            if caps::has_cap(None, CapSet::Effective, c).unwrap_or(false) {
                return false;
            }
            !(caps::has_cap(None, CapSet::Permitted, c).unwrap_or(false)
                && caps::raise(None, CapSet::Effective, c).is_ok())
        })
        .collect()
}

/// Exit 3 naming each missing capability and how to grant it.
pub fn check(choice: BackendChoice) -> Result<(), CmdError> {
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
    Err(CmdError::new(
        EXIT_PRIVILEGE,
        format!(
            "jumpset daemon (backend {}) needs {}; this process does not hold it. Run it as root, or grant it: \
             AmbientCapabilities={} in the systemd unit, `setcap {}+ep` on the binary, or \
             securityContext.capabilities.add: [{}] in Kubernetes",
            choice.name(),
            list.join(" and "),
            names.join(" "),
            lower.join(","),
            bare.join(", ")
        ),
    ))
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

/// `check`, then `drop_all_but(needed)`. A bounding set that cannot be lowered is
/// reported as a warning (the process never executes a program, which is the only
/// thing the bounding set limits); failing to lower the other sets is an error.
pub fn restrict(choice: BackendChoice) -> Result<Option<String>, CmdError> {
    check(choice)?;
    let keep = needed(choice);
    match drop_all_but(&keep) {
        Ok(()) => Ok(None),
        Err(e) => {
            let held: CapsHashSet = caps::read(None, CapSet::Permitted).unwrap_or_default();
            let extra = held.iter().any(|c| !keep.contains(c));
            if extra {
                Err(CmdError::new(
                    EXIT_PRIVILEGE,
                    format!("cannot drop the capabilities jumpset does not need: {e}"),
                ))
            } else {
                Ok(Some(format!(
                    "capabilities: could not reduce every set ({e}); effective and permitted hold only what is needed"
                )))
            }
        }
    }
}
