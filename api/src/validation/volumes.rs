//! Kubernetes' validation of pod volumes and of containers' volume mounts,
//! with its messages. Objects are defaulted before they are validated, so a
//! volume with no source has become an `emptyDir`, and `defaultMode`,
//! `hostPath.type`, `fieldRef.apiVersion` and token lifetimes are set.
//!
//! Where Kubernetes reports an error on a path that names no element
//! (`volumeMounts.subPath`, `downwardAPI.path`, `projected` for a duplicate
//! path) or misspells a field (`downwarAPI`, `cephFS`), the error is put on
//! the field itself here (`volumeMounts[0].subPath`,
//! `downwardAPI.items[0].path`), so its line can be found in the manifest;
//! the messages are Kubernetes' own.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, DownwardAPIVolumeFile, EmptyDirVolumeSource,
    HostPathVolumeSource, KeyToPath, ObjectFieldSelector, ProjectedVolumeSource,
    ResourceFieldSelector, SecretVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeProjection,
};

use super::{FieldErrors, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG};
use crate::field_path::FieldPath;
use crate::quantity::{self, Format};

const FILE_MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const ONE_VOLUME_TYPE_MSG: &str = "may not specify more than 1 volume type";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// `hostPath.type` values, sorted as Kubernetes lists them.
const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];
/// Pod fields a downward API volume file may expose (besides subscripted
/// labels and annotations), sorted.
const VOLUME_FIELD_PATHS: [&str; 5] = [
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];
/// Every pod field label the downward API knows (`v1`).
const POD_FIELD_LABELS: [&str; 14] = [
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.serviceAccountName",
    "spec.schedulerName",
    "status.phase",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];
/// Container resources a downward API volume file may expose, sorted
/// (hugepages are accepted by prefix).
const RESOURCE_FIELDS: [&str; 6] = [
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];
/// `emptyDir.medium` values commitd can provide: the node's disk, tmpfs.
const EMPTY_DIR_MEDIA: [&str; 2] = ["", "Memory"];
const MOUNT_PROPAGATIONS: [&str; 3] = ["Bidirectional", "HostToContainer", "None"];
const RECURSIVE_READ_ONLY: [&str; 3] = ["Disabled", "Enabled", "IfPossible"];

/// The volumes of a pod that passed validation, by name; a mount of any
/// other name is not found, as in Kubernetes.
pub(crate) type ValidVolumes<'a> = HashMap<&'a str, &'a Volume>;

/// A string value as Kubernetes quotes it in a message.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Validates `spec.volumes` (`p`): names, uniqueness and each volume's
/// single source. Returns the volumes without errors, which mounts may use.
pub(crate) fn volumes<'a>(
    list: &'a [Volume],
    p: &FieldPath,
    errs: &mut FieldErrors,
) -> ValidVolumes<'a> {
    let mut valid = ValidVolumes::new();
    for (i, v) in list.iter().enumerate() {
        let vp = p.index(i);
        let mut own = FieldErrors::default();
        source(v, &vp, &mut own);
        let np = vp.key("name");
        if v.name.is_empty() {
            own.required(np.clone());
        } else {
            dns1123_label(&v.name, &np, &mut own);
        }
        if valid.contains_key(v.name.as_str()) {
            own.add(np, format!("Duplicate value: {}", quoted(&v.name)));
        }
        if own.0.is_empty() {
            valid.insert(v.name.as_str(), v);
        } else {
            errs.0.extend(own.0);
        }
    }
    valid
}

/// Kubernetes' `IsDNS1123Label` messages: the length and the pattern are
/// reported apart.
fn dns1123_label(name: &str, p: &FieldPath, errs: &mut FieldErrors) {
    if name.len() > 63 {
        errs.invalid(
            p.clone(),
            quoted(name),
            "must be no more than 63 characters",
        );
    }
    if !label_pattern(name) {
        errs.invalid(p.clone(), quoted(name), DNS1123_LABEL_MSG);
    }
}

