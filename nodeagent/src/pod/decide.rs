//! The pod state machine, as one pure function: given what the Pod asks
//! for ([`DesiredPod`]), what the runtime has ([`Observed`]) and the little
//! the worker remembers between passes ([`Memory`]: image pull failures),
//! [`decide`] names the pod's state and the single next [`Step`].
//!
//! The states are krustlet's and the kubelet's: a pod is `Registered` (no
//! sandbox yet), `Starting` (pulling, creating), `Running`,
//! `ImagePullBackOff`, `CrashLoopBackOff`, `Completed` (nothing left to
//! restart), `Terminating` (being deleted) or `Gone` (deleted from etcd,
//! leftovers being removed). The worker executes the step and asks again,
//! so every transition starts from a fresh observation and a crash between
//! two steps loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use super::backoff;
use super::desired::{DesiredContainer, DesiredPod, RestartPolicy, MIN_GRACE_SECONDS};
use super::observe::{ContainerInstance, InstanceState, Observed};
use crate::probe::ProbeStatus;

/// How long a fresh pull failure shows as `ErrImagePull` before it reads
/// `ImagePullBackOff`, as the kubelet's next sync would show it.
pub const ERR_IMAGE_PULL_SHOWN: Duration = Duration::from_secs(2);
/// Image pull back-off bounds (the kubelet's).
pub const PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// See [`PULL_BACKOFF_INITIAL`].
pub const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A failed image pull, remembered for the back-off (as the kubelet does,
/// only in memory: a restarted agent simply tries again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFailure {
    /// The image that failed.
    pub image: String,
    /// The runtime's error, verbatim.
    pub message: String,
    /// When it failed (ns since the epoch).
    pub failed_at: i64,
    /// No pull before this time (ns since the epoch).
    pub retry_at: i64,
    /// The back-off just waited; the next failure doubles it.
    pub backoff: Duration,
    /// The policy is `Never` and the image is absent (`ErrImageNeverPull`).
    pub never: bool,
}

impl PullFailure {
    /// Records a failure after `previous` (the last one, if any).
    pub fn after(
        previous: Option<&PullFailure>,
        image: &str,
        message: String,
        never: bool,
        now: i64,
    ) -> PullFailure {
        let backoff = match previous {
            Some(p) if p.image == image => (p.backoff * 2).min(PULL_BACKOFF_MAX),
            _ => PULL_BACKOFF_INITIAL,
        };
        PullFailure {
            image: image.to_string(),
            message,
            failed_at: now,
            retry_at: now.saturating_add(nanos(backoff)),
            backoff,
            never,
        }
    }

    /// The waiting reason this failure shows at `now`.
    pub fn reason(&self, now: i64) -> &'static str {
        if self.never {
            "ErrImageNeverPull"
        } else if now < self.failed_at.saturating_add(nanos(ERR_IMAGE_PULL_SHOWN)) {
            "ErrImagePull"
        } else {
            "ImagePullBackOff"
        }
    }

    /// The waiting message this failure shows at `now`.
    pub fn status_message(&self, now: i64) -> String {
        match self.reason(now) {
            "ImagePullBackOff" => format!(
                "Back-off pulling image {:?}: ErrImagePull: {}",
                self.image, self.message
            ),
            _ => self.message.clone(),
        }
    }
}

/// What a worker remembers between passes. Everything else is observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// Image pull failures by container name.
    pub pull_failures: BTreeMap<String, PullFailure>,
    /// The last create/start error by container name (`RunContainerError`).
    pub run_errors: BTreeMap<String, String>,
    /// Why the last instance's postStart hook failed, by container name
    /// (`PostStartHookError`, until the next instance starts).
    pub post_start_errors: BTreeMap<String, String>,
    /// Why a container could not be configured, by container name
    /// (`CreateContainerConfigError`: a missing ConfigMap, Secret or key).
    pub config_errors: BTreeMap<String, String>,
    /// The host side of a teardown (cgroups, log directory) is done.
    pub host_cleaned: bool,
    /// What the probes of running instances found, by container name.
    pub probes: BTreeMap<String, ProbeStatus>,
    /// Why the pod's volumes could not be set up (containers wait in
    /// `ContainerCreating` meanwhile).
    pub volume_error: Option<String>,
}

/// The named state of a pod on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Accepted, no sandbox yet.
    Registered,
    /// Sandbox up, containers being pulled, created or started.
    Starting,
    /// Every container runs (or finished for good).
    Running,
    /// A container waits for an image pull back-off.
    ImagePullBackOff,
    /// A container waits for its crash-loop back-off.
    CrashLoopBackOff,
    /// Nothing runs and nothing will be restarted.
    Completed,
    /// Being deleted: stopping and removing.
    Terminating,
    /// Deleted from etcd: removing what is left in the runtime.
    Gone,
}

