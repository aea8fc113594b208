//! The CronJob controller: creates a CronJob's Jobs at its schedule times,
//! as Kubernetes' CronJob controller (v2) does.
//!
//! Each pass looks at a CronJob and the Jobs it controls (by owner
//! reference uid) at "now" and decides, in the pure [`decide`]:
//!
//! - `status.active` is every unfinished Job it controls (derived from the
//!   Jobs each pass, so a crash between creating a Job and writing status
//!   loses nothing), `status.lastSuccessfulTime` the latest completion;
//! - finished Jobs beyond `successfulJobsHistoryLimit` and
//!   `failedJobsHistoryLimit` are deleted, oldest first (their pods follow
//!   through the garbage collector);
//! - unless suspended: the most recent schedule time missed since
//!   `lastScheduleTime` (or the CronJob's creation), no older than
//!   `startingDeadlineSeconds`, gets a Job named `<cronjob>-<minutes since
//!   the epoch>`; with `concurrencyPolicy: Forbid` not while one is active,
//!   with `Replace` after the active ones are deleted. After downtime only
//!   the most recent missed run starts; more than 100 missed runs is
//!   warned about ("too many missed start times").
//!
//! The deterministic Job name is the lock against creating a run twice:
//! a second attempt finds the Job already there. The loop sleeps until the
//! next schedule time (plus 100 ms, as Kubernetes) instead of polling.
//!
//! Kubernetes reports what happened as Events; commitd has no Events yet,
//! so the same reasons and messages are logged (each once per CronJob
//! until it changes). The clock is a [`Clock`], so tests drive time.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::cron_schedule::{self, CronSchedule};
use commitd_api::k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use commitd_api::k8s_openapi::api::core::v1::ObjectReference;
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, Time,
};
use commitd_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use commitd_api::k8s_openapi::Resource;
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::reflector::{reflect, Cache};
use commitd_api::{defaults, Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::expectations::{sync_each, Expectations};
use super::{controlled_by, controlled_in, guarded_delete, resource_version, Caches};

/// How long the loop sleeps when nothing changes and no schedule time is
/// near (a safety net; schedule times and cache changes wake it sooner).
const RESYNC: Duration = Duration::from_secs(60);
/// How soon to look again at a CronJob whose status write the cache has
/// not shown yet (its change wakes the loop sooner).
const STATUS_REQUEUE: Duration = Duration::from_secs(1);
/// Kubernetes wakes 100 ms after a schedule time, so the time has passed.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// The annotation telling a Job the schedule time it was created for
/// (RFC 3339, in the CronJob's time zone).
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Where the controller reads the time. Production uses [`SystemClock`];
/// tests use [`ManualClock`] to step through schedule times in
/// milliseconds instead of minutes.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// A receiver that changes when the time jumps (a test clock moved),
    /// so the loop looks again at once; the real clock never jumps.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until told to move, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    moved: watch::Sender<u64>,
}

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: Mutex::new(now),
            moved: watch::channel(0).0,
        })
    }

    /// Sets the time (forward or back) and wakes the controller.
    pub fn set(&self, t: Timestamp) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = t;
        self.moved.send_modify(|n| *n += 1);
    }

    /// Moves the time forward by `d` and wakes the controller.
    pub fn advance(&self, d: SignedDuration) {
        let next = self.now().checked_add(d).unwrap_or_else(|_| self.now());
        self.set(next);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.moved.subscribe())
    }
}

/// Runs the CronJob loop on the shared caches and the real clock until
/// `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    run_loop(
        store,
        caches.cron_jobs,
        caches.jobs,
        Arc::new(SystemClock),
        cancel,
    )
    .await;
}

