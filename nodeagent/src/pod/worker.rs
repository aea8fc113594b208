//! The task that runs one pod: observe the runtime, decide, report status,
//! take the step, and again — until the pod is gone and nothing of it is
//! left. One worker per pod uid, so two reconciles of one pod never run at
//! once, and a slow image pull stalls nobody else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use commitd_api::backoff::Backoff;
use commitd_api::reflector::Cache;
use commitd_api::Store;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decide::{decide, Memory, PodState, PullFailure, Step};
use super::desired::{DesiredContainer, DesiredPod, PullPolicy};
use super::lifecycle::{self, Hook};
use super::observe::{observe, Observed};
use super::security;
use super::service_links::{self, ClusterDns};
use super::spec::{container_config, referenced_objects, sandbox_config, EnvFacts, Instance};
use super::{cgroup_parent, log_dir_name, now_ns, sanitize, termination, volumes};
use crate::cri::proto::PodSandboxConfig;
use crate::cri::{cgroup_cleanup, Cri, CriError};
use crate::probe::runner::RunningInstance;
use crate::probe::Probers;
use crate::status::{pod_status, StatusInput};

/// The least time a postStart hook is given (the pod's grace period if
/// longer).
const POST_START_LIMIT_SECS: u64 = 30;
/// A worker looks again at least this often even if nothing wakes it.
pub const RESYNC: Duration = Duration::from_secs(10);
/// The same step repeated this many times without the runtime changing
/// is treated as a failure, so a step that silently does nothing cannot
/// spin.
const MAX_REPEATS: u32 = 3;

/// What every worker of a node shares.
pub struct WorkerContext {
    /// The runtime.
    pub cri: Cri,
    /// etcd, for status writes and the final delete.
    pub store: Store,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (the pods' `hostIP`).
    pub host_ip: String,
    /// Absolute; pod log directories live under `<state_dir>/pods/`.
    pub state_dir: PathBuf,
    /// CRI runtime handler for sandboxes ("" = default).
    pub runtime_handler: String,
    /// The cluster DNS pods are pointed at (`None`: the node's resolvers).
    pub cluster_dns: Option<ClusterDns>,
    /// The Services, for the service environment variables.
    pub services: Cache<Service>,
    /// ConfigMaps and Secrets, for environment variables.
    pub config_maps: Cache<ConfigMap>,
    /// See [`WorkerContext::config_maps`].
    pub secrets: Cache<Secret>,
    /// Claims and volumes, for `persistentVolumeClaim` volumes.
    pub claims: Cache<PersistentVolumeClaim>,
    /// See [`WorkerContext::claims`].
    pub volumes: Cache<PersistentVolume>,
    /// The node's CPU in millicores, for `resourceFieldRef` without a limit.
    pub node_cpu_millis: i64,
    /// The node's memory in bytes, likewise.
    pub node_memory_bytes: i64,
}

impl WorkerContext {
    /// The directory of all pod log directories.
    pub fn pods_dir(&self) -> PathBuf {
        self.state_dir.join("pods")
    }

    /// The directory of all pods' volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        volumes_root(&self.state_dir)
    }

    /// The pod's sandbox config on this node.
    fn sandbox_config(
        &self,
        pod: &Pod,
        desired: &DesiredPod,
        log_dir: &Path,
        attempt: u32,
    ) -> PodSandboxConfig {
        let dns = service_links::dns_config(pod, self.cluster_dns.as_ref());
        sandbox_config(pod, desired, &self.node_name, log_dir, attempt, dns)
    }
}

/// What a pass asks the loop to do next.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A step ran: observe again at once.
    Again,
    /// Nothing to do until woken, or until the requeue time.
    Idle(Option<Duration>),
    /// The pod is gone and nothing is left: stop.
    Finished,
}

