//! Kube-OVN with its jump handed over (issue 13): the Go example agent
//! (`ffi/examples/go`, the package in `go/`) running Kube-OVN's gateway loop — a pass
//! every 3 s — whose PREROUTING code is one `Reconcile`, beside felix-, kube-proxy- and
//! portmap-like agents (processes running the real `iptables-nft`, as tests/noharm.rs
//! models them), with kube-proxy's jump absent for the first third of the run and the
//! chain flushed at two thirds. Through each transport, each in a fresh network
//! namespace: the socket, to a real `jumpset daemon` that holds the agent's claim; and
//! in-process (cgo), on a node without the daemon.
//!
//! What must hold, from the `nft -a monitor` history (the independent oracle): jumpset
//! (the daemon, or the agent's in-process library) only ever wrote Kube-OVN's jump; no
//! foreign rule was deleted by anyone but its own agent or the flush; the agent itself
//! never wrote PREROUTING through the socket; no fight was logged; and the chain ends in
//! the declared order.

mod support;

use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use std::process::Command;
use std::time::{Duration, Instant};
use support::agents::{self, AgentProc};
use support::native::go_agent;
use support::*;

const OVN_TARGET: &str = "OVN-PREROUTING";

#[test]
#[ignore = "the entry point of the agent processes the other tests start, not a test"]
fn agent_process() {
    agents::run_from_env(|role, _, _| panic!("no agent {role}"));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// The daemon's local API.
    Socket,
    /// The library in the agent's process (no daemon on the node).
    InProcess,
}

/// What one run showed.
#[derive(Debug, Default)]
struct Seen {
    jumpset_commits: usize,
    agent_passes: usize,
    foreign_lost: Vec<String>,
    daemon_log: String,
}

