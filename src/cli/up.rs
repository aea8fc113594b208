//! `commitd up`: the all-in-one cluster on this machine. Unless endpoints
//! are given it starts its own etcd and containerd as children, with every
//! path under one state directory, then runs the reconciler, the scheduler
//! and a node agent in this process. Stopping it stops all it started; a
//! second `up` on the same state directory resumes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use commitd_api::Store;
use tracing::{info, warn};

use super::components::{
    apply_options, max_txn_ops_parser, shutdown_token, NodeArgs, ServiceNetworkArgs, SourceArgs,
};
use super::{write_endpoint_file, DEFAULT_STATE_DIR};
use crate::cluster::containerd::{Containerd, ContainerdOptions};
use crate::cluster::etcd::{Etcd, EtcdOptions};
use crate::cluster::image::{ensure_pause_image, PAUSE_IMAGE};
use commitd_reconciler::git_source::{GitSourceConfig, RepoLocation};

/// How long a container may take to stop when `up` shuts down.
const DRAIN_GRACE_SECONDS: i64 = 10;

/// `commitd up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Create the repository from this folder's content if `--repo` does not exist.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Where etcd, containerd and the agent keep their data.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Use this etcd instead of starting one (comma separated endpoints).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Use this containerd socket instead of starting one.
    #[arg(long)]
    pub containerd: Option<PathBuf>,
    /// The pod sandbox ("pause") image; by default one is built and imported locally.
    #[arg(long)]
    pub sandbox_image: Option<String>,
    /// The node's pod subnet.
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// The Linux bridge pods attach to.
    #[arg(long, default_value = "commitd0")]
    pub bridge: String,
    /// Registries reached over plain HTTP (host:port).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:5000,localhost:5000"
    )]
    pub insecure_registry: Vec<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// etcd's --max-txn-ops; a commit needing more operations is written in
    /// several transactions under an apply lock. Default: 1024 with the
    /// etcd `up` starts (which it starts with that limit, or this one if
    /// larger), else 128, etcd's default.
    #[arg(long, value_parser = max_txn_ops_parser())]
    pub max_txn_ops: Option<usize>,
    #[command(flatten)]
    pub services: ServiceNetworkArgs,
    /// An `EncryptionConfiguration` (Kubernetes' format) to encrypt Secrets
    /// with in etcd; the other commands find it through the state dir.
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
}

/// The `--max-txn-ops` the etcd that `up` starts runs with: large enough
/// that the commits of a single-node install fit one transaction.
const OWN_ETCD_MAX_TXN_OPS: usize = 1024;

