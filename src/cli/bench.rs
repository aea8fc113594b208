//! `commitd bench`: benchmarks that print figures (and never assert them).
//!
//! `commitd bench push-to-running` measures how long a commit takes to
//! become running pods, and compares it with doing the same container work
//! by hand through CRI. It builds a private lab — a registry with the demo
//! images, an etcd, a containerd with its own bridge and subnet, a bare Git
//! repository — and runs the reconciler, scheduler and node agent in this
//! process exactly as `commitd up` does. Then, for each pod count N:
//!
//! - **commitd**: from the instant git2 has written `refs/heads/main` for a
//!   commit that scales a Deployment of the (warm) web image from 0 to N
//!   replicas, until all N pods have `status.phase = Running`, as seen in a
//!   reflector cache of this process (an etcd watch; nothing is polled).
//!   A commit back to 0 replicas, and waiting until containerd holds no
//!   container or sandbox, separates rounds.
//! - **direct CRI**: the same N pods, with the configs the node agent builds
//!   (same builders, log directories, labels, cgroup parents, CNI network),
//!   started concurrently through [`Cri`]: sandbox, image presence check,
//!   create, start. Timed from the first call until every StartContainer
//!   has returned; then the pods are removed.
//!
//! Every milestone on the way (applied, ReplicaSet scaled, pods created,
//! bound, sandboxes and containers created and started in containerd,
//! Running) is recorded too and printed as a breakdown, so a slow stage
//! shows where the time goes. Everything the benchmark started is stopped
//! and removed on the way out, on errors and on Ctrl-C as well.
//!
//! `commitd bench services` lives in [`super::bench_services`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use commitd_api::meta::COMMIT_ANNOTATION;
use commitd_api::reflector::{reflect, Cache};
use commitd_api::Store;
use commitd_nodeagent::cri::proto::ContainerState;
use commitd_nodeagent::cri::{cgroup_cleanup, Cri};
use commitd_nodeagent::pod::desired::{DesiredPod, PullPolicy};
use commitd_nodeagent::pod::spec::{container_config, sandbox_config, EnvFacts, Instance};
use commitd_nodeagent::pod::{cgroup_parent, log_dir_name, LABEL_NODE};
use commitd_nodeagent::NodeAgentConfig;
use commitd_reconciler::git_source::GitSourceConfig;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::components::shutdown_token;
use crate::cluster::containerd::{Containerd, ContainerdOptions};
use crate::cluster::etcd::{Etcd, EtcdOptions};
use crate::cluster::image::{ensure_pause_image, PAUSE_IMAGE};
use crate::cluster::registry::Registry;

/// The namespace the benchmark's Deployment lives in.
const NAMESPACE: &str = "bench";
/// The benchmark's Deployment.
const DEPLOYMENT: &str = "web";
/// The branch the reconciler follows.
const BRANCH: &str = "refs/heads/main";
/// Node label value of the pods the direct-CRI baseline runs; differs from
/// the agent's node so the agent never mistakes them for orphans of its own.
const DIRECT_NODE: &str = "bench-direct";
/// The demo image every pod runs (pushed by `examples/images/build.sh`).
const WEB_IMAGE: &str = "commitd/web:1";
/// Longest wait for the cluster to come up (node registered, first apply).
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Base of the per-round deadline; each pod adds [`PER_POD_DEADLINE`].
const ROUND_DEADLINE: Duration = Duration::from_secs(120);
/// See [`ROUND_DEADLINE`].
const PER_POD_DEADLINE: Duration = Duration::from_secs(5);
/// Interval between checks of containerd while waiting for it to empty
/// (outside every measured interval).
const TEARDOWN_POLL: Duration = Duration::from_millis(100);
/// Pause before every measured run, outside the measured interval: the
/// kernel tears the previous round's network namespaces and veths down
/// asynchronously, and a sandbox created meanwhile waits for it (seen as
/// RunPodSandbox taking 0.3-1.4 s instead of ~0.2 s right after a teardown).
const SETTLE: Duration = Duration::from_secs(2);
/// How long the components may take to stop on the way out.
const COMPONENT_STOP_DEADLINE: Duration = Duration::from_secs(15);
/// The goal for commitd's median over the direct-CRI median.
const GOAL_RATIO: f64 = 1.3;
/// Pods per round at most: the pod subnet is a /24.
const MAX_PODS: usize = 200;

