//! Applying a commit: every manifest is validated before the first write;
//! the commit's objects are diffed against the Git-owned objects in etcd;
//! creates, updates and prunes go in ONE etcd transaction guarded by the
//! previously applied commit, by the absence of the apply lock and by the
//! revision of every object touched, together with the new applied record
//! and the history record. A commit applies whole or not at all, and two
//! reconcilers can never interleave.
//!
//! etcd caps a transaction (`--max-txn-ops`, 128 by default, counting
//! compares and writes separately; `--max-request-bytes`). A commit that
//! outgrows one transaction is written in chunks, and the switch-over is
//! kept atomic with an apply lock ([`keys::APPLYING`]):
//!
//! 1. take the lock: one transaction guarded by the applied record's
//!    revision and the lock's absence puts it, on a lease of this
//!    reconciler that is kept alive while it writes;
//! 2. write the plan in chunks, each guarded by the lock still being ours
//!    and by every object's revision (an object that changed meanwhile
//!    makes the rest be planned again, still under the lock);
//! 3. switch over: applied record, sequence number and history record, and
//!    the lock deleted, in one transaction guarded by the lock.
//!
//! While the lock exists, control loops hold back
//! ([`commitd_api::controller::ApplyGate`]); other reconcilers neither apply
//! nor correct drift. A reconciler that dies mid-apply leaves the written
//! chunks but no lock once its lease expires; as the plan is a diff against
//! etcd, the next apply of the same head commit writes only the rest and
//! switches over. The commit is live only from the switch-over on.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use commitd_api::diagnostic::Diagnostic;
use commitd_api::encrypted_secrets::{self, Identities};
use commitd_api::k8s_openapi::api::core::v1::Service;
use commitd_api::keys;
use commitd_api::manifest::{self, Loaded, Manifest};
use commitd_api::meta::{self, COMMIT_ANNOTATION, REVISION_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::records::{
    AppliedCommit, Changes, CommitInfo, HistoryRecord, Outcome, Provenance,
};
use commitd_api::service_network::{self, ServiceNetwork};
use commitd_api::{Kind, Store};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::job_templates::{
    assign_job_identity, keep_job_identity, replace_on_change, tombstone_view,
};

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// How often a plan is recomputed when its transaction loses a race.
const MAX_ATTEMPTS: usize = 16;
/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Key and value bytes written in one transaction at most: below etcd's
/// default `--max-request-bytes` (1.5 MiB), leaving room for the request's
/// own framing.
pub const DEFAULT_MAX_TXN_BYTES: usize = 1024 * 1024;
/// How long the apply lock outlives a reconciler that stopped renewing it.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(10);
/// Record writes besides the objects in an apply (applied, sequence,
/// history), and the compares besides the objects' (applied, sequence,
/// lock absent).
const RECORD_OPS: usize = 3;
/// The smallest `max_txn_ops` that can switch over (applied, sequence,
/// history, lock delete).
const MIN_TXN_OPS: usize = 4;
/// How long releasing the apply lock may take before it is left to expire.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// How commits are written to etcd.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// The operations etcd accepts in one transaction (its `--max-txn-ops`;
    /// compares and writes are each limited). A plan that does not fit is
    /// written in chunks under the apply lock.
    pub max_txn_ops: usize,
    /// Key and value bytes one transaction may carry (etcd's
    /// `--max-request-bytes` bounds the whole request).
    pub max_txn_bytes: usize,
    /// The apply lock's lease TTL: how long control loops wait for a
    /// reconciler that died mid-apply.
    pub lock_ttl: Duration,
    /// Where Services get their ClusterIPs and node ports.
    pub service_network: ServiceNetwork,
    /// The age identities that decrypt the Secret values committed
    /// encrypted (`--age-identity`); without them such a commit is
    /// rejected.
    pub age_identities: Option<Arc<Identities>>,
    /// Test hook: after this many chunks the apply stops making progress
    /// while holding the lock, as a hung or dying reconciler would.
    #[doc(hidden)]
    pub pause_after_chunks: Option<usize>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_txn_bytes: DEFAULT_MAX_TXN_BYTES,
            lock_ttl: DEFAULT_LOCK_TTL,
            service_network: ServiceNetwork::default(),
            age_identities: None,
            pause_after_chunks: None,
        }
    }
}

impl ApplyOptions {
    fn check(&self) -> anyhow::Result<()> {
        if self.max_txn_ops < MIN_TXN_OPS {
            bail!(
                "max_txn_ops {} is too small: switching a commit over takes {MIN_TXN_OPS} operations",
                self.max_txn_ops
            );
        }
        Ok(())
    }

    /// A commit's manifests as the cluster gets them: loaded, validated,
    /// and their encrypted Secret values decrypted (in memory only).
    pub fn load(&self, files: Vec<(String, Vec<u8>)>) -> Loaded {
        let mut loaded = manifest::load_files(files);
        let found = encrypted_secrets::decrypt_manifests(
            &mut loaded.manifests,
            self.age_identities.as_deref(),
        );
        loaded.diagnostics.extend(found);
        loaded
    }

    fn lock_ttl_seconds(&self) -> i64 {
        i64::try_from(self.lock_ttl.as_secs().max(1)).unwrap_or(i64::MAX)
    }
}

/// The value of the apply lock: what is being written and on which lease,
/// so people (`etcdctl get /commitd/source/applying`) and reconcilers can
/// tell why control loops wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyLock {
    /// The commit whose objects are being written.
    pub commit: CommitInfo,
    /// `Applied` for a new commit, `DriftCorrected` for putting back drift.
    pub purpose: Outcome,
    /// The commit that was live when the lock was taken.
    pub previous: Option<String>,
    /// When the lock was taken, RFC 3339.
    pub started_at: String,
    /// The etcd lease the lock lives on.
    pub lease: i64,
    /// Object writes planned when the lock was taken.
    pub writes: usize,
    /// Transactions those writes were split into.
    pub chunks: usize,
}

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

/// One object write and the compare that guards it.
#[derive(Debug)]
struct Write {
    guard: Compare,
    op: TxnOp,
    /// Key and value bytes, for the request size budget.
    bytes: usize,
}

impl Write {
    /// Writes `value` as stored: JSON, sealed if its kind is encrypted.
    fn put(store: &Store, key: &str, mod_revision: i64, value: &Value) -> anyhow::Result<Write> {
        let json = serde_json::to_vec(value).with_context(|| format!("encoding {key}"))?;
        Ok(Write::put_bytes(key, mod_revision, store.seal(key, json)?))
    }

