//! Health in the GitOps sense, as Argo CD assesses it: is what a commit
//! declares actually working? Each object gets a status with a reason, and
//! a commit the worst status of its objects, so "applied" can be followed
//! by "healthy at 12:03:41" or "degraded: web ProgressDeadlineExceeded".
//!
//! Kinds without a notion of health (ConfigMaps, Secrets, Services, …) are
//! healthy once they exist.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde::{Deserialize, Serialize};

/// How an object (or a commit) is doing, from best to worst: the derived
/// order makes "the worst of" a `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Doing what it was asked to.
    Healthy,
    /// Paused on purpose (a paused Deployment).
    Suspended,
    /// On its way: a rollout in progress, pods starting.
    Progressing,
    /// Declared in Git but not in the cluster.
    Missing,
    /// Failed or stuck: a rollout past its deadline, a crash-looping pod.
    Degraded,
}

impl HealthStatus {
    /// The word people read ("Healthy", "Degraded", …).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Suspended => "Suspended",
            HealthStatus::Progressing => "Progressing",
            HealthStatus::Missing => "Missing",
            HealthStatus::Degraded => "Degraded",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object's health and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// A short reason, when not plainly healthy (`ProgressDeadlineExceeded`).
    pub reason: Option<String>,
    /// What a person needs to know, in the controllers' words.
    pub message: Option<String>,
}

impl Health {
    fn healthy() -> Health {
        Health {
            status: HealthStatus::Healthy,
            reason: None,
            message: None,
        }
    }

    fn new(status: HealthStatus, reason: &str, message: String) -> Health {
        Health {
            status,
            reason: Some(reason.to_string()),
            message: Some(message),
        }
    }
}

/// Where a Deployment's rollout stands, read from its status the way
/// kubectl's `DeploymentStatusViewer` and Argo CD read it: one reading
/// that `commitd rollout status` and the health assessment both word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutProgress {
    /// The controller has not seen the newest spec yet.
    SpecNotObserved,
    /// No progress within `progressDeadlineSeconds`.
    DeadlineExceeded,
    /// Fewer pods run the new template than asked for.
    Updating {
        /// Pods of the new template.
        updated: i32,
        /// `spec.replicas`.
        wanted: i32,
    },
    /// Old pods are still there.
    OldPending {
        /// How many.
        old: i32,
    },
    /// New pods are not all available yet.
    BecomingAvailable {
        /// Available pods.
        available: i32,
        /// Pods of the new template.
        updated: i32,
    },
    /// Every pod runs the new template and is available.
    Complete,
}

/// The progress of `d`'s rollout.
pub fn rollout_progress(d: &Deployment) -> RolloutProgress {
    let status = d.status.clone().unwrap_or_default();
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return RolloutProgress::SpecNotObserved;
    }
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline_exceeded {
        return RolloutProgress::DeadlineExceeded;
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if let Some(wanted) = d.spec.as_ref().and_then(|s| s.replicas) {
        if updated < wanted {
            return RolloutProgress::Updating { updated, wanted };
        }
    }
    if replicas > updated {
        return RolloutProgress::OldPending {
            old: replicas - updated,
        };
    }
    if available < updated {
        return RolloutProgress::BecomingAvailable { available, updated };
    }
    RolloutProgress::Complete
}

/// A Deployment's health, as Argo CD judges it from the status the
/// Deployment controller reports.
pub fn deployment(d: &Deployment) -> Health {
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return Health::new(
            HealthStatus::Suspended,
            "DeploymentPaused",
            "Deployment is paused".into(),
        );
    }
    let waiting = |m: String| {
        Health::new(
            HealthStatus::Progressing,
            "RolloutInProgress",
            format!("Waiting for rollout to finish: {m}"),
        )
    };
    match rollout_progress(d) {
        RolloutProgress::SpecNotObserved => Health::new(
            HealthStatus::Progressing,
            "ObservedGenerationBehind",
            "Waiting for rollout to finish: observed deployment generation less than desired generation".into(),
        ),
        RolloutProgress::DeadlineExceeded => Health::new(
            HealthStatus::Degraded,
            "ProgressDeadlineExceeded",
            format!(
                "Deployment {:?} exceeded its progress deadline",
                d.metadata.name.as_deref().unwrap_or_default()
            ),
        ),
        RolloutProgress::Updating { updated, wanted } => waiting(format!(
            "{updated} out of {wanted} new replicas have been updated..."
        )),
        RolloutProgress::OldPending { old } => {
            waiting(format!("{old} old replicas are pending termination..."))
        }
        RolloutProgress::BecomingAvailable { available, updated } => waiting(format!(
            "{available} of {updated} updated replicas are available..."
        )),
        RolloutProgress::Complete => Health::healthy(),
    }
}

