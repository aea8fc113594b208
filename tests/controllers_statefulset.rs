//! The StatefulSet controller against a real etcd: members start in order,
//! each only once the one before is ready; each gets its own claim; a
//! deleted member comes back with the same name and claim; a partitioned
//! rolling update replaces only the members above the partition, then all
//! of them highest first; scaling down removes the highest first and keeps
//! the claims.
//!
//! No scheduler or node agent runs: the test plays them (binds pods, marks
//! them ready, finishes graceful deletions), and a watch audits every pod
//! write, so an ordering violation is seen even if it lasted one event.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use commitd_api::k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodCondition};
use commitd_api::{keys, meta, Kind, Store};
use etcd_client::{EventType, WatchOptions};
use tokio_util::sync::CancellationToken;

use support::etcd::{with_etcd, Controllers};
use support::wait::eventually;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(30);

fn stateful_set(image: &str, replicas: i32, partition: i32) -> Result<StatefulSet> {
    let mut s: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": NS,
            "annotations": {"commitd.io/commit": "0123456789abcdef0123456789abcdef01234567"}},
        "spec": {
            "replicas": replicas,
            "serviceName": "web",
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image,
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "16Mi"}}}}]
        }
    }))?;
    commitd_api::defaults::stateful_set(&mut s);
    Ok(s)
}

