//! A DaemonSet's decisions as pure functions, so they can be tested without
//! etcd: which nodes should run a daemon pod, which pods to create and
//! delete next, and the status Kubernetes would report. Kubernetes' daemon
//! controller semantics:
//!
//! - A node **should run** a daemon pod when it matches the template's
//!   `nodeSelector` and required node affinity, is not being deleted, and
//!   every `NoSchedule`/`NoExecute` taint is tolerated by the pod's
//!   tolerations plus those Kubernetes adds to every daemon pod. A pod
//!   already there **may continue running** as long as the node still
//!   matches and no `NoExecute` taint is untolerated (a new `NoSchedule`
//!   taint does not evict).
//! - Each node keeps exactly one live pod (the oldest); pods on nodes that
//!   may not run one, or on nodes that no longer exist, are deleted; failed
//!   pods are deleted (the controller adds a back-off) and replaced.
//! - RollingUpdate replaces old-revision pods by deleting them, unavailable
//!   ones at once and available ones only while the unavailable daemon pods
//!   stay within `maxUnavailable`; OnDelete never deletes an old pod.

use std::collections::{BTreeMap, HashSet};

use commitd_api::controller::Requeue;
use commitd_api::k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use commitd_api::k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Toleration};
use commitd_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta;
use commitd_api::nodes;
use commitd_api::taints::tolerates;

use super::earliest;
use super::pod_readiness::{availability, is_available, ready_since};

/// The label naming the revision (template hash) a daemon pod was made from.
pub(super) const REVISION_HASH_LABEL: &str = "controller-revision-hash";
/// The label naming the DaemonSet generation a daemon pod was made at.
pub(super) const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// Whether a node should get a daemon pod, and whether one already there
/// may stay (Kubernetes' `NodeShouldRunDaemonPod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Placement {
    /// A pod should be created here if there is none.
    pub should_run: bool,
    /// A pod already here is left running.
    pub should_continue_running: bool,
}

/// The pod's tolerations plus those Kubernetes adds to every daemon pod,
/// so daemons keep running through node trouble and on cordoned nodes.
/// An identical toleration is not added twice.
pub(super) fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut all = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let t = Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".into()),
            effect: Some(effect.to_string()),
            ..Default::default()
        };
        if !all.contains(&t) {
            all.push(t);
        }
    };
    add(TAINT_NOT_READY, "NoExecute");
    add(TAINT_UNREACHABLE, "NoExecute");
    add(TAINT_DISK_PRESSURE, "NoSchedule");
    add(TAINT_MEMORY_PRESSURE, "NoSchedule");
    add(TAINT_PID_PRESSURE, "NoSchedule");
    add(TAINT_UNSCHEDULABLE, "NoSchedule");
    if spec.host_network == Some(true) {
        add(TAINT_NETWORK_UNAVAILABLE, "NoSchedule");
    }
    all
}

/// Where `spec` (a daemon pod's spec) may run on `node`.
pub(super) fn placement(node: &Node, spec: &PodSpec) -> Placement {
    let never = Placement {
        should_run: false,
        should_continue_running: false,
    };
    if !nodes::matches_node(spec, node) {
        return never;
    }
    let tolerations = daemon_tolerations(spec);
    let mut should_run = !meta::is_terminating(&node.metadata);
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
    {
        if tolerations.iter().any(|t| tolerates(t, taint)) {
            continue;
        }
        match taint.effect.as_str() {
            "NoExecute" => return never,
            "NoSchedule" => should_run = false,
            _ => {}
        }
    }
    Placement {
        should_run,
        should_continue_running: true,
    }
}

/// The revision a DaemonSet's pods are compared against.
#[derive(Clone, Debug)]
pub(super) struct Revision {
    /// The template hash (`controller-revision-hash`).
    pub hash: String,
    /// `metadata.generation` (`pod-template-generation`).
    pub generation: Option<i64>,
}

