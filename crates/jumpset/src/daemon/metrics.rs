//! Metrics (Prometheus/OpenMetrics text, every series prefixed `jumpset_`) and `/healthz`,
//! served on `daemon.metrics_listen` by a tiny HTTP/1.1 responder: one request per
//! connection, GET or HEAD, bounded in size, time and concurrency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    /// Writes refused as stale (another writer got in) and re-planned.
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
    /// Config reloads (SIGHUP) by result.
    pub reloads: Family<ResultLabel, Counter>,
    /// 1, labelled with the backend in use.
    pub info: Family<InfoLabels, Gauge>,
    /// Findings of `jumpset explain` about the managed chains' hooks now, by kind.
    pub findings: Family<FindingLabel, Gauge>,
}

impl Metrics {
    /// The series, registered in a registry prefixed `jumpset`.
    pub fn new() -> (Metrics, Registry) {
        let mut r = Registry::with_prefix("jumpset");
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
            "Writes the kernel refused as planned from an old generation, re-planned",
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
            "Config reloads (SIGHUP), by result",
            m.reloads.clone(),
        );
        r.register("info", "The backend in use", m.info.clone());
        r.register(
            "findings",
            "What `jumpset explain` finds on the managed chains' hooks now (priority ties, mixed backends, ...), by kind",
            m.findings.clone(),
        );
        (m, r)
    }
}

/// What `/healthz` reports.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The first reconcile attempt is done (READY=1 was sent).
    pub ready: bool,
    /// The STATUS= line.
    pub status: String,
}

/// State shared with the HTTP task.
#[derive(Debug)]
pub struct Shared {
    /// The series.
    pub metrics: Metrics,
    registry: Registry,
    /// Health and status.
    pub health: Mutex<Health>,
}

impl Shared {
    /// Fresh series and a not-yet-ready health.
    pub fn new() -> Arc<Shared> {
        let (metrics, registry) = Metrics::new();
        Arc::new(Shared {
            metrics,
            registry,
            health: Mutex::new(Health::default()),
        })
    }

    /// Update `/healthz`.
    pub fn set_health(&self, ready: bool, status: &str) {
        if let Ok(mut h) = self.health.lock() {
            h.ready = ready;
            h.status = status.to_string();
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Most requests served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest a request head may be.
const MAX_REQUEST: usize = 8 * 1024;
/// Longest a connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Status code, content type and body for a request head.
pub fn respond(head: &[u8], shared: &Shared) -> (u16, &'static str, String, bool) {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, "text/plain", "method not allowed\n".into(), false);
    }
    match path {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.encode(),
            head_only,
        ),
        "/healthz" => {
            let h = shared.health.lock().map(|h| h.clone()).unwrap_or_default();
            if h.ready {
                (200, "text/plain", format!("ok\n{}\n", h.status), head_only)
            } else {
                (503, "text/plain", "starting\n".into(), head_only)
            }
        }
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
            head_only,
        ),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Bad Request",
    }
}

async fn handle(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > MAX_REQUEST {
            break;
        }
    }
    let (code, ctype, body, head_only) = respond(&head, shared);
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out).await?;
    s.shutdown().await
}

/// Serve `/metrics` and `/healthz` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // too many at once: drop it
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, handle(stream, &shared)).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_healthz_follows_readiness() {
        let s = Shared::new();
        s.metrics
            .reconciles
            .get_or_create(&ResultLabel {
                result: "noop".into(),
            })
            .inc();
        let _ = s.metrics.fights.get_or_create(&ChainLabels {
            family: "ip".into(),
            table: "nat".into(),
            chain: "PREROUTING".into(),
        });
        let (code, _, body, _) = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &s);
        assert_eq!(code, 200);
        assert!(
            body.contains("jumpset_reconciles_total{result=\"noop\"} 1"),
            "{body}"
        );
        assert!(body
            .contains("jumpset_fights_total{family=\"ip\",table=\"nat\",chain=\"PREROUTING\"} 0"));
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("jumpset_"), "{line}");
        }
        assert_eq!(respond(b"GET /healthz HTTP/1.1\r\n\r\n", &s).0, 503);
        s.set_health(true, "ip nat PREROUTING: in order");
        let (code, _, body, _) = respond(b"GET /healthz?x=1 HTTP/1.0\r\n\r\n", &s);
        assert_eq!(
            (code, body.as_str()),
            (200, "ok\nip nat PREROUTING: in order\n")
        );
        assert_eq!(respond(b"POST /healthz HTTP/1.1\r\n\r\n", &s).0, 405);
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &s).0, 404);
        assert!(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", &s).3);
        assert_eq!(respond(b"", &s).0, 405);
    }
}