/// Runs the all-in-one cluster until SIGINT or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let cancel = shutdown_token()?;
    let state_dir = std::path::absolute(&args.state_dir)?;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let mut source_args = args.source.clone();
    if source_args.is_local() {
        source_args.repo = std::path::absolute(&source_args.repo)?;
        prepare_repository(&source_args.repo, args.init_from.as_deref()).await?;
    } else if args.init_from.is_some() {
        bail!(
            "--init-from creates a local repository; {} is remote",
            source_args.repo.display()
        );
    }
    // Read before anything starts: a bad file is reported at once.
    let source = source_args.config(&state_dir)?;
    let age_identities = source_args.age_identities()?;

    let mut etcd = None;
    let max_txn_ops = args.max_txn_ops.unwrap_or(if args.etcd.is_empty() {
        OWN_ETCD_MAX_TXN_OPS
    } else {
        commitd_reconciler::apply::DEFAULT_MAX_TXN_OPS
    });
    let endpoints = if args.etcd.is_empty() {
        let e = Etcd::start(EtcdOptions {
            data_dir: state_dir.join("etcd"),
            client_port: None,
            extra_args: vec![
                "--max-txn-ops".to_string(),
                max_txn_ops.max(OWN_ETCD_MAX_TXN_OPS).to_string(),
            ],
        })
        .await
        .context("starting etcd")?;
        let endpoints = vec![e.endpoint.clone()];
        etcd = Some(e);
        endpoints
    } else {
        args.etcd.clone()
    };
    write_endpoint_file(&state_dir, &endpoints.join(","))?;

    let mut containerd = None;
    let socket = match &args.containerd {
        Some(s) => s.clone(),
        None => {
            let c = Containerd::start(ContainerdOptions {
                state_dir: state_dir.join("containerd"),
                sandbox_image: args
                    .sandbox_image
                    .clone()
                    .unwrap_or_else(|| PAUSE_IMAGE.to_string()),
                pod_cidr: args.pod_cidr.clone(),
                bridge: args.bridge.clone(),
                registries: args.insecure_registry.clone(),
            })
            .await
            .context("starting containerd")?;
            let socket = c.socket.clone();
            containerd = Some(c);
            socket
        }
    };
    if args.sandbox_image.is_none() {
        ensure_pause_image(&socket, &state_dir.join("images"))
            .await
            .context("making the pause image available")?;
    }

    let encryption = args
        .encryption_provider_config
        .as_deref()
        .map(std::path::absolute)
        .transpose()?;
    let store = Store::connect(&endpoints)
        .await
        .context("connecting to etcd")?;
    let store = super::with_encryption(store, encryption.as_deref())?;
    // The other commands read Secrets with the same configuration.
    let encryption_file = state_dir.join(super::ENCRYPTION_FILE);
    match &encryption {
        Some(path) => std::fs::write(&encryption_file, format!("{}\n", path.display()))
            .with_context(|| format!("writing {}", encryption_file.display()))?,
        None => {
            let _ = std::fs::remove_file(&encryption_file);
        }
    }
    let node_name = args.node.name();
    let service_network = args.services.network();
    let mut node = args.node.clone();
    // One node: its pod subnet is the cluster's pod network.
    if node.cluster_cidr.is_none() {
        node.cluster_cidr = args.pod_cidr.parse().ok();
    }
    let agent = node.agent_config(socket.clone(), state_dir.join("agent"), &service_network);
    let proxy_table = agent.proxy.as_ref().map(|p| p.table.clone());
    let tasks = vec![
        tokio::spawn(commitd_reconciler::run_with(
            store.clone(),
            source.clone(),
            apply_options(max_txn_ops, service_network, age_identities),
            cancel.clone(),
        )),
        tokio::spawn(commitd_scheduler::run(store.clone(), cancel.clone())),
        tokio::spawn(commitd_nodeagent::run(store, agent, cancel.clone())),
    ];
    print_welcome(&source, &state_dir, &endpoints, &node_name);

    let mut failed = false;
    for (name, t) in ["reconciler", "scheduler", "node agent"]
        .into_iter()
        .zip(tasks)
    {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(component = name, error = %format!("{e:#}"), "stopped with an error");
                failed = true;
                cancel.cancel();
            }
            Err(e) => {
                warn!(component = name, error = %e, "crashed");
                failed = true;
                cancel.cancel();
            }
        }
    }
    if let Some(table) = proxy_table {
        // The service rules die with the cluster they served.
        if let Err(e) = commitd_nodeagent::proxy::remove_table(&table).await {
            warn!(error = %format!("{e:#}"), "removing the service rules");
        }
    }
    if let Some(c) = containerd {
        // Everything on this containerd is ours: stop the pods gracefully
        // and clean their cgroups and logs, which containerd would leave.
        if let Err(e) = commitd_nodeagent::drain::drain(
            &socket,
            &node_name,
            &state_dir.join("agent"),
            DRAIN_GRACE_SECONDS,
        )
        .await
        {
            warn!(error = %format!("{e:#}"), "draining the node");
        }
        if let Err(e) = c.stop().await {
            warn!(error = %format!("{e:#}"), "stopping containerd");
        }
    }
    if let Some(e) = etcd {
        if let Err(e) = e.stop().await {
            warn!(error = %format!("{e:#}"), "stopping etcd");
        }
    }
    info!("stopped");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_welcome(source: &GitSourceConfig, state_dir: &Path, endpoints: &[String], node: &str) {
    let state = state_dir.display();
    let repo = source.repo_display();
    let change = if matches!(source.location(), Ok(RepoLocation::Local(_))) {
        format!(
            "Change what runs by committing there, for example:\n\n  \
               cd {repo}\n  \
               sed -i 's/replicas: 2/replicas: 3/' web.yaml\n  \
               git commit -am 'Scale web to 3'\n"
        )
    } else {
        "Change what runs by pushing there: it is fetched every poll interval, and at once\n\
         when a push webhook arrives.\n"
            .to_string()
    };
    println!(
        "\ncommitd is up: node {node}, etcd {}\n\n\
         The desired state lives in the Git repository {repo}.\n\
         {change}\n\
         Then look:\n\n  \
           commitd get pods -A -o wide --state-dir {state}\n  \
           commitd get services,endpoints -A --state-dir {state}\n  \
           commitd status --state-dir {state}\n  \
           commitd history --state-dir {state}\n\n\
         Press Ctrl-C to stop everything.\n",
        endpoints.join(","),
    );
}

/// Creates the repository from `init_from` when it does not exist yet: a
/// repository with a work tree whose first commit is that content, which
/// also accepts pushes to its checked-out branch.
async fn prepare_repository(repo: &Path, init_from: Option<&Path>) -> anyhow::Result<()> {
    if repo.exists() {
        return Ok(());
    }
    let Some(src) = init_from else {
        bail!(
            "repository {} does not exist; create it, or pass --init-from DIR to create it from a folder",
            repo.display()
        );
    };
    let (repo, src) = (repo.to_path_buf(), src.to_path_buf());
    tokio::task::spawn_blocking(move || init_repository(&repo, &src)).await?
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let target = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn init_repository(repo_path: &Path, src: &Path) -> anyhow::Result<()> {
    copy_dir(src, repo_path)?;
    let repo = git2::Repository::init(repo_path)
        .with_context(|| format!("creating repository {}", repo_path.display()))?;
    let mut config = repo.config()?;
    config.set_str("receive.denyCurrentBranch", "updateInstead")?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = repo
        .signature()
        .or_else(|_| git2::Signature::now("commitd", "commitd@localhost"))?;
    repo.commit(Some("HEAD"), &sig, &sig, "Initial commit", &tree, &[])?;
    Ok(())
}
