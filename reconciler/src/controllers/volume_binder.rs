//! The pure decisions of the storage controller, as Kubernetes' PV
//! controller and a local-path provisioner make them: which volume a claim
//! binds to, on which node a new local-path volume goes (or why none can
//! take it), and which phase a volume is in. Everything here reads
//! objects and returns objects; the loop in [`super::storage`] writes them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use commitd_api::k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimCondition,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus, VolumeNodeAffinity,
};
use commitd_api::k8s_openapi::api::storage::v1::StorageClass;
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use commitd_api::meta;
use commitd_api::nodes;
use commitd_api::storage::{
    self, format_bytes, CAPACITY_RESOURCE, HOSTNAME_LABEL, LOCAL_PATH_PROVISIONER,
    PROVISIONED_BY_ANNOTATION, ROOT_ANNOTATION, SUPPORTED_ACCESS_MODES,
};

/// The claim condition type that carries why a claim is still pending
/// (what `commitd status` and health show).
pub const PENDING_CONDITION: &str = "Pending";
/// Kubernetes' event reasons, used as the condition's reason.
pub const REASON_PROVISIONING_FAILED: &str = "ProvisioningFailed";
pub const REASON_FAILED_BINDING: &str = "FailedBinding";
pub const REASON_EXTERNAL_PROVISIONING: &str = "ExternalProvisioning";
pub const REASON_VOLUME_MISMATCH: &str = "VolumeMismatch";

/// What to do with one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimAction {
    /// Bind it to this existing volume (or finish binding it).
    Bind(String),
    /// Create this volume for it; the next pass binds to it.
    Provision(Box<PersistentVolume>),
    /// Leave it pending, saying why.
    Pending {
        reason: &'static str,
        message: String,
    },
    /// Its bound volume is gone.
    Lost,
}

/// What to do with one volume.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeAction {
    /// Its status should read this phase (and message).
    Phase {
        phase: &'static str,
        message: Option<String>,
    },
    /// Its claim is bound to another volume: forget the claim (a volume
    /// made by hand becomes Available again).
    Unbind,
}

/// What the binder reads: the caches of one pass.
pub struct World<'a> {
    pub volumes: &'a [&'a PersistentVolume],
    pub classes: &'a [&'a StorageClass],
    pub nodes: &'a [&'a Node],
}

impl World<'_> {
    fn class(&self, name: &str) -> Option<&StorageClass> {
        self.classes
            .iter()
            .copied()
            .find(|c| meta::name(*c) == name && !meta::is_terminating(&c.metadata))
    }

    fn volume(&self, name: &str) -> Option<&PersistentVolume> {
        self.volumes
            .iter()
            .copied()
            .find(|v| meta::name(*v) == name)
    }

    /// The default class, if any.
    pub fn default_class(&self) -> Option<&StorageClass> {
        storage::default_class(self.classes.iter().copied())
    }
}

fn claim_modes(claim: &PersistentVolumeClaim) -> &[String] {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default()
}

fn volume_class(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

fn volume_mode_of(mode: Option<&str>) -> &str {
    mode.filter(|m| !m.is_empty()).unwrap_or("Filesystem")
}

/// Whether the volume's `claimRef` names this claim (any uid, or its own).
pub fn refers_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name.as_deref() == Some(meta::name(claim))
        && r.namespace.as_deref().unwrap_or("default")
            == meta::namespace(claim).unwrap_or("default")
        && r.uid
            .as_deref()
            .filter(|u| !u.is_empty())
            .is_none_or(|u| Some(u) == claim.metadata.uid.as_deref())
}

/// Why a volume cannot serve a claim (Kubernetes' `checkVolumeSatisfyClaim`
/// messages), or `None` if it can.
pub fn mismatch(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    class: &str,
) -> Option<String> {
    let requested = storage::requested_bytes(claim).unwrap_or(0);
    if storage::capacity_bytes(volume).unwrap_or(0) < requested {
        return Some("requested PV is too small".to_string());
    }
    if volume_class(volume) != class {
        return Some("storageClassName does not match".to_string());
    }
    let offered = volume
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_deref())
        .unwrap_or_default();
    if !claim_modes(claim).iter().all(|m| offered.contains(m)) {
        return Some("incompatible accessMode".to_string());
    }
    let want = volume_mode_of(claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()));
    let have = volume_mode_of(volume.spec.as_ref().and_then(|s| s.volume_mode.as_deref()));
    if want != have {
        return Some("incompatible volumeMode".to_string());
    }
    None
}

