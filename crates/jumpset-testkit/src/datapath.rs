//! The data path of a node, in three network namespaces: a **client**, the **node** (the
//! namespace of the thread that builds it: a test's fresh namespace, or the demo's) and a
//! **pod**, over two veth pairs. The node forwards between them; its nat PREROUTING is
//! where the agents' chains do what they do on a real node:
//!
//! - kube-proxy: `KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` DNATs a Service VIP
//!   ([`VIP_PORT`]) to the pod ([`POD_PORT`]);
//! - the CNI portmap plugin: `CNI-HOSTPORT-DNAT` → `CNI-DN-…` DNATs a hostPort
//!   ([`HOST_PORT`] on the node's address) to the pod;
//! - Calico (`cali-PREROUTING`) and Kube-OVN (`OVN-PREROUTING`): one counting rule each
//!   (no target), so their packet counters tell how many times each chain ran.
//!
//! nat PREROUTING sees the first packet of each new connection only, so a counting rule's
//! packet counter rises by exactly one per new TCP connection when its chain is jumped to
//! once, by two when jumped to twice. A [`Server`] in the pod answers every connection
//! with [`BANNER`]; a client [`attempt`] succeeds only when it reads it, and a [`Stream`]
//! opens new connections at a steady rate and records each [`Attempt`].
//!
//! Addresses are from the documentation ranges (RFC 5737, RFC 3849): nothing here is
//! routed anywhere but between these namespaces. The client and pod namespaces belong to
//! the [`DataPath`] alone and go away with it (and the veth pairs with them).
//!
//! The agents' rules are given here twice: as iptables-restore text ([`agent_rules`]) for
//! the tests, whose agents are the real iptables binaries, and encoded by jumpset's own
//! codec ([`agent_scene`]) for the demo, which runs no program. A test checks that the
//! kernel holds the same expressions either way.

use crate::netns::{Netns, NsThread};
use crate::rtnl::Rtnl;
use jumpset::backend::nft::codec::{scene, Expr, NewRule, Position};
use jumpset::backend::nft::SceneOp;
use jumpset::snapshot::Family;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The port the pod's server listens on.
pub const POD_PORT: u16 = 8080;
/// The Service's port on its VIP.
pub const VIP_PORT: u16 = 80;
/// The hostPort on the node's address.
pub const HOST_PORT: u16 = 30080;
/// What the pod's server writes on every connection.
pub const BANNER: &[u8] = b"hello from the pod\n";

/// kube-proxy's service chain.
pub const KUBE_SVC: &str = "KUBE-SVC-DATAPATH0000WEB0";
/// kube-proxy's endpoint chain (the DNAT).
pub const KUBE_SEP: &str = "KUBE-SEP-DATAPATH0000POD0";
/// portmap's per-container chain (the DNAT).
pub const CNI_DN: &str = "CNI-DN-datapath00000pod0";
/// The comment of the counting rule in `cali-PREROUTING`.
pub const CALI_COUNT: &str = "datapath: Calico's chain ran";
/// The comment of the counting rule in `OVN-PREROUTING`.
pub const OVN_COUNT: &str = "datapath: Kube-OVN's chain ran";

/// The addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// The client's address.
    pub client: IpAddr,
    /// The node's address on the client's link (the hostPort's address, the client's
    /// gateway).
    pub node: IpAddr,
    /// The node's address on the pod's link (the pod's gateway).
    pub node_pod_side: IpAddr,
    /// The pod's address.
    pub pod: IpAddr,
    /// The Service VIP (not on any interface: only kube-proxy's DNAT makes it reachable).
    pub vip: IpAddr,
    /// The prefix length of both links.
    pub prefix: u8,
}

/// The addresses of `family`: 198.51.100.0/24 and 2001:db8:1::/64 on the client's link,
/// 203.0.113.0/24 and 2001:db8:2::/64 on the pod's, the VIP 192.0.2.10 or 2001:db8:96::10.
pub fn addrs(family: Family) -> Addrs {
    match family {
        Family::Ip => Addrs {
            client: Ipv4Addr::new(198, 51, 100, 2).into(),
            node: Ipv4Addr::new(198, 51, 100, 1).into(),
            node_pod_side: Ipv4Addr::new(203, 0, 113, 1).into(),
            pod: Ipv4Addr::new(203, 0, 113, 2).into(),
            vip: Ipv4Addr::new(192, 0, 2, 10).into(),
            prefix: 24,
        },
        Family::Ip6 => {
            let a = |net: u16, host: u16| -> IpAddr {
                Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host).into()
            };
            Addrs {
                client: a(1, 2),
                node: a(1, 1),
                node_pod_side: a(2, 1),
                pod: a(2, 2),
                vip: a(0x96, 0x10),
                prefix: 64,
            }
        }
    }
}

