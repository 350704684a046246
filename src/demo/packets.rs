//! The demo's packets: the node's data path (crates/jumpset-testkit `datapath`) around the
//! demo's namespace — a client and a pod in throwaway namespaces of their own, over veth,
//! built through rtnetlink — and the agents' rules written through jumpset's codec as
//! iptables-nft writes them (kube-proxy's Service DNAT, portmap's hostPort DNAT, a counting
//! rule in Calico's and in Kube-OVN's chain). No program is run.
//!
//! Each figure the demo prints is checked against what the chain implies; a data path
//! that disagrees is an error, not a line of output.

use super::{kernel, write};
use crate::output::CmdError;
use jumpset::backend::nft::{codec, NftBackend, SceneOp};
use jumpset::backend::Backend;
use jumpset::snapshot::{Family, Snapshot, Verdict};
use jumpset_testkit::datapath::{self, Attempt, DataPath, Tally};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// New connections per target in each measurement, one every 20 ms.
const N: usize = 10;
const GAP: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(1);

/// Build the data path around the calling thread's (throwaway) namespace and write the
/// agents' chains into its nat table (which must exist: the scenario is loaded first).
pub(super) fn set_up(nft: &mut NftBackend) -> Result<DataPath, CmdError> {
    let dp = DataPath::build().map_err(|e| kernel(format!("building the data path: {e}")))?;
    nft.write_scene(
        Family::Ip,
        "nat",
        &datapath::AGENT_CHAINS,
        &datapath::agent_scene(Family::Ip),
    )
    .map_err(kernel)?;
    Ok(dp)
}

/// Calico's and Kube-OVN's counting rules, as jumpset reads them.
fn counters(nft: &mut NftBackend) -> Result<(u64, u64), CmdError> {
    let mut first = |chain: &str| -> Result<u64, CmdError> {
        let s = nft.read(Family::Ip, "nat", chain).map_err(kernel)?;
        s.rules
            .first()
            .and_then(|r| r.counters)
            .map(|c| c.packets)
            .ok_or_else(|| kernel(format!("no counting rule in {chain}")))
    };
    Ok((first("cali-PREROUTING")?, first("OVN-PREROUTING")?))
}

/// One measurement: `N` new connections to `target`, one after the other.
struct Measured {
    tally: Tally,
    cali: u64,
    ovn: u64,
    /// SYNs the client sent again (see [`Attempt::syn_retransmits`]).
    retrans: u64,
}

fn measure(nft: &mut NftBackend, dp: &DataPath, target: SocketAddr) -> Result<Measured, CmdError> {
    let before = counters(nft)?;
    let attempts: Vec<Attempt> = dp
        .connect_n(target, N, GAP, TIMEOUT)
        .map_err(|e| kernel(format!("connecting from the client's namespace: {e}")))?;
    let after = counters(nft)?;
    Ok(Measured {
        tally: Tally::of(&attempts),
        cali: after.0 - before.0,
        ovn: after.1 - before.1,
        retrans: attempts.iter().map(|a| u64::from(a.syn_retransmits)).sum(),
    })
}

fn line(what: &str, target: SocketAddr, m: &Measured) -> String {
    let per = |n: u64| format!("{}×", n as f64 / m.tally.attempts as f64);
    format!(
        "     {what:<9}{:<22}{:>6} reached the pod   Calico's chain ran {}, Kube-OVN's {} per connection\n",
        target.to_string(),
        format!("{}/{}", m.tally.ok, m.tally.attempts),
        per(m.cali),
        per(m.ovn),
    )
}

/// Check a measurement against what the chain implies: every connection reaches the pod,
/// Calico's chain runs once and Kube-OVN's `ovn_runs` times per connection. (A SYN the
/// client sends again because the first was dropped before conntrack confirmed it goes
/// through the NAT table once more, so Calico's chain may count up to that many more.)
fn expect(what: &str, m: &Measured, ovn_runs: u64) -> Result<(), CmdError> {
    let n = m.tally.attempts as u64;
    let passes_ok = (n..=n + m.retrans).contains(&m.cali);
    if m.tally.ok != m.tally.attempts || !passes_ok || m.ovn != ovn_runs * m.cali {
        return Err(kernel(format!(
            "{what}: expected every connection to reach the pod with Calico's chain run once and Kube-OVN's {ovn_runs} times; got {}, Calico's chain +{}, Kube-OVN's +{}",
            m.tally.text(),
            m.cali,
            m.ovn
        )));
    }
    Ok(())
}

