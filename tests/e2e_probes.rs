//! Probes end to end, with real containers under `commitd up`: the
//! examples' web pods become Ready through their HTTP readiness probe; a
//! pod whose readiness and liveness are files the test creates and
//! removes inside the container shows that readiness gates `Ready` and
//! the Service's endpoints, and that a failing liveness probe restarts the
//! container, the second time only after the crash-loop back-off.

mod support;

use serde_json::Value;
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdprb0",
    pod_cidr: "10.221.0.0/24",
    service_cidr: "10.100.21.0/24",
    node_name: "probe-node",
    dns_port: 10221,
    proxy_table: "cdprobe",
};

/// A pod that is live while /tmp/healthy exists (the command creates it
/// at every start) and ready while /tmp/ready exists, and its Service.
const PROBED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
  namespace: demo
  labels: {app: probed}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'touch /tmp/healthy; trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      ports: [{name: http, containerPort: 80}]
      livenessProbe:
        exec: {command: [cat, /tmp/healthy]}
        periodSeconds: 1
        failureThreshold: 1
      readinessProbe:
        exec: {command: [sh, -c, 'echo probed >> /tmp/probes; test -f /tmp/ready']}
        periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: probed
  namespace: demo
spec:
  selector: {app: probed}
  ports: [{port: 80}]
"#;

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
        .to_string()
}

fn container(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// The pod once its container runs as restart `count`, started and not
/// ready (readiness starts over with every instance).
async fn running_unready(cluster: &Cluster, count: u64) -> Value {
    until(
        &format!("probed running as restart {count}, started, not ready"),
        WAIT,
        || async {
            let p = cluster.cli().get_json("pod", "probed", "demo").await?;
            let c = container(&p);
            let ok = c["state"]["running"].is_object()
                && c["restartCount"] == count
                && c["started"] == true
                && c["ready"] == false
                && condition(&p, "Ready") == "False";
            ok.then_some(p.clone())
                .ok_or_else(|| p["status"].to_string())
        },
    )
    .await
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_readiness_and_restart_dead_containers() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;

    // The examples' web pods: Ready through their HTTP readiness probe.
    let pods = cluster.wait_running(2, "hello from").await;
    for (name, _) in &pods {
        until(&format!("{name} to be Ready"), WAIT, || async {
            let p = cluster.cli().get_json("pod", name, "demo").await?;
            (condition(&p, "Ready") == "True")
                .then_some(())
                .ok_or_else(|| p["status"].to_string())
        })
        .await;
    }

    cluster.commit_manifest("probed.yaml", PROBED, "A probed pod and its Service");
    let cri = cluster.cri().await;

    // Running and live, but not ready: no /tmp/ready yet. It stays so
    // after three failed readiness probes (each one counts itself in
    // /tmp/probes), and the Service has no endpoint.
    let first = running_unready(&cluster, 0).await;
    let ip = first["status"]["podIP"]
        .as_str()
        .expect("pod IP")
        .to_string();
    until("three readiness probes", WAIT, || async {
        let runs = exec_ok(&cri, "probed", &["cat", "/tmp/probes"]).await?;
        (runs.lines().count() >= 3).then_some(()).ok_or(runs)
    })
    .await;
    let p = cluster
        .cli()
        .get_json("pod", "probed", "demo")
        .await
        .expect("pod");
    assert_eq!(container(&p)["ready"], false, "{}", p["status"]);
    assert_eq!(container(&p)["restartCount"], 0, "{}", p["status"]);
    assert_eq!(
        cluster.cli().endpoint_ips("probed", "demo").await,
        Ok(Default::default())
    );

    // Ready once the readiness file exists: Ready condition, endpoints.
    exec_ok(&cri, "probed", &["touch", "/tmp/ready"])
        .await
        .expect("touch");
    until("probed to become Ready", WAIT, || async {
        let p = cluster.cli().get_json("pod", "probed", "demo").await?;
        (condition(&p, "Ready") == "True" && container(&p)["ready"] == true)
            .then_some(())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    until("the Service to list probed", WAIT, || async {
        let ips = cluster.cli().endpoint_ips("probed", "demo").await?;
        (ips.iter().eq([&ip]))
            .then_some(())
            .ok_or(format!("{ips:?}"))
    })
    .await;

    // Liveness fails: the container is restarted at once (first restart),
    // the new instance is not ready, and the endpoint goes.
    exec_ok(&cri, "probed", &["rm", "/tmp/healthy"])
        .await
        .expect("rm");
    let second = running_unready(&cluster, 1).await;
    let last = &container(&second)["lastState"]["terminated"];
    assert!(last.is_object(), "{}", second["status"]);
    until("the Service to drop probed", WAIT, || async {
        let ips = cluster.cli().endpoint_ips("probed", "demo").await?;
        ips.is_empty().then_some(()).ok_or(format!("{ips:?}"))
    })
    .await;

    // Liveness fails again: now the crash-loop back-off (10 s) holds the
    // restart back.
    exec_ok(&cri, "probed", &["rm", "/tmp/healthy"])
        .await
        .expect("rm again");
    until("probed to wait in CrashLoopBackOff", WAIT, || async {
        let p = cluster.cli().get_json("pod", "probed", "demo").await?;
        (container(&p)["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    let third = running_unready(&cluster, 2).await;
    let c = container(&third);
    let exited = time(&c["lastState"]["terminated"]["finishedAt"]);
    let restarted = time(&c["state"]["running"]["startedAt"]);
    // Timestamps have whole seconds.
    assert!(
        restarted - exited >= chrono::Duration::seconds(9),
        "restarted {restarted} after exiting {exited}: {}",
        third["status"]
    );

    // Lifecycle hooks: postStart runs after the start, preStop before the
    // container gets SIGTERM. The pod records each step in a host
    // directory, which outlives it.
    let events_dir = cluster.state.path().join("hook-events");
    let hooked = HOOKED.replace("EVENTS_DIR", &events_dir.to_string_lossy());
    cluster.commit_manifest("hooked.yaml", &hooked, "A pod with lifecycle hooks");
    let events = events_dir.join("events");
    until("the postStart hook to run", WAIT, || async {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        (text == "post-start\n").then_some(()).ok_or(text)
    })
    .await;
    cluster.repo().remove("hooked.yaml");
    cluster.repo().commit("Remove the hooked pod");
    until("the hooked pod to be gone", WAIT, || async {
        match cluster.cli().get_json("pod", "hooked", "demo").await {
            Err(e) if e.contains("not found") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let text = std::fs::read_to_string(&events).expect("events");
    assert_eq!(text, "post-start\npre-stop\nterm\n");

    cluster.stop().await;
}

/// Writes its lifecycle to EVENTS_DIR/events on the host.
const HOOKED: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hooked
  namespace: demo
spec:
  terminationGracePeriodSeconds: 10
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "echo term >> /events/events; exit 0" TERM; while :; do sleep 1 & wait $!; done']
      lifecycle:
        postStart:
          exec: {command: [sh, -c, 'echo post-start >> /events/events']}
        preStop:
          exec: {command: [sh, -c, 'echo pre-stop >> /events/events']}
      volumeMounts: [{name: events, mountPath: /events}]
  volumes:
    - name: events
      hostPath: {path: EVENTS_DIR, type: DirectoryOrCreate}
"#;
