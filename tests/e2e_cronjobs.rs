//! CronJobs end to end, with real containers under `commitd up`: a
//! CronJob running every minute gets a Job per minute, named by its
//! schedule time and owned by the CronJob, whose pod really runs and
//! succeeds (its log says so); with `successfulJobsHistoryLimit: 1` the
//! first Job (and its pod) is gone once the second has finished; the
//! CronJob's status and `commitd get cronjobs` show it as kubectl would.
//! Takes two to three minutes: the schedule has minute granularity.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use commitd_api::k8s_openapi::api::batch::v1::{CronJob, Job};
use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::{meta, Store};
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdcron0",
    pod_cidr: "10.229.0.0/24",
    service_cidr: "10.100.29.0/24",
    node_name: "cron-node",
    dns_port: 10229,
    proxy_table: "cdcron",
};

/// A run starts at the next minute and takes a few seconds: two minutes
/// cover the wait for one run with room for a slow container start.
const RUN_WAIT: Duration = Duration::from_secs(150);

const CRON_JOB: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
  namespace: demo
spec:
  schedule: "*/1 * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels: {app: tick}
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
            - name: tick
              image: REGISTRY/commitd/web:1
              command: [sh, -c, 'echo "tick from $(hostname)"']
"#;

fn complete(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

/// The Jobs the CronJob controls, by name.
async fn jobs_of(store: &Store, cron: &CronJob) -> Result<Vec<Job>, String> {
    let uid = cron.metadata.uid.clone().unwrap_or_default();
    let jobs = store
        .list::<Job>(Some("demo"))
        .await
        .map_err(|e| e.to_string())?
        .items;
    Ok(jobs
        .into_iter()
        .filter(|j| meta::controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .collect())
}

async fn pods_of(store: &Store, job_uid: &str) -> Result<Vec<Pod>, String> {
    let pods = store
        .list::<Pod>(Some("demo"))
        .await
        .map_err(|e| e.to_string())?
        .items;
    Ok(pods
        .into_iter()
        .filter(|p| meta::controller_of(&p.metadata).is_some_and(|o| o.uid == job_uid))
        .collect())
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjobs_run_every_minute_and_keep_their_history() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;
    cluster.commit_manifest("cron.yaml", CRON_JOB, "A CronJob every minute");
    let store = cluster.store().await;
    let cron: CronJob = until("cronjob tick to exist", WAIT, || async {
        store
            .get::<CronJob>(Some("demo"), "tick")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_string())
    })
    .await;

    // The first run: a Job named for its minute, whose pod succeeds.
    let first: Job = until("the first job of tick to complete", RUN_WAIT, || async {
        let jobs = jobs_of(&store, &cron).await?;
        jobs.iter()
            .filter(|j| complete(j))
            .min_by_key(|j| meta::name(*j).to_string())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "{:?}",
                    jobs.iter()
                        .map(|j| (meta::name(j), &j.status))
                        .collect::<Vec<_>>()
                )
            })
    })
    .await;
    let first_name = meta::name(&first).to_string();
    let minutes: i64 = first_name
        .strip_prefix("tick-")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("job name {first_name} is not tick-<minutes>"));
    let scheduled = meta::annotation(
        &first.metadata,
        "batch.kubernetes.io/cronjob-scheduled-timestamp",
    )
    .unwrap_or_else(|| panic!("no scheduled timestamp on {first_name}"));
    let at: commitd_api::k8s_openapi::jiff::Timestamp =
        scheduled.parse().expect("an RFC 3339 scheduled time");
    assert_eq!(at.as_second(), minutes * 60, "{scheduled} vs {first_name}");
    assert!(scheduled.ends_with(":00Z"), "{scheduled}");
    assert_eq!(
        first
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("tick")
    );
    let first_uid = first.metadata.uid.clone().unwrap_or_default();
    let pods = pods_of(&store, &first_uid).await.expect("list pods");
    assert_eq!(pods.len(), 1, "one pod for the run");
    assert_eq!(phase(&pods[0]), "Succeeded");
    let pod_name = meta::name(&pods[0]).to_string();
    let (code, out, err) = cluster.cli().run(&["logs", &pod_name, "-n", "demo"]).await;
    assert_eq!(code, 0, "logs {pod_name}: {err}");
    assert!(out.contains("tick from"), "{out}");

    // The CronJob's status tells the same.
    let status = until("tick's status to show the first run", WAIT, || async {
        let c = store
            .get::<CronJob>(Some("demo"), "tick")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("gone")?;
        let s = c.status.clone().unwrap_or_default();
        match (&s.last_schedule_time, &s.last_successful_time) {
            (Some(_), Some(_)) => Ok(s),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    assert!(status.last_schedule_time.map(|t| t.0) >= Some(at));

    // The second run finishes; with a history of one success, the first
    // Job goes, and its pod with it.
    let kept = until(
        "a second run to replace the first in the history",
        RUN_WAIT,
        || async {
            let jobs = jobs_of(&store, &cron).await?;
            let done: BTreeSet<String> = jobs
                .iter()
                .filter(|j| complete(j))
                .map(|j| meta::name(j).to_string())
                .collect();
            let first_gone = !jobs.iter().any(|j| meta::name(j) == first_name);
            if first_gone && done.len() == 1 {
                Ok(done)
            } else {
                Err(format!(
                    "complete: {done:?}, first still there: {}",
                    !first_gone
                ))
            }
        },
    )
    .await;
    assert!(
        kept.iter().all(|n| *n > first_name),
        "the newer run is kept: {kept:?}"
    );
    until("the first run's pod to be collected", WAIT, || async {
        let pods = pods_of(&store, &first_uid).await?;
        if pods.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                pods.iter().map(meta::name).collect::<Vec<_>>()
            ))
        }
    })
    .await;

    // `commitd get cronjobs`, as kubectl shows them.
    let (code, table, err) = cluster.cli().run(&["get", "cronjobs", "-n", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    let header = table.lines().next().unwrap_or_default();
    let header: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("tick "))
        .unwrap_or_else(|| panic!("no row for tick: {table}"))
        .split_whitespace()
        .collect();
    // The schedule's five fields, no time zone, not suspended.
    assert_eq!(
        row[..8],
        ["tick", "*/1", "*", "*", "*", "*", "<none>", "False"],
        "{table}"
    );
    assert!(
        row[8].parse::<usize>().is_ok_and(|n| n <= 1),
        "ACTIVE: {table}"
    );
    assert!(
        row[9].ends_with('s') || row[9].ends_with('m'),
        "LAST SCHEDULE: {table}"
    );

    cluster.stop().await;
}
