//! When a pod is ready, and when it counts as available: ready for
//! `minReadySeconds`. The ReplicaSet, StatefulSet, DaemonSet and Job
//! controllers all count pods this way, as Kubernetes' `podutil` does.

use std::time::Duration;

use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The time the pod's `Ready` condition became `True` (`None` inside when
/// the condition has no time), if it is ready.
pub(crate) fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod's `Ready` condition is `True`.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod is available at `now`: `Ok(true)` available, `Ok(false)`
/// not ready, `Err(wait)` ready but available only after `wait` (a little
/// more, so a pass then sees it available).
pub(crate) fn availability(
    pod: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Result<bool, Duration> {
    let Some(since) = ready_since(pod) else {
        return Ok(false);
    };
    if min_ready_seconds <= 0 {
        return Ok(true);
    }
    let at = since.and_then(|t| {
        t.checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .ok()
    });
    match at {
        Some(at) if at > now => {
            Err(now.duration_until(at).unsigned_abs() + Duration::from_millis(100))
        }
        _ => Ok(true),
    }
}

/// Whether the pod is available at `now`.
pub(crate) fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    availability(pod, min_ready_seconds, now) == Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid time")
    }

    #[test]
    fn ready_pods_become_available_after_min_ready_seconds() {
        let not_ready: Pod = serde_json::from_value(json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}]}}))
        .expect("a pod");
        assert!(!is_ready(&not_ready));
        assert_eq!(availability(&not_ready, 0, t(0)), Ok(false));
        let ready: Pod = serde_json::from_value(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": Time(t(10))}]}}))
        .expect("a pod");
        assert_eq!(ready_since(&ready), Some(Some(t(10))));
        assert_eq!(availability(&ready, 0, t(10)), Ok(true));
        assert_eq!(
            availability(&ready, 5, t(12)),
            Err(Duration::from_millis(3_100))
        );
        assert!(is_available(&ready, 5, t(15)));
    }
}
