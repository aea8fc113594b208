//! Loading manifests: multi-document YAML from a set of files, each document
//! checked against its kind's schema (unknown fields are errors with a
//! suggestion), decoded into its Kubernetes type, defaulted and validated.
//! Every diagnostic names the file, the line and the field. A set of files
//! is judged as a whole: duplicates and undeclared namespaces are errors.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::defaults;
use crate::diagnostic::Diagnostic;
use crate::field_path::FieldPath;
use crate::kinds::Kind;
use crate::meta::Object;
use crate::schema;
use crate::unsupported;
use crate::validation::{FieldErrors, Validate};
use crate::yaml_position::{self, DocumentIndex};

/// Where a manifest came from: a file and the line its document starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: String,
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path, self.line)
    }
}

/// One valid object from a manifest, defaulted as Kubernetes would store it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub kind: Kind,
    /// The namespace (`default` if the manifest names none), `None` for
    /// cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    pub source: Source,
    /// The object as JSON (apiVersion, kind, metadata, spec/data).
    pub object: Value,
    /// Where each field of the document is, for diagnostics found later
    /// (when the commit is checked against the cluster).
    pub positions: DocumentIndex,
}

impl Manifest {
    /// `Kind namespace/name`, as objects are named in messages.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// An error about `field` of this manifest, at the field's line.
    pub fn error(&self, field: &FieldPath, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(
            &self.source.path,
            self.positions.line_of(field),
            Some(field.to_string()),
            message,
        )
    }

    /// A warning about `field` of this manifest, at the field's line.
    pub fn warning(&self, field: &FieldPath, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(
            &self.source.path,
            self.positions.line_of(field),
            Some(field.to_string()),
            message,
        )
    }
}

/// The objects of a set of files and everything found wrong or doubtful.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub manifests: Vec<Manifest>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// The errors; a set with any error must not be applied.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The warnings (fields accepted but not acted on yet).
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    /// Whether the set has no error.
    pub fn is_valid(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// Whether a path names a manifest file (`*.yaml` or `*.yml`).
pub fn is_manifest_path(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Loads a set of files (path, content), then checks the set as a whole.
pub fn load_files<I>(files: I) -> Loaded
where
    I: IntoIterator<Item = (String, Vec<u8>)>,
{
    let mut loaded = Loaded::default();
    for (path, bytes) in files {
        match std::str::from_utf8(&bytes) {
            Ok(text) => load_documents(&path, text, &mut loaded),
            Err(e) => loaded.diagnostics.push(Diagnostic::error(
                &path,
                1,
                None,
                format!("file is not valid UTF-8: {e}"),
            )),
        }
    }
    check_set(&mut loaded);
    loaded
}

/// Loads every document of one file into `out`.
pub fn load_documents(path: &str, text: &str, out: &mut Loaded) {
    let index = yaml_position::index(text);
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map_or(1, |l| l.line());
                out.diagnostics.push(Diagnostic::error(
                    path,
                    line,
                    None,
                    format!("invalid YAML: {e}"),
                ));
                // serde_yaml cannot resume after a syntax error.
                return;
            }
        };
        let doc_index = index.get(i).cloned().unwrap_or_default();
        if value.is_null() {
            continue;
        }
        if is_ignored(&value) {
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("object");
            out.diagnostics.push(Diagnostic::warning(
                path,
                doc_index.start_line,
                Some(format!("metadata.annotations[{IGNORE_ANNOTATION}]")),
                format!("{kind} skipped: annotated {IGNORE_ANNOTATION}: \"true\""),
            ));
            continue;
        }
        match load_document(path, value, &doc_index) {
            Ok((manifest, warnings)) => {
                out.manifests.push(manifest);
                out.diagnostics.extend(warnings);
            }
            Err(diags) => out.diagnostics.extend(diags),
        }
    }
}

/// The annotation that asks commitd to skip a document: for custom
/// resources and other kinds it does not know, which would otherwise
/// reject the commit.
pub const IGNORE_ANNOTATION: &str = "commitd.io/ignore";

fn is_ignored(doc: &serde_yaml::Value) -> bool {
    doc.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(IGNORE_ANNOTATION))
        .and_then(|v| v.as_str())
        == Some("true")
}

