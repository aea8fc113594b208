//! The node agent against the real parts: etcd, a registry with the demo
//! images, a private containerd with CNI networking. Pods are created in
//! etcd already bound to the node, as the scheduler would leave them; the
//! test then watches etcd, the runtime and the network. Needs root (CI runs
//! as root); skipped with a message otherwise.

mod support;

use support::is_root;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::node::{containerd_with_pause, registry_with_demo_images};

use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd::cluster::image::PAUSE_IMAGE;
use commitd_api::keys::node_lease_key;
use commitd_api::Store;
use commitd_nodeagent::cri::proto::{
    ContainerConfig, ContainerMetadata, ContainerState as CriContainerState, ImageSpec,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
};
use commitd_nodeagent::cri::Cri;
use commitd_nodeagent::pod::{
    cgroup_parent, LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_NAME, LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
};
use commitd_nodeagent::NodeAgentConfig;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use support::wait::until;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Own bridge and subnet: distinct from tests/cri_runtime.rs (10.213–10.215)
/// and tests/e2e.rs, so the tests may run side by side.
const BRIDGE: &str = "cdagent0";
const POD_CIDR: &str = "10.216.0.0/24";
const NODE: &str = "agent-test-node";
const NS: &str = "default";
const DEADLINE: Duration = Duration::from_secs(90);

/// The agent running in-process. Dropping it aborts the task without any
/// cleanup, exactly like the process being killed.
struct Agent {
    cancel: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    fn start(store: &Store, socket: &Path, state_dir: &Path) -> Agent {
        let cancel = CancellationToken::new();
        let config = NodeAgentConfig {
            node_name: NODE.to_string(),
            containerd_socket: socket.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            node_ip: None,
            runtime_handler: String::new(),
            cluster_dns: None,
            dns_listen: None,
            proxy: None,
            read_only_port: None,
            local_path_capacity: None,
        };
        let handle = tokio::spawn(commitd_nodeagent::run(
            store.clone(),
            config,
            cancel.clone(),
        ));
        Agent {
            cancel,
            handle: Some(handle),
        }
    }

