//! `commitd get`: objects as `kubectl get` shows them — the same arguments
//! (`po,deploy`, `deploy/web`, `-n`, `-A`, `-o wide|json|yaml|name`), the
//! same columns, the same messages and exit codes — so that habits and
//! scripts carry over from Kubernetes unchanged.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use commitd_api::k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use commitd_api::k8s_openapi::api::batch::v1::{CronJob, Job};
use commitd_api::k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec,
    PodTemplateSpec, Secret, Service, ServiceAccount, ServicePort,
};
use commitd_api::k8s_openapi::api::storage::v1::StorageClass;
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::{meta, Kind, Object, Store};
use serde_json::{json, Value};

use super::output::{self, age, format_endpoints, format_labels, pod_summary, Table};
use super::ClusterArgs;

mod storage_columns;
mod workload_columns;

/// Arguments of `commitd get`, spelled as kubectl spells them.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to show: KIND[,KIND...] [NAME...] (e.g. `pods`, `po,deploy`,
    /// `deploy web`), or KIND/NAME... (e.g. `deploy/web pod/web-x`). Kinds:
    /// pods, services, endpoints, deployments, replicasets, jobs, nodes,
    /// namespaces, configmaps, secrets, or `all` (pods, services,
    /// deployments, replicasets, jobs).
    #[arg(value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// Namespace to read from.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Read from every namespace (adds a NAMESPACE column).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format: a wider table, the objects as JSON or YAML, or
    /// `kind/name` lines.
    #[arg(short, long, value_enum)]
    pub output: Option<Format>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The output formats of `-o`, the subset of kubectl's that fit here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The table with extra columns.
    Wide,
    /// A `List` (or the single object asked for by name) as JSON.
    Json,
    /// A `List` (or the single object asked for by name) as YAML.
    Yaml,
    /// One `kind/name` per object, for scripts.
    Name,
}

/// What was asked for: kinds in the order given, each with the names asked
/// for (none means "list them all").
#[derive(Debug, PartialEq, Eq)]
struct Request {
    kinds: Vec<(Kind, Vec<String>)>,
    /// One object named once: kubectl then prints it bare, not in a `List`.
    single: bool,
}

/// Why the arguments cannot be served; printed as kubectl prints it.
#[derive(Debug, PartialEq, Eq)]
struct UsageError(String);

/// Shows objects. Exit 0 when everything asked for was printed (even if
/// nothing exists), 1 when a kind is unknown or a named object is missing.
pub async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    let request = match parse_request(&args.resources) {
        Ok(r) => r,
        Err(UsageError(msg)) => {
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(1));
        }
    };
    let named = request.kinds.iter().any(|(_, names)| !names.is_empty());
    if named && args.all_namespaces {
        eprintln!("error: a resource cannot be retrieved by name across all namespaces");
        return Ok(ExitCode::from(1));
    }
    let store = args.cluster.connect().await?;
    let scope = (!args.all_namespaces).then_some(args.namespace.as_str());
    let wide = args.output == Some(Format::Wide);
    let now = Timestamp::now();

    let mut results = Vec::new();
    for (kind, names) in &request.kinds {
        results.push(fetch(&store, *kind, scope, names, wide, now).await?);
    }
    let text = match args.output {
        Some(Format::Json) | Some(Format::Yaml) => {
            let value = as_document(&results, request.single);
            match (value, args.output) {
                (Some(v), Some(Format::Json)) => output::json(&v)?,
                (Some(v), _) => output::yaml(&v)?,
                (None, _) => String::new(),
            }
        }
        Some(Format::Name) => results
            .iter()
            .flat_map(|r| r.items.iter().map(|i| format!("{}\n", i.reference())))
            .collect(),
        None | Some(Format::Wide) => tables(&results, args.all_namespaces),
    };
    output::emit(&text)?;

    let mut missing = false;
    for r in &results {
        for name in &r.missing {
            missing = true;
            eprintln!(
                "Error from server (NotFound): {} \"{name}\" not found",
                qualified_resource(r.kind)
            );
        }
    }
    let printed_nothing = results.iter().all(|r| r.items.is_empty());
    let human = matches!(args.output, None | Some(Format::Wide));
    if human && printed_nothing && !missing {
        let cluster_scoped = request.kinds.iter().any(|(k, _)| !k.namespaced());
        if args.all_namespaces || cluster_scoped {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", args.namespace);
        }
    }
    Ok(if missing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads the command line as kubectl does: either `KIND[,KIND] [NAME...]`
/// or `KIND/NAME...`, never a mix.
fn parse_request(args: &[String]) -> Result<Request, UsageError> {
    let Some(first) = args.first() else {
        return Err(UsageError(
            "You must specify the type of resource to get. Kinds: pods, services, \
             endpoints, deployments, replicasets, nodes, namespaces, configmaps, secrets"
                .into(),
        ));
    };
    let mut kinds: Vec<(Kind, Vec<String>)> = Vec::new();
    let mut add = |kind: Kind, name: Option<&str>| {
        let slot = match kinds.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                kinds.push((kind, Vec::new()));
                kinds.len() - 1
            }
        };
        if let Some(n) = name {
            if !kinds[slot].1.iter().any(|m| m == n) {
                kinds[slot].1.push(n.to_string());
            }
        }
    };
    if first.contains('/') {
        for arg in args {
            let Some((kind, name)) = arg.split_once('/') else {
                return Err(UsageError(format!(
                    "there is no need to specify a resource type as a separate argument \
                     when passing arguments in resource/name form (e.g. 'commitd get \
                     resource/<resource_name>' instead of 'commitd get resource \
                     resource/<resource_name>'), got \"{arg}\""
                )));
            };
            if name.is_empty() {
                return Err(UsageError(format!(
                    "arguments in resource/name form must have a single resource and name, got \"{arg}\""
                )));
            }
            add(resolve(kind)?, Some(name));
        }
        let single = args.len() == 1;
        return Ok(Request { kinds, single });
    }
    let mut requested = Vec::new();
    for word in first.split(',').filter(|w| !w.is_empty()) {
        if word.eq_ignore_ascii_case("all") {
            // kubectl's `all` category, as far as commitd has its kinds.
            requested.extend([
                Kind::Pod,
                Kind::Service,
                Kind::DaemonSet,
                Kind::Deployment,
                Kind::ReplicaSet,
                Kind::StatefulSet,
                Kind::Job,
                Kind::CronJob,
            ]);
        } else {
            requested.push(resolve(word)?);
        }
    }
    if requested.is_empty() {
        return Err(UsageError(format!(
            "the server doesn't have a resource type \"{first}\""
        )));
    }
    let names = &args[1..];
    for kind in requested {
        add(kind, None);
        for name in names {
            add(kind, Some(name));
        }
    }
    let single = kinds.len() == 1 && names.len() == 1;
    Ok(Request { kinds, single })
}

