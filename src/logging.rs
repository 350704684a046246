//! The daemon's log output: `tracing` records on stderr, as text or JSON lines.
//!
//! - **A failing sink never stops the daemon.** Records are written to stderr by
//!   [`Sink`], which drops a record it cannot write (the reader of a pipe has gone, the
//!   disk is full, `2>/dev/full`) and counts it (`jumpset_log_writes_dropped_total`).
//!   tracing-subscriber reports a failed write with `eprintln!`, which panics on that
//!   same stderr: the sink never reports a failure to it.
//! - **journald priorities.** Under systemd with stderr connected to the journal
//!   (`$JOURNAL_STREAM` names stderr's device and inode), each record starts with its
//!   syslog priority, `<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace,
//!   which journald strips and stores (`journalctl -p warning` then shows warnings).

use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per record.
    Text,
    /// One JSON object per line (timestamp, level, fields).
    Json,
}

/// stderr that drops (and counts) what it cannot write instead of failing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(buf).is_err() {
            jumpset::daemon::dropped_log_writes().inc();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Whether stderr is the journal's stream (`$JOURNAL_STREAM` = `DEV:INODE` of stderr).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The syslog priority of a level (sd-daemon(3)).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A formatter that puts `<N>` before what `F` writes.
struct Prefixed<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Log to stderr with `tracing` (filter from `$JUMPSET_LOG`, else `$RUST_LOG`, else
/// `info`) in `format`. Call once, from `main`.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("JUMPSET_LOG")
            .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_writer(|| Sink)
        .with_env_filter(filter())
        .with_target(false)
        .with_ansi(!journal && std::io::stderr().is_terminal())
        .log_internal_errors(false);
    let _ = match (format, journal) {
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder
            .event_format(Prefixed(
                tracing_subscriber::fmt::format().with_target(false),
            ))
            .try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .event_format(Prefixed(
                tracing_subscriber::fmt::format().with_target(false).json(),
            ))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!(
            [
                Level::ERROR,
                Level::WARN,
                Level::INFO,
                Level::DEBUG,
                Level::TRACE
            ]
            .map(|l| priority(&l)),
            [3, 4, 6, 7, 7]
        );
    }
}
