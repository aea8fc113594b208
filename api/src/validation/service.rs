//! Kubernetes' validation of Services, with its messages. What needs the
//! cluster's configuration (the service CIDR, the node port range) or the
//! other Services (addresses and ports already taken) is checked when the
//! commit is applied, where both are known.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    is_dns1123_label, is_dns1123_subdomain, is_port_name, labels, object_meta, FieldErrors,
    Validate, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG, PORT_NAME_MSG,
};
use crate::field_path::FieldPath;

const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

/// The Service types Kubernetes knows.
pub const SERVICE_TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

/// Whether `s` is an RFC 1035 label: Service names must be, so that they
/// can be DNS names and environment variable prefixes.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Validate for Service {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, true, errs);
        if let Some(name) = self.metadata.name.as_deref() {
            if !name.is_empty() && is_dns1123_label(name) && !is_dns1035_label(name) {
                errs.invalid(
                    FieldPath::parse("metadata.name"),
                    format!("\"{name}\""),
                    DNS1035_LABEL_MSG,
                );
            }
        }
        let p = FieldPath::root().key("spec");
        let Some(spec) = &self.spec else {
            errs.required(p);
            return;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !SERVICE_TYPES.contains(&ty) {
            errs.unsupported(p.key("type"), ty, &SERVICE_TYPES);
            return;
        }
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
        let headless = cluster_ip == "None";
        if ty == "ExternalName" {
            match spec.external_name.as_deref() {
                None | Some("") => errs.required(p.key("externalName")),
                Some(n) if !is_dns1123_subdomain(n.trim_end_matches('.')) => errs.invalid(
                    p.key("externalName"),
                    format!("\"{n}\""),
                    DNS1123_SUBDOMAIN_MSG,
                ),
                _ => {}
            }
            if !cluster_ip.is_empty() {
                errs.add(
                    p.key("clusterIP"),
                    "Forbidden: may not be set for ExternalName services",
                );
            }
        } else {
            cluster_ips(spec, ty, &p, errs);
            if spec.ports.as_ref().is_none_or(Vec::is_empty) && !headless {
                errs.required(p.key("ports"));
            }
        }
        ports(spec.ports.as_deref().unwrap_or_default(), ty, &p, errs);
        labels(spec.selector.as_ref(), &p.key("selector"), errs);
        match spec.session_affinity.as_deref() {
            None | Some("None") => {}
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                if let Some(t) = timeout {
                    if !(1..=86400).contains(&t) {
                        errs.invalid(
                            p.key("sessionAffinityConfig")
                                .key("clientIP")
                                .key("timeoutSeconds"),
                            t,
                            "must be greater than 0 and less than 86400",
                        );
                    }
                }
            }
            Some(other) => errs.unsupported(p.key("sessionAffinity"), other, &["ClientIP", "None"]),
        }
        for (field, value) in [
            ("externalTrafficPolicy", &spec.external_traffic_policy),
            ("internalTrafficPolicy", &spec.internal_traffic_policy),
        ] {
            if let Some(v) = value.as_deref() {
                if !["Cluster", "Local"].contains(&v) {
                    errs.unsupported(p.key(field), v, &["Cluster", "Local"]);
                }
            }
        }
        if spec.external_traffic_policy.is_some() && !["NodePort", "LoadBalancer"].contains(&ty) {
            errs.add(
                p.key("externalTrafficPolicy"),
                "Invalid value: may only be set for services with type NodePort or LoadBalancer",
            );
        }
    }
}

/// `clusterIP` and `clusterIPs`: `None`, empty (allocate) or an IPv4
/// address, the two fields agreeing.
fn cluster_ips(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    ty: &str,
    p: &FieldPath,
    errs: &mut FieldErrors,
) {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if let Some(first) = ips.first() {
        if !cluster_ip.is_empty() && first != cluster_ip {
            errs.invalid(
                p.key("clusterIPs").index(0),
                format!("\"{first}\""),
                "must match `clusterIP`",
            );
        }
    }
    if ips.len() > 1 {
        errs.invalid(
            p.key("clusterIPs"),
            format!("{ips:?}"),
            "commitd serves single-stack IPv4: at most one address may be given",
        );
    }
    let value = if cluster_ip.is_empty() {
        ips.first().map(String::as_str).unwrap_or_default()
    } else {
        cluster_ip
    };
    let field = if cluster_ip.is_empty() {
        p.key("clusterIPs").index(0)
    } else {
        p.key("clusterIP")
    };
    match value {
        "" => {}
        "None" if ty == "NodePort" || ty == "LoadBalancer" => errs.invalid(
            field,
            "\"None\"",
            &format!("may not be set to 'None' for {ty} services"),
        ),
        "None" => {}
        ip if ip.parse::<Ipv4Addr>().is_err() => {
            errs.invalid(field, format!("\"{ip}\""), "must be a valid IPv4 address");
        }
        _ => {}
    }
}

