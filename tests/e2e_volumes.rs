//! Volumes and init containers end to end, with real containers under
//! `commitd up`: an init container writes a page into an emptyDir that
//! the app container serves; ConfigMap, Secret, downwardAPI and
//! memory-backed volumes show up as files; a ConfigMap changed in a later
//! commit is updated in place, without a restart; the Secret lives on a
//! tmpfs; a sidecar runs beside a batch container and is stopped when it
//! is done; and stopping the cluster leaves no volume or mount behind.

mod support;

use commitd_nodeagent::cri::Cri;
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::http_get;
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdvol0",
    pod_cidr: "10.227.0.0/24",
    service_cidr: "10.100.27.0/24",
    node_name: "vol-node",
    dns_port: 10227,
    proxy_table: "cdvol",
};

const SITE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: site-config
  namespace: demo
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: site-creds
  namespace: demo
stringData:
  password: s3cret
---
apiVersion: v1
kind: Pod
metadata:
  name: site
  namespace: demo
  labels: {app: site, tier: front}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
    - name: render
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'echo "rendered by init" > /work/index.html']
      volumeMounts: [{name: work, mountPath: /work}]
  containers:
    - name: web
      image: REGISTRY/commitd/web:1
      command: [httpd, -f, -p, "80", -h, /work]
      volumeMounts:
        - {name: work, mountPath: /work, readOnly: true}
        - {name: conf, mountPath: /etc/app}
        - {name: creds, mountPath: /etc/creds}
        - {name: info, mountPath: /etc/podinfo}
        - {name: scratch, mountPath: /scratch}
        - {name: conf, mountPath: /etc/greeting, subPath: greeting}
  volumes:
    - {name: work, emptyDir: {}}
    - {name: conf, configMap: {name: site-config}}
    - {name: creds, secret: {secretName: site-creds, defaultMode: 0400}}
    - name: info
      downwardAPI:
        items:
          - {path: name, fieldRef: {fieldPath: metadata.name}}
          - {path: labels, fieldRef: {fieldPath: metadata.labels}}
    - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
"#;

/// A run-to-completion pod with a sidecar (an init container with
/// `restartPolicy: Always`): the sidecar starts first and keeps running
/// while the app reads what it wrote; when the app is done, the sidecar is
/// stopped and the pod succeeds.
const WITH_SIDECAR: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: batch
  namespace: demo
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  initContainers:
    - name: agent
      image: REGISTRY/commitd/web:1
      restartPolicy: Always
      command: [sh, -c, 'echo ticket-7 > /shared/ticket; trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      startupProbe:
        exec: {command: [test, -f, /shared/ticket]}
        periodSeconds: 1
      volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
    - name: job
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'cat /shared/ticket; sleep 2']
      volumeMounts: [{name: shared, mountPath: /shared}]
  volumes:
    - {name: shared, emptyDir: {}}
"#;

/// Runs `script` with `sh -c` in the running `web` container of `site`.
async fn sh(cri: &Cri, script: &str) -> Result<String, String> {
    exec_ok(cri, "site", &["sh", "-c", script]).await
}

fn mounts_under(path: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(path))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_and_volumes() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;

    cluster.commit_manifest("site.yaml", SITE, "A site rendered by an init container");

    // The init container ran to completion first; the app serves its page.
    let running = until("site to run", WAIT, || async {
        let p = cluster.cli().get_json("pod", "site", "demo").await?;
        let ip = p["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let app_runs = p["status"]["containerStatuses"][0]["state"]["running"].is_object();
        (app_runs && !ip.is_empty())
            .then(|| (p.clone(), ip))
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    let (p, ip) = running;
    let init = &p["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    assert_eq!(init["ready"], true, "{init}");
    let initialized = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Initialized")
        .cloned()
        .unwrap_or_default();
    assert_eq!(initialized["status"], "True", "{initialized}");
    let addr = format!("{ip}:80");
    let page = until("the page the init container wrote", WAIT, || {
        http_get(&addr)
    })
    .await;
    assert!(page.contains("rendered by init"), "{page}");

    // ConfigMap, Secret (0400, on a tmpfs), downward API, memory emptyDir.
    let cri = cluster.cri().await;
    let seen = sh(
        &cri,
        "cat /etc/app/greeting; echo; cat /etc/creds/password; echo; \
         stat -L -c %a /etc/creds/password; cat /etc/podinfo/name; echo; \
         cat /etc/podinfo/labels; echo; grep -E ' /(etc/creds|scratch) ' /proc/mounts | cut -d' ' -f2,3; \
         cat /etc/greeting",
    )
    .await
    .expect("read the volumes");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[..4], ["hello", "s3cret", "400", "site"], "{seen}");
    assert!(
        seen.contains("app=\"site\"") && seen.contains("tier=\"front\""),
        "{seen}"
    );
    assert!(seen.contains("/etc/creds tmpfs"), "{seen}");
    assert!(seen.contains("/scratch tmpfs"), "{seen}");
    assert!(seen.ends_with("hello"), "subPath: {seen}");
    // Projected volumes are read-only.
    assert!(sh(&cri, "touch /etc/app/x").await.is_err());

    // A new ConfigMap value arrives in the mounted file, in place.
    let before = cluster
        .cli()
        .get_json("pod", "site", "demo")
        .await
        .expect("pod");
    cluster
        .repo()
        .edit("site.yaml", "greeting: hello", "greeting: bonjour");
    cluster.repo().commit("New greeting");
    until("the new greeting in the volume", WAIT, || async {
        let g = sh(&cri, "cat /etc/app/greeting").await?;
        (g == "bonjour").then_some(()).ok_or(g)
    })
    .await;
    let after = cluster
        .cli()
        .get_json("pod", "site", "demo")
        .await
        .expect("pod");
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"],
        "the container was replaced"
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);

    // A sidecar runs beside the app and is stopped when the app is done.
    cluster.commit_manifest("batch.yaml", WITH_SIDECAR, "A batch pod with a sidecar");
    let both_ran = until("the job and its sidecar to run together", WAIT, || async {
        let p = cluster.cli().get_json("pod", "batch", "demo").await?;
        let sidecar = &p["status"]["initContainerStatuses"][0];
        let job = &p["status"]["containerStatuses"][0];
        (sidecar["state"]["running"].is_object() && job["state"]["running"].is_object())
            .then(|| p.clone())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    assert_eq!(both_ran["status"]["phase"], "Running", "{both_ran}");
    assert_eq!(
        both_ran["status"]["initContainerStatuses"][0]["started"], true,
        "{both_ran}"
    );
    let done = until("the batch pod to succeed", WAIT, || async {
        let p = cluster.cli().get_json("pod", "batch", "demo").await?;
        (p["status"]["phase"] == "Succeeded")
            .then(|| p.clone())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    let job = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(job["exitCode"], 0, "{done}");
    let sidecar = &done["status"]["initContainerStatuses"][0]["state"]["terminated"];
    assert!(sidecar.is_object(), "the sidecar still runs: {done}");
    let (code, printed, err) = cluster
        .cli()
        .run(&["logs", "batch", "-c", "job", "-n", "demo"])
        .await;
    assert_eq!((code, printed.as_str()), (0, "ticket-7\n"), "{err}");

    // Nothing of the volumes outlives the cluster.
    let volumes = cluster.state_dir().join("agent").join("volumes");
    assert!(volumes.is_dir(), "{} missing", volumes.display());
    let root = volumes.to_string_lossy().into_owned();
    assert!(!mounts_under(&root).is_empty(), "no tmpfs under {root}");
    cluster.stop().await;
    assert_eq!(mounts_under(&root), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(&volumes)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
