//! The local API (`docs/api.md`, the contract): HTTP/1.1 + JSON on the Unix socket of
//! [`super::socket`], served by the daemon's HTTP server.
//!
//! Every request is checked first ([`super::access`]: root or a member of
//! `daemon.api_group`, else 403). Reads and the pause switch go to the engine
//! ([`Command`]). A claim is checked on this side, against the config as the files say
//! now (main file, drop-ins, the other agents' claims: [`Config::with_claim`]), stored
//! ([`super::claims`]), and only then handed to the engine with the config it makes,
//! which reconciles the chains it touches and answers with their report. Claim changes
//! are made one at a time, in the order they arrive (check, store and hand-over under
//! one lock), so that two agents' claims can never both be checked against a config
//! without the other; the wait for the engine's answer is outside the lock.

use super::access::{self, Sources};
use super::claims;
use super::engine::{Answer, ClaimChange, Command, DaemonState};
use super::http::{self, Body, BoxFuture, Handler, Peer, Router};
use super::socket::Settings;
use super::{CallError, Caller};
use crate::exit;
use crate::spec::{agent_name_problem, ClaimError, Config, Fragment, Origin, SpecError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The largest request body (larger: 413).
pub const MAX_BODY: usize = 1 << 20;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read or the pause switch waits for the engine.
const READ_WAIT: Duration = Duration::from_secs(5);
/// How long a claim waits for its chains to be reconciled before the answer is 202
/// (`waiting`): longer than the longest hold-off for another writer's quiet (2 s).
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Debug)]
pub struct Api {
    caller: Caller,
    config_path: PathBuf,
    settings: watch::Receiver<Settings>,
    sources: Sources,
    /// One claim change at a time.
    claims: tokio::sync::Mutex<()>,
}

impl Api {
    /// The API of the daemon whose config is at `config_path`, reaching its loop through
    /// `caller`, admitting callers as `settings` (the config in force) says.
    pub fn new(caller: Caller, config_path: PathBuf, settings: watch::Receiver<Settings>) -> Self {
        Api {
            caller,
            config_path,
            settings,
            sources: Sources::default(),
            claims: tokio::sync::Mutex::new(()),
        }
    }
}

/// The routes of the local API's socket: everything under `/` goes to one handler.
pub fn router(api: Arc<Api>) -> Router {
    let handler: Handler = Arc::new(move |req: Request<Incoming>, peer: Peer| {
        let api = api.clone();
        Box::pin(async move { handle(api, req, peer).await }) as BoxFuture<Response<Body>>
    });
    Router::new().prefix("/", handler)
}

// ---- responses ----

fn reply(code: StatusCode, body: Value) -> Response<Body> {
    let mut text = body.to_string();
    text.push('\n');
    http::reply(code, "application/json", text)
}

/// An error body: `error`, `exit_code` (when the command has one for it), and `extra`.
fn error(code: StatusCode, message: impl Into<String>, exit_code: Option<i32>) -> Response<Body> {
    error_with(code, message, exit_code, Map::new())
}

fn error_with(
    code: StatusCode,
    message: impl Into<String>,
    exit_code: Option<i32>,
    mut extra: Map<String, Value>,
) -> Response<Body> {
    extra.insert("error".into(), message.into().into());
    if let Some(c) = exit_code {
        extra.insert("exit_code".into(), c.into());
    }
    reply(code, Value::Object(extra))
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}"),
        None,
    );
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    r
}

/// A 400 for a spec error: its key and line.
fn bad_spec(e: &SpecError) -> Response<Body> {
    let mut extra = Map::new();
    extra.insert("key".into(), e.key.clone().into());
    extra.insert("line".into(), e.line.map_or(Value::Null, Value::from));
    error_with(
        StatusCode::BAD_REQUEST,
        format!("config: {e}"),
        Some(exit::USAGE),
        extra,
    )
}

fn bad_request(key: &str, message: impl Into<String>) -> Response<Body> {
    bad_spec(&SpecError::new(key, None, message))
}

fn unavailable(e: CallError) -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the daemon cannot take the request now: {e}"),
        None,
    )
}

fn unexpected(a: Answer) -> Response<Body> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the daemon's loop answered {a:?}, which this route does not expect (a bug)"),
        None,
    )
}

