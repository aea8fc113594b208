//! `commitd logs`: what a container printed, as `kubectl logs` shows it —
//! the same arguments (`POD`, `pod/NAME`, `-c`, `-n`, `-f`, `-p`,
//! `--tail`, `--timestamps`) and the same messages — read from the node
//! agent of the node the pod runs on, as the API server reads them from
//! the kubelet: the Pod names its node (`spec.nodeName`), the Node its
//! `InternalIP` address and the agent's read-only port
//! (`status.daemonEndpoints.kubeletEndpoint.Port`), and
//! `GET http://IP:PORT/containerLogs/{namespace}/{pod}/{container}` streams
//! the log (see `commitd_nodeagent::logs`). So it works from any machine
//! that reaches etcd and the node.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use commitd_api::k8s_openapi::api::core::v1::{Node, Pod};
use commitd_api::{meta, Kind};
use commitd_nodeagent::logs::{fetch, ContainerRef, LogOptions, LogReply, LogStream, LogsError};
use tokio::io::AsyncWriteExt;

use super::ClusterArgs;

/// The annotation naming the container `kubectl logs` reads without `-c`.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// The exit code of a command stopped by Ctrl-C (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// Arguments of `commitd logs`, spelled as kubectl spells them.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The pod: NAME or pod/NAME.
    #[arg(value_name = "POD")]
    pub pod: String,
    /// The container, kubectl's older spelling of `-c`.
    #[arg(value_name = "CONTAINER")]
    pub inline_container: Option<String>,
    /// The container to read; needed when the pod has several.
    #[arg(short, long)]
    pub container: Option<String>,
    /// Namespace of the pod.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Keep printing new output until the container stops (or Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Read the previous instance of the container, the one before its
    /// last restart.
    #[arg(short, long)]
    pub previous: bool,
    /// Print only the last N lines; -1 prints them all.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Prefix each line with the time it was written (RFC3339Nano).
    #[arg(long)]
    pub timestamps: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Prints a container's log. Exit 0 when it was printed (even empty), 1
/// when the pod, the container, its node or its log cannot be found.
pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let name = match pod_name(&args.pod) {
        Ok(n) => n,
        Err(msg) => return fail(&format!("error: {msg}")),
    };
    if args.container.is_some() && args.inline_container.is_some() {
        return fail("error: only one of -c or an inline [CONTAINER] arg is allowed");
    }
    if args.tail < -1 {
        return fail("error: --tail must be greater than or equal to -1");
    }
    let store = args.cluster.connect().await?;
    let pod = store
        .get::<Pod>(Some(&args.namespace), &name)
        .await
        .with_context(|| format!("reading pod {}/{name}", args.namespace))?;
    let Some(pod) = pod else {
        return fail(&format!(
            "Error from server (NotFound): pods \"{name}\" not found"
        ));
    };
    let requested = args
        .container
        .as_deref()
        .or(args.inline_container.as_deref());
    let container = match pick_container(&pod, requested) {
        Ok(c) => c,
        Err(msg) => return fail(&format!("error: {msg}")),
    };
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let Some(node_name) = node_name else {
        return fail(&format!(
            "error: pod {name} is not scheduled to a node yet, so container \"{container}\" has no log"
        ));
    };
    let node = store
        .get::<Node>(None, &node_name)
        .await
        .with_context(|| format!("reading node {node_name}"))?;
    let Some(node) = node else {
        return fail(&format!(
            "error: pod {name} is bound to node {node_name}, which is not registered (no Node object)"
        ));
    };
    let addr = match agent_address(&node) {
        Ok(a) => a,
        Err(msg) => return fail(&format!("error: {msg}")),
    };
    let target = ContainerRef {
        namespace: args.namespace.clone(),
        pod: name,
        container,
    };
    let options = LogOptions {
        follow: args.follow,
        previous: args.previous,
        tail_lines: u64::try_from(args.tail).ok(),
        timestamps: args.timestamps,
    };
    let reply = tokio::select! {
        reply = fetch(addr, &target, &options) => reply,
        Ok(()) = tokio::signal::ctrl_c() => return Ok(ExitCode::from(INTERRUPTED)),
    };
    let stream = match reply {
        Ok(LogReply::Log(stream)) => stream,
        Ok(LogReply::Refused { status, message }) => {
            return fail(&format!(
                "Error from server ({}): {message}",
                reason(status.as_u16())
            ))
        }
        Err(e) => {
            return fail(&format!(
                "error: cannot reach the node agent of node {node_name} at {addr}: {}",
                cause(&e)
            ))
        }
    };
    tokio::select! {
        copied = copy_to_stdout(stream) => match copied {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(CopyError::Read(e)) => fail(&format!(
                "error: the log from the node agent of node {node_name} at {addr} was cut short: {}",
                cause(&e)
            )),
            Err(CopyError::Write(e)) => Err(anyhow::Error::from(e).context("writing to stdout")),
        },
        Ok(()) = tokio::signal::ctrl_c() => Ok(ExitCode::from(INTERRUPTED)),
    }
}

