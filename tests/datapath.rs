//! Packets through the node (issue 18): client, node and pod namespaces over veth
//! (crates/jumpset-testkit/src/datapath.rs), the agents' chains in the node's nat table
//! written by the real iptables binaries (kube-proxy's Service DNAT, portmap's hostPort
//! DNAT, a counting rule in Calico's and in Kube-OVN's chain), a server in the pod, new TCP
//! connections from the client. Each test builds its own three namespaces.
//!
//! The oracles: the client's outcome (a connection counts as reaching the pod only when
//! it read the pod's banner), the server's count of accepted connections, and the rules'
//! packet counters as `iptables -L -v -x` prints them. nat PREROUTING sees the first
//! packet of each new connection only, so a counting rule's counter rises once per new
//! connection each time its chain is jumped to.

mod support;

use jumpset::backend::nft::{codec, NftBackend};
use jumpset::snapshot::Family;
use jumpset_testkit::datapath::{self, Attempt, DataPath, Outcome, Tally};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

/// Connections per batch, and the gap between two of them (50 new connections a second).
const N: usize = 12;
const GAP: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(1);

const KUBE_JUMP: &str = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";

/// The iptables binaries of one backend and family.
struct Ipt {
    backend: &'static str,
    family: Family,
}

impl Ipt {
    fn bin(&self, suffix: &str) -> String {
        format!("{}-{}{suffix}", self.family.iptables(), self.backend)
    }

    /// Packet counters of every rule of `chain`, in order (`iptables -L -v -x -n`).
    fn packets(&self, chain: &str) -> Vec<u64> {
        ok(&format!("{} -w -t nat -L {chain} -v -x -n", self.bin("")))
            .lines()
            .skip(2)
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("no packet count in {l:?}"))
            })
            .collect()
    }

    /// The counters the tests follow: Calico's and Kube-OVN's counting rules, kube-proxy's
    /// and portmap's DNAT rules.
    fn counters(&self) -> Counters {
        let first = |chain: &str| self.packets(chain)[0];
        Counters {
            cali: first("cali-PREROUTING"),
            ovn: first("OVN-PREROUTING"),
            kube_dnat: first(datapath::KUBE_SEP),
            hostport_dnat: first(datapath::CNI_DN),
        }
    }

    fn prerouting(&self) -> Vec<String> {
        saved_chain(&self.bin("-save"), "PREROUTING")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    cali: u64,
    ovn: u64,
    kube_dnat: u64,
    hostport_dnat: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            cali: self.cali - o.cali,
            ovn: self.ovn - o.ovn,
            kube_dnat: self.kube_dnat - o.kube_dnat,
            hostport_dnat: self.hostport_dnat - o.hostport_dnat,
        }
    }
}

/// `N` new connections to `target`; what they did and how the counters rose meanwhile.
fn batch(dp: &DataPath, ipt: &Ipt, target: SocketAddr) -> (Vec<Attempt>, Counters, u64) {
    let before = ipt.counters();
    let served = dp.served();
    let attempts = dp.connect_n(target, N, GAP, TIMEOUT).unwrap();
    let ok = attempts.iter().filter(|a| a.outcome == Outcome::Ok).count() as u64;
    assert_eq!(
        dp.served() - served,
        ok,
        "the pod's count of connections differs from the client's"
    );
    let retrans = attempts.iter().map(|a| u64::from(a.syn_retransmits)).sum();
    (attempts, ipt.counters() - before, retrans)
}

/// How many times a batch of `N` connections went through the NAT table, as its DNAT
/// rule (`dnat`) counted them: once per connection, plus at most once for each SYN the
/// client sent again (`retrans`: a SYN dropped before conntrack confirmed its entry
/// leaves none, so the next one is new to the NAT table too — rare, under load).
fn nat_passes(what: &str, dnat: u64, retrans: u64) -> u64 {
    let n = N as u64;
    assert!(
        (n..=n + retrans).contains(&dnat),
        "{what}: the DNAT ran {dnat} times for {n} connections ({retrans} SYN(s) sent again)"
    );
    dnat
}

fn all_ok(what: &str, attempts: &[Attempt]) {
    let t = Tally::of(attempts);
    assert_eq!(t.ok, attempts.len(), "{what}: {}", t.text());
}

