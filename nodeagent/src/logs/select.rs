//! Which log file of a container to read. The agent keeps one file per
//! container instance, `<pod log dir>/<container>/<restartCount>.log`
//! (see [`crate::pod::log_dir_name`]); the container's status says which
//! instance is current, the files say which ones still have logs. The
//! choice, and why there is nothing to show, follow the kubelet.

use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::LogsError;

/// The status of a container of the pod, app or init container alike (the
/// kubelet serves the logs of both).
pub fn container_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|s| s.name == container)
}

/// Whether the pod's spec has this container, app or init.
pub fn has_container(pod: &Pod, container: &str) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == container)
    })
}

/// The `N` of every `N.log` in the container's directory under the pod's
/// log directory, sorted; `None` when the pod has no log directory here.
pub async fn list_instances(
    log_dir: &Path,
    container: &str,
) -> Result<Option<Vec<u32>>, LogsError> {
    let read_error = |path: PathBuf| move |source: io::Error| LogsError::Read { path, source };
    match tokio::fs::metadata(log_dir).await {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(log_dir.to_path_buf())(e)),
    }
    let dir = log_dir.join(container);
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => return Err(read_error(dir)(e)),
    };
    let mut found = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(read_error(dir.clone()))?
    {
        if let Some(n) = entry.file_name().to_str().and_then(instance_of) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(Some(found))
}

/// `3` for `3.log`; `None` for any other file name.
pub fn instance_of(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The instance the status calls current: its restart count.
pub fn restart_count(s: &ContainerStatus) -> u32 {
    u32::try_from(s.restart_count).unwrap_or(0)
}

/// Whether the status says the current instance runs: only then is
/// there more output to follow.
pub fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}

fn last_terminated(s: &ContainerStatus) -> bool {
    s.last_state
        .as_ref()
        .is_some_and(|st| st.terminated.is_some())
}

/// Whether an instance of the container has run at all.
fn ever_ran(s: &ContainerStatus) -> bool {
    let state = s.state.as_ref();
    state.is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        || last_terminated(s)
        || s.restart_count > 0
}

fn waiting_reason(s: Option<&ContainerStatus>) -> Option<String> {
    s.and_then(|s| s.state.as_ref())
        .and_then(|st| st.waiting.as_ref())
        .and_then(|w| w.reason.clone())
        .filter(|r| !r.is_empty())
}

/// Why no log can be shown; each says so in the words of the kubelet and
/// the API server.
#[derive(Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The container has not started (with the status's reason).
    Waiting(String),
    /// `previous`, but there is no earlier instance's log.
    PreviousNotFound,
    /// The container ran, yet the pod has no log directory on this node.
    NoLogDirectory,
    /// The container ran, yet its log file is gone.
    NoFile,
}

impl Unavailable {
    /// The message a client shows (kubectl prefixes it with
    /// `Error from server (…):`).
    pub fn message(&self, pod: &str, container: &str, node: &str) -> String {
        match self {
            Unavailable::Waiting(reason) => {
                format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")
            }
            Unavailable::PreviousNotFound => {
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
            }
            Unavailable::NoLogDirectory => {
                format!("pod \"{pod}\" has no log directory on node \"{node}\"")
            }
            Unavailable::NoFile => format!(
                "container \"{container}\" in pod \"{pod}\" has no log file on node \"{node}\""
            ),
        }
    }
}

/// Which instance's `N.log` to read, from the container's status and the
/// instances whose logs exist (`None`: the pod has no log directory
/// here). The current instance is `restartCount`; while it has no log
/// yet, the last one that ran (as the kubelet shows the last terminated
/// container). The previous is `restartCount - 1`, or the newest below
/// the current one when that is gone.
pub fn select_instance(
    status: Option<&ContainerStatus>,
    previous: bool,
    instances: Option<&[u32]>,
) -> Result<u32, Unavailable> {
    let Some(instances) = instances else {
        return Err(if status.is_some_and(ever_ran) {
            Unavailable::NoLogDirectory
        } else if previous {
            Unavailable::PreviousNotFound
        } else {
            Unavailable::Waiting(waiting_reason(status).unwrap_or_else(creating))
        });
    };
    let newest = instances.iter().copied().max();
    let below = |n: u32| instances.iter().copied().filter(|i| *i < n).max();
    let Some(s) = status else {
        // Not reported yet: the newest log there is.
        return match (previous, newest) {
            (false, Some(n)) => Ok(n),
            (false, None) => Err(Unavailable::Waiting(creating())),
            (true, Some(n)) => below(n).ok_or(Unavailable::PreviousNotFound),
            (true, None) => Err(Unavailable::PreviousNotFound),
        };
    };
    let current = restart_count(s);
    if previous {
        return below(current).ok_or(Unavailable::PreviousNotFound);
    }
    if instances.contains(&current) {
        return Ok(current);
    }
    if last_terminated(s) {
        if let Some(n) = below(current) {
            return Ok(n);
        }
    }
    if let Some(reason) = waiting_reason(Some(s)) {
        return Err(Unavailable::Waiting(reason));
    }
    if ever_ran(s) {
        Err(Unavailable::NoFile)
    } else {
        Err(Unavailable::Waiting(creating()))
    }
}

