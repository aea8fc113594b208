//! The container runtime layer against the real thing: a local registry, a
//! private containerd, CRI over its unix socket, CNI bridge networking.
//! Needs root (CI runs as root); skipped with a message otherwise.

mod support;

use support::is_root;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use commitd::cluster::image::{ensure_pause_image, PAUSE_IMAGE};
use commitd_nodeagent::cri::proto::{
    ContainerConfig, ContainerMetadata, ContainerState, ImageSpec, LinuxPodSandboxConfig,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
};
use commitd_nodeagent::cri::{cgroup_cleanup, Cri};
use support::http_get;
use support::node::{containerd_with_pause, registry_with_demo_images};
use support::wait::until;

/// Own bridge and subnet, so this test never collides with other tests.
const BRIDGE: &str = "cdtest0";
const POD_CIDR: &str = "10.213.0.0/24";
const HOSTNAME: &str = "web-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_and_serves_http_through_cri() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to run containerd");
        return Ok(());
    }
    // Declared first, dropped last: the guards below clean up inside it.
    let tmp = tempfile::Builder::new().prefix("cdt").tempdir()?;
    let tmp_path = tmp.path().to_path_buf();

    let registry = registry_with_demo_images().await?;
    println!("registry on {}", registry.addr);
    let containerd = containerd_with_pause(&tmp_path, BRIDGE, POD_CIDR, Some(&registry)).await?;
    // Idempotent: the second call finds the image and does nothing.
    ensure_pause_image(&containerd.socket, &tmp_path.join("work")).await?;

    print_pause_image(&containerd.socket).await?;

    let cri = Cri::connect(&containerd.socket).await?;
    let version = cri.version().await?;
    println!(
        "runtime {} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    assert!(cri.image_present(PAUSE_IMAGE).await?.is_some());

    run_pod(&cri, &registry.addr, &tmp_path).await?;

    containerd.stop().await?;
    registry.stop().await?;
    assert_nothing_left(&tmp_path, BRIDGE)?;
    Ok(())
}

/// Shows the name containerd's importer gave the pause image.
async fn print_pause_image(socket: &Path) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io", "images", "ls"])
        .output()
        .await?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with(PAUSE_IMAGE))
        .context("pause image not listed by ctr")?;
    println!(
        "ctr images ls: {}",
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// A test that fails half-way drops its `Containerd` with pods still
/// running: the guard must remove them through CRI and leave no process,
/// mount, bridge or NAT rule behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_containerd_with_a_running_pod_leaves_nothing() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to run containerd");
        return Ok(());
    }
    abandon_running_pod("cdtest1", "10.214.0.0/24", false).await
}

/// Worse: containerd itself died (SIGKILL) with pods running, so CRI cannot
/// help. The guard must still kill the shims and containers, detach the
/// mounts and delete the network leftovers (CNI DEL never ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_with_a_running_pod_leaves_nothing() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: needs root to run containerd");
        return Ok(());
    }
    abandon_running_pod("cdtest2", "10.215.0.0/24", true).await
}

async fn abandon_running_pod(bridge: &str, pod_cidr: &str, kill_first: bool) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("cdt").tempdir()?;
    let tmp_path = tmp.path().to_path_buf();
    let containerd = containerd_with_pause(&tmp_path, bridge, pod_cidr, None).await?;
    let cri = Cri::connect(&containerd.socket).await?;
    let cgroup_parent = format!("/commitd-{bridge}-{}", std::process::id());
    let log_dir = tmp_path.join("logs");
    tokio::fs::create_dir_all(&log_dir).await?;
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "sleeper".into(),
            uid: "sleeper-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "sleeper".into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = cri.run_pod_sandbox(&sandbox_config, "").await?;
    // The pause image doubles as the workload: it only needs to keep running.
    let container_config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: PAUSE_IMAGE.into(),
            ..Default::default()
        }),
        log_path: "sleeper.log".into(),
        ..Default::default()
    };
    let container = cri
        .create_container(&sandbox, &container_config, &sandbox_config)
        .await?;
    cri.start_container(&container).await?;
    let (_, ip) = cri.pod_sandbox_status(&sandbox).await?;
    assert!(Path::new("/sys/class/net").join(bridge).exists());

    // The pause loop exits 0 on SIGTERM (137 would mean it needed SIGKILL).
    let stopper_config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "stopper".into(),
            attempt: 0,
        }),
        log_path: "stopper.log".into(),
        ..container_config.clone()
    };
    let stopper = cri
        .create_container(&sandbox, &stopper_config, &sandbox_config)
        .await?;
    cri.start_container(&stopper).await?;
    // Whether a `sleep` runs in the container (the loop's), with shell
    // builtins only: the image holds nothing but busybox's sh and sleep.
    const LOOP_RUNS: &str = r#"for f in /proc/[0-9]*/comm; do read -r c < "$f" && [ "$c" = sleep ] && exit 0; done; exit 1"#;
    // Stopped only once its shell runs the loop: a SIGTERM before the trap
    // is set would end it with 143 whatever the loop does.
    support::wait::eventually("the pause loop to run", Duration::from_secs(10), || async {
        let out = cri
            .exec_sync(&stopper, &["/bin/sh", "-c", LOOP_RUNS], 5)
            .await
            .map_err(|e| e.to_string())?;
        (out.exit_code == 0)
            .then_some(())
            .ok_or_else(|| format!("no sleep yet: {out:?}"))
    })
    .await?;
    cri.stop_container(&stopper, 30).await?;
    let status = cri.container_status(&stopper).await?;
    assert_eq!(status.state(), ContainerState::ContainerExited);
    assert_eq!(status.exit_code, 0, "pause loop: {status:?}");
    drop(cri);

    if kill_first {
        let pid = containerd.pid().context("containerd has no pid")?;
        println!("pod {sandbox} running at {ip:?}; killing containerd {pid}, then dropping it");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
    } else {
        println!("pod {sandbox} running at {ip:?}; dropping containerd");
    }
    drop(containerd);

    // Fails with EBUSY if any process of the pod survived.
    let parent = cgroup_parent.clone();
    tokio::task::spawn_blocking(move || cgroup_cleanup(&parent)).await??;
    assert_nothing_left(&tmp_path, bridge)?;
    let nat = tokio::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .await?;
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.contains(&format!("commitd-{bridge}")),
        "CNI NAT rules left behind:\n{nat}"
    );
    let cache = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !cache.iter().any(|f| f.contains(&sandbox)),
        "CNI cache entries left behind: {cache:?}"
    );
    Ok(())
}

