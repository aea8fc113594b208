//! Kubernetes' validation of the kinds commitd stores, with its messages
//! (`spec.replicas: Invalid value: -1: must be greater than or equal to 0`),
//! so an error reads the same as `kubectl apply` would print it.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, PodSpec, PodTemplateSpec, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::field_path::FieldPath;

mod probe;
mod security;
mod service;
mod storage;
mod volumes;
mod workloads;

/// Field errors found in one object.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<(FieldPath, String)>);

impl FieldErrors {
    pub(crate) fn add(&mut self, path: FieldPath, msg: impl Into<String>) {
        self.0.push((path, msg.into()));
    }
    pub(crate) fn required(&mut self, path: FieldPath) {
        self.add(path, "Required value");
    }
    pub(crate) fn forbidden(&mut self, path: FieldPath, msg: &str) {
        self.add(path, format!("Forbidden: {msg}"));
    }
    pub(crate) fn invalid(&mut self, path: FieldPath, value: impl std::fmt::Display, why: &str) {
        self.add(path, format!("Invalid value: {value}: {why}"));
    }
    pub(crate) fn unsupported(&mut self, path: FieldPath, value: &str, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        self.add(
            path,
            format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
        );
    }
}

pub(crate) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub(crate) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Whether `s` is an RFC 1123 label (namespaces, container names).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an RFC 1123 subdomain (most object names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

const PORT_NAME_MSG: &str = "must contain only lowercase alphanumeric characters (a-z, 0-9), and hyphens (-); must contain at least one letter (a-z); must not contain consecutive hyphens (--); hyphens (-) must not be adjacent to each other or at the ends; must be no more than 15 characters";

/// Whether `n` is an IANA service name, as container and service port
/// names must be (`http`, `metrics-2`).
pub fn is_port_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

const ENV_VAR_NAME_MSG: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')";

/// `env[i].valueFrom`: exactly one source, not together with `value`,
/// and the referenced object and key named.
fn env_var_source(
    from: &k8s_openapi::api::core::v1::EnvVarSource,
    value: Option<&str>,
    p: &FieldPath,
    errs: &mut FieldErrors,
) {
    let mut sources = 0;
    if let Some(f) = &from.field_ref {
        sources += 1;
        if f.field_path.is_empty() {
            errs.required(p.key("fieldRef").key("fieldPath"));
        }
    }
    if let Some(r) = &from.resource_field_ref {
        sources += 1;
        if r.resource.is_empty() {
            errs.required(p.key("resourceFieldRef").key("resource"));
        }
    }
    for (field, name, key) in [
        (
            "configMapKeyRef",
            from.config_map_key_ref.as_ref().map(|r| (&r.name, &r.key)),
        ),
        (
            "secretKeyRef",
            from.secret_key_ref.as_ref().map(|r| (&r.name, &r.key)),
        ),
    ]
    .into_iter()
    .filter_map(|(f, r)| r.map(|(n, k)| (f, n, k)))
    {
        sources += 1;
        if name.is_empty() {
            errs.required(p.key(field).key("name"));
        }
        if key.is_empty() {
            errs.required(p.key(field).key("key"));
        }
    }
    match sources {
        0 => errs.invalid(
            p.clone(),
            "\"\"",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        ),
        1 => {}
        _ => errs.invalid(p.clone(), "\"\"", "may not have more than one field specified at a time"),
    }
    if value.is_some_and(|v| !v.is_empty()) {
        errs.invalid(
            p.clone(),
            "\"\"",
            "may not be specified when `value` is not empty",
        );
    }
}

/// Whether `s` is a valid environment variable name
/// (`[-._a-zA-Z][-._a-zA-Z0-9]*`); envFrom keys that are not are skipped.
pub fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Validates `metadata`: the name (an RFC 1123 label when `label_name`,
/// else a subdomain), the namespace, labels and annotations.
pub(crate) fn object_meta(
    m: &ObjectMeta,
    namespaced: bool,
    label_name: bool,
    errs: &mut FieldErrors,
) {
    let p = FieldPath::root().key("metadata");
    match m.name.as_deref() {
        None | Some("") => errs.add(
            p.key("name"),
            "Required value: name or generateName is required",
        ),
        Some(n) if label_name && !is_dns1123_label(n) => {
            errs.invalid(p.key("name"), format!("\"{n}\""), DNS1123_LABEL_MSG)
        }
        Some(n) if !is_dns1123_subdomain(n) => {
            errs.invalid(p.key("name"), format!("\"{n}\""), DNS1123_SUBDOMAIN_MSG)
        }
        _ => {}
    }
    if namespaced {
        if let Some(ns) = m.namespace.as_deref() {
            if !is_dns1123_label(ns) {
                errs.invalid(p.key("namespace"), format!("\"{ns}\""), DNS1123_LABEL_MSG);
            }
        }
    }
    labels(m.labels.as_ref(), &p.key("labels"), errs);
    for key in [
        crate::waves::SYNC_WAVE_ANNOTATION,
        crate::waves::ARGO_SYNC_WAVE_ANNOTATION,
    ] {
        if let Some(v) = m.annotations.as_ref().and_then(|a| a.get(key)) {
            if crate::waves::parse_wave(v).is_err() {
                errs.invalid(
                    p.key("annotations").key(key),
                    format!("\"{v}\""),
                    "a sync wave must be an integer",
                );
            }
        }
    }
    for k in m.annotations.iter().flatten().map(|(k, _)| k) {
        if !is_qualified_name(k) {
            errs.invalid(p.key("annotations"), format!("\"{k}\""), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character");
        }
    }
}

pub(crate) fn labels(l: Option<&BTreeMap<String, String>>, p: &FieldPath, errs: &mut FieldErrors) {
    for (k, v) in l.into_iter().flatten() {
        if !is_qualified_name(k) {
            errs.invalid(p.clone(), format!("\"{k}\""), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')");
        }
        if !is_label_value(v) {
            errs.invalid(p.clone(), format!("\"{v}\""), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')");
        }
    }
}

/// Validates a pod spec; `only_always` for workloads whose pods must
/// restart (Deployments, ReplicaSets).
pub fn pod_spec(spec: &PodSpec, p: &FieldPath, only_always: bool, errs: &mut FieldErrors) {
    let vols = volumes::volumes(
        spec.volumes.as_deref().unwrap_or_default(),
        &p.key("volumes"),
        errs,
    );
    if spec.containers.is_empty() {
        errs.required(p.key("containers"));
    }
    let mut names = HashSet::new();
    let init = spec.init_containers.iter().flatten();
    for (i, c) in spec.containers.iter().enumerate() {
        let cp = p.key("containers").index(i);
        container(c, &cp, &mut names, errs);
        volumes::volume_mounts(c, &vols, &cp.key("volumeMounts"), errs);
        if c.restart_policy.is_some() {
            errs.forbidden(
                cp.key("restartPolicy"),
                "may not be set for non-init containers",
            );
        }
    }
    for (i, c) in init.enumerate() {
        let cp = p.key("initContainers").index(i);
        container(c, &cp, &mut names, errs);
        volumes::volume_mounts(c, &vols, &cp.key("volumeMounts"), errs);
        init_container(c, &cp, errs);
    }
    if let Some(rp) = spec.restart_policy.as_deref() {
        if only_always && rp != "Always" {
            errs.unsupported(p.key("restartPolicy"), rp, &["Always"]);
        } else if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.unsupported(
                p.key("restartPolicy"),
                rp,
                &["Always", "OnFailure", "Never"],
            );
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            errs.invalid(
                p.key("terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            );
        }
    }
    labels(spec.node_selector.as_ref(), &p.key("nodeSelector"), errs);
    if let Some(sc) = &spec.security_context {
        security::pod_security_context(sc, &p.key("securityContext"), errs);
    }
}

/// What only init containers are held to: `restartPolicy` is `Always`
/// (a sidecar) or absent, and only sidecars have probes and hooks, as
/// Kubernetes requires.
fn init_container(c: &Container, p: &FieldPath, errs: &mut FieldErrors) {
    let sidecar = match c.restart_policy.as_deref() {
        None => false,
        Some("Always") => true,
        Some(other) => {
            errs.unsupported(p.key("restartPolicy"), other, &["Always"]);
            return;
        }
    };
    if sidecar {
        return;
    }
    let only_sidecars = [
        ("lifecycle", c.lifecycle.is_some()),
        ("livenessProbe", c.liveness_probe.is_some()),
        ("readinessProbe", c.readiness_probe.is_some()),
        ("startupProbe", c.startup_probe.is_some()),
    ];
    for (field, set) in only_sidecars {
        if set {
            errs.forbidden(
                p.key(field),
                "may not be set for init containers without restartPolicy=Always",
            );
        }
    }
}

fn container(c: &Container, p: &FieldPath, names: &mut HashSet<String>, errs: &mut FieldErrors) {
    if c.name.is_empty() {
        errs.required(p.key("name"));
    } else if !is_dns1123_label(&c.name) {
        errs.invalid(p.key("name"), format!("\"{}\"", c.name), DNS1123_LABEL_MSG);
    } else if !names.insert(c.name.clone()) {
        errs.add(p.key("name"), format!("Duplicate value: \"{}\"", c.name));
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.required(p.key("image"));
    }
    if let Some(pp) = c.image_pull_policy.as_deref() {
        if !["Always", "IfNotPresent", "Never"].contains(&pp) {
            errs.unsupported(
                p.key("imagePullPolicy"),
                pp,
                &["Always", "IfNotPresent", "Never"],
            );
        }
    }
    if let Some(policy) = c.termination_message_policy.as_deref() {
        const POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
        if !POLICIES.contains(&policy) {
            errs.unsupported(p.key("terminationMessagePolicy"), policy, POLICIES);
        }
    }
    let mut port_names = HashSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = p.key("ports").index(i);
        if !(1..=65535).contains(&port.container_port) {
            errs.invalid(
                pp.key("containerPort"),
                port.container_port,
                "must be between 1 and 65535, inclusive",
            );
        }
        if let Some(hp) = port.host_port {
            if !(0..=65535).contains(&hp) {
                errs.invalid(
                    pp.key("hostPort"),
                    hp,
                    "must be between 1 and 65535, inclusive",
                );
            }
        }
        if let Some(proto) = port.protocol.as_deref() {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.unsupported(pp.key("protocol"), proto, &["SCTP", "TCP", "UDP"]);
            }
        }
        if let Some(n) = port.name.as_deref() {
            if !is_port_name(n) {
                errs.invalid(pp.key("name"), format!("\"{n}\""), PORT_NAME_MSG);
            } else if !port_names.insert(n.to_string()) {
                errs.add(pp.key("name"), format!("Duplicate value: \"{n}\""));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = p.key("env").index(i);
        if !is_env_var_name(&e.name) {
            errs.invalid(ep.key("name"), format!("\"{}\"", e.name), ENV_VAR_NAME_MSG);
        }
        if let Some(from) = &e.value_from {
            env_var_source(from, e.value.as_deref(), &ep.key("valueFrom"), errs);
        }
    }
    for (i, from) in c.env_from.iter().flatten().enumerate() {
        let fp = p.key("envFrom").index(i);
        let refs = [
            from.config_map_ref
                .as_ref()
                .map(|r| ("configMapRef", r.name.as_str())),
            from.secret_ref
                .as_ref()
                .map(|r| ("secretRef", r.name.as_str())),
        ];
        match refs.iter().flatten().collect::<Vec<_>>()[..] {
            [] => errs.invalid(
                fp.clone(),
                "\"\"",
                "must specify one of: `configMapRef` or `secretRef`",
            ),
            [(field, "")] => errs.required(fp.key(field).key("name")),
            [_] => {}
            _ => errs.invalid(
                fp.clone(),
                "\"\"",
                "may not have more than one field specified at a time",
            ),
        }
        if let Some(prefix) = from.prefix.as_deref().filter(|p| !p.is_empty()) {
            if !is_env_var_name(prefix) {
                errs.invalid(fp.key("prefix"), format!("\"{prefix}\""), ENV_VAR_NAME_MSG);
            }
        }
    }
    if let Some(r) = &c.resources {
        for (section, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (k, q) in map.iter().flatten() {
                let qp = p.key("resources").key(section).key(k);
                if crate::quantity::parse(&q.0).is_err() {
                    errs.invalid(qp, format!("\"{}\"", q.0), "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'");
                }
            }
        }
    }
    // On init containers only sidecars may have them (`init_container`).
    let probes = [
        (
            &c.liveness_probe,
            probe::ProbeKind::Liveness,
            "livenessProbe",
        ),
        (
            &c.readiness_probe,
            probe::ProbeKind::Readiness,
            "readinessProbe",
        ),
        (&c.startup_probe, probe::ProbeKind::Startup, "startupProbe"),
    ];
    for (pr, kind, field) in probes {
        if let Some(pr) = pr {
            probe::probe(pr, kind, &p.key(field), errs);
        }
    }
    if let Some(l) = &c.lifecycle {
        probe::lifecycle(l, &p.key("lifecycle"), errs);
    }
    if let Some(sc) = &c.security_context {
        security::security_context(sc, &p.key("securityContext"), errs);
    }
}

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    crate::selector::matches(sel, labels)
}

fn workload_selector(
    sel: Option<&LabelSelector>,
    template_labels: Option<&BTreeMap<String, String>>,
    kind: &str,
    errs: &mut FieldErrors,
) {
    let spec = FieldPath::root().key("spec");
    let Some(sel) = sel else {
        errs.required(spec.key("selector"));
        return;
    };
    let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
    if empty {
        errs.invalid(spec.key("selector"), "v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}", &format!("empty selector is invalid for {kind}"));
        return;
    }
    let empty_labels = BTreeMap::new();
    let labels = template_labels.unwrap_or(&empty_labels);
    if !selector_matches(sel, labels) {
        let shown: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .collect();
        errs.invalid(
            spec.key("template").key("metadata").key("labels"),
            format!("map[string]string{{{}}}", shown.join(", ")),
            "`selector` does not match template `labels`",
        );
    }
}

/// An object that Kubernetes validates on create and update.
pub trait Validate {
    /// Adds every field error of the object to `errs`.
    fn validate(&self, errs: &mut FieldErrors);
}

impl Validate for Namespace {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, false, true, errs);
    }
}

impl Validate for ConfigMap {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let keys = self.data.iter().flatten().map(|(k, _)| ("data", k));
        let bin = self
            .binary_data
            .iter()
            .flatten()
            .map(|(k, _)| ("binaryData", k));
        for (section, k) in keys.chain(bin) {
            if !is_config_key(k) {
                errs.invalid(FieldPath::root().key(section).key(k), format!("\"{k}\""), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
            }
        }
    }
}

impl Validate for Secret {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        for k in self.data.iter().flatten().map(|(k, _)| k) {
            if !is_config_key(k) {
                errs.invalid(FieldPath::root().key("data").key(k), format!("\"{k}\""), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
            }
        }
    }
}

/// Stored and shown; commitd issues no tokens, so only the name matters.
impl Validate for ServiceAccount {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
    }
}

impl Validate for Pod {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        match &self.spec {
            Some(spec) => pod_spec(spec, &FieldPath::root().key("spec"), false, errs),
            None => errs.required(FieldPath::root().key("spec")),
        }
    }
}

/// The checks Deployments and ReplicaSets share: replicas, a selector that
/// matches the template's labels, and a pod template that always restarts.
fn workload(
    replicas: Option<i32>,
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
    kind: &str,
    errs: &mut FieldErrors,
) {
    let sp = FieldPath::root().key("spec");
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errs.invalid(sp.key("replicas"), r, "must be greater than or equal to 0");
    }
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    workload_selector(Some(selector), labels, kind, errs);
    match template.and_then(|t| t.spec.as_ref()) {
        Some(ps) => pod_spec(ps, &sp.key("template").key("spec"), true, errs),
        None => errs.required(sp.key("template").key("spec")),
    }
}

