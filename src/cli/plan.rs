//! `commitd plan`: what merging a revision would change, for a pull request.
//!
//! Against another revision (`--base REV`, offline: only the repository is
//! read) or against the live cluster (the Git-owned objects in etcd, found
//! as `commitd get` finds them). Both sides go through the same form before
//! they are compared: Kubernetes' defaults filled in (a field written with
//! its default value on one side and left out on the other is no change),
//! status and the metadata the API server and commitd manage dropped, and
//! what the cluster assigns (Service addresses and node ports, a pod's
//! node) kept when Git leaves it out, as the reconciler keeps it. So the
//! plan lists exactly the objects the reconciler would write, and for each
//! the fields that differ; a Secret's values are never printed.
//!
//! Exit codes follow `flux diff`: 0 no change, 1 changes, 2 errors (the
//! revision's validation errors, with what could be planned all the same).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use commitd_api::defaults;
use commitd_api::diagnostic::Diagnostic;
use commitd_api::diff::{self, ChangeKind, FieldChange, SECRET_VALUE_FIELDS};
use commitd_api::encrypted_secrets;
use commitd_api::k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use commitd_api::k8s_openapi::api::core::v1::{Pod, Secret, Service};
use commitd_api::keys;
use commitd_api::manifest::{self, is_manifest_path, Manifest};
use commitd_api::meta::{COMMIT_ANNOTATION, POD_TEMPLATE_HASH_LABEL, SOURCE_ANNOTATION};
use commitd_api::records::AppliedCommit;
use commitd_api::service_network::allocate;
use commitd_api::{Kind, Store};
use commitd_reconciler::apply::{desired_view, keep_assigned_fields};
use commitd_reconciler::git_source::{GitSource, GitSourceConfig, RemoteOptions, RepoLocation};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::components::ServiceNetworkArgs;
use super::output::{self, plural};
use super::ClusterArgs;

/// Arguments of `commitd plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The revision to plan: anything `git rev-parse` accepts (a branch,
    /// `origin/feature`, a commit id, `HEAD~1`).
    #[arg(value_name = "REV")]
    pub revision: String,
    /// Compare with this revision instead of the live cluster (offline).
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// The Git repository: a work tree, any folder inside one, a bare
    /// repository, or a remote URL (then REV is a branch, fetched into a
    /// temporary mirror, and planned against the live cluster).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// age identity file, to compare the values of encrypted Secrets
    /// rather than their ciphertexts.
    #[arg(long)]
    pub age_identity: Option<PathBuf>,
    /// Folder inside the repository that holds the manifests, as the
    /// reconciler's `--path`.
    #[arg(long, default_value = "")]
    pub path: String,
    /// How to print the plan.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub services: ServiceNetworkArgs,
}

/// The forms a plan is printed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// For a terminal.
    Text,
    /// For a pull-request comment.
    Markdown,
    /// For scripts.
    Json,
}

/// Prints the plan of `args.revision`; exit 0 if nothing would change, 1
/// if something would, 2 if the revision has errors. Failing to read the
/// repository or the cluster is an `Err`.
pub async fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let identities = args
        .age_identity
        .as_deref()
        .map(encrypted_secrets::load_identities)
        .transpose()?;
    // Encrypted values are compared decrypted when an identity is given.
    let load = |files| {
        let mut loaded = manifest::load_files(files);
        if let Some(ids) = &identities {
            let found = encrypted_secrets::decrypt_manifests(&mut loaded.manifests, Some(ids));
            loaded.diagnostics.extend(found);
        }
        loaded
    };
    let (target, base_revision) = read_revisions(&args).await?;
    let mut loaded = load(target.files);
    let (base, base_side, existing_services) = match (&args.base, base_revision) {
        (Some(rev), Some(base)) => {
            let base_loaded = load(base.files);
            let base_errors = base_loaded.errors().count();
            if base_errors > 0 {
                eprintln!(
                    "warning: the base {rev} has {}; planned against the objects of it that load",
                    plural(base_errors, "error", "errors")
                );
            }
            let side = Side::revision(rev, &base.sha);
            (declared(&base_loaded.manifests), side, Vec::new())
        }
        _ => {
            let store = args.cluster.connect().await?;
            let objects = live_objects(&store).await?;
            let applied: Option<AppliedCommit> = store
                .get_record(keys::APPLIED)
                .await
                .with_context(|| format!("reading {}", keys::APPLIED))?;
            let services = objects
                .iter()
                .filter(|(id, _)| id.kind == Kind::Service)
                .filter_map(|(_, c)| serde_json::from_value::<Service>(c.value.clone()).ok())
                .collect();
            let side = Side::cluster(applied.map(|a| a.commit.sha));
            (objects, side, services)
        }
    };
    if loaded.is_valid() {
        // What allocation would refuse (an address or node port out of
        // range or claimed twice); the diff itself keeps what the cluster
        // holds, so the manifests are not changed here.
        let mut scratch = loaded.manifests.clone();
        let network = args.services.network();
        loaded
            .diagnostics
            .extend(allocate(&mut scratch, &existing_services, &network));
    }
    let errors = loaded.errors().cloned().collect();
    let plan = plan(&base, &loaded.manifests, errors);
    let sides = Sides {
        base: base_side,
        target: Side::revision(&args.revision, &target.sha),
    };
    let text = match args.format {
        PlanFormat::Text => text(&plan, &sides),
        PlanFormat::Markdown => markdown(&plan, &sides),
        PlanFormat::Json => plan.json()?,
    };
    output::emit(&text)?;
    Ok(ExitCode::from(plan.exit_code()))
}

