//! Gives the shared library its SONAME, `libjumpset.so.MAJOR`, so that programs linked
//! against it ask for that major version (the install step, `ffi/install.sh`, makes the
//! `libjumpset.so.MAJOR` and `libjumpset.so` links). MAJOR is `JUMPSET_ABI_MAJOR` of
//! `src/lib.rs`; a unit test checks the two agree.

/// The ABI's major version (`JUMPSET_ABI_MAJOR`).
const ABI_MAJOR: u32 = 1;

fn main() {
    let soname = format!("libjumpset.so.{ABI_MAJOR}");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
    println!("cargo:rustc-env=JUMPSET_SONAME={soname}");
    println!("cargo:rerun-if-changed=build.rs");
}
