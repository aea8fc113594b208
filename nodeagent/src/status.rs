//! Pod status as the kubelet computes it, from one observation and one
//! decision. Pure: the worker builds a status on every pass and writes it
//! only when it differs from what is stored, so the builder must be
//! deterministic — times come from the runtime (truncated to seconds, as
//! they are serialized) or are carried over from the old status.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::pod::backoff::go_duration;
use crate::pod::decide::{ContainerPlan, Decision, Memory};
use crate::pod::desired::{DesiredContainer, DesiredPod, RestartPolicy};
use crate::pod::observe::{ContainerInstance, InstanceState, Observed};
use crate::pod::resources::qos_class;

/// Condition types the node agent owns; all others (e.g. `PodScheduled`,
/// set by the scheduler) are carried over untouched.
pub const OWNED_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

/// Everything a pod status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    /// The Pod object (for the images as written and the generation).
    pub pod: &'a Pod,
    /// The pod as decisions see it.
    pub desired: &'a DesiredPod,
    /// What the runtime has.
    pub observed: &'a Observed,
    /// This pass's decision (waiting reasons come from the plans).
    pub decision: &'a Decision,
    /// Pull and start errors remembered by the worker.
    pub memory: &'a Memory,
    /// The node's IP.
    pub host_ip: &'a str,
    /// Now, ns since the epoch.
    pub now: i64,
}

/// Builds the pod status from `input`, carrying over from `old` what the
/// kubelet carries over: start time, condition transition times, the pod
/// IP of a pod whose sandbox is gone, foreign conditions, terminal phases.
pub fn pod_status(old: Option<&PodStatus>, input: StatusInput<'_>) -> PodStatus {
    let now = to_time(input.now).unwrap_or(Time(Timestamp::UNIX_EPOCH));
    let old_conditions: &[PodCondition] = old.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let spec = input.pod.spec.as_ref();
    let spec_containers: Vec<&k8s_openapi::api::core::v1::Container> = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .collect();
    let statuses_of =
        |desired: &[DesiredContainer], plans: &[(String, ContainerPlan)], init: bool| {
            desired
                .iter()
                .zip(plans)
                .map(|(desired, (_, plan))| {
                    let image = spec_containers
                        .iter()
                        .find(|c| c.name == desired.name)
                        .and_then(|c| c.image.clone())
                        .unwrap_or_else(|| desired.image.clone());
                    let mut s = container_status(
                        &desired.name,
                        image,
                        &input.observed.instances_of(&desired.name),
                        plan,
                        input,
                    );
                    if init && !desired.sidecar {
                        // A completed init container reads ready, as in Kubernetes.
                        s.ready = completed(&s);
                    }
                    s
                })
                .collect::<Vec<ContainerStatus>>()
        };
    let statuses = statuses_of(&input.desired.containers, &input.decision.containers, false);
    let init_statuses = statuses_of(
        &input.desired.init_containers,
        &input.decision.init_containers,
        true,
    );

    let sidecars: Vec<&str> = input
        .desired
        .init_containers
        .iter()
        .filter(|c| c.sidecar)
        .map(|c| c.name.as_str())
        .collect();
    let old_phase = old.and_then(|s| s.phase.as_deref());
    let terminal = matches!(old_phase, Some("Succeeded" | "Failed"));
    let phase = match old_phase {
        Some(p) if terminal => p.to_string(),
        _ => phase(
            input.desired.restart_policy,
            &statuses,
            input.desired.containers.len(),
            &init_statuses,
            &sidecars,
        ),
    };

    let current = input.observed.current_sandbox();
    let (pod_ip, pod_ips) = match current.and_then(|s| s.ip) {
        Some(ip) => (
            Some(ip.to_string()),
            Some(vec![PodIP { ip: ip.to_string() }]),
        ),
        None => (
            old.and_then(|s| s.pod_ip.clone()),
            old.and_then(|s| s.pod_ips.clone()),
        ),
    };

    let mut conditions = owned_conditions(
        &statuses,
        &init_statuses,
        &sidecars,
        &phase,
        current.is_some(),
        old_conditions,
        &now,
    );
    conditions.extend(
        old_conditions
            .iter()
            .filter(|c| !OWNED_CONDITIONS.contains(&c.type_.as_str()))
            .cloned(),
    );
    if !conditions.iter().any(|c| c.type_ == "PodScheduled") {
        conditions.push(condition(
            old_conditions,
            "PodScheduled",
            true,
            None,
            None,
            &now,
        ));
    }

    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        host_ip: Some(input.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: input.host_ip.to_string(),
        }]),
        pod_ip,
        pod_ips,
        start_time: old.and_then(|s| s.start_time.clone()).or(Some(now)),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        observed_generation: input.pod.metadata.generation,
        // The scheduler's nominated node is kept as it was. The QoS class
        // (which the API server sets in Kubernetes) follows from the spec.
        nominated_node_name: old.and_then(|s| s.nominated_node_name.clone()),
        qos_class: input
            .pod
            .spec
            .as_ref()
            .map(|s| qos_class(s).as_str().to_string()),
        ..Default::default()
    }
}