/// `2025-01-01T10:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The JSON of `GET /v1/state` (and of the pause switch's answers).
pub fn state_json(s: &DaemonState) -> Value {
    json!({
        "paused": s.paused.is_some(),
        "reason": s.paused,
        "since": s.since.map(rfc3339),
        "ready": s.health.ready(),
        "not_ready": if s.health.started { s.health.not_ready.clone() } else { vec!["starting".to_string()] },
        "status": s.health.status,
    })
}

// ---- the request ----

async fn handle(api: Arc<Api>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let group = api.settings.borrow().group.clone();
    if let Err(why) = access::check(&peer, group.as_ref(), &api.sources) {
        return error(StatusCode::FORBIDDEN, why, Some(exit::PRIVILEGE));
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match path.as_str() {
        "/v1/chains" if get => read(&api, Command::Chains).await,
        "/v1/check" if get => read(&api, Command::Check).await,
        "/v1/state" if get => match api.caller.call(Command::State, READ_WAIT).await {
            Ok(Answer::State(s)) => reply(StatusCode::OK, state_json(&s)),
            Ok(a) => unexpected(a),
            Err(e) => unavailable(e),
        },
        "/v1/chains" | "/v1/check" | "/v1/state" => not_allowed("GET"),
        "/v1/pause" if post => pause(&api, req, &peer).await,
        "/v1/resume" if post => match api.caller.call(Command::Resume, READ_WAIT).await {
            Ok(Answer::State(s)) => reply(StatusCode::OK, state_json(&s)),
            Ok(a) => unexpected(a),
            Err(e) => unavailable(e),
        },
        "/v1/pause" | "/v1/resume" => not_allowed("POST"),
        p if p.starts_with("/v1/agents/") => {
            let agent = p["/v1/agents/".len()..].to_string();
            if let Some(problem) = agent_name_problem(&agent) {
                return bad_request("agent", problem);
            }
            if method == Method::PUT {
                put_claim(&api, req, agent).await
            } else if get {
                get_claim(&api, agent).await
            } else if method == Method::DELETE {
                delete_claim(&api, &req, agent).await
            } else {
                not_allowed("GET, PUT, DELETE")
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no route {method} {path}; the local API (v1) has GET /v1/chains, GET /v1/check, GET /v1/state, POST /v1/pause, POST /v1/resume, GET|PUT|DELETE /v1/agents/{{agent}}"
            ),
            None,
        ),
    }
}

/// The body, at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`].
async fn body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
            None,
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(bad_request(
            "",
            format!(
                "the body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(bad_request("", format!("cannot read the body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn read(api: &Api, command: Command) -> Response<Body> {
    match api.caller.call(command, READ_WAIT).await {
        Ok(Answer::Report(v)) => reply(StatusCode::OK, v),
        Ok(Answer::Unavailable(why)) => error(StatusCode::SERVICE_UNAVAILABLE, why, None),
        Ok(a) => unexpected(a),
        Err(e) => unavailable(e),
    }
}

async fn pause(api: &Api, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PauseBody {
        reason: Option<String>,
    }
    let bytes = match body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reason = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<PauseBody>(&bytes) {
            Ok(b) => b.reason,
            Err(e) => {
                let key = if e.to_string().contains("unknown field") {
                    ""
                } else {
                    "reason"
                };
                return bad_spec(&SpecError::new(
                    key,
                    (e.line() > 0).then_some(e.line()),
                    format!("the body is {{\"reason\": \"...\"}} or empty: {e}"),
                ));
            }
        }
    };
    let reason = reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "paused through the local API".into());
    if reason.len() > 1024 || reason.chars().any(char::is_control) {
        return bad_request(
            "reason",
            "a reason is one line of at most 1024 bytes (it is shown in STATUS= and /readyz)",
        );
    }
    let by = match peer {
        Peer::Unix {
            uid, pid: Some(p), ..
        } => format!("uid {uid}, pid {p}"),
        Peer::Unix { uid, .. } => format!("uid {uid}"),
        Peer::Tcp(a) => a.to_string(),
    };
    let why = format!("{reason} (by {by} at {})", rfc3339(SystemTime::now()));
    match api.caller.call(Command::Pause(why), READ_WAIT).await {
        Ok(Answer::State(s)) => reply(StatusCode::OK, state_json(&s)),
        Ok(a) => unexpected(a),
        Err(e) => unavailable(e),
    }
}

/// What `conflicts_with` says of where a contradicting declaration was made.
fn whose(origin: &Origin, main: &std::path::Path) -> String {
    match origin {
        Origin::Api { agent } => format!("agent:{agent}"),
        Origin::DropIn { path, .. } => format!("fragment:{}", path.display()),
        _ => format!("config:{}", main.display()),
    }
}

/// The answer to a refused claim.
fn refused(e: ClaimError, main: &std::path::Path) -> Response<Body> {
    match &e {
        ClaimError::Invalid(s) => bad_spec(s),
        ClaimError::Conflict(s) => {
            let c = s.contradiction.as_deref();
            let mut extra = Map::new();
            extra.insert(
                "constraint".into(),
                c.map(|c| c.constraint.clone()).unwrap_or_default().into(),
            );
            extra.insert(
                "conflicts_with".into(),
                c.and_then(|c| c.with.first())
                    .map(|o| whose(o, main))
                    .unwrap_or_default()
                    .into(),
            );
            if let Some(c) = c.filter(|c| !c.cycle.is_empty()) {
                extra.insert("cycle".into(), c.cycle.clone().into());
            }
            error_with(
                StatusCode::CONFLICT,
                e.to_string(),
                Some(exit::CONFLICT),
                extra,
            )
        }
        ClaimError::Fragment { path } => {
            let mut extra = Map::new();
            extra.insert("constraint".into(), "".into());
            extra.insert(
                "conflicts_with".into(),
                format!("fragment:{}", path.display()).into(),
            );
            error_with(
                StatusCode::CONFLICT,
                e.to_string(),
                Some(exit::CONFLICT),
                extra,
            )
        }
        ClaimError::Main(s) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the daemon's config cannot be read now, so the claim cannot be checked against it (nothing was stored): {s}"
            ),
            None,
        ),
    }
}