fn load_document(
    path: &str,
    value: serde_yaml::Value,
    index: &DocumentIndex,
) -> Result<(Manifest, Vec<Diagnostic>), Vec<Diagnostic>> {
    let at = |field: &FieldPath| index.line_of(field);
    let err = |field: FieldPath, msg: String| {
        Diagnostic::error(path, at(&field), Some(field.to_string()), msg)
    };
    let mut json = yaml_to_json(value);
    for (p, v) in &index.octals {
        if let Some(slot) = p.lookup_mut(&mut json) {
            if slot.is_string() {
                *slot = Value::from(*v);
            }
        }
    }
    if !json.is_object() {
        return Err(vec![Diagnostic::error(
            path,
            index.start_line,
            None,
            "expected a Kubernetes object (a mapping with apiVersion and kind)",
        )]);
    }
    let field_str = |name: &str| json.get(name).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind_name) = (field_str("apiVersion"), field_str("kind"));
    let mut missing = Vec::new();
    if api_version.is_empty() {
        missing.push(err(FieldPath::parse("apiVersion"), "Required value".into()));
    }
    if kind_name.is_empty() {
        missing.push(err(FieldPath::parse("kind"), "Required value".into()));
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let kind = Kind::from_type(api_version, kind_name)
        .filter(|k| Kind::FROM_GIT.contains(k))
        .ok_or_else(|| {
            vec![err(
                FieldPath::parse("kind"),
                format!(
                    "no matches for kind \"{kind_name}\" in version \"{api_version}\" \
                     (commitd does not know this kind; annotate it {IGNORE_ANNOTATION}: \"true\" to skip it)"
                ),
            )]
        })?;

    let unknown = schema::for_kind(kind).unknown_fields(&json);
    if !unknown.is_empty() {
        return Err(unknown
            .into_iter()
            .map(|u| err(u.path.clone(), u.message()))
            .collect());
    }
    let warnings = unsupported::fields(kind, &json)
        .into_iter()
        .map(|(p, msg)| Diagnostic::warning(path, at(&p), Some(p.to_string()), msg))
        .collect();

    let object = match kind {
        Kind::Namespace => typed::<k8s_openapi::api::core::v1::Namespace>(&json, |_| {}),
        Kind::ConfigMap => typed::<k8s_openapi::api::core::v1::ConfigMap>(&json, |_| {}),
        // ENC[age,…] values are kept for decryption, not decoded as base64.
        Kind::Secret => crate::encrypted_secrets::decode_secret(&json, |j| {
            typed::<k8s_openapi::api::core::v1::Secret>(j, defaults::secret)
        }),
        Kind::ServiceAccount => typed::<k8s_openapi::api::core::v1::ServiceAccount>(&json, |_| {}),
        Kind::Pod => typed::<k8s_openapi::api::core::v1::Pod>(&json, |p| {
            if let Some(s) = p.spec.as_mut() {
                defaults::pod_spec(s)
            }
        }),
        Kind::Deployment => {
            typed::<k8s_openapi::api::apps::v1::Deployment>(&json, defaults::deployment)
        }
        Kind::ReplicaSet => {
            typed::<k8s_openapi::api::apps::v1::ReplicaSet>(&json, defaults::replica_set)
        }
        Kind::Job => typed::<k8s_openapi::api::batch::v1::Job>(&json, defaults::job),
        Kind::Service => typed::<k8s_openapi::api::core::v1::Service>(&json, defaults::service),
        Kind::CronJob => typed::<k8s_openapi::api::batch::v1::CronJob>(&json, defaults::cron_job),
        Kind::DaemonSet => {
            typed::<k8s_openapi::api::apps::v1::DaemonSet>(&json, defaults::daemon_set)
        }
        Kind::StatefulSet => {
            typed::<k8s_openapi::api::apps::v1::StatefulSet>(&json, defaults::stateful_set)
        }
        Kind::PersistentVolumeClaim => typed::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(
            &json,
            defaults::persistent_volume_claim,
        ),
        Kind::PersistentVolume => typed::<k8s_openapi::api::core::v1::PersistentVolume>(
            &json,
            defaults::persistent_volume,
        ),
        Kind::StorageClass => {
            typed::<k8s_openapi::api::storage::v1::StorageClass>(&json, defaults::storage_class)
        }
        Kind::Node | Kind::Endpoints | Kind::ControllerRevision => unreachable_kind(),
    }
    .map_err(|errs| {
        errs.into_iter()
            .map(|(p, msg)| err(p, msg))
            .collect::<Vec<_>>()
    })?;

    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = kind.namespaced().then(|| {
        meta.and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string()
    });
    Ok((
        Manifest {
            kind,
            namespace,
            name,
            source: Source {
                path: path.to_string(),
                line: index.start_line,
            },
            object,
            positions: index.clone(),
        },
        warnings,
    ))
}

