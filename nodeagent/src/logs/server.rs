//! The node's read-only HTTP port, as the kubelet's: `GET
//! /containerLogs/{namespace}/{pod}/{container}` streams a container's log
//! as plain text, and `GET /healthz` says the agent serves. Nothing else is
//! served and nothing can be changed through it.
//!
//! The pod comes from the agent's pod cache (only pods bound to this node
//! have logs here); the file from [`super::select`]; the text from
//! `stream`. A follow ends when the cache says the instance no
//! longer runs, when the client goes away, or when the agent stops.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use commitd_api::reflector::{sleep_or_cancel, Cache};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, debug_span, info_span, warn, Instrument};

use super::body::LogBody;
use super::request::{ContainerRef, LogOptions};
use super::select::{
    container_status, has_container, is_running, list_instances, restart_count, select_instance,
    Unavailable,
};
use super::stream::{send_file, Plan};
use super::LogsError;
use crate::pod::log_dir_name;

/// Connections served at once; more are closed at once (the port is
/// unauthenticated, so it must not be a way to exhaust the agent).
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pieces of log queued per response before reading the file waits for
/// the client.
const BODY_QUEUE: usize = 8;
/// The kubelet's answer to any path it does not serve (Go's default).
const NOT_FOUND: &str = "404 page not found\n";

/// Where the server finds the pods it serves logs of: the agent's pod
/// cache, or a fixed set in tests.
pub trait PodLookup: Send + Sync + 'static {
    /// The pod of this namespace and name, if it exists.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
}

impl PodLookup for Cache<Pod> {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.get(Some(namespace), name)
    }
}

/// What the server reads from.
pub struct LogSource {
    /// The pods; only those bound to `node_name` are served.
    pub pods: Arc<dyn PodLookup>,
    /// The node this agent runs.
    pub node_name: String,
    /// The agent's directory of pod logs (`<agent state dir>/pods`).
    pub pods_dir: PathBuf,
}

/// The read-only port, bound but not yet served: binding first lets the
/// agent learn the port (to publish it on the Node) and fail early.
pub struct LogServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl LogServer {
    /// Binds the port (`0`: any free port).
    pub async fn bind(addr: SocketAddr) -> Result<LogServer, LogsError> {
        let bind_error = |source| LogsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(LogServer {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires; then every connection, and every log
    /// being followed, ends.
    pub async fn serve(self, source: LogSource, cancel: CancellationToken) {
        let source = Arc::new(source);
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if connections.len() >= MAX_CONNECTIONS {
                            warn!(%peer, "too many log connections; closing this one");
                            continue;
                        }
                        let (source, cancel) = (source.clone(), cancel.clone());
                        connections.spawn(
                            serve_connection(stream, source, cancel)
                                .instrument(debug_span!("connection", %peer)),
                        );
                    }
                    Err(e) => {
                        // Out of file descriptors, usually: wait for some.
                        warn!(error = %e, "accepting a log connection failed");
                        if sleep_or_cancel(Duration::from_millis(200), &cancel).await {
                            break;
                        }
                    }
                }
            }
        }
        // Dropping the set closes every connection still open.
    }
}

/// One connection, one request (no keep-alive: a log request is long and
/// rare, an idle connection is only a cost).
async fn serve_connection(stream: TcpStream, source: Arc<LogSource>, cancel: CancellationToken) {
    let service = {
        let cancel = cancel.clone();
        service_fn(move |request| {
            let (source, cancel) = (source.clone(), cancel.clone());
            async move { Ok::<_, Infallible>(respond(&source, request, &cancel).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                debug!(error = %e, "log connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {}
    }
}

/// Routes a request: GET only, two paths.
async fn respond<B>(
    source: &LogSource,
    request: Request<B>,
    cancel: &CancellationToken,
) -> Response<LogBody> {
    let path = request.uri().path();
    let target = ContainerRef::from_path(path);
    if target.is_none() && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, NOT_FOUND);
    }
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let Some(target) = target else {
        return text(StatusCode::OK, "ok");
    };
    let options = match LogOptions::from_query(request.uri().query().unwrap_or_default()) {
        Ok(o) => o,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let span = info_span!(
        "container_logs",
        namespace = %target.namespace,
        pod = %target.pod,
        container = %target.container,
        follow = options.follow,
    );
    container_logs(source, target, options, cancel)
        .instrument(span)
        .await
}

/// Answers one container's log: an error status with the reason, or 200
/// and the log streamed.
async fn container_logs(
    source: &LogSource,
    target: ContainerRef,
    options: LogOptions,
    cancel: &CancellationToken,
) -> Response<LogBody> {
    let ContainerRef {
        namespace,
        pod: name,
        container,
    } = target;
    let pod = source.pods.pod(&namespace, &name).filter(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&source.node_name)
    });
    let Some(pod) = pod else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "pod \"{name}\" does not exist on node \"{}\"",
                source.node_name
            ),
        );
    };
    // The name must be one of the spec's, which also keeps it a plain
    // file name below.
    if !has_container(&pod, &container) || container.contains('/') || container.starts_with('.') {
        return text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" not found in pod \"{name}\""),
        );
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let log_dir = source.pods_dir.join(log_dir_name(&namespace, &name, &uid));
    let instances = match list_instances(&log_dir, &container).await {
        Ok(i) => i,
        Err(e) => return internal(&e),
    };
    let status = container_status(&pod, &container);
    let unavailable = |why: Unavailable| {
        let code = match why {
            Unavailable::Waiting(_) | Unavailable::PreviousNotFound => StatusCode::BAD_REQUEST,
            Unavailable::NoLogDirectory | Unavailable::NoFile => StatusCode::NOT_FOUND,
        };
        text(code, why.message(&name, &container, &source.node_name))
    };
    let instance = match select_instance(status, options.previous, instances.as_deref()) {
        Ok(n) => n,
        Err(why) => return unavailable(why),
    };
    let path = log_dir.join(&container).join(format!("{instance}.log"));
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        // Removed since it was listed: the instance is gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return unavailable(Unavailable::NoFile)
        }
        Err(source) => return internal(&LogsError::Read { path, source }),
    };
    // Only the running instance is followed.
    let following = options.follow
        && !options.previous
        && status.is_some_and(|s| is_running(s) && restart_count(s) == instance);
    let still_running = following.then(|| {
        let pods = source.pods.clone();
        move || {
            pods.pod(&namespace, &name).is_some_and(|p| {
                p.metadata.uid.as_deref().unwrap_or_default() == uid
                    && container_status(&p, &container)
                        .is_some_and(|s| is_running(s) && restart_count(s) == instance)
            })
        }
    });
    let plan = Plan {
        tail: options
            .tail_lines
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        timestamps: options.timestamps,
        still_running,
    };
    debug!(instance, following, "sending the log");
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    let cancel = cancel.clone();
    tokio::spawn(
        async move {
            send_file(file, &path, plan, &tx, &cancel).await;
            debug!("log sent");
        }
        .in_current_span(),
    );
    let mut response = Response::new(LogBody::Streamed(rx));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A short plain-text answer.
fn text(status: StatusCode, message: impl Into<String>) -> Response<LogBody> {
    let mut response = Response::new(LogBody::text(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn internal(e: &LogsError) -> Response<LogBody> {
    let message = error_chain(e);
    warn!(error = %message, "serving a log failed");
    text(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// The error with its causes, `: `-separated.
fn error_chain(e: &LogsError) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
