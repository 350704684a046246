//! The daemon tells the truth and cannot be stalled (`docs/contracts.md#the-daemon`):
//! the real `jumpset daemon` in a fresh network namespace per test, against idle and
//! slow HTTP clients, a failing log sink and a closed stdout, a held xtables lock, a long
//! chain beside a busy writer, failing reconciles, fights and renames, config files that
//! change, block or lie, and the node's conventions (promtool, journald).

mod support;

use jumpset::backend::nft::NftBackend;
use jumpset::backend::Backend;
use jumpset::daemon::Tuning;
use jumpset::reconcile::{self, Goal};
use jumpset::snapshot::{Family, Rule, Verdict};
use jumpset::spec::Config;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::daemon::InProcess;
use support::*;

const METRICS: &str = "127.0.0.1:10296";
const OVN_COMMENT: &str = "kube-ovn prerouting rules";
const PROBE_LIMIT: Duration = Duration::from_secs(1);

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

/// The Harvester spec for `backend` with a `[daemon]` table (resync `resync`).
fn daemon_config(backend: &str, resync: &str) -> String {
    format!(
        "{}\n[daemon]\nresync_interval = \"{resync}\"\nmetrics_listen = \"{METRICS}\"\napi_socket = \"\"\n",
        harvester_config().replace("backend = \"nft\"", &format!("backend = \"{backend}\""))
    )
}

fn nft_healthy() -> bool {
    saved_chain("iptables-nft-save", "PREROUTING") == healthy()
}

/// One request to the metrics listener with extra header lines; (status, head, body),
/// `None` when there is no complete answer within 5 s.
fn request(path: &str, headers: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(METRICS).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((code, head.to_string(), body.to_string()))
}

/// A probe: its status and how long the answer took.
fn probe(path: &str) -> (Option<u16>, Duration) {
    let t = Instant::now();
    let r = http_get_at(METRICS, path).map(|r| r.0);
    (r, t.elapsed())
}

fn metric(series: &str) -> f64 {
    let (_, m) = http_get_at(METRICS, "/metrics").expect("metrics answer");
    metric_value(&m, series)
}

const IN_ORDER: &str = "jumpset_chain_in_order{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"}";

fn summary(lat: &[Duration]) -> String {
    let mut v = lat.to_vec();
    v.sort();
    format!(
        "n {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.len(),
        v[v.len() / 2].as_secs_f64() * 1e3,
        v[(v.len() * 99 / 100).min(v.len() - 1)].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    )
}

/// A pipe (read end, write end), both close-on-exec in this process.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2(2) fills the two-int array we own; on success both descriptors are
    // new and owned by nobody else, so wrapping each in an OwnedFd once is sound.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