/// A revision's commit and manifest files.
struct Revision {
    sha: String,
    files: Vec<(String, Vec<u8>)>,
}

/// The manifest files of a revision's tree under `sub`, as the reconciler
/// reads a commit: every `*.yaml`/`*.yml` blob, paths from the repository
/// root, sorted. A missing folder holds no manifests.
/// The files of the revision to plan, and of `--base`, read on a blocking
/// thread; a remote `--repo` is fetched into a temporary mirror first.
async fn read_revisions(args: &PlanArgs) -> anyhow::Result<(Revision, Option<Revision>)> {
    let config = GitSourceConfig {
        repo: args.repo.clone(),
        ..GitSourceConfig::default()
    };
    let (path, sub) = (args.repo.clone(), args.path.clone());
    let (rev, base) = (args.revision.clone(), args.base.clone());
    if let RepoLocation::Remote(url) = config.location()? {
        if base.is_some() {
            bail!("--base plans between two revisions of a local repository; {url} is remote");
        }
        let mirror = tempfile::tempdir().context("making a temporary mirror")?;
        let source = GitSource::new(GitSourceConfig {
            branch: Some(rev.clone()),
            remote: RemoteOptions {
                mirror_dir: Some(mirror.path().to_path_buf()),
                ..RemoteOptions::default()
            },
            ..config
        });
        let head = source
            .head()
            .await
            .with_context(|| format!("fetching {rev} from {url}"))?;
        let target = source
            .with_repository(move |repo| read_revision(repo, &head, &sub))
            .await?;
        return Ok((target, None));
    }
    tokio::task::spawn_blocking(move || {
        let repo = git2::Repository::discover(&path)
            .with_context(|| format!("opening repository {}", path.display()))?;
        let target = read_revision(&repo, &rev, &sub)?;
        let base = base.map(|b| read_revision(&repo, &b, &sub)).transpose()?;
        Ok((target, base))
    })
    .await?
}

fn read_revision(repo: &git2::Repository, rev: &str, sub: &str) -> anyhow::Result<Revision> {
    let where_ = repo.workdir().unwrap_or_else(|| repo.path()).display();
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .with_context(|| format!("revision {rev:?} names no commit in {where_}"))?;
    let sha = commit.id().to_string();
    let root = commit
        .tree()
        .with_context(|| format!("reading the tree of {rev}"))?;
    let sub = sub.trim_matches('/');
    let tree = if sub.is_empty() {
        root
    } else {
        match root.get_path(Path::new(sub)) {
            Ok(entry) => entry
                .to_object(repo)
                .and_then(|o| o.peel_to_tree())
                .with_context(|| format!("{sub} is not a folder in {rev}"))?,
            Err(_) => {
                eprintln!("warning: {rev} has no folder {sub}: no manifests");
                return Ok(Revision {
                    sha,
                    files: Vec::new(),
                });
            }
        }
    };
    let mut files = Vec::new();
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or_default();
        if entry.kind() != Some(git2::ObjectType::Blob) || !is_manifest_path(name) {
            return git2::TreeWalkResult::Ok;
        }
        let rel = format!("{dir}{name}");
        let full = if sub.is_empty() {
            rel
        } else {
            format!("{sub}/{rel}")
        };
        match repo.find_blob(entry.id()) {
            Ok(blob) => {
                files.push((full, blob.content().to_vec()));
                git2::TreeWalkResult::Ok
            }
            Err(e) => {
                failure = Some(anyhow!("reading {full} in {rev}: {e}"));
                git2::TreeWalkResult::Abort
            }
        }
    })
    .with_context(|| format!("walking the tree of {rev}"))?;
    if let Some(e) = failure {
        return Err(e);
    }
    files.sort();
    Ok(Revision { sha, files })
}

/// Names an object the way plans sort and print it: kinds in the order a
/// commit applies them, then namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    rank: usize,
    /// The kind (its rank in [`Kind::ALL`] sorts first).
    pub kind: Kind,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// The reference to `kind` `namespace/name`.
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            rank: Kind::ALL
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(usize::MAX),
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// `deployment/web (demo)`, as the plan's text names objects.
    pub fn label(&self) -> String {
        let kind = self.kind.name().to_ascii_lowercase();
        match &self.namespace {
            Some(ns) => format!("{kind}/{} ({ns})", self.name),
            None => format!("{kind}/{}", self.name),
        }
    }

    /// `Deployment demo/web`, as other messages name objects.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    fn to_json(&self) -> JsonRef<'_> {
        JsonRef {
            kind: self.kind.name(),
            namespace: self.namespace.as_deref(),
            name: &self.name,
        }
    }
}

/// An object as the base side has it.
#[derive(Debug, Clone)]
pub struct Current {
    /// As declared or stored (before normalising).
    pub value: Value,
    /// The manifest file it came from, when known.
    pub file: Option<String>,
    /// Whether it goes away when Git stops declaring it: every object of a
    /// base revision, only the Git-owned ones in the cluster.
    pub owned: bool,
}

/// The base side's objects.
pub type Objects = BTreeMap<ObjectRef, Current>;

/// The objects a revision declares, as a base.
pub fn declared(manifests: &[Manifest]) -> Objects {
    manifests
        .iter()
        .map(|m| {
            (
                ObjectRef::new(m.kind, m.namespace.as_deref(), &m.name),
                Current {
                    value: m.object.clone(),
                    file: Some(m.source.path.clone()),
                    owned: true,
                },
            )
        })
        .collect()
}

