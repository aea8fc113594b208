//! The kubelet of one node: registers the Node, keeps its lease alive, and
//! runs one worker per pod bound to the node.
//!
//! A dispatcher matches workers to pods. It watches the Pod cache (a worker
//! per pod whose `spec.nodeName` is this node, fed every new version of
//! the object) and relists the runtime every second, the kubelet's PLEG:
//! a pod whose containers changed state gets its worker woken, and
//! anything labelled for this node that belongs to no pod gets a worker
//! that removes it. Adoption after a restart is nothing special: workers
//! only ever act on what the runtime reports for their pod's uid.
//!
//! Every task the agent starts ends with the future of [`run`], however it
//! ends — cancelled, failed, or dropped mid-flight like a killed process.
//! Containers are never stopped on the way out: a restarted agent adopts
//! them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use commitd_api::backoff::Backoff;
use commitd_api::controller::ApplyGate;
use commitd_api::reflector::{reflect, sleep_or_cancel, Cache};
use commitd_api::Store;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::cri::Cri;
use crate::dns;
use crate::local_path;
use crate::logs::{LogServer, LogSource};
use crate::node::{self, NodeFacts};
use crate::pod::service_links::ClusterDns;
use crate::pod::worker::{self, WorkerContext};
use crate::pod::{LABEL_NODE, LABEL_POD_UID};
use crate::proxy::{self, ProxyConfig};

/// How often the runtime is relisted to notice container exits.
pub const RELIST_PERIOD: Duration = Duration::from_secs(1);
/// Longest a relist may take before it is abandoned for this round.
const RELIST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for the heartbeat to revoke its lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run the node agent.
#[derive(Debug, Clone)]
pub struct NodeAgentConfig {
    /// The Node's name; pods with this `spec.nodeName` run here.
    pub node_name: String,
    /// containerd's CRI socket.
    pub containerd_socket: PathBuf,
    /// Where the agent keeps files of its own (pod logs under `pods/`).
    pub state_dir: PathBuf,
    /// The node's IP; default: the first non-loopback IPv4, else 127.0.0.1.
    pub node_ip: Option<IpAddr>,
    /// CRI runtime handler for every sandbox ("" = the runtime's default).
    pub runtime_handler: String,
    /// The cluster DNS pods are pointed at; `None`: pods use the node's
    /// own resolvers.
    pub cluster_dns: Option<ClusterDns>,
    /// Serve cluster DNS on this address (`0.0.0.0:port`); the proxy sends
    /// the cluster DNS address's port 53 there.
    pub dns_listen: Option<SocketAddr>,
    /// Program service rules (kube-proxy); `None`: no service rules.
    pub proxy: Option<ProxyConfig>,
    /// Serve container logs read-only over HTTP on this port of the node
    /// IP (the kubelet's read-only port, [`crate::logs::DEFAULT_READ_ONLY_PORT`];
    /// 0: any free port), so `commitd logs` can read them from anywhere.
    /// The port bound is published on the Node. `None`: no logs served.
    pub read_only_port: Option<u16>,
    /// Bytes of local-path volumes this node takes, published as the
    /// `commitd.io/local-path` capacity; `None`: the size of the
    /// filesystem holding the state dir.
    pub local_path_capacity: Option<i64>,
}