/// Runs the pod `uid` until it is gone and cleaned up, or `cancel` fires.
/// `pods` carries the latest Pod object (None once it left etcd or this
/// node); `wake` is poked when the runtime's view of the pod changes.
pub async fn run(
    ctx: Arc<WorkerContext>,
    uid: String,
    mut pods: watch::Receiver<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut worker = Worker {
        ctx,
        uid,
        memory: Memory::default(),
        last_state: None,
        last_step: None,
        repeats: 0,
        warned: BTreeSet::new(),
        probers: Probers::new(wake.clone()),
        volumes: None,
    };
    let mut errors = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let pod = pods.borrow_and_update().clone();
        let tearing_down = pod
            .as_ref()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        // A deletion interrupts whatever step is in flight (a slow pull, a
        // long stop): the teardown decides again from what the runtime has.
        let mut interrupt = pods.clone();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = deletion_requested(&mut interrupt), if !tearing_down => {
                debug!("deletion requested; interrupting the current step");
                continue;
            }
            result = worker.pass(pod.as_deref()) => result,
        };
        let wait = match result {
            Ok(Outcome::Again) => {
                errors.reset();
                continue;
            }
            Ok(Outcome::Finished) => {
                debug!("pod gone and cleaned up");
                return;
            }
            Ok(Outcome::Idle(requeue)) => {
                errors.reset();
                requeue.map_or(RESYNC, |r| r.min(RESYNC))
            }
            Err(e) => {
                let delay = errors.next_delay();
                warn!(error = format!("{e:#}"), retry_in = ?delay, "pod step failed");
                delay
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            changed = pods.changed() => {
                if changed.is_err() {
                    // The dispatcher is gone: the agent is stopping.
                    return;
                }
            }
            _ = wake.notified() => {}
        }
    }
}

/// Resolves once the pod is being deleted or has gone.
async fn deletion_requested(pods: &mut watch::Receiver<Option<Arc<Pod>>>) {
    loop {
        if pods.changed().await.is_err() {
            return std::future::pending().await;
        }
        let gone = pods
            .borrow()
            .as_ref()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        if gone {
            return;
        }
    }
}

struct Worker {
    ctx: Arc<WorkerContext>,
    uid: String,
    memory: Memory,
    last_state: Option<PodState>,
    last_step: Option<Step>,
    repeats: u32,
    warned: BTreeSet<String>,
    probers: Probers,
    /// Where the pod's volumes are on the host, from the last set-up.
    volumes: Option<Result<BTreeMap<String, PathBuf>, volumes::VolumeError>>,
}

impl Worker {
    /// One observe → decide → report → act cycle.
    async fn pass(&mut self, pod: Option<&Pod>) -> anyhow::Result<Outcome> {
        let pod = pod.filter(|p| p.metadata.uid.as_deref() == Some(self.uid.as_str()));
        let desired = pod.and_then(DesiredPod::from_pod);
        let mut observed = observe(&self.ctx.cri, &self.uid)
            .await
            .context("observing the pod in the runtime")?;
        self.read_termination_messages(pod, &mut observed).await;
        self.probers
            .sync(&self.ctx.cri, to_probe(desired.as_ref(), &observed));
        self.memory.probes = self.probers.results();
        if let (Some(pod), Some(desired)) = (pod, desired.as_ref()) {
            if desired.deletion_grace.is_none() && observed.current_sandbox().is_some() {
                self.set_up_volumes(pod, desired, &observed).await;
            }
        }
        let now = now_ns();
        let decision = decide(desired.as_ref(), &observed, &self.memory, now);
        if self.last_state != Some(decision.state) {
            info!(state = ?decision.state, "pod state");
            self.last_state = Some(decision.state);
        }
        if let (Some(pod), Some(desired)) = (pod, desired.as_ref()) {
            self.warn_unsupported(pod);
            if desired.deletion_grace.is_none() {
                self.report(pod, desired, &observed, &decision, now).await;
            }
        }
        let step = decision.step;
        if !matches!(step, Step::Idle { .. }) {
            if self.last_step.as_ref() == Some(&step) {
                self.repeats += 1;
                if self.repeats >= MAX_REPEATS {
                    self.repeats = 0;
                    self.last_step = None;
                    return Err(anyhow!(
                        "step {} made no progress after {MAX_REPEATS} attempts",
                        step.name()
                    ));
                }
            } else {
                self.repeats = 0;
                self.last_step = Some(step.clone());
            }
        } else {
            self.last_step = None;
            self.repeats = 0;
        }
        debug!(step = step.name(), "next step");
        self.execute(pod, desired.as_ref(), &observed, step).await
    }

