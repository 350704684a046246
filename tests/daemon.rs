//! `jumpset daemon` against the real kernel, each test in a fresh network namespace, with
//! the real iptables-nft / iptables-legacy / nft as the other agents and as the oracles.
//! Most tests run the binary (signals, capabilities, exit codes, systemd notifications);
//! the latency and overflow tests run `jumpset::daemon::run` in-process on a thread of
//! the namespace, with tuned timing.

mod support;

use jumpset::backend::nft::codec::{self, Body};
use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use jumpset::daemon::Tuning;
use jumpset::reconcile::{self, Goal};
use jumpset::snapshot::Family;
use jumpset::spec::Config;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::daemon::InProcess;
use support::*;

const OVN_COMMENT: &str = "kube-ovn prerouting rules";
const METRICS: &str = "127.0.0.1:10296";

/// The Harvester spec (nft) with a `[daemon]` table.
fn daemon_config(resync: &str, cleanup: bool, encoding: &str) -> String {
    format!(
        "comment_encoding = \"{encoding}\"\n{}\n[daemon]\nresync_interval = \"{resync}\"\nmetrics_listen = \"{METRICS}\"\ncleanup_on_exit = {cleanup}\napi_socket = \"\"\n",
        harvester_config()
    )
}

fn lo_up() {
    ok("ip link set lo up");
}

fn load_broken(restore: &str) {
    ok(&format!(
        "{restore} < {}",
        fixture("harvester-broken.rules").display()
    ));
}

fn healthy() -> Vec<String> {
    fixture_chain("harvester-healthy.rules", "PREROUTING")
}

/// Whether ip nat PREROUTING is converged for the config, read with jumpset's own reader
/// (cheap enough to poll) — the tests also compare with iptables-nft-save.
/// The reader is kept open: closing an nf_tables socket makes the kernel flush its
/// deferred destructors under the commit mutex, which would delay the daemon.
fn converged(b: &mut NftBackend, cfg: &Config) -> bool {
    let snap = b.read(Family::Ip, "nat", "PREROUTING").unwrap();
    reconcile::plan_for(Goal::Converge, &snap, &cfg.chains()[0]).is_noop()
}

/// One HTTP GET on the namespace's loopback: (status, body).
fn http_get(path: &str) -> Option<(u16, String)> {
    http_get_at(METRICS, path)
}

/// `nft monitor` in the background; the `# new generation` lines it printed, on stop.
struct NftMonitor(Child);

impl NftMonitor {
    fn start() -> NftMonitor {
        let c = Command::new("nft")
            .arg("monitor")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nft monitor starts");
        std::thread::sleep(Duration::from_millis(300));
        NftMonitor(c)
    }

    fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let mut out = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.0.wait();
        out.lines()
            .filter(|l| l.starts_with("# new generation"))
            .map(str::to_string)
            .collect()
    }
}

/// Capability masks of every thread of `pid`: (name, hex) pairs per thread.
fn thread_caps(pid: u32) -> Vec<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        out.push(
            status
                .lines()
                .filter(|l| l.starts_with("Cap"))
                .map(|l| {
                    let (k, v) = l.split_once(':').unwrap();
                    (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap())
                })
                .collect(),
        );
    }
    out
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_RAW: u64 = 1 << 13;

fn assert_caps_only(pid: u32, want: u64) {
    let threads = thread_caps(pid);
    assert!(!threads.is_empty());
    for caps in threads {
        for (k, v) in caps {
            let expect = match k.as_str() {
                "CapInh" | "CapAmb" => 0,
                _ => want,
            };
            assert_eq!(v, expect, "{k} = {v:#x}, want {expect:#x}");
        }
    }
}

