//! Unit tests of the spec: the config file, the JSON form, the builder, drop-ins.

use super::*;

const HARVESTER: &str = include_str!("../../testdata/harvester.toml");

fn load_err(text: &str) -> SpecError {
    Config::from_toml(text).expect_err("config should be rejected")
}

fn one_jump(extra: &str) -> String {
    format!(
        "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"OVN-PREROUTING\"\ncomment = \"kube-ovn prerouting rules\"\n{extra}\n"
    )
}

#[test]
fn harvester_scenario_loads_with_defaults() {
    let c = Config::from_toml(HARVESTER).unwrap();
    assert_eq!(c.backend, BackendChoice::Auto);
    assert_eq!(c.families, vec![Family::Ip]);
    assert_eq!(c.xtables_lock_timeout, Duration::from_secs(10));
    assert!(!c.expect_anchors());
    assert_eq!(
        c.chains[0].anchors(),
        ["cali-PREROUTING", "KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]
    );
    assert_eq!(c.daemon, DaemonConfig::default());
    let j = &c.chains[0].jumps[0];
    assert_eq!(j.target, "OVN-PREROUTING");
    assert_eq!(j.after, vec!["cali-PREROUTING"]);
    assert_eq!(j.before, vec!["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]);
    assert!(j.create_chain);
    assert_eq!(j.encoding, CommentEncoding::Xt);
}

#[test]
fn every_key_of_the_design_is_read() {
    let c = Config::from_toml(
        r#"
backend = "nft"
families = ["ip", "ip6"]
comment_encoding = "userdata"
xtables_lock_timeout = "0s"
expect_anchors = true
[[chain]]
table = "mangle"
chain = "OUTPUT"
  [[chain.jump]]
  target = "A"
  comment = "a"
  create_chain = false
  [[chain.jump]]
  target = "B"
  comment = "b"
  comment_encoding = "xt"
  after = ["A"]
[daemon]
resync_interval = "500ms"
metrics_listen = ""
cleanup_on_exit = true
"#,
    )
    .unwrap();
    assert_eq!(c.backend, BackendChoice::Nft);
    assert_eq!(c.families, vec![Family::Ip, Family::Ip6]);
    assert_eq!(c.xtables_lock_timeout, Duration::ZERO);
    assert!(c.expect_anchors());
    assert!(
        c.chains[0].anchors().is_empty(),
        "B after A: A is owned, not an anchor"
    );
    assert_eq!(c.chains[0].jumps[0].encoding, CommentEncoding::Userdata);
    assert!(!c.chains[0].jumps[0].create_chain);
    assert_eq!(c.chains[0].jumps[1].encoding, CommentEncoding::Xt);
    assert_eq!(c.daemon.resync_interval, Duration::from_millis(500));
    assert_eq!(c.daemon.metrics_listen, None);
    assert!(c.daemon.cleanup_on_exit);
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = load_err(&one_jump("priority = 3"));
    assert!(e.message.contains("priority"), "{e}");
    assert_eq!(e.line, Some(7), "{e}");
    let e = load_err("bakend = \"nft\"\n");
    assert!(e.to_string().contains("bakend"), "{e}");
}

#[test]
fn wrong_types_are_errors() {
    let e = load_err(&one_jump("after = \"cali-PREROUTING\""));
    assert!(e.to_string().contains("line 7"), "{e}");
    assert_eq!(e.key, "chain[0].jump[0].after", "{e}");
    assert!(
        e.to_string()
            .starts_with("chain[0].jump[0].after (line 7): invalid type"),
        "{e}"
    );
    let e = load_err("backend = \"iptables\"\n");
    assert!(e.to_string().contains("iptables"), "{e}");
    let e = load_err(&one_jump("create_chain = \"yes\""));
    assert!(e.to_string().contains("line 7"), "{e}");
    assert_eq!(e.key, "chain[0].jump[0].create_chain", "{e}");
    let e = load_err("expect_anchors = \"yes\"\n");
    assert_eq!((e.key.as_str(), e.line), ("expect_anchors", Some(1)), "{e}");
    let e = load_err("[daemon]\ncleanup_on_exit = 1\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("daemon.cleanup_on_exit", Some(2)),
        "{e}"
    );
}

#[test]
fn the_json_form_is_the_config_file_with_lists() {
    let json = r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [
        {"target": "OVN-PREROUTING", "comment": "kube-ovn prerouting rules",
         "after": ["cali-PREROUTING"], "before": ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]}]}]}"#;
    assert_eq!(
        Config::from_json(json).unwrap(),
        Config::from_toml(HARVESTER).unwrap()
    );
    let c = Config::from_json(
        r#"{"backend": "legacy", "families": ["ip6"], "xtables_lock_timeout": "2s",
            "expect_anchors": true,
            "chains": [{"table": "nat", "chain": "PREROUTING",
            "jumps": [{"target": "X", "comment": "x", "create_chain": false,
                       "comment_encoding": "userdata"}]}]}"#,
    )
    .unwrap();
    assert_eq!(c.backend(), BackendChoice::Legacy);
    assert_eq!(c.families(), [Family::Ip6]);
    assert_eq!(c.xtables_lock_timeout(), Duration::from_secs(2));
    assert!(c.expect_anchors());
    assert!(!c.chains()[0].jumps()[0].create_chain());
    let e = Config::from_json(r#"{"expect_anchors": 1}"#).unwrap_err();
    assert_eq!(e.key, "expect_anchors", "{e}");
    // Errors name the key in the JSON form, the line where serde_json knows it.
    let e = Config::from_json(
        "{\"chains\": [{\"table\": \"nat\", \"chain\": \"PREROUTING\",\n \"jumps\": [{\"target\": \"X\", \"comment\": \"x\", \"after\": \"Y\"}]}]}",
    )
    .unwrap_err();
    assert_eq!(
        (e.key.as_str(), e.line),
        ("chains[0].jumps[0].after", Some(2)),
        "{e}"
    );
    let e = Config::from_json(r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": "x", "priority": 1}]}]}"#).unwrap_err();
    assert_eq!(e.key, "chains[0].jumps[0].priority", "{e}");
    let e = Config::from_json(r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": "x", "after": ["X"]}]}]}"#).unwrap_err();
    assert_eq!(e.key, "chains[0].jumps[0].after", "{e}");
    let e = Config::from_json(r#"{"families": ["inet"]}"#).unwrap_err();
    assert_eq!(e.key, "families[0]", "{e}");
    assert!(Config::from_json("{} {}").is_err());
    assert!(Config::from_json("[").is_err());
}

#[test]
fn an_unknown_key_is_named_by_its_whole_path() {
    let e = load_err(&one_jump("priority = 3"));
    assert_eq!(e.key, "chain[0].jump[0].priority", "{e}");
    assert!(e.message.contains("unknown field"), "{e}");
}

fn harvester_builder() -> ConfigBuilder {
    Config::builder().chain(
        ChainSpec::builder("nat", "PREROUTING").jump(
            JumpSpec::builder("OVN-PREROUTING", "kube-ovn prerouting rules")
                .after(["cali-PREROUTING"])
                .before(["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]),
        ),
    )
}

#[test]
fn the_builder_makes_what_the_config_file_makes() {
    assert_eq!(
        harvester_builder().build().unwrap(),
        Config::from_toml(HARVESTER).unwrap()
    );
    let c = harvester_builder()
        .backend(BackendChoice::Legacy)
        .families([Family::Ip6, Family::Ip])
        .comment_encoding(CommentEncoding::Userdata)
        .xtables_lock_timeout(Duration::ZERO)
        .expect_anchors(true)
        .build()
        .unwrap();
    assert_eq!(c.backend(), BackendChoice::Legacy);
    assert_eq!(c.families(), [Family::Ip6, Family::Ip]);
    assert_eq!(c.xtables_lock_timeout(), Duration::ZERO);
    assert!(c.expect_anchors());
    assert_eq!(
        harvester_builder().expect_anchors(true).build().unwrap(),
        Config::from_toml(&format!("expect_anchors = true\n{HARVESTER}")).unwrap()
    );
    assert_eq!(
        c.chains()[0].jumps()[0].encoding(),
        CommentEncoding::Userdata
    );
    assert!(c.chain("nat", "PREROUTING").is_some());
    assert!(c.chain("nat", "OUTPUT").is_none());
}

#[test]
fn the_builder_is_validated_like_the_config_file() {
    let chain = |j: JumpBuilder| {
        Config::builder()
            .chain(ChainSpec::builder("nat", "PREROUTING").jump(j))
            .build()
            .unwrap_err()
    };
    let e = chain(JumpSpec::builder("OVN-PREROUTING", ""));
    assert_eq!((e.key.as_str(), e.line), ("chain[0].jump[0].comment", None));
    let e = chain(JumpSpec::builder("bad name", "x"));
    assert_eq!(e.key, "chain[0].jump[0].target");
    let e = chain(JumpSpec::builder("A", "x").after(["B"]).before(["B"]));
    assert_eq!(e.key, "chain[0].jump[0].before");
    let e = chain(JumpSpec::builder("A", &*"x".repeat(254)).encoding(CommentEncoding::Userdata));
    assert!(e.message.contains("at most 253"), "{e}");
    let e = Config::builder()
        .chain(
            ChainSpec::builder("nat", "PREROUTING")
                .jump(JumpSpec::builder("A", "a").before(["B"]))
                .jump(JumpSpec::builder("B", "b").before(["A"])),
        )
        .build()
        .unwrap_err();
    assert!(e.message.contains("cycle"), "{e}");
    let e = Config::builder()
        .chain(ChainSpec::builder("nat", "FORWARD").jump(JumpSpec::builder("A", "a")))
        .build()
        .unwrap_err();
    assert_eq!(e.key, "chain[0].chain");
    let e = harvester_builder().families([]).build().unwrap_err();
    assert_eq!(e.key, "families");
    let e = harvester_builder()
        .families([Family::Ip, Family::Ip])
        .build()
        .unwrap_err();
    assert!(e.message.contains("twice"), "{e}");
    let d = DaemonConfig {
        resync_interval: Duration::ZERO,
        ..DaemonConfig::default()
    };
    let e = harvester_builder().daemon(d).build().unwrap_err();
    assert_eq!(e.key, "daemon.resync_interval");
    let e = Config::builder()
        .chain(ChainSpec::builder("nat", "PREROUTING"))
        .build()
        .unwrap_err();
    assert!(e.message.contains("nothing to manage"), "{e}");
}

#[test]
fn comments_are_checked_for_the_encoding() {
    let e = load_err(&one_jump("").replace("kube-ovn prerouting rules", ""));
    assert_eq!(e.key, "chain[0].jump[0].comment");
    let long = "x".repeat(255);
    assert!(Config::from_toml(&one_jump("").replace("kube-ovn prerouting rules", &long)).is_ok());
    let e = load_err(
        &one_jump("comment_encoding = \"userdata\"").replace("kube-ovn prerouting rules", &long),
    );
    assert!(e.message.contains("at most 253"), "{e}");
    let e = load_err(&one_jump("").replace("kube-ovn prerouting rules", &"x".repeat(256)));
    assert!(e.message.contains("at most 255"), "{e}");
    assert_eq!(e.line, Some(6));
}

#[test]
fn tables_chains_and_names_are_checked() {
    let e = load_err(&one_jump("").replace("\"nat\"", "\"security\""));
    assert_eq!(e.key, "chain[0].table");
    let e = load_err(&one_jump("").replace("\"PREROUTING\"", "\"FORWARD\""));
    assert_eq!(e.key, "chain[0].chain");
    assert!(
        e.message.contains("PREROUTING, INPUT, OUTPUT, POSTROUTING"),
        "{e}"
    );
    for bad in ["", "has space", "-x", "RETURN", "INPUT", &"L".repeat(29)] {
        let e = load_err(&one_jump("").replace("OVN-PREROUTING", bad));
        assert_eq!(e.key, "chain[0].jump[0].target", "{bad}: {e}");
    }
    assert!(Config::from_toml(&one_jump("").replace("OVN-PREROUTING", &"L".repeat(28))).is_ok());
    let e = load_err(&one_jump("after = [\"bad name\"]"));
    assert_eq!(e.key, "chain[0].jump[0].after");
}

#[test]
fn self_reference_duplicates_and_cycles_are_errors() {
    let e = load_err(&one_jump("after = [\"OVN-PREROUTING\"]"));
    assert!(e.message.contains("itself"), "{e}");
    let dup =
        one_jump("") + "[[chain.jump]]\ntarget = \"X\"\ncomment = \"kube-ovn prerouting rules\"\n";
    let e = load_err(&dup);
    assert_eq!(e.key, "chain[0].jump[1].comment");
    assert_eq!(e.line, Some(10));
    let cyc = one_jump("before = [\"B\"]")
        + "[[chain.jump]]\ntarget = \"B\"\ncomment = \"b\"\nbefore = [\"C\"]\n[[chain.jump]]\ntarget = \"C\"\ncomment = \"c\"\nbefore = [\"OVN-PREROUTING\"]\n";
    let e = load_err(&cyc);
    assert!(e.message.contains("cycle"), "{e}");
    assert!(
        e.message.contains("OVN-PREROUTING") && e.message.contains("B") && e.message.contains("C"),
        "{e}"
    );
    // A cycle through a foreign chain counts as well.
    let cyc = one_jump("after = [\"F\"]") + "[[chain.jump]]\ntarget = \"B\"\ncomment = \"b\"\nafter = [\"OVN-PREROUTING\"]\nbefore = [\"F\"]\n";
    assert!(load_err(&cyc).message.contains("cycle"));
    let twice = one_jump("") + "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"Y\"\ncomment = \"y\"\n";
    assert!(load_err(&twice).message.contains("declared twice"));
}

#[test]
fn durations_and_listen_addresses() {
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("ten s").is_err());
    assert!(parse_duration("5d").is_err());
    let e = load_err("[daemon]\nresync_interval = \"0s\"\n");
    assert_eq!(e.key, "daemon.resync_interval");
    let e = load_err("[daemon]\nmetrics_listen = \"localhost\"\n");
    assert_eq!((e.key.as_str(), e.line), ("daemon.metrics_listen", Some(2)));
    let e = load_err("families = [\"ip\", \"ip\"]\n");
    assert_eq!(e.key, "families");
    let e = load_err("families = [\"inet\"]\n");
    assert!(e.message.contains("inet"));
}

#[test]
fn missing_file_is_an_error() {
    let e = Config::load(Path::new("/nonexistent/jumpset.toml")).unwrap_err();
    assert_eq!(
        e.location.as_deref(),
        Some("/nonexistent/jumpset.toml"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("/nonexistent/jumpset.toml: cannot read config"),
        "{e}"
    );
}

/// A throwaway config directory: `jumpset.toml` and `jumpset.d/` in a fresh temp dir.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(main: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "jumpset-spec-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(d.join(DROPIN_DIR)).unwrap();
        let dir = Dir(d);
        // Claims are looked for in the state dir: keep the test's own.
        let main = format!(
            "{main}\n[daemon]\nstate_dir = \"{}\"\n",
            dir.0.join("state").display()
        );
        dir.write("jumpset.toml", &main);
        dir
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
    fn dropin(&self, name: &str, text: &str) {
        self.write(&format!("{DROPIN_DIR}/{name}"), text);
    }
    fn main(&self) -> std::path::PathBuf {
        self.0.join("jumpset.toml")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CALICO_ANCHORED: &str = "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"OVN-PREROUTING\"\ncomment = \"kube-ovn prerouting rules\"\nafter = [\"cali-PREROUTING\"]\nbefore = [\"KUBE-SERVICES\"]\n";

#[test]
fn drop_ins_merge_into_one_chain_in_name_order_each_speaking_for_an_agent() {
    let d = Dir::new("backend = \"nft\"");
    d.dropin("10-kube-ovn.toml", CALICO_ANCHORED);
    d.dropin(
        "20-mesh.toml",
        "agent = \"meshd\"\n[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"MESH-PREROUTING\"\ncomment = \"mesh\"\nafter = [\"OVN-PREROUTING\"]\n",
    );
    d.dropin("README", "not a fragment");
    d.dropin(".hidden.toml", "garbage =");
    let c = Config::load(&d.main()).unwrap();
    assert_eq!(c.backend(), BackendChoice::Nft);
    assert_eq!(c.chains().len(), 1);
    let jumps = c.chains()[0].jumps();
    assert_eq!(jumps.len(), 2);
    assert_eq!(jumps[0].target(), "OVN-PREROUTING");
    assert_eq!(jumps[0].origin().agent(), Some("kube-ovn"));
    assert_eq!(jumps[1].origin().agent(), Some("meshd"));
    assert!(
        matches!(jumps[1].origin(), Origin::DropIn { path, .. } if path.ends_with("20-mesh.toml"))
    );
}

#[test]
fn contradicting_drop_ins_are_refused_naming_both_and_the_cycle() {
    let d = Dir::new("");
    d.dropin("10-kube-ovn.toml", CALICO_ANCHORED);
    d.dropin(
        "20-other.toml",
        "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"KUBE-SERVICES\"\ncomment = \"kubernetes service portals\"\nbefore = [\"OVN-PREROUTING\"]\n",
    );
    let e = Config::load(&d.main()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("20-other.toml") && text.contains("10-kube-ovn.toml"),
        "{text}"
    );
    assert!(
        text.contains("cycle")
            && (text.contains("OVN-PREROUTING -> KUBE-SERVICES")
                || text.contains("KUBE-SERVICES -> OVN-PREROUTING")),
        "{text}"
    );
    // The daemon keeps what it can: the main file and the first fragment.
    let (c, rejected) = Config::load_lenient(&d.main()).unwrap();
    assert_eq!(c.chains()[0].jumps().len(), 1);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].agent, "other");
    assert!(
        rejected[0].error.to_string().contains("10-kube-ovn.toml"),
        "{}",
        rejected[0].error
    );
}

#[test]
fn a_jump_declared_twice_across_fragments_names_both_files() {
    let d = Dir::new(CALICO_ANCHORED);
    d.dropin("50-kube-ovn.toml", CALICO_ANCHORED);
    let e = Config::load(&d.main()).unwrap_err();
    assert_eq!(e.key, "chain[0].jump[0].target");
    assert!(
        e.location.as_deref().unwrap().ends_with("50-kube-ovn.toml"),
        "{e}"
    );
    assert!(
        e.message
            .contains("jumpset.toml: chain[0].jump[0] already jumps to OVN-PREROUTING"),
        "{e}"
    );
    assert_eq!(e.line, Some(5), "{e}");
}

#[test]
fn a_drop_in_holds_chains_only_and_bad_ones_are_named() {
    let d = Dir::new("");
    d.dropin("30-x.toml", "backend = \"legacy\"\n");
    let e = Config::load(&d.main()).unwrap_err();
    assert!(
        e.to_string().contains("30-x.toml") && e.message.contains("belong to the main file"),
        "{e}"
    );
    let d = Dir::new("");
    d.dropin("30-x.toml", "agent = \"bad agent\"\n");
    let e = Config::load(&d.main()).unwrap_err();
    assert_eq!(e.key, "agent", "{e}");
    // The main file must be valid even for the daemon.
    let d = Dir::new("bogus = 1");
    assert!(Config::load_lenient(&d.main()).is_err());
}

#[test]
fn agents_are_named_after_their_file_without_the_number() {
    for (file, agent) in [
        ("10-kube-ovn.toml", "kube-ovn"),
        ("kube-ovn.toml", "kube-ovn"),
        ("05_calico.toml", "calico"),
        ("99.toml", "99"),
    ] {
        assert_eq!(agent_of_file(Path::new(file)), agent);
    }
    assert!(agent_name_problem("kube-ovn").is_none());
    assert!(agent_name_problem("").is_some());
    assert!(agent_name_problem("-x").is_some());
    assert!(agent_name_problem("a/b").is_some());
    assert!(agent_name_problem(&"a".repeat(64)).is_some());
}

#[test]
fn api_claims_are_fragments_and_round_trip_through_json() {
    let body = r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [
        {"target": "OVN-PREROUTING", "comment": "kube-ovn prerouting rules", "after": ["cali-PREROUTING"]}]}]}"#;
    let f = Fragment::from_json("kube-ovn", body).unwrap();
    assert!(f.is_claim());
    let again = Fragment::from_json("kube-ovn", &f.to_json().to_string()).unwrap();
    assert_eq!(again, f);
    let c = Config::builder().fragment(f).build().unwrap();
    assert_eq!(
        c.chains()[0].jumps()[0].origin(),
        &Origin::Api {
            agent: "kube-ovn".into()
        }
    );
    assert!(Fragment::from_json(
        "other",
        &Fragment::from_json("kube-ovn", body)
            .unwrap()
            .to_json()
            .to_string()
    )
    .is_err());
    let e = Config::builder()
        .fragment(Fragment::from_json("k", r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": ""}]}]}"#).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(e.key, "chains[0].jumps[0].comment", "{e}");
    assert_eq!(
        e.location.as_deref(),
        Some("the API claim of agent \"k\""),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn config_files_are_read_as_a_root_daemon_must() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new(CALICO_ANCHORED);
    // A FIFO is refused at once, never waited on.
    let fifo = d.0.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = read_config_file(&fifo).unwrap_err();
    assert!(e.message.contains("a FIFO"), "{e}");
    let e = read_config_file(Path::new("/dev/zero")).unwrap_err();
    assert!(e.message.contains("character device"), "{e}");
    let e = read_config_file(&d.0).unwrap_err();
    assert!(e.message.contains("directory"), "{e}");
    // A symlink to a regular file (a ConfigMap mount) is followed.
    std::os::unix::fs::symlink(d.main(), d.0.join("link.toml")).unwrap();
    assert!(read_config_file(&d.0.join("link.toml")).is_ok());
    // World-writable: refused.
    std::fs::set_permissions(d.main(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = Config::load(&d.main()).unwrap_err();
    assert!(e.message.contains("writable by every user"), "{e}");
    std::fs::set_permissions(d.main(), std::fs::Permissions::from_mode(0o644)).unwrap();
    // Too big.
    d.write(
        "big.toml",
        &format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize)),
    );
    let e = read_config_file(&d.0.join("big.toml")).unwrap_err();
    assert!(e.message.contains("at most"), "{e}");
}

#[test]
fn the_local_api_keys_are_read_checked_and_spelled_alike_in_json() {
    let c = Config::from_toml(&format!(
        "{HARVESTER}\n[daemon]\napi_socket = \"/run/x/api.sock\"\napi_group = \"jumpset\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.daemon().api_socket.as_deref(),
        Some(Path::new("/run/x/api.sock"))
    );
    assert_eq!(c.daemon().api_group, Some(ApiGroup::Name("jumpset".into())));
    let c = Config::from_toml(&format!(
        "{HARVESTER}\n[daemon]\napi_socket = \"\"\napi_group = 4242\n"
    ))
    .unwrap();
    assert_eq!(c.daemon().api_socket, None, "\"\" turns the API off");
    assert_eq!(c.daemon().api_group, Some(ApiGroup::Id(4242)));
    assert_eq!(
        Config::from_toml(HARVESTER)
            .unwrap()
            .daemon()
            .api_socket
            .as_deref(),
        Some(Path::new(DEFAULT_API_SOCKET))
    );
    for (line, key) in [
        ("api_socket = \"run/jumpset.sock\"", "daemon.api_socket"),
        (
            &*format!("api_socket = \"/{}\"", "x".repeat(MAX_SOCKET_PATH)),
            "daemon.api_socket",
        ),
        ("api_group = \"bad group\"", "daemon.api_group"),
        ("api_group = \"-x\"", "daemon.api_group"),
        ("api_group = \"99999999999\"", "daemon.api_group"),
    ] {
        let e = load_err(&format!("{HARVESTER}\n[daemon]\n{line}\n"));
        assert_eq!(e.key, key, "{line}: {e}");
        assert!(e.line.is_some(), "{e}");
    }
    // The JSON form takes the [daemon] table too, the same keys and checks.
    let c = Config::from_json(
        r#"{"daemon": {"api_socket": "/run/y.sock", "api_group": 7, "state_dir": "/var/lib/y",
            "resync_interval": "5s", "metrics_listen": "", "cleanup_on_exit": true}}"#,
    )
    .unwrap();
    let d = c.daemon();
    assert_eq!(d.api_socket.as_deref(), Some(Path::new("/run/y.sock")));
    assert_eq!(d.api_group, Some(ApiGroup::Id(7)));
    assert_eq!(d.state_dir, Path::new("/var/lib/y"));
    assert_eq!(d.resync_interval, Duration::from_secs(5));
    assert_eq!(d.metrics_listen, None);
    assert!(d.cleanup_on_exit);
    let e = Config::from_json(r#"{"daemon": {"api_group": "a b"}}"#).unwrap_err();
    assert_eq!(e.key, "daemon.api_group", "{e}");
    let e = Config::from_json(r#"{"daemon": {"api_sock": "/x"}}"#).unwrap_err();
    assert!(e.to_string().contains("api_sock"), "{e}");
}

#[test]
fn contradictions_say_which_constraint_and_whose() {
    let d = Dir::new(CALICO_ANCHORED);
    d.dropin(
        "30-kube-proxy.toml",
        "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"KUBE-SERVICES\"\ncomment = \"kubernetes service portals\"\nbefore = [\"OVN-PREROUTING\"]\n",
    );
    let e = Config::load(&d.main()).unwrap_err();
    let c = e.contradiction.as_deref().expect("a contradiction");
    assert_eq!(c.constraint, "chain[0].jump[0].before");
    assert_eq!(c.with, [Origin::Main]);
    assert_eq!(c.cycle.first(), c.cycle.last());
    assert!(c.cycle.contains(&"KUBE-SERVICES".to_string()), "{c:?}");
    // A shared comment: the other declaration, no cycle.
    let f = Fragment::from_json(
        "other",
        r#"{"chains": [{"table": "nat", "chain": "PREROUTING", "jumps": [{"target": "X", "comment": "kube-ovn prerouting rules"}]}]}"#,
    )
    .unwrap();
    let e = Config::builder()
        .chain(
            ChainSpec::builder("nat", "PREROUTING").jump(JumpSpec::builder(
                "OVN-PREROUTING",
                "kube-ovn prerouting rules",
            )),
        )
        .fragment(f)
        .build()
        .unwrap_err();
    let c = e.contradiction.as_deref().unwrap();
    assert_eq!(
        (c.constraint.as_str(), &c.with[..], c.cycle.len()),
        ("chains[0].jumps[0].comment", &[Origin::Main][..], 0)
    );
    // An invalid value is no contradiction.
    assert!(load_err(&one_jump("after = [\"OVN-PREROUTING\"]"))
        .contradiction
        .is_none());
}

fn claim(agent: &str, jumps: &str) -> Fragment {
    Fragment::from_json(
        agent,
        &format!(
            r#"{{"chains": [{{"table": "nat", "chain": "PREROUTING", "jumps": [{jumps}]}}]}}"#
        ),
    )
    .unwrap()
}

/// Persist a claim as the daemon does (its JSON form in `claims/AGENT.json`).
fn persist(d: &Dir, f: &Fragment) {
    let p = claim_path(&d.0.join("state"), f.agent());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, f.to_json().to_string()).unwrap();
}

#[test]
fn a_claim_is_checked_against_everything_else_and_gives_what_loading_it_gives() {
    let d = Dir::new(CALICO_ANCHORED);
    let mesh = claim(
        "meshd",
        r#"{"target": "MESH-PREROUTING", "comment": "mesh", "after": ["OVN-PREROUTING"], "before": ["KUBE-SERVICES"]}"#,
    );
    let (c, rejected) = Config::with_claim(&d.main(), "meshd", Some(mesh.clone())).unwrap();
    assert!(rejected.is_empty());
    assert_eq!(c.chains()[0].jumps().len(), 2);
    persist(&d, &mesh);
    assert_eq!(Config::load_lenient(&d.main()).unwrap(), (c, vec![]));

    // A claim sorting before the stored one comes out as the files are read.
    let alpha = claim(
        "alpha",
        r#"{"target": "ALPHA", "comment": "alpha", "after": ["MESH-PREROUTING"]}"#,
    );
    let (c, _) = Config::with_claim(&d.main(), "alpha", Some(alpha.clone())).unwrap();
    persist(&d, &alpha);
    assert_eq!(Config::load_lenient(&d.main()).unwrap().0, c);

    // Contradicting the stored claim: refused, naming it, nothing changes.
    let bad = claim(
        "zeta",
        r#"{"target": "ZETA", "comment": "z", "after": ["KUBE-SERVICES"], "before": ["MESH-PREROUTING"]}"#,
    );
    let Err(ClaimError::Conflict(e)) = Config::with_claim(&d.main(), "zeta", Some(bad)) else {
        panic!("a cycle through meshd's claim is a conflict")
    };
    let c = e.contradiction.as_deref().unwrap();
    assert_eq!(c.constraint, "chains[0].jumps[0].after");
    assert!(
        c.with.contains(&Origin::Api {
            agent: "meshd".into()
        }),
        "{c:?}"
    );
    assert!(e.to_string().contains("cycle"), "{e}");
    // The same comment as the main file's jump.
    let dup = claim(
        "zeta",
        r#"{"target": "ZETA", "comment": "kube-ovn prerouting rules"}"#,
    );
    let Err(ClaimError::Conflict(e)) = Config::with_claim(&d.main(), "zeta", Some(dup)) else {
        panic!("a shared comment is a conflict")
    };
    assert_eq!(e.contradiction.as_deref().unwrap().with, [Origin::Main]);
    // Replacing one's own claim is no contradiction with oneself; contradicting alpha's is.
    let again = claim(
        "meshd",
        r#"{"target": "MESH-PREROUTING", "comment": "mesh", "after": ["OVN-PREROUTING"]}"#,
    );
    assert!(Config::with_claim(&d.main(), "meshd", Some(again)).is_ok());
    let against = claim(
        "meshd",
        r#"{"target": "MESH-PREROUTING", "comment": "mesh", "after": ["ALPHA"]}"#,
    );
    let Err(ClaimError::Conflict(e)) = Config::with_claim(&d.main(), "meshd", Some(against)) else {
        panic!("a cycle with alpha's claim")
    };
    assert_eq!(
        e.contradiction.as_deref().unwrap().with,
        [Origin::Api {
            agent: "alpha".into()
        }]
    );

    // Invalid on its own: a 400 naming the key in the body's spelling.
    let invalid = claim(
        "zeta",
        r#"{"target": "ZETA", "comment": "z", "after": ["ZETA"]}"#,
    );
    let Err(ClaimError::Invalid(e)) = Config::with_claim(&d.main(), "zeta", Some(invalid)) else {
        panic!("invalid")
    };
    assert_eq!(e.key, "chains[0].jumps[0].after");
    // A drop-in speaks for kube-ovn: no claim for kube-ovn.
    d.dropin("10-kube-ovn.toml", "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"K\"\ncomment = \"k\"\n");
    let Err(ClaimError::Fragment { path }) = Config::with_claim(
        &d.main(),
        "kube-ovn",
        Some(claim("kube-ovn", r#"{"target": "Y", "comment": "y"}"#)),
    ) else {
        panic!("a drop-in speaks for kube-ovn")
    };
    assert!(path.ends_with("10-kube-ovn.toml"));
    // Dropped: what loading gives without the file.
    let (c, _) = Config::with_claim(&d.main(), "alpha", None).unwrap();
    std::fs::remove_file(claim_path(&d.0.join("state"), "alpha")).unwrap();
    assert_eq!(Config::load_lenient(&d.main()).unwrap().0, c);
    // The main file broken: nothing can be checked.
    d.write("jumpset.toml", "bogus = 1\n");
    assert!(matches!(
        Config::with_claim(&d.main(), "alpha", Some(alpha)),
        Err(ClaimError::Main(_))
    ));
}
