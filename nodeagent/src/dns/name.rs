//! Query names, parsed into what they ask for: one of the shapes of the
//! Kubernetes DNS specification under the cluster domain, a reverse
//! (`in-addr.arpa`) name, or a name of the outside world. Matching is
//! case-insensitive; labels come back lower-cased.

use std::net::Ipv4Addr;

use hickory_server::proto::rr::Name;

/// A name under the cluster domain, by shape. Whether the object it names
/// exists is decided later, against the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClusterName {
    /// `<domain>` itself.
    Apex,
    /// `dns-version.<domain>`, the specification's version record.
    DnsVersion,
    /// `svc.<domain>`.
    ServicesRoot,
    /// `<ns>.svc.<domain>`.
    ServiceNamespace(String),
    /// `<svc>.<ns>.svc.<domain>`.
    Service { namespace: String, service: String },
    /// `<endpoint>.<svc>.<ns>.svc.<domain>`, the endpoint being a hostname
    /// or a dashed IP.
    Endpoint {
        namespace: String,
        service: String,
        endpoint: String,
    },
    /// `_<port>._<proto>.<svc>.<ns>.svc.<domain>` (SRV).
    Port {
        namespace: String,
        service: String,
        port: String,
        protocol: String,
    },
    /// `pod.<domain>`, or `<ns>.pod.<domain>`.
    PodsParent,
    /// `a-b-c-d.<ns>.pod.<domain>`.
    Pod { ip: Ipv4Addr },
    /// Under the cluster domain, but of no shape that can exist.
    Invalid,
}

/// What a query name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryName {
    /// A name under the cluster domain.
    Cluster(ClusterName),
    /// `d.c.b.a.in-addr.arpa`: the PTR of an IPv4 address.
    Reverse(Ipv4Addr),
    /// Anything else: forwarded upstream.
    Other,
}

/// Parses `name` against the cluster domain, given as its lower-case
/// labels (`["cluster", "local"]`).
pub(crate) fn classify(name: &Name, domain: &[String]) -> QueryName {
    let labels: Vec<&[u8]> = name.iter().collect();
    if labels.len() >= domain.len()
        && labels[labels.len() - domain.len()..]
            .iter()
            .zip(domain)
            .all(|(label, zone)| label.eq_ignore_ascii_case(zone.as_bytes()))
    {
        let prefix = &labels[..labels.len() - domain.len()];
        let mut owned = Vec::with_capacity(prefix.len());
        for label in prefix {
            match std::str::from_utf8(label) {
                Ok(text) => owned.push(text.to_ascii_lowercase()),
                Err(_) => return QueryName::Cluster(ClusterName::Invalid),
            }
        }
        return QueryName::Cluster(cluster_name(owned));
    }
    match reverse_ipv4(&labels) {
        Some(ip) => QueryName::Reverse(ip),
        None => QueryName::Other,
    }
}

/// The shape of the labels in front of the cluster domain.
fn cluster_name(mut labels: Vec<String>) -> ClusterName {
    let Some(kind) = labels.pop() else {
        return ClusterName::Apex;
    };
    match kind.as_str() {
        "svc" => service_name(labels),
        "pod" => pod_name(labels),
        "dns-version" if labels.is_empty() => ClusterName::DnsVersion,
        _ => ClusterName::Invalid,
    }
}

/// `labels` is what stands before `svc.<domain>`, left to right.
fn service_name(labels: Vec<String>) -> ClusterName {
    let mut labels = labels.into_iter();
    let next5 = (
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
    );
    match next5 {
        (None, ..) => ClusterName::ServicesRoot,
        (Some(namespace), None, ..) => ClusterName::ServiceNamespace(namespace),
        (Some(service), Some(namespace), None, ..) => ClusterName::Service { namespace, service },
        (Some(endpoint), Some(service), Some(namespace), None, _) => ClusterName::Endpoint {
            namespace,
            service,
            endpoint,
        },
        (Some(port), Some(protocol), Some(service), Some(namespace), None) => {
            match (port.strip_prefix('_'), protocol.strip_prefix('_')) {
                (Some(port), Some(protocol)) if !port.is_empty() && !protocol.is_empty() => {
                    ClusterName::Port {
                        namespace,
                        service,
                        port: port.to_string(),
                        protocol: protocol.to_string(),
                    }
                }
                _ => ClusterName::Invalid,
            }
        }
        _ => ClusterName::Invalid,
    }
}

/// `labels` is what stands before `pod.<domain>`, left to right.
fn pod_name(labels: Vec<String>) -> ClusterName {
    match labels.as_slice() {
        [] | [_] => ClusterName::PodsParent,
        [dashed, _namespace] => match dashed_ipv4(dashed) {
            Some(ip) => ClusterName::Pod { ip },
            None => ClusterName::Invalid,
        },
        _ => ClusterName::Invalid,
    }
}

/// `10-1-2-3` → 10.1.2.3, the pod and endpoint label form of an address.
pub(crate) fn dashed_ipv4(label: &str) -> Option<Ipv4Addr> {
    if label.contains('.') {
        return None;
    }
    label.replace('-', ".").parse().ok()
}

