//! The boundary itself, without a kernel: argument checks, error reporting, string
//! ownership and caught panics (through a test-only hook). The kernel paths run in
//! `tests/ffi.rs` of the root package, through the built library and the examples.

use super::*;

const CONFIG: &str = r#"
backend = "nft"
[[chain]]
table = "nat"
chain = "PREROUTING"
  [[chain.jump]]
  target = "OVN-PREROUTING"
  comment = "kube-ovn prerouting rules"
  after = ["cali-PREROUTING"]
"#;

fn last_error() -> Option<String> {
    let p = jumpset_last_error();
    // SAFETY: a non-NULL pointer from `jumpset_last_error` is a NUL-terminated string
    // valid until the next call on this thread.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
}

/// Take a string handed out by the library, freeing it.
fn take(p: *mut c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: `p` is a live string from the library; it is copied, then freed once.
    let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
    // SAFETY: as above; not used afterwards.
    unsafe { jumpset_string_free(p) };
    s
}

fn new(text: &[u8]) -> (*mut jumpset_t, Option<String>) {
    let c = CString::new(text).unwrap();
    let mut err = ptr::null_mut();
    // SAFETY: `c` is a NUL-terminated string alive for the call; `err` is writable.
    let js = unsafe { jumpset_new(c.as_ptr(), &mut err) };
    (js, (!err.is_null()).then(|| take(err)))
}

#[test]
fn version_is_the_crate_version() {
    // SAFETY: a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(jumpset_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_good_config_gives_a_handle_and_clears_the_last_error() {
    set_last_error(&CmdError::new(4, "left over"));
    let (js, err) = new(CONFIG.as_bytes());
    assert!(!js.is_null());
    assert_eq!(err, None);
    assert_eq!(
        last_error(),
        None,
        "a successful call clears the last error"
    );
    // SAFETY: a live handle, freed once.
    unsafe { jumpset_free(js) };
}

#[test]
fn a_bad_config_is_null_with_the_message_the_cli_prints() {
    let (js, err) = new(format!("{CONFIG}\nbogus = 1\n").as_bytes());
    assert!(js.is_null());
    let err = err.expect("*err_out is set");
    assert!(
        err.starts_with("config: ") && err.contains("bogus"),
        "{err}"
    );
    assert_eq!(last_error().as_deref(), Some(err.as_str()));
    let want = jumpset_core::Error::from(
        Config::from_toml(&format!("{CONFIG}\nbogus = 1\n")).unwrap_err(),
    )
    .to_string();
    assert_eq!(err, want);
}

#[test]
fn invalid_utf8_and_null_configs_are_errors() {
    let (js, err) = new(b"backend = \"nft\xff\"");
    assert!(js.is_null());
    assert!(err.unwrap().contains("not valid UTF-8"));

    let mut err = ptr::null_mut();
    // SAFETY: a NULL config is allowed (an error); `err` is writable.
    let js = unsafe { jumpset_new(ptr::null(), &mut err) };
    assert!(js.is_null());
    assert_eq!(take(err), "jumpset_new: config_toml is NULL");
    // `err_out` may be NULL: the message is still in last_error.
    // SAFETY: both NULL, which the contract allows.
    let js = unsafe { jumpset_new(ptr::null(), ptr::null_mut()) };
    assert!(js.is_null());
    assert_eq!(last_error().unwrap(), "jumpset_new: config_toml is NULL");
}

#[test]
fn a_null_handle_is_an_error_for_every_function() {
    let null = ptr::null_mut();
    // SAFETY: a NULL handle is allowed by every contract (an error).
    assert_eq!(unsafe { jumpset_check(null) }, JUMPSET_EXIT_USAGE);
    assert!(last_error().unwrap().contains("handle is NULL"));

    let mut report = ptr::null_mut();
    // SAFETY: as above; `report` is writable.
    let code = unsafe { jumpset_reconcile(null, &mut report) };
    assert_eq!(code, JUMPSET_EXIT_USAGE);
    let report: serde_json::Value = serde_json::from_str(&take(report)).unwrap();
    assert_eq!(report["exit_code"], 2);
    assert_eq!(report["error"].as_str(), last_error().as_deref());

    // SAFETY: as above.
    assert!(unsafe { jumpset_status_json(null) }.is_null());
    assert!(last_error().unwrap().contains("handle is NULL"));

    // SAFETY: NULL is a no-op for both.
    unsafe {
        jumpset_free(null);
        jumpset_string_free(ptr::null_mut());
    }
}

