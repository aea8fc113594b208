//! End to end, through every real layer: `commitd up` starts etcd and
//! containerd, images come from a real registry, and the test acts only as
//! a user does — commits to Git, runs the read-only commands, fetches pages
//! from pod IPs, and asks containerd what runs.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

/// This test's own network, so other tests' clusters never collide.
const NETWORK: Network = Network {
    bridge: "cde2e0",
    pod_cidr: "10.218.0.0/24",
    service_cidr: "10.100.18.0/24",
    node_name: "e2e-node",
    dns_port: 10218,
    proxy_table: "cde2e",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_becomes_running_containers() {
    let mut cluster = Cluster::up(NETWORK).await;

    // The first commit deploys 2 replicas; each pod serves its page.
    let pages = cluster.wait_running(2, "hello from").await;
    for (name, page) in &pages {
        assert!(
            page.contains(name.as_str()),
            "pod {name} serves another pod's page: {page}"
        );
    }

    // Once its pods are ready, the commit's history record says it is
    // healthy, and so does the status.
    let history = until("the applied commit to be healthy", WAIT, || async {
        let (_, out, _) = cluster.cli().run(&["history"]).await;
        out.lines()
            .any(|l| l.contains(" applied ") && l.contains("Healthy since"))
            .then_some(out.clone())
            .ok_or(out)
    })
    .await;
    assert!(!history.contains("Degraded"), "{history}");
    let (_, status, _) = cluster.cli().run(&["status"]).await;
    assert!(status.contains("Health:   Healthy for"), "{status}");

    // Scale to 3 with a commit.
    cluster
        .repo()
        .edit("web.yaml", "replicas: 2", "replicas: 3");
    cluster.repo().commit("Scale web to 3");
    let three = cluster.wait_running(3, "version 1").await;
    let three_names: BTreeSet<String> = three.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        pages.iter().all(|(n, _)| three_names.contains(n)),
        "scaling up must keep the running pods"
    );
    let (code, table, _) = cluster
        .cli()
        .run(&["get", "pods", "-n", "demo", "-o", "wide"])
        .await;
    assert_eq!(code, 0);
    for header in ["NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE"] {
        assert!(table.contains(header), "missing column {header}: {table}");
    }
    assert_eq!(table.matches("e2e-node").count(), 3, "{table}");

    // Broken commits change nothing and are reported with file and line.
    let running_before = cluster.running_container_pods().await;
    assert_eq!(running_before, three_names);
    let broken: [(&str, &str, &str); 3] = [
        ("web.yaml", "replicas: 3", "replicas: [3"),
        ("web.yaml", "replicas: 3", "replica: 3"),
        (
            "config.yaml",
            "name: web-config",
            "name: web-config\n  # dup\n",
        ),
    ];
    for (i, (file, from, to)) in broken.iter().enumerate() {
        let original = std::fs::read_to_string(cluster.repo_path.join(file)).expect("read");
        cluster.repo().edit(file, from, to);
        if i == 2 {
            // Two objects of the same kind and name in two files.
            cluster.repo().write("dup.yaml", &original);
        }
        let sha = cluster.repo().commit(&format!("Broken {i}"));
        let status = until("the rejected commit in status", WAIT, || async {
            let (_, out, _) = cluster.cli().run(&["status"]).await;
            out.contains(&sha[..7]).then_some(out.clone()).ok_or(out)
        })
        .await;
        let expected_file = if i == 2 { "dup.yaml" } else { "web.yaml" };
        assert!(
            status.contains(&format!("{expected_file}:")),
            "status does not name {expected_file}: {status}"
        );
        // Restore for the next case.
        cluster.repo().write(file, &original);
        if i == 2 {
            cluster.repo().remove("dup.yaml");
        }
        cluster.repo().commit(&format!("Fix {i}"));
    }
    assert_eq!(
        cluster.running_container_pods().await,
        running_before,
        "broken commits touched running pods"
    );

    // A new image replaces the pods.
    cluster
        .repo()
        .edit("web.yaml", "commitd/web:1", "commitd/web:2");
    cluster.repo().commit("Web version 2");
    let v2 = cluster.wait_running(3, "version 2").await;
    assert!(
        v2.iter().all(|(n, _)| !three_names.contains(n)),
        "pods were not replaced"
    );

    // Stopping `up` stops everything it started; a second `up` on the same
    // state dir resumes the applied commit.
    let uids: Vec<String> = cluster
        .cli()
        .pods("demo")
        .await
        .expect("pods")
        .iter()
        .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    assert_eq!(uids.len(), 3);
    cluster.stop().await;
    for uid in &uids {
        let cgroup = Path::new("/sys/fs/cgroup/memory/commitd").join(format!("pod{uid}"));
        assert!(
            !cgroup.exists(),
            "{} left behind after up stopped",
            cgroup.display()
        );
    }
    cluster.start();
    cluster.wait_running(3, "version 2").await;

    // Deleting the file removes pods and their containers.
    cluster.repo().remove("web.yaml");
    cluster.repo().commit("Remove web");
    until("pods gone", WAIT, || async {
        let pods = cluster.cli().pods("demo").await?;
        pods.is_empty()
            .then_some(())
            .ok_or(format!("{} pods", pods.len()))
    })
    .await;
    until("containers gone from containerd", WAIT, || async {
        let cri = cluster.cri().await;
        let c = cri
            .list_containers(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let s = cri
            .list_pod_sandboxes(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        (c.is_empty() && s.is_empty()).then_some(()).ok_or(format!(
            "{} containers, {} sandboxes",
            c.len(),
            s.len()
        ))
    })
    .await;

    let (code, history, _) = cluster.cli().run(&["history"]).await;
    assert_eq!(code, 0);
    assert!(
        history.contains("Remove web") && history.contains("rejected"),
        "{history}"
    );
    cluster.stop().await;
}
