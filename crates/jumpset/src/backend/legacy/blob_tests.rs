//! Tests of the blob codec on tables captured from the kernel after iptables-legacy wrote
//! them. Each `testdata/NAME.bin` is the 84 bytes of `ipt_getinfo` followed by the entries
//! blob, produced from `testdata/NAME.rules` by
//! `cargo test --test legacy capture_testdata -- --ignored` (in a fresh network namespace:
//! `iptables-legacy-restore --counters < NAME.rules`, or `ip6tables-…` for `ip6-*`, then
//! GET_INFO + GET_ENTRIES); see tests/legacy.rs.

use super::*;
use proptest::prelude::*;

const CAPTURES: &[(&str, &[u8])] = &[
    (
        "ip-filter-policies",
        include_bytes!("../../../testdata/legacy/ip-filter-policies.bin"),
    ),
    (
        "ip-mangle-hooks",
        include_bytes!("../../../testdata/legacy/ip-mangle-hooks.bin"),
    ),
    (
        "ip-nat-empty",
        include_bytes!("../../../testdata/legacy/ip-nat-empty.bin"),
    ),
    (
        "ip-nat-harvester-broken",
        include_bytes!("../../../testdata/legacy/ip-nat-harvester-broken.bin"),
    ),
    (
        "ip-nat-varied",
        include_bytes!("../../../testdata/legacy/ip-nat-varied.bin"),
    ),
    (
        "ip6-nat-empty",
        include_bytes!("../../../testdata/legacy/ip6-nat-empty.bin"),
    ),
    (
        "ip6-nat-harvester-broken",
        include_bytes!("../../../testdata/legacy/ip6-nat-harvester-broken.bin"),
    ),
    (
        "ip6-nat-varied",
        include_bytes!("../../../testdata/legacy/ip6-nat-varied.bin"),
    ),
];

fn family_of(name: &str) -> Family {
    if name.starts_with("ip6-") {
        Family::Ip6
    } else {
        Family::Ip
    }
}

/// A capture: its family, GET_INFO and the blob.
fn capture(name: &str) -> (Family, Info, &'static [u8]) {
    let bytes = CAPTURES
        .iter()
        .find(|c| c.0 == name)
        .expect("known capture")
        .1;
    let info = Info::parse(&bytes[..INFO_SIZE]).unwrap();
    (family_of(name), info, &bytes[INFO_SIZE..])
}

fn table(name: &str) -> Table<'static> {
    let (f, info, blob) = capture(name);
    Table::decode(f, &info, blob).unwrap()
}

/// Rules without handles and counters: what must survive a rebuild.
fn shape(rules: &[Rule]) -> Vec<(Option<Vec<u8>>, Vec<Match>, Verdict)> {
    rules
        .iter()
        .map(|r| {
            (
                r.comment.as_ref().map(|c| c.bytes.clone()),
                r.matches.clone(),
                r.verdict.clone(),
            )
        })
        .collect()
}

/// Every entry of every chain of the table as decoded, as (chain, bytes): the fields the
/// kernel owns (comefrom, counters) and jump offsets masked, plus where each jump lands
/// by chain name (or that it falls through).
fn all_chains(t: &Table) -> Vec<(String, Vec<u8>)> {
    let l = t.layout;
    let mut out = Vec::new();
    for c in &t.chains {
        let name = t.chain_name(c).into_owned();
        let mut off = c.head;
        while off < c.end {
            let e = t.valid(off);
            let size = e.size(l);
            let mut b = t.blob[off as usize..off as usize + size].to_vec();
            b[l.counters..l.counters + 16].fill(0);
            b[l.next_offset + 2..l.next_offset + 6].fill(0); // comefrom
            let mut tag = String::new();
            if let Some(v) = e.standard(l).filter(|&v| v >= 0) {
                let at = e.target_offset(l) + EXT_HEADER;
                b[at..at + 4].fill(0);
                tag = if v as usize == off as usize + size {
                    "(falls through)".to_string()
                } else {
                    t.chain_at(v as u32)
                        .map_or("?".to_string(), |c| t.chain_name(c).into_owned())
                };
            }
            b.extend_from_slice(tag.as_bytes());
            out.push((name.clone(), b));
            off += size as u32;
        }
    }
    out
}

