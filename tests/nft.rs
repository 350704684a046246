//! The nf_tables backend against the real kernel, each test in a fresh network namespace,
//! with the real iptables-nft and nft as the other agents and as the oracles.

mod support;

use jumpset::backend::nft::NftBackend;
use jumpset::backend::{Backend, BackendError};
use jumpset::plan::Plan;
use jumpset::reconcile::{self, Goal};
use jumpset::snapshot::{Family, Snapshot};
use jumpset::spec::{ChainSpec, Config};
use support::*;

const OVN_JUMP: &str =
    r#"-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#;

fn load_broken(restore: &str) {
    ok(&format!(
        "{restore} < {}",
        fixture("harvester-broken.rules").display()
    ));
}

#[test]
fn broken_seed_chain_becomes_healthy_in_one_transaction() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let cfg = config(&harvester_config());
        assert_eq!(
            jumpset(&["check", "--config", cfg.as_str()]).code,
            1,
            "drift before the repair"
        );
        let (run, commits) =
            count_commits(|| jumpset(&["apply", "--config", cfg.as_str(), "--json"]));
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(commits, 1, "exactly one kernel transaction");
        let j = run.json();
        assert_eq!(j["committed"], true);
        assert_eq!(j["ops"].as_array().unwrap().len(), 2);
        assert_eq!(
            j["generation_after"].as_u64().unwrap(),
            j["generation_before"].as_u64().unwrap() + 1
        );
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
        assert_eq!(jumpset(&["check", "--config", cfg.as_str()]).code, 0);

        // A second apply commits nothing and leaves every handle as it was.
        let handles = nft_handles("ip", "nat", "PREROUTING");
        let (run, commits) =
            count_commits(|| jumpset(&["apply", "--config", cfg.as_str(), "--json"]));
        assert_eq!(run.code, 0);
        assert_eq!(commits, 0, "a converged chain must not be written");
        assert_eq!(run.json()["committed"], false);
        assert_eq!(nft_handles("ip", "nat", "PREROUTING"), handles);
    });
}