/// What is next for one container of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerPlan {
    /// Its current instance runs as specified.
    Running,
    /// Its current instance is being replaced or tidied first.
    Pending,
    /// Pull (per policy), create and start a new instance.
    Start {
        /// Restart count of the new instance.
        restart_count: u32,
        /// Back-off to arm on it.
        backoff: Duration,
    },
    /// Start an instance that was created but never started.
    Resume {
        /// Its id.
        id: String,
    },
    /// An app container waiting for the init containers to complete.
    Initializing,
    /// Waiting out the crash-loop back-off.
    CrashLoopBackOff {
        /// Restart allowed from (ns since the epoch).
        until: i64,
        /// The back-off being waited (for the message).
        backoff: Duration,
    },
    /// Waiting out an image pull back-off.
    ImagePullBackOff {
        /// Next pull allowed from (ns since the epoch).
        until: i64,
    },
    /// Finished and not to be restarted.
    Done,
}

/// The one thing to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop these containers (SIGTERM, then SIGKILL after `grace` seconds).
    StopContainers {
        /// Container ids.
        ids: Vec<String>,
        /// Grace period in seconds.
        grace: i64,
    },
    /// Stop a sandbox (its network goes with it).
    StopSandbox {
        /// Sandbox id.
        id: String,
    },
    /// Remove stopped containers and their log files.
    RemoveContainers {
        /// `(id, log path)` pairs.
        containers: Vec<(String, String)>,
    },
    /// Remove a stopped sandbox.
    RemoveSandbox {
        /// Sandbox id.
        id: String,
    },
    /// Remove the pod's cgroups and log directory.
    CleanUpHost,
    /// Delete the Pod object: the runtime holds nothing of it any more.
    DeletePod,
    /// Nothing left anywhere: the worker ends.
    Finished,
    /// Run a new sandbox.
    CreateSandbox {
        /// Its attempt number.
        attempt: u32,
    },
    /// Pull, create and start a container.
    StartContainer {
        /// Container name.
        name: String,
        /// Restart count of the new instance.
        restart_count: u32,
        /// Back-off to arm on it.
        backoff: Duration,
    },
    /// Start a created container.
    ResumeContainer {
        /// Container name.
        name: String,
        /// Its id.
        id: String,
    },
    /// Nothing to do; look again after `requeue` (or when woken).
    Idle {
        /// When something is due (a back-off ends).
        requeue: Option<Duration>,
    },
}

impl Step {
    /// A short name for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Step::StopContainers { .. } => "StopContainers",
            Step::StopSandbox { .. } => "StopSandbox",
            Step::RemoveContainers { .. } => "RemoveContainers",
            Step::RemoveSandbox { .. } => "RemoveSandbox",
            Step::CleanUpHost => "CleanUpHost",
            Step::DeletePod => "DeletePod",
            Step::Finished => "Finished",
            Step::CreateSandbox { .. } => "CreateSandbox",
            Step::StartContainer { .. } => "StartContainer",
            Step::ResumeContainer { .. } => "ResumeContainer",
            Step::Idle { .. } => "Idle",
        }
    }
}

/// The outcome of one decision: the pod's state, each container's plan (in
/// spec order, for status) and the step to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The pod's named state.
    pub state: PodState,
    /// `(container name, plan)` in spec order; empty in teardown.
    pub containers: Vec<(String, ContainerPlan)>,
    /// The same for the init containers.
    pub init_containers: Vec<(String, ContainerPlan)>,
    /// The next step.
    pub step: Step,
}

/// Decides the next step for a pod. `pod` is `None` when the Pod object is
/// gone from etcd (or never was: an orphan in the runtime).
pub fn decide(pod: Option<&DesiredPod>, obs: &Observed, mem: &Memory, now: i64) -> Decision {
    match pod {
        Some(p) if p.deletion_grace.is_none() => run(p, obs, mem, now),
        _ => teardown(pod, obs, mem),
    }
}

/// Stop everything, remove everything, clean the host, then let go of the
/// object: the order the kubelet uses, one step at a time.
fn teardown(pod: Option<&DesiredPod>, obs: &Observed, mem: &Memory) -> Decision {
    let state = if pod.is_some() {
        PodState::Terminating
    } else {
        PodState::Gone
    };
    let grace = pod
        .and_then(|p| p.deletion_grace)
        .unwrap_or(MIN_GRACE_SECONDS);
    let running: Vec<String> = obs
        .containers
        .iter()
        .filter(|c| c.is_running())
        .map(|c| c.id.clone())
        .collect();
    let step = if !running.is_empty() {
        Step::StopContainers {
            ids: running,
            grace,
        }
    } else if let Some(s) = obs.sandboxes.iter().find(|s| s.ready) {
        Step::StopSandbox { id: s.id.clone() }
    } else if !obs.containers.is_empty() {
        Step::RemoveContainers {
            containers: obs
                .containers
                .iter()
                .map(|c| (c.id.clone(), c.log_path.clone()))
                .collect(),
        }
    } else if let Some(s) = obs.sandboxes.first() {
        Step::RemoveSandbox { id: s.id.clone() }
    } else if !mem.host_cleaned {
        Step::CleanUpHost
    } else if pod.is_some() {
        Step::DeletePod
    } else {
        Step::Finished
    };
    Decision {
        state,
        containers: Vec::new(),
        init_containers: Vec::new(),
        step,
    }
}

/// Housekeeping a container's instances need before its plan can proceed.
#[derive(Debug, Default)]
struct Housekeeping {
    kill: Vec<String>,
    remove: Vec<(String, String)>,
}

