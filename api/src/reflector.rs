//! A list+watch cache of one kind (the reflector of kube-runtime): list at a
//! revision, watch from the next one, resume a broken watch where it
//! stopped, and list again when etcd has compacted past it. Control loops
//! read the cache and wake on its change counter; they never poll etcd.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::keys;
use crate::meta::Object;
use crate::store::{decode, Store};

struct State<T> {
    items: BTreeMap<String, Arc<T>>,
    ready: bool,
    /// The newest etcd revision reflected in `items`.
    revision: i64,
}

/// The cached objects of one kind, kept current by a background task.
pub struct Cache<T> {
    state: Arc<RwLock<State<T>>>,
    changes: watch::Receiver<u64>,
    _kind: PhantomData<T>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Cache {
            state: self.state.clone(),
            changes: self.changes.clone(),
            _kind: PhantomData,
        }
    }
}

impl<T: Object> Cache<T> {
    /// Every cached object, in key order.
    pub fn list(&self) -> Vec<Arc<T>> {
        match self.state.read() {
            Ok(s) => s.items.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().items.values().cloned().collect(),
        }
    }

    /// One cached object.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<T>> {
        let key = keys::object_key(T::STORE_KIND, namespace, name);
        match self.state.read() {
            Ok(s) => s.items.get(&key).cloned(),
            Err(poisoned) => poisoned.into_inner().items.get(&key).cloned(),
        }
    }

    /// Whether the first list has completed (before that the cache is empty
    /// because it knows nothing, not because there is nothing).
    pub fn is_ready(&self) -> bool {
        self.state.read().map(|s| s.ready).unwrap_or(false)
    }

    /// The newest etcd revision the cache has caught up with.
    pub fn revision(&self) -> i64 {
        self.state.read().map(|s| s.revision).unwrap_or(0)
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
}

/// Starts a reflector for kind `T` and returns its cache. The task stops
/// when `cancel` fires.
pub fn reflect<T: Object>(store: Store, cancel: CancellationToken) -> Cache<T> {
    let state = Arc::new(RwLock::new(State {
        items: BTreeMap::new(),
        ready: false,
        revision: 0,
    }));
    let (tx, rx) = watch::channel(0u64);
    let task_state = state.clone();
    tokio::spawn(async move {
        run::<T>(store, task_state, tx, cancel).await;
    });
    Cache {
        state,
        changes: rx,
        _kind: PhantomData,
    }
}

async fn run<T: Object>(
    store: Store,
    state: Arc<RwLock<State<T>>>,
    tx: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let prefix = keys::kind_prefix(T::STORE_KIND);
    let kind = T::STORE_KIND;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let notify = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    'relist: loop {
        if cancel.is_cancelled() {
            return;
        }
        let list = match store.list_prefix(&prefix).await {
            Ok(list) => list,
            Err(e) => {
                warn!(%kind, error = %e, "list failed; retrying");
                if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                    return;
                }
                continue;
            }
        };
        let mut items = BTreeMap::new();
        for kv in &list.items {
            match decode::<T>(kv) {
                Ok(obj) => {
                    items.insert(
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        Arc::new(obj),
                    );
                }
                Err(e) => warn!(%kind, error = %e, "skipping an object that does not decode"),
            }
        }
        if let Ok(mut s) = state.write() {
            s.items = items;
            s.ready = true;
            s.revision = list.revision;
        }
        notify(&tx);
        debug!(%kind, revision = list.revision, "listed");
        let mut from = list.revision + 1;
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(from)
                .with_progress_notify();
            let mut stream = match store.client().watch(prefix.as_str(), Some(options)).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(%kind, error = %e, "watch failed; retrying");
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
                        debug!(%kind, from, "watch stream ended; resuming");
                        if sleep_or_cancel(backoff.next_delay(), &cancel).await {
                            return;
                        }
                        break;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    warn!(%kind, from, compacted = resp.compact_revision(), "watch fell behind a compaction; listing again");
                    continue 'relist;
                }
                backoff.reset();
                if resp.events().is_empty() {
                    // A progress notification: everything up to the header's
                    // revision has been delivered.
                    if !resp.created() {
                        if let Some(h) = resp.header() {
                            from = from.max(h.revision() + 1);
                            if let Ok(mut s) = state.write() {
                                s.revision = s.revision.max(h.revision());
                            }
                        }
                    }
                    continue;
                }
                if let Ok(mut s) = state.write() {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        from = from.max(kv.mod_revision() + 1);
                        s.revision = s.revision.max(kv.mod_revision());
                        match ev.event_type() {
                            EventType::Put => match decode::<T>(kv) {
                                Ok(obj) => {
                                    s.items.insert(key, Arc::new(obj));
                                }
                                Err(e) => {
                                    warn!(%kind, error = %e, "dropping an object that does not decode");
                                    s.items.remove(&key);
                                }
                            },
                            EventType::Delete => {
                                s.items.remove(&key);
                            }
                        }
                    }
                }
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
