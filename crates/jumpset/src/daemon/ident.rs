//! Who wrote: the process behind a foreign commit, named at notification time.
//!
//! nf_tables tells, in the NEWGEN closing each batch, the pid (in the initial PID
//! namespace) and the comm of the task that committed it. On a node that is nearly always
//! a short-lived `iptables` process: its comm names the binary every agent runs, not the
//! agent. So the daemon looks, as soon as the notification arrives, at
//! `/proc/PID/status` (its name and parent), `/proc/PID/cmdline`, `/proc/PID/cgroup` (its
//! pod and container, or its systemd unit) and at the parent's status and cmdline
//! ([`read`]). Best effort, and honest about it:
//!
//! - the process may have exited (and been reaped) before jumpset looked, or its pid may
//!   already name another process (the name no longer matches the comm the kernel gave):
//!   [`Identity::Exited`] — never a guess from a stale pid;
//! - jumpset may not see the host's processes at all: in a pod without `hostPID: true`
//!   (its own PID namespace), or under systemd's `ProtectProc=invisible` (`/proc` hides
//!   processes it may not ptrace): [`Identity::Hidden`], with the reason;
//! - legacy x_tables sends no notifications: no pid, nothing to look at
//!   ([`Identity::Unknown`]).
//!
//! The parsers ([`parse_cgroup`], [`parse_status`], [`cmdline`]) are pure and tested on
//! real-shaped text. [`agent_name`] maps what was found to one of a small fixed set of
//! agent names (metric labels stay bounded); [`Identity::key`] is what the fight policy
//! tells writers apart by: the container, else the parent process, else the systemd unit,
//! else the comm.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// The agents a metric label may name; anything else is `other` (a process seen but not
/// recognised) or `unknown` (nothing seen). The tests hold `known_agent` to this list.
#[cfg(test)]
const KNOWN_AGENTS: &[&str] = &[
    "kube-ovn",
    "calico",
    "kube-proxy",
    "portmap",
    "cilium",
    "flannel",
    "kube-router",
    "kubelet",
    "docker",
    "firewalld",
    "jumpset",
];

/// Where a process runs, from `/proc/PID/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// The pod's UID (from a kubepods slice or directory).
    pub pod_uid: Option<String>,
    /// The pod's QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub qos: Option<&'static str>,
    /// The container id (hex).
    pub container_id: Option<String>,
    /// The runtime its scope names: `containerd`, `cri-o` or `docker` (none for a bare
    /// cgroupfs directory).
    pub runtime: Option<&'static str>,
    /// The systemd unit it runs in (`kube-ovn.service`, `session-3.scope`), when it is not
    /// in a container.
    pub unit: Option<String>,
}

impl Cgroup {
    fn score(&self) -> u8 {
        match (&self.pod_uid, &self.container_id, &self.unit) {
            (Some(_), Some(_), _) => 4,
            (Some(_), None, _) => 3,
            (None, Some(_), _) => 2,
            (None, None, Some(_)) => 1,
            _ => 0,
        }
    }

    /// `container containerd 3f2a1b9c0d4e of pod 1c2d… (besteffort)`, `unit
    /// kube-ovn.service`, or nothing.
    pub fn describe(&self) -> Option<String> {
        let container = self.container_id.as_ref().map(|id| {
            format!(
                "container {}{}",
                self.runtime.map(|r| format!("{r} ")).unwrap_or_default(),
                short(id)
            )
        });
        let pod = self.pod_uid.as_ref().map(|p| {
            format!(
                "pod {p}{}",
                self.qos.map(|q| format!(" ({q})")).unwrap_or_default()
            )
        });
        match (container, pod) {
            (Some(c), Some(p)) => Some(format!("{c} of {p}")),
            (Some(c), None) => Some(c),
            (None, Some(p)) => Some(p),
            (None, None) => self.unit.as_ref().map(|u| format!("unit {u}")),
        }
    }
}

/// The first 12 characters of a container id, as `crictl ps` and `docker ps` print it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A container id: 64 hex digits (docker, containerd and cri-o all use them).
fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn qos_of(s: &str) -> Option<&'static str> {
    match s {
        "besteffort" => Some("besteffort"),
        "burstable" => Some("burstable"),
        "guaranteed" => Some("guaranteed"),
        _ => None,
    }
}