#[test]
fn ready_after_the_chain_is_healthy_then_quiet_and_deaf_to_its_own_commits() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("30s", false, "xt"));
        let notify = NotifySocket::bind();
        let mut d = DaemonProc::start(
            &["--config", cfg.as_str()],
            &[
                ("NOTIFY_SOCKET", notify.path()),
                ("WATCHDOG_USEC", "400000"),
            ],
        );
        let msgs = notify.until("READY=1", Duration::from_secs(10));
        let ready = msgs.last().expect("a notification");
        assert!(ready.contains("READY=1"), "{msgs:?}\n{}", d.log());
        // Readiness comes after the chain is healthy.
        assert_eq!(saved_chain("iptables-nft-save", "PREROUTING"), healthy());
        assert!(
            ready.contains("STATUS=nft: ip nat PREROUTING: in order"),
            "{ready}"
        );

        // Two seconds idle: not a single commit, and nothing read either (its own
        // repair's notifications did not trigger a reconcile).
        let mon = NftMonitor::start();
        std::thread::sleep(Duration::from_secs(2));
        let gens = mon.stop();
        assert!(gens.is_empty(), "commits while idle: {gens:?}");
        let (code, m) = http_get("/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        assert_eq!(
            metric_value(&m, "jumpset_reconciles_total{result=\"repaired\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric_value(&m, "jumpset_reconciles_total{result=\"noop\"}"),
            0.0,
            "{m}"
        );
        assert_eq!(
            metric_value(&m, "jumpset_notifications_total{source=\"own\"}"),
            1.0,
            "{m}"
        );
        assert_eq!(
            metric_value(
                &m,
                "jumpset_chain_in_order{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"}"
            ),
            1.0
        );
        assert!(
            m.contains("jumpset_fights_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"} 0")
        );
        assert!(m.contains("jumpset_repair_latency_seconds"));
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                l.starts_with("jumpset_") || l.starts_with("process_"),
                "{l}"
            );
        }
        let (code, h) = http_get("/healthz").unwrap();
        assert_eq!((code, h.lines().next()), (200, Some("ok")), "{h}");

        // Least privilege: every thread holds CAP_NET_ADMIN and nothing else.
        assert_caps_only(d.pid(), CAP_NET_ADMIN);
        eprintln!("daemon RSS: {} KiB", vm_rss_kib(d.pid()));

        // A repair sends STATUS only when the state changes; a disruption and repair
        // leaves it "in order".
        ok(&format!(
            "iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
        ));
        assert!(wait_until(Duration::from_secs(5), || saved_chain(
            "iptables-nft-save",
            "PREROUTING"
        ) == healthy()));

        // SIGTERM: exit 0 promptly; without cleanup_on_exit the jumps stay.
        let t = Instant::now();
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "{}", d.log());
        eprintln!("SIGTERM to exit: {:?}", t.elapsed());
        assert_eq!(saved_chain("iptables-nft-save", "PREROUTING"), healthy());
        let msgs = notify.until("STOPPING=1", Duration::from_secs(2));
        assert!(msgs.iter().any(|m| m.contains("STOPPING=1")), "{msgs:?}");
        // WATCHDOG=1 every 200 ms (half of WATCHDOG_USEC) while it ran (~3 s).
        let pings = msgs.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        assert!(pings >= 5, "{pings} watchdog pings: {msgs:?}");
    });
}

#[test]
fn sigterm_with_cleanup_on_exit_removes_the_owned_jumps() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("30s", true, "xt"));
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        assert_eq!(saved_chain("iptables-nft-save", "PREROUTING"), healthy());
        d.signal(libc::SIGINT);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "{}", d.log());
        let left = saved_chain("iptables-nft-save", "PREROUTING");
        let want: Vec<String> = healthy()
            .into_iter()
            .filter(|l| !l.contains("OVN-PREROUTING"))
            .collect();
        assert_eq!(left, want, "only the owned jump is gone");
        assert!(d.log().contains("cleanup_on_exit: removed the owned jumps"));
    });
}