fn run(pod: &DesiredPod, obs: &Observed, mem: &Memory, now: i64) -> Decision {
    let sandboxes = obs.sandboxes_newest_first();
    let ready: Vec<_> = sandboxes.iter().filter(|s| s.ready).collect();
    let current = ready.first().map(|s| s.id.as_str());

    let mut housekeeping = Housekeeping::default();
    // Init containers run one at a time, in order, each to a successful
    // exit, in the current sandbox (a new sandbox runs them again). A
    // failed one is restarted with back-off unless the policy is Never,
    // which fails the pod. App containers wait until all are done. A
    // sidecar (`restartPolicy: Always`) lets the next one start as soon as
    // it runs and its startup probe passed, is always restarted, and is
    // stopped once the app containers have all finished.
    let init_policy = match pod.restart_policy {
        RestartPolicy::Never => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    };
    let mut init_plans = Vec::with_capacity(pod.init_containers.len());
    // Once an app container ran in this sandbox, the pod was initialized:
    // a sidecar restarting later does not hold the app back again.
    let app_started = pod.containers.iter().any(|c| {
        obs.instances_of(&c.name)
            .iter()
            .any(|i| Some(i.sandbox_id.as_str()) == current)
    });
    let mut initialized = true;
    let mut init_failed = false;
    for container in &pod.init_containers {
        if !initialized {
            init_plans.push((container.name.clone(), ContainerPlan::Initializing));
            continue;
        }
        let instances: Vec<&ContainerInstance> = obs
            .instances_of(&container.name)
            .into_iter()
            .filter(|c| Some(c.sandbox_id.as_str()) == current)
            .collect();
        let policy = if container.sidecar {
            RestartPolicy::Always
        } else {
            init_policy
        };
        let plan = plan_container(
            pod,
            policy,
            container,
            &instances,
            current,
            mem,
            now,
            &mut housekeeping,
        );
        if container.sidecar {
            initialized &= app_started
                || (plan == ContainerPlan::Running
                    && started(container, instances.first().copied(), mem));
        } else {
            let failed =
                plan == ContainerPlan::Done && instances.first().is_some_and(|c| c.exit_code != 0);
            init_failed |= failed;
            initialized &= plan == ContainerPlan::Done && !failed;
        }
        init_plans.push((container.name.clone(), plan));
    }
    let mut plans = Vec::with_capacity(pod.containers.len());
    for container in &pod.containers {
        let plan = if init_failed {
            ContainerPlan::Done
        } else if !initialized {
            ContainerPlan::Initializing
        } else {
            let instances = obs.instances_of(&container.name);
            plan_container(
                pod,
                pod.restart_policy,
                container,
                &instances,
                current,
                mem,
                now,
                &mut housekeeping,
            )
        };
        plans.push((container.name.clone(), plan));
    }
    // The app containers are all done: so are the sidecars, stopped if
    // they still run.
    if !plans.is_empty() && plans.iter().all(|(_, p)| *p == ContainerPlan::Done) {
        for (container, (_, plan)) in pod.init_containers.iter().zip(init_plans.iter_mut()) {
            if container.sidecar {
                let running = obs.instances_of(&container.name).into_iter();
                for c in running.filter(|c| c.is_running()) {
                    housekeeping.kill.push(c.id.clone());
                }
                *plan = ContainerPlan::Done;
            }
        }
    }
    // Instances of containers no longer in the spec (cannot happen for
    // pods, whose container list is immutable; tidy them all the same).
    let in_spec = |name: &str| {
        pod.containers
            .iter()
            .chain(&pod.init_containers)
            .any(|d| d.name == name)
    };
    for c in &obs.containers {
        if !in_spec(&c.name) {
            if c.is_running() {
                housekeeping.kill.push(c.id.clone());
            } else {
                housekeeping.remove.push((c.id.clone(), c.log_path.clone()));
            }
        }
    }

    let all_done = plans.iter().all(|(_, p)| *p == ContainerPlan::Done);
    let every_plan: Vec<(String, ContainerPlan)> =
        init_plans.iter().chain(&plans).cloned().collect();
    let state = pod_state(&every_plan, current.is_some(), all_done);
    let step = if let Some(duplicate) = ready.get(1) {
        Step::StopSandbox {
            id: duplicate.id.clone(),
        }
    } else if !housekeeping.kill.is_empty() {
        Step::StopContainers {
            ids: housekeeping.kill,
            grace: pod.grace_period,
        }
    } else if !housekeeping.remove.is_empty() {
        Step::RemoveContainers {
            containers: housekeeping.remove,
        }
    } else if all_done {
        match current {
            // Done for good: give the IP back, keep the containers for logs.
            Some(id) => Step::StopSandbox { id: id.to_string() },
            None => match empty_dead_sandbox(obs, sandboxes.first().map(|s| s.id.as_str())) {
                Some(id) => Step::RemoveSandbox { id },
                None => Step::Idle { requeue: None },
            },
        }
    } else if current.is_none() {
        Step::CreateSandbox {
            attempt: sandboxes.first().map_or(0, |s| s.attempt.saturating_add(1)),
        }
    } else if let Some(step) = first_start(&every_plan) {
        step
    } else if let Some(id) = empty_dead_sandbox(obs, None) {
        Step::RemoveSandbox { id }
    } else {
        Step::Idle {
            requeue: requeue(&every_plan, mem, now),
        }
    };
    Decision {
        state,
        containers: plans,
        init_containers: init_plans,
        step,
    }
}

