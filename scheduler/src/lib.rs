//! The scheduler: binds every pod that has no node yet to a node that can
//! run it, the way kube-scheduler does, with its filters, its scoring and
//! its messages.
//!
//! One control loop (`controller::run`) wakes when pods, nodes or node
//! heartbeats change (and on a slow resync), takes a snapshot of the caches,
//! and walks the pending pods in priority order. For each pod the filters
//! ([`filter`]) keep the nodes that can take it, the scorers ([`score`])
//! pick one, and the binding is written as one guarded update of the pod
//! (`spec.nodeName` plus `PodScheduled=True`) against the revision that was
//! read. A concurrent writer — another scheduler replica included — makes
//! the update fail instead of being overwritten, so a pod is bound at most
//! once; the scheduler then reads the pod again and carries on. Placement is
//! optimistic, as in Nomad and kube-scheduler: what a pass binds is counted
//! in its snapshot (and remembered until the caches show it), but two
//! replicas can still fill the same node at once.
//!
//! A pod no node can take gets `PodScheduled=False`, reason
//! `Unschedulable`, and kube-scheduler's message (`0/3 nodes are available:
//! 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.`),
//! written only when it changes.

pub mod filter;
pub mod heartbeats;
pub mod info;
pub mod resources;
pub mod score;
#[cfg(test)]
mod testutil;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commitd_api::controller::{self, ApplyGate, Requeue};
use commitd_api::meta;
use commitd_api::reflector::{reflect, Cache};
use commitd_api::{Store, StoreError};
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition, PodStatus,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::filter::{run_filters, unschedulable_message, Filter};
use crate::heartbeats::Heartbeats;
use crate::info::{NodeInfo, PodInfo};
use crate::score::Scorer;
use crate::volumes::StorageView;

/// The `spec.schedulerName` this scheduler serves (and the one Kubernetes
/// defaults to); pods naming another scheduler are left to it.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// The pod condition the scheduler owns.
pub const POD_SCHEDULED: &str = "PodScheduled";
/// Reason of `PodScheduled=False` when no node fits.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
/// Reason of `PodScheduled=False` while scheduling gates remain.
pub const REASON_SCHEDULING_GATED: &str = "SchedulingGated";
/// Reason of `PodScheduled=False` when the pod cannot be evaluated.
pub const REASON_SCHEDULER_ERROR: &str = "SchedulerError";
/// Kubernetes' message for a pod with scheduling gates.
pub const MESSAGE_SCHEDULING_GATED: &str =
    "Scheduling is blocked due to non-empty scheduling gates";

/// How long the loop sleeps with nothing changing before it looks again
/// (unschedulable pods are retried at least this often).
const RESYNC: Duration = Duration::from_secs(30);
/// How often one pod is re-read and retried within a pass when its writes
/// keep conflicting.
const MAX_ATTEMPTS: usize = 5;
/// How long a binding this scheduler wrote counts even if the pod cache
/// does not show it yet.
const ASSUME_TTL: Duration = Duration::from_secs(60);

/// Runs the scheduler until `cancel` fires: starts the pod, node and
/// heartbeat caches, waits for their first lists, then schedules on every
/// change.
pub async fn run(store: Store, cancel: CancellationToken) -> anyhow::Result<()> {
    let watches = cancel.child_token();
    let _stop_watches = watches.clone().drop_guard();
    let pods = reflect::<Pod>(store.clone(), watches.clone());
    let nodes = reflect::<Node>(store.clone(), watches.clone());
    let claims = reflect::<PersistentVolumeClaim>(store.clone(), watches.clone());
    let volumes = reflect::<PersistentVolume>(store.clone(), watches.clone());
    let heartbeats = Heartbeats::watch(store.clone(), watches.clone());
    // No pod is placed while a commit is half-applied.
    let gate = ApplyGate::watch(store.clone(), watches.clone());
    let synced = async {
        pods.ready().await;
        nodes.ready().await;
        heartbeats.ready().await;
        claims.ready().await;
        volumes.ready().await;
    };
    tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        _ = synced => {}
    }
    info!("scheduler caches synced; scheduling");
    let triggers = vec![
        pods.changes(),
        nodes.changes(),
        heartbeats.changes(),
        claims.changes(),
        volumes.changes(),
    ];
    let scheduler = Scheduler::new(store, pods, nodes, heartbeats).with_storage(claims, volumes);
    let scheduler = &scheduler;
    controller::gated(
        gate,
        controller::run("scheduler", triggers, RESYNC, cancel, || {
            scheduler.schedule_pending()
        }),
    )
    .await;
    Ok(())
}