fn resolve(word: &str) -> Result<Kind, UsageError> {
    Kind::from_cli(word).ok_or_else(|| {
        UsageError(format!(
            "the server doesn't have a resource type \"{word}\""
        ))
    })
}

/// `deployments.apps`, as kubectl names a resource in errors.
pub(crate) fn qualified_resource(kind: Kind) -> String {
    match kind.group() {
        "" => kind.plural().to_string(),
        g => format!("{}.{g}", kind.plural()),
    }
}

/// `deployment.apps`, as kubectl prefixes names (`deployment.apps/web`).
fn type_prefix(kind: Kind) -> String {
    let singular = kind.name().to_ascii_lowercase();
    match kind.group() {
        "" => singular,
        g => format!("{singular}.{g}"),
    }
}

/// One object ready to print in any format.
#[derive(Debug)]
struct Item {
    kind: Kind,
    namespace: Option<String>,
    /// The table cells, NAME first.
    cells: Vec<String>,
    name: String,
    json: Value,
}

impl Item {
    fn reference(&self) -> String {
        format!("{}/{}", type_prefix(self.kind), self.name)
    }
}

/// The objects of one kind that were found, and the names that were not.
#[derive(Debug)]
struct Fetched {
    kind: Kind,
    headers: Vec<&'static str>,
    items: Vec<Item>,
    missing: Vec<String>,
}

async fn fetch(
    store: &Store,
    kind: Kind,
    scope: Option<&str>,
    names: &[String],
    wide: bool,
    now: Timestamp,
) -> anyhow::Result<Fetched> {
    match kind {
        Kind::Pod => fetch_kind::<Pod>(store, scope, names, wide, now).await,
        Kind::Deployment => fetch_kind::<Deployment>(store, scope, names, wide, now).await,
        Kind::ReplicaSet => fetch_kind::<ReplicaSet>(store, scope, names, wide, now).await,
        Kind::Job => fetch_kind::<Job>(store, scope, names, wide, now).await,
        Kind::Node => fetch_kind::<Node>(store, scope, names, wide, now).await,
        Kind::Namespace => fetch_kind::<Namespace>(store, scope, names, wide, now).await,
        Kind::ConfigMap => fetch_kind::<ConfigMap>(store, scope, names, wide, now).await,
        Kind::Secret => fetch_kind::<Secret>(store, scope, names, wide, now).await,
        Kind::ServiceAccount => fetch_kind::<ServiceAccount>(store, scope, names, wide, now).await,
        Kind::Service => fetch_kind::<Service>(store, scope, names, wide, now).await,
        Kind::Endpoints => fetch_kind::<Endpoints>(store, scope, names, wide, now).await,
        Kind::CronJob => fetch_kind::<CronJob>(store, scope, names, wide, now).await,
        Kind::DaemonSet => fetch_kind::<DaemonSet>(store, scope, names, wide, now).await,
        Kind::StatefulSet => fetch_kind::<StatefulSet>(store, scope, names, wide, now).await,
        Kind::PersistentVolumeClaim => {
            fetch_kind::<PersistentVolumeClaim>(store, scope, names, wide, now).await
        }
        Kind::PersistentVolume => {
            fetch_kind::<PersistentVolume>(store, scope, names, wide, now).await
        }
        Kind::StorageClass => fetch_kind::<StorageClass>(store, scope, names, wide, now).await,
        Kind::ControllerRevision => {
            fetch_kind::<ControllerRevision>(store, scope, names, wide, now).await
        }
    }
}

