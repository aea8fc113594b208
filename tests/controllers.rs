//! The Deployment → ReplicaSet → Pod controllers and the garbage collector
//! against a real etcd: roll out, scale, change the template, roll back,
//! delete; and restart the controllers at arbitrary points without ever
//! creating more pods than asked for. Jobs: run to completion within their
//! parallelism, fail after their backoff limit, expire after their TTL.
//!
//! No scheduler or node agent runs here: the test binds pods, marks them
//! ready and finishes graceful deletions itself, the way those components
//! would.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use commitd_api::k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use commitd_api::k8s_openapi::api::batch::v1::Job;
use commitd_api::k8s_openapi::api::core::v1::{Pod, PodCondition};
use commitd_api::meta::{self, POD_TEMPLATE_HASH_LABEL, REVISION_ANNOTATION};
use commitd_api::{keys, Kind, Object, Store};
use commitd_reconciler::controllers;
use etcd_client::{EventType, WatchOptions};
use tokio_util::sync::CancellationToken;

use support::etcd::{with_etcd, Controllers};
use support::wait::eventually;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(30);
const NODE: &str = "node-1";

fn deployment(name: &str, replicas: i32, image: &str) -> Result<Deployment> {
    let mut d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": name},
            "annotations": {
                "commitd.io/commit": "0123456789abcdef0123456789abcdef01234567",
                "commitd.io/source": format!("apps/{name}.yaml:1"),
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]}
            }
        }
    }))?;
    commitd_api::defaults::deployment(&mut d);
    Ok(d)
}

/// Everything of one namespace, read in one go.
struct Snapshot {
    deployments: Vec<Deployment>,
    replica_sets: Vec<ReplicaSet>,
    pods: Vec<Pod>,
}

async fn snapshot(store: &Store) -> Result<Snapshot, String> {
    let e = |e: commitd_api::StoreError| e.to_string();
    Ok(Snapshot {
        deployments: store.list::<Deployment>(Some(NS)).await.map_err(e)?.items,
        replica_sets: store.list::<ReplicaSet>(Some(NS)).await.map_err(e)?.items,
        pods: store.list::<Pod>(Some(NS)).await.map_err(e)?.items,
    })
}

fn uid<T: Object>(obj: &T) -> String {
    obj.metadata().uid.clone().unwrap_or_default()
}

fn owned_by<'a, T: Object>(items: &'a [T], owner_uid: &str) -> Vec<&'a T> {
    items
        .iter()
        .filter(|o| meta::controller_of(o.metadata()).is_some_and(|r| r.uid == owner_uid))
        .collect()
}

fn live(pods: &[&Pod]) -> usize {
    pods.iter()
        .filter(|p| !meta::is_terminating(&p.metadata))
        .count()
}