fn is_available(volume: &PersistentVolume) -> bool {
    !meta::is_terminating(&volume.metadata)
        && volume.spec.as_ref().is_none_or(|s| s.claim_ref.is_none())
        && !matches!(phase(volume), Some("Released" | "Failed"))
}

fn phase(volume: &PersistentVolume) -> Option<&str> {
    volume.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The best existing volume for an unbound claim: one pre-bound to it by
/// its `claimRef`, else the smallest Available one that satisfies it
/// (then by name).
pub fn find_match<'a>(
    claim: &PersistentVolumeClaim,
    class: &str,
    volumes: &[&'a PersistentVolume],
) -> Option<&'a PersistentVolume> {
    let live = || {
        volumes
            .iter()
            .copied()
            .filter(|v| !meta::is_terminating(&v.metadata))
    };
    if let Some(pre) = live().find(|v| {
        refers_to(v, claim)
            && !matches!(phase(v), Some("Released" | "Failed"))
            && mismatch(v, claim, class).is_none()
    }) {
        return Some(pre);
    }
    live()
        .filter(|v| is_available(v) && mismatch(v, claim, class).is_none())
        .min_by(|a, b| {
            storage::capacity_bytes(a)
                .cmp(&storage::capacity_bytes(b))
                .then_with(|| meta::name(*a).cmp(meta::name(*b)))
        })
}

/// Decides what to do with one claim. `extra` are volumes created earlier
/// in the same pass that the cache does not show yet (they take node
/// capacity).
pub fn decide_claim(
    claim: &PersistentVolumeClaim,
    world: &World<'_>,
    extra: &[PersistentVolume],
) -> ClaimAction {
    let default = world.default_class();
    let class = storage::requested_class(claim, default);
    let wanted = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    if let Some(name) = wanted {
        let bound_before = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(volume) = world.volume(name) else {
            if bound_before {
                return ClaimAction::Lost;
            }
            return ClaimAction::Pending {
                reason: REASON_FAILED_BINDING,
                message: format!("waiting for volume {name:?} to be created"),
            };
        };
        let has_ref = volume.spec.as_ref().is_some_and(|s| s.claim_ref.is_some());
        if has_ref && !refers_to(volume, claim) {
            return ClaimAction::Pending {
                reason: REASON_FAILED_BINDING,
                message: format!("volume {name:?} already bound to a different claim."),
            };
        }
        if !has_ref || !bound_before {
            if let Some(why) = mismatch(volume, claim, class) {
                return ClaimAction::Pending {
                    reason: REASON_VOLUME_MISMATCH,
                    message: format!("Cannot bind to requested volume {name:?}: {why}"),
                };
            }
        }
        return ClaimAction::Bind(name.to_string());
    }
    if let Some(volume) = find_match(claim, class, world.volumes) {
        return ClaimAction::Bind(meta::name(volume).to_string());
    }
    if class.is_empty() {
        return ClaimAction::Pending {
            reason: REASON_FAILED_BINDING,
            message: "no persistent volumes available for this claim and no storage class is set"
                .to_string(),
        };
    }
    let Some(sc) = world.class(class) else {
        return ClaimAction::Pending {
            reason: REASON_PROVISIONING_FAILED,
            message: format!("storageclass.storage.k8s.io {class:?} not found"),
        };
    };
    if sc.provisioner != LOCAL_PATH_PROVISIONER {
        return ClaimAction::Pending {
            reason: REASON_EXTERNAL_PROVISIONING,
            message: format!(
                "waiting for a volume to be created, either by external provisioner {:?} or manually created by system administrator",
                sc.provisioner
            ),
        };
    }
    match provision(claim, sc, world, extra) {
        Ok(volume) => ClaimAction::Provision(Box::new(volume)),
        Err(message) => ClaimAction::Pending {
            reason: REASON_PROVISIONING_FAILED,
            message,
        },
    }
}

