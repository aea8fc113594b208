//! Git's smart HTTP protocol on 127.0.0.1, behind HTTP basic
//! authentication: `git http-backend` run as a CGI program per request by
//! a small HTTP/1.1 server, as a Git host serves repositories to clients
//! holding a token. The server stops when the guard is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running server; stops on drop.
pub struct GitHttp {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl GitHttp {
    /// Serves the bare repositories under `root`, to clients sending
    /// `Authorization: Basic` of `user:password`.
    pub async fn start(root: &Path, user: &str, password: &str) -> GitHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let credentials = format!("Basic {}", base64(&format!("{user}:{password}")));
        let root = root.to_path_buf();
        let cancel = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (root, credentials) = (root.clone(), credentials.clone());
                        tokio::spawn(async move {
                            let _ = serve(stream, &root, &credentials).await;
                        });
                    }
                }
            }
        });
        GitHttp { addr, stop }
    }

    /// The URL of a served repository.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// One request (the connection is closed after it).
async fn serve(stream: TcpStream, root: &Path, credentials: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        read_chunked(&mut reader).await?
    } else {
        let len = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0usize);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await?;
        body
    };
    let mut stream = reader.into_inner();
    if header("authorization").as_deref() != Some(credentials) {
        stream
            .write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        return Ok(());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = cgi.stdin.take() {
        stdin.write_all(&body).await?;
    }
    let out = cgi.wait_with_output().await?;
    // A CGI answer: headers (one may be `Status:`), a blank line, the body.
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|at| (at, 2))
        });
    let (head, content) = match split {
        Some((at, len)) => (&out.stdout[..at], &out.stdout[at + len..]),
        None => (&out.stdout[..], &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => response += &format!("{h}\r\n"),
            None => {}
        }
    }
    let response = format!(
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(content).await?;
    stream.shutdown().await
}

async fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).await?;
        let size =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            let mut end = String::new();
            reader.read_line(&mut end).await?;
            return Ok(body);
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).await?;
        chunk.truncate(size);
        body.extend_from_slice(&chunk);
    }
}
