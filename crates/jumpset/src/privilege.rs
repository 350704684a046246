//! The capabilities jumpset needs, checked in one place before a backend is opened.

use crate::error::Error;
use crate::spec::BackendChoice;
use caps::{CapSet, Capability};

/// The capabilities `choice` needs: CAP_NET_ADMIN for nf_tables (reads, batches, the
/// notification group, SO_RCVBUFFORCE), plus CAP_NET_RAW when the legacy backend may be
/// used (x_tables is reached through a raw socket).
pub fn needed(choice: BackendChoice) -> Vec<Capability> {
    match choice {
        BackendChoice::Nft => vec![Capability::CAP_NET_ADMIN],
        BackendChoice::Legacy | BackendChoice::Auto => {
            vec![Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]
        }
    }
}

/// What `cap` is needed for, in words.
pub fn why(cap: Capability) -> &'static str {
    match cap {
        Capability::CAP_NET_RAW => {
            "to open the raw socket iptables-legacy's tables (x_tables) are reached through"
        }
        _ => "to read and write nf_tables / x_tables and to subscribe to nf_tables change notifications",
    }
}

/// The needed capabilities this thread cannot use (neither effective nor permitted). A
/// needed capability that is permitted but not effective is raised.
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

/// [`Error::Privilege`] naming each capability `choice` needs and this thread lacks.
pub fn require(choice: BackendChoice) -> Result<(), Error> {
    let missing = missing(choice);
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|c| format!("{c} ({})", why(*c)))
        .collect();
    Err(Error::Privilege {
        message: format!(
            "jumpset needs {}; run it as root or grant {} (setcap, or AmbientCapabilities= in a systemd unit)",
            list.join(" and "),
            if missing.len() > 1 { "them" } else { "it" }
        ),
        missing: missing.iter().map(|c| c.to_string()).collect(),
    })
}