/// A container scope or directory name: (runtime, id).
fn container_of(component: &str) -> Option<(Option<&'static str>, String)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("containerd-", "containerd"),
    ] {
        if let Some(id) = name.strip_prefix(prefix) {
            // crio-conmon-ID is the monitor beside a container, not the container.
            if is_hex_id(id) {
                return Some((Some(runtime), id.to_string()));
            }
        }
    }
    is_hex_id(name).then(|| (None, name.to_string()))
}

/// What follows `kubepods` in a path component (`kubepods.slice` → `.slice`,
/// `kubelet-kubepods-burstable.slice` → `-burstable.slice`), if it holds that word.
fn after_kubepods(component: &str) -> Option<&str> {
    let i = component.find("kubepods")?;
    Some(&component[i + "kubepods".len()..])
}

/// One cgroup path (`/kubepods.slice/…/cri-containerd-ID.scope`).
fn parse_path(path: &str) -> Cgroup {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut out = Cgroup::default();
    // The innermost kubepods level counts (kind nests a node's kubepods under a container).
    let kube = parts
        .iter()
        .rposition(|p| matches!(after_kubepods(p), Some("" | ".slice")));
    if let Some(k) = kube {
        let mut qos = None;
        for p in &parts[k + 1..] {
            if let Some(q) = qos_of(p) {
                qos = Some(q);
            } else if let Some(rest) = after_kubepods(p)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.strip_suffix(".slice"))
            {
                // kubepods-burstable.slice, kubepods-burstable-pod<uid>.slice,
                // kubepods-pod<uid>.slice (guaranteed).
                let (class, pod) = match rest.split_once("pod") {
                    Some((c, uid)) => (c.trim_end_matches('-'), Some(uid)),
                    None => (rest, None),
                };
                if let Some(q) = qos_of(class) {
                    qos = Some(q);
                }
                if let Some(uid) = pod.filter(|u| !u.is_empty()) {
                    // systemd escapes the UID's dashes as underscores.
                    out.pod_uid = Some(uid.replace('_', "-"));
                }
            } else if let Some(uid) = p.strip_prefix("pod") {
                out.pod_uid = Some(uid.to_string());
            } else if let Some((runtime, id)) = container_of(p) {
                out.runtime = runtime;
                out.container_id = Some(id);
            }
        }
        if out.pod_uid.is_some() {
            // A pod directly under kubepods is guaranteed.
            out.qos = Some(qos.unwrap_or("guaranteed"));
        }
        return out;
    }
    // Not a pod: a container of its own (docker, containerd), else the innermost unit.
    if let Some((runtime, id)) = parts.iter().rev().find_map(|p| container_of(p)) {
        out.runtime = runtime;
        out.container_id = Some(id);
        return out;
    }
    out.unit = parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service") || p.ends_with(".scope"))
        .map(|p| p.to_string());
    out
}

/// What `/proc/PID/cgroup` says about where a process runs: cgroup v2 (`0::/path`) or v1
/// (`N:controllers:/path`, one line per hierarchy); the line that tells the most wins.
pub fn parse_cgroup(text: &str) -> Cgroup {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_id, _controllers, path) = (f.next()?, f.next()?, f.next()?);
            Some(parse_path(path))
        })
        .max_by_key(Cgroup::score)
        .unwrap_or_default()
}

/// `Name:` and `PPid:` of `/proc/PID/status`.
pub fn parse_status(text: &str) -> (Option<String>, Option<u32>) {
    let mut name = None;
    let mut ppid = None;
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("Name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        }
    }
    (name, ppid)
}

/// Longest command line kept, in characters.
const CMDLINE_MAX: usize = 160;

/// `/proc/PID/cmdline` (NUL-separated) as one line, cut to a readable length; `None` when
/// empty (a kernel thread, a zombie).
pub fn cmdline(raw: &[u8]) -> Option<String> {
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        return None;
    }
    let mut s = args.join(" ");
    if s.chars().count() > CMDLINE_MAX {
        s = s.chars().take(CMDLINE_MAX).collect::<String>() + "…";
    }
    Some(s.replace(|c: char| c.is_control(), "?"))
}

/// One process as `/proc` showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid (host PID namespace).
    pub pid: u32,
    /// Its name (comm, at most 15 characters).
    pub name: String,
    /// Its command line, shortened.
    pub cmdline: Option<String>,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.pid, self.name)?;
        if let Some(c) = &self.cmdline {
            write!(f, " `{c}`")?;
        }
        Ok(())
    }
}