/// Whether every live pod is bound and reported ready.
fn all_ready(pods: &[&Pod]) -> bool {
    pods.iter()
        .filter(|p| !meta::is_terminating(&p.metadata))
        .all(|p| {
            let bound = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            bound && ready
        })
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn revision(rs: &ReplicaSet) -> &str {
    meta::annotation(&rs.metadata, REVISION_ANNOTATION).unwrap_or("")
}

fn describe(s: &Snapshot) -> String {
    let rss: Vec<String> = s
        .replica_sets
        .iter()
        .map(|rs| {
            let pods = owned_by(&s.pods, &uid(rs));
            format!(
                "{} rev={} spec={} live={} terminating={}",
                meta::name(rs),
                revision(rs),
                spec_replicas(rs),
                live(&pods),
                pods.len() - live(&pods)
            )
        })
        .collect();
    format!("replica sets [{}], {} pods", rss.join("; "), s.pods.len())
}

/// Waits until the Deployment has exactly `expect_rs` ReplicaSets, the one
/// of its current template named `<name>-<hash>` with `replicas` live pods
/// and every other one scaled to 0, and returns the current one. With
/// `drive`, it plays the scheduler and the node agent meanwhile, binding
/// every pod and reporting it ready, so that a rolling update, which waits
/// for new pods to be available, can advance.
async fn wait_for_rollout(
    store: &Store,
    d: &Deployment,
    expect_rs: usize,
    replicas: usize,
    drive: bool,
) -> Result<ReplicaSet> {
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let want_name = format!(
        "{}-{}",
        meta::name(d),
        controllers::pod_template_hash(&template, None)
    );
    let d_uid = uid(d);
    eventually(
        &format!("rollout of {want_name} with {replicas} pods"),
        DEADLINE,
        || async {
            if drive {
                let sets = snapshot(store).await?.replica_sets;
                for rs in owned_by(&sets, &d_uid) {
                    bind_pods(store, rs, usize::MAX)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    mark_ready(store, rs).await.map_err(|e| format!("{e:#}"))?;
                }
            }
            let s = snapshot(store).await?;
            let owned = owned_by(&s.replica_sets, &d_uid);
            let current = owned.iter().find(|rs| meta::name(**rs) == want_name);
            let ok = owned.len() == expect_rs
                && current.is_some_and(|rs| {
                    let pods = owned_by(&s.pods, &uid(*rs));
                    // Driven, a pod made after this pass marked the others
                    // must be marked by the next one.
                    spec_replicas(rs) == replicas as i32
                        && live(&pods) == replicas
                        && (!drive || all_ready(&pods))
                })
                && owned
                    .iter()
                    .filter(|rs| meta::name(**rs) != want_name)
                    .all(|rs| spec_replicas(rs) == 0 && live(&owned_by(&s.pods, &uid(*rs))) == 0);
            match current {
                Some(rs) if ok => Ok((*rs).clone()),
                _ => Err(describe(&s)),
            }
        },
    )
    .await
}

/// What the scheduler does: binds every unbound live pod of `rs` to the node.
async fn bind_pods(store: &Store, rs: &ReplicaSet, limit: usize) -> Result<Vec<String>> {
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    let mut bound = Vec::new();
    for pod in owned_by(&pods, &uid(rs)) {
        let unbound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none();
        if !unbound || meta::is_terminating(&pod.metadata) || bound.len() >= limit {
            continue;
        }
        store
            .modify::<Pod, _>(Some(NS), meta::name(pod), |p| {
                let spec = p.spec.get_or_insert_with(Default::default);
                if spec.node_name.is_some() {
                    return false;
                }
                spec.node_name = Some(NODE.into());
                true
            })
            .await?;
        bound.push(meta::name(pod).to_string());
    }
    Ok(bound)
}

/// What the node agent does once containers run: phase Running, Ready.
async fn mark_ready(store: &Store, rs: &ReplicaSet) -> Result<()> {
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    for pod in owned_by(&pods, &uid(rs)) {
        if meta::is_terminating(&pod.metadata) {
            continue;
        }
        store
            .modify::<Pod, _>(Some(NS), meta::name(pod), |p| {
                let status = p.status.get_or_insert_with(Default::default);
                let conditions = status.conditions.get_or_insert_with(Default::default);
                if conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                {
                    return false;
                }
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

/// What the node agent does after stopping a terminating pod's containers.
async fn finish_terminating(store: &Store) -> Result<usize> {
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    let mut n = 0;
    for pod in pods.iter().filter(|p| meta::is_terminating(&p.metadata)) {
        let rv = pod.metadata.resource_version.as_deref();
        if store.delete::<Pod>(Some(NS), meta::name(pod), rv).await? {
            n += 1;
        }
    }
    Ok(n)
}

fn condition(status: &DeploymentStatus, type_: &str) -> Option<(String, String, String)> {
    let c = status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()?, c.message.clone()?))
}

/// Waits until the Deployment's status reports `n` replicas, all updated,
/// ready and available at `generation`, complete on `rs`.
async fn wait_for_complete_status(
    store: &Store,
    name: &str,
    n: i32,
    generation: i64,
    rs: &str,
    revision: &str,
) -> Result<()> {
    eventually(
        &format!("deployment status: {n} available on {rs}, revision {revision}"),
        DEADLINE,
        || async {
            let d = store
                .get::<Deployment>(Some(NS), name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("deployment missing")?;
            let s = d.status.clone().unwrap_or_default();
            let counts = (
                s.observed_generation,
                s.replicas,
                s.updated_replicas,
                s.ready_replicas,
                s.available_replicas,
                s.unavailable_replicas,
            );
            let want_counts = (Some(generation), Some(n), Some(n), Some(n), Some(n), None);
            let available = condition(&s, "Available");
            let progressing = condition(&s, "Progressing");
            let want_available = Some((
                "True".to_string(),
                "MinimumReplicasAvailable".to_string(),
                "Deployment has minimum availability.".to_string(),
            ));
            let want_progressing = Some((
                "True".to_string(),
                "NewReplicaSetAvailable".to_string(),
                format!("ReplicaSet {rs:?} has successfully progressed."),
            ));
            // The Deployment names its current revision, as in Kubernetes.
            let at = meta::annotation(&d.metadata, REVISION_ANNOTATION);
            if counts == want_counts
                && available == want_available
                && progressing == want_progressing
                && at == Some(revision)
            {
                Ok(())
            } else {
                Err(format!(
                    "counts {counts:?}, available {available:?}, progressing {progressing:?}, revision {at:?}"
                ))
            }
        },
    )
    .await
}

/// Edits the Deployment as the reconciler applies a new commit: spec and
/// generation change, status is left alone.
async fn change_deployment(
    store: &Store,
    name: &str,
    edit: impl Fn(&mut Deployment),
) -> Result<Deployment> {
    store
        .modify::<Deployment, _>(Some(NS), name, |d| {
            edit(d);
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            true
        })
        .await?
        .ok_or_else(|| anyhow!("deployment {name} vanished"))
}

fn set_image(d: &mut Deployment, image: &str) {
    if let Some(c) = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|p| p.containers.first_mut())
    {
        c.image = Some(image.into());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_rolls_out_scales_rolls_back_and_is_collected() -> Result<()> {
    with_etcd(|store| async move {
        let ctl = Controllers::start(&store);
        let result = rollout_scenario(&store).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

async fn rollout_scenario(store: &Store) -> Result<()> {
    // As the reconciler applies it from Git.
    let d = store
        .create(deployment("web", 2, "registry.local/web:1")?)
        .await?;
    assert!(meta::is_git_owned(&d.metadata));

    // One ReplicaSet named after the template hash, with two pods.
    let first = wait_for_rollout(store, &d, 1, 2, false).await?;
    let hash = meta::name(&first).trim_start_matches("web-").to_string();
    assert_eq!(revision(&first), "1");
    let labels = first.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
    let rs_spec = first.spec.clone().unwrap_or_default();
    let selector = rs_spec.selector.match_labels.clone().unwrap_or_default();
    assert_eq!(selector.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
    assert!(
        !meta::is_git_owned(&first.metadata),
        "derived objects carry no commit"
    );
    let owner = meta::controller_of(&first.metadata).context("replica set has a controller")?;
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Deployment", uid(&d).as_str())
    );
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    for pod in owned_by(&pods, &uid(&first)) {
        assert!(meta::name(pod).starts_with(&format!("{}-", meta::name(&first))));
        assert_eq!(meta::name(pod).len(), meta::name(&first).len() + 6);
        let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(pod_labels.get(POD_TEMPLATE_HASH_LABEL), Some(&hash));
        assert_eq!(pod.metadata.namespace.as_deref(), Some(NS));
    }

    // The scheduler binds them, the node agent reports them ready: the
    // Deployment's status follows.
    bind_pods(store, &first, usize::MAX).await?;
    mark_ready(store, &first).await?;
    wait_for_complete_status(store, "web", 2, 1, meta::name(&first), "1").await?;
    eprintln!("rolled out {} with 2 ready pods", meta::name(&first));

    // Scale to 3: same ReplicaSet, one more pod.
    let d = change_deployment(store, "web", |d| {
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(3);
        }
    })
    .await?;
    let scaled = wait_for_rollout(store, &d, 1, 3, false).await?;
    assert_eq!(uid(&scaled), uid(&first), "scaling keeps the replica set");
    bind_pods(store, &scaled, usize::MAX).await?;
    mark_ready(store, &scaled).await?;
    wait_for_complete_status(store, "web", 3, 2, meta::name(&first), "1").await?;
    eprintln!("scaled {} to 3", meta::name(&first));

    // A new image: a second ReplicaSet takes over as its pods become
    // ready (a rolling update), the first scales to 0 and its (bound)
    // pods are deleted gracefully.
    let old_pods: BTreeSet<String> =
        owned_by(&store.list::<Pod>(Some(NS)).await?.items, &uid(&first))
            .into_iter()
            .map(|p| meta::name(p).to_string())
            .collect();
    let d = change_deployment(store, "web", |d| set_image(d, "registry.local/web:2")).await?;
    let second = wait_for_rollout(store, &d, 2, 3, true).await?;
    assert_ne!(meta::name(&second), meta::name(&first));
    assert_eq!(revision(&second), "2");
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    for name in &old_pods {
        let pod = pods
            .iter()
            .find(|p| meta::name(*p) == name)
            .with_context(|| format!("bound pod {name} must wait for its node agent"))?;
        assert!(meta::is_terminating(&pod.metadata), "{name} is terminating");
        assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(30));
    }
    bind_pods(store, &second, usize::MAX).await?;
    mark_ready(store, &second).await?;
    wait_for_complete_status(store, "web", 3, 3, meta::name(&second), "2").await?;
    assert_eq!(finish_terminating(store).await?, old_pods.len());
    eprintln!(
        "rolled out {}; {} old pods terminated",
        meta::name(&second),
        old_pods.len()
    );

    // Back to the first image: the first ReplicaSet is reused, with the
    // newest revision; no third one appears.
    let d = change_deployment(store, "web", |d| set_image(d, "registry.local/web:1")).await?;
    let reused = wait_for_rollout(store, &d, 2, 3, true).await?;
    assert_eq!(
        uid(&reused),
        uid(&first),
        "the earlier replica set is reused"
    );
    assert_eq!(revision(&reused), "3");
    let second_now = store
        .get::<ReplicaSet>(Some(NS), meta::name(&second))
        .await?
        .context("second replica set kept as history")?;
    assert_eq!(spec_replicas(&second_now), 0);
    assert_eq!(revision(&second_now), "2");
    finish_terminating(store).await?;
    bind_pods(store, &reused, usize::MAX).await?;
    mark_ready(store, &reused).await?;
    wait_for_complete_status(store, "web", 3, 4, meta::name(&reused), "3").await?;
    eprintln!("rolled back to {} (revision 3)", meta::name(&reused));
    // One more pod, which gets no node: the three bound ones stay.
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    let bound: Vec<String> = owned_by(&pods, &uid(&reused))
        .into_iter()
        .filter(|p| !meta::is_terminating(&p.metadata))
        .map(|p| meta::name(p).to_string())
        .collect();
    assert_eq!(bound.len(), 3);
    let d = change_deployment(store, "web", |d| {
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(4);
        }
    })
    .await?;
    wait_for_rollout(store, &d, 2, 4, false).await?;

    // The file is deleted from Git: the garbage collector removes the
    // ReplicaSets, then their pods (bound: marked; unbound: deleted).
    store.delete::<Deployment>(Some(NS), "web", None).await?;
    let s = eventually("replica sets and pods collected", DEADLINE, || async {
        let s = snapshot(store).await?;
        let live_pods = s
            .pods
            .iter()
            .filter(|p| !meta::is_terminating(&p.metadata))
            .count();
        if s.deployments.is_empty()
            && s.replica_sets.is_empty()
            && live_pods == 0
            && s.pods.len() == bound.len()
        {
            Ok(s)
        } else {
            Err(describe(&s))
        }
    })
    .await?;
    let left: BTreeSet<String> = s.pods.iter().map(|p| meta::name(p).to_string()).collect();
    assert_eq!(
        left,
        bound.iter().cloned().collect(),
        "only bound pods wait for a node agent"
    );
    assert!(s
        .pods
        .iter()
        .all(|p| p.metadata.deletion_grace_period_seconds == Some(30)));
    assert_eq!(finish_terminating(store).await?, bound.len());
    eprintln!(
        "deployment deleted: replica sets removed, {} bound pods marked, unbound deleted",
        bound.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_safety_net_rolls_a_failed_template_back_until_a_commit_changes_it() -> Result<()> {
    with_etcd(|store| async move {
        let ctl = Controllers::start(&store);
        let result = safety_net_scenario(&store).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

/// The Deployment's Progressing condition, once it satisfies `check`.
async fn wait_for_progressing(
    store: &Store,
    what: &str,
    check: impl Fn(&(String, String, String)) -> bool,
) -> Result<(String, String, String)> {
    eventually(what, DEADLINE, || async {
        let d = store
            .get::<Deployment>(Some(NS), "web")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("deployment missing")?;
        let p = condition(&d.status.clone().unwrap_or_default(), "Progressing");
        p.clone().filter(|c| check(c)).ok_or(format!("{p:?}"))
    })
    .await
}

async fn safety_net_scenario(store: &Store) -> Result<()> {
    let mut d = deployment("web", 4, "registry.local/web:1")?;
    let annotations = d.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert("commitd.io/rollback-on-failure".into(), "true".into());
    let d = store.create(d).await?;
    let good = wait_for_rollout(store, &d, 1, 4, true).await?;
    wait_for_complete_status(store, "web", 4, 1, meta::name(&good), "1").await?;

    // A template whose pods never become ready, with a short deadline
    // (set only now: a loaded machine may take longer than that for the
    // good rollout): the rollout stalls, misses its deadline, and the good
    // ReplicaSet is brought back in full.
    let d = change_deployment(store, "web", |d| {
        set_image(d, "registry.local/web:broken");
        if let Some(spec) = d.spec.as_mut() {
            spec.progress_deadline_seconds = Some(2);
        }
    })
    .await?;
    let (status, reason, message) = wait_for_progressing(store, "the rollback", |(_, _, m)| {
        m.contains("rolled back to")
    })
    .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
    assert!(
        message.contains(&format!("{:?}", meta::name(&good))),
        "{message}"
    );
    let failed_name = format!(
        "web-{}",
        controllers::pod_template_hash(&d.spec.clone().unwrap_or_default().template, None)
    );
    eventually(
        "the good set back at 4, the failed one at 0",
        DEADLINE,
        || async {
            bind_pods(store, &good, usize::MAX)
                .await
                .map_err(|e| format!("{e:#}"))?;
            mark_ready(store, &good)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let s = snapshot(store).await?;
            let size = |name: &str| {
                s.replica_sets
                    .iter()
                    .find(|rs| meta::name(*rs) == name)
                    .map(spec_replicas)
            };
            (size(meta::name(&good)) == Some(4) && size(&failed_name) == Some(0))
                .then_some(())
                .ok_or_else(|| describe(&s))
        },
    )
    .await?;
    // Degraded it stays, naming the failed set, while Git says the same.
    let (_, reason, message) = wait_for_progressing(store, "still failed", |_| true).await?;
    assert_eq!(reason, "ProgressDeadlineExceeded");
    assert!(message.contains(&failed_name), "{message}");

    // A new commit changes the Deployment: its template is rolled out.
    let d = change_deployment(store, "web", |d| set_image(d, "registry.local/web:3")).await?;
    let third = wait_for_rollout(store, &d, 3, 4, true).await?;
    wait_for_complete_status(store, "web", 4, 3, meta::name(&third), "3").await?;
    Ok(())
}

/// Watches pod keys and keeps, per owning ReplicaSet uid, how many pods
/// were ever created and the most that were live (not terminating) at
/// once, event by event (a cache could skip intermediate states).
struct PodAudit {
    created: BTreeMap<String, usize>,
    max_live: BTreeMap<String, usize>,
}

async fn audit_pods(store: Store, stop: CancellationToken) -> Result<PodAudit> {
    let prefix = keys::kind_prefix(Kind::Pod);
    let mut stream = store
        .client()
        .watch(
            prefix.as_str(),
            // A fresh etcd: replay from the start, so no creation is missed.
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        )
        .await?;
    let mut audit = PodAudit {
        created: BTreeMap::new(),
        max_live: BTreeMap::new(),
    };
    // key -> (owner uid, live)
    let mut pods: BTreeMap<String, (String, bool)> = BTreeMap::new();
    loop {
        let resp = tokio::select! {
            _ = stop.cancelled() => return Ok(audit),
            msg = stream.message() => msg?.context("watch ended")?,
        };
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match ev.event_type() {
                EventType::Put => {
                    let pod: Pod = serde_json::from_slice(kv.value())?;
                    let owner = meta::controller_of(&pod.metadata)
                        .map(|o| o.uid.clone())
                        .unwrap_or_default();
                    if kv.version() == 1 {
                        *audit.created.entry(owner.clone()).or_default() += 1;
                    }
                    pods.insert(key, (owner, !meta::is_terminating(&pod.metadata)));
                }
                EventType::Delete => {
                    pods.remove(&key);
                }
            }
        }
        let mut live: BTreeMap<String, usize> = BTreeMap::new();
        for (owner, is_live) in pods.values() {
            if *is_live {
                *live.entry(owner.clone()).or_default() += 1;
            }
        }
        for (owner, n) in live {
            let max = audit.max_live.entry(owner).or_default();
            *max = (*max).max(n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_controllers_never_create_more_pods_than_replicas() -> Result<()> {
    with_etcd(|store| async move {
        let stop_audit = CancellationToken::new();
        let audit = tokio::spawn(audit_pods(store.clone(), stop_audit.clone()));
        let result = restart_scenario(&store).await;
        stop_audit.cancel();
        let audit = audit.await.context("audit task panicked")??;
        let (rs_uid, removed) = result?;
        let created = audit.created.get(&rs_uid).copied().unwrap_or(0);
        let max_live = audit.max_live.get(&rs_uid).copied().unwrap_or(0);
        eprintln!("pods created: {created} (5 + {removed} removed), most live at once: {max_live}");
        assert_eq!(max_live, 5, "never more live pods than replicas");
        assert_eq!(
            created,
            5 + removed,
            "every pod created replaced one that was removed"
        );
        assert_eq!(audit.created.len(), 1, "one replica set made all the pods");
        Ok(())
    })
    .await
}

/// Starts and stops (or kills) the controllers over and over while pods go
/// missing; returns the ReplicaSet's uid and how many pods the test removed.
async fn restart_scenario(store: &Store) -> Result<(String, usize)> {
    let d = store
        .create(deployment("api", 5, "registry.local/api:1")?)
        .await?;
    let ctl = Controllers::start(store);
    let rs = wait_for_rollout(store, &d, 1, 5, false).await?;
    ctl.stop().await?;

    let mut removed = 0;
    for round in 0..20u64 {
        // Pods disappear (a node died, someone deleted them) …
        let pods = store.list::<Pod>(Some(NS)).await?.items;
        let victims: Vec<&Pod> = owned_by(&pods, &uid(&rs))
            .into_iter()
            .take(1 + (round % 3) as usize)
            .collect();
        for pod in victims {
            if store.delete::<Pod>(Some(NS), meta::name(pod), None).await? {
                removed += 1;
            }
        }
        // … and the controllers die at some point of replacing them: a
        // graceful stop between passes, or a kill anywhere.
        let ctl = Controllers::start(store);
        let delay = Duration::from_millis((round * 17) % 90);
        tokio::time::sleep(delay).await;
        if round % 2 == 0 {
            ctl.kill().await;
        } else {
            ctl.stop().await?;
        }
    }

    // Started for good, they settle at exactly the replicas.
    let ctl = Controllers::start(store);
    let settled = wait_for_rollout(store, &d, 1, 5, false).await;
    let stopped = ctl.stop().await;
    let settled = settled?;
    stopped?;
    assert_eq!(uid(&settled), uid(&rs));
    Ok((uid(&rs), removed))
}

fn job(name: &str, spec: serde_json::Value) -> Result<Job> {
    let mut spec = spec;
    spec["template"] = serde_json::json!({
        "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "work:1"}]}
    });
    let mut j: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": NS,
            "annotations": {
                "commitd.io/commit": "0123456789abcdef0123456789abcdef01234567",
                "commitd.io/source": format!("jobs/{name}.yaml:1"),
            },
        },
        "spec": spec,
    }))?;
    commitd_api::defaults::job(&mut j);
    Ok(j)
}

/// Plays the scheduler and the node agent for a Job's pods: every active
/// pod is bound and finishes with `phase`; pods being deleted are removed.
/// Returns how many pods were active (never more than the Job allows).
async fn finish_job_pods(store: &Store, job_uid: &str, phase: &str) -> Result<usize> {
    finish_terminating(store).await?;
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    let active: Vec<&Pod> = owned_by(&pods, job_uid)
        .into_iter()
        .filter(|p| {
            let ph = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !meta::is_terminating(&p.metadata) && !matches!(ph, Some("Succeeded" | "Failed"))
        })
        .collect();
    for pod in &active {
        store
            .modify::<Pod, _>(Some(NS), meta::name(*pod), |p| {
                p.spec.get_or_insert_with(Default::default).node_name = Some(NODE.into());
                p.status.get_or_insert_with(Default::default).phase = Some(phase.into());
                true
            })
            .await?;
    }
    Ok(active.len())
}

fn job_condition(j: &Job, type_: &str) -> Option<String> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

/// Drives a Job's pods to `phase` until the Job has condition `until`;
/// returns the Job and the most pods seen active at once.
async fn run_job(store: &Store, j: &Job, phase: &str, until: &str) -> Result<(Job, usize)> {
    let job_uid = uid(j);
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        most = most.max(finish_job_pods(store, &job_uid, phase).await?);
        let current = store
            .get::<Job>(Some(NS), meta::name(j))
            .await?
            .ok_or_else(|| anyhow!("job {} is gone", meta::name(j)))?;
        if job_condition(&current, until).is_some() {
            return Ok((current, most));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow!(
                "job {} has no condition {until}: {:?}",
                meta::name(j),
                current.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_to_completion_fail_after_their_backoff_limit_and_expire() -> Result<()> {
    with_etcd(|store| async move {
        let ctl = Controllers::start(&store);
        let result = job_scenario(&store).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

async fn job_scenario(store: &Store) -> Result<()> {
    // completions 3, parallelism 2: three pods succeed, never three at once.
    let j = store
        .create(job(
            "batch",
            serde_json::json!({"completions": 3, "parallelism": 2}),
        )?)
        .await?;
    let (done, most) = run_job(store, &j, "Succeeded", "Complete").await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.succeeded, Some(3), "{status:?}");
    assert!(most <= 2, "{most} pods were active at once");
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    assert_eq!(
        job_condition(&done, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    assert_eq!(owned_by(&pods, &uid(&j)).len(), 3, "finished pods are kept");

    // backoffLimit 1: the second failure fails the Job.
    let f = store
        .create(job("fails", serde_json::json!({"backoffLimit": 1}))?)
        .await?;
    let (failed, _) = run_job(store, &f, "Failed", "Failed").await?;
    assert_eq!(
        job_condition(&failed, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.failed, Some(2), "{status:?}");
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    assert_eq!(owned_by(&pods, &uid(&f)).len(), 2, "two attempts");

    // ttlSecondsAfterFinished 0: a finished Job goes at once, leaves a
    // tombstone (it was Git-owned), and its pods are collected.
    let t = store
        .create(job(
            "short-lived",
            serde_json::json!({"ttlSecondsAfterFinished": 0}),
        )?)
        .await?;
    let t_uid = uid(&t);
    let tombstone = keys::tombstone_key(Kind::Job, Some(NS), "short-lived");
    eventually("the expired job to be deleted", DEADLINE, || async {
        finish_job_pods(store, &t_uid, "Succeeded")
            .await
            .map_err(|e| e.to_string())?;
        let gone = store
            .get::<Job>(Some(NS), "short-lived")
            .await
            .map_err(|e| e.to_string())?
            .is_none();
        let marked = store
            .client()
            .get(tombstone.as_str(), None)
            .await
            .map_err(|e| e.to_string())?
            .kvs()
            .len()
            == 1;
        let pods = store
            .list::<Pod>(Some(NS))
            .await
            .map_err(|e| e.to_string())?
            .items;
        let left = owned_by(&pods, &t_uid).len();
        (gone && marked && left == 0)
            .then_some(())
            .ok_or(format!("gone={gone} tombstone={marked} pods left={left}"))
    })
    .await?;

    // Deleting a Job deletes its pods (the garbage collector).
    store.delete::<Job>(Some(NS), "batch", None).await?;
    let batch_uid = uid(&j);
    eventually("the deleted job's pods to go", DEADLINE, || async {
        finish_terminating(store).await.map_err(|e| e.to_string())?;
        let pods = store
            .list::<Pod>(Some(NS))
            .await
            .map_err(|e| e.to_string())?
            .items;
        let left = owned_by(&pods, &batch_uid).len();
        (left == 0).then_some(()).ok_or(format!("{left} pods left"))
    })
    .await?;

    // A suspended Job runs no pod until it is resumed.
    let s = store
        .create(job("later", serde_json::json!({"suspend": true}))?)
        .await?;
    let s_uid = uid(&s);
    eventually("the job to be suspended", DEADLINE, || async {
        let j = store
            .get::<Job>(Some(NS), "later")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("gone")?;
        job_condition(&j, "Suspended")
            .filter(|r| r == "JobSuspended")
            .ok_or(format!("{:?}", j.status))
    })
    .await?;
    let pods = store.list::<Pod>(Some(NS)).await?.items;
    anyhow::ensure!(
        owned_by(&pods, &s_uid).is_empty(),
        "a suspended job made pods"
    );
    store
        .modify::<Job, _>(Some(NS), "later", |j| {
            if let Some(spec) = j.spec.as_mut() {
                spec.suspend = Some(false);
            }
            true
        })
        .await?;
    let (resumed, _) = run_job(store, &s, "Succeeded", "Complete").await?;
    anyhow::ensure!(
        job_condition(&resumed, "Suspended").is_none(),
        "still suspended: {:?}",
        resumed.status
    );
    Ok(())
}