/// `jumpset daemon --config CFG` with `stderr`, extra arguments and environment.
fn spawn_daemon(cfg: &str, stderr: Stdio, args: &[&str], env: &[(&str, &str)]) -> Guard {
    let mut cmd = Command::new(bin());
    cmd.args(["daemon", "--config", cfg])
        .args(args)
        .env("JUMPSET_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Guard::new(cmd.spawn().expect("jumpset daemon starts"))
}

// ---------------------------------------------------------------------------------------
// An HTTP server that cannot be starved.
// ---------------------------------------------------------------------------------------

#[test]
fn probes_answer_within_a_second_while_32_idle_connections_are_held() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("nft", "30s"));
        let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());

        // 32 connections that say nothing, reopened as the server closes them (its header
        // timeout), and 8 that send a request head one byte every 100 ms.
        let stop = Arc::new(AtomicBool::new(false));
        let least_held = Arc::new(AtomicUsize::new(usize::MAX));
        let idle = {
            let (stop, least) = (stop.clone(), least_held.clone());
            std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                let mut buf = [0u8; 1];
                while !stop.load(Ordering::SeqCst) {
                    held.retain(|s| {
                        s.set_nonblocking(true).unwrap();
                        // 0: closed by the server; WouldBlock: still open.
                        matches!((&*s).read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    });
                    if !held.is_empty() {
                        least.fetch_min(held.len(), Ordering::SeqCst);
                    }
                    while held.len() < 32 {
                        held.push(TcpStream::connect(METRICS).unwrap());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let slow: Vec<_> = (0..8)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                    while !stop.load(Ordering::SeqCst) {
                        let Ok(mut s) = TcpStream::connect(METRICS) else { continue };
                        for b in head.iter() {
                            if stop.load(Ordering::SeqCst) || s.write_all(&[*b]).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));

        // A request with a 1 MiB header is refused, not read.
        let mut big = TcpStream::connect(METRICS).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let filler = "a".repeat(1 << 20);
        let _ = write!(
            big,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n"
        );
        let mut answer = String::new();
        let _ = big.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{}",
            &answer[..answer.len().min(200)]
        );

        // Probes, for 8 s: every one answered, within a second.
        let mut lat = Vec::new();
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            for path in ["/livez", "/readyz"] {
                let (code, t) = probe(path);
                assert_eq!(code, Some(200), "{path} after {t:?}\n{}", d.log());
                assert!(t < PROBE_LIMIT, "{path} took {t:?}");
                lat.push(t);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        idle.join().unwrap();
        for s in slow {
            s.join().unwrap();
        }
        let held = least_held.load(Ordering::SeqCst);
        assert!(
            held >= 30,
            "at least {held} idle connections held throughout"
        );
        figure(&format!(
            "probes (/livez, /readyz) with 32 idle and 8 slow connections held: {}",
            summary(&lat)
        ));

        // Far more idle connections than the limit: the oldest are evicted, a probe is
        // still served.
        let flood: Vec<TcpStream> = (0..400)
            .map(|_| TcpStream::connect(METRICS).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (code, t) = probe("/livez");
        assert_eq!(code, Some(200));
        assert!(t < PROBE_LIMIT, "{t:?}");
        assert!(metric("jumpset_http_connections_evicted_total") >= 140.0);
        figure(&format!(
            "a probe with 400 idle connections opened (limit 256, oldest evicted): {:.2} ms",
            t.as_secs_f64() * 1e3
        ));
        drop(flood);
    });
}

// ---------------------------------------------------------------------------------------
// No panics on I/O.
// ---------------------------------------------------------------------------------------

#[test]
fn a_failing_log_sink_and_a_closed_stdout_are_not_fatal() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("nft", "30s"));
        let disrupt = format!(
            "iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
        );
        // 2>/dev/full, then a stderr pipe whose reader is gone.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let (r, w) = pipe();
        drop(r);
        for (what, sink) in [
            ("2>/dev/full", Stdio::from(full)),
            ("stderr to a pipe without reader", Stdio::from(w)),
        ] {
            let mut d = spawn_daemon(cfg.as_str(), sink, &[], &[]);
            assert!(
                wait_until(Duration::from_secs(10), nft_healthy),
                "{what}: not repaired at start"
            );
            for _ in 0..3 {
                ok(&disrupt);
                assert!(
                    wait_until(Duration::from_secs(5), nft_healthy),
                    "{what}: a disruption was not repaired"
                );
            }
            assert!(d.child().try_wait().unwrap().is_none(), "{what}: it died");
            assert!(
                metric("jumpset_log_writes_dropped_total") > 0.0,
                "{what}: drops are counted"
            );
            d.signal(libc::SIGTERM);
            assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "{what}");
        }

        // Commands whose stdout has no reader: the work is done, the exit code is theirs.
        load_broken("iptables-nft-restore");
        for (args, want) in [
            (&["status"][..], 0),
            (&["check"][..], 1),
            (&["apply"][..], 0),
            (&["check"][..], 0),
            (&["status", "--json"][..], 0),
        ] {
            let (r, w) = pipe();
            drop(r);
            let out = Command::new(bin())
                .args(args)
                .args(["--config", cfg.as_str()])
                .stdout(Stdio::from(w))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(want),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            nft_healthy(),
            "apply committed although its output was lost"
        );
        // As a shell runs it.
        for cmd in ["status", "apply", "check"] {
            let code = ok(&format!(
                "{} {cmd} --config {} | head -c1 >/dev/null; echo ${{PIPESTATUS[0]}}",
                bin(),
                cfg.as_str()
            ));
            assert_eq!(code.trim(), "0", "{cmd} | head -c1");
        }
    });
}

// ---------------------------------------------------------------------------------------
// A loop that never blocks.
// ---------------------------------------------------------------------------------------