/// `commitd bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time from a commit to N running pods, against starting them directly through CRI.
    PushToRunning(PushToRunningArgs),
    /// Service rule programming (nftables) against raw `nft -f` of the same services.
    Services(super::bench_services::ServicesArgs),
}

/// `commitd bench push-to-running`.
#[derive(Args, Debug, Clone)]
pub struct PushToRunningArgs {
    /// Pod counts to measure (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,20")]
    pub pods: Vec<usize>,
    /// Measured rounds per pod count (after one unmeasured warm-up).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Where etcd, containerd, the agent and the repository keep their data
    /// (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Keep the temporary state directory (logs, etcd data, repository).
    #[arg(long)]
    pub keep: bool,
    /// The Linux bridge the benchmark's pods attach to.
    #[arg(long, default_value = "cdbench0")]
    pub bridge: String,
    /// The benchmark node's pod subnet.
    #[arg(long, default_value = "10.219.0.0/24")]
    pub pod_cidr: String,
    /// The benchmark node's name.
    #[arg(long, default_value = "bench-node")]
    pub node_name: String,
}

/// Runs a benchmark and prints its figures on stdout (progress on stderr).
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::PushToRunning(a) => push_to_running(a).await,
        BenchCommand::Services(a) => super::bench_services::run(a).await,
    }
}

async fn push_to_running(args: PushToRunningArgs) -> anyhow::Result<ExitCode> {
    if args.pods.is_empty() || args.pods.iter().any(|&n| n == 0 || n > MAX_PODS) {
        bail!("--pods takes counts from 1 to {MAX_PODS}");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let cancel = shutdown_token()?;
    let mut lab = Lab {
        keep: args.keep,
        ..Lab::default()
    };
    let result = tokio::select! {
        r = async {
            lab.start(&args).await?;
            lab.benchmark(&args, &cancel).await
        } => r,
        _ = cancel.cancelled() => Err(anyhow!("interrupted")),
    };
    lab.shut_down().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// Prints a progress line on stderr.
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("bench: {}", format_args!($($arg)*)) };
}

/// Everything the benchmark starts, each part stopped by [`Lab::shut_down`].
#[derive(Default)]
struct Lab {
    temp: Option<tempfile::TempDir>,
    state_dir: PathBuf,
    registry: Option<Registry>,
    etcd: Option<Etcd>,
    containerd: Option<Containerd>,
    components: Option<(CancellationToken, Vec<JoinHandle<anyhow::Result<()>>>)>,
    /// Stops the benchmark's own caches.
    caches: CancellationToken,
    store: Option<Store>,
    cri: Option<Cri>,
    repo: PathBuf,
    image: String,
    /// Uids of every pod that ran, for a last cgroup clean-up.
    uids: Mutex<BTreeSet<String>>,
    /// Keep the temporary state directory.
    keep: bool,
}

