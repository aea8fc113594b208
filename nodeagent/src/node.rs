//! The Node object and the node's heartbeat.
//!
//! The Node carries what the scheduler and people need to know about the
//! machine (capacity, addresses, versions, conditions). It is merged into
//! whatever is stored, so labels, taints or annotations others wrote stay.
//! Liveness is not a Node field: it is an etcd key on a lease
//! ([`commitd_api::keys::node_lease_key`]) that vanishes by itself when the
//! agent stops renewing it, which is what the scheduler checks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context};
use commitd_api::backoff::Backoff;
use commitd_api::reflector::sleep_or_cancel;
use commitd_api::{keys, storage, Store, StoreError};
use etcd_client::{GetOptions, PutOptions};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Seconds the node's lease lives without renewal: the time it takes the
/// cluster to notice a dead agent.
pub const LEASE_TTL_SECONDS: i64 = 15;
/// How often the Node's status (and its Ready heartbeat) is re-posted; the
/// lease is the fast heartbeat, this is the kubelet's slow "report".
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// Pods a node accepts, the kubelet's default `maxPods`.
pub const MAX_PODS: u32 = 110;

/// What the agent reports about its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The Node's name.
    pub name: String,
    /// The InternalIP address.
    pub ip: IpAddr,
    /// Number of CPUs.
    pub cpus: usize,
    /// `MemTotal` in KiB.
    pub memory_ki: u64,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os_image: String,
    /// The running kernel's release.
    pub kernel_version: String,
    /// Go-style architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// /sys/class/dmi/id/product_uuid (empty if unreadable).
    pub system_uuid: String,
    /// `<runtime>://<version>`, e.g. `containerd://1.6.20`.
    pub container_runtime_version: String,
    /// The port the agent serves container logs on (its read-only port),
    /// published as `status.daemonEndpoints.kubeletEndpoint.Port` (capital
    /// P, as Kubernetes spells it) so `commitd logs` finds it; `None` when
    /// it serves none.
    pub read_only_port: Option<u16>,
    /// The node's local-path storage (where volumes go and how many bytes
    /// of them it takes), published so the storage controller can place
    /// volumes here; `None` when it offers none.
    pub local_path: Option<LocalPath>,
}

/// A node's local-path storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPath {
    /// The directory volumes are made in (`<state dir>/local-path`).
    pub root: std::path::PathBuf,
    /// Bytes of volumes the node takes (`commitd.io/local-path`).
    pub capacity_bytes: i64,
}

impl NodeFacts {
    /// Reads the facts from this machine. Unreadable files give empty
    /// fields rather than errors: a Node with less detail is still a node.
    pub fn gather(name: &str, ip: IpAddr, container_runtime_version: String) -> NodeFacts {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let cpus = parse_cpu_list(&read("/sys/devices/system/cpu/online"))
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        NodeFacts {
            name: name.to_string(),
            ip,
            cpus,
            memory_ki: parse_mem_total_ki(&read("/proc/meminfo")).unwrap_or(0),
            os_image: parse_pretty_name(&read("/etc/os-release"))
                .unwrap_or_else(|| "Linux".to_string()),
            kernel_version: read("/proc/sys/kernel/osrelease"),
            architecture: go_arch(std::env::consts::ARCH).to_string(),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            machine_id: read("/etc/machine-id"),
            system_uuid: read("/sys/class/dmi/id/product_uuid"),
            container_runtime_version,
            read_only_port: None,
            local_path: None,
        }
    }
}

/// Number of CPUs in a kernel CPU list such as `0-3,6` (the format of
/// /sys/devices/system/cpu/online). None if unreadable or empty.
pub fn parse_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0usize;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                count += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                count += 1;
            }
        }
    }
    (count > 0).then_some(count)
}

/// `MemTotal` of /proc/meminfo, in KiB.
pub fn parse_mem_total_ki(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value = parts.next()?.parse::<u64>().ok()?;
        match parts.next() {
            Some("kB") | None => Some(value),
            Some(_) => None,
        }
    })
}

