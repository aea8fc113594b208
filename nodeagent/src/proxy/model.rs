//! What the proxy must program, reduced from Service and Endpoints objects
//! to plain values: one [`ServicePort`] per port of every proxied service.
//!
//! Building the model is pure and cheap (no I/O), so the proxier can
//! rebuild it from the caches on every change and diff it against what the
//! kernel holds; the rule generator only ever sees this model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use tracing::warn;

use super::DnsRedirect;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Kubernetes' upper bound for the affinity timeout (one day).
const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// The transport protocol of a service port, as nft spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// `TCP`, the Kubernetes default.
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes protocol name; absent means TCP (the default).
    pub fn parse(name: Option<&str>) -> Option<Protocol> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name nft uses for it (`inet_proto` values, `meta l4proto`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

/// Identifies one port of one service across changes: chain names are
/// derived from it, so it must not include anything that can change while
/// the port stays "the same" (addresses, numbers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name; "" for a service's single unnamed port.
    pub port_name: String,
}

impl ServicePortKey {
    /// A key from its parts.
    pub fn new(namespace: &str, name: &str, port_name: &str) -> ServicePortKey {
        ServicePortKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port_name: port_name.to_string(),
        }
    }
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port_name.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// One ready backend of a service port: where its traffic is DNATed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The resolved target port.
    pub port: u16,
}

/// Everything the rules of one service port depend on. Two equal values
/// produce identical rules, which is what makes diffing by equality work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The virtual IP (`spec.clusterIP`).
    pub cluster_ip: Ipv4Addr,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The port on the virtual IP.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// `Some(seconds)` for `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// The ready endpoints, sorted and without duplicates.
    pub endpoints: Vec<Endpoint>,
}

/// The desired state of every proxied service port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    ports: BTreeMap<ServicePortKey, ServicePort>,
}

impl Model {
    /// An empty model (no services).
    pub fn new() -> Model {
        Model::default()
    }

