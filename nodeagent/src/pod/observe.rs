//! What the runtime reports for one pod, reduced to the facts decisions and
//! status need. Everything is found by the pod-uid label, never from
//! memory: that is what lets a restarted agent adopt running pods.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::cri::proto::{ContainerState, PodSandboxState};
use crate::cri::{Cri, CriError};

use super::{backoff, ANNOTATION_BACKOFF, ANNOTATION_RESTART_COUNT, ANNOTATION_SPEC_HASH};
use super::{LABEL_CONTAINER_NAME, LABEL_POD_UID};

/// One sandbox of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInstance {
    /// The runtime's id.
    pub id: String,
    /// `metadata.attempt`: 0 for the first sandbox, +1 for each replacement.
    pub attempt: u32,
    /// Whether the sandbox (its pause process and network) is up.
    pub ready: bool,
    /// The pod IP, known only while ready.
    pub ip: Option<IpAddr>,
    /// Creation time, ns since the epoch; orders sandboxes of one attempt.
    pub created_at: i64,
    /// The pod name the sandbox was created for.
    pub name: String,
    /// The pod namespace the sandbox was created for.
    pub namespace: String,
}

/// Where an instance of a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Created but never started (an agent stopped between the two calls).
    Created,
    /// Its process runs.
    Running,
    /// Its process ended (exit code and times are set).
    Exited,
    /// The runtime cannot tell; treated like an exit.
    Unknown,
}

/// One instance of a container: each restart is a new instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInstance {
    /// The runtime's id.
    pub id: String,
    /// The sandbox it was created in.
    pub sandbox_id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// Restarts before this instance was created.
    pub restart_count: u32,
    /// Hash of the spec it was created from (None if not ours).
    pub spec_hash: Option<String>,
    /// Crash-loop back-off armed on this instance.
    pub backoff: Duration,
    /// Its state.
    pub state: InstanceState,
    /// Exit code, once exited.
    pub exit_code: i32,
    /// The runtime's reason (`Completed`, `Error`, `OOMKilled`, `StartError`).
    pub reason: String,
    /// The runtime's message.
    pub message: String,
    /// Times in ns since the epoch (0 = not yet).
    pub created_at: i64,
    /// See `created_at`.
    pub started_at: i64,
    /// See `created_at`.
    pub finished_at: i64,
    /// The image the runtime resolved (digest or id).
    pub image_ref: String,
    /// Absolute path of its log file.
    pub log_path: String,
}

impl ContainerInstance {
    /// Whether its process may be running (stop it before removing).
    pub fn is_running(&self) -> bool {
        self.state == InstanceState::Running
    }

    /// Whether it ended (or the runtime lost track of it).
    pub fn has_exited(&self) -> bool {
        matches!(self.state, InstanceState::Exited | InstanceState::Unknown)
    }

    /// How long it ran, for the back-off reset rule.
    pub fn ran_for(&self) -> Duration {
        if self.started_at > 0 && self.finished_at > self.started_at {
            Duration::from_nanos(u64::try_from(self.finished_at - self.started_at).unwrap_or(0))
        } else {
            Duration::ZERO
        }
    }
}

/// Everything the runtime has for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Its sandboxes, any state.
    pub sandboxes: Vec<SandboxInstance>,
    /// Its container instances, any state, across sandboxes.
    pub containers: Vec<ContainerInstance>,
}

impl Observed {
    /// True when the runtime holds nothing of the pod.
    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && self.containers.is_empty()
    }

    /// The instances of one container, newest first (by restart count, then
    /// creation time), which is the order every decision reads them in.
    pub fn instances_of(&self, name: &str) -> Vec<&ContainerInstance> {
        let mut found: Vec<&ContainerInstance> =
            self.containers.iter().filter(|c| c.name == name).collect();
        found.sort_by(|a, b| {
            (b.restart_count, b.created_at, &b.id).cmp(&(a.restart_count, a.created_at, &a.id))
        });
        found
    }

    /// The sandbox the pod runs in: the newest ready one.
    pub fn current_sandbox(&self) -> Option<&SandboxInstance> {
        self.sandboxes_newest_first().into_iter().find(|s| s.ready)
    }

    /// Sandboxes, newest first (by attempt, then creation time).
    pub fn sandboxes_newest_first(&self) -> Vec<&SandboxInstance> {
        let mut all: Vec<&SandboxInstance> = self.sandboxes.iter().collect();
        all.sort_by(|a, b| (b.attempt, b.created_at, &b.id).cmp(&(a.attempt, a.created_at, &a.id)));
        all
    }
}

