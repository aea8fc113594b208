//! Security contexts end to end, with real containers under `commitd up`:
//! the user and groups a container runs as, volumes given to the pod's
//! `fsGroup`, a read-only root filesystem,
//! dropped capabilities and no privilege escalation, all capabilities for
//! a privileged container, seen from inside the containers; and `runAsNonRoot` against the demo image, which runs as
//! root: refused with the kubelet's `CreateContainerConfigError` unless
//! the pod names a user.

mod support;

use commitd_nodeagent::cri::Cri;
use support::cli::exec_in;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdsec0",
    pod_cidr: "10.226.0.0/24",
    service_cidr: "10.100.26.0/24",
    node_name: "sec-node",
    dns_port: 10226,
    proxy_table: "cdsec",
};

/// One pod per case; `SECURITY` is the pod's `securityContext`, `CONTAINER`
/// the container's.
const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: NAME
  namespace: demo
spec:
  terminationGracePeriodSeconds: 2
  securityContext: SECURITY
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      securityContext: CONTAINER
"#;

/// A pod running as a user that is not root, with `fsGroup`: an emptyDir
/// it writes to and a Secret readable only by its owner (0400), which the
/// group makes readable.
const OWNED: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: demo
stringData:
  token: s3cret
---
apiVersion: v1
kind: Pod
metadata:
  name: owned
  namespace: demo
spec:
  terminationGracePeriodSeconds: 2
  securityContext: {runAsUser: 1000, fsGroup: 2000}
  containers:
    - name: app
      image: REGISTRY/commitd/web:1
      command: [sh, -c, 'trap "exit 0" TERM; while :; do sleep 1 & wait $!; done']
      volumeMounts:
        - {name: scratch, mountPath: /scratch}
        - {name: creds, mountPath: /creds}
  volumes:
    - {name: scratch, emptyDir: {}}
    - {name: creds, secret: {secretName: creds, defaultMode: 0400}}
"#;

fn pod_yaml(registry: &str, name: &str, pod_sc: &str, container_sc: &str) -> String {
    POD.replace("REGISTRY", registry)
        .replace("NAME", name)
        .replace("SECURITY", pod_sc)
        .replace("CONTAINER", container_sc)
}

/// The output of `cmd` in pod `name`, once its container runs and the
/// command succeeds.
async fn output(cri: &Cri, name: &str, cmd: &[&str]) -> String {
    let what = format!("{cmd:?} to succeed in {name}");
    until(&what, WAIT, || async {
        let out = exec_in(cri, name, cmd).await?;
        if out.exit_code == 0 {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(format!("exit {}: {}", out.exit_code, out.stderr))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_contexts_apply_inside_real_containers() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;

    let registry = cluster.registry.addr.clone();
    let pods = [
        pod_yaml(
            &registry,
            "ids",
            "{runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000, supplementalGroups: [4000]}",
            "{}",
        ),
        pod_yaml(
            &registry,
            "readonly",
            "{}",
            "{readOnlyRootFilesystem: true}",
        ),
        pod_yaml(
            &registry,
            "nocaps",
            "{}",
            "{capabilities: {drop: [ALL]}, allowPrivilegeEscalation: false}",
        ),
        pod_yaml(&registry, "rootrefused", "{runAsNonRoot: true}", "{}"),
        pod_yaml(&registry, "privileged", "{}", "{privileged: true}"),
        pod_yaml(
            &registry,
            "nonroot",
            "{runAsNonRoot: true}",
            "{runAsUser: 1000}",
        ),
        OWNED.replace("REGISTRY", &registry),
    ];
    cluster.repo().write("security.yaml", &pods.join("---\n"));
    cluster.repo().commit("Pods with security contexts");
    let cri = cluster.cri().await;

    // The pod's user and group; fsGroup and supplementalGroups as extra
    // groups.
    assert_eq!(output(&cri, "ids", &["id", "-u"]).await, "1000");
    assert_eq!(output(&cri, "ids", &["id", "-g"]).await, "3000");
    let groups = output(&cri, "ids", &["id", "-G"]).await;
    let groups: Vec<&str> = groups.split_whitespace().collect();
    for g in ["3000", "2000", "4000"] {
        assert!(groups.contains(&g), "group {g} missing in {groups:?}");
    }

    // fsGroup: the emptyDir belongs to the group, is writable by the
    // pod's user, and what is made in it joins the group; the Secret's
    // owner-only files become readable by the group.
    let made = output(
        &cri,
        "owned",
        &[
            "sh",
            "-c",
            "touch /scratch/f && stat -c '%g %a' /scratch /scratch/f && stat -L -c '%g %a' /creds/token",
        ],
    )
    .await;
    assert_eq!(made, "2000 2777\n2000 644\n2000 440");
    assert_eq!(
        output(&cri, "owned", &["cat", "/creds/token"]).await,
        "s3cret"
    );

    // A read-only root filesystem, even for root.
    assert_eq!(output(&cri, "readonly", &["id", "-u"]).await, "0");
    let touched = exec_in(&cri, "readonly", &["touch", "/x"])
        .await
        .expect("exec touch");
    assert_ne!(touched.exit_code, 0, "touch /x succeeded: {touched:?}");
    assert!(
        touched.stderr.contains("Read-only file system"),
        "{touched:?}"
    );

    // No capabilities at all, and no way to gain privileges, even as root.
    let caps = output(&cri, "nocaps", &["grep", "CapEff", "/proc/self/status"]).await;
    assert_eq!(caps.split_whitespace().nth(1), Some("0000000000000000"));
    let nnp = output(&cri, "nocaps", &["grep", "NoNewPrivs", "/proc/self/status"]).await;
    assert_eq!(nnp.split_whitespace().nth(1), Some("1"));
    // Without the context a root container keeps the default set; a
    // privileged one (in a sandbox made privileged for it) gets them all.
    let effective = |status: String| {
        let hex = status
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        u64::from_str_radix(&hex, 16).expect("CapEff in hex")
    };
    let default =
        effective(output(&cri, "readonly", &["grep", "CapEff", "/proc/self/status"]).await);
    let all = effective(output(&cri, "privileged", &["grep", "CapEff", "/proc/self/status"]).await);
    assert!(
        default != 0 && all & default == default && all > default,
        "{all:x} vs {default:x}"
    );

    // runAsNonRoot with an image that runs as root: refused, as the
    // kubelet refuses it.
    let (uid, waiting) = until("CreateContainerConfigError", WAIT, || async {
        let p = cluster.cli().get_json("pod", "rootrefused", "demo").await?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (w["reason"] == "CreateContainerConfigError")
            .then(|| {
                (
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    w["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    assert_eq!(
        waiting,
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"rootrefused_demo({uid})\", container: app)"
        )
    );
    assert!(!cluster
        .running_container_pods()
        .await
        .contains("rootrefused"));

    // ... and allowed with a user that is not root.
    assert_eq!(output(&cri, "nonroot", &["id", "-u"]).await, "1000");
    let p = cluster
        .cli()
        .get_json("pod", "nonroot", "demo")
        .await
        .expect("pod");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);

    cluster.stop().await;
}
