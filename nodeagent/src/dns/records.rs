//! The records of the cluster domain, computed per query from the
//! directory (nothing is precomputed, so answers are as fresh as the
//! caches). Behaviour follows CoreDNS's kubernetes plugin: TTL 5 s; a
//! missing name is NXDOMAIN, an existing name without records of the asked
//! type is NODATA; a headless service without ready endpoints is NXDOMAIN.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use commitd_api::k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointSubset, Endpoints, Service,
};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use tracing::debug;

use super::directory::ServiceDirectory;
use super::name::ClusterName;

/// TTL of every cluster record (CoreDNS's default): short, because
/// endpoints come and go.
pub(crate) const TTL: u32 = 5;
/// The version of the Kubernetes DNS specification these records follow,
/// published at `dns-version.<domain>`.
const SPEC_VERSION: &str = "1.1.0";

/// The cluster domain and its fixed records.
pub(crate) struct Zone {
    name: Name,
    labels: Vec<String>,
    soa: Record,
    ns: Record,
}

impl Zone {
    /// The zone for a cluster domain such as `cluster.local` (a trailing
    /// dot and upper case are accepted).
    pub(crate) fn new(domain: &str) -> anyhow::Result<Zone> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        anyhow::ensure!(!domain.is_empty(), "the cluster domain is empty");
        let name = Name::from_ascii(format!("{domain}."))?;
        let labels = name
            .iter()
            .map(|label| String::from_utf8_lossy(label).into_owned())
            .collect();
        let ns_name = Name::from_ascii(format!("ns.dns.{domain}."))?;
        let hostmaster = Name::from_ascii(format!("hostmaster.{domain}."))?;
        // Any serial will do (nothing transfers the zone); the start time
        // tells a restarted server apart, as CoreDNS's does.
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| (d.as_secs() & u64::from(u32::MAX)) as u32);
        let soa = Record::from_rdata(
            name.clone(),
            TTL,
            RData::SOA(SOA::new(
                ns_name.clone(),
                hostmaster,
                serial,
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        let ns = Record::from_rdata(name.clone(), TTL, RData::NS(NS(ns_name)));
        Ok(Zone {
            name,
            labels,
            soa,
            ns,
        })
    }

    /// The zone apex, lower case, fully qualified.
    pub(crate) fn domain(&self) -> &Name {
        &self.name
    }

    /// The apex's labels, lower case.
    pub(crate) fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The SOA that goes into the authority section of negative answers.
    pub(crate) fn soa(&self) -> &Record {
        &self.soa
    }

    /// `<prefix>.<domain>.` as a name; None if it is not a valid one (a
    /// label too long, say), which leaves that record out.
    fn name(&self, prefix: &str) -> Option<Name> {
        match Name::from_ascii(format!("{prefix}.{}", self.name)) {
            Ok(name) => Some(name),
            Err(error) => {
                debug!(%prefix, %error, "skipping record with an invalid name");
                None
            }
        }
    }
}

/// The answer to one question about the cluster domain.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// NOERROR with these records.
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// An ExternalName service: this CNAME, whose target the caller may
    /// resolve further.
    Alias { cname: Box<Record>, target: Name },
    /// The name exists, but has no records of the asked type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

impl Outcome {
    fn answers(answers: Vec<Record>) -> Outcome {
        Outcome::Records {
            answers,
            additionals: Vec::new(),
        }
    }

    /// Records, or NODATA when the name exists but none fit the type.
    fn or_no_data(answers: Vec<Record>, additionals: Vec<Record>) -> Outcome {
        if answers.is_empty() {
            Outcome::NoData
        } else {
            Outcome::Records {
                answers,
                additionals,
            }
        }
    }
}

/// What a Service resolves to.
enum ServiceKind<'a> {
    ExternalName(&'a str),
    Headless,
    ClusterIp(Vec<IpAddr>),
}

fn service_kind(service: &Service) -> ServiceKind<'_> {
    let Some(spec) = service.spec.as_ref() else {
        return ServiceKind::ClusterIp(Vec::new());
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ServiceKind::ExternalName(spec.external_name.as_deref().unwrap_or(""));
    }
    let ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if ips.first() == Some(&"None") {
        return ServiceKind::Headless;
    }
    ServiceKind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
}

