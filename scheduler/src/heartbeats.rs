//! Which nodes are alive: the set of node heartbeat keys
//! (`keys::node_lease_key`) present in etcd, kept current by list + watch.
//! A node agent keeps its key on an etcd lease; when the agent stops
//! renewing it, etcd deletes the key and the node stops receiving pods.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use commitd_api::backoff::Backoff;
use commitd_api::keys::NODE_LEASE_PREFIX;
use commitd_api::reflector::sleep_or_cancel;
use commitd_api::Store;
use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

struct State {
    nodes: BTreeSet<String>,
    ready: bool,
}

/// The names of the nodes whose heartbeat key exists, kept current by a
/// background task.
#[derive(Clone)]
pub struct Heartbeats {
    state: Arc<RwLock<State>>,
    changes: watch::Receiver<u64>,
}

impl Heartbeats {
    /// Starts watching the heartbeat prefix; the task stops when `cancel`
    /// fires.
    pub fn watch(store: Store, cancel: CancellationToken) -> Heartbeats {
        let state = Arc::new(RwLock::new(State {
            nodes: BTreeSet::new(),
            ready: false,
        }));
        let (tx, rx) = watch::channel(0u64);
        tokio::spawn(run(store, state.clone(), tx, cancel));
        Heartbeats { state, changes: rx }
    }

    /// Whether the node's heartbeat key exists.
    pub fn is_alive(&self, node: &str) -> bool {
        match self.state.read() {
            Ok(s) => s.nodes.contains(node),
            Err(poisoned) => poisoned.into_inner().nodes.contains(node),
        }
    }

    /// Every node with a heartbeat key.
    pub fn alive(&self) -> BTreeSet<String> {
        match self.state.read() {
            Ok(s) => s.nodes.clone(),
            Err(poisoned) => poisoned.into_inner().nodes.clone(),
        }
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        self.state.read().map(|s| s.ready).unwrap_or(false)
    }

    /// Waits for the first list.
    pub async fn ready(&self) {
        let mut rx = self.changes.clone();
        while !self.is_ready() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that wakes whenever the set changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

fn node_of(key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    let node = key.strip_prefix(NODE_LEASE_PREFIX)?;
    (!node.is_empty()).then(|| node.to_string())
}

async fn run(
    store: Store,
    state: Arc<RwLock<State>>,
    tx: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let notify = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    'relist: loop {
        if cancel.is_cancelled() {
            return;
        }
        let listed = store
            .client()
            .get(
                NODE_LEASE_PREFIX,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await;
        let resp = match listed {
            Ok(resp) => resp,
            Err(e) => {
                warn!(error = %e, "listing node heartbeats failed; retrying");
                if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                    return;
                }
                continue;
            }
        };
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let nodes: BTreeSet<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| node_of(kv.key()))
            .collect();
        debug!(revision, alive = nodes.len(), "listed node heartbeats");
        if let Ok(mut s) = state.write() {
            s.nodes = nodes;
            s.ready = true;
        }
        notify(&tx);
        let mut from = revision + 1;
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from)
                .with_progress_notify();
            let mut stream = match store.client().watch(NODE_LEASE_PREFIX, Some(options)).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "watching node heartbeats failed; retrying");
                    if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    msg = stream.message() => msg,
                };
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) | Err(_) => {
                        debug!(from, "heartbeat watch ended; resuming");
                        if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                            return;
                        }
                        break;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    warn!(
                        from,
                        "heartbeat watch fell behind a compaction; listing again"
                    );
                    continue 'relist;
                }
                backoff.reset();
                if resp.events().is_empty() {
                    continue;
                }
                let mut changed = false;
                if let Ok(mut s) = state.write() {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        from = from.max(kv.mod_revision() + 1);
                        let Some(node) = node_of(kv.key()) else {
                            continue;
                        };
                        changed |= match ev.event_type() {
                            EventType::Put => s.nodes.insert(node),
                            EventType::Delete => s.nodes.remove(&node),
                        };
                    }
                }
                if changed {
                    notify(&tx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_node() {
        assert_eq!(node_of(b"/commitd/leases/nodes/n1"), Some("n1".to_string()));
        assert_eq!(node_of(b"/commitd/leases/nodes/"), None);
        assert_eq!(node_of(b"/commitd/other/n1"), None);
    }
}