/// The RFC 1123 label pattern, without its length limit.
fn label_pattern(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Exactly one source, checked in Kubernetes' order: the first one given is
/// validated and each later one is forbidden.
fn source(v: &Volume, p: &FieldPath, errs: &mut FieldErrors) {
    let given = [
        ("emptyDir", v.empty_dir.is_some()),
        ("hostPath", v.host_path.is_some()),
        ("gitRepo", v.git_repo.is_some()),
        ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()),
        ("secret", v.secret.is_some()),
        ("nfs", v.nfs.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("flocker", v.flocker.is_some()),
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("rbd", v.rbd.is_some()),
        ("cinder", v.cinder.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("downwardAPI", v.downward_api.is_some()),
        ("fc", v.fc.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
        ("configMap", v.config_map.is_some()),
        ("azureFile", v.azure_file.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()),
        ("photonPersistentDisk", v.photon_persistent_disk.is_some()),
        ("portworxVolume", v.portworx_volume.is_some()),
        ("azureDisk", v.azure_disk.is_some()),
        ("storageos", v.storageos.is_some()),
        ("projected", v.projected.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        ("csi", v.csi.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("image", v.image.is_some()),
    ];
    let mut first = true;
    for (field, _) in given.iter().filter(|(_, set)| *set) {
        let sp = p.key(field);
        if !first {
            errs.forbidden(sp, ONE_VOLUME_TYPE_MSG);
            continue;
        }
        first = false;
        match *field {
            "emptyDir" => empty_dir(v.empty_dir.as_ref(), &sp, errs),
            "hostPath" => host_path(v.host_path.as_ref(), &sp, errs),
            "secret" => secret(v.secret.as_ref(), &sp, errs),
            "configMap" => config_map(v.config_map.as_ref(), &sp, errs),
            "downwardAPI" => {
                if let Some(d) = &v.downward_api {
                    mode(d.default_mode, sp.key("defaultMode"), errs);
                    for (j, f) in d.items.iter().flatten().enumerate() {
                        downward_file(f, &sp.key("items").index(j), errs);
                    }
                }
            }
            "projected" => projected(v.projected.as_ref(), &sp, errs),
            "persistentVolumeClaim"
                if v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name.is_empty()) =>
            {
                errs.required(sp.key("claimName"));
            }
            // Sources commitd cannot provide are only counted.
            _ => {}
        }
    }
    if first {
        errs.add(p.clone(), "Required value: must specify a volume type");
    }
}

/// The medium and the size limit. Kubernetes' API server leaves the medium
/// to the kubelet, which refuses unknown ones when mounting; commitd, which
/// has no hugepages, refuses all but the disk and memory here, before a pod
/// could run differently than it would in Kubernetes.
fn empty_dir(e: Option<&EmptyDirVolumeSource>, p: &FieldPath, errs: &mut FieldErrors) {
    if let Some(m) = e.and_then(|e| e.medium.as_deref()) {
        if !EMPTY_DIR_MEDIA.contains(&m) {
            errs.unsupported(p.key("medium"), m, &EMPTY_DIR_MEDIA);
        }
    }
    let Some(limit) = e.and_then(|e| e.size_limit.as_ref()) else {
        return;
    };
    match quantity::from_k8s(limit) {
        Err(why) => errs.invalid(p.key("sizeLimit"), quoted(&limit.0), &why.to_string()),
        Ok(q) if q.is_negative() => errs.forbidden(
            p.key("sizeLimit"),
            "SizeLimit field must be a valid resource quantity",
        ),
        Ok(_) => {}
    }
}

fn host_path(h: Option<&HostPathVolumeSource>, p: &FieldPath, errs: &mut FieldErrors) {
    let Some(h) = h else { return };
    if h.path.is_empty() {
        errs.required(p.key("path"));
        return;
    }
    no_backsteps(&h.path, &p.key("path"), errs);
    if let Some(t) = h.type_.as_deref() {
        if !HOST_PATH_TYPES.contains(&t) {
            errs.unsupported(p.key("type"), t, &HOST_PATH_TYPES);
        }
    }
}

fn secret(s: Option<&SecretVolumeSource>, p: &FieldPath, errs: &mut FieldErrors) {
    let Some(s) = s else { return };
    if s.secret_name.as_deref().is_none_or(str::is_empty) {
        errs.required(p.key("secretName"));
    }
    mode(s.default_mode, p.key("defaultMode"), errs);
    for (j, kp) in s.items.iter().flatten().enumerate() {
        key_to_path(kp, &p.key("items").index(j), errs);
    }
}

fn config_map(c: Option<&ConfigMapVolumeSource>, p: &FieldPath, errs: &mut FieldErrors) {
    let Some(c) = c else { return };
    if c.name.is_empty() {
        errs.required(p.key("name"));
    }
    mode(c.default_mode, p.key("defaultMode"), errs);
    for (j, kp) in c.items.iter().flatten().enumerate() {
        key_to_path(kp, &p.key("items").index(j), errs);
    }
}

/// A file mode: 0 to 0777. Kubernetes prints the bad value in decimal.
fn mode(m: Option<i32>, p: FieldPath, errs: &mut FieldErrors) {
    if let Some(m) = m.filter(|m| !(0..=0o777).contains(m)) {
        errs.invalid(p, m, FILE_MODE_MSG);
    }
}

/// One `items` entry of a configMap or secret. As in Kubernetes, the key is
/// only required: a key the object lacks fails when the volume is set up.
fn key_to_path(kp: &KeyToPath, p: &FieldPath, errs: &mut FieldErrors) {
    if kp.key.is_empty() {
        errs.required(p.key("key"));
    }
    if kp.path.is_empty() {
        errs.required(p.key("path"));
    }
    local_non_reserved_path(&kp.path, &p.key("path"), errs);
    mode(kp.mode, p.key("mode"), errs);
}

/// One downward API file: a path and exactly one of fieldRef and
/// resourceFieldRef.
fn downward_file(f: &DownwardAPIVolumeFile, p: &FieldPath, errs: &mut FieldErrors) {
    if f.path.is_empty() {
        errs.required(p.key("path"));
    }
    local_non_reserved_path(&f.path, &p.key("path"), errs);
    match (&f.field_ref, &f.resource_field_ref) {
        (Some(fr), other) => {
            object_field_selector(fr, &p.key("fieldRef"), errs);
            if other.is_some() {
                errs.invalid(
                    p.clone(),
                    quoted("resource"),
                    "fieldRef and resourceFieldRef can not be specified simultaneously",
                );
            }
        }
        (None, Some(rf)) => resource_field_selector(rf, &p.key("resourceFieldRef"), errs),
        (None, None) => errs.add(
            p.clone(),
            "Required value: one of fieldRef and resourceFieldRef is required",
        ),
    }
    mode(f.mode, p.key("mode"), errs);
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`), as Kubernetes
/// splits a subscripted field path.
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (head, sub) = inner.split_once("['")?;
    (!head.is_empty()).then_some((head, sub))
}

/// A pod field for a volume file: converted as the downward API converts
/// `v1` field labels, then checked against what volumes may expose.
fn object_field_selector(fs: &ObjectFieldSelector, p: &FieldPath, errs: &mut FieldErrors) {
    let version = fs.api_version.as_deref().unwrap_or_default();
    if version.is_empty() {
        errs.required(p.key("apiVersion"));
        return;
    }
    let label = fs.field_path.as_str();
    if label.is_empty() {
        errs.required(p.key("fieldPath"));
        return;
    }
    let conversion = if version != "v1" {
        Err(format!("unsupported pod version: {version}"))
    } else if let Some((head, _)) = split_subscript(label) {
        if ["metadata.annotations", "metadata.labels"].contains(&head) {
            Ok(label)
        } else {
            Err(format!("field label does not support subscript: {label}"))
        }
    } else if label == "spec.host" {
        Ok("spec.nodeName")
    } else if POD_FIELD_LABELS.contains(&label) {
        Ok(label)
    } else {
        Err(format!("field label not supported: {label}"))
    };
    let converted = match conversion {
        Ok(c) => c,
        Err(why) => {
            errs.invalid(
                p.key("fieldPath"),
                quoted(label),
                &format!("error converting fieldPath: {why}"),
            );
            return;
        }
    };
    match split_subscript(converted) {
        Some(("metadata.annotations", sub)) => qualified_name(&sub.to_lowercase(), p, errs),
        Some((_, sub)) => qualified_name(sub, p, errs),
        None if !VOLUME_FIELD_PATHS.contains(&converted) => {
            errs.unsupported(p.key("fieldPath"), converted, &VOLUME_FIELD_PATHS)
        }
        None => {}
    }
}

/// Kubernetes' `IsQualifiedName` messages for a label or annotation key,
/// each reported on `p`.
fn qualified_name(value: &str, p: &FieldPath, errs: &mut FieldErrors) {
    let parts: Vec<&str> = value.split('/').collect();
    let mut why = Vec::new();
    let name = match parts[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                why.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    why.push("prefix part must be no more than 253 characters".to_string());
                }
                if !subdomain_pattern(prefix) {
                    why.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
                }
            }
            name
        }
        _ => {
            why.push(format!("a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            ""
        }
    };
    if parts.len() <= 2 {
        if name.is_empty() {
            why.push("name part must be non-empty".to_string());
        } else if name.len() > 63 {
            why.push("name part must be no more than 63 characters".to_string());
        }
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            why.push(format!("name part {QUALIFIED_NAME_MSG}"));
        }
    }
    for w in why {
        errs.invalid(p.clone(), quoted(value), &w);
    }
}

/// The RFC 1123 subdomain pattern, without its length limits.
fn subdomain_pattern(s: &str) -> bool {
    s.split('.').all(label_pattern)
}

/// A container resource for a volume file: the container must be named.
fn resource_field_selector(rs: &ResourceFieldSelector, p: &FieldPath, errs: &mut FieldErrors) {
    let resource = rs.resource.as_str();
    if rs.container_name.as_deref().is_none_or(str::is_empty) {
        errs.required(p.key("containerName"));
    } else if resource.is_empty() {
        errs.required(p.key("resource"));
    } else if !RESOURCE_FIELDS.contains(&resource) && !is_hugepages(resource) {
        errs.unsupported(p.key("resource"), resource, &RESOURCE_FIELDS);
    }
    if let Some(d) = &rs.divisor {
        divisor(resource, d, &p.key("divisor"), errs);
    }
}

fn is_hugepages(resource: &str) -> bool {
    resource.starts_with("requests.hugepages-") || resource.starts_with("limits.hugepages-")
}

/// The divisor must print, in Kubernetes' canonical form, as one of the
/// units the resource allows (`1m` or `1` for CPU; `1`, `1k` … `1E`,
/// `1Ki` … `1Ei` for memory, ephemeral storage and hugepages).
fn divisor(
    resource: &str,
    d: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    p: &FieldPath,
    errs: &mut FieldErrors,
) {
    let q = match quantity::from_k8s(d) {
        Ok(q) => q,
        Err(why) => {
            errs.invalid(p.clone(), quoted(&d.0), &why.to_string());
            return;
        }
    };
    if q.is_zero() {
        return;
    }
    const UNIT: i128 = 1_000_000_000;
    let n = q.nanos();
    let decimal_unit = (1..=6).any(|e| n == UNIT * 1000_i128.pow(e));
    let binary_unit = (1..=6).any(|e| n == UNIT * 1024_i128.pow(e));
    let bytes_ok = n == UNIT
        || (decimal_unit && q.format() == Format::DecimalSI)
        || (binary_unit && q.format() == Format::BinarySI);
    let bytes_msg = |what: &str| {
        format!("only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the {what} resource")
    };
    let why = match resource {
        "limits.cpu" | "requests.cpu" => {
            let ok = n == UNIT || (n == UNIT / 1000 && q.format() == Format::DecimalSI);
            (!ok).then(|| {
                "only divisor's values 1m and 1 are supported with the cpu resource".into()
            })
        }
        "limits.memory" | "requests.memory" => (!bytes_ok).then(|| bytes_msg("memory")),
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => {
            (!bytes_ok).then(|| bytes_msg("local ephemeral storage"))
        }
        r if is_hugepages(r) => (!bytes_ok).then(|| bytes_msg("hugepages")),
        _ => None,
    };
    if let Some(why) = why {
        errs.invalid(p.clone(), quoted(resource), &why);
    }
}

/// A projected volume: each source gives one kind of file, and no two
/// files (across sources) share a path.
fn projected(pv: Option<&ProjectedVolumeSource>, p: &FieldPath, errs: &mut FieldErrors) {
    let Some(pv) = pv else { return };
    mode(pv.default_mode, p.key("defaultMode"), errs);
    let mut paths = HashSet::new();
    for (i, s) in pv.sources.iter().flatten().enumerate() {
        projection(s, &p.key("sources").index(i), &mut paths, errs);
    }
}

fn projection<'a>(
    s: &'a VolumeProjection,
    sp: &FieldPath,
    paths: &mut HashSet<&'a str>,
    errs: &mut FieldErrors,
) {
    let mut count = 0;
    let mut unique = |path: &'a str, at: FieldPath, errs: &mut FieldErrors| {
        if !path.is_empty() && !paths.insert(path) {
            errs.invalid(at, quoted(path), "conflicting duplicate paths");
        }
    };
    let key_items = [
        ("secret", s.secret.as_ref().map(|x| (&x.name, &x.items))),
        (
            "configMap",
            s.config_map.as_ref().map(|x| (&x.name, &x.items)),
        ),
    ];
    for (field, src) in key_items {
        let Some((name, items)) = src else { continue };
        count += 1;
        let fp = sp.key(field);
        if name.is_empty() {
            errs.required(fp.key("name"));
        }
        for (j, kp) in items.iter().flatten().enumerate() {
            let ip = fp.key("items").index(j);
            key_to_path(kp, &ip, errs);
            unique(&kp.path, ip.key("path"), errs);
        }
    }
    if let Some(d) = &s.downward_api {
        count += 1;
        for (j, f) in d.items.iter().flatten().enumerate() {
            let ip = sp.key("downwardAPI").key("items").index(j);
            downward_file(f, &ip, errs);
            unique(&f.path, ip.key("path"), errs);
        }
    }
    if let Some(t) = &s.service_account_token {
        count += 1;
        token(t, &sp.key("serviceAccountToken"), errs);
    }
    if let Some(b) = &s.cluster_trust_bundle {
        count += 1;
        let bp = sp.key("clusterTrustBundle");
        let name = b.name.as_deref();
        let signer = b.signer_name.as_deref();
        match (name, signer) {
            (None, None) => errs.add(
                bp.clone(),
                "Required value: either name or signerName must be specified",
            ),
            (Some(""), None) => errs.add(
                bp.key("name"),
                "Required value: must be a valid object name",
            ),
            (None, Some("")) => errs.add(
                bp.key("signerName"),
                "Required value: must be a valid signer name",
            ),
            _ => {}
        }
        if b.path.is_empty() {
            errs.required(bp.key("path"));
        }
        local_non_reserved_path(&b.path, &bp.key("path"), errs);
        unique(&b.path, bp.key("path"), errs);
    }
    if s.pod_certificate.is_some() {
        count += 1;
    }
    if count > 1 {
        errs.forbidden(
            sp.clone(),
            "may not specify more than 1 volume type per source",
        );
    }
}

/// A service account token: 10 minutes to 2^32 seconds (an hour when
/// unset), written to a relative path.
fn token(t: &ServiceAccountTokenProjection, p: &FieldPath, errs: &mut FieldErrors) {
    let seconds = t.expiration_seconds.unwrap_or(3600);
    if seconds < 600 {
        errs.invalid(
            p.key("expirationSeconds"),
            seconds,
            "may not specify a duration less than 10 minutes",
        );
    }
    if seconds > 1 << 32 {
        errs.invalid(
            p.key("expirationSeconds"),
            seconds,
            "may not specify a duration larger than 2^32 seconds",
        );
    }
    if t.path.is_empty() {
        errs.required(p.key("path"));
    } else {
        local_non_reserved_path(&t.path, &p.key("path"), errs);
    }
}

/// Relative, without a `..` element.
fn local_descending_path(path: &str, p: &FieldPath, errs: &mut FieldErrors) {
    if path.starts_with('/') {
        errs.invalid(p.clone(), quoted(path), "must be a relative path");
    }
    no_backsteps(path, p, errs);
}

/// A file path inside a volume: also not starting with `..`, which the
/// kubelet keeps for its own files (`..data`).
fn local_non_reserved_path(path: &str, p: &FieldPath, errs: &mut FieldErrors) {
    local_descending_path(path, p, errs);
    if path.starts_with("..") && !path.starts_with("../") {
        errs.invalid(p.clone(), quoted(path), "must not start with '..'");
    }
}

fn no_backsteps(path: &str, p: &FieldPath, errs: &mut FieldErrors) {
    if path.split('/').any(|part| part == "..") {
        errs.invalid(p.clone(), quoted(path), "must not contain '..'");
    }
}

/// Validates a container's `volumeMounts` (`p`) against the pod's valid
/// volumes.
pub(crate) fn volume_mounts(
    c: &Container,
    volumes: &ValidVolumes<'_>,
    p: &FieldPath,
    errs: &mut FieldErrors,
) {
    let privileged = c
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false);
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = p.index(i);
        if m.name.is_empty() {
            errs.required(mp.key("name"));
        }
        let volume = volumes.get(m.name.as_str());
        if volume.is_none() {
            errs.add(mp.key("name"), format!("Not found: {}", quoted(&m.name)));
        }
        if m.mount_path.is_empty() {
            errs.required(mp.key("mountPath"));
        }
        if !mount_paths.insert(m.mount_path.as_str()) {
            errs.invalid(mp.key("mountPath"), quoted(&m.mount_path), "must be unique");
        }
        let sub_path = m.sub_path.as_deref().unwrap_or_default();
        let sub_path_expr = m.sub_path_expr.as_deref().unwrap_or_default();
        if volume.is_some_and(|v| v.image.is_some()) {
            for (field, value) in [("subPath", sub_path), ("subPathExpr", sub_path_expr)] {
                if !value.is_empty() {
                    errs.invalid(
                        mp.key(field),
                        quoted(value),
                        "not allowed in image volume sources",
                    );
                }
            }
        }
        if !sub_path.is_empty() {
            local_descending_path(sub_path, &mp.key("subPath"), errs);
        }
        if !sub_path_expr.is_empty() {
            if !sub_path.is_empty() {
                errs.invalid(
                    mp.key("subPathExpr"),
                    quoted(sub_path_expr),
                    "subPathExpr and subPath are mutually exclusive",
                );
            }
            local_descending_path(sub_path_expr, &mp.key("subPathExpr"), errs);
        }
        let propagation = m.mount_propagation.as_deref();
        if let Some(prop) = propagation {
            if !MOUNT_PROPAGATIONS.contains(&prop) {
                errs.unsupported(mp.key("mountPropagation"), prop, &MOUNT_PROPAGATIONS);
            }
            if prop == "Bidirectional" && !privileged {
                errs.forbidden(
                    mp.key("mountPropagation"),
                    "Bidirectional mount propagation is available only to privileged containers",
                );
            }
        }
        match m.recursive_read_only.as_deref() {
            None | Some("Disabled") => {}
            Some("Enabled" | "IfPossible") => {
                let rp = mp.key("recursiveReadOnly");
                if m.read_only != Some(true) {
                    errs.forbidden(rp.clone(), "may only be specified when readOnly is true");
                }
                if propagation.is_some_and(|prop| prop != "None") {
                    errs.forbidden(
                        rp,
                        "may only be specified when mountPropagation is None or not specified",
                    );
                }
            }
            Some(other) => {
                errs.unsupported(mp.key("recursiveReadOnly"), other, &RECURSIVE_READ_ONLY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::Validate;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("decodes")
    }

    fn validate(pod: &Pod) -> Vec<String> {
        let mut errs = FieldErrors::default();
        pod.validate(&mut errs);
        errs.0
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect()
    }

    /// The errors of a pod with `volumes` and one container mounting
    /// `mounts`, validated as given (not defaulted).
    fn errors(volumes: serde_json::Value, mounts: serde_json::Value) -> Vec<String> {
        validate(&pod(json!({"volumes": volumes, "containers": [
            {"name": "c", "image": "i", "volumeMounts": mounts}]})))
    }

    /// The same, after Kubernetes' defaults are filled in.
    fn defaulted_errors(volumes: serde_json::Value, mounts: serde_json::Value) -> Vec<String> {
        let mut p = pod(json!({"volumes": volumes, "containers": [
            {"name": "c", "image": "i", "volumeMounts": mounts}]}));
        crate::defaults::pod_spec(p.spec.as_mut().expect("spec"));
        validate(&p)
    }

    fn several_kinds() -> serde_json::Value {
        json!([
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            {"name": "plain"},
            {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}},
            {"name": "config", "configMap": {"name": "web", "defaultMode": 0o644,
                "items": [{"key": "app.conf", "path": "conf/app.conf", "mode": 0o600}]}},
            {"name": "creds", "secret": {"secretName": "db", "optional": true,
                "items": [{"key": "password", "path": "password"}]}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "app", "fieldRef": {"apiVersion": "v1",
                    "fieldPath": "metadata.annotations['example.com/App']"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c",
                    "resource": "limits.memory", "divisor": "1Mi"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c",
                    "resource": "requests.cpu", "divisor": "1m"}}]}},
            {"name": "all", "projected": {"sources": [
                {"secret": {"name": "db", "items": [{"key": "user", "path": "db/user"}]}},
                {"configMap": {"name": "web"}},
                {"downwardAPI": {"items": [{"path": "name",
                    "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"serviceAccountToken": {"path": "token", "audience": "api"}}]}}
        ])
    }

    #[test]
    fn valid_volumes_of_several_kinds_have_no_errors() {
        let mounts = json!([
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "plain", "mountPath": "/plain", "subPathExpr": "$(POD_NAME)"},
            {"name": "host", "mountPath": "/host", "readOnly": true,
             "recursiveReadOnly": "IfPossible", "mountPropagation": "None"},
            {"name": "config", "mountPath": "/etc/app", "subPath": "conf"},
            {"name": "creds", "mountPath": "/etc/creds", "mountPropagation": "HostToContainer"},
            {"name": "info", "mountPath": "/etc/info"},
            {"name": "all", "mountPath": "/etc/all"}
        ]);
        assert_eq!(
            defaulted_errors(several_kinds(), mounts.clone()),
            Vec::<String>::new()
        );
        // Init containers mount the same volumes.
        let mut p = pod(json!({"volumes": several_kinds(),
            "initContainers": [{"name": "init", "image": "i", "volumeMounts": mounts}],
            "containers": [{"name": "c", "image": "i"}]}));
        crate::defaults::pod_spec(p.spec.as_mut().expect("spec"));
        assert_eq!(validate(&p), Vec::<String>::new());
    }

    #[test]
    fn names_are_required_labels_and_unique() {
        let long = "a".repeat(64);
        let got = errors(
            json!([{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}},
                {"name": "", "emptyDir": {}}, {"name": "Data_1", "emptyDir": {}},
                {"name": long, "emptyDir": {}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![
                "spec.volumes[1].name: Duplicate value: \"data\"".to_string(),
                "spec.volumes[2].name: Required value".to_string(),
                format!("spec.volumes[3].name: Invalid value: \"Data_1\": {DNS1123_LABEL_MSG}"),
                format!("spec.volumes[4].name: Invalid value: \"{long}\": must be no more than 63 characters"),
            ]
        );
    }

    #[test]
    fn exactly_one_source() {
        let got = errors(
            json!([{"name": "none"},
                {"name": "two", "emptyDir": {}, "configMap": {"name": "c"}, "secret": {}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![
                "spec.volumes[0]: Required value: must specify a volume type",
                "spec.volumes[1].secret: Forbidden: may not specify more than 1 volume type",
                "spec.volumes[1].configMap: Forbidden: may not specify more than 1 volume type",
            ]
        );
        // The first source given is validated, in Kubernetes' order.
        let got = errors(
            json!([{"name": "two", "hostPath": {"path": ""}, "configMap": {"name": ""}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![
                "spec.volumes[0].hostPath.path: Required value",
                "spec.volumes[0].configMap: Forbidden: may not specify more than 1 volume type",
            ]
        );
        // As in Kubernetes, a volume with no source is defaulted to an
        // empty directory.
        assert_eq!(
            defaulted_errors(json!([{"name": "none"}]), json!([])),
            Vec::<String>::new()
        );
    }

    #[test]
    fn empty_dir_size_limit() {
        let got = errors(
            json!([{"name": "a", "emptyDir": {"sizeLimit": "-1Gi"}},
                {"name": "b", "emptyDir": {"sizeLimit": "lots"}},
                {"name": "c", "emptyDir": {"sizeLimit": "0", "medium": "Memory"}},
                {"name": "d", "emptyDir": {"medium": ""}},
                {"name": "e", "emptyDir": {"medium": "HugePages"}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![
                "spec.volumes[0].emptyDir.sizeLimit: Forbidden: SizeLimit field must be a valid resource quantity",
                "spec.volumes[1].emptyDir.sizeLimit: Invalid value: \"lots\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                "spec.volumes[4].emptyDir.medium: Unsupported value: \"HugePages\": supported values: \"\", \"Memory\"",
            ]
        );
    }

    #[test]
    fn host_path_needs_a_path_and_a_known_type() {
        let got = errors(
            json!([{"name": "a", "hostPath": {"path": ""}},
                {"name": "b", "hostPath": {"path": "/var/../etc", "type": "Dir"}},
                {"name": "c", "hostPath": {"path": "/run/x.sock", "type": "Socket"}},
                {"name": "d", "hostPath": {"path": "relative/ok", "type": ""}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![
                "spec.volumes[0].hostPath.path: Required value",
                "spec.volumes[1].hostPath.path: Invalid value: \"/var/../etc\": must not contain '..'",
                "spec.volumes[1].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
            ]
        );
    }

    #[test]
    fn config_map_and_secret_items() {
        let got = errors(
            json!([{"name": "a", "configMap": {"name": "", "defaultMode": 0o1000, "items": [
                    {"key": "", "path": ""},
                    {"key": "k", "path": "/etc/k", "mode": -1},
                    {"key": "k", "path": "a/../../b"},
                    {"key": "k", "path": "..data"},
                    {"key": "k", "path": "..", "mode": 0o777}]}},
                {"name": "b", "secret": {"defaultMode": 0o400,
                    "items": [{"key": "k", "path": "x", "mode": 512}]}},
                {"name": "c", "secret": {"secretName": ""}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![
                "spec.volumes[0].configMap.name: Required value",
                "spec.volumes[0].configMap.defaultMode: Invalid value: 512: must be a number between 0 and 0777 (octal), both inclusive",
                "spec.volumes[0].configMap.items[0].key: Required value",
                "spec.volumes[0].configMap.items[0].path: Required value",
                "spec.volumes[0].configMap.items[1].path: Invalid value: \"/etc/k\": must be a relative path",
                "spec.volumes[0].configMap.items[1].mode: Invalid value: -1: must be a number between 0 and 0777 (octal), both inclusive",
                "spec.volumes[0].configMap.items[2].path: Invalid value: \"a/../../b\": must not contain '..'",
                "spec.volumes[0].configMap.items[3].path: Invalid value: \"..data\": must not start with '..'",
                "spec.volumes[0].configMap.items[4].path: Invalid value: \"..\": must not contain '..'",
                // Kubernetes reports a bare `..` for both reasons.
                "spec.volumes[0].configMap.items[4].path: Invalid value: \"..\": must not start with '..'",
                "spec.volumes[1].secret.secretName: Required value",
                "spec.volumes[1].secret.items[0].mode: Invalid value: 512: must be a number between 0 and 0777 (octal), both inclusive",
                "spec.volumes[2].secret.secretName: Required value",
            ]
        );
    }

    #[test]
    fn downward_api_files() {
        let got = errors(
            json!([{"name": "a", "downwardAPI": {"defaultMode": 1000, "items": [
                {"path": "both", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"},
                 "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
                {"path": "neither"},
                {"path": "node", "fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}},
                {"path": "bogus", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.bogus"}},
                {"path": "v2", "fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}},
                {"path": "sub", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name['x']"}},
                {"path": "label", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels['-x']"}},
                {"path": "noversion", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "/abs", "resourceFieldRef": {"resource": "limits.cpu"}},
                {"path": "gpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.gpu"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu",
                    "divisor": "1Ki"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "requests.memory",
                    "divisor": "1024"}},
                {"path": "huge", "resourceFieldRef": {"containerName": "c",
                    "resource": "limits.hugepages-2Mi", "divisor": "1Gi"}}]}}]),
            json!([]),
        );
        let p = "spec.volumes[0].downwardAPI";
        let fields = VOLUME_FIELD_PATHS.map(|f| format!("\"{f}\"")).join(", ");
        let expected = vec![
            format!("{p}.defaultMode: Invalid value: 1000: must be a number between 0 and 0777 (octal), both inclusive"),
            format!("{p}.items[0]: Invalid value: \"resource\": fieldRef and resourceFieldRef can not be specified simultaneously"),
            format!("{p}.items[1]: Required value: one of fieldRef and resourceFieldRef is required"),
            format!("{p}.items[2].fieldRef.fieldPath: Unsupported value: \"spec.nodeName\": supported values: {fields}"),
            format!("{p}.items[3].fieldRef.fieldPath: Invalid value: \"metadata.bogus\": error converting fieldPath: field label not supported: metadata.bogus"),
            format!("{p}.items[4].fieldRef.fieldPath: Invalid value: \"metadata.name\": error converting fieldPath: unsupported pod version: v2"),
            format!("{p}.items[5].fieldRef.fieldPath: Invalid value: \"metadata.name['x']\": error converting fieldPath: field label does not support subscript: metadata.name['x']"),
            format!("{p}.items[6].fieldRef: Invalid value: \"-x\": name part {QUALIFIED_NAME_MSG}"),
            format!("{p}.items[7].fieldRef.apiVersion: Required value"),
            format!("{p}.items[8].path: Invalid value: \"/abs\": must be a relative path"),
            format!("{p}.items[8].resourceFieldRef.containerName: Required value"),
            format!("{p}.items[9].resourceFieldRef.resource: Unsupported value: \"limits.gpu\": supported values: \"limits.cpu\", \"limits.ephemeral-storage\", \"limits.memory\", \"requests.cpu\", \"requests.ephemeral-storage\", \"requests.memory\""),
            format!("{p}.items[10].resourceFieldRef.divisor: Invalid value: \"limits.cpu\": only divisor's values 1m and 1 are supported with the cpu resource"),
            format!("{p}.items[11].resourceFieldRef.divisor: Invalid value: \"requests.memory\": only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with the memory resource"),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn projected_sources() {
        let got = errors(
            json!([{"name": "a", "projected": {"defaultMode": -1, "sources": [
                {"secret": {"name": "s", "items": [{"key": "k", "path": "same"}]},
                 "configMap": {"name": "", "items": [{"key": "k", "path": "other"}]}},
                {"configMap": {"name": "c", "items": [{"key": "k", "path": "same"}]}},
                {"downwardAPI": {"items": [{"path": "other",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}]}},
                {"serviceAccountToken": {"path": "", "expirationSeconds": 60}},
                {"serviceAccountToken": {"path": "../token", "expirationSeconds": 8_589_934_592_i64}},
                {}]}}]),
            json!([]),
        );
        let p = "spec.volumes[0].projected";
        assert_eq!(
            got,
            vec![
                format!("{p}.defaultMode: Invalid value: -1: must be a number between 0 and 0777 (octal), both inclusive"),
                format!("{p}.sources[0].configMap.name: Required value"),
                format!("{p}.sources[0]: Forbidden: may not specify more than 1 volume type per source"),
                format!("{p}.sources[1].configMap.items[0].path: Invalid value: \"same\": conflicting duplicate paths"),
                format!("{p}.sources[2].downwardAPI.items[0].path: Invalid value: \"other\": conflicting duplicate paths"),
                format!("{p}.sources[3].serviceAccountToken.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
                format!("{p}.sources[3].serviceAccountToken.path: Required value"),
                format!("{p}.sources[4].serviceAccountToken.expirationSeconds: Invalid value: 8589934592: may not specify a duration larger than 2^32 seconds"),
                format!("{p}.sources[4].serviceAccountToken.path: Invalid value: \"../token\": must not contain '..'"),
            ]
        );
    }

    #[test]
    fn mounts_name_declared_volumes_at_unique_paths() {
        let got = errors(
            json!([{"name": "data", "emptyDir": {}}, {"name": "bad", "hostPath": {"path": ""}}]),
            json!([
                {"name": "", "mountPath": ""},
                {"name": "x", "mountPath": "/x"},
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/data"},
                {"name": "bad", "mountPath": "/bad"}
            ]),
        );
        let p = "spec.containers[0].volumeMounts";
        assert_eq!(
            got,
            vec![
                "spec.volumes[1].hostPath.path: Required value".to_string(),
                format!("{p}[0].name: Required value"),
                format!("{p}[0].name: Not found: \"\""),
                format!("{p}[0].mountPath: Required value"),
                format!("{p}[1].name: Not found: \"x\""),
                format!("{p}[3].mountPath: Invalid value: \"/data\": must be unique"),
                // As in Kubernetes, a volume with errors cannot be mounted.
                format!("{p}[4].name: Not found: \"bad\""),
            ]
        );
    }

    #[test]
    fn sub_paths() {
        let got = errors(
            json!([{"name": "data", "emptyDir": {}}]),
            json!([
                {"name": "data", "mountPath": "/a", "subPath": "/abs"},
                {"name": "data", "mountPath": "/b", "subPath": "x/../.."},
                {"name": "data", "mountPath": "/c", "subPath": "x", "subPathExpr": "$(HOME)"},
                {"name": "data", "mountPath": "/d", "subPathExpr": "/$(HOME)/.."},
                {"name": "data", "mountPath": "/e", "subPath": "..data"}
            ]),
        );
        let p = "spec.containers[0].volumeMounts";
        assert_eq!(
            got,
            vec![
                format!("{p}[0].subPath: Invalid value: \"/abs\": must be a relative path"),
                format!("{p}[1].subPath: Invalid value: \"x/../..\": must not contain '..'"),
                format!("{p}[2].subPathExpr: Invalid value: \"$(HOME)\": subPathExpr and subPath are mutually exclusive"),
                format!("{p}[3].subPathExpr: Invalid value: \"/$(HOME)/..\": must be a relative path"),
                format!("{p}[3].subPathExpr: Invalid value: \"/$(HOME)/..\": must not contain '..'"),
            ]
        );
    }

    #[test]
    fn propagation_and_recursive_read_only() {
        let got = errors(
            json!([{"name": "data", "emptyDir": {}}]),
            json!([
                {"name": "data", "mountPath": "/a", "mountPropagation": "Shared"},
                {"name": "data", "mountPath": "/b", "mountPropagation": "Bidirectional"},
                {"name": "data", "mountPath": "/c", "recursiveReadOnly": "Enabled",
                 "mountPropagation": "HostToContainer"},
                {"name": "data", "mountPath": "/d", "recursiveReadOnly": "Always"}
            ]),
        );
        let p = "spec.containers[0].volumeMounts";
        assert_eq!(
            got,
            vec![
                format!("{p}[0].mountPropagation: Unsupported value: \"Shared\": supported values: \"Bidirectional\", \"HostToContainer\", \"None\""),
                format!("{p}[1].mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers"),
                format!("{p}[2].recursiveReadOnly: Forbidden: may only be specified when readOnly is true"),
                format!("{p}[2].recursiveReadOnly: Forbidden: may only be specified when mountPropagation is None or not specified"),
                format!("{p}[3].recursiveReadOnly: Unsupported value: \"Always\": supported values: \"Disabled\", \"Enabled\", \"IfPossible\""),
            ]
        );
        let privileged = validate(&pod(json!({"volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true},
                "volumeMounts": [{"name": "data", "mountPath": "/b", "mountPropagation": "Bidirectional"}]}]})));
        assert_eq!(privileged, Vec::<String>::new());
    }

    #[test]
    fn init_container_mounts_are_checked() {
        let got = validate(&pod(json!({"volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "i",
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
            "containers": [{"name": "c", "image": "i",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]})));
        assert_eq!(
            got,
            vec!["spec.initContainers[0].volumeMounts[0].name: Not found: \"cache\""]
        );
    }

    #[test]
    fn qualified_names_in_subscripts() {
        let p = FieldPath::parse("f");
        let mut errs = FieldErrors::default();
        for v in ["app", "example.com/App", "a/b/c", "/x", "Example.com/x", ""] {
            qualified_name(v, &p, &mut errs);
        }
        let got: Vec<String> = errs.0.into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            got,
            vec![
                format!("Invalid value: \"a/b/c\": a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"),
                "Invalid value: \"/x\": prefix part must be non-empty".to_string(),
                format!("Invalid value: \"Example.com/x\": prefix part {DNS1123_SUBDOMAIN_MSG}"),
                "Invalid value: \"\": name part must be non-empty".to_string(),
                format!("Invalid value: \"\": name part {QUALIFIED_NAME_MSG}"),
            ]
        );
        // Annotation keys are checked in lower case, label keys as written.
        let got = errors(
            json!([{"name": "a", "downwardAPI": {"items": [
                {"path": "x", "fieldRef": {"apiVersion": "v1",
                    "fieldPath": "metadata.annotations['Example.com/x']"}},
                {"path": "y", "fieldRef": {"apiVersion": "v1",
                    "fieldPath": "metadata.labels['Example.com/x']"}}]}}]),
            json!([]),
        );
        assert_eq!(
            got,
            vec![format!("spec.volumes[0].downwardAPI.items[1].fieldRef: Invalid value: \"Example.com/x\": prefix part {DNS1123_SUBDOMAIN_MSG}")]
        );
    }

    #[test]
    fn divisors_print_as_allowed_units() {
        let check = |resource: &str, d: &str| {
            let mut errs = FieldErrors::default();
            let q = k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into());
            divisor(resource, &q, &FieldPath::parse("d"), &mut errs);
            errs.0.is_empty()
        };
        for (resource, d) in [
            ("limits.cpu", "1"),
            ("limits.cpu", "1m"),
            ("limits.cpu", "1000m"),
            ("limits.cpu", "0"),
            ("requests.memory", "1"),
            ("requests.memory", "1k"),
            ("requests.memory", "1E"),
            ("requests.memory", "1Ki"),
            ("requests.memory", "1Ei"),
            ("limits.ephemeral-storage", "1Gi"),
            ("limits.hugepages-1Gi", "1Mi"),
        ] {
            assert!(check(resource, d), "{resource} / {d}");
        }
        for (resource, d) in [
            ("limits.cpu", "2m"),
            ("limits.cpu", "1e-3"),
            ("requests.memory", "1024"),
            ("requests.memory", "2Mi"),
            ("requests.memory", "1e3"),
            ("requests.memory", "1m"),
        ] {
            assert!(!check(resource, d), "{resource} / {d}");
        }
    }

    #[test]
    fn a_defaulted_deployment_reports_template_paths() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "volumes": [{"name": "data"}, {"name": "data", "emptyDir": {}},
                        {"name": "conf", "configMap": {"name": "web",
                            "items": [{"key": "k", "path": "/k"}]}}],
                    "containers": [{"name": "web", "image": "web:1", "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "logs", "mountPath": "/data"}]}]}}}
        }))
        .expect("decodes");
        crate::defaults::deployment(&mut d);
        let mut errs = FieldErrors::default();
        d.validate(&mut errs);
        let got: Vec<String> = errs.0.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        let p = "spec.template.spec";
        assert_eq!(
            got,
            vec![
                format!("{p}.volumes[1].name: Duplicate value: \"data\""),
                format!("{p}.volumes[2].configMap.items[0].path: Invalid value: \"/k\": must be a relative path"),
                format!("{p}.containers[0].volumeMounts[1].name: Not found: \"logs\""),
                format!("{p}.containers[0].volumeMounts[1].mountPath: Invalid value: \"/data\": must be unique"),
            ]
        );
    }
}
