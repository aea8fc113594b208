//! The storage controller against a real etcd: the default `local-path`
//! class appears; a claim binds to the smallest matching volume made by
//! hand, or to the one it names; a claim without a class gets a local-path
//! volume provisioned on the node with room; a claim too large for every
//! node, or asking for shared access, stays Pending and says why; a
//! deleted claim's volume is Released (and a new claim of the same name
//! does not get it back); restarting the controllers mid-way never
//! provisions twice.
//!
//! No node agent runs: the test writes the Node it would publish.

mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use commitd_api::k8s_openapi::api::storage::v1::StorageClass;
use commitd_api::{meta, storage, Store};
use serde_json::json;

use support::etcd::{with_etcd, Controllers};
use support::wait::eventually;

const NS: &str = "demo";
const DEADLINE: Duration = Duration::from_secs(30);
const ROOT: &str = "/var/lib/commitd-test/agent/local-path";

async fn node(store: &Store, name: &str, capacity: &str) -> Result<()> {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name,
            "labels": {storage::HOSTNAME_LABEL: name},
            "annotations": {storage::ROOT_ANNOTATION: ROOT}},
        "status": {
            "capacity": {storage::CAPACITY_RESOURCE: capacity},
            "allocatable": {storage::CAPACITY_RESOURCE: capacity},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))?;
    store.create(node).await?;
    Ok(())
}

async fn claim(
    store: &Store,
    name: &str,
    size: &str,
    class: Option<&str>,
    mode: &str,
    volume: Option<&str>,
) -> Result<PersistentVolumeClaim> {
    let mut c: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": [mode], "storageClassName": class, "volumeName": volume,
            "resources": {"requests": {"storage": size}}}
    }))?;
    commitd_api::defaults::persistent_volume_claim(&mut c);
    Ok(store.create(c).await?)
}

async fn manual_volume(store: &Store, name: &str, size: &str) -> Result<()> {
    let mut v: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual", "hostPath": {"path": format!("/srv/{name}")}}
    }))?;
    commitd_api::defaults::persistent_volume(&mut v);
    store.create(v).await?;
    Ok(())
}

