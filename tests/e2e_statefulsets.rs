//! StatefulSets end to end, with real containers under `commitd up`: a set
//! of three starts in order (each member only once the one before is
//! ready, audited on every pod write in etcd), each member writes to its
//! own volume, the governing headless Service gives each member a DNS
//! name, and a deleted member comes back with the same name, the same DNS
//! name (now pointing at its new address) and the same data. One test:
//! tests in one binary would share the network.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use commitd_api::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use commitd_api::{keys, meta, Kind, Store};
use etcd_client::{EventType, WatchOptions};
use support::cli::exec_ok;
use support::cluster::{Cluster, Network, WAIT};
use support::wait::until;
use tokio_util::sync::CancellationToken;

const NETWORK: Network = Network {
    bridge: "cdsts0",
    pod_cidr: "10.234.0.0/24",
    service_cidr: "10.100.34.0/24",
    node_name: "sts-node",
    dns_port: 10234,
    proxy_table: "cdsts",
};

const DB: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: demo
spec:
  clusterIP: None
  selector: {app: db}
  ports:
    - {name: peer, port: 7000}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: demo
spec:
  serviceName: db
  replicas: 3
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: db
          image: REGISTRY/commitd/web:1
          command: [sh, -c, 'echo "boot of $(hostname)" >> /data/boots; exec sleep 3600']
          readinessProbe:
            exec: {command: [test, -s, /data/boots]}
            periodSeconds: 1
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests:
            storage: 64Mi
"#;

/// For every `db-N` created, the members that were ready at that moment,
/// from every pod write in etcd (polling could miss a short violation).
async fn audit_creations(
    store: Store,
    from: i64,
    stop: CancellationToken,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let prefix = keys::kind_prefix(Kind::Pod);
    let mut stream = store
        .client()
        .watch(
            prefix.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    let mut creations = Vec::new();
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let resp = tokio::select! {
            _ = stop.cancelled() => return Ok(creations),
            msg = stream.message() => match msg? {
                Some(resp) => resp,
                None => anyhow::bail!("watch ended"),
            },
        };
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            if ev.event_type() == EventType::Delete {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                ready.remove(key.rsplit('/').next().unwrap_or_default());
                continue;
            }
            let pod: Pod = serde_json::from_slice(kv.value())?;
            let name = meta::name(&pod).to_string();
            if !name.starts_with("db-") {
                continue;
            }
            if kv.version() == 1 {
                let now_ready = ready
                    .iter()
                    .filter(|(_, r)| **r)
                    .map(|(n, _)| n.clone())
                    .collect();
                creations.push((name.clone(), now_ready));
            }
            let is_ready = !meta::is_terminating(&pod.metadata)
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready.insert(name, is_ready);
        }
    }
}

