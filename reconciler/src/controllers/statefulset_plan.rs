//! What a StatefulSet's next step is, decided from its pods alone (pure, so
//! every ordering rule is tested without a cluster): Kubernetes'
//! `updateStatefulSet` for one pass.
//!
//! - Missing pods are created lowest ordinal first; under `OrderedReady`
//!   one at a time, each only once every lower ordinal runs and is ready.
//! - Pods above `replicas` go highest ordinal first, one at a time under
//!   `OrderedReady` and only while the others are healthy.
//! - A failed or finished pod is deleted, to be created again with the
//!   same name.
//! - `RollingUpdate` replaces pods of an old revision from the highest
//!   ordinal down to `partition`, one at a time, each after the rest are
//!   ready; `OnDelete` replaces a pod only when someone deletes it.

use std::collections::BTreeMap;

/// How one pod is doing, as far as ordering cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PodHealth {
    /// Running with its `Ready` condition true.
    Ready,
    /// Created but not (yet) ready.
    NotReady,
    /// Being deleted.
    Terminating,
    /// `Failed` or `Succeeded`: it will not run again and must be replaced.
    Finished,
}

/// One existing pod of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// The revision (`controller-revision-hash`) it was made from.
    pub revision: String,
    pub health: PodHealth,
}

/// The set as the plan sees it.
#[derive(Debug, Clone)]
pub(crate) struct SetState {
    pub replicas: i32,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// `Some(partition)` for `RollingUpdate`, `None` for `OnDelete`.
    pub rolling_partition: Option<i32>,
    pub update_revision: String,
    /// Pods by ordinal.
    pub pods: BTreeMap<i32, Member>,
}

/// One step of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Create the pod of this ordinal, from the update revision or (below a
    /// rolling update's partition) from the current one.
    Create { ordinal: i32, at_update: bool },
    /// Delete the pod of this ordinal (gracefully).
    Delete { ordinal: i32 },
}

impl SetState {
    /// Whether a pod created now for `ordinal` takes the update revision:
    /// always, except below a rolling update's partition.
    fn created_at_update(&self, ordinal: i32) -> bool {
        self.rolling_partition.is_none_or(|p| ordinal >= p)
    }

    fn monotonic(&self) -> bool {
        !self.parallel
    }
}

