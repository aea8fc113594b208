//! `commitd describe pod`: a pod in words, laid out as `kubectl describe
//! pod` lays it out (same titles, same order, same tab alignment), plus the
//! commit and file it came from when it was applied from Git.
//!
//! Everything here is a pure function of the stored pod (and, for a pod
//! being deleted, the current time), so it is tested without etcd.
//!
//! Where the API server would have filled in a default that commitd may
//! not store (probe timings, the service account, the priority, requests
//! that default to limits for the QoS class), the default is printed, so
//! a manifest reads here as kubectl would print it on a Kubernetes cluster.

use std::fmt::Write as _;

use commitd_api::k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, EnvVar, Pod, Probe, ResourceRequirements,
    Toleration, Volume,
};
use commitd_api::k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use commitd_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::quantity::{self, Quantity};

use super::describe::{multiline_annotations, multiline_labels};
use super::output::{human_duration, tabbed};

/// How Go prints a zero `time.Time` in RFC 1123 form, as kubectl does for
/// a container state whose times are unset.
const ZERO_TIME: &str = "Mon, 01 Jan 0001 00:00:00 +0000";

/// Writes one line at kubectl's indentation `level` (two spaces each).
macro_rules! put {
    ($w:expr, $level:expr, $($arg:tt)*) => {{
        $w.push_str(&"  ".repeat($level));
        // `write!` to a String cannot fail.
        let _ = writeln!($w, $($arg)*);
    }};
}

/// A pod as `kubectl describe pod` prints it, then `Source:` and `Commit:`
/// when the pod carries them (pods made by a ReplicaSet do not), then
/// `Events: <none>`: commitd records no events. `now` is only read for a
/// pod being deleted (`Terminating (lasts 5s)`).
pub fn describe_pod(pod: &Pod, now: Timestamp) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let md = &pod.metadata;
    let mut w = String::new();

    put!(w, 0, "Name:\t{}", meta::name(pod));
    put!(
        w,
        0,
        "Namespace:\t{}",
        meta::namespace(pod).unwrap_or_default()
    );
    put!(w, 0, "Priority:\t{}", spec.priority.unwrap_or(0));
    if let Some(class) = non_empty(&spec.priority_class_name) {
        put!(w, 0, "Priority Class Name:\t{class}");
    }
    if let Some(class) = non_empty(&spec.runtime_class_name) {
        put!(w, 0, "Runtime Class Name:\t{class}");
    }
    let account = non_empty(&spec.service_account_name)
        .or(non_empty(&spec.service_account))
        .unwrap_or("default");
    put!(w, 0, "Service Account:\t{account}");
    match non_empty(&spec.node_name) {
        Some(node) => put!(
            w,
            0,
            "Node:\t{node}/{}",
            status.host_ip.as_deref().unwrap_or_default()
        ),
        None => put!(w, 0, "Node:\t<none>"),
    }
    if let Some(start) = &status.start_time {
        put!(w, 0, "Start Time:\t{}", rfc1123z(Some(start)));
    }
    multiline_labels(&mut w, "Labels", md.labels.as_ref());
    multiline_annotations(&mut w, "Annotations", md.annotations.as_ref());
    let phase = status.phase.as_deref().unwrap_or_default();
    match &md.deletion_timestamp {
        Some(deleted) if phase != "Failed" && phase != "Succeeded" => {
            let lasts = human_duration(now.duration_since(deleted.0).as_secs());
            put!(w, 0, "Status:\tTerminating (lasts {lasts})");
            let grace = md
                .deletion_grace_period_seconds
                .or(spec.termination_grace_period_seconds);
            if let Some(grace) = grace {
                put!(w, 0, "Termination Grace Period:\t{grace}s");
            }
        }
        _ => put!(w, 0, "Status:\t{phase}"),
    }
    if let Some(reason) = non_empty(&status.reason) {
        put!(w, 0, "Reason:\t{reason}");
    }
    if let Some(message) = non_empty(&status.message) {
        put!(w, 0, "Message:\t{message}");
    }
    if let Some(profile) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
    {
        put!(w, 0, "SeccompProfile:\t{}", profile.type_);
        if profile.type_ == "Localhost" {
            let local = profile.localhost_profile.as_deref().unwrap_or_default();
            put!(w, 0, "LocalhostProfile:\t{local}");
        }
    }
    put!(
        w,
        0,
        "IP:\t{}",
        status.pod_ip.as_deref().unwrap_or_default()
    );
    let ips = status.pod_ips.as_deref().unwrap_or_default();
    if ips.is_empty() {
        put!(w, 0, "IPs:\t<none>");
    } else {
        put!(w, 0, "IPs:");
        for ip in ips {
            put!(w, 1, "IP:\t{}", ip.ip);
        }
    }
    if let Some(owner) = meta::controller_of(md) {
        put!(w, 0, "Controlled By:\t{}/{}", owner.kind, owner.name);
    }
    if let Some(node) = non_empty(&status.nominated_node_name) {
        put!(w, 0, "NominatedNodeName:\t{node}");
    }
    if let Some(resources) = &spec.resources {
        put!(w, 0, "Resources:");
        describe_resources(&mut w, 1, resources);
    }

    let init_containers = spec.init_containers.as_deref().unwrap_or_default();
    if !init_containers.is_empty() {
        let statuses = status
            .init_container_statuses
            .as_deref()
            .unwrap_or_default();
        describe_containers(&mut w, "Init Containers", init_containers, statuses, pod);
    }
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    describe_containers(&mut w, "Containers", &spec.containers, statuses, pod);

    let conditions = status.conditions.as_deref().unwrap_or_default();
    let gates = spec.readiness_gates.as_deref().unwrap_or_default();
    if !gates.is_empty() {
        put!(w, 0, "Readiness Gates:");
        put!(w, 1, "Type\tStatus");
        for gate in gates {
            let status = conditions
                .iter()
                .find(|c| c.type_ == gate.condition_type)
                .map_or("<none>", |c| c.status.as_str());
            put!(w, 1, "{} \t{status} ", gate.condition_type);
        }
    }
    if !conditions.is_empty() {
        put!(w, 0, "Conditions:");
        put!(w, 1, "Type\tStatus");
        for c in conditions {
            put!(w, 1, "{} \t{} ", c.type_, c.status);
        }
    }
    describe_volumes(&mut w, spec.volumes.as_deref().unwrap_or_default());
    let qos = non_empty(&status.qos_class).unwrap_or_else(|| qos_class(pod));
    put!(w, 0, "QoS Class:\t{qos}");
    multiline_labels(&mut w, "Node-Selectors", spec.node_selector.as_ref());
    describe_tolerations(&mut w, spec.tolerations.as_deref().unwrap_or_default());
    if let Some(source) = meta::annotation(md, SOURCE_ANNOTATION) {
        put!(w, 0, "Source:\t{source}");
    }
    if let Some(commit) = meta::annotation(md, COMMIT_ANNOTATION) {
        put!(w, 0, "Commit:\t{commit}");
    }
    put!(w, 0, "Events:\t<none>");
    tabbed(&w)
}

