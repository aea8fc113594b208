//! The Job controller: runs a Job's pods to completion, as Kubernetes'
//! Job controller does. Pods belong to a Job by their controller owner
//! reference (its uid). At most `parallelism` pods are active and never
//! more than the completions still missing; a failed pod is replaced until
//! `backoffLimit` pods have failed; `activeDeadlineSeconds` bounds the
//! whole run. The outcome is told with Kubernetes' conditions: first
//! `SuccessCriteriaMet` or `FailureTarget`, and once no pod of the Job is
//! running any more `Complete` or `Failed`. Pods of a finished Job are
//! kept (their logs stay readable) until the Job goes; a finished Job
//! with `ttlSecondsAfterFinished` is deleted when that expires.
//!
//! A Git-owned Job deleted by its TTL would be put back by drift
//! correction. The deletion therefore writes a tombstone in the same etcd
//! transaction ([`Tombstone`], under [`keys::tombstone_key`]): while Git
//! declares the same Job, the reconciler neither recreates it nor counts
//! it as missing; a changed manifest runs again. A Job declared in Git
//! thus runs once per distinct manifest, not once per commit.
//!
//! A suspended Job (`suspend: true`) stops its active pods and starts none,
//! with the condition `Suspended`; resumed, it starts anew.
//!
//! A failed pod is replaced after Kubernetes' back-off: 10 s after the
//! first failure since the last success, doubled for each further one, at
//! most 10 minutes. What is simpler than Kubernetes: `succeeded` and
//! `failed` are counted from the pods that exist and never go down
//! (Kubernetes tracks pods with a finalizer so that a deleted pod is still
//! counted), and the back-off is one for the whole Job, also when it is
//! Indexed.
//! With `restartPolicy: OnFailure` the containers' restarts of the active
//! pods count toward `backoffLimit` as in Kubernetes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use commitd_api::k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodStatus,
};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use commitd_api::k8s_openapi::jiff::{SignedDuration, Timestamp};
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::records::Tombstone;
use commitd_api::{defaults, keys, Kind, Store, StoreError};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::expectations::{delete_pods, sync_each, Expectations};
use super::pod_readiness::is_ready;
use super::{controlled_in, Caches};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// At most this many pods are created per Job and pass (Kubernetes'
/// `burstReplicas`).
const BURST: usize = 500;
/// Generated names that collide are tried again with a new suffix.
const NAME_ATTEMPTS: usize = 8;
/// Kubernetes' `maxGeneratedNameLength` (63 − 5 random characters).
const MAX_GENERATED_NAME_PREFIX: usize = 58;

/// The annotation (and label) giving an Indexed Job's pod its index.
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable an Indexed Job's containers read it from.
pub const COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

/// Kubernetes' condition reasons and messages.
/// Kubernetes' back-off before a failed pod is replaced: 10 s after the
/// first failure since the last success, doubling with each further one.
const POD_FAILURE_BACKOFF: Duration = Duration::from_secs(10);
/// The longest the back-off grows (Kubernetes' `MaxJobPodFailureBackOff`).
const MAX_POD_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";
const MESSAGE_COMPLETIONS_REACHED: &str = "Reached expected number of succeeded pods";
const REASON_BACKOFF_LIMIT: &str = "BackoffLimitExceeded";
const MESSAGE_BACKOFF_LIMIT: &str = "Job has reached the specified backoff limit";
const REASON_DEADLINE: &str = "DeadlineExceeded";
const REASON_SUSPENDED: &str = "JobSuspended";
const MESSAGE_DEADLINE: &str = "Job was active longer than specified deadline";

