//! Ranking the feasible nodes: weighted scorers from 0 to 100, summed;
//! the highest total wins and ties go to the node whose name sorts first,
//! so the same state always gives the same placement (kube-scheduler picks
//! among ties at random).

use crate::info::{NodeInfo, PodInfo};

/// kube-scheduler's `MaxNodeScore`.
pub const MAX_NODE_SCORE: i64 = 100;

/// One ranking criterion.
pub trait Scorer: Send + Sync {
    /// The kube-scheduler plugin this stands for, for logs.
    fn name(&self) -> &'static str;
    /// How much this scorer counts against the others.
    fn weight(&self) -> i64;
    /// The node's score for the pod, from 0 to [`MAX_NODE_SCORE`].
    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64;
}

/// The default ranking: least allocated first.
pub fn default_scorers() -> Vec<Box<dyn Scorer>> {
    vec![Box::new(LeastAllocated::default())]
}

/// A resource [`LeastAllocated`] weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// CPU, in millicores.
    Cpu,
    /// Memory, in bytes.
    Memory,
}

/// `NodeResourcesFit` with the `LeastAllocated` strategy: prefers the node
/// that would have the largest share of its CPU and memory free after
/// taking the pod, so pods spread. Requests are counted with
/// kube-scheduler's defaults for containers that request nothing (100m,
/// 200Mi), so empty pods spread too.
#[derive(Debug, Clone)]
pub struct LeastAllocated {
    /// Resources and their weights; kube-scheduler's default is CPU 1,
    /// memory 1.
    pub resources: Vec<(Resource, i64)>,
}

impl Default for LeastAllocated {
    fn default() -> Self {
        LeastAllocated {
            resources: vec![(Resource::Cpu, 1), (Resource::Memory, 1)],
        }
    }
}

impl Scorer for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let mut total = 0;
        let mut weights = 0;
        for (resource, weight) in &self.resources {
            let (allocatable, requested) = match resource {
                Resource::Cpu => (
                    node.allocatable.milli_cpu,
                    node.non_zero_requested
                        .milli_cpu
                        .saturating_add(pod.non_zero.milli_cpu),
                ),
                Resource::Memory => (
                    node.allocatable.memory,
                    node.non_zero_requested
                        .memory
                        .saturating_add(pod.non_zero.memory),
                ),
            };
            if allocatable == 0 {
                continue;
            }
            total += least_requested_score(requested, allocatable) * weight;
            weights += weight;
        }
        if weights == 0 {
            0
        } else {
            total / weights
        }
    }
}

/// The share of `capacity` left after `requested`, from 0 to 100
/// (kube-scheduler's `leastRequestedScore`).
pub fn least_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    // i128: capacities in bytes times 100 can pass i64 for huge nodes.
    ((i128::from(capacity - requested) * i128::from(MAX_NODE_SCORE)) / i128::from(capacity)) as i64
}

/// The best of `feasible` for the pod: the highest weighted total, ties to
/// the smallest name. `None` if `feasible` is empty.
pub fn select<'a>(
    scorers: &[Box<dyn Scorer>],
    pod: &PodInfo,
    feasible: impl IntoIterator<Item = &'a NodeInfo>,
) -> Option<&'a NodeInfo> {
    let mut best: Option<(i64, &NodeInfo)> = None;
    for node in feasible {
        let total: i64 = scorers
            .iter()
            .map(|s| s.score(pod, node) * s.weight())
            .sum();
        let better = match best {
            None => true,
            Some((best_total, best_node)) => {
                total > best_total || (total == best_total && node.name() < best_node.name())
            }
        };
        if better {
            best = Some((total, node));
        }
    }
    best.map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn least_requested_score_is_the_free_share() {
        assert_eq!(least_requested_score(0, 4000), 100);
        assert_eq!(least_requested_score(1000, 4000), 75);
        assert_eq!(least_requested_score(4000, 4000), 0);
        assert_eq!(least_requested_score(5000, 4000), 0);
        assert_eq!(least_requested_score(1, 3), 66);
        assert_eq!(least_requested_score(0, 0), 0);
        assert_eq!(least_requested_score(1 << 62, i64::MAX), 49);
    }

    #[test]
    fn least_allocated_averages_cpu_and_memory() {
        // Node 4 cpu / 8Gi; pod 1 cpu / 2Gi: 75 and 75.
        let n = info(node("n", "4", "8Gi"));
        let p = pod_info(pod("p", "1", "2Gi"));
        assert_eq!(LeastAllocated::default().score(&p, &n), 75);
        // With 2 cpu already requested: cpu (4-3)/4 = 25, memory 75 -> 50.
        let mut n = n;
        n.add_pod(&pod_info(pod("a", "2", "0")));
        assert_eq!(LeastAllocated::default().score(&p, &n), 50);
    }

    #[test]
    fn empty_pods_are_scored_with_the_defaults() {
        // 100m of 1 cpu -> 90; 200Mi of 1000Mi -> 80; average 85.
        let n = info(node("n", "1", "1000Mi"));
        let p = pod_info(no_requests(pod("p", "0", "0")));
        assert_eq!(LeastAllocated::default().score(&p, &n), 85);
    }

    #[test]
    fn the_least_allocated_node_wins_and_ties_go_to_the_first_name() {
        let scorers = default_scorers();
        let p = pod_info(pod("p", "500m", "512Mi"));
        let a = info(node("node-a", "2", "4Gi"));
        let b = info(node("node-b", "2", "4Gi"));
        let nodes = [b.clone(), a.clone()];
        assert_eq!(
            select(&scorers, &p, &nodes).map(NodeInfo::name),
            Some("node-a")
        );

        let mut busy_a = a;
        busy_a.add_pod(&pod_info(pod("x", "500m", "512Mi")));
        let nodes = [busy_a, b];
        assert_eq!(
            select(&scorers, &p, &nodes).map(NodeInfo::name),
            Some("node-b")
        );

        // A bigger node is less allocated by the same pod.
        let small = info(node("a-small", "1", "1Gi"));
        let big = info(node("z-big", "16", "64Gi"));
        let nodes = [small, big];
        assert_eq!(
            select(&scorers, &p, &nodes).map(NodeInfo::name),
            Some("z-big")
        );

        assert!(select(&scorers, &p, &[]).is_none());
    }
}