impl Lab {
    fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("agent/pods")
    }

    fn cri(&self) -> anyhow::Result<&Cri> {
        self.cri.as_ref().context("containerd is not connected")
    }

    fn store(&self) -> anyhow::Result<&Store> {
        self.store.as_ref().context("etcd is not connected")
    }

    fn remember(&self, uid: &str) {
        let mut uids = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        uids.insert(uid.to_string());
    }

    /// Starts registry, etcd, containerd and the components, with the image
    /// warm and the repository holding a Deployment of 0 replicas.
    async fn start(&mut self, args: &PushToRunningArgs) -> anyhow::Result<()> {
        self.state_dir = match &args.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::path::absolute(dir)?
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("commitd-bench-")
                    .tempdir()
                    .context("creating a state directory")?;
                let path = temp.path().to_path_buf();
                self.temp = Some(temp);
                path
            }
        };
        progress!("state directory {}", self.state_dir.display());
        if Path::new("/sys/class/net").join(&args.bridge).exists() {
            warn!(bridge = %args.bridge, "bridge exists already (a leftover, or another benchmark running?)");
        }

        progress!("starting the registry and pushing the demo images");
        let registry = self.registry.insert(Registry::start().await?);
        let source_root = Path::new(env!("CARGO_MANIFEST_DIR"));
        registry
            .push_demo_images(source_root)
            .await
            .context("pushing the demo images")?;
        let registry_addr = registry.addr.clone();
        self.image = format!("{registry_addr}/{WEB_IMAGE}");

        progress!("starting etcd and containerd");
        let etcd = self.etcd.insert(
            Etcd::start(EtcdOptions {
                data_dir: self.state_dir.join("etcd"),
                client_port: None,
                extra_args: Vec::new(),
            })
            .await
            .context("starting etcd")?,
        );
        let endpoints = vec![etcd.endpoint.clone()];
        let containerd = self.containerd.insert(
            Containerd::start(ContainerdOptions {
                state_dir: self.state_dir.join("containerd"),
                sandbox_image: PAUSE_IMAGE.to_string(),
                pod_cidr: args.pod_cidr.clone(),
                bridge: args.bridge.clone(),
                registries: vec![registry_addr],
            })
            .await
            .context("starting containerd")?,
        );
        let socket = containerd.socket.clone();
        let images_dir = self.state_dir.join("images");
        std::fs::create_dir_all(&images_dir)
            .with_context(|| format!("creating {}", images_dir.display()))?;
        ensure_pause_image(&socket, &images_dir)
            .await
            .context("making the pause image available")?;
        let cri = self.cri.insert(Cri::connect(&socket).await?);
        progress!(
            "pulling {} once (the measured runs find it warm)",
            self.image
        );
        cri.pull_image(&self.image, None)
            .await
            .with_context(|| format!("pulling {}", self.image))?;

        self.repo = self.state_dir.join("repo.git");
        let repo = self.repo.clone();
        let files = manifests(&self.image, 0);
        tokio::task::spawn_blocking(move || {
            init_repository(&repo)?;
            write_commit(&repo, &files, "Bench: web at 0 replicas")
        })
        .await
        .context("git task panicked")??;

        let store = Store::connect(&endpoints)
            .await
            .context("connecting to etcd")?;
        self.store = Some(store.clone());
        let token = CancellationToken::new();
        let source = GitSourceConfig {
            repo: self.repo.clone(),
            branch: None,
            path: String::new(),
            // Ref changes are seen at once through `notify`; the poll is the
            // safety net, as with `up`'s default.
            poll_interval: Duration::from_secs(30),
            ..GitSourceConfig::default()
        };
        let agent = NodeAgentConfig {
            node_name: args.node_name.clone(),
            containerd_socket: socket,
            state_dir: self.state_dir.join("agent"),
            node_ip: None,
            runtime_handler: String::new(),
            cluster_dns: None,
            dns_listen: None,
            proxy: None,
            read_only_port: None,
            local_path_capacity: None,
        };
        let tasks = vec![
            tokio::spawn(commitd_reconciler::run(
                store.clone(),
                source,
                token.clone(),
            )),
            tokio::spawn(commitd_scheduler::run(store.clone(), token.clone())),
            tokio::spawn(commitd_nodeagent::run(store, agent, token.clone())),
        ];
        self.components = Some((token, tasks));
        progress!("reconciler, scheduler and node agent running in this process");
        Ok(())
    }

    /// Warms up, measures every pod count and prints the tables.
    async fn benchmark(
        &self,
        args: &PushToRunningArgs,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let store = self.store()?.clone();
        let watch = Watch {
            pods: reflect::<Pod>(store.clone(), self.caches.clone()),
            deployments: reflect::<Deployment>(store.clone(), self.caches.clone()),
            replica_sets: reflect::<ReplicaSet>(store.clone(), self.caches.clone()),
            nodes: reflect::<Node>(store, self.caches.clone()),
        };
        progress!("waiting for the node to register and the first commit to apply");
        watch
            .until(READY_DEADLINE, cancel, |w| {
                let node = w
                    .nodes
                    .list()
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(args.node_name.as_str()));
                node && w.deployment().is_some()
            })
            .await
            .context("the cluster did not come up")?;

        progress!("warm-up round (1 pod each way, not counted)");
        let warm = self.commitd_round(&watch, 1, cancel).await?;
        let template = warm.template.context("no pod seen in the warm-up")?;
        self.scale_to_zero(&watch, cancel).await?;
        self.direct_round(&template, 1, "w").await?;
        self.remove_direct_pods().await?;

        println!(
            "\ncommitd bench push-to-running: image {} (warm), {} round(s) per pod count\n\
             commitd: from git2 writing {BRANCH} (a commit scaling Deployment {NAMESPACE}/{DEPLOYMENT} 0 -> N)\n\
             \x20        to all N pods status.phase=Running, seen in this process's reflector cache (etcd watch).\n\
             direct CRI: the agent's sandbox and container configs, N pods started concurrently,\n\
             \x20        from the first CRI call to the last StartContainer returning.\n\
             Each measured run starts {:.1} s after the previous teardown finished (settle).",
            self.image,
            args.rounds,
            SETTLE.as_secs_f64()
        );
        for &n in &args.pods {
            let mut commitd = Vec::new();
            let mut direct = Vec::new();
            for round in 1..=args.rounds {
                settle(cancel).await?;
                let run = self.commitd_round(&watch, n, cancel).await?;
                progress!(
                    "N={n} round {round}/{}: commitd {:.1} ms",
                    args.rounds,
                    ms(run.total)
                );
                commitd.push(run);
                self.scale_to_zero(&watch, cancel).await?;
                settle(cancel).await?;
                let run = self
                    .direct_round(&template, n, &format!("{n}-{round}"))
                    .await?;
                progress!(
                    "N={n} round {round}/{}: direct CRI {:.1} ms",
                    args.rounds,
                    ms(run.total)
                );
                direct.push(run);
                self.remove_direct_pods().await?;
            }
            print_report(n, &commitd, &direct);
        }
        Ok(())
    }

    /// One commitd round: commit N replicas, wait for N running pods.
    async fn commitd_round(
        &self,
        watch: &Watch,
        n: usize,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Run> {
        let repo = self.repo.clone();
        let files = manifests(&self.image, n);
        let landed = tokio::task::spawn_blocking(move || {
            write_commit(&repo, &files, &format!("Bench: web at {n} replicas"))
        })
        .await
        .context("git task panicked")??;
        let t0 = landed.at;
        let mut seen = Milestones::default();
        let deadline = ROUND_DEADLINE + PER_POD_DEADLINE * n as u32;
        watch
            .until(deadline, cancel, |w| {
                seen.observe(w, &landed.sha, n, t0.elapsed());
                seen.running_all.is_some()
            })
            .await
            .with_context(|| {
                format!(
                    "{n} pods did not all run after commit {}",
                    landed.sha.get(..7).unwrap_or(&landed.sha)
                )
            })?;
        let total = seen.running_all.unwrap_or_else(|| t0.elapsed());
        let pods = watch.live_pods();
        for p in &pods {
            if let Some(uid) = p.metadata.uid.as_deref() {
                self.remember(uid);
            }
        }
        let runtime = runtime_times(self.cri()?, &BTreeMap::new(), landed.wall_ns).await?;
        let mut stages = seen.stages();
        stages.extend(runtime);
        Ok(Run {
            total,
            stages,
            template: pods.first().map(|p| (**p).clone()),
        })
    }

    /// Commits 0 replicas and waits until the pods left etcd and every
    /// container and sandbox left containerd.
    async fn scale_to_zero(&self, watch: &Watch, cancel: &CancellationToken) -> anyhow::Result<()> {
        let repo = self.repo.clone();
        let files = manifests(&self.image, 0);
        tokio::task::spawn_blocking(move || {
            write_commit(&repo, &files, "Bench: web at 0 replicas")
        })
        .await
        .context("git task panicked")??;
        watch
            .until(ROUND_DEADLINE, cancel, |w| {
                w.pods
                    .list()
                    .iter()
                    .all(|p| p.metadata.namespace.as_deref() != Some(NAMESPACE))
            })
            .await
            .context("pods were not deleted after scaling to 0")?;
        self.wait_runtime_empty().await
    }

    /// Waits until containerd holds no container and no sandbox.
    async fn wait_runtime_empty(&self) -> anyhow::Result<()> {
        let cri = self.cri()?;
        let all = BTreeMap::new();
        let deadline = Instant::now() + ROUND_DEADLINE;
        loop {
            let containers = cri.list_containers(&all).await?.len();
            let sandboxes = cri.list_pod_sandboxes(&all).await?.len();
            if containers == 0 && sandboxes == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd still holds {containers} containers and {sandboxes} sandboxes");
            }
            tokio::time::sleep(TEARDOWN_POLL).await;
        }
    }

    /// The baseline: N pods like `template`, straight through CRI.
    async fn direct_round(&self, template: &Pod, n: usize, tag: &str) -> anyhow::Result<Run> {
        let cri = self.cri()?;
        let mut pods = Vec::with_capacity(n);
        let stamp = wall_ns();
        for i in 0..n {
            let mut pod = template.clone();
            let uid = format!("direct-{stamp:x}-{tag}-{i}");
            pod.metadata.name = Some(format!("direct-{tag}-{i}"));
            pod.metadata.uid = Some(uid.clone());
            pod.metadata.resource_version = None;
            pod.status = None;
            let desired = DesiredPod::from_pod(&pod).context("template pod has no uid")?;
            self.remember(&uid);
            pods.push((Arc::new(pod), desired));
        }
        let context = Arc::new(DirectContext {
            cri: cri.clone(),
            pods_dir: self.pods_dir(),
            host_ip: commitd_nodeagent::node::default_node_ip().to_string(),
        });
        let wall = wall_ns();
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for (pod, desired) in pods {
            let context = context.clone();
            tasks.spawn(async move { start_direct_pod(&context, &pod, &desired).await });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined
                .map_err(|e| anyhow!("direct pod task failed: {e}"))
                .and_then(|r| r);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        let total = start.elapsed();
        if let Some(e) = first_error {
            return Err(e.context("starting pods directly through CRI"));
        }
        let labels = BTreeMap::from([(LABEL_NODE.to_string(), DIRECT_NODE.to_string())]);
        let running = cri
            .list_containers(&labels)
            .await?
            .iter()
            .filter(|c| c.state == ContainerState::ContainerRunning as i32)
            .count();
        if running != n {
            bail!("direct CRI: {running} of {n} containers run after starting them");
        }
        Ok(Run {
            total,
            stages: runtime_times(cri, &labels, wall).await?,
            template: None,
        })
    }

    /// Stops and removes the baseline's pods, their cgroups and logs.
    async fn remove_direct_pods(&self) -> anyhow::Result<()> {
        let cri = self.cri()?;
        let labels = BTreeMap::from([(LABEL_NODE.to_string(), DIRECT_NODE.to_string())]);
        let sandboxes = cri.list_pod_sandboxes(&labels).await?;
        let mut tasks = JoinSet::new();
        for sandbox in sandboxes {
            let cri = cri.clone();
            let pods_dir = self.pods_dir();
            tasks.spawn(async move {
                cri.stop_pod_sandbox(&sandbox.id).await?;
                cri.remove_pod_sandbox(&sandbox.id).await?;
                if let Some(m) = sandbox.metadata {
                    let parent = cgroup_parent(&m.uid);
                    tokio::task::spawn_blocking(move || cgroup_cleanup(&parent))
                        .await
                        .context("cgroup clean-up panicked")?
                        .context("removing a direct pod's cgroups")?;
                    let dir = pods_dir.join(log_dir_name(&m.namespace, &m.name, &m.uid));
                    match tokio::fs::remove_dir_all(&dir).await {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(anyhow!(e).context(format!("removing {}", dir.display())))
                        }
                        _ => {}
                    }
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| anyhow!("removal task failed: {e}"))??;
        }
        self.wait_runtime_empty().await
    }

    /// Stops everything that was started, in reverse order; best effort,
    /// reporting what fails in the log.
    async fn shut_down(&mut self) {
        self.caches.cancel();
        if let Some((token, tasks)) = self.components.take() {
            token.cancel();
            for (name, task) in ["reconciler", "scheduler", "node agent"]
                .into_iter()
                .zip(tasks)
            {
                match tokio::time::timeout(COMPONENT_STOP_DEADLINE, task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        warn!(component = name, error = %format!("{e:#}"), "stopped with an error")
                    }
                    Ok(Err(e)) => warn!(component = name, error = %e, "crashed"),
                    Err(_) => warn!(component = name, "did not stop in time"),
                }
            }
        }
        self.cri = None;
        self.store = None;
        if let Some(c) = self.containerd.take() {
            progress!("stopping containerd");
            if let Err(e) = c.stop().await {
                warn!(error = %format!("{e:#}"), "stopping containerd");
            }
        }
        let uids = std::mem::take(&mut *self.uids.lock().unwrap_or_else(|p| p.into_inner()));
        let cleaned = tokio::task::spawn_blocking(move || {
            for uid in uids {
                if let Err(e) = cgroup_cleanup(&cgroup_parent(&uid)) {
                    warn!(%uid, error = %e, "removing a pod's cgroups");
                }
            }
        })
        .await;
        if cleaned.is_err() {
            warn!("cgroup clean-up panicked");
        }
        if let Some(e) = self.etcd.take() {
            progress!("stopping etcd");
            if let Err(e) = e.stop().await {
                warn!(error = %format!("{e:#}"), "stopping etcd");
            }
        }
        if let Some(r) = self.registry.take() {
            progress!("stopping the registry");
            if let Err(e) = r.stop().await {
                warn!(error = %format!("{e:#}"), "stopping the registry");
            }
        }
        if let Some(temp) = self.temp.take() {
            if self.keep {
                let kept = temp.keep();
                progress!("kept {}", kept.display());
            } else if let Err(e) = temp.close() {
                warn!(error = %e, "removing the state directory");
            }
        }
    }
}