async fn fetch_kind<T: Object + Columns>(
    store: &Store,
    scope: Option<&str>,
    names: &[String],
    wide: bool,
    now: Timestamp,
) -> anyhow::Result<Fetched> {
    let kind = T::STORE_KIND;
    let scope = if kind.namespaced() { scope } else { None };
    let mut objects: Vec<T> = Vec::new();
    let mut missing = Vec::new();
    if names.is_empty() {
        objects = super::list_objects::<T>(store, scope).await?;
    } else {
        for name in names {
            let found = store
                .get::<T>(scope, name)
                .await
                .with_context(|| format!("reading {} {name}", kind.plural()))?;
            match found {
                Some(obj) => objects.push(obj),
                None => missing.push(name.clone()),
            }
        }
    }
    let items = objects
        .into_iter()
        .map(|obj| {
            Ok(Item {
                kind,
                namespace: meta::namespace(&obj).map(str::to_string),
                cells: obj.cells(wide, now),
                name: meta::name(&obj).to_string(),
                json: serde_json::to_value(&obj)
                    .with_context(|| format!("encoding {}", meta::display_key(&obj)))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Fetched {
        kind,
        headers: T::headers(wide),
        items,
        missing,
    })
}

/// The tables of every kind that has objects, one after the other and
/// separated by a blank line; names carry their kind when more than one
/// kind is shown, as kubectl does.
fn tables(results: &[Fetched], all_namespaces: bool) -> String {
    let shown: Vec<&Fetched> = results.iter().filter(|r| !r.items.is_empty()).collect();
    let with_kind = shown.len() > 1;
    let mut blocks = Vec::new();
    for r in shown {
        let namespace_column = all_namespaces && r.kind.namespaced();
        let mut headers: Vec<&str> = Vec::new();
        if namespace_column {
            headers.push("NAMESPACE");
        }
        headers.extend(&r.headers);
        let mut table = Table::new(headers);
        for item in &r.items {
            let mut cells = Vec::with_capacity(item.cells.len() + 1);
            if namespace_column {
                cells.push(item.namespace.clone().unwrap_or_default());
            }
            let mut own = item.cells.clone();
            if with_kind {
                if let Some(name) = own.first_mut() {
                    // What a kind adds after the name stays (a default
                    // StorageClass's ` (default)`, as kubectl prints it).
                    let suffix = name.strip_prefix(item.name.as_str()).unwrap_or_default();
                    *name = format!("{}{suffix}", item.reference());
                }
            }
            cells.extend(own);
            table.row(cells);
        }
        blocks.push(table.render());
    }
    blocks.join("\n")
}

/// The JSON document `-o json|yaml` prints: the object itself when exactly
/// one was named, else a `List` of everything found (kubectl's shape).
fn as_document(results: &[Fetched], single: bool) -> Option<Value> {
    let items: Vec<Value> = results
        .iter()
        .flat_map(|r| r.items.iter().map(|i| i.json.clone()))
        .collect();
    if single {
        return items.into_iter().next();
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": { "resourceVersion": "" },
    }))
}

/// The columns kubectl's printers show for a kind.
trait Columns {
    fn headers(wide: bool) -> Vec<&'static str>;
    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String>;
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

impl Columns for Pod {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
        if wide {
            h.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let s = pod_summary(self, now);
        let mut c = vec![
            meta::name(self).to_string(),
            s.ready,
            s.status,
            s.restarts,
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            let status = self.status.as_ref();
            let ip = status
                .and_then(|s| s.pod_ips.as_ref())
                .and_then(|ips| ips.first())
                .map(|ip| ip.ip.as_str())
                .or_else(|| status.and_then(|s| s.pod_ip.as_deref()))
                .unwrap_or_default();
            let node = self
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or_default();
            let nominated = status
                .and_then(|s| s.nominated_node_name.as_deref())
                .unwrap_or_default();
            c.extend([
                none_if_empty(ip),
                none_if_empty(node),
                none_if_empty(nominated),
                readiness_gates(self),
            ]);
        }
        c
    }
}

/// `met/total` readiness gates, or `<none>` (kubectl's READINESS GATES).
fn readiness_gates(pod: &Pod) -> String {
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_deref())
        .unwrap_or_default();
    if gates.is_empty() {
        return "<none>".to_string();
    }
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let met = gates
        .iter()
        .filter(|g| {
            conditions
                .iter()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        })
        .count();
    format!("{met}/{}", gates.len())
}

/// kubectl's CONTAINERS and IMAGES cells: names and images, comma joined.
fn containers_and_images(template: Option<&PodTemplateSpec>) -> [String; 2] {
    let containers = template
        .and_then(|t| t.spec.as_ref())
        .map_or(&[][..], |s: &PodSpec| s.containers.as_slice());
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or_default())
        .collect();
    [names.join(","), images.join(",")]
}

