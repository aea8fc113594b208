//! A Deployment's update strategy as arithmetic: from the desired replica
//! count and the counts of its ReplicaSets, how many pods each should ask
//! for next. Kubernetes' deployment controller semantics, kept pure so the
//! controller only applies the answer:
//!
//! - **RollingUpdate**: the new ReplicaSet grows while all pods together
//!   stay within `replicas + maxSurge`; old ones shrink while the
//!   available pods stay at least `replicas - maxUnavailable`, their
//!   unavailable pods first, then the oldest sets first.
//! - **Recreate**: every old ReplicaSet goes to zero; the new one grows
//!   only once no old pod is left.
//!
//! One call is one step; the controller calls again as pods become
//! available, so a rollout advances as fast as readiness allows and no
//! faster.

use commitd_api::k8s_openapi::api::apps::v1::DeploymentSpec;
use commitd_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Kubernetes' default `maxSurge` and `maxUnavailable`.
const DEFAULT_ROLLING_PERCENT: &str = "25%";

/// What the strategy needs to know of one ReplicaSet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SetCounts {
    /// `spec.replicas`: the pods it asks for.
    pub wanted: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// Its pods not being deleted (a scale-down not carried out yet
    /// leaves more than `wanted`).
    pub active: i32,
    /// Its pods that still exist, terminating ones included.
    pub pods: i32,
}

impl SetCounts {
    /// Pods it has or is about to have: its size as far as the surge goes.
    fn size(self) -> i32 {
        self.wanted.max(self.active)
    }

    /// Available pods it keeps: a status written before a scale-down
    /// still counts the pods that are going away, so never more than
    /// `wanted`.
    fn keeps_available(self) -> i32 {
        self.available.min(self.wanted)
    }
}

/// The next size of the new ReplicaSet and of each old one (in the order
/// given, oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Step {
    /// The new ReplicaSet's `spec.replicas`.
    pub new: i32,
    /// Each old ReplicaSet's `spec.replicas`.
    pub old: Vec<i32>,
}

/// The next step of `spec`'s strategy from the current counts. `old` is
/// ordered oldest first, as Kubernetes scales old sets down in that order.
pub(super) fn next_step(spec: &DeploymentSpec, new: SetCounts, old: &[SetCounts]) -> Step {
    let desired = desired(spec);
    if !is_rolling(spec) {
        // Recreate: everything old goes first; the new set starts once
        // the last old pod is gone.
        let old_left = old.iter().any(|c| c.wanted > 0 || c.pods > 0);
        return Step {
            new: if old_left {
                new.wanted.min(desired)
            } else {
                desired
            },
            old: vec![0; old.len()],
        };
    }
    let new_target = grow_new(spec, desired, new, old);
    Step {
        new: new_target,
        old: shrink_old(spec, desired, new_target, new.available, old),
    }
}

/// Kubernetes' `NewRSNewReplicas`: the new set grows by what the surge
/// allows, never past `replicas`; one above `replicas` shrinks to it.
fn grow_new(spec: &DeploymentSpec, desired: i32, new: SetCounts, old: &[SetCounts]) -> i32 {
    if new.wanted >= desired {
        return desired;
    }
    let all: i32 = new.size() + old.iter().map(|c| c.size()).sum::<i32>();
    let max_total = desired.saturating_add(max_surge(spec));
    if all >= max_total {
        return new.wanted;
    }
    new.wanted + (max_total - all).min(desired - new.wanted)
}

/// Kubernetes' `reconcileOldReplicaSets`: how far the old sets can shrink
/// while `replicas - maxUnavailable` pods stay available, counting the
/// new set's pods that are not available yet against the budget. Their
/// unavailable pods go first (they serve nobody), then available ones,
/// oldest set first.
fn shrink_old(
    spec: &DeploymentSpec,
    desired: i32,
    new_wanted: i32,
    new_available: i32,
    old: &[SetCounts],
) -> Vec<i32> {
    let mut targets: Vec<i32> = old.iter().map(|c| c.wanted).collect();
    let old_wanted: i32 = targets.iter().sum();
    if old_wanted == 0 {
        return targets;
    }
    let min_available = desired - max_unavailable(spec);
    let new_unavailable = (new_wanted - new_available).max(0);
    let budget = new_wanted + old_wanted - min_available - new_unavailable;
    if budget <= 0 {
        return targets;
    }
    // Unavailable old pods first, within the budget.
    let mut cleaned = 0;
    for (target, counts) in targets.iter_mut().zip(old) {
        if cleaned >= budget {
            break;
        }
        let unavailable = (*target - counts.keeps_available()).max(0);
        let n = unavailable.min(budget - cleaned);
        *target -= n;
        cleaned += n;
    }
    // Then available ones, as long as enough stay available.
    let available: i32 =
        new_available.min(new_wanted) + old.iter().map(|c| c.keeps_available()).sum::<i32>();
    let mut surplus = available - min_available;
    for target in targets.iter_mut() {
        if surplus <= 0 {
            break;
        }
        let n = (*target).min(surplus);
        *target -= n;
        surplus -= n;
    }
    targets
}

