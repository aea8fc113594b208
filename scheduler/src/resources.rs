//! What a pod asks for and what a node offers, counted the way
//! kube-scheduler counts them, so that a pod fits here exactly when it
//! would fit there: requests are added as exact quantities per pod
//! (`resourcehelper.PodRequests`: containers summed, init containers as a
//! maximum, sidecars added, overhead on top) and only then rounded up to
//! millicores or units.

use std::collections::BTreeMap;

use commitd_api::quantity::{self, Quantity, QuantityError};
use k8s_openapi::api::core::v1::{Container, Node, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

/// The resource names the scheduler treats specially.
pub const CPU: &str = "cpu";
/// Memory, in bytes.
pub const MEMORY: &str = "memory";
/// Local ephemeral storage, in bytes.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// How many pods a node may run.
pub const PODS: &str = "pods";

/// What kube-scheduler assumes a container without a CPU request uses when
/// scoring (`DefaultMilliCPURequest`), so empty pods still spread.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// What kube-scheduler assumes a container without a memory request uses
/// when scoring (`DefaultMemoryRequest`, 200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Exact quantities by resource name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// A quantity in a pod that does not parse. Validation should have
/// rejected it; the scheduler reports it in the pod's condition instead of
/// guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: Invalid value: {value:?}: {source}")]
pub struct InvalidQuantity {
    /// The field path, as Kubernetes' validation names it.
    pub field: String,
    /// The text that failed to parse.
    pub value: String,
    /// Why.
    #[source]
    pub source: QuantityError,
}

/// Amounts in the units the scheduler compares: millicores for CPU, units
/// (bytes, counts) for everything else (kube-scheduler's `Resource`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// The number of pods (only meaningful for a node's allocatable).
    pub allowed_pods: i64,
    /// Extended, hugepages and other prefixed resources, in units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Converts a list as `Resource.Add` does: CPU to millicores, the rest
    /// to units (rounded up); names kube-scheduler does not track are
    /// ignored.
    pub fn from_list(list: &ResourceList) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            match name.as_str() {
                CPU => r.milli_cpu = r.milli_cpu.saturating_add(q.millis()),
                MEMORY => r.memory = r.memory.saturating_add(q.value()),
                EPHEMERAL_STORAGE => {
                    r.ephemeral_storage = r.ephemeral_storage.saturating_add(q.value())
                }
                PODS => r.allowed_pods = r.allowed_pods.saturating_add(q.value()),
                other if is_scalar_resource(other) => {
                    let slot = r.scalar.entry(other.to_string()).or_default();
                    *slot = slot.saturating_add(q.value());
                }
                _ => {}
            }
        }
        r
    }

    /// Adds another pod's amounts (saturating).
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.allowed_pods = self.allowed_pods.saturating_add(other.allowed_pods);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_default();
            *slot = slot.saturating_add(*v);
        }
    }

    /// Whether nothing at all is requested (kube-scheduler then checks only
    /// the pod count).
    pub fn is_empty_request(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.is_empty()
    }
}

/// Whether kube-scheduler tracks a resource as a "scalar" one: extended
/// resources (`example.com/gpu`), prefixed native ones, hugepages and
/// attachable volumes.
pub fn is_scalar_resource(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-") || name.starts_with("attachable-volumes-")
}

/// A pod's requests as kube-scheduler computes them
/// (`resourcehelper.PodRequests`). `non_missing` gives amounts for
/// containers that leave a resource out (the scoring defaults); pass an
/// empty list for the plain requests that filters use.
pub fn pod_requests(
    pod: &Pod,
    non_missing: &ResourceList,
) -> Result<ResourceList, InvalidQuantity> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(ResourceList::new());
    };
    let mut reqs = ResourceList::new();
    let mut explicit: Vec<ResourceList> = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let r = container_requests(c, &format!("spec.containers[{i}]"))?;
        add_into(&mut reqs, &with_non_missing(&r, non_missing));
        explicit.push(r);
    }

    // An init container runs alone, next to the sidecars started before it;
    // the pod needs the most any of those moments needs.
    let mut sidecars = ResourceList::new();
    let mut init_max = ResourceList::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let own = container_requests(c, &format!("spec.initContainers[{i}]"))?;
        let r = with_non_missing(&own, non_missing);
        explicit.push(own);
        let during = if c.restart_policy.as_deref() == Some("Always") {
            add_into(&mut reqs, &r);
            add_into(&mut sidecars, &r);
            sidecars.clone()
        } else {
            let mut during = r;
            add_into(&mut during, &sidecars);
            during
        };
        max_into(&mut init_max, &during);
    }
    max_into(&mut reqs, &init_max);

    // Pod-level requests (beta in 1.34, on by default) replace the
    // container sums for the resources they name.
    if let Some(pod_level) = spec.resources.as_ref() {
        for (name, q) in pod_level_requests(pod_level, &explicit)? {
            reqs.insert(name, q);
        }
    }

    if let Some(overhead) = spec.overhead.as_ref() {
        add_into(&mut reqs, &parse_list(overhead, "spec.overhead")?);
    }
    Ok(reqs)
}

