//! Host detection against the real kernel, each host built in a fresh network namespace
//! with the real iptables-nft, iptables-legacy and nft binaries.

mod support;

use support::*;

/// What detection must leave exactly as it found it.
fn footprint() -> String {
    ok("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; nft list tables")
}

/// Run `jumpset detect --json`, checking it had no side effect.
fn detect() -> serde_json::Value {
    let before = footprint();
    let run = jumpset(&["detect", "--json"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(footprint(), before, "detection changed the host");
    run.json()
}

fn verdict(j: &serde_json::Value) -> (String, Option<String>) {
    (
        j["mode"].as_str().unwrap().to_string(),
        j["backend"].as_str().map(str::to_string),
    )
}

fn v(mode: &str, backend: Option<&str>) -> (String, Option<String>) {
    (mode.to_string(), backend.map(str::to_string))
}

#[test]
fn an_empty_host_is_none_and_auto_will_not_choose() {
    netns(|| {
        let j = detect();
        assert_eq!(verdict(&j), v("none", None));
        assert_eq!(verdict(&j["families"]["ip"]), v("none", None));
        assert_eq!(verdict(&j["families"]["ip6"]), v("none", None));
        assert!(!j["evidence"].as_array().unwrap().is_empty());
        // No legacy table was instantiated and no nf_tables object created.
        assert_eq!(footprint(), "");
    });
}

#[test]
fn rules_only_through_iptables_nft_is_nft() {
    netns(|| {
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let j = detect();
        assert_eq!(verdict(&j), v("nft", Some("nft")));
        assert_eq!(verdict(&j["families"]["ip6"]), v("none", None));
        // auto picks nft and works.
        let cfg = config(&std::fs::read_to_string(fixture("harvester.toml")).unwrap());
        let run = jumpset(&["apply", "--config", cfg.as_str(), "--json"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.json()["backend"], "nft");
    });
}

#[test]
fn rules_only_through_iptables_legacy_is_legacy() {
    netns(|| {
        ok(&format!(
            "ip6tables-legacy-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let j = detect();
        assert_eq!(verdict(&j), v("legacy", Some("legacy")));
        assert_eq!(verdict(&j["families"]["ip6"]), v("legacy", Some("legacy")));
        assert_eq!(verdict(&j["families"]["ip"]), v("none", None));
        let cfg = config(
            &std::fs::read_to_string(fixture("harvester.toml"))
                .unwrap()
                .replace("[\"ip\"]", "[\"ip6\"]"),
        );
        let run = jumpset(&["apply", "--config", cfg.as_str(), "--json"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.json()["backend"], "legacy");
    });
}

#[test]
fn both_without_a_hint_is_mixed_and_apply_auto_refuses_and_changes_nothing() {
    netns(|| {
        ok("iptables-nft -t nat -A PREROUTING -j ACCEPT");
        ok("iptables-legacy -t filter -N SOMETHING");
        let j = detect();
        assert_eq!(verdict(&j), v("mixed", None));
        let ev = j["evidence"].to_string();
        assert!(
            ev.contains("iptables-nft") && ev.contains("iptables-legacy"),
            "{ev}"
        );
        let before = ok("iptables-nft-save; iptables-legacy-save") + &footprint();
        let cfg = config(&std::fs::read_to_string(fixture("harvester.toml")).unwrap());
        let run = jumpset(&["apply", "--config", cfg.as_str()]);
        assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("--backend nft or --backend legacy"),
            "{}",
            run.stderr
        );
        let after = ok("iptables-nft-save; iptables-legacy-save") + &footprint();
        let strip = |s: &str| -> String {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&after), strip(&before));
    });
}

#[test]
fn both_with_an_nft_hint_is_mixed_with_backend_nft() {
    netns(|| {
        ok("iptables-nft -t nat -A PREROUTING -j ACCEPT");
        ok("iptables-legacy -t nat -A PREROUTING -j ACCEPT && iptables-legacy -t mangle -N KUBE-KUBELET-CANARY");
        ok("iptables-nft -t mangle -N KUBE-IPTABLES-HINT");
        let j = detect();
        assert_eq!(verdict(&j), v("mixed", Some("nft")));
        assert!(j["evidence"].to_string().contains("KUBE-IPTABLES-HINT"));
    });
}

#[test]
fn a_legacy_hint_beats_more_nft_rules() {
    netns(|| {
        for i in 0..5 {
            ok(&format!(
                "iptables-nft -t filter -A INPUT -s 10.0.0.{i} -j ACCEPT"
            ));
        }
        ok("iptables-legacy -t mangle -N KUBE-IPTABLES-HINT");
        let j = detect();
        assert_eq!(verdict(&j), v("mixed", Some("legacy")));
    });
}

#[test]
fn families_that_disagree_make_a_mixed_host() {
    netns(|| {
        ok("iptables-nft -t nat -A PREROUTING -j ACCEPT");
        ok("ip6tables-legacy -t nat -A PREROUTING -j ACCEPT");
        let j = detect();
        assert_eq!(verdict(&j["families"]["ip"]), v("nft", Some("nft")));
        assert_eq!(verdict(&j["families"]["ip6"]), v("legacy", Some("legacy")));
        assert_eq!(verdict(&j), v("mixed", None));
    });
}

#[test]
fn an_incompatible_table_is_reported_not_mistaken_for_empty() {
    netns(|| {
        ok("nft add table ip nat && nft add chain ip nat PREROUTING '{ type nat hook prerouting priority -100; }' && nft add rule ip nat PREROUTING fib daddr type local counter accept");
        ok("nft add table inet firewalld");
        // iptables-nft-save omits the table: a rule counter over its output would see 0.
        assert!(ok("iptables-nft-save -t nat").contains("incompatible"));
        let j = detect();
        assert_eq!(verdict(&j), v("nft", Some("nft")));
        let ev = j["evidence"].to_string();
        assert!(ev.contains("incompatible"), "{ev}");
        assert!(ev.contains("inet firewalld"), "{ev}");
    });
}

#[test]
fn other_nftables_tables_alone_do_not_count() {
    netns(|| {
        ok("nft add table inet firewalld && nft add chain inet firewalld x && nft add rule inet firewalld x accept");
        let j = detect();
        assert_eq!(verdict(&j), v("none", None));
        assert!(j["evidence"].to_string().contains("inet firewalld"));
    });
}

#[test]
fn an_explicit_backend_never_makes_a_legacy_host_mixed() {
    netns(|| {
        ok(&format!(
            "iptables-legacy-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let before = footprint();
        let legacy_rules = ok("iptables-legacy-save -t nat | grep '^-A'");
        let cfg = config(&harvester_config());
        let run = jumpset(&["apply", "--backend", "nft", "--config", cfg.as_str()]);
        assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("would become mixed")
                && run.stdout.contains("--backend legacy")
                && run.stdout.contains("iptables-legacy is in use for ip: nat"),
            "the refusal names the evidence and what to pass:\n{}",
            run.stdout
        );
        assert_eq!(footprint(), before, "nothing was created");
        assert_eq!(ok("iptables-legacy-save -t nat | grep '^-A'"), legacy_rules);
        // status, check and plan only read: they still work (the table does not exist).
        let run = jumpset(&["plan", "--backend", "nft", "--config", cfg.as_str()]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(footprint(), before);
        // The explicit override does what it says.
        let run = jumpset(&[
            "apply",
            "--backend",
            "nft",
            "--allow-mixed-backends",
            "--config",
            cfg.as_str(),
        ]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(verdict(&detect()), v("mixed", None));
    });
}

#[test]
fn an_explicit_backend_never_makes_an_nft_host_mixed() {
    netns(|| {
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let before = footprint();
        let cfg = config(&harvester_config());
        let run = jumpset(&["apply", "--backend", "legacy", "--config", cfg.as_str()]);
        assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("would become mixed")
                && run.stdout.contains("--backend nft")
                && run.stdout.contains("iptables-nft is in use for ip: nat"),
            "{}",
            run.stdout
        );
        // No x_tables table was instantiated (a single query would have).
        assert_eq!(footprint(), before, "nothing was created");
        assert!(!ok("cat /proc/net/ip_tables_names 2>/dev/null").contains("nat"));
        // ip6 has nothing of either backend: an explicit backend may start it.
        let run = jumpset(&[
            "apply",
            "--backend",
            "legacy",
            "--family",
            "ip6",
            "--config",
            cfg.as_str(),
        ]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    });
}
