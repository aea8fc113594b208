//! The pod lifecycle, kubelet-style, in small pieces:
//!
//! - [`observe`]: what the runtime reports for one pod, found by labels;
//! - [`desired`]: what the Pod object asks for, reduced to what decisions need;
//! - [`decide`]: the pure state machine — given both, the one next step;
//! - [`backoff`]: Kubernetes' crash-loop back-off, derived from CRI alone;
//! - [`lifecycle`]: postStart and preStop hooks;
//! - [`spec`]: the CRI configs built from a Pod;
//! - [`resources`]: requests and limits as CPU shares, quota and memory
//!   limit, and the pod's QoS class;
//! - [`security`]: the pod's and containers' `securityContext` over CRI;
//! - [`service_links`]: the pod's DNS config and service environment;
//! - [`volumes`]: emptyDir, hostPath and projected volumes on the node;
//! - [`worker`]: the task that runs one pod: observe, decide, report, act.
//!
//! Nothing here trusts memory over the runtime: every pass starts from a
//! fresh CRI listing, so a restarted agent picks up exactly where the last
//! one stopped.

pub mod backoff;
pub mod decide;
pub mod desired;
pub mod lifecycle;
pub mod observe;
pub mod resources;
pub mod security;
pub mod service_links;
pub mod spec;
pub mod termination;
pub mod volumes;
pub mod worker;

/// Label on every sandbox and container: the Pod's uid. The one identity
/// that survives agent restarts and never collides across re-created pods.
pub const LABEL_POD_UID: &str = "commitd.io/pod-uid";
/// Label with the Pod's name, for people reading `crictl ps`.
pub const LABEL_POD_NAME: &str = "commitd.io/pod-name";
/// Label with the Pod's namespace, for people reading `crictl ps`.
pub const LABEL_POD_NAMESPACE: &str = "commitd.io/pod-namespace";
/// Label naming the node whose agent owns the object, so a sweep can tell
/// its own leftovers from anything else on the same runtime.
pub const LABEL_NODE: &str = "commitd.io/node";
/// Label on containers: the container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "commitd.io/container-name";
/// Annotation on containers: how many times this container had been
/// restarted when this instance was created (kubelet's
/// `io.kubernetes.container.restartCount`).
pub const ANNOTATION_RESTART_COUNT: &str = "commitd.io/restart-count";
/// Annotation on containers: hash of the container spec the instance was
/// created from; a mismatch means the spec changed and the instance is stale.
pub const ANNOTATION_SPEC_HASH: &str = "commitd.io/spec-hash";
/// Annotation on containers: the crash-loop back-off (seconds) armed when
/// this instance was created, so back-off survives agent restarts.
pub const ANNOTATION_BACKOFF: &str = "commitd.io/backoff-seconds";

/// The `cgroup_parent` of a pod's sandbox and containers. Ours alone, so
/// it can be removed entirely when the pod goes.
pub fn cgroup_parent(uid: &str) -> String {
    format!("/commitd/pod{}", sanitize(uid))
}

/// Name of the pod's log directory under `<state_dir>/pods/`, as the
/// kubelet names it (`<namespace>_<name>_<uid>`).
pub fn log_dir_name(namespace: &str, name: &str, uid: &str) -> String {
    format!(
        "{}_{}_{}",
        sanitize(namespace),
        sanitize(name),
        sanitize(uid)
    )
}

/// Keeps only characters that are safe in a path component; uids, names
/// and namespaces are validated upstream, this is defence in depth against
/// a `..` or `/` in outside input.
pub(crate) fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "-".to_string()
    } else {
        cleaned
    }
}

/// Nanoseconds since the epoch, the unit CRI uses for every timestamp.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_escape() {
        assert_eq!(cgroup_parent("abc-123"), "/commitd/podabc-123");
        assert_eq!(cgroup_parent("../../x"), "/commitd/pod..-..-x");
        assert_eq!(log_dir_name("default", "web", "u-1"), "default_web_u-1");
        assert_eq!(log_dir_name("..", "a/b", ""), "-_a-b_-");
    }
}
