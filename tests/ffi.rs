//! The C ABI (`ffi/`) as embedders use it, each test in a fresh network namespace: the
//! library installed by `ffi/install.sh` (SONAME, links, header, pkg-config file); the C
//! example built with `pkg-config jumpset` (shared) and against `libjumpset.a` (static)
//! repairs the broken seed chain, `iptables-nft-save` confirms it, valgrind finds no
//! leak; the Go example agent (the package in `go/`, cgo) inserts its jump and reports the
//! handle `nft -a` lists; the README's C snippet runs; and the built `libjumpset.so`,
//! loaded with dlopen, is driven directly: bad arguments, NULL handles, the JSON
//! constructor, handles in reports, and one handle used from threads in different network
//! namespaces.
//!
//! Needs `cc`, `go` (Debian's golang-go) and `valgrind` on the PATH; a missing one fails
//! the test that needs it, with the package to install.

mod support;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Barrier, OnceLock};
use support::native::*;
use support::*;

/// The C example, linked against the installed shared library as `pkg-config` says (with
/// an rpath to the prefix; `static_link = false`) or against the static one, as the
/// README says.
fn c_agent(static_link: bool) -> PathBuf {
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    static STATIC: OnceLock<PathBuf> = OnceLock::new();
    let cell = if static_link { &STATIC } else { &SHARED };
    cell.get_or_init(|| {
        require("cc", "gcc");
        let lib = lib_dir();
        let bin = out_dir().join(if static_link {
            "ffi-agent-static"
        } else {
            "ffi-agent-shared"
        });
        let mut cc = Command::new("cc");
        cc.args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&bin)
            .arg("-I")
            .arg(root().join("ffi/include"))
            .arg(root().join("ffi/examples/c/agent.c"));
        if static_link {
            cc.arg(lib.join("libjumpset.a")).args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
            ]);
        } else {
            let libdir = installed().join("lib");
            cc.args(pkg_config(&["--cflags", "--libs"]))
                .arg(format!("-Wl,-rpath,{}", libdir.display()));
        }
        build(&mut cc, "cc agent.c");
        bin
    })
    .clone()
}

/// What an example agent printed: its `key=value` lines.
struct AgentRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl AgentRun {
    fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    }

    fn object(&self, key: &str) -> serde_json::Value {
        let v = self.values(key);
        assert_eq!(v.len(), 1, "one {key}= line:\n{}", self.stdout);
        let j: serde_json::Value = serde_json::from_str(v[0]).expect("JSON");
        assert!(j.is_object(), "{key} is a JSON object: {j}");
        j
    }
}

/// In a fresh namespace: load the broken seed chain, run `agent CONFIG` (after `wrapper`,
/// e.g. valgrind), and check what it did against `iptables-nft-save`.
fn repairs_the_broken_chain(agent: &Path, wrapper: &[&str]) -> AgentRun {
    netns(|| {
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        let cfg = config(&harvester_config());
        let mut cmd = Command::new(wrapper.first().copied().unwrap_or(agent.to_str().unwrap()));
        if !wrapper.is_empty() {
            cmd.args(&wrapper[1..]).arg(agent);
        }
        let out = cmd.arg(cfg.path()).output().expect("the agent runs");
        let run = AgentRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(
            run.values("check"),
            ["1", "0"],
            "drift, then converged:\n{}",
            run.stdout
        );
        assert_eq!(run.values("reconcile"), ["0"]);
        assert_eq!(run.values("version"), [env!("CARGO_PKG_VERSION")]);
        let report = run.object("report");
        assert_eq!(report["committed"], true, "{report}");
        assert_eq!(report["ops"].as_array().unwrap().len(), 2, "{report}");
        let status = run.object("status");
        assert_eq!(status["in_order"], true, "{status}");
        assert_eq!(run.object("detect")["mode"], "nft");
        assert!(
            run.stderr.contains("drift: 2 change(s) needed"),
            "the agent printed jumpset_last_error() after the drift:\n{}",
            run.stderr
        );
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
        run
    })
}