    /// Writes the pod status if it differs from the stored one. Failures
    /// are logged, not returned: status is retried on the next pass, and
    /// an etcd outage must not stop containers from being run.
    async fn report(
        &self,
        pod: &Pod,
        desired: &DesiredPod,
        observed: &Observed,
        decision: &super::decide::Decision,
        now: i64,
    ) {
        let build = |p: &Pod| {
            pod_status(
                p.status.as_ref(),
                StatusInput {
                    pod: p,
                    desired,
                    observed,
                    decision,
                    memory: &self.memory,
                    host_ip: &self.ctx.host_ip,
                    now,
                },
            )
        };
        // Cheap check against the cache first; the write path re-checks
        // against the stored object, so a stale cache never causes a write.
        if pod.status.as_ref() == Some(&build(pod)) {
            return;
        }
        let uid = self.uid.as_str();
        let result = self
            .ctx
            .store
            .modify::<Pod, _>(Some(&desired.namespace), &desired.name, |fresh| {
                if fresh.metadata.uid.as_deref() != Some(uid)
                    || fresh.metadata.deletion_timestamp.is_some()
                {
                    return false;
                }
                let status = build(fresh);
                if fresh.status.as_ref() == Some(&status) {
                    return false;
                }
                fresh.status = Some(status);
                true
            })
            .await;
        match result {
            Ok(_) => debug!("status written"),
            Err(e) => warn!(error = %e, "writing pod status failed; will retry"),
        }
    }

    /// Says out loud, once per pod, what the agent does not support yet.
    fn warn_unsupported(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let mut notes = Vec::new();
        if spec.host_network == Some(true) {
            notes
                .push("hostNetwork is not supported yet; the pod gets its own network".to_string());
        }
        for note in notes {
            if self.warned.insert(note.clone()) {
                warn!("{note}");
            }
        }
    }

