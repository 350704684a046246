//! Native builds of the tests: the C library (`libjumpset.so`/`.a`) built with cargo and
//! installed by `ffi/install.sh` into a prefix of the test run, and Go builds against it
//! (tests/ffi.rs, tests/handover.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the build products of this test's own profile are (target/debug or
/// target/release): this test binary lives in its `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Where the examples are built.
pub fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Build `libjumpset.so` and `libjumpset.a` (once per test run) and return their folder.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(root())
            .args(["build", "--quiet", "--locked", "-p", "jumpset-ffi"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build -p jumpset-ffi failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for lib in ["libjumpset.so", "libjumpset.a"] {
            assert!(dir.join(lib).exists(), "{lib} not in {}", dir.display());
        }
        dir
    })
}

/// The library installed by `ffi/install.sh` into a prefix of this test run (once), as
/// the README tells an operator to; returns the prefix.
pub fn installed() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = out_dir().join("prefix");
        let _ = std::fs::remove_dir_all(&prefix);
        build(
            Command::new(root().join("ffi/install.sh"))
                .arg(&prefix)
                .env("JUMPSET_LIB_DIR", lib_dir())
                .env("LDCONFIG", ""),
            "ffi/install.sh",
        );
        prefix
    })
}

/// `pkg-config ARGS jumpset` against the installed prefix.
pub fn pkg_config(args: &[&str]) -> Vec<String> {
    require("pkg-config", "pkg-config");
    let out = Command::new("pkg-config")
        .args(args)
        .arg("jumpset")
        .env("PKG_CONFIG_PATH", installed().join("lib/pkgconfig"))
        .output()
        .expect("pkg-config runs");
    assert!(
        out.status.success(),
        "pkg-config {args:?} jumpset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A tool the test needs, or a clear failure naming the package that provides it.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{tool}` is not installed: install it (apt-get install {package}); scripts/test.sh does"
    );
}

/// Run a build command that must succeed.
pub fn build(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The environment of a Go build in this test run: no module is fetched (the package
/// and the example need only the standard library), the library found by pkg-config in
/// the installed prefix, and an rpath to it.
pub fn go_env(cmd: &mut Command) -> &mut Command {
    require("go", "golang-go");
    let cache = out_dir().join("go");
    let libdir = installed().join("lib");
    cmd.env("PKG_CONFIG_PATH", libdir.join("pkgconfig"))
        .env("CGO_LDFLAGS", format!("-Wl,-rpath,{}", libdir.display()))
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
}

/// The Go example agent (ffi/examples/go, which imports the package in go/), built with
/// cgo (`cgo = true`: the in-process transport, the library found by pkg-config) or
/// without (CGO_ENABLED=0: the socket transport only).
pub fn go_agent(cgo: bool) -> PathBuf {
    static CGO: OnceLock<PathBuf> = OnceLock::new();
    static PURE: OnceLock<PathBuf> = OnceLock::new();
    let cell = if cgo { &CGO } else { &PURE };
    cell.get_or_init(|| {
        let bin = out_dir().join(if cgo {
            "ffi-agent-go"
        } else {
            "ffi-agent-go-nocgo"
        });
        build(
            go_env(
                Command::new("go")
                    .current_dir(root().join("ffi/examples/go"))
                    .args(["build", "-o"])
                    .arg(&bin)
                    .arg("."),
            )
            .env("CGO_ENABLED", if cgo { "1" } else { "0" }),
            "go build (ffi/examples/go)",
        );
        bin
    })
    .clone()
}