/// Whether a container's current state is a successful exit.
fn completed(s: &ContainerStatus) -> bool {
    s.state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// The kubelet's `getPhase`: a pod whose init containers have not all
/// completed is Pending, or Failed once one failed under `Never`. A
/// sidecar (named in `sidecars`) counts as running while it runs, as
/// pending until it started, and not at all once it stopped.
pub fn phase(
    policy: RestartPolicy,
    statuses: &[ContainerStatus],
    spec_count: usize,
    init_statuses: &[ContainerStatus],
    sidecars: &[&str],
) -> String {
    let mut pending_init = 0;
    let mut failed_init = 0;
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in init_statuses {
        let state = s.state.clone().unwrap_or_default();
        if sidecars.contains(&s.name.as_str()) {
            let stopped_before = s
                .last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some());
            if state.running.is_some() {
                running += 1;
                if s.started != Some(true) {
                    pending_init += 1;
                }
            } else if state.waiting.is_some() && !stopped_before {
                pending_init += 1;
                waiting += 1;
            }
            continue;
        }
        let last_failed = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0);
        if state.running.is_some() {
            pending_init += 1;
        } else if let Some(t) = &state.terminated {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if last_failed {
            failed_init += 1;
        } else {
            pending_init += 1;
        }
    }
    if failed_init > 0 && policy == RestartPolicy::Never {
        return "Failed".to_string();
    }
    let app_started = statuses.iter().any(|s| {
        let st = s.state.clone().unwrap_or_default();
        st.running.is_some() || st.terminated.is_some()
    });
    if (pending_init > 0 || failed_init > 0) && !app_started {
        return "Pending".to_string();
    }
    let unknown = spec_count.saturating_sub(statuses.len());
    for s in statuses {
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let phase = if waiting > 0 {
        "Pending"
    } else if running > 0 && unknown == 0 {
        "Running"
    } else if running == 0 && stopped > 0 && unknown == 0 {
        if policy == RestartPolicy::Always {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == RestartPolicy::Never {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    };
    phase.to_string()
}

fn owned_conditions(
    statuses: &[ContainerStatus],
    init_statuses: &[ContainerStatus],
    sidecars: &[&str],
    phase: &str,
    sandbox_ready: bool,
    old: &[PodCondition],
    now: &Time,
) -> Vec<PodCondition> {
    let terminal_reason = match phase {
        "Succeeded" => Some("PodCompleted"),
        "Failed" => Some("PodFailed"),
        _ => None,
    };
    // Sidecars' readiness counts with the app containers'.
    let is_sidecar = |s: &&ContainerStatus| sidecars.contains(&s.name.as_str());
    let unready: Vec<&str> = init_statuses
        .iter()
        .filter(is_sidecar)
        .chain(statuses)
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let (ready, reason, message) = match terminal_reason {
        Some(reason) => (false, Some(reason.to_string()), None),
        None if unready.is_empty() => (true, None, None),
        None => (
            false,
            Some("ContainersNotReady".to_string()),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        ),
    };
    // A sidecar is done initializing once it has started.
    let incomplete: Vec<&str> = init_statuses
        .iter()
        .filter(|s| {
            if is_sidecar(s) {
                s.started != Some(true)
            } else {
                !completed(s)
            }
        })
        .map(|s| s.name.as_str())
        .collect();
    let (initialized, initialized_reason, initialized_message) = if phase == "Succeeded" {
        (true, Some("PodCompleted".to_string()), None)
    } else if incomplete.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotInitialized".to_string()),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    };
    vec![
        condition(
            old,
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            old,
            "Initialized",
            initialized,
            initialized_reason,
            initialized_message,
            now,
        ),
        condition(old, "Ready", ready, reason.clone(), message.clone(), now),
        condition(old, "ContainersReady", ready, reason, message, now),
    ]
}

/// A condition whose transition time moves only when its status does.
fn condition(
    old: &[PodCondition],
    type_: &str,
    status: bool,
    reason: Option<String>,
    message: Option<String>,
    now: &Time,
) -> PodCondition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.clone()));
    PodCondition {
        type_: type_.to_string(),
        status,
        reason,
        message,
        last_transition_time,
        ..Default::default()
    }
}