/// Hold `file` with `flock -x` for `secs` seconds; returns once it is held.
fn hold_lock(file: &str, secs: u64) -> Guard {
    let ready = format!("{file}.ready");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new("flock")
        .args(["-x", file, "-c", &format!("touch {ready}; sleep {secs}")])
        .spawn()
        .expect("flock runs");
    assert!(
        wait_until(Duration::from_secs(5), || std::path::Path::new(&ready)
            .exists()),
        "flock did not take the lock"
    );
    Guard::new(child)
}

#[test]
fn a_legacy_lock_held_for_50_s_stalls_neither_the_watchdog_nor_sigterm() {
    netns(|| {
        lo_up();
        load_broken("iptables-legacy-restore");
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let lock = dir.join(format!("truth-{}.lock", std::process::id()));
        let other = dir.join(format!("truth-{}-other.lock", std::process::id()));
        let lock = lock.to_str().unwrap();
        let cfg = config(&daemon_config("legacy", "200ms"));
        let notify = NotifySocket::bind();
        let mut d = DaemonProc::start(
            &["--config", cfg.as_str()],
            &[
                ("NOTIFY_SOCKET", notify.path()),
                ("WATCHDOG_USEC", "1000000"),
                ("XTABLES_LOCKFILE", lock),
            ],
        );
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        assert_eq!(saved_chain("iptables-legacy-save", "PREROUTING"), healthy());

        // Another process holds the lock; then the chain is disrupted (by a writer using
        // another lock file, so that it gets in).
        let holder = hold_lock(lock, 70);
        let held_at = Instant::now();
        ok(&format!(
            "XTABLES_LOCKFILE={} iptables-legacy -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING",
            other.display()
        ));
        let mut live = Vec::new();
        let mut not_ready = 0;
        while held_at.elapsed() < Duration::from_secs(50) {
            let (code, t) = probe("/livez");
            assert_eq!(code, Some(200), "/livez at {:?}", held_at.elapsed());
            assert!(t < PROBE_LIMIT, "/livez took {t:?}");
            live.push(t);
            if probe("/readyz").0 == Some(503) {
                not_ready += 1;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            not_ready >= 90,
            "not ready while the chain is out of order: {not_ready}"
        );
        assert_eq!(metric(IN_ORDER), 0.0);
        assert_ne!(saved_chain("iptables-legacy-save", "PREROUTING"), healthy());

        // WATCHDOG=1 every 500 ms all along.
        let pings: Vec<Instant> = notify
            .timed()
            .into_iter()
            .filter(|(t, m)| *t >= held_at && m.contains("WATCHDOG=1"))
            .map(|(t, _)| t)
            .collect();
        let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
        let worst = gaps.iter().max().copied().unwrap_or_default();
        assert!(pings.len() >= 95, "{} pings in 50 s", pings.len());
        assert!(
            worst < Duration::from_secs(1),
            "a {worst:?} gap between pings"
        );
        let log = d.log();
        assert!(
            log.contains("was held by another process (iptables-legacy or another agent) for all of xtables_lock_timeout = 10.0 s"),
            "{log}"
        );
        assert!(!log.contains("the kernel socket failed"), "{log}");

        // SIGTERM, the lock still held: out within a second.
        let t = Instant::now();
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "{}", d.log());
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "SIGTERM to exit: {took:?}");
        figure(&format!(
            "legacy lock held 50 s: {} WATCHDOG=1 (interval 500 ms), largest gap {:.0} ms; /livez {}; SIGTERM to exit {:.1} ms",
            pings.len(),
            worst.as_secs_f64() * 1e3,
            summary(&live),
            took.as_secs_f64() * 1e3
        ));
        drop(holder);
        let _ = std::fs::remove_file(lock);
        let _ = std::fs::remove_file(format!("{lock}.ready"));
    });
}

// ---------------------------------------------------------------------------------------
// Progress under unrelated churn.
// ---------------------------------------------------------------------------------------

