//! Configuration end to end, with real containers under `commitd up`: a
//! pod whose environment comes from a ConfigMap and a Secret that are not
//! in Git yet waits in `CreateContainerConfigError` with the kubelet's
//! message, and starts, with the values, as soon as a later commit adds
//! them.

mod support;

use serde_json::Value;
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdcfg0",
    pod_cidr: "10.224.0.0/24",
    service_cidr: "10.100.24.0/24",
    node_name: "config-node",
    dns_port: 10224,
    proxy_table: "cdcfg",
};

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: configured
  namespace: demo
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      env:
        - name: MODE
          valueFrom: {configMapKeyRef: {name: app-config, key: mode}}
        - name: PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
        - name: OPTIONAL
          valueFrom: {configMapKeyRef: {name: nowhere, key: x, optional: true}}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: SUMMARY
          value: $(MODE) mode for $(POD_NAME)
      envFrom:
        - configMapRef: {name: app-config}
          prefix: CFG_
"#;

const CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  namespace: demo
data:
  mode: fast
  level: "3"
---
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: demo
stringData:
  password: s3cret
"#;

const FAREWELL: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: farewell
  namespace: demo
spec:
  restartPolicy: Never
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'echo "disk full" > /dev/termination-log; exit 3']
    - name: crash
      image: REGISTRY/commitd/web:1
      terminationMessagePolicy: FallbackToLogsOnError
      command: [sh, -c, 'echo starting >&2; echo "panic: no config" >&2; exit 2']
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_from_config_maps_and_secrets_waits_for_them() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;

    cluster.commit_manifest("configured.yaml", POD, "A pod that needs configuration");
    let waiting = until("CreateContainerConfigError", WAIT, || async {
        let p = cluster.cli().get_json("pod", "configured", "demo").await?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (w["reason"] == "CreateContainerConfigError")
            .then(|| w["message"].as_str().unwrap_or_default().to_string())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    assert_eq!(waiting, "configmap \"app-config\" not found");

    cluster.repo().write("config.yaml", CONFIG);
    cluster.repo().commit("Add the configuration");
    let cri = cluster.cri().await;
    let env = until("the container to run with its configuration", WAIT, || {
        exec_ok(&cri, "configured", &["env"])
    })
    .await;
    let lines: Vec<&str> = env.lines().collect();
    for expected in [
        "MODE=fast",
        "PASSWORD=s3cret",
        "POD_NAME=configured",
        "SUMMARY=fast mode for configured",
        "CFG_mode=fast",
        "CFG_level=3",
    ] {
        assert!(lines.contains(&expected), "{expected} missing in:\n{env}");
    }
    assert!(!env.contains("OPTIONAL="), "{env}");
    let p = cluster
        .cli()
        .get_json("pod", "configured", "demo")
        .await
        .expect("pod");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);

    // What a container writes to its termination log is its message.
    cluster.commit_manifest("farewell.yaml", FAREWELL, "A pod that says why it stopped");
    let terminated = until("farewell to stop with its message", WAIT, || async {
        let (code, out, err) = cluster
            .cli()
            .run(&["get", "pod", "farewell", "-n", "demo", "-o", "json"])
            .await;
        if code != 0 {
            return Err(err);
        }
        let p: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let states: Vec<Value> = ["app", "crash"]
            .iter()
            .map(|name| {
                p["status"]["containerStatuses"]
                    .as_array()
                    .and_then(|all| all.iter().find(|c| c["name"] == *name))
                    .map(|c| c["state"]["terminated"].clone())
                    .unwrap_or_default()
            })
            .collect();
        states
            .iter()
            .all(|t| t["message"].is_string())
            .then_some(states)
            .ok_or(out)
    })
    .await;
    assert_eq!(terminated[0]["message"], "disk full\n");
    assert_eq!(terminated[0]["exitCode"], 3);
    // With FallbackToLogsOnError, a failed container that wrote no
    // message has the end of its log as one.
    assert_eq!(terminated[1]["message"], "starting\npanic: no config\n");
    assert_eq!(terminated[1]["exitCode"], 2);

    cluster.stop().await;
}
