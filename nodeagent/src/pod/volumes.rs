//! Pod volumes on the node, as the kubelet makes them: a directory per
//! volume under `<state_dir>/volumes/<pod uid>/<name>`, bind-mounted into
//! containers through CRI.
//!
//! - `emptyDir`: an empty directory for the pod's life; `medium: Memory`
//!   is a tmpfs (of `sizeLimit`, when given).
//! - `hostPath`: the node's path itself, checked (or created) by `type`.
//! - `persistentVolumeClaim`: the directory of the claim's bound volume
//!   (hostPath or local) on this node, bind-mounted like a hostPath
//!   (`readOnly` honoured). While the claim is missing or not bound the
//!   pod waits in `ContainerCreating` with the reason, retried each pass.
//! - `configMap`, `secret`, `downwardAPI` and `projected`: files written
//!   from the objects, kept current while the pod runs. They are written
//!   the kubelet's way, so a change is atomic for readers: the files go to
//!   a fresh `..<timestamp>` directory, the `..data` symlink is swapped to
//!   it with a rename, and each top-level name is a symlink through
//!   `..data`. Secret volumes live on a tmpfs, never on disk.
//!
//! With the pod's `securityContext.fsGroup`, volumes belong to that group
//! as the kubelet makes them: an emptyDir is group-writable with the
//! set-group-ID bit (so files made in it join the group), and projected
//! files are group-readable. hostPath volumes are left as they are.
//!
//! Setting up is idempotent: a pass rewrites a volume only when its
//! contents changed. Tearing down unmounts what was mounted and removes
//! the pod's directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use commitd_api::{meta, storage};
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Volume, VolumeProjection,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::sanitize;
use super::spec::{field_value, resource_value, EnvFacts};
use crate::cri::proto::Mount;

/// The mode of projected files when the volume does not say.
const DEFAULT_MODE: i32 = 0o644;
/// The symlink through which a projected volume's files are read.
const DATA_LINK: &str = "..data";
/// The mode of a fresh emptyDir: anyone may write, whatever user the
/// containers run as (the kubelet's choice).
const EMPTY_DIR_MODE: u32 = 0o777;
/// What `fsGroup` adds to a file of a writable volume (the kubelet's
/// `rwMask`) and of a read-only one (`roMask`).
const GROUP_RW: u32 = 0o660;
const GROUP_RO: u32 = 0o440;
/// What `fsGroup` adds to a directory on top: search, and set-group-ID so
/// that what is created inside joins the group.
const GROUP_DIR: u32 = 0o2110;

/// The directory of all of a pod's volumes.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(sanitize(uid))
}

/// The contents volumes are projected from: ConfigMaps (`data` and
/// `binaryData`) and Secrets of the pod's namespace, by name, as far as
/// they exist; and where each claim the pod mounts is on this node.
#[derive(Debug, Clone, Default)]
pub struct VolumeObjects {
    /// ConfigMap name → key → bytes.
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Secret name → key → bytes.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Claim name → its bound volume's directory here, or why it cannot be
    /// mounted yet ([`resolve_claim`]).
    pub claims: BTreeMap<String, Result<ClaimVolume, String>>,
}

/// Where a claim's bound volume is on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimVolume {
    /// The volume's name.
    pub volume: String,
    /// Its hostPath or local path.
    pub path: PathBuf,
    /// The hostPath `type` to check (`None` for a local volume, whose
    /// directory must exist).
    pub host_path_type: Option<String>,
    /// Made by the local-path provisioner: its directory is created
    /// writable by all when missing.
    pub local_path: bool,
}

/// The names of the claims a pod's volumes mount.
pub fn referenced_claims(pod: &Pod) -> BTreeSet<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

