//! Feasibility checks: small, independent filters that each say whether one
//! node can take one pod and, if not, why, in kube-scheduler's words (the
//! messages users read in `PodScheduled` conditions). Filters run in
//! kube-scheduler's plugin order and stop at the first that rejects, so a
//! node contributes the reasons of exactly one filter to the summary.

use std::collections::BTreeMap;

use commitd_api::nodes;
use commitd_api::taints::tolerates;
use k8s_openapi::api::core::v1::{Taint, Toleration};

use crate::info::{NodeInfo, PodInfo};

/// `NodeUnschedulable`'s reason.
pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
/// `TaintToleration`'s reason (without the taint, as kube-scheduler has
/// printed it since 1.33).
pub const REASON_UNTOLERATED_TAINT: &str = "node(s) had untolerated taint(s)";
/// `NodeAffinity`'s reason.
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
/// `NodePorts`' reason.
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
/// `NodeResourcesFit`'s reason when the node runs its maximum of pods.
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// The taint Kubernetes puts on cordoned nodes.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// One feasibility check.
pub trait Filter: Send + Sync {
    /// The kube-scheduler plugin this check stands for, for logs.
    fn name(&self) -> &'static str;
    /// `Ok` if the node can take the pod, else the reasons it cannot.
    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>>;
}

/// kube-scheduler's default filters, in its order, with commitd's
/// readiness check where Kubernetes has the lifecycle taints it stands for.
pub fn default_filters() -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(NodeUnschedulable),
        Box::new(NodeHealthy),
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(NodePorts),
        Box::new(NodeResourcesFit),
        Box::new(crate::volumes::VolumeBinding),
    ]
}

/// Runs filters in order; the first rejection wins.
pub fn run_filters(
    filters: &[Box<dyn Filter>],
    pod: &PodInfo,
    node: &NodeInfo,
) -> Result<(), Vec<String>> {
    for f in filters {
        f.filter(pod, node)?;
    }
    Ok(())
}

/// The condition message for a pod no node can take, exactly as
/// kube-scheduler's `FitError` words it: `0/3 nodes are available: 1
/// Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.`
/// Each reason is counted once per node, and the "count reason" strings
/// are sorted as strings, as kube-scheduler sorts them.
pub fn unschedulable_message<'a>(
    total_nodes: usize,
    rejections: impl IntoIterator<Item = &'a [String]>,
) -> String {
    if total_nodes == 0 {
        return NO_NODES_AVAILABLE.to_string();
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for reasons in rejections {
        for reason in reasons {
            *histogram.entry(reason.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = histogram
        .into_iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    parts.sort();
    let mut msg = format!("0/{total_nodes} nodes are available:");
    if !parts.is_empty() {
        msg.push_str(&format!(" {}.", parts.join(", ")));
    }
    msg
}

/// kube-scheduler's message when the cluster has no node at all.
pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";

/// Cordoned nodes (`spec.unschedulable`) take only pods that tolerate the
/// unschedulable taint.
pub struct NodeUnschedulable;

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let cordoned = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Ok(());
        }
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        };
        if tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
            Ok(())
        } else {
            Err(vec![REASON_UNSCHEDULABLE.to_string()])
        }
    }
}

/// Only nodes that report `Ready=True` and whose heartbeat lease is alive
/// take pods. Kubernetes expresses this with the `not-ready` and
/// `unreachable` taints its node lifecycle controller adds, and reports
/// them as untolerated taints; commitd checks the facts directly, so a
/// pod never lands on a node that stopped heartbeating, even one that
/// tolerates those taints.
pub struct NodeHealthy;

impl Filter for NodeHealthy {
    fn name(&self) -> &'static str {
        "NodeHealthy"
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        if node.heartbeat && is_ready(node) {
            Ok(())
        } else {
            Err(vec![REASON_UNTOLERATED_TAINT.to_string()])
        }
    }
}

/// Whether the node's `Ready` condition is `True`.
pub fn is_ready(node: &NodeInfo) -> bool {
    nodes::is_ready(&node.node)
}

/// `NoSchedule` and `NoExecute` taints repel pods that do not tolerate
/// them.
pub struct TaintToleration;

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let taints = node
            .node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        let tolerations = tolerations(pod);
        let untolerated = taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)));
        if untolerated {
            Err(vec![REASON_UNTOLERATED_TAINT.to_string()])
        } else {
            Ok(())
        }
    }
}

