//! The kinds commitd knows, with the facts every layer needs about each:
//! API group and version, scope, the names people type on the command line.

use std::fmt;

/// A kind of object commitd stores. One enum, so that adding a kind is one
/// place to change and every `match` points at what else must learn it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    ConfigMap,
    Secret,
    ServiceAccount,
    Pod,
    ReplicaSet,
    Deployment,
    Job,
    Node,
    Service,
    Endpoints,
    CronJob,
    DaemonSet,
    StatefulSet,
    PersistentVolumeClaim,
    PersistentVolume,
    StorageClass,
    ControllerRevision,
}

impl Kind {
    /// Every kind, in the order a commit applies them (namespaces first,
    /// configuration before the workloads that read it).
    pub const ALL: [Kind; 18] = [
        Kind::Namespace,
        Kind::StorageClass,
        Kind::PersistentVolume,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
        Kind::PersistentVolumeClaim,
        Kind::Node,
        Kind::Service,
        Kind::Endpoints,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::CronJob,
        Kind::Job,
        Kind::ReplicaSet,
        Kind::ControllerRevision,
        Kind::Pod,
    ];

    /// Kinds a manifest in Git may declare.
    pub const FROM_GIT: [Kind; 15] = [
        Kind::Namespace,
        Kind::StorageClass,
        Kind::PersistentVolume,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
        Kind::PersistentVolumeClaim,
        Kind::Service,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::DaemonSet,
        Kind::CronJob,
        Kind::Job,
        Kind::ReplicaSet,
        Kind::Pod,
    ];

    /// The API group, empty for the core group as in Kubernetes.
    pub fn group(self) -> &'static str {
        match self {
            Kind::ReplicaSet
            | Kind::Deployment
            | Kind::DaemonSet
            | Kind::StatefulSet
            | Kind::ControllerRevision => "apps",
            Kind::Job | Kind::CronJob => "batch",
            Kind::StorageClass => "storage.k8s.io",
            _ => "",
        }
    }

    /// `apiVersion` as written in manifests.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::ReplicaSet
            | Kind::Deployment
            | Kind::DaemonSet
            | Kind::StatefulSet
            | Kind::ControllerRevision => "apps/v1",
            Kind::Job | Kind::CronJob => "batch/v1",
            Kind::StorageClass => "storage.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The `kind` field value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Pod => "Pod",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Deployment => "Deployment",
            Kind::Job => "Job",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::CronJob => "CronJob",
            Kind::DaemonSet => "DaemonSet",
            Kind::StatefulSet => "StatefulSet",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::StorageClass => "StorageClass",
            Kind::ControllerRevision => "ControllerRevision",
        }
    }

    /// The lower-case plural used in resource names (`deployments.apps`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Pod => "pods",
            Kind::ReplicaSet => "replicasets",
            Kind::Deployment => "deployments",
            Kind::Job => "jobs",
            Kind::Node => "nodes",
            Kind::Service => "services",
            Kind::Endpoints => "endpoints",
            Kind::CronJob => "cronjobs",
            Kind::DaemonSet => "daemonsets",
            Kind::StatefulSet => "statefulsets",
            Kind::PersistentVolumeClaim => "persistentvolumeclaims",
            Kind::PersistentVolume => "persistentvolumes",
            Kind::StorageClass => "storageclasses",
            Kind::ControllerRevision => "controllerrevisions",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::PersistentVolume | Kind::StorageClass
        )
    }

    /// Finds the kind a manifest declares with `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// Finds a kind by any name kubectl accepts: plural, singular, short
    /// name or kind, case-insensitively.
    pub fn from_cli(name: &str) -> Option<Kind> {
        let n = name.to_ascii_lowercase();
        let n = n.split('.').next().unwrap_or_default();
        Kind::ALL.into_iter().find(|k| {
            let singular = k.name().to_ascii_lowercase();
            n == singular || n == k.plural() || k.short_names().contains(&n)
        })
    }

    fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace => &["ns"],
            Kind::ConfigMap => &["cm"],
            Kind::Secret => &[],
            Kind::ServiceAccount => &["sa"],
            Kind::Pod => &["po"],
            Kind::ReplicaSet => &["rs"],
            Kind::Deployment => &["deploy"],
            Kind::Job => &[],
            Kind::Node => &["no"],
            Kind::Service => &["svc"],
            Kind::Endpoints => &["ep"],
            Kind::CronJob => &["cj"],
            Kind::DaemonSet => &["ds"],
            Kind::StatefulSet => &["sts"],
            Kind::PersistentVolumeClaim => &["pvc"],
            Kind::PersistentVolume => &["pv"],
            Kind::StorageClass => &["sc"],
            Kind::ControllerRevision => &[],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_resolve_like_kubectl() {
        assert_eq!(Kind::from_cli("po"), Some(Kind::Pod));
        assert_eq!(Kind::from_cli("Deployments"), Some(Kind::Deployment));
        assert_eq!(Kind::from_cli("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::from_cli("replicasets.apps"), Some(Kind::ReplicaSet));
        assert_eq!(Kind::from_cli("cm"), Some(Kind::ConfigMap));
        assert_eq!(Kind::from_cli("sa"), Some(Kind::ServiceAccount));
        assert_eq!(Kind::from_cli("jobs.batch"), Some(Kind::Job));
        assert_eq!(Kind::from_cli("job"), Some(Kind::Job));
        assert_eq!(Kind::from_cli("cj"), Some(Kind::CronJob));
        assert_eq!(Kind::from_cli("ds"), Some(Kind::DaemonSet));
        assert_eq!(Kind::from_cli("sts"), Some(Kind::StatefulSet));
        assert_eq!(Kind::from_cli("pvc"), Some(Kind::PersistentVolumeClaim));
        assert_eq!(Kind::from_cli("pv"), Some(Kind::PersistentVolume));
        assert_eq!(
            Kind::from_cli("storageclasses.storage.k8s.io"),
            Some(Kind::StorageClass)
        );
        assert_eq!(Kind::from_cli("widgets"), None);
    }

    #[test]
    fn types_resolve_only_with_their_group() {
        assert_eq!(
            Kind::from_type("apps/v1", "Deployment"),
            Some(Kind::Deployment)
        );
        assert_eq!(Kind::from_type("v1", "Deployment"), None);
        assert_eq!(Kind::from_type("v1", "Namespace"), Some(Kind::Namespace));
        assert_eq!(Kind::from_type("batch/v1", "Job"), Some(Kind::Job));
        assert_eq!(Kind::from_type("v1", "Job"), None);
        assert_eq!(
            Kind::from_type("storage.k8s.io/v1", "StorageClass"),
            Some(Kind::StorageClass)
        );
        assert!(!Kind::PersistentVolume.namespaced());
        assert!(Kind::PersistentVolumeClaim.namespaced());
    }
}
