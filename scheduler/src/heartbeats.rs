//! Which nodes are alive: the node heartbeat keys (`keys::node_lease_key`)
//! present in etcd, cached by a reflector over their prefix. A node agent
//! keeps its key on an etcd lease; when the agent stops renewing it, etcd
//! deletes the key and the node stops receiving pods.

use std::collections::BTreeSet;

use commitd_api::keys::{node_lease_key, NODE_LEASE_PREFIX};
use commitd_api::reflector::{reflect_prefix, Cache};
use commitd_api::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The nodes whose heartbeat key exists, kept current by a reflector.
#[derive(Clone)]
pub struct Heartbeats {
    cache: Cache<()>,
}

impl Heartbeats {
    /// Starts watching the heartbeat prefix; the task stops when `cancel`
    /// fires.
    pub fn watch(store: Store, cancel: CancellationToken) -> Heartbeats {
        let cache = reflect_prefix(store, NODE_LEASE_PREFIX.to_string(), |_, _| Ok(()), cancel);
        Heartbeats { cache }
    }

    /// Whether the node's heartbeat key exists.
    pub fn is_alive(&self, node: &str) -> bool {
        self.cache.get_key(&node_lease_key(node)).is_some()
    }

    /// Every node with a heartbeat key.
    pub fn alive(&self) -> BTreeSet<String> {
        self.cache
            .keys()
            .iter()
            .filter_map(|k| node_of(k))
            .collect()
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        self.cache.is_ready()
    }

    /// Waits for the first list.
    pub async fn ready(&self) {
        self.cache.ready().await
    }

    /// A receiver that wakes when a heartbeat key appears or disappears.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.cache.changes()
    }
}

fn node_of(key: &str) -> Option<String> {
    let node = key.strip_prefix(NODE_LEASE_PREFIX)?;
    (!node.is_empty()).then(|| node.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_node() {
        assert_eq!(node_of(&node_lease_key("n1")).as_deref(), Some("n1"));
        assert_eq!(node_of(NODE_LEASE_PREFIX), None);
        assert_eq!(node_of("/commitd/other/n1"), None);
    }
}