    fn put_bytes(key: &str, mod_revision: i64, bytes: Vec<u8>) -> Write {
        Write {
            guard: guard(key, mod_revision),
            bytes: 2 * key.len() + bytes.len(),
            op: TxnOp::put(key, bytes, None),
        }
    }

    fn delete(key: &str, mod_revision: i64) -> Write {
        Write {
            guard: guard(key, mod_revision),
            op: TxnOp::delete(key, None),
            bytes: 2 * key.len(),
        }
    }
}

/// What applying a set of manifests would write.
#[derive(Debug, Default)]
pub struct Plan {
    writes: Vec<Write>,
    /// What changes, by `Kind namespace/name`.
    pub changes: Changes,
    /// Unchanged objects that already carry the commit being written: an
    /// earlier apply of it was interrupted after writing them.
    pub resumed: usize,
}

impl Plan {
    /// Whether the plan changes any object.
    pub fn is_empty(&self) -> bool {
        self.changes.created.is_empty()
            && self.changes.updated.is_empty()
            && self.changes.deleted.is_empty()
    }

    /// Whether the writes fit one transaction with `extra_ops` more
    /// operations (and as many more compares) of `extra_bytes`.
    fn fits(&self, options: &ApplyOptions, extra_ops: usize, extra_bytes: usize) -> bool {
        let bytes: usize = self.writes.iter().map(|w| w.bytes).sum();
        self.writes.len() + extra_ops <= options.max_txn_ops
            && bytes + extra_bytes <= options.max_txn_bytes
    }
}

/// Splits writes into transactions that each leave one compare for the
/// lock guard and stay within the byte budget (a single oversized object
/// still gets a transaction of its own; etcd will say if it is too big).
fn chunks(writes: Vec<Write>, options: &ApplyOptions) -> Vec<Vec<Write>> {
    let per_chunk = options.max_txn_ops.saturating_sub(1).max(1);
    let mut out = Vec::new();
    let mut current: Vec<Write> = Vec::new();
    let mut bytes = 0;
    for w in writes {
        if !current.is_empty()
            && (current.len() == per_chunk || bytes + w.bytes > options.max_txn_bytes)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += w.bytes;
        current.push(w);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
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
                // Kept on a Deployment by its controller, as in Kubernetes.
                a.remove(REVISION_ANNOTATION);
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
        }
    }
    v
}

/// Copies into `desired` the spec fields the cluster assigns when Git
/// leaves them out, so they are neither drift nor a change: a Pod's
/// `spec.nodeName`, set by the scheduler when it binds the pod; a claim's
/// `spec.volumeName` and default `spec.storageClassName`, and a volume's
/// `spec.claimRef` (or, pre-bound by name in Git, the uid filled into it),
/// set by the storage controller when it binds them. (Service addresses
/// and ports are allocated into the manifests before the diff.)
pub fn keep_assigned_fields(kind: Kind, desired: &mut Value, current: &Value) {
    if kind == Kind::Job {
        keep_job_identity(desired, current);
        return;
    }
    if kind == Kind::PersistentVolumeClaim {
        for field in ["volumeName", "storageClassName"] {
            keep_spec_field(desired, current, field);
        }
        return;
    }
    if kind == Kind::PersistentVolume {
        keep_claim_ref(desired, current);
        return;
    }
    if kind != Kind::Pod {
        return;
    }
    let wanted = desired.pointer("/spec/nodeName").and_then(Value::as_str);
    if wanted.is_some_and(|n| !n.is_empty()) {
        return;
    }
    let assigned = current.pointer("/spec/nodeName").cloned();
    if let (Some(node), Some(spec)) = (
        assigned,
        desired.get_mut("spec").and_then(Value::as_object_mut),
    ) {
        spec.insert("nodeName".into(), node);
    }
}

/// Copies `spec.<field>` from `current` when Git does not set it.
fn keep_spec_field(desired: &mut Value, current: &Value, field: &str) {
    let Some(assigned) = current.get("spec").and_then(|s| s.get(field)).cloned() else {
        return;
    };
    if let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry(field).or_insert(assigned);
    }
}

/// Keeps a volume's `claimRef` when Git sets none, and the stored one when
/// Git pre-binds the volume to the same claim (the binder fills in its
/// uid and kind).
fn keep_claim_ref(desired: &mut Value, current: &Value) {
    let Some(assigned) = current.pointer("/spec/claimRef").cloned() else {
        return;
    };
    let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let same_claim = |wanted: &Value| {
        let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_owned);
        field(wanted, "name") == field(&assigned, "name")
            && field(wanted, "namespace").unwrap_or_else(|| "default".into())
                == field(&assigned, "namespace").unwrap_or_else(|| "default".into())
            && field(wanted, "uid").is_none_or(|u| Some(u) == field(&assigned, "uid"))
    };
    match spec.get("claimRef") {
        None => {
            spec.insert("claimRef".into(), assigned);
        }
        Some(wanted) if same_claim(wanted) => {
            spec.insert("claimRef".into(), assigned);
        }
        Some(_) => {}
    }
}