/// A binding this scheduler wrote that the pod cache may not show yet.
#[derive(Debug, Clone)]
struct Assumed {
    uid: Option<String>,
    node: String,
    revision: i64,
    at: Instant,
}

/// The scheduler's state between passes: the caches it reads, its filters
/// and scorers, and the bindings it wrote that the caches have not caught
/// up with (kube-scheduler's "assumed" pods), so a fast second pass does
/// not place pods as if the first had not happened.
pub struct Scheduler {
    store: Store,
    pods: Cache<Pod>,
    nodes: Cache<Node>,
    heartbeats: Heartbeats,
    filters: Vec<Box<dyn Filter>>,
    scorers: Vec<Box<dyn Scorer>>,
    assumed: Mutex<HashMap<String, Assumed>>,
    /// Claims and volumes, for pods that mount claims ([`Scheduler::with_storage`];
    /// `None`: no claim is known, so pods that mount one wait).
    storage: Option<(Cache<PersistentVolumeClaim>, Cache<PersistentVolume>)>,
}

/// The nodes of one pass with what is bound to them, in name order.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every node, sorted by name.
    pub nodes: Vec<NodeInfo>,
    by_name: HashMap<String, usize>,
    /// The claims and volumes pods mount.
    pub storage: StorageView,
}

impl Snapshot {
    /// A snapshot of `nodes` with nothing bound yet.
    pub fn new(mut nodes: Vec<NodeInfo>) -> Snapshot {
        nodes.sort_by(|a, b| a.name().cmp(b.name()));
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_string(), i))
            .collect();
        Snapshot {
            nodes,
            by_name,
            storage: StorageView::default(),
        }
    }

    /// Accounts for a pod bound to `node` (ignored if the node is unknown).
    pub fn add_pod(&mut self, node: &str, pod: &PodInfo) {
        if let Some(i) = self.by_name.get(node) {
            self.nodes[*i].add_pod(pod);
        }
    }
}

/// What to do with one pending pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Bind it to this node.
    Bind(String),
    /// Leave it pending, with this `PodScheduled=False` reason and message.
    Pending {
        /// The condition's reason.
        reason: &'static str,
        /// The condition's message.
        message: String,
    },
}

impl Scheduler {
    /// A scheduler over ready caches, with kube-scheduler's default filters
    /// and least-allocated scoring.
    pub fn new(
        store: Store,
        pods: Cache<Pod>,
        nodes: Cache<Node>,
        heartbeats: Heartbeats,
    ) -> Scheduler {
        Scheduler {
            store,
            pods,
            nodes,
            heartbeats,
            filters: filter::default_filters(),
            scorers: score::default_scorers(),
            assumed: Mutex::new(HashMap::new()),
            storage: None,
        }
    }

    /// The same scheduler, reading claims and volumes from these caches
    /// so pods wait for their claims and go where their volumes are.
    pub fn with_storage(
        mut self,
        claims: Cache<PersistentVolumeClaim>,
        volumes: Cache<PersistentVolume>,
    ) -> Scheduler {
        self.storage = Some((claims, volumes));
        self
    }

    /// One pass: snapshot the caches and schedule every pending pod, in
    /// priority order. Stops at the first store error (etcd is likely
    /// unreachable) so the loop backs off.
    pub async fn schedule_pending(&self) -> anyhow::Result<Requeue> {
        let (mut snapshot, pending) = {
            let mut assumed = self.assumed.lock().unwrap_or_else(|p| p.into_inner());
            take_snapshot(
                self.nodes.list(),
                self.pods.list(),
                |node| self.heartbeats.is_alive(node),
                &mut assumed,
            )
        };
        if let Some((claims, volumes)) = &self.storage {
            snapshot.storage = StorageView::new(claims.list(), volumes.list());
        }
        if !pending.is_empty() {
            debug!(
                pending = pending.len(),
                nodes = snapshot.nodes.len(),
                "scheduling pass"
            );
        }
        for pod in pending {
            let key = meta::display_key(pod.as_ref());
            let span = info_span!("schedule", pod = %key);
            self.schedule_one(&mut snapshot, pod)
                .instrument(span)
                .await
                .map_err(|e| e.context(format!("scheduling {key}")))?;
        }
        Ok(None)
    }