/// Resolves a claim to the directory of its bound volume on `node`, as
/// the kubelet does before mounting; the error is the message the pod
/// waits with (it is retried on every pass).
pub fn resolve_claim(
    namespace: &str,
    name: &str,
    claim: Option<&PersistentVolumeClaim>,
    volume: impl FnOnce(&str) -> Option<std::sync::Arc<PersistentVolume>>,
    node: &str,
) -> Result<ClaimVolume, String> {
    let Some(claim) = claim else {
        return Err(format!("persistentvolumeclaim {name:?} not found"));
    };
    if meta::is_terminating(&claim.metadata) {
        return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
    }
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    let (true, Some(volume_name)) = (bound, volume_name) else {
        return Err(format!(
            "error processing PVC {namespace}/{name}: PVC is not bound"
        ));
    };
    let Some(pv) = volume(volume_name) else {
        return Err(format!(
            "error processing PVC {namespace}/{name}: PersistentVolume {volume_name:?} not found"
        ));
    };
    let bound_to_claim = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| r.uid.is_none() || r.uid == claim.metadata.uid);
    if !bound_to_claim {
        return Err(format!(
            "error processing PVC {namespace}/{name}: PersistentVolume {volume_name:?} is not bound to it"
        ));
    }
    if let Some(pinned) = storage::pinned_node(&pv).filter(|n| *n != node) {
        return Err(format!(
            "volume {volume_name:?} is on node {pinned:?}, not on this node ({node:?})"
        ));
    }
    let spec = pv.spec.as_ref();
    let (path, host_path_type) = if let Some(h) = spec.and_then(|s| s.host_path.as_ref()) {
        (h.path.clone(), Some(h.type_.clone().unwrap_or_default()))
    } else if let Some(l) = spec.and_then(|s| s.local.as_ref()) {
        (l.path.clone(), None)
    } else {
        return Err(format!(
            "volume {volume_name:?} is neither a hostPath nor a local volume"
        ));
    };
    Ok(ClaimVolume {
        volume: volume_name.to_string(),
        path: PathBuf::from(path),
        host_path_type,
        local_path: storage::is_local_path_volume(&pv),
    })
}

