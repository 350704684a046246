//! The Harvester v1.5.0 incident, as the demo, the bench and the tests use it. The files
//! live with the library's own test data (`crates/jumpset/testdata/`).

use jumpset::snapshot::CommentEncoding;
use jumpset::spec::{ChainSpec, Config};

/// The spec of the Harvester fix: jumpset owns Kube-OVN's jump, after Calico's, before
/// kube-proxy's and portmap's.
pub const HARVESTER_TOML: &str = include_str!("../../jumpset/testdata/harvester.toml");
/// The broken chain, as `iptables-save` printed it on the node.
pub const HARVESTER_BROKEN: &str = include_str!("../../jumpset/testdata/harvester-broken.rules");
/// The chain every agent can live with.
pub const HARVESTER_HEALTHY: &str = include_str!("../../jumpset/testdata/harvester-healthy.rules");

/// The spec the bench reconciles: Harvester's (jumpset owns Kube-OVN's jump, after
/// Calico's, before kube-proxy's and portmap's) with the given comment encoding.
pub fn harvester_spec(encoding: CommentEncoding) -> ChainSpec {
    let toml = HARVESTER_TOML
        .replace("backend  = \"auto\"", "backend = \"nft\"")
        .replace(
            "families = [\"ip\"]",
            &format!(
                "families = [\"ip\"]\ncomment_encoding = \"{}\"",
                encoding.name()
            ),
        );
    let cfg = Config::from_toml(&toml)
        .unwrap_or_else(|e| unreachable!("the bundled Harvester spec is valid: {e}"));
    cfg.chains()[0].clone()
}

/// The path of a file of the library's test data (`crates/jumpset/testdata/NAME`), for
/// tests that hand it to a program (`iptables-restore < FILE`).
pub fn path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../jumpset/testdata")
        .join(name)
}
