//! A thin, typed client over the CRI gRPC API of containerd.
//!
//! The pod worker speaks to the runtime only through [`Cri`]. Each method is
//! one CRI call: no retries, no caching, no policy. That keeps the lifecycle
//! decisions (when to retry, when to give up, what to report) in the pod
//! worker, where the state machine lives, and keeps this module easy to fake.
//!
//! The request and response types are the generated ones of `k8s-cri`,
//! re-exported as [`proto`] so callers build configs against exactly the
//! version this client was compiled with.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxState,
    PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated CRI v1 types, so callers need not name `k8s-cri` themselves
/// and cannot drift to another version of it.
pub use k8s_cri::v1 as proto;

/// The CRI API version we speak; containerd 1.6 answers `Version` with it.
const CRI_API_VERSION: &str = "v1";

/// Largest response accepted. Listing thousands of containers exceeds
/// tonic's 4 MiB default; the kubelet uses 16 MiB for the same reason.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why a CRI call failed, with enough context to put in a pod's status
/// message or a log line without further wrapping.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The runtime socket could not be reached at all (runtime not started
    /// yet, or wrong path); callers typically retry with back-off.
    #[error("cannot connect to the container runtime at {}: {source}", path.display())]
    Connect {
        /// The socket that was dialled.
        path: PathBuf,
        /// What the transport reported.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered a call with an error status.
    #[error("CRI {op} failed ({code:?}): {message}")]
    Call {
        /// The CRI method, e.g. `RunPodSandbox`.
        op: &'static str,
        /// The gRPC status code, so callers can tell "not found" from the rest.
        code: tonic::Code,
        /// The runtime's own message, verbatim.
        message: String,
    },
    /// The runtime answered, but without a field the CRI contract promises.
    #[error("CRI {op} returned a malformed response: {what}")]
    Malformed {
        /// The CRI method.
        op: &'static str,
        /// What was missing or unparsable.
        what: String,
    },
}

