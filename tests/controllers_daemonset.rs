//! The DaemonSet controller against a real etcd: one pod per eligible node
//! (nodeSelector and taints decide), a pod on a node that no longer
//! matches is deleted while one on a NoSchedule-tainted node is left and
//! counted as misscheduled, a node that registers later gets its pod, and
//! a rolling update never has more than `maxUnavailable` eligible nodes
//! without an available daemon pod, and a surge rollout (`maxSurge: 1`,
//! `maxUnavailable: 0`) never leaves one without.
//!
//! No node agent runs: the test plays it (marks pods running and ready,
//! finishes graceful deletions), and a watch audits every pod write, so a
//! budget violation is seen even if it lasted one event.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use commitd_api::k8s_openapi::api::core::v1::{Node, Pod, PodCondition};
use commitd_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use commitd_api::{keys, meta, Kind, Store};
use commitd_reconciler::controllers;
use etcd_client::{EventType, WatchOptions};
use tokio_util::sync::CancellationToken;

use support::etcd::{with_etcd, Controllers};
use support::wait::eventually;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(30);
/// Nodes the DaemonSet selects and that carry no taint.
const ELIGIBLE: [&str; 2] = ["node-a", "node-b"];

fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Result<Node> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))?)
}

fn daemon_set(image: &str) -> Result<DaemonSet> {
    let mut d: DaemonSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": NS,
            "annotations": {"commitd.io/commit": "0123456789abcdef0123456789abcdef01234567"}},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"nodeSelector": {"role": "daemon"},
                         "containers": [{"name": "agent", "image": image}]}
            }
        }
    }))?;
    commitd_api::defaults::daemon_set(&mut d);
    Ok(d)
}

/// A pod of the current template as if the controller had made it
/// earlier, on `node`.
fn stray_pod(ds: &DaemonSet, name: &str, node: &str) -> Result<Pod> {
    let template = &ds.spec.as_ref().context("spec")?.template;
    let hash = controllers::pod_template_hash(template, None);
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app": "agent", "controller-revision-hash": hash}},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "agent:1"}]},
        "status": {"phase": "Running"}
    }))?;
    pod.metadata.owner_references = Some(vec![meta::controller_reference(ds)]);
    Ok(pod)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn image_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// What node agents do: run and ready every live pod; finish the
/// deletion of terminating ones.
async fn play_nodes(store: &Store) -> Result<()> {
    for pod in store.list::<Pod>(Some(NS)).await?.items {
        let name = meta::name(&pod).to_string();
        if meta::is_terminating(&pod.metadata) {
            let rv = pod.metadata.resource_version.as_deref();
            store.delete::<Pod>(Some(NS), &name, rv).await?;
            continue;
        }
        if is_ready(&pod) {
            continue;
        }
        store
            .modify::<Pod, _>(Some(NS), &name, |p| {
                if is_ready(p) || meta::is_terminating(&p.metadata) {
                    return false;
                }
                let status = p.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Default::default);
                conditions.retain(|c| c.type_ != "Ready");
                conditions.push(PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(meta::now()),
                    ..Default::default()
                });
                status.phase = Some("Running".into());
                true
            })
            .await?;
    }
    Ok(())
}

/// Live pods by node: (name, image).
async fn pods_by_node(store: &Store) -> Result<BTreeMap<String, Vec<(String, String)>>, String> {
    let pods = store
        .list::<Pod>(Some(NS))
        .await
        .map_err(|e| e.to_string())?
        .items;
    let mut by_node: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for p in pods.iter().filter(|p| !meta::is_terminating(&p.metadata)) {
        by_node
            .entry(node_of(p))
            .or_default()
            .push((meta::name(p).to_string(), image_of(p)));
    }
    Ok(by_node)
}

async fn status(store: &Store) -> Result<DaemonSetStatus, String> {
    let ds = store
        .get::<DaemonSet>(Some(NS), "agent")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the daemon set is gone")?;
    let status = ds.status.clone().unwrap_or_default();
    if status.observed_generation != ds.metadata.generation {
        return Err(format!("status not observed yet: {status:?}"));
    }
    Ok(status)
}

