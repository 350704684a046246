//! `jumpset bench --json` end to end, as root (each run builds its own throwaway network
//! namespace): every field of `docs/contracts.md#bench` is there with sane values. No timing
//! thresholds: the figures depend on the machine.

mod support;

use serde_json::Value;
use support::*;

fn timing(j: &Value, key: &str) -> (f64, f64) {
    let t = &j[key];
    let p50 = t["p50"]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}.p50 missing: {j}"));
    let p99 = t["p99"]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}.p99 missing: {j}"));
    assert!(p50 > 0.0, "{key}.p50 = {p50}");
    assert!(p50 <= p99, "{key}: p50 {p50} > p99 {p99}");
    (p50, p99)
}

/// Run the bench and check the contract; returns the JSON.
fn bench(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json", "--rules", "100", "--iterations", "20"];
    all.extend_from_slice(args);
    let run = jumpset(&all);
    assert_eq!(
        run.code, 0,
        "jumpset {all:?}:\n{}{}",
        run.stdout, run.stderr
    );
    let j = run.json();
    for key in [
        "noop_reconcile_us",
        "raw_dump_floor_us",
        "repair_reconcile_us",
        "repair_backtoback_us",
    ] {
        timing(&j, key);
    }
    let rps = j["reconciles_per_sec"]
        .as_f64()
        .expect("reconciles_per_sec");
    assert!(rps > 0.0);
    let base = j["exec_baselines_us"]
        .as_object()
        .expect("exec_baselines_us");
    for key in [
        "iptables_list_chain",
        "iptables_save_table",
        "iptables_restore_fix",
        "iptables_restore_insert",
    ] {
        let v = base
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("baseline {key} missing (CI installs iptables): {j}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    assert_eq!(base.len(), 4, "a flat object of the four baselines: {j}");
    // The kernel's floor of each figure, in the same run.
    let floor = &j["kernel_floor_us"];
    for key in ["noop", "repair", "repair_backtoback"] {
        timing(floor, key);
    }
    assert_eq!(floor["noop"], j["raw_dump_floor_us"], "{j}");
    for key in [
        "noop_over_kernel_floor",
        "repair_over_kernel_floor",
        "backtoback_over_kernel_floor",
        "restore_insert_over_repair",
    ] {
        assert!(
            j["ratios"][key].as_f64().is_some_and(|r| r > 0.0),
            "{key}: {j}"
        );
    }
    // Peak memory of `apply` and of the daemon: more than nothing, less than a GiB.
    for key in ["apply", "daemon"] {
        let rss = j["peak_rss_bytes"][key].as_u64().unwrap_or(0);
        assert!(
            rss > 1 << 20 && rss < 1 << 30,
            "peak_rss_bytes.{key} = {rss}: {j}"
        );
    }
    assert_eq!(j["rules"], 100);
    assert_eq!(j["family"], "ip");
    assert_eq!(j["chain_rules"], 4, "the Harvester chain, converged");
    assert_eq!(j["samples"]["noop_reconcile_us"], 20);
    assert!(
        j["at_0_rules"]["noop_reconcile_us"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    for t in j["targets"].as_array().expect("targets") {
        assert!(t["ratio"].as_f64().is_some_and(|r| r > 0.0), "{t}");
        assert!(t["met"].is_boolean(), "{t}");
    }
    assert!(j["notes"].as_array().unwrap().is_empty(), "{j}");
    j
}

#[test]
fn nft_bench_reports_every_field() {
    let j = bench(&["--backend", "nft"]);
    assert_eq!(j["backend"], "nft");
    assert_eq!(j["comment_encoding"], "xt");
    assert_eq!(j["loaded_with"], "iptables-nft-restore");
}

#[test]
fn nft_bench_with_userdata_comments() {
    let j = bench(&["--backend", "nft", "--comment-encoding", "userdata"]);
    assert_eq!(j["comment_encoding"], "userdata");
    assert!(j["targets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "backtoback_over_spaced"));
}

#[test]
fn legacy_bench_reports_every_field() {
    let j = bench(&["--backend", "legacy"]);
    assert_eq!(j["backend"], "legacy");
    assert_eq!(j["loaded_with"], "iptables-legacy-restore");
    // The table as the kernel reports it: 100 kube-proxy rules take more than 30 KiB.
    let table = j["table_bytes"].as_u64().expect("table_bytes");
    assert!(table > 30 << 10, "{table}");
    assert!(j["ratios"]["peak_rss_over_table_bytes"].as_f64().is_some());
}

#[test]
fn the_text_table_names_every_measurement() {
    let run = jumpset(&["bench", "--iterations", "5"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for needle in [
        "no-op reconcile",
        "raw dump floor",
        "repair, spaced 50 ms",
        "repair, back-to-back",
        "kernel floor of the repair, spaced",
        "kernel floor of the repair, back-to-back",
        "peak RSS of `jumpset apply`",
        "peak RSS of `jumpset daemon`",
        "reconciles per second",
        "iptables-nft -t nat -S PREROUTING",
        "iptables-nft-save -t nat",
        "iptables-nft-restore --noflush (delete + re-insert, spaced)",
        "iptables-nft-restore --noflush (insert the missing jump)",
        "targets:",
    ] {
        assert!(
            run.stdout.contains(needle),
            "{needle:?} missing:\n{}",
            run.stdout
        );
    }
}

#[test]
fn usage_and_privilege_errors() {
    let run = jumpset(&[
        "bench",
        "--backend",
        "legacy",
        "--comment-encoding",
        "userdata",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = jumpset(&["bench", "--backend", "auto"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let out = sh(&format!(
        "setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {} bench",
        bin()
    ));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_SYS_ADMIN"));
}

#[test]
fn the_generated_table_is_the_fixture_script_s_output() {
    let script = jumpset_testkit::table::script();
    for n in [0usize, 100, 1234] {
        let out = sh(&format!("python3 {} {n}", script.display()));
        if !out.status.success() {
            eprintln!("python3 is not available: skipping the comparison with the script");
            return;
        }
        assert_eq!(
            jumpset_testkit::table::kube_proxy_scale(n),
            String::from_utf8(out.stdout).unwrap(),
            "N = {n}"
        );
    }
}
