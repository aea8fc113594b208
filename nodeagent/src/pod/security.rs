//! The pod's and its containers' `securityContext`, handed to the runtime
//! as the kubelet hands it over CRI.
//!
//! - [`effective`]: the container's context with the pod's `runAsUser`,
//!   `runAsGroup`, `runAsNonRoot`, `seLinuxOptions`, `seccompProfile` and
//!   `appArmorProfile` where the container sets none of its own;
//! - [`container_security_context`]: that context as CRI's: user and group,
//!   the pod's `fsGroup` and `supplementalGroups` as supplemental groups,
//!   read-only root, `allowPrivilegeEscalation: false` as `no_new_privs`,
//!   privileged, capabilities as written (`NET_ADMIN`, `ALL`), seccomp
//!   (`Unconfined` unless asked, as the kubelet without `seccompDefault`),
//!   AppArmor, and the kubelet's masked and read-only `/proc` and `/sys`
//!   paths, sent explicitly so they do not depend on the runtime's own
//!   defaults (none for a privileged container);
//! - [`sandbox_security_context`]: the pod-level part on the sandbox,
//!   privileged when a container is (containerd refuses a privileged
//!   container in an unprivileged sandbox);
//! - [`verify_run_as_non_root`] and [`run_as_image_user`]: `runAsNonRoot`
//!   checked against the image's own user, and that user made explicit
//!   when the pod names none, as the kubelet does.
//!
//! `fsGroup` ownership of the volumes themselves is made where they are
//! (`super::volumes`).
//!
//! Not yet: `sysctls`, `procMount:
//! Unmasked`, `supplementalGroupsPolicy: Strict`, Localhost seccomp
//! profiles (refused, so a container never runs less confined than asked),
//! `windowsOptions`.

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, Pod, PodSecurityContext, PodSpec, SELinuxOptions, SeccompProfile,
    SecurityContext,
};

use super::spec::ConfigError;
use crate::cri::proto::security_profile::ProfileType;
use crate::cri::proto::{
    Capability, ContainerConfig, Int64Value, LinuxContainerSecurityContext,
    LinuxSandboxSecurityContext, SeLinuxOption, SecurityProfile,
};
use crate::cri::ImageUser;

/// Paths the kubelet masks in every container that is not privileged.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the kubelet makes read-only in every container that is not
/// privileged.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The container's security context as it applies: the container's own
/// fields, and the pod's for those the container leaves unset.
pub fn effective(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
) -> SecurityContext {
    let mut sc = container.cloned().unwrap_or_default();
    if let Some(p) = pod {
        sc.run_as_user = sc.run_as_user.or(p.run_as_user);
        sc.run_as_group = sc.run_as_group.or(p.run_as_group);
        sc.run_as_non_root = sc.run_as_non_root.or(p.run_as_non_root);
        if sc.se_linux_options.is_none() {
            sc.se_linux_options = p.se_linux_options.clone();
        }
        if sc.seccomp_profile.is_none() {
            sc.seccomp_profile = p.seccomp_profile.clone();
        }
        if sc.app_armor_profile.is_none() {
            sc.app_armor_profile = p.app_armor_profile.clone();
        }
    }
    sc
}

fn pod_context(pod: &Pod) -> Option<&PodSecurityContext> {
    pod.spec.as_ref().and_then(|s| s.security_context.as_ref())
}

/// The pod's `fsGroup`, then its `supplementalGroups`: the groups every
/// container's processes get besides their own.
fn supplemental_groups(pod: Option<&PodSecurityContext>) -> Vec<i64> {
    let Some(p) = pod else {
        return Vec::new();
    };
    p.fs_group
        .into_iter()
        .chain(p.supplemental_groups.iter().flatten().copied())
        .collect()
}

fn selinux(o: &SELinuxOptions) -> SeLinuxOption {
    SeLinuxOption {
        user: o.user.clone().unwrap_or_default(),
        role: o.role.clone().unwrap_or_default(),
        r#type: o.type_.clone().unwrap_or_default(),
        level: o.level.clone().unwrap_or_default(),
    }
}