fn unreachable_kind() -> Result<Value, Vec<(FieldPath, String)>> {
    Err(vec![(
        FieldPath::parse("kind"),
        "this kind is managed by commitd and cannot be declared in Git".into(),
    )])
}

/// Decodes into `T`, defaults and validates, and returns the JSON to store.
fn typed<T: Object + Validate>(
    json: &Value,
    default: impl FnOnce(&mut T),
) -> Result<Value, Vec<(FieldPath, String)>> {
    let mut obj: T = serde_path_to_error::deserialize(json).map_err(|e| {
        let path = FieldPath::parse(&e.path().to_string().replace('?', ""));
        vec![(path, e.into_inner().to_string())]
    })?;
    if T::STORE_KIND.namespaced() {
        obj.metadata_mut()
            .namespace
            .get_or_insert_with(|| "default".into());
    } else {
        obj.metadata_mut().namespace = None;
    }
    default(&mut obj);
    let mut errs = FieldErrors::default();
    obj.validate(&mut errs);
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    serde_json::to_value(&obj).map_err(|e| vec![(FieldPath::root(), e.to_string())])
}

/// Converts YAML to JSON as Kubernetes does: keys become strings, tags are
/// dropped, non-finite floats become null.
pub fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match yaml_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

/// Checks that only make sense for the set: one object per kind, namespace
/// and name; every namespace used is declared (or is `default`).
fn check_set(loaded: &mut Loaded) {
    let mut seen: BTreeMap<(Kind, Option<String>, String), Source> = BTreeMap::new();
    let declared: HashSet<&str> = loaded
        .manifests
        .iter()
        .filter(|m| m.kind == Kind::Namespace)
        .map(|m| m.name.as_str())
        .collect();
    let mut diags = Vec::new();
    for m in &loaded.manifests {
        let key = (m.kind, m.namespace.clone(), m.name.clone());
        if let Some(first) = seen.get(&key) {
            diags.push(Diagnostic::error(
                &m.source.path,
                m.source.line,
                Some("metadata.name".into()),
                format!(
                    "Duplicate value: {} is declared twice, first at {first}",
                    m.display_name()
                ),
            ));
        } else {
            seen.insert(key, m.source.clone());
        }
        if let Some(ns) = m.namespace.as_deref() {
            if ns != "default" && !declared.contains(ns) {
                diags.push(Diagnostic::error(
                    &m.source.path,
                    m.source.line,
                    Some("metadata.namespace".into()),
                    format!("namespaces \"{ns}\" not found: declare a Namespace named \"{ns}\" in the repository"),
                ));
            }
        }
    }
    loaded.diagnostics.extend(diags);
    let service_warnings = crate::service_checks::warnings(&loaded.manifests);
    loaded.diagnostics.extend(service_warnings);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Loaded {
        load_files(
            files
                .iter()
                .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec())),
        )
    }

    fn messages(l: &Loaded) -> Vec<String> {
        l.diagnostics.iter().map(|d| d.to_string()).collect()
    }

    const APP: &str = r#"# the demo namespace
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: demo, labels: {app: web}}
data:
  index.html: |
    <h1>hello</h1>
    <p>two lines</p>
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: 127.0.0.1:5000/commitd/web:1
        args: [httpd, -f]   # flow list
        ports:
        - containerPort: 80