/// A committing process found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The process.
    pub process: Proc,
    /// Its parent, when still there.
    pub parent: Option<Proc>,
    /// Its pod, container or unit.
    pub cgroup: Cgroup,
}

/// What could be learnt about the writer of a commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Identity {
    /// Nothing to look at (no pid: legacy, or a change found by a re-read).
    #[default]
    Unknown,
    /// The process was gone before jumpset looked, or its pid names another process now.
    Exited,
    /// jumpset cannot see the host's processes (why).
    Hidden(&'static str),
    /// Found.
    Found(Box<Found>),
}

impl Identity {
    /// `, parent 4200 (kube-ovn-daemon) `…`, container containerd 3f2a1b9c0d4e of pod …`
    /// — what follows `pid N (comm)` in a log line.
    pub fn details(&self) -> String {
        match self {
            Identity::Unknown => String::new(),
            Identity::Exited => ", exited before jumpset could look at it".into(),
            Identity::Hidden(why) => format!(", not visible to jumpset ({why})"),
            Identity::Found(f) => {
                let mut s = String::new();
                if let Some(p) = &f.parent {
                    s.push_str(&format!(", parent {p}"));
                } else {
                    s.push_str(", parent gone");
                }
                if let Some(c) = f.cgroup.describe() {
                    s.push_str(&format!(", {c}"));
                }
                s
            }
        }
    }

    /// [`Identity::details`] without the command lines (for `STATUS=`).
    pub fn summary(&self) -> String {
        match self {
            Identity::Found(f) => {
                let mut s = match &f.parent {
                    Some(p) => format!(", parent {} ({})", p.pid, p.name),
                    None => ", parent gone".to_string(),
                };
                if let Some(c) = f.cgroup.describe() {
                    s.push_str(&format!(", {c}"));
                }
                s
            }
            other => other.details(),
        }
    }

    /// What the fight policy tells writers apart by: the container, else the parent
    /// process (each `iptables` run is a new process; its parent is the agent), else the
    /// systemd unit; `None` when nothing was found (the caller falls back to the comm).
    pub fn key(&self) -> Option<String> {
        let Identity::Found(f) = self else {
            return None;
        };
        if let Some(id) = &f.cgroup.container_id {
            return Some(format!("container {}", short(id)));
        }
        if let Some(p) = f.parent.as_ref().filter(|p| p.pid > 1) {
            return Some(format!("parent {} ({})", p.pid, p.name));
        }
        if let Some(u) = &f.cgroup.unit {
            return Some(format!("unit {u}"));
        }
        Some(format!("process {}", f.process.name))
    }
}

/// The agent a name or command line belongs to, if it is a known one.
fn known_agent(name: &str) -> Option<&'static str> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let table: &[(&str, &str)] = &[
        ("kube-ovn", "kube-ovn"),
        ("calico", "calico"),
        ("felix", "calico"),
        ("kube-proxy", "kube-proxy"),
        ("portmap", "portmap"),
        ("cilium", "cilium"),
        ("flanneld", "flannel"),
        ("kube-router", "kube-router"),
        ("kubelet", "kubelet"),
        ("dockerd", "docker"),
        ("firewalld", "firewalld"),
        ("jumpset", "jumpset"),
    ];
    table
        .iter()
        .find(|(prefix, _)| base.starts_with(prefix))
        .map(|(_, a)| *a)
}

/// Whether `name` is one of the iptables / nft front ends every agent runs.
fn is_tool(name: &str) -> bool {
    name.starts_with("iptables")
        || name.starts_with("ip6tables")
        || name.starts_with("xtables")
        || name == "nft"
}

/// The agent name for a metric label: one of `KNOWN_AGENTS`, `other` (a process was
/// seen but not recognised) or `unknown`. From the committing process (when it is not an
/// iptables front end) or its parent, by name or first word of the command line.
pub fn agent_name(comm: Option<&str>, identity: &Identity) -> &'static str {
    let from = |p: &Proc| {
        known_agent(&p.name).or_else(|| {
            p.cmdline
                .as_deref()
                .and_then(|c| c.split_whitespace().next())
                .and_then(known_agent)
        })
    };
    match identity {
        Identity::Found(f) => from(&f.process)
            .or_else(|| f.parent.as_ref().and_then(from))
            .unwrap_or("other"),
        _ => match comm {
            Some(c) if !is_tool(c) => known_agent(c).unwrap_or("other"),
            _ => "unknown",
        },
    }
}