#[test]
fn every_capture_decodes_and_encodes_to_the_same_bytes() {
    for (name, _) in CAPTURES {
        let (f, info, blob) = capture(name);
        let t = Table::decode(f, &info, blob).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.num_entries(), info.num_entries as usize, "{name}");
        let (out, enc) = t.encode().unwrap();
        assert_eq!(out, blob, "{name}: encode(decode(blob)) != blob");
        assert_eq!(enc.num_entries, info.num_entries, "{name}");
        for h in 0..NUM_HOOKS {
            if info.valid_hooks & (1 << h) != 0 {
                assert_eq!(enc.hook_entry[h], info.hook_entry[h], "{name} hook {h}");
                assert_eq!(enc.underflow[h], info.underflow[h], "{name} hook {h}");
            } else {
                assert_eq!(
                    (enc.hook_entry[h], enc.underflow[h]),
                    (0, 0),
                    "{name}: libiptc sends 0 for absent hooks"
                );
            }
        }
        assert_eq!(
            enc.origin().collect::<Vec<_>>(),
            (0..t.num_entries()).map(Some).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(enc.runs.len(), 1, "{name}: one copy of the whole table");
        assert_eq!(Info::parse(&info.to_bytes()).unwrap(), info);
    }
}

#[test]
fn the_harvester_chain_decodes_as_iptables_legacy_save_shows_it() {
    for name in ["ip-nat-harvester-broken", "ip6-nat-harvester-broken"] {
        let t = table(name);
        assert_eq!(
            t.chain_names(),
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "CNI-HOSTPORT-DNAT",
                "KUBE-SERVICES",
                "OVN-PREROUTING",
                "cali-PREROUTING"
            ],
            "{name}: user chains sorted by name, like libiptc"
        );
        let rules = t.rules("PREROUTING").unwrap();
        let text: Vec<String> = rules.iter().map(Rule::iptables).collect();
        assert_eq!(
            text,
            [
                r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#,
                r#"-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING"#,
                r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#,
                r#"-m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
                r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#,
                "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
            ],
            "{name}"
        );
        assert_eq!(
            rules.iter().map(|r| r.handle).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert!(rules[..5].iter().all(Rule::is_bare_jump));
        assert!(!rules[5].is_bare_jump());
        assert_eq!(
            rules[5].matches,
            [Match::AddrType {
                source: 0,
                dest: crate::snapshot::ADDRTYPE_LOCAL,
                flags: 0
            }]
        );
        let want = if name.starts_with("ip6") { 0 } else { 9 };
        assert_eq!(
            rules[1].counters.unwrap().packets,
            want,
            "{name}: counters as restored"
        );
        assert!(t.rules("FORWARD").is_none(), "nat has no FORWARD");
    }
}

#[test]
fn conditions_gotos_fallthroughs_and_other_targets_are_never_bare_jumps() {
    for name in ["ip-nat-varied", "ip6-nat-varied"] {
        let v6 = name.starts_with("ip6");
        let rules = table(name).rules("PREROUTING").unwrap();
        let text: Vec<String> = rules.iter().map(Rule::iptables).collect();
        let (net, host) = if v6 {
            ("fd00::/8", "fd00::1/128")
        } else {
            ("10.0.0.0/8", "192.168.1.1/32")
        };
        assert_eq!(
            text,
            [
                r#"-m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING"#.to_string(),
                format!("-s {net} -j KUBE-SERVICES"),
                r#"-m comment --comment "kube-ovn prerouting rules" -i eth0 -p tcp -j OVN-PREROUTING"#.into(),
                r#"-m comment --comment "kube-ovn prerouting rules" -g OVN-PREROUTING"#.into(),
                format!("-m comment --comment counting -d {host}"),
                r#"-m comment --comment "kubernetes service portals" -m comment --comment second -j KUBE-SERVICES"#.into(),
                "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".into(),
                "-p udp -m udp -j DNAT".into(),
                "! -i lo -j ACCEPT".into(),
                r#"-m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#.into(),
            ],
            "{name}"
        );
        let bare: Vec<bool> = rules.iter().map(Rule::is_bare_jump).collect();
        assert_eq!(
            bare,
            [true, false, false, true, false, false, false, false, false, true],
            "{name}"
        );
        assert_eq!(rules[3].verdict, Verdict::Goto("OVN-PREROUTING".into()));
        assert_eq!(
            rules[4].verdict,
            Verdict::None,
            "a rule without a target falls through"
        );
        assert_eq!(
            rules[0].counters,
            Some(Counters {
                packets: 5,
                bytes: 300
            })
        );
        assert_eq!(
            rules[6].counters,
            Some(Counters {
                packets: 7,
                bytes: 700
            })
        );
    }
    let rules = table("ip-filter-policies").rules("INPUT").unwrap();
    assert_eq!(rules[1].iptables(), "-f -j DROP");
    let fwd = table("ip-filter-policies").rules("FORWARD").unwrap();
    assert_eq!(fwd[1].verdict, Verdict::Goto("DOCKER".into()));
    assert_eq!(fwd[1].iptables(), "-o docker0 -g DOCKER");
}