    async fn schedule_one(&self, snapshot: &mut Snapshot, mut pod: Arc<Pod>) -> anyhow::Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let result = match decide(&self.filters, &self.scorers, snapshot, &pod) {
                Decision::Bind(node) => match self.bind(&pod, &node).await {
                    Ok(stored) => {
                        info!(node = %node, "bound");
                        self.account(snapshot, stored, &node);
                        return Ok(());
                    }
                    Err(e) => Err(e),
                },
                Decision::Pending { reason, message } => {
                    self.leave_pending(&pod, reason, &message).await
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_conflict() => {
                    debug!("the pod changed since it was read; reading it again")
                }
                Err(e) => return Err(e.into()),
            }
            let fresh = self
                .store
                .get::<Pod>(meta::namespace(pod.as_ref()), meta::name(pod.as_ref()))
                .await?;
            let Some(fresh) = fresh else {
                debug!("the pod was deleted");
                return Ok(());
            };
            if fresh.metadata.uid != pod.metadata.uid {
                debug!("the pod was replaced; the next pass schedules the new one");
                return Ok(());
            }
            if !wants_scheduling(&fresh) {
                if let Some(node) = bound_node(&fresh).map(str::to_string) {
                    info!(node = %node, "bound by another scheduler");
                    self.account(snapshot, fresh, &node);
                }
                return Ok(());
            }
            pod = Arc::new(fresh);
        }
        anyhow::bail!("the pod kept changing under {MAX_ATTEMPTS} attempts; retrying later")
    }

    /// Counts a bound pod in this pass and remembers it for the next ones.
    fn account(&self, snapshot: &mut Snapshot, pod: Pod, node: &str) {
        let revision = pod
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        let key = meta::display_key(&pod);
        let uid = pod.metadata.uid.clone();
        snapshot.add_pod(node, &PodInfo::lenient(Arc::new(pod)));
        let mut assumed = self.assumed.lock().unwrap_or_else(|p| p.into_inner());
        assumed.insert(
            key,
            Assumed {
                uid,
                node: node.to_string(),
                revision,
                at: Instant::now(),
            },
        );
    }

    /// Writes `spec.nodeName` and `PodScheduled=True` in one update guarded
    /// by the revision the pod was read at.
    async fn bind(&self, pod: &Pod, node: &str) -> Result<Pod, StoreError> {
        let mut bound = pod.clone();
        bound.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        let condition = PodCondition {
            type_: POD_SCHEDULED.to_string(),
            status: "True".to_string(),
            observed_generation: bound.metadata.generation,
            ..Default::default()
        };
        update_condition(
            bound.status.get_or_insert_with(PodStatus::default),
            condition,
        );
        self.store.update(bound).await
    }

    /// Sets `PodScheduled=False` with `reason` and `message`, writing only
    /// if that changes the pod.
    async fn leave_pending(
        &self,
        pod: &Pod,
        reason: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut pending = pod.clone();
        let condition = PodCondition {
            type_: POD_SCHEDULED.to_string(),
            status: "False".to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            observed_generation: pending.metadata.generation,
            ..Default::default()
        };
        if !update_condition(
            pending.status.get_or_insert_with(PodStatus::default),
            condition,
        ) {
            return Ok(());
        }
        info!(reason, message, "pending");
        self.store.update(pending).await.map(|_| ())
    }
}

