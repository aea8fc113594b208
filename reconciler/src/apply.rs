//! Applying a commit: every manifest is validated before the first write;
//! the commit's objects are diffed against the Git-owned objects in etcd;
//! creates, updates and prunes go in ONE etcd transaction guarded by the
//! previously applied commit and by the revision of every object touched,
//! together with the new applied record and the history record. A commit
//! applies whole or not at all, and two reconcilers can never interleave.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use commitd_api::diagnostic::Diagnostic;
use commitd_api::keys;
use commitd_api::manifest::{self, Loaded, Manifest};
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::records::{AppliedCommit, Changes, CommitInfo, HistoryRecord, Outcome};
use commitd_api::{Kind, Store};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::Value;
use tracing::{info, warn};

/// The key holding the next history sequence number.
const SEQ_KEY: &str = "/commitd/source/seq";
/// How often a plan is recomputed when its transaction loses a race.
const MAX_ATTEMPTS: usize = 16;

/// An object as read from etcd.
#[derive(Debug, Clone)]
struct Current {
    value: Value,
    mod_revision: i64,
}

/// A JSON value and the revision it was read at (0: absent).
#[derive(Debug, Clone)]
struct Guarded<T> {
    value: Option<T>,
    mod_revision: i64,
}

/// What applying a set of manifests would write.
#[derive(Debug, Default)]
pub struct Plan {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    /// What changes, by `Kind namespace/name`.
    pub changes: Changes,
}

impl Plan {
    /// Whether the plan changes any object.
    pub fn is_empty(&self) -> bool {
        self.changes.created.is_empty()
            && self.changes.updated.is_empty()
            && self.changes.deleted.is_empty()
    }
}

/// The fields of an object that Git decides: everything but status and the
/// metadata the API server and controllers manage. Two objects with the
/// same view need no write.
pub fn desired_view(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(k);
            }
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove(COMMIT_ANNOTATION);
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
        }
    }
    v
}

fn spec_of(v: &Value) -> Value {
    let mut s = v.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    s
}

/// The object Git wants, annotated with where it came from.
fn annotated(m: &Manifest, sha: &str) -> Value {
    let mut v = m.object.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = ann.as_object_mut() {
            a.insert(COMMIT_ANNOTATION.into(), Value::from(sha));
            a.insert(SOURCE_ANNOTATION.into(), Value::from(m.source.to_string()));
        }
    }
    v
}

/// Keeps what etcd knows and Git does not (identity, status, generation).
fn merge_server_fields(desired: &mut Value, current: &Value) {
    let spec_changed = spec_of(desired) != spec_of(current);
    let cur_meta = current.get("metadata");
    let generation = cur_meta
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["uid", "creationTimestamp", "ownerReferences"] {
            if let Some(v) = cur_meta.and_then(|m| m.get(k)) {
                meta.insert(k.into(), v.clone());
            }
        }
        let next = if spec_changed {
            generation + 1
        } else {
            generation
        };
        meta.insert("generation".into(), Value::from(next));
    }
    if let (Some(status), Some(o)) = (current.get("status"), desired.as_object_mut()) {
        o.insert("status".into(), status.clone());
    }
}

fn fill_create_fields(desired: &mut Value) {
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("uid".into(), Value::from(meta::new_uid()));
        meta.insert(
            "creationTimestamp".into(),
            serde_json::to_value(meta::now()).unwrap_or(Value::Null),
        );
        meta.insert("generation".into(), Value::from(1));
    }
}

fn display(kind: Kind, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Reads every Git-owned object from etcd, by key.
async fn git_owned(store: &Store) -> anyhow::Result<BTreeMap<String, (Kind, Current)>> {
    let mut out = BTreeMap::new();
    for kind in Kind::FROM_GIT {
        let list = store.list_raw(kind, None).await?;
        for kv in list.items {
            let Ok(value) = serde_json::from_slice::<Value>(kv.value()) else {
                warn!(key = %String::from_utf8_lossy(kv.key()), "skipping an object that is not JSON");
                continue;
            };
            let owned = value
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(COMMIT_ANNOTATION))
                .is_some();
            if owned {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                out.insert(
                    key,
                    (
                        kind,
                        Current {
                            value,
                            mod_revision: kv.mod_revision(),
                        },
                    ),
                );
            }
        }
    }
    Ok(out)
}