fn pod_state(plans: &[(String, ContainerPlan)], has_sandbox: bool, all_done: bool) -> PodState {
    let any = |f: fn(&ContainerPlan) -> bool| plans.iter().any(|(_, p)| f(p));
    if all_done {
        PodState::Completed
    } else if !has_sandbox {
        PodState::Registered
    } else if any(|p| matches!(p, ContainerPlan::ImagePullBackOff { .. })) {
        PodState::ImagePullBackOff
    } else if any(|p| matches!(p, ContainerPlan::CrashLoopBackOff { .. })) {
        PodState::CrashLoopBackOff
    } else if plans
        .iter()
        .all(|(_, p)| matches!(p, ContainerPlan::Running | ContainerPlan::Done))
    {
        PodState::Running
    } else {
        PodState::Starting
    }
}

/// The plan for one container, from its instances (newest first), under
/// `policy` (the pod's, or for an init container the one the kubelet
/// applies to it).
#[allow(clippy::too_many_arguments)]
fn plan_container(
    pod: &DesiredPod,
    policy: RestartPolicy,
    container: &DesiredContainer,
    instances: &[&ContainerInstance],
    current_sandbox: Option<&str>,
    mem: &Memory,
    now: i64,
    housekeeping: &mut Housekeeping,
) -> ContainerPlan {
    // Never two running instances of one container.
    for older in instances.iter().skip(1).filter(|c| c.is_running()) {
        housekeeping.kill.push(older.id.clone());
    }
    // Keep the current instance and the previous one (for `--previous`
    // logs and lastState); remove the rest.
    for old in instances.iter().skip(2).filter(|c| !c.is_running()) {
        housekeeping
            .remove
            .push((old.id.clone(), old.log_path.clone()));
    }
    let pull_gate = |restart_count: u32, backoff: Duration| match mem
        .pull_failures
        .get(&container.name)
        .filter(|f| f.image == container.image && now < f.retry_at)
    {
        Some(f) => ContainerPlan::ImagePullBackOff { until: f.retry_at },
        None => ContainerPlan::Start {
            restart_count,
            backoff,
        },
    };
    let Some(latest) = instances.first() else {
        return if pod.terminal {
            ContainerPlan::Done
        } else {
            pull_gate(0, Duration::ZERO)
        };
    };
    let stale = latest
        .spec_hash
        .as_deref()
        .is_some_and(|h| h != container.hash);
    let in_current = current_sandbox == Some(latest.sandbox_id.as_str());
    match latest.state {
        InstanceState::Running => {
            if pod.terminal {
                housekeeping.kill.push(latest.id.clone());
                ContainerPlan::Done
            } else if !in_current || stale {
                // Its sandbox is gone, or its spec changed: replace it.
                housekeeping.kill.push(latest.id.clone());
                ContainerPlan::Pending
            } else if mem
                .probes
                .get(&container.name)
                .is_some_and(|p| p.container_id == latest.id && p.failed.is_some())
            {
                // Liveness or startup probe failed: stop it; the restart
                // policy and back-off decide what follows its exit.
                housekeeping.kill.push(latest.id.clone());
                ContainerPlan::Running
            } else {
                ContainerPlan::Running
            }
        }
        InstanceState::Created => {
            if pod.terminal {
                housekeeping
                    .remove
                    .push((latest.id.clone(), latest.log_path.clone()));
                ContainerPlan::Done
            } else if in_current && !stale {
                ContainerPlan::Resume {
                    id: latest.id.clone(),
                }
            } else {
                housekeeping
                    .remove
                    .push((latest.id.clone(), latest.log_path.clone()));
                ContainerPlan::Pending
            }
        }
        InstanceState::Exited | InstanceState::Unknown => {
            if pod.terminal || (!stale && !policy.restarts(latest.exit_code)) {
                return ContainerPlan::Done;
            }
            let next = if stale {
                // Replaced because the spec changed, not because it crashed.
                backoff::AfterExit {
                    wait: Duration::ZERO,
                    next: backoff::INITIAL,
                }
            } else {
                backoff::after_exit(latest.backoff, latest.ran_for())
            };
            let until = latest.finished_at.saturating_add(nanos(next.wait));
            if now < until {
                ContainerPlan::CrashLoopBackOff {
                    until,
                    backoff: next.wait,
                }
            } else {
                pull_gate(latest.restart_count.saturating_add(1), next.next)
            }
        }
    }
}

/// Whether `latest` (the newest instance of `container`) has started: it
/// runs and its startup probe, if any, succeeded.
fn started(container: &DesiredContainer, latest: Option<&ContainerInstance>, mem: &Memory) -> bool {
    let Some(latest) = latest.filter(|c| c.is_running()) else {
        return false;
    };
    container.probes.startup.is_none()
        || mem
            .probes
            .get(&container.name)
            .is_some_and(|p| p.container_id == latest.id && p.started)
}