impl Revision {
    /// Kubernetes' `IsPodUpdated`: the pod carries the current hash or
    /// was made at the current generation.
    pub fn is_current(&self, pod: &Pod) -> bool {
        let label = |k: &str| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(k))
                .map(String::as_str)
        };
        let hash_ok = !self.hash.is_empty() && label(REVISION_HASH_LABEL) == Some(&self.hash);
        let generation_ok = self
            .generation
            .is_some_and(|g| label(TEMPLATE_GENERATION_LABEL) == Some(g.to_string().as_str()));
        hash_ok || generation_ok
    }
}

/// What one pass should do.
#[derive(Debug, Default)]
pub(super) struct Plan<'a> {
    /// Nodes that need a daemon pod, by name.
    pub create_on: Vec<String>,
    /// Pods to delete now: on nodes that may not run them, extra ones,
    /// old revisions within the rolling-update budget.
    pub delete: Vec<&'a Pod>,
    /// Failed pods to delete and replace (the controller applies a
    /// back-off per node).
    pub delete_failed: Vec<&'a Pod>,
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// Oldest first; the name breaks ties so every pass agrees.
fn by_age(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| meta::name(*a).cmp(meta::name(*b)))
    });
}

/// The live (not terminating, not finished) pods of `pods` on each node.
fn live_by_node<'a>(pods: &[&'a Pod]) -> BTreeMap<&'a str, Vec<&'a Pod>> {
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if meta::is_terminating(&pod.metadata) || is_terminal(pod) {
            continue;
        }
        if let Some(node) = node_of(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    for list in by_node.values_mut() {
        by_age(list);
    }
    by_node
}

/// The template's pod spec (an empty one if the template has none).
pub(super) fn template_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default()
}

fn min_ready_seconds(ds: &DaemonSet) -> i32 {
    ds.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// Whether the DaemonSet replaces old pods itself (RollingUpdate, the
/// default) rather than waiting for someone to delete them (OnDelete).
pub(super) fn is_rolling(ds: &DaemonSet) -> bool {
    let kind = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref());
    kind.unwrap_or("RollingUpdate") == "RollingUpdate"
}

/// `maxSurge` in pods for `desired` scheduled daemon pods (a percentage
/// rounded up, as Kubernetes does); 0 when not rolling.
pub(super) fn max_surge(ds: &DaemonSet, desired: i32) -> i32 {
    if !is_rolling(ds) {
        return 0;
    }
    let surge = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_surge.clone());
    surge.map_or(0, |v| scaled_up(&v, desired))
}

/// An int-or-percent against `total`, percentages rounded up
/// (Kubernetes' `GetScaledValueFromIntOrPercent(v, total, true)`);
/// unreadable values (validation rejects them) count as 0.
fn scaled_up(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(i) => (*i).max(0),
        IntOrString::String(s) => {
            let s = s.trim();
            match s.strip_suffix('%') {
                Some(p) => {
                    let percent = p.trim().parse::<i64>().unwrap_or(0).max(0);
                    let scaled = (percent * i64::from(total.max(0)) + 99) / 100;
                    i32::try_from(scaled).unwrap_or(i32::MAX)
                }
                None => s.parse::<i32>().unwrap_or(0).max(0),
            }
        }
    }
}

/// `maxUnavailable` in pods for `desired` scheduled daemon pods: a
/// percentage is rounded up, as Kubernetes does for DaemonSets, and at
/// least one pod may be unavailable (it is only used when `maxSurge` is 0,
/// where validation forbids a zero `maxUnavailable`).
pub(super) fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    let v = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    scaled_up(&v, desired).max(1)
}

/// One node's live pods after the per-node clean-up, as the rolling
/// update sees them.
struct NodePods<'a> {
    name: String,
    should_run: bool,
    /// The node had more live pods than allowed (the extras are being
    /// deleted): it counts as unavailable this pass.
    crowded: bool,
    /// The pod of the current revision, if any.
    new: Option<&'a Pod>,
    /// The pod of an older revision, if any.
    old: Option<&'a Pod>,
}