/// Bytes of local-path volumes each node already holds (volumes in any
/// phase: a Released one keeps its directory until it is reclaimed).
fn used_per_node<'a>(volumes: impl Iterator<Item = &'a PersistentVolume>) -> HashMap<String, i64> {
    let mut used = HashMap::new();
    for v in volumes.filter(|v| storage::is_local_path_volume(v)) {
        if let Some(node) = storage::pinned_node(v) {
            *used.entry(node.to_string()).or_default() += storage::capacity_bytes(v).unwrap_or(0);
        }
    }
    used
}

/// The local-path volume for a claim on the Ready node with the most room
/// that fits it, or why there is none.
pub fn provision(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    world: &World<'_>,
    extra: &[PersistentVolume],
) -> Result<PersistentVolume, String> {
    let modes = claim_modes(claim);
    if let Some(bad) = modes
        .iter()
        .find(|m| !SUPPORTED_ACCESS_MODES.contains(&m.as_str()))
    {
        return Err(format!(
            "the {LOCAL_PATH_PROVISIONER} provisioner supports only the ReadWriteOnce and ReadWriteOncePod access modes, not {bad}"
        ));
    }
    let mode = volume_mode_of(claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()));
    if mode != "Filesystem" {
        return Err(format!(
            "the {LOCAL_PATH_PROVISIONER} provisioner makes Filesystem volumes only, not volumeMode {mode}"
        ));
    }
    let Some(uid) = claim.metadata.uid.as_deref() else {
        return Err("the claim has no uid yet".to_string());
    };
    let request = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    let (Some(request), Some(bytes)) = (request, storage::requested_bytes(claim)) else {
        return Err("the claim requests no storage size".to_string());
    };
    let used = used_per_node(world.volumes.iter().copied().chain(extra.iter()));
    // Name → (free bytes, root).
    let mut candidates: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for node in world.nodes.iter().copied() {
        let unschedulable = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !nodes::is_ready(node) || unschedulable || meta::is_terminating(&node.metadata) {
            continue;
        }
        let (Some(capacity), Some(root)) = (
            storage::node_capacity_bytes(node),
            meta::annotation(&node.metadata, ROOT_ANNOTATION),
        ) else {
            continue;
        };
        let name = meta::name(node);
        let free = capacity - used.get(name).copied().unwrap_or(0);
        candidates.insert(name, (free, root));
    }
    if candidates.is_empty() {
        return Err(format!(
            "no Ready node offers local-path storage (no node publishes {CAPACITY_RESOURCE} capacity)"
        ));
    }
    // Most room first; then by name (the map's order).
    let chosen = candidates
        .iter()
        .filter(|(_, (free, _))| *free >= bytes)
        .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then_with(|| b.0.cmp(a.0)));
    let Some((node, (_, root))) = chosen else {
        let have: Vec<String> = candidates
            .iter()
            .map(|(n, (free, _))| format!("{n} has {}", format_bytes((*free).max(0))))
            .collect();
        return Err(format!(
            "no node has {} of local-path capacity free: {}",
            format_bytes(bytes),
            have.join(", ")
        ));
    };
    let namespace = meta::namespace(claim).unwrap_or("default");
    let name = meta::name(claim);
    let path = Path::new(root).join(storage::directory_name(uid, namespace, name));
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(storage::volume_name(uid)),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY_ANNOTATION.to_string(),
                LOCAL_PATH_PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), request)])),
            access_modes: Some(modes.to_vec()),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_string()),
            ),
            storage_class_name: Some(meta::name(class).to_string()),
            volume_mode: Some("Filesystem".to_string()),
            host_path: Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.to_string(),
                            operator: "In".to_string(),
                            values: Some(vec![node.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            claim_ref: Some(claim_reference(claim)),
            ..Default::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some("Bound".to_string()),
            ..Default::default()
        }),
    })
}

