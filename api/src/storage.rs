//! The built-in local-path storage, shared by the reconciler (which binds
//! claims and provisions volumes), the scheduler (which places pods next to
//! their volumes), the node agents (which publish their capacity, make and
//! remove the directories) and the command line (which marks the default
//! class). Like k3s's local-path provisioner: a volume is a directory under
//! the node's `<state dir>/local-path`, reached through a hostPath
//! PersistentVolume pinned to that node by node affinity.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::meta;
use crate::quantity;

/// The provisioner name of the built-in class, on StorageClasses and in
/// [`PROVISIONED_BY_ANNOTATION`] of the volumes it made.
pub const LOCAL_PATH_PROVISIONER: &str = "commitd.io/local-path";
/// The name of the built-in default StorageClass (k3s's name).
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// The annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The annotation Kubernetes' provisioners put on the volumes they make.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";
/// The extended resource a node publishes in `status.capacity` and
/// `status.allocatable`: how many bytes of local-path volumes it takes.
pub const CAPACITY_RESOURCE: &str = "commitd.io/local-path";
/// The Node annotation naming the node's local-path root directory.
pub const ROOT_ANNOTATION: &str = "commitd.io/local-path-root";
/// The directory under a node agent's state dir holding its volumes.
pub const ROOT_DIR_NAME: &str = "local-path";
/// The node label that pins a provisioned volume to its node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The access modes a local directory can honour: one node at a time.
pub const SUPPORTED_ACCESS_MODES: [&str; 2] = ["ReadWriteOnce", "ReadWriteOncePod"];
/// The mode of a volume's directory (k3s's choice): any container user
/// may write.
pub const DIRECTORY_MODE: u32 = 0o777;

/// The name of the volume provisioned for a claim (`pvc-<uid>`), as
/// Kubernetes' provisioners name them.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The directory name of a provisioned volume, `pvc-<uid>_<ns>_<name>`
/// (k3s's layout), so an operator looking at the disk knows whose it is.
pub fn directory_name(claim_uid: &str, namespace: &str, name: &str) -> String {
    format!("pvc-{claim_uid}_{namespace}_{name}")
}

/// The local-path root of a node agent with state dir `state_dir`.
pub fn root_of(state_dir: &Path) -> PathBuf {
    state_dir.join(ROOT_DIR_NAME)
}

/// Whether `path` is a directory strictly inside `root`, written without
/// `..`, `.` or empty components: the only paths a node agent ever
/// removes on behalf of a volume.
pub fn is_inside_root(path: &Path, root: &Path) -> bool {
    if !path.is_absolute() || !root.is_absolute() {
        return false;
    }
    let plain = |p: &Path| {
        p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    if !plain(path) || !plain(root) {
        return false;
    }
    match path.strip_prefix(root) {
        Ok(rest) => rest.components().count() == 1,
        Err(_) => false,
    }
}

/// Whether the class is the default one (its annotation says `"true"`).
pub fn is_default_class(class: &StorageClass) -> bool {
    meta::annotation(&class.metadata, DEFAULT_CLASS_ANNOTATION) == Some("true")
}

/// The default class among `classes`: with several, the newest (then the
/// first by name), as Kubernetes' admission picks it.
pub fn default_class<'a>(
    classes: impl IntoIterator<Item = &'a StorageClass>,
) -> Option<&'a StorageClass> {
    classes
        .into_iter()
        .filter(|c| is_default_class(c) && !meta::is_terminating(&c.metadata))
        .max_by(|a, b| {
            let created = |c: &StorageClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| meta::name(*b).cmp(meta::name(*a)))
        })
}

/// The class a claim asks for: its `storageClassName`, or the default
/// class when it names none (`None` there, not `""`, which asks for
/// volumes without a class). `""` when there is nothing to ask for.
pub fn requested_class<'a>(
    claim: &'a PersistentVolumeClaim,
    default: Option<&'a StorageClass>,
) -> &'a str {
    match claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
    {
        Some(c) => c,
        None => default.map(meta::name).unwrap_or_default(),
    }
}

/// The storage a claim requests, in bytes.
pub fn requested_bytes(claim: &PersistentVolumeClaim) -> Option<i64> {
    let q = claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?;
    quantity::memory_bytes(q).ok()
}

/// A volume's capacity, in bytes.
pub fn capacity_bytes(volume: &PersistentVolume) -> Option<i64> {
    let q = volume.spec.as_ref()?.capacity.as_ref()?.get("storage")?;
    quantity::memory_bytes(q).ok()
}

/// The local-path capacity a node publishes, in bytes.
pub fn node_capacity_bytes(node: &Node) -> Option<i64> {
    let q = node
        .status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(CAPACITY_RESOURCE)?;
    quantity::memory_bytes(q).ok()
}

