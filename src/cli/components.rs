//! One subcommand per component, each running alone against an existing
//! etcd: for installs of several processes or several machines.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use commitd_nodeagent::NodeAgentConfig;
use commitd_reconciler::apply::{ApplyOptions, DEFAULT_MAX_TXN_OPS};
use commitd_reconciler::git_source::GitSourceConfig;
use tokio_util::sync::CancellationToken;

use super::ClusterArgs;

/// Where the desired state lives.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// The Git repository to follow (a work tree or a bare repository).
    #[arg(long)]
    pub repo: PathBuf,
    /// Branch to follow (default: the branch HEAD names).
    #[arg(long)]
    pub branch: Option<String>,
    /// Folder inside the repository that holds the manifests.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Seconds between polls for new commits (ref changes are seen at once).
    #[arg(long, default_value_t = 30)]
    pub poll_interval: u64,
}

impl SourceArgs {
    /// The Git source configuration these flags describe.
    pub fn config(&self) -> GitSourceConfig {
        GitSourceConfig {
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            path: self.path.clone(),
            poll_interval: Duration::from_secs(self.poll_interval.max(1)),
        }
    }
}

/// `commitd reconciler`.
#[derive(Args, Debug)]
pub struct ReconcilerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// etcd's --max-txn-ops: a commit needing more operations is
    /// written in several transactions under an apply lock.
    #[arg(long, default_value_t = DEFAULT_MAX_TXN_OPS, value_parser = max_txn_ops_parser())]
    pub max_txn_ops: usize,
}

/// Accepts what can still switch a commit over in one transaction.
pub fn max_txn_ops_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(4..)
}

/// How the reconciler writes to an etcd with this `--max-txn-ops`.
pub fn apply_options(max_txn_ops: usize) -> ApplyOptions {
    ApplyOptions {
        max_txn_ops,
        ..ApplyOptions::default()
    }
}

/// `commitd scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// How a node agent runs on this machine.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address other nodes and the host reach this node at.
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
}

impl NodeArgs {
    /// The node name, defaulting to the host name as the kubelet does.
    pub fn name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.to_ascii_lowercase())
                .unwrap_or_else(|| "node".to_string())
        })
    }
}

/// `commitd nodeagent`.
#[derive(Args, Debug)]
pub struct NodeAgentArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd: PathBuf,
    /// Where the agent keeps pod logs.
    #[arg(long, default_value = "/var/lib/commitd/agent")]
    pub agent_dir: PathBuf,
}

/// A token cancelled by SIGINT or SIGTERM, so every loop stops cleanly.
pub fn shutdown_token() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    Ok(token)
}

/// Runs the reconciler until a signal.
pub async fn reconciler(args: ReconcilerArgs) -> anyhow::Result<ExitCode> {
    let store = args.cluster.connect().await?;
    let cancel = shutdown_token()?;
    commitd_reconciler::run_with(
        store,
        args.source.config(),
        apply_options(args.max_txn_ops),
        cancel,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the scheduler until a signal.
pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let store = args.cluster.connect().await?;
    let cancel = shutdown_token()?;
    commitd_scheduler::run(store, cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a node agent until a signal.
pub async fn nodeagent(args: NodeAgentArgs) -> anyhow::Result<ExitCode> {
    let store = args.cluster.connect().await?;
    let cancel = shutdown_token()?;
    let config = NodeAgentConfig {
        node_name: args.node.name(),
        containerd_socket: args.containerd,
        state_dir: args.agent_dir,
        node_ip: args.node.node_ip,
        runtime_handler: String::new(),
    };
    commitd_nodeagent::run(store, config, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