/// Waits [`SETTLE`] unless interrupted.
async fn settle(cancel: &CancellationToken) -> anyhow::Result<()> {
    tokio::select! {
        _ = tokio::time::sleep(SETTLE) => Ok(()),
        _ = cancel.cancelled() => bail!("interrupted"),
    }
}

/// The caches the benchmark observes the cluster through.
struct Watch {
    pods: Cache<Pod>,
    deployments: Cache<Deployment>,
    replica_sets: Cache<ReplicaSet>,
    nodes: Cache<Node>,
}

impl Watch {
    fn deployment(&self) -> Option<Arc<Deployment>> {
        self.deployments.get(Some(NAMESPACE), DEPLOYMENT)
    }

    /// The benchmark's pods not being deleted.
    fn live_pods(&self) -> Vec<Arc<Pod>> {
        self.pods
            .list()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(NAMESPACE))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Evaluates `check` on every change of any cache until it holds.
    async fn until(
        &self,
        timeout: Duration,
        cancel: &CancellationToken,
        mut check: impl FnMut(&Watch) -> bool,
    ) -> anyhow::Result<()> {
        let mut pods = self.pods.changes();
        let mut deployments = self.deployments.changes();
        let mut replica_sets = self.replica_sets.changes();
        let mut nodes = self.nodes.changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            pods.borrow_and_update();
            deployments.borrow_and_update();
            replica_sets.borrow_and_update();
            nodes.borrow_and_update();
            if check(self) {
                return Ok(());
            }
            let changed = tokio::select! {
                r = pods.changed() => r,
                r = deployments.changed() => r,
                r = replica_sets.changed() => r,
                r = nodes.changed() => r,
                _ = tokio::time::sleep_until(deadline) => bail!("timed out after {timeout:?}"),
                _ = cancel.cancelled() => bail!("interrupted"),
            };
            changed.map_err(|_| anyhow!("a cache stopped"))?;
        }
    }
}