#[test]
fn reconcile_without_a_report_pointer_is_refused() {
    let (js, _) = new(CONFIG.as_bytes());
    // SAFETY: a live handle; a NULL out-pointer is allowed (an error).
    let code = unsafe { jumpset_reconcile(js, ptr::null_mut()) };
    assert_eq!(code, JUMPSET_EXIT_USAGE);
    assert!(last_error().unwrap().contains("report_json_out is NULL"));
    // SAFETY: a live handle, freed once.
    unsafe { jumpset_free(js) };
}

#[test]
fn a_panic_in_any_entry_point_is_caught_and_reported() {
    let (js, _) = new(CONFIG.as_bytes());
    let arm = |name: &'static str| PANIC_IN.with(|p| p.set(Some(name)));
    let caught = |name: &str| {
        let e = last_error().expect("last error set");
        assert!(
            e.starts_with(name) && e.contains("panic") && e.contains("test hook"),
            "{e}"
        );
    };

    arm("jumpset_new");
    let (other, err) = new(CONFIG.as_bytes());
    assert!(other.is_null());
    assert!(err.unwrap().contains("panic"));
    caught("jumpset_new");

    arm("jumpset_check");
    // SAFETY: a live handle.
    assert_eq!(unsafe { jumpset_check(js) }, JUMPSET_EXIT_PANIC);
    caught("jumpset_check");

    arm("jumpset_reconcile");
    let mut report = ptr::null_mut();
    // SAFETY: a live handle; `report` is writable.
    let code = unsafe { jumpset_reconcile(js, &mut report) };
    assert_eq!(code, JUMPSET_EXIT_PANIC);
    caught("jumpset_reconcile");
    let report: serde_json::Value = serde_json::from_str(&take(report)).unwrap();
    assert_eq!(report["exit_code"], JUMPSET_EXIT_PANIC);

    arm("jumpset_status_json");
    // SAFETY: a live handle.
    assert!(unsafe { jumpset_status_json(js) }.is_null());
    caught("jumpset_status_json");

    arm("jumpset_detect_json");
    assert!(jumpset_detect_json().is_null());
    caught("jumpset_detect_json");

    for (name, f) in [
        (
            "jumpset_check_json",
            jumpset_check_json as unsafe extern "C" fn(_, _) -> _,
        ),
        ("jumpset_cleanup", jumpset_cleanup),
    ] {
        arm(name);
        let mut report = ptr::null_mut();
        // SAFETY: a live handle; `report` is writable.
        assert_eq!(unsafe { f(js, &mut report) }, JUMPSET_EXIT_PANIC);
        caught(name);
        let report: serde_json::Value = serde_json::from_str(&take(report)).unwrap();
        assert_eq!(report["exit_code"], JUMPSET_EXIT_PANIC);
    }

    arm("jumpset_new_json");
    let (other, err) = new_json(SPEC_JSON);
    assert!(other.is_null() && err.unwrap().contains("panic"));
    caught("jumpset_new_json");
    assert_eq!(last_error_json().unwrap()["exit_code"], JUMPSET_EXIT_PANIC);

    PANIC_IN.with(|p| p.set(None));
    // SAFETY: a live handle, freed once.
    unsafe { jumpset_free(js) };
}

#[test]
fn the_last_error_is_per_thread() {
    // SAFETY: a NULL handle is allowed (an error).
    assert_eq!(unsafe { jumpset_check(ptr::null_mut()) }, 2);
    assert!(last_error().is_some());
    std::thread::spawn(|| assert_eq!(last_error(), None))
        .join()
        .unwrap();
    assert!(last_error().is_some());
}

#[test]
fn messages_with_nul_bytes_survive_as_c_strings() {
    set_last_error(&CmdError::new(4, "a\0b"));
    assert_eq!(last_error().unwrap(), "ab");
    assert_eq!(last_error_json().unwrap()["error"], "a\u{0}b");
}

#[test]
fn the_soname_is_the_abi_major_version() {
    assert_eq!(
        env!("JUMPSET_SONAME"),
        format!("libjumpset.so.{JUMPSET_ABI_MAJOR}")
    );
}

fn new_json(text: &str) -> (*mut jumpset_t, Option<String>) {
    let c = CString::new(text).unwrap();
    let mut err = ptr::null_mut();
    // SAFETY: `c` is a NUL-terminated string alive for the call; `err` is writable.
    let js = unsafe { jumpset_new_json(c.as_ptr(), &mut err) };
    (js, (!err.is_null()).then(|| take(err)))
}

fn last_error_json() -> Option<serde_json::Value> {
    let p = jumpset_last_error_json();
    // SAFETY: a non-NULL pointer from `jumpset_last_error_json` is a NUL-terminated string
    // valid until the next call on this thread.
    (!p.is_null())
        .then(|| serde_json::from_str(unsafe { CStr::from_ptr(p) }.to_str().unwrap()).unwrap())
}