/// What the scheduler and node agent do: bind, run and ready every live
/// pod; finish the deletion of terminating ones.
async fn play_node(store: &Store) -> Result<()> {
    for pod in store.list::<Pod>(Some(NS)).await?.items {
        let name = meta::name(&pod).to_string();
        if meta::is_terminating(&pod.metadata) {
            let rv = pod.metadata.resource_version.as_deref();
            store.delete::<Pod>(Some(NS), &name, rv).await?;
            continue;
        }
        store
            .modify::<Pod, _>(Some(NS), &name, |p| {
                let spec = p.spec.get_or_insert_with(Default::default);
                let status = p.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Default::default);
                if spec.node_name.is_some()
                    && conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                {
                    return false;
                }
                spec.node_name = Some("node-1".into());
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

/// Every pod write, in etcd order: what was created when, and which
/// members were ready at that moment.
#[derive(Default, Debug)]
struct Audit {
    /// Pod names in the order they were created, with the members that
    /// were live and ready at the time.
    creations: Vec<(String, Vec<String>)>,
    /// Pod names in the order their deletion began.
    deletions: Vec<String>,
}

async fn audit_pods(store: Store, stop: CancellationToken) -> Result<Audit> {
    let prefix = keys::kind_prefix(Kind::Pod);
    let mut stream = store
        .client()
        .watch(
            prefix.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await?;
    let mut audit = Audit::default();
    // name -> (ready, terminating)
    let mut pods: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    loop {
        let resp = tokio::select! {
            _ = stop.cancelled() => return Ok(audit),
            msg = stream.message() => msg?.context("watch ended")?,
        };
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => {
                    let pod: Pod = serde_json::from_slice(kv.value())?;
                    let name = meta::name(&pod).to_string();
                    let ready = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let terminating = meta::is_terminating(&pod.metadata);
                    if kv.version() == 1 {
                        let ready_now = pods
                            .iter()
                            .filter(|(_, (r, t))| *r && !*t)
                            .map(|(n, _)| n.clone())
                            .collect();
                        audit.creations.push((name.clone(), ready_now));
                    }
                    let was_terminating = pods.get(&name).is_some_and(|(_, t)| *t);
                    if terminating && !was_terminating {
                        audit.deletions.push(name.clone());
                    }
                    pods.insert(name, (ready, terminating));
                }
                EventType::Delete => {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let name = key.rsplit('/').next().unwrap_or_default().to_string();
                    pods.remove(&name);
                }
            }
        }
    }
}

/// The members, by name, with their revision label.
async fn members(store: &Store) -> Result<BTreeMap<String, String>, String> {
    let pods = store
        .list::<Pod>(Some(NS))
        .await
        .map_err(|e| e.to_string())?
        .items;
    Ok(pods
        .iter()
        .filter(|p| !meta::is_terminating(&p.metadata))
        .map(|p| {
            let revision = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("controller-revision-hash"))
                .cloned()
                .unwrap_or_default();
            (meta::name(p).to_string(), revision)
        })
        .collect())
}

/// Plays the node until the members are exactly `want` (name → revision
/// predicate) and the status agrees.
async fn settle(
    store: &Store,
    what: &str,
    want: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<BTreeMap<String, String>> {
    eventually(what, DEADLINE, || async {
        play_node(store).await.map_err(|e| format!("{e:#}"))?;
        let m = members(store).await?;
        let set = store
            .get::<StatefulSet>(Some(NS), "web")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the set is gone")?;
        let status = set.status.clone().unwrap_or_default();
        let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if want(&m) && status.ready_replicas == Some(replicas) && status.replicas == replicas {
            Ok(m)
        } else {
            Err(format!("members {m:?}, status {status:?}"))
        }
    })
    .await
}

async fn claims(store: &Store) -> Result<BTreeMap<String, String>> {
    Ok(store
        .list::<PersistentVolumeClaim>(Some(NS))
        .await?
        .items
        .iter()
        .map(|c| {
            (
                meta::name(c).to_string(),
                c.metadata.uid.clone().unwrap_or_default(),
            )
        })
        .collect())
}

async fn apply(store: &Store, set: StatefulSet) -> Result<()> {
    match store.get::<StatefulSet>(Some(NS), "web").await? {
        None => {
            store.create(set).await?;
        }
        Some(_) => {
            store
                .modify::<StatefulSet, _>(Some(NS), "web", |cur| {
                    cur.spec = set.spec.clone();
                    true
                })
                .await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stateful_sets_keep_order_names_and_claims() -> Result<()> {
    with_etcd(|store| async move {
        let stop = CancellationToken::new();
        let audit = tokio::spawn(audit_pods(store.clone(), stop.clone()));
        let ctl = Controllers::start(&store);
        let result = scenario(&store).await;
        let stopped = ctl.stop().await;
        stop.cancel();
        let audit = audit.await.context("audit task")??;
        result?;
        stopped?;
        check_order(&audit)
    })
    .await
}

async fn scenario(store: &Store) -> Result<()> {
    apply(store, stateful_set("busybox:1", 3, 0)?).await?;
    let first = settle(store, "three members", |m| m.len() == 3).await?;
    let names: Vec<&String> = first.keys().collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    let first_claims = claims(store).await?;
    assert_eq!(
        first_claims.keys().collect::<Vec<_>>(),
        ["data-web-0", "data-web-1", "data-web-2"]
    );
    let old_revision = first["web-0"].clone();

    // A deleted member comes back under its name, with its claim.
    store
        .modify::<Pod, _>(Some(NS), "web-1", |p| {
            p.metadata.deletion_timestamp = Some(meta::now());
            true
        })
        .await?;
    let uid_before = store
        .get::<Pod>(Some(NS), "web-1")
        .await?
        .and_then(|p| p.metadata.uid);
    eventually("web-1 to come back as a new pod", DEADLINE, || async {
        play_node(store).await.map_err(|e| format!("{e:#}"))?;
        let pod = store
            .get::<Pod>(Some(NS), "web-1")
            .await
            .map_err(|e| e.to_string())?;
        match pod {
            Some(p) if p.metadata.uid != uid_before && !meta::is_terminating(&p.metadata) => Ok(p),
            other => Err(format!("{:?}", other.map(|p| p.metadata.uid))),
        }
    })
    .await?;
    assert_eq!(claims(store).await?, first_claims, "claims kept their uids");

    // Partition 2: only web-2 moves to the new template.
    apply(store, stateful_set("busybox:2", 3, 2)?).await?;
    let partitioned = settle(store, "web-2 updated, the others not", |m| {
        m.len() == 3 && m["web-2"] != old_revision && m["web-1"] == old_revision
    })
    .await?;
    let new_revision = partitioned["web-2"].clone();
    assert_eq!(partitioned["web-0"], old_revision);
    let set = store
        .get::<StatefulSet>(Some(NS), "web")
        .await?
        .context("set")?;
    let status = set.status.unwrap_or_default();
    assert_eq!(status.updated_replicas, Some(1));
    assert_eq!(
        status.current_revision.as_deref(),
        Some(old_revision.as_str())
    );
    assert_eq!(
        status.update_revision.as_deref(),
        Some(new_revision.as_str())
    );

    // Partition 0: the rest follow, highest first.
    apply(store, stateful_set("busybox:2", 3, 0)?).await?;
    settle(store, "every member updated", |m| {
        m.len() == 3 && m.values().all(|r| *r == new_revision)
    })
    .await?;
    eventually(
        "the update revision to become current",
        DEADLINE,
        || async {
            let set = store
                .get::<StatefulSet>(Some(NS), "web")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("gone")?;
            let status = set.status.unwrap_or_default();
            if status.current_revision.as_deref() == Some(new_revision.as_str()) {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await?;

    // With revisionHistoryLimit 0, the old template goes once unused.
    eventually("the old revision to be pruned", DEADLINE, || async {
        let names: Vec<String> = store
            .list::<ControllerRevision>(Some(NS))
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|r| meta::name(r).to_string())
            .collect();
        if names == [new_revision.clone()] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await?;

    // Scale down to one: web-2, then web-1; the claims stay.
    apply(store, stateful_set("busybox:2", 1, 0)?).await?;
    settle(store, "one member", |m| {
        m.len() == 1 && m.contains_key("web-0")
    })
    .await?;
    assert_eq!(claims(store).await?, first_claims);
    Ok(())
}

/// Every member was created only when all lower ordinals were ready, and
/// updates and scale-down went highest ordinal first.
fn check_order(audit: &Audit) -> Result<()> {
    for (name, ready) in &audit.creations {
        let ordinal: i32 = name.rsplit('-').next().unwrap_or_default().parse()?;
        for lower in 0..ordinal {
            let lower = format!("web-{lower}");
            anyhow::ensure!(
                ready.contains(&lower),
                "{name} was created while {lower} was not ready: {audit:?}"
            );
        }
    }
    // The deletions: web-1 by the test; web-2 (partition 2); web-1 and
    // web-0 (partition 0); then web-2 and web-1 (scale down).
    let expected = ["web-1", "web-2", "web-1", "web-0", "web-2", "web-1"];
    anyhow::ensure!(
        audit.deletions == expected,
        "deletions in order {:?}, expected {expected:?}",
        audit.deletions
    );
    Ok(())
}