#[test]
fn a_long_chain_is_repaired_within_2_s_while_another_table_churns_at_200_commits_per_second() {
    netns(|| {
        lo_up();
        // The Harvester chain, broken, with 4,000 foreign rules after it.
        let mut restore = std::fs::read_to_string(fixture("harvester-broken.rules"))
            .unwrap()
            .replace("COMMIT\n", "");
        for i in 0..4000 {
            restore.push_str(&format!(
                "-A PREROUTING -s 10.{}.{}.0/24 -j RETURN\n",
                i / 256,
                i % 256
            ));
        }
        restore.push_str("COMMIT\n");
        ok_stdin("iptables-nft-restore", &restore);
        let text = daemon_config("nft", "30s");
        let cfg = config(&text);
        let spec = Config::from_toml(&text).unwrap().chains()[0].clone();
        // Ten disruptions by one writer 1.5 s apart are a fight by the policy's definition
        // (it would rightly yield the chain); here the point is progress under the churn,
        // so fight detection is off. Everything else is the default: the resync, the wait
        // for the disrupting writer's quiet.
        let mut tuning = Tuning::default();
        tuning.fight.threshold = u32::MAX;
        tuning.fight.crowd = u32::MAX;
        let d = InProcess::start_ready(cfg.path(), tuning, Duration::from_secs(20), || {
            http_get_at(METRICS, "/readyz").is_some_and(|r| r.0 == 200)
        });
        let mut reader = NftBackend::open().unwrap();
        let converged = |b: &mut NftBackend| {
            b.read(Family::Ip, "nat", "PREROUTING")
                .map(|s| reconcile::plan_for(Goal::Converge, &s, &spec).is_noop())
                .unwrap_or(false)
        };
        assert!(converged(&mut reader));

        // Another agent commits in the filter table 200 times a second.
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut w = NftBackend::open().unwrap();
                let accept = Rule {
                    handle: 0,
                    comment: None,
                    matches: Vec::new(),
                    counters: None,
                    verdict: Verdict::Accept,
                };
                let start = Instant::now();
                let mut done = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let at = start + Duration::from_millis(5) * done as u32;
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if w.load(
                        Family::Ip,
                        "filter",
                        "FORWARD",
                        &[],
                        std::slice::from_ref(&accept),
                    )
                    .is_ok()
                    {
                        done += 1;
                    }
                }
                done as f64 / start.elapsed().as_secs_f64()
            })
        };
        std::thread::sleep(Duration::from_secs(1));

        // Ten disruptions, 1.5 s apart: our jump deleted, or a duplicate appended.
        let mut writer = NftBackend::open().unwrap();
        let mut lat = Vec::new();
        for i in 0..10 {
            loop {
                let r = if i % 2 == 0 {
                    reconcile::reconcile(&mut writer, Family::Ip, &spec, Goal::Remove).map(drop)
                } else {
                    let snap = writer.read(Family::Ip, "nat", "PREROUTING").unwrap();
                    let own = snap
                        .rules
                        .iter()
                        .find(|r| r.target() == Some("OVN-PREROUTING"))
                        .unwrap()
                        .clone();
                    writer
                        .load(Family::Ip, "nat", "PREROUTING", &[], &[own])
                        .map_err(Into::into)
                };
                if r.is_ok() {
                    break;
                }
            }
            let t0 = Instant::now();
            assert!(
                wait_until(Duration::from_secs(10), || converged(&mut reader)),
                "disruption {i} never repaired"
            );
            let took = t0.elapsed();
            lat.push(took);
            std::thread::sleep(Duration::from_millis(1500));
        }
        stop.store(true, Ordering::SeqCst);
        let rate = churn.join().unwrap();
        let stale = metric("jumpset_stale_retries_total");
        let repaired = metric("jumpset_reconciles_total{result=\"repaired\"}");
        figure(&format!(
            "4,000 foreign rules, {rate:.0} unrelated commits/s: repaired after {} ({stale} stale attempts counted over {repaired} repairs)",
            summary(&lat)
        ));
        assert!(rate >= 150.0, "the churn ran at {rate:.0}/s");
        for (i, l) in lat.iter().enumerate() {
            assert!(*l <= Duration::from_secs(2), "disruption {i}: {l:?}");
        }
        // The churn made guarded writes (or reads) stale, and every one is counted.
        assert!(stale >= 10.0, "{stale} stale attempts counted");
        d.stop().expect("run returns Ok on shutdown");
    });
}

// ---------------------------------------------------------------------------------------
// Health that tells the truth, without restart loops.
// ---------------------------------------------------------------------------------------