/// Every tombstone in etcd, by the key of the object it stands for.
async fn tombstones(store: &Store) -> anyhow::Result<BTreeMap<String, (String, Current)>> {
    let list = store
        .list_prefix(keys::TOMBSTONE_PREFIX)
        .await
        .context("listing tombstones")?;
    let mut out = BTreeMap::new();
    for kv in list.items {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value: Value = match serde_json::from_slice(kv.value()) {
            Ok(v) => v,
            Err(e) => {
                warn!(%key, error = %e, "skipping a tombstone that cannot be read");
                continue;
            }
        };
        let object_key = key.replacen(keys::TOMBSTONE_PREFIX, "/commitd/objects/", 1);
        out.insert(
            object_key,
            (
                key,
                Current {
                    value,
                    mod_revision: kv.mod_revision(),
                },
            ),
        );
    }
    Ok(out)
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
        // The revision a Deployment's controller keeps on it.
        let revision = cur_meta
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(REVISION_ANNOTATION));
        if let Some(revision) = revision {
            if let Some(a) = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
            {
                a.insert(REVISION_ANNOTATION.into(), revision.clone());
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
        let list = store
            .list_raw(kind, None)
            .await
            .with_context(|| format!("listing {kind} objects"))?;
        for kv in list.items {
            let value = match store.decode_value(&kv) {
                Ok(value) => value,
                Err(e) => {
                    warn!(error = %e, "skipping an object that cannot be read");
                    continue;
                }
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
    let mut resp = store
        .client()
        .get(key, None)
        .await
        .with_context(|| format!("reading {key}"))?;
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

fn lock_absent() -> Compare {
    Compare::create_revision(keys::APPLYING, CompareOp::Equal, 0)
}

fn commit_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(COMMIT_ANNOTATION))
        .and_then(Value::as_str)
}

/// Diffs `manifests` against etcd and returns the writes that make etcd
/// match, each guarded by the revision it was computed from. With `prune`,
/// Git-owned objects not among them are deleted; without (a commit applied
/// a sync wave at a time), they are left as they are.
async fn plan(
    store: &Store,
    manifests: &[Manifest],
    sha: &str,
    prune: bool,
) -> anyhow::Result<Plan> {
    let mut current = git_owned(store).await?;
    let mut tombstones = tombstones(store).await?;
    let mut plan = Plan::default();
    for m in manifests {
        let key = keys::object_key(m.kind, m.namespace.as_deref(), &m.name);
        let name = display(m.kind, m.namespace.as_deref(), &m.name);
        let mut desired = annotated(m, sha);
        let tombstone = tombstones.remove(&key);
        let existing = match current.remove(&key) {
            Some((_, c)) => Some(c),
            // Not Git-owned yet: it may still exist (made by hand or by a
            // controller); Git takes it over.
            None => {
                let mut resp = store
                    .client()
                    .get(key.as_str(), None)
                    .await
                    .with_context(|| format!("reading {key}"))?;
                resp.take_kvs()
                    .into_iter()
                    .next()
                    .map(|kv| {
                        store.decode_value(&kv).map(|value| Current {
                            value,
                            mod_revision: kv.mod_revision(),
                        })
                    })
                    .transpose()?
            }
        };
        if let Some(cur) = &existing {
            keep_assigned_fields(m.kind, &mut desired, &cur.value);
        }
        if let Some((tkey, t)) = tombstone {
            let same = t.value.get("view") == Some(&tombstone_view(m.kind, &desired));
            if existing.is_none() && same {
                // Deleted on purpose by the cluster and unchanged in Git:
                // it stays deleted (see `Tombstone`).
                plan.changes.unchanged += 1;
                continue;
            }
            // Changed in Git (or back in etcd): the object is created
            // again and the tombstone goes.
            plan.writes.push(Write::delete(&tkey, t.mod_revision));
        }
        let replaced = replace_on_change(&desired)
            && existing.as_ref().is_some_and(|cur| {
                crate::immutable_fields::immutable_change(m.kind, &desired, &cur.value).is_some()
            });
        match existing {
            None => {
                fill_create_fields(&mut desired);
                if m.kind == Kind::Job {
                    assign_job_identity(&mut desired);
                }
                plan.writes.push(Write::put(store, &key, 0, &desired)?);
                plan.changes.created.push(name);
            }
            Some(cur) if replaced => {
                // A new object under the old name: a new uid (the garbage
                // collector deletes what the old one owned, which names the
                // old uid), no status; for a Job, a fresh selector.
                fill_create_fields(&mut desired);
                if m.kind == Kind::Job {
                    assign_job_identity(&mut desired);
                }
                plan.writes
                    .push(Write::put(store, &key, cur.mod_revision, &desired)?);
                plan.changes.updated.push(name);
            }
            Some(cur) if desired_view(&cur.value) == desired_view(&desired) => {
                if commit_of(&cur.value) == Some(sha) {
                    plan.resumed += 1;
                }
                plan.changes.unchanged += 1;
            }
            Some(cur) => {
                merge_server_fields(&mut desired, &cur.value);
                plan.writes
                    .push(Write::put(store, &key, cur.mod_revision, &desired)?);
                plan.changes.updated.push(name);
            }
        }
    }
    // Tombstones of objects Git no longer declares are housekeeping: a
    // Job declared again later runs again.
    for (_, (tkey, t)) in tombstones.into_iter().filter(|_| prune) {
        plan.writes.push(Write::delete(&tkey, t.mod_revision));
    }
    for (key, (kind, cur)) in current.into_iter().filter(|_| prune) {
        let meta = cur.value.get("metadata");
        let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
        let name = display(kind, field("namespace"), field("name").unwrap_or_default());
        match graceful_pod_deletion(kind, &cur.value) {
            // Already being deleted by its node: nothing to write.
            Some(None) => continue,
            Some(Some(marked)) => {
                plan.writes
                    .push(Write::put(store, &key, cur.mod_revision, &marked)?)
            }
            None => plan.writes.push(Write::delete(&key, cur.mod_revision)),
        }
        plan.changes.deleted.push(name);
    }
    Ok(plan)
}

/// A pod bound to a node is deleted as Kubernetes deletes it: marked with
/// a deletion timestamp and its grace period, so its node runs the preStop
/// hooks, stops the containers with SIGTERM and then removes the object.
/// `None` for anything else (deleted outright); `Some(None)` for a pod
/// already being deleted.
fn graceful_pod_deletion(kind: Kind, value: &Value) -> Option<Option<Value>> {
    if kind != Kind::Pod {
        return None;
    }
    let node = value.pointer("/spec/nodeName").and_then(Value::as_str);
    if node.is_none_or(str::is_empty) {
        return None;
    }
    if value
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Some(None);
    }
    let grace = value
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_POD_GRACE_SECONDS);
    let mut marked = value.clone();
    let meta = marked.get_mut("metadata")?.as_object_mut()?;
    meta.insert(
        "deletionTimestamp".into(),
        serde_json::to_value(meta::now()).ok()?,
    );
    meta.insert("deletionGracePeriodSeconds".into(), grace.into());
    Some(Some(marked))
}