#[test]
fn ipv6_is_reconciled_the_same_way() {
    netns(|| {
        load_broken("ip6tables-nft-restore");
        let cfg = config(&harvester_config());
        let args = ["--config", cfg.as_str(), "--family", "ip6"];
        assert_eq!(jumpset(&[&["check"], &args[..]].concat()).code, 1);
        let (run, commits) = count_commits(|| jumpset(&[&["apply"], &args[..]].concat()));
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(commits, 1);
        assert_eq!(
            saved_chain("ip6tables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
        assert_eq!(jumpset(&[&["check"], &args[..]].concat()).code, 0);
        // The ip family was not touched.
        assert!(ok("iptables-nft-save -t nat")
            .lines()
            .all(|l| !l.starts_with("-A")));
    });
}

#[test]
fn both_families_are_separate_transactions() {
    netns(|| {
        load_broken("iptables-nft-restore");
        load_broken("ip6tables-nft-restore");
        let cfg = config(
            &harvester_config().replace("families = [\"ip\"]", "families = [\"ip\", \"ip6\"]"),
        );
        let (run, commits) =
            count_commits(|| jumpset(&["apply", "--config", cfg.as_str(), "--json"]));
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(commits, 2, "one transaction per family");
        let j = run.json();
        assert_eq!(j["families"]["ip"]["committed"], true);
        assert_eq!(j["families"]["ip6"]["committed"], true);
        for save in ["iptables-nft-save", "ip6tables-nft-save"] {
            assert_eq!(
                saved_chain(save, "PREROUTING"),
                fixture_chain("harvester-healthy.rules", "PREROUTING")
            );
        }
    });
}

#[test]
fn a_table_created_from_nothing_is_one_iptables_nft_keeps_working_with() {
    netns(|| {
        let cfg = config(&harvester_config());
        let (run, commits) = count_commits(|| jumpset(&["apply", "--config", cfg.as_str()]));
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(commits, 1, "table, chains and rule in one transaction");
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            vec![OVN_JUMP]
        );
        let save = ok("iptables-nft-save -t nat");
        assert!(save.contains(":OVN-PREROUTING - [0:0]"), "{save}");
        assert!(save.contains(":PREROUTING ACCEPT"), "{save}");
        // The base chain is exactly iptables-nft's: nat hook prerouting priority -100.
        let nft = ok("nft list chain ip nat PREROUTING 2>/dev/null");
        assert!(
            nft.contains("type nat hook prerouting priority dstnat; policy accept;"),
            "{nft}"
        );
        // iptables-nft keeps working with the table: the other agents arrive.
        ok("iptables-nft -t nat -N cali-PREROUTING && iptables-nft -t nat -I PREROUTING 1 -m comment --comment cali:6gwbT8clXdHdC1b1 -j cali-PREROUTING");
        ok("iptables-nft -t nat -N KUBE-SERVICES && iptables-nft -t nat -A PREROUTING -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES");
        ok("iptables-nft -t nat -A INPUT -j ACCEPT");
        assert_eq!(jumpset(&["check", "--config", cfg.as_str()]).code, 0);
        assert_eq!(saved_chain("iptables-nft-save", "PREROUTING").len(), 3);
    });
}

#[test]
fn foreign_rules_keep_handles_and_counters_even_when_iptables_cannot_express_them() {
    netns(|| {
        // Counters on the foreign rules, and a rule written with nft that iptables cannot
        // parse (a native fib expression).
        let rules = std::fs::read_to_string(fixture("harvester-broken.rules"))
            .unwrap()
            .replace(
                "-A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\"",
                "[7:700] -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\"",
            )
            .replace(
                "-A PREROUTING -m addrtype",
                "[9:900] -A PREROUTING -m addrtype",
            );
        ok_stdin("iptables-nft-restore --counters", &rules);
        ok("nft add rule ip nat PREROUTING fib saddr type local counter packets 3 bytes 300 jump KUBE-SERVICES");
        // `nft -a` is the oracle: every rule with its handle and counters. (It does not
        // print xt comment matches, so our jumps are told apart by their target.)
        let rules_of = |listing: &str| -> Vec<String> {
            listing
                .lines()
                .map(str::trim)
                .filter(|l| l.contains("# handle") && !l.starts_with("chain "))
                .map(str::to_string)
                .collect()
        };
        let foreign = |listing: &str| -> Vec<String> {
            rules_of(listing)
                .into_iter()
                .filter(|l| !l.contains("jump OVN-PREROUTING"))
                .collect()
        };
        let before = ok("nft -a list chain ip nat PREROUTING 2>/dev/null");
        assert_eq!(foreign(&before).len(), 4, "{before}");
        let cfg = config(&harvester_config());
        let run = jumpset(&["apply", "--config", cfg.as_str()]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let after = ok("nft -a list chain ip nat PREROUTING 2>/dev/null");
        // Same rules, same handles, same counters, same order.
        assert_eq!(foreign(&before), foreign(&after));
        assert!(
            after.contains("fib saddr type local counter packets 3 bytes 300 jump KUBE-SERVICES"),
            "{after}"
        );
        assert!(
            after.contains("counter packets 7 bytes 700 jump cali-PREROUTING"),
            "{after}"
        );
        let ours: Vec<String> = rules_of(&after)
            .into_iter()
            .filter(|l| l.contains("jump OVN-PREROUTING"))
            .collect();
        assert_eq!(ours.len(), 1, "{after}");
        // The kept copy is the one that was already in place (its handle survives).
        assert!(rules_of(&before).contains(&ours[0]), "{after}");
        // And jumpset's own view agrees: in order.
        assert_eq!(jumpset(&["check", "--config", cfg.as_str()]).code, 0);
    });
}

#[test]
fn a_chain_with_no_valid_place_is_a_conflict_with_duplicates_still_removed() {
    netns(|| {
        ok_stdin(
            "iptables-nft-restore",
            "*nat\n:cali-PREROUTING - [0:0]\n:OVN-PREROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n\
             -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING\n\
             -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n\
             -A PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\nCOMMIT\n",
        );
        let kube_handle = nft_handles("ip", "nat", "PREROUTING")[0];
        let cfg = config(&harvester_config());
        let run = jumpset(&["apply", "--config", cfg.as_str(), "--json"]);
        assert_eq!(run.code, 5, "{}{}", run.stdout, run.stderr);
        let j = run.json();
        let c = &j["conflicts"][0];
        assert_eq!(c["unmet"], "after cali-PREROUTING");
        assert_eq!(c["blocking"][0]["handle"].as_u64(), Some(kube_handle));
        assert_eq!(c["blocking"][0]["target"], "KUBE-SERVICES");
        let chain = saved_chain("iptables-nft-save", "PREROUTING");
        assert_eq!(
            chain.iter().filter(|l| l.contains("kube-ovn")).count(),
            1,
            "{chain:?}"
        );
        assert_eq!(
            chain[0], OVN_JUMP,
            "before constraints are met first: {chain:?}"
        );
        // The text output names the blocking rule too.
        let run = jumpset(&["apply", "--config", cfg.as_str()]);
        assert_eq!(run.code, 5);
        assert!(
            run.stdout.contains("blocked by rule 2 (handle"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("nothing to do"), "{}", run.stdout);
    });
}

/// For both comment encodings the real iptables-nft treats our rule as its own.
fn iptables_treats_our_rule_as_its_own(encoding: &str) {
    netns(|| {
        let cfg = config(&harvester_config().replace(
            "create_chain = true",
            &format!("create_chain = true\n  comment_encoding = \"{encoding}\""),
        ));
        let run = jumpset(&["apply", "--config", cfg.as_str()]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let listed = ok("iptables-nft -t nat -S PREROUTING");
        assert!(listed.lines().any(|l| l == OVN_JUMP), "{listed}");
        let spec = "-m comment --comment 'kube-ovn prerouting rules' -j OVN-PREROUTING";
        ok(&format!("iptables-nft -t nat -C PREROUTING {spec}"));
        // save | restore --noflush keeps it (as one rule, with the same text).
        let saved = ok("iptables-nft-save -t nat");
        ok("iptables-nft -t nat -F PREROUTING");
        ok_stdin("iptables-nft-restore --noflush", &saved);
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            vec![OVN_JUMP]
        );
        assert_eq!(jumpset(&["check", "--config", cfg.as_str()]).code, 0);
        // -D by that spec finds it.
        ok(&format!("iptables-nft -t nat -D PREROUTING {spec}"));
        assert!(saved_chain("iptables-nft-save", "PREROUTING").is_empty());
        assert_eq!(jumpset(&["check", "--config", cfg.as_str()]).code, 1);
    });
}

#[test]
fn iptables_nft_treats_the_xt_encoded_rule_as_its_own() {
    iptables_treats_our_rule_as_its_own("xt");
}

#[test]
fn iptables_nft_treats_the_userdata_encoded_rule_as_its_own() {
    iptables_treats_our_rule_as_its_own("userdata");
}

#[test]
fn the_userdata_encoding_writes_no_xt_match() {
    netns(|| {
        let cfg = config(
            &harvester_config().replace("families", "comment_encoding = \"userdata\"\nfamilies"),
        );
        assert_eq!(jumpset(&["apply", "--config", cfg.as_str()]).code, 0);
        let dbg = ok("nft --debug=netlink list chain ip nat PREROUTING 2>/dev/null");
        assert!(!dbg.contains("match name comment"), "{dbg}");
        assert!(
            dbg.contains("immediate reg 0 jump -> OVN-PREROUTING"),
            "{dbg}"
        );
        let nft = ok("nft list chain ip nat PREROUTING 2>/dev/null");
        assert!(
            nft.contains("comment \"kube-ovn prerouting rules\""),
            "{nft}"
        );
    });
}

/// A backend that lets another agent commit between our read and our write, once.
struct Interloper {
    inner: NftBackend,
    script: Option<&'static str>,
}

impl Backend for Interloper {
    fn name(&self) -> &'static str {
        "nft"
    }
    fn read(&mut self, f: Family, t: &str, c: &str) -> Result<Snapshot, BackendError> {
        self.inner.read(f, t, c)
    }
    fn apply(
        &mut self,
        s: &Snapshot,
        spec: &ChainSpec,
        p: &Plan,
    ) -> Result<jumpset::backend::Applied, BackendError> {
        if let Some(script) = self.script.take() {
            ok(script);
        }
        self.inner.apply(s, spec, p)
    }
    fn generation(&mut self) -> Result<u32, BackendError> {
        self.inner.generation()
    }
}

#[test]
fn a_concurrent_writer_makes_the_batch_stale_and_the_reconcile_replans() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let spec = Config::from_toml(&harvester_config()).unwrap().chains()[0].clone();
        // Directly: a write planned from an old generation is refused, nothing applied.
        let mut nft = NftBackend::open().unwrap();
        let snap = nft.read(Family::Ip, "nat", "PREROUTING").unwrap();
        let plan = reconcile::plan_for(Goal::Converge, &snap, &spec);
        ok("iptables-nft -t nat -N OTHER && iptables-nft -t nat -I PREROUTING 1 -j OTHER");
        let before = ok("iptables-nft-save -t nat | grep '^-A'");
        match nft.apply(&snap, &spec, &plan) {
            Err(BackendError::Stale { planned }) => assert_eq!(planned, snap.generation),
            other => panic!("expected a stale write, got {other:?}"),
        }
        assert_eq!(
            ok("iptables-nft-save -t nat | grep '^-A'"),
            before,
            "nothing applied"
        );

        // Through reconcile: the race is forced once, the reconcile re-plans and wins,
        // and the interloper's rule survives.
        let mut b = Interloper {
            inner: nft,
            script: Some(
                "iptables-nft -t nat -N LATE && iptables-nft -t nat -A PREROUTING -j LATE",
            ),
        };
        let o = reconcile::reconcile(&mut b, Family::Ip, &spec, Goal::Converge).unwrap();
        assert_eq!(o.retries, 1);
        assert!(o.committed);
        let chain = saved_chain("iptables-nft-save", "PREROUTING");
        assert_eq!(
            chain.first().map(String::as_str),
            Some("-A PREROUTING -j OTHER")
        );
        assert_eq!(
            chain.last().map(String::as_str),
            Some("-A PREROUTING -j LATE")
        );
        assert_eq!(chain.iter().filter(|l| l.contains("kube-ovn")).count(), 1);
    });
}

