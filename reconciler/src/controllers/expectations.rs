//! Read-your-writes for control loops: after a controller writes on behalf
//! of an object, it records the etcd revision of that write, and does not
//! act on the object again until the cache it counts from has caught up.
//! Without this, a cache that has not yet seen three freshly created pods
//! would make the next pass create three more.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use commitd_api::controller::Requeue;
use commitd_api::k8s_openapi::api::core::v1::Pod;
use commitd_api::{meta, Object, Store};
use futures::future::join_all;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{delete_pod, earliest, pass_result};

/// How soon to look again at an object whose writes the cache has not
/// caught up with (a cache change wakes the loop sooner).
const EXPECTATION_REQUEUE: Duration = Duration::from_secs(1);

/// The newest write revision per owner (keyed by uid).
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    pending: Mutex<HashMap<String, i64>>,
}

impl Expectations {
    /// Records that a write for `owner` happened at `revision`.
    pub fn expect(&self, owner: &str, revision: i64) {
        if revision <= 0 {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(owner.to_string()).or_insert(revision);
        *entry = (*entry).max(revision);
    }

    /// Whether a cache at `cache_revision` reflects every recorded write
    /// for `owner`.
    pub fn satisfied(&self, owner: &str, cache_revision: i64) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(owner).is_none_or(|rev| cache_revision >= *rev)
    }

    /// Drops every expectation a cache at `cache_revision` satisfies, so
    /// owners that were deleted do not linger.
    pub fn forget_satisfied(&self, cache_revision: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, rev| *rev > cache_revision);
    }
}

/// Deletes `pods` of the owner `uid` gracefully (see [`delete_pod`]), all
/// at once, and expects the revision of each write, so the owner's next
/// pass waits until its cache shows them. `what` names them in the log.
pub(crate) async fn delete_pods(
    store: &Store,
    expectations: &Expectations,
    uid: &str,
    pods: Vec<&Pod>,
    what: &str,
) -> Result<()> {
    if pods.is_empty() {
        return Ok(());
    }
    let count = pods.len();
    let results = join_all(pods.into_iter().map(|pod| async move {
        let outcome = delete_pod(store, pod)
            .await
            .with_context(|| format!("deleting pod {}", meta::display_key(pod)))?;
        if let Some(revision) = outcome.revision() {
            expectations.expect(uid, revision);
        }
        debug!(pod = %meta::display_key(pod), ?outcome, "deleted pod");
        anyhow::Ok(())
    }))
    .await;
    info!(count, "deleting {what}");
    results.into_iter().collect()
}

/// One pass of a control loop over `objects`: each is synced with its uid,
/// except those whose last write the cache (at `cache_revision`) has not
/// seen yet, which are looked at again shortly, and those being deleted
/// (or without a uid), whose dependents the garbage collector handles. A
/// failure is logged and reported without stopping the others.
pub(crate) async fn sync_each<T, F, Fut>(
    controller: &'static str,
    objects: Vec<Arc<T>>,
    expectations: &Expectations,
    cache_revision: i64,
    mut sync: F,
) -> Result<Requeue>
where
    T: Object,
    F: FnMut(Arc<T>, String) -> Fut,
    Fut: Future<Output = Result<Requeue>>,
{
    expectations.forget_satisfied(cache_revision);
    let mut requeue = None;
    let mut failed = Vec::new();
    for object in objects {
        let key = meta::display_key(&*object);
        let m = object.metadata();
        let Some(uid) = m.uid.clone() else {
            warn!(controller, key = %key, "object has no uid; skipping it");
            continue;
        };
        if meta::is_terminating(m) {
            continue;
        }
        if !expectations.satisfied(&uid, cache_revision) {
            debug!(controller, key = %key, "waiting for the cache to catch up");
            requeue = earliest(requeue, Some(EXPECTATION_REQUEUE));
            continue;
        }
        let span = info_span!("sync", controller, key = %key);
        match sync(object, uid).instrument(span).await {
            Ok(r) => requeue = earliest(requeue, r),
            Err(e) => {
                warn!(controller, key = %key, error = format!("{e:#}"), "sync failed");
                failed.push(format!("{key}: {e:#}"));
            }
        }
    }
    pass_result(controller, failed, requeue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_cache_catches_up() {
        let e = Expectations::default();
        assert!(e.satisfied("a", 0));
        e.expect("a", 10);
        e.expect("a", 7);
        assert!(!e.satisfied("a", 9));
        assert!(e.satisfied("a", 10));
        assert!(e.satisfied("b", 0));
        e.forget_satisfied(10);
        assert!(e.satisfied("a", 0));
    }

    #[test]
    fn ignores_writes_without_a_revision() {
        let e = Expectations::default();
        e.expect("a", 0);
        assert!(e.satisfied("a", 0));
    }
}