/// One measured round.
struct Run {
    total: Duration,
    /// (stage, first, last) in ms after the start.
    stages: Vec<Stage>,
    /// A running pod of the round (commitd rounds), for the baseline.
    template: Option<Pod>,
}

/// When the first and the last pod reached a stage, in ms after the start.
#[derive(Debug, Clone, Copy)]
struct Stage {
    name: &'static str,
    first: f64,
    last: f64,
}

/// What the caches showed during a commitd round, as offsets from the
/// moment the ref was written.
#[derive(Default)]
struct Milestones {
    applied: Option<Duration>,
    scaled: Option<Duration>,
    created: HashMap<String, Duration>,
    bound: HashMap<String, Duration>,
    running: HashMap<String, Duration>,
    created_all: Option<Duration>,
    bound_all: Option<Duration>,
    running_all: Option<Duration>,
}

impl Milestones {
    fn observe(&mut self, w: &Watch, sha: &str, n: usize, now: Duration) {
        if self.applied.is_none() {
            let applied = w.deployment().is_some_and(|d| {
                d.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(COMMIT_ANNOTATION))
                    .is_some_and(|c| c == sha)
            });
            if applied {
                self.applied = Some(now);
            }
        }
        if self.scaled.is_none() {
            let scaled = w.replica_sets.list().iter().any(|rs| {
                rs.metadata.namespace.as_deref() == Some(NAMESPACE)
                    && rs
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "Deployment" && o.name == DEPLOYMENT)
                    && rs
                        .spec
                        .as_ref()
                        .and_then(|s| s.replicas)
                        .and_then(|r| usize::try_from(r).ok())
                        == Some(n)
            });
            if scaled {
                self.scaled = Some(now);
            }
        }
        let pods = w.live_pods();
        let (mut bound, mut running) = (0, 0);
        for p in &pods {
            let Some(uid) = p.metadata.uid.clone() else {
                continue;
            };
            self.created.entry(uid.clone()).or_insert(now);
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                bound += 1;
                self.bound.entry(uid.clone()).or_insert(now);
            }
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                running += 1;
                self.running.entry(uid).or_insert(now);
            }
        }
        if pods.len() >= n && self.created_all.is_none() {
            self.created_all = Some(now);
        }
        if pods.len() == n && bound == n && self.bound_all.is_none() {
            self.bound_all = Some(now);
        }
        if pods.len() == n && running == n {
            self.running_all = Some(now);
        }
    }

    fn stages(&self) -> Vec<Stage> {
        let single = |name, at: Option<Duration>| Stage {
            name,
            first: at.map_or(f64::NAN, ms),
            last: at.map_or(f64::NAN, ms),
        };
        let spread = |name, each: &HashMap<String, Duration>, all: Option<Duration>| Stage {
            name,
            first: each.values().min().copied().map_or(f64::NAN, ms),
            last: all.map_or(f64::NAN, ms),
        };
        vec![
            single("Deployment carries the commit (cache)", self.applied),
            single("ReplicaSet scaled to N (cache)", self.scaled),
            spread("pods created (cache)", &self.created, self.created_all),
            spread(
                "pods bound to the node (cache)",
                &self.bound,
                self.bound_all,
            ),
            spread("pods Running (cache)", &self.running, self.running_all),
        ]
    }
}

