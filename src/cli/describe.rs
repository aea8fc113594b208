//! `commitd describe`: one object in words, as `kubectl describe` prints
//! it, for the kinds where a table row is not enough. Services: their
//! address, ports, node ports and the endpoints behind each port, and the
//! commit and file they came from. Pods: see [`super::describe_pod`].
//! Read-only, like every command but `up`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use commitd_api::k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use commitd_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use commitd_api::k8s_openapi::jiff::Timestamp;
use commitd_api::meta::{self, COMMIT_ANNOTATION, SOURCE_ANNOTATION};
use commitd_api::{Kind, Object, Store};

use super::describe_pod::describe_pod;
use super::get::qualified_resource;
use super::output::{self, format_endpoints, format_labels, tabbed};
use super::ClusterArgs;

/// kubectl's longest annotation line before it wraps the value.
const MAX_ANNOTATION_LEN: usize = 140;

/// Arguments of `commitd describe`, spelled as kubectl spells them.
#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// What to describe: KIND [NAME...] (e.g. `service web`, `pods`) or
    /// KIND/NAME (e.g. `svc/web`, `po/web-1`). Without a name, every object
    /// of the kind in the namespace. Kinds: pods, services.
    #[arg(value_name = "RESOURCE", required = true)]
    pub resources: Vec<String>,
    /// Namespace to read from.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Read from every namespace (only without names).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Describes objects. Exit 0 when everything asked for was described, 1
