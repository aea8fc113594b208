//! Kubernetes' validation of the pod's and the containers'
//! `securityContext`, with its messages: user and group ids in range,
//! seccomp and AppArmor profiles well formed, and no container that asks
//! both for privilege and for no privilege escalation. Capability names
//! are not checked, as Kubernetes does not check them: they reach the
//! runtime as written.

use k8s_openapi::api::core::v1::{
    AppArmorProfile, PodSecurityContext, SeccompProfile, SecurityContext,
};

use super::FieldErrors;
use crate::field_path::FieldPath;

/// Kubernetes' message for a user or group id out of range.
const ID_RANGE_MSG: &str = "must be between 0 and 2147483647, inclusive";
const PROFILE_TYPES: &[&str] = &["Localhost", "RuntimeDefault", "Unconfined"];
const FS_GROUP_CHANGE_POLICIES: &[&str] = &["Always", "OnRootMismatch"];

fn id(value: Option<i64>, p: FieldPath, errs: &mut FieldErrors) {
    if let Some(v) = value.filter(|v| !(0..=i64::from(i32::MAX)).contains(v)) {
        errs.invalid(p, v, ID_RANGE_MSG);
    }
}

/// A value shown in a message the way a reader can match it to the
/// manifest (Kubernetes prints its Go struct here).
fn shown<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `spec.securityContext`.
pub(crate) fn pod_security_context(sc: &PodSecurityContext, p: &FieldPath, errs: &mut FieldErrors) {
    id(sc.fs_group, p.key("fsGroup"), errs);
    if let Some(policy) = sc.fs_group_change_policy.as_deref() {
        if !FS_GROUP_CHANGE_POLICIES.contains(&policy) {
            errs.unsupported(
                p.key("fsGroupChangePolicy"),
                policy,
                FS_GROUP_CHANGE_POLICIES,
            );
        }
    }
    id(sc.run_as_user, p.key("runAsUser"), errs);
    id(sc.run_as_group, p.key("runAsGroup"), errs);
    for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
        id(Some(*g), p.key("supplementalGroups").index(i), errs);
    }
    if let Some(sp) = &sc.seccomp_profile {
        seccomp_profile(sp, &p.key("seccompProfile"), errs);
    }
    if let Some(ap) = &sc.app_armor_profile {
        app_armor_profile(ap, &p.key("appArmorProfile"), errs);
    }
}

/// A container's `securityContext`; `p` is its path
/// (`spec.containers[0].securityContext`).
pub(crate) fn security_context(sc: &SecurityContext, p: &FieldPath, errs: &mut FieldErrors) {
    id(sc.run_as_user, p.key("runAsUser"), errs);
    id(sc.run_as_group, p.key("runAsGroup"), errs);
    if let Some(pm) = sc.proc_mount.as_deref() {
        if !["Default", "Unmasked"].contains(&pm) {
            errs.unsupported(p.key("procMount"), pm, &["Default", "Unmasked"]);
        }
    }
    if let Some(sp) = &sc.seccomp_profile {
        seccomp_profile(sp, &p.key("seccompProfile"), errs);
    }
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            errs.invalid(
                p.clone(),
                shown(sc),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            );
        }
        let adds = sc.capabilities.iter().flat_map(|c| c.add.iter().flatten());
        // Kubernetes compares the name as written, prefix and all.
        for _ in adds.filter(|c| *c == "CAP_SYS_ADMIN") {
            errs.invalid(
                p.clone(),
                shown(sc),
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            );
        }
    }
    if let Some(ap) = &sc.app_armor_profile {
        app_armor_profile(ap, &p.key("appArmorProfile"), errs);
    }
}

fn seccomp_profile(sp: &SeccompProfile, p: &FieldPath, errs: &mut FieldErrors) {
    match sp.type_.as_str() {
        "" => errs.add(
            p.key("type"),
            "Required value: type is required when seccompProfile is set",
        ),
        "Localhost" | "RuntimeDefault" | "Unconfined" => {}
        other => errs.unsupported(p.key("type"), other, PROFILE_TYPES),
    }
    let lp = p.key("localhostProfile");
    match (sp.type_.as_str(), sp.localhost_profile.as_deref()) {
        ("Localhost", None) => errs.add(
            lp,
            "Required value: must be set when seccomp type is Localhost",
        ),
        ("Localhost", Some(path)) => {
            if path.starts_with('/') {
                errs.invalid(lp.clone(), format!("{path:?}"), "must be a relative path");
            }
            if path.split('/').any(|part| part == "..") {
                errs.invalid(lp, format!("{path:?}"), "must not contain '..'");
            }
        }
        (_, Some(_)) => errs.invalid(
            lp,
            shown(sp),
            "can only be set when seccomp type is Localhost",
        ),
        (_, None) => {}
    }
}