/// Every object of the kinds Git may declare, from etcd: the Git-owned
/// ones are what a commit replaces; the others are taken over if Git
/// declares them, and a Deployment's ReplicaSets say whether a template
/// comes back (a rollback scales an old ReplicaSet up again).
async fn live_objects(store: &Store) -> anyhow::Result<Objects> {
    let mut out = Objects::new();
    for kind in Kind::FROM_GIT {
        let list = store
            .list_raw(kind, None)
            .await
            .with_context(|| format!("listing {}", kind.plural()))?;
        for kv in list.items {
            // Decrypted if stored encrypted (`--encryption-provider-config`).
            let value = match store.decode_value(&kv) {
                Ok(value) => value,
                Err(e) => {
                    eprintln!("warning: skipping an object that cannot be read: {e}");
                    continue;
                }
            };
            let meta = value.get("metadata");
            let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
            let Some(name) = field("name") else { continue };
            let namespace = kind
                .namespaced()
                .then(|| field("namespace").unwrap_or("default"));
            let annotation = |k: &str| {
                meta.and_then(|m| m.get("annotations"))
                    .and_then(|a| a.get(k))
                    .and_then(Value::as_str)
            };
            let owned = annotation(COMMIT_ANNOTATION).is_some();
            let file = annotation(SOURCE_ANNOTATION)
                .map(|s| s.rsplit_once(':').map_or(s, |(path, _)| path).to_string());
            out.insert(
                ObjectRef::new(kind, namespace, name),
                Current { value, file, owned },
            );
        }
    }
    Ok(out)
}

/// An object that would be updated, and how.
#[derive(Debug, Clone)]
pub struct Changed {
    /// Which object.
    pub object: ObjectRef,
    /// What differs, secret values hidden.
    pub fields: Vec<FieldChange>,
}

/// A Deployment, StatefulSet or DaemonSet whose pod template changes: its
/// pods are replaced.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The Deployment.
    pub object: ObjectRef,
    /// `RollingUpdate` or `Recreate`.
    pub strategy: String,
    /// An existing ReplicaSet with the new template (a rollback), which is
    /// scaled up again instead of a new one being made.
    pub reuses: Option<String>,
    /// Paused: the rollout starts only when the Deployment is resumed.
    pub paused: bool,
}

impl Rollout {
    /// `new ReplicaSet, strategy RollingUpdate`.
    pub fn summary(&self) -> String {
        let set = match &self.reuses {
            Some(rs) => format!("ReplicaSet {rs} scaled up again"),
            None if self.object.kind == Kind::Deployment => "new ReplicaSet".to_string(),
            None => "new revision".to_string(),
        };
        let paused = if self.paused {
            " (paused: starts when resumed)"
        } else {
            ""
        };
        format!("{set}, strategy {}{paused}", self.strategy)
    }

    fn to_json(&self) -> JsonRollout<'_> {
        JsonRollout {
            object: self.object.to_json(),
            strategy: &self.strategy,
            replica_set: self.reuses.as_deref(),
            paused: self.paused,
        }
    }
}

/// What applying a revision over a base would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Objects the base does not have.
    pub created: Vec<ObjectRef>,
    /// Objects that differ, with their field changes.
    pub changed: Vec<Changed>,
    /// Objects Git stops declaring (only those Git owns).
    pub deleted: Vec<ObjectRef>,
    /// Deployments whose pods are replaced.
    pub rollouts: Vec<Rollout>,
    /// The revision's errors, by file and line.
    pub errors: Vec<Diagnostic>,
}

impl Plan {
    /// Whether any object would be written.
    pub fn has_changes(&self) -> bool {
        !(self.created.is_empty() && self.changed.is_empty() && self.deleted.is_empty())
    }

    /// `flux diff`'s: 2 errors, 1 changes, 0 neither.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if self.has_changes() {
            1
        } else {
            0
        }
    }

    /// The machine-readable plan, keys in the documented order, indented
    /// as the other commands print JSON; secret values are already hidden.
    pub fn json(&self) -> anyhow::Result<String> {
        let plan = JsonPlan {
            created: self.created.iter().map(ObjectRef::to_json).collect(),
            changed: self
                .changed
                .iter()
                .map(|c| JsonChanged {
                    object: c.object.to_json(),
                    fields: c.fields.iter().map(JsonField::from).collect(),
                })
                .collect(),
            deleted: self.deleted.iter().map(ObjectRef::to_json).collect(),
            rollouts: self.rollouts.iter().map(Rollout::to_json).collect(),
            errors: self
                .errors
                .iter()
                .map(|d| JsonError {
                    file: &d.file,
                    line: d.line,
                    field: d.field.as_deref(),
                    message: &d.message,
                })
                .collect(),
        };
        let mut buf = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
        plan.serialize(&mut ser).context("encoding the plan")?;
        buf.push(b'\n');
        Ok(String::from_utf8(buf)?)
    }

    /// `1 to create, 2 to change, 0 to delete, 1 rollout, 1 error`.
    fn counts(&self) -> String {
        let mut s = format!(
            "{} to create, {} to change, {} to delete",
            self.created.len(),
            self.changed.len(),
            self.deleted.len()
        );
        if !self.rollouts.is_empty() {
            s += &format!(", {}", plural(self.rollouts.len(), "rollout", "rollouts"));
        }
        if !self.errors.is_empty() {
            s += &format!(", {}", plural(self.errors.len(), "error", "errors"));
        }
        s
    }
}