/// The names of the ConfigMaps and Secrets a pod's volumes project.
pub fn referenced_objects(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            config_maps.insert(cm.name.clone());
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(name);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.insert(s.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

/// Why a volume could not be set up: the pod's containers wait in
/// `ContainerCreating` with this message, as the kubelet's event says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
pub struct VolumeError {
    /// The volume's name.
    pub volume: String,
    /// What went wrong.
    pub reason: String,
}

/// One file of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
struct File {
    /// Relative path inside the volume.
    path: PathBuf,
    data: Vec<u8>,
    mode: u32,
}

/// Sets up every volume of `pod` under `dir` (the pod's volume directory)
/// and returns where each one is on the host. Blocking: call it from
/// `spawn_blocking`.
pub fn set_up(
    pod: &Pod,
    dir: &Path,
    objects: &VolumeObjects,
    facts: &EnvFacts,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let mut out = BTreeMap::new();
    let group = fs_group(pod);
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let fail = |reason: String| VolumeError {
            volume: v.name.clone(),
            reason,
        };
        let own = dir.join(sanitize(&v.name));
        let path = if let Some(host) = &v.host_path {
            host_path(&host.path, host.type_.as_deref().unwrap_or_default()).map_err(fail)?;
            PathBuf::from(&host.path)
        } else if let Some(pvc) = &v.persistent_volume_claim {
            let resolved = objects
                .claims
                .get(&pvc.claim_name)
                .cloned()
                .unwrap_or_else(|| {
                    Err(format!(
                        "persistentvolumeclaim {:?} not found",
                        pvc.claim_name
                    ))
                })
                .map_err(fail)?;
            claim_directory(&resolved).map_err(fail)?;
            resolved.path
        } else if let Some(empty) = &v.empty_dir {
            let created = fs::symlink_metadata(&own).is_err();
            fs::create_dir_all(&own).map_err(|e| fail(io_reason(&own, &e)))?;
            let mounted = if empty.medium.as_deref() == Some("Memory") {
                let size = empty
                    .size_limit
                    .as_ref()
                    .and_then(|q| commitd_api::quantity::memory_bytes(q).ok());
                ensure_tmpfs(&own, size).map_err(|e| fail(io_reason(&own, &e)))?
            } else {
                false
            };
            // Only a fresh directory: what the containers did to it since
            // (a chmod, say) is theirs.
            if created || mounted {
                prepare_empty_dir(&own, group).map_err(|e| fail(io_reason(&own, &e)))?;
            }
            own
        } else if let Some(mut files) = projected_files(pod, v, objects, facts).map_err(fail)? {
            fs::create_dir_all(&own).map_err(|e| fail(io_reason(&own, &e)))?;
            if v.secret.is_some() {
                ensure_tmpfs(&own, None).map_err(|e| fail(io_reason(&own, &e)))?;
            }
            if let Some(gid) = group {
                for f in &mut files {
                    f.mode |= GROUP_RO;
                }
                own_by_group(&own, gid, GROUP_RO | GROUP_DIR)
                    .map_err(|e| fail(io_reason(&own, &e)))?;
            }
            write_atomically(&own, &files, group).map_err(|e| fail(io_reason(&own, &e)))?;
            own
        } else {
            return Err(fail("volume type not supported by commitd".to_string()));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Checks (or makes) a claim's volume directory: a local-path one is made
/// writable by all, a hostPath one as its `type` says, a local one must
/// be a directory already.
fn claim_directory(v: &ClaimVolume) -> Result<(), String> {
    if v.local_path {
        crate::local_path::ensure_directory(&v.path).map_err(|e| io_reason(&v.path, &e))?;
    }
    match &v.host_path_type {
        Some(kind) => host_path(&v.path.to_string_lossy(), kind),
        None if v.path.is_dir() => Ok(()),
        None => Err(format!(
            "local volume {:?}: {} is not a directory",
            v.volume,
            v.path.display()
        )),
    }
}

fn io_reason(path: &Path, e: &io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// The pod's `securityContext.fsGroup`, when it is a valid group ID.
fn fs_group(pod: &Pod) -> Option<u32> {
    let group = pod.spec.as_ref()?.security_context.as_ref()?.fs_group?;
    u32::try_from(group).ok()
}

/// A fresh emptyDir: writable by all, and with `fsGroup` owned by that
/// group with the set-group-ID bit.
fn prepare_empty_dir(dir: &Path, group: Option<u32>) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(EMPTY_DIR_MODE))?;
    match group {
        Some(gid) => own_by_group(dir, gid, GROUP_RW | GROUP_DIR),
        None => Ok(()),
    }
}

/// Gives `path` to group `gid` and adds `add` to its mode (the execute
/// and set-group-ID bits of `add` only for a directory), as the kubelet's
/// volume ownership does for each file.
fn own_by_group(path: &Path, gid: u32, add: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(path, None, Some(gid))?;
    let meta = fs::metadata(path)?;
    let add = if meta.is_dir() { add } else { add & 0o666 };
    fs::set_permissions(
        path,
        fs::Permissions::from_mode((meta.mode() & 0o7777) | add),
    )
}

/// The hostPath `type` check, creating what the `OrCreate` types create.
fn host_path(path: &str, kind: &str) -> Result<(), String> {
    let p = Path::new(path);
    let meta = fs::metadata(p);
    let is = |check: fn(&fs::Metadata) -> bool| meta.as_ref().is_ok_and(check);
    use std::os::unix::fs::FileTypeExt;
    let ok = match kind {
        "" => true,
        "DirectoryOrCreate" => {
            if meta.is_err() {
                fs::create_dir_all(p).map_err(|e| io_reason(p, &e))?;
                fs::set_permissions(p, fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_reason(p, &e))?;
            }
            fs::metadata(p).is_ok_and(|m| m.is_dir())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(|e| io_reason(parent, &e))?;
                }
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| io_reason(p, &e))?;
            }
            fs::metadata(p).is_ok_and(|m| m.is_file())
        }
        "Directory" => is(|m| m.is_dir()),
        "File" => is(|m| m.is_file()),
        "Socket" => is(|m| m.file_type().is_socket()),
        "CharDevice" => is(|m| m.file_type().is_char_device()),
        "BlockDevice" => is(|m| m.file_type().is_block_device()),
        other => return Err(format!("unsupported hostPath type {other:?}")),
    };
    if ok {
        Ok(())
    } else {
        // The kubelet's wording: "hostPath type check failed: PATH is not a directory".
        let what = match kind {
            "Directory" | "DirectoryOrCreate" => "a directory",
            "File" | "FileOrCreate" => "a file",
            "Socket" => "a socket file",
            "CharDevice" => "a character device",
            _ => "a block device",
        };
        Err(format!("hostPath type check failed: {path} is not {what}"))
    }
}

