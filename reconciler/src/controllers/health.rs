//! The health controller: keeps the history record of the applied commit
//! saying how the objects it declares are doing (`commitd_api::health`),
//! so that `commitd history` and `commitd status` show not only "applied"
//! but "healthy at 12:03:41" or "degraded: web ProgressDeadlineExceeded".
//!
//! Only Deployments, Jobs and Pods have a health beyond "it exists"; the
//! Git-owned ones are assessed (the pods a Deployment makes count through
//! the Deployment). Objects the commit declares that are not in etcd yet
//! (those of a sync wave still to come) are `Missing`: the Git source loop,
//! which knows the declared objects, reports them here through
//! [`MissingObjects`]. The record is rewritten only when the assessment
//! changes, guarded by its revision so a concurrent write is never lost.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::health::{self, CommitHealth, Health, ObjectHealth};
use commitd_api::meta::{self, COMMIT_ANNOTATION};
use commitd_api::records::{AppliedCommit, HistoryRecord};
use commitd_api::reflector::Cache;
use commitd_api::{keys, Object, Store};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Caches;

/// How often the applied commit is looked at again without any change to
/// the objects: a commit that changes no Deployment or Pod still gets its
/// health this soon.
const RESYNC: Duration = Duration::from_secs(3);

/// The objects the applied commit declares that etcd does not hold, as
/// the Git source loop last found them: it publishes, the health
/// controller reads.
#[derive(Debug, Clone)]
pub struct MissingObjects {
    objects: watch::Receiver<Arc<Vec<ObjectHealth>>>,
}

impl MissingObjects {
    /// A publisher and the reader to hand to the controllers.
    pub fn channel() -> (watch::Sender<Arc<Vec<ObjectHealth>>>, MissingObjects) {
        let (tx, objects) = watch::channel(Arc::new(Vec::new()));
        (tx, MissingObjects { objects })
    }

    /// For controllers run without a Git source: nothing is ever missing.
    pub fn none() -> MissingObjects {
        Self::channel().1
    }

    fn current(&self) -> Arc<Vec<ObjectHealth>> {
        self.objects.borrow().clone()
    }

    /// A trigger that ticks whenever the published list changes, until the
    /// publisher goes away or `cancel` fires.
    fn changes(&self, cancel: CancellationToken) -> watch::Receiver<u64> {
        let (tick, ticks) = watch::channel(0u64);
        let mut objects = self.objects.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    changed = objects.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tick.send_modify(|n| *n += 1);
                    }
                }
            }
        });
        ticks
    }
}

pub(crate) async fn run(
    store: Store,
    caches: Caches,
    missing: MissingObjects,
    cancel: CancellationToken,
) {
    let triggers = vec![
        caches.deployments.changes(),
        caches.jobs.changes(),
        caches.cron_jobs.changes(),
        caches.daemon_sets.changes(),
        caches.stateful_sets.changes(),
        caches.claims.changes(),
        caches.pods.changes(),
        missing.changes(cancel.clone()),
    ];
    controller::run("health", triggers, RESYNC, cancel, move || {
        let (store, caches, missing) = (store.clone(), caches.clone(), missing.current());
        async move { pass(&store, &caches, &missing).await }
    })
    .await;
}

/// One assessment of the applied commit, written if it changed.
async fn pass(store: &Store, caches: &Caches, missing: &[ObjectHealth]) -> Result<Requeue> {
    let Some(applied) = store
        .get_record::<AppliedCommit>(keys::APPLIED)
        .await
        .context("reading the applied commit")?
    else {
        return Ok(None);
    };
    let key = keys::history_key(applied.seq);
    let mut resp = store
        .client()
        .get(key.as_str(), None)
        .await
        .with_context(|| format!("reading {key}"))?;
    let Some(kv) = resp.take_kvs().into_iter().next() else {
        return Ok(None);
    };
    let mut record: HistoryRecord =
        serde_json::from_slice(kv.value()).with_context(|| format!("decoding {key}"))?;
    let now = commitd_api::k8s_openapi::jiff::Timestamp::now().to_string();
    let assessed = assess(caches, missing, now);
    // The time a status was first seen is kept while it lasts.
    let health = match &record.health {
        Some(old) if old.status == assessed.status => CommitHealth {
            since: old.since.clone(),
            ..assessed
        },
        _ => assessed,
    };
    if record.health.as_ref() == Some(&health) {
        return Ok(None);
    }
    let became = record
        .health
        .as_ref()
        .is_none_or(|old| old.status != health.status);
    if became {
        info!(
            commit = %applied.commit.short_sha(),
            health = %health.headline(),
            "commit health changed"
        );
    }
    record.health = Some(health);
    let bytes = serde_json::to_vec(&record).context("encoding the history record")?;
    let txn = Txn::new()
        .when(vec![Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(vec![TxnOp::put(key.as_str(), bytes, None)]);
    let written = store
        .client()
        .txn(txn)
        .await
        .with_context(|| format!("writing the health of {key}"))?;
    if !written.succeeded() {
        // Written meanwhile (a drift record, another controller): the
        // next pass reads it again.
        debug!(%key, "history record changed meanwhile; assessing again");
        return Ok(Some(Duration::from_millis(200)));
    }
    Ok(None)
}

/// The health of every Git-owned workload and claim, and the declared
/// objects that are missing.
fn assess(caches: &Caches, missing: &[ObjectHealth], now: String) -> CommitHealth {
    let mut objects = Vec::new();
    assess_kind(&caches.deployments, health::deployment, &mut objects);
    assess_kind(&caches.stateful_sets, health::stateful_set, &mut objects);
    assess_kind(&caches.daemon_sets, health::daemon_set, &mut objects);
    assess_kind(&caches.cron_jobs, health::cron_job, &mut objects);
    assess_kind(&caches.jobs, health::job, &mut objects);
    assess_kind(
        &caches.claims,
        health::persistent_volume_claim,
        &mut objects,
    );
    assess_kind(&caches.pods, health::pod, &mut objects);
    objects.extend(missing.iter().cloned());
    CommitHealth::of(objects, now)
}

/// Adds the health of the Git-owned objects of one kind.
fn assess_kind<T: Object>(cache: &Cache<T>, judge: fn(&T) -> Health, out: &mut Vec<ObjectHealth>) {
    for obj in cache.list() {
        if meta::is_git_owned(obj.metadata()) {
            out.push(object_health(&*obj, judge(&obj)));
        }
    }
}

fn object_health<T: Object>(obj: &T, h: Health) -> ObjectHealth {
    let m = commitd_api::k8s_openapi::Metadata::metadata(obj);
    ObjectHealth {
        kind: <T as commitd_api::k8s_openapi::Resource>::KIND.to_string(),
        namespace: m.namespace.clone(),
        name: m.name.clone().unwrap_or_default(),
        status: h.status,
        reason: h.reason,
        message: h.message,
        commit: m
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMMIT_ANNOTATION))
            .cloned(),
    }
}