    async fn execute(
        &mut self,
        pod: Option<&Pod>,
        desired: Option<&DesiredPod>,
        observed: &Observed,
        step: Step,
    ) -> anyhow::Result<Outcome> {
        let cri = &self.ctx.cri;
        match step {
            Step::Idle { requeue } => Ok(Outcome::Idle(requeue)),
            Step::Finished => Ok(Outcome::Finished),
            Step::StopContainers { ids, grace } => {
                info!(containers = ?ids, grace, "stopping containers");
                let pod_ip = observed.current_sandbox().and_then(|s| s.ip);
                let mut stops = tokio::task::JoinSet::new();
                for id in ids {
                    let cri = cri.clone();
                    // The instance's container spec, for its preStop hook.
                    let spec = observed
                        .containers
                        .iter()
                        .find(|c| c.id == id)
                        .and_then(|c| spec_container(pod, &c.name))
                        .cloned();
                    stops.spawn(async move {
                        let mut left = u64::try_from(grace).unwrap_or(0);
                        if let Some((c, hook)) = spec
                            .as_ref()
                            .and_then(|c| Some((c, lifecycle::handler(c, Hook::PreStop)?)))
                        {
                            let limit = Duration::from_secs(left);
                            let start = tokio::time::Instant::now();
                            if let Err(e) = lifecycle::run(&cri, c, &id, pod_ip, &hook, limit).await {
                                warn!(container = %c.name, reason = Hook::PreStop.failure_reason(), error = %e, "preStop hook failed");
                            }
                            left = lifecycle::grace_after_hook(limit, start.elapsed()).as_secs();
                        }
                        let left = i64::try_from(left).unwrap_or(grace);
                        ignore_not_found(cri.stop_container(&id, left).await)
                            .with_context(|| format!("stopping container {id}"))
                    });
                }
                while let Some(joined) = stops.join_next().await {
                    joined.context("stop task panicked")??;
                }
                Ok(Outcome::Again)
            }
            Step::StopSandbox { id } => {
                info!(sandbox = %id, "stopping sandbox");
                ignore_not_found(cri.stop_pod_sandbox(&id).await)
                    .with_context(|| format!("stopping sandbox {id}"))?;
                Ok(Outcome::Again)
            }
            Step::RemoveContainers { containers } => {
                for (id, log_path) in containers {
                    debug!(container = %id, "removing container");
                    ignore_not_found(cri.remove_container(&id).await)
                        .with_context(|| format!("removing container {id}"))?;
                    remove_log_file(&log_path).await;
                }
                Ok(Outcome::Again)
            }
            Step::RemoveSandbox { id } => {
                info!(sandbox = %id, "removing sandbox");
                ignore_not_found(cri.remove_pod_sandbox(&id).await)
                    .with_context(|| format!("removing sandbox {id}"))?;
                Ok(Outcome::Again)
            }
            Step::CleanUpHost => {
                self.clean_up_host().await?;
                self.memory.host_cleaned = true;
                Ok(Outcome::Again)
            }
            Step::DeletePod => {
                self.delete_pod(desired).await?;
                // Wait for the cache to drop it; the next pass finishes.
                Ok(Outcome::Idle(None))
            }
            Step::CreateSandbox { attempt } => {
                let (pod, desired) = pod.zip(desired).context("no pod to create a sandbox for")?;
                let log_dir = self.log_dir(desired);
                tokio::fs::create_dir_all(&log_dir)
                    .await
                    .with_context(|| format!("creating {}", log_dir.display()))?;
                let config = self.ctx.sandbox_config(pod, desired, &log_dir, attempt);
                let id = cri
                    .run_pod_sandbox(&config, &self.ctx.runtime_handler)
                    .await
                    .context("creating the pod sandbox")?;
                info!(sandbox = %id, attempt, "sandbox running");
                Ok(Outcome::Again)
            }
            Step::StartContainer {
                name,
                restart_count,
                backoff,
            } => {
                let (pod, desired) = pod
                    .zip(desired)
                    .context("no pod to start a container for")?;
                self.start_container(pod, desired, observed, &name, restart_count, backoff)
                    .await
            }
            Step::ResumeContainer { name, id } => match cri.start_container(&id).await {
                Ok(()) => {
                    info!(container = %name, id = %id, "container started");
                    self.memory.run_errors.remove(&name);
                    Ok(Outcome::Again)
                }
                Err(e) => {
                    self.memory.run_errors.insert(name.clone(), e.to_string());
                    Err(anyhow!(e).context(format!("starting container {name}")))
                }
            },
        }
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        desired: &DesiredPod,
        observed: &Observed,
        name: &str,
        restart_count: u32,
        backoff: Duration,
    ) -> anyhow::Result<Outcome> {
        let sandbox = observed
            .current_sandbox()
            .context("no ready sandbox to start a container in")?;
        let spec = spec_container(Some(pod), name)
            .with_context(|| format!("container {name} is not in the pod spec"))?;
        let wanted = desired
            .containers
            .iter()
            .chain(&desired.init_containers)
            .find(|c| c.name == name)
            .with_context(|| format!("container {name} is not in the pod spec"))?;
        let log_dir = self.log_dir(desired);
        tokio::fs::create_dir_all(&log_dir)
            .await
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let sandbox_config = self
            .ctx
            .sandbox_config(pod, desired, &log_dir, sandbox.attempt);
        let image_ref = match self.ensure_image(wanted, &sandbox_config).await {
            Ok(image_ref) => {
                self.memory.pull_failures.remove(name);
                image_ref
            }
            Err((message, never)) => {
                warn!(container = %name, image = %wanted.image, error = %message, "image not available");
                let failure = PullFailure::after(
                    self.memory.pull_failures.get(name),
                    &wanted.image,
                    message,
                    never,
                    now_ns(),
                );
                self.memory.pull_failures.insert(name.to_string(), failure);
                // Not an error of the worker: the pull back-off governs.
                return Ok(Outcome::Again);
            }
        };
        // The kubelet's `runAsNonRoot` check, against the image's own user.
        let image_user = self
            .ctx
            .cri
            .image_user(&image_ref)
            .await
            .with_context(|| format!("reading the user of image {image_ref}"))?;
        let pod_display = desired.display();
        if let Err(e) =
            security::verify_run_as_non_root(pod, spec, &pod_display, image_user.as_ref())
        {
            self.memory
                .config_errors
                .insert(name.to_string(), e.to_string());
            return Err(anyhow!(e).context(format!("configuring container {name}")));
        }
        let (config_maps, secrets) = self.env_sources(pod, &desired.namespace);
        let facts = EnvFacts {
            node_name: self.ctx.node_name.clone(),
            host_ip: self.ctx.host_ip.clone(),
            pod_ip: sandbox.ip.map(|ip| ip.to_string()),
            service_env: service_links::service_env(pod, &self.ctx.services.list()),
            config_maps,
            secrets,
            node_cpu_millis: self.ctx.node_cpu_millis,
            node_memory_bytes: self.ctx.node_memory_bytes,
        };
        let instance = Instance {
            restart_count,
            backoff,
            spec_hash: &wanted.hash,
            image_ref: &image_ref,
        };
        let paths = match &self.volumes {
            Some(Ok(paths)) => paths.clone(),
            Some(Err(e)) => {
                return Err(anyhow!(e.clone()).context(format!("starting container {name}")))
            }
            None => BTreeMap::new(),
        };
        let termination_log =
            termination::log_file(&self.ctx.volumes_dir(), &self.uid, name, restart_count);
        let termination = tokio::task::spawn_blocking({
            let spec = spec.clone();
            move || termination::mount(&spec, &termination_log)
        })
        .await
        .context("termination log set-up panicked")?
        .context("creating the termination log")?;
        let mounts = match volumes::container_mounts(pod, spec, &paths) {
            Ok(mut mounts) => {
                mounts.extend(termination);
                mounts
            }
            Err(e) => {
                self.memory
                    .config_errors
                    .insert(name.to_string(), e.clone());
                return Err(anyhow!(e).context(format!("mounting the volumes of container {name}")));
            }
        };
        let (config, warnings) = match container_config(
            pod,
            desired,
            spec,
            &self.ctx.node_name,
            &instance,
            &facts,
            mounts,
        ) {
            Ok(built) => {
                self.memory.config_errors.remove(name);
                built
            }
            Err(e) => {
                self.memory
                    .config_errors
                    .insert(name.to_string(), e.to_string());
                return Err(anyhow!(e).context(format!("configuring container {name}")));
            }
        };
        let mut config = config;
        security::run_as_image_user(&mut config, image_user.as_ref());
        for note in warnings {
            if self.warned.insert(note.clone()) {
                warn!("{note}");
            }
        }
        let cri = &self.ctx.cri;
        let started = async {
            let id = cri
                .create_container(&sandbox.id, &config, &sandbox_config)
                .await?;
            cri.start_container(&id).await?;
            Ok::<_, CriError>(id)
        }
        .await;
        match started {
            Ok(id) => {
                info!(container = %name, id = %id, restart_count, "container started");
                if let Some(hook) = lifecycle::handler(spec, Hook::PostStart) {
                    let pod_ip = sandbox.ip;
                    let limit = Duration::from_secs(
                        u64::try_from(desired.grace_period)
                            .unwrap_or(30)
                            .max(POST_START_LIMIT_SECS),
                    );
                    if let Err(e) = lifecycle::run(cri, spec, &id, pod_ip, &hook, limit).await {
                        // The kubelet kills the container; its restart
                        // policy and back-off decide what follows.
                        warn!(container = %name, reason = Hook::PostStart.failure_reason(), error = %e, "postStart hook failed; stopping the container");
                        ignore_not_found(cri.stop_container(&id, desired.grace_period).await)
                            .with_context(|| {
                                format!("stopping container {name} after its postStart hook failed")
                            })?;
                        self.memory.post_start_errors.insert(name.to_string(), e);
                        return Ok(Outcome::Again);
                    }
                }
                self.memory.run_errors.remove(name);
                self.memory.post_start_errors.remove(name);
                Ok(Outcome::Again)
            }
            Err(e) => {
                self.memory
                    .run_errors
                    .insert(name.to_string(), e.to_string());
                Err(anyhow!(e).context(format!("starting container {name}")))
            }
        }
    }

