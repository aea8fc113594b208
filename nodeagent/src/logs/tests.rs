//! The server and its client together, in-process, over loopback: a pod
//! set the tests change, log files in a temporary directory.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::pod::log_dir_name;

const NODE: &str = "n1";
const TS: &str = "2024-05-01T10:00:00.123456789Z";

#[derive(Default)]
struct Pods(Mutex<HashMap<(String, String), Arc<Pod>>>);

impl Pods {
    fn put(&self, pod: Pod) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        self.0.lock().expect("lock").insert(key, Arc::new(pod));
    }
}

impl PodLookup for Pods {
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let key = (namespace.to_string(), name.to_string());
        self.0.lock().expect("lock").get(&key).cloned()
    }
}

struct Fixture {
    pods: Arc<Pods>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start() -> Fixture {
        let pods = Arc::new(Pods::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let server = LogServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let cancel = CancellationToken::new();
        let source = LogSource {
            pods: pods.clone(),
            node_name: NODE.into(),
            pods_dir: dir.path().to_path_buf(),
        };
        let server = tokio::spawn(server.serve(source, cancel.clone()));
        Fixture {
            pods,
            dir,
            addr,
            cancel,
            server,
        }
    }

    fn log_file(&self, pod: &str, container: &str, instance: u32) -> std::path::PathBuf {
        let dir = self
            .dir
            .path()
            .join(log_dir_name("demo", pod, &format!("uid-{pod}")))
            .join(container);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join(format!("{instance}.log"))
    }

    fn write_log(&self, pod: &str, container: &str, instance: u32, lines: &[&str]) {
        let text: String = lines.iter().map(|l| entry(l)).collect();
        std::fs::write(self.log_file(pod, container, instance), text).expect("write log");
    }

    async fn get(&self, pod: &str, container: &str, options: LogOptions) -> (StatusCode, String) {
        let target = ContainerRef {
            namespace: "demo".into(),
            pod: pod.into(),
            container: container.into(),
        };
        match fetch(self.addr, &target, &options).await.expect("fetch") {
            LogReply::Log(mut stream) => {
                let mut out = Vec::new();
                while let Some(chunk) = stream.next_chunk().await.expect("chunk") {
                    out.extend_from_slice(&chunk);
                }
                (StatusCode::OK, String::from_utf8(out).expect("utf-8 log"))
            }
            LogReply::Refused { status, message } => (status, message),
        }
    }
}

fn entry(text: &str) -> String {
    format!("{TS} stdout F {text}\n")
}

fn state_running() -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..Default::default()
    }
}

fn state_waiting(reason: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: None,
        }),
        ..Default::default()
    }
}

fn state_terminated() -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated::default()),
        ..Default::default()
    }
}