    /// The model of a whole cluster: every service, matched with the
    /// Endpoints object of the same namespace and name. Ports that would
    /// take a VIP or node port another port already has (which the
    /// allocators should never let happen) are left out with a warning, the
    /// first in namespace/name order winning, so one bad object cannot make
    /// every transaction fail. Ports the DNS redirect owns (`dns.vip`:53)
    /// are left out too: the redirect handles them.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        endpoints: impl IntoIterator<Item = &'a Endpoints>,
        dns: Option<&DnsRedirect>,
    ) -> Model {
        let by_name: HashMap<(&str, &str), &Endpoints> = endpoints
            .into_iter()
            .filter_map(|e| {
                let ns = e.metadata.namespace.as_deref()?;
                let name = e.metadata.name.as_deref()?;
                Some(((ns, name), e))
            })
            .collect();
        let mut all = BTreeMap::new();
        for svc in services {
            let (Some(ns), Some(name)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let eps = by_name.get(&(ns, name)).copied();
            all.extend(service_ports(svc, eps));
        }
        let mut model = Model::new();
        let mut vips = HashSet::new();
        let mut node_ports = HashSet::new();
        for (key, port) in all {
            if dns.is_some_and(|d| redirected_by_dns(d, &port)) {
                continue;
            }
            if !vips.insert((port.cluster_ip, port.protocol, port.port)) {
                warn!(service = %key, vip = %port.cluster_ip, port = port.port, "another service already has this virtual IP and port; skipping");
                continue;
            }
            if let Some(np) = port.node_port {
                if !node_ports.insert((port.protocol, np)) {
                    warn!(service = %key, node_port = np, "another service already has this node port; skipping");
                    continue;
                }
            }
            model.ports.insert(key, port);
        }
        model
    }

    /// Every service port, in key order.
    pub fn ports(&self) -> &BTreeMap<ServicePortKey, ServicePort> {
        &self.ports
    }

    /// One service port.
    pub fn get(&self, key: &ServicePortKey) -> Option<&ServicePort> {
        self.ports.get(key)
    }

    /// Sets one service port (for callers that build models by hand, such
    /// as benchmarks). No conflict checks: see [`Model::build`].
    pub fn insert(&mut self, key: ServicePortKey, port: ServicePort) {
        self.ports.insert(key, port);
    }

    /// Removes one service port; returns it if it was there.
    pub fn remove(&mut self, key: &ServicePortKey) -> Option<ServicePort> {
        self.ports.remove(key)
    }

    /// How many service ports there are.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

fn redirected_by_dns(dns: &DnsRedirect, port: &ServicePort) -> bool {
    port.cluster_ip == dns.vip
        && port.port == 53
        && matches!(port.protocol, Protocol::Udp | Protocol::Tcp)
}

/// The proxied ports of one service with its ready endpoints. Empty for
/// services that get no rules: headless, ExternalName, no or invalid
/// cluster IP.
pub fn service_ports(svc: &Service, eps: Option<&Endpoints>) -> Vec<(ServicePortKey, ServicePort)> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let with_node_ports = match ty {
        "ClusterIP" => false,
        "NodePort" | "LoadBalancer" => true,
        _ => return Vec::new(), // ExternalName, or unknown: nothing to proxy
    };
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return Vec::new(),
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => {
                warn!(
                    namespace = ns,
                    service = name,
                    cluster_ip = ip,
                    "cluster IP is not an IPv4 address; skipping"
                );
                return Vec::new();
            }
        },
    };
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            .min(MAX_AFFINITY_TIMEOUT)
    });
    let mut out = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let port_name = sp.name.as_deref().unwrap_or_default();
        let (Some(protocol), Some(port)) =
            (Protocol::parse(sp.protocol.as_deref()), valid_port(sp.port))
        else {
            warn!(
                namespace = ns,
                service = name,
                port = port_name,
                "unsupported protocol or port number; skipping the port"
            );
            continue;
        };
        let node_port = if with_node_ports {
            sp.node_port.and_then(valid_port)
        } else {
            None
        };
        out.push((
            ServicePortKey::new(ns, name, port_name),
            ServicePort {
                cluster_ip,
                protocol,
                port,
                node_port,
                affinity_timeout,
                endpoints: ready_endpoints(eps, port_name, protocol),
            },
        ));
    }
    out
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// The ready addresses of `eps` for the service port named `port_name`,
/// sorted and deduplicated (so that equal endpoint sets compare equal).
fn ready_endpoints(eps: Option<&Endpoints>, port_name: &str, protocol: Protocol) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for subset in eps.and_then(|e| e.subsets.as_ref()).into_iter().flatten() {
        let Some(port) = subset.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = valid_port(port.port) else {
            continue;
        };
        for addr in subset.addresses.iter().flatten() {
            match addr.ip.parse::<Ipv4Addr>() {
                Ok(ip) => out.push(Endpoint { ip, port }),
                Err(_) => warn!(ip = %addr.ip, "endpoint address is not IPv4; skipping"),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: serde_json::Value) -> Service {
        serde_json::from_value(json).expect("test service")
    }

    fn eps(json: serde_json::Value) -> Endpoints {
        serde_json::from_value(json).expect("test endpoints")
    }

    #[test]
    fn ports_get_their_ready_endpoints_by_port_name() {
        let s = svc(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80, "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]}
        }));
        let e = eps(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "web"},
            "subsets": [{
                "addresses": [{"ip": "10.244.0.3"}, {"ip": "10.244.0.2"}],
                "notReadyAddresses": [{"ip": "10.244.0.9"}],
                "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            }]
        }));
        let m = Model::build([&s], [&e], None);
        let http = m
            .get(&ServicePortKey::new("demo", "web", "http"))
            .expect("http port");
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.endpoints,
            vec![
                Endpoint {
                    ip: Ipv4Addr::new(10, 244, 0, 2),
                    port: 8080
                },
                Endpoint {
                    ip: Ipv4Addr::new(10, 244, 0, 3),
                    port: 8080
                },
            ]
        );
        let dns = m
            .get(&ServicePortKey::new("demo", "web", "dns"))
            .expect("dns port");
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.endpoints[0].port, 5353);
    }

    #[test]
    fn headless_external_name_and_unallocated_services_get_nothing() {
        let headless = svc(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        let external = svc(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "x"},
            "spec": {"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}
        }));
        let pending = svc(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "p"},
            "spec": {"ports": [{"port": 80}]}
        }));
        assert!(Model::build([&headless, &external, &pending], [], None).is_empty());
    }

    #[test]
    fn clusterip_services_have_no_node_port_and_affinity_defaults() {
        let s = svc(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "s"},
            "spec": {"clusterIP": "10.96.0.11", "sessionAffinity": "ClientIP",
                     "ports": [{"port": 80, "nodePort": 30001}]}
        }));
        let m = Model::build([&s], [], None);
        let p = m.get(&ServicePortKey::new("demo", "s", "")).expect("port");
        assert_eq!(p.node_port, None);
        assert_eq!(p.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(p.endpoints.is_empty());
    }

    #[test]
    fn conflicts_and_dns_owned_ports_are_left_out() {
        let a = svc(serde_json::json!({
            "metadata": {"namespace": "a", "name": "a"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
        }));
        let b = svc(serde_json::json!({
            "metadata": {"namespace": "b", "name": "b"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
        }));
        let dns = svc(serde_json::json!({
            "metadata": {"namespace": "kube-system", "name": "dns"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "metrics", "port": 9153},
            ]}
        }));
        let redirect = DnsRedirect {
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 5353,
        };
        let m = Model::build([&a, &b, &dns], [], Some(&redirect));
        let keys: Vec<String> = m.ports().keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, vec!["a/a", "kube-system/dns:metrics"]);
    }
}
