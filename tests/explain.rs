//! `jumpset explain` against the real kernel, each test in a fresh network namespace with
//! the real nft, iptables-nft and iptables-legacy as the other agents: a node with
//! kube-proxy's and Calico's nftables tables, firewalld's inet table, iptables-nft's nat
//! table (the Harvester chain) and iptables-legacy's raw and nat tables. The kernel's own
//! `nft monitor trace` of a packet is the oracle of the order, and the footprint (nft
//! ruleset, x_tables tables) must be the same after explain as before.

mod support;

use jumpset::snapshot::Family;
use jumpset_testkit::datapath::{self, DataPath};
use serde_json::Value;
use std::time::Duration;
use support::*;

/// What explain must leave exactly as it found it: the x_tables tables that exist and the
/// whole nf_tables ruleset (with handles).
fn footprint() -> String {
    ok("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; nft -a list ruleset 2>/dev/null")
}

/// The node: iptables-nft's nat table first (the Harvester chain), then iptables-legacy's
/// raw and nat tables, then kube-proxy's, Calico's and firewalld's nf_tables tables.
fn node() {
    ok(&format!(
        "iptables-nft-restore < {}",
        fixture("harvester-broken.rules").display()
    ));
    ok(&format!(
        "iptables-legacy-restore < {}",
        fixture("explain/legacy.rules").display()
    ));
    ok(&format!(
        "nft -f {}",
        fixture("explain/agents.nft").display()
    ));
}

/// `jumpset explain ARGS --json`, checking it changed nothing.
fn explain(args: &[&str]) -> Value {
    let before = footprint();
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = jumpset(&all);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(footprint(), before, "explain changed the host");
    run.json()
}

fn labels(hook: &Value) -> Vec<String> {
    hook["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| match s["backend"].as_str().unwrap() {
            "nf_tables" => format!(
                "{} {} {}",
                s["family"].as_str().unwrap(),
                s["table"].as_str().unwrap(),
                s["chain"].as_str().unwrap()
            ),
            b => format!(
                "{b} {} {} {}",
                s["family"].as_str().unwrap(),
                s["table"].as_str().unwrap(),
                s["chain"].as_str().unwrap()
            ),
        })
        .collect()
}

/// Whether this kernel has the hook dump (`nft list hooks`): its config says.
fn kernel_has_hook_dump() -> bool {
    let cfg = sh("zcat /proc/config.gz 2>/dev/null");
    let text = String::from_utf8_lossy(&cfg.stdout);
    text.lines()
        .any(|l| l == "CONFIG_NETFILTER_NETLINK_HOOK=y" || l == "CONFIG_NETFILTER_NETLINK_HOOK=m")
}

