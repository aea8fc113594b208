//! Forwarding of names outside the cluster domain to the node's own
//! resolvers, and reading those resolvers from a resolv.conf.
//!
//! Each question goes over UDP from a fresh socket (random source port,
//! random id, the answer must match both and the question) with a timeout
//! per upstream, and again over TCP to the same upstream when the answer is
//! truncated. Upstreams are tried in order, as glibc does; the first that
//! answers with anything but SERVFAIL or REFUSED wins.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};

/// How long one upstream gets to answer over UDP (and, separately, over
/// TCP after a truncated answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one forwarded question may take in all, kept under the 5 s
/// after which glibc's stub resolver sends its query again.
const TOTAL_TIMEOUT: Duration = Duration::from_millis(4500);
/// The UDP payload size we advertise upstream (the DNS flag day value:
/// fits in one unfragmented packet on any path).
const UPSTREAM_PAYLOAD: u16 = 1232;
/// Forwarded questions in flight at once; past this, clients get REFUSED
/// at once instead of the node running out of sockets.
const MAX_IN_FLIGHT: usize = 1000;
/// glibc reads at most this many nameservers from resolv.conf.
const MAX_NAMESERVERS: usize = 3;

/// Why a question got no usable answer from upstream.
#[derive(Debug, Error)]
pub(crate) enum ForwardError {
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
    #[error("too many forwarded queries in flight")]
    Busy,
    #[error("no upstream answered: {0}")]
    NoAnswer(String),
}

/// Why one exchange with one upstream failed.
#[derive(Debug, Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("encoding the query: {0}")]
    Encode(String),
    #[error("malformed answer: {0}")]
    Decode(String),
    #[error("answer does not match the query")]
    Mismatch,
}

/// The client for the node's upstream resolvers.
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>) -> Self {
        Forwarder {
            upstreams,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Asks the upstreams `query` (sent as given, case and all) and returns
    /// the first usable answer. `recursion_desired` and
    /// `checking_disabled` are the client's flags, passed on.
    pub(crate) async fn forward(
        &self,
        query: &Query,
        recursion_desired: bool,
        checking_disabled: bool,
    ) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return Err(ForwardError::Busy);
        };
        let deadline = Instant::now() + TOTAL_TIMEOUT;
        let mut failures = Vec::new();
        let mut fallback: Option<Message> = None;
        for &upstream in &self.upstreams {
            if Instant::now() >= deadline {
                failures.push(format!("{upstream}: no time left"));
                break;
            }
            let request = upstream_request(query, recursion_desired, checking_disabled);
            match exchange(upstream, &request, deadline).await {
                Ok(answer)
                    if matches!(
                        answer.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    debug!(%upstream, rcode = %answer.metadata.response_code, "upstream failed the query; trying the next");
                    failures.push(format!("{upstream}: {}", answer.metadata.response_code));
                    fallback = Some(answer);
                }
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    debug!(%upstream, %error, "upstream did not answer");
                    failures.push(format!("{upstream}: {error}"));
                }
            }
        }
        match fallback {
            Some(answer) => Ok(answer),
            None => Err(ForwardError::NoAnswer(failures.join("; "))),
        }
    }
}

/// The message sent upstream: the client's question under a fresh id, with
/// EDNS so that answers up to [`UPSTREAM_PAYLOAD`] need no TCP.
fn upstream_request(query: &Query, recursion_desired: bool, checking_disabled: bool) -> Message {
    let mut request = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = recursion_desired;
    request.metadata.checking_disabled = checking_disabled;
    request.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    request.set_edns(edns);
    request
}

/// One question to one upstream: UDP, then TCP if the answer is truncated
/// (keeping the truncated answer if TCP fails, so the client can retry).
async fn exchange(
    upstream: SocketAddr,
    request: &Message,
    deadline: Instant,
) -> Result<Message, ExchangeError> {
    let bytes = request
        .to_vec()
        .map_err(|e| ExchangeError::Encode(e.to_string()))?;
    let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
    let answer = timeout_at(attempt_deadline, exchange_udp(upstream, request, &bytes))
        .await
        .map_err(|_| ExchangeError::Timeout)??;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    debug!(%upstream, "truncated answer over UDP; asking again over TCP");
    let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
    match timeout_at(attempt_deadline, exchange_tcp(upstream, request, &bytes)).await {
        Ok(Ok(full)) => Ok(full),
        Ok(Err(error)) => {
            debug!(%upstream, %error, "TCP retry failed; passing on the truncated answer");
            Ok(answer)
        }
        Err(_) => {
            debug!(%upstream, "TCP retry timed out; passing on the truncated answer");
            Ok(answer)
        }
    }
}

