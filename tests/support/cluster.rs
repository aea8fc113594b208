//! A `commitd up` cluster run as a user runs it: its own state dir, a
//! repository created from the examples, images from a real registry.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use commitd::cluster::registry::Registry;
use commitd_nodeagent::cri::Cri;
use std::collections::BTreeSet;
use tokio::process::{Child, Command};

use super::cli::{running_containers, Cli, BIN};
use super::git::{examples_dir, TestRepo};

/// How long a cluster-level change may take in these tests.
pub const WAIT: Duration = Duration::from_secs(90);

/// What a test cluster must not share with any other test's: bridge, pod
/// and service ranges, DNS port, nftables table.
#[derive(Clone, Copy, Debug)]
pub struct Network {
    pub bridge: &'static str,
    pub pod_cidr: &'static str,
    pub service_cidr: &'static str,
    pub node_name: &'static str,
    pub dns_port: u16,
    pub proxy_table: &'static str,
}

/// A running `commitd up` with its repository, registry and state dir.
pub struct Cluster {
    up: Option<Child>,
    pub state: tempfile::TempDir,
    pub repo_path: PathBuf,
    pub registry: Registry,
    network: Network,
    /// The node agent's read-only port (container logs), free when the
    /// cluster was made so parallel clusters never share it.
    pub read_only_port: u16,
    /// More flags for `commitd up`.
    extra_args: Vec<std::ffi::OsString>,
}

/// Copies the example manifests, pointing their images at `registry`.
pub fn copy_examples(to: &Path, registry: &str) {
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
    /// Starts a cluster on `network` with the examples as first commit.
    pub async fn up(network: Network) -> Cluster {
        Cluster::up_with(network, Vec::new()).await
    }

    /// [`Cluster::up`], passing `extra_args` to `commitd up`.
    pub async fn up_with(network: Network, extra_args: Vec<std::ffi::OsString>) -> Cluster {
        let registry = super::node::registry_with_demo_images()
            .await
            .expect("registry with the demo images");
        let state = tempfile::tempdir().expect("tempdir");
        copy_examples(&state.path().join("init"), &registry.addr);
        let mut cluster = Cluster {
            up: None,
            repo_path: state.path().join("repo"),
            state,
            registry,
            network,
            read_only_port: super::free_port(),
            extra_args,
        };
        cluster.start();
        cluster
    }

    /// Starts `commitd up` on this cluster's state dir; the first start
    /// creates the repository from the examples.
    pub fn start(&mut self) {
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
            .args(["--bridge", self.network.bridge])
            .args(["--pod-cidr", self.network.pod_cidr])
            .args(["--service-cidr", self.network.service_cidr])
            .args(["--node-name", self.network.node_name])
            .args(["--dns-port", &self.network.dns_port.to_string()])
            .args(["--proxy-table", self.network.proxy_table])
            .args(["--proxy-resync", "2"])
            .args(["--read-only-port", &self.read_only_port.to_string()])
            .args(["--insecure-registry", &self.registry.addr])
            .args(["--poll-interval", "30"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("commitd up starts");
        self.up = Some(up);
    }

    /// Writes `text` to `file` in the repository, with `REGISTRY` standing
    /// for this cluster's registry address, and commits it.
    pub fn commit_manifest(&self, file: &str, text: &str, message: &str) -> String {
        self.repo()
            .write(file, &text.replace("REGISTRY", &self.registry.addr));
        self.repo().commit(message)
    }

    pub fn repo(&self) -> TestRepoView<'_> {
        TestRepoView {
            path: &self.repo_path,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// The read-only commands, pointed at this cluster.
    pub fn cli(&self) -> Cli {
        Cli {
            connection: vec!["--state-dir".into(), self.state_dir().into_os_string()],
        }
    }

    pub async fn wait_running(&self, n: usize, page_contains: &str) -> Vec<(String, String)> {
        self.cli()
            .wait_running("demo", n, page_contains, WAIT)
            .await
    }

    pub async fn cri(&self) -> Cri {
        Cri::connect(&self.state_dir().join("containerd/containerd.sock"))
            .await
            .expect("containerd socket")
    }

    /// Names of the pods whose containers run, as containerd reports them.
    pub async fn running_container_pods(&self) -> BTreeSet<String> {
        running_containers(&self.cri().await)
            .await
            .into_iter()
            .map(|(_, pod)| pod)
            .collect()
    }

    /// Stops `commitd up` with SIGTERM, as Ctrl-C would, and checks it
    /// exits cleanly.
    pub async fn stop(&mut self) {
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
pub struct TestRepoView<'a> {
    path: &'a Path,
}

impl TestRepoView<'_> {
    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let p = self.path.join(file);
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.contains(from), "{file} does not contain {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).expect("write");
    }

    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.path.join(file), text).expect("write");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.path.join(file)).expect("remove");
    }

    pub fn commit(&self, message: &str) -> String {
        let view = TestRepo::open(self.path);
        view.commit_all(message)
    }

    /// `git revert SHA` as a user runs it: a new commit undoing that one,
    /// and the work tree updated to match. Returns the new commit id.
    pub fn revert(&self, sha: &str) -> String {
        TestRepo::open(self.path).revert(sha)
    }
}

impl Cluster {
    /// A store on this cluster's etcd (the endpoint `up` wrote in its
    /// state dir), for tests that sample state faster than the commands.
    pub async fn store(&self) -> commitd_api::Store {
        let file = self.state_dir().join("etcd.endpoint");
        let text = super::wait::until("etcd endpoint file", WAIT, || async {
            std::fs::read_to_string(&file).map_err(|e| e.to_string())
        })
        .await;
        let endpoints: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        commitd_api::Store::connect(&endpoints)
            .await
            .expect("the cluster's etcd answers")
    }
}

impl Drop for Cluster {
    /// Whatever happened, the cluster stops the way a user stops it
    /// (SIGTERM: pods drained, containerd, etcd and the service rules
    /// removed), so a failed test leaves nothing running behind; a failed
    /// test also shows the end of `commitd up`'s log.
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            if let Some(pid) = up.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while matches!(up.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = up.start_kill();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.state.path().join("up.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("--- last lines of commitd up's log ---\n{tail}");
        }
    }
}