/// Builds one pass's snapshot from the caches: every node with the pods
/// bound to it (and the bindings this scheduler wrote that the cache does
/// not show yet), and the pods waiting for this scheduler, in the order
/// they are scheduled: higher `spec.priority` first, then older first
/// (kube-scheduler's PrioritySort), then by name for determinism.
fn take_snapshot(
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<Pod>>,
    alive: impl Fn(&str) -> bool,
    assumed: &mut HashMap<String, Assumed>,
) -> (Snapshot, Vec<Arc<Pod>>) {
    let nodes = nodes
        .into_iter()
        .map(|n| {
            let heartbeat = alive(meta::name(n.as_ref()));
            NodeInfo::new(n, heartbeat)
        })
        .collect();
    let mut snapshot = Snapshot::new(nodes);
    let mut pending = Vec::new();
    let mut seen = HashSet::new();
    for pod in pods {
        let key = meta::display_key(pod.as_ref());
        seen.insert(key.clone());
        if is_terminal(&pod) {
            continue;
        }
        let node = match bound_node(&pod) {
            Some(node) => {
                assumed.remove(&key);
                Some(node.to_string())
            }
            None => match assumed.get(&key) {
                Some(a)
                    if a.uid == pod.metadata.uid
                        && revision(&pod) < a.revision
                        && a.at.elapsed() < ASSUME_TTL =>
                {
                    Some(a.node.clone())
                }
                Some(_) => {
                    assumed.remove(&key);
                    None
                }
                None => None,
            },
        };
        match node {
            Some(node) => snapshot.add_pod(&node, &PodInfo::lenient(pod)),
            None if wants_scheduling(&pod) => pending.push(pod),
            None => {}
        }
    }
    assumed.retain(|key, _| seen.contains(key));
    pending.sort_by(|a, b| {
        let priority = |p: &Pod| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        priority(b)
            .cmp(&priority(a))
            .then_with(|| created(a).cmp(&created(b)))
            .then_with(|| meta::display_key(a.as_ref()).cmp(&meta::display_key(b.as_ref())))
    });
    (snapshot, pending)
}

/// Chooses a node for one pod, or says why it stays pending.
pub fn decide(
    filters: &[Box<dyn Filter>],
    scorers: &[Box<dyn Scorer>],
    snapshot: &Snapshot,
    pod: &Arc<Pod>,
) -> Decision {
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    if gated {
        return Decision::Pending {
            reason: REASON_SCHEDULING_GATED,
            message: MESSAGE_SCHEDULING_GATED.to_string(),
        };
    }
    let mut info = match PodInfo::new(pod.clone()) {
        Ok(info) => info,
        Err(e) => {
            return Decision::Pending {
                reason: REASON_SCHEDULER_ERROR,
                message: e.to_string(),
            }
        }
    };
    if snapshot.nodes.is_empty() {
        return Decision::Pending {
            reason: REASON_UNSCHEDULABLE,
            message: filter::NO_NODES_AVAILABLE.to_string(),
        };
    }
    // VolumeBinding's PreFilter: rejects the pod for every node at once.
    match snapshot.storage.pod_volumes(pod) {
        Ok(volumes) => info.volumes = volumes,
        Err(message) => {
            return Decision::Pending {
                reason: REASON_UNSCHEDULABLE,
                message: format!("0/{} nodes are available: {message}.", snapshot.nodes.len()),
            }
        }
    }
    let mut feasible = Vec::new();
    let mut rejections = Vec::new();
    for node in &snapshot.nodes {
        match run_filters(filters, &info, node) {
            Ok(()) => feasible.push(node),
            Err(reasons) => {
                debug!(node = %node.name(), ?reasons, "filtered out");
                rejections.push(reasons);
            }
        }
    }
    match score::select(scorers, &info, feasible) {
        Some(node) => Decision::Bind(node.name().to_string()),
        None => Decision::Pending {
            reason: REASON_UNSCHEDULABLE,
            message: unschedulable_message(
                snapshot.nodes.len(),
                rejections.iter().map(Vec::as_slice),
            ),
        },
    }
}

/// Whether this scheduler should place the pod: no node yet, not being
/// deleted, not finished, and asking for this scheduler.
pub fn wants_scheduling(pod: &Pod) -> bool {
    let scheduler = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or(SCHEDULER_NAME);
    bound_node(pod).is_none()
        && !meta::is_terminating(&pod.metadata)
        && !is_terminal(pod)
        && scheduler == SCHEDULER_NAME
}

