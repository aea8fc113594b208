//! Checks of a commit's Services against the pods the same commit declares.
//! They are warnings, not errors, as in Kubernetes: a Service may select
//! pods that come later, or from elsewhere. But a selector that matches no
//! pod template, or a named `targetPort` that no selected container
//! declares, is most often a typo, and then the Service silently has no
//! endpoints; saying so in the commit's record turns that into a message
//! naming the file and line. Service fields commitd does not act on
//! (external IPs, load balancers, `Local` traffic policies) are named too.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::diagnostic::Diagnostic;
use crate::field_path::FieldPath;
use crate::kinds::Kind;
use crate::manifest::Manifest;

/// A pod template declared in the commit: whose it is, its labels and the
/// named ports of its containers (name → protocol).
struct Template<'a> {
    owner: String,
    namespace: &'a str,
    labels: BTreeMap<String, String>,
    ports: Vec<(String, String)>,
}

fn templates(manifests: &[Manifest]) -> Vec<Template<'_>> {
    manifests
        .iter()
        .filter_map(|m| {
            let template = match m.kind {
                Kind::Pod => &m.object,
                Kind::Deployment
                | Kind::ReplicaSet
                | Kind::StatefulSet
                | Kind::DaemonSet
                | Kind::Job => m.object.pointer("/spec/template")?,
                Kind::CronJob => m.object.pointer("/spec/jobTemplate/spec/template")?,
                _ => return None,
            };
            let labels = template
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            let ports = template
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(|p| {
                    let name = p.get("name")?.as_str()?.to_string();
                    let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    Some((name, protocol.to_string()))
                })
                .collect();
            Some(Template {
                owner: m.display_name(),
                namespace: m.namespace.as_deref().unwrap_or("default"),
                labels,
                ports,
            })
        })
        .collect()
}

/// Service fields commitd accepts but does not act on, each named.
fn not_acted_on(svc: &Manifest, spec: &Value) -> Vec<Diagnostic> {
    let field = |name: &str| FieldPath::root().key("spec").key(name);
    let mut out = Vec::new();
    if spec.get("type").and_then(Value::as_str) == Some("LoadBalancer") {
        out.push(svc.warning(
            &field("type"),
            "commitd has no load balancer: the Service is served as NodePort on every node, and its EXTERNAL-IP stays <pending>",
        ));
    }
    for name in [
        "externalIPs",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
        "loadBalancerClass",
        "healthCheckNodePort",
    ] {
        let set = spec.get(name).is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        });
        if set {
            out.push(svc.warning(
                &field(name),
                "not supported by commitd yet; the field is stored but ignored",
            ));
        }
    }
    for name in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if spec.get(name).and_then(Value::as_str) == Some("Local") {
            out.push(svc.warning(&field(name), "Local is not supported by commitd yet: traffic goes to endpoints on every node (Cluster)"));
        }
    }
    out
}

/// Warnings for the commit's Services whose selector matches no pod
/// template of the commit, or whose named target port the selected
/// templates do not declare.
pub fn warnings(manifests: &[Manifest]) -> Vec<Diagnostic> {
    let templates = templates(manifests);
    let mut out = Vec::new();
    for svc in manifests.iter().filter(|m| m.kind == Kind::Service) {
        let Some(spec) = svc.object.get("spec") else {
            continue;
        };
        out.extend(not_acted_on(svc, spec));
        let selector: BTreeMap<String, String> = match spec.get("selector") {
            Some(s) if !s.is_null() => serde_json::from_value(s.clone()).unwrap_or_default(),
            _ => continue, // no selector: endpoints are managed by hand
        };
        if selector.is_empty() {
            continue;
        }
        let namespace = svc.namespace.as_deref().unwrap_or("default");
        let selected: Vec<&Template> = templates
            .iter()
            .filter(|t| {
                t.namespace == namespace && selector.iter().all(|(k, v)| t.labels.get(k) == Some(v))
            })
            .collect();
        if selected.is_empty() {
            out.push(svc.warning(
                &FieldPath::parse("spec.selector"),
                format!(
                    "selects no pod declared in this commit ({}): the Service has no endpoints until such pods exist",
                    selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ));
            continue;
        }
        for (i, port) in spec
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(name) = port.get("targetPort").and_then(Value::as_str) else {
                continue;
            };
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            for t in &selected {
                let declared = t.ports.iter().any(|(n, p)| n == name && p == protocol);
                if !declared {
                    out.push(svc.warning(
                        &FieldPath::root().key("spec").key("ports").index(i).key("targetPort"),
                        format!(
                            "no container of {} declares a {protocol} port named \"{name}\": its pods are left out of this port's endpoints",
                            t.owner
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::manifest::load_files;

    const APP: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web, tier: front}}\n    spec:\n      containers:\n      - name: web\n        image: web:1\n        ports: [{name: http, containerPort: 80}]\n";

    fn warnings(services: &str) -> Vec<String> {
        let loaded = load_files([
            ("app.yaml".to_string(), APP.as_bytes().to_vec()),
            ("svc.yaml".to_string(), services.as_bytes().to_vec()),
        ]);
        assert!(loaded.is_valid(), "{:?}", loaded.diagnostics);
        loaded.warnings().map(|d| d.to_string()).collect()
    }

    #[test]
    fn a_service_that_selects_its_pods_by_port_name_is_quiet() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";
        assert_eq!(warnings(svc), Vec::<String>::new());
        let no_selector =
            "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  ports: [{port: 80}]\n";
        assert_eq!(warnings(no_selector), Vec::<String>::new());
    }

    #[test]
    fn fields_not_acted_on_are_named() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  externalIPs: [192.0.2.1]\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";
        assert_eq!(
            warnings(svc),
            vec![
                "svc.yaml:5: warning: spec.type: commitd has no load balancer: the Service is served as NodePort on every node, and its EXTERNAL-IP stays <pending>",
                "svc.yaml:7: warning: spec.externalIPs: not supported by commitd yet; the field is stored but ignored",
                "svc.yaml:6: warning: spec.externalTrafficPolicy: Local is not supported by commitd yet: traffic goes to endpoints on every node (Cluster)",
            ]
        );
    }

    #[test]
    fn selector_typos_and_unknown_port_names_are_named() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: wbe}\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web2}\nspec:\n  selector: {tier: front}\n  ports:\n  - port: 80\n    targetPort: htp\n";
        assert_eq!(
            warnings(svc),
            vec![
                "svc.yaml:5: warning: spec.selector: selects no pod declared in this commit (app=wbe): the Service has no endpoints until such pods exist",
                "svc.yaml:15: warning: spec.ports[0].targetPort: no container of Deployment default/web declares a TCP port named \"htp\": its pods are left out of this port's endpoints",
            ]
        );
    }
}