#[test]
fn readiness_and_chain_in_order_follow_failures_fights_and_renames_liveness_never_fails() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text =
            daemon_config("nft", "30s").replace("create_chain = true", "create_chain = false");
        let cfg = config(&text);
        let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        let ready = |want: u16, limit: Duration| {
            wait_until(limit, || {
                http_get_at(METRICS, "/readyz").is_some_and(|r| r.0 == want)
                    && metric(IN_ORDER) == f64::from(want == 200)
                    && probe("/livez").0 == Some(200)
            })
        };
        assert!(ready(200, Duration::from_secs(5)), "{}", d.log());

        // 1. Every reconcile fails: the target chain is gone (create_chain = false).
        ok_stdin(
            "iptables-nft-restore --noflush",
            &format!(
                "*nat\n-D PREROUTING -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING\n-X OVN-PREROUTING\nCOMMIT\n"
            ),
        );
        assert!(ready(503, Duration::from_secs(2)), "{}", d.log());
        let mut why = String::new();
        assert!(
            wait_until(Duration::from_secs(2), || {
                why = http_get_at(METRICS, "/readyz").unwrap().1;
                why.contains("out of order") && why.contains("create_chain = false")
            }),
            "{why}"
        );
        assert!(
            wait_until(Duration::from_secs(5), || http_get_at(METRICS, "/readyz")
                .is_some_and(|r| r.1.contains("3 reconciles failed in a row"))),
            "{}",
            d.log()
        );
        ok("iptables-nft -t nat -N OVN-PREROUTING");
        assert!(ready(200, Duration::from_secs(5)), "{}", d.log());
        assert!(nft_healthy());

        // 2. The base chain recreated by nft at another priority: left alone, not ready.
        let saved = ok("iptables-nft-save -t nat");
        // One nft transaction (the daemon would otherwise recreate the chain in between).
        ok_stdin(
            "nft -f -",
            "flush chain ip nat PREROUTING\ndelete chain ip nat PREROUTING\nadd chain ip nat PREROUTING { type nat hook prerouting priority -50; }\nadd rule ip nat PREROUTING counter\n",
        );
        assert!(ready(503, Duration::from_secs(2)), "{}", d.log());
        let mut why = String::new();
        assert!(
            wait_until(Duration::from_secs(2), || {
                why = http_get_at(METRICS, "/readyz").unwrap().1;
                why.contains("not the base chain iptables-nft makes")
            }),
            "{why}"
        );
        ok_stdin(
            "nft -f -",
            "flush chain ip nat PREROUTING\ndelete chain ip nat PREROUTING\n",
        );
        ok_stdin("iptables-nft-restore", &saved);
        assert!(ready(200, Duration::from_secs(5)), "{}", d.log());

        // 3. A target rename: noticed at once (not at the resync, 30 s away).
        ok("nft rename chain ip nat OVN-PREROUTING OVN-RENAMED");
        let t = Instant::now();
        assert!(ready(503, Duration::from_secs(1)), "{}", d.log());
        figure(&format!(
            "target chain renamed: /readyz 503 and chain_in_order 0 after {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        ));
        ok("nft rename chain ip nat OVN-RENAMED OVN-PREROUTING");
        assert!(ready(200, Duration::from_secs(1)), "{}", d.log());

        // 4. A fight: a writer that re-places the jump at the top on every pass, 5 times a
        // second for 6 s (as a buggy Kube-OVN does on each of its passes). Each pass
        // undoes the repair made while it was quiet, so after three undos jumpset yields.
        // Not ready during it, never restarted. (A writer that never pauses at all is
        // waited for up to 2 s each time and would make too few undos in 6 s to be told
        // apart from one-off changes.)
        let mut during = Vec::new();
        let start = Instant::now();
        for i in 0..30u32 {
            let at = start + Duration::from_millis(200) * i;
            if let Some(w) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            ok(&format!(
                "iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
            ));
            if i >= 10 && i % 3 == 0 {
                let (live, _) = probe("/livez");
                let rd = http_get_at(METRICS, "/readyz");
                during.push((live, rd, metric(IN_ORDER)));
            }
        }
        assert!(
            during
                .iter()
                .all(|(live, rd, _)| *live == Some(200) && rd.as_ref().is_some_and(|r| r.0 == 503)),
            "{during:?}\n{}",
            d.log()
        );
        assert!(during.iter().any(|(_, _, o)| *o == 0.0), "{during:?}");
        assert!(
            during.iter().any(|(_, rd, _)| rd
                .as_ref()
                .is_some_and(|r| r.1.contains("yielding in a fight (fight with pid"))),
            "{during:?}\n{}",
            d.log()
        );
        // Once it stops: in order and ready again (the policy tries again once the writer
        // has been quiet for twice its period).
        assert!(ready(200, Duration::from_secs(10)), "{}", d.log());
        assert!(nft_healthy());
    });
}