#[test]
fn c_agent_linked_shared_repairs_the_broken_chain() {
    repairs_the_broken_chain(&c_agent(false), &[]);
}

#[test]
fn c_agent_linked_static_repairs_the_broken_chain() {
    let agent = c_agent(true);
    let ldd = ok(&format!("ldd {}", agent.display()));
    assert!(!ldd.contains("libjumpset"), "statically linked:\n{ldd}");
    repairs_the_broken_chain(&agent, &[]);
}

/// The healthy seed chain without Kube-OVN's jump: where the agent inserts it.
fn without_kube_ovn() -> String {
    std::fs::read_to_string(fixture("harvester-healthy.rules"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains("kube-ovn"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn go_agent_inserts_its_jump_in_process_and_reports_the_handle() {
    let agent = go_agent(true);
    netns(|| {
        ok_stdin("iptables-nft-restore", &without_kube_ovn());
        let out = Command::new(&agent).output().expect("the agent runs");
        let run = AgentRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(run.values("transport"), ["in-process"]);
        assert_eq!(run.values("version"), [env!("CARGO_PKG_VERSION")]);
        assert_eq!(
            run.values("check"),
            ["drift", "converged"],
            "{}",
            run.stdout
        );
        assert_eq!(run.values("reconcile"), ["ok"]);
        let ops = run.values("op");
        assert_eq!(ops.len(), 1, "{}", run.stdout);
        assert!(
            ops[0].starts_with("insert ip nat PREROUTING handle="),
            "{}",
            ops[0]
        );
        // The handle the agent printed is the one nft lists for its rule.
        let handle = ops[0]
            .split_whitespace()
            .find_map(|w| w.strip_prefix("handle="))
            .unwrap();
        let listed = ok("nft -a list chain ip nat PREROUTING");
        let line = listed
            .lines()
            .find(|l| l.contains("jump OVN-PREROUTING "))
            .unwrap_or_else(|| panic!("{listed}"));
        assert!(
            line.trim_end().ends_with(&format!("# handle {handle}")),
            "agent says {handle}, nft: {line}"
        );
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
    });
}

#[test]
fn go_agent_built_without_cgo_says_the_in_process_transport_is_missing() {
    let agent = go_agent(false);
    let out = Command::new(&agent).output().expect("the agent runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("built without cgo") && stderr.contains("use NewSocket"),
        "{stderr}"
    );
}

/// The C snippet of the README's "Embedding (C ABI)" section.
fn readme_c_snippet() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Embedding (C ABI)")
        .expect("the README's C ABI section")..];
    let body = &section[section.find("```c\n").expect("a C snippet") + 5..];
    body[..body.find("\n```").unwrap()].to_string()
}

#[test]
fn the_readme_c_snippet_inserts_the_jump_and_reports_its_handle() {
    require("cc", "gcc");
    let dir = out_dir().join("readme-c");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("snippet.c"), readme_c_snippet()).unwrap();
    std::fs::write(
        dir.join("main.c"),
        "int repair(const char *spec_json);\nint main(int argc, char **argv) { return argc == 2 ? repair(argv[1]) : 2; }\n",
    )
    .unwrap();
    let bin = dir.join("repair");
    let libdir = installed().join("lib");
    build(
        Command::new("cc")
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&bin)
            .arg(dir.join("snippet.c"))
            .arg(dir.join("main.c"))
            .args(pkg_config(&["--cflags", "--libs"]))
            .arg(format!("-Wl,-rpath,{}", libdir.display())),
        "cc (the README's C snippet)",
    );
    netns(|| {
        ok_stdin("iptables-nft-restore", &without_kube_ovn());
        let out = Command::new(&bin).arg(HARVESTER_JSON).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("repairing: ip nat PREROUTING: drift: 1 change(s) needed"),
            "{stderr}"
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let handle = report["ops"][0]["handle"]
            .as_u64()
            .expect("the insert's handle");
        let listed = ok("nft -a list chain ip nat PREROUTING");
        let line = listed
            .lines()
            .find(|l| l.contains("jump OVN-PREROUTING "))
            .unwrap();
        assert!(
            line.trim_end().ends_with(&format!("# handle {handle}")),
            "{handle}: {line}"
        );
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
        // A bad spec: the message names the key, the code is the usage one.
        let out = Command::new(&bin)
            .arg(HARVESTER_JSON.replace("\"after\"", "\"afterwards\""))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("jumpset: config: chains[0].jumps[0].afterwards"),
            "{stderr}"
        );
    });
}