/// The next step for `ds` over `nodes` and the pods it controls.
pub(super) fn plan<'a>(
    ds: &DaemonSet,
    revision: &Revision,
    nodes: &[&Node],
    pods: &[&'a Pod],
    now: Timestamp,
) -> Plan<'a> {
    let spec = template_spec(ds);
    let min_ready = min_ready_seconds(ds);
    let mut out = Plan::default();
    let node_names: HashSet<&str> = nodes.iter().map(|n| meta::name(*n)).collect();

    // Pods bound to no node, or to a node that is gone, serve nobody.
    for pod in pods {
        if meta::is_terminating(&pod.metadata) {
            continue;
        }
        if node_of(pod).is_none_or(|n| !node_names.contains(n)) {
            out.delete.push(pod);
        }
    }

    let mut sorted: Vec<(&Node, Placement)> =
        nodes.iter().map(|n| (*n, placement(n, &spec))).collect();
    sorted.sort_by(|a, b| meta::name(a.0).cmp(meta::name(b.0)));
    let desired = sorted.iter().filter(|(_, p)| p.should_run).count();
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);
    let surge = if is_rolling(ds) {
        max_surge(ds, desired)
    } else {
        0
    };
    let live = live_by_node(pods);
    let mut states: Vec<NodePods<'a>> = Vec::new();
    // Daemon pods that should exist but are not (yet) there, counted
    // against maxUnavailable.
    let mut missing = 0;
    for (node, place) in sorted {
        let name = meta::name(node);
        let here: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| node_of(p) == Some(name) && !meta::is_terminating(&p.metadata))
            .collect();
        if !place.should_continue_running {
            out.delete.extend(here);
            continue;
        }
        for pod in here.iter().filter(|p| is_terminal(p)) {
            out.delete_failed.push(pod);
        }
        let running = live.get(name).cloned().unwrap_or_default();
        if running.is_empty() {
            if place.should_run {
                out.create_on.push(name.to_string());
                missing += 1;
            }
            continue;
        }
        let mut state = NodePods {
            name: name.to_string(),
            should_run: place.should_run,
            crowded: false,
            new: None,
            old: None,
        };
        if surge > 0 {
            // Surging: the oldest pod of each revision may stay; the old
            // one goes once the new one is available (or the old one is
            // not even ready).
            for pod in running {
                let slot = if revision.is_current(pod) {
                    &mut state.new
                } else {
                    &mut state.old
                };
                match slot {
                    None => *slot = Some(pod),
                    Some(_) => out.delete.push(pod),
                }
            }
            if let (Some(new), Some(old)) = (state.new, state.old) {
                if ready_since(old).is_none() || is_available(new, min_ready, now) {
                    out.delete.push(old);
                    state.old = None;
                }
            }
        } else {
            // One pod per node: the oldest stays.
            if let [_, extra @ ..] = running.as_slice() {
                out.delete.extend(extra.iter().copied());
                state.crowded = !extra.is_empty();
            }
            if revision.is_current(running[0]) {
                state.new = Some(running[0]);
            } else {
                state.old = Some(running[0]);
            }
        }
        states.push(state);
    }

    if !is_rolling(ds) {
        return out;
    }
    if surge > 0 {
        surge_update(&states, surge, min_ready, now, &mut out);
    } else {
        let budget = max_unavailable(ds, desired);
        unavailable_update(&states, budget, missing, min_ready, now, &mut out);
    }
    out
}