/// A Job's health: `Complete` is healthy, `Failed` degraded with the
/// condition's reason (`BackoffLimitExceeded`, `DeadlineExceeded`),
/// `Suspended` suspended, and anything else still on its way (with the
/// active and succeeded counts).
pub fn job(j: &Job) -> Health {
    let status = j.status.clone().unwrap_or_default();
    let holds = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if holds("Complete").is_some() {
        return Health::healthy();
    }
    if let Some(c) = holds("Failed") {
        return Health::new(
            HealthStatus::Degraded,
            c.reason.as_deref().unwrap_or("JobFailed"),
            c.message.clone().unwrap_or_else(|| "the job failed".into()),
        );
    }
    if holds("Suspended").is_some() {
        return Health::new(
            HealthStatus::Suspended,
            "JobSuspended",
            "Job is suspended".into(),
        );
    }
    let wanted = j
        .spec
        .as_ref()
        .and_then(|s| s.completions)
        .map_or_else(|| "?".to_string(), |c| c.to_string());
    Health::new(
        HealthStatus::Progressing,
        "JobRunning",
        format!(
            "{} active, {}/{wanted} succeeded, {} failed",
            status.active.unwrap_or(0),
            status.succeeded.unwrap_or(0),
            status.failed.unwrap_or(0)
        ),
    )
}

/// A StatefulSet's health, as Argo CD judges it: every replica ready, and
/// every pod at the update revision (those above the partition, for a
/// partitioned rollout).
pub fn stateful_set(s: &StatefulSet) -> Health {
    let status = s.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || s.metadata.generation.unwrap_or(0) > observed {
        return Health::new(
            HealthStatus::Progressing,
            "ObservedGenerationBehind",
            "Waiting for statefulset spec update to be observed...".into(),
        );
    }
    let spec = s.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let waiting = |m: String| Health::new(HealthStatus::Progressing, "RolloutInProgress", m);
    if ready < replicas {
        return waiting(format!(
            "Waiting for {} pods to be ready...",
            replicas - ready
        ));
    }
    let strategy = spec.update_strategy.unwrap_or_default();
    if strategy.type_.as_deref() == Some("OnDelete") {
        return Health::healthy();
    }
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        let wanted = (replicas - partition).max(0);
        if updated < wanted {
            return waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {wanted} new pods have been updated..."
            ));
        }
        return Health::healthy();
    }
    if status.update_revision != status.current_revision {
        return waiting(format!(
            "waiting for statefulset rolling update to complete {updated} pods at revision {}...",
            status.update_revision.unwrap_or_default()
        ));
    }
    Health::healthy()
}

/// A DaemonSet's health, as Argo CD judges it: a pod of the current
/// template available on every node that should run one.
pub fn daemon_set(d: &DaemonSet) -> Health {
    let status = d.status.clone().unwrap_or_default();
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return Health::new(
            HealthStatus::Progressing,
            "ObservedGenerationBehind",
            "Waiting for rollout to finish: observed daemon set generation less than desired generation".into(),
        );
    }
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    let on_delete = d
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    let waiting = |m: String| Health::new(HealthStatus::Progressing, "RolloutInProgress", m);
    if !on_delete && updated < desired {
        return waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."
        ));
    }
    if available < desired {
        return waiting(format!(
            "Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."
        ));
    }
    Health::healthy()
}

/// A claim's health: bound is healthy, lost degraded, pending on its way
/// (with the reason the binder gave, if any).
pub fn persistent_volume_claim(c: &PersistentVolumeClaim) -> Health {
    let status = c.status.clone().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Bound") => Health::healthy(),
        Some("Lost") => Health::new(
            HealthStatus::Degraded,
            "ClaimLost",
            "the claim's volume is gone".into(),
        ),
        _ => {
            let why = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.status == "True")
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "waiting for the claim to be bound".into());
            Health::new(HealthStatus::Progressing, "ClaimPending", why)
        }
    }
}

