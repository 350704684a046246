//! The daemon's HTTP server: hyper's HTTP/1.1 on a thread and runtime of its own, so
//! that a probe never waits for the engine (which may be in the middle of a reconcile)
//! and the engine never waits for a client.
//!
//! It cannot be starved by clients that connect and say nothing, or say it slowly:
//!
//! - a request head must arrive within [`Limits::header_timeout`] (also between two
//!   requests of a kept-alive connection: an idle connection is closed then) and fit in
//!   [`Limits::max_head`] bytes (hyper answers a larger one with 431);
//! - a connection lives at most [`Limits::max_lifetime`], whatever it does;
//! - at most [`Limits::max_connections`] are open at once; one more **evicts the oldest**
//!   rather than being turned away, so a fresh connection — a probe — is always served:
//!   to keep a probe out, a client would have to open that many connections between the
//!   probe's connect and its request, a few microseconds on loopback.
//!
//! One [`Server`] serves any number of listeners ([`Listener`]: TCP, Unix sockets, with
//! the peer's address or credentials), each with its own [`Router`] of handlers. The
//! daemon serves `/metrics` and the health endpoints on `daemon.metrics_listen`
//! ([`super::metrics::probes`]); the local API adds its listener and routes the same way.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A response body: the whole body at once.
pub type Body = Full<Bytes>;

/// A boxed future a handler returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Serves one route: the request and who sent it, to the response.
pub type Handler = Arc<dyn Fn(Request<Incoming>, Peer) -> BoxFuture<Response<Body>> + Send + Sync>;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client and its address.
    Tcp(SocketAddr),
    /// A Unix socket client and its credentials (`SO_PEERCRED`), when the kernel gave them.
    Unix {
        /// Its uid.
        uid: u32,
        /// Its primary gid.
        gid: u32,
        /// Its pid, when known.
        pid: Option<i32>,
        /// Its supplementary groups when it connected (`SO_PEERGROUPS`), when the kernel
        /// gave them.
        groups: Option<Vec<u32>>,
    },
}

/// A response with `code`, `content_type` and `body`.
pub fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A `text/plain` response.
pub fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    reply(code, "text/plain; charset=utf-8", body.into())
}

/// Routes requests by path: exact paths first, then the longest matching prefix.
#[derive(Clone, Default)]
pub struct Router {
    exact: Vec<(String, Handler)>,
    prefixes: Vec<(String, Handler)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "exact",
                &self.exact.iter().map(|r| &r.0).collect::<Vec<_>>(),
            )
            .field(
                "prefixes",
                &self.prefixes.iter().map(|r| &r.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Router {
    /// No routes: every request is a 404.
    pub fn new() -> Self {
        Router::default()
    }

    /// Serve `path` exactly (any query) with `handler`.
    #[must_use]
    pub fn route(mut self, path: &str, handler: Handler) -> Self {
        self.exact.push((path.to_string(), handler));
        self
    }

    /// Serve every path starting with `prefix` (e.g. `/v1/agents/`) with `handler`,
    /// unless an exact route or a longer prefix matches.
    #[must_use]
    pub fn prefix(mut self, prefix: &str, handler: Handler) -> Self {
        self.prefixes.push((prefix.to_string(), handler));
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        self
    }

    /// The paths served, for a 404's body.
    fn paths(&self) -> String {
        self.exact
            .iter()
            .map(|r| r.0.clone())
            .chain(self.prefixes.iter().map(|r| format!("{}...", r.0)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Answer `req` from `peer`.
    pub async fn dispatch(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let path = req.uri().path().to_string();
        let handler = self
            .exact
            .iter()
            .find(|r| r.0 == path)
            .or_else(|| self.prefixes.iter().find(|r| path.starts_with(&r.0)))
            .map(|r| r.1.clone());
        match handler {
            Some(h) => h(req, peer).await,
            None => text(
                StatusCode::NOT_FOUND,
                format!("not found: {path}; this listener serves {}\n", self.paths()),
            ),
        }
    }
}

/// A handler for read-only endpoints: GET and HEAD are answered by `f` (HEAD without the
/// body), anything else with 405.
pub fn get(
    f: impl Fn(&Request<Incoming>) -> BoxFuture<Response<Body>> + Send + Sync + 'static,
) -> Handler {
    Arc::new(move |req: Request<Incoming>, _peer: Peer| {
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return Box::pin(async {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed: use GET\n",
                );
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static("GET, HEAD"),
                );
                r
            }) as BoxFuture<Response<Body>>;
        }
        let fut = f(&req);
        Box::pin(async move {
            let r = fut.await;
            if method == Method::HEAD {
                let (parts, _) = r.into_parts();
                Response::from_parts(parts, Full::new(Bytes::new()))
            } else {
                r
            }
        })
    })
}

/// Where connections come from: a bound socket that yields streams and their peers.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Peer)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
        let (s, addr) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, Peer::Tcp(addr)))
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Peer)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        use std::os::fd::AsFd;
        let groups = super::sys::peer_groups(s.as_fd()).ok();
        let peer = match s.peer_cred() {
            Ok(c) => Peer::Unix {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
                groups,
            },
            // No credentials: nobody in particular (a handler checking them refuses).
            Err(_) => Peer::Unix {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
                groups: None,
            },
        };
        Ok((s, peer))
    }
}

