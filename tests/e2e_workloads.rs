//! The workload examples (`examples/workloads/`: a StatefulSet behind a
//! headless Service, a CronJob, a DaemonSet, a Job, a claim with a pod and
//! a StorageClass, in the shapes of the Kubernetes tutorials) committed as
//! they are, images aside, to a real `commitd up`: everything runs,
//! completes or binds, and the commit becomes Healthy. One test: tests in
//! one binary would share the network.

mod support;

use serde_json::Value;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdwl0",
    pod_cidr: "10.235.0.0/24",
    service_cidr: "10.100.35.0/24",
    node_name: "workloads-node",
    dns_port: 10235,
    proxy_table: "cdwl",
};

/// The CronJob runs every minute: its first run may be a minute away.
const CRON_WAIT: std::time::Duration = std::time::Duration::from_secs(150);

fn examples() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workloads");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples/workloads")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&path).expect("read example");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

/// `.status` of one object, through `commitd get -o json`.
async fn status(cluster: &Cluster, kind: &str, name: &str) -> Result<Value, String> {
    let obj = cluster.cli().get_json(kind, name, "demo").await?;
    Ok(obj["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_examples_deploy_unmodified() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;
    for (file, text) in examples() {
        // Only the registry differs: the examples name 127.0.0.1:5000.
        cluster.repo().write(
            &file,
            &text.replace("127.0.0.1:5000", &cluster.registry.addr),
        );
    }
    cluster.repo().commit("The workload examples");

    until("StatefulSet web to have 3 ready members", WAIT, || async {
        let s = status(&cluster, "statefulset", "web").await?;
        (s["readyReplicas"] == 3 && s["availableReplicas"] == 3)
            .then_some(())
            .ok_or_else(|| s.to_string())
    })
    .await;
    for claim in ["www-web-0", "www-web-1", "www-web-2", "cache"] {
        until(&format!("claim {claim} to be bound"), WAIT, || async {
            let s = status(&cluster, "pvc", claim).await?;
            (s["phase"] == "Bound")
                .then_some(())
                .ok_or_else(|| s.to_string())
        })
        .await;
    }
    until("pod cache-user to run", WAIT, || async {
        let s = status(&cluster, "pod", "cache-user").await?;
        (s["phase"] == "Running")
            .then_some(())
            .ok_or_else(|| s.to_string())
    })
    .await;
    until("DaemonSet node-agent on the node", WAIT, || async {
        let s = status(&cluster, "daemonset", "node-agent").await?;
        (s["desiredNumberScheduled"] == 1 && s["numberReady"] == 1)
            .then_some(())
            .ok_or_else(|| s.to_string())
    })
    .await;
    until("Job batch to complete five times", WAIT, || async {
        let s = status(&cluster, "job", "batch").await?;
        (s["succeeded"] == 5)
            .then_some(())
            .ok_or_else(|| s.to_string())
    })
    .await;
    until("CronJob hello to have run once", CRON_WAIT, || async {
        let s = status(&cluster, "cronjob", "hello").await?;
        s["lastSuccessfulTime"]
            .is_string()
            .then_some(())
            .ok_or_else(|| s.to_string())
    })
    .await;

    // Every workload kind in one `get`, with kubectl's headers.
    let (code, table, err) = cluster
        .cli()
        .run(&[
            "get",
            "statefulsets,daemonsets,cronjobs,jobs,pvc",
            "-n",
            "demo",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    for header in [
        "NAME READY AGE",
        "NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE",
        "NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE",
        "NAME STATUS COMPLETIONS DURATION AGE",
        "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == header),
            "no header {header:?} in\n{table}"
        );
    }
    let (code, classes, err) = cluster.cli().run(&["get", "storageclasses"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        classes
            .lines()
            .any(|l| l.starts_with("local-path (default)")),
        "{classes}"
    );
    assert!(
        classes.lines().any(|l| l.starts_with("local-path-retain ")),
        "{classes}"
    );

    // The commit as a whole is healthy.
    until("the commit to be Healthy", WAIT, || async {
        let (code, out, err) = cluster.cli().run(&["status"]).await;
        if code != 0 {
            return Err(err);
        }
        out.lines()
            .any(|l| l.starts_with("Health:") && l.contains("Healthy for"))
            .then_some(())
            .ok_or(out)
    })
    .await;
    cluster.stop().await;
}