/// The runtime's own timestamps of the sandboxes and containers matching
/// `labels`, as offsets from `start_ns` (ns since the epoch).
async fn runtime_times(
    cri: &Cri,
    labels: &BTreeMap<String, String>,
    start_ns: i64,
) -> anyhow::Result<Vec<Stage>> {
    let offset = |ns: i64| (ns - start_ns) as f64 / 1e6;
    let spread = |name, values: &[i64]| Stage {
        name,
        first: values.iter().min().map_or(f64::NAN, |v| offset(*v)),
        last: values.iter().max().map_or(f64::NAN, |v| offset(*v)),
    };
    let sandboxes: Vec<i64> = cri
        .list_pod_sandboxes(labels)
        .await?
        .iter()
        .map(|s| s.created_at)
        .collect();
    let mut created = Vec::new();
    let mut started = Vec::new();
    for c in cri.list_containers(labels).await? {
        created.push(c.created_at);
        let status = cri.container_status(&c.id).await?;
        started.push(status.started_at);
    }
    Ok(vec![
        spread("sandbox created_at (containerd)", &sandboxes),
        spread("container created_at (containerd)", &created),
        spread("container started_at (containerd)", &started),
    ])
}

/// What the baseline's pod tasks share.
struct DirectContext {
    cri: Cri,
    pods_dir: PathBuf,
    host_ip: String,
}

