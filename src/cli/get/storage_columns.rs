//! kubectl's columns for PersistentVolumeClaims, PersistentVolumes and
//! StorageClasses.

use commitd_api::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use commitd_api::k8s_openapi::api::storage::v1::StorageClass;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta;

use super::Columns;
use crate::cli::output::age;

/// The annotation that makes a StorageClass the default one.
pub use commitd_api::storage::DEFAULT_CLASS_ANNOTATION;

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: Option<&Vec<String>>) -> String {
    let short: Vec<&str> = modes
        .into_iter()
        .flatten()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    short.join(",")
}

/// A class name, `<unset>` when none is given, as kubectl prints it.
fn class_cell(class: Option<&str>) -> String {
    match class {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => "<unset>".to_string(),
    }
}

impl Columns for PersistentVolumeClaim {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE",
        ];
        if wide {
            h.push("VOLUMEMODE");
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let phase = if meta::is_terminating(&self.metadata) {
            "Terminating".to_string()
        } else {
            status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into())
        };
        let capacity = status
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        let mut c = vec![
            meta::name(self).to_string(),
            phase,
            spec.and_then(|s| s.volume_name.clone()).unwrap_or_default(),
            capacity,
            access_modes(status.and_then(|s| s.access_modes.as_ref())),
            class_cell(spec.and_then(|s| s.storage_class_name.as_deref())),
            "<unset>".to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.push(
                spec.and_then(|s| s.volume_mode.clone())
                    .unwrap_or_else(|| "Filesystem".into()),
            );
        }
        c
    }
}

impl Columns for PersistentVolume {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE",
        ];
        if wide {
            h.push("VOLUMEMODE");
        }
        h
    }

    fn cells(&self, wide: bool, now: Timestamp) -> Vec<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let capacity = spec
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        let claim = spec
            .and_then(|s| s.claim_ref.as_ref())
            .map(|r| {
                format!(
                    "{}/{}",
                    r.namespace.as_deref().unwrap_or_default(),
                    r.name.as_deref().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let phase = if meta::is_terminating(&self.metadata) {
            "Terminating".to_string()
        } else {
            status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into())
        };
        let mut c = vec![
            meta::name(self).to_string(),
            capacity,
            access_modes(spec.and_then(|s| s.access_modes.as_ref())),
            spec.and_then(|s| s.persistent_volume_reclaim_policy.clone())
                .unwrap_or_else(|| "Retain".into()),
            phase,
            claim,
            class_cell(spec.and_then(|s| s.storage_class_name.as_deref())),
            "<unset>".to_string(),
            status.and_then(|s| s.reason.clone()).unwrap_or_default(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ];
        if wide {
            c.push(
                spec.and_then(|s| s.volume_mode.clone())
                    .unwrap_or_else(|| "Filesystem".into()),
            );
        }
        c
    }
}

/// NAME carries ` (default)` for the default class, as kubectl shows it.
impl Columns for StorageClass {
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec![
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE",
        ]
    }

    fn cells(&self, _wide: bool, now: Timestamp) -> Vec<String> {
        let mut name = meta::name(self).to_string();
        if meta::annotation(&self.metadata, DEFAULT_CLASS_ANNOTATION) == Some("true") {
            name.push_str(" (default)");
        }
        vec![
            name,
            self.provisioner.clone(),
            self.reclaim_policy
                .clone()
                .unwrap_or_else(|| "Delete".into()),
            self.volume_binding_mode
                .clone()
                .unwrap_or_else(|| "Immediate".into()),
            if self.allow_volume_expansion == Some(true) {
                "true"
            } else {
                "false"
            }
            .to_string(),
            age(self.metadata.creation_timestamp.as_ref(), now),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().expect("a timestamp")
    }

    #[test]
    fn claims_and_volumes_read_like_kubectl() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data-web-0", "creationTimestamp": "2026-11-24T11:59:00Z"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                "volumeName": "pvc-1234", "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"}}
        }))
        .expect("a claim");
        assert_eq!(
            pvc.cells(true, now()),
            vec![
                "data-web-0",
                "Bound",
                "pvc-1234",
                "1Gi",
                "RWO",
                "local-path",
                "<unset>",
                "60s",
                "Filesystem"
            ]
        );
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pvc-1234", "creationTimestamp": "2026-11-24T11:59:00Z"},
            "spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                "capacity": {"storage": "1Gi"}, "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "local-path",
                "claimRef": {"namespace": "demo", "name": "data-web-0"}},
            "status": {"phase": "Bound"}
        }))
        .expect("a volume");
        assert_eq!(
            pv.cells(false, now()),
            vec![
                "pvc-1234",
                "1Gi",
                "RWO,ROX",
                "Delete",
                "Bound",
                "demo/data-web-0",
                "local-path",
                "<unset>",
                "",
                "60s"
            ]
        );
    }

    #[test]
    fn the_default_class_is_marked() {
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": "local-path", "creationTimestamp": "2026-11-24T11:00:00Z",
                "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": "commitd.io/local-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"
        }))
        .expect("a class");
        assert_eq!(
            sc.cells(false, now()),
            vec![
                "local-path (default)",
                "commitd.io/local-path",
                "Delete",
                "Immediate",
                "false",
                "60m"
            ]
        );
    }
}
