//! The CronJob controller against a real etcd, with a test clock: Jobs
//! appear at the schedule times (and not before), named by their time and
//! owned by the CronJob; `Allow` runs them side by side, `Forbid` holds a
//! run back until the active one finished, `Replace` deletes the active
//! one first; finished Jobs beyond the history limits are pruned oldest
//! first; after the controller was down only the most recent missed run
//! starts; a run later than `startingDeadlineSeconds` is skipped.
//!
//! Only the CronJob controller runs: the test plays the Job controller by
//! writing the Jobs' outcomes. A second CronJob ("zz-witness", sorted
//! after the one under test, `Allow`, no deadline) shows that the
//! controller has looked at a schedule time, so "no Job was created" is
//! asserted only after the controller had every chance to create one.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use commitd_api::k8s_openapi::api::batch::v1::{CronJob, Job};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::{keys, meta, Kind, Store};
use commitd_reconciler::controllers::cronjob::{self, job_name, ManualClock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use support::etcd::with_etcd;
use support::wait::eventually;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(30);
const CRON: &str = "report";
const WITNESS: &str = "zz-witness";

/// Midnight, 2030-01-01, plus `m` minutes and `s` seconds.
fn t(m: i64, s: i64) -> Timestamp {
    Timestamp::from_second(1_893_456_000 + m * 60 + s).expect("a valid time")
}

fn cron_job(name: &str, spec: serde_json::Value) -> Result<CronJob> {
    let mut spec = spec;
    spec["schedule"] = "*/5 * * * *".into();
    spec["jobTemplate"] = serde_json::json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "work", "image": "busybox"}]}}}
    });
    let mut c: CronJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "namespace": NS,
            "creationTimestamp": Time(t(0, 0)),
            "annotations": {"commitd.io/commit": "0123456789abcdef0123456789abcdef01234567"},
        },
        "spec": spec,
    }))?;
    commitd_api::defaults::cron_job(&mut c);
    Ok(c)
}

/// The CronJob controller on a test clock, stoppable like a process.
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(store: &Store, clock: &Arc<ManualClock>) -> Running {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(cronjob::run_with_clock(
            store.clone(),
            clock.clone(),
            cancel.clone(),
        ));
        Running { cancel, task }
    }

    async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        self.task.await.context("the cronjob controller panicked")
    }
}

async fn get_cron(store: &Store, name: &str) -> Result<CronJob> {
    store
        .get::<CronJob>(Some(NS), name)
        .await?
        .ok_or_else(|| anyhow!("cronjob {name} is gone"))
}

