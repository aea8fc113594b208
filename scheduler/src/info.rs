//! The scheduler's view of a pod and of a node, computed once per pass so
//! that every filter and scorer reads plain numbers (kube-scheduler's
//! PreFilter state and `NodeInfo`).

use std::sync::Arc;

use commitd_api::meta;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};

use crate::resources::{self, InvalidQuantity, ResourceList, Resources};

/// A host port a pod binds, normalised as kube-scheduler does (empty IP
/// means all addresses, empty protocol means TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `0.0.0.0` for all addresses.
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port on the host (never 0).
    pub port: i32,
}

/// The IP kube-scheduler takes an empty `hostIP` to mean.
pub const ALL_ADDRESSES: &str = "0.0.0.0";

impl HostPort {
    /// Whether binding `self` would collide with `other` already bound:
    /// same protocol and port, and the same address or either on all
    /// addresses.
    pub fn conflicts_with(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || self.ip == ALL_ADDRESSES || other.ip == ALL_ADDRESSES)
    }
}

/// What the scheduler needs to know about a pod, derived once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod itself.
    pub pod: Arc<Pod>,
    /// `namespace/name`, for logs and spans.
    pub key: String,
    /// Requests as the fit filter compares them.
    pub requests: Resources,
    /// CPU (millicores) and memory (bytes) with kube-scheduler's defaults
    /// for containers that request none, as scoring compares them.
    pub non_zero: NonZero,
    /// Host ports the pod binds.
    pub host_ports: Vec<HostPort>,
    /// The volumes its claims are bound to (filled in by the pass that
    /// schedules it; empty for pods already bound).
    pub volumes: Vec<Arc<PersistentVolume>>,
}

/// CPU and memory with the scoring defaults applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonZero {
    /// Millicores.
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
}

impl PodInfo {
    /// Derives the scheduler's view; fails if a quantity does not parse.
    pub fn new(pod: Arc<Pod>) -> Result<PodInfo, InvalidQuantity> {
        let requests = Resources::from_list(&resources::pod_requests(&pod, &ResourceList::new())?);
        let non_zero = Resources::from_list(&resources::pod_requests(
            &pod,
            &resources::non_zero_defaults(),
        )?);
        Ok(PodInfo {
            key: meta::display_key(pod.as_ref()),
            requests,
            non_zero: NonZero {
                milli_cpu: non_zero.milli_cpu,
                memory: non_zero.memory,
            },
            host_ports: host_ports(&pod),
            volumes: Vec::new(),
            pod,
        })
    }

    /// Like [`PodInfo::new`], but a pod whose quantities do not parse counts
    /// as requesting nothing: for pods already bound, which occupy a node
    /// whatever their manifest says.
    pub fn lenient(pod: Arc<Pod>) -> PodInfo {
        match PodInfo::new(pod.clone()) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(pod = %meta::display_key(pod.as_ref()), "counting a bound pod as requesting nothing: {e}");
                PodInfo {
                    key: meta::display_key(pod.as_ref()),
                    requests: Resources::default(),
                    non_zero: NonZero::default(),
                    host_ports: host_ports(&pod),
                    volumes: Vec::new(),
                    pod,
                }
            }
        }
    }

    /// The pod's name (for messages).
    pub fn name(&self) -> &str {
        meta::name(self.pod.as_ref())
    }
}

/// Host ports of the containers and sidecars (init containers that keep
/// running), as kube-scheduler collects them.
fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some(HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| ALL_ADDRESSES.to_string()),
                protocol: p
                    .protocol
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "TCP".to_string()),
                port,
            })
        })
        .collect()
}

/// What the scheduler knows about a node: the node, whether it heartbeats,
/// what it offers and what the pods bound to it already take.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node itself.
    pub node: Arc<Node>,
    /// Whether its heartbeat key exists in etcd (its lease is alive).
    pub heartbeat: bool,
    /// What it offers.
    pub allocatable: Resources,
    /// The sum of the requests of the pods bound to it.
    pub requested: Resources,
    /// The same with the scoring defaults.
    pub non_zero_requested: NonZero,
    /// How many pods are bound to it.
    pub pod_count: i64,
    /// Host ports those pods bind.
    pub used_ports: Vec<HostPort>,
}

impl NodeInfo {
    /// A node with nothing bound yet.
    pub fn new(node: Arc<Node>, heartbeat: bool) -> NodeInfo {
        let (allocatable, errors) = resources::node_allocatable(&node);
        for e in errors {
            tracing::warn!(node = %meta::name(node.as_ref()), "counting as zero: {e}");
        }
        NodeInfo {
            node,
            heartbeat,
            allocatable,
            requested: Resources::default(),
            non_zero_requested: NonZero::default(),
            pod_count: 0,
            used_ports: Vec::new(),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        meta::name(self.node.as_ref())
    }

    /// Accounts for a pod bound to this node.
    pub fn add_pod(&mut self, pod: &PodInfo) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.milli_cpu = self
            .non_zero_requested
            .milli_cpu
            .saturating_add(pod.non_zero.milli_cpu);
        self.non_zero_requested.memory = self
            .non_zero_requested
            .memory
            .saturating_add(pod.non_zero.memory);
        self.pod_count += 1;
        self.used_ports.extend(pod.host_ports.iter().cloned());
    }
}