/// The healthy chain without Kube-OVN's jump (the agent claims it) and without
/// kube-proxy's (it starts later).
fn scene() -> String {
    std::fs::read_to_string(fixture("harvester-healthy.rules"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("kube-ovn prerouting rules") && !l.contains(agents::KUBE))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn generation() -> u32 {
    NftBackend::open().unwrap().generation().unwrap()
}

fn one_run(transport: Transport, agent_bin: &std::path::Path) -> Seen {
    netns(|| {
        ok("ip link set lo up");
        ok_stdin("iptables-nft-restore", &scene());
        let dir = agents::scratch(&format!("handover-{transport:?}"));
        let socket = dir.join("api.sock");
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let cfg = config(&format!(
            "backend = \"nft\"\n[daemon]\nresync_interval = \"30s\"\nmetrics_listen = \"\"\nstate_dir = \"{}\"\napi_socket = \"{}\"\n",
            state.display(),
            socket.display()
        ));
        let events = NftEventLog::start();
        let start = ChainSim::listed("ip", "nat", "PREROUTING");
        let daemon = (transport == Transport::Socket).then(|| {
            let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
            assert!(
                d.wait_log("serving the local API", Duration::from_secs(15)),
                "{}",
                d.log()
            );
            d
        });

        // Kube-OVN's gateway loop, its jump handed over: a pass every 3 s.
        let run = Duration::from_secs(15);
        let link = dir.join("kube-ovn-daemon");
        std::os::unix::fs::symlink(agent_bin, &link).unwrap();
        let mut cmd = Command::new(&link);
        cmd.args(["-every", "3s", "-for", "14s"]);
        match transport {
            Transport::Socket => cmd.arg("-socket").arg(&socket),
            Transport::InProcess => cmd.args(["-backend", "nft"]),
        };
        let mut kube_ovn = Guard::new(
            cmd.stdout(std::fs::File::create(dir.join("kube-ovn.out")).unwrap())
                .stderr(std::fs::File::create(dir.join("kube-ovn.err")).unwrap())
                .spawn()
                .expect("the Go agent starts"),
        );
        let spawn = |role, comm, seed, run, period| {
            agents::spawn(&dir, role, comm, seed, run, period, None).0
        };
        let felix: AgentProc = spawn("felix", "calico-node", 11, run, Duration::from_millis(1500));
        let portmap = spawn("portmap", "portmap", 12, run, Duration::from_secs(1));
        // No kube-proxy jump for the first third of the run.
        std::thread::sleep(run / 3);
        let kube_proxy = spawn(
            "kube-proxy",
            "kube-proxy",
            13,
            run * 2 / 3,
            Duration::from_secs(1),
        );
        std::thread::sleep(run / 3);
        let flushed_from = generation();
        ok("iptables-nft -t nat -F PREROUTING");
        let flushed_to = generation();
        felix.wait();
        portmap.wait();
        kube_proxy.wait();
        assert_eq!(
            kube_ovn.wait_exit(Duration::from_secs(20)),
            Some(0),
            "the agent failed: {}",
            std::fs::read_to_string(dir.join("kube-ovn.err")).unwrap_or_default()
        );
        let want = [
            "cali-PREROUTING",
            OVN_TARGET,
            "KUBE-SERVICES",
            "CNI-HOSTPORT-DNAT",
        ];
        let targets = || -> Vec<String> {
            saved_chain("iptables-nft-save", "PREROUTING")
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .collect()
        };
        // In-process, the order is restored at the agent's next pass at the latest (it
        // has ended: the last pass was the last chance); the daemon keeps it.
        let converged = wait_until(Duration::from_secs(3), || targets() == want);
        let lines = events.stop();
        let daemon_pid = daemon.as_ref().map(DaemonProc::pid);
        let is_jumpset = |t: &Txn| match transport {
            Transport::Socket => Some(t.pid) == daemon_pid,
            Transport::InProcess => t.process == "kube-ovn-daemon",
        };
        let mut seen = Seen {
            daemon_log: daemon.as_ref().map(DaemonProc::log).unwrap_or_default(),
            agent_passes: std::fs::read_to_string(dir.join("kube-ovn.out"))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("pass="))
                .count(),
            ..Seen::default()
        };
        assert!(
            converged,
            "{transport:?}: the chain ends {:?}, not {want:?}\n{}",
            targets(),
            seen.daemon_log
        );
        let mut sim = start;
        for t in transactions(&lines, "ip", "nat", "PREROUTING") {
            let deleted = sim
                .apply(&t)
                .unwrap_or_else(|e| panic!("the monitor's history is incomplete: {e}"));
            if t.events.is_empty() {
                continue;
            }
            if is_jumpset(&t) {
                seen.jumpset_commits += 1;
                for e in &t.events {
                    if let RuleEvent::Add { text, .. } = e {
                        assert_eq!(
                            nft_target(text),
                            Some(OVN_TARGET),
                            "{transport:?} generation {}: jumpset wrote a foreign rule: {text}",
                            t.gen
                        );
                    }
                }
                for (h, text) in &deleted {
                    assert_eq!(
                        nft_target(text),
                        Some(OVN_TARGET),
                        "{transport:?} generation {}: jumpset deleted a foreign rule (handle {h}: {text})",
                        t.gen
                    );
                }
            } else {
                assert_ne!(
                    t.process, "kube-ovn-daemon",
                    "{transport:?} generation {}: the agent wrote PREROUTING itself",
                    t.gen
                );
            }
            let flush = t.gen > flushed_from as u64 && t.gen <= flushed_to as u64;
            for (_, text) in &deleted {
                // felix deletes and re-inserts its own jump (iptables-nft-restore).
                let own = nft_target(text) == Some("cali-PREROUTING")
                    && t.process.starts_with("iptables-nft-re");
                if nft_target(text) != Some(OVN_TARGET) && !flush && !own {
                    seen.foreign_lost.push(format!(
                        "gen {} by {} ({}): {text}",
                        t.gen, t.process, t.pid
                    ));
                }
            }
        }
        drop(daemon);
        let _ = std::fs::remove_dir_all(&dir);
        seen
    })
}

#[test]
fn kube_ovn_with_its_jump_handed_over_never_fights_and_loses_no_foreign_rule() {
    let socket_agent = go_agent(false);
    let in_process_agent = go_agent(true);
    let t0 = Instant::now();
    // Both transports side by side, each in a namespace of its own.
    let in_process = std::thread::spawn(move || one_run(Transport::InProcess, &in_process_agent));
    let socket = one_run(Transport::Socket, &socket_agent);
    let in_process = in_process.join().expect("the in-process run");
    for (transport, seen) in [
        (Transport::Socket, &socket),
        (Transport::InProcess, &in_process),
    ] {
        figure(&format!(
            "handover {transport:?}: Kube-OVN's loop delegating its jump, {} passes beside felix, portmap, kube-proxy (absent for 5 s) and a flush: {} jumpset commit(s), foreign rules lost {}",
            seen.agent_passes,
            seen.jumpset_commits,
            seen.foreign_lost.len()
        ));
        assert!(
            seen.foreign_lost.is_empty(),
            "{transport:?}: foreign rules deleted by someone else than their agent or the flush: {:#?}\n{}",
            seen.foreign_lost,
            seen.daemon_log
        );
        assert!(
            seen.agent_passes >= 4,
            "{transport:?}: {} passes",
            seen.agent_passes
        );
        // The scene made jumpset write (its first placement, kube-proxy's arrival, the
        // flush), and a handful of commits did it: no fight.
        assert!(
            (2..=10).contains(&seen.jumpset_commits),
            "{transport:?}: {} jumpset commits\n{}",
            seen.jumpset_commits,
            seen.daemon_log
        );
    }
    assert!(
        !socket.daemon_log.contains("fight:"),
        "a fight was logged:\n{}",
        socket.daemon_log
    );
    assert!(
        socket
            .daemon_log
            .contains("API: agent kube-ovn claims 1 jump(s)"),
        "{}",
        socket.daemon_log
    );
    eprintln!("both runs in {:.1} s", t0.elapsed().as_secs_f64());
}