/// Runs the node agent until `cancel` fires. Waits (with back-off) for
/// the runtime and etcd rather than failing when they are not up yet;
/// returns an error only for what retrying cannot fix.
pub async fn run(
    store: Store,
    config: NodeAgentConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // Stops every task below when this future ends, even by being dropped.
    let local = cancel.child_token();
    let _stop_children = local.clone().drop_guard();
    let span = info_span!("nodeagent", node = %config.node_name);
    async move {
        let state_dir = std::path::absolute(&config.state_dir)
            .with_context(|| format!("resolving {}", config.state_dir.display()))?;
        tokio::fs::create_dir_all(state_dir.join("pods"))
            .await
            .with_context(|| format!("creating {}", state_dir.join("pods").display()))?;
        let node_ip = config.node_ip.unwrap_or_else(node::default_node_ip);

        let Some((cri, runtime_version)) = connect(&config.containerd_socket, &local).await else {
            return Ok(());
        };
        info!(runtime = %runtime_version, %node_ip, "connected to the container runtime");
        // Bound before registering, so the Node names the port bound.
        let log_server = match config.read_only_port {
            Some(port) => {
                let addr = SocketAddr::new(node_ip, port);
                let server = LogServer::bind(addr)
                    .await
                    .context("serving container logs")?;
                info!(addr = %server.local_addr(), "serving container logs (read-only port)");
                Some(server)
            }
            None => None,
        };
        let mut facts = NodeFacts::gather(&config.node_name, node_ip, runtime_version);
        facts.read_only_port = log_server.as_ref().map(|s| s.local_addr().port());
        facts.local_path = Some(
            local_path::prepare(&state_dir, config.local_path_capacity)
                .await
                .context("preparing local-path storage")?,
        );
        let capacity = (
            i64::try_from(facts.cpus)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            i64::try_from(facts.memory_ki)
                .unwrap_or(i64::MAX)
                .saturating_mul(1024),
        );
        if !register(&store, &facts, &local).await {
            return Ok(());
        }

        let mut tasks = JoinSet::new();
        tasks.spawn(
            node::heartbeat(store.clone(), config.node_name.clone(), local.clone())
                .instrument(info_span!("heartbeat")),
        );
        tasks.spawn(
            node::keep_status(store.clone(), facts, local.clone())
                .instrument(info_span!("node_status")),
        );

        let pods = reflect::<Pod>(store.clone(), local.clone());
        let services = reflect::<Service>(store.clone(), local.clone());
        let config_maps = reflect::<ConfigMap>(store.clone(), local.clone());
        let secrets = reflect::<Secret>(store.clone(), local.clone());
        let claims = reflect::<PersistentVolumeClaim>(store.clone(), local.clone());
        let volumes = reflect::<PersistentVolume>(store.clone(), local.clone());
        start_service_networking(&config, &services, &store, &local, &mut tasks).await?;
        // Pods are not picked up or dropped while a commit is half-applied.
        let gate = ApplyGate::watch(store.clone(), local.clone());
        // Containers read ConfigMaps and Secrets at start: an empty cache
        // would read as "not found".
        tokio::select! {
            _ = async {
                pods.ready().await;
                config_maps.ready().await;
                secrets.ready().await;
                claims.ready().await;
                volumes.ready().await;
            } => {}
            _ = local.cancelled() => return Ok(()),
        }
        tasks.spawn(
            local_path::run(
                store.clone(),
                config.node_name.clone(),
                local_path::root(&state_dir),
                volumes.clone(),
                pods.clone(),
                local.clone(),
            )
            .instrument(info_span!("local_path")),
        );
        info!("pod cache ready; running pods");
        if let Some(server) = log_server {
            let source = LogSource {
                pods: Arc::new(pods.clone()),
                node_name: config.node_name.clone(),
                pods_dir: state_dir.join("pods"),
            };
            tasks.spawn(
                server
                    .serve(source, local.clone())
                    .instrument(info_span!("logs")),
            );
        }
        let ctx = Arc::new(WorkerContext {
            cri,
            store,
            node_name: config.node_name.clone(),
            host_ip: node_ip.to_string(),
            state_dir,
            runtime_handler: config.runtime_handler.clone(),
            cluster_dns: config.cluster_dns.clone(),
            services: services.clone(),
            config_maps,
            secrets,
            claims,
            volumes,
            node_cpu_millis: capacity.0,
            node_memory_bytes: capacity.1,
        });
        Dispatcher::new(ctx, pods, gate, local.clone()).run().await;

        // Graceful stop: let the heartbeat revoke the lease.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!("background tasks did not stop in time");
        }
        info!("node agent stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Starts the cluster DNS server and the service proxy this node runs.
async fn start_service_networking(
    config: &NodeAgentConfig,
    services: &Cache<Service>,
    store: &Store,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    if config.dns_listen.is_none() && config.proxy.is_none() {
        return Ok(());
    }
    let endpoints = reflect::<Endpoints>(store.clone(), cancel.clone());
    if let (Some(listen), Some(cluster_dns)) = (config.dns_listen, &config.cluster_dns) {
        let dns_config = dns::DnsConfig {
            listen,
            domain: cluster_dns.domain.clone(),
            upstreams: dns::upstreams_from_resolv_conf(Path::new("/etc/resolv.conf")),
        };
        let directory = dns::CacheDirectory::new(services.clone(), endpoints.clone());
        let server = dns::bind(dns_config, directory)
            .await
            .with_context(|| format!("serving cluster DNS on {listen}"))?;
        info!(addr = %server.local_addr(), domain = %cluster_dns.domain, "serving cluster DNS");
        let cancel = cancel.clone();
        tasks.spawn(
            async move {
                if let Err(e) = server.serve(cancel).await {
                    error!(error = %format!("{e:#}"), "cluster DNS stopped");
                }
            }
            .instrument(info_span!("dns")),
        );
    }
    if let Some(proxy_config) = config.proxy.clone() {
        let (services, cancel) = (services.clone(), cancel.clone());
        tasks.spawn(
            async move {
                if let Err(e) = proxy::run(services, endpoints, proxy_config, cancel).await {
                    error!(error = %format!("{e:#}"), "service proxy stopped");
                }
            }
            .instrument(info_span!("proxy")),
        );
    }
    Ok(())
}

/// Connects to the runtime, retrying until it answers `Version`. None if
/// cancelled first.
async fn connect(socket: &Path, cancel: &CancellationToken) -> Option<(Cri, String)> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let attempt = async {
            let cri = Cri::connect(socket).await?;
            let version = cri.version().await?;
            Ok::<_, crate::cri::CriError>((
                cri,
                format!("{}://{}", version.runtime_name, version.runtime_version),
            ))
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return None,
            result = attempt => result,
        };
        match result {
            Ok(connected) => return Some(connected),
            Err(e) => {
                let d = backoff.next_delay();
                warn!(error = %e, retry_in = ?d, "container runtime not available");
                if sleep_or_cancel(d, cancel).await {
                    return None;
                }
            }
        }
    }
}