fn profile(profile_type: ProfileType, localhost_ref: String) -> SecurityProfile {
    SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    }
}

/// The seccomp profile: as asked, else `Unconfined`, as the kubelet sends
/// it when its `seccompDefault` is off (the default).
fn seccomp(p: Option<&SeccompProfile>) -> Result<SecurityProfile, ConfigError> {
    match p.map(|p| p.type_.as_str()) {
        None | Some("Unconfined") => Ok(profile(ProfileType::Unconfined, String::new())),
        Some("RuntimeDefault") => Ok(profile(ProfileType::RuntimeDefault, String::new())),
        Some("Localhost") => Err(ConfigError(
            "seccomp profile type Localhost is not supported by commitd yet".to_string(),
        )),
        Some(other) => Err(ConfigError(format!(
            "unknown seccomp profile type {other:?}"
        ))),
    }
}

/// The AppArmor profile, if one is asked for; without one the runtime
/// applies its default to unprivileged containers.
fn apparmor(p: &AppArmorProfile) -> Result<SecurityProfile, ConfigError> {
    match p.type_.as_str() {
        "RuntimeDefault" => Ok(profile(ProfileType::RuntimeDefault, String::new())),
        "Unconfined" => Ok(profile(ProfileType::Unconfined, String::new())),
        "Localhost" => Ok(profile(
            ProfileType::Localhost,
            p.localhost_profile.clone().unwrap_or_default(),
        )),
        other => Err(ConfigError(format!(
            "unknown AppArmor profile type {other:?}"
        ))),
    }
}

/// The container's CRI security context. The user stays unset when the
/// pod names none: [`run_as_image_user`] fills it in from the image.
pub fn container_security_context(
    pod: &Pod,
    container: &Container,
) -> Result<LinuxContainerSecurityContext, ConfigError> {
    let pod_sc = pod_context(pod);
    let sc = effective(pod_sc, container.security_context.as_ref());
    let privileged = sc.privileged == Some(true);
    let paths = |defaults: &[&str]| -> Vec<String> {
        if privileged {
            Vec::new()
        } else {
            defaults.iter().map(|p| p.to_string()).collect()
        }
    };
    Ok(LinuxContainerSecurityContext {
        capabilities: sc.capabilities.as_ref().map(|c| Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            add_ambient_capabilities: Vec::new(),
        }),
        privileged,
        selinux_options: sc.se_linux_options.as_ref().map(selinux),
        run_as_user: sc.run_as_user.map(|value| Int64Value { value }),
        run_as_group: sc.run_as_group.map(|value| Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem == Some(true),
        supplemental_groups: supplemental_groups(pod_sc),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        seccomp: Some(seccomp(sc.seccomp_profile.as_ref())?),
        apparmor: sc.app_armor_profile.as_ref().map(apparmor).transpose()?,
        ..Default::default()
    })
}

/// Whether any container of the pod, init containers included, is
/// privileged.
pub fn has_privileged_container(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .is_some_and(|s| s.privileged == Some(true))
        })
}

/// The sandbox's security context: privileged if a container is, and the
/// pod-level user, group, supplemental groups and SELinux options. The
/// sandbox's seccomp profile is left to the runtime.
pub fn sandbox_security_context(spec: &PodSpec) -> LinuxSandboxSecurityContext {
    let sc = spec.security_context.as_ref();
    LinuxSandboxSecurityContext {
        privileged: has_privileged_container(spec),
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .map(|value| Int64Value { value }),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .map(|value| Int64Value { value }),
        supplemental_groups: supplemental_groups(sc),
        selinux_options: sc.and_then(|s| s.se_linux_options.as_ref()).map(selinux),
        ..Default::default()
    }
}