/// RollingUpdate with `maxSurge: 0` (Kubernetes' default path): old pods
/// are deleted before their replacement starts, unavailable ones at once,
/// available ones only while at most `budget` daemon pods are unavailable.
fn unavailable_update<'a>(
    states: &[NodePods<'a>],
    budget: i32,
    missing: i32,
    min_ready: i32,
    now: Timestamp,
    out: &mut Plan<'a>,
) {
    let mut unavailable = missing;
    let mut replace_now = Vec::new();
    let mut candidates = Vec::new();
    for state in states {
        if state.crowded {
            if state.should_run {
                unavailable += 1;
            }
            continue;
        }
        match (state.new, state.old) {
            (Some(new), _) => {
                if state.should_run && !is_available(new, min_ready, now) {
                    unavailable += 1;
                }
            }
            (None, Some(old)) if !is_available(old, min_ready, now) => {
                // An old pod that serves nobody is replaced at once.
                replace_now.push(old);
            }
            (None, Some(old)) => candidates.push(old),
            (None, None) => {}
        }
    }
    let room = usize::try_from((budget - unavailable).max(0)).unwrap_or(0);
    out.delete.extend(replace_now);
    out.delete.extend(candidates.into_iter().take(room));
}

/// RollingUpdate with `maxSurge` > 0: a new pod starts beside the old one
/// on at most `surge` nodes at a time, and the old pod is deleted once the
/// new one is available. A node whose old pod is not available gets its
/// new pod at once (or, if it should no longer run one, loses the old).
fn surge_update<'a>(
    states: &[NodePods<'a>],
    surge: i32,
    min_ready: i32,
    now: Timestamp,
    out: &mut Plan<'a>,
) {
    let mut surging = 0;
    let mut allowed = Vec::new();
    let mut candidates = Vec::new();
    for state in states {
        let name = &state.name;
        match (state.new, state.old) {
            (_, None) => {}
            (None, Some(old)) if !is_available(old, min_ready, now) => {
                if state.should_run {
                    allowed.push(name.clone());
                } else {
                    out.delete.push(old);
                }
            }
            (None, Some(_)) => {
                if state.should_run {
                    candidates.push(name.clone());
                }
            }
            (Some(new), Some(old)) => {
                if is_available(new, min_ready, now) {
                    out.delete.push(old);
                } else {
                    surging += 1;
                }
            }
        }
    }
    let room = usize::try_from((surge - surging).max(0)).unwrap_or(0);
    out.create_on.extend(allowed);
    out.create_on.extend(candidates.into_iter().take(room));
}

