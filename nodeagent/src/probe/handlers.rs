//! One probe attempt per handler, each bounded by the probe's timeout, each
//! answering `Ok` or the reason it failed in the kubelet's words (what
//! `kubectl describe pod` shows after "Liveness probe failed:"). An
//! `httpGet` with `scheme: HTTPS` runs the same request over TLS, the
//! certificate unchecked as the kubelet does (see the `tls` module).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{tls, Handler, Scheme};
use crate::cri::Cri;

pub use super::tls::HTTP_RESPONSE_TO_HTTPS;

/// The most of a failing command's output a message keeps.
const MAX_OUTPUT: usize = 1024;
/// The most of an HTTP response head that is read.
const MAX_HEAD: usize = 16 * 1024;
/// Who makes an attempt, which decides how an HTTP answer is judged and
/// how the request names itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A probe: statuses 200 to 399 succeed.
    Probe,
    /// A lifecycle hook: any answer succeeds, as the kubelet only fails
    /// a hook whose request fails.
    Hook,
}

impl Purpose {
    /// Sent as `User-Agent`; applications tell probes and hooks apart by
    /// the kubelet's `kube-probe/` and `kube-lifecycle/` prefixes.
    fn user_agent(self) -> &'static str {
        match self {
            Purpose::Probe => "kube-probe/commitd",
            Purpose::Hook => "kube-lifecycle/commitd",
        }
    }
}

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
    /// A probe or a hook.
    pub purpose: Purpose,
}

/// Makes one attempt of `handler` against `target`.
pub async fn attempt(
    handler: &Handler,
    target: Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    match handler {
        Handler::Exec { command } => exec(target, command, timeout).await,
        _ => {
            let ports = target.ports;
            attempt_without_runtime(handler, target.pod_ip, ports, target.purpose, timeout).await
        }
    }
}