/// Run blocking file work off the server's thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn put_claim(api: &Api, req: Request<Incoming>, agent: String) -> Response<Body> {
    let bytes = match body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return bad_request("", "the body is not UTF-8 text");
    };
    let claim = match Fragment::from_json(&agent, text) {
        Ok(f) => f,
        Err(e) => return bad_spec(&e),
    };
    let main = api.config_path.clone();
    let sent = {
        let _one_at_a_time = api.claims.lock().await;
        let (path, a, c) = (main.clone(), agent.clone(), claim.clone());
        let Some(checked) = blocking(move || Config::with_claim(&path, &a, Some(c))).await else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the check failed", None);
        };
        let (config, rejected) = match checked {
            Ok(c) => c,
            Err(e) => return refused(e, &main),
        };
        let state_dir = config.daemon().state_dir.clone();
        let c = claim.clone();
        match blocking(move || claims::store(&state_dir, &c)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e, None),
            None => return error(StatusCode::INTERNAL_SERVER_ERROR, "storing failed", None),
        }
        api.caller
            .send(
                Command::Claim(Box::new(ClaimChange {
                    agent: agent.clone(),
                    config,
                    rejected,
                    reconcile: true,
                    remove: false,
                })),
                READ_WAIT,
            )
            .await
    };
    let answer = match sent {
        Ok(rx) => tokio::time::timeout(CLAIM_WAIT, rx).await,
        Err(e) => return stored_but(agent, e),
    };
    match answer {
        Ok(Ok(Answer::Applied(report))) => {
            reply(StatusCode::OK, json!({"agent": agent, "report": report}))
        }
        Ok(Ok(Answer::Held { state, reason })) => reply(
            StatusCode::ACCEPTED,
            json!({"agent": agent, "state": state, "reason": reason}),
        ),
        Ok(Ok(Answer::Failed(why))) => error(StatusCode::INTERNAL_SERVER_ERROR, why, None),
        Ok(Ok(a)) => unexpected(a),
        Ok(Err(_)) => stored_but(agent, CallError::Closed),
        Err(_) => reply(
            StatusCode::ACCEPTED,
            json!({"agent": agent, "state": "waiting", "reason": format!(
                "the claim is stored; the reconcile of its chains is still held off after {} s (another writer not quiet yet, an error backoff or a busy xtables lock): it is applied when that ends",
                CLAIM_WAIT.as_secs()
            )}),
        ),
    }
}

/// The claim is stored but the loop cannot be reached: the daemon applies it when it
/// reads its files (it watches them), or at its next start.
fn stored_but(agent: String, e: CallError) -> Response<Body> {
    reply(
        StatusCode::ACCEPTED,
        json!({"agent": agent, "state": "starting", "reason": format!(
            "the claim is stored; the daemon's loop cannot take it now ({e}): it is applied when the daemon reads its files"
        )}),
    )
}