#[test]
fn the_install_step_lays_out_a_library_pkg_config_finds() {
    let prefix = installed();
    let lib = prefix.join("lib");
    let link = |name: &str| std::fs::read_link(lib.join(name)).unwrap();
    assert_eq!(link("libjumpset.so"), Path::new("libjumpset.so.1"));
    assert_eq!(link("libjumpset.so.1"), Path::new("libjumpset.so.1.1"));
    assert!(lib.join("libjumpset.so.1.1").is_file());
    assert!(lib.join("libjumpset.a").is_file());
    assert_eq!(
        std::fs::read(prefix.join("include/jumpset.h")).unwrap(),
        std::fs::read(root().join("ffi/include/jumpset.h")).unwrap()
    );
    require("readelf", "binutils");
    let dynamic = ok(&format!(
        "readelf -d {}",
        lib.join("libjumpset.so.1.1").display()
    ));
    assert!(
        dynamic.contains("Library soname: [libjumpset.so.1]"),
        "{dynamic}"
    );
    let include = prefix.join("include");
    assert_eq!(
        pkg_config(&["--cflags", "--libs"]),
        [
            format!("-I{}", include.display()),
            format!("-L{}", lib.display()),
            "-ljumpset".to_string()
        ]
    );
    assert_eq!(pkg_config(&["--modversion"]), [env!("CARGO_PKG_VERSION")]);
    assert!(pkg_config(&["--static", "--libs"]).contains(&"-lpthread".to_string()));
    // A program linked with -ljumpset asks for the SONAME and finds the installed file.
    let agent = c_agent(false);
    let needed = ok(&format!("readelf -d {}", agent.display()));
    assert!(
        needed.contains("Shared library: [libjumpset.so.1]"),
        "{needed}"
    );
    let ldd = ok(&format!("ldd {}", agent.display()));
    assert!(
        ldd.contains(&format!(
            "libjumpset.so.1 => {}",
            lib.join("libjumpset.so.1").display()
        )),
        "{ldd}"
    );
}

#[test]
fn c_agent_full_run_under_valgrind_leaks_nothing() {
    require("valgrind", "valgrind");
    let run = repairs_the_broken_chain(
        &c_agent(false),
        &["valgrind", "--leak-check=full", "--error-exitcode=1"],
    );
    let summary: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("in use at exit") || l.contains("ERROR SUMMARY"))
        .collect();
    eprintln!("valgrind: {}", summary.join(" | "));
    assert!(
        run.stderr
            .contains("All heap blocks were freed -- no leaks are possible")
            || run.stderr.contains("definitely lost: 0 bytes"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ERROR SUMMARY: 0 errors"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_cap_net_admin_every_call_says_so_with_exit_3() {
    let agent = c_agent(false);
    netns(|| {
        load("harvester-broken.rules");
        let cfg = config(&harvester_config());
        let out = sh(&format!(
            "setpriv --inh-caps=-net_admin --bounding-set=-net_admin {} {}",
            agent.display(),
            cfg.as_str()
        ));
        let run = AgentRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert_eq!(run.values("check"), ["3", "3"], "{}", run.stdout);
        assert_eq!(run.values("reconcile"), ["3"]);
        let report = run.object("report");
        assert_eq!(report["exit_code"], 3, "{report}");
        assert!(
            report["error"].as_str().unwrap().contains("CAP_NET_ADMIN"),
            "{report}"
        );
        assert!(
            run.stderr
                .contains("agent: status: jumpset needs CAP_NET_ADMIN"),
            "{}",
            run.stderr
        );
        // Nothing was written.
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-broken.rules", "PREROUTING")
        );
    });
}

