//! One subcommand per component, each running alone against an existing
//! etcd: for installs of several processes or several machines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use commitd_api::encrypted_secrets::{self, Identities};
use commitd_api::service_network::{parse_port_range, ServiceNetwork};
use commitd_nodeagent::pod::service_links::ClusterDns;
use commitd_nodeagent::proxy::{DnsRedirect, ProxyConfig};
use commitd_nodeagent::NodeAgentConfig;
use commitd_reconciler::apply::{ApplyOptions, DEFAULT_MAX_TXN_OPS};
use commitd_reconciler::git_source::{
    GitSourceConfig, RemoteOptions, RepoLocation, DEFAULT_POLL_INTERVAL,
    DEFAULT_REMOTE_POLL_INTERVAL,
};
use commitd_reconciler::signatures::AllowedSigners;
use commitd_reconciler::trust::TrustPolicy;
use commitd_reconciler::webhook::WebhookConfig;
use tokio_util::sync::CancellationToken;

use super::ClusterArgs;

/// Where the desired state lives, and what a commit must be to be applied.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// The Git repository to follow: a local path (a work tree or a bare
    /// repository) or a remote URL (`https://…`, `ssh://…`,
    /// `git@host:org/repo.git`, `git://…`), fetched into a private mirror
    /// in the state directory.
    #[arg(long)]
    pub repo: PathBuf,
    /// Branch to follow (default: the branch HEAD names; for a remote, its
    /// default branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// What to follow instead of a branch: `tag:GLOB`, the newest tag by
    /// semantic version among those matching (`tag:v*`), or `branch:NAME`.
    #[arg(long = "ref", value_name = "REF", conflicts_with = "branch")]
    pub follow_ref: Option<String>,
    /// Folder inside the repository that holds the manifests.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Seconds between polls for new commits (default 30 for a local
    /// repository, whose ref changes are seen at once anyway, 60 for a
    /// remote one).
    #[arg(long, visible_alias = "interval")]
    pub poll_interval: Option<u64>,
    /// User name for a remote (HTTPS with a token or password, SSH).
    #[arg(long)]
    pub git_username: Option<String>,
    /// File holding an HTTPS access token for a remote.
    #[arg(long)]
    pub git_token_file: Option<PathBuf>,
    /// File holding an HTTPS password for a remote.
    #[arg(long)]
    pub git_password_file: Option<PathBuf>,
    /// SSH private key for a remote.
    #[arg(long)]
    pub ssh_key: Option<PathBuf>,
    /// File holding the SSH private key's passphrase.
    #[arg(long)]
    pub ssh_passphrase_file: Option<PathBuf>,
    /// known_hosts file the remote's SSH host key must be in (default
    /// ~/.ssh/known_hosts).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Address to receive push webhooks on (GitHub, GitLab, Gitea or a
    /// generic sender), at path /hooks/git; needs --webhook-secret-file.
    #[arg(long, requires = "webhook_secret_file")]
    pub webhook_addr: Option<SocketAddr>,
    /// File holding the webhook's shared secret (HMAC key or token).
    #[arg(long, requires = "webhook_addr")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Apply only commits whose SSH signature verifies against a key in
    /// this file (git's gpg.ssh.allowedSignersFile format); others are
    /// rejected and recorded, and the cluster stays as it is.
    #[arg(long, value_name = "ALLOWED_SIGNERS")]
    pub verify_commits: Option<PathBuf>,
    /// Refuse a head that does not descend from the applied commit (a
    /// force-push) instead of applying it with a warning.
    #[arg(long)]
    pub forbid_rewrites: bool,
    /// age identity file whose keys decrypt the Secret values committed
    /// encrypted (see `commitd secret encrypt`).
    #[arg(long)]
    pub age_identity: Option<PathBuf>,
}

