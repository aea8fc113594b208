//! What every stored object has in common: the [`Object`] trait that ties a
//! Kubernetes type to its [`Kind`], the annotations commitd writes, and
//! helpers over `metadata` (owners, ownership by Git, identities).

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::kinds::Kind;

/// The commit an object was last applied from (on Git-owned objects).
pub const COMMIT_ANNOTATION: &str = "commitd.io/commit";
/// `path:line` of the manifest an object came from (on Git-owned objects).
pub const SOURCE_ANNOTATION: &str = "commitd.io/source";
/// The label a ReplicaSet and its pods carry, as in Kubernetes.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The revision annotation Kubernetes puts on Deployments and ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The commit that rolled a Deployment's ReplicaSet out: the Deployment's
/// [`COMMIT_ANNOTATION`] when the ReplicaSet was created for its template,
/// or took the newest revision again (a rollback). commitd's answer to
/// Kubernetes' `kubernetes.io/change-cause`: `commitd rollout history`
/// joins it with the commit's history record to say who changed what, and
/// it is a separate key so derived objects never look Git-owned.
pub const ROLLOUT_COMMIT_ANNOTATION: &str = "commitd.io/rollout-commit";

/// A Kubernetes type commitd stores in etcd.
pub trait Object:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The kind this type is stored as.
    const STORE_KIND: Kind;
}

macro_rules! object {
    ($t:ty, $k:expr) => {
        impl Object for $t {
            const STORE_KIND: Kind = $k;
        }
    };
}
object!(Namespace, Kind::Namespace);
object!(ConfigMap, Kind::ConfigMap);
object!(Secret, Kind::Secret);
object!(ServiceAccount, Kind::ServiceAccount);
object!(Pod, Kind::Pod);
object!(ReplicaSet, Kind::ReplicaSet);
object!(Deployment, Kind::Deployment);
object!(Job, Kind::Job);
object!(Node, Kind::Node);
object!(Service, Kind::Service);
object!(Endpoints, Kind::Endpoints);
object!(CronJob, Kind::CronJob);
object!(DaemonSet, Kind::DaemonSet);
object!(StatefulSet, Kind::StatefulSet);
object!(PersistentVolumeClaim, Kind::PersistentVolumeClaim);
object!(PersistentVolume, Kind::PersistentVolume);
object!(StorageClass, Kind::StorageClass);
object!(ControllerRevision, Kind::ControllerRevision);

/// The object's name ("" if it has none, which validation rejects).
pub fn name<T: Object>(obj: &T) -> &str {
    obj.metadata().name.as_deref().unwrap_or_default()
}

/// The object's namespace, `None` for cluster-scoped kinds.
pub fn namespace<T: Object>(obj: &T) -> Option<&str> {
    if T::STORE_KIND.namespaced() {
        Some(obj.metadata().namespace.as_deref().unwrap_or("default"))
    } else {
        None
    }
}

/// `namespace/name` (or `name`), the way objects are named in logs.
pub fn display_key<T: Object>(obj: &T) -> String {
    match namespace(obj) {
        Some(ns) => format!("{ns}/{}", name(obj)),
        None => name(obj).to_string(),
    }
}

/// Whether Git declared this object (and so owns it).
pub fn is_git_owned(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(COMMIT_ANNOTATION))
}

/// An annotation's value.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The owner that controls this object (`controller: true`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// An owner reference naming `owner` as the controller, as Kubernetes'
/// controllers set on what they create.
pub fn controller_reference<T: Object>(owner: &T) -> OwnerReference {
    OwnerReference {
        api_version: T::API_VERSION.to_string(),
        kind: T::KIND.to_string(),
        name: name(owner).to_string(),
        uid: owner.metadata().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the object is being deleted (graceful deletion in progress).
pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// The current time as Kubernetes' `Time`.
pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// A fresh object UID, formatted like Kubernetes' (a random UUID v4).
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b
        .iter()
        .enumerate()
        .map(|(i, byte)| {
            let byte = match i {
                6 => (byte & 0x0f) | 0x40,
                8 => (byte & 0x3f) | 0x80,
                _ => *byte,
            };
            format!("{byte:02x}")
        })
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random suffix of `n` characters from Kubernetes' alphabet for generated
/// names (no vowels, no look-alike digits).
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_look_like_uuid_v4() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
    }

    #[test]
    fn suffixes_use_the_safe_alphabet() {
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