/// Makes one attempt of a handler that needs no container runtime (all
/// but `exec`, which fails here): split out so that hooks and tests can
/// reach a pod over the network without a runtime connection.
pub async fn attempt_without_runtime(
    handler: &Handler,
    pod_ip: Option<IpAddr>,
    ports: &[(String, i32)],
    purpose: Purpose,
    timeout: Duration,
) -> Result<(), String> {
    match handler {
        Handler::Exec { .. } => Err("exec needs the container runtime".to_string()),
        Handler::Tcp { host, port } => {
            let addr = address(host.as_deref(), pod_ip, port.resolve(ports)?).await?;
            tcp_connect(addr, timeout).await
        }
        Handler::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            let addr = address(host.as_deref(), pod_ip, port.resolve(ports)?).await?;
            let request = HttpRequest {
                scheme: *scheme,
                host: host.as_deref(),
                path,
                headers,
                purpose,
            };
            http_get(addr, &request, timeout).await
        }
        Handler::Sleep { duration } => {
            tokio::time::sleep((*duration).min(timeout)).await;
            Ok(())
        }
        Handler::Grpc { port, service } => {
            let port = u16::try_from(*port).map_err(|_| format!("invalid port number: {port}"))?;
            let addr = address(None, pod_ip, port).await?;
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

/// A GET of `path` over HTTP or HTTPS; statuses 200 to 399 succeed
/// (redirects are not followed, as a 3xx already counts as success). Both
/// schemes share one request/response path and the kubelet's messages;
/// only the URL in them says `https://`.
async fn http_get(
    addr: SocketAddr,
    request: &HttpRequest<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let authority = match request.host {
        Some(h) => join_host_port(h, addr.port()),
        None => addr.to_string(),
    };
    let path = if request.path.starts_with('/') {
        request.path.to_string()
    } else {
        format!("/{}", request.path)
    };
    let url = format!("{}://{authority}{path}", request.scheme.as_str());
    let head = request_head(&path, &authority, request.headers, request.purpose);
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
        match request.scheme {
            Scheme::Http => exchange(tcp, &head).await,
            Scheme::Https => exchange(tls::connect(tcp, request.host, addr).await?, &head).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
        Ok(Ok(code)) if (200..400).contains(&code) || request.purpose == Purpose::Hook => Ok(()),
        Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// What an `httpGet` asks, apart from where it connects.
struct HttpRequest<'a> {
    scheme: Scheme,
    /// The `host` of the action: names the server in `Host` and SNI.
    host: Option<&'a str>,
    path: &'a str,
    headers: &'a [(String, String)],
    purpose: Purpose,
}

/// `host:port`, with brackets around an IPv6 address, as a URL has it.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The request line and headers of the GET, the kubelet's defaults first
/// unless the action sets them itself.
fn request_head(
    path: &str,
    authority: &str,
    headers: &[(String, String)],
    purpose: Purpose,
) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        request.push_str(&format!("Host: {authority}\r\n"));
    }
    if !has("user-agent") {
        request.push_str(&format!("User-Agent: {}\r\n", purpose.user_agent()));
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
    request
}

/// Sends `head` and reads the status code of the answer, over a plain TCP
/// or a TLS stream alike.
async fn exchange<S>(mut stream: S, head: &str) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") && got.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    status_code(&got).ok_or_else(|| "malformed HTTP response".to_string())
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

    /// A GET the way `attempt` makes one, without a runtime at hand.
    async fn get(
        addr: SocketAddr,
        scheme: Scheme,
        host: Option<&str>,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        let request = HttpRequest {
            scheme,
            host,
            path,
            headers,
            purpose: Purpose::Probe,
        };
        http_get(addr, &request, SHORT).await
    }

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

    /// Reads one request head from `stream`, answers it with `status`
    /// and hands back what it read: the server side of both schemes.
    async fn answer_one<S>(stream: &mut S, status: &str) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
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
    }

    /// Answers one request with `status` and hands back what it received.
    async fn http_server(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            answer_one(&mut stream, status).await
        });
        (addr, task)
    }

    #[tokio::test]
    async fn http_statuses_below_400_succeed_and_headers_are_sent() {
        let (addr, server) = http_server("302 Found").await;
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        get(addr, Scheme::Http, None, "/healthz", &headers)
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
            get(addr, Scheme::Http, None, "/", &[]).await,
            Err("HTTP probe failed with statuscode: 500".to_string())
        );
    }

    #[tokio::test]
    async fn a_hook_takes_any_answer_and_names_itself() {
        let (addr, server) = http_server("500 Internal Server Error").await;
        let request = HttpRequest {
            scheme: Scheme::Http,
            host: None,
            path: "/drain",
            headers: &[],
            purpose: Purpose::Hook,
        };
        http_get(addr, &request, SHORT)
            .await
            .expect("a hook that got an answer succeeded");
        let seen = server.await.expect("server");
        assert!(seen.contains("User-Agent: kube-lifecycle/"), "{seen}");
        // No answer at all still fails it.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        assert!(http_get(gone, &request, SHORT).await.is_err());
    }

    #[test]
    fn the_request_names_the_host_and_the_path() {
        assert_eq!(join_host_port("web", 80), "web:80");
        assert_eq!(join_host_port("fd00::1", 8443), "[fd00::1]:8443");
        let head = request_head(
            "/x",
            "web:80",
            &[("Host".into(), "other".into())],
            Purpose::Probe,
        );
        assert!(head.contains("Host: other\r\n"), "{head}");
        assert!(!head.contains("Host: web:80"), "{head}");
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_path_without_a_slash_gets_one() {
        let (addr, server) = http_server("200 OK").await;
        get(addr, Scheme::Http, None, "healthz", &[])
            .await
            .expect("200");
        let request = server.await.expect("server");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
    }

    /// A self-signed certificate for `localhost` only, made fresh: nothing
    /// trusts it and it does not name 127.0.0.1, as with most pods.
    fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(
            std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    /// What a TLS server saw of one request.
    struct Seen {
        request: String,
        sni: Option<String>,
    }

    /// Answers one HTTPS request with `status`.
    async fn https_server(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<Seen>) {
        let acceptor = tls_acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor.accept(tcp).await.expect("handshake");
            let sni = stream.get_ref().1.server_name().map(str::to_string);
            let request = answer_one(&mut stream, status).await;
            stream.shutdown().await.expect("close");
            Seen { request, sni }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn https_accepts_any_certificate_and_keeps_the_status_rules() {
        let (addr, server) = https_server("200 OK").await;
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        get(addr, Scheme::Https, None, "/healthz", &headers)
            .await
            .expect("200 over TLS, certificate not checked");
        let seen = server.await.expect("server");
        assert!(
            seen.request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{}",
            seen.request
        );
        assert!(
            seen.request.contains(&format!("Host: {addr}\r\n")),
            "{}",
            seen.request
        );
        assert!(
            seen.request.contains("X-Probe: yes\r\n"),
            "{}",
            seen.request
        );
        assert_eq!(seen.sni, None, "no SNI for an IP address");

        let (addr, _server) = https_server("500 Internal Server Error").await;
        assert_eq!(
            get(addr, Scheme::Https, None, "/", &[]).await,
            Err("HTTP probe failed with statuscode: 500".to_string())
        );
    }

    #[tokio::test]
    async fn https_names_the_host_in_sni_and_the_host_header() {
        let (addr, server) = https_server("204 No Content").await;
        get(addr, Scheme::Https, Some("localhost"), "/ready", &[])
            .await
            .expect("204");
        let seen = server.await.expect("server");
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        let host = format!("Host: localhost:{}\r\n", addr.port());
        assert!(seen.request.contains(&host), "{}", seen.request);
    }

    /// Answers whatever arrives with `reply`, as a server that does not
    /// speak TLS does.
    async fn plain_server(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(reply).await;
        });
        addr
    }

    #[tokio::test]
    async fn https_to_a_plain_server_fails_with_a_tls_error() {
        let addr = plain_server(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n").await;
        assert_eq!(
            get(addr, Scheme::Https, None, "/", &[]).await,
            Err(format!(
                "Get \"https://{addr}/\": http: server gave HTTP response to HTTPS client"
            ))
        );
        let addr = plain_server(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let err = get(addr, Scheme::Https, None, "/", &[])
            .await
            .expect_err("not TLS");
        assert!(
            err.starts_with(&format!("Get \"https://{addr}/\": tls: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn https_to_a_closed_port_fails_like_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = get(addr, Scheme::Https, None, "/", &[])
            .await
            .expect_err("closed");
        assert!(
            err.starts_with(&format!(
                "Get \"https://{addr}/\": dial tcp {addr}: connect:"
            )),
            "{err}"
        );
    }

    /// Accepts one connection and then says nothing.
    async fn silent_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        addr
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let addr = silent_server().await;
        let err = get(addr, Scheme::Http, None, "/", &[])
            .await
            .expect_err("timeout");
        assert!(err.contains("context deadline exceeded"), "{err}");
        // One that never finishes the TLS handshake times out alike.
        let addr = silent_server().await;
        assert_eq!(
            get(addr, Scheme::Https, None, "/", &[]).await,
            Err(format!(
                "Get \"https://{addr}/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ))
        );
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
