//! The service network: where ClusterIPs and node ports come from, and how
//! a commit's Services get theirs.
//!
//! Allocation happens when a commit is applied, before the diff: a Service
//! that names no `clusterIP` keeps the address it already has in etcd, or
//! gets a free one; an explicit address is honoured if it is in range and
//! free. The allocated values are written into the manifests, so the
//! stored Service carries them as Kubernetes' would and the diff of the
//! next commit sees no change. The Services in etcd are the allocation
//! table: only the reconciler writes them, in a transaction guarded by the
//! previously applied commit, so two allocations can never race, and the
//! table survives restarts with etcd.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diagnostic::Diagnostic;
use crate::field_path::FieldPath;
use crate::kinds::Kind;
use crate::manifest::Manifest;

/// Kubernetes' default service CIDR.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// Kubernetes' default node port range.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// The addresses and ports Services are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// ClusterIPs come from here (`--service-cidr`).
    pub cidr: Ipv4Net,
    /// Node ports come from here (`--service-node-port-range`).
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            cidr: Ipv4Net::from_str(DEFAULT_SERVICE_CIDR).unwrap_or_default(),
            node_ports: DEFAULT_NODE_PORT_RANGE,
        }
    }
}

impl ServiceNetwork {
    /// The cluster DNS address: the tenth of the range, as kubeadm sets it
    /// (10.96.0.10 by default). It is never given to a Service.
    pub fn dns_ip(&self) -> Ipv4Addr {
        nth(self.cidr, 10)
    }

    /// Whether `ip` may be a Service's ClusterIP: inside the range, and
    /// neither its network or broadcast address, nor `.1` (reserved, the
    /// `kubernetes` Service's address in Kubernetes), nor the DNS address.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(&ip)
            && ip != self.cidr.network()
            && ip != self.cidr.broadcast()
            && ip != nth(self.cidr, 1)
            && ip != self.dns_ip()
    }

    fn range_message(&self) -> String {
        format!("The range of valid IPs is {}", self.cidr)
    }
}

/// Parses `--service-node-port-range` (`30000-32767`).
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected a range such as 30000-32767"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: first port: {e}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: last port: {e}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: expected 1 <= first <= last"));
    }
    Ok(lo..=hi)
}

fn nth(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(n))
}

/// Who holds an address or a port, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder(String);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Service port as the allocator tells ports apart: (name, port,
/// protocol).
type PortId = (String, i32, String);

/// What one Service manifest was given: its address and (port index,
/// node port) pairs.
#[derive(Debug, Default)]
struct Given {
    cluster_ip: Option<String>,
    node_ports: Vec<(usize, u16)>,
}

/// The addresses and node ports given so far, and to whom.
#[derive(Default)]
struct Ledger {
    ips: HashMap<Ipv4Addr, Holder>,
    node_ports: HashMap<u16, Holder>,
    /// By manifest index.
    given: HashMap<usize, Given>,
}

impl Ledger {
    fn claim_ip(&mut self, w: &Wanted, ip: Ipv4Addr) {
        self.ips.insert(ip, Holder(w.key.clone()));
        self.given.entry(w.index).or_default().cluster_ip = Some(ip.to_string());
    }

    /// Whether `np` is free, or held by the same Service (which may use
    /// one node port for TCP and UDP).
    fn node_port_free_for(&self, np: u16, w: &Wanted) -> bool {
        self.node_ports.get(&np).is_none_or(|o| o.0 == w.key)
    }

    fn claim_node_port(&mut self, w: &Wanted, port_index: usize, np: u16) {
        self.node_ports.insert(np, Holder(w.key.clone()));
        self.given
            .entry(w.index)
            .or_default()
            .node_ports
            .push((port_index, np));
    }
}

/// What a Service holds now in etcd, by its `namespace/name`.
#[derive(Debug, Default, Clone)]
struct Held {
    cluster_ip: Option<Ipv4Addr>,
    /// (port name, port, protocol) → node port.
    node_ports: Vec<(PortId, u16)>,
}

