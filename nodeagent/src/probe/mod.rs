//! Container probes, kubelet-style: startup, readiness and liveness, with
//! the `exec`, `httpGet` (HTTP and HTTPS), `tcpSocket` and `grpc` handlers.
//!
//! [`ProbeSpec`] is a probe reduced to what running it needs, with
//! Kubernetes' defaults; [`handlers`] runs one attempt; [`runner`] probes
//! one container instance for its whole life and publishes what it found
//! ([`ProbeStatus`]) for the pod worker, which turns a failed liveness or
//! startup probe into a restart and readiness into the `Ready` condition.

pub mod handlers;
pub mod runner;
mod tls;

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use runner::{ProbeResults, ProbeStatus, Probers};

/// The three kinds of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// Holds the others back until it succeeds; failing restarts.
    Startup,
    /// Drives the container's `ready`.
    Readiness,
    /// Failing restarts the container.
    Liveness,
}

impl ProbeKind {
    /// The name the kubelet uses in messages ("Liveness probe failed: …").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }
}

/// A port given by number or by the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// A number.
    Number(i32),
    /// A `ports[].name` of the container.
    Name(String),
}

impl PortRef {
    fn from_k8s(port: &IntOrString) -> PortRef {
        match port {
            IntOrString::Int(n) => PortRef::Number(*n),
            IntOrString::String(s) => match s.parse() {
                Ok(n) => PortRef::Number(n),
                Err(_) => PortRef::Name(s.clone()),
            },
        }
    }

    /// The port number, looking names up in `ports` (name, number).
    pub fn resolve(&self, ports: &[(String, i32)]) -> Result<u16, String> {
        let n = match self {
            PortRef::Number(n) => *n,
            PortRef::Name(name) => ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("couldn't find port {name:?} in the container"))?,
        };
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port number: {n}"))
    }
}

/// How an `httpGet` talks to its target (`scheme`). HTTPS is made as the
/// kubelet makes it: TLS without checking the certificate, since a pod's
/// certificate is rarely issued for its IP and a probe asks "is it up?",
/// not "is it who it claims to be?".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (the default).
    #[default]
    Http,
    /// HTTP over TLS, certificate not verified.
    Https,
}

impl Scheme {
    /// Reads `scheme`; validation allows only `HTTP` and `HTTPS`, and like
    /// the kubelet (which lower-cases it) the case is not significant here.
    fn from_k8s(scheme: Option<&str>) -> Scheme {
        if scheme.is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// The URL scheme, as the kubelet writes it in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// How one attempt is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Run a command in the container; exit code 0 is success.
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
    },
    /// An HTTP GET; a status from 200 to 399 is success.
    Http {
        /// HTTP or HTTPS.
        scheme: Scheme,
        /// The host to connect to; the pod IP when absent.
        host: Option<String>,
        /// The port.
        port: PortRef,
        /// The request path.
        path: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens is success.
    Tcp {
        /// The host to connect to; the pod IP when absent.
        host: Option<String>,
        /// The port.
        port: PortRef,
    },
    /// Wait (lifecycle hooks only).
    Sleep {
        /// How long.
        duration: Duration,
    },
    /// The standard gRPC health check; `SERVING` is success.
    Grpc {
        /// The port (a number).
        port: i32,
        /// The service name asked about ("" = the server as a whole).
        service: String,
    },
}

/// A probe, with Kubernetes' defaults for what the spec leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// How to probe.
    pub handler: Handler,
    /// Wait this long after the container started before the first attempt.
    pub initial_delay: Duration,
    /// One attempt this often.
    pub period: Duration,
    /// An attempt that takes longer fails.
    pub timeout: Duration,
    /// Successes in a row that make a failing probe succeed.
    pub success_threshold: u32,
    /// Failures in a row that make a succeeding probe fail.
    pub failure_threshold: u32,
}

/// Seconds from an optional field, `default` when absent or not positive.
fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(
        value
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default),
    )
}

fn count(value: Option<i32>, default: u32) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl Handler {
    fn exec(exec: &ExecAction) -> Handler {
        Handler::Exec {
            command: exec.command.clone().unwrap_or_default(),
        }
    }

    fn http(http: &HTTPGetAction) -> Handler {
        Handler::Http {
            scheme: Scheme::from_k8s(http.scheme.as_deref()),
            host: http.host.clone().filter(|h| !h.is_empty()),
            port: PortRef::from_k8s(&http.port),
            path: http
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".to_string()),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        }
    }

    fn tcp(tcp: &TCPSocketAction) -> Handler {
        Handler::Tcp {
            host: tcp.host.clone().filter(|h| !h.is_empty()),
            port: PortRef::from_k8s(&tcp.port),
        }
    }

    /// A lifecycle hook's action (`postStart`, `preStop`); `None` when it
    /// has none (validation rejects that, so only a hand-written object
    /// gets here).
    pub fn from_lifecycle(h: &LifecycleHandler) -> Option<Handler> {
        if let Some(exec) = &h.exec {
            return Some(Handler::exec(exec));
        }
        if let Some(http) = &h.http_get {
            return Some(Handler::http(http));
        }
        if let Some(sleep) = &h.sleep {
            return Some(Handler::Sleep {
                duration: Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0)),
            });
        }
        h.tcp_socket.as_ref().map(Handler::tcp)
    }
}