/// Adds to `into` what a later plan found to change besides.
fn merge_changes(into: &mut Changes, more: &Changes) {
    for (dst, src) in [
        (&mut into.created, &more.created),
        (&mut into.updated, &more.updated),
        (&mut into.deleted, &more.deleted),
    ] {
        for name in src {
            if !dst.contains(name) {
                dst.push(name.clone());
            }
        }
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// What became of a commit handed to [`apply_commit`].
#[derive(Debug)]
pub enum ApplyOutcome {
    /// A history record was written (applied or rejected).
    Recorded(Box<HistoryRecord>),
    /// The commit's objects through one sync wave were written; the next
    /// waves follow once it is healthy (apply the same commit again).
    WaveApplied(Box<HistoryRecord>),
    /// The commit is applied through a sync wave that is not healthy yet:
    /// nothing was written. Try again when its objects change.
    WaitingForWave {
        /// The wave waited for.
        wave: i64,
        /// Why it is not healthy, in the health assessment's words.
        why: String,
    },
    /// The commit was already applied or rejected; nothing was written.
    AlreadyKnown,
    /// Another apply holds the apply lock; nothing was written. Try again
    /// when the lock is gone (switched over, or its lease expired).
    Busy(Box<ApplyLock>),
    /// Another reconciler applied a commit since the head was read, so the
    /// head may be stale (it may even be older than what is live now);
    /// nothing was written. Read the head again.
    Superseded,
}

/// The applied record's mod revision (0: none yet). Read it before the
/// branch head and hand it to [`apply_commit`], so a head read before
/// another reconciler's apply is never applied over it.
pub async fn live_revision(store: &Store) -> anyhow::Result<i64> {
    let resp = store
        .client()
        .get(
            keys::APPLIED,
            Some(etcd_client::GetOptions::new().with_keys_only()),
        )
        .await
        .with_context(|| format!("reading {}", keys::APPLIED))?;
    Ok(resp.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// Applies the manifests of a commit, or records why it cannot be.
/// `live_revision` is [`live_revision`] as read before the commit was
/// chosen; `provenance` what the Git source learned of the commit (its
/// signer, a rewrite), recorded with it, and a refusal in it rejects the
/// commit whatever its manifests say.
pub async fn apply_commit(
    store: &Store,
    options: &ApplyOptions,
    commit: &CommitInfo,
    files: Vec<(String, Vec<u8>)>,
    provenance: &Provenance,
    live_revision: i64,
) -> anyhow::Result<ApplyOutcome> {
    options.check()?;
    let loaded = options.load(files);
    let waves = commitd_api::waves::waves(&loaded.manifests);
    for attempt in 0..MAX_ATTEMPTS {
        let applied: Guarded<AppliedCommit> = read_guarded(store, keys::APPLIED).await?;
        let rejected: Guarded<HistoryRecord> = read_guarded(store, keys::REJECTED).await?;
        // `Some(done)`: this commit is the applied one, through wave
        // `done` (`None`: all of it).
        let applied_through = applied
            .value
            .as_ref()
            .filter(|a| a.commit.sha == commit.sha)
            .map(|a| a.through_wave);
        if applied_through == Some(None) {
            return Ok(ApplyOutcome::AlreadyKnown);
        }
        let done = applied_through.flatten();
        if let Some(wave) = done {
            if let Some(why) = crate::waves::unhealthy(store, &loaded.manifests, wave).await? {
                return Ok(ApplyOutcome::WaitingForWave { wave, why });
            }
        }
        let Some(through_wave) = commitd_api::waves::next_stage(&waves, done) else {
            return Ok(ApplyOutcome::AlreadyKnown);
        };
        if applied.mod_revision != live_revision {
            return Ok(ApplyOutcome::Superseded);
        }
        let lock: Guarded<ApplyLock> = read_guarded(store, keys::APPLYING).await?;
        if let Some(lock) = lock.value {
            return Ok(ApplyOutcome::Busy(Box::new(lock)));
        }
        let seq: Guarded<u64> = read_guarded(store, keys::HISTORY_SEQ).await?;
        let next = seq.value.unwrap_or(0) + 1;
        // Each attempt allocates afresh, from the manifests as Git has them.
        let mut loaded = Cow::Borrowed(&loaded);
        if loaded.is_valid() && loaded.manifests.iter().any(|m| m.kind == Kind::Service) {
            let with_addresses = loaded.to_mut();
            let errors = allocate_services(store, &mut with_addresses.manifests, options).await?;
            with_addresses.diagnostics.extend(errors);
        }
        if loaded.is_valid() {
            let errors = crate::immutable_fields::check(store, &loaded.manifests).await?;
            if !errors.is_empty() {
                loaded.to_mut().diagnostics.extend(errors);
            }
        }
        let result = if provenance.refusal.is_none() && loaded.is_valid() {
            let staged = match through_wave {
                None => loaded,
                Some(wave) => Cow::Owned(Loaded {
                    manifests: loaded
                        .manifests
                        .iter()
                        .filter(|m| commitd_api::waves::wave_of(&m.object) <= wave)
                        .cloned()
                        .collect(),
                    diagnostics: loaded.diagnostics.clone(),
                }),
            };
            let target = Proposal {
                commit,
                provenance,
                loaded: &staged,
            };
            try_apply(store, options, &target, through_wave, &applied, &seq, next).await?
        } else {
            let target = Proposal {
                commit,
                provenance,
                loaded: &loaded,
            };
            // A rejected head is looked at again when a reconciler starts,
            // as its configuration may have changed (a key allowed, an
            // identity given): it is recorded again only if it is now
            // rejected for other reasons.
            let record = history_record(next, &target, Outcome::Rejected, Changes::default());
            let same = rejected.value.as_ref().is_some_and(|r| {
                r.commit.sha == commit.sha
                    && r.errors == record.errors
                    && r.provenance.refusal == record.provenance.refusal
            });
            if same {
                return Ok(ApplyOutcome::AlreadyKnown);
            }
            try_reject(store, record, &applied, &rejected, &seq).await?
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
                    through_wave = ?through_wave,
                    "commit recorded"
                );
                if through_wave.is_some() && record.outcome == Outcome::Applied {
                    return Ok(ApplyOutcome::WaveApplied(Box::new(record)));
                }
                return Ok(ApplyOutcome::Recorded(Box::new(record)));
            }
            None => debug!(attempt, "lost a race with another writer; planning again"),
        }
    }
    bail!(
        "commit {}: etcd kept changing under the apply; gave up after {MAX_ATTEMPTS} attempts",
        commit.short_sha()
    )
}

/// Gives the commit's Services their ClusterIPs and node ports, keeping
/// those the Services in etcd hold (see [`service_network`]); returns the
/// errors that reject the commit.
pub async fn allocate_services(
    store: &Store,
    manifests: &mut [Manifest],
    options: &ApplyOptions,
) -> anyhow::Result<Vec<Diagnostic>> {
    if !manifests.iter().any(|m| m.kind == Kind::Service) {
        return Ok(Vec::new());
    }
    let existing = store
        .list::<Service>(None)
        .await
        .context("listing Services to allocate addresses")?;
    Ok(service_network::allocate(
        manifests,
        &existing.items,
        &options.service_network,
    ))
}

/// A commit as the apply sees it: what Git holds and what the Git source
/// learned of it.
struct Proposal<'a> {
    commit: &'a CommitInfo,
    provenance: &'a Provenance,
    loaded: &'a Loaded,
}

fn history_record(
    seq: u64,
    proposal: &Proposal<'_>,
    outcome: Outcome,
    changes: Changes,
) -> HistoryRecord {
    // A refused commit's manifests were not what refused it.
    let diagnostics = match proposal.provenance.refusal {
        Some(_) => &[][..],
        None => &proposal.loaded.diagnostics[..],
    };
    let (errors, warnings): (Vec<Diagnostic>, Vec<Diagnostic>) =
        diagnostics.iter().cloned().partition(Diagnostic::is_error);
    HistoryRecord {
        seq,
        commit: proposal.commit.clone(),
        outcome,
        recorded_at: now_rfc3339(),
        changes,
        errors,
        warnings,
        note: None,
        health: None,
        provenance: proposal.provenance.clone(),
    }
}

/// Builds the history record (and, for an apply, the new applied record)
/// once the sequence number is known; a chunked write knows it only at the
/// switch-over.
type RecordFn<'a> =
    dyn Fn(u64, &Changes) -> (HistoryRecord, Option<AppliedCommit>) + Send + Sync + 'a;

/// The puts of a switch-over: applied record (if any), sequence, history.
fn record_ops(
    seq: u64,
    record: &HistoryRecord,
    applied: Option<&AppliedCommit>,
) -> anyhow::Result<Vec<TxnOp>> {
    let mut ops = Vec::with_capacity(RECORD_OPS + 1);
    if let Some(a) = applied {
        ops.push(TxnOp::put(
            keys::APPLIED,
            serde_json::to_vec(a).context("encoding the applied record")?,
            None,
        ));
    }
    ops.push(TxnOp::put(
        keys::HISTORY_SEQ,
        serde_json::to_vec(&seq)?,
        None,
    ));
    ops.push(TxnOp::put(
        keys::history_key(seq),
        serde_json::to_vec(record).context("encoding the history record")?,
        None,
    ));
    Ok(ops)
}

fn record_bytes(record: &HistoryRecord, applied: Option<&AppliedCommit>) -> usize {
    let len = |bytes: serde_json::Result<Vec<u8>>| bytes.map_or(0, |b| b.len());
    len(serde_json::to_vec(record)) + applied.map_or(0, |a| len(serde_json::to_vec(a)))
}

async fn try_apply(
    store: &Store,
    options: &ApplyOptions,
    proposal: &Proposal<'_>,
    through_wave: Option<i64>,
    applied: &Guarded<AppliedCommit>,
    seq: &Guarded<u64>,
    next: u64,
) -> anyhow::Result<Option<HistoryRecord>> {
    let (commit, loaded) = (proposal.commit, proposal.loaded);
    let prune = through_wave.is_none();
    let plan = plan(store, &loaded.manifests, &commit.sha, prune).await?;
    let resumed = plan.resumed;
    let make_record = move |seq: u64, changes: &Changes| {
        let mut record = history_record(seq, proposal, Outcome::Applied, changes.clone());
        if resumed > 0 {
            record.note = Some(format!(
                "completed an interrupted apply of this commit: {resumed} object(s) were already written"
            ));
        }
        if let Some(wave) = through_wave {
            record.note = Some(format!(
                "applied through sync wave {wave}; later waves follow once it is healthy"
            ));
        }
        let new_applied = AppliedCommit {
            commit: commit.clone(),
            seq,
            applied_at: record.recorded_at.clone(),
            objects: loaded.manifests.len(),
            through_wave,
        };
        (record, Some(new_applied))
    };
    let (record, new_applied) = make_record(next, &plan.changes);
    if !plan.fits(
        options,
        RECORD_OPS,
        record_bytes(&record, new_applied.as_ref()),
    ) {
        let target = Target {
            commit,
            purpose: Outcome::Applied,
            manifests: &loaded.manifests,
            prune,
            applied,
            record: &make_record,
        };
        return write_chunked(store, options, &target, plan).await;
    }
    let (mut compares, mut ops): (Vec<Compare>, Vec<TxnOp>) =
        plan.writes.into_iter().map(|w| (w.guard, w.op)).unzip();
    compares.push(guard(keys::APPLIED, applied.mod_revision));
    compares.push(guard(keys::HISTORY_SEQ, seq.mod_revision));
    compares.push(lock_absent());
    ops.extend(record_ops(next, &record, new_applied.as_ref())?);
    commit_txn(store, compares, ops)
        .await
        .map(|ok| ok.then_some(record))
}

async fn try_reject(
    store: &Store,
    record: HistoryRecord,
    applied: &Guarded<AppliedCommit>,
    rejected: &Guarded<HistoryRecord>,
    seq: &Guarded<u64>,
) -> anyhow::Result<Option<HistoryRecord>> {
    let next = record.seq;
    let compares = vec![
        guard(keys::APPLIED, applied.mod_revision),
        guard(keys::REJECTED, rejected.mod_revision),
        guard(keys::HISTORY_SEQ, seq.mod_revision),
        lock_absent(),
    ];
    let bytes = serde_json::to_vec(&record)?;
    let ops = vec![
        TxnOp::put(keys::REJECTED, bytes.clone(), None),
        TxnOp::put(keys::HISTORY_SEQ, serde_json::to_vec(&next)?, None),
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
            "writing {n} operations in one etcd transaction (if etcd found too many, pass the reconciler etcd's --max-txn-ops)"
        )
    })?;
    Ok(resp.succeeded())
}