/// Before the repair: what a packet goes through on the broken chain, and what happens
/// when Kube-OVN's delete-by-index hits kube-proxy's jump. Puts kube-proxy's jump back
/// where it was (as kube-proxy's next sync would) before returning.
pub(super) fn before_repair(
    out: &mut (dyn Write + Send),
    nft: &mut NftBackend,
    dp: &DataPath,
    chain: &str,
) -> Result<(), CmdError> {
    let (vip, hostport) = (datapath::vip(Family::Ip), datapath::host_port(Family::Ip));
    write(out, "\n   What a packet goes through. A client and a pod, each in a throwaway namespace of its own,\n   hang off this node by veth pairs. kube-proxy DNATs the Service to the pod, portmap the hostPort,\n   and one rule in Calico's and one in Kube-OVN's chain count the new connections that pass:\n".into())?;
    let svc = measure(nft, dp, vip)?;
    let hp = measure(nft, dp, hostport)?;
    write(out, line("Service", vip, &svc))?;
    write(out, line("hostPort", hostport, &hp))?;
    // A Service connection meets two of Kube-OVN's jumps before kube-proxy's DNAT ends
    // the chain; a hostPort connection meets all three.
    expect("Service, broken chain", &svc, 2)?;
    expect("hostPort, broken chain", &hp, 3)?;
    write(out, "   Every connection runs Kube-OVN's chain two or three times. Worse, Kube-OVN deletes its copies\n   by index: when the chain has shifted, the index it deletes is kube-proxy's jump.\n".into())?;

    let snap = nft.read(Family::Ip, "nat", chain).map_err(kernel)?;
    let (i, kube) = kube_proxy_jump(&snap)?;
    let next = snap.rules.get(i + 1).map(|r| r.handle);
    nft.write_scene(
        Family::Ip,
        "nat",
        &[],
        &[SceneOp::Delete {
            chain: chain.into(),
            handle: kube.handle,
        }],
    )
    .map_err(kernel)?;
    let dead = dp
        .connect_parallel(vip, 3, TIMEOUT)
        .map_err(|e| kernel(format!("connecting from the client's namespace: {e}")))?;
    let dead = Tally::of(&dead);
    let hp = measure(nft, dp, hostport)?;
    write(
        out,
        format!(
            "   With kube-proxy's jump (handle {}) deleted:\n     {:<9}{:<22}{:>6} reached the pod   ({})\n",
            kube.handle,
            "Service",
            vip.to_string(),
            format!("{}/{}", dead.ok, dead.attempts),
            dead.failed
                .iter()
                .map(|(o, n)| format!("{n} {}", o.name()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    )?;
    write(out, line("hostPort", hostport, &hp))?;
    if dead.ok != 0 {
        return Err(kernel(format!(
            "a Service connection reached the pod without kube-proxy's jump: {}",
            dead.text()
        )));
    }
    expect("hostPort without kube-proxy's jump", &hp, 3)?;

    // kube-proxy's next sync puts it back: the seed chain again (with a new handle).
    let comment = kube
        .comment
        .as_ref()
        .map(|c| (c.bytes.as_slice(), c.encoding));
    let rule = codec::encode_rule(comment, &kube.matches, &kube.verdict);
    let at = next.map_or(codec::Position::Append, codec::Position::Before);
    nft.write_scene(
        Family::Ip,
        "nat",
        &[],
        &[SceneOp::Add {
            chain: chain.into(),
            rule,
            at,
        }],
    )
    .map_err(kernel)?;
    write(
        out,
        "   kube-proxy puts its jump back on its next sync; the chain is as above again.\n".into(),
    )?;
    Ok(())
}

/// kube-proxy's jump in the chain: its index and rule.
fn kube_proxy_jump(snap: &Snapshot) -> Result<(usize, jumpset::snapshot::Rule), CmdError> {
    snap.rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.verdict == Verdict::Jump("KUBE-SERVICES".into()))
        .map(|(i, r)| (i, r.clone()))
        .ok_or_else(|| kernel("kube-proxy's jump is not in the chain"))
}

/// After the repair: every connection reaches the pod, each agent's chain runs once.
pub(super) fn after_repair(
    out: &mut (dyn Write + Send),
    nft: &mut NftBackend,
    dp: &DataPath,
) -> Result<(), CmdError> {
    let (vip, hostport) = (datapath::vip(Family::Ip), datapath::host_port(Family::Ip));
    let svc = measure(nft, dp, vip)?;
    let hp = measure(nft, dp, hostport)?;
    write(out, "\n   Packets through the repaired chain:\n".into())?;
    write(out, line("Service", vip, &svc))?;
    write(out, line("hostPort", hostport, &hp))?;
    expect("Service, repaired chain", &svc, 1)?;
    expect("hostPort, repaired chain", &hp, 1)?;
    write(
        out,
        "   Every connection reaches the pod, and each agent's chain runs exactly once.\n".into(),
    )?;
    Ok(())
}
