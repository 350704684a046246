//! Crash safety (`docs/contracts.md#crash-safety`): jumpset is killed with SIGKILL at random points of a burst of
//! reconciles against a chain that another writer keeps disrupting — the daemon, and a
//! loop of `jumpset apply` processes — with no hook in the product: only timing and many
//! iterations. After a restart the chain converges, and at no time does the chain hold a
//! half-applied plan.
//!
//! How "never half-applied" is made checkable:
//!
//! - The disruptions are chosen so that every repair is a plan of two or three changes:
//!   two owned duplicates around the owned jump (repair: delete both), or the owned jump
//!   deleted and two duplicates added (repair: delete both, insert one). A half-applied
//!   repair would leave one duplicate, or none and no jump.
//! - 1,000 foreign filler rules sit in the chain (after the agents' jumps), so every
//!   read takes long enough for random kills to land between a read and its commit too.
//! - nf_tables: `nft -a monitor` prints every committed transaction — its rule events and
//!   the committing process — and transactions are atomic, so per generation is the right
//!   granularity. The chain is rebuilt from it generation by generation (handles and
//!   order), checked against fast direct reads, and EVERY generation committed by a
//!   jumpset process must leave the chain converged (one owned jump, in place) and touch
//!   nothing but owned jumps. A commit cut short would show up as a jumpset generation
//!   that leaves the chain unconverged.
//! - Legacy (no notifications, no generations): the disruptor writes whole tables of
//!   known shapes, and the chain is sampled continuously (jumpset's reader and, as an
//!   independent oracle, `iptables-legacy-save`): every sample must be converged or one of
//!   the disruptor's shapes.

mod support;

use jumpset::backend::legacy::blob::Table;
use jumpset::backend::legacy::LegacyBackend;
use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use jumpset::snapshot::{Family, Rule};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Timed, CPU-hungry tests: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const OVN: &str = "kube-ovn prerouting rules";
const FILLERS: usize = 1000;
/// How long jumpset is killed and restarted.
const KILLING: Duration = Duration::from_secs(8);

/// The agents' jumps in order, as a short shape: the owned jump is `OVN`.
const CONVERGED: &str = "cali OVN KUBE CNI";
/// Legacy disruptions (whole tables): duplicates around the jump; the jump gone and
/// duplicates at both ends; the jump gone.
const LEGACY_SHAPES: [&str; 3] = [
    "OVN cali OVN KUBE CNI OVN",
    "OVN cali KUBE CNI OVN",
    "cali KUBE CNI",
];

fn short(target: &str) -> Option<&'static str> {
    match target {
        "cali-PREROUTING" => Some("cali"),
        "OVN-PREROUTING" => Some("OVN"),
        "KUBE-SERVICES" => Some("KUBE"),
        "CNI-HOSTPORT-DNAT" => Some("CNI"),
        _ => None,
    }
}

/// The shape of a chain and how many filler rules it holds.
fn shape<'a>(targets: impl Iterator<Item = Option<&'a str>>) -> (String, usize) {
    let (mut s, mut fillers) = (Vec::new(), 0);
    for t in targets {
        match t.and_then(short) {
            Some(x) => s.push(x),
            None => fillers += 1,
        }
    }
    (s.join(" "), fillers)
}

/// A whole nat table (iptables-restore --counters) holding `shape` and the fillers; the
/// agents' jumps carry the counters 7/700, 8/800 and 9/900.
fn table(shape: &str) -> String {
    let mut t = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n:OVN-PREROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n",
    );
    for s in shape.split_whitespace() {
        t.push_str(match s {
            "cali" => "[7:700] -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n",
            "OVN" => "-A PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING\n",
            "KUBE" => "[8:800] -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "CNI" => "[9:900] -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n",
            other => panic!("{other}"),
        });
    }
    for i in 0..FILLERS {
        t.push_str(&format!(
            "[1:100] -A PREROUTING -s 10.{}.{}.0/24\n",
            i / 256,
            i % 256
        ));
    }
    t.push_str("COMMIT\n");
    t
}

fn restore(cmd: &str, env: &[(&str, &str)], input: &str) -> bool {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut c = c.spawn().unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait().unwrap().success()
}

fn targets(rules: &[Rule]) -> impl Iterator<Item = Option<&str>> {
    rules.iter().map(|r| r.target())
}

/// Who kills jumpset, and how.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Victim {
    /// `jumpset daemon`, killed after a random lifetime and restarted at once.
    Daemon,
    /// `jumpset apply`, killed after a random delay spread over its whole run.
    Apply,
}