#[test]
fn the_broken_chain_rebuilt_is_the_healthy_chain_and_nothing_else_moves() {
    for name in ["ip-nat-harvester-broken", "ip6-nat-harvester-broken"] {
        let mut t = table(name);
        let before = all_chains(&t);
        let old = t.rules("PREROUTING").unwrap();
        t.set_rules(
            "PREROUTING",
            &[Slot::Keep(1), Slot::Keep(2), Slot::Keep(3), Slot::Keep(5)],
        )
        .unwrap();
        let (blob, enc) = t.encode().unwrap();
        let (f, info, _) = capture(name);
        let back = Table::decode(f, &enc.info(&info), &blob).unwrap();
        let rules = back.rules("PREROUTING").unwrap();
        assert_eq!(
            shape(&rules),
            shape(&[
                old[1].clone(),
                old[2].clone(),
                old[3].clone(),
                old[5].clone()
            ])
        );
        assert_eq!(
            rules.iter().map(|r| r.counters).collect::<Vec<_>>(),
            [1, 2, 3, 5].map(|i| old[i].counters)
        );
        // Every other entry is byte for byte what it was (kernel-owned fields aside).
        let other = |v: Vec<(String, Vec<u8>)>| {
            v.into_iter()
                .filter(|(c, _)| c != "PREROUTING")
                .collect::<Vec<_>>()
        };
        assert_eq!(other(all_chains(&back)), other(before));
        // Old indices of the kept entries, for the counters.
        let origin: Vec<_> = enc.origin().collect();
        assert_eq!(origin.len(), 17);
        assert_eq!(&origin[..5], &[Some(1), Some(2), Some(3), Some(5), Some(6)]);
        assert!(origin.iter().all(Option::is_some));
    }
}

#[test]
fn a_new_jump_is_byte_for_byte_what_iptables_legacy_wrote() {
    // Rule 1 of the capture was written by iptables-legacy-restore from
    // `-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING`.
    for name in ["ip-nat-harvester-broken", "ip6-nat-harvester-broken"] {
        let (f, info, blob) = capture(name);
        let mut t = table(name);
        let mut slots = vec![Slot::Jump {
            comment: b"kube-ovn prerouting rules",
            target: "OVN-PREROUTING",
        }];
        slots.extend((1..6).map(Slot::Keep));
        t.set_rules("PREROUTING", &slots).unwrap();
        let (out, enc) = t.encode().unwrap();
        let l = Layout::of(f);
        let theirs = &blob[..t.rule_bytes("PREROUTING").unwrap()[0].len()];
        let mut theirs = theirs.to_vec();
        // Only the fields the kernel owns differ: comefrom (the hook bitmask it computed)
        // and the counters; we send zeros there as libiptc does.
        theirs[l.next_offset + 2..l.next_offset + 6].fill(0);
        theirs[l.counters..l.counters + 16].fill(0);
        assert_eq!(&out[..theirs.len()], &theirs[..], "{name}");
        assert_eq!(theirs.len(), if f == Family::Ip { 440 } else { 496 });
        assert_eq!(out.len(), info.size as usize);
        assert_eq!(
            enc.origin().next(),
            Some(None),
            "a new rule has no old counters"
        );
    }
}

