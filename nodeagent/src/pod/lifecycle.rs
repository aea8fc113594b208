//! Container lifecycle hooks, as the kubelet runs them: `postStart` right
//! after the container starts (a failure kills it, and the restart policy
//! decides what follows), `preStop` before the container is sent SIGTERM,
//! within the grace period (what the hook leaves of it is what the
//! container gets after SIGTERM, at least two seconds). Hooks use the
//! probe handlers: `exec` in the container, `httpGet` and `tcpSocket` to
//! the pod, and `sleep`.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use crate::cri::Cri;
use crate::probe::handlers::{attempt, Target};
use crate::probe::{ContainerProbes, Handler};

/// The least a container gets after its preStop hook, as the kubelet
/// grants it (`minimumGracePeriodInSeconds`).
pub const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// After start.
    PostStart,
    /// Before stop.
    PreStop,
}

impl Hook {
    /// The kubelet's event reason for a failure.
    pub fn failure_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }
}

/// The action of `container`'s `hook`, if it has one commitd can run.
pub fn handler(container: &Container, hook: Hook) -> Option<Handler> {
    let lifecycle = container.lifecycle.as_ref()?;
    let h = match hook {
        Hook::PostStart => lifecycle.post_start.as_ref()?,
        Hook::PreStop => lifecycle.pre_stop.as_ref()?,
    };
    Handler::from_lifecycle(h)
}

/// Runs `handler` for the container instance `id` of `container`, bounded
/// by `limit`.
pub async fn run(
    cri: &Cri,
    container: &Container,
    id: &str,
    pod_ip: Option<IpAddr>,
    handler: &Handler,
    limit: Duration,
) -> Result<(), String> {
    let ports = ContainerProbes::of(container).ports;
    let target = Target {
        cri,
        container_id: id,
        pod_ip,
        ports: &ports,
    };
    attempt(handler, target, limit).await
}

/// What is left of `grace` after a hook that took `spent`, but never less
/// than [`MIN_GRACE_AFTER_HOOK`].
pub fn grace_after_hook(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(MIN_GRACE_AFTER_HOOK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_read_from_the_container() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i",
            "lifecycle": {
                "postStart": {"exec": {"command": ["touch", "/started"]}},
                "preStop": {"sleep": {"seconds": 3}}
            }
        }))
        .expect("container");
        assert_eq!(
            handler(&c, Hook::PostStart),
            Some(Handler::Exec {
                command: vec!["touch".into(), "/started".into()]
            })
        );
        assert_eq!(
            handler(&c, Hook::PreStop),
            Some(Handler::Sleep {
                duration: Duration::from_secs(3)
            })
        );
        let bare: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "image": "i"})).expect("c");
        assert_eq!(handler(&bare, Hook::PreStop), None);
        assert_eq!(Hook::PreStop.failure_reason(), "FailedPreStopHook");
    }

    #[test]
    fn the_container_keeps_some_grace_after_its_hook() {
        let s = Duration::from_secs;
        assert_eq!(grace_after_hook(s(30), s(10)), s(20));
        assert_eq!(grace_after_hook(s(30), s(29)), MIN_GRACE_AFTER_HOOK);
        assert_eq!(grace_after_hook(s(5), s(60)), MIN_GRACE_AFTER_HOOK);
    }
}