    /// `kill -9`: abort the task, run nothing of its shutdown path.
    async fn kill(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// A graceful stop: cancel and wait for `run` to return.
    async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        match self.handle.take() {
            Some(handle) => tokio::time::timeout(Duration::from_secs(30), handle).await??,
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Removes the cgroups of every pod the test made, after containerd's own
/// guard killed their processes: on success the agent already did, on a
/// failure half-way nobody else would.
#[derive(Default)]
struct PodCgroups(std::sync::Mutex<Vec<String>>);

impl PodCgroups {
    fn track(&self, uid: &str) {
        if let Ok(mut uids) = self.0.lock() {
            uids.push(uid.to_string());
        }
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        let uids = self.0.lock().map(|u| u.clone()).unwrap_or_default();
        for uid in uids {
            if let Err(e) = commitd_nodeagent::cri::cgroup_cleanup(&cgroup_parent(&uid)) {
                eprintln!("cgroup of pod {uid} left behind: {e}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_runs_restarts_adopts_and_deletes_pods() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to run containerd");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "commitd_nodeagent=info".into()),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();

    // Declared first, dropped last: every guard below cleans up inside it.
    let tmp = tempfile::Builder::new().prefix("cdna").tempdir()?;
    let tmp_path = tmp.path().to_path_buf();
    let cgroups = PodCgroups::default();
    let etcd = Etcd::start(EtcdOptions {
        data_dir: tmp_path.join("etcd"),
        client_port: None,
        extra_args: Vec::new(),
    })
    .await?;
    let registry = registry_with_demo_images().await?;
    let containerd = containerd_with_pause(&tmp_path, BRIDGE, POD_CIDR, Some(&registry)).await?;
    let store = Store::connect(std::slice::from_ref(&etcd.endpoint)).await?;
    let cri = Cri::connect(&containerd.socket).await?;
    let agent_dir = tmp_path.join("agent");
    let web_image = format!("{}/commitd/web:1", registry.addr);

    let agent = Agent::start(&store, &containerd.socket, &agent_dir);

    // 1. The node registers Ready and holds its lease key.
    let node = until("node Ready with a lease", DEADLINE, || {
        let store = store.clone();
        async move {
            let node = store
                .get::<Node>(None, NODE)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no Node yet")?;
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            if ready.as_deref() != Some("True") {
                return Err(format!("Ready = {ready:?}"));
            }
            if !lease_key_exists(&store).await? {
                return Err("no lease key".into());
            }
            Ok(node)
        }
    })
    .await;
    let status = node.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    let capacity = status.capacity.clone().unwrap_or_default();
    println!(
        "node {NODE}: Ready; runtime {}, kubelet {}, os {:?}, kernel {}, arch {}, cpu {}, memory {}, pods {}, addresses {:?}",
        info.container_runtime_version,
        info.kubelet_version,
        info.os_image,
        info.kernel_version,
        info.architecture,
        capacity.get("cpu").map(|q| q.0.as_str()).unwrap_or("?"),
        capacity.get("memory").map(|q| q.0.as_str()).unwrap_or("?"),
        capacity.get("pods").map(|q| q.0.as_str()).unwrap_or("?"),
        status
            .addresses
            .unwrap_or_default()
            .iter()
            .map(|a| format!("{}={}", a.type_, a.address))
            .collect::<Vec<_>>(),
    );
    assert!(info.container_runtime_version.starts_with("containerd://"));
    assert!(capacity.get("memory").is_some_and(|q| q.0.ends_with("Ki")));
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(NODE)
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );

    // 2. A web pod runs, gets an IP on our bridge and serves its page.
    let web = store
        .create(pod("web", &web_image, None, "Always", true))
        .await?;
    let web_uid = uid_of(&web);
    cgroups.track(&web_uid);
    let web_status = wait_pod("web Running with an IP", &store, "web", |p| {
        let s = p.status.as_ref().ok_or("no status")?;
        if s.phase.as_deref() != Some("Running") || s.pod_ip.is_none() {
            return Err(format!("phase {:?} podIP {:?}", s.phase, s.pod_ip));
        }
        Ok(s.clone())
    })
    .await;
    let pod_ip = web_status.pod_ip.clone().unwrap_or_default();
    assert!(pod_ip.starts_with("10.216.0."), "pod IP {pod_ip}");
    assert_eq!(web_status.pod_ips.as_ref().map(Vec::len), Some(1));
    assert!(web_status.host_ip.is_some() && web_status.start_time.is_some());
    let conditions: BTreeMap<String, String> = web_status
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    println!("web: phase Running, podIP {pod_ip}, conditions {conditions:?}");
    for t in [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodReadyToStartContainers",
    ] {
        assert_eq!(conditions.get(t).map(String::as_str), Some("True"), "{t}");
    }
    let web_container = container_status(&web_status, "web");
    assert!(web_container.ready && web_container.started == Some(true));
    let web_container_id = web_container.container_id.clone().unwrap_or_default();
    assert!(web_container_id.starts_with("containerd://"));
    assert!(!web_container.image_id.is_empty());
    let page = until("GET http://podIP/", DEADLINE, || {
        let addr = format!("{pod_ip}:80");
        async move { support::http_get(&addr).await }
    })
    .await;
    println!("GET http://{pod_ip}/ -> {}", page.trim());
    assert!(page.contains("hello from web"), "page: {page}");

    // 3. A container exiting 1 under restartPolicy Always crash-loops.
    let crasher = store
        .create(pod(
            "crasher",
            &web_image,
            Some(vec!["sh", "-c", "echo boom; exit 1"]),
            "Always",
            false,
        ))
        .await?;
    let crasher_uid = uid_of(&crasher);
    cgroups.track(&crasher_uid);
    let crashing = wait_pod("crasher in CrashLoopBackOff", &store, "crasher", |p| {
        let s = p.status.as_ref().ok_or("no status")?;
        let c = s
            .container_statuses
            .iter()
            .flatten()
            .next()
            .ok_or("no container status")?;
        let waiting = c.state.as_ref().and_then(|s| s.waiting.clone());
        let last = c.last_state.as_ref().and_then(|s| s.terminated.clone());
        match (&waiting, &last) {
            (Some(w), Some(t))
                if c.restart_count >= 1
                    && w.reason.as_deref() == Some("CrashLoopBackOff")
                    && t.exit_code == 1 =>
            {
                Ok(c.clone())
            }
            _ => Err(format!(
                "restartCount {} state {:?} lastState {:?}",
                c.restart_count, c.state, c.last_state
            )),
        }
    })
    .await;
    let waiting = crashing
        .state
        .as_ref()
        .and_then(|s| s.waiting.clone())
        .unwrap_or_default();
    let last = crashing
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    let message = waiting.message.clone().unwrap_or_default();
    println!(
        "crasher: restartCount {}, waiting {:?} {message:?}, lastState.terminated exitCode {} reason {:?}",
        crashing.restart_count, waiting.reason, last.exit_code, last.reason
    );
    assert!(
        message.starts_with("back-off ")
            && message.ends_with(&format!(
                "restarting failed container=crasher pod=crasher_default({crasher_uid})"
            )),
        "{message}"
    );
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(last.started_at.is_some() && last.finished_at.is_some());
    let crasher_phase = store
        .get::<Pod>(Some(NS), "crasher")
        .await?
        .and_then(|p| p.status)
        .and_then(|s| s.phase);
    assert_eq!(crasher_phase.as_deref(), Some("Running"));
    let crash_log = agent_dir
        .join("pods")
        .join(format!("default_crasher_{crasher_uid}"))
        .join("crasher/0.log");
    let log = std::fs::read_to_string(&crash_log).unwrap_or_default();
    assert!(log.contains("boom"), "{}: {log:?}", crash_log.display());

    // 4. restartPolicy Never and exit 0: Succeeded.
    let once = store
        .create(pod(
            "once",
            &web_image,
            Some(vec!["sh", "-c", "echo done"]),
            "Never",
            false,
        ))
        .await?;
    let once_uid = uid_of(&once);
    cgroups.track(&once_uid);
    let done = wait_pod("once Succeeded", &store, "once", |p| {
        let s = p.status.as_ref().ok_or("no status")?;
        if s.phase.as_deref() == Some("Succeeded") {
            Ok(s.clone())
        } else {
            Err(format!("phase {:?}", s.phase))
        }
    })
    .await;
    let once_container = container_status(&done, "once");
    let terminated = once_container
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    println!(
        "once: phase Succeeded, exitCode {} reason {:?}, restartCount {}",
        terminated.exit_code, terminated.reason, once_container.restart_count
    );
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    assert_eq!(once_container.restart_count, 0);

    // 5. An image the registry does not have: ErrImagePull, then back-off.
    let missing = store
        .create(pod(
            "missing",
            &format!("{}/commitd/nope:1", registry.addr),
            None,
            "Always",
            false,
        ))
        .await?;
    let missing_uid = uid_of(&missing);
    cgroups.track(&missing_uid);
    for reason in ["ErrImagePull", "ImagePullBackOff"] {
        let waiting = wait_pod(&format!("missing in {reason}"), &store, "missing", |p| {
            let s = p.status.as_ref().ok_or("no status")?;
            let c = container_status(s, "missing");
            let w = c.state.and_then(|s| s.waiting).unwrap_or_default();
            match w.reason.as_deref() {
                Some(r) if r == reason && s.phase.as_deref() == Some("Pending") => Ok(w),
                other => Err(format!("phase {:?} waiting {other:?}", s.phase)),
            }
        })
        .await;
        println!(
            "missing: waiting {reason} {:?}",
            waiting.message.unwrap_or_default()
        );
    }

    // 5b. A command that does not exist: the start fails, then crash-loops.
    let badcmd = store
        .create(pod(
            "badcmd",
            &web_image,
            Some(vec!["/no/such/binary"]),
            "Always",
            false,
        ))
        .await?;
    let badcmd_uid = uid_of(&badcmd);
    cgroups.track(&badcmd_uid);
    let bad = wait_pod("badcmd in CrashLoopBackOff", &store, "badcmd", |p| {
        let s = p.status.as_ref().ok_or("no status")?;
        let c = container_status(s, "badcmd");
        let w = c.state.clone().and_then(|s| s.waiting).unwrap_or_default();
        if w.reason.as_deref() == Some("CrashLoopBackOff") {
            Ok(c)
        } else {
            Err(format!("{:?} last {:?}", c.state, c.last_state))
        }
    })
    .await;
    let failed_start = bad
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_default();
    println!(
        "badcmd: restartCount {}, waiting CrashLoopBackOff, lastState.terminated exitCode {} reason {:?}",
        bad.restart_count, failed_start.exit_code, failed_start.reason
    );
    assert_eq!(failed_start.exit_code, 128);

    // 6. Kill the agent, leave an orphan behind, start a new agent.
    let running_before = running_containers(&cri).await?;
    println!(
        "before the kill: {} running containers {running_before:?}",
        running_before.len()
    );
    agent.kill().await;
    let orphan_uid = format!("orphan-{}", std::process::id());
    cgroups.track(&orphan_uid);
    let orphan = make_orphan(&cri, &agent_dir, &orphan_uid).await?;
    println!("agent killed; orphan sandbox {orphan} created by hand");
    let agent = Agent::start(&store, &containerd.socket, &agent_dir);
    until("orphan removed", DEADLINE, || {
        let cri = cri.clone();
        let orphan_uid = orphan_uid.clone();
        async move {
            let (s, c) = objects_of(&cri, &orphan_uid)
                .await
                .map_err(|e| e.to_string())?;
            if s.is_empty() && c.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} sandboxes, {} containers left",
                    s.len(),
                    c.len()
                ))
            }
        }
    })
    .await;
    let orphan_log_dir = agent_dir
        .join("pods")
        .join(format!("default_orphan_{orphan_uid}"));
    until("orphan host leftovers removed", DEADLINE, || {
        let dir = orphan_log_dir.clone();
        let cgroup = cgroup_dir(&orphan_uid);
        async move {
            if dir.exists() || cgroup.exists() {
                Err(format!(
                    "{} or {} still there",
                    dir.display(),
                    cgroup.display()
                ))
            } else {
                Ok(())
            }
        }
    })
    .await;
    // Adopted, not restarted: the same web container still runs.
    let running_after = running_containers(&cri).await?;
    println!(
        "after the restart: {} running containers {running_after:?}",
        running_after.len()
    );
    let web_id = web_container_id.trim_start_matches("containerd://");
    assert_eq!(
        running_after
            .get(web_id)
            .map(|(uid, name)| (uid.as_str(), name.as_str())),
        Some((web_uid.as_str(), "web")),
        "the web container was not kept"
    );
    let restarted_web = wait_pod("web still Running", &store, "web", |p| {
        let s = p.status.as_ref().ok_or("no status")?;
        let c = container_status(s, "web");
        if s.phase.as_deref() == Some("Running") && c.ready {
            Ok(c)
        } else {
            Err(format!("phase {:?} ready {}", s.phase, c.ready))
        }
    })
    .await;
    assert_eq!(
        restarted_web.container_id.as_deref(),
        Some(web_container_id.as_str())
    );
    assert_eq!(restarted_web.restart_count, 0);
    // Nothing twice, nothing of no pod.
    let known = [
        web_uid.clone(),
        crasher_uid.clone(),
        once_uid.clone(),
        missing_uid.clone(),
        badcmd_uid.clone(),
    ];
    assert_no_duplicates_or_orphans(&cri, &known).await?;
    let (once_sandboxes, once_containers) = objects_of(&cri, &once_uid).await?;
    assert_eq!(
        once_containers.len(),
        1,
        "the completed container is kept for its logs"
    );
    assert!(once_sandboxes
        .iter()
        .all(|s| s.state() == PodSandboxState::SandboxNotready));

