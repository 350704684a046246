//! An agent that hands its jump to jumpset instead of running `iptables -I PREROUTING 1`:
//! Kube-OVN's gateway pass, the way it would read with jumpset as a library.
//!
//! The agent declares its jump with the builder — after Calico's, before kube-proxy's and
//! portmap's — and calls `apply`: jumpset reads the chain from the kernel, keeps the copy
//! already in place, deletes the duplicates by handle and commits it all as one
//! transaction. Run it as root: it acts in a throwaway network namespace it sets up with
//! the Harvester incident's broken chain, so the machine's own rules are never touched.
//!
//! ```sh
//! cargo run -p jumpset --example agent
//! ```

use jumpset::backend::nft::NftBackend;
use jumpset::snapshot::Family;
use jumpset::spec::{ChainSpec, Config, JumpSpec};
use jumpset::{Error, Jumpset};
use jumpset_testkit::{fixtures, netns, scenario};

/// What the agent owns: its one jump, placed by constraints, never by position.
fn kube_ovn_jump() -> Result<Config, jumpset::spec::SpecError> {
    Config::builder()
        .chain(
            ChainSpec::builder("nat", "PREROUTING").jump(
                JumpSpec::builder("OVN-PREROUTING", "kube-ovn prerouting rules")
                    .after(["cali-PREROUTING"])
                    .before(["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]),
            ),
        )
        .build()
}

/// The agent's gateway pass: one call instead of list, insert-at-1 and delete-by-index.
fn gateway_pass(js: &Jumpset) -> Result<i32, Error> {
    let report = js.apply()?;
    for chain in report.ok() {
        println!(
            "{} {} {}: {} change(s), {}",
            chain.plan.family,
            chain.plan.table,
            chain.plan.chain,
            chain.plan.ops.len(),
            if chain.committed {
                format!(
                    "one transaction, generation {} -> {}",
                    chain.generation_before, chain.generation_after
                )
            } else {
                "nothing committed".to_string()
            }
        );
        for line in chain.plan.lines() {
            println!("  {line}");
        }
    }
    Ok(report.exit_code())
}

/// Write the incident's broken chain (Kube-OVN's jump three times, one ahead of Calico's).
fn set_the_scene() -> Result<(), String> {
    let broken = scenario::parse(fixtures::HARVESTER_BROKEN)?;
    let chains: Vec<&str> = broken.chains.iter().map(String::as_str).collect();
    let rules: Vec<_> = broken.chain("PREROUTING").into_iter().cloned().collect();
    NftBackend::open()
        .and_then(|mut nft| nft.load(Family::Ip, "nat", "PREROUTING", &chains, &rules))
        .map_err(|e| e.to_string())
}

fn main() {
    let config = kube_ovn_jump().unwrap_or_else(|e| panic!("the agent's spec is valid: {e}"));
    let js = Jumpset::new(config).backend(jumpset::spec::BackendChoice::Nft);
    let code = netns::in_new_netns(|| -> Result<i32, String> {
        set_the_scene()?;
        let first = gateway_pass(&js).map_err(|e| e.to_string())?;
        let second = gateway_pass(&js).map_err(|e| e.to_string())?;
        println!(
            "check: exit {}",
            js.check().map_err(|e| e.to_string())?.exit_code()
        );
        Ok(first.max(second))
    });
    match code {
        Ok(Ok(code)) => std::process::exit(code),
        Ok(Err(e)) => {
            eprintln!("agent: {e}");
            std::process::exit(4)
        }
        Err(e) => {
            eprintln!("agent: cannot make a network namespace (run as root): {e}");
            std::process::exit(3)
        }
    }
}
