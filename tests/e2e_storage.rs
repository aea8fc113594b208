//! Storage end to end, with real containers under `commitd up` started
//! with `--local-path-capacity 1Gi`: a claim without a class is bound to a
//! volume the built-in `local-path` class provisions under the node's
//! state dir; a pod mounting it writes a file that lands in that
//! directory; the pod is replaced and the new pod reads the same data; a
//! claim larger than the node's capacity stays Pending and says why (and
//! a pod put on the node by hand with it waits in ContainerCreating);
//! removing claims from Git deletes a `Delete` volume with its directory
//! and keeps a `Retain` one with its data; `commitd get pvc,pv,sc` shows
//! kubectl's columns. One test: tests in one binary would share the
//! network.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use commitd_api::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use commitd_api::{storage, Store};
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;

const NETWORK: Network = Network {
    bridge: "cdpv0",
    pod_cidr: "10.233.0.0/24",
    service_cidr: "10.100.33.0/24",
    node_name: "pv-node",
    dns_port: 10233,
    proxy_table: "cdpv",
};

const CLAIMS: &str = r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: keep
provisioner: commitd.io/local-path
reclaimPolicy: Retain
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: demo
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 64Mi
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: huge
  namespace: demo
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 10Gi
---
apiVersion: v1
kind: Pod
metadata:
  name: stuck
  namespace: demo
spec:
  nodeName: pv-node
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: REGISTRY/commitd/web:1
      command: [sleep, '3600']
      volumeMounts:
        - {name: big, mountPath: /big}
  volumes:
    - name: big
      persistentVolumeClaim: {claimName: huge}
"#;

const SCRATCH: &str = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: scratch
  namespace: demo
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 16Mi
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: kept
  namespace: demo
spec:
  storageClassName: keep
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 16Mi
"#;

/// A pod that mounts `data` (and the scratch claims) and runs `script`.
fn pod(name: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: REGISTRY/commitd/web:1
      command: [sh, -c, '{script}']
      volumeMounts:
        - {{name: data, mountPath: /data}}
        - {{name: scratch, mountPath: /scratch}}
        - {{name: kept, mountPath: /kept}}
  volumes:
    - name: data
      persistentVolumeClaim: {{claimName: data}}
    - name: scratch
      persistentVolumeClaim: {{claimName: scratch}}
    - name: kept
      persistentVolumeClaim: {{claimName: kept}}
"#
    )
}

/// The claim's bound volume, once Bound.
async fn bound_volume(store: &Store, claim: &str) -> Result<PersistentVolume, String> {
    let c = store
        .get::<PersistentVolumeClaim>(Some("demo"), claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("claim {claim} does not exist"))?;
    let phase = c.status.as_ref().and_then(|s| s.phase.clone());
    let volume = c.spec.as_ref().and_then(|s| s.volume_name.clone());
    let (Some("Bound"), Some(volume)) = (phase.as_deref(), volume) else {
        return Err(format!("claim {claim} is not bound: {:?}", c.status));
    };
    store
        .get::<PersistentVolume>(None, &volume)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("volume {volume} does not exist"))
}

fn path_of(pv: &PersistentVolume) -> PathBuf {
    PathBuf::from(storage::volume_path(pv).expect("a volume path"))
}