/// Every NEWGEN in the namespace, timestamped on arrival by a thread of its own; ends
/// at the first commit by a process called `nft`.
fn watch_generations() -> mpsc::Receiver<(Instant, String)> {
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
    sock.bind_auto().unwrap();
    sock.add_membership(7).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            if sock.recv(&mut buf, 0).is_err() {
                continue; // ENOBUFS: keep going
            }
            let now = Instant::now();
            for m in codec::parse(&buf).unwrap_or_default() {
                if let Body::Gen(g) = m.body {
                    let name = g.proc_name.unwrap_or_default().into_owned();
                    let last = name == "nft";
                    let _ = tx.send((now, name));
                    if last {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// The next commit by `name`, skipping others; `None` after `limit`.
fn next_commit_by(
    rx: &mpsc::Receiver<(Instant, String)>,
    name: &str,
    limit: Duration,
) -> Option<Instant> {
    let end = Instant::now() + limit;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok((t, n)) if n == name => return Some(t),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[((sorted.len() * p) / 100).min(sorted.len() - 1)]
}

fn summary(lat: &[Duration]) -> String {
    let mut v = lat.to_vec();
    v.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&v, 50).as_secs_f64() * 1e3,
        percentile(&v, 99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    )
}

/// Each latency from the kernel's notification of a disruption to the notification of
/// the daemon's repair; asserts the chain is converged after each.
fn measure(
    gens: &mpsc::Receiver<(Instant, String)>,
    reader: &mut NftBackend,
    cfg: &Config,
    n: usize,
    mut disrupt: impl FnMut(usize),
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut dup, mut del) = (Vec::new(), Vec::new());
    for i in 0..n {
        disrupt(i);
        // The disruption's commit: the first one not by the daemon.
        let t0 = loop {
            let (t, name) = gens
                .recv_timeout(Duration::from_secs(5))
                .expect("the disruption's notification");
            if name != InProcess::NAME {
                break t;
            }
        };
        let t1 = next_commit_by(gens, InProcess::NAME, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("disruption {i} was not repaired"));
        if i % 2 == 0 { &mut dup } else { &mut del }.push(t1.duration_since(t0));
        assert!(
            wait_until(Duration::from_secs(5), || converged(reader, cfg)),
            "disruption {i} left the chain unconverged"
        );
    }
    (dup, del)
}

/// 100 disruptions made with iptables-nft (a duplicate inserted at the top, the owned
/// jump deleted, alternately), each repaired; then 100 more by a long-lived writer (a
/// socket that stays open). The event-to-repair latency is measured from the kernel's
/// notification of the disruption to the notification of the repair, and reported.
fn repair_latency(encoding: &str) {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text = daemon_config("30s", false, encoding);
        let cfg = config(&text);
        let parsed = Config::from_toml(&text).unwrap();
        let spec = parsed.chains()[0].clone();
        // Fight detection off: 100 quick disruptions are a fight by definition, and here
        // the point is the latency of each repair.
        let d = InProcess::start_ready(
            cfg.path(),
            Tuning::default().without_fight_detection(),
            Duration::from_secs(10),
            || http_get("/healthz").is_some_and(|r| r.0 == 200),
        );
        let mut reader = NftBackend::open().unwrap();
        assert!(converged(&mut reader, &parsed));
        let gens = watch_generations();

        let (dup, del) = measure(&gens, &mut reader, &parsed, 100, |i| {
            let op = if i % 2 == 0 {
                "-I PREROUTING 1"
            } else {
                "-D PREROUTING"
            };
            ok(&format!(
                "iptables-nft -t nat {op} -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
            ));
        });
        let all: Vec<Duration> = dup.iter().chain(&del).copied().collect();
        eprintln!(
            "repair latency, {encoding}, 100 iptables-nft disruptions: {} (duplicate at top: {}; owned jump deleted: {})",
            summary(&all),
            summary(&dup),
            summary(&del)
        );

        // The same by a writer whose socket stays open (iptables-nft closing its socket
        // makes the kernel flush its deferred destructors under the commit mutex, an RCU
        // grace period the next commit waits for).
        let mut writer = NftBackend::open().unwrap();
        let (wdup, wdel) = measure(&gens, &mut reader, &parsed, 100, |i| {
            if i % 2 == 0 {
                let snap = writer.read(Family::Ip, "nat", "PREROUTING").unwrap();
                let own = snap
                    .rules
                    .iter()
                    .find(|r| r.target() == Some("OVN-PREROUTING"))
                    .unwrap()
                    .clone();
                writer
                    .load(Family::Ip, "nat", "PREROUTING", &[], &[own])
                    .unwrap();
            } else {
                reconcile::reconcile(&mut writer, Family::Ip, &spec, Goal::Remove).unwrap();
            }
        });
        let all: Vec<Duration> = wdup.iter().chain(&wdel).copied().collect();
        eprintln!(
            "repair latency, {encoding}, 100 disruptions by a long-lived writer: {} (duplicate appended: {}; owned jump deleted: {})",
            summary(&all),
            summary(&wdup),
            summary(&wdel)
        );

        ok("nft add table ip stopwatching");
        assert_eq!(saved_chain("iptables-nft-save", "PREROUTING"), healthy());
        let (_, m) = http_get("/metrics").unwrap();
        assert_eq!(
            metric_value(&m, "jumpset_reconciles_total{result=\"repaired\"}"),
            201.0,
            "{m}"
        );
        d.stop().expect("run returns Ok on shutdown");
        // Generous: the figures are reported, not asserted.
        for l in dup.iter().chain(&del).chain(&wdup).chain(&wdel) {
            assert!(*l < Duration::from_secs(2), "{l:?}");
        }
    });
}

