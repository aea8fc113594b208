//! Container lifecycle hooks, as the kubelet runs them: `postStart` right
//! after the container starts (a failure kills it, and the restart policy
//! decides what follows), `preStop` before the container is sent SIGTERM,
//! within the grace period (what the hook leaves of it is what the
//! container gets after SIGTERM, at least two seconds). Hooks use the
//! probe handlers: `exec` in the container, `httpGet` (HTTP or HTTPS) and
//! `tcpSocket` to the pod, and `sleep`. As the kubelet does, an `httpGet`
//! hook fails only when its request gets no answer (any status will do),
//! and an HTTPS hook that is answered in plain HTTP is tried once more
//! over HTTP, without its `Authorization` header.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use tracing::warn;

use crate::cri::Cri;
use crate::probe::handlers::{attempt, Purpose, Target, HTTP_RESPONSE_TO_HTTPS};
use crate::probe::{ContainerProbes, Handler, Scheme};

/// The least a container gets after its preStop hook, as the kubelet
/// grants it (`minimumGracePeriodInSeconds`).
pub const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After start.
    PostStart,
    /// Before stop.
    PreStop,
}

impl Hook {
    /// The kubelet's event reason for a failure.
    pub fn failure_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }
}

/// The action of `container`'s `hook`, if it has one commitd can run.
pub fn handler(container: &Container, hook: Hook) -> Option<Handler> {
    let lifecycle = container.lifecycle.as_ref()?;
    let h = match hook {
        Hook::PostStart => lifecycle.post_start.as_ref()?,
        Hook::PreStop => lifecycle.pre_stop.as_ref()?,
    };
    Handler::from_lifecycle(h)
}

/// Runs `handler` for the container instance `id` of `container`, bounded
/// by `limit`.
pub async fn run(
    cri: &Cri,
    container: &Container,
    id: &str,
    pod_ip: Option<IpAddr>,
    handler: &Handler,
    limit: Duration,
) -> Result<(), String> {
    let ports = ContainerProbes::of(container).ports;
    let target = Target {
        cri,
        container_id: id,
        pod_ip,
        ports: &ports,
        purpose: Purpose::Hook,
    };
    with_http_fallback(handler, limit, move |h, timeout| async move {
        attempt(&h, target, timeout).await
    })
    .await
}

/// Makes `attempt` of `handler` within `limit`; when an HTTPS GET is
/// answered in plain HTTP, makes it again over HTTP with what is left of
/// `limit`, as the kubelet does for hooks (not for probes), and reports
/// the fallback as the kubelet's `LifecycleHTTPFallback` warning.
async fn with_http_fallback<F, Fut>(
    handler: &Handler,
    limit: Duration,
    mut attempt: F,
) -> Result<(), String>
where
    F: FnMut(Handler, Duration) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let err = match attempt(handler.clone(), limit).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let left = limit.saturating_sub(started.elapsed());
    let plain = match plain_http(handler) {
        Some(plain) if err.ends_with(HTTP_RESPONSE_TO_HTTPS) && !left.is_zero() => plain,
        _ => return Err(err),
    };
    if attempt(plain, left).await.is_err() {
        return Err(err);
    }
    warn!(
        reason = "LifecycleHTTPFallback",
        error = %err,
        "request to HTTPS lifecycle hook got HTTP response, retry with HTTP succeeded"
    );
    Ok(())
}

/// The HTTP twin of an HTTPS GET, without `Authorization` (credentials
/// meant for TLS are not sent in clear); `None` for anything else.
fn plain_http(handler: &Handler) -> Option<Handler> {
    match handler {
        Handler::Http {
            scheme: Scheme::Https,
            host,
            port,
            path,
            headers,
        } => Some(Handler::Http {
            scheme: Scheme::Http,
            host: host.clone(),
            port: port.clone(),
            path: path.clone(),
            headers: headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("authorization"))
                .cloned()
                .collect(),
        }),
        _ => None,
    }
}