fn container_status(
    name: &str,
    image: String,
    instances: &[&ContainerInstance],
    plan: &ContainerPlan,
    input: StatusInput<'_>,
) -> ContainerStatus {
    let latest = instances.first().copied();
    let previous = instances.get(1).copied();
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    };
    let pull_failure = input.memory.pull_failures.get(name);
    let run_error = input.memory.run_errors.get(name);
    let config_error = input.memory.config_errors.get(name);
    let post_start_error = input.memory.post_start_errors.get(name);

    let (state, last_state) = match (plan, latest) {
        (ContainerPlan::CrashLoopBackOff { backoff, .. }, Some(latest)) => (
            waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {} restarting failed container={name} pod={}",
                    go_duration(*backoff),
                    input.desired.display()
                )),
            ),
            Some(terminated(latest)),
        ),
        (ContainerPlan::ImagePullBackOff { .. } | ContainerPlan::Start { .. }, _)
            if pull_failure.is_some() =>
        {
            let failure = pull_failure.map(|f| (f.reason(input.now), f.status_message(input.now)));
            let (reason, message) = failure.unwrap_or(("ErrImagePull", String::new()));
            (
                waiting(reason, Some(message)),
                latest.filter(|l| l.has_exited()).map(terminated),
            )
        }
        (ContainerPlan::Start { .. }, None) if input.memory.volume_error.is_some() => (
            waiting("ContainerCreating", input.memory.volume_error.clone()),
            None,
        ),
        (ContainerPlan::Start { .. }, _) if config_error.is_some() => (
            waiting("CreateContainerConfigError", config_error.cloned()),
            latest.filter(|l| l.has_exited()).map(terminated),
        ),
        (ContainerPlan::Start { .. }, _) if post_start_error.is_some() => (
            waiting("PostStartHookError", post_start_error.cloned()),
            latest.filter(|l| l.has_exited()).map(terminated),
        ),
        (ContainerPlan::Start { .. } | ContainerPlan::Resume { .. }, _) if run_error.is_some() => (
            waiting("RunContainerError", run_error.cloned()),
            latest.filter(|l| l.has_exited()).map(terminated),
        ),
        (ContainerPlan::Initializing, _) => (
            waiting("PodInitializing", None),
            latest.filter(|l| l.has_exited()).map(terminated),
        ),
        (_, None) => (waiting("ContainerCreating", None), None),
        (_, Some(latest)) => match latest.state {
            InstanceState::Running => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: to_time(latest.started_at),
                    }),
                    ..Default::default()
                },
                previous.map(terminated),
            ),
            InstanceState::Created => {
                (waiting("ContainerCreating", None), previous.map(terminated))
            }
            InstanceState::Exited | InstanceState::Unknown => {
                (terminated(latest), previous.map(terminated))
            }
        },
    };
    let running = state.running.is_some();
    // Probes gate `started` and `ready`; without them running is enough.
    let probes = input
        .desired
        .containers
        .iter()
        .chain(&input.desired.init_containers)
        .find(|c| c.name == name)
        .map(|c| &c.probes);
    let found = latest.and_then(|l| {
        input
            .memory
            .probes
            .get(name)
            .filter(|p| p.container_id == l.id)
    });
    let started =
        running && (probes.is_none_or(|p| p.startup.is_none()) || found.is_some_and(|p| p.started));
    let ready =
        started && (probes.is_none_or(|p| p.readiness.is_none()) || found.is_some_and(|p| p.ready));
    ContainerStatus {
        name: name.to_string(),
        image,
        image_id: latest.map(|l| l.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|l| format!("containerd://{}", l.id)),
        ready,
        started: Some(started),
        restart_count: latest.map_or(0, |l| i32::try_from(l.restart_count).unwrap_or(i32::MAX)),
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..Default::default()
    }
}

