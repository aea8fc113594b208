//! The reconciler against a real etcd: commits are applied whole, pruned,
//! recorded in history, rejected without any change when broken, drift is
//! put back, and two reconcilers never interleave.

mod support;

use std::time::Duration;

use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd_api::k8s_openapi::api::apps::v1::Deployment;
use commitd_api::k8s_openapi::api::batch::v1::Job;
use commitd_api::k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service, ServiceAccount};
use commitd_api::keys;
use commitd_api::records::{AppliedCommit, HistoryRecord, Outcome};
use commitd_api::service_network::ServiceNetwork;
use commitd_api::{meta, Store};
use commitd_reconciler::git_source::GitSourceConfig;
use support::git::TestRepo;
use support::wait::until;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n";
const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: demo\ndata:\n  color: blue\n";
const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: 127.0.0.1:5000/commitd/web:1
"#;

struct Harness {
    _data: tempfile::TempDir,
    etcd: Option<Etcd>,
    store: Store,
    repo: TestRepo,
    cancel: CancellationToken,
}

impl Harness {
    async fn start() -> Harness {
        let data = tempfile::tempdir().expect("tempdir");
        let etcd = Etcd::start(EtcdOptions {
            data_dir: data.path().join("etcd"),
            client_port: None,
            extra_args: Vec::new(),
        })
        .await
        .expect("etcd starts");
        let store = Store::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .expect("connect");
        Harness {
            _data: data,
            etcd: Some(etcd),
            store,
            repo: TestRepo::new(),
            cancel: CancellationToken::new(),
        }
    }

    fn source(&self) -> GitSourceConfig {
        GitSourceConfig {
            repo: self.repo.path(),
            branch: None,
            path: "manifests".into(),
            poll_interval: Duration::from_secs(30),
            ..GitSourceConfig::default()
        }
    }

    fn follow(&self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        tokio::spawn(commitd_reconciler::follow(
            self.store.clone(),
            self.source(),
            self.cancel.clone(),
        ))
    }

    async fn history(&self) -> Vec<HistoryRecord> {
        support::history::records(&self.store).await
    }