    // The crash loop went on across the restart; with a third instance the
    // oldest one and its log go, the previous one stays for its logs.
    let crasher_logs = agent_dir
        .join("pods")
        .join(format!("default_crasher_{crasher_uid}"))
        .join("crasher");
    let kept = until("crasher's oldest instance removed", DEADLINE, || {
        let cri = cri.clone();
        let store = store.clone();
        let uid = crasher_uid.clone();
        let logs = crasher_logs.clone();
        async move {
            let restarts = store
                .get::<Pod>(Some(NS), "crasher")
                .await
                .map_err(|e| e.to_string())?
                .and_then(|p| p.status)
                .map(|s| container_status(&s, "crasher").restart_count)
                .unwrap_or(0);
            let (_, containers) = objects_of(&cri, &uid).await.map_err(|e| e.to_string())?;
            let mut attempts: Vec<u32> = containers
                .iter()
                .filter_map(|c| c.metadata.as_ref().map(|m| m.attempt))
                .collect();
            attempts.sort();
            if restarts >= 2 && containers.len() == 2 && !logs.join("0.log").exists() {
                Ok((restarts, attempts))
            } else {
                Err(format!(
                    "restartCount {restarts}, instances {attempts:?}, 0.log exists: {}",
                    logs.join("0.log").exists()
                ))
            }
        }
    })
    .await;
    println!(
        "crasher: restartCount {}, instances kept (attempts) {:?}",
        kept.0, kept.1
    );