/// A probe as kubectl's `DescribeProbe` writes it: the handler
/// (`http-get http://:8080/healthz`, `tcp-socket :80`, `exec [cat
/// /tmp/healthy]`, `grpc <pod>:9090 svc`) then its timings. Unset timings
/// read as Kubernetes defaults them (timeout 1s, period 10s, one success,
/// three failures), as do an HTTP probe's unset path (`/`) and scheme.
pub fn describe_probe(probe: &Probe) -> String {
    let or_default = |v: Option<i32>, default: i32| v.filter(|n| *n != 0).unwrap_or(default);
    let attrs = format!(
        "delay={}s timeout={}s period={}s #success={} #failure={}",
        probe.initial_delay_seconds.unwrap_or(0),
        or_default(probe.timeout_seconds, 1),
        or_default(probe.period_seconds, 10),
        or_default(probe.success_threshold, 1),
        or_default(probe.failure_threshold, 3),
    );
    if let Some(exec) = &probe.exec {
        let command = exec.command.as_deref().unwrap_or_default().join(" ");
        return format!("exec [{command}] {attrs}");
    }
    if let Some(http) = &probe.http_get {
        let scheme = non_empty(&http.scheme)
            .unwrap_or("HTTP")
            .to_ascii_lowercase();
        let host = http.host.as_deref().unwrap_or_default();
        let port = int_or_string(&http.port);
        let authority = if port.is_empty() {
            host.to_string()
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path = non_empty(&http.path).unwrap_or("/");
        let slash = if path.starts_with('/') { "" } else { "/" };
        let path = escape_path(path);
        return format!("http-get {scheme}://{authority}{slash}{path} {attrs}");
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp.host.as_deref().unwrap_or_default();
        return format!("tcp-socket {host}:{} {attrs}", int_or_string(&tcp.port));
    }
    if let Some(grpc) = &probe.grpc {
        let service = grpc.service.as_deref().unwrap_or_default();
        return format!("grpc <pod>:{} {service} {attrs}", grpc.port);
    }
    format!("unknown {attrs}")
}

/// The QoS class Kubernetes gives the pod, computed as the node agent
/// computes it for the pod's status.
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = pod.spec.clone().unwrap_or_default();
    commitd_nodeagent::pod::resources::qos_class(&spec).as_str()
}