/// The Service VIP and port of `family`.
pub fn vip(family: Family) -> SocketAddr {
    SocketAddr::new(addrs(family).vip, VIP_PORT)
}

/// The hostPort of `family` (on the node's address).
pub fn host_port(family: Family) -> SocketAddr {
    SocketAddr::new(addrs(family).node, HOST_PORT)
}

/// The pod's server, addressed directly (no NAT on the way).
pub fn pod(family: Family) -> SocketAddr {
    SocketAddr::new(addrs(family).pod, POD_PORT)
}

fn bracket(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The agents' chains of `family` as iptables-restore input for `--noflush` (the chains
/// are declared, so they are emptied first): kube-proxy's Service, portmap's hostPort,
/// and the counting rules of Calico and Kube-OVN. Not nat PREROUTING itself: its jumps
/// are the scenario's (harvester-broken.rules or -healthy.rules).
pub fn agent_rules(family: Family) -> String {
    let a = addrs(family);
    let host = if family == Family::Ip { 32 } else { 128 };
    let pod = format!("{}:{POD_PORT}", bracket(a.pod));
    let vip = a.vip;
    format!(
        "*nat
:cali-PREROUTING - [0:0]
:OVN-PREROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:{KUBE_SVC} - [0:0]
:{KUBE_SEP} - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:{CNI_DN} - [0:0]
-A cali-PREROUTING -p tcp -m comment --comment \"{CALI_COUNT}\"
-A OVN-PREROUTING -p tcp -m comment --comment \"{OVN_COUNT}\"
-A KUBE-SERVICES -d {vip}/{host} -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport {VIP_PORT} -j {KUBE_SVC}
-A {KUBE_SVC} -m comment --comment \"default/web:http -> {pod}\" -j {KUBE_SEP}
-A {KUBE_SEP} -p tcp -m comment --comment \"default/web:http\" -j DNAT --to-destination {pod}
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"datapath\\\"\" -m tcp --dport {HOST_PORT} -j {CNI_DN}
-A {CNI_DN} -p tcp -m tcp --dport {HOST_PORT} -j DNAT --to-destination {pod}
COMMIT
"
    )
}

/// The user chains of [`agent_rules`], in the order it declares them.
pub const AGENT_CHAINS: [&str; 7] = [
    "cali-PREROUTING",
    "OVN-PREROUTING",
    "KUBE-SERVICES",
    KUBE_SVC,
    KUBE_SEP,
    "CNI-HOSTPORT-DNAT",
    CNI_DN,
];

/// The same rules as [`agent_rules`], encoded by jumpset's codec expression for
/// expression as iptables-nft writes them, to be written with
/// [`NftBackend::write_scene`](jumpset::backend::nft::NftBackend::write_scene) (the demo
/// runs no iptables). Appended to their chains, in order.
pub fn agent_scene(family: Family) -> Vec<SceneOp> {
    let a = addrs(family);
    let counter = || Expr::Counter {
        bytes: 0,
        packets: 0,
    };
    let comment = scene::comment;
    let jump = scene::jump;
    let pod = format!("{}:{POD_PORT}", bracket(a.pod));
    let dnat = scene::dnat_target(a.pod, POD_PORT);
    let tcp = scene::match_tcp();
    let rules: Vec<(&str, Vec<Expr>)> = vec![
        (
            "cali-PREROUTING",
            [&tcp[..], &[comment(CALI_COUNT), counter()]].concat(),
        ),
        (
            "OVN-PREROUTING",
            [&tcp[..], &[comment(OVN_COUNT), counter()]].concat(),
        ),
        (
            "KUBE-SERVICES",
            [
                &tcp[..],
                &scene::match_daddr(a.vip),
                &[comment("default/web:http cluster IP")],
                &scene::match_dport(VIP_PORT),
                &[counter(), jump(KUBE_SVC)],
            ]
            .concat(),
        ),
        (
            KUBE_SVC,
            vec![
                comment(&format!("default/web:http -> {pod}")),
                counter(),
                jump(KUBE_SEP),
            ],
        ),
        (
            KUBE_SEP,
            [
                &tcp[..],
                &[comment("default/web:http"), counter(), dnat.clone()],
            ]
            .concat(),
        ),
        (
            "CNI-HOSTPORT-DNAT",
            [
                &tcp[..],
                &[comment("dnat name: \"cbr0\" id: \"datapath\"")],
                &scene::match_dport(HOST_PORT),
                &[counter(), jump(CNI_DN)],
            ]
            .concat(),
        ),
        (
            CNI_DN,
            [&tcp[..], &scene::match_dport(HOST_PORT), &[counter(), dnat]].concat(),
        ),
    ];
    rules
        .into_iter()
        .map(|(chain, exprs)| SceneOp::Add {
            chain: chain.to_string(),
            rule: NewRule {
                exprs,
                userdata: None,
                compat: true,
            },
            at: Position::Append,
        })
        .collect()
}

/// Write a sysctl of the calling thread's network namespace (`/proc/sys/net/...`).
fn sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value} to /proc/sys/{path}: {e}"),
        )
    })
}