/// The scoring defaults kube-scheduler applies to containers that request
/// no CPU or memory.
pub fn non_zero_defaults() -> ResourceList {
    ResourceList::from([
        (
            CPU.to_string(),
            Quantity::from_millis(DEFAULT_MILLI_CPU_REQUEST),
        ),
        (
            MEMORY.to_string(),
            Quantity::from_value(DEFAULT_MEMORY_REQUEST),
        ),
    ])
}

/// What a node offers: `status.allocatable`, or `status.capacity` when
/// allocatable is absent (Kubernetes' API defaulting copies capacity into
/// allocatable). Quantities that do not parse count as zero; the error is
/// returned alongside so the caller can report it.
pub fn node_allocatable(node: &Node) -> (Resources, Vec<InvalidQuantity>) {
    let status = node.status.as_ref();
    let (list, field) = match status.and_then(|s| s.allocatable.as_ref()) {
        Some(a) => (Some(a), "status.allocatable"),
        None => (status.and_then(|s| s.capacity.as_ref()), "status.capacity"),
    };
    let mut parsed = ResourceList::new();
    let mut errors = Vec::new();
    for (name, q) in list.into_iter().flatten() {
        match quantity::from_k8s(q) {
            Ok(v) => {
                parsed.insert(name.clone(), v);
            }
            Err(source) => errors.push(InvalidQuantity {
                field: format!("{field}[{name}]"),
                value: q.0.clone(),
                source,
            }),
        }
    }
    (Resources::from_list(&parsed), errors)
}

/// A container's requests after Kubernetes' defaulting: a resource with a
/// limit but no request requests its limit.
fn container_requests(c: &Container, path: &str) -> Result<ResourceList, InvalidQuantity> {
    let Some(resources) = c.resources.as_ref() else {
        return Ok(ResourceList::new());
    };
    requests_with_limits(resources, &format!("{path}.resources"))
}

fn requests_with_limits(
    r: &ResourceRequirements,
    path: &str,
) -> Result<ResourceList, InvalidQuantity> {
    let mut out = match r.requests.as_ref() {
        Some(requests) => parse_list(requests, &format!("{path}.requests"))?,
        None => ResourceList::new(),
    };
    if let Some(limits) = r.limits.as_ref() {
        for (name, q) in parse_list(limits, &format!("{path}.limits"))? {
            out.entry(name).or_insert(q);
        }
    }
    Ok(out)
}

/// The pod-level requests that override container sums: CPU and memory,
/// requested explicitly or defaulted from the pod-level limit. As in
/// Kubernetes' defaulting, a pod-level limit becomes the request only when
/// no container requests that resource itself (otherwise the request is
/// the containers' aggregate, which is already computed).
fn pod_level_requests(
    r: &ResourceRequirements,
    containers: &[ResourceList],
) -> Result<ResourceList, InvalidQuantity> {
    let requests = match r.requests.as_ref() {
        Some(q) => parse_list(q, "spec.resources.requests")?,
        None => ResourceList::new(),
    };
    let limits = match r.limits.as_ref() {
        Some(q) => parse_list(q, "spec.resources.limits")?,
        None => ResourceList::new(),
    };
    let mut out = ResourceList::new();
    for name in [CPU, MEMORY] {
        if let Some(q) = requests.get(name) {
            out.insert(name.to_string(), *q);
        } else if let Some(q) = limits.get(name) {
            if !containers.iter().any(|c| c.contains_key(name)) {
                out.insert(name.to_string(), *q);
            }
        }
    }
    Ok(out)
}

fn parse_list(
    list: &BTreeMap<String, K8sQuantity>,
    path: &str,
) -> Result<ResourceList, InvalidQuantity> {
    list.iter()
        .map(|(name, q)| {
            quantity::from_k8s(q)
                .map(|v| (name.clone(), v))
                .map_err(|source| InvalidQuantity {
                    field: format!("{path}[{name}]"),
                    value: q.0.clone(),
                    source,
                })
        })
        .collect()
}

fn with_non_missing(reqs: &ResourceList, non_missing: &ResourceList) -> ResourceList {
    let mut out = reqs.clone();
    for (name, q) in non_missing {
        out.entry(name.clone()).or_insert(*q);
    }
    out
}

fn add_into(total: &mut ResourceList, more: &ResourceList) {
    for (name, q) in more {
        *total.entry(name.clone()).or_default() += *q;
    }
}