// ---- The library itself, loaded with dlopen -------------------------------------------

type Str = *const c_char;

type FnStr = unsafe extern "C" fn() -> Str;
type FnNew = unsafe extern "C" fn(Str, *mut *mut c_char) -> *mut c_void;
type FnCode = unsafe extern "C" fn(*mut c_void) -> c_int;
type FnReconcile = unsafe extern "C" fn(*mut c_void, *mut *mut c_char) -> c_int;
type FnJson = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
type FnDetect = unsafe extern "C" fn() -> *mut c_char;
type FnStringFree = unsafe extern "C" fn(*mut c_char);
type FnFree = unsafe extern "C" fn(*mut c_void);

/// The functions of `jumpset.h`, resolved from the built `libjumpset.so`.
struct Abi {
    version: FnStr,
    last_error: FnStr,
    new: FnNew,
    new_json: FnNew,
    last_error_json: FnStr,
    check: FnCode,
    check_json: FnReconcile,
    cleanup: FnReconcile,
    reconcile: FnReconcile,
    status_json: FnJson,
    detect_json: FnDetect,
    string_free: FnStringFree,
    free: FnFree,
}

fn abi() -> &'static Abi {
    static ABI: OnceLock<Abi> = OnceLock::new();
    ABI.get_or_init(|| {
        let path = CString::new(lib_dir().join("libjumpset.so").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; the library is never unloaded, so the function
        // pointers below stay valid for the whole test run.
        let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!lib.is_null(), "dlopen libjumpset.so failed");
        let sym = |name: &str| {
            let c = CString::new(name).unwrap();
            // SAFETY: `lib` is a live dlopen handle and `c` a NUL-terminated name.
            let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
            assert!(!p.is_null(), "{name} is not exported");
            p
        };
        use std::mem::transmute as cast;
        // SAFETY: each symbol is the function of that name in jumpset.h, whose C
        // signature the target type spells out.
        unsafe {
            Abi {
                version: cast::<*mut c_void, FnStr>(sym("jumpset_version")),
                last_error: cast::<*mut c_void, FnStr>(sym("jumpset_last_error")),
                new: cast::<*mut c_void, FnNew>(sym("jumpset_new")),
                new_json: cast::<*mut c_void, FnNew>(sym("jumpset_new_json")),
                last_error_json: cast::<*mut c_void, FnStr>(sym("jumpset_last_error_json")),
                check: cast::<*mut c_void, FnCode>(sym("jumpset_check")),
                check_json: cast::<*mut c_void, FnReconcile>(sym("jumpset_check_json")),
                cleanup: cast::<*mut c_void, FnReconcile>(sym("jumpset_cleanup")),
                reconcile: cast::<*mut c_void, FnReconcile>(sym("jumpset_reconcile")),
                status_json: cast::<*mut c_void, FnJson>(sym("jumpset_status_json")),
                detect_json: cast::<*mut c_void, FnDetect>(sym("jumpset_detect_json")),
                string_free: cast::<*mut c_void, FnStringFree>(sym("jumpset_string_free")),
                free: cast::<*mut c_void, FnFree>(sym("jumpset_free")),
            }
        }
    })
}

/// A handle, shared by threads as `jumpset_new`'s documentation allows.
struct Handle(*mut c_void);
// SAFETY: the library documents a handle as immutable and usable from several threads
// at once; only `jumpset_free` (in `Drop`, after every user is done) must not race.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a live handle, freed once, no longer used by any thread.
        unsafe { (abi().free)(self.0) }
    }
}

impl Handle {
    fn new(config: &[u8]) -> Result<Handle, String> {
        Handle::made_by(abi().new, config)
    }

    fn new_json(spec: &str) -> Result<Handle, String> {
        Handle::made_by(abi().new_json, spec.as_bytes())
    }

