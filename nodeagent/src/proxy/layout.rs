//! The layout of the table commitd owns: the names and declarations of its
//! sets, maps and chains, the chains every table has, and the names of the
//! chains made for services. [`super::rules`] fills this layout from a
//! model; anything that must stay stable across agent versions (names)
//! lives here.

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::model::ServicePortKey;
use super::DnsRedirect;

/// The packet mark bit that asks postrouting to masquerade.
const MASQ_MARK: u32 = 0x4000;

/// Name of the verdict map from VIP . protocol . port to pick chains.
pub const SERVICE_IPS: &str = "service-ips";
/// Name of the verdict map from protocol . node port to pick chains.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Name of the set of VIP . protocol . port without ready endpoints.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Name of the set of protocol . node port without ready endpoints.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Name of the set of endpoint . endpoint pairs for hairpin masquerade.
pub const HAIRPIN: &str = "hairpin";

/// The table's named sets and maps that hold per-service elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Container {
    ServiceIps,
    NodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
    Hairpin,
    /// The endpoint map of one slot (exists while some port uses it).
    Slot(Slot),
}

impl Container {
    /// The containers every table has.
    pub(crate) const FIXED: [Container; 5] = [
        Container::ServiceIps,
        Container::NodePorts,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
        Container::Hairpin,
    ];

    pub(crate) fn name(self) -> String {
        match self {
            Container::ServiceIps => SERVICE_IPS.to_string(),
            Container::NodePorts => SERVICE_NODEPORTS.to_string(),
            Container::NoEndpointServices => NO_ENDPOINT_SERVICES.to_string(),
            Container::NoEndpointNodePorts => NO_ENDPOINT_NODEPORTS.to_string(),
            Container::Hairpin => HAIRPIN.to_string(),
            Container::Slot(slot) => slot.map_name(),
        }
    }

    /// `map` or `set`, as nft commands spell the object.
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            Container::ServiceIps | Container::NodePorts | Container::Slot(_) => "map",
            _ => "set",
        }
    }

    /// The declaration inside `{ }`.
    pub(crate) fn decl(self) -> &'static str {
        match self {
            Container::ServiceIps => "type ipv4_addr . inet_proto . inet_service : verdict;",
            Container::NodePorts => "type inet_proto . inet_service : verdict;",
            Container::NoEndpointServices => "type ipv4_addr . inet_proto . inet_service;",
            Container::NoEndpointNodePorts => "type inet_proto . inet_service;",
            Container::Hairpin => "type ipv4_addr . ipv4_addr;",
            Container::Slot(Slot {
                node_port: false, ..
            }) => "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;",
            Container::Slot(Slot {
                node_port: true, ..
            }) => "type inet_proto . inet_service : ipv4_addr . inet_service;",
        }
    }
}

/// A chain: base chains have a hook line, the others none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) name: String,
    pub(crate) hook: Option<&'static str>,
    pub(crate) rules: Vec<String>,
}

/// Endpoints are data, not rules: slot `i` is a map from a service port
/// (VIP . protocol . port, or protocol . node port) to its `i`-th ready
/// endpoint, with a chain that DNATs through it. Every port with more than
/// `i` endpoints (and no session affinity) has an element there.
///
/// This keeps the rules independent of the endpoints: replacing an
/// endpoint only rewrites one element, and a new endpoint count only
/// repoints the port's verdict-map element to another [`Pick`] chain.
/// Rules with NAT or jumps are what makes the kernel re-validate the whole
/// table on commit, so per-service rules would make every endpoint change
/// cost time in proportion to the number of services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Slot {
    /// Whether this is the node-port variant (keyed by protocol . port).
    pub(crate) node_port: bool,
    /// The endpoint's index in the port's sorted endpoints.
    pub(crate) index: usize,
}

impl Slot {
    pub(crate) fn map_name(self) -> String {
        let prefix = if self.node_port { "nodeport-" } else { "" };
        format!("{prefix}endpoint-slot-{}", self.index)
    }

    pub(crate) fn chain_name(self) -> String {
        let prefix = if self.node_port { "nodeport-" } else { "" };
        format!("{prefix}dnat-slot-{}", self.index)
    }

    pub(crate) fn chain(self) -> Chain {
        let key = if self.node_port {
            "meta l4proto . th dport"
        } else {
            "ip daddr . meta l4proto . th dport"
        };
        // The protocol match is what lets nft map to a port at all.
        Chain {
            name: self.chain_name(),
            hook: None,
            rules: vec![format!(
                "meta l4proto {{ tcp, udp, sctp }} dnat ip to {key} map @{}",
                self.map_name()
            )],
        }
    }
}