/// `PRETTY_NAME` of an os-release file, unquoted.
pub fn parse_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.to_string()).filter(|v| !v.is_empty())
    })
}

/// Rust's architecture name as Go (and so Kubernetes) spells it.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The node's IP when none is configured: the first non-loopback IPv4
/// address of an interface that is up, else 127.0.0.1.
pub fn default_node_ip() -> IpAddr {
    use nix::net::if_::InterfaceFlags;
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter(|a| {
                a.flags.contains(InterfaceFlags::IFF_UP)
                    && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            })
            .find_map(|a| {
                let ip = a.address?.as_sockaddr_in()?.ip();
                (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
            })
    });
    IpAddr::V4(found.unwrap_or(Ipv4Addr::LOCALHOST))
}

/// The kubelet's version string for this agent.
pub fn kubelet_version() -> String {
    format!("commitd-{}", env!("CARGO_PKG_VERSION"))
}

/// Merges the agent's view into a Node: our labels, capacity, addresses,
/// system info and conditions; everything else stays as it was.
pub fn apply(node: &mut Node, facts: &NodeFacts, now: &Time) {
    let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        ("kubernetes.io/hostname", facts.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", facts.architecture.as_str()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", facts.architecture.as_str()),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    let status = node.status.get_or_insert_with(NodeStatus::default);
    let resources = [
        ("cpu", facts.cpus.to_string()),
        ("memory", format!("{}Ki", facts.memory_ki)),
        ("pods", MAX_PODS.to_string()),
    ];
    for map in [&mut status.capacity, &mut status.allocatable] {
        let map = map.get_or_insert_with(BTreeMap::new);
        for (k, v) in &resources {
            map.insert(k.to_string(), Quantity(v.clone()));
        }
        // Ours alone: storage no longer offered is no longer published.
        match &facts.local_path {
            Some(lp) => {
                map.insert(
                    storage::CAPACITY_RESOURCE.to_string(),
                    Quantity(storage::format_bytes(lp.capacity_bytes)),
                );
            }
            None => {
                map.remove(storage::CAPACITY_RESOURCE);
            }
        }
    }
    let annotations = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
    match &facts.local_path {
        Some(lp) => {
            annotations.insert(
                storage::ROOT_ANNOTATION.to_string(),
                lp.root.display().to_string(),
            );
        }
        None => {
            annotations.remove(storage::ROOT_ANNOTATION);
        }
    }
    if annotations.is_empty() {
        node.metadata.annotations = None;
    }
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: facts.ip.to_string(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: facts.name.clone(),
        },
    ]);
    // Ours alone: a port no longer served is no longer published.
    status.daemon_endpoints = facts.read_only_port.map(|port| NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint {
            port: i32::from(port),
        }),
    });
    status.node_info = Some(NodeSystemInfo {
        architecture: facts.architecture.clone(),
        boot_id: facts.boot_id.clone(),
        container_runtime_version: facts.container_runtime_version.clone(),
        kernel_version: facts.kernel_version.clone(),
        kube_proxy_version: String::new(),
        kubelet_version: kubelet_version(),
        machine_id: facts.machine_id.clone(),
        operating_system: "linux".into(),
        os_image: facts.os_image.clone(),
        system_uuid: facts.system_uuid.clone(),
        swap: None,
    });
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for (type_, state, reason, message) in [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ] {
        upsert_condition(conditions, type_, state, reason, message, now);
    }
}

fn upsert_condition(
    conditions: &mut Vec<NodeCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let fresh = NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let transition = if existing.status == status {
                existing.last_transition_time.clone().or(Some(now.clone()))
            } else {
                Some(now.clone())
            };
            *existing = NodeCondition {
                last_transition_time: transition,
                ..fresh
            };
        }
        None => conditions.push(fresh),
    }
}