/// The HTTP server's bounds (`/metrics`, the probes and the local API share them).
/// Start from [`Limits::default`] and change fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connections open at once, over every listener; one more evicts the oldest.
    pub max_connections: usize,
    /// Longest wait for a complete request head (from a new or an idle connection).
    pub header_timeout: Duration,
    /// Largest request head, in bytes (hyper's floor is 8 KiB).
    pub max_head: usize,
    /// Longest a connection may stay open.
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            max_head: 16 * 1024,
            max_lifetime: Duration::from_secs(60),
        }
    }
}

/// The open connections, oldest first, each with the switch that closes it.
struct Slots {
    next: u64,
    open: VecDeque<(u64, oneshot::Sender<()>)>,
    evicted: Counter,
}

/// The HTTP server: a thread (`jumpset-http`) running a runtime of its own; dropping
/// it stops every listener and connection.
pub struct Server {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    limits: Limits,
    slots: Arc<Mutex<Slots>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One listener being served; dropping it stops accepting (open connections finish).
#[derive(Debug)]
pub struct Serving {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Start the server's thread (in the calling thread's network namespace, with its
    /// capabilities), serving nothing yet; `evictions` counts the connections closed to
    /// make room for newer ones.
    pub fn start(limits: Limits, evictions: Counter) -> io::Result<Server> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("jumpset-http".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_background();
            })?;
        Ok(Server {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            limits,
            slots: Arc::new(Mutex::new(Slots {
                next: 0,
                open: VecDeque::new(),
                evicted: evictions,
            })),
        })
    }

    /// Bind `addr` (here, so the error is the caller's) and serve `router` on it.
    pub fn serve_tcp(&self, addr: SocketAddr, router: Router) -> io::Result<(Serving, SocketAddr)> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let listener = {
            let _rt = self.handle.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        Ok((self.serve(listener, router), local))
    }

    /// Serve `router` on `listener` (already bound; a tokio listener must be made inside
    /// this server's runtime: see [`Server::enter`]).
    pub fn serve<L: Listener>(&self, listener: L, router: Router) -> Serving {
        self.spawner().serve(listener, router)
    }

    /// What serves listeners on this server, for a task of its own (cheap to clone).
    pub fn spawner(&self) -> Spawner {
        Spawner {
            handle: self.handle.clone(),
            limits: self.limits.clone(),
            slots: self.slots.clone(),
        }
    }
}

/// Serves listeners on a [`Server`] (its runtime, bounds and connection slots), from
/// anywhere: a task on the server's runtime binds and re-binds the local API's socket
/// with it.
#[derive(Clone)]
pub struct Spawner {
    handle: tokio::runtime::Handle,
    limits: Limits,
    slots: Arc<Mutex<Slots>>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Spawner {
    /// Serve `router` on `listener` (made inside the server's runtime).
    pub fn serve<L: Listener>(&self, listener: L, router: Router) -> Serving {
        Serving {
            task: self.handle.spawn(accept_loop(
                listener,
                Arc::new(router),
                self.limits.clone(),
                self.slots.clone(),
            )),
        }
    }

    /// Run `task` on the server's runtime.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> Serving {
        Serving {
            task: self.handle.spawn(task),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop<L: Listener>(
    mut listener: L,
    router: Arc<Router>,
    limits: Limits,
    slots: Arc<Mutex<Slots>>,
) {
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::debug!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (evict, evicted) = oneshot::channel::<()>();
        let id = {
            let Ok(mut s) = slots.lock() else { return };
            while s.open.len() >= limits.max_connections.max(1) {
                if let Some((_, oldest)) = s.open.pop_front() {
                    let _ = oldest.send(());
                    s.evicted.inc();
                }
            }
            let id = s.next;
            s.next += 1;
            s.open.push_back((id, evict));
            id
        };
        let router = router.clone();
        let limits = limits.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            serve_connection(io, peer, router, &limits, evicted).await;
            if let Ok(mut s) = slots.lock() {
                s.open.retain(|(i, _)| *i != id);
            }
        });
    }
}

async fn serve_connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    peer: Peer,
    router: Arc<Router>,
    limits: &Limits,
    evicted: oneshot::Receiver<()>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(router.dispatch(req, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = conn => {}
        _ = evicted => {}
        _ = tokio::time::sleep(limits.max_lifetime) => {}
    }
}
