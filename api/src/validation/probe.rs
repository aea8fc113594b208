//! Kubernetes' validation of container probes (liveness, readiness,
//! startup), with its messages. Objects are defaulted before they are
//! validated, so a field left out here is one Kubernetes would have filled
//! in (`scheme: HTTP`, `successThreshold: 1`) and is not reported.

use k8s_openapi::api::core::v1::{
    ExecAction, GRPCAction, HTTPGetAction, Lifecycle, Probe, SleepAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{is_port_name, FieldErrors, PORT_NAME_MSG};
use crate::field_path::FieldPath;

const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";
const NEGATIVE_MSG: &str = "must be greater than or equal to 0";
const HTTP_HEADER_NAME_MSG: &str = "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')";

/// Which of a container's probes is checked: liveness and startup probes
/// pass on one success, and a readiness probe never kills the container,
/// so it has no grace period of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

/// Validates one probe; `p` is the probe's own path
/// (`spec.containers[0].livenessProbe`).
pub(crate) fn probe(pr: &Probe, kind: ProbeKind, p: &FieldPath, errs: &mut FieldErrors) {
    handler(pr, p, errs);
    let counts = [
        ("initialDelaySeconds", pr.initial_delay_seconds),
        ("timeoutSeconds", pr.timeout_seconds),
        ("periodSeconds", pr.period_seconds),
        ("successThreshold", pr.success_threshold),
        ("failureThreshold", pr.failure_threshold),
    ];
    for (field, value) in counts {
        if let Some(v) = value.filter(|v| *v < 0) {
            errs.invalid(p.key(field), v, NEGATIVE_MSG);
        }
    }
    let grace = pr.termination_grace_period_seconds;
    if let Some(g) = grace.filter(|g| *g <= 0) {
        errs.invalid(
            p.key("terminationGracePeriodSeconds"),
            g,
            "must be greater than 0",
        );
    }
    match kind {
        ProbeKind::Liveness | ProbeKind::Startup => {
            if let Some(s) = pr.success_threshold.filter(|s| *s != 1) {
                errs.invalid(p.key("successThreshold"), s, "must be 1");
            }
        }
        ProbeKind::Readiness => {
            if let Some(g) = grace {
                errs.invalid(
                    p.key("terminationGracePeriodSeconds"),
                    g,
                    "must not be set for readinessProbes",
                );
            }
        }
    }
}

/// The actions a probe or a lifecycle hook may name, one of which it must.
struct Actions<'a> {
    exec: Option<&'a ExecAction>,
    http_get: Option<&'a HTTPGetAction>,
    tcp_socket: Option<&'a TCPSocketAction>,
    grpc: Option<&'a GRPCAction>,
    sleep: Option<&'a SleepAction>,
}

fn handler(pr: &Probe, p: &FieldPath, errs: &mut FieldErrors) {
    let actions = Actions {
        exec: pr.exec.as_ref(),
        http_get: pr.http_get.as_ref(),
        tcp_socket: pr.tcp_socket.as_ref(),
        grpc: pr.grpc.as_ref(),
        sleep: None,
    };
    one_action(&actions, p, errs);
}

/// A container's `lifecycle`: each of `postStart` and `preStop` names
/// exactly one action (exec, httpGet, tcpSocket or sleep).
pub(crate) fn lifecycle(l: &Lifecycle, p: &FieldPath, errs: &mut FieldErrors) {
    for (field, hook) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
        let Some(h) = hook else { continue };
        let actions = Actions {
            exec: h.exec.as_ref(),
            http_get: h.http_get.as_ref(),
            tcp_socket: h.tcp_socket.as_ref(),
            grpc: None,
            sleep: h.sleep.as_ref(),
        };
        one_action(&actions, &p.key(field), errs);
    }
}

/// Exactly one action. As in Kubernetes, the first one given (in the
/// order exec, httpGet, tcpSocket, grpc, sleep) is validated and each later
/// one is reported as forbidden.
fn one_action(a: &Actions<'_>, p: &FieldPath, errs: &mut FieldErrors) {
    let mut count = 0;
    if let Some(exec) = a.exec {
        if let Some(hp) = first_handler(&mut count, p.key("exec"), errs) {
            if exec.command.as_ref().is_none_or(Vec::is_empty) {
                errs.required(hp.key("command"));
            }
        }
    }
    if let Some(get) = a.http_get {
        if let Some(hp) = first_handler(&mut count, p.key("httpGet"), errs) {
            http_get(get, &hp, errs);
        }
    }
    if let Some(tcp) = a.tcp_socket {
        if let Some(hp) = first_handler(&mut count, p.key("tcpSocket"), errs) {
            port(&tcp.port, hp.key("port"), errs);
        }
    }
    if let Some(grpc) = a.grpc {
        if let Some(hp) = first_handler(&mut count, p.key("grpc"), errs) {
            port_number(grpc.port, hp.key("port"), errs);
        }
    }
    if let Some(sleep) = a.sleep {
        if let Some(hp) = first_handler(&mut count, p.key("sleep"), errs) {
            if sleep.seconds < 0 {
                errs.invalid(
                    hp.key("seconds"),
                    sleep.seconds,
                    "must be non-negative and less than terminationGracePeriodSeconds",
                );
            }
        }
    }
    if count == 0 {
        errs.add(p.clone(), "Required value: must specify a handler type");
    }
}