/// Runs the Job loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![caches.jobs.changes(), caches.pods.changes()];
    let ctl = Arc::new(JobController {
        store,
        caches,
        expectations: Expectations::default(),
    });
    controller::run("job", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct JobController {
    store: Store,
    caches: Caches,
    /// Per Job uid: the revision of our last pod write.
    expectations: Expectations,
}

impl JobController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        sync_each(
            "job",
            self.caches.jobs.list(),
            &self.expectations,
            self.caches.pods.revision(),
            |job, uid| async move { self.reconcile(&job, uid).await },
        )
        .await
    }

    async fn reconcile(&self, job: &Job, uid: String) -> Result<Requeue> {
        let namespace = meta::namespace(job);
        let owned: Vec<Arc<Pod>> = controlled_in(&self.caches.pods, namespace, &uid);
        let pods: Vec<&Pod> = owned.iter().map(|p| &**p).collect();
        let decision = decide(job, &pods, Timestamp::now());

        if decision.ttl_expired {
            return self.delete_expired(job).await.map(|()| None);
        }
        let mut result = Ok(());
        if !decision.delete.is_empty() {
            result = delete_pods(
                &self.store,
                &self.expectations,
                &uid,
                decision.delete,
                "active pods",
            )
            .await;
        }
        if result.is_ok() && !decision.create.is_empty() {
            result = self.create_pods(job, &uid, &decision.create).await;
        }
        if job.status.as_ref() != Some(&decision.status) {
            let status = decision.status.clone();
            self.store
                .modify::<Job, _>(namespace, meta::name(job), |cur| {
                    if cur.metadata.uid.as_deref() != Some(uid.as_str())
                        || cur.status.as_ref() == Some(&status)
                    {
                        return false;
                    }
                    cur.status = Some(status.clone());
                    true
                })
                .await
                .context("writing job status")?;
            for c in decision.status.conditions.iter().flatten() {
                let was = job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|old| old.iter().any(|o| o.type_ == c.type_));
                if !was {
                    info!(condition = %c.type_, reason = ?c.reason, "job condition");
                }
            }
        }
        result.map(|()| decision.requeue)
    }

    /// Deletes a finished Job whose TTL expired; a Git-owned one leaves a
    /// tombstone, written in the same transaction, guarded by the Job's
    /// revision so a Job changed meanwhile is looked at again instead.
    async fn delete_expired(&self, job: &Job) -> Result<()> {
        let namespace = meta::namespace(job);
        let name = meta::name(job);
        let key = keys::object_key(Kind::Job, namespace, name);
        let Some(rv) = super::resource_version(&job.metadata) else {
            bail!("job has no resource version");
        };
        let mut ops = vec![TxnOp::delete(key.as_str(), None)];
        if meta::is_git_owned(&job.metadata) {
            let value = serde_json::to_value(job).context("encoding the job")?;
            let tombstone = Tombstone {
                uid: job.metadata.uid.clone().unwrap_or_default(),
                commit: meta::annotation(&job.metadata, COMMIT_ANNOTATION).map(str::to_owned),
                reason: "TTLAfterFinished".into(),
                deleted_at: Timestamp::now().to_string(),
                view: crate::job_templates::tombstone_view(Kind::Job, &value),
            };
            ops.push(TxnOp::put(
                keys::tombstone_key(Kind::Job, namespace, name),
                serde_json::to_vec(&tombstone).context("encoding the tombstone")?,
                None,
            ));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rv)])
            .and_then(ops);
        let resp = self
            .store
            .client()
            .txn(txn)
            .await
            .with_context(|| format!("deleting job {key}"))?;
        if resp.succeeded() {
            info!("deleted finished job: ttlSecondsAfterFinished expired");
        } else {
            debug!("job changed since it was read; looking again");
        }
        Ok(())
    }

    /// Creates the pods in slow-start batches (1, 2, 4, …) as Kubernetes
    /// does, so a template that cannot be created fails once.
    async fn create_pods(&self, job: &Job, uid: &str, indexes: &[Option<i32>]) -> Result<()> {
        let mut rest = indexes;
        let mut batch = 1;
        let mut created = 0;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            let results = join_all(now.iter().map(|i| self.create_pod(job, uid, *i))).await;
            created += results.iter().filter(|r| r.is_ok()).count();
            if let Some(err) = results.into_iter().find_map(Result::err) {
                info!(
                    created,
                    wanted = indexes.len(),
                    "created pods (stopped at an error)"
                );
                return Err(err);
            }
            rest = later;
            batch *= 2;
        }
        info!(created, "created pods");
        Ok(())
    }

    async fn create_pod(&self, job: &Job, uid: &str, index: Option<i32>) -> Result<()> {
        let prefix = generate_name_prefix(meta::name(job), index);
        for _ in 0..NAME_ATTEMPTS {
            let name = format!("{prefix}{}", meta::random_suffix(5));
            let Some(pod) = pod_for(job, index, &prefix, &name) else {
                bail!("job has no pod template");
            };
            match self.store.create(pod).await {
                Ok(pod) => {
                    let revision = super::resource_version(&pod.metadata).unwrap_or_default();
                    self.expectations.expect(uid, revision);
                    debug!(pod = %name, ?index, "created pod");
                    return Ok(());
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    debug!(pod = %name, "generated pod name taken; trying another");
                }
                Err(e) => return Err(e).with_context(|| format!("creating pod {name}")),
            }
        }
        bail!("no free pod name after {NAME_ATTEMPTS} attempts with prefix {prefix}")
    }
}

