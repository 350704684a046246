//! The `jumpset` command: parses arguments, calls the library, prints, exits with the
//! codes of `docs/contracts.md#exit-codes` (0 ok, 1 drift, 2 usage/config, 3 privilege,
//! 4 kernel, 5 conflict).

use clap::{Parser, Subcommand, ValueEnum};
mod bench;
mod client;
mod commands;
mod demo;
mod logging;
mod output;
mod render;

use jumpset::snapshot::{CommentEncoding, Family};
use jumpset::spec::{BackendChoice, Config, DEFAULT_CONFIG_PATH};
use jumpset::Jumpset;
use output::{CmdError, Output, EXIT_USAGE};
use std::path::PathBuf;
use std::process::ExitCode;

/// Owns the jump set of shared netfilter base chains: declared jumps, placed by
/// constraints, written in one kernel transaction.
#[derive(Parser)]
#[command(name = "jumpset", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Config file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel interface (overrides the config's `backend`).
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendArg>,
    /// Address families to manage (overrides the config's `families`).
    #[arg(long, global = true, value_enum)]
    family: Option<FamilyArg>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Let a write create the first iptables table of its backend for a family while the
    /// other backend is in use for it, which makes the host mixed (refused by default).
    #[arg(long, global = true)]
    allow_mixed_backends: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Host mode: nft | legacy | mixed | none, with evidence.
    Detect,
    /// Check the config, its drop-ins and the persisted API claims without touching the
    /// kernel: exit 0 valid, 2 invalid (systemd's ExecReload= runs it before the reload).
    Validate,
    /// The chain as the kernel has it: each rule, its owner, in place or not.
    Status,
    /// Exit 0 when converged, 1 on drift, 5 on a conflict, >= 2 on error.
    Check,
    /// What `apply` would do, as iptables-style lines; exit 0 either way.
    Plan {
        /// Also say why each declared jump would stand where `apply` leaves it.
        #[arg(long)]
        explain: bool,
    },
    /// One reconcile: one kernel transaction per chain and family.
    Apply,
    /// Every base chain a packet meets on a hook, in the kernel's order (both backends,
    /// every table, nat chains inside the NAT hook), who owns each, what is fragile, and
    /// why each owned jump stands where it does. Read-only; the config is optional.
    Explain {
        /// The hook (default: those of the managed chains; without a config, all five).
        #[arg(long, value_enum)]
        hook: Option<HookArg>,
    },
    /// Remove the owned jumps (uninstall).
    Cleanup,
    /// Keep the chains reconciled: react to nf_tables change notifications (legacy: poll
    /// every `resync_interval`), back off from fights, notify systemd, serve metrics and
    /// the probes, reload the config when it changes.
    Daemon {
        /// How log records are written on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: logging::LogFormat,
    },
    /// Stop every write of the running daemon (maintenance): it keeps reading and
    /// reporting, and says so in /readyz and STATUS=. Talks to its local API.
    Pause {
        /// Why (shown in /readyz and STATUS=).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// The daemon's socket (default: the config's daemon.api_socket).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Let the running daemon write again after `jumpset pause`: every chain is re-read
    /// and repaired.
    Resume {
        /// The daemon's socket (default: the config's daemon.api_socket).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Wait until every managed chain has converged (for node bootstrap scripts): exit 0
    /// then, 1 if it has not by the timeout; reads only, never writes.
    Wait {
        /// How long to wait (`"30s"`, `"2m"`, `"500ms"`).
        #[arg(long, default_value = "60s", value_name = "DURATION")]
        timeout: String,
    },
    /// The Harvester incident and its repair, in a throwaway network namespace.
    Demo,
    /// Reconcile timings against the exec baselines, in a throwaway network namespace
    /// (`--backend nft|legacy`, default nft; ip only).
    Bench {
        /// Kube-proxy-style rules in the nat table besides the Harvester jumps.
        #[arg(long, default_value_t = 0, value_name = "N")]
        rules: usize,
        /// Samples per timing (each timing also stops at its time budget).
        #[arg(long, value_name = "K")]
        iterations: Option<usize>,
        /// How the owned jump's comment is written (userdata: nft only).
        #[arg(long, value_enum, default_value = "xt")]
        comment_encoding: EncodingArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EncodingArg {
    Xt,
    Userdata,
}

#[derive(Clone, Copy, ValueEnum)]
enum HookArg {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl HookArg {
    fn hook(self) -> jumpset::explain::Hook {
        use jumpset::explain::Hook;
        match self {
            HookArg::Prerouting => Hook::Prerouting,
            HookArg::Input => Hook::Input,
            HookArg::Forward => Hook::Forward,
            HookArg::Output => Hook::Output,
            HookArg::Postrouting => Hook::Postrouting,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Nft,
    Legacy,
}

#[derive(Clone, Copy, ValueEnum)]
enum FamilyArg {
    Ip,
    Ip6,
    Both,
}

impl Cli {
    /// The `--backend` and `--family` flags, as overrides of the config (`None`: absent).
    fn overrides(&self) -> (Option<BackendChoice>, Option<Vec<Family>>) {
        let backend = self.backend.map(|b| match b {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::Nft => BackendChoice::Nft,
            BackendArg::Legacy => BackendChoice::Legacy,
        });
        let families = self.family.map(|f| match f {
            FamilyArg::Ip => vec![Family::Ip],
            FamilyArg::Ip6 => vec![Family::Ip6],
            FamilyArg::Both => vec![Family::Ip, Family::Ip6],
        });
        (backend, families)
    }
}

fn run(cli: Cli) -> Result<Output, CmdError> {
    let (backend, families) = cli.overrides();
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let cfg = Config::load(&path).map_err(|e| CmdError::new(EXIT_USAGE, format!("config: {e}")))?;
    let mut js = Jumpset::new(cfg).allow_mixed_backends(cli.allow_mixed_backends);
    if let Some(b) = backend {
        js = js.backend(b);
    }
    if let Some(f) = families {
        js = js.families(f);
    }
    match cli.command {
        Command::Validate => Ok(commands::validate(js.config())),
        Command::Status => commands::status(&js),
        Command::Check => commands::check(&js),
        Command::Plan { explain } => commands::plan(&js, explain),
        Command::Apply => commands::apply(&js),
        Command::Cleanup => commands::cleanup(&js),
        Command::Wait { ref timeout } => {
            let timeout = jumpset::spec::parse_duration(timeout)
                .map_err(|e| CmdError::new(EXIT_USAGE, format!("--timeout: {e}")))?;
            commands::wait(&js, timeout)
        }
        Command::Demo
        | Command::Detect
        | Command::Bench { .. }
        | Command::Daemon { .. }
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Explain { .. } => {
            unreachable!("handled before the config is read")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    if matches!(cli.command, Command::Detect) {
        return print(commands::detect(), json);
    }
    if let Command::Bench {
        rules,
        iterations,
        comment_encoding,
    } = cli.command
    {
        return print(
            bench::run(&bench::BenchOptions {
                backend: match cli.backend {
                    None | Some(BackendArg::Nft) => BackendChoice::Nft,
                    Some(BackendArg::Legacy) => BackendChoice::Legacy,
                    Some(BackendArg::Auto) => BackendChoice::Auto,
                },
                families: match cli.family {
                    None | Some(FamilyArg::Ip) => vec![Family::Ip],
                    Some(FamilyArg::Ip6) => vec![Family::Ip6],
                    Some(FamilyArg::Both) => vec![Family::Ip, Family::Ip6],
                },
                rules,
                iterations,
                encoding: match comment_encoding {
                    EncodingArg::Xt => CommentEncoding::Xt,
                    EncodingArg::Userdata => CommentEncoding::Userdata,
                },
            }),
            json,
        );
    }
    if matches!(cli.command, Command::Demo) {
        return match demo::run(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                output::to_stderr(&format!("jumpset demo: {e}\n"));
                ExitCode::from(e.code as u8)
            }
        };
    }
    if let Command::Daemon { log_format } = cli.command {
        return daemon(cli, log_format);
    }
    let config = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    match &cli.command {
        Command::Pause { reason, socket } => {
            return print(
                client::socket_of(socket.clone(), &config)
                    .and_then(|s| client::pause(&s, reason.as_deref())),
                json,
            )
        }
        Command::Resume { socket } => {
            return print(
                client::socket_of(socket.clone(), &config).and_then(|s| client::resume(&s)),
                json,
            )
        }
        _ => {}
    }
    if let Command::Explain { hook } = cli.command {
        let code = print(explain(&cli, hook), json);
        bench::report_peak_rss();
        return code;
    }
    let code = print(run(cli), json);
    bench::report_peak_rss();
    code
}

/// `jumpset explain`: with the config given by `--config`, or found at the default path;
/// without one (no such file), the path alone.
fn explain(cli: &Cli, hook: Option<HookArg>) -> Result<Output, CmdError> {
    let (backend, families) = cli.overrides();
    let path = cli.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG_PATH);
        default.exists().then_some(default)
    });
    let hooks = hook.map(|h| vec![h.hook()]);
    let cfg = match &path {
        Some(p) => {
            Some(Config::load(p).map_err(|e| CmdError::new(EXIT_USAGE, format!("config: {e}")))?)
        }
        None => None,
    };
    let x = match cfg {
        Some(cfg) => {
            let mut js = Jumpset::new(cfg);
            if let Some(b) = backend {
                js = js.backend(b);
            }
            if let Some(f) = families {
                js = js.families(f);
            }
            js.explain(hooks.as_deref())?
        }
        None => {
            let mut req = jumpset::explain::Request::new(None);
            if let Some(b) = backend {
                req.backend = b;
            }
            if let Some(f) = families {
                req.families = f;
            }
            if let Some(h) = hooks {
                req.hooks = h;
            }
            jumpset::explain::explain(&req)?
        }
    };
    Ok(commands::explain(&x))
}

/// `jumpset daemon`: load the config, check the capabilities and drop every other one
/// BEFORE the tokio runtime starts (capabilities are per thread), then run the loop on a
/// current-thread runtime until SIGTERM/SIGINT (exit 0).
fn daemon(cli: Cli, log_format: logging::LogFormat) -> ExitCode {
    use jumpset::daemon;
    logging::init(log_format);
    let fail = |code: i32, msg: String| {
        tracing::error!("{msg}");
        output::to_stderr(&format!("jumpset daemon: {msg}\n"));
        ExitCode::from(code as u8)
    };
    let (backend, families) = cli.overrides();
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    // The main file must be valid; a drop-in or claim that is not is left out, and
    // reported by the daemon.
    let cfg = match Config::load_lenient(&path) {
        Ok((c, _)) => c,
        Err(e) => return fail(EXIT_USAGE, format!("config: {e}")),
    };
    match daemon::restrict_privileges(backend.unwrap_or(cfg.backend())) {
        Ok(None) => {}
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Err(e) => return fail(e.exit_code(), e.to_string()),
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                output::EXIT_KERNEL,
                format!("cannot start the runtime: {e}"),
            )
        }
    };
    let mut opts = daemon::Options::new(path);
    opts.backend = backend;
    opts.families = families;
    opts.build_revision = env!("JUMPSET_GIT_REVISION").to_string();
    match rt.block_on(async { daemon::run(opts, daemon::termination()?).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_code(), e.to_string()),
    }
}

/// Print a command's output (or error) and turn its code into the process exit code.
/// Output that cannot be written (`jumpset status | head -c1`, a full disk) is dropped:
/// the command's work is done and its exit code says how it went.
fn print(result: Result<Output, CmdError>, json: bool) -> ExitCode {
    match result {
        Ok(out) => {
            if json {
                output::to_stdout(&format!("{}\n", out.json));
            } else {
                output::to_stdout(&out.text);
            }
            ExitCode::from(out.code as u8)
        }
        Err(e) => {
            if json {
                output::to_stdout(&format!("{}\n", e.to_json()));
            }
            output::to_stderr(&format!("jumpset: {e}\n"));
            ExitCode::from(e.code as u8)
        }
    }
}