/// A label selector in kubectl's string form (`app=web,tier in (a,b)`),
/// requirements sorted by key as `labels.Selector.String()` sorts them.
fn selector_string(selector: &LabelSelector) -> String {
    let mut terms: Vec<(String, String)> = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        terms.push((k.clone(), format!("{k}={v}")));
    }
    for r in selector.match_expressions.iter().flatten() {
        let mut values = r.values.clone().unwrap_or_default();
        values.sort();
        let values = values.join(",");
        let term = match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            op => format!("{} {op} ({values})", r.key),
        };
        terms.push((r.key.clone(), term));
    }
    terms.sort();
    let s: Vec<String> = terms.into_iter().map(|(_, t)| t).collect();
    none_if_empty(&s.join(","))
}

/// The revision a Deployment or ReplicaSet is at, `<none>` without.
fn revision_cell(m: &ObjectMeta) -> String {
    meta::annotation(m, meta::REVISION_ANNOTATION)
        .unwrap_or("<none>")
        .to_string()
}

/// The short form of the commit an annotation names, `<none>` without.
fn commit_cell(m: &ObjectMeta, annotation: &str) -> String {
    meta::annotation(m, annotation)
        .map(|sha| sha.get(..7).unwrap_or(sha).to_string())
        .unwrap_or_else(|| "<none>".into())
}