impl SourceArgs {
    /// The Git source configuration these flags describe; a remote's
    /// mirror is kept under `state_dir`.
    pub fn config(&self, state_dir: &Path) -> anyhow::Result<GitSourceConfig> {
        let mut config = GitSourceConfig {
            repo: self.repo.clone(),
            branch: self.branch.clone(),
            path: self.path.clone(),
            ..GitSourceConfig::default()
        };
        match self.follow_ref.as_deref().map(|r| r.split_once(':')) {
            None => {}
            Some(Some(("tag", glob))) if !glob.is_empty() => config.tags = Some(glob.to_string()),
            Some(Some(("branch", name))) if !name.is_empty() => {
                config.branch = Some(name.to_string())
            }
            Some(_) => anyhow::bail!(
                "--ref {:?}: expected tag:GLOB (such as tag:v*) or branch:NAME",
                self.follow_ref.as_deref().unwrap_or_default()
            ),
        }
        let remote = matches!(config.location()?, RepoLocation::Remote(_));
        let default_interval = if remote {
            DEFAULT_REMOTE_POLL_INTERVAL
        } else {
            DEFAULT_POLL_INTERVAL
        };
        config.poll_interval = self
            .poll_interval
            .map_or(default_interval, |s| Duration::from_secs(s.max(1)));
        config.remote = RemoteOptions {
            mirror_dir: Some(state_dir.join("git-mirror")),
            username: self.git_username.clone(),
            token_file: self.git_token_file.clone(),
            password_file: self.git_password_file.clone(),
            ssh_key_file: self.ssh_key.clone(),
            ssh_passphrase_file: self.ssh_passphrase_file.clone(),
            known_hosts_file: self.known_hosts.clone(),
            fetch_timeout: None,
        };
        config.webhook = match (self.webhook_addr, &self.webhook_secret_file) {
            (Some(addr), Some(secret_file)) => Some(WebhookConfig {
                addr,
                secret_file: secret_file.clone(),
            }),
            _ => None,
        };
        let allowed_signers = self
            .verify_commits
            .as_deref()
            .map(AllowedSigners::load)
            .transpose()?
            .map(Arc::new);
        config.trust = TrustPolicy {
            allowed_signers,
            forbid_rewrites: self.forbid_rewrites,
        };
        Ok(config)
    }

    /// The age identities of `--age-identity`, if given.
    pub fn age_identities(&self) -> anyhow::Result<Option<Arc<Identities>>> {
        let Some(path) = &self.age_identity else {
            return Ok(None);
        };
        let identities = encrypted_secrets::load_identities(path)
            .with_context(|| format!("loading the age identities in {}", path.display()))?;
        Ok(Some(Arc::new(identities)))
    }

    /// Whether the repository is a local path (which `commitd up` may
    /// create).
    pub fn is_local(&self) -> bool {
        matches!(
            RepoLocation::parse(&self.repo.to_string_lossy()),
            Ok(RepoLocation::Local(_))
        )
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
    #[command(flatten)]
    pub services: ServiceNetworkArgs,
}

/// Where Services get their addresses and node ports (the API server's
/// flags of the same names).
#[derive(Args, Debug, Clone)]
pub struct ServiceNetworkArgs {
    /// The range ClusterIPs are allocated from; its tenth address is the
    /// cluster DNS.
    #[arg(long, default_value = commitd_api::service_network::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: ipnet::Ipv4Net,
    /// The range node ports are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
}

impl ServiceNetworkArgs {
    /// The service network these flags describe.
    pub fn network(&self) -> ServiceNetwork {
        ServiceNetwork {
            cidr: self.service_cidr.trunc(),
            node_ports: self.service_node_port_range.clone(),
        }
    }
}

/// Accepts what can still switch a commit over in one transaction.
pub fn max_txn_ops_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(4..)
}