"#;

    #[test]
    fn loads_a_multi_document_file_with_positions_and_defaults() {
        let l = load(&[("app/web.yaml", APP)]);
        assert!(l.is_valid(), "{:?}", messages(&l));
        assert_eq!(l.manifests.len(), 3);
        let ns = &l.manifests[0];
        assert_eq!(
            (ns.kind, ns.namespace.as_deref(), ns.source.line),
            (Kind::Namespace, None, 2)
        );
        let cm = &l.manifests[1];
        assert_eq!(cm.source.to_string(), "app/web.yaml:7");
        assert_eq!(
            cm.object["data"]["index.html"],
            "<h1>hello</h1>\n<p>two lines</p>\n"
        );
        let d = &l.manifests[2];
        assert_eq!(d.display_name(), "Deployment demo/web");
        assert_eq!(
            d.object["spec"]["template"]["spec"]["restartPolicy"],
            "Always"
        );
        assert_eq!(
            d.object["spec"]["template"]["spec"]["containers"][0]["args"][1],
            "-f"
        );
        assert_eq!(d.object["spec"]["strategy"]["type"], "RollingUpdate");
    }

    #[test]
    fn yaml11_octal_is_read_as_kubernetes_reads_it() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n  volumes:\n  - name: v\n    configMap: {name: c, defaultMode: 0755}\n  hostNetwork: true\n";
        let l = load(&[("p.yaml", pod)]);
        assert!(l.is_valid(), "{:?}", messages(&l));
        assert_eq!(
            l.manifests[0].object["spec"]["volumes"][0]["configMap"]["defaultMode"],
            493
        );
        // And the unsupported field is named in a warning, at its line.
        assert_eq!(
            messages(&l),
            vec!["p.yaml:9: warning: spec.hostNetwork: not supported by commitd yet; the field is stored but ignored"]
        );
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let l = load(&[(
            "bad.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\ndata: {}\n",
        )]);
        assert!(!l.is_valid());
        let d = &l.diagnostics[0];
        assert_eq!((d.file.as_str(), d.line), ("bad.yaml", 4));
        assert!(d.message.starts_with("invalid YAML: "), "{}", d.message);
    }

    #[test]
    fn unknown_field_names_line_and_suggests() {
        let text = APP.replace("  replicas: 2", "  replica: 2");
        let l = load(&[("app/web.yaml", &text)]);
        assert_eq!(
            messages(&l),
            vec!["app/web.yaml:21: error: spec.replica: unknown field \"replica\", did you mean \"replicas\"?"]
        );
    }

    #[test]
    fn type_errors_and_validation_errors_name_the_field_line() {
        let text = APP.replace("replicas: 2", "replicas: two");
        let l = load(&[("w.yaml", &text)]);
        let m = messages(&l);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].starts_with("w.yaml:21: error: spec.replicas: invalid type: string \"two\""),
            "{m:?}"
        );
        let text = APP.replace("        image: 127.0.0.1:5000/commitd/web:1\n", "");
        let l = load(&[("w.yaml", &text)]);
        assert_eq!(
            messages(&l),
            vec!["w.yaml:29: error: spec.template.spec.containers[0].image: Required value"]
        );
    }

    #[test]
    fn duplicates_across_files_and_undeclared_namespaces() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n";
        let l = load(&[("a.yaml", cm), ("b/c.yaml", &format!("---\n{cm}"))]);
        assert_eq!(
            messages(&l),
            vec!["b/c.yaml:2: error: metadata.name: Duplicate value: ConfigMap default/c is declared twice, first at a.yaml:1"]
        );
        let l = load(&[(
            "a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: nowhere}\n",
        )]);
        assert_eq!(l.errors().count(), 1);
        assert!(messages(&l)[0].contains("namespaces \"nowhere\" not found"));
    }

    #[test]
    fn unknown_kinds_and_missing_type_fields() {
        let l = load(&[("x.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\nkind: ConfigMap\n---\n- a list\n")]);
        assert_eq!(
            messages(&l),
            vec![
                "x.yaml:2: error: kind: no matches for kind \"Widget\" in version \"example.com/v1\" \
                 (commitd does not know this kind; annotate it commitd.io/ignore: \"true\" to skip it)",
                "x.yaml:5: error: apiVersion: Required value",
                "x.yaml:7: error: expected a Kubernetes object (a mapping with apiVersion and kind)",
            ]
        );
    }

    #[test]
    fn documents_annotated_ignore_are_skipped_with_a_warning() {
        let l = load(&[(
            "crd.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  annotations: {commitd.io/ignore: \"true\"}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        )]);
        assert!(l.is_valid(), "{:?}", messages(&l));
        assert_eq!(l.manifests.len(), 1);
        assert_eq!(l.manifests[0].name, "c");
        assert_eq!(
            messages(&l),
            vec!["crd.yaml:1: warning: metadata.annotations[commitd.io/ignore]: Widget skipped: annotated commitd.io/ignore: \"true\""]
        );
        // Only "true" skips.
        let l = load(&[(
            "crd.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  annotations: {commitd.io/ignore: \"no\"}\n",
        )]);
        assert!(!l.is_valid());
    }

    #[test]
    fn comment_only_documents_and_files_are_fine() {
        let l = load(&[
            ("empty.yaml", "# nothing yet\n"),
            ("more.yaml", "---\n# just a comment\n---\n"),
        ]);
        assert!(l.is_valid());
        assert!(l.manifests.is_empty());
    }
}