/// kubectl's `describeContainers`: a title, then each container with its
/// status (when the node reported one), resources, probes, environment and
/// mounts.
fn describe_containers(
    w: &mut String,
    title: &str,
    containers: &[Container],
    statuses: &[ContainerStatus],
    pod: &Pod,
) {
    let none = if containers.is_empty() { " <none>" } else { "" };
    put!(w, 0, "{title}:{none}");
    for c in containers {
        let status = statuses.iter().rev().find(|s| s.name == c.name);
        put!(w, 1, "{}:", c.name);
        if let Some(s) = status {
            put!(
                w,
                2,
                "Container ID:\t{}",
                s.container_id.as_deref().unwrap_or_default()
            );
        }
        put!(w, 2, "Image:\t{}", c.image.as_deref().unwrap_or_default());
        if let Some(s) = status {
            put!(w, 2, "Image ID:\t{}", s.image_id);
        }
        let ports = c.ports.as_deref().unwrap_or_default();
        let protocol = |p: &Option<String>| p.clone().unwrap_or_else(|| "TCP".into());
        let listed: Vec<String> = ports
            .iter()
            .map(|p| format!("{}/{}", p.container_port, protocol(&p.protocol)))
            .collect();
        let host: Vec<String> = ports
            .iter()
            .map(|p| format!("{}/{}", p.host_port.unwrap_or(0), protocol(&p.protocol)))
            .collect();
        let (title, value) = port_line("Port", &listed);
        put!(w, 2, "{title}:\t{value}");
        let (title, value) = port_line("Host Port", &host);
        put!(w, 2, "{title}:\t{value}");
        if let Some(profile) = c
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
        {
            put!(w, 2, "SeccompProfile:\t{}", profile.type_);
            if profile.type_ == "Localhost" {
                let local = profile.localhost_profile.as_deref().unwrap_or_default();
                put!(w, 3, "LocalhostProfile:\t{local}");
            }
        }
        for (title, words) in [("Command", &c.command), ("Args", &c.args)] {
            let words = words.as_deref().unwrap_or_default();
            if words.is_empty() {
                continue;
            }
            put!(w, 2, "{title}:");
            for line in words.iter().flat_map(|word| word.split('\n')) {
                put!(w, 3, "{line}");
            }
        }
        if let Some(s) = status {
            describe_state(w, "State", s.state.as_ref());
            if let Some(last) = s.last_state.as_ref().filter(|l| l.terminated.is_some()) {
                describe_state(w, "Last State", Some(last));
            }
            put!(w, 2, "Ready:\t{}", if s.ready { "True" } else { "False" });
            put!(w, 2, "Restart Count:\t{}", s.restart_count);
        }
        if let Some(resources) = &c.resources {
            describe_resources(w, 2, resources);
        }
        for (title, probe) in [
            ("Liveness", &c.liveness_probe),
            ("Readiness", &c.readiness_probe),
            ("Startup", &c.startup_probe),
        ] {
            if let Some(probe) = probe {
                put!(w, 2, "{title}:\t{}", describe_probe(probe));
            }
        }
        describe_env_from(w, c);
        describe_env(w, c, pod);
        describe_mounts(w, c);
    }
}

/// `Port:\t80/TCP`, or `Ports:\t80/TCP, 9090/TCP` when there are several,
/// or `Port:\t<none>`.
fn port_line(title: &str, ports: &[String]) -> (String, String) {
    match ports.len() {
        0 => (title.to_string(), "<none>".to_string()),
        1 => (title.to_string(), ports[0].clone()),
        _ => (format!("{title}s"), ports.join(", ")),
    }
}

/// kubectl's `describeStatus`: `Running` with its start, `Waiting` with
/// its reason, or `Terminated` with reason, exit code and times.
fn describe_state(w: &mut String, title: &str, state: Option<&ContainerState>) {
    let state = state.cloned().unwrap_or_default();
    if let Some(running) = &state.running {
        put!(w, 2, "{title}:\tRunning");
        put!(w, 3, "Started:\t{}", rfc1123z(running.started_at.as_ref()));
    } else if let Some(waiting) = &state.waiting {
        put!(w, 2, "{title}:\tWaiting");
        if let Some(reason) = non_empty(&waiting.reason) {
            put!(w, 3, "Reason:\t{reason}");
        }
    } else if let Some(t) = &state.terminated {
        put!(w, 2, "{title}:\tTerminated");
        if let Some(reason) = non_empty(&t.reason) {
            put!(w, 3, "Reason:\t{reason}");
        }
        if let Some(message) = non_empty(&t.message) {
            put!(w, 3, "Message:\t{message}");
        }
        put!(w, 3, "Exit Code:\t{}", t.exit_code);
        if let Some(signal) = t.signal.filter(|s| *s > 0) {
            put!(w, 3, "Signal:\t{signal}");
        }
        put!(w, 3, "Started:\t{}", rfc1123z(t.started_at.as_ref()));
        put!(w, 3, "Finished:\t{}", rfc1123z(t.finished_at.as_ref()));
    } else {
        put!(w, 2, "{title}:\tWaiting");
    }
}

/// `Limits:` and `Requests:`, one resource a line, sorted by name. The
/// amounts are printed as written (kubectl prints them canonicalized, so
/// `0.5` would read `500m` there).
fn describe_resources(w: &mut String, level: usize, r: &ResourceRequirements) {
    for (title, list) in [("Limits", &r.limits), ("Requests", &r.requests)] {
        let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
            continue;
        };
        put!(w, level, "{title}:");
        for (name, q) in list {
            put!(w, level + 1, "{name}:\t{}", q.0);
        }
    }
}

/// kubectl's `describeContainerEnvFrom`, printed only when the container
/// has `envFrom`.
fn describe_env_from(w: &mut String, c: &Container) {
    let sources = c.env_from.as_deref().unwrap_or_default();
    if sources.is_empty() {
        return;
    }
    put!(w, 2, "Environment Variables from:");
    for e in sources {
        let (name, from, optional) = if let Some(cm) = &e.config_map_ref {
            (cm.name.as_str(), "ConfigMap", cm.optional == Some(true))
        } else if let Some(secret) = &e.secret_ref {
            (
                secret.name.as_str(),
                "Secret",
                secret.optional == Some(true),
            )
        } else {
            ("", "", false)
        };
        match non_empty(&e.prefix) {
            Some(prefix) => put!(
                w,
                3,
                "{name}\t{from} with prefix '{prefix}'\tOptional: {optional}"
            ),
            None => put!(w, 3, "{name}\t{from}\tOptional: {optional}"),
        }
    }
}

