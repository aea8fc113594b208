//! Where the DNS server reads Services and Endpoints from: a narrow trait,
//! so the server runs on the agent's live caches in production and on a
//! plain map in tests.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use commitd_api::k8s_openapi::api::core::v1::{Endpoints, Service};
use commitd_api::reflector::Cache;

/// The records the cluster DNS answers from. Reads must be cheap and
/// non-blocking: they run on the async runtime for every query.
pub trait ServiceDirectory: Send + Sync + 'static {
    /// The Service `name` in namespace `ns`.
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>>;
    /// The Endpoints of the Service `name` in namespace `ns` (same name).
    fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>>;
    /// Every Service; used for reverse (PTR) lookups and to tell whether a
    /// namespace has any services.
    fn list_services(&self) -> Vec<Arc<Service>>;
    /// Every Endpoints object; used for reverse (PTR) lookups.
    fn list_endpoints(&self) -> Vec<Arc<Endpoints>>;
    /// Whether the directory knows the cluster yet. Until it does, cluster
    /// names answer SERVFAIL rather than a false NXDOMAIN.
    fn is_ready(&self) -> bool {
        true
    }
}

impl<T: ServiceDirectory> ServiceDirectory for Arc<T> {
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        (**self).service(ns, name)
    }
    fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>> {
        (**self).endpoints(ns, name)
    }
    fn list_services(&self) -> Vec<Arc<Service>> {
        (**self).list_services()
    }
    fn list_endpoints(&self) -> Vec<Arc<Endpoints>> {
        (**self).list_endpoints()
    }
    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
}

/// The production directory: the node agent's list+watch caches of
/// Services and Endpoints, so answers follow etcd within the watch delay.
#[derive(Clone)]
pub struct CacheDirectory {
    services: Cache<Service>,
    endpoints: Cache<Endpoints>,
}

impl CacheDirectory {
    /// Reads through the given caches (clones share the live state).
    pub fn new(services: Cache<Service>, endpoints: Cache<Endpoints>) -> Self {
        CacheDirectory {
            services,
            endpoints,
        }
    }
}

impl ServiceDirectory for CacheDirectory {
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(Some(ns), name)
    }
    fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>> {
        self.endpoints.get(Some(ns), name)
    }
    fn list_services(&self) -> Vec<Arc<Service>> {
        self.services.list()
    }
    fn list_endpoints(&self) -> Vec<Arc<Endpoints>> {
        self.endpoints.list()
    }
    fn is_ready(&self) -> bool {
        self.services.is_ready() && self.endpoints.is_ready()
    }
}

type Key = (String, String);

/// An in-memory directory for tests and tools: objects are keyed by their
/// own `metadata.namespace` (default "default") and `metadata.name`.
#[derive(Default)]
pub struct MemoryDirectory {
    services: RwLock<BTreeMap<Key, Arc<Service>>>,
    endpoints: RwLock<BTreeMap<Key, Arc<Endpoints>>>,
}

fn key(meta: &commitd_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn read<V, R>(lock: &RwLock<V>, f: impl FnOnce(&V) -> R) -> R {
    match lock.read() {
        Ok(guard) => f(&guard),
        Err(poisoned) => f(&poisoned.into_inner()),
    }
}

fn write<V, R>(lock: &RwLock<V>, f: impl FnOnce(&mut V) -> R) -> R {
    match lock.write() {
        Ok(mut guard) => f(&mut guard),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Service.
    pub fn put_service(&self, service: Service) {
        write(&self.services, |m| {
            m.insert(key(&service.metadata), Arc::new(service))
        });
    }

    /// Adds or replaces an Endpoints object.
    pub fn put_endpoints(&self, endpoints: Endpoints) {
        write(&self.endpoints, |m| {
            m.insert(key(&endpoints.metadata), Arc::new(endpoints))
        });
    }

    /// Removes a Service and its Endpoints.
    pub fn remove_service(&self, ns: &str, name: &str) {
        let k = (ns.to_string(), name.to_string());
        write(&self.services, |m| m.remove(&k));
        write(&self.endpoints, |m| m.remove(&k));
    }
}

impl ServiceDirectory for MemoryDirectory {
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        read(&self.services, |m| {
            m.get(&(ns.to_string(), name.to_string())).cloned()
        })
    }
    fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>> {
        read(&self.endpoints, |m| {
            m.get(&(ns.to_string(), name.to_string())).cloned()
        })
    }
    fn list_services(&self) -> Vec<Arc<Service>> {
        read(&self.services, |m| m.values().cloned().collect())
    }
    fn list_endpoints(&self) -> Vec<Arc<Endpoints>> {
        read(&self.endpoints, |m| m.values().cloned().collect())
    }
}
