//! A list+watch cache of one key prefix (the reflector of kube-runtime):
//! list at a revision, watch from the next one, resume a broken watch where
//! it stopped, and list again when etcd has compacted past it. Control
//! loops read the cache and wake on its change counter; they never poll
//! etcd. [`reflect`] caches the objects of a kind; [`reflect_prefix`] any
//! keys with a decoder of their own (node heartbeats, for one).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::keys;
use crate::meta::Object;
use crate::store::Store;

struct State<V> {
    items: BTreeMap<String, Arc<V>>,
    ready: bool,
    /// The newest etcd revision reflected in `items`.
    revision: i64,
}

/// The cached values under one prefix, kept current by a background task.
pub struct Cache<V> {
    state: Arc<RwLock<State<V>>>,
    changes: watch::Receiver<u64>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            state: self.state.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<V> Cache<V> {
    fn read<R>(&self, f: impl FnOnce(&State<V>) -> R) -> R {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Every cached value, in key order.
    pub fn list(&self) -> Vec<Arc<V>> {
        self.read(|s| s.items.values().cloned().collect())
    }

    /// The value under a full etcd key.
    pub fn get_key(&self, key: &str) -> Option<Arc<V>> {
        self.read(|s| s.items.get(key).cloned())
    }

    /// Every cached key.
    pub fn keys(&self) -> Vec<String> {
        self.read(|s| s.items.keys().cloned().collect())
    }

    /// Whether the first list has completed (before that the cache is empty
    /// because it knows nothing, not because there is nothing).
    pub fn is_ready(&self) -> bool {
        self.read(|s| s.ready)
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

    /// A receiver that wakes whenever the cache changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The newest etcd revision the cache has caught up with.
    pub fn revision(&self) -> i64 {
        self.read(|s| s.revision)
    }

    /// Waits until the cache reflects a write made at `revision` (read your
    /// own writes), or `timeout` passes. Returns whether it caught up.
    pub async fn wait_for_revision(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.changes.clone();
        let wait = async {
            while self.revision() < revision {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

impl<T: Object> Cache<T> {
    /// One cached object.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<T>> {
        self.get_key(&keys::object_key(T::STORE_KIND, namespace, name))
    }
}

/// Turns a key-value into a cached value, or says why it cannot; the store
/// decrypts what it encrypted.
pub type Decoder<V> = fn(&Store, &KeyValue) -> Result<V, String>;

/// Starts a reflector for kind `T` and returns its cache. The task stops
/// when `cancel` fires.
pub fn reflect<T: Object>(store: Store, cancel: CancellationToken) -> Cache<T> {
    reflect_prefix(
        store,
        keys::kind_prefix(T::STORE_KIND),
        |store, kv| store.decode::<T>(kv).map_err(|e| e.to_string()),
        cancel,
    )
}

/// Starts a reflector for every key under `prefix`, decoded by `decoder`.
pub fn reflect_prefix<V: Send + Sync + 'static>(
    store: Store,
    prefix: String,
    decoder: Decoder<V>,
    cancel: CancellationToken,
) -> Cache<V> {
    let state = Arc::new(RwLock::new(State {
        items: BTreeMap::new(),
        ready: false,
        revision: 0,
    }));
    let (tx, rx) = watch::channel(0u64);
    let task_state = state.clone();
    tokio::spawn(async move {
        run(store, prefix, decoder, task_state, tx, cancel).await;
    });
    Cache { state, changes: rx }
}

async fn run<V>(
    store: Store,
    prefix: String,
    decoder: Decoder<V>,
    state: Arc<RwLock<State<V>>>,
    tx: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let notify = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    let write = |f: &mut dyn FnMut(&mut State<V>)| match state.write() {
        Ok(mut s) => f(&mut s),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    };
    'relist: loop {
        if cancel.is_cancelled() {
            return;
        }
        let list = match store.list_prefix(&prefix).await {
            Ok(list) => list,
            Err(e) => {
                warn!(%prefix, error = %e, "list failed; retrying");
                if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                    return;
                }
                continue;
            }
        };
        let mut items = BTreeMap::new();
        for kv in &list.items {
            match decoder(&store, kv) {
                Ok(v) => {
                    items.insert(String::from_utf8_lossy(kv.key()).into_owned(), Arc::new(v));
                }
                Err(e) => warn!(%prefix, error = %e, "skipping a value that does not decode"),
            }
        }
        write(&mut |s| {
            s.items = std::mem::take(&mut items);
            s.ready = true;
            s.revision = list.revision;
        });
        notify(&tx);
        debug!(%prefix, revision = list.revision, "listed");
        let mut from = list.revision + 1;
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from)
                .with_progress_notify();
            let mut stream = match store.client().watch(prefix.as_str(), Some(options)).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(%prefix, error = %e, "watch failed; retrying");
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
                        debug!(%prefix, from, "watch stream ended; resuming");
                        if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                            return;
                        }
                        break;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    warn!(%prefix, from, compacted = resp.compact_revision(), "watch fell behind a compaction; listing again");
                    continue 'relist;
                }
                backoff.reset();
                if resp.events().is_empty() {
                    // A progress notification: everything up to the header's
                    // revision has been delivered.
                    if let (false, Some(h)) = (resp.created(), resp.header()) {
                        from = from.max(h.revision() + 1);
                        write(&mut |s| s.revision = s.revision.max(h.revision()));
                        notify(&tx);
                    }
                    continue;
                }
                write(&mut |s| {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        from = from.max(kv.mod_revision() + 1);
                        s.revision = s.revision.max(kv.mod_revision());
                        match ev.event_type() {
                            EventType::Put => match decoder(&store, kv) {
                                Ok(v) => {
                                    s.items.insert(key, Arc::new(v));
                                }
                                Err(e) => {
                                    warn!(%prefix, error = %e, "dropping a value that does not decode");
                                    s.items.remove(&key);
                                }
                            },
                            EventType::Delete => {
                                s.items.remove(&key);
                            }
                        }
                    }
                });
                notify(&tx);
            }
        }
    }
}

/// Sleeps, returning true if cancelled meanwhile.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