impl Columns for Deployment {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
        if wide {
            h.extend(["CONTAINERS", "IMAGES", "SELECTOR", "REVISION", "COMMIT"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
        let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
        let available = status.and_then(|s| s.available_replicas).unwrap_or(0);
        let mut c = vec![
            meta::name(self).to_string(),
            format!("{ready}/{desired}"),
            updated.to_string(),
            available.to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.extend(containers_and_images(spec.map(|s| &s.template)));
            c.push(spec.map_or_else(|| "<none>".into(), |s| selector_string(&s.selector)));
            // Its current revision, and the commit that last changed it.
            c.push(revision_cell(&self.metadata));
            c.push(commit_cell(&self.metadata, meta::COMMIT_ANNOTATION));
        }
        c
    }
}

/// kubectl's Job columns: STATUS from the conditions (in kubectl's order
/// of precedence), COMPLETIONS as `succeeded/completions` (`n/1 of p` for
/// a work queue), DURATION from start to completion (or to now).
impl Columns for Job {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"];
        if wide {
            h.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.clone().unwrap_or_default();
        let holds = |t: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True")
        };
        let state = if holds("Complete") {
            "Complete"
        } else if holds("Failed") {
            "Failed"
        } else if meta::is_terminating(&self.metadata) {
            "Terminating"
        } else if holds("Suspended") {
            "Suspended"
        } else if holds("FailureTarget") {
            "FailureTarget"
        } else if holds("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        let succeeded = status.succeeded.unwrap_or(0);
        let completions = match spec.and_then(|s| s.completions) {
            Some(c) => format!("{succeeded}/{c}"),
            None => match spec.and_then(|s| s.parallelism).unwrap_or(0) {
                p if p > 1 => format!("{succeeded}/1 of {p}"),
                _ => format!("{succeeded}/1"),
            },
        };
        let duration = match (&status.start_time, &status.completion_time) {
            (None, _) => String::new(),
            (Some(start), None) => age(Some(start), now),
            (Some(start), Some(end)) => age(Some(start), end.0),
        };
        let mut c = vec![
            meta::name(self).to_string(),
            state.to_string(),
            completions,
            duration,
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.extend(containers_and_images(spec.map(|s| &s.template)));
            c.push(
                spec.and_then(|s| s.selector.as_ref())
                    .map_or_else(|| "<none>".into(), selector_string),
            );
        }
        c
    }
}

impl Columns for ReplicaSet {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"];
        if wide {
            h.extend(["CONTAINERS", "IMAGES", "SELECTOR", "REVISION", "COMMIT"]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
        let current = status.map_or(0, |s| s.replicas);
        let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let mut c = vec![
            meta::name(self).to_string(),
            desired.to_string(),
            current.to_string(),
            ready.to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.extend(containers_and_images(
                spec.and_then(|s| s.template.as_ref()),
            ));
            c.push(spec.map_or_else(|| "<none>".into(), |s| selector_string(&s.selector)));
            // Its revision, and the commit that rolled it out.
            c.push(revision_cell(&self.metadata));
            c.push(commit_cell(&self.metadata, meta::ROLLOUT_COMMIT_ANNOTATION));
        }
        c
    }
}

/// kubectl's node STATUS: `Ready`/`NotReady`/`Unknown`, plus
/// `SchedulingDisabled` when cordoned.
pub(crate) fn node_status(node: &Node) -> String {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == "Ready");
    let mut status = match ready {
        Some(c) if c.status == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

/// kubectl's ROLES: from `node-role.kubernetes.io/<role>` labels and the
/// older `kubernetes.io/role` label.
fn node_roles(node: &Node) -> String {
    let mut roles: Vec<&str> = Vec::new();
    for (k, v) in node.metadata.labels.iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role);
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.push(v);
        }
    }
    roles.sort_unstable();
    roles.dedup();
    none_if_empty(&roles.join(","))
}

impl Columns for Node {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
        if wide {
            h.extend([
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ]);
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let status = self.status.as_ref();
        let info = status.and_then(|s| s.node_info.as_ref());
        let mut c = vec![
            meta::name(self).to_string(),
            node_status(self),
            node_roles(self),
            age(self.metadata.creation_timestamp.as_ref(), now),
            info.map(|i| i.kubelet_version.clone()).unwrap_or_default(),
        ];
        if wide {
            let address = |kind: &str| {
                status
                    .and_then(|s| s.addresses.as_deref())
                    .unwrap_or_default()
                    .iter()
                    .find(|a| a.type_ == kind)
                    .map_or_else(|| "<none>".to_string(), |a| a.address.clone())
            };
            let unknown = |s: Option<&String>| match s {
                Some(s) if !s.is_empty() => s.clone(),
                _ => "<unknown>".to_string(),
            };
            c.extend([
                address("InternalIP"),
                address("ExternalIP"),
                unknown(info.map(|i| &i.os_image)),
                unknown(info.map(|i| &i.kernel_version)),
                unknown(info.map(|i| &i.container_runtime_version)),
            ]);
        }
        c
    }
}

impl Columns for Namespace {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "STATUS", "AGE"]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| {
                if self.metadata.deletion_timestamp.is_some() {
                    "Terminating".into()
                } else {
                    "Active".into()
                }
            });
        vec![
            meta::name(self).to_string(),
            phase,
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

impl Columns for ConfigMap {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "DATA", "AGE"]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        let n = self.data.as_ref().map_or(0, BTreeMap::len)
            + self.binary_data.as_ref().map_or(0, BTreeMap::len);
        vec![
            meta::name(self).to_string(),
            n.to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

/// kubectl's columns; commitd issues no tokens, so SECRETS counts the
/// `secrets` the object lists.
impl Columns for ServiceAccount {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "SECRETS", "AGE"]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        vec![
            meta::name(self).to_string(),
            self.secrets.as_ref().map_or(0, Vec::len).to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

impl Columns for Secret {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "TYPE", "DATA", "AGE"]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        let data = self.data.as_ref();
        // `stringData` is write-only in Kubernetes; count keys not yet
        // folded into `data` so nothing declared goes unseen.
        let pending = self
            .string_data
            .iter()
            .flatten()
            .filter(|(k, _)| !data.is_some_and(|d| d.contains_key(*k)))
            .count();
        let n = data.map_or(0, BTreeMap::len) + pending;
        vec![
            meta::name(self).to_string(),
            self.type_.clone().unwrap_or_else(|| "Opaque".into()),
            n.to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

/// kubectl's PORT(S) cell: `port/protocol`, `port:nodePort/protocol` when
/// a node port is allocated, comma joined; `<none>` without ports.
pub(crate) fn service_ports(ports: &[ServicePort]) -> String {
    let pieces: Vec<String> = ports
        .iter()
        .map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port.filter(|n| *n > 0) {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect();
    none_if_empty(&pieces.join(","))
}

/// kubectl's widest load-balancer cell outside `-o wide`.
const LOAD_BALANCER_WIDTH: usize = 16;

/// kubectl's EXTERNAL-IP cell: the external IPs of a ClusterIP or NodePort
/// Service (`<none>`), the ingress addresses of a LoadBalancer (`<pending>`
/// until it has one: commitd has no cloud load balancer and serves these
/// as NodePort), the external name of an ExternalName Service.
pub(crate) fn external_ip(svc: &Service, wide: bool) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    let external_ips = spec.external_ips.unwrap_or_default();
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" if external_ips.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external_ips.join(","),
        "LoadBalancer" => {
            let mut ingress: Vec<String> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i.ip.clone()
                        .filter(|ip| !ip.is_empty())
                        .or_else(|| i.hostname.clone().filter(|h| !h.is_empty()))
                })
                .collect();
            ingress.sort();
            ingress.dedup();
            let mut lb = ingress.join(",");
            if !wide && lb.chars().count() > LOAD_BALANCER_WIDTH {
                lb = lb.chars().take(LOAD_BALANCER_WIDTH - 3).collect::<String>() + "...";
            }
            let mut all: Vec<String> = Vec::new();
            if !lb.is_empty() {
                all.extend(lb.split(',').map(str::to_string));
            }
            all.extend(external_ips);
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => spec.external_name.unwrap_or_default(),
        _ => "<unknown>".to_string(),
    }
}

/// kubectl's CLUSTER-IP cell: the first of `clusterIPs` (`None` for a
/// headless Service), `<none>` when there is none (ExternalName).
pub(crate) fn cluster_ip(svc: &Service) -> String {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.cluster_ips.as_ref())
        .and_then(|ips| ips.first())
        .or_else(|| spec.and_then(|s| s.cluster_ip.as_ref()))
        .filter(|ip| !ip.is_empty())
        .cloned()
        .unwrap_or_else(|| "<none>".to_string())
}

impl Columns for Service {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ];
        if wide {
            h.push("SELECTOR");
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let mut c = vec![
            meta::name(self).to_string(),
            spec.and_then(|s| s.type_.clone())
                .unwrap_or_else(|| "ClusterIP".into()),
            cluster_ip(self),
            external_ip(self, wide),
            service_ports(spec.and_then(|s| s.ports.as_deref()).unwrap_or_default()),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.push(format_labels(spec.and_then(|s| s.selector.as_ref())));
        }
        c
    }
}