/// Mounts a tmpfs on `dir` unless one is there already; whether it did.
fn ensure_tmpfs(dir: &Path, size: Option<i64>) -> io::Result<bool> {
    if is_mount_point(dir)? {
        return Ok(false);
    }
    let mut options = "mode=0755".to_string();
    if let Some(bytes) = size.filter(|b| *b > 0) {
        options.push_str(&format!(",size={bytes}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(io::Error::from)?;
    Ok(true)
}

/// Whether `dir` is on another device than its parent.
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(dir);
    Ok(fs::metadata(dir)?.dev() != fs::metadata(parent)?.dev())
}

/// The files of a configMap, secret, downwardAPI or projected volume;
/// `None` for other kinds. A missing object that is not optional fails.
fn projected_files(
    pod: &Pod,
    v: &Volume,
    objects: &VolumeObjects,
    facts: &EnvFacts,
) -> Result<Option<Vec<File>>, String> {
    let mode_of =
        |m: Option<i32>| u32::try_from(m.unwrap_or(DEFAULT_MODE) & 0o777).unwrap_or(0o644);
    if let Some(cm) = &v.config_map {
        let default = mode_of(cm.default_mode);
        let data = objects.config_maps.get(&cm.name);
        return Ok(Some(key_files(
            "configmap",
            &cm.name,
            data,
            cm.items.as_deref(),
            cm.optional,
            default,
        )?));
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let default = mode_of(s.default_mode);
        let data = objects.secrets.get(&name);
        return Ok(Some(key_files(
            "secret",
            &name,
            data,
            s.items.as_deref(),
            s.optional,
            default,
        )?));
    }
    if let Some(d) = &v.downward_api {
        let default = mode_of(d.default_mode);
        return Ok(Some(downward_files(
            pod,
            d.items.iter().flatten(),
            default,
            facts,
        )?));
    }
    if let Some(p) = &v.projected {
        let default = mode_of(p.default_mode);
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            files.extend(projection(pod, source, objects, default, facts)?);
        }
        return Ok(Some(files));
    }
    Ok(None)
}

fn projection(
    pod: &Pod,
    source: &VolumeProjection,
    objects: &VolumeObjects,
    default: u32,
    facts: &EnvFacts,
) -> Result<Vec<File>, String> {
    if let Some(cm) = &source.config_map {
        let data = objects.config_maps.get(&cm.name);
        return key_files(
            "configmap",
            &cm.name,
            data,
            cm.items.as_deref(),
            cm.optional,
            default,
        );
    }
    if let Some(s) = &source.secret {
        let data = objects.secrets.get(&s.name);
        return key_files(
            "secret",
            &s.name,
            data,
            s.items.as_deref(),
            s.optional,
            default,
        );
    }
    if let Some(d) = &source.downward_api {
        return downward_files(pod, d.items.iter().flatten(), default, facts);
    }
    if source.service_account_token.is_some() {
        return Err("serviceAccountToken projections are not supported by commitd yet".to_string());
    }
    Ok(Vec::new())
}

/// The files of a ConfigMap or Secret: every key, or only `items` (each at
/// its path, with its mode), as the kubelet lays them out.
fn key_files(
    kind: &str,
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    default: u32,
) -> Result<Vec<File>, String> {
    let Some(data) = data else {
        return if optional == Some(true) {
            Ok(Vec::new())
        } else {
            Err(format!("{kind} {name:?} not found"))
        };
    };
    let mut files = Vec::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, value) in data {
                files.push(File {
                    path: relative(key)?,
                    data: value.clone(),
                    mode: default,
                });
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional == Some(true) {
                        continue;
                    }
                    return Err(if kind == "secret" {
                        format!("secret references non-existent secret key: {}", item.key)
                    } else {
                        format!("configmap references non-existent config key: {}", item.key)
                    });
                };
                files.push(File {
                    path: relative(&item.path)?,
                    data: value.clone(),
                    mode: item
                        .mode
                        .and_then(|m| u32::try_from(m & 0o777).ok())
                        .unwrap_or(default),
                });
            }
        }
    }
    Ok(files)
}

