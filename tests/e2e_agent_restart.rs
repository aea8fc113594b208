//! A node agent killed with SIGKILL while its pods run, then started again,
//! adopts what runs: afterwards containerd holds exactly the expected
//! containers, none twice and none orphaned. Every component runs as its
//! own `commitd` process against a real etcd and containerd.

mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use commitd::cluster::etcd::{Etcd, EtcdOptions};
use commitd_nodeagent::cri::Cri;
use support::cli::{running_containers, Cli, BIN};
use support::git::{examples_dir, TestRepo};
use support::node::{containerd_with_pause, registry_with_demo_images};
use support::wait::until;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(90);

/// The nftables table this test's node agent owns.
const PROXY_TABLE: &str = "cdkill";

fn spawn(args: &[OsString], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("commitd component starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_agent_adopts_its_pods_on_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = registry_with_demo_images()
        .await
        .expect("registry with images");
    let etcd = Etcd::start(EtcdOptions {
        data_dir: dir.path().join("etcd"),
        client_port: None,
        extra_args: Vec::new(),
    })
    .await
    .expect("etcd");
    let containerd = containerd_with_pause(dir.path(), "cdkill0", "10.217.0.0/24", Some(&registry))
        .await
        .expect("containerd with the pause image");

    // The demo manifests, pointed at this test's registry.
    let repo = TestRepo::new();
    let web = std::fs::read_to_string(examples_dir().join("web.yaml"))
        .expect("example")
        .replace("127.0.0.1:5000", &registry.addr);
    let ns = std::fs::read_to_string(examples_dir().join("namespace.yaml")).expect("example");
    repo.commit(
        "Deploy web",
        &[("namespace.yaml", Some(&ns)), ("web.yaml", Some(&web))],
    );

    let log = dir.path().join("components.log");
    let command = |name: &str, extra: &[OsString]| -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec![name.into(), "--etcd".into(), etcd.endpoint.clone().into()];
        args.extend_from_slice(extra);
        args
    };
    let mut reconciler = spawn(
        &command(
            "reconciler",
            &[
                "--repo".into(),
                repo.path().into(),
                "--service-cidr".into(),
                "10.100.17.0/24".into(),
            ],
        ),
        &log,
    );
    let mut scheduler = spawn(&command("scheduler", &[]), &log);
    let agent_cmd = command(
        "nodeagent",
        &[
            "--containerd".into(),
            containerd.socket.clone().into(),
            "--node-name".into(),
            "kill-node".into(),
            "--agent-dir".into(),
            dir.path().join("agent").into(),
            // Service rules and DNS of this test's own, never the host's.
            "--proxy-table".into(),
            PROXY_TABLE.into(),
            "--cluster-dns".into(),
            "10.100.17.10".into(),
            "--dns-port".into(),
            "10217".into(),
        ],
    );
    let mut agent = spawn(&agent_cmd, &log);

    let cli = Cli {
        connection: vec!["--etcd".into(), etcd.endpoint.clone().into()],
    };
    cli.wait_running("demo", 2, "hello from", WAIT).await;
    let cri = Cri::connect(&containerd.socket).await.expect("cri");
    let before = running_containers(&cri).await;
    assert_eq!(before.len(), 2, "{before:?}");

    // SIGKILL: no cleanup of any kind runs.
    agent.start_kill().expect("kill -9 the node agent");
    agent.wait().await.expect("agent reaped");
    assert_eq!(
        running_containers(&cri).await,
        before,
        "containers keep running without the agent"
    );

    let mut agent = spawn(&agent_cmd, &log);
    // The restarted agent is at work once it runs a new pod; then the old
    // containers must be the very same, and nothing else may run.
    repo.commit(
        "Scale to 3",
        &[("web.yaml", Some(&web.replace("replicas: 2", "replicas: 3")))],
    );
    cli.wait_running("demo", 3, "hello from", WAIT).await;
    let after = until(
        "exactly 3 containers, the 2 old ones kept",
        WAIT,
        || async {
            let now = running_containers(&cri).await;
            let kept = before.iter().all(|c| now.contains(c));
            let sandboxes = cri
                .list_pod_sandboxes(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let all = cri
                .list_containers(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            (now.len() == 3 && kept && sandboxes.len() == 3 && all.len() == 3)
                .then_some(now.clone())
                .ok_or(format!(
                    "{now:?}; {} sandboxes, {} containers",
                    sandboxes.len(),
                    all.len()
                ))
        },
    )
    .await;
    let pods: std::collections::BTreeSet<String> = after.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(pods.len(), 3, "a pod runs twice: {after:?}");

    for child in [&mut agent, &mut scheduler, &mut reconciler] {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "a component did not stop cleanly: {status:?}; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // A stopped agent leaves its service rules for the next one; the test
    // removes them as `commitd up` does.
    commitd_nodeagent::proxy::remove_table(PROXY_TABLE)
        .await
        .expect("service rules removed");
    containerd.stop().await.expect("containerd stops");
    etcd.stop().await.expect("etcd stops");
    registry.stop().await.expect("registry stops");
}
