//! The repository README shows the library's example: it must be the one the crate
//! README holds, which rustdoc compiles (see `ReadmeDoctests` in lib.rs).

#[test]
fn the_repository_readme_shows_the_compiled_library_example() {
    let crate_readme = include_str!("../README.md");
    let repo_readme = include_str!("../../../README.md");
    let start = crate_readme
        .find("```rust,no_run")
        .expect("the crate README's example");
    let end = start + crate_readme[start..].find("\n```\n").expect("its end");
    let example = &crate_readme[start..end];
    assert!(
        repo_readme.contains(example),
        "README.md's Rust example differs from crates/jumpset/README.md's"
    );
}