fn downward_files<'a>(
    pod: &Pod,
    items: impl Iterator<Item = &'a DownwardAPIVolumeFile>,
    default: u32,
    facts: &EnvFacts,
) -> Result<Vec<File>, String> {
    let mut files = Vec::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            let meta = &pod.metadata;
            match f.field_path.as_str() {
                "metadata.labels" => format_map(meta.labels.as_ref()),
                "metadata.annotations" => format_map(meta.annotations.as_ref()),
                path => field_value(pod, path, facts)
                    .ok_or_else(|| format!("unsupported fieldPath {path:?}"))?,
            }
        } else if let Some(r) = &item.resource_field_ref {
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| {
                    let wanted = r.container_name.as_deref().unwrap_or_default();
                    s.containers.iter().find(|c| c.name == wanted)
                })
                .ok_or_else(|| "resourceFieldRef needs the name of a container".to_string())?;
            resource_value(pod, container, r, facts)?
        } else {
            continue;
        };
        files.push(File {
            path: relative(&item.path)?,
            data: value.into_bytes(),
            mode: item
                .mode
                .and_then(|m| u32::try_from(m & 0o777).ok())
                .unwrap_or(default),
        });
    }
    Ok(files)
}

/// Labels or annotations as the downward API writes them: `key="value"`
/// lines in key order, values quoted.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `path` as a relative path that stays inside the volume.
fn relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let inside = !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !p
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with(".."));
    if inside {
        Ok(p.to_path_buf())
    } else {
        Err(format!(
            "invalid path {path:?}: must be relative and must not contain '..'"
        ))
    }
}

/// Replaces the files of `dir` with `files` in one step for readers (the
/// kubelet's atomic writer); does nothing when they are already there.
/// With `group`, what is written belongs to it.
fn write_atomically(dir: &Path, files: &[File], group: Option<u32>) -> io::Result<()> {
    let data_link = dir.join(DATA_LINK);
    let current = fs::read_link(&data_link).ok();
    if let Some(target) = &current {
        if same_files(&dir.join(target), files)? {
            return Ok(());
        }
    }
    // A fresh directory, named so that two writes never collide.
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let fresh = dir.join(&stamp);
    fs::create_dir(&fresh)?;
    let mut dirs = BTreeSet::from([fresh.clone()]);
    for f in files {
        let path = fresh.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
            dirs.extend(
                parent
                    .ancestors()
                    .take_while(|d| d.starts_with(&fresh))
                    .map(Path::to_path_buf),
            );
        }
        fs::write(&path, &f.data)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))?;
        if let Some(gid) = group {
            own_by_group(&path, gid, 0)?;
        }
    }
    for d in &dirs {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        if let Some(gid) = group {
            own_by_group(d, gid, GROUP_RO | GROUP_DIR)?;
        }
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    symlink(&stamp, &tmp_link)?;
    fs::rename(&tmp_link, &data_link)?;
    // Top-level names point through `..data`; names no longer projected go.
    let top: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.path.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &link)?;
        }
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != DATA_LINK && name != stamp {
                fs::remove_dir_all(entry.path())?;
            }
        } else if !top.contains(&name) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whether `dir` holds exactly `files` (contents and modes).