/// Lists what the runtime has for the pod `uid`. An object that vanishes
/// between the listing and its status call is skipped, not an error.
pub async fn observe(cri: &Cri, uid: &str) -> Result<Observed, CriError> {
    let labels = BTreeMap::from([(LABEL_POD_UID.to_string(), uid.to_string())]);
    let mut observed = Observed::default();
    for sandbox in cri.list_pod_sandboxes(&labels).await? {
        let ready = sandbox.state() == PodSandboxState::SandboxReady;
        let ip = if ready {
            match cri.pod_sandbox_status(&sandbox.id).await {
                Ok((_, ip)) => ip,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let metadata = sandbox.metadata.clone().unwrap_or_default();
        observed.sandboxes.push(SandboxInstance {
            id: sandbox.id,
            attempt: metadata.attempt,
            ready,
            ip,
            created_at: sandbox.created_at,
            name: metadata.name,
            namespace: metadata.namespace,
        });
    }
    for container in cri.list_containers(&labels).await? {
        let status = match cri.container_status(&container.id).await {
            Ok(status) => status,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let name = container
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .or_else(|| container.metadata.as_ref().map(|m| m.name.clone()))
            .unwrap_or_default();
        let restart_count = container
            .annotations
            .get(ANNOTATION_RESTART_COUNT)
            .and_then(|v| v.parse::<u32>().ok())
            .or_else(|| container.metadata.as_ref().map(|m| m.attempt))
            .unwrap_or(0);
        let state = match status.state() {
            ContainerState::ContainerCreated => InstanceState::Created,
            ContainerState::ContainerRunning => InstanceState::Running,
            ContainerState::ContainerExited => InstanceState::Exited,
            ContainerState::ContainerUnknown => InstanceState::Unknown,
        };
        observed.containers.push(ContainerInstance {
            id: container.id,
            sandbox_id: container.pod_sandbox_id,
            name,
            restart_count,
            spec_hash: container.annotations.get(ANNOTATION_SPEC_HASH).cloned(),
            backoff: backoff::parse_annotation(
                container
                    .annotations
                    .get(ANNOTATION_BACKOFF)
                    .map(String::as_str),
            ),
            state,
            exit_code: status.exit_code,
            reason: status.reason,
            message: status.message,
            created_at: status.created_at,
            started_at: status.started_at,
            finished_at: status.finished_at,
            image_ref: status.image_ref,
            log_path: status.log_path,
        });
    }
    Ok(observed)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders for observed state, shared by the unit tests.
    use super::*;

    /// A running instance created at `t` seconds.
    pub fn running(name: &str, restart_count: u32, sandbox: &str, t: i64) -> ContainerInstance {
        ContainerInstance {
            id: format!("{name}-{restart_count}"),
            sandbox_id: sandbox.to_string(),
            name: name.to_string(),
            restart_count,
            spec_hash: None,
            backoff: Duration::ZERO,
            state: InstanceState::Running,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            created_at: t * 1_000_000_000,
            started_at: t * 1_000_000_000,
            finished_at: 0,
            image_ref: "sha256:abc".to_string(),
            log_path: format!("/logs/{name}/{restart_count}.log"),
        }
    }

    /// An instance that ran from `t` to `t + ran` seconds and exited.
    pub fn exited(
        name: &str,
        restart_count: u32,
        sandbox: &str,
        t: i64,
        ran: i64,
        exit_code: i32,
    ) -> ContainerInstance {
        ContainerInstance {
            state: InstanceState::Exited,
            exit_code,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            finished_at: (t + ran) * 1_000_000_000,
            ..running(name, restart_count, sandbox, t)
        }
    }

    /// A sandbox of the given attempt.
    pub fn sandbox(id: &str, attempt: u32, ready: bool) -> SandboxInstance {
        SandboxInstance {
            id: id.to_string(),
            attempt,
            ready,
            ip: ready.then(|| IpAddr::from([10, 0, 0, 2])),
            created_at: i64::from(attempt),
            name: "web".to_string(),
            namespace: "default".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn instances_are_newest_first() {
        let observed = Observed {
            sandboxes: vec![sandbox("s0", 0, false), sandbox("s1", 1, true)],
            containers: vec![
                exited("c", 0, "s0", 1, 1, 1),
                running("c", 2, "s1", 5),
                exited("c", 1, "s1", 3, 1, 1),
                running("other", 0, "s1", 5),
            ],
        };
        let order: Vec<u32> = observed
            .instances_of("c")
            .iter()
            .map(|c| c.restart_count)
            .collect();
        assert_eq!(order, vec![2, 1, 0]);
        assert_eq!(
            observed.current_sandbox().map(|s| s.id.as_str()),
            Some("s1")
        );
    }

    #[test]
    fn run_time_is_never_negative() {
        let mut c = exited("c", 0, "s", 10, 5, 0);
        assert_eq!(c.ran_for(), Duration::from_secs(5));
        c.finished_at = 0;
        assert_eq!(c.ran_for(), Duration::ZERO);
    }
}
