//! The node's half of the local-path provisioner (k3s's helper pods, done
//! in-process): the storage controller decides where a volume goes and
//! records it as a hostPath PersistentVolume pinned to this node; this loop
//! makes its directory (mode 0777, so any container user may write), and
//! once the volume is Released with reclaim policy `Delete`, removes the
//! directory and then the PersistentVolume object.
//!
//! Only directories directly inside this node's local-path root are ever
//! made or removed, whatever a volume says; a volume still mounted by a pod
//! on the node (its claim deleted from under it) is left until that pod
//! is gone.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use commitd_api::controller::{self, Requeue};
use commitd_api::reflector::Cache;
use commitd_api::{meta, storage, Store};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::node::LocalPath;

/// How often the loop looks again with nothing changing.
const RESYNC: Duration = Duration::from_secs(30);

/// This node's local-path root for state dir `state_dir`.
pub fn root(state_dir: &Path) -> PathBuf {
    storage::root_of(state_dir)
}

/// Creates the local-path root and works out the capacity to publish:
/// `capacity` when given, else the size of the filesystem holding it.
pub async fn prepare(state_dir: &Path, capacity: Option<i64>) -> anyhow::Result<LocalPath> {
    let root = root(state_dir);
    let dir = root.clone();
    let capacity_bytes = tokio::task::spawn_blocking(move || -> io::Result<i64> {
        std::fs::create_dir_all(&dir)?;
        if let Some(bytes) = capacity {
            return Ok(bytes);
        }
        let stat = nix::sys::statvfs::statvfs(&dir).map_err(io::Error::from)?;
        let bytes = u128::from(stat.blocks()) * u128::from(stat.fragment_size());
        Ok(i64::try_from(bytes).unwrap_or(i64::MAX))
    })
    .await
    .context("local-path set-up panicked")?
    .with_context(|| format!("creating {} and reading its size", root.display()))?;
    info!(
        root = %root.display(),
        capacity = %storage::format_bytes(capacity_bytes),
        "local-path storage"
    );
    Ok(LocalPath {
        root,
        capacity_bytes,
    })
}

/// Makes a volume's directory if it is missing, writable by all. Blocking.
pub fn ensure_directory(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(storage::DIRECTORY_MODE),
    )
}

/// Removes a volume's directory (gone already is fine). Blocking.
fn remove_directory(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// What the loop does with one volume of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make sure its directory exists.
    Ensure(PathBuf),
    /// Remove its directory, then the object (at this resourceVersion).
    Reclaim { path: PathBuf, rv: Option<String> },
    /// Its claim was deleted but a pod here still uses it: wait.
    InUse,
    /// Not ours, not local-path, or left alone (Retain).
    Skip,
    /// It names a path outside the local-path root: never touched.
    Refuse(String),
}

/// Decides what to do with `volume` on node `node` whose root is `root`,
/// given the pods that exist.
pub fn decide(volume: &PersistentVolume, node: &str, root: &Path, pods: &[&Pod]) -> Action {
    if !storage::is_local_path_volume(volume) || storage::pinned_node(volume) != Some(node) {
        return Action::Skip;
    }
    let Some(path) = storage::volume_path(volume).map(PathBuf::from) else {
        return Action::Skip;
    };
    if !storage::is_inside_root(&path, root) {
        return Action::Refuse(format!(
            "{} is not a directory directly inside the local-path root {}",
            path.display(),
            root.display()
        ));
    }
    let spec = volume.spec.as_ref();
    let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref());
    let policy = spec
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    match phase {
        Some("Released") if policy == "Delete" => {
            let claim = spec.and_then(|s| s.claim_ref.as_ref());
            let in_use = claim.is_some_and(|r| {
                let ns = r.namespace.as_deref().unwrap_or("default");
                let name = r.name.as_deref().unwrap_or_default();
                pods.iter().any(|p| uses_claim(p, ns, name))
            });
            if in_use {
                Action::InUse
            } else {
                Action::Reclaim {
                    path,
                    rv: volume.metadata.resource_version.clone(),
                }
            }
        }
        Some("Released" | "Failed") => Action::Skip,
        _ => Action::Ensure(path),
    }
}

/// Whether a pod that may still run mounts claim `ns/name`.
fn uses_claim(pod: &Pod, ns: &str, name: &str) -> bool {
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !finished
        && meta::namespace(pod).unwrap_or("default") == ns
        && pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .any(|c| c.claim_name == name)
}

/// Runs the loop until `cancel` fires.
pub async fn run(
    store: Store,
    node: String,
    root: PathBuf,
    volumes: Cache<PersistentVolume>,
    pods: Cache<Pod>,
    cancel: CancellationToken,
) {
    let triggers = vec![volumes.changes(), pods.changes()];
    let refused = Mutex::new(BTreeSet::new());
    let (store, node, root, volumes, pods, refused) =
        (&store, &node, &root, &volumes, &pods, &refused);
    controller::run("local-path", triggers, RESYNC, cancel, || async move {
        pass(store, node, root, volumes, pods, refused).await
    })
    .await;
}