/// Largest file read from `/proc` (a status is ~1.5 KiB, a cgroup a few lines).
const READ_MAX: u64 = 16 * 1024;

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(READ_MAX).read_to_end(&mut buf).ok()?;
    Some(buf)
}

fn read_proc(root: &Path, pid: u32) -> Option<(Proc, Option<u32>)> {
    let dir = root.join(pid.to_string());
    let status = read_small(&dir.join("status"))?;
    let (name, ppid) = parse_status(&String::from_utf8_lossy(&status));
    let cmd = read_small(&dir.join("cmdline")).and_then(|b| cmdline(&b));
    Some((
        Proc {
            pid,
            name: name?,
            cmdline: cmd,
        },
        ppid,
    ))
}

/// Whether this process can see the host's processes in `root` (a procfs): `Err(why)`
/// when it runs in a PID namespace of its own (it is pid 1 there: a pod without
/// `hostPID`) or `/proc` hides other processes (pid 1 invisible: `ProtectProc=invisible`,
/// `hidepid=`).
pub fn visibility(root: &Path) -> Result<(), &'static str> {
    if std::process::id() == 1 {
        return Err("it runs in a PID namespace of its own; a pod needs hostPID: true");
    }
    if read_small(&root.join("1").join("status")).is_none() {
        return Err("/proc hides other processes; the unit needs ProtectProc=default");
    }
    Ok(())
}