/// In the calling thread's namespace: loopback up, no duplicate address detection on new
/// IPv6 links (the addresses are usable at once).
fn prepare_ns() -> io::Result<()> {
    Rtnl::open()?.set_up("lo")?;
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        sysctl("net/ipv6/conf/default/accept_dad", "0")?;
    }
    Ok(())
}

/// One end of a link: its name, its addresses (v4, v6) and the gateway it routes
/// everything else through (none on the node).
fn configure(
    rt: &mut Rtnl,
    dev: &str,
    addrs: [(IpAddr, u8); 2],
    gateways: Option<[IpAddr; 2]>,
) -> io::Result<()> {
    for (a, p) in addrs {
        rt.add_address(dev, a, p)?;
    }
    rt.set_up(dev)?;
    for g in gateways.into_iter().flatten() {
        rt.add_default_route(g)?;
    }
    Ok(())
}

/// How one connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Connected and read the pod's banner: the connection reached the pod.
    Ok,
    /// Reset (nothing listens where the packet went).
    Refused,
    /// An ICMP error came back (no route where the packet went).
    Unreachable,
    /// No answer within the attempt's timeout.
    Timeout,
    /// Connected, but what answered was not the pod.
    NotThePod,
    /// Any other error (the errno).
    Other(i32),
}

impl Outcome {
    /// The name used in figures and reports.
    pub fn name(self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Refused => "refused".into(),
            Outcome::Unreachable => "unreachable".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::NotThePod => "not the pod".into(),
            Outcome::Other(e) => format!("error {e}"),
        }
    }
}

/// One connection attempt, from the client's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Where it went.
    pub target: SocketAddr,
    /// When it started.
    pub at: Instant,
    /// How long it took.
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// How many times the client's kernel sent the SYN again before the connection was
    /// up (`tcpi_total_retrans` right after the connect; 0 when it failed). A SYN sent
    /// again after the first was dropped before conntrack confirmed its entry is a new
    /// connection to the NAT table, and runs the nat chains once more.
    pub syn_retransmits: u32,
}

/// Open one new TCP connection to `target` from the calling thread's namespace and read
/// the pod's banner, within `timeout` for the connect and again for the read.
pub fn attempt(target: SocketAddr, timeout: Duration) -> Attempt {
    let at = Instant::now();
    let mut syn_retransmits = 0;
    let outcome = match TcpStream::connect_timeout(&target, timeout) {
        Ok(mut s) => {
            syn_retransmits = total_retrans(&s);
            let _ = s.set_read_timeout(Some(timeout));
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.len() >= BANNER.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if got.starts_with(BANNER) {
                Outcome::Ok
            } else {
                Outcome::NotThePod
            }
        }
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Outcome::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Outcome::Unreachable
            }
            _ => Outcome::Other(e.raw_os_error().unwrap_or(0)),
        },
    };
    Attempt {
        target,
        at,
        took: at.elapsed(),
        outcome,
        syn_retransmits,
    }
}

/// `tcpi_total_retrans` of a connected socket (0 if `TCP_INFO` cannot be read).
fn total_retrans(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `tcp_info` is a valid value of the plain-integer struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is the open socket `s` borrows; `info` and `len` are valid for
    // writes of `len` bytes, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        info.tcpi_total_retrans
    } else {
        0
    }
}

/// The pod's server: answers every connection with [`BANNER`] and closes it.
pub struct Server {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<NsThread<()>>,
}