async fn get_claim(api: &Api, agent: String) -> Response<Body> {
    let path = api.config_path.clone();
    let a = agent.clone();
    let found = blocking(move || -> Result<Option<Value>, SpecError> {
        let (config, rejected) = Config::load_lenient(&path)?;
        let state_dir = config.daemon().state_dir.clone();
        if !claims::exists(&state_dir, &a) {
            return Ok(None);
        }
        if let Some(v) = config.claim_json(&a) {
            return Ok(Some(v));
        }
        // Stored, but declaring nothing, or left out of the config.
        let file = crate::spec::claim_path(&state_dir, &a);
        let mut v = crate::spec::read_config_file(&file)
            .and_then(|t| Fragment::from_json(&a, &t))
            .map(|f| f.to_json())
            .unwrap_or_else(|_| json!({"agent": a, "chains": []}));
        if let Some(r) = rejected
            .iter()
            .find(|r| matches!(&r.origin, Origin::Api { agent: x } if *x == a))
        {
            v["rejected"] = format!("config: {}", r.error).into();
        }
        Ok(Some(v))
    })
    .await;
    match found {
        Some(Ok(Some(v))) => reply(StatusCode::OK, v),
        Some(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("agent {agent} holds no claim"),
            None,
        ),
        Some(Err(e)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the daemon's config cannot be read now: {e}"),
            None,
        ),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the read failed", None),
    }
}

async fn delete_claim(api: &Api, req: &Request<Incoming>, agent: String) -> Response<Body> {
    let mut remove = false;
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
    {
        match (k, v) {
            ("remove", "true") => remove = true,
            ("remove", "false") => remove = false,
            ("remove", other) => {
                return bad_request(
                    "remove",
                    format!("remove={other:?}: use remove=true or remove=false"),
                )
            }
            (other, _) => {
                return bad_request(other, format!("unknown parameter {other:?}; use remove"))
            }
        }
    }
    let main = api.config_path.clone();
    let sent = {
        let _one_at_a_time = api.claims.lock().await;
        let (path, a) = (main.clone(), agent.clone());
        let Some(checked) = blocking(move || {
            let made = Config::with_claim(&path, &a, None)?;
            let state_dir = made.0.daemon().state_dir.clone();
            if !claims::exists(&state_dir, &a) {
                return Ok(None);
            }
            claims::remove(&state_dir, &a)
                .map(|_| Some(made))
                .map_err(|e| ClaimError::Main(SpecError::new("", None, e)))
        })
        .await
        else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the removal failed",
                None,
            );
        };
        let (config, rejected) = match checked {
            Ok(Some(c)) => c,
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("agent {agent} holds no claim"),
                    None,
                )
            }
            Err(ClaimError::Main(e)) if e.key.is_empty() && e.location.is_none() => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.message, None)
            }
            Err(e) => return refused(e, &main),
        };
        api.caller
            .send(
                Command::Claim(Box::new(ClaimChange {
                    agent: agent.clone(),
                    config,
                    rejected,
                    reconcile: false,
                    remove,
                })),
                READ_WAIT,
            )
            .await
    };
    let answer = match sent {
        Ok(rx) => tokio::time::timeout(CLAIM_WAIT, rx).await,
        Err(e) => {
            return reply(
                StatusCode::ACCEPTED,
                json!({"agent": agent, "removed": false, "state": "starting", "reason": format!(
                    "the claim is deleted; the daemon's loop cannot take it now ({e}): the jumps stay"
                )}),
            )
        }
    };
    match answer {
        Ok(Ok(Answer::Removed(report))) => reply(
            StatusCode::OK,
            json!({"agent": agent, "removed": report.is_some(), "report": report}),
        ),
        Ok(Ok(Answer::Held { state, reason })) => reply(
            StatusCode::ACCEPTED,
            json!({"agent": agent, "removed": false, "state": state, "reason": reason}),
        ),
        Ok(Ok(Answer::Failed(why))) => error(StatusCode::INTERNAL_SERVER_ERROR, why, None),
        Ok(Ok(a)) => unexpected(a),
        Ok(Err(_)) | Err(_) => reply(
            StatusCode::ACCEPTED,
            json!({"agent": agent, "removed": false, "state": "waiting", "reason": "the claim is deleted; the daemon did not say in time whether its jumps were removed"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_735_725_600), "2025-01-01T10:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}