/// Registers the Node, retrying until it succeeds. False if cancelled.
async fn register(store: &Store, facts: &NodeFacts, cancel: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return false,
            result = node::register(store, facts) => result,
        };
        match result {
            Ok(_) => {
                info!("node registered");
                return true;
            }
            Err(e) => {
                let d = backoff.next_delay();
                warn!(error = format!("{e:#}"), retry_in = ?d, "registering the node failed");
                if sleep_or_cancel(d, cancel).await {
                    return false;
                }
            }
        }
    }
}

struct WorkerHandle {
    pods: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
}

/// Keeps exactly one worker per pod uid: one for every pod bound here, and
/// one for every uid the runtime still holds something of.
struct Dispatcher {
    ctx: Arc<WorkerContext>,
    pods: Cache<Pod>,
    gate: ApplyGate,
    cancel: CancellationToken,
    workers: HashMap<String, WorkerHandle>,
    tasks: JoinSet<()>,
    task_uids: HashMap<tokio::task::Id, String>,
    fingerprints: HashMap<String, u64>,
    relist_failing: bool,
}

impl Dispatcher {
    fn new(
        ctx: Arc<WorkerContext>,
        pods: Cache<Pod>,
        gate: ApplyGate,
        cancel: CancellationToken,
    ) -> Dispatcher {
        Dispatcher {
            ctx,
            pods,
            gate,
            cancel,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_uids: HashMap::new(),
            fingerprints: HashMap::new(),
            relist_failing: false,
        }
    }