    async fn wait_for_record(&self, sha: &str) -> HistoryRecord {
        support::history::wait_for_record(&self.store, sha, WAIT).await
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(e) = self.etcd.take() {
            e.stop().await.expect("etcd stops");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_apply_whole_prune_and_reject_without_change() {
    let h = Harness::start().await;
    let c1 = h.repo.commit(
        "Deploy web",
        &[
            ("manifests/namespace.yaml", Some(NAMESPACE)),
            (
                "manifests/web.yaml",
                Some(&format!("{CONFIG}---\n{DEPLOYMENT}")),
            ),
            ("README.md", Some("not a manifest")),
        ],
    );
    let _task = h.follow();
    let r1 = h.wait_for_record(&c1).await;
    assert_eq!(r1.outcome, Outcome::Applied);
    assert_eq!(r1.commit.author, "Test Author");
    assert_eq!(r1.commit.summary, "Deploy web");
    assert_eq!(r1.changes.created.len(), 3, "{:?}", r1.changes);

    let d: Deployment = h
        .store
        .get(Some("demo"), "web")
        .await
        .expect("get")
        .expect("deployment exists");
    assert_eq!(
        meta::annotation(&d.metadata, meta::COMMIT_ANNOTATION),
        Some(c1.as_str())
    );
    assert_eq!(
        meta::annotation(&d.metadata, meta::SOURCE_ANNOTATION),
        Some("manifests/web.yaml:9")
    );
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(d.metadata.uid.is_some());
    let applied: AppliedCommit = h
        .store
        .get_record(keys::APPLIED)
        .await
        .expect("read")
        .expect("applied");
    assert_eq!(applied.commit.sha, c1);
    assert_eq!(applied.objects, 3);

    // Scale and drop the ConfigMap: one update, one prune, the rest unchanged.
    let c2 = h.repo.commit(
        "Scale web to 3, drop settings",
        &[(
            "manifests/web.yaml",
            Some(&DEPLOYMENT.replace("replicas: 2", "replicas: 3")),
        )],
    );
    let r2 = h.wait_for_record(&c2).await;
    assert_eq!(r2.outcome, Outcome::Applied);
    assert_eq!(r2.changes.updated, vec!["Deployment demo/web".to_string()]);
    assert_eq!(
        r2.changes.deleted,
        vec!["ConfigMap demo/settings".to_string()]
    );
    assert_eq!(r2.changes.unchanged, 1);
    let d2: Deployment = h
        .store
        .get(Some("demo"), "web")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(d2.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(
        d2.metadata.uid, d.metadata.uid,
        "an update keeps the object's identity"
    );
    assert_eq!(d2.metadata.generation, Some(2));
    assert!(h
        .store
        .get::<ConfigMap>(Some("demo"), "settings")
        .await
        .expect("get")
        .is_none());

    // A broken commit (a typo in one file, valid changes in another) changes nothing.
    let before = h
        .store
        .list_prefix("/commitd/objects/")
        .await
        .expect("list");
    let c3 = h.repo.commit(
        "Broken",
        &[
            (
                "manifests/web.yaml",
                Some(&DEPLOYMENT.replace("replicas: 2", "replica: 5")),
            ),
            (
                "manifests/extra.yaml",
                Some(&CONFIG.replace("settings", "more")),
            ),
        ],
    );
    let r3 = h.wait_for_record(&c3).await;
    assert_eq!(r3.outcome, Outcome::Rejected);
    assert_eq!(r3.errors.len(), 1, "{:?}", r3.errors);
    assert_eq!(
        r3.errors[0].to_string(),
        "manifests/web.yaml:7: error: spec.replica: unknown field \"replica\", did you mean \"replicas\"?"
    );
    let after = h
        .store
        .list_prefix("/commitd/objects/")
        .await
        .expect("list");
    let values = |l: &commitd_api::store::List<etcd_client::KeyValue>| {
        l.items
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        values(&before),
        values(&after),
        "a rejected commit must not touch any object"
    );
    let applied: AppliedCommit = h
        .store
        .get_record(keys::APPLIED)
        .await
        .expect("read")
        .expect("applied");
    assert_eq!(applied.commit.sha, c2, "the last good commit stays live");
    let rejected: HistoryRecord = h
        .store
        .get_record(keys::REJECTED)
        .await
        .expect("read")
        .expect("rejected");
    assert_eq!(rejected.commit.sha, c3);

    // Deleting every manifest prunes everything Git owned.
    let c4 = h.repo.commit(
        "Remove all",
        &[
            ("manifests/web.yaml", None),
            ("manifests/extra.yaml", None),
            ("manifests/namespace.yaml", None),
        ],
    );
    let r4 = h.wait_for_record(&c4).await;
    assert_eq!(r4.outcome, Outcome::Applied);
    assert_eq!(r4.changes.deleted.len(), 2, "{:?}", r4.changes);
    assert!(h
        .store
        .get::<Namespace>(None, "demo")
        .await
        .expect("get")
        .is_none());
    let seqs: Vec<u64> = h.history().await.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_put_back_and_recorded() {
    let h = Harness::start().await;
    let c1 = h.repo.commit(
        "Config",
        &[(
            "manifests/all.yaml",
            Some(&format!("{NAMESPACE}---\n{CONFIG}")),
        )],
    );
    let _task = h.follow();
    h.wait_for_record(&c1).await;

    // Someone edits the ConfigMap by hand.
    h.store
        .modify::<ConfigMap, _>(Some("demo"), "settings", |cm| {
            cm.data
                .get_or_insert_with(Default::default)
                .insert("color".into(), "red".into());
            true
        })
        .await
        .expect("edit")
        .expect("exists");
    until("the edit to be reverted", WAIT, || async {
        let cm: Option<ConfigMap> = h
            .store
            .get(Some("demo"), "settings")
            .await
            .map_err(|e| e.to_string())?;
        let color = cm
            .and_then(|c| c.data)
            .and_then(|d| d.get("color").cloned());
        (color.as_deref() == Some("blue"))
            .then_some(())
            .ok_or(format!("color {color:?}"))
    })
    .await;
    // Someone deletes it.
    h.store
        .delete::<ConfigMap>(Some("demo"), "settings", None)
        .await
        .expect("delete");
    until("the deleted object to come back", WAIT, || async {
        let cm: Option<ConfigMap> = h
            .store
            .get(Some("demo"), "settings")
            .await
            .map_err(|e| e.to_string())?;
        cm.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await;
    let drift: Vec<HistoryRecord> = h
        .history()
        .await
        .into_iter()
        .filter(|r| r.outcome == Outcome::DriftCorrected)
        .collect();
    assert!(drift.len() >= 2, "{drift:?}");
    assert!(drift.iter().all(|r| r.commit.sha == c1));
    assert!(drift[0]
        .note
        .as_deref()
        .unwrap_or_default()
        .contains("ConfigMap demo/settings"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_never_interleave() {
    let h = Harness::start().await;
    let _a = h.follow();
    let _b = h.follow();
    let mut shas = Vec::new();
    for i in 0..5 {
        let cm = CONFIG.replace("color: blue", &format!("color: c{i}"));
        shas.push(h.repo.commit(
            &format!("Change {i}"),
            &[("manifests/all.yaml", Some(&format!("{NAMESPACE}---\n{cm}")))],
        ));
    }
    let last = shas.last().cloned().expect("commits");
    h.wait_for_record(&last).await;
    let history = h.history().await;
    let applied: Vec<&str> = history
        .iter()
        .filter(|r| r.outcome == Outcome::Applied)
        .map(|r| r.commit.sha.as_str())
        .collect();
    let mut unique = applied.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        applied.len(),
        unique.len(),
        "a commit was applied twice: {applied:?}"
    );
    let seqs: Vec<u64> = history.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "history has gaps or repeats"
    );
    let cm: ConfigMap = h
        .store
        .get(Some("demo"), "settings")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        cm.data.and_then(|d| d.get("color").cloned()).as_deref(),
        Some("c4")
    );
    h.stop().await;
}

const SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - name: http
    port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: demo
spec:
  clusterIP: None
  selector: {app: db}
"#;

async fn service(store: &Store, name: &str) -> Service {
    store
        .get::<Service>(Some("demo"), name)
        .await
        .expect("read service")
        .unwrap_or_else(|| panic!("service {name} exists"))
}

/// (clusterIP, first node port) of a stored Service.
fn allocated(s: &Service) -> (String, Option<i32>) {
    let spec = s.spec.clone().unwrap_or_default();
    let node_port = spec
        .ports
        .unwrap_or_default()
        .first()
        .and_then(|p| p.node_port);
    (spec.cluster_ip.unwrap_or_default(), node_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_keep_their_addresses_and_conflicts_reject_the_commit() {
    let h = Harness::start().await;
    let c1 = h.repo.commit(
        "Services",
        &[
            ("manifests/ns.yaml", Some(NAMESPACE)),
            ("manifests/svc.yaml", Some(SERVICES)),
        ],
    );
    let task = h.follow();
    assert_eq!(h.wait_for_record(&c1).await.outcome, Outcome::Applied);
    let (web_ip, web_port) = allocated(&service(&h.store, "web").await);
    let ip: std::net::Ipv4Addr = web_ip.parse().expect("an IPv4 ClusterIP");
    assert!(
        ServiceNetwork::default().assignable(ip),
        "{ip} is not a ClusterIP of 10.96.0.0/12"
    );
    let web_port = web_port.expect("a node port");
    assert!((30000..=32767).contains(&web_port), "{web_port}");
    assert_eq!(allocated(&service(&h.store, "db").await).0, "None");

    // Another commit renumbers the port: what it was given stays.
    let c2 = h.repo.commit(
        "Renumber the port",
        &[(
            "manifests/svc.yaml",
            Some(&SERVICES.replace("    port: 80\n", "    port: 81\n")),
        )],
    );
    let r2 = h.wait_for_record(&c2).await;
    assert_eq!(r2.outcome, Outcome::Applied);
    assert_eq!(r2.changes.updated, vec!["Service demo/web".to_string()]);
    let web = service(&h.store, "web").await;
    assert_eq!(allocated(&web), (web_ip.clone(), Some(web_port)));

    // A restarted reconciler sees no drift and changes nothing.
    h.cancel.cancel();
    task.await.expect("join").expect("follow");
    let revision = web.metadata.resource_version.clone();
    let h = Harness {
        cancel: CancellationToken::new(),
        ..h
    };
    let _task = h.follow();

    // Taking web's address or node port explicitly is rejected with the
    // file, line and field, and nothing changes.
    let thief = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: thief\n  namespace: demo\nspec:\n  type: NodePort\n  clusterIP: {web_ip}\n  ports:\n  - port: 80\n    nodePort: {web_port}\n"
    );
    let c3 = h.repo.commit(
        "Steal an address",
        &[("manifests/thief.yaml", Some(&thief))],
    );
    let r3 = h.wait_for_record(&c3).await;
    assert_eq!(r3.outcome, Outcome::Rejected);
    let errors: Vec<String> = r3.errors.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        errors,
        vec![
            format!("manifests/thief.yaml:8: error: spec.clusterIP: Invalid value: \"{web_ip}\": failed to allocate IP {web_ip}: provided IP is already allocated (to Service demo/web)"),
            format!("manifests/thief.yaml:11: error: spec.ports[0].nodePort: Invalid value: {web_port}: provided port is already allocated (to Service demo/web)"),
        ]
    );
    assert!(h
        .store
        .get::<Service>(Some("demo"), "thief")
        .await
        .expect("read")
        .is_none());
    assert_eq!(
        service(&h.store, "web").await.metadata.resource_version,
        revision
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_bound_by_the_scheduler_is_not_drift() {
    let h = Harness::start().await;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: solo\n  namespace: demo\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/commitd/web:1\n";
    let c1 = h.repo.commit(
        "A bare pod",
        &[
            ("manifests/ns.yaml", Some(NAMESPACE)),
            ("manifests/pod.yaml", Some(pod)),
        ],
    );
    let _task = h.follow();
    h.wait_for_record(&c1).await;
    // The scheduler binds it, as it does any pod.
    h.store
        .modify::<Pod, _>(Some("demo"), "solo", |p| {
            p.spec.get_or_insert_with(Default::default).node_name = Some("node-1".into());
            true
        })
        .await
        .expect("bind")
        .expect("exists");
    // A later commit is applied; by then the binding was seen by the
    // drift check, which must have left it alone.
    let account =
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n  namespace: demo\n";
    let c2 = h.repo.commit(
        "More config",
        &[
            ("manifests/cm.yaml", Some(CONFIG)),
            ("manifests/sa.yaml", Some(account)),
        ],
    );
    assert_eq!(h.wait_for_record(&c2).await.outcome, Outcome::Applied);
    let sa = h
        .store
        .get::<ServiceAccount>(Some("demo"), "web")
        .await
        .expect("read");
    assert!(sa.is_some(), "the ServiceAccount is stored");
    let bound = h
        .store
        .get::<Pod>(Some("demo"), "solo")
        .await
        .expect("read")
        .and_then(|p| p.spec)
        .and_then(|s| s.node_name);
    assert_eq!(bound.as_deref(), Some("node-1"));
    let drift = h
        .history()
        .await
        .into_iter()
        .filter(|r| r.outcome == Outcome::DriftCorrected)
        .count();
    assert_eq!(drift, 0, "{:?}", h.history().await);

    // Removed from Git, the bound pod is deleted gracefully: its node
    // stops it (preStop, SIGTERM) and then removes the object.
    let c3 = h
        .repo
        .commit("Remove the pod", &[("manifests/pod.yaml", None)]);
    assert_eq!(h.wait_for_record(&c3).await.outcome, Outcome::Applied);
    let leaving = h
        .store
        .get::<Pod>(Some("demo"), "solo")
        .await
        .expect("read")
        .expect("still there until its node removes it");
    assert!(leaving.metadata.deletion_timestamp.is_some());
    assert_eq!(leaving.metadata.deletion_grace_period_seconds, Some(30));
    h.stop().await;
}

/// A Deployment in sync wave 0 and a ConfigMap in wave 1: the ConfigMap is
/// written only once the Deployment is healthy. No controllers run here,
/// so the test reports the Deployment's rollout itself, as its controller
/// would.
const WAVE_DB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: db
  namespace: demo
  annotations: {commitd.io/sync-wave: "0"}
spec:
  replicas: 1
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: 127.0.0.1:5000/commitd/web:1
"#;
const WAVE_CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: demo\n  annotations: {argocd.argoproj.io/sync-wave: \"1\"}\ndata:\n  color: COLOR\n";

async fn applied(store: &Store) -> AppliedCommit {
    store
        .get_record(keys::APPLIED)
        .await
        .expect("read applied")
        .expect("a commit is applied")
}

async fn color(store: &Store) -> Option<String> {
    let cm: Option<ConfigMap> = store.get(Some("demo"), "settings").await.expect("get");
    cm.and_then(|c| c.data?.get("color").cloned())
}

/// Reports `db` rolled out and available, as the Deployment controller
/// would.
async fn report_db_available(store: &Store) {
    store
        .modify::<Deployment, _>(Some("demo"), "db", |d| {
            let generation = d.metadata.generation;
            let status = d.status.get_or_insert_with(Default::default);
            status.observed_generation = generation;
            status.replicas = Some(1);
            status.updated_replicas = Some(1);
            status.ready_replicas = Some(1);
            status.available_replicas = Some(1);
            true
        })
        .await
        .expect("report db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_waves_apply_one_after_another_once_healthy() {
    let h = Harness::start().await;
    let blue = WAVE_CONFIG.replace("COLOR", "blue");
    let c1 = h.repo.commit(
        "Database first, then its settings",
        &[
            ("manifests/namespace.yaml", Some(NAMESPACE)),
            ("manifests/db.yaml", Some(WAVE_DB)),
            ("manifests/settings.yaml", Some(&blue)),
        ],
    );
    let _task = h.follow();

    // Wave 0 (the Namespace has no annotation: wave 0 too) is written; the
    // wave-1 ConfigMap waits for the Deployment to be healthy.
    until("wave 0 of the first commit", WAIT, || async {
        let a: Option<AppliedCommit> = h.store.get_record(keys::APPLIED).await.ok().flatten();
        a.filter(|a| a.commit.sha == c1 && a.through_wave == Some(0))
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let db: Option<Deployment> = h.store.get(Some("demo"), "db").await.expect("get");
    assert!(db.is_some(), "wave 0 is written");
    assert_eq!(color(&h.store).await, None, "wave 1 waits");

    // Healthy: wave 1 follows, and the commit is applied whole.
    report_db_available(&h.store).await;
    until("wave 1 after wave 0 is healthy", WAIT, || async {
        (color(&h.store).await.as_deref() == Some("blue"))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    until("the commit applied whole", WAIT, || async {
        let a = applied(&h.store).await;
        (a.commit.sha == c1 && a.through_wave.is_none())
            .then_some(())
            .ok_or(format!("{a:?}"))
    })
    .await;
    let notes: Vec<Option<String>> = h.history().await.into_iter().map(|r| r.note).collect();
    assert!(
        notes
            .iter()
            .flatten()
            .any(|n| n.contains("through sync wave 0")),
        "{notes:?}"
    );

    // The next commit changes both: the ConfigMap keeps its old value
    // (and drift correction leaves it so) until wave 0 is healthy again.
    let green = WAVE_CONFIG.replace("COLOR", "green");
    let db_v2 = WAVE_DB.replace("commitd/web:1", "commitd/web:2");
    let c2 = h.repo.commit(
        "New database and settings",
        &[
            ("manifests/db.yaml", Some(&db_v2)),
            ("manifests/settings.yaml", Some(&green)),
        ],
    );
    until("wave 0 of the second commit", WAIT, || async {
        let a = applied(&h.store).await;
        (a.commit.sha == c2 && a.through_wave == Some(0))
            .then_some(())
            .ok_or(format!("{a:?}"))
    })
    .await;
    assert_eq!(color(&h.store).await.as_deref(), Some("blue"));
    let (_, status, _) = support::cli::Cli {
        connection: vec![
            "--etcd".into(),
            h.etcd.as_ref().expect("etcd").endpoint.clone().into(),
        ],
    }
    .run(&["status"])
    .await;
    assert!(status.contains("through sync wave 0"), "{status}");
    report_db_available(&h.store).await;
    until("wave 1 of the second commit", WAIT, || async {
        (color(&h.store).await.as_deref() == Some("green"))
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    h.stop().await;
}

const JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: demo
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: 127.0.0.1:5000/commitd/web:1
"#;

async fn job(store: &Store) -> Option<Job> {
    store
        .get::<Job>(Some("demo"), "migrate")
        .await
        .expect("read job")
}

/// A Job's pod template cannot change (the commit is rejected, naming the
/// file, line and field) unless the Job asks to be replaced; a Job the
/// cluster deleted after it finished (its TTL) stays deleted while Git
/// declares it unchanged, and runs again when its manifest changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_templates_are_immutable_and_expired_jobs_stay_deleted() {
    let h = Harness::start().await;
    let c1 = h.repo.commit(
        "A migration job",
        &[
            ("manifests/ns.yaml", Some(NAMESPACE)),
            ("manifests/job.yaml", Some(JOB)),
        ],
    );
    let _task = h.follow();
    assert_eq!(h.wait_for_record(&c1).await.outcome, Outcome::Applied);
    let first = job(&h.store).await.expect("job stored");
    let uid = first.metadata.uid.clone().expect("uid");
    let spec = first.spec.clone().expect("spec");
    let selector = spec.selector.clone().expect("generated selector");
    assert_eq!(
        selector
            .match_labels
            .and_then(|m| m.get("batch.kubernetes.io/controller-uid").cloned()),
        Some(uid.clone())
    );
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .expect("labels");
    assert_eq!(labels.get("controller-uid"), Some(&uid));
    assert_eq!(labels.get("job-name").map(String::as_str), Some("migrate"));

    // A new image in the template: rejected whole, the Job untouched.
    let changed = JOB.replace("commitd/web:1", "commitd/web:2");
    let c2 = h.repo.commit(
        "New migration image",
        &[("manifests/job.yaml", Some(&changed))],
    );
    let rejected = h.wait_for_record(&c2).await;
    assert_eq!(rejected.outcome, Outcome::Rejected);
    let e = &rejected.errors[0];
    assert_eq!(e.file, "manifests/job.yaml");
    assert_eq!(e.line, 12);
    assert_eq!(
        e.field.as_deref(),
        Some("spec.template.spec.containers[0].image")
    );
    assert!(e.message.contains("field is immutable"), "{}", e.message);
    assert!(e.message.contains("rename the Job"), "{}", e.message);
    assert_eq!(
        job(&h.store).await.and_then(|j| j.metadata.uid),
        Some(uid.clone())
    );

    // With replace-on-change, the old Job goes and a new one runs.
    let replace = changed.replace(
        "  namespace: demo\n",
        "  namespace: demo\n  annotations: {commitd.io/replace-on-change: \"true\"}\n",
    );
    let c3 = h.repo.commit(
        "Replace the migration",
        &[("manifests/job.yaml", Some(&replace))],
    );
    assert_eq!(h.wait_for_record(&c3).await.outcome, Outcome::Applied);
    let replaced = job(&h.store).await.expect("job stored");
    let new_uid = replaced.metadata.uid.clone().expect("uid");
    assert_ne!(new_uid, uid, "a new Job");
    assert!(replaced.status.is_none());
    let image = replaced
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image);
    assert_eq!(image.as_deref(), Some("127.0.0.1:5000/commitd/web:2"));

    // Its TTL expired: the Job controller deletes it and leaves a
    // tombstone, in one transaction (done here as it does it).
    let value = serde_json::to_value(&replaced_job(&h.store).await).expect("json");
    let tombstone = commitd_api::records::Tombstone {
        uid: new_uid,
        commit: Some(c3.clone()),
        reason: "TTLAfterFinished".into(),
        deleted_at: "2026-01-01T00:00:00Z".into(),
        view: commitd_reconciler::job_templates::tombstone_view(commitd_api::Kind::Job, &value),
    };
    let tkey = keys::tombstone_key(commitd_api::Kind::Job, Some("demo"), "migrate");
    let okey = keys::object_key(commitd_api::Kind::Job, Some("demo"), "migrate");
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::delete(okey.as_str(), None),
        etcd_client::TxnOp::put(
            tkey.as_str(),
            serde_json::to_vec(&tombstone).expect("encode"),
            None,
        ),
    ]);
    h.store
        .client()
        .txn(txn)
        .await
        .expect("delete with tombstone");
    // An unrelated commit: the Job is neither recreated nor drift.
    let c4 = h
        .repo
        .commit("Config", &[("manifests/cm.yaml", Some(CONFIG))]);
    assert_eq!(h.wait_for_record(&c4).await.outcome, Outcome::Applied);
    // Real drift (the ConfigMap deleted) makes the reconciler compare every
    // declared object with etcd, tombstone present: once the ConfigMap is
    // back, that pass is over, and it must not have brought the Job back.
    h.store
        .delete::<ConfigMap>(Some("demo"), "settings", None)
        .await
        .expect("delete the ConfigMap");
    until("the deleted ConfigMap to come back", WAIT, || async {
        let cm: Option<ConfigMap> = h
            .store
            .get(Some("demo"), "settings")
            .await
            .map_err(|e| e.to_string())?;
        cm.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await;
    assert!(job(&h.store).await.is_none(), "an expired Job came back");
    let drift: Vec<String> = h
        .history()
        .await
        .into_iter()
        .filter(|r| r.outcome == Outcome::DriftCorrected)
        .map(|r| r.note.unwrap_or_default())
        .collect();
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].contains("ConfigMap demo/settings"), "{drift:?}");
    assert!(!drift[0].contains("Job"), "{drift:?}");

    // A changed manifest runs again; the tombstone goes.
    let again = replace.replace(
        "spec:\n  template:",
        "spec:\n  backoffLimit: 2\n  template:",
    );
    let c5 = h
        .repo
        .commit("Run it again", &[("manifests/job.yaml", Some(&again))]);
    assert_eq!(h.wait_for_record(&c5).await.outcome, Outcome::Applied);
    assert!(job(&h.store).await.is_some(), "the changed Job runs again");
    let left = h
        .store
        .client()
        .get(tkey.as_str(), None)
        .await
        .expect("read tombstone")
        .kvs()
        .len();
    assert_eq!(left, 0);
    h.stop().await;
}

async fn replaced_job(store: &Store) -> Job {
    job(store).await.expect("job stored")
}

const STATEFUL_SET: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: demo
spec:
  serviceName: db
  replicas: 1
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: db
        image: 127.0.0.1:5000/commitd/web:1
"#;

async fn stateful_set_uid(store: &Store) -> Option<String> {
    store
        .get::<commitd_api::k8s_openapi::api::apps::v1::StatefulSet>(Some("demo"), "db")
        .await
        .expect("read stateful set")
        .and_then(|s| s.metadata.uid)
}

/// A StatefulSet's spec changes only where Kubernetes allows it (replicas,
/// template, update strategy …); any other change rejects the commit with
/// Kubernetes' message, unless the set asks to be replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_set_specs_change_only_where_kubernetes_allows() {
    let h = Harness::start().await;
    let c1 = h.repo.commit(
        "A database",
        &[
            ("manifests/ns.yaml", Some(NAMESPACE)),
            ("manifests/db.yaml", Some(STATEFUL_SET)),
        ],
    );
    let _task = h.follow();
    assert_eq!(h.wait_for_record(&c1).await.outcome, Outcome::Applied);
    let uid = stateful_set_uid(&h.store).await.expect("stored");

    let rolled = STATEFUL_SET
        .replace("replicas: 1", "replicas: 3")
        .replace("web:1", "web:2");
    let c2 = h
        .repo
        .commit("Scale and roll", &[("manifests/db.yaml", Some(&rolled))]);
    assert_eq!(h.wait_for_record(&c2).await.outcome, Outcome::Applied);

    let renamed = rolled.replace("serviceName: db", "serviceName: store");
    let c3 = h
        .repo
        .commit("Another service", &[("manifests/db.yaml", Some(&renamed))]);
    let rejected = h.wait_for_record(&c3).await;
    assert_eq!(rejected.outcome, Outcome::Rejected);
    let e = &rejected.errors[0];
    assert_eq!((e.file.as_str(), e.line), ("manifests/db.yaml", 6));
    assert_eq!(e.field.as_deref(), Some("spec"));
    assert!(
        e.message
            .starts_with("Forbidden: updates to statefulset spec for fields other than"),
        "{}",
        e.message
    );
    assert_eq!(stateful_set_uid(&h.store).await, Some(uid.clone()));

    let replace = renamed.replace(
        "  namespace: demo\n",
        "  namespace: demo\n  annotations: {commitd.io/replace-on-change: \"true\"}\n",
    );
    let c4 = h.repo.commit(
        "Replace the database",
        &[("manifests/db.yaml", Some(&replace))],
    );
    assert_eq!(h.wait_for_record(&c4).await.outcome, Outcome::Applied);
    let new_uid = stateful_set_uid(&h.store).await.expect("stored");
    assert_ne!(new_uid, uid, "a new StatefulSet");
    h.stop().await;
}