fn ports(ports: &[ServicePort], ty: &str, p: &FieldPath, errs: &mut FieldErrors) {
    let mut names = HashSet::new();
    let mut port_protocols = HashSet::new();
    let mut node_ports = HashSet::new();
    let node_ports_allowed = ty == "NodePort" || ty == "LoadBalancer";
    for (i, port) in ports.iter().enumerate() {
        let pp = p.key("ports").index(i);
        match port.name.as_deref() {
            None | Some("") if ports.len() > 1 => errs.required(pp.key("name")),
            None | Some("") => {}
            Some(n) if !is_dns1123_label(n) => {
                errs.invalid(pp.key("name"), format!("\"{n}\""), DNS1123_LABEL_MSG)
            }
            Some(n) => {
                if !names.insert(n) {
                    errs.add(pp.key("name"), format!("Duplicate value: \"{n}\""));
                }
            }
        }
        if !(1..=65535).contains(&port.port) {
            errs.invalid(pp.key("port"), port.port, PORT_RANGE_MSG);
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            errs.unsupported(pp.key("protocol"), protocol, &["SCTP", "TCP", "UDP"]);
        } else if !port_protocols.insert((port.port, protocol)) {
            errs.add(
                pp.clone(),
                format!("Duplicate value: \"{}/{protocol}\"", port.port),
            );
        }
        match &port.target_port {
            Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => {
                errs.invalid(pp.key("targetPort"), n, PORT_RANGE_MSG)
            }
            Some(IntOrString::String(n)) if !is_port_name(n) => {
                errs.invalid(pp.key("targetPort"), format!("\"{n}\""), PORT_NAME_MSG)
            }
            _ => {}
        }
        if let Some(np) = port.node_port.filter(|np| *np != 0) {
            if !node_ports_allowed {
                errs.add(
                    pp.key("nodePort"),
                    format!("Forbidden: may not be used when `type` is '{ty}'"),
                );
            } else if !(1..=65535).contains(&np) {
                errs.invalid(pp.key("nodePort"), np, PORT_RANGE_MSG);
            } else if !node_ports.insert((np, protocol)) {
                errs.add(pp.key("nodePort"), format!("Duplicate value: {np}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: serde_json::Value) -> Vec<String> {
        let svc: Service = serde_json::from_value(v).expect("decodes");
        let mut errs = FieldErrors::default();
        svc.validate(&mut errs);
        errs.0
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect()
    }

    #[test]
    fn a_plain_service_is_valid() {
        assert_eq!(
            errors(
                json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "metrics", "port": 9090, "targetPort": 9090}]}})
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(
                json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "selector": {"app": "db"}}})
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn ports_errors_read_like_kubernetes() {
        let got = errors(json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "http", "port": 80},
            {"name": "http", "port": 80, "targetPort": 0},
            {"port": 70000, "protocol": "ICMP", "targetPort": "Bad_Name"},
            {"name": "x", "port": 81, "nodePort": 30001}]}}));
        assert_eq!(
            got,
            vec![
                "spec.ports[1].name: Duplicate value: \"http\"",
                "spec.ports[1]: Duplicate value: \"80/TCP\"",
                "spec.ports[1].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[2].name: Required value",
                "spec.ports[2].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ports[2].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                &format!("spec.ports[2].targetPort: Invalid value: \"Bad_Name\": {PORT_NAME_MSG}"),
                "spec.ports[3].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            ]
        );
    }

    #[test]
    fn addresses_types_and_names() {
        let got = errors(
            json!({"metadata": {"name": "1web"}, "spec": {"type": "NodePort",
            "clusterIP": "None", "ports": [{"port": 80, "nodePort": 30080}]}}),
        );
        assert_eq!(
            got,
            vec![
                format!("metadata.name: Invalid value: \"1web\": {DNS1035_LABEL_MSG}"),
                "spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for NodePort services".into(),
            ]
        );
        let got =
            errors(json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.300"}}));
        assert_eq!(
            got,
            vec![
                "spec.clusterIP: Invalid value: \"10.96.0.300\": must be a valid IPv4 address",
                "spec.ports: Required value",
            ]
        );
        let got = errors(json!({"metadata": {"name": "web"}, "spec": {"type": "Ingress"}}));
        assert_eq!(got, vec!["spec.type: Unsupported value: \"Ingress\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""]);
        let got = errors(json!({"metadata": {"name": "web"}, "spec": {"type": "ExternalName"}}));
        assert_eq!(got, vec!["spec.externalName: Required value"]);
        let got = errors(
            json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}],
            "sessionAffinity": "Sticky"}}),
        );
        assert_eq!(got, vec!["spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\""]);
    }
}