/// How the reconciler writes to an etcd with this `--max-txn-ops`, and
/// allocates from this service network.
pub fn apply_options(
    max_txn_ops: usize,
    service_network: ServiceNetwork,
    age_identities: Option<Arc<Identities>>,
) -> ApplyOptions {
    ApplyOptions {
        max_txn_ops,
        service_network,
        age_identities,
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
    /// The cluster DNS address pods are pointed at (default: the tenth
    /// address of the service CIDR, 10.96.0.10).
    #[arg(long)]
    pub cluster_dns: Option<Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The port the node's cluster DNS server listens on (all addresses);
    /// the cluster DNS address's port 53 is redirected to it. 0: no DNS.
    #[arg(long, default_value_t = 10053)]
    pub dns_port: u16,
    /// The pod network of the whole cluster: traffic to a Service from
    /// outside it is masqueraded (kube-proxy's --cluster-cidr).
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The nftables table the service proxy owns.
    #[arg(long, default_value = commitd_nodeagent::proxy::DEFAULT_TABLE)]
    pub proxy_table: String,
    /// Seconds between full rewrites of the service rules (heals hand edits).
    #[arg(long, default_value_t = 30)]
    pub proxy_resync: u64,
    /// The port on the node IP where the agent serves container logs
    /// read-only over HTTP (the kubelet's read-only port), so
    /// `commitd logs` reads them from any machine. 0: no logs served.
    #[arg(long, default_value_t = commitd_nodeagent::logs::DEFAULT_READ_ONLY_PORT)]
    pub read_only_port: u16,
    /// How much local-path storage (a quantity: `10Gi`, `500Mi`) this node
    /// offers for volumes the built-in `local-path` StorageClass
    /// provisions in the agent's state dir (`<state dir>/agent/local-path`
    /// under `commitd up`). Default: the size of the filesystem holding it.
    #[arg(long, value_parser = parse_capacity)]
    pub local_path_capacity: Option<i64>,
}

/// A `--local-path-capacity` quantity, in bytes.
fn parse_capacity(s: &str) -> Result<i64, String> {
    let q = commitd_api::quantity::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    if q.is_negative() || q.is_zero() {
        return Err(format!("{s:?}: the capacity must be positive"));
    }
    Ok(q.value())
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

    /// The cluster DNS pods use; `service_network` gives the default
    /// address.
    pub fn cluster_dns(&self, service_network: &ServiceNetwork) -> ClusterDns {
        ClusterDns {
            nameserver: self.cluster_dns.unwrap_or_else(|| service_network.dns_ip()),
            domain: self.cluster_domain.trim_end_matches('.').to_string(),
        }
    }

    /// The node agent's configuration for these flags.
    pub fn agent_config(
        &self,
        containerd_socket: PathBuf,
        state_dir: PathBuf,
        service_network: &ServiceNetwork,
    ) -> NodeAgentConfig {
        let cluster_dns = self.cluster_dns(service_network);
        let nameserver = cluster_dns.nameserver;
        let dns_listen =
            (self.dns_port != 0).then(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.dns_port)));
        NodeAgentConfig {
            node_name: self.name(),
            containerd_socket,
            state_dir,
            node_ip: self.node_ip,
            runtime_handler: String::new(),
            cluster_dns: Some(cluster_dns),
            dns_listen,
            proxy: Some(ProxyConfig {
                table: self.proxy_table.clone(),
                cluster_cidr: self.cluster_cidr.map(|c| c.trunc()),
                dns: dns_listen.map(|l| DnsRedirect {
                    vip: nameserver,
                    port: l.port(),
                }),
                resync_interval: Duration::from_secs(self.proxy_resync.max(1)),
            }),
            read_only_port: (self.read_only_port != 0).then_some(self.read_only_port),
            local_path_capacity: self.local_path_capacity,
        }
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
        args.source.config(&args.cluster.state_dir)?,
        apply_options(
            args.max_txn_ops,
            args.services.network(),
            args.source.age_identities()?,
        ),
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
    let config =
        args.node
            .agent_config(args.containerd, args.agent_dir, &ServiceNetwork::default());
    commitd_nodeagent::run(store, config, cancel).await?;
    Ok(ExitCode::SUCCESS)
}
