//! Who may use the local API: root, or a member of `daemon.api_group`, by the peer's
//! credentials as the kernel gives them on the Unix socket (`SO_PEERCRED` for the uid and
//! primary gid, `SO_PEERGROUPS` for the supplementary groups, both as they were when the
//! peer connected). Where the kernel does not give the supplementary groups, they are
//! read from `/proc/PID/status` (`Groups:`). A group name is looked up in `/etc/group`
//! at each request (no program is run, and a group created later counts at once).

use super::http::Peer;
use crate::spec::ApiGroup;
use std::path::Path;

/// Where the group database and `/proc` are read (tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/etc/group`.
    pub etc_group: std::path::PathBuf,
    /// `/proc`.
    pub proc: std::path::PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            etc_group: "/etc/group".into(),
            proc: "/proc".into(),
        }
    }
}

/// The gid of `group`: its number, or its name looked up in `etc_group` (the
/// `name:password:gid:members` lines of group(5)).
pub fn resolve(group: &ApiGroup, etc_group: &Path) -> Result<u32, String> {
    let name = match group {
        ApiGroup::Id(g) => return Ok(*g),
        ApiGroup::Name(n) => n,
    };
    let text = std::fs::read_to_string(etc_group)
        .map_err(|e| format!("cannot read {}: {e}", etc_group.display()))?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then_some(())?;
            f.next()?;
            f.next()?.trim().parse().ok()
        })
        .ok_or_else(|| format!("there is no group {name:?} in {}", etc_group.display()))
}

/// The supplementary groups of process `pid` (`Groups:` of `/proc/PID/status`).
fn proc_groups(proc: &Path, pid: i32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

/// Whether `peer` may use the local API with `group` configured: `Ok`, or why not (the
/// 403's message).
pub fn check(peer: &Peer, group: Option<&ApiGroup>, sources: &Sources) -> Result<(), String> {
    let Peer::Unix {
        uid,
        gid,
        pid,
        groups,
    } = peer
    else {
        return Err("the local API is served on its Unix socket only".into());
    };
    if *uid == 0 {
        return Ok(());
    }
    let who = format!("uid {uid}");
    let Some(group) = group else {
        return Err(format!(
            "{who} is not root, and daemon.api_group is not set: only root may use the local API"
        ));
    };
    let want = resolve(group, &sources.etc_group).map_err(|e| {
        format!("{who} is not root, and daemon.api_group = {group:?} names no group ({e}): only root may use the local API")
    })?;
    if *gid == want {
        return Ok(());
    }
    let supplementary = match groups {
        Some(g) => Some(g.clone()),
        None => pid.and_then(|p| proc_groups(&sources.proc, p)),
    };
    if supplementary.is_some_and(|g| g.contains(&want)) {
        return Ok(());
    }
    Err(format!(
        "{who} (gid {gid}) is not root and not a member of daemon.api_group {group} (gid {want})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(uid: u32, gid: u32, groups: Option<Vec<u32>>, pid: Option<i32>) -> Peer {
        Peer::Unix {
            uid,
            gid,
            pid,
            groups,
        }
    }

    #[test]
    fn root_or_a_member_of_the_group_and_nobody_else() {
        let dir = std::env::temp_dir().join(format!("jumpset-access-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proc/4242")).unwrap();
        std::fs::write(
            dir.join("group"),
            "# comment\nroot:x:0:\njumpsetx:x:4000:\njumpset:x:4242:alice,bob\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("proc/4242/status"),
            "Name:\tagent\nUid:\t1000\t1000\t1000\t1000\nGroups:\t27 4242 \n",
        )
        .unwrap();
        let src = Sources {
            etc_group: dir.join("group"),
            proc: dir.join("proc"),
        };
        let name = ApiGroup::Name("jumpset".into());
        assert!(check(&unix(0, 0, None, None), None, &src).is_ok());
        let e = check(&unix(1000, 1000, Some(vec![]), None), None, &src).unwrap_err();
        assert!(e.contains("api_group is not set"), "{e}");
        // Primary group, supplementary groups from the socket, from /proc as a fallback.
        assert!(check(&unix(1000, 4242, Some(vec![]), None), Some(&name), &src).is_ok());
        assert!(check(
            &unix(1000, 1000, Some(vec![5, 4242]), None),
            Some(&name),
            &src
        )
        .is_ok());
        assert!(check(&unix(1000, 1000, None, Some(4242)), Some(&name), &src).is_ok());
        // The socket's word is final: /proc is not read when the kernel gave the groups.
        let e = check(
            &unix(1000, 1000, Some(vec![27]), Some(4242)),
            Some(&name),
            &src,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "uid 1000 (gid 1000) is not root and not a member of daemon.api_group jumpset (gid 4242)"
        );
        assert!(check(
            &unix(1000, 1000, Some(vec![4242]), None),
            Some(&ApiGroup::Id(4242)),
            &src
        )
        .is_ok());
        let e = check(
            &unix(1000, 1000, Some(vec![]), None),
            Some(&ApiGroup::Name("nosuch".into())),
            &src,
        )
        .unwrap_err();
        assert!(e.contains("there is no group \"nosuch\""), "{e}");
        assert!(check(&Peer::Tcp(([127, 0, 0, 1], 1).into()), None, &src).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