/// The `claimRef` a bound volume carries.
pub fn claim_reference(claim: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("PersistentVolumeClaim".to_string()),
        namespace: Some(meta::namespace(claim).unwrap_or("default").to_string()),
        name: Some(meta::name(claim).to_string()),
        uid: claim.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The volume bound to the claim: `claimRef` with the claim's uid, phase
/// Bound. `None` if it is so already.
pub fn bound_volume(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
) -> Option<PersistentVolume> {
    let mut out = volume.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    let reference = claim_reference(claim);
    match spec.claim_ref.as_mut() {
        // Pre-bound from Git by name: only the uid is filled in, what Git
        // wrote stays as written.
        Some(r) if r.name == reference.name => {
            r.uid = reference.uid.clone();
            r.namespace.get_or_insert_with(|| "default".to_string());
        }
        _ => spec.claim_ref = Some(reference),
    }
    let status = out.status.get_or_insert_with(Default::default);
    status.phase = Some("Bound".to_string());
    status.message = None;
    status.reason = None;
    (out != *volume).then_some(out)
}

/// The claim bound to the volume: `volumeName`, the default class it was
/// given when it named none, phase Bound with the volume's capacity and
/// access modes. `None` if it is so already.
pub fn bound_claim(
    claim: &PersistentVolumeClaim,
    volume: &PersistentVolume,
    default_class: Option<&str>,
) -> Option<PersistentVolumeClaim> {
    let mut out = claim.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    spec.volume_name = Some(meta::name(volume).to_string());
    if spec.storage_class_name.is_none() {
        if let Some(class) = default_class {
            spec.storage_class_name = Some(class.to_string());
        }
    }
    let vspec = volume.spec.as_ref();
    out.status = Some(PersistentVolumeClaimStatus {
        phase: Some("Bound".to_string()),
        access_modes: vspec.and_then(|s| s.access_modes.clone()),
        capacity: vspec.and_then(|s| s.capacity.clone()),
        ..claim.status.clone().unwrap_or_default()
    });
    if let Some(s) = out.status.as_mut() {
        s.conditions = None;
    }
    (out != *claim).then_some(out)
}

/// The claim pending (or lost) with `reason` and `message` in its
/// condition; a claim naming no class is given the default one, as
/// Kubernetes' admission does. `None` if it is so already.
pub fn pending_claim(
    claim: &PersistentVolumeClaim,
    phase: &str,
    reason: &str,
    message: &str,
    default_class: Option<&str>,
) -> Option<PersistentVolumeClaim> {
    let mut out = claim.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    if spec.storage_class_name.is_none() {
        if let Some(class) = default_class {
            spec.storage_class_name = Some(class.to_string());
        }
    }
    let status = out.status.get_or_insert_with(Default::default);
    status.phase = Some(phase.to_string());
    let same = status.conditions.as_deref().is_some_and(|c| {
        c.len() == 1
            && c[0].type_ == PENDING_CONDITION
            && c[0].reason.as_deref() == Some(reason)
            && c[0].message.as_deref() == Some(message)
    });
    if !same {
        status.conditions = Some(vec![PersistentVolumeClaimCondition {
            type_: PENDING_CONDITION.to_string(),
            status: "True".to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_transition_time: Some(meta::now()),
            last_probe_time: None,
        }]);
    }
    (out != *claim).then_some(out)
}

/// The phase a volume should be in, given the claim its `claimRef` names
/// (`None`: no such claim, or one with another uid).
pub fn decide_volume(
    volume: &PersistentVolume,
    claim: Option<&PersistentVolumeClaim>,
) -> Option<VolumeAction> {
    let current = phase(volume);
    let Some(reference) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return (current != Some("Available")).then_some(VolumeAction::Phase {
            phase: "Available",
            message: None,
        });
    };
    let released = || {
        if matches!(current, Some("Released" | "Failed")) {
            return None;
        }
        let policy = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        Some(match policy {
            "Delete" if !storage::is_local_path_volume(volume) => VolumeAction::Phase {
                phase: "Failed",
                message: Some(format!(
                    "commitd deletes only volumes its {LOCAL_PATH_PROVISIONER} provisioner made; delete this one by hand"
                )),
            },
            "Recycle" => VolumeAction::Phase {
                phase: "Failed",
                message: Some("the Recycle reclaim policy is not supported".to_string()),
            },
            _ => VolumeAction::Phase {
                phase: "Released",
                message: None,
            },
        })
    };
    let Some(uid) = reference.uid.as_deref().filter(|u| !u.is_empty()) else {
        // Pre-bound by name, waiting for its claim.
        return match claim {
            None => (current != Some("Available")).then_some(VolumeAction::Phase {
                phase: "Available",
                message: None,
            }),
            Some(_) => None,
        };
    };
    let Some(claim) = claim.filter(|c| c.metadata.uid.as_deref() == Some(uid)) else {
        return released();
    };
    let claimed = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    match claimed {
        Some(v) if v != meta::name(volume) => {
            if storage::is_local_path_volume(volume) {
                released()
            } else {
                Some(VolumeAction::Unbind)
            }
        }
        _ => (current != Some("Bound")).then_some(VolumeAction::Phase {
            phase: "Bound",
            message: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn quantity(s: &str) -> Quantity {
        Quantity(s.to_string())
    }
    use serde_json::json;

    fn node(name: &str, capacity: &str, ready: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name,
                "labels": {HOSTNAME_LABEL: name},
                "annotations": {ROOT_ANNOTATION: format!("/state/{name}/local-path")}},
            "status": {
                "allocatable": {CAPACITY_RESOURCE: capacity},
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]
            }
        }))
        .expect("node")
    }

    fn claim(name: &str, size: &str, class: Option<&str>, modes: &[&str]) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}")},
            "spec": {"accessModes": modes, "storageClassName": class,
                "resources": {"requests": {"storage": size}}}
        }))
        .expect("claim")
    }

    fn volume(name: &str, size: &str, class: &str, modes: &[&str]) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": modes,
                "storageClassName": class, "hostPath": {"path": format!("/data/{name}")},
                "persistentVolumeReclaimPolicy": "Retain"},
            "status": {"phase": "Available"}
        }))
        .expect("volume")
    }

    fn local_path_class(policy: &str) -> StorageClass {
        let mut c = storage::builtin_class();
        c.reclaim_policy = Some(policy.to_string());
        c
    }

    fn decide(
        c: &PersistentVolumeClaim,
        volumes: &[&PersistentVolume],
        classes: &[&StorageClass],
        nodes: &[&Node],
    ) -> ClaimAction {
        decide_claim(
            c,
            &World {
                volumes,
                classes,
                nodes,
            },
            &[],
        )
    }

    #[test]
    fn binds_to_the_smallest_matching_available_volume() {
        let big = volume("big", "10Gi", "manual", &["ReadWriteOnce"]);
        let small = volume("small", "2Gi", "manual", &["ReadWriteOnce", "ReadOnlyMany"]);
        let tiny = volume("tiny", "512Mi", "manual", &["ReadWriteOnce"]);
        let other = volume("other", "2Gi", "fast", &["ReadWriteOnce"]);
        let rox = volume("rox", "1Gi", "manual", &["ReadOnlyMany"]);
        let c = claim("data", "1Gi", Some("manual"), &["ReadWriteOnce"]);
        let all = [&big, &small, &tiny, &other, &rox];
        assert_eq!(
            decide(&c, &all, &[], &[]),
            ClaimAction::Bind("small".into())
        );
        // A bound volume is taken by nobody else.
        let mut taken = small.clone();
        taken.spec.as_mut().expect("spec").claim_ref = Some(ObjectReference {
            name: Some("else".into()),
            namespace: Some("demo".into()),
            uid: Some("u".into()),
            ..Default::default()
        });
        let all = [&big, &taken, &tiny];
        assert_eq!(decide(&c, &all, &[], &[]), ClaimAction::Bind("big".into()));
    }

    #[test]
    fn pre_binding_by_volume_name_and_by_claim_ref() {
        let a = volume("a", "1Gi", "", &["ReadWriteOnce"]);
        let mut b = volume("b", "5Gi", "", &["ReadWriteOnce"]);
        b.spec.as_mut().expect("spec").claim_ref = Some(ObjectReference {
            name: Some("data".into()),
            namespace: Some("demo".into()),
            ..Default::default()
        });
        let c = claim("data", "1Gi", Some(""), &["ReadWriteOnce"]);
        assert_eq!(
            decide(&c, &[&a, &b], &[], &[]),
            ClaimAction::Bind("b".into())
        );
        let mut named = claim("data", "1Gi", Some(""), &["ReadWriteOnce"]);
        named.spec.as_mut().expect("spec").volume_name = Some("a".into());
        assert_eq!(
            decide(&named, &[&a, &b], &[], &[]),
            ClaimAction::Bind("a".into())
        );
        named.spec.as_mut().expect("spec").volume_name = Some("gone".into());
        assert!(matches!(
            decide(&named, &[&a], &[], &[]),
            ClaimAction::Pending {
                reason: REASON_FAILED_BINDING,
                ..
            }
        ));
        let mut lost = named.clone();
        lost.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        assert_eq!(decide(&lost, &[&a], &[], &[]), ClaimAction::Lost);
        // Bound elsewhere: the claim naming it waits with Kubernetes' words.
        let mut other = claim("other", "1Gi", Some(""), &["ReadWriteOnce"]);
        other.spec.as_mut().expect("spec").volume_name = Some("b".into());
        assert_eq!(
            decide(&other, &[&b], &[], &[]),
            ClaimAction::Pending {
                reason: REASON_FAILED_BINDING,
                message: "volume \"b\" already bound to a different claim.".into()
            }
        );
    }

    #[test]
    fn provisions_on_the_ready_node_with_most_room() {
        let sc = local_path_class("Delete");
        let a = node("node-a", "10Gi", true);
        let b = node("node-b", "20Gi", true);
        let down = node("node-c", "100Gi", false);
        let mut existing = volume("pvc-old", "15Gi", "local-path", &["ReadWriteOnce"]);
        existing.metadata.annotations = Some(BTreeMap::from([(
            PROVISIONED_BY_ANNOTATION.to_string(),
            LOCAL_PATH_PROVISIONER.to_string(),
        )]));
        existing.spec.as_mut().expect("spec").node_affinity = Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: HOSTNAME_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec!["node-b".into()]),
                    }]),
                    match_fields: None,
                }],
            }),
        });
        existing.spec.as_mut().expect("spec").claim_ref = Some(ObjectReference {
            name: Some("x".into()),
            uid: Some("ux".into()),
            ..Default::default()
        });
        // No class on the claim: the default (local-path).
        let c = claim("data", "2Gi", None, &["ReadWriteOnce"]);
        let ClaimAction::Provision(pv) = decide(&c, &[&existing], &[&sc], &[&a, &b, &down]) else {
            panic!("expected provisioning");
        };
        assert_eq!(meta::name(&*pv), "pvc-uid-data");
        assert_eq!(
            storage::pinned_node(&pv),
            Some("node-a"),
            "node-b has only 5Gi left"
        );
        assert_eq!(
            storage::volume_path(&pv),
            Some("/state/node-a/local-path/pvc-uid-data_demo_data")
        );
        let spec = pv.spec.as_ref().expect("spec");
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(
            spec.capacity.as_ref().and_then(|c| c.get("storage")),
            Some(&quantity("2Gi"))
        );
        let r = spec.claim_ref.as_ref().expect("claimRef");
        assert_eq!(r.uid.as_deref(), Some("uid-data"));
        assert!(storage::is_local_path_volume(&pv));

        // Too big for every node: pending, saying what each has.
        let huge = claim("huge", "12Gi", None, &["ReadWriteOnce"]);
        assert_eq!(
            decide(&huge, &[&existing], &[&sc], &[&a, &b, &down]),
            ClaimAction::Pending {
                reason: REASON_PROVISIONING_FAILED,
                message:
                    "no node has 12Gi of local-path capacity free: node-a has 10Gi, node-b has 5Gi"
                        .into()
            }
        );
        // Volumes provisioned earlier in the pass count.
        let world = World {
            volumes: &[],
            classes: &[&sc],
            nodes: &[&a],
        };
        let first = claim("one", "6Gi", None, &["ReadWriteOnce"]);
        let ClaimAction::Provision(pv1) = decide_claim(&first, &world, &[]) else {
            panic!("first fits");
        };
        let second = claim("two", "6Gi", None, &["ReadWriteOnce"]);
        assert!(matches!(
            decide_claim(&second, &world, &[*pv1]),
            ClaimAction::Pending {
                reason: REASON_PROVISIONING_FAILED,
                ..
            }
        ));
    }

    #[test]
    fn local_path_refuses_shared_access_and_other_classes_wait() {
        let sc = local_path_class("Delete");
        let a = node("node-a", "10Gi", true);
        let rwx = claim("shared", "1Gi", None, &["ReadWriteMany"]);
        let ClaimAction::Pending { reason, message } = decide(&rwx, &[], &[&sc], &[&a]) else {
            panic!("pending");
        };
        assert_eq!(reason, REASON_PROVISIONING_FAILED);
        assert!(message.contains("not ReadWriteMany"), "{message}");
        let none = claim("plain", "1Gi", Some(""), &["ReadWriteOnce"]);
        assert!(matches!(
            decide(&none, &[], &[&sc], &[&a]),
            ClaimAction::Pending {
                reason: REASON_FAILED_BINDING,
                ..
            }
        ));
        let missing = claim("m", "1Gi", Some("fast"), &["ReadWriteOnce"]);
        assert_eq!(
            decide(&missing, &[], &[&sc], &[&a]),
            ClaimAction::Pending {
                reason: REASON_PROVISIONING_FAILED,
                message: "storageclass.storage.k8s.io \"fast\" not found".into()
            }
        );
        let mut ebs = sc.clone();
        ebs.metadata.name = Some("ebs".into());
        ebs.provisioner = "ebs.csi.aws.com".into();
        let external = claim("e", "1Gi", Some("ebs"), &["ReadWriteOnce"]);
        assert!(matches!(
            decide(&external, &[], &[&sc, &ebs], &[&a]),
            ClaimAction::Pending {
                reason: REASON_EXTERNAL_PROVISIONING,
                ..
            }
        ));
        let no_nodes = claim("n", "1Gi", None, &["ReadWriteOnce"]);
        assert!(matches!(
            decide(&no_nodes, &[], &[&sc], &[]),
            ClaimAction::Pending {
                reason: REASON_PROVISIONING_FAILED,
                ..
            }
        ));
    }

    #[test]
    fn volumes_follow_their_claims() {
        let c = claim("data", "1Gi", Some("manual"), &["ReadWriteOnce"]);
        let mut v = volume("v", "1Gi", "manual", &["ReadWriteOnce"]);
        assert_eq!(decide_volume(&v, None), None, "already Available");
        let bound = bound_volume(&v, &c).expect("changes");
        assert_eq!(
            bound.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Bound")
        );
        assert_eq!(bound_volume(&bound, &c), None, "idempotent");
        assert_eq!(decide_volume(&bound, Some(&c)), None);
        // The claim went: Released, and Retain keeps it so.
        let released = decide_volume(&bound, None);
        assert_eq!(
            released,
            Some(VolumeAction::Phase {
                phase: "Released",
                message: None
            })
        );
        // A claim of the same name but another uid does not bring it back.
        let mut again = c.clone();
        again.metadata.uid = Some("another".into());
        assert_eq!(decide_volume(&bound, Some(&again)), released);
        // Delete on a volume commitd did not make: Failed, said why.
        v = bound.clone();
        v.spec
            .as_mut()
            .expect("spec")
            .persistent_volume_reclaim_policy = Some("Delete".into());
        assert!(matches!(
            decide_volume(&v, None),
            Some(VolumeAction::Phase {
                phase: "Failed",
                ..
            })
        ));
        // The claim is bound to another volume: a hand-made one is freed.
        let mut elsewhere = c.clone();
        elsewhere.spec.as_mut().expect("spec").volume_name = Some("w".into());
        assert_eq!(
            decide_volume(&bound, Some(&elsewhere)),
            Some(VolumeAction::Unbind)
        );
    }

    #[test]
    fn claims_read_bound_with_the_volume_capacity_and_keep_their_class() {
        let c = claim("data", "1Gi", None, &["ReadWriteOnce"]);
        let v = volume("v", "2Gi", "local-path", &["ReadWriteOnce", "ReadOnlyMany"]);
        let b = bound_claim(&c, &v, Some("local-path")).expect("changes");
        let spec = b.spec.as_ref().expect("spec");
        assert_eq!(spec.volume_name.as_deref(), Some("v"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        let status = b.status.as_ref().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Bound"));
        assert_eq!(
            status.capacity.as_ref().and_then(|c| c.get("storage")),
            Some(&quantity("2Gi"))
        );
        assert_eq!(bound_claim(&b, &v, Some("local-path")), None);
        // An explicit empty class stays empty.
        let empty = claim("e", "1Gi", Some(""), &["ReadWriteOnce"]);
        let p = pending_claim(&empty, "Pending", "R", "m", Some("local-path")).expect("changes");
        assert_eq!(
            p.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref()),
            Some("")
        );
        assert_eq!(
            pending_claim(&p, "Pending", "R", "m", Some("local-path")),
            None
        );
    }
}