/// `--format json`: `{"created", "changed", "deleted", "rollouts", "errors"}`.
#[derive(Serialize)]
struct JsonPlan<'a> {
    created: Vec<JsonRef<'a>>,
    changed: Vec<JsonChanged<'a>>,
    deleted: Vec<JsonRef<'a>>,
    rollouts: Vec<JsonRollout<'a>>,
    errors: Vec<JsonError<'a>>,
}

#[derive(Serialize)]
struct JsonRef<'a> {
    kind: &'static str,
    namespace: Option<&'a str>,
    name: &'a str,
}

#[derive(Serialize)]
struct JsonChanged<'a> {
    #[serde(flatten)]
    object: JsonRef<'a>,
    fields: Vec<JsonField>,
}

#[derive(Serialize)]
struct JsonField {
    path: String,
    old: Value,
    new: Value,
}

impl From<&FieldChange> for JsonField {
    fn from(f: &FieldChange) -> JsonField {
        let mut v = f.to_json();
        JsonField {
            path: f.path.to_string(),
            old: v["old"].take(),
            new: v["new"].take(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRollout<'a> {
    #[serde(flatten)]
    object: JsonRef<'a>,
    strategy: &'a str,
    /// The existing ReplicaSet scaled up again, if any.
    replica_set: Option<&'a str>,
    paused: bool,
}

#[derive(Serialize)]
struct JsonError<'a> {
    file: &'a str,
    line: usize,
    field: Option<&'a str>,
    message: &'a str,
}

/// Plans `target` (a revision's valid manifests) over `base`. `errors` are
/// the revision's; an object whose file has one is not called deleted,
/// since the file may still declare it.
pub fn plan(base: &Objects, target: &[Manifest], mut errors: Vec<Diagnostic>) -> Plan {
    let mut plan = Plan::default();
    let mut declared = std::collections::BTreeSet::new();
    let mut targets: Vec<&Manifest> = target.iter().collect();
    targets.sort_by_key(|m| ObjectRef::new(m.kind, m.namespace.as_deref(), &m.name));
    for m in targets {
        let id = ObjectRef::new(m.kind, m.namespace.as_deref(), &m.name);
        // A second declaration is an error already; plan the first.
        if !declared.insert(id.clone()) {
            continue;
        }
        let Some(cur) = base.get(&id) else {
            plan.created.push(id);
            continue;
        };
        let mut desired = m.object.clone();
        keep_assigned_fields(m.kind, &mut desired, &cur.value);
        if m.kind == Kind::Service {
            keep_service_addresses(&mut desired, &cur.value);
        }
        let old = comparable(m.kind, &cur.value);
        let new = comparable(m.kind, &desired);
        let mut fields = diff::diff(&old, &new);
        if fields.is_empty() {
            continue;
        }
        if m.kind == Kind::Secret {
            fields = diff::hide_values(fields, &SECRET_VALUE_FIELDS);
        }
        if matches!(
            m.kind,
            Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet
        ) {
            plan.rollouts.extend(rollout(&id, cur, &old, &new, base));
        }
        plan.changed.push(Changed { object: id, fields });
    }
    for (id, cur) in base {
        let in_broken_file = cur
            .file
            .as_deref()
            .is_some_and(|f| errors.iter().any(|e| e.file == f));
        if cur.owned && !declared.contains(id) && !in_broken_file {
            plan.deleted.push(id.clone());
        }
    }
    errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    plan.errors = errors;
    plan
}

/// The rollout a Deployment's change starts, if its pod template changes
/// (a change of replicas alone is a scale).
fn rollout(
    id: &ObjectRef,
    cur: &Current,
    old: &Value,
    new: &Value,
    base: &Objects,
) -> Option<Rollout> {
    let template = new.pointer("/spec/template");
    if old.pointer("/spec/template") == template {
        return None;
    }
    if id.kind != Kind::Deployment {
        // A StatefulSet or DaemonSet: a new revision, rolled by its
        // update strategy.
        let mut strategy = new
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            .unwrap_or("RollingUpdate")
            .to_string();
        match new
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
            .and_then(Value::as_i64)
        {
            Some(p) if p > 0 => strategy += &format!(", partition {p}"),
            _ => {}
        }
        return Some(Rollout {
            object: id.clone(),
            strategy,
            reuses: None,
            paused: false,
        });
    }
    let strategy = new
        .pointer("/spec/strategy/type")
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate")
        .to_string();
    let uid = cur.value.pointer("/metadata/uid").and_then(Value::as_str);
    let reuses = uid.and_then(|uid| {
        base.iter()
            .filter(|(rs, _)| rs.kind == Kind::ReplicaSet && rs.namespace == id.namespace)
            .find(|(_, c)| {
                controlled_by(&c.value, uid) && template_of_set(&c.value).as_ref() == template
            })
            .map(|(rs, _)| rs.name.clone())
    });
    Some(Rollout {
        object: id.clone(),
        strategy,
        reuses,
        paused: new.pointer("/spec/paused") == Some(&Value::Bool(true)),
    })
}

fn controlled_by(value: &Value, uid: &str) -> bool {
    value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| {
            r.get("uid").and_then(Value::as_str) == Some(uid)
                && r.get("controller") == Some(&Value::Bool(true))
        })
}

/// A ReplicaSet's pod template as its Deployment wrote it: without the
/// `pod-template-hash` label the controller adds.
fn template_of_set(value: &Value) -> Option<Value> {
    let mut t = comparable(Kind::ReplicaSet, value)
        .pointer("/spec/template")?
        .clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH_LABEL);
    }
    Some(t)
}