/// kubectl's `describeContainerEnvVars`: values (multi-line ones below
/// each other), and where the others come from.
fn describe_env(w: &mut String, c: &Container, pod: &Pod) {
    let env = c.env.as_deref().unwrap_or_default();
    if env.is_empty() {
        put!(w, 2, "Environment:\t<none>");
        return;
    }
    put!(w, 2, "Environment:");
    for e in env {
        let Some(from) = &e.value_from else {
            let value = e.value.as_deref().unwrap_or_default();
            for (i, line) in value.split('\n').enumerate() {
                if i == 0 {
                    put!(w, 3, "{}:\t{line}", e.name);
                } else {
                    put!(w, 3, "\t{line}");
                }
            }
            continue;
        };
        if let Some(field) = &from.field_ref {
            let version = non_empty(&field.api_version).unwrap_or("v1");
            put!(
                w,
                3,
                "{}:\t{} ({version}:{})",
                e.name,
                field_value(pod, e),
                field.field_path
            );
        } else if let Some(resource) = &from.resource_field_ref {
            let mut value = resource_value(c, e);
            let name = resource.resource.as_str();
            if value == "0" && (name == "limits.cpu" || name == "limits.memory") {
                value = "node allocatable".to_string();
            }
            put!(w, 3, "{}:\t{value} ({name})", e.name);
        } else if let Some(key) = &from.secret_key_ref {
            put!(
                w,
                3,
                "{}:\t<set to the key '{}' in secret '{}'>\tOptional: {}",
                e.name,
                key.key,
                key.name,
                key.optional == Some(true)
            );
        } else if let Some(key) = &from.config_map_key_ref {
            put!(
                w,
                3,
                "{}:\t<set to the key '{}' of config map '{}'>\tOptional: {}",
                e.name,
                key.key,
                key.name,
                key.optional == Some(true)
            );
        }
    }
}