/// The claim once it is Bound: (volume name, claim).
async fn bound(store: &Store, name: &str) -> Result<(String, PersistentVolumeClaim)> {
    eventually(&format!("claim {name} to be bound"), DEADLINE, || async {
        let c = store
            .get::<PersistentVolumeClaim>(Some(NS), name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no claim")?;
        let phase = c.status.as_ref().and_then(|s| s.phase.clone());
        match (
            phase.as_deref(),
            c.spec.as_ref().and_then(|s| s.volume_name.clone()),
        ) {
            (Some("Bound"), Some(v)) => Ok((v, c)),
            _ => Err(format!("{:?}", c.status)),
        }
    })
    .await
}

/// The claim's `Pending` condition once it has one: (reason, message).
async fn pending(store: &Store, name: &str) -> Result<(String, String)> {
    eventually(
        &format!("claim {name} to say why it waits"),
        DEADLINE,
        || async {
            let c = store
                .get::<PersistentVolumeClaim>(Some(NS), name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no claim")?;
            let status = c.status.clone().unwrap_or_default();
            let cond = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Pending" && c.status == "True");
            match (status.phase.as_deref(), cond) {
                (Some("Pending"), Some(cond)) => Ok((
                    cond.reason.clone().unwrap_or_default(),
                    cond.message.clone().unwrap_or_default(),
                )),
                _ => Err(format!("{status:?}")),
            }
        },
    )
    .await
}

async fn volume_phase(store: &Store, name: &str, want: &str) -> Result<PersistentVolume> {
    eventually(&format!("volume {name} to be {want}"), DEADLINE, || async {
        let v = store
            .get::<PersistentVolume>(None, name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no volume")?;
        match v.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some(p) if p == want => Ok(v.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_provision_wait_and_release() -> Result<()> {
    with_etcd(|store| async move {
        node(&store, "node-a", "1Gi").await?;
        let controllers = Controllers::start(&store);

        // The built-in default class.
        let class = eventually("the default class", DEADLINE, || async {
            store
                .get::<StorageClass>(None, storage::LOCAL_PATH_CLASS)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_string())
        })
        .await?;
        assert!(storage::is_default_class(&class));
        assert_eq!(class.provisioner, storage::LOCAL_PATH_PROVISIONER);
        assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
        assert!(!meta::is_git_owned(&class.metadata));

        // Volumes made by hand: the smallest that fits, or the one named.
        manual_volume(&store, "manual-small", "512Mi").await?;
        manual_volume(&store, "manual-big", "2Gi").await?;
        manual_volume(&store, "manual-named", "4Gi").await?;
        let fixed = claim(
            &store,
            "fixed",
            "256Mi",
            Some("manual"),
            "ReadWriteOnce",
            None,
        )
        .await?;
        let named = claim(
            &store,
            "named",
            "1Gi",
            Some("manual"),
            "ReadWriteOnce",
            Some("manual-named"),
        )
        .await?;
        let (v, _) = bound(&store, "fixed").await?;
        assert_eq!(v, "manual-small");
        let (v, _) = bound(&store, "named").await?;
        assert_eq!(v, "manual-named");
        let pv = volume_phase(&store, "manual-small", "Bound").await?;
        let r = pv.spec.and_then(|s| s.claim_ref).context("claimRef")?;
        assert_eq!(r.uid, fixed.metadata.uid);
        assert_eq!(r.name.as_deref(), Some("fixed"));
        let pv = volume_phase(&store, "manual-named", "Bound").await?;
        assert_eq!(
            pv.spec.and_then(|s| s.claim_ref).and_then(|r| r.uid),
            named.metadata.uid
        );

        // No class: the default class provisions on the node.
        let data = claim(&store, "data", "256Mi", None, "ReadWriteOnce", None).await?;
        let uid = data.metadata.uid.clone().context("uid")?;
        let (v, c) = bound(&store, "data").await?;
        assert_eq!(v, format!("pvc-{uid}"));
        assert_eq!(
            c.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref()),
            Some("local-path"),
            "the default class is recorded on the claim"
        );
        let capacity = c.status.as_ref().and_then(|s| s.capacity.as_ref());
        assert_eq!(
            capacity
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.as_str()),
            Some("256Mi")
        );
        let pv = volume_phase(&store, &v, "Bound").await?;
        assert!(storage::is_local_path_volume(&pv));
        assert_eq!(storage::pinned_node(&pv), Some("node-a"));
        assert_eq!(
            storage::volume_path(&pv).map(str::to_owned),
            Some(format!("{ROOT}/pvc-{uid}_{NS}_data"))
        );
        let spec = pv.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        assert_eq!(spec.claim_ref.and_then(|r| r.uid), Some(uid.clone()));

        // Too large for the node: pending with the reason.
        claim(&store, "huge", "10Gi", None, "ReadWriteOnce", None).await?;
        let (reason, message) = pending(&store, "huge").await?;
        assert_eq!(reason, "ProvisioningFailed");
        assert_eq!(
            message,
            "no node has 10Gi of local-path capacity free: node-a has 768Mi"
        );
        // Shared access: local-path cannot.
        claim(&store, "shared", "1Mi", None, "ReadWriteMany", None).await?;
        let (reason, message) = pending(&store, "shared").await?;
        assert_eq!(reason, "ProvisioningFailed");
        assert!(message.contains("not ReadWriteMany"), "{message}");

        // Restarted mid-way: every claim gets exactly one volume.
        controllers.kill().await;
        let mut uids = Vec::new();
        for name in ["burst-0", "burst-1", "burst-2"] {
            let c = claim(&store, name, "16Mi", None, "ReadWriteOnce", None).await?;
            uids.push(c.metadata.uid.context("uid")?);
        }
        let controllers = Controllers::start(&store);
        for name in ["burst-0", "burst-1", "burst-2"] {
            bound(&store, name).await?;
        }
        let provisioned: Vec<String> = store
            .list::<PersistentVolume>(None)
            .await?
            .items
            .iter()
            .filter(|v| storage::is_local_path_volume(v))
            .map(|v| meta::name(v).to_string())
            .collect();
        assert_eq!(provisioned.len(), 4, "{provisioned:?}");
        for uid in &uids {
            assert!(
                provisioned.contains(&format!("pvc-{uid}")),
                "{provisioned:?}"
            );
        }

        // Deleted claims release their volumes; Retain keeps the one made
        // by hand Released, and a new claim of the same name does not get
        // it back.
        store
            .delete::<PersistentVolumeClaim>(Some(NS), "data", None)
            .await?;
        store
            .delete::<PersistentVolumeClaim>(Some(NS), "fixed", None)
            .await?;
        volume_phase(&store, &format!("pvc-{uid}"), "Released").await?;
        volume_phase(&store, "manual-small", "Released").await?;
        claim(
            &store,
            "fixed",
            "256Mi",
            Some("manual"),
            "ReadWriteOnce",
            None,
        )
        .await?;
        let (v, _) = bound(&store, "fixed").await?;
        assert_eq!(v, "manual-big", "the released volume is not reused");
        let kept = volume_phase(&store, "manual-small", "Released").await?;
        assert_eq!(
            kept.spec.and_then(|s| s.claim_ref).and_then(|r| r.uid),
            fixed.metadata.uid,
            "a released volume keeps naming its old claim"
        );
        controllers.stop().await
    })
    .await
}