#[test]
fn iptables_nft_drift_is_repaired_within_milliseconds_userdata() {
    repair_latency("userdata");
}

#[test]
fn iptables_nft_drift_is_repaired_within_milliseconds_xt() {
    repair_latency("xt");
}

#[test]
fn a_20hz_fighter_is_backed_off_logged_once_and_repaired_after() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("30s", false, "xt"));
        let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        let mon = NftMonitor::start();
        // Another agent puts its jump back at position 1 every 50 ms for 10 s.
        let start = Instant::now();
        for i in 0..200u32 {
            let at = start + Duration::from_millis(50) * i;
            if let Some(w) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            ok(&format!(
                "iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
            ));
        }
        let fought = start.elapsed();
        // Once it stops, the chain is repaired promptly (within one capped hold-off).
        let stopped = Instant::now();
        assert!(
            wait_until(Duration::from_secs(5), || saved_chain(
                "iptables-nft-save",
                "PREROUTING"
            ) == healthy()),
            "not repaired after the fight:\n{}",
            d.log()
        );
        let repaired_after = stopped.elapsed();
        let gens = mon.stop();
        let ours = gens.iter().filter(|l| l.ends_with("(jumpset)")).count();
        let theirs = gens
            .iter()
            .filter(|l| l.ends_with("(iptables-nft)"))
            .count();
        eprintln!(
            "fight: {theirs} commits by the fighter in {fought:?}, {ours} by the daemon; repaired {repaired_after:?} after the fighter stopped"
        );
        assert!(theirs >= 150, "the fighter ran: {theirs}");
        assert!(ours <= 40, "{ours} daemon commits against a 20 Hz fighter");
        assert!(ours >= 1);
        let log = d.log();
        let fight_lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("fight") && l.contains("iptables-nft"))
            .collect();
        assert_eq!(fight_lines.len(), 1, "one fight line per episode:\n{log}");
        eprintln!("the fight line: {}", fight_lines[0]);
        assert!(fight_lines[0].contains("kube-ovn"), "{}", fight_lines[0]);
        assert!(fight_lines[0].contains("pid "), "{}", fight_lines[0]);
        let (_, m) = http_get("/metrics").unwrap();
        assert_eq!(
            metric_value(
                &m,
                "jumpset_fights_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"}"
            ),
            1.0,
            "{m}"
        );
    });
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text = daemon_config("30s", false, "xt");
        let cfg = config(&text);
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());

        std::fs::write(cfg.path(), "this is = = not toml\n").unwrap();
        d.signal(libc::SIGHUP);
        assert!(
            d.wait_log("keeping the old config", Duration::from_secs(5)),
            "{}",
            d.log()
        );
        let (_, h) = http_get("/healthz").unwrap();
        assert!(h.contains("config reload failed"), "{h}");
        // Still running and repairing with the old config.
        ok(&format!(
            "iptables-nft -t nat -D PREROUTING -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
        ));
        assert!(
            wait_until(Duration::from_secs(5), || saved_chain(
                "iptables-nft-save",
                "PREROUTING"
            ) == healthy()),
            "{}",
            d.log()
        );

        // A valid config that adds a jump is taken at the next SIGHUP.
        let more = text.replace(
            "\n[daemon]",
            "\n  [[chain.jump]]\n  target = \"EXTRA-PREROUTING\"\n  comment = \"extra jump\"\n  after = [\"KUBE-SERVICES\"]\n\n[daemon]",
        );
        Config::from_toml(&more).expect("the new config is valid");
        std::fs::write(cfg.path(), &more).unwrap();
        d.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(5), || saved_chain(
                "iptables-nft-save",
                "PREROUTING"
            )
            .iter()
            .any(|l| l.contains("-j EXTRA-PREROUTING"))),
            "{}",
            d.log()
        );
        // The config watcher may see each write first (a `stat` poll every 250 ms) and
        // reload it too; the SIGHUP always reloads: each write counts once or twice.
        assert!(
            d.wait_log("SIGHUP: reloaded", Duration::from_secs(5)),
            "{}",
            d.log()
        );
        let (_, m) = http_get("/metrics").unwrap();
        for result in ["error", "ok"] {
            let n = metric_value(
                &m,
                &format!("jumpset_config_reloads_total{{result=\"{result}\"}}"),
            );
            assert!((1.0..=2.0).contains(&n), "{result}: {n}\n{m}");
        }
    });
}