/// The endpoint addresses DNS publishes for a service: the ready ones, and
/// the not-ready ones too when the service asks for it (StatefulSet peer
/// discovery does).
fn published_addresses<'a>(
    service: &Service,
    endpoints: &'a Endpoints,
) -> impl Iterator<Item = (&'a EndpointSubset, &'a EndpointAddress)> + 'a {
    let not_ready = service
        .spec
        .as_ref()
        .and_then(|spec| spec.publish_not_ready_addresses)
        .unwrap_or(false);
    endpoints.subsets.iter().flatten().flat_map(move |subset| {
        let ready = subset.addresses.iter().flatten();
        let unready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .filter(move |_| not_ready);
        ready.chain(unready).map(move |address| (subset, address))
    })
}

/// The label an endpoint address is known by under its service: its
/// hostname, or its IP with dashes.
fn endpoint_label(address: &EndpointAddress) -> String {
    match address.hostname.as_deref() {
        Some(hostname) if !hostname.is_empty() => hostname.to_ascii_lowercase(),
        _ => address.ip.replace(['.', ':'], "-"),
    }
}

fn address_record(owner: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, data)
}

/// Whether a query of `qtype` wants the address record of `ip`.
fn wants_address(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// Address records of `owner` for the addresses a query of `qtype` wants.
fn address_records(owner: &Name, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    ips.iter()
        .filter(|ip| wants_address(qtype, **ip))
        .map(|ip| address_record(owner, *ip))
        .collect()
}

fn push_unique(ips: &mut Vec<IpAddr>, ip: IpAddr) {
    if !ips.contains(&ip) {
        ips.push(ip);
    }
}

/// The SRV weight of each of `count` equal records (CoreDNS divides 100
/// among the records of one priority).
fn srv_weight(count: usize) -> u16 {
    u16::try_from(100 / count.max(1)).unwrap_or(0)
}

fn srv_record(owner: &Name, weight: u16, port: i32, target: Name) -> Option<Record> {
    let port = u16::try_from(port).ok()?;
    Some(Record::from_rdata(
        owner.clone(),
        TTL,
        RData::SRV(SRV::new(0, weight, port, target)),
    ))
}

/// Parses an ExternalName target into a fully qualified name.
fn external_target(target: &str) -> Option<Name> {
    let target = target.trim().trim_end_matches('.');
    if target.is_empty() {
        return None;
    }
    Name::from_ascii(format!("{target}.")).ok()
}

/// Whether a port named `name` with protocol `protocol` (None = TCP) is the
/// one `_<port>._<proto>` asks for.
fn port_matches(name: Option<&str>, protocol: Option<&str>, port: &str, proto: &str) -> bool {
    name.is_some_and(|name| name.eq_ignore_ascii_case(port))
        && protocol.unwrap_or("TCP").eq_ignore_ascii_case(proto)
}

fn namespace_of(
    meta: &commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Answers questions about the cluster domain from a directory.
pub(crate) struct ClusterRecords {
    zone: Zone,
    directory: Arc<dyn ServiceDirectory>,
}

impl ClusterRecords {
    pub(crate) fn new(zone: Zone, directory: Arc<dyn ServiceDirectory>) -> Self {
        ClusterRecords { zone, directory }
    }

    pub(crate) fn zone(&self) -> &Zone {
        &self.zone
    }

    /// Whether the directory has caught up with the cluster.
    pub(crate) fn is_ready(&self) -> bool {
        self.directory.is_ready()
    }

    /// Answers `qtype` for a cluster name; `owner` is the name as the
    /// client wrote it, so answers echo its case.
    pub(crate) fn lookup(&self, name: &ClusterName, owner: &Name, qtype: RecordType) -> Outcome {
        match name {
            ClusterName::Apex => match qtype {
                RecordType::SOA => Outcome::answers(vec![self.zone.soa.clone()]),
                RecordType::NS => Outcome::answers(vec![self.zone.ns.clone()]),
                RecordType::ANY => {
                    Outcome::answers(vec![self.zone.soa.clone(), self.zone.ns.clone()])
                }
                _ => Outcome::NoData,
            },
            ClusterName::DnsVersion => match qtype {
                RecordType::TXT | RecordType::ANY => Outcome::answers(vec![Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::TXT(TXT::new(vec![SPEC_VERSION.to_string()])),
                )]),
                _ => Outcome::NoData,
            },
            ClusterName::ServicesRoot | ClusterName::PodsParent => Outcome::NoData,
            ClusterName::ServiceNamespace(namespace) => {
                let known = self
                    .directory
                    .list_services()
                    .iter()
                    .any(|service| namespace_of(&service.metadata) == namespace);
                if known {
                    Outcome::NoData
                } else {
                    Outcome::NxDomain
                }
            }
            ClusterName::Service { namespace, service } => {
                self.service(namespace, service, owner, qtype)
            }
            ClusterName::Endpoint {
                namespace,
                service,
                endpoint,
            } => self.endpoint(namespace, service, endpoint, owner, qtype),
            ClusterName::Port {
                namespace,
                service,
                port,
                protocol,
            } => self.port(namespace, service, port, protocol, owner, qtype),
            ClusterName::Pod { ip } => Outcome::or_no_data(
                address_records(owner, &[IpAddr::V4(*ip)], qtype),
                Vec::new(),
            ),
            ClusterName::Invalid => Outcome::NxDomain,
        }
    }

    fn service(&self, namespace: &str, name: &str, owner: &Name, qtype: RecordType) -> Outcome {
        let Some(service) = self.directory.service(namespace, name) else {
            return Outcome::NxDomain;
        };
        match service_kind(&service) {
            ServiceKind::ExternalName(target) => match external_target(target) {
                Some(target) => Outcome::Alias {
                    cname: Box::new(Record::from_rdata(
                        owner.clone(),
                        TTL,
                        RData::CNAME(CNAME(target.clone())),
                    )),
                    target,
                },
                None => {
                    debug!(%namespace, %name, %target, "ExternalName service with an invalid name");
                    Outcome::NoData
                }
            },
            ServiceKind::ClusterIp(ips) => {
                Outcome::or_no_data(address_records(owner, &ips, qtype), Vec::new())
            }
            ServiceKind::Headless => {
                let mut ips = Vec::new();
                if let Some(endpoints) = self.directory.endpoints(namespace, name) {
                    for (_, address) in published_addresses(&service, &endpoints) {
                        if let Ok(ip) = address.ip.parse() {
                            push_unique(&mut ips, ip);
                        }
                    }
                }
                if ips.is_empty() {
                    return Outcome::NxDomain;
                }
                Outcome::or_no_data(address_records(owner, &ips, qtype), Vec::new())
            }
        }
    }

    fn endpoint(
        &self,
        namespace: &str,
        name: &str,
        endpoint: &str,
        owner: &Name,
        qtype: RecordType,
    ) -> Outcome {
        let Some(service) = self.directory.service(namespace, name) else {
            return Outcome::NxDomain;
        };
        if matches!(service_kind(&service), ServiceKind::ExternalName(_)) {
            return Outcome::NxDomain;
        }
        let mut ips = Vec::new();
        if let Some(endpoints) = self.directory.endpoints(namespace, name) {
            for (_, address) in published_addresses(&service, &endpoints) {
                if endpoint_label(address) == endpoint {
                    if let Ok(ip) = address.ip.parse() {
                        push_unique(&mut ips, ip);
                    }
                }
            }
        }
        if ips.is_empty() {
            return Outcome::NxDomain;
        }
        Outcome::or_no_data(address_records(owner, &ips, qtype), Vec::new())
    }

    fn port(
        &self,
        namespace: &str,
        name: &str,
        port: &str,
        protocol: &str,
        owner: &Name,
        qtype: RecordType,
    ) -> Outcome {
        let Some(service) = self.directory.service(namespace, name) else {
            return Outcome::NxDomain;
        };
        let wants_srv = matches!(qtype, RecordType::SRV | RecordType::ANY);
        // (port number, target, target's address if we know it)
        let mut found: Vec<(i32, Name, Option<IpAddr>)> = Vec::new();
        let mut additionals: Vec<Record> = Vec::new();
        let service_ports = service
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|p| port_matches(p.name.as_deref(), p.protocol.as_deref(), port, protocol));
        match service_kind(&service) {
            ServiceKind::ExternalName(target) => {
                if let Some(target) = external_target(target) {
                    found.extend(service_ports.map(|p| (p.port, target.clone(), None)));
                }
            }
            ServiceKind::ClusterIp(ips) => {
                if let Some(target) = self.zone.name(&format!("{name}.{namespace}.svc")) {
                    found.extend(service_ports.map(|p| (p.port, target.clone(), None)));
                    additionals.extend(ips.iter().map(|ip| address_record(&target, *ip)));
                }
            }
            ServiceKind::Headless => {
                if let Some(endpoints) = self.directory.endpoints(namespace, name) {
                    for (subset, address) in published_addresses(&service, &endpoints) {
                        let label = endpoint_label(address);
                        let Some(target) =
                            self.zone.name(&format!("{label}.{name}.{namespace}.svc"))
                        else {
                            continue;
                        };
                        let ip = address.ip.parse().ok();
                        for p in subset.ports.iter().flatten().filter(|p| {
                            port_matches(p.name.as_deref(), p.protocol.as_deref(), port, protocol)
                        }) {
                            found.push((p.port, target.clone(), ip));
                        }
                    }
                }
            }
        }
        if found.is_empty() {
            return Outcome::NxDomain;
        }
        if !wants_srv {
            return Outcome::NoData;
        }
        let weight = srv_weight(found.len());
        let mut answers = Vec::with_capacity(found.len());
        for (port, target, ip) in found {
            if let Some(ip) = ip {
                let extra = address_record(&target, ip);
                if !additionals.contains(&extra) {
                    additionals.push(extra);
                }
            }
            answers.extend(srv_record(owner, weight, port, target));
        }
        Outcome::or_no_data(answers, additionals)
    }

    /// PTR records for an IPv4 address that is a ClusterIP or a published
    /// endpoint address; empty when the cluster does not know it (the
    /// caller forwards the question then).
    pub(crate) fn reverse(&self, ip: Ipv4Addr, owner: &Name) -> Vec<Record> {
        let ip = IpAddr::V4(ip);
        let mut targets: Vec<Name> = Vec::new();
        let mut add = |prefix: String| {
            if let Some(name) = self.zone.name(&prefix) {
                if !targets.contains(&name) {
                    targets.push(name);
                }
            }
        };
        for service in self.directory.list_services() {
            if let ServiceKind::ClusterIp(ips) = service_kind(&service) {
                if ips.contains(&ip) {
                    let namespace = namespace_of(&service.metadata);
                    let name = service.metadata.name.as_deref().unwrap_or_default();
                    add(format!("{name}.{namespace}.svc"));
                }
            }
        }
        for endpoints in self.directory.list_endpoints() {
            let namespace = namespace_of(&endpoints.metadata);
            let name = endpoints.metadata.name.as_deref().unwrap_or_default();
            let addresses = endpoints
                .subsets
                .iter()
                .flatten()
                .flat_map(|subset| subset.addresses.iter().flatten());
            for address in addresses {
                if address.ip.parse::<IpAddr>().ok() == Some(ip) {
                    add(format!(
                        "{}.{name}.{namespace}.svc",
                        endpoint_label(address)
                    ));
                }
            }
        }
        targets
            .into_iter()
            .map(|target| Record::from_rdata(owner.clone(), TTL, RData::PTR(PTR(target))))
            .collect()
    }
}
