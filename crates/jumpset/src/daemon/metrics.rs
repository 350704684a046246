//! Metrics and the probe endpoints, served on `daemon.metrics_listen` by the daemon's
//! HTTP server ([`super::http`]):
//!
//! - `/metrics`: every `jumpset_*` series, the standard `process_*` ones, in the
//!   Prometheus text format 0.0.4 or in OpenMetrics 1.0, as the client's `Accept` asks
//!   (Prometheus asks for OpenMetrics; curl and promtool get the text format);
//! - `/livez`: 200 while the daemon's loop answers (within [`LIVENESS_WAIT`]) — what a
//!   liveness probe or a watchdog should restart on, and nothing else: a fight or a chain
//!   that cannot be fixed never fails it;
//! - `/readyz`: 200 when every managed chain is as declared, else 503 with the reasons
//!   (out of order, failing reconciles, yielding in a fight, paused, waiting, a rejected
//!   config fragment) — for a readiness probe and dashboards;
//! - `/healthz`: the same as `/readyz` (as kube-proxy's `/healthz`).

use super::engine::Command;
use super::http::{self, BoxFuture, Handler, Router};
use bytes::Bytes;
use hyper::StatusCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Labels of a managed chain.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabels {
    /// `ip` or `ip6`.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
}

/// Labels of an anchor of a managed chain (a chain named in `after`/`before`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnchorLabels {
    /// `ip` or `ip6`.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// The chain the anchor jumps to.
    pub anchor: String,
}

/// Labels of an anchor's removal: the anchor and the agent that removed it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RemovalLabels {
    /// `ip` or `ip6`.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// The chain the anchor jumps to.
    pub anchor: String,
    /// The agent (`daemon::ident::KNOWN_AGENTS`, `other` or `unknown`).
    pub agent: String,
}

/// Labels of a managed chain and the agent of another writer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    /// `ip` or `ip6`.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// The agent (`daemon::ident::KNOWN_AGENTS`, `other` or `unknown`).
    pub agent: String,
}

/// A single `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `noop`, `repaired`, `conflict`, `error` (reconciles); `ok`, `error` (reloads).
    pub result: String,
}

/// A single `source` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `foreign` or `own`.
    pub source: String,
}

/// A failed reconcile's chain and the step it failed in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `ip` or `ip6`.
    pub family: String,
    /// Table.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// `read`, `commit`, `verify`, `lock` (the xtables lock), `stale` (other writers kept
    /// committing), `missing_target`, `unsupported_chain`, `would_mix`, `permission`.
    pub step: String,
}

/// The build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// jumpset's version.
    pub version: String,
    /// The git revision it was built from, `unknown` when not known at build time.
    pub revision: String,
}

/// A single `kind` label: a kind of `jumpset explain` finding (bounded:
/// `explain::FindingKind::ALL`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabel {
    /// `priority_tie`, `mixed_backends`, ...
    pub kind: String,
}

/// The backend in use.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// `nft`, `legacy`, or `none` while waiting.
    pub backend: String,
    /// jumpset's version.
    pub version: String,
}

