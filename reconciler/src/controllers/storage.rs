//! The storage controller: Kubernetes' PersistentVolume controller with a
//! built-in local-path provisioner, as k3s ships one.
//!
//! - The default StorageClass `local-path` (provisioner
//!   `commitd.io/local-path`, reclaim `Delete`, binding `Immediate`) is
//!   created when no class of that name exists. It is not Git-owned: a
//!   class of the same name declared in Git takes it over.
//! - A pending claim binds to an existing volume that satisfies it (one
//!   pre-bound to it first, else the smallest Available one), else, when
//!   its class is local-path's, a volume is provisioned on the Ready node
//!   with the most room and bound on the next pass. A claim nothing can
//!   serve stays Pending with a `Pending` condition saying why.
//! - A volume whose claim is gone is Released; `Retain` keeps it so, and a
//!   local-path volume with `Delete` is removed by its node agent (which
//!   removes the directory first). `WaitForFirstConsumer` classes are
//!   bound at once (logged once per class).
//!
//! Binding writes the volume first (`claimRef`, phase Bound) and then the
//! claim (`volumeName`, status), each guarded by the resourceVersion read,
//! so a crash between the two is finished by the next pass from the
//! volume's `claimRef`. After a write, no pass runs until the caches show
//! it, so a volume is never provisioned twice for one claim.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use commitd_api::{meta, storage, Object, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::expectations::Expectations;
use super::volume_binder::{self, ClaimAction, VolumeAction, World};
use super::{pass_result, resource_version, Caches};

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon to look again when a cache has not caught up with a write.
const CATCH_UP: Duration = Duration::from_millis(200);
/// Expectation keys: one per cache this controller writes through.
const CLAIMS: &str = "claims";
const VOLUMES: &str = "volumes";