const SPEC_JSON: &str = r#"{"backend": "nft", "chains": [{"table": "nat", "chain": "PREROUTING",
    "jumps": [{"target": "OVN-PREROUTING", "comment": "kube-ovn prerouting rules",
               "after": ["cali-PREROUTING"]}]}]}"#;

#[test]
fn the_json_constructor_makes_the_handle_the_toml_one_makes() {
    let (a, err) = new_json(SPEC_JSON);
    assert_eq!(err, None);
    assert_eq!(last_error(), None);
    assert_eq!(last_error_json(), None);
    let (b, _) = new(CONFIG.as_bytes());
    // SAFETY: two live handles, read, then freed once each.
    unsafe {
        assert_eq!((*a).js.config(), (*b).js.config());
        jumpset_free(a);
        jumpset_free(b);
    }
}

#[test]
fn a_bad_json_spec_names_its_key_and_line_in_the_last_error_json() {
    let bad = "{\"chains\": [{\"table\": \"nat\", \"chain\": \"PREROUTING\",\n \"jumps\": [{\"target\": \"X\", \"comment\": \"x\", \"after\": [\"X\"]}]}]}";
    let (js, err) = new_json(bad);
    assert!(js.is_null());
    let err = err.expect("*err_out is set");
    assert!(err.starts_with("config: chains[0].jumps[0].after"), "{err}");
    assert_eq!(last_error().as_deref(), Some(err.as_str()));
    let j = last_error_json().expect("the JSON error");
    assert_eq!(j["error"], err.as_str());
    assert_eq!(j["exit_code"], JUMPSET_EXIT_USAGE);
    assert_eq!(j["key"], "chains[0].jumps[0].after");
    assert_eq!(
        j["line"],
        serde_json::Value::Null,
        "validation knows no line"
    );
    // A type error is found by the parser, which knows the line.
    let (_, _) = new_json("{\"chains\": [{\"table\": \"nat\", \"chain\": \"PREROUTING\",\n \"jumps\": [{\"target\": \"X\", \"comment\": \"x\", \"after\": \"Y\"}]}]}");
    let j = last_error_json().unwrap();
    assert_eq!(
        (&j["key"], &j["line"]),
        (&"chains[0].jumps[0].after".into(), &2.into())
    );
    // TOML keeps its own key spelling.
    let (_, _) = new(b"[[chain]]\ntable = \"nat\"\nchain = \"FORWARD\"\n");
    let j = last_error_json().unwrap();
    assert_eq!(
        (&j["key"], &j["line"]),
        (&"chain[0].chain".into(), &3.into())
    );
    // Errors that are not about the config have no key.
    // SAFETY: a NULL handle is allowed (an error).
    let code = unsafe { jumpset_check(ptr::null_mut()) };
    assert_eq!(code, JUMPSET_EXIT_USAGE);
    let j = last_error_json().unwrap();
    assert!(j.get("key").is_none(), "{j}");
    assert_eq!(j["error"].as_str(), last_error().as_deref());
    // NULL and non-UTF-8 specs are errors too.
    let mut e = ptr::null_mut();
    // SAFETY: a NULL spec is allowed (an error); `e` is writable.
    assert!(unsafe { jumpset_new_json(ptr::null(), &mut e) }.is_null());
    assert_eq!(take(e), "jumpset_new_json: spec_json is NULL");
}

#[test]
fn check_json_and_cleanup_refuse_null_arguments_and_always_report() {
    let null = ptr::null_mut();
    for (name, f) in [
        (
            "jumpset_check_json",
            jumpset_check_json as unsafe extern "C" fn(_, _) -> _,
        ),
        ("jumpset_cleanup", jumpset_cleanup),
    ] {
        let mut report = ptr::null_mut();
        // SAFETY: a NULL handle is allowed (an error); `report` is writable.
        assert_eq!(unsafe { f(null, &mut report) }, JUMPSET_EXIT_USAGE);
        let r: serde_json::Value = serde_json::from_str(&take(report)).unwrap();
        assert_eq!(r["exit_code"], 2, "{name}");
        assert!(last_error().unwrap().contains("handle is NULL"), "{name}");
        let (js, _) = new(CONFIG.as_bytes());
        // SAFETY: a live handle; a NULL out-pointer is allowed (an error).
        assert_eq!(unsafe { f(js, null.cast()) }, JUMPSET_EXIT_USAGE);
        assert_eq!(
            last_error().unwrap(),
            format!("{name}: report_json_out is NULL; pass the address of a char * for the report")
        );
        // SAFETY: a live handle, freed once.
        unsafe { jumpset_free(js) };
    }
}