fn max_into(total: &mut ResourceList, other: &ResourceList) {
    for (name, q) in other {
        let slot = total.entry(name.clone()).or_default();
        if *q > *slot {
            *slot = *q;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, PodSpec};

    fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, K8sQuantity>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), K8sQuantity(v.to_string())))
                .collect(),
        )
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sidecar(requests: &[(&str, &str)]) -> Container {
        Container {
            restart_policy: Some("Always".into()),
            ..container(requests, &[])
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn scheduler_view(p: &Pod) -> Resources {
        Resources::from_list(&pod_requests(p, &ResourceList::new()).expect("valid"))
    }

    #[test]
    fn containers_add_and_init_containers_take_the_max() {
        let p = pod(
            vec![
                container(&[("cpu", "100m"), ("memory", "64Mi")], &[]),
                container(&[("cpu", "200m")], &[]),
            ],
            vec![
                container(&[("cpu", "500m")], &[]),
                container(&[("memory", "32Mi")], &[]),
            ],
        );
        let r = scheduler_view(&p);
        assert_eq!(r.milli_cpu, 500);
        assert_eq!(r.memory, 64 << 20);
    }

    #[test]
    fn sidecars_add_to_everything_after_them() {
        // Sidecar 100m runs with the containers (300m) and with the later
        // init container (100m + 400m = 500m): the max is 500m.
        let p = pod(
            vec![container(&[("cpu", "200m")], &[])],
            vec![
                sidecar(&[("cpu", "100m")]),
                container(&[("cpu", "400m")], &[]),
            ],
        );
        assert_eq!(scheduler_view(&p).milli_cpu, 500);
        // An init container before the sidecar does not add to it.
        let p = pod(
            vec![container(&[("cpu", "200m")], &[])],
            vec![
                container(&[("cpu", "250m")], &[]),
                sidecar(&[("cpu", "100m")]),
            ],
        );
        assert_eq!(scheduler_view(&p).milli_cpu, 300);
    }

    #[test]
    fn limits_default_requests_and_overhead_adds() {
        let mut p = pod(
            vec![container(
                &[("cpu", "100m")],
                &[("cpu", "1"), ("memory", "1Gi")],
            )],
            vec![],
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.overhead = list(&[("cpu", "10m"), ("memory", "1Mi")]);
        }
        let r = scheduler_view(&p);
        assert_eq!(r.milli_cpu, 110);
        assert_eq!(r.memory, (1 << 30) + (1 << 20));
    }

    #[test]
    fn quantities_add_exactly_before_rounding() {
        let p = pod(
            vec![
                container(&[("cpu", "0.4m")], &[]),
                container(&[("cpu", "0.4m")], &[]),
            ],
            vec![],
        );
        assert_eq!(scheduler_view(&p).milli_cpu, 1);
    }

    #[test]
    fn scoring_defaults_fill_only_missing_requests() {
        let p = pod(
            vec![
                container(&[], &[]),
                container(&[("cpu", "0")], &[]),
                container(&[("memory", "1Mi")], &[]),
            ],
            vec![],
        );
        let r = Resources::from_list(&pod_requests(&p, &non_zero_defaults()).expect("valid"));
        assert_eq!(r.milli_cpu, 2 * DEFAULT_MILLI_CPU_REQUEST);
        assert_eq!(r.memory, 2 * DEFAULT_MEMORY_REQUEST + (1 << 20));
    }

    #[test]
    fn pod_level_requests_override_container_sums() {
        let mut p = pod(
            vec![container(&[("cpu", "100m")], &[]), container(&[], &[])],
            vec![],
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.resources = Some(ResourceRequirements {
                requests: list(&[("cpu", "1")]),
                limits: list(&[("memory", "2Gi")]),
                ..Default::default()
            });
        }
        let r = scheduler_view(&p);
        assert_eq!(r.milli_cpu, 1000);
        assert_eq!(r.memory, 2 << 30);
    }

    #[test]
    fn invalid_quantities_name_the_field() {
        let p = pod(vec![container(&[("cpu", "lots")], &[])], vec![]);
        let err = pod_requests(&p, &ResourceList::new()).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "spec.containers[0].resources.requests[cpu]: Invalid value: \"lots\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
    }

    #[test]
    fn nodes_offer_allocatable_or_else_capacity() {
        let mut node = Node {
            status: Some(NodeStatus {
                capacity: list(&[("cpu", "4"), ("memory", "8Gi"), ("pods", "110")]),
                allocatable: list(&[
                    ("cpu", "3500m"),
                    ("memory", "7Gi"),
                    ("pods", "100"),
                    ("example.com/gpu", "2"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (r, errors) = node_allocatable(&node);
        assert!(errors.is_empty());
        assert_eq!(
            (r.milli_cpu, r.memory, r.allowed_pods),
            (3500, 7 << 30, 100)
        );
        assert_eq!(r.scalar.get("example.com/gpu"), Some(&2));
        if let Some(s) = node.status.as_mut() {
            s.allocatable = None;
        }
        let (r, _) = node_allocatable(&node);
        assert_eq!((r.milli_cpu, r.allowed_pods), (4000, 110));
    }
}