    /// Fills in the message of exited instances from their termination
    /// log (or, as their policy says, their log), where the runtime has
    /// none (containerd does not read it).
    async fn read_termination_messages(&self, pod: Option<&Pod>, observed: &mut Observed) {
        let root = self.ctx.volumes_dir();
        for c in observed
            .containers
            .iter_mut()
            .filter(|c| c.has_exited() && c.message.is_empty())
        {
            let file = termination::log_file(&root, &self.uid, &c.name, c.restart_count);
            let spec = spec_container(pod, &c.name).cloned();
            let (exit_code, log) = (c.exit_code, PathBuf::from(&c.log_path));
            let read = move || termination::message(spec.as_ref(), exit_code, &file, &log);
            if let Ok(Some(message)) = tokio::task::spawn_blocking(read).await {
                c.message = message;
            }
        }
    }

    /// Sets up (or brings up to date) the pod's volumes; the outcome is
    /// remembered for container starts and status.
    async fn set_up_volumes(&mut self, pod: &Pod, desired: &DesiredPod, observed: &Observed) {
        let has_volumes = pod
            .spec
            .as_ref()
            .is_some_and(|s| s.volumes.as_ref().is_some_and(|v| !v.is_empty()));
        if !has_volumes {
            self.volumes = Some(Ok(BTreeMap::new()));
            self.memory.volume_error = None;
            return;
        }
        let objects = self.volume_objects(pod, &desired.namespace);
        let facts = EnvFacts {
            node_name: self.ctx.node_name.clone(),
            host_ip: self.ctx.host_ip.clone(),
            pod_ip: observed
                .current_sandbox()
                .and_then(|s| s.ip)
                .map(|ip| ip.to_string()),
            node_cpu_millis: self.ctx.node_cpu_millis,
            node_memory_bytes: self.ctx.node_memory_bytes,
            ..EnvFacts::default()
        };
        let dir = volumes::pod_dir(&self.ctx.volumes_dir(), &self.uid);
        let owned = pod.clone();
        let result =
            tokio::task::spawn_blocking(move || volumes::set_up(&owned, &dir, &objects, &facts))
                .await
                .unwrap_or_else(|e| {
                    Err(volumes::VolumeError {
                        volume: String::new(),
                        reason: format!("volume set-up panicked: {e}"),
                    })
                });
        match &result {
            Ok(_) => self.memory.volume_error = None,
            Err(e) => {
                if self.memory.volume_error.as_deref() != Some(e.to_string().as_str()) {
                    warn!(error = %e, "volume set-up failed");
                }
                self.memory.volume_error = Some(e.to_string());
            }
        }
        self.volumes = Some(result);
    }