/// The image's user as the kubelet reads it: the uid if numeric, else the
/// name; an image without a user (or not found) runs as root.
fn image_uid(image: Option<&ImageUser>) -> (Option<i64>, String) {
    match image {
        Some(ImageUser { uid: Some(uid), .. }) => (Some(*uid), String::new()),
        Some(ImageUser { username, .. }) if !username.is_empty() => (None, username.clone()),
        _ => (Some(0), String::new()),
    }
}

/// Refuses a container whose effective `runAsNonRoot` cannot hold, in the
/// kubelet's words; `pod_display` is the pod as `NAME_NAMESPACE(UID)`.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    pod_display: &str,
    image: Option<&ImageUser>,
) -> Result<(), ConfigError> {
    let sc = effective(pod_context(pod), container.security_context.as_ref());
    if sc.run_as_non_root != Some(true) {
        return Ok(());
    }
    let name = &container.name;
    if let Some(uid) = sc.run_as_user {
        if uid == 0 {
            return Err(ConfigError(format!(
                "container's runAsUser breaks non-root policy (pod: {pod_display:?}, container: {name})"
            )));
        }
        return Ok(());
    }
    match image_uid(image) {
        (Some(0), _) => Err(ConfigError(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod_display:?}, container: {name})"
        ))),
        (None, user) if !user.is_empty() => Err(ConfigError(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod_display:?}, container: {name})"
        ))),
        _ => Ok(()),
    }
}

/// When the pod names no user, the image's becomes explicit in the
/// config, as the kubelet does: the uid, or the user name for the runtime
/// to resolve. (A `runAsGroup` without a user needs it: the runtime
/// refuses a group alone.)
pub fn run_as_image_user(config: &mut ContainerConfig, image: Option<&ImageUser>) {
    let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    else {
        return;
    };
    if sc.run_as_user.is_some() {
        return;
    }
    let (uid, username) = image_uid(image);
    sc.run_as_user = uid.map(|value| Int64Value { value });
    sc.run_as_username = username;
}