/// The chain shared by every service port with `count` ready endpoints
/// (and no session affinity): it draws a slot below `count` with `numgen`
/// and goes to that slot's DNAT chain. One per count in use, for VIPs and
/// for node ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Pick {
    /// Whether this is the node-port variant.
    pub(crate) node_port: bool,
    /// How many endpoints to choose from (at least 1).
    pub(crate) count: usize,
}

impl Pick {
    pub(crate) fn chain_name(self) -> String {
        let prefix = if self.node_port { "nodeport-" } else { "" };
        format!("{prefix}pick-of-{}", self.count)
    }

    /// The slots this pick chain goes to.
    pub(crate) fn slots(self) -> impl Iterator<Item = Slot> {
        (0..self.count).map(move |index| Slot {
            node_port: self.node_port,
            index,
        })
    }

    pub(crate) fn chain(self) -> Chain {
        let targets: Vec<String> = self
            .slots()
            .map(|s| format!("{} : goto {}", s.index, s.chain_name()))
            .collect();
        Chain {
            name: self.chain_name(),
            hook: None,
            rules: vec![format!(
                "numgen random mod {} vmap {{ {} }}",
                self.count,
                targets.join(", ")
            )],
        }
    }
}

/// The chains every table has, whatever the services.
pub(crate) fn base_chains(dns: Option<&DnsRedirect>, cluster_cidr: Option<Ipv4Net>) -> Vec<Chain> {
    let chain = |name: &str, hook: Option<&'static str>, rules: Vec<String>| Chain {
        name: name.to_string(),
        hook,
        rules,
    };
    // Cluster DNS, ahead of the service maps. From pods (prerouting),
    // `redirect` sends to the receiving interface's address, which is also
    // the source the server replies from. From the host (output) the
    // client's own address is the target: a server on 0.0.0.0 replies from
    // its route's source address, which for 127.0.0.1 (what `redirect`
    // would pick there) is not the address the client sent to.
    let mut prerouting = Vec::new();
    let mut output = Vec::new();
    if let Some(d) = dns {
        for proto in ["udp", "tcp"] {
            prerouting.push(format!(
                "ip daddr {} {proto} dport 53 redirect to :{}",
                d.vip, d.port
            ));
            output.push(format!(
                "ip daddr {} {proto} dport 53 dnat to ip saddr:{}",
                d.vip, d.port
            ));
        }
    }
    prerouting.push("jump services".to_string());
    output.push("jump services".to_string());
    // The masquerade mark is set before the lookups and cleared when none
    // matched (a match jumps away with `goto`): traffic to a VIP from
    // outside the cluster, and all node-port traffic, is masqueraded, with
    // one rule for all services instead of one per service.
    let mark = format!("meta mark set meta mark | {MASQ_MARK:#x}");
    let mut services = Vec::new();
    if let Some(cidr) = cluster_cidr {
        services.push(format!("ip saddr != {cidr} {mark}"));
    }
    services.push(format!(
        "ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"
    ));
    services.push(format!("fib daddr type local {mark}"));
    services.push(format!(
        "fib daddr type local meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"
    ));
    services.push(format!("meta mark set meta mark & {:#x}", !MASQ_MARK));
    let check = || vec!["ct state new jump endpoints-check".to_string()];
    let filter = |hook: &str| -> &'static str {
        match hook {
            "input" => "type filter hook input priority -110; policy accept;",
            "forward" => "type filter hook forward priority -110; policy accept;",
            _ => "type filter hook output priority -110; policy accept;",
        }
    };
    vec![
        chain("filter-input", Some(filter("input")), check()),
        chain("filter-forward", Some(filter("forward")), check()),
        chain("filter-output", Some(filter("output")), check()),
        chain(
            "endpoints-check",
            None,
            vec![
                format!("ip daddr . meta l4proto . th dport @{NO_ENDPOINT_SERVICES} goto reject-service"),
                format!("fib daddr type local meta l4proto . th dport @{NO_ENDPOINT_NODEPORTS} goto reject-service"),
            ],
        ),
        chain(
            "reject-service",
            None,
            vec![
                "meta l4proto tcp reject with tcp reset".to_string(),
                "reject".to_string(),
            ],
        ),
        chain(
            "nat-prerouting",
            Some("type nat hook prerouting priority dstnat; policy accept;"),
            prerouting,
        ),
        chain(
            "nat-output",
            Some("type nat hook output priority -100; policy accept;"),
            output,
        ),
        chain(
            "nat-postrouting",
            Some("type nat hook postrouting priority srcnat; policy accept;"),
            vec!["jump masquerading".to_string()],
        ),
        chain("services", None, services),
        chain("mark-for-masquerade", None, vec![mark.clone()]),
        chain(
            "masquerading",
            None,
            vec![
                format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} jump mark-for-masquerade"),
                format!("meta mark & {MASQ_MARK:#x} == 0 return"),
                format!("meta mark set meta mark & {:#x}", !MASQ_MARK),
                // Local to local needs no SNAT, and masquerading onto lo
                // (which has no global address) would drop the packet.
                "oif \"lo\" return".to_string(),
                "masquerade fully-random".to_string(),
            ],
        ),
    ]
}