fn app_armor_profile(ap: &AppArmorProfile, p: &FieldPath, errs: &mut FieldErrors) {
    let lp = p.key("localhostProfile");
    match (ap.type_.as_str(), ap.localhost_profile.as_deref()) {
        ("Localhost", None | Some("")) => errs.add(
            lp,
            "Required value: must be set when AppArmor type is Localhost",
        ),
        ("Localhost", Some(name)) => {
            if name.trim() != name {
                errs.invalid(
                    lp,
                    format!("{name:?}"),
                    "must not be padded with whitespace",
                );
            }
        }
        ("RuntimeDefault" | "Unconfined", Some(name)) => errs.invalid(
            lp,
            format!("{name:?}"),
            "can only be set when AppArmor type is Localhost",
        ),
        ("RuntimeDefault" | "Unconfined", None) => {}
        ("", _) => errs.add(
            p.key("type"),
            "Required value: type is required when appArmorProfile is set",
        ),
        (other, _) => errs.unsupported(p.key("type"), other, PROFILE_TYPES),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Validate;
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn errors(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> Vec<String> {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": pod_sc, "containers": [
                {"name": "c", "image": "i", "securityContext": container_sc}]}
        }))
        .expect("decodes");
        let mut errs = FieldErrors::default();
        pod.validate(&mut errs);
        errs.0
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect()
    }

    #[test]
    fn a_hardened_pod_is_valid() {
        let got = errors(
            json!({"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                   "fsGroup": 2000, "supplementalGroups": [4000],
                   "seccompProfile": {"type": "RuntimeDefault"}}),
            json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                   "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                   "runAsUser": 0, "procMount": "Default",
                   "appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-web"}}),
        );
        assert!(got.is_empty(), "{got:?}");
        // Privileged alone, or with escalation allowed, is fine.
        let got = errors(
            json!(null),
            json!({"privileged": true, "allowPrivilegeEscalation": true}),
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn ids_out_of_range_read_like_kubernetes() {
        let got = errors(
            json!({"runAsUser": -1, "runAsGroup": 2147483648i64, "fsGroup": -5,
                   "supplementalGroups": [1, -2]}),
            json!({"runAsUser": 2147483648i64, "runAsGroup": -1}),
        );
        assert_eq!(
            got,
            vec![
                "spec.containers[0].securityContext.runAsUser: Invalid value: 2147483648: must be between 0 and 2147483647, inclusive",
                "spec.containers[0].securityContext.runAsGroup: Invalid value: -1: must be between 0 and 2147483647, inclusive",
                "spec.securityContext.fsGroup: Invalid value: -5: must be between 0 and 2147483647, inclusive",
                "spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive",
                "spec.securityContext.runAsGroup: Invalid value: 2147483648: must be between 0 and 2147483647, inclusive",
                "spec.securityContext.supplementalGroups[1]: Invalid value: -2: must be between 0 and 2147483647, inclusive",
            ]
        );
    }

    #[test]
    fn fs_group_change_policy_is_one_of_two() {
        let got = errors(json!({"fsGroupChangePolicy": "Sometimes"}), json!(null));
        assert_eq!(
            got,
            vec![
                "spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnRootMismatch\""
            ]
        );
        let got = errors(
            json!({"fsGroup": 1, "fsGroupChangePolicy": "OnRootMismatch"}),
            json!(null),
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn privilege_and_no_escalation_exclude_each_other() {
        let got = errors(
            json!(null),
            json!({"privileged": true, "allowPrivilegeEscalation": false,
                   "capabilities": {"add": ["CAP_SYS_ADMIN", "SYS_ADMIN"]}}),
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("spec.containers[0].securityContext: Invalid value: {"));
        assert!(got[0].ends_with(
            ": cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
        ));
        assert!(got[0].contains("\"privileged\":true"), "{}", got[0]);
        assert!(got[1].ends_with(
            ": cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN"
        ));
    }

    #[test]
    fn profiles_are_well_formed() {
        let got = errors(
            json!({"seccompProfile": {"type": "Localhost"},
                   "appArmorProfile": {"type": "Strict"}}),
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "../x.json"},
                   "appArmorProfile": {"type": "Unconfined", "localhostProfile": "p"},
                   "procMount": "Private"}),
        );
        assert_eq!(
            got,
            vec![
                "spec.containers[0].securityContext.procMount: Unsupported value: \"Private\": supported values: \"Default\", \"Unmasked\"",
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value: \"../x.json\": must not contain '..'",
                "spec.containers[0].securityContext.appArmorProfile.localhostProfile: Invalid value: \"p\": can only be set when AppArmor type is Localhost",
                "spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost",
                "spec.securityContext.appArmorProfile.type: Unsupported value: \"Strict\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"",
            ]
        );
        let got = errors(
            json!({"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "x"}}),
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "/abs.json"}}),
        );
        assert_eq!(
            got,
            vec![
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value: \"/abs.json\": must be a relative path",
                "spec.securityContext.seccompProfile.localhostProfile: Invalid value: {\"localhostProfile\":\"x\",\"type\":\"RuntimeDefault\"}: can only be set when seccomp type is Localhost",
            ]
        );
    }
}
