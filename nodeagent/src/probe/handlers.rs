//! One probe attempt per handler, each bounded by the probe's timeout, each
//! answering `Ok` or the reason it failed in the kubelet's words (what
//! `kubectl describe pod` shows after "Liveness probe failed:").

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::Handler;
use crate::cri::Cri;

/// The most of a failing command's output a message keeps.
const MAX_OUTPUT: usize = 1024;
/// The most of an HTTP response head that is read.
const MAX_HEAD: usize = 16 * 1024;
/// Sent as `User-Agent`; applications tell probes apart by the
/// `kube-probe/` prefix.
const USER_AGENT: &str = "kube-probe/commitd";

/// What an attempt is aimed at.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The runtime, for `exec`.
    pub cri: &'a Cri,
    /// The container instance.
    pub container_id: &'a str,
    /// The pod's address, for network handlers without a `host`.
    pub pod_ip: Option<IpAddr>,
    /// The container's named ports.
    pub ports: &'a [(String, i32)],
}

/// Makes one attempt of `handler` against `target`.
pub async fn attempt(
    handler: &Handler,
    target: Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    match handler {
        Handler::Exec { command } => exec(target, command, timeout).await,
        Handler::Tcp { host, port } => {
            let addr = address(host.as_deref(), target.pod_ip, port.resolve(target.ports)?).await?;
            tcp_connect(addr, timeout).await
        }
        Handler::Http {
            host,
            port,
            path,
            headers,
        } => {
            let port = port.resolve(target.ports)?;
            let addr = address(host.as_deref(), target.pod_ip, port).await?;
            http_get(addr, host.as_deref(), path, headers, timeout).await
        }
        Handler::Sleep { duration } => {
            tokio::time::sleep((*duration).min(timeout)).await;
            Ok(())
        }
        Handler::Grpc { port, service } => {
            let port = u16::try_from(*port).map_err(|_| format!("invalid port number: {port}"))?;
            let addr = address(None, target.pod_ip, port).await?;
            grpc_check(addr, service, timeout).await
        }
    }
}

/// `host` (a name or address) or the pod IP, with `port`.
async fn address(
    host: Option<&str>,
    pod_ip: Option<IpAddr>,
    port: u16,
) -> Result<SocketAddr, String> {
    match host {
        None => pod_ip
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| "the pod has no IP address yet".to_string()),
        Some(h) => {
            if let Ok(ip) = h.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            tokio::net::lookup_host((h, port))
                .await
                .map_err(|e| format!("resolving {h}: {e}"))?
                .next()
                .ok_or_else(|| format!("resolving {h}: no address"))
        }
    }
}

/// A TCP connection that opens within `timeout`.
async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

async fn exec(target: Target<'_>, command: &[String], timeout: Duration) -> Result<(), String> {
    if command.is_empty() {
        return Err("no command given".to_string());
    }
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    // CRI counts whole seconds; the local bound also covers a runtime
    // that does not answer.
    let secs = i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX);
    let call = target.cri.exec_sync(target.container_id, &args, secs);
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Err(_) => Err(format!("command {command:?} timed out")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) if out.exit_code == 0 => Ok(()),
        Ok(Ok(out)) => {
            let mut output = format!("{}{}", out.stdout, out.stderr);
            if output.len() > MAX_OUTPUT {
                let mut cut = MAX_OUTPUT;
                while !output.is_char_boundary(cut) {
                    cut -= 1;
                }
                output.truncate(cut);
            }
            let output = output.trim();
            if output.is_empty() {
                Err(format!("command {command:?} exited with {}", out.exit_code))
            } else {
                Err(output.to_string())
            }
        }
    }
}

/// A GET of `path`; statuses 200 to 399 succeed (redirects are not
/// followed, as a 3xx already counts as success).
async fn http_get(
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let authority = match host {
        Some(h) => format!("{h}:{}", addr.port()),
        None => addr.to_string(),
    };
    let url = format!("http://{authority}{path}");
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
        let mut request = format!("GET {path} HTTP/1.1\r\n");
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !has("host") {
            request.push_str(&format!("Host: {authority}\r\n"));
        }
        if !has("user-agent") {
            request.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
        }
        if !has("accept") {
            request.push_str("Accept: */*\r\n");
        }
        for (name, value) in headers {
            // Validation allows only [-A-Za-z0-9] in names; values must
            // not end the header early.
            let value = value.replace(['\r', '\n'], " ");
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        status_code(&head).ok_or_else(|| "malformed HTTP response".to_string())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// The status code of an HTTP response's first line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// The gRPC health protocol's `Check` for `service`.
async fn grpc_check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("failed to connect service {addr:?} within {timeout:?}: {e}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()))?;
        Ok::<_, String>(response.into_inner().status)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => Ok(()),
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            Err(format!("service unhealthy (responded with {name:?})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const SHORT: Duration = Duration::from_millis(500);

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\nX: y"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    /// Answers one request with `status` and hands back what it received.
    async fn http_server(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn http_statuses_below_400_succeed_and_headers_are_sent() {
        let (addr, server) = http_server("302 Found").await;
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        http_get(addr, None, "/healthz", &headers, SHORT)
            .await
            .expect("302 is success");
        let request = server.await.expect("server");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("Host: {addr}\r\n")), "{request}");
        assert!(request.contains("User-Agent: kube-probe/"), "{request}");
        assert!(request.contains("X-Probe: yes\r\n"), "{request}");

        let (addr, _server) = http_server("500 Internal Server Error").await;
        assert_eq!(
            http_get(addr, None, "/", &[], SHORT).await,
            Err("HTTP probe failed with statuscode: 500".to_string())
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        let err = http_get(addr, None, "/", &[], SHORT)
            .await
            .expect_err("timeout");
        assert!(err.contains("context deadline exceeded"), "{err}");
    }

    #[tokio::test]
    async fn tcp_succeeds_only_when_something_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tcp_connect(addr, SHORT).await.expect("open");
        drop(listener);
        let err = tcp_connect(addr, SHORT).await.expect_err("closed");
        assert!(
            err.starts_with(&format!("dial tcp {addr}: connect:")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn grpc_health_serving_succeeds_and_not_serving_fails() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("ready", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("draining", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let timeout = Duration::from_secs(2);
        grpc_check(addr, "", timeout).await.expect("server serving");
        grpc_check(addr, "ready", timeout)
            .await
            .expect("service serving");
        assert_eq!(
            grpc_check(addr, "draining", timeout).await,
            Err("service unhealthy (responded with \"NOT_SERVING\")".to_string())
        );
        let unknown = grpc_check(addr, "nope", timeout)
            .await
            .expect_err("unknown");
        assert!(unknown.contains("NotFound"), "{unknown}");
        server.abort();
    }
}