impl Validate for Deployment {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let Some(spec) = &self.spec else {
            errs.required(FieldPath::root().key("spec"));
            return;
        };
        if let Some(st) = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) {
            if !["RollingUpdate", "Recreate"].contains(&st) {
                errs.unsupported(
                    FieldPath::parse("spec.strategy.type"),
                    st,
                    &["Recreate", "RollingUpdate"],
                );
            }
        }
        workload(
            spec.replicas,
            &spec.selector,
            Some(&spec.template),
            "deployment",
            errs,
        );
    }
}

impl Validate for ReplicaSet {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let Some(spec) = &self.spec else {
            errs.required(FieldPath::root().key("spec"));
            return;
        };
        workload(
            spec.replicas,
            &spec.selector,
            spec.template.as_ref(),
            "replicaset",
            errs,
        );
    }
}

impl Validate for Job {
    fn validate(&self, errs: &mut FieldErrors) {
        object_meta(&self.metadata, true, false, errs);
        let Some(spec) = &self.spec else {
            errs.required(FieldPath::root().key("spec"));
            return;
        };
        let sp = FieldPath::root().key("spec");
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref());
        if spec.manual_selector == Some(true) {
            workload_selector(spec.selector.as_ref(), template_labels, "job", errs);
        } else if let Some(sel) = &spec.selector {
            // Kubernetes generates the selector from the Job's uid.
            let shown: Vec<String> = sel
                .match_labels
                .iter()
                .flatten()
                .map(|(k, v)| format!("\"{k}\":\"{v}\""))
                .collect();
            errs.invalid(
                sp.key("selector"),
                format!("map[string]string{{{}}}", shown.join(", ")),
                "`selector` not auto-generated (set `manualSelector: true` to use your own)",
            );
        }
        // A Job's name ends up in a label value: one too long is caught here.
        labels(
            template_labels,
            &sp.key("template").key("metadata").key("labels"),
            errs,
        );
        job_spec(spec, &sp, errs);
    }
}