/// `3.2.1.10.in-addr.arpa` → 10.1.2.3; anything else (a partial reverse
/// zone name, IPv6) → None.
fn reverse_ipv4(labels: &[&[u8]]) -> Option<Ipv4Addr> {
    let [d, c, b, a, in_addr, arpa] = labels else {
        return None;
    };
    if !in_addr.eq_ignore_ascii_case(b"in-addr") || !arpa.eq_ignore_ascii_case(b"arpa") {
        return None;
    }
    let octet = |label: &[u8]| -> Option<u8> {
        let text = std::str::from_utf8(label).ok()?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Vec<String> {
        vec!["cluster".to_string(), "local".to_string()]
    }

    fn parse(name: &str) -> QueryName {
        let name = Name::from_ascii(name).expect("test names are valid");
        classify(&name, &domain())
    }

    fn cluster(name: &str) -> ClusterName {
        match parse(name) {
            QueryName::Cluster(c) => c,
            other => panic!("{name} is not a cluster name: {other:?}"),
        }
    }

    #[test]
    fn service_names() {
        assert_eq!(
            cluster("web.demo.svc.cluster.local."),
            ClusterName::Service {
                namespace: "demo".into(),
                service: "web".into()
            }
        );
        assert_eq!(
            cluster("WEB.Demo.SVC.Cluster.LOCAL"),
            ClusterName::Service {
                namespace: "demo".into(),
                service: "web".into()
            }
        );
        assert_eq!(
            cluster("web-0.db.demo.svc.cluster.local."),
            ClusterName::Endpoint {
                namespace: "demo".into(),
                service: "db".into(),
                endpoint: "web-0".into()
            }
        );
        assert_eq!(
            cluster("_http._TCP.web.demo.svc.cluster.local."),
            ClusterName::Port {
                namespace: "demo".into(),
                service: "web".into(),
                port: "http".into(),
                protocol: "tcp".into()
            }
        );
        assert_eq!(
            cluster("demo.svc.cluster.local."),
            ClusterName::ServiceNamespace("demo".into())
        );
        assert_eq!(cluster("svc.cluster.local."), ClusterName::ServicesRoot);
        assert_eq!(cluster("cluster.local."), ClusterName::Apex);
        assert_eq!(
            cluster("dns-version.cluster.local."),
            ClusterName::DnsVersion
        );
    }

    #[test]
    fn search_path_expansions_are_invalid_or_missing() {
        // `example.com` tried with the search path `demo.svc.cluster.local`:
        // an endpoint `example` of a service `com`, which will not exist.
        assert_eq!(
            cluster("example.com.demo.svc.cluster.local."),
            ClusterName::Endpoint {
                namespace: "demo".into(),
                service: "com".into(),
                endpoint: "example".into()
            }
        );
        assert_eq!(
            cluster("www.example.com.demo.svc.cluster.local."),
            ClusterName::Invalid
        );
        assert_eq!(cluster("example.com.cluster.local."), ClusterName::Invalid);
        assert_eq!(
            cluster("http.tcp.web.demo.svc.cluster.local."),
            ClusterName::Invalid
        );
        assert_eq!(
            cluster("_._tcp.web.demo.svc.cluster.local."),
            ClusterName::Invalid
        );
    }

    #[test]
    fn pod_names() {
        assert_eq!(
            cluster("10-244-1-7.demo.pod.cluster.local."),
            ClusterName::Pod {
                ip: Ipv4Addr::new(10, 244, 1, 7)
            }
        );
        assert_eq!(cluster("demo.pod.cluster.local."), ClusterName::PodsParent);
        assert_eq!(
            cluster("10-244-1.demo.pod.cluster.local."),
            ClusterName::Invalid
        );
        assert_eq!(
            cluster("10-244-1-700.demo.pod.cluster.local."),
            ClusterName::Invalid
        );
        assert_eq!(cluster("a.b.demo.pod.cluster.local."), ClusterName::Invalid);
    }

    #[test]
    fn reverse_and_outside_names() {
        assert_eq!(
            parse("10.0.96.10.in-addr.arpa."),
            QueryName::Reverse(Ipv4Addr::new(10, 96, 0, 10))
        );
        assert_eq!(parse("0.96.10.in-addr.arpa."), QueryName::Other);
        assert_eq!(parse("x.0.96.10.in-addr.arpa."), QueryName::Other);
        assert_eq!(parse("example.com."), QueryName::Other);
        assert_eq!(parse("local."), QueryName::Other);
        assert_eq!(parse("cluster.local.example."), QueryName::Other);
        assert_eq!(parse("notcluster.local."), QueryName::Other);
    }

    #[test]
    fn dashed_addresses() {
        assert_eq!(dashed_ipv4("1-2-3-4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(dashed_ipv4("1.2.3.4"), None);
        assert_eq!(dashed_ipv4("1-2-3-4-5"), None);
        assert_eq!(dashed_ipv4("web-0"), None);
    }
}