/// Pod `name` in `demo` on `node`, with container `app` in `state` after
/// `restarts` restarts.
fn pod(name: &str, node: &str, restarts: i32, state: ContainerState) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("demo".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                restart_count: restarts,
                state: Some(state),
                last_state: (restarts > 0).then(state_terminated),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn options(f: impl FnOnce(&mut LogOptions)) -> LogOptions {
    let mut o = LogOptions::default();
    f(&mut o);
    o
}

#[tokio::test]
async fn the_current_and_previous_instances_are_served() {
    let fx = Fixture::start().await;
    fx.pods.put(pod("web", NODE, 1, state_running()));
    fx.write_log("web", "app", 0, &["zero-a", "zero-b"]);
    fx.write_log("web", "app", 1, &["one-a", "one-b", "one-c"]);

    let all = fx.get("web", "app", LogOptions::default()).await;
    assert_eq!(all, (StatusCode::OK, "one-a\none-b\none-c\n".into()));
    let previous = fx.get("web", "app", options(|o| o.previous = true)).await;
    assert_eq!(previous, (StatusCode::OK, "zero-a\nzero-b\n".into()));
    let tail = fx
        .get("web", "app", options(|o| o.tail_lines = Some(2)))
        .await;
    assert_eq!(tail, (StatusCode::OK, "one-b\none-c\n".into()));
    let stamped = fx
        .get(
            "web",
            "app",
            options(|o| {
                o.tail_lines = Some(1);
                o.timestamps = true
            }),
        )
        .await;
    assert_eq!(stamped, (StatusCode::OK, format!("{TS} one-c\n")));
    // Following an instance that is not running ends at once.
    let previous_follow = fx
        .get(
            "web",
            "app",
            options(|o| {
                o.previous = true;
                o.follow = true
            }),
        )
        .await;
    assert_eq!(previous_follow, (StatusCode::OK, "zero-a\nzero-b\n".into()));
    fx.cancel.cancel();
}

#[tokio::test]
async fn refusals_say_why_with_the_kubelets_statuses() {
    let fx = Fixture::start().await;
    fx.pods.put(pod("web", NODE, 0, state_running()));
    fx.write_log("web", "app", 0, &["x"]);
    fx.pods.put(pod("elsewhere", "n2", 0, state_running()));
    fx.pods
        .put(pod("pulling", NODE, 0, state_waiting("ErrImagePull")));

    let cases = [
        (
            "nope",
            "app",
            LogOptions::default(),
            StatusCode::NOT_FOUND,
            "pod \"nope\" does not exist on node \"n1\"",
        ),
        (
            "elsewhere",
            "app",
            LogOptions::default(),
            StatusCode::NOT_FOUND,
            "pod \"elsewhere\" does not exist on node \"n1\"",
        ),
        (
            "web",
            "db",
            LogOptions::default(),
            StatusCode::NOT_FOUND,
            "container \"db\" not found in pod \"web\"",
        ),
        (
            "pulling",
            "app",
            LogOptions::default(),
            StatusCode::BAD_REQUEST,
            "container \"app\" in pod \"pulling\" is waiting to start: ErrImagePull",
        ),
        (
            "web",
            "app",
            options(|o| o.previous = true),
            StatusCode::BAD_REQUEST,
            "previous terminated container \"app\" in pod \"web\" not found",
        ),
    ];
    for (pod, container, opts, status, message) in cases {
        assert_eq!(
            fx.get(pod, container, opts).await,
            (status, message.to_string()),
            "{pod}/{container}"
        );
    }
    fx.cancel.cancel();
}

/// A raw HTTP/1.1 exchange: the status code and the body as sent.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

#[tokio::test]
async fn only_get_on_two_paths_is_served() {
    let fx = Fixture::start().await;
    fx.pods.put(pod("web", NODE, 0, state_running()));
    fx.write_log("web", "app", 0, &["hello"]);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");

    assert_eq!(raw(fx.addr, &get("/healthz")).await, (200, "ok".into()));
    assert_eq!(
        raw(fx.addr, &get("/pods")).await,
        (404, "404 page not found\n".into())
    );
    let (code, body) = raw(
        fx.addr,
        "POST /containerLogs/demo/web/app HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!((code, body.as_str()), (405, "405 method not allowed\n"));
    let (code, body) = raw(fx.addr, &get("/containerLogs/demo/web/app?tailLines=-1")).await;
    assert_eq!(code, 400);
    assert!(
        body.contains("must be greater than or equal to 0"),
        "{body}"
    );
    // HTTP/1.1: the log comes chunked.
    let (code, body) = raw(fx.addr, &get("/containerLogs/demo/web/app")).await;
    assert_eq!((code, body.as_str()), (200, "6\r\nhello\n\r\n0\r\n\r\n"));
    fx.cancel.cancel();
}

async fn next(s: &mut LogStream) -> Option<hyper::body::Bytes> {
    tokio::time::timeout(Duration::from_secs(5), s.next_chunk())
        .await
        .expect("a chunk in time")
        .expect("chunk")
}

#[tokio::test]
async fn a_follow_streams_until_the_instance_stops() {
    let fx = Fixture::start().await;
    fx.pods.put(pod("web", NODE, 0, state_running()));
    fx.write_log("web", "app", 0, &["before"]);
    let target = ContainerRef {
        namespace: "demo".into(),
        pod: "web".into(),
        container: "app".into(),
    };
    let LogReply::Log(mut stream) = fetch(fx.addr, &target, &options(|o| o.follow = true))
        .await
        .expect("fetch")
    else {
        panic!("refused");
    };
    assert_eq!(next(&mut stream).await.as_deref(), Some(&b"before\n"[..]));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(fx.log_file("web", "app", 0))
        .expect("open log");
    file.write_all(entry("after").as_bytes()).expect("append");
    assert_eq!(next(&mut stream).await.as_deref(), Some(&b"after\n"[..]));
    // The instance stops: what it wrote last is sent, then the end.
    file.write_all(entry("last").as_bytes()).expect("append");
    fx.pods.put(pod("web", NODE, 0, state_terminated()));
    let mut rest = Vec::new();
    while let Some(chunk) = next(&mut stream).await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"last\n");
    fx.cancel.cancel();
}

#[tokio::test]
async fn stopping_the_server_ends_a_follow() {
    let fx = Fixture::start().await;
    fx.pods.put(pod("web", NODE, 0, state_running()));
    fx.write_log("web", "app", 0, &["x"]);
    let target = ContainerRef {
        namespace: "demo".into(),
        pod: "web".into(),
        container: "app".into(),
    };
    let LogReply::Log(mut stream) = fetch(fx.addr, &target, &options(|o| o.follow = true))
        .await
        .expect("fetch")
    else {
        panic!("refused");
    };
    assert!(stream.next_chunk().await.expect("chunk").is_some());
    fx.cancel.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.next_chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the follow did not end");
    tokio::time::timeout(Duration::from_secs(5), fx.server)
        .await
        .expect("the server stops")
        .expect("server task");
    let refused = fetch(fx.addr, &target, &LogOptions::default()).await;
    assert!(
        matches!(refused, Err(LogsError::Connect { .. })),
        "{refused:?}"
    );
}
