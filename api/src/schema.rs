//! Unknown-field detection from the OpenAPI schemas k8s-openapi ships (its
//! `schemars` implementations). k8s-openapi's deserializers skip unknown
//! fields silently; Kubernetes' strict decoding rejects them, and so do we,
//! with a suggestion when a known field is a small typo away.

use std::collections::HashMap;
use std::sync::OnceLock;

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::Value;

use crate::field_path::FieldPath;
use crate::kinds::Kind;

/// A schema with its definitions, ready to walk.
pub struct Schema {
    root: Value,
    defs: serde_json::Map<String, Value>,
}

/// A field the schema does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    pub path: FieldPath,
    pub name: String,
    pub suggestion: Option<String>,
}

impl UnknownField {
    /// The message Kubernetes' strict decoding gives, plus our suggestion.
    pub fn message(&self) -> String {
        match &self.suggestion {
            Some(s) => format!("unknown field \"{}\", did you mean \"{s}\"?", self.name),
            None => format!("unknown field \"{}\"", self.name),
        }
    }
}

fn build<T: JsonSchema>() -> Schema {
    let root = SchemaGenerator::default().into_root_schema_for::<T>();
    let mut root = root.to_value();
    let defs = root
        .as_object_mut()
        .and_then(|o| o.remove("$defs"))
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    Schema { root, defs }
}

/// The schema of a kind, built once.
pub fn for_kind(kind: Kind) -> &'static Schema {
    use k8s_openapi::api::apps::v1::{
        ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
    };
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::{
        ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
        Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::storage::v1::StorageClass;
    static SCHEMAS: OnceLock<HashMap<Kind, Schema>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        HashMap::from([
            (Kind::Namespace, build::<Namespace>()),
            (Kind::ConfigMap, build::<ConfigMap>()),
            (Kind::Secret, build::<Secret>()),
            (Kind::ServiceAccount, build::<ServiceAccount>()),
            (Kind::Pod, build::<Pod>()),
            (Kind::ReplicaSet, build::<ReplicaSet>()),
            (Kind::Deployment, build::<Deployment>()),
            (Kind::Job, build::<Job>()),
            (Kind::Node, build::<Node>()),
            (Kind::Service, build::<Service>()),
            (Kind::Endpoints, build::<Endpoints>()),
            (Kind::CronJob, build::<CronJob>()),
            (Kind::DaemonSet, build::<DaemonSet>()),
            (Kind::StatefulSet, build::<StatefulSet>()),
            (
                Kind::PersistentVolumeClaim,
                build::<PersistentVolumeClaim>(),
            ),
            (Kind::PersistentVolume, build::<PersistentVolume>()),
            (Kind::StorageClass, build::<StorageClass>()),
            (Kind::ControllerRevision, build::<ControllerRevision>()),
        ])
    });
    &all[&kind]
}

impl Schema {
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..32 {
            let Some(r) = s.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let name = r.rsplit('/').next().unwrap_or_default();
            match self.defs.get(name) {
                Some(d) => s = d,
                None => break,
            }
        }
        s
    }

    /// Every field of `value` the schema does not declare.
    pub fn unknown_fields(&self, value: &Value) -> Vec<UnknownField> {
        let mut out = Vec::new();
        self.walk(value, &self.root, &FieldPath::root(), &mut out);
        out
    }

    fn walk(&self, value: &Value, schema: &Value, path: &FieldPath, out: &mut Vec<UnknownField>) {
        let schema = self.resolve(schema);
        match value {
            Value::Object(map) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                for (k, v) in map {
                    if v.is_null() {
                        continue;
                    }
                    let child = path.key(k);
                    if let Some(s) = props.and_then(|p| p.get(k)) {
                        self.walk(v, s, &child, out);
                    } else if let Some(a) = additional {
                        self.walk(v, a, &child, out);
                    } else if let Some(p) = props {
                        out.push(UnknownField {
                            path: child,
                            name: k.clone(),
                            suggestion: suggest(k, p.keys().map(String::as_str)),
                        });
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.walk(v, item_schema, &path.index(i), out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The known name closest to a typo, if it is close enough to be meant.
pub fn suggest<'a>(typo: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let lower = typo.to_ascii_lowercase();
    known
        .map(|k| {
            let score = strsim::jaro_winkler(&lower, &k.to_ascii_lowercase());
            (score, k)
        })
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_typos_at_any_depth_with_suggestions() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"any.key/is": "fine"}},
            "spec": {
                "replica": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "x", "imagePullPolicy": "Always", "portz": []}]}}
            }
        });
        let unknown = for_kind(Kind::Deployment).unknown_fields(&d);
        let got: Vec<_> = unknown
            .iter()
            .map(|u| (u.path.to_string(), u.message()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "spec.replica".to_string(),
                    "unknown field \"replica\", did you mean \"replicas\"?".to_string()
                ),
                (
                    "spec.template.spec.containers[0].portz".to_string(),
                    "unknown field \"portz\", did you mean \"ports\"?".to_string()
                ),
            ]
        );
    }

    #[test]
    fn free_form_maps_and_nulls_are_not_checked() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {"x": "y"}},
            "data": {"anything": "goes"}, "immutable": null});
        assert!(for_kind(Kind::ConfigMap).unknown_fields(&cm).is_empty());
    }

    #[test]
    fn no_suggestion_for_unrelated_names() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "flavour": "x"});
        let u = for_kind(Kind::Namespace).unknown_fields(&ns);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].suggestion, None);
    }
}
