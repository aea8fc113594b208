//! Rollouts and rollbacks the GitOps way, end to end through every real
//! layer (issue 5): a Deployment of four web pods behind a ClusterIP
//! Service is rolled from v1 to v2 by a commit while a client hammers the
//! Service from the host; then to an image that does not exist, which
//! stalls after the surge and misses its progress deadline; then back by
//! `git revert`, which reuses the old ReplicaSet; and last with the
//! Recreate strategy. Every pod state etcd goes through is checked against
//! the strategy's bounds, and `commitd rollout status|history` are run as
//! a user runs them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commitd_api::k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::meta::{self, COMMIT_ANNOTATION, REVISION_ANNOTATION, ROLLOUT_COMMIT_ANNOTATION};
use commitd_api::records::AppliedCommit;
use commitd_api::{keys, store, Kind, Store};
use etcd_client::{EventType, WatchOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use support::cluster::{Cluster, Network, WAIT};
use support::http_get;
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdrol0",
    pod_cidr: "10.223.0.0/24",
    service_cidr: "10.100.23.0/24",
    node_name: "rol-node",
    dns_port: 10223,
    proxy_table: "cdrol",
};

/// Two Deployments in sync waves: `frontend` (wave 1) is written only once
/// `backend` (wave 0), which takes a few seconds to become ready, is
/// healthy.
const WAVES: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
  namespace: roll
  annotations: {commitd.io/sync-wave: "0"}
