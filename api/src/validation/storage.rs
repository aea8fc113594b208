//! Validation of storage objects: PersistentVolumeClaims (and the claim
//! templates of StatefulSets), PersistentVolumes and StorageClasses.

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;

use super::{object_meta, FieldErrors, Validate};
use crate::field_path::FieldPath;
use crate::quantity;

/// The access modes Kubernetes knows.
const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

impl Validate for PersistentVolumeClaim {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let sp = FieldPath::root().key("spec");
        match &self.spec {
            Some(spec) => claim_spec(spec, &sp, errs),
            None => errs.required(sp),
        }
    }
}

/// The checks a claim and a claim template share: access modes, a storage
/// request, the volume mode.
pub(crate) fn claim_spec(spec: &PersistentVolumeClaimSpec, sp: &FieldPath, errs: &mut FieldErrors) {
    access_modes(spec.access_modes.as_deref(), &sp.key("accessModes"), errs);
    if spec
        .access_modes
        .iter()
        .flatten()
        .any(|m| m == "ReadWriteOncePod")
        && spec.access_modes.as_ref().is_some_and(|m| m.len() > 1)
    {
        errs.forbidden(
            sp.key("accessModes"),
            "may not use ReadWriteOncePod with other access modes",
        );
    }
    let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    let rp = sp.key("resources").key("requests").key("storage");
    match requests.and_then(|r| r.get("storage")) {
        None => errs.add(rp, "Required value: a claim must request its storage size"),
        Some(q) => positive_storage(q, &rp, errs),
    }
    volume_mode(spec.volume_mode.as_deref(), &sp.key("volumeMode"), errs);
}

impl Validate for PersistentVolume {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, false, false, errs);
        let sp = FieldPath::root().key("spec");
        let Some(spec) = &self.spec else {
            errs.required(sp);
            return;
        };
        access_modes(spec.access_modes.as_deref(), &sp.key("accessModes"), errs);
        match spec.capacity.as_ref().and_then(|c| c.get("storage")) {
            None => errs.add(sp.key("capacity").key("storage"), "Required value"),
            Some(q) => positive_storage(q, &sp.key("capacity").key("storage"), errs),
        }
        if let Some(policy) = spec.persistent_volume_reclaim_policy.as_deref() {
            if !["Delete", "Recycle", "Retain"].contains(&policy) {
                errs.unsupported(
                    sp.key("persistentVolumeReclaimPolicy"),
                    policy,
                    &["Delete", "Recycle", "Retain"],
                );
            }
        }
        volume_mode(spec.volume_mode.as_deref(), &sp.key("volumeMode"), errs);
        let sources = [
            ("hostPath", spec.host_path.is_some()),
            ("local", spec.local.is_some()),
        ];
        let given: Vec<&str> = sources
            .iter()
            .filter(|(_, set)| *set)
            .map(|(f, _)| *f)
            .collect();
        match given.as_slice() {
            [] => errs.add(
                sp.clone(),
                "Required value: must specify a volume type: commitd's nodes provide hostPath and local volumes",
            ),
            [_] => {}
            [_, rest @ ..] => {
                for field in rest {
                    errs.forbidden(sp.key(field), "may not specify more than 1 volume type");
                }
            }
        }
        if let Some(path) = spec.host_path.as_ref().map(|h| h.path.as_str()) {
            absolute(path, &sp.key("hostPath").key("path"), errs);
        }
        if let Some(local) = &spec.local {
            absolute(&local.path, &sp.key("local").key("path"), errs);
            if spec.node_affinity.is_none() {
                errs.add(
                    sp.key("nodeAffinity"),
                    "Required value: Local volume requires node affinity",
                );
            }
        }
    }
}

impl Validate for StorageClass {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, false, false, errs);
        if self.provisioner.is_empty() {
            errs.required(FieldPath::root().key("provisioner"));
        }
        if let Some(policy) = self.reclaim_policy.as_deref() {
            if !["Delete", "Retain"].contains(&policy) {
                errs.unsupported(
                    FieldPath::root().key("reclaimPolicy"),
                    policy,
                    &["Delete", "Retain"],
                );
            }
        }
        if let Some(mode) = self.volume_binding_mode.as_deref() {
            if !["Immediate", "WaitForFirstConsumer"].contains(&mode) {
                errs.unsupported(
                    FieldPath::root().key("volumeBindingMode"),
                    mode,
                    &["Immediate", "WaitForFirstConsumer"],
                );
            }
        }
    }
}

fn access_modes(modes: Option<&[String]>, p: &FieldPath, errs: &mut FieldErrors) {
    let modes = modes.unwrap_or_default();
    if modes.is_empty() {
        errs.add(
            p.clone(),
            "Required value: at least 1 access mode is required",
        );
    }
    for m in modes {
        if !ACCESS_MODES.contains(&m.as_str()) {
            errs.unsupported(p.clone(), m, &ACCESS_MODES);
        }
    }
}

fn positive_storage(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    p: &FieldPath,
    errs: &mut FieldErrors,
) {
    match quantity::from_k8s(q) {
        Ok(v) if v.is_negative() || v.is_zero() => {
            errs.invalid(p.clone(), &q.0, "must be greater than zero")
        }
        Ok(_) => {}
        Err(e) => errs.invalid(p.clone(), format!("\"{}\"", q.0), &e.to_string()),
    }
}

fn volume_mode(mode: Option<&str>, p: &FieldPath, errs: &mut FieldErrors) {
    if let Some(m) = mode {
        if !["Block", "Filesystem"].contains(&m) {
            errs.unsupported(p.clone(), m, &["Block", "Filesystem"]);
        }
    }
}

fn absolute(path: &str, p: &FieldPath, errs: &mut FieldErrors) {
    if !path.starts_with('/') {
        errs.invalid(p.clone(), format!("\"{path}\""), "must be an absolute path");
    }
}