/// Counts a handler: its path if it is the first, which gets validated;
/// otherwise reports it and returns `None`.
fn first_handler(count: &mut u32, path: FieldPath, errs: &mut FieldErrors) -> Option<FieldPath> {
    *count += 1;
    if *count == 1 {
        Some(path)
    } else {
        errs.forbidden(path, "may not specify more than 1 handler type");
        None
    }
}

/// The port, the scheme (HTTP or HTTPS) and the header names; Kubernetes
/// reports a bad header name on `httpHeaders` itself, not on its index.
fn http_get(get: &HTTPGetAction, p: &FieldPath, errs: &mut FieldErrors) {
    port(&get.port, p.key("port"), errs);
    if let Some(scheme) = get.scheme.as_deref().filter(|s| !s.is_empty()) {
        if !["HTTP", "HTTPS"].contains(&scheme) {
            errs.unsupported(p.key("scheme"), scheme, &["HTTP", "HTTPS"]);
        }
    }
    for h in get.http_headers.iter().flatten() {
        if !is_http_header_name(&h.name) {
            errs.invalid(
                p.key("httpHeaders"),
                format!("\"{}\"", h.name),
                HTTP_HEADER_NAME_MSG,
            );
        }
    }
}

/// A port number, or the name of one of the container's ports.
fn port(port: &IntOrString, p: FieldPath, errs: &mut FieldErrors) {
    match port {
        IntOrString::Int(n) => port_number(*n, p, errs),
        IntOrString::String(name) if !is_port_name(name) => {
            errs.invalid(p, format!("\"{name}\""), PORT_NAME_MSG)
        }
        IntOrString::String(_) => {}
    }
}

fn port_number(n: i32, p: FieldPath, errs: &mut FieldErrors) {
    if !(1..=65535).contains(&n) {
        errs.invalid(p, n, PORT_RANGE_MSG);
    }
}

