//! The commitd object model: the kinds, loading and validating manifests,
//! the etcd key layout, a typed store and the list+watch caches every
//! component builds on.

pub mod backoff;
pub mod controller;
pub mod cron_schedule;
pub mod keys;
pub mod kinds;
pub mod meta;
pub mod nodes;
pub mod quantity;
pub mod reflector;
pub mod store;

pub use k8s_openapi;
pub use kinds::Kind;
pub use meta::Object;
pub use store::{Store, StoreError};
pub mod defaults;
pub mod diagnostic;
pub mod diff;
pub mod encrypted_secrets;
pub mod encryption;
pub mod field_path;
pub mod health;
pub mod manifest;
pub mod records;
pub mod schema;
pub mod selector;
pub mod service_checks;
pub mod service_network;
pub mod storage;
pub mod taints;
pub mod unsupported;
pub mod validation;
pub mod waves;
pub mod yaml_position;