/// Every series the daemon exports. Cloning shares the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Reconciles by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Transactions committed to repair a chain.
    pub repairs: Family<ChainLabels, Counter>,
    /// Stale attempts (another writer got in), every one, also of a reconcile that gave up.
    pub stale_retries: Counter,
    /// Reconciles that ended as close as a conflict allows.
    pub conflicts: Family<ChainLabels, Counter>,
    /// Fight episodes started.
    pub fights: Family<ChainLabels, Counter>,
    /// 1 while a fight episode runs.
    pub fight_active: Family<ChainLabels, Gauge>,
    /// 1 while jumpset yields the chain in a fight (a change is held).
    pub fight_yielding: Family<ChainLabels, Gauge>,
    /// Repairs that undid another writer's change, by that writer's agent.
    pub undos: Family<AgentLabels, Counter>,
    /// 1 while a rule of the chain jumps to the anchor, 0 while none does.
    pub anchor_present: Family<AnchorLabels, Gauge>,
    /// Anchors that were present and disappeared, by the agent that removed them.
    pub anchor_removals: Family<RemovalLabels, Counter>,
    /// 1 when the chain is in order (as far as any conflict allows: 0 then).
    pub in_order: Family<ChainLabels, Gauge>,
    /// Unix time of the last successful reconcile.
    pub last_success: Gauge<f64, AtomicU64>,
    /// Reconcile duration (read + plan + apply + verify).
    pub reconcile_seconds: Histogram,
    /// From the notification of a foreign change to our repair committed.
    pub repair_latency_seconds: Histogram,
    /// Commits to watched chains seen in notifications, by source.
    pub notifications: Family<SourceLabel, Counter>,
    /// Notification queue overflows (ENOBUFS), each followed by a full re-read.
    pub overflows: Counter,
    /// Full re-reads (timer, poll, overflow).
    pub resyncs: Counter,
    /// Config reloads (SIGHUP or a change of the files) by result.
    pub reloads: Family<ResultLabel, Counter>,
    /// 1, labelled with the backend in use.
    pub info: Family<InfoLabels, Gauge>,
    /// 1, labelled with the version and revision.
    pub build_info: Family<BuildLabels, Gauge>,
    /// Failed reconciles by chain and step.
    pub errors: Family<ErrorLabels, Counter>,
    /// 1 when `/readyz` answers 200.
    pub ready: Gauge,
    /// Config fragments (drop-ins, API claims) left out of the running config.
    pub rejected_fragments: Gauge,
    /// Connections the HTTP server closed to make room for newer ones.
    pub http_evictions: Counter,
    /// Findings of `jumpset explain` about the managed chains' hooks now, by kind.
    pub findings: Family<FindingLabel, Gauge>,
}

/// Log records that could not be written (the log sink failed) and were dropped: the
/// logger of the binary counts them here, `/metrics` shows them.
pub fn dropped_log_writes() -> &'static Counter {
    static DROPPED: OnceLock<Counter> = OnceLock::new();
    DROPPED.get_or_init(Counter::default)
}

impl Metrics {
    /// The series: `jumpset_*` in a sub-registry, `process_*` at the root.
    pub fn new() -> (Metrics, Registry) {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let r = root.sub_registry_with_prefix("jumpset");
        let m = Metrics {
            reconciles: Family::default(),
            repairs: Family::default(),
            stale_retries: Counter::default(),
            conflicts: Family::default(),
            fights: Family::default(),
            fight_active: Family::default(),
            fight_yielding: Family::default(),
            undos: Family::default(),
            anchor_present: Family::default(),
            anchor_removals: Family::default(),
            in_order: Family::default(),
            last_success: Gauge::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(25e-6, 2.0, 18)),
            repair_latency_seconds: Histogram::new(exponential_buckets(100e-6, 2.0, 16)),
            notifications: Family::default(),
            overflows: Counter::default(),
            resyncs: Counter::default(),
            reloads: Family::default(),
            info: Family::default(),
            build_info: Family::default(),
            errors: Family::default(),
            ready: Gauge::default(),
            rejected_fragments: Gauge::default(),
            http_evictions: Counter::default(),
            findings: Family::default(),
        };
        r.register(
            "reconciles",
            "Reconciles of one chain in one family, by result",
            m.reconciles.clone(),
        );
        r.register(
            "repairs",
            "Transactions committed to put a chain back in order",
            m.repairs.clone(),
        );
        r.register(
            "stale_retries",
            "Stale attempts: writes refused as planned from an old generation, reads that commits kept racing, anchored writes not converged on read-back",
            m.stale_retries.clone(),
        );
        r.register(
            "conflicts",
            "Reconciles that could only get as close as the foreign rules allow",
            m.conflicts.clone(),
        );
        r.register(
            "fights",
            "Fight episodes: another writer kept undoing the placement",
            m.fights.clone(),
        );
        r.register(
            "fight_active",
            "1 while a fight episode runs (repairs are backed off)",
            m.fight_active.clone(),
        );
        r.register(
            "fight_yielding",
            "1 while jumpset yields the chain in a fight: a change is held until the other writer has gone quiet",
            m.fight_yielding.clone(),
        );
        r.register(
            "undos",
            "Repairs that undid another writer's change, by that writer's agent",
            m.undos.clone(),
        );
        r.register(
            "anchor_present",
            "1 while a rule of the managed chain jumps to the anchor (a chain named in after/before), 0 while none does",
            m.anchor_present.clone(),
        );
        r.register(
            "anchor_removals",
            "Anchors that were present and disappeared, by the agent that removed them; jumpset never writes them back",
            m.anchor_removals.clone(),
        );
        r.register(
            "chain_in_order",
            "1 when the chain is in the declared order",
            m.in_order.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful reconcile",
            m.last_success.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile (read, plan, apply, verify)",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "repair_latency_seconds",
            "From the notification of a foreign change to the repair committed",
            m.repair_latency_seconds.clone(),
        );
        r.register(
            "notifications",
            "Commits touching the managed chains seen in nf_tables notifications, by source",
            m.notifications.clone(),
        );
        r.register(
            "notification_overflows",
            "Notification queue overflows (ENOBUFS), each followed by a full re-read",
            m.overflows.clone(),
        );
        r.register(
            "resyncs",
            "Full re-reads of every managed chain (timer, legacy poll, overflow)",
            m.resyncs.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads (SIGHUP or a change of the config files), by result",
            m.reloads.clone(),
        );
        r.register("info", "The backend in use", m.info.clone());
        r.register(
            "build_info",
            "The jumpset build: its version and git revision",
            m.build_info.clone(),
        );
        r.register(
            "errors",
            "Failed reconciles, by chain and the step that failed",
            m.errors.clone(),
        );
        r.register(
            "ready",
            "1 when every managed chain is as declared (/readyz answers 200)",
            m.ready.clone(),
        );
        r.register(
            "config_fragments_rejected",
            "Config fragments (drop-ins, API claims) left out of the running config",
            m.rejected_fragments.clone(),
        );
        r.register(
            "http_connections_evicted",
            "HTTP connections closed to make room for newer ones (connection limit)",
            m.http_evictions.clone(),
        );
        r.register(
            "log_writes_dropped",
            "Log records dropped because the log sink failed",
            dropped_log_writes().clone(),
        );
        r.register(
            "findings",
            "What `jumpset explain` finds on the managed chains' hooks now (priority ties, mixed backends, ...), by kind",
            m.findings.clone(),
        );
        (m, root)
    }
}