/// Whether `s` is a valid HTTP header name (`[-A-Za-z0-9]+`).
fn is_http_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::Validate;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    /// The errors of a pod whose only container has `probes` (a map from
    /// probe field to probe) and is otherwise valid.
    fn errors(probes: serde_json::Value) -> Vec<String> {
        let mut c = json!({"name": "c", "image": "i"});
        for (k, v) in probes.as_object().expect("an object of probes") {
            c[k] = v.clone();
        }
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [c]}}))
                .expect("decodes");
        let mut errs = FieldErrors::default();
        pod.validate(&mut errs);
        errs.0
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect()
    }

    #[test]
    fn lifecycle_hooks_name_one_action() {
        assert!(errors(json!({"lifecycle": {
            "postStart": {"exec": {"command": ["true"]}},
            "preStop": {"sleep": {"seconds": 5}}
        }}))
        .is_empty());
        assert_eq!(
            errors(json!({"lifecycle": {
                "postStart": {},
                "preStop": {"exec": {"command": []}, "sleep": {"seconds": -1}}
            }})),
            vec![
                "spec.containers[0].lifecycle.postStart: Required value: must specify a handler type",
                "spec.containers[0].lifecycle.preStop.exec.command: Required value",
                "spec.containers[0].lifecycle.preStop.sleep: Forbidden: may not specify more than 1 handler type",
            ]
        );
        assert_eq!(
            errors(json!({"lifecycle": {"preStop": {"httpGet": {"port": 0}}}})),
            vec!["spec.containers[0].lifecycle.preStop.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive"]
        );
    }

    #[test]
    fn valid_probes_have_no_errors() {
        let got = errors(json!({
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-Probe-1", "value": "yes"}]},
                "initialDelaySeconds": 0, "timeoutSeconds": 1, "periodSeconds": 10,
                "successThreshold": 1, "failureThreshold": 3, "terminationGracePeriodSeconds": 5},
            "readinessProbe": {"tcpSocket": {"port": "http"}, "successThreshold": 2},
            "startupProbe": {"exec": {"command": ["true"]}, "failureThreshold": 30}
        }));
        assert_eq!(got, Vec::<String>::new());
        let got = errors(json!({"livenessProbe": {"grpc": {"port": 9090, "service": "x"}}}));
        assert_eq!(got, Vec::<String>::new());
    }

    #[test]
    fn a_handler_is_required() {
        let got = errors(json!({"livenessProbe": {"periodSeconds": 5}}));
        assert_eq!(
            got,
            vec!["spec.containers[0].livenessProbe: Required value: must specify a handler type"]
        );
    }

    #[test]
    fn only_one_handler_and_the_first_is_validated() {
        let got = errors(json!({"readinessProbe": {
            "exec": {"command": []}, "httpGet": {"port": 0}, "tcpSocket": {"port": 0},
            "grpc": {"port": 0}}}));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].readinessProbe.exec.command: Required value",
                "spec.containers[0].readinessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
                "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
                "spec.containers[0].readinessProbe.grpc: Forbidden: may not specify more than 1 handler type",
            ]
        );
        let got =
            errors(json!({"livenessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}}));
        assert_eq!(
            got,
            vec!["spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"]
        );
    }

    #[test]
    fn exec_needs_a_command() {
        let got = errors(json!({"startupProbe": {"exec": {}}}));
        assert_eq!(
            got,
            vec!["spec.containers[0].startupProbe.exec.command: Required value"]
        );
    }

    #[test]
    fn ports_are_numbers_in_range_or_port_names() {
        let got = errors(json!({
            "livenessProbe": {"httpGet": {"port": 0}},
            "readinessProbe": {"tcpSocket": {"port": 70000}},
            "startupProbe": {"httpGet": {"port": "Http_Port"}}
        }));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].livenessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive".to_string(),
                "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string(),
                format!("spec.containers[0].startupProbe.httpGet.port: Invalid value: \"Http_Port\": {PORT_NAME_MSG}"),
            ]
        );
        let got = errors(json!({"readinessProbe": {"tcpSocket": {"port": "metrics--1"}}}));
        assert_eq!(
            got,
            vec![format!(
                "spec.containers[0].readinessProbe.tcpSocket.port: Invalid value: \"metrics--1\": {PORT_NAME_MSG}"
            )]
        );
        let got = errors(json!({"livenessProbe": {"grpc": {"port": 0}}}));
        assert_eq!(
            got,
            vec!["spec.containers[0].livenessProbe.grpc.port: Invalid value: 0: must be between 1 and 65535, inclusive"]
        );
    }

    #[test]
    fn http_get_scheme_and_header_names() {
        let got = errors(
            json!({"livenessProbe": {"httpGet": {"port": 80, "scheme": "FTP",
            "httpHeaders": [{"name": "X-Ok", "value": "1"}, {"name": "X_Bad", "value": "2"}]}}}),
        );
        assert_eq!(
            got,
            vec![
                "spec.containers[0].livenessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\"".to_string(),
                format!("spec.containers[0].livenessProbe.httpGet.httpHeaders: Invalid value: \"X_Bad\": {HTTP_HEADER_NAME_MSG}"),
            ]
        );
        assert!(is_http_header_name("X-Header-Name"));
        assert!(!is_http_header_name(""));
        assert!(!is_http_header_name("X Header"));
    }

    #[test]
    fn counts_may_not_be_negative() {
        let got = errors(json!({"readinessProbe": {"exec": {"command": ["true"]},
            "initialDelaySeconds": -1, "timeoutSeconds": -1, "periodSeconds": -1,
            "successThreshold": -1, "failureThreshold": -1}}));
        let p = "spec.containers[0].readinessProbe";
        assert_eq!(
            got,
            [
                "initialDelaySeconds",
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold"
            ]
            .map(|f| format!("{p}.{f}: Invalid value: -1: must be greater than or equal to 0"))
        );
    }

    #[test]
    fn liveness_and_startup_succeed_once() {
        let got = errors(json!({
            "livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2},
            "readinessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2},
            "startupProbe": {"tcpSocket": {"port": 80}, "successThreshold": 3}
        }));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
                "spec.containers[0].startupProbe.successThreshold: Invalid value: 3: must be 1",
            ]
        );
        // Kubernetes reports a negative threshold twice.
        let got =
            errors(json!({"livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": -1}}));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: -1: must be greater than or equal to 0",
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: -1: must be 1",
            ]
        );
    }

    #[test]
    fn probe_grace_periods() {
        let got = errors(json!({
            "livenessProbe": {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 0},
            "readinessProbe": {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 30},
            "startupProbe": {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": -1}
        }));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].livenessProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0",
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 30: must not be set for readinessProbes",
                "spec.containers[0].startupProbe.terminationGracePeriodSeconds: Invalid value: -1: must be greater than 0",
            ]
        );
        // As in Kubernetes, a readiness probe's non-positive grace period is
        // reported for both reasons.
        let got = errors(json!({"readinessProbe": {"tcpSocket": {"port": 80},
            "terminationGracePeriodSeconds": 0}}));
        assert_eq!(
            got,
            vec![
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0",
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 0: must not be set for readinessProbes",
            ]
        );
    }

    #[test]
    fn a_defaulted_deployment_reports_template_paths() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "web", "image": "web:1",
                     "livenessProbe": {"httpGet": {"port": "http"}},
                     "readinessProbe": {"httpGet": {"port": 0}}}]}}}
        }))
        .expect("decodes");
        crate::defaults::deployment(&mut d);
        let mut errs = FieldErrors::default();
        d.validate(&mut errs);
        let got: Vec<String> = errs.0.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        assert_eq!(
            got,
            vec!["spec.template.spec.containers[0].readinessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive"]
        );
    }
}