#[test]
fn without_the_capabilities_it_exits_3_naming_them() {
    netns(|| {
        let cfg = config(&daemon_config("30s", false, "xt"));
        let run = |backend: &str, drop: &str| {
            Command::new("setpriv")
                .args([
                    &format!("--inh-caps=-{drop}"),
                    &format!("--bounding-set=-{drop}"),
                    "--",
                    bin(),
                    "daemon",
                    "--config",
                    cfg.as_str(),
                    "--backend",
                    backend,
                ])
                .output()
                .unwrap()
        };
        let out = run("nft", "net_admin");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("CAP_NET_ADMIN"), "{err}");
        assert!(
            err.contains("AmbientCapabilities="),
            "says how to grant it: {err}"
        );
        let out = run("legacy", "net_raw");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains("CAP_NET_RAW") && !err.contains("CAP_NET_ADMIN ("),
            "{err}"
        );
        // nft does not need CAP_NET_RAW: the same restriction is fine there.
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
    });
}

#[test]
fn legacy_daemon_repairs_on_its_poll() {
    netns(|| {
        lo_up();
        load_broken("iptables-legacy-restore");
        let cfg = config(&daemon_config("200ms", false, "xt"));
        let mut d = DaemonProc::start(&["--config", cfg.as_str(), "--backend", "legacy"], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        assert_eq!(saved_chain("iptables-legacy-save", "PREROUTING"), healthy());
        assert_caps_only(d.pid(), CAP_NET_ADMIN | CAP_NET_RAW);
        for disrupt in [
            format!("iptables-legacy -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"),
            format!("iptables-legacy -t nat -D PREROUTING -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"),
        ] {
            ok(&disrupt);
            let t = Instant::now();
            assert!(
                wait_until(Duration::from_secs(5), || saved_chain("iptables-legacy-save", "PREROUTING")
                    == healthy()),
                "{disrupt} not repaired:\n{}",
                d.log()
            );
            eprintln!("legacy: repaired on the poll {:?} after `{disrupt}`", t.elapsed());
        }
        assert!(d.log().contains("polling every"));
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "{}", d.log());
    });
}