async fn run_pod(cri: &Cri, registry: &str, tmp: &Path) -> anyhow::Result<()> {
    let uid = format!("uid-{}", std::process::id());
    let cgroup_parent = format!("/commitd-test-{uid}");
    let labels = BTreeMap::from([("commitd.io/test".to_string(), uid.clone())]);
    let log_dir = tmp.join("logs").join(&uid);
    tokio::fs::create_dir_all(&log_dir).await?;

    let image = format!("{registry}/commitd/web:1");
    assert_eq!(cri.image_present(&image).await?, None);
    let image_ref = cri.pull_image(&image, None).await?;
    println!("pulled {image} as {image_ref}");
    assert_eq!(
        cri.image_present(&image).await?.as_deref(),
        Some(&*image_ref)
    );

    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: HOSTNAME.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: to_hash_map(&labels),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = cri.run_pod_sandbox(&sandbox_config, "").await?;
    println!("sandbox {sandbox}");
    let container_config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "web".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image_ref.clone(),
            ..Default::default()
        }),
        log_path: "web/0.log".into(),
        labels: to_hash_map(&labels),
        ..Default::default()
    };
    let container = cri
        .create_container(&sandbox, &container_config, &sandbox_config)
        .await?;
    cri.start_container(&container).await?;
    let status = cri.container_status(&container).await?;
    assert_eq!(status.state(), ContainerState::ContainerRunning);
    println!("container {container} running");

    let (state, ip) = cri.pod_sandbox_status(&sandbox).await?;
    assert_eq!(state, PodSandboxState::SandboxReady);
    let ip = ip.context("sandbox has no IP")?;
    assert!(ip.to_string().starts_with("10.213.0."), "pod IP {ip}");
    // httpd needs a moment after StartContainer to bind its port.
    let addr = format!("{ip}:80");
    let page = until("the pod to serve its page", Duration::from_secs(30), || {
        http_get(&addr)
    })
    .await;
    println!("GET http://{ip}/ -> {}", page.trim());
    assert!(
        page.contains(&format!("hello from {HOSTNAME}")),
        "page: {page}"
    );

    assert_eq!(cri.list_pod_sandboxes(&labels).await?.len(), 1);
    assert_eq!(cri.list_containers(&labels).await?.len(), 1);

    cri.stop_container(&container, 5).await?;
    let status = cri.container_status(&container).await?;
    assert_eq!(status.state(), ContainerState::ContainerExited);
    println!(
        "container exited with code {} ({})",
        status.exit_code, status.reason
    );
    cri.remove_container(&container).await?;
    cri.stop_pod_sandbox(&sandbox).await?;
    cri.remove_pod_sandbox(&sandbox).await?;
    let err = cri.pod_sandbox_status(&sandbox).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");

    let parent = cgroup_parent.clone();
    tokio::task::spawn_blocking(move || cgroup_cleanup(&parent)).await??;
    for hierarchy in ["cpu", "memory", "pids", "systemd"] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(cgroup_parent.trim_start_matches('/'));
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    let all = BTreeMap::new();
    assert!(cri.list_containers(&all).await?.is_empty());
    assert!(cri.list_pod_sandboxes(&all).await?.is_empty());
    Ok(())
}

fn to_hash_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// No process, mount or bridge of this test may outlive it.
fn assert_nothing_left(tmp: &Path, bridge: &str) -> anyhow::Result<()> {
    let needle = tmp.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounts: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&needle)).collect();
    assert!(mounts.is_empty(), "mounts left behind: {mounts:#?}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle),
            "process {:?} left behind: {cmdline}",
            entry.file_name()
        );
    }
    assert!(
        !Path::new("/sys/class/net").join(bridge).exists(),
        "bridge {bridge} left behind"
    );
    Ok(())
}
