//! Forgetting UDP flows to endpoints that are gone.
//!
//! conntrack keeps a UDP "connection" (client address and port to VIP and
//! port) DNATed to the endpoint its first packet went to, for as long as
//! packets keep coming. A client that reuses its source port, as DNS
//! resolvers and most UDP protocols do, would keep sending to a removed
//! endpoint however the rules change. Like kube-proxy, the proxy deletes
//! those entries once the rules no longer have the endpoint. TCP needs
//! nothing: a removed endpoint's connections end on their own (reset or
//! time-out), and new ones follow the rules. Packets to a port without
//! endpoints are rejected before their conntrack entry is confirmed, so
//! such ports leave no entry behind either.

use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::process::Command;

use super::model::{Endpoint, Model, Protocol, ServicePortKey};

/// The conntrack binary (conntrack-tools), looked up in `PATH`.
const CONNTRACK: &str = "conntrack";

/// Where the stale flows were sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    /// A service's virtual IP and port.
    Vip(Ipv4Addr, u16),
    /// A node port, on any of the node's addresses.
    NodePort(u16),
}

/// UDP flows to `destination` answered by `endpoint`, which the rules no
/// longer have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlows {
    /// Where clients sent them.
    pub destination: Destination,
    /// The endpoint they were DNATed to.
    pub endpoint: Endpoint,
}

impl StaleFlows {
    /// The `conntrack` arguments that delete these flows.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["-D".to_string(), "-p".into(), "udp".into()];
        match self.destination {
            Destination::Vip(ip, port) => {
                args.extend(["--orig-dst".into(), ip.to_string()]);
                args.extend(["--orig-port-dst".into(), port.to_string()]);
            }
            Destination::NodePort(port) => {
                args.extend(["--orig-port-dst".into(), port.to_string()]);
            }
        }
        args.extend(["--reply-src".into(), self.endpoint.ip.to_string()]);
        args.extend(["--reply-port-src".into(), self.endpoint.port.to_string()]);
        args
    }
}

/// The UDP flows that going from `old` to `new` leaves pointing at removed
/// endpoints, for the service ports in `changed` (the others kept theirs).
pub fn stale_udp_flows(old: &Model, new: &Model, changed: &[ServicePortKey]) -> Vec<StaleFlows> {
    let mut out = Vec::new();
    for key in changed {
        let Some(before) = old.get(key).filter(|p| p.protocol == Protocol::Udp) else {
            continue;
        };
        let after = new.get(key);
        let kept = |ep: &Endpoint, dest: Destination| {
            after.is_some_and(|a| {
                let same_dest = match dest {
                    Destination::Vip(ip, port) => a.cluster_ip == ip && a.port == port,
                    Destination::NodePort(np) => a.node_port == Some(np),
                };
                a.protocol == Protocol::Udp && same_dest && a.endpoints.contains(ep)
            })
        };
        let mut destinations = vec![Destination::Vip(before.cluster_ip, before.port)];
        destinations.extend(before.node_port.map(Destination::NodePort));
        for destination in destinations {
            for ep in &before.endpoints {
                if !kept(ep, destination) {
                    out.push(StaleFlows {
                        destination,
                        endpoint: *ep,
                    });
                }
            }
        }
    }
    out
}

/// Why flows could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The binary could not be run (conntrack-tools not installed).
    #[error("running `conntrack {args}`: {source}")]
    Spawn {
        /// The arguments.
        args: String,
        /// The error.
        source: std::io::Error,
    },
    /// conntrack ran and failed.
    #[error("`conntrack {args}` failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// conntrack's error output.
        stderr: String,
    },
}

/// Deletes the conntrack entries of `flows` in the current network
/// namespace. Finding none is not an error.
pub async fn delete(flows: &StaleFlows) -> Result<(), ConntrackError> {
    let args = flows.args();
    let joined = args.join(" ");
    let out = Command::new(CONNTRACK)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| ConntrackError::Spawn {
            args: joined.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It exits 1 when nothing matched, saying so.
    if out.status.success() || stderr.contains(" 0 flow entries have been deleted") {
        return Ok(());
    }
    Err(ConntrackError::Failed {
        args: joined,
        stderr: stderr.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::ServicePort;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last),
            port,
        }
    }

    fn udp(node_port: Option<u16>, eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            protocol: Protocol::Udp,
            port: 53,
            node_port,
            affinity_timeout: None,
            endpoints: eps,
        }
    }

    fn model(port: Option<ServicePort>) -> Model {
        let mut m = Model::new();
        if let Some(p) = port {
            m.insert(ServicePortKey::new("kube-system", "dns", ""), p);
        }
        m
    }

    fn key() -> Vec<ServicePortKey> {
        vec![ServicePortKey::new("kube-system", "dns", "")]
    }

    #[test]
    fn removed_udp_endpoints_leave_stale_flows_by_vip_and_node_port() {
        let old = model(Some(udp(Some(30053), vec![ep(2, 5353), ep(3, 5353)])));
        let new = model(Some(udp(Some(30053), vec![ep(3, 5353)])));
        let flows = stale_udp_flows(&old, &new, &key());
        assert_eq!(
            flows,
            vec![
                StaleFlows {
                    destination: Destination::Vip(Ipv4Addr::new(10, 96, 0, 10), 53),
                    endpoint: ep(2, 5353)
                },
                StaleFlows {
                    destination: Destination::NodePort(30053),
                    endpoint: ep(2, 5353)
                },
            ]
        );
        assert_eq!(
            flows[0].args().join(" "),
            "-D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.0.2 --reply-port-src 5353"
        );
        assert_eq!(
            flows[1].args().join(" "),
            "-D -p udp --orig-port-dst 30053 --reply-src 10.244.0.2 --reply-port-src 5353"
        );
    }

    #[test]
    fn a_deleted_service_or_node_port_leaves_all_its_flows() {
        let old = model(Some(udp(Some(30053), vec![ep(2, 5353)])));
        assert_eq!(stale_udp_flows(&old, &model(None), &key()).len(), 2);
        let without_np = model(Some(udp(None, vec![ep(2, 5353)])));
        assert_eq!(
            stale_udp_flows(&old, &without_np, &key()),
            vec![StaleFlows {
                destination: Destination::NodePort(30053),
                endpoint: ep(2, 5353)
            }]
        );
    }

    #[test]
    fn tcp_kept_and_unchanged_ports_leave_nothing() {
        let old = model(Some(udp(None, vec![ep(2, 5353)])));
        let more = model(Some(udp(None, vec![ep(2, 5353), ep(4, 5353)])));
        assert!(stale_udp_flows(&old, &more, &key()).is_empty());
        assert!(stale_udp_flows(&old, &model(None), &[]).is_empty());
        let mut tcp = udp(None, vec![ep(2, 80)]);
        tcp.protocol = Protocol::Tcp;
        assert!(stale_udp_flows(&model(Some(tcp)), &model(None), &key()).is_empty());
        // A new target port makes the old one stale.
        let moved = model(Some(udp(None, vec![ep(2, 5354)])));
        assert_eq!(stale_udp_flows(&old, &moved, &key()).len(), 1);
    }
}