/// Container `securityContext` fields set but not acted on, as warnings.
pub fn unsupported_fields(c: &Container) -> Vec<String> {
    let Some(sc) = c.security_context.as_ref() else {
        return Vec::new();
    };
    let name = &c.name;
    let mut w = Vec::new();
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        w.push(format!(
            "container {name}: securityContext.procMount is not supported yet; ignored"
        ));
    }
    if sc.windows_options.is_some() {
        w.push(format!(
            "container {name}: securityContext.windowsOptions is not supported; ignored"
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::proto::LinuxContainerConfig;
    use serde_json::json;

    fn pod(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "u1"},
            "spec": {"securityContext": pod_sc, "containers": [
                {"name": "c", "image": "i", "securityContext": container_sc}]}
        }))
        .expect("pod")
    }

    fn container(p: &Pod) -> &Container {
        &p.spec.as_ref().expect("spec").containers[0]
    }

    fn cri(p: &Pod) -> LinuxContainerSecurityContext {
        container_security_context(p, container(p)).expect("security context")
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn container_fields_override_the_pods() {
        let p = pod(
            json!({"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": false,
                   "seLinuxOptions": {"level": "s0:c1"},
                   "seccompProfile": {"type": "RuntimeDefault"},
                   "appArmorProfile": {"type": "RuntimeDefault"}}),
            json!({"runAsUser": 2000, "runAsNonRoot": true,
                   "seccompProfile": {"type": "Unconfined"}}),
        );
        let sc = effective(
            p.spec.as_ref().unwrap().security_context.as_ref(),
            container(&p).security_context.as_ref(),
        );
        assert_eq!(sc.run_as_user, Some(2000));
        assert_eq!(sc.run_as_group, Some(3000));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.se_linux_options.and_then(|o| o.level).as_deref(),
            Some("s0:c1")
        );
        assert_eq!(sc.seccomp_profile.unwrap().type_, "Unconfined");
        assert_eq!(sc.app_armor_profile.unwrap().type_, "RuntimeDefault");
        // Neither says anything: nothing is set.
        assert_eq!(effective(None, None), SecurityContext::default());
    }

    #[test]
    fn a_hardened_container_reaches_cri_as_the_kubelet_sends_it() {
        let p = pod(
            json!({"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                   "supplementalGroups": [4000, 5000],
                   "seLinuxOptions": {"user": "u", "role": "r", "type": "t", "level": "l"}}),
            json!({"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                   "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                   "seccompProfile": {"type": "RuntimeDefault"},
                   "appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-web"}}),
        );
        let sc = cri(&p);
        assert_eq!(sc.run_as_user, Some(Int64Value { value: 1000 }));
        assert_eq!(sc.run_as_group, Some(Int64Value { value: 3000 }));
        assert_eq!(sc.run_as_username, "");
        assert_eq!(sc.supplemental_groups, vec![2000, 4000, 5000]);
        assert!(sc.readonly_rootfs);
        assert!(sc.no_new_privs);
        assert!(!sc.privileged);
        let caps = sc.capabilities.expect("capabilities");
        assert_eq!(caps.drop_capabilities, strings(&["ALL"]));
        assert_eq!(caps.add_capabilities, strings(&["NET_BIND_SERVICE"]));
        assert_eq!(
            sc.selinux_options,
            Some(SeLinuxOption {
                user: "u".into(),
                role: "r".into(),
                r#type: "t".into(),
                level: "l".into()
            })
        );
        assert_eq!(
            sc.seccomp,
            Some(profile(ProfileType::RuntimeDefault, String::new()))
        );
        assert_eq!(
            sc.apparmor,
            Some(profile(ProfileType::Localhost, "k8s-web".into()))
        );
        assert_eq!(sc.masked_paths, strings(DEFAULT_MASKED_PATHS));
        assert_eq!(sc.readonly_paths, strings(DEFAULT_READONLY_PATHS));
    }

    #[test]
    fn defaults_without_any_security_context() {
        let p = pod(json!(null), json!(null));
        let sc = cri(&p);
        assert_eq!(sc.run_as_user, None);
        assert!(sc.capabilities.is_none());
        assert!(!sc.no_new_privs && !sc.readonly_rootfs && !sc.privileged);
        assert!(sc.supplemental_groups.is_empty());
        // The kubelet's default: no seccomp filter, the runtime's AppArmor.
        assert_eq!(
            sc.seccomp,
            Some(profile(ProfileType::Unconfined, String::new()))
        );
        assert_eq!(sc.apparmor, None);
        assert_eq!(sc.masked_paths, strings(DEFAULT_MASKED_PATHS));
        // Escalation stays allowed unless explicitly refused.
        let p = pod(json!(null), json!({"allowPrivilegeEscalation": true}));
        assert!(!cri(&p).no_new_privs);
    }

    #[test]
    fn privileged_containers_unmask_and_make_the_sandbox_privileged() {
        let p = pod(json!({"runAsUser": 1000}), json!({"privileged": true}));
        let sc = cri(&p);
        assert!(sc.privileged);
        assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty());
        let spec = p.spec.as_ref().unwrap();
        let sandbox = sandbox_security_context(spec);
        assert!(sandbox.privileged);
        assert_eq!(sandbox.run_as_user, Some(Int64Value { value: 1000 }));

        let p = pod(
            json!({"fsGroup": 2000, "supplementalGroups": [4000], "runAsGroup": 3000}),
            json!({"privileged": false}),
        );
        let sandbox = sandbox_security_context(p.spec.as_ref().unwrap());
        assert!(!sandbox.privileged);
        assert_eq!(sandbox.run_as_user, None);
        assert_eq!(sandbox.run_as_group, Some(Int64Value { value: 3000 }));
        assert_eq!(sandbox.supplemental_groups, vec![2000, 4000]);
        assert_eq!(
            sandbox_security_context(&PodSpec::default()),
            LinuxSandboxSecurityContext::default()
        );
    }

    #[test]
    fn localhost_seccomp_is_refused_rather_than_ignored() {
        let p = pod(
            json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
            json!(null),
        );
        assert_eq!(
            container_security_context(&p, container(&p)),
            Err(ConfigError(
                "seccomp profile type Localhost is not supported by commitd yet".into()
            ))
        );
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_image_in_the_kubelets_words() {
        let user = |uid: Option<i64>, name: &str| ImageUser {
            uid,
            username: name.into(),
        };
        let check = |p: &Pod, image: Option<&ImageUser>| {
            verify_run_as_non_root(p, container(p), "web_demo(u1)", image)
        };
        let non_root = pod(json!({"runAsNonRoot": true}), json!(null));
        let root = user(None, "");
        assert_eq!(
            check(&non_root, Some(&root)),
            Err(ConfigError("container has runAsNonRoot and image will run as root (pod: \"web_demo(u1)\", container: c)".into()))
        );
        assert_eq!(
            check(&non_root, Some(&user(Some(0), ""))),
            check(&non_root, Some(&root))
        );
        assert_eq!(
            check(&non_root, Some(&user(None, "app"))),
            Err(ConfigError("container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root (pod: \"web_demo(u1)\", container: c)".into()))
        );
        assert_eq!(check(&non_root, Some(&user(Some(1000), ""))), Ok(()));
        // An explicit user decides, whatever the image.
        let with_user = pod(json!({"runAsNonRoot": true}), json!({"runAsUser": 1000}));
        assert_eq!(check(&with_user, Some(&root)), Ok(()));
        let as_root = pod(json!({"runAsUser": 0}), json!({"runAsNonRoot": true}));
        assert_eq!(
            check(&as_root, Some(&user(Some(1000), ""))),
            Err(ConfigError("container's runAsUser breaks non-root policy (pod: \"web_demo(u1)\", container: c)".into()))
        );
        // The container may lift the pod's requirement.
        let lifted = pod(
            json!({"runAsNonRoot": true}),
            json!({"runAsNonRoot": false}),
        );
        assert_eq!(check(&lifted, Some(&root)), Ok(()));
        assert_eq!(check(&pod(json!(null), json!(null)), None), Ok(()));
    }

    #[test]
    fn the_images_user_is_made_explicit_only_when_the_pod_names_none() {
        let config = |sc: LinuxContainerSecurityContext| ContainerConfig {
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(sc),
            }),
            ..Default::default()
        };
        let sc_of = |c: &ContainerConfig| c.linux.clone().unwrap().security_context.unwrap();
        let group_only = pod(json!(null), json!({"runAsGroup": 3000}));
        let mut c = config(cri(&group_only));
        run_as_image_user(&mut c, None);
        assert_eq!(sc_of(&c).run_as_user, Some(Int64Value { value: 0 }));
        assert_eq!(sc_of(&c).run_as_group, Some(Int64Value { value: 3000 }));

        let mut c = config(cri(&group_only));
        let named = ImageUser {
            uid: None,
            username: "app".into(),
        };
        run_as_image_user(&mut c, Some(&named));
        assert_eq!(sc_of(&c).run_as_user, None);
        assert_eq!(sc_of(&c).run_as_username, "app");

        let explicit = pod(json!({"runAsUser": 1000}), json!(null));
        let mut c = config(cri(&explicit));
        run_as_image_user(&mut c, Some(&named));
        assert_eq!(sc_of(&c).run_as_user, Some(Int64Value { value: 1000 }));
        assert_eq!(sc_of(&c).run_as_username, "");
    }

    #[test]
    fn fields_not_acted_on_are_named() {
        let p = pod(
            json!(null),
            json!({"procMount": "Unmasked", "windowsOptions": {"runAsUserName": "x"}}),
        );
        assert_eq!(
            unsupported_fields(container(&p)),
            vec![
                "container c: securityContext.procMount is not supported yet; ignored",
                "container c: securityContext.windowsOptions is not supported; ignored",
            ]
        );
        let p = pod(json!(null), json!({"procMount": "Default", "runAsUser": 1}));
        assert!(unsupported_fields(container(&p)).is_empty());
    }
}
