//! The Endpoints controller, as Kubernetes' (`pkg/controller/endpoint`):
//! for every Service with a selector, the pods of its namespace that match
//! it, with an IP and not finished, become the `Endpoints` object of the
//! same name: ready pods under `addresses`, the others under
//! `notReadyAddresses`, each Service port resolved to the port number the
//! pod actually listens on. The node agents' service proxy and the cluster
//! DNS read only these objects, so this loop is what takes a pod in and out
//! of rotation.
//!
//! The computation ([`desired_subsets`]) is pure and deterministic
//! (addresses sorted by IP, ports and subsets in a fixed order), so
//! unchanged inputs produce an identical object and never a write. Writes
//! are guarded by `resourceVersion`; a conflict (a stale cache, or someone
//! else's write) re-reads the object from etcd and decides again.
//!
//! Endpoints this controller writes carry [`MANAGED_BY_LABEL`]. Only those
//! are ever deleted (when their Service is gone, lost its selector or
//! became `ExternalName`); Endpoints of a selector-less Service that
//! someone else maintains are left alone, as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use commitd_api::controller::{self, Requeue};
use commitd_api::k8s_openapi::api::core::v1::{
    Container, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use commitd_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use commitd_api::reflector::{reflect, Cache};
use commitd_api::{meta, Store, StoreError};
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{earliest, pass_result, Caches};

/// The label marking Endpoints this controller maintains (and may delete).
/// Kubernetes' Endpoints carry no such mark because its controller deletes
/// by Service; here it keeps hand-made Endpoints of selector-less Services
/// safe from the clean-up of stale ones.
pub const MANAGED_BY_LABEL: &str = "endpoints.commitd.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`] on Endpoints this controller writes.
pub const MANAGED_BY_VALUE: &str = "endpoints-controller";
/// Kubernetes' label on the Endpoints of a headless Service (`clusterIP:
/// None`), so that consumers can tell without reading the Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Kubernetes' annotation on Endpoints cut to [`MAX_ENDPOINT_ADDRESSES`].
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
/// Kubernetes' limit of addresses in one Endpoints object (`maxCapacity`);
/// beyond it the object is truncated and annotated, as there.
pub const MAX_ENDPOINT_ADDRESSES: usize = 1000;

/// How long the loop sleeps when nothing changes.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon to look again when the caches have not listed yet.
const NOT_READY_REQUEUE: Duration = Duration::from_secs(1);
/// How long a selector may match nothing before a warning says so: a
/// Service committed with its Deployment matches nothing for the moment
/// the pods take to be created, which is no mistake.
const NO_PODS_GRACE: Duration = Duration::from_secs(10);
/// How many Endpoints are written at once in one pass (the first pass
/// after a start may have every Service to write).
const WRITE_CONCURRENCY: usize = 16;
/// How often a write re-reads the object after a conflict before the pass
/// reports a failure (the loop then backs off and tries again).
const WRITE_ATTEMPTS: usize = 5;

/// Runs the Endpoints loop until `cancel` fires. It watches Services and
/// Endpoints itself and shares the pod cache with the other controllers.
pub(crate) async fn run(store: Store, caches: Caches, cancel: CancellationToken) {
    let own_cancel = cancel.child_token();
    let _stop_caches = own_cancel.clone().drop_guard();
    let services = reflect::<Service>(store.clone(), own_cancel.clone());
    let endpoints = reflect::<Endpoints>(store.clone(), own_cancel.clone());
    // Before both have listed, "no Endpoints" and "no Service" mean
    // "unknown": acting on them would recreate or delete everything.
    let listed = async {
        services.ready().await;
        endpoints.ready().await;
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = listed => {}
    }
    let triggers = vec![
        services.changes(),
        endpoints.changes(),
        caches.pods.changes(),
    ];
    let ctl = Arc::new(EndpointsController {
        store,
        pods: caches.pods,
        services,
        endpoints,
        notices: Mutex::new(HashMap::new()),
    });
    controller::run("endpoints", triggers, RESYNC, cancel, move || {
        let ctl = ctl.clone();
        async move { ctl.reconcile_all().await }
    })
    .await;
}

struct EndpointsController {
    store: Store,
    pods: Cache<Pod>,
    services: Cache<Service>,
    endpoints: Cache<Endpoints>,
    /// Per Service (`namespace/name`): what was last reported about it, so
    /// that a warning is logged when something changes, not every pass.
    notices: Mutex<HashMap<String, Notices>>,
}

/// What the log last said about one Service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Notices {
    /// (pod, port name) pairs whose named target port the pod lacks.
    unresolved: BTreeSet<(String, String)>,
    /// Since when the selector has matched no pod (`None` while it does).
    no_pods_since: Option<Instant>,
    /// Whether a warning said so.
    no_pods_warned: bool,
}

/// What one pass found about one Service, for [`Notices`].
struct Findings {
    unresolved: BTreeSet<(String, String)>,
    no_pods: bool,
}

/// What one Service needs done.
enum Action {
    /// Make the Endpoints look like this.
    Sync(Box<Endpoints>),
    /// Delete this stale managed Endpoints.
    Delete(Arc<Endpoints>),
}