    /// The ConfigMaps and Secrets the pod's volumes project, as bytes.
    fn volume_objects(&self, pod: &Pod, namespace: &str) -> volumes::VolumeObjects {
        let (cm_names, secret_names) = volumes::referenced_objects(pod);
        let config_maps = cm_names
            .into_iter()
            .filter_map(|name| {
                let cm = self.ctx.config_maps.get(Some(namespace), &name)?;
                let mut values: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect();
                for (k, v) in cm.binary_data.iter().flatten() {
                    values.insert(k.clone(), v.0.clone());
                }
                Some((name, values))
            })
            .collect();
        let secrets = secret_names
            .into_iter()
            .filter_map(|name| {
                let s = self.ctx.secrets.get(Some(namespace), &name)?;
                let mut values: BTreeMap<String, Vec<u8>> = s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                for (k, v) in s.string_data.iter().flatten() {
                    values.insert(k.clone(), v.clone().into_bytes());
                }
                Some((name, values))
            })
            .collect();
        let claims = volumes::referenced_claims(pod)
            .into_iter()
            .map(|name| {
                let claim = self.ctx.claims.get(Some(namespace), &name);
                let resolved = volumes::resolve_claim(
                    namespace,
                    &name,
                    claim.as_deref(),
                    |v| self.ctx.volumes.get(None, v),
                    &self.ctx.node_name,
                );
                (name, resolved)
            })
            .collect();
        volumes::VolumeObjects {
            config_maps,
            secrets,
            claims,
        }
    }