/// The standard `process_*` series (as the Prometheus client libraries export them),
/// read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self/stat` says: CPU seconds, start time, virtual and resident bytes.
fn proc_stat() -> Option<(f64, f64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the comm, which is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    let ticks = super::sys::clock_ticks() as f64;
    let cpu = (num(14)? + num(15)?) as f64 / ticks;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    let start = boot as f64 + num(22)? as f64 / ticks;
    Some((cpu, start, num(23)?, num(24)? * super::sys::page_size()))
}

/// The soft limit on open files (`/proc/self/limits`).
fn max_fds() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((cpu, start, vsize, rss)) = proc_stat() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
            for (name, help, v) in [
                (
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    start,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    vsize as f64,
                ),
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    rss as f64,
                ),
            ] {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let g = ConstGauge::new(dir.count() as i64);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        if let Some(max) = max_fds() {
            let g = ConstGauge::new(max as f64);
            g.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The first reconcile attempt is done (READY=1 was sent).
    pub started: bool,
    /// The STATUS= line.
    pub status: String,
    /// Why the daemon is not ready (empty: ready), one reason each.
    pub not_ready: Vec<String>,
}

impl Health {
    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.started && self.not_ready.is_empty()
    }
}

/// State shared with the HTTP server.
#[derive(Debug)]
pub struct Shared {
    /// The series.
    pub metrics: Metrics,
    registry: Registry,
    health: Mutex<Health>,
}

/// The exposition formats of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text,
    /// OpenMetrics 1.0 text (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it names it with a
    /// quality above the text format's (Prometheus does), else the text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut om, mut text) = (-1.0f32, -1.0f32);
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

impl Shared {
    /// Fresh series and a daemon not yet started.
    pub fn new() -> Arc<Shared> {
        let (metrics, registry) = Metrics::new();
        Arc::new(Shared {
            metrics,
            registry,
            health: Mutex::new(Health::default()),
        })
    }

    /// Update what `/readyz` says.
    pub fn set_health(&self, health: Health) {
        self.metrics.ready.set(i64::from(health.ready()));
        if let Ok(mut h) = self.health.lock() {
            *h = health;
        }
    }