/// The form both sides are compared in: Kubernetes' defaults filled in,
/// status and managed metadata (identity, generation, commitd's commit and
/// source annotations) dropped.
pub fn comparable(kind: Kind, value: &Value) -> Value {
    let mut v = desired_view(&defaulted(kind, value));
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(SOURCE_ANNOTATION);
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    v
}

/// `value` with the api crate's defaults filled in, as the loader fills
/// them into manifests; a value that does not decode is left as it is.
fn defaulted(kind: Kind, value: &Value) -> Value {
    fn with<T: DeserializeOwned + Serialize>(value: &Value, fill: impl FnOnce(&mut T)) -> Value {
        match serde_json::from_value::<T>(value.clone()) {
            Ok(mut obj) => {
                fill(&mut obj);
                serde_json::to_value(&obj).unwrap_or_else(|_| value.clone())
            }
            Err(_) => value.clone(),
        }
    }
    match kind {
        Kind::Deployment => with::<Deployment>(value, defaults::deployment),
        Kind::ReplicaSet => with::<ReplicaSet>(value, defaults::replica_set),
        Kind::Pod => with::<Pod>(value, |p| {
            if let Some(spec) = p.spec.as_mut() {
                defaults::pod_spec(spec)
            }
        }),
        Kind::Service => with::<Service>(value, defaults::service),
        Kind::Secret => with::<Secret>(value, defaults::secret),
        _ => value.clone(),
    }
}

/// Copies into a Service manifest the addresses and node ports `current`
/// holds where Git names none, as allocation keeps them: they are the
/// cluster's, not a change.
fn keep_service_addresses(desired: &mut Value, current: &Value) {
    let cur = current.get("spec");
    let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let list = |v: Option<&Value>| {
        v.and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .cloned()
    };
    let (cur_ip, cur_ips) = (
        text(cur.and_then(|s| s.get("clusterIP"))),
        list(cur.and_then(|s| s.get("clusterIPs"))),
    );
    let (ip, ips) = (text(spec.get("clusterIP")), list(spec.get("clusterIPs")));
    let ty = text(spec.get("type")).unwrap_or_else(|| "ClusterIP".into());
    if ty != "ExternalName" {
        match (&ip, &ips) {
            (None, None) => {
                if let Some(v) = cur_ip.clone() {
                    spec.insert("clusterIP".into(), Value::from(v));
                }
                if let Some(v) = cur_ips.clone() {
                    spec.insert("clusterIPs".into(), Value::from(v));
                }
            }
            (None, Some(ips)) if ips.first().and_then(Value::as_str) == cur_ip.as_deref() => {
                if let Some(v) = cur_ip.clone() {
                    spec.insert("clusterIP".into(), Value::from(v));
                }
            }
            (Some(ip), None) if cur_ips.as_deref() == Some(&[Value::from(ip.as_str())][..]) => {
                if let Some(v) = cur_ips.clone() {
                    spec.insert("clusterIPs".into(), Value::from(v));
                }
            }
            _ => {}
        }
    }
    if ty != "NodePort" && ty != "LoadBalancer" {
        return;
    }
    let held = cur
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for port in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if port
            .get("nodePort")
            .and_then(Value::as_i64)
            .is_some_and(|n| n != 0)
        {
            continue;
        }
        let kept = held
            .iter()
            .find(|h| same_port(h, port))
            .and_then(|h| h.get("nodePort"))
            .cloned();
        if let (Some(np), Some(p)) = (kept, port.as_object_mut()) {
            p.insert("nodePort".into(), np);
        }
    }
}