fn creating() -> String {
    "ContainerCreating".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, PodSpec, PodStatus,
    };

    #[test]
    fn log_files_are_named_by_instance() {
        assert_eq!(instance_of("0.log"), Some(0));
        assert_eq!(instance_of("12.log"), Some(12));
        assert_eq!(instance_of(".log"), None);
        assert_eq!(instance_of("1.log.gz"), None);
        assert_eq!(instance_of("+1.log"), None);
        assert_eq!(instance_of("a.log"), None);
    }

    #[tokio::test]
    async fn instances_are_listed_from_the_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log_dir = tmp.path().join("ns_web_uid");
        assert_eq!(list_instances(&log_dir, "app").await.ok(), Some(None));
        std::fs::create_dir_all(log_dir.join("app")).expect("mkdir");
        assert_eq!(
            list_instances(&log_dir, "other").await.ok(),
            Some(Some(vec![]))
        );
        for f in ["2.log", "0.log", "10.log", "x.log", "1.log.tmp"] {
            std::fs::write(log_dir.join("app").join(f), "").expect("write");
        }
        assert_eq!(
            list_instances(&log_dir, "app").await.ok(),
            Some(Some(vec![0, 2, 10]))
        );
    }

    fn status(
        restarts: i32,
        state: ContainerState,
        last: Option<ContainerState>,
    ) -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            restart_count: restarts,
            state: Some(state),
            last_state: last,
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..Default::default()
        }
    }

    fn terminated() -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..Default::default()
        }
    }

    #[test]
    fn init_containers_have_statuses_and_logs_too() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    ..Default::default()
                }],
                init_containers: Some(vec![Container {
                    name: "setup".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                init_container_statuses: Some(vec![ContainerStatus {
                    name: "setup".into(),
                    restart_count: 2,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(has_container(&pod, "app") && has_container(&pod, "setup"));
        assert!(!has_container(&pod, "nope"));
        assert_eq!(container_status(&pod, "setup").map(restart_count), Some(2));
        assert_eq!(container_status(&pod, "app"), None);
    }

    #[test]
    fn the_current_instance_is_the_restart_count() {
        let s = status(2, running(), Some(terminated()));
        assert_eq!(select_instance(Some(&s), false, Some(&[1, 2])), Ok(2));
        assert_eq!(select_instance(Some(&s), true, Some(&[1, 2])), Ok(1));
        // The previous one's log is gone: the newest below the current.
        assert_eq!(select_instance(Some(&s), true, Some(&[0, 2])), Ok(0));
        assert_eq!(
            select_instance(Some(&s), true, Some(&[2])),
            Err(Unavailable::PreviousNotFound)
        );
        // Crash-looping: the instance that last ran, and the one before.
        let s = status(3, waiting("CrashLoopBackOff"), Some(terminated()));
        assert_eq!(select_instance(Some(&s), false, Some(&[2, 3])), Ok(3));
        assert_eq!(select_instance(Some(&s), true, Some(&[2, 3])), Ok(2));
        // The next instance is being created: the last one that ran.
        let s = status(4, waiting("ContainerCreating"), Some(terminated()));
        assert_eq!(select_instance(Some(&s), false, Some(&[2, 3])), Ok(3));
    }

    #[test]
    fn nothing_ran_yet_says_why() {
        let s = status(0, waiting("ErrImagePull"), None);
        assert_eq!(
            select_instance(Some(&s), false, Some(&[])),
            Err(Unavailable::Waiting("ErrImagePull".into()))
        );
        assert_eq!(
            select_instance(Some(&s), false, None),
            Err(Unavailable::Waiting("ErrImagePull".into()))
        );
        assert_eq!(
            select_instance(Some(&s), true, None),
            Err(Unavailable::PreviousNotFound)
        );
        assert_eq!(
            select_instance(None, false, None),
            Err(Unavailable::Waiting("ContainerCreating".into()))
        );
        let s = status(0, running(), None);
        assert_eq!(
            select_instance(Some(&s), true, Some(&[0])),
            Err(Unavailable::PreviousNotFound)
        );
        // Not reported yet, but a log exists: the newest.
        assert_eq!(select_instance(None, false, Some(&[0, 1])), Ok(1));
        assert_eq!(select_instance(None, true, Some(&[0, 1])), Ok(0));
        assert_eq!(
            select_instance(None, false, Some(&[])),
            Err(Unavailable::Waiting("ContainerCreating".into()))
        );
    }

    #[test]
    fn a_container_that_ran_without_logs_here_is_named_as_such() {
        let s = status(0, running(), None);
        assert_eq!(
            select_instance(Some(&s), false, None),
            Err(Unavailable::NoLogDirectory)
        );
        assert_eq!(
            select_instance(Some(&s), false, Some(&[])),
            Err(Unavailable::NoFile)
        );
        let s = status(1, waiting("CrashLoopBackOff"), Some(terminated()));
        assert_eq!(
            select_instance(Some(&s), true, None),
            Err(Unavailable::NoLogDirectory)
        );
        let msg = Unavailable::NoLogDirectory.message("web", "app", "n2");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("node \"n2\"") && msg.contains("web"), "{msg}");
        assert_eq!(
            Unavailable::Waiting("ContainerCreating".into()).message("web", "app", "n"),
            "container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            Unavailable::PreviousNotFound.message("web", "app", "n"),
            "previous terminated container \"app\" in pod \"web\" not found"
        );
    }
}
