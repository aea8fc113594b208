//! kube-scheduler's VolumeBinding plugin for bound claims: a pod whose
//! claims are missing or not bound yet waits (its PreFilter rejects it for
//! every node at once, with Kubernetes' message), and a pod whose claim is
//! bound to a volume pinned by node affinity (a local-path volume, a
//! `local` volume) only goes to the nodes that volume allows.

use std::collections::HashMap;
use std::sync::Arc;

use commitd_api::meta;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};

use commitd_api::nodes::term_matches;

use crate::filter::Filter;
use crate::info::{NodeInfo, PodInfo};

/// `VolumeBinding`'s reason when a bound volume's node affinity excludes
/// the node.
pub const REASON_VOLUME_NODE_AFFINITY: &str = "node(s) had volume node affinity conflict";
/// `VolumeBinding`'s PreFilter message while a claim is not bound.
pub const MESSAGE_UNBOUND_CLAIMS: &str = "pod has unbound immediate PersistentVolumeClaims";
/// Its message when a claim is bound to a volume that does not exist.
pub const MESSAGE_MISSING_VOLUMES: &str = "pvc(s) bound to non-existent pv(s)";

/// The claims and volumes of one scheduling pass.
#[derive(Debug, Clone, Default)]
pub struct StorageView {
    claims: HashMap<(String, String), Arc<PersistentVolumeClaim>>,
    volumes: HashMap<String, Arc<PersistentVolume>>,
}

impl StorageView {
    /// A view of these claims and volumes.
    pub fn new(
        claims: Vec<Arc<PersistentVolumeClaim>>,
        volumes: Vec<Arc<PersistentVolume>>,
    ) -> Self {
        StorageView {
            claims: claims
                .into_iter()
                .map(|c| {
                    let key = (
                        meta::namespace(c.as_ref()).unwrap_or("default").to_string(),
                        meta::name(c.as_ref()).to_string(),
                    );
                    (key, c)
                })
                .collect(),
            volumes: volumes
                .into_iter()
                .map(|v| (meta::name(v.as_ref()).to_string(), v))
                .collect(),
        }
    }

    /// The volumes a pod's claims are bound to, or the PreFilter message
    /// that keeps the pod pending on every node.
    pub fn pod_volumes(&self, pod: &Pod) -> Result<Vec<Arc<PersistentVolume>>, String> {
        let namespace = meta::namespace(pod).unwrap_or("default");
        let mut out = Vec::new();
        let mut unbound = false;
        let mut missing = false;
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(source) = &v.persistent_volume_claim else {
                continue;
            };
            let name = &source.claim_name;
            let Some(claim) = self.claims.get(&(namespace.to_string(), name.clone())) else {
                return Err(format!("persistentvolumeclaim {name:?} not found"));
            };
            if meta::is_terminating(&claim.metadata) {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let volume = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            match (bound, volume) {
                (true, Some(volume)) => match self.volumes.get(volume) {
                    Some(pv) => out.push(pv.clone()),
                    None => missing = true,
                },
                _ => unbound = true,
            }
        }
        if unbound {
            return Err(MESSAGE_UNBOUND_CLAIMS.to_string());
        }
        if missing {
            return Err(MESSAGE_MISSING_VOLUMES.to_string());
        }
        Ok(out)
    }
}

/// The node must satisfy the required node affinity of every volume the
/// pod's claims are bound to.
pub struct VolumeBinding;

impl Filter for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<String>> {
        let empty = Default::default();
        let labels = node.node.metadata.labels.as_ref().unwrap_or(&empty);
        let fits = pod.volumes.iter().all(|pv| {
            let required = pv
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.as_ref());
            required.is_none_or(|sel| {
                sel.node_selector_terms
                    .iter()
                    .any(|t| term_matches(t, labels, node.name()))
            })
        });
        if fits {
            Ok(())
        } else {
            Err(vec![REASON_VOLUME_NODE_AFFINITY.to_string()])
        }
    }
}
