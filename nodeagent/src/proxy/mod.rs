//! The service proxy (kube-proxy) of a node: programs nftables so that
//! service virtual IPs, node ports and the cluster DNS address reach ready
//! endpoints, one atomic `nft -f -` transaction per change.
//!
//! [`model`] reduces Service and Endpoints objects to plain values,
//! [`layout`] names what commitd's table holds, [`rules`] turns the model
//! into nft scripts (full, refresh, or only what changed) and [`nft`] runs
//! them; [`run`] is the loop that keeps the kernel in step with the caches,
//! and has [`conntrack`] forget UDP flows to removed endpoints.

pub mod conntrack;
pub mod layout;
pub mod model;
pub mod nft;
pub mod rules;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use commitd_api::backoff::Backoff;
use commitd_api::reflector::{sleep_or_cancel, Cache};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

pub use layout::service_chain_name;
pub use model::{Endpoint, Model, Protocol, ServicePort, ServicePortKey};
pub use rules::{Proxier, SyncKind, SyncStats, Update};

/// The table commitd owns unless configured otherwise.
pub const DEFAULT_TABLE: &str = "commitd";
/// How often the whole table is rewritten to heal hand edits.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Lets packets with a loopback source be routed off the host after DNAT,
/// which NodePort on 127.0.0.1 needs.
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";
/// Makes bridged (pod-to-pod on one node) traffic pass the ip hooks.
const BRIDGE_NF_CALL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Sends cluster DNS traffic (the DNS service's VIP, port 53) to the
/// node's own DNS server, which listens on `0.0.0.0:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRedirect {
    /// The cluster DNS virtual IP pods have as nameserver.
    pub vip: Ipv4Addr,
    /// The local port the node's DNS server listens on.
    pub port: u16,
}

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The nftables `ip` table commitd owns (created and replaced whole).
    pub table: String,
    /// The pod network: traffic to a VIP from outside it is masqueraded so
    /// replies come back through this node. `None`: no masquerade by source.
    pub cluster_cidr: Option<Ipv4Net>,
    /// The cluster DNS redirect, if the node serves DNS.
    pub dns: Option<DnsRedirect>,
    /// How often the table is rewritten whole to heal hand edits.
    pub resync_interval: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            table: DEFAULT_TABLE.to_string(),
            cluster_cidr: None,
            dns: None,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
        }
    }
}

/// Keeps the node's service rules in step with the Service and Endpoints
/// caches until `cancel` fires.
///
/// Waits for both caches, recreates the table, then on every change
/// applies only what changed (one sync at a time; changes that arrive
/// during a sync are picked up by the next one). A failed sync is retried
/// as a full one with back-off; every `resync_interval` the table is
/// refreshed whole. On cancel the table is left in place, so established
/// connections and service traffic keep working until a restarted proxy
/// rebuilds it; [`remove_table`] removes it for good.
pub async fn run(
    services: Cache<Service>,
    endpoints: Cache<Endpoints>,
    config: ProxyConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let span = info_span!("proxy", table = %config.table);
    async move {
        let mut proxier = Proxier::new(&config)?;
        if let Err(e) = enable_route_localnet().await {
            warn!(error = format!("{e:#}"), "node ports will not answer on 127.0.0.1");
        }
        if let Err(e) = enable_bridge_netfilter().await {
            warn!(error = format!("{e:#}"), "pods on one bridge may not reach each other through a Service");
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = async { services.ready().await; endpoints.ready().await } => {}
        }
        let mut svc_changes = Some(services.changes());
        let mut ep_changes = Some(endpoints.changes());
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let interval = config.resync_interval.max(Duration::from_millis(100));
        let mut next_resync = Instant::now() + interval;
        loop {
            // Mark what is about to be read as seen: anything newer wakes
            // the wait below.
            for rx in [&mut svc_changes, &mut ep_changes].into_iter().flatten() {
                rx.borrow_and_update();
            }
            let kind = if proxier.applied().is_none() {
                SyncKind::Full
            } else if Instant::now() >= next_resync {
                SyncKind::Refresh
            } else {
                SyncKind::Incremental
            };
            let model = Model::build(
                services.list().iter().map(AsRef::as_ref),
                endpoints.list().iter().map(AsRef::as_ref),
                config.dns.as_ref(),
            );
            match proxier.sync(model, kind).await {
                Ok(stats) => {
                    backoff.reset();
                    for flows in &stats.stale_flows {
                        if let Err(e) = conntrack::delete(flows).await {
                            warn!(error = %e, "UDP clients may keep reaching a removed endpoint until their flow times out");
                        }
                    }
                    if stats.kind != SyncKind::Incremental {
                        next_resync = Instant::now() + interval;
                        info!(kind = ?stats.kind, service_ports = stats.changed, rules = stats.rules, duration = ?stats.duration, "service rules synced");
                    } else if stats.changed > 0 {
                        debug!(changed = stats.changed, rules = stats.rules, duration = ?stats.duration, "service rules updated");
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(kind = ?kind, error = %e, retry_in = ?delay, "programming service rules failed; next sync is a full one");
                    if sleep_or_cancel(delay, &cancel).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = changed(&mut svc_changes) => {}
                _ = changed(&mut ep_changes) => {}
                _ = tokio::time::sleep_until(next_resync) => {}
            }
        }
    }
    .instrument(span)
    .await
}

/// Waits for the next change; a closed channel (its cache stopped) never
/// fires again and is dropped.
async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Sets `net.ipv4.conf.all.route_localnet=1` in the current network
/// namespace, so NodePort traffic to 127.0.0.1 can be DNATed to pods.
pub async fn enable_route_localnet() -> anyhow::Result<()> {
    tokio::fs::write(ROUTE_LOCALNET, "1")
        .await
        .with_context(|| format!("writing 1 to {ROUTE_LOCALNET}"))
}

/// Sets `net.bridge.bridge-nf-call-iptables=1`, loading `br_netfilter`
/// if needed: without it, a pod's packets to a Service whose endpoint is
/// on the same bridge are switched, never seen by the nat hooks.
pub async fn enable_bridge_netfilter() -> anyhow::Result<()> {
    if !tokio::fs::try_exists(BRIDGE_NF_CALL).await.unwrap_or(false) {
        let status = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .await
            .context("running modprobe br_netfilter")?;
        anyhow::ensure!(status.success(), "modprobe br_netfilter: {status}");
    }
    if tokio::fs::read_to_string(BRIDGE_NF_CALL)
        .await
        .unwrap_or_default()
        .trim()
        == "1"
    {
        return Ok(());
    }
    tokio::fs::write(BRIDGE_NF_CALL, "1")
        .await
        .with_context(|| format!("writing 1 to {BRIDGE_NF_CALL}"))
}

/// Deletes the proxy's table (all service rules) if it exists, for an
/// all-in-one cluster that is shutting down.
pub async fn remove_table(table: &str) -> anyhow::Result<()> {
    if !layout::valid_table_name(table) {
        return Err(rules::InvalidTableName(table.to_string()).into());
    }
    // Adding first makes the delete succeed whether or not it existed.
    nft::apply(&format!("add table ip {table}\ndelete table ip {table}\n"))
        .await
        .with_context(|| format!("removing nftables table ip {table}"))
}