async fn read_guarded<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
) -> anyhow::Result<Guarded<T>> {
    let mut resp = store.client().get(key, None).await?;
    match resp.take_kvs().into_iter().next() {
        Some(kv) => Ok(Guarded {
            value: Some(
                serde_json::from_slice(kv.value()).with_context(|| format!("decoding {key}"))?,
            ),
            mod_revision: kv.mod_revision(),
        }),
        None => Ok(Guarded {
            value: None,
            mod_revision: 0,
        }),
    }
}

fn guard(key: &str, mod_revision: i64) -> Compare {
    if mod_revision == 0 {
        Compare::create_revision(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, mod_revision)
    }
}

/// Diffs `manifests` against etcd and returns the writes that make etcd
/// match, each guarded by the revision it was computed from.
async fn plan(store: &Store, manifests: &[Manifest], sha: &str) -> anyhow::Result<Plan> {
    let mut current = git_owned(store).await?;
    let mut plan = Plan::default();
    for m in manifests {
        let key = keys::object_key(m.kind, m.namespace.as_deref(), &m.name);
        let name = display(m.kind, m.namespace.as_deref(), &m.name);
        let mut desired = annotated(m, sha);
        let existing = match current.remove(&key) {
            Some((_, c)) => Some(c),
            // Not Git-owned yet: it may still exist (made by hand or by a
            // controller); Git takes it over.
            None => {
                let mut resp = store.client().get(key.as_str(), None).await?;
                resp.take_kvs().into_iter().next().and_then(|kv| {
                    serde_json::from_slice(kv.value())
                        .ok()
                        .map(|value| Current {
                            value,
                            mod_revision: kv.mod_revision(),
                        })
                })
            }
        };
        match existing {
            None => {
                fill_create_fields(&mut desired);
                plan.compares.push(guard(&key, 0));
                plan.ops.push(TxnOp::put(
                    key.as_str(),
                    serde_json::to_vec(&desired)?,
                    None,
                ));
                plan.changes.created.push(name);
            }
            Some(cur) if desired_view(&cur.value) == desired_view(&desired) => {
                plan.changes.unchanged += 1;
            }
            Some(cur) => {
                merge_server_fields(&mut desired, &cur.value);
                plan.compares.push(guard(&key, cur.mod_revision));
                plan.ops.push(TxnOp::put(
                    key.as_str(),
                    serde_json::to_vec(&desired)?,
                    None,
                ));
                plan.changes.updated.push(name);
            }
        }
    }
    for (key, (kind, cur)) in current {
        let meta = cur.value.get("metadata");
        let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
        let name = display(kind, field("namespace"), field("name").unwrap_or_default());
        plan.compares.push(guard(&key, cur.mod_revision));
        plan.ops.push(TxnOp::delete(key.as_str(), None));
        plan.changes.deleted.push(name);
    }
    Ok(plan)
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// What became of a commit handed to [`apply_commit`].
#[derive(Debug)]
pub enum ApplyOutcome {
    /// A history record was written (applied or rejected).
    Recorded(Box<HistoryRecord>),
    /// The commit was already applied or rejected; nothing was written.
    AlreadyKnown,
}

/// Applies the manifests of a commit, or records why it cannot be.
pub async fn apply_commit(
    store: &Store,
    commit: &CommitInfo,
    files: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<ApplyOutcome> {
    let loaded = manifest::load_files(files);
    for attempt in 0..MAX_ATTEMPTS {
        let applied: Guarded<AppliedCommit> = read_guarded(store, keys::APPLIED).await?;
        let rejected: Guarded<HistoryRecord> = read_guarded(store, keys::REJECTED).await?;
        if applied.value.as_ref().map(|a| a.commit.sha.as_str()) == Some(&commit.sha)
            || rejected.value.as_ref().map(|r| r.commit.sha.as_str()) == Some(&commit.sha)
        {
            return Ok(ApplyOutcome::AlreadyKnown);
        }
        let seq: Guarded<u64> = read_guarded(store, SEQ_KEY).await?;
        let next = seq.value.unwrap_or(0) + 1;
        let result = if loaded.is_valid() {
            try_apply(store, commit, &loaded, &applied, &seq, next).await?
        } else {
            try_reject(store, commit, &loaded, &applied, &rejected, &seq, next).await?
        };
        match result {
            Some(record) => {
                info!(
                    commit = commit.short_sha(),
                    seq = record.seq,
                    outcome = ?record.outcome,
                    created = record.changes.created.len(),
                    updated = record.changes.updated.len(),
                    deleted = record.changes.deleted.len(),
                    errors = record.errors.len(),
                    "commit recorded"
                );
                return Ok(ApplyOutcome::Recorded(Box::new(record)));
            }
            None => tracing::debug!(attempt, "lost a race with another writer; planning again"),
        }
    }
    bail!(
        "commit {}: etcd kept changing under the apply; gave up after {MAX_ATTEMPTS} attempts",
        commit.short_sha()
    )
}

fn history_record(
    seq: u64,
    commit: &CommitInfo,
    outcome: Outcome,
    changes: Changes,
    loaded: &Loaded,
) -> HistoryRecord {
    let (errors, warnings): (Vec<Diagnostic>, Vec<Diagnostic>) = loaded
        .diagnostics
        .iter()
        .cloned()
        .partition(Diagnostic::is_error);
    HistoryRecord {
        seq,
        commit: commit.clone(),
        outcome,
        recorded_at: now_rfc3339(),
        changes,
        errors,
        warnings,
        note: None,
    }
}

async fn try_apply(
    store: &Store,
    commit: &CommitInfo,
    loaded: &Loaded,
    applied: &Guarded<AppliedCommit>,
    seq: &Guarded<u64>,
    next: u64,
) -> anyhow::Result<Option<HistoryRecord>> {
    let mut plan = plan(store, &loaded.manifests, &commit.sha).await?;
    let record = history_record(next, commit, Outcome::Applied, plan.changes.clone(), loaded);
    let new_applied = AppliedCommit {
        commit: commit.clone(),
        seq: next,
        applied_at: record.recorded_at.clone(),
        objects: loaded.manifests.len(),
    };
    plan.compares
        .push(guard(keys::APPLIED, applied.mod_revision));
    plan.compares.push(guard(SEQ_KEY, seq.mod_revision));
    plan.ops.push(TxnOp::put(
        keys::APPLIED,
        serde_json::to_vec(&new_applied)?,
        None,
    ));
    plan.ops
        .push(TxnOp::put(SEQ_KEY, serde_json::to_vec(&next)?, None));
    plan.ops.push(TxnOp::put(
        keys::history_key(next),
        serde_json::to_vec(&record)?,
        None,
    ));
    commit_txn(store, plan.compares, plan.ops)
        .await
        .map(|ok| ok.then_some(record))
}

async fn try_reject(
    store: &Store,
    commit: &CommitInfo,
    loaded: &Loaded,
    applied: &Guarded<AppliedCommit>,
    rejected: &Guarded<HistoryRecord>,
    seq: &Guarded<u64>,
    next: u64,
) -> anyhow::Result<Option<HistoryRecord>> {
    let record = history_record(next, commit, Outcome::Rejected, Changes::default(), loaded);
    let compares = vec![
        guard(keys::APPLIED, applied.mod_revision),
        guard(keys::REJECTED, rejected.mod_revision),
        guard(SEQ_KEY, seq.mod_revision),
    ];
    let bytes = serde_json::to_vec(&record)?;
    let ops = vec![
        TxnOp::put(keys::REJECTED, bytes.clone(), None),
        TxnOp::put(SEQ_KEY, serde_json::to_vec(&next)?, None),
        TxnOp::put(keys::history_key(next), bytes, None),
    ];
    commit_txn(store, compares, ops)
        .await
        .map(|ok| ok.then_some(record))
}

async fn commit_txn(
    store: &Store,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> anyhow::Result<bool> {
    let n = ops.len();
    let txn = Txn::new().when(compares).and_then(ops);
    let resp = store.client().txn(txn).await.with_context(|| {
        format!(
            "writing {n} operations in one etcd transaction (etcd's --max-txn-ops must allow it)"
        )
    })?;
    Ok(resp.succeeded())
}

/// Puts back Git-owned objects that were changed or deleted in etcd by
/// anyone but the reconciler, and records the correction in history.
/// Returns the record if something was corrected.
pub async fn correct_drift(
    store: &Store,
    applied_sha: &str,
    manifests: &[Manifest],
) -> anyhow::Result<Option<HistoryRecord>> {
    for _ in 0..MAX_ATTEMPTS {
        let applied: Guarded<AppliedCommit> = read_guarded(store, keys::APPLIED).await?;
        let Some(current) = applied.value.as_ref() else {
            return Ok(None);
        };
        if current.commit.sha != applied_sha {
            // A newer commit was applied meanwhile; its reconciler owns it.
            return Ok(None);
        }
        let mut plan = plan(store, manifests, applied_sha).await?;
        if plan.is_empty() {
            return Ok(None);
        }
        let seq: Guarded<u64> = read_guarded(store, SEQ_KEY).await?;
        let next = seq.value.unwrap_or(0) + 1;
        let mut names: Vec<String> = plan.changes.created.clone();
        names.extend(plan.changes.updated.iter().cloned());
        names.extend(plan.changes.deleted.iter().cloned());
        let record = HistoryRecord {
            seq: next,
            commit: current.commit.clone(),
            outcome: Outcome::DriftCorrected,
            recorded_at: now_rfc3339(),
            changes: plan.changes.clone(),
            errors: Vec::new(),
            warnings: Vec::new(),
            note: Some(format!(
                "put back what was changed outside Git: {}",
                names.join(", ")
            )),
        };
        plan.compares
            .push(guard(keys::APPLIED, applied.mod_revision));
        plan.compares.push(guard(SEQ_KEY, seq.mod_revision));
        plan.ops
            .push(TxnOp::put(SEQ_KEY, serde_json::to_vec(&next)?, None));
        plan.ops.push(TxnOp::put(
            keys::history_key(next),
            serde_json::to_vec(&record)?,
            None,
        ));
        if commit_txn(store, plan.compares, plan.ops).await? {
            warn!(commit = current.commit.short_sha(), objects = %names.join(", "), "drift corrected");
            return Ok(Some(record));
        }
    }
    bail!("drift correction kept losing races with other writers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn view_ignores_status_identity_and_commit() {
        let a = json!({"kind": "Deployment", "metadata": {"name": "w", "uid": "1", "generation": 3,
            "annotations": {"commitd.io/commit": "abc", "commitd.io/source": "a.yaml:1"}},
            "spec": {"replicas": 2}, "status": {"replicas": 1}});
        let b = json!({"kind": "Deployment", "metadata": {"name": "w",
            "annotations": {"commitd.io/commit": "def", "commitd.io/source": "a.yaml:1"}},
            "spec": {"replicas": 2}});
        assert_eq!(desired_view(&a), desired_view(&b));
        let c = json!({"kind": "Deployment", "metadata": {"name": "w",
            "annotations": {"commitd.io/commit": "def", "commitd.io/source": "a.yaml:9"}},
            "spec": {"replicas": 2}});
        assert_ne!(desired_view(&a), desired_view(&c));
    }

    #[test]
    fn merge_keeps_identity_and_bumps_generation_on_spec_change() {
        let current = json!({"metadata": {"name": "w", "uid": "u1", "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"replicas": 2}, "status": {"replicas": 2}});
        let mut desired = json!({"metadata": {"name": "w"}, "spec": {"replicas": 3}});
        merge_server_fields(&mut desired, &current);
        assert_eq!(desired["metadata"]["uid"], "u1");
        assert_eq!(desired["metadata"]["generation"], 3);
        assert_eq!(desired["status"]["replicas"], 2);
        let mut same =
            json!({"metadata": {"name": "w", "labels": {"a": "b"}}, "spec": {"replicas": 2}});
        merge_server_fields(&mut same, &current);
        assert_eq!(same["metadata"]["generation"], 2);
    }
}