/// What is left of `grace` after a hook that took `spent`, but never less
/// than [`MIN_GRACE_AFTER_HOOK`].
pub fn grace_after_hook(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(MIN_GRACE_AFTER_HOOK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::handlers::attempt_without_runtime;
    use crate::probe::PortRef;
    use std::net::{Ipv4Addr, SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn an_https_hook_is_kept() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i",
            "lifecycle": {"preStop": {"httpGet": {"port": 8443, "path": "/drain", "scheme": "HTTPS"}}}
        }))
        .expect("container");
        assert_eq!(
            handler(&c, Hook::PreStop),
            Some(Handler::Http {
                scheme: Scheme::Https,
                host: None,
                port: PortRef::Number(8443),
                path: "/drain".into(),
                headers: vec![],
            })
        );
    }

    /// A plain HTTP server for `connections` connections: a TLS hello
    /// gets a 400 (as real servers answer one), a GET gets a 200. Hands
    /// back every request it read.
    async fn plain_server(connections: usize) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    let n = stream.read(&mut buf).await.expect("read");
                    got.extend_from_slice(&buf[..n]);
                    if n == 0 || !got.starts_with(b"GET ") || got.ends_with(b"\r\n\r\n") {
                        break;
                    }
                }
                let reply: &[u8] = if got.starts_with(b"GET ") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"
                };
                stream.write_all(reply).await.expect("write");
                seen.push(String::from_utf8_lossy(&got).into_owned());
            }
            seen
        });
        (port, task)
    }

    fn https_get(port: u16, headers: &[(&str, &str)]) -> Handler {
        Handler::Http {
            scheme: Scheme::Https,
            host: None,
            port: PortRef::Number(i32::from(port)),
            path: "/hook".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// `with_http_fallback` as `run` uses it, against 127.0.0.1.
    async fn run_hook(handler: &Handler) -> Result<(), String> {
        let pod_ip = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        with_http_fallback(handler, Duration::from_secs(2), |h, t| async move {
            attempt_without_runtime(&h, pod_ip, &[], Purpose::Hook, t).await
        })
        .await
    }

    #[tokio::test]
    async fn an_https_hook_answered_in_plain_http_is_retried_over_http() {
        let (port, server) = plain_server(2).await;
        let hook = https_get(port, &[("Authorization", "Bearer t"), ("X-Hook", "1")]);
        run_hook(&hook).await.expect("the HTTP retry succeeds");
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 2, "a TLS hello, then the HTTP retry");
        assert!(!seen[0].starts_with("GET "), "the first try is TLS");
        let retry = &seen[1];
        assert!(retry.starts_with("GET /hook HTTP/1.1\r\n"), "{retry}");
        assert!(retry.contains("X-Hook: 1\r\n"), "{retry}");
        assert!(!retry.contains("Authorization"), "{retry}");
    }

    #[tokio::test]
    async fn other_https_failures_are_not_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        drop(listener);
        let err = run_hook(&https_get(addr.port(), &[]))
            .await
            .expect_err("closed");
        assert!(
            err.starts_with(&format!(
                "Get \"https://{addr}/hook\": dial tcp {addr}: connect:"
            )),
            "{err}"
        );
        // Nor is a plain-HTTP answer to an HTTP hook: no such error arises.
        assert_eq!(
            plain_http(&Handler::Sleep {
                duration: Duration::ZERO
            }),
            None
        );
    }

    #[test]
    fn hooks_are_read_from_the_container() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i",
            "lifecycle": {
                "postStart": {"exec": {"command": ["touch", "/started"]}},
                "preStop": {"sleep": {"seconds": 3}}
            }
        }))
        .expect("container");
        assert_eq!(
            handler(&c, Hook::PostStart),
            Some(Handler::Exec {
                command: vec!["touch".into(), "/started".into()]
            })
        );
        assert_eq!(
            handler(&c, Hook::PreStop),
            Some(Handler::Sleep {
                duration: Duration::from_secs(3)
            })
        );
        let bare: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "image": "i"})).expect("c");
        assert_eq!(handler(&bare, Hook::PreStop), None);
        assert_eq!(Hook::PreStop.failure_reason(), "FailedPreStopHook");
    }

    #[test]
    fn the_container_keeps_some_grace_after_its_hook() {
        let s = Duration::from_secs;
        assert_eq!(grace_after_hook(s(30), s(10)), s(20));
        assert_eq!(grace_after_hook(s(30), s(29)), MIN_GRACE_AFTER_HOOK);
        assert_eq!(grace_after_hook(s(5), s(60)), MIN_GRACE_AFTER_HOOK);
    }
}