/// `<job>-` (or `<job>-<index>-` for an Indexed Job, as Kubernetes names
/// them), cut so the generated name stays a valid label value.
fn generate_name_prefix(job_name: &str, index: Option<i32>) -> String {
    let mut prefix = match index {
        Some(i) => format!("{job_name}-{i}-"),
        None => format!("{job_name}-"),
    };
    if prefix.len() > MAX_GENERATED_NAME_PREFIX {
        let mut cut = MAX_GENERATED_NAME_PREFIX;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    prefix
}

/// A pod as the Job controller stamps it out: the template's labels (with
/// the job-name and controller-uid labels the Job's template carries),
/// annotations and spec, the Job as controller, phase `Pending`. For an
/// Indexed Job, the completion index as annotation and label, in
/// `JOB_COMPLETION_INDEX` of every container (read from the annotation, as
/// Kubernetes does), and the hostname `<job>-<index>`. Git's provenance
/// annotations are never copied.
fn pod_for(job: &Job, index: Option<i32>, prefix: &str, name: &str) -> Option<Pod> {
    let spec = job.spec.as_ref()?;
    let template = &spec.template;
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.remove(COMMIT_ANNOTATION);
    annotations.remove(SOURCE_ANNOTATION);
    let mut labels = template_meta.labels.unwrap_or_default();
    if spec.manual_selector != Some(true) {
        for key in defaults::JOB_NAME_LABELS {
            labels
                .entry(key.to_string())
                .or_insert_with(|| meta::name(job).to_string());
        }
        for key in defaults::JOB_UID_LABELS {
            labels
                .entry(key.to_string())
                .or_insert_with(|| job.metadata.uid.clone().unwrap_or_default());
        }
    }
    let mut pod_spec = template.spec.clone()?;
    defaults::pod_spec(&mut pod_spec);
    if let Some(i) = index {
        annotations.insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
        labels.insert(COMPLETION_INDEX_ANNOTATION.into(), i.to_string());
        let env = EnvVar {
            name: COMPLETION_INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
                }),
                ..Default::default()
            }),
        };
        let containers = pod_spec
            .containers
            .iter_mut()
            .chain(pod_spec.init_containers.iter_mut().flatten());
        for c in containers {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == COMPLETION_INDEX_ENV) {
                vars.push(env.clone());
            }
        }
        if pod_spec.hostname.is_none() {
            pod_spec.hostname = Some(format!("{}-{i}", meta::name(job)));
        }
    }
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            generate_name: Some(prefix.to_string()),
            namespace: meta::namespace(job).map(str::to_owned),
            labels: Some(labels).filter(|l| !l.is_empty()),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            owner_references: Some(vec![meta::controller_reference(job)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    })
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Pods that are running or about to: not finished, not being deleted.
fn is_active(pod: &Pod) -> bool {
    !meta::is_terminating(&pod.metadata) && !matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn index_of(pod: &Pod, completions: i32) -> Option<i32> {
    meta::annotation(&pod.metadata, COMPLETION_INDEX_ANNOTATION)
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|i| (0..completions).contains(i))
}

/// Container restarts of a pod (init containers included), which count
/// toward `backoffLimit` when the pods restart `OnFailure`.
fn restarts(pod: &Pod) -> i64 {
    let Some(s) = pod.status.as_ref() else {
        return 0;
    };
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .map(|c| i64::from(c.restart_count))
        .sum()
}

/// Kubernetes' `completedIndexes` form: sorted, runs of three or more
/// joined with a dash (`0-2,5,7,8`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        match end - start {
            0 => parts.push(start.to_string()),
            1 => parts.push(format!("{start},{end}")),
            _ => parts.push(format!("{start}-{end}")),
        }
    }
    parts.join(",")
}

/// Reads `completedIndexes` back; what does not parse is ignored.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// How a Job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Complete,
    Failed {
        reason: &'static str,
        message: &'static str,
    },
}

impl Outcome {
    /// The interim condition (set while pods still terminate) and the final one.
    fn condition_types(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Complete => ("SuccessCriteriaMet", "Complete"),
            Outcome::Failed { .. } => ("FailureTarget", "Failed"),
        }
    }

    fn reason_and_message(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Complete => (REASON_COMPLETIONS_REACHED, MESSAGE_COMPLETIONS_REACHED),
            Outcome::Failed { reason, message } => (reason, message),
        }
    }
}

/// What one pass should do for a Job.
#[derive(Debug)]
struct Decision<'a> {
    /// Pods to create: their completion indexes (`None` for NonIndexed).
    create: Vec<Option<i32>>,
    /// Active pods to delete.
    delete: Vec<&'a Pod>,
    /// The status to write.
    status: JobStatus,
    /// When to look again (a deadline, a TTL).
    requeue: Requeue,
    /// The Job finished and its TTL expired: delete it.
    ttl_expired: bool,
}