fn fail(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("{message}");
    Ok(ExitCode::from(1))
}

/// Why copying the log ended early.
enum CopyError {
    Read(LogsError),
    Write(std::io::Error),
}

/// Writes the log to stdout as it arrives, flushed piece by piece so a
/// follow shows each line at once. A reader of stdout that went away
/// (`commitd logs POD | head`) ends it quietly; dropping the stream then
/// closes the connection, which ends the agent's side too.
async fn copy_to_stdout(mut stream: LogStream) -> Result<(), CopyError> {
    let mut out = tokio::io::stdout();
    while let Some(chunk) = stream.next_chunk().await.map_err(CopyError::Read)? {
        let written = async {
            out.write_all(&chunk).await?;
            out.flush().await
        };
        match written.await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(CopyError::Write(e)),
        }
    }
    Ok(())
}

/// The reason kubectl names for an HTTP status in `Error from server (…)`.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

/// What went wrong, innermost causes included.
fn cause(e: &LogsError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Where the node's agent serves logs: its `InternalIP` and the port it
/// published in `status.daemonEndpoints.kubeletEndpoint.Port`.
fn agent_address(node: &Node) -> Result<SocketAddr, String> {
    let name = meta::name(node);
    let status = node.status.as_ref();
    let ip = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str());
    let Some(ip) = ip else {
        return Err(format!(
            "node {name} has no InternalIP address in its status, so its node agent cannot be reached"
        ));
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("node {name} has an InternalIP that is not an IP address: {ip:?}"))?;
    let port = status
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .and_then(|e| u16::try_from(e.port).ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return Err(format!(
            "node {name} publishes no port for its node agent's logs \
             (status.daemonEndpoints.kubeletEndpoint.Port): the agent runs with \
             --read-only-port 0, or has not registered yet"
        ));
    };
    Ok(SocketAddr::new(ip, port))
}

/// The pod name from `NAME` or `pod/NAME` (also `po/`, `pods/`).
fn pod_name(arg: &str) -> Result<String, String> {
    let Some((kind, name)) = arg.split_once('/') else {
        return if arg.is_empty() {
            Err("expected POD or TYPE/NAME argument".into())
        } else {
            Ok(arg.to_string())
        };
    };
    if kind.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!(
            "arguments in resource/name form must have a single resource and name, got \"{arg}\""
        ));
    }
    match Kind::from_cli(kind) {
        Some(Kind::Pod) => Ok(name.to_string()),
        Some(other) => Err(format!(
            "commitd logs reads pods only, not {}; find the pod with `commitd get pods`",
            other.plural()
        )),
        None => Err(format!(
            "the server doesn't have a resource type \"{kind}\""
        )),
    }
}