    async fn run(mut self) {
        let mut changes = self.pods.changes();
        let mut gate_changes = self.gate.changes();
        // A container waiting for a ConfigMap or Secret starts as soon as it
        // appears: every worker looks again when one changes.
        let mut config_changes = self.ctx.config_maps.changes();
        let mut secret_changes = self.ctx.secrets.changes();
        let mut relist = tokio::time::interval(RELIST_PERIOD);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            changes.borrow_and_update();
            gate_changes.borrow_and_update();
            let open = self.gate.is_open();
            if open {
                self.sync_workers();
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                changed = gate_changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Ok(()) = config_changes.changed() => self.wake_all(),
                Ok(()) = secret_changes.changed() => self.wake_all(),
                // The relist removes runtime objects of pods it has no
                // worker for, so it runs only right after a sync.
                _ = relist.tick() => if open { self.relist().await },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finished(done);
                }
            }
        }
        // Dropping the JoinSet aborts whatever worker is still running;
        // they observed the cancellation already. Containers keep running.
    }

    /// Feeds every worker the latest version of its pod, starting workers
    /// for new pods and telling workers whose pod left that it is gone.
    fn sync_workers(&mut self) {
        let node = self.ctx.node_name.as_str();
        let mine: HashMap<String, Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .filter_map(|p| {
                let uid = p.metadata.uid.clone().filter(|u| !u.is_empty())?;
                Some((uid, p))
            })
            .collect();
        for (uid, pod) in &mine {
            match self.workers.get(uid) {
                Some(handle) => {
                    handle.pods.send_if_modified(|current| match current {
                        Some(p) if Arc::ptr_eq(p, pod) => false,
                        _ => {
                            *current = Some(pod.clone());
                            true
                        }
                    });
                }
                None => self.spawn(uid, Some(pod.clone())),
            }
        }
        for (uid, handle) in &self.workers {
            if !mine.contains_key(uid) {
                handle
                    .pods
                    .send_if_modified(|current| current.take().is_some());
            }
        }
    }

    fn spawn(&mut self, uid: &str, pod: Option<Arc<Pod>>) {
        let key = pod.as_ref().map_or_else(
            || format!("<gone>/{uid}"),
            |p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            },
        );
        let (tx, rx) = watch::channel(pod);
        let wake = Arc::new(Notify::new());
        let span = info_span!("pod", pod = %key, uid = %uid);
        let handle = self.tasks.spawn(
            worker::run(
                self.ctx.clone(),
                uid.to_string(),
                rx,
                wake.clone(),
                self.cancel.clone(),
            )
            .instrument(span),
        );
        self.task_uids.insert(handle.id(), uid.to_string());
        self.workers
            .insert(uid.to_string(), WorkerHandle { pods: tx, wake });
    }

    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match &done {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let Some(uid) = self.task_uids.remove(&id) else {
            return;
        };
        self.workers.remove(&uid);
        self.fingerprints.remove(&uid);
        if let Err(e) = done {
            if e.is_panic() {
                // The next sync starts a fresh worker if the pod still exists.
                error!(%uid, "pod worker panicked; restarting it");
            }
        }
    }

    /// Has every worker look at its pod again.
    fn wake_all(&self) {
        for handle in self.workers.values() {
            handle.wake.notify_one();
        }
    }

    /// The PLEG: one listing of everything labelled for this node; wakes
    /// the workers of pods whose runtime state changed and starts workers
    /// for uids nobody owns (orphans, which those workers remove).
    async fn relist(&mut self) {
        let cri = &self.ctx.cri;
        let labels = BTreeMap::from([(LABEL_NODE.to_string(), self.ctx.node_name.clone())]);
        let listing = tokio::time::timeout(RELIST_TIMEOUT, async {
            let sandboxes = cri.list_pod_sandboxes(&labels).await?;
            let containers = cri.list_containers(&labels).await?;
            Ok::<_, crate::cri::CriError>((sandboxes, containers))
        })
        .await;
        let (sandboxes, containers) = match listing {
            Ok(Ok(listing)) => {
                if self.relist_failing {
                    info!("runtime relist works again");
                    self.relist_failing = false;
                }
                listing
            }
            Ok(Err(e)) => {
                if !self.relist_failing {
                    warn!(error = %e, "runtime relist failed");
                    self.relist_failing = true;
                }
                return;
            }
            Err(_) => {
                if !self.relist_failing {
                    warn!("runtime relist timed out");
                    self.relist_failing = true;
                }
                return;
            }
        };

        let mut states: HashMap<String, Vec<(String, i32)>> = HashMap::new();
        for s in &sandboxes {
            let uid = s
                .labels
                .get(LABEL_POD_UID)
                .cloned()
                .or_else(|| s.metadata.as_ref().map(|m| m.uid.clone()))
                .filter(|u| !u.is_empty());
            match uid {
                Some(uid) => states.entry(uid).or_default().push((s.id.clone(), s.state)),
                None => self.remove_unowned_sandbox(&s.id).await,
            }
        }
        for c in &containers {
            match c.labels.get(LABEL_POD_UID).filter(|u| !u.is_empty()) {
                Some(uid) => states
                    .entry(uid.clone())
                    .or_default()
                    .push((c.id.clone(), c.state)),
                None => self.remove_unowned_container(&c.id).await,
            }
        }

        let mut seen = HashMap::with_capacity(states.len());
        for (uid, mut items) in states {
            items.sort();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            items.hash(&mut hasher);
            seen.insert(uid, hasher.finish());
        }
        for (uid, fingerprint) in &seen {
            let changed = self.fingerprints.get(uid) != Some(fingerprint);
            match self.workers.get(uid) {
                Some(handle) if changed => handle.wake.notify_one(),
                Some(_) => {}
                None => {
                    info!(%uid, "runtime holds objects of no pod on this node; removing them");
                    self.spawn(uid, None);
                }
            }
        }
        // Pods whose last runtime object vanished changed state too.
        for uid in self.fingerprints.keys() {
            if !seen.contains_key(uid) {
                if let Some(handle) = self.workers.get(uid) {
                    handle.wake.notify_one();
                }
            }
        }
        self.fingerprints = seen;
    }

    /// A sandbox labelled for this node but without any pod uid was not
    /// made by an agent: remove it by id.
    async fn remove_unowned_sandbox(&self, id: &str) {
        warn!(sandbox = %id, "removing a sandbox labelled for this node without a pod uid");
        let cri = &self.ctx.cri;
        if let Err(e) = cri.stop_pod_sandbox(id).await {
            debug!(sandbox = %id, error = %e, "stopping unowned sandbox failed");
        }
        if let Err(e) = cri.remove_pod_sandbox(id).await {
            warn!(sandbox = %id, error = %e, "removing unowned sandbox failed");
        }
    }

    /// Same for a container without a pod uid.
    async fn remove_unowned_container(&self, id: &str) {
        warn!(container = %id, "removing a container labelled for this node without a pod uid");
        let cri = &self.ctx.cri;
        if let Err(e) = cri.stop_container(id, node_grace()).await {
            debug!(container = %id, error = %e, "stopping unowned container failed");
        }
        if let Err(e) = cri.remove_container(id).await {
            warn!(container = %id, error = %e, "removing unowned container failed");
        }
    }
}

/// Grace period for containers of no pod (their own is unknown).
fn node_grace() -> i64 {
    crate::pod::desired::MIN_GRACE_SECONDS
}