fn condition(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

fn new_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn wait_until(now: Timestamp, at: Timestamp) -> Duration {
    now.duration_until(at).unsigned_abs() + Duration::from_millis(100)
}

/// The Job controller's decision for a Job and its pods at `now`: a pure
/// function, so every rule can be tested without a cluster.
fn decide<'a>(job: &Job, pods: &[&'a Pod], now: Timestamp) -> Decision<'a> {
    let spec = job.spec.clone().unwrap_or_default();
    let prev = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
    let completions = spec.completions;
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6));

    let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let terminating = pods
        .iter()
        .filter(|p| {
            meta::is_terminating(&p.metadata) && !matches!(phase(p), Some("Succeeded" | "Failed"))
        })
        .count();
    let count = |ph: &str| pods.iter().filter(|p| phase(p) == Some(ph)).count();
    let as_i32 = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let succeeded = prev.succeeded.unwrap_or(0).max(as_i32(count("Succeeded")));
    let failed = prev.failed.unwrap_or(0).max(as_i32(count("Failed")));
    let mut done_indexes = BTreeSet::new();
    if indexed {
        let c = completions.unwrap_or(0);
        done_indexes = prev
            .completed_indexes
            .as_deref()
            .map(parse_indexes)
            .unwrap_or_default();
        done_indexes.retain(|i| (0..c).contains(i));
        for p in pods.iter().filter(|p| phase(p) == Some("Succeeded")) {
            if let Some(i) = index_of(p, c) {
                done_indexes.insert(i);
            }
        }
    }

    let mut status = prev.clone();
    status.start_time = prev.start_time.clone().or(Some(Time(now)));
    // Zero counts are left out, as Kubernetes' `omitempty` leaves them.
    status.succeeded = Some(succeeded).filter(|n| *n != 0);
    status.failed = Some(failed).filter(|n| *n != 0);
    status.ready = Some(as_i32(active.iter().filter(|p| is_ready(p)).count()));
    status.terminating = Some(as_i32(terminating));
    if indexed {
        status.completed_indexes = Some(format_indexes(&done_indexes));
    }
    let mut decision = Decision {
        create: Vec::new(),
        delete: Vec::new(),
        status,
        requeue: None,
        ttl_expired: false,
    };

    // Finished: nothing runs any more; only the TTL is left to watch.
    let finished_at = condition(&prev, "Complete")
        .or_else(|| condition(&prev, "Failed"))
        .and_then(|c| c.last_transition_time.map(|t| t.0))
        .or_else(|| prev.completion_time.as_ref().map(|t| t.0));
    if condition(&prev, "Complete").is_some() || condition(&prev, "Failed").is_some() {
        decision.status.active = Some(as_i32(active.len())).filter(|n| *n != 0);
        decision.delete = active;
        if let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, finished_at) {
            let expires = at
                .checked_add(SignedDuration::from_secs(i64::from(ttl)))
                .unwrap_or(at);
            if expires <= now {
                decision.ttl_expired = true;
            } else {
                decision.requeue = Some(wait_until(now, expires));
            }
        }
        return decision;
    }

    // Suspended: no pod runs; the active ones are stopped. Resumed: the
    // Job starts anew (`startTime`, and so `activeDeadlineSeconds`).
    let was_suspended = condition(&prev, "Suspended").is_some();
    if spec.suspend == Some(true) {
        let conditions = decision.status.conditions.get_or_insert_with(Vec::new);
        if !was_suspended {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(new_condition(
                "Suspended",
                REASON_SUSPENDED,
                "Job suspended",
                now,
            ));
        }
        decision.status.start_time = None;
        decision.status.active = Some(as_i32(active.len())).filter(|n| *n != 0);
        decision.delete = active;
        return decision;
    }
    if was_suspended {
        let conditions = decision.status.conditions.get_or_insert_with(Vec::new);
        conditions.retain(|c| c.type_ != "Suspended");
        let mut resumed = new_condition("Suspended", "JobResumed", "Job resumed", now);
        resumed.status = "False".into();
        conditions.push(resumed);
        decision.status.start_time = Some(Time(now));
    }

    // The outcome, if one is decided: kept once decided, failure first.
    let decided = if let Some(c) = condition(&prev, "FailureTarget") {
        Some(if c.reason.as_deref() == Some(REASON_DEADLINE) {
            Outcome::Failed {
                reason: REASON_DEADLINE,
                message: MESSAGE_DEADLINE,
            }
        } else {
            Outcome::Failed {
                reason: REASON_BACKOFF_LIMIT,
                message: MESSAGE_BACKOFF_LIMIT,
            }
        })
    } else if condition(&prev, "SuccessCriteriaMet").is_some() {
        Some(Outcome::Complete)
    } else {
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restarted: i64 = if on_failure {
            active.iter().map(|p| restarts(p)).sum()
        } else {
            0
        };
        let past_restarts = on_failure
            && if backoff_limit == 0 {
                restarted > 0
            } else {
                restarted >= backoff_limit
            };
        let deadline = spec.active_deadline_seconds.and_then(|s| {
            decision
                .status
                .start_time
                .as_ref()
                .and_then(|t| t.0.checked_add(SignedDuration::from_secs(s)).ok())
        });
        let complete = match (indexed, completions) {
            (true, Some(c)) => as_i32(done_indexes.len()) >= c,
            (false, Some(c)) => succeeded >= c,
            // A work queue: done once one pod succeeded and none runs.
            (_, None) => succeeded > 0 && active.is_empty(),
        };
        if i64::from(failed) > backoff_limit || past_restarts {
            Some(Outcome::Failed {
                reason: REASON_BACKOFF_LIMIT,
                message: MESSAGE_BACKOFF_LIMIT,
            })
        } else if deadline.is_some_and(|d| d <= now) {
            Some(Outcome::Failed {
                reason: REASON_DEADLINE,
                message: MESSAGE_DEADLINE,
            })
        } else if complete {
            Some(Outcome::Complete)
        } else {
            if let Some(d) = deadline {
                decision.requeue = Some(wait_until(now, d));
            }
            None
        }
    };

    if let Some(outcome) = decided {
        let (interim, last) = outcome.condition_types();
        let (reason, message) = outcome.reason_and_message();
        let conditions = decision.status.conditions.get_or_insert_with(Vec::new);
        if !conditions.iter().any(|c| c.type_ == interim) {
            conditions.push(new_condition(interim, reason, message, now));
        }
        // Done once no pod of the Job runs or is still stopping.
        if active.is_empty() && terminating == 0 {
            conditions.push(new_condition(last, reason, message, now));
            if outcome == Outcome::Complete {
                decision.status.completion_time = Some(Time(now));
            }
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                decision.requeue = Some(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
            }
        }
        decision.status.active = Some(as_i32(active.len())).filter(|n| *n != 0);
        decision.delete = active;
        return decision;
    }

    // Running: as many active pods as parallelism and the completions
    // still missing allow.
    let (create, delete) = if indexed {
        let c = completions.unwrap_or(0);
        plan_indexed(&active, &done_indexes, c, parallelism)
    } else {
        let want = match completions {
            Some(c) => usize::try_from(c - succeeded).unwrap_or(0).min(parallelism),
            // A work queue starts no pod once one succeeded, and lets
            // those running finish.
            None if succeeded > 0 => active.len(),
            None => parallelism,
        };
        if active.len() < want {
            (vec![None; (want - active.len()).min(BURST)], Vec::new())
        } else {
            (Vec::new(), newest_first(&active, active.len() - want))
        }
    };
    decision.status.active = Some(as_i32(active.len())).filter(|n| *n != 0);
    decision.delete = delete;
    match retry_at(pods).filter(|at| *at > now) {
        // Failed pods are replaced only once the back-off has passed.
        Some(at) if !create.is_empty() => {
            decision.requeue =
                crate::controllers::earliest(decision.requeue, Some(wait_until(now, at)));
        }
        _ => decision.create = create,
    }
    decision
}