#[test]
fn a_mixed_node_is_explained_chain_by_chain_with_owners_ties_and_mixed_backends() {
    netns(|| {
        node();
        let cfg = config(&std::fs::read_to_string(fixture("harvester.toml")).unwrap());
        let j = explain(&[
            "--config",
            cfg.as_str(),
            "--family",
            "ip",
            "--hook",
            "prerouting",
        ]);
        let hooks = j["hooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 1);
        let h = &hooks[0];
        assert_eq!(
            (h["family"].as_str(), h["hook"].as_str()),
            (Some("ip"), Some("prerouting"))
        );
        assert_eq!(
            h["order"],
            if kernel_has_hook_dump() {
                "hook_dump"
            } else {
                "derived"
            }
        );
        // Every base chain on the hook, nf_tables (ip and inet) and x_tables, each once.
        let got = labels(h);
        let mut want = vec![
            "ip calico raw-PREROUTING",
            "x_tables ip raw PREROUTING",
            "ip calico mangle-PREROUTING",
            "inet firewalld mangle_PREROUTING",
            "ip kube-proxy filter-prerouting",
            "ip calico nat-PREROUTING",
            "ip kube-proxy nat-prerouting",
            "ip nat PREROUTING",
            "x_tables ip nat PREROUTING",
            "inet firewalld nat_PREROUTING",
            "inet firewalld filter_PREROUTING",
        ];
        if h["order"] == "derived" {
            // Without a hook dump the ties are in the guessed order.
            assert_eq!(got, want);
        } else {
            let mut g: Vec<String> = got
                .into_iter()
                .filter(|l| !l.starts_with("kernel"))
                .collect();
            g.sort();
            want.sort();
            assert_eq!(g, want);
        }
        let path = h["path"].as_array().unwrap();
        let step = |label: &str| {
            path.iter()
                .zip(labels(h))
                .find(|(_, l)| l == label)
                .map(|(s, _)| s.clone())
                .unwrap_or_else(|| panic!("{label} not on the path"))
        };
        // Owners, types, priorities as nft names them, where each runs.
        for (label, owner) in [
            ("ip calico raw-PREROUTING", "calico"),
            ("ip kube-proxy nat-prerouting", "kube-proxy"),
            ("inet firewalld nat_PREROUTING", "firewalld"),
            ("ip nat PREROUTING", "iptables-nft"),
            ("x_tables ip nat PREROUTING", "iptables-legacy"),
        ] {
            assert_eq!(step(label)["owner"], owner, "{label}");
        }
        let fw = step("inet firewalld nat_PREROUTING");
        assert_eq!(
            (
                &fw["type"],
                &fw["priority"],
                &fw["priority_name"],
                &fw["runs_at"],
                &fw["nat"]
            ),
            (
                &Value::from("nat"),
                &Value::from(-90),
                &Value::from("dstnat + 10"),
                &Value::from(-100),
                &Value::from(true)
            )
        );
        let kp = step("ip kube-proxy filter-prerouting");
        assert_eq!(
            (&kp["priority_name"], &kp["nat"]),
            (&Value::from("dstnat - 10"), &Value::from(false))
        );
        // The priority names are the ones nft prints for the same chains.
        let listed = ok("nft list chain inet firewalld nat_PREROUTING; nft list chain ip kube-proxy filter-prerouting");
        assert!(
            listed.contains("priority dstnat + 10;") && listed.contains("priority dstnat - 10;"),
            "{listed}"
        );
        // The managed chain, in both backends (auto on a mixed host without a hint).
        assert_eq!(step("ip nat PREROUTING")["managed"], true);
        assert_eq!(step("x_tables ip nat PREROUTING")["managed"], true);
        assert_eq!(step("ip nat PREROUTING")["rules"], 6);
        // Findings: the ties and the mixed host, at least.
        let kinds: Vec<&str> = j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        for k in [
            "priority_tie",
            "mixed_backends",
            "same_target_two_tables",
            "empty_target",
        ] {
            assert!(kinds.contains(&k), "{k} not in {kinds:?}");
        }
        let tie = j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["kind"] == "priority_tie" && f["summary"].as_str().unwrap().contains("NAT hook")
            })
            .expect("the tie inside the NAT hook");
        assert_eq!(tie["evidence"].as_array().unwrap().len(), 5, "{tie}");
        assert!(!tie["what_to_do"].as_str().unwrap().is_empty());
        let mixed = j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "mixed_backends")
            .unwrap();
        assert!(
            mixed["evidence"].to_string().contains("iptables-legacy"),
            "{mixed}"
        );
        // Each managed chain, from each backend, with every rule's owner.
        let chains = j["chains"].as_array().unwrap();
        let backends: Vec<&str> = chains
            .iter()
            .map(|c| c["backend"].as_str().unwrap())
            .collect();
        assert_eq!(backends, ["nft", "legacy"]);
        let owners: Vec<&str> = chains[0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["owner"].as_str().unwrap())
            .collect();
        assert_eq!(
            owners,
            [
                "jumpset",
                "calico",
                "jumpset",
                "kube-proxy",
                "jumpset",
                "portmap"
            ]
        );

        // The text form says the same, with the NAT hook as a heading.
        let run = jumpset(&[
            "explain",
            "--config",
            cfg.as_str(),
            "--family",
            "ip",
            "--hook",
            "prerouting",
        ]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("the NAT hook"), "{}", run.stdout);
        assert!(
            run.stdout.contains("warning priority_tie"),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout.contains("warning mixed_backends"),
            "{}",
            run.stdout
        );
    });
}