impl Columns for Endpoints {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "ENDPOINTS", "AGE"]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        vec![
            meta::name(self).to_string(),
            format_endpoints(self, None),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn kinds_and_names_parse_like_kubectl() {
        let r = parse_request(&args(&["po,deploy", "web"])).unwrap();
        assert_eq!(
            r.kinds,
            vec![
                (Kind::Pod, vec!["web".to_string()]),
                (Kind::Deployment, vec!["web".to_string()])
            ]
        );
        assert!(!r.single);
        let r = parse_request(&args(&["pods", "web"])).unwrap();
        assert!(r.single);
        let r = parse_request(&args(&["deploy/web", "po/a", "pod/b"])).unwrap();
        assert_eq!(
            r.kinds,
            vec![
                (Kind::Deployment, vec!["web".to_string()]),
                (Kind::Pod, vec!["a".to_string(), "b".to_string()])
            ]
        );
        let r = parse_request(&args(&["all"])).unwrap();
        let kinds: Vec<Kind> = r.kinds.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Pod,
                Kind::Service,
                Kind::DaemonSet,
                Kind::Deployment,
                Kind::ReplicaSet,
                Kind::StatefulSet,
                Kind::Job,
                Kind::CronJob
            ]
        );
        let r = parse_request(&args(&["jobs,cronjobs,daemonsets,statefulsets,pvc,pv"])).unwrap();
        let kinds: Vec<Kind> = r.kinds.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Job,
                Kind::CronJob,
                Kind::DaemonSet,
                Kind::StatefulSet,
                Kind::PersistentVolumeClaim,
                Kind::PersistentVolume
            ]
        );
        let r = parse_request(&args(&["services,endpoints"])).unwrap();
        let kinds: Vec<Kind> = r.kinds.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![Kind::Service, Kind::Endpoints]);
        let r = parse_request(&args(&["svc,ep", "web"])).unwrap();
        assert_eq!(r.kinds.len(), 2);
        assert_eq!(
            parse_request(&args(&["pods,widgets"])),
            Err(UsageError(
                "the server doesn't have a resource type \"widgets\"".into()
            ))
        );
        assert!(parse_request(&args(&["deploy/web", "pods"])).is_err());
        assert!(parse_request(&[]).is_err());
    }

    #[test]
    fn resources_are_named_as_kubectl_names_them() {
        assert_eq!(qualified_resource(Kind::Deployment), "deployments.apps");
        assert_eq!(qualified_resource(Kind::Pod), "pods");
        assert_eq!(type_prefix(Kind::ReplicaSet), "replicaset.apps");
        assert_eq!(type_prefix(Kind::ConfigMap), "configmap");
        assert_eq!(type_prefix(Kind::Service), "service");
        assert_eq!(type_prefix(Kind::Endpoints), "endpoints");
        assert_eq!(qualified_resource(Kind::Endpoints), "endpoints");
    }

    #[test]
    fn selectors_print_sorted() {
        let s = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["b".into(), "a".into()]),
            }]),
        };
        assert_eq!(selector_string(&s), "app=web,tier in (a,b)");
        assert_eq!(selector_string(&LabelSelector::default()), "<none>");
    }

    #[test]
    fn several_kinds_print_one_table_each_with_kind_prefixes() {
        let item = |kind, name: &str, cells: &[&str]| Item {
            kind,
            namespace: Some("default".into()),
            cells: cells.iter().map(|c| c.to_string()).collect(),
            name: name.into(),
            json: Value::Null,
        };
        let results = vec![
            Fetched {
                kind: Kind::Pod,
                headers: Pod::headers(false),
                items: vec![item(
                    Kind::Pod,
                    "web-1",
                    &["web-1", "1/1", "Running", "0", "5s"],
                )],
                missing: vec![],
            },
            Fetched {
                kind: Kind::Deployment,
                headers: Deployment::headers(false),
                items: vec![item(
                    Kind::Deployment,
                    "web",
                    &["web", "1/1", "1", "1", "5s"],
                )],
                missing: vec![],
            },
        ];
        assert_eq!(
            tables(&results, false),
            "NAME        READY   STATUS    RESTARTS   AGE\n\
             pod/web-1   1/1     Running   0          5s\n\
             \n\
             NAME                  READY   UP-TO-DATE   AVAILABLE   AGE\n\
             deployment.apps/web   1/1     1            1           5s\n"
        );
        assert_eq!(
            tables(&results[..1], true),
            "NAMESPACE   NAME    READY   STATUS    RESTARTS   AGE\n\
             default     web-1   1/1     Running   0          5s\n"
        );
    }

    #[test]
    fn documents_are_lists_unless_one_object_was_named() {
        let results = vec![Fetched {
            kind: Kind::ConfigMap,
            headers: ConfigMap::headers(false),
            items: vec![],
            missing: vec![],
        }];
        let list = as_document(&results, false).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"], json!([]));
        assert_eq!(as_document(&results, true), None);
    }

    #[test]
    fn jobs_show_kubectl_columns() {
        let now = Timestamp::from_second(1_800_000_100).expect("time");
        let at = |s: i64| Time(Timestamp::from_second(1_800_000_000 + s).expect("time"));
        let job = |spec: Value, status: Value| -> Job {
            serde_json::from_value(json!({
                "metadata": {"name": "pi", "creationTimestamp": at(0)},
                "spec": spec, "status": status
            }))
            .expect("job")
        };
        let template = json!({"spec": {"containers": [{"name": "pi", "image": "perl:5"}]}});
        let done = job(
            json!({"completions": 3, "parallelism": 2, "template": template,
                   "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}}}),
            json!({"succeeded": 3, "startTime": at(10), "completionTime": at(42),
                   "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                  {"type": "Complete", "status": "True"}]}),
        );
        assert_eq!(
            Job::headers(true),
            vec![
                "NAME",
                "STATUS",
                "COMPLETIONS",
                "DURATION",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR"
            ]
        );
        assert_eq!(
            done.cells(true, now),
            vec![
                "pi",
                "Complete",
                "3/3",
                "32s",
                "100s",
                "pi",
                "perl:5",
                "batch.kubernetes.io/controller-uid=u1"
            ]
        );
        let running = job(
            json!({"parallelism": 3, "template": template}),
            json!({"active": 3, "startTime": at(40)}),
        );
        assert_eq!(
            running.cells(false, now),
            vec!["pi", "Running", "0/1 of 3", "60s", "100s"]
        );
        let failed = job(
            json!({"completions": 1, "template": template}),
            json!({"failed": 2, "conditions": [{"type": "FailureTarget", "status": "True"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        );
        assert_eq!(
            failed.cells(false, now),
            vec!["pi", "Failed", "0/1", "", "100s"]
        );
        assert_eq!(qualified_resource(Kind::Job), "jobs.batch");
        assert_eq!(type_prefix(Kind::Job), "job.batch");
    }

    fn service(v: Value) -> Service {
        let mut svc: Service = serde_json::from_value(v).expect("valid service");
        commitd_api::defaults::service(&mut svc);
        svc
    }

    fn now() -> Timestamp {
        "2025-01-01T00:10:00Z".parse().expect("valid time")
    }

    #[test]
    fn service_columns_read_like_kubectl() {
        let web = service(json!({
            "metadata": {"name": "web", "creationTimestamp": "2025-01-01T00:05:00Z"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web", "tier": "front"},
                     "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}
        }));
        assert_eq!(
            web.cells(false, now()),
            vec![
                "web",
                "ClusterIP",
                "10.96.0.10",
                "<none>",
                "80/TCP,443/TCP",
                "5m"
            ]
        );
        assert_eq!(
            web.cells(true, now())[6],
            "app=web,tier=front",
            "-o wide adds the selector"
        );
        let node_port = service(json!({
            "metadata": {"name": "np"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.11", "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}
        }));
        let cells = node_port.cells(true, now());
        assert_eq!(
            cells[1..5],
            [
                "NodePort",
                "10.96.0.11",
                "<none>",
                "80:30080/TCP,53:30053/UDP"
            ]
        );
        assert_eq!(cells[5], "<unknown>");
        let lb = service(json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.12",
                     "ports": [{"port": 443, "nodePort": 31443}]}
        }));
        let cells = lb.cells(true, now());
        assert_eq!(
            cells[1..5],
            ["LoadBalancer", "10.96.0.12", "<pending>", "443:31443/TCP"]
        );
        assert_eq!(cells[6], "<none>", "no selector");
        let headless = service(json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}
        }));
        assert_eq!(
            headless.cells(false, now())[2..5],
            ["None", "<none>", "<none>"]
        );
        let external = service(json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}
        }));
        assert_eq!(
            external.cells(false, now())[1..5],
            ["ExternalName", "<none>", "db.example.com", "<none>"]
        );
        let with_ips = service(json!({
            "metadata": {"name": "x"},
            "spec": {"clusterIP": "10.96.0.13", "externalIPs": ["192.0.2.1", "192.0.2.2"],
                     "ports": [{"port": 80}]}
        }));
        assert_eq!(external_ip(&with_ips, false), "192.0.2.1,192.0.2.2");
    }

    #[test]
    fn load_balancer_addresses_are_cut_unless_wide() {
        let mut lb = service(json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "externalIPs": ["192.0.2.9"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}, {"hostname": "lb.example.com"}]}}
        }));
        assert_eq!(
            external_ip(&lb, true),
            "203.0.113.20,lb.example.com,192.0.2.9"
        );
        assert_eq!(external_ip(&lb, false), "203.0.113.20,...,192.0.2.9");
        lb.spec.as_mut().expect("spec").external_ips = None;
        assert_eq!(external_ip(&lb, false), "203.0.113.20,...");
    }

    #[test]
    fn endpoints_columns_read_like_kubectl() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "creationTimestamp": "2025-01-01T00:09:30Z"},
            "subsets": [{"addresses": [{"ip": "10.244.0.1"}, {"ip": "10.244.0.2"},
                                       {"ip": "10.244.0.3"}, {"ip": "10.244.0.4"}],
                         "ports": [{"port": 8080}]}]
        }))
        .expect("valid endpoints");
        assert_eq!(
            ep.cells(false, now()),
            vec![
                "web",
                "10.244.0.1:8080,10.244.0.2:8080,10.244.0.3:8080 + 1 more...",
                "30s"
            ]
        );
        let empty: Endpoints =
            serde_json::from_value(json!({"metadata": {"name": "db"}})).expect("valid endpoints");
        assert_eq!(empty.cells(false, now())[1], "<none>");
    }

    #[test]
    fn services_and_endpoints_print_as_kubectl_prints_them_together() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web"}, "ports": [{"port": 80}]}
        }));
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.244.0.7"}], "ports": [{"port": 80}]}]
        }))
        .expect("valid endpoints");
        let item = |kind, cells: Vec<String>| Item {
            kind,
            namespace: Some("default".into()),
            cells,
            name: "web".into(),
            json: Value::Null,
        };
        let results = vec![
            Fetched {
                kind: Kind::Service,
                headers: Service::headers(false),
                items: vec![item(Kind::Service, svc.cells(false, now()))],
                missing: vec![],
            },
            Fetched {
                kind: Kind::Endpoints,
                headers: Endpoints::headers(false),
                items: vec![item(Kind::Endpoints, ep.cells(false, now()))],
                missing: vec![],
            },
        ];
        assert_eq!(
            tables(&results, false),
            "NAME          TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE\n\
             service/web   ClusterIP   10.96.0.10   <none>        80/TCP    <unknown>\n\
             \n\
             NAME            ENDPOINTS       AGE\n\
             endpoints/web   10.244.0.7:80   <unknown>\n"
        );
    }
}
