//! Shared pieces of the integration and end-to-end tests.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod etcd;
pub mod git;
pub mod git_daemon;
pub mod git_http;
pub mod history;
pub mod node;
pub mod sshd;
pub mod wait;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the tests run as root (/proc/self belongs to the effective
/// uid): containerd, network namespaces and nftables need it.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A TCP port free on this machine now, for a server a test starts (it
/// may be taken again before the server binds it, which is unlikely
/// enough for tests: the kernel hands ephemeral ports out in turn).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Fetches `http://addr/` with a raw HTTP/1.0 GET and returns the body.
pub async fn http_get(addr: &str) -> Result<String, String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                Ok(body.to_string())
            }
            _ => Err(format!("unexpected response: {text}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| format!("GET http://{addr}/ timed out"))?
}