/// The node a pod is bound to.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether the pod has finished (and so no longer occupies a node).
fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn revision(pod: &Pod) -> i64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Sets a pod condition as Kubernetes' `UpdatePodCondition` does: the
/// transition time moves only when the status changes; returns whether
/// anything changed (so unchanged conditions are never rewritten).
pub fn update_condition(status: &mut PodStatus, mut condition: PodCondition) -> bool {
    condition.last_transition_time = Some(meta::now());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let Some(old) = conditions.iter_mut().find(|c| c.type_ == condition.type_) else {
        conditions.push(condition);
        return true;
    };
    if condition.status == old.status {
        condition.last_transition_time = old.last_transition_time.clone();
    }
    let unchanged = condition.status == old.status
        && condition.reason == old.reason
        && condition.message == old.message
        && condition.last_probe_time == old.last_probe_time
        && condition.observed_generation == old.observed_generation;
    *old = condition;
    !unchanged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::default_filters;
    use crate::score::default_scorers;
    use crate::testutil::*;

    fn snapshot_of(
        nodes: Vec<k8s_openapi::api::core::v1::Node>,
        pods: Vec<Pod>,
    ) -> (Snapshot, Vec<Arc<Pod>>) {
        take_snapshot(
            nodes.into_iter().map(Arc::new).collect(),
            pods.into_iter().map(Arc::new).collect(),
            |_| true,
            &mut HashMap::new(),
        )
    }

    fn decide_for(snapshot: &Snapshot, pod: Pod) -> Decision {
        decide(
            &default_filters(),
            &default_scorers(),
            snapshot,
            &Arc::new(pod),
        )
    }

    fn pending(message: &str) -> Decision {
        Decision::Pending {
            reason: REASON_UNSCHEDULABLE,
            message: message.to_string(),
        }
    }

    #[test]
    fn only_unbound_live_pods_for_this_scheduler_are_scheduled() {
        assert!(wants_scheduling(&pod("p", "1", "1Gi")));
        let mut other = pod("p", "1", "1Gi");
        if let Some(s) = other.spec.as_mut() {
            s.scheduler_name = Some("my-scheduler".into());
        }
        assert!(!wants_scheduling(&other));
        let mut named_default = pod("p", "1", "1Gi");
        if let Some(s) = named_default.spec.as_mut() {
            s.scheduler_name = Some(SCHEDULER_NAME.into());
        }
        assert!(wants_scheduling(&named_default));
        assert!(!wants_scheduling(&bound(pod("p", "1", "1Gi"), "n1")));
        let mut deleting = pod("p", "1", "1Gi");
        deleting.metadata.deletion_timestamp = Some(meta::now());
        assert!(!wants_scheduling(&deleting));
    }

    #[test]
    fn pending_pods_go_by_priority_then_age_then_name() {
        let mut high = pod("z-high", "1", "1Gi");
        if let Some(s) = high.spec.as_mut() {
            s.priority = Some(1000);
        }
        let old = created_at(pod("y-old", "1", "1Gi"), "2024-01-01T00:00:00Z");
        let b = created_at(pod("b", "1", "1Gi"), "2024-06-01T00:00:00Z");
        let a = created_at(pod("a", "1", "1Gi"), "2024-06-01T00:00:00Z");
        let (_, pending) = snapshot_of(vec![], vec![a, b, old, high]);
        let names: Vec<&str> = pending.iter().map(|p| meta::name(p.as_ref())).collect();
        assert_eq!(names, ["z-high", "y-old", "a", "b"]);
    }

    #[test]
    fn bound_pods_take_room_and_finished_ones_do_not() {
        let mut done = bound(pod("done", "2", "1Gi"), "n1");
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        let (snapshot, pending) = snapshot_of(
            vec![node("n1", "4", "8Gi")],
            vec![
                bound(pod("a", "1", "1Gi"), "n1"),
                done,
                bound(pod("elsewhere", "1", "1Gi"), "gone"),
            ],
        );
        assert!(pending.is_empty());
        assert_eq!(snapshot.nodes[0].requested.milli_cpu, 1000);
        assert_eq!(snapshot.nodes[0].pod_count, 1);
    }

    #[test]
    fn assumed_bindings_count_until_the_cache_shows_them() {
        let mut assumed = HashMap::new();
        let mut p = pod("p", "1", "1Gi");
        p.metadata.uid = Some("u1".into());
        p.metadata.resource_version = Some("5".into());
        assumed.insert(
            "default/p".to_string(),
            Assumed {
                uid: Some("u1".into()),
                node: "n1".into(),
                revision: 7,
                at: Instant::now(),
            },
        );
        let nodes = vec![Arc::new(node("n1", "4", "8Gi"))];
        let (snapshot, pending) = take_snapshot(
            nodes.clone(),
            vec![Arc::new(p.clone())],
            |_| true,
            &mut assumed,
        );
        assert!(
            pending.is_empty(),
            "the stale cache entry is not scheduled again"
        );
        assert_eq!(snapshot.nodes[0].requested.milli_cpu, 1000);
        assert!(assumed.contains_key("default/p"));

        // The cache caught up: the binding is counted from the pod itself.
        let mut caught_up = bound(p.clone(), "n1");
        caught_up.metadata.resource_version = Some("7".into());
        let (snapshot, _) = take_snapshot(
            nodes.clone(),
            vec![Arc::new(caught_up)],
            |_| true,
            &mut assumed,
        );
        assert_eq!(snapshot.nodes[0].pod_count, 1);
        assert!(assumed.is_empty());

        // A pod that went away is forgotten.
        assumed.insert(
            "default/p".to_string(),
            Assumed {
                uid: Some("u1".into()),
                node: "n1".into(),
                revision: 7,
                at: Instant::now(),
            },
        );
        let _ = take_snapshot(nodes, vec![], |_| true, &mut assumed);
        assert!(assumed.is_empty());
    }

    #[test]
    fn pods_spread_to_the_least_allocated_node() {
        let (mut snapshot, _) = snapshot_of(
            vec![node("node-b", "2", "4Gi"), node("node-a", "2", "4Gi")],
            vec![],
        );
        let mut placed = Vec::new();
        for i in 0..4 {
            let p = pod(&format!("p{i}"), "250m", "256Mi");
            let Decision::Bind(n) = decide_for(&snapshot, p.clone()) else {
                panic!("p{i} should fit");
            };
            snapshot.add_pod(&n, &info::PodInfo::lenient(Arc::new(p)));
            placed.push(n);
        }
        assert_eq!(placed, ["node-a", "node-b", "node-a", "node-b"]);
    }

    #[test]
    fn unschedulable_pods_get_kube_scheduler_messages() {
        let (snapshot, _) = snapshot_of(vec![node("n1", "2", "4Gi")], vec![]);
        assert_eq!(
            decide_for(&snapshot, pod("big", "100m", "64Gi")),
            pending("0/1 nodes are available: 1 Insufficient memory.")
        );

        let (snapshot, _) = snapshot_of(
            vec![
                node("n1", "1", "4Gi"),
                with_label(node("n2", "8", "4Gi"), "disk", "hdd"),
                node("n3", "8", "4Gi"),
            ],
            vec![bound(pod("x", "0", "0"), "n1")],
        );
        let mut p = pod("p", "2", "1Gi");
        set_node_selector(&mut p, &[("disk", "ssd")]);
        assert_eq!(
            decide_for(&snapshot, p),
            pending(
                "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
            )
        );
        let p = pod("p", "2", "1Gi");
        assert_eq!(decide_for(&snapshot, p), Decision::Bind("n2".into()));

        let (snapshot, _) = snapshot_of(vec![], vec![]);
        assert_eq!(
            decide_for(&snapshot, pod("p", "1", "1Gi")),
            pending("no nodes available to schedule pods")
        );
    }

    #[test]
    fn nodes_without_heartbeat_or_readiness_get_nothing() {
        let mut not_ready = node("a-not-ready", "64", "256Gi");
        set_ready(&mut not_ready, "False");
        let nodes = vec![
            Arc::new(node("a-stale", "64", "256Gi")),
            Arc::new(not_ready),
            Arc::new(node("z-small", "1", "1Gi")),
        ];
        let (snapshot, _) = take_snapshot(
            nodes.clone(),
            vec![],
            |n| n != "a-stale",
            &mut HashMap::new(),
        );
        assert_eq!(
            decide_for(&snapshot, pod("p", "100m", "64Mi")),
            Decision::Bind("z-small".into())
        );
        assert_eq!(
            decide_for(&snapshot, pod("p", "2", "64Mi")),
            pending(
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint(s)."
            )
        );
    }

    #[test]
    fn gated_and_invalid_pods_say_why() {
        let (snapshot, _) = snapshot_of(vec![node("n1", "2", "4Gi")], vec![]);
        let mut gated = pod("p", "1", "1Gi");
        if let Some(s) = gated.spec.as_mut() {
            s.scheduling_gates = Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: "example.com/wait".into(),
            }]);
        }
        assert_eq!(
            decide_for(&snapshot, gated),
            Decision::Pending {
                reason: REASON_SCHEDULING_GATED,
                message: MESSAGE_SCHEDULING_GATED.into()
            }
        );
        let Decision::Pending { reason, message } = decide_for(&snapshot, pod("p", "one", "1Gi"))
        else {
            panic!("an invalid quantity cannot be scheduled");
        };
        assert_eq!(reason, REASON_SCHEDULER_ERROR);
        assert!(
            message
                .starts_with("spec.containers[0].resources.requests[cpu]: Invalid value: \"one\""),
            "{message}"
        );
    }

    #[test]
    fn conditions_change_only_when_they_differ() {
        let mut status = PodStatus::default();
        let cond = |status: &str, message: &str| PodCondition {
            type_: POD_SCHEDULED.into(),
            status: status.into(),
            reason: Some(REASON_UNSCHEDULABLE.into()),
            message: Some(message.into()),
            ..Default::default()
        };
        assert!(update_condition(&mut status, cond("False", "a")));
        let first = status
            .conditions
            .as_ref()
            .and_then(|c| c[0].last_transition_time.clone());
        assert!(!update_condition(&mut status, cond("False", "a")));
        assert!(update_condition(&mut status, cond("False", "b")));
        let conditions = status.conditions.clone().unwrap_or_default();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message.as_deref(), Some("b"));
        assert_eq!(
            conditions[0].last_transition_time, first,
            "same status keeps its transition time"
        );
        assert!(update_condition(&mut status, cond("True", "b")));
    }

    #[test]
    fn pods_wait_for_their_claims_and_follow_their_volumes() {
        use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
        let claim = |name: &str, volume: Option<&str>| -> Arc<PersistentVolumeClaim> {
            let phase = if volume.is_some() { "Bound" } else { "Pending" };
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"volumeName": volume},
                    "status": {"phase": phase}
                }))
                .expect("claim"),
            )
        };
        let pinned: Arc<PersistentVolume> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "pvc-1"},
                "spec": {"hostPath": {"path": "/lp/pvc-1"},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}]}}}
            }))
            .expect("volume"),
        );
        let mounting = |claim: &str| {
            let mut p = pod("p", "100m", "64Mi");
            if let Some(spec) = p.spec.as_mut() {
                spec.volumes = Some(vec![serde_json::from_value(serde_json::json!(
                    {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
                ))
                .expect("volume")]);
            }
            p
        };
        let (mut snapshot, _) =
            snapshot_of(vec![node("a", "4", "8Gi"), node("b", "4", "8Gi")], vec![]);
        snapshot.storage = volumes::StorageView::new(
            vec![claim("bound", Some("pvc-1")), claim("waiting", None)],
            vec![pinned],
        );
        assert_eq!(
            decide_for(&snapshot, mounting("missing")),
            pending("0/2 nodes are available: persistentvolumeclaim \"missing\" not found.")
        );
        assert_eq!(
            decide_for(&snapshot, mounting("waiting")),
            pending("0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.")
        );
        assert_eq!(
            decide_for(&snapshot, mounting("bound")),
            Decision::Bind("b".into())
        );
        // Node b is full: a's affinity conflict and b's shortage both show.
        let (mut full, _) =
            snapshot_of(vec![node("a", "4", "8Gi"), node("b", "50m", "8Gi")], vec![]);
        full.storage = snapshot.storage.clone();
        assert_eq!(
            decide_for(&full, mounting("bound")),
            pending("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had volume node affinity conflict.")
        );
    }
}