    /// The ConfigMaps and Secrets the pod takes environment from, as far as
    /// they exist: ConfigMap `data`, Secret `data` (as text) with
    /// `stringData` over it.
    #[allow(clippy::type_complexity)]
    fn env_sources(
        &self,
        pod: &Pod,
        namespace: &str,
    ) -> (
        BTreeMap<String, BTreeMap<String, String>>,
        BTreeMap<String, BTreeMap<String, String>>,
    ) {
        let (cm_names, secret_names) = referenced_objects(pod);
        let config_maps = cm_names
            .into_iter()
            .filter_map(|name| {
                let cm = self.ctx.config_maps.get(Some(namespace), &name)?;
                Some((name, cm.data.clone().unwrap_or_default()))
            })
            .collect();
        let secrets = secret_names
            .into_iter()
            .filter_map(|name| {
                let secret = self.ctx.secrets.get(Some(namespace), &name)?;
                let mut values: BTreeMap<String, String> = secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                values.extend(secret.string_data.clone().unwrap_or_default());
                Some((name, values))
            })
            .collect();
        (config_maps, secrets)
    }

    /// Makes the image available per the pull policy. The error carries
    /// the message for the status and whether it is a `Never` refusal.
    async fn ensure_image(
        &self,
        container: &DesiredContainer,
        sandbox_config: &crate::cri::proto::PodSandboxConfig,
    ) -> Result<String, (String, bool)> {
        let cri = &self.ctx.cri;
        let image = container.image.as_str();
        if image.is_empty() {
            return Err(("no image given".to_string(), false));
        }
        let present = || async {
            cri.image_present(image)
                .await
                .map_err(|e| (e.to_string(), false))
        };
        let pull = || async {
            info!(image, "pulling image");
            cri.pull_image(image, Some(sandbox_config))
                .await
                .map_err(|e| (pull_message(&e), false))
        };
        match container.pull_policy {
            PullPolicy::Always => pull().await,
            PullPolicy::IfNotPresent => match present().await? {
                Some(id) => Ok(id),
                None => pull().await,
            },
            PullPolicy::Never => present().await?.ok_or_else(|| {
                (
                    format!("Container image {image:?} is not present with pull policy of Never"),
                    true,
                )
            }),
        }
    }

    fn log_dir(&self, desired: &DesiredPod) -> PathBuf {
        self.ctx.pods_dir().join(log_dir_name(
            &desired.namespace,
            &desired.name,
            &desired.uid,
        ))
    }

    /// Removes the pod's cgroups and log directories.
    async fn clean_up_host(&self) -> anyhow::Result<()> {
        remove_host_leftovers(&self.ctx.state_dir, &self.uid).await
    }