// ---------------------------------------------------------------------------------------
// Config handling of a root daemon.
// ---------------------------------------------------------------------------------------

/// The commands of the unit's `ExecReload=` lines, as systemd runs them: in order, each
/// with `$MAINPID` and the config path substituted; the first that fails fails the reload.
fn exec_reload(pid: u32, config: &str) -> Result<(), String> {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/jumpset.service"),
    )
    .unwrap();
    let lines: Vec<String> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecReload="))
        .map(|l| {
            l.replace("$MAINPID", &pid.to_string())
                .replace("/etc/jumpset/jumpset.toml", config)
                .replace("/usr/local/bin/jumpset", bin())
        })
        .collect();
    assert!(lines.len() >= 2, "validate, then the signal: {lines:?}");
    for l in lines {
        let out = sh(&l);
        if !out.status.success() {
            return Err(format!(
                "`{l}` exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

#[test]
fn an_invalid_config_fails_the_reload_and_is_never_signalled() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text = daemon_config("nft", "30s");
        let cfg = config(&text);
        let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        std::fs::write(cfg.path(), "backend = \"nft\"\n[[chain]]\ntable = 7\n").unwrap();
        assert_eq!(
            jumpset(&["validate", "--config", cfg.as_str()]).code,
            2,
            "validate exits 2 on an invalid config"
        );
        let e = exec_reload(d.pid(), cfg.as_str()).expect_err("the reload fails");
        assert!(
            e.contains("validate") && e.contains("exited exit status: 2"),
            "{e}"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !d.log().contains("SIGHUP"),
            "no signal was sent:\n{}",
            d.log()
        );
        // A valid one: validate passes, the signal is sent, the daemon reloads.
        std::fs::write(cfg.path(), &text).unwrap();
        exec_reload(d.pid(), cfg.as_str()).unwrap();
        assert!(
            d.wait_log("SIGHUP: reloaded", Duration::from_secs(5)),
            "{}",
            d.log()
        );
    });
}

#[test]
fn a_configmap_symlink_swap_reloads_within_a_second_without_a_signal() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        // A ConfigMap volume as the kubelet writes it: the files in a timestamped
        // directory, `..data` linking to it, each key a link through `..data`.
        let text = daemon_config("nft", "30s");
        let cfg = config("");
        let dir = cfg.path().parent().unwrap().to_path_buf();
        std::fs::remove_file(cfg.path()).unwrap();
        let version = |name: &str, main: &str, dropin: Option<&str>| {
            let d = dir.join(name);
            std::fs::create_dir_all(d.join("jumpset.d")).unwrap();
            std::fs::write(d.join("jumpset.toml"), main).unwrap();
            if let Some(f) = dropin {
                std::fs::write(d.join("jumpset.d/10-extra.toml"), f).unwrap();
            }
        };
        version("..2024_01", &text, None);
        std::os::unix::fs::symlink("..2024_01", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/jumpset.toml", dir.join("jumpset.toml")).unwrap();
        std::os::unix::fs::symlink("..data/jumpset.d", dir.join("jumpset.d")).unwrap();
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        assert!(nft_healthy());

        // The ConfigMap gains a drop-in with a second jump: the kubelet's swap.
        let extra = "agent = \"extra\"\n[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n  [[chain.jump]]\n  target = \"EXTRA-PREROUTING\"\n  comment = \"extra jump\"\n  after = [\"CNI-HOSTPORT-DNAT\"]\n";
        version("..2024_02", &text, Some(extra));
        std::os::unix::fs::symlink("..2024_02", dir.join("..data_tmp")).unwrap();
        let t = Instant::now();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join("..2024_01")).unwrap();
        let has_extra = || {
            saved_chain("iptables-nft-save", "PREROUTING")
                .iter()
                .any(|l| l.contains("-j EXTRA-PREROUTING"))
        };
        assert!(wait_until(Duration::from_secs(1), has_extra), "{}", d.log());
        figure(&format!(
            "ConfigMap-style symlink swap: the new jump in the kernel {:.0} ms after the swap",
            t.elapsed().as_secs_f64() * 1e3
        ));
        assert!(d.log().contains("config change: reloaded"), "{}", d.log());
        assert!(!d.log().contains("SIGHUP"));

        // A broken version is refused (the old config kept); the next good one is taken.
        version("..2024_03", "this is = = not toml\n", None);
        std::os::unix::fs::symlink("..2024_03", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(
            d.wait_log("config change: ", Duration::from_secs(2))
                && d.wait_log("is invalid, keeping the old config", Duration::from_secs(2)),
            "{}",
            d.log()
        );
        version("..2024_04", &text, None);
        std::os::unix::fs::symlink("..2024_04", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(
            wait_until(Duration::from_secs(1), || d
                .log()
                .matches("config change: reloaded")
                .count()
                == 2),
            "{}",
            d.log()
        );
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
    });
}