/// The table's row whose first cell is `name`, split into cells.
fn row(table: &str, name: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_provisioned_mounted_kept_and_reclaimed() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster =
        Cluster::up_with(NETWORK, vec!["--local-path-capacity".into(), "1Gi".into()]).await;
    cluster.wait_running(2, "hello from").await;
    let store = cluster.store().await;
    let writer = pod(
        "writer",
        "echo written by writer > /data/greeting; echo scratch > /scratch/f; echo kept > /kept/f; exec sleep 3600",
    );
    cluster.repo().write("scratch.yaml", SCRATCH);
    cluster.commit_manifest(
        "storage.yaml",
        &format!("{CLAIMS}---\n{writer}"),
        "Claims and a pod writing to them",
    );

    // Provisioned on the node, under its state dir.
    let data = until("claim data to be bound", WAIT, || {
        bound_volume(&store, "data")
    })
    .await;
    let dir = path_of(&data);
    let root = cluster.state_dir().join("agent").join("local-path");
    assert_eq!(dir.parent(), Some(root.as_path()), "{}", dir.display());
    assert_eq!(storage::pinned_node(&data), Some(NETWORK.node_name));
    let greeting = dir.join("greeting");
    until("the pod's file on the node", WAIT, || async {
        std::fs::read_to_string(&greeting).map_err(|e| format!("{}: {e}", greeting.display()))
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&greeting).expect("greeting"),
        "written by writer\n"
    );

    // Larger than the node offers: Pending, saying why.
    let message = until("claim huge to say why it waits", WAIT, || async {
        let c = store
            .get::<PersistentVolumeClaim>(Some("demo"), "huge")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no claim")?;
        c.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.reason.as_deref() == Some("ProvisioningFailed"))
            .and_then(|c| c.message.clone())
            .ok_or_else(|| format!("{:?}", c.status))
    })
    .await;
    assert!(
        message.starts_with("no node has 10Gi of local-path capacity free: pv-node has "),
        "{message}"
    );

    // A pod placed on the node by hand with that claim waits for it.
    let waiting = until("the pod on the unbound claim to wait", WAIT, || async {
        let p = store
            .get::<Pod>(Some("demo"), "stuck")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no pod")?;
        let status = p.status.clone().unwrap_or_default();
        status
            .container_statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref()?.waiting.clone())
            .filter(|w| w.message.is_some())
            .ok_or_else(|| format!("{status:?}"))
    })
    .await;
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(
        waiting.message.as_deref(),
        Some("MountVolume.SetUp failed for volume \"big\" : error processing PVC demo/huge: PVC is not bound")
    );

    // kubectl's columns.
    let (code, table, err) = cluster.cli().run(&["get", "pvc,pv,sc", "-n", "demo"]).await;
    assert_eq!(code, 0, "{err}");
    for header in [
        "NAME STATUS VOLUME CAPACITY ACCESS MODES STORAGECLASS VOLUMEATTRIBUTESCLASS AGE",
        "NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM STORAGECLASS VOLUMEATTRIBUTESCLASS REASON AGE",
        "NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE",
    ] {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == header),
            "{header}\n{table}"
        );
    }
    let pv_name = commitd_api::meta::name(&data).to_string();
    // Several kinds: names carry kubectl's type prefixes.
    let claim_row = row(&table, "persistentvolumeclaim/data").unwrap_or_default();
    assert_eq!(
        claim_row.get(..6).map(|c| c.join(" ")),
        Some(format!(
            "persistentvolumeclaim/data Bound {pv_name} 64Mi RWO local-path"
        )),
        "{table}"
    );
    let huge_row = row(&table, "persistentvolumeclaim/huge").unwrap_or_default();
    assert_eq!(
        huge_row.get(1).map(String::as_str),
        Some("Pending"),
        "{table}"
    );
    let pv_row = row(&table, &format!("persistentvolume/{pv_name}")).unwrap_or_default();
    assert_eq!(
        pv_row.get(..6).map(|c| c.join(" ")),
        Some(format!(
            "persistentvolume/{pv_name} 64Mi RWO Delete Bound demo/data"
        )),
        "{table}"
    );
    let sc_row = row(&table, "storageclass.storage.k8s.io/local-path").map(|c| c.join(" "));
    assert_eq!(
        sc_row.as_deref().and_then(|r| r.rsplit_once(' ').map(|(r, _age)| r)),
        Some("storageclass.storage.k8s.io/local-path (default) commitd.io/local-path Delete Immediate false"),
        "{table}"
    );

    // The pod is replaced: the new one reads what the old one wrote.
    let reader = pod("reader", "exec sleep 3600");
    cluster.commit_manifest(
        "storage.yaml",
        &format!("{CLAIMS}---\n{reader}"),
        "Replace the writer with a reader",
    );
    let cri = cluster.cri().await;
    let read = until("the reader to read the writer's file", WAIT, || async {
        exec_ok(&cri, "reader", &["cat", "/data/greeting"]).await
    })
    .await;
    assert_eq!(read, "written by writer\n");
    until("the writer to be gone", WAIT, || async {
        let pods = cluster.running_container_pods().await;
        if pods.iter().any(|p| p.contains("writer")) {
            Err(format!("{pods:?}"))
        } else {
            Ok(())
        }
    })
    .await;

    // Claims removed from Git: Delete takes the directory and the volume,
    // Retain keeps both. The reader goes too (it mounts them).
    let scratch = until("claim scratch to be bound", WAIT, || {
        bound_volume(&store, "scratch")
    })
    .await;
    let kept = until("claim kept to be bound", WAIT, || {
        bound_volume(&store, "kept")
    })
    .await;
    let (scratch_dir, kept_dir) = (path_of(&scratch), path_of(&kept));
    assert_eq!(
        std::fs::read_to_string(kept_dir.join("f")).expect("kept file"),
        "kept\n"
    );
    assert!(scratch_dir.join("f").exists(), "{}", scratch_dir.display());
    cluster.repo().remove("scratch.yaml");
    cluster.commit_manifest(
        "storage.yaml",
        CLAIMS,
        "Drop the pod and the scratch claims",
    );
    let scratch_name = commitd_api::meta::name(&scratch).to_string();
    until(
        "the Delete volume and its directory to go",
        WAIT,
        || async {
            let pv = store
                .get::<PersistentVolume>(None, &scratch_name)
                .await
                .map_err(|e| e.to_string())?;
            match (pv, scratch_dir.exists()) {
                (None, false) => Ok(()),
                (pv, exists) => Err(format!(
                    "volume {:?}, directory exists: {exists}",
                    pv.and_then(|v| v.status)
                )),
            }
        },
    )
    .await;
    let kept_name = commitd_api::meta::name(&kept).to_string();
    let released = until("the Retain volume to be Released", WAIT, || async {
        let pv = store
            .get::<PersistentVolume>(None, &kept_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the volume is gone")?;
        match pv.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Released") => Ok(pv.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(path_of(&released), kept_dir);
    assert_eq!(
        std::fs::read_to_string(kept_dir.join("f")).expect("kept file stays"),
        "kept\n"
    );
    // The claim still in Git keeps its volume and data.
    let still = bound_volume(&store, "data")
        .await
        .expect("data still bound");
    assert_eq!(path_of(&still), dir);
    assert!(greeting.exists());

    // Binding the Git-owned claims was never taken for drift.
    let log = std::fs::read_to_string(cluster.state.path().join("up.log")).expect("up.log");
    assert!(
        !log.contains("drift corrected"),
        "{}",
        log.lines()
            .filter(|l| l.contains("drift"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    tokio::time::timeout(Duration::from_secs(60), cluster.stop())
        .await
        .expect("cluster stops");
}