#[test]
fn status_and_plan_report_owners_and_iptables_lines() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let cfg = config(&harvester_config());
        let st = jumpset(&["status", "--config", cfg.as_str(), "--json"]);
        assert_eq!(st.code, 0, "{}", st.stderr);
        let j = st.json();
        assert_eq!(j["backend"], "nft");
        assert_eq!(j["family"], "ip");
        assert_eq!(j["in_order"], false);
        let rules = j["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 6);
        let owners: Vec<&str> = rules.iter().map(|r| r["owner"].as_str().unwrap()).collect();
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
        assert_eq!(rules[2]["in_place"], true);
        assert_eq!(rules[0]["in_place"], false);
        let handles = nft_handles("ip", "nat", "PREROUTING");
        let jh: Vec<u64> = rules
            .iter()
            .map(|r| r["handle"].as_u64().unwrap())
            .collect();
        assert_eq!(jh, handles, "status reports the kernel's handles");

        let plan = jumpset(&["plan", "--config", cfg.as_str()]);
        assert_eq!(plan.code, 0);
        let dels: Vec<&str> = plan
            .stdout
            .lines()
            .filter(|l| l.starts_with("-D "))
            .collect();
        assert_eq!(dels.len(), 2, "{}", plan.stdout);
        assert!(dels[0].starts_with(&format!("-D PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING  # handle {}", handles[0])), "{}", dels[0]);
        let pj = jumpset(&["plan", "--config", cfg.as_str(), "--json"]).json();
        assert_eq!(pj["ops"][0]["op"], "delete");
        assert_eq!(pj["ops"][0]["handle"].as_u64(), Some(handles[0]));
        // plan does not write.
        assert_eq!(nft_handles("ip", "nat", "PREROUTING"), handles);
    });
}