impl EndpointsController {
    async fn reconcile_all(&self) -> Result<Requeue> {
        if !(self.services.is_ready() && self.endpoints.is_ready() && self.pods.is_ready()) {
            return Ok(Some(NOT_READY_REQUEUE));
        }
        let pods = self.pods.list();
        let index = PodIndex::new(&pods);
        let mut actions: Vec<(String, Action)> = Vec::new();
        let mut seen_services = BTreeSet::new();
        let mut findings = HashMap::new();

        for svc in self.services.list() {
            let key = meta::display_key(&*svc);
            let namespace = meta::namespace(&*svc);
            let current = self.endpoints.get(namespace, meta::name(&*svc));
            seen_services.insert(key.clone());
            if !wants_endpoints(&svc) {
                if let Some(ep) = current.filter(|ep| is_managed(ep)) {
                    actions.push((key, Action::Delete(ep)));
                }
                continue;
            }
            let selected = index.select(namespace.unwrap_or_default(), selector_of(&svc));
            let computed = desired_subsets(&svc, &selected);
            findings.insert(
                key.clone(),
                Findings {
                    unresolved: computed.unresolved.iter().cloned().collect(),
                    no_pods: selected.is_empty(),
                },
            );
            let desired = desired_endpoints(&svc, computed.subsets);
            if current.as_deref().is_some_and(|c| up_to_date(c, &desired)) {
                continue;
            }
            actions.push((key, Action::Sync(Box::new(desired))));
        }
        for ep in self.endpoints.list() {
            let key = meta::display_key(&*ep);
            if is_managed(&ep) && !seen_services.contains(&key) {
                actions.push((key, Action::Delete(ep)));
            }
        }
        let requeue = self.report(findings, Instant::now());

        let results: Vec<(String, Result<()>)> = stream::iter(actions)
            .map(|(key, action)| async move {
                let span = info_span!("endpoints", service = %key);
                let result = match action {
                    Action::Sync(desired) => self.sync(*desired).instrument(span).await,
                    Action::Delete(ep) => self.delete(&ep).instrument(span).await,
                };
                (key, result)
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (key, result) in results {
            if let Err(e) = result {
                warn!(service = %key, error = format!("{e:#}"), "endpoints sync failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
        pass_result("endpoints", failed, requeue)
    }

    /// Logs what changed since the last pass (see [`notice_changes`]) and
    /// returns when to look again for a warning still in its grace time.
    fn report(&self, findings: HashMap<String, Findings>, now: Instant) -> Requeue {
        let mut last = self.notices.lock().unwrap_or_else(|e| e.into_inner());
        let (notes, requeue) = notice_changes(&mut last, findings, now);
        for note in notes {
            match note {
                Note::MissingPort { service, pod, port } => warn!(
                    service = %service,
                    pod = %pod,
                    port = %port,
                    "the pod declares no container port named {port:?}; it is left out of the service's endpoints for that port"
                ),
                Note::PortResolved { service, pod, port } => {
                    debug!(service = %service, pod = %pod, port = %port, "named target port resolves now")
                }
                Note::NoPods { service } => {
                    warn!(service = %service, "the service's selector matches no pods")
                }
                Note::PodsAgain { service } => {
                    info!(service = %service, "the service's selector matches pods again")
                }
            }
        }
        requeue
    }

    /// Creates or updates the Endpoints to `desired`; writes nothing when
    /// etcd already holds it.
    async fn sync(&self, desired: Endpoints) -> Result<()> {
        let namespace = meta::namespace(&desired).map(str::to_owned);
        let name = meta::name(&desired).to_owned();
        let mut current: Option<Endpoints> = self
            .endpoints
            .get(namespace.as_deref(), &name)
            .map(|c| (*c).clone());
        for _ in 0..WRITE_ATTEMPTS {
            match &current {
                None => match self.store.create(desired.clone()).await {
                    Ok(_) => {
                        info!(addresses = %summary(&desired), "created endpoints");
                        return Ok(());
                    }
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e).context("creating endpoints"),
                },
                Some(cur) if up_to_date(cur, &desired) => return Ok(()),
                Some(cur) => match self.store.update(updated(cur, &desired)).await {
                    Ok(_) => {
                        info!(addresses = %summary(&desired), "updated endpoints");
                        return Ok(());
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e).context("updating endpoints"),
                },
            }
            debug!("endpoints changed since they were read; reading them again");
            current = self
                .store
                .get::<Endpoints>(namespace.as_deref(), &name)
                .await
                .context("reading endpoints after a conflict")?;
        }
        bail!("endpoints kept changing during {WRITE_ATTEMPTS} attempts to write them")
    }

    /// Deletes managed Endpoints whose Service no longer wants them, after
    /// checking etcd (not just the cache) that the Service really does not.
    async fn delete(&self, ep: &Endpoints) -> Result<()> {
        let namespace = meta::namespace(ep);
        let name = meta::name(ep);
        let live = self
            .store
            .get::<Service>(namespace, name)
            .await
            .context("reading the service before deleting its endpoints")?;
        if live.as_ref().is_some_and(wants_endpoints) {
            debug!("the service cache is behind; keeping the endpoints");
            return Ok(());
        }
        let rv = ep.metadata.resource_version.as_deref();
        match self.store.delete::<Endpoints>(namespace, name, rv).await {
            Ok(true) => {
                let why = if live.is_some() {
                    "the service selects no pods by label"
                } else {
                    "the service is gone"
                };
                info!("deleted endpoints: {why}");
                Ok(())
            }
            Ok(false) => Ok(()),
            // Changed or gone since the cache saw it: the next pass (which
            // its change triggers) decides again.
            Err(e) if e.is_conflict() => {
                debug!("endpoints changed since they were read; deciding again later");
                Ok(())
            }
            Err(e) => Err(e).context("deleting endpoints"),
        }
    }
}

/// Something about a Service worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    /// A pod declares no container port by the name of a `targetPort`.
    MissingPort {
        service: String,
        pod: String,
        port: String,
    },
    /// A pod that lacked a named port has it now (or is gone).
    PortResolved {
        service: String,
        pod: String,
        port: String,
    },
    /// The selector has matched no pod for [`NO_PODS_GRACE`].
    NoPods { service: String },
    /// A selector warned about matches pods again.
    PodsAgain { service: String },
}

/// Compares this pass's findings with what was last reported, so that each
/// problem is reported once when it appears, not every pass: a missing
/// named port at once, a selector matching nothing only after
/// [`NO_PODS_GRACE`] (the requeue says when that may be). Replaces `last`,
/// which forgets Services that are gone.
fn notice_changes(
    last: &mut HashMap<String, Notices>,
    findings: HashMap<String, Findings>,
    now: Instant,
) -> (Vec<Note>, Requeue) {
    let mut notes = Vec::new();
    let mut requeue = None;
    let mut next = HashMap::with_capacity(findings.len());
    for (service, found) in findings {
        let before = last.remove(&service).unwrap_or_default();
        for (pod, port) in found.unresolved.difference(&before.unresolved) {
            notes.push(Note::MissingPort {
                service: service.clone(),
                pod: pod.clone(),
                port: port.clone(),
            });
        }
        for (pod, port) in before.unresolved.difference(&found.unresolved) {
            notes.push(Note::PortResolved {
                service: service.clone(),
                pod: pod.clone(),
                port: port.clone(),
            });
        }
        let no_pods_since = found.no_pods.then(|| before.no_pods_since.unwrap_or(now));
        let mut no_pods_warned = found.no_pods && before.no_pods_warned;
        match no_pods_since {
            Some(since) if !no_pods_warned => {
                let waited = now.saturating_duration_since(since);
                if waited >= NO_PODS_GRACE {
                    notes.push(Note::NoPods {
                        service: service.clone(),
                    });
                    no_pods_warned = true;
                } else {
                    requeue = earliest(requeue, Some(NO_PODS_GRACE - waited));
                }
            }
            None if before.no_pods_warned => notes.push(Note::PodsAgain {
                service: service.clone(),
            }),
            _ => {}
        }
        next.insert(
            service,
            Notices {
                unresolved: found.unresolved,
                no_pods_since,
                no_pods_warned,
            },
        );
    }
    *last = next;
    notes.sort_by_key(|n| format!("{n:?}"));
    (notes, requeue)
}

/// Whether this controller maintains Endpoints for the Service: it has a
/// selector and is not `ExternalName` (Kubernetes' `syncService`). An empty
/// selector counts as none, as it does once Kubernetes has stored it.
fn wants_endpoints(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) != Some("ExternalName") && !selector_of(svc).is_empty()
}

fn selector_of(svc: &Service) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .unwrap_or(&EMPTY)
}

/// Whether this controller wrote (and so may delete) the Endpoints.
pub fn is_managed(ep: &Endpoints) -> bool {
    ep.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

/// The pods of each namespace, indexed by label pair, so that a pass over
/// many Services looks at each Service's candidates only.
struct PodIndex<'a> {
    namespaces: HashMap<&'a str, NamespacePods<'a>>,
}

#[derive(Default)]
struct NamespacePods<'a> {
    pods: Vec<&'a Pod>,
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> PodIndex<'a> {
    fn new(pods: &'a [Arc<Pod>]) -> PodIndex<'a> {
        let mut namespaces: HashMap<&str, NamespacePods> = HashMap::new();
        for pod in pods {
            let ns = namespaces
                .entry(meta::namespace(&**pod).unwrap_or_default())
                .or_default();
            let i = ns.pods.len();
            ns.pods.push(pod);
            for (k, v) in pod.metadata.labels.iter().flatten() {
                ns.by_label.entry((k, v)).or_default().push(i);
            }
        }
        PodIndex { namespaces }
    }

    /// The pods of `namespace` carrying every pair of a non-empty selector.
    fn select(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<&'a Pod> {
        let Some(ns) = self.namespaces.get(namespace) else {
            return Vec::new();
        };
        let smallest = selector
            .iter()
            .map(|(k, v)| {
                ns.by_label
                    .get(&(k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|c| c.len());
        let Some(candidates) = smallest else {
            return Vec::new();
        };
        candidates
            .iter()
            .map(|&i| ns.pods[i])
            .filter(|p| {
                commitd_api::selector::matches_map(
                    selector,
                    p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                )
            })
            .collect()
    }
}

/// The subsets of a Service's Endpoints, and what could not be resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComputedEndpoints {
    /// Grouped and sorted as the Endpoints object stores them.
    pub subsets: Vec<EndpointSubset>,
    /// (pod name, port name) pairs left out because the pod declares no
    /// container port by that name and protocol.
    pub unresolved: Vec<(String, String)>,
}

/// The Endpoints subsets of `svc` over `pods` (which the caller selected by
/// label): Kubernetes' `syncService` and `RepackSubsets`, made
/// deterministic. Pods without an IP, finished pods and (unless
/// `publishNotReadyAddresses`) terminating pods are left out; each Service
/// port is resolved per pod; addresses that serve the same ports with the
/// same readiness share a subset. Addresses are sorted by IP (then pod
/// uid), ports by name, number and protocol, subsets by their ports.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> ComputedEndpoints {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let service_ports = spec.ports.unwrap_or_default();
    let mut unresolved = Vec::new();

    // Port → the addresses serving it, with readiness (ready wins when an
    // address shows up twice).
    let mut by_port: BTreeMap<PortKey, BTreeMap<AddressKey, bool>> = BTreeMap::new();
    let mut addresses: BTreeMap<AddressKey, EndpointAddress> = BTreeMap::new();
    let mut add = |port: PortKey, address: &EndpointAddress, ready: bool| {
        let key = AddressKey::of(address);
        addresses
            .entry(key.clone())
            .or_insert_with(|| address.clone());
        let slot = by_port.entry(port).or_default().entry(key).or_insert(ready);
        *slot |= ready;
    };
    for pod in pods {
        if !should_be_in_endpoints(pod, publish_not_ready) {
            continue;
        }
        let Some(address) = endpoint_address(svc, pod) else {
            continue;
        };
        let ready = publish_not_ready || is_pod_ready(pod);
        if service_ports.is_empty() {
            // Only a headless Service may have no ports; its addresses
            // still count (for DNS).
            if headless {
                add(PortKey::None, &address, ready);
            }
            continue;
        }
        for sp in &service_ports {
            match find_port(pod, sp) {
                Some(port) => add(PortKey::of(&endpoint_port(sp, port)), &address, ready),
                None => unresolved.push((
                    meta::name(*pod).to_string(),
                    target_port_name(sp).unwrap_or_default().to_string(),
                )),
            }
        }
    }

    // Address set → the ports it serves.
    let mut by_addresses: BTreeMap<Vec<(AddressKey, bool)>, Vec<PortKey>> = BTreeMap::new();
    for (port, addrs) in by_port {
        by_addresses
            .entry(addrs.into_iter().collect())
            .or_default()
            .push(port);
    }
    let mut subsets: Vec<EndpointSubset> = by_addresses
        .into_iter()
        .map(|(addrs, ports)| {
            let pick = |want: bool| {
                let list: Vec<EndpointAddress> = addrs
                    .iter()
                    .filter(|(_, ready)| *ready == want)
                    .filter_map(|(k, _)| addresses.get(k).cloned())
                    .collect();
                (!list.is_empty()).then_some(list)
            };
            let ports: Vec<EndpointPort> =
                ports.into_iter().filter_map(PortKey::into_port).collect();
            EndpointSubset {
                addresses: pick(true),
                not_ready_addresses: pick(false),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    subsets.sort_by_cached_key(subset_order);
    unresolved.sort();
    unresolved.dedup();
    ComputedEndpoints {
        subsets,
        unresolved,
    }
}

/// The order subsets are stored in: by their ports, then first address.
fn subset_order(s: &EndpointSubset) -> (Vec<PortKey>, Option<AddressKey>) {
    let ports = s.ports.iter().flatten().map(PortKey::of).collect();
    let first = s
        .addresses
        .iter()
        .chain(s.not_ready_addresses.iter())
        .flatten()
        .map(AddressKey::of)
        .min();
    (ports, first)
}

/// An address's identity, as Kubernetes' `addressKey`: the IP and the uid
/// of the pod behind it (two host-network pods may share an IP). Orders by
/// IP numerically, then uid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct AddressKey {
    ip: IpSortKey,
    uid: String,
}

impl AddressKey {
    fn of(a: &EndpointAddress) -> AddressKey {
        AddressKey {
            ip: IpSortKey::of(&a.ip),
            uid: a
                .target_ref
                .as_ref()
                .and_then(|r| r.uid.clone())
                .unwrap_or_default(),
        }
    }
}

/// Sorts IPv4 addresses numerically (10.0.0.9 before 10.0.0.10) and
/// anything else after them, as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum IpSortKey {
    V4(std::net::Ipv4Addr),
    Other(String),
}

impl IpSortKey {
    fn of(ip: &str) -> IpSortKey {
        ip.parse()
            .map_or_else(|_| IpSortKey::Other(ip.to_string()), IpSortKey::V4)
    }
}

/// A port's identity; `None` is the sentinel for a headless Service
/// without ports (Kubernetes' `Port: -1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortKey {
    None,
    Port {
        name: String,
        port: i32,
        protocol: String,
        app_protocol: Option<String>,
    },
}

impl PortKey {
    fn of(p: &EndpointPort) -> PortKey {
        PortKey::Port {
            name: p.name.clone().unwrap_or_default(),
            port: p.port,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol.clone(),
        }
    }

    fn into_port(self) -> Option<EndpointPort> {
        match self {
            PortKey::None => None,
            PortKey::Port {
                name,
                port,
                protocol,
                app_protocol,
            } => Some(EndpointPort {
                name: (!name.is_empty()).then_some(name),
                port,
                protocol: Some(protocol),
                app_protocol,
            }),
        }
    }
}

/// Kubernetes' `ShouldPodBeInEndpoints`: not finished, has an IP, and not
/// terminating unless terminating pods are published too.
fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    if pod_ip(pod).is_none() {
        return false;
    }
    include_terminating || !meta::is_terminating(&pod.metadata)
}

/// `status.podIP`, or the first of `status.podIPs` (single-stack IPv4).
fn pod_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .or_else(|| {
            status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .find(|ip| !ip.is_empty())
        })
}

