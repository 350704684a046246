//! The deployment files under docker/: the systemd unit passes `systemd-analyze verify`
//! and carries the hardening `docs/contracts.md#deployment` requires; the DaemonSet has the properties a node
//! operator relies on; the Dockerfile builds a release binary onto a small runtime image
//! without iptables; every shipped config is one jumpset accepts.

use jumpset::spec::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

fn docker(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(docker(name)).unwrap()
}

/// `Key=value` lines of a unit's section.
fn directives(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let (false, Some((k, v))) = (line.starts_with('#'), line.split_once('=')) {
            if current == section {
                out.push((k.to_string(), v.to_string()));
            }
        }
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read("jumpset.service");
    let svc = directives(&unit, "Service");
    let get = |k: &str| -> Vec<&str> {
        svc.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_ADMIN CAP_NET_RAW"),
        (
            "RestrictAddressFamilies",
            "AF_NETLINK AF_UNIX AF_INET AF_INET6",
        ),
        ("ReadWritePaths", "-/run/xtables.lock"),
        // The local API's socket directory (root-only unless Group= is added) and the
        // claims' state directory.
        ("RuntimeDirectory", "jumpset"),
        ("RuntimeDirectoryMode", "0750"),
        ("StateDirectory", "jumpset"),
        ("StateDirectoryMode", "0700"),
    ] {
        assert_eq!(get(k), vec![v], "{k}");
    }
    // `systemctl reload` validates first: an invalid config fails it unsignalled.
    assert_eq!(
        get("ExecReload"),
        [
            "/usr/local/bin/jumpset validate --config /etc/jumpset/jumpset.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    assert!(get("WatchdogSec").len() == 1, "WatchdogSec");
    assert!(get("ExecStart")[0].contains("jumpset daemon --config /etc/jumpset/jumpset.toml"));
    // The capability drop happens in the daemon itself: capset must stay allowed.
    assert!(get("SystemCallFilter")
        .iter()
        .all(|f| !f.contains("@privileged")));

    let tmpfiles = read("jumpset.tmpfiles.conf");
    assert!(
        tmpfiles
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["f", "/run/xtables.lock", "0600", "root", "root", "-"]),
        "{tmpfiles}"
    );

    // systemd-analyze verify, in a root of its own holding the unit, the binary it runs,
    // and the system's units. It exits 0 on warnings, so any output fails the test.
    let analyze = which("systemd-analyze")
        .expect("systemd-analyze is needed (apt-get install systemd); scripts/test.sh installs it");
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sdroot");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "usr/local/bin",
        "usr/lib",
        "bin",
        "etc/systemd/system",
        "etc/jumpset",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(
        env!("CARGO_BIN_EXE_jumpset"),
        root.join("usr/local/bin/jumpset"),
    )
    .unwrap();
    std::fs::copy(which("kill").unwrap(), root.join("bin/kill")).unwrap();
    std::fs::copy(
        docker("jumpset.service"),
        root.join("etc/systemd/system/jumpset.service"),
    )
    .unwrap();
    std::fs::copy(
        docker("jumpset.toml"),
        root.join("etc/jumpset/jumpset.toml"),
    )
    .unwrap();
    let status = Command::new("cp")
        .args(["-r", "/usr/lib/systemd"])
        .arg(root.join("usr/lib/"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("/etc/systemd/system/jumpset.service")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
    let _ = std::fs::remove_dir_all(&root);
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

#[test]
fn shipped_configs_are_valid() {
    let shipped = Config::from_toml(&read("jumpset.toml")).unwrap();
    // Where the unit's RuntimeDirectory= and StateDirectory= are.
    assert_eq!(
        shipped.daemon().api_socket.as_deref(),
        Some(Path::new("/run/jumpset/jumpset.sock"))
    );
    assert_eq!(shipped.daemon().state_dir, Path::new("/var/lib/jumpset"));
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&read("daemonset.yaml"))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let cfg = Config::from_toml(cm["data"]["jumpset.toml"].as_str().unwrap()).unwrap();
    // Scrapable on the node address, probed on loopback: it must listen on all addresses.
    assert_eq!(
        cfg.daemon()
            .metrics_listen
            .map(|a| a.to_string())
            .as_deref(),
        Some("0.0.0.0:10296")
    );
}

#[test]
fn daemonset_has_what_a_node_agent_needs() {
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&read("daemonset.yaml"))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let tol = pod["tolerations"].as_sequence().unwrap();
    assert!(
        tol.iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "runs on every node"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let added: Vec<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(added, ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let p = &c[probe]["httpGet"];
        assert_eq!(p["host"], "127.0.0.1", "{probe}");
        assert_eq!(p["path"], path, "{probe}");
        assert_eq!(p["port"], 10296, "{probe}");
    }
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // The ConfigMap as a directory (a subPath mount is never updated): the daemon sees
    // the kubelet's swap and reloads.
    let cm = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/jumpset")
        .expect("the config is mounted");
    assert!(cm.get("subPath").is_none());
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "10296");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The host's xtables lock, as a FILE: without FileOrCreate the runtime creates a
    // directory there and breaks every iptables-legacy call on the node.
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/run/xtables.lock")
        .expect("the xtables lock is mounted");
    let vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(vol["hostPath"]["path"], "/run/xtables.lock");
    assert_eq!(vol["hostPath"]["type"], "FileOrCreate");
    // The local API's socket directory and the claims' state directory, from the host:
    // agents reach the socket there, claims outlive the pod.
    for dir in ["/run/jumpset", "/var/lib/jumpset"] {
        let mount = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{dir} is mounted"));
        assert!(mount.get("readOnly").is_none_or(|r| *r == false), "{dir}");
        let vol = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(vol["hostPath"]["path"], dir);
        assert_eq!(vol["hostPath"]["type"], "DirectoryOrCreate");
    }
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "daemon");
}

#[test]
fn dockerfile_is_a_multistage_release_build_without_iptables() {
    let df = read("Dockerfile");
    let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(df.contains("cargo build --release --locked"), "{df}");
    let runtime = &df[df.rfind("\nFROM ").unwrap()..];
    assert!(!runtime.contains("iptables"), "{runtime}");
    assert!(
        !runtime.contains("apt-get"),
        "the runtime stage installs nothing"
    );
    assert!(runtime.contains("COPY --from=build"), "{runtime}");
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/jumpset\"]"));
    // The context excludes build output.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}