/// Runs the storage loop until `cancel` fires.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let triggers = vec![
        caches.claims.changes(),
        caches.volumes.changes(),
        caches.storage_classes.changes(),
        caches.nodes.changes(),
    ];
    let ctl = Arc::new(StorageController {
        store,
        caches,
        expectations: Expectations::default(),
        warned: Mutex::new(BTreeSet::new()),
    });
    controller::run("storage", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct StorageController {
    store: Store,
    caches: Caches,
    /// The revision of our last write through each cache.
    expectations: Expectations,
    /// Classes already warned about (WaitForFirstConsumer).
    warned: Mutex<BTreeSet<String>>,
}

impl StorageController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        if !self
            .expectations
            .satisfied(CLAIMS, self.caches.claims.revision())
            || !self
                .expectations
                .satisfied(VOLUMES, self.caches.volumes.revision())
        {
            debug!("waiting for the caches to show our writes");
            return Ok(Some(CATCH_UP));
        }
        let mut failed = Vec::new();
        if let Err(e) = self.ensure_default_class().await {
            failed.push(format!("default storage class: {e:#}"));
        }
        self.warn_wait_for_first_consumer();
        let volumes = self.caches.volumes.list();
        for volume in &volumes {
            let span = info_span!("volume", volume = %meta::name(&**volume));
            if let Err(e) = self.sync_volume(volume).instrument(span).await {
                warn!(volume = %meta::name(&**volume), error = format!("{e:#}"), "volume sync failed");
                failed.push(format!("volume {}: {e:#}", meta::name(&**volume)));
            }
        }
        let classes = self.caches.storage_classes.list();
        let nodes = self.caches.nodes.list();
        let volume_refs: Vec<&PersistentVolume> = volumes.iter().map(|v| &**v).collect();
        let class_refs: Vec<_> = classes.iter().map(|c| &**c).collect();
        let node_refs: Vec<_> = nodes.iter().map(|n| &**n).collect();
        let world = World {
            volumes: &volume_refs,
            classes: &class_refs,
            nodes: &node_refs,
        };
        // Volumes created in this pass, which take node capacity before
        // the cache shows them.
        let mut provisioned: Vec<PersistentVolume> = Vec::new();
        let mut claims = self.caches.claims.list();
        // Oldest first, as the PV controller's queue roughly goes.
        claims.sort_by(|a, b| {
            let created = |c: &PersistentVolumeClaim| c.metadata.creation_timestamp.clone();
            created(a)
                .cmp(&created(b))
                .then_with(|| meta::display_key(&**a).cmp(&meta::display_key(&**b)))
        });
        for claim in claims {
            if meta::is_terminating(&claim.metadata) {
                continue;
            }
            let key = meta::display_key(&*claim);
            let span = info_span!("claim", claim = %key);
            match self
                .sync_claim(&claim, &world, &provisioned)
                .instrument(span)
                .await
            {
                Ok(Some(pv)) => provisioned.push(pv),
                Ok(None) => {}
                Err(e) => {
                    warn!(claim = %key, error = format!("{e:#}"), "claim sync failed");
                    failed.push(format!("claim {key}: {e:#}"));
                }
            }
        }
        pass_result("storage", failed, None)
    }

    /// Creates the built-in default class unless a class of its name
    /// exists (Git's included).
    async fn ensure_default_class(&self) -> Result<()> {
        if self
            .caches
            .storage_classes
            .get(None, storage::LOCAL_PATH_CLASS)
            .is_some()
        {
            return Ok(());
        }
        match self.store.create(storage::builtin_class()).await {
            Ok(_) => {
                info!(
                    class = storage::LOCAL_PATH_CLASS,
                    "created the default storage class"
                );
                Ok(())
            }
            Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e).context("creating the default storage class"),
        }
    }

    fn warn_wait_for_first_consumer(&self) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        for class in self.caches.storage_classes.list() {
            if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                && warned.insert(meta::name(&*class).to_string())
            {
                warn!(
                    class = %meta::name(&*class),
                    "volumeBindingMode WaitForFirstConsumer is not supported yet: claims of this class are bound at once (Immediate)"
                );
            }
        }
    }

    async fn sync_volume(&self, volume: &PersistentVolume) -> Result<()> {
        let reference = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let claim = match reference {
            Some(r) => {
                let ns = r.namespace.as_deref().unwrap_or("default");
                let name = r.name.as_deref().unwrap_or_default();
                self.caches.claims.get(Some(ns), name)
            }
            None => None,
        };
        let Some(action) = volume_binder::decide_volume(volume, claim.as_deref()) else {
            return Ok(());
        };
        // The cache may lag a claim just created: read it before calling
        // its volume released.
        if claim.is_none() {
            if let Some(r) = reference.filter(|r| r.uid.as_deref().is_some_and(|u| !u.is_empty())) {
                let ns = r.namespace.as_deref().unwrap_or("default");
                let name = r.name.as_deref().unwrap_or_default();
                let fresh = self
                    .store
                    .get::<PersistentVolumeClaim>(Some(ns), name)
                    .await
                    .context("reading the volume's claim")?;
                if fresh.is_some_and(|c| c.metadata.uid == r.uid) {
                    debug!("the claim exists; the cache has not caught up");
                    return Ok(());
                }
            }
        }
        let mut updated = volume.clone();
        match action {
            VolumeAction::Phase { phase, message } => {
                let status = updated.status.get_or_insert_with(Default::default);
                status.phase = Some(phase.to_string());
                status.message = message;
                info!(phase, "volume phase");
            }
            VolumeAction::Unbind => {
                if let Some(spec) = updated.spec.as_mut() {
                    spec.claim_ref = None;
                }
                let status = updated.status.get_or_insert_with(Default::default);
                status.phase = Some("Available".to_string());
                status.message = None;
                info!("the claim is bound to another volume; volume available again");
            }
        }
        self.write(updated).await.map(|_| ())
    }

    /// Syncs one claim; returns a volume it provisioned.
    async fn sync_claim(
        &self,
        claim: &PersistentVolumeClaim,
        world: &World<'_>,
        provisioned: &[PersistentVolume],
    ) -> Result<Option<PersistentVolume>> {
        let default = world.default_class().map(|c| meta::name(c).to_string());
        match volume_binder::decide_claim(claim, world, provisioned) {
            ClaimAction::Bind(name) => {
                let Some(volume) = self.caches.volumes.get(None, &name) else {
                    return Ok(None);
                };
                if let Some(bound) = volume_binder::bound_volume(&volume, claim) {
                    if self.write(bound).await?.is_none() {
                        return Ok(None);
                    }
                    info!(volume = %name, "volume bound to the claim");
                }
                if let Some(bound) = volume_binder::bound_claim(claim, &volume, default.as_deref())
                {
                    if self.write(bound).await?.is_some() {
                        info!(volume = %name, "claim bound");
                    }
                }
                Ok(None)
            }
            ClaimAction::Provision(pv) => {
                let name = meta::name(&*pv).to_string();
                match self.store.create(*pv.clone()).await {
                    Ok(stored) => {
                        self.expect(VOLUMES, &stored);
                        info!(
                            volume = %name,
                            node = storage::pinned_node(&stored).unwrap_or_default(),
                            path = storage::volume_path(&stored).unwrap_or_default(),
                            "provisioned a local-path volume"
                        );
                        Ok(Some(stored))
                    }
                    Err(StoreError::AlreadyExists { .. }) => {
                        debug!(volume = %name, "already provisioned");
                        Ok(None)
                    }
                    Err(e) => Err(e).with_context(|| format!("creating volume {name}")),
                }
            }
            ClaimAction::Pending { reason, message } => {
                if let Some(pending) = volume_binder::pending_claim(
                    claim,
                    "Pending",
                    reason,
                    &message,
                    default.as_deref(),
                ) {
                    if self.write(pending).await?.is_some() {
                        info!(reason, message, "claim pending");
                    }
                }
                Ok(None)
            }
            ClaimAction::Lost => {
                if let Some(lost) = volume_binder::pending_claim(
                    claim,
                    "Lost",
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                    default.as_deref(),
                ) {
                    if self.write(lost).await?.is_some() {
                        warn!("claim lost its volume");
                    }
                }
                Ok(None)
            }
        }
    }

    /// A write guarded by the resourceVersion the object was read at;
    /// `None` when it changed meanwhile (the next pass looks again).
    async fn write<T: Object>(&self, obj: T) -> Result<Option<T>> {
        let key = meta::display_key(&obj);
        match self.store.update(obj).await {
            Ok(stored) => {
                let which = if T::STORE_KIND == commitd_api::Kind::PersistentVolume {
                    VOLUMES
                } else {
                    CLAIMS
                };
                self.expect(which, &stored);
                Ok(Some(stored))
            }
            Err(e) if e.is_conflict() => {
                debug!(object = %key, "changed since it was read; looking again");
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("writing {key}")),
        }
    }

    fn expect<T: Object>(&self, which: &str, stored: &T) {
        let m = commitd_api::k8s_openapi::Metadata::metadata(stored);
        if let Some(rev) = resource_version(m) {
            self.expectations.expect(which, rev);
        }
    }
}