/// Now, at the second precision the API stores.
fn now_seconds() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Creates the Node or merges our view into the stored one.
pub async fn register(store: &Store, facts: &NodeFacts) -> anyhow::Result<Node> {
    for _ in 0..8 {
        let now = now_seconds();
        let updated = store
            .modify::<Node, _>(None, &facts.name, |node| {
                apply(node, facts, &now);
                true
            })
            .await?;
        if let Some(node) = updated {
            return Ok(node);
        }
        let mut node = Node {
            metadata: ObjectMeta {
                name: Some(facts.name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        apply(&mut node, facts, &now);
        match store.create(node).await {
            Ok(node) => return Ok(node),
            // Someone created it meanwhile: merge into theirs.
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("node {} kept changing while registering it", facts.name)
}

/// Re-posts the Node status every [`STATUS_REFRESH`] until cancelled.
pub async fn keep_status(store: Store, facts: NodeFacts, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut wait = STATUS_REFRESH;
    loop {
        if sleep_or_cancel(wait, &cancel).await {
            return;
        }
        wait = match register(&store, &facts).await {
            Ok(_) => {
                backoff.reset();
                debug!("node status posted");
                STATUS_REFRESH
            }
            Err(e) => {
                let d = backoff.next_delay();
                warn!(error = format!("{e:#}"), retry_in = ?d, "posting node status failed");
                d
            }
        };
    }
}

/// Holds the node's lease key until cancelled, re-granting the lease if it
/// is lost (etcd restarted, a long pause) and putting the key back if
/// someone deleted it. On cancellation the lease is revoked, so the node
/// stops being schedulable at once instead of after the TTL.
pub async fn heartbeat(store: Store, node: String, cancel: CancellationToken) {
    let key = keys::node_lease_key(&node);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match hold_lease(&store, &key, &node, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                let d = backoff.next_delay();
                warn!(error = format!("{e:#}"), retry_in = ?d, "node lease lost; re-acquiring");
                if sleep_or_cancel(d, &cancel).await {
                    return;
                }
            }
        }
    }
}

/// Grants a lease, puts the key on it and renews it; returns Ok only when
/// cancelled (after revoking).
async fn hold_lease(
    store: &Store,
    key: &str,
    node: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut client = store.client();
    let lease = client
        .lease_grant(LEASE_TTL_SECONDS, None)
        .await
        .context("granting the node lease")?
        .id();
    let value = serde_json::json!({
        "holderIdentity": node,
        "leaseDurationSeconds": LEASE_TTL_SECONDS,
        "acquireTime": now_seconds(),
    })
    .to_string();
    let put = |mut client: etcd_client::Client, value: String| async move {
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .context("putting the node lease key")
    };
    let renewed = async {
        put(client.clone(), value.clone()).await?;
        info!(lease, key, "node lease acquired");
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .context("starting lease keep-alive")?;
        let period = Duration::from_secs(u64::try_from(LEASE_TTL_SECONDS / 3).unwrap_or(5));
        loop {
            if sleep_or_cancel(period, cancel).await {
                return Ok(());
            }
            keeper
                .keep_alive()
                .await
                .context("renewing the node lease")?;
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                Ok(Ok(Some(_))) => bail!("the node lease expired"),
                Ok(Ok(None)) => bail!("the lease keep-alive stream ended"),
                Ok(Err(e)) => return Err(anyhow::Error::from(e).context("lease keep-alive")),
                Err(_) => bail!("lease keep-alive got no answer"),
            }
            let present = client
                .get(key, Some(GetOptions::new().with_count_only()))
                .await
                .context("checking the node lease key")?
                .count();
            if present == 0 {
                warn!(key, "node lease key was deleted; putting it back");
                put(client.clone(), value.clone()).await?;
            }
        }
    }
    .await;
    // Cancelled or failed: either way this lease is done with. Revoking
    // deletes the key at once; bounded, so a dead etcd cannot hang us.
    let revoke = tokio::time::timeout(Duration::from_secs(3), client.lease_revoke(lease)).await;
    match (&renewed, revoke) {
        (Ok(()), Ok(Ok(_))) => info!(lease, "node lease revoked"),
        (_, Ok(Err(e))) => debug!(lease, error = %e, "revoking the node lease failed"),
        (_, Err(_)) => debug!(lease, "revoking the node lease timed out"),
        _ => {}
    }
    renewed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            ip: IpAddr::from([192, 0, 2, 7]),
            cpus: 2,
            memory_ki: 24_576_000,
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel_version: "6.1.0".into(),
            architecture: "amd64".into(),
            boot_id: "b".into(),
            machine_id: "m".into(),
            system_uuid: String::new(),
            container_runtime_version: "containerd://1.6.20".into(),
            read_only_port: Some(10255),
            local_path: None,
        }
    }

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn parses_machine_files() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total_ki(meminfo), Some(24_576_000));
        assert_eq!(parse_mem_total_ki("nothing"), None);
        let os = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_pretty_name("PRETTY_NAME=Plain").as_deref(),
            Some("Plain")
        );
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn applies_our_view_and_keeps_theirs() {
        let mut node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(BTreeMap::from([("zone".into(), "a".into())])),
                ..Default::default()
            },
            status: Some(NodeStatus {
                capacity: Some(BTreeMap::from([("gpu".into(), Quantity("1".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&mut node, &facts(), &at(100));
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        let status = node.status.clone().unwrap();
        let capacity = status.capacity.unwrap();
        assert_eq!(capacity["memory"].0, "24576000Ki");
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(capacity["gpu"].0, "1");
        assert_eq!(status.allocatable.unwrap()["memory"].0, "24576000Ki");
        let info = status.node_info.unwrap();
        assert_eq!(info.container_runtime_version, "containerd://1.6.20");
        assert_eq!(info.kubelet_version, kubelet_version());
        let addresses = status.addresses.unwrap();
        assert_eq!(addresses[0].address, "192.0.2.7");
        let endpoints = status.daemon_endpoints.unwrap();
        assert_eq!(endpoints.kubelet_endpoint.unwrap().port, 10255);
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        let first = ready(&node);
        assert_eq!(first.status, "True");
        assert_eq!(first.reason.as_deref(), Some("KubeletReady"));
        // A later heartbeat moves the heartbeat time, not the transition.
        apply(&mut node, &facts(), &at(200));
        let second = ready(&node);
        assert_eq!(second.last_heartbeat_time, Some(at(200)));
        assert_eq!(second.last_transition_time, Some(at(100)));
        assert_eq!(
            node.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .len(),
            4
        );
        // A port no longer served is no longer published.
        let no_port = NodeFacts {
            read_only_port: None,
            ..facts()
        };
        apply(&mut node, &no_port, &at(300));
        assert_eq!(node.status.unwrap().daemon_endpoints, None);
    }

    #[test]
    fn local_path_storage_is_published_and_withdrawn() {
        let mut node = Node::default();
        let with = NodeFacts {
            local_path: Some(LocalPath {
                root: "/var/lib/commitd/agent/local-path".into(),
                capacity_bytes: 10 << 30,
            }),
            ..facts()
        };
        apply(&mut node, &with, &at(100));
        let status = node.status.clone().unwrap_or_default();
        for map in [status.capacity, status.allocatable] {
            let map = map.unwrap_or_default();
            assert_eq!(
                map.get(storage::CAPACITY_RESOURCE),
                Some(&Quantity("10Gi".into()))
            );
        }
        assert_eq!(
            node.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(storage::ROOT_ANNOTATION))
                .map(String::as_str),
            Some("/var/lib/commitd/agent/local-path")
        );
        apply(&mut node, &facts(), &at(200));
        let capacity = node.status.and_then(|s| s.capacity).unwrap_or_default();
        assert!(!capacity.contains_key(storage::CAPACITY_RESOURCE));
        assert_eq!(node.metadata.annotations, None);
    }

    #[test]
    fn default_ip_is_ipv4() {
        assert!(default_node_ip().is_ipv4());
    }
}