    fn made_by(constructor: FnNew, config: &[u8]) -> Result<Handle, String> {
        let c = CString::new(config).unwrap();
        let mut err = std::ptr::null_mut();
        // SAFETY: a NUL-terminated config and a writable out-pointer.
        let h = unsafe { constructor(c.as_ptr(), &mut err) };
        if h.is_null() {
            let msg = take(err).expect("*err_out is set on error");
            assert_eq!(last_error().as_deref(), Some(msg.as_str()));
            Err(msg)
        } else {
            assert!(err.is_null(), "*err_out is NULL on success");
            Ok(Handle(h))
        }
    }

    fn check(&self) -> i32 {
        // SAFETY: a live handle.
        unsafe { (abi().check)(self.0) }
    }

    fn reconcile(&self) -> (i32, serde_json::Value) {
        self.reported(abi().reconcile)
    }

    fn check_json(&self) -> (i32, serde_json::Value) {
        self.reported(abi().check_json)
    }

    fn cleanup(&self) -> (i32, serde_json::Value) {
        self.reported(abi().cleanup)
    }

    fn reported(&self, call: FnReconcile) -> (i32, serde_json::Value) {
        let mut out = std::ptr::null_mut();
        // SAFETY: a live handle and a writable out-pointer.
        let code = unsafe { call(self.0, &mut out) };
        let report = take(out).expect("*report_json_out is always set");
        (code, serde_json::from_str(&report).expect("JSON report"))
    }

    fn status(&self) -> serde_json::Value {
        // SAFETY: a live handle.
        let s = take(unsafe { (abi().status_json)(self.0) }).expect("status JSON");
        serde_json::from_str(&s).expect("JSON status")
    }
}

/// Copy and free a string handed out by the library (None for NULL).
fn take(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a live NUL-terminated string from the library, copied before it is freed.
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    // SAFETY: freed once, not used afterwards.
    unsafe { (abi().string_free)(p) };
    Some(s)
}

fn last_error() -> Option<String> {
    // SAFETY: no arguments; the result is NULL or a string valid until the next call.
    let p = unsafe { (abi().last_error)() };
    // SAFETY: non-NULL: a NUL-terminated string, copied at once.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn last_error_json() -> Option<serde_json::Value> {
    // SAFETY: no arguments; the result is NULL or a string valid until the next call.
    let p = unsafe { (abi().last_error_json)() };
    // SAFETY: non-NULL: a NUL-terminated string, copied at once.
    (!p.is_null())
        .then(|| serde_json::from_str(&unsafe { CStr::from_ptr(p) }.to_string_lossy()).unwrap())
}

/// The Harvester spec in the JSON form, on the nft backend.
const HARVESTER_JSON: &str = r#"{"backend": "nft", "chains": [{"table": "nat", "chain": "PREROUTING",
    "jumps": [{"target": "OVN-PREROUTING", "comment": "kube-ovn prerouting rules",
               "after": ["cali-PREROUTING"], "before": ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]}]}]}"#;

#[test]
fn the_json_constructor_checks_inserts_with_handles_and_cleans_up() {
    let h = Handle::new_json(HARVESTER_JSON).unwrap();
    netns(|| {
        ok_stdin("iptables-nft-restore", &without_kube_ovn());
        let (code, check) = h.check_json();
        assert_eq!(code, 1, "{check}");
        assert_eq!(check["verdict"], "drift", "{check}");
        assert_eq!(check["ops"][0]["op"], "insert", "{check}");
        assert_eq!(
            check["ops"][0]["handle"],
            serde_json::Value::Null,
            "a check inserts nothing"
        );
        assert!(last_error().unwrap().contains("drift: 1 change(s) needed"));
        assert_eq!(last_error_json().unwrap()["exit_code"], 1);

        let (code, report) = h.reconcile();
        assert_eq!(code, 0, "{report}");
        assert_eq!(last_error_json(), None);
        let handle = report["ops"][0]["handle"]
            .as_u64()
            .expect("the insert's handle");
        let listed = ok("nft -a list chain ip nat PREROUTING");
        let line = listed
            .lines()
            .find(|l| l.contains("jump OVN-PREROUTING "))
            .unwrap();
        assert!(
            line.trim_end().ends_with(&format!("# handle {handle}")),
            "{handle}: {line}"
        );

        let (code, check) = h.check_json();
        assert_eq!(
            (code, &check["verdict"]),
            (0, &"converged".into()),
            "{check}"
        );

        let (code, cleaned) = h.cleanup();
        assert_eq!(code, 0, "{cleaned}");
        assert_eq!(cleaned["ops"][0]["op"], "delete");
        assert_eq!(cleaned["ops"][0]["handle"].as_u64(), Some(handle));
        assert_eq!(cleaned["ops"][0]["reason"], "cleanup");
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
                .into_iter()
                .filter(|l| !l.contains("kube-ovn"))
                .collect::<Vec<_>>()
        );
    });
}

