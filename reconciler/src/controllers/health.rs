//! The health controller: keeps the history record of the applied commit
//! saying how the objects it declares are doing (`commitd_api::health`),
//! so that `commitd history` and `commitd status` show not only "applied"
//! but "healthy at 12:03:41" or "degraded: web ProgressDeadlineExceeded".
//!
//! Only Deployments and Pods have a health beyond "it exists"; the
//! Git-owned ones are assessed (the pods a Deployment makes count through
//! the Deployment). The record is rewritten only when the assessment
//! changes, guarded by its revision so a concurrent write is never lost.

use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::health::{self, CommitHealth, Health, ObjectHealth};
use commitd_api::meta::{self, COMMIT_ANNOTATION};
use commitd_api::records::{AppliedCommit, HistoryRecord};
use commitd_api::{keys, Object, Store};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Caches;

/// How often the applied commit is looked at again without any change to
/// the objects: a commit that changes no Deployment or Pod still gets its
/// health this soon.
const RESYNC: Duration = Duration::from_secs(3);

pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![caches.deployments.changes(), caches.pods.changes()];
    controller::run("health", triggers, RESYNC, cancel, move || {
        let (store, caches) = (store.clone(), caches.clone());
        async move { pass(&store, &caches).await }
    })
    .await;
}

/// One assessment of the applied commit, written if it changed.
async fn pass(store: &Store, caches: &Caches) -> Result<Requeue> {
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
    let assessed = assess(caches, now);
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

/// The health of every Git-owned Deployment and Pod.
fn assess(caches: &Caches, now: String) -> CommitHealth {
    let deployments = caches
        .deployments
        .list()
        .into_iter()
        .filter(|d| meta::is_git_owned(&d.metadata))
        .map(|d| object_health(&*d, health::deployment(&d)));
    let pods = caches
        .pods
        .list()
        .into_iter()
        .filter(|p| meta::is_git_owned(&p.metadata))
        .map(|p| object_health(&*p, health::pod(&p)));
    CommitHealth::of(deployments.chain(pods).collect(), now)
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