fn desired(spec: &DeploymentSpec) -> i32 {
    spec.replicas.unwrap_or(1).max(0)
}

fn is_rolling(spec: &DeploymentSpec) -> bool {
    let strategy = spec.strategy.as_ref().and_then(|s| s.type_.as_deref());
    strategy.unwrap_or("RollingUpdate") == "RollingUpdate"
}

/// `maxSurge` and `maxUnavailable` in pods, as Kubernetes'
/// `ResolveFenceposts`: percentages of `replicas`, the surge rounded up and
/// the unavailable rounded down; when both come to 0, one pod may be
/// unavailable.
fn fenceposts(spec: &DeploymentSpec) -> (i32, i32) {
    let desired = desired(spec);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let default = IntOrString::String(DEFAULT_ROLLING_PERCENT.to_string());
    let surge = scaled_value(ru.max_surge.as_ref().unwrap_or(&default), desired, true);
    let unavailable = scaled_value(
        ru.max_unavailable.as_ref().unwrap_or(&default),
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// `maxSurge` in pods; 0 unless the strategy is a rolling update.
pub(super) fn max_surge(spec: &DeploymentSpec) -> i32 {
    if !is_rolling(spec) {
        return 0;
    }
    fenceposts(spec).0
}

/// `maxUnavailable` in pods, as Kubernetes' `MaxUnavailable`: 0 unless
/// rolling, never more than the replicas.
pub(super) fn max_unavailable(spec: &DeploymentSpec) -> i32 {
    let desired = desired(spec);
    if !is_rolling(spec) || desired == 0 {
        return 0;
    }
    fenceposts(spec).1.min(desired)
}

/// An int-or-percent resolved against `total` (Kubernetes'
/// `GetScaledValueFromIntOrPercent`); an unreadable value counts as the
/// default 25 % (validation rejects such values before they get here).
fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    let percent = match v {
        IntOrString::Int(i) => return (*i).max(0),
        IntOrString::String(s) => match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse::<i64>().unwrap_or(25),
            None => match s.trim().parse::<i32>() {
                Ok(i) => return i.max(0),
                Err(_) => 25,
            },
        },
    };
    let product = percent.max(0) * i64::from(total);
    let scaled = if round_up {
        (product + 99) / 100
    } else {
        product / 100
    };
    i32::try_from(scaled).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use commitd_api::k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};

    fn rolling(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> DeploymentSpec {
        DeploymentSpec {
            replicas: Some(replicas),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            ..Default::default()
        }
    }

    fn set(wanted: i32, available: i32) -> SetCounts {
        SetCounts {
            wanted,
            available,
            active: wanted,
            pods: wanted,
        }
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn fenceposts_follow_kubernetes() {
        let mut spec = rolling(2, pct("25%"), pct("25%"));
        assert_eq!((max_surge(&spec), max_unavailable(&spec)), (1, 0));
        spec.replicas = Some(10);
        assert_eq!((max_surge(&spec), max_unavailable(&spec)), (3, 2));
        let spec = rolling(10, IntOrString::Int(0), pct("0%"));
        assert_eq!((max_surge(&spec), max_unavailable(&spec)), (0, 1));
        let spec = rolling(3, IntOrString::Int(0), IntOrString::Int(5));
        assert_eq!(max_unavailable(&spec), 3, "never more than the replicas");
        let mut recreate = rolling(10, pct("50%"), pct("50%"));
        recreate.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
        assert_eq!(scaled_value(&pct("25%"), 3, true), 1);
        assert_eq!(scaled_value(&pct("25%"), 3, false), 0);
        assert_eq!(scaled_value(&pct("50%"), 5, true), 3);
        assert_eq!(scaled_value(&pct("7"), 5, true), 7);
    }

    /// Plays a rolling update to the end: each step applied, then every
    /// pod asked for becomes available (as readiness would let it).
    /// Returns the (new, old) sizes after each step.
    fn play(spec: &DeploymentSpec, old_size: i32) -> Vec<(i32, i32)> {
        let (mut new, mut old) = (set(0, 0), vec![set(old_size, old_size)]);
        let mut trace = Vec::new();
        for _ in 0..50 {
            let step = next_step(spec, new, &old);
            // Never more pods than allowed, never fewer available.
            let total = step.new + step.old.iter().sum::<i32>();
            assert!(total <= desired(spec) + max_surge(spec), "{step:?}");
            let available = new.available.min(step.new)
                + old
                    .iter()
                    .zip(&step.old)
                    .map(|(c, t)| c.available.min(*t))
                    .sum::<i32>();
            assert!(
                available >= desired(spec) - max_unavailable(spec),
                "{step:?}"
            );
            new = set(step.new, new.available.min(step.new));
            old = old
                .iter()
                .zip(&step.old)
                .map(|(c, t)| set(*t, c.available.min(*t)))
                .collect();
            trace.push((step.new, step.old.iter().sum()));
            if step.new == desired(spec) && step.old.iter().all(|t| *t == 0) {
                return trace;
            }
            // The pods asked for come up.
            new.available = new.wanted;
        }
        panic!("the rollout never finished: {trace:?}");
    }

    #[test]
    fn a_rolling_update_moves_within_surge_and_unavailability() {
        // Kubernetes' defaults on 4 replicas: one pod extra, one missing.
        let spec = rolling(4, pct("25%"), pct("25%"));
        assert_eq!(play(&spec, 4), vec![(1, 3), (2, 2), (3, 1), (4, 0)]);
        // No surge: an old pod goes before each new one comes.
        let spec = rolling(3, IntOrString::Int(0), IntOrString::Int(1));
        assert_eq!(
            play(&spec, 3),
            vec![(0, 2), (1, 2), (1, 1), (2, 1), (2, 0), (3, 0)]
        );
        // Nothing may be missing: a new pod comes before each old one goes.
        let spec = rolling(2, IntOrString::Int(1), IntOrString::Int(0));
        assert_eq!(play(&spec, 2), vec![(1, 2), (1, 1), (2, 1), (2, 0)]);
        // Generous bounds take bigger steps.
        let spec = rolling(10, pct("50%"), pct("50%"));
        assert_eq!(play(&spec, 10), vec![(5, 5), (10, 0)]);
    }

    #[test]
    fn a_new_set_that_never_becomes_available_stops_the_rollout() {
        // Steps applied, but no new pod ever becomes available: the
        // rollout settles with the old set still serving all it may.
        let spec = rolling(4, pct("25%"), pct("25%"));
        let (mut new, mut old) = (set(0, 0), vec![set(4, 4)]);
        for _ in 0..10 {
            let step = next_step(&spec, new, &old);
            new = set(step.new, 0);
            old = vec![set(step.old[0], step.old[0])];
        }
        assert_eq!((new.wanted, old[0].wanted), (2, 3));
        assert_eq!(
            next_step(&spec, new, &old),
            Step {
                new: 2,
                old: vec![3]
            }
        );
        // With nothing allowed missing, not one old pod goes.
        let spec = rolling(4, IntOrString::Int(1), IntOrString::Int(0));
        let step = next_step(&spec, set(1, 0), &[set(4, 4)]);
        assert_eq!(
            step,
            Step {
                new: 1,
                old: vec![4]
            }
        );
    }

    #[test]
    fn unavailable_old_pods_go_first_and_oldest_sets_before_younger() {
        let spec = rolling(4, IntOrString::Int(0), IntOrString::Int(1));
        // Two old sets; the younger has a pod that is not available.
        let step = next_step(&spec, set(0, 0), &[set(2, 2), set(2, 1)]);
        assert_eq!(step.old, vec![2, 1], "the unavailable pod went");
        // All available: the oldest set shrinks first.
        let step = next_step(&spec, set(0, 0), &[set(2, 2), set(2, 2)]);
        assert_eq!(step.old, vec![1, 2]);
    }

    #[test]
    fn a_status_behind_a_scale_down_is_not_trusted() {
        let spec = rolling(4, IntOrString::Int(1), IntOrString::Int(1));
        // The old set was just scaled 3 → 2; its status still says 3
        // available, and its third pod is not deleted yet.
        let old = SetCounts {
            wanted: 2,
            available: 3,
            active: 3,
            pods: 3,
        };
        let new = set(3, 2);
        let step = next_step(&spec, new, &[old]);
        // 2 new + 2 old available: one old pod may go, not both.
        assert_eq!(step.old, vec![1]);
        // And the new set does not grow past the surge while the old pod
        // that is going away still runs: 3 + 3 = 6 > 4 + 1.
        assert_eq!(step.new, 3);
    }

    #[test]
    fn scaling_alone_resizes_the_current_set() {
        let spec = rolling(5, pct("25%"), pct("25%"));
        assert_eq!(
            next_step(&spec, set(3, 3), &[]),
            Step {
                new: 5,
                old: vec![]
            }
        );
        let spec = rolling(2, pct("25%"), pct("25%"));
        assert_eq!(
            next_step(&spec, set(5, 5), &[]),
            Step {
                new: 2,
                old: vec![]
            }
        );
    }

    #[test]
    fn recreate_stops_every_old_pod_before_starting_new_ones() {
        let mut spec = rolling(3, pct("25%"), pct("25%"));
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let step = next_step(&spec, set(0, 0), &[set(3, 3)]);
        assert_eq!(
            step,
            Step {
                new: 0,
                old: vec![0]
            }
        );
        // Scaled to zero, but pods still terminating: wait.
        let terminating = SetCounts {
            pods: 2,
            ..SetCounts::default()
        };
        assert_eq!(next_step(&spec, set(0, 0), &[terminating]).new, 0);
        let gone = SetCounts::default();
        assert_eq!(next_step(&spec, set(0, 0), &[gone]).new, 3);
    }
}