fn first_start(plans: &[(String, ContainerPlan)]) -> Option<Step> {
    plans.iter().find_map(|(name, plan)| match plan {
        ContainerPlan::Start {
            restart_count,
            backoff,
        } => Some(Step::StartContainer {
            name: name.clone(),
            restart_count: *restart_count,
            backoff: *backoff,
        }),
        ContainerPlan::Resume { id } => Some(Step::ResumeContainer {
            name: name.clone(),
            id: id.clone(),
        }),
        _ => None,
    })
}

/// A stopped sandbox no container lives in any more (not `keep`).
fn empty_dead_sandbox(obs: &Observed, keep: Option<&str>) -> Option<String> {
    obs.sandboxes
        .iter()
        .filter(|s| !s.ready && Some(s.id.as_str()) != keep)
        .find(|s| !obs.containers.iter().any(|c| c.sandbox_id == s.id))
        .map(|s| s.id.clone())
}

/// When the earliest back-off ends, or a pull error turns into a back-off.
fn requeue(plans: &[(String, ContainerPlan)], mem: &Memory, now: i64) -> Option<Duration> {
    let mut due: Vec<i64> = plans
        .iter()
        .filter_map(|(_, p)| match p {
            ContainerPlan::CrashLoopBackOff { until, .. } => Some(*until),
            ContainerPlan::ImagePullBackOff { until } => Some(*until),
            _ => None,
        })
        .collect();
    due.extend(
        mem.pull_failures
            .values()
            .map(|f| f.failed_at.saturating_add(nanos(ERR_IMAGE_PULL_SHOWN)))
            .filter(|t| *t > now),
    );
    due.into_iter()
        .min()
        .map(|t| Duration::from_nanos(u64::try_from(t.saturating_sub(now)).unwrap_or(0)))
}