/// A CronJob's health, as Argo CD judges it: suspended on purpose, or
/// degraded when its last run did not succeed and nothing runs now.
pub fn cron_job(c: &CronJob) -> Health {
    if c.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return Health::new(
            HealthStatus::Suspended,
            "CronJobSuspended",
            "CronJob is Suspended".into(),
        );
    }
    let status = c.status.clone().unwrap_or_default();
    let active = status.active.as_ref().is_some_and(|a| !a.is_empty());
    let last_run_failed = match (&status.last_schedule_time, &status.last_successful_time) {
        (Some(scheduled), Some(succeeded)) => scheduled.0 > succeeded.0,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if last_run_failed && !active {
        return Health::new(
            HealthStatus::Degraded,
            "LastJobFailed",
            "the CronJob's last Job did not succeed".into(),
        );
    }
    Health::healthy()
}

/// The reasons a container waits with that mean it will not get better on
/// its own.
const FAILING_WAIT_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
    "CreateContainerError",
    "RunContainerError",
    "PostStartHookError",
];

/// A Pod's health, as Argo CD judges it: finished successfully or running
/// ready is healthy, failed or stuck in a failing wait is degraded, the
/// rest is on its way.
pub fn pod(p: &Pod) -> Health {
    let status = p.status.clone().unwrap_or_default();
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for s in statuses {
        let waiting = s.state.as_ref().and_then(|st| st.waiting.as_ref());
        if let Some(reason) = waiting
            .and_then(|w| w.reason.as_deref())
            .filter(|r| FAILING_WAIT_REASONS.contains(r))
        {
            let message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
            return Health::new(
                HealthStatus::Degraded,
                reason,
                format!("container {}: {reason} {message}", s.name)
                    .trim_end()
                    .to_string(),
            );
        }
    }
    match status.phase.as_deref() {
        Some("Succeeded") => Health::healthy(),
        Some("Failed") => Health::new(
            HealthStatus::Degraded,
            "PodFailed",
            status
                .message
                .clone()
                .unwrap_or_else(|| "the pod failed".into()),
        ),
        Some("Running") => {
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                Health::healthy()
            } else {
                Health::new(
                    HealthStatus::Progressing,
                    "NotReady",
                    "the pod runs but is not ready".into(),
                )
            }
        }
        _ => Health::new(
            HealthStatus::Progressing,
            "Pending",
            "the pod is starting".into(),
        ),
    }
}

/// One object of a commit that is not healthy, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectHealth {
    /// `Deployment`, `Pod`, …
    pub kind: String,
    /// Its namespace, for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: HealthStatus,
    /// The short reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The long one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The commit that last changed it: for a degraded rollout, the commit
    /// that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl ObjectHealth {
    /// `web ProgressDeadlineExceeded`, as a history line names it.
    pub fn summary(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} {r}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A commit's health: the worst of its objects, since when, and the
/// objects that are not healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitHealth {
    /// The worst status of its objects.
    pub status: HealthStatus,
    /// When it took this status, RFC 3339.
    pub since: String,
    /// The objects not healthy, worst first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectHealth>,
}

impl CommitHealth {
    /// The commit's health from its objects' (healthy ones may be left
    /// out); `since` is when that status was first seen.
    pub fn of(mut objects: Vec<ObjectHealth>, since: String) -> CommitHealth {
        objects.retain(|o| o.status != HealthStatus::Healthy);
        objects.sort_by(|a, b| {
            b.status
                .cmp(&a.status)
                .then_with(|| a.namespace.cmp(&b.namespace))
                .then_with(|| a.name.cmp(&b.name))
        });
        CommitHealth {
            status: objects.first().map_or(HealthStatus::Healthy, |o| o.status),
            since,
            objects,
        }
    }

    /// `degraded: web ProgressDeadlineExceeded`, or `healthy`.
    pub fn headline(&self) -> String {
        let word = self.status.as_str().to_ascii_lowercase();
        let worst: Vec<String> = self
            .objects
            .iter()
            .filter(|o| o.status == self.status)
            .map(ObjectHealth::summary)
            .collect();
        if worst.is_empty() {
            word
        } else {
            format!("{word}: {}", worst.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment_with(spec: serde_json::Value, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": spec,
            "status": status,
        }))
        .expect("deployment")
    }