#[test]
fn a_taken_metrics_port_is_not_fatal_and_is_served_once_free() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let squatter = std::net::TcpListener::bind(METRICS).unwrap();
        let cfg = config(&daemon_config("nft", "30s"));
        let notify = NotifySocket::bind();
        let mut d = DaemonProc::start(
            &["--config", cfg.as_str()],
            &[("NOTIFY_SOCKET", notify.path())],
        );
        let msgs = notify.until("READY=1", Duration::from_secs(10));
        assert!(
            msgs.last().is_some_and(|m| m.contains("READY=1")),
            "{msgs:?}\n{}",
            d.log()
        );
        assert!(nft_healthy(), "the chain is kept in order without metrics");
        assert!(d.log().contains("cannot listen"), "{}", d.log());
        assert!(
            d.proc.child().try_wait().unwrap().is_none(),
            "still running"
        );
        drop(squatter);
        assert!(
            wait_until(Duration::from_secs(5), || http_get_at(METRICS, "/readyz")
                .is_some_and(|r| r.0 == 200)),
            "{}",
            d.log()
        );
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
    });
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_fifo_or_dev_zero_config_is_refused_without_freezing() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text = daemon_config("nft", "30s");
        let cfg = config("");
        let dir = cfg.path().parent().unwrap().to_path_buf();
        std::fs::write(dir.join("real.toml"), &text).unwrap();
        std::fs::remove_file(cfg.path()).unwrap();
        std::os::unix::fs::symlink("real.toml", cfg.path()).unwrap();
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        let fifo = dir.join("fifo");
        ok(&format!("mkfifo {}", fifo.display()));
        for (target, says) in [
            ("/dev/zero", "is not a regular file (a character device)"),
            (fifo.to_str().unwrap(), "is not a regular file (a FIFO)"),
        ] {
            let tmp = dir.join("link.tmp");
            std::os::unix::fs::symlink(target, &tmp).unwrap();
            std::fs::rename(&tmp, cfg.path()).unwrap();
            d.signal(libc::SIGHUP);
            assert!(
                wait_until(Duration::from_secs(2), || d.log().matches(says).count()
                    >= 1),
                "{target}: {}",
                d.log()
            );
            assert!(d.log().contains("keeping the old config"));
            // Alive, answering, small, and still repairing with the old config.
            assert_eq!(probe("/livez").0, Some(200));
            assert!(
                vm_rss_kib(d.pid()) < 64 * 1024,
                "{} KiB",
                vm_rss_kib(d.pid())
            );
            ok(&format!(
                "iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
            ));
            assert!(
                wait_until(Duration::from_secs(5), nft_healthy),
                "{}",
                d.log()
            );
        }
        let t = Instant::now();
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0), "{}", d.log());
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    });
}

#[test]
fn a_config_writable_by_others_is_refused_and_the_daemon_sets_no_new_privs() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("nft", "30s"));
        ok(&format!("chmod 0666 {}", cfg.as_str()));
        let r = jumpset(&["daemon", "--config", cfg.as_str()]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains("is writable by every user"),
            "{}",
            r.stderr
        );
        ok(&format!("chmod 0644 {}", cfg.as_str()));
        let mut d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        for t in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            assert!(
                status.lines().any(|l| l == "NoNewPrivs:\t1"),
                "a thread without no_new_privs:\n{status}"
            );
        }
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
    });
}