/// Plays the nodes until every eligible node in `nodes` runs exactly one
/// pod of `image`, and the status says `desired` scheduled and available.
async fn settle(
    store: &Store,
    what: &str,
    nodes: &[&str],
    image: &str,
    desired: i32,
) -> Result<(BTreeMap<String, Vec<(String, String)>>, DaemonSetStatus)> {
    eventually(what, DEADLINE, || async {
        play_nodes(store).await.map_err(|e| format!("{e:#}"))?;
        let by_node = pods_by_node(store).await?;
        for n in nodes {
            match by_node.get(*n).map(Vec::as_slice) {
                Some([(_, i)]) if i == image => {}
                other => return Err(format!("{n}: {other:?}; all: {by_node:?}")),
            }
        }
        let s = status(store).await?;
        if s.desired_number_scheduled != desired
            || s.number_available != Some(desired)
            || s.updated_number_scheduled != Some(desired)
        {
            return Err(format!("status {s:?}; pods {by_node:?}"));
        }
        Ok((by_node, s))
    })
    .await
}

/// Watches pods from `from` and returns the most eligible nodes that were
/// ever without an available (ready, not terminating) pod at once.
async fn audit_unavailable(
    store: Store,
    initial: Vec<Pod>,
    from: i64,
    stop: CancellationToken,
) -> Result<usize> {
    let prefix = keys::kind_prefix(Kind::Pod);
    let mut stream = store
        .client()
        .watch(
            prefix.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    // pod name -> (node, available)
    let mut pods: BTreeMap<String, (String, bool)> = initial
        .iter()
        .map(|p| {
            let available = is_ready(p) && !meta::is_terminating(&p.metadata);
            (meta::name(p).to_string(), (node_of(p), available))
        })
        .collect();
    let unavailable = |pods: &BTreeMap<String, (String, bool)>| {
        ELIGIBLE
            .iter()
            .filter(|n| !pods.values().any(|(node, ok)| node == *n && *ok))
            .count()
    };
    let mut worst = unavailable(&pods);
    loop {
        let resp = tokio::select! {
            _ = stop.cancelled() => return Ok(worst),
            msg = stream.message() => msg?.context("watch ended")?,
        };
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let name = key.rsplit('/').next().unwrap_or_default().to_string();
            match ev.event_type() {
                EventType::Put => {
                    let pod: Pod = serde_json::from_slice(kv.value())?;
                    let available = is_ready(&pod) && !meta::is_terminating(&pod.metadata);
                    pods.insert(name, (node_of(&pod), available));
                }
                EventType::Delete => {
                    pods.remove(&name);
                }
            }
        }
        worst = worst.max(unavailable(&pods));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_set_runs_one_pod_per_eligible_node_and_rolls_within_budget() -> Result<()> {
    with_etcd(|store| async move { scenario(&store).await }).await
}

async fn scenario(store: &Store) -> Result<()> {
    // node-a is eligible; node-t matches but has an untolerated NoSchedule
    // taint; node-u lacks the label.
    store
        .create(node(
            "node-a",
            serde_json::json!({"role": "daemon"}),
            serde_json::json!([]),
        )?)
        .await?;
    store
        .create(node(
            "node-t",
            serde_json::json!({"role": "daemon"}),
            serde_json::json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        )?)
        .await?;
    store
        .create(node(
            "node-u",
            serde_json::json!({}),
            serde_json::json!([]),
        )?)
        .await?;
    let ds = store.create(daemon_set("agent:1")?).await?;
    // Pods left from before: the tainted node keeps its pod (NoSchedule
    // does not evict), the unlabelled one loses it.
    store
        .create(stray_pod(&ds, "agent-tainted", "node-t")?)
        .await?;
    store
        .create(stray_pod(&ds, "agent-nolabel", "node-u")?)
        .await?;

    let controllers = Controllers::start(store);
    let (by_node, s) = settle(store, "one pod on node-a", &["node-a"], "agent:1", 1).await?;
    assert!(!by_node.contains_key("node-u"), "{by_node:?}");
    assert_eq!(
        by_node.get("node-t").map(Vec::len),
        Some(1),
        "the tainted node keeps its pod: {by_node:?}"
    );
    assert_eq!(s.current_number_scheduled, 1, "{s:?}");
    assert_eq!(s.number_misscheduled, 1, "{s:?}");
    assert_eq!(s.number_ready, 1, "{s:?}");
    assert_eq!(s.number_unavailable, None, "{s:?}");
    let (pod_name, _) = &by_node["node-a"][0];
    assert!(pod_name.starts_with("agent-") && pod_name.len() == "agent-".len() + 5);

    // A node that registers later gets its pod.
    store
        .create(node(
            "node-b",
            serde_json::json!({"role": "daemon"}),
            serde_json::json!([]),
        )?)
        .await?;
    let (before, _) = settle(store, "a pod on node-b too", &ELIGIBLE, "agent:1", 2).await?;

    // A template change rolls one node at a time (maxUnavailable: 1).
    let listed = store.list::<Pod>(Some(NS)).await?;
    let stop = CancellationToken::new();
    let audit = tokio::spawn(audit_unavailable(
        store.clone(),
        listed.items,
        listed.revision + 1,
        stop.clone(),
    ));
    store
        .modify::<DaemonSet, _>(Some(NS), "agent", |d| {
            if let Some(c) = d
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .and_then(|s| s.containers.first_mut())
            {
                c.image = Some("agent:2".into());
            }
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            true
        })
        .await?
        .context("the daemon set is gone")?;
    let (after, s) = settle(store, "rolled to agent:2", &ELIGIBLE, "agent:2", 2).await?;
    stop.cancel();
    let worst = audit.await.context("audit task")??;
    assert_eq!(
        worst, 1,
        "at most one eligible node may lack an available pod, and the rollout must use it"
    );
    for n in ELIGIBLE {
        assert_ne!(before[n][0].0, after[n][0].0, "{n} got a new pod");
    }
    assert_eq!(s.current_number_scheduled, 2, "{s:?}");
    assert_eq!(s.number_ready, 2, "{s:?}");

    // With maxSurge 1 and maxUnavailable 0, the new pod starts beside the
    // old one: no eligible node is ever without an available pod.
    let listed = store.list::<Pod>(Some(NS)).await?;
    let stop = CancellationToken::new();
    let audit = tokio::spawn(audit_unavailable(
        store.clone(),
        listed.items,
        listed.revision + 1,
        stop.clone(),
    ));
    store
        .modify::<DaemonSet, _>(Some(NS), "agent", |d| {
            let Some(spec) = d.spec.as_mut() else {
                return false;
            };
            if let Some(c) = spec
                .template
                .spec
                .as_mut()
                .and_then(|s| s.containers.first_mut())
            {
                c.image = Some("agent:3".into());
            }
            let strategy = spec.update_strategy.get_or_insert_with(Default::default);
            let ru = strategy.rolling_update.get_or_insert_with(Default::default);
            ru.max_surge = Some(IntOrString::Int(1));
            ru.max_unavailable = Some(IntOrString::Int(0));
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            true
        })
        .await?
        .context("the daemon set is gone")?;
    let (surged, _) = settle(store, "surged to agent:3", &ELIGIBLE, "agent:3", 2).await?;
    stop.cancel();
    let worst = audit.await.context("audit task")??;
    assert_eq!(
        worst, 0,
        "a surge rollout never leaves a node without a pod"
    );
    for n in ELIGIBLE {
        assert_ne!(after[n][0].0, surged[n][0].0, "{n} got a new pod");
    }

    // Removing the label from a node removes its pod.
    store
        .modify::<Node, _>(None, "node-b", |n| {
            n.metadata.labels = None;
            true
        })
        .await?;
    eventually("node-b's pod deleted", DEADLINE, || async {
        play_nodes(store).await.map_err(|e| format!("{e:#}"))?;
        let by_node = pods_by_node(store).await?;
        let s = status(store).await?;
        if by_node.contains_key("node-b") || s.desired_number_scheduled != 1 {
            return Err(format!("{by_node:?} {s:?}"));
        }
        Ok(())
    })
    .await?;

    controllers.stop().await
}