#[test]
fn a_bad_json_spec_is_null_with_its_key_in_the_last_error_json() {
    let msg = Handle::new_json(&HARVESTER_JSON.replace("\"nat\"", "\"security\""))
        .err()
        .expect("rejected");
    assert!(
        msg.starts_with("config: chains[0].table: unknown table"),
        "{msg}"
    );
    let j = last_error_json().unwrap();
    assert_eq!(j["key"], "chains[0].table");
    assert_eq!(j["exit_code"], 2);
    assert_eq!(j["error"].as_str(), Some(msg.as_str()));
}

#[test]
fn a_bad_config_is_null_with_the_message_the_cli_prints() {
    let text = harvester_config() + "\nbogus = 1\n";
    let msg = Handle::new(text.as_bytes()).err().expect("rejected");
    assert!(
        msg.starts_with("config: ") && msg.contains("bogus"),
        "{msg}"
    );
    // The command prints the same message, with the file's path in it.
    let file = config(&text);
    let cli = jumpset(&["check", "--config", file.as_str()]);
    assert_eq!(cli.code, 2);
    let cli_msg = cli
        .stderr
        .trim_end()
        .strip_prefix("jumpset: ")
        .unwrap()
        .replace(&format!("{}: ", file.as_str()), "");
    assert_eq!(cli_msg, msg);
}

#[test]
fn invalid_utf8_and_null_configs_are_errors() {
    let msg = Handle::new(b"backend = \"nft\xff\"\n")
        .err()
        .expect("rejected");
    assert!(msg.contains("not valid UTF-8"), "{msg}");
    let mut err = std::ptr::null_mut();
    // SAFETY: a NULL config is an error by contract; `err` is writable.
    let h = unsafe { (abi().new)(std::ptr::null(), &mut err) };
    assert!(h.is_null());
    assert_eq!(take(err).unwrap(), "jumpset_new: config_toml is NULL");
}