#[test]
fn a_new_chain_is_what_iptables_n_writes_and_goes_in_name_order() {
    for name in ["ip-nat-empty", "ip6-nat-empty"] {
        let (f, info, _) = capture(name);
        let mut t = table(name);
        assert!(t.ensure_chain("OVN-PREROUTING").unwrap());
        assert!(!t.ensure_chain("OVN-PREROUTING").unwrap(), "created once");
        assert!(t.ensure_chain("CNI-HOSTPORT-DNAT").unwrap());
        assert!(t.ensure_chain("cali-PREROUTING").unwrap());
        assert!(t.ensure_chain("KUBE-SERVICES").unwrap());
        assert!(!t.ensure_chain("KUBE-SERVICES").unwrap(), "created once");
        t.set_rules(
            "PREROUTING",
            &[
                Slot::Jump {
                    comment: b"kube-ovn prerouting rules",
                    target: "OVN-PREROUTING",
                },
                Slot::Jump {
                    comment: b"kubernetes service portals",
                    target: "KUBE-SERVICES",
                },
            ],
        )
        .unwrap();
        let (blob, enc) = t.encode().unwrap();
        // The same table as iptables-legacy-restore wrote it (harvester capture minus the
        // rules we did not add), kernel-owned fields aside.
        let back = Table::decode(f, &enc.info(&info), &blob).unwrap();
        assert_eq!(
            back.chain_names(),
            [
                "PREROUTING",
                "INPUT",
                "OUTPUT",
                "POSTROUTING",
                "CNI-HOSTPORT-DNAT",
                "KUBE-SERVICES",
                "OVN-PREROUTING",
                "cali-PREROUTING"
            ]
        );
        let full = name.replace("empty", "harvester-broken");
        let (_, their_info, _) = capture(&full);
        let mut theirs = table(&full);
        theirs
            .set_rules("PREROUTING", &[Slot::Keep(0), Slot::Keep(3)])
            .unwrap();
        let (their_blob, their_enc) = theirs.encode().unwrap();
        let theirs = Table::decode(f, &their_enc.info(&their_info), &their_blob).unwrap();
        assert_eq!(all_chains(&back), all_chains(&theirs), "{name}");
        assert_eq!(
            enc.origin().filter(|o| o.is_some()).count(),
            5,
            "the empty table's entries"
        );
    }
}

#[test]
fn a_rule_without_a_target_keeps_falling_through_to_whatever_follows_it() {
    let (f, info, _) = capture("ip-nat-varied");
    let mut t = table("ip-nat-varied");
    // Insert right after rule 5 (no target): it must now fall through to the new rule.
    let mut slots: Vec<Slot> = (0..5).map(Slot::Keep).collect();
    slots.push(Slot::Jump {
        comment: b"x",
        target: "KUBE-SERVICES",
    });
    slots.extend((5..10).map(Slot::Keep));
    t.set_rules("PREROUTING", &slots).unwrap();
    let (blob, enc) = t.encode().unwrap();
    let back = Table::decode(f, &enc.info(&info), &blob).unwrap();
    let rules = back.rules("PREROUTING").unwrap();
    assert_eq!(rules[4].verdict, Verdict::None);
    assert_eq!(rules[5].verdict, Verdict::Jump("KUBE-SERVICES".into()));
    assert_eq!(rules.len(), 11);
}

#[test]
fn refused_edits_change_nothing() {
    let mut t = table("ip-nat-harvester-broken");
    let orig = t.clone();
    for slots in [
        vec![Slot::Keep(0), Slot::Keep(0)],
        vec![Slot::Keep(6)],
        vec![Slot::Jump {
            comment: b"x",
            target: "NO-SUCH-CHAIN",
        }],
        vec![Slot::Jump {
            comment: &[b'x'; 256],
            target: "KUBE-SERVICES",
        }],
        vec![Slot::Jump {
            comment: b"a\0b",
            target: "KUBE-SERVICES",
        }],
        vec![Slot::Jump {
            comment: b"x",
            target: "PREROUTING",
        }],
    ] {
        assert!(
            matches!(
                t.set_rules("PREROUTING", &slots),
                Err(BlobError::Refused(_))
            ),
            "{slots:?}"
        );
        assert_eq!(t, orig);
    }
    assert!(t.set_rules("FORWARD", &[]).is_err());
    assert!(t.ensure_chain("INPUT").is_err());
    assert!(t.ensure_chain("").is_err());
    assert!(t.ensure_chain(&"X".repeat(29)).is_err());
    assert_eq!(t, orig);
}