/// Whether the volume was made by the local-path provisioner.
pub fn is_local_path_volume(volume: &PersistentVolume) -> bool {
    meta::annotation(&volume.metadata, PROVISIONED_BY_ANNOTATION) == Some(LOCAL_PATH_PROVISIONER)
}

/// The one node a volume's required node affinity pins it to through
/// `kubernetes.io/hostname In [node]` (how provisioned volumes are pinned).
pub fn pinned_node(volume: &PersistentVolume) -> Option<&str> {
    let terms = &volume
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let [req] = term.match_expressions.as_deref()? else {
        return None;
    };
    if req.key != HOSTNAME_LABEL || req.operator != "In" {
        return None;
    }
    match req.values.as_deref()? {
        [node] => Some(node.as_str()),
        _ => None,
    }
}

/// Where a volume is on its node: its hostPath or local path.
pub fn volume_path(volume: &PersistentVolume) -> Option<&str> {
    let spec = volume.spec.as_ref()?;
    spec.host_path
        .as_ref()
        .map(|h| h.path.as_str())
        .or_else(|| spec.local.as_ref().map(|l| l.path.as_str()))
}

/// Bytes as a Kubernetes quantity in its canonical binary form: the
/// largest binary suffix that divides it exactly (`10Gi`, `1536Mi`), plain
/// bytes otherwise.
pub fn format_bytes(bytes: i64) -> String {
    const SUFFIXES: [&str; 6] = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    if bytes != 0 {
        for (i, suffix) in SUFFIXES.iter().enumerate() {
            let unit = 1i64 << (10 * (6 - i));
            if bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
        }
    }
    bytes.to_string()
}

/// The built-in default class, as the storage controller creates it when
/// no class of its name exists.
pub fn builtin_class() -> StorageClass {
    StorageClass {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(LOCAL_PATH_CLASS.to_string()),
            annotations: Some(BTreeMap::from([(
                DEFAULT_CLASS_ANNOTATION.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: LOCAL_PATH_PROVISIONER.to_string(),
        reclaim_policy: Some("Delete".to_string()),
        volume_binding_mode: Some("Immediate".to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytes_print_in_canonical_binary_form() {
        assert_eq!(format_bytes(10 << 30), "10Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(4096), "4Ki");
    }

    #[test]
    fn only_direct_children_of_the_root_are_inside_it() {
        let root = Path::new("/var/lib/commitd/agent/local-path");
        assert!(is_inside_root(&root.join("pvc-1_demo_data"), root));
        for bad in [
            "/var/lib/commitd/agent/local-path",
            "/var/lib/commitd/agent/local-path/a/b",
            "/var/lib/commitd/agent/local-path/../x",
            "/etc",
            "relative/x",
        ] {
            assert!(!is_inside_root(Path::new(bad), root), "{bad}");
        }
    }

    #[test]
    fn the_newest_default_class_wins_and_claims_without_a_class_ask_for_it() {
        let class = |name: &str, default: bool, created: &str| -> StorageClass {
            let annotations = if default {
                json!({DEFAULT_CLASS_ANNOTATION: "true"})
            } else {
                json!({})
            };
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations,
                    "creationTimestamp": created},
                "provisioner": "x"
            }))
            .expect("class")
        };
        let classes = [
            class("old", true, "2026-01-01T00:00:00Z"),
            class("new", true, "2026-02-01T00:00:00Z"),
            class("other", false, "2026-03-01T00:00:00Z"),
        ];
        let default = default_class(&classes);
        assert_eq!(default.map(meta::name), Some("new"));
        let claim = |class: Option<&str>| -> PersistentVolumeClaim {
            serde_json::from_value(json!({
                "metadata": {"name": "c"},
                "spec": {"storageClassName": class,
                    "resources": {"requests": {"storage": "1Gi"}}}
            }))
            .expect("claim")
        };
        assert_eq!(requested_class(&claim(None), default), "new");
        assert_eq!(requested_class(&claim(Some("")), default), "");
        assert_eq!(requested_class(&claim(Some("other")), default), "other");
        assert_eq!(requested_bytes(&claim(None)), Some(1 << 30));
    }

    #[test]
    fn provisioned_volumes_are_pinned_to_one_node() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "annotations": {PROVISIONED_BY_ANNOTATION: LOCAL_PATH_PROVISIONER}},
            "spec": {"capacity": {"storage": "2Gi"}, "hostPath": {"path": "/x/pvc-1"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOSTNAME_LABEL, "operator": "In", "values": ["node-a"]}]}]}}}
        }))
        .expect("volume");
        assert_eq!(pinned_node(&pv), Some("node-a"));
        assert!(is_local_path_volume(&pv));
        assert_eq!(capacity_bytes(&pv), Some(2 << 30));
        assert_eq!(volume_path(&pv), Some("/x/pvc-1"));
    }
}