/// Runs the CronJob controller alone, with its own caches and `clock`,
/// until `cancel` fires: for tests that drive time (the other controllers
/// are not needed to see which Jobs a CronJob makes).
pub async fn run_with_clock(store: Store, clock: Arc<dyn Clock>, cancel: CancellationToken) {
    let caches_cancel = cancel.child_token();
    let _stop_caches = caches_cancel.clone().drop_guard();
    let cron_jobs = reflect::<CronJob>(store.clone(), caches_cancel.clone());
    let jobs = reflect::<Job>(store.clone(), caches_cancel.clone());
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = async { cron_jobs.ready().await; jobs.ready().await } => {}
    }
    run_loop(store, cron_jobs, jobs, clock, cancel).await;
}

async fn run_loop(
    store: Store,
    cron_jobs: Cache<CronJob>,
    jobs: Cache<Job>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let mut triggers = vec![cron_jobs.changes(), jobs.changes()];
    triggers.extend(clock.changes());
    let ctl = Arc::new(CronJobController {
        store,
        cron_jobs,
        jobs,
        clock,
        job_writes: Expectations::default(),
        status_writes: Expectations::default(),
        reported: Mutex::new(HashMap::new()),
    });
    controller::run("cronjob", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct CronJobController {
    store: Store,
    cron_jobs: Cache<CronJob>,
    jobs: Cache<Job>,
    clock: Arc<dyn Clock>,
    /// Per CronJob uid: the revision of our last Job write (created or
    /// deleted), so a pass never counts Jobs from a stale cache.
    job_writes: Expectations,
    /// Per CronJob uid: the revision of our last status write, so a pass
    /// never reads an old lastScheduleTime.
    status_writes: Expectations,
    /// Per CronJob uid: the events last logged, so a standing condition
    /// ("still active, Forbid") is told once, not every pass.
    reported: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl CronJobController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        // Read before listing, so the list is at least this new.
        let status_revision = self.cron_jobs.revision();
        let cron_jobs = self.cron_jobs.list();
        {
            let live: BTreeSet<String> = cron_jobs
                .iter()
                .filter_map(|c| c.metadata.uid.clone())
                .collect();
            self.reported
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|uid, _| live.contains(uid));
        }
        // Each cache must have seen our writes to it: the Jobs cache those
        // to Jobs (to count them), the CronJob cache the status (for its
        // lastScheduleTime). Each is checked against its own cache: a
        // cache's revision moves only with writes under its own prefix.
        self.status_writes.forget_satisfied(status_revision);
        sync_each(
            "cronjob",
            cron_jobs,
            &self.job_writes,
            self.jobs.revision(),
            |cj, uid| async move {
                if !self.status_writes.satisfied(&uid, status_revision) {
                    debug!("waiting for the cache to see the status written");
                    return Ok(Some(STATUS_REQUEUE));
                }
                self.reconcile(&cj, uid).await
            },
        )
        .await
    }

    async fn reconcile(&self, cj: &CronJob, uid: String) -> Result<Requeue> {
        let namespace = meta::namespace(cj);
        let owned = controlled_in(&self.jobs, namespace, &uid);
        let jobs: Vec<&Job> = owned.iter().map(|j| &**j).collect();
        let now = self.clock.now();
        let plan = decide(cj, &jobs, now);
        self.report(&uid, &plan.events);

        let mut status = plan.status.clone();
        let mut result = Ok(());
        for job in &plan.replace {
            // Replace: the running Jobs go before the new one comes.
            if let Err(e) = self.delete_job(&uid, job, "replaced by a new run").await {
                result = Err(e);
                break;
            }
            remove_active(&mut status, job);
        }
        if let (Ok(()), Some(scheduled)) = (&result, plan.create) {
            match self.create_job(cj, &uid, scheduled).await {
                Ok(job) => {
                    let refs = status.active.get_or_insert_with(Vec::new);
                    if !refs.iter().any(|r| r.uid == job.metadata.uid) {
                        refs.push(job_reference(&job));
                    }
                    status.last_schedule_time = Some(Time(scheduled));
                }
                Err(e) => result = Err(e),
            }
        }
        for job in &plan.prune {
            match self.delete_job(&uid, job, "beyond the history limit").await {
                Ok(()) => remove_active(&mut status, job),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        if cj.status.as_ref() != Some(&status) {
            self.write_status(cj, &uid, status).await?;
        }
        result.map(|()| plan.requeue)
    }

    /// Logs the plan's events that were not logged last pass.
    fn report(&self, uid: &str, events: &[Event]) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<String> = events.iter().map(Event::key).collect();
        let before = reported.entry(uid.to_string()).or_default();
        for e in events.iter().filter(|e| !before.contains(&e.key())) {
            if e.warning {
                warn!(reason = e.reason, "{}", e.message);
            } else {
                info!(reason = e.reason, "{}", e.message);
            }
        }
        *before = now;
    }

    /// Creates the Job of one schedule time; a Job of that name already
    /// controlled by this CronJob (an earlier attempt) counts as created.
    async fn create_job(&self, cj: &CronJob, uid: &str, scheduled: Timestamp) -> Result<Job> {
        let job = job_for(cj, scheduled).context("the cronjob has no job template")?;
        let name = meta::name(&job).to_string();
        match self.store.create(job).await {
            Ok(job) => {
                self.job_writes
                    .expect(uid, resource_version(&job.metadata).unwrap_or_default());
                info!(reason = "SuccessfulCreate", job = %name, "Created job {name}");
                Ok(job)
            }
            Err(StoreError::AlreadyExists { .. }) => {
                let existing = self
                    .store
                    .get::<Job>(meta::namespace(cj), &name)
                    .await
                    .with_context(|| format!("reading job {name}"))?;
                match existing {
                    Some(j) if controlled_by(&j.metadata, uid) => {
                        debug!(job = %name, "job already exists");
                        Ok(j)
                    }
                    Some(_) => {
                        bail!("job {name} already exists and is not controlled by this cronjob")
                    }
                    None => bail!("job {name} was deleted while being created; trying again"),
                }
            }
            Err(e) => Err(e).with_context(|| format!("creating job {name} (FailedCreate)")),
        }
    }

    /// Deletes a Job if unchanged since read (its pods follow through the
    /// garbage collector, as Kubernetes' background propagation).
    async fn delete_job(&self, uid: &str, job: &Job, why: &str) -> Result<()> {
        let name = meta::name(job);
        let Some(rv) = resource_version(&job.metadata) else {
            bail!("job {name} has no resource version");
        };
        match guarded_delete(&self.store, job, rv)
            .await
            .with_context(|| format!("deleting job {name}"))?
        {
            Some(revision) => {
                self.job_writes.expect(uid, revision);
                info!(reason = "SuccessfulDelete", job = %name, why, "Deleted job {name}");
                Ok(())
            }
            None => bail!("job {name} changed while being deleted; looking again"),
        }
    }

    async fn write_status(&self, cj: &CronJob, uid: &str, status: CronJobStatus) -> Result<()> {
        let stored = self
            .store
            .modify::<CronJob, _>(meta::namespace(cj), meta::name(cj), |cur| {
                if cur.metadata.uid.as_deref() != Some(uid) || cur.status.as_ref() == Some(&status)
                {
                    return false;
                }
                cur.status = Some(status.clone());
                true
            })
            .await
            .context("writing cronjob status")?;
        if let Some(stored) = stored {
            self.status_writes
                .expect(uid, resource_version(&stored.metadata).unwrap_or_default());
        }
        Ok(())
    }
}

fn remove_active(status: &mut CronJobStatus, job: &Job) {
    if let Some(refs) = status.active.as_mut() {
        refs.retain(|r| r.uid != job.metadata.uid);
    }
    if status.active.as_ref().is_some_and(Vec::is_empty) {
        status.active = None;
    }
}

/// Something Kubernetes would record as an Event on the CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    warning: bool,
    reason: &'static str,
    message: String,
}