/// When a failed pod may be replaced: its failure time plus the back-off
/// for the failures since the last success (`None` without such failures).
fn retry_at(pods: &[&Pod]) -> Option<Timestamp> {
    let finished = |ph: &'static str| {
        pods.iter()
            .filter(move |p| phase(p) == Some(ph))
            .map(|p| finished_at(p))
    };
    let last_success = finished("Succeeded").max();
    let failures: Vec<Timestamp> = finished("Failed")
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let last_failure = failures.iter().max()?;
    let doublings = u32::try_from(failures.len() - 1)
        .unwrap_or(u32::MAX)
        .min(16);
    let backoff = POD_FAILURE_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_POD_FAILURE_BACKOFF);
    let backoff = SignedDuration::try_from(backoff).unwrap_or(SignedDuration::MAX);
    last_failure.checked_add(backoff).ok()
}

/// When a finished pod finished: its containers' latest end, else when
/// it was created.
fn finished_at(pod: &Pod) -> Timestamp {
    let status = pod.status.as_ref();
    status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// An Indexed Job's pods to create (the lowest indexes neither done nor
/// running) and to delete (duplicates of an index, and any beyond
/// `parallelism`, highest index first).
fn plan_indexed<'a>(
    active: &[&'a Pod],
    done: &BTreeSet<i32>,
    completions: i32,
    parallelism: usize,
) -> (Vec<Option<i32>>, Vec<&'a Pod>) {
    let mut delete = Vec::new();
    let mut running: Vec<(i32, &Pod)> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut by_index: Vec<&Pod> = active.to_vec();
    by_index.sort_by_key(|p| (index_of(p, completions), meta::name(*p).to_string()));
    for p in by_index {
        match index_of(p, completions) {
            Some(i) if !done.contains(&i) && seen.insert(i) => running.push((i, p)),
            _ => delete.push(p),
        }
    }
    let missing = usize::try_from(completions)
        .unwrap_or(0)
        .saturating_sub(done.len());
    let want = missing.min(parallelism);
    if running.len() > want {
        let extra = running.len() - want;
        for (_, p) in running.drain(running.len() - extra..).rev() {
            delete.push(p);
        }
        return (Vec::new(), delete);
    }
    let create: Vec<Option<i32>> = (0..completions)
        .filter(|i| !done.contains(i) && !seen.contains(i))
        .take((want - running.len()).min(BURST))
        .map(Some)
        .collect();
    (create, delete)
}

/// The `count` most recently created pods (the ones to stop first when
/// fewer should run), newest first.
fn newest_first<'a>(pods: &[&'a Pod], count: usize) -> Vec<&'a Pod> {
    let mut ranked = pods.to_vec();
    ranked.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(b)
            .cmp(&created(a))
            .then_with(|| meta::name(*b).cmp(meta::name(*a)))
    });
    ranked.truncate(count);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid time")
    }

    fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        let mut spec = spec;
        spec["template"] = json!({
            "metadata": {"labels": {"job-name": "pi", "batch.kubernetes.io/job-name": "pi",
                "controller-uid": "job-uid", "batch.kubernetes.io/controller-uid": "job-uid"},
                "annotations": {"commitd.io/commit": "c0ffee", "note": "x"}},
            "spec": {"restartPolicy": spec.get("restartPolicy").cloned().unwrap_or(json!("Never")),
                "containers": [{"name": "c", "image": "i:1"}]}});
        serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "demo", "uid": "job-uid",
                "annotations": {"commitd.io/commit": "c0ffee"}},
            "spec": spec, "status": status
        }))
        .expect("valid job")
    }

    fn pod(name: &str, phase: &str, index: Option<i32>, created: i64) -> Pod {
        let annotations = match index {
            Some(i) => json!({COMPLETION_INDEX_ANNOTATION: i.to_string()}),
            None => json!({}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "annotations": annotations,
                "creationTimestamp": Time(t(created))},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": phase}
        }))
        .expect("valid pod")
    }

    fn types(d: &Decision<'_>) -> Vec<String> {
        d.status
            .conditions
            .iter()
            .flatten()
            .map(|c| format!("{}:{}", c.type_, c.reason.as_deref().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn creates_up_to_parallelism_and_never_more_than_remaining_completions() {
        let j = job(json!({"completions": 3, "parallelism": 2}), json!({}));
        let d = decide(&j, &[], t(0));
        assert_eq!(d.create, vec![None, None]);
        assert_eq!(d.status.start_time, Some(Time(t(0))));

        let a = pod("a", "Succeeded", None, 0);
        let b = pod("b", "Succeeded", None, 0);
        let c = pod("c", "Running", None, 1);
        // Two succeeded, one running: the last completion is under way.
        let d = decide(&j, &[&a, &b, &c], t(5));
        assert!(d.create.is_empty() && d.delete.is_empty());
        assert_eq!((d.status.active, d.status.succeeded), (Some(1), Some(2)));
        // Two succeeded, none running: one more, not two.
        let d = decide(&j, &[&a, &b], t(5));
        assert_eq!(d.create, vec![None]);
    }

    #[test]
    fn too_many_active_pods_are_cut_newest_first() {
        let j = job(json!({"completions": 5, "parallelism": 1}), json!({}));
        let old = pod("old", "Running", None, 0);
        let new = pod("new", "Running", None, 9);
        let d = decide(&j, &[&old, &new], t(10));
        let deleted: Vec<&str> = d.delete.iter().map(|p| meta::name(*p)).collect();
        assert_eq!(deleted, vec!["new"]);
        assert!(d.create.is_empty());
    }

    #[test]
    fn completes_with_success_criteria_met_then_complete() {
        let j = job(json!({"completions": 2, "parallelism": 2}), json!({}));
        let a = pod("a", "Succeeded", None, 0);
        let b = pod("b", "Succeeded", None, 0);
        let d = decide(&j, &[&a, &b], t(20));
        assert_eq!(
            types(&d),
            vec![
                "SuccessCriteriaMet:CompletionsReached",
                "Complete:CompletionsReached"
            ]
        );
        assert_eq!(d.status.completion_time, Some(Time(t(20))));
        assert!(d.create.is_empty());
    }

    #[test]
    fn backoff_limit_counts_failed_pods() {
        let j = job(json!({"completions": 1, "backoffLimit": 1}), json!({}));
        let f1 = pod("f1", "Failed", None, 0);
        // One failure within the limit: a retry, after 10 s of back-off.
        let d = decide(&j, &[&f1], t(1));
        assert!(d.create.is_empty());
        assert_eq!(d.requeue, Some(Duration::from_millis(9_100)));
        assert!(types(&d).is_empty());
        let d = decide(&j, &[&f1], t(10));
        assert_eq!(d.create, vec![None]);
        // The second failure exceeds it.
        let f2 = pod("f2", "Failed", None, 1);
        let d = decide(&j, &[&f1, &f2], t(2));
        assert_eq!(
            types(&d),
            vec![
                "FailureTarget:BackoffLimitExceeded",
                "Failed:BackoffLimitExceeded"
            ]
        );
        assert_eq!(d.status.failed, Some(2));
        assert!(d.create.is_empty());
        assert_eq!(d.status.completion_time, None);
    }

    #[test]
    fn failed_pods_are_replaced_after_a_doubling_back_off_reset_by_success() {
        let j = job(json!({"completions": 3, "parallelism": 1}), json!({}));
        let f1 = pod("f1", "Failed", None, 0);
        let f2 = pod("f2", "Failed", None, 20);
        let f3 = pod("f3", "Failed", None, 50);
        // Three failures: 10 s × 2² = 40 s after the last one.
        let d = decide(&j, &[&f1, &f2, &f3], t(89));
        assert!(d.create.is_empty());
        assert_eq!(d.requeue, Some(Duration::from_millis(1_100)));
        assert_eq!(decide(&j, &[&f1, &f2, &f3], t(90)).create, vec![None]);
        // A success since: the next failure waits 10 s again.
        let s1 = pod("s1", "Succeeded", None, 60);
        let f4 = pod("f4", "Failed", None, 70);
        let d = decide(&j, &[&f1, &f2, &f3, &s1, &f4], t(75));
        assert_eq!(d.requeue, Some(Duration::from_millis(5_100)));
        assert_eq!(
            decide(&j, &[&f1, &f2, &f3, &s1, &f4], t(80)).create,
            vec![None]
        );
        // The back-off stops growing at 10 minutes.
        let many: Vec<Pod> = (0..12)
            .map(|i| pod(&format!("f{i}"), "Failed", None, i))
            .collect();
        let refs: Vec<&Pod> = many.iter().collect();
        let d = decide(
            &job(json!({"completions": 1, "backoffLimit": 20}), json!({})),
            &refs,
            t(11),
        );
        assert_eq!(d.requeue, Some(Duration::from_millis(600_100)));
    }

    #[test]
    fn suspended_jobs_stop_their_pods_and_start_anew_when_resumed() {
        let j = job(json!({"completions": 2, "suspend": true}), json!({}));
        let d = decide(&j, &[], t(0));
        assert!(d.create.is_empty());
        assert_eq!(types(&d), vec!["Suspended:JobSuspended"]);
        assert_eq!(d.status.start_time, None);
        // Suspended while running: the active pod is stopped.
        let running = pod("r", "Running", None, 0);
        let d = decide(&j, &[&running], t(1));
        assert_eq!(d.delete.len(), 1);
        assert!(d.create.is_empty());
        // Resumed: the condition turns False, the clock starts now, pods run.
        let resumed = job(
            json!({"completions": 2, "parallelism": 2}),
            json!({"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}),
        );
        let d = decide(&resumed, &[], t(5));
        assert_eq!(d.create, vec![None, None]);
        assert_eq!(d.status.start_time, Some(Time(t(5))));
        let suspended = d
            .status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Suspended")
            .map(|c| (c.status.as_str(), c.reason.as_deref()));
        assert_eq!(suspended, Some(("False", Some("JobResumed"))));
    }

    #[test]
    fn backoff_limit_zero_fails_at_the_first_failure_and_stops_the_rest() {
        let j = job(
            json!({"completions": 3, "parallelism": 2, "backoffLimit": 0}),
            json!({}),
        );
        let f = pod("f", "Failed", None, 0);
        let r = pod("r", "Running", None, 0);
        let d = decide(&j, &[&f, &r], t(1));
        // Failure decided, the running pod is stopped; Failed comes after.
        assert_eq!(types(&d), vec!["FailureTarget:BackoffLimitExceeded"]);
        assert_eq!(d.delete.len(), 1);
        // Next pass, the pod is gone: Failed.
        let mut j2 = j.clone();
        j2.status = Some(d.status.clone());
        let d = decide(&j2, &[&f], t(2));
        assert_eq!(
            types(&d),
            vec![
                "FailureTarget:BackoffLimitExceeded",
                "Failed:BackoffLimitExceeded"
            ]
        );
    }

    #[test]
    fn restarts_count_toward_the_limit_with_on_failure() {
        let j = job(
            json!({"completions": 1, "backoffLimit": 2, "restartPolicy": "OnFailure"}),
            json!({}),
        );
        let mut p = pod("p", "Running", None, 0);
        p.status.as_mut().expect("status").container_statuses = Some(vec![serde_json::from_value(
            json!({"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 2}),
        )
        .expect("container status")]);
        let d = decide(&j, &[&p], t(1));
        assert_eq!(types(&d), vec!["FailureTarget:BackoffLimitExceeded"]);
        assert_eq!(d.delete.len(), 1);
    }

    #[test]
    fn active_deadline_fails_the_job_and_deletes_active_pods() {
        let j = job(
            json!({"completions": 1, "activeDeadlineSeconds": 30}),
            json!({"startTime": Time(t(0))}),
        );
        let r = pod("r", "Running", None, 0);
        let d = decide(&j, &[&r], t(10));
        assert!(types(&d).is_empty());
        assert_eq!(d.requeue, Some(Duration::from_millis(20_100)));
        let d = decide(&j, &[&r], t(31));
        assert_eq!(types(&d), vec!["FailureTarget:DeadlineExceeded"]);
        assert_eq!(d.delete.len(), 1);
    }

    #[test]
    fn finished_jobs_expire_after_their_ttl() {
        let status = json!({"succeeded": 1, "completionTime": Time(t(0)), "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": Time(t(0))},
            {"type": "Complete", "status": "True", "lastTransitionTime": Time(t(0))}]});
        let j = job(
            json!({"completions": 1, "ttlSecondsAfterFinished": 60}),
            status,
        );
        let done = pod("done", "Succeeded", None, 0);
        let d = decide(&j, &[&done], t(30));
        assert!(!d.ttl_expired);
        assert_eq!(d.requeue, Some(Duration::from_millis(30_100)));
        assert!(d.create.is_empty() && d.delete.is_empty());
        assert!(decide(&j, &[&done], t(60)).ttl_expired);
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let j = job(
            json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}),
            json!({}),
        );
        let d = decide(&j, &[], t(0));
        assert_eq!(d.create, vec![Some(0), Some(1)]);
        let done0 = pod("p0", "Succeeded", Some(0), 0);
        let run2 = pod("p2", "Running", Some(2), 0);
        let failed1 = pod("p1", "Failed", Some(1), 0);
        let d = decide(&j, &[&done0, &run2, &failed1], t(1));
        assert_eq!(d.create, vec![Some(1)]);
        assert_eq!(d.status.completed_indexes.as_deref(), Some("0"));
        // A duplicate of an index is deleted.
        let dup = pod("p2b", "Running", Some(2), 1);
        let d = decide(&j, &[&done0, &run2, &dup], t(1));
        let deleted: Vec<&str> = d.delete.iter().map(|p| meta::name(*p)).collect();
        assert_eq!(deleted, vec!["p2b"]);
        // All four done: complete.
        let ps: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("d{i}"), "Succeeded", Some(i), 0))
            .collect();
        let refs: Vec<&Pod> = ps.iter().collect();
        let d = decide(&j, &refs, t(2));
        assert_eq!(d.status.completed_indexes.as_deref(), Some("0-3"));
        assert_eq!(
            types(&d),
            vec![
                "SuccessCriteriaMet:CompletionsReached",
                "Complete:CompletionsReached"
            ]
        );
    }

    #[test]
    fn work_queues_finish_when_one_pod_succeeded_and_none_runs() {
        let j = job(json!({"parallelism": 2}), json!({}));
        assert_eq!(decide(&j, &[], t(0)).create, vec![None, None]);
        let ok = pod("ok", "Succeeded", None, 0);
        let busy = pod("busy", "Running", None, 0);
        let d = decide(&j, &[&ok, &busy], t(1));
        assert!(d.create.is_empty() && d.delete.is_empty() && types(&d).is_empty());
        let d = decide(&j, &[&ok], t(2));
        assert_eq!(
            types(&d),
            vec![
                "SuccessCriteriaMet:CompletionsReached",
                "Complete:CompletionsReached"
            ]
        );
    }

    #[test]
    fn indexes_print_like_kubernetes() {
        let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
        assert_eq!(format_indexes(&set(&[0, 1, 2, 5, 7, 8])), "0-2,5,7,8");
        assert_eq!(format_indexes(&set(&[])), "");
        assert_eq!(parse_indexes("0-2,5,7,8"), set(&[0, 1, 2, 5, 7, 8]));
    }

    #[test]
    fn pods_carry_owner_labels_and_for_indexed_jobs_their_index() {
        let j = job(
            json!({"completions": 2, "completionMode": "Indexed"}),
            json!({}),
        );
        let prefix = generate_name_prefix("pi", Some(1));
        assert_eq!(prefix, "pi-1-");
        let p = pod_for(&j, Some(1), &prefix, "pi-1-xyz12").expect("pod");
        let labels = p.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get("job-name").map(String::as_str), Some("pi"));
        assert_eq!(
            labels.get("controller-uid").map(String::as_str),
            Some("job-uid")
        );
        let ann = p.metadata.annotations.clone().expect("annotations");
        assert_eq!(
            ann.get(COMPLETION_INDEX_ANNOTATION).map(String::as_str),
            Some("1")
        );
        assert_eq!(ann.get("note").map(String::as_str), Some("x"));
        assert!(!meta::is_git_owned(&p.metadata));
        let owner = meta::controller_of(&p.metadata).expect("controller");
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Job", "job-uid")
        );
        let spec = p.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("pi-1"));
        let env = spec.containers[0].env.as_ref().expect("env");
        assert_eq!(env[0].name, COMPLETION_INDEX_ENV);
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str()),
            Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
        );
        let plain = pod_for(&j, None, "pi-", "pi-abcde").expect("pod");
        assert!(plain.spec.expect("spec").hostname.is_none());
        assert_eq!(
            generate_name_prefix(&"a".repeat(80), None).len(),
            MAX_GENERATED_NAME_PREFIX
        );
    }
}
