//! The kube-proxy-style nat table of the benchmarks (`kube-proxy-scale.py` in this crate).

use std::fmt::Write as _;

/// The owned jump's line in the generated table (Kube-OVN's).
pub const OVN_LINE: &str =
    "-A PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING";

/// The iptables-restore text of `kube-proxy-scale.py N`, byte for byte: the
/// healthy Harvester PREROUTING jumps plus `n / 5` services of five kube-proxy-style rules
/// each (two in KUBE-SERVICES, one in the service chain, two in the endpoint chain).
pub fn kube_proxy_scale(n: usize) -> String {
    let services = n / 5;
    let mut out = String::with_capacity(200 + services * 560);
    out.push_str("*nat\n");
    for chain in [
        "cali-PREROUTING",
        "OVN-PREROUTING",
        "KUBE-SERVICES",
        "CNI-HOSTPORT-DNAT",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for i in 0..services {
        let _ = writeln!(out, ":KUBE-SVC-{i:012} - [0:0]");
        let _ = writeln!(out, ":KUBE-SEP-{i:012} - [0:0]");
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n",
    );
    out.push_str(OVN_LINE);
    out.push('\n');
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n");
    for i in 0..services {
        let (a, b, c) = ((i >> 16) & 255, (i >> 8) & 255, i & 255);
        let svc = format!("KUBE-SVC-{i:012}");
        let sep = format!("KUBE-SEP-{i:012}");
        let _ = writeln!(out, "-A KUBE-SERVICES -d 10.{a}.{b}.{c}/32 -p tcp -m comment --comment \"ns/svc{i}:http cluster IP\" -m tcp --dport 80 -j {svc}");
        let _ = writeln!(out, "-A KUBE-SERVICES -d 10.{a}.{b}.{c}/32 -p udp -m comment --comment \"ns/svc{i}:dns cluster IP\" -m udp --dport 53 -j {svc}");
        let _ = writeln!(
            out,
            "-A {svc} -m comment --comment \"ns/svc{i}:http\" -j {sep}"
        );
        let _ = writeln!(out, "-A {sep} -s 10.244.{b}.{c}/32 -m comment --comment \"ns/svc{i}:http\" -j MARK --set-xmark 0x4000/0x4000");
        let _ = writeln!(out, "-A {sep} -p tcp -m comment --comment \"ns/svc{i}:http\" -m tcp -j DNAT --to-destination 10.244.{b}.{c}:8080");
    }
    out.push_str("COMMIT\n");
    out
}

/// The Python twin of [`kube_proxy_scale`] (`python3 SCRIPT N`), kept byte-identical by a test.
pub fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kube-proxy-scale.py")
}