#[test]
fn a_null_handle_is_an_error_for_every_function() {
    let null = std::ptr::null_mut();
    let abi = abi();
    // SAFETY: NULL handles are errors by contract, never dereferenced.
    unsafe {
        assert_eq!((abi.check)(null), 2);
        assert!(last_error().unwrap().contains("handle is NULL"));

        let mut out = std::ptr::null_mut();
        assert_eq!((abi.reconcile)(null, &mut out), 2);
        let report: serde_json::Value = serde_json::from_str(&take(out).unwrap()).unwrap();
        assert_eq!(report["exit_code"], 2);
        assert_eq!(report["error"].as_str(), last_error().as_deref());
        assert!(report["error"].as_str().unwrap().contains("handle is NULL"));

        assert!((abi.status_json)(null).is_null());
        assert!(last_error().unwrap().contains("jumpset_status_json"));

        // Like free(NULL): nothing to do, nothing reported.
        (abi.free)(null);
        (abi.string_free)(std::ptr::null_mut());
    }
    let h = Handle::new(harvester_config().as_bytes()).unwrap();
    let mut_null = std::ptr::null_mut();
    // SAFETY: a live handle and a NULL out-pointer, an error by contract.
    assert_eq!(unsafe { (abi.reconcile)(h.0, mut_null) }, 2);
    assert!(last_error().unwrap().contains("report_json_out is NULL"));
    // SAFETY: no arguments; a static string.
    let v = unsafe { CStr::from_ptr((abi.version)()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn detect_json_reports_the_calling_threads_namespace() {
    netns(|| {
        // SAFETY: no arguments.
        let empty = take(unsafe { (abi().detect_json)() }).expect("detect JSON");
        let empty: serde_json::Value = serde_json::from_str(&empty).unwrap();
        assert_eq!(empty["mode"], "none", "{empty}");
        ok(&format!(
            "iptables-nft-restore < {}",
            fixture("harvester-broken.rules").display()
        ));
        // SAFETY: no arguments.
        let nft = take(unsafe { (abi().detect_json)() }).expect("detect JSON");
        let nft: serde_json::Value = serde_json::from_str(&nft).unwrap();
        assert_eq!(nft["mode"], "nft", "{nft}");
        assert_eq!(last_error(), None);
    });
}

fn load(fixture_name: &str) {
    ok(&format!(
        "iptables-nft-restore < {}",
        fixture(fixture_name).display()
    ));
}

#[test]
fn one_handle_used_by_two_threads_in_two_namespaces_acts_in_each() {
    // Made on the test's thread, in the machine's namespace: a handle holds no socket.
    let h = Handle::new(harvester_config().as_bytes()).unwrap();
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let broken = s.spawn(|| {
            netns(|| {
                load("harvester-broken.rules");
                barrier.wait();
                assert_eq!(h.check(), 1, "{:?}", last_error());
                assert!(last_error().unwrap().contains("drift"));
                barrier.wait();
                let (code, report) = h.reconcile();
                assert_eq!(code, 0, "{report}");
                assert_eq!(report["committed"], true);
                barrier.wait();
                assert_eq!(h.check(), 0);
                assert_eq!(last_error(), None);
                assert_eq!(
                    saved_chain("iptables-nft-save", "PREROUTING"),
                    fixture_chain("harvester-healthy.rules", "PREROUTING")
                );
            })
        });
        let healthy = s.spawn(|| {
            netns(|| {
                load("harvester-healthy.rules");
                let handles = nft_handles("ip", "nat", "PREROUTING");
                barrier.wait();
                assert_eq!(h.check(), 0, "{:?}", last_error());
                barrier.wait();
                let (code, report) = h.reconcile();
                assert_eq!(code, 0, "{report}");
                assert_eq!(report["committed"], false, "nothing to write here");
                barrier.wait();
                assert_eq!(h.check(), 0);
                assert_eq!(h.status()["in_order"], true);
                assert_eq!(nft_handles("ip", "nat", "PREROUTING"), handles);
            })
        });
        broken.join().unwrap();
        healthy.join().unwrap();
    });
}

/// The calling thread's network namespace, held open.
fn this_netns() -> File {
    File::open("/proc/thread-self/ns/net").expect("/proc/thread-self/ns/net")
}

fn enter(ns: &File) {
    // SAFETY: setns(2) on a namespace file we hold open; it only changes this thread's
    // network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

#[test]
fn one_thread_switching_namespaces_gets_the_namespace_it_is_in() {
    let h = Handle::new(harvester_config().as_bytes()).unwrap();
    netns(|| {
        load("harvester-broken.rules");
        let broken = this_netns();
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        load("harvester-healthy.rules");
        let healthy = this_netns();

        assert_eq!(h.check(), 0, "in the healthy namespace");
        enter(&broken);
        assert_eq!(h.check(), 1, "in the broken namespace");
        enter(&healthy);
        assert_eq!(h.reconcile().1["committed"], false);
        enter(&broken);
        let (code, report) = h.reconcile();
        assert_eq!((code, &report["committed"]), (0, &true.into()), "{report}");
        assert_eq!(h.check(), 0);
        assert_eq!(
            saved_chain("iptables-nft-save", "PREROUTING"),
            fixture_chain("harvester-healthy.rules", "PREROUTING")
        );
    });
}