impl CriError {
    /// True when the runtime does not know the object; removal and status
    /// paths treat that as "already gone" rather than as a failure.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { code, .. } if *code == tonic::Code::NotFound)
    }

    fn call(op: &'static str, status: tonic::Status) -> Self {
        CriError::Call {
            op,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// A connection to one container runtime. Cheap to clone: all clones share
/// one HTTP/2 channel, which reconnects by itself if the runtime restarts.
#[derive(Clone, Debug)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

impl Cri {
    /// Dials the runtime's unix socket once. It does not retry: a node agent
    /// starting before containerd decides itself how long to wait.
    pub async fn connect(socket: &Path) -> Result<Cri, CriError> {
        let path = socket.to_path_buf();
        let dial = path.clone();
        // The URI is never used for unix sockets; any valid one will do.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let dial = dial.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(dial).await?;
                    Ok::<_, io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| CriError::Connect { path, source })?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            image: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// Asks the runtime who it is; doubles as the readiness probe of a
    /// freshly started containerd (the CRI plugin answers only once loaded).
    pub async fn version(&self) -> Result<VersionResponse, CriError> {
        let request = VersionRequest {
            version: CRI_API_VERSION.to_string(),
        };
        let response = self
            .runtime
            .clone()
            .version(request)
            .await
            .map_err(|s| CriError::call("Version", s))?;
        Ok(response.into_inner())
    }

    /// Pulls `image` and returns the runtime's reference to it (an image id),
    /// which is what `ContainerStatus.image_ref` will later report. The
    /// sandbox config lets the runtime pick per-pod settings (e.g. runtime
    /// handler); pass `None` for pulls outside a pod.
    pub async fn pull_image(
        &self,
        image: &str,
        sandbox_config: Option<&PodSandboxConfig>,
    ) -> Result<String, CriError> {
        let request = PullImageRequest {
            image: Some(image_spec(image)),
            auth: None,
            sandbox_config: sandbox_config.cloned(),
        };
        let response = self
            .image
            .clone()
            .pull_image(request)
            .await
            .map_err(|s| CriError::call("PullImage", s))?
            .into_inner();
        if response.image_ref.is_empty() {
            return Err(CriError::Malformed {
                op: "PullImage",
                what: format!("no image_ref for {image}"),
            });
        }
        Ok(response.image_ref)
    }

    /// Returns the runtime's id of `image` if it is already on the node, so
    /// the `IfNotPresent` pull policy can skip the registry entirely.
    pub async fn image_present(&self, image: &str) -> Result<Option<String>, CriError> {
        Ok(self
            .image_status(image)
            .await?
            .map(|i| i.id)
            .filter(|id| !id.is_empty()))
    }

    /// The runtime's record of `image`; `None` when it is not on the node
    /// (CRI reports "absent" as an empty response, not as NotFound).
    async fn image_status(&self, image: &str) -> Result<Option<proto::Image>, CriError> {
        let request = ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        let response = self
            .image
            .clone()
            .image_status(request)
            .await
            .map_err(|s| CriError::call("ImageStatus", s))?
            .into_inner();
        Ok(response.image)
    }

    /// The user `image` runs as unless told otherwise, as the runtime
    /// reports it (the kubelet's `getImageUser` asks the same); `None` when
    /// the image is not on the node.
    pub async fn image_user(&self, image: &str) -> Result<Option<ImageUser>, CriError> {
        Ok(self.image_status(image).await?.map(|i| ImageUser {
            uid: i.uid.map(|u| u.value),
            username: i.username,
        }))
    }

    /// Creates and starts the pod's sandbox (network namespace, pause
    /// process) and returns its id. `runtime_handler` selects a
    /// RuntimeClass; empty means the runtime's default.
    pub async fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriError> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: runtime_handler.to_string(),
        };
        let response = self
            .runtime
            .clone()
            .run_pod_sandbox(request)
            .await
            .map_err(|s| CriError::call("RunPodSandbox", s))?
            .into_inner();
        non_empty("RunPodSandbox", "pod_sandbox_id", response.pod_sandbox_id)
    }

    /// Stops every container of the sandbox and tears its network down;
    /// idempotent in containerd, so it is safe to repeat after a crash.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.runtime
            .clone()
            .stop_pod_sandbox(request)
            .await
            .map_err(|s| CriError::call("StopPodSandbox", s))?;
        Ok(())
    }

    /// Deletes a stopped sandbox and its containers. The pod's cgroup
    /// directories survive it: follow with [`cgroup_cleanup`].
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.runtime
            .clone()
            .remove_pod_sandbox(request)
            .await
            .map_err(|s| CriError::call("RemovePodSandbox", s))?;
        Ok(())
    }

    /// Lists the sandboxes whose labels include all of `labels` (an empty map
    /// lists all). The node agent labels what it creates, so after a restart
    /// it can find its pods again and leave anything else alone.
    pub async fn list_pod_sandboxes(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<PodSandbox>, CriError> {
        let request = ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: to_hash_map(labels),
                ..Default::default()
            }),
        };
        let response = self
            .runtime
            .clone()
            .list_pod_sandbox(request)
            .await
            .map_err(|s| CriError::call("ListPodSandbox", s))?;
        Ok(response.into_inner().items)
    }

    /// Returns the sandbox's state and its primary IP (None until the network
    /// is set up, or for host-network pods) — the two facts pod status needs.
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<(PodSandboxState, Option<IpAddr>), CriError> {
        const OP: &str = "PodSandboxStatus";
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        let status = self
            .runtime
            .clone()
            .pod_sandbox_status(request)
            .await
            .map_err(|s| CriError::call(OP, s))?
            .into_inner()
            .status
            .ok_or_else(|| CriError::Malformed {
                op: OP,
                what: format!("no status for sandbox {id}"),
            })?;
        let state = PodSandboxState::try_from(status.state).map_err(|_| CriError::Malformed {
            op: OP,
            what: format!("unknown sandbox state {}", status.state),
        })?;
        let ip = match status.network.map(|n| n.ip).filter(|ip| !ip.is_empty()) {
            None => None,
            Some(ip) => Some(ip.parse::<IpAddr>().map_err(|e| CriError::Malformed {
                op: OP,
                what: format!("sandbox IP {ip:?}: {e}"),
            })?),
        };
        Ok((state, ip))
    }

    /// Creates (but does not start) a container in a sandbox and returns its
    /// id. The sandbox config must be the one the sandbox was run with.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, CriError> {
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let response = self
            .runtime
            .clone()
            .create_container(request)
            .await
            .map_err(|s| CriError::call("CreateContainer", s))?
            .into_inner();
        non_empty("CreateContainer", "container_id", response.container_id)
    }

    /// Starts a created container. Separate from creation so the pod worker
    /// can order init containers and record each step.
    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let request = StartContainerRequest {
            container_id: id.to_string(),
        };
        self.runtime
            .clone()
            .start_container(request)
            .await
            .map_err(|s| CriError::call("StartContainer", s))?;
        Ok(())
    }

    /// Sends SIGTERM (or the image's stop signal), then SIGKILL after
    /// `timeout_secs` — the pod's termination grace period. The call blocks
    /// for up to that long.
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        let request = StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_secs,
        };
        self.runtime
            .clone()
            .stop_container(request)
            .await
            .map_err(|s| CriError::call("StopContainer", s))?;
        Ok(())
    }

    /// Deletes a container (killing it if still running). Its log file stays
    /// behind; the caller owns the log directory.
    pub async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let request = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.runtime
            .clone()
            .remove_container(request)
            .await
            .map_err(|s| CriError::call("RemoveContainer", s))?;
        Ok(())
    }

    /// Runs `cmd` in a running container and waits for it (CRI ExecSync):
    /// what exec probes and `exec` need. `timeout_secs` 0 means no limit.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecOutput, CriError> {
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let response = self
            .runtime
            .clone()
            .exec_sync(request)
            .await
            .map_err(|s| CriError::call("ExecSync", s))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: response.exit_code,
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
        })
    }

    /// Lists the containers whose labels include all of `labels` (an empty
    /// map lists all), in any state, across sandboxes.
    pub async fn list_containers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Container>, CriError> {
        let request = ListContainersRequest {
            filter: Some(ContainerFilter {
                label_selector: to_hash_map(labels),
                ..Default::default()
            }),
        };
        let response = self
            .runtime
            .clone()
            .list_containers(request)
            .await
            .map_err(|s| CriError::call("ListContainers", s))?;
        Ok(response.into_inner().containers)
    }

    /// Returns a container's full status: state, exit code, reason (e.g.
    /// `OOMKilled`), timestamps — what restart policy and pod status need.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus, CriError> {
        const OP: &str = "ContainerStatus";
        let request = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.runtime
            .clone()
            .container_status(request)
            .await
            .map_err(|s| CriError::call(OP, s))?
            .into_inner()
            .status
            .ok_or_else(|| CriError::Malformed {
                op: OP,
                what: format!("no status for container {id}"),
            })
    }
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