/// The terminated state of an instance (also for one the runtime lost).
fn terminated(c: &ContainerInstance) -> ContainerState {
    let reason = if !c.reason.is_empty() {
        c.reason.clone()
    } else if c.state == InstanceState::Unknown {
        "Unknown".to_string()
    } else if c.exit_code == 0 {
        "Completed".to_string()
    } else {
        "Error".to_string()
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: Some(format!("containerd://{}", c.id)),
            exit_code: c.exit_code,
            reason: Some(reason),
            message: Some(c.message.clone()).filter(|m| !m.is_empty()),
            started_at: to_time(c.started_at),
            finished_at: to_time(c.finished_at),
            signal: None,
        }),
        ..Default::default()
    }
}

/// A CRI timestamp (ns) as an API time, at the second precision it is
/// stored with, so a freshly built status compares equal to a stored one.
pub fn to_time(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    Timestamp::from_second(ns / 1_000_000_000).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::decide::{decide, PullFailure};
    use crate::pod::observe::fixtures::*;
    use crate::probe::ProbeStatus;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    const S: i64 = 1_000_000_000;

    fn pod(policy: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("u".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers: vec![Container {
                    name: "a".into(),
                    image: Some("img:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn build(
        p: &Pod,
        obs: &Observed,
        mem: &Memory,
        now: i64,
        old: Option<&PodStatus>,
    ) -> PodStatus {
        let desired = DesiredPod::from_pod(p).unwrap();
        let decision = decide(Some(&desired), obs, mem, now * S);
        pod_status(
            old,
            StatusInput {
                pod: p,
                desired: &desired,
                observed: obs,
                decision: &decision,
                memory: mem,
                host_ip: "192.0.2.1",
                now: now * S,
            },
        )
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn a_pending_pod_waits_in_container_creating() {
        let p = pod("Always");
        let s = build(&p, &Observed::default(), &Memory::default(), 100, None);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [a]")
        );
        assert_eq!(s.start_time, to_time(100 * S));
        assert_eq!(s.host_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn a_failed_post_start_hook_is_the_waiting_reason() {
        let p = pod("Always");
        let o = Observed {
            sandboxes: vec![sandbox("s0", 0, true)],
            containers: vec![exited("a", 0, "s0", 10, 1, 137)],
        };
        let mut mem = Memory::default();
        mem.post_start_errors
            .insert("a".into(), "command [\"false\"] exited with 1".into());
        let s = build(&p, &o, &mem, 12, None);
        let w = s.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .clone()
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("PostStartHookError"));
        assert_eq!(
            w.message.as_deref(),
            Some("command [\"false\"] exited with 1")
        );
    }

    #[test]
    fn probes_gate_started_and_ready() {
        let mut p = pod("Always");
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[0].startup_probe = Some(
                serde_json::from_value(serde_json::json!({"tcpSocket": {"port": 80}})).unwrap(),
            );
            spec.containers[0].readiness_probe = Some(
                serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap(),
            );
        }
        let o = Observed {
            sandboxes: vec![sandbox("s0", 0, true)],
            containers: vec![running("a", 0, "s0", 1)],
        };
        let flags = |mem: &Memory| {
            let s = build(&p, &o, mem, 5, None);
            let c = &s.container_statuses.as_ref().unwrap()[0];
            (c.started, c.ready, cond(&s, "Ready").status.clone())
        };
        let mut mem = Memory::default();
        assert_eq!(flags(&mem), (Some(false), false, "False".into()));
        let mut found = ProbeStatus {
            container_id: "a-0".into(),
            started: true,
            ready: false,
            failed: None,
        };
        mem.probes.insert("a".into(), found.clone());
        assert_eq!(flags(&mem), (Some(true), false, "False".into()));
        found.ready = true;
        mem.probes.insert("a".into(), found.clone());
        assert_eq!(flags(&mem), (Some(true), true, "True".into()));
        // Results about another instance count for nothing.
        found.container_id = "a-9".into();
        mem.probes.insert("a".into(), found);
        assert_eq!(flags(&mem), (Some(false), false, "False".into()));
    }

    #[test]
    fn a_running_pod_is_ready_and_stable() {
        let p = pod("Always");
        let obs = Observed {
            sandboxes: vec![sandbox("s0", 0, true)],
            containers: vec![exited("a", 0, "s0", 10, 1, 1), running("a", 1, "s0", 12)],
        };
        let s = build(&p, &obs, &Memory::default(), 20, None);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.2"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert!(c.ready);
        assert_eq!(c.restart_count, 1);
        assert_eq!(c.container_id.as_deref(), Some("containerd://a-1"));
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at,
            to_time(12 * S)
        );
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(cond(&s, "Ready").status, "True");
        // Later passes produce the same status: nothing to write.
        let again = build(&p, &obs, &Memory::default(), 90, Some(&s));
        assert_eq!(again, s);
    }

    #[test]
    fn crash_loop_waits_with_the_kubelet_message() {
        let p = pod("Always");
        let mut second = exited("a", 1, "s0", 12, 1, 1);
        second.backoff = Duration::from_secs(10);
        let obs = Observed {
            sandboxes: vec![sandbox("s0", 0, true)],
            containers: vec![exited("a", 0, "s0", 10, 1, 1), second],
        };
        let s = build(&p, &obs, &Memory::default(), 15, None);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let c = &s.container_statuses.as_ref().unwrap()[0];
        let w = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(
            w.message.as_deref(),
            Some("back-off 10s restarting failed container=a pod=web_default(u)")
        );
        assert_eq!(c.restart_count, 1);
        assert_eq!(
            c.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .finished_at,
            to_time(13 * S)
        );
    }

    #[test]
    fn completed_pods_are_terminal() {
        let obs = |code| Observed {
            sandboxes: vec![sandbox("s0", 0, false)],
            containers: vec![exited("a", 0, "s0", 10, 1, code)],
        };
        let s = build(&pod("Never"), &obs(0), &Memory::default(), 20, None);
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(
            cond(&s, "Initialized").reason.as_deref(),
            Some("PodCompleted")
        );
        let s = build(&pod("Never"), &obs(2), &Memory::default(), 20, None);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let s = build(&pod("OnFailure"), &obs(0), &Memory::default(), 20, None);
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        // A terminal phase never changes, even if a container shows up.
        let mut old = s.clone();
        old.pod_ip = Some("10.0.0.9".into());
        let s = build(
            &pod("OnFailure"),
            &Observed::default(),
            &Memory::default(),
            30,
            Some(&old),
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.9"));
    }

    #[test]
    fn pull_errors_show_then_back_off() {
        let p = pod("Always");
        let obs = Observed {
            sandboxes: vec![sandbox("s0", 0, true)],
            containers: vec![],
        };
        let mut mem = Memory::default();
        mem.pull_failures.insert(
            "a".into(),
            PullFailure::after(None, "img:1", "boom".into(), false, 100 * S),
        );
        let reason = |now| {
            let s = build(&p, &obs, &mem, now, None);
            let c = s.container_statuses.unwrap()[0].clone();
            let w = c.state.unwrap().waiting.unwrap();
            (w.reason.unwrap(), w.message.unwrap(), s.phase.unwrap())
        };
        assert_eq!(
            reason(100),
            ("ErrImagePull".into(), "boom".into(), "Pending".into())
        );
        assert_eq!(reason(105).0, "ImagePullBackOff");
    }

    #[test]
    fn transition_times_move_only_with_status() {
        let old = vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: to_time(5 * S),
            ..Default::default()
        }];
        let now = to_time(50 * S).unwrap();
        assert_eq!(
            condition(&old, "Ready", true, None, None, &now).last_transition_time,
            to_time(5 * S)
        );
        assert_eq!(
            condition(&old, "Ready", false, None, None, &now).last_transition_time,
            Some(now)
        );
    }

    #[test]
    fn phase_follows_get_phase() {
        let term = |code| ContainerStatus {
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let run = ContainerStatus {
            state: Some(ContainerState {
                running: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            phase(RestartPolicy::Never, &[run.clone(), term(0)], 2, &[], &[]),
            "Running"
        );
        assert_eq!(
            phase(RestartPolicy::Never, &[term(1), term(0)], 2, &[], &[]),
            "Failed"
        );
        assert_eq!(
            phase(RestartPolicy::OnFailure, &[term(1)], 1, &[], &[]),
            "Running"
        );
        assert_eq!(
            phase(RestartPolicy::Always, &[term(0)], 1, &[], &[]),
            "Running"
        );
        assert_eq!(phase(RestartPolicy::Always, &[run], 2, &[], &[]), "Pending");
    }

    #[test]
    fn sidecars_count_while_they_run_and_not_once_stopped() {
        let state = |running: bool, code: i32| ContainerState {
            running: running.then(Default::default),
            terminated: (!running).then(|| ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = |name: &str, running: bool, code: i32, started: bool| ContainerStatus {
            name: name.into(),
            state: Some(state(running, code)),
            started: Some(started),
            ..Default::default()
        };
        let never = RestartPolicy::Never;
        let sidecars = ["proxy"];
        let proxy_up = status("proxy", true, 0, true);
        let proxy_starting = status("proxy", true, 0, false);
        let proxy_killed = status("proxy", false, 137, false);
        let app_running = status("app", true, 0, true);
        let app_done = status("app", false, 0, false);
        // Not started yet: the pod is still initializing.
        assert_eq!(
            phase(
                never,
                &[],
                1,
                std::slice::from_ref(&proxy_starting),
                &sidecars
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                never,
                &[app_running],
                1,
                std::slice::from_ref(&proxy_up),
                &sidecars
            ),
            "Running"
        );
        // The app finished but the sidecar still runs: Running; once it
        // is stopped (killed, so not exit 0), it does not count.
        assert_eq!(
            phase(
                never,
                std::slice::from_ref(&app_done),
                1,
                std::slice::from_ref(&proxy_up),
                &sidecars
            ),
            "Running"
        );
        assert_eq!(
            phase(
                never,
                std::slice::from_ref(&app_done),
                1,
                std::slice::from_ref(&proxy_killed),
                &sidecars
            ),
            "Succeeded"
        );
        // Without the sidecar rule, the killed one would fail the pod.
        assert_eq!(phase(never, &[app_done], 1, &[proxy_killed], &[]), "Failed");

        // Initialized once the sidecar started; its readiness is the pod's.
        let now = Time(Timestamp::UNIX_EPOCH);
        let mut unready = proxy_up.clone();
        unready.ready = false;
        let conditions = owned_conditions(&[], &[unready], &sidecars, "Running", true, &[], &now);
        let by_type = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.message.clone()))
        };
        assert_eq!(by_type("Initialized"), Some(("True".into(), None)));
        assert_eq!(
            by_type("Ready"),
            Some((
                "False".into(),
                Some("containers with unready status: [proxy]".into())
            ))
        );
        let conditions = owned_conditions(
            &[],
            &[proxy_starting],
            &sidecars,
            "Pending",
            true,
            &[],
            &now,
        );
        assert!(conditions
            .iter()
            .any(|c| c.type_ == "Initialized" && c.status == "False"));
    }

    use std::time::Duration;
}
