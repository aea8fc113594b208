//! Probing a container instance for its whole life, as the kubelet's probe
//! workers do: the startup probe first (the others wait for it), then
//! readiness and liveness side by side, each on its own period, with
//! success and failure thresholds deciding when a result flips. What they
//! find is published as a [`ProbeStatus`] per container; the pod worker is
//! woken whenever it changes.
//!
//! Results live in memory only. A restarted agent probes again from the
//! start, where readiness begins false, as a restarted kubelet does.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::handlers::{attempt, Purpose, Target};
use super::{ContainerProbes, ProbeKind, ProbeSpec};
use crate::cri::Cri;

/// What the probes of one container instance found so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    /// The instance (CRI container id) these results are about.
    pub container_id: String,
    /// The startup probe succeeded, or there is none.
    pub started: bool,
    /// Started, and the readiness probe succeeds (or there is none).
    pub ready: bool,
    /// Why the instance must be restarted: its liveness or startup probe
    /// failed (`"Liveness probe failed: …"`).
    pub failed: Option<String>,
}

/// Probe results by container name, shared between probe tasks and the
/// pod worker.
pub type ProbeResults = Arc<Mutex<BTreeMap<String, ProbeStatus>>>;

/// A running instance to probe.
#[derive(Debug, Clone)]
pub struct RunningInstance {
    /// The container's name in the pod.
    pub name: String,
    /// Its CRI id.
    pub id: String,
    /// When it started (ns since the epoch).
    pub started_at: i64,
    /// The pod's address.
    pub pod_ip: Option<IpAddr>,
    /// What to probe.
    pub probes: ContainerProbes,
}

/// The probe tasks of one pod, one per running instance that has probes.
/// Dropping it stops them all.
pub struct Probers {
    results: ProbeResults,
    tasks: HashMap<String, (String, JoinHandle<()>)>,
    wake: Arc<Notify>,
}

impl Probers {
    /// No tasks yet; `wake` is notified when a result changes.
    pub fn new(wake: Arc<Notify>) -> Probers {
        Probers {
            results: Arc::default(),
            tasks: HashMap::new(),
            wake,
        }
    }