spec:
  replicas: 1
  selector:
    matchLabels: {app: backend}
  template:
    metadata:
      labels: {app: backend}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: backend
          image: REGISTRY/commitd/web:1
          command: [sh, -c, 'sleep 5; touch /tmp/ready; trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
          readinessProbe:
            exec: {command: [test, -f, /tmp/ready]}
            periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: frontend
  namespace: roll
  annotations: {argocd.argoproj.io/sync-wave: "1"}
spec:
  replicas: 1
  selector:
    matchLabels: {app: frontend}
  template:
    metadata:
      labels: {app: frontend}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: frontend
          image: REGISTRY/commitd/web:1
          command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
"#;

const NS: &str = "roll";
const REPLICAS: usize = 4;
const MAX_SURGE: usize = 1;
const MAX_UNAVAILABLE: usize = 1;

/// The application: a namespace, a Deployment and its Service. `IMAGE`
/// and `STRATEGY` are filled in per commit. The preStop pause is what
/// Kubernetes users do for zero-downtime rollouts: the pod keeps serving
/// while the Endpoints and the service rules let go of it.
const APP: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: roll
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: roll
spec:
  replicas: 4
  progressDeadlineSeconds: 15
  strategy:
    STRATEGY
  selector:
    matchLabels:
      app: roll-web
  template:
    metadata:
      labels:
        app: roll-web
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: web
          image: REGISTRY/commitd/IMAGE
          ports:
            - name: http
              containerPort: 80
          readinessProbe:
            httpGet:
              path: /
              port: http
            periodSeconds: 1
          lifecycle:
            preStop:
              exec:
                command: [sleep, "2"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: roll
spec:
  selector:
    app: roll-web
  ports:
    - name: http
      port: 80
      targetPort: http
"#;

const ROLLING: &str = "type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 1";
const RECREATE: &str = "type: Recreate";

fn app(image: &str, strategy: &str) -> String {
    APP.replace("IMAGE", image).replace("STRATEGY", strategy)
}

/// Waits until the Deployment in etcd comes from commit `sha`.
async fn wait_applied(store: &Store, sha: &str) -> Deployment {
    until(&format!("deployment web at commit {sha}"), WAIT, || async {
        let d = store
            .get::<Deployment>(Some(NS), "web")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no deployment yet")?;
        let at = meta::annotation(&d.metadata, COMMIT_ANNOTATION).unwrap_or_default();
        (at == sha).then_some(d.clone()).ok_or(format!("at {at}"))
    })
    .await
}

/// The Deployment's ReplicaSets by name.
async fn replica_sets(store: &Store) -> BTreeMap<String, ReplicaSet> {
    store
        .list::<ReplicaSet>(Some(NS))
        .await
        .expect("list replica sets")
        .items
        .into_iter()
        .map(|rs| (meta::name(&rs).to_string(), rs))
        .collect()
}

fn image_of_rs(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The name of the one ReplicaSet whose image ends in `image`.
async fn rs_with_image(store: &Store, image: &str) -> String {
    let sets = replica_sets(store).await;
    let found: Vec<&String> = sets
        .iter()
        .filter(|(_, rs)| image_of_rs(rs).ends_with(image))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(found.len(), 1, "replica sets of {image}: {found:?}");
    found[0].clone()
}

fn image_of_pod(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Counts toward the replicas: not being deleted, not finished.
fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !meta::is_terminating(&pod.metadata) && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Follows every state the namespace's pods go through in etcd — a list,
/// then a watch replayed one revision at a time, so no intermediate state
/// is skipped — and hands each to `observe`.
struct Sampler<S> {
    stop: CancellationToken,
    task: JoinHandle<S>,
}

impl<S: Send + 'static> Sampler<S> {
    async fn start(
        store: Store,
        mut state: S,
        observe: fn(&mut S, i64, &BTreeMap<String, Pod>),
    ) -> Self {
        let prefix = keys::namespace_prefix(Kind::Pod, Some(NS));
        let list = store.list_prefix(&prefix).await.expect("list pods");
        let mut pods: BTreeMap<String, Pod> = list
            .items
            .iter()
            .map(|kv| {
                let pod: Pod = store::decode(kv).expect("pod decodes");
                (meta::name(&pod).to_string(), pod)
            })
            .collect();
        observe(&mut state, list.revision, &pods);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(list.revision + 1);
        let mut stream = store
            .client()
            .watch(prefix.as_str(), Some(options))
            .await
            .expect("watch pods");
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return state,
                    msg = stream.message() => msg,
                };
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    other => panic!("the pod watch ended: {other:?}"),
                };
                assert!(
                    resp.compact_revision() == 0 && !resp.canceled(),
                    "the pod watch was compacted or cancelled"
                );
                let events = resp.events();
                for (i, ev) in events.iter().enumerate() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let name = key.rsplit('/').next().unwrap_or_default().to_string();
                    match ev.event_type() {
                        EventType::Put => {
                            pods.insert(name, store::decode(kv).expect("pod decodes"));
                        }
                        EventType::Delete => {
                            pods.remove(&name);
                        }
                    }
                    // One state per etcd revision (a transaction may
                    // write several pods at once).
                    let revision = kv.mod_revision();
                    let next = events
                        .get(i + 1)
                        .and_then(|e| e.kv())
                        .map(|kv| kv.mod_revision());
                    if next != Some(revision) {
                        observe(&mut state, revision, &pods);
                    }
                }
            }
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> S {
        self.stop.cancel();
        self.task.await.expect("sampler task")
    }
}

/// What the RollingUpdate bounds look like over every sampled state.
#[derive(Default, Debug)]
struct Bounds {
    states: usize,
    most_pods: usize,
    fewest_ready: usize,
    violations: Vec<String>,
    /// Pods seen ready that went back to not ready while still active:
    /// readiness lost, which no strategy can plan for.
    ever_ready: BTreeSet<String>,
    readiness_lost: Vec<String>,
}

