//! The example agent (`examples/agent.rs`) as a user runs it: built by `cargo test`, run
//! as root; it reconciles the seed chain in a throwaway namespace with a spec made by the
//! builder, and a second pass commits nothing.

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("a target directory")
}

#[test]
fn the_example_agent_reconciles_the_seed_chain_with_a_built_spec() {
    let agent = example("agent");
    if !agent.exists() {
        // `cargo test` builds the examples; a run filtered to this test does not.
        let built = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "jumpset",
                "--features",
                "testing",
                "--example",
                "agent",
            ])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building the example failed");
    }
    let out = Command::new(agent)
        .output()
        .expect("the example agent was built by cargo test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ip nat")).collect();
    assert_eq!(passes.len(), 2, "{stdout}");
    assert!(
        passes[0].contains("2 change(s), one transaction"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("-D PREROUTING").count(),
        2,
        "two duplicates deleted by handle:\n{stdout}"
    );
    assert!(
        passes[1].contains("0 change(s), nothing committed"),
        "{stdout}"
    );
    assert!(stdout.contains("check: exit 0"), "{stdout}");
}