/// The status Kubernetes would write (`updateDaemonSetStatus`), and when
/// a ready pod turns available (so the loop looks again then).
pub(super) fn compute_status(
    ds: &DaemonSet,
    revision: &Revision,
    nodes: &[&Node],
    pods: &[&Pod],
    now: Timestamp,
) -> (DaemonSetStatus, Requeue) {
    let spec = template_spec(ds);
    let min_ready = min_ready_seconds(ds);
    let live = live_by_node(pods);
    let mut status = ds.status.clone().unwrap_or_default();
    let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    let mut requeue = None;
    for node in nodes {
        let place = placement(node, &spec);
        let on_node = live.get(meta::name(*node));
        if !place.should_run {
            if on_node.is_some() {
                misscheduled += 1;
            }
            continue;
        }
        desired += 1;
        let Some(pod) = on_node.and_then(|p| p.first()) else {
            continue;
        };
        current += 1;
        if ready_since(pod).is_some() {
            ready += 1;
            match availability(pod, min_ready, now) {
                Ok(true) => available += 1,
                Ok(false) => {}
                Err(wait) => requeue = earliest(requeue, Some(wait)),
            }
        }
        if revision.is_current(pod) {
            updated += 1;
        }
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    status.desired_number_scheduled = desired;
    status.current_number_scheduled = current;
    status.number_misscheduled = misscheduled;
    status.number_ready = ready;
    status.updated_number_scheduled = nonzero(updated);
    status.number_available = nonzero(available);
    status.number_unavailable = nonzero(desired - available);
    status.observed_generation = ds.metadata.generation;
    (status, requeue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;
    use std::time::Duration;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid time")
    }

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("valid node")
    }

    fn daemon_set(template_spec: serde_json::Value, strategy: serde_json::Value) -> DaemonSet {
        let mut spec = json!({"containers": [{"name": "c", "image": "agent:1"}]});
        if let (Some(s), Some(extra)) = (spec.as_object_mut(), template_spec.as_object()) {
            s.extend(extra.clone());
        }
        let mut ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "demo", "uid": "ds-uid", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec},
                     "updateStrategy": strategy}
        }))
        .expect("valid daemon set");
        commitd_api::defaults::daemon_set(&mut ds);
        ds
    }

    fn rev() -> Revision {
        Revision {
            hash: "new".into(),
            generation: Some(2),
        }
    }

    /// A pod on `node` at revision `hash` (generation 1), ready since 0 if
    /// `ready`, created at `created`.
    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: i64) -> Pod {
        let conditions = if ready {
            json!([{"type": "Ready", "status": "True", "lastTransitionTime": Time(t(0))}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo",
                         "labels": {"app": "agent", REVISION_HASH_LABEL: hash,
                                    TEMPLATE_GENERATION_LABEL: "1"},
                         "creationTimestamp": Time(t(created))},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agent:1"}]},
            "status": {"phase": "Running", "conditions": conditions}
        }))
        .expect("valid pod")
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        let mut n: Vec<String> = pods.iter().map(|p| meta::name(*p).to_string()).collect();
        n.sort();
        n
    }

    fn rolling(max_unavailable: serde_json::Value) -> serde_json::Value {
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}})
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let ds = daemon_set(json!({"nodeSelector": {"role": "edge"}}), json!(null));
        let a = node("a", json!({"role": "edge"}), json!([]));
        let b = node("b", json!({"role": "core"}), json!([]));
        let c = node("c", json!({"role": "edge"}), json!([]));
        let on_c = pod("c-pod", "c", "new", true, 0);
        let on_b = pod("b-pod", "b", "new", true, 0);
        let p = plan(&ds, &rev(), &[&a, &b, &c], &[&on_c, &on_b], t(100));
        assert_eq!(p.create_on, vec!["a"]);
        assert_eq!(names(&p.delete), vec!["b-pod"]);
        let (status, _) = compute_status(&ds, &rev(), &[&a, &b, &c], &[&on_c, &on_b], t(100));
        assert_eq!(status.desired_number_scheduled, 2);
        assert_eq!(status.current_number_scheduled, 1);
        assert_eq!(status.number_misscheduled, 1);
        assert_eq!(status.number_ready, 1);
        assert_eq!(status.number_available, Some(1));
        assert_eq!(status.number_unavailable, Some(1));
        assert_eq!(status.updated_number_scheduled, Some(1));
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn taints_repel_unless_tolerated_and_daemon_tolerations_are_added() {
        let plain = daemon_set(json!({}), json!(null));
        let tolerant = daemon_set(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                    "effect": "NoSchedule"}]}),
            json!(null),
        );
        let gpu = node(
            "gpu",
            json!({}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        assert!(!placement(&gpu, &template_spec(&plain)).should_run);
        // A NoSchedule taint does not evict a pod already there.
        assert!(placement(&gpu, &template_spec(&plain)).should_continue_running);
        assert!(placement(&gpu, &template_spec(&tolerant)).should_run);

        let evicting = node(
            "evict",
            json!({}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]),
        );
        let p = placement(&evicting, &template_spec(&tolerant));
        assert!(!p.should_run && !p.should_continue_running);

        // Kubernetes' own lifecycle taints are tolerated by every daemon.
        for (key, effect) in [
            (TAINT_NOT_READY, "NoExecute"),
            (TAINT_UNREACHABLE, "NoExecute"),
            (TAINT_DISK_PRESSURE, "NoSchedule"),
            (TAINT_UNSCHEDULABLE, "NoSchedule"),
        ] {
            let n = node("n", json!({}), json!([{"key": key, "effect": effect}]));
            assert!(placement(&n, &template_spec(&plain)).should_run, "{key}");
        }
        // network-unavailable only for hostNetwork pods.
        let no_net = node(
            "n",
            json!({}),
            json!([{"key": TAINT_NETWORK_UNAVAILABLE, "effect": "NoSchedule"}]),
        );
        assert!(!placement(&no_net, &template_spec(&plain)).should_run);
        let host = daemon_set(json!({"hostNetwork": true}), json!(null));
        assert!(placement(&no_net, &template_spec(&host)).should_run);
        // PreferNoSchedule never keeps a daemon away.
        let soft = node(
            "n",
            json!({}),
            json!([{"key": "x", "effect": "PreferNoSchedule"}]),
        );
        assert!(placement(&soft, &template_spec(&plain)).should_run);

        // Tolerations are added once, after the pod's own.
        let added = daemon_tolerations(&template_spec(&tolerant));
        assert_eq!(added.len(), 7);
        assert_eq!(added[0].key.as_deref(), Some("dedicated"));
        let again = PodSpec {
            tolerations: Some(added.clone()),
            ..Default::default()
        };
        assert_eq!(daemon_tolerations(&again), added);
    }

    #[test]
    fn cordoned_and_deleted_nodes() {
        let ds = daemon_set(json!({}), json!(null));
        let mut cordoned = node("c", json!({}), json!([]));
        cordoned
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        assert!(placement(&cordoned, &template_spec(&ds)).should_run);
        let mut leaving = node("l", json!({}), json!([]));
        leaving.metadata.deletion_timestamp = Some(Time(t(0)));
        let p = placement(&leaving, &template_spec(&ds));
        assert!(!p.should_run && p.should_continue_running);
    }

    #[test]
    fn required_node_affinity_is_honoured() {
        let ds = daemon_set(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                      {"key": "cores", "operator": "Gt", "values": ["4"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}
            ]}}}}),
            json!(null),
        );
        let spec = template_spec(&ds);
        let yes = node("n1", json!({"zone": "a", "cores": "8"}), json!([]));
        let few_cores = node("n2", json!({"zone": "a", "cores": "2"}), json!([]));
        let other_zone = node("n3", json!({"zone": "c", "cores": "8"}), json!([]));
        let special = node("special", json!({}), json!([]));
        assert!(placement(&yes, &spec).should_run);
        assert!(!placement(&few_cores, &spec).should_run);
        assert!(!placement(&other_zone, &spec).should_continue_running);
        assert!(placement(&special, &spec).should_run);
    }

    #[test]
    fn extra_failed_and_orphaned_pods_are_cleaned_up() {
        let ds = daemon_set(json!({}), json!({"type": "OnDelete"}));
        let a = node("a", json!({}), json!([]));
        let b = node("b", json!({}), json!([]));
        let oldest = pod("oldest", "a", "new", true, 0);
        let younger = pod("younger", "a", "new", true, 5);
        let mut failed = pod("failed", "b", "new", false, 0);
        failed.status.as_mut().expect("status").phase = Some("Failed".into());
        let gone = pod("gone", "vanished", "new", true, 0);
        let mut leaving = pod("leaving", "a", "new", true, 9);
        leaving.metadata.deletion_timestamp = Some(Time(t(1)));
        let all = [&younger, &oldest, &failed, &gone, &leaving];
        let p = plan(&ds, &rev(), &[&a, &b], &all, t(100));
        assert_eq!(names(&p.delete), vec!["gone", "younger"]);
        assert_eq!(names(&p.delete_failed), vec!["failed"]);
        // The failed pod no longer counts: b needs a new one.
        assert_eq!(p.create_on, vec!["b"]);
        // A terminating pod is not counted; its replacement is made.
        let only_leaving = plan(&ds, &rev(), &[&a], &[&leaving], t(100));
        assert_eq!(only_leaving.create_on, vec!["a"]);
        assert!(only_leaving.delete.is_empty());
    }

    #[test]
    fn rolling_update_stays_within_max_unavailable() {
        let nodes: Vec<Node> = (0..4)
            .map(|i| node(&format!("n{i}"), json!({}), json!([])))
            .collect();
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let old: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("old{i}"), &format!("n{i}"), "old", true, 0))
            .collect();
        let refs: Vec<&Pod> = old.iter().collect();

        let one = daemon_set(json!({}), rolling(json!(1)));
        let p = plan(&one, &rev(), &node_refs, &refs, t(100));
        assert_eq!(names(&p.delete), vec!["old0"]);
        assert!(p.create_on.is_empty());

        // 30 % of 4 rounds up to 2.
        let pct = daemon_set(json!({}), rolling(json!("30%")));
        assert_eq!(max_unavailable(&pct, 4), 2);
        let p = plan(&pct, &rev(), &node_refs, &refs, t(100));
        assert_eq!(names(&p.delete), vec!["old0", "old1"]);

        // A node without a pod (being replaced) uses up the budget.
        let p = plan(&one, &rev(), &node_refs, &refs[1..], t(100));
        assert_eq!(p.create_on, vec!["n0"]);
        assert!(p.delete.is_empty(), "{:?}", names(&p.delete));

        // An unavailable new pod holds the rollout back...
        let fresh = pod("new0", "n0", "new", false, 50);
        let mut with_new = vec![&fresh];
        with_new.extend(&refs[1..]);
        let p = plan(&one, &rev(), &node_refs, &with_new, t(100));
        assert!(p.delete.is_empty());
        // ...until it is available.
        let ready = pod("new0", "n0", "new", true, 50);
        with_new[0] = &ready;
        let p = plan(&one, &rev(), &node_refs, &with_new, t(100));
        assert_eq!(names(&p.delete), vec!["old1"]);

        // Unavailable old pods are replaced at once, whatever the budget.
        let broken = pod("old1", "n1", "old", false, 0);
        let mut mixed = vec![&fresh, &broken];
        mixed.extend(&refs[2..]);
        let p = plan(&one, &rev(), &node_refs, &mixed, t(100));
        assert_eq!(names(&p.delete), vec!["old1"]);
    }

    #[test]
    fn surge_starts_new_pods_beside_old_ones() {
        let ds = daemon_set(
            json!({}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        );
        let nodes: Vec<Node> = (0..3)
            .map(|i| node(&format!("n{i}"), json!({}), json!([])))
            .collect();
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let old: Vec<Pod> = (0..3)
            .map(|i| pod(&format!("old{i}"), &format!("n{i}"), "old", true, 0))
            .collect();
        let refs: Vec<&Pod> = old.iter().collect();

        // One node at a time gets a new pod; nothing old is deleted yet.
        let p = plan(&ds, &rev(), &node_refs, &refs, t(100));
        assert_eq!(p.create_on, vec!["n0"]);
        assert!(p.delete.is_empty());

        // While the new pod is not available, no other node surges and
        // the old pod stays.
        let starting = pod("new0", "n0", "new", false, 50);
        let mut with_new = refs.clone();
        with_new.push(&starting);
        let p = plan(&ds, &rev(), &node_refs, &with_new, t(100));
        assert!(p.create_on.is_empty(), "{:?}", p.create_on);
        assert!(p.delete.is_empty(), "{:?}", names(&p.delete));

        // Once it is available, the old pod goes and the next node surges.
        let up = pod("new0", "n0", "new", true, 50);
        let mut with_up = refs.clone();
        with_up.push(&up);
        let p = plan(&ds, &rev(), &node_refs, &with_up, t(100));
        assert_eq!(names(&p.delete), vec!["old0"]);
        assert_eq!(p.create_on, vec!["n1"]);

        // An old pod that is not available gets its replacement at once,
        // outside the surge budget (and first).
        let broken = pod("old2", "n2", "old", false, 0);
        let p = plan(
            &ds,
            &rev(),
            &node_refs,
            &[&old[0], &old[1], &broken],
            t(100),
        );
        assert_eq!(p.create_on, vec!["n2", "n0"]);
        assert!(p.delete.is_empty());

        // A second new pod on a node is extra.
        let twin = pod("new0b", "n0", "new", true, 60);
        let p = plan(
            &ds,
            &rev(),
            &node_refs,
            &[&up, &twin, &old[1], &old[2]],
            t(100),
        );
        assert_eq!(names(&p.delete), vec!["new0b"]);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut ds = daemon_set(json!({}), rolling(json!(1)));
        if let Some(s) = ds.spec.as_mut() {
            s.min_ready_seconds = Some(30);
        }
        let n = node("n", json!({}), json!([]));
        let p = pod("p", "n", "new", true, 0);
        let (status, requeue) = compute_status(&ds, &rev(), &[&n], &[&p], t(10));
        assert_eq!((status.number_ready, status.number_available), (1, None));
        assert_eq!(status.number_unavailable, Some(1));
        assert_eq!(requeue, Some(Duration::from_millis(20_100)));
        let (status, requeue) = compute_status(&ds, &rev(), &[&n], &[&p], t(31));
        assert_eq!(status.number_available, Some(1));
        assert_eq!(requeue, None);
    }

    #[test]
    fn on_delete_replaces_only_deleted_pods() {
        let ds = daemon_set(json!({}), json!({"type": "OnDelete"}));
        let a = node("a", json!({}), json!([]));
        let b = node("b", json!({}), json!([]));
        let old_a = pod("old-a", "a", "old", true, 0);
        let p = plan(&ds, &rev(), &[&a, &b], &[&old_a], t(100));
        assert!(p.delete.is_empty());
        assert_eq!(p.create_on, vec!["b"]);
        let (status, _) = compute_status(&ds, &rev(), &[&a, &b], &[&old_a], t(100));
        assert_eq!(status.updated_number_scheduled, None);
        assert_eq!(status.current_number_scheduled, 1);
    }

    #[test]
    fn pods_are_current_by_hash_or_generation() {
        let by_hash = pod("a", "n", "new", true, 0);
        let mut by_generation = pod("b", "n", "other", true, 0);
        by_generation
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert(TEMPLATE_GENERATION_LABEL.into(), "2".into());
        let old = pod("c", "n", "old", true, 0);
        assert!(rev().is_current(&by_hash));
        assert!(rev().is_current(&by_generation));
        assert!(!rev().is_current(&old));
    }

    #[test]
    fn max_unavailable_rounds_up_and_is_at_least_one() {
        let ds = |v| daemon_set(json!({}), rolling(v));
        assert_eq!(max_unavailable(&ds(json!("10%")), 3), 1);
        assert_eq!(max_unavailable(&ds(json!("50%")), 3), 2);
        assert_eq!(max_unavailable(&ds(json!(3)), 10), 3);
        assert_eq!(max_unavailable(&ds(json!("0%")), 10), 1);
        assert_eq!(max_unavailable(&ds(json!("25%")), 0), 1);
        let surge = daemon_set(
            json!({}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        );
        assert_eq!(max_surge(&surge, 10), 1);
        assert_eq!(max_surge(&ds(json!(1)), 10), 0);
        let pct = daemon_set(
            json!({}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}),
        );
        assert_eq!(max_surge(&pct, 5), 2);
        let on_delete = daemon_set(json!({}), json!({"type": "OnDelete"}));
        assert_eq!(max_surge(&on_delete, 5), 0);
    }
}