/// when a kind is unknown or unsupported, or a named object is missing.
pub async fn run(args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let (kind, names) = match parse(&args.resources) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(1));
        }
    };
    if !names.is_empty() && args.all_namespaces {
        eprintln!("error: a resource cannot be retrieved by name across all namespaces");
        return Ok(ExitCode::from(1));
    }
    let store = args.cluster.connect().await?;
    let scope = (!args.all_namespaces).then_some(args.namespace.as_str());

    let (described, missing) = if kind == Kind::Pod {
        let (pods, missing) = fetch::<Pod>(&store, scope, &names).await?;
        let now = Timestamp::now();
        let described: Vec<String> = pods.iter().map(|p| describe_pod(p, now)).collect();
        (described, missing)
    } else {
        let (services, missing) = fetch::<Service>(&store, scope, &names).await?;
        let mut described = Vec::with_capacity(services.len());
        for svc in &services {
            let endpoints = endpoints_of(&store, svc).await?;
            described.push(describe_service(svc, endpoints.as_ref()));
        }
        (described, missing)
    };
    // kubectl separates descriptions with two blank lines.
    output::emit(&described.join("\n\n"))?;
    for name in &missing {
        eprintln!(
            "Error from server (NotFound): {} \"{name}\" not found",
            qualified_resource(kind)
        );
    }
    if names.is_empty() && described.is_empty() {
        if args.all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", args.namespace);
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads `KIND [NAME...]` or `KIND/NAME...` (one kind), as kubectl does.
fn parse(args: &[String]) -> Result<(Kind, Vec<String>), String> {
    let Some(first) = args.first() else {
        return Err("You must specify the type of resource to describe.".into());
    };
    let resolve = |word: &str| {
        let kind = Kind::from_cli(word)
            .ok_or_else(|| format!("the server doesn't have a resource type \"{word}\""))?;
        if kind != Kind::Service && kind != Kind::Pod {
            return Err(format!(
                "describing {} is not supported yet; try `commitd get {} -o yaml`",
                kind.plural(),
                kind.plural()
            ));
        }
        Ok(kind)
    };
    if first.contains('/') {
        let mut kind = None;
        let mut names = Vec::new();
        for arg in args {
            let (k, name) = arg
                .split_once('/')
                .filter(|(k, n)| !k.is_empty() && !n.is_empty())
                .ok_or_else(|| {
                    format!(
                        "arguments in resource/name form must have a single resource and name, got \"{arg}\""
                    )
                })?;
            let this = resolve(k)?;
            if kind.is_some_and(|k| k != this) {
                return Err(format!(
                    "describe takes one resource type at a time, got \"{first}\" and \"{arg}\""
                ));
            }
            kind = Some(this);
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        return Ok((kind.unwrap_or(Kind::Service), names));
    }
    if first.contains(',') {
        return Err(format!(
            "describe takes one resource type at a time, got \"{first}\""
        ));
    }
    let kind = resolve(first)?;
    let mut names: Vec<String> = Vec::new();
    for name in &args[1..] {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok((kind, names))
}

/// The named objects of a kind (and the names not found), or every one in
/// scope when no name is given.
async fn fetch<T: Object>(
    store: &Store,
    scope: Option<&str>,
    names: &[String],
) -> anyhow::Result<(Vec<T>, Vec<String>)> {
    if names.is_empty() {
        return Ok((super::list_objects::<T>(store, scope).await?, Vec::new()));
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let object = store.get::<T>(scope, name).await.with_context(|| {
            format!(
                "reading {} {name}",
                T::STORE_KIND.name().to_ascii_lowercase()
            )
        })?;
        match object {
            Some(o) => found.push(o),
            None => missing.push(name.clone()),
        }
    }
    Ok((found, missing))
}

/// The Endpoints of the same namespace and name, if any.
async fn endpoints_of(store: &Store, svc: &Service) -> anyhow::Result<Option<Endpoints>> {
    store
        .get::<Endpoints>(meta::namespace(svc), meta::name(svc))
        .await
        .with_context(|| format!("reading endpoints {}", meta::display_key(svc)))
}

/// A Service as `kubectl describe service` prints it, with the Endpoints
/// that serve it, plus where it came from in Git. Events are not printed:
/// commitd records none.
pub fn describe_service(svc: &Service, endpoints: Option<&Endpoints>) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut w = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(w, "Name:\t{}", meta::name(svc));
    let _ = writeln!(
        w,
        "Namespace:\t{}",
        meta::namespace(svc).unwrap_or_default()
    );
    multiline_labels(&mut w, "Labels", svc.metadata.labels.as_ref());
    multiline_annotations(&mut w, "Annotations", svc.metadata.annotations.as_ref());
    let _ = writeln!(w, "Selector:\t{}", format_labels(spec.selector.as_ref()));
    let _ = writeln!(w, "Type:\t{}", spec.type_.as_deref().unwrap_or("ClusterIP"));
    if let Some(policy) = &spec.ip_family_policy {
        let _ = writeln!(w, "IP Family Policy:\t{policy}");
    }
    let families = spec.ip_families.clone().unwrap_or_default();
    let _ = writeln!(w, "IP Families:\t{}", none_if_empty(&families.join(",")));
    let _ = writeln!(w, "IP:\t{}", spec.cluster_ip.as_deref().unwrap_or_default());
    let ips = spec.cluster_ips.clone().unwrap_or_default();
    let _ = writeln!(w, "IPs:\t{}", none_if_empty(&ips.join(",")));
    if let Some(external) = spec.external_ips.as_ref().filter(|e| !e.is_empty()) {
        let _ = writeln!(w, "External IPs:\t{}", external.join(","));
    }
    if let Some(ip) = spec.load_balancer_ip.as_ref().filter(|ip| !ip.is_empty()) {
        let _ = writeln!(w, "IP:\t{ip}");
    }
    if let Some(class) = &spec.load_balancer_class {
        let _ = writeln!(w, "LoadBalancer Class:\t{class}");
    }
    let ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    if !ingress.is_empty() {
        let _ = writeln!(w, "LoadBalancer Ingress:\t{}", ingress.join(", "));
    }
    if let Some(name) = spec.external_name.as_ref().filter(|n| !n.is_empty()) {
        let _ = writeln!(w, "External Name:\t{name}");
    }
    for port in spec.ports.iter().flatten() {
        let name = port.name.as_deref().filter(|n| !n.is_empty());
        let shown = name.unwrap_or("<unset>");
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let _ = writeln!(w, "Port:\t{shown}\t{}/{protocol}", port.port);
        let target = match &port.target_port {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) => s.clone(),
            None => port.port.to_string(),
        };
        let _ = writeln!(w, "TargetPort:\t{target}/{protocol}");
        if let Some(node_port) = port.node_port.filter(|n| *n != 0) {
            let _ = writeln!(w, "NodePort:\t{shown}\t{node_port}/{protocol}");
        }
        let listed = endpoints
            .map(|ep| format_endpoints(ep, Some(name.unwrap_or_default())))
            .unwrap_or_default();
        let _ = writeln!(w, "Endpoints:\t{}", none_if_empty(&listed));
    }
    let _ = writeln!(
        w,
        "Session Affinity:\t{}",
        spec.session_affinity.as_deref().unwrap_or("None")
    );
    if let Some(policy) = &spec.external_traffic_policy {
        let _ = writeln!(w, "External Traffic Policy:\t{policy}");
    }
    if let Some(policy) = &spec.internal_traffic_policy {
        let _ = writeln!(w, "Internal Traffic Policy:\t{policy}");
    }
    if let Some(port) = spec.health_check_node_port.filter(|p| *p != 0) {
        let _ = writeln!(w, "HealthCheck NodePort:\t{port}");
    }
    if let Some(ranges) = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
    {
        let _ = writeln!(w, "LoadBalancer Source Ranges:\t{}", ranges.join(","));
    }
    let source = meta::annotation(&svc.metadata, SOURCE_ANNOTATION);
    let commit = meta::annotation(&svc.metadata, COMMIT_ANNOTATION);
    let _ = writeln!(w, "Source:\t{}", source.unwrap_or("<none>"));
    let _ = writeln!(w, "Commit:\t{}", commit.unwrap_or("<none>"));
    tabbed(&w)
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

/// kubectl's `printLabelsMultiline`: one `key=value` per line, sorted,
/// continuation lines aligned under the first value.
pub(super) fn multiline_labels(
    w: &mut String,
    title: &str,
    labels: Option<&BTreeMap<String, String>>,
) {
    let labels = labels.filter(|l| !l.is_empty());
    let Some(labels) = labels else {
        let _ = writeln!(w, "{title}:\t<none>");
        return;
    };
    for (i, (k, v)) in labels.iter().enumerate() {
        let lead = if i == 0 {
            format!("{title}:")
        } else {
            String::new()
        };
        let _ = writeln!(w, "{lead}\t{k}={v}");
    }
}

/// kubectl's `printAnnotationsMultiline`: `key: value` per line, sorted;
/// long or multi-line values go below their key, each line cut at
/// kubectl's width.
pub(super) fn multiline_annotations(
    w: &mut String,
    title: &str,
    annotations: Option<&BTreeMap<String, String>>,
) {
    let Some(annotations) = annotations.filter(|a| !a.is_empty()) else {
        let _ = writeln!(w, "{title}:\t<none>");
        return;
    };
    for (i, (k, v)) in annotations.iter().enumerate() {
        let lead = if i == 0 {
            format!("{title}:")
        } else {
            String::new()
        };
        let value = v.strip_suffix('\n').unwrap_or(v);
        if value.chars().count() + k.chars().count() + 2 > MAX_ANNOTATION_LEN
            || value.contains('\n')
        {
            let _ = writeln!(w, "{lead}\t{k}:");
            for line in value.split('\n') {
                let _ = writeln!(w, "\t  {}", shorten(line, MAX_ANNOTATION_LEN - 2));
            }
        } else {
            let _ = writeln!(w, "{lead}\t{k}: {value}");
        }
    }
}

/// Cuts `s` to `max` characters plus `...`, as kubectl's `shorten`.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max).collect::<String>() + "..."
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> Service {
        let mut svc: Service = serde_json::from_value(v).expect("valid service");
        commitd_api::defaults::service(&mut svc);
        svc
    }

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn arguments_parse_like_kubectl() {
        assert_eq!(
            parse(&args(&["svc", "web", "db", "web"])),
            Ok((Kind::Service, vec!["web".to_string(), "db".to_string()]))
        );
        assert_eq!(parse(&args(&["services"])), Ok((Kind::Service, vec![])));
        assert_eq!(
            parse(&args(&["service/web"])),
            Ok((Kind::Service, vec!["web".to_string()]))
        );
        assert_eq!(
            parse(&args(&["widgets"])),
            Err("the server doesn't have a resource type \"widgets\"".to_string())
        );
        assert_eq!(
            parse(&args(&["pods", "web"])),
            Ok((Kind::Pod, vec!["web".to_string()]))
        );
        assert_eq!(parse(&args(&["pod"])), Ok((Kind::Pod, vec![])));
        assert_eq!(
            parse(&args(&["po/web-1", "po/web-2"])),
            Ok((Kind::Pod, vec!["web-1".to_string(), "web-2".to_string()]))
        );
        assert_eq!(
            parse(&args(&["deploy", "web"])),
            Err("describing deployments is not supported yet; try `commitd get deployments -o yaml`"
                .to_string())
        );
        assert!(parse(&args(&["svc/web", "po/web-1"]))
            .expect_err("one kind at a time")
            .contains("one resource type at a time"));
        assert!(parse(&args(&["svc/"])).is_err());
        assert!(parse(&args(&["svc,ep"])).is_err());
    }

    #[test]
    fn a_service_reads_like_kubectl_describe() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "demo",
                         "labels": {"app": "web", "team": "a"},
                         "annotations": {"commitd.io/commit": "0123456789abcdef0123456789abcdef01234567",
                                         "commitd.io/source": "apps/web.yaml:21"}},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                               {"name": "metrics", "port": 9090, "targetPort": 9100, "nodePort": 30090}]}
        }));
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "subsets": [{"addresses": [{"ip": "10.244.0.11"}, {"ip": "10.244.0.12"}],
                         "notReadyAddresses": [{"ip": "10.244.0.13"}],
                         "ports": [{"name": "http", "port": 8080}]}]
        }))
        .expect("valid endpoints");
        let want = "\
Name:                     web
Namespace:                demo
Labels:                   app=web
                          team=a