/// The seed repair, seen by packets: on the broken chain connections work but Kube-OVN's
/// chain runs twice (Service) or three times (hostPort) per connection; with kube-proxy's
/// jump gone the Service is dead; after `jumpset apply` every connection reaches the pod
/// and every agent's chain runs exactly once per connection.
fn seed_repair_by_packets(backend: &'static str, family: Family) {
    netns(|| {
        let dp = DataPath::build().expect("the data path builds");
        let ipt = Ipt { backend, family };
        ok(&format!(
            "{} -w < {}",
            ipt.bin("-restore"),
            fixture("harvester-broken.rules").display()
        ));
        ok_stdin(
            &format!("{} -w --noflush", ipt.bin("-restore")),
            &datapath::agent_rules(family),
        );
        let broken = fixture_chain("harvester-broken.rules", "PREROUTING");
        assert_eq!(ipt.prerouting(), broken);
        let (vip, hostport) = (datapath::vip(family), datapath::host_port(family));

        // Before the repair: Kube-OVN's three jumps. A Service connection passes two of
        // them before kube-proxy's DNAT, a hostPort connection all three.
        let (a, c, r) = batch(&dp, &ipt, vip);
        all_ok("Service, broken chain", &a);
        let p = nat_passes("Service, broken chain", c.kube_dnat, r);
        assert_eq!(
            (c.cali, c.ovn, c.kube_dnat),
            (p, 2 * p, p),
            "Service, broken chain: {c:?}"
        );
        let (a, c, r) = batch(&dp, &ipt, hostport);
        all_ok("hostPort, broken chain", &a);
        let p = nat_passes("hostPort, broken chain", c.hostport_dnat, r);
        assert_eq!(
            (c.cali, c.ovn, c.hostport_dnat),
            (p, 3 * p, p),
            "hostPort, broken chain: {c:?}"
        );

        // What Kube-OVN's delete-by-index did on the node: kube-proxy's jump gone. Every
        // Service connection fails; the hostPort still works.
        ok(&format!(
            "{} -w -t nat -D PREROUTING {KUBE_JUMP}",
            ipt.bin("")
        ));
        let before = ipt.counters();
        let dead = dp.connect_parallel(vip, 4, TIMEOUT).unwrap();
        let t = Tally::of(&dead);
        eprintln!(
            "{backend} {family}: Service without kube-proxy's jump: {}",
            t.text()
        );
        assert_eq!(t.ok, 0, "Service without kube-proxy's jump: {}", t.text());
        assert_eq!((ipt.counters() - before).kube_dnat, 0);
        let (a, _, _) = batch(&dp, &ipt, hostport);
        all_ok("hostPort without kube-proxy's jump", &a);
        // kube-proxy puts it back where it was: the seed chain again.
        ok(&format!(
            "{} -w -t nat -I PREROUTING 4 {KUBE_JUMP}",
            ipt.bin("")
        ));
        assert_eq!(ipt.prerouting(), broken);

        // The repair.
        let cfg = config(&harvester_config());
        let run = jumpset(&[
            "apply",
            "--config",
            cfg.as_str(),
            "--backend",
            backend,
            "--family",
            family.name(),
        ]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(
            ipt.prerouting(),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );

        // After it: every connection reaches the pod, every agent's chain runs once.
        let (a, c, r) = batch(&dp, &ipt, vip);
        all_ok("Service, repaired chain", &a);
        let p = nat_passes("Service, repaired chain", c.kube_dnat, r);
        assert_eq!(
            c,
            Counters {
                cali: p,
                ovn: p,
                kube_dnat: p,
                hostport_dnat: 0
            },
            "Service, repaired chain"
        );
        let (a, c, r) = batch(&dp, &ipt, hostport);
        all_ok("hostPort, repaired chain", &a);
        let p = nat_passes("hostPort, repaired chain", c.hostport_dnat, r);
        assert_eq!(
            c,
            Counters {
                cali: p,
                ovn: p,
                kube_dnat: 0,
                hostport_dnat: p
            },
            "hostPort, repaired chain"
        );
    });
}

#[test]
fn nft_ip_seed_repair_by_packets() {
    seed_repair_by_packets("nft", Family::Ip);
}

#[test]
fn nft_ip6_seed_repair_by_packets() {
    seed_repair_by_packets("nft", Family::Ip6);
}

#[test]
fn legacy_ip_seed_repair_by_packets() {
    seed_repair_by_packets("legacy", Family::Ip);
}

#[test]
fn legacy_ip6_seed_repair_by_packets() {
    seed_repair_by_packets("legacy", Family::Ip6);
}

#[test]
fn the_fixture_leaves_nothing_behind() {
    // The client's and the pod's namespaces, their veth pairs and the server go away
    // with the DataPath; the node's namespace keeps only its loopback.
    netns(|| {
        let before = ok("ip -o link show | wc -l");
        {
            let dp = DataPath::build().expect("the data path builds");
            let a = dp.connect(datapath::pod(Family::Ip), TIMEOUT).unwrap();
            assert_eq!(a.outcome, Outcome::Ok);
            assert_eq!(
                ok("ip -o link show | grep -c -e to-client -e to-pod").trim(),
                "2"
            );
        }
        assert!(
            wait_until(Duration::from_secs(5), || ok("ip -o link show | wc -l")
                == before),
            "{}",
            ok("ip -o link show")
        );
    });
}

/// The `-A` lines and user chain declarations of `iptables-nft-save -t nat` (or
/// ip6tables), without comment lines.
fn saved_rules(family: Family) -> Vec<String> {
    ok(&format!("{}-nft-save -t nat", family.iptables()))
        .lines()
        .filter(|l| l.starts_with("-A ") || (l.starts_with(':') && l.ends_with(" - [0:0]")))
        .map(str::to_string)
        .collect()
}

/// Every rule's expressions in the agents' chains, as the kernel dumps them.
fn dumped_exprs(family: Family) -> Vec<(String, Vec<Vec<codec::Expr>>)> {
    let mut nft = NftBackend::open().unwrap();
    datapath::AGENT_CHAINS
        .iter()
        .map(|chain| {
            let rules = nft
                .dump_raw(family, "nat", chain)
                .unwrap()
                .iter()
                .flat_map(|d| codec::parse(d).unwrap())
                .filter_map(|m| match m.body {
                    codec::Body::NewRule(r) => Some(
                        r.exprs()
                            .map(|e| codec::Expr::from(e.expect("an expression")))
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .collect();
            (chain.to_string(), rules)
        })
        .collect()
}

#[test]
fn jumpset_writes_the_agents_rules_as_iptables_nft_does() {
    // The demo plays kube-proxy, portmap, Calico and Kube-OVN through jumpset's codec
    // (it runs no iptables): the kernel must hold the same expressions, and iptables-nft
    // must read back the same rules, as when iptables-nft-restore writes them.
    for family in [Family::Ip, Family::Ip6] {
        let by_iptables = netns(|| {
            ok_stdin(
                &format!("{}-nft-restore --noflush", family.iptables()),
                &datapath::agent_rules(family),
            );
            (saved_rules(family), dumped_exprs(family))
        });
        let by_jumpset = netns(|| {
            let mut nft = NftBackend::open().unwrap();
            nft.load(family, "nat", "PREROUTING", &[], &[]).unwrap();
            nft.write_scene(
                family,
                "nat",
                &datapath::AGENT_CHAINS,
                &datapath::agent_scene(family),
            )
            .unwrap();
            (saved_rules(family), dumped_exprs(family))
        });
        assert_eq!(by_jumpset.0, by_iptables.0, "{family}: iptables-nft-save");
        assert_eq!(
            by_jumpset.1, by_iptables.1,
            "{family}: the kernel's expressions"
        );
        assert_eq!(
            by_iptables
                .0
                .iter()
                .filter(|l| l.starts_with("-A "))
                .count(),
            7,
            "{:#?}",
            by_iptables.0
        );
    }
}

#[test]
fn the_demo_shows_the_packets_and_runs_no_program() {
    // `jumpset demo` builds the data path through rtnetlink and writes the agents' rules
    // through jumpset's codec: no program is executed (strace sees one execve, jumpset
    // itself), and its caller's namespace keeps its links, forwarding and rules.
    if sh("command -v strace").status.code() != Some(0) {
        panic!("strace is needed for this test (apt-get install strace)");
    }
    netns(|| {
        let state = || {
            (
                ok("ip -o link show"),
                ok("cat /proc/sys/net/ipv4/ip_forward"),
                ok("nft list ruleset"),
            )
        };
        let before = state();
        let trace = format!(
            "{}/strace-demo-{}.txt",
            env!("CARGO_TARGET_TMPDIR"),
            std::process::id()
        );
        let out = sh(&format!(
            "strace -f -qq -e trace=execve -o {trace} {} demo",
            bin()
        ));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = std::fs::read_to_string(&trace).unwrap();
        let _ = std::fs::remove_file(&trace);
        let execs: Vec<&str> = t.lines().filter(|l| l.contains("execve(")).collect();
        assert_eq!(execs.len(), 1, "only jumpset itself: {execs:#?}");

        // Before the repair: Kube-OVN's chain twice per Service connection, three times
        // per hostPort connection; the Service dead without kube-proxy's jump.
        let (pre, post) = stdout
            .split_once("Packets through the repaired chain")
            .unwrap_or_else(|| panic!("no packets after the repair:\n{stdout}"));
        let svc = format!("Service  {:<22}", datapath::vip(Family::Ip).to_string());
        let hp = format!(
            "hostPort {:<22}",
            datapath::host_port(Family::Ip).to_string()
        );
        let has = |text: &str, start: &str, rest: &str| {
            text.lines()
                .any(|l| l.trim_start().starts_with(start) && l.contains(rest))
        };
        assert!(
            has(
                pre,
                &svc,
                "10/10 reached the pod   Calico's chain ran 1×, Kube-OVN's 2×"
            ),
            "{stdout}"
        );
        assert!(
            has(
                pre,
                &hp,
                "10/10 reached the pod   Calico's chain ran 1×, Kube-OVN's 3×"
            ),
            "{stdout}"
        );
        assert!(has(pre, &svc, "0/3 reached the pod"), "{stdout}");
        // After it: every connection, each chain once.
        assert!(
            has(
                post,
                &svc,
                "10/10 reached the pod   Calico's chain ran 1×, Kube-OVN's 1×"
            ),
            "{stdout}"
        );
        assert!(
            has(
                post,
                &hp,
                "10/10 reached the pod   Calico's chain ran 1×, Kube-OVN's 1×"
            ),
            "{stdout}"
        );
        assert_eq!(state(), before, "the demo changed its caller's namespace");
    });
}