/// What the kill loop did.
#[derive(Default, Debug)]
struct Kills {
    started: usize,
    killed: usize,
    /// Exit codes of the processes that finished before their kill.
    exited: BTreeMap<i32, usize>,
    pids: BTreeSet<u32>,
    killed_pids: BTreeSet<u32>,
    /// The delays the kills were drawn from (max), for the report.
    max_delay: Duration,
}

/// Start and SIGKILL jumpset processes for `KILLING`.
fn kill_loop(victim: Victim, args: &[&str], env: &[(&str, &str)], rng: &mut Rng) -> Kills {
    let mut k = Kills::default();
    let spawn = |extra: &[&str]| {
        let mut c = Command::new(bin());
        c.args(extra)
            .args(args)
            .env("JUMPSET_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (a, b) in env {
            c.env(a, b);
        }
        Guard::new(c.spawn().unwrap())
    };
    // An apply's lifetime, measured: kills are spread uniformly over 1.3 times it.
    let span = match victim {
        Victim::Daemon => Duration::from_millis(250),
        Victim::Apply => {
            let mut runs: Vec<Duration> = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    spawn(&["apply"]).wait_exit(Duration::from_secs(30));
                    t.elapsed()
                })
                .collect();
            runs.sort();
            runs[3].mul_f64(1.2)
        }
    };
    k.max_delay = span;
    let end = Instant::now() + KILLING;
    while Instant::now() < end {
        let mut g = match victim {
            Victim::Daemon => spawn(&["daemon"]),
            Victim::Apply => spawn(&["apply"]),
        };
        k.started += 1;
        k.pids.insert(g.pid());
        std::thread::sleep(rng.ms(0, span.as_millis().max(1) as u64));
        match g.kill9() {
            -9 => {
                k.killed += 1;
                k.killed_pids.insert(g.pid());
            }
            code => *k.exited.entry(code).or_default() += 1,
        }
    }
    k
}

/// The Harvester spec (the backend is given on the command line for legacy).
fn config_text(legacy: bool) -> String {
    format!(
        "{}\n[daemon]\nresync_interval = \"{}\"\nmetrics_listen = \"\"\napi_socket = \"\"\n",
        harvester_config(),
        if legacy { "100ms" } else { "30s" }
    )
}

/// The nf_tables disruptor: one `nft -f` transaction per disruption, until `stop`.
fn nft_disruptor(stop: &AtomicBool, cni: u64, mut rng: Rng) -> usize {
    let mut reader = NftBackend::open().unwrap();
    let dup = format!("counter jump OVN-PREROUTING comment \"{OVN}\"");
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(rng.ms(20, 60));
        let Ok(snap) = reader.read(Family::Ip, "nat", "PREROUTING") else {
            continue;
        };
        let ovn: Vec<u64> = snap
            .rules
            .iter()
            .filter(|r| r.target() == Some("OVN-PREROUTING"))
            .map(|r| r.handle)
            .collect();
        if ovn.len() > 4 {
            continue; // jumpset is down: do not let the duplicates pile up
        }
        let mut script = String::new();
        let kind = rng.below(3);
        if kind > 0 && ovn.len() == 1 {
            script.push_str(&format!(
                "delete rule ip nat PREROUTING handle {}\n",
                ovn[0]
            ));
        }
        if kind < 2 || ovn.len() != 1 {
            // One copy at the head (above calico), one right after portmap's jump.
            script.push_str(&format!(
                "insert rule ip nat PREROUTING {dup}\nadd rule ip nat PREROUTING position {cni} {dup}\n"
            ));
        }
        if restore("nft -f -", &[], &script) {
            n += 1;
        }
    }
    n
}