async fn pod_ip(store: &Store, name: &str) -> Result<(String, String), String> {
    let pod = store
        .get::<Pod>(Some("demo"), name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{name} does not exist"))?;
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match status.pod_ip {
        Some(ip) if ready && !meta::is_terminating(&pod.metadata) => {
            Ok((pod.metadata.uid.unwrap_or_default(), ip))
        }
        _ => Err(format!("{name} is not ready: {:?}", status.phase)),
    }
}

/// Where a member's volume is on the host: its claim's bound volume path.
async fn volume_dir(store: &Store, claim: &str) -> Result<String, String> {
    let c = store
        .get::<PersistentVolumeClaim>(Some("demo"), claim)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("claim {claim} does not exist"))?;
    let volume = c
        .spec
        .and_then(|s| s.volume_name)
        .ok_or_else(|| format!("claim {claim} is not bound"))?;
    let pv = store
        .get::<PersistentVolume>(None, &volume)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("volume {volume} does not exist"))?;
    let spec = pv.spec.unwrap_or_default();
    spec.host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| format!("volume {volume} has no path"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_sets_start_in_order_and_keep_names_dns_and_data() {
    if !support::is_root() {
        eprintln!("skipping: needs root for containerd and nftables");
        return;
    }
    let mut cluster = Cluster::up(NETWORK).await;
    cluster.wait_running(2, "hello from").await;
    let store = cluster.store().await;
    let from = store
        .client()
        .get("/", None)
        .await
        .ok()
        .and_then(|r| r.header().map(|h| h.revision()))
        .unwrap_or(1);
    let stop = CancellationToken::new();
    let audit = tokio::spawn(audit_creations(store.clone(), from, stop.clone()));
    cluster.commit_manifest("db.yaml", DB, "A database of three");

    let mut members = BTreeMap::new();
    for name in ["db-0", "db-1", "db-2"] {
        let (uid, ip) = until(&format!("{name} to be ready"), WAIT, || {
            pod_ip(&store, name)
        })
        .await;
        members.insert(name, (uid, ip));
    }
    let (code, table, err) = cluster
        .cli()
        .run(&["get", "statefulsets,pvc", "-n", "demo"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["statefulset.apps/db", "3/3"])),
        "{table}"
    );
    for claim in ["data-db-0", "data-db-1", "data-db-2"] {
        let name = format!("persistentvolumeclaim/{claim}");
        assert!(
            table.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.first() == Some(&name.as_str()) && cells.get(1) == Some(&"Bound")
            }),
            "{table}"
        );
    }

    // Ordered start: each member was made only once every lower one was
    // ready.
    stop.cancel();
    let creations = audit.await.expect("audit task").expect("audit");
    let first: Vec<&str> = creations.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(first, ["db-0", "db-1", "db-2"], "{creations:?}");
    assert!(creations[0].1.is_empty(), "{creations:?}");
    assert_eq!(creations[1].1, ["db-0"], "{creations:?}");
    assert_eq!(creations[2].1, ["db-0", "db-1"], "{creations:?}");

    // Each member's own volume, on the node, holds its own boots.
    let cri = cluster.cri().await;
    for name in ["db-0", "db-1", "db-2"] {
        let claim = format!("data-{name}");
        let dir = until(&format!("{name}'s volume"), WAIT, || {
            volume_dir(&store, &claim)
        })
        .await;
        let on_host = std::fs::read_to_string(format!("{dir}/boots")).expect("read boots");
        assert_eq!(on_host, format!("boot of {name}\n"), "{dir}");
        assert!(
            dir.starts_with(&cluster.state_dir().display().to_string()),
            "{dir} is under the node's state dir"
        );
    }

    // Each member has a DNS name under the headless Service.
    let lookup = |name: &'static str, ip: String| {
        let cri = &cri;
        async move {
            let out = exec_ok(
                cri,
                "db-0",
                &["nslookup", &format!("{name}.db.demo.svc.cluster.local")],
            )
            .await?;
            out.contains(&ip)
                .then_some(())
                .ok_or(format!("{name} → {out}"))
        }
    };
    for name in ["db-1", "db-2"] {
        let ip = members[name].1.clone();
        until(&format!("{name}.db to resolve"), WAIT, || {
            lookup(name, ip.clone())
        })
        .await;
    }

    // Deleted, db-1 comes back: same name, same data, the DNS name follows.
    // commitd has no imperative delete: the pod is marked for deletion
    // in etcd, as a controller's graceful delete does.
    store
        .modify::<Pod, _>(Some("demo"), "db-1", |p| {
            p.metadata.deletion_timestamp = Some(meta::now());
            p.metadata.deletion_grace_period_seconds = Some(1);
            true
        })
        .await
        .expect("mark db-1 for deletion");
    let old_uid = members["db-1"].0.clone();
    let (_, new_ip) = until("db-1 to come back", WAIT, || async {
        let (uid, ip) = pod_ip(&store, "db-1").await?;
        if uid == old_uid {
            return Err("still the old pod".to_string());
        }
        Ok((uid, ip))
    })
    .await;
    let boots = until("db-1 to have booted twice", WAIT, || async {
        let out = exec_ok(&cri, "db-1", &["cat", "/data/boots"]).await?;
        (out.lines().count() == 2).then_some(out.clone()).ok_or(out)
    })
    .await;
    assert_eq!(boots, "boot of db-1\nboot of db-1\n");
    until("db-1.db to follow the new address", WAIT, || {
        lookup("db-1", new_ip.clone())
    })
    .await;
    // The others were left alone.
    for name in ["db-0", "db-2"] {
        let (uid, _) = pod_ip(&store, name).await.expect("member");
        assert_eq!(uid, members[name].0, "{name} was not restarted");
    }
    tokio::time::timeout(Duration::from_secs(60), cluster.stop())
        .await
        .expect("cluster stops");
}
