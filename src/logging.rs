//! The daemon's log output (tracing-subscriber, on stderr).

/// Log to stderr with `tracing` (filter from `$JUMPSET_LOG`, else `$RUST_LOG`, else
/// `info`). Call once, from `main`.
pub fn init() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("JUMPSET_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
