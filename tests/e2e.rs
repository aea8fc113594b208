//! End to end, through every real layer: `commitd up` starts etcd and
//! containerd, images come from a real registry, and the test acts only as
//! a user does — commits to Git, runs the read-only commands, fetches pages
//! from pod IPs, and asks containerd what runs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use commitd::cluster::registry::Registry;
use commitd_nodeagent::cri::Cri;
use support::cli::{running_containers, Cli, BIN};
use support::git::{examples_dir, TestRepo};
use support::wait::until;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(90);

/// A running `commitd up` with its repository, registry and state dir.
struct Cluster {
    up: Option<Child>,
    state: tempfile::TempDir,
    repo_path: PathBuf,
    registry: Registry,
}

fn copy_examples(to: &Path, registry: &str) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(examples_dir()).expect("examples") {
        let entry = entry.expect("entry");
        let text = std::fs::read_to_string(entry.path()).expect("read example");
        std::fs::write(
            to.join(entry.file_name()),
            text.replace("127.0.0.1:5000", registry),
        )
        .expect("write example");
    }
}

impl Cluster {
    async fn up() -> Cluster {
        let registry = support::node::registry_with_demo_images()
            .await
            .expect("registry with the demo images");
        let state = tempfile::tempdir().expect("tempdir");
        copy_examples(&state.path().join("init"), &registry.addr);
        let mut cluster = Cluster {
            up: None,
            repo_path: state.path().join("repo"),
            state,
            registry,
        };
        cluster.start();
        cluster
    }

    /// Starts `commitd up` on this cluster's state dir; the first start
    /// creates the repository from the examples.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("up.log"))
            .expect("log file");
        let up = Command::new(BIN)
            .args(["up", "--repo"])
            .arg(&self.repo_path)
            .arg("--init-from")
            .arg(self.state.path().join("init"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args([
                "--bridge",
                "cde2e0",
                "--pod-cidr",
                "10.218.0.0/24",
                "--node-name",
                "e2e-node",
            ])
            .args(["--insecure-registry", &self.registry.addr])
            .args(["--poll-interval", "30"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("commitd up starts");
        self.up = Some(up);
    }

    fn repo(&self) -> TestRepoView<'_> {
        TestRepoView {
            path: &self.repo_path,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// The read-only commands, pointed at this cluster.
    fn cli(&self) -> Cli {
        Cli {
            connection: vec!["--state-dir".into(), self.state_dir().into_os_string()],
        }
    }

    async fn wait_running(&self, n: usize, page_contains: &str) -> Vec<(String, String)> {
        self.cli()
            .wait_running("demo", n, page_contains, WAIT)
            .await
    }

    async fn cri(&self) -> Cri {
        Cri::connect(&self.state_dir().join("containerd/containerd.sock"))
            .await
            .expect("containerd socket")
    }

    /// Names of the pods whose containers run, as containerd reports them.
    async fn running_container_pods(&self) -> BTreeSet<String> {
        running_containers(&self.cri().await)
            .await
            .into_iter()
            .map(|(_, pod)| pod)
            .collect()
    }

    /// Stops `commitd up` with SIGTERM, as Ctrl-C would, and checks it
    /// exits cleanly.
    async fn stop(&mut self) {
        if let Some(mut up) = self.up.take() {
            if let Some(pid) = up.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let status = tokio::time::timeout(Duration::from_secs(60), up.wait()).await;
            let log = std::fs::read_to_string(self.state.path().join("up.log")).unwrap_or_default();
            match status {
                Ok(Ok(s)) => assert!(s.success(), "commitd up exited with {s}; log:\n{log}"),
                other => panic!("commitd up did not stop: {other:?}; log:\n{log}"),
            }
        }
    }
}

/// Commits in the cluster's repository as a user would.
struct TestRepoView<'a> {
    path: &'a Path,
}

impl TestRepoView<'_> {
    fn edit(&self, file: &str, from: &str, to: &str) {
        let p = self.path.join(file);
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.contains(from), "{file} does not contain {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).expect("write");
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path.join(file), text).expect("write");
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.path.join(file)).expect("remove");
    }