fn to_hash_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn non_empty(op: &'static str, field: &str, value: String) -> Result<String, CriError> {
    if value.is_empty() {
        Err(CriError::Malformed {
            op,
            what: format!("empty {field}"),
        })
    } else {
        Ok(value)
    }
}

/// An image's own user (its `USER`), as CRI `ImageStatus` reports it: a
/// uid when numeric, else the name; neither when the image sets none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUser {
    /// The numeric user, if the image names one.
    pub uid: Option<i64>,
    /// The user name, if the image's user is not numeric.
    pub username: String,
}

/// What a command run with [`Cri::exec_sync`] left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Removes the pod's `cgroup_parent` directory, and everything below it,
/// from every mounted cgroup hierarchy. containerd (with cgroupfs) creates
/// the parent on the first container but never removes it, so without this
/// every pod ever run leaves a directory in each of the ~10 hierarchies.
///
/// Call it after `RemovePodSandbox`. Directories are removed depth-first
/// with `rmdir` (the only way to delete a cgroup); a missing directory is
/// not an error, so the call is idempotent. A cgroup that still has
/// processes fails with `EBUSY`: the first such error is returned after
/// every hierarchy has been tried. Synchronous: from async code, run it in
/// `spawn_blocking`.
pub fn cgroup_cleanup(cgroup_parent: &str) -> io::Result<()> {
    let relative = cgroup_parent.trim_matches('/');
    if relative.is_empty() || relative.split('/').any(|c| c == ".." || c == ".") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to clean up cgroup parent {cgroup_parent:?}"),
        ));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut first_error = None;
    for mount_point in cgroup_mount_points(&mountinfo) {
        let dir = mount_point.join(relative);
        if let Err(e) = remove_cgroup_tree(&dir) {
            first_error.get_or_insert(io::Error::new(
                e.kind(),
                format!("removing cgroup {}: {e}", dir.display()),
            ));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The mount points of all cgroup (v1) and cgroup2 filesystems, each once,
/// from the text of `/proc/self/mountinfo`.
fn cgroup_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let path = PathBuf::from(unescape_mountinfo(mount_point));
        if !points.contains(&path) {
            points.push(path);
        }
    }
    points
}

/// Undoes the octal escapes (`\040` for a space, …) mountinfo uses.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            let parsed = std::str::from_utf8(digits)
                .ok()
                .filter(|d| d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            if let Some(value) = parsed {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `rmdir`s a cgroup directory after its child cgroups, deepest first.
fn remove_cgroup_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:28 / /sys/fs/cgroup/name\\040with\\040space rw,relatime - cgroup cgroup rw,name=x
34 31 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 31 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_each_cgroup_hierarchy_once() {
        assert_eq!(
            cgroup_mount_points(MOUNTINFO),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/name with space"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ]
        );
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape_mountinfo("a\\040b"), "a b");
        assert_eq!(unescape_mountinfo("a\\b"), "a\\b");
        assert_eq!(unescape_mountinfo("tail\\04"), "tail\\04");
    }

    #[test]
    fn refuses_root_and_traversal() {
        assert!(cgroup_cleanup("/").is_err());
        assert!(cgroup_cleanup("").is_err());
        assert!(cgroup_cleanup("/commitd/../etc").is_err());
    }

    #[test]
    fn removes_nested_directories_depth_first() {
        let tmp = std::env::temp_dir().join(format!("commitd-cgtest-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("pod/a/b")).unwrap();
        std::fs::create_dir_all(tmp.join("pod/c")).unwrap();
        remove_cgroup_tree(&tmp.join("pod")).unwrap();
        assert!(!tmp.join("pod").exists());
        remove_cgroup_tree(&tmp.join("pod")).unwrap();
        std::fs::remove_dir(&tmp).unwrap();
    }
}