/// Whether two Service ports are the same one to the allocator: same name
/// when named, else same number; and same protocol.
fn same_port(a: &Value, b: &Value) -> bool {
    let name = |p: &Value| {
        p.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let protocol = |p: &Value| {
        p.get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string()
    };
    protocol(a) == protocol(b)
        && if name(b).is_empty() {
            name(a).is_empty() && a.get("port") == b.get("port")
        } else {
            name(a) == name(b)
        }
}

/// One side of a plan, as its header names it.
#[derive(Debug, Clone)]
pub struct Side {
    /// A revision as given, or `None` for the live cluster.
    pub revision: Option<String>,
    /// The commit: the revision's, or the one applied to the cluster.
    pub commit: Option<String>,
}

impl Side {
    /// A revision and the commit it names.
    pub fn revision(name: &str, sha: &str) -> Side {
        Side {
            revision: Some(name.to_string()),
            commit: Some(sha.to_string()),
        }
    }

    /// The live cluster, with the commit applied to it if any.
    pub fn cluster(applied: Option<String>) -> Side {
        Side {
            revision: None,
            commit: applied,
        }
    }

    fn short(&self) -> Option<&str> {
        self.commit.as_deref().map(|c| c.get(..7).unwrap_or(c))
    }

    /// The revision's name, unless it is the commit id itself (then the
    /// abbreviated id alone says it).
    fn name(&self) -> Option<&str> {
        let rev = self.revision.as_deref()?;
        let is_id = self.commit.as_deref().is_some_and(|c| {
            rev.len() >= 4 && c.len() >= rev.len() && c[..rev.len()].eq_ignore_ascii_case(rev)
        });
        (!is_id).then_some(rev)
    }

    fn text(&self) -> String {
        match (self.revision.is_some(), self.name(), self.short()) {
            (true, Some(r), Some(c)) => format!("{r} ({c})"),
            (true, Some(r), None) => r.to_string(),
            (true, None, Some(c)) => c.to_string(),
            (false, _, Some(c)) => format!("the cluster (applied {c})"),
            _ => "the cluster (nothing applied)".into(),
        }
    }

    fn markdown(&self) -> String {
        match (self.revision.is_some(), self.name(), self.short()) {
            (true, Some(r), Some(c)) => format!("`{r}` ({c})"),
            (true, Some(r), None) => format!("`{r}`"),
            (true, None, Some(c)) => format!("`{c}`"),
            (false, _, Some(c)) => format!("the cluster (applied {c})"),
            _ => "the cluster (nothing applied)".into(),
        }
    }
}

/// What a plan compares.
#[derive(Debug, Clone)]
pub struct Sides {
    /// What is compared with: a revision or the cluster.
    pub base: Side,
    /// The revision planned.
    pub target: Side,
}

/// The plan for a terminal.
pub fn text(plan: &Plan, sides: &Sides) -> String {
    let mut out = format!("Plan: {} → {}\n", sides.base.text(), sides.target.text());
    if !plan.has_changes() && plan.errors.is_empty() {
        out += "\nNo changes.\n";
        return out;
    }
    let section = |out: &mut String, title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            *out += &format!("\n{title}:\n");
            for l in lines {
                *out += &format!("  {l}\n");
            }
        }
    };
    section(
        &mut out,
        "Create",
        plan.created
            .iter()
            .map(|o| format!("+ {}", o.label()))
            .collect(),
    );
    let mut changed = Vec::new();
    for c in &plan.changed {
        changed.push(format!("~ {}", c.object.label()));
        changed.extend(c.fields.iter().map(|f| format!("    {f}")));
    }
    section(&mut out, "Change", changed);
    section(
        &mut out,
        "Delete",
        plan.deleted
            .iter()
            .map(|o| format!("- {}", o.label()))
            .collect(),
    );
    section(
        &mut out,
        "Rollouts",
        plan.rollouts
            .iter()
            .map(|r| format!("{}: {}", r.object.label(), r.summary()))
            .collect(),
    );
    section(
        &mut out,
        "Errors",
        plan.errors.iter().map(ToString::to_string).collect(),
    );
    out += &format!("\n{}\n", plan.counts());
    out
}

/// The plan as a pull-request comment: a heading, the counts, a table of
/// every object touched, each change in a collapsed `diff` block, the
/// rollouts and the errors.
pub fn markdown(plan: &Plan, sides: &Sides) -> String {
    let mut out = format!(
        "### commitd plan: {} → {}\n\n",
        sides.base.markdown(),
        sides.target.markdown()
    );
    if !plan.has_changes() && plan.errors.is_empty() {
        out += "No changes.\n";
        return out;
    }
    out += &format!("{}\n", plan.counts());
    if plan.has_changes() {
        out += "\n| Change | Kind | Namespace | Name |\n|---|---|---|---|\n";
        let rows = plan
            .created
            .iter()
            .map(|o| ("create", o))
            .chain(plan.changed.iter().map(|c| ("change", &c.object)))
            .chain(plan.deleted.iter().map(|o| ("delete", o)));
        for (what, o) in rows {
            out += &format!(
                "| {what} | {} | {} | {} |\n",
                o.kind,
                o.namespace.as_deref().unwrap_or_default(),
                o.name
            );
        }
    }
    for c in &plan.changed {
        let body: String = c.fields.iter().map(diff_lines).collect();
        let fence = fence_for(&body);
        out += &format!(
            "\n<details><summary>{}: {} changed</summary>\n\n{fence}diff\n{body}{fence}\n\n</details>\n",
            c.object.display_name(),
            plural(c.fields.len(), "field", "fields"),
        );
    }
    if !plan.rollouts.is_empty() {
        out += "\n#### Rollouts\n\n";
        for r in &plan.rollouts {
            out += &format!("- `{}`: {}\n", r.object.label(), r.summary());
        }
    }
    if !plan.errors.is_empty() {
        out += "\n#### Errors\n\n";
        for d in &plan.errors {
            let field = d
                .field
                .as_deref()
                .map(|f| format!(" `{f}`:"))
                .unwrap_or_default();
            out += &format!(
                "- `{}:{}`:{field} {}\n",
                d.file,
                d.line,
                escape_html(&d.message)
            );
        }
    }
    out
}

/// One field change as lines of a `diff` block: the old value removed,
/// the new one added; a hidden value changed is marked `!`.
fn diff_lines(f: &FieldChange) -> String {
    let path = &f.path;
    match (f.kind(), f.hidden) {
        (ChangeKind::Added, _) => format!(
            "+ {path}: {}\n",
            if f.hidden { f.summary() } else { f.new_text() }
        ),
        (ChangeKind::Removed, _) => format!(
            "- {path}: {}\n",
            if f.hidden { f.summary() } else { f.old_text() }
        ),
        (ChangeKind::Modified, true) => format!("! {path}: {}\n", f.summary()),
        (ChangeKind::Modified, false) => {
            format!("- {path}: {}\n+ {path}: {}\n", f.old_text(), f.new_text())
        }
    }
}