fn held_by(existing: &[Service]) -> HashMap<String, Held> {
    existing
        .iter()
        .map(|s| {
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or("default"),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let spec = s.spec.as_ref();
            let held = Held {
                cluster_ip: spec
                    .and_then(|s| s.cluster_ip.as_deref())
                    .and_then(|ip| ip.parse().ok()),
                node_ports: spec
                    .and_then(|s| s.ports.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let np = u16::try_from(p.node_port?).ok()?;
                        let id = (
                            p.name.clone().unwrap_or_default(),
                            p.port,
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        );
                        Some((id, np))
                    })
                    .collect(),
            };
            (key, held)
        })
        .collect()
}

/// One Service manifest's allocation inputs.
struct Wanted {
    index: usize,
    key: String,
    ty: String,
    cluster_ip: String,
    /// (port index, identity, explicit node port).
    ports: Vec<(usize, PortId, Option<u16>)>,
}

fn wanted(index: usize, m: &Manifest) -> Wanted {
    let spec = m.object.get("spec");
    let str_at = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let ty = str_at(spec, "type");
    let mut cluster_ip = str_at(spec, "clusterIP");
    if cluster_ip.is_empty() {
        cluster_ip = spec
            .and_then(|s| s.get("clusterIPs"))
            .and_then(|ips| ips.get(0))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
    }
    let ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| {
            let id = (
                str_at(Some(p), "name"),
                p.get("port")
                    .and_then(Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or_default(),
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
            );
            let explicit = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0)
                .and_then(|n| u16::try_from(n).ok().or(Some(0)));
            (i, id, explicit)
        })
        .collect();
    Wanted {
        index,
        key: format!("{}/{}", m.namespace.as_deref().unwrap_or("default"), m.name),
        ty,
        cluster_ip,
        ports,
    }
}

/// Whether a port of the new manifest is the one a stored Service had:
/// same name (when named) or same number, and same protocol. Renumbering
/// a named port keeps its node port.
fn same_port(held: &PortId, wanted: &PortId) -> bool {
    let (held_name, held_port, held_protocol) = held;
    let (name, port, protocol) = wanted;
    held_protocol == protocol
        && if name.is_empty() {
            held_name.is_empty() && held_port == port
        } else {
            held_name == name
        }
}