/// One pod the way the node agent starts it: log directory, sandbox, then
/// per container the pull-policy check, create and start.
async fn start_direct_pod(
    ctx: &DirectContext,
    pod: &Pod,
    desired: &DesiredPod,
) -> anyhow::Result<()> {
    let cri = &ctx.cri;
    let log_dir = ctx.pods_dir.join(log_dir_name(
        &desired.namespace,
        &desired.name,
        &desired.uid,
    ));
    tokio::fs::create_dir_all(&log_dir)
        .await
        .with_context(|| format!("creating {}", log_dir.display()))?;
    let sandbox = sandbox_config(pod, desired, DIRECT_NODE, &log_dir, 0, None);
    let sandbox_id = cri.run_pod_sandbox(&sandbox, "").await?;
    let specs = pod.spec.as_ref().map(|s| s.containers.as_slice());
    for wanted in &desired.containers {
        let spec = specs
            .into_iter()
            .flatten()
            .find(|c| c.name == wanted.name)
            .with_context(|| format!("container {} is not in the pod spec", wanted.name))?;
        let image = wanted.image.as_str();
        let present = match wanted.pull_policy {
            PullPolicy::Always => None,
            PullPolicy::IfNotPresent | PullPolicy::Never => cri.image_present(image).await?,
        };
        let image_ref = match (present, wanted.pull_policy) {
            (Some(id), _) => id,
            (None, PullPolicy::Never) => bail!("image {image} is not present"),
            (None, _) => cri.pull_image(image, Some(&sandbox)).await?,
        };
        let instance = Instance {
            restart_count: 0,
            backoff: Duration::ZERO,
            spec_hash: &wanted.hash,
            image_ref: &image_ref,
        };
        let facts = EnvFacts {
            node_name: DIRECT_NODE.to_string(),
            host_ip: ctx.host_ip.clone(),
            pod_ip: None,
            ..EnvFacts::default()
        };
        let (config, _) = container_config(
            pod,
            desired,
            spec,
            DIRECT_NODE,
            &instance,
            &facts,
            Vec::new(),
        )
        .context("configuring the benchmark's container")?;
        let id = cri.create_container(&sandbox_id, &config, &sandbox).await?;
        cri.start_container(&id).await?;
    }
    Ok(())
}