/// Direct reads of the nf_tables chain: (generation, handles in order).
fn nft_samples(stop: &AtomicBool) -> Vec<(u32, Vec<u64>)> {
    let mut b = NftBackend::open().unwrap();
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Ok(s) = b.read(Family::Ip, "nat", "PREROUTING") {
            out.push((s.generation, s.rules.iter().map(|r| r.handle).collect()));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    out
}

fn nft_crash(victim: Victim) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    netns(|| {
        ok("ip link set lo up");
        ok_stdin("iptables-nft-restore --counters", &table(CONVERGED));
        let cfg = config(&config_text(false));
        let events = NftEventLog::start();
        let start = ChainSim::listed("ip", "nat", "PREROUTING");
        let (s0, fillers0) = shape(start.rules.iter().map(|r| nft_target(&r.1)));
        assert_eq!((s0.as_str(), fillers0), (CONVERGED, FILLERS));
        let handle_of = |t: &str| {
            start
                .rules
                .iter()
                .find(|r| nft_target(&r.1) == Some(t))
                .unwrap()
                .0
        };
        let cni = handle_of("CNI-HOSTPORT-DNAT");
        let foreign: BTreeSet<u64> = start
            .rules
            .iter()
            .filter(|r| nft_target(&r.1) != Some("OVN-PREROUTING"))
            .map(|r| r.0)
            .collect();
        let listed_before: Vec<String> =
            foreign_lines(&ok("nft -a list chain ip nat PREROUTING 2>/dev/null"));

        let mut rng = Rng::new(&format!("crash nft {victim:?}"));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = {
            let s = stop.clone();
            OnDrop(move || s.store(true, Ordering::SeqCst))
        };
        let disruptor = {
            let (stop, r) = (stop.clone(), Rng::seeded(rng.next_u64()));
            std::thread::spawn(move || nft_disruptor(&stop, cni, r))
        };
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || nft_samples(&stop))
        };
        let kills = kill_loop(victim, &["--config", cfg.as_str()], &[], &mut rng);
        stop.store(true, Ordering::SeqCst);
        let disruptions = disruptor.join().unwrap();
        let samples = sampler.join().unwrap();

        // Restart: a daemon that is left alone converges the chain.
        let t = Instant::now();
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        let mut reader = NftBackend::open().unwrap();
        let converged = wait_until(Duration::from_secs(20), || {
            let s = reader.read(Family::Ip, "nat", "PREROUTING").unwrap();
            shape(targets(&s.rules)) == (CONVERGED.to_string(), FILLERS)
        });
        let restart = t.elapsed();
        assert!(converged, "not converged after the restart:\n{}", d.log());
        let final_gen = reader.generation().unwrap();
        assert!(events.wait_gen(final_gen as u64, Duration::from_secs(10)));
        d.proc.signal(libc::SIGTERM);
        assert_eq!(
            d.proc.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            d.log()
        );
        let mut pids = kills.pids.clone();
        pids.insert(d.pid());

        // Every foreign rule is still there, with its handle, its counters, in order.
        assert_eq!(
            foreign_lines(&ok("nft -a list chain ip nat PREROUTING 2>/dev/null")),
            listed_before
        );

        // The history, generation by generation.
        let lines = events.stop();
        let txns = transactions(&lines, "ip", "nat", "PREROUTING");
        let wanted: BTreeSet<u64> = samples.iter().map(|s| s.0 as u64).collect();
        let mut sim = start;
        let mut at_gen: BTreeMap<u64, (Vec<u64>, bool)> = BTreeMap::new();
        let (mut ours, mut theirs, mut by_killed) = (0, 0, 0);
        let mut ops_per_commit: BTreeMap<usize, usize> = BTreeMap::new();
        for t in &txns {
            let deleted = sim
                .apply(t)
                .unwrap_or_else(|e| panic!("the monitor's history is incomplete: {e}"));
            for (h, text) in &deleted {
                assert!(
                    !foreign.contains(h),
                    "generation {} by {} ({}) deleted a foreign rule: {text}",
                    t.gen,
                    t.pid,
                    t.process
                );
            }
            let jumpset = pids.contains(&t.pid);
            if jumpset && !t.events.is_empty() {
                ours += 1;
                if kills.killed_pids.contains(&t.pid) {
                    by_killed += 1;
                }
                *ops_per_commit.entry(t.events.len()).or_default() += 1;
                assert_eq!(t.process, "jumpset");
                for e in &t.events {
                    if let RuleEvent::Add { text, .. } = e {
                        assert_eq!(nft_target(text), Some("OVN-PREROUTING"), "{text}");
                    }
                }
                for (_, text) in &deleted {
                    assert_eq!(nft_target(text), Some("OVN-PREROUTING"), "{text}");
                }
                // All or nothing: a jumpset transaction leaves the chain converged.
                let (s, f) = shape(sim.rules.iter().map(|r| nft_target(&r.1)));
                assert_eq!(
                    (s.as_str(), f),
                    (CONVERGED, FILLERS),
                    "generation {} by jumpset pid {} left a half-applied chain: {:?}",
                    t.gen,
                    t.pid,
                    t.events
                );
            } else if !t.events.is_empty() {
                theirs += 1;
            }
            if wanted.contains(&t.gen) {
                at_gen.insert(t.gen, (sim.handles(), jumpset));
            }
        }
        assert_eq!(
            sim.handles(),
            ChainSim::listed("ip", "nat", "PREROUTING").handles(),
            "the rebuilt final chain differs from nft -a list"
        );
        // Every direct read equals the rebuilt chain at its generation; so every state
        // seen was either a jumpset result (converged, checked above) or one the
        // disruptor wrote in one transaction.
        let (mut compared, mut seen_converged, mut seen_disrupted) = (0, 0, 0);
        for (gen, handles) in &samples {
            if let Some((h, by_jumpset)) = at_gen.get(&(*gen as u64)) {
                if h != handles {
                    let from = h.iter().zip(handles).take_while(|(a, b)| a == b).count();
                    let upto = |v: &[u64]| v[from.min(v.len())..(from + 8).min(v.len())].to_vec();
                    let recent: Vec<&Txn> = txns
                        .iter()
                        .filter(|t| t.gen + 3 >= *gen as u64 && t.gen <= *gen as u64)
                        .collect();
                    let head = |v: &[u64]| v.iter().take(8).copied().collect::<Vec<_>>();
                    let tail = |v: &[u64]| v.iter().rev().take(4).copied().collect::<Vec<_>>();
                    panic!(
                        "generation {gen}: a direct read differs from the history from position {from}: rebuilt {:?} (len {}, head {:?}, tail rev {:?}), read {:?} (len {}, head {:?}, tail rev {:?}); the last transactions: {recent:#?}",
                        upto(h),
                        h.len(),
                        head(h),
                        tail(h),
                        upto(handles),
                        handles.len(),
                        head(handles),
                        tail(handles)
                    );
                }
                compared += 1;
                if *by_jumpset {
                    seen_converged += 1;
                } else {
                    seen_disrupted += 1;
                }
            }
        }
        assert!(compared >= 50, "only {compared} direct reads compared");
        assert!(
            ours >= 5,
            "jumpset committed only {ours} times: the test did not bite"
        );
        figure(&format!(
            "crash nft {victim:?}: {} started, {} killed with SIGKILL after 0..{:?} (exited first: {:?}); {disruptions} disruptions; {} transactions rebuilt from nft monitor: {ours} by jumpset ({by_killed} by processes killed right after; changes per commit {ops_per_commit:?}), {theirs} by the disruptor — every jumpset generation left the chain converged; {compared} direct reads matched the history ({seen_converged} after a jumpset commit, {seen_disrupted} after a disruption); converged {restart:?} after the restart",
            kills.started,
            kills.killed,
            kills.max_delay,
            kills.exited,
            txns.len()
        ));
        assert!(kills.killed * 4 >= kills.started, "{kills:?}");
        assert!(by_killed >= 1, "no kill landed after a commit: {kills:?}");
    });
}