#[test]
fn a_jump_into_the_managed_chain_is_refused() {
    // Point rule 1's jump at rule 3 of the same chain: legal for the kernel, never written
    // by iptables, and moving rules under it would change what it does.
    let (f, info, blob) = capture("ip-nat-harvester-broken");
    let mut blob = blob.to_vec();
    let t = Table::decode(f, &info, &blob).unwrap();
    let r = t.rule_bytes("PREROUTING").unwrap();
    let third = (r[0].len() + r[1].len()) as u32;
    let verdict_at = 400 + EXT_HEADER;
    blob[verdict_at..verdict_at + 4].copy_from_slice(&third.to_ne_bytes());
    let mut t = Table::decode(f, &info, &blob).unwrap();
    assert!(matches!(
        t.rules("PREROUTING").unwrap()[0].verdict,
        Verdict::Other(_)
    ));
    assert_eq!(
        t.encode().unwrap().0,
        blob,
        "still decodes and encodes losslessly"
    );
    assert!(matches!(
        t.set_rules("PREROUTING", &[Slot::Keep(0)]),
        Err(BlobError::Refused(_))
    ));
}

#[test]
fn malformed_tables_are_errors() {
    let (f, info, blob) = capture("ip-nat-harvester-broken");
    let dec = |i: &Info, b: &[u8]| Table::decode(f, i, b).map(|_| ());
    // Truncated.
    assert!(dec(&info, &blob[..blob.len() - 8]).is_err());
    let mut i = info.clone();
    i.size -= 176;
    assert!(
        dec(&i, &blob[..blob.len() - 176]).is_err(),
        "no final ERROR entry"
    );
    // Wrong counts, hooks.
    let mut i = info.clone();
    i.num_entries += 1;
    assert!(dec(&i, blob).is_err());
    let mut i = info.clone();
    i.num_entries -= 1;
    assert!(dec(&i, blob).is_err());
    let mut i = info.clone();
    i.hook_entry[0] += 8;
    assert!(dec(&i, blob).is_err());
    let mut i = info.clone();
    i.underflow[1] = i.underflow[0];
    assert!(dec(&i, blob).is_err());
    let mut i = info.clone();
    i.valid_hooks = 0;
    assert!(dec(&i, blob).is_err());
    // A next_offset of 0 (would loop forever), odd, or past the end.
    for v in [0u16, 7, 0xfff8] {
        let mut b = blob.to_vec();
        b[90..92].copy_from_slice(&v.to_ne_bytes());
        assert!(dec(&info, &b).is_err(), "next_offset {v}");
    }
    // A jump to an offset that is not an entry.
    let mut b = blob.to_vec();
    b[432..436].copy_from_slice(&12u32.to_ne_bytes());
    assert!(dec(&info, &b).is_err());
    // A match_size of 0.
    let mut b = blob.to_vec();
    b[112..114].copy_from_slice(&0u16.to_ne_bytes());
    assert!(dec(&info, &b).is_err());
    assert!(Info::parse(&[0; 83]).is_err());
}

fn capture_strategy() -> impl Strategy<Value = &'static str> {
    prop::sample::select(CAPTURES.iter().map(|c| c.0).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random byte edits, truncations and GET_INFO values: an error or a table that
    /// encodes, never a panic.
    #[test]
    fn mutated_blobs_never_panic(
        name in capture_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        info_edit in prop::option::of((0usize..INFO_SIZE, any::<u8>())),
    ) {
        let bytes = CAPTURES.iter().find(|c| c.0 == name).unwrap().1;
        let mut b = bytes.to_vec();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if let Some((at, v)) = info_edit {
            b[at] = v;
        }
        if truncate {
            let keep = INFO_SIZE + cut.index(b.len() - INFO_SIZE);
            b.truncate(keep);
        }
        let Ok(info) = Info::parse(&b[..INFO_SIZE]) else { return Ok(()) };
        if let Ok(mut t) = Table::decode(family_of(name), &info, &b[INFO_SIZE..]) {
            let _ = t.encode();
            let _ = t.rules("PREROUTING");
            let _ = t.rules("INPUT");
            let _ = t.ensure_chain("NEW-CHAIN");
            if let Some(n) = t.rules("OUTPUT").map(|r| r.len()) {
                let mut slots: Vec<Slot> = (0..n).rev().map(Slot::Keep).collect();
                slots.push(Slot::Jump { comment: b"c", target: "NEW-CHAIN" });
                if t.set_rules("OUTPUT", &slots).is_ok() {
                    let _ = t.encode();
                }
            }
        }
    }

    /// Arbitrary bytes as a blob.
    #[test]
    fn random_blobs_never_panic(blob in prop::collection::vec(any::<u8>(), 0..2048), v6 in any::<bool>()) {
        let f = if v6 { Family::Ip6 } else { Family::Ip };
        let info = Info {
            name: "nat".into(),
            valid_hooks: 0x1b,
            hook_entry: [0; NUM_HOOKS],
            underflow: [0; NUM_HOOKS],
            num_entries: 8,
            size: blob.len() as u32,
        };
        let _ = Table::decode(f, &info, &blob);
    }
}