/// The chain of a service port with session affinity:
/// `svc-<hash>-<ns>/<name>[/<port>]`. The hash (of namespace, name and
/// port name) keeps names unique however the readable part is shortened;
/// both stay the same for the port's life.
pub fn service_chain_name(key: &ServicePortKey) -> String {
    let parts = [key.namespace.as_str(), &key.name, &key.port_name];
    format!("svc-{}-{}", short_hash("svc", &parts), readable(key))
}

/// `ns/name[/port]`, restricted to characters nft accepts in identifiers.
pub(crate) fn readable(key: &ServicePortKey) -> String {
    let mut s = format!("{}/{}", clean(&key.namespace), clean(&key.name));
    if !key.port_name.is_empty() {
        s.push('/');
        s.push_str(&clean(&key.port_name));
    }
    s
}

fn clean(part: &str) -> String {
    part.chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Eight base32 characters (40 bits) of SHA-256 over the parts.
pub(crate) fn short_hash(kind: &str, parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let v = digest[..5]
        .iter()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b));
    (0..8)
        .rev()
        .map(|i| char::from(ALPHABET[((v >> (i * 5)) & 31) as usize]))
        .collect()
}

/// Whether nft accepts `name` as a table identifier.
pub(crate) fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_stable_short_and_valid() {
        // Pinned: a restarted or upgraded agent must name chains the same.
        let web = ServicePortKey::new("demo", "web", "http");
        assert_eq!(service_chain_name(&web), "svc-amyp6tq3-demo/web/http");
        let other = service_chain_name(&ServicePortKey::new("demo", "web", "https"));
        assert_ne!(other, service_chain_name(&web));
        let unnamed = service_chain_name(&ServicePortKey::new("demo", "web", ""));
        assert_eq!(unnamed.rsplit_once('-').map(|(_, r)| r), Some("demo/web"));
        let odd = ServicePortKey::new(&"n".repeat(200), "we b$", "p:1");
        let name = service_chain_name(&odd);
        assert!(name.len() < 256, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)),
            "{name}"
        );
        assert_eq!(
            Pick {
                node_port: false,
                count: 3
            }
            .chain_name(),
            "pick-of-3"
        );
        assert_eq!(
            Pick {
                node_port: true,
                count: 3
            }
            .chain_name(),
            "nodeport-pick-of-3"
        );
    }

    #[test]
    fn pick_chains_draw_a_slot_below_their_count() {
        let pick = |node_port, count| Pick { node_port, count }.chain().rules.join("\n");
        assert_eq!(
            pick(false, 3),
            "numgen random mod 3 vmap { 0 : goto dnat-slot-0, 1 : goto dnat-slot-1, 2 : goto dnat-slot-2 }"
        );
        assert_eq!(
            pick(true, 1),
            "numgen random mod 1 vmap { 0 : goto nodeport-dnat-slot-0 }"
        );
        let slot = |node_port, index| Slot { node_port, index }.chain().rules.join("\n");
        assert_eq!(
            slot(false, 2),
            "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @endpoint-slot-2"
        );
        assert_eq!(
            slot(true, 0),
            "meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @nodeport-endpoint-slot-0"
        );
    }

    #[test]
    fn table_names_are_checked() {
        for bad in ["", "1table", "a b", "x;flush ruleset", &"t".repeat(65)] {
            assert!(!valid_table_name(bad), "{bad:?}");
        }
        assert!(valid_table_name("commitd"));
        assert!(valid_table_name("cd_test-1"));
    }
}