/// Whether the pod's `Ready` condition is `True` (Kubernetes' `IsPodReady`).
fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The address of a pod in a Service's Endpoints: IP, node, a reference to
/// the pod, and its hostname when the pod names the Service as its
/// subdomain (so headless DNS gets `<hostname>.<service>` records).
fn endpoint_address(svc: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let ip = pod_ip(pod)?;
    let spec = pod.spec.as_ref();
    let hostname = spec
        .filter(|s| s.subdomain.as_deref() == Some(meta::name(svc)))
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty());
    Some(EndpointAddress {
        ip: ip.to_string(),
        hostname,
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: meta::namespace(pod).map(str::to_owned),
            name: Some(meta::name(pod).to_string()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

/// The named target port of a Service port, if it names one.
fn target_port_name(sp: &ServicePort) -> Option<&str> {
    match &sp.target_port {
        Some(IntOrString::String(name)) if !name.is_empty() => Some(name),
        _ => None,
    }
}

/// Kubernetes' `FindPort`: a numeric `targetPort` as is (absent or zero
/// means the Service port); a name looked up among the pod's container
/// ports (and those of sidecar init containers) with the same protocol.
fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    let Some(name) = target_port_name(sp) else {
        return Some(match &sp.target_port {
            Some(IntOrString::Int(n)) if *n != 0 => *n,
            _ => sp.port,
        });
    };
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let containers: Vec<&Container> = spec.containers.iter().chain(sidecars).collect();
    containers
        .into_iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

/// The endpoint port of a Service port resolved to `port` on a pod.
fn endpoint_port(sp: &ServicePort, port: i32) -> EndpointPort {
    EndpointPort {
        name: sp.name.clone().filter(|n| !n.is_empty()),
        port,
        protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
        app_protocol: sp.app_protocol.clone(),
    }
}

/// The whole Endpoints object for a Service: its namespace and name, its
/// labels plus ours, the subsets (cut to [`MAX_ENDPOINT_ADDRESSES`]).
fn desired_endpoints(svc: &Service, mut subsets: Vec<EndpointSubset>) -> Endpoints {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    let truncated = truncate(&mut subsets, MAX_ENDPOINT_ADDRESSES);
    let annotations = truncated.then(|| {
        BTreeMap::from([(
            OVER_CAPACITY_ANNOTATION.to_string(),
            "truncated".to_string(),
        )])
    });
    Endpoints {
        metadata: ObjectMeta {
            name: Some(meta::name(svc).to_string()),
            namespace: meta::namespace(svc).map(str::to_owned),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// Cuts the subsets to at most `max` addresses, dropping not-ready ones
/// before ready ones, each taken from the end of the sorted lists.
/// Returns whether anything was cut.
fn truncate(subsets: &mut Vec<EndpointSubset>, max: usize) -> bool {
    let count = |l: &Option<Vec<EndpointAddress>>| l.as_ref().map_or(0, Vec::len);
    let ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if ready + not_ready <= max {
        return false;
    }
    let mut ready_budget = max.min(ready);
    let mut not_ready_budget = max - ready_budget;
    for s in subsets.iter_mut() {
        for (list, budget) in [
            (&mut s.addresses, &mut ready_budget),
            (&mut s.not_ready_addresses, &mut not_ready_budget),
        ] {
            if let Some(l) = list.as_mut() {
                l.truncate(*budget);
                *budget -= l.len();
                if l.is_empty() {
                    *list = None;
                }
            }
        }
    }
    subsets.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    true
}

/// Whether the stored Endpoints already say what `desired` says: the same
/// subsets, labels and over-capacity mark (other annotations are not ours).
fn up_to_date(current: &Endpoints, desired: &Endpoints) -> bool {
    let subsets = |e: &Endpoints| e.subsets.clone().unwrap_or_default();
    fn over(e: &Endpoints) -> Option<&str> {
        meta::annotation(&e.metadata, OVER_CAPACITY_ANNOTATION)
    }
    subsets(current) == subsets(desired)
        && current.metadata.labels.clone().unwrap_or_default()
            == desired.metadata.labels.clone().unwrap_or_default()
        && over(current) == over(desired)
}

/// `current` with `desired`'s subsets, labels and over-capacity mark; its
/// identity (uid, creation time, resourceVersion) and other annotations kept.
fn updated(current: &Endpoints, desired: &Endpoints) -> Endpoints {
    let mut next = current.clone();
    next.subsets = desired.subsets.clone();
    next.metadata.labels = desired.metadata.labels.clone();
    let mut annotations = next.metadata.annotations.take().unwrap_or_default();
    match meta::annotation(&desired.metadata, OVER_CAPACITY_ANNOTATION) {
        Some(v) => annotations.insert(OVER_CAPACITY_ANNOTATION.into(), v.into()),
        None => annotations.remove(OVER_CAPACITY_ANNOTATION),
    };
    next.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    next
}

/// `ip:port` pairs of the ready addresses for a log line, like the
/// ENDPOINTS column.
fn summary(ep: &Endpoints) -> String {
    let mut out = Vec::new();
    let mut not_ready = 0;
    for s in ep.subsets.iter().flatten() {
        not_ready += s.not_ready_addresses.as_ref().map_or(0, Vec::len);
        for a in s.addresses.iter().flatten() {
            match s.ports.as_deref() {
                Some(ports) if !ports.is_empty() => {
                    out.extend(ports.iter().map(|p| format!("{}:{}", a.ip, p.port)))
                }
                _ => out.push(a.ip.clone()),
            }
        }
    }
    let ready = if out.is_empty() {
        "<none>".to_string()
    } else {
        out.join(",")
    };
    if not_ready > 0 {
        format!("{ready} ({not_ready} not ready)")
    } else {
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> Service {
        let mut svc: Service = serde_json::from_value(v).expect("valid service");
        commitd_api::defaults::service(&mut svc);
        svc
    }

    fn web_service() -> Service {
        service(json!({
            "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                               {"name": "metrics", "port": 9090, "targetPort": 9100}]}
        }))
    }

    /// A pod of `app: web` with `ip`, ready or not, declaring `ports`
    /// (name, number).
    fn pod(name: &str, ip: Option<&str>, ready: bool, ports: &[(&str, i32)]) -> Pod {
        let ports: Vec<_> = ports
            .iter()
            .map(|(n, p)| json!({"name": n, "containerPort": p, "protocol": "TCP"}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"),
                          "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1",
                     "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .expect("valid pod")
    }

    fn ips(list: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        list.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    fn ports(s: &EndpointSubset) -> Vec<(String, i32)> {
        s.ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect()
    }

    #[test]
    fn ready_pods_become_addresses_with_resolved_ports() {
        let svc = web_service();
        let a = pod("web-a", Some("10.244.0.10"), true, &[("http", 8080)]);
        let b = pod("web-b", Some("10.244.0.9"), true, &[("http", 8080)]);
        let c = pod("web-c", Some("10.244.0.11"), false, &[("http", 8080)]);
        let got = desired_subsets(&svc, &[&a, &b, &c]);
        assert_eq!(got.unresolved, Vec::<(String, String)>::new());
        assert_eq!(got.subsets.len(), 1);
        let s = &got.subsets[0];
        // Sorted numerically by IP, not as text.
        assert_eq!(ips(&s.addresses), vec!["10.244.0.9", "10.244.0.10"]);
        assert_eq!(ips(&s.not_ready_addresses), vec!["10.244.0.11"]);
        assert_eq!(
            ports(s),
            vec![("http".to_string(), 8080), ("metrics".to_string(), 9100)]
        );
        let first = &s.addresses.as_ref().expect("addresses")[0];
        assert_eq!(first.node_name.as_deref(), Some("node-1"));
        let target = first.target_ref.as_ref().expect("target ref");
        assert_eq!(
            (
                target.kind.as_deref(),
                target.namespace.as_deref(),
                target.name.as_deref(),
                target.uid.as_deref()
            ),
            (Some("Pod"), Some("demo"), Some("web-b"), Some("uid-web-b"))
        );
        assert_eq!(first.hostname, None);
        assert_eq!(
            s.ports.as_ref().expect("ports")[0].protocol.as_deref(),
            Some("TCP")
        );
    }

    #[test]
    fn pods_without_the_named_port_are_left_out_for_that_port() {
        let svc = web_service();
        let a = pod("web-a", Some("10.244.0.1"), true, &[("http", 8080)]);
        let b = pod("web-b", Some("10.244.0.2"), true, &[("web", 8080)]);
        let got = desired_subsets(&svc, &[&a, &b]);
        assert_eq!(
            got.unresolved,
            vec![("web-b".to_string(), "http".to_string())]
        );
        // Port sets differ: a serves both ports, b only the numeric one.
        // As Kubernetes repacks: ports grouped by identical address sets.
        assert_eq!(got.subsets.len(), 2);
        assert_eq!(ports(&got.subsets[0]), vec![("http".to_string(), 8080)]);
        assert_eq!(ips(&got.subsets[0].addresses), vec!["10.244.0.1"]);
        assert_eq!(ports(&got.subsets[1]), vec![("metrics".to_string(), 9100)]);
        assert_eq!(
            ips(&got.subsets[1].addresses),
            vec!["10.244.0.1", "10.244.0.2"]
        );
    }

    #[test]
    fn named_ports_match_the_protocol_too() {
        let svc = service(json!({
            "metadata": {"name": "dns", "namespace": "demo"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]}
        }));
        let tcp_only = pod("p", Some("10.244.0.1"), true, &[("dns", 5353)]);
        let got = desired_subsets(&svc, &[&tcp_only]);
        assert!(got.subsets.is_empty());
        assert_eq!(got.unresolved, vec![("p".to_string(), "dns".to_string())]);
    }

    #[test]
    fn pods_without_ip_finished_or_terminating_are_left_out() {
        let svc = web_service();
        let no_ip = pod("no-ip", None, true, &[("http", 80)]);
        let mut done = pod("done", Some("10.244.0.2"), false, &[("http", 80)]);
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        let mut leaving = pod("leaving", Some("10.244.0.3"), true, &[("http", 80)]);
        leaving.metadata.deletion_timestamp = Some(meta::now());
        let got = desired_subsets(&svc, &[&no_ip, &done, &leaving]);
        assert!(got.subsets.is_empty(), "{:?}", got.subsets);

        // Publishing not-ready addresses includes terminating pods, ready.
        let mut publish = svc.clone();
        publish
            .spec
            .as_mut()
            .expect("spec")
            .publish_not_ready_addresses = Some(true);
        let not_ready = pod("not-ready", Some("10.244.0.4"), false, &[("http", 80)]);
        let got = desired_subsets(&publish, &[&no_ip, &done, &leaving, &not_ready]);
        assert_eq!(got.subsets.len(), 1);
        assert_eq!(
            ips(&got.subsets[0].addresses),
            vec!["10.244.0.3", "10.244.0.4"]
        );
        assert_eq!(got.subsets[0].not_ready_addresses, None);
    }

    #[test]
    fn headless_services_get_hostnames_and_may_have_no_ports() {
        let svc = service(json!({
            "metadata": {"name": "db", "namespace": "demo"},
            "spec": {"clusterIP": "None", "selector": {"app": "web"}}
        }));
        let mut a = pod("db-0", Some("10.244.0.5"), true, &[]);
        let spec = a.spec.as_mut().expect("spec");
        spec.hostname = Some("db-0".into());
        spec.subdomain = Some("db".into());
        let mut b = pod("db-1", Some("10.244.0.6"), true, &[]);
        let spec = b.spec.as_mut().expect("spec");
        spec.hostname = Some("db-1".into());
        spec.subdomain = Some("other".into());
        let got = desired_subsets(&svc, &[&a, &b]);
        assert_eq!(got.subsets.len(), 1);
        let s = &got.subsets[0];
        assert_eq!(s.ports, None);
        let hosts: Vec<Option<&str>> = s
            .addresses
            .iter()
            .flatten()
            .map(|a| a.hostname.as_deref())
            .collect();
        assert_eq!(hosts, vec![Some("db-0"), None]);
        let ep = desired_endpoints(&svc, got.subsets);
        let labels = ep.metadata.labels.expect("labels");
        assert_eq!(labels.get(HEADLESS_LABEL).map(String::as_str), Some(""));
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );

        // A service with a ClusterIP and no ports gets no addresses.
        let mut vip = svc.clone();
        vip.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.20".into());
        assert!(desired_subsets(&vip, &[&a]).subsets.is_empty());
    }

    #[test]
    fn numeric_and_absent_target_ports() {
        let mut svc = service(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        }));
        let a = pod("a", Some("10.244.0.1"), true, &[]);
        let got = desired_subsets(&svc, &[&a]);
        // A single unnamed port keeps an empty name.
        assert_eq!(ports(&got.subsets[0]), vec![(String::new(), 80)]);
        assert_eq!(got.subsets[0].ports.as_ref().expect("ports")[0].name, None);
        svc.spec
            .as_mut()
            .expect("spec")
            .ports
            .as_mut()
            .expect("ports")[0]
            .target_port = None;
        assert_eq!(
            ports(&desired_subsets(&svc, &[&a]).subsets[0]),
            vec![(String::new(), 80)]
        );
    }

    #[test]
    fn the_same_inputs_in_any_order_give_the_same_object() {
        let svc = web_service();
        let pods: Vec<Pod> = (0..12)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    Some(&format!("10.244.{}.{}", i % 3, 20 - i)),
                    i % 4 != 0,
                    &[("http", 8080)],
                )
            })
            .collect();
        let forward: Vec<&Pod> = pods.iter().collect();
        let backward: Vec<&Pod> = pods.iter().rev().collect();
        let a = desired_endpoints(&svc, desired_subsets(&svc, &forward).subsets);
        let b = desired_endpoints(&svc, desired_subsets(&svc, &backward).subsets);
        assert_eq!(a, b);
        assert!(up_to_date(&a, &b));
    }

    #[test]
    fn selection_uses_labels_and_namespace() {
        let a = Arc::new(pod("a", Some("10.244.0.1"), true, &[]));
        let mut other = pod("b", Some("10.244.0.2"), true, &[]);
        other.metadata.namespace = Some("elsewhere".into());
        let mut tiered = pod("c", Some("10.244.0.3"), true, &[]);
        tiered
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("tier".into(), "front".into());
        let pods = vec![a, Arc::new(other), Arc::new(tiered)];
        let index = PodIndex::new(&pods);
        let names = |sel: &[(&str, &str)]| -> Vec<String> {
            let sel: BTreeMap<String, String> = sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            index
                .select("demo", &sel)
                .into_iter()
                .map(|p| meta::name(p).to_string())
                .collect()
        };
        assert_eq!(names(&[("app", "web")]), vec!["a", "c"]);
        assert_eq!(names(&[("app", "web"), ("tier", "front")]), vec!["c"]);
        assert_eq!(names(&[("app", "db")]), Vec::<String>::new());
        assert_eq!(
            index
                .select("nowhere", &BTreeMap::from([("app".into(), "web".into())]))
                .len(),
            0
        );
    }

    #[test]
    fn services_without_selector_or_external_names_get_none() {
        let mut svc = web_service();
        assert!(wants_endpoints(&svc));
        svc.spec.as_mut().expect("spec").selector = Some(BTreeMap::new());
        assert!(!wants_endpoints(&svc));
        svc.spec.as_mut().expect("spec").selector = None;
        assert!(!wants_endpoints(&svc));
        let external = service(json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com",
                     "selector": {"app": "web"}}
        }));
        assert!(!wants_endpoints(&external));
    }

    #[test]
    fn updates_keep_identity_and_foreign_annotations() {
        let svc = web_service();
        let a = pod("a", Some("10.244.0.1"), true, &[("http", 8080)]);
        let desired = desired_endpoints(&svc, desired_subsets(&svc, &[&a]).subsets);
        let mut current = desired.clone();
        current.metadata.uid = Some("ep-uid".into());
        current.metadata.resource_version = Some("42".into());
        current.metadata.annotations = Some(BTreeMap::from([
            ("note".to_string(), "kept".to_string()),
            (
                OVER_CAPACITY_ANNOTATION.to_string(),
                "truncated".to_string(),
            ),
        ]));
        current.subsets = None;
        assert!(!up_to_date(&current, &desired));
        let next = updated(&current, &desired);
        assert!(up_to_date(&next, &desired));
        assert_eq!(next.metadata.uid.as_deref(), Some("ep-uid"));
        assert_eq!(next.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            next.metadata.annotations,
            Some(BTreeMap::from([("note".to_string(), "kept".to_string())]))
        );
        // A label added by hand is taken away again.
        let mut edited = desired.clone();
        edited
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("x".into(), "y".into());
        assert!(!up_to_date(&edited, &desired));
    }

    #[test]
    fn oversized_endpoints_are_truncated_not_ready_first() {
        let addr = |i: usize| EndpointAddress {
            ip: format!("10.0.{}.{}", i / 250, i % 250),
            ..Default::default()
        };
        let mut subsets = vec![EndpointSubset {
            addresses: Some((0..8).map(addr).collect()),
            not_ready_addresses: Some((8..12).map(addr).collect()),
            ports: None,
        }];
        assert!(!truncate(&mut subsets.clone(), 12));
        assert!(truncate(&mut subsets, 10));
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(8));
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().map(Vec::len),
            Some(2)
        );
        assert!(truncate(&mut subsets, 3));
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(3));
        assert_eq!(subsets[0].not_ready_addresses, None);
    }

    fn findings(unresolved: &[(&str, &str)], no_pods: bool) -> Findings {
        Findings {
            unresolved: unresolved
                .iter()
                .map(|(p, n)| (p.to_string(), n.to_string()))
                .collect(),
            no_pods,
        }
    }

    #[test]
    fn problems_are_reported_once_when_they_change() {
        let mut last = HashMap::new();
        let t0 = Instant::now();
        let svc = "demo/web".to_string();
        let pass = |last: &mut HashMap<String, Notices>, f: Findings, at: Duration| {
            notice_changes(last, HashMap::from([(svc.clone(), f)]), t0 + at)
        };
        let missing = Note::MissingPort {
            service: svc.clone(),
            pod: "web-b".into(),
            port: "http".into(),
        };
        let (notes, requeue) = pass(
            &mut last,
            findings(&[("web-b", "http")], false),
            Duration::ZERO,
        );
        assert_eq!(notes, vec![missing]);
        assert_eq!(requeue, None);
        // The same again: nothing new to say.
        let (notes, _) = pass(
            &mut last,
            findings(&[("web-b", "http")], false),
            Duration::from_secs(1),
        );
        assert!(notes.is_empty(), "{notes:?}");
        let (notes, _) = pass(&mut last, findings(&[], false), Duration::from_secs(2));
        assert_eq!(
            notes,
            vec![Note::PortResolved {
                service: svc.clone(),
                pod: "web-b".into(),
                port: "http".into()
            }]
        );

        // Matching nothing is said only after the grace time, once.
        let (notes, requeue) = pass(&mut last, findings(&[], true), Duration::from_secs(3));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(requeue, Some(NO_PODS_GRACE));
        let (notes, requeue) = pass(&mut last, findings(&[], true), Duration::from_secs(8));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(requeue, Some(NO_PODS_GRACE - Duration::from_secs(5)));
        let (notes, _) = pass(&mut last, findings(&[], true), Duration::from_secs(13));
        assert_eq!(
            notes,
            vec![Note::NoPods {
                service: svc.clone()
            }]
        );
        let (notes, requeue) = pass(&mut last, findings(&[], true), Duration::from_secs(20));
        assert!(notes.is_empty() && requeue.is_none(), "{notes:?}");
        let (notes, _) = pass(&mut last, findings(&[], false), Duration::from_secs(21));
        assert_eq!(
            notes,
            vec![Note::PodsAgain {
                service: svc.clone()
            }]
        );

        // Pods that appear within the grace time cause no warning at all.
        pass(&mut last, findings(&[], true), Duration::from_secs(30));
        let (notes, _) = pass(&mut last, findings(&[], false), Duration::from_secs(31));
        assert!(notes.is_empty(), "{notes:?}");

        // Services that are gone are forgotten.
        notice_changes(&mut last, HashMap::new(), t0);
        assert!(last.is_empty());
    }

    #[test]
    fn summaries_list_ready_endpoints() {
        let svc = web_service();
        let a = pod("a", Some("10.244.0.1"), true, &[("http", 8080)]);
        let b = pod("b", Some("10.244.0.2"), false, &[("http", 8080)]);
        let ep = desired_endpoints(&svc, desired_subsets(&svc, &[&a, &b]).subsets);
        assert_eq!(
            summary(&ep),
            "10.244.0.1:8080,10.244.0.1:9100 (1 not ready)"
        );
        let empty = desired_endpoints(&svc, Vec::new());
        assert_eq!(summary(&empty), "<none>");
        assert_eq!(empty.subsets, None);
    }
}
