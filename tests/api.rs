//! The daemon's local API and its config fragments, end to end (`docs/api.md`): the real
//! `jumpset daemon` in a fresh network namespace per test, talked to with `curl
//! --unix-socket` and the `jumpset` command.
//!
//! - drop-in fragments in a ConfigMap-style `jumpset.d` (files linked through a `..data`
//!   symlink the kubelet swaps) added, changed and removed while the daemon runs: each
//!   takes effect within a second, with no signal; a contradicting fragment is refused
//!   naming both fragments (log, `/readyz`, metric) and the running set is kept;
//! - the pause switch: `jumpset pause` stops every write (reads go on, `/readyz` and
//!   `STATUS=` say so), `jumpset resume` repairs;
//! - the README's curl snippets, run as written against a daemon;
//! - a second daemon never takes over the socket a live one serves.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const METRICS: &str = "127.0.0.1:10296";

fn lo_up() {
    ok("ip link set lo up");
}

/// `PREROUTING`'s jump targets as iptables-nft-save lists them.
fn targets() -> Vec<String> {
    saved_chain("iptables-nft-save", "PREROUTING")
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect()
}

/// `curl --unix-socket SOCKET ARGS`: (HTTP status, body).
fn curl(socket: &Path, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(socket)
        .args(args)
        .args(["-w", "\n%{http_code}"])
        .output()
        .expect("curl runs (apt-get install curl; scripts/test.sh does)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A scratch directory holding the config, the state directory and the socket.
struct Node {
    dir: PathBuf,
}

impl Node {
    fn new(tag: &str) -> Node {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("api-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        Node { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("jumpset.toml")
    }

    /// The main file: `main` and a [daemon] table with this node's paths.
    fn write_config(&self, main: &str, metrics: &str) {
        std::fs::write(
            self.config(),
            format!(
                "{main}\n[daemon]\nresync_interval = \"30s\"\nmetrics_listen = \"{metrics}\"\nstate_dir = \"{}\"\napi_socket = \"{}\"\n",
                self.dir.join("state").display(),
                self.socket().display()
            ),
        )
        .unwrap();
    }

    fn start(&self, env: &[(&str, &str)]) -> DaemonProc {
        let d = DaemonProc::start(&["--config", self.config().to_str().unwrap()], env);
        assert!(
            d.wait_log("serving the local API", Duration::from_secs(15)),
            "{}",
            d.log()
        );
        d
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Drop-ins while the daemon runs.
// ---------------------------------------------------------------------------------------

/// `jumpset.d` as a ConfigMap volume: each version a directory, `..data` linking to the
/// current one, each key a link through `..data`.
struct ConfigMapDir {
    dir: PathBuf,
    version: usize,
}

impl ConfigMapDir {
    fn new(dir: PathBuf) -> ConfigMapDir {
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = ConfigMapDir { dir, version: 0 };
        c.publish(&[]);
        c
    }

    /// The kubelet's update: write the new version, swap `..data` to it, link the new
    /// keys, drop the old keys' links and the old version. Returns when the swap was made.
    fn publish(&mut self, files: &[(&str, &str)]) -> Instant {
        let old = format!("..2024_{:02}", self.version);
        self.version += 1;
        let new = format!("..2024_{:02}", self.version);
        std::fs::create_dir_all(self.dir.join(&new)).unwrap();
        for (name, text) in files {
            std::fs::write(self.dir.join(&new).join(name), text).unwrap();
        }
        std::os::unix::fs::symlink(&new, self.dir.join("..data_tmp")).unwrap();
        let swapped = Instant::now();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !files.iter().any(|(n, _)| *n == name) {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join(old));
        swapped
    }
}

const MESH_AFTER_OVN: &str = "agent = \"meshd\"\n[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"MESH-PREROUTING\"\ncomment = \"mesh prerouting\"\nafter = [\"OVN-PREROUTING\"]\nbefore = [\"KUBE-SERVICES\"]\n";
const MESH_AFTER_KUBE: &str = "agent = \"meshd\"\n[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"MESH-PREROUTING\"\ncomment = \"mesh prerouting\"\nafter = [\"KUBE-SERVICES\"]\nbefore = [\"CNI-HOSTPORT-DNAT\"]\n";
/// Closes a cycle with meshd's fragment (OVN -> MESH -> OTHER -> OVN).
const OTHER: &str = "[[chain]]\ntable = \"nat\"\nchain = \"PREROUTING\"\n[[chain.jump]]\ntarget = \"OTHER-PREROUTING\"\ncomment = \"other prerouting\"\nafter = [\"MESH-PREROUTING\"]\nbefore = [\"OVN-PREROUTING\"]\n";

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

#[test]
fn drop_ins_added_swapped_and_removed_take_effect_within_a_second_and_a_contradiction_is_refused() {
    netns(|| {
        lo_up();
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-healthy.rules").display()
        ));
        let node = Node::new("dropins");
        node.write_config(&harvester_config(), METRICS);
        let mut dropins = ConfigMapDir::new(node.dir.join("jumpset.d"));
        let d = node.start(&[]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        let within = Duration::from_secs(1);

        // Added.
        let t = dropins.publish(&[("20-meshd.toml", MESH_AFTER_OVN)]);
        let want = [
            "cali-PREROUTING",
            "OVN-PREROUTING",
            "MESH-PREROUTING",
            "KUBE-SERVICES",
            "CNI-HOSTPORT-DNAT",
        ];
        assert!(
            wait_until(within, || targets() == want),
            "{:?}\n{}",
            targets(),
            d.log()
        );
        let added = t.elapsed();

        // Changed, by the swap alone (same file name, new version behind `..data`).
        let t = dropins.publish(&[("20-meshd.toml", MESH_AFTER_KUBE)]);
        let want = [
            "cali-PREROUTING",
            "OVN-PREROUTING",
            "KUBE-SERVICES",
            "MESH-PREROUTING",
            "CNI-HOSTPORT-DNAT",
        ];
        assert!(
            wait_until(within, || targets() == want),
            "{:?}\n{}",
            targets(),
            d.log()
        );
        let changed = t.elapsed();

        // Removed: the jump is no longer jumpset's (it stays, foreign, and is left alone).
        let reloads = d.log().matches("config change: reloaded").count();
        let t = dropins.publish(&[]);
        assert!(
            wait_until(within, || d
                .log()
                .matches("config change: reloaded")
                .count()
                > reloads),
            "{}",
            d.log()
        );
        let removed = t.elapsed();
        ok("iptables-nft -t nat -D PREROUTING -m comment --comment \"mesh prerouting\" -j MESH-PREROUTING");
        ok("iptables-nft -t nat -I PREROUTING 1 -m comment --comment \"mesh prerouting\" -j MESH-PREROUTING");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(targets()[0], "MESH-PREROUTING", "{}", d.log());
        assert!(!d.log().contains("SIGHUP"));
        ok("iptables-nft -t nat -D PREROUTING 1");
        figure(&format!(
            "drop-in in a ConfigMap-style jumpset.d: in effect {} after the kubelet-style swap that added it, {} after the one that changed it, {} after the one that removed it",
            ms(added),
            ms(changed),
            ms(removed)
        ));

        // A fragment contradicting meshd's: refused, both named; the rest runs.
        dropins.publish(&[("20-meshd.toml", MESH_AFTER_OVN), ("30-other.toml", OTHER)]);
        assert!(
            d.wait_log("30-other.toml is left out, the rest runs", within * 2),
            "{}",
            d.log()
        );
        let line = d
            .log()
            .lines()
            .find(|l| l.contains("30-other.toml is left out"))
            .unwrap()
            .to_string();
        assert!(
            line.contains("20-meshd.toml") && line.contains("cycle"),
            "names both: {line}"
        );
        let (code, why) = http_get_at(METRICS, "/readyz").expect("/readyz answers");
        assert_eq!(code, 503, "{why}");
        assert!(why.contains("30-other.toml left out"), "{why}");
        let (_, metrics) = http_get_at(METRICS, "/metrics").unwrap();
        assert_eq!(
            metric_value(&metrics, "jumpset_config_fragments_rejected"),
            1.0
        );
        // The running set is kept: meshd's jump is placed, Kube-OVN's repaired.
        let want = [
            "cali-PREROUTING",
            "OVN-PREROUTING",
            "MESH-PREROUTING",
            "KUBE-SERVICES",
            "CNI-HOSTPORT-DNAT",
        ];
        assert!(wait_until(within, || targets() == want), "{:?}", targets());
        ok("iptables-nft -t nat -D PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING");
        assert!(
            wait_until(within, || targets() == want),
            "{:?}\n{}",
            targets(),
            d.log()
        );
        assert!(!targets().contains(&"OTHER-PREROUTING".to_string()));
    });
}

// ---------------------------------------------------------------------------------------
// The pause switch.
// ---------------------------------------------------------------------------------------

#[test]
fn pause_stops_every_write_and_says_so_resume_repairs() {
    netns(|| {
        lo_up();
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-healthy.rules").display()
        ));
        let node = Node::new("pause");
        node.write_config(&harvester_config(), METRICS);
        let notify = NotifySocket::bind();
        let d = node.start(&[("NOTIFY_SOCKET", notify.path())]);
        assert!(d.wait_log("ready:", Duration::from_secs(10)), "{}", d.log());
        let cfg = node.config();
        let cfg = cfg.to_str().unwrap();

        let run = jumpset(&["pause", "--config", cfg, "--reason", "kernel upgrade"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.starts_with("paused since ") && run.stdout.contains("kernel upgrade"),
            "{}",
            run.stdout
        );
        let status = notify.until("paused: kernel upgrade", Duration::from_secs(2));
        assert!(
            status
                .last()
                .is_some_and(|s| s.contains("STATUS=") && s.contains("paused: kernel upgrade")),
            "{status:?}"
        );
        // Writes stop, reads go on.
        ok("iptables-nft -t nat -D PREROUTING -m comment --comment \"kube-ovn prerouting rules\" -j OVN-PREROUTING");
        std::thread::sleep(Duration::from_secs(1));
        assert!(!targets().contains(&"OVN-PREROUTING".to_string()));
        let (code, why) = http_get_at(METRICS, "/readyz").unwrap();
        assert_eq!(code, 503);
        assert!(why.contains("paused: kernel upgrade"), "{why}");
        let (code, body) = curl(&node.socket(), &["http://jumpset/v1/check"]);
        assert_eq!(
            (code, &json(&body)["verdict"]),
            (200, &"drift".into()),
            "{body}"
        );
        let (_, state) = curl(&node.socket(), &["http://jumpset/v1/state"]);
        let state = json(&state);
        assert_eq!(state["paused"], true);
        assert!(state["since"].as_str().is_some_and(|s| s.ends_with('Z')));
        let run = jumpset(&["pause", "--config", cfg, "--json"]);
        assert_eq!(
            json(&run.stdout)["paused"],
            true,
            "pausing again: {}",
            run.stdout
        );

        let t = Instant::now();
        let run = jumpset(&["resume", "--config", cfg]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(
            wait_until(Duration::from_secs(1), || saved_chain(
                "iptables-nft-save",
                "PREROUTING"
            ) == fixture_chain(
                "harvester-healthy.rules",
                "PREROUTING"
            )),
            "{}",
            d.log()
        );
        figure(&format!(
            "pause/resume: the chain repaired {} after `jumpset resume` was started",
            ms(t.elapsed())
        ));
        assert!(wait_until(Duration::from_secs(1), || http_get_at(
            METRICS, "/readyz"
        )
        .is_some_and(|r| r.0 == 200)));

        // No daemon: a clear error.
        let run = jumpset(&["pause", "--socket", "/nonexistent/jumpset.sock"]);
        assert_eq!(run.code, 4);
        assert!(
            run.stderr
                .contains("cannot reach the jumpset daemon at /nonexistent/jumpset.sock"),
            "{}",
            run.stderr
        );
    });
}

// ---------------------------------------------------------------------------------------
// The README's curl snippets, and the socket.
// ---------------------------------------------------------------------------------------

/// The shell commands of the first `sh` block after `heading` in README.md: each `curl`
/// line with its continuation lines, comments left out.
fn readme_commands(heading: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in README.md"));
    let block = &readme[at..];
    let open = block.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let block = &block[open..open + block[open..].find("\n```").unwrap()];
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in block.lines() {
        if cur.is_empty() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(line);
        // A command goes on after a trailing backslash and inside a quoted argument.
        let open_quote = cur.matches('\'').count() % 2 == 1;
        if !line.ends_with('\\') && !open_quote {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Run one README command (the socket replaced by `socket`): (HTTP status, body).
fn run_readme(command: &str, socket: &Path) -> (u16, String) {
    let cmd = command.replace("/run/jumpset/jumpset.sock", socket.to_str().unwrap());
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{cmd} -sS -w '\\n%{{http_code}}'"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn the_readme_curl_snippets_run_as_written() {
    let commands = readme_commands("### The local API");
    let methods: Vec<&str> = commands
        .iter()
        .map(|c| {
            if c.contains("-X PUT") {
                "PUT"
            } else if c.contains("-X DELETE") {
                "DELETE"
            } else {
                "GET"
            }
        })
        .collect();
    assert_eq!(methods, ["PUT", "GET", "GET", "DELETE"], "{commands:#?}");
    netns(|| {
        lo_up();
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let node = Node::new("readme");
        node.write_config("backend = \"nft\"", "");
        let d = node.start(&[]);
        let socket = node.socket();

        let t = Instant::now();
        let (code, body) = run_readme(&commands[0], &socket);
        let claimed = t.elapsed();
        assert_eq!(code, 200, "{body}\n{}", d.log());
        let put = json(&body);
        assert_eq!(put["agent"], "kube-ovn");
        assert_eq!(put["report"]["committed"], true, "{body}");
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING"),
            "converged when the answer came"
        );
        figure(&format!(
            "API claim (the README's curl PUT) on the broken chain: answered with the chain converged in {}",
            ms(claimed)
        ));

        let (code, body) = run_readme(&commands[1], &socket);
        assert_eq!(
            (code, &json(&body)["verdict"]),
            (200, &"converged".into()),
            "{body}"
        );
        let (code, body) = run_readme(&commands[2], &socket);
        let claim = json(&body);
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            claim["chains"][0]["jumps"][0]["create_chain"], true,
            "{body}"
        );
        let (code, body) = run_readme(&commands[3], &socket);
        assert_eq!(
            (code, &json(&body)["removed"]),
            (200, &true.into()),
            "{body}"
        );
        assert!(!targets().contains(&"OVN-PREROUTING".to_string()));
        let (code, _) = run_readme(&commands[2], &socket);
        assert_eq!(code, 404, "handed back: no claim");
    });
}

#[test]
fn a_second_daemon_leaves_a_live_socket_alone_and_a_stale_one_is_taken_over() {
    netns(|| {
        lo_up();
        let node = Node::new("two");
        node.write_config("backend = \"nft\"", "");
        let mut first = node.start(&[]);
        let second = DaemonProc::start(&["--config", node.config().to_str().unwrap()], &[]);
        assert!(
            second.wait_log("another process serves", Duration::from_secs(10)),
            "{}",
            second.log()
        );
        let (code, _) = curl(&node.socket(), &["http://jumpset/v1/state"]);
        assert_eq!(code, 200, "the first still serves");
        drop(second);
        // SIGKILL leaves the socket behind: the next daemon finds nobody listening.
        first.proc.kill9();
        assert!(node.socket().exists());
        let third = node.start(&[]);
        assert!(
            third.log().contains("removed the stale socket"),
            "{}",
            third.log()
        );
        let (code, body) = curl(&node.socket(), &["-X", "POST", "http://jumpset/v1/nothing"]);
        assert_eq!(code, 404, "{body}");
        let big = format!("{{\"chains\": [], \"x\": \"{}\"}}", "a".repeat(1 << 20));
        let file = node.dir.join("big.json");
        std::fs::write(&file, big).unwrap();
        let (code, _) = curl(
            &node.socket(),
            &[
                "-X",
                "PUT",
                "http://jumpset/v1/agents/x",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        );
        assert_eq!(code, 413);
    });
}
