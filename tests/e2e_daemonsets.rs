//! DaemonSets end to end, with real containers under `commitd up`: a
//! DaemonSet runs exactly one running pod on the node (seen in containerd
//! and serving its page); `commitd get ds` shows kubectl's columns with
//! every count at 1; a template change rolls the pod to the new revision;
//! `commitd rollout status ds/NAME` reports it done; a DaemonSet whose
//! nodeSelector matches no node has DESIRED 0 and no pods. One test: tests in one binary would share the network.

mod support;

use serde_json::Value;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdds0",
    pod_cidr: "10.230.0.0/24",
    service_cidr: "10.100.30.0/24",
    node_name: "ds-node",
    dns_port: 10230,
    proxy_table: "cdds",
};

const DAEMONS: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-agent
  namespace: demo
spec:
  selector:
    matchLabels:
      app: node-agent
  template:
    metadata:
      labels:
        app: node-agent
    spec:
      nodeSelector:
        kubernetes.io/os: linux
      terminationGracePeriodSeconds: 1
      containers:
        - name: agent
          image: REGISTRY/commitd/web:1
          readinessProbe:
            httpGet:
              path: /
              port: 80
            periodSeconds: 1
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: nowhere
  namespace: demo
spec:
  selector:
    matchLabels:
      app: nowhere
  template:
    metadata:
      labels:
        app: nowhere
    spec:
      nodeSelector:
        disktype: ssd
      containers:
        - name: agent
          image: REGISTRY/commitd/web:1
"#;

/// The pods (as JSON) whose controller is the object with `uid`.
fn owned_by<'a>(pods: &'a [Value], uid: &str) -> Vec<&'a Value> {
    pods.iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["controller"] == true && o["uid"] == uid)
        })
        .collect()
}

/// Waits until the DaemonSet `uid` has exactly one pod, running on the
/// node with its container up, ready, and serving a page containing
/// `page`; returns (pod name, controller-revision-hash).
async fn one_running_pod(cluster: &Cluster, uid: &str, page: &str) -> (String, String) {
    until(
        &format!("one running daemon pod serving {page:?}"),
        WAIT,
        || async {
            let pods = cluster.cli().pods("demo").await?;
            let mine = owned_by(&pods, uid);
            let [pod] = mine.as_slice() else {
                let names: Vec<&Value> = mine.iter().map(|p| &p["metadata"]["name"]).collect();
                return Err(format!("{} pods: {names:?}", mine.len()));
            };
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !pod["metadata"]["deletionTimestamp"].is_null()
                || pod["status"]["phase"] != "Running"
            {
                return Err(format!("{name} is {}", pod["status"]["phase"]));
            }
            if pod["spec"]["nodeName"] != NETWORK.node_name {
                return Err(format!("{name} is on {}", pod["spec"]["nodeName"]));
            }
            if !cluster.running_container_pods().await.contains(&name) {
                return Err(format!("{name} has no running container"));
            }
            let ip = pod["status"]["podIP"]
                .as_str()
                .ok_or(format!("{name} has no IP"))?;
            let body = support::http_get(&format!("{ip}:80")).await?;
            if !body.contains(page) {
                return Err(format!("{name} serves {body:?}"));
            }
            let hash = pod["metadata"]["labels"]["controller-revision-hash"]
                .as_str()
                .ok_or(format!("{name} has no revision label"))?
                .to_string();
            Ok((name, hash))
        },
    )
    .await
}

/// The `commitd get ds -n demo` row of `name`, once it equals `want`
/// (the AGE column excluded); the header is checked on the way.
async fn ds_row(cluster: &Cluster, name: &str, want: &[&str]) {
    until(&format!("get ds row {name} = {want:?}"), WAIT, || async {
        let (code, table, err) = cluster.cli().run(&["get", "ds", "-n", "demo"]).await;
        if code != 0 {
            return Err(format!("get ds exited {code}: {err}"));
        }
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let header = lines.first().cloned().unwrap_or_default();
        assert_eq!(
            header,
            [
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE",
                "SELECTOR",
                "AGE"
            ],
            "{table}"
        );
        let row = lines
            .iter()
            .find(|l| l.first() == Some(&name))
            .ok_or(format!("no row for {name}: {table}"))?;
        // NAME .. NODE SELECTOR, then AGE.
        if row.len() == want.len() + 1 && row[..want.len()] == *want {
            Ok(())
        } else {
            Err(table.clone())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sets_run_one_pod_per_node_and_roll() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;
    cluster.commit_manifest("daemons.yaml", DAEMONS, "Two daemon sets");

    let ds = until("daemon set node-agent to exist", WAIT, || async {
        cluster.cli().get_json("ds", "node-agent", "demo").await
    })
    .await;
    let uid = ds["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!uid.is_empty(), "{ds}");
    let (first, first_hash) = one_running_pod(&cluster, &uid, "version 1").await;
    assert!(
        first.starts_with("node-agent-") && first.len() == "node-agent-".len() + 5,
        "{first}"
    );
    ds_row(
        &cluster,
        "node-agent",
        &[
            "node-agent",
            "1",
            "1",
            "1",
            "1",
            "1",
            "kubernetes.io/os=linux",
        ],
    )
    .await;

    // A DaemonSet that fits no node wants nothing and makes nothing.
    ds_row(
        &cluster,
        "nowhere",
        &["nowhere", "0", "0", "0", "0", "0", "disktype=ssd"],
    )
    .await;
    let nowhere = cluster
        .cli()
        .get_json("ds", "nowhere", "demo")
        .await
        .expect("get ds nowhere");
    assert_eq!(nowhere["status"]["desiredNumberScheduled"], 0, "{nowhere}");
    let nowhere_uid = nowhere["metadata"]["uid"].as_str().unwrap_or_default();
    let pods = cluster.cli().pods("demo").await.expect("pods");
    assert!(owned_by(&pods, nowhere_uid).is_empty(), "{pods:?}");

    // A template change rolls the pod to the new revision.
    cluster
        .repo()
        .edit("daemons.yaml", "commitd/web:1", "commitd/web:2");
    cluster.repo().commit("Daemon image version 2");
    let (second, second_hash) = one_running_pod(&cluster, &uid, "version 2").await;
    assert_ne!(first, second, "the pod was replaced");
    assert_ne!(first_hash, second_hash, "the pod is of a new revision");
    until("the old daemon container to stop", WAIT, || async {
        let running = cluster.running_container_pods().await;
        if running.contains(&first) {
            Err(format!("{first} still runs: {running:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    ds_row(
        &cluster,
        "node-agent",
        &[
            "node-agent",
            "1",
            "1",
            "1",
            "1",
            "1",
            "kubernetes.io/os=linux",
        ],
    )
    .await;
    let pods = cluster.cli().pods("demo").await.expect("pods");
    assert!(owned_by(&pods, nowhere_uid).is_empty(), "{pods:?}");
    let (code, out, err) = cluster
        .cli()
        .run(&[
            "rollout",
            "status",
            "ds/node-agent",
            "-n",
            "demo",
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(code, 0, "rollout status: {out}{err}");
    assert!(
        out.contains("daemon set \"node-agent\" successfully rolled out"),
        "{out}"
    );

    cluster.stop().await;
}