/// The container to read: the one asked for (an app or init container),
/// else the pod's default-container annotation, else its only container.
fn pick_container(pod: &Pod, requested: Option<&str>) -> Result<String, String> {
    let name = meta::name(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    if let Some(wanted) = requested {
        let init = spec.init_containers.iter().flatten();
        if names.contains(&wanted) || init.into_iter().any(|c| c.name == wanted) {
            return Ok(wanted.to_string());
        }
        return Err(format!("container {wanted} is not valid for pod {name}"));
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .filter(|c| names.contains(&c.as_str()));
    if let Some(c) = annotated {
        return Ok(c.clone());
    }
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(format!("pod {name} has no containers")),
        many => Err(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            many.join(" ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::api::core::v1::{
        Container, DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus, PodSpec,
    };
    use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn pod_arguments_read_like_kubectl() {
        assert_eq!(pod_name("web"), Ok("web".to_string()));
        assert_eq!(pod_name("pod/web"), Ok("web".to_string()));
        assert_eq!(pod_name("po/web"), Ok("web".to_string()));
        assert_eq!(pod_name("pods/web"), Ok("web".to_string()));
        assert!(pod_name("deploy/web").unwrap_err().contains("pods only"));
        assert_eq!(
            pod_name("foo/web"),
            Err("the server doesn't have a resource type \"foo\"".to_string())
        );
        assert!(pod_name("pod/").is_err());
        assert!(pod_name("pod/a/b").is_err());
        assert!(pod_name("").is_err());
    }

    fn pod(containers: &[&str], default: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                annotations: default
                    .map(|d| [(DEFAULT_CONTAINER_ANNOTATION.to_string(), d.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|c| Container {
                        name: c.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                init_containers: Some(vec![Container {
                    name: "setup".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn containers_are_picked_like_kubectl() {
        assert_eq!(pick_container(&pod(&["a"], None), None), Ok("a".into()));
        assert_eq!(
            pick_container(&pod(&["a", "b"], None), None),
            Err("a container name must be specified for pod web, choose one of: [a b]".into())
        );
        assert_eq!(
            pick_container(&pod(&["a", "b"], Some("b")), None),
            Ok("b".into())
        );
        assert!(pick_container(&pod(&["a", "b"], Some("zz")), None).is_err());
        assert_eq!(
            pick_container(&pod(&["a", "b"], None), Some("b")),
            Ok("b".into())
        );
        assert_eq!(
            pick_container(&pod(&["a"], None), Some("nope")),
            Err("container nope is not valid for pod web".into())
        );
        // Init containers have logs too, when asked for by name.
        assert_eq!(
            pick_container(&pod(&["a"], None), Some("setup")),
            Ok("setup".into())
        );
    }

    fn node(addresses: &[(&str, &str)], port: Option<i32>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                daemon_endpoints: port.map(|port| NodeDaemonEndpoints {
                    kubelet_endpoint: Some(DaemonEndpoint { port }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_agent_is_found_from_the_node() {
        let n = node(
            &[("Hostname", "n1"), ("InternalIP", "192.0.2.7")],
            Some(10255),
        );
        assert_eq!(agent_address(&n), Ok("192.0.2.7:10255".parse().unwrap()));
        let n = node(&[("InternalIP", "2001:db8::1")], Some(1));
        assert_eq!(agent_address(&n), Ok("[2001:db8::1]:1".parse().unwrap()));
        let err = agent_address(&node(&[("Hostname", "n1")], Some(10255))).unwrap_err();
        assert!(err.contains("node n1 has no InternalIP"), "{err}");
        let err = agent_address(&node(&[("InternalIP", "n1.local")], Some(10255))).unwrap_err();
        assert!(err.contains("not an IP address"), "{err}");
        for port in [None, Some(0), Some(70000), Some(-1)] {
            let err = agent_address(&node(&[("InternalIP", "192.0.2.7")], port)).unwrap_err();
            assert!(
                err.contains("node n1 publishes no port") && err.contains("--read-only-port 0"),
                "{err}"
            );
        }
        assert!(agent_address(&Node::default()).is_err());
    }

    #[test]
    fn refusals_read_like_kubectl() {
        assert_eq!(reason(400), "BadRequest");
        assert_eq!(reason(404), "NotFound");
        assert_eq!(reason(500), "InternalError");
        assert_eq!(reason(418), "Unknown");
    }
}