async fn pass(
    store: &Store,
    node: &str,
    root: &Path,
    volumes: &Cache<PersistentVolume>,
    pods: &Cache<Pod>,
    refused: &Mutex<BTreeSet<String>>,
) -> anyhow::Result<Requeue> {
    let all_pods = pods.list();
    let pod_refs: Vec<&Pod> = all_pods.iter().map(|p| &**p).collect();
    let mut failed = Vec::new();
    for volume in volumes.list() {
        let name = meta::name(&*volume).to_string();
        match decide(&volume, node, root, &pod_refs) {
            Action::Skip => {}
            Action::InUse => {
                debug!(volume = %name, "released but still mounted by a pod here; waiting")
            }
            Action::Refuse(why) => {
                let mut refused = refused.lock().unwrap_or_else(|e| e.into_inner());
                if refused.insert(name.clone()) {
                    warn!(volume = %name, "refusing to manage the volume's directory: {why}");
                }
            }
            Action::Ensure(path) => {
                let made = path.clone();
                let result = tokio::task::spawn_blocking(move || ensure_directory(&made)).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed.push(format!("{name}: creating {}: {e}", path.display())),
                    Err(e) => failed.push(format!("{name}: creating {}: {e}", path.display())),
                }
            }
            Action::Reclaim { path, rv } => {
                let gone = path.clone();
                match tokio::task::spawn_blocking(move || remove_directory(&gone)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failed.push(format!("{name}: removing {}: {e}", path.display()));
                        continue;
                    }
                    Err(e) => {
                        failed.push(format!("{name}: removing {}: {e}", path.display()));
                        continue;
                    }
                }
                info!(volume = %name, path = %path.display(), "removed the released volume's directory");
                match store
                    .delete::<PersistentVolume>(None, &name, rv.as_deref())
                    .await
                {
                    Ok(_) => info!(volume = %name, "deleted the released volume"),
                    Err(e) if e.is_conflict() => {
                        debug!(volume = %name, "the volume changed; looking again")
                    }
                    Err(e) => failed.push(format!("{name}: deleting the volume: {e}")),
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(None)
    } else {
        Err(anyhow::anyhow!("{}", failed.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volume(node: &str, path: &str, phase: &str, policy: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pvc-1", "resourceVersion": "7",
                "annotations": {storage::PROVISIONED_BY_ANNOTATION: storage::LOCAL_PATH_PROVISIONER}},
            "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": path},
                "persistentVolumeReclaimPolicy": policy,
                "claimRef": {"namespace": "demo", "name": "data", "uid": "u"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": storage::HOSTNAME_LABEL, "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": phase}
        }))
        .expect("volume")
    }

    fn pod(claim: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": phase}
        }))
        .expect("pod")
    }

    #[test]
    fn directories_are_made_and_reclaimed_only_inside_the_root() {
        let root = Path::new("/state/local-path");
        let inside = "/state/local-path/pvc-1_demo_data";
        let bound = volume("n1", inside, "Bound", "Delete");
        assert_eq!(
            decide(&bound, "n1", root, &[]),
            Action::Ensure(inside.into())
        );
        assert_eq!(
            decide(&bound, "n2", root, &[]),
            Action::Skip,
            "another node's"
        );
        let released = volume("n1", inside, "Released", "Delete");
        assert_eq!(
            decide(&released, "n1", root, &[]),
            Action::Reclaim {
                path: inside.into(),
                rv: Some("7".into())
            }
        );
        let running = pod("data", "Running");
        assert_eq!(decide(&released, "n1", root, &[&running]), Action::InUse);
        let done = pod("data", "Succeeded");
        assert!(matches!(
            decide(&released, "n1", root, &[&done]),
            Action::Reclaim { .. }
        ));
        let other = pod("logs", "Running");
        assert!(matches!(
            decide(&released, "n1", root, &[&other]),
            Action::Reclaim { .. }
        ));
        let kept = volume("n1", inside, "Released", "Retain");
        assert_eq!(decide(&kept, "n1", root, &[]), Action::Skip);
        for bad in [
            "/etc",
            "/state/local-path",
            "/state/local-path/../x",
            "/state/local-path/a/b",
        ] {
            let v = volume("n1", bad, "Released", "Delete");
            assert!(
                matches!(decide(&v, "n1", root, &[]), Action::Refuse(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn directories_are_writable_by_all_and_removal_tolerates_absence() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pvc-1_demo_data");
        ensure_directory(&dir).expect("made");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        std::fs::write(dir.join("f"), "x").expect("write");
        ensure_directory(&dir).expect("again");
        assert!(dir.join("f").exists(), "kept");
        remove_directory(&dir).expect("removed");
        assert!(!dir.exists());
        remove_directory(&dir).expect("gone already");
    }
}