/// What a chunked write is for and how it is recorded.
struct Target<'a> {
    commit: &'a CommitInfo,
    purpose: Outcome,
    /// Re-planned from when an object changes under the write.
    manifests: &'a [Manifest],
    /// Whether the plan deletes what `manifests` do not declare.
    prune: bool,
    /// The applied record as read before planning; the lock is taken only
    /// if it is still so.
    applied: &'a Guarded<AppliedCommit>,
    record: &'a RecordFn<'a>,
}

/// Writes a plan too large for one transaction: takes the apply lock on a
/// fresh lease, writes the chunks, switches over, and releases the lease
/// whatever happened. `None` if the lock could not be taken or was lost
/// (another writer won; the caller plans again).
async fn write_chunked(
    store: &Store,
    options: &ApplyOptions,
    target: &Target<'_>,
    plan: Plan,
) -> anyhow::Result<Option<HistoryRecord>> {
    let mut client = store.client();
    let lease = client
        .lease_grant(options.lock_ttl_seconds(), None)
        .await
        .context("granting the apply lock's lease")?
        .id();
    let writes = plan.writes.len();
    let changes = plan.changes;
    let first = chunks(plan.writes, options);
    let lock = ApplyLock {
        commit: target.commit.clone(),
        purpose: target.purpose,
        previous: target.applied.value.as_ref().map(|a| a.commit.sha.clone()),
        started_at: now_rfc3339(),
        lease,
        writes,
        chunks: first.len(),
    };
    let take = async {
        let value = serde_json::to_vec(&lock).context("encoding the apply lock")?;
        let txn = Txn::new()
            .when([
                guard(keys::APPLIED, target.applied.mod_revision),
                lock_absent(),
            ])
            .and_then([TxnOp::put(
                keys::APPLYING,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = client
            .clone()
            .txn(txn)
            .await
            .context("taking the apply lock")?;
        anyhow::Ok(
            resp.succeeded()
                .then(|| resp.header().map(|h| h.revision()).unwrap_or_default()),
        )
    };
    let lock_revision = match take.await {
        Ok(Some(revision)) => revision,
        Ok(None) => {
            release(client, lease).await;
            return Ok(None);
        }
        Err(e) => {
            release(client, lease).await;
            return Err(e);
        }
    };
    info!(
        commit = target.commit.short_sha(),
        purpose = ?target.purpose,
        writes,
        chunks = lock.chunks,
        lease,
        "took the apply lock; writing in chunks"
    );
    let result = tokio::select! {
        r = write_under_lock(store, options, target, first, changes, lock_revision) => r,
        e = keep_alive(client.clone(), lease, options.lock_ttl) => Err(e),
    };
    // Revoking deletes the lock if a failed write left it, and ends the
    // lease either way.
    release(client, lease).await;
    result
}

/// Steps 2 and 3 of a chunked write, under the lock taken at
/// `lock_revision`.
async fn write_under_lock(
    store: &Store,
    options: &ApplyOptions,
    target: &Target<'_>,
    first: Vec<Vec<Write>>,
    mut changes: Changes,
    lock_revision: i64,
) -> anyhow::Result<Option<HistoryRecord>> {
    let ours = || Compare::mod_revision(keys::APPLYING, CompareOp::Equal, lock_revision);
    let short = target.commit.short_sha();
    let mut pending = Some(first);
    let mut written = 0;
    for _ in 0..MAX_ATTEMPTS {
        let batch = match pending.take() {
            Some(batch) => batch,
            None => {
                let again = plan(store, target.manifests, &target.commit.sha, target.prune).await?;
                merge_changes(&mut changes, &again.changes);
                chunks(again.writes, options)
            }
        };
        let mut conflict = false;
        for chunk in batch {
            let n = chunk.len();
            let (mut compares, ops): (Vec<Compare>, Vec<TxnOp>) =
                chunk.into_iter().map(|w| (w.guard, w.op)).unzip();
            compares.push(ours());
            let resp = store
                .client()
                .txn(Txn::new().when(compares).and_then(ops))
                .await
                .with_context(|| {
                    format!(
                        "commit {short}: writing chunk {} ({n} objects) under the apply lock",
                        written + 1
                    )
                })?;
            if !resp.succeeded() {
                if !holds_lock(store, lock_revision).await? {
                    warn!(commit = short, "lost the apply lock mid-apply");
                    return Ok(None);
                }
                debug!(
                    commit = short,
                    "an object changed under the apply; planning the rest again"
                );
                conflict = true;
                break;
            }
            written += 1;
            debug!(
                commit = short,
                chunk = written,
                objects = n,
                "chunk written"
            );
            if options.pause_after_chunks == Some(written) {
                warn!(
                    commit = short,
                    chunks = written,
                    "test hook: pausing mid-apply with the lock held"
                );
                std::future::pending::<()>().await;
            }
        }
        if !conflict {
            return switch_over(store, target, &changes, lock_revision).await;
        }
    }
    bail!("commit {short}: objects kept changing under the chunked apply; gave up after {MAX_ATTEMPTS} plans")
}

/// Step 3: records and lock delete in one transaction guarded by the lock.
async fn switch_over(
    store: &Store,
    target: &Target<'_>,
    changes: &Changes,
    lock_revision: i64,
) -> anyhow::Result<Option<HistoryRecord>> {
    for _ in 0..MAX_ATTEMPTS {
        let seq: Guarded<u64> = read_guarded(store, keys::HISTORY_SEQ).await?;
        let next = seq.value.unwrap_or(0) + 1;
        let (record, applied) = (target.record)(next, changes);
        let compares = vec![
            Compare::mod_revision(keys::APPLYING, CompareOp::Equal, lock_revision),
            guard(keys::HISTORY_SEQ, seq.mod_revision),
            guard(keys::APPLIED, target.applied.mod_revision),
        ];
        let mut ops = record_ops(next, &record, applied.as_ref())?;
        ops.push(TxnOp::delete(keys::APPLYING, None));
        if commit_txn(store, compares, ops)
            .await
            .context("switching over to the chunked commit")?
        {
            return Ok(Some(record));
        }
        if !holds_lock(store, lock_revision).await? {
            warn!(
                commit = target.commit.short_sha(),
                "lost the apply lock before switching over"
            );
            return Ok(None);
        }
    }
    bail!(
        "commit {}: the history sequence kept changing at the switch-over",
        target.commit.short_sha()
    )
}

/// Whether the apply lock is still the one put at `lock_revision`.
async fn holds_lock(store: &Store, lock_revision: i64) -> anyhow::Result<bool> {
    let resp = store
        .client()
        .get(keys::APPLYING, None)
        .await
        .context("reading the apply lock")?;
    Ok(resp
        .kvs()
        .first()
        .is_some_and(|kv| kv.mod_revision() == lock_revision))
}

/// Renews the lease until renewing fails; returns why.
async fn keep_alive(client: Client, lease: i64, ttl: Duration) -> anyhow::Error {
    match renew(client, lease, ttl).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn renew(
    mut client: Client,
    lease: i64,
    ttl: Duration,
) -> anyhow::Result<std::convert::Infallible> {
    let period = (ttl / 3).max(Duration::from_millis(200));
    let (mut keeper, mut stream) = client
        .lease_keep_alive(lease)
        .await
        .context("starting the apply lock's keep-alive")?;
    loop {
        tokio::time::sleep(period).await;
        keeper
            .keep_alive()
            .await
            .context("renewing the apply lock's lease")?;
        match tokio::time::timeout(period, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => bail!("the apply lock's lease expired"),
            Ok(Ok(None)) => bail!("the apply lock's keep-alive stream ended"),
            Ok(Err(e)) => return Err(anyhow::Error::from(e).context("the apply lock's keep-alive")),
            Err(_) => bail!("the apply lock's keep-alive got no answer within {period:?}"),
        }
    }
}

/// Revokes the apply lock's lease (deleting the lock if still there);
/// bounded, since an unreachable etcd lets it expire by itself.
async fn release(mut client: Client, lease: i64) {
    match tokio::time::timeout(RELEASE_TIMEOUT, client.lease_revoke(lease)).await {
        Ok(Ok(_)) => debug!(lease, "apply lock lease revoked"),
        Ok(Err(e)) => {
            warn!(lease, error = %e, "revoking the apply lock's lease failed; it expires by itself")
        }
        Err(_) => warn!(
            lease,
            "revoking the apply lock's lease timed out; it expires by itself"
        ),
    }
}

/// Puts back Git-owned objects that were changed or deleted in etcd by
/// anyone but the reconciler, and records the correction in history.
/// Returns the record if something was corrected. Does nothing while any
/// apply holds the apply lock: its holder decides what etcd should hold.
/// While a commit is applied a sync wave at a time (`through_wave`),
/// `manifests` are those of the waves written, and nothing else is pruned.
pub async fn correct_drift(
    store: &Store,
    options: &ApplyOptions,
    applied_sha: &str,
    through_wave: Option<i64>,
    manifests: &[Manifest],
) -> anyhow::Result<Option<HistoryRecord>> {
    options.check()?;
    for _ in 0..MAX_ATTEMPTS {
        let applied: Guarded<AppliedCommit> = read_guarded(store, keys::APPLIED).await?;
        let Some(current) = applied.value.as_ref() else {
            return Ok(None);
        };
        if current.commit.sha != applied_sha || current.through_wave != through_wave {
            // A newer commit (or wave) was applied meanwhile; its
            // reconciler owns it.
            return Ok(None);
        }
        let lock: Guarded<ApplyLock> = read_guarded(store, keys::APPLYING).await?;
        if lock.value.is_some() {
            debug!("an apply is in progress; drift correction waits for it");
            return Ok(None);
        }
        let prune = through_wave.is_none();
        let plan = plan(store, manifests, applied_sha, prune).await?;
        if plan.is_empty() {
            return Ok(None);
        }
        let commit = current.commit.clone();
        let make_record = |seq: u64, changes: &Changes| {
            let mut names: Vec<String> = changes.created.clone();
            names.extend(changes.updated.iter().cloned());
            names.extend(changes.deleted.iter().cloned());
            let record = HistoryRecord {
                seq,
                commit: commit.clone(),
                outcome: Outcome::DriftCorrected,
                recorded_at: now_rfc3339(),
                changes: changes.clone(),
                errors: Vec::new(),
                warnings: Vec::new(),
                note: Some(format!(
                    "put back what was changed outside Git: {}",
                    names.join(", ")
                )),
                health: None,
                provenance: Default::default(),
            };
            (record, None)
        };
        let seq: Guarded<u64> = read_guarded(store, keys::HISTORY_SEQ).await?;
        let next = seq.value.unwrap_or(0) + 1;
        let (record, _) = make_record(next, &plan.changes);
        let corrected = if plan.fits(options, RECORD_OPS, record_bytes(&record, None)) {
            let (mut compares, mut ops): (Vec<Compare>, Vec<TxnOp>) =
                plan.writes.into_iter().map(|w| (w.guard, w.op)).unzip();
            compares.push(guard(keys::APPLIED, applied.mod_revision));
            compares.push(guard(keys::HISTORY_SEQ, seq.mod_revision));
            compares.push(lock_absent());
            ops.extend(record_ops(next, &record, None)?);
            commit_txn(store, compares, ops).await?.then_some(record)
        } else {
            let target = Target {
                commit: &commit,
                purpose: Outcome::DriftCorrected,
                manifests,
                prune,
                applied: &applied,
                record: &make_record,
            };
            write_chunked(store, options, &target, plan).await?
        };
        if let Some(record) = corrected {
            let names = record.note.as_deref().unwrap_or_default();
            warn!(
                commit = current.commit.short_sha(),
                "drift corrected: {names}"
            );
            return Ok(Some(record));
        }
    }
    bail!("drift correction kept losing races with other writers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_templates::{changed_template_field, REPLACE_ON_CHANGE_ANNOTATION};
    use serde_json::json;

    fn job_manifest() -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "demo",
                "annotations": {COMMIT_ANNOTATION: "abc", SOURCE_ANNOTATION: "jobs/pi.yaml:1"}},
            "spec": {"completions": 1, "template": {
                "metadata": {"labels": {"job-name": "pi", "batch.kubernetes.io/job-name": "pi"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i:1"}]}}}})
    }

    #[test]
    fn jobs_get_a_generated_selector_that_is_neither_drift_nor_a_change() {
        let mut stored = job_manifest();
        fill_create_fields(&mut stored);
        assign_job_identity(&mut stored);
        let uid = stored["metadata"]["uid"].as_str().expect("uid").to_string();
        assert_eq!(
            stored["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        );
        let labels = &stored["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["controller-uid"], json!(uid));
        assert_eq!(labels["job-name"], "pi");
        // The manifest as Git has it again: same view once kept.
        let mut desired = job_manifest();
        keep_assigned_fields(Kind::Job, &mut desired, &stored);
        assert_eq!(desired_view(&desired), desired_view(&stored));
        assert_eq!(changed_template_field(&desired, &stored), None);
        // And the tombstone view of both is the manifest's.
        assert_eq!(
            tombstone_view(Kind::Job, &stored),
            tombstone_view(Kind::Job, &job_manifest())
        );
    }

    #[test]
    fn a_changed_job_template_names_the_first_field_that_changed() {
        let mut stored = job_manifest();
        fill_create_fields(&mut stored);
        assign_job_identity(&mut stored);
        let mut desired = job_manifest();
        desired["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i:2");
        keep_assigned_fields(Kind::Job, &mut desired, &stored);
        assert_eq!(
            changed_template_field(&desired, &stored).map(|f| f.to_string()),
            Some("spec.template.spec.containers[0].image".to_string())
        );
        // Other spec fields are not the template.
        let mut desired = job_manifest();
        desired["spec"]["backoffLimit"] = json!(2);
        keep_assigned_fields(Kind::Job, &mut desired, &stored);
        assert_eq!(changed_template_field(&desired, &stored), None);
        assert!(!replace_on_change(&desired));
        desired["metadata"]["annotations"][REPLACE_ON_CHANGE_ANNOTATION] = json!("true");
        assert!(replace_on_change(&desired));
    }

    #[test]
    fn bound_pods_leaving_git_are_deleted_gracefully() {
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 7}});
        let marked = graceful_pod_deletion(Kind::Pod, &bound)
            .expect("a pod")
            .expect("marked");
        assert!(
            marked["metadata"]["deletionTimestamp"].is_string(),
            "{marked}"
        );
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 7);
        assert_eq!(graceful_pod_deletion(Kind::Pod, &marked), Some(None));
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(graceful_pod_deletion(Kind::Pod, &unbound), None);
        assert_eq!(graceful_pod_deletion(Kind::ConfigMap, &bound), None);
    }

    #[test]
    fn view_ignores_status_identity_commit_and_revision() {
        let a = json!({"kind": "Deployment", "metadata": {"name": "w", "uid": "1", "generation": 3,
            "annotations": {"commitd.io/commit": "abc", "commitd.io/source": "a.yaml:1",
                            "deployment.kubernetes.io/revision": "4"}},
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

    fn writes(n: usize, value_len: usize) -> Vec<Write> {
        (0..n)
            .map(|i| Write::put_bytes(&format!("k{i}"), 0, vec![b'x'; value_len + 2]))
            .collect()
    }

    #[test]
    fn chunks_leave_a_compare_for_the_lock_guard() {
        let options = ApplyOptions {
            max_txn_ops: 16,
            ..ApplyOptions::default()
        };
        let sizes: Vec<usize> = chunks(writes(40, 1), &options)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![15, 15, 10]);
        assert!(chunks(Vec::new(), &options).is_empty());
    }

    #[test]
    fn chunks_stay_within_the_byte_budget() {
        // Each write: 2 × "kN" + the JSON string ("x" × 26 in quotes) = 32.
        let options = ApplyOptions {
            max_txn_ops: 128,
            max_txn_bytes: 100,
            ..ApplyOptions::default()
        };
        let sizes: Vec<usize> = chunks(writes(7, 26), &options)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        // One object over the budget still gets a transaction of its own.
        let sizes: Vec<usize> = chunks(writes(2, 500), &options)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![1, 1]);
    }

    #[test]
    fn a_plan_fits_one_transaction_with_its_records() {
        let options = ApplyOptions {
            max_txn_ops: 16,
            ..ApplyOptions::default()
        };
        let plan = Plan {
            writes: writes(13, 1),
            ..Plan::default()
        };
        assert!(plan.fits(&options, RECORD_OPS, 0));
        let plan = Plan {
            writes: writes(14, 1),
            ..Plan::default()
        };
        assert!(!plan.fits(&options, RECORD_OPS, 0));
        let too_small = ApplyOptions {
            max_txn_ops: 3,
            ..ApplyOptions::default()
        };
        assert!(too_small.check().is_err());
    }

    #[test]
    fn later_plans_add_only_new_names() {
        let mut changes = Changes {
            created: vec!["ConfigMap a/x".into()],
            ..Changes::default()
        };
        let more = Changes {
            created: vec!["ConfigMap a/x".into(), "ConfigMap a/y".into()],
            deleted: vec!["ConfigMap a/z".into()],
            ..Changes::default()
        };
        merge_changes(&mut changes, &more);
        assert_eq!(changes.created, vec!["ConfigMap a/x", "ConfigMap a/y"]);
        assert_eq!(changes.deleted, vec!["ConfigMap a/z"]);
    }

    #[test]
    fn merge_keeps_identity_and_revision_and_bumps_generation_on_spec_change() {
        let current = json!({"metadata": {"name": "w", "uid": "u1", "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"deployment.kubernetes.io/revision": "3"}},
            "spec": {"replicas": 2}, "status": {"replicas": 2}});
        let mut desired = json!({"metadata": {"name": "w"}, "spec": {"replicas": 3}});
        merge_server_fields(&mut desired, &current);
        assert_eq!(desired["metadata"]["uid"], "u1");
        assert_eq!(
            desired["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3",
            "a commit keeps the revision the controller set"
        );
        assert_eq!(desired["metadata"]["generation"], 3);
        assert_eq!(desired["status"]["replicas"], 2);
        let mut same =
            json!({"metadata": {"name": "w", "labels": {"a": "b"}}, "spec": {"replicas": 2}});
        merge_server_fields(&mut same, &current);
        assert_eq!(same["metadata"]["generation"], 2);
    }

    #[test]
    fn bound_claims_and_volumes_are_not_drift() {
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "demo"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                "resources": {"requests": {"storage": "1Gi"}}}});
        let mut stored = claim.clone();
        stored["spec"]["volumeName"] = json!("pvc-1");
        stored["spec"]["storageClassName"] = json!("local-path");
        stored["status"] = json!({"phase": "Bound"});
        let mut desired = claim.clone();
        keep_assigned_fields(Kind::PersistentVolumeClaim, &mut desired, &stored);
        assert_eq!(desired_view(&desired), desired_view(&stored));
        // What Git sets, Git keeps.
        let mut explicit = claim.clone();
        explicit["spec"]["storageClassName"] = json!("");
        keep_assigned_fields(Kind::PersistentVolumeClaim, &mut explicit, &stored);
        assert_eq!(explicit["spec"]["storageClassName"], json!(""));

        let volume = json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "v"},
            "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/data"}}});
        let reference = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": "demo", "name": "data", "uid": "u-1"});
        let mut stored = volume.clone();
        stored["spec"]["claimRef"] = reference.clone();
        let mut desired = volume.clone();
        keep_assigned_fields(Kind::PersistentVolume, &mut desired, &stored);
        assert_eq!(desired_view(&desired), desired_view(&stored));
        // Pre-bound in Git by name: the uid the binder added is kept.
        let mut prebound = volume.clone();
        prebound["spec"]["claimRef"] = json!({"namespace": "demo", "name": "data"});
        keep_assigned_fields(Kind::PersistentVolume, &mut prebound, &stored);
        assert_eq!(prebound["spec"]["claimRef"], reference);
        // Pre-bound to another claim: Git's word stands (a change).
        let mut other = volume.clone();
        other["spec"]["claimRef"] = json!({"namespace": "demo", "name": "logs"});
        keep_assigned_fields(Kind::PersistentVolume, &mut other, &stored);
        assert_eq!(other["spec"]["claimRef"]["name"], json!("logs"));
    }
}