fn tolerations(pod: &PodInfo) -> &[Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// `spec.nodeSelector` and required node affinity must match the node's
/// labels (and, for `matchFields`, its name).
pub struct NodeAffinity;

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return Ok(());
        };
        if nodes::matches_node(spec, &node.node) {
            Ok(())
        } else {
            Err(vec![REASON_NODE_AFFINITY.to_string()])
        }
    }
}

/// Host ports must be free on the node.
pub struct NodePorts;

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let conflict = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| want.conflicts_with(used)));
        if conflict {
            Err(vec![REASON_NODE_PORTS.to_string()])
        } else {
            Ok(())
        }
    }
}

/// The node's allocatable resources minus what its pods request must cover
/// the pod's requests, and it must have room for one more pod. Every
/// shortfall is a reason (`Insufficient cpu`, `Insufficient memory`, ...).
pub struct NodeResourcesFit;

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let want = &pod.requests;
        let have = &node.allocatable;
        let used = &node.requested;
        let mut reasons = Vec::new();
        if node.pod_count.saturating_add(1) > have.allowed_pods {
            reasons.push(REASON_TOO_MANY_PODS.to_string());
        }
        if !want.is_empty_request() {
            let short =
                |want: i64, have: i64, used: i64| want > 0 && want > have.saturating_sub(used);
            if short(want.milli_cpu, have.milli_cpu, used.milli_cpu) {
                reasons.push("Insufficient cpu".to_string());
            }
            if short(want.memory, have.memory, used.memory) {
                reasons.push("Insufficient memory".to_string());
            }
            if short(
                want.ephemeral_storage,
                have.ephemeral_storage,
                used.ephemeral_storage,
            ) {
                reasons.push("Insufficient ephemeral-storage".to_string());
            }
            for (name, amount) in &want.scalar {
                let have = have.scalar.get(name).copied().unwrap_or(0);
                let used = used.scalar.get(name).copied().unwrap_or(0);
                if *amount > have.saturating_sub(used) {
                    reasons.push(format!("Insufficient {name}"));
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

    fn reject(filter: &dyn Filter, pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
        filter.filter(pod, node).err().unwrap_or_default()
    }

    #[test]
    fn cordoned_nodes_take_only_pods_tolerating_it() {
        let mut n = node("n1", "4", "8Gi");
        cordon(&mut n);
        let n = info(n);
        let p = pod_info(pod("p", "100m", "64Mi"));
        assert_eq!(
            reject(&NodeUnschedulable, &p, &n),
            vec![REASON_UNSCHEDULABLE]
        );
        let tolerant = pod_info(with_tolerations(
            pod("p", "100m", "64Mi"),
            vec![toleration(
                Some(TAINT_UNSCHEDULABLE),
                "Exists",
                None,
                Some("NoSchedule"),
            )],
        ));
        assert!(NodeUnschedulable.filter(&tolerant, &n).is_ok());
    }

    #[test]
    fn only_ready_heartbeating_nodes_are_healthy() {
        let p = pod_info(pod("p", "100m", "64Mi"));
        assert!(NodeHealthy.filter(&p, &info(node("n", "1", "1Gi"))).is_ok());
        let mut stale = info(node("n", "1", "1Gi"));
        stale.heartbeat = false;
        assert_eq!(
            reject(&NodeHealthy, &p, &stale),
            vec![REASON_UNTOLERATED_TAINT]
        );
        let mut not_ready = node("n", "1", "1Gi");
        set_ready(&mut not_ready, "False");
        assert_eq!(
            reject(&NodeHealthy, &p, &info(not_ready)),
            vec![REASON_UNTOLERATED_TAINT]
        );
        let mut unknown = node("n", "1", "1Gi");
        if let Some(s) = unknown.status.as_mut() {
            s.conditions = None;
        }
        assert!(NodeHealthy.filter(&p, &info(unknown)).is_err());
    }

    #[test]
    fn only_no_schedule_and_no_execute_taints_repel() {
        let p = pod_info(pod("p", "100m", "64Mi"));
        for (effect, repels) in [
            ("NoSchedule", true),
            ("NoExecute", true),
            ("PreferNoSchedule", false),
        ] {
            let n = info(with_taint(node("n", "1", "1Gi"), "k", "v", effect));
            assert_eq!(TaintToleration.filter(&p, &n).is_err(), repels, "{effect}");
        }
        let n = info(with_taint(node("n", "1", "1Gi"), "k", "v", "NoSchedule"));
        let tolerant = pod_info(with_tolerations(
            pod("p", "100m", "64Mi"),
            vec![toleration(
                Some("k"),
                "Equal",
                Some("v"),
                Some("NoSchedule"),
            )],
        ));
        assert!(TaintToleration.filter(&tolerant, &n).is_ok());
        assert_eq!(
            reject(&TaintToleration, &p, &n),
            vec![REASON_UNTOLERATED_TAINT]
        );
    }

    #[test]
    fn node_selector_and_required_affinity_must_match() {
        let n = info(with_label(node("n1", "1", "1Gi"), "disk", "ssd"));
        let mut p = pod("p", "100m", "64Mi");
        set_node_selector(&mut p, &[("disk", "ssd")]);
        assert!(NodeAffinity.filter(&pod_info(p.clone()), &n).is_ok());
        set_node_selector(&mut p, &[("disk", "hdd")]);
        assert_eq!(
            reject(&NodeAffinity, &pod_info(p), &n),
            vec![REASON_NODE_AFFINITY]
        );

        let with_version = info(with_label(
            with_label(node("n1", "1", "1Gi"), "disk", "ssd"),
            "gen",
            "5",
        ));
        let expr = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        };
        let table = [
            (vec![expr("disk", "In", &["ssd", "nvme"])], true),
            (vec![expr("disk", "In", &["hdd"])], false),
            (vec![expr("disk", "NotIn", &["hdd"])], true),
            (vec![expr("zone", "NotIn", &["a"])], true),
            (vec![expr("disk", "Exists", &[])], true),
            (vec![expr("zone", "Exists", &[])], false),
            (vec![expr("zone", "DoesNotExist", &[])], true),
            (vec![expr("gen", "Gt", &["4"])], true),
            (vec![expr("gen", "Lt", &["4"])], false),
            (vec![expr("disk", "Gt", &["4"])], false),
            (
                vec![expr("disk", "In", &["ssd"]), expr("gen", "In", &["4"])],
                false,
            ),
            (vec![expr("disk", "In", &[])], false),
            (vec![expr("disk", "Near", &["ssd"])], false),
        ];
        for (exprs, want) in table {
            let term = NodeSelectorTerm {
                match_expressions: Some(exprs.clone()),
                match_fields: None,
            };
            let p = pod_info(with_required_affinity(pod("p", "100m", "64Mi"), vec![term]));
            assert_eq!(
                NodeAffinity.filter(&p, &with_version).is_ok(),
                want,
                "{exprs:?}"
            );
        }
        // Terms are ORed; an empty term matches nothing; fields match the name.
        let terms = vec![
            NodeSelectorTerm::default(),
            NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![expr("metadata.name", "In", &["n1"])]),
            },
        ];
        let p = pod_info(with_required_affinity(pod("p", "100m", "64Mi"), terms));
        assert!(NodeAffinity.filter(&p, &with_version).is_ok());
        let p = pod_info(with_required_affinity(
            pod("p", "100m", "64Mi"),
            vec![NodeSelectorTerm::default()],
        ));
        assert!(NodeAffinity.filter(&p, &with_version).is_err());
    }

    #[test]
    fn host_ports_must_be_free() {
        let mut n = info(node("n", "4", "8Gi"));
        n.add_pod(&pod_info(with_host_port(
            pod("a", "0", "0"),
            8080,
            None,
            None,
        )));
        let table = [
            (8080, None, None, false),
            (8080, Some("10.0.0.1"), None, false),
            (8080, None, Some("UDP"), true),
            (8081, None, None, true),
        ];
        for (port, ip, proto, ok) in table {
            let p = pod_info(with_host_port(pod("b", "0", "0"), port, ip, proto));
            assert_eq!(
                NodePorts.filter(&p, &n).is_ok(),
                ok,
                "{port} {ip:?} {proto:?}"
            );
        }
        let mut n = info(node("n", "4", "8Gi"));
        n.add_pod(&pod_info(with_host_port(
            pod("a", "0", "0"),
            80,
            Some("10.0.0.1"),
            None,
        )));
        let other_ip = pod_info(with_host_port(
            pod("b", "0", "0"),
            80,
            Some("10.0.0.2"),
            None,
        ));
        assert!(NodePorts.filter(&other_ip, &n).is_ok());
        let all = pod_info(with_host_port(pod("b", "0", "0"), 80, None, None));
        assert_eq!(reject(&NodePorts, &all, &n), vec![REASON_NODE_PORTS]);
    }

    #[test]
    fn resources_must_fit_what_is_left() {
        let mut n = info(node("n", "2", "4Gi"));
        n.add_pod(&pod_info(pod("a", "1500m", "1Gi")));
        let table: [(&str, &str, &[&str]); 5] = [
            ("500m", "3Gi", &[]),
            ("501m", "1Gi", &["Insufficient cpu"]),
            ("100m", "3073Mi", &["Insufficient memory"]),
            ("1", "4Gi", &["Insufficient cpu", "Insufficient memory"]),
            ("0", "0", &[]),
        ];
        for (cpu, mem, want) in table {
            let p = pod_info(pod("p", cpu, mem));
            assert_eq!(
                reject(&NodeResourcesFit, &p, &n),
                want.to_vec(),
                "{cpu} {mem}"
            );
        }
    }

    #[test]
    fn pods_count_against_the_pods_limit() {
        let mut n = info(node_with_pods("n", "4", "8Gi", "1"));
        let empty = pod_info(pod("p", "0", "0"));
        assert!(NodeResourcesFit.filter(&empty, &n).is_ok());
        n.add_pod(&empty);
        assert_eq!(
            reject(&NodeResourcesFit, &empty, &n),
            vec![REASON_TOO_MANY_PODS]
        );
        let big = pod_info(pod("p", "8", "0"));
        assert_eq!(
            reject(&NodeResourcesFit, &big, &n),
            vec![REASON_TOO_MANY_PODS, "Insufficient cpu"]
        );
    }

    #[test]
    fn extended_resources_must_fit() {
        let n = info(node("n", "4", "8Gi"));
        let p = pod_info(with_request(pod("p", "100m", "0"), "example.com/gpu", "1"));
        assert_eq!(
            reject(&NodeResourcesFit, &p, &n),
            vec!["Insufficient example.com/gpu"]
        );
    }

    #[test]
    fn the_first_rejecting_filter_wins() {
        let mut n = node("n", "1", "1Gi");
        cordon(&mut n);
        let n = info(n);
        let p = pod_info(pod("p", "8", "64Gi"));
        assert_eq!(
            run_filters(&default_filters(), &p, &n),
            Err(vec![REASON_UNSCHEDULABLE.to_string()])
        );
    }

    #[test]
    fn messages_read_like_kube_scheduler() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let insufficient_memory = r(&["Insufficient memory"]);
        assert_eq!(
            unschedulable_message(1, [insufficient_memory.as_slice()]),
            "0/1 nodes are available: 1 Insufficient memory."
        );
        let cpu = r(&["Insufficient cpu"]);
        let affinity = r(&[REASON_NODE_AFFINITY]);
        assert_eq!(
            unschedulable_message(3, [affinity.as_slice(), cpu.as_slice(), affinity.as_slice()]),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
        // Several reasons from one node each count; sorting is by the whole
        // string, count first, as Go's sort.Strings does.
        let both = r(&["Insufficient cpu", "Insufficient memory"]);
        let taint = r(&[REASON_UNTOLERATED_TAINT]);
        let mut rejections: Vec<&[String]> = vec![both.as_slice(), both.as_slice()];
        rejections.extend(std::iter::repeat_n(taint.as_slice(), 10));
        assert_eq!(
            unschedulable_message(12, rejections),
            "0/12 nodes are available: 10 node(s) had untolerated taint(s), 2 Insufficient cpu, 2 Insufficient memory."
        );
        assert_eq!(
            unschedulable_message(0, []),
            "no nodes available to schedule pods"
        );
        let unschedulable = r(&[REASON_UNSCHEDULABLE]);
        let ports = r(&[REASON_NODE_PORTS]);
        let pods = r(&[REASON_TOO_MANY_PODS]);
        assert_eq!(
            unschedulable_message(3, [unschedulable.as_slice(), ports.as_slice(), pods.as_slice()]),
            "0/3 nodes are available: 1 Too many pods, 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) were unschedulable."
        );
    }
}
