//! Drop-in fragments (`jumpset.d/*.toml` beside the config file) as the commands see
//! them: merged into one set of jumps, refused with both names when they contradict each
//! other, reconciled and cleaned up with the main file's jumps.

mod support;

use support::*;

const MESH: &str = "agent = \"meshd\"\n[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"MESH-PREROUTING\"\ncomment = \"mesh prerouting\"\nafter = [\"OVN-PREROUTING\"]\nbefore = [\"KUBE-SERVICES\"]\n";

fn dropin(cfg: &tempfile_path::TempPath, name: &str, text: &str) -> std::path::PathBuf {
    let dir = cfg.path().parent().unwrap().join("jumpset.d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn validate_names_both_fragments_of_a_contradiction_and_exits_2() {
    let cfg = config(&harvester_config());
    dropin(&cfg, "20-meshd.toml", MESH);
    let run = jumpset(&["validate", "--config", cfg.as_str()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("MESH-PREROUTING (mesh prerouting), declared by meshd"),
        "{}",
        run.stdout
    );
    let bad = dropin(
        &cfg,
        "30-kube-proxy.toml",
        "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"KUBE-SERVICES\"\ncomment = \"kubernetes service portals\"\nbefore = [\"MESH-PREROUTING\"]\n",
    );
    for cmd in ["validate", "plan", "apply"] {
        let run = jumpset(&[cmd, "--config", cfg.as_str()]);
        assert_eq!(run.code, 2, "{cmd}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("30-kube-proxy.toml")
                && run.stderr.contains("20-meshd.toml")
                && run.stderr.contains("cycle"),
            "{cmd}: {}",
            run.stderr
        );
    }
    std::fs::remove_file(bad).unwrap();
    assert_eq!(jumpset(&["validate", "--config", cfg.as_str()]).code, 0);
}

#[test]
fn jumps_of_drop_ins_are_reconciled_shown_and_cleaned_up_with_the_main_files() {
    netns(|| {
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let cfg = config(&harvester_config());
        dropin(&cfg, "20-meshd.toml", MESH);
        let run = jumpset(&["apply", "--config", cfg.as_str()]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let chain = saved_chain("iptables-nft-save", "PREROUTING");
        let targets: Vec<&str> = chain
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                "cali-PREROUTING",
                "OVN-PREROUTING",
                "MESH-PREROUTING",
                "KUBE-SERVICES",
                "CNI-HOSTPORT-DNAT"
            ],
            "{chain:#?}"
        );
        let status = jumpset(&["status", "--config", cfg.as_str(), "--json"]).json();
        let mesh = status["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["target"] == "MESH-PREROUTING")
            .unwrap()
            .clone();
        assert_eq!(mesh["owner"], "jumpset");
        assert_eq!(mesh["declared_by"], "meshd");
        let run = jumpset(&["cleanup", "--config", cfg.as_str()]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let left = saved_chain("iptables-nft-save", "PREROUTING").join("\n");
        assert!(
            !left.contains("MESH-PREROUTING") && !left.contains("OVN-PREROUTING"),
            "{left}"
        );
        assert!(
            left.contains("cali-PREROUTING") && left.contains("KUBE-SERVICES"),
            "{left}"
        );
    });
}

#[test]
fn the_readme_kube_ovn_drop_in_is_one_jumpset_takes() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let at = readme
        .find("/etc/jumpset/jumpset.d/10-kube-ovn.toml")
        .expect("the hand-off guide's drop-in");
    let open = readme[at..].find("```toml\n").unwrap() + at + "```toml\n".len();
    let text: String = readme[open..open + readme[open..].find("```").unwrap()]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    // Beside a main file that declares no chain: it is Kube-OVN's.
    let cfg = config("backend = \"nft\"\n");
    dropin(&cfg, "10-kube-ovn.toml", &text);
    let run = jumpset(&["validate", "--config", cfg.as_str(), "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let jump = &run.json()["chains"][0]["jumps"][0];
    assert_eq!(jump["declared_by"], "kube-ovn");
    assert_eq!(jump["target"], "OVN-PREROUTING");
    assert_eq!(jump["after"][0], "cali-PREROUTING");
}
