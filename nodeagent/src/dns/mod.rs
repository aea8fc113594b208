//! Cluster DNS: the node's resolver for pods, the CoreDNS of commitd.
//!
//! Pods get `nameserver <cluster DNS VIP>` in their resolv.conf; the node's
//! nftables rules redirect that VIP's port 53 to the port this server
//! listens on. Names under the cluster domain are answered from the live
//! Service and Endpoints caches, following the Kubernetes DNS specification
//! as CoreDNS's kubernetes plugin implements it (TTL 5 s, authoritative);
//! every other name is forwarded to the node's own resolvers.
//!
//! | name | answer |
//! |---|---|
//! | `<svc>.<ns>.svc.<domain>` | A: the ClusterIP, or one per ready endpoint (headless); CNAME for ExternalName |
//! | `<host>.<svc>.<ns>.svc.<domain>` | A of the endpoint whose hostname (or dashed IP) is `<host>` |
//! | `_<port>._<proto>.<svc>.<ns>.svc.<domain>` | SRV per matching port (ClusterIP) or per ready endpoint (headless) |
//! | `a-b-c-d.<ns>.pod.<domain>` | A a.b.c.d ("pods insecure") |
//! | `d.c.b.a.in-addr.arpa` | PTR for ClusterIPs and endpoint addresses; unknown addresses are forwarded |
//! | `dns-version.<domain>` | TXT "1.1.0" (the schema version of the specification) |
//!
//! The server itself is hickory-server's; the `handler` module implements
//! its `RequestHandler` over the records of `records` and the upstream
//! client of `forward`. Until the directory has synced, cluster names
//! answer SERVFAIL (never a false NXDOMAIN); forwarding works at once.

mod directory;
mod forward;
mod handler;
mod name;
mod records;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use directory::{CacheDirectory, MemoryDirectory, ServiceDirectory};
pub use forward::upstreams_from_resolv_conf;

use forward::Forwarder;
use handler::ClusterDnsHandler;
use records::{ClusterRecords, Zone};

/// How long an idle TCP client connection is kept open.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection before the writer pushes back.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How many times an ephemeral port is tried for UDP and TCP together.
const BIND_ATTEMPTS: usize = 16;

/// How to run the cluster DNS server of one node.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where to listen, UDP and TCP on the same port (port 0 = any free
    /// port, see [`DnsServer::local_addr`]). The node's nftables rules send
    /// the cluster DNS VIP's port 53 here.
    pub listen: SocketAddr,
    /// The cluster domain the server is authoritative for, such as
    /// `cluster.local`.
    pub domain: String,
    /// Resolvers for every name outside the cluster domain, tried in order
    /// (usually [`upstreams_from_resolv_conf`] of the node's resolv.conf).
    pub upstreams: Vec<SocketAddr>,
}

/// A cluster DNS server whose sockets are bound but not yet served:
/// binding first lets the caller learn the port (and fail early) before
/// anything runs.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
    handler: ClusterDnsHandler,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Binds the UDP socket and TCP listener of the cluster DNS server on
/// `config.listen` (both on one port, also when that port is 0), so the
/// caller knows the port before [`DnsServer::serve`] runs. Upstreams that
/// are this very server (a loopback resolver on our port) are dropped, so
/// a node whose resolv.conf names us cannot make queries loop.
pub async fn bind(
    config: DnsConfig,
    directory: impl ServiceDirectory,
) -> anyhow::Result<DnsServer> {
    let zone = Zone::new(&config.domain)
        .with_context(|| format!("cluster domain {:?} is not a valid DNS name", config.domain))?;
    let (udp, tcp) = bind_pair(config.listen).await?;
    let local_addr = udp
        .local_addr()
        .context("reading the cluster DNS server's local address")?;
    let upstreams: Vec<SocketAddr> = config
        .upstreams
        .iter()
        .copied()
        .filter(|upstream| {
            let ours = is_ourselves(*upstream, local_addr);
            if ours {
                warn!(%upstream, "ignoring upstream resolver that is this cluster DNS server");
            }
            !ours
        })
        .collect();
    if upstreams.is_empty() {
        warn!("cluster DNS has no upstream resolvers: names outside the cluster domain will fail");
    }
    info!(%local_addr, domain = %zone.domain(), ?upstreams, "cluster DNS bound");
    let records = ClusterRecords::new(zone, Arc::new(directory));
    let handler = ClusterDnsHandler::new(records, Forwarder::new(upstreams));
    Ok(DnsServer {
        udp,
        tcp,
        local_addr,
        handler,
    })
}

impl DnsServer {
    /// The address the server answers on (UDP and TCP share the port),
    /// which tells the port when [`DnsConfig::listen`] asked for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answers queries until `cancel` fires, then stops accepting, drops
    /// queries in flight and returns. An error means a socket failed for
    /// good (the caller decides whether to bind again).
    pub async fn serve(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let DnsServer {
            udp,
            tcp,
            local_addr,
            handler,
        } = self;
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        info!(%local_addr, "cluster DNS serving");
        tokio::select! {
            result = server.block_until_done() => {
                result.context("cluster DNS sockets failed")?;
                anyhow::bail!("cluster DNS sockets closed unexpectedly");
            }
            () = cancel.cancelled() => {}
        }
        server
            .shutdown_gracefully()
            .await
            .context("stopping the cluster DNS server")?;
        info!(%local_addr, "cluster DNS stopped");
        Ok(())
    }
}

/// Binds UDP, then TCP on the port UDP got. With port 0 the kernel may
/// hand UDP a port whose TCP twin is taken, so a few ports are tried.
async fn bind_pair(listen: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("binding cluster DNS UDP socket on {listen}"))?;
        let udp_addr = udp
            .local_addr()
            .context("reading the cluster DNS UDP socket's address")?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) if listen.port() == 0 && error.kind() == std::io::ErrorKind::AddrInUse => {
                last_error = Some(error);
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("binding cluster DNS TCP listener on {udp_addr}"));
            }
        }
    }
    Err(anyhow::anyhow!(
        "no free port for both UDP and TCP on {} after {BIND_ATTEMPTS} attempts: {}",
        listen.ip(),
        last_error.map_or_else(|| "unknown error".to_string(), |e| e.to_string())
    ))
}

/// Whether `upstream` would reach this server: a loopback address on our
/// port when we listen on every address, or exactly our address.
fn is_ourselves(upstream: SocketAddr, local: SocketAddr) -> bool {
    if upstream.port() != local.port() {
        return false;
    }
    upstream.ip() == local.ip() || (local.ip().is_unspecified() && upstream.ip().is_loopback())
}
