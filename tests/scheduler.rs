//! The scheduler against a real etcd: nodes and pods are written through
//! the store as the node agent and the reconciler would write them, and
//! every expectation is polled for with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context};
use commitd::cluster::etcd::{self, Etcd, EtcdOptions};
use commitd_api::keys;
use commitd_api::meta;
use commitd_api::store::decode;
use commitd_api::Store;
use etcd_client::{EventType, PutOptions, WatchOptions};
use k8s_openapi::api::core::v1::{
    Container, Node, NodeCondition, NodeStatus, Pod, PodCondition, PodSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any single expectation may take to come true.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often expectations are checked.
const POLL: Duration = Duration::from_millis(50);
/// Heartbeat lease TTL: far longer than any test, so leases only go away
/// when a test revokes them.
const LEASE_TTL: i64 = 600;

/// A private etcd with schedulers running against it.
struct Cluster {
    etcd: Option<Etcd>,
    store: Store,
    cancel: CancellationToken,
    schedulers: Vec<JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

impl Cluster {
    async fn start() -> anyhow::Result<Cluster> {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let dir = tempfile::tempdir()?;
        let etcd = etcd::start(EtcdOptions {
            data_dir: dir.path().join("etcd"),
            client_port: None,
            extra_args: Vec::new(),
        })
        .await?;
        let store = Store::connect(std::slice::from_ref(&etcd.endpoint)).await?;
        Ok(Cluster {
            etcd: Some(etcd),
            store,
            cancel: CancellationToken::new(),
            schedulers: Vec::new(),
            _dir: dir,
        })
    }

    /// Starts one more scheduler replica.
    fn run_scheduler(&mut self) {
        let store = self.store.clone();
        let cancel = self.cancel.child_token();
        self.schedulers
            .push(tokio::spawn(commitd_scheduler::run(store, cancel)));
    }

    /// Registers a Ready node; with `heartbeat`, also its heartbeat key on
    /// a lease, whose id is returned.
    async fn add_node(
        &self,
        name: &str,
        cpu: &str,
        memory: &str,
        heartbeat: bool,
    ) -> anyhow::Result<Option<i64>> {
        self.store.create(node(name, cpu, memory)).await?;
        if heartbeat {
            return self.heartbeat(name).await.map(Some);
        }
        Ok(None)
    }

    /// Puts the node's heartbeat key on a fresh lease.
    async fn heartbeat(&self, name: &str) -> anyhow::Result<i64> {
        let mut client = self.store.client();
        let lease = client.lease_grant(LEASE_TTL, None).await?.id();
        client
            .put(
                keys::node_lease_key(name),
                name,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(lease)
    }

    async fn add_pod(&self, pod: Pod) -> anyhow::Result<Pod> {
        Ok(self.store.create(pod).await?)
    }

    async fn get_pod(&self, name: &str) -> anyhow::Result<Pod> {
        self.store
            .get::<Pod>(Some("default"), name)
            .await?
            .with_context(|| format!("pod {name} is gone"))
    }

    /// Waits until the pod is bound, returning its node.
    async fn bound_node(&self, name: &str) -> anyhow::Result<String> {
        eventually(&format!("pod {name} is bound"), || async {
            let pod = self.get_pod(name).await?;
            Ok(node_name(&pod).map(str::to_string))
        })
        .await
    }

    /// Stops the schedulers, then etcd.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for s in self.schedulers.drain(..) {
            s.await??;
        }
        if let Some(etcd) = self.etcd.take() {
            etcd.stop().await?;
        }
        Ok(())
    }
}

/// Polls `check` until it yields a value, failing after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::from("not yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {DEADLINE:?} waiting until {what} ({last})");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn node(name: &str, cpu: &str, memory: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            capacity: Some(quantities(&[
                ("cpu", cpu),
                ("memory", memory),
                ("pods", "110"),
            ])),
            allocatable: Some(quantities(&[
                ("cpu", cpu),
                ("memory", memory),
                ("pods", "110"),
            ])),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some("busybox".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(quantities(&[("cpu", cpu), ("memory", memory)])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn scheduled_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
}

/// Waits until the pod is pending with exactly this message; returns the
/// pod as read.
async fn pending_with(cluster: &Cluster, name: &str, message: &str) -> anyhow::Result<Pod> {
    eventually(
        &format!("pod {name} is unschedulable with {message:?}"),
        || async {
            let pod = cluster.get_pod(name).await?;
            let Some(c) = scheduled_condition(&pod) else {
                return Ok(None);
            };
            if node_name(&pod).is_some() {
                bail!("pod {name} was bound");
            }
            let matches = c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message);
            if !matches {
                bail!("condition is {c:?}");
            }
            Ok(Some(pod))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_and_spread_least_allocated() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    cluster.add_node("node-a", "2", "4Gi", true).await?;
    cluster.add_node("node-b", "2", "4Gi", true).await?;
    cluster.run_scheduler();

    let mut other = pod("other-scheduler", "100m", "64Mi");
    if let Some(spec) = other.spec.as_mut() {
        spec.scheduler_name = Some("my-scheduler".into());
    }
    cluster.add_pod(other).await?;
    for i in 0..4 {
        cluster
            .add_pod(pod(&format!("web-{i}"), "250m", "256Mi"))
            .await?;
    }

    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..4 {
        let name = format!("web-{i}");
        let node = cluster.bound_node(&name).await?;
        let pod = cluster.get_pod(&name).await?;
        let condition = scheduled_condition(&pod).context("PodScheduled is set")?;
        assert_eq!(condition.status, "True", "{name}: {condition:?}");
        assert!(condition.last_transition_time.is_some());
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.get("node-a"), Some(&2), "{per_node:?}");
    assert_eq!(per_node.get("node-b"), Some(&2), "{per_node:?}");

    // A pod for another scheduler is left alone: created before the others,
    // it was seen by the passes that bound them.
    let other = cluster.get_pod("other-scheduler").await?;
    assert_eq!(node_name(&other), None);
    assert!(scheduled_condition(&other).is_none());

    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_too_big_waits_with_the_reason_until_a_node_fits() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    cluster.add_node("node-a", "2", "4Gi", true).await?;
    cluster.run_scheduler();

    cluster.add_pod(pod("big", "1", "12Gi")).await?;
    let waiting = pending_with(
        &cluster,
        "big",
        "0/1 nodes are available: 1 Insufficient memory.",
    )
    .await?;

    // Another pass (binding a small pod) does not rewrite the unchanged
    // condition.
    cluster.add_pod(pod("small", "100m", "64Mi")).await?;
    assert_eq!(cluster.bound_node("small").await?, "node-a");
    let after = cluster.get_pod("big").await?;
    assert_eq!(
        after.metadata.resource_version, waiting.metadata.resource_version,
        "the unchanged condition was written again"
    );

    // A big enough node appears: the pod is bound to it.
    cluster.add_node("node-big", "4", "16Gi", true).await?;
    assert_eq!(cluster.bound_node("big").await?, "node-big");
    let bound = cluster.get_pod("big").await?;
    let condition = scheduled_condition(&bound).context("PodScheduled is set")?;
    assert_eq!(condition.status, "True");
    assert_eq!(condition.reason, None);

    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_heartbeat_is_gone_receive_no_pods() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    // The stale node is far bigger, so least-allocated would prefer it.
    let stale_lease = cluster
        .add_node("node-stale", "64", "256Gi", true)
        .await?
        .context("lease")?;
    cluster.store.client().lease_revoke(stale_lease).await?;
    cluster.add_node("node-live", "4", "8Gi", true).await?;
    cluster.run_scheduler();

    for i in 0..3 {
        cluster
            .add_pod(pod(&format!("p-{i}"), "500m", "512Mi"))
            .await?;
    }
    for i in 0..3 {
        assert_eq!(cluster.bound_node(&format!("p-{i}")).await?, "node-live");
    }

    cluster.add_pod(pod("needs-stale", "16", "1Gi")).await?;
    pending_with(
        &cluster,
        "needs-stale",
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint(s).",
    )
    .await?;

    // The node's agent heartbeats again: the pod goes there.
    cluster.heartbeat("node-stale").await?;
    assert_eq!(cluster.bound_node("needs-stale").await?, "node-stale");

    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_bind_a_pod_twice() -> anyhow::Result<()> {
    const PODS: usize = 30;
    let mut cluster = Cluster::start().await?;
    for name in ["node-a", "node-b", "node-c"] {
        cluster.add_node(name, "8", "16Gi", true).await?;
    }

    // Record every write to a pod key from here on.
    let prefix = keys::kind_prefix(commitd_api::Kind::Pod);
    let start = cluster
        .store
        .list_prefix(&prefix)
        .await?
        .revision
        .saturating_add(1);
    let mut history = cluster
        .store
        .client()
        .watch(
            prefix.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await?;

    // Both schedulers start on the same pending pods, so they race for
    // every one of them.
    for i in 0..PODS {
        cluster
            .add_pod(pod(&format!("p-{i:02}"), "100m", "128Mi"))
            .await?;
    }
    cluster.run_scheduler();
    cluster.run_scheduler();

    let mut last_revision = 0;
    for i in 0..PODS {
        let name = format!("p-{i:02}");
        cluster.bound_node(&name).await?;
        let pod = cluster.get_pod(&name).await?;
        let rev: i64 = pod
            .metadata
            .resource_version
            .as_deref()
            .context("resourceVersion")?
            .parse()?;
        last_revision = last_revision.max(rev);
    }

    // Replay the history: each pod goes from unbound to bound exactly once
    // and never changes node afterwards.
    let mut state: HashMap<String, Option<String>> = HashMap::new();
    let mut bindings: HashMap<String, usize> = HashMap::new();
    let mut seen_revision = 0;
    let deadline = Instant::now() + DEADLINE;
    while seen_revision < last_revision {
        let msg = tokio::time::timeout_at(deadline, history.message())
            .await
            .context("timed out replaying the pod history")??;
        let resp = msg.context("the watch ended")?;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            seen_revision = seen_revision.max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if ev.event_type() == EventType::Delete {
                bail!("{key} was deleted");
            }
            let pod: Pod = decode(kv)?;
            let now = node_name(&pod).map(str::to_string);
            let before = state.insert(key.clone(), now.clone()).flatten();
            match (before, now) {
                (None, Some(_)) => *bindings.entry(key).or_default() += 1,
                (Some(a), Some(b)) if a != b => bail!("{key} moved from {a} to {b}"),
                (Some(a), None) => bail!("{key} was unbound from {a}"),
                _ => {}
            }
        }
    }
    assert_eq!(bindings.len(), PODS, "{bindings:?}");
    for (key, n) in &bindings {
        assert_eq!(*n, 1, "{key} was bound {n} times");
    }
    let placed: HashMap<&str, usize> = state.values().flatten().fold(HashMap::new(), |mut m, n| {
        *m.entry(n.as_str()).or_default() += 1;
        m
    });
    tracing::info!(?placed, "placement");
    assert_eq!(placed.values().sum::<usize>(), PODS);

    let pods = cluster.store.list::<Pod>(Some("default")).await?;
    for p in &pods.items {
        let c = scheduled_condition(p).context("PodScheduled is set")?;
        assert_eq!(c.status, "True", "{}", meta::display_key(p));
    }

    cluster.stop().await
}
