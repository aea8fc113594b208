//! The one shape every control loop has: reconcile everything it owns from
//! the caches, then wait for a cache to change, a requeue time, or a slow
//! resync; back off after errors; stop on cancellation. Reconcile functions
//! are level-triggered and idempotent, so waking too often is harmless.

use std::future::Future;
use std::time::Duration;

use futures::future::select_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backoff::Backoff;

/// When a reconcile pass wants to run again even if nothing changes.
pub type Requeue = Option<Duration>;

/// Runs `reconcile` until `cancel` fires. `triggers` are cache change
/// receivers; `resync` bounds how long a loop sleeps with nothing to do.
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
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        for t in triggers.iter_mut() {
            t.borrow_and_update();
        }
        let wait = match reconcile().await {
            Ok(requeue) => {
                backoff.reset();
                requeue.map_or(resync, |r| r.min(resync))
            }
            Err(e) => {
                let d = backoff.next_delay();
                warn!(controller = name, error = format!("{e:#}"), retry_in = ?d, "reconcile failed");
                d
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