/// Look up the writer `pid` whose comm the kernel reported as `comm`, in the procfs at
/// `root` (`/proc`). The name must still match the comm (else the pid was reused:
/// [`Identity::Exited`]).
pub fn read(root: &Path, pid: u32, comm: Option<&str>) -> Identity {
    let Some((process, ppid)) = read_proc(root, pid) else {
        return Identity::Exited;
    };
    if let Some(c) = comm {
        // The kernel's comm is at most 15 bytes, as is /proc's Name.
        if process.name != c {
            return Identity::Exited;
        }
    }
    let cgroup = read_small(&root.join(pid.to_string()).join("cgroup"))
        .map(|b| parse_cgroup(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let parent = ppid
        .filter(|p| *p > 0)
        .and_then(|p| read_proc(root, p))
        .map(|(p, _)| p);
    Identity::Found(Box::new(Found {
        process,
        parent,
        cgroup,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const CID: &str = "3f2a1b9c0d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4";

    fn found(c: &Cgroup) -> (Option<&str>, Option<&str>, Option<&str>, Option<&str>) {
        (
            c.pod_uid.as_deref(),
            c.qos,
            c.container_id.as_deref(),
            c.runtime,
        )
    }

    #[test]
    fn cgroup_v2_systemd_driver_containerd_besteffort() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope\n",
            POD.replace('-', "_")
        );
        let c = parse_cgroup(&text);
        assert_eq!(
            found(&c),
            (Some(POD), Some("besteffort"), Some(CID), Some("containerd"))
        );
        assert_eq!(
            c.describe().unwrap(),
            format!("container containerd 3f2a1b9c0d4e of pod {POD} (besteffort)")
        );
    }

    #[test]
    fn cgroup_v2_guaranteed_cri_o() {
        // Guaranteed pods sit directly under kubepods.slice.
        let text = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{CID}.scope\n",
            POD.replace('-', "_")
        );
        assert_eq!(
            found(&parse_cgroup(&text)),
            (Some(POD), Some("guaranteed"), Some(CID), Some("cri-o"))
        );
        // The conmon beside it is not the container.
        let conmon = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{CID}.scope\n",
            POD.replace('-', "_")
        );
        assert_eq!(
            found(&parse_cgroup(&conmon)),
            (Some(POD), Some("guaranteed"), None, None)
        );
    }

    #[test]
    fn cgroup_v1_cgroupfs_driver_burstable_and_guaranteed() {
        // cgroupfs driver, docker / containerd: bare directories, a line per hierarchy.
        let text = format!(
            "12:pids:/kubepods/burstable/pod{POD}/{CID}\n\
             11:memory:/kubepods/burstable/pod{POD}/{CID}\n\
             1:name=systemd:/kubepods/burstable/pod{POD}/{CID}\n\
             0::/\n"
        );
        assert_eq!(
            found(&parse_cgroup(&text)),
            (Some(POD), Some("burstable"), Some(CID), None)
        );
        let g = format!("4:cpu,cpuacct:/kubepods/pod{POD}/{CID}\n");
        assert_eq!(
            found(&parse_cgroup(&g)),
            (Some(POD), Some("guaranteed"), Some(CID), None)
        );
    }

    #[test]
    fn cgroup_v1_systemd_driver_with_docker_scopes() {
        let text = format!(
            "11:devices:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{CID}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{CID}.scope\n",
            POD.replace('-', "_"),
            POD.replace('-', "_")
        );
        assert_eq!(
            found(&parse_cgroup(&text)),
            (Some(POD), Some("burstable"), Some(CID), Some("docker"))
        );
    }

    #[test]
    fn kind_nests_the_nodes_kubepods_in_a_container() {
        let node = "a".repeat(64);
        let text = format!(
            "0::/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope\n",
            POD.replace('-', "_")
        );
        // kind's kubelet prefixes its slices (kubelet-kubepods-…).
        assert_eq!(
            found(&parse_cgroup(&text)),
            (Some(POD), Some("besteffort"), Some(CID), Some("containerd"))
        );
        let text = format!("0::/docker/{node}/kubepods/besteffort/pod{POD}/{CID}\n");
        assert_eq!(
            found(&parse_cgroup(&text)),
            (Some(POD), Some("besteffort"), Some(CID), None)
        );
    }

    #[test]
    fn a_plain_container_a_service_a_session_and_nothing() {
        let docker = format!("0::/system.slice/docker-{CID}.scope\n");
        assert_eq!(
            found(&parse_cgroup(&docker)),
            (None, None, Some(CID), Some("docker"))
        );
        let unit = parse_cgroup("0::/system.slice/kube-ovn.service\n");
        assert_eq!(unit.unit.as_deref(), Some("kube-ovn.service"));
        assert_eq!(unit.describe().unwrap(), "unit kube-ovn.service");
        let v1 = parse_cgroup(
            "9:name=systemd:/user.slice/user-0.slice/session-3.scope\n8:pids:/user.slice\n",
        );
        assert_eq!(v1.unit.as_deref(), Some("session-3.scope"));
        for nothing in [
            "0::/\n",
            "",
            "garbage\n",
            "0::/init.slice/\n",
            "1:2\n",
            "4:memory:/process_api/4e3dcbeb8facdceb20a61e9fcd992a93\n",
        ] {
            let c = parse_cgroup(nothing);
            assert_eq!(c, Cgroup::default(), "{nothing:?}");
            assert_eq!(c.describe(), None);
        }
    }

    #[test]
    fn status_and_cmdline() {
        let status = "Name:\tiptables-nft\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nTracerPid:\t0\n";
        assert_eq!(
            parse_status(status),
            (Some("iptables-nft".into()), Some(4200))
        );
        assert_eq!(parse_status("nothing"), (None, None));
        assert_eq!(
            cmdline(b"/usr/sbin/iptables\0-t\0nat\0-D\0PREROUTING\x003\0").as_deref(),
            Some("/usr/sbin/iptables -t nat -D PREROUTING 3")
        );
        assert_eq!(cmdline(b""), None);
        let long = cmdline(&[b'x'; 500]).unwrap();
        assert_eq!(long.chars().count(), CMDLINE_MAX + 1);
        assert_eq!(cmdline(b"a\nb\0c").as_deref(), Some("a?b c"));
    }

    fn fake_proc(dir: &Path, pid: u32, name: &str, ppid: u32, cmd: &[u8], cgroup: &str) {
        let d = dir.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("status"),
            format!("Name:\t{name}\nState:\tS (sleeping)\nPPid:\t{ppid}\n"),
        )
        .unwrap();
        std::fs::write(d.join("cmdline"), cmd).unwrap();
        std::fs::write(d.join("cgroup"), cgroup).unwrap();
    }

    #[test]
    fn a_writer_is_read_with_its_parent_and_container_and_never_from_a_stale_pid() {
        let root = std::env::temp_dir().join(format!("jumpset-ident-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let cg = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope\n",
            POD.replace('-', "_")
        );
        fake_proc(
            &root,
            4242,
            "iptables",
            4200,
            b"/usr/sbin/iptables\0-t\0nat\0-I\0PREROUTING\x001\0",
            &cg,
        );
        fake_proc(
            &root,
            4200,
            "kube-ovn-daemon",
            1,
            b"/kube-ovn/kube-ovn-daemon\0--ovs-socket=/run/openvswitch/db.sock\0",
            &cg,
        );
        let id = read(&root, 4242, Some("iptables"));
        let Identity::Found(f) = &id else {
            panic!("{id:?}")
        };
        assert_eq!(f.process.name, "iptables");
        assert_eq!(f.parent.as_ref().unwrap().name, "kube-ovn-daemon");
        assert_eq!(
            id.details(),
            format!(", parent 4200 (kube-ovn-daemon) `/kube-ovn/kube-ovn-daemon --ovs-socket=/run/openvswitch/db.sock`, container containerd 3f2a1b9c0d4e of pod {POD} (burstable)")
        );
        assert_eq!(id.key().unwrap(), "container 3f2a1b9c0d4e");
        assert_eq!(agent_name(Some("iptables"), &id), "kube-ovn");

        // The pid now names another process: the writer has exited, whatever is there.
        assert_eq!(read(&root, 4242, Some("iptables-nft")), Identity::Exited);
        assert_eq!(read(&root, 999, Some("iptables")), Identity::Exited);
        assert_eq!(Identity::Exited.key(), None);
        assert_eq!(
            agent_name(Some("iptables-nft"), &Identity::Exited),
            "unknown"
        );
        assert_eq!(agent_name(Some("calico-node"), &Identity::Exited), "calico");
        assert_eq!(agent_name(Some("my-script"), &Identity::Exited), "other");
        assert_eq!(agent_name(None, &Identity::Unknown), "unknown");

        // No container: the parent is the key; an unknown parent makes "other".
        fake_proc(
            &root,
            5000,
            "iptables-nft",
            4900,
            b"iptables-nft\0-F\0",
            "0::/\n",
        );
        fake_proc(&root, 4900, "bash", 1, b"bash\0./fix.sh\0", "0::/\n");
        let id = read(&root, 5000, Some("iptables-nft"));
        assert_eq!(id.key().unwrap(), "parent 4900 (bash)");
        assert_eq!(agent_name(Some("iptables-nft"), &id), "other");
        assert_eq!(id.details(), ", parent 4900 (bash) `bash ./fix.sh`");
        // The parent gone (reparented to 1): the unit, else the process itself.
        fake_proc(
            &root,
            6000,
            "iptables",
            1,
            b"",
            "0::/system.slice/firewalld.service\n",
        );
        let id = read(&root, 6000, Some("iptables"));
        assert_eq!(id.key().unwrap(), "unit firewalld.service");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn agent_names_are_a_small_fixed_set() {
        for (name, agent) in [
            ("kube-ovn-daemon", "kube-ovn"),
            ("calico-node", "calico"),
            ("kube-proxy", "kube-proxy"),
            ("portmap", "portmap"),
            ("cilium-agent", "cilium"),
            ("flanneld", "flannel"),
            ("dockerd", "docker"),
            ("jumpset", "jumpset"),
        ] {
            let id = Identity::Found(Box::new(Found {
                process: Proc {
                    pid: 2,
                    name: "iptables".into(),
                    cmdline: None,
                },
                parent: Some(Proc {
                    pid: 3,
                    name: "x".into(),
                    cmdline: Some(format!("/usr/local/bin/{name} --flag")),
                }),
                cgroup: Cgroup::default(),
            }));
            assert_eq!(agent_name(Some("iptables"), &id), agent, "{name}");
            assert!(KNOWN_AGENTS.contains(&agent));
        }
    }

    #[test]
    fn this_process_is_visible_to_itself() {
        // The test runs with a normal /proc: pid 1 is visible and we are not pid 1.
        assert_eq!(visibility(Path::new("/proc")), Ok(()));
        let id = read(Path::new("/proc"), std::process::id(), None);
        let Identity::Found(f) = id else {
            panic!("{id:?}")
        };
        assert_eq!(f.process.pid, std::process::id());
        assert!(f.parent.is_some());
        assert!(visibility(Path::new("/nonexistent")).is_err());
    }
}