/// `nft -a list` lines of the rules that are not the owned jump (handles and counters).
fn foreign_lines(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("# handle") && !l.starts_with("chain "))
        .filter(|l| nft_target(l) != Some("OVN-PREROUTING"))
        .map(str::to_string)
        .collect()
}

#[test]
fn nft_daemon_killed_at_random_points_never_leaves_a_half_applied_chain() {
    nft_crash(Victim::Daemon);
}

#[test]
fn nft_apply_killed_at_random_points_never_leaves_a_half_applied_chain() {
    nft_crash(Victim::Apply);
}

/// One legacy sample's verdict.
fn legacy_verdict(shape: &(String, usize)) -> Result<(), String> {
    if shape.1 == FILLERS && (shape.0 == CONVERGED || LEGACY_SHAPES.contains(&shape.0.as_str())) {
        Ok(())
    } else {
        Err(format!("{} with {} fillers", shape.0, shape.1))
    }
}

#[test]
fn legacy_apply_killed_at_random_points_never_leaves_a_half_applied_table() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lock = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("crash-{}.xtables.lock", std::process::id()));
    let lock_s = lock.to_str().unwrap().to_string();
    netns(|| {
        let env = [("XTABLES_LOCKFILE", lock_s.as_str())];
        assert!(restore(
            "iptables-legacy-restore -w --counters",
            &env,
            &table(CONVERGED)
        ));
        let cfg = config(&config_text(true));
        let mut rng = Rng::new("crash legacy Apply");
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = {
            let s = stop.clone();
            OnDrop(move || s.store(true, Ordering::SeqCst))
        };
        let bad = Arc::new(Mutex::new(Vec::<String>::new()));

        // The disruptor: whole tables of known shapes, under the lock.
        let disruptor = {
            let (stop, env) = (
                stop.clone(),
                env.map(|(a, b)| (a.to_string(), b.to_string())),
            );
            let mut r = Rng::seeded(rng.next_u64());
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(r.ms(40, 100));
                    let s = LEGACY_SHAPES[r.below(3) as usize];
                    if restore("iptables-legacy-restore -w --counters", &env, &table(s)) {
                        n += 1;
                    }
                }
                n
            })
        };
        // Sampler 1: jumpset's own x_tables reader, fast. Also counts samples whose
        // foreign counters read zero (the SET_REPLACE → ADD_COUNTERS window of x_tables).
        let fast = {
            let (stop, bad) = (stop.clone(), bad.clone());
            std::thread::spawn(move || {
                let (mut n, mut zeroed) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((info, blob)) = LegacyBackend::read_raw(Family::Ip, "nat") {
                        let t = Table::decode(Family::Ip, &info, &blob).unwrap();
                        let rules = t.rules("PREROUTING").unwrap();
                        n += 1;
                        if let Err(e) = legacy_verdict(&shape(targets(&rules))) {
                            bad.lock().unwrap().push(format!("jumpset's reader: {e}"));
                        }
                        zeroed += rules.iter().any(|r| {
                            r.target() != Some("OVN-PREROUTING")
                                && r.counters.is_some_and(|c| c.packets == 0)
                        }) as usize;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                (n, zeroed)
            })
        };
        // Sampler 2: iptables-legacy-save, the independent oracle.
        let slow = {
            let (stop, bad) = (stop.clone(), bad.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let out = Command::new("iptables-legacy-save")
                        .args(["-t", "nat"])
                        .output()
                        .unwrap();
                    let text = String::from_utf8_lossy(&out.stdout);
                    let s = shape(
                        text.lines()
                            .filter(|l| l.starts_with("-A PREROUTING "))
                            .map(|l| l.split(" -j ").nth(1)),
                    );
                    n += 1;
                    if let Err(e) = legacy_verdict(&s) {
                        bad.lock()
                            .unwrap()
                            .push(format!("iptables-legacy-save: {e}"));
                    }
                }
                n
            })
        };
        let kills = kill_loop(
            Victim::Apply,
            &["--config", cfg.as_str(), "--backend", "legacy"],
            &env,
            &mut rng,
        );
        stop.store(true, Ordering::SeqCst);
        let disruptions = disruptor.join().unwrap();
        let (fast_n, zeroed) = fast.join().unwrap();
        let slow_n = slow.join().unwrap();

        // Restart: one apply converges the table; the foreign counters are intact.
        let t = Instant::now();
        let out = Command::new(bin())
            .args(["apply", "--config", cfg.as_str(), "--backend", "legacy"])
            .env("XTABLES_LOCKFILE", &lock_s)
            .output()
            .unwrap();
        let restart = t.elapsed();
        assert!(out.status.success(), "{out:?}");
        let save = ok("iptables-legacy-save -c -t nat");
        let chain: Vec<&str> = save
            .lines()
            .filter(|l| l.starts_with("[") && l.contains("-A PREROUTING "))
            .collect();
        let s = shape(chain.iter().map(|l| l.split(" -j ").nth(1)));
        assert_eq!((s.0.as_str(), s.1), (CONVERGED, FILLERS));
        for (t, c) in [
            ("cali-PREROUTING", "[7:700]"),
            ("KUBE-SERVICES", "[8:800]"),
            ("CNI-HOSTPORT-DNAT", "[9:900]"),
        ] {
            assert!(
                chain.iter().any(|l| l.starts_with(c) && l.ends_with(t)),
                "{t} lost its counters: {chain:#?}"
            );
        }
        let bad = bad.lock().unwrap().clone();
        assert!(
            bad.is_empty(),
            "{} half-applied sample(s):\n{}",
            bad.len(),
            bad.join("\n")
        );
        assert!(fast_n >= 100 && slow_n >= 20, "{fast_n} / {slow_n} samples");
        figure(&format!(
            "crash legacy Apply: {} started, {} killed with SIGKILL after 0..{:?} (exited first: {:?}); {disruptions} whole-table disruptions; {fast_n} samples by jumpset's reader and {slow_n} by iptables-legacy-save, every one converged or a disruptor's table; samples with a foreign counter at 0 (SET_REPLACE before ADD_COUNTERS): {zeroed}; converged in {restart:?} by one apply after the restart",
            kills.started,
            kills.killed,
            kills.max_delay,
            kills.exited,
        ));
        assert!(kills.killed * 4 >= kills.started, "{kills:?}");
    });
    let _ = std::fs::remove_file(lock);
}