/// The chains among `keep` the first traced packet went through, in order. `nft monitor
/// trace` prints `trace id ID FAMILY TABLE CHAIN ...` for each rule and policy a packet
/// meets, and `... packet: ...` when it enters a chain; the tracer's own `packet:` line
/// starts each packet (ids can be reused by later packets).
fn traced_chains(trace: &str, tracer: &str, keep: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut started = false;
    for w in trace
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        if w.len() <= 6 || w[0] != "trace" || w[1] != "id" {
            continue;
        }
        let c = format!("{} {} {}", w[3], w[4], w[5]);
        if c == tracer && w[6] == "packet:" {
            if started {
                break; // the next packet
            }
            started = true;
        }
        if started && keep.contains(&c) && out.last() != Some(&c) {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_order_explained_is_the_order_the_kernel_runs_the_chains_in() {
    netns(|| {
        let dp = DataPath::build().expect("the data path builds");
        node();
        // Calico's raw chain marks every packet; x_tables raw counts the marked ones: if it
        // counts any, Calico's chain (registered after x_tables raw) ran first.
        ok("nft add rule ip calico raw-PREROUTING meta mark set meta mark or 0x100");
        ok("iptables-legacy -t raw -A PREROUTING -m mark --mark 0x100/0x100");
        // Likewise iptables-nft's nat chain (registered with the NAT core before x_tables
        // nat was instantiated) marks, and x_tables nat counts.
        ok("iptables-nft -t nat -A PREROUTING -j MARK --set-xmark 0x200/0x200");
        ok("iptables-legacy -t nat -I PREROUTING -m mark --mark 0x200/0x200");
        // A tracer before everything: every chain after it is traced.
        ok_stdin(
            "nft -f -",
            "table ip trace {\n chain pre {\n type filter hook prerouting priority -500; policy accept;\n meta nftrace set 1\n }\n}\n",
        );
        let j = explain(&["--family", "ip", "--hook", "prerouting"]);
        let h = &j["hooks"][0];
        let explained: Vec<String> = labels(h)
            .into_iter()
            .filter(|l| !l.starts_with("x_tables") && !l.starts_with("kernel"))
            .collect();
        assert_eq!(explained[0], "ip trace pre");

        // One new connection from the client, traced by the kernel.
        let mut monitor = std::process::Command::new("nft")
            .args(["monitor", "trace"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("nft monitor runs");
        std::thread::sleep(Duration::from_millis(500));
        let a = dp
            .connect(datapath::pod(Family::Ip), Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            a.outcome,
            datapath::Outcome::Ok,
            "the connection goes through"
        );
        std::thread::sleep(Duration::from_millis(500));
        let _ = monitor.kill();
        let out = monitor.wait_with_output().unwrap();
        let trace = String::from_utf8_lossy(&out.stdout);
        let traced = traced_chains(&trace, "ip trace pre", &explained);
        // nf_tables' part of the path, nat chains included (a first packet), is exactly
        // the order the kernel ran them in — ties too, guessed or not.
        assert_eq!(traced, explained, "trace:\n{trace}");

        // x_tables raw saw the mark: Calico's raw chain ran before it, as explain placed
        // it (a guess, flagged as such without a hook dump).
        let marked = |table: &str, mark: &str| -> u64 {
            let listing = ok(&format!(
                "iptables-legacy -t {table} -L PREROUTING -v -x -n"
            ));
            listing
                .lines()
                .find(|l| l.contains(&format!("mark match {mark}")))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{listing}"))
        };
        assert!(
            marked("raw", "0x100/0x100") >= 1,
            "x_tables raw ran before Calico's raw chain"
        );
        let path = h["path"].as_array().unwrap();
        let at = |label: &str| labels(h).iter().position(|l| l == label).unwrap();
        assert!(at("ip calico raw-PREROUTING") < at("x_tables ip raw PREROUTING"));
        // x_tables nat did not see iptables-nft's mark: it ran first, being registered
        // later — registration order, which nothing but a hook dump shows. Without one,
        // explain's guess (x_tables after every nf_tables chain) is wrong here, and it
        // says so: the order of that tie is unknown.
        assert_eq!(
            marked("nat", "0x200/0x200"),
            0,
            "iptables-nft's nat chain ran before x_tables nat"
        );
        // What explain says it knows is true; what it does not, it says so.
        for (a, b) in [
            ("ip calico raw-PREROUTING", "x_tables ip raw PREROUTING"),
            ("x_tables ip nat PREROUTING", "ip nat PREROUTING"),
        ] {
            if path[at(b)]["order_known"] == true {
                assert!(at(a) < at(b), "{a} runs before {b}");
            }
        }
        if h["order"] == "derived" {
            assert_eq!(path[at("x_tables ip raw PREROUTING")]["order_known"], false);
        }
        if h["nat_hook"]["order"] == "derived" {
            assert_eq!(path[at("x_tables ip nat PREROUTING")]["order_known"], false);
            assert_eq!(path[at("ip nat PREROUTING")]["order_known"], false);
        }
    });
}

#[test]
fn on_the_seed_chain_explain_says_why_the_kube_ovn_jump_is_where_it_is() {
    netns(|| {
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let cfg = config(&harvester_config());
        let want = "after cali-PREROUTING (position 1), before KUBE-SERVICES (position 3)";
        // plan --explain: the same reasoning for what apply would do.
        let run = jumpset(&["plan", "--explain", "--config", cfg.as_str(), "--json"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let r = &run.json()["reasons"][0];
        assert!(r["reason"].as_str().unwrap().starts_with(want), "{r}");
        assert_eq!(
            (r["placed"].as_str(), r["position"].as_u64()),
            (Some("kept"), Some(2))
        );
        let run = jumpset(&["plan", "--explain", "--config", cfg.as_str()]);
        assert!(
            run.stdout
                .contains(&format!("# why: -j OVN-PREROUTING (kept at 2): {want}")),
            "{}",
            run.stdout
        );
        // Without --explain, no reasons.
        let run = jumpset(&["plan", "--config", cfg.as_str(), "--json"]);
        assert!(run.json().get("reasons").is_none());

        let run = jumpset(&["apply", "--config", cfg.as_str()]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let j = explain(&["--config", cfg.as_str()]);
        let c = &j["chains"][0];
        assert_eq!(
            (c["backend"].as_str(), c["in_order"].as_bool()),
            (Some("nft"), Some(true))
        );
        let r = &c["reasons"][0];
        assert_eq!(r["target"], "OVN-PREROUTING");
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.starts_with(want), "{reason}");
        assert_eq!(
            reason,
            format!("{want}, before CNI-HOSTPORT-DNAT (position 4)"),
            "portmap's jump is the last anchor"
        );
        let bounds = r["bounds"].as_array().unwrap();
        assert_eq!(bounds[0]["positions"][0], 1);
        assert_eq!(bounds[1]["positions"][0], 3);
        // The rule at each position is the one the reason names.
        let rules = c["rules"].as_array().unwrap();
        assert_eq!(rules[0]["target"], "cali-PREROUTING");
        assert_eq!(rules[1]["owner"], "jumpset");
        assert_eq!(rules[2]["target"], "KUBE-SERVICES");
        // Only the hook of the managed chain, without a hook given; no finding but the
        // empty target chain Kube-OVN has not filled.
        assert_eq!(j["hooks"].as_array().unwrap().len(), 1);
        assert_eq!(j["hooks"][0]["hook"], "prerouting");
        let kinds: Vec<&str> = j["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.iter().all(|k| *k == "empty_target"), "{kinds:?}");
    });
}

#[test]
fn on_the_conflict_explain_names_the_rule_that_blocks_the_jump() {
    netns(|| {
        ok_stdin(
            "iptables-nft-restore",
            "*nat\n:cali-PREROUTING - [0:0]\n:OVN-PREROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\nCOMMIT\n",
        );
        let kube = nft_handles("ip", "nat", "PREROUTING")[0];
        let cfg = config(&harvester_config());
        assert_eq!(
            jumpset(&["apply", "--config", cfg.as_str()]).code,
            5,
            "a conflict"
        );
        let j = explain(&["--config", cfg.as_str()]);
        let r = &j["chains"][0]["reasons"][0];
        assert_eq!(r["position"], 1);
        let want = format!(
            "before KUBE-SERVICES (position 2), before CNI-HOSTPORT-DNAT (position 4), cannot be after cali-PREROUTING (position 3): blocked by rule 2 (handle {kube}, -j KUBE-SERVICES)"
        );
        assert_eq!(r["reason"], want);
        assert_eq!(r["unmet"][0]["constraint"], "after cali-PREROUTING");
        assert_eq!(r["unmet"][0]["blocking"][0]["handle"].as_u64(), Some(kube));
        let run = jumpset(&["explain", "--config", cfg.as_str()]);
        assert!(run.stdout.contains(&want), "{}", run.stdout);
    });
}

#[test]
fn an_empty_namespace_is_explained_without_instantiating_anything() {
    netns(|| {
        // No config: every hook of both families; nothing on any of them.
        let cfg = config("families = [\"ip\", \"ip6\"]\n");
        let j = explain(&["--config", cfg.as_str()]);
        assert_eq!(j["hooks"].as_array().unwrap().len(), 10);
        assert!(j["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["path"].as_array().unwrap().is_empty()));
        assert_eq!(j["findings"], Value::Array(vec![]));
        // No legacy table was instantiated and no nf_tables object created.
        assert_eq!(footprint(), "");
        // An x_tables table is read only when it exists: explain reads the one iptables
        // made, and instantiates none of the others.
        ok("iptables-legacy -t filter -P FORWARD DROP");
        let before = ok("cat /proc/net/ip_tables_names");
        let j = explain(&[
            "--config",
            cfg.as_str(),
            "--family",
            "ip",
            "--hook",
            "forward",
        ]);
        assert_eq!(ok("cat /proc/net/ip_tables_names"), before);
        let s = &j["hooks"][0]["path"][0];
        assert_eq!(
            (
                s["backend"].as_str(),
                s["table"].as_str(),
                s["policy"].as_str()
            ),
            (Some("x_tables"), Some("filter"), Some("drop"))
        );
    });
}