Annotations:              commitd.io/commit: 0123456789abcdef0123456789abcdef01234567
                          commitd.io/source: apps/web.yaml:21
Selector:                 app=web
Type:                     NodePort
IP Family Policy:         SingleStack
IP Families:              IPv4
IP:                       10.96.0.10
IPs:                      10.96.0.10
Port:                     http  80/TCP
TargetPort:               http/TCP
NodePort:                 http  30080/TCP
Endpoints:                10.244.0.11:8080,10.244.0.12:8080
Port:                     metrics  9090/TCP
TargetPort:               9100/TCP
NodePort:                 metrics  30090/TCP
Endpoints:                <none>
Session Affinity:         None
External Traffic Policy:  Cluster
Internal Traffic Policy:  Cluster
Source:                   apps/web.yaml:21
Commit:                   0123456789abcdef0123456789abcdef01234567
";
        assert_eq!(describe_service(&svc, Some(&ep)), want);
    }

    #[test]
    fn headless_and_external_name_services() {
        let db = service(json!({
            "metadata": {"name": "db", "namespace": "demo"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"},
                     "ports": [{"port": 5432}]}
        }));
        let line = |key: &str, value: &str, width: usize| format!("\n{key:<width$}{value}\n");
        let text = describe_service(&db, None);
        // The widest title here is "Internal Traffic Policy:".
        for (key, value) in [
            ("Labels:", "<none>"),
            ("IP:", "None"),
            ("Port:", "<unset>  5432/TCP"),
            ("TargetPort:", "5432/TCP"),
            ("Endpoints:", "<none>"),
            ("Source:", "<none>"),
        ] {
            assert!(text.contains(&line(key, value, 26)), "{key} in {text}");
        }
        assert!(!text.contains("External Traffic Policy"), "{text}");

        let ext = service(json!({
            "metadata": {"name": "ext", "namespace": "demo"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}
        }));
        let text = describe_service(&ext, None);
        // No traffic policies: "Session Affinity:" is the widest title.
        for (key, value) in [
            ("IP Families:", "<none>"),
            ("IPs:", "<none>"),
            ("External Name:", "db.example.com"),
        ] {
            assert!(text.contains(&line(key, value, 19)), "{key} in {text}");
        }
        assert!(!text.contains("IP Family Policy"), "{text}");
    }

    #[test]
    fn endpoints_per_port_are_truncated_like_kubectl() {
        let svc = service(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]}
        }));
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"},
                                       {"ip": "10.0.0.4"}, {"ip": "10.0.0.5"}],
                         "ports": [{"port": 80}]}]
        }))
        .expect("valid endpoints");
        let text = describe_service(&svc, Some(&ep));
        assert!(
            text.contains(
                "Endpoints:                10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 2 more...\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn long_annotations_wrap_below_their_key() {
        let mut w = String::new();
        let long = "x".repeat(150);
        let annotations = BTreeMap::from([
            ("a".to_string(), long.clone()),
            ("b".to_string(), "one\ntwo\n".to_string()),
        ]);
        multiline_annotations(&mut w, "Annotations", Some(&annotations));
        assert_eq!(
            w,
            format!(
                "Annotations:\ta:\n\t  {}...\n\tb:\n\t  one\n\t  two\n",
                "x".repeat(138)
            )
        );
    }
}