impl Server {
    /// Listen on [`POD_PORT`] (IPv6 and IPv4) inside `ns`.
    pub fn start(ns: &Netns) -> io::Result<Server> {
        let listener = ns.run(|| {
            TcpListener::bind(("::", POD_PORT))
                .or_else(|_| TcpListener::bind(("0.0.0.0", POD_PORT)))
        })??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let thread = ns.spawn("datapath-pod", move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        n.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = conn.write_all(BANNER);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })?;
        Ok(Server {
            stop,
            served,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// The three namespaces, their links and the pod's server.
pub struct DataPath {
    /// The node: the namespace of the thread that built it.
    pub node: Netns,
    /// The client's namespace (the DataPath's own).
    pub client: Netns,
    /// The pod's namespace (the DataPath's own).
    pub pod: Netns,
    server: Server,
}

impl DataPath {
    /// Build it around the calling thread's namespace, which becomes the node (it must
    /// be a throwaway one: links, addresses and forwarding are set there). Checks that the
    /// client reaches the pod directly, in both families, before returning. Needs
    /// CAP_SYS_ADMIN and CAP_NET_ADMIN.
    pub fn build() -> io::Result<DataPath> {
        let node = Netns::current()?;
        let client = Netns::new()?;
        let pod = Netns::new()?;
        prepare_ns()?;
        client.run(prepare_ns)??;
        pod.run(prepare_ns)??;
        sysctl("net/ipv4/ip_forward", "1")?;
        sysctl("net/ipv6/conf/all/forwarding", "1")?;

        let (v4, v6) = (addrs(Family::Ip), addrs(Family::Ip6));
        let mut rt = Rtnl::open()?;
        rt.add_veth("to-client", "eth0", &client)?;
        rt.add_veth("to-pod", "eth0", &pod)?;
        configure(
            &mut rt,
            "to-client",
            [(v4.node, v4.prefix), (v6.node, v6.prefix)],
            None,
        )?;
        configure(
            &mut rt,
            "to-pod",
            [(v4.node_pod_side, v4.prefix), (v6.node_pod_side, v6.prefix)],
            None,
        )?;
        client.run(|| {
            configure(
                &mut Rtnl::open()?,
                "eth0",
                [(v4.client, v4.prefix), (v6.client, v6.prefix)],
                Some([v4.node, v6.node]),
            )
        })??;
        pod.run(|| {
            configure(
                &mut Rtnl::open()?,
                "eth0",
                [(v4.pod, v4.prefix), (v6.pod, v6.prefix)],
                Some([v4.node_pod_side, v6.node_pod_side]),
            )
        })??;
        let server = Server::start(&pod)?;
        let dp = DataPath {
            node,
            client,
            pod,
            server,
        };
        for family in [Family::Ip, Family::Ip6] {
            let a = dp.connect(self::pod(family), Duration::from_secs(2))?;
            if a.outcome != Outcome::Ok {
                return Err(io::Error::other(format!(
                    "the data path does not work: client -> pod {}: {}",
                    a.target,
                    a.outcome.name()
                )));
            }
        }
        Ok(dp)
    }

    /// Connections the pod's server accepted so far.
    pub fn served(&self) -> u64 {
        self.server.served()
    }

    /// One new connection from the client to `target`.
    pub fn connect(&self, target: SocketAddr, timeout: Duration) -> io::Result<Attempt> {
        self.client.run(|| attempt(target, timeout))
    }

    /// `n` new connections from the client to `target`, one after the other, each
    /// started `interval` after the previous one started (or at once when it took longer).
    pub fn connect_n(
        &self,
        target: SocketAddr,
        n: usize,
        interval: Duration,
        timeout: Duration,
    ) -> io::Result<Vec<Attempt>> {
        self.client.run(|| {
            let t0 = Instant::now();
            (0..n)
                .map(|i| {
                    if let Some(w) =
                        (t0 + interval * i as u32).checked_duration_since(Instant::now())
                    {
                        std::thread::sleep(w);
                    }
                    attempt(target, timeout)
                })
                .collect()
        })
    }

    /// `n` new connections from the client to `target` at the same time (for attempts
    /// expected to time out: they take one timeout in all).
    pub fn connect_parallel(
        &self,
        target: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> io::Result<Vec<Attempt>> {
        self.client.run(|| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..n)
                    .map(|_| s.spawn(move || attempt(target, timeout)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("an attempt panicked"))
                    .collect()
            })
        })
    }

    /// Start a steady stream of new connections from the client: every `interval`, one to
    /// each of `targets` (spread over the interval), each on its own thread so that a
    /// timeout does not hold up the next.
    pub fn stream(
        &self,
        targets: &[SocketAddr],
        interval: Duration,
        timeout: Duration,
    ) -> io::Result<Stream> {
        Stream::start(&self.client, targets.to_vec(), interval, timeout)
    }
}

/// A steady stream of new connections (see [`DataPath::stream`]).
pub struct Stream {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<NsThread<()>>,
}

impl Stream {
    fn start(
        ns: &Netns,
        targets: Vec<SocketAddr>,
        interval: Duration,
        timeout: Duration,
    ) -> io::Result<Stream> {
        if targets.is_empty() {
            return Err(io::Error::other("a stream needs at least one target"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = ns.spawn("datapath-client", move || {
            let step = interval / targets.len().max(1) as u32;
            let t0 = Instant::now();
            let mut running = Vec::new();
            let mut slot = 0u32;
            while !s.load(Ordering::SeqCst) {
                let target = targets[slot as usize % targets.len()];
                if let Some(w) = (t0 + step * slot).checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let l = l.clone();
                // Threads inherit the namespace of the thread that starts them.
                running.push(std::thread::spawn(move || {
                    let a = attempt(target, timeout);
                    l.lock().unwrap_or_else(|e| e.into_inner()).push(a);
                }));
                running.retain(|t: &std::thread::JoinHandle<()>| !t.is_finished());
                slot += 1;
            }
            for t in running {
                let _ = t.join();
            }
        })?;
        Ok(Stream {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// The attempts that have ended so far, in the order they ended.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop starting new attempts, wait for those under way; every attempt, by start time.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.halt();
        let mut all = self.attempts();
        all.sort_by_key(|a| a.at);
        all
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Outcomes counted: how many attempts ended each way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Attempts counted.
    pub attempts: usize,
    /// Those that reached the pod.
    pub ok: usize,
    /// The others, by outcome.
    pub failed: std::collections::BTreeMap<Outcome, usize>,
}

impl Tally {
    /// Count `attempts`.
    pub fn of<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> Tally {
        let mut t = Tally::default();
        for a in attempts {
            t.attempts += 1;
            if a.outcome == Outcome::Ok {
                t.ok += 1;
            } else {
                *t.failed.entry(a.outcome).or_default() += 1;
            }
        }
        t
    }

    /// Attempts that did not reach the pod.
    pub fn failures(&self) -> usize {
        self.attempts - self.ok
    }

    /// `ok/attempts ok` plus the failures by kind, e.g. `38/40 ok (2 refused)`.
    pub fn text(&self) -> String {
        let mut s = format!("{}/{} ok", self.ok, self.attempts);
        if !self.failed.is_empty() {
            let parts: Vec<String> = self
                .failed
                .iter()
                .map(|(o, n)| format!("{n} {}", o.name()))
                .collect();
            s.push_str(&format!(" ({})", parts.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_rules_name_every_chain_they_use_and_dnat_to_the_pod() {
        for family in [Family::Ip, Family::Ip6] {
            let text = agent_rules(family);
            let declared: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            for l in text.lines().filter(|l| l.starts_with("-A ")) {
                let chain = l.split_whitespace().nth(1).unwrap();
                assert!(declared.contains(&chain), "{chain} undeclared: {l}");
                if let Some(t) = l.split(" -j ").nth(1) {
                    let t = t.split_whitespace().next().unwrap();
                    assert!(t == "DNAT" || declared.contains(&t), "{t}: {l}");
                }
            }
            let to = format!("--to-destination {}:{POD_PORT}", bracket(addrs(family).pod));
            assert_eq!(text.matches(&to).count(), 2, "{text}");
        }
    }

    #[test]
    fn tally_counts_failures_by_kind() {
        let at = Instant::now();
        let a = |outcome| Attempt {
            target: vip(Family::Ip),
            at,
            took: Duration::ZERO,
            syn_retransmits: 0,
            outcome,
        };
        let t = Tally::of(&[
            a(Outcome::Ok),
            a(Outcome::Refused),
            a(Outcome::Refused),
            a(Outcome::Timeout),
        ]);
        assert_eq!(t.failures(), 3);
        assert_eq!(t.text(), "1/4 ok (2 refused, 1 timeout)");
    }
}