/// The actions of this pass, in order. Empty when the set is as it should
/// be or is waiting for a pod to become ready or to go.
pub(crate) fn plan(set: &SetState) -> Vec<Action> {
    let mut actions = Vec::new();
    let replicas = set.replicas.max(0);
    for ordinal in 0..replicas {
        match set.pods.get(&ordinal).map(|m| m.health) {
            None => {
                actions.push(Action::Create {
                    ordinal,
                    at_update: set.created_at_update(ordinal),
                });
                if set.monotonic() {
                    return actions;
                }
            }
            Some(PodHealth::Finished) => {
                actions.push(Action::Delete { ordinal });
                if set.monotonic() {
                    return actions;
                }
            }
            Some(PodHealth::Terminating | PodHealth::NotReady) => {
                if set.monotonic() {
                    return actions;
                }
            }
            Some(PodHealth::Ready) => {}
        }
    }
    let all_ready = (0..replicas).all(|o| {
        set.pods
            .get(&o)
            .is_some_and(|m| m.health == PodHealth::Ready)
    });
    let condemned: Vec<(i32, &Member)> = set
        .pods
        .range(replicas..)
        .rev()
        .map(|(o, m)| (*o, m))
        .collect();
    for (ordinal, member) in &condemned {
        if member.health == PodHealth::Terminating {
            if set.monotonic() {
                return actions;
            }
            continue;
        }
        if set.monotonic() && !all_ready {
            return actions;
        }
        actions.push(Action::Delete { ordinal: *ordinal });
        if set.monotonic() {
            return actions;
        }
    }
    if !actions.is_empty() {
        return actions;
    }
    let Some(partition) = set.rolling_partition else {
        return actions;
    };
    // One pod at a time, and only while every other one is ready.
    if !all_ready || !condemned.is_empty() {
        return actions;
    }
    for ordinal in (partition.max(0)..replicas).rev() {
        if let Some(member) = set.pods.get(&ordinal) {
            if member.revision != set.update_revision {
                actions.push(Action::Delete { ordinal });
                return actions;
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(replicas: i32, pods: &[(i32, &str, PodHealth)]) -> SetState {
        SetState {
            replicas,
            parallel: false,
            rolling_partition: Some(0),
            update_revision: "new".into(),
            pods: pods
                .iter()
                .map(|(o, r, h)| {
                    (
                        *o,
                        Member {
                            revision: (*r).into(),
                            health: *h,
                        },
                    )
                })
                .collect(),
        }
    }

    use PodHealth::*;

    fn create(ordinal: i32) -> Action {
        Action::Create {
            ordinal,
            at_update: true,
        }
    }

    #[test]
    fn ordered_ready_starts_one_pod_after_the_other() {
        assert_eq!(plan(&set(3, &[])), vec![create(0)]);
        assert_eq!(plan(&set(3, &[(0, "new", NotReady)])), vec![]);
        assert_eq!(plan(&set(3, &[(0, "new", Ready)])), vec![create(1)]);
        assert_eq!(
            plan(&set(3, &[(0, "new", Ready), (1, "new", Ready)])),
            vec![create(2)]
        );
        // A lower ordinal that went away is made again before the next.
        assert_eq!(plan(&set(3, &[(1, "new", Ready)])), vec![create(0)]);
    }

    #[test]
    fn parallel_starts_every_missing_pod_at_once() {
        let mut s = set(3, &[(1, "new", NotReady)]);
        s.parallel = true;
        assert_eq!(plan(&s), vec![create(0), create(2)]);
    }

    #[test]
    fn failed_pods_are_replaced_under_the_same_ordinal() {
        assert_eq!(
            plan(&set(2, &[(0, "new", Finished), (1, "new", Ready)])),
            vec![Action::Delete { ordinal: 0 }]
        );
    }

    #[test]
    fn scale_down_goes_highest_first_one_at_a_time() {
        let pods = [
            (0, "new", Ready),
            (1, "new", Ready),
            (2, "new", Ready),
            (3, "new", Ready),
        ];
        assert_eq!(plan(&set(2, &pods)), vec![Action::Delete { ordinal: 3 }]);
        let pods = [
            (0, "new", Ready),
            (1, "new", Ready),
            (2, "new", Ready),
            (3, "new", Terminating),
        ];
        assert_eq!(plan(&set(2, &pods)), vec![]);
        // Not while a remaining pod is unhealthy.
        let pods = [(0, "new", NotReady), (1, "new", Ready), (2, "new", Ready)];
        assert_eq!(plan(&set(2, &pods)), vec![]);
        let mut s = set(
            1,
            &[(0, "new", Ready), (1, "new", Ready), (2, "new", Ready)],
        );
        s.parallel = true;
        assert_eq!(
            plan(&s),
            vec![Action::Delete { ordinal: 2 }, Action::Delete { ordinal: 1 }]
        );
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition() {
        let old = [(0, "old", Ready), (1, "old", Ready), (2, "old", Ready)];
        assert_eq!(plan(&set(3, &old)), vec![Action::Delete { ordinal: 2 }]);
        // The replaced pod is back but not ready: wait.
        let mid = [(0, "old", Ready), (1, "old", Ready), (2, "new", NotReady)];
        assert_eq!(plan(&set(3, &mid)), vec![]);
        let mid = [(0, "old", Ready), (1, "old", Ready), (2, "new", Ready)];
        assert_eq!(plan(&set(3, &mid)), vec![Action::Delete { ordinal: 1 }]);
        // With partition 2 only ordinal 2 is updated.
        let mut s = set(3, &mid);
        s.rolling_partition = Some(2);
        assert_eq!(plan(&s), vec![]);
        // A pod below the partition that goes is made at the old revision.
        let mut s = set(3, &[(1, "old", Ready), (2, "new", Ready)]);
        s.rolling_partition = Some(2);
        assert_eq!(
            plan(&s),
            vec![Action::Create {
                ordinal: 0,
                at_update: false
            }]
        );
    }

    #[test]
    fn on_delete_leaves_old_pods_alone() {
        let mut s = set(2, &[(0, "old", Ready), (1, "old", Ready)]);
        s.rolling_partition = None;
        assert_eq!(plan(&s), vec![]);
        // A deleted one comes back at the update revision.
        let mut s = set(2, &[(1, "old", Ready)]);
        s.rolling_partition = None;
        assert_eq!(plan(&s), vec![create(0)]);
    }
}