impl Event {
    fn warning(reason: &'static str, message: String) -> Event {
        Event {
            warning: true,
            reason,
            message,
        }
    }

    fn normal(reason: &'static str, message: String) -> Event {
        Event {
            warning: false,
            reason,
            message,
        }
    }

    fn key(&self) -> String {
        format!("{}: {}", self.reason, self.message)
    }
}

/// What one pass should do for a CronJob.
#[derive(Debug)]
struct Plan<'a> {
    /// The status as the Jobs show it, before this pass's writes.
    status: CronJobStatus,
    /// The schedule time to create a Job for.
    create: Option<Timestamp>,
    /// Active Jobs to delete before creating (`Replace`).
    replace: Vec<&'a Job>,
    /// Finished Jobs beyond the history limits.
    prune: Vec<&'a Job>,
    /// What to tell the operator.
    events: Vec<Event>,
    /// When to look again (just after the next schedule time).
    requeue: Requeue,
}

fn condition_true(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Finished as Kubernetes' `IsJobFinished` says: Complete or Failed.
fn finished(job: &Job) -> bool {
    condition_true(job, "Complete") || condition_true(job, "Failed")
}

/// The Job's name for a schedule time: the CronJob's name and the minutes
/// since the epoch, so each time has exactly one name.
pub fn job_name(cron_job: &str, scheduled: Timestamp) -> String {
    format!("{cron_job}-{}", scheduled.as_second().div_euclid(60))
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some(Job::API_VERSION.to_string()),
        kind: Some(Job::KIND.to_string()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Oldest first: by start time, then creation, then name.
fn oldest_first(mut jobs: Vec<&Job>) -> Vec<&Job> {
    jobs.sort_by(|a, b| {
        let started = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0)
        };
        let created = |j: &Job| j.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (started(a), created(a), meta::name(*a)).cmp(&(started(b), created(b), meta::name(*b)))
    });
    jobs
}

/// The finished Jobs of one kind beyond `limit`, oldest first (none if
/// the limit is unset, as Kubernetes).
fn beyond_limit(jobs: Vec<&Job>, limit: Option<i32>) -> Vec<&Job> {
    let Some(limit) = limit else {
        return Vec::new();
    };
    let keep = usize::try_from(limit).unwrap_or(0);
    let mut sorted = oldest_first(jobs);
    let extra = sorted.len().saturating_sub(keep);
    sorted.truncate(extra);
    sorted
}

/// The controller's decision for a CronJob and its Jobs at `now`: a pure
/// function, so every rule is tested without a cluster or a clock.
fn decide<'a>(cj: &CronJob, jobs: &[&'a Job], now: Timestamp) -> Plan<'a> {
    let spec = cj.spec.clone().unwrap_or_default();
    let prev = cj.status.clone().unwrap_or_default();

    let active = oldest_first(
        jobs.iter()
            .copied()
            .filter(|j| !finished(j) && !meta::is_terminating(&j.metadata))
            .collect(),
    );
    let mut status = prev.clone();
    status.active =
        Some(active.iter().map(|j| job_reference(j)).collect::<Vec<_>>()).filter(|a| !a.is_empty());
    let completed = jobs
        .iter()
        .filter(|j| condition_true(j, "Complete"))
        .filter_map(|j| j.status.as_ref().and_then(|s| s.completion_time.as_ref()))
        .map(|t| t.0)
        .max();
    if let Some(done) = completed {
        if prev
            .last_successful_time
            .as_ref()
            .is_none_or(|t| t.0 < done)
        {
            status.last_successful_time = Some(Time(done));
        }
    }
    let mut plan = Plan {
        status,
        create: None,
        replace: Vec::new(),
        prune: Vec::new(),
        events: Vec::new(),
        requeue: None,
    };
    if meta::is_terminating(&cj.metadata) {
        return plan;
    }
    let finished_jobs = |succeeded: bool| -> Vec<&'a Job> {
        jobs.iter()
            .copied()
            .filter(|j| finished(j) && !meta::is_terminating(&j.metadata))
            .filter(|j| condition_true(j, "Complete") == succeeded)
            .collect()
    };
    plan.prune = beyond_limit(finished_jobs(true), spec.successful_jobs_history_limit);
    plan.prune.extend(beyond_limit(
        finished_jobs(false),
        spec.failed_jobs_history_limit,
    ));

    if spec.suspend == Some(true) {
        return plan;
    }
    let tz = match spec
        .time_zone
        .as_deref()
        .map(cron_schedule::parse_time_zone)
    {
        None => commitd_api::k8s_openapi::jiff::tz::TimeZone::UTC,
        Some(Ok(tz)) => tz,
        Some(Err(e)) => {
            plan.events.push(Event::warning(
                "UnknownTimeZone",
                format!(
                    "invalid timeZone: {:?}: {e}",
                    spec.time_zone.unwrap_or_default()
                ),
            ));
            return plan;
        }
    };
    let schedule = match CronSchedule::parse(&spec.schedule) {
        Ok(s) => s.in_time_zone(tz),
        Err(e) => {
            plan.events.push(Event::warning(
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return plan;
        }
    };

    // The window of runs still worth starting: since the last run (or the
    // creation), and no older than the starting deadline.
    // (No creation time at all reads as the zero time, as in Kubernetes:
    // the latest time runs, with the "too many missed" warning.)
    let base = prev
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let deadline = spec
        .starting_deadline_seconds
        .map(SignedDuration::from_secs);
    let window_start = match deadline.and_then(|d| now.checked_sub(d).ok()) {
        Some(cutoff) if cutoff > base => cutoff,
        _ => base,
    };
    let missed = schedule.missed(window_start, now);
    let next = schedule.next_after(missed.most_recent.unwrap_or(window_start));
    plan.requeue = next.map(|t| now.duration_until(t).unsigned_abs() + NEXT_SCHEDULE_DELTA);
    if next.is_none() && missed.most_recent.is_none() {
        plan.events.push(Event::warning(
            "InvalidSchedule",
            format!(
                "invalid schedule: {} : the schedule has no time in the next five years",
                spec.schedule
            ),
        ));
    }
    if missed.too_many() {
        plan.events.push(Event::warning(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    let Some(scheduled) = missed.most_recent else {
        return plan;
    };
    if let Some(d) = deadline {
        if scheduled.checked_add(d).is_ok_and(|late| late < now) {
            plan.events.push(Event::warning(
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    cron_schedule::rfc3339_in(scheduled, schedule.time_zone())
                ),
            ));
            return plan;
        }
    }
    let name = job_name(meta::name(cj), scheduled);
    if jobs.iter().any(|j| meta::name(*j) == name)
        || prev
            .last_schedule_time
            .as_ref()
            .is_some_and(|t| t.0 == scheduled)
    {
        // This time was handled already.
        return plan;
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push(Event::normal(
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            return plan;
        }
        Some("Replace") => plan.replace = active,
        _ => {}
    }
    plan.create = Some(scheduled);
    plan
}

/// The Job a CronJob creates for a schedule time: the template's labels
/// and annotations (never Git's provenance: the Job is the controller's,
/// not Git's), the scheduled time annotation, the CronJob as controller,
/// and — as the API server would give any Job — a uid with the selector
/// and pod labels generated from it, and the Job's labels from its pod
/// template when the template gives the Job none.
fn job_for(cj: &CronJob, scheduled: Timestamp) -> Option<Job> {
    let spec = cj.spec.as_ref()?;
    let template = &spec.job_template;
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.remove(COMMIT_ANNOTATION);
    annotations.remove(SOURCE_ANNOTATION);
    let tz = spec
        .time_zone
        .as_deref()
        .and_then(|tz| cron_schedule::parse_time_zone(tz).ok())
        .unwrap_or(commitd_api::k8s_openapi::jiff::tz::TimeZone::UTC);
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.into(),
        cron_schedule::rfc3339_in(scheduled, &tz),
    );
    let uid = meta::new_uid();
    let mut job = Job {
        metadata: ObjectMeta {
            name: Some(job_name(meta::name(cj), scheduled)),
            namespace: meta::namespace(cj).map(str::to_owned),
            uid: Some(uid.clone()),
            labels: template_meta.labels.filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            owner_references: Some(vec![meta::controller_reference(cj)]),
            ..Default::default()
        },
        spec: Some(template.spec.clone()?),
        status: None,
    };
    defaults::job(&mut job);
    let job_spec = job.spec.as_mut()?;
    if job_spec.manual_selector != Some(true) {
        let labels = job_spec
            .template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default);
        for key in defaults::JOB_UID_LABELS {
            labels.insert(key.to_string(), uid.clone());
        }
        job_spec.selector = Some(LabelSelector {
            match_labels: Some(
                [(defaults::JOB_UID_LABELS[0].to_string(), uid.clone())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        });
    }
    if job.metadata.labels.is_none() {
        job.metadata.labels = job_spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .filter(|l| !l.is_empty());
    }
    Some(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a valid timestamp")
    }

    fn cron(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({
            "metadata": {"labels": {"team": "data"}, "annotations": {"note": "x"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}
        });
        let mut c: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "report", "namespace": "demo", "uid": "cj-uid",
                "creationTimestamp": "2026-01-01T00:00:30Z",
                "annotations": {"commitd.io/commit": "c0ffee"}},
            "spec": spec, "status": status
        }))
        .expect("valid cronjob");
        defaults::cron_job(&mut c);
        c
    }

    /// A Job of the CronJob for `minute` past midnight, 2026-01-01:
    /// `state` is "active", "complete" or "failed".
    fn job(minute: i64, state: &str) -> Job {
        let scheduled = at("2026-01-01T00:00:00Z")
            .checked_add(SignedDuration::from_mins(minute))
            .expect("time");
        let mut status = json!({"startTime": Time(scheduled)});
        let done = Time(
            scheduled
                .checked_add(SignedDuration::from_secs(30))
                .expect("time"),
        );
        match state {
            "complete" => {
                status["completionTime"] = json!(done);
                status["conditions"] =
                    json!([{"type": "Complete", "status": "True", "lastTransitionTime": done}]);
            }
            "failed" => {
                status["conditions"] =
                    json!([{"type": "Failed", "status": "True", "lastTransitionTime": done}]);
            }
            _ => status["active"] = json!(1),
        }
        serde_json::from_value(json!({
            "metadata": {"name": job_name("report", scheduled), "namespace": "demo",
                "uid": format!("job-{minute}"), "resourceVersion": "5",
                "creationTimestamp": Time(scheduled),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                    "name": "report", "uid": "cj-uid", "controller": true}]},
            "spec": {"template": {"spec": {"containers": []}}},
            "status": status
        }))
        .expect("valid job")
    }

    fn names(jobs: &[&Job]) -> Vec<String> {
        jobs.iter().map(|j| meta::name(*j).to_string()).collect()
    }

    #[test]
    fn nothing_before_the_first_schedule_time_then_wakes_just_after_it() {
        let c = cron(json!({"schedule": "*/5 * * * *"}), json!({}));
        let plan = decide(&c, &[], at("2026-01-01T00:03:00Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue, Some(Duration::from_millis(120_100)));
    }

    #[test]
    fn a_due_schedule_time_creates_its_job() {
        let c = cron(json!({"schedule": "*/5 * * * *"}), json!({}));
        let plan = decide(&c, &[], at("2026-01-01T00:05:01Z"));
        assert_eq!(plan.create, Some(at("2026-01-01T00:05:00Z")));
        assert_eq!(plan.requeue, Some(Duration::from_millis(299_100)));
        assert_eq!(
            job_name("report", at("2026-01-01T00:05:00Z")),
            "report-29453765"
        );
    }

    #[test]
    fn a_handled_time_is_not_run_again() {
        let c = cron(
            json!({"schedule": "*/5 * * * *"}),
            json!({"lastScheduleTime": "2026-01-01T00:05:00Z"}),
        );
        assert_eq!(decide(&c, &[], at("2026-01-01T00:09:59Z")).create, None);
        // The status not yet written, but the Job exists: not again either.
        let c = cron(json!({"schedule": "*/5 * * * *"}), json!({}));
        let j = job(5, "active");
        assert_eq!(decide(&c, &[&j], at("2026-01-01T00:06:00Z")).create, None);
    }

    #[test]
    fn after_downtime_only_the_most_recent_missed_run_starts() {
        let c = cron(
            json!({"schedule": "*/5 * * * *"}),
            json!({"lastScheduleTime": "2026-01-01T00:05:00Z"}),
        );
        let plan = decide(&c, &[], at("2026-01-01T01:02:00Z"));
        assert_eq!(plan.create, Some(at("2026-01-01T01:00:00Z")));
        assert!(plan.events.is_empty(), "{:?}", plan.events);
        // Days later: too many missed, still only the latest.
        let plan = decide(&c, &[], at("2026-01-03T00:01:00Z"));
        assert_eq!(plan.create, Some(at("2026-01-03T00:00:00Z")));
        assert_eq!(plan.events[0].reason, "TooManyMissedTimes");
    }

    #[test]
    fn the_starting_deadline_skips_runs_too_late_to_start() {
        let c = cron(
            json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 120}),
            json!({"lastScheduleTime": "2026-01-01T00:00:00Z"}),
        );
        // 01:00 was missed by three minutes: skipped, wake at 02:00.
        let plan = decide(&c, &[], at("2026-01-01T01:03:00Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue, Some(Duration::from_millis(57 * 60_000 + 100)));
        // Within the deadline: started.
        let plan = decide(&c, &[], at("2026-01-01T01:01:59Z"));
        assert_eq!(plan.create, Some(at("2026-01-01T01:00:00Z")));
        // A deadline also bounds how many runs count as missed.
        let plan = decide(&c, &[], at("2026-02-01T00:00:30Z"));
        assert_eq!(plan.create, Some(at("2026-02-01T00:00:00Z")));
        assert!(plan.events.is_empty(), "{:?}", plan.events);
    }

    #[test]
    fn forbid_skips_while_a_job_runs_and_starts_late_once_it_finished() {
        let c = cron(
            json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Forbid"}),
            json!({"lastScheduleTime": "2026-01-01T00:05:00Z"}),
        );
        let running = job(5, "active");
        let plan = decide(&c, &[&running], at("2026-01-01T00:10:01Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.events[0].reason, "JobAlreadyActive");
        let done = job(5, "complete");
        let plan = decide(&c, &[&done], at("2026-01-01T00:12:00Z"));
        assert_eq!(plan.create, Some(at("2026-01-01T00:10:00Z")));
    }

    #[test]
    fn replace_deletes_the_running_jobs_first_and_allow_keeps_them() {
        let status = json!({"lastScheduleTime": "2026-01-01T00:05:00Z"});
        let running = job(5, "active");
        let c = cron(
            json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Replace"}),
            status.clone(),
        );
        let plan = decide(&c, &[&running], at("2026-01-01T00:10:01Z"));
        assert_eq!(names(&plan.replace), vec!["report-29453765"]);
        assert_eq!(plan.create, Some(at("2026-01-01T00:10:00Z")));
        let c = cron(json!({"schedule": "*/5 * * * *"}), status);
        let plan = decide(&c, &[&running], at("2026-01-01T00:10:01Z"));
        assert!(plan.replace.is_empty());
        assert_eq!(plan.create, Some(at("2026-01-01T00:10:00Z")));
    }

    #[test]
    fn suspended_cronjobs_start_nothing_but_keep_their_status_and_history() {
        let c = cron(
            json!({"schedule": "* * * * *", "suspend": true, "successfulJobsHistoryLimit": 1}),
            json!({}),
        );
        let (a, b, r) = (job(1, "complete"), job(2, "complete"), job(3, "active"));
        let plan = decide(&c, &[&a, &b, &r], at("2026-01-01T00:10:00Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue, None);
        assert_eq!(names(&plan.prune), vec!["report-29453761"]);
        let active: Vec<_> = plan
            .status
            .active
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(active, vec![Some("report-29453763".to_string())]);
        assert_eq!(
            plan.status.last_successful_time,
            Some(Time(at("2026-01-01T00:02:30Z")))
        );
    }

    #[test]
    fn history_limits_prune_the_oldest_finished_jobs_of_each_kind() {
        let c = cron(
            json!({"schedule": "0 0 1 1 *", "successfulJobsHistoryLimit": 2,
                "failedJobsHistoryLimit": 0}),
            json!({}),
        );
        let jobs = [
            job(3, "complete"),
            job(1, "complete"),
            job(2, "complete"),
            job(4, "failed"),
            job(5, "active"),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        let plan = decide(&c, &refs, at("2026-01-01T00:10:00Z"));
        assert_eq!(
            names(&plan.prune),
            vec!["report-29453761", "report-29453764"]
        );
    }

    #[test]
    fn time_zones_move_the_schedule_and_an_unknown_one_starts_nothing() {
        let c = cron(
            json!({"schedule": "0 9 * * *", "timeZone": "Asia/Tokyo"}),
            json!({}),
        );
        // 09:00 in Tokyo is 00:00 UTC.
        let plan = decide(&c, &[], at("2026-01-01T00:00:40Z"));
        assert_eq!(
            plan.create, None,
            "created at 00:00:30, after that day's time"
        );
        let plan = decide(&c, &[], at("2026-01-02T00:00:10Z"));
        assert_eq!(plan.create, Some(at("2026-01-02T00:00:00Z")));
        let j = job_for(&c, at("2026-01-02T00:00:00Z")).expect("job");
        assert_eq!(
            meta::annotation(&j.metadata, SCHEDULED_TIMESTAMP_ANNOTATION),
            Some("2026-01-02T09:00:00+09:00")
        );
        let bad = cron(
            json!({"schedule": "0 9 * * *", "timeZone": "Mars/Olympus"}),
            json!({}),
        );
        let plan = decide(&bad, &[], at("2026-01-02T00:00:10Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.events[0].reason, "UnknownTimeZone");
    }

    #[test]
    fn jobs_are_valid_for_the_job_controller_and_not_gits() {
        let c = cron(json!({"schedule": "* * * * *"}), json!({}));
        let j = job_for(&c, at("2026-01-01T00:01:00Z")).expect("job");
        assert_eq!(meta::name(&j), "report-29453761");
        assert!(!meta::is_git_owned(&j.metadata));
        let uid = j.metadata.uid.clone().expect("uid");
        let owner = meta::controller_of(&j.metadata).expect("controller");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CronJob", "cj-uid")
        );
        assert_eq!(
            meta::annotation(&j.metadata, SCHEDULED_TIMESTAMP_ANNOTATION),
            Some("2026-01-01T00:01:00Z")
        );
        assert_eq!(meta::annotation(&j.metadata, "note"), Some("x"));
        let labels = j.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("data"));
        let spec = j.spec.expect("spec");
        let selector = spec
            .selector
            .and_then(|s| s.match_labels)
            .expect("selector");
        assert_eq!(
            selector.get("batch.kubernetes.io/controller-uid"),
            Some(&uid)
        );
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        for key in defaults::JOB_UID_LABELS {
            assert_eq!(pod_labels.get(key), Some(&uid), "{key}");
        }
        for key in defaults::JOB_NAME_LABELS {
            assert_eq!(
                pod_labels.get(key).map(String::as_str),
                Some("report-29453761")
            );
        }
        assert_eq!(spec.backoff_limit, Some(6));
    }

    #[test]
    fn an_unparseable_schedule_is_reported_not_run() {
        let c = cron(json!({"schedule": "61 * * * *"}), json!({}));
        let plan = decide(&c, &[], at("2026-01-01T00:10:00Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.events[0].reason, "UnparseableSchedule");
        let never = cron(json!({"schedule": "0 0 30 2 *"}), json!({}));
        let plan = decide(&never, &[], at("2026-01-01T00:10:00Z"));
        assert_eq!((plan.create, plan.requeue), (None, None));
        assert_eq!(plan.events[0].reason, "InvalidSchedule");
    }
}