/// A plan for one chain: which old rules stay (in order, any subset) and new jumps mixed in.
fn chain_edit() -> impl Strategy<Value = (&'static str, usize, Vec<(bool, usize)>, Vec<usize>)> {
    (
        capture_strategy(),
        // Which built-in chain.
        0usize..8,
        // (is a new jump?, index): old rule index (mod len) or target chain index.
        prop::collection::vec((any::<bool>(), 0usize..64), 0..24),
        prop::collection::vec(0usize..64, 0..3),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// A rebuilt blob decodes to exactly the planned chain, every other chain unchanged,
    /// and the counters' origin map names each kept entry.
    #[test]
    fn a_rebuilt_table_decodes_to_exactly_the_planned_chain((name, pick, edit, new_chains) in chain_edit()) {
        let (f, info, _) = capture(name);
        let mut t = table(name);
        let builtins: Vec<String> = t.chain_names().into_iter().filter(|c| t.has_builtin(c)).map(String::from).collect();
        let chain = builtins[pick % builtins.len()].clone();
        let old = t.rules(&chain).unwrap();
        let created: Vec<String> = new_chains.iter().map(|i| format!("NEW-{i}")).collect();
        for c in &created {
            t.ensure_chain(c).unwrap();
        }
        let mut users: Vec<String> = t.chain_names().into_iter().filter(|c| t.has_user_chain(c)).map(|c| c.into_owned()).collect();
        users.extend(created.iter().filter(|c| !users.contains(c)).cloned().collect::<Vec<_>>());
        // Every chain but the edited one, with the created chains in place.
        let (with_chains, shape) = t.encode().unwrap();
        let before = all_chains(&Table::decode(f, &shape.info(&info), &with_chains).unwrap());
        let comments: Vec<Vec<u8>> = (0..edit.len()).map(|i| format!("jump {i}").into_bytes()).collect();
        let mut used = vec![false; old.len()];
        let mut slots = Vec::new();
        let mut want = Vec::new();
        for (k, &(new, i)) in edit.iter().enumerate() {
            if new || old.is_empty() {
                if users.is_empty() { continue; }
                let target = &users[i % users.len()];
                slots.push(Slot::Jump { comment: &comments[k], target });
                want.push((Some(comments[k].clone()), vec![], Verdict::Jump(target.clone()), None));
            } else {
                let i = i % old.len();
                if std::mem::replace(&mut used[i], true) { continue; }
                slots.push(Slot::Keep(i));
                let r = &old[i];
                want.push((r.comment.as_ref().map(|c| c.bytes.clone()), r.matches.clone(), r.verdict.clone(), Some(i)));
            }
        }
        t.set_rules(&chain, &slots).unwrap();
        let (blob, enc) = t.encode().unwrap();
        let back = Table::decode(f, &enc.info(&info), &blob).unwrap();
        prop_assert_eq!(back.num_entries(), enc.num_entries as usize);
        let got = back.rules(&chain).unwrap();
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(g.comment.as_ref().map(|c| c.bytes.clone()), w.0.clone());
            prop_assert_eq!(&g.matches, &w.1);
            prop_assert_eq!(&g.verdict, &w.2);
            let counters = w.3.map_or(Counters::default(), |i| old[i].counters.unwrap());
            prop_assert_eq!(g.counters, Some(counters));
        }
        let other = |v: Vec<(String, Vec<u8>)>| v.into_iter().filter(|(c, _)| *c != chain).collect::<Vec<_>>();
        prop_assert_eq!(other(all_chains(&back)), other(before));
        // Kept entries map to their old index; new ones to none; each old index at most once.
        let kept: Vec<usize> = enc.origin().flatten().collect();
        let mut dedup = kept.clone();
        dedup.sort_unstable();
        dedup.dedup();
        prop_assert_eq!(dedup.len(), kept.len());
        prop_assert_eq!(kept.len(), info.num_entries as usize - old.len() + used.iter().filter(|u| **u).count());
        // And the rebuilt table re-encodes to itself.
        prop_assert_eq!(back.encode().unwrap().0, blob);
    }
}