/// A deterministic starting point inside a range of `size`, so the same
/// Service tends to get the same address on every try and nothing needs
/// randomness to spread allocations.
fn start_offset(key: &str, salt: &str, size: u64) -> u64 {
    let digest = Sha256::digest(format!("{salt}/{key}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes) % size.max(1)
}

/// Gives every Service manifest of a commit its ClusterIP and node ports.
/// `existing` are the Services in etcd now. Returns the errors (an
/// address or port out of range or taken, the range exhausted), each at
/// the manifest's file, line and field; with errors the manifests must not
/// be applied (they may be partly filled in).
pub fn allocate(
    manifests: &mut [Manifest],
    existing: &[Service],
    network: &ServiceNetwork,
) -> Vec<Diagnostic> {
    let held = held_by(existing);
    let services: Vec<Wanted> = manifests
        .iter()
        .enumerate()
        .filter(|(_, m)| m.kind == Kind::Service)
        .map(|(i, m)| wanted(i, m))
        .collect();
    let mut errors = Vec::new();
    let mut ledger = Ledger::default();

    let gets_ip = |w: &Wanted| w.ty != "ExternalName" && w.cluster_ip != "None";
    let gets_node_ports = |w: &Wanted| w.ty == "NodePort" || w.ty == "LoadBalancer";

    // 1. Addresses Services keep: what they hold now, when Git names none.
    for w in services
        .iter()
        .filter(|w| gets_ip(w) && w.cluster_ip.is_empty())
    {
        if let Some(ip) = held.get(&w.key).and_then(|h| h.cluster_ip) {
            if network.assignable(ip) && !ledger.ips.contains_key(&ip) {
                ledger.claim_ip(w, ip);
            }
        }
    }
    // 2. Addresses Git names.
    for w in services
        .iter()
        .filter(|w| gets_ip(w) && !w.cluster_ip.is_empty())
    {
        let m = &manifests[w.index];
        let field = if m
            .object
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            FieldPath::parse("spec.clusterIP")
        } else {
            FieldPath::parse("spec.clusterIPs[0]")
        };
        let Ok(ip) = w.cluster_ip.parse::<Ipv4Addr>() else {
            continue; // validation already reported it
        };
        if !network.cidr.contains(&ip) {
            errors.push(m.error(&field, format!(
                "Invalid value: \"{ip}\": failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. {}",
                network.range_message()
            )));
        } else if !network.assignable(ip) {
            errors.push(m.error(
                &field,
                format!("Invalid value: \"{ip}\": failed to allocate IP {ip}: the address is reserved (the range's first, last, .1 and the cluster DNS address {})", network.dns_ip()),
            ));
        } else if let Some(other) = ledger.ips.get(&ip) {
            errors.push(m.error(
                &field,
                format!("Invalid value: \"{ip}\": failed to allocate IP {ip}: provided IP is already allocated (to Service {other})"),
            ));
        } else {
            ledger.claim_ip(w, ip);
        }
    }
    // 3. Node ports kept, then node ports Git names.
    for w in services.iter().filter(|w| gets_node_ports(w)) {
        let Some(h) = held.get(&w.key) else { continue };
        for (i, id, explicit) in &w.ports {
            if explicit.is_some() {
                continue;
            }
            let kept = h
                .node_ports
                .iter()
                .find(|(held, _)| same_port(held, id))
                .map(|(_, np)| *np);
            if let Some(np) = kept.filter(|np| network.node_ports.contains(np)) {
                if ledger.node_port_free_for(np, w) {
                    ledger.claim_node_port(w, *i, np);
                }
            }
        }
    }
    for w in services.iter().filter(|w| gets_node_ports(w)) {
        let m = &manifests[w.index];
        for (i, _, explicit) in &w.ports {
            let Some(np) = *explicit else { continue };
            let field = FieldPath::root()
                .key("spec")
                .key("ports")
                .index(*i)
                .key("nodePort");
            if !network.node_ports.contains(&np) {
                errors.push(m.error(&field, format!(
                    "Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {}-{}",
                    network.node_ports.start(), network.node_ports.end()
                )));
                continue;
            }
            if ledger.node_port_free_for(np, w) {
                ledger.claim_node_port(w, *i, np);
            } else if let Some(other) = ledger.node_ports.get(&np) {
                errors.push(m.error(
                    &field,
                    format!("Invalid value: {np}: provided port is already allocated (to Service {other})"),
                ));
            }
        }
    }
    // 4. New addresses and ports for the rest.
    for w in &services {
        let m = &manifests[w.index];
        let has_ip = ledger
            .given
            .get(&w.index)
            .is_some_and(|r| r.cluster_ip.is_some());
        if gets_ip(w) && w.cluster_ip.is_empty() && !has_ip {
            match free_ip(&w.key, network, &ledger.ips) {
                Some(ip) => ledger.claim_ip(w, ip),
                None => errors.push(m.error(
                    &FieldPath::parse("spec.clusterIP"),
                    format!(
                        "Internal error: failed to allocate a serviceIP: range is full ({})",
                        network.cidr
                    ),
                )),
            }
        }
        if !gets_node_ports(w) {
            continue;
        }
        for (i, _, explicit) in &w.ports {
            let done = ledger
                .given
                .get(&w.index)
                .is_some_and(|r| r.node_ports.iter().any(|(j, _)| j == i));
            if done || explicit.is_some() {
                continue;
            }
            match free_node_port(&format!("{}/{i}", w.key), network, &ledger.node_ports) {
                Some(np) => ledger.claim_node_port(w, *i, np),
                None => errors.push(
                    m.error(
                        &FieldPath::root()
                            .key("spec")
                            .key("ports")
                            .index(*i)
                            .key("nodePort"),
                        format!(
                            "Internal error: failed to allocate a nodePort: range is full ({}-{})",
                            network.node_ports.start(),
                            network.node_ports.end()
                        ),
                    ),
                ),
            }
        }
    }
    // 5. Write the results into the manifests.
    for w in &services {
        let m = &mut manifests[w.index];
        let Some(spec) = m.object.get_mut("spec").and_then(Value::as_object_mut) else {
            continue;
        };
        let given = ledger.given.remove(&w.index).unwrap_or_default();
        if let Some(ip) = given.cluster_ip {
            spec.insert("clusterIP".into(), Value::from(ip.clone()));
            spec.insert("clusterIPs".into(), Value::from(vec![ip]));
        } else if w.cluster_ip == "None" {
            spec.insert("clusterIP".into(), Value::from("None"));
            spec.insert("clusterIPs".into(), Value::from(vec!["None"]));
        }
        if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, np) in given.node_ports {
                if let Some(port) = list.get_mut(i).and_then(Value::as_object_mut) {
                    port.insert("nodePort".into(), Value::from(np));
                }
            }
        }
    }
    errors
}