#[test]
fn a_notification_overflow_ends_in_a_correct_chain() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text = daemon_config("30s", false, "xt");
        let cfg = config(&text);
        let parsed = Config::from_toml(&text).unwrap();
        // The smallest receive buffer the kernel allows, so a flood overflows it.
        let mut tuning = Tuning::default();
        tuning.monitor_rcvbuf = 0;
        let d = InProcess::start_ready(cfg.path(), tuning, Duration::from_secs(10), || {
            http_get("/healthz").is_some_and(|r| r.0 == 200)
        });
        let mut reader = NftBackend::open().unwrap();
        assert!(converged(&mut reader, &parsed));
        // One batch with 400 rules in a user chain and our jump duplicated at the top.
        let mut flood = String::from("*nat\n:FLOOD - [0:0]\n");
        for i in 0..400 {
            flood.push_str(&format!(
                "-A FLOOD -s 10.{}.{}.0/24 -j RETURN\n",
                i / 256,
                i % 256
            ));
        }
        flood.push_str(&format!(
            "-I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING\nCOMMIT\n"
        ));
        ok_stdin("iptables-nft-restore --noflush", &flood);
        assert!(
            wait_until(Duration::from_secs(5), || converged(&mut reader, &parsed)),
            "the chain was not repaired after the overflow"
        );
        assert_eq!(saved_chain("iptables-nft-save", "PREROUTING"), healthy());
        let (_, m) = http_get("/metrics").unwrap();
        assert!(
            metric_value(&m, "jumpset_notification_overflows_total") >= 1.0,
            "no overflow happened: {m}"
        );
        d.stop().unwrap();
    });
}

#[test]
fn auto_waits_for_an_undecided_host_and_detects_again() {
    netns(|| {
        lo_up();
        let cfg = config(
            &daemon_config("300ms", false, "xt").replace("backend = \"nft\"", "backend = \"auto\""),
        );
        let notify = NotifySocket::bind();
        let d = DaemonProc::start(
            &["--config", cfg.as_str()],
            &[("NOTIFY_SOCKET", notify.path())],
        );
        // An empty host: no backend chosen; ready all the same, saying it waits.
        let msgs = notify.until("READY=1", Duration::from_secs(10));
        let ready = msgs.last().cloned().unwrap_or_default();
        assert!(
            ready.contains("READY=1") && ready.contains("STATUS=waiting"),
            "{msgs:?}\n{}",
            d.log()
        );
        // iptables-nft comes into use: the next detection picks nft and repairs.
        load_broken("iptables-nft-restore");
        assert!(
            wait_until(Duration::from_secs(5), || saved_chain(
                "iptables-nft-save",
                "PREROUTING"
            ) == healthy()),
            "{}",
            d.log()
        );
        let msgs = notify.until("in order", Duration::from_secs(5));
        assert!(
            msgs.iter()
                .any(|m| m.contains("STATUS=nft: ip nat PREROUTING: in order")),
            "{msgs:?}"
        );
    });
}

#[test]
fn a_host_turning_mixed_under_the_daemon_is_logged_once_and_counted() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(
            &daemon_config("300ms", false, "xt").replace("backend = \"nft\"", "backend = \"auto\""),
        );
        let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        let gauge = |kind: &str| {
            http_get("/metrics")
                .map(|(_, body)| {
                    metric_value(&body, &format!("jumpset_findings{{kind=\"{kind}\"}}"))
                })
                .unwrap_or(-1.0)
        };
        assert!(
            wait_until(Duration::from_secs(10), || gauge("mixed_backends") == 0.0),
            "{}",
            d.log()
        );
        assert!(!d.log().contains("explain: mixed_backends"), "{}", d.log());
        // iptables-legacy comes into use beside iptables-nft: the next look finds it.
        ok("iptables-legacy -t nat -A PREROUTING -p udp -j RETURN");
        assert!(
            d.wait_log("explain: mixed_backends", Duration::from_secs(5)),
            "{}",
            d.log()
        );
        assert!(
            wait_until(Duration::from_secs(5), || gauge("mixed_backends") == 1.0),
            "{}",
            d.log()
        );
        // Several looks later it is still there, and was said once.
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(gauge("mixed_backends"), 1.0);
        assert_eq!(
            d.log().matches("explain: mixed_backends").count(),
            1,
            "{}",
            d.log()
        );
        // Gone again: said so, once.
        ok("iptables-legacy -t nat -F PREROUTING");
        assert!(
            d.wait_log(
                "explain: mixed_backends: no longer found",
                Duration::from_secs(5)
            ),
            "{}",
            d.log()
        );
        assert!(wait_until(Duration::from_secs(5), || gauge(
            "mixed_backends"
        ) == 0.0));
    });
}