    // 7. Graceful deletion: containers go from the runtime, the Pod from etcd.
    for (name, uid) in [
        ("web", &web_uid),
        ("crasher", &crasher_uid),
        ("once", &once_uid),
        ("missing", &missing_uid),
        ("badcmd", &badcmd_uid),
    ] {
        store
            .modify::<Pod, _>(Some(NS), name, |p| {
                p.metadata.deletion_timestamp = Some(commitd_api::meta::now());
                p.metadata.deletion_grace_period_seconds = Some(5);
                true
            })
            .await?;
        until(&format!("{name} deleted"), DEADLINE, || {
            let store = store.clone();
            let cri = cri.clone();
            let uid = uid.clone();
            async move {
                let (s, c) = objects_of(&cri, &uid).await.map_err(|e| e.to_string())?;
                let object = store
                    .get::<Pod>(Some(NS), name)
                    .await
                    .map_err(|e| e.to_string())?;
                if s.is_empty() && c.is_empty() && object.is_none() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} sandboxes, {} containers, object present: {}",
                        s.len(),
                        c.len(),
                        object.is_some()
                    ))
                }
            }
        })
        .await;
        let log_dir = agent_dir.join("pods").join(format!("default_{name}_{uid}"));
        assert!(!log_dir.exists(), "{} left behind", log_dir.display());
        assert!(!cgroup_dir(uid).exists(), "cgroup of {name} left behind");
        println!("{name}: stopped, removed from the runtime, Pod deleted from etcd");
    }
    let all = BTreeMap::new();
    assert!(cri.list_containers(&all).await?.is_empty());
    assert!(cri.list_pod_sandboxes(&all).await?.is_empty());

    // 8. A graceful stop revokes the lease at once.
    agent.stop().await?;
    assert!(!lease_key_exists(&store).await.map_err(anyhow::Error::msg)?);
    println!("agent stopped; lease key {} revoked", node_lease_key(NODE));

    drop(cri);
    containerd.stop().await?;
    registry.stop().await?;
    etcd.stop().await?;
    assert!(
        !Path::new("/sys/class/net").join(BRIDGE).exists(),
        "bridge {BRIDGE} left behind"
    );
    Ok(())
}