/// The repository's content for `replicas` pods of `image`.
fn manifests(image: &str, replicas: usize) -> Vec<(&'static str, String)> {
    let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    let deployment = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {DEPLOYMENT}
  namespace: {NAMESPACE}
  labels:
    app: bench-web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: bench-web
  template:
    metadata:
      labels:
        app: bench-web
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: web
          image: {image}
          ports:
            - name: http
              containerPort: 80
"
    );
    vec![("namespace.yaml", namespace), ("web.yaml", deployment)]
}

/// Creates a bare repository whose HEAD names [`BRANCH`].
fn init_repository(path: &Path) -> anyhow::Result<()> {
    let repo = git2::Repository::init_bare(path)
        .with_context(|| format!("creating repository {}", path.display()))?;
    repo.set_head(BRANCH).context("setting HEAD")?;
    Ok(())
}

/// A commit whose ref has been written, and when.
struct Landed {
    sha: String,
    /// Right after the ref was written.
    at: Instant,
    /// The same moment in ns since the epoch.
    wall_ns: i64,
}

/// Writes a commit holding exactly `files` on top of [`BRANCH`], then moves
/// the branch to it; the returned instant is taken right after the ref was
/// written, the moment the commit "lands".
fn write_commit(
    path: &Path,
    files: &[(&'static str, String)],
    message: &str,
) -> anyhow::Result<Landed> {
    let repo = git2::Repository::open(path)
        .with_context(|| format!("opening repository {}", path.display()))?;
    let mut builder = repo.treebuilder(None)?;
    for (name, content) in files {
        let blob = repo.blob(content.as_bytes())?;
        builder.insert(name, blob, 0o100644)?;
    }
    let tree = repo.find_tree(builder.write()?)?;
    let sig = git2::Signature::now("commitd bench", "bench@localhost")?;
    let parent = repo
        .find_reference(BRANCH)
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let oid = repo.commit(None, &sig, &sig, message, &tree, &parents)?;
    repo.reference(BRANCH, oid, true, &format!("commit: {message}"))
        .context("moving the branch")?;
    let at = Instant::now();
    let wall_ns = wall_ns();
    info!(sha = %oid, "commit landed");
    Ok(Landed {
        sha: oid.to_string(),
        at,
        wall_ns,
    })
}

/// Nanoseconds since the epoch, the unit of containerd's timestamps.
fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A duration in milliseconds, for figures.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (median, min, max) of the finite values; NaN when there are none.
pub(super) fn summary(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

fn print_report(n: usize, commitd: &[Run], direct: &[Run]) {
    let (cm, cmin, cmax) = summary(commitd.iter().map(|r| ms(r.total)));
    let (dm, dmin, dmax) = summary(direct.iter().map(|r| ms(r.total)));
    let rounds = commitd.len();
    println!("\nN = {n} pod(s), {rounds} round(s)              median       min       max");
    println!("  commitd (commit -> Running)   {cm:>9.1} {cmin:>9.1} {cmax:>9.1} ms");
    println!("  direct CRI                    {dm:>9.1} {dmin:>9.1} {dmax:>9.1} ms");
    println!(
        "  ratio of medians              {:>9.2}   (goal <= {GOAL_RATIO:.2})",
        cm / dm
    );
    println!(
        "  where the time goes (median over rounds, ms after the start: first pod / last pod)"
    );
    let rows = |runs: &[Run]| -> Vec<(&'static str, f64, f64)> {
        let Some(first) = runs.first() else {
            return Vec::new();
        };
        (0..first.stages.len())
            .map(|i| {
                let at = |r: &Run| r.stages.get(i).copied();
                (
                    first.stages[i].name,
                    summary(runs.iter().filter_map(at).map(|s| s.first)).0,
                    summary(runs.iter().filter_map(at).map(|s| s.last)).0,
                )
            })
            .collect()
    };
    println!("    commitd:");
    for (name, first, last) in rows(commitd) {
        println!("      {name:<40} {first:>9.1} / {last:>9.1}");
    }
    println!("    direct CRI:");
    for (name, first, last) in rows(direct) {
        println!("      {name:<40} {first:>9.1} / {last:>9.1}");
    }
}
