//! Resources end to end, with real containers under `commitd up`: a
//! container that allocates past its memory limit is killed by the kernel
//! and reported `OOMKilled`, its CPU limit is a CFS quota the container
//! can read, and pods carry their QoS class.

mod support;

use commitd_nodeagent::cri::Cri;
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdres0",
    pod_cidr: "10.225.0.0/24",
    service_cidr: "10.100.25.0/24",
    node_name: "res-node",
    dns_port: 10225,
    proxy_table: "cdres",
};

/// `hog` keeps a 100 MiB line in memory (tail buffers a line until its
/// end), four times its limit; `capped` runs with equal requests and
/// limits.
const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: hog
  namespace: demo
spec:
  restartPolicy: Never
  containers:
    - name: hog
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'head -c 104857600 /dev/zero | tail -n 1']
      resources:
        limits: {memory: 25Mi}
---
apiVersion: v1
kind: Pod
metadata:
  name: capped
  namespace: demo
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: capped
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      resources:
        limits: {cpu: 250m, memory: 64Mi}
"#;

/// The cgroup limits `capped` sees from inside: v2's `cpu.max` and
/// `memory.max`, or v1's quota, period and limit files.
async fn limits_seen(cri: &Cri) -> Result<String, String> {
    let script = "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max 2>/dev/null || \
                  cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us \
                      /sys/fs/cgroup/memory/memory.limit_in_bytes";
    exec_ok(cri, "capped", &["sh", "-c", script]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limits_kill_and_cpu_limits_throttle() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    let web = cluster.wait_running(2, "hello from").await;
    let p = cluster
        .cli()
        .get_json("pod", &web[0].0, "demo")
        .await
        .expect("web pod");
    assert_eq!(p["status"]["qosClass"], "Burstable", "{}", p["status"]);

    cluster.commit_manifest("pods.yaml", PODS, "A memory hog and a capped pod");

    let hog = until("hog to be OOMKilled", WAIT, || async {
        let p = cluster.cli().get_json("pod", "hog", "demo").await?;
        let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        (t["reason"] == "OOMKilled")
            .then(|| p.clone())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    assert_eq!(hog["status"]["phase"], "Failed", "{}", hog["status"]);
    assert_eq!(hog["status"]["qosClass"], "Burstable");
    assert_eq!(
        hog["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        137
    );

    let cri = cluster.cri().await;
    let seen = until("capped to run", WAIT, || limits_seen(&cri)).await;
    let words: Vec<&str> = seen.split_whitespace().collect();
    assert!(
        words == ["25000", "100000", "67108864"],
        "cgroup limits seen by the container: {seen:?}"
    );
    let p = cluster
        .cli()
        .get_json("pod", "capped", "demo")
        .await
        .expect("capped");
    assert_eq!(p["status"]["qosClass"], "Guaranteed", "{}", p["status"]);

    cluster.stop().await;
}