/// A duration in ns as the i64 CRI uses.
pub fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::super::desired::{PullPolicy, RestartPolicy};
    use super::super::observe::fixtures::*;
    use super::*;

    const S: i64 = 1_000_000_000;

    fn pod(policy: RestartPolicy, names: &[&str]) -> DesiredPod {
        DesiredPod {
            uid: "u".into(),
            name: "web".into(),
            namespace: "default".into(),
            restart_policy: policy,
            containers: names
                .iter()
                .map(|n| DesiredContainer {
                    name: n.to_string(),
                    image: "img:1".into(),
                    pull_policy: PullPolicy::IfNotPresent,
                    hash: "h".into(),
                    probes: Default::default(),
                    sidecar: false,
                })
                .collect(),
            init_containers: Vec::new(),
            deletion_grace: None,
            grace_period: 30,
            terminal: false,
        }
    }

    fn obs(
        sandboxes: Vec<super::super::observe::SandboxInstance>,
        containers: Vec<ContainerInstance>,
    ) -> Observed {
        Observed {
            sandboxes,
            containers,
        }
    }

    fn step(p: &DesiredPod, o: &Observed, now: i64) -> Step {
        decide(Some(p), o, &Memory::default(), now * S).step
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_then_its_containers() {
        let p = pod(RestartPolicy::Always, &["a", "b"]);
        let d = decide(Some(&p), &Observed::default(), &Memory::default(), 0);
        assert_eq!(d.state, PodState::Registered);
        assert_eq!(d.step, Step::CreateSandbox { attempt: 0 });
        let o = obs(vec![sandbox("s0", 0, true)], vec![]);
        assert_eq!(
            step(&p, &o, 1),
            Step::StartContainer {
                name: "a".into(),
                restart_count: 0,
                backoff: Duration::ZERO
            }
        );
        let o = obs(vec![sandbox("s0", 0, true)], vec![running("a", 0, "s0", 1)]);
        assert!(matches!(step(&p, &o, 2), Step::StartContainer { name, .. } if name == "b"));
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![running("a", 0, "s0", 1), running("b", 0, "s0", 2)],
        );
        let d = decide(Some(&p), &o, &Memory::default(), 3 * S);
        assert_eq!(d.state, PodState::Running);
        assert_eq!(d.step, Step::Idle { requeue: None });
    }

    /// Starting `name` as instance `restart_count`, with the back-off a
    /// first start or a first restart arms.
    fn start(name: &str, restart_count: u32) -> Step {
        Step::StartContainer {
            name: name.into(),
            restart_count,
            backoff: if restart_count == 0 {
                Duration::ZERO
            } else {
                backoff::INITIAL
            },
        }
    }

    fn with_init(policy: RestartPolicy) -> DesiredPod {
        let mut p = pod(policy, &["a"]);
        p.init_containers = pod(policy, &["i", "j"]).containers;
        p
    }

    fn plans(d: &Decision) -> Vec<(&str, &ContainerPlan)> {
        d.init_containers
            .iter()
            .chain(&d.containers)
            .map(|(n, p)| (n.as_str(), p))
            .collect()
    }

    #[test]
    fn init_containers_run_in_order_to_completion_before_the_app() {
        let p = with_init(RestartPolicy::Always);
        let s0 = || sandbox("s0", 0, true);
        assert_eq!(step(&p, &obs(vec![s0()], vec![]), 1), start("i", 0));
        let d = decide(
            Some(&p),
            &obs(vec![s0()], vec![running("i", 0, "s0", 1)]),
            &Memory::default(),
            2 * S,
        );
        assert_eq!(d.step, Step::Idle { requeue: None });
        assert_eq!(d.state, PodState::Starting);
        assert_eq!(
            plans(&d),
            [
                ("i", &ContainerPlan::Running),
                ("j", &ContainerPlan::Initializing),
                ("a", &ContainerPlan::Initializing)
            ]
        );
        let i_done = exited("i", 0, "s0", 1, 1, 0);
        assert_eq!(
            step(&p, &obs(vec![s0()], vec![i_done.clone()]), 3),
            start("j", 0)
        );
        // A failed init container is restarted (OnFailure for the pod's
        // Always), and the app still waits.
        let j_failed = exited("j", 0, "s0", 3, 1, 1);
        let d = decide(
            Some(&p),
            &obs(vec![s0()], vec![i_done.clone(), j_failed]),
            &Memory::default(),
            5 * S,
        );
        assert_eq!(d.step, start("j", 1));
        assert_eq!(d.containers[0].1, ContainerPlan::Initializing);
        let j_done = exited("j", 1, "s0", 5, 1, 0);
        assert_eq!(
            step(
                &p,
                &obs(vec![s0()], vec![i_done.clone(), j_done.clone()]),
                7
            ),
            start("a", 0)
        );
        // A new sandbox runs them again.
        let o = obs(
            vec![sandbox("s0", 0, false), sandbox("s1", 1, true)],
            vec![i_done, j_done],
        );
        assert_eq!(step(&p, &o, 9), start("i", 0));
    }

    #[test]
    fn sidecars_start_first_keep_running_and_stop_after_the_app() {
        let mut p = with_init(RestartPolicy::Never);
        p.init_containers[0].sidecar = true;
        let s0 = || sandbox("s0", 0, true);
        // The sidecar first; once it runs, the next init container.
        assert_eq!(step(&p, &obs(vec![s0()], vec![]), 1), start("i", 0));
        let proxy = running("i", 0, "s0", 1);
        assert_eq!(
            step(&p, &obs(vec![s0()], vec![proxy.clone()]), 2),
            start("j", 0)
        );
        let j_done = exited("j", 0, "s0", 2, 1, 0);
        assert_eq!(
            step(&p, &obs(vec![s0()], vec![proxy.clone(), j_done.clone()]), 4),
            start("a", 0)
        );
        let app = running("a", 0, "s0", 5);
        let d = decide(
            Some(&p),
            &obs(vec![s0()], vec![proxy.clone(), j_done.clone(), app.clone()]),
            &Memory::default(),
            6 * S,
        );
        assert_eq!(d.state, PodState::Running);
        assert_eq!(d.step, Step::Idle { requeue: None });

        // A sidecar that exits is restarted, even under Never, and the
        // running app is not held back.
        let proxy_failed = exited("i", 0, "s0", 1, 10, 1);
        let d = decide(
            Some(&p),
            &obs(vec![s0()], vec![proxy_failed, j_done.clone(), app.clone()]),
            &Memory::default(),
            30 * S,
        );
        assert_eq!(d.step, start("i", 1));
        assert_eq!(d.containers[0].1, ContainerPlan::Running);

        // The app is done: the sidecar is stopped, then the pod completes.
        let app_done = exited("a", 0, "s0", 5, 20, 0);
        let d = decide(
            Some(&p),
            &obs(vec![s0()], vec![proxy, j_done.clone(), app_done.clone()]),
            &Memory::default(),
            40 * S,
        );
        assert_eq!(
            d.step,
            Step::StopContainers {
                ids: vec!["i-0".into()],
                grace: 30
            }
        );
        let proxy_stopped = exited("i", 0, "s0", 1, 40, 137);
        let d = decide(
            Some(&p),
            &obs(vec![s0()], vec![proxy_stopped, j_done, app_done]),
            &Memory::default(),
            41 * S,
        );
        assert_eq!(d.state, PodState::Completed);
        assert_eq!(d.step, Step::StopSandbox { id: "s0".into() });
    }

    #[test]
    fn a_sidecar_with_a_startup_probe_holds_the_next_until_it_passes() {
        let mut p = with_init(RestartPolicy::Always);
        p.init_containers[0].sidecar = true;
        let probe = serde_json::from_value(serde_json::json!({"tcpSocket": {"port": 1}}));
        p.init_containers[0].probes.startup =
            crate::probe::ProbeSpec::from_k8s(&probe.expect("probe"));
        assert!(p.init_containers[0].probes.startup.is_some());
        let o = obs(vec![sandbox("s0", 0, true)], vec![running("i", 0, "s0", 1)]);
        let mut mem = Memory::default();
        assert_eq!(
            decide(Some(&p), &o, &mem, 2 * S).step,
            Step::Idle { requeue: None }
        );
        mem.probes.insert(
            "i".into(),
            ProbeStatus {
                container_id: "i-0".into(),
                started: true,
                ready: false,
                failed: None,
            },
        );
        assert!(matches!(
            decide(Some(&p), &o, &mem, 3 * S).step,
            Step::StartContainer { name, .. } if name == "j"
        ));
    }

    #[test]
    fn a_failed_init_container_fails_a_never_pod() {
        let p = with_init(RestartPolicy::Never);
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![exited("i", 0, "s0", 1, 1, 2)],
        );
        let d = decide(Some(&p), &o, &Memory::default(), 3 * S);
        assert_eq!(d.state, PodState::Completed);
        assert_eq!(d.step, Step::StopSandbox { id: "s0".into() });
        assert_eq!(
            plans(&d),
            [
                ("i", &ContainerPlan::Done),
                ("j", &ContainerPlan::Initializing),
                ("a", &ContainerPlan::Done)
            ]
        );
    }

    #[test]
    fn a_failed_liveness_probe_stops_that_instance_only() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let o = obs(vec![sandbox("s0", 0, true)], vec![running("a", 0, "s0", 1)]);
        let mut mem = Memory::default();
        let failed = |id: &str| ProbeStatus {
            container_id: id.into(),
            started: true,
            ready: false,
            failed: Some("Liveness probe failed: HTTP probe failed with statuscode: 500".into()),
        };
        mem.probes.insert("a".into(), failed("a-0"));
        let d = decide(Some(&p), &o, &mem, 5 * S);
        assert_eq!(
            d.step,
            Step::StopContainers {
                ids: vec!["a-0".into()],
                grace: 30
            }
        );
        // A verdict about an earlier instance does not touch this one.
        mem.probes.insert("a".into(), failed("a-old"));
        assert_eq!(
            decide(Some(&p), &o, &mem, 5 * S).step,
            Step::Idle { requeue: None }
        );
    }

    #[test]
    fn first_crash_restarts_at_once_then_backs_off() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![exited("a", 0, "s0", 10, 1, 1)],
        );
        assert_eq!(
            step(&p, &o, 12),
            Step::StartContainer {
                name: "a".into(),
                restart_count: 1,
                backoff: backoff::INITIAL
            }
        );
        let mut second = exited("a", 1, "s0", 12, 1, 1);
        second.backoff = backoff::INITIAL;
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![exited("a", 0, "s0", 10, 1, 1), second],
        );
        let d = decide(Some(&p), &o, &Memory::default(), 15 * S);
        assert_eq!(d.state, PodState::CrashLoopBackOff);
        assert_eq!(
            d.containers[0].1,
            ContainerPlan::CrashLoopBackOff {
                until: 23 * S,
                backoff: backoff::INITIAL
            }
        );
        assert_eq!(
            d.step,
            Step::Idle {
                requeue: Some(Duration::from_secs(8))
            }
        );
        assert_eq!(
            step(&p, &o, 23),
            Step::StartContainer {
                name: "a".into(),
                restart_count: 2,
                backoff: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn restart_policies_decide_completion() {
        let o = |code| {
            obs(
                vec![sandbox("s0", 0, true)],
                vec![exited("a", 0, "s0", 1, 1, code)],
            )
        };
        let never = pod(RestartPolicy::Never, &["a"]);
        let d = decide(Some(&never), &o(0), &Memory::default(), 5 * S);
        assert_eq!(d.state, PodState::Completed);
        // Done for good: the sandbox is stopped to release the pod IP.
        assert_eq!(d.step, Step::StopSandbox { id: "s0".into() });
        let on_failure = pod(RestartPolicy::OnFailure, &["a"]);
        assert_eq!(
            decide(Some(&on_failure), &o(0), &Memory::default(), 5 * S).state,
            PodState::Completed
        );
        assert!(matches!(
            step(&on_failure, &o(3), 5),
            Step::StartContainer {
                restart_count: 1,
                ..
            }
        ));
        let stopped = obs(
            vec![sandbox("s0", 0, false)],
            vec![exited("a", 0, "s0", 1, 1, 0)],
        );
        assert_eq!(step(&never, &stopped, 5), Step::Idle { requeue: None });
    }

    #[test]
    fn keeps_only_the_previous_instance() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![
                exited("a", 0, "s0", 1, 1, 1),
                exited("a", 1, "s0", 3, 1, 1),
                running("a", 2, "s0", 5),
            ],
        );
        assert_eq!(
            step(&p, &o, 6),
            Step::RemoveContainers {
                containers: vec![("a-0".into(), "/logs/a/0.log".into())]
            }
        );
    }

    #[test]
    fn never_runs_two_instances() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let mut dup = running("a", 0, "s0", 1);
        dup.id = "dup".into();
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![dup, running("a", 1, "s0", 2)],
        );
        assert_eq!(
            step(&p, &o, 3),
            Step::StopContainers {
                ids: vec!["dup".into()],
                grace: 30
            }
        );
        let o = obs(vec![sandbox("s1", 1, true), sandbox("s0", 0, true)], vec![]);
        assert_eq!(step(&p, &o, 3), Step::StopSandbox { id: "s0".into() });
    }

    #[test]
    fn a_dead_sandbox_is_replaced() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let o = obs(
            vec![sandbox("s0", 0, false)],
            vec![running("a", 0, "s0", 1)],
        );
        assert!(matches!(step(&p, &o, 3), Step::StopContainers { .. }));
        let o = obs(
            vec![sandbox("s0", 0, false)],
            vec![exited("a", 0, "s0", 1, 1, 137)],
        );
        assert_eq!(step(&p, &o, 3), Step::CreateSandbox { attempt: 1 });
        // Once the new instance runs elsewhere, the old sandbox is kept while
        // it holds the previous instance.
        let o = obs(
            vec![sandbox("s0", 0, false), sandbox("s1", 1, true)],
            vec![exited("a", 0, "s0", 1, 1, 137), running("a", 1, "s1", 4)],
        );
        assert_eq!(step(&p, &o, 5), Step::Idle { requeue: None });
        let o = obs(
            vec![sandbox("s0", 0, false), sandbox("s1", 1, true)],
            vec![running("a", 1, "s1", 4)],
        );
        assert_eq!(step(&p, &o, 5), Step::RemoveSandbox { id: "s0".into() });
    }

    #[test]
    fn a_changed_spec_replaces_the_container_without_backoff() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let mut old = running("a", 0, "s0", 1);
        old.spec_hash = Some("old".into());
        let o = obs(vec![sandbox("s0", 0, true)], vec![old.clone()]);
        assert!(matches!(step(&p, &o, 3), Step::StopContainers { .. }));
        let mut stopped = exited("a", 0, "s0", 1, 1, 0);
        stopped.spec_hash = Some("old".into());
        stopped.backoff = Duration::from_secs(80);
        let o = obs(vec![sandbox("s0", 0, true)], vec![stopped]);
        assert!(matches!(
            step(&p, &o, 3),
            Step::StartContainer {
                restart_count: 1,
                ..
            }
        ));
    }

    #[test]
    fn created_instances_are_resumed_or_removed() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let mut created = running("a", 0, "s0", 1);
        created.state = InstanceState::Created;
        let o = obs(vec![sandbox("s0", 0, true)], vec![created.clone()]);
        assert_eq!(
            step(&p, &o, 2),
            Step::ResumeContainer {
                name: "a".into(),
                id: "a-0".into()
            }
        );
        let o = obs(vec![sandbox("s1", 1, true)], vec![created]);
        assert!(matches!(step(&p, &o, 2), Step::RemoveContainers { .. }));
    }

    #[test]
    fn pull_failures_back_off_and_show_err_then_backoff() {
        let p = pod(RestartPolicy::Always, &["a"]);
        let o = obs(vec![sandbox("s0", 0, true)], vec![]);
        let failure = PullFailure::after(None, "img:1", "not found".into(), false, 100 * S);
        assert_eq!(failure.retry_at, 110 * S);
        let mut mem = Memory::default();
        mem.pull_failures.insert("a".into(), failure.clone());
        let d = decide(Some(&p), &o, &mem, 101 * S);
        assert_eq!(d.state, PodState::ImagePullBackOff);
        assert_eq!(
            d.step,
            Step::Idle {
                requeue: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(failure.reason(101 * S), "ErrImagePull");
        assert_eq!(failure.reason(103 * S), "ImagePullBackOff");
        assert_eq!(
            failure.status_message(103 * S),
            "Back-off pulling image \"img:1\": ErrImagePull: not found"
        );
        assert!(matches!(
            decide(Some(&p), &o, &mem, 110 * S).step,
            Step::StartContainer { .. }
        ));
        let again = PullFailure::after(Some(&failure), "img:1", "x".into(), false, 110 * S);
        assert_eq!(again.backoff, Duration::from_secs(20));
    }

    #[test]
    fn teardown_order() {
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.deletion_grace = Some(5);
        let mut mem = Memory::default();
        let o = obs(vec![sandbox("s0", 0, true)], vec![running("a", 0, "s0", 1)]);
        let d = decide(Some(&p), &o, &mem, 0);
        assert_eq!(d.state, PodState::Terminating);
        assert_eq!(
            d.step,
            Step::StopContainers {
                ids: vec!["a-0".into()],
                grace: 5
            }
        );
        let o = obs(
            vec![sandbox("s0", 0, true)],
            vec![exited("a", 0, "s0", 1, 1, 0)],
        );
        assert_eq!(
            decide(Some(&p), &o, &mem, 0).step,
            Step::StopSandbox { id: "s0".into() }
        );
        let o = obs(
            vec![sandbox("s0", 0, false)],
            vec![exited("a", 0, "s0", 1, 1, 0)],
        );
        assert!(matches!(
            decide(Some(&p), &o, &mem, 0).step,
            Step::RemoveContainers { .. }
        ));
        let o = obs(vec![sandbox("s0", 0, false)], vec![]);
        assert_eq!(
            decide(Some(&p), &o, &mem, 0).step,
            Step::RemoveSandbox { id: "s0".into() }
        );
        let o = Observed::default();
        assert_eq!(decide(Some(&p), &o, &mem, 0).step, Step::CleanUpHost);
        mem.host_cleaned = true;
        assert_eq!(decide(Some(&p), &o, &mem, 0).step, Step::DeletePod);
        let d = decide(None, &o, &mem, 0);
        assert_eq!((d.state, d.step), (PodState::Gone, Step::Finished));
    }

    #[test]
    fn terminal_pods_never_restart() {
        let mut p = pod(RestartPolicy::Always, &["a"]);
        p.terminal = true;
        let o = obs(
            vec![sandbox("s0", 0, false)],
            vec![exited("a", 0, "s0", 1, 1, 1)],
        );
        let d = decide(Some(&p), &o, &Memory::default(), 100 * S);
        assert_eq!(d.state, PodState::Completed);
        assert_eq!(d.step, Step::Idle { requeue: None });
    }
}