fn check_bounds(b: &mut Bounds, revision: i64, pods: &BTreeMap<String, Pod>) {
    let active: Vec<&Pod> = pods.values().filter(|p| is_active(p)).collect();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    for p in &active {
        let name = meta::name(*p).to_string();
        if is_ready(p) {
            b.ever_ready.insert(name);
        } else if b.ever_ready.remove(&name) {
            b.readiness_lost
                .push(format!("at revision {revision}: {name} lost readiness"));
        }
    }
    if b.states == 0 {
        b.fewest_ready = ready;
    }
    b.states += 1;
    b.most_pods = b.most_pods.max(active.len());
    b.fewest_ready = b.fewest_ready.min(ready);
    if active.len() > REPLICAS + MAX_SURGE || ready + MAX_UNAVAILABLE < REPLICAS {
        let summary: Vec<String> = pods
            .values()
            .map(|p| {
                format!(
                    "{} {} {}{}",
                    meta::name(p),
                    image_of_pod(p),
                    if is_ready(p) { "ready" } else { "not-ready" },
                    if meta::is_terminating(&p.metadata) {
                        " terminating"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        b.violations.push(format!(
            "at revision {revision}: {} active, {ready} ready: {summary:?}",
            active.len()
        ));
    }
}

/// The Recreate switch: states holding pods of both images.
#[derive(Default, Debug)]
struct Switch {
    old_only: usize,
    new_only: usize,
    overlaps: Vec<String>,
}

fn check_switch(s: &mut Switch, revision: i64, pods: &BTreeMap<String, Pod>) {
    let of = |image: &str| -> Vec<String> {
        pods.values()
            .filter(|p| image_of_pod(p).ends_with(image))
            .map(|p| {
                let t = if meta::is_terminating(&p.metadata) {
                    " (terminating)"
                } else {
                    ""
                };
                format!("{}{t}", meta::name(p))
            })
            .collect()
    };
    let (old, new) = (of("/commitd/web:2"), of("/commitd/web:1"));
    match (old.is_empty(), new.is_empty()) {
        (false, true) => s.old_only += 1,
        (true, false) => s.new_only += 1,
        (false, false) => s.overlaps.push(format!(
            "at revision {revision}: old {old:?} beside new {new:?}"
        )),
        (true, true) => {}
    }
}

/// A client sending one request after another to the Service from the
/// host, keeping every outcome (the version served, or the error).
struct Hammer {
    outcomes: Arc<Mutex<Vec<Result<u8, String>>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn version_of(page: &str) -> Result<u8, String> {
    if page.contains("version 1") {
        Ok(1)
    } else if page.contains("version 2") {
        Ok(2)
    } else {
        Err(format!("a page of no version: {page:?}"))
    }
}

impl Hammer {
    fn start(addr: String) -> Hammer {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (out, cancel) = (outcomes.clone(), stop.clone());
        let task = tokio::spawn(async move {
            // Paced (about 50 a second): busybox httpd forks per request,
            // and a flood would starve the probes on a small machine.
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !cancel.is_cancelled() {
                pace.tick().await;
                let outcome = http_get(&addr).await.and_then(|p| version_of(&p));
                out.lock().expect("outcomes").push(outcome);
            }
        });
        Hammer {
            outcomes,
            stop,
            task,
        }
    }

    fn outcomes(&self) -> Vec<Result<u8, String>> {
        self.outcomes.lock().expect("outcomes").clone()
    }

    /// Waits until the last `n` requests all got `version`.
    async fn wait_for_run(&self, n: usize, version: u8) {
        until(
            &format!("{n} requests in a row answered by version {version}"),
            WAIT,
            || async {
                let all = self.outcomes();
                let tail = &all[all.len().saturating_sub(n)..];
                (tail.len() == n && tail.iter().all(|o| o == &Ok(version)))
                    .then_some(())
                    .ok_or(format!("{} requests, last: {:?}", all.len(), all.last()))
            },
        )
        .await
    }

    async fn finish(self) -> Vec<Result<u8, String>> {
        let Hammer {
            outcomes,
            stop,
            task,
        } = self;
        stop.cancel();
        task.await.expect("hammer task");
        let all = outcomes.lock().expect("outcomes").clone();
        all
    }
}

/// `commitd rollout status deployment/web -n roll` in the background.
fn rollout_status(cluster: &Cluster) -> JoinHandle<(i32, String, String)> {
    let cli = cluster.cli();
    tokio::spawn(async move {
        cli.run(&[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            NS,
            "--timeout",
            "120s",
        ])
        .await
    })
}

/// The scaling decisions and readiness changes in `commitd up`'s log, to
/// explain a broken bound.
fn controller_log(cluster: &Cluster) -> String {
    let log = std::fs::read_to_string(cluster.state.path().join("up.log")).unwrap_or_default();
    let wanted = [
        "replica set",
        "created pods",
        "deleting extra pods",
        "readiness changed",
    ];
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("roll/web") && wanted.iter().any(|w| l.contains(w)))
        .collect();
    format!("controller log:\n{}", lines.join("\n"))
}

/// The reason of the Deployment's `Progressing` condition, if any.
async fn progressing_reason(store: &Store) -> Option<String> {
    let d = store.get::<Deployment>(Some(NS), "web").await.ok()??;
    d.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "Progressing")?
        .reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollouts_keep_serving_stop_on_failure_and_roll_back_by_revert() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let cluster = Cluster::up(NETWORK).await;
    let store = cluster.store().await;
    let cli = cluster.cli();

    // v1: the examples' web app makes way for this one.
    cluster.repo().remove("web.yaml");
    let v1 = cluster.commit_manifest("roll.yaml", &app("web:1", ROLLING), "Roll web v1");
    wait_applied(&store, &v1).await;
    let (code, out, err) = rollout_status(&cluster).await.expect("status task");
    assert_eq!(code, 0, "rollout status of v1: {out}{err}");
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    cli.wait_running(NS, REPLICAS, "version 1", WAIT).await;
    let v1_rs = rs_with_image(&store, "web:1").await;
    let svc = until("the service's address", WAIT, || async {
        cli.get_json("service", "web", NS).await
    })
    .await;
    let vip = format!(
        "{}:80",
        svc["spec"]["clusterIP"].as_str().expect("a cluster IP")
    );

    // v1 → v2 while a client hammers the Service: not one request fails,
    // and no state of the pods breaks maxSurge or maxUnavailable.
    until("the service to answer with v1", WAIT, || async {
        for _ in 0..10 {
            let page = http_get(&vip).await?;
            if version_of(&page) != Ok(1) {
                return Err(page);
            }
        }
        Ok(())
    })
    .await;
    let hammer = Hammer::start(vip.clone());
    hammer.wait_for_run(20, 1).await;
    let bounds = Sampler::start(store.clone(), Bounds::default(), check_bounds).await;
    let v2 = cluster.commit_manifest("roll.yaml", &app("web:2", ROLLING), "Roll web v2");
    wait_applied(&store, &v2).await;
    let (code, out, err) = rollout_status(&cluster).await.expect("status task");
    assert_eq!(code, 0, "rollout status of v2: {out}{err}");
    eprintln!("rollout status during v1 → v2:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"deployment \"web\" successfully rolled out"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Waiting for deployment \"web\" rollout to finish: ")),
        "no progress line: {out}"
    );
    assert_eq!(
        lines.len(),
        lines.iter().collect::<BTreeSet<_>>().len(),
        "a line printed twice: {out}"
    );
    hammer.wait_for_run(20, 2).await;
    let outcomes = hammer.finish().await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rollout, first: {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );
    let versions: Vec<u8> = outcomes.iter().filter_map(|o| o.clone().ok()).collect();
    let first_v2 = versions
        .iter()
        .position(|v| *v == 2)
        .expect("version 2 was served");
    assert!(first_v2 >= 20, "v2 served before the commit");
    let last_v1 = versions.iter().rposition(|v| *v == 1).unwrap_or(0);
    assert!(
        last_v1 + 20 < versions.len(),
        "v1 still served at the end: {:?}",
        &versions[last_v1.saturating_sub(5)..]
    );
    eprintln!(
        "v1 → v2: {} requests, mixed from #{first_v2} to #{last_v1}",
        versions.len()
    );
    let v2_rs = rs_with_image(&store, "web:2").await;

    // An image that does not exist: the rollout stops after the surge,
    // the old pods keep serving, and the deadline passes.
    let bad = cluster.commit_manifest(
        "roll.yaml",
        &app("web:missing", ROLLING),
        "Roll web to a missing image",
    );
    wait_applied(&store, &bad).await;
    let failing_status = rollout_status(&cluster);
    until("ProgressDeadlineExceeded", WAIT, || async {
        let reason = progressing_reason(&store).await;
        (reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .then_some(())
            .ok_or(format!("{reason:?}"))
    })
    .await;
    let (code, out, err) = failing_status.await.expect("status task");
    assert_ne!(code, 0, "rollout status of a failed rollout: {out}{err}");
    assert!(
        err.contains("error: deployment \"web\" exceeded its progress deadline"),
        "{err}"
    );
    let bad_rs = rs_with_image(&store, "web:missing").await;
    let sets = replica_sets(&store).await;
    assert_eq!(
        (replicas_of(&sets[&bad_rs]), replicas_of(&sets[&v2_rs])),
        (
            (MAX_SURGE + MAX_UNAVAILABLE) as i32,
            (REPLICAS - MAX_UNAVAILABLE) as i32
        ),
        "the stalled rollout's sizes (new, old)"
    );
    for i in 0..30 {
        let page = http_get(&vip)
            .await
            .unwrap_or_else(|e| panic!("request {i} during the stalled rollout: {e}"));
        assert_eq!(version_of(&page), Ok(2), "{page}");
    }
    let (code, out, _) = cli
        .run(&["rollout", "status", "deploy/web", "-n", NS, "--watch=false"])
        .await;
    assert_ne!(code, 0, "{out}");

    // `git revert` of the bad commit: the v2 ReplicaSet comes back (no new
    // one), takes the newest revision and names the revert; the bad one
    // goes to zero.
    let revert = cluster.repo().revert(&bad);
    wait_applied(&store, &revert).await;
    let (code, out, err) = rollout_status(&cluster).await.expect("status task");
    assert_eq!(code, 0, "rollout status of the revert: {out}{err}");
    let sets = replica_sets(&store).await;
    assert_eq!(
        sets.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([v1_rs.clone(), v2_rs.clone(), bad_rs.clone()]),
        "a revert must reuse the old replica set"
    );
    let back = &sets[&v2_rs];
    assert_eq!(replicas_of(back), REPLICAS as i32);
    assert_eq!(replicas_of(&sets[&bad_rs]), 0);
    assert_eq!(
        meta::annotation(&back.metadata, REVISION_ANNOTATION),
        Some("4")
    );
    assert_eq!(
        meta::annotation(&back.metadata, ROLLOUT_COMMIT_ANNOTATION),
        Some(revert.as_str())
    );
    assert!(!meta::is_git_owned(&back.metadata));
    cli.wait_running(NS, REPLICAS, "version 2", WAIT).await;
    let bounds = bounds.finish().await;
    assert!(
        bounds.violations.is_empty(),
        "strategy bounds broken ({} states seen):\n{}\nreadiness lost: {:?}\n{}",
        bounds.states,
        bounds.violations.join("\n"),
        bounds.readiness_lost,
        controller_log(&cluster)
    );
    assert!(bounds.states > 10, "{bounds:?}");
    eprintln!(
        "bounds over {} pod states: at most {} pods, at least {} ready",
        bounds.states, bounds.most_pods, bounds.fewest_ready
    );

    // The history: one line per revision, oldest first, with its commit.
    let (code, out, err) = cli
        .run(&["rollout", "history", "deployment/web", "-n", NS])
        .await;
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("deployment.apps/web"), "{out}");
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["REVISION", "COMMIT", "AUTHOR", "DATE", "CHANGE"],
        "{out}"
    );
    let rows: Vec<(String, String)> = lines
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].to_string(), cells[1].to_string())
        })
        .collect();
    let short = |sha: &str| sha[..7].to_string();
    assert_eq!(
        rows,
        vec![
            ("1".to_string(), short(&v1)),
            ("3".to_string(), short(&bad)),
            ("4".to_string(), short(&revert)),
        ],
        "{out}"
    );
    // `get -o wide` shows each ReplicaSet's revision and rolling commit.
    let (code, wide, err) = cli
        .run(&["get", "replicasets", "-n", NS, "-o", "wide"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        wide.lines()
            .next()
            .unwrap_or_default()
            .ends_with("REVISION   COMMIT"),
        "{wide}"
    );
    let rs_rows: Vec<Vec<&str>> = wide
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (revision, sha) in &rows {
        assert!(
            rs_rows
                .iter()
                .any(|r| r.ends_with(&[revision.as_str(), sha.as_str()])),
            "revision {revision} of {sha} missing:\n{wide}"
        );
    }
    // And the Deployment its current revision (the revert's, 4) and the
    // commit that last changed it.
    let (code, wide, err) = cli
        .run(&["get", "deployments", "web", "-n", NS, "-o", "wide"])
        .await;
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(header.ends_with(&["REVISION", "COMMIT"]), "{wide}");
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(row.ends_with(&["4", short(&revert).as_str()]), "{wide}");
    for summary in [
        "Roll web v1",
        "Roll web to a missing image",
        "Revert \"Roll web to a missing image\"",
        "Test Author",
    ] {
        assert!(out.contains(summary), "{summary} missing:\n{out}");
    }
    let (code, out, err) = cli
        .run(&[
            "rollout",
            "history",
            "deployments/web",
            "-n",
            NS,
            "--revision",
            "3",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("deployment.apps/web with revision #3\n"),
        "{out}"
    );
    assert!(out.contains(&format!("Commit:      {bad}")), "{out}");
    assert!(out.contains("commitd/web:missing"), "{out}");
    assert!(out.contains("    Roll web to a missing image"), "{out}");
    let (code, _, err) = cli
        .run(&[
            "rollout",
            "history",
            "deployment/web",
            "-n",
            NS,
            "--revision",
            "2",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("unable to find the specified revision"),
        "{err}"
    );

    // Recreate: every old pod is gone from etcd (not just terminating)
    // before the first new one exists.
    let switch = Sampler::start(store.clone(), Switch::default(), check_switch).await;
    let recreate =
        cluster.commit_manifest("roll.yaml", &app("web:1", RECREATE), "Recreate web at v1");
    wait_applied(&store, &recreate).await;
    let (code, out, err) = rollout_status(&cluster).await.expect("status task");
    assert_eq!(code, 0, "rollout status of the recreate: {out}{err}");
    cli.wait_running(NS, REPLICAS, "version 1", WAIT).await;
    let switch = switch.finish().await;
    assert!(switch.old_only > 0 && switch.new_only > 0, "{switch:?}");
    assert_eq!(
        rs_with_image(&store, "web:1").await,
        v1_rs,
        "the v1 template's replica set is reused"
    );
    assert!(
        switch.overlaps.is_empty(),
        "Recreate ran old and new pods together:\n{}\n{}",
        switch.overlaps.join("\n"),
        controller_log(&cluster)
    );

    // Sync waves: the wave-1 Deployment is written only once the wave-0
    // one is healthy, which its readiness probe delays by five seconds.
    let waves = cluster.commit_manifest("waves.yaml", WAVES, "Backend before frontend");
    let backend = until("the wave-0 backend", WAIT, || async {
        cli.get_json("deployment", "backend", NS).await
    })
    .await;
    let frontend_early = cli.get_json("deployment", "frontend", NS).await;
    assert!(
        backend["status"]["availableReplicas"].as_i64().unwrap_or(0) == 0
            && frontend_early.is_err(),
        "the frontend came with an unready backend: {backend} {frontend_early:?}"
    );
    let (_, status, _) = cli.run(&["status"]).await;
    assert!(status.contains("through sync wave 0"), "{status}");
    // Meanwhile the frontend, declared but not written, is Missing, and
    // so is the commit as a whole.
    let missing = until("the wave-1 frontend reported Missing", WAIT, || async {
        let (_, status, _) = cli.run(&["status"]).await;
        status
            .contains("Deployment roll/frontend: Missing sync wave 1")
            .then_some(status.clone())
            .ok_or(status)
    })
    .await;
    assert!(
        missing
            .lines()
            .any(|l| l.starts_with("Health:") && l.contains("Missing for")),
        "{missing}"
    );
    until("the wave-1 frontend", WAIT, || async {
        cli.get_json("deployment", "frontend", NS).await
    })
    .await;
    let backend = cli
        .get_json("deployment", "backend", NS)
        .await
        .expect("backend");
    assert_eq!(backend["status"]["availableReplicas"], 1, "{backend}");
    until("the waves commit applied whole", WAIT, || async {
        let applied: Option<AppliedCommit> = store
            .get_record(keys::APPLIED)
            .await
            .map_err(|e| e.to_string())?;
        applied
            .filter(|a| a.commit.sha == waves && a.through_wave.is_none())
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;

    // A template whose pods never become ready, under the safety net: the
    // rollout stops after the surge while the old pods keep serving; past
    // the deadline the old ReplicaSet is brought back in full without a
    // new commit, and the Deployment stays Degraded, naming the commit.
    let serving = v1_rs.clone();
    let hammer = Hammer::start(vip.clone());
    hammer.wait_for_run(20, 1).await;
    let never_ready = app("web:2", ROLLING)
        .replace("path: /\n", "path: /never-ready\n")
        .replace(
            "  namespace: roll\nspec:\n  replicas: 4",
            "  namespace: roll\n  annotations: {commitd.io/rollback-on-failure: \"true\"}\nspec:\n  replicas: 4",
        );
    assert!(never_ready.contains("never-ready") && never_ready.contains("rollback-on-failure"));
    let failing = cluster.commit_manifest(
        "roll.yaml",
        &never_ready,
        "Roll web to pods that never become ready",
    );
    wait_applied(&store, &failing).await;
    let (code, out, _) = rollout_status(&cluster).await.expect("status task");
    assert_ne!(code, 0, "rollout status of a never-ready rollout: {out}");
    let rolled_back = until("the old replica set back in full", WAIT, || async {
        let sets = replica_sets(&store).await;
        let d = store
            .get::<Deployment>(Some(NS), "web")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no deployment")?;
        let message = d
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.message)
            .unwrap_or_default();
        let back = sets.get(&serving).map(replicas_of) == Some(REPLICAS as i32);
        let others_zero = sets
            .iter()
            .filter(|(name, _)| name.starts_with("web-") && **name != serving)
            .all(|(_, rs)| replicas_of(rs) == 0);
        (back && others_zero && message.contains("rolled back to"))
            .then_some(message.clone())
            .ok_or(format!("{message}; {:?}", sets.keys()))
    })
    .await;
    assert!(
        rolled_back.contains(&format!("{serving:?}")),
        "{rolled_back}"
    );
    hammer.wait_for_run(20, 1).await;
    let outcomes = hammer.finish().await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the safety net worked, first: {:?}",
        failed.len(),
        outcomes.len(),
        failed.first()
    );
    assert!(
        outcomes.iter().all(|o| o == &Ok(1)),
        "the never-ready pods served"
    );
    let (_, status, _) = cli.run(&["status"]).await;
    assert!(
        status.contains("Deployment roll/web: Degraded")
            && status.contains(&format!("changed last by commit {}", &failing[..7])),
        "{status}"
    );
}