/// The checks of a Job's spec that a CronJob's `jobTemplate.spec` shares:
/// counts, completion mode, and a pod template that does not always
/// restart. `sp` is where the spec sits.
pub(crate) fn job_spec(spec: &JobSpec, sp: &FieldPath, errs: &mut FieldErrors) {
    for (field, value) in [
        ("parallelism", spec.parallelism.map(i64::from)),
        ("completions", spec.completions.map(i64::from)),
        ("backoffLimit", spec.backoff_limit.map(i64::from)),
        ("activeDeadlineSeconds", spec.active_deadline_seconds),
        (
            "ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
        ),
    ] {
        if let Some(v) = value.filter(|v| *v < 0) {
            errs.invalid(sp.key(field), v, "must be greater than or equal to 0");
        }
    }
    if spec.active_deadline_seconds == Some(0) {
        errs.invalid(sp.key("activeDeadlineSeconds"), 0, "must be greater than 0");
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.completions.is_none() {
                errs.add(
                    sp.key("completions"),
                    "Required value: when completion mode is Indexed",
                );
            }
        }
        Some(other) => {
            errs.unsupported(sp.key("completionMode"), other, &["NonIndexed", "Indexed"])
        }
    }
    let tp = sp.key("template").key("spec");
    let Some(ps) = spec.template.spec.as_ref() else {
        errs.required(tp);
        return;
    };
    pod_spec(ps, &tp, false, errs);
    match ps.restart_policy.as_deref() {
        None => errs.add(
            tp.key("restartPolicy"),
            "Required value: valid values: \"OnFailure\", \"Never\"",
        ),
        Some("OnFailure" | "Never") => {}
        Some(other) => errs.unsupported(tp.key("restartPolicy"), other, &["OnFailure", "Never"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors<T: Validate + serde::de::DeserializeOwned>(v: serde_json::Value) -> Vec<String> {
        let obj: T = serde_json::from_value(v).expect("decodes");
        let mut errs = FieldErrors::default();
        obj.validate(&mut errs);
        errs.0
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect()
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-web"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("-x"));
    }

    #[test]
    fn deployment_errors_read_like_kubernetes() {
        let got = errors::<Deployment>(json!({
            "metadata": {"name": "Web"},
            "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "other"}},
                    "spec": {"restartPolicy": "Never", "containers": [
                        {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]},
                        {"name": "a"}]}}}
        }));
        assert_eq!(
            got[0],
            format!("metadata.name: Invalid value: \"Web\": {DNS1123_SUBDOMAIN_MSG}")
        );
        assert_eq!(
            got[1],
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(got[2], "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`");
        assert!(got.contains(&"spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()));
        assert!(got.contains(
            &"spec.template.spec.containers[1].name: Duplicate value: \"a\"".to_string()
        ));
        assert!(got.contains(&"spec.template.spec.containers[1].image: Required value".to_string()));
        assert!(got.contains(&"spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"".to_string()));
    }

    fn job(spec: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": "pi"}, "spec": spec})
    }

    #[test]
    fn job_errors_read_like_kubernetes() {
        let pod = json!({"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "i"}]}});
        let got = errors::<Job>(job(json!({"completions": -1, "parallelism": -2,
            "backoffLimit": -3, "completionMode": "Sometimes", "template": pod})));
        assert_eq!(
            got,
            vec![
                "spec.parallelism: Invalid value: -2: must be greater than or equal to 0",
                "spec.completions: Invalid value: -1: must be greater than or equal to 0",
                "spec.backoffLimit: Invalid value: -3: must be greater than or equal to 0",
                "spec.completionMode: Unsupported value: \"Sometimes\": supported values: \"NonIndexed\", \"Indexed\"",
            ]
        );
        let got = errors::<Job>(job(json!({"completionMode": "Indexed", "parallelism": 2,
            "template": {"spec": {"restartPolicy": "Always",
                "containers": [{"name": "c", "image": "i"}]}}})));
        assert_eq!(
            got,
            vec![
                "spec.completions: Required value: when completion mode is Indexed",
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
            ]
        );
        let got = errors::<Job>(job(json!({"template": {"spec": {
            "containers": [{"name": "c", "image": "i"}]}}})));
        assert_eq!(
            got,
            vec!["spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""]
        );
        let got = errors::<Job>(job(json!({"selector": {"matchLabels": {"app": "x"}},
            "template": pod})));
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("spec.selector: Invalid value: map[string]string{\"app\":\"x\"}: `selector` not auto-generated"), "{got:?}");
        let manual = errors::<Job>(job(json!({"manualSelector": true,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}})));
        assert!(manual.is_empty(), "{manual:?}");
        assert!(errors::<Job>(job(
            json!({"completions": 3, "parallelism": 2, "template": pod})
        ))
        .is_empty());
    }

    #[test]
    fn sync_waves_are_integers() {
        let cm = |wave: &str| json!({"metadata": {"name": "c", "annotations": {"commitd.io/sync-wave": wave}}});
        assert!(errors::<ConfigMap>(cm("-2")).is_empty());
        assert_eq!(
            errors::<ConfigMap>(cm("first")),
            vec!["metadata.annotations[commitd.io/sync-wave]: Invalid value: \"first\": a sync wave must be an integer"]
        );
    }

    #[test]
    fn termination_message_policies_are_file_or_logs() {
        let pod = |policy: &str| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "c", "image": "i", "terminationMessagePolicy": policy}]}})
        };
        assert!(errors::<Pod>(pod("FallbackToLogsOnError")).is_empty());
        assert_eq!(
            errors::<Pod>(pod("Logs")),
            vec!["spec.containers[0].terminationMessagePolicy: Unsupported value: \"Logs\": supported values: \"File\", \"FallbackToLogsOnError\""]
        );
    }

    #[test]
    fn only_init_containers_restart_always_and_only_sidecars_probe() {
        let got = errors::<Pod>(json!({"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "app", "image": "i", "restartPolicy": "Always"}],
        "initContainers": [
            {"name": "proxy", "image": "i", "restartPolicy": "Always",
             "readinessProbe": {"tcpSocket": {"port": 15000}}},
            {"name": "setup", "image": "i",
             "readinessProbe": {"tcpSocket": {"port": 1}}},
            {"name": "odd", "image": "i", "restartPolicy": "Never"}
        ]}}));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
                "spec.initContainers[1].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
                "spec.initContainers[2].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ]
        );
    }

    #[test]
    fn config_keys_and_env_names() {
        let got = errors::<ConfigMap>(
            json!({"metadata": {"name": "c"}, "data": {"ok.key": "1", "bad key": "2"}}),
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("data[bad key]: Invalid value: \"bad key\""));
        let got = errors::<Pod>(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "i", "env": [{"name": "1BAD", "value": "x"}],
             "resources": {"requests": {"cpu": "lots"}}}]}}));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("spec.containers[0].env[0].name: Invalid value: \"1BAD\""));
        assert!(got[1].starts_with("spec.containers[0].resources.requests.cpu: Invalid value: \"lots\": quantities must match"));
    }

    #[test]
    fn env_sources_name_one_source_each() {
        let got = errors::<Pod>(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "i",
             "env": [
                {"name": "A", "value": "x", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}},
                {"name": "B", "valueFrom": {}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": ""},
                                            "fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "D", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
             ],
             "envFrom": [{}, {"configMapRef": {"name": "m"}, "prefix": "1X"},
                         {"configMapRef": {"name": "m"}, "secretRef": {"name": "s"}}]}]}}));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].env[0].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty",
                "spec.containers[0].env[1].valueFrom: Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                "spec.containers[0].env[2].valueFrom.secretKeyRef.key: Required value",
                "spec.containers[0].env[2].valueFrom: Invalid value: \"\": may not have more than one field specified at a time",
                "spec.containers[0].envFrom[0]: Invalid value: \"\": must specify one of: `configMapRef` or `secretRef`",
                "spec.containers[0].envFrom[1].prefix: Invalid value: \"1X\": a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')",
                "spec.containers[0].envFrom[2]: Invalid value: \"\": may not have more than one field specified at a time",
            ]
        );
    }

    #[test]
    fn valid_objects_have_no_errors() {
        assert!(errors::<Namespace>(json!({"metadata": {"name": "demo"}})).is_empty());
        assert!(errors::<Pod>(json!({"metadata": {"name": "p", "labels": {"app.kubernetes.io/name": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 80}]}]}})).is_empty());
    }
}
