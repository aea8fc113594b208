//! How a pod finds Services: its `resolv.conf` (CRI's DNSConfig, from the
//! pod's `dnsPolicy` and `dnsConfig`) and the service environment
//! variables the kubelet injects (`WEB_SERVICE_HOST`, `WEB_PORT`, …).
//! Pure functions of the pod, the node's cluster DNS settings and the
//! Services that exist, so both are unit-tested exactly.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::cri::proto::{DnsConfig, KeyValue};

/// The cluster DNS a node hands its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The nameserver pods use (the cluster DNS Service address).
    pub nameserver: Ipv4Addr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
}

/// The most search domains and options a resolver honours in total, as
/// the kubelet limits them (glibc ≥ 2.26: 32 domains).
const MAX_SEARCHES: usize = 32;

/// The DNS config of a pod's sandbox; `None` lets the runtime copy the
/// node's own `/etc/resolv.conf` (policy `Default`, or no cluster DNS).
pub fn dns_config(pod: &Pod, cluster: Option<&ClusterDns>) -> Option<DnsConfig> {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut config = match (policy, cluster) {
        ("None", _) => DnsConfig::default(),
        ("ClusterFirst" | "ClusterFirstWithHostNet", Some(dns)) => DnsConfig {
            servers: vec![dns.nameserver.to_string()],
            searches: vec![
                format!("{namespace}.svc.{}", dns.domain),
                format!("svc.{}", dns.domain),
                dns.domain.clone(),
            ],
            options: vec!["ndots:5".into()],
        },
        _ => return None,
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        config
            .servers
            .extend(extra.nameservers.iter().flatten().cloned());
        for search in extra.searches.iter().flatten() {
            if !config.searches.contains(search) {
                config.searches.push(search.clone());
            }
        }
        for option in extra.options.iter().flatten() {
            let rendered = match &option.value {
                Some(v) => format!("{}:{v}", option.name.as_deref().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = option.name.as_deref().unwrap_or_default();
            // A pod's option replaces the cluster's option of that name.
            config.options.retain(|o| o.split(':').next() != Some(name));
            config.options.push(rendered);
        }
    }
    config.searches.truncate(MAX_SEARCHES);
    Some(config)
}

/// The service environment variables of a pod (unless its
/// `enableServiceLinks` is false): for every Service of the pod's
/// namespace that has a ClusterIP when the container starts, as the
/// kubelet writes them, sorted by Service name. The container's own `env`
/// comes after them and wins.
pub fn service_env(pod: &Pod, services: &[Arc<Service>]) -> Vec<KeyValue> {
    let enabled = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    if !enabled {
        return Vec::new();
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut selected: Vec<&Service> = services
        .iter()
        .map(Arc::as_ref)
        .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.cluster_ip.as_deref())
                .is_some_and(|ip| ip.parse::<Ipv4Addr>().is_ok())
        })
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Vec::new();
    for svc in selected {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let mut put = |key: String, value: String| out.push(KeyValue { key, value });
        put(format!("{prefix}_SERVICE_HOST"), ip.to_string());
        let ports = spec.ports.as_deref().unwrap_or_default();
        if let Some(first) = ports.first() {
            put(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        }
        for port in ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                put(
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        port_name.to_ascii_uppercase().replace('-', "_")
                    ),
                    port.port.to_string(),
                );
            }
        }
        // Docker-links-style variables.
        if let Some(first) = ports.first() {
            let protocol = first.protocol.as_deref().unwrap_or("TCP");
            put(
                format!("{prefix}_PORT"),
                format!("{}://{ip}:{}", protocol.to_ascii_lowercase(), first.port),
            );
        }
        for port in ports {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let base = format!("{prefix}_PORT_{}_{protocol}", port.port);
            put(
                base.clone(),
                format!("{}://{ip}:{}", protocol.to_ascii_lowercase(), port.port),
            );
            put(format!("{base}_PROTO"), protocol.to_ascii_lowercase());
            put(format!("{base}_PORT"), port.port.to_string());
            put(format!("{base}_ADDR"), ip.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "demo"}, "spec": spec}),
        )
        .expect("pod")
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            nameserver: Ipv4Addr::new(10, 96, 0, 10),
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn cluster_first_points_at_cluster_dns_with_kubernetes_search_path() {
        let p = pod(json!({"containers": []}));
        let c = dns_config(&p, Some(&cluster())).expect("config");
        assert_eq!(c.servers, vec!["10.96.0.10"]);
        assert_eq!(
            c.searches,
            vec![
                "demo.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(c.options, vec!["ndots:5"]);
        // Without cluster DNS, or with policy Default: the node's own.
        assert_eq!(dns_config(&p, None), None);
        let p = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(dns_config(&p, Some(&cluster())), None);
    }

    #[test]
    fn dns_config_of_the_pod_is_merged_and_policy_none_uses_only_it() {
        let p = pod(json!({"containers": [], "dnsConfig": {
            "nameservers": ["192.0.2.53"], "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let c = dns_config(&p, Some(&cluster())).expect("config");
        assert_eq!(c.servers, vec!["10.96.0.10", "192.0.2.53"]);
        assert_eq!(c.searches.last().map(String::as_str), Some("corp.example"));
        assert_eq!(c.options, vec!["ndots:2", "edns0"]);
        let p = pod(json!({"containers": [], "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["192.0.2.53"]}}));
        let c = dns_config(&p, Some(&cluster())).expect("config");
        assert_eq!(c.servers, vec!["192.0.2.53"]);
        assert!(c.searches.is_empty());
    }

    fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": ports}}))
            .expect("service"),
        )
    }

    #[test]
    fn service_variables_follow_the_kubelet() {
        let services = vec![
            service(
                "demo",
                "web-api",
                "10.96.3.4",
                json!([
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
            ),
            service("demo", "db", "None", json!([])),
            service(
                "other",
                "elsewhere",
                "10.96.9.9",
                json!([{"port": 1, "protocol": "TCP"}]),
            ),
        ];
        let env: Vec<(String, String)> = service_env(&pod(json!({"containers": []})), &services)
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let expected: Vec<(String, String)> = [
            ("WEB_API_SERVICE_HOST", "10.96.3.4"),
            ("WEB_API_SERVICE_PORT", "80"),
            ("WEB_API_SERVICE_PORT_HTTP", "80"),
            ("WEB_API_SERVICE_PORT_DNS_UDP", "53"),
            ("WEB_API_PORT", "tcp://10.96.3.4:80"),
            ("WEB_API_PORT_80_TCP", "tcp://10.96.3.4:80"),
            ("WEB_API_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_API_PORT_80_TCP_PORT", "80"),
            ("WEB_API_PORT_80_TCP_ADDR", "10.96.3.4"),
            ("WEB_API_PORT_53_UDP", "udp://10.96.3.4:53"),
            ("WEB_API_PORT_53_UDP_PROTO", "udp"),
            ("WEB_API_PORT_53_UDP_PORT", "53"),
            ("WEB_API_PORT_53_UDP_ADDR", "10.96.3.4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
        let off = pod(json!({"containers": [], "enableServiceLinks": false}));
        assert!(service_env(&off, &services).is_empty());
    }
}
