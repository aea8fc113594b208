//! Jobs end to end, with real containers under `commitd up`: a Job of
//! three completions, two at a time, finishes with three succeeded pods
//! (never more than two running, sampled); a Job whose pod always fails
//! with `backoffLimit: 1` fails after two attempts, 10 s of back-off
//! apart, with `BackoffLimitExceeded`; an Indexed Job's pods each print their
//! `JOB_COMPLETION_INDEX` and hostname; `commitd get jobs` shows kubectl's
//! columns. One test: tests in one binary would share the network.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use commitd_api::k8s_openapi::api::batch::v1::Job;
use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::meta;
use serde_json::Value;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdjob0",
    pod_cidr: "10.228.0.0/24",
    service_cidr: "10.100.28.0/24",
    node_name: "jobs-node",
    dns_port: 10228,
    proxy_table: "cdjob",
};

const JOBS: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: batch
  namespace: demo
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
        - name: work
          image: REGISTRY/commitd/web:1
          command: [sh, -c, 'sleep 2; echo done']
---
apiVersion: batch/v1
kind: Job
metadata:
  name: fails
  namespace: demo
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
        - name: work
          image: REGISTRY/commitd/web:1
          command: [sh, -c, 'echo failing; exit 3']
---
apiVersion: batch/v1
kind: Job
metadata:
  name: indexed
  namespace: demo
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
        - name: work
          image: REGISTRY/commitd/web:1
          command: [sh, -c, 'echo "index=$JOB_COMPLETION_INDEX host=$(hostname)"']
"#;

/// The reason of a Job's condition `type_` if it holds.
fn condition(job: &Value, type_: &str) -> Option<String> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
}

/// Waits until Job `name` has condition `type_`, and returns it.
async fn finished(cluster: &Cluster, name: &str, type_: &str) -> Value {
    until(&format!("job {name} to be {type_}"), WAIT, || async {
        let j = cluster.cli().get_json("job", name, "demo").await?;
        condition(&j, type_)
            .map(|_| j.clone())
            .ok_or_else(|| j["status"].to_string())
    })
    .await
}

/// The pods a Job made (its controller owner reference names its uid).
fn pods_of<'a>(pods: &'a [Pod], job: &Job) -> Vec<&'a Pod> {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    pods.iter()
        .filter(|p| meta::controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .collect()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_to_completion_fail_and_index() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;
    cluster.commit_manifest("jobs.yaml", JOBS, "Three jobs");

    // Sample the batch Job's pods while it runs: never more than two are
    // active (not finished, not being deleted).
    let store = cluster.store().await;
    let batch: Job = until("job batch to exist", WAIT, || async {
        store
            .get::<Job>(Some("demo"), "batch")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let mut most_active = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pods = store
            .list::<Pod>(Some("demo"))
            .await
            .expect("list pods")
            .items;
        let active = pods_of(&pods, &batch)
            .into_iter()
            .filter(|p| {
                !meta::is_terminating(&p.metadata) && !matches!(phase(p), "Succeeded" | "Failed")
            })
            .count();
        most_active = most_active.max(active);
        let current = store
            .get::<Job>(Some("demo"), "batch")
            .await
            .expect("get job");
        let done = current
            .as_ref()
            .and_then(|j| j.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Complete"));
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job batch did not complete: {:?}",
            current.and_then(|j| j.status)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        most_active <= 2,
        "{most_active} pods of batch were active at once"
    );
    assert!(most_active >= 1, "no pod of batch was ever seen active");

    let batch_json = finished(&cluster, "batch", "Complete").await;
    assert_eq!(batch_json["status"]["succeeded"], 3, "{batch_json}");
    assert_eq!(
        condition(&batch_json, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    let pods = store
        .list::<Pod>(Some("demo"))
        .await
        .expect("list pods")
        .items;
    let batch_pods = pods_of(&pods, &batch);
    assert_eq!(batch_pods.len(), 3, "finished pods are kept");
    assert!(batch_pods.iter().all(|p| phase(p) == "Succeeded"));

    // backoffLimit 1: two attempts, then BackoffLimitExceeded.
    let fails_json = finished(&cluster, "fails", "Failed").await;
    assert_eq!(
        condition(&fails_json, "Failed").as_deref(),
        Some("BackoffLimitExceeded"),
        "{fails_json}"
    );
    assert_eq!(fails_json["status"]["failed"], 2, "{fails_json}");
    let fails: Job = serde_json::from_value(fails_json.clone()).expect("job");
    let pods = store
        .list::<Pod>(Some("demo"))
        .await
        .expect("list pods")
        .items;
    let failed_pods = pods_of(&pods, &fails);
    assert_eq!(failed_pods.len(), 2, "two attempts");
    assert!(failed_pods.iter().all(|p| phase(p) == "Failed"));
    // The retry came after Kubernetes' 10 s back-off, not at once.
    let mut created: Vec<_> = failed_pods
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .collect();
    created.sort();
    let gap = created[1].duration_since(created[0]);
    assert!(
        gap.as_secs() >= 10,
        "the second attempt started {gap:?} after the first"
    );

    // Indexed: each pod prints its own index and hostname.
    let indexed_json = finished(&cluster, "indexed", "Complete").await;
    assert_eq!(
        indexed_json["status"]["completedIndexes"], "0-2",
        "{indexed_json}"
    );
    let indexed: Job = serde_json::from_value(indexed_json).expect("job");
    let pods = store
        .list::<Pod>(Some("demo"))
        .await
        .expect("list pods")
        .items;
    let mut seen = BTreeSet::new();
    for p in pods_of(&pods, &indexed) {
        let index = meta::annotation(&p.metadata, "batch.kubernetes.io/job-completion-index")
            .unwrap_or_default()
            .to_string();
        let name = meta::name(p).to_string();
        let (code, out, err) = cluster.cli().run(&["logs", &name, "-n", "demo"]).await;
        assert_eq!(code, 0, "logs {name}: {err}");
        assert_eq!(
            out.trim(),
            format!("index={index} host=indexed-{index}"),
            "{name}"
        );
        seen.insert(index);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["0".to_string(), "1".to_string(), "2".to_string()])
    );

    // `commitd get jobs`, as kubectl shows them.
    let (code, table, err) = cluster.cli().run(&["get", "jobs", "-n", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{table}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.first() == Some(&name))
            .cloned()
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
    };
    assert_eq!(row("batch")[1..3], ["Complete", "3/3"], "{table}");
    assert_eq!(row("fails")[1..3], ["Failed", "0/1"], "{table}");
    assert_eq!(row("indexed")[1..3], ["Complete", "3/3"], "{table}");
    let (code, wide, err) = cluster
        .cli()
        .run(&["get", "jobs", "batch", "-n", "demo", "-o", "wide"])
        .await;
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "COMPLETIONS",
            "DURATION",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{wide}"
    );
    let uid = batch.metadata.uid.clone().unwrap_or_default();
    assert!(
        wide.contains(&format!("batch.kubernetes.io/controller-uid={uid}")),
        "{wide}"
    );

    // Git-owned, finished Jobs are left alone: nothing to correct.
    let again = store
        .get::<Job>(Some("demo"), "batch")
        .await
        .expect("get job")
        .expect("job batch");
    assert_eq!(again.metadata.uid, batch.metadata.uid);

    cluster.stop().await;
}