#[test]
fn chain_summaries_give_hooks_policies_and_rule_counts_as_the_rules_file_has_them() {
    // ip-filter-policies.rules: INPUT DROP, FORWARD DROP, OUTPUT ACCEPT; user chains.
    let t = table("ip-filter-policies");
    let s = t.chain_summaries();
    let builtin: Vec<(&str, Option<u32>, Option<Verdict>)> = s
        .iter()
        .filter(|c| c.hook.is_some())
        .map(|c| (c.name.as_str(), c.hook, c.policy.clone()))
        .collect();
    assert_eq!(
        builtin,
        [
            ("INPUT", Some(1), Some(Verdict::Drop)),
            ("FORWARD", Some(2), Some(Verdict::Drop)),
            ("OUTPUT", Some(3), Some(Verdict::Accept)),
        ]
    );
    let (rules, users) = t.census();
    assert_eq!(s.iter().map(|c| c.rules).sum::<usize>(), rules);
    let user_names: Vec<&str> = s
        .iter()
        .filter(|c| c.hook.is_none())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(user_names, users);
    assert!(s
        .iter()
        .filter(|c| c.hook.is_none())
        .all(|c| c.policy.is_none()));
    // nat of the Harvester case: PREROUTING holds its six rules, the user chains none.
    let t = table("ip-nat-harvester-broken");
    let pre = t
        .chain_summaries()
        .into_iter()
        .find(|c| c.name == "PREROUTING")
        .unwrap();
    assert_eq!(
        (pre.hook, pre.rules, pre.policy),
        (Some(0), 6, Some(Verdict::Accept))
    );
}

#[test]
fn the_fingerprint_ignores_counters_and_offsets_and_sees_rules_and_names() {
    let (f, info, blob) = capture("ip-nat-harvester-broken");
    let fp = |t: &Table| {
        let mut out = Vec::new();
        assert!(t.fingerprint("PREROUTING", &mut out));
        out
    };
    let t = table("ip-nat-harvester-broken");
    let base = fp(&t);
    let l = Layout::of(f);
    let first = t.rule_bytes("PREROUTING").unwrap()[0].len();

    // Counters (and comefrom) change with every packet: same fingerprint.
    let mut b = blob.to_vec();
    b[l.counters..l.counters + 16].copy_from_slice(&[7; 16]);
    b[first + l.counters..first + l.counters + 8].copy_from_slice(&[1; 8]);
    assert_eq!(fp(&Table::decode(f, &info, &b).unwrap()), base);

    // Every jump offset moves (a chain created before the targets): same fingerprint.
    let mut moved = table("ip-nat-harvester-broken");
    assert!(moved.ensure_chain("AAA").unwrap());
    let (mb, menc) = moved.encode().unwrap();
    let moved = Table::decode(f, &menc.info(&info), &mb).unwrap();
    assert_ne!(
        moved.rule_bytes("PREROUTING").unwrap()[0][400..440],
        blob[400..440],
        "the jump offset did move"
    );
    assert_eq!(fp(&moved), base);

    // A rule's bytes change (one comment byte): another fingerprint.
    let mut b = blob.to_vec();
    b[l.entry_size + EXT_HEADER] ^= 1;
    assert_ne!(fp(&Table::decode(f, &info, &b).unwrap()), base);

    // The chain a jump lands on is renamed, the chain's bytes stay the same (`iptables
    // -E` keeps the offsets when the name sorts to the same place): another fingerprint.
    let head = t
        .chains
        .iter()
        .find(|c| t.user_name(c) == b"OVN-PREROUTING")
        .unwrap();
    let name_at = head.head as usize + l.entry_size + EXT_HEADER;
    let mut b = blob.to_vec();
    b[name_at..name_at + 14].copy_from_slice(b"OVN-PREROUTINX");
    let renamed = Table::decode(f, &info, &b).unwrap();
    assert_eq!(
        renamed.rule_bytes("PREROUTING").unwrap(),
        t.rule_bytes("PREROUTING").unwrap()
    );
    assert_ne!(fp(&renamed), base);
    assert!(
        !t.fingerprint("FORWARD", &mut Vec::new()),
        "nat has no FORWARD"
    );
}