    fn commit(&self, message: &str) -> String {
        let view = TestRepo::open(self.path);
        view.commit_all(message)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_becomes_running_containers() {
    let mut cluster = Cluster::up().await;

    // The first commit deploys 2 replicas; each pod serves its page.
    let pages = cluster.wait_running(2, "hello from").await;
    for (name, page) in &pages {
        assert!(
            page.contains(name.as_str()),
            "pod {name} serves another pod's page: {page}"
        );
    }

    // Scale to 3 with a commit.
    cluster
        .repo()
        .edit("web.yaml", "replicas: 2", "replicas: 3");
    cluster.repo().commit("Scale web to 3");
    let three = cluster.wait_running(3, "version 1").await;
    let three_names: BTreeSet<String> = three.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        pages.iter().all(|(n, _)| three_names.contains(n)),
        "scaling up must keep the running pods"
    );
    let (code, table, _) = cluster
        .cli()
        .run(&["get", "pods", "-n", "demo", "-o", "wide"])
        .await;
    assert_eq!(code, 0);
    for header in ["NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE"] {
        assert!(table.contains(header), "missing column {header}: {table}");
    }
    assert_eq!(table.matches("e2e-node").count(), 3, "{table}");

    // Broken commits change nothing and are reported with file and line.
    let running_before = cluster.running_container_pods().await;
    assert_eq!(running_before, three_names);
    let broken: [(&str, &str, &str); 3] = [
        ("web.yaml", "replicas: 3", "replicas: [3"),
        ("web.yaml", "replicas: 3", "replica: 3"),
        (
            "config.yaml",
            "name: web-config",
            "name: web-config\n  # dup\n",
        ),
    ];
    for (i, (file, from, to)) in broken.iter().enumerate() {
        let original = std::fs::read_to_string(cluster.repo_path.join(file)).expect("read");
        cluster.repo().edit(file, from, to);
        if i == 2 {
            // Two objects of the same kind and name in two files.
            cluster.repo().write("dup.yaml", &original);
        }
        let sha = cluster.repo().commit(&format!("Broken {i}"));
        let status = until("the rejected commit in status", WAIT, || async {
            let (_, out, _) = cluster.cli().run(&["status"]).await;
            out.contains(&sha[..7]).then_some(out.clone()).ok_or(out)
        })
        .await;
        let expected_file = if i == 2 { "dup.yaml" } else { "web.yaml" };
        assert!(
            status.contains(&format!("{expected_file}:")),
            "status does not name {expected_file}: {status}"
        );
        // Restore for the next case.
        cluster.repo().write(file, &original);
        if i == 2 {
            cluster.repo().remove("dup.yaml");
        }
        cluster.repo().commit(&format!("Fix {i}"));
    }
    assert_eq!(
        cluster.running_container_pods().await,
        running_before,
        "broken commits touched running pods"
    );

    // A new image replaces the pods.
    cluster
        .repo()
        .edit("web.yaml", "commitd/web:1", "commitd/web:2");
    cluster.repo().commit("Web version 2");
    let v2 = cluster.wait_running(3, "version 2").await;
    assert!(
        v2.iter().all(|(n, _)| !three_names.contains(n)),
        "pods were not replaced"
    );

    // Stopping `up` stops everything it started; a second `up` on the same
    // state dir resumes the applied commit.
    let uids: Vec<String> = cluster
        .cli()
        .pods("demo")
        .await
        .expect("pods")
        .iter()
        .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    assert_eq!(uids.len(), 3);
    cluster.stop().await;
    for uid in &uids {
        let cgroup = Path::new("/sys/fs/cgroup/memory/commitd").join(format!("pod{uid}"));
        assert!(
            !cgroup.exists(),
            "{} left behind after up stopped",
            cgroup.display()
        );
    }
    cluster.start();
    cluster.wait_running(3, "version 2").await;

    // Deleting the file removes pods and their containers.
    cluster.repo().remove("web.yaml");
    cluster.repo().commit("Remove web");
    until("pods gone", WAIT, || async {
        let pods = cluster.cli().pods("demo").await?;
        pods.is_empty()
            .then_some(())
            .ok_or(format!("{} pods", pods.len()))
    })
    .await;
    until("containers gone from containerd", WAIT, || async {
        let cri = cluster.cri().await;
        let c = cri
            .list_containers(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let s = cri
            .list_pod_sandboxes(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        (c.is_empty() && s.is_empty()).then_some(()).ok_or(format!(
            "{} containers, {} sandboxes",
            c.len(),
            s.len()
        ))
    })
    .await;

    let (code, history, _) = cluster.cli().run(&["history"]).await;
    assert_eq!(code, 0);
    assert!(
        history.contains("Remove web") && history.contains("rejected"),
        "{history}"
    );
    cluster.stop().await;
}