fn same_files(dir: &Path, files: &[File]) -> io::Result<bool> {
    let mut found = BTreeMap::new();
    collect_files(dir, Path::new(""), &mut found)?;
    if found.len() != files.len() {
        return Ok(false);
    }
    for f in files {
        match found.get(&f.path) {
            Some((data, mode)) if *data == f.data && *mode == f.mode => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn collect_files(
    dir: &Path,
    prefix: &Path,
    out: &mut BTreeMap<PathBuf, (Vec<u8>, u32)>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let rel = prefix.join(entry.file_name());
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect_files(&entry.path(), &rel, out)?;
        } else {
            out.insert(
                rel,
                (fs::read(entry.path())?, meta.permissions().mode() & 0o777),
            );
        }
    }
    Ok(())
}

/// The CRI mounts of `container`'s `volumeMounts`, given where each volume
/// is on the host. A `subPath` of an emptyDir or a claim's volume is
/// created as the kubelet does. Projected volumes are always mounted
/// read-only, a claim's when the pod's volume says `readOnly`.
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Mount>, String> {
    let specs: BTreeMap<&str, &Volume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let (Some(host), Some(spec)) = (volumes.get(&m.name), specs.get(m.name.as_str())) else {
            return Err(format!("unable to find volume {:?}", m.name));
        };
        let projected = spec.config_map.is_some()
            || spec.secret.is_some()
            || spec.downward_api.is_some()
            || spec.projected.is_some();
        let mut host_path = host.clone();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host_path = host.join(relative(sub)?);
            // The kubelet makes a missing subPath in the volumes it owns
            // the contents of: emptyDirs and claims' volumes.
            let owned = spec.empty_dir.is_some() || spec.persistent_volume_claim.is_some();
            if owned && fs::symlink_metadata(&host_path).is_err() {
                create_sub_path(host, &host_path).map_err(|e| io_reason(&host_path, &e))?;
            }
        }
        let claim_read_only = spec
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.read_only == Some(true));
        mounts.push(Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.to_string_lossy().into_owned(),
            readonly: projected || claim_read_only || m.read_only == Some(true),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// Creates the missing directories of an emptyDir's `subPath` with the
/// mode and group of the volume itself, as the kubelet does.
fn create_sub_path(volume: &Path, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = fs::metadata(volume)?;
    let missing: Vec<&Path> = path
        .ancestors()
        .take_while(|d| *d != volume && fs::symlink_metadata(d).is_err())
        .collect();
    fs::create_dir_all(path)?;
    for d in missing {
        std::os::unix::fs::chown(d, None, Some(root.gid()))?;
        fs::set_permissions(d, fs::Permissions::from_mode(root.mode() & 0o7777))?;
    }
    Ok(())
}

/// Unmounts whatever is mounted in the pod's volume directory and removes
/// it. Blocking.
pub fn tear_down(root: &Path, uid: &str) -> io::Result<()> {
    let dir = pod_dir(root, uid);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() && is_mount_point(&path)? {
            umount2(&path, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
        }
    }
    fs::remove_dir_all(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> File {
        File {
            path: PathBuf::from(path),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn projected_files_are_swapped_in_atomically_and_stale_names_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write_atomically(
            dir,
            &[file("a", "1", 0o644), file("sub/b", "2", 0o600)],
            None,
        )
        .expect("write");
        assert_eq!(fs::read_to_string(dir.join("a")).expect("a"), "1");
        assert_eq!(fs::read_to_string(dir.join("sub/b")).expect("b"), "2");
        assert_eq!(
            fs::read_link(dir.join("a")).expect("link"),
            Path::new("..data/a")
        );
        let first = fs::read_link(dir.join(DATA_LINK)).expect("data link");
        let mode = fs::metadata(dir.join("sub/b"))
            .expect("b")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        // The same files: nothing is rewritten.
        write_atomically(
            dir,
            &[file("a", "1", 0o644), file("sub/b", "2", 0o600)],
            None,
        )
        .expect("again");
        assert_eq!(
            fs::read_link(dir.join(DATA_LINK)).expect("data link"),
            first
        );

        // New contents: a new directory, the old one and `sub` go.
        write_atomically(dir, &[file("a", "3", 0o644)], None).expect("update");
        assert_eq!(fs::read_to_string(dir.join("a")).expect("a"), "3");
        assert_ne!(
            fs::read_link(dir.join(DATA_LINK)).expect("data link"),
            first
        );
        assert!(fs::symlink_metadata(dir.join("sub")).is_err());
        let dirs: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(dirs.len(), 3, "{dirs:?}");
    }

    #[test]
    fn fs_group_owns_empty_dirs_and_projected_files() {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        if fs::metadata("/proc/self").ok().map(|m| m.uid()) != Some(0) {
            eprintln!("skipping: changing a file's group to any group needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {
                "securityContext": {"fsGroup": 2345},
                "containers": [{"name": "app", "image": "i"}],
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "conf", "configMap": {"name": "app", "defaultMode": 0o400,
                        "items": [{"key": "k", "path": "deep/k"}]}}
                ]
            }
        }))
        .expect("pod");
        let objects = VolumeObjects {
            config_maps: BTreeMap::from([(
                "app".to_string(),
                BTreeMap::from([("k".to_string(), b"v".to_vec())]),
            )]),
            ..VolumeObjects::default()
        };
        let paths = set_up(&pod, tmp.path(), &objects, &EnvFacts::default()).expect("set up");
        let stat = |p: &Path| {
            let m = fs::metadata(p).expect("stat");
            (m.gid(), m.mode() & 0o7777)
        };
        // Writable by all, the group's, and what is made in it joins it.
        let scratch = &paths["scratch"];
        assert_eq!(stat(scratch), (2345, 0o2777));
        let sub = scratch.join("a/b");
        create_sub_path(scratch, &sub).expect("subPath");
        assert_eq!(stat(&scratch.join("a")), (2345, 0o2777));
        assert_eq!(stat(&sub), (2345, 0o2777));
        // Projected files readable by the group, whatever defaultMode says.
        let conf = &paths["conf"];
        assert_eq!(stat(&conf.join("deep/k")), (2345, 0o440));
        assert_eq!(stat(&conf.join("deep")).0, 2345);
        assert_eq!(stat(conf).0, 2345);
        // A second pass finds the files as they should be and keeps them.
        let data = fs::read_link(conf.join(DATA_LINK)).expect("..data");
        set_up(&pod, tmp.path(), &objects, &EnvFacts::default()).expect("again");
        assert_eq!(fs::read_link(conf.join(DATA_LINK)).expect("..data"), data);
    }

    #[test]
    fn keys_items_and_missing_objects() {
        let data = BTreeMap::from([
            ("app.conf".to_string(), b"x=1".to_vec()),
            ("other".to_string(), b"y".to_vec()),
        ]);
        let all = key_files("configmap", "app", Some(&data), None, None, 0o644).expect("all");
        assert_eq!(all.len(), 2);
        let items: Vec<KeyToPath> = serde_json::from_value(serde_json::json!([
            {"key": "app.conf", "path": "conf/app.conf", "mode": 0o400}
        ]))
        .expect("items");
        let some =
            key_files("configmap", "app", Some(&data), Some(&items), None, 0o644).expect("items");
        assert_eq!(some, vec![file("conf/app.conf", "x=1", 0o400)]);
        assert_eq!(
            key_files("secret", "db", None, None, None, 0o644),
            Err("secret \"db\" not found".to_string())
        );
        assert_eq!(
            key_files("secret", "db", None, None, Some(true), 0o644),
            Ok(vec![])
        );
        let missing: Vec<KeyToPath> =
            serde_json::from_value(serde_json::json!([{"key": "nope", "path": "n"}]))
                .expect("items");
        assert_eq!(
            key_files("secret", "db", Some(&data), Some(&missing), None, 0o644),
            Err("secret references non-existent secret key: nope".to_string())
        );
    }

    #[test]
    fn labels_are_written_as_quoted_lines() {
        let m = BTreeMap::from([
            ("tier".to_string(), "front".to_string()),
            ("app".to_string(), "say \"hi\"".to_string()),
        ]);
        assert_eq!(
            format_map(Some(&m)),
            "app=\"say \\\"hi\\\"\"\ntier=\"front\""
        );
        assert_eq!(format_map(None), "");
    }

    #[test]
    fn paths_stay_inside_the_volume() {
        assert!(relative("a/b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data/x"] {
            assert!(relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_path_types_are_checked_and_created() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("made");
        let d = dir.to_string_lossy().into_owned();
        assert!(host_path(&d, "Directory").is_err());
        host_path(&d, "DirectoryOrCreate").expect("created");
        host_path(&d, "Directory").expect("exists");
        assert_eq!(
            host_path(&d, "File"),
            Err(format!("hostPath type check failed: {d} is not a file"))
        );
        let f = dir.join("f").to_string_lossy().into_owned();
        host_path(&f, "FileOrCreate").expect("created");
        host_path(&f, "File").expect("exists");
        host_path("/nonexistent/anything", "").expect("no check");
    }

    #[test]
    fn claims_resolve_to_their_bound_volume_on_this_node() {
        let claim = |phase: &str, volume: Option<&str>| -> PersistentVolumeClaim {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "data", "namespace": "demo", "uid": "u1"},
                "spec": {"volumeName": volume},
                "status": {"phase": phase}
            }))
            .expect("claim")
        };
        let pv: std::sync::Arc<PersistentVolume> = std::sync::Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "pvc-u1", "annotations": {
                    storage::PROVISIONED_BY_ANNOTATION: storage::LOCAL_PATH_PROVISIONER}},
                "spec": {"hostPath": {"path": "/lp/pvc-u1_demo_data", "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": "demo", "name": "data", "uid": "u1"},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": storage::HOSTNAME_LABEL, "operator": "In", "values": ["n1"]}]}]}}}
            }))
            .expect("volume"),
        );
        let find = |name: &str| (name == "pvc-u1").then(|| pv.clone());
        let bound = claim("Bound", Some("pvc-u1"));
        let resolved = resolve_claim("demo", "data", Some(&bound), find, "n1").expect("resolves");
        assert_eq!(resolved.path, PathBuf::from("/lp/pvc-u1_demo_data"));
        assert!(resolved.local_path);
        assert_eq!(
            resolve_claim("demo", "data", None, find, "n1"),
            Err("persistentvolumeclaim \"data\" not found".to_string())
        );
        let pending = claim("Pending", None);
        assert_eq!(
            resolve_claim("demo", "data", Some(&pending), find, "n1"),
            Err("error processing PVC demo/data: PVC is not bound".to_string())
        );
        let elsewhere = resolve_claim("demo", "data", Some(&bound), find, "n2");
        assert!(elsewhere.is_err_and(|e| e.contains("not on this node")));
        let mut other = bound.clone();
        other.metadata.uid = Some("u2".into());
        assert!(resolve_claim("demo", "data", Some(&other), find, "n1").is_err());
    }

    #[test]
    fn mounts_follow_volume_mounts() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "demo", "uid": "u"},
            "spec": {
                "volumes": [{"name": "cache", "emptyDir": {}},
                            {"name": "conf", "configMap": {"name": "app"}}],
                "containers": [{"name": "c", "image": "i", "volumeMounts": [
                    {"name": "cache", "mountPath": "/cache", "subPath": "c1"},
                    {"name": "conf", "mountPath": "/etc/app"},
                    {"name": "cache", "mountPath": "/ro", "readOnly": true}
                ]}]
            }
        }))
        .expect("pod");
        let tmp = tempfile::tempdir().expect("tempdir");
        let volumes = BTreeMap::from([
            ("cache".to_string(), tmp.path().join("cache")),
            ("conf".to_string(), tmp.path().join("conf")),
        ]);
        fs::create_dir(&volumes["cache"]).expect("the emptyDir");
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let mounts = container_mounts(&pod, c, &volumes).expect("mounts");
        let seen: Vec<(&str, String, bool)> = mounts
            .iter()
            .map(|m| {
                let rel = Path::new(&m.host_path)
                    .strip_prefix(tmp.path())
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned();
                (m.container_path.as_str(), rel, m.readonly)
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("/cache", "cache/c1".to_string(), false),
                ("/etc/app", "conf".to_string(), true),
                ("/ro", "cache".to_string(), true),
            ]
        );
        assert!(tmp.path().join("cache/c1").is_dir(), "subPath created");
    }
}