/// The names of the Jobs `owner` controls.
async fn jobs_of(store: &Store, owner: &CronJob) -> Result<BTreeSet<String>, String> {
    let uid = owner.metadata.uid.clone().unwrap_or_default();
    let jobs = store
        .list::<Job>(Some(NS))
        .await
        .map_err(|e| e.to_string())?
        .items;
    Ok(jobs
        .iter()
        .filter(|j| meta::controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .map(|j| meta::name(j).to_string())
        .collect())
}

/// Waits until `owner` controls exactly the Jobs of `minutes`.
async fn wait_for_jobs(store: &Store, owner: &CronJob, minutes: &[i64]) -> Result<()> {
    let want: BTreeSet<String> = minutes
        .iter()
        .map(|m| job_name(meta::name(owner), t(*m, 0)))
        .collect();
    eventually(
        &format!("{} to have jobs {want:?}", meta::name(owner)),
        DEADLINE,
        || async {
            let have = jobs_of(store, owner).await?;
            if have == want {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    )
    .await
}

/// Waits until the Job of `minute` of the CronJob under test exists.
async fn wait_for_job(store: &Store, minute: i64) -> Result<()> {
    let name = job_name(CRON, t(minute, 0));
    eventually(&format!("job {name}"), DEADLINE, || async {
        match store.get::<Job>(Some(NS), &name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not there".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Waits until the CronJob's status lists exactly these active Jobs.
async fn wait_for_active(store: &Store, name: &str, minutes: &[i64]) -> Result<CronJob> {
    let want: Vec<String> = minutes.iter().map(|m| job_name(name, t(*m, 0))).collect();
    eventually(
        &format!("{name} to list {want:?} as active"),
        DEADLINE,
        || async {
            let c = get_cron(store, name).await.map_err(|e| e.to_string())?;
            let active: Vec<String> = c
                .status
                .as_ref()
                .and_then(|s| s.active.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|r| r.name.clone())
                .collect();
            if active == want {
                Ok(c)
            } else {
                Err(format!("{:?}", c.status))
            }
        },
    )
    .await
}

/// Plays the Job controller: the Job of `minute` finished (Complete or
/// Failed) 30 s after its time. Returns the etcd revision of the write.
async fn finish(store: &Store, minute: i64, outcome: &str) -> Result<i64> {
    let name = job_name(CRON, t(minute, 0));
    let done = Time(t(minute, 30));
    let stored = store
        .modify::<Job, _>(Some(NS), &name, |j| {
            let s = j.status.get_or_insert_with(Default::default);
            s.start_time = Some(Time(t(minute, 0)));
            if outcome == "Complete" {
                s.completion_time = Some(done.clone());
            }
            s.conditions = Some(vec![serde_json::from_value(serde_json::json!({
                "type": outcome, "status": "True", "lastTransitionTime": done
            }))
            .expect("a valid condition")]);
            true
        })
        .await?
        .ok_or_else(|| anyhow!("job {name} is gone"))?;
    stored
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("job {name} has no resource version"))
}

/// The etcd revision a Job was created at.
async fn created_at(store: &Store, name: &str) -> Result<i64> {
    let key = keys::object_key(Kind::Job, Some(NS), name);
    let resp = store.client().get(key.as_str(), None).await?;
    resp.kvs()
        .first()
        .map(|kv| kv.create_revision())
        .ok_or_else(|| anyhow!("job {name} does not exist"))
}

/// Changes the concurrency policy of the CronJob under test. (A pass may
/// still run on the old spec; every step below that depends on the new
/// one comes after a status write, which the controller waits to see.)
async fn set_policy(store: &Store, policy: &str) -> Result<()> {
    store
        .modify::<CronJob, _>(Some(NS), CRON, |c| {
            let spec = c.spec.get_or_insert_with(Default::default);
            spec.concurrency_policy = Some(policy.into());
            true
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cronjobs_run_on_schedule_with_their_concurrency_policy_and_history() -> Result<()> {
    with_etcd(|store| async move {
        let clock = ManualClock::new(t(0, 40));
        let ctl = Running::start(&store, &clock);
        let result = scenario(&store, &clock).await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

/// Moves the clock to one second past minute `m` and waits until the
/// controller has looked at that time: the witness has its Job for it.
async fn tick(store: &Store, clock: &ManualClock, m: i64) -> Result<()> {
    clock.set(t(m, 1));
    let name = job_name(WITNESS, t(m, 0));
    eventually(&format!("job {name}"), DEADLINE, || async {
        match store.get::<Job>(Some(NS), &name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not there".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

async fn scenario(store: &Store, clock: &Arc<ManualClock>) -> Result<()> {
    let report = store
        .create(cron_job(
            CRON,
            serde_json::json!({"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1}),
        )?)
        .await?;
    store
        .create(cron_job(WITNESS, serde_json::json!({}))?)
        .await?;

    // 00:05: the first run; 00:00 (the creation time itself) is not one.
    tick(store, clock, 5).await?;
    wait_for_jobs(store, &report, &[5]).await?;
    let c = wait_for_active(store, CRON, &[5]).await?;
    let status = c.status.clone().unwrap_or_default();
    assert_eq!(status.last_schedule_time, Some(Time(t(5, 0))));
    let first = store
        .get::<Job>(Some(NS), &job_name(CRON, t(5, 0)))
        .await?
        .context("the first job")?;
    assert_eq!(
        meta::annotation(&first.metadata, cronjob::SCHEDULED_TIMESTAMP_ANNOTATION),
        Some("2030-01-01T00:05:00Z")
    );
    assert!(!meta::is_git_owned(&first.metadata));
    let owner = meta::controller_of(&first.metadata).context("an owner")?;
    assert_eq!(Some(&owner.uid), report.metadata.uid.as_ref());

    // Allow: 00:10 runs beside the still active 00:05.
    tick(store, clock, 10).await?;
    wait_for_jobs(store, &report, &[5, 10]).await?;
    wait_for_active(store, CRON, &[5, 10]).await?;

    // History: successes 5, 15, 25 (two kept) and failures 10, 20 (one
    // kept), pruned oldest first as they finish.
    finish(store, 5, "Complete").await?;
    finish(store, 10, "Failed").await?;
    for m in [15, 20, 25] {
        tick(store, clock, m).await?;
        wait_for_job(store, m).await?;
        finish(store, m, if m == 20 { "Failed" } else { "Complete" }).await?;
    }
    wait_for_jobs(store, &report, &[15, 20, 25]).await?;
    let c = wait_for_active(store, CRON, &[]).await?;
    assert_eq!(
        c.status.and_then(|s| s.last_successful_time),
        Some(Time(t(25, 30)))
    );

    // Forbid: 00:30 runs; at 00:35 it is still active, so nothing starts
    // (the witness shows the controller saw 00:35); once it finished, the
    // missed 00:35 starts late.
    set_policy(store, "Forbid").await?;
    tick(store, clock, 30).await?;
    wait_for_jobs(store, &report, &[15, 20, 25, 30]).await?;
    tick(store, clock, 35).await?;
    assert_eq!(
        jobs_of(store, &report).await.map_err(|e| anyhow!(e))?.len(),
        4,
        "nothing new while 00:30 runs"
    );
    let finished_rev = finish(store, 30, "Complete").await?;
    // 15 is pruned (successes 25 and 30 are kept), 35 starts late.
    wait_for_jobs(store, &report, &[20, 25, 30, 35]).await?;
    let late_rev = created_at(store, &job_name(CRON, t(35, 0))).await?;
    assert!(
        late_rev > finished_rev,
        "with Forbid the 00:35 job (rev {late_rev}) was created before 00:30's finished (rev {finished_rev})"
    );

    // Replace: at 00:40 the active 00:35 is deleted, 00:40 takes its place.
    set_policy(store, "Replace").await?;
    tick(store, clock, 40).await?;
    wait_for_jobs(store, &report, &[20, 25, 30, 40]).await?;
    wait_for_active(store, CRON, &[40]).await?;
    finish(store, 40, "Complete").await?;
    wait_for_jobs(store, &report, &[20, 30, 40]).await?;
    wait_for_active(store, CRON, &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_downtime_only_the_latest_run_starts_and_late_runs_are_skipped() -> Result<()> {
    with_etcd(|store| async move {
        let clock = ManualClock::new(t(0, 40));
        let report = store.create(cron_job(CRON, serde_json::json!({}))?).await?;
        let late = store
            .create(cron_job(
                "late",
                serde_json::json!({"startingDeadlineSeconds": 60}),
            )?)
            .await?;
        let witness = store
            .create(cron_job(WITNESS, serde_json::json!({}))?)
            .await?;

        // The controller was down since 00:00: at 01:02 only 01:00 runs,
        // and not for "late", for which 01:00 is two minutes too late.
        clock.set(t(62, 0));
        let ctl = Running::start(&store, &clock);
        let result = async {
            wait_for_jobs(&store, &report, &[60]).await?;
            wait_for_jobs(&store, &witness, &[60]).await?;
            let have = jobs_of(&store, &late).await.map_err(|e| anyhow!(e))?;
            assert!(have.is_empty(), "01:00 was too late to start: {have:?}");
            // At 01:06:30 the 01:05 run is 90 s late: skipped.
            clock.set(t(66, 30));
            wait_for_jobs(&store, &witness, &[60, 65]).await?;
            wait_for_jobs(&store, &report, &[60, 65]).await?;
            let have = jobs_of(&store, &late).await.map_err(|e| anyhow!(e))?;
            assert!(have.is_empty(), "01:05 was too late to start: {have:?}");
            // Within the deadline: at 01:10:30 the 01:10 run starts.
            clock.set(t(70, 30));
            wait_for_jobs(&store, &late, &[70]).await?;
            wait_for_jobs(&store, &report, &[60, 65, 70]).await?;
            anyhow::Ok(())
        }
        .await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}

/// One CronJob and nothing else writing Jobs: the controller must not
/// wait for the Job cache to move past its own status writes (it moves
/// only when a Job changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_cronjob_runs_at_every_schedule_time() -> Result<()> {
    with_etcd(|store| async move {
        let clock = ManualClock::new(t(0, 40));
        let ctl = Running::start(&store, &clock);
        let result = async {
            let report = store
                .create(cron_job(
                    CRON,
                    serde_json::json!({"concurrencyPolicy": "Forbid"}),
                )?)
                .await?;
            // The first pass writes the (empty) status.
            eventually("the first status", DEADLINE, || async {
                let c = get_cron(&store, CRON).await.map_err(|e| e.to_string())?;
                c.status.map(|_| ()).ok_or_else(|| "none".to_string())
            })
            .await?;
            for m in [5, 10, 15] {
                clock.set(t(m, 1));
                wait_for_job(&store, m).await?;
                wait_for_active(&store, CRON, &[m]).await?;
                finish(&store, m, "Complete").await?;
                wait_for_active(&store, CRON, &[]).await?;
            }
            wait_for_jobs(&store, &report, &[5, 10, 15]).await
        }
        .await;
        let stopped = ctl.stop().await;
        result?;
        stopped
    })
    .await
}