/// A code fence longer than any run of backticks in `body`.
fn fence_for(body: &str) -> String {
    let longest = body.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(files: &[(&str, &str)]) -> manifest::Loaded {
        manifest::load_files(
            files
                .iter()
                .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec())),
        )
    }

    fn plan_of(base: &[(&str, &str)], target: &[(&str, &str)]) -> Plan {
        let base = load(base);
        assert!(base.is_valid(), "{:?}", base.diagnostics);
        let target = load(target);
        let errors = target.errors().cloned().collect();
        plan(&declared(&base.manifests), &target.manifests, errors)
    }

    fn field_lines(plan: &Plan) -> Vec<String> {
        plan.changed
            .iter()
            .flat_map(|c| {
                c.fields
                    .iter()
                    .map(move |f| format!("{} {f}", c.object.label()))
            })
            .collect()
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{containerPort: 80}]
      - name: log
        image: busybox:1.36
";

    #[test]
    fn an_image_change_is_a_field_by_container_name_and_a_rollout() {
        let new = DEPLOYMENT.replace("nginx:1.25", "nginx:1.26");
        let p = plan_of(&[("web.yaml", DEPLOYMENT)], &[("web.yaml", &new)]);
        assert_eq!(
            field_lines(&p),
            vec!["deployment/web (default) spec.template.spec.containers[web].image: nginx:1.25 → nginx:1.26"]
        );
        let r: Vec<String> = p
            .rollouts
            .iter()
            .map(|r| format!("{}: {}", r.object.label(), r.summary()))
            .collect();
        assert_eq!(
            r,
            vec!["deployment/web (default): new ReplicaSet, strategy RollingUpdate"]
        );
        assert_eq!(p.exit_code(), 1);
    }

    #[test]
    fn stateful_set_template_changes_are_rollouts_by_their_strategy() {
        let sts = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  serviceName: db
  replicas: 3
  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: 2}}
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: postgres:16
";
        let new = sts.replace("postgres:16", "postgres:17");
        let p = plan_of(&[("db.yaml", sts)], &[("db.yaml", &new)]);
        let r: Vec<String> = p
            .rollouts
            .iter()
            .map(|r| format!("{}: {}", r.object.label(), r.summary()))
            .collect();
        assert_eq!(
            r,
            vec!["statefulset/db (default): new revision, strategy RollingUpdate, partition 2"]
        );
        let scaled = sts.replace("replicas: 3", "replicas: 5");
        let p = plan_of(&[("db.yaml", sts)], &[("db.yaml", &scaled)]);
        assert!(p.rollouts.is_empty());
    }

    #[test]
    fn replicas_alone_are_a_scale_not_a_rollout() {
        let new = DEPLOYMENT.replace("replicas: 2", "replicas: 3");
        let p = plan_of(&[("web.yaml", DEPLOYMENT)], &[("web.yaml", &new)]);
        assert_eq!(
            field_lines(&p),
            vec!["deployment/web (default) spec.replicas: 2 → 3"]
        );
        assert!(p.rollouts.is_empty());
    }

    #[test]
    fn fields_written_with_their_default_are_no_change() {
        let explicit = DEPLOYMENT
            .replace(
                "        image: nginx:1.25\n",
                "        image: nginx:1.25\n        imagePullPolicy: IfNotPresent\n",
            )
            .replace("{containerPort: 80}", "{containerPort: 80, protocol: TCP}")
            .replace(
                "  replicas: 2\n",
                "  replicas: 2\n  revisionHistoryLimit: 10\n  strategy:\n    type: RollingUpdate\n    rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}\n",
            );
        let p = plan_of(&[("web.yaml", DEPLOYMENT)], &[("web.yaml", &explicit)]);
        assert!(!p.has_changes(), "{:?}", field_lines(&p));
        assert_eq!(p.exit_code(), 0);
    }

    #[test]
    fn the_cluster_side_is_compared_without_managed_fields() {
        let git = load(&[("web.yaml", DEPLOYMENT)]);
        // As etcd holds it: identity, generation, commitd's annotations,
        // status, and no defaults where a stored object predates them.
        let mut stored = git.manifests[0].object.clone();
        stored["metadata"]["uid"] = json!("5a0e");
        stored["metadata"]["resourceVersion"] = json!("42");
        stored["metadata"]["generation"] = json!(3);
        stored["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        stored["metadata"]["annotations"] =
            json!({COMMIT_ANNOTATION: "abc", SOURCE_ANNOTATION: "web.yaml:1"});
        stored["status"] = json!({"replicas": 2});
        if let Some(spec) = stored["spec"].as_object_mut() {
            spec.remove("revisionHistoryLimit");
        }
        let base = Objects::from([(
            ObjectRef::new(Kind::Deployment, Some("default"), "web"),
            Current {
                value: stored,
                file: Some("web.yaml".into()),
                owned: true,
            },
        )]);
        let p = plan(&base, &git.manifests, Vec::new());
        assert!(!p.has_changes(), "{:?}", field_lines(&p));
    }

    #[test]
    fn service_addresses_the_cluster_assigned_are_no_change() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{name: http, port: 80}]\n";
        let git = load(&[("svc.yaml", svc)]);
        let mut stored = git.manifests[0].object.clone();
        stored["spec"]["clusterIP"] = json!("10.96.0.20");
        stored["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
        stored["spec"]["ports"][0]["nodePort"] = json!(30080);
        let base = Objects::from([(
            ObjectRef::new(Kind::Service, Some("default"), "web"),
            Current {
                value: stored,
                file: None,
                owned: true,
            },
        )]);
        let p = plan(&base, &git.manifests, Vec::new());
        assert!(!p.has_changes(), "{:?}", field_lines(&p));
        // A port Git renumbers keeps its node port; the number changes.
        let renumbered = load(&[("svc.yaml", &svc.replace("port: 80", "port: 8080"))]);
        let p = plan(&base, &renumbered.manifests, Vec::new());
        assert_eq!(
            field_lines(&p),
            vec![
                "service/web (default) spec.ports[http].port: 80 → 8080",
                "service/web (default) spec.ports[http].targetPort: 80 → 8080",
            ]
        );
    }

    #[test]
    fn secret_values_never_show() {
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: hunter2, user: admin}\n";
        let new = secret.replace("hunter2", "correct-horse");
        let p = plan_of(&[("s.yaml", secret)], &[("s.yaml", &new)]);
        assert_eq!(
            field_lines(&p),
            vec!["secret/db (default) data.password: (value changed)"]
        );
        let sides = Sides {
            base: Side::revision("main", "1111111aaaa"),
            target: Side::revision("pr", "2222222bbbb"),
        };
        let printed = format!(
            "{}{}{}",
            text(&p, &sides),
            markdown(&p, &sides),
            p.json().expect("JSON")
        );
        // Neither the values nor their base64 forms.
        for secret in [
            "hunter2",
            "aHVudGVyMg",
            "correct-horse",
            "Y29ycmVjdC1ob3JzZQ",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn created_and_deleted_are_sorted_by_kind_order_namespace_and_name() {
        let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
        let cm = |n: &str, ns: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}, namespace: {ns}}}\n")
        };
        let target = format!(
            "{}---\n{}---\n{}---\n{}",
            cm("b", "x"),
            ns("x"),
            cm("a", "x"),
            cm("z", "default")
        );
        let p = plan_of(
            &[("old.yaml", &cm("gone", "default"))],
            &[("all.yaml", &target)],
        );
        let created: Vec<String> = p.created.iter().map(ObjectRef::label).collect();
        assert_eq!(
            created,
            vec![
                "namespace/x",
                "configmap/z (default)",
                "configmap/a (x)",
                "configmap/b (x)"
            ]
        );
        let deleted: Vec<String> = p.deleted.iter().map(ObjectRef::label).collect();
        assert_eq!(deleted, vec!["configmap/gone (default)"]);
    }

    #[test]
    fn objects_of_a_file_with_errors_are_not_called_deleted() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n";
        let p = plan_of(
            &[("c.yaml", cm)],
            &[(
                "c.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c\n",
            )],
        );
        assert!(p.deleted.is_empty());
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].file, "c.yaml");
        assert_eq!(p.exit_code(), 2);
    }

    #[test]
    fn markdown_has_a_heading_a_table_details_and_a_diff_block() {
        let new = DEPLOYMENT
            .replace("nginx:1.25", "nginx:1.26")
            .replace("replicas: 2", "replicas: 3");
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
        let p = plan_of(
            &[("web.yaml", DEPLOYMENT)],
            &[("web.yaml", &new), ("c.yaml", cm)],
        );
        let sides = Sides {
            base: Side::revision("main", "1111111aaaa"),
            target: Side::revision("pr", "2222222bbbb"),
        };
        assert_eq!(
            markdown(&p, &sides),
            "### commitd plan: `main` (1111111) → `pr` (2222222)

1 to create, 1 to change, 0 to delete, 1 rollout

| Change | Kind | Namespace | Name |
|---|---|---|---|
| create | ConfigMap | default | c |
| change | Deployment | default | web |

<details><summary>Deployment default/web: 2 fields changed</summary>

```diff
- spec.replicas: 2
+ spec.replicas: 3
- spec.template.spec.containers[web].image: nginx:1.25
+ spec.template.spec.containers[web].image: nginx:1.26
```

</details>

#### Rollouts

- `deployment/web (default)`: new ReplicaSet, strategy RollingUpdate
"
        );
    }

    #[test]
    fn a_value_with_backticks_gets_a_longer_fence() {
        assert_eq!(fence_for("- a: x\n"), "```");
        assert_eq!(fence_for("- a: ```x```\n"), "````");
    }

    #[test]
    fn a_rollback_names_the_replica_set_scaled_up_again() {
        let old = load(&[("web.yaml", DEPLOYMENT)]);
        let new = load(&[("web.yaml", &DEPLOYMENT.replace("nginx:1.25", "nginx:1.24"))]);
        let mut deployment = old.manifests[0].object.clone();
        deployment["metadata"]["uid"] = json!("d-uid");
        let mut rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-6b7f9", "namespace": "default",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                "template": new.manifests[0].object["spec"]["template"].clone()}
        });
        rs["spec"]["template"]["metadata"]["labels"][POD_TEMPLATE_HASH_LABEL] = json!("6b7f9");
        let base = Objects::from([
            (
                ObjectRef::new(Kind::Deployment, Some("default"), "web"),
                Current {
                    value: deployment,
                    file: None,
                    owned: true,
                },
            ),
            (
                ObjectRef::new(Kind::ReplicaSet, Some("default"), "web-6b7f9"),
                Current {
                    value: rs,
                    file: None,
                    owned: false,
                },
            ),
        ]);
        let p = plan(&base, &new.manifests, Vec::new());
        assert_eq!(p.rollouts.len(), 1);
        assert_eq!(
            p.rollouts[0].summary(),
            "ReplicaSet web-6b7f9 scaled up again, strategy RollingUpdate"
        );
        // A ReplicaSet not owned by Git is never deleted by a commit.
        assert!(p.deleted.is_empty());
    }
}