    #[test]
    fn deployments_read_like_argo_cd() {
        let spec = json!({"replicas": 3, "selector": {}, "template": {}});
        let done = json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                          "availableReplicas": 3});
        assert_eq!(
            deployment(&deployment_with(spec.clone(), done)).status,
            HealthStatus::Healthy
        );
        let rolling = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1,
                             "availableReplicas": 3});
        let h = deployment(&deployment_with(spec.clone(), rolling));
        assert_eq!(h.status, HealthStatus::Progressing);
        assert_eq!(
            h.message.as_deref(),
            Some("Waiting for rollout to finish: 1 out of 3 new replicas have been updated...")
        );
        let behind = json!({"observedGeneration": 1});
        assert_eq!(
            deployment(&deployment_with(spec.clone(), behind))
                .reason
                .as_deref(),
            Some("ObservedGenerationBehind")
        );
        let stuck = json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False",
                            "reason": "ProgressDeadlineExceeded"}]});
        let h = deployment(&deployment_with(spec.clone(), stuck));
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(h.reason.as_deref(), Some("ProgressDeadlineExceeded"));
        let mut paused = spec;
        paused["paused"] = json!(true);
        assert_eq!(
            deployment(&deployment_with(paused, json!({}))).status,
            HealthStatus::Suspended
        );
    }

    fn pod_with(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    #[test]
    fn pods_read_like_argo_cd() {
        let ready = json!({"phase": "Running",
                           "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(pod(&pod_with(ready)).status, HealthStatus::Healthy);
        let unready = json!({"phase": "Running",
                             "conditions": [{"type": "Ready", "status": "False"}]});
        assert_eq!(pod(&pod_with(unready)).status, HealthStatus::Progressing);
        assert_eq!(
            pod(&pod_with(json!({"phase": "Pending"}))).status,
            HealthStatus::Progressing
        );
        let pulling = json!({"phase": "Pending", "containerStatuses": [{
            "name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]});
        let h = pod(&pod_with(pulling));
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(h.reason.as_deref(), Some("ImagePullBackOff"));
        assert_eq!(
            h.message.as_deref(),
            Some("container web: ImagePullBackOff not found")
        );
        assert_eq!(
            pod(&pod_with(json!({"phase": "Succeeded"}))).status,
            HealthStatus::Healthy
        );
        assert_eq!(
            pod(&pod_with(json!({"phase": "Failed"}))).status,
            HealthStatus::Degraded
        );
    }

    #[test]
    fn jobs_are_healthy_when_complete_and_degraded_when_failed() {
        let with = |status: serde_json::Value| -> Job {
            serde_json::from_value(json!({"metadata": {"name": "pi"},
                "spec": {"completions": 3, "template": {}}, "status": status}))
            .expect("job")
        };
        let done = with(json!({"succeeded": 3, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}));
        assert_eq!(job(&done).status, HealthStatus::Healthy);
        let failed = with(json!({"failed": 2, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]}));
        let h = job(&failed);
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(h.reason.as_deref(), Some("BackoffLimitExceeded"));
        let running = job(&with(json!({"active": 2, "succeeded": 1})));
        assert_eq!(running.status, HealthStatus::Progressing);
        assert_eq!(
            running.message.as_deref(),
            Some("2 active, 1/3 succeeded, 0 failed")
        );
    }

    fn object(name: &str, status: HealthStatus, reason: Option<&str>) -> ObjectHealth {
        ObjectHealth {
            kind: "Deployment".into(),
            namespace: Some("demo".into()),
            name: name.into(),
            status,
            reason: reason.map(str::to_string),
            message: None,
            commit: None,
        }
    }

    #[test]
    fn a_commit_is_as_healthy_as_its_worst_object() {
        let h = CommitHealth::of(
            vec![
                object("api", HealthStatus::Healthy, None),
                object("db", HealthStatus::Progressing, Some("RolloutInProgress")),
                object(
                    "web",
                    HealthStatus::Degraded,
                    Some("ProgressDeadlineExceeded"),
                ),
            ],
            "2026-01-01T12:03:41Z".into(),
        );
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(h.objects.len(), 2, "healthy objects are left out");
        assert_eq!(h.headline(), "degraded: web ProgressDeadlineExceeded");
        let fine = CommitHealth::of(vec![object("api", HealthStatus::Healthy, None)], "t".into());
        assert_eq!(fine.status, HealthStatus::Healthy);
        assert_eq!(fine.headline(), "healthy");
        assert!(HealthStatus::Missing > HealthStatus::Progressing);
    }
}