    /// Probes exactly `running`: starts tasks for new instances, stops
    /// those whose instance no longer runs and forgets their results.
    pub fn sync(&mut self, cri: &Cri, running: Vec<RunningInstance>) {
        let wanted: HashMap<&str, &str> = running
            .iter()
            .map(|r| (r.name.as_str(), r.id.as_str()))
            .collect();
        self.tasks.retain(|name, (id, task)| {
            let keep = wanted.get(name.as_str()) == Some(&id.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        {
            let mut results = lock(&self.results);
            results.retain(|name, r| wanted.get(name.as_str()) == Some(&r.container_id.as_str()));
        }
        for instance in running {
            if self.tasks.contains_key(&instance.name) {
                continue;
            }
            let initial = ProbeStatus {
                container_id: instance.id.clone(),
                started: instance.probes.startup.is_none(),
                ready: instance.probes.startup.is_none() && instance.probes.readiness.is_none(),
                failed: None,
            };
            lock(&self.results).insert(instance.name.clone(), initial);
            let span = tracing::info_span!("probe", container = %instance.name, id = %instance.id);
            let task = tokio::spawn(
                probe_instance(
                    cri.clone(),
                    instance.clone(),
                    self.results.clone(),
                    self.wake.clone(),
                )
                .instrument(span),
            );
            self.tasks.insert(instance.name, (instance.id, task));
        }
    }

    /// What the probes found, by container name.
    pub fn results(&self) -> BTreeMap<String, ProbeStatus> {
        lock(&self.results).clone()
    }
}

impl Drop for Probers {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

fn lock(results: &ProbeResults) -> std::sync::MutexGuard<'_, BTreeMap<String, ProbeStatus>> {
    results.lock().unwrap_or_else(|e| e.into_inner())
}

/// Changes the instance's published status, waking the worker if that
/// changed anything. Results of an instance that was replaced are dropped.
fn publish(
    results: &ProbeResults,
    wake: &Notify,
    instance: &RunningInstance,
    change: impl FnOnce(&mut ProbeStatus),
) {
    let mut map = lock(results);
    let Some(status) = map
        .get_mut(&instance.name)
        .filter(|s| s.container_id == instance.id)
    else {
        return;
    };
    let before = status.clone();
    change(status);
    if *status != before {
        drop(map);
        wake.notify_one();
    }
}

async fn probe_instance(
    cri: Cri,
    instance: RunningInstance,
    results: ProbeResults,
    wake: Arc<Notify>,
) {
    let target = Target {
        cri: &cri,
        container_id: &instance.id,
        pod_ip: instance.pod_ip,
        ports: &instance.probes.ports,
        purpose: Purpose::Probe,
    };
    // The instance's start, on the monotonic clock.
    let ran_for = crate::pod::now_ns().saturating_sub(instance.started_at);
    let started = Instant::now()
        .checked_sub(Duration::from_nanos(u64::try_from(ran_for).unwrap_or(0)))
        .unwrap_or_else(Instant::now);
    let publish = |change: &dyn Fn(&mut ProbeStatus)| publish(&results, &wake, &instance, change);

    if let Some(spec) = &instance.probes.startup {
        match until_decided(spec, target, started, ProbeKind::Startup).await {
            Ok(()) => {
                info!("startup probe succeeded");
                let ready = instance.probes.readiness.is_none();
                publish(&|s| {
                    s.started = true;
                    s.ready = ready;
                });
            }
            Err(why) => {
                let message = format!("Startup probe failed: {why}");
                warn!(%message, "container will be restarted");
                publish(&|s| s.failed = Some(message.clone()));
                return;
            }
        }
    }
    let readiness = async {
        let Some(spec) = &instance.probes.readiness else {
            return std::future::pending().await;
        };
        let mut ready = false;
        let mut streak = Streak::default();
        initial_delay(spec, started).await;
        loop {
            let result = attempt(&spec.handler, target, spec.timeout).await;
            if let Err(why) = &result {
                debug!(error = %why, "readiness probe failed");
            }
            let was = ready;
            ready = streak.record(result.is_ok(), ready, spec);
            if ready != was {
                info!(ready, "readiness changed");
                publish(&|s| s.ready = ready);
            }
            tokio::time::sleep(spec.period).await;
        }
    };
    let liveness = async {
        let Some(spec) = &instance.probes.liveness else {
            return std::future::pending().await;
        };
        let why = until_failed(spec, target, started).await;
        let message = format!("Liveness probe failed: {why}");
        warn!(%message, "container will be restarted");
        publish(&|s| s.failed = Some(message.clone()));
    };
    tokio::select! {
        () = readiness => {}
        () = liveness => {}
    }
}

/// Consecutive results of one probe.
#[derive(Debug, Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one result and returns the probe's verdict, given the
    /// previous one: it flips only after the threshold in a row.
    fn record(&mut self, ok: bool, verdict: bool, spec: &ProbeSpec) -> bool {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            verdict || self.successes >= spec.success_threshold
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            verdict && self.failures < spec.failure_threshold
        }
    }
}

/// Waits out the initial delay, counted from the instance's start.
async fn initial_delay(spec: &ProbeSpec, started: Instant) {
    tokio::time::sleep_until(started + spec.initial_delay).await;
}

/// Probes until the startup verdict: success, or the failure threshold in
/// a row (with the last reason).
async fn until_decided(
    spec: &ProbeSpec,
    target: Target<'_>,
    started: Instant,
    kind: ProbeKind,
) -> Result<(), String> {
    initial_delay(spec, started).await;
    let mut streak = Streak::default();
    loop {
        match attempt(&spec.handler, target, spec.timeout).await {
            Ok(()) => {
                if streak.record(true, false, spec) {
                    return Ok(());
                }
            }
            Err(why) => {
                debug!(probe = kind.title(), error = %why, "probe failed");
                streak.record(false, false, spec);
                if streak.failures >= spec.failure_threshold {
                    return Err(why);
                }
            }
        }
        tokio::time::sleep(spec.period).await;
    }
}

/// Probes until the failure threshold is reached in a row; returns the
/// last reason.
async fn until_failed(spec: &ProbeSpec, target: Target<'_>, started: Instant) -> String {
    initial_delay(spec, started).await;
    let mut streak = Streak::default();
    loop {
        match attempt(&spec.handler, target, spec.timeout).await {
            Ok(()) => {
                streak.record(true, true, spec);
            }
            Err(why) => {
                debug!(error = %why, "liveness probe failed");
                if !streak.record(false, true, spec) {
                    return why;
                }
            }
        }
        tokio::time::sleep(spec.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Handler;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            handler: Handler::Exec {
                command: vec!["true".into()],
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn verdicts_flip_only_after_their_threshold_in_a_row() {
        let s = spec(2, 3);
        let mut streak = Streak::default();
        let mut v = false;
        for (ok, expect) in [
            (true, false),
            (false, false),
            (true, false),
            (true, true),
            (false, true),
            (false, true),
            (true, true),
            (false, true),
            (false, true),
            (false, false),
            (true, false),
        ] {
            v = streak.record(ok, v, &s);
            assert_eq!(v, expect, "after {ok}");
        }
    }
}
