//! The one shape every control loop has: reconcile everything it owns from
//! the caches, then wait for a cache to change, a requeue time, or a slow
//! resync; back off after errors; stop on cancellation. Reconcile functions
//! are level-triggered and idempotent, so waking too often is harmless.
//!
//! A commit too large for one etcd transaction is written in chunks under
//! an apply lock ([`keys::APPLYING`]); until the lock is gone, desired state
//! in etcd is half old commit, half new. An [`ApplyGate`] follows that lock,
//! and every loop run inside [`gated`] skips its passes while the gate is
//! closed and runs one as soon as it opens, so no controller, scheduler or
//! node agent acts on a half-applied commit.

use std::future::Future;
use std::time::Duration;

use futures::future::select_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::keys;
use crate::reflector::{reflect_prefix, Cache};
use crate::store::Store;

/// When a reconcile pass wants to run again even if nothing changes.
pub type Requeue = Option<Duration>;

/// Whether desired state in etcd is whole: closed while a chunked apply
/// holds the apply lock, and until the lock's first list has completed
/// (before that, "no lock seen" means "unknown", not "no lock"). Cheap to
/// clone; clones share one watch.
#[derive(Clone)]
pub struct ApplyGate {
    lock: Cache<()>,
}

impl ApplyGate {
    /// Starts watching the apply lock; the watch stops when `cancel` fires.
    pub fn watch(store: Store, cancel: CancellationToken) -> ApplyGate {
        ApplyGate {
            lock: reflect_prefix(store, keys::APPLYING.to_string(), |_, _| Ok(()), cancel),
        }
    }

    /// Whether no apply is in progress, as far as the watch has seen.
    pub fn is_open(&self) -> bool {
        self.lock.is_ready() && self.lock.get_key(keys::APPLYING).is_none()
    }

    /// A receiver that wakes whenever the lock appears or goes away.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.lock.changes()
    }
}

tokio::task_local! {
    static GATE: ApplyGate;
}

/// Runs `fut` with every [`run`] loop inside it held back by `gate`. One
/// call per component gates all its loops, including ones added later,
/// without each loop having to be told; the gate travels with the task, so
/// loops must run inside `fut` (joined, not spawned).
pub async fn gated<F: Future>(gate: ApplyGate, fut: F) -> F::Output {
    GATE.scope(gate, fut).await
}

/// Runs `reconcile` until `cancel` fires. `triggers` are cache change
/// receivers; `resync` bounds how long a loop sleeps with nothing to do.
/// Inside [`gated`], passes are skipped while the gate is closed, and the
/// gate opening wakes the loop.
pub async fn run<F, Fut>(
    name: &'static str,
    mut triggers: Vec<watch::Receiver<u64>>,
    resync: Duration,
    cancel: CancellationToken,
    mut reconcile: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Requeue>>,
{
    let gate = GATE.try_with(ApplyGate::clone).ok();
    if let Some(g) = &gate {
        triggers.push(g.changes());
    }
    let mut held_back = false;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        for t in triggers.iter_mut() {
            t.borrow_and_update();
        }
        let wait = if gate.as_ref().is_some_and(|g| !g.is_open()) {
            if !held_back {
                debug!(
                    controller = name,
                    "a commit is being applied; waiting for it to finish"
                );
                held_back = true;
            }
            resync
        } else {
            held_back = false;
            match reconcile().await {
                Ok(requeue) => {
                    backoff.reset();
                    requeue.map_or(resync, |r| r.min(resync))
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(controller = name, error = format!("{e:#}"), retry_in = ?d, "reconcile failed");
                    d
                }
            }
        };
        let changed = async {
            if triggers.is_empty() {
                return std::future::pending::<()>().await;
            }
            let futs: Vec<_> = triggers.iter_mut().map(|t| Box::pin(t.changed())).collect();
            let _ = select_all(futs).await;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
        }
    }
}