    /// What `/readyz` says.
    pub fn health(&self) -> Health {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        let mut s = String::new();
        let _ = match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut s, &self.registry)
            }
        };
        s
    }

    /// The exposition in OpenMetrics.
    #[cfg(all(test, feature = "testing"))]
    pub fn encode(&self) -> String {
        self.encode_as(Format::OpenMetrics)
    }
}

/// How long `/livez` waits for the loop to answer.
pub const LIVENESS_WAIT: Duration = Duration::from_secs(2);

/// `/readyz` (and `/healthz`): 200 `ok` and the status, or 503 with the reasons.
pub fn readiness_reply(h: &Health) -> hyper::Response<http::Body> {
    if !h.started {
        return http::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    }
    if h.not_ready.is_empty() {
        return http::text(StatusCode::OK, format!("ok\n{}\n", h.status));
    }
    let mut body = String::from("not ready:\n");
    for r in &h.not_ready {
        body.push_str(&format!("- {r}\n"));
    }
    body.push_str(&format!("{}\n", h.status));
    http::text(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// The routes of the metrics listener: `/metrics`, `/livez`, `/readyz`, `/healthz`.
/// `calls` reaches the daemon's loop (for `/livez`).
pub fn probes(shared: Arc<Shared>, calls: super::Caller) -> Router {
    let metrics: Handler = {
        let shared = shared.clone();
        http::get(move |req| {
            let format = Format::negotiate(
                req.headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            let body = shared.encode_as(format);
            Box::pin(async move {
                http::reply(StatusCode::OK, format.content_type(), Bytes::from(body))
            }) as BoxFuture<_>
        })
    };
    let ready: Handler = {
        let shared = shared.clone();
        http::get(move |_| {
            let h = shared.health();
            Box::pin(async move { readiness_reply(&h) }) as BoxFuture<_>
        })
    };
    let live: Handler = http::get(move |_| {
        let calls = calls.clone();
        Box::pin(async move {
            match calls.call(Command::Ping, LIVENESS_WAIT).await {
                Ok(_) => http::text(StatusCode::OK, "alive\n"),
                Err(e) => http::text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }) as BoxFuture<_>
    });
    Router::new()
        .route("/metrics", metrics)
        .route("/livez", live)
        .route("/readyz", ready.clone())
        .route("/healthz", ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> ChainLabels {
        ChainLabels {
            family: "ip".into(),
            table: "nat".into(),
            chain: "PREROUTING".into(),
        }
    }

    #[test]
    fn both_formats_carry_every_series_with_help_and_the_process_ones() {
        let s = Shared::new();
        s.metrics
            .reconciles
            .get_or_create(&ResultLabel {
                result: "noop".into(),
            })
            .inc();
        let _ = s.metrics.fights.get_or_create(&chain());
        let text = s.encode_as(Format::Text);
        assert!(text.contains("# HELP jumpset_reconciles_total "), "{text}");
        assert!(
            text.contains("# TYPE jumpset_reconciles_total counter"),
            "{text}"
        );
        assert!(
            text.contains("jumpset_reconciles_total{result=\"noop\"} 1"),
            "{text}"
        );
        assert!(text
            .contains("jumpset_fights_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"} 0"));
        assert!(!text.contains("# EOF"));
        for p in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(text.lines().any(|l| l.starts_with(p)), "{p}: {text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("jumpset_") || line.starts_with("process_"),
                "{line}"
            );
        }
        let om = s.encode_as(Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE jumpset_reconciles counter"), "{om}");
    }

    #[test]
    fn openmetrics_only_when_asked_for_as_prometheus_does() {
        use Format::*;
        for (accept, want) in [
            (None, Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text; version=1.0.0"), OpenMetrics),
            (Some("text/plain;q=1,application/openmetrics-text;q=0.5"), Text),
            (Some("application/json"), Text),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn readiness_says_why_not() {
        let mut h = Health::default();
        assert_eq!(readiness_reply(&h).status(), 503);
        h.started = true;
        h.status = "nft: ip nat PREROUTING: in order".into();
        assert_eq!(readiness_reply(&h).status(), 200);
        h.not_ready.push("ip nat PREROUTING: out of order".into());
        let r = readiness_reply(&h);
        assert_eq!(r.status(), 503);
        let s = Shared::new();
        s.set_health(h.clone());
        assert_eq!(s.metrics.ready.get(), 0);
        h.not_ready.clear();
        s.set_health(h);
        assert_eq!(s.metrics.ready.get(), 1);
    }
}