async fn exchange_udp(
    upstream: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> Result<Message, ExchangeError> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone else, and an ICMP
    // port-unreachable comes back as an error instead of a timeout.
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buffer = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buffer).await?;
        match Message::from_vec(&buffer[..len]) {
            Ok(answer) if answers(request, &answer) => return Ok(answer),
            Ok(_) => debug!(%upstream, "ignoring a UDP answer that does not match the query"),
            Err(error) => debug!(%upstream, %error, "ignoring a malformed UDP answer"),
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    request: &Message,
    bytes: &[u8],
) -> Result<Message, ExchangeError> {
    let length = u16::try_from(bytes.len())
        .map_err(|_| ExchangeError::Encode("query longer than 65535 bytes".to_string()))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await?;
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await?;
    let answer = Message::from_vec(&buffer).map_err(|e| ExchangeError::Decode(e.to_string()))?;
    if answers(request, &answer) {
        Ok(answer)
    } else {
        Err(ExchangeError::Mismatch)
    }
}

/// Whether `answer` is the response to `request`: same id, a response,
/// and the same question (names compare case-insensitively).
fn answers(request: &Message, answer: &Message) -> bool {
    answer.metadata.id == request.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries.len() == request.queries.len()
        && answer.queries.iter().zip(&request.queries).all(|(a, q)| {
            a.name() == q.name()
                && a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
        })
}

/// The node's resolvers from a resolv.conf (`nameserver` lines, port 53,
/// at most three as glibc reads). A missing or unreadable file gives none
/// (logged). Reads a small file synchronously: meant for start-up.
pub fn upstreams_from_resolv_conf(path: &Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let upstreams = parse_resolv_conf(&text);
            if upstreams.is_empty() {
                warn!(path = %path.display(), "no usable nameserver in resolv.conf");
            }
            upstreams
        }
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot read resolv.conf; no upstream resolvers");
            Vec::new()
        }
    }
}

/// The nameservers of a resolv.conf text.
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(address) = words.next() else {
            continue;
        };
        match parse_nameserver(address) {
            Some(upstream) if !upstreams.contains(&upstream) => upstreams.push(upstream),
            Some(_) => {}
            None => warn!(%address, "ignoring resolv.conf nameserver that is not an IP address"),
        }
        if upstreams.len() == MAX_NAMESERVERS {
            break;
        }
    }
    upstreams
}

/// `1.2.3.4`, `2001:db8::1`, or `fe80::1%eth0` (a link-local address with
/// its interface) → the address on port 53.
fn parse_nameserver(address: &str) -> Option<SocketAddr> {
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (ip, scope) = address.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope_id = match scope.parse::<u32>() {
        Ok(index) => index,
        Err(_) => nix::net::if_::if_nametoindex(scope).ok()?,
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# Generated by NetworkManager
search example.com
nameserver 10.0.0.2
; nameserver 10.0.0.9
nameserver   2001:db8::53  # trailing comment
nameserver 10.0.0.2
nameserver not-an-address
nameserver 127.0.0.53
nameserver 10.0.0.4
options edns0 trust-ad
";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap(),
            ]
        );
        assert_eq!(parse_resolv_conf(""), Vec::<SocketAddr>::new());
        assert_eq!(
            parse_resolv_conf("nameserver fe80::1%7\n"),
            vec![SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                53,
                0,
                7
            ))]
        );
    }

    #[test]
    fn resolv_conf_missing_file_gives_nothing() {
        assert!(upstreams_from_resolv_conf(Path::new("/nonexistent/resolv.conf")).is_empty());
    }
}