fn pod(name: &str, image: &str, command: Option<Vec<&str>>, restart: &str, port: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(NS.to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.to_string()),
            restart_policy: Some(restart.to_string()),
            containers: vec![Container {
                name: name.to_string(),
                image: Some(image.to_string()),
                command: command.map(|c| c.into_iter().map(String::from).collect()),
                ports: port.then(|| {
                    vec![ContainerPort {
                        container_port: 80,
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn container_status(
    status: &k8s_openapi::api::core::v1::PodStatus,
    name: &str,
) -> k8s_openapi::api::core::v1::ContainerStatus {
    status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .cloned()
        .unwrap_or_default()
}

/// Polls the Pod until `check` accepts it.
async fn wait_pod<T, F>(what: &str, store: &Store, name: &str, check: F) -> T
where
    F: Fn(&Pod) -> Result<T, String>,
{
    let check = &check;
    until(what, DEADLINE, || async move {
        let pod = store
            .get::<Pod>(Some(NS), name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such pod")?;
        check(&pod)
    })
    .await
}

async fn lease_key_exists(store: &Store) -> Result<bool, String> {
    let resp = store
        .client()
        .get(node_lease_key(NODE), None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(!resp.kvs().is_empty())
}

/// Running containers labelled for the node: id → (pod uid, container name).
async fn running_containers(cri: &Cri) -> anyhow::Result<HashMap<String, (String, String)>> {
    let labels = BTreeMap::from([(LABEL_NODE.to_string(), NODE.to_string())]);
    Ok(cri
        .list_containers(&labels)
        .await?
        .into_iter()
        .filter(|c| c.state() == CriContainerState::ContainerRunning)
        .map(|c| {
            let uid = c.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
            let name = c
                .labels
                .get(LABEL_CONTAINER_NAME)
                .cloned()
                .unwrap_or_default();
            (c.id, (uid, name))
        })
        .collect())
}

async fn objects_of(
    cri: &Cri,
    uid: &str,
) -> anyhow::Result<(
    Vec<commitd_nodeagent::cri::proto::PodSandbox>,
    Vec<commitd_nodeagent::cri::proto::Container>,
)> {
    let labels = BTreeMap::from([(LABEL_POD_UID.to_string(), uid.to_string())]);
    Ok((
        cri.list_pod_sandboxes(&labels).await?,
        cri.list_containers(&labels).await?,
    ))
}

/// At most one ready sandbox and one running instance of each container
/// per pod, and nothing labelled for the node that belongs to no pod.
async fn assert_no_duplicates_or_orphans(cri: &Cri, known: &[String]) -> anyhow::Result<()> {
    let labels = BTreeMap::from([(LABEL_NODE.to_string(), NODE.to_string())]);
    let mut ready: HashMap<String, usize> = HashMap::new();
    for s in cri.list_pod_sandboxes(&labels).await? {
        let uid = s.labels.get(LABEL_POD_UID).cloned().unwrap_or_default();
        assert!(known.contains(&uid), "orphan sandbox {} of {uid:?}", s.id);
        if s.state() == PodSandboxState::SandboxReady {
            *ready.entry(uid).or_default() += 1;
        }
    }
    assert!(
        ready.values().all(|n| *n == 1),
        "duplicate sandboxes: {ready:?}"
    );
    let mut running: HashMap<(String, String), usize> = HashMap::new();
    for (_, (uid, name)) in running_containers(cri).await? {
        assert!(known.contains(&uid), "orphan container of {uid:?}");
        *running.entry((uid, name)).or_default() += 1;
    }
    assert!(
        running.values().all(|n| *n == 1),
        "duplicate containers: {running:?}"
    );
    Ok(())
}

/// A sandbox with a container, labelled for the node, of a pod that does
/// not exist — what a crash between a Pod's deletion and its cleanup
/// leaves behind.
async fn make_orphan(cri: &Cri, agent_dir: &Path, uid: &str) -> anyhow::Result<String> {
    let log_dir = agent_dir.join("pods").join(format!("default_orphan_{uid}"));
    tokio::fs::create_dir_all(&log_dir).await?;
    let labels: std::collections::HashMap<String, String> = [
        (LABEL_POD_UID, uid),
        (LABEL_POD_NAME, "orphan"),
        (LABEL_POD_NAMESPACE, NS),
        (LABEL_NODE, NODE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "orphan".into(),
            uid: uid.to_string(),
            namespace: NS.into(),
            attempt: 0,
        }),
        hostname: "orphan".into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: labels.clone(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(uid),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = cri.run_pod_sandbox(&sandbox_config, "").await?;
    let mut container_labels = labels;
    container_labels.insert(LABEL_CONTAINER_NAME.to_string(), "sleeper".into());
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: PAUSE_IMAGE.into(),
            ..Default::default()
        }),
        labels: container_labels,
        log_path: "sleeper/0.log".into(),
        ..Default::default()
    };
    let container = cri
        .create_container(&sandbox, &config, &sandbox_config)
        .await?;
    cri.start_container(&container).await?;
    Ok(sandbox)
}

/// The pod's cgroup in the memory hierarchy (present on this machine).
fn cgroup_dir(uid: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory").join(cgroup_parent(uid).trim_start_matches('/'))
}