    /// Deletes the Pod object, guarded by uid and resourceVersion so a
    /// re-created pod of the same name is never deleted by mistake.
    async fn delete_pod(&self, desired: Option<&DesiredPod>) -> anyhow::Result<()> {
        let Some(desired) = desired else {
            return Ok(());
        };
        let store = &self.ctx.store;
        let ns = Some(desired.namespace.as_str());
        let Some(current) = store.get::<Pod>(ns, &desired.name).await? else {
            return Ok(());
        };
        if current.metadata.uid.as_deref() != Some(self.uid.as_str()) {
            return Ok(());
        }
        let rv = current.metadata.resource_version.as_deref();
        match store.delete::<Pod>(ns, &desired.name, rv).await {
            Ok(_) => {
                info!("pod deleted");
                Ok(())
            }
            Err(e) if e.is_conflict() => Err(anyhow!(e).context("pod changed while deleting it")),
            Err(e) => Err(anyhow!(e).context("deleting the pod")),
        }
    }
}

/// The running instances of the current sandbox whose container has
/// probes (none while the pod is being deleted).
fn to_probe(desired: Option<&DesiredPod>, observed: &Observed) -> Vec<RunningInstance> {
    let (Some(desired), Some(sandbox)) = (desired, observed.current_sandbox()) else {
        return Vec::new();
    };
    if desired.deletion_grace.is_some() {
        return Vec::new();
    }
    let sidecars = desired.init_containers.iter().filter(|c| c.sidecar);
    desired
        .containers
        .iter()
        .chain(sidecars)
        .filter(|c| c.probes.any())
        .filter_map(|c| {
            let latest = observed.instances_of(&c.name).into_iter().next()?;
            (latest.is_running() && latest.sandbox_id == sandbox.id).then(|| RunningInstance {
                name: c.name.clone(),
                id: latest.id.clone(),
                started_at: latest.started_at,
                pod_ip: sandbox.ip,
                probes: c.probes.clone(),
            })
        })
        .collect()
}

/// The spec of the container (or init container) `name` of `pod`.
fn spec_container<'a>(
    pod: Option<&'a Pod>,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    let spec = pod?.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The message kubelet shows for a failed pull: the runtime's own words.
fn pull_message(e: &CriError) -> String {
    match e {
        CriError::Call { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn ignore_not_found(result: Result<(), CriError>) -> Result<(), CriError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// Removes a container's log file (containerd leaves it behind), and its
/// directory once empty.
async fn remove_log_file(log_path: &str) {
    if log_path.is_empty() {
        return;
    }
    let path = Path::new(log_path);
    if let Err(e) = tokio::fs::remove_file(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            debug!(path = %path.display(), error = %e, "could not remove log file");
        }
    }
    if let Some(dir) = path.parent() {
        // Fails harmlessly while other instances' logs remain.
        let _ = tokio::fs::remove_dir(dir).await;
    }
}

/// Where pods' volumes live under an agent's state directory.
pub fn volumes_root(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

/// Removes what a pod leaves on the host under the agent's `state_dir`:
/// its volumes (unmounting tmpfs), its cgroups in every hierarchy and its
/// log directories. Every log directory ending in `_<uid>` goes, so an
/// orphan whose name is unknown is cleaned as well.
pub async fn remove_host_leftovers(state_dir: &Path, uid: &str) -> anyhow::Result<()> {
    let pods_dir = state_dir.join("pods");
    let pods_dir = pods_dir.as_path();
    let parent = cgroup_parent(uid);
    let root = volumes_root(state_dir);
    let owner = uid.to_string();
    tokio::task::spawn_blocking(move || {
        volumes::tear_down(&root, &owner).context("removing the pod's volumes")?;
        cgroup_cleanup(&parent).context("removing the pod's cgroups")
    })
    .await
    .context("host cleanup panicked")??;
    let suffix = format!("_{}", sanitize(uid));
    let mut entries = match tokio::fs::read_dir(pods_dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pods_dir.display())),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(&suffix) {
            let path = entry.path();
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => debug!(dir = %path.display(), "removed log directory"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
        }
    }
    Ok(())
}