impl ProbeSpec {
    /// Reads a probe; `None` when it has no handler (validation rejects
    /// such a probe, so only a hand-written object gets here).
    pub fn from_k8s(probe: &Probe) -> Option<ProbeSpec> {
        let handler = if let Some(exec) = &probe.exec {
            Handler::exec(exec)
        } else if let Some(http) = &probe.http_get {
            Handler::http(http)
        } else if let Some(tcp) = &probe.tcp_socket {
            Handler::tcp(tcp)
        } else if let Some(grpc) = &probe.grpc {
            Handler::Grpc {
                port: grpc.port,
                service: grpc.service.clone().unwrap_or_default(),
            }
        } else {
            return None;
        };
        Some(ProbeSpec {
            handler,
            initial_delay: Duration::from_secs(
                probe
                    .initial_delay_seconds
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(0),
            ),
            period: seconds(probe.period_seconds, 10),
            timeout: seconds(probe.timeout_seconds, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        })
    }
}

/// The probes of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerProbes {
    /// `startupProbe`.
    pub startup: Option<ProbeSpec>,
    /// `readinessProbe`.
    pub readiness: Option<ProbeSpec>,
    /// `livenessProbe`.
    pub liveness: Option<ProbeSpec>,
    /// The container's named ports, for probes that name theirs.
    pub ports: Vec<(String, i32)>,
}

impl ContainerProbes {
    /// The probes of `container`.
    pub fn of(container: &Container) -> ContainerProbes {
        let read = |p: &Option<Probe>| p.as_ref().and_then(ProbeSpec::from_k8s);
        ContainerProbes {
            startup: read(&container.startup_probe),
            readiness: read(&container.readiness_probe),
            liveness: read(&container.liveness_probe),
            ports: container
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                .collect(),
        }
    }

    /// Whether there is anything to probe.
    pub fn any(&self) -> bool {
        self.startup.is_some() || self.readiness.is_some() || self.liveness.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: serde_json::Value) -> Probe {
        serde_json::from_value(json).expect("probe")
    }

    #[test]
    fn defaults_fill_what_the_spec_leaves_out() {
        let p = ProbeSpec::from_k8s(&probe(serde_json::json!({"httpGet": {"port": "http"}})))
            .expect("spec");
        assert_eq!(
            p.handler,
            Handler::Http {
                scheme: Scheme::Http,
                host: None,
                port: PortRef::Name("http".into()),
                path: "/".into(),
                headers: vec![],
            }
        );
        assert_eq!(p.initial_delay, Duration::ZERO);
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
        let p = ProbeSpec::from_k8s(&probe(serde_json::json!({
            "exec": {"command": ["cat", "/tmp/ok"]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "timeoutSeconds": 3,
            "successThreshold": 2, "failureThreshold": 1
        })))
        .expect("spec");
        assert_eq!(
            p.handler,
            Handler::Exec {
                command: vec!["cat".into(), "/tmp/ok".into()]
            }
        );
        assert_eq!(p.initial_delay, Duration::from_secs(5));
        assert_eq!(p.period, Duration::from_secs(2));
        assert_eq!(p.timeout, Duration::from_secs(3));
        assert_eq!((p.success_threshold, p.failure_threshold), (2, 1));
        assert!(ProbeSpec::from_k8s(&probe(serde_json::json!({"periodSeconds": 1}))).is_none());
        let https = probe(serde_json::json!({
            "httpGet": {"host": "web.local", "port": 443, "scheme": "HTTPS"}
        }));
        assert_eq!(
            ProbeSpec::from_k8s(&https)
                .expect("an HTTPS probe is kept")
                .handler,
            Handler::Http {
                scheme: Scheme::Https,
                host: Some("web.local".into()),
                port: PortRef::Number(443),
                path: "/".into(),
                headers: vec![],
            }
        );
    }

    #[test]
    fn ports_resolve_by_number_or_container_port_name() {
        let ports = vec![("http".to_string(), 8080)];
        assert_eq!(PortRef::Number(80).resolve(&ports), Ok(80));
        assert_eq!(PortRef::Name("http".into()).resolve(&ports), Ok(8080));
        assert!(PortRef::Name("grpc".into())
            .resolve(&ports)
            .expect_err("unknown")
            .contains("\"grpc\""));
        assert!(PortRef::Number(0).resolve(&ports).is_err());
        assert!(PortRef::Number(70000).resolve(&ports).is_err());
        // A number written as a string is a number.
        assert_eq!(
            PortRef::from_k8s(&IntOrString::String("81".into())),
            PortRef::Number(81)
        );
    }

    #[test]
    fn a_container_without_probes_has_nothing_to_probe() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "web", "image": "x",
            "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 81}],
            "readinessProbe": {"tcpSocket": {"port": "http"}}
        }))
        .expect("container");
        let p = ContainerProbes::of(&c);
        assert!(p.any());
        assert_eq!(p.ports, vec![("http".to_string(), 80)]);
        let bare: Container =
            serde_json::from_value(serde_json::json!({"name": "web", "image": "x"}))
                .expect("container");
        assert!(!ContainerProbes::of(&bare).any());
    }
}