// ---------------------------------------------------------------------------------------
// Node conventions.
// ---------------------------------------------------------------------------------------

#[test]
fn promtool_accepts_a_live_scrape_and_openmetrics_is_served_when_asked_for() {
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let cfg = config(&daemon_config("nft", "30s"));
        let d = DaemonProc::start(&["--config", cfg.as_str()], &[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        // Something in every family of series: a repair, an error, a fight counter.
        ok(&format!(
            "iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"{OVN_COMMENT}\" -j OVN-PREROUTING"
        ));
        assert!(wait_until(Duration::from_secs(5), nft_healthy));
        let (code, head, body) = request("/metrics", "Accept: */*\r\n").unwrap();
        assert_eq!(code, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        for series in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "jumpset_build_info{version=\"",
            "jumpset_reconciles_total{result=\"repaired\"} 2",
        ] {
            assert!(body.contains(series), "{series}:\n{body}");
        }
        let promtool = which("promtool")
            .expect("promtool is needed (apt-get install prometheus); scripts/test.sh installs it");
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{body}"
        );

        // Prometheus asks for OpenMetrics first.
        let (code, head, body) = request(
            "/metrics",
            "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n",
        )
        .unwrap();
        assert_eq!(code, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    });
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}

#[test]
fn journald_priorities_and_json_logs_on_the_raw_output() {
    use std::os::unix::fs::MetadataExt;
    netns(|| {
        lo_up();
        load_broken("iptables-nft-restore");
        let text = daemon_config("nft", "30s");
        let cfg = config(&text);
        // stderr is a pipe whose device and inode are passed as $JOURNAL_STREAM, as
        // systemd does when it connects a service's stderr to the journal.
        let run = |args: &[&str], journal: bool| -> String {
            let (r, w) = pipe();
            let meta = std::fs::metadata(format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                w.as_raw_fd()
            }))
            .unwrap();
            let stream = format!("{}:{}", meta.dev(), meta.ino());
            let env: Vec<(&str, &str)> = if journal {
                vec![("JOURNAL_STREAM", stream.as_str())]
            } else {
                vec![]
            };
            let mut d = spawn_daemon(cfg.as_str(), Stdio::from(w), args, &env);
            let mut reader = std::fs::File::from(r);
            // Ready (INFO), debug records, then an invalid reload (ERROR).
            assert!(wait_until(Duration::from_secs(10), nft_healthy));
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(cfg.path(), "nonsense = = =\n").unwrap();
            d.signal(libc::SIGHUP);
            std::thread::sleep(Duration::from_millis(500));
            std::fs::write(cfg.path(), &text).unwrap();
            d.signal(libc::SIGTERM);
            assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
            let mut out = String::new();
            reader.read_to_string(&mut out).unwrap();
            out
        };
        let raw = run(&[], true);
        let lines: Vec<&str> = raw.lines().collect();
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with('<') && l.as_bytes().get(2) == Some(&b'>')),
            "{raw}"
        );
        let ready = lines.iter().find(|l| l.contains("ready: ")).unwrap();
        assert!(ready.starts_with("<6>"), "{ready}");
        let refused = lines
            .iter()
            .find(|l| l.contains("keeping the old config"))
            .unwrap();
        assert!(refused.starts_with("<3>"), "{refused}");
        let debug = lines.iter().find(|l| l.contains("DEBUG")).unwrap();
        assert!(debug.starts_with("<7>"), "{debug}");
        // Without $JOURNAL_STREAM (a terminal, a file): no prefixes.
        let plain = run(&[], false);
        assert!(plain.lines().all(|l| !l.starts_with('<')), "{plain}");
        // JSON: one object per line.
        let json = run(&["--log-format", "json"], true);
        for l in json.lines() {
            let (prio, obj) = l.split_at(3);
            let v: serde_json::Value =
                serde_json::from_str(obj).unwrap_or_else(|e| panic!("{e}: {l}"));
            let level = v["level"].as_str().unwrap();
            let want = match level {
                "ERROR" => "<3>",
                "WARN" => "<4>",
                "INFO" => "<6>",
                _ => "<7>",
            };
            assert_eq!(prio, want, "{l}");
        }
        assert!(json.contains("\"message\":\"ready: "), "{json}");
    });
}