fn free_ip(
    key: &str,
    network: &ServiceNetwork,
    used: &HashMap<Ipv4Addr, Holder>,
) -> Option<Ipv4Addr> {
    let base = u32::from(network.cidr.network());
    let size = 1u64 << (32 - u32::from(network.cidr.prefix_len()));
    let start = start_offset(key, "clusterIP", size);
    (0..size)
        .map(|k| (start + k) % size)
        .filter_map(|offset| u32::try_from(offset).ok())
        .map(|offset| Ipv4Addr::from(base.wrapping_add(offset)))
        .find(|ip| network.assignable(*ip) && !used.contains_key(ip))
}

fn free_node_port(key: &str, network: &ServiceNetwork, used: &HashMap<u16, Holder>) -> Option<u16> {
    let first = u64::from(*network.node_ports.start());
    let size = u64::from(*network.node_ports.end()) - first + 1;
    let start = start_offset(key, "nodePort", size);
    (0..size)
        .map(|k| first + (start + k) % size)
        .filter_map(|p| u16::try_from(p).ok())
        .find(|p| !used.contains_key(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load_files;

    fn network(cidr: &str) -> ServiceNetwork {
        ServiceNetwork {
            cidr: cidr.parse().expect("cidr"),
            node_ports: 30000..=30009,
        }
    }

    fn services(yaml: &str) -> Vec<Manifest> {
        let loaded = load_files([("svc.yaml".to_string(), yaml.as_bytes().to_vec())]);
        assert!(
            loaded.is_valid(),
            "{:?}",
            loaded
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        );
        loaded.manifests
    }

    fn stored(manifests: &[Manifest]) -> Vec<Service> {
        manifests
            .iter()
            .map(|m| serde_json::from_value(m.object.clone()).expect("service"))
            .collect()
    }

    fn ip_of(m: &Manifest) -> &str {
        m.object
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    const TWO: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  type: NodePort\n  ports: [{name: w, port: 80}, {name: x, port: 81, protocol: UDP}]\n";

    #[test]
    fn dns_and_reserved_addresses() {
        let n = ServiceNetwork::default();
        assert_eq!(n.dns_ip(), Ipv4Addr::new(10, 96, 0, 10));
        assert!(!n.assignable(Ipv4Addr::new(10, 96, 0, 1)));
        assert!(!n.assignable(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(!n.assignable(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(n.assignable(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!n.assignable(Ipv4Addr::new(10, 112, 0, 1)));
        assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("30000").is_err());
    }

    #[test]
    fn allocates_once_and_keeps_what_services_hold() {
        let net = network("10.96.0.0/28");
        let mut first = services(TWO);
        assert!(allocate(&mut first, &[], &net).is_empty());
        let (a, b) = (ip_of(&first[0]).to_string(), ip_of(&first[1]).to_string());
        assert_ne!(a, b);
        for ip in [&a, &b] {
            assert!(net.assignable(ip.parse().expect("ip")), "{ip}");
        }
        assert_eq!(first[0].object["spec"]["clusterIPs"][0], a.as_str());
        let np: Vec<u64> = (0..2)
            .map(|i| {
                first[1].object["spec"]["ports"][i]["nodePort"]
                    .as_u64()
                    .expect("nodePort")
            })
            .collect();
        assert_ne!(np[0], np[1]);
        assert!(np.iter().all(|p| (30000..=30009).contains(p)));
        assert!(first[0].object["spec"]["ports"][0]
            .get("nodePort")
            .is_none());

        // The next commit, from the same Git text, gets the same values.
        let mut again = services(TWO);
        assert!(allocate(&mut again, &stored(&first), &net).is_empty());
        assert_eq!(again[0].object, first[0].object);
        assert_eq!(again[1].object, first[1].object);
    }

    #[test]
    fn explicit_values_are_checked_against_range_and_holders() {
        let net = network("10.96.0.0/28");
        let mut held = services(TWO);
        assert!(allocate(&mut held, &[], &net).is_empty());
        let taken_ip = ip_of(&held[0]).to_string();
        let taken_port = held[1].object["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .expect("port");
        let next = format!(
            "{TWO}---\napiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec:\n  type: NodePort\n  clusterIP: {taken_ip}\n  ports:\n  - name: w\n    port: 80\n    nodePort: {taken_port}\n  - name: y\n    port: 81\n    nodePort: 80\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: d}}\nspec:\n  clusterIP: 10.0.0.5\n  ports: [{{port: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: e}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80}}]\n"
        );
        let mut manifests = services(&next);
        let errors: Vec<String> = allocate(&mut manifests, &stored(&held), &net)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            errors,
            vec![
                format!("svc.yaml:19: error: spec.clusterIP: Invalid value: \"{taken_ip}\": failed to allocate IP {taken_ip}: provided IP is already allocated (to Service default/a)"),
                "svc.yaml:32: error: spec.clusterIP: Invalid value: \"10.0.0.5\": failed to allocate IP 10.0.0.5: the provided IP (10.0.0.5) is not in the valid range. The range of valid IPs is 10.96.0.0/28".into(),
                "svc.yaml:39: error: spec.clusterIP: Invalid value: \"10.96.0.10\": failed to allocate IP 10.96.0.10: the address is reserved (the range's first, last, .1 and the cluster DNS address 10.96.0.10)".into(),
                format!("svc.yaml:23: error: spec.ports[0].nodePort: Invalid value: {taken_port}: provided port is already allocated (to Service default/b)"),
                "svc.yaml:26: error: spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-30009".into(),
            ]
        );
    }

    #[test]
    fn a_deleted_service_frees_its_address_and_a_full_range_is_an_error() {
        let net = network("10.96.0.0/29"); // .2 .3 .4 .5 .6 are assignable
        let mut held = services(TWO);
        assert!(allocate(&mut held, &[], &net).is_empty());
        // `a` is gone from Git: `c` may take its address explicitly.
        let text = format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: c}}\nspec:\n  clusterIP: {}\n  ports: [{{port: 80}}]\n",
            &TWO[TWO.find("---").expect("second document") + 4..],
            ip_of(&held[0])
        );
        let mut next = services(&text);
        assert!(allocate(&mut next, &stored(&held), &net).is_empty());
        let mut many = String::new();
        for i in 0..6 {
            many.push_str(&format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  ports: [{{port: 80}}]\n"));
        }
        let mut full = services(&many);
        let errors = allocate(&mut full, &[], &net);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("range is full"), "{}", errors[0]);
    }

    #[test]
    fn headless_and_external_name_get_no_address() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec:\n  clusterIP: None\n  selector: {app: h}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  type: ExternalName\n  externalName: example.com\n";
        let mut m = services(text);
        assert!(allocate(&mut m, &[], &ServiceNetwork::default()).is_empty());
        assert_eq!(ip_of(&m[0]), "None");
        assert_eq!(m[0].object["spec"]["clusterIPs"][0], "None");
        assert!(m[1].object["spec"].get("clusterIP").is_none());
    }
}