/// The value of a `fieldRef`, as far as kubectl resolves one: it knows
/// only the pod's name and namespace (its client scheme converts no other
/// field label) and prints nothing for the rest, e.g. `(v1:status.podIP)`.
fn field_value(pod: &Pod, e: &EnvVar) -> String {
    let path = e
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    match path {
        Some("metadata.name") => meta::name(pod).to_string(),
        Some("metadata.namespace") => meta::namespace(pod).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// The value of a `resourceFieldRef` on this container, as kubectl's
/// `ExtractContainerResourceValue` computes it: CPU in units of the divisor
/// (default 1) rounded up from millicores, memory and ephemeral storage in
/// units of the divisor rounded up from bytes; `0` when the container does
/// not set the resource, empty for a resource it cannot read.
fn resource_value(c: &Container, e: &EnvVar) -> String {
    let Some(field) = e
        .value_from
        .as_ref()
        .and_then(|f| f.resource_field_ref.as_ref())
    else {
        return String::new();
    };
    let Some((list, name)) = field.resource.split_once('.') else {
        return String::new();
    };
    let resources = c.resources.clone().unwrap_or_default();
    let list = match list {
        "limits" => resources.limits,
        "requests" => resources.requests,
        _ => return String::new(),
    };
    let amount = |q: Option<&K8sQuantity>| {
        q.and_then(|q| quantity::from_k8s(q).ok())
            .unwrap_or_default()
    };
    let value = amount(list.as_ref().and_then(|l| l.get(name)));
    let divisor = Some(amount(field.divisor.as_ref()))
        .filter(|d| !d.is_zero())
        .unwrap_or(Quantity::from_value(1));
    let (n, d) = match name {
        "cpu" => (value.millis(), divisor.millis()),
        "memory" | "ephemeral-storage" => (value.value(), divisor.value()),
        _ => return String::new(),
    };
    if d == 0 {
        return String::new();
    }
    // Rounded up, as `math.Ceil` of the quotient.
    let q = n.div_euclid(d) + i64::from(n.rem_euclid(d) != 0);
    q.to_string()
}

/// kubectl's `describeContainerVolumes`: mounts sorted by path, with
/// `ro`/`rw` and the sub-path; then devices, if any.
fn describe_mounts(w: &mut String, c: &Container) {
    let mut mounts = c.volume_mounts.clone().unwrap_or_default();
    let none = if mounts.is_empty() { "\t<none>" } else { "" };
    put!(w, 2, "Mounts:{none}");
    mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
    for m in &mounts {
        let mut flags = vec![if m.read_only == Some(true) {
            "ro"
        } else {
            "rw"
        }
        .to_string()];
        if let Some(sub) = non_empty(&m.sub_path) {
            flags.push(format!("path={}", go_quote(sub)));
        }
        put!(
            w,
            3,
            "{} from {} ({})",
            m.mount_path,
            m.name,
            flags.join(",")
        );
    }
    let mut devices = c.volume_devices.clone().unwrap_or_default();
    if !devices.is_empty() {
        // kubectl repeats the mounts' `<none>` here, so a container with
        // devices and no mounts reads `Devices: <none>` above its devices.
        put!(w, 2, "Devices:{none}");
        devices.sort_by(|a, b| a.device_path.cmp(&b.device_path));
        for d in &devices {
            put!(w, 3, "{} from {}", d.device_path, d.name);
        }
    }
}

/// kubectl's `describeVolumes` for the volume types commitd's users write
/// (emptyDir, configMap, secret, hostPath); any other reads `<unknown>`, as
/// kubectl prints a type it does not know.
fn describe_volumes(w: &mut String, volumes: &[Volume]) {
    if volumes.is_empty() {
        put!(w, 0, "Volumes:\t<none>");
        return;
    }
    put!(w, 0, "Volumes:");
    for v in volumes {
        put!(w, 1, "{}:", v.name);
        if let Some(host) = &v.host_path {
            put!(w, 2, "Type:\tHostPath (bare host directory volume)");
            put!(w, 2, "Path:\t{}", host.path);
            // The API server defaults an unset type to "".
            put!(
                w,
                2,
                "HostPathType:\t{}",
                host.type_.as_deref().unwrap_or_default()
            );
        } else if let Some(dir) = &v.empty_dir {
            let size = dir
                .size_limit
                .as_ref()
                .filter(|q| quantity::from_k8s(q).is_ok_and(|q| q.nanos() > 0))
                .map_or("<unset>", |q| q.0.as_str());
            put!(
                w,
                2,
                "Type:\tEmptyDir (a temporary directory that shares a pod's lifetime)"
            );
            put!(
                w,
                2,
                "Medium:\t{}",
                dir.medium.as_deref().unwrap_or_default()
            );
            put!(w, 2, "SizeLimit:\t{size}");
        } else if let Some(secret) = &v.secret {
            put!(w, 2, "Type:\tSecret (a volume populated by a Secret)");
            put!(
                w,
                2,
                "SecretName:\t{}",
                secret.secret_name.as_deref().unwrap_or_default()
            );
            put!(w, 2, "Optional:\t{}", secret.optional == Some(true));
        } else if let Some(cm) = &v.config_map {
            put!(w, 2, "Type:\tConfigMap (a volume populated by a ConfigMap)");
            put!(w, 2, "Name:\t{}", cm.name);
            put!(w, 2, "Optional:\t{}", cm.optional == Some(true));
        } else {
            put!(w, 1, "<unknown>");
        }
    }
}

/// kubectl's `printPodTolerationsMultiline`: sorted by key, one a line,
/// `key=value:Effect`, ` op=Exists` for a toleration without a value, and
/// ` for 300s` when it is limited in time.
fn describe_tolerations(w: &mut String, tolerations: &[Toleration]) {
    if tolerations.is_empty() {
        put!(w, 0, "Tolerations:\t<none>");
        return;
    }
    let mut sorted: Vec<&Toleration> = tolerations.iter().collect();
    sorted.sort_by_key(|t| t.key.as_deref().unwrap_or_default());
    for (i, t) in sorted.into_iter().enumerate() {
        let key = t.key.as_deref().unwrap_or_default();
        let value = t.value.as_deref().unwrap_or_default();
        let effect = t.effect.as_deref().unwrap_or_default();
        let mut line = key.to_string();
        if !value.is_empty() {
            let _ = write!(line, "={value}");
        }
        if !effect.is_empty() {
            let _ = write!(line, ":{effect}");
        }
        if t.operator.as_deref() == Some("Exists") && value.is_empty() {
            let space = if key.is_empty() && effect.is_empty() {
                ""
            } else {
                " "
            };
            let _ = write!(line, "{space}op=Exists");
        }
        if let Some(seconds) = t.toleration_seconds {
            let _ = write!(line, " for {seconds}s");
        }
        let title = if i == 0 { "Tolerations:" } else { "" };
        put!(w, 0, "{title}\t{line}");
    }
}

/// A time as Go's RFC 1123 with numeric zone, in UTC:
/// `Mon, 23 Nov 2026 23:00:00 +0000`; Go's zero time when unset.
fn rfc1123z(t: Option<&Time>) -> String {
    match t {
        Some(t) => t.0.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string(),
        None => ZERO_TIME.to_string(),
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// A URL path escaped as Go's `url.URL.String` escapes it: letters,
/// digits and `-_.~$&+,/:;=@` stay, every other byte is `%XX`.
fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A string quoted as Go's `%q` quotes the usual ones (`"a\"b"`).
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("valid pod")
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).expect("valid probe")
    }

    fn now() -> Timestamp {
        "2026-11-24T00:00:00Z".parse().expect("valid time")
    }

    /// A pod of the Deployment `web`: the app with probes, environment,
    /// limits and two restarts, and a log shipper beside it.
    fn web_pod() -> Pod {
        pod(json!({
            "metadata": {
                "name": "web-6d4cf56db6-x2x7q", "namespace": "demo",
                "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "web-6d4cf56db6", "uid": "0f1e2d3c",
                                     "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [
                    {"name": "web", "image": "registry.local/web:1.4",
                     "args": ["--listen=:8080", "--verbose"],
                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                     "env": [
                         {"name": "MODE", "value": "production"},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                         {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                         {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "level"}}},
                         {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "token", "optional": true}}}
                     ],
                     "resources": {"limits": {"cpu": "500m", "memory": "256Mi"},
                                   "requests": {"cpu": "250m", "memory": "128Mi"}},
                     "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                       "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10,
                                       "successThreshold": 1, "failureThreshold": 3},
                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/web", "readOnly": true},
                                      {"name": "cache", "mountPath": "/cache"}]},
                    {"name": "log-shipper", "image": "registry.local/shipper:2",
                     "command": ["/bin/ship", "--from=/cache/logs"],
                     "volumeMounts": [{"name": "cache", "mountPath": "/cache", "subPath": "logs"}]}
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": "web-config"}},
                    {"name": "cache", "emptyDir": {}}
                ],
                "nodeSelector": {"disk": "ssd"}
            },
            "status": {
                "phase": "Running", "hostIP": "192.168.1.10",
                "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
                "startTime": "2026-11-23T23:00:00Z",
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                    {"type": "PodScheduled", "status": "True"}
                ],
                "containerStatuses": [
                    {"name": "web", "image": "registry.local/web:1.4",
                     "imageID": "registry.local/web@sha256:4f3c", "containerID": "containerd://9a8b7c",
                     "ready": true, "restartCount": 2, "started": true,
                     "state": {"running": {"startedAt": "2026-11-23T23:10:05Z"}},
                     "lastState": {"terminated": {"exitCode": 137, "reason": "Error",
                                                  "startedAt": "2026-11-23T23:05:00Z",
                                                  "finishedAt": "2026-11-23T23:10:00Z"}}},
                    {"name": "log-shipper", "image": "registry.local/shipper:2",
                     "imageID": "registry.local/shipper@sha256:77aa", "containerID": "containerd://1b2c3d",
                     "ready": true, "restartCount": 0, "started": true,
                     "state": {"running": {"startedAt": "2026-11-23T23:00:02Z"}}}
                ]
            }
        }))
    }

    #[test]
    fn a_running_pod_reads_like_kubectl_describe() {
        let want = "\
Name:             web-6d4cf56db6-x2x7q
Namespace:        demo
Priority:         0
Service Account:  default
Node:             node-1/192.168.1.10
Start Time:       Mon, 23 Nov 2026 23:00:00 +0000
Labels:           app=web
                  pod-template-hash=6d4cf56db6
Annotations:      <none>
Status:           Running
IP:               10.244.1.7
IPs:
  IP:           10.244.1.7
Controlled By:  ReplicaSet/web-6d4cf56db6
Containers:
  web:
    Container ID:  containerd://9a8b7c
    Image:         registry.local/web:1.4
    Image ID:      registry.local/web@sha256:4f3c
    Port:          8080/TCP
    Host Port:     0/TCP
    Args:
      --listen=:8080
      --verbose
    State:          Running
      Started:      Mon, 23 Nov 2026 23:10:05 +0000
    Last State:     Terminated
      Reason:       Error
      Exit Code:    137
      Started:      Mon, 23 Nov 2026 23:05:00 +0000
      Finished:     Mon, 23 Nov 2026 23:10:00 +0000
    Ready:          True
    Restart Count:  2
    Limits:
      cpu:     500m
      memory:  256Mi
    Requests:
      cpu:      250m
      memory:   128Mi
    Liveness:   http-get http://:http/healthz delay=5s timeout=1s period=10s #success=1 #failure=3
    Readiness:  tcp-socket :8080 delay=0s timeout=1s period=5s #success=1 #failure=3
    Environment:
      MODE:      production
      POD_NAME:  web-6d4cf56db6-x2x7q (v1:metadata.name)
      POD_IP:     (v1:status.podIP)
      LEVEL:     <set to the key 'level' of config map 'web-config'>  Optional: false
      TOKEN:     <set to the key 'token' in secret 'web-secret'>      Optional: true
    Mounts:
      /cache from cache (rw)
      /etc/web from config (ro)
  log-shipper:
    Container ID:  containerd://1b2c3d
    Image:         registry.local/shipper:2
    Image ID:      registry.local/shipper@sha256:77aa
    Port:          <none>
    Host Port:     <none>
    Command:
      /bin/ship
      --from=/cache/logs
    State:          Running
      Started:      Mon, 23 Nov 2026 23:00:02 +0000
    Ready:          True
    Restart Count:  0
    Environment:    <none>
    Mounts:
      /cache from cache (rw,path=\"logs\")
Conditions:
  Type              Status
  Initialized       True
  Ready             True
  ContainersReady   True
  PodScheduled      True
Volumes:
  config:
    Type:      ConfigMap (a volume populated by a ConfigMap)
    Name:      web-config
    Optional:  false
  cache:
    Type:        EmptyDir (a temporary directory that shares a pod's lifetime)
    Medium:
    SizeLimit:   <unset>
QoS Class:       Burstable
Node-Selectors:  disk=ssd
Tolerations:     <none>
Events:          <none>
";
        assert_eq!(describe_pod(&web_pod(), now()), want);
    }

    #[test]
    fn git_owned_pods_say_where_they_came_from() {
        let mut p = pod(json!({
            "metadata": {"name": "debug", "namespace": "demo",
                         "annotations": {"commitd.io/commit": "0123456789abcdef0123456789abcdef01234567",
                                         "commitd.io/source": "apps/debug.yaml:1"}},
            "spec": {"serviceAccountName": "tools",
                     "containers": [{"name": "sh", "image": "busybox",
                                     "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}],
                     "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                                      "effect": "NoExecute", "tolerationSeconds": 300},
                                     {"key": "dedicated", "operator": "Equal", "value": "tools",
                                      "effect": "NoSchedule"}]},
            "status": {"phase": "Pending",
                       "containerStatuses": [{"name": "sh", "image": "busybox", "imageID": "",
                                              "ready": false, "restartCount": 0,
                                              "state": {"waiting": {"reason": "ContainerCreating"}}}]}
        }));
        let text = describe_pod(&p, now());
        let want = "\
Name:             debug
Namespace:        demo
Priority:         0
Service Account:  tools
Node:             <none>
Labels:           <none>
Annotations:      commitd.io/commit: 0123456789abcdef0123456789abcdef01234567
                  commitd.io/source: apps/debug.yaml:1
Status:           Pending
IP:
IPs:              <none>
Containers:
  sh:
    Container ID:
    Image:          busybox
    Image ID:
    Port:           <none>
    Host Port:      <none>
    State:          Waiting
      Reason:       ContainerCreating
    Ready:          False
    Restart Count:  0
    Limits:
      cpu:        1
      memory:     64Mi
    Environment:  <none>
    Mounts:       <none>
Volumes:          <none>
QoS Class:        Guaranteed
Node-Selectors:   <none>
Tolerations:      dedicated=tools:NoSchedule
                  node.kubernetes.io/unreachable:NoExecute op=Exists for 300s
Source:           apps/debug.yaml:1
Commit:           0123456789abcdef0123456789abcdef01234567
Events:           <none>
";
        assert_eq!(text, want);

        // Being deleted: how long ago, and the grace period it was given.
        p.metadata.deletion_timestamp =
            Some(Time("2026-11-23T23:59:50Z".parse().expect("valid time")));
        p.metadata.deletion_grace_period_seconds = Some(30);
        let text = describe_pod(&p, now());
        assert!(
            text.contains("\nStatus:                    Terminating (lasts 10s)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nTermination Grace Period:  30s\n"),
            "{text}"
        );
    }

    #[test]
    fn init_containers_come_before_containers() {
        let p = pod(json!({
            "metadata": {"name": "migrate", "namespace": "demo"},
            "spec": {"initContainers": [{"name": "schema", "image": "registry.local/migrate:1"}],
                     "containers": [{"name": "app", "image": "registry.local/app:1",
                                     "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}]}]},
            "status": {"phase": "Pending",
                       "initContainerStatuses": [{"name": "schema", "image": "registry.local/migrate:1",
                                                  "imageID": "", "ready": false, "restartCount": 1,
                                                  "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                                                           "message": "no database", "signal": 0}},
                                                  "lastState": {"terminated": {"exitCode": 1}}}],
                       "containerStatuses": [{"name": "app", "image": "registry.local/app:1", "imageID": "",
                                              "ready": false, "restartCount": 0,
                                              "state": {"waiting": {"reason": "PodInitializing"}}}]}
        }));
        let text = describe_pod(&p, now());
        let init = text
            .find("\nInit Containers:\n  schema:\n")
            .expect("init containers");
        let main = text.find("\nContainers:\n  app:\n").expect("containers");
        assert!(init < main, "{text}");
        for line in [
            "    State:          Terminated\n      Reason:       Error\n      Message:      no database\n      Exit Code:    1\n",
            // A last state without times prints Go's zero time, as kubectl does.
            "    Last State:     Terminated\n      Exit Code:    1\n      Started:      Mon, 01 Jan 0001 00:00:00 +0000\n",
            "    Ports:          80/TCP, 53/UDP\n    Host Ports:     0/TCP, 5353/UDP\n",
            // No line without a tab since the last container: one block.
            "    Mounts:         <none>\nVolumes:            <none>\nQoS Class:          BestEffort\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn probes_read_like_kubectl() {
        assert_eq!(
            describe_probe(&probe(
                json!({"httpGet": {"path": "/healthz", "port": "http"}})
            )),
            "http-get http://:http/healthz delay=0s timeout=1s period=10s #success=1 #failure=3"
        );
        assert_eq!(
            describe_probe(&probe(json!({
                "httpGet": {"host": "fd00::1", "path": "ready?full=1", "port": 8443, "scheme": "HTTPS"},
                "initialDelaySeconds": 3, "timeoutSeconds": 2, "periodSeconds": 5,
                "successThreshold": 2, "failureThreshold": 6
            }))),
            "http-get https://[fd00::1]:8443/ready%3Ffull=1 delay=3s timeout=2s period=5s #success=2 #failure=6"
        );
        assert_eq!(
            describe_probe(&probe(json!({"exec": {"command": ["cat", "/tmp/healthy"]},
                                         "periodSeconds": 1, "failureThreshold": 1}))),
            "exec [cat /tmp/healthy] delay=0s timeout=1s period=1s #success=1 #failure=1"
        );
        assert_eq!(
            describe_probe(&probe(
                json!({"tcpSocket": {"port": 80}, "initialDelaySeconds": 15})
            )),
            "tcp-socket :80 delay=15s timeout=1s period=10s #success=1 #failure=3"
        );
        assert_eq!(
            describe_probe(&probe(json!({"tcpSocket": {"host": "db", "port": "pg"}}))),
            "tcp-socket db:pg delay=0s timeout=1s period=10s #success=1 #failure=3"
        );
        assert_eq!(
            describe_probe(&probe(json!({"grpc": {"port": 9090, "service": "health"}}))),
            "grpc <pod>:9090 health delay=0s timeout=1s period=10s #success=1 #failure=3"
        );
        // An unset gRPC service is "" after defaulting: two spaces, as kubectl.
        assert_eq!(
            describe_probe(&probe(json!({"grpc": {"port": 9090}}))),
            "grpc <pod>:9090  delay=0s timeout=1s period=10s #success=1 #failure=3"
        );
        assert_eq!(
            describe_probe(&probe(json!({"periodSeconds": 2}))),
            "unknown delay=0s timeout=1s period=2s #success=1 #failure=3"
        );
    }

    fn with_resources(containers: serde_json::Value) -> Pod {
        pod(json!({"metadata": {"name": "p"}, "spec": {"containers": containers}}))
    }

    #[test]
    fn qos_class_is_computed_like_kubernetes() {
        let c = |resources: serde_json::Value| json!({"name": "c", "resources": resources});
        let cases = [
            (json!([c(json!({}))]), "BestEffort"),
            (json!([{"name": "c"}]), "BestEffort"),
            // Zero counts as unset.
            (json!([c(json!({"requests": {"cpu": "0"}}))]), "BestEffort"),
            (
                json!([c(json!({"requests": {"cpu": "100m"}}))]),
                "Burstable",
            ),
            (
                json!([c(json!({"limits": {"cpu": "1", "memory": "1Gi"},
                                "requests": {"cpu": "1000m", "memory": "1024Mi"}}))]),
                "Guaranteed",
            ),
            // Requests default to limits.
            (
                json!([c(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]),
                "Guaranteed",
            ),
            (
                json!([c(json!({"limits": {"cpu": "1", "memory": "1Gi"},
                                "requests": {"cpu": "500m"}}))]),
                "Burstable",
            ),
            // Every container must limit both.
            (json!([c(json!({"limits": {"cpu": "1"}}))]), "Burstable"),
            (
                json!([c(json!({"limits": {"cpu": "1", "memory": "1Gi"}})), {"name": "d"}]),
                "Burstable",
            ),
            // Other resources do not count.
            (
                json!([c(json!({"requests": {"ephemeral-storage": "1Gi"}}))]),
                "BestEffort",
            ),
        ];
        for (containers, want) in cases {
            let p = with_resources(containers.clone());
            assert_eq!(qos_class(&p), want, "{containers}");
        }

        // Init containers count as containers do.
        let mut p = with_resources(json!([c(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))]));
        p.spec.as_mut().expect("spec").init_containers = Some(vec![serde_json::from_value(
            json!({"name": "i", "resources": {"requests": {"memory": "1Mi"}}}),
        )
        .expect("container")]);
        assert_eq!(qos_class(&p), "Burstable");

        // The class the node reported wins over the computed one.
        let mut p = with_resources(json!([c(json!({}))]));
        p.status = Some(serde_json::from_value(json!({"qosClass": "Burstable"})).expect("status"));
        assert!(describe_pod(&p, now()).contains("\nQoS Class:        Burstable\n"));
    }

    #[test]
    fn resource_field_refs_and_env_from() {
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {"containers": [{
                "name": "c", "image": "app",
                "envFrom": [{"configMapRef": {"name": "base"}},
                            {"secretRef": {"name": "creds", "optional": true}, "prefix": "DB_"}],
                "env": [
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "MAXCPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "BANNER", "value": "one\ntwo"}
                ],
                "resources": {"limits": {"memory": "100M"}, "requests": {"cpu": "250m"}}
            }]}
        }));
        let text = describe_pod(&p, now());
        let want = "    Environment Variables from:
      base   ConfigMap                 Optional: false
      creds  Secret with prefix 'DB_'  Optional: true
    Environment:
      CPU:       250 (requests.cpu)
      MEM:       96 (limits.memory)
      MAXCPU:    node allocatable (limits.cpu)
      BANNER:    one
                 two
    Mounts:      <none>
Volumes:         <none>
";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn volumes_and_mounts() {
        let p = pod(json!({
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {"containers": [{"name": "c", "image": "app",
                                     "volumeMounts": [{"name": "logs", "mountPath": "/var/log"}]}],
                     "volumes": [
                         {"name": "logs", "hostPath": {"path": "/var/log/app", "type": "DirectoryOrCreate"}},
                         {"name": "tls", "secret": {"secretName": "web-tls", "optional": true}},
                         {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                         {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
                     ]}
        }));
        let text = describe_pod(&p, now());
        let want = "Volumes:
  logs:
    Type:          HostPath (bare host directory volume)
    Path:          /var/log/app
    HostPathType:  DirectoryOrCreate
  tls:
    Type:        Secret (a volume populated by a Secret)
    SecretName:  web-tls
    Optional:    true
  scratch:
    Type:       EmptyDir (a temporary directory that shares a pod's lifetime)
    Medium:     Memory
    SizeLimit:  64Mi
  data:
  <unknown>
QoS Class:       BestEffort
";
        assert!(text.contains(want), "{text}");
        assert!(
            text.contains("    Mounts:\n      /var/log from logs (rw)\n"),
            "{text}"
        );
    }

    #[test]
    fn go_formats() {
        assert_eq!(escape_path("/a b/ü?x#y"), "/a%20b/%C3%BC%3Fx%23y");
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(
            rfc1123z(Some(&Time("2026-01-05T07:08:09.5Z".parse().expect("time")))),
            "Mon, 05 Jan 2026 07:08:09 +0000"
        );
    }
}