#[test]
fn cleanup_removes_only_the_owned_jumps() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let cfg = config(&harvester_config());
        let run = jumpset(&["cleanup", "--config", cfg.as_str(), "--json"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let chain = saved_chain("iptables-nft-save", "PREROUTING");
        let want: Vec<String> = fixture_chain("harvester-broken.rules", "PREROUTING")
            .into_iter()
            .filter(|l| !l.contains("kube-ovn"))
            .collect();
        assert_eq!(chain, want);
    });
}

#[test]
fn the_demo_repairs_the_incident_and_leaves_its_caller_untouched() {
    netns(|| {
        let before = ok("nft list ruleset");
        let run = jumpset(&["demo"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("matches harvester-healthy.rules"),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("nothing committed"), "{}", run.stdout);
        assert_eq!(
            ok("nft list ruleset"),
            before,
            "the demo wrote into its caller's namespace"
        );
    });
}

#[test]
fn no_program_is_executed() {
    if sh("command -v strace").status.code() != Some(0) {
        panic!("strace is needed for this test (apt-get install strace)");
    }
    netns(|| {
        load_broken("iptables-nft-restore");
        let cfg = config(&harvester_config());
        let trace = format!(
            "{}/strace-{}.txt",
            env!("CARGO_TARGET_TMPDIR"),
            std::process::id()
        );
        let out = sh(&format!(
            "strace -f -e trace=execve -o {trace} {} apply --config {}",
            bin(),
            cfg.as_str()
        ));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = std::fs::read_to_string(&trace).unwrap();
        let execs: Vec<&str> = t.lines().filter(|l| l.contains("execve(")).collect();
        assert_eq!(execs.len(), 1, "only jumpset itself: {execs:#?}");
        assert!(execs[0].contains(bin()));
        let _ = std::fs::remove_file(trace);
    });
}

#[test]
fn missing_privilege_exits_3_and_names_the_capability() {
    netns(|| {
        let cfg = config(&harvester_config());
        let out = sh(&format!(
            "setpriv --inh-caps=-net_admin --bounding-set=-net_admin {} apply --config {}",
            bin(),
            cfg.as_str()
        ));
        assert_eq!(out.status.code(), Some(3), "{:?}", out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_NET_ADMIN"));
        let out = sh(&format!(
            "setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {} demo",
            bin()
        ));
        assert_eq!(out.status.code(), Some(3), "{:?}", out);
        assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_SYS_ADMIN"));
    });
}

#[test]
fn bad_usage_and_bad_config_exit_2() {
    netns(|| {
        let bad = config("[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"X\"\ncomment = \"x\"\nbefor = [\"Y\"]\n");
        let run = jumpset(&["apply", "--config", bad.as_str()]);
        assert_eq!(run.code, 2);
        assert!(
            run.stderr.contains("befor") && run.stderr.contains("line 7"),
            "{}",
            run.stderr
        );
        let run = jumpset(&["check", "--config", "/nonexistent/jumpset.toml"]);
        assert_eq!(run.code, 2);
        assert_eq!(jumpset(&["apply", "--bogus"]).code, 2);
        assert_eq!(jumpset(&["apply", "--backend", "iptables"]).code, 2);
        // Nothing was written.
        assert_eq!(ok("nft list ruleset"), "");
    });
}

/// Split a datagram into its netlink messages.
fn messages(d: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= d.len() {
        let len = u32::from_ne_bytes(d[off..off + 4].try_into().unwrap()) as usize;
        assert!(len >= 16 && off + len <= d.len());
        out.push(&d[off..off + len]);
        off += (len + 3) & !3;
    }
    out
}

#[test]
fn our_decoder_and_netlink_packet_netfilter_agree_on_a_live_dump() {
    use jumpset::backend::nft::codec::{self, Body};
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_netfilter::nftables as o;
    use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
    netns(|| {
        load_broken("iptables-nft-restore");
        ok("nft add rule ip nat PREROUTING fib saddr type local counter jump KUBE-SERVICES");
        ok("nft add rule ip nat PREROUTING meta l4proto udp counter jump KUBE-SERVICES comment '\"udp rule\"'");
        let mut nft = NftBackend::open().unwrap();
        let dump = nft.dump_raw(Family::Ip, "nat", "PREROUTING").unwrap();
        let mut compared = 0;
        for d in &dump {
            for raw in messages(d) {
                let ours = codec::parse(raw).unwrap().remove(0);
                let Body::NewRule(rule) = ours.body else {
                    continue;
                };
                let msg =
                    NetlinkMessage::<NetfilterMessage>::deserialize(raw).expect("oracle decodes");
                let NetlinkPayload::InnerMessage(nf) = msg.payload else {
                    panic!()
                };
                let NetfilterMessageInner::NfTables(o::NfTablesMessage::NewRule(theirs)) = nf.inner
                else {
                    panic!("oracle: not a rule")
                };
                let mut names = Vec::new();
                let mut handle = 0;
                let mut chain = String::new();
                for a in theirs.attributes {
                    match a {
                        o::RuleAttribute::Handle(h) => handle = h,
                        o::RuleAttribute::Chain(c) => chain = c,
                        o::RuleAttribute::Expressions(list) => {
                            for elem in list {
                                if let o::ListAttribute::Element(ea) = elem {
                                    for x in ea {
                                        if let o::ExpressionAttribute::Name(n) = x {
                                            names.push(n);
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let our_names: Vec<String> = rule
                    .exprs()
                    .map(|e| String::from_utf8(e.unwrap().name().to_vec()).unwrap())
                    .collect();
                let our_chain = String::from_utf8(rule.chain().to_vec()).unwrap();
                assert_eq!(
                    (rule.rule.handle, our_chain, our_names),
                    (handle, chain, names)
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 8, "every live rule compared");
        // And the handles are the ones nft shows.
        let snap = nft.read(Family::Ip, "nat", "PREROUTING").unwrap();
        let ours: Vec<u64> = snap.rules.iter().map(|r| r.handle).collect();
        assert_eq!(ours, nft_handles("ip", "nat", "PREROUTING"));
    });
}

#[test]
fn wait_returns_once_the_chains_converge_and_fails_at_its_timeout() {
    netns(|| {
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let cfg = config(&harvester_config());
        let run = jumpset(&["wait", "--timeout", "300ms", "--config", cfg.as_str()]);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("not converged after 0.3 s"),
            "{}",
            run.stdout
        );
        // A bootstrap script waits while someone else (the daemon, here `apply`) repairs.
        let waiter = std::process::Command::new(bin())
            .args(["wait", "--timeout", "20s", "--config", cfg.as_str()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert_eq!(jumpset(&["apply", "--config", cfg.as_str()]).code, 0);
        let out = waiter.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(String::from_utf8_lossy(&out.stdout).contains("converged"));
        // Reads only: the wait itself never wrote (one commit: apply's).
        let (_, commits) = count_commits(|| jumpset(&["wait", "--config", cfg.as_str()]));
        assert_eq!(commits, 0);
    });
}

/// The Harvester spec plus a jump the broken chain lacks (so `apply` inserts one).
fn with_missing_jump(config: String) -> String {
    config
        + "\n  [[chain.jump]]\n  target = \"AGENT-PREROUTING\"\n  comment = \"agent prerouting rules\"\n  after = [\"KUBE-SERVICES\"]\n"
}

#[test]
fn an_insert_reports_the_handle_nft_lists_for_the_new_rule() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let cfg = config(&with_missing_jump(harvester_config()));
        let run = jumpset(&["apply", "--config", cfg.as_str(), "--json"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let j = run.json();
        let inserts: Vec<&serde_json::Value> = j["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|op| op["op"] == "insert")
            .collect();
        assert_eq!(inserts.len(), 1, "{j}");
        let handle = inserts[0]["handle"]
            .as_u64()
            .expect("the insert has a handle");
        // The oracle: nft's own listing, by the rule's target (nft does not print an xt
        // comment match).
        let listed = ok("nft -a list chain ip nat PREROUTING");
        let line = listed
            .lines()
            .find(|l| l.contains("jump AGENT-PREROUTING "))
            .unwrap_or_else(|| panic!("the new rule is listed:\n{listed}"));
        assert!(
            line.trim_end().ends_with(&format!("# handle {handle}")),
            "report says handle {handle}, nft lists: {line}"
        );
        // Converged: nothing more to plan.
        let plan = jumpset(&["plan", "--config", cfg.as_str(), "--json"]);
        assert!(plan.json()["ops"].as_array().unwrap().is_empty());
    });
}

#[test]
fn an_anchored_write_is_refused_whole_when_an_anchor_is_gone_and_generation_0_guards_nothing() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let spec = Config::from_toml(&harvester_config()).unwrap().chains()[0].clone();
        let mut nft = NftBackend::open().unwrap();
        let snap = nft.read(Family::Ip, "nat", "PREROUTING").unwrap();
        let plan = reconcile::plan_for(Goal::Converge, &snap, &spec);
        assert!(!plan.ops.is_empty());
        let before = ok("iptables-nft-save -t nat | grep '^-A'");

        // A snapshot that could not be taken at one generation guards no write: refused
        // before anything is sent (0 in BEGIN would mean "no check").
        let mut unguarded = snap.clone();
        unguarded.generation = 0;
        match nft.apply(&unguarded, &spec, &plan) {
            Err(BackendError::Stale { planned: 0 }) => {}
            other => panic!("expected a stale write, got {other:?}"),
        }
        assert_eq!(ok("iptables-nft-save -t nat | grep '^-A'"), before);

        // Another agent commits elsewhere: a guarded write is stale, an anchored one
        // goes through, its anchors being there.
        ok("iptables-nft -t filter -A FORWARD -j ACCEPT");
        assert!(matches!(
            nft.apply(&snap, &spec, &plan),
            Err(BackendError::Stale { .. })
        ));
        let applied = nft.apply_anchored(&snap, &spec, &plan).unwrap();
        assert!(applied.committed && applied.expected_generation.is_none());
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );

        // One of the handles the write deletes or inserts before is gone: the kernel
        // refuses it whole (ENOENT), reported as stale; nothing applied.
        load_broken("iptables-nft-restore");
        let other = nft.read(Family::Ip, "nat", "PREROUTING").unwrap();
        let plan = reconcile::plan_for(Goal::Converge, &other, &spec);
        let anchors: Vec<u64> = plan
            .ops
            .iter()
            .filter_map(|op| match *op {
                jumpset::plan::Op::Delete { handle, .. } => Some(handle),
                jumpset::plan::Op::Insert { before_handle, .. } => before_handle,
                _ => None,
            })
            .collect();
        assert!(!anchors.is_empty());
        ok(&format!(
            "nft delete rule ip nat PREROUTING handle {}",
            anchors[0]
        ));
        let before = ok("iptables-nft-save -t nat | grep '^-A'");
        match nft.apply_anchored(&other, &spec, &plan) {
            Err(BackendError::Stale { .. }) => {}
            r => panic!("expected a refusal, got {r:?}"),
        }
        assert_eq!(
            ok("iptables-nft-save -t nat | grep '^-A'"),
            before,
            "nothing applied"
        );
    });
}

/// The netlink requests `jumpset apply --config CFG` sends (one line each), under strace.
fn sends(cfg: &str) -> (Run, Vec<String>) {
    let trace = format!(
        "{}/strace-sends-{}-{:?}.txt",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id(),
        std::thread::current().id()
    )
    .replace(['(', ')'], "");
    let out = sh(&format!(
        "strace -f -qq -e trace=sendto,sendmsg -o {trace} {} apply --config {cfg} --json",
        bin()
    ));
    let t = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let lines = t
        .lines()
        .filter(|l| l.contains("sendto(") || l.contains("sendmsg("))
        .map(str::to_string)
        .collect();
    (run, lines)
}

#[test]
fn a_repair_is_one_read_and_one_batch_with_no_lookup_and_no_read_back() {
    if sh("command -v strace").status.code() != Some(0) {
        panic!("strace is needed for this test (apt-get install strace)");
    }
    netns(|| {
        load_broken("iptables-nft-restore");
        let cfg = config(&harvester_config());
        let (run, sent) = sends(cfg.as_str());
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.json()["committed"], true);
        // GETGEN, GETCHAIN (what the write needs to know of the base chain) and the
        // GETRULE dump in one sendmsg, then the batch: no lookup of its own, no second read.
        assert_eq!(sent.len(), 2, "{sent:#?}");
        for m in ["NFT_MSG_GETGEN", "NFT_MSG_GETCHAIN", "NFT_MSG_GETRULE"] {
            assert!(sent[0].contains(m), "{m}: {}", sent[0]);
        }
        assert!(sent[1].contains("NFNL_MSG_BATCH_BEGIN"), "{}", sent[1]);
        assert!(!sent[1].contains("NFT_MSG_GETCHAIN") && !sent[1].contains("NFT_MSG_NEWCHAIN"));
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
        // An insert of a jump to an existing chain no rule jumps to yet: still two
        // sends (the kernel checks the target inside the batch); the kernel echoes the
        // new rule with its handle. (A chain that does not exist costs a second batch:
        // a_missing_target_chain_is_refused_or_created_from_the_kernel_s_answer.)
        ok("iptables-nft -t nat -N AGENT-PREROUTING");
        let cfg = config(&with_missing_jump(harvester_config()));
        let (run, sent) = sends(cfg.as_str());
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(sent.len(), 2, "{sent:#?}");
        let insert = run.json()["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["op"] == "insert")
            .cloned()
            .unwrap();
        assert!(insert["handle"].as_u64().is_some(), "{insert}");
        // A no-op is the read alone.
        let (run, sent) = sends(cfg.as_str());
        assert_eq!(run.code, 0);
        assert_eq!(sent.len(), 1, "{sent:#?}");
    });
}

#[test]
fn a_missing_target_chain_is_refused_or_created_from_the_kernel_s_answer() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let jump = |create: bool| {
            format!(
                "{}\n  [[chain.jump]]\n  target = \"NEW-CHAIN\"\n  comment = \"new chain\"\n  after = [\"KUBE-SERVICES\"]\n  create_chain = {create}\n",
                harvester_config()
            )
        };
        let before = ok("iptables-nft-save -t nat | grep -v '^#'");
        let cfg = config(&jump(false));
        let (run, commits) = count_commits(|| jumpset(&["apply", "--config", cfg.as_str()]));
        assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
        let msg = format!("{}{}", run.stdout, run.stderr);
        assert!(
            msg.contains("NEW-CHAIN") && msg.contains("create_chain = false"),
            "{msg}"
        );
        assert_eq!(commits, 0);
        assert_eq!(
            ok("iptables-nft-save -t nat | grep -v '^#'"),
            before,
            "nothing written"
        );

        let cfg = config(&jump(true));
        let (run, commits) = count_commits(|| jumpset(&["apply", "--config", cfg.as_str()]));
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(commits, 1, "the refused first batch committed nothing");
        assert!(ok("nft list chain ip nat NEW-CHAIN").contains("chain NEW-CHAIN"));
        let chain = saved_chain("iptables-nft-save", "PREROUTING");
        assert_eq!(
            chain.iter().filter(|l| l.ends_with("-j NEW-CHAIN")).count(),
            1,
            "{chain:#?}"
        );
        assert_eq!(jumpset(&["check", "--config", cfg.as_str()]).code, 0);
    });
}

#[test]
fn a_known_chain_recreated_elsewhere_is_asked_about_again_and_refused() {
    netns(|| {
        load_broken("iptables-nft-restore");
        let spec = Config::from_toml(&harvester_config()).unwrap().chains()[0].clone();
        let mut b = NftBackend::open().unwrap();
        // The first reconcile learns what the chain is (the read's GETCHAIN) and repairs it.
        assert!(
            reconcile::reconcile(&mut b, Family::Ip, &spec, Goal::Converge)
                .unwrap()
                .committed
        );
        // Another agent recreates it at another priority, with rules of its own: no rule
        // the backend saw is left to vouch for it.
        ok("nft flush chain ip nat PREROUTING && nft delete chain ip nat PREROUTING");
        ok("nft add chain ip nat PREROUTING '{ type nat hook prerouting priority 0; }'");
        ok("nft add rule ip nat PREROUTING counter jump KUBE-SERVICES");
        let err = reconcile::reconcile(&mut b, Family::Ip, &spec, Goal::Converge).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("not the base chain iptables-nft makes") && msg.contains("priority 0"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 4);
        assert!(!ok("nft list chain ip nat PREROUTING").contains("OVN-PREROUTING"));
    });
}
